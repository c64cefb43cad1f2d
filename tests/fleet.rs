//! Run it as a fleet (issue 19): two engines, each linked to its own node of a two-node control
//! plane on one PostgreSQL database, and one Redis for the cluster-wide quotas; all real
//! processes on loopback.
//! - a change made on either node reaches both engines;
//! - a tenant limited to 1,000 messages a day, injected through both engines, gets at most
//!   1,000 + 1 % accepted in total, and the day's count survives an engine's restart;
//! - one engine killed, the other keeps sending; Redis stopped, the engine falls back to its
//!   share (a metric says so) and returns to Redis once it is back.

mod common;

use std::time::{Duration, Instant};

use common::control::{api, mailer, provision};
use common::control_process::{free_port, pg_database, push_cert, ControlProcess};
use common::*;
use petrel_testkit::dns::DnsServer;
use petrel_testkit::redis::RedisServer;
use petrel_testkit::smtp_server::{Script, SmtpServer};
use serde_json::json;

const DOMAIN: &str = "fleet.test";
const TOKEN: &str = "fleet-push-token-0123456789";
const DAY_LIMIT: u64 = 1_000;
/// Messages offered against the daily limit, half through each engine.
const OFFERED: usize = 1_200;
/// How long 300 messages through two connections may take to reach the sink on a loaded
/// machine (a session refused by its lease waits `permit_retry_delay_ms`, 1 s, to try again).
const DELIVERY_WAIT_MAX: Duration = Duration::from_secs(150);
/// How long a pushed change may take to reach an engine.
const PROPAGATION_MAX: Duration = Duration::from_secs(20);

/// Submits over STARTTLS with AUTH PLAIN (a new connection per message, as lettre does).
struct Sender {
    mailer: lettre::SmtpTransport,
}

impl Sender {
    /// One message to `rcpt`: 250, or the refusal's code and text.
    fn send(&mut self, rcpt: &str, subject: &str) -> (u16, String) {
        use lettre::Transport;
        let m = lettre::Message::builder()
            .from(format!("<news@{DOMAIN}>").parse().expect("a mailbox"))
            .to(rcpt.parse().expect("a mailbox"))
            .subject(subject)
            .body(String::from("fleet\r\n"))
            .expect("a message");
        match self.mailer.send(&m) {
            Ok(_) => (250, String::new()),
            Err(e) => {
                let code = e.status().map_or(0, |c| {
                    let text = c.to_string();
                    text.parse().unwrap_or(0)
                });
                (code, e.to_string())
            }
        }
    }
}

