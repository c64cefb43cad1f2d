//! Messages sent per source today: the counts a warm-up cap is checked against.
//!
//! [`DailyCounters`] is one atomic word per source, shared by every shard: the day in the high
//! 32 bits, the count in the low 32. A count from an earlier day reads as 0 and the first send
//! of a new day starts it at 1 again, so the roll-over at UTC midnight needs no timer and no
//! lock (one compare-and-swap per message).
//!
//! A warm-up cap must survive a restart, so the counts are saved to `<data>/egress-counts.json`
//! ([`EGRESS_COUNTS_FILE`]) by [`CountsSaver`], a std thread the engine starts: at most every
//! [`EGRESS_COUNTS_SAVE_INTERVAL_MS`] when something changed, and once more when it stops;
//! loaded at start. The file is written atomically (temporary file, fsync, rename, fsync of the
//! directory). A crash loses at most one interval's counts: a source may then go over its cap
//! by what it sent in that interval, on that day only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Day, Egress, EgressError, SourceId};
use crate::periodic::Periodic;

/// The counts file, under the data directory.
pub const EGRESS_COUNTS_FILE: &str = "egress-counts.json";
/// The longest wait between two saves of the counts while they change.
pub const EGRESS_COUNTS_SAVE_INTERVAL_MS: u64 = 10_000;
/// The largest counts file read at start (a source's entry is under 100 bytes).
pub const EGRESS_COUNTS_FILE_BYTES_MAX: u64 = 1 << 20;
/// The format version written in the file.
const FILE_VERSION: u32 = 1;

/// Messages sent per source on a day; what [`Egress::choose`] checks caps against.
pub trait DailyCounts {
    /// Messages `source` sent on `today` (0 for a day it has not sent on).
    fn sent_today(&self, source: SourceId, today: Day) -> u64;
}

/// The engine's counts (see the module docs). `Send + Sync`: one per engine, in [`Egress`].
#[derive(Debug)]
pub struct DailyCounters {
    /// Per source, by [`SourceId`]: day << 32 | count.
    slots: Vec<AtomicU64>,
    /// Bumped by every change; the saver writes when it moved since the last save.
    changes: AtomicU64,
}

fn pack(day: Day, count: u64) -> u64 {
    (u64::from(day.0) << 32) | count.min(u64::from(u32::MAX))
}

fn unpack(word: u64) -> (Day, u64) {
    (Day((word >> 32) as u32), word & u64::from(u32::MAX))
}

impl DailyCounters {
    /// Zero counts for `sources` sources.
    pub fn new(sources: usize) -> DailyCounters {
        DailyCounters {
            slots: (0..sources).map(|_| AtomicU64::new(0)).collect(),
            changes: AtomicU64::new(0),
        }
    }

    /// Counts one message of `source` on `today`; returns the day's count with it. A count
    /// saturates at `u32::MAX` a day.
    pub fn increment(&self, source: SourceId, today: Day) -> u64 {
        self.add(source, today, 1)
    }

