//! The spool's in-memory model: the index of live messages, the segments with their write
//! buffers and dirty marks, and the outcome of one batched write. No I/O happens here; the
//! segment lifecycle (`segments.rs`), the batching (`batch.rs`) and recovery (`recovery.rs`)
//! act on it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use petrel_idmap::IdMap;
use std::rc::Rc;

use crate::cache::BodyCache;
use crate::error::SpoolError;
use crate::file::SegFile;

/// Everything the spool knows about its files, behind `Inner::state` (one borrow at a time,
/// never held across an await).
#[derive(Debug)]
pub(crate) struct State {
    /// Next message sequence to hand out; above every sequence ever seen on disk.
    pub(crate) next_id_seq: u64,
    /// Live messages: 24 bytes each, plus a share of their 64-id chunk (see `petrel_idmap`).
    pub(crate) index: IdMap<IndexEntry>,
    /// Segments on disk by sequence, once read (see `unscanned`); the highest is the active one.
    pub(crate) segments: BTreeMap<u64, Segment>,
    /// Sequence the next new segment takes: above every segment on disk, read or not.
    pub(crate) next_segment_seq: u64,
    /// Segments of an earlier run not read yet (`backlog.rs`): nothing refers to them, so
    /// nothing appends to or reclaims them until their messages are in `index`.
    pub(crate) unscanned: BTreeMap<u64, Unscanned>,
    /// Sequence of the segment new stores go to.
    pub(crate) active: u64,
    /// Record bytes of live messages.
    pub(crate) live_bytes: u64,
    /// Segments with unsynced writes (each listed once, see `Segment::dirty`).
    pub(crate) dirty: Vec<u64>,
    /// A segment file was created or deleted since the last directory sync.
    pub(crate) dir_dirty: bool,
    /// Segments with journal records buffered in `Segment::journal_buf` (each listed once).
    pub(crate) journal_pending: Vec<u64>,
    /// Segments with store records batched in `Segment::data_buf` (each listed once).
    pub(crate) data_pending: Vec<u64>,
    /// Recently stored bodies (see `cache.rs`).
    pub(crate) bodies: BodyCache,
}

/// A segment of an earlier run not read yet, counted in the spool's figures so admission sees
/// the whole spool while recovery runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unscanned {
    /// Size of its data file: at least the record bytes of its live messages.
    pub(crate) bytes: u64,
    /// Its messages, estimated from `bytes` and the mean record length of the newest segments.
    pub(crate) messages_estimate: u64,
}

impl State {
    /// An empty spool's state (`recovery` and `backlog.rs` fill it).
    pub(crate) fn new(body_cache_bytes_max: usize) -> State {
        State {
            next_id_seq: 0,
            index: IdMap::new(),
            segments: BTreeMap::new(),
            next_segment_seq: 0,
            unscanned: BTreeMap::new(),
            active: 0,
            live_bytes: 0,
            dirty: Vec::new(),
            dir_dirty: false,
            journal_pending: Vec::new(),
            data_pending: Vec::new(),
            bodies: BodyCache::new(body_cache_bytes_max),
        }
    }

    /// Messages and record bytes of the segments not read yet (see [`Unscanned`]).
    pub(crate) fn unscanned_totals(&self) -> (u64, u64) {
        self.unscanned
            .values()
            .fold((0, 0), |(m, b), u| (m + u.messages_estimate, b + u.bytes))
    }
}

/// One write of several store records, and the stores waiting for it.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// `None` until written; then whether the write succeeded.
    done: Cell<Option<bool>>,
    waiters: RefCell<Vec<std::task::Waker>>,
}

impl Batch {
    /// Records the write's outcome and wakes every store waiting for it.
    pub(crate) fn finish(&self, ok: bool) {
        self.done.set(Some(ok));
        for w in std::mem::take(&mut *self.waiters.borrow_mut()) {
            w.wake();
        }
    }

