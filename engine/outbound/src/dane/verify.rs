//! Certificate matching under DANE (RFC 7672 §3.1, RFC 6698 §2.1): a rustls
//! [`ServerCertVerifier`] built from one MX host's usable TLSA records.
//!
//! - DANE-EE(3): the server's certificate (selector 0) or its SubjectPublicKeyInfo (selector 1)
//!   matches the record, in full or by SHA-256 or SHA-512. Names and dates are ignored
//!   (RFC 7672 §3.1.1): the record is the trust.
//! - DANE-TA(2): a certificate the server presents in its chain matches the record; the chain
//!   from the server's certificate up to that one validates (signatures, dates, key usage), with
//!   it as the only trust anchor, and the server's certificate is valid for the MX host name
//!   (the TLSA base domain, since CNAMEs are not followed; RFC 7672 §3.2.2). A trust anchor
//!   published as a bare key that the server does not send is not supported.
//! - With no record at all the verifier accepts any chain: TLS is mandatory but not
//!   authenticated (every record was unusable, RFC 7672 §2.2).
//!
//! In every case the handshake signatures are checked against the presented key, so the session
//! is bound to the certificate that matched.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256, Sha512};

use super::{
    Tlsa, MATCHING_FULL, MATCHING_SHA256, MATCHING_SHA512, SELECTOR_CERT, SELECTOR_SPKI,
    USAGE_DANE_EE, USAGE_DANE_TA,
};

/// Intermediate certificates examined for a DANE-TA match; a longer chain's tail is ignored.
pub const DANE_TA_CHAIN_MAX: usize = 8;

/// Accepts a server chain only when it matches one of the TLSA records (see the module docs).
#[derive(Debug)]
pub struct DaneVerifier {
    /// Usable records only (`Tlsa::is_usable`); empty: encrypt without authentication.
    records: Arc<[Tlsa]>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    /// A verifier for `records` (callers pass the usable ones; others never match).
    pub fn new(records: Arc<[Tlsa]>, provider: Arc<CryptoProvider>) -> DaneVerifier {
        DaneVerifier { records, provider }
    }

    /// Whether the chain matches a DANE-EE record.
    fn matches_ee(&self, end_entity: &CertificateDer<'_>) -> bool {
        self.records
            .iter()
            .filter(|r| r.usage == USAGE_DANE_EE)
            .any(|r| matches(r, end_entity))
    }

