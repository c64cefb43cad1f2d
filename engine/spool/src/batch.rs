//! Write and sync batching: store records wait in their segment's batch (buffered files with
//! fsync on: the sync round that covers them writes them first; without fsync the store writes
//! at once; O_DIRECT files: those of one write's duration go out together), journal records are
//! buffered and written together, one fdatasync round (group commit) covers every store whose
//! ticket it carries, and the journals have a periodic sync of their own.

use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::commit::CommitError;
use crate::error::SpoolError;
use crate::file::{FileMode, SegFile};
use crate::segments::Inner;
use crate::state::{Batch, File};

/// Journal updates and removes are synced at most this long after they were written (by a sync
/// of their own, or sooner by a commit that asks for everything: `Inner::commit_now`).
pub const JOURNAL_SYNC_DELAY_MS: u64 = 100;
/// A segment's buffered journal records are written by their appender once they reach this.
pub const JOURNAL_BUFFER_BYTES_MAX: usize = 256 * 1024;
/// A segment's batch of store records is written as soon as it reaches this, without waiting
/// for the end of the scheduler round.
pub const DATA_BATCH_BYTES_MAX: usize = 1 << 20;

/// A batch taken for writing: the file, the offset, the bytes and who waits for them.
type BatchWriteJob = (u64, Rc<SegFile>, u64, Vec<u8>, Rc<Batch>);