    /// Counts `n` messages of `source` on `today` (one write's worth: a few contended
    /// atomics per write, not per message); returns the day's count with them.
    pub fn add(&self, source: SourceId, today: Day, n: u64) -> u64 {
        let Some(slot) = self.slots.get(source.index()) else {
            return 0;
        };
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (day, count) = unpack(current);
            let next = if day == today { count + n } else { n };
            match slot.compare_exchange_weak(
                current,
                pack(today, next),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.changes.fetch_add(1, Ordering::Relaxed);
                    return next.min(u64::from(u32::MAX));
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Sets `source`'s count on `day` (loading the file).
    pub fn set(&self, source: SourceId, day: Day, count: u64) {
        if let Some(slot) = self.slots.get(source.index()) {
            slot.store(pack(day, count), Ordering::Relaxed);
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A number that moves whenever a count changes.
    pub fn generation(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

impl DailyCounts for DailyCounters {
    fn sent_today(&self, source: SourceId, today: Day) -> u64 {
        let Some(slot) = self.slots.get(source.index()) else {
            return 0;
        };
        match unpack(slot.load(Ordering::Relaxed)) {
            (day, count) if day == today => count,
            _ => 0,
        }
    }
}

/// The file: the last day each source sent on and its count that day, by source name (so a
/// reordered configuration keeps its counts; a source no longer configured is dropped).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountsFile {
    version: u32,
    sources: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    source: String,
    /// `YYYY-MM-DD`, UTC.
    day: String,
    sent: u64,
}

/// The counts of `egress` as the file's JSON (sources that have sent at all).
pub fn encode(egress: &Egress) -> Vec<u8> {
    let sources = egress
        .sources()
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let word = egress.counters().slots[i].load(Ordering::Relaxed);
            let (day, sent) = unpack(word);
            (word != 0).then(|| FileEntry {
                source: s.name.clone(),
                day: day.to_string(),
                sent,
            })
        })
        .collect();
    let file = CountsFile {
        version: FILE_VERSION,
        sources,
    };
    serde_json::to_vec_pretty(&file).expect("strings and numbers always serialize")
}

/// Restores the counts of `json` into `egress`; entries of sources it does not have are
/// skipped. The whole file is checked before anything is set.
pub fn decode_into(egress: &Egress, json: &[u8]) -> Result<usize, EgressError> {
    let bad = |why: String| EgressError::CountsFile { why };
    let file: CountsFile = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    if file.version != FILE_VERSION {
        return Err(bad(format!("unknown version {}", file.version)));
    }
    let mut restored = Vec::new();
    for e in &file.sources {
        let day = Day::parse(&e.day).ok_or_else(|| bad(format!("bad day {:?}", e.day)))?;
        if let Some(id) = egress.source_id(&e.source) {
            restored.push((id, day, e.sent));
        }
    }
    for (id, day, sent) in &restored {
        egress.counters().set(*id, *day, *sent);
    }
    Ok(restored.len())
}

/// Loads `<data_dir>/egress-counts.json` into `egress`; a missing file is no counts yet.
pub fn load(egress: &Egress, data_dir: &Path) -> Result<usize, EgressError> {
    let path = data_dir.join(EGRESS_COUNTS_FILE);
    let io = |e: std::io::Error| EgressError::CountsIo {
        path: path.clone(),
        source: e,
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, EGRESS_COUNTS_FILE_BYTES_MAX + 1),
        &mut bytes,
    )
    .map_err(io)?;
    if bytes.len() as u64 > EGRESS_COUNTS_FILE_BYTES_MAX {
        return Err(EgressError::CountsFile {
            why: format!("larger than {EGRESS_COUNTS_FILE_BYTES_MAX} bytes"),
        });
    }
    decode_into(egress, &bytes)
}

/// Writes the counts of `egress` to `<data_dir>/egress-counts.json` atomically.
pub fn save(egress: &Egress, data_dir: &Path) -> Result<(), EgressError> {
    let path = data_dir.join(EGRESS_COUNTS_FILE);
    let tmp = data_dir.join(format!("{EGRESS_COUNTS_FILE}.tmp"));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| EgressError::CountsIo { path: p, source: e }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&encode(egress)).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(data_dir))
}

/// The thread that saves the counts (see the module docs) and refreshes the warm-up gauges.
#[derive(Debug)]
pub struct CountsSaver(Periodic);

impl CountsSaver {
    /// Starts the thread. `interval_ms` is [`EGRESS_COUNTS_SAVE_INTERVAL_MS`] in the engine.
    pub fn start(
        egress: Arc<Egress>,
        data_dir: PathBuf,
        interval_ms: u64,
    ) -> std::io::Result<CountsSaver> {
        // What is counted now is what was loaded: on disk already.
        let mut saved = egress.counters().generation();
        Periodic::start("petrel-egress", interval_ms, move || {
            egress.publish_caps(Day::today());
            let now = egress.counters().generation();
            if now != saved {
                match save(&egress, &data_dir) {
                    Ok(()) => saved = now,
                    Err(e) => tracing::error!(error = %e, "egress counts not saved"),
                }
            }
        })
        .map(CountsSaver)
    }

    /// Saves once more (if anything changed) and joins the thread.
    pub fn stop(&mut self) {
        self.0.stop();
    }
}
