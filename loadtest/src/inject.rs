//! The injector: configuration, thread-per-core start-up, and the final report.
//!
//! Tickets (message numbers) are claimed from one atomic counter shared by every connection on
//! every core thread, so `messages` is exact whatever the number of connections; a target rate
//! schedules ticket `n` at `start + n / rate` (open loop). Each core thread keeps its own
//! histograms and counters; they are merged once at the end.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::inject_conn::connection_loop;
use crate::report::{new_histogram, process_cpu_s, LatencySummary};
use crate::{check_loopback, stream, tls, LoadError};

/// Largest message size the injector generates, in bytes (64 MiB).
pub const MESSAGE_SIZE_BYTES_MAX: usize = 64 << 20;
/// Most connections one injector opens at once.
pub const CONNECTIONS_MAX: u32 = 100_000;
/// Most recipients per message.
pub const RCPTS_PER_MESSAGE_MAX: u32 = 1_000;
/// Most destination domains.
pub const DOMAINS_MAX: usize = 1_000_000;

/// What the injector does.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    /// SMTP server to inject into (loopback unless `allow_non_loopback`).
    pub target: SocketAddr,
    /// Concurrent connections (>= 1, <= CONNECTIONS_MAX).
    pub connections: u32,
    /// Messages to attempt in total (each gets exactly one outcome).
    pub messages: u64,
    /// Stop claiming new messages after this long; in-flight ones then get `io_timeout_ms` more.
    pub duration_ms_max: u64,
    /// Messages per second across all connections; `None` means flat out.
    pub rate_per_s: Option<f64>,
    /// Messages sent on one connection before QUIT and reconnect; 0 means unlimited (reuse).
    pub messages_per_connection: u32,
    /// Pipeline commands (RFC 2920) when the server offers PIPELINING.
    pub pipelining: bool,
    /// Message sizes in bytes with weights (at least one entry).
    pub sizes: Vec<(usize, f64)>,
    /// Recipients per message (>= 1).
    pub rcpts_per_message: u32,
    /// Destination domains with weights (at least one entry).
    pub domains: Vec<(String, f64)>,
    /// Require STARTTLS before MAIL (a server that does not offer it fails the message).
    pub starttls: bool,
    /// Offer TLS sessions from earlier connections (rustls's default). Off: every STARTTLS is
    /// a full handshake.
    pub tls_resumption: bool,
    /// AUTH PLAIN credentials (user, password), sent after STARTTLS if any.
    pub auth: Option<(String, String)>,
    /// Core threads; 0 means one per available core.
    pub threads: usize,
    /// Bound on every single network wait (connect, each reply), in milliseconds.
    pub io_timeout_ms: u64,
    /// Permit a non-loopback target.
    pub allow_non_loopback: bool,
    /// Show an indicatif progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Envelope sender.
    pub mail_from: String,
    /// EHLO name.
    pub helo_name: String,
    /// Run id carried in every id header; random when `None`.
    pub run_id: Option<u64>,
    /// When set to true (e.g. by a signal handler), no new message is started.
    pub stop_flag: Option<Arc<AtomicBool>>,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            target: SocketAddr::from(([127, 0, 0, 1], 2525)),
            connections: 20,
            messages: 10_000,
            duration_ms_max: 300_000,
            rate_per_s: None,
            messages_per_connection: 0,
            pipelining: true,
            sizes: vec![(1024, 1.0)],
            rcpts_per_message: 1,
            domains: vec![("example.test".to_string(), 1.0)],
            starttls: false,
            tls_resumption: true,
            auth: None,
            threads: 0,
            io_timeout_ms: 30_000,
            allow_non_loopback: false,
            progress: false,
            mail_from: "load@petrel-load.test".to_string(),
            helo_name: "petrel-load.test".to_string(),
            run_id: None,
            stop_flag: None,
        }
    }
}

/// Counts of outcomes. A message's outcome is its DATA reply class, or the class of the first
/// envelope reply that stopped it, or `error` (connect failure, timeout, drop, bad reply).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InjectCounts {
    pub messages_attempted: u64,
    pub messages_2xx: u64,
    pub messages_4xx: u64,
    pub messages_5xx: u64,
    pub messages_error: u64,
    pub rcpts_2xx: u64,
    pub rcpts_4xx: u64,
    pub rcpts_5xx: u64,
    pub connections_opened: u64,
    pub connect_errors: u64,
    /// Greetings that were not 2xx (e.g. 421 over a connection limit).
    pub greetings_rejected: u64,
    /// EHLO replies that advertised STARTTLS.
    pub starttls_offered: u64,
    /// EHLO replies that advertised PIPELINING.
    pub pipelining_offered: u64,
    /// Envelopes written in the same write as the previous message's end of data (PIPELINING,
    /// and the next message already due): that message took one round trip to the server
    /// instead of two. A paced run that keeps its schedule merges none; an unpaced one merges
    /// all but each connection's first.
    #[serde(default)]
    pub envelopes_merged: u64,
    pub tls_sessions: u64,
    /// TLS sessions that resumed an earlier one (the rest were full handshakes).
    pub tls_resumed: u64,
    /// STARTTLS was required but not offered (the message counts as an error).
    pub starttls_missing: u64,
    pub auth_failures: u64,
    /// Connections that ended in a read/write error, EOF or timeout.
    pub io_errors: u64,
    pub timeouts: u64,
    pub bytes_sent: u64,
}

