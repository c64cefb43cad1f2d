//! `petrel up`: the README's first command starts the control plane and the engine together,
//! prints the development credentials once, and those credentials work for SMTP AUTH.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};

/// Starts of `petrel up` tried before the test gives up (see the port note in the test).
const UP_START_ATTEMPTS_MAX: u32 = 3;

#[test]
fn up_prints_working_development_credentials() {
    up_and_send(&|| Vec::new());
}

/// The same with the control plane on PostgreSQL (`--database-url`), in a fresh database of the
/// server `PETREL_TEST_PG_URL` names (ops/test.sh starts one); skipped with a visible line
/// without it.
#[test]
fn up_runs_on_postgresql_with_a_database_url() {
    let Some(base) = std::env::var("PETREL_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED: PETREL_TEST_PG_URL not set");
        return;
    };
    // A fresh database per start: a start retried after a port race must show its keys again.
    let last_url = std::cell::RefCell::new(String::new());
    let fresh_database = || {
        let db = format!("up_{}_{}", std::process::id(), free_port());
        let created = Command::new("psql")
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
        let url = format!("{server}/{db}{query}");
        *last_url.borrow_mut() = url.clone();
        vec!["--database-url".to_string(), url]
    };
    up_and_send(&fresh_database);
    let url = last_url.borrow().clone();
    // The control plane's tables are in that database, not in a SQLite file.
    let tenants = Command::new("psql")
        .args([url.as_str(), "-tA", "-c", "SELECT count(*) FROM tenants"])
        .output()
        .expect("psql runs");
    let n: u32 = String::from_utf8_lossy(&tenants.stdout)
        .trim()
        .parse()
        .expect("a count");
    assert!(n >= 2, "operator and development tenants: {n}");
}

/// Starts `petrel up` with the arguments `extra` gives for each start, sends one message with the printed development
/// credentials, stops it with SIGTERM and checks the message was spooled.
#[allow(
    clippy::zombie_processes,
    reason = "the started child leaves the retry loop in a tuple; it is stopped and reaped at the end"
)]
fn up_and_send(extra: &dyn Fn() -> Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    // The ports are picked free, then bound by the child: another test may take one in between,
    // and then `petrel up` exits at once. Such a start is retried with fresh ports (bounded).
    let mut started = None;
    for attempt in 1..=UP_START_ATTEMPTS_MAX {
        let port = |_: ()| format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(petrel_bin())
            .current_dir(dir.path())
            .arg("up")
            .args(["--smtp-listen", "127.0.0.1:0", "--shards", "1"])
            .args(["--api-listen", &port(()), "--push-listen", &port(())])
            .args(["--metrics-listen", &port(()), "--admin-listen", &port(())])
            .args(extra())
            .env("PETREL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + ENGINE_READY_TIMEOUT;
        let (mut smtp, mut user, mut pass) = (None, None, None);
        let mut banner = String::new();
        let mut exited = false;
        while user.is_none() || smtp.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    banner.push_str(&line);
                    banner.push('\n');
                    if let Some(rest) = line.strip_prefix("petrel engine ready: smtp=") {
                        smtp = rest
                            .split_whitespace()
                            .next()
                            .map(|a| a.parse::<std::net::SocketAddr>().unwrap());
                    }
                    if let Some(rest) = line
                        .trim()
                        .strip_prefix("SMTP AUTH (shown once): username ")
                    {
                        let mut it = rest.split_whitespace();
                        user = it.next().map(str::to_string);
                        assert_eq!(it.next(), Some("password"), "{line}");
                        pass = it.next().map(str::to_string);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
                    if attempt < UP_START_ATTEMPTS_MAX =>
                {
                    // The child closed its output: it exited (a port taken meanwhile).
                    let _ = child.wait();
                    exited = true;
                    break;
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("petrel up printed no credentials:\n{banner}");
                }
            }
        }
        if !exited {
            started = Some((child, smtp, user, pass, banner));
            break;
        }
        // A fresh data directory for the next attempt: the first start's keys are shown once.
        let _ = std::fs::remove_dir_all(dir.path().join("petrel-data"));
    }
    let (mut child, smtp, user, pass, banner) = started.expect("petrel up started");
    assert!(banner.contains("owner API key"), "{banner}");
    assert!(banner.contains("control plane: http://"), "{banner}");
    let tls = TlsParameters::builder("localhost".into())
        .dangerous_accept_invalid_certs(true)
        .build()
        .unwrap();
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(smtp.unwrap().port())
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(user.unwrap(), pass.unwrap()))
        .authentication(vec![Mechanism::Plain])
        .timeout(Some(Duration::from_secs(20)))
        .build();
    let msg = Message::builder()
        .from("Dev <dev@dev.petrel.test>".parse::<Mailbox>().unwrap())
        .to("Someone <someone@example.test>".parse::<Mailbox>().unwrap())
        .subject("up")
        .body(String::from("hello\r\n"))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = mailer.send(&msg) {
        assert!(
            Instant::now() < deadline,
            "the development credentials never worked: {e}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let stop = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > stop {
            let _ = child.kill();
            panic!("petrel up did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(spool_count(&dir.path().join("petrel-data")), 1);
}
