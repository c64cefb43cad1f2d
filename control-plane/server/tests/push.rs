//! Snapshot push over real TLS on loopback: a raw client speaking petrel-policy's frames, and
//! petrel-policy's own engine-side link applying what we push.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::scenarios::{self, eventually};
use petrel_policy::link::{LinkConfig, LinkTrust};
use petrel_policy::{read_frame, write_frame, Frame, PolicySnapshot, PolicyStore};
use serde_json::json;

use common::events::{connect_as, Conn};

async fn connect(h: &common::Harness, token: &str, engine_id: &str) -> Conn {
    connect_as(h, token, engine_id, 2).await
}

async fn next_snapshot(conn: &mut Conn, within: Duration) -> PolicySnapshot {
    let frame = tokio::time::timeout(within, read_frame(conn))
        .await
        .expect("a frame in time")
        .expect("frame")
        .expect("not closed");
    match frame {
        Frame::Snapshot { version, bytes } => {
            let snap = petrel_policy::decode(&bytes).expect("valid snapshot");
            assert_eq!(snap.version, version);
            snap
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

#[tokio::test]
async fn engine_gets_snapshot_then_each_change_within_a_second() {
    let h = common::start().await;
    let mut conn = connect(&h, common::PUSH_TOKEN, "engine-1").await;
    let first = next_snapshot(&mut conn, Duration::from_secs(10)).await;
    assert!(first.version >= 1);
    assert!(first.tenants.iter().any(|t| t.name == "operator"));
    assert!(first
        .credentials
        .iter()
        .all(|c| c.argon2_phc.starts_with("$argon2id$")));
    assert!(!first
        .credentials
        .iter()
        .any(|c| c.argon2_phc.contains(&h.owner_key)));
    write_frame(
        &mut conn,
        &Frame::Ack {
            version: first.version,
        },
    )
    .await
    .expect("ack");

    // A change through the API reaches the engine well within a second.
    let started = Instant::now();
    let (tenant, admin) = scenarios::new_tenant(&h, "pushed-co").await;
    let second = next_snapshot(&mut conn, Duration::from_secs(1)).await;
    let elapsed = started.elapsed();
    println!("API change -> engine snapshot: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert!(second.version > first.version);
    assert!(
        second.tenants.iter().any(|t| t.id == tenant),
        "new tenant in snapshot"
    );
    write_frame(
        &mut conn,
        &Frame::Ack {
            version: second.version,
        },
    )
    .await
    .expect("ack");

    // Domains with their private keys, SMTP credentials (hash only) and limits travel too.
    let r = h
        .call(
            "POST",
            "/v1/domains",
            Some(&admin),
            Some(json!({"name": "push.example.test"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let snap = next_snapshot(&mut conn, Duration::from_secs(1)).await;
    let d = snap
        .domains
        .iter()
        .find(|d| d.name == "push.example.test")
        .expect("domain");
    assert_eq!(d.tenant_id, tenant);
    assert_eq!(d.dkim_keys.len(), 1);
    assert!(!d.dkim_keys[0].private_key_pkcs8_der.is_empty());
    assert!(!d.verified);
    let r = h.call("POST", "/v1/credentials", Some(&admin), Some(json!({"kind": "smtp", "name": "s", "username": "app@push.example.test", "ip_allowlist": ["10.0.0.0/8"]}))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let password = r.body["secret"].as_str().expect("secret").to_string();
    let mut snap = next_snapshot(&mut conn, Duration::from_secs(1)).await;
    // Versions may coalesce; wait until the credential shows (bounded by the read timeout).
    while !snap
        .credentials
        .iter()
        .any(|c| c.username == "app@push.example.test")
    {
        snap = next_snapshot(&mut conn, Duration::from_secs(1)).await;
    }
    let c = snap
        .credentials
        .iter()
        .find(|c| c.username == "app@push.example.test")
        .expect("cred");
    assert!(!c.argon2_phc.contains(&password));
    assert_eq!(c.ip_allowlist, vec!["10.0.0.0/8".to_string()]);
    let r = h
        .owner(
            "PUT",
            "/v1/limits/destinations/big.test",
            Some(json!({"connections_max": 3, "tls_required": true})),
        )
        .await;
    assert_eq!(r.status, 200);
    let snap = next_snapshot(&mut conn, Duration::from_secs(1)).await;
    let dl = snap
        .destination_limits
        .iter()
        .find(|l| l.domain == "big.test")
        .expect("limit");
    assert_eq!(dl.connections_max, Some(3));
    assert!(dl.tls_required);
    write_frame(
        &mut conn,
        &Frame::Ack {
            version: snap.version,
        },
    )
    .await
    .expect("ack");

    // The ack shows in GET /v1/engines.
    let want = snap.version as i64;
    eventually("engine ack listed", || async {
        let r = h.owner("GET", "/v1/engines", None).await;
        r.body
            .as_array()
            .and_then(|a| a.iter().find(|e| e["id"] == "engine-1"))
            .is_some_and(|e| {
                e["applied_version"] == want
                    && e["connected"] == true
                    && e["last_contact_unix_ms"].as_i64() > Some(0)
            })
    })
    .await;

    // Ping is answered.
    write_frame(&mut conn, &Frame::Ping).await.expect("ping");
    let f = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut conn))
        .await
        .expect("pong in time")
        .expect("frame");
    assert!(matches!(f, Some(Frame::Pong)), "{f:?}");

    // Disconnect shows too.
    drop(conn);
    eventually("engine disconnected", || async {
        let r = h.owner("GET", "/v1/engines", None).await;
        r.body
            .as_array()
            .and_then(|a| a.iter().find(|e| e["id"] == "engine-1"))
            .is_some_and(|e| e["connected"] == false)
    })
    .await;
}

#[tokio::test]
async fn bad_token_is_refused() {
    let h = common::start().await;
    let mut conn = connect(&h, "wrong", "intruder").await;
    let f = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut conn))
        .await
        .expect("answer in time");
    match f {
        Ok(Some(Frame::Error { message })) => assert!(message.contains("token")),
        other => panic!("expected an Error frame, got {other:?}"),
    }
    let r = h.owner("GET", "/v1/engines", None).await;
    assert_eq!(r.body, json!([]));
}

#[tokio::test]
async fn policy_link_applies_our_snapshots() {
    let h = common::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(PolicyStore::load_or_empty(dir.path()));
    let mut cfg = LinkConfig::new(
        &h.info.push_addr.to_string(),
        "localhost",
        LinkTrust::CaPem(h.info.push_cert_pem.as_bytes().to_vec()),
        common::PUSH_TOKEN,
        "engine-link",
    );
    cfg.reconnect_delay_ms_min = 50;
    let link = tokio::spawn(petrel_policy::run_link(cfg, store.clone(), |_| {}));
    let dev = petrel_control::bootstrap_dev(&h.info)
        .await
        .expect("dev bootstrap");
    let password = dev.smtp_password.clone().expect("password");
    let want = h.info.app.db.policy_version().await.expect("version");
    eventually("engine applied the dev bootstrap", || async {
        store.version() >= want
    })
    .await;
    let policy = store.current();
    let id = policy
        .verify_smtp(
            &dev.smtp_username,
            &password,
            "127.0.0.1".parse().expect("ip"),
        )
        .expect("engine accepts the SMTP credentials we issued");
    drop(id);
    assert!(policy
        .verify_smtp(
            &dev.smtp_username,
            "wrong",
            "127.0.0.1".parse().expect("ip")
        )
        .is_err());
    assert!(
        policy.signer_for("dev.petrel.test").is_some(),
        "DKIM signer for the dev domain"
    );
    let r = h.owner("GET", "/v1/engines", None).await;
    let e = r
        .body
        .as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == "engine-link").cloned())
        .expect("listed");
    assert!(e["applied_version"].as_i64() >= Some(want as i64) || store.version() >= want);
    link.abort();
}
