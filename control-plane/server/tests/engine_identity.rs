//! One identity per engine (issue 16): an engine given its own token must present it (the
//! shared token no longer admits it); revoking it cuts its live link at once and refuses it
//! afterwards, while another engine keeps receiving policy; every action is audited; only the
//! operator's owners may do it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use petrel_policy::{LinkConfig, LinkTrust, PolicyStore};
use serde_json::json;

fn link(
    h: &common::Harness,
    token: &str,
    engine_id: &str,
    dir: &std::path::Path,
) -> (Arc<PolicyStore>, tokio::task::AbortHandle) {
    let store = Arc::new(PolicyStore::load_or_empty(dir));
    let mut cfg = LinkConfig::new(
        &h.info.push_addr.to_string(),
        "localhost",
        LinkTrust::CaPem(h.info.push_cert_pem.as_bytes().to_vec()),
        token,
        engine_id,
    );
    cfg.reconnect_delay_ms_min = 50;
    let task = tokio::spawn(petrel_policy::run_link(cfg, store.clone(), |_| {}));
    (store, task.abort_handle())
}

async fn connected(h: &common::Harness, engine_id: &str) -> bool {
    let r = h.owner("GET", "/v1/engines", None).await;
    r.body
        .as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == engine_id).cloned())
        .is_some_and(|e| e["connected"] == true)
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_engine_is_cut_off_while_another_keeps_running() {
    let h = common::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tokens = Vec::new();
    for id in ["engine-a", "engine-b"] {
        let r = h
            .owner("POST", &format!("/v1/engines/{id}/identity"), None)
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let token = r.body["token"].as_str().expect("token").to_string();
        assert!(token.starts_with("pen_") && r.body["identity"]["prefix"] == token[..12]);
        tokens.push(token);
    }
    // The shared token no longer admits an engine that has its own identity.
    let (_, shared) = link(&h, common::PUSH_TOKEN, "engine-a", &dir.path().join("s"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!connected(&h, "engine-a").await);
    shared.abort();

    let (store_a, task_a) = link(&h, &tokens[0], "engine-a", &dir.path().join("a"));
    let (store_b, task_b) = link(&h, &tokens[1], "engine-b", &dir.path().join("b"));
    eventually("both engines linked", || async {
        connected(&h, "engine-a").await && connected(&h, "engine-b").await
    })
    .await;

    let r = h.owner("POST", "/v1/engines/engine-a/revoke", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["revoked_unix_ms"].is_i64());
    eventually("the revoked engine cut off", || async {
        !connected(&h, "engine-a").await
    })
    .await;
    // A policy change reaches the other engine only.
    let before_a = store_a.version();
    common::scenarios::new_tenant(&h, "after-revocation-co").await;
    let want = h.info.app.db.policy_version().await.expect("version");
    eventually("engine-b applied the change", || async {
        store_b.version() >= want
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store_a.version(), before_a, "the revoked engine got policy");
    assert!(
        !connected(&h, "engine-a").await,
        "the revoked engine got back in"
    );
    assert!(connected(&h, "engine-b").await);

    // Audited; a tenant's owner may not touch engines; unknown identities are 404.
    let r = h
        .owner("GET", "/v1/audit-log?action=engine.revoke", None)
        .await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(1), "{:?}", r.body);
    let r = h
        .owner("GET", "/v1/audit-log?action=engine.identity.create", None)
        .await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(2), "{:?}", r.body);
    let (_, tenant_key) = common::scenarios::new_tenant(&h, "not-the-operator-co").await;
    let r = h
        .call(
            "POST",
            "/v1/engines/engine-b/revoke",
            Some(&tenant_key),
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = h.owner("POST", "/v1/engines/nobody/revoke", None).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let r = h
        .owner("POST", "/v1/engines/bad%20id/identity", Some(json!({})))
        .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    task_a.abort();
    task_b.abort();
}
