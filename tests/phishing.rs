//! End to end: a real `petrel engine`, a client submitting over SMTP with AUTH. A phishing
//! message from the content corpus is refused at end of data with `550 5.7.1 message refused:
//! looks like phishing (<rules>)` and counted as a `content` rejection; a legitimate one gets
//! its 250; with `[content] phishing_check = false` the same phish is accepted.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;

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

fn sample(kind: &str, name: &str) -> Vec<u8> {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "engine/content/testdata",
        kind,
        name,
    ]
    .iter()
    .collect();
    std::fs::read(&path).unwrap()
}

/// Submits `mail` as alice (AUTH PLAIN on loopback, development mode); the DATA reply.
fn submit(engine: &Engine, mail: &[u8]) -> (u16, String) {
    let mut c = Smtp::connect(engine.smtp);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    // "\0alice\0correct horse"
    assert_eq!(c.cmd("AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U=").0, 235);
    assert_eq!(c.cmd("MAIL FROM:<sender@client.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<victim@remote.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let mut body = Vec::with_capacity(mail.len() + 64);
    for line in mail.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            body.push(b'.');
        }
        body.extend_from_slice(line);
    }
    c.send(&body);
    c.send(b".\r\n");
    let r = c.reply();
    let _ = c.cmd("QUIT");
    r
}

fn start(dir: &std::path::Path, content: &str) -> Engine {
    let cfg = format!(
        "{content}\n[[auth.users]]\nusername = \"alice\"\npassword_hash = \"{}\"\n",
        hash_password("correct horse")
    );
    Engine::start_with(
        dir,
        &["--no-delivery", "--shards", "1", "--development"],
        Some(&cfg),
    )
}

#[test]
fn a_phishing_submission_is_refused_and_a_legitimate_one_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path(), "");
    let (code, text) = submit(&engine, &sample("phish", "01-paypal-link-mismatch.eml"));
    assert_eq!(code, 550, "{text}");
    assert!(
        text.contains("5.7.1 message refused: looks like phishing (")
            && text.contains("link_text_mismatch"),
        "{text}"
    );
    let (code, text) = submit(
        &engine,
        &sample("phish", "04-office365-credential-form.eml"),
    );
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("credential_form_off_domain"), "{text}");
    let (code, text) = submit(
        &engine,
        &sample("legit", "receipt-01-greenleaf-market.com.eml"),
    );
    assert_eq!(code, 250, "{text}");
    let (code, text) = submit(&engine, &sample("legit", "reset-01-github.com.eml"));
    assert_eq!(code, 250, "{text}");
    let metrics = engine.scrape();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("petrel_smtp_rejections_total{reason=\"content\"} 2")),
        "{metrics}"
    );
    assert_eq!(
        spool_count(dir.path()),
        2,
        "only the legitimate mail is spooled"
    );
    assert!(engine.stop());
}

#[test]
fn the_check_can_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path(), "[content]\nphishing_check = false\n");
    let (code, text) = submit(&engine, &sample("phish", "01-paypal-link-mismatch.eml"));
    assert_eq!(code, 250, "{text}");
    assert!(engine.stop());
}

#[test]
fn a_bad_content_section_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[content]\nphishing_threshold = 0\n").unwrap();
    let out = Command::new(petrel_bin())
        .args(["engine", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("content.phishing_threshold"), "{err}");
}
