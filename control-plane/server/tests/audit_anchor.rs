//! The anchored audit chain (issue 16): someone who rewrites a row and recomputes the whole
//! chain and its recorded head passes the chain walk, but not the signed checkpoints kept
//! outside the database; nor does a checkpoint file re-signed with another key. The engines
//! get the newest checkpoint when their session starts and each new one, and keep it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::events::{connect_hello, Conn};
use common::scenarios::{eventually, new_tenant};
use petrel_policy::checkpoint::AuditCheckpoint;
use petrel_policy::wire::PROTOCOL_VERSION;
use petrel_policy::{read_frame, write_frame, Frame, Hello, PolicyStore};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

/// What the chain hashes, as `audit.rs` lays it out: what an attacker who read the source
/// recomputes.
#[derive(Serialize)]
struct Canonical<'a> {
    seq: i64,
    tenant_id: Option<&'a str>,
    actor: &'a str,
    remote_addr: &'a str,
    action: &'a str,
    target: &'a str,
    at_unix_ms: i64,
    before: Option<&'a str>,
    after: Option<&'a str>,
}

/// Rewrites row 1's actor, then every hash after it and the recorded head.
async fn rewrite_and_rechain(conn: &mut sqlx::AnyConnection) {
    sqlx::query("UPDATE audit_log SET actor = 'key:attacker' WHERE seq = 1")
        .execute(&mut *conn)
        .await
        .expect("rewrite");
    let rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq")
        .fetch_all(&mut *conn)
        .await
        .expect("rows");
    let mut prev = petrel_control::audit::GENESIS_HASH.to_string();
    for r in &rows {
        let get = |c: &str| r.get::<String, _>(c);
        let opt = |c: &str| r.get::<Option<String>, _>(c);
        let (tenant, before, after) = (opt("tenant_id"), opt("before_json"), opt("after_json"));
        let (actor, remote, action, target) = (
            get("actor"),
            get("remote_addr"),
            get("action"),
            get("target"),
        );
        let seq: i64 = r.get("seq");
        let c = Canonical {
            seq,
            tenant_id: tenant.as_deref(),
            actor: &actor,
            remote_addr: &remote,
            action: &action,
            target: &target,
            at_unix_ms: r.get("at_unix_ms"),
            before: before.as_deref(),
            after: after.as_deref(),
        };
        let mut h = Sha256::new();
        h.update(prev.as_bytes());
        h.update(serde_json::to_vec(&c).expect("json"));
        let hash = hex::encode(h.finalize());
        sqlx::query("UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE seq = $3")
            .bind(prev.clone())
            .bind(hash.clone())
            .bind(seq)
            .execute(&mut *conn)
            .await
            .expect("rechain");
        prev = hash;
    }
    sqlx::query("UPDATE petrel_meta SET audit_head_hash = $1 WHERE id = 1")
        .bind(prev)
        .execute(&mut *conn)
        .await
        .expect("head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_log_with_a_recomputed_chain_is_caught_by_the_signed_checkpoints() {
    let h = common::start().await;
    new_tenant(&h, "anchored-co").await;
    let r = h.owner("POST", "/v1/audit-log/checkpoint", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seq = r.body["seq"].as_i64().expect("seq");
    assert!(seq >= 2, "{:?}", r.body);
    // A first checkpoint was made at start; the head moved since, so this one is new.
    let file = h.dir.path().join("control").join("audit-checkpoints.jsonl");
    let lines = || {
        std::fs::read_to_string(&file)
            .expect("file")
            .lines()
            .count()
    };
    let written = lines();
    assert!(written >= 1);
    // Nothing new: the same checkpoint, not another line.
    let again = h.owner("POST", "/v1/audit-log/checkpoint", None).await;
    assert_eq!(again.body, r.body);
    assert_eq!(lines(), written);
    let v = h.owner("GET", "/v1/audit-log/verify", None).await;
    assert_eq!(v.body["ok"], true, "{:?}", v.body);
    assert_eq!(v.body["checkpoints"]["checkpoints_checked"], written);

    let db = common::suppressions::db(&h, None).await;
    let mut conn = db.conn().await.expect("conn");
    rewrite_and_rechain(&mut conn).await;
    // The chain alone cannot tell.
    let chain = petrel_control::audit::verify(&mut conn)
        .await
        .expect("walk");
    assert!(chain.ok, "{chain:?}");
    // The checkpoints can.
    let v = h.owner("GET", "/v1/audit-log/verify", None).await;
    assert_eq!(v.body["ok"], false, "{:?}", v.body);
    assert!(
        v.body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("rewritten")),
        "{:?}",
        v.body
    );
    let cmd = petrel_control::ControlCommand::AuditVerify {
        data_dir: h.dir.path().to_path_buf(),
        database_url: None,
        database_password_file: None,
        key_file: Some(common::shared_key_file()),
        audit_checkpoint_file: None,
        audit_key_file: None,
        audit_public_key: None,
    };
    let e = petrel_control::run(cmd).await.expect_err("caught");
    assert!(e.to_string().contains("audit chain broken"), "{e}");

    // Re-signing the checkpoints with a key of one's own does not help: the verifier trusts
    // the audit key's public half only.
    let (head_seq, head_hash) = petrel_control::store::audit::head(&mut conn)
        .await
        .expect("head");
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
    let forger = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("key");
    let at = 1_800_000_000_000i64;
    let msg = format!("petrel-audit-checkpoint/1\n{head_seq}\n{head_hash}\n{at}");
    let forged = serde_json::json!({
        "seq": head_seq,
        "hash": head_hash,
        "at_unix_ms": at,
        "public_key": hex::encode(aws_lc_rs::signature::KeyPair::public_key(&forger).as_ref()),
        "signature": hex::encode(forger.sign(msg.as_bytes()).as_ref()),
    });
    std::fs::write(&file, format!("{forged}\n")).expect("forge");
    let v = h.owner("GET", "/v1/audit-log/verify", None).await;
    assert_eq!(v.body["ok"], false, "{:?}", v.body);
    assert!(
        v.body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("signature")),
        "{:?}",
        v.body
    );
}

