//! Delivery events: one JSON line per attempt outcome, written off the shards.
//!
//! Shards hand batches of [`Event`]s to an [`EventSink`] (a bounded channel; a shard awaits when
//! it is full, so no record is ever dropped, and a slow disk slows delivery rather than losing the
//! log). A shard gathers the events of one scheduler round into one batch (see
//! `EVENTS_BATCH_MAX`), so the writer thread is woken once per batch, not once per recipient. A
//! writer thread ([`EventWriter`]) appends them to `events-<n>.jsonl` in the events directory,
//! opening `events-<n+1>.jsonl` when the current file would pass `file_size_max_bytes` and
//! deleting the oldest beyond `files_max`. It flushes whenever the channel runs empty and on
//! shutdown, so a clean stop loses nothing and a crash loses at most the unflushed buffer.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use serde::Serialize;

use petrel_bounce::Classification;

use crate::attribution::EventAttribution;

use crate::error::DeliveryError;

/// The outcome of one attempt for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Delivered,
    Deferred,
    Bounced,
    Expired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Deferred => "deferred",
            Outcome::Bounced => "bounced",
            Outcome::Expired => "expired",
        }
    }
}

/// One JSON-lines record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// When the outcome was known, unix ms.
    pub timestamp_unix_ms: u64,
    /// Spool message id, 16 lowercase hex digits.
    pub message_id: String,
    pub recipient: String,
    /// Destination domain (lowercase).
    pub domain: String,
    /// MX host name tried, if a connection was attempted.
    pub host: Option<String>,
    /// Socket address tried, if any.
    pub address: Option<String>,
    /// TLS version and cipher, when the connection used TLS.
    pub tls: Option<String>,
    /// The remote reply, when there was one.
    pub reply: Option<String>,
    pub outcome: Outcome,
    /// Our reason when there is no remote reply (timeout, refused, DNS, expired...).
    pub reason: Option<String>,
    /// The bounce classification (`{"class": "hard"|"soft", "category": ...}`) of a
    /// `deferred` or `bounced` outcome, and of an `expired` one (its last attempt); null for
    /// `delivered`. See [`crate::classify`].
    pub bounce: Option<Classification>,
    /// Attempt number for this recipient, from 1.
    pub attempt: u32,
    /// The shard that delivered.
    pub shard: u8,
    /// The message's tenant, credential, From domain, Message-ID, tags and metadata
    /// (`tenant_id`, `credential_id`, `from_domain`, `rfc822_message_id`, `tags`, `metadata`
    /// at the top level of the line; null or empty when unknown).
    #[serde(flatten)]
    pub attribution: EventAttribution,
}

/// Where and how events are written.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// `<data>/events`; created if missing.
    pub dir: PathBuf,
    /// A file is rotated before it would pass this size (default 64 MiB).
    pub file_size_max_bytes: u64,
    /// Files kept, the current one included (default 10).
    pub files_max: usize,
    /// Batches buffered between the shards and the writer (default 1,024).
    pub channel_capacity: usize,
}

impl EventsConfig {
    pub fn new(dir: impl Into<PathBuf>) -> EventsConfig {
        EventsConfig {
            dir: dir.into(),
            file_size_max_bytes: 64 << 20,
            files_max: 10,
            channel_capacity: 1_024,
        }
    }
}

/// The shards' side: cheap to clone, Send.
#[derive(Debug, Clone)]
pub struct EventSink {
    /// `None`: events are discarded (no events directory configured).
    tx: Option<async_channel::Sender<Vec<Event>>>,
}

/// The writer thread's handle: [`EventWriter::shutdown`] flushes and joins it.
#[derive(Debug)]
pub struct EventWriter {
    tx: async_channel::Sender<Vec<Event>>,
    thread: Option<JoinHandle<Result<(), DeliveryError>>>,
}

impl EventSink {
    /// Starts the writer thread.
    pub fn start(cfg: EventsConfig) -> Result<(EventSink, EventWriter), DeliveryError> {
        let files = RotatingFile::open(&cfg)?;
        let (tx, rx) = async_channel::bounded(cfg.channel_capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("petrel-events".into())
            .spawn(move || write_loop(rx, files))
            .map_err(DeliveryError::EventsThread)?;
        let writer = EventWriter {
            tx: tx.clone(),
            thread: Some(thread),
        };
        Ok((EventSink { tx: Some(tx) }, writer))
    }

    /// A sink that discards everything.
    pub fn disabled() -> EventSink {
        EventSink { tx: None }
    }

    /// Hands an event to the writer, waiting while the channel is full.
    pub async fn emit(&self, event: Event) -> Result<(), DeliveryError> {
        self.emit_batch(vec![event]).await
    }

    /// Hands a batch of events to the writer (in order), waiting while the channel is full.
    pub async fn emit_batch(&self, batch: Vec<Event>) -> Result<(), DeliveryError> {
        match &self.tx {
            Some(tx) if !batch.is_empty() => tx
                .send(batch)
                .await
                .map_err(|_| DeliveryError::EventsClosed),
            Some(tx) if tx.is_closed() => Err(DeliveryError::EventsClosed),
            _ => Ok(()),
        }
    }

    /// False for [`EventSink::disabled`]: events need not be built at all.
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }
}

