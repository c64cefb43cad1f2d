//! DKIM key generation for the control plane (aws-lc-rs, the backend mail-auth already uses,
//! so every key made here loads in [`crate::dkim::DkimSigner`]).
//!
//! Private keys are PKCS#8 DER (v2 for Ed25519, v1 for RSA). The DNS record carries, per
//! RFC 6376 §3.6.1 and RFC 8463: for RSA the SubjectPublicKeyInfo DER, for Ed25519 the raw
//! 32-byte public key, both base64.

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine as _;

use crate::error::PolicyError;
use crate::snapshot::DkimAlgorithm;

/// RSA modulus size for `DkimAlgorithm::Rsa2048`, in bits.
pub const RSA_KEY_BITS: usize = 2048;
/// Longest character-string in a DNS TXT record (RFC 1035 §3.3.14), in bytes.
pub const TXT_STRING_MAX_BYTES: usize = 255;

/// A fresh key pair and what to publish.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    pub algorithm: DkimAlgorithm,
    /// Goes into `DkimKey::private_key_pkcs8_der`. Secret.
    pub private_key_pkcs8_der: Vec<u8>,
    /// The bytes base64-encoded in `p=` (SPKI DER for RSA, raw 32 bytes for Ed25519).
    pub public_key: Vec<u8>,
    /// The TXT record value for `<selector>._domainkey.<domain>`:
    /// `v=DKIM1; k=ed25519|rsa; p=<base64>`.
    pub dns_txt: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("algorithm", &self.algorithm)
            .field("private_key_pkcs8_der", &"<redacted>")
            .field("dns_txt", &self.dns_txt)
            .finish()
    }
}

/// Generate a key pair. RSA-2048 takes tens to hundreds of milliseconds: call it off any
/// latency-sensitive task (e.g. `tokio::task::spawn_blocking`).
pub fn generate(algorithm: DkimAlgorithm) -> Result<GeneratedKey, PolicyError> {
    let private_key_pkcs8_der = match algorithm {
        DkimAlgorithm::Ed25519 => Ed25519KeyPair::generate()
            .and_then(|k| k.to_pkcs8())
            .map_err(|_| key_err("ed25519 generation failed"))?
            .as_ref()
            .to_vec(),
        DkimAlgorithm::Rsa2048 => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| key_err("rsa generation failed"))?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> = pair
                .as_der()
                .map_err(|_| key_err("rsa pkcs8 encoding failed"))?;
            der.as_ref().to_vec()
        }
    };
    let public_key = public_key_from_private(algorithm, &private_key_pkcs8_der)?;
    let dns_txt = dns_txt_value(algorithm, &public_key);
    Ok(GeneratedKey {
        algorithm,
        private_key_pkcs8_der,
        public_key,
        dns_txt,
    })
}

/// The `p=` bytes for a stored private key (so the control plane need not store the public half).
/// Also a check that the key loads: RSA keys must be exactly [`RSA_KEY_BITS`].
pub fn public_key_from_private(
    algorithm: DkimAlgorithm,
    pkcs8_der: &[u8],
) -> Result<Vec<u8>, PolicyError> {
    match algorithm {
        DkimAlgorithm::Ed25519 => {
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8_der)
                .map_err(|e| key_err(format!("ed25519 pkcs8: {e}")))?;
            Ok(pair.public_key().as_ref().to_vec())
        }
        DkimAlgorithm::Rsa2048 => {
            let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(pkcs8_der)
                .map_err(|e| key_err(format!("rsa pkcs8: {e}")))?;
            let bits = pair.public_modulus_len() * 8;
            if bits != RSA_KEY_BITS {
                return Err(key_err(format!(
                    "rsa key has {bits} bits, want {RSA_KEY_BITS}"
                )));
            }
            let spki: PublicKeyX509Der<'static> = pair
                .public_key()
                .as_der()
                .map_err(|_| key_err("rsa public key encoding failed"))?;
            Ok(spki.as_ref().to_vec())
        }
    }
}

/// `v=DKIM1; k=<ed25519|rsa>; p=<base64 public key>`.
pub fn dns_txt_value(algorithm: DkimAlgorithm, public_key: &[u8]) -> String {
    let k = match algorithm {
        DkimAlgorithm::Ed25519 => "ed25519",
        DkimAlgorithm::Rsa2048 => "rsa",
    };
    format!(
        "v=DKIM1; k={k}; p={}",
        base64::engine::general_purpose::STANDARD.encode(public_key)
    )
}

/// Split a TXT value into the <= 255-byte character-strings a DNS record holds (an RSA-2048
/// record is ~410 bytes). Splits on byte boundaries; the value is ASCII.
pub fn dns_txt_strings(value: &str) -> Vec<String> {
    value
        .as_bytes()
        .chunks(TXT_STRING_MAX_BYTES)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect()
}

fn key_err(reason: impl Into<String>) -> PolicyError {
    PolicyError::Key {
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_key_and_record() {
        let k = generate(DkimAlgorithm::Ed25519).unwrap();
        assert_eq!(k.public_key.len(), 32);
        assert!(
            k.dns_txt.starts_with("v=DKIM1; k=ed25519; p="),
            "{}",
            k.dns_txt
        );
        assert_eq!(
            public_key_from_private(DkimAlgorithm::Ed25519, &k.private_key_pkcs8_der).unwrap(),
            k.public_key
        );
        assert!(!format!("{k:?}").contains(&format!("{:?}", k.private_key_pkcs8_der)));
    }

    #[test]
    fn rsa_key_and_record() {
        let k = generate(DkimAlgorithm::Rsa2048).unwrap();
        assert!(
            k.dns_txt.starts_with("v=DKIM1; k=rsa; p=MII"),
            "{}",
            k.dns_txt
        );
        let parts = dns_txt_strings(&k.dns_txt);
        assert!(parts.len() >= 2 && parts.iter().all(|p| p.len() <= 255));
        assert_eq!(parts.concat(), k.dns_txt);
        // An RSA key is not an Ed25519 key and vice versa.
        assert!(public_key_from_private(DkimAlgorithm::Ed25519, &k.private_key_pkcs8_der).is_err());
        assert!(public_key_from_private(DkimAlgorithm::Rsa2048, b"junk").is_err());
    }
}
