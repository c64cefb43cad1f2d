//! Sealed records (issue 16), pure: a message and its journal updates encrypted under a data
//! key of the keyring (`petrel-seal`), the tenant's own or the operator's.
//!
//! ```text
//! sealed store  (kind 6) payload:  id u64 | frame( envelope_len u32 | attribution_len u32
//!                                                  | archived envelope | archived attribution
//!                                                  | body )
//! sealed update (kind 7) payload:  id u64 | frame( archived updates )
//! kind 9: as kind 6, its attribution part as `record` describes for kind 8 (DSN parameters)
//! frame: data key id u32 | nonce 12 | ciphertext | tag 16     (petrel_seal::aead)
//! associated data: "petrel-spool" | kind u8 | id u64 LE
//! ```
//!
//! The id stays in the clear: recovery indexes by it, and removals (kind 4, an id only) need no
//! key. The associated data binds each frame to its kind and id, so a frame copied under
//! another message's id fails to open. The record's crc32c covers the sealed bytes, as it covers
//! any payload: a torn or damaged record is found without a key; the GCM tag then proves what
//! the key opens is what was written.
//!
//! A record whose data key is no longer in the keyring was crypto-shredded (its tenant was
//! deleted): recovery counts it and drops the message.

use petrel_seal::{frame_key_id, DataKey, Keyring, SEALED_OVERHEAD_BYTES};

use crate::record::{self, align_up, Kind, RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES};
use crate::types::{Attribution, DsnParams, Envelope, RecipientUpdate};

/// Bytes of the clear id in front of the frame.
pub const SEALED_ID_BYTES: usize = 8;
/// Bytes of the lengths at the start of a sealed store's plaintext.
pub const SEALED_STORE_LENGTHS_BYTES: usize = 8;

/// Why a sealed record did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsealed {
    /// Its data key is not in the keyring (destroyed: the tenant was deleted).
    NoKey(u32),
    /// It failed authentication or its contents do not parse.
    Damaged,
}

fn aad(kind: Kind, id: u64) -> [u8; 21] {
    let mut a = [0u8; 21];
    a[..12].copy_from_slice(b"petrel-spool");
    a[12] = kind as u8;
    a[13..].copy_from_slice(&id.to_le_bytes());
    a
}

/// Length of a sealed store payload for these parts.
pub fn store_payload_len(envelope: usize, attribution: usize, body: usize) -> usize {
    SEALED_ID_BYTES
        + SEALED_OVERHEAD_BYTES
        + SEALED_STORE_LENGTHS_BYTES
        + envelope
        + attribution
        + body
}

/// Appends a sealed store record of `kind` (6, or 9 when `attribution` is a DSN part) to
/// `out`, padded to `align`; returns its length.
#[allow(clippy::too_many_arguments)]
pub fn encode_store(
    out: &mut Vec<u8>,
    kind: Kind,
    id: u64,
    key: &DataKey,
    envelope: &[u8],
    attribution: &[u8],
    body: &[u8],
    align: usize,
) -> usize {
    let mut lengths = [0u8; SEALED_STORE_LENGTHS_BYTES];
    lengths[..4].copy_from_slice(&(envelope.len() as u32).to_le_bytes());
    lengths[4..].copy_from_slice(&(attribution.len() as u32).to_le_bytes());
    encode(
        out,
        kind,
        id,
        key,
        &[&lengths, envelope, attribution, body],
        align,
    )
}

/// Appends a sealed update record (journal alignment).
pub fn encode_update(out: &mut Vec<u8>, id: u64, key: &DataKey, archived: &[u8]) -> usize {
    encode(
        out,
        Kind::SealedUpdate,
        id,
        key,
        &[archived],
        RECORD_ALIGN_BYTES,
    )
}

fn encode(
    out: &mut Vec<u8>,
    kind: Kind,
    id: u64,
    key: &DataKey,
    parts: &[&[u8]],
    align: usize,
) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    out.extend_from_slice(&id.to_le_bytes());
    key.seal_append(&aad(kind, id), parts, out);
    let payload_len = out.len() - start - RECORD_HEADER_BYTES;
    let record_len = align_up(
        RECORD_HEADER_BYTES + payload_len,
        align.max(RECORD_ALIGN_BYTES),
    );
    let crc = crc32c::crc32c(&out[start + RECORD_HEADER_BYTES..]);
    out[start..start + RECORD_HEADER_BYTES].copy_from_slice(&record::header(
        kind,
        payload_len,
        record_len,
        crc,
    ));
    out.resize(start + record_len, 0);
    record_len
}

/// The id and data key id of a sealed payload, without opening it.
pub fn peek(payload: &[u8]) -> Option<(u64, u32)> {
    let id = record::u64_at(payload, 0)?;
    let key = frame_key_id(payload.get(SEALED_ID_BYTES..)?).ok()?;
    Some((id, key))
}

fn open(kind: Kind, payload: &[u8], keys: &Keyring) -> Result<(u64, u32, Vec<u8>), Unsealed> {
    let (id, key_id) = peek(payload).ok_or(Unsealed::Damaged)?;
    let key = keys.get(key_id).ok_or(Unsealed::NoKey(key_id))?;
    let plain = key
        .open(&aad(kind, id), &payload[SEALED_ID_BYTES..])
        .map_err(|_| Unsealed::Damaged)?;
    Ok((id, key_id, plain))
}

