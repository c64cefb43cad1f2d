//! Fetching a policy: one HTTPS GET of `https://mta-sts.<domain>/.well-known/mta-sts.txt`
//! (RFC 8461 §3.3), over HTTP/1.1 with hyper on tokio-rustls.
//!
//! The certificate must be valid for `mta-sts.<domain>` and chain to the web PKI roots (plus any
//! configured extra roots: private CAs and tests). A redirect is a failure (§3.3: "HTTP 3xx
//! redirects MUST NOT be followed"), nothing is cached at the HTTP level, the media type must be
//! `text/plain`, the body is bounded by [`MTA_STS_POLICY_BYTES_MAX`] (reading stops as soon as
//! it is exceeded) and the whole exchange, connect included, by one timeout.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::policy::{Policy, PolicyError, MTA_STS_POLICY_BYTES_MAX};

/// Longest a whole fetch may take (RFC 8461 §3.3 suggests one minute); the default of
/// [`super::MtaStsConfig::fetch_timeout_ms`].
pub const MTA_STS_FETCH_TIMEOUT_MS: u64 = 60_000;
/// The path of the policy on the policy host (RFC 8461 §3.3).
pub const MTA_STS_WELL_KNOWN_PATH: &str = "/.well-known/mta-sts.txt";
/// Addresses of the policy host tried, in DNS order, before giving up.
pub const MTA_STS_ADDRS_TRIED_MAX: usize = 4;
/// Longest wait for one address to accept the TCP connection, so a dead first address leaves
/// time for the next (the whole fetch stays bounded by its own timeout).
pub const MTA_STS_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Extra root PEMs accepted per configuration (as for SMTP's required TLS).
pub const MTA_STS_EXTRA_ROOTS_MAX: usize = 64;
/// hyper's read buffer bound: the response head must fit (hyper's minimum is 8 KiB).
const HTTP_READ_BUF_BYTES_MAX: usize = 64 * 1024;
/// The User-Agent of policy fetches.
pub const MTA_STS_USER_AGENT: &str = concat!("Petrel-MTA-STS/", env!("CARGO_PKG_VERSION"));

/// Why a policy could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The TLS configuration could not be built (bad extra root PEM).
    #[error("TLS setup: {reason}")]
    Setup { reason: String },
    /// The policy host has no address, or its lookup failed.
    #[error("no address for {host}: {reason}")]
    NoAddress { host: String, reason: String },
    /// No address accepted a TCP connection.
    #[error("connect: {reason}")]
    Connect { reason: String },
    /// The TLS handshake failed, certificate validation included.
    #[error("TLS: {reason}")]
    Tls { reason: String },
    /// The HTTP exchange failed (malformed response, connection closed early).
    #[error("HTTP: {reason}")]
    Http { reason: String },
    /// A 3xx: redirects are never followed.
    #[error("redirect (HTTP {status}) refused")]
    Redirect { status: u16 },
    /// Any other non-200 status.
    #[error("HTTP status {status}")]
    Status { status: u16 },
    /// The media type is not `text/plain` (the header's value, possibly empty).
    #[error("content type {found:?}, expected text/plain")]
    ContentType { found: String },
    /// The body is larger than [`MTA_STS_POLICY_BYTES_MAX`].
    #[error("policy body over {MTA_STS_POLICY_BYTES_MAX} bytes")]
    TooLarge,
    /// The fetch took longer than its timeout.
    #[error("timed out after {ms} ms")]
    Timeout { ms: u64 },
    /// The body is not a valid policy.
    #[error("invalid policy: {0}")]
    Policy(#[from] PolicyError),
}

/// Why a policy could not be had, as TLS-RPT names it (RFC 8460 §4.3.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StsFetchFailure {
    /// The policy host could not be reached or did not answer a policy (`sts-policy-fetch-error`).
    FetchError,
    /// The body was not a valid policy (`sts-policy-invalid`).
    Invalid,
    /// The policy host's certificate did not validate (`sts-webpki-invalid`).
    WebPkiInvalid,
}

impl StsFetchFailure {
    /// The RFC's `result-type`.
    pub fn result_type(self) -> &'static str {
        match self {
            StsFetchFailure::FetchError => "sts-policy-fetch-error",
            StsFetchFailure::Invalid => "sts-policy-invalid",
            StsFetchFailure::WebPkiInvalid => "sts-webpki-invalid",
        }
    }
}

impl FetchError {
    /// What TLS-RPT reports for this failure; `None` for our own TLS setup, which says
    /// nothing of the policy host.
    pub fn report_failure(&self) -> Option<StsFetchFailure> {
        Some(match self {
            FetchError::Setup { .. } => return None,
            FetchError::Tls { .. } => StsFetchFailure::WebPkiInvalid,
            FetchError::Policy(_) | FetchError::ContentType { .. } | FetchError::TooLarge => {
                StsFetchFailure::Invalid
            }
            _ => StsFetchFailure::FetchError,
        })
    }

    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Setup { .. } => "setup",
            FetchError::NoAddress { .. } => "no_address",
            FetchError::Connect { .. } => "connect",
            FetchError::Tls { .. } => "tls",
            FetchError::Http { .. } => "http",
            FetchError::Redirect { .. } => "redirect",
            FetchError::Status { .. } => "status",
            FetchError::ContentType { .. } => "content_type",
            FetchError::TooLarge => "too_large",
            FetchError::Timeout { .. } => "timeout",
            FetchError::Policy(_) => "invalid_policy",
        }
    }
}

