//! The backup file, pure of any I/O but `Read`/`Write`: the header, the sealed chunks, and the
//! archive of parts inside them.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "PTRLBKUP"
//!      8     2  format version (u16 LE), FORMAT_VERSION
//!     10     1  source kind: 1 SQLite, 2 PostgreSQL
//!     11     1  reserved, 0
//!     12     8  created, Unix ms (i64 LE)
//!     20     8  backup key fingerprint: HMAC-SHA256 under the key, first 8 bytes
//!     28     8  plaintext length (u64 LE)
//!     36    32  SHA-256 of the plaintext
//!     68     …  chunks: each CHUNK_PLAIN_BYTES of plaintext (the last one shorter, or empty)
//!               sealed as one `petrel_seal` frame (key id, nonce, ciphertext, GCM tag), with
//!               associated data = the 68 header bytes + the chunk's index (u64 LE)
//! ```
//!
//! **Why chunks.** A control plane's database holds its events and can be gigabytes; one GCM
//! frame would need it all in memory. Chunks of a fixed size keep memory at one chunk, and
//! their count and lengths follow from the authenticated plaintext length, so a file cut short,
//! extended, or with chunks swapped fails to open. The header is in every chunk's associated
//! data, so a changed header (kind, time, checksum) fails too.
//!
//! **Why a fingerprint.** A wrong key and a damaged file both fail GCM; the fingerprint tells
//! them apart, so the operator is told "wrong key" rather than "tampered". It is an HMAC under
//! the key, so it reveals nothing about it.
//!
//! The plaintext is an archive of parts, each `kind (u8) | length (u64 LE) | bytes`, ended by a
//! kind 0. [`ArchiveParser`] reads it as bytes arrive (a push parser: feed it any split) and
//! hands each part's bytes to a [`PartSink`], bounding every length before it is used.

use std::io::{Read, Write};

use petrel_seal::aead::{KEY_BYTES, SEALED_OVERHEAD_BYTES};
use petrel_seal::DataKey;
use sha2::{Digest, Sha256};

use super::BackupError;

/// The file's first bytes.
pub const MAGIC: [u8; 8] = *b"PTRLBKUP";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the header.
pub const HEADER_BYTES: usize = 68;
/// Plaintext bytes per sealed chunk (the last may be shorter): memory held while sealing or
/// opening.
pub const CHUNK_PLAIN_BYTES: usize = 1 << 20;
/// Largest plaintext a restore accepts: the database dump plus every other part.
pub const PLAINTEXT_BYTES_MAX: u64 = DATABASE_BYTES_MAX + 2 * OTHER_FILE_BYTES_MAX;
/// Largest database dump a backup holds (64 GiB).
pub const DATABASE_BYTES_MAX: u64 = 64 << 30;
/// Largest key, token or certificate part (a PEM chain or a key file, not a document).
pub const KEY_PART_BYTES_MAX: u64 = 1 << 20;
/// Largest other file part: the audit checkpoint file, bounded as the control plane bounds it.
pub const OTHER_FILE_BYTES_MAX: u64 = crate::audit_anchor::CHECKPOINT_FILE_BYTES_MAX;
/// The id the backup key carries in its frames (it is the only key of a backup).
const BACKUP_KEY_ID: u32 = 1;
/// The label of the key fingerprint's HMAC.
const FINGERPRINT_LABEL: &[u8] = b"petrel backup key fingerprint v1";

const _: () = assert!(HEADER_BYTES == 8 + 2 + 1 + 1 + 8 + 8 + 8 + 32);

/// Which database the backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Sqlite,
    Postgres,
}

impl SourceKind {
    fn to_byte(self) -> u8 {
        match self {
            SourceKind::Sqlite => 1,
            SourceKind::Postgres => 2,
        }
    }

    fn from_byte(b: u8) -> Option<SourceKind> {
        match b {
            1 => Some(SourceKind::Sqlite),
            2 => Some(SourceKind::Postgres),
            _ => None,
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SourceKind::Sqlite => "SQLite",
            SourceKind::Postgres => "PostgreSQL",
        })
    }
}

/// One part of the archive: what it is decides where a restore puts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PartKind {
    /// The database: an SQLite file (`VACUUM INTO`) or a `pg_dump` custom-format archive.
    Database,
    /// The key-encryption key file wrapping the database's data keys.
    Kek,
    /// The Ed25519 key signing audit checkpoints (PKCS#8).
    AuditKey,
    /// The signed audit checkpoints (JSON lines; not secret, but verify needs them).
    AuditCheckpoints,
    /// The token engines present to the push listener.
    PushToken,
    PushTlsCert,
    PushTlsKey,
    ApiTlsCert,
    ApiTlsKey,
}

