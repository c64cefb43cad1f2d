//! Suppression end to end: a real engine linked to a real control plane refuses a suppressed
//! recipient at RCPT (`550 5.7.1` naming the reason) and reports a `suppressed` event, without
//! failing the other recipients of the message. Three ways in: a hard bounce at the sink (the
//! scripted SMTP server answers `550 5.1.1` to `perm*`), an API add to the tenant's list, and an
//! API add to the operator-wide list. Each refusal must come within the bound (5 s)
//! of the event or API call; the figures are printed (the benchmark measures them properly).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::control::{api, provision, start_control};
use common::*;
use petrel_testkit::dns::DnsServer;
use petrel_testkit::smtp_server::{Script, SmtpServer};
use serde_json::{json, Value};

const DOMAIN: &str = "supp.test";
const TOKEN: &str = "suppression-push-token-0123456789";
/// The bound from a change to its refusal on every shard.
const REFUSAL_BOUND: Duration = Duration::from_secs(5);
/// Upper bound on any other wait.
const WAIT_MAX: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// One trusted-network transaction (the tenant comes from the MAIL FROM domain): the RCPT
/// replies, and the DATA reply when a recipient was accepted.
fn send(addr: SocketAddr, rcpts: &[&str]) -> (Vec<(u16, String)>, Option<u16>) {
    let mut c = Smtp::connect(addr);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd(&format!("MAIL FROM:<news@{DOMAIN}>")).0, 250);
    let replies: Vec<(u16, String)> = rcpts
        .iter()
        .map(|r| c.cmd(&format!("RCPT TO:<{r}>")))
        .collect();
    let data = if replies.iter().any(|(code, _)| *code == 250) {
        assert_eq!(c.cmd("DATA").0, 354);
        c.send(format!("From: <news@{DOMAIN}>\r\nSubject: s\r\n\r\nbody\r\n.\r\n").as_bytes());
        Some(c.reply().0)
    } else {
        None
    };
    let _ = c.cmd("QUIT");
    (replies, data)
}

