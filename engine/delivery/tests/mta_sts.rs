//! MTA-STS enforcement (RFC 8461) on a real shard, against real parts on loopback: the kit's
//! DNS server publishes the destination's MX, its `_mta-sts` TXT record and the policy host;
//! the kit's HTTPS policy server serves the policy (certificate from one throw-away CA); the
//! kit's SMTP server is the MX host, offering STARTTLS with a certificate from another CA that
//! delivery trusts (`extra_root_certs_pem`). Discovery itself (cache expiry, size bound,
//! redirects) is petrel-outbound's `tests/mta_sts.rs`.

use std::collections::HashMap;
use std::time::Duration;

use petrel_delivery::tls_rpt::{FailureType, PolicyType, Row, TlsRptRecorder};
use petrel_delivery::{
    DeliveryConfig, DomainLimits, EventSink, EventsConfig, RcptState, RetrySchedule, TlsPolicy,
};
use petrel_outbound::{MtaSts, MtaStsConfig, Resolver, ResolverConfig, StaticRoute};
use petrel_testkit::dns::{a, mx, txt, DnsServer};
use petrel_testkit::policy_server::{PolicyServer, Reply};
use petrel_testkit::shard::{run_shard, ShardSetup};
use petrel_testkit::smtp_server::{Script, SmtpServer};
use petrel_testkit::tls::test_pki;

/// The bound on every wait of a scenario.
const TEST_DEADLINE: Duration = Duration::from_secs(20);
const DOMAIN: &str = "a.test";
const RCPT: &str = "bob@a.test";
/// The MX host the policies name.
const MX_NAME: &str = "mx1.a.test";
const POLICY_HOST: &str = "mta-sts.a.test";
const ENFORCE: &str = "version: STSv1\nmode: enforce\nmx: mx1.a.test\nmax_age: 3600\n";
const TESTING: &str = "version: STSv1\nmode: testing\nmx: mx1.a.test\nmax_age: 3600\n";
/// DNS query timeout of the resolvers, ms.
const QUERY_TIMEOUT_MS: u64 = 2_000;

/// One destination: DNS, the policy host and the MX host.
struct Destination {
    dns: DnsServer,
    /// The policy host, serving for the whole scenario.
    policy: PolicyServer,
    policy_ca_pem: String,
    mx: SmtpServer,
    /// The CA of the MX host's certificate, which delivery trusts.
    mx_ca_pem: String,
}

/// `a.test` with MX `mx_name` (on loopback), a policy of `policy` text, and an MX host whose
/// certificate is for `cert_name`.
fn destination(policy: &str, mx_name: &str, cert_name: &str) -> Destination {
    let policy_pki = test_pki(POLICY_HOST);
    let policy_server = PolicyServer::start(&policy_pki, Reply::policy(policy));
    let mx_pki = test_pki(cert_name);
    let mx_server = SmtpServer::start(Script {
        tls: Some(mx_pki.server_config.clone()),
        ..Script::default()
    });
    let dns = DnsServer::start(vec![
        mx(&format!("{DOMAIN}."), 60, 10, &format!("{mx_name}.")),
        a(&format!("{mx_name}."), 60, "127.0.0.1"),
        txt(&format!("_mta-sts.{DOMAIN}."), 60, "v=STSv1; id=one;"),
        a(&format!("{POLICY_HOST}."), 60, "127.0.0.1"),
    ]);
    Destination {
        dns,
        policy: policy_server,
        policy_ca_pem: policy_pki.ca_pem,
        mx: mx_server,
        mx_ca_pem: mx_pki.ca_pem,
    }
}

impl Destination {
    fn resolver_config(&self, static_routes: Vec<StaticRoute>) -> ResolverConfig {
        ResolverConfig {
            nameservers: vec![self.dns.addr],
            static_routes,
            smtp_port: self.mx.addr.port(),
            query_timeout_ms: QUERY_TIMEOUT_MS,
            ..ResolverConfig::default()
        }
    }

    fn mta_sts(&self, resolver: &ResolverConfig) -> MtaSts {
        MtaSts::start(MtaStsConfig {
            https_port: self.policy.port,
            extra_root_certs_pem: vec![self.policy_ca_pem.clone().into_bytes()],
            dns_cache_entries: 0,
            refresh_tick_ms: 0,
            ..MtaStsConfig::default().with_resolver(resolver)
        })
        .expect("MTA-STS service")
    }

