//! The on-disk record format (pure: no I/O).
//!
//! Every record, in data segments and journals alike, is framed the same way:
//!
//! ```text
//! offset  size  field
//!      0     4  magic  "PSPL" (0x4c505350 little endian)
//!      4     1  kind   (1 segment header, 2 store, 3 update, 4 remove, 5 attributed store,
//!                       6 sealed store, 7 sealed update: see `sealed.rs`, 8 store with DSN
//!                       parameters, 9 sealed store with DSN parameters)
//!      5     3  zero
//!      8     4  payload_len_bytes
//!     12     4  record_len_bytes   (header + payload + zero padding; a multiple of 8)
//!     16     4  crc32c(payload)
//!     20     4  crc32c(bytes 0..20)
//!     24     -  payload, then padding up to record_len_bytes
//! ```
//!
//! Records start at multiples of [`RECORD_ALIGN_BYTES`]; direct-I/O files pad further (to the
//! device block), which the reader follows through `record_len_bytes`. The header has its own
//! checksum so that a damaged payload can be skipped by length, while a damaged header makes the
//! scanner look for the next valid header at the following aligned offsets.
//!
//! A store payload is
//!
//! ```text
//! offset  size  field
//!      0     8  message id
//!      8     4  envelope_len_bytes
//!     12     4  attribution_len_bytes   (always 0 in kind 2)
//!     16     -  archived envelope, then archived attribution, then the body
//! ```
//!
//! **Compatibility.** The first format wrote kind 2 with bytes 12..16 zero, so every record it
//! wrote reads today as a message with an empty [`Attribution`]. A message with attribution is
//! written as kind 5 ([`Kind::StoreAttributed`]) rather than kind 2 with a length in the spare
//! bytes, so that an older binary, should one ever open this spool, skips it as an unknown
//! record instead of delivering the attribution bytes as the start of the body. The attribution
//! is its own archive (not a new envelope field) so that the envelope's archived layout, and
//! with it every old record's validation, stays exactly as it was.
//!
//! **DSN parameters** (RFC 3461, issue 18) follow the same rule. A message whose client gave
//! RET, ENVID, NOTIFY or ORCPT is written as kind 8 (clear) or 9 (sealed), whose attribution
//! part is `attribution_len u32 | archived attribution | archived DsnParams`; every other
//! message is written exactly as before, so the common case costs nothing and every record
//! already on disk reads as it did (with empty [`DsnParams`]).

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::types::{Attribution, DsnParams, Envelope, RecipientUpdate};

/// "PSPL" read as a little-endian u32.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"PSPL");
/// Size of the record header.
pub const RECORD_HEADER_BYTES: usize = 24;
/// Records start at multiples of this, and their length is a multiple of it.
pub const RECORD_ALIGN_BYTES: usize = 8;
/// Largest message body the spool takes.
pub const BODY_SIZE_MAX_BYTES: usize = 64 << 20;
/// Largest archived envelope (1000 recipients with long replies fit easily).
pub const ENVELOPE_SIZE_MAX_BYTES: usize = 4 << 20;
/// Largest archived attribution. Its parts are bounded at DATA time (tags 5 × 128 bytes,
/// metadata 1 KiB, Message-ID 998 bytes, a domain 255 bytes) and the tenant and credential ids
/// come from the policy; 4 KiB leaves room for all of them and rkyv's framing.
pub const ATTRIBUTION_SIZE_MAX_BYTES: usize = 4 << 10;
/// Largest archived DSN parameters: ENVID (100 bytes) and, per recipient, ORCPT (500 bytes)
/// and NOTIFY, for 1,000 recipients with rkyv's framing.
pub const DSN_SIZE_MAX_BYTES: usize = 1 << 20;
/// The attribution length in front of a kind 8 or 9 record's attribution part.
pub const DSN_PART_PREFIX_BYTES: usize = 4;
/// Largest journal record (an update of every recipient of a large message).
pub const UPDATE_SIZE_MAX_BYTES: usize = 4 << 20;
/// Largest record of any kind: a frame around the largest envelope and body, plus padding to a
/// 4 KiB device block. A header claiming more is treated as damaged.
pub const RECORD_SIZE_MAX_BYTES: usize = RECORD_HEADER_BYTES
    + STORE_PREFIX_BYTES
    + ENVELOPE_SIZE_MAX_BYTES
    + ATTRIBUTION_SIZE_MAX_BYTES
    + DSN_PART_PREFIX_BYTES
    + DSN_SIZE_MAX_BYTES
    + BODY_SIZE_MAX_BYTES
    + 4096;
