//! DKIM signing throughput of `DkimSigner` (one core): a 1 KiB message, RSA-2048 and Ed25519.
//! Criterion prints `elem/s` = signatures per second per core.

use criterion::{criterion_group, Criterion, Throughput};
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

/// Nanoseconds this thread has spent on a CPU (Linux schedstat), if available.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Criterion measures wall time, which a loaded machine inflates. This reports signatures per
/// CPU-second of this thread as well, which does not depend on how busy the other cores are.
fn cpu_time_report() {
    let msg = message();
    for (name, alg, n) in [
        ("rsa2048", DkimAlgorithm::Rsa2048, 500u32),
        ("ed25519", DkimAlgorithm::Ed25519, 5_000u32),
    ] {
        let s = signer(alg);
        let (Some(cpu0), wall0) = (thread_cpu_ns(), std::time::Instant::now()) else {
            println!("cpu-time report skipped: no /proc/thread-self/schedstat");
            return;
        };
        for _ in 0..n {
            std::hint::black_box(s.sign(std::hint::black_box(&msg), 1_700_000_000_000).ok());
        }
        let cpu_ns = thread_cpu_ns().unwrap_or(cpu0).saturating_sub(cpu0).max(1);
        let wall_s = wall0.elapsed().as_secs_f64();
        println!(
            "dkim_sign_1KiB/{name}: {:.0} signatures per CPU-second ({:.1} us CPU each); wall {:.0}/s",
            f64::from(n) / (cpu_ns as f64 / 1e9),
            cpu_ns as f64 / 1e3 / f64::from(n),
            f64::from(n) / wall_s
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    cpu_time_report();
    Criterion::default().configure_from_args().final_summary();
}