/// Waits (bounded) until `user` can send through the engine on `port` (the engine has the
/// snapshot that holds the credential); the probe goes to the sink like any message.
fn sender_when_ready(port: u16, user: &str, password: &str) -> Sender {
    let deadline = Instant::now() + PROPAGATION_MAX;
    let mut sender = Sender {
        mailer: mailer(port, user, password),
    };
    loop {
        let (code, text) = sender.send("probe@example.test", "probe");
        if code == 250 || text.contains("daily quota") {
            return sender;
        }
        assert!(
            Instant::now() < deadline,
            "credential {user} never worked at the engine on port {port}: {code} {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn new_credential(api_addr: std::net::SocketAddr, admin: &str, user: &str) -> String {
    let (code, cred) = api(
        api_addr,
        "POST",
        "/v1/credentials",
        admin,
        Some(json!({
            "kind": "smtp", "name": user, "username": user, "allowed_sender_domains": [DOMAIN]
        })),
    );
    assert_eq!(code, 201, "{cred}");
    cred["secret"].as_str().expect("the secret").to_string()
}

fn set_day_limit(api_addr: std::net::SocketAddr, owner: &str, tenant: &str, max: u64) {
    let (code, body) = api(
        api_addr,
        "PUT",
        &format!("/v1/tenants/{tenant}/limits"),
        owner,
        Some(json!({"messages_per_second_max": null, "messages_per_day_max": max})),
    );
    assert_eq!(code, 200, "{body}");
}

/// The value of an unlabelled gauge in an engine's scrape.
fn gauge(engine: &Engine, name: &str) -> Option<f64> {
    engine
        .scrape()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

fn start_engine(dir: &std::path::Path, name: &str, args: &[String], redis: &str) -> Engine {
    start_engine_with(dir, name, args, redis, "")
}

/// [`start_engine`] with more configuration (whole sections after `[cluster]`).
fn start_engine_with(
    dir: &std::path::Path,
    name: &str,
    args: &[String],
    redis: &str,
    more: &str,
) -> Engine {
    // Each engine its own id (the default, the host name, is the same for both here).
    let config = format!(
        "[control]\nengine_id = \"{name}\"\n[cluster]\nredis_url = \"{redis}\"\nrequest_timeout_ms = 500\n{more}"
    );
    Engine::start_with(&dir.join(name), args, Some(&config))
}

/// One control plane node (SQLite), one Redis, one sink and two engines linked to the node,
/// relaying to the sink; None (the caller says SKIPPED) without redis-server.
struct OneNodeFleet {
    control: ControlProcess,
    owner: String,
    dns: DnsServer,
    sink: SmtpServer,
    engines: Vec<Engine>,
    _redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl OneNodeFleet {
    fn start(extra_args: &[&str], more_config: &str) -> Option<OneNodeFleet> {
        let redis = RedisServer::start()?;
        let dir = tempfile::tempdir().unwrap();
        let dns = DnsServer::start(vec![]);
        let cp_dir = dir.path().join("cp");
        let pem = push_cert(&cp_dir);
        let push = free_port();
        let control = ControlProcess::start(&cp_dir, push, dns.addr, TOKEN);
        let owner = control
            .owner
            .clone()
            .expect("the owner key at the first start");
        let sink = SmtpServer::start(Script::default());
        let mut engines = Vec::new();
        for name in ["e1", "e2"] {
            let data = dir.path().join(name);
            std::fs::create_dir_all(&data).unwrap();
            let mut args = linked_engine_args(&data, push, &pem, TOKEN, 2, sink.addr);
            args.extend(extra_args.iter().map(|a| a.to_string()));
            engines.push(start_engine_with(
                dir.path(),
                name,
                &args,
                &redis.url(),
                more_config,
            ));
        }
        Some(OneNodeFleet {
            control,
            owner,
            dns,
            sink,
            engines,
            _redis: redis,
            _dir: dir,
        })
    }
}

#[test]
fn two_engines_and_two_control_plane_nodes_share_one_daily_quota_on_redis() {
    let Some(pg) = pg_database("fleet") else {
        petrel_testkit::peer_missing("PETREL_TEST_PG_URL not set (ops/test.sh starts PostgreSQL)");
        return;
    };
    let Some(mut redis) = RedisServer::start() else {
        petrel_testkit::peer_missing("redis-server not installed (ops/test.sh installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let sink = SmtpServer::start(Script::default());

    // Two control plane nodes on one database, with one key-encryption key.
    let (a_dir, b_dir) = (dir.path().join("cp-a"), dir.path().join("cp-b"));
    let (pem_a, pem_b) = (push_cert(&a_dir), push_cert(&b_dir));
    let (push_a, push_b) = (free_port(), free_port());
    let db = vec!["--database-url".to_string(), pg];
    let node_a = ControlProcess::start_with(&a_dir, push_a, dns.addr, TOKEN, &db);
    let owner = node_a
        .owner
        .clone()
        .expect("the owner key at the first start");
    let mut b_args = db.clone();
    b_args.extend([
        "--key-file".to_string(),
        a_dir.join("control/keys/kek").display().to_string(),
        "--audit-key-file".to_string(),
        a_dir
            .join("control/keys/audit-ed25519.key")
            .display()
            .to_string(),
    ]);
    let node_b = ControlProcess::start_with(&b_dir, push_b, dns.addr, TOKEN, &b_args);

    // Engine 1 on node A, engine 2 on node B, both on the one Redis.
    for e in ["e1", "e2"] {
        std::fs::create_dir_all(dir.path().join(e)).unwrap();
    }
    let args1 = linked_engine_args(&dir.path().join("e1"), push_a, &pem_a, TOKEN, 2, sink.addr);
    let args2 = linked_engine_args(&dir.path().join("e2"), push_b, &pem_b, TOKEN, 2, sink.addr);
    let engine1 = start_engine(dir.path(), "e1", &args1, &redis.url());
    let engine2 = start_engine(dir.path(), "e2", &args2, &redis.url());

    // Made on node A; the limit and a second credential on node B: both reach both engines.
    let acme = provision(node_a.api, &owner, &dns, "acme", DOMAIN, "acme-a");
    set_day_limit(node_b.api, &owner, &acme.tenant_id, DAY_LIMIT);
    let password = new_credential(node_b.api, &acme.admin, "acme-b");
    let mut s1 = sender_when_ready(engine1.smtp.port(), "acme-b", &password);
    let mut s2 = sender_when_ready(engine2.smtp.port(), "acme-b", &password);
    let _ = sender_when_ready(engine2.smtp.port(), "acme-a", &acme.password);

    // 1,200 offered against 1,000 a day, alternating between the engines.
    // The three probes above were accepted against the same quota.
    let (mut accepted, mut refused) = (3usize, 0usize);
    for i in 0..OFFERED {
        let sender = if i % 2 == 0 { &mut s1 } else { &mut s2 };
        let (code, text) = sender.send(&format!("r{i}@example.test"), "quota");
        match code {
            250 => accepted += 1,
            451 => {
                assert!(
                    text.contains("4.7.1") && text.contains("daily quota"),
                    "{text}"
                );
                refused += 1;
            }
            other => panic!("unexpected reply {other} {text}"),
        }
    }
    let limit = DAY_LIMIT as usize;
    assert!(
        accepted <= limit + limit / 100,
        "the fleet accepted {accepted} of a {limit} daily quota"
    );
    // Grants an engine reserved but did not use are the only loss: a batch or two per engine.
    assert!(
        accepted >= limit - 20,
        "only {accepted} of {limit} accepted"
    );
    assert_eq!(accepted + refused, OFFERED + 3);
    println!("fleet: {accepted} accepted, {refused} refused of {OFFERED}");
    drop((s1, s2));

    // The day's count lives in Redis: a restarted engine still refuses.
    engine1.kill9();
    let engine1 = start_engine(dir.path(), "e1", &args1, &redis.url());
    let mut s1 = sender_when_ready(engine1.smtp.port(), "acme-b", &password);
    for i in 0..20 {
        let (code, text) = s1.send(&format!("after-restart{i}@example.test"), "restart");
        assert_eq!(code, 451, "accepted after a restart: {text}");
    }
    drop(s1);

    // Engine 2 killed; a raised limit made on node A (20,000: batches of 50 or 100, so the
    // fallback below comes after few messages); engine 1 keeps sending.
    engine2.kill9();
    set_day_limit(node_a.api, &owner, &acme.tenant_id, 20_000);
    let password_c = new_credential(node_a.api, &acme.admin, "acme-c");
    let mut s1 = sender_when_ready(engine1.smtp.port(), "acme-c", &password_c);
    // The engine refuses from its lease's last answer for up to `EXHAUSTED_RECHECK_MS` (1 s)
    // before it asks Redis again: the raised limit holds once a probe goes through.
    let deadline = Instant::now() + PROPAGATION_MAX;
    loop {
        let (code, text) = s1.send("raised@example.test", "raised");
        if code == 250 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the raised limit never applied: {code} {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..20 {
        let (code, text) = s1.send(&format!("survivor{i}@example.test"), "survivor");
        assert_eq!(code, 250, "{text}");
    }

    // Redis stopped: once its lease (at most `GRANT_BATCH_MAX` grants) is spent, the engine
    // counts its share locally, and says so; nothing is refused.
    redis.stop();
    let mut sent = 0;
    while gauge(&engine1, "petrel_cluster_quota_fallback") != Some(1.0) {
        assert!(sent < 600, "never switched to the fallback");
        let (code, text) = s1.send(&format!("fallback{sent}@example.test"), "fallback");
        assert_eq!(code, 250, "while Redis is down: {text}");
        sent += 1;
    }
    for i in 0..10 {
        let (code, text) = s1.send(&format!("fallback{}@example.test", sent + i), "fallback");
        assert_eq!(code, 250, "in fallback: {text}");
    }
    let sent = sent + 10;
    // Back: within a few probes (1 s each) the fleet's counters are used again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while gauge(&engine1, "petrel_cluster_quota_fallback") != Some(0.0) {
        assert!(Instant::now() < deadline, "never left the fallback");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, text) = s1.send("back@example.test", "back");
    assert_eq!(code, 250, "{text}");
    drop(s1);

    // Everything engine 1 accepted after engine 2 died was delivered.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text: String = sink.received().iter().map(|t| t.text()).collect();
        let got = (0..20)
            .filter(|i| text.contains(&format!("survivor{i}@example.test")))
            .count()
            + (0..sent)
                .filter(|i| text.contains(&format!("fallback{i}@example.test")))
                .count();
        if got == 20 + sent {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {} delivered",
            20 + sent
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(engine1);
    drop((node_a, node_b));
}

/// Both engines' applied snapshot versions, as the control plane at `api_addr` records them.
fn applied_versions(api_addr: std::net::SocketAddr, owner: &str) -> Vec<i64> {
    let (code, body) = api(api_addr, "GET", "/v1/engines", owner, None);
    assert_eq!(code, 200, "{body}");
    let rows = body
        .as_array()
        .or_else(|| body["engines"].as_array())
        .cloned()
        .unwrap_or_default();
    rows.iter()
        .filter(|r| r["connected"].as_bool() == Some(true))
        .map(|r| r["applied_version"].as_i64().unwrap_or(0))
        .collect()
}

/// Waits (bounded) until two engines are connected and each applied a version above `after`.
fn wait_applied(api_addr: std::net::SocketAddr, owner: &str, after: i64) -> i64 {
    let deadline = Instant::now() + PROPAGATION_MAX;
    loop {
        let v = applied_versions(api_addr, owner);
        if v.len() == 2 && v.iter().all(|&x| x > after) {
            return v.into_iter().min().unwrap_or(0);
        }
        assert!(
            Instant::now() < deadline,
            "engines never applied a version above {after}: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_pushed_destination_connection_limit_holds_across_two_engines() {
    let Some(fleet) = OneNodeFleet::start(
        &["--trust-network", "127.0.0.0/8"],
        "[delivery]\nmessages_per_connection_max = 2\n",
    ) else {
        petrel_testkit::peer_missing("redis-server not installed (ops/test.sh installs it)");
        return;
    };
    let OneNodeFleet {
        control,
        owner,
        sink,
        engines,
        ..
    } = &fleet;
    let before = wait_applied(control.api, owner, 0);
    let (code, body) = api(
        control.api,
        "PUT",
        "/v1/limits/destinations/busy.test",
        owner,
        Some(json!({"connections_max": 2})),
    );
    assert_eq!(code, 200, "{body}");
    wait_applied(control.api, owner, before);

    // 100 messages to one destination, half through each engine, 50 connections (2 messages
    // each). An idle session holds its slot until its idle timeout (5 s), so each handover of
    // the lease between the engines can wait that long: more messages only add handovers.
    const N: usize = 100;
    for i in 0..N {
        let engine = &engines[i % 2];
        let (code, text) = send_one(
            engine.smtp,
            "news@sender.test",
            &format!("u{i}@busy.test"),
            &message("news@sender.test", &format!("u{i}@busy.test"), "busy"),
        );
        assert_eq!(code, 250, "{text}");
    }
    let deadline = Instant::now() + DELIVERY_WAIT_MAX;
    while sink.received().len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} delivered",
            sink.received().len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Two engines with a local limit of 2 each could open 4; the fleet's lease holds 2.
    assert!(sink.peak() <= 2, "peak {} connections", sink.peak());
    println!(
        "fleet connections: peak {}, {} connections for {N} messages",
        sink.peak(),
        sink.connections()
    );
    drop(fleet);
}

#[test]
fn the_new_tenant_cap_and_a_tenant_rate_hold_across_two_engines() {
    let Some(fleet) = OneNodeFleet::start(&[], "") else {
        petrel_testkit::peer_missing("redis-server not installed (ops/test.sh installs it)");
        return;
    };
    let OneNodeFleet {
        control,
        owner,
        dns,
        engines,
        ..
    } = &fleet;
    // A new tenant keeps its cap (10 messages per 24 hours): 10 in total through both.
    let fresh = common::control::provision_new(control.api, owner, dns, "fresh", DOMAIN, "fresh");
    let mut senders: Vec<Sender> = engines
        .iter()
        .map(|e| sender_when_ready(e.smtp.port(), "fresh", &fresh.password))
        .collect();
    // The two probes were the first two messages under the cap.
    let mut accepted = 2;
    for i in 0..20 {
        let (code, text) = senders[i % 2].send(&format!("n{i}@example.test"), "new");
        if code == 250 {
            accepted += 1;
        } else {
            assert!(
                code == 451 && text.contains("may send 10 messages per 24 hours"),
                "{code} {text}"
            );
        }
    }
    assert_eq!(accepted, 10, "the new-tenant cap across two engines");

    // A tenant rate of 5 messages per second, offered as fast as two engines take them.
    const RATE: u64 = 5;
    let (code, body) = api(
        control.api,
        "POST",
        &format!("/v1/tenants/{}/guardrails/lift-cap", fresh.tenant_id),
        owner,
        None,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = api(
        control.api,
        "PUT",
        &format!("/v1/tenants/{}/limits", fresh.tenant_id),
        owner,
        Some(json!({"messages_per_second_max": RATE, "messages_per_day_max": null})),
    );
    assert_eq!(code, 200, "{body}");
    // Both engines have the lifted cap and the rate once a new credential works at both.
    let password = new_credential(control.api, &fresh.admin, "fresh-rate");
    let mut senders: Vec<Sender> = engines
        .iter()
        .map(|e| sender_when_ready(e.smtp.port(), "fresh-rate", &password))
        .collect();
    std::thread::sleep(Duration::from_millis(1_100)); // the probes' second is over
    let started = Instant::now();
    let (mut ok, mut limited) = (0u64, 0u64);
    for i in 0..60 {
        let (code, text) = senders[i % 2].send(&format!("r{i}@example.test"), "rate");
        match code {
            250 => ok += 1,
            451 if text.contains("messages per second") => limited += 1,
            other => panic!("unexpected {other} {text}"),
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    // A bucket of one second's burst plus the refill over the run, for the whole fleet (two
    // local limiters would allow twice that).
    let bound = RATE as f64 * (1.0 + elapsed_s) + 1.0;
    assert!(
        (ok as f64) <= bound,
        "{ok} accepted in {elapsed_s:.2} s at {RATE}/s (bound {bound:.1})"
    );
    assert!(limited > 0, "the rate never refused");
    println!("fleet rate: {ok} accepted, {limited} refused in {elapsed_s:.2} s");
    drop(fleet);
}
