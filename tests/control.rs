//! End to end with the control plane: tenant, domain and credential made through the admin API
//! reach a running engine over the push link; AUTH against the pushed credential; the message
//! reaches the sink DKIM-signed, and an independent verifier (Python dkimpy) accepts it; revoking
//! the credential makes the next AUTH fail within a second; the engine restarts with the control
//! plane stopped and still accepts and signs.

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use common::control::{api, dkimpy_verifies, mailer, provision, start_control};
use common::*;
use lettre::message::Mailbox;
use lettre::{Message, Transport};
use petrel_loadtest::{start_sink, SinkConfig};
use petrel_testkit::dns::DnsServer;
use serde_json::json;

const DOMAIN: &str = "e2e.test";
const TOKEN: &str = "e2e-push-token-0123456789";

fn mail(subject: &str) -> Message {
    Message::builder()
        .from(Mailbox::from_str(&format!("News <news@{DOMAIN}>")).unwrap())
        .to(Mailbox::from_str("Reader <reader@example.test>").unwrap())
        .subject(subject)
        .body(String::from("Signed by Petrel.\r\n"))
        .unwrap()
}

/// Waits (bounded) until the sink holds `n` messages.
fn wait_received(sink: &petrel_loadtest::SinkHandle, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.received().len() < n {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn api_changes_reach_the_engine_sign_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let control_dir = dir.path().join("control");
    let (info, control_task) = start_control(&rt, &control_dir, TOKEN, dns.addr);
    let owner = info
        .bootstrap_key
        .clone()
        .expect("first start prints the owner key");
    let sink = start_sink(SinkConfig {
        threads: 1,
        keep_messages_max: 100,
        ..SinkConfig::default()
    })
    .unwrap();
    let engine_args = linked_engine_args(
        dir.path(),
        info.push_addr,
        &info.push_cert_pem,
        TOKEN,
        2,
        sink.addr(),
    );
    let data = dir.path().join("engine");
    let engine = Engine::start(&data, &engine_args);

    // Tenant, domain (Ed25519), DNS published, verified, SMTP credential.
    let acme = provision(info.api_addr, &owner, &dns, "acme", DOMAIN, "acme-mailer");
    let (admin, domain_id, selector, password, cred_id) = (
        &acme.admin,
        &acme.domain_id,
        &acme.selector,
        &acme.password,
        &acme.credential_id,
    );

    // The engine picks the credential up (within a second, normally); bounded wait.
    let m = mailer(engine.smtp.port(), "acme-mailer", password);
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.send(&mail("first")).is_err() {
        assert!(
            Instant::now() < deadline,
            "the pushed credential never worked"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(wait_received(&sink, 1), "the message reached the sink");
    let got = sink.received();
    let data0 = &got[0].data;
    let text = String::from_utf8_lossy(data0);
    assert!(
        text.starts_with("DKIM-Signature:") || text.contains("\r\nDKIM-Signature:"),
        "{text}"
    );
    assert!(
        text.contains(&format!("d={DOMAIN}")) && text.contains("a=ed25519-sha256"),
        "{text}"
    );
    match dkimpy_verifies(data0, DOMAIN, selector, &acme.dkim_txt) {
        Some(ok) => assert!(ok, "dkimpy rejected the signature:\n{text}"),
        None => petrel_testkit::peer_missing(
            "dkimpy check: python3 dkimpy/pynacl not installed (ops/test.sh installs them)",
        ),
    }
    let (code, engines) = api(info.api_addr, "GET", "/v1/engines", &owner, None);
    assert_eq!(code, 200, "{engines}");
    assert!(engines.to_string().contains("applied_version"), "{engines}");

    // Another tenant's key sees nothing of acme.
    let (_, other) = api(
        info.api_addr,
        "POST",
        "/v1/tenants",
        &owner,
        Some(json!({"name": "other"})),
    );
    let other_key = other["admin_key"]["secret"].as_str().unwrap().to_string();
    let (code, _) = api(
        info.api_addr,
        "GET",
        &format!("/v1/domains/{domain_id}"),
        &other_key,
        None,
    );
    assert_eq!(code, 404);

    // Revoke: the next AUTH fails within a second.
    let (code, _) = api(
        info.api_addr,
        "POST",
        &format!("/v1/credentials/{cred_id}/revoke"),
        admin,
        None,
    );
    assert_eq!(code, 200);
    let revoked_at = Instant::now();
    loop {
        if m.send(&mail("after revoke")).is_err() {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "revoked credential still works after 1 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // An SMTP credential without the `send` scope (issue 16) is refused at AUTH.
    let (code, reader) = api(
        info.api_addr,
        "POST",
        "/v1/credentials",
        admin,
        Some(json!({
            "kind": "smtp", "name": "reader", "username": "acme-reader", "scopes": ["read"]
        })),
    );
    assert_eq!(code, 201, "{reader}");
    let reader_password = reader["secret"].as_str().unwrap().to_string();
    // A fresh credential, then the control plane goes away: the engine restarts on its snapshot.
    let (_, cred2) = api(
        info.api_addr,
        "POST",
        "/v1/credentials",
        admin,
        Some(json!({
            "kind": "smtp", "name": "mailer2", "username": "acme-mailer2", "allowed_sender_domains": [DOMAIN]
        })),
    );
    let password2 = cred2["secret"].as_str().unwrap().to_string();
    let m2 = mailer(engine.smtp.port(), "acme-mailer2", &password2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while m2.send(&mail("second")).is_err() {
        assert!(Instant::now() < deadline, "second credential never worked");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The engine has the snapshot with both (the reader's was made first).
    let refused = mailer(engine.smtp.port(), "acme-reader", &reader_password)
        .send(&mail("no send scope"))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("535"), "{refused}");
    // A tenant quota of 1 message per second, pushed: a burst of sends meets `451 4.7.1`.
    let tenant_id = &acme.tenant_id;
    let limits_path = format!("/v1/tenants/{tenant_id}/limits");
    let (code, body) = api(
        info.api_addr,
        "PUT",
        &limits_path,
        &owner,
        Some(json!({"messages_per_second_max": 1, "messages_per_day_max": null})),
    );
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let refusal = loop {
        let refused = (0..5).find_map(|i| m2.send(&mail(&format!("burst {i}"))).err());
        if let Some(e) = refused {
            break e.to_string();
        }
        assert!(Instant::now() < deadline, "the quota never applied");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        refusal.contains("451") && refusal.contains("4.7.1"),
        "over the tenant's rate: {refusal}"
    );
    let (code, body) = api(
        info.api_addr,
        "PUT",
        &limits_path,
        &owner,
        Some(json!({"messages_per_second_max": null, "messages_per_day_max": null})),
    );
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while (0..5).any(|i| m2.send(&mail(&format!("unlimited {i}"))).is_err()) {
        assert!(Instant::now() < deadline, "the quota was never lifted");
        std::thread::sleep(Duration::from_millis(100));
    }
    control_task.abort();
    rt.shutdown_timeout(Duration::from_secs(2));
    assert!(engine.stop());
    let engine = Engine::start(&data, &engine_args);
    let m2 = mailer(engine.smtp.port(), "acme-mailer2", &password2);
    m2.send(&mail("offline"))
        .expect("the engine accepts on its last snapshot");
    // Earlier sends may have raced the revocation, so look for this message, not a count.
    let offline = |m: &petrel_loadtest::ReceivedMessage| {
        String::from_utf8_lossy(&m.data).contains("Subject: offline")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sink.received().iter().any(offline) {
        assert!(
            Instant::now() < deadline,
            "the offline message never arrived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = sink
        .received()
        .into_iter()
        .find(offline)
        .expect("checked just above");
    assert!(
        String::from_utf8_lossy(&last.data).contains("DKIM-Signature:"),
        "signed without the control plane"
    );
    assert!(engine.stop());
}
