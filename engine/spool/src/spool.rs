//! The glommio adapter: one shard's spool, its segments, its index and its group commit.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::Duration;

use glommio::io::Directory;
use glommio::sync::Semaphore;

use crate::cache::BodyCache;
use crate::commit::{CommitError, GroupCommit};
use crate::error::SpoolError;
use crate::file::{FileMode, SegFile};
use crate::record::{self, Kind, SegmentHeader};
use crate::recovery::{self, SHARD_DIR_PREFIX};
use crate::types::{
    Envelope, MessageId, RecipientUpdate, Recovery, SpoolConfig, SpoolStats, SpooledMessage,
    MESSAGE_ID_SEQUENCE_BITS,
};

/// Smallest accepted `segment_size_max_bytes` (a segment must hold its header and a record).
pub const SEGMENT_SIZE_MIN_BYTES: u64 = 4096;
/// Journal updates and removes are synced at most this long after they were written, unless a
/// group commit covers them first.
pub const JOURNAL_SYNC_DELAY_MS: u64 = 100;
/// A segment's buffered journal records are written by their appender once they reach this.
pub const JOURNAL_BUFFER_BYTES_MAX: usize = 256 * 1024;
/// A segment's batch of store records is written as soon as it reaches this, without waiting
/// for the end of the scheduler round.
pub const DATA_BATCH_BYTES_MAX: usize = 1 << 20;
/// Largest message sequence; the shard takes the 8 bits above it.
const ID_SEQUENCE_MAX: u64 = (1 << MESSAGE_ID_SEQUENCE_BITS) - 1;

/// One shard's spool. `!Send`: it lives on one glommio executor; all methods take `&self` and
/// may run concurrently from many tasks of that executor.
#[derive(Debug)]
pub struct Spool {
    inner: Rc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: SpoolConfig,
    mode: FileMode,
    /// `<root>/shard-<shard>`.
    dir: PathBuf,
    dir_handle: Directory,
    state: RefCell<State>,
    commit: GroupCommit,
    /// Serialises reservations in the active segment (held across a rollover's file creation).
    reserve: Semaphore,
    /// Sticky reason after a failed fdatasync.
    fatal: Cell<Option<&'static str>>,
    /// The last data write failed (cleared by the next successful one): e.g. disk full.
    write_failed: Cell<bool>,
    /// A periodic journal sync is scheduled.
    sync_timer_armed: Cell<bool>,
    /// The task that writes the buffered journal records is scheduled or writing.
    journal_flush_armed: Cell<bool>,
    /// The task that writes the batched store records is scheduled or writing.
    data_flush_armed: Cell<bool>,
}

#[derive(Debug)]
struct State {
    /// Next message sequence to hand out; above every sequence ever seen on disk.
    next_id_seq: u64,
    /// Live messages. 32 bytes of key + entry each, plus the hash table's own overhead.
    index: HashMap<u64, IndexEntry>,
    /// Segments on disk by sequence; the highest is the active one.
    segments: BTreeMap<u64, Segment>,
    /// Sequence of the segment new stores go to.
    active: u64,
    /// Record bytes of live messages.
    live_bytes: u64,
    /// Segments with unsynced writes (each listed once, see `Segment::dirty`).
    dirty: Vec<u64>,
    /// A segment file was created or deleted since the last directory sync.
    dir_dirty: bool,
    /// Segments with journal records buffered in `Segment::journal_buf` (each listed once).
    journal_pending: Vec<u64>,
    /// Segments with store records batched in `Segment::data_buf` (each listed once).
    data_pending: Vec<u64>,
    /// Recently stored bodies (see `cache.rs`).
    bodies: BodyCache,
}

/// A batch taken for writing: the file, the offset, the bytes and who waits for them.
type BatchWriteJob = (u64, Rc<SegFile>, u64, Vec<u8>, Rc<Batch>);

/// One write of several store records, and the stores waiting for it.
#[derive(Debug, Default)]
struct Batch {
    /// `None` until written; then whether the write succeeded.
    done: Cell<Option<bool>>,
    waiters: RefCell<Vec<std::task::Waker>>,
}

impl Batch {
    fn finish(&self, ok: bool) {
        self.done.set(Some(ok));
        for w in std::mem::take(&mut *self.waiters.borrow_mut()) {
            w.wake();
        }
    }

