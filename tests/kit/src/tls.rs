//! Throw-away certificates for TLS tests: a CA and a leaf signed by it, so a client can be
//! told to trust the CA (verified TLS) or not (opportunistic or failing TLS).

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA and a server config whose certificate (for one name) it signed.
pub struct TestPki {
    /// The CA certificate, PEM: what a verifying client adds to its roots.
    pub ca_pem: String,
    /// The CA certificate, DER.
    pub ca_der: rustls_pki_types::CertificateDer<'static>,
    /// The leaf certificate, DER (what a DANE-EE TLSA record pins).
    pub leaf_der: rustls_pki_types::CertificateDer<'static>,
    /// Serves the leaf (and the CA) certificate with the leaf's key.
    pub server_config: Arc<rustls::ServerConfig>,
}

/// A new CA ("Petrel Test CA") and a leaf certificate for `name` signed by it.
pub fn test_pki(name: &str) -> TestPki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Petrel Test CA");
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec![name.to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf certificate");
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .expect("server config");
    TestPki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        leaf_der: leaf.der().clone(),
        server_config: Arc::new(config),
    }
}

/// A client config that trusts exactly `root` (DER).
pub fn client_config_trusting(
    root: rustls_pki_types::CertificateDer<'static>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).expect("a valid root certificate");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// The crypto provider every test config uses (explicit: no process-wide default needed).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
