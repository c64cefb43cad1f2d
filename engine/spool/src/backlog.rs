//! Opening a spool without waiting for its backlog (issue 17: a shard answers SMTP within
//! 2 s of a restart on a million queued messages, whatever the spool holds).
//!
//! A new message needs only two things from the disk: the next message sequence and a fresh
//! active segment. Every segment header records the sequence that was next when the segment
//! was made, and a message is stored in the segment that was active when its id was taken (a
//! store takes its id, or finds its reserved one, only once it holds the active segment), so
//! every message of an older segment has a sequence below a newer segment's header. The early
//! open ([`open_early`]) therefore reads only the newest segments, down to the newest with a
//! whole header, and only their frames and ids ([`recovery::peek`]): the next sequence is
//! above their ids and that header's. It then makes the fresh segment, whose header carries
//! that sequence, and syncs it; the shard listens from there.
//!
//! Every segment of the earlier run is then read by [`Backlog::run`], oldest first, on the
//! shard's executor, yielding every [`BACKLOG_YIELD_RECORDS`] records so sessions keep their
//! latency. Until a segment is read it is in `State::unscanned` only: none of its messages is
//! in the index, so nothing updates, removes, appends to or reclaims it; once read, its
//! messages enter the index together, before the first is handed over, so the segment's live
//! count can only reach zero once every one of them has been delivered. A crash meanwhile
//! loses nothing: the files are as they were, and the next start reads them again (with the
//! fresh segment as the newest). The spool's figures count the unread segments at their file
//! sizes and an estimate of their messages, so admission sees the whole spool from the start.

use std::collections::VecDeque;
use std::path::Path;
use std::rc::{Rc, Weak};

use petrel_seal::Keyring;

use crate::error::SpoolError;
use crate::file::{FileMode, SegFile};
use crate::record;
use crate::recovery::{self, data_path, journal_path, SegmentState};
use crate::segments::Inner;
use crate::state::{IndexEntry, Segment, State, Unscanned};
use crate::types::{Recovery, SpooledMessage};

/// Records decoded, or messages handed over, between two chances for the shard's other tasks
/// to run (`glommio::yield_if_needed`): a few microseconds each, so well under a millisecond.
pub const BACKLOG_YIELD_RECORDS: usize = 64;
/// Mean store record length assumed for the unread segments' message estimate when the newest
/// segments hold no store record to measure it on (a 1 KiB message with its envelope).
pub const BACKLOG_RECORD_BYTES_ASSUMED: u64 = 1536;

/// The segments of an earlier run that [`crate::Spool::open_early`] left unread, and the
/// counts of what reading them finds. Run it once ([`Backlog::run`]); dropping it, or
/// cancelling its run, leaves the rest for the next start.
#[derive(Debug)]
pub struct Backlog {
    inner: Weak<Inner>,
    /// Unread segments, oldest first.
    pending: VecDeque<u64>,
}

impl Backlog {
    /// Segments not read yet.
    pub fn segments(&self) -> usize {
        self.pending.len()
    }

    /// Reads every pending segment into the spool, handing each live message to `on_message`
    /// (a segment at a time, oldest first, ids in order within one) once the spool knows it.
    /// Returns what recovery found. On an error the spool takes no new message until a
    /// restart (`Inner::recovery_failed`); what was handed over stays in the spool.
    pub async fn run(
        mut self,
        on_message: &mut dyn FnMut(SpooledMessage),
    ) -> Result<Recovery, SpoolError> {
        let mut out = Recovery::default();
        while let Some(seq) = self.pending.pop_front() {
            let inner = self
                .inner
                .upgrade()
                .ok_or(SpoolError::Unhealthy("spool closed"))?;
            if let Err(e) = read_segment(&inner, seq, &mut out, on_message).await {
                inner.recovery_failed.set(true);
                return Err(e);
            }
        }
        if let Some(inner) = self.inner.upgrade() {
            // Deleted empty segments and cut journals, durable now (through the group commit:
            // stores are being acknowledged meanwhile). A failure is the spool's to heal
            // (`health.rs`); undone deletions and cuts are done again at the next start.
            if let Err(e) = inner.commit_now().await {
                tracing::warn!(error = %e, "spool sync after reading the backlog failed");
            }
        }
        Ok(out)
    }
}

