//! DANE (RFC 7672) on a real shard, against real parts on loopback: a private BIND `named`
//! serves zone `dane.test.`, DNSSEC-signed at test time with `dnssec-keygen` and
//! `dnssec-signzone` (the kit's `named`), whose key is the resolver's only trust anchor; the
//! kit's SMTP server is every MX host, offering STARTTLS with a certificate from a throw-away
//! CA that delivery does not trust, so only DANE can authenticate it.
//!
//! Each scenario: one domain, one MX host, that host's TLSA RRset:
//! - a DANE-EE record matching the server's certificate: delivered, inside TLS;
//! - a DANE-EE record for another key: deferred `4.7.5` (`tls_required`), nothing sent;
//! - a record matching the certificate, but not the one signed (the RRSIG covers other data):
//!   bogus, deferred `4.7.5` without even connecting;
//! - an MX host in an unsigned child zone (delegated without DS) publishing a mismatching
//!   record: provably insecure, so DANE does not apply and opportunistic TLS delivers.

use std::time::Duration;

use petrel_delivery::{
    DeliveryConfig, DomainLimits, EventSink, EventsConfig, RcptState, RetrySchedule, TlsPolicy,
};
use petrel_outbound::dane::DaneConfig;
use petrel_outbound::{Resolver, ResolverConfig};
use petrel_testkit::named::{Forged, NamedServer};
use petrel_testkit::shard::{run_shard, ShardSetup};
use petrel_testkit::smtp_server::{Script, SmtpServer};
use petrel_testkit::tls::test_pki;
use sha2::{Digest, Sha256};

/// The bound on every wait of a scenario.
const TEST_DEADLINE: Duration = Duration::from_secs(20);
const ORIGIN: &str = "dane.test.";
const DOMAIN: &str = "a.dane.test";
const RCPT: &str = "bob@a.dane.test";
const MX_NAME: &str = "mx.dane.test";
/// DNS query timeout of the resolvers, ms.
const QUERY_TIMEOUT_MS: u64 = 2_000;

/// What the MX host's TLSA RRset holds.
enum Tlsa {
    /// `3 0 1` of the server's certificate.
    Matching,
    /// `3 1 1` of some other key.
    Mismatching,
    /// Signed over another key's digest, then replaced by the matching one: bogus.
    ForgedMatching,
    /// `3 1 1` of some other key, in an unsigned zone: insecure, ignored.
    UnsignedMismatching,
}

/// The unsigned child zone of [`Tlsa::UnsignedMismatching`].
const UNSIGNED_ZONE: &str = "plain.dane.test.";
/// The MX host in it.
const UNSIGNED_MX_NAME: &str = "mx.plain.dane.test";

