//! End to end: a real `petrel engine` process on loopback, spoken to by clients nobody here wrote
//! (lettre, swaks when installed) and by raw dialogues for the exact replies.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};

fn hash_password(pw: &str) -> String {
    let mut child = Command::new(petrel_bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{pw}").unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn config_with_user(user: &str, pw: &str, extra: &str) -> String {
    format!(
        "{extra}\n[[auth.users]]\nusername = \"{user}\"\npassword_hash = \"{}\"\n",
        hash_password(pw)
    )
}

fn lettre_message(i: usize) -> Message {
    Message::builder()
        .from("Sender <sender@client.test>".parse::<Mailbox>().unwrap())
        .to("Rcpt <rcpt@remote.test>".parse::<Mailbox>().unwrap())
        .subject(format!("lettre {i}"))
        .body(String::from("Hello from lettre.\r\n"))
        .unwrap()
}

#[test]
fn lettre_starttls_and_auth_are_accepted_and_spooled() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_user("alice", "correct horse", "");
    let engine = Engine::start_with(dir.path(), &["--no-delivery", "--shards", "2"], Some(&cfg));
    let tls = TlsParameters::builder("localhost".into())
        .dangerous_accept_invalid_certs(true)
        .build()
        .unwrap();
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(engine.smtp.port())
        .tls(Tls::Required(tls.clone()))
        .credentials(Credentials::new("alice".into(), "correct horse".into()))
        .authentication(vec![Mechanism::Plain])
        .timeout(Some(Duration::from_secs(20)))
        .build();
    for i in 0..5 {
        mailer
            .send(&lettre_message(i))
            .expect("lettre send over STARTTLS + AUTH PLAIN");
    }
    let login = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(engine.smtp.port())
        .tls(Tls::Required(tls.clone()))
        .credentials(Credentials::new("alice".into(), "correct horse".into()))
        .authentication(vec![Mechanism::Login])
        .timeout(Some(Duration::from_secs(20)))
        .build();
    login.send(&lettre_message(5)).expect("AUTH LOGIN");
    // Wrong password: refused.
    let bad = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(engine.smtp.port())
        .tls(Tls::Required(tls))
        .credentials(Credentials::new("alice".into(), "wrong".into()))
        .authentication(vec![Mechanism::Plain])
        .timeout(Some(Duration::from_secs(20)))
        .build();
    assert!(bad.send(&lettre_message(6)).is_err());
    // Without TLS and without trust: AUTH is not even offered, relay is refused.
    let plain = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(engine.smtp.port())
        .timeout(Some(Duration::from_secs(20)))
        .build();
    let e = plain.send(&lettre_message(7)).unwrap_err();
    assert!(e.to_string().contains("5.7.1") || e.is_permanent(), "{e}");
    assert!(engine.stop(), "graceful stop exits 0");
    assert_eq!(spool_count(dir.path()), 6);
}

#[test]
fn an_address_that_keeps_failing_auth_is_locked_out_across_connections() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_user(
        "alice",
        "correct horse",
        "[auth]\nfailures_per_address_max = 2\nfailure_window_secs = 600\n",
    );
    let engine = Engine::start_with(dir.path(), &["--no-delivery", "--shards", "2"], Some(&cfg));
    let tls = TlsParameters::builder("localhost".into())
        .dangerous_accept_invalid_certs(true)
        .build()
        .unwrap();
    let mailer = |password: &str| {
        SmtpTransport::builder_dangerous("127.0.0.1")
            .port(engine.smtp.port())
            .tls(Tls::Required(tls.clone()))
            .credentials(Credentials::new("alice".into(), password.into()))
            .authentication(vec![Mechanism::Plain])
            .timeout(Some(Duration::from_secs(20)))
            .build()
    };
    // Each attempt on its own connection, so only the engine-wide count can stop them.
    for guess in ["guess-1", "guess-2"] {
        let e = mailer(guess).send(&lettre_message(0)).unwrap_err();
        assert!(e.to_string().contains("5.7.8"), "{e}");
    }
    // Locked out now: even the right password gets a temporary failure, and nothing is spooled.
    let e = mailer("correct horse")
        .send(&lettre_message(1))
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("4.7.0"), "{e}");
    let metrics = engine.scrape();
    assert!(
        metrics.contains("petrel_smtp_auth_total{result=\"locked_out\"} 1"),
        "{metrics}"
    );
    assert!(engine.stop(), "graceful stop exits 0");
    assert_eq!(spool_count(dir.path()), 0);
}

#[test]
fn raw_dialogue_replies_and_relay_rules() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path(), &["--no-delivery", "--shards", "1"]);
    let mut c = Smtp::connect(engine.smtp);
    assert_eq!(c.reply().0, 220);
    let (code, ehlo) = c.cmd("EHLO client.test");
    assert_eq!(code, 250);
    for ext in [
        "PIPELINING",
        "SIZE",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "STARTTLS",
    ] {
        assert!(ehlo.contains(ext), "EHLO lacks {ext}: {ehlo}");
    }
    assert!(
        !ehlo.contains("AUTH"),
        "AUTH must not be offered before TLS: {ehlo}"
    );
    assert_eq!(c.cmd("AUTH PLAIN AGFsaWNlAHg=").0, 530);
    assert_eq!(c.cmd("MAIL FROM:<a@client.test>").0, 250);
    let (code, text) = c.cmd("RCPT TO:<b@remote.test>");
    assert_eq!(code, 550, "no open relay: {text}");
    assert!(text.contains("5.7.1"), "{text}");
    assert_eq!(c.cmd("VRFY b").0, 252);
    assert_eq!(c.cmd("EXPN b").0, 502);
    assert_eq!(c.cmd("QUIT").0, 221);
    assert!(engine.stop());
}

