//! Seal and open cost per message size (issue 16's benchmark): `cargo bench -p petrel-seal`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use petrel_seal::DataKey;

fn seal_open(c: &mut Criterion) {
    let key = DataKey::generate(1, Some("t1".into()), 0).expect("key");
    let mut g = c.benchmark_group("seal");
    for kib in [1usize, 4, 16, 64] {
        let body = vec![b'x'; kib * 1024];
        g.throughput(Throughput::Bytes(body.len() as u64));
        let mut out = Vec::with_capacity(body.len() + 64);
        g.bench_with_input(BenchmarkId::new("seal", kib), &body, |b, body| {
            b.iter(|| {
                out.clear();
                black_box(key.seal_append(b"aad", &[body], &mut out));
            })
        });
        out.clear();
        key.seal_append(b"aad", &[&body], &mut out);
        let mut buf = out.clone();
        g.bench_with_input(BenchmarkId::new("open", kib), &out, |b, frame| {
            b.iter(|| {
                buf.copy_from_slice(frame);
                black_box(key.open_in_place(b"aad", &mut buf).expect("open").len());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, seal_open);
criterion_main!(benches);
