//! Delivery by site (issue 15), scenario by scenario: a real shard on glommio, the real SMTP
//! client, real SMTP sinks on loopback, a real DNS server on loopback for MX sets, and the test
//! kit's in-memory spool. Each scenario says what it sets up and what the sink must see.

use std::sync::Arc;
use std::time::{Duration, Instant};

use petrel_delivery::egress::{
    Day, Egress, EgressSpec, MemberSpec, PoolSpec, SourceSpec, TenantDelivery,
    TenantDeliverySource, WarmupSpec,
};
use petrel_delivery::shaping::Shaping;
use petrel_delivery::{DeliveryConfig, DomainLimits, RcptState, RetrySchedule, TlsPolicy};
use petrel_outbound::{Resolver, ResolverConfig};
use petrel_testkit::dns::{a, mx, DnsServer};
use petrel_testkit::shard::{routes, run_shard, ShardSetup};
use petrel_testkit::smtp_server::{AddrMatch, RcptAction, RcptRule, Script, SmtpServer};

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

/// A reply that says "slow down" (an operator's throttle rule: `421` and its text) suspends
/// the site for the rule's time: the mail queued meanwhile waits, no attempt counted, and
/// goes out once the time is up, the deferred message with it.
#[test]
fn a_slow_down_reply_suspends_the_site_and_it_recovers() {
    const SUSPEND_SECS: u64 = 3;
    let dest = SmtpServer::start(Script {
        rcpt_rules: vec![RcptRule {
            address: AddrMatch::Exact("first@dest.example".into()),
            action: RcptAction::Reply("421 4.7.0 Slow down: too many messages from you".into()),
            first_only: true,
        }],
        ..Script::default()
    });
    let other = SmtpServer::start(Script::by_local_part());
    let mut cfg = config();
    let rules = format!(
        "[[throttle]]\nname = \"test-slow-down\"\ncode = 421\nregex = \"slow down\"\n\
         action = \"suspend\"\nduration_secs = {SUSPEND_SECS}\n"
    );
    cfg.shaping = Arc::new(Shaping::parse_operator("test-shaping.toml", &rules).expect("rules"));
    let ((deferred, waited, removed), spool) = run_shard(
        ShardSetup::new(cfg, routes(dest.addr, other.addr)),
        |h| async move {
            let first = h.enqueue("alice@src.example", &["first@dest.example"]);
            // Its first attempt is recorded once the reply has been seen (and the rule applied).
            let deferred = h.await_outcome(first, 0, DEADLINE).await;
            let at = Instant::now();
            for i in 0..5 {
                let to = format!("r{i}@dest.example");
                h.enqueue("alice@src.example", &[to.as_str()]);
            }
            let removed = h.await_removed(6, DEADLINE).await;
            (deferred, at.elapsed(), removed)
        },
    );
    assert_eq!(
        deferred,
        Some((RcptState::Pending, 1)),
        "the 421 deferred it"
    );
    assert_eq!(removed, 6, "the site recovered: all delivered");
    assert!(
        waited >= Duration::from_millis(SUSPEND_SECS * 1_000 / 2),
        "delivered {waited:?} after the suspension began"
    );
    assert_eq!(dest.received().len(), 6);
    // The five queued during the suspension went out on their first attempt.
    let attempts: Vec<u32> = (2..=6).map(|id| spool.finals()[&(id, 0)].1).collect();
    assert_eq!(attempts, [1; 5], "no attempt spent on a suspended site");
}

