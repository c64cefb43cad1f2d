//! The crate's one error enum.

use std::net::SocketAddr;

/// Everything that can go wrong in the harness itself (peer replies are counted, not errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A target or listen address outside loopback without `--allow-non-loopback`.
    #[error("{addr} is not a loopback address; pass --allow-non-loopback to use it")]
    NonLoopback { addr: SocketAddr },
    /// A configuration value out of range or unparsable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Socket or file I/O of the harness (binding, spawning threads, writing reports).
    #[error("I/O error while {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// TLS set-up (certificate generation, rustls configuration).
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// A scenario file could not be read or parsed.
    #[error("scenario {path}: {reason}")]
    Scenario { path: String, reason: String },
}

impl LoadError {
    /// Wraps an I/O error with what the harness was doing.
    pub fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> LoadError {
        move |source| LoadError::Io { context, source }
    }
}

/// Refuses non-loopback addresses unless explicitly allowed.
pub fn check_loopback(addr: SocketAddr, allow_non_loopback: bool) -> Result<(), LoadError> {
    if addr.ip().is_loopback() || allow_non_loopback {
        Ok(())
    } else {
        Err(LoadError::NonLoopback { addr })
    }
}
