//! The engine's copy of its suppression set on disk (`<data>/policy/suppressions.bin`), so an
//! engine that restarts while the control plane is away still refuses suppressed recipients,
//! and one that reconnects asks only for the changes after the saved version.
//!
//! ```text
//! magic "PTRLSUP1" | version u64 LE | key [u8; 16] | count u64 LE | entries u64 LE × count
//! | crc32c u32 LE (of everything before it)
//! ```
//!
//! The entries are the set's keyed hashes with their reason bits, sorted; the key is the
//! SipHash key they were made with (the file is owner-only, in the directory that already holds
//! the snapshot's DKIM keys). Written to a temporary file, synced, renamed, the directory
//! synced: a crash leaves the old file or the new one. A file that fails any check is ignored
//! (the engine then starts empty and gets a full load).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{SuppressionKeyer, SuppressionSet, SET_ENTRIES_MAX};
use crate::error::PolicyError;

/// File name inside the policy directory.
pub const SUPPRESSION_FILE: &str = "suppressions.bin";
const SUPPRESSION_TEMP_FILE: &str = "suppressions.bin.tmp";
const MAGIC: &[u8; 8] = b"PTRLSUP1";
/// Bytes before the entries: magic, version, key, count.
const HEADER_BYTES: usize = 8 + 8 + 16 + 8;
/// Entries read or written per buffer.
const CHUNK_ENTRIES: usize = 8_192;

fn persist_err(path: &Path) -> impl Fn(std::io::Error) -> PolicyError + '_ {
    move |source| PolicyError::Persist {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `set` to `<dir>/suppressions.bin` atomically. Blocking: call it off the reactor.
pub fn save(dir: &Path, set: &SuppressionSet) -> Result<(), PolicyError> {
    let entries = set.sorted_entries();
    let temp = dir.join(SUPPRESSION_TEMP_FILE);
    let path = dir.join(SUPPRESSION_FILE);
    std::fs::create_dir_all(dir).map_err(persist_err(dir))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(persist_err(&temp))?;
    let mut w = BufWriter::with_capacity(CHUNK_ENTRIES * 8, file);
    write_entries(&mut w, set, &entries).map_err(persist_err(&temp))?;
    drop(w);
    std::fs::rename(&temp, &path).map_err(persist_err(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(persist_err(dir))
}

/// The file's bytes after the open: header, entries, checksum; then flush and sync.
fn write_entries(
    w: &mut BufWriter<File>,
    set: &SuppressionSet,
    entries: &[u64],
) -> std::io::Result<()> {
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&set.version().to_le_bytes());
    header.extend_from_slice(&set.keyer().secret());
    header.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    let mut crc = crc32c::crc32c(&header);
    w.write_all(&header)?;
    let mut buf = Vec::with_capacity(CHUNK_ENTRIES * 8);
    for chunk in entries.chunks(CHUNK_ENTRIES) {
        buf.clear();
        for e in chunk {
            buf.extend_from_slice(&e.to_le_bytes());
        }
        crc = crc32c::crc32c_append(crc, &buf);
        w.write_all(&buf)?;
    }
    w.write_all(&crc.to_le_bytes())?;
    w.flush()?;
    w.get_ref().sync_all()
}

/// Why a saved set was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("reading {0}")]
    Io(String),
    #[error("not a suppression set file (bad magic or header)")]
    Header,
    #[error("{0} entries is more than the set holds")]
    TooMany(u64),
    #[error("checksum mismatch")]
    Checksum,
    #[error("entries not sorted and unique")]
    Order,
}

/// Reads `<dir>/suppressions.bin`: `Ok(None)` when there is none. Blocking.
pub fn load(dir: &Path) -> Result<Option<SuppressionSet>, LoadError> {
    let path = dir.join(SUPPRESSION_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LoadError::Io(e.to_string())),
    };
    let io = |e: std::io::Error| LoadError::Io(e.to_string());
    let mut r = BufReader::with_capacity(CHUNK_ENTRIES * 8, file);
    let mut header = [0u8; HEADER_BYTES];
    r.read_exact(&mut header).map_err(|_| LoadError::Header)?;
    if &header[..8] != MAGIC {
        return Err(LoadError::Header);
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let version = word(8);
    let mut key = [0u8; 16];
    key.copy_from_slice(&header[16..32]);
    let count = word(32);
    if count > SET_ENTRIES_MAX as u64 {
        return Err(LoadError::TooMany(count));
    }
    let count = usize::try_from(count).map_err(|_| LoadError::TooMany(count))?;
    let mut crc = crc32c::crc32c(&header);
    let mut entries = Vec::with_capacity(count);
    let mut buf = vec![0u8; CHUNK_ENTRIES * 8];
    while entries.len() < count {
        let n = (count - entries.len()).min(CHUNK_ENTRIES);
        let bytes = &mut buf[..n * 8];
        r.read_exact(bytes).map_err(io)?;
        crc = crc32c::crc32c_append(crc, bytes);
        entries.extend(bytes.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        }));
    }
    let mut stored = [0u8; 4];
    r.read_exact(&mut stored).map_err(io)?;
    if u32::from_le_bytes(stored) != crc {
        return Err(LoadError::Checksum);
    }
    let mut rest = [0u8; 1];
    if r.read(&mut rest).map_err(io)? != 0 {
        return Err(LoadError::Header);
    }
    SuppressionSet::from_sorted(SuppressionKeyer::new(key), version, entries)
        .map(Some)
        .ok_or(LoadError::Order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suppression::{
        ChangeOp, SuppressionChange, SuppressionReason, SuppressionSetBuilder,
    };

    #[test]
    fn a_saved_set_loads_back_equal_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let keyer = SuppressionKeyer::random();
        let mut b = SuppressionSetBuilder::new(keyer, 7, 100);
        for i in 0..100 {
            b.push(
                "t1",
                &format!("u{i}@x.example"),
                SuppressionReason::HardBounce,
            );
        }
        let mut set = b.finish();
        set.apply(&[
            SuppressionChange {
                seq: 8,
                scope: "t1".into(),
                address: "u3@x.example".into(),
                op: ChangeOp::Remove,
            },
            SuppressionChange {
                seq: 9,
                scope: "*".into(),
                address: "new@x.example".into(),
                op: ChangeOp::Add(SuppressionReason::Complaint),
            },
        ]);
        save(dir.path(), &set).unwrap();
        let back = load(dir.path()).unwrap().expect("saved");
        assert_eq!(back.version(), 9);
        assert_eq!(back.len(), 100);
        assert!(back.check("t1", "U5@x.example").is_some());
        assert!(back.check("t1", "u3@x.example").is_none());
        assert!(back
            .check("t9", "new@x.example")
            .is_some_and(|h| h.operator_wide));

        let path = dir.path().join(SUPPRESSION_FILE);
        let good = std::fs::read(&path).unwrap();
        for at in [0, 9, 20, 40, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            assert!(load(dir.path()).is_err(), "flipped byte {at}");
        }
        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        assert!(load(dir.path()).is_err(), "truncated");
    }
}
