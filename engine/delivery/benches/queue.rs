//! Queue throughput with one million queued entries: schedule (push) and promote + pop, one
//! core. Reports elements per second (`Throughput::Elements`).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use petrel_delivery::queue::{DomainQueue, Entry, Queues};

const QUEUED: u64 = 1_000_000;
/// Operations per measured iteration.
const OPS: u64 = 10_000;

fn entry(i: u64) -> Entry {
    Entry {
        // Scrambled due times over ~1000 s, so the heap is exercised.
        due_unix_ms: (i.wrapping_mul(2_654_435_761)) % 1_000_000,
        message_id: i,
        rcpt_index: 0,
        received_unix_secs: 1_700_000_000,
    }
}

fn full_queue() -> DomainQueue {
    let mut q = DomainQueue::new(1_000);
    for i in 0..QUEUED {
        q.schedule(entry(i));
    }
    q
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue_1m");
    g.throughput(Throughput::Elements(OPS));
    g.sample_size(20);

    let mut q = full_queue();
    let mut next = QUEUED;
    g.bench_function("schedule_push", |b| {
        b.iter(|| {
            for _ in 0..OPS {
                q.schedule(entry(next));
                next += 1;
            }
        })
    });

    g.bench_function("promote_pop", |b| {
        b.iter_batched_ref(
            full_queue,
            |q| {
                let mut popped = 0;
                while popped < OPS {
                    q.promote_due(u64::MAX);
                    while let Some(e) = q.pop_ready() {
                        black_box(e);
                        popped += 1;
                    }
                }
            },
            BatchSize::LargeInput,
        )
    });

    // A deferral cycle at steady state: pop a due entry and schedule it again later, with one
    // million entries spread over 1000 domains.
    let mut qs = Queues::new(1_000);
    let ids: Vec<_> = (0..1_000)
        .map(|d| qs.domain_id(&format!("d{d}.example")))
        .collect();
    for i in 0..QUEUED {
        qs.schedule(ids[(i % 1_000) as usize], entry(i));
    }
    let mut now = 0u64;
    g.bench_function("pop_then_reschedule_1000_domains", |b| {
        b.iter(|| {
            let mut done = 0;
            while done < OPS {
                now += 100;
                qs.promote_due(now);
                let ready: Vec<_> = qs.ready_domains().collect();
                for d in ready {
                    for e in qs.pop_batch(d, 100, now) {
                        qs.schedule(
                            d,
                            Entry {
                                due_unix_ms: now + 1_000_000,
                                ..e
                            },
                        );
                        done += 1;
                    }
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