/// The next frame, within a few seconds.
async fn next_frame(conn: &mut Conn) -> Frame {
    tokio::time::timeout(Duration::from_secs(10), read_frame(conn))
        .await
        .expect("a frame in time")
        .expect("a frame")
        .expect("not closed")
}

/// The next audit checkpoint, skipping snapshots (pushed whenever the policy changes).
async fn next_checkpoint(conn: &mut Conn) -> AuditCheckpoint {
    loop {
        match next_frame(conn).await {
            Frame::Snapshot { .. } | Frame::Fleet { .. } => {}
            Frame::AuditCheckpoint(cp) => return cp,
            other => panic!("expected a checkpoint, got {other:?}"),
        }
    }
}

/// A checkpoint as the API answered it, as the link carries it.
fn as_wire(body: &serde_json::Value) -> AuditCheckpoint {
    serde_json::from_value(body.clone()).expect("checkpoint fields")
}

async fn engine(h: &common::Harness, engine_id: &str, protocol: u32) -> Conn {
    let hello = Hello {
        engine_id: engine_id.into(),
        token: common::PUSH_TOKEN.into(),
        applied_version: 0,
        shards: 1,
        protocol,
    };
    connect_hello(h, hello).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_get_the_newest_checkpoint_at_start_and_each_new_one() {
    let h = common::start().await;
    let r = h.owner("POST", "/v1/audit-log/checkpoint", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let first = as_wire(&r.body);
    first.verify().expect("signed under the key it names");

    // At start: the snapshot, then the newest checkpoint.
    let mut conn = engine(&h, "engine-cp", PROTOCOL_VERSION).await;
    assert!(matches!(
        next_frame(&mut conn).await,
        Frame::Snapshot { .. }
    ));
    match next_frame(&mut conn).await {
        Frame::AuditCheckpoint(cp) => assert_eq!(cp, first),
        other => panic!("expected the checkpoint after the snapshot, got {other:?}"),
    }
    // Then the fleet's size (protocol revision 2): this engine is the only one connected.
    match next_frame(&mut conn).await {
        Frame::Fleet { engines_live } => assert_eq!(engines_live, 1),
        other => panic!("expected the fleet frame, got {other:?}"),
    }
    // An engine of the revision before gets none (it would refuse the frame's kind).
    let mut old = engine(&h, "engine-old", 0).await;
    assert!(matches!(next_frame(&mut old).await, Frame::Snapshot { .. }));
    write_frame(&mut old, &Frame::Ping).await.expect("ping");
    assert!(matches!(next_frame(&mut old).await, Frame::Pong));

    // The real link keeps what it gets, verified, next to its policy.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(PolicyStore::load_or_empty(dir.path()));
    let mut cfg = petrel_policy::LinkConfig::new(
        &h.info.push_addr.to_string(),
        "localhost",
        petrel_policy::LinkTrust::CaPem(h.info.push_cert_pem.as_bytes().to_vec()),
        common::PUSH_TOKEN,
        "engine-link",
    );
    cfg.reconnect_delay_ms_min = 50;
    let link = tokio::spawn(petrel_policy::run_link(cfg, store.clone(), |_| {}));
    eventually("the link keeps the first checkpoint", || async {
        store.audit_checkpoint().seq() == Some(first.seq)
    })
    .await;

    // A new checkpoint (the head moved) reaches the session at once.
    new_tenant(&h, "checkpointed-co").await;
    let r = h.owner("POST", "/v1/audit-log/checkpoint", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let second = as_wire(&r.body);
    assert!(second.seq > first.seq, "{second:?}");
    assert_eq!(next_checkpoint(&mut conn).await, second);
    eventually("the link keeps the new checkpoint", || async {
        store.audit_checkpoint().latest().as_ref() == Some(&second)
    })
    .await;
    link.abort();
    let kept = std::fs::read(dir.path().join(petrel_policy::checkpoint::CHECKPOINT_FILE))
        .expect("kept file");
    assert_eq!(AuditCheckpoint::from_json(&kept).expect("json"), second);
}