/// A sealed store record, opened.
#[derive(Debug)]
pub struct OpenedStore {
    pub id: u64,
    /// The data key that sealed it (its updates are sealed under the same key).
    pub key_id: u32,
    pub envelope: Envelope,
    pub attribution: Attribution,
    pub dsn: DsnParams,
    /// The plaintext; the body is `plain[body_offset..]`.
    plain: Vec<u8>,
    body_offset: usize,
}

impl OpenedStore {
    pub fn body(&self) -> &[u8] {
        &self.plain[self.body_offset..]
    }

    pub fn into_body(mut self) -> Vec<u8> {
        self.plain.drain(..self.body_offset);
        self.plain
    }
}

/// Opens and decodes a sealed store payload of `kind` (6 or 9).
pub fn open_store(kind: Kind, payload: &[u8], keys: &Keyring) -> Result<OpenedStore, Unsealed> {
    let (id, key_id, plain) = open(kind, payload, keys)?;
    let env_len = record::u32_at(&plain, 0).ok_or(Unsealed::Damaged)? as usize;
    let attr_len = record::u32_at(&plain, 4).ok_or(Unsealed::Damaged)? as usize;
    let env_end = SEALED_STORE_LENGTHS_BYTES
        .checked_add(env_len)
        .ok_or(Unsealed::Damaged)?;
    let attr_end = env_end.checked_add(attr_len).ok_or(Unsealed::Damaged)?;
    let envelope = plain
        .get(SEALED_STORE_LENGTHS_BYTES..env_end)
        .and_then(record::decode_archived::<Envelope>)
        .ok_or(Unsealed::Damaged)?;
    let part = plain.get(env_end..attr_end).ok_or(Unsealed::Damaged)?;
    let (attribution, dsn) =
        record::decode_attribution_part(kind, part).ok_or(Unsealed::Damaged)?;
    Ok(OpenedStore {
        id,
        key_id,
        envelope,
        attribution,
        dsn,
        plain,
        body_offset: attr_end,
    })
}

/// Opens and decodes a sealed update payload.
pub fn open_update(
    payload: &[u8],
    keys: &Keyring,
) -> Result<(u64, Vec<RecipientUpdate>), Unsealed> {
    let (id, _, plain) = open(Kind::SealedUpdate, payload, keys)?;
    let updates =
        record::decode_archived::<Vec<RecipientUpdate>>(&plain).ok_or(Unsealed::Damaged)?;
    Ok((id, updates))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RecipientState;
    use std::sync::Arc;

    fn keyring(dir: &std::path::Path) -> Keyring {
        let kek = Arc::new(petrel_seal::KekFile::generate(&dir.join("kek")).unwrap());
        Keyring::open(&dir.join("keys"), kek).unwrap()
    }

    #[test]
    fn sealed_store_and_update_round_trip_and_hide_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keyring(dir.path());
        let key = keys.current_or_create(Some("t1")).unwrap();
        let env = Envelope {
            mail_from: "marker-sender@example.com".into(),
            recipients: vec![],
            tenant: Some("t1".into()),
            received_unix_ms: 1,
            client_addr: "127.0.0.1:1".into(),
            helo: "h".into(),
            authenticated_as: None,
            smtputf8: false,
            body_8bit: false,
            is_dsn: false,
        };
        let attr = Attribution {
            tenant_id: Some("t1".into()),
            ..Attribution::default()
        };
        let meta = record::encode_envelope(&env).unwrap();
        let a = record::encode_attribution(&attr).unwrap();
        let mut out = Vec::new();
        let len = encode_store(
            &mut out,
            Kind::SealedStore,
            9,
            &key,
            &meta,
            &a,
            b"MARKER body",
            512,
        );
        assert_eq!((len, out.len()), (512, 512));
        let raw = String::from_utf8_lossy(&out);
        assert!(!raw.contains("MARKER") && !raw.contains("marker-sender"));
        let rec = record::decode_at(&out, 0).unwrap();
        assert_eq!(rec.kind, Kind::SealedStore);
        assert_eq!(
            rec.payload.len(),
            store_payload_len(meta.len(), a.len(), 11)
        );
        let s = open_store(rec.kind, rec.payload, &keys).unwrap();
        assert_eq!((s.id, s.key_id), (9, key.id()));
        assert_eq!((&s.envelope, &s.attribution), (&env, &attr));
        assert_eq!(s.body(), b"MARKER body");
        let ups = vec![RecipientUpdate {
            index: 0,
            state: RecipientState::Delivered,
            attempts: 1,
            next_attempt_unix_ms: 0,
            last_reply: Some("250 ok <marker@example.com>".into()),
        }];
        let archived = record::encode_updates(&ups).unwrap();
        let mut j = Vec::new();
        encode_update(&mut j, 9, &key, &archived);
        assert!(!String::from_utf8_lossy(&j).contains("marker@"));
        let rec = record::decode_at(&j, 0).unwrap();
        assert_eq!(open_update(rec.payload, &keys).unwrap(), (9, ups));
        // A frame moved under another id does not open.
        let mut moved = record::decode_at(&out, 0).unwrap().payload.to_vec();
        moved[..8].copy_from_slice(&10u64.to_le_bytes());
        assert_eq!(
            open_store(Kind::SealedStore, &moved, &keys).unwrap_err(),
            Unsealed::Damaged
        );
        // Once the tenant's keys are destroyed, its records are shredded.
        keys.destroy_owner("t1").unwrap();
        let rec = record::decode_at(&out, 0).unwrap();
        assert_eq!(
            open_store(rec.kind, rec.payload, &keys).unwrap_err(),
            Unsealed::NoKey(key.id())
        );
    }
}
