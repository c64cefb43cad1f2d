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

#[test]
fn up_prints_working_development_credentials() {
    up_and_send(&[]);
}

/// The same with the control plane on PostgreSQL (`--database-url`), in a fresh database of the
/// server `PETREL_TEST_PG_URL` names (ops/test.sh starts one); skipped with a visible line
/// without it.
#[test]
fn up_runs_on_postgresql_with_a_database_url() {
    let Some(url) = common::control_process::pg_database("up") else {
        petrel_testkit::peer_missing("PETREL_TEST_PG_URL not set");
        return;
    };
    up_and_send(&["--database-url".to_string(), url.clone()]);
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

/// Starts `petrel up` with `extra` arguments, sends one message with the printed development
/// credentials, stops it with SIGTERM and checks the message was spooled. Every listener binds
/// port 0 and the test reads the SMTP address from the ready line, so no other test can take a
/// port from under it.
#[allow(
    clippy::zombie_processes,
    reason = "the child is stopped and reaped at the end, or killed where the test fails"
)]
fn up_and_send(extra: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let any = "127.0.0.1:0";
    let mut child = Command::new(petrel_bin())
        .current_dir(dir.path())
        .arg("up")
        .args(["--smtp-listen", any, "--shards", "1"])
        .args(["--api-listen", any, "--push-listen", any])
        .args(["--metrics-listen", any, "--admin-listen", any])
        .args(extra)
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
    while user.is_none() || smtp.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("petrel up printed no credentials:\n{banner}");
        };
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
