//! Zero-filled space ahead of a buffered segment file's end, so that a commit is one device
//! write and a flush, not three.
//!
//! An fdatasync after an append must also persist the file's new size (and, with delayed
//! allocation, its new blocks): on ext4 that is a synchronous write of the inode block on top of
//! the data and the cache flush, and one more wait for the io-wq worker that runs the sync. When
//! the record lands inside space that is already allocated and within the file's size, the sync
//! writes the data pages and flushes, nothing else. Measured on this project's VM (a connection
//! per message, no delivery): engine CPU per message 0.178 → 0.148 ms and the ack's p50 1.49 →
//! 1.17 ms (BENCHMARKS.md, issue 17).
//!
//! So each buffered data file and journal keeps zeroes written ahead of its reserved end: once
//! the end comes within half a chunk of the filled end, a task writes the next chunk of zeroes
//! with `O_DIRECT` and syncs it. `O_DIRECT`, because a buffered fill would leave a chunk of
//! dirty pages that the next commit's fdatasync would have to write back (and wait for) with its
//! own record. The fill never covers a byte that is reserved: it starts at or above the
//! reserved end, and a write that would land in a fill still in flight waits for it first. The
//! scanner already reads zeroes after the last record as the end of the file (`record::scan`).
//!
//! A fill that fails (a full disk, a filesystem without `O_DIRECT`) turns prefilling off for
//! that file: records are then appended as before, and a real write error surfaces there.
//! Sealed files keep at most a chunk and a half of zeroes.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;

use glommio::io::OpenOptions;

use crate::state::Batch;

/// Zeroes written ahead of a data file's end, per fill (a message of 1 KiB takes about 1.3 KiB).
pub const PREFILL_DATA_CHUNK_BYTES: u64 = 1 << 20;
/// Zeroes written ahead of a journal's end, per fill (its records are tens of bytes).
pub const PREFILL_JOURNAL_CHUNK_BYTES: u64 = 256 << 10;
/// Fills start and end on this boundary (a page, and a multiple of every device block).
pub const PREFILL_ALIGN_BYTES: u64 = 4096;

/// One file's fill state; shared with the task of the fill in flight.
#[derive(Debug)]
pub(crate) struct Prefill {
    /// Bytes per fill; 0 for a file that is never prefilled.
    chunk: u64,
    /// Everything below this is allocated and within the file's size.
    filled_end: Cell<u64>,
    /// The fill in flight: its range and its completion.
    in_flight: RefCell<Option<(u64, u64, Rc<Batch>)>>,
    /// A fill failed: no more for this file.
    off: Cell<bool>,
}

impl Prefill {
    pub(crate) fn new(chunk: u64) -> Prefill {
        debug_assert_eq!(chunk % PREFILL_ALIGN_BYTES, 0);
        Prefill {
            chunk,
            filled_end: Cell::new(0),
            in_flight: RefCell::new(None),
            off: Cell::new(chunk == 0),
        }
    }

    /// The range to fill next now that the file's reserved end is `reserved_end`, if any; never
    /// past `limit` (a data file's segment size: a small segment gets no more than it holds).
    pub(crate) fn next_fill(&self, reserved_end: u64, limit: Option<u64>) -> Option<(u64, u64)> {
        if self.off.get() || self.in_flight.borrow().is_some() {
            return None;
        }
        if reserved_end + self.chunk / 2 <= self.filled_end.get() {
            return None;
        }
        let start = align_up(self.filled_end.get().max(reserved_end));
        let end = match limit {
            Some(limit) => (start + self.chunk).min(align_up(limit)),
            None => start + self.chunk,
        };
        (end > start).then_some((start, end))
    }

    /// The fill in flight that a write of `len` bytes at `pos` must wait for, if any.
    pub(crate) fn overlapping(&self, pos: u64, len: u64) -> Option<Rc<Batch>> {
        match &*self.in_flight.borrow() {
            Some((start, end, done)) if pos < *end && pos + len > *start => Some(done.clone()),
            _ => None,
        }
    }

    /// The file was cut to `len` (recovery cuts a journal back to its last good record).
    pub(crate) fn truncated(&self, len: u64) {
        self.filled_end.set(self.filled_end.get().min(len));
    }

    /// Starts filling `[start, end)` of the file at `path` in a task of its own.
    pub(crate) fn start(self: &Rc<Self>, path: PathBuf, start: u64, end: u64) {
        let done = Rc::new(Batch::default());
        *self.in_flight.borrow_mut() = Some((start, end, done.clone()));
        let me = Rc::clone(self);
        glommio::spawn_local(async move {
            let result = fill_zeroes(&path, start, end).await;
            me.in_flight.borrow_mut().take();
            match result {
                Ok(()) => me.filled_end.set(me.filled_end.get().max(end)),
                Err(e) => {
                    me.off.set(true);
                    tracing::debug!(path = %path.display(), error = %e,
                        "spool prefill failed; this file is appended to without it");
                }
            }
            done.finish(true);
        })
        .detach();
    }
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(PREFILL_ALIGN_BYTES) * PREFILL_ALIGN_BYTES
}

/// Writes zeroes over `[start, end)` with `O_DIRECT`. Not synced here: the next commit's
/// fdatasync persists the new size and blocks once for the whole chunk, which costs less than a
/// sync (and a device cache flush) of its own.
async fn fill_zeroes(path: &std::path::Path, start: u64, end: u64) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).dma_open(path).await?;
    let len = (end - start) as usize;
    let mut buf = file.alloc_dma_buffer(len);
    buf.as_bytes_mut().fill(0);
    let result = async {
        let n = file.write_at(buf, start).await?;
        if n != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short prefill: {n} of {len} bytes"),
            ));
        }
        Ok(())
    }
    .await;
    let _ = file.close().await;
    result
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
    fn writes_wait_only_for_a_fill_they_overlap() {
        let p = Prefill::new(8192);
        *p.in_flight.borrow_mut() = Some((4096, 12288, Rc::new(Batch::default())));
        assert!(p.overlapping(0, 4096).is_none());
        assert!(p.overlapping(4000, 97).is_some());
        assert!(p.overlapping(12287, 1).is_some());
        assert!(p.overlapping(12288, 10).is_none());
        assert_eq!(p.next_fill(12000, None), None, "one fill at a time");
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
