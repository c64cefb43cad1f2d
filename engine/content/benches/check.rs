//! The checker's cost per message, on a typical 10 KB HTML mail (a newsletter: multipart
//! alternative, 30 links through a click-tracking domain, images, a style sheet,
//! tables), on one of the corpus's phishing samples, and on a short plain message like the
//! relay benchmarks send. It runs on a shard for every message of a tenant, before signing;
//! the measured figures are in the crate docs (`src/lib.rs`, Cost).
//!
//! `nice -n 19 cargo bench -p petrel-content --bench check`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use petrel_content::{Checker, CheckerConfig, Sender};

/// A newsletter of about 10 KB.
fn newsletter() -> Vec<u8> {
    let mut html = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Weekly picks</title>\
         <style>body{font-family:Arial,sans-serif}td{padding:8px}.btn{background:#0a6}</style>\
         </head><body><table width=\"600\" align=\"center\">",
    );
    for i in 0..30 {
        html.push_str(&format!(
            "<tr><td><img src=\"https://cdn.greenleaf-market.com/img/p{i}.jpg\" width=\"120\" \
             alt=\"Product {i}\"></td><td><h3>Seasonal pick number {i}</h3><p>Fresh from our \
             growers this week, picked at the right time and packed the same day.</p>\
             <a class=\"btn\" href=\"https://click.greenleaf-market.com/ls/click?upn=u{i}a8f3\
             &amp;c=weekly\">Shop now</a></td></tr>"
        ));
    }
    html.push_str(
        "<tr><td colspan=\"2\"><a href=\"https://click.greenleaf-market.com/ls/unsub?u=9\">\
         Unsubscribe</a> | <a href=\"https://www.greenleaf-market.com/help\">\
         www.greenleaf-market.com</a></td></tr></table></body></html>",
    );
    let mut m = String::from(
        "From: Greenleaf Market <news@greenleaf-market.com>\r\nTo: <ana@example.org>\r\n\
         Subject: This week's picks\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; \
         boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         This week's picks: https://www.greenleaf-market.com/weekly\r\n--b1\r\n\
         Content-Type: text/html; charset=utf-8\r\n\r\n",
    );
    m.push_str(&html);
    m.push_str("\r\n--b1--\r\n");
    m.into_bytes()
}

fn bench(c: &mut Criterion) {
    let checker = Checker::new(&CheckerConfig::default()).expect("default config");
    let mail = newsletter();
    assert!(!checker.check(&mail, &Sender::default()).blocked());
    let phish = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/phish/01-paypal-link-mismatch.eml"
    ))
    .expect("corpus sample");
    assert!(checker.check(&phish, &Sender::default()).blocked());
    let mut g = c.benchmark_group("content_check");
    g.throughput(Throughput::Bytes(mail.len() as u64));
    g.bench_function(format!("newsletter_{}_bytes", mail.len()), |b| {
        b.iter(|| checker.check(black_box(&mail), &Sender::default()))
    });
    // The shape of the relay benchmarks' load (`benches/bench-dkim.sh`): a short plain message.
    let plain = b"From: <load@dev.petrel.test>\r\nTo: <r@sink.test>\r\nSubject: load 1\r\n\
Message-ID: <1@dev.petrel.test>\r\nDate: Sat, 05 Dec 2026 10:00:00 +0000\r\n\r\n\
Hello from the load generator.\r\n";
    g.throughput(Throughput::Bytes(plain.len() as u64));
    g.bench_function("plain_short", |b| {
        b.iter(|| checker.check(black_box(plain), &Sender::default()))
    });
    // The relay benchmarks' 1 KiB message (`petrel load inject`): headers, then 76-character
    // filler lines.
    let mut one_k = b"X-Petrel-Load-Id: 1-2-3\r\nFrom: <load@petrel-load.test>\r\n\
To: undisclosed-recipients:;\r\nSubject: petrel load 7\r\n\
Message-ID: <00000000000000ab.7@petrel-load.test>\r\n\r\n"
        .to_vec();
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    for l in 0..11 {
        one_k.extend((0..76).map(|i| alphabet[(l + i) % alphabet.len()]));
        one_k.extend_from_slice(b"\r\n");
    }
    g.throughput(Throughput::Bytes(one_k.len() as u64));
    g.bench_function("plain_1k", |b| {
        b.iter(|| checker.check(black_box(&one_k), &Sender::default()))
    });
    g.throughput(Throughput::Bytes(phish.len() as u64));
    g.bench_function("phish_sample", |b| {
        b.iter(|| checker.check(black_box(&phish), &Sender::default()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