/// Size of the fixed part of a store record's payload: id (8), envelope length (4),
/// attribution length (4, zero in [`Kind::Store`]).
pub const STORE_PREFIX_BYTES: usize = 16;
/// Version written in segment headers.
pub const SEGMENT_FORMAT_VERSION: u8 = 1;

const _: () = assert!(RECORD_SIZE_MAX_BYTES < u32::MAX as usize);
const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(RECORD_ALIGN_BYTES));

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// First record of a data segment: format, shard, segment sequence, next id sequence.
    SegmentHeader = 1,
    /// A message: id, archived envelope, body (its attribution is empty).
    Store = 2,
    /// Journal: recipient updates for a message.
    Update = 3,
    /// Journal: the message is done.
    Remove = 4,
    /// A message with attribution: id, archived envelope, archived attribution, body.
    StoreAttributed = 5,
    /// A message sealed under a data key: id, then one sealed frame (`sealed.rs`).
    SealedStore = 6,
    /// Journal: recipient updates sealed under the message's data key.
    SealedUpdate = 7,
    /// A message with DSN parameters: as kind 5, its attribution part carrying them too.
    StoreDsn = 8,
    /// A sealed message with DSN parameters: as kind 6, its attribution part as in kind 8.
    SealedStoreDsn = 9,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::SegmentHeader),
            2 => Some(Kind::Store),
            3 => Some(Kind::Update),
            4 => Some(Kind::Remove),
            5 => Some(Kind::StoreAttributed),
            6 => Some(Kind::SealedStore),
            7 => Some(Kind::SealedUpdate),
            8 => Some(Kind::StoreDsn),
            9 => Some(Kind::SealedStoreDsn),
            _ => None,
        }
    }

    /// Store records of any version, sealed or not.
    pub fn is_store(self) -> bool {
        matches!(
            self,
            Kind::Store
                | Kind::StoreAttributed
                | Kind::SealedStore
                | Kind::StoreDsn
                | Kind::SealedStoreDsn
        )
    }

    /// Sealed store records of any version.
    pub fn is_sealed_store(self) -> bool {
        matches!(self, Kind::SealedStore | Kind::SealedStoreDsn)
    }

    /// Store records whose attribution part carries DSN parameters.
    pub fn has_dsn(self) -> bool {
        matches!(self, Kind::StoreDsn | Kind::SealedStoreDsn)
    }

    /// The kind a clear store record with this attribution is written as.
    pub fn store_for(attribution: &Attribution) -> Kind {
        if attribution.is_empty() {
            Kind::Store
        } else {
            Kind::StoreAttributed
        }
    }

    /// The kind a store record is written as: sealed or not, with DSN parameters or not.
    pub fn store_kind(attribution: &Attribution, sealed: bool, dsn: bool) -> Kind {
        match (sealed, dsn) {
            (true, true) => Kind::SealedStoreDsn,
            (true, false) => Kind::SealedStore,
            (false, true) => Kind::StoreDsn,
            (false, false) => Kind::store_for(attribution),
        }
    }
}

/// Rounds `len` up to a multiple of `align` (a power of two).
pub fn align_up(len: usize, align: usize) -> usize {
    debug_assert!(align.is_power_of_two());
    (len + align - 1) & !(align - 1)
}

