//! The `bounce` object of delivery events, end to end on a real shard: remote replies with real
//! provider texts from a scripted SMTP server, a refused connection, and a domain the (kit's
//! real) DNS server says does not exist, each classified by `petrel-bounce`.

use std::collections::HashMap;
use std::time::Duration;

use petrel_delivery::{
    DeliveryConfig, DomainLimits, EventSink, EventsConfig, RetrySchedule, TlsPolicy,
};
use petrel_outbound::{Resolver, ResolverConfig, StaticRoute};
use petrel_testkit::dns::DnsServer;
use petrel_testkit::shard::{run_shard, ShardSetup};
use petrel_testkit::smtp_server::{Script, SmtpServer};

/// The bound on every wait of the scenario.
const TEST_DEADLINE: Duration = Duration::from_secs(20);
/// Messages are given up this long after arrival: long enough for a few retries.
const AGE_MAX_MS: u64 = 1_500;
/// Gmail's "does not exist" reply, as sent.
const GMAIL_NO_SUCH_USER: &str = "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces.";
/// Gmail's "over quota" reply, as sent.
const GMAIL_OVER_QUOTA: &str =
    "452 4.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp";

fn config() -> DeliveryConfig {
    let mut cfg = DeliveryConfig {
        helo_name: "petrel.test".into(),
        retry: RetrySchedule {
            first_retry_delay_ms: 200,
            retry_delay_ms_max: 400,
            multiplier: 2,
            jitter_percent: 10,
            age_max_ms: AGE_MAX_MS,
        },
        default_limits: DomainLimits {
            tls: TlsPolicy::Disabled,
            ..DomainLimits::default()
        },
        idle_timeout_ms: 200,
        tick_ms_max: 50,
        permit_retry_delay_ms: 50,
        ..DeliveryConfig::default()
    };
    cfg.client.connect_timeout_ms = 2_000;
    cfg.client.command_timeout_ms = 2_000;
    cfg.validate().expect("valid config");
    cfg
}

/// A loopback port nobody listens on (bound, then released).
fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address")
}

#[test]
fn deferred_bounced_and_expired_events_carry_the_classification() {
    let dest = SmtpServer::start(
        Script::by_local_part()
            .rcpt_reply("gone@dest.example", GMAIL_NO_SUCH_USER)
            .rcpt_reply("full@dest.example", GMAIL_OVER_QUOTA),
    );
    // `test.` is the kit server's zone: `nowhere.test` gets NXDOMAIN.
    let dns = DnsServer::start(Vec::new());
    let resolver = Resolver::start(ResolverConfig {
        nameservers: vec![dns.addr],
        static_routes: vec![
            StaticRoute {
                domain: Some("dest.example".into()),
                target: dest.addr,
                tls_name: None,
            },
            StaticRoute {
                domain: Some("closed.example".into()),
                target: closed_port(),
                tls_name: None,
            },
        ],
        query_timeout_ms: 2_000,
        ..ResolverConfig::default()
    })
    .expect("resolver");
    let events_dir =
        std::env::temp_dir().join(format!("petrel-bounce-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&events_dir);
    let (events, writer) = EventSink::start(EventsConfig::new(&events_dir)).expect("events");
    let setup = ShardSetup {
        events,
        ..ShardSetup::new(config(), resolver)
    };
    let rcpts = [
        "gone@dest.example",
        "perm1@dest.example",
        "full@dest.example",
        "someone@closed.example",
        "someone@nowhere.test",
        "ok@dest.example",
    ];
    let (all_final, _spool) = run_shard(setup, |h| async move {
        // The null sender: no DSN to route.
        let ids: Vec<u64> = rcpts.iter().map(|r| h.enqueue("", &[r])).collect();
        h.await_spool(TEST_DEADLINE, |s| {
            let removed = s.removed();
            ids.iter().all(|id| removed.contains(id))
        })
        .await
    });
    writer.shutdown().expect("events flushed");
    assert!(all_final, "every message final in time");

    // recipient -> outcome -> bounce objects seen
    let mut seen: HashMap<(String, String), Vec<serde_json::Value>> = HashMap::new();
    for entry in std::fs::read_dir(&events_dir).expect("events dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            let key = (
                v["recipient"].as_str().unwrap_or("").to_string(),
                v["outcome"].as_str().unwrap_or("").to_string(),
            );
            seen.entry(key).or_default().push(v["bounce"].clone());
        }
    }
    let _ = std::fs::remove_dir_all(&events_dir);
    let bounce =
        |class: &str, category: &str| serde_json::json!({"class": class, "category": category});
    let only = |rcpt: &str, outcome: &str| -> Vec<serde_json::Value> {
        seen.get(&(rcpt.to_string(), outcome.to_string()))
            .cloned()
            .unwrap_or_default()
    };

    assert_eq!(
        only("gone@dest.example", "bounced"),
        [bounce("hard", "invalid_recipient")],
        "{seen:?}"
    );
    assert_eq!(
        only("perm1@dest.example", "bounced"),
        [bounce("hard", "invalid_recipient")]
    );
    // Over quota: deferred (soft) until too old, then expired with the last attempt's verdict.
    let full = only("full@dest.example", "deferred");
    assert!(!full.is_empty(), "{seen:?}");
    assert!(
        full.iter().all(|b| *b == bounce("soft", "mailbox_full")),
        "{full:?}"
    );
    assert_eq!(
        only("full@dest.example", "expired"),
        [bounce("soft", "mailbox_full")]
    );
    // A refused connection: retried, transient and soft.
    let refused = only("someone@closed.example", "deferred");
    assert!(!refused.is_empty(), "{seen:?}");
    assert!(
        refused.iter().all(|b| *b == bounce("soft", "transient")),
        "{refused:?}"
    );
    assert_eq!(
        only("someone@closed.example", "expired"),
        [bounce("soft", "transient")]
    );
    // NXDOMAIN from a real DNS server: bounced at once, bad_domain and hard.
    assert_eq!(
        only("someone@nowhere.test", "bounced"),
        [bounce("hard", "bad_domain")],
        "{seen:?}"
    );
    // A delivery carries none.
    assert_eq!(
        only("ok@dest.example", "delivered"),
        [serde_json::Value::Null]
    );
}