    fn config(&self) -> DeliveryConfig {
        let mut cfg = DeliveryConfig {
            helo_name: "petrel.test".into(),
            retry: RetrySchedule {
                first_retry_delay_ms: 60_000,
                retry_delay_ms_max: 60_000,
                multiplier: 2,
                jitter_percent: 10,
                age_max_ms: 600_000,
            },
            default_limits: DomainLimits {
                tls: TlsPolicy::Opportunistic,
                ..DomainLimits::default()
            },
            extra_root_certs_pem: vec![self.mx_ca_pem.clone().into_bytes()],
            idle_timeout_ms: 200,
            tick_ms_max: 50,
            permit_retry_delay_ms: 50,
            ..DeliveryConfig::default()
        };
        cfg.client.connect_timeout_ms = 2_000;
        cfg.client.greeting_timeout_ms = 2_000;
        cfg.client.command_timeout_ms = 2_000;
        cfg.validate().expect("valid config");
        cfg
    }
}

/// What became of the one recipient: its state after the first attempt, and the `outcome` and
/// `bounce` of its events.
struct Seen {
    state: RcptState,
    events: Vec<(String, serde_json::Value)>,
    /// The TLS-RPT rows the shard counted (`petrel_delivery::tls_rpt`).
    tls_rpt: Vec<Row>,
}

/// Sends one message to [`RCPT`] through a shard with MTA-STS on (over `static_routes`, if
/// any) and reports what happened after its first attempt.
fn deliver_one(dest: &Destination, static_routes: Vec<StaticRoute>) -> Seen {
    deliver_one_with(dest, static_routes, dest.config())
}

/// [`deliver_one`] with a delivery configuration of the test's own.
fn deliver_one_with(
    dest: &Destination,
    static_routes: Vec<StaticRoute>,
    config: DeliveryConfig,
) -> Seen {
    let resolver_config = dest.resolver_config(static_routes);
    let sts = dest.mta_sts(&resolver_config);
    let resolver = Resolver::start(resolver_config).expect("resolver");
    let events_dir = tempfile_dir();
    let (events, writer) = EventSink::start(EventsConfig::new(&events_dir)).expect("events");
    let recorder = TlsRptRecorder::default();
    let setup = ShardSetup {
        events,
        mta_sts: Some(sts),
        tls_rpt: Some(recorder.clone()),
        ..ShardSetup::new(config, resolver)
    };
    let (outcome, _spool) = run_shard(setup, |h| async move {
        let id = h.enqueue("alice@src.test", &[RCPT]);
        h.await_outcome(id, 0, TEST_DEADLINE).await
    });
    writer.shutdown().expect("events flushed");
    let (state, attempts) = outcome.expect("an attempt within the deadline");
    assert_eq!(attempts, 1);
    let mut events = Vec::new();
    for entry in std::fs::read_dir(&events_dir).expect("events dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            if v["recipient"] == RCPT {
                let outcome = v["outcome"].as_str().unwrap_or("").to_string();
                events.push((outcome, v));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&events_dir);
    let (tls_rpt, overflow) = recorder.take().into_rows();
    assert_eq!(overflow, 0);
    Seen {
        state,
        events,
        tls_rpt,
    }
}

/// The one TLS-RPT row of a scenario: its policy type, MX host, successes and failures.
fn tls_rpt_row(seen: &Seen) -> (PolicyType, String, u64, Vec<(FailureType, u64)>) {
    assert_eq!(seen.tls_rpt.len(), 1, "one row: {:?}", seen.tls_rpt);
    let r = &seen.tls_rpt[0];
    assert_eq!(r.policy.domain, DOMAIN);
    let failures = r.failures().collect();
    (
        r.policy.policy_type,
        r.mx_host.clone(),
        r.successes,
        failures,
    )
}

/// A fresh directory for one scenario's events.
fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("petrel-mta-sts-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The deferred event's `bounce` object, and its remote reply or else our reason.
fn deferral(seen: &Seen) -> (serde_json::Value, String) {
    let by_outcome: HashMap<&str, &serde_json::Value> =
        seen.events.iter().map(|(o, v)| (o.as_str(), v)).collect();
    let v = by_outcome
        .get("deferred")
        .unwrap_or_else(|| panic!("a deferred event: {:?}", seen.events));
    let text = v["reply"].as_str().or(v["reason"].as_str()).unwrap_or("");
    (v["bounce"].clone(), text.to_string())
}

fn tls_required() -> serde_json::Value {
    serde_json::json!({"class": "soft", "category": "tls_required"})
}

#[test]
fn enforce_with_a_matching_mx_and_a_valid_certificate_delivers_over_tls() {
    let dest = destination(ENFORCE, MX_NAME, MX_NAME);
    let seen = deliver_one(&dest, Vec::new());
    assert_eq!(seen.state, RcptState::Delivered, "{:?}", seen.events);
    let received = dest.mx.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].tls, "delivered inside STARTTLS");
    let (kind, mx_host, successes, failures) = tls_rpt_row(&seen);
    assert_eq!((kind, mx_host.as_str()), (PolicyType::Sts, MX_NAME));
    assert_eq!((successes, failures), (1, Vec::new()), "a TLS-RPT success");
    assert!(seen.tls_rpt[0]
        .policy
        .strings
        .contains(&"mode: enforce".to_string()));
}

