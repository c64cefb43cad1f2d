//! The crate's one error type.

use std::path::PathBuf;

use crate::MessageId;

/// Everything that can go wrong in the spool.
///
/// `is_transient()` tells the caller how to answer a client: transient errors map to a 4xx
/// ("try again later"), permanent ones to a 5xx.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// A file system call failed.
    #[error("spool {op} failed on {path}: {source}")]
    Io {
        /// What we were doing ("open", "write", "fdatasync", ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// No live message has this id.
    #[error("message {0} is not in the spool")]
    NotFound(MessageId),
    /// A record would be larger than a named limit.
    #[error("{what} is {len_bytes} bytes, over the limit of {max_bytes}")]
    TooLarge {
        /// Which limit ("body", "envelope", "update").
        what: &'static str,
        /// The size asked for.
        len_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// A recipient update names an index the message does not have.
    #[error("message {id} has {recipients} recipients, update names index {index}")]
    RecipientIndex {
        /// The message.
        id: MessageId,
        /// The bad index.
        index: u32,
        /// How many recipients the message has.
        recipients: u32,
    },
    /// A record read back for a live message failed its checks (checksum, framing, archive).
    #[error("corrupt record in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// What check failed.
        reason: &'static str,
    },
    /// Serialising the envelope failed (should not happen for well-formed values).
    #[error("encoding {what} failed: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's message.
        reason: String,
    },
    /// The spool stopped accepting writes after an earlier failure (e.g. a failed fdatasync,
    /// after which the page cache can no longer be trusted). Restart the engine.
    #[error("spool is unhealthy: {0}")]
    Unhealthy(&'static str),
    /// The configuration is unusable.
    #[error("bad spool configuration: {0}")]
    Config(&'static str),
    /// `store_attributed_as` got an id this spool did not hand out (`reserve_id`).
    #[error("the spool holds sealed records and was opened without its keyring (the key file)")]
    NoKeyring,

    #[error("sealing failed: {0}")]
    Seal(#[from] petrel_seal::SealError),

    #[error("message id {0:016x} was not reserved by this spool")]
    NotReserved(u64),
}

impl SpoolError {
    /// True when trying again later may succeed (disk full, I/O error, unhealthy spool): answer
    /// 4xx. False for errors about the request itself (too large, unknown id): answer 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            // A data key that could not be made or written (keyring on a full disk).
            SpoolError::Io { .. } | SpoolError::Unhealthy(_) | SpoolError::Seal(_) => true,
            // A record that fails its checksum will fail it again.
            SpoolError::Corrupt { .. }
            | SpoolError::NotFound(_)
            | SpoolError::TooLarge { .. }
            | SpoolError::RecipientIndex { .. }
            | SpoolError::Encode { .. }
            | SpoolError::Config(_)
            | SpoolError::NotReserved(_)
            | SpoolError::NoKeyring => false,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<std::io::Error>,
    ) -> Self {
        SpoolError::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}
