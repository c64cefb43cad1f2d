//! End to end sending-domain authentication (issue 14), with the real loopback DNS server, a
//! control plane re-checking domains every second, an engine and the sink:
//! - a tenant's mail with a From domain it does not own is refused (`550 5.7.26`,
//!   `from_domain`);
//! - removing the domain's DMARC record blocks it at the next re-check (`550 5.7.26 dmarc`, a
//!   `rejected` event with the check in its details, an audit entry), restoring it lets mail
//!   through again;
//! - a trusted network mapped to one domain gets only that domain signed.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::control::{api, mailer, provision};
use common::*;
use lettre::address::Envelope;
use lettre::{SmtpTransport, Transport};
use petrel_loadtest::{start_sink, SinkConfig};
use petrel_testkit::dns::DnsServer;
use serde_json::Value;

const DOMAIN: &str = "auth.test";
/// A second tenant's domain, not mapped to the trusted network.
const OTHER: &str = "other-auth.test";
const TOKEN: &str = "domauth-push-token-0123456789";
/// The longest any step waits (a re-check every second, the push, the events' way back).
const WAIT_MAX: Duration = Duration::from_secs(30);

/// A control plane on loopback that re-checks domains every second.
/// The control plane, re-checking domains every second.
fn start_control(
    rt: &tokio::runtime::Runtime,
    data_dir: &std::path::Path,
    nameserver: SocketAddr,
) -> petrel_control::ServeInfo {
    let opts = petrel_control::ServeOptions {
        domain_check_interval_secs: 1,
        ..petrel_control::ServeOptions::default()
    };
    let any = "127.0.0.1:0".parse().expect("loopback address");
    common::control::start_control_with(rt, data_dir, TOKEN, nameserver, (any, any), opts).0
}

fn message(from_domain: &str, to: &str, subject: &str) -> String {
    format!("From: <news@{from_domain}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\nHello.\r\n")
}