/// Frames `payload` as a record of `kind`, padded to a multiple of `align` (a power of two, at
/// least [`RECORD_ALIGN_BYTES`]). Appends to `out`.
pub fn encode_record(out: &mut Vec<u8>, kind: Kind, payload: &[&[u8]], align: usize) {
    let payload_len: usize = payload.iter().map(|p| p.len()).sum();
    let record_len = align_up(
        RECORD_HEADER_BYTES + payload_len,
        align.max(RECORD_ALIGN_BYTES),
    );
    let start = out.len();
    out.reserve(record_len);
    let mut crc = 0;
    for p in payload {
        crc = crc32c::crc32c_append(crc, p);
    }
    out.extend_from_slice(&header(kind, payload_len, record_len, crc));
    for p in payload {
        out.extend_from_slice(p);
    }
    out.resize(start + record_len, 0);
}

/// A record header: magic, kind, lengths, the payload's checksum, the header's own.
pub(crate) fn header(
    kind: Kind,
    payload_len: usize,
    record_len: usize,
    payload_crc: u32,
) -> [u8; RECORD_HEADER_BYTES] {
    let mut h = [0u8; RECORD_HEADER_BYTES];
    h[..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4] = kind as u8;
    h[8..12].copy_from_slice(&(payload_len as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(record_len as u32).to_le_bytes());
    h[16..20].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&h[..20]);
    h[20..].copy_from_slice(&header_crc.to_le_bytes());
    h
}

/// A record read back from a buffer.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    /// Offset of the record in the scanned buffer.
    pub offset: u64,
    /// Its kind.
    pub kind: Kind,
    /// Its payload (checksum verified).
    pub payload: &'a [u8],
    /// Its full length including padding.
    pub record_len: u64,
}

/// Why a record at some offset was not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Magic, header checksum, kind or lengths are wrong: not the start of a record.
    BadHeader,
    /// The header is valid but the record runs past the end of the data.
    Truncated {
        /// Length the header claims.
        record_len: u64,
    },
    /// The header is valid but the payload's checksum does not match.
    BadPayload {
        /// Length the header claims.
        record_len: u64,
    },
}

/// Decodes the record starting at `buf[offset..]`.
pub fn decode_at(buf: &[u8], offset: usize) -> Result<RawRecord<'_>, FrameError> {
    let header = buf
        .get(offset..offset + RECORD_HEADER_BYTES)
        .ok_or(FrameError::BadHeader)?;
    let u32_at =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if u32_at(0) != RECORD_MAGIC || crc32c::crc32c(&header[..20]) != u32_at(20) {
        return Err(FrameError::BadHeader);
    }
    let kind = Kind::from_u8(header[4]).ok_or(FrameError::BadHeader)?;
    let payload_len = u32_at(8) as usize;
    let record_len = u32_at(12) as usize;
    if record_len > RECORD_SIZE_MAX_BYTES
        || !record_len.is_multiple_of(RECORD_ALIGN_BYTES)
        || RECORD_HEADER_BYTES + payload_len > record_len
    {
        return Err(FrameError::BadHeader);
    }
    let Some(record) = buf.get(offset..offset + record_len) else {
        return Err(FrameError::Truncated {
            record_len: record_len as u64,
        });
    };
    let payload = &record[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_len];
    if crc32c::crc32c(payload) != u32_at(16) {
        return Err(FrameError::BadPayload {
            record_len: record_len as u64,
        });
    }
    Ok(RawRecord {
        offset: offset as u64,
        kind,
        payload,
        record_len: record_len as u64,
    })
}

/// A stretch of a buffer that held no usable record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// Where it starts.
    pub offset: u64,
    /// How long it is.
    pub len_bytes: u64,
}

/// Result of scanning a whole file's bytes.
#[derive(Debug, Default)]
pub struct Scan<'a> {
    /// Every valid record, in file order.
    pub records: Vec<RawRecord<'a>>,
    /// Damaged stretches (each counts as one skipped record).
    pub skipped: Vec<Skipped>,
    /// End of the last valid record (appending is safe from here after truncating).
    pub valid_end: u64,
}

