//! Provider shaping limits (issue 15) from the control plane's admin API to a running engine:
//! `PUT /v1/shaping/providers/{name}` reaches the engine over the push link (snapshot format
//! 5) and its delivery lays the limits over its shaping files without a restart; the engine's
//! admin endpoint (`GET /v1/shaping`) shows the effective limits a new site takes. A delete
//! brings the files' limits back; a name no provider has changes nothing.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::control::{api, start_control};
use common::*;
use petrel_loadtest::{start_sink, SinkConfig};
use petrel_testkit::dns::DnsServer;
use petrel_testkit::http::Request;
use serde_json::{json, Value};

const TOKEN: &str = "shaping-overlay-push-token-0123456789";
/// The longest a pushed change may take to show on the engine.
const WAIT_MAX: Duration = Duration::from_secs(30);
/// Between two looks at the engine's view.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// `GET /v1/shaping` on the engine's admin endpoint: status and JSON body.
fn engine_view(admin: SocketAddr, token: Option<&str>) -> (u16, Value) {
    let mut req = Request::get("/v1/shaping");
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

/// A provider's effective limits in the view.
fn provider<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["providers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no provider {name} in {view}"))
}

/// Polls the engine's view until `done` holds (bounded); returns the view.
fn wait_for(admin: SocketAddr, token: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let (status, body) = engine_view(admin, Some(token));
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the engine never showed {what}: {status} {body}"
        );
        std::thread::sleep(POLL_EVERY);
    }
}

#[test]
fn provider_limits_set_through_the_api_reach_the_engines_delivery() {
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

    // The shipped file's limits first: Google 5 connections, 50 per connection, no rate.
    let shipped = wait_for(engine.admin, admin_token, "the shipped limits", |v| {
        v["pushed"] == json!([])
    });
    let google = provider(&shipped, "google").clone();
    assert_eq!(google["connections_max"], 5, "{google}");
    assert_eq!(google["messages_per_minute_max"], Value::Null);
    let yahoo = provider(&shipped, "yahoo").clone();
    let first = shipped["policy_version"]
        .as_u64()
        .expect("a policy version");

    // Set through the admin API: Google's connections and a rate, and the default section.
    let (status, body) = api(
        info.api_addr,
        "PUT",
        "/v1/shaping/providers/google",
        &owner,
        Some(json!({"connections_max": 2, "messages_per_minute_max": 120})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = api(
        info.api_addr,
        "PUT",
        "/v1/shaping/providers/default",
        &owner,
        Some(json!({"recipients_per_transaction_max": 20})),
    );
    assert_eq!(status, 200, "{body}");
    let set = wait_for(engine.admin, admin_token, "the pushed limits", |v| {
        v["pushed"] == json!(["default", "google"])
    });
    assert!(set["policy_version"].as_u64().unwrap() > first);
    let g = provider(&set, "google");
    assert_eq!(g["connections_max"], 2, "{g}");
    assert_eq!(g["messages_per_minute_max"], 120, "{g}");
    assert_eq!(
        g["messages_per_connection_max"], google["messages_per_connection_max"],
        "unset: the file's"
    );
    assert_eq!(
        g["recipients_per_transaction_max"], 20,
        "from the default section"
    );
    assert_eq!(set["default"]["recipients_per_transaction_max"], 20);
    assert_eq!(
        provider(&set, "yahoo")["connections_max"],
        yahoo["connections_max"]
    );

    // A provider no file has is accepted by the control plane and ignored by the engine.
    let (status, body) = api(
        info.api_addr,
        "PUT",
        "/v1/shaping/providers/no-such-provider",
        &owner,
        Some(json!({"connections_max": 1})),
    );
    assert_eq!(status, 200, "{body}");
    let unknown = wait_for(engine.admin, admin_token, "the unknown name", |v| {
        v["pushed"] == json!(["default", "google", "no-such-provider"])
    });
    assert_eq!(unknown["providers"], set["providers"], "nothing changed");

    // Deleted: the files' limits again.
    for name in ["google", "default", "no-such-provider"] {
        let (status, body) = api(
            info.api_addr,
            "DELETE",
            &format!("/v1/shaping/providers/{name}"),
            &owner,
            None,
        );
        assert_eq!(status, 204, "{body}");
    }
    let cleared = wait_for(engine.admin, admin_token, "the files' limits", |v| {
        v["pushed"] == json!([])
    });
    assert_eq!(cleared["providers"], shipped["providers"]);
    assert_eq!(cleared["default"], shipped["default"]);

    // A refused change never reaches the engine: the control plane answers 422.
    let (status, body) = api(
        info.api_addr,
        "PUT",
        "/v1/shaping/providers/google",
        &owner,
        Some(json!({"connections_max": 0})),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");

    // The view wants the admin token.
    assert_eq!(engine_view(engine.admin, None).0, 401);
    assert!(engine.stop(), "the engine stops cleanly");
}
