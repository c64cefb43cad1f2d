//! Webhooks on SQLite (the delivery scenario also runs on PostgreSQL in `pg.rs`): real HTTPS
//! to a Python receiver with its own signature check, the SSRF refusals at creation and at
//! connect time (DNS rebinding through the loopback DNS server), and the receiver's own checks.

mod common;

use std::process::Command;

use common::scenarios::new_tenant;
use common::webhooks::{loopback_harness, pki, receiver_script, Receiver};
use petrel_testkit::dns::a;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_signed_in_order_with_retries_rotation_and_disabling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (h, clock, pki) = loopback_harness(None, dir.path()).await;
    common::webhooks::delivery(&h, &clock, &pki, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_loopback_targets_are_refused_at_creation_and_at_connect() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The default: no loopback targets.
    let h = common::start().await;
    let (_t, key) = new_tenant(&h, "ssrf-co").await;
    h.dns.upsert(a("loop.test", 60, "127.0.0.1"));
    h.dns.upsert(a("private.test", 60, "10.0.0.5"));
    h.dns.upsert(a("mixed.test", 60, "93.184.216.34"));
    h.dns.upsert(a("mixed.test", 60, "fd00::1"));
    h.dns.upsert(a("rebind.test", 60, "93.184.216.34"));
    let create = |url: String| {
        let h = &h;
        let key = key.clone();
        async move {
            h.call(
                "POST",
                "/v1/webhooks",
                Some(&key),
                Some(json!({"url": url, "events": ["delivered"]})),
            )
            .await
        }
    };
    for url in [
        "https://127.0.0.1/",
        "https://2130706433/",
        "https://0x7f.1/",
        "https://loop.test./",
        "https://127.1.2.3:8443/x",
        "https://10.1.2.3/",
        "https://172.16.0.1/",
        "https://192.168.1.1/",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/",
        "https://0.0.0.0/",
        "https://224.0.0.1/",
        "https://192.0.2.10/",
        "https://[::1]/",
        "https://[fd00::1]/",
        "https://[fe80::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:10.0.0.1]/",
        "https://localhost/",
        "https://api.localhost/",
        "https://loop.test/",
        "https://private.test/",
        "https://mixed.test/",
        "https://nxdomain.test/",
        "http://93.184.216.34/",
        "http://loop.test/",
        "ftp://93.184.216.34/",
        "https://user:pw@93.184.216.34/",
        "not a url",
    ] {
        let r = create(url.to_string()).await;
        assert_eq!(r.status, 422, "{url} must be refused: {:?}", r.body);
        assert_eq!(r.code(), "invalid_request");
    }
    // Bounds: URL length, event types.
    let long = format!("https://93.184.216.34/{}", "a".repeat(2_100));
    assert_eq!(create(long).await.status, 422);
    for events in [json!([]), json!(["Delivered"]), json!(["a b"])] {
        let r = h
            .call(
                "POST",
                "/v1/webhooks",
                Some(&key),
                Some(json!({"url": "https://93.184.216.34/", "events": events})),
            )
            .await;
        assert_eq!(r.status, 422, "{events}: {:?}", r.body);
    }
    let many: Vec<String> = (0..33).map(|i| format!("type{i}")).collect();
    let r = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&key),
            Some(json!({"url": "https://93.184.216.34/", "events": many})),
        )
        .await;
    assert_eq!(r.status, 422);
    // A future type is a valid token.
    let r = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&key),
            Some(json!({"url": "https://93.184.216.34/", "events": ["suppressed", "delivered"]})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    // DNS rebinding: public at creation, loopback at delivery. The connect-time check refuses
    // it and the receiver (listening on that loopback port) never hears of it.
    let pki = pki(dir.path(), &["rebind.test"]);
    let rx = Receiver::start(dir.path(), &pki, 1, 300).await;
    let r = create(format!("https://rebind.test:{}/", rx.port)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    rx.set_secret(0, r.body["secret"].as_str().expect("secret"));
    h.dns.upsert(a("rebind.test", 60, "127.0.0.1"));
    let r = h
        .call("POST", &format!("/v1/webhooks/{id}/test"), Some(&key), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["state"], "failed");
    let attempt = &r.body["attempts"][0];
    assert_eq!(attempt["ok"], false);
    assert!(attempt["status_code"].is_null());
    let error = attempt["error"].as_str().expect("error text");
    assert!(
        error.contains("127.0.0.1") && error.contains("loopback"),
        "{error}"
    );
    assert!(rx.lines().is_empty(), "nothing reached the receiver");
    let r = h
        .call(
            "GET",
            &format!("/v1/webhooks/{id}/deliveries"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.body["deliveries"][0]["attempts"][0]["error"], error);

    // The per-tenant bound.
    let mut n = 2;
    loop {
        let r = create("https://93.184.216.34/".into()).await;
        if r.status == 409 {
            break;
        }
        assert_eq!(r.status, 201, "{:?}", r.body);
        n += 1;
        assert!(n <= petrel_control::webhooks::WEBHOOKS_PER_TENANT_MAX);
    }
    assert_eq!(n, petrel_control::webhooks::WEBHOOKS_PER_TENANT_MAX);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_allowed_still_refuses_private_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (h, _clock, _pki) = loopback_harness(None, dir.path()).await;
    let (_t, key) = new_tenant(&h, "dev-co").await;
    h.dns.upsert(a("private.test", 60, "192.168.7.7"));
    for (url, want) in [
        ("https://10.1.2.3/", 422),
        ("https://private.test/", 422),
        ("https://[fd00::1]/", 422),
        ("https://169.254.169.254/", 422),
        ("http://93.184.216.34/", 422),
        ("http://127.0.0.1:9/", 201),
        ("https://localhost:9/", 201),
        ("https://hooks.test:9/", 201),
    ] {
        let r = h
            .call(
                "POST",
                "/v1/webhooks",
                Some(&key),
                Some(json!({"url": url, "events": ["delivered"]})),
            )
            .await;
        assert_eq!(r.status, want, "{url}: {:?}", r.body);
    }
    // Development: a plain-http receiver on loopback gets signed deliveries.
    let rx = Receiver::start_with(dir.path(), None, 1, 300).await;
    let r = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&key),
            Some(json!({"url": format!("http://127.0.0.1:{}/dev", rx.port), "events": ["delivered"]})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    rx.set_secret(0, r.body["secret"].as_str().expect("secret"));
    let r = h
        .call("POST", &format!("/v1/webhooks/{id}/test"), Some(&key), None)
        .await;
    assert_eq!(r.body["state"], "delivered", "{:?}", r.body);
    assert_eq!(rx.lines()[0]["status"], 200);
}

/// The receiver's check is the one docs/webhooks.md describes: a bad signature, an unknown
/// secret or a stale timestamp is refused.
#[test]
fn the_receiver_verifies_signatures_and_timestamps() {
    let script = receiver_script();
    let dir = script.parent().expect("tests dir").to_path_buf();
    let sig = petrel_control::webhooks::sign::header(&["whsec_a", "whsec_b"], 1_700_000_000, b"{}");
    let code = format!(
        r#"
import sys
sys.path.insert(0, {dir:?})
import webhook_receiver as w
sig = {sig:?}
now = 1700000000
assert w.verify(["whsec_a"], "1700000000", b"{{}}", sig, 300, now) == [0]
assert w.verify(["x", "whsec_b"], "1700000000", b"{{}}", sig, 300, now) == [1]
assert w.verify(["whsec_a", "whsec_b"], "1700000000", b"{{}}", sig, 300, now) == [0, 1]
assert w.verify(["whsec_c"], "1700000000", b"{{}}", sig, 300, now) == []
assert w.verify(["whsec_a"], "1700000000", b"{{ }}", sig, 300, now) == []
assert w.verify(["whsec_a"], "1700000000", b"{{}}", sig, 300, now + 301) == []
assert w.verify(["whsec_a"], "1700000000", b"{{}}", sig, 300, now - 301) == []
assert w.verify(["whsec_a"], "x", b"{{}}", sig, 300, now) == []
print("ok")
"#,
        dir = dir.display().to_string(),
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// The first fenced block of `lang` in docs/webhooks.md.
fn doc_block(lang: &str) -> String {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/webhooks.md"),
    )
    .expect("docs/webhooks.md");
    let start = doc
        .find(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("a {lang} block"))
        + lang.len()
        + 4;
    let len = doc[start..].find("```").expect("block end");
    doc[start..start + len].to_string()
}

/// The Python and Node.js examples of docs/webhooks.md accept a real delivery's signature
/// (either secret during a rotation) and refuse a wrong secret, a changed body and a stale
/// timestamp.
#[test]
fn the_documented_receivers_verify_real_signatures() {
    let now = petrel_control::now_unix_ms() / 1000;
    let body = r#"{"events":[{"id":"e1","type":"delivered"}]}"#;
    let sig =
        petrel_control::webhooks::sign::header(&["whsec_new", "whsec_old"], now, body.as_bytes());
    let stale = now - 301;
    let stale_sig = petrel_control::webhooks::sign::header(&["whsec_new"], stale, body.as_bytes());
    let python = format!(
        r#"{code}
body = {body:?}.encode()
h = {{"X-Petrel-Timestamp": "{now}", "X-Petrel-Signature": "{sig}"}}
assert verify("whsec_new", h, body)
assert verify("whsec_old", h, body)
assert not verify("whsec_other", h, body)
assert not verify("whsec_new", h, body + b" ")
assert not verify("whsec_new", {{"X-Petrel-Timestamp": "{stale}", "X-Petrel-Signature": "{stale_sig}"}}, body)
assert not verify("whsec_new", {{}}, body)
print("ok")
"#,
        code = doc_block("python"),
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(python)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    let node = format!(
        r#"{code}
const assert = require("assert");
const body = Buffer.from({body:?});
const h = {{"x-petrel-timestamp": "{now}", "x-petrel-signature": "{sig}"}};
assert(verify("whsec_new", h, body));
assert(verify("whsec_old", h, body));
assert(!verify("whsec_other", h, body));
assert(!verify("whsec_new", h, Buffer.concat([body, Buffer.from(" ")])));
assert(!verify("whsec_new", {{"x-petrel-timestamp": "{stale}", "x-petrel-signature": "{stale_sig}"}}, body));
assert(!verify("whsec_new", {{}}, body));
console.log("ok");
"#,
        code = doc_block("javascript"),
    );
    match Command::new("node").arg("-e").arg(node).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            petrel_testkit::peer_missing("the Node.js part: node not installed");
        }
        Err(e) => panic!("node: {e}"),
    }
}
