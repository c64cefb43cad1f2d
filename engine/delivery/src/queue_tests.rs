//! Tests of the domain queues (`queue.rs`).

use super::*;

fn entry(due: u64, msg: u64, rcpt: u32) -> Entry {
    Entry {
        due_unix_ms: due,
        message_id: msg,
        rcpt_index: rcpt,
        received_unix_secs: 100,
    }
}

#[test]
fn full_ready_set_hands_entry_back_and_keeps_it_scheduled() {
    let mut q = DomainQueue::new(2);
    assert!(q.push_ready(entry(0, 1, 0)).is_ok());
    assert!(q.push_ready(entry(0, 1, 1)).is_ok());
    assert_eq!(q.push_ready(entry(0, 1, 2)), Err(entry(0, 1, 2)));
    q.schedule(entry(5, 2, 0));
    assert_eq!(q.promote_due(10), 0, "ready set is full");
    assert_eq!(q.depth(), 3);
    assert_eq!(q.pop_ready(), Some(entry(0, 1, 0)));
    assert_eq!(q.promote_due(10), 1);
    assert_eq!(q.next_due(), None);
}

#[test]
fn extract_takes_one_tenants_messages_from_every_domain_and_keeps_the_rest() {
    let mut qs = Queues::new(10);
    let a = qs.domain_id("a.test");
    let b = qs.domain_id("b.test");
    for (id, e) in [
        (a, entry(0, 1, 0)),
        (a, entry(0, 2, 0)),
        (b, entry(50, 1, 1)),
        (b, entry(60, 3, 0)),
    ] {
        qs.schedule(id, e);
    }
    qs.promote_due(10);
    assert_eq!(qs.ready_len(a), 2);
    let ids: std::collections::HashSet<u64> = [1].into_iter().collect();
    let mut taken = qs.extract_messages(&ids);
    taken.sort();
    assert_eq!(taken, vec![entry(0, 1, 0), entry(50, 1, 1)]);
    assert_eq!(qs.total(), 2);
    assert_eq!(qs.ready_len(a), 1);
    assert_eq!(qs.pop_batch(a, 10, 10), vec![entry(0, 2, 0)]);
    qs.promote_due(100);
    assert_eq!(qs.pop_batch(b, 10, 100), vec![entry(60, 3, 0)]);
}

#[test]
fn promotes_in_due_order_only_when_due() {
    let mut q = DomainQueue::new(100);
    q.schedule(entry(30, 3, 0));
    q.schedule(entry(10, 1, 0));
    q.schedule(entry(20, 2, 0));
    assert_eq!(q.promote_due(5), 0);
    assert_eq!(q.promote_due(20), 2);
    assert_eq!(q.pop_ready().map(|e| e.message_id), Some(1));
    assert_eq!(q.pop_ready().map(|e| e.message_id), Some(2));
    assert_eq!(q.next_due(), Some(30));
}

