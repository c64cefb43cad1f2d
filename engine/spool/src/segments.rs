//! The spool's shared core ([`Inner`], behind every [`Spool`](crate::Spool) handle) and the
//! segment lifecycle: locate a message, start a new active segment, seal the old one and
//! reclaim a segment whose messages are all removed.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;

use glommio::io::Directory;
use glommio::sync::Semaphore;

use crate::commit::GroupCommit;
use crate::error::SpoolError;
use crate::file::{FileMode, SegFile};
use crate::record::{self, Kind, SegmentHeader};
use crate::recovery;
use crate::state::{File, IndexEntry, Segment, State};
use crate::types::{MessageId, SpoolConfig};

/// The spool's state and files, shared by the [`Spool`](crate::Spool) handle and the tasks it
/// spawns (flushes, syncs, reclamation), which hold it weakly.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) cfg: SpoolConfig,
    pub(crate) mode: FileMode,
    /// `<root>/shard-<shard>`.
    pub(crate) dir: PathBuf,
    pub(crate) dir_handle: Directory,
    pub(crate) state: RefCell<State>,
    pub(crate) commit: GroupCommit,
    /// Serialises reservations in the active segment (held across a rollover's file creation).
    pub(crate) reserve: Semaphore,
    /// Reason after a failed fdatasync, until the health probe starts a new segment.
    pub(crate) fatal: Cell<Option<&'static str>>,
    /// The last data write failed (cleared by the next successful one, or by the health
    /// probe once writing works again: `health.rs`): e.g. disk full.
    pub(crate) write_failed: Cell<bool>,
    /// The health probe runs (`health.rs`).
    pub(crate) probe_armed: Cell<bool>,
    /// A periodic journal sync is scheduled.
    pub(crate) sync_timer_armed: Cell<bool>,
    /// A waiter of the next sync wants the journals synced too (`Inner::commit_now`).
    pub(crate) journals_wanted: Cell<bool>,
    /// Sync rounds that covered the journals (`Spool::journal_syncs`).
    pub(crate) journal_syncs: Cell<u64>,
    /// Positional writes of store batches (`Spool::data_writes`).
    pub(crate) data_writes: Cell<u64>,
    /// Steps that gave back part of a reclaimed data file (`Spool::release_steps`).
    pub(crate) release_steps: Cell<u64>,
    /// The task that writes the buffered journal records is scheduled or writing.
    pub(crate) journal_flush_armed: Cell<bool>,
    /// The task that writes the batched store records is scheduled or writing.
    pub(crate) data_flush_armed: Cell<bool>,
    /// Reading the backlog failed (`backlog.rs`): the spool takes no new message until a
    /// restart reads it again (delivery of what was read goes on; the probe does not heal it).
    pub(crate) recovery_failed: Cell<bool>,
}

impl Inner {
    pub(crate) fn check_healthy(&self) -> Result<(), SpoolError> {
        match self.fatal.get() {
            Some(reason) => Err(SpoolError::Unhealthy(reason)),
            None => Ok(()),
        }
    }

    pub(crate) fn active_segment_file(&self) -> Result<Rc<SegFile>, SpoolError> {
        let st = self.state.borrow();
        let seg = st
            .segments
            .get(&st.active)
            .ok_or(SpoolError::Unhealthy("no active segment"))?;
        Ok(seg.data.clone())
    }

    pub(crate) fn needs_rollover(&self, record_len: u64) -> bool {
        let st = self.state.borrow();
        st.segments.get(&st.active).is_some_and(|s| {
            s.data_len + record_len > self.cfg.segment_size_max_bytes && s.live + s.inflight > 0
        })
    }

    pub(crate) fn locate(&self, id: MessageId) -> Result<(IndexEntry, Rc<SegFile>), SpoolError> {
        let st = self.state.borrow();
        let entry = *st.index.get(id.0).ok_or(SpoolError::NotFound(id))?;
        let seg = st
            .segments
            .get(&entry.segment)
            .ok_or(SpoolError::NotFound(id))?;
        Ok((entry, seg.data.clone()))
    }

    pub(crate) fn forget(&self, id: MessageId) {
        let mut st = self.state.borrow_mut();
        if let Some(entry) = st.index.remove(id.0) {
            st.bodies.remove(id.0);
            st.live_bytes = st.live_bytes.saturating_sub(u64::from(entry.record_len));
            if let Some(seg) = st.segments.get_mut(&entry.segment) {
                seg.live = seg.live.saturating_sub(1);
            }
        }
    }

    /// Seals the active segment and starts the next one. Called with the reservation permit.
    pub(crate) async fn rollover(self: &Rc<Self>) -> Result<(), SpoolError> {
        let old = {
            let mut st = self.state.borrow_mut();
            let active = st.active;
            let seg = st.active_mut()?;
            seg.sealed = true;
            seg.reclaimable().then_some(active)
        };
        self.new_active_segment().await?;
        if let Some(old) = old {
            self.reclaim(old).await?;
        }
        Ok(())
    }

    /// Creates the next segment (above every one on disk, read or not) with its header record
    /// and makes it the active one.
    pub(crate) async fn new_active_segment(&self) -> Result<(), SpoolError> {
        let (seq, next_id_seq) = {
            let st = self.state.borrow();
            let above_read = st.segments.keys().next_back().map_or(0, |s| s + 1);
            (above_read.max(st.next_segment_seq), st.next_id_seq)
        };
        // A step that fails (a full disk) removes what the earlier ones created, so the next
        // attempt can create the same names again.
        let data = SegFile::create(&recovery::data_path(&self.dir, seq), self.mode).await?;
        let journal = match SegFile::create(
            &recovery::journal_path(&self.dir, seq),
            FileMode::Buffered,
        )
        .await
        {
            Ok(j) => j,
            Err(e) => {
                discard(data).await;
                return Err(e);
            }
        };
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
        if let Err(e) = data.write_all_at(bytes, 0).await {
            discard(data).await;
            discard(journal).await;
            return Err(e);
        }
        let mut st = self.state.borrow_mut();
        st.segments
            .insert(seq, Segment::new(data, journal, data_len, 0, false));
        st.next_segment_seq = seq + 1;
        st.active = seq;
        st.mark_dirty(seq, File::Data);
        st.dir_dirty = true;
        Ok(())
    }

    /// Deletes a segment whose messages are all removed: data file first (that is what removes
    /// the messages), then the journal (an orphan journal is deleted at the next open). The data
    /// file's space is then given back a step at a time (`release.rs`).
    pub(crate) async fn reclaim(self: &Rc<Self>, seq: u64) -> Result<(), SpoolError> {
        let seg = {
            let mut st = self.state.borrow_mut();
            st.dir_dirty = true;
            st.segments.remove(&seq)
        };
        let Some(seg) = seg else { return Ok(()) };
        seg.data.remove().await?;
        seg.journal.remove().await?;
        close_file(seg.journal).await;
        crate::release::release_gradually(self, seg.data);
        Ok(())
    }
}

/// Removes and closes a file a failed step created.
async fn discard(f: SegFile) {
    if let Err(e) = f.remove().await {
        tracing::warn!(error = %e, "could not remove a half-made segment file");
    }
    close_file(Rc::new(f)).await;
}

pub(crate) async fn close_file(f: Rc<SegFile>) {
    // Another task may still hold the file for an in-flight read; it closes on drop then.
    if let Ok(f) = Rc::try_unwrap(f) {
        f.close().await;
    }
}
