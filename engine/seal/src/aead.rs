//! One data key and the sealed frame it writes (AES-256-GCM, aws-lc-rs).
//!
//! ```text
//! offset  size  field
//!      0     4  data key id (u32 LE): which key of the keyring sealed it
//!      4    12  nonce: 4 random bytes chosen when the key was loaded, then a 64-bit counter
//!     16     n  ciphertext
//!   16+n    16  GCM tag
//! ```
//!
//! **Nonces never repeat under one key.** A random 96-bit nonce per message would reach
//! NIST's 2^32 bound in about a day at 40,000 messages a second. Instead each loaded key counts:
//! the 64-bit counter starts at a random value and the 4-byte prefix is random per load, so
//! within a process no nonce repeats, and two processes (a restart) collide only if both their
//! random prefixes and their counter ranges meet (about n / 2^96 for n messages).
//!
//! The caller's associated data binds a frame to its place (a spool record binds its kind and
//! message id), so a frame moved elsewhere fails to open.

use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use crate::error::SealError;

/// Bytes of a data key (AES-256).
pub const KEY_BYTES: usize = 32;
/// Bytes of a GCM nonce.
pub const NONCE_BYTES: usize = 12;
/// Bytes of a GCM tag.
pub const TAG_BYTES: usize = 16;
/// Bytes before the ciphertext: key id and nonce.
pub const SEALED_HEADER_BYTES: usize = 4 + NONCE_BYTES;
/// Bytes a frame adds to its plaintext.
pub const SEALED_OVERHEAD_BYTES: usize = SEALED_HEADER_BYTES + TAG_BYTES;

/// Who a data key belongs to: a tenant (its id), or the operator (messages without a tenant,
/// the engine's own files).
pub type Owner = Option<String>;

/// Fills `buf` from the system's random source.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), SealError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| SealError::Random)
}

/// One AES-256-GCM data key, ready to seal and open. Send + Sync: shards share it.
pub struct DataKey {
    id: u32,
    owner: Owner,
    created_unix_ms: u64,
    raw: Zeroizing<[u8; KEY_BYTES]>,
    key: LessSafeKey,
    prefix: [u8; 4],
    counter: AtomicU64,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("created_unix_ms", &self.created_unix_ms)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    /// A new random key.
    pub fn generate(id: u32, owner: Owner, created_unix_ms: u64) -> Result<DataKey, SealError> {
        let mut raw = Zeroizing::new([0u8; KEY_BYTES]);
        random_bytes(raw.as_mut())?;
        DataKey::from_raw(id, owner, created_unix_ms, raw)
    }