/// A site whose MX hosts belong to a provider of the shaping rules takes the provider's
/// limits: here at most one connection engine-wide (the shard alone would open four) and two
/// transactions per connection, so fifty domains on its MX set go out over a line of short
/// connections, one at a time.
#[test]
fn a_providers_limits_hold_at_its_site() {
    const DOMAINS: usize = 50;
    let sink = SmtpServer::start(Script::by_local_part_chunking());
    let (_dns, resolver) = one_mx_set(DOMAINS, sink.addr.port());
    let mut cfg = config();
    cfg.next_hop_sessions_max = 4;
    let rules = "[provider.testmail]\nmx = [\"*.site.test\"]\nconnections_max = 1\n\
                 messages_per_connection_max = 2\n";
    cfg.shaping = Arc::new(Shaping::parse_operator("test-shaping.toml", rules).expect("rules"));
    let (removed, _) = run_shard(ShardSetup::new(cfg, resolver), |h| async move {
        for d in 0..DOMAINS {
            let to = format!("r@d{d}.test");
            h.enqueue("alice@src.example", &[to.as_str()]);
        }
        h.await_removed(DOMAINS, DEADLINE).await
    });
    assert_eq!(removed, DOMAINS, "all delivered");
    assert_eq!(sink.peak(), 1, "the provider's connection limit");
    assert!(
        sink.connections() >= DOMAINS / 2,
        "{} connections for {DOMAINS} messages at two per connection",
        sink.connections()
    );
}