impl PartKind {
    /// Every kind, in the order a backup writes them.
    pub const ALL: [PartKind; 9] = [
        PartKind::Database,
        PartKind::Kek,
        PartKind::AuditKey,
        PartKind::AuditCheckpoints,
        PartKind::PushToken,
        PartKind::PushTlsCert,
        PartKind::PushTlsKey,
        PartKind::ApiTlsCert,
        PartKind::ApiTlsKey,
    ];

    fn to_byte(self) -> u8 {
        match self {
            PartKind::Database => 1,
            PartKind::Kek => 2,
            PartKind::AuditKey => 3,
            PartKind::AuditCheckpoints => 4,
            PartKind::PushToken => 5,
            PartKind::PushTlsCert => 6,
            PartKind::PushTlsKey => 7,
            PartKind::ApiTlsCert => 8,
            PartKind::ApiTlsKey => 9,
        }
    }

    fn from_byte(b: u8) -> Option<PartKind> {
        PartKind::ALL.into_iter().find(|k| k.to_byte() == b)
    }

    /// The largest part of this kind a restore accepts.
    pub fn bytes_max(self) -> u64 {
        match self {
            PartKind::Database => DATABASE_BYTES_MAX,
            PartKind::AuditCheckpoints => OTHER_FILE_BYTES_MAX,
            _ => KEY_PART_BYTES_MAX,
        }
    }

    /// A name for messages.
    pub fn name(self) -> &'static str {
        match self {
            PartKind::Database => "database",
            PartKind::Kek => "key-encryption key",
            PartKind::AuditKey => "audit signing key",
            PartKind::AuditCheckpoints => "audit checkpoints",
            PartKind::PushToken => "push token",
            PartKind::PushTlsCert => "push TLS certificate",
            PartKind::PushTlsKey => "push TLS key",
            PartKind::ApiTlsCert => "API TLS certificate",
            PartKind::ApiTlsKey => "API TLS key",
        }
    }
}

/// The header's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: SourceKind,
    pub created_unix_ms: i64,
    pub key_fingerprint: [u8; 8],
    /// Bytes of the archive inside the chunks (<= PLAINTEXT_BYTES_MAX on read).
    pub plaintext_len: u64,
    pub plaintext_sha256: [u8; 32],
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10] = self.kind.to_byte();
        b[12..20].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        b[20..28].copy_from_slice(&self.key_fingerprint);
        b[28..36].copy_from_slice(&self.plaintext_len.to_le_bytes());
        b[36..68].copy_from_slice(&self.plaintext_sha256);
        b
    }

    /// Parses and bounds a header; nothing in it is trusted until the first chunk opens.
    pub fn decode(b: &[u8; HEADER_BYTES]) -> Result<Header, BackupError> {
        if b[0..8] != MAGIC {
            return Err(BackupError::NotABackup);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION {
            return Err(BackupError::UnsupportedVersion {
                version,
                supported: FORMAT_VERSION,
            });
        }
        let kind = SourceKind::from_byte(b[10]).ok_or(BackupError::Malformed(
            "unknown source kind in the header".into(),
        ))?;
        let mut u8x8 = [0u8; 8];
        u8x8.copy_from_slice(&b[12..20]);
        let created_unix_ms = i64::from_le_bytes(u8x8);
        let mut key_fingerprint = [0u8; 8];
        key_fingerprint.copy_from_slice(&b[20..28]);
        u8x8.copy_from_slice(&b[28..36]);
        let plaintext_len = u64::from_le_bytes(u8x8);
        if plaintext_len > PLAINTEXT_BYTES_MAX {
            return Err(BackupError::TooLarge {
                what: "the backup's content",
                len: plaintext_len,
                max: PLAINTEXT_BYTES_MAX,
            });
        }
        let mut plaintext_sha256 = [0u8; 32];
        plaintext_sha256.copy_from_slice(&b[36..68]);
        Ok(Header {
            kind,
            created_unix_ms,
            key_fingerprint,
            plaintext_len,
            plaintext_sha256,
        })
    }

    /// Chunks in the file: at least one (an empty plaintext still seals one empty chunk, so
    /// even then the header is authenticated).
    pub fn chunks(&self) -> u64 {
        self.plaintext_len.div_ceil(CHUNK_PLAIN_BYTES as u64).max(1)
    }

    /// Bytes of the whole file this header announces.
    pub fn file_len(&self) -> u64 {
        HEADER_BYTES as u64 + self.plaintext_len + self.chunks() * SEALED_OVERHEAD_BYTES as u64
    }
}