impl EventWriter {
    /// Closes the channel, lets the writer drain and flush it, and joins the thread.
    pub fn shutdown(mut self) -> Result<(), DeliveryError> {
        self.tx.close();
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(DeliveryError::EventsClosed),
            None => Ok(()),
        }
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        self.tx.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(
    rx: async_channel::Receiver<Vec<Event>>,
    mut files: RotatingFile,
) -> Result<(), DeliveryError> {
    let mut line = Vec::with_capacity(512);
    loop {
        let batch = match rx.try_recv() {
            Ok(e) => e,
            Err(async_channel::TryRecvError::Empty) => {
                files.flush()?;
                match poll_then_block(&rx) {
                    Some(b) => b,
                    None => break,
                }
            }
            Err(async_channel::TryRecvError::Closed) => break,
        };
        for event in batch {
            line.clear();
            // Serializing plain strings and numbers cannot fail; skip the record if it ever does.
            if serde_json::to_writer(&mut line, &event).is_err() {
                continue;
            }
            line.push(b'\n');
            files.write(&line)?;
        }
    }
    files.flush()
}

/// While events keep coming, the writer looks for the next batch every `EVENTS_POLL_MS`
/// instead of sleeping on the channel: the shards then hand over batches without waking a
/// thread (no futex call per batch). After `EVENTS_POLL_IDLE_ROUNDS` empty looks it blocks.
pub const EVENTS_POLL_MS: u64 = 5;
/// Empty polls before the writer blocks on the channel (200 × 5 ms: one idle second).
pub const EVENTS_POLL_IDLE_ROUNDS: u32 = 200;

/// The next batch, polling first and then blocking; `None` once the channel is closed and empty.
fn poll_then_block(rx: &async_channel::Receiver<Vec<Event>>) -> Option<Vec<Event>> {
    for _ in 0..EVENTS_POLL_IDLE_ROUNDS {
        std::thread::sleep(std::time::Duration::from_millis(EVENTS_POLL_MS));
        match rx.try_recv() {
            Ok(b) => return Some(b),
            Err(async_channel::TryRecvError::Closed) => return None,
            Err(async_channel::TryRecvError::Empty) => {}
        }
    }
    rx.recv_blocking().ok()
}

/// `events-<n>.jsonl` files, rotated by size.
struct RotatingFile {
    cfg: EventsConfig,
    /// Numbers of the files on disk, oldest first; the last is the current one.
    numbers: VecDeque<u64>,
    current: BufWriter<File>,
    /// Bytes in the current file.
    current_bytes: u64,
}

impl RotatingFile {
    fn open(cfg: &EventsConfig) -> Result<RotatingFile, DeliveryError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DeliveryError::Events { path, source }
        };
        std::fs::create_dir_all(&cfg.dir).map_err(err(&cfg.dir))?;
        let mut numbers: Vec<u64> = std::fs::read_dir(&cfg.dir)
            .map_err(err(&cfg.dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| file_number(&e.file_name().to_string_lossy()))
            .collect();
        numbers.sort_unstable();
        let next = numbers.last().map_or(0, |n| n + 1);
        let mut numbers: VecDeque<u64> = numbers.into();
        let (current, path) = create(&cfg.dir, next)?;
        numbers.push_back(next);
        let mut files = RotatingFile {
            cfg: cfg.clone(),
            numbers,
            current,
            current_bytes: 0,
        };
        files.prune().map_err(err(&path))?;
        Ok(files)
    }

    fn write(&mut self, line: &[u8]) -> Result<(), DeliveryError> {
        let len = line.len() as u64;
        if self.current_bytes > 0 && self.current_bytes + len > self.cfg.file_size_max_bytes {
            self.rotate()?;
        }
        let path = self.current_path();
        self.current
            .write_all(line)
            .map_err(|source| DeliveryError::Events { path, source })?;
        self.current_bytes += len;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), DeliveryError> {
        self.flush()?;
        let next = self.numbers.back().map_or(0, |n| n + 1);
        let (file, path) = create(&self.cfg.dir, next)?;
        self.current = file;
        self.current_bytes = 0;
        self.numbers.push_back(next);
        self.prune()
            .map_err(|source| DeliveryError::Events { path, source })
    }

