//! The values the spool stores and hands back (the contract of INTERFACES.md §2).

use std::path::PathBuf;

use rkyv::{Archive, Deserialize, Serialize};

/// A message's id: the shard in the top 8 bits, a per-shard sequence in the low 56.
///
/// Displayed as 16 lowercase hex digits (the SMTP "queued as" id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

/// Bits of a [`MessageId`] that hold the sequence; the shard sits above them.
pub const MESSAGE_ID_SEQUENCE_BITS: u32 = 56;

impl MessageId {
    /// Builds an id from a shard and a sequence (the sequence is masked to 56 bits).
    pub fn new(shard: u8, sequence: u64) -> MessageId {
        MessageId((u64::from(shard) << MESSAGE_ID_SEQUENCE_BITS) | (sequence & Self::SEQUENCE_MASK))
    }
    const SEQUENCE_MASK: u64 = (1 << MESSAGE_ID_SEQUENCE_BITS) - 1;
    /// The shard that stored the message.
    pub fn shard(self) -> u8 {
        (self.0 >> MESSAGE_ID_SEQUENCE_BITS) as u8
    }
    /// The per-shard sequence.
    pub fn sequence(self) -> u64 {
        self.0 & Self::SEQUENCE_MASK
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a recipient stands. Everything but `Pending` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum RecipientState {
    /// Not yet delivered; will be tried at `next_attempt_unix_ms`.
    Pending,
    /// Accepted by the destination.
    Delivered,
    /// Permanently refused (a DSN was or will be generated).
    Bounced,
    /// Gave up after the maximum queue age.
    Expired,
}

/// One recipient of a spooled message and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Recipient {
    /// "local@domain" as accepted in RCPT TO.
    pub address: String,
    /// Current state.
    pub state: RecipientState,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When to try next (Unix ms); meaningful while `Pending`.
    pub next_attempt_unix_ms: u64,
    /// The last reply from the destination, if any (for DSNs and `petrel queue ls`).
    pub last_reply: Option<String>,
}

/// The metadata of a spooled message (the body is stored next to it, once).
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Envelope {
    /// MAIL FROM; "" for the null reverse-path.
    pub mail_from: String,
    /// Recipients in RCPT order; an update's `index` points into this list.
    pub recipients: Vec<Recipient>,
    /// The tenant that sent it, when authenticated.
    pub tenant: Option<String>,
    /// When the message was accepted (Unix ms).
    pub received_unix_ms: u64,
    /// The client's address ("ip:port").
    pub client_addr: String,
    /// The client's HELO/EHLO name.
    pub helo: String,
    /// The AUTH identity, if any.
    pub authenticated_as: Option<String>,
    /// SMTPUTF8 was requested.
    pub smtputf8: bool,
    /// BODY=8BITMIME (or BINARYMIME) was requested.
    pub body_8bit: bool,
    /// A bounce we generated; never bounce a bounce.
    pub is_dsn: bool,
}

/// Who a message belongs to and the tenant's labels for it: what delivery events report.
/// Stored next to the envelope, in its own archive (see `record`), and never changed after the
/// message is accepted. Every part is bounded before it gets here (`ATTRIBUTION_SIZE_MAX_BYTES`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Attribution {
    /// The tenant: the authenticated credential's, or for a trusted-network relay the tenant
    /// whose domain the From address is in.
    pub tenant_id: Option<String>,
    /// The control-plane credential that authenticated; None for config-file users and
    /// trusted networks.
    pub credential_id: Option<String>,
    /// The From address's domain, lowercased.
    pub from_domain: Option<String>,
    /// The RFC 5322 Message-ID without angle brackets (the message's own, or Petrel's for a
    /// submission that had none).
    pub rfc822_message_id: Option<String>,
    /// `X-Petrel-Tag` values, in header order.
    pub tags: Vec<String>,
    /// The `X-Petrel-Metadata` JSON object, as validated text.
    pub metadata: Option<String>,
}

impl Attribution {
    /// Nothing is known: stored as a version-1 record.
    pub fn is_empty(&self) -> bool {
        self == &Attribution::default()
    }
}

/// `RET=` of a message (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum DsnRet {
    /// Return the whole message.
    Full,
    /// Return its header section only.
    Hdrs,
}

/// The DSN parameters a client gave (RFC 3461): RET and ENVID for the message, NOTIFY and
/// ORCPT per recipient. Stored in the message's record next to its attribution (see `record`),
/// only when something was given: a message without them costs nothing, and never changes
/// after the message is accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct DsnParams {
    pub ret: Option<DsnRet>,
    /// ENVID, decoded (printable ASCII, at most 100 bytes).
    pub envid: Option<String>,
    /// Index for index with `Envelope::recipients`; empty when no recipient gave any.
    pub recipients: Vec<RecipientDsn>,
}

impl DsnParams {
    /// Nothing was given: the message is stored as if the extension did not exist.
    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none() && self.recipients.is_empty()
    }
}

/// NOTIFY's conditions as bits of [`RecipientDsn::notify`] (`Some(0)` is `NEVER`).
pub const NOTIFY_SUCCESS: u8 = 1;
/// See [`NOTIFY_SUCCESS`].
pub const NOTIFY_FAILURE: u8 = 2;
/// See [`NOTIFY_SUCCESS`].
pub const NOTIFY_DELAY: u8 = 4;

