//! Shared helpers for the end-to-end tests: start a real `petrel` process, talk SMTP to it over
//! loopback, stop it by PID.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use petrel_testkit::http::Request;

pub mod control;
pub mod control_process;

/// How long an engine may take to print its ready line.
pub const ENGINE_READY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn petrel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_petrel"))
}

pub struct Engine {
    pub child: Child,
    pub smtp: SocketAddr,
    pub metrics: SocketAddr,
    pub admin: SocketAddr,
    /// `[[smtp.listeners]]` as bound: (profile, address), from the `listener:` ready lines.
    pub listeners: Vec<(String, SocketAddr)>,
    pub data_dir: PathBuf,
    pub stdout_lines: mpsc::Receiver<String>,
}

impl Engine {
    /// Starts `petrel engine` with loopback ports and the given extra arguments.
    pub fn start<S: AsRef<std::ffi::OsStr>>(data_dir: &Path, extra: &[S]) -> Engine {
        Self::start_with(data_dir, extra, None)
    }

    pub fn start_with<S: AsRef<std::ffi::OsStr>>(
        data_dir: &Path,
        extra: &[S],
        config: Option<&str>,
    ) -> Engine {
        Self::start_logging(data_dir, extra, config, "warn", Stdio::inherit())
    }

    /// [`Engine::start_with`] logging at `info` into `<data_dir>/engine.log` (returned), for
    /// tests that read what the engine logs.
    pub fn start_logged<S: AsRef<std::ffi::OsStr>>(
        data_dir: &Path,
        extra: &[S],
        config: Option<&str>,
    ) -> (Engine, PathBuf) {
        std::fs::create_dir_all(data_dir).unwrap();
        let log = data_dir.join("engine.log");
        let file = std::fs::File::create(&log).expect("create the engine log");
        (
            Self::start_logging(data_dir, extra, config, "info", Stdio::from(file)),
            log,
        )
    }