    /// Waits until the batch is written: true if the write succeeded.
    pub(crate) async fn written(&self) -> bool {
        std::future::poll_fn(|cx| match self.done.get() {
            Some(ok) => std::task::Poll::Ready(ok),
            None => {
                self.waiters.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// Which file of a segment a write went to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum File {
    Data,
    Journal,
}

/// Where a live message is. 24 bytes (checked below).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexEntry {
    /// Sequence of its segment.
    pub(crate) segment: u64,
    /// Offset of its store record in the segment's data file (below
    /// `SEGMENT_SIZE_MAX_LIMIT_BYTES` plus one record, so it fits).
    pub(crate) offset: u32,
    /// Length of the record, padding included (<= RECORD_SIZE_MAX_BYTES).
    pub(crate) record_len: u32,
    /// Number of recipients (updates must name an index below it).
    pub(crate) recipients: u32,
    /// The data key that sealed it, which seals its updates too; 0: stored in the clear.
    pub(crate) key: u32,
}
const _: () = assert!(std::mem::size_of::<IndexEntry>() == 24);

/// One segment: its data file and journal, their append offsets and unwritten buffers, and
/// what keeps it alive.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) data: Rc<SegFile>,
    pub(crate) journal: Rc<SegFile>,
    /// Next append offset in the data file (only the active segment grows).
    pub(crate) data_len: u64,
    /// Next append offset in the journal (buffered records included).
    pub(crate) journal_len: u64,
    /// Journal records appended but not yet written: they end at `journal_len`. Records of
    /// many deliveries are written together by one write (see `Inner::append_journal`).
    pub(crate) journal_buf: Vec<u8>,
    /// Store records reserved in this scheduler round, not yet written; they end at
    /// `data_len`. One write covers them all (see `Spool::store`).
    pub(crate) data_buf: Vec<u8>,
    /// The outcome of writing what is now in `data_buf`, awaited by its stores.
    pub(crate) data_batch: Rc<Batch>,
    /// Live messages stored here.
    pub(crate) live: u64,
    /// Stores reserved here whose write has not finished yet.
    pub(crate) inflight: u64,
    /// No longer the active segment: once `live == 0 && inflight == 0` it is deleted.
    pub(crate) sealed: bool,
    /// Listed in `State::dirty`.
    pub(crate) dirty: bool,
    /// The data file has writes the next sync must cover.
    pub(crate) data_unsynced: bool,
    /// The journal has (or is about to have) writes the next sync must cover.
    pub(crate) journal_unsynced: bool,
}

impl State {
    /// The segment stores go to; `Unhealthy` when there is none (a rollover that failed).
    pub(crate) fn active_mut(&mut self) -> Result<&mut Segment, SpoolError> {
        self.segments
            .get_mut(&self.active)
            .ok_or(SpoolError::Unhealthy("no active segment"))
    }

    pub(crate) fn mark_dirty(&mut self, seq: u64, file: File) {
        if let Some(seg) = self.segments.get_mut(&seq) {
            match file {
                File::Data => seg.data_unsynced = true,
                File::Journal => seg.journal_unsynced = true,
            }
            if !seg.dirty {
                seg.dirty = true;
                self.dirty.push(seq);
            }
        }
    }
}

impl Segment {
    pub(crate) fn new(
        data: SegFile,
        journal: SegFile,
        data_len: u64,
        journal_len: u64,
        sealed: bool,
    ) -> Segment {
        Segment {
            data: Rc::new(data),
            journal: Rc::new(journal),
            data_len,
            journal_len,
            journal_buf: Vec::new(),
            data_buf: Vec::new(),
            data_batch: Rc::new(Batch::default()),
            live: 0,
            inflight: 0,
            sealed,
            dirty: false,
            data_unsynced: false,
            journal_unsynced: false,
        }
    }

    pub(crate) fn reclaimable(&self) -> bool {
        self.sealed && self.live == 0 && self.inflight == 0
    }
}
