//! End to end delivery: a real `petrel engine`, a real DNS server on loopback serving MX records
//! (hickory-server), and the project's smart sink (`petrel load sink`, in-process) as every MX.
//! Each test injects, then compares a delivery summary.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use petrel_loadtest::{start_sink, DomainFault, SinkConfig, SinkHandle};
use petrel_testkit::dns::{a, mx, DnsServer};
use petrel_testkit::http::Request;

/// The longest any delivery test waits for mail to arrive.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(60);

fn dns() -> DnsServer {
    let mut records = vec![
        mx("a.test.", 60, 10, "mx.a.test."),
        a("mx.a.test.", 60, "127.0.0.1"),
        mx("b.test.", 60, 10, "mx.b.test."),
        a("mx.b.test.", 60, "127.0.0.1"),
        mx("c.test.", 60, 10, "mx.c.test."),
        a("mx.c.test.", 60, "127.0.0.1"),
        mx("e.test.", 60, 10, "mx.e.test."),
        a("mx.e.test.", 60, "127.0.0.1"),
        mx("t.test.", 60, 10, "mx.t.test."),
        a("mx.t.test.", 60, "127.0.0.1"),
        // Null MX (RFC 7505): this domain accepts no mail.
        mx("n.test.", 60, 0, "."),
        // No MX: the implicit MX is the domain's own address.
        a("i.test.", 60, "127.0.0.1"),
        // The host of twelve domains (s1.test to s12.test): one provider's MX.
        a("mx.shared.test.", 60, "127.0.0.1"),
    ];
    records.extend((1..=12).map(|i| mx(&format!("s{i}.test."), 60, 10, "mx.shared.test.")));
    DnsServer::start(records)
}

fn sink(mut cfg: SinkConfig) -> SinkHandle {
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.threads = 1;
    cfg.keep_messages_max = 10_000;
    start_sink(cfg).expect("start the sink")
}

fn engine_config(dns: SocketAddr, sink: SocketAddr, extra: &str) -> String {
    format!(
        "[delivery]\nnameservers = [\"{dns}\"]\nsmtp_port = {}\nretry_initial_ms = 300\nretry_max_ms = 1000\n{extra}\n",
        sink.port()
    )
}

fn start_engine(dir: &std::path::Path, config: &str) -> Engine {
    Engine::start_with(
        dir,
        &["--shards", "2", "--trust-network", "127.0.0.0/8"],
        Some(config),
    )
}

/// Injects one message per (recipient, subject) over one connection; asserts each 250.
fn inject(addr: SocketAddr, from: &str, items: &[(String, String)]) {
    let mut c = Smtp::connect(addr);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO injector.test").0, 250);
    for (rcpt, subject) in items {
        assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).0, 250);
        let (code, text) = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert_eq!(code, 250, "{text}");
        assert_eq!(c.cmd("DATA").0, 354);
        c.send(message(from, rcpt, subject).as_bytes());
        c.send(b".\r\n");
        let (code, text) = c.reply();
        assert_eq!(code, 250, "{text}");
    }
    assert_eq!(c.cmd("QUIT").0, 221);
}

fn items(domain: &str, prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("user{i}@{domain}"), format!("{prefix}-{i}")))
        .collect()
}

fn subject_of(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    text.lines()
        .find_map(|l| l.strip_prefix("Subject: ").map(|s| s.trim().to_string()))
}

