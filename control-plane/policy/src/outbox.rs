//! The engine's durable event backlog: batches of [`crate::Event`]s kept on disk until the
//! control plane acknowledges them (the link's `Events`/`EventsAck` frames, [`crate::wire`]).
//!
//! **Shape.** `<data>/events-backlog/batches-<first seq, 20 digits>.log` segment files, each a
//! run of records `len u32 BE | crc32c u32 BE | batch_seq u64 BE | events u32 BE | JSON array`
//! (the crc covers seq, count and JSON). One writer (the engine's events thread) [`Outbox::append`]s batches and then
//! [`Outbox::sync`]s: one `fdatasync` covers every batch appended since the last one, and only
//! synced batches become visible to the sender (the link, [`Outbox::unsent_after`]). So a batch
//! the control plane acknowledged is always on our disk, and `batch_seq` never goes back after
//! a crash: after a restart the next seq is above every seq on disk, and the newest segment is
//! never deleted (its name and records carry the high-water mark). A fresh backlog (no segment
//! at all: a new engine, or a wiped data directory) starts at `now_ms * 1000`, above anything
//! an engine of the same id sent before, because the control plane ignores seqs at or below
//! the last one it acknowledged.
//!
//! **Acks** ([`Outbox::ack`]) are cumulative; a segment whose every batch is acknowledged is
//! deleted (the current one is first rolled over when it is wholly acknowledged). After a
//! crash every batch still on disk is sent again: the control plane acknowledges the ones it
//! already has without storing them twice (by seq, and by event id).
//!
//! **Bound.** [`Outbox::is_full`] once the unacknowledged batches hold `bytes_max` (`events.backlog_bytes_max`,
//! 1 GiB by default): the engine then refuses new mail (`452 4.3.1`) rather than lose events.
//! Appends still succeed past it (the outcomes of mail already accepted must be kept), so the
//! overshoot is bounded by what the spool already holds.
//!
//! **Sealed at rest** (issue 16). Opened with a keyring ([`Outbox::open_sealed`]), each batch's
//! JSON is stored sealed under the operator's data key (`PSL1` then a `petrel_seal` frame, the
//! batch seq as associated data): the events name recipients and senders. Bodies in memory and
//! what the link sends are the JSON itself; a record written in the clear (before sealing)
//! still reads.
//!
//! **Recovery** reads every record; a torn or corrupt tail of the newest segment (a crash
//! mid-append) is cut off and counted, never sent. Nothing acknowledged by the 250 depends on
//! it: a batch is only ever acknowledged to the engine's own callers after `sync`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A segment is closed and a new one started once it holds this many bytes.
pub const OUTBOX_SEGMENT_BYTES: u64 = 8 << 20;
/// A wholly acknowledged current segment is rolled over (and deleted) once it holds this many
/// bytes; smaller ones stay until they grow, so a trickle of acks does not create a file each.
pub const OUTBOX_ROLL_ACKED_BYTES_MIN: u64 = 1 << 20;
/// Bodies of recent batches kept in memory for the sender, at most (older ones are read back).
pub const OUTBOX_CACHE_BYTES_MAX: usize = 64 << 20;
/// `len u32 | crc32c u32 | batch_seq u64 | events u32`.
pub const OUTBOX_RECORD_HEADER_BYTES: usize = 20;
/// Largest JSON body of one record (a wire batch is at most this).
pub const OUTBOX_RECORD_BODY_MAX_BYTES: usize = crate::event::EVENTS_BATCH_MAX_BYTES;
/// The default of `events.backlog_bytes_max`.
pub const OUTBOX_BYTES_MAX_DEFAULT: u64 = 1 << 30;
/// Where refused batches are set aside (sealed as stored), under the backlog directory.
pub const OUTBOX_REFUSED_DIR: &str = "refused";
/// First bytes of a sealed body.
const SEALED_BODY_PREFIX: &[u8; 4] = b"PSL1";
/// Largest stored body: the largest JSON, sealed.
pub const OUTBOX_STORED_BODY_MAX_BYTES: usize =
    OUTBOX_RECORD_BODY_MAX_BYTES + SEALED_BODY_PREFIX.len() + petrel_seal::SEALED_OVERHEAD_BYTES;

/// What went wrong with the backlog.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    #[error("event backlog {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("event batch of {len} bytes exceeds {max}")]
    TooLarge { len: usize, max: usize },
    /// A sealed batch without the keyring, or one that does not open (issue 16).
    #[error("event backlog batch {seq}: {reason}")]
    Sealed { seq: u64, reason: String },
}

