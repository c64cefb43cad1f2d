//! Delivery events: every outcome of every recipient (and every refusal at SMTP), written off
//! the shards to the JSON-lines files and to the durable backlog the control plane reads.
//!
//! Shards hand batches of [`Event`]s to an [`EventSink`] (a bounded channel; a shard awaits when
//! it is full, so no record is ever dropped, and a slow disk slows delivery rather than losing
//! events). A shard gathers the events of one scheduler round into one batch (see
//! `EVENTS_BATCH_MAX`), so the writer thread is woken once per batch, not once per recipient.
//!
//! The writer thread ([`EventWriter`]) takes every batch waiting, then:
//! - appends them as JSON lines to `events-<n>.jsonl` ([`jsonl`], when `jsonl` is on; flushed
//!   whenever the channel runs empty and on shutdown), and
//! - with a backlog ([`petrel_policy::Outbox`], when the engine has a control plane), converts
//!   them to the control plane's event format ([`wire`]: stable ids, bounded fields), appends
//!   them in wire batches and makes them durable with one `fdatasync`; then it completes the
//!   batches' [`Durable`] tickets. Delivery removes or updates a recipient in the spool only
//!   after its event's ticket completed, so after a crash at any instant an outcome is either
//!   in the backlog or its recipient is still in the spool (and tried again, with the same
//!   event id: the control plane drops the duplicate).

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Serialize;

use petrel_bounce::Classification;
use petrel_policy::Outbox;

use crate::attribution::EventAttribution;

use crate::error::DeliveryError;

mod jsonl;
pub mod wire;

use jsonl::RotatingFile;
#[cfg(test)]
use jsonl::{file_number, file_path};

/// What happened to one recipient (or one refused SMTP command).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Spooled after the 250 (one per recipient).
    Accepted,
    /// Refused at SMTP (MAIL, RCPT or end of data).
    Rejected,
    Delivered,
    Deferred,
    Bounced,
    Expired,
    /// Refused at RCPT because the tenant's (or the operator's) suppression list holds the
    /// recipient (issue 14).
    Suppressed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Rejected => "rejected",
            Outcome::Delivered => "delivered",
            Outcome::Deferred => "deferred",
            Outcome::Bounced => "bounced",
            Outcome::Expired => "expired",
            Outcome::Suppressed => "suppressed",
        }
    }
}

/// One JSON-lines record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// When the outcome was known, unix ms.
    pub timestamp_unix_ms: u64,
    /// Spool message id, 16 lowercase hex digits; null for a refusal (nothing was spooled).
    pub message_id: Option<String>,
    /// The SMTP session of a refusal (16 hex digits); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The recipient's index in the message's envelope; for a refusal, the refusal's index in
    /// its session. With the message (or session) id and the attempt it makes the event's id.
    pub rcpt_index: u32,
    /// The envelope sender ("" for the null sender).
    pub sender: String,
    /// "" for a refusal before RCPT.
    pub recipient: String,
    /// Destination domain (lowercase).
    pub domain: String,
    /// MX host name tried, if a connection was attempted.
    pub host: Option<String>,
    /// Socket address tried, if any.
    pub address: Option<String>,
    /// TLS version and cipher, when the connection used TLS.
    pub tls: Option<String>,
    /// The remote reply (ours for `accepted` and `rejected`), when there was one.
    pub reply: Option<String>,
    pub outcome: Outcome,
    /// Our reason when there is no remote reply (timeout, refused, DNS, expired...).
    pub reason: Option<String>,
    /// The bounce classification (`{"class": "hard"|"soft", "category": ...}`) of a
    /// `deferred` or `bounced` outcome, and of an `expired` one (its last attempt); null for
    /// `delivered`. See [`crate::classify`].
    pub bounce: Option<Classification>,
    /// Attempt number for this recipient, from 1 (0 for `accepted` and `rejected`).
    pub attempt: u32,
    /// The shard that delivered.
    pub shard: u8,
    /// Petrel's own facts about the event (`petrel_policy::Event::details`), e.g. the failing
    /// check of a refused sending domain; at most `DETAILS_MAX_BYTES` once serialised (larger
    /// is left out of the control plane's copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
    /// The message's tenant, credential, From domain, Message-ID, tags and metadata
    /// (`tenant_id`, `credential_id`, `from_domain`, `rfc822_message_id`, `tags`, `metadata`
    /// at the top level of the line; null or empty when unknown).
    #[serde(flatten)]
    pub attribution: EventAttribution,
}

/// A JSON-lines file is rotated once this old (a day).
pub const JSONL_FILE_AGE_MAX_MS: u64 = 86_400_000;
/// Closed JSON-lines files older than this are deleted by default (30 days).
pub const JSONL_RETENTION_MS_DEFAULT: u64 = 30 * 86_400_000;

