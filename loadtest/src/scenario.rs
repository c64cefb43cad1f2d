//! `petrel load run SCENARIO`: start a sink, maybe an engine (any command line), inject, wait
//! for the arrivals (bounded), stop everything it started by PID, and report end to end.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cli::{make_domains, parse_domain_fault, parse_weighted_sizes};
use crate::inject::{inject, InjectConfig, InjectReport};
use crate::report::{unix_now_us, LatencySummary};
use crate::sink::{start_sink, SinkConfig, SinkStats};
use crate::LoadError;

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Bound for waiting for the arrivals after injection, in seconds.
    #[serde(default = "default_wait_s")]
    pub wait_s: u64,
    #[serde(default)]
    pub sink: SinkSection,
    pub engine: Option<EngineSection>,
    #[serde(default)]
    pub inject: InjectSection,
}

fn default_wait_s() -> u64 {
    120
}

/// Sink settings of a scenario.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkSection {
    /// Listen address (default 127.0.0.1:0, a free port).
    pub listen: Option<SocketAddr>,
    pub threads: usize,
    /// `{ "example.test" = 0.2 }`
    pub rcpt_tempfail: BTreeMap<String, f64>,
    pub rcpt_permfail: BTreeMap<String, f64>,
    pub data_tempfail: f64,
    pub data_permfail: f64,
    pub drop_in_data: f64,
    pub reply_delay_ms: u64,
    pub no_starttls: bool,
    pub no_pipelining: bool,
    pub no_chunking: bool,
    pub connections_max: Option<u32>,
}

/// The process under test.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// Program and arguments; `{sink}`, `{target}` and `{tmp}` are substituted.
    pub command: Vec<String>,
    /// Where the engine listens for SMTP (injection target).
    pub target: SocketAddr,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Bound for the engine to accept connections, in seconds.
    #[serde(default = "default_ready_s")]
    pub ready_s: u64,
    /// Bound between SIGTERM and SIGKILL, in seconds.
    #[serde(default = "default_stop_s")]
    pub stop_s: u64,
}

fn default_ready_s() -> u64 {
    30
}
fn default_stop_s() -> u64 {
    10
}

/// Injection settings of a scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InjectSection {
    pub messages: u64,
    pub connections: u32,
    pub size: String,
    pub rcpts: u32,
    pub domains: usize,
    pub domain_suffix: String,
    pub domain_weights: String,
    pub per_connection: u32,
    pub pipelining: bool,
    pub starttls: bool,
    pub rate: Option<f64>,
    pub duration_s: u64,
    pub threads: usize,
}

impl Default for InjectSection {
    fn default() -> Self {
        Self {
            messages: 10_000,
            connections: 20,
            size: "1024".into(),
            rcpts: 1,
            domains: 1,
            domain_suffix: "example.test".into(),
            domain_weights: "uniform".into(),
            per_connection: 0,
            pipelining: true,
            starttls: false,
            rate: None,
            duration_s: 300,
            threads: 0,
        }
    }
}

/// The end-to-end report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub scenario: String,
    /// Messages the target accepted (each should arrive once at the sink).
    pub expected: u64,
    /// Unique ids that arrived at the sink.
    pub delivered: u64,
    pub complete: bool,
    /// From the start of injection to the last arrival, in seconds.
    pub end_to_end_s: f64,
    pub end_to_end_rate_per_s: f64,
    /// Injection to arrival (from the id header timestamp), microseconds.
    pub arrival_latency_us: LatencySummary,
    pub inject: InjectReport,
    pub sink: SinkStats,
}

impl RunReport {
    pub fn human(&self) -> String {
        format!(
            "scenario {}: delivered {}/{} ({}), end to end {:.2}s = {:.0} msg/s\n{}\n{}{}",
            self.scenario,
            self.delivered,
            self.expected,
            if self.complete {
                "complete"
            } else {
                "INCOMPLETE"
            },
            self.end_to_end_s,
            self.end_to_end_rate_per_s,
            self.arrival_latency_us.human("inject->arrival"),
            self.inject.human(),
            self.sink.human()
        )
    }
}