impl Inner {
    /// Appends a journal record to its segment's buffer. Records appended while a journal
    /// write is in flight are written together by the next one, or at once by the appender when
    /// the buffer passes `JOURNAL_BUFFER_BYTES_MAX`. Either way the periodic journal sync makes
    /// them durable within `JOURNAL_SYNC_DELAY_MS`: a crash can lose a recent update or removal,
    /// which means a recipient tried again (at-least-once), never a message lost.
    pub(crate) async fn append_journal(
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

    /// Writes the batched store records of O_DIRECT files (buffered ones are written by the
    /// sync round that covers them, or by their store) in a task, which glommio polls at once;
    /// `now` when a batch is full. One
    /// writer at a time: records stored while its write is in flight wait for it and go out
    /// together in its next write, so under load a write covers every store of its write's
    /// duration.
    pub(crate) fn flush_data_soon(self: &Rc<Self>, now: bool) {
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
    pub(crate) async fn flush_data(&self) {
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
            self.data_writes.set(self.data_writes.get() + 1);
            match data.write_all_at(buf, offset).await {
                Ok(()) => {
                    // Before any later sync takes the marks: the sync writing this batch (its
                    // stores' own) or the next one covers it.
                    let reserved_end = {
                        let mut st = self.state.borrow_mut();
                        st.mark_dirty(seq, File::Data);
                        st.segments.get(&seq).map(|s| s.data_len)
                    };
                    batch.finish(true);
                    if let Some(end) = reserved_end {
                        data.prefill_ahead(end, Some(self.cfg.segment_size_max_bytes));
                    }
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
    pub(crate) fn arm_journal_flush(self: &Rc<Self>) {
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
    pub(crate) async fn flush_journals(&self) -> Result<(), SpoolError> {
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
                Ok(()) => {
                    let reserved_end = {
                        let mut st = self.state.borrow_mut();
                        st.mark_dirty(seq, File::Journal);
                        st.segments.get(&seq).map(|s| s.journal_len)
                    };
                    if let Some(end) = reserved_end {
                        journal.prefill_ahead(end, None);
                    }
                }
                Err(e) => result = Err(e),
            }
        }
        result
    }

    /// Schedules one sync of the journals within `JOURNAL_SYNC_DELAY_MS`, beside the group
    /// commit rather than in it: stores being acknowledged meanwhile do not wait for it.
    pub(crate) fn arm_sync_timer(self: &Rc<Self>) {
        if !self.cfg.fsync || self.sync_timer_armed.replace(true) {
            return;
        }
        let weak: Weak<Inner> = Rc::downgrade(self);
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(JOURNAL_SYNC_DELAY_MS)).await;
            if let Some(inner) = weak.upgrade() {
                inner.sync_timer_armed.set(false);
                if let Err(e) = inner.sync_journals().await {
                    tracing::error!(error = %e, "spool journal sync failed");
                    return;
                }
                // Every data write is followed by its store's commit; a directory change (a
                // segment reclaimed after the last store, say) may have none coming, so it goes
                // through the group commit here. Journals written meanwhile wait for the next
                // journal sync, not for an empty commit round.
                let dir_dirty = inner.state.borrow().dir_dirty;
                if dir_dirty {
                    if let Err(e) = inner.commit_stores().await {
                        tracing::error!(error = %e, "spool sync failed");
                    }
                }
            }
        })
        .detach();
    }

    /// Waits until everything written so far is durable, journals included (joining or leading
    /// a group commit).
    pub(crate) async fn commit_now(&self) -> Result<(), SpoolError> {
        // Before the ticket: the sync that covers the ticket starts after this and sees it.
        self.journals_wanted.set(true);
        self.commit_stores().await
    }

    /// Waits until every store written so far is durable (data files and the directory), and
    /// the journals only if another waiter of the same sync asked for them: an acknowledgement
    /// needs its message on disk, not the delivery updates of others, which the periodic sync
    /// covers within `JOURNAL_SYNC_DELAY_MS`. With deliveries running, that halves the
    /// fdatasyncs (each an io-wq hop and a device flush) behind each group of acknowledgements.
    pub(crate) async fn commit_stores(&self) -> Result<(), SpoolError> {
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

    /// Writes the buffered journal records and fdatasyncs every journal written since its last
    /// sync, outside the group commit. A failure makes the spool unhealthy, as a failed commit
    /// does (`health.rs`).
    pub(crate) async fn sync_journals(&self) -> Result<(), SpoolError> {
        if let Err(e) = self.flush_journals().await {
            tracing::error!(error = %e, "spool journal write failed");
        }
        let taken = self.take_unsynced(false, true);
        if taken.is_empty() {
            // A commit that asked for everything covered them already.
            return Ok(());
        }
        self.journal_syncs.set(self.journal_syncs.get() + 1);
        let give_back = GiveBack::new(self, taken, false, false);
        let synced = self.fdatasync_all(&give_back.taken).await;
        give_back.done();
        synced
    }

    /// fdatasyncs every dirty data file (and the directory when files came or went), and the
    /// dirty journals when a waiter asked for them (`commit_now`).
    pub(crate) async fn sync_dirty(&self) -> Result<(), SpoolError> {
        if self.mode == FileMode::Buffered {
            // The stores this round covers left their records in the batch: one write for all.
            self.flush_data().await;
        }
        let journals = self.journals_wanted.replace(false);
        if journals {
            self.journal_syncs.set(self.journal_syncs.get() + 1);
            // Buffered journal records ride along with this commit.
            if let Err(e) = self.flush_journals().await {
                tracing::error!(error = %e, "spool journal write failed");
            }
        }
        let taken = self.take_unsynced(true, journals);
        let dir_dirty = std::mem::take(&mut self.state.borrow_mut().dir_dirty);
        // Until the syncs below end, the marks are held here: if this future is dropped midway
        // (its leader's task cancelled), they go back for the next sync to cover, which the
        // writers of this one then wait for.
        let give_back = GiveBack::new(self, taken, dir_dirty, journals);
        let mut synced = self.fdatasync_all(&give_back.taken).await;
        if synced.is_ok() && dir_dirty {
            if let Err(e) = self.dir_handle.sync().await {
                self.fatal.set(Some("directory sync failed"));
                synced = Err(SpoolError::io("fsync_dir", &self.dir, e));
            }
        }
        give_back.done();
        synced
    }

    /// Takes the unsynced marks a sync covers, data files and/or journals, each with its file;
    /// a segment stays listed in `State::dirty` while the other file is left unsynced.
    fn take_unsynced(&self, data: bool, journals: bool) -> Vec<Taken> {
        let mut st = self.state.borrow_mut();
        let dirty = std::mem::take(&mut st.dirty);
        let mut taken = Vec::with_capacity(dirty.len() * 2);
        let mut still_dirty = Vec::new();
        for seq in dirty {
            if let Some(seg) = st.segments.get_mut(&seq) {
                // Only the files written since the last sync: while only messages arrive, the
                // journals stay clean and cost no fdatasync.
                if data && std::mem::take(&mut seg.data_unsynced) {
                    taken.push((seq, File::Data, seg.data.clone()));
                }
                if journals && std::mem::take(&mut seg.journal_unsynced) {
                    taken.push((seq, File::Journal, seg.journal.clone()));
                }
                seg.dirty = seg.data_unsynced || seg.journal_unsynced;
                if seg.dirty {
                    still_dirty.push(seq);
                }
            }
        }
        st.dirty = still_dirty;
        taken
    }

    /// fdatasyncs the files all at once: io_uring hands each to an io-wq worker. The first
    /// failure makes the spool unhealthy.
    async fn fdatasync_all(&self, taken: &[Taken]) -> Result<(), SpoolError> {
        let syncs: Vec<_> = taken
            .iter()
            .map(|(_, _, f)| {
                let f = f.clone();
                glommio::spawn_local(async move { f.fdatasync().await })
            })
            .collect();
        for sync in syncs {
            if let Err(e) = sync.await {
                self.fatal.set(Some("fdatasync failed"));
                tracing::error!(error = %e, "spool fdatasync failed; refusing new messages");
                return Err(e);
            }
        }
        Ok(())
    }
}

/// An unsynced mark a sync took: the segment, which of its files, and that file.
type Taken = (u64, File, Rc<SegFile>);

/// The unsynced marks a sync took, given back if it is dropped before its fdatasyncs end: the
/// files are marked again, and the next sync (which the dropped one's writers then wait for)
/// covers them. Without this, that next sync would find nothing to do and release writers whose
/// records were never synced.
struct GiveBack<'a> {
    inner: &'a Inner,
    taken: Vec<Taken>,
    dir_dirty: bool,
    journals_wanted: bool,
    done: bool,
}

impl<'a> GiveBack<'a> {
    fn new(
        inner: &'a Inner,
        taken: Vec<Taken>,
        dir_dirty: bool,
        journals_wanted: bool,
    ) -> GiveBack<'a> {
        GiveBack {
            inner,
            taken,
            dir_dirty,
            journals_wanted,
            done: false,
        }
    }

