//! The engine's audit signals reach the control plane's audit log (issue 16), end to end:
//! failed SMTP AUTHs from one address, aggregated over a window (1 s here), become one
//! `smtp.auth_failed` row with the count and the usernames tried; queue admin calls that change
//! something, and refused ones, become `engine.queue_admin` rows (reads do not).

mod common;

use std::time::{Duration, Instant};

use common::control::{api, start_control};
use common::*;
use petrel_testkit::dns::DnsServer;
use petrel_testkit::http::Request;
use serde_json::Value;

const TOKEN: &str = "audit-signals-push-token-012345";

fn rows(addr: std::net::SocketAddr, owner: &str, action: &str, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let path = format!("/v1/audit-log?action={action}&limit=100");
        let (code, body) = api(addr, "GET", &path, owner, None);
        assert_eq!(code, 200, "{body}");
        let rows = body.as_array().cloned().unwrap_or_default();
        if rows.len() >= want {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "no {want} {action} rows: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn failed_smtp_auths_and_queue_admin_calls_reach_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (info, control_task) = start_control(&rt, &dir.path().join("control"), TOKEN, dns.addr);
    let owner = info.bootstrap_key.clone().expect("owner key");
    let data = dir.path().join("engine");
    let mut args = linked_engine_args(
        dir.path(),
        info.push_addr,
        &info.push_cert_pem,
        TOKEN,
        1,
        "127.0.0.1:9".parse().unwrap(),
    );
    args.push("--no-delivery".into());
    let engine = Engine::start_with(
        &data,
        &args,
        Some("[auth]\nfailure_audit_window_secs = 1\nfailures_per_address_max = 100\n"),
    );

    // Three wrong passwords from 127.0.0.1, over STARTTLS.
    for user in ["mallory", "eve", "mallory"] {
        let tried = common::control::mailer(engine.smtp.port(), user, "wrong").test_connection();
        assert!(tried.is_err(), "{user} authenticated");
    }
    // The attempts may straddle windows: one row per address per window.
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let failed = rows(info.api_addr, &owner, "smtp.auth_failed", 1);
        let total: u64 = failed
            .iter()
            .map(|r| r["after"]["failures"].as_u64().unwrap())
            .sum();
        if total == 3 {
            break failed;
        }
        assert!(total < 3 && Instant::now() < deadline, "{failed:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(failed.len() <= 3);
    assert_eq!(failed[0]["target"], "127.0.0.1");
    assert!(failed[0]["actor"].as_str().unwrap().starts_with("engine:"));
    let names: Vec<&str> = failed
        .iter()
        .flat_map(|r| r["after"]["usernames"].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    assert!(
        names.contains(&"mallory") && names.contains(&"eve"),
        "{names:?}"
    );

    // Queue admin: a read (not sent), a suspension, and a call without the token.
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let ok = Request::new("GET", "/v1/queue")
        .bearer(token.trim())
        .send(engine.admin)
        .unwrap();
    assert_eq!(ok.status, 200);
    let ok = Request::new("POST", "/v1/queue/held.test/suspend")
        .bearer(token.trim())
        .send(engine.admin)
        .unwrap();
    assert_eq!(ok.status, 200);
    let refused = Request::new("POST", "/v1/queue/held.test/bounce")
        .send(engine.admin)
        .unwrap();
    assert_eq!(refused.status, 401);
    let calls = rows(info.api_addr, &owner, "engine.queue_admin", 2);
    let mut seen: Vec<(String, u64)> = calls
        .iter()
        .map(|r| {
            (
                r["target"].as_str().unwrap().to_string(),
                r["after"]["status"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("/v1/queue/held.test/bounce".to_string(), 401),
            ("/v1/queue/held.test/suspend".to_string(), 200),
        ]
    );
    let (_, v) = api(info.api_addr, "GET", "/v1/audit-log/verify", &owner, None);
    assert_eq!(v["ok"], true, "{v}");
    assert!(engine.stop());
    control_task.abort();
}