/// One stored batch.
#[derive(Debug, Clone)]
struct Batch {
    seq: u64,
    /// The segment holding it (by its first seq).
    segment: u64,
    /// Offset of the JSON body in the segment.
    offset: u64,
    len: u32,
    /// Events in the JSON array.
    events: u32,
    /// Kept while the cache has room; read back from disk otherwise.
    body: Option<Arc<[u8]>>,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    bytes: u64,
    /// Highest seq in it; `None` while empty.
    last_seq: Option<u64>,
}

#[derive(Debug)]
struct State {
    /// Oldest first; the last is the current one (appended to).
    segments: VecDeque<Segment>,
    current: File,
    /// Appended, not yet synced: invisible to the sender.
    pending: VecDeque<Batch>,
    /// Synced and not acknowledged, in seq order.
    unacked: VecDeque<Batch>,
    cache_bytes: usize,
    next_seq: u64,
}

/// The durable event backlog (see the module docs). Shared by the events thread and the link.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    bytes_max: u64,
    state: Mutex<State>,
    /// Bytes of the records not acknowledged yet (what the bound counts; wholly acknowledged
    /// segments are deleted, the current one once it holds `OUTBOX_ROLL_ACKED_BYTES_MIN`).
    bytes: AtomicU64,
    full: AtomicBool,
    /// Woken after each sync that made batches visible.
    published: tokio::sync::Notify,
    /// Torn or corrupt records cut off at open.
    pub recovered_torn: u64,
    /// Seals the bodies on disk; `None` stores them in the clear.
    keys: Option<Arc<petrel_seal::Keyring>>,
}

fn body_aad(seq: u64) -> [u8; 21] {
    let mut a = [0u8; 21];
    a[..13].copy_from_slice(b"petrel-outbox");
    a[13..].copy_from_slice(&seq.to_be_bytes());
    a
}

/// A stored body's JSON: opened when sealed, as it is otherwise.
fn open_body(
    keys: Option<&petrel_seal::Keyring>,
    seq: u64,
    stored: &[u8],
) -> Result<Arc<[u8]>, OutboxError> {
    let Some(frame) = stored.strip_prefix(SEALED_BODY_PREFIX.as_slice()) else {
        return Ok(Arc::from(stored));
    };
    let bad = |reason: String| OutboxError::Sealed { seq, reason };
    let keys =
        keys.ok_or_else(|| bad("sealed, and the backlog was opened without the keyring".into()))?;
    let id = petrel_seal::frame_key_id(frame).map_err(|e| bad(e.to_string()))?;
    let key = keys
        .get(id)
        .ok_or_else(|| bad(format!("data key {id} is not in the keyring")))?;
    key.open(&body_aad(seq), frame)
        .map(Arc::from)
        .map_err(|e| bad(e.to_string()))
}

/// What a sender gets: a batch's seq, its JSON array and how many events it holds.
#[derive(Debug, Clone)]
pub struct OutboxBatch {
    pub seq: u64,
    pub json: Arc<[u8]>,
    pub events: u32,
}

impl Outbox {
    /// Opens (or creates) the backlog in `dir`, reading back every batch still on disk; bodies
    /// stored in the clear.
    pub fn open(dir: &Path, bytes_max: u64, now_ms: u64) -> Result<Outbox, OutboxError> {
        Self::open_sealed(dir, bytes_max, now_ms, None)
    }

