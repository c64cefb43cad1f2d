//! HTTPS for the admin API: every call carries a bearer key, so off loopback the API speaks TLS
//! (or the operator says in so many words that something else protects it).
//!
//! [`TlsListener`] is an `axum::serve::Listener`. A task accepts TCP connections and runs each
//! TLS handshake in its own task, at most [`API_HANDSHAKES_MAX`] at once and each within
//! [`API_HANDSHAKE_TIMEOUT_MS`], so a client that stalls its handshake holds one slot, never the
//! accept loop. Finished handshakes wait in a bounded channel for axum to take them.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// TLS handshakes of the admin API in progress at once; more wait in the accept backlog.
pub const API_HANDSHAKES_MAX: usize = 256;
/// A client must finish its handshake within this.
pub const API_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Established connections waiting for the HTTP server to take them.
pub const API_ACCEPTED_QUEUED_MAX: usize = 64;

/// Where the API may listen without TLS: loopback only, unless the operator opts out.
pub fn plaintext_allowed(listen: SocketAddr, allow_plaintext: bool) -> bool {
    allow_plaintext || listen.ip().is_loopback()
}

/// An `axum::serve::Listener` yielding TLS connections.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `tcp` (call within a tokio runtime).
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(API_ACCEPTED_QUEUED_MAX);
        let accepting = tokio::spawn(accept_loop(tcp, acceptor, tx));
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    crate::accept::accept_bounded(&tcp, API_HANDSHAKES_MAX, "admin API", |stream, peer| {
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        async move {
            let timeout = Duration::from_millis(API_HANDSHAKE_TIMEOUT_MS);
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "admin API TLS handshake failed"),
                Err(_) => tracing::info!(%peer, "admin API TLS handshake timed out"),
            }
        }
    })
    .await;
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended (its semaphore closed): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_on_loopback_unless_allowed() {
        let lo: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let lo6: SocketAddr = "[::1]:8080".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        let public: SocketAddr = "192.0.2.10:8080".parse().expect("addr");
        assert!(plaintext_allowed(lo, false));
        assert!(plaintext_allowed(lo6, false));
        assert!(!plaintext_allowed(any, false));
        assert!(!plaintext_allowed(public, false));
        assert!(plaintext_allowed(public, true));
    }
}
