//! Zeroed space ahead of a buffered segment file's end, so that most commits are one device
//! write and a flush, not three.
//!
//! An fdatasync after an append must also persist the file's new size (and, with delayed
//! allocation, its new blocks): on ext4 that is a synchronous write of the inode block on top of
//! the data and the cache flush, and one more wait in the io-wq worker that runs the sync. When
//! the record lands inside space that is already within the file's size and allocated, the sync
//! writes the data pages and flushes, nothing else.
//!
//! So each buffered data file and journal is extended by a chunk of zeroes whenever its reserved
//! end comes within half a chunk of the zeroed end: a `pwrite` from the shard's thread, like the
//! records' own, so it is ordered with them for free (it starts at or above the reserved end, and
//! every later record is written after it). The next commit's fdatasync writes the chunk and
//! the new size once; the commits after it, until the next chunk, write only their records. A
//! fill with `O_DIRECT` from a worker was tried: ext4 holds the inode lock through an extending
//! direct write, so the shard's own record writes waited for it and the full-rate relay fell from
//! 40k to 25k msg/s. The scanner reads zeroes after the last record as the end of the file
//! (`record::scan`).
//!
//! A fill that fails (a full disk) turns prefilling off for that file: records are then appended
//! as before, and a real write error surfaces there. Sealed files keep at most a chunk and a half
//! of zeroes.

use std::cell::Cell;
use std::os::unix::fs::FileExt;

/// Zeroes added ahead of a data file's end per fill (a 1 KiB message takes about 1.3 KiB).
pub const PREFILL_DATA_CHUNK_BYTES: u64 = 256 << 10;
/// Zeroes added ahead of a journal's end per fill (its records are tens of bytes).
pub const PREFILL_JOURNAL_CHUNK_BYTES: u64 = 64 << 10;
/// Fills start and end on this boundary (a page).
pub const PREFILL_ALIGN_BYTES: u64 = 4096;

/// The zeroes every fill copies from (in the zero-initialised data segment: no allocation, and
/// no page of it is touched until read).
static ZEROES: [u8; PREFILL_DATA_CHUNK_BYTES as usize] = [0; PREFILL_DATA_CHUNK_BYTES as usize];

/// One file's fill state.
#[derive(Debug)]
pub(crate) struct Prefill {
    /// Bytes per fill; 0 for a file that is never prefilled.
    chunk: u64,
    /// Everything below this is within the file's size.
    filled_end: Cell<u64>,
    /// A fill failed (or the file takes none): no more for this file.
    off: Cell<bool>,
}

impl Prefill {
    pub(crate) fn new(chunk: u64) -> Prefill {
        debug_assert_eq!(chunk % PREFILL_ALIGN_BYTES, 0);
        Prefill {
            chunk,
            filled_end: Cell::new(0),
            off: Cell::new(chunk == 0),
        }
    }

    /// The range to fill next now that the file's reserved end is `reserved_end`, if any; never
    /// past `limit` (a data file's segment size: a small segment gets no more than it holds).
    pub(crate) fn next_fill(&self, reserved_end: u64, limit: Option<u64>) -> Option<(u64, u64)> {
        if self.off.get() || reserved_end + self.chunk / 2 <= self.filled_end.get() {
            return None;
        }
        let start = align_up(self.filled_end.get().max(reserved_end));
        let end = match limit {
            Some(limit) => (start + self.chunk).min(align_up(limit)),
            None => start + self.chunk,
        };
        (end > start).then_some((start, end))
    }

    /// Writes zeroes over `[start, end)` of `file` (a `next_fill` range), in this thread.
    pub(crate) fn fill(&self, file: &std::fs::File, start: u64, end: u64) -> std::io::Result<()> {
        let mut at = start;
        while at < end {
            let n = (end - at).min(ZEROES.len() as u64);
            if let Err(e) = file.write_all_at(&ZEROES[..n as usize], at) {
                self.off.set(true);
                return Err(e);
            }
            at += n;
        }
        self.filled_end.set(end);
        Ok(())
    }

    /// The file was cut to `len` (recovery cuts a journal back to its last good record).
    pub(crate) fn truncated(&self, len: u64) {
        self.filled_end.set(self.filled_end.get().min(len));
    }
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(PREFILL_ALIGN_BYTES) * PREFILL_ALIGN_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_start_at_the_aligned_reserved_end_and_run_a_chunk_ahead() {
        let p = Prefill::new(8192);
        assert_eq!(p.next_fill(100, None), Some((4096, 12288)));
        p.filled_end.set(12288);
        // More than half a chunk left: nothing to do.
        assert_eq!(p.next_fill(8192, None), None);
        // Within half a chunk of the filled end: the next chunk, contiguous.
        assert_eq!(p.next_fill(8193, None), Some((12288, 20480)));
        // The reserved end ran past the filled end (fills were slower): start above it.
        assert_eq!(p.next_fill(30000, None), Some((32768, 40960)));
        // Never past the limit (a small segment's size).
        p.filled_end.set(0);
        assert_eq!(p.next_fill(100, Some(10000)), Some((4096, 12288)));
        assert_eq!(p.next_fill(100, Some(6000)), Some((4096, 8192)));
        assert_eq!(p.next_fill(5000, Some(4096)), None);
    }

    #[test]
    fn a_fill_writes_zeroes_past_the_records_and_moves_the_filled_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"record").unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let p = Prefill::new(8192);
        let (start, end) = p.next_fill(6, None).unwrap();
        p.fill(&file, start, end).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 12288);
        assert_eq!(&bytes[..6], b"record");
        assert!(bytes[6..].iter().all(|&b| b == 0));
        assert_eq!(p.next_fill(6, None), None, "the next is not due yet");
    }

    #[test]
    fn a_file_without_a_chunk_or_after_a_failure_is_never_filled() {
        assert_eq!(Prefill::new(0).next_fill(0, None), None);
        let p = Prefill::new(8192);
        p.off.set(true);
        assert_eq!(p.next_fill(0, None), None);
    }

    #[test]
    fn a_truncation_pulls_the_filled_end_back() {
        let p = Prefill::new(8192);
        p.filled_end.set(16384);
        p.truncated(5000);
        assert_eq!(p.next_fill(5000, None), Some((8192, 16384)));
    }
}