    /// [`Outbox::open`], sealing new bodies with `keys` (and opening sealed ones).
    pub fn open_sealed(
        dir: &Path,
        bytes_max: u64,
        now_ms: u64,
        keys: Option<Arc<petrel_seal::Keyring>>,
    ) -> Result<Outbox, OutboxError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OutboxError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| segment_number(&e.file_name().to_string_lossy()))
            .collect();
        firsts.sort_unstable();
        let mut segments = VecDeque::new();
        let mut unacked = VecDeque::new();
        let mut torn = 0u64;
        let mut cache_bytes = 0usize;
        let last_index = firsts.len().saturating_sub(1);
        for (i, first) in firsts.iter().copied().enumerate() {
            let path = segment_path(dir, first);
            let mut data = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(io(&path))?;
            let (batches, good_len) = scan(&data, first);
            if good_len < data.len() {
                torn += 1;
                tracing::warn!(path = %path.display(), kept = good_len, size = data.len(),
                    "event backlog: torn or corrupt records cut off");
                if i == last_index {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io(&path))?;
                    f.set_len(good_len as u64).map_err(io(&path))?;
                    f.sync_data().map_err(io(&path))?;
                }
            }
            let last_seq = batches.last().map(|b: &Batch| b.seq);
            for mut b in batches {
                if cache_bytes + b.len as usize <= OUTBOX_CACHE_BYTES_MAX {
                    let start = b.offset as usize;
                    if let Some(stored) = data.get(start..start + b.len as usize) {
                        b.body = Some(open_body(keys.as_deref(), b.seq, stored)?);
                        cache_bytes += b.len as usize;
                    }
                }
                unacked.push_back(b);
            }
            segments.push_back(Segment {
                first_seq: first,
                bytes: good_len as u64,
                last_seq,
            });
        }
        let next_seq = match segments.back() {
            Some(s) => s.last_seq.map_or(s.first_seq, |l| l + 1).max(s.first_seq),
            None => now_ms.saturating_mul(1000).max(1),
        };
        if segments.is_empty() {
            segments.push_back(Segment {
                first_seq: next_seq,
                bytes: 0,
                last_seq: None,
            });
        }
        let current_first = segments.back().map_or(next_seq, |s| s.first_seq);
        let current = open_append(dir, current_first)?;
        sync_dir(dir)?;
        let bytes = unacked.iter().map(record_bytes).sum();
        let outbox = Outbox {
            dir: dir.to_path_buf(),
            bytes_max,
            state: Mutex::new(State {
                segments,
                current,
                pending: VecDeque::new(),
                unacked,
                cache_bytes,
                next_seq,
            }),
            bytes: AtomicU64::new(bytes),
            full: AtomicBool::new(false),
            published: tokio::sync::Notify::new(),
            recovered_torn: torn,
            keys,
        };
        outbox.update_full();
        Ok(outbox)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one batch (a JSON array of events); visible to the sender after the next
    /// [`Outbox::sync`]. Returns its seq.
    pub fn append(&self, json: &[u8], events: u32) -> Result<u64, OutboxError> {
        if json.len() > OUTBOX_RECORD_BODY_MAX_BYTES {
            return Err(OutboxError::TooLarge {
                len: json.len(),
                max: OUTBOX_RECORD_BODY_MAX_BYTES,
            });
        }
        let mut st = self.lock();
        let roll = st
            .segments
            .back()
            .is_some_and(|s| s.bytes >= OUTBOX_SEGMENT_BYTES);
        if roll {
            self.roll(&mut st)?;
        }
        let seq = st.next_seq;
        let sealed = match &self.keys {
            Some(keys) => Some(self.seal_body(keys, seq, json)?),
            None => None,
        };
        let stored: &[u8] = sealed.as_deref().unwrap_or(json);
        let len = u32::try_from(stored.len()).unwrap_or(u32::MAX);
        let mut rec = Vec::with_capacity(OUTBOX_RECORD_HEADER_BYTES + stored.len());
        rec.extend_from_slice(&len.to_be_bytes());
        let mut tail = [0u8; 12];
        tail[..8].copy_from_slice(&seq.to_be_bytes());
        tail[8..].copy_from_slice(&events.to_be_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&tail), stored);
        rec.extend_from_slice(&crc.to_be_bytes());
        rec.extend_from_slice(&tail);
        rec.extend_from_slice(stored);
        let (first, offset) = match st.segments.back() {
            Some(s) => (s.first_seq, s.bytes),
            None => (seq, 0),
        };
        let path = segment_path(&self.dir, first);
        if let Err(source) = st.current.write_all(&rec) {
            // Cut a partial record off, so that the records appended after a retry are read.
            let _ = st.current.set_len(offset);
            return Err(OutboxError::Io { path, source });
        }
        if let Some(s) = st.segments.back_mut() {
            s.bytes += rec.len() as u64;
            s.last_seq = Some(seq);
        }
        st.next_seq = seq + 1;
        // Counted by the stored length, as `ack` and `set_aside` uncount them.
        let cache = st.cache_bytes + len as usize <= OUTBOX_CACHE_BYTES_MAX;
        if cache {
            st.cache_bytes += len as usize;
        }
        st.pending.push_back(Batch {
            seq,
            segment: first,
            offset: offset + OUTBOX_RECORD_HEADER_BYTES as u64,
            len,
            events,
            body: cache.then(|| Arc::<[u8]>::from(json)),
        });
        drop(st);
        self.bytes.fetch_add(rec.len() as u64, Ordering::AcqRel);
        self.update_full();
        Ok(seq)
    }

    /// Makes every appended batch durable (one `fdatasync`) and visible to the sender.
    pub fn sync(&self) -> Result<(), OutboxError> {
        let (file, n, path) = {
            let st = self.lock();
            if st.pending.is_empty() {
                return Ok(());
            }
            let first = st.segments.back().map_or(0, |s| s.first_seq);
            let path = segment_path(&self.dir, first);
            let file = st.current.try_clone().map_err(|source| OutboxError::Io {
                path: path.clone(),
                source,
            })?;
            (file, st.pending.len(), path)
        };
        file.sync_data()
            .map_err(|source| OutboxError::Io { path, source })?;
        let mut st = self.lock();
        for _ in 0..n {
            if let Some(b) = st.pending.pop_front() {
                st.unacked.push_back(b);
            }
        }
        drop(st);
        self.published.notify_one();
        Ok(())
    }

    /// Closes the current segment (synced) and starts the next, named by the next seq.
    fn roll(&self, st: &mut State) -> Result<(), OutboxError> {
        let old = st.segments.back().map_or(0, |s| s.first_seq);
        st.current.sync_data().map_err(|source| OutboxError::Io {
            path: segment_path(&self.dir, old),
            source,
        })?;
        let first = st.next_seq;
        st.current = open_append(&self.dir, first)?;
        st.segments.push_back(Segment {
            first_seq: first,
            bytes: 0,
            last_seq: None,
        });
        sync_dir(&self.dir)
    }

    /// Up to `max` synced batches with a seq above `after`, in order, for the sender.
    pub fn unsent_after(&self, after: u64, max: usize) -> Result<Vec<OutboxBatch>, OutboxError> {
        let wanted: Vec<Batch> = {
            let st = self.lock();
            // Seqs are in order: find the first one above `after` without walking the backlog.
            let start = st.unacked.partition_point(|b| b.seq <= after);
            st.unacked.range(start..).take(max).cloned().collect()
        };
        let mut out = Vec::with_capacity(wanted.len());
        for b in wanted {
            let body = match b.body {
                Some(body) => body,
                None => self.read_body(&b)?,
            };
            out.push(OutboxBatch {
                seq: b.seq,
                json: body,
                events: b.events,
            });
        }
        Ok(out)
    }

    fn read_body(&self, b: &Batch) -> Result<Arc<[u8]>, OutboxError> {
        let stored = self.read_stored(b)?;
        open_body(self.keys.as_deref(), b.seq, &stored)
    }

    /// A body as it is on disk (sealed or not).
    fn read_stored(&self, b: &Batch) -> Result<Vec<u8>, OutboxError> {
        let path = segment_path(&self.dir, b.segment);
        let mut buf = vec![0u8; b.len as usize];
        File::open(&path)
            .and_then(|f| f.read_exact_at(&mut buf, b.offset))
            .map_err(|source| OutboxError::Io { path, source })?;
        Ok(buf)
    }

    /// Seals one body under the operator's data key.
    fn seal_body(
        &self,
        keys: &petrel_seal::Keyring,
        seq: u64,
        json: &[u8],
    ) -> Result<Vec<u8>, OutboxError> {
        let bad = |e: petrel_seal::SealError| OutboxError::Sealed {
            seq,
            reason: e.to_string(),
        };
        let key = keys.current_or_create(None).map_err(bad)?;
        let mut out = Vec::with_capacity(json.len() + 64);
        out.extend_from_slice(SEALED_BODY_PREFIX);
        key.seal_append(&body_aad(seq), &[json], &mut out);
        Ok(out)
    }

    /// The control plane stored every batch up to `seq`: forget them, delete wholly
    /// acknowledged segments (rolling the current one over first when it is one of them).
    pub fn ack(&self, seq: u64) -> Result<(), OutboxError> {
        let mut st = self.lock();
        let mut acked = 0u64;
        while st.unacked.front().is_some_and(|b| b.seq <= seq) {
            if let Some(b) = st.unacked.pop_front() {
                acked += record_bytes(&b);
                if b.body.is_some() {
                    st.cache_bytes = st.cache_bytes.saturating_sub(b.len as usize);
                }
            }
        }
        let current_done = st.pending.is_empty()
            && st.unacked.is_empty()
            && st.segments.back().is_some_and(|s| {
                s.bytes >= OUTBOX_ROLL_ACKED_BYTES_MIN && s.last_seq.is_some_and(|l| l <= seq)
            });
        if current_done {
            self.roll(&mut st)?;
        }
        while st.segments.len() > 1
            && st
                .segments
                .front()
                .is_some_and(|s| s.last_seq.is_none_or(|l| l <= seq))
        {
            if let Some(s) = st.segments.pop_front() {
                let path = segment_path(&self.dir, s.first_seq);
                std::fs::remove_file(&path).map_err(|source| OutboxError::Io { path, source })?;
            }
        }
        drop(st);
        self.bytes.fetch_sub(acked, Ordering::AcqRel);
        self.update_full();
        Ok(())
    }

    /// The control plane refused the frame holding batches `first..=last` as invalid: keep a
    /// copy of each under `refused/` for the operator and stop offering them (a later cumulative
    /// ack covers their seqs).
    pub fn set_aside(&self, first: u64, last: u64) -> Result<(), OutboxError> {
        let batches: Vec<Batch> = {
            let st = self.lock();
            st.unacked
                .iter()
                .filter(|b| (first..=last).contains(&b.seq))
                .cloned()
                .collect()
        };
        let dir = self.dir.join(OUTBOX_REFUSED_DIR);
        for b in &batches {
            // As stored: sealed when the backlog is.
            let body = self.read_stored(b)?;
            let path = dir.join(format!("batch-{}.json", b.seq));
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&path, &body))
                .map_err(|source| OutboxError::Io { path, source })?;
        }
        let mut st = self.lock();
        let mut freed = 0u64;
        let mut uncached = 0usize;
        st.unacked.retain(|x| {
            let gone = (first..=last).contains(&x.seq);
            if gone {
                freed += record_bytes(x);
                if x.body.is_some() {
                    uncached += x.len as usize;
                }
            }
            !gone
        });
        st.cache_bytes = st.cache_bytes.saturating_sub(uncached);
        drop(st);
        self.bytes.fetch_sub(freed, Ordering::AcqRel);
        self.update_full();
        Ok(())
    }

    /// Waits until a sync published new batches (returns at once if one did since the last
    /// wait).
    pub async fn published(&self) {
        self.published.notified().await;
    }

    /// Bytes of the batches not acknowledged yet.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Batches synced and not yet acknowledged.
    pub fn unacked_batches(&self) -> usize {
        self.lock().unacked.len()
    }

    /// True once the backlog holds `bytes_max`: the engine refuses new mail.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    fn update_full(&self) {
        let full = self.bytes() >= self.bytes_max;
        if self.full.swap(full, Ordering::AcqRel) != full {
            if full {
                tracing::error!(bytes = self.bytes(), max = self.bytes_max,
                    "event backlog full: refusing new mail (452 4.3.1) until the control plane catches up");
            } else {
                tracing::info!(
                    bytes = self.bytes(),
                    "event backlog below its bound again: accepting mail"
                );
            }
        }
    }
}