/// The HTTPS side of policy discovery; one per [`super::MtaSts`], used on its tokio thread.
#[derive(Clone)]
pub struct Fetcher {
    tls: tokio_rustls::TlsConnector,
    /// Port of the policy host: 443 in production, a loopback port in tests.
    https_port: u16,
    /// Bound on one whole fetch, in milliseconds (at least 1).
    timeout_ms: u64,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("https_port", &self.https_port)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// Web PKI roots plus `extra_roots_pem` (PEM, possibly several certificates each).
    pub fn new(
        extra_roots_pem: &[Vec<u8>],
        https_port: u16,
        timeout_ms: u64,
    ) -> Result<Fetcher, FetchError> {
        let setup = |reason: String| FetchError::Setup { reason };
        if extra_roots_pem.len() > MTA_STS_EXTRA_ROOTS_MAX {
            return Err(setup(format!(
                "more than {MTA_STS_EXTRA_ROOTS_MAX} extra root certificates"
            )));
        }
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for pem in extra_roots_pem {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| setup(format!("extra root PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| setup(format!("extra root certificate: {e}")))?;
            }
        }
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Fetcher {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            https_port,
            timeout_ms: timeout_ms.max(1),
        })
    }

    /// The policy of `domain` (lowercase, no trailing dot), fetched from `addrs` (the addresses
    /// of `mta-sts.<domain>`). Must run inside a tokio runtime.
    pub async fn fetch(&self, domain: &str, addrs: &[IpAddr]) -> Result<Policy, FetchError> {
        let ms = self.timeout_ms;
        let body = tokio::time::timeout(Duration::from_millis(ms), self.get(domain, addrs))
            .await
            .map_err(|_| FetchError::Timeout { ms })??;
        Ok(Policy::parse(&body)?)
    }

    async fn get(&self, domain: &str, addrs: &[IpAddr]) -> Result<Vec<u8>, FetchError> {
        let host = policy_host(domain);
        let name = ServerName::try_from(host.clone()).map_err(|e| FetchError::NoAddress {
            host: host.clone(),
            reason: e.to_string(),
        })?;
        let tcp = self.connect(&host, addrs).await?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError::Tls {
                reason: e.to_string(),
            })?;
        let request = hyper::Request::get(MTA_STS_WELL_KNOWN_PATH)
            .header(hyper::header::HOST, host.as_str())
            .header(hyper::header::USER_AGENT, MTA_STS_USER_AGENT)
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(http_err)?;
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(HTTP_READ_BUF_BYTES_MAX)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(http_err)?;
        let driver = tokio::spawn(async move {
            let _ = conn.await; // errors surface through `send_request` and the body
        });
        let result = exchange(&mut sender, request).await;
        driver.abort();
        result
    }

    async fn connect(
        &self,
        host: &str,
        addrs: &[IpAddr],
    ) -> Result<tokio::net::TcpStream, FetchError> {
        if addrs.is_empty() {
            return Err(FetchError::NoAddress {
                host: host.to_string(),
                reason: "no A or AAAA record".into(),
            });
        }
        let mut last = String::new();
        for ip in addrs.iter().take(MTA_STS_ADDRS_TRIED_MAX) {
            let addr = SocketAddr::new(*ip, self.https_port);
            let connect = tokio::net::TcpStream::connect(addr);
            match tokio::time::timeout(Duration::from_millis(MTA_STS_CONNECT_TIMEOUT_MS), connect)
                .await
            {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: timed out after {MTA_STS_CONNECT_TIMEOUT_MS} ms"),
            }
        }
        Err(FetchError::Connect { reason: last })
    }
}

/// `mta-sts.<domain>`: the host serving the policy.
pub fn policy_host(domain: &str) -> String {
    format!("mta-sts.{domain}")
}

/// Sends the request and reads a 200 `text/plain` body of bounded size.
async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<Vec<u8>, FetchError> {
    let response = sender.send_request(request).await.map_err(http_err)?;
    let status = response.status();
    if status.is_redirection() {
        return Err(FetchError::Redirect {
            status: status.as_u16(),
        });
    }
    if status != hyper::StatusCode::OK {
        return Err(FetchError::Status {
            status: status.as_u16(),
        });
    }
    let content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    if !is_text_plain(&content_type) {
        return Err(FetchError::ContentType {
            found: content_type,
        });
    }
    let declared = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MTA_STS_POLICY_BYTES_MAX as u64) {
        return Err(FetchError::TooLarge);
    }
    read_bounded(response.into_body()).await
}

/// Reads the body, failing as soon as it grows past the bound (a server may omit or lie about
/// its length, or stream forever).
async fn read_bounded(mut body: hyper::body::Incoming) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(http_err)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MTA_STS_POLICY_BYTES_MAX {
                return Err(FetchError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// `text/plain`, any case, parameters (`; charset=utf-8`) allowed.
fn is_text_plain(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case("text/plain")
}

fn http_err(e: impl std::fmt::Display) -> FetchError {
    FetchError::Http {
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type() {
        assert!(is_text_plain("text/plain"));
        assert!(is_text_plain("Text/Plain; charset=utf-8"));
        assert!(!is_text_plain("text/html"));
        assert!(!is_text_plain("text/plainx"));
        assert!(!is_text_plain(""));
    }

    #[test]
    fn too_many_extra_roots_is_a_setup_error() {
        let roots = vec![Vec::new(); MTA_STS_EXTRA_ROOTS_MAX + 1];
        assert!(matches!(
            Fetcher::new(&roots, 443, 1000),
            Err(FetchError::Setup { .. })
        ));
        assert!(matches!(
            Fetcher::new(
                &[b"-----BEGIN CERTIFICATE-----\nnot base64\n".to_vec()],
                443,
                1
            ),
            Err(FetchError::Setup { .. })
        ));
    }
}