    /// Whether a presented intermediate matches a DANE-TA record and the chain up to it
    /// validates for `server_name`.
    fn matches_ta(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> bool {
        let ta_records: Vec<&Tlsa> = self
            .records
            .iter()
            .filter(|r| r.usage == USAGE_DANE_TA)
            .collect();
        if ta_records.is_empty() {
            return false;
        }
        for (i, cert) in intermediates.iter().enumerate().take(DANE_TA_CHAIN_MAX) {
            if !ta_records.iter().any(|r| matches(r, cert)) {
                continue;
            }
            let mut roots = rustls::RootCertStore::empty();
            if roots.add(cert.clone().into_owned()).is_err() {
                continue;
            }
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build();
            let Ok(verifier) = verifier else {
                continue;
            };
            let chain = &intermediates[..i];
            if verifier
                .verify_server_cert(end_entity, chain, server_name, &[], now)
                .is_ok()
            {
                return true;
            }
        }
        false
    }
}

/// Whether `cert` matches `record` (selector and matching type applied).
pub(crate) fn matches(record: &Tlsa, cert: &CertificateDer<'_>) -> bool {
    let spki;
    let selected: &[u8] = match record.selector {
        SELECTOR_CERT => cert.as_ref(),
        SELECTOR_SPKI => {
            let Ok(parsed) = webpki::EndEntityCert::try_from(cert) else {
                return false;
            };
            spki = parsed.subject_public_key_info();
            spki.as_ref()
        }
        _ => return false,
    };
    match record.matching {
        MATCHING_FULL => selected == record.data.as_slice(),
        MATCHING_SHA256 => Sha256::digest(selected).as_slice() == record.data.as_slice(),
        MATCHING_SHA512 => Sha512::digest(selected).as_slice() == record.data.as_slice(),
        _ => false,
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.records.is_empty()
            || self.matches_ee(end_entity)
            || self.matches_ta(end_entity, intermediates, server_name, now)
        {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    const MX: &str = "mx.a.test";

    /// A CA and a leaf for `name` it signed, valid from `not_before` to `not_after` (years).
    struct Chain {
        ca: CertificateDer<'static>,
        leaf: CertificateDer<'static>,
        leaf_spki: Vec<u8>,
    }

    fn chain(name: &str, expired: bool) -> Chain {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut leaf_params = CertificateParams::new(vec![name.to_string()]).expect("params");
        if expired {
            leaf_params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            leaf_params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf certificate");
        Chain {
            ca: ca.der().clone(),
            leaf: leaf.der().clone(),
            leaf_spki: leaf_key.public_key_der(),
        }
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn verify(records: Vec<Tlsa>, c: &Chain, name: &str) -> bool {
        let v = DaneVerifier::new(records.into(), provider());
        let name = ServerName::try_from(name.to_string()).expect("a name");
        v.verify_server_cert(
            &c.leaf,
            std::slice::from_ref(&c.ca),
            &name,
            &[],
            UnixTime::now(),
        )
        .is_ok()
    }

    fn rec(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    #[test]
    fn dane_ee_matches_the_key_or_the_certificate_in_every_matching_type() {
        let c = chain(MX, false);
        let spki = c.leaf_spki.clone();
        let cert = c.leaf.to_vec();
        for r in [
            rec(3, 1, 1, Sha256::digest(&spki).to_vec()),
            rec(3, 1, 2, Sha512::digest(&spki).to_vec()),
            rec(3, 1, 0, spki.clone()),
            rec(3, 0, 1, Sha256::digest(&cert).to_vec()),
            rec(3, 0, 2, Sha512::digest(&cert).to_vec()),
            rec(3, 0, 0, cert.clone()),
        ] {
            assert!(verify(vec![r.clone()], &c, MX), "{r:?}");
        }
    }

    #[test]
    fn dane_ee_ignores_names_and_dates() {
        let c = chain("someone.else.test", true);
        let r = rec(3, 1, 1, Sha256::digest(&c.leaf_spki).to_vec());
        assert!(verify(vec![r], &c, MX));
    }

    #[test]
    fn a_certificate_matching_no_record_is_refused() {
        let c = chain(MX, false);
        let other = chain(MX, false);
        let wrong = rec(3, 1, 1, Sha256::digest(&other.leaf_spki).to_vec());
        assert!(!verify(vec![wrong.clone()], &c, MX));
        // One matching record among several is enough.
        let right = rec(3, 1, 1, Sha256::digest(&c.leaf_spki).to_vec());
        assert!(verify(vec![wrong, right], &c, MX));
        // The CA's digest as DANE-EE does not vouch for the leaf.
        let ca_as_ee = rec(3, 0, 1, Sha256::digest(c.ca.as_ref()).to_vec());
        assert!(!verify(vec![ca_as_ee], &c, MX));
    }

    #[test]
    fn dane_ta_needs_the_chain_to_the_anchor_and_the_mx_name() {
        let c = chain(MX, false);
        let ta = rec(2, 0, 1, Sha256::digest(c.ca.as_ref()).to_vec());
        assert!(verify(vec![ta.clone()], &c, MX));
        assert!(
            !verify(vec![ta.clone()], &c, "other.a.test"),
            "name checked"
        );
        let expired = chain(MX, true);
        let ta_expired = rec(2, 0, 1, Sha256::digest(expired.ca.as_ref()).to_vec());
        assert!(!verify(vec![ta_expired], &expired, MX), "dates checked");
        // A leaf from another CA does not chain to this anchor, even sent with it.
        let stranger = chain(MX, false);
        let forged = Chain {
            ca: c.ca.clone(),
            leaf: stranger.leaf.clone(),
            leaf_spki: stranger.leaf_spki.clone(),
        };
        assert!(!verify(vec![ta], &forged, MX));
        // The leaf's own digest as DANE-TA is no anchor for it (only presented issuers are).
        let leaf_as_ta = rec(2, 0, 1, Sha256::digest(c.leaf.as_ref()).to_vec());
        assert!(!verify(vec![leaf_as_ta], &c, MX));
    }

    #[test]
    fn no_records_means_encryption_without_authentication() {
        let c = chain("anything.test", true);
        assert!(verify(Vec::new(), &c, MX));
    }
}