/// The backup key: 32 bytes, from 64 hex digits in a file.
pub struct BackupKey {
    key: DataKey,
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupKey(..)")
    }
}

impl BackupKey {
    /// The key from its file's text (already read owner-only): 64 hex digits.
    pub fn from_hex(text: &str) -> Result<BackupKey, BackupError> {
        let mut raw = zeroize::Zeroizing::new([0u8; KEY_BYTES]);
        hex::decode_to_slice(text.trim(), raw.as_mut()).map_err(|_| BackupError::KeyFormat)?;
        let key = DataKey::from_raw(BACKUP_KEY_ID, None, 0, raw)?;
        Ok(BackupKey { key })
    }

    /// An HMAC under the key: tells a wrong key from a damaged file, reveals nothing.
    pub fn fingerprint(&self) -> [u8; 8] {
        let mac = self.key.mac(FINGERPRINT_LABEL, b"");
        let mut out = [0u8; 8];
        out.copy_from_slice(&mac[..8]);
        out
    }
}

/// The associated data of chunk `index`: the header, then the index.
fn chunk_aad(header: &[u8; HEADER_BYTES], index: u64) -> [u8; HEADER_BYTES + 8] {
    let mut aad = [0u8; HEADER_BYTES + 8];
    aad[..HEADER_BYTES].copy_from_slice(header);
    aad[HEADER_BYTES..].copy_from_slice(&index.to_le_bytes());
    aad
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes the header and the sealed chunks of `plaintext`, which must yield exactly
/// `header.plaintext_len` bytes (the caller hashed the same bytes for the header).
pub fn seal(
    key: &BackupKey,
    header: &Header,
    plaintext: &mut impl Read,
    out: &mut impl Write,
) -> Result<(), BackupError> {
    let head = header.encode();
    out.write_all(&head).map_err(BackupError::write)?;
    let mut plain = vec![0u8; CHUNK_PLAIN_BYTES];
    let mut frame = Vec::with_capacity(CHUNK_PLAIN_BYTES + SEALED_OVERHEAD_BYTES);
    let mut total = 0u64;
    for index in 0..header.chunks() {
        let n = read_full(plaintext, &mut plain).map_err(BackupError::read)?;
        total += n as u64;
        frame.clear();
        key.key
            .seal_append(&chunk_aad(&head, index), &[&plain[..n]], &mut frame);
        out.write_all(&frame).map_err(BackupError::write)?;
    }
    if total != header.plaintext_len || read_full(plaintext, &mut plain[..1]).unwrap_or(0) != 0 {
        return Err(BackupError::Malformed(format!(
            "the parts changed while they were sealed ({total} bytes, {} announced)",
            header.plaintext_len
        )));
    }
    Ok(())
}

/// Reads and checks the header: the magic, the version, the bounds, and the key's fingerprint.
pub fn open_header(key: &BackupKey, file: &mut impl Read) -> Result<Header, BackupError> {
    let mut head = [0u8; HEADER_BYTES];
    if read_full(file, &mut head).map_err(BackupError::read)? < HEADER_BYTES {
        return Err(BackupError::NotABackup);
    }
    let header = Header::decode(&head)?;
    if header.key_fingerprint != key.fingerprint() {
        return Err(BackupError::WrongKey);
    }
    Ok(header)
}

/// Opens every chunk after the header in order, feeds the plaintext to `parser`, and checks
/// the SHA-256, that the archive is complete, and that nothing follows the last chunk.
pub fn open_chunks(
    key: &BackupKey,
    header: &Header,
    file: &mut impl Read,
    parser: &mut ArchiveParser<'_>,
) -> Result<(), BackupError> {
    let head = header.encode();
    let mut frame = vec![0u8; CHUNK_PLAIN_BYTES + SEALED_OVERHEAD_BYTES];
    let mut left = header.plaintext_len;
    let mut sha = Sha256::new();
    for index in 0..header.chunks() {
        let plain_len = left.min(CHUNK_PLAIN_BYTES as u64) as usize;
        let buf = &mut frame[..plain_len + SEALED_OVERHEAD_BYTES];
        if read_full(file, buf).map_err(BackupError::read)? < buf.len() {
            return Err(BackupError::Truncated);
        }
        let plain = key
            .key
            .open_in_place(&chunk_aad(&head, index), buf)
            .map_err(|_| BackupError::Tampered { chunk: index })?;
        sha.update(&*plain);
        parser.feed(plain)?;
        left -= plain_len as u64;
    }
    if read_full(file, &mut frame[..1]).map_err(BackupError::read)? != 0 {
        return Err(BackupError::Malformed(
            "bytes follow the last sealed chunk".into(),
        ));
    }
    if <[u8; 32]>::from(sha.finalize()) != header.plaintext_sha256 {
        return Err(BackupError::ChecksumMismatch);
    }
    parser.finish()
}

/// The framing before a part's bytes.
pub fn part_prefix(kind: PartKind, len: u64) -> [u8; 9] {
    let mut b = [0u8; 9];
    b[0] = kind.to_byte();
    b[1..].copy_from_slice(&len.to_le_bytes());
    b
}

/// The byte that ends the archive.
pub const ARCHIVE_END: u8 = 0;

/// Where an archive's parts go as they are parsed.
pub trait PartSink {
    /// A part starts; `len` is within the kind's bound.
    fn begin(&mut self, kind: PartKind, len: u64) -> Result<(), BackupError>;
    /// The next bytes of the current part.
    fn data(&mut self, bytes: &[u8]) -> Result<(), BackupError>;
    /// The current part is complete.
    fn end(&mut self) -> Result<(), BackupError>;
}

/// A push parser of the archive: bytes in any split, parts out to a [`PartSink`].
pub struct ArchiveParser<'a> {
    sink: &'a mut dyn PartSink,
    /// Framing bytes of the next part gathered so far (`0 <= len <= 9`).
    prefix: Vec<u8>,
    /// Bytes still due of the current part; None between parts.
    remaining: Option<u64>,
    /// Kinds already seen (each at most once).
    seen: Vec<PartKind>,
    ended: bool,
}