#[test]
fn pipelining_smuggling_and_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[limits]\nspool_messages_max = 3\n";
    let engine = Engine::start_with(
        dir.path(),
        &[
            "--no-delivery",
            "--shards",
            "1",
            "--trust-network",
            "127.0.0.0/8",
        ],
        Some(cfg),
    );
    // Pipelined: everything in one write, replies in order.
    let mut c = Smtp::connect(engine.smtp);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    let mut batch = String::new();
    batch.push_str("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@remote.test>\r\nRCPT TO:<c@remote.test>\r\nDATA\r\n");
    c.send(batch.as_bytes());
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 354);
    c.send(message("a@client.test", "b@remote.test", "p1").as_bytes());
    c.send(b".\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    // SMTP smuggling: a bare-LF end of data must not end the message; the message is refused.
    assert_eq!(c.cmd("MAIL FROM:<a@client.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<b@remote.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@client.test>\r\n.\r\n");
    let (code, text) = c.reply();
    assert!(
        (500..600).contains(&code),
        "smuggled message refused: {code} {text}"
    );
    // Fill the spool to its bound: then 452 4.3.1 at MAIL.
    for i in 0..2 {
        assert_eq!(c.cmd("MAIL FROM:<a@client.test>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<b@remote.test>").0, 250);
        assert_eq!(c.cmd("DATA").0, 354);
        c.send(message("a@client.test", "b@remote.test", &format!("f{i}")).as_bytes());
        c.send(b".\r\n");
        assert_eq!(c.reply().0, 250);
    }
    // Figures are published at least every 100 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let (code, text) = c.cmd("MAIL FROM:<a@client.test>");
        if code == 452 {
            break text;
        }
        assert_eq!(code, 250);
        assert_eq!(c.cmd("RSET").0, 250);
        assert!(
            Instant::now() < deadline,
            "never refused at the spool bound"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(refused.contains("4.3.1"), "{refused}");
    assert_eq!(c.cmd("QUIT").0, 221);
    let metrics = engine.scrape();
    assert!(
        metrics.contains("petrel_smtp_messages_accepted_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("petrel_spool_commit_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"spool_messages\""), "{metrics}");
    assert!(engine.stop());
    assert_eq!(spool_count(dir.path()), 3);
}

#[test]
fn swaks_pipelined_starttls_auth() {
    if Command::new("swaks").arg("--version").output().is_err() {
        petrel_testkit::peer_missing("swaks is not installed (ops/test.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_user("bob", "hunter22", "");
    let engine = Engine::start_with(dir.path(), &["--no-delivery", "--shards", "1"], Some(&cfg));
    let out = Command::new("swaks")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &engine.smtp.port().to_string(),
        ])
        .args(["--from", "bob@client.test", "--to", "x@remote.test"])
        .args([
            "--tls",
            "--pipeline",
            "--auth",
            "PLAIN",
            "--auth-user",
            "bob",
            "--auth-password",
            "hunter22",
        ])
        .args(["--timeout", "20"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{text}");
    assert!(text.contains("250 2.0.0"), "{text}");
    assert!(engine.stop());
    assert_eq!(spool_count(dir.path()), 1);
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[smtp]\nlisten_port = 25\n").unwrap();
    let out = Command::new(petrel_bin())
        .args(["engine", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_port"), "{err}");
}

#[test]
fn idle_client_is_timed_out_with_421() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[smtp]\ncommand_timeout_ms = 700\n";
    let engine = Engine::start_with(dir.path(), &["--no-delivery", "--shards", "1"], Some(cfg));
    let mut c = Smtp::connect(engine.smtp);
    assert_eq!(c.reply().0, 220);
    let started = Instant::now();
    // A trickling client: a byte at a time, never finishing the line, still times out.
    for _ in 0..5 {
        c.send(b"E");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, text) = c.reply();
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.4.2"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(engine.stop());
}

#[test]
fn starttls_offers_only_tls12_and_tls13() {
    if Command::new("openssl").arg("version").output().is_err() {
        println!("SKIPPED: openssl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path(), &["--no-delivery", "--shards", "1"]);
    let port = engine.smtp.port().to_string();
    let probe = |flag: &str| {
        let out = Command::new("timeout")
            .args(["10", "openssl", "s_client", "-starttls", "smtp", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .arg(flag)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let v13 = probe("-tls1_3");
    assert!(v13.contains("TLSv1.3"), "TLS 1.3 handshake: {v13}");
    let v12 = probe("-tls1_2");
    assert!(v12.contains("TLSv1.2"), "TLS 1.2 handshake: {v12}");
    let v11 = probe("-tls1_1");
    assert!(v11.contains("Cipher is (NONE)"), "TLS 1.1 must fail: {v11}");
    assert!(engine.stop());
}
