//! Nanoseconds per classification over the whole corpus, shipped rules.
//!
//! `cargo bench -p petrel-bounce --bench classify`: `bounce/classify_corpus` classifies every
//! corpus reply once per iteration, so its time divided by the corpus size (printed first) is
//! the time per classification, and its throughput is classifications per second on one core.
//! `bounce/build_shipped` is the one-off cost of compiling the shipped rules.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use petrel_bounce::{BounceClassifier, Reply};

const CORPUS: &str = include_str!("../testdata/bounce-corpus.tsv");

fn replies() -> Vec<Reply<'static>> {
    CORPUS
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split('\t').nth(3))
        .filter_map(Reply::parse)
        .collect()
}

fn bench(c: &mut Criterion) {
    let classifier = BounceClassifier::shipped();
    let replies = replies();
    eprintln!(
        "corpus: {} replies, {} rules",
        replies.len(),
        classifier.rule_count()
    );
    let mut group = c.benchmark_group("bounce");
    group.throughput(Throughput::Elements(replies.len() as u64));
    group.bench_function("classify_corpus", |b| {
        b.iter(|| {
            for r in &replies {
                std::hint::black_box(classifier.classify_reply(std::hint::black_box(r)));
            }
        })
    });
    group.finish();
    c.bench_function("bounce/build_shipped", |b| {
        b.iter(BounceClassifier::shipped)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
