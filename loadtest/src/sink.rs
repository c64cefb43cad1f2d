//! The smart sink: configuration, counters, thread-per-core listeners and the handle.
//!
//! Each core thread owns one SO_REUSEPORT listener on the same address (the kernel spreads
//! connections) and a current-thread tokio runtime. Counters are shared atomics so a test can
//! read them while the sink runs; duplicate detection uses a set sharded by id to keep lock
//! hold times short.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::report::{new_histogram, process_cpu_s, unix_now_us, LatencySummary};
use crate::{check_loopback, stream, tls, LoadError};

/// Listen backlog of each core's listener.
pub const LISTEN_BACKLOG: i32 = 4096;
/// Shards of the unique-id set.
const ID_SHARDS: usize = 16;
/// How often the stats file is rewritten, in milliseconds.
pub const STATS_FILE_PERIOD_MS: u64 = 200;

/// What to do with a connection over `connections_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum OverLimit {
    /// Accept it, answer `421 4.7.0` and close.
    Reply421,
    /// Stop calling accept until a slot frees (clients wait in the kernel backlog).
    StopAccepting,
}

/// A fault applied with a probability to recipients of one domain (or its subdomains).
#[derive(Debug, Clone, PartialEq)]
pub struct DomainFault {
    /// Domain, lower case; matches itself and any subdomain.
    pub domain: String,
    /// Probability in 0..=1.
    pub probability: f64,
}

/// How the sink behaves.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Address to listen on (port 0 picks one; read it back from `SinkHandle::addr`).
    pub listen: SocketAddr,
    /// Core threads; 0 means one per available core.
    pub threads: usize,
    /// RCPT answered 450 with this probability, per domain.
    pub rcpt_tempfail: Vec<DomainFault>,
    /// RCPT answered 550 with this probability, per domain.
    pub rcpt_permfail: Vec<DomainFault>,
    /// End of data answered 451 with this probability.
    pub data_tempfail: f64,
    /// End of data answered 554 with this probability.
    pub data_permfail: f64,
    /// Connection closed in the middle of DATA (no reply) with this probability.
    pub drop_in_data: f64,
    /// Delay before every batch of replies, in milliseconds.
    pub reply_delay_ms: u64,
    /// Extra delay before the end-of-data reply, in milliseconds.
    pub data_reply_delay_ms: u64,
    /// Offer STARTTLS (self-signed certificate made with rcgen at start).
    pub starttls: bool,
    /// Issue TLS 1.3 tickets and keep TLS 1.2 sessions (rustls's default). Off: every
    /// handshake with the sink is a full one.
    pub tls_resumption: bool,
    /// Offer PIPELINING.
    pub pipelining: bool,
    /// Offer CHUNKING (RFC 3030 BDAT), as Postfix, Gmail and Exchange do.
    pub chunking: bool,
    /// AUTH PLAIN credentials to accept; empty: any credentials are accepted.
    pub auth_users: Vec<(String, String)>,
    /// Most concurrent connections (>= 1).
    pub connections_max: u32,
    /// Behaviour over `connections_max`.
    pub over_limit: OverLimit,
    /// Write each accepted message as `<dir>/<seq>.eml`.
    pub store_dir: Option<PathBuf>,
    /// Keep up to this many accepted messages in memory for `SinkHandle::received`.
    pub keep_messages_max: usize,
    /// Most ids remembered for duplicate detection; later ids are counted as untracked.
    pub ids_tracked_max: usize,
    /// Largest message accepted, in bytes; larger ones get 552 and the connection is closed.
    pub message_size_max_bytes: usize,
    /// Longest command line, in bytes.
    pub line_length_max_bytes: usize,
    /// A connection idle this long is closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Rewrite this file with the stats as JSON every 200 ms.
    pub stats_file: Option<PathBuf>,
    /// Permit listening on a non-loopback address.
    pub allow_non_loopback: bool,
    /// Seed for the fault dice (per connection it is mixed with a counter).
    pub seed: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            threads: 0,
            rcpt_tempfail: Vec::new(),
            rcpt_permfail: Vec::new(),
            data_tempfail: 0.0,
            data_permfail: 0.0,
            drop_in_data: 0.0,
            reply_delay_ms: 0,
            data_reply_delay_ms: 0,
            starttls: true,
            tls_resumption: true,
            pipelining: true,
            chunking: true,
            auth_users: Vec::new(),
            connections_max: 10_000,
            over_limit: OverLimit::Reply421,
            store_dir: None,
            keep_messages_max: 0,
            ids_tracked_max: 50_000_000,
            message_size_max_bytes: 64 << 20,
            line_length_max_bytes: 4096,
            idle_timeout_ms: 60_000,
            stats_file: None,
            allow_non_loopback: false,
            seed: 0x5eed,
        }
    }
}