/// Probes RCPT (without sending anything) until it is refused; returns the reply and when.
fn until_refused(addr: SocketAddr, rcpt: &str) -> ((u16, String), Instant) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let mut c = Smtp::connect(addr);
        assert_eq!(c.reply().0, 220);
        assert_eq!(c.cmd("EHLO probe.test").0, 250);
        assert_eq!(c.cmd(&format!("MAIL FROM:<news@{DOMAIN}>")).0, 250);
        let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        let _ = c.cmd("QUIT");
        if reply.0 != 250 {
            return (reply, Instant::now());
        }
        assert!(Instant::now() < deadline, "{rcpt} never refused");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn events(api_addr: SocketAddr, key: &str, query: &str) -> Vec<Value> {
    let (code, page) = api(
        api_addr,
        "GET",
        &format!("/v1/events?limit=1000&{query}"),
        key,
        None,
    );
    assert_eq!(code, 200, "{page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

fn wait_event(api_addr: SocketAddr, key: &str, kind: &str, rcpt: &str) -> Value {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let found = events(api_addr, key, &format!("type={kind}"))
            .into_iter()
            .find(|e| e["recipient"] == rcpt);
        if let Some(e) = found {
            return e;
        }
        assert!(Instant::now() < deadline, "no {kind} event for {rcpt}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn suppressed_recipients_are_refused_at_rcpt_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let rt = runtime();
    let (info, _control) = start_control(&rt, &dir.path().join("control"), TOKEN, dns.addr);
    let owner = info.bootstrap_key.clone().expect("the owner key");
    let sink = SmtpServer::start(Script::by_local_part());
    let args = linked_engine_args(
        dir.path(),
        info.push_addr,
        &info.push_cert_pem,
        TOKEN,
        2,
        sink.addr,
    );
    let config = format!(
        "[[smtp.trusted_network_domains]]\ncidr = \"127.0.0.0/8\"\ndomains = [\"{DOMAIN}\"]\n"
    );
    let engine = Engine::start_with(&dir.path().join("engine"), &args, Some(&config));
    let acme = provision(info.api_addr, &owner, &dns, "acme", DOMAIN, "acme-mailer");
    // The engine knows the domain's tenant once the snapshot with it is applied.
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let (code, list) = api(info.api_addr, "GET", "/v1/engines", &owner, None);
        assert_eq!(code, 200);
        let applied = list
            .as_array()
            .and_then(|a| a.first())
            .map(|e| e["applied_version"] == e["sent_version"]);
        if applied == Some(true) {
            break;
        }
        assert!(Instant::now() < deadline, "snapshot never applied: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 1. A hard bounce at the sink suppresses the address for the tenant.
    let (replies, data) = send(engine.smtp, &["perm1@dest.test"]);
    assert_eq!(replies[0].0, 250);
    assert_eq!(data, Some(250));
    let bounced = wait_event(info.api_addr, &acme.admin, "bounced", "perm1@dest.test");
    assert_eq!(
        bounced["bounce"]["category"], "invalid_recipient",
        "{bounced}"
    );
    let (reply, at) = until_refused(engine.smtp, "perm1@dest.test");
    assert_eq!(reply.0, 550, "{reply:?}");
    assert!(
        reply
            .1
            .starts_with("550 5.7.1 recipient suppressed: previous hard bounce"),
        "{reply:?}"
    );
    let after_event = Duration::from_millis(
        (unix_ms_now() - bounced["timestamp_ms"].as_i64().unwrap()).max(0) as u64,
    )
    .saturating_sub(at.elapsed());
    eprintln!("hard bounce at the sink to refusal: {after_event:?}");
    assert!(after_event <= REFUSAL_BOUND, "{after_event:?}");

    // ...and only that recipient: the others of the message go through.
    let (replies, data) = send(engine.smtp, &["perm1@dest.test", "ok2@dest.test"]);
    assert_eq!(replies[0].0, 550, "{replies:?}");
    assert_eq!(replies[1].0, 250, "{replies:?}");
    assert_eq!(data, Some(250));
    wait_event(info.api_addr, &acme.admin, "delivered", "ok2@dest.test");
    let suppressed = wait_event(info.api_addr, &acme.admin, "suppressed", "perm1@dest.test");
    assert_eq!(
        suppressed["tenant_id"],
        acme.tenant_id.as_str(),
        "{suppressed}"
    );
    assert_eq!(suppressed["reply"]["code"], 550, "{suppressed}");
    assert_eq!(
        suppressed["reply"]["enhanced_code"], "5.7.1",
        "{suppressed}"
    );
    assert_eq!(
        suppressed["sender"],
        format!("news@{DOMAIN}"),
        "{suppressed}"
    );

    // 2. An API add to the tenant's list.
    let started = Instant::now();
    let (code, added) = api(
        info.api_addr,
        "POST",
        "/v1/suppressions",
        &acme.admin,
        Some(json!({"address": "Manual@Dest.test", "reason": "unsubscribe"})),
    );
    assert_eq!(code, 200, "{added}");
    let (reply, at) = until_refused(engine.smtp, "manual@dest.test");
    assert_eq!(reply.0, 550);
    assert!(reply.1.contains("unsubscribed"), "{reply:?}");
    let took = at - started;
    eprintln!("API add to refusal: {took:?}");
    assert!(took <= REFUSAL_BOUND, "{took:?}");

    // 3. An operator-wide add refuses the address for every tenant; a removal lifts it.
    let started = Instant::now();
    let (code, added) = api(
        info.api_addr,
        "POST",
        "/v1/suppressions?tenant=*",
        &owner,
        Some(json!({"address": "everyone@dest.test"})),
    );
    assert_eq!(code, 200, "{added}");
    let (reply, at) = until_refused(engine.smtp, "everyone@dest.test");
    assert_eq!(reply.0, 550);
    assert!(at - started <= REFUSAL_BOUND);
    let (code, _) = api(
        info.api_addr,
        "DELETE",
        "/v1/suppressions/everyone@dest.test?tenant=*",
        &owner,
        None,
    );
    assert_eq!(code, 204);
    let deadline = Instant::now() + WAIT_MAX;
    while send(engine.smtp, &["everyone@dest.test"]).0[0].0 != 250 {
        assert!(
            Instant::now() < deadline,
            "the removal never reached the engine"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = engine.scrape();
    assert!(
        text.contains("petrel_smtp_rejections_total{reason=\"suppressed\"}"),
        "metrics"
    );
    assert!(engine.stop());
}
