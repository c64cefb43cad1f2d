//! Sealed at rest, end to end (issue 16): a marker written in messages (subject and body) and in
//! the tenant's name, and the tenant's DKIM private key, appear in no file of the engine's data
//! directory (spool segments and journals, the policy snapshot, the keyring, the event
//! backlog) nor of the control plane's (its SQLite database and log, where the name, the key
//! and the audit entries that name them are sealed), while the API still shows the name,
//! `petrel spool ls` reads the spool with the key file, and an engine restarted after kill -9
//! delivers every message, intact and DKIM-signed.

mod common;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::control::{dkimpy_verifies, mailer, provision, start_control};
use common::*;
use lettre::message::Mailbox;
use lettre::{Message, Transport};
use petrel_loadtest::{start_sink, SinkConfig};
use petrel_testkit::dns::DnsServer;

const DOMAIN: &str = "sealed.test";
const TOKEN: &str = "at-rest-push-token-0123456789";
const MARKER: &str = "MARKER-c0ffee-5b1e";
const MESSAGES: usize = 5;

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                hits.push(path);
            }
        }
    }
    hits
}

/// The DKIM private keys (PKCS#8 DER) of the engine's policy, read the way the engine reads it:
/// the sealed snapshot opened with the keyring.
fn dkim_keys_of(data: &Path) -> Vec<Vec<u8>> {
    let kek = petrel_seal::KekFile::load(&data.join("keys").join("kek")).unwrap();
    let keys = petrel_seal::Keyring::open(&data.join("keys"), Arc::new(kek)).unwrap();
    let store = petrel_policy::PolicyStore::open(
        &data.join("policy"),
        Some(petrel_policy::AtRest {
            keys: Arc::new(keys),
            data_key_rotate_after_ms: u64::MAX,
        }),
    );
    store
        .current()
        .snapshot()
        .domains
        .iter()
        .flat_map(|d| d.dkim_keys.iter().map(|k| k.private_key_pkcs8_der.clone()))
        .collect()
}

#[test]
fn no_marker_or_dkim_key_in_engine_files_and_everything_is_delivered_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (info, control_task) = start_control(&rt, &dir.path().join("control"), TOKEN, dns.addr);
    let owner = info.bootstrap_key.clone().expect("owner key");
    let sink = start_sink(SinkConfig {
        threads: 1,
        keep_messages_max: 100,
        ..SinkConfig::default()
    })
    .unwrap();
    let data = dir.path().join("engine");
    // Accept and spool only, so the messages are on disk when the engine is killed.
    let mut args = linked_engine_args(
        dir.path(),
        info.push_addr,
        &info.push_cert_pem,
        TOKEN,
        2,
        sink.addr(),
    );
    args.push("--no-delivery".into());
    let engine = Engine::start(&data, &args);
    let tenant = format!("acme-{MARKER}");
    let p = provision(
        info.api_addr,
        &owner,
        &dns,
        &tenant,
        DOMAIN,
        "sealed-mailer",
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while sent < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "the pushed credential never worked"
        );
        let msg = Message::builder()
            .from(Mailbox::from_str(&format!("News <news@{DOMAIN}>")).unwrap())
            .to(Mailbox::from_str("reader@example.test").unwrap())
            .subject(format!("{MARKER} subject {sent}"))
            .body(format!("The body carries {MARKER} too.\r\n"))
            .unwrap();
        match mailer(engine.smtp.port(), &p.username, &p.password).send(&msg) {
            Ok(_) => sent += 1,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    assert_eq!(spool_count(&data), MESSAGES as u64);
    engine.kill9();

    // The API opens what the database seals.
    let (code, t) = common::control::api(
        info.api_addr,
        "GET",
        &format!("/v1/tenants/{}", p.tenant_id),
        &owner,
        None,
    );
    assert_eq!(
        (code, t["name"].as_str()),
        (200, Some(tenant.as_str())),
        "{t}"
    );

    // The engine's event backlog is sealed too: no recipient address in its files.
    assert_eq!(
        files_containing(&data, b"reader@example.test"),
        Vec::<std::path::PathBuf>::new()
    );
    let dkim = dkim_keys_of(&data);
    assert!(!dkim.is_empty(), "the snapshot holds the tenant's DKIM key");
    let control = dir.path().join("control");
    for root in [&data, &control] {
        assert_eq!(
            files_containing(root, MARKER.as_bytes()),
            Vec::<std::path::PathBuf>::new()
        );
        for der in &dkim {
            // The Ed25519 seed: the last 32 bytes of its PKCS#8 document.
            let seed = &der[der.len() - 32..];
            assert!(
                files_containing(root, seed).is_empty(),
                "a DKIM key in the clear"
            );
        }
    }
    let ls = std::process::Command::new(petrel_bin())
        .args(["spool", "ls", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert_eq!(
        listing.matches(&format!("from=<news@{DOMAIN}>")).count(),
        MESSAGES
    );
    // Without the key the spool does not open at all.
    let other_key = dir.path().join("other.kek");
    petrel_seal::KekFile::generate(&other_key).unwrap();
    let refused = std::process::Command::new(petrel_bin())
        .args(["spool", "ls", "--data-dir"])
        .arg(&data)
        .arg("--key-file")
        .arg(&other_key)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not unwrap"));

    // Restarted with delivery on: every message goes out, opened intact and signed.
    let args: Vec<String> = args.into_iter().filter(|a| a != "--no-delivery").collect();
    let engine = Engine::start(&data, &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.received().len() < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "spooled messages were not delivered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = sink.received();
    for m in &got {
        let text = String::from_utf8_lossy(&m.data);
        assert!(
            text.contains(&format!("The body carries {MARKER} too.")),
            "{text}"
        );
        if let Some(ok) = dkimpy_verifies(&m.data, DOMAIN, &p.selector, &p.dkim_txt) {
            assert!(ok, "dkimpy rejected the signature:\n{text}");
        }
    }
    assert!(engine.stop());
    control_task.abort();
}

fn petrel(args: &[&str], data: &Path) -> (bool, String) {
    let out = std::process::Command::new(petrel_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `petrel keys rotate` while the engine runs: a new key-encryption key version, the data keys
/// re-wrapped, the old version retired from the key file; the engine keeps sealing (it re-reads
/// the key file before it wraps a new key) and, restarted, opens the mail spooled before.
#[test]
fn keys_rotate_while_running_keeps_every_message_readable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("engine");
    let args = ["--no-delivery", "--trust-network", "127.0.0.0/8"];
    let engine = Engine::start(&data, &args);
    let body = message("a@one.test", "b@two.test", "before-rotation");
    assert_eq!(
        send_one(engine.smtp, "a@one.test", "b@two.test", &body).0,
        250
    );
    let (ok, out) = petrel(&["keys", "rotate"], &data);
    assert!(ok, "{out}");
    assert!(
        out.contains("version 2") && out.contains("retired versions [1]"),
        "{out}"
    );
    let kek = std::fs::read_to_string(data.join("keys").join("kek")).unwrap();
    assert!(kek.contains("\nv2 ") && !kek.contains("\nv1 "), "{kek}");
    let body = message("a@one.test", "c@three.test", "after-rotation");
    assert_eq!(
        send_one(engine.smtp, "a@one.test", "c@three.test", &body).0,
        250
    );
    assert!(engine.stop());
    let (ok, out) = petrel(&["keys", "status"], &data);
    assert!(ok && out.contains("versions [2]"), "{out}");
    let engine = Engine::start(&data, &args);
    assert_eq!(spool_count(&data), 2);
    assert!(engine.stop());
}