    /// The syncs ended (well or not: a failure fails the spool, `fdatasync_all`).
    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for GiveBack<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.journals_wanted {
            self.inner.journals_wanted.set(true);
        }
        match self.inner.state.try_borrow_mut() {
            Ok(mut st) => {
                for &(seq, file, _) in &self.taken {
                    st.mark_dirty(seq, file);
                }
                st.dir_dirty |= self.dir_dirty;
            }
            // Dropped while the state is borrowed (never seen: a cancelled task's borrows end
            // before its future is dropped). Nothing written can be promised durable then.
            Err(_) => {
                self.inner.fatal.set(Some("a sync was abandoned"));
                self.inner.commit.fail();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use petrel_testkit::glommio::run;

    use crate::state::File;
    use crate::{Spool, SpoolConfig};

    /// A sync whose future is dropped while its fdatasyncs run gives its files back, so the
    /// next sync covers them (and the writers it carried, who wait for that one).
    #[test]
    fn a_sync_dropped_midway_leaves_its_files_to_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        run(move || async move {
            let (spool, _) = Spool::open(SpoolConfig::new(&root, 0)).await.expect("open");
            let inner = spool.inner.clone();
            let seq = inner.state.borrow().active;
            // What writes leave: both files of the active segment and the directory
            // unsynced, and a waiter that wants the journals.
            {
                let mut st = inner.state.borrow_mut();
                st.mark_dirty(seq, File::Data);
                st.mark_dirty(seq, File::Journal);
                st.dir_dirty = true;
            }
            inner.journals_wanted.set(true);
            let unsynced = |inner: &crate::segments::Inner| {
                let st = inner.state.borrow();
                let seg = &st.segments[&seq];
                (
                    seg.data_unsynced,
                    seg.journal_unsynced,
                    st.dirty.contains(&seq),
                    st.dir_dirty,
                    inner.journals_wanted.get(),
                )
            };
            {
                let mut sync = pin!(inner.sync_dirty());
                // One poll takes the marks and leaves the sync waiting for its fdatasyncs.
                let polled = futures_lite::future::poll_once(&mut sync).await;
                assert!(polled.is_none(), "the fdatasyncs are in flight");
                assert_eq!(unsynced(&inner), (false, false, false, false, false));
            }
            // Dropped midway: every mark is back.
            assert_eq!(unsynced(&inner), (true, true, true, true, true));
            // A sync that ends takes them for good.
            inner.sync_dirty().await.expect("sync");
            assert_eq!(unsynced(&inner), (false, false, false, false, false));
            assert_eq!(spool.unhealthy_reason(), None);
            drop(inner);
            spool.close().await.expect("close");
        });
    }
}
