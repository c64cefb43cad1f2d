//! DKIM signing throughput of `DkimSigner` (one core): a 1 KiB message, RSA-2048 and Ed25519.
//! Criterion prints `elem/s` = signatures per second per core.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use petrel_policy::{keys, DkimAlgorithm, DkimKey, DkimSigner};

/// Size of the benchmarked message, headers included.
const MESSAGE_SIZE_BYTES: usize = 1024;

fn message() -> Vec<u8> {
    let mut m = b"From: Alice <alice@acme.example>\r\n\
To: bob@example.net\r\n\
Subject: Your weekly report\r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <bench-1@acme.example>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n"
        .to_vec();
    let line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n";
    while m.len() + line.len() <= MESSAGE_SIZE_BYTES {
        m.extend_from_slice(line);
    }
    m.resize(MESSAGE_SIZE_BYTES - 2, b'.');
    m.extend_from_slice(b"\r\n");
    m
}

fn signer(alg: DkimAlgorithm) -> DkimSigner {
    let g = keys::generate(alg).expect("key generation");
    let key = DkimKey {
        selector: "bench".into(),
        algorithm: alg,
        private_key_pkcs8_der: g.private_key_pkcs8_der,
        active_from_unix_ms: 0,
        retired: false,
    };
    DkimSigner::from_keys("acme.example", &[key])
        .expect("key loads")
        .expect("one active key")
}

fn bench(c: &mut Criterion) {
    let msg = message();
    assert_eq!(msg.len(), MESSAGE_SIZE_BYTES);
    let mut group = c.benchmark_group("dkim_sign_1KiB");
    group.throughput(Throughput::Elements(1));
    for (name, alg) in [
        ("rsa2048", DkimAlgorithm::Rsa2048),
        ("ed25519", DkimAlgorithm::Ed25519),
    ] {
        let s = signer(alg);
        group.bench_function(name, |b| {
            b.iter(|| s.sign(std::hint::black_box(&msg), 1_700_000_000_000))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
