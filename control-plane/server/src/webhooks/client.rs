//! The HTTP client of webhook deliveries: one POST per connection, to an address checked at
//! connect time (see [`super::target`]), TLS verified against the web PKI roots plus an optional
//! operator CA file, bounded in time, never following redirects (a 3xx is a failure).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::target::{self, TargetError};
use crate::dns::DnsChecker;
use crate::ControlError;

/// Time to open the TCP connection to one address.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Time for the whole request: resolve, connect, TLS, send, response head.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Longest error text kept in the attempt history.
pub const ERROR_TEXT_MAX_BYTES: usize = 512;
/// The User-Agent of deliveries.
pub const USER_AGENT: &str = concat!("Petrel-Webhooks/", env!("CARGO_PKG_VERSION"));

/// How one POST ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The HTTP status, when a response came.
    pub status: Option<u16>,
    /// Why there was no 2xx (transport error, refusal, or the status).
    pub error: Option<String>,
    pub duration_ms: i64,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Why a POST failed before a response.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("refused target: {0}")]
    Target(#[from] TargetError),
    #[error("connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(String),
    #[error("timed out after {REQUEST_TIMEOUT_MS} ms")]
    Timeout,
}

/// The sending side: trust roots, resolver and the loopback switch.
#[derive(Clone)]
pub struct Client {
    tls: tokio_rustls::TlsConnector,
    dns: DnsChecker,
    allow_loopback: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("allow_loopback", &self.allow_loopback)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Web PKI roots plus the certificates in `ca_file` (PEM), if any.
    pub fn new(
        dns: DnsChecker,
        allow_loopback: bool,
        ca_file: Option<&Path>,
    ) -> Result<Client, ControlError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ControlError::Tls(format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(ControlError::Tls(format!(
                    "{}: no certificate",
                    path.display()
                )));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| ControlError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ControlError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            dns,
            allow_loopback,
        })
    }

    pub fn allow_loopback(&self) -> bool {
        self.allow_loopback
    }

    pub fn dns(&self) -> &DnsChecker {
        &self.dns
    }

    /// POSTs `body` with `headers` to `url` (as `application/json` unless `headers` has a
    /// `content-type`).
    pub async fn post(&self, url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Outcome {
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_millis(REQUEST_TIMEOUT_MS),
            self.post_inner(url, headers, body),
        )
        .await
        .unwrap_or(Err(PostError::Timeout));
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        match result {
            Ok(status) if (200..300).contains(&status) => Outcome {
                status: Some(status),
                error: None,
                duration_ms,
            },
            Ok(status) => Outcome {
                status: Some(status),
                error: Some(format!("HTTP status {status}")),
                duration_ms,
            },
            Err(e) => {
                let mut text = e.to_string();
                if text.len() > ERROR_TEXT_MAX_BYTES {
                    let mut cut = ERROR_TEXT_MAX_BYTES;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                Outcome {
                    status: None,
                    error: Some(text),
                    duration_ms,
                }
            }
        }
    }

    async fn post_inner(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<u16, PostError> {
        let t = target::parse(url, self.allow_loopback)?;
        // Resolved and checked now, for this connection: what is connected to is what was
        // checked.
        let addrs = target::resolve(&t, &self.dns, self.allow_loopback).await?;
        let tcp = connect_any(&addrs).await?;
        let host_header = match t.host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{}", t.port),
            _ => format!("{}:{}", t.host, t.port),
        };
        let mut req = hyper::Request::post(t.path.as_str())
            .header(hyper::header::HOST, host_header)
            .header(hyper::header::USER_AGENT, USER_AGENT)
            .header(hyper::header::CONNECTION, "close");
        // JSON unless the caller names another type (TLS-RPT posts gzip).
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PostError::Request(e.to_string()))?;
        if t.https {
            let name = ServerName::try_from(t.host.clone())
                .map_err(|e| PostError::Request(e.to_string()))?;
            let tls = self.tls.connect(name, tcp).await.map_err(PostError::Tls)?;
            send(TokioIo::new(tls), req).await
        } else {
            send(TokioIo::new(tcp), req).await
        }
    }
}

/// Connects to the first address that answers.
async fn connect_any(addrs: &[SocketAddr]) -> Result<tokio::net::TcpStream, PostError> {
    let mut last = String::from("no address");
    for a in addrs {
        match tokio::time::timeout(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            tokio::net::TcpStream::connect(a),
        )
        .await
        {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = format!("{a}: {e}"),
            Err(_) => last = format!("{a}: timed out after {CONNECT_TIMEOUT_MS} ms"),
        }
    }
    Err(PostError::Connect(last))
}

/// One HTTP/1.1 exchange; the response status (its body is not read).
async fn send<I>(io: I, req: hyper::Request<Full<Bytes>>) -> Result<u16, PostError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = sender.send_request(req).await;
    driver.abort();
    Ok(result?.status().as_u16())
}
