//! Deleting a tenant with mail queued (issue 16), end to end: two tenants' mail waits on a
//! destination that answers 450; the owner deletes one tenant, bouncing its queued mail. The
//! engine takes that tenant's messages out of its queues (each sender gets a DSN), and destroys
//! its data keys: a copy of the spool taken before the deletion (a backup) no longer opens
//! that tenant's messages, while the other tenant's are untouched, still queued and readable.
//! The control plane answers 410 for the tenant, refuses its keys, erases its events, redacts
//! its audit rows without breaking the chain, and refuses to seal anything new for it.

mod common;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::control::{api, mailer, provision, start_control};
use common::*;
use lettre::message::Mailbox;
use lettre::{Message, Transport};
use petrel_loadtest::{start_sink, DomainFault, SinkConfig};
use petrel_testkit::dns::DnsServer;
use serde_json::json;

const TOKEN: &str = "tenant-delete-push-token-0123";
const HELD: &str = "held.test";
const GONE_DOMAIN: &str = "gone.test";
const KEPT_DOMAIN: &str = "kept.test";
const GONE_MESSAGES: usize = 4;
const KEPT_MESSAGES: usize = 3;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The tenant ids of the messages a spool copy opens with the engine's keyring as it is now.
fn tenants_readable(spool: &Path, data: &Path) -> Vec<String> {
    let kek = petrel_seal::KekFile::load(&data.join("keys").join("kek")).unwrap();
    let keys = petrel_seal::Keyring::open(&data.join("keys"), Arc::new(kek)).unwrap();
    petrel_spool::inspect(spool, Some(&keys))
        .unwrap()
        .into_iter()
        .map(|m| m.attribution.tenant_id.unwrap_or_default())
        .collect()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn send(port: u16, p: &common::control::Provisioned, domain: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while sent < n {
        assert!(
            Instant::now() < deadline,
            "the pushed credential never worked"
        );
        let msg = Message::builder()
            .from(Mailbox::from_str(&format!("news@{domain}")).unwrap())
            .to(Mailbox::from_str(&format!("reader{sent}@{HELD}")).unwrap())
            .subject(format!("queued {sent}"))
            .body("Held by a 450.\r\n".to_string())
            .unwrap();
        match mailer(port, &p.username, &p.password).send(&msg) {
            Ok(_) => sent += 1,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn deleting_a_tenant_bounces_its_queued_mail_and_shreds_it_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (info, control_task) = start_control(&rt, &dir.path().join("control"), TOKEN, dns.addr);
    let owner = info.bootstrap_key.clone().expect("owner key");
    let sink = start_sink(SinkConfig {
        threads: 1,
        keep_messages_max: 100,
        rcpt_tempfail: vec![DomainFault {
            domain: HELD.into(),
            probability: 1.0,
        }],
        ..SinkConfig::default()
    })
    .unwrap();
    let data = dir.path().join("engine");
    let args = linked_engine_args(
        dir.path(),
        info.push_addr,
        &info.push_cert_pem,
        TOKEN,
        2,
        sink.addr(),
    );
    let engine = Engine::start(&data, &args);
    let gone = provision(
        info.api_addr,
        &owner,
        &dns,
        "gone",
        GONE_DOMAIN,
        "gone-mailer",
    );
    let kept = provision(
        info.api_addr,
        &owner,
        &dns,
        "kept",
        KEPT_DOMAIN,
        "kept-mailer",
    );
    send(engine.smtp.port(), &gone, GONE_DOMAIN, GONE_MESSAGES);
    send(engine.smtp.port(), &kept, KEPT_DOMAIN, KEPT_MESSAGES);
    let all = (GONE_MESSAGES + KEPT_MESSAGES) as u64;
    assert_eq!(spool_count(&data), all);
    // Every message tried once and deferred (retried in minutes): all of them queued.
    let events_path = "/v1/events?tenant=*&type=deferred&limit=100";
    wait_for("every recipient deferred once", 30, || {
        let (_, page) = api(info.api_addr, "GET", events_path, &owner, None);
        page["events"].as_array().map_or(0, Vec::len) >= all as usize
    });
    // A backup of the spool, taken while both tenants' mail is in it.
    let backup = dir.path().join("spool-backup");
    copy_dir(&data.join("spool"), &backup);
    let before = tenants_readable(&backup, &data);
    assert_eq!(before.len(), all as usize, "{before:?}");

    // Only the owner may delete, and only when the confirmation repeats the id.
    let path = format!("/v1/tenants/{}", gone.tenant_id);
    let body = json!({"confirm": gone.tenant_id, "queued": "bounce"});
    let (code, _) = api(
        info.api_addr,
        "DELETE",
        &path,
        &gone.admin,
        Some(body.clone()),
    );
    assert_eq!(code, 403);
    let wrong = json!({"confirm": kept.tenant_id, "queued": "bounce"});
    let (code, e) = api(info.api_addr, "DELETE", &path, &owner, Some(wrong));
    assert_eq!(code, 422, "{e}");
    let (code, d) = api(info.api_addr, "DELETE", &path, &owner, Some(body.clone()));
    assert_eq!(code, 202, "{d}");
    assert_eq!(d["queued"], "bounce");
    assert_eq!(d["removed"]["credentials"], 2, "{d}");

    // The engine bounces the deleted tenant's mail: one DSN per message, to its sender.
    wait_for("the deleted tenant's mail bounced", 30, || {
        sink.received()
            .iter()
            .filter(|m| {
                m.rcpts
                    .iter()
                    .any(|r| r.ends_with(&format!("@{GONE_DOMAIN}")))
            })
            .count()
            >= GONE_MESSAGES
    });
    wait_for("only the kept tenant's mail left", 30, || {
        spool_count(&data) == KEPT_MESSAGES as u64
    });
    // Its keys are destroyed: the backup opens the kept tenant's messages only.
    wait_for("the deleted tenant's keys destroyed", 30, || {
        let kek = petrel_seal::KekFile::load(&data.join("keys").join("kek")).unwrap();
        let keys = petrel_seal::Keyring::open(&data.join("keys"), Arc::new(kek)).unwrap();
        keys.is_destroyed(&gone.tenant_id)
    });
    let after = tenants_readable(&backup, &data);
    assert_eq!(after.len(), KEPT_MESSAGES, "{after:?}");
    assert!(after.iter().all(|t| *t == kept.tenant_id), "{after:?}");
    let live = tenants_readable(&data.join("spool"), &data);
    assert_eq!(live.len(), KEPT_MESSAGES);

    // The control plane: 410 for the owner, 401 for the deleted tenant's key.
    let (code, g) = api(info.api_addr, "GET", &path, &owner, None);
    assert_eq!(code, 410, "{g}");
    assert_eq!(g["error"]["details"]["tenant_id"], gone.tenant_id.as_str());
    let (code, _) = api(info.api_addr, "GET", "/v1/domains", &gone.admin, None);
    assert_eq!(code, 401);
    let (code, _) = api(info.api_addr, "DELETE", &path, &owner, Some(body));
    assert_eq!(code, 404);
    // Its events are erased; the kept tenant's remain.
    wait_for("the deleted tenant's erasure", 30, || {
        let (_, g) = api(info.api_addr, "GET", &path, &owner, None);
        g["error"]["details"]["erased_unix_ms"].is_i64()
    });
    let gone_events = format!("/v1/events?tenant={}&limit=100", gone.tenant_id);
    let (code, page) = api(info.api_addr, "GET", &gone_events, &owner, None);
    assert_eq!(code, 200);
    assert_eq!(page["events"].as_array().map(Vec::len), Some(0), "{page}");
    let kept_events = format!("/v1/events?tenant={}&limit=100", kept.tenant_id);
    let (_, page) = api(info.api_addr, "GET", &kept_events, &owner, None);
    assert!(page["events"].as_array().map_or(0, Vec::len) >= KEPT_MESSAGES);
    // Its audit rows stay in the chain, redacted; the deletion is recorded; the chain verifies.
    let (code, rows) = api(
        info.api_addr,
        "GET",
        "/v1/audit-log?limit=1000",
        &owner,
        None,
    );
    assert_eq!(code, 200, "{rows}");
    let rows = rows.as_array().cloned().unwrap_or_default();
    let of = |t: &str| -> Vec<serde_json::Value> {
        rows.iter()
            .filter(|r| r["tenant_id"] == t)
            .cloned()
            .collect()
    };
    let gone_rows = of(&gone.tenant_id);
    assert!(!gone_rows.is_empty());
    for r in &gone_rows {
        assert_eq!(r["target"], "(redacted)", "{r}");
        assert_eq!(r["remote_addr"], "(redacted)", "{r}");
        assert!(
            r["after"].is_null() || r["after"] == petrel_control::audit::REDACTED,
            "{r}"
        );
    }
    assert!(of(&kept.tenant_id)
        .iter()
        .all(|r| r["target"] != "(redacted)"));
    let (_, rows) = api(
        info.api_addr,
        "GET",
        "/v1/audit-log?action=tenant.delete",
        &owner,
        None,
    );
    let del = &rows[0];
    assert_eq!(del["target"], gone.tenant_id.as_str(), "{rows}");
    let (code, v) = api(info.api_addr, "GET", "/v1/audit-log/verify", &owner, None);
    assert_eq!((code, &v["ok"]), (200, &json!(true)), "{v}");
    // The kept tenant still sends.
    let (code, t) = api(
        info.api_addr,
        "GET",
        &format!("/v1/tenants/{}", kept.tenant_id),
        &owner,
        None,
    );
    assert_eq!(code, 200, "{t}");
    assert_eq!(t["name"], "kept");

    assert!(engine.stop());
    control_task.abort();
}