    fn prune(&mut self) -> std::io::Result<()> {
        while self.numbers.len() > self.cfg.files_max.max(1) {
            if let Some(old) = self.numbers.pop_front() {
                std::fs::remove_file(file_path(&self.cfg.dir, old))?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DeliveryError> {
        let path = self.current_path();
        self.current
            .flush()
            .map_err(|source| DeliveryError::Events { path, source })
    }

    fn current_path(&self) -> PathBuf {
        file_path(&self.cfg.dir, self.numbers.back().copied().unwrap_or(0))
    }
}

fn create(dir: &Path, n: u64) -> Result<(BufWriter<File>, PathBuf), DeliveryError> {
    let path = file_path(dir, n);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|source| DeliveryError::Events {
            path: path.clone(),
            source,
        })?;
    Ok((BufWriter::with_capacity(64 << 10, file), path))
}

fn file_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("events-{n}.jsonl"))
}

fn file_number(name: &str) -> Option<u64> {
    name.strip_prefix("events-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u32) -> Event {
        Event {
            timestamp_unix_ms: 1_700_000_000_000 + u64::from(i),
            message_id: format!("{:016x}", i),
            recipient: format!("user{i}@dest.example"),
            domain: "dest.example".into(),
            host: Some("mx.dest.example".into()),
            address: Some("127.0.0.1:25".into()),
            tls: None,
            reply: Some("250 2.0.0 ok".into()),
            outcome: Outcome::Delivered,
            reason: None,
            bounce: None,
            attempt: 1,
            shard: 0,
            attribution: EventAttribution(Some(std::sync::Arc::new(
                crate::attribution::Attribution {
                    tenant_id: Some("tenant-a".into()),
                    tags: vec![format!("t{}", i % 3)],
                    metadata: Some(format!("{{\"i\":{i}}}")),
                    ..Default::default()
                },
            ))),
        }
    }

    #[test]
    fn the_bounce_object_has_the_published_names() {
        let mut e = event(7);
        e.outcome = Outcome::Bounced;
        e.reply = Some("550 5.1.1 user unknown".into());
        e.bounce = Some(Classification {
            category: petrel_bounce::Category::InvalidRecipient,
            class: petrel_bounce::BounceClass::Hard,
        });
        let v = serde_json::to_value(&e).expect("json");
        assert_eq!(v["outcome"], "bounced");
        assert_eq!(
            v["bounce"],
            serde_json::json!({"category": "invalid_recipient", "class": "hard"})
        );
        let delivered = serde_json::to_value(event(8)).expect("json");
        assert!(delivered["bounce"].is_null());
    }

    #[test]
    fn writes_json_lines_rotates_and_keeps_n_files() {
        let dir = std::env::temp_dir().join(format!("petrel-events-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = EventsConfig {
            dir: dir.clone(),
            file_size_max_bytes: 2_000,
            files_max: 3,
            channel_capacity: 4, // small: the sender must wait, never drop
        };
        let (sink, writer) = EventSink::start(cfg).expect("start");
        let total = 200u32;
        futures_lite::future::block_on(async {
            for i in 0..total / 2 {
                sink.emit(event(i)).await.expect("emit");
            }
            let batch: Vec<Event> = (total / 2..total).map(event).collect();
            sink.emit_batch(batch).await.expect("emit batch");
        });
        writer.shutdown().expect("shutdown");
        let mut names: Vec<u64> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| file_number(&e.expect("entry").file_name().to_string_lossy()))
            .collect();
        names.sort_unstable();
        assert_eq!(names.len(), 3, "only files_max kept: {names:?}");
        let mut last_seen = None;
        for n in &names {
            let text = std::fs::read_to_string(file_path(&dir, *n)).expect("read");
            assert!(text.len() as u64 <= 2_000);
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("json line");
                assert_eq!(v["outcome"], "delivered");
                assert_eq!(v["domain"], "dest.example");
                assert_eq!(v["tenant_id"], "tenant-a");
                assert_eq!(v["tags"].as_array().map(Vec::len), Some(1));
                assert!(
                    v["metadata"]["i"].is_u64(),
                    "metadata is a JSON object: {line}"
                );
                assert!(v["credential_id"].is_null());
                last_seen = v["timestamp_unix_ms"].as_u64();
            }
        }
        assert_eq!(
            last_seen,
            Some(1_700_000_000_000 + u64::from(total - 1)),
            "flushed"
        );
        assert!(futures_lite::future::block_on(sink.emit(event(0))).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