/// Scans `buf` (a whole file). Trailing zero bytes (preallocation or padding) are not counted
/// as damage; anything else that is not a valid record is, and scanning resumes at the next
/// aligned offset holding a valid record header.
pub fn scan(buf: &[u8]) -> Scan<'_> {
    let mut out = Scan::default();
    let mut pos = 0usize;
    let mut bad_start: Option<usize> = None;
    while pos + RECORD_HEADER_BYTES <= buf.len() {
        match decode_at(buf, pos) {
            Ok(rec) => {
                close_bad(&mut out, &mut bad_start, pos);
                pos += rec.record_len as usize;
                out.valid_end = pos as u64;
                out.records.push(rec);
            }
            Err(FrameError::BadPayload { record_len }) => {
                // The header is trustworthy (its own checksum passed): skip the whole record.
                close_bad(&mut out, &mut bad_start, pos);
                out.skipped.push(Skipped {
                    offset: pos as u64,
                    len_bytes: record_len,
                });
                pos += record_len as usize;
            }
            Err(FrameError::Truncated { .. }) => {
                // A torn tail: the record was being written when the writer stopped. Nothing
                // after it can be trusted to be a record (it is this record's payload).
                close_bad(&mut out, &mut bad_start, pos);
                out.skipped.push(Skipped {
                    offset: pos as u64,
                    len_bytes: (buf.len() - pos) as u64,
                });
                return out;
            }
            Err(FrameError::BadHeader) => {
                if bad_start.is_none() && !all_zero(&buf[pos..pos + RECORD_ALIGN_BYTES]) {
                    bad_start = Some(pos);
                }
                pos += RECORD_ALIGN_BYTES;
            }
        }
    }
    let end = buf.len();
    if bad_start.is_none() && pos < end && !all_zero(&buf[pos..]) {
        bad_start = Some(pos);
    }
    close_bad(&mut out, &mut bad_start, end);
    out
}

fn close_bad(out: &mut Scan<'_>, bad_start: &mut Option<usize>, end: usize) {
    if let Some(start) = bad_start.take() {
        out.skipped.push(Skipped {
            offset: start as u64,
            len_bytes: (end - start) as u64,
        });
    }
}

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Payload of a segment header record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Shard that owns the segment.
    pub shard: u8,
    /// The segment's sequence (its file name).
    pub segment_seq: u64,
    /// The shard's next message sequence when the segment was created (ids survive even when
    /// every older segment has been reclaimed).
    pub next_id_seq: u64,
}

impl SegmentHeader {
    /// Fixed-size payload.
    pub fn to_bytes(self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0] = SEGMENT_FORMAT_VERSION;
        b[1] = self.shard;
        b[8..16].copy_from_slice(&self.segment_seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.next_id_seq.to_le_bytes());
        b
    }
    /// Parses a payload; None when the size or version is wrong.
    pub fn from_bytes(p: &[u8]) -> Option<SegmentHeader> {
        if p.len() != 24 || p[0] != SEGMENT_FORMAT_VERSION {
            return None;
        }
        Some(SegmentHeader {
            shard: p[1],
            segment_seq: u64_at(p, 8)?,
            next_id_seq: u64_at(p, 16)?,
        })
    }
}

pub(crate) fn u64_at(p: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(p.get(i..i + 8)?.try_into().ok()?))
}

pub(crate) fn u32_at(p: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(p.get(i..i + 4)?.try_into().ok()?))
}

/// Archives an envelope (rkyv).
pub fn encode_envelope(e: &Envelope) -> Result<AlignedVec, rancor::Error> {
    rkyv::to_bytes::<rancor::Error>(e)
}

/// Archives an attribution (rkyv); an empty one is stored as nothing at all.
pub fn encode_attribution(a: &Attribution) -> Result<AlignedVec, rancor::Error> {
    if a.is_empty() {
        return Ok(AlignedVec::new());
    }
    rkyv::to_bytes::<rancor::Error>(a)
}