/// Deletes orphan journals, learns the next message sequence from the newest segments and
/// lists the rest in `state.unscanned`; returns the backlog to read (see the module doc).
pub(crate) fn open_early(
    dir: &Path,
    keys: Option<&Keyring>,
    state: &mut State,
) -> Result<VecDeque<u64>, SpoolError> {
    let listing = recovery::list_segments(dir)?;
    for seq in &listing.orphan_journals {
        let path = journal_path(dir, *seq);
        tracing::info!(path = %path.display(), "spool recovery deleting an orphan journal");
        std::fs::remove_file(&path).map_err(|e| SpoolError::io("remove", &path, e))?;
        state.dir_dirty = true;
    }
    let highest = listing.data.iter().chain(&listing.orphan_journals).max();
    state.next_segment_seq = highest.map_or(0, |s| s + 1);
    let (mut records, mut bytes) = (0u64, 0u64);
    for &seq in listing.data.iter().rev() {
        let path = data_path(dir, seq);
        // Whole with std::fs: the shard serves nothing yet, and this is one segment or two.
        let data = std::fs::read(&path).map_err(|e| SpoolError::io("read", &path, e))?;
        let p = recovery::peek(&data);
        if p.sealed && keys.is_none() {
            return Err(SpoolError::NoKeyring);
        }
        if let Some(max) = p.max_id_seq {
            state.next_id_seq = state.next_id_seq.max(max + 1);
        }
        records += p.store_records;
        bytes += p.store_bytes;
        if let Some(h) = p.header {
            state.next_id_seq = state.next_id_seq.max(h.next_id_seq);
            break;
        }
    }
    let mean = match records {
        0 => BACKLOG_RECORD_BYTES_ASSUMED,
        n => (bytes / n).max(1),
    };
    for &seq in &listing.data {
        let path = data_path(dir, seq);
        let len = std::fs::metadata(&path)
            .map_err(|e| SpoolError::io("stat", &path, e))?
            .len();
        let u = Unscanned {
            bytes: len,
            messages_estimate: len.div_ceil(mean),
        };
        state.unscanned.insert(seq, u);
    }
    Ok(listing.data.into_iter().collect())
}

/// The backlog of a spool just opened early.
pub(crate) fn backlog(inner: &Rc<Inner>, pending: VecDeque<u64>) -> Backlog {
    Backlog {
        inner: Rc::downgrade(inner),
        pending,
    }
}

/// Reads one segment of the backlog (see the module doc).
async fn read_segment(
    inner: &Rc<Inner>,
    seq: u64,
    out: &mut Recovery,
    on_message: &mut dyn FnMut(SpooledMessage),
) -> Result<(), SpoolError> {
    let dpath = data_path(&inner.dir, seq);
    let jpath = journal_path(&inner.dir, seq);
    let data = SegFile::open(&dpath, FileMode::Buffered).await?;
    let journal = match SegFile::open(&jpath, FileMode::Buffered).await {
        Ok(j) => j,
        Err(_) if !jpath.exists() => SegFile::create(&jpath, FileMode::Buffered).await?,
        Err(e) => return Err(e),
    };
    // Through io_uring, not std::fs: the shard serves sessions meanwhile, and a read from a
    // cold disk must not stall them.
    let data_bytes = read_whole(&data, &dpath).await?;
    let journal_bytes = read_whole(&journal, &jpath).await?;
    let seg = rebuild(
        &data_bytes,
        &journal_bytes,
        &dpath,
        inner.cfg.keys.as_deref(),
    )
    .await;
    let data_len = data_bytes.len() as u64;
    drop(data_bytes);
    if seg.needs_keyring {
        return Err(SpoolError::NoKeyring);
    }
    out.messages_shredded += seg.shredded;
    out.records_skipped += seg.records_skipped;
    out.bytes_skipped += seg.bytes_skipped;
    note_ids(inner, seq, &seg, &dpath);
    if seg.live.is_empty() {
        // The fresh segment's header carries the next sequence: every empty one can go (its
        // space a step at a time, as a reclaimed segment's: the shard is serving meanwhile).
        data.remove().await?;
        journal.remove().await?;
        journal.close().await;
        crate::release::release_gradually(inner, Rc::new(data));
        let mut st = inner.state.borrow_mut();
        st.unscanned.remove(&seq);
        st.dir_dirty = true;
        return Ok(());
    }
    let journal_size = journal_bytes.len() as u64;
    if journal_size > seg.journal_valid_end {
        // Never append after a torn tail: cut it (its bytes are already counted as skipped).
        journal.truncate(seg.journal_valid_end).await?;
    }
    admit(
        inner,
        seq,
        data,
        journal,
        data_len,
        journal_size,
        &seg,
        &dpath,
    )?;
    for (i, m) in recovery::spooled(seg).enumerate() {
        out.messages_recovered += 1;
        on_message(m);
        if i % BACKLOG_YIELD_RECORDS == BACKLOG_YIELD_RECORDS - 1 {
            glommio::yield_if_needed().await;
        }
    }
    Ok(())
}

