//! The resolver against a real DNS server on loopback (hickory-server over UDP and TCP).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::rr::rdata::MX;
use hickory_proto::rr::{Name, RData};
use petrel_outbound::{ResolveError, Resolver, ResolverConfig, StaticRoute};
use petrel_testkit::dns::{a, mx, record, DnsServer};

const PORT: u16 = 2525;

fn zone() -> DnsServer {
    DnsServer::start(vec![
        mx("mx.test.", 300, 20, "mx2.mx.test."),
        mx("mx.test.", 300, 10, "mx1.mx.test."),
        a("mx1.mx.test.", 300, "127.0.0.1"),
        a("mx1.mx.test.", 300, "::1"),
        a("mx2.mx.test.", 300, "127.0.0.2"),
        record("null.test.", 300, RData::MX(MX::new(0, Name::root()))),
        a("implicit.test.", 300, "127.0.0.3"),
        mx("noaddr.test.", 300, 10, "ghost.test."),
        mx("short.test.", 1, 10, "mx.short.test."),
        a("mx.short.test.", 1, "127.0.0.4"),
        mx("fallback.test.", 300, 10, "ghost.test."),
        mx("fallback.test.", 300, 20, "mx2.mx.test."),
    ])
}

fn resolver(dns: &DnsServer, static_routes: Vec<StaticRoute>) -> Resolver {
    Resolver::start(ResolverConfig {
        nameservers: vec![dns.addr],
        static_routes,
        smtp_port: PORT,
        query_timeout_ms: 2000,
        cache_entries_max: 100,
        negative_ttl_secs_max: 300,
        dane: None,
    })
    .unwrap()
}

fn route(
    r: &Resolver,
    domain: &str,
) -> Result<std::sync::Arc<petrel_outbound::Route>, ResolveError> {
    futures::executor::block_on(r.route(domain))
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn mx_hosts_in_preference_order_with_port_applied() {
    let dns = zone();
    let r = resolver(&dns, vec![]);
    let route = route(&r, "MX.test.").unwrap();
    let names: Vec<_> = route.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["mx1.mx.test", "mx2.mx.test"]);
    let mut mx1 = route.hosts[0].addrs.clone();
    mx1.sort();
    assert_eq!(mx1, [sa("127.0.0.1:2525"), sa("[::1]:2525")]);
    assert_eq!(route.hosts[1].addrs, [sa("127.0.0.2:2525")]);
}

#[test]
fn null_mx_nxdomain_implicit_mx_and_no_addresses() {
    let dns = zone();
    let r = resolver(&dns, vec![]);
    let e = route(&r, "null.test").unwrap_err();
    assert!(matches!(e, ResolveError::NullMx { .. }), "{e:?}");
    assert_eq!(e.enhanced(), (5, 1, 10));
    let e = route(&r, "missing.test").unwrap_err();
    assert!(matches!(e, ResolveError::NoSuchDomain { .. }), "{e:?}");
    assert_eq!(e.enhanced(), (5, 1, 2));
    assert!(e.is_permanent());
    let implicit = route(&r, "implicit.test").unwrap();
    assert_eq!(implicit.hosts[0].name, "implicit.test");
    assert_eq!(implicit.hosts[0].addrs, [sa("127.0.0.3:2525")]);
    let e = route(&r, "noaddr.test").unwrap_err();
    assert!(matches!(e, ResolveError::NoAddresses { .. }), "{e:?}");
    // A host without addresses is skipped in favour of the next one.
    let fb = route(&r, "fallback.test").unwrap();
    assert_eq!(fb.hosts.len(), 1);
    assert_eq!(fb.hosts[0].name, "mx2.mx.test");
}

#[test]
fn large_answer_truncated_over_udp_is_fetched_over_tcp() {
    let mut records = vec![mx("big.test.", 300, 10, "mx.big.test.")];
    for i in 0..200u32 {
        records.push(a(
            "mx.big.test.",
            300,
            &format!("127.1.{}.{}", i / 250, i % 250 + 1),
        ));
    }
    let dns = DnsServer::start(records.clone());
    let r = resolver(&dns, vec![]);
    let route = route(&r, "big.test").unwrap();
    assert_eq!(
        route.hosts[0].addrs.len(),
        petrel_outbound::resolver::ADDRS_PER_HOST_MAX
    );
    // The same zone served over UDP only: the truncated answer cannot be completed.
    let udp_only = DnsServer::start_with(records, false);
    let r = resolver(&udp_only, vec![]);
    let e = futures::executor::block_on(r.route("big.test")).unwrap_err();
    assert!(!e.is_permanent(), "{e:?}");
}

#[test]
fn refused_zone_is_temporary() {
    let dns = zone();
    let r = resolver(&dns, vec![]);
    // Not our zone: the server refuses, which must not bounce mail.
    let e = route(&r, "elsewhere.example").unwrap_err();
    assert!(matches!(e, ResolveError::Temporary { .. }), "{e:?}");
    assert!(!e.is_permanent());
}

#[test]
fn unreachable_nameserver_is_temporary() {
    // A UDP port with nobody behind it.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    drop(sock);
    let r = Resolver::start(ResolverConfig {
        nameservers: vec![addr],
        query_timeout_ms: 200,
        ..ResolverConfig::default()
    })
    .unwrap();
    let e = route(&r, "mx.test").unwrap_err();
    assert!(!e.is_permanent(), "{e:?}");
}