/// Archives DSN parameters (rkyv); none are stored as nothing at all.
pub fn encode_dsn(d: &DsnParams) -> Result<AlignedVec, rancor::Error> {
    if d.is_empty() {
        return Ok(AlignedVec::new());
    }
    rkyv::to_bytes::<rancor::Error>(d)
}

/// The attribution part of a kind 8 or 9 record: the attribution's length, the archived
/// attribution, the archived DSN parameters.
pub fn dsn_part(attribution: &[u8], dsn: &[u8]) -> Vec<u8> {
    let mut part = Vec::with_capacity(DSN_PART_PREFIX_BYTES + attribution.len() + dsn.len());
    part.extend_from_slice(&(attribution.len() as u32).to_le_bytes());
    part.extend_from_slice(attribution);
    part.extend_from_slice(dsn);
    part
}

/// Decodes the attribution part of a store record of `kind` (validating the archives): the
/// attribution, and the DSN parameters (empty unless `kind.has_dsn()`).
pub fn decode_attribution_part(kind: Kind, part: &[u8]) -> Option<(Attribution, DsnParams)> {
    let (attribution, dsn) = if kind.has_dsn() {
        let len = u32_at(part, 0)? as usize;
        let end = DSN_PART_PREFIX_BYTES.checked_add(len)?;
        let dsn = part.get(end..)?;
        if dsn.is_empty() {
            return None;
        }
        (
            part.get(DSN_PART_PREFIX_BYTES..end)?,
            Some(decode_archived::<DsnParams>(dsn)?),
        )
    } else {
        (part, None)
    };
    let attribution = if attribution.is_empty() {
        Attribution::default()
    } else {
        decode_archived::<Attribution>(attribution)?
    };
    Some((attribution, dsn.unwrap_or_default()))
}

/// Archives recipient updates (rkyv).
pub fn encode_updates(u: &[RecipientUpdate]) -> Result<AlignedVec, rancor::Error> {
    rkyv::to_bytes::<rancor::Error>(&u.to_vec())
}

/// Copies `bytes` into an aligned buffer, validates them (bytecheck), and deserialises.
pub(crate) fn decode_archived<T>(bytes: &[u8]) -> Option<T>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rancor::Error>(&aligned).ok()
}

/// A decoded store record.
#[derive(Debug)]
pub struct StoreRecord<'a> {
    /// Message id.
    pub id: u64,
    /// Its envelope as stored.
    pub envelope: Envelope,
    /// Its attribution (empty for a [`Kind::Store`] record).
    pub attribution: Attribution,
    /// Its DSN parameters (empty but in kind 8).
    pub dsn: DsnParams,
    /// Its body.
    pub body: &'a [u8],
}

/// The parts of a store payload, archives not yet validated.
#[derive(Debug, Clone, Copy)]
pub struct StoreParts<'a> {
    /// Message id.
    pub id: u64,
    /// Archived envelope.
    pub envelope: &'a [u8],
    /// Archived attribution; empty when there is none.
    pub attribution: &'a [u8],
    /// The body.
    pub body: &'a [u8],
}

/// Builds the fixed leading part of a store payload; envelope, attribution and body follow.
pub fn store_prefix(
    id: u64,
    envelope_len: usize,
    attribution_len: usize,
) -> [u8; STORE_PREFIX_BYTES] {
    let mut b = [0u8; STORE_PREFIX_BYTES];
    b[..8].copy_from_slice(&id.to_le_bytes());
    b[8..12].copy_from_slice(&(envelope_len as u32).to_le_bytes());
    b[12..16].copy_from_slice(&(attribution_len as u32).to_le_bytes());
    b
}