    /// Waits until the batch is written: true if the write succeeded.
    async fn written(&self) -> bool {
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
enum File {
    Data,
    Journal,
}

/// Where a live message is. 24 bytes.
#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    /// Sequence of its segment.
    segment: u64,
    /// Offset of its store record in the segment's data file.
    offset: u64,
    /// Length of the record, padding included (<= RECORD_SIZE_MAX_BYTES).
    record_len: u32,
    /// Number of recipients (updates must name an index below it).
    recipients: u32,
}

#[derive(Debug)]
struct Segment {
    data: Rc<SegFile>,
    journal: Rc<SegFile>,
    /// Next append offset in the data file (only the active segment grows).
    data_len: u64,
    /// Next append offset in the journal (buffered records included).
    journal_len: u64,
    /// Journal records appended but not yet written: they end at `journal_len`. Records of
    /// many deliveries are written together by one write (see `Inner::append_journal`).
    journal_buf: Vec<u8>,
    /// Store records reserved in this scheduler round, not yet written; they end at
    /// `data_len`. One write covers them all (see `Spool::store`).
    data_buf: Vec<u8>,
    /// The outcome of writing what is now in `data_buf`, awaited by its stores.
    data_batch: Rc<Batch>,
    /// Live messages stored here.
    live: u64,
    /// Stores reserved here whose write has not finished yet.
    inflight: u64,
    /// No longer the active segment: once `live == 0 && inflight == 0` it is deleted.
    sealed: bool,
    /// Listed in `State::dirty`.
    dirty: bool,
    /// The data file has writes the next sync must cover.
    data_unsynced: bool,
    /// The journal has (or is about to have) writes the next sync must cover.
    journal_unsynced: bool,
}

impl Spool {
    /// Opens (creating if needed) `<root>/shard-<shard>/`, recovers what is there, and starts a
    /// fresh active segment. Uses the default [`FileMode`].
    pub async fn open(cfg: SpoolConfig) -> Result<(Spool, Recovery), SpoolError> {
        Self::open_with_mode(cfg, FileMode::default()).await
    }

    /// [`Spool::open`] with an explicit file type for the new data segments (benchmarks).
    pub async fn open_with_mode(
        cfg: SpoolConfig,
        mode: FileMode,
    ) -> Result<(Spool, Recovery), SpoolError> {
        if cfg.segment_size_max_bytes < SEGMENT_SIZE_MIN_BYTES {
            return Err(SpoolError::Config(
                "segment_size_max_bytes is below SEGMENT_SIZE_MIN_BYTES",
            ));
        }
        let dir = cfg.root.join(format!("{SHARD_DIR_PREFIX}{}", cfg.shard));
        std::fs::create_dir_all(&dir).map_err(|e| SpoolError::io("create_dir", &dir, e))?;
        let dir_handle = Directory::open(&dir)
            .await
            .map_err(|e| SpoolError::io("open_dir", &dir, e))?;
        let mut state = State {
            next_id_seq: 0,
            index: HashMap::new(),
            segments: BTreeMap::new(),
            active: 0,
            live_bytes: 0,
            dirty: Vec::new(),
            dir_dirty: false,
            journal_pending: Vec::new(),
            data_pending: Vec::new(),
            bodies: BodyCache::new(cfg.body_cache_bytes_max),
        };
        let recovery = recover(&dir, cfg.shard, &mut state).await?;
        let inner = Rc::new(Inner {
            cfg,
            mode,
            dir,
            dir_handle,
            state: RefCell::new(state),
            commit: GroupCommit::default(),
            reserve: Semaphore::new(1),
            fatal: Cell::new(None),
            write_failed: Cell::new(false),
            sync_timer_armed: Cell::new(false),
            journal_flush_armed: Cell::new(false),
            data_flush_armed: Cell::new(false),
        });
        inner.new_active_segment().await?;
        // Make the new segment (and any truncation or deletion done by recovery) durable now.
        inner.sync_dirty().await?;
        Ok((Spool { inner }, recovery))
    }

