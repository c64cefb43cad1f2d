//! TLS client configurations: opportunistic (no certificate check, handshake signatures still
//! verified), required (webpki roots plus configured extra roots, name checked) and DANE (the
//! MX host's TLSA records, `crate::dane::DaneVerifier`).

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{ClientError, TlsInfo};

/// Extra root PEMs accepted per configuration (more is a configuration error).
pub const EXTRA_ROOTS_MAX: usize = 64;

/// The process default provider if the engine installed one, else aws-lc-rs.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Built once per process: it holds no roots.
pub(super) fn opportunistic_config() -> Result<Arc<rustls::ClientConfig>, ClientError> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(c.clone());
    }
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert { provider }))
        .with_no_client_auth();
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

/// A verified-mode config and the extra roots it was built with.
type CachedRequired = Option<(Vec<Vec<u8>>, Arc<rustls::ClientConfig>)>;

thread_local! {
    /// The last verified-mode config built on this shard, keyed by its extra roots, because
    /// parsing the webpki root set per connection would cost more than the handshake.
    static REQUIRED: RefCell<CachedRequired> =
        const { RefCell::new(None) };
}

pub(super) fn required_config(
    extra_roots_pem: &[Vec<u8>],
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let cached = REQUIRED.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(key, _)| key.as_slice() == extra_roots_pem)
            .map(|(_, cfg)| cfg.clone())
    });
    if let Some(cfg) = cached {
        return Ok(cfg);
    }
    if extra_roots_pem.len() > EXTRA_ROOTS_MAX {
        return Err(tls_err(format!(
            "more than {EXTRA_ROOTS_MAX} extra root certificates"
        )));
    }
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for pem in extra_roots_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| tls_err(format!("extra root PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| tls_err(format!("extra root certificate: {e}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let config = Arc::new(config);
    REQUIRED.with(|c| *c.borrow_mut() = Some((extra_roots_pem.to_vec(), config.clone())));
    Ok(config)
}

/// A config that accepts only a chain matching `tlsa` (built per connection: the records are
/// the host's, and building it parses no root store).
pub(super) fn dane_config(
    tlsa: Arc<[crate::dane::Tlsa]>,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let provider = provider();
    let verifier = crate::dane::DaneVerifier::new(tlsa, provider.clone());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name to present (SNI) and, in required mode, to verify.
pub(super) fn server_name(mx_name: &str, addr: std::net::SocketAddr) -> ServerName<'static> {
    ServerName::try_from(mx_name.trim_end_matches('.').to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()))
}

pub(super) fn info(conn: &rustls::ClientConnection) -> TlsInfo {
    let version = conn
        .protocol_version()
        .map(|v| match v {
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default();
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    TlsInfo { version, cipher }
}

fn tls_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Tls {
        reason: e.to_string(),
    }
}

/// Accepts any certificate chain (opportunistic TLS protects against passive eavesdropping
/// only) but still checks the handshake signatures, so the session key is bound to the
/// certificate the peer presented.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