/// A message the sink accepted (kept when `keep_messages_max` > 0).
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// Content after dot-unstuffing, ending in CRLF.
    pub data: Vec<u8>,
    /// The load id header value, if present and well formed.
    pub load_id: Option<crate::msgid::LoadId>,
}

/// Live counters (atomics; `SinkStats` is a snapshot).
#[derive(Default)]
pub(crate) struct Counters {
    pub messages_accepted: AtomicU64,
    pub messages_tempfailed: AtomicU64,
    pub messages_permfailed: AtomicU64,
    pub unique_ids: AtomicU64,
    pub duplicates: AtomicU64,
    pub messages_without_id: AtomicU64,
    pub ids_untracked: AtomicU64,
    pub rcpts_accepted: AtomicU64,
    pub rcpts_tempfailed: AtomicU64,
    pub rcpts_permfailed: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_current: AtomicU64,
    pub connections_max_seen: AtomicU64,
    pub connections_refused: AtomicU64,
    pub tls_sessions: AtomicU64,
    pub tls_resumed: AtomicU64,
    pub drops_in_data: AtomicU64,
    pub bytes_received: AtomicU64,
    pub auth_ok: AtomicU64,
    pub auth_failed: AtomicU64,
    pub store_errors: AtomicU64,
    pub first_arrival_unix_us: AtomicU64,
    pub last_arrival_unix_us: AtomicU64,
}

/// A snapshot of the sink's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SinkStats {
    pub listen: String,
    pub elapsed_s: f64,
    pub messages_accepted: u64,
    pub messages_tempfailed: u64,
    pub messages_permfailed: u64,
    pub unique_ids: u64,
    pub duplicates: u64,
    pub messages_without_id: u64,
    pub ids_untracked: u64,
    pub rcpts_accepted: u64,
    pub rcpts_tempfailed: u64,
    pub rcpts_permfailed: u64,
    pub connections_total: u64,
    pub connections_current: u64,
    pub connections_max_seen: u64,
    /// Connections answered 421 over `connections_max`.
    pub connections_refused: u64,
    pub tls_sessions: u64,
    /// TLS sessions that resumed an earlier one (the rest were full handshakes).
    pub tls_resumed: u64,
    pub drops_in_data: u64,
    pub bytes_received: u64,
    pub auth_ok: u64,
    pub auth_failed: u64,
    pub store_errors: u64,
    /// Unique messages per second between the first and the last arrival.
    pub arrival_rate_per_s: f64,
    /// Wall-clock time of the first and the last accepted message, µs since the epoch (0: none
    /// yet). A script that waits for the stats file (written every `STATS_FILE_PERIOD_MS`) times
    /// a run's end by `last_arrival_unix_us`, not by when it saw the file.
    pub first_arrival_unix_us: u64,
    pub last_arrival_unix_us: u64,
    /// Injection (timestamp in the id header) to arrival, microseconds.
    pub arrival_latency_us: LatencySummary,
    /// CPU seconds of the whole process since the sink started.
    pub cpu_s: f64,
    pub cpu_s_per_1000_msgs: f64,
}

impl SinkStats {
    /// A human summary.
    pub fn human(&self) -> String {
        let mut s = format!(
            "sink {}: {} accepted ({} unique, {} duplicates, {} without id) in {:.2}s, {:.0} msg/s\n",
            self.listen, self.messages_accepted, self.unique_ids, self.duplicates,
            self.messages_without_id, self.elapsed_s, self.arrival_rate_per_s
        );
        s += &format!(
            "  data 4xx={} 5xx={} drops={} | rcpts ok={} 4xx={} 5xx={}\n",
            self.messages_tempfailed,
            self.messages_permfailed,
            self.drops_in_data,
            self.rcpts_accepted,
            self.rcpts_tempfailed,
            self.rcpts_permfailed
        );
        s += &format!(
            "  connections={} max_concurrent={} refused={} tls={} (resumed {}) bytes={}\n",
            self.connections_total,
            self.connections_max_seen,
            self.connections_refused,
            self.tls_sessions,
            self.tls_resumed,
            self.bytes_received
        );
        s += &self.arrival_latency_us.human("arrival");
        s += &format!(
            "\n  cpu {:.2}s ({:.3} s per 1000 msgs)\n",
            self.cpu_s, self.cpu_s_per_1000_msgs
        );
        s
    }
}