impl<'a> ArchiveParser<'a> {
    pub fn new(sink: &'a mut dyn PartSink) -> ArchiveParser<'a> {
        ArchiveParser {
            sink,
            prefix: Vec::with_capacity(9),
            remaining: None,
            seen: Vec::new(),
            ended: false,
        }
    }

    /// Feeds the next plaintext bytes.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), BackupError> {
        while !bytes.is_empty() {
            if self.ended {
                return Err(BackupError::Malformed(
                    "bytes after the archive's end".into(),
                ));
            }
            if let Some(rem) = self.remaining {
                let n = rem.min(bytes.len() as u64) as usize;
                self.sink.data(&bytes[..n])?;
                bytes = &bytes[n..];
                self.remaining = Some(rem - n as u64);
                if rem == n as u64 {
                    self.remaining = None;
                    self.sink.end()?;
                }
                continue;
            }
            if self.prefix.is_empty() && bytes[0] == ARCHIVE_END {
                self.ended = true;
                bytes = &bytes[1..];
                continue;
            }
            let take = (9 - self.prefix.len()).min(bytes.len());
            self.prefix.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.prefix.len() == 9 {
                self.start_part()?;
            }
        }
        Ok(())
    }

    fn start_part(&mut self) -> Result<(), BackupError> {
        let kind = PartKind::from_byte(self.prefix[0]).ok_or_else(|| {
            BackupError::Malformed(format!("unknown part kind {}", self.prefix[0]))
        })?;
        let mut len = [0u8; 8];
        len.copy_from_slice(&self.prefix[1..9]);
        let len = u64::from_le_bytes(len);
        self.prefix.clear();
        if self.seen.contains(&kind) {
            return Err(BackupError::Malformed(format!(
                "the {} appears twice",
                kind.name()
            )));
        }
        if len > kind.bytes_max() {
            return Err(BackupError::TooLarge {
                what: kind.name(),
                len,
                max: kind.bytes_max(),
            });
        }
        self.seen.push(kind);
        self.sink.begin(kind, len)?;
        if len == 0 {
            self.sink.end()?;
        } else {
            self.remaining = Some(len);
        }
        Ok(())
    }

    /// The archive must have ended, with a database part.
    pub fn finish(&self) -> Result<(), BackupError> {
        if !self.ended || self.remaining.is_some() || !self.prefix.is_empty() {
            return Err(BackupError::Malformed("the archive is incomplete".into()));
        }
        if !self.seen.contains(&PartKind::Database) {
            return Err(BackupError::Malformed("the archive has no database".into()));
        }
        if !self.seen.contains(&PartKind::Kek) {
            return Err(BackupError::Malformed(
                "the archive has no key-encryption key".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
