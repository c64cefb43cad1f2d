//! The abuse guardrails end to end (issue 14), with a real control plane, a real engine process
//! and the test kit's scripted SMTP sink:
//!
//! - a new tenant's 11th message within 24 hours is refused at MAIL (`451 4.7.1`, the engine's
//!   rate-limit reply, saying when the next slot opens), and passes once an operator lifts the
//!   cap;
//! - a tenant whose mail the sink bounces at 15 % (hard, `550 5.1.1`) has its sending domain
//!   disabled by the control plane: the next MAIL gets `550 5.7.1 sending disabled: <reason>`,
//!   a `sending_disabled` event is stored, and an operator's re-enable lets mail through again.
//!
//! The window and the minimum volume are shortened (`GuardSettings`) so this runs in seconds.

mod common;

use std::time::{Duration, Instant};

use common::control::{api, mailer, provision, provision_new, Provisioned};
use common::*;
use lettre::message::Mailbox;
use lettre::{Message, Transport};
use petrel_control::guardrails::GuardSettings;
use petrel_testkit::dns::DnsServer;
use petrel_testkit::smtp_server::{Script, SmtpServer};
use serde_json::{json, Value};

const DOMAIN: &str = "guard.test";
const TOKEN: &str = "guard-push-token-0123456789";
/// Upper bound on any wait (pushes, deliveries, evaluations).
const WAIT_MAX: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn mail(to: &str, subject: &str) -> Message {
    Message::builder()
        .from(format!("News <news@{DOMAIN}>").parse::<Mailbox>().unwrap())
        .to(to.parse::<Mailbox>().unwrap())
        .subject(subject)
        .body(String::from("Hello.\r\n"))
        .unwrap()
}

/// A control plane on loopback with `guard` settings, and an engine relaying to `sink`.
struct Stack {
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    info: petrel_control::ServeInfo,
    owner: String,
    dns: DnsServer,
    engine: Engine,
}

fn start(guard: GuardSettings, sink: std::net::SocketAddr) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let rt = runtime();
    let cfg = petrel_control::ControlConfig {
        data_dir: dir.path().join("control"),
        database_url: None,
        api_listen: "127.0.0.1:0".parse().unwrap(),
        push_listen: "127.0.0.1:0".parse().unwrap(),
        push_token: TOKEN.into(),
        dns_nameservers: vec![dns.addr],
        webhooks_allow_loopback: true,
        webhooks_ca_file: None,
    };
    let opts = petrel_control::ServeOptions {
        guardrails: guard,
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    rt.spawn(async move { petrel_control::serve_with(cfg, opts, Some(tx)).await });
    let info = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), rx).await })
        .expect("the control plane is ready in time")
        .expect("the control plane reports its addresses");
    let owner = info.bootstrap_key.clone().expect("the owner key");
    let args = linked_engine_args(
        dir.path(),
        info.push_addr,
        &info.push_cert_pem,
        TOKEN,
        2,
        sink,
    );
    let engine = Engine::start(&dir.path().join("engine"), &args);
    Stack {
        _rt: rt,
        _dir: dir,
        info,
        owner,
        dns,
        engine,
    }
}