/// Where and how events are written.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// `<data>/events`; created if missing (when `jsonl` is on).
    pub dir: PathBuf,
    /// Write the JSON-lines files (default on).
    pub jsonl: bool,
    /// A file is rotated before it would pass this size (default 64 MiB).
    pub file_size_max_bytes: u64,
    /// Files kept, the current one included (default 10).
    pub files_max: usize,
    /// A file is also rotated once it is this old, and a closed file older than the retention
    /// window is deleted (`events.jsonl_retention_days`, default 30 days): they hold recipient
    /// addresses in the clear, for a log shipper, so they do not outlive the events' window.
    pub file_age_max_ms: u64,
    pub retention_ms: u64,
    /// Batches buffered between the shards and the writer (default 1,024).
    pub channel_capacity: usize,
    /// The durable backlog for the control plane; `None`: no control plane.
    pub outbox: Option<Arc<Outbox>>,
    /// This engine's id, part of every event id (see `petrel_policy::Event::stable_id`).
    pub engine_id: String,
    /// Build `accepted` events (one per recipient of every queued message). Always wanted with
    /// a backlog; for the JSON-lines files alone it is an option (they carried delivery
    /// outcomes only before, and a line per acceptance costs about 6 µs of CPU a message).
    pub accepted: bool,
}

impl EventsConfig {
    pub fn new(dir: impl Into<PathBuf>) -> EventsConfig {
        EventsConfig {
            dir: dir.into(),
            jsonl: true,
            file_size_max_bytes: 64 << 20,
            files_max: 10,
            file_age_max_ms: JSONL_FILE_AGE_MAX_MS,
            retention_ms: JSONL_RETENTION_MS_DEFAULT,
            channel_capacity: 1_024,
            outbox: None,
            engine_id: String::new(),
            accepted: false,
        }
    }
}

/// A batch on its way to the writer; `done` is completed once it is durable.
struct Batch {
    events: Vec<Event>,
    done: Option<async_channel::Sender<()>>,
}

/// The shards' side: cheap to clone, Send.
#[derive(Debug, Clone)]
pub struct EventSink {
    /// `None`: events are discarded (no events directory configured).
    tx: Option<async_channel::Sender<Batch>>,
    /// Events go to a durable backlog: callers wait for [`Durable`] before forgetting an outcome.
    durable: bool,
    /// `accepted` events are built (see [`EventsConfig::accepted`]).
    accepted: bool,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Batch({} events)", self.events.len())
    }
}

/// Completes once the batch it was issued for is in the durable backlog (at once without one).
#[derive(Debug)]
pub struct Durable(Option<async_channel::Receiver<()>>);

impl Durable {
    /// Waits for the batch's `fdatasync`. Returns false if the writer stopped first (shutdown):
    /// the caller must then not forget the outcome.
    pub async fn wait(self) -> bool {
        match self.0 {
            None => true,
            Some(rx) => rx.recv().await.is_ok(),
        }
    }
}

/// The writer thread's handle: [`EventWriter::shutdown`] flushes and joins it.
#[derive(Debug)]
pub struct EventWriter {
    tx: async_channel::Sender<Batch>,
    thread: Option<JoinHandle<Result<(), DeliveryError>>>,
}

impl EventSink {
    /// Starts the writer thread.
    pub fn start(cfg: EventsConfig) -> Result<(EventSink, EventWriter), DeliveryError> {
        let files = if cfg.jsonl {
            Some(RotatingFile::open(&cfg)?)
        } else {
            None
        };
        let durable = cfg.outbox.is_some();
        let accepted = durable || cfg.accepted;
        let (tx, rx) = async_channel::bounded(cfg.channel_capacity.max(1));
        let out = wire::WireWriter::new(cfg.outbox.clone(), cfg.engine_id.clone());
        let thread = std::thread::Builder::new()
            .name("petrel-events".into())
            .spawn(move || write_loop(rx, files, out))
            .map_err(DeliveryError::EventsThread)?;
        let writer = EventWriter {
            tx: tx.clone(),
            thread: Some(thread),
        };
        Ok((
            EventSink {
                tx: Some(tx),
                durable,
                accepted,
            },
            writer,
        ))
    }

    /// A sink that discards everything.
    pub fn disabled() -> EventSink {
        EventSink {
            tx: None,
            durable: false,
            accepted: false,
        }
    }

    /// Hands an event to the writer, waiting while the channel is full.
    pub async fn emit(&self, event: Event) -> Result<(), DeliveryError> {
        self.emit_batch(vec![event]).await
    }

    /// Hands a batch of events to the writer (in order), waiting while the channel is full.
    pub async fn emit_batch(&self, events: Vec<Event>) -> Result<(), DeliveryError> {
        self.send(events, None).await
    }

