//! Store throughput of 1 KiB messages with fsync on, one glommio executor (= one core):
//! 1 storer (every store pays a full fdatasync) vs 64 concurrent storers (group commit), for
//! both file types. Reports messages/s per core.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::{LocalExecutorBuilder, Placement};
use petrel_spool::{Envelope, FileMode, Recipient, RecipientState, Spool, SpoolConfig};

/// Body size of every stored message.
const BODY_BYTES: usize = 1024;

fn envelope() -> Envelope {
    Envelope {
        mail_from: "sender@example.com".into(),
        recipients: vec![Recipient {
            address: "rcpt@dest.example".into(),
            state: RecipientState::Pending,
            attempts: 0,
            next_attempt_unix_ms: 0,
            last_reply: None,
        }],
        tenant: Some("tenant".into()),
        received_unix_ms: 1_700_000_000_000,
        client_addr: "127.0.0.1:40000".into(),
        helo: "client.example".into(),
        authenticated_as: None,
        smtputf8: false,
        body_8bit: false,
        is_dsn: false,
    }
}

/// Runs `iters` stores split over `storers` tasks on a fresh executor; returns the time they
/// took (spool open and executor start excluded) and the number of group commits.
fn run(mode: FileMode, storers: u64, iters: u64) -> (Duration, u64) {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .spawn(move || async move {
            let dir = tempfile::tempdir().expect("tempdir");
            let (spool, _) = Spool::open_with_mode(SpoolConfig::new(dir.path(), 0), mode)
                .await
                .expect("open");
            let spool = Rc::new(spool);
            let env = Rc::new(envelope());
            let body = Rc::new(vec![b'x'; BODY_BYTES]);
            let left = Rc::new(Cell::new(iters));
            let commits_before = spool.commits();
            let start = Instant::now();
            let tasks: Vec<_> = (0..storers)
                .map(|_| {
                    let (spool, env, body, left) =
                        (spool.clone(), env.clone(), body.clone(), left.clone());
                    glommio::spawn_local(async move {
                        while left.get() > 0 {
                            left.set(left.get() - 1);
                            spool.store(&env, &body).await.expect("store");
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            let elapsed = start.elapsed();
            let commits = spool.commits() - commits_before;
            Rc::try_unwrap(spool)
                .expect("tasks done")
                .close()
                .await
                .expect("close");
            (elapsed, commits)
        })
        .expect("executor")
        .join()
        .expect("join")
}

fn store_1k_fsync(c: &mut Criterion) {
    let mut group = c.benchmark_group("spool_store_1k_fsync");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    for mode in [FileMode::Buffered, FileMode::Direct] {
        for storers in [1u64, 64] {
            let (_, commits) = run(mode, storers, 2000);
            eprintln!("{mode:?} storers={storers}: 2000 stores took {commits} fdatasync rounds");
            group.bench_with_input(
                BenchmarkId::new(format!("{mode:?}"), storers),
                &storers,
                |b, &storers| b.iter_custom(|iters| run(mode, storers, iters).0),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, store_1k_fsync);
criterion_main!(benches);