/// Sends until the engine has the credential (its first snapshot with it), bounded.
fn first_send(m: &lettre::SmtpTransport, msg: &Message) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = m.send(msg) {
        assert!(
            Instant::now() < deadline,
            "the credential never worked: {e}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_new_tenants_eleventh_message_in_a_day_is_refused_until_an_operator_lifts_the_cap() {
    let sink = SmtpServer::start(Script::default());
    let s = start(GuardSettings::default(), sink.addr);
    let t = provision_new(
        s.info.api_addr,
        &s.owner,
        &s.dns,
        "fresh",
        DOMAIN,
        "fresh-mailer",
    );
    let m = mailer(s.engine.smtp.port(), "fresh-mailer", &t.password);
    first_send(&m, &mail("a@dest.test", "1"));
    for i in 2..=10 {
        m.send(&mail("a@dest.test", &i.to_string()))
            .unwrap_or_else(|e| panic!("message {i} of 10: {e}"));
    }
    let e = m.send(&mail("a@dest.test", "11")).unwrap_err().to_string();
    assert!(e.contains("451"), "{e}");
    assert!(
        e.contains("may send 10 messages per 24 hours") && e.contains("next in 1440 min"),
        "{e}"
    );
    let path = format!("/v1/tenants/{}/guardrails", t.tenant_id);
    let (code, g) = api(s.info.api_addr, "GET", &path, &t.admin, None);
    assert_eq!(code, 200, "{g}");
    assert_eq!(g["new_tenant_cap"]["active"], json!(true), "{g}");
    // The tenant cannot lift its own cap; the operator can.
    let lift = format!("{path}/lift-cap");
    let (code, _) = api(s.info.api_addr, "POST", &lift, &t.admin, None);
    assert_eq!(code, 403);
    let (code, g) = api(s.info.api_addr, "POST", &lift, &s.owner, None);
    assert_eq!((code, &g["cap_lifted"]), (200, &json!(true)), "{g}");
    let deadline = Instant::now() + WAIT_MAX;
    while let Err(e) = m.send(&mail("a@dest.test", "after the lift")) {
        assert!(Instant::now() < deadline, "still capped: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, audit) = api(
        s.info.api_addr,
        "GET",
        "/v1/audit-log?action=guard.cap_lifted",
        &s.owner,
        None,
    );
    assert_eq!(code, 200, "{audit}");
    assert!(audit.to_string().contains("guard.cap_lifted"), "{audit}");
    assert!(s.engine.stop());
}

/// A stack under `guard` whose sink refuses `perm*` recipients (`550 5.1.1`, a hard bounce,
/// invalid_recipient) and accepts the rest; a tenant `name` sending from [`DOMAIN`] and its
/// mailer, once the engine took its first message.
fn bouncing_tenant(
    guard: GuardSettings,
    name: &str,
) -> (SmtpServer, Stack, Provisioned, lettre::SmtpTransport) {
    let sink = SmtpServer::start(Script::by_local_part());
    let s = start(guard, sink.addr);
    let mailer_name = format!("{name}-mailer");
    let t = provision(
        s.info.api_addr,
        &s.owner,
        &s.dns,
        name,
        DOMAIN,
        &mailer_name,
    );
    let m = mailer(s.engine.smtp.port(), &mailer_name, &t.password);
    first_send(&m, &mail("ok0@dest.test", "0"));
    (sink, s, t, m)
}

/// Events of `kind` the tenant's key sees.
fn events(s: &Stack, key: &str, kind: &str) -> Vec<Value> {
    let path = format!("/v1/events?type={kind}&limit=100");
    let (code, page) = api(s.info.api_addr, "GET", &path, key, None);
    assert_eq!(code, 200, "{page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_domain_whose_mail_bounces_at_15_percent_is_disabled_until_an_operator_re_enables_it() {
    let (_sink, s, t, m) = bouncing_tenant(
        GuardSettings {
            window_ms: 3_600_000,
            min_volume: 20,
            check_interval_ms: 1_000,
            ..Default::default()
        },
        "bouncy",
    );
    // 40 messages, every seventh to a recipient the sink refuses: 6 of 40 = 15 %. Once the
    // volume passes 20 the rate is over 10 %, so the domain may be disabled while we send.
    let mut refused = None;
    for i in 1..40 {
        let to = if i % 7 == 3 {
            format!("perm{i}@dest.test")
        } else {
            format!("ok{i}@dest.test")
        };
        if let Err(e) = m.send(&mail(&to, &i.to_string())) {
            refused = Some(e.to_string());
            break;
        }
    }
    // The next MAIL is refused within the bound, with the reason.
    let deadline = Instant::now() + WAIT_MAX;
    let refusal = loop {
        if let Some(e) = refused.take() {
            if e.contains("sending disabled") {
                break e;
            }
        }
        assert!(Instant::now() < deadline, "never disabled");
        std::thread::sleep(Duration::from_millis(200));
        refused = m
            .send(&mail("ok-later@dest.test", "later"))
            .err()
            .map(|e| e.to_string());
    };
    assert!(refusal.contains("550"), "{refusal}");
    assert!(
        refusal.contains("sending disabled: bounce rate of guard.test")
            && refusal.contains("over 10.0% in 1 h"),
        "{refusal}"
    );
    let disabled = events(&s, &t.admin, "sending_disabled");
    assert_eq!(disabled.len(), 1, "{disabled:?}");
    let e = &disabled[0];
    assert_eq!(e["from_domain"], DOMAIN, "{e}");
    assert_eq!(e["details"]["metric"], "bounce_rate", "{e}");
    assert!(e["details"]["rate"].as_f64().unwrap() > 0.10, "{e}");
    assert!(e["details"]["volume"].as_i64().unwrap() >= 20, "{e}");
    // The tenant's API answers carry the reason.
    let answer = petrel_testkit::http::Request::new("GET", &format!("/v1/tenants/{}", t.tenant_id))
        .bearer(&t.admin)
        .send(s.info.api_addr)
        .unwrap();
    let header = answer
        .header("x-petrel-warning")
        .unwrap_or_else(|| panic!("no X-Petrel-Warning: {:?}", answer.headers));
    assert!(
        header.starts_with("sending disabled: bounce rate"),
        "{header}"
    );
    // The operator re-enables the domain: the engines let its mail through again.
    let path = format!("/v1/tenants/{}/guardrails/enable", t.tenant_id);
    let (code, g) = api(
        s.info.api_addr,
        "POST",
        &path,
        &s.owner,
        Some(json!({"domain": DOMAIN})),
    );
    assert_eq!(code, 200, "{g}");
    assert_eq!(g["levels"], json!([]), "{g}");
    let deadline = Instant::now() + WAIT_MAX;
    while let Err(e) = m.send(&mail("ok-again@dest.test", "again")) {
        assert!(Instant::now() < deadline, "still disabled: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let enabled = events(&s, &t.admin, "sending_enabled");
    assert_eq!(enabled.len(), 1, "{enabled:?}");
    assert!(enabled[0]["details"]["by"]
        .as_str()
        .unwrap()
        .starts_with("key:"));
    assert!(s.engine.stop());
}

#[test]
fn a_domain_near_a_threshold_is_warned_in_the_250_reply_the_events_and_the_api() {
    // A warning at half the 10 % threshold.
    let (_sink, s, t, m) = bouncing_tenant(
        GuardSettings {
            window_ms: 3_600_000,
            min_volume: 20,
            warning_percent: 50,
            check_interval_ms: 1_000,
            ..Default::default()
        },
        "nearly",
    );
    // 50 messages, 4 of them (8 %) to refused recipients from the 21st on: the rate passes 5 %
    // and never 10 %, so the domain is warned, not disabled.
    for i in 1..50 {
        let to = if [20, 30, 40, 49].contains(&i) {
            format!("perm{i}@dest.test")
        } else {
            format!("ok{i}@dest.test")
        };
        m.send(&mail(&to, &i.to_string()))
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
    }
    let deadline = Instant::now() + WAIT_MAX;
    let warned = loop {
        let w = events(&s, &t.admin, "reputation_warning");
        if !w.is_empty() {
            break w;
        }
        assert!(Instant::now() < deadline, "never warned");
        std::thread::sleep(Duration::from_millis(200));
    };
    // The tenant's rate and its one domain's are the same here: one warning each.
    assert!(
        warned.iter().any(|w| w["from_domain"] == DOMAIN)
            && warned
                .iter()
                .all(|w| w["details"]["metric"] == "bounce_rate"),
        "{warned:?}"
    );
    assert!(events(&s, &t.admin, "sending_disabled").is_empty());
    // The tenant's API answers carry the warning.
    let answer = petrel_testkit::http::Request::new("GET", &format!("/v1/tenants/{}", t.tenant_id))
        .bearer(&t.admin)
        .send(s.info.api_addr)
        .unwrap();
    let header = answer
        .header("x-petrel-warning")
        .unwrap_or_else(|| panic!("no X-Petrel-Warning: {:?}", answer.headers));
    assert!(
        header.starts_with("bounce rate ") && header.contains("nears 10.0%"),
        "{header}"
    );
    // The 250 after DATA says so once the engine has the warning (the next snapshot). Each
    // probe lowers the rate; 4 in 80 is still 5 %.
    let mut text = String::new();
    for i in 0..30 {
        let r = m
            .send(&mail(&format!("ok-probe{i}@dest.test"), "probe"))
            .unwrap_or_else(|e| panic!("probe {i}: {e}"));
        assert_eq!(r.code().to_string(), "250");
        text = r.message().collect::<Vec<_>>().join(" ");
        if text.contains("warning:") {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        text.contains("(warning: bounce rate ") && text.contains("nears 10.0%)"),
        "{text}"
    );
    assert!(s.engine.stop());
}