impl InjectCounts {
    fn add(&mut self, o: &InjectCounts) {
        macro_rules! add { ($($f:ident),*) => { $( self.$f += o.$f; )* } }
        add!(
            messages_attempted,
            messages_2xx,
            messages_4xx,
            messages_5xx,
            messages_error,
            rcpts_2xx,
            rcpts_4xx,
            rcpts_5xx,
            connections_opened,
            connect_errors,
            greetings_rejected,
            starttls_offered,
            pipelining_offered,
            envelopes_merged,
            tls_sessions,
            tls_resumed,
            starttls_missing,
            auth_failures,
            io_errors,
            timeouts,
            bytes_sent
        );
    }
}

/// Latency per phase, microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PhaseLatency {
    /// TCP connect.
    pub connect: LatencySummary,
    /// MAIL FROM written to its reply read.
    pub mail: LatencySummary,
    /// End of data written to its reply read.
    pub data: LatencySummary,
}

/// The injector's report (`--json` prints exactly this).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InjectReport {
    pub run_id: String,
    pub target: String,
    pub connections: u32,
    pub threads: usize,
    pub elapsed_s: f64,
    /// Accepted (2xx) messages per second of elapsed time.
    pub rate_2xx_per_s: f64,
    /// All outcomes per second of elapsed time.
    pub rate_attempted_per_s: f64,
    /// `"messages"` when every message got an outcome, else `"duration"`.
    pub stopped_by: String,
    pub counts: InjectCounts,
    pub latency_us: PhaseLatency,
    /// CPU seconds (user + system) of the whole process during the run.
    pub cpu_s: f64,
    pub cpu_s_per_1000_msgs: f64,
}

impl InjectReport {
    /// A human summary, several lines.
    pub fn human(&self) -> String {
        let c = &self.counts;
        let mut s = format!(
            "inject {} -> {}: {} attempted in {:.2}s ({:.0} msg/s accepted), stopped by {}\n",
            self.run_id,
            self.target,
            c.messages_attempted,
            self.elapsed_s,
            self.rate_2xx_per_s,
            self.stopped_by
        );
        s += &format!(
            "  messages 2xx={} 4xx={} 5xx={} error={} | rcpts 2xx={} 4xx={} 5xx={}\n",
            c.messages_2xx,
            c.messages_4xx,
            c.messages_5xx,
            c.messages_error,
            c.rcpts_2xx,
            c.rcpts_4xx,
            c.rcpts_5xx
        );
        s += &format!(
            "  connections={} connect_errors={} greetings_rejected={} io_errors={} timeouts={} tls={} (resumed {})\n",
            c.connections_opened, c.connect_errors, c.greetings_rejected, c.io_errors, c.timeouts,
            c.tls_sessions, c.tls_resumed
        );
        s += &self.latency_us.connect.human("connect");
        s.push('\n');
        s += &self.latency_us.mail.human("mail->reply");
        s.push('\n');
        s += &self.latency_us.data.human("data->reply");
        s.push('\n');
        s += &format!(
            "  cpu {:.2}s ({:.3} s per 1000 msgs), {} threads, {} connections\n",
            self.cpu_s, self.cpu_s_per_1000_msgs, self.threads, self.connections
        );
        s
    }
}