    /// Stores a message; durable before it returns (with `fsync`): one fdatasync covers every
    /// store that arrived while the previous commit ran. The body is stored once.
    pub async fn store(&self, envelope: &Envelope, body: &[u8]) -> Result<MessageId, SpoolError> {
        let inner = &self.inner;
        inner.check_healthy()?;
        check_len("body", body.len(), record::BODY_SIZE_MAX_BYTES)?;
        check_len("recipients", envelope.recipients.len(), u32::MAX as usize)?;
        let meta = record::encode_envelope(envelope).map_err(|e| SpoolError::Encode {
            what: "envelope",
            reason: e.to_string(),
        })?;
        check_len("envelope", meta.len(), record::ENVELOPE_SIZE_MAX_BYTES)?;
        let payload_len = record::STORE_PREFIX_BYTES + meta.len() + body.len();
        let (id, seg, offset, record_len, batch) = {
            let _permit = inner
                .reserve
                .acquire_permit(1)
                .await
                .map_err(|_| SpoolError::Unhealthy("spool closed"))?;
            let align = inner.active_segment_file()?.align();
            let record_len =
                record::align_up(record::RECORD_HEADER_BYTES + payload_len, align) as u64;
            if inner.needs_rollover(record_len) {
                inner.rollover().await?;
            }
            let mut st = inner.state.borrow_mut();
            if st.next_id_seq > ID_SEQUENCE_MAX {
                return Err(SpoolError::Unhealthy("message id sequence exhausted"));
            }
            let id = MessageId::new(inner.cfg.shard, st.next_id_seq);
            st.next_id_seq += 1;
            let active = st.active;
            let seg = st
                .segments
                .get_mut(&active)
                .ok_or(SpoolError::Unhealthy("no active segment"))?;
            let offset = seg.data_len;
            seg.data_len += record_len;
            seg.inflight += 1;
            // The record joins this round's batch for the segment: the stores of one scheduler
            // round share one write, done by a task queued behind them (`flush_data`).
            let first = seg.data_buf.is_empty();
            if first {
                seg.data_batch = Rc::new(Batch::default());
                st.data_pending.push(active);
            }
            let seg = st
                .segments
                .get_mut(&active)
                .ok_or(SpoolError::Unhealthy("no active segment"))?;
            let prefix = record::store_prefix(id.0, meta.len());
            record::encode_record(
                &mut seg.data_buf,
                Kind::Store,
                &[&prefix, &meta, body],
                align,
            );
            let batch = seg.data_batch.clone();
            let full = seg.data_buf.len() >= DATA_BATCH_BYTES_MAX;
            // Marked dirty once written (`flush_data`), not now: a sync that ran before the
            // write finished must not consume the mark and leave this record unsynced.
            drop(st);
            if full {
                inner.flush_data_soon(true);
            } else if first {
                inner.flush_data_soon(false);
            }
            (id, active, offset, record_len, batch)
        };
        let guard = InflightGuard {
            inner,
            segment: seg,
        };
        let written = batch.written().await;
        inner.write_failed.set(!written);
        if !written {
            return Err(SpoolError::io(
                "write",
                &inner.dir,
                std::io::Error::other("writing this record's batch failed (see the log)"),
            ));
        }
        {
            let mut st = inner.state.borrow_mut();
            let entry = IndexEntry {
                segment: seg,
                offset,
                record_len: record_len as u32,
                recipients: envelope.recipients.len() as u32,
            };
            st.index.insert(id.0, entry);
            st.bodies.insert(id.0, body);
            st.live_bytes += record_len;
            if let Some(s) = st.segments.get_mut(&seg) {
                s.live += 1;
            }
        }
        drop(guard);
        if inner.cfg.fsync {
            if let Err(e) = inner.commit_now().await {
                // Not known durable: forget it here (recovery will find it if it was).
                inner.forget(id);
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Reads a live message's body back (checksum verified).
    pub async fn read_body(&self, id: MessageId) -> Result<Vec<u8>, SpoolError> {
        let (entry, data) = self.inner.locate(id)?;
        if let Some(body) = self.inner.state.borrow().bodies.get(id.0) {
            return Ok(body);
        }
        let buf = data
            .read_exact_at(entry.offset, entry.record_len as usize)
            .await?;
        let corrupt = |reason| SpoolError::Corrupt {
            path: data.path().to_path_buf(),
            offset: entry.offset,
            reason,
        };
        let rec = record::decode_at(&buf, 0).map_err(|_| corrupt("bad frame or checksum"))?;
        let (stored_id, _, body) =
            record::split_store(rec.payload).ok_or(corrupt("bad store payload"))?;
        if rec.kind != Kind::Store || stored_id != id.0 {
            return Err(corrupt("record is not this message"));
        }
        Ok(body.to_vec())
    }

    /// Journals recipient state changes. Returns once buffered (not written or synced): the
    /// next group commit or the periodic journal sync (within `JOURNAL_SYNC_DELAY_MS`) writes
    /// and syncs it. A crash before then means the recipients are tried again.
    pub async fn update(
        &self,
        id: MessageId,
        updates: &[RecipientUpdate],
    ) -> Result<(), SpoolError> {
        let inner = &self.inner;
        inner.check_healthy()?;
        let (entry, _) = inner.locate(id)?;
        if let Some(u) = updates.iter().find(|u| u.index >= entry.recipients) {
            return Err(SpoolError::RecipientIndex {
                id,
                index: u.index,
                recipients: entry.recipients,
            });
        }
        let archived = record::encode_updates(updates).map_err(|e| SpoolError::Encode {
            what: "updates",
            reason: e.to_string(),
        })?;
        check_len("update", archived.len(), record::UPDATE_SIZE_MAX_BYTES)?;
        let mut bytes = Vec::new();
        let prefix = record::update_prefix(id.0);
        record::encode_record(
            &mut bytes,
            Kind::Update,
            &[&prefix, &archived],
            record::RECORD_ALIGN_BYTES,
        );
        inner.append_journal(entry.segment, bytes).await
    }

    /// The message is final for every recipient: journals its removal and reclaims its segment
    /// once every message of that (sealed) segment is removed.
    pub async fn remove(&self, id: MessageId) -> Result<(), SpoolError> {
        let inner = &self.inner;
        inner.check_healthy()?;
        let (segment, reclaim) = {
            let mut st = inner.state.borrow_mut();
            let entry = st.index.remove(&id.0).ok_or(SpoolError::NotFound(id))?;
            st.bodies.remove(id.0);
            st.live_bytes = st.live_bytes.saturating_sub(u64::from(entry.record_len));
            let seg = st
                .segments
                .get_mut(&entry.segment)
                .ok_or(SpoolError::NotFound(id))?;
            seg.live = seg.live.saturating_sub(1);
            (entry.segment, seg.reclaimable())
        };
        if reclaim {
            // Deleting the data file removes the message with everything else in the segment.
            return inner.reclaim(segment).await;
        }
        let mut bytes = Vec::new();
        record::encode_record(
            &mut bytes,
            Kind::Remove,
            &[&id.0.to_le_bytes()],
            record::RECORD_ALIGN_BYTES,
        );
        inner.append_journal(segment, bytes).await
    }

    /// Live counts.
    pub fn stats(&self) -> SpoolStats {
        let st = self.inner.state.borrow();
        SpoolStats {
            messages: st.index.len() as u64,
            bytes: st.live_bytes,
            segments: st.segments.len() as u64,
        }
    }

    /// Number of fdatasync rounds (group commits) so far; compare with the number of stores.
    pub fn commits(&self) -> u64 {
        self.inner.commit.commits()
    }

    /// Why the spool should not take new messages right now, if it should not. Cheap.
    pub fn unhealthy_reason(&self) -> Option<&'static str> {
        self.inner
            .fatal
            .get()
            .or(self.inner.write_failed.get().then_some("disk write failed"))
    }

    /// Syncs everything written and closes the files.
    pub async fn close(self) -> Result<(), SpoolError> {
        let inner = self.inner;
        inner.reserve.close();
        inner.flush_data().await;
        inner.flush_journals().await?;
        inner.commit_now().await?;
        let segments = std::mem::take(&mut inner.state.borrow_mut().segments);
        for (_, seg) in segments {
            close_file(seg.data).await;
            close_file(seg.journal).await;
        }
        Ok(())
    }
}

impl Inner {
    fn check_healthy(&self) -> Result<(), SpoolError> {
        match self.fatal.get() {
            Some(reason) => Err(SpoolError::Unhealthy(reason)),
            None => Ok(()),
        }
    }

    fn active_segment_file(&self) -> Result<Rc<SegFile>, SpoolError> {
        let st = self.state.borrow();
        let seg = st
            .segments
            .get(&st.active)
            .ok_or(SpoolError::Unhealthy("no active segment"))?;
        Ok(seg.data.clone())
    }

    fn needs_rollover(&self, record_len: u64) -> bool {
        let st = self.state.borrow();
        st.segments.get(&st.active).is_some_and(|s| {
            s.data_len + record_len > self.cfg.segment_size_max_bytes && s.live + s.inflight > 0
        })
    }

    fn locate(&self, id: MessageId) -> Result<(IndexEntry, Rc<SegFile>), SpoolError> {
        let st = self.state.borrow();
        let entry = *st.index.get(&id.0).ok_or(SpoolError::NotFound(id))?;
        let seg = st
            .segments
            .get(&entry.segment)
            .ok_or(SpoolError::NotFound(id))?;
        Ok((entry, seg.data.clone()))
    }

    fn forget(&self, id: MessageId) {
        let mut st = self.state.borrow_mut();
        if let Some(entry) = st.index.remove(&id.0) {
            st.bodies.remove(id.0);
            st.live_bytes = st.live_bytes.saturating_sub(u64::from(entry.record_len));
            if let Some(seg) = st.segments.get_mut(&entry.segment) {
                seg.live = seg.live.saturating_sub(1);
            }
        }
    }

    /// Seals the active segment and starts the next one. Called with the reservation permit.
    async fn rollover(self: &Rc<Self>) -> Result<(), SpoolError> {
        let old = {
            let mut st = self.state.borrow_mut();
            let active = st.active;
            let seg = st
                .segments
                .get_mut(&active)
                .ok_or(SpoolError::Unhealthy("no active segment"))?;
            seg.sealed = true;
            seg.reclaimable().then_some(active)
        };
        self.new_active_segment().await?;
        if let Some(old) = old {
            self.reclaim(old).await?;
        }
        Ok(())
    }

    /// Creates segment `max + 1` with its header record and makes it the active one.
    async fn new_active_segment(&self) -> Result<(), SpoolError> {
        let (seq, next_id_seq) = {
            let st = self.state.borrow();
            (
                st.segments.keys().next_back().map_or(0, |s| s + 1),
                st.next_id_seq,
            )
        };
        let data = SegFile::create(&recovery::data_path(&self.dir, seq), self.mode).await?;
        let journal =
            SegFile::create(&recovery::journal_path(&self.dir, seq), FileMode::Buffered).await?;
        let header = SegmentHeader {
            shard: self.cfg.shard,
            segment_seq: seq,
            next_id_seq,
        };
        let mut bytes = Vec::new();
        record::encode_record(
            &mut bytes,
            Kind::SegmentHeader,
            &[&header.to_bytes()],
            data.align(),
        );
        let data_len = bytes.len() as u64;
        data.write_all_at(bytes, 0).await?;
        let mut st = self.state.borrow_mut();
        st.segments
            .insert(seq, Segment::new(data, journal, data_len, 0, false));
        st.active = seq;
        st.mark_dirty(seq, File::Data);
        st.dir_dirty = true;
        Ok(())
    }

    /// Deletes a segment whose messages are all removed: data file first (that is what removes
    /// the messages), then the journal (an orphan journal is deleted at the next open).
    async fn reclaim(&self, seq: u64) -> Result<(), SpoolError> {
        let seg = {
            let mut st = self.state.borrow_mut();
            st.dir_dirty = true;
            st.segments.remove(&seq)
        };
        let Some(seg) = seg else { return Ok(()) };
        seg.data.remove().await?;
        seg.journal.remove().await?;
        close_file(seg.data).await;
        close_file(seg.journal).await;
        Ok(())
    }

    /// Appends a journal record to its segment's buffer. Records appended while the shard is
    /// busy are written together by one write (a task scheduled behind the current ones), or
    /// at once by the appender when the buffer passes `JOURNAL_BUFFER_BYTES_MAX`. Either way
    /// the periodic sync or the next group commit makes them durable, as before: a crash can
    /// lose a recent update or removal, which means a recipient tried again (at-least-once),
    /// never a message lost.
    async fn append_journal(
        self: &Rc<Self>,
        segment: u64,
        bytes: Vec<u8>,
    ) -> Result<(), SpoolError> {
        let full = {
            let mut st = self.state.borrow_mut();
            let Some(seg) = st.segments.get_mut(&segment) else {
                // Reclaimed meanwhile: nothing left to journal.
                return Ok(());
            };
            seg.journal_len += bytes.len() as u64;
            let was_empty = seg.journal_buf.is_empty();
            seg.journal_buf.extend_from_slice(&bytes);
            let full = seg.journal_buf.len() >= JOURNAL_BUFFER_BYTES_MAX;
            if was_empty {
                st.journal_pending.push(segment);
            }
            st.mark_dirty(segment, File::Journal);
            full
        };
        if full {
            self.flush_journals().await?;
            self.arm_sync_timer();
        } else {
            self.arm_journal_flush();
        }
        Ok(())
    }

    /// Writes the batched store records: behind the tasks ready now, or (`now`) in a task of
    /// its own at once because a batch is full. One writer at a time: records stored while its
    /// write is in flight wait for it and go out together in its next write, so under load a
    /// write (an io-wq hop for buffered files) covers every store of its write's duration, not
    /// only those of one scheduler round.
    fn flush_data_soon(self: &Rc<Self>, now: bool) {
        if !now && self.data_flush_armed.replace(true) {
            return;
        }
        let weak: Weak<Inner> = Rc::downgrade(self);
        glommio::spawn_local(async move {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            if now {
                inner.flush_data().await;
                return;
            }
            loop {
                inner.flush_data().await;
                if inner.state.borrow().data_pending.is_empty() {
                    break;
                }
            }
            inner.data_flush_armed.set(false);
        })
        .detach();
    }

    /// One positional write per segment with batched store records; each batch learns its fate.
    async fn flush_data(&self) {
        let writes: Vec<BatchWriteJob> = {
            let mut st = self.state.borrow_mut();
            let pending = std::mem::take(&mut st.data_pending);
            pending
                .into_iter()
                .filter_map(|seq| {
                    let seg = st.segments.get_mut(&seq)?;
                    let buf = std::mem::take(&mut seg.data_buf);
                    let offset = seg.data_len - buf.len() as u64;
                    (!buf.is_empty())
                        .then(|| (seq, seg.data.clone(), offset, buf, seg.data_batch.clone()))
                })
                .collect()
        };
        for (seq, data, offset, buf, batch) in writes {
            match data.write_all_at(buf, offset).await {
                Ok(()) => {
                    // Before the stores take their commit tickets: the next sync covers it.
                    self.state.borrow_mut().mark_dirty(seq, File::Data);
                    batch.finish(true);
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool write failed");
                    batch.finish(false);
                }
            }
        }
    }

    /// Schedules a write of every buffered journal record, behind the tasks ready now; while
    /// that write is in flight, newly buffered records wait for the next one.
    fn arm_journal_flush(self: &Rc<Self>) {
        if self.journal_flush_armed.replace(true) {
            return;
        }
        let weak: Weak<Inner> = Rc::downgrade(self);
        glommio::spawn_local(async move {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            // One writer at a time, as for data: records buffered while a write is in flight
            // go out together in the next one.
            loop {
                if let Err(e) = inner.flush_journals().await {
                    tracing::error!(error = %e, "spool journal write failed");
                }
                // After every write, not once at the end: under a steady stream of updates the
                // loop may run for long, and what it wrote must still be synced within
                // `JOURNAL_SYNC_DELAY_MS`.
                inner.arm_sync_timer();
                if inner.state.borrow().journal_pending.is_empty() {
                    break;
                }
            }
            inner.journal_flush_armed.set(false);
        })
        .detach();
    }

    /// Writes every segment's buffered journal records (one positional write per segment).
    async fn flush_journals(&self) -> Result<(), SpoolError> {
        let writes: Vec<(u64, Rc<SegFile>, u64, Vec<u8>)> = {
            let mut st = self.state.borrow_mut();
            let pending = std::mem::take(&mut st.journal_pending);
            pending
                .into_iter()
                .filter_map(|seq| {
                    let seg = st.segments.get_mut(&seq)?;
                    let buf = std::mem::take(&mut seg.journal_buf);
                    let offset = seg.journal_len - buf.len() as u64;
                    (!buf.is_empty()).then(|| (seq, seg.journal.clone(), offset, buf))
                })
                .collect()
        };
        let mut result = Ok(());
        for (seq, journal, offset, buf) in writes {
            match journal.write_all_at(buf, offset).await {
                // A sync that ran while this write was in flight did not cover it.
                Ok(()) => self.state.borrow_mut().mark_dirty(seq, File::Journal),
                Err(e) => result = Err(e),
            }
        }
        result
    }

    /// Schedules one sync of whatever is dirty within `JOURNAL_SYNC_DELAY_MS`.
    fn arm_sync_timer(self: &Rc<Self>) {
        if !self.cfg.fsync || self.sync_timer_armed.replace(true) {
            return;
        }
        let weak: Weak<Inner> = Rc::downgrade(self);
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(JOURNAL_SYNC_DELAY_MS)).await;
            if let Some(inner) = weak.upgrade() {
                inner.sync_timer_armed.set(false);
                let idle = {
                    let st = inner.state.borrow();
                    st.dirty.is_empty() && !st.dir_dirty
                };
                if idle {
                    // A group commit already covered the journal writes.
                    return;
                }
                if let Err(e) = inner.commit_now().await {
                    tracing::error!(error = %e, "spool journal sync failed");
                }
            }
        })
        .detach();
    }

