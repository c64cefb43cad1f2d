//! Per-core throughput of the outbound hot paths that do not touch the network:
//! dot-stuffing a message body, parsing server replies, and route-cache hits.

use std::net::IpAddr;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use petrel_outbound::client::dot_stuff;
use petrel_outbound::client::reply::parse_reply;
use petrel_outbound::{
    Dns, DnsError, IpAnswer, MxAnswer, MxRecord, ResolverConfig, RouteLogic, SystemClock,
};

fn body(bytes: usize) -> Vec<u8> {
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    let dotted = b".a line that starts with a dot and must be stuffed\r\n";
    let mut out = Vec::with_capacity(bytes + line.len());
    let mut i = 0;
    while out.len() < bytes {
        out.extend_from_slice(if i % 20 == 0 { dotted } else { line });
        i += 1;
    }
    out
}

fn bench_dot_stuff(c: &mut Criterion) {
    let input = body(1 << 20);
    let mut out = Vec::with_capacity(input.len() * 2);
    let mut g = c.benchmark_group("dot_stuff");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("1MiB_per_core", |b| {
        b.iter(|| {
            out.clear();
            dot_stuff(black_box(&input), true, &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

fn bench_parse_reply(c: &mut Criterion) {
    let ehlo = b"250-mx.example.com Hello client.example [192.0.2.1]\r\n250-PIPELINING\r\n\
250-SIZE 52428800\r\n250-8BITMIME\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n\
250 SMTPUTF8\r\n";
    let rcpt = b"250 2.1.5 Ok\r\n";
    let mut g = c.benchmark_group("parse_reply");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ehlo_7_lines_per_core", |b| {
        b.iter(|| {
            parse_reply(black_box(ehlo))
                .ok()
                .flatten()
                .map(|(r, _)| r.code)
        })
    });
    g.bench_function("rcpt_single_line_per_core", |b| {
        b.iter(|| {
            parse_reply(black_box(rcpt))
                .ok()
                .flatten()
                .map(|(r, _)| r.code)
        })
    });
    g.finish();
}

/// Answers every domain with one MX host and one address, instantly.
struct StaticDns;

impl Dns for StaticDns {
    async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        Ok(MxAnswer {
            records: vec![MxRecord {
                preference: 10,
                exchange: format!("mx.{domain}"),
            }],
            ttl_secs: Some(3600),
        })
    }
    async fn ip(&self, _host: &str) -> Result<IpAnswer, DnsError> {
        Ok(IpAnswer {
            addrs: vec![IpAddr::from([192, 0, 2, 1])],
            ttl_secs: Some(3600),
        })
    }
}

fn bench_route_cache(c: &mut Criterion) {
    let logic = RouteLogic::new(StaticDns, SystemClock::new(), &ResolverConfig::default());
    let domains: Vec<String> = (0..1000).map(|i| format!("d{i}.example")).collect();
    for d in &domains {
        let _ = futures::executor::block_on(logic.route(d));
    }
    let mut i = 0usize;
    let mut g = c.benchmark_group("route_cache");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hit_per_core", |b| {
        b.iter(|| {
            i = (i + 1) % domains.len();
            futures::executor::block_on(logic.route(black_box(&domains[i]))).is_ok()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_dot_stuff,
    bench_parse_reply,
    bench_route_cache
);
criterion_main!(benches);
