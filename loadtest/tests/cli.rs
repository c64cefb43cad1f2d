//! The command line: JSON reports parse, `--expect` exits, bounded sink, scenarios run and stop
//! the processes they start.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use petrel_loadtest::{inject, start_sink, InjectConfig, SinkConfig};

const BIN: &str = env!("CARGO_BIN_EXE_petrel-load");

/// A free loopback port, bound and released: only for the scenario whose engine command must be
/// told its address in advance (a scenario's `target` is fixed before the engine starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `petrel-load sink --listen 127.0.0.1:0 ARGS` and returns it with the address it bound,
/// read from its "listening on" line: no port is picked before the sink binds it.
fn spawn_sink(args: &[&str]) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args(["sink", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = line.strip_prefix("petrel load sink listening on ") {
                let _ = tx.send(addr.trim().parse::<std::net::SocketAddr>().unwrap());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(addr) => (child, addr),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the sink printed no listening line");
        }
    }
}

/// Waits for a child with a bound; kills it (by PID) if the bound passes.
fn wait_bounded(child: &mut std::process::Child, bound: Duration) -> Option<i32> {
    let end = Instant::now() + bound;
    while Instant::now() < end {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn inject_json_report_parses() {
    let s = start_sink(SinkConfig {
        threads: 1,
        ..SinkConfig::default()
    })
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "inject",
            "--target",
            &s.addr().to_string(),
            "--messages",
            "120",
            "--connections",
            "3",
        ])
        .args([
            "--size",
            "1024:0.5,4096:0.5",
            "--domains",
            "10",
            "--domain-weights",
            "zipf",
            "--rcpts",
            "2",
        ])
        .args(["--threads", "1", "--duration", "20s", "--json", "--strict"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["counts"]["messages_2xx"], 120);
    assert_eq!(v["counts"]["rcpts_2xx"], 240);
    assert_eq!(v["stopped_by"], "messages");
    for phase in ["connect", "mail", "data"] {
        assert!(v["latency_us"][phase]["p99_us"].is_u64(), "{phase}");
        assert!(v["latency_us"][phase]["p999_us"].is_u64(), "{phase}");
    }
    assert!(v["cpu_s_per_1000_msgs"].is_f64());
    let report: petrel_loadtest::InjectReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.counts.messages_attempted, 120);
    assert_eq!(s.stop().unique_ids, 120);
}

#[test]
fn sink_expect_exits_with_json_report() {
    let (mut child, addr) = spawn_sink(&[
        "--expect",
        "75",
        "--duration",
        "30s",
        "--threads",
        "1",
        "--json",
    ]);
    let cfg = InjectConfig {
        target: addr,
        messages: 75,
        connections: 3,
        threads: 1,
        ..InjectConfig::default()
    };
    assert_eq!(inject(cfg).unwrap().counts.messages_2xx, 75);
    assert_eq!(wait_bounded(&mut child, Duration::from_secs(10)), Some(0));
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(v["unique_ids"], 75);
    assert_eq!(v["duplicates"], 0);
    assert!(v["arrival_latency_us"]["p50_us"].is_u64());
}

#[test]
fn sink_duration_bounds_an_unmet_expectation() {
    let (mut child, _) = spawn_sink(&["--expect", "10", "--duration", "500ms"]);
    assert_eq!(wait_bounded(&mut child, Duration::from_secs(10)), Some(1));
}

#[test]
fn sink_reports_on_sigterm() {
    let (mut child, addr) = spawn_sink(&["--duration", "60s", "--json"]);
    let cfg = InjectConfig {
        target: addr,
        messages: 10,
        connections: 1,
        threads: 1,
        ..InjectConfig::default()
    };
    inject(cfg).unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(wait_bounded(&mut child, Duration::from_secs(10)), Some(0));
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(v["unique_ids"], 10);
}

#[test]
fn inject_refuses_non_loopback() {
    let out = Command::new(BIN)
        .args(["inject", "--target", "192.0.2.1:25", "--messages", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn scenario_inject_only_completes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        "name = \"t\"\nwait_s = 10\n[inject]\nmessages = 200\nconnections = 4\nthreads = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", path.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["delivered"], 200);
    assert_eq!(v["complete"], true);
    assert!(v["end_to_end_rate_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn shipped_scenarios_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        petrel_loadtest::load_scenario(&p).unwrap_or_else(|err| panic!("{}: {err}", p.display()));
        n += 1;
    }
    assert!(n >= 3);
}

#[test]
fn scenario_stops_the_engine_it_started() {
    // The "engine" is another sink that does not relay: the run is incomplete, bounded by
    // wait_s, and the engine process must be gone afterwards.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    let scenario = format!(
        "name = \"stop\"\nwait_s = 1\n[engine]\ncommand = [\"{BIN}\", \"sink\", \"--listen\", \"{{target}}\", \"--threads\", \"1\"]\n\
         target = \"127.0.0.1:{port}\"\nready_s = 10\nstop_s = 5\n[inject]\nmessages = 20\nconnections = 2\nthreads = 1\n"
    );
    std::fs::write(&path, scenario).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", path.to_str().unwrap(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(wait_bounded(&mut child, Duration::from_secs(30)), Some(1));
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["complete"], false);
    assert_eq!(v["inject"]["counts"]["messages_2xx"], 20);
    assert_eq!(v["delivered"], 0);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "engine still listening"
    );
}