    /// Waits until everything written so far is durable (joining or leading a group commit).
    async fn commit_now(&self) -> Result<(), SpoolError> {
        let ticket = self.commit.ticket();
        let pause = std::time::Duration::from_micros(self.cfg.commit_window_us);
        let window = |last_group: u64| {
            (self.cfg.commit_window_us > 0 && crate::commit::window_applies(last_group))
                .then(|| glommio::timer::sleep(pause))
        };
        match self.commit.wait(ticket, || self.sync_dirty(), window).await {
            Ok(()) => Ok(()),
            Err(CommitError::Sync(e)) => Err(e),
            Err(CommitError::Failed) => Err(SpoolError::Unhealthy(
                self.fatal.get().unwrap_or("fdatasync failed"),
            )),
        }
    }

    /// fdatasyncs every dirty file (and the directory when files came or went).
    async fn sync_dirty(&self) -> Result<(), SpoolError> {
        // Buffered journal records ride along with this commit.
        if let Err(e) = self.flush_journals().await {
            tracing::error!(error = %e, "spool journal write failed");
        }
        let (files, dir_dirty) = {
            let mut st = self.state.borrow_mut();
            let dirty = std::mem::take(&mut st.dirty);
            let mut files = Vec::with_capacity(dirty.len() * 2);
            for seq in dirty {
                if let Some(seg) = st.segments.get_mut(&seq) {
                    seg.dirty = false;
                    // Only the files written since the last sync: while only messages arrive,
                    // the journals stay clean and cost no fdatasync.
                    if std::mem::take(&mut seg.data_unsynced) {
                        files.push(seg.data.clone());
                    }
                    if std::mem::take(&mut seg.journal_unsynced) {
                        files.push(seg.journal.clone());
                    }
                }
            }
            (files, std::mem::take(&mut st.dir_dirty))
        };
        // All at once: io_uring hands each fdatasync to an io-wq worker, and on one filesystem
        // they share the journal commit, so a commit covering a segment's data and its journal
        // waits about one sync, not two in a row.
        let syncs: Vec<_> = files
            .into_iter()
            .map(|f| glommio::spawn_local(async move { f.fdatasync().await }))
            .collect();
        for sync in syncs {
            if let Err(e) = sync.await {
                self.fatal.set(Some("fdatasync failed"));
                tracing::error!(error = %e, "spool fdatasync failed; refusing new messages");
                return Err(e);
            }
        }
        if dir_dirty {
            if let Err(e) = self.dir_handle.sync().await {
                self.fatal.set(Some("directory sync failed"));
                return Err(SpoolError::io("fsync_dir", &self.dir, e));
            }
        }
        Ok(())
    }
}