#[test]
fn enforce_with_a_certificate_for_another_name_defers_and_never_sends_in_plain_text() {
    let dest = destination(ENFORCE, MX_NAME, "other.test");
    let seen = deliver_one(&dest, Vec::new());
    assert_eq!(seen.state, RcptState::Pending, "deferred, not bounced");
    let (bounce, _) = deferral(&seen);
    assert_eq!(bounce, tls_required());
    assert!(dest.mx.received().is_empty(), "nothing sent");
    assert!(dest.mx.connections() >= 1, "the MX host was tried");
    let (kind, _, successes, failures) = tls_rpt_row(&seen);
    assert_eq!(kind, PolicyType::Sts);
    assert_eq!(successes, 0);
    assert_eq!(
        failures,
        [(FailureType::CertificateHostMismatch, 1)],
        "a TLS-RPT failure recorded"
    );
}

#[test]
fn enforce_with_no_mx_in_the_policy_defers_without_connecting() {
    let dest = destination(ENFORCE, "mx.elsewhere.test", "mx.elsewhere.test");
    let seen = deliver_one(&dest, Vec::new());
    assert_eq!(seen.state, RcptState::Pending, "deferred, not bounced");
    let (bounce, reason) = deferral(&seen);
    assert_eq!(bounce, tls_required());
    assert!(reason.contains("MTA-STS"), "{reason}");
    assert!(reason.contains("mx.elsewhere.test"), "{reason}");
    assert_eq!(
        dest.mx.connections(),
        0,
        "no host outside the policy is tried"
    );
    let (kind, mx_host, _, failures) = tls_rpt_row(&seen);
    assert_eq!(
        (kind, mx_host.as_str()),
        (PolicyType::Sts, "mx.elsewhere.test")
    );
    assert_eq!(failures, [(FailureType::ValidationFailure, 1)]);
}

#[test]
fn testing_mode_delivers_despite_a_mismatch() {
    // Neither the MX name nor the certificate's name fits the policy: delivered all the same,
    // with opportunistic TLS as without a policy.
    let dest = destination(TESTING, "mx.elsewhere.test", "other.test");
    let seen = deliver_one(&dest, Vec::new());
    assert_eq!(seen.state, RcptState::Delivered, "{:?}", seen.events);
    assert_eq!(dest.mx.received().len(), 1);
}

#[test]
fn a_static_route_is_not_subject_to_the_policy() {
    // The smart host is the operator's choice: an enforced policy naming other hosts does not
    // stop mail routed there.
    let dest = destination(ENFORCE, "mx.elsewhere.test", "other.test");
    let route = StaticRoute {
        domain: Some(DOMAIN.into()),
        target: dest.mx.addr,
        tls_name: None,
    };
    let seen = deliver_one(&dest, vec![route]);
    assert_eq!(seen.state, RcptState::Delivered, "{:?}", seen.events);
    assert_eq!(dest.mx.received().len(), 1);
    assert!(
        seen.tls_rpt.is_empty(),
        "not the domain's MX: no TLS-RPT row"
    );
}

/// A policy that cannot be had (here: not a valid policy file) leaves the session without one,
/// delivered with opportunistic TLS, and TLS-RPT counts the failure under an `sts` policy
/// (`sts-policy-invalid`) besides the connection under none found.
#[test]
fn an_invalid_policy_file_delivers_and_is_reported_as_sts_policy_invalid() {
    let dest = destination("version: STSv9\nmode: enforce\n", MX_NAME, MX_NAME);
    let seen = deliver_one(&dest, Vec::new());
    assert_eq!(seen.state, RcptState::Delivered, "{:?}", seen.events);
    let mut rows: Vec<_> = seen
        .tls_rpt
        .iter()
        .map(|r| {
            (
                r.policy.policy_type,
                r.mx_host.clone(),
                r.successes,
                r.failures().collect::<Vec<_>>(),
            )
        })
        .collect();
    rows.sort_by_key(|r| r.0 == PolicyType::NoPolicyFound);
    assert_eq!(
        rows,
        vec![
            (
                PolicyType::Sts,
                MX_NAME.to_string(),
                0,
                vec![(FailureType::StsPolicyInvalid, 1)]
            ),
            (
                PolicyType::NoPolicyFound,
                MX_NAME.to_string(),
                1,
                Vec::new()
            ),
        ]
    );
    assert!(seen.tls_rpt[0].policy.strings.is_empty() || seen.tls_rpt[1].policy.strings.is_empty());
}

