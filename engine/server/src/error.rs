//! The engine's one error enum. Each variant carries what an operator needs to act.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("configuration: {message}")]
    Config { message: String },
    #[error("TLS material {path}: {message}")]
    Tls { path: PathBuf, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("shard {shard}: {message}")]
    Shard { shard: usize, message: String },
    #[error("spool: {0}")]
    Spool(#[from] petrel_spool::SpoolError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}
