//! Time per report on one core, for sizing the intake.
//!
//! `cargo bench -p petrel-reports --bench parse`: one benchmark per kind of input, each a
//! corpus sample, plus the RCPT-time token check. Throughput is in bytes of mail.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use petrel_bounce::BounceClassifier;
use petrel_reports::{classify_recipient, parse_report, VerpKey, VerpKeys};

fn sample(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR"))).expect("a sample")
}

fn bench(c: &mut Criterion) {
    let classifier = BounceClassifier::shipped();
    let mut group = c.benchmark_group("reports");
    for (name, path) in [
        ("dsn_rfc3464", "bounces/rfc3464_postfix_user_unknown.eml"),
        ("dsn_text_qmail", "bounces/qmail_user_unknown.eml"),
        ("arf_yahoo", "arf/yahoo_fbl.eml"),
        ("dmarc_gzip", "dmarc/microsoft_gzip.eml"),
        ("dmarc_zip", "dmarc/google_zip.eml"),
    ] {
        let raw = sample(path);
        group.throughput(Throughput::Bytes(raw.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| parse_report(black_box(&raw), &classifier).expect("a report"))
        });
    }
    group.finish();
    let keys = VerpKeys::new(
        VerpKey::new(1, b"petrel-corpus-test-key-0001").expect("a key"),
        vec![],
    )
    .expect("one key");
    let rcpt = "b-aeaqaaaaaaaaaaaaviaqaaaaaaaaaqqaaaaglwrs6zisb4nfxqeq@bounce.petrel.example";
    c.bench_function("reports/rcpt_token", |b| {
        b.iter(|| {
            classify_recipient(&keys, &["bounce.petrel.example"], &[], black_box(rcpt))
                .expect("a valid token")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