#[test]
fn ttl_expiry_refreshes_the_route() {
    let dns = zone();
    let r = resolver(&dns, vec![]);
    let first = route(&r, "short.test").unwrap();
    assert_eq!(first.hosts[0].addrs, [sa("127.0.0.4:2525")]);
    dns.upsert(a("mx.short.test.", 1, "127.0.0.5"));
    // Still cached (TTL 1 s): the same Arc comes back.
    let again = route(&r, "short.test").unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    std::thread::sleep(Duration::from_millis(1300));
    let fresh = route(&r, "short.test").unwrap();
    let addrs: Vec<_> = fresh.hosts[0].addrs.clone();
    assert!(addrs.contains(&sa("127.0.0.5:2525")), "{addrs:?}");
}

#[test]
fn negative_answers_are_cached_for_the_soa_ttl() {
    let dns = zone();
    let r = resolver(&dns, vec![]);
    assert!(route(&r, "late.test").is_err());
    dns.upsert(a("late.test.", 60, "127.0.0.6"));
    // Cached NXDOMAIN (SOA minimum 2 s) still answers.
    assert!(matches!(
        route(&r, "late.test"),
        Err(ResolveError::NoSuchDomain { .. })
    ));
    std::thread::sleep(Duration::from_millis(2300));
    let route = route(&r, "late.test").unwrap();
    assert_eq!(route.hosts[0].addrs, [sa("127.0.0.6:2525")]);
}

#[test]
fn static_routes_bypass_dns() {
    let dns = zone();
    let smart = sa("127.0.0.9:2626");
    let one = sa("127.0.0.8:2727");
    let r = resolver(
        &dns,
        vec![
            StaticRoute {
                domain: None,
                target: smart,
                tls_name: None,
            },
            StaticRoute {
                domain: Some("Special.Test".into()),
                target: one,
                tls_name: None,
            },
        ],
    );
    assert_eq!(route(&r, "special.test.").unwrap().hosts[0].addrs, [one]);
    assert_eq!(route(&r, "null.test").unwrap().hosts[0].addrs, [smart]);

    let r = resolver(
        &dns,
        vec![StaticRoute {
            domain: Some("special.test".into()),
            target: one,
            tls_name: None,
        }],
    );
    assert_eq!(route(&r, "special.test").unwrap().hosts[0].addrs, [one]);
    assert!(route(&r, "mx.test").unwrap().hosts[0]
        .name
        .starts_with("mx1"));
}

#[test]
fn route_future_runs_inside_glommio() {
    let dns = zone();
    let r = resolver(&dns, vec![]);
    let names = petrel_testkit::glommio::run(move || async move {
        let route = r.route("mx.test").await.unwrap();
        route
            .hosts
            .iter()
            .map(|h| h.name.clone())
            .collect::<Vec<_>>()
    });
    assert_eq!(names, ["mx1.mx.test", "mx2.mx.test"]);
}

#[test]
fn concurrent_requests_for_one_domain_share_one_answer() {
    let dns = zone();
    let r = resolver(&dns, vec![]);
    let lookups = (0..200).map(|i| {
        let r = r.clone();
        async move {
            let domain = if i % 2 == 0 {
                "mx.test"
            } else {
                "implicit.test"
            };
            r.route(domain).await
        }
    });
    let answers = futures::executor::block_on(futures::future::join_all(lookups));
    let first_mx = answers[0].as_ref().unwrap();
    for (i, a) in answers.iter().enumerate() {
        let a = a.as_ref().unwrap();
        if i % 2 == 0 {
            assert!(
                std::sync::Arc::ptr_eq(a, first_mx),
                "one computation, one route"
            );
        } else {
            assert_eq!(a.hosts[0].name, "implicit.test");
        }
    }
}

#[test]
fn domain_literals_and_invalid_names() {
    let dns = zone();
    let r = resolver(&dns, vec![]);
    assert_eq!(
        route(&r, "[127.0.0.7]").unwrap().hosts[0].addrs,
        [sa("127.0.0.7:2525")]
    );
    assert_eq!(
        route(&r, "[IPv6:::1]").unwrap().hosts[0].addrs,
        [sa("[::1]:2525")]
    );
    assert!(matches!(
        route(&r, "[not-an-ip]"),
        Err(ResolveError::NoSuchDomain { .. })
    ));
    assert!(matches!(
        route(&r, ""),
        Err(ResolveError::NoSuchDomain { .. })
    ));
    let long = format!("{}.test", "a".repeat(300));
    assert!(matches!(
        route(&r, &long),
        Err(ResolveError::NoSuchDomain { .. })
    ));
}

/// `known_route` answers without a lookup: static routes and domain literals at once, a DNS
/// domain only once a lookup has cached its route (never a failure), and nothing after expiry.
#[test]
fn known_route_answers_only_from_static_routes_literals_and_the_cache() {
    let dns = zone();
    let one = sa("127.0.0.8:2727");
    let r = resolver(
        &dns,
        vec![StaticRoute {
            domain: Some("special.test".into()),
            target: one,
            tls_name: None,
        }],
    );
    assert_eq!(r.known_route("Special.Test").unwrap().hosts[0].addrs, [one]);
    assert_eq!(
        r.known_route("[127.0.0.5]").unwrap().hosts[0].addrs,
        [sa("127.0.0.5:2525")]
    );
    assert!(r.known_route("mx.test").is_none(), "not looked up yet");
    let looked_up = route(&r, "mx.test").unwrap();
    let known = r.known_route("MX.test.").expect("cached by the lookup");
    assert!(std::sync::Arc::ptr_eq(&looked_up, &known));
    assert!(route(&r, "null.test").is_err());
    assert!(
        r.known_route("null.test").is_none(),
        "a failure is never a known route"
    );
    route(&r, "short.test").unwrap();
    assert!(r.known_route("short.test").is_some());
    std::thread::sleep(Duration::from_millis(1_100)); // its TTL is 1 s
    assert!(r.known_route("short.test").is_none(), "expired");
}