/// With `smart_host_mta_sts`, an enforced policy follows the mail to the smart host: the hop
/// must be TLS with a certificate valid for the smart host's `tls_name` (the policy's MX names
/// are not matched: the smart host is the operator's choice), or the mail waits.
#[test]
fn a_smart_host_carries_the_enforced_policy_when_asked() {
    const SMART_HOST: &str = "relay.provider.test";
    let smart = |dest: &Destination| {
        vec![StaticRoute {
            domain: Some(DOMAIN.into()),
            target: dest.mx.addr,
            tls_name: Some(SMART_HOST.into()),
        }]
    };
    let config = |dest: &Destination| DeliveryConfig {
        smart_host_mta_sts: true,
        ..dest.config()
    };
    // A certificate for the smart host's name: delivered over TLS.
    let dest = destination(ENFORCE, "mx.elsewhere.test", SMART_HOST);
    let seen = deliver_one_with(&dest, smart(&dest), config(&dest));
    assert_eq!(seen.state, RcptState::Delivered, "{:?}", seen.events);
    assert_eq!(dest.mx.received().len(), 1);
    let delivered = &seen
        .events
        .iter()
        .find(|(o, _)| o == "delivered")
        .expect("delivered")
        .1;
    assert!(
        delivered["tls"]
            .as_str()
            .is_some_and(|t| t.starts_with("TLS")),
        "{delivered}"
    );

    // A certificate for another name: not sent, deferred, never in plain text.
    let dest = destination(ENFORCE, "mx.elsewhere.test", "impostor.test");
    let seen = deliver_one_with(&dest, smart(&dest), config(&dest));
    assert_eq!(seen.state, RcptState::Pending, "deferred, not bounced");
    assert!(dest.mx.received().is_empty(), "nothing crossed the hop");

    // The same impostor without `smart_host_mta_sts`: the policy stays at the MX, as before.
    let dest = destination(ENFORCE, "mx.elsewhere.test", "impostor.test");
    let seen = deliver_one(&dest, smart(&dest));
    assert_eq!(seen.state, RcptState::Delivered, "{:?}", seen.events);

    // A testing policy through the smart host: opportunistic TLS, delivered.
    let dest = destination(TESTING, "mx.elsewhere.test", "impostor.test");
    let seen = deliver_one_with(&dest, smart(&dest), config(&dest));
    assert_eq!(seen.state, RcptState::Delivered, "{:?}", seen.events);
}

/// Connections are shared between domains of one MX set (`session::adopt`), but never across
/// an enforced policy: the session of a domain under `enforce` carries no other domain, and a
/// domain under `enforce` never rides the connection of another.
#[test]
fn an_enforced_domain_shares_no_connection() {
    const OTHER_RCPT: &str = "carol@b.test";
    /// Long enough for a delivery to be followed by an offer to the idle session.
    const IDLE_TIMEOUT_MS: u64 = 1_500;
    /// Lets a session that has just delivered go idle before the next message comes.
    const SETTLE: Duration = Duration::from_millis(200);
    /// Lets an idle session end.
    const SESSION_END: Duration = Duration::from_millis(IDLE_TIMEOUT_MS + 700);
    let dest = destination(ENFORCE, MX_NAME, MX_NAME);
    // b.test has no policy and the same MX host as a.test.
    dest.dns
        .upsert(mx("b.test.", 60, 10, &format!("{MX_NAME}.")));
    let resolver_config = dest.resolver_config(Vec::new());
    let sts = dest.mta_sts(&resolver_config);
    let resolver = Resolver::start(resolver_config).expect("resolver");
    let mut config = dest.config();
    config.idle_timeout_ms = IDLE_TIMEOUT_MS;
    let setup = ShardSetup {
        mta_sts: Some(sts),
        ..ShardSetup::new(config, resolver)
    };
    let mx_server = &dest.mx;
    let (connections, _spool) = run_shard(setup, |h| async move {
        let mut seen = Vec::new();
        let send = |to: &'static str| {
            let h = h.clone();
            async move {
                let id = h.enqueue("alice@src.test", &[to]);
                let outcome = h.await_outcome(id, 0, TEST_DEADLINE).await;
                assert_eq!(outcome, Some((RcptState::Delivered, 1)), "{to}");
            }
        };
        // The enforced session carries no other domain: b.test (route known since its first
        // message) is offered to a.test's idle session and gets a session of its own.
        send(OTHER_RCPT).await;
        glommio::timer::sleep(SESSION_END).await;
        send(RCPT).await;
        glommio::timer::sleep(SETTLE).await;
        send(OTHER_RCPT).await;
        seen.push(mx_server.connections());
        // And a.test (policy cached) does not ride b.test's idle connection.
        glommio::timer::sleep(SESSION_END).await;
        send(OTHER_RCPT).await;
        glommio::timer::sleep(SETTLE).await;
        send(RCPT).await;
        seen.push(mx_server.connections());
        seen
    });
    assert_eq!(connections, [3, 5], "a connection per domain and session");
    let received = dest.mx.received();
    assert_eq!(received.len(), 5);
}