/// One recipient's DSN parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct RecipientDsn {
    /// NOTIFY as `NOTIFY_*` bits; `None` when not given, `Some(0)` for `NEVER`.
    pub notify: Option<u8>,
    /// ORCPT as `addr-type;address`, the address decoded (printable ASCII).
    pub orcpt: Option<String>,
}

/// A message found in the spool (by recovery or `inspect`), with its latest recipient states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledMessage {
    /// Its id.
    pub id: MessageId,
    /// Envelope with every journaled update applied.
    pub envelope: Envelope,
    /// Its attribution (empty for messages stored without one, or by the first format).
    pub attribution: Attribution,
    /// Its DSN parameters (empty for messages stored without any, or by an older format).
    pub dsn: DsnParams,
    /// Length of the body in bytes.
    pub body_len_bytes: u64,
}

/// A change to one recipient's state.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct RecipientUpdate {
    /// Index into `Envelope::recipients`.
    pub index: u32,
    /// New state.
    pub state: RecipientState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Next attempt (Unix ms).
    pub next_attempt_unix_ms: u64,
    /// Last reply from the destination.
    pub last_reply: Option<String>,
}

/// How to open a shard's spool.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// `<data>/spool`; this shard uses `<root>/shard-<shard>/`.
    pub root: PathBuf,
    /// The shard number; it becomes the top 8 bits of every message id.
    pub shard: u8,
    /// Roll over to a new segment once the active one is past this many bytes (default 64 MiB).
    /// A single record larger than this gets a segment of its own.
    pub segment_size_max_bytes: u64,
    /// fdatasync before `store` returns (default true; false only for benchmarks that say so).
    pub fsync: bool,
    /// Bodies of recently stored messages kept in memory, so a prompt first delivery attempt
    /// does not read them back from disk (default 32 MiB per shard; 0 turns the cache off).
    pub body_cache_bytes_max: usize,
    /// Under load (the previous group had at least `COMMIT_WINDOW_GROUP_MIN` writers) a group
    /// commit waits up to this long before its fdatasync so later writers join it, ending
    /// early once the group is as large as the previous one (default 300 µs; 0 never waits).
    /// A lone client never waits for it.
    pub commit_window_us: u64,
    /// The keyring that seals records at rest (issue 16); `None` writes them in the clear.
    pub keys: Option<std::sync::Arc<petrel_seal::Keyring>>,
}

/// Default of [`SpoolConfig::commit_window_us`].
pub const COMMIT_WINDOW_US_DEFAULT: u64 = 300;

/// Default of [`SpoolConfig::body_cache_bytes_max`].
pub const BODY_CACHE_BYTES_MAX_DEFAULT: usize = 32 << 20;

/// Default of [`SpoolConfig::segment_size_max_bytes`].
pub const SEGMENT_SIZE_MAX_BYTES_DEFAULT: u64 = 64 << 20;

impl SpoolConfig {
    /// A configuration with the defaults (64 MiB segments, fsync on).
    pub fn new(root: impl Into<PathBuf>, shard: u8) -> SpoolConfig {
        SpoolConfig {
            root: root.into(),
            shard,
            segment_size_max_bytes: SEGMENT_SIZE_MAX_BYTES_DEFAULT,
            fsync: true,
            body_cache_bytes_max: BODY_CACHE_BYTES_MAX_DEFAULT,
            commit_window_us: COMMIT_WINDOW_US_DEFAULT,
            keys: None,
        }
    }
}

/// One group-commit round, for metrics ([`crate::Spool::drain_sync_samples`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncSample {
    /// From the leader's call to sync until every file of the round was synced.
    pub duration: std::time::Duration,
    /// Writers the round covered (stores, mostly; also closes, heals and timer rounds).
    pub writers: u64,
}

/// Live counts, cheap to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Live (not removed) messages.
    pub messages: u64,
    /// Bytes of live records (header, envelope, body) in the data segments.
    pub bytes: u64,
    /// Segment files (data) currently on disk for this shard.
    pub segments: u64,
    /// Heap bytes of the index of live messages (its table and entries).
    pub index_memory_bytes: u64,
    /// Bytes of bodies held in the body cache.
    pub body_cache_bytes: u64,
}

/// What `open` found on disk (or a [`crate::Backlog`], once read).
#[derive(Debug, Default)]
pub struct Recovery {
    /// Every live message with its latest state, in id order ([`crate::Spool::open`]; empty
    /// from [`crate::Spool::open_streaming`] and [`crate::Backlog::run`], which hand them over
    /// as they go).
    pub messages: Vec<SpooledMessage>,
    /// Live messages found.
    pub messages_recovered: u64,
    /// Records skipped: torn tails, bad checksums, unreadable archives.
    pub records_skipped: u64,
    /// Bytes skipped with them.
    pub bytes_skipped: u64,
    /// Messages whose data key is gone (their tenant was deleted): unreadable, dropped.
    pub messages_shredded: u64,
}