impl State {
    fn mark_dirty(&mut self, seq: u64, file: File) {
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
    fn new(
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

    fn reclaimable(&self) -> bool {
        self.sealed && self.live == 0 && self.inflight == 0
    }
}

/// Counts a reserved store until its write is done, even if the store future is dropped;
/// reclaims a sealed segment that this store was the last thing keeping alive.
struct InflightGuard<'a> {
    inner: &'a Rc<Inner>,
    segment: u64,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let reclaim = {
            let mut st = self.inner.state.borrow_mut();
            match st.segments.get_mut(&self.segment) {
                Some(seg) => {
                    seg.inflight = seg.inflight.saturating_sub(1);
                    seg.reclaimable()
                }
                None => false,
            }
        };
        if reclaim {
            let inner = self.inner.clone();
            let seq = self.segment;
            glommio::spawn_local(async move {
                if let Err(e) = inner.reclaim(seq).await {
                    tracing::warn!(error = %e, "spool segment reclamation failed");
                }
            })
            .detach();
        }
    }
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), SpoolError> {
    if len > max {
        return Err(SpoolError::TooLarge {
            what,
            len_bytes: len as u64,
            max_bytes: max as u64,
        });
    }
    Ok(())
}

async fn close_file(f: Rc<SegFile>) {
    // Another task may still hold the file for an in-flight read; it closes on drop then.
    if let Ok(f) = Rc::try_unwrap(f) {
        f.close().await;
    }
}

