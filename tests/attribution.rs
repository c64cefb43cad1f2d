//! End to end attribution (issue 13): a tenant's submission with `X-Petrel-Tag` and
//! `X-Petrel-Metadata` headers is accepted, reaches the sink without them and with a DKIM
//! signature an independent verifier (dkimpy) accepts, and its delivery event carries the
//! tenant, credential, From domain, Message-ID, tags and metadata; a trusted-network relay is
//! attributed to the tenant owning its From domain; a malformed header is refused with
//! `550 5.6.0` and one reply for all recipients; and after a kill -9 the recovered message's
//! events still carry its attribution.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::control::{dkimpy_verifies, mailer, provision, start_control};
use common::*;
use lettre::address::Envelope;
use lettre::Transport;
use petrel_loadtest::{start_sink, DomainFault, SinkConfig};
use petrel_testkit::dns::DnsServer;
use serde_json::{json, Value};

const DOMAIN: &str = "attr.test";
const TOKEN: &str = "attr-push-token-0123456789";
/// Recipients here are answered 450 by the sink: their messages stay queued.
const DEFERRED_DOMAIN: &str = "later.test";
/// The longest any step waits for the engine, the sink or the events file.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// Every events line of the files numbered at least `first_file`, parsed.
fn events(data_dir: &Path, first_file: u64) -> Vec<Value> {
    let mut files: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(data_dir.join("events"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_else(|_| Vec::new())
        .into_iter()
        .filter_map(|p: std::path::PathBuf| {
            let name = p.file_name()?.to_str()?.to_string();
            let n = name
                .strip_prefix("events-")?
                .strip_suffix(".jsonl")?
                .parse()
                .ok()?;
            Some((n, p))
        })
        .filter(|(n, _)| *n >= first_file)
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|(_, p)| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// Waits (bounded) for an event of `recipient` with `outcome` in files from `first_file` on.
fn wait_event(data_dir: &Path, first_file: u64, recipient: &str, outcome: &str) -> Value {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let found = events(data_dir, first_file)
            .into_iter()
            .find(|e| e["recipient"] == recipient && e["outcome"] == outcome);
        if let Some(e) = found {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no {outcome} event for {recipient}: {:?}",
            events(data_dir, 0)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_received(sink: &petrel_loadtest::SinkHandle, n: usize) {
    let deadline = Instant::now() + WAIT_MAX;
    while sink.received().len() < n {
        assert!(Instant::now() < deadline, "the sink never got {n} messages");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A message over a raw connection from the trusted network (no AUTH); returns the DATA reply.
fn relay(addr: SocketAddr, rcpts: &[&str], message: &str) -> (u16, String) {
    let mut c = Smtp::connect(addr);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO relay.client.test").0, 250);
    assert_eq!(c.cmd(&format!("MAIL FROM:<news@{DOMAIN}>")).0, 250);
    for r in rcpts {
        let (code, text) = c.cmd(&format!("RCPT TO:<{r}>"));
        assert_eq!(code, 250, "{text}");
    }
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(message.as_bytes());
    c.send(b".\r\n");
    let r = c.reply();
    let _ = c.cmd("QUIT");
    r
}

#[test]
fn messages_are_attributed_stripped_signed_and_recovered_with_their_attribution() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (info, _control) = start_control(&rt, &dir.path().join("control"), TOKEN, dns.addr);
    let owner = info.bootstrap_key.clone().expect("the owner key");
    let sink = start_sink(SinkConfig {
        threads: 1,
        keep_messages_max: 100,
        rcpt_tempfail: vec![DomainFault {
            domain: DEFERRED_DOMAIN.into(),
            probability: 1.0,
        }],
        ..SinkConfig::default()
    })
    .unwrap();
    let mut args = linked_engine_args(
        dir.path(),
        info.push_addr,
        &info.push_cert_pem,
        TOKEN,
        2,
        sink.addr(),
    );
    // Loopback relays without AUTH and is signed for the test's domain (issue 14).
    args.extend([
        "--trust-network-domains".into(),
        "127.0.0.0/8=attr.test".into(),
    ]);
    // Linked to a control plane, the engine writes JSON lines only when asked to.
    let config = "[delivery]\nretry_initial_ms = 300\nretry_max_ms = 600\n[events]\njsonl = true\n";
    let data = dir.path().join("engine");
    let engine = Engine::start_with(&data, &args, Some(config));

    // Tenant, verified Ed25519 domain, SMTP credential.
    let acme = provision(info.api_addr, &owner, &dns, "acme", DOMAIN, "acme-mailer");
    let (tenant_id, selector, password, cred_id) = (
        &acme.tenant_id,
        &acme.selector,
        &acme.password,
        &acme.credential_id,
    );

    // 1. A submission with two tags (names in any case) and folded metadata.
    let submission = format!(
        "From: News <news@{DOMAIN}>\r\nTo: <reader@example.test>\r\nSubject: tagged\r\n\
         Message-ID: <tagged-1@client.test>\r\nX-Petrel-Tag: welcome\r\nx-petrel-tag: q4\r\n\
         X-Petrel-Metadata: {{\"user\":\"42\",\r\n \"vip\":true}}\r\n\r\nHello, tenant.\r\n"
    );
    let envelope = Envelope::new(
        Some(format!("news@{DOMAIN}").parse().unwrap()),
        vec!["reader@example.test".parse().unwrap()],
    )
    .unwrap();
    let m = mailer(engine.smtp.port(), "acme-mailer", password);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = m.send_raw(&envelope, submission.as_bytes()) {
        assert!(
            Instant::now() < deadline,
            "the pushed credential never worked: {e}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_received(&sink, 1);
    let delivered = &sink.received()[0].data;
    let text = String::from_utf8_lossy(delivered);
    assert!(!text.to_ascii_lowercase().contains("x-petrel"), "{text}");
    assert!(text.contains("\r\nSubject: tagged\r\n"), "{text}");
    assert!(text.starts_with("DKIM-Signature:"), "{text}");
    match dkimpy_verifies(delivered, DOMAIN, selector, &acme.dkim_txt) {
        Some(ok) => assert!(ok, "dkimpy rejected the signature:\n{text}"),
        None => petrel_testkit::peer_missing("dkimpy check: python3 dkimpy/pynacl not installed"),
    }
    let e = wait_event(&data, 0, "reader@example.test", "delivered");
    assert_eq!(e["tenant_id"], tenant_id.as_str(), "{e}");
    assert_eq!(e["credential_id"], cred_id.as_str(), "{e}");
    assert_eq!(e["from_domain"], DOMAIN, "{e}");
    assert_eq!(e["rfc822_message_id"], "tagged-1@client.test", "{e}");
    assert_eq!(e["tags"], json!(["welcome", "q4"]), "{e}");
    assert_eq!(e["metadata"], json!({"user": "42", "vip": true}), "{e}");

    // 2. Malformed metadata from the trusted network: one 550 5.6.0 for both recipients.
    let bad = format!(
        "From: <news@{DOMAIN}>\r\nSubject: bad\r\nX-Petrel-Metadata: [1, 2]\r\n\r\nNo.\r\n"
    );
    let (code, reply) = relay(engine.smtp, &["a@example.test", "b@example.test"], &bad);
    assert_eq!(code, 550, "{reply}");
    assert_eq!(
        reply.trim_end(),
        "550 5.6.0 X-Petrel-Metadata must be a JSON object"
    );

    // 3. A trusted-network relay: the tenant is the From domain's, no credential, Petrel adds
    // no Message-ID. Its recipient is deferred, so it stays queued across the kill below.
    let queued = format!("user@{DEFERRED_DOMAIN}");
    let relayed = format!(
        "From: <news@{DOMAIN}>\r\nSubject: relayed\r\nX-Petrel-Tag: relay\r\n\r\nLater.\r\n"
    );
    let (code, reply) = relay(engine.smtp, &[&queued], &relayed);
    assert_eq!(code, 250, "{reply}");
    let e = wait_event(&data, 0, &queued, "deferred");
    assert_eq!(e["tenant_id"], tenant_id.as_str(), "{e}");
    assert!(e["credential_id"].is_null(), "{e}");
    assert!(e["rfc822_message_id"].is_null(), "{e}");
    assert_eq!(e["tags"], json!(["relay"]), "{e}");
    assert!(e["metadata"].is_null(), "{e}");
    let message_id = e["message_id"].as_str().unwrap().to_string();
    assert_eq!(
        sink.received().len(),
        1,
        "the refused message was not delivered"
    );

    // 4. kill -9, restart: the recovered message's next attempts carry the same attribution.
    let files_before = events(&data, 0).len();
    assert!(files_before >= 2);
    let next_file = std::fs::read_dir(data.join("events")).unwrap().count() as u64;
    engine.kill9();
    let engine = Engine::start_with(&data, &args, Some(config));
    let e = wait_event(&data, next_file, &queued, "deferred");
    assert_eq!(e["message_id"], message_id.as_str(), "{e}");
    assert_eq!(e["tenant_id"], tenant_id.as_str(), "{e}");
    assert_eq!(e["from_domain"], DOMAIN, "{e}");
    assert_eq!(e["tags"], json!(["relay"]), "{e}");
    assert!(engine.stop());
}