#[test]
fn batches_group_one_message_up_to_max() {
    let mut q = DomainQueue::new(100);
    for r in 0..5 {
        q.schedule(entry(1, 7, r));
    }
    q.schedule(entry(1, 8, 0));
    q.promote_due(1);
    let mut b = Vec::new();
    q.pop_batch(3, &mut b);
    assert_eq!(
        b.iter().map(|e| e.rcpt_index).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    b.clear();
    q.pop_batch(3, &mut b);
    assert_eq!(b.len(), 2);
    b.clear();
    q.pop_batch(3, &mut b);
    assert_eq!(b, [entry(1, 8, 0)]);
}

#[test]
fn suspend_resume_retry_and_bounce_all() {
    let mut qs = Queues::new(10);
    let d = qs.domain_id("example.com");
    qs.schedule(d, entry(1_000, 1, 0));
    qs.schedule(d, entry(9_000_000, 2, 0));
    qs.suspend("example.com");
    qs.promote_due(2_000);
    assert_eq!(qs.ready_domains().count(), 0, "suspended");
    assert!(qs.resume("example.com", 2_000));
    assert_eq!(qs.ready_domains().collect::<Vec<_>>(), [d]);
    assert_eq!(qs.pop_batch(d, 10, 2_000).len(), 1);
    assert!(qs.retry_now("example.com", 3_000));
    assert_eq!(qs.ready_len(d), 1, "retry-now made the far entry due");
    qs.schedule(d, entry(50_000, 3, 0));
    let all = qs.drain("example.com");
    assert_eq!(all.len(), 2);
    assert_eq!(qs.total(), 0);
    assert!(qs.remove_if_idle(d));
    assert_eq!(qs.lookup("example.com"), None);
    let again = qs.domain_id("other.example");
    assert_eq!(again, d, "slot reused");
}

#[test]
fn stats_report_depth_age_and_state() {
    let mut qs = Queues::new(10);
    let a = qs.domain_id("a.example");
    let b = qs.domain_id("b.example");
    qs.schedule(a, entry(0, 1, 0));
    qs.schedule(
        a,
        Entry {
            received_unix_secs: 40,
            ..entry(0, 2, 0)
        },
    );
    qs.schedule(b, entry(0, 3, 0));
    qs.suspend("b.example");
    let s = qs.stats(100_000);
    assert_eq!(s.len(), 2);
    assert_eq!(
        (s[0].depth, s[0].oldest_age_secs, s[0].suspended),
        (2, 60, false)
    );
    assert_eq!((s[1].depth, s[1].suspended), (1, true));
    assert_eq!(qs.total(), 3);
}

#[test]
fn wakeups_find_due_domains_among_many() {
    let mut qs = Queues::new(4);
    for d in 0..1000u64 {
        let id = qs.domain_id(&format!("d{d}.example"));
        qs.schedule(id, entry(d * 10, d, 0));
    }
    qs.promote_due(95);
    assert_eq!(qs.ready_domains().count(), 10);
    assert_eq!(qs.next_wakeup(), Some(100));
}

#[test]
fn million_entries_drain_in_order() {
    let mut q = DomainQueue::new(1_000);
    let n = 1_000_000u64;
    for i in 0..n {
        // A scrambled but deterministic due order.
        q.schedule(entry((i * 7_919) % n, i, 0));
    }
    assert_eq!(q.depth(), n as usize);
    let mut last = 0;
    let mut popped = 0;
    while popped < n {
        q.promote_due(u64::MAX);
        while let Some(e) = q.pop_ready() {
            assert!(e.due_unix_ms >= last);
            last = e.due_unix_ms;
            popped += 1;
        }
    }
    assert_eq!(q.depth(), 0);
}

mod memory_tests {
    use crate::queue::*;

    /// Ten recipients per domain over many domains, each attempted once and scheduled again
    /// (the deferred backlog of issue 17's benchmark): what the queues hold per recipient.
    #[test]
    fn a_deferred_backlog_costs_little_beyond_its_entries() {
        const DOMAINS: u32 = 2_000;
        const PER_DOMAIN: u64 = 10;
        let mut q = Queues::new(10_000);
        let mut n = 0u64;
        for d in 0..DOMAINS {
            let id = q.domain_id(&format!("d{d}.example.test"));
            for _ in 0..PER_DOMAIN {
                n += 1;
                q.schedule(
                    id,
                    Entry {
                        due_unix_ms: 1,
                        message_id: n,
                        rcpt_index: 0,
                        received_unix_secs: 1,
                    },
                );
            }
        }
        q.promote_due(10);
        let ready: Vec<DomainId> = q.ready_domains().collect();
        for id in ready {
            loop {
                let batch = q.pop_batch(id, 1, 10);
                if batch.is_empty() {
                    break;
                }
                for e in batch {
                    q.schedule(
                        id,
                        Entry {
                            due_unix_ms: 3_600_000,
                            ..e
                        },
                    );
                }
            }
        }
        assert_eq!(q.total(), n);
        let per = q.memory_bytes() as f64 / n as f64;
        println!("{per:.1} bytes per queued recipient in the domain queues");
        assert!(per <= 52.0, "{per:.1} bytes per queued recipient");
        // The gauges' trim fits a waiting domain's schedule to its entries.
        q.trim_memory();
        let trimmed = q.memory_bytes() as f64 / n as f64;
        println!("{trimmed:.1} bytes per queued recipient once trimmed");
        assert!(
            trimmed <= TRIMMED_BYTES_MAX,
            "{trimmed:.1} bytes per queued recipient"
        );
    }

    /// The bound of the trimmed backlog above: 24 bytes of entry and the domain's fixed costs
    /// (slot, name, lookup entry, wake-up) shared by its ten recipients.
    const TRIMMED_BYTES_MAX: f64 = 46.0;
}

#[test]
fn a_domains_lanes_are_separate_queues_that_admin_commands_treat_as_one() {
    let mut qs = Queues::new(10);
    let a = qs.queue_id("example.com", "tenant-a", 0);
    let b = qs.queue_id("example.com", "tenant-b", 0);
    let b2 = qs.queue_id("example.com", "tenant-b", 2);
    assert_ne!(a, b);
    assert_ne!(b, b2);
    assert_eq!(qs.queue_id("example.com", "tenant-a", 0), a, "found again");
    assert_eq!(qs.name(b2), Some("example.com"));
    assert_eq!(qs.tenant(b2), Some("tenant-b"));
    assert_eq!(qs.source(b2), Some(2));
    qs.schedule(a, entry(0, 1, 0));
    qs.schedule(b, entry(0, 2, 0));
    qs.schedule(b2, entry(9_000, 3, 0));
    qs.promote_due(10);
    let mut ready: Vec<DomainId> = qs.ready_domains().collect();
    ready.sort();
    assert_eq!(ready, [a, b], "each lane is ready on its own");
    let s = qs.stats(10_000);
    assert_eq!((s.len(), s[0].depth, s[0].ready), (1, 3, 2), "{s:?}");
    qs.suspend("example.com");
    assert_eq!(qs.ready_domains().count(), 0, "every lane suspended");
    let c = qs.queue_id("example.com", "tenant-c", 0);
    qs.schedule(c, entry(0, 4, 0));
    qs.promote_due(20);
    assert_eq!(qs.ready_domains().count(), 0, "a new lane starts suspended");
    assert!(qs.resume("example.com", 20));
    assert_eq!(qs.ready_domains().count(), 3);
    assert!(qs.retry_now("example.com", 30));
    assert_eq!(qs.ready_len(b2), 1, "retry-now reaches every lane");
    let some = qs.drain_up_to("example.com", 2);
    assert_eq!(some.len(), 2);
    assert_eq!(qs.total(), 2, "the rest stays queued");
    assert_eq!(qs.drain("example.com").len(), 2);
    for id in [a, b, b2, c] {
        assert!(qs.remove_if_idle(id));
    }
    assert_eq!(
        qs.lookup("example.com"),
        None,
        "the domain goes with its last lane"
    );
}

/// Entries that arrive one at a time, are attempted and wait an hour leave a stale wake-up per
/// arrival; the gauges' trim keeps one per queue, and every entry still comes due on time.
#[test]
fn the_trim_keeps_one_wake_up_per_queue_and_loses_none() {
    const DOMAINS: u32 = 400;
    const ARRIVALS: u64 = 5;
    const HOUR_MS: u64 = 3_600_000;
    let mut q = Queues::new(100);
    let mut n = 0u64;
    for round in 0..ARRIVALS {
        let now = 1_000 + round;
        for d in 0..DOMAINS {
            let id = q.domain_id(&format!("d{d}.test"));
            n += 1;
            q.schedule(id, entry(now, n, 0));
        }
        q.promote_due(now);
        let ready: Vec<DomainId> = q.ready_domains().collect();
        for id in ready {
            for e in q.pop_batch(id, 10, now) {
                q.schedule(
                    id,
                    Entry {
                        due_unix_ms: HOUR_MS + e.message_id,
                        ..e
                    },
                );
            }
        }
    }
    assert!(
        q.wakeups.len() > DOMAINS as usize,
        "stale wake-ups piled up"
    );
    q.trim_memory();
    assert_eq!(q.wakeups.len(), DOMAINS as usize);
    q.promote_due(HOUR_MS + n);
    let ready: u64 = q
        .ready_domains()
        .collect::<Vec<_>>()
        .into_iter()
        .map(|id| q.ready_len(id) as u64)
        .sum();
    assert_eq!(ready, n, "every entry due in the hour is ready");
}