/// The tenants' settings as the control plane pushes them, fixed for a scenario.
#[derive(Debug)]
struct Weights(Vec<(&'static str, u32)>);

impl TenantDeliverySource for Weights {
    fn tenant_delivery(&self, tenant_id: &str) -> Option<TenantDelivery> {
        let (_, w) = self.0.iter().find(|(t, _)| *t == tenant_id)?;
        Some(TenantDelivery {
            egress_pool: None,
            delivery_weight: *w,
        })
    }
}

/// Two tenants with backlogs at one slow site, weighted 3 and 1: while both have mail, the
/// site's one connection carries three of the first tenant's messages for each of the other's.
#[test]
fn tenant_weights_share_a_site_by_weight() {
    let dest = SmtpServer::start(Script::by_local_part());
    let other = SmtpServer::start(Script::by_local_part());
    let mut cfg = config();
    let mut slow = cfg.default_limits.clone();
    slow.connections_max = 1;
    cfg.domain_limits.insert("dest.example".into(), slow);
    cfg.tenant_delivery = Some(Arc::new(Weights(vec![("heavy", 3), ("light", 1)])));
    let (removed, _) = run_shard(
        ShardSetup::new(cfg, routes(dest.addr, other.addr)),
        |h| async move {
            for i in 0..40 {
                let to = format!("l{i}@dest.example");
                h.enqueue_for("light", "a@light.example", &[to.as_str()]);
                let to = format!("h{i}@dest.example");
                h.enqueue_for("heavy", "a@heavy.example", &[to.as_str()]);
            }
            h.await_removed(80, DEADLINE).await
        },
    );
    assert_eq!(removed, 80, "all delivered");
    let heavy_of_first_40 = dest.received()[..40]
        .iter()
        .filter(|t| t.rcpts.iter().any(|r| r.starts_with('h')))
        .count();
    assert!(
        (27..=33).contains(&heavy_of_first_40),
        "{heavy_of_first_40} of the first 40 were the heavy tenant's (3:1 is 30)"
    );
}

/// Two sources, 127.0.0.2 and 127.0.0.3 with their own EHLO names, in one pool weighted 3:1,
/// and one source warming up on 127.0.0.4 in a pool of its own.
fn egress() -> Egress {
    Egress::build(&egress_spec()).expect("egress")
}

fn egress_spec() -> EgressSpec {
    let source = |name: &str, addr: &str, warmup: Option<WarmupSpec>| SourceSpec {
        name: name.into(),
        local_addr: Some(addr.parse().expect("address")),
        ehlo_name: Some(format!("{name}.petrel.test")),
        warmup,
    };
    let member = |source: &str, weight: u32| MemberSpec {
        source: source.into(),
        weight,
    };
    let today = Day::from_unix_ms(now_unix_ms());
    EgressSpec {
        sources: vec![
            source("s2", "127.0.0.2", None),
            source("s3", "127.0.0.3", None),
            source(
                "fresh",
                "127.0.0.4",
                Some(WarmupSpec {
                    start_date: today.to_string(),
                    days: 30,
                    first_day_max: WARMUP_FIRST_DAY,
                    full_day_max: Some(100_000),
                }),
            ),
        ],
        pools: vec![
            PoolSpec {
                name: "shared".into(),
                sources: vec![member("s2", 3), member("s3", 1)],
            },
            PoolSpec {
                name: "new-ip".into(),
                sources: vec![member("fresh", 1)],
            },
        ],
        default_pool: Some("shared".into()),
    }
}

/// The warming-up source's first day: this many messages.
const WARMUP_FIRST_DAY: u64 = 5;

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A tenant's pool decides where its mail leaves from: the pool's sources by weight, each
/// bound to its own address and giving its own EHLO name, as the sink sees them.
#[test]
fn a_pools_sources_are_used_by_weight_and_show_up_at_the_sink() {
    let dest = SmtpServer::start(Script::by_local_part());
    let other = SmtpServer::start(Script::by_local_part());
    let mut cfg = config();
    cfg.egress = Arc::new(egress());
    let (removed, _) = run_shard(
        ShardSetup::new(cfg, routes(dest.addr, other.addr)),
        |h| async move {
            for i in 0..40 {
                let to = format!("r{i}@dest.example");
                h.enqueue_for("tenant-a", "a@a.example", &[to.as_str()]);
            }
            h.await_removed(40, DEADLINE).await
        },
    );
    assert_eq!(removed, 40, "all delivered");
    let by_peer = dest.transactions_by_peer();
    let at = |ip: &str| by_peer.get(&ip.parse().unwrap()).copied().unwrap_or(0);
    assert_eq!((at("127.0.0.2"), at("127.0.0.3")), (30, 10), "{by_peer:?}");
    for t in dest.received() {
        let peer = t.peer.expect("peer recorded").ip().to_string();
        let expected = match peer.as_str() {
            "127.0.0.2" => "s2.petrel.test",
            "127.0.0.3" => "s3.petrel.test",
            other => panic!("mail from {other}"),
        };
        assert_eq!(t.helo, expected);
    }
}

/// A source warming up sends its day's cap and no more: the rest of its tenant's mail waits
/// for tomorrow in the queue, without an attempt.
#[test]
fn a_warm_up_cap_holds() {
    let dest = SmtpServer::start(Script::by_local_part());
    let other = SmtpServer::start(Script::by_local_part());
    let mut cfg = config();
    cfg.egress = Arc::new(egress());
    cfg.tenant_delivery = Some(Arc::new(Pools(vec![("newcomer", "new-ip")])));
    let (removed, spool) = run_shard(
        ShardSetup::new(cfg, routes(dest.addr, other.addr)),
        |h| async move {
            for i in 0..12 {
                let to = format!("r{i}@dest.example");
                h.enqueue_for("newcomer", "a@new.example", &[to.as_str()]);
            }
            h.await_removed(WARMUP_FIRST_DAY as usize, DEADLINE).await;
            // Time for more to go out, were the cap not holding.
            glommio::timer::sleep(Duration::from_millis(1_500)).await;
            h.spool().removed_count()
        },
    );
    assert_eq!(
        removed, WARMUP_FIRST_DAY as usize,
        "the cap's worth delivered"
    );
    assert_eq!(dest.received().len(), WARMUP_FIRST_DAY as usize);
    assert!(dest
        .received()
        .iter()
        .all(|t| t.peer.is_some_and(|p| p.ip().to_string() == "127.0.0.4")));
    let waiting = (1..=12u64)
        .filter(|id| spool.outcome(*id, 0).is_none())
        .count();
    assert_eq!(
        waiting,
        12 - WARMUP_FIRST_DAY as usize,
        "the rest wait unattempted"
    );
}

/// Tenants mapped to pools, as the control plane pushes them.
#[derive(Debug)]
struct Pools(Vec<(&'static str, &'static str)>);

impl TenantDeliverySource for Pools {
    fn tenant_delivery(&self, tenant_id: &str) -> Option<TenantDelivery> {
        let (_, pool) = self.0.iter().find(|(t, _)| *t == tenant_id)?;
        Some(TenantDelivery {
            egress_pool: Some(pool.to_string()),
            delivery_weight: 1,
        })
    }
}

/// A pool of a source warming up and an established one: once the new source has sent its
/// day's cap, the rest of the tenant's mail goes out from the established source instead of
/// waiting for tomorrow.
#[test]
fn a_capped_sources_mail_moves_to_another_source_of_the_pool() {
    let dest = SmtpServer::start(Script::by_local_part());
    let other = SmtpServer::start(Script::by_local_part());
    let mut cfg = config();
    let mut spec = egress_spec();
    spec.pools.push(PoolSpec {
        name: "mixed".into(),
        sources: vec![
            MemberSpec {
                source: "fresh".into(),
                weight: 1,
            },
            MemberSpec {
                source: "s3".into(),
                weight: 1,
            },
        ],
    });
    cfg.egress = Arc::new(Egress::build(&spec).expect("egress"));
    cfg.tenant_delivery = Some(Arc::new(Pools(vec![("mixer", "mixed")])));
    let (removed, _) = run_shard(
        ShardSetup::new(cfg, routes(dest.addr, other.addr)),
        |h| async move {
            for i in 0..30 {
                let to = format!("r{i}@dest.example");
                h.enqueue_for("mixer", "a@mix.example", &[to.as_str()]);
            }
            h.await_removed(30, DEADLINE).await
        },
    );
    assert_eq!(removed, 30, "all delivered today");
    let by_peer = dest.transactions_by_peer();
    let at = |ip: &str| by_peer.get(&ip.parse().unwrap()).copied().unwrap_or(0);
    assert_eq!(at("127.0.0.4") as u64, WARMUP_FIRST_DAY, "{by_peer:?}");
    assert_eq!(at("127.0.0.3") as u64, 30 - WARMUP_FIRST_DAY, "{by_peer:?}");
}

/// Turns at a site go by tenant: a tenant whose backlog spans sixty domains behind one smart
/// host does not get sixty turns for each one of a tenant sending to a single domain there.
#[test]
fn a_tenant_with_many_domains_gets_a_tenants_share_not_a_share_per_domain() {
    let dest = SmtpServer::start(Script::by_local_part());
    let relay = SmtpServer::start(Script::by_local_part());
    let mut cfg = config();
    cfg.next_hop_sessions_max = 1;
    let (removed, _) = run_shard(
        ShardSetup::new(cfg, routes(dest.addr, relay.addr)),
        |h| async move {
            for d in 0..60 {
                let to = format!("a@wide{d}.example");
                h.enqueue_for("wide", "news@wide.example", &[to.as_str()]);
            }
            for i in 0..10 {
                let to = format!("b{i}@narrow.example");
                h.enqueue_for("narrow", "news@narrow.example", &[to.as_str()]);
            }
            h.await_removed(70, DEADLINE).await
        },
    );
    assert_eq!(removed, 70, "all delivered");
    assert_eq!(relay.peak(), 1, "one connection to the smart host");
    let last_narrow = relay
        .received()
        .iter()
        .rposition(|t| t.rcpts.iter().any(|r| r.ends_with("@narrow.example")))
        .expect("the narrow tenant's mail arrived");
    assert!(
        last_narrow < 30,
        "the narrow tenant's last message was delivery {last_narrow} of 70"
    );
}

/// A lane that never drains is still routed again every `route_recheck_ms` (here 20 ms, so
/// many times over this backlog): it leaves its rotation for the driver to re-route and comes
/// back, and nothing is lost or stalled on the way.
#[test]
fn a_lane_that_never_drains_is_routed_again_and_loses_nothing() {
    const MESSAGES: usize = 150;
    let dest = SmtpServer::start(Script::by_local_part());
    let other = SmtpServer::start(Script::by_local_part());
    let mut cfg = config();
    cfg.route_recheck_ms = 20;
    let mut slow = cfg.default_limits.clone();
    slow.connections_max = 1;
    cfg.domain_limits.insert("dest.example".into(), slow);
    let (removed, _) = run_shard(
        ShardSetup::new(cfg, routes(dest.addr, other.addr)),
        |h| async move {
            for i in 0..MESSAGES {
                let to = format!("r{i}@dest.example");
                h.enqueue("alice@src.example", &[to.as_str()]);
            }
            h.await_removed(MESSAGES, DEADLINE).await
        },
    );
    assert_eq!(removed, MESSAGES, "all delivered");
    assert_eq!(dest.received().len(), MESSAGES, "each once");
    assert_eq!(dest.peak(), 1);
}