/// A file of the backlog, whole.
async fn read_whole(file: &SegFile, path: &Path) -> Result<Vec<u8>, SpoolError> {
    let len = std::fs::metadata(path)
        .map_err(|e| SpoolError::io("stat", path, e))?
        .len();
    let len = usize::try_from(len).map_err(|_| SpoolError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason: "file larger than memory can address",
    })?;
    file.read_exact_at(0, len).await
}

/// [`recovery::rebuild`] in steps, yielding between them.
async fn rebuild(data: &[u8], journal: &[u8], name: &Path, keys: Option<&Keyring>) -> SegmentState {
    let mut st = SegmentState::default();
    let scan = record::scan(data);
    recovery::note_skipped(&mut st, &scan.skipped, name, "data");
    for (i, rec) in scan.records.iter().enumerate() {
        st.data_record(rec, name, keys);
        if i % BACKLOG_YIELD_RECORDS == BACKLOG_YIELD_RECORDS - 1 {
            glommio::yield_if_needed().await;
        }
    }
    let jscan = record::scan(journal);
    st.journal_scanned(&jscan, name);
    for (i, rec) in jscan.records.iter().enumerate() {
        st.journal_record(rec, name, keys);
        if i % BACKLOG_YIELD_RECORDS == BACKLOG_YIELD_RECORDS - 1 {
            glommio::yield_if_needed().await;
        }
    }
    st
}

/// Checks the segment's ids against the sequence the early open chose (see the module doc).
fn note_ids(inner: &Inner, seq: u64, seg: &SegmentState, path: &Path) {
    let Some(max) = seg.max_id_seq else { return };
    let mut st = inner.state.borrow_mut();
    if max >= st.next_id_seq {
        // Cannot happen while every segment was written by a spool that takes ids as the module
        // doc says; if it does, this run hands out no id of it again.
        tracing::error!(segment = %path.display(), seq, max, next = st.next_id_seq, "spool backlog holds an id above the next sequence; moving the sequence past it");
        st.next_id_seq = max + 1;
    }
    if let Some(h) = seg.header {
        if h.shard != inner.cfg.shard {
            tracing::warn!(segment = %path.display(), header_shard = h.shard, shard = inner.cfg.shard, "segment header names another shard");
        }
    }
}

