//! Webhook secrets and delivery signatures.
//!
//! A secret is `whsec_` followed by 32 random bytes in hex; the HMAC key is the secret string
//! exactly as shown (its UTF-8 bytes, prefix included), which is what a receiver has. A delivery
//! is signed as `v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`; while a rotated-out
//! secret is still valid, one `v1=` per secret, comma separated, newest first.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What every secret starts with (so a leaked one is recognisable in logs and scanners).
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a secret.
pub const SECRET_RANDOM_BYTES: usize = 32;

/// A new random secret.
pub fn new_secret() -> String {
    format!(
        "{SECRET_PREFIX}{}",
        hex::encode(rand::random::<[u8; SECRET_RANDOM_BYTES]>())
    )
}

/// `v1=<hex>` for one secret.
pub fn signature(secret: &str, timestamp_secs: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The `X-Petrel-Signature` value: one signature per valid secret.
pub fn header(secrets: &[&str], timestamp_secs: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| signature(s, timestamp_secs, body))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // Computed independently: python3 -c 'import hmac,hashlib;
        // print(hmac.new(b"whsec_k", b"1700000000.{}", hashlib.sha256).hexdigest())'
        assert_eq!(
            signature("whsec_k", 1_700_000_000, b"{}"),
            "v1=8b20524faff2b12e1089e404a8cf60fbe577e5320e899ebff7329ebbcb9ada22"
        );
        let two = header(&["a", "b"], 1, b"x");
        assert_eq!(two.split(',').count(), 2);
        assert!(two.starts_with(&signature("a", 1, b"x")));
        let s = new_secret();
        assert!(s.starts_with(SECRET_PREFIX));
        assert_eq!(s.len(), SECRET_PREFIX.len() + 2 * SECRET_RANDOM_BYTES);
    }
}