/// Injects messages as configured and returns the report. Blocks until done.
pub fn inject(cfg: InjectConfig) -> Result<InjectReport, LoadError> {
    validate(&cfg)?;
    let threads = match cfg.threads {
        0 => stream::default_threads(),
        n => n,
    }
    .min(cfg.connections as usize)
    .max(1);
    let shared = Arc::new(Shared::new(cfg)?);
    let cpu0 = process_cpu_s();
    let progress = shared.cfg.progress.then(|| spawn_progress(shared.clone()));
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let sh = shared.clone();
        let h = std::thread::Builder::new()
            .name(format!("petrel-inject-{t}"))
            .spawn(move || run_core(sh, t, threads))
            .map_err(LoadError::io("spawning injector thread"))?;
        handles.push(h);
    }
    let mut total = ThreadStats::new();
    let mut thread_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(ts)) => total.merge(&ts),
            Ok(Err(e)) => thread_error = Some(e),
            Err(_) => thread_error = Some(LoadError::Config("injector thread panicked".into())),
        }
    }
    let elapsed_s = shared.start.elapsed().as_secs_f64().max(1e-9);
    shared.finished.store(true, Ordering::Release);
    if let Some(p) = progress {
        let _ = p.join();
    }
    if let Some(e) = thread_error {
        return Err(e);
    }
    let cpu_s = (process_cpu_s() - cpu0).max(0.0);
    let c = total.counts;
    let stopped_by = if c.messages_attempted >= shared.cfg.messages {
        "messages"
    } else if shared
        .cfg
        .stop_flag
        .as_ref()
        .is_some_and(|f| f.load(Ordering::Relaxed))
    {
        "signal"
    } else {
        "duration"
    };
    Ok(InjectReport {
        run_id: format!("{:016x}", shared.run_id),
        target: shared.cfg.target.to_string(),
        connections: shared.cfg.connections,
        threads,
        elapsed_s,
        rate_2xx_per_s: c.messages_2xx as f64 / elapsed_s,
        rate_attempted_per_s: c.messages_attempted as f64 / elapsed_s,
        stopped_by: stopped_by.to_string(),
        latency_us: PhaseLatency {
            connect: LatencySummary::from_histogram(&total.connect),
            mail: LatencySummary::from_histogram(&total.mail),
            data: LatencySummary::from_histogram(&total.data),
        },
        cpu_s,
        cpu_s_per_1000_msgs: if c.messages_attempted > 0 {
            cpu_s * 1000.0 / c.messages_attempted as f64
        } else {
            0.0
        },
        counts: c,
    })
}

fn validate(cfg: &InjectConfig) -> Result<(), LoadError> {
    check_loopback(cfg.target, cfg.allow_non_loopback)?;
    let bad = |m: &str| Err(LoadError::Config(m.to_string()));
    if cfg.connections == 0 || cfg.connections > CONNECTIONS_MAX {
        return bad("connections must be in 1..=100000");
    }
    if cfg.sizes.is_empty()
        || cfg
            .sizes
            .iter()
            .any(|(s, w)| *s > MESSAGE_SIZE_BYTES_MAX || *w < 0.0)
    {
        return bad("sizes: at least one, each <= 64 MiB with a weight >= 0");
    }
    if cfg.domains.is_empty()
        || cfg.domains.len() > DOMAINS_MAX
        || cfg.domains.iter().any(|(_, w)| *w < 0.0)
    {
        return bad("domains: 1..=1000000 with weights >= 0");
    }
    if cfg.rcpts_per_message == 0 || cfg.rcpts_per_message > RCPTS_PER_MESSAGE_MAX {
        return bad("rcpts per message must be in 1..=1000");
    }
    if cfg.rate_per_s.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return bad("rate must be > 0");
    }
    if cfg.io_timeout_ms == 0 {
        return bad("io timeout must be > 0");
    }
    Ok(())
}

/// State shared by every connection of every core thread (read-mostly).
pub(crate) struct Shared {
    pub cfg: InjectConfig,
    pub run_id: u64,
    /// Next ticket to hand out; tickets >= cfg.messages are not used.
    next: AtomicU64,
    /// Tickets that have an outcome (for the progress bar).
    pub done: AtomicU64,
    pub start: Instant,
    /// No ticket is handed out at or after this instant.
    pub deadline: Instant,
    pub io_timeout: Duration,
    /// Body filler: whole lines of 78 bytes (76 characters + CRLF).
    pub filler: Vec<u8>,
    size_cum: Vec<(usize, f64)>,
    domain_cum: Vec<f64>,
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// `AUTH PLAIN <base64>\r\n`, precomputed.
    pub auth_line: Option<Vec<u8>>,
    finished: AtomicBool,
}

/// Length of one filler line including CRLF.
pub(crate) const FILLER_LINE_BYTES: usize = 78;

