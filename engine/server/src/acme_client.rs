//! The HTTPS client instant-acme talks to the CA through: hyper over rustls (aws-lc-rs, as
//! every rustls config of the workspace), the web PKI roots plus `acme.ca_file`, each response
//! head within [`ACME_HTTP_TIMEOUT_MS`] and each body at most [`ACME_RESPONSE_BYTES_MAX`].
//!
//! Our own client rather than instant-acme's default one: that one builds its rustls config
//! from the process-wide crypto provider (none is installed here, and two are compiled in) and
//! reads the platform's trust store, which the hardened unit's file-system view may not show.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use crate::acme::AcmeError;

/// One request's wait for the response head, at most (the whole order has its own bound).
pub const ACME_HTTP_TIMEOUT_MS: u64 = 30_000;
/// The largest response body read: a directory, an order or a certificate chain.
pub const ACME_RESPONSE_BYTES_MAX: usize = 1 << 20;
/// The largest `acme.ca_file` read.
pub const ACME_CA_FILE_BYTES_MAX: u64 = 1 << 20;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

#[derive(Clone)]
pub struct AcmeHttp {
    client: Client<Https, BodyWrapper<Bytes>>,
}

impl AcmeHttp {
    /// A client trusting the web PKI and the roots in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<AcmeHttp, AcmeError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca_file {
            for cert in read_roots(path)? {
                roots.add(cert).map_err(|source| AcmeError::CaFileCert {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(AcmeError::ClientTls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .build();
        Ok(AcmeHttp {
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }
}

/// The certificates of a PEM file (bounded), at least one.
fn read_roots(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, AcmeError> {
    use std::io::Read;
    let io = |source| AcmeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(ACME_CA_FILE_BYTES_MAX)
        .read_to_end(&mut pem)
        .map_err(io)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(io)?;
    if certs.is_empty() {
        return Err(AcmeError::CaFileEmpty {
            path: PathBuf::from(path),
        });
    }
    Ok(certs)
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.client.request(req);
        Box::pin(async move {
            let limit = Duration::from_millis(ACME_HTTP_TIMEOUT_MS);
            let rsp = tokio::time::timeout(limit, fut)
                .await
                .map_err(|_| instant_acme::Error::Str("no response from the ACME server in time"))?
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let (parts, body) = rsp.into_parts();
            let body = http_body_util::Limited::new(body, ACME_RESPONSE_BYTES_MAX);
            Ok(BytesResponse::from(http::Response::from_parts(parts, body)))
        })
    }
}