/// Scans every segment of `dir` into `state`; returns what the engine must requeue.
async fn recover(dir: &Path, shard: u8, state: &mut State) -> Result<Recovery, SpoolError> {
    let listing = recovery::list_segments(dir)?;
    for seq in &listing.orphan_journals {
        let path = recovery::journal_path(dir, *seq);
        tracing::info!(path = %path.display(), "spool recovery deleting an orphan journal");
        std::fs::remove_file(&path).map_err(|e| SpoolError::io("remove", &path, e))?;
        state.dir_dirty = true;
    }
    let mut out = Recovery::default();
    let mut messages: Vec<SpooledMessage> = Vec::new();
    let highest = listing.data.last().copied();
    for &seq in &listing.data {
        let dpath = recovery::data_path(dir, seq);
        let jpath = recovery::journal_path(dir, seq);
        let data = SegFile::open(&dpath, FileMode::Buffered).await?;
        let journal = match SegFile::open(&jpath, FileMode::Buffered).await {
            Ok(j) => j,
            Err(_) if !jpath.exists() => SegFile::create(&jpath, FileMode::Buffered).await?,
            Err(e) => return Err(e),
        };
        let data_bytes = data.read_exact_at(0, data.size().await? as usize).await?;
        let journal_size = journal.size().await?;
        let journal_bytes = journal.read_exact_at(0, journal_size as usize).await?;
        let seg = recovery::rebuild(&data_bytes, &journal_bytes, &dpath);
        out.records_skipped += seg.records_skipped;
        out.bytes_skipped += seg.bytes_skipped;
        if let Some(max) = seg.max_id_seq {
            state.next_id_seq = state.next_id_seq.max(max + 1);
        }
        if let Some(h) = seg.header {
            if h.shard != shard {
                tracing::warn!(segment = %dpath.display(), header_shard = h.shard, shard, "segment header names another shard");
            }
            state.next_id_seq = state.next_id_seq.max(h.next_id_seq);
        }
        // An empty segment is deleted, except the newest: its header carries the next id.
        if seg.live.is_empty() && Some(seq) != highest {
            data.remove().await?;
            journal.remove().await?;
            data.close().await;
            journal.close().await;
            state.dir_dirty = true;
            continue;
        }
        let truncated = journal_size > seg.journal_valid_end;
        if truncated {
            // Never append after a torn tail: cut it (its bytes are already counted as skipped).
            journal.truncate(seg.journal_valid_end).await?;
        }
        let mut segment = Segment::new(
            data,
            journal,
            data_bytes.len() as u64,
            seg.journal_valid_end,
            true,
        );
        segment.live = seg.live.len() as u64;
        if truncated {
            // Make the cut durable with the first commit.
            segment.dirty = true;
            segment.journal_unsynced = true;
            state.dirty.push(seq);
        }
        for (&id, found) in &seg.live {
            let entry = IndexEntry {
                segment: seq,
                offset: found.offset,
                record_len: found.record_len as u32,
                recipients: found.envelope.recipients.len() as u32,
            };
            state.index.insert(id, entry);
            state.live_bytes += found.record_len;
        }
        messages.extend(recovery::spooled(&seg));
        state.segments.insert(seq, segment);
    }
    messages.sort_by_key(|m| m.id);
    out.messages = messages;
    Ok(out)
}

impl SegFile {
    /// Closes the file, logging (not failing) on error: used where the data is already synced
    /// or deleted.
    pub(crate) async fn close(self) {
        let r = match self {
            SegFile::Buffered(f, _) => f.close().await,
            SegFile::Direct(f, reader, _) => {
                if let Err(e) = reader.close().await {
                    tracing::warn!(error = %e, "closing a spool file failed");
                }
                f.close().await
            }
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "closing a spool file failed");
        }
    }
}