/// State shared by the sink's threads.
pub(crate) struct SinkShared {
    pub cfg: SinkConfig,
    pub addr: SocketAddr,
    pub counters: Counters,
    ids: Vec<Mutex<HashSet<u128>>>,
    ids_tracked: AtomicU64,
    /// Arrival latency, one histogram per core thread (each locked only by its thread and by
    /// readers of the stats).
    pub latency: Vec<Mutex<Histogram<u64>>>,
    pub received: Mutex<Vec<ReceivedMessage>>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub slots: Arc<tokio::sync::Semaphore>,
    pub store_seq: AtomicU64,
    pub conn_seq: AtomicU64,
    started: Instant,
    cpu0: f64,
    stopping: AtomicBool,
}

impl SinkShared {
    pub(crate) fn new(
        cfg: SinkConfig,
        addr: SocketAddr,
        threads: usize,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        SinkShared {
            slots: Arc::new(tokio::sync::Semaphore::new(cfg.connections_max as usize)),
            addr,
            counters: Counters::default(),
            ids: (0..ID_SHARDS).map(|_| Mutex::new(HashSet::new())).collect(),
            ids_tracked: AtomicU64::new(0),
            latency: (0..threads.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
            received: Mutex::new(Vec::new()),
            tls,
            store_seq: AtomicU64::new(0),
            conn_seq: AtomicU64::new(0),
            started: Instant::now(),
            cpu0: process_cpu_s(),
            stopping: AtomicBool::new(false),
            cfg,
        }
    }

    /// Records an arrival's id; returns true if it is new.
    pub fn record_id(&self, key: u128) -> bool {
        let shard = (key as u64 ^ (key >> 64) as u64) as usize % ID_SHARDS;
        let Ok(mut set) = self.ids[shard].lock() else {
            return true;
        };
        if set.contains(&key) {
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if self.ids_tracked.load(Ordering::Relaxed) as usize >= self.cfg.ids_tracked_max {
            self.counters.ids_untracked.fetch_add(1, Ordering::Relaxed);
        } else {
            set.insert(key);
            self.ids_tracked.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.unique_ids.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn snapshot(&self) -> SinkStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut h = new_histogram();
        for l in &self.latency {
            if let Ok(l) = l.lock() {
                let _ = h.add(&*l);
            }
        }
        let unique = g(&c.unique_ids);
        let span_s =
            g(&c.last_arrival_unix_us).saturating_sub(g(&c.first_arrival_unix_us)) as f64 / 1e6;
        let cpu_s = (process_cpu_s() - self.cpu0).max(0.0);
        let accepted = g(&c.messages_accepted);
        SinkStats {
            listen: self.addr.to_string(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            messages_accepted: accepted,
            messages_tempfailed: g(&c.messages_tempfailed),
            messages_permfailed: g(&c.messages_permfailed),
            unique_ids: unique,
            duplicates: g(&c.duplicates),
            messages_without_id: g(&c.messages_without_id),
            ids_untracked: g(&c.ids_untracked),
            rcpts_accepted: g(&c.rcpts_accepted),
            rcpts_tempfailed: g(&c.rcpts_tempfailed),
            rcpts_permfailed: g(&c.rcpts_permfailed),
            connections_total: g(&c.connections_total),
            connections_current: g(&c.connections_current),
            connections_max_seen: g(&c.connections_max_seen),
            connections_refused: g(&c.connections_refused),
            tls_sessions: g(&c.tls_sessions),
            tls_resumed: g(&c.tls_resumed),
            drops_in_data: g(&c.drops_in_data),
            bytes_received: g(&c.bytes_received),
            auth_ok: g(&c.auth_ok),
            auth_failed: g(&c.auth_failed),
            store_errors: g(&c.store_errors),
            arrival_rate_per_s: if span_s > 0.0 {
                unique.saturating_sub(1) as f64 / span_s
            } else {
                0.0
            },
            first_arrival_unix_us: g(&c.first_arrival_unix_us),
            last_arrival_unix_us: g(&c.last_arrival_unix_us),
            arrival_latency_us: LatencySummary::from_histogram(&h),
            cpu_s,
            cpu_s_per_1000_msgs: if accepted > 0 {
                cpu_s * 1000.0 / accepted as f64
            } else {
                0.0
            },
        }
    }

    /// Notes an accepted message's arrival time.
    pub fn note_arrival(&self, now_us: u64) {
        let c = &self.counters;
        let _ = c.first_arrival_unix_us.compare_exchange(
            0,
            now_us,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        c.last_arrival_unix_us.fetch_max(now_us, Ordering::Relaxed);
    }
}

/// A running sink; dropping it stops it.
pub struct SinkHandle {
    shared: Arc<SinkShared>,
    shutdown: tokio::sync::watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SinkHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SinkStats {
        self.shared.snapshot()
    }

    /// Waits until `n` unique ids have arrived or `timeout` passes; true if they arrived.
    pub fn wait_for(&self, n: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.shared.counters.unique_ids.load(Ordering::Relaxed) >= n {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(5)));
        }
    }

    /// Wall-clock time of the last accepted message, µs since the epoch (0: none yet).
    pub fn last_arrival_unix_us(&self) -> u64 {
        self.shared
            .counters
            .last_arrival_unix_us
            .load(Ordering::Relaxed)
    }

    /// Messages kept in memory (at most `keep_messages_max`).
    pub fn received(&self) -> Vec<ReceivedMessage> {
        self.shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Stops every thread (closing all connections) and returns the final stats.
    pub fn stop(mut self) -> SinkStats {
        self.shutdown_now();
        self.shared.snapshot()
    }

    fn shutdown_now(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.shutdown.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Starts a sink on background threads.
pub fn start_sink(cfg: SinkConfig) -> Result<SinkHandle, LoadError> {
    check_loopback(cfg.listen, cfg.allow_non_loopback)?;
    validate(&cfg)?;
    let threads = match cfg.threads {
        0 => stream::default_threads(),
        n => n,
    };
    let first = bind_reuseport(cfg.listen)?;
    let addr = first
        .local_addr()
        .map_err(LoadError::io("reading the listen address"))?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(bind_reuseport(addr)?);
    }
    if let Some(dir) = &cfg.store_dir {
        std::fs::create_dir_all(dir).map_err(LoadError::io("creating the store directory"))?;
    }
    let tls = if cfg.starttls {
        Some(tokio_rustls::TlsAcceptor::from(tls::self_signed_server(
            cfg.tls_resumption,
        )?))
    } else {
        None
    };
    let shared = Arc::new(SinkShared::new(cfg, addr, threads, tls));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    for (t, l) in listeners.into_iter().enumerate() {
        let sh = shared.clone();
        let rx = rx.clone();
        let h = std::thread::Builder::new()
            .name(format!("petrel-sink-{t}"))
            .spawn(move || crate::sink_session::run_core(sh, l, t, rx))
            .map_err(LoadError::io("spawning sink thread"))?;
        handles.push(h);
    }
    if let Some(path) = shared.cfg.stats_file.clone() {
        let sh = shared.clone();
        let h = std::thread::Builder::new()
            .name("petrel-sink-stats".into())
            .spawn(move || stats_file_loop(sh, path))
            .map_err(LoadError::io("spawning stats thread"))?;
        handles.push(h);
    }
    Ok(SinkHandle {
        shared,
        shutdown: tx,
        threads: handles,
    })
}

fn validate(cfg: &SinkConfig) -> Result<(), LoadError> {
    let p = |x: f64| (0.0..=1.0).contains(&x);
    let faults = cfg.rcpt_tempfail.iter().chain(&cfg.rcpt_permfail);
    if !p(cfg.data_tempfail)
        || !p(cfg.data_permfail)
        || !p(cfg.drop_in_data)
        || cfg.data_tempfail + cfg.data_permfail > 1.0
        || faults.clone().any(|f| !p(f.probability))
    {
        return Err(LoadError::Config(
            "probabilities must be within 0..=1".into(),
        ));
    }
    if cfg.connections_max == 0 || cfg.line_length_max_bytes < 512 {
        return Err(LoadError::Config(
            "connections_max >= 1, line_length_max_bytes >= 512".into(),
        ));
    }
    Ok(())
}

fn bind_reuseport(addr: SocketAddr) -> Result<std::net::TcpListener, LoadError> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(LoadError::io("creating a socket"))?;
    s.set_reuse_address(true)
        .map_err(LoadError::io("setting SO_REUSEADDR"))?;
    s.set_reuse_port(true)
        .map_err(LoadError::io("setting SO_REUSEPORT"))?;
    s.set_nonblocking(true)
        .map_err(LoadError::io("setting non-blocking"))?;
    s.bind(&addr.into())
        .map_err(LoadError::io("binding the listener"))?;
    s.listen(LISTEN_BACKLOG)
        .map_err(LoadError::io("listening"))?;
    Ok(s.into())
}

fn stats_file_loop(sh: Arc<SinkShared>, path: PathBuf) {
    let tmp = path.with_extension("tmp");
    loop {
        let stop = sh.stopping.load(Ordering::Acquire);
        if let Ok(json) = serde_json::to_vec(&sh.snapshot()) {
            if std::fs::write(&tmp, json).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        if stop {
            return;
        }
        std::thread::sleep(Duration::from_millis(STATS_FILE_PERIOD_MS));
    }
}

/// Arrival latency in microseconds of a message injected at `injected_us`, arriving at `now_us`.
pub(crate) fn arrival_latency_us(injected_us: u64, now_us: u64) -> u64 {
    now_us.saturating_sub(injected_us)
}

/// Wall clock for arrivals (behind one function so the session code never reads it directly).
pub(crate) fn now_us() -> u64 {
    unix_now_us()
}
