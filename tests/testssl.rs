//! testssl.sh (Debian's `testssl.sh`, installed as `testssl`) against the engine's listeners
//! (the relay's, submission's and the MX intake's STARTTLS, submissions' implicit TLS): no
//! finding above LOW, except the trust findings a self-signed certificate gets.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// testssl.sh takes a minute or two against loopback; nextest kills a test at 5 minutes.
const TESTSSL_TIMEOUT_SECS: u64 = 240;

/// testssl.sh's bound on each `openssl s_client` it runs (`--openssl-timeout`). Without it,
/// one probe can block for good: its client-initiated renegotiation check retries in the
/// foreground, unbounded, when the first try ended inside five seconds, and whether it does
/// depends on whether the greeting arrived before the `R` (a race: CI once sat there until the
/// test's 240 s ran out). A bounded try that is killed is reported as a DEBUG finding;
/// `client_initiated_renegotiation_is_refused` below checks that behaviour exactly.
const OPENSSL_TIMEOUT_SECS: u64 = 20;

/// Severities that fail the test (testssl.sh's scale: OK, INFO, LOW, MEDIUM, HIGH, CRITICAL;
/// FATAL when the scan itself could not run).
const FAILING_SEVERITIES: &[&str] = &["MEDIUM", "HIGH", "CRITICAL", "FATAL"];

/// The findings a self-signed certificate gets whatever the server does: it chains to no
/// trusted root, it names the engine's hostname, not the address testssl.sh dialled, and no CA
/// publishes a revocation list or OCSP responder for it (`cert_revocation`: "neither CRL nor
/// OCSP URI provided", HIGH in testssl.sh 3.0).
const SELF_SIGNED_TRUST_IDS: &[&str] = &[
    "cert_chain_of_trust",
    "chain_of_trust",
    "cert_trust",
    "cert_caIssuers",
    "cert_revocation",
];

fn testssl_bin() -> Option<&'static str> {
    ["testssl", "testssl.sh"].into_iter().find(|bin| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {bin}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Whether a finding is one of the self-signed certificate's trust findings (testssl.sh adds a
/// suffix per certificate when a server has several, e.g. `cert_trust <cert#1>`).
fn is_trust_finding(id: &str) -> bool {
    let base = id.split_whitespace().next().unwrap_or(id);
    SELF_SIGNED_TRUST_IDS.contains(&base)
}

/// One scan of `target` (`host:port`), over STARTTLS or implicit TLS; its JSON findings.
fn scan(bin: &str, dir: &std::path::Path, target: &str, starttls: bool) -> Vec<serde_json::Value> {
    let json = dir.join(format!("testssl-{}.json", target.replace([':', '.'], "-")));
    let mut cmd = Command::new("timeout");
    cmd.arg(TESTSSL_TIMEOUT_SECS.to_string()).arg(bin);
    if starttls {
        cmd.args(["--starttls", "smtp"]);
    }
    let out = cmd
        .args(["--quiet", "--color", "0"])
        // Loopback only: no DNS lookups for the target.
        .args(["--nodns", "none", "--warnings", "off"])
        .args(["--openssl-timeout", &OPENSSL_TIMEOUT_SECS.to_string()])
        .arg("--jsonfile")
        .arg(&json)
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .expect("run testssl.sh");
    assert_ne!(
        out.status.code(),
        Some(124),
        "testssl.sh did not finish in {TESTSSL_TIMEOUT_SECS} s"
    );
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no JSON from testssl.sh ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).expect("testssl.sh JSON");
    assert!(
        findings.len() > 20,
        "testssl.sh found too little to mean anything: {text}"
    );
    findings
}

/// No finding above LOW but the self-signed trust ones, and the server picks the cipher order
/// (the issue that started this).
fn assert_clean(what: &str, findings: &[serde_json::Value]) {
    let failing: Vec<String> = findings
        .iter()
        .filter(|f| FAILING_SEVERITIES.contains(&f["severity"].as_str().unwrap_or("")))
        .filter(|f| !is_trust_finding(f["id"].as_str().unwrap_or("")))
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(
        failing.is_empty(),
        "testssl.sh findings above LOW on {what}:\n{}",
        failing.join("\n")
    );
    let order = findings
        .iter()
        .find(|f| f["id"] == "cipher_order")
        .expect("a cipher_order finding");
    assert_eq!(order["severity"], "OK", "{what}: {order}");
}

