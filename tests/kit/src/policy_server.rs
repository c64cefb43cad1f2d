//! An HTTPS server on loopback that answers every request with one scripted raw response: the
//! MTA-STS policy host of a test (`https://mta-sts.<domain>/.well-known/mta-sts.txt`), serving
//! a certificate from [`crate::tls::test_pki`]. It runs on its own tokio runtime, so tests on
//! glommio or plain threads can use it and change the answer while it runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tls::TestPki;

/// Largest request head the server reads; a longer one gets no answer.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8192;
/// The request line every request must start with (RFC 8461 §3.3).
const POLICY_REQUEST_LINE: &[u8] = b"GET /.well-known/mta-sts.txt HTTP/1.1\r\n";

/// What the server answers: a whole raw HTTP response (status line, headers and body).
#[derive(Clone)]
pub struct Reply(pub Vec<u8>);

impl Reply {
    /// A response with `status` (e.g. "200 OK"), a Content-Type, `Connection: close`, the body
    /// and, when `length`, a Content-Length (without it the body ends with the connection).
    pub fn with(status: &str, content_type: &str, body: &[u8], length: bool) -> Reply {
        let mut head =
            format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nConnection: close\r\n");
        if length {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        Reply(raw)
    }

    /// `200 OK`, `text/plain`, the policy `text`.
    pub fn policy(text: &str) -> Reply {
        Reply::with("200 OK", "text/plain; charset=utf-8", text.as_bytes(), true)
    }
}

/// The HTTPS server on 127.0.0.1; dropping it stops it.
pub struct PolicyServer {
    /// Its port (the MTA-STS service's `https_port` in tests).
    pub port: u16,
    reply: Arc<Mutex<Reply>>,
    /// Requests read (TLS handshakes that failed are not counted).
    hits: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl PolicyServer {
    /// Starts serving `pki`'s certificate and answering every policy request with `reply`.
    pub fn start(pki: &TestPki, reply: Reply) -> PolicyServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("policy server runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the policy server");
        let port = listener.local_addr().expect("its address").port();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
        let reply = Arc::new(Mutex::new(reply));
        let hits = Arc::new(AtomicUsize::new(0));
        let (r, h) = (reply.clone(), hits.clone());
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, r, h) = (acceptor.clone(), r.clone(), h.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(n) if n > 0 && head.len() < REQUEST_HEAD_BYTES_MAX => {
                                head.extend_from_slice(&buf[..n])
                            }
                            _ => return,
                        }
                    }
                    assert!(
                        head.starts_with(POLICY_REQUEST_LINE),
                        "not a policy request: {:?}",
                        String::from_utf8_lossy(&head)
                    );
                    h.fetch_add(1, Ordering::SeqCst);
                    let raw = r.lock().unwrap_or_else(|p| p.into_inner()).0.clone();
                    let _ = tls.write_all(&raw).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        PolicyServer {
            port,
            reply,
            hits,
            runtime: Some(runtime),
        }
    }

    /// Answers later requests with `reply`.
    pub fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap_or_else(|p| p.into_inner()) = reply;
    }

    /// Policy requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
