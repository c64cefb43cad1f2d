//! Admin API over real HTTP on loopback, SQLite store in a temp dir.

mod common;

use common::scenarios;
use serde_json::{json, Value};

#[tokio::test]
async fn domains_lifecycle() {
    let h = common::start().await;
    scenarios::domains(&h).await;
}

#[tokio::test]
async fn credentials_lifecycle() {
    let h = common::start().await;
    scenarios::credentials(&h).await;
}

#[tokio::test]
async fn errors_are_json() {
    let h = common::start().await;
    scenarios::errors(&h).await;
}

#[tokio::test]
async fn limits_and_defaults() {
    let h = common::start().await;
    scenarios::limits(&h).await;
}

#[tokio::test]
async fn audit_chain_detects_tampering() {
    let h = common::start().await;
    let db = h.dir.path().join("control").join("petrel.db");
    let tamper = async move {
        // An attacker with database access rewrites history.
        let url = format!("sqlite://{}", db.display());
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.expect("open db");
        let n = sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3")
            .execute(&pool)
            .await
            .expect("tamper")
            .rows_affected();
        assert_eq!(n, 1);
    };
    scenarios::audit(&h, tamper).await;
}

#[tokio::test]
async fn failed_auth_is_throttled() {
    let h = common::start().await;
    for i in 0..10 {
        let r = h
            .call("GET", "/v1/domains", Some(&"x".repeat(40)), None)
            .await;
        assert_eq!(r.status, 401, "attempt {i}");
    }
    let r = h
        .call("GET", "/v1/domains", Some(&"x".repeat(40)), None)
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "too_many_requests");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("secs");
    assert!((1..=60).contains(&retry), "{retry}");
    // Even the right key waits: the address is blocked, not the key.
    let r = h.owner("GET", "/v1/tenants", None).await;
    assert_eq!(r.status, 429);
}

/// The served document is the generated one, every operation declares its permission (or is
/// public), every request body has a real schema, and the router serves every documented route.
#[tokio::test]
async fn openapi_lists_every_route() {
    use petrel_control::api::openapi::{self, Access, AccessTable, PERMISSION_EXTENSION};
    let h = common::start().await;
    let r = h.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["openapi"], "3.1.0");
    assert_eq!(
        r.body,
        openapi::build().expect("document"),
        "served = generated"
    );
    let table = AccessTable::from_document(&r.body).expect("every route declares its access");
    let entries = table.entries();
    assert_eq!(entries.len(), 64, "{entries:?}");
    let public: Vec<_> = entries
        .iter()
        .filter(|(_, _, a)| *a == Access::Public)
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    assert_eq!(
        public,
        [
            "GET /.well-known/mta-sts.txt",
            "GET /u/{token}",
            "POST /u/{token}",
            "GET /v1/openapi.json"
        ]
    );
    let schemas = &r.body["components"]["schemas"];
    for (method, path, access) in &entries {
        let op = &r.body["paths"][path.as_str()][method.as_str().to_ascii_lowercase()];
        if let Access::Requires(p) = access {
            assert_eq!(op[PERMISSION_EXTENSION], p.name(), "{method} {path}");
            assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
            for status in ["401", "403"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} {status}"
                );
            }
        }
        if let Some(body) = op.get("requestBody") {
            let content = &body["content"];
            if path == "/u/{token}" {
                // RFC 8058's one-click POST is a form.
                assert!(
                    content.get("application/x-www-form-urlencoded").is_some(),
                    "{method} {path}: body {content}"
                );
            } else if content.get("application/json").is_none() {
                // The suppression import: CSV or JSON lines, streamed.
                assert!(
                    content.get("text/csv").is_some()
                        && content.get("application/x-ndjson").is_some(),
                    "{method} {path}: body {content}"
                );
            } else {
                let schema = &content["application/json"]["schema"];
                let name = schema["$ref"]
                    .as_str()
                    .or_else(|| schema["oneOf"][1]["$ref"].as_str())
                    .and_then(|r| r.strip_prefix("#/components/schemas/"))
                    .unwrap_or_else(|| panic!("{method} {path}: body schema {schema}"));
                // An object, or one of objects (one entry or a list of them).
                let object = |s: &Value| {
                    s["properties"].is_object()
                        || s["$ref"]
                            .as_str()
                            .and_then(|r| r.strip_prefix("#/components/schemas/"))
                            .is_some_and(|n| schemas[n]["properties"].is_object())
                };
                let members = schemas[name]["oneOf"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                assert!(
                    object(&schemas[name]) || members.iter().any(object),
                    "{method} {path}: {name} has no properties"
                );
            }
        }
        for (status, resp) in op["responses"].as_object().expect("responses") {
            if status != "204" {
                let content = &resp["content"];
                assert!(
                    content["application/json"]["schema"].is_object()
                        // The one-click confirmation page.
                        || content["text/html"]["schema"].is_object()
                        // The MTA-STS policy file (RFC 8461 §3.2).
                        || content["text/plain"]["schema"].is_object()
                        // Streamed exports: JSON lines (and CSV for some).
                        || content.get("application/x-ndjson").is_some(),
                    "{method} {path} {status}: no schema"
                );
            }
        }
        // And the router serves it (never the "route not found" fallback).
        let concrete = path
            .replace("{id}", "none")
            .replace("{domain}", "none.test")
            .replace("{address}", "none@none.test")
            .replace("{name}", "none");
        let resp = h.owner(method.as_str(), &concrete, Some(json!({}))).await;
        assert!(
            !(resp.status == 404 && resp.body["error"]["message"] == "route not found"),
            "{method} {path} not routed"
        );
        assert_ne!(resp.status, 405, "{method} {path}");
    }
}