#[test]
fn testssl_finds_nothing_above_low_but_self_signed_trust() {
    let Some(bin) = testssl_bin() else {
        petrel_testkit::peer_missing("testssl.sh is not installed (Debian package testssl.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(
        &dir.path().join("engine"),
        &["--no-delivery", "--shards", "1"],
    );
    let target = format!("127.0.0.1:{}", engine.smtp.port());
    assert_clean("the relay listener", &scan(bin, dir.path(), &target, true));
    assert!(engine.stop());
}

/// An engine with the submission listeners (issue 18's 587 and 465 profiles) on free ports;
/// the address of the one with `profile`.
fn listener(dir: &std::path::Path, profile: &str) -> (Engine, String) {
    let config = "[[smtp.listeners]]\nlisten = \"127.0.0.1:0\"\nprofile = \"submission\"\n\
                  [[smtp.listeners]]\nlisten = \"127.0.0.1:0\"\nprofile = \"submissions\"\n";
    let engine = Engine::start_with(
        &dir.join("engine"),
        &["--no-delivery", "--shards", "1"],
        Some(config),
    );
    let addr = engine
        .listeners
        .iter()
        .find(|(p, _)| p == profile)
        .map(|(_, a)| a.to_string())
        .unwrap_or_else(|| panic!("no {profile} listener in {:?}", engine.listeners));
    (engine, addr)
}

#[test]
fn testssl_on_the_submission_listener_finds_nothing_above_low() {
    let Some(bin) = testssl_bin() else {
        petrel_testkit::peer_missing("testssl.sh is not installed (Debian package testssl.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (engine, addr) = listener(dir.path(), "submission");
    assert_clean("submission (STARTTLS)", &scan(bin, dir.path(), &addr, true));
    assert!(engine.stop());
}

#[test]
fn testssl_on_the_submissions_listener_finds_nothing_above_low() {
    let Some(bin) = testssl_bin() else {
        petrel_testkit::peer_missing("testssl.sh is not installed (Debian package testssl.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (engine, addr) = listener(dir.path(), "submissions");
    assert_clean(
        "submissions (implicit TLS)",
        &scan(bin, dir.path(), &addr, false),
    );
    assert!(engine.stop());
}

/// The MX listener (the return-path intake, port 25 in production: no AUTH, STARTTLS
/// offered), which needs a control plane to send its events to.
#[test]
fn testssl_on_the_mx_intake_listener_finds_nothing_above_low() {
    let Some(bin) = testssl_bin() else {
        petrel_testkit::peer_missing("testssl.sh is not installed (Debian package testssl.sh)");
        return;
    };
    const TOKEN: &str = "testssl-push-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let dns = petrel_testkit::dns::DnsServer::start(vec![]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    let (info, _control) = control::start_control_with(
        &rt,
        &dir.path().join("control"),
        TOKEN,
        dns.addr,
        (any, any),
        petrel_control::ServeOptions {
            return_path_domain: "bounce.testssl.test".into(),
            ..petrel_control::ServeOptions::default()
        },
    );
    // Nothing is delivered: the relay target is never dialled.
    let nowhere = "127.0.0.1:9".parse().unwrap();
    let args = linked_engine_args(
        dir.path(),
        info.push_addr,
        &info.push_cert_pem,
        TOKEN,
        1,
        nowhere,
    );
    let engine = Engine::start_with(
        &dir.path().join("engine"),
        &args,
        Some("[intake]\nlisten = \"127.0.0.1:0\"\n"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let intake = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = engine
            .stdout_lines
            .recv_timeout(left)
            .expect("the intake's address within a minute");
        if let Some(a) = line.trim_start().strip_prefix("intake:  smtp=") {
            break a.split_whitespace().next().unwrap().to_string();
        }
    };
    assert_clean(
        "the MX intake (STARTTLS)",
        &scan(bin, dir.path(), &intake, true),
    );
    assert!(engine.stop());
}

/// A client that asks to renegotiate after the greeting (OpenSSL's `R`) never gets a second
/// ServerHello (rustls answers with a `no_renegotiation` warning, which s_client leaves unsaid): TLS 1.2 renegotiation, the
/// CPU-for-free lever a client could pull, is not on offer. Checked from the wire trace of a
/// real `openssl s_client -msg`, with the `R` sent only once the greeting has arrived so the
/// run is the same every time.
#[test]
fn client_initiated_renegotiation_is_refused() {
    use std::io::{BufRead, Write};
    if Command::new("openssl").arg("version").output().is_err() {
        petrel_testkit::peer_missing("openssl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (engine, addr) = listener(dir.path(), "submissions");
    let mut client = Command::new("openssl")
        .args(["s_client", "-msg", "-tls1_2", "-connect", &addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    let stdout = client.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut trace = Vec::new();
    let wait = |trace: &mut Vec<String>, until: &dyn Fn(&str) -> bool, secs: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = until(&line);
                    trace.push(line);
                    if done {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    };
    assert!(
        wait(&mut trace, &|l| l.starts_with("220 "), 30),
        "no greeting over TLS:\n{}",
        trace.join("\n")
    );
    client.stdin.as_mut().unwrap().write_all(b"R\n").unwrap();
    // The refusal is a warning alert; a renegotiating server would answer with a ServerHello
    // within milliseconds on loopback. Three seconds see either.
    wait(&mut trace, &|_| false, 3);
    let _ = client.kill();
    let _ = client.wait();
    let text = trace.join("\n");
    let sent_hellos = trace
        .iter()
        .filter(|l| l.starts_with(">>> ") && l.ends_with(", ClientHello"))
        .count();
    let server_hellos = trace
        .iter()
        .filter(|l| l.starts_with("<<< ") && l.ends_with(", ServerHello"))
        .count();
    assert_eq!(sent_hellos, 2, "the client asked to renegotiate:\n{text}");
    assert_eq!(server_hellos, 1, "no second handshake:\n{text}");
    assert!(engine.stop());
}
