//! The one public error enum of the crate.

/// Errors raised by delivery outside a delivery attempt (attempt failures are outcomes, not
/// errors: they are deferred or bounced and recorded as events).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The events directory could not be created, opened, written or rotated.
    #[error("events file {path}: {source}")]
    Events {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The events writer thread could not be started.
    #[error("events writer thread: {0}")]
    EventsThread(#[source] std::io::Error),
    /// The events writer has stopped (shut down or failed); the record was not written.
    #[error("events writer closed")]
    EventsClosed,
    /// A configuration value is out of its allowed range.
    #[error("invalid delivery config: {0}")]
    Config(&'static str),
}

/// Why a [`SpoolAccess`](crate::SpoolAccess) call failed. The spool's own error type stays in
/// the spool's crate: this crate sees it as a boxed source, so it need not depend on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolAccessError {
    /// No live message has this id (it was removed meanwhile, or never stored).
    #[error("message {id:016x} is not in the spool")]
    NotFound {
        /// The message id.
        id: u64,
    },
    /// A recipient update names an index the message does not have.
    #[error("message {id:016x} has {recipients} recipients, update names index {index}")]
    RecipientIndex {
        /// The message id.
        id: u64,
        /// The bad index.
        index: u32,
        /// How many recipients the message has.
        recipients: u32,
    },
    /// The spool failed (I/O, a corrupt record, an unhealthy spool, a limit): its own error,
    /// shown as it is.
    #[error(transparent)]
    Spool(Box<dyn std::error::Error + Send + Sync + 'static>),
}