/// Waits until `pred` holds for the sink's received messages, bounded.
fn wait_until(
    sink: &SinkHandle,
    what: &str,
    pred: impl Fn(&[petrel_loadtest::ReceivedMessage]) -> bool,
) {
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    loop {
        let got = sink.received();
        if pred(&got) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; sink has {} messages: {:?}",
            got.len(),
            sink.stats()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dsns(got: &[petrel_loadtest::ReceivedMessage]) -> Vec<String> {
    got.iter()
        .filter(|m| m.mail_from.is_empty())
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect()
}

#[test]
fn delivered_deferred_bounced_null_mx_and_implicit_mx() {
    let dns = dns();
    let sink = sink(SinkConfig {
        rcpt_tempfail: vec![DomainFault {
            domain: "b.test".into(),
            probability: 0.5,
        }],
        rcpt_permfail: vec![DomainFault {
            domain: "c.test".into(),
            probability: 1.0,
        }],
        starttls: true,
        ..SinkConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    // Without a control plane, accepted lines are written only when asked for.
    let extra = "[events]\njsonl_accepted = true";
    let engine = start_engine(dir.path(), &engine_config(dns.addr, sink.addr(), extra));
    let from = "sender@a.test";
    let mut all = items("a.test", "a", 20);
    all.extend(items("b.test", "b", 10));
    all.extend(items("c.test", "c", 1));
    all.extend(items("n.test", "n", 1));
    all.extend(items("i.test", "i", 1));
    inject(engine.smtp, from, &all);
    // 20 + 10 + 1 delivered, and two DSNs (5xx at c.test, null MX at n.test) back to the sender.
    wait_until(&sink, "31 deliveries and 2 DSNs", |got| {
        let subjects: HashSet<String> = got
            .iter()
            .filter(|m| !m.mail_from.is_empty())
            .filter_map(|m| subject_of(&m.data))
            .collect();
        subjects.len() == 31 && dsns(got).len() >= 2
    });
    let got = sink.received();
    let subjects: HashSet<String> = got
        .iter()
        .filter(|m| !m.mail_from.is_empty())
        .filter_map(|m| subject_of(&m.data))
        .collect();
    for s in ["a-0", "a-19", "b-9", "i-0"] {
        assert!(subjects.contains(s), "{s} not delivered");
    }
    assert!(!subjects.contains("c-0") && !subjects.contains("n-0"));
    let reports = dsns(&got);
    assert_eq!(reports.len(), 2, "exactly one DSN per bounced message");
    for r in &reports {
        assert!(r.contains("multipart/report"), "{r}");
        assert!(
            r.contains("report-type=delivery-status")
                || r.contains("report-type=\"delivery-status\""),
            "{r}"
        );
        assert!(r.contains("Action: failed"), "{r}");
    }
    assert!(reports.iter().any(|r| r.contains("user0@c.test")));
    assert!(reports
        .iter()
        .any(|r| r.contains("user0@n.test") && r.contains("5.1.10")));
    assert!(got
        .iter()
        .filter(|m| m.mail_from.is_empty())
        .all(|m| m.rcpts == vec![from.to_string()]));
    assert!(
        sink.stats().rcpts_tempfailed > 0,
        "b.test was deferred at least once"
    );
    assert!(sink.stats().tls_sessions > 0, "opportunistic TLS was used");
    // Everything final: the spool drains.
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    while spool_count(dir.path()) > 0 {
        assert!(Instant::now() < deadline, "spool never drained");
        std::thread::sleep(Duration::from_millis(200));
    }
    let events = std::fs::read_dir(dir.path().join("events"))
        .unwrap()
        .count();
    assert!(events > 0, "events were written");
    // Every series the run produced is named and described the way Prometheus expects.
    let exposition = engine.scrape();
    for name in [
        "petrel_delivery_delivered_total",
        "petrel_delivery_deferred_total",
        "petrel_delivery_bounced_total",
        "petrel_queue_depth",
        "petrel_delivery_end_to_end_seconds",
    ] {
        assert!(exposition.contains(name), "{name} missing");
    }
    match common::promtool() {
        Some(promtool) => {
            if let Err(problems) = common::promtool_check_metrics(&promtool, &exposition) {
                panic!("promtool check metrics: {problems}");
            }
        }
        None => petrel_testkit::peer_missing(
            "promtool check: promtool not found (ops/test.sh fetches it)",
        ),
    }
    assert!(engine.stop());
    let log = read_events(dir.path());
    assert!(log.contains("\"delivered\""), "events name outcomes");
    assert!(log.contains("\"deferred\"") && log.contains("\"bounced\""));
    // Every bounce and deferral carries its classification; deliveries carry none.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("an event line is JSON"))
        .collect();
    let of = |rcpt: &str, outcome: &str| {
        lines
            .iter()
            .find(|v| v["recipient"] == rcpt && v["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {outcome} event for {rcpt}"))
    };
    let accepted = of("user0@c.test", "accepted");
    assert_eq!(accepted["attempt"], 0, "{accepted}");
    assert_eq!(accepted["sender"], from, "{accepted}");
    assert_eq!(
        accepted["message_id"],
        of("user0@c.test", "bounced")["message_id"],
        "{accepted}"
    );
    let rejected = &of("user0@c.test", "bounced")["bounce"];
    assert_eq!(rejected["class"], "hard", "{rejected}");
    assert!(rejected["category"].as_str().is_some_and(|c| !c.is_empty()));
    let null_mx = &of("user0@n.test", "bounced")["bounce"];
    assert_eq!(
        *null_mx,
        serde_json::json!({"class": "hard", "category": "bad_domain"})
    );
    for v in lines.iter().filter(|v| v["outcome"] == "deferred") {
        assert_eq!(v["bounce"]["class"], "soft", "{v}");
    }
    assert!(lines
        .iter()
        .filter(|v| v["outcome"] == "delivered")
        .all(|v| v["bounce"].is_null()));
}

fn read_events(dir: &std::path::Path) -> String {
    let mut all = String::new();
    for e in std::fs::read_dir(dir.join("events")).unwrap() {
        all.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap_or_default());
    }
    all
}

#[test]
fn require_tls_to_a_host_without_tls_is_deferred() {
    let dns = dns();
    let sink = sink(SinkConfig {
        starttls: false,
        ..SinkConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let extra = "[[delivery.domains]]\ndomain = \"t.test\"\ntls = \"require\"\n";
    let engine = start_engine(dir.path(), &engine_config(dns.addr, sink.addr(), extra));
    inject(
        engine.smtp,
        "sender@a.test",
        &[
            ("x@t.test".into(), "t-0".into()),
            ("y@a.test".into(), "a-0".into()),
        ],
    );
    wait_until(&sink, "the opportunistic message", |got| got.len() == 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        sink.received().len(),
        1,
        "require-TLS mail must not go out in plaintext"
    );
    // The admin endpoint wants the engine's admin token (issue 16), and audits every call.
    let refused = Request::get("/v1/queue")
        .send(engine.admin)
        .expect("admin endpoint answers");
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert!(refused.text().contains("\"unauthorized\""));
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let queued = Request::get("/v1/queue")
        .header("Authorization", &format!("Bearer {}", token.trim()))
        .send(engine.admin)
        .expect("admin endpoint answers");
    let (code, body) = (queued.status, queued.text());
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("t.test"), "t.test is still queued: {body}");
    assert_eq!(spool_count(dir.path()), 1);
    // The operator's view and action, through the CLI and the admin endpoint.
    let queue = |args: &[&str]| {
        let out = std::process::Command::new(petrel_bin())
            .arg("queue")
            .args(args)
            .arg("--admin")
            .arg(engine.admin.to_string())
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "petrel queue {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ls = queue(&["ls"]);
    assert!(ls.contains("t.test"), "{ls}");
    let bounced = queue(&["bounce", "t.test"]);
    assert!(bounced.contains("recipients"), "{bounced}");
    wait_until(&sink, "the DSN for the bounced queue", |got| {
        !dsns(got).is_empty()
    });
    assert!(dsns(&sink.received())[0].contains("x@t.test"));
    let audit = std::fs::read_to_string(dir.path().join("admin-audit.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["status"], 401, "{audit}");
    assert!(
        lines
            .iter()
            .any(|l| l["path"] == "/v1/queue/t.test/bounce" && l["status"] == 200),
        "{audit}"
    );
    assert!(engine.stop());
    assert!(read_events(dir.path()).contains("\"deferred\""));
}

#[test]
fn dropped_connections_in_data_are_retried_until_delivered() {
    let dns = dns();
    let sink = sink(SinkConfig {
        drop_in_data: 0.3,
        ..SinkConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), &engine_config(dns.addr, sink.addr(), ""));
    inject(engine.smtp, "sender@a.test", &items("a.test", "d", 30));
    wait_until(&sink, "30 deliveries despite drops", |got| {
        got.iter()
            .filter_map(|m| subject_of(&m.data))
            .collect::<HashSet<_>>()
            .len()
            == 30
    });
    assert!(
        sink.stats().drops_in_data > 0,
        "the sink did drop connections"
    );
    assert!(engine.stop());
}

#[test]
fn expired_mail_bounces_with_a_dsn() {
    let dns = dns();
    let sink = sink(SinkConfig {
        rcpt_tempfail: vec![DomainFault {
            domain: "e.test".into(),
            probability: 1.0,
        }],
        ..SinkConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(
        dir.path(),
        &engine_config(dns.addr, sink.addr(), "message_age_max_ms = 2000"),
    );
    inject(
        engine.smtp,
        "sender@a.test",
        &[("late@e.test".into(), "e-0".into())],
    );
    wait_until(&sink, "an expiry DSN", |got| !dsns(got).is_empty());
    let r = &dsns(&sink.received())[0];
    assert!(
        r.contains("late@e.test") && r.contains("Action: failed"),
        "{r}"
    );
    assert!(engine.stop());
    assert!(read_events(dir.path()).contains("\"expired\""));
}

#[test]
fn per_domain_connection_limit_holds_across_shards() {
    let dns = dns();
    let sink = sink(SinkConfig {
        reply_delay_ms: 20,
        ..SinkConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let extra = "[[delivery.domains]]\ndomain = \"a.test\"\nconnections_max = 2\nmessages_per_connection_max = 5\n";
    let engine = start_engine(dir.path(), &engine_config(dns.addr, sink.addr(), extra));
    let batches: Vec<_> = (0..4)
        .map(|b| {
            let addr = engine.smtp;
            std::thread::spawn(move || {
                inject(
                    addr,
                    "sender@a.test",
                    &items("a.test", &format!("l{b}"), 25),
                )
            })
        })
        .collect();
    for b in batches {
        b.join().unwrap();
    }
    wait_until(&sink, "100 deliveries", |got| got.len() >= 100);
    let stats = sink.stats();
    assert!(
        stats.connections_max_seen <= 2,
        "the sink saw {} concurrent connections",
        stats.connections_max_seen
    );
    assert!(
        stats.connections_total >= 100 / 5,
        "messages_per_connection_max forces new connections"
    );
    assert!(engine.stop());
}

#[test]
fn kill9_during_delivery_loses_nothing() {
    let dns = dns();
    // One message per write (no PIPELINING or CHUNKING to batch transactions under one delayed
    // reply), so the run lasts long enough for the kill to land in its middle.
    let sink = sink(SinkConfig {
        data_reply_delay_ms: 150,
        pipelining: false,
        chunking: false,
        ..SinkConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let config = engine_config(dns.addr, sink.addr(), "connections_per_domain_max = 2");
    let engine = start_engine(dir.path(), &config);
    inject(engine.smtp, "sender@a.test", &items("a.test", "k", 150));
    wait_until(&sink, "part of the run", |got| got.len() >= 20);
    engine.kill9();
    let delivered_before = sink.received().len();
    assert!(
        delivered_before < 150,
        "the kill came too late to mean anything"
    );
    let engine = start_engine(dir.path(), &config);
    wait_until(&sink, "every message after the restart", |got| {
        got.iter()
            .filter_map(|m| subject_of(&m.data))
            .collect::<HashSet<_>>()
            .len()
            == 150
    });
    assert!(engine.stop());
}

/// The alert rules shipped in ops/ load in Prometheus (promtool's own check).
#[test]
fn the_shipped_alert_rules_pass_promtool() {
    let Some(promtool) = common::promtool() else {
        petrel_testkit::peer_missing("promtool not found (ops/test.sh fetches it)");
        return;
    };
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/monitoring/petrel-alerts.yml");
    let out = std::process::Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

/// Twelve domains with one MX host become ready at once: they are one site, which has at most
/// `next_hop_sessions_per_shard_max` (1 here) connections per shard, so the host sees one
/// connection per shard.
#[test]
fn domains_sharing_an_mx_host_stay_within_the_next_hop_limit() {
    let dns = dns();
    let sink = sink(SinkConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let extra = "next_hop_sessions_per_shard_max = 1";
    let engine = start_engine(dir.path(), &engine_config(dns.addr, sink.addr(), extra));
    let all: Vec<(String, String)> = (1..=12)
        .flat_map(|d| items(&format!("s{d}.test"), &format!("s{d}"), 2))
        .collect();
    inject(engine.smtp, "sender@a.test", &all);
    wait_until(&sink, "24 deliveries", |got| got.len() >= 24);
    let stats = sink.stats();
    assert!(
        stats.connections_max_seen <= 2,
        "the shared MX host saw {} concurrent connections",
        stats.connections_max_seen
    );
    assert!(engine.stop());
}

/// What a queued recipient may cost, by the engine's own accounting (issue 17): the delivery
/// queue's message table, recipients, senders, attribution and domain queues plus the spool's
/// index, divided by the recipients queued. Neither bodies nor attributions are held once a
/// message waits for a retry (they are read back from the spool), live or after a restart.
const QUEUED_RECIPIENT_BYTES_MAX: f64 = 200.0;

/// The sum of a metric's samples over its labels.
fn metric_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scrapes until `pred` holds (gauges refresh every few seconds), bounded.
fn scrape_until(engine: &Engine, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    loop {
        let text = engine.scrape();
        if pred(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_queued_recipient_costs_a_bounded_number_of_bytes_live_and_after_a_restart() {
    const MESSAGES: u64 = 12_000;
    const DOMAINS: usize = 1_500;
    let sink = sink(SinkConfig {
        rcpt_tempfail: vec![DomainFault {
            domain: "qm.test".into(),
            probability: 1.0,
        }],
        ..SinkConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[delivery]\nrelay_to = \"{}\"\nretry_initial_ms = 3600000\nretry_max_ms = 3600000\n",
        sink.addr()
    );
    let engine = start_engine(dir.path(), &config);
    let report = petrel_loadtest::inject(petrel_loadtest::InjectConfig {
        target: engine.smtp,
        connections: 16,
        messages: MESSAGES,
        sizes: vec![(600, 1.0)],
        domains: (0..DOMAINS)
            .map(|i| (format!("d{i}.qm.test"), 1.0))
            .collect(),
        threads: 1,
        ..petrel_loadtest::InjectConfig::default()
    })
    .expect("inject");
    assert_eq!(report.counts.messages_2xx, MESSAGES, "{}", report.human());
    let check = |engine: &Engine, when: &str| {
        let text = scrape_until(engine, "every recipient queued and counted", |t| {
            metric_sum(t, "petrel_queue_depth") as u64 == MESSAGES
                && metric_sum(t, "petrel_queue_memory_bytes") > 0.0
                && metric_sum(t, "petrel_spool_index_memory_bytes") > 0.0
        });
        let queue = metric_sum(&text, "petrel_queue_memory_bytes");
        let index = metric_sum(&text, "petrel_spool_index_memory_bytes");
        let per = (queue + index) / MESSAGES as f64;
        let parts: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("petrel_queue_memory_bytes{"))
            .collect();
        println!(
            "{when}: queues {queue} B, spool index {index} B: {per:.0} B per recipient; {parts:#?}"
        );
        assert!(
            per <= QUEUED_RECIPIENT_BYTES_MAX,
            "{when}: {per:.0} bytes per queued recipient (queues {queue}, spool index {index})"
        );
    };
    // Every first attempt deferred: nothing left in flight, no body held.
    scrape_until(&engine, "every first attempt deferred", |t| {
        metric_sum(t, "petrel_delivery_deferred_total") as u64 >= MESSAGES
    });
    check(&engine, "live");
    let text = scrape_until(&engine, "the body cache's gauge", |t| {
        t.contains("petrel_spool_body_cache_bytes")
    });
    let cached = metric_sum(&text, "petrel_spool_body_cache_bytes");
    assert!(
        cached < 64.0 * 1024.0,
        "{cached} bytes of bodies held for deferred mail"
    );
    engine.kill9();
    let engine = start_engine(dir.path(), &config);
    check(&engine, "after a restart");
    assert!(engine.stop());
}
