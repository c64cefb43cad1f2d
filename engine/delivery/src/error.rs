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
