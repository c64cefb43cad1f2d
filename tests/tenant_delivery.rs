//! A tenant's delivery settings (issue 15) from the control plane's admin API to a running
//! engine: `egress_pool` and `delivery_weight` set through `PATCH /v1/tenants/{id}` reach the
//! engine over the push link (snapshot format 5), and the engine's admin endpoint
//! (`GET /v1/tenants/{id}/delivery`) shows what its delivery reads for the tenant; clearing the
//! pool reaches it too. The engine's view needs its admin token and knows no other tenant.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::control::{api, start_control};
use common::*;
use petrel_loadtest::{start_sink, SinkConfig};
use petrel_testkit::dns::DnsServer;
use petrel_testkit::http::Request;
use serde_json::{json, Value};

const TOKEN: &str = "tenant-delivery-push-token-0123456789";
/// The longest a pushed change may take to show on the engine.
const WAIT_MAX: Duration = Duration::from_secs(30);
/// Between two looks at the engine's view.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// One call to the engine's admin endpoint: status and JSON body.
fn engine_view(admin: SocketAddr, token: Option<&str>, tenant: &str) -> (u16, Value) {
    let mut req = Request::get(&format!("/v1/tenants/{tenant}/delivery"));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let r = req
        .send(admin)
        .expect("the engine's admin endpoint answers");
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

/// Polls the engine's view of `tenant` until its settings are `(pool, weight)` (bounded);
/// returns the policy version they came with.
fn wait_for(admin: SocketAddr, token: &str, tenant: &str, pool: Value, weight: u32) -> u64 {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let (status, body) = engine_view(admin, Some(token), tenant);
        if status == 200 && body["egress_pool"] == pool && body["delivery_weight"] == weight {
            assert_eq!(body["tenant_id"], tenant);
            return body["policy_version"].as_u64().expect("a policy version");
        }
        assert!(
            Instant::now() < deadline,
            "the engine never showed {pool} / {weight} for {tenant}: {status} {body}"
        );
        std::thread::sleep(POLL_EVERY);
    }
}

#[test]
fn a_tenants_egress_pool_set_through_the_api_reaches_the_engine() {
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
        ..SinkConfig::default()
    })
    .unwrap();
    let engine_dir = dir.path().join("engine");
    std::fs::create_dir_all(&engine_dir).unwrap();
    let args = linked_engine_args(
        &engine_dir,
        info.push_addr,
        &info.push_cert_pem,
        TOKEN,
        1,
        sink.addr(),
    );
    let engine = Engine::start(&engine_dir, &args);
    let admin_token = std::fs::read_to_string(engine_dir.join("admin.token")).unwrap();
    let admin_token = admin_token.trim();

    let (status, created) = api(
        info.api_addr,
        "POST",
        "/v1/tenants",
        &owner,
        Some(json!({"name": "delivery-co"})),
    );
    assert_eq!(status, 201, "{created}");
    let tenant = created["tenant"]["id"].as_str().unwrap().to_string();

    // The defaults first: the engine's default pool, weight 1.
    let first = wait_for(engine.admin, admin_token, &tenant, Value::Null, 1);

    // Set through the admin API; the pushed snapshot brings both to the engine.
    let path = format!("/v1/tenants/{tenant}");
    let (status, body) = api(
        info.api_addr,
        "PATCH",
        &path,
        &owner,
        Some(json!({"egress_pool": "warm-pool", "delivery_weight": 4})),
    );
    assert_eq!(status, 200, "{body}");
    let set = wait_for(engine.admin, admin_token, &tenant, json!("warm-pool"), 4);
    assert!(set > first, "a newer policy version: {set} after {first}");

    // Cleared: back to the default pool, the weight kept.
    let (status, body) = api(
        info.api_addr,
        "PATCH",
        &path,
        &owner,
        Some(json!({"egress_pool": null})),
    );
    assert_eq!(status, 200, "{body}");
    let cleared = wait_for(engine.admin, admin_token, &tenant, Value::Null, 4);
    assert!(cleared > set);

    // A refused change never reaches the engine: the control plane answers 422.
    let (status, body) = api(
        info.api_addr,
        "PATCH",
        &path,
        &owner,
        Some(json!({"egress_pool": "Not A Pool"})),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");

    // The view wants the admin token, and knows only the policy's tenants.
    assert_eq!(engine_view(engine.admin, None, &tenant).0, 401);
    let (status, body) = engine_view(engine.admin, Some(admin_token), "ten_nobody");
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("unknown_tenant"))
    );
    assert!(engine.stop(), "the engine stops cleanly");
}
