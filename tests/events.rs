//! The return path end to end: a real engine sends every outcome (accepted, rejected,
//! delivered, deferred, bounced, expired) through its durable backlog and the push link to a
//! real control plane, where `GET /v1/events` and `GET /v1/messages/{id}` serve them; nothing
//! is lost across a kill -9 of the engine or a restart of the control plane; and a full backlog
//! refuses new mail with `452 4.3.1` until the control plane is back. A webhook receiver with its
//! own signature check (Python's hmac) gets every event of the tenant.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::control::{api, mailer, provision, start_control, start_control_at};
use common::control_process::{free_port, ControlProcess};
use common::*;
use lettre::address::Envelope;
use lettre::Transport;
use petrel_testkit::dns::DnsServer;
use petrel_testkit::smtp_server::{Script, SmtpServer};
use serde_json::{json, Value};

const DOMAIN: &str = "events.test";
const TOKEN: &str = "events-push-token-0123456789";
/// Upper bound on any wait for events to arrive.
const WAIT_MAX: Duration = Duration::from_secs(60);
/// Events asked for per page.
const PAGE: usize = 500;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Every event the query selects, all pages.
fn all_events(api_addr: SocketAddr, key: &str, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/events?limit={PAGE}&{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (code, page) = api(api_addr, "GET", &path, key, None);
        assert_eq!(code, 200, "{path}: {page}");
        out.extend(page["events"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Waits until `done(events)` holds for the query's events; returns them.
fn wait_events(
    api_addr: SocketAddr,
    key: &str,
    query: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let events = all_events(api_addr, key, query);
        if done(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not there after {WAIT_MAX:?}; have {} events: {:?}",
            events.len(),
            events
                .iter()
                .map(|e| format!("{} {}", e["type"], e["recipient"]))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn has(events: &[Value], kind: &str, recipient: &str) -> bool {
    events
        .iter()
        .any(|e| e["type"] == kind && e["recipient"] == recipient)
}

fn find<'a>(events: &'a [Value], kind: &str, recipient: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == kind && e["recipient"] == recipient)
        .unwrap_or_else(|| panic!("no {kind} event for {recipient}"))
}

#[test]
fn every_outcome_reaches_the_control_plane_attributed_and_classified() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let rt = runtime();
    let (info, _control) = start_control(&rt, &dir.path().join("control"), TOKEN, dns.addr);
    let owner = info.bootstrap_key.clone().expect("the owner key");
    // temp*: 450 once, then 250; defer*: always 450; perm*: 550 5.1.1; others: 250.
    let sink = SmtpServer::start(Script::by_local_part());
    let args = linked_engine_args(
        dir.path(),
        info.push_addr,
        &info.push_cert_pem,
        TOKEN,
        2,
        sink.addr,
    );
    let config =
        "[delivery]\nretry_initial_ms = 300\nretry_max_ms = 600\nmessage_age_max_ms = 4000\n";
    let engine = Engine::start_with(&dir.path().join("engine"), &args, Some(config));
    let acme = provision(info.api_addr, &owner, &dns, "acme", DOMAIN, "acme-mailer");
    // A webhook receiver on loopback, subscribed to every type; it checks each signature with
    // Python's hmac, independently of Petrel's code.
    let hook = Hook::start(&dir.path().join("webhook"));
    let (code, created) = api(
        info.api_addr,
        "POST",
        "/v1/webhooks",
        &acme.admin,
        Some(json!({
            "url": format!("http://127.0.0.1:{}/hook", hook.port),
            "events": ["accepted", "rejected", "delivered", "deferred", "bounced", "expired"],
        })),
    );
    assert_eq!(code, 201, "{created}");
    std::fs::write(&hook.secret, created["secret"].as_str().unwrap()).unwrap();

    let rcpts = [
        "ok1@dest.test",
        "temp1@dest.test",
        "perm1@dest.test",
        "defer1@dest.test",
    ];
    let submission = format!(
        "From: <news@{DOMAIN}>\r\nTo: <ok1@dest.test>\r\nSubject: events\r\n\
         Message-ID: <ev-1@client.test>\r\nX-Petrel-Tag: launch\r\n\
         X-Petrel-Metadata: {{\"user\":\"42\"}}\r\n\r\nHello.\r\n"
    );
    let envelope = Envelope::new(
        Some(format!("news@{DOMAIN}").parse().unwrap()),
        rcpts.iter().map(|r| r.parse().unwrap()).collect(),
    )
    .unwrap();
    let m = mailer(engine.smtp.port(), "acme-mailer", &acme.password);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = m.send_raw(&envelope, submission.as_bytes()) {
        assert!(
            Instant::now() < deadline,
            "the credential never worked: {e}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut c = Smtp::connect(engine.smtp);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    // An unauthenticated RCPT from a network that is not trusted: relay denied.
    assert_eq!(c.cmd("MAIL FROM:<someone@elsewhere.test>").0, 250);
    let (code, text) = c.cmd("RCPT TO:<victim@dest.test>");
    assert_eq!(code, 550, "{text}");
    let _ = c.cmd("QUIT");

    let key = &acme.admin;
    let events = wait_events(info.api_addr, key, "", "every outcome", |ev| {
        rcpts.iter().all(|r| has(ev, "accepted", r))
            && has(ev, "delivered", "ok1@dest.test")
            && has(ev, "deferred", "temp1@dest.test")
            && has(ev, "delivered", "temp1@dest.test")
            && has(ev, "bounced", "perm1@dest.test")
            && has(ev, "expired", "defer1@dest.test")
    });
    let ids: HashSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), events.len(), "every event has its own id");
    let delivered = find(&events, "delivered", "ok1@dest.test");
    assert_eq!(delivered["tenant_id"], acme.tenant_id.as_str());
    assert_eq!(delivered["sender"], format!("news@{DOMAIN}"));
    assert_eq!(delivered["from_domain"], DOMAIN);
    assert_eq!(delivered["rfc822_message_id"], "ev-1@client.test");
    assert_eq!(delivered["tags"], json!(["launch"]));
    assert_eq!(delivered["metadata"], json!({"user": "42"}));
    assert_eq!(delivered["attempt"], 1);
    assert_eq!(delivered["reply"]["code"], 250, "{delivered}");
    assert_eq!(
        delivered["remote"]["address"],
        sink.addr.to_string(),
        "{delivered}"
    );
    let accepted = find(&events, "accepted", "ok1@dest.test");
    assert_eq!(accepted["attempt"], 0);
    assert_eq!(accepted["reply"]["code"], 250);
    assert_eq!(accepted["message_id"], delivered["message_id"]);
    let deferred = find(&events, "deferred", "temp1@dest.test");
    assert_eq!(deferred["reply"]["code"], 450, "{deferred}");
    assert_eq!(deferred["bounce"]["class"], "soft", "{deferred}");
    let later = find(&events, "delivered", "temp1@dest.test");
    assert_eq!(later["attempt"], 2, "{later}");
    let bounced = find(&events, "bounced", "perm1@dest.test");
    assert_eq!(bounced["reply"]["enhanced_code"], "5.1.1", "{bounced}");
    assert_eq!(
        bounced["bounce"],
        json!({"class": "hard", "category": "invalid_recipient"}),
        "{bounced}"
    );
    let expired = find(&events, "expired", "defer1@dest.test");
    assert!(expired["attempt"].as_u64().unwrap() >= 1, "{expired}");

    // The message's timeline.
    let id = delivered["message_id"].as_str().unwrap();
    let (code, msg) = api(
        info.api_addr,
        "GET",
        &format!("/v1/messages/{id}"),
        key,
        None,
    );
    assert_eq!(code, 200, "{msg}");
    let kinds: Vec<&str> = msg["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    for k in ["accepted", "delivered", "deferred", "bounced", "expired"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }

    // Every one of the tenant's events reaches the webhook, signed.
    let want: HashSet<String> = events
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect();
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let lines = hook.lines();
        assert!(
            lines.iter().all(|l| l["status"] == 200),
            "every delivery passes the receiver's own signature check: {lines:?}"
        );
        let got: HashSet<String> = lines
            .iter()
            .flat_map(|l| l["body"]["events"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect();
        if want.is_subset(&got) {
            assert!(lines
                .iter()
                .all(|l| l["body"]["events"].as_array().unwrap().len() <= 100));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "webhook has {} of {} events",
            got.len(),
            want.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The relay refusal has no tenant: operators see it across tenants, with the reply.
    let rejected = wait_events(
        info.api_addr,
        &owner,
        "tenant=*&type=rejected",
        "the refused RCPT",
        |ev| has(ev, "rejected", "victim@dest.test"),
    );
    let r = find(&rejected, "rejected", "victim@dest.test");
    assert_eq!(r["sender"], "someone@elsewhere.test", "{r}");
    assert_eq!(r["reply"]["code"], 550, "{r}");
    assert_eq!(r["reply"]["enhanced_code"], "5.7.1", "{r}");
    assert!(r.get("tenant_id").is_none_or(Value::is_null), "{r}");
    // ... and a tenant never sees it.
    assert!(!has(
        &all_events(info.api_addr, key, "type=rejected"),
        "rejected",
        "victim@dest.test"
    ));
    assert!(engine.stop());
}

/// `tests/webhook_receiver.py` on loopback (plain HTTP), killed on drop.
struct Hook {
    child: std::process::Child,
    port: u16,
    secret: std::path::PathBuf,
    out: std::path::PathBuf,
}

impl Hook {
    fn start(dir: &std::path::Path) -> Hook {
        std::fs::create_dir_all(dir).unwrap();
        let port_file = dir.join("port");
        let secret = dir.join("secret");
        let out = dir.join("out.jsonl");
        let child = std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/webhook_receiver.py"
            ))
            .args(["--port", "0", "--port-file"])
            .arg(&port_file)
            .arg("--secret-file")
            .arg(&secret)
            .arg("--out")
            .arg(&out)
            .spawn()
            .expect("python3 runs the webhook receiver");
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "the receiver wrote its port");
            std::thread::sleep(Duration::from_millis(25));
        };
        Hook {
            child,
            port,
            secret,
            out,
        }
    }

    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one message from the trusted network to `rcpts`; returns the DATA reply code.
fn relay(addr: SocketAddr, rcpts: &[String], subject: &str) -> u16 {
    let mut c = Smtp::connect(addr);
    if c.reply().0 != 220 || c.cmd("EHLO relay.client.test").0 != 250 {
        return 0;
    }
    let (code, _) = c.cmd(&format!("MAIL FROM:<news@{DOMAIN}>"));
    if code != 250 {
        return code;
    }
    for r in rcpts {
        if c.cmd(&format!("RCPT TO:<{r}>")).0 != 250 {
            return 0;
        }
    }
    if c.cmd("DATA").0 != 354 {
        return 0;
    }
    c.send(format!("From: <news@{DOMAIN}>\r\nSubject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
    let (code, _) = c.reply();
    let _ = c.cmd("QUIT");
    code
}

#[test]
fn no_event_is_lost_when_the_engine_and_then_the_control_plane_are_killed() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let cp_dir = dir.path().join("control");
    std::fs::create_dir_all(&cp_dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(cp_dir.join("push.pem"), cert.cert.pem()).unwrap();
    std::fs::write(cp_dir.join("push.key"), cert.key_pair.serialize_pem()).unwrap();
    let push = free_port();
    let control = ControlProcess::start(&cp_dir, push, dns.addr, TOKEN);
    let owner = control.owner.clone().expect("the owner key at first start");
    let sink = SmtpServer::start(Script::by_local_part());
    let mut args = linked_engine_args(dir.path(), push, &cert.cert.pem(), TOKEN, 2, sink.addr);
    args.extend([
        "--trust-network-domains".to_string(),
        format!("127.0.0.0/8={DOMAIN}"),
    ]);
    let config = "[delivery]\nretry_initial_ms = 300\nretry_max_ms = 600\n";
    let data = dir.path().join("engine");
    let engine = Engine::start_with(&data, &args, Some(config));

    // Two recipients a message: one delivered at once, one deferred once and then delivered.
    const MESSAGES: usize = 60;
    let rcpts = |i: usize| vec![format!("ok{i}@dest.test"), format!("temp{i}@dest.test")];
    let mut accepted = Vec::new();
    let mut engine = Some(engine);
    let mut control = Some(control);
    for i in 0..MESSAGES {
        if i == MESSAGES / 3 {
            // kill -9 the engine, with deliveries and event batches in flight.
            engine.take().unwrap().kill9();
            engine = Some(Engine::start_with(&data, &args, Some(config)));
        }
        if i == 2 * MESSAGES / 3 {
            // kill -9 the control plane, with batches being ingested; it comes back on the same
            // push address and data while the engine keeps accepting and delivering.
            control.take().unwrap().kill9();
        }
        let smtp = engine.as_ref().unwrap().smtp;
        if relay(smtp, &rcpts(i), &format!("m{i}")) == 250 {
            accepted.push(i);
        }
    }
    assert!(accepted.len() >= MESSAGES - 2, "accepted {accepted:?}");
    std::thread::sleep(Duration::from_millis(500));
    let control = ControlProcess::start(&cp_dir, push, dns.addr, TOKEN);
    let want = |ev: &[Value]| {
        accepted.iter().all(|i| {
            rcpts(*i)
                .iter()
                .all(|r| has(ev, "accepted", r) && has(ev, "delivered", r))
        })
    };
    // The owner reads across tenants (no tenant is provisioned: the events carry none).
    let events = wait_events(control.api, &owner, "tenant=*", "every outcome", want);
    let mut per: HashMap<(String, String), usize> = HashMap::new();
    for e in &events {
        let k = (
            e["type"].as_str().unwrap_or("").to_string(),
            e["recipient"].as_str().unwrap_or("").to_string(),
        );
        *per.entry(k).or_default() += 1;
    }
    let accepted_dupes = per
        .iter()
        .filter(|((t, _), n)| t == "accepted" && **n > 1)
        .count();
    assert_eq!(accepted_dupes, 0, "an accepted event is stored once, by id");
    // A delivery repeated after the kill (at-least-once) is a second delivered event of a
    // later attempt; count them so the figure is visible.
    let repeated = per
        .iter()
        .filter(|((t, _), n)| t == "delivered" && **n > 1)
        .count();
    println!(
        "events: {} stored, {} recipients delivered more than once after kill -9",
        events.len(),
        repeated
    );
    assert!(repeated <= 4, "duplicates stay rare: {repeated}");
    assert!(engine.take().unwrap().stop());
}

#[test]
fn a_full_event_backlog_answers_452_and_the_engine_recovers_when_the_control_plane_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let rt = runtime();
    let cp_dir = dir.path().join("control");
    let (info, control) = start_control(&rt, &cp_dir, TOKEN, dns.addr);
    let owner = info.bootstrap_key.clone().expect("the owner key");
    drop(control);
    rt.shutdown_background();
    let sink = SmtpServer::start(Script::default());
    let mut args = linked_engine_args(
        dir.path(),
        info.push_addr,
        &info.push_cert_pem,
        TOKEN,
        2,
        sink.addr,
    );
    args.extend([
        "--trust-network-domains".to_string(),
        format!("127.0.0.0/8={DOMAIN}"),
    ]);
    let config = "[events]\nbacklog_bytes_max = 65536\n";
    let engine = Engine::start_with(&dir.path().join("engine"), &args, Some(config));

    // No control plane: events pile up until the bound, then MAIL gets 452 4.3.1.
    const ATTEMPTS_MAX: usize = 2_000;
    let mut refused_at = None;
    for i in 0..ATTEMPTS_MAX {
        let mut c = Smtp::connect(engine.smtp);
        assert_eq!(c.reply().0, 220);
        assert_eq!(c.cmd("EHLO relay.client.test").0, 250);
        let (code, text) = c.cmd(&format!("MAIL FROM:<news@{DOMAIN}>"));
        if code == 452 {
            assert!(text.starts_with("452 4.3.1"), "{text}");
            refused_at = Some(i);
            break;
        }
        assert_eq!(code, 250, "{text}");
        let _ = c.cmd("QUIT");
        let rcpt = format!("r{i}@dest.test");
        // The bound may be reached between the probe and this message (outcomes of earlier
        // messages are synced meanwhile): then its MAIL or DATA is the refusal.
        match relay(engine.smtp, &[rcpt], &format!("m{i}")) {
            250 => {}
            452 => {
                refused_at = Some(i);
                break;
            }
            other => panic!("message {i}: {other}"),
        }
    }
    let refused_at = refused_at.expect("the backlog filled up");
    let metrics = engine.scrape();
    assert!(
        metrics.contains("reason=\"event_backlog_full\""),
        "the refusal is counted"
    );
    assert!(metrics.contains("petrel_events_backlog_bytes"), "{metrics}");
    match promtool() {
        Some(p) => promtool_check_metrics(&p, &metrics).expect("promtool accepts the exposition"),
        None => petrel_testkit::peer_missing("promtool check: promtool not found"),
    }

    // The control plane is back: the backlog drains and mail is accepted again.
    let rt = runtime();
    let (info, _control) = start_control_at(&rt, &cp_dir, TOKEN, dns.addr, info.push_addr);
    let deadline = Instant::now() + WAIT_MAX;
    while relay(engine.smtp, &["again@dest.test".to_string()], "again") != 250 {
        assert!(
            Instant::now() < deadline,
            "the engine never accepted mail again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let events = wait_events(
        info.api_addr,
        &owner,
        "tenant=*&type=delivered",
        "the backlog's events",
        |ev| ev.len() > refused_at,
    );
    assert!(events.len() > refused_at);
    assert!(engine.stop());
}