    /// Like [`EventSink::emit_batch`], and returns the ticket that completes once the batch is
    /// durable (at once when there is no backlog).
    pub async fn emit_durable(&self, events: Vec<Event>) -> Result<Durable, DeliveryError> {
        if !self.durable || events.is_empty() {
            self.send(events, None).await?;
            return Ok(Durable(None));
        }
        let (done, rx) = async_channel::bounded(1);
        self.send(events, Some(done)).await?;
        Ok(Durable(Some(rx)))
    }

    async fn send(
        &self,
        events: Vec<Event>,
        done: Option<async_channel::Sender<()>>,
    ) -> Result<(), DeliveryError> {
        match &self.tx {
            Some(tx) if !events.is_empty() => tx
                .send(Batch { events, done })
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

    /// True when `accepted` events are wanted.
    pub fn wants_accepted(&self) -> bool {
        self.tx.is_some() && self.accepted
    }

    /// True when outcomes must wait for their events to be durable before the spool forgets
    /// them (a control plane backlog is configured).
    pub fn is_durable(&self) -> bool {
        self.durable
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

/// Batches taken from the channel before one backlog sync, at most.
pub const EVENTS_SYNC_BATCHES_MAX: usize = 256;

fn write_loop(
    rx: async_channel::Receiver<Batch>,
    mut files: Option<RotatingFile>,
    mut out: wire::WireWriter,
) -> Result<(), DeliveryError> {
    let mut line = Vec::with_capacity(512);
    let mut done = Vec::new();
    loop {
        let first = match rx.try_recv() {
            Ok(b) => b,
            Err(async_channel::TryRecvError::Empty) => {
                if let Some(f) = files.as_mut() {
                    f.flush()?;
                }
                match poll_then_block(&rx) {
                    Some(b) => b,
                    None => break,
                }
            }
            Err(async_channel::TryRecvError::Closed) => break,
        };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(batch) = next.take() {
            for event in &batch.events {
                if let Some(f) = files.as_mut() {
                    line.clear();
                    // Serializing plain strings and numbers cannot fail; skip the line if it does.
                    if serde_json::to_writer(&mut line, event).is_ok() {
                        line.push(b'\n');
                        f.write(&line)?;
                    }
                }
                out.push(event);
            }
            done.extend(batch.done);
            taken += 1;
            if taken < EVENTS_SYNC_BATCHES_MAX {
                next = rx.try_recv().ok();
            }
        }
        out.commit();
        // Durable now (or there is no backlog): release the outcomes waiting for it.
        for d in done.drain(..) {
            let _ = d.try_send(());
        }
    }
    out.commit();
    for d in done.drain(..) {
        let _ = d.try_send(());
    }
    match files.as_mut() {
        Some(f) => f.flush(),
        None => Ok(()),
    }
}

/// While events keep coming, the writer looks for the next batch every `EVENTS_POLL_MS`
/// instead of sleeping on the channel: the shards then hand over batches without waking a
/// thread (no futex call per batch). After `EVENTS_POLL_IDLE_ROUNDS` empty looks it blocks.
pub const EVENTS_POLL_MS: u64 = 5;
/// Empty polls before the writer blocks on the channel (200 × 5 ms: one idle second).
pub const EVENTS_POLL_IDLE_ROUNDS: u32 = 200;

/// The next batch, polling first and then blocking; `None` once the channel is closed and empty.
fn poll_then_block(rx: &async_channel::Receiver<Batch>) -> Option<Batch> {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn event(i: u32) -> Event {
        Event {
            timestamp_unix_ms: 1_700_000_000_000 + u64::from(i),
            message_id: Some(format!("{:016x}", i)),
            session_id: None,
            rcpt_index: i % 4,
            sender: "sender@src.example".into(),
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
            details: None,
            attribution: EventAttribution(Some(std::sync::Arc::new(
                crate::attribution::AttributionParts {
                    tenant_id: Some("tenant-a".into()),
                    tags: vec![format!("t{}", i % 3)],
                    metadata: Some(format!("{{\"i\":{i}}}")),
                    ..Default::default()
                }
                .into(),
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
    fn json_lines_files_past_the_retention_window_are_deleted() {
        let dir = std::env::temp_dir().join(format!("petrel-events-age-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        // Two files of an earlier run: one written 40 days ago, one an hour ago.
        let old = file_path(&dir, 1);
        let recent = file_path(&dir, 2);
        for (p, age_secs) in [(&old, 40 * 86_400), (&recent, 3_600)] {
            std::fs::write(p, b"{}\n").expect("write");
            let t = std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs);
            std::fs::File::options()
                .write(true)
                .open(p)
                .and_then(|f| f.set_modified(t))
                .expect("set mtime");
        }
        let cfg = EventsConfig::new(&dir);
        let (_sink, writer) = EventSink::start(cfg).expect("start");
        writer.shutdown().expect("shutdown");
        assert!(!old.exists(), "past the 30-day window: deleted");
        assert!(recent.exists(), "inside the window: kept");
        let _ = std::fs::remove_dir_all(&dir);
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
            ..EventsConfig::new(&dir)
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