/// Splits a store payload of either kind (no validation of the archives).
pub fn split_store(p: &[u8]) -> Option<StoreParts<'_>> {
    let id = u64_at(p, 0)?;
    let env_len = u32_at(p, 8)? as usize;
    let attr_len = u32_at(p, 12)? as usize;
    let env_end = STORE_PREFIX_BYTES.checked_add(env_len)?;
    let attr_end = env_end.checked_add(attr_len)?;
    Some(StoreParts {
        id,
        envelope: p.get(STORE_PREFIX_BYTES..env_end)?,
        attribution: p.get(env_end..attr_end)?,
        body: p.get(attr_end..)?,
    })
}

/// Decodes a clear store payload of `kind` (2, 5 or 8), validating the archives.
pub fn decode_store(kind: Kind, p: &[u8]) -> Option<StoreRecord<'_>> {
    let parts = split_store(p)?;
    let (attribution, dsn) = decode_attribution_part(kind, parts.attribution)?;
    Some(StoreRecord {
        id: parts.id,
        envelope: decode_archived::<Envelope>(parts.envelope)?,
        attribution,
        dsn,
        body: parts.body,
    })
}

/// Payload of an update record: id then archived updates.
pub fn update_prefix(id: u64) -> [u8; 8] {
    id.to_le_bytes()
}

/// Decodes an update payload.
pub fn decode_update(p: &[u8]) -> Option<(u64, Vec<RecipientUpdate>)> {
    let id = u64_at(p, 0)?;
    Some((id, decode_archived::<Vec<RecipientUpdate>>(p.get(8..)?)?))
}