impl Shared {
    fn new(cfg: InjectConfig) -> Result<Self, LoadError> {
        let max_size = cfg.sizes.iter().map(|(s, _)| *s).max().unwrap_or(0);
        let lines = max_size / FILLER_LINE_BYTES + 1;
        let mut filler = Vec::with_capacity(lines * FILLER_LINE_BYTES);
        let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        for l in 0..lines {
            for i in 0..FILLER_LINE_BYTES - 2 {
                filler.push(alphabet[(l + i) % alphabet.len()]);
            }
            filler.extend_from_slice(b"\r\n");
        }
        let tls = if cfg.starttls {
            Some(tokio_rustls::TlsConnector::from(tls::insecure_client(
                cfg.tls_resumption,
            )?))
        } else {
            None
        };
        let auth_line = cfg.auth.as_ref().map(|(u, p)| {
            use base64::Engine;
            let raw = format!("\0{u}\0{p}");
            format!(
                "AUTH PLAIN {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
            .into_bytes()
        });
        let start = Instant::now();
        Ok(Self {
            run_id: cfg.run_id.unwrap_or_else(|| rand::thread_rng().gen()),
            next: AtomicU64::new(0),
            done: AtomicU64::new(0),
            start,
            deadline: start + Duration::from_millis(cfg.duration_ms_max),
            io_timeout: Duration::from_millis(cfg.io_timeout_ms),
            filler,
            size_cum: cumulative(cfg.sizes.iter().map(|(s, w)| (*s, *w))),
            domain_cum: cumulative(cfg.domains.iter().enumerate().map(|(i, (_, w))| (i, *w)))
                .into_iter()
                .map(|(_, c)| c)
                .collect(),
            tls,
            auth_line,
            finished: AtomicBool::new(false),
            cfg,
        })
    }

    /// Claims the next ticket, or `None` when the count or the duration is used up.
    pub fn claim(&self) -> Option<u64> {
        if Instant::now() >= self.deadline
            || self
                .cfg
                .stop_flag
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n < self.cfg.messages).then_some(n)
    }

    /// When ticket `n` is due under the target rate (`None`: now).
    pub fn due(&self, n: u64) -> Option<Instant> {
        let rate = self.cfg.rate_per_s?;
        Some(self.start + Duration::from_secs_f64(n as f64 / rate))
    }

    /// A message size drawn from the distribution.
    pub fn pick_size(&self, rng: &mut impl Rng) -> usize {
        pick(&self.size_cum, rng).unwrap_or(1024)
    }

    /// A destination domain drawn from the weights.
    pub fn pick_domain(&self, rng: &mut impl Rng) -> &str {
        let total = self.domain_cum.last().copied().unwrap_or(0.0);
        let x = rng.gen::<f64>() * total;
        let i = self
            .domain_cum
            .partition_point(|c| *c <= x)
            .min(self.cfg.domains.len() - 1);
        &self.cfg.domains[i].0
    }
}

fn cumulative<T: Copy>(items: impl Iterator<Item = (T, f64)>) -> Vec<(T, f64)> {
    let mut acc = 0.0;
    items
        .map(|(v, w)| {
            acc += w;
            (v, acc)
        })
        .collect()
}

fn pick<T: Copy>(cum: &[(T, f64)], rng: &mut impl Rng) -> Option<T> {
    let total = cum.last()?.1;
    let x = rng.gen::<f64>() * total;
    let i = cum.partition_point(|(_, c)| *c <= x).min(cum.len() - 1);
    Some(cum[i].0)
}

/// Per-core-thread statistics.
pub(crate) struct ThreadStats {
    pub counts: InjectCounts,
    pub connect: Histogram<u64>,
    pub mail: Histogram<u64>,
    pub data: Histogram<u64>,
}

impl ThreadStats {
    fn new() -> Self {
        Self {
            counts: InjectCounts::default(),
            connect: new_histogram(),
            mail: new_histogram(),
            data: new_histogram(),
        }
    }

    fn merge(&mut self, o: &ThreadStats) {
        self.counts.add(&o.counts);
        // Histograms built with identical bounds always merge.
        let _ = self.connect.add(&o.connect);
        let _ = self.mail.add(&o.mail);
        let _ = self.data.add(&o.data);
    }
}

fn run_core(sh: Arc<Shared>, t: usize, threads: usize) -> Result<ThreadStats, LoadError> {
    let rt = stream::core_runtime().map_err(LoadError::io("building runtime"))?;
    let local = tokio::task::LocalSet::new();
    let stats = Rc::new(RefCell::new(ThreadStats::new()));
    let hard_stop = tokio::time::Instant::from_std(sh.deadline + sh.io_timeout * 2);
    local.block_on(&rt, async {
        let mut tasks = Vec::new();
        for c in (t..sh.cfg.connections as usize).step_by(threads) {
            let rng = rand::rngs::StdRng::seed_from_u64(
                sh.run_id ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            tasks.push(tokio::task::spawn_local(connection_loop(
                sh.clone(),
                stats.clone(),
                rng,
            )));
        }
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        let _ = tokio::time::timeout_at(hard_stop, all).await;
    });
    drop(local);
    let out = std::mem::replace(&mut *stats.borrow_mut(), ThreadStats::new());
    Ok(out)
}

fn spawn_progress(sh: Arc<Shared>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let bar = indicatif::ProgressBar::new(sh.cfg.messages);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        while !sh.finished.load(Ordering::Acquire) {
            bar.set_position(sh.done.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.finish_and_clear();
    })
}