    fn start_logging<S: AsRef<std::ffi::OsStr>>(
        data_dir: &Path,
        extra: &[S],
        config: Option<&str>,
        level: &str,
        stderr: Stdio,
    ) -> Engine {
        let mut cmd = Command::new(petrel_bin());
        cmd.arg("engine")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--smtp-listen", "127.0.0.1:0"])
            // Port 0 everywhere: the engine prints what it bound, so no two tests race for a port.
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .arg("--no-pin")
            .args(extra);
        if let Some(text) = config {
            let path = data_dir.join("petrel-test.toml");
            std::fs::create_dir_all(data_dir).unwrap();
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        }
        cmd.env("PETREL_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd.spawn().expect("spawn petrel engine");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + ENGINE_READY_TIMEOUT;
        let (mut smtp, mut metrics, mut admin) = (None, None, None);
        let mut listeners = Vec::new();
        while smtp.is_none() || metrics.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!("engine did not become ready in {ENGINE_READY_TIMEOUT:?}");
            };
            let addr = |rest: &str, suffix: &str| -> SocketAddr {
                let rest = rest.split_whitespace().next().unwrap();
                rest.strip_suffix(suffix).unwrap_or(rest).parse().unwrap()
            };
            if let Some(rest) = line.strip_prefix("petrel engine ready: smtp=") {
                smtp = Some(addr(rest, ""));
            } else if let Some(rest) = line.trim_start().strip_prefix("metrics: http://") {
                metrics = Some(addr(rest, "/metrics"));
            } else if let Some(rest) = line.trim_start().strip_prefix("admin:   http://") {
                admin = Some(addr(rest, "/v1/queue"));
            } else if let Some(rest) = line.trim_start().strip_prefix("listener: ") {
                let (profile, rest) = rest.split_once(" smtp=").unwrap();
                listeners.push((profile.to_string(), addr(rest, "")));
            }
        }
        let (smtp, metrics, admin) = (smtp.unwrap(), metrics.unwrap(), admin.unwrap());
        Engine {
            child,
            smtp,
            metrics,
            admin,
            listeners,
            data_dir: data_dir.to_path_buf(),
            stdout_lines: rx,
        }
    }

    /// SIGTERM, then wait (bounded); returns the exit status success.
    pub fn stop(mut self) -> bool {
        let pid = self.child.id() as i32;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The metrics exposition (Prometheus text).
    pub fn scrape(&self) -> String {
        Request::get("/metrics")
            .send(self.metrics)
            .expect("metrics endpoint answers")
            .text()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A raw SMTP client for dialogue checks (replies are read whole, multi-line aware).
pub struct Smtp {
    reader: BufReader<TcpStream>,
}

impl Smtp {
    pub fn connect(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("smtp connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Smtp {
            reader: BufReader::new(s),
        }
    }

    /// Reads one (possibly multi-line) reply; returns (code, full text).
    pub fn reply(&mut self) -> (u16, String) {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap_or(0);
            if n == 0 {
                return (0, all);
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (code, all);
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("smtp write");
    }

    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }
}

/// Sends one message over a fresh connection; returns the DATA reply (code, text).
pub fn send_one(addr: SocketAddr, from: &str, to: &str, body: &str) -> (u16, String) {
    let mut c = Smtp::connect(addr);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    if r.0 != 250 {
        return r;
    }
    let r = c.cmd(&format!("RCPT TO:<{to}>"));
    if r.0 != 250 {
        return r;
    }
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(body.as_bytes());
    c.send(b".\r\n");
    let r = c.reply();
    let _ = c.cmd("QUIT");
    r
}

/// A small RFC 5322 message with CRLF line ends.
pub fn message(from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nHello.\r\n"
    )
}

/// `petrel spool ls --json --data-dir DIR`: the ids in the spool.
pub fn spool_ids(data_dir: &Path) -> Vec<String> {
    let out = Command::new(petrel_bin())
        .args(["spool", "ls", "--json", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("petrel spool ls");
    assert!(
        out.status.success(),
        "spool ls failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("spool ls --json line");
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

pub fn spool_count(data_dir: &Path) -> u64 {
    let out = Command::new(petrel_bin())
        .args(["spool", "count", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("petrel spool count");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("count prints the number first")
}

/// Prometheus's promtool, if the test script fetched it (`PETREL_PROMTOOL`) or it is on PATH.
pub fn promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PETREL_PROMTOOL") {
        return Some(PathBuf::from(p));
    }
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| PathBuf::from("promtool"))
}

/// Runs `promtool check metrics` on an exposition text; returns what it printed on failure.
pub fn promtool_check_metrics(promtool: &Path, exposition: &str) -> Result<(), String> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .map_err(|e| format!("promtool stdin: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Writes `token` to `control.token` (mode 0600) next to `beside` (a file of the test's
/// directory) and returns its path for `--control-token-file`: secrets never go on the command
/// line.
pub fn token_file(beside: &Path, token: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = beside.with_file_name("control.token");
    std::fs::write(&path, token).expect("write the token file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the token file");
    path.to_str().expect("a UTF-8 path").to_string()
}

/// The flags of an engine with `shards` shards relaying to `relay_to` and linked to the control
/// plane whose push listener is `push`: its certificate (`push_cert_pem`, written to
/// `<dir>/push.pem`) and `token` (in a file there, [`token_file`]). Tests add their own flags.
pub fn linked_engine_args(
    dir: &Path,
    push: SocketAddr,
    push_cert_pem: &str,
    token: &str,
    shards: u32,
    relay_to: SocketAddr,
) -> Vec<String> {
    let ca = dir.join("push.pem");
    std::fs::write(&ca, push_cert_pem).expect("write the push certificate");
    vec![
        "--shards".into(),
        shards.to_string(),
        "--relay-to".into(),
        relay_to.to_string(),
        "--control".into(),
        push.to_string(),
        "--control-token-file".into(),
        token_file(&ca, token),
        "--control-ca".into(),
        ca.to_str().expect("a UTF-8 path").to_string(),
    ]
}
