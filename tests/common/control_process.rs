//! `petrel control serve` as a process of its own, so a test can kill it -9 or run two nodes
//! on one PostgreSQL database.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{petrel_bin, token_file};

/// How long a control plane process may take to answer its API.
pub const CONTROL_START_MAX: Duration = Duration::from_secs(30);

/// One control plane node; killed (by PID) when dropped.
pub struct ControlProcess {
    child: std::process::Child,
    pub api: SocketAddr,
    /// The operator owner key, printed at the first start of a database only.
    pub owner: Option<String>,
}

impl ControlProcess {
    /// A node on SQLite under `data`, with its push certificate at `data/push.pem` and
    /// `data/push.key` and the push token `token`.
    pub fn start(data: &std::path::Path, push: SocketAddr, dns: SocketAddr, token: &str) -> Self {
        Self::start_with(data, push, dns, token, &[])
    }

    /// [`ControlProcess::start`] with more flags (`--database-url`, `--key-file`...).
    pub fn start_with(
        data: &std::path::Path,
        push: SocketAddr,
        dns: SocketAddr,
        token: &str,
        extra: &[String],
    ) -> Self {
        use std::io::BufRead;
        let api = free_port();
        let child = std::process::Command::new(petrel_bin())
            .args(["control", "serve", "--data-dir"])
            .arg(data)
            .args([
                "--api-listen",
                &api.to_string(),
                "--push-listen",
                &push.to_string(),
            ])
            .arg("--push-tls-cert")
            .arg(data.join("push.pem"))
            .arg("--push-tls-key")
            .arg(data.join("push.key"))
            .args([
                "--dns-nameserver",
                &dns.to_string(),
                "--webhooks-allow-loopback",
            ])
            .arg("--push-token-file")
            .arg(token_file(&data.join("push.pem"), token))
            .args(extra)
            .env("PETREL_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn petrel control serve");
        let mut me = ControlProcess {
            child,
            api,
            owner: None,
        };
        let stdout = me.child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(key) = line.split("keep it): ").nth(1) {
                    let _ = tx.send(key.trim().to_string());
                }
            }
        });
        let deadline = Instant::now() + CONTROL_START_MAX;
        while std::net::TcpStream::connect(api).is_err() {
            assert!(
                Instant::now() < deadline,
                "the control plane never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        me.owner = rx.recv_timeout(Duration::from_millis(500)).ok();
        me
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address no one listens on right now.
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Writes a self-signed push certificate and key (`push.pem`, `push.key`) into `dir` and
/// returns the certificate's PEM (for the engines' `--control-ca`).
pub fn push_cert(dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir).expect("the control directory");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("a self-signed certificate");
    std::fs::write(dir.join("push.pem"), cert.cert.pem()).expect("push.pem");
    std::fs::write(dir.join("push.key"), cert.key_pair.serialize_pem()).expect("push.key");
    cert.cert.pem()
}

/// A fresh database on the PostgreSQL server `PETREL_TEST_PG_URL` names (ops/test.sh starts
/// one), as a URL; None (the caller says SKIPPED) without it.
pub fn pg_database(prefix: &str) -> Option<String> {
    let base = std::env::var("PETREL_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let db = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let created = std::process::Command::new("psql")
        .args([base.as_str(), "-q", "-c", &format!("CREATE DATABASE {db}")])
        .status()
        .expect("psql runs");
    assert!(created.success(), "CREATE DATABASE {db}");
    let (root, query) = match base.split_once('?') {
        Some((m, q)) => (m, format!("?{q}")),
        None => (base.as_str(), String::new()),
    };
    let authority = root.find("://").map_or(0, |i| i + 3);
    let server = match root[authority..].find('/') {
        Some(i) => &root[..authority + i],
        None => root,
    };
    Some(format!("{server}/{db}{query}"))
}
