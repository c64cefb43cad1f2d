//! End to end: listeners with profiles (`[[smtp.listeners]]`), spoken to with swaks as a new
//! user would. Submission (587, RFC 6409) wants STARTTLS before AUTH and MAIL and AUTH before
//! MAIL; submissions (465, RFC 8314) starts TLS at connect. The engine runs in development mode
//! with loopback trusted, where the relay listener would take AUTH before STARTTLS and relay
//! without AUTH: these never do.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const USER: &str = "alice";
const PASSWORD: &str = "correct horse";
/// swaks's own bound on each step, seconds.
const SWAKS_TIMEOUT_SECS: &str = "20";
/// `smtp.tls_handshake_timeout_ms` of the test engine: a silent client on 465 is dropped soon.
const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 1_000;

fn swaks_missing() -> bool {
    if Command::new("swaks").arg("--version").output().is_err() {
        petrel_testkit::peer_missing("swaks is not installed (ops/test.sh installs it)");
        return true;
    }
    false
}

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

/// An engine with a submission and a submissions listener (port 0: the engine picks and prints
/// them), one AUTH user, in development mode with loopback trusted, spooling only.
fn start(dir: &std::path::Path) -> Engine {
    let cfg = format!(
        "[smtp]\ntls_handshake_timeout_ms = {TLS_HANDSHAKE_TIMEOUT_MS}\n\
         [[smtp.listeners]]\nlisten = \"127.0.0.1:0\"\nprofile = \"submission\"\n\
         [[smtp.listeners]]\nlisten = \"127.0.0.1:0\"\nprofile = \"submissions\"\n\
         [[auth.users]]\nusername = \"{USER}\"\npassword_hash = \"{}\"\n",
        hash_password(PASSWORD)
    );
    let args = [
        "--no-delivery",
        "--shards",
        "2",
        "--development",
        "--trust-network",
        "127.0.0.0/8",
    ];
    Engine::start_with(dir, &args, Some(&cfg))
}

fn listener(engine: &Engine, profile: &str) -> SocketAddr {
    engine
        .listeners
        .iter()
        .find(|(p, _)| p == profile)
        .map(|(_, a)| *a)
        .unwrap_or_else(|| panic!("no {profile} listener in {:?}", engine.listeners))
}

/// swaks to `addr` from alice@client.test to x@remote.test, with `args`; (success, transcript).
fn swaks(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let Output { status, stdout, .. } = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--from", "alice@client.test", "--to", "x@remote.test"])
        .args(["--timeout", SWAKS_TIMEOUT_SECS])
        .args(args)
        .output()
        .expect("run swaks");
    (
        status.success(),
        String::from_utf8_lossy(&stdout).into_owned(),
    )
}

const AUTH: [&str; 6] = [
    "--auth",
    "PLAIN",
    "--auth-user",
    USER,
    "--auth-password",
    PASSWORD,
];

#[test]
fn submission_requires_starttls_then_auth() {
    if swaks_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path());
    let sub = listener(&engine, "submission");
    assert_ne!(sub, engine.smtp);

    // AUTH without STARTTLS: not offered, so swaks gives up before any mail.
    let (ok, text) = swaks(sub, &AUTH);
    assert!(!ok, "AUTH before STARTTLS must fail:\n{text}");
    assert!(text.contains("250-STARTTLS"), "{text}");
    assert!(
        !text.contains("AUTH PLAIN"),
        "AUTH advertised before TLS:\n{text}"
    );
    assert!(!text.contains("250 2.0.0 Ok: queued"), "{text}");

    // Sent anyway (a client that does not read EHLO): refused with 530, even on loopback in
    // development mode.
    let mut c = Smtp::connect(sub);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    let (code, text) = c.cmd("AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U=");
    assert_eq!(code, 530, "{text}");
    assert!(
        text.starts_with("530 5.7.0 Must issue a STARTTLS command first"),
        "{text}"
    );

    // Plain MAIL: 530 before STARTTLS.
    let (ok, text) = swaks(sub, &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("530 5.7.0 Must issue a STARTTLS command first"),
        "{text}"
    );

    // STARTTLS without AUTH: MAIL needs AUTH (RFC 4954 §6); a trusted network is no excuse.
    let (ok, text) = swaks(sub, &["--tls"]);
    assert!(!ok, "{text}");
    assert!(text.contains("530 5.7.0 Authentication required"), "{text}");

    // STARTTLS, then AUTH: accepted.
    let mut args = vec!["--tls"];
    args.extend(AUTH);
    let (ok, text) = swaks(sub, &args);
    assert!(ok, "swaks --tls --auth failed:\n{text}");
    assert!(text.contains("235 2.7.0"), "{text}");
    assert!(text.contains("250 2.0.0 Ok: queued"), "{text}");

    // The relay listener keeps today's rules: in development mode a loopback client may AUTH
    // before STARTTLS there, and a trusted one relays without AUTH.
    let (ok, text) = swaks(engine.smtp, &AUTH);
    assert!(ok, "relay listener, development mode, loopback:\n{text}");
    let (ok, text) = swaks(engine.smtp, &[]);
    assert!(ok, "relay listener, trusted network:\n{text}");

    assert!(engine.stop());
    assert_eq!(spool_count(dir.path()), 3);
}

#[test]
fn submissions_is_implicit_tls_and_requires_auth() {
    if swaks_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path());
    let subs = listener(&engine, "submissions");

    // TLS from the connect; STARTTLS is not offered under it, AUTH is.
    let mut args = vec!["--tls-on-connect"];
    args.extend(AUTH);
    let (ok, text) = swaks(subs, &args);
    assert!(ok, "swaks --tls-on-connect --auth failed:\n{text}");
    assert!(text.contains("220 "), "{text}");
    assert!(text.contains("AUTH PLAIN LOGIN"), "{text}");
    assert!(!text.contains("STARTTLS"), "{text}");
    assert!(text.contains("250 2.0.0 Ok: queued"), "{text}");

    // Under TLS without AUTH: MAIL refused.
    let (ok, text) = swaks(subs, &["--tls-on-connect"]);
    assert!(!ok, "{text}");
    assert!(text.contains("530 5.7.0 Authentication required"), "{text}");

    // A plaintext client gets no greeting: its EHLO is no TLS record, the handshake fails and
    // the connection closes. A silent one is dropped after the handshake bound.
    let mut c = Smtp::connect(subs);
    c.send(b"EHLO client.test\r\n");
    let (code, text) = c.reply();
    assert!(code == 0 && !text.contains("220"), "{text:?}"); // at most a TLS alert, then EOF
    let started = Instant::now();
    let mut c = Smtp::connect(subs);
    assert_eq!(c.reply(), (0, String::new()));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS / 2)
            && waited < Duration::from_secs(15),
        "{waited:?}"
    );

    let metrics = engine.scrape();
    for reason in ["tls_handshake", "tls_timeout"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.contains(&format!("reason=\"{reason}\"")) && !l.ends_with(" 0")),
            "{reason} is counted:\n{metrics}"
        );
    }
    assert!(engine.stop());
    assert_eq!(spool_count(dir.path()), 1);
}