/// A batch's bytes on disk, header included.
fn record_bytes(b: &Batch) -> u64 {
    OUTBOX_RECORD_HEADER_BYTES as u64 + u64::from(b.len)
}

/// Reads the records of one segment; returns them and the length of the good prefix.
fn scan(data: &[u8], segment: u64) -> (Vec<Batch>, usize) {
    let mut out: Vec<Batch> = Vec::new();
    let mut at = 0usize;
    while let Some(head) = data.get(at..at + OUTBOX_RECORD_HEADER_BYTES) {
        let word = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let len = word(0) as usize;
        let crc = word(4);
        let mut tail = [0u8; 12];
        tail.copy_from_slice(&head[8..20]);
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&tail[..8]);
        let seq = u64::from_be_bytes(seq_bytes);
        let events = word(16);
        let start = at + OUTBOX_RECORD_HEADER_BYTES;
        let Some(body) = (len <= OUTBOX_STORED_BODY_MAX_BYTES)
            .then(|| data.get(start..start + len))
            .flatten()
        else {
            break;
        };
        let ok = crc32c::crc32c_append(crc32c::crc32c(&tail), body) == crc
            && out.last().is_none_or(|b| b.seq < seq);
        if !ok {
            break;
        }
        out.push(Batch {
            seq,
            segment,
            offset: start as u64,
            len: len as u32,
            events,
            body: None,
        });
        at = start + len;
    }
    (out, at)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("batches-{first_seq:020}.log"))
}

fn segment_number(name: &str) -> Option<u64> {
    name.strip_prefix("batches-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

fn open_append(dir: &Path, first_seq: u64) -> Result<File, OutboxError> {
    let path = segment_path(dir, first_seq);
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|source| OutboxError::Io { path, source })
}

/// Makes a created or deleted segment name durable.
fn sync_dir(dir: &Path) -> Result<(), OutboxError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| OutboxError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests;
