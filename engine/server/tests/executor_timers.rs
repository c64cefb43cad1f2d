//! The vendored glommio keeps its io_uring timeouts armed across loops of the executor instead of
//! cancelling and re-arming them each time (vendor/glommio/PETREL-PATCH.md, "Timers kept armed").
//! These tests pin what that must not break: a shard's timers fire, a busy task queue is still
//! preempted, and an idle shard is not woken by a stale preemption timer.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{Latency, Shares};
use petrel_testkit::glommio::run;

/// Voluntary context switches of the calling thread so far.
fn voluntary_switches() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

#[test]
fn timers_fire_while_socket_reads_wake_the_executor() {
    // Reads from another thread's writes wake the executor between its timers, so it goes to
    // sleep again and again with a timeout still armed: the kept one (it fires no later than the
    // next timer) or a new one (a nearer timer was added). Either way every sleep must end on
    // time; a lost wake-up would wait for the 60 s timer.
    let (slept, elapsed, reads) = run(|| async {
        use futures_lite::AsyncReadExt;
        let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            for _ in 0..2_000 {
                if s.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_micros(250));
            }
        });
        let mut conn = listener.accept().await.expect("accept");
        let reads = Rc::new(Cell::new(0u64));
        let r = reads.clone();
        let reader = glommio::spawn_local(async move {
            let mut buf = [0u8; 64];
            while let Ok(n) = conn.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                r.set(r.get() + 1);
            }
        })
        .detach();
        let far = glommio::spawn_local(glommio::timer::sleep(Duration::from_secs(60))).detach();
        let start = Instant::now();
        let mut slept = Duration::ZERO;
        for i in 0..200u64 {
            let d = Duration::from_micros(200 + (i % 7) * 150);
            glommio::timer::sleep(d).await;
            slept += d;
        }
        let elapsed = start.elapsed();
        far.cancel();
        writer.join().expect("writer");
        reader.await;
        (slept, elapsed, reads.get())
    });
    assert!(reads > 10, "only {reads} reads woke the executor");
    assert!(
        elapsed >= slept,
        "a timer fired early: {elapsed:?} < {slept:?}"
    );
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
}

#[test]
fn a_busy_task_queue_is_still_preempted() {
    // The other queue wakes every 5 ms for 50 ms, all within the busy queue's 300 ms: each
    // wake-up is noticed only when the busy queue is preempted.
    let runs_while_busy = run(|| async {
        let ex = glommio::executor();
        let busy_tq = ex.create_task_queue(
            Shares::Static(1000),
            Latency::Matters(Duration::from_millis(1)),
            "busy",
        );
        let other_tq = ex.create_task_queue(Shares::Static(1000), Latency::NotImportant, "other");
        let busy_done = Rc::new(Cell::new(false));
        let runs_while_busy = Rc::new(Cell::new(0u32));
        let (d, o) = (busy_done.clone(), runs_while_busy.clone());
        let busy = glommio::spawn_local_into(
            async move {
                // 300 ms of CPU, yielding only when the preemption timer says so.
                let until = Instant::now() + Duration::from_millis(300);
                while Instant::now() < until {
                    std::hint::black_box(0u64);
                    glommio::yield_if_needed().await;
                }
                d.set(true);
            },
            busy_tq,
        )
        .expect("spawn");
        let d = busy_done.clone();
        let other = glommio::spawn_local_into(
            async move {
                for _ in 0..10 {
                    if !d.get() {
                        o.set(o.get() + 1);
                    }
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
            },
            other_tq,
        )
        .expect("spawn");
        busy.await;
        other.await;
        runs_while_busy.get()
    });
    assert!(
        runs_while_busy >= 5,
        "the other queue ran {runs_while_busy} of 10 times while the busy one had work"
    );
}

#[test]
fn an_idle_executor_sleeps() {
    // A latency-sensitive queue sets a 1 ms preemption timer; an executor going idle must cancel
    // it, or it would wake about once a millisecond for nothing.
    let switches = run(|| async {
        let tq = glommio::executor().create_task_queue(
            Shares::Static(1000),
            Latency::Matters(Duration::from_millis(1)),
            "latency",
        );
        glommio::spawn_local_into(async {}, tq)
            .expect("spawn")
            .await;
        let before = voluntary_switches();
        glommio::timer::sleep(Duration::from_millis(500)).await;
        voluntary_switches() - before
    });
    // One sleep for the 500 ms timer, plus a few for stray events.
    assert!(
        switches < 50,
        "{switches} voluntary context switches in 500 ms idle"
    );
}