#[tokio::test]
async fn second_start_prints_no_key_and_keeps_data() {
    let h = common::start().await;
    let (tenant, _) = scenarios::new_tenant(&h, "persist").await;
    let cfg = petrel_control::ControlConfig {
        data_dir: h.dir.path().join("control"),
        database_url: None,
        api_listen: "127.0.0.1:0".parse().expect("addr"),
        push_listen: "127.0.0.1:0".parse().expect("addr"),
        push_token: "t".into(),
        dns_nameservers: vec!["127.0.0.1:9".parse().expect("addr")],
        webhooks_allow_loopback: false,
        webhooks_ca_file: None,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(petrel_control::serve_with(
        cfg,
        common::test_options(),
        Some(tx),
    ));
    let info = rx.await.expect("second instance ready");
    assert!(info.bootstrap_key.is_none());
    let r = common::http(
        info.api_addr,
        "GET",
        &format!("/v1/tenants/{tenant}"),
        Some(&h.owner_key),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    task.abort();
}

#[tokio::test]
async fn bootstrap_dev_is_idempotent() {
    let h = common::start().await;
    let first = petrel_control::bootstrap_dev(&h.info)
        .await
        .expect("dev bootstrap");
    assert_eq!(first.domain, "dev.petrel.test");
    let password = first
        .smtp_password
        .clone()
        .expect("password shown at creation");
    assert_eq!(password.len(), 40);
    let api_key = first.api_key.clone().expect("api key");
    assert!(first.lines().iter().any(|l| l.contains(&password)));
    let second = petrel_control::bootstrap_dev(&h.info).await.expect("again");
    assert_eq!(second.tenant_id, first.tenant_id);
    assert_eq!(second.smtp_username, first.smtp_username);
    assert!(second.smtp_password.is_none());
    let r = h.call("GET", "/v1/domains", Some(&api_key), None).await;
    assert_eq!(r.status, 200);
    let domains = r.body.as_array().expect("list");
    assert_eq!(domains.len(), 1);
    assert_eq!(domains[0]["verified_for_loopback"], true);
    let r = h.call("GET", "/v1/credentials", Some(&api_key), None).await;
    let smtp: Vec<_> = r
        .body
        .as_array()
        .expect("creds")
        .iter()
        .filter(|c| c["kind"] == "smtp")
        .collect();
    assert_eq!(smtp.len(), 1, "no duplicate credentials");
}

#[tokio::test]
async fn audit_chain_detects_removed_rows() {
    let h = common::start().await;
    for i in 0..3 {
        scenarios::new_tenant(&h, &format!("t{i}")).await;
    }
    let url = format!(
        "sqlite://{}",
        h.dir.path().join("control").join("petrel.db").display()
    );
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.expect("open db");
    let r = h.owner("GET", "/v1/audit-log/verify", None).await;
    assert_eq!(r.body["ok"], true);
    let rows = r.body["rows_checked"].as_i64().expect("rows");
    assert_eq!(rows, 4, "bootstrap + 3 tenants");
    // Cut the newest row off the end.
    sqlx::query("DELETE FROM audit_log WHERE seq = 4")
        .execute(&pool)
        .await
        .expect("delete");
    let r = h.owner("GET", "/v1/audit-log/verify", None).await;
    assert_eq!(r.body["ok"], false, "{:?}", r.body);
    assert_eq!(r.body["first_broken_seq"], 4);
    // Remove one from the middle.
    sqlx::query("DELETE FROM audit_log WHERE seq = 2")
        .execute(&pool)
        .await
        .expect("delete");
    let r = h.owner("GET", "/v1/audit-log/verify", None).await;
    assert_eq!(r.body["first_broken_seq"], 3, "{:?}", r.body);
    // The CLI reports it too.
    let cmd = petrel_control::ControlCommand::AuditVerify {
        data_dir: h.dir.path().to_path_buf(),
        database_url: None,
        database_password_file: None,
        key_file: Some(common::shared_key_file()),
        audit_checkpoint_file: None,
        audit_key_file: None,
        audit_public_key: None,
    };
    let e = petrel_control::run(cmd)
        .await
        .expect_err("a broken chain fails");
    assert!(e.to_string().contains("audit chain broken"), "{e}");
}

/// The admin API over HTTPS with the operator's certificate; plain HTTP off loopback refused.
#[tokio::test]
async fn admin_api_speaks_tls_when_given_a_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let (cert_path, key_path) = (dir.path().join("api.pem"), dir.path().join("api.key"));
    std::fs::write(&cert_path, ck.cert.pem()).expect("write cert");
    std::fs::write(&key_path, ck.key_pair.serialize_pem()).expect("write key");
    let config = |api_listen: &str| petrel_control::ControlConfig {
        data_dir: dir.path().join("control"),
        database_url: None,
        api_listen: api_listen.parse().expect("addr"),
        push_listen: "127.0.0.1:0".parse().expect("addr"),
        push_token: "t".into(),
        dns_nameservers: vec!["127.0.0.1:9".parse().expect("addr")],
        webhooks_allow_loopback: false,
        webhooks_ca_file: None,
    };

    // Off loopback without TLS: refused at start, naming what to do.
    let err = petrel_control::serve_with(config("0.0.0.0:0"), common::test_options(), None)
        .await
        .expect_err("plain HTTP on a public address");
    assert!(err.to_string().contains("--api-tls-cert"), "{err}");

    let opts = petrel_control::ServeOptions {
        api_tls_cert: Some(cert_path),
        api_tls_key: Some(key_path),
        ..common::test_options()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(petrel_control::serve_with(
        config("127.0.0.1:0"),
        opts,
        Some(tx),
    ));
    let info = rx.await.expect("ready");
    assert_eq!(info.api_scheme, "https");
    let owner = info.bootstrap_key.clone().expect("first start");

    let root = ck.cert.der().clone();
    let https = |key: Option<String>| {
        let root = root.clone();
        async move {
            let tls = petrel_testkit::http::connect_tls(info.api_addr, "localhost", root)
                .await
                .expect("TLS handshake");
            common::http_over(
                tls,
                info.api_addr,
                "GET",
                "/v1/tenants",
                key.as_deref(),
                None,
            )
            .await
        }
    };
    assert_eq!(https(Some(owner.clone())).await.status, 200);
    let r = https(None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "unauthorized");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(info.api_addr)
        .await
        .expect("connect");
    tcp.write_all(b"GET /v1/tenants HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        tcp.read_to_end(&mut buf),
    )
    .await;
    assert!(
        !buf.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    task.abort();
}