/// Submits with AUTH; Ok or the refusal's text.
fn submit(m: &SmtpTransport, from_domain: &str, to: &str, subject: &str) -> Result<(), String> {
    let envelope = Envelope::new(
        Some(format!("news@{DOMAIN}").parse().unwrap()),
        vec![to.parse().unwrap()],
    )
    .unwrap();
    m.send_raw(&envelope, message(from_domain, to, subject).as_bytes())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Retries `submit` until `want(result)` holds (a pushed policy takes a moment).
fn submit_until(
    m: &SmtpTransport,
    to: &str,
    what: &str,
    want: impl Fn(&Result<(), String>) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let r = submit(m, DOMAIN, to, what);
        if want(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: last answer {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A message over a raw connection from the trusted network (no AUTH); the DATA reply.
fn relay(addr: SocketAddr, from_domain: &str, to: &str) -> (u16, String) {
    let mut c = Smtp::connect(addr);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO relay.client.test").0, 250);
    assert_eq!(c.cmd(&format!("MAIL FROM:<news@{from_domain}>")).0, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{to}>")).0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(message(from_domain, to, "relayed").as_bytes());
    c.send(b".\r\n");
    let r = c.reply();
    let _ = c.cmd("QUIT");
    r
}

/// The tenant's events of `query`, waiting (bounded) until `done` holds.
fn wait_events(
    addr: SocketAddr,
    key: &str,
    query: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let (code, page) = api(
            addr,
            "GET",
            &format!("/v1/events?limit=100&{query}"),
            key,
            None,
        );
        assert_eq!(code, 200, "{page}");
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if done(&events) {
            return events;
        }
        assert!(Instant::now() < deadline, "{query}: {events:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_received(sink: &petrel_loadtest::SinkHandle, n: usize) {
    let deadline = Instant::now() + WAIT_MAX;
    while sink.received().len() < n {
        assert!(Instant::now() < deadline, "the sink never got {n} messages");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_domain_without_dmarc_is_blocked_at_the_next_check_and_a_foreign_from_always() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let info = start_control(&rt, &dir.path().join("control"), dns.addr);
    let owner = info.bootstrap_key.clone().expect("the owner key");
    let sink = start_sink(SinkConfig {
        threads: 1,
        keep_messages_max: 100,
        ..SinkConfig::default()
    })
    .unwrap();
    let args = linked_engine_args(
        dir.path(),
        info.push_addr,
        &info.push_cert_pem,
        TOKEN,
        1,
        sink.addr(),
    );
    // Loopback is a trusted network mapped to DOMAIN only (no plain trusted_networks entry).
    let config = format!(
        "[[smtp.trusted_network_domains]]\ncidr = \"127.0.0.0/8\"\ndomains = [\"{DOMAIN}\"]\n"
    );
    let engine = Engine::start_with(&dir.path().join("engine"), &args, Some(config.as_str()));

    let acme = provision(info.api_addr, &owner, &dns, "acme", DOMAIN, "acme-mailer");
    let beta = provision(info.api_addr, &owner, &dns, "beta", OTHER, "beta-mailer");
    let m = mailer(engine.smtp.port(), "acme-mailer", &acme.password);

    // 1. Passing: accepted and delivered, signed.
    submit_until(&m, "one@example.test", "first send", Result::is_ok).unwrap();
    wait_received(&sink, 1);
    assert!(sink.received()[0].data.starts_with(b"DKIM-Signature:"));

    // 2. A From domain of another tenant: refused, named.
    let err = submit(&m, OTHER, "two@example.test", "foreign").unwrap_err();
    assert!(
        err.contains("5.7.26") && err.contains("from_domain check failed"),
        "{err}"
    );

    // 3. The trusted network speaks for DOMAIN (signed), not for OTHER (sent unsigned).
    assert_eq!(relay(engine.smtp, DOMAIN, "mapped@example.test").0, 250);
    assert_eq!(relay(engine.smtp, OTHER, "unmapped@example.test").0, 250);
    wait_received(&sink, 3);
    let by_rcpt = |r: &str| {
        sink.received()
            .into_iter()
            .find(|m| m.rcpts.iter().any(|x| x == r))
            .unwrap_or_else(|| panic!("{r} delivered"))
    };
    assert!(by_rcpt("mapped@example.test")
        .data
        .starts_with(b"DKIM-Signature:"));
    assert!(
        !String::from_utf8_lossy(&by_rcpt("unmapped@example.test").data)
            .contains("DKIM-Signature:")
    );

    // 4. DMARC removed: the next re-check blocks the domain.
    let dmarc = format!("_dmarc.{DOMAIN}");
    dns.set_txt(&dmarc, &[]);
    let err = submit_until(&m, "blocked@example.test", "blocked", Result::is_err).unwrap_err();
    assert!(
        err.contains("5.7.26") && err.contains(&format!("dmarc check failed for {DOMAIN}")),
        "{err}"
    );
    let events = wait_events(info.api_addr, &acme.admin, "type=rejected", |ev| {
        ev.iter().any(|e| e["recipient"] == "blocked@example.test")
    });
    let e = events
        .iter()
        .find(|e| e["recipient"] == "blocked@example.test")
        .unwrap();
    assert_eq!(e["details"]["check"], "dmarc", "{e}");
    assert_eq!(e["details"]["domain"], DOMAIN, "{e}");
    assert_eq!(e["details"]["detail"], "missing", "{e}");
    assert_eq!(e["reply"]["enhanced_code"], "5.7.26", "{e}");
    let foreign = events
        .iter()
        .find(|e| e["recipient"] == "two@example.test")
        .expect("the foreign From's refusal");
    assert_eq!(foreign["details"]["check"], "from_domain", "{foreign}");
    let (code, audit) = api(
        info.api_addr,
        "GET",
        "/v1/audit-log?action=domain.auth_failed",
        &acme.admin,
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(audit.as_array().map(Vec::len), Some(1), "{audit}");
    assert_eq!(audit[0]["target"], acme.domain_id.as_str());
    // The other tenant's domain is untouched.
    let mb = mailer(engine.smtp.port(), "beta-mailer", &beta.password);
    let envelope = Envelope::new(
        Some(format!("news@{OTHER}").parse().unwrap()),
        vec!["beta@example.test".parse().unwrap()],
    )
    .unwrap();
    mb.send_raw(
        &envelope,
        message(OTHER, "beta@example.test", "beta").as_bytes(),
    )
    .expect("the other domain still sends");

    // 5. Restored: passes again at the next re-check.
    dns.set_txt(&dmarc, &["v=DMARC1; p=none"]);
    submit_until(&m, "again@example.test", "restored", Result::is_ok).unwrap();
    let (_, audit) = api(
        info.api_addr,
        "GET",
        "/v1/audit-log?action=domain.auth_passed",
        &acme.admin,
        None,
    );
    assert_eq!(audit.as_array().map(Vec::len), Some(1), "{audit}");
    assert!(engine.stop());
}
