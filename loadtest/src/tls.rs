//! TLS for loopback testing: a self-signed server certificate (rcgen) and a client that accepts
//! any certificate. Never use these outside tests and benchmarks.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::LoadError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A server config with a fresh self-signed certificate for `localhost`. Without `resumption`
/// it issues no TLS 1.3 tickets and keeps no TLS 1.2 sessions, so every handshake with it is a
/// full one (what a handshake benchmark must measure, as rustls resumes by default).
pub fn self_signed_server(resumption: bool) -> Result<Arc<rustls::ServerConfig>, LoadError> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .map_err(|e| LoadError::Tls(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| LoadError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .map_err(|e| LoadError::Tls(e.to_string()))?;
    if !resumption {
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
    }
    Ok(Arc::new(cfg))
}

/// A client config that accepts any server certificate (loopback test peers are self-signed).
/// Without `resumption` it offers no session from an earlier connection, so every handshake
/// is a full one, as from a client the server has never seen.
pub fn insecure_client(resumption: bool) -> Result<Arc<rustls::ClientConfig>, LoadError> {
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| LoadError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    if !resumption {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

/// Whether a finished handshake resumed an earlier session (counted by the injector and the
/// sink: a resumed handshake skips the certificate and its signature, so it costs less).
pub fn resumed(conn: &rustls::CommonState) -> bool {
    conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

/// Accepts every certificate but still checks handshake signatures (also the end-to-end TLS
/// tests' client verifier: they compare the leaf they get themselves).
#[derive(Debug)]
pub struct AcceptAny(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moves every pending TLS record from `from` to `to` and lets `to` process them.
    fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).expect("writing to a Vec");
        }
        let mut rd = wire.as_slice();
        while !rd.is_empty() {
            to.read_tls(&mut rd).expect("reading from a slice");
            to.process_new_packets().expect("a valid TLS flight");
        }
    }

    /// One handshake in memory; returns the client's view of its kind.
    fn handshake(
        client: &Arc<rustls::ClientConfig>,
        server: &Arc<rustls::ServerConfig>,
    ) -> Option<rustls::HandshakeKind> {
        let name = ServerName::try_from("localhost").expect("a valid name");
        let mut c = rustls::Connection::Client(
            rustls::ClientConnection::new(client.clone(), name).expect("client connection"),
        );
        let mut s = rustls::Connection::Server(
            rustls::ServerConnection::new(server.clone()).expect("server connection"),
        );
        // A TLS 1.3 handshake takes two flights each way, and the tickets follow the server's
        // last one; a few more rounds than that are harmless no-ops.
        for _ in 0..4 {
            pump(&mut c, &mut s);
            pump(&mut s, &mut c);
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        assert_eq!(resumed(&c), resumed(&s), "both ends agree");
        c.handshake_kind()
    }

    #[test]
    fn resumption_on_and_off() {
        use rustls::HandshakeKind::{Full, Resumed};
        let server = self_signed_server(true).unwrap();
        let client = insecure_client(true).unwrap();
        assert_eq!(handshake(&client, &server), Some(Full));
        assert_eq!(handshake(&client, &server), Some(Resumed));
        // Either end can refuse: the client offers nothing, or the server issues nothing.
        let fresh = insecure_client(false).unwrap();
        assert_eq!(handshake(&fresh, &server), Some(Full));
        assert_eq!(handshake(&fresh, &server), Some(Full));
        let forgetful = self_signed_server(false).unwrap();
        let client = insecure_client(true).unwrap();
        assert_eq!(handshake(&client, &forgetful), Some(Full));
        assert_eq!(handshake(&client, &forgetful), Some(Full));
    }
}