/// One destination: the signed zone and the MX host.
struct Destination {
    named: NamedServer,
    mx: SmtpServer,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `a.dane.test` with MX `mx.dane.test` on loopback and the TLSA RRset `tlsa`; `None` without
/// `named` or the signing tools.
fn destination(tlsa: Tlsa) -> Option<Destination> {
    let pki = test_pki(MX_NAME);
    let mx = SmtpServer::start(Script {
        tls: Some(pki.server_config.clone()),
        ..Script::default()
    });
    let matching = format!("3 0 1 {}", hex(&Sha256::digest(pki.leaf_der.as_ref())));
    let other = format!("3 1 1 {}", hex(&Sha256::digest(b"another key")));
    if let Tlsa::UnsignedMismatching = tlsa {
        let records = vec![
            format!("{DOMAIN}. IN MX 10 {UNSIGNED_MX_NAME}."),
            format!("{UNSIGNED_ZONE} IN NS ns.{UNSIGNED_ZONE}"),
            format!("ns.{UNSIGNED_ZONE} IN A 127.0.0.1"),
        ];
        let child = vec![
            format!("{UNSIGNED_MX_NAME}. IN A 127.0.0.1"),
            format!("_25._tcp.{UNSIGNED_MX_NAME}. IN TLSA {other}"),
        ];
        let unsigned = [(UNSIGNED_ZONE.to_string(), child)];
        let named = NamedServer::start_with_unsigned(ORIGIN, &records, &[], &unsigned)?;
        return Some(Destination { named, mx });
    }
    let owner = format!("_25._tcp.{MX_NAME}.");
    let signed = match tlsa {
        Tlsa::Matching => &matching,
        _ => &other,
    };
    let records = vec![
        format!("{DOMAIN}. IN MX 10 {MX_NAME}."),
        format!("{MX_NAME}. IN A 127.0.0.1"),
        format!("{owner} IN TLSA {signed}"),
    ];
    let forged = match tlsa {
        Tlsa::ForgedMatching => vec![Forged {
            owner,
            rtype: "TLSA".into(),
            data: vec![matching.clone()],
        }],
        _ => Vec::new(),
    };
    let named = NamedServer::start(ORIGIN, &records, &forged)?;
    Some(Destination { named, mx })
}

impl Destination {
    fn resolver(&self) -> Resolver {
        Resolver::start(ResolverConfig {
            nameservers: vec![self.named.addr],
            smtp_port: self.mx.addr.port(),
            query_timeout_ms: QUERY_TIMEOUT_MS,
            dane: Some(DaneConfig {
                trust_anchor_file: Some(self.named.trust_anchor.clone()),
                ..DaneConfig::default()
            }),
            ..ResolverConfig::default()
        })
        .expect("resolver")
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

/// The recipient's state after its first attempt, and its `deferred` event, if any.
fn deliver_one(dest: &Destination) -> (RcptState, Option<serde_json::Value>) {
    let events_dir = std::env::temp_dir().join(format!("petrel-dane-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&events_dir);
    let (events, writer) = EventSink::start(EventsConfig::new(&events_dir)).expect("events");
    let setup = ShardSetup {
        events,
        ..ShardSetup::new(dest.config(), dest.resolver())
    };
    let (outcome, _spool) = run_shard(setup, |h| async move {
        let id = h.enqueue("alice@src.test", &[RCPT]);
        h.await_outcome(id, 0, TEST_DEADLINE).await
    });
    writer.shutdown().expect("events flushed");
    let (state, attempts) = outcome.expect("an attempt within the deadline");
    assert_eq!(attempts, 1);
    let mut deferred = None;
    for entry in std::fs::read_dir(&events_dir).expect("events dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            if v["recipient"] == RCPT && v["outcome"] == "deferred" {
                deferred = Some(v);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&events_dir);
    (state, deferred)
}

/// Asserts a DANE deferral: soft, `tls_required`, our reason naming `result_type`.
fn assert_dane_deferral(deferred: Option<serde_json::Value>, result_type: &str) {
    let v = deferred.expect("a deferred event");
    assert_eq!(
        v["bounce"],
        serde_json::json!({"class": "soft", "category": "tls_required"}),
        "{v}"
    );
    // The 4.7.5 status goes to DSNs (`shard/dane.rs` unit tests); the event names the cause.
    let text = v["reason"].as_str().or(v["reply"].as_str()).unwrap_or("");
    assert!(text.contains(result_type), "{v}");
}

#[test]
fn a_matching_dane_ee_record_delivers_over_tls() {
    let Some(dest) = destination(Tlsa::Matching) else {
        petrel_testkit::peer_missing("named or dnssec-signzone missing");
        return;
    };
    let (state, deferred) = deliver_one(&dest);
    assert_eq!(state, RcptState::Delivered, "{deferred:?}");
    let received = dest.mx.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].tls, "delivered inside STARTTLS");
}

#[test]
fn a_mismatching_record_defers_with_4_7_5_and_sends_nothing() {
    let Some(dest) = destination(Tlsa::Mismatching) else {
        petrel_testkit::peer_missing("named or dnssec-signzone missing");
        return;
    };
    let (state, deferred) = deliver_one(&dest);
    assert_eq!(state, RcptState::Pending, "deferred, not bounced");
    assert_dane_deferral(deferred, "tlsa-invalid");
    assert!(dest.mx.received().is_empty(), "nothing sent, in TLS or not");
    assert_eq!(
        dest.mx.connections(),
        1,
        "one handshake, no plain-text retry"
    );
}

#[test]
fn a_bogus_signature_defers_without_connecting() {
    let Some(dest) = destination(Tlsa::ForgedMatching) else {
        petrel_testkit::peer_missing("named or dnssec-signzone missing");
        return;
    };
    let (state, deferred) = deliver_one(&dest);
    assert_eq!(state, RcptState::Pending, "deferred, not bounced");
    assert_dane_deferral(deferred, "dnssec-invalid");
    assert_eq!(
        dest.mx.connections(),
        0,
        "a host with a bogus TLSA answer is not tried"
    );
}

#[test]
fn an_unsigned_zone_falls_back_to_opportunistic_tls() {
    let Some(dest) = destination(Tlsa::UnsignedMismatching) else {
        petrel_testkit::peer_missing("named or dnssec-signzone missing");
        return;
    };
    let (state, deferred) = deliver_one(&dest);
    assert_eq!(state, RcptState::Delivered, "{deferred:?}");
    let received = dest.mx.received();
    assert_eq!(received.len(), 1);
    assert!(
        received[0].tls,
        "opportunistic STARTTLS, the unsigned TLSA record ignored"
    );
}
