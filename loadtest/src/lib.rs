//! Petrel's load-test harness: an SMTP injector, a smart SMTP sink and a scenario runner.
//!
//! Every benchmark and every end-to-end test of Petrel goes through this crate, so it has to be
//! trustworthy (every reply is checked and every outcome counted; each message carries a unique
//! `X-Petrel-Load-Id` header with its injection time so the sink can match arrivals to
//! injections, spot duplicates and measure end-to-end latency) and faster than what it
//! measures.
//!
//! Speed comes from the same shape as the engine: one thread per core, each running its own
//! current-thread tokio runtime (the sink gives each core an SO_REUSEPORT listener), buffers
//! allocated once per connection and reused for every message, replies batched per read, and
//! with PIPELINING one round trip per message on a reused connection (the end of data travels
//! with the next envelope). Statistics are per core and merged at the end (injector) or shared
//! atomics readable while running (sink). The trade-off: tokio's readiness model costs a few
//! extra syscalls compared with io_uring, in exchange for portable, simple code that does not
//! share its runtime with what it measures.
//!
//! Safety: everything is bounded in count and in time (messages, duration, per-wait timeouts,
//! line and message sizes, tracked ids), and targets default to loopback: a non-loopback target
//! needs `allow_non_loopback`. TLS uses a self-signed certificate (sink) and accepts any
//! certificate (injector); it is for tests only.
//!
//! Entry points: [`run`] for the `petrel load` command line ([`LoadCommand`]), and for
//! in-process tests [`start_sink`] / [`SinkHandle`] and [`inject`].
// No unwrap outside tests: propagate a typed error, or `expect` an invariant checked right there.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod cli;
mod error;
mod inject;
mod inject_conn;
pub mod msgid;
mod report;
mod scenario;
mod sink;
mod sink_session;
mod stream;
mod tls;
pub use tls::AcceptAny;

pub use cli::{parse_duration, InjectArgs, RunArgs, SinkArgs};
pub use error::{check_loopback, LoadError};
pub use inject::{inject, InjectConfig, InjectCounts, InjectReport, PhaseLatency};
pub use report::LatencySummary;
pub use scenario::{load as load_scenario, run_scenario, RunReport, Scenario};
pub use sink::{
    start_sink, DomainFault, OverLimit, ReceivedMessage, SinkConfig, SinkHandle, SinkStats,
};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `petrel load ...` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LoadCommand {
    /// Inject SMTP messages at a target rate or flat out, and report outcomes and latency.
    Inject(InjectArgs),
    /// Run a smart SMTP sink (fault injection, counting, duplicate detection).
    Sink(SinkArgs),
    /// Run a scenario: sink, engine, injection, end-to-end report.
    Run(RunArgs),
}

/// Runs one subcommand; returns the process exit code (0 success, 1 incomplete or failed
/// expectations). Harness errors (bad config, cannot bind) are returned as `Err`.
pub fn run(cmd: LoadCommand) -> anyhow::Result<i32> {
    match cmd {
        LoadCommand::Inject(a) => {
            let stop = stop_on_signals()?;
            let report = inject(InjectConfig {
                stop_flag: Some(stop),
                ..a.to_config()?
            })?;
            if a.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                eprint!("{}", report.human());
            }
            let all_ok = report.counts.messages_2xx == report.counts.messages_attempted
                && report.counts.messages_attempted > 0;
            Ok(if a.strict && !all_ok { 1 } else { 0 })
        }
        LoadCommand::Sink(a) => {
            let stop = stop_on_signals()?;
            let handle = start_sink(a.to_config()?)?;
            eprintln!("petrel load sink listening on {}", handle.addr());
            let end = Instant::now() + a.duration;
            let reached = loop {
                let slice = end
                    .saturating_duration_since(Instant::now())
                    .min(SIGNAL_POLL);
                if let Some(n) = a.expect {
                    if handle.wait_for(n, slice) {
                        break true;
                    }
                } else {
                    std::thread::sleep(slice);
                }
                if Instant::now() >= end {
                    break a.expect.is_none();
                }
                if stop.load(Ordering::Relaxed) {
                    break a.expect.is_none();
                }
            };
            let stats = handle.stop();
            if a.json {
                println!("{}", serde_json::to_string(&stats)?);
            } else {
                eprint!("{}", stats.human());
            }
            Ok(if reached { 0 } else { 1 })
        }
        LoadCommand::Run(a) => {
            let sc = load_scenario(&a.scenario)?;
            let report = run_scenario(&sc, Some(stop_on_signals()?))?;
            if a.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                eprint!("{}", report.human());
            }
            Ok(if report.complete { 0 } else { 1 })
        }
    }
}

/// How often blocking waits check for SIGINT/SIGTERM.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// SIGINT and SIGTERM set the returned flag instead of killing the process, so runs end cleanly:
/// reports are printed and started processes are stopped.
fn stop_on_signals() -> Result<Arc<AtomicBool>, LoadError> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, flag.clone())
            .map_err(LoadError::io("installing a signal handler"))?;
    }
    Ok(flag)
}