/// Puts a read segment and its live messages in the spool's state, in one step.
#[allow(clippy::too_many_arguments)]
fn admit(
    inner: &Inner,
    seq: u64,
    data: SegFile,
    journal: SegFile,
    data_len: u64,
    journal_size: u64,
    seg: &SegmentState,
    path: &Path,
) -> Result<(), SpoolError> {
    let mut entries = Vec::with_capacity(seg.live.len());
    let mut live_bytes = 0;
    for (&id, found) in &seg.live {
        let Ok(offset) = u32::try_from(found.offset) else {
            // Beyond SEGMENT_SIZE_MAX_LIMIT_BYTES: no spool of this version wrote it.
            return Err(SpoolError::Corrupt {
                path: path.to_path_buf(),
                offset: found.offset,
                reason: "record offset beyond the segment size limit",
            });
        };
        entries.push((
            id,
            IndexEntry {
                segment: seq,
                offset,
                record_len: found.record_len as u32,
                recipients: found.envelope.recipients.len() as u32,
                key: found.key,
            },
        ));
        live_bytes += found.record_len;
    }
    let mut segment = Segment::new(data, journal, data_len, seg.journal_valid_end, true);
    segment.live = seg.live.len() as u64;
    let mut st = inner.state.borrow_mut();
    for (id, entry) in entries {
        st.index.insert(id, entry);
    }
    st.live_bytes += live_bytes;
    st.segments.insert(seq, segment);
    st.unscanned.remove(&seq);
    if journal_size > seg.journal_valid_end {
        // Make the cut durable with the next commit.
        st.mark_dirty(seq, crate::state::File::Journal);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{encode_record, store_prefix, Kind, SegmentHeader, RECORD_ALIGN_BYTES};
    use crate::types::MessageId;

    fn segment(seq: u64, next_id_seq: Option<u64>, ids: &[u64]) -> Vec<u8> {
        let mut buf = Vec::new();
        match next_id_seq {
            Some(n) => {
                let h = SegmentHeader {
                    shard: 0,
                    segment_seq: seq,
                    next_id_seq: n,
                };
                encode_record(
                    &mut buf,
                    Kind::SegmentHeader,
                    &[&h.to_bytes()],
                    RECORD_ALIGN_BYTES,
                );
            }
            // What a crash before the header reached the disk leaves: zeros.
            None => buf.extend_from_slice(&[0u8; 48]),
        }
        for &id in ids {
            let prefix = store_prefix(MessageId::new(0, id).0, 0, 0);
            encode_record(
                &mut buf,
                Kind::Store,
                &[&prefix[..], &b"body"[..]],
                RECORD_ALIGN_BYTES,
            );
        }
        buf
    }

    #[test]
    fn peek_finds_the_header_and_the_highest_id_without_decoding() {
        let p = recovery::peek(&segment(3, Some(10), &[4, 12, 11]));
        assert_eq!(p.header.map(|h| h.next_id_seq), Some(10));
        assert_eq!(p.max_id_seq, Some(12));
        assert_eq!(p.store_records, 3);
        assert!(!p.sealed);
        let torn = recovery::peek(&segment(4, None, &[13]));
        assert_eq!((torn.header, torn.max_id_seq), (None, Some(13)));
    }

    #[test]
    fn the_next_sequence_comes_from_the_newest_segments_down_to_a_whole_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |seq: u64, bytes: Vec<u8>| {
            std::fs::write(data_path(dir.path(), seq), bytes).expect("write");
        };
        // An older segment's ids are below any newer header: it is not read early.
        write(1, segment(1, Some(0), &[0, 1, 2]));
        write(2, segment(2, Some(3), &[3, 4, 20]));
        // The newest lost its header in a crash: the one below it is read too.
        write(5, segment(5, None, &[7, 9]));
        std::fs::write(journal_path(dir.path(), 7), b"").expect("orphan journal");
        let mut st = State::new(0);
        let pending = open_early(dir.path(), None, &mut st).expect("open early");
        assert_eq!(pending, VecDeque::from(vec![1, 2, 5]));
        assert_eq!(st.next_id_seq, 21);
        assert_eq!(st.next_segment_seq, 8, "above the orphan journal's too");
        assert!(!journal_path(dir.path(), 7).exists());
        assert_eq!(st.unscanned.len(), 3);
        let (messages, bytes) = st.unscanned_totals();
        assert!(messages >= 8, "{messages}");
        assert!(bytes > 0);
    }
}
