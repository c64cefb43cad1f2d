//! Delivery by site (issue 15), scenario by scenario: a real shard on glommio, the real SMTP
//! client, real SMTP sinks on loopback, a real DNS server on loopback for MX sets, and the test
//! kit's in-memory spool. Each scenario says what it sets up and what the sink must see.

use std::time::Duration;

use petrel_delivery::{DeliveryConfig, DomainLimits, RetrySchedule, TlsPolicy};
use petrel_outbound::{Resolver, ResolverConfig};
use petrel_testkit::dns::{a, mx, DnsServer};
use petrel_testkit::shard::{routes, run_shard, ShardSetup};
use petrel_testkit::smtp_server::{Script, SmtpServer};

/// The bound on every wait of a scenario.
const DEADLINE: Duration = Duration::from_secs(30);

/// A delivery config for scenarios: quick retries, connections that last, plain text.
fn config() -> DeliveryConfig {
    let mut cfg = DeliveryConfig {
        helo_name: "petrel.test".into(),
        retry: RetrySchedule {
            first_retry_delay_ms: 200,
            retry_delay_ms_max: 400,
            multiplier: 2,
            jitter_percent: 10,
            age_max_ms: 60_000,
        },
        default_limits: DomainLimits {
            connections_max: 4,
            messages_per_connection_max: 1_000,
            messages_per_second_max: None,
            recipients_per_transaction_max: 10,
            tls: TlsPolicy::Disabled,
        },
        idle_timeout_ms: 500,
        tick_ms_max: 50,
        permit_retry_delay_ms: 50,
        ..DeliveryConfig::default()
    };
    cfg.client.connect_timeout_ms = 2_000;
    cfg.client.command_timeout_ms = 5_000;
    cfg.client.data_done_timeout_ms = 5_000;
    cfg.validate().expect("valid config");
    cfg
}

/// `n` domains whose MX is one host, `mx.site.test`, answered by a DNS server on loopback;
/// the resolver connects to `port` on it.
fn one_mx_set(n: usize, port: u16) -> (DnsServer, Resolver) {
    let mut records = vec![a("mx.site.test", 300, "127.0.0.1")];
    records.extend((0..n).map(|i| mx(&format!("d{i}.test"), 300, 10, "mx.site.test")));
    let dns = DnsServer::start(records);
    let resolver = Resolver::start(ResolverConfig {
        nameservers: vec![dns.addr],
        smtp_port: port,
        ..ResolverConfig::default()
    })
    .expect("resolver");
    (dns, resolver)
}

/// A site of a thousand domains on one MX set: the shard keeps to the site's connection cap
/// (not one connection per domain), and the domains take turns: none waits for the others to
/// drain.
#[test]
fn a_thousand_domains_on_one_mx_set_share_the_site_cap_and_drain_fairly() {
    const DOMAINS: usize = 1_000;
    const PER_DOMAIN: usize = 3;
    let sink = SmtpServer::start(Script::by_local_part_chunking());
    let (_dns, resolver) = one_mx_set(DOMAINS, sink.addr.port());
    let mut cfg = config();
    cfg.next_hop_sessions_max = 4;
    let (removed, _) = run_shard(ShardSetup::new(cfg, resolver), |h| async move {
        // Round by round, so every domain has mail from the start.
        for round in 0..PER_DOMAIN {
            for d in 0..DOMAINS {
                let to = format!("r{round}@d{d}.test");
                h.enqueue("alice@src.example", &[to.as_str()]);
            }
        }
        h.await_removed(DOMAINS * PER_DOMAIN, DEADLINE).await
    });
    assert_eq!(removed, DOMAINS * PER_DOMAIN, "all delivered");
    assert!(sink.peak() <= 4, "peak {} connections", sink.peak());
    assert!(
        sink.mails_per_burst_max() >= 2,
        "writes carried several domains"
    );
    // Fair: the domains take turns, so every domain's first message is in well before the
    // backlog is done (serving domains one after the other would put the last one's first
    // message at the very end). Domains join as they are routed, so not in strict rounds.
    let received = sink.received();
    let last_first = received
        .iter()
        .rposition(|t| t.rcpts.iter().any(|r| r.starts_with("r0@")))
        .expect("first round arrived");
    assert!(
        last_first < received.len() * 2 / 3,
        "the last domain's first message was delivery {last_first} of {}",
        received.len()
    );
}

/// Two tenants send to one slow site (one connection, one transaction per write): tenant A
/// has a backlog of 60 messages queued first, tenant B five. B's mail takes turns with A's
/// instead of waiting behind the backlog.
#[test]
fn two_tenants_at_one_slow_site_share_it() {
    let dest = SmtpServer::start(Script::by_local_part());
    let other = SmtpServer::start(Script::by_local_part());
    let mut cfg = config();
    let mut slow = cfg.default_limits.clone();
    slow.connections_max = 1;
    cfg.domain_limits.insert("dest.example".into(), slow);
    let (removed, _) = run_shard(
        ShardSetup::new(cfg, routes(dest.addr, other.addr)),
        |h| async move {
            for i in 0..60 {
                let to = format!("a{i}@dest.example");
                h.enqueue_for("tenant-a", "news@a.example", &[to.as_str()]);
            }
            for i in 0..5 {
                let to = format!("b{i}@dest.example");
                h.enqueue_for("tenant-b", "billing@b.example", &[to.as_str()]);
            }
            h.await_removed(65, DEADLINE).await
        },
    );
    assert_eq!(removed, 65, "all delivered");
    assert_eq!(dest.peak(), 1, "one connection to the slow site");
    let order: Vec<bool> = dest
        .received()
        .iter()
        .map(|t| t.rcpts.iter().any(|r| r.starts_with("b")))
        .collect();
    let last_b = order.iter().rposition(|b| *b).expect("tenant B arrived");
    assert!(
        last_b < 20,
        "tenant B's last message came after {last_b} deliveries: {order:?}"
    );
}
