//! The client against Postfix's `smtp-sink`, an independent server implementation, when it is
//! installed (Debian: postfix). Skipped, with a note, when it is not.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use petrel_outbound::{ClientConfig, RcptOutcome, SmtpConnection, TlsMode};
use petrel_testkit::glommio::run as glommio_run;
use petrel_testkit::outbound::client_config;

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
/// How long smtp-sink may take to start listening.
const START_TIMEOUT_MS: u64 = 5_000;

/// A running smtp-sink, killed on drop.
struct Sink {
    child: Child,
    addr: SocketAddr,
}

impl Sink {
    fn start(extra_args: &[&str]) -> Option<Sink> {
        if !Path::new(SMTP_SINK).exists() {
            eprintln!("skipped: {SMTP_SINK} is not installed");
            return None;
        }
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?;
        let mut cmd = Command::new(SMTP_SINK);
        if nix_is_root() {
            cmd.args(["-u", "postfix"]);
        }
        let child = cmd
            .args(extra_args)
            .arg(addr.to_string())
            .arg("16")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut sink = Sink { child, addr };
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if started.elapsed() > Duration::from_millis(START_TIMEOUT_MS) {
                let _ = sink.child.kill();
                panic!("smtp-sink did not start listening on {addr}");
            }
            if let Ok(Some(status)) = sink.child.try_wait() {
                panic!("smtp-sink exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(sink)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn cfg() -> ClientConfig {
    client_config(TlsMode::Opportunistic)
}

#[test]
fn pipelined_delivery_to_smtp_sink() {
    let dump = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dump.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let template = format!("{}/msg.", dump.path().display());
    let Some(sink) = Sink::start(&["-d", &template]) else {
        return;
    };
    let addr = sink.addr;
    let (first, second, pipelining) = glommio_run(move || async move {
        let mut conn = SmtpConnection::connect(addr, "localhost", &cfg())
            .await
            .unwrap();
        let pipelining = conn.pipelining();
        let body = b"Subject: sink\r\n\r\n.hello from petrel\r\n";
        let first = conn
            .send("a@src.test", &["b@dst.test", "c@dst.test"], body)
            .await
            .unwrap();
        let second = conn
            .send("d@src.test", &["e@dst.test"], body)
            .await
            .unwrap();
        conn.quit().await;
        (first, second, pipelining)
    });
    assert!(pipelining);
    for o in [&first, &second] {
        assert!(o.rcpts.iter().all(|r| *r == RcptOutcome::Accepted), "{o:?}");
        assert_eq!(o.data.as_ref().map(|r| r.code), Some(250), "{o:?}");
    }
    drop(sink);
    let dumped: Vec<String> = std::fs::read_dir(dump.path())
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    assert_eq!(dumped.len(), 2, "one dump per transaction");
    assert!(
        dumped.iter().all(|d| d.contains("\n.hello from petrel")),
        "{dumped:?}"
    );
}

#[test]
fn soft_rejected_recipients_from_smtp_sink() {
    let Some(sink) = Sink::start(&["-r", "RCPT"]) else {
        return;
    };
    let addr = sink.addr;
    let out = glommio_run(move || async move {
        let mut conn = SmtpConnection::connect(addr, "localhost", &cfg())
            .await
            .unwrap();
        let out = conn
            .send("a@src.test", &["b@dst.test"], b"m\r\n")
            .await
            .unwrap();
        conn.quit().await;
        out
    });
    assert!(
        matches!(&out.rcpts[0], RcptOutcome::Rejected(r) if r.is_transient()),
        "{out:?}"
    );
    assert_eq!(out.data, None);
}