/// Decodes a remove payload (just the id).
pub fn decode_remove(p: &[u8]) -> Option<u64> {
    if p.len() != 8 {
        return None;
    }
    u64_at(p, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: Kind, payload: &[u8], align: usize) -> Vec<u8> {
        let mut v = Vec::new();
        encode_record(&mut v, kind, &[payload], align);
        v
    }

    #[test]
    fn encode_decode_round_trip_and_padding() {
        let v = frame(Kind::Remove, &7u64.to_le_bytes(), 8);
        assert_eq!(v.len(), 32);
        let r = decode_at(&v, 0).unwrap();
        assert_eq!((r.kind, r.record_len), (Kind::Remove, 32));
        assert_eq!(decode_remove(r.payload), Some(7));
        let v = frame(Kind::Remove, &7u64.to_le_bytes(), 512);
        assert_eq!(v.len(), 512);
        assert_eq!(decode_at(&v, 0).unwrap().record_len, 512);
    }

    #[test]
    fn scan_skips_damage_and_ignores_zero_tail() {
        let mut buf = Vec::new();
        for i in 0..4u64 {
            encode_record(&mut buf, Kind::Remove, &[&i.to_le_bytes()], 8);
        }
        buf.extend_from_slice(&[0; 64]);
        let clean = scan(&buf);
        assert_eq!(
            (clean.records.len(), clean.skipped.len(), clean.valid_end),
            (4, 0, 128)
        );
        // Payload damage: skipped by length. Header damage: resync at the next record.
        buf[24] ^= 1;
        buf[32 + 2] ^= 1;
        let s = scan(&buf);
        let ids: Vec<_> = s
            .records
            .iter()
            .map(|r| decode_remove(r.payload).unwrap())
            .collect();
        assert_eq!(ids, vec![2, 3]);
        assert_eq!(
            s.skipped,
            vec![
                Skipped {
                    offset: 0,
                    len_bytes: 32
                },
                Skipped {
                    offset: 32,
                    len_bytes: 32
                }
            ]
        );
        // A torn tail runs to the end of the buffer.
        let s = scan(&buf[..128 - 5]);
        assert_eq!(s.records.len(), 1);
        assert_eq!(
            s.skipped.last(),
            Some(&Skipped {
                offset: 96,
                len_bytes: 27
            })
        );
        assert_eq!(s.valid_end, 96);
    }

    fn envelope() -> Envelope {
        Envelope {
            mail_from: "a@example.com".into(),
            recipients: vec![],
            tenant: Some("t1".into()),
            received_unix_ms: 1_700_000_000_000,
            client_addr: "127.0.0.1:40000".into(),
            helo: "client.example".into(),
            authenticated_as: None,
            smtputf8: false,
            body_8bit: false,
            is_dsn: false,
        }
    }

    /// The first format's store record, byte for byte as its encoder built it: kind 2 and a
    /// 16-byte prefix of id, envelope length and four zero bytes.
    #[test]
    fn a_first_format_store_record_decodes_with_empty_attribution() {
        let env = envelope();
        let meta = encode_envelope(&env).unwrap();
        let mut prefix = [0u8; 16];
        prefix[..8].copy_from_slice(&42u64.to_le_bytes());
        prefix[8..12].copy_from_slice(&(meta.len() as u32).to_le_bytes());
        let v = frame_parts(Kind::Store, &[&prefix, &meta, b"body"]);
        let r = decode_at(&v, 0).unwrap();
        assert_eq!(r.kind, Kind::Store);
        let s = decode_store(r.kind, r.payload).unwrap();
        assert_eq!((s.id, &s.envelope, s.body), (42, &env, &b"body"[..]));
        assert!(s.attribution.is_empty());
        // The current encoder writes exactly those bytes for a message without attribution.
        let empty = Attribution::default();
        let attr = encode_attribution(&empty).unwrap();
        assert_eq!(Kind::store_for(&empty), Kind::Store);
        let p = store_prefix(42, meta.len(), attr.len());
        assert_eq!(frame_parts(Kind::Store, &[&p, &meta, &attr, b"body"]), v);
    }

    #[test]
    fn an_attributed_store_record_round_trips() {
        let env = envelope();
        let a = Attribution {
            tenant_id: Some("t1".into()),
            credential_id: Some("c1".into()),
            from_domain: Some("example.com".into()),
            rfc822_message_id: Some("m1@example.com".into()),
            tags: vec!["welcome".into(), "q4".into()],
            metadata: Some("{\"user\":\"42\"}".into()),
        };
        let meta = encode_envelope(&env).unwrap();
        let attr = encode_attribution(&a).unwrap();
        assert!(!attr.is_empty() && attr.len() <= ATTRIBUTION_SIZE_MAX_BYTES);
        let kind = Kind::store_for(&a);
        assert_eq!(kind, Kind::StoreAttributed);
        let p = store_prefix(7, meta.len(), attr.len());
        let v = frame_parts(kind, &[&p, &meta, &attr, b"hello"]);
        let r = decode_at(&v, 0).unwrap();
        assert!(r.kind.is_store());
        let s = decode_store(r.kind, r.payload).unwrap();
        assert_eq!((s.id, s.envelope, s.attribution), (7, env, a));
        assert_eq!(split_store(r.payload).unwrap().body, b"hello");
        // A damaged attribution archive (checksums fixed up) is refused, not misread.
        let mut bad = attr.to_vec();
        let n = bad.len();
        bad[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        let v = frame_parts(kind, &[&p, &meta, &bad, b"hello"]);
        assert!(decode_store(kind, decode_at(&v, 0).unwrap().payload).is_none());
        // Lengths that run past the payload are refused.
        let p = store_prefix(7, meta.len(), usize::MAX >> 33);
        let v = frame_parts(kind, &[&p, &meta, &attr, b"hello"]);
        assert!(split_store(decode_at(&v, 0).unwrap().payload).is_none());
    }

    fn frame_parts(kind: Kind, parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_record(&mut v, kind, parts, 8);
        v
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678u32;
        let mut buf = vec![0u8; 4096];
        for round in 0..64 {
            for b in buf.iter_mut() {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *b = state as u8;
            }
            if round % 2 == 0 {
                // Plant a valid header whose lengths are garbage.
                buf[..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
            }
            let s = scan(&buf);
            assert!(s.records.is_empty());
            for r in s.records {
                let _ = decode_store(r.kind, r.payload);
            }
            let _ = decode_update(&buf);
            let _ = decode_store(Kind::StoreDsn, &buf);
        }
    }
}