/// Reads a scenario file.
pub fn load(path: &Path) -> Result<Scenario, LoadError> {
    let err = |reason: String| LoadError::Scenario {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    toml::from_str(&text).map_err(|e| err(e.to_string()))
}

/// Runs a scenario end to end. `stop`: when it turns true, injection stops and waiting ends
/// early (every started process is still stopped).
pub fn run_scenario(sc: &Scenario, stop: Option<Arc<AtomicBool>>) -> Result<RunReport, LoadError> {
    let mut sink_cfg = SinkConfig {
        listen: sc
            .sink
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        threads: sc.sink.threads,
        data_tempfail: sc.sink.data_tempfail,
        data_permfail: sc.sink.data_permfail,
        drop_in_data: sc.sink.drop_in_data,
        reply_delay_ms: sc.sink.reply_delay_ms,
        starttls: !sc.sink.no_starttls,
        pipelining: !sc.sink.no_pipelining,
        chunking: !sc.sink.no_chunking,
        ..SinkConfig::default()
    };
    if let Some(m) = sc.sink.connections_max {
        sink_cfg.connections_max = m;
    }
    let faults = |m: &BTreeMap<String, f64>| {
        m.iter()
            .map(|(d, p)| parse_domain_fault(&format!("{d}={p}")).map_err(LoadError::Config))
            .collect::<Result<Vec<_>, _>>()
    };
    sink_cfg.rcpt_tempfail = faults(&sc.sink.rcpt_tempfail)?;
    sink_cfg.rcpt_permfail = faults(&sc.sink.rcpt_permfail)?;
    let sink = start_sink(sink_cfg)?;
    let tmp = std::env::temp_dir().join(format!(
        "petrel-load-{}-{}",
        std::process::id(),
        unix_now_us()
    ));
    std::fs::create_dir_all(&tmp).map_err(LoadError::io("creating the scenario temp dir"))?;
    let result = run_with_sink(sc, &sink, &tmp, stop);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn run_with_sink(
    sc: &Scenario,
    sink: &crate::SinkHandle,
    tmp: &Path,
    stop: Option<Arc<AtomicBool>>,
) -> Result<RunReport, LoadError> {
    let sink_addr = sink.addr();
    let (target, _engine) = match &sc.engine {
        Some(e) => {
            let guard = spawn_engine(e, sink_addr, tmp)?;
            (e.target, Some(guard))
        }
        None => (sink_addr, None),
    };
    let i = &sc.inject;
    let cfg = InjectConfig {
        target,
        connections: i.connections,
        messages: i.messages,
        duration_ms_max: i.duration_s.saturating_mul(1000),
        rate_per_s: i.rate,
        messages_per_connection: i.per_connection,
        pipelining: i.pipelining,
        sizes: parse_weighted_sizes(&i.size).map_err(LoadError::Config)?,
        rcpts_per_message: i.rcpts,
        domains: make_domains(i.domains, &i.domain_suffix, &i.domain_weights)?,
        starttls: i.starttls,
        threads: i.threads,
        stop_flag: stop.clone(),
        ..InjectConfig::default()
    };
    let start_us = unix_now_us();
    let inject_report = inject(cfg)?;
    let expected = inject_report.counts.messages_2xx;
    let end = Instant::now() + Duration::from_secs(sc.wait_s);
    let complete = loop {
        let slice = end
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        if sink.wait_for(expected, slice) {
            break true;
        }
        if Instant::now() >= end || stop.as_ref().is_some_and(|f| f.load(Ordering::Relaxed)) {
            break false;
        }
    };
    drop(_engine); // stops the engine (SIGTERM, then SIGKILL) before the final sink snapshot
    let stats = sink.stats();
    let end_to_end_s = sink.last_arrival_unix_us().saturating_sub(start_us) as f64 / 1e6;
    Ok(RunReport {
        scenario: sc.name.clone(),
        expected,
        delivered: stats.unique_ids,
        complete,
        end_to_end_s,
        end_to_end_rate_per_s: if end_to_end_s > 0.0 {
            stats.unique_ids as f64 / end_to_end_s
        } else {
            0.0
        },
        arrival_latency_us: stats.arrival_latency_us.clone(),
        inject: inject_report,
        sink: stats,
    })
}

/// A child process stopped on drop: SIGTERM by PID, then SIGKILL after the bound.
struct ChildGuard {
    child: Child,
    stop: Duration,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let end = Instant::now() + self.stop;
        while Instant::now() < end {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_engine(e: &EngineSection, sink: SocketAddr, tmp: &Path) -> Result<ChildGuard, LoadError> {
    crate::check_loopback(e.target, false)?;
    let subst = |s: &str| {
        s.replace("{sink}", &sink.to_string())
            .replace("{target}", &e.target.to_string())
            .replace("{tmp}", &tmp.display().to_string())
    };
    let (prog, args) = e
        .command
        .split_first()
        .ok_or_else(|| LoadError::Config("engine.command is empty".into()))?;
    let log = std::fs::File::create(tmp.join("engine.log"))
        .map_err(LoadError::io("creating engine.log"))?;
    let log2 = log
        .try_clone()
        .map_err(LoadError::io("cloning engine.log"))?;
    let child = Command::new(subst(prog))
        .args(args.iter().map(|a| subst(a)))
        .envs(&e.env)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(LoadError::io("spawning the engine"))?;
    let mut guard = ChildGuard {
        child,
        stop: Duration::from_secs(e.stop_s),
    };
    let end = Instant::now() + Duration::from_secs(e.ready_s);
    loop {
        if TcpStream::connect_timeout(&e.target, Duration::from_millis(200)).is_ok() {
            return Ok(guard);
        }
        if let Ok(Some(status)) = guard.child.try_wait() {
            let log = std::fs::read_to_string(tmp.join("engine.log")).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Err(LoadError::Config(format!(
                "engine exited early ({status}):\n{tail}"
            )));
        }
        if Instant::now() >= end {
            return Err(LoadError::Config(format!(
                "engine not listening on {} after {}s",
                e.target, e.ready_s
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