    /// A key from its bytes (unwrapped from the keyring).
    pub fn from_raw(
        id: u32,
        owner: Owner,
        created_unix_ms: u64,
        raw: Zeroizing<[u8; KEY_BYTES]>,
    ) -> Result<DataKey, SealError> {
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, raw.as_ref()).map_err(|_| SealError::Open)?,
        );
        let mut prefix = [0u8; 4];
        random_bytes(&mut prefix)?;
        let mut start = [0u8; 8];
        random_bytes(&mut start)?;
        Ok(DataKey {
            id,
            owner,
            created_unix_ms,
            raw,
            key,
            prefix,
            counter: AtomicU64::new(u64::from_le_bytes(start)),
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    pub fn created_unix_ms(&self) -> u64 {
        self.created_unix_ms
    }

    /// HMAC-SHA256 under a subkey of this key for `label`: a blind index (equal inputs give
    /// equal outputs, nothing else is learnt) that goes when the key goes.
    pub fn mac(&self, label: &[u8], data: &[u8]) -> [u8; 32] {
        use aws_lc_rs::hmac;
        let sub = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, self.raw.as_ref()), label);
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, sub.as_ref()), data);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The key's bytes, to wrap it (the keyring only).
    pub(crate) fn raw(&self) -> &[u8; KEY_BYTES] {
        &self.raw
    }

    fn next_nonce(&self) -> [u8; NONCE_BYTES] {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; NONCE_BYTES];
        nonce[..4].copy_from_slice(&self.prefix);
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        nonce
    }

    /// Appends one sealed frame of the concatenated `parts` to `out`. Returns the frame's
    /// length (`SEALED_OVERHEAD_BYTES` + the plaintext's).
    pub fn seal_append(&self, aad: &[u8], parts: &[&[u8]], out: &mut Vec<u8>) -> usize {
        let start = out.len();
        let plain_len: usize = parts.iter().map(|p| p.len()).sum();
        out.reserve(SEALED_OVERHEAD_BYTES + plain_len);
        let nonce = self.next_nonce();
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&nonce);
        let ct_start = out.len();
        for p in parts {
            out.extend_from_slice(p);
        }
        // GCM fails only past 2^36 bytes per frame, far above every bound of ours (the spool's
        // largest record is 68 MiB): the tag is always there.
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[ct_start..],
            )
            .map(|t| {
                let mut b = [0u8; TAG_BYTES];
                b.copy_from_slice(t.as_ref());
                b
            })
            .unwrap_or([0u8; TAG_BYTES]);
        out.extend_from_slice(&tag);
        out.len() - start
    }

    /// Opens a frame sealed by this key; returns the plaintext.
    pub fn open(&self, aad: &[u8], frame: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut buf = frame.to_vec();
        let len = self.open_in_place(aad, &mut buf)?.len();
        buf.copy_within(SEALED_HEADER_BYTES..SEALED_HEADER_BYTES + len, 0);
        buf.truncate(len);
        Ok(buf)
    }

    /// Opens a frame in place; the plaintext is the returned slice of `frame`.
    pub fn open_in_place<'a>(
        &self,
        aad: &[u8],
        frame: &'a mut [u8],
    ) -> Result<&'a mut [u8], SealError> {
        let id = frame_key_id(frame)?;
        if id != self.id {
            return Err(SealError::Open);
        }
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&frame[4..SEALED_HEADER_BYTES]);
        self.key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut frame[SEALED_HEADER_BYTES..],
            )
            .map_err(|_| SealError::Open)
    }
}

/// The id of the data key that sealed `frame`.
pub fn frame_key_id(frame: &[u8]) -> Result<u32, SealError> {
    if frame.len() < SEALED_OVERHEAD_BYTES {
        return Err(SealError::Truncated {
            len: frame.len(),
            min: SEALED_OVERHEAD_BYTES,
        });
    }
    Ok(u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_opens_only_with_its_key_and_its_associated_data() {
        let k = DataKey::generate(7, Some("t1".into()), 1).unwrap();
        let mut out = b"prefix".to_vec();
        let n = k.seal_append(b"ctx", &[b"hello ", b"world"], &mut out);
        assert_eq!(n, SEALED_OVERHEAD_BYTES + 11);
        let frame = &out[6..];
        assert_eq!(frame_key_id(frame).unwrap(), 7);
        assert!(!frame.windows(5).any(|w| w == b"hello"));
        assert_eq!(k.open(b"ctx", frame).unwrap(), b"hello world");
        assert!(matches!(k.open(b"other", frame), Err(SealError::Open)));
        let other = DataKey::generate(7, None, 1).unwrap();
        assert!(matches!(other.open(b"ctx", frame), Err(SealError::Open)));
        let mut bad = frame.to_vec();
        bad[SEALED_HEADER_BYTES] ^= 1;
        assert!(matches!(k.open(b"ctx", &bad), Err(SealError::Open)));
        assert!(matches!(
            k.open(b"ctx", &frame[..10]),
            Err(SealError::Truncated { .. })
        ));
    }

    #[test]
    fn nonces_do_not_repeat_within_a_key() {
        let k = DataKey::generate(1, None, 1).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let mut out = Vec::new();
            k.seal_append(b"", &[b"x"], &mut out);
            assert!(seen.insert(out[4..16].to_vec()));
        }
        // An empty plaintext still seals and opens.
        let mut out = Vec::new();
        k.seal_append(b"", &[], &mut out);
        assert_eq!(k.open(b"", &out).unwrap(), b"");
    }
}
