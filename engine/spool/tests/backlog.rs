//! Opening early (issue 17): the spool takes new messages before its backlog is read, the
//! backlog hands over every message it held exactly once, ids are never reused, and a backlog
//! cut short (a shutdown, a crash) leaves everything for the next start.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::rc::Rc;

use common::{body, config, data_files, envelope};
use petrel_spool::{
    FileMode, MessageId, RecipientState, RecipientUpdate, Spool, SpoolConfig, SpooledMessage,
};
use petrel_testkit::glommio::run;

/// Messages stored before the restart.
const OLD_MESSAGES: u64 = 1_500;
/// Small segments, so the backlog is dozens of them.
const SEGMENT_BYTES: u64 = 64 << 10;

fn small(root: &Path) -> SpoolConfig {
    let mut cfg = config(root, 3);
    cfg.segment_size_max_bytes = SEGMENT_BYTES;
    cfg
}

/// Stores `OLD_MESSAGES`, removes every fifth and defers the first recipient of every
/// seventh; returns the live ids with their `n`, and what each deferred one was given.
async fn fill(root: &Path) -> (BTreeMap<MessageId, u64>, BTreeMap<MessageId, u32>) {
    let (spool, _) = Spool::open(small(root)).await.expect("open");
    let mut live = BTreeMap::new();
    let mut deferred = BTreeMap::new();
    for n in 0..OLD_MESSAGES {
        let id = spool
            .store(&envelope(n, 2), &body(n, 600))
            .await
            .expect("store");
        if n % 5 == 0 {
            spool.remove(id).await.expect("remove");
            continue;
        }
        if n % 7 == 0 {
            let u = RecipientUpdate {
                index: 0,
                state: RecipientState::Pending,
                attempts: 3,
                next_attempt_unix_ms: 42,
                last_reply: Some("451 later".into()),
            };
            spool.update(id, &[u]).await.expect("update");
            deferred.insert(id, 3);
        }
        live.insert(id, n);
    }
    spool.close().await.expect("close");
    (live, deferred)
}

#[test]
fn new_mail_is_taken_before_the_backlog_is_read_and_the_backlog_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (live, deferred) = fill(&root).await;
        let highest_old = *live.keys().next_back().expect("some live");
        let (spool, backlog) = Spool::open_early(small(&root), FileMode::default())
            .await
            .expect("open early");
        assert!(backlog.segments() > 10, "{} segments", backlog.segments());
        // Nothing of the backlog is known yet, but the figures count it (admission).
        let before = spool.stats();
        assert!(
            before.messages >= live.len() as u64,
            "estimate {} for {} live",
            before.messages,
            live.len()
        );
        assert!(spool.read_body(highest_old).await.is_err(), "not read yet");
        // A new message is taken, durable and readable while the backlog waits.
        let new_id = spool
            .store(&envelope(9_999, 1), &body(9_999, 300))
            .await
            .expect("store before the backlog is read");
        assert!(new_id > highest_old, "{new_id:?} reuses the old range");
        assert_eq!(
            spool.read_body(new_id).await.expect("read"),
            body(9_999, 300)
        );
        // The backlog runs beside more new stores, as in a shard.
        let spool = Rc::new(spool);
        let handed: Rc<RefCell<Vec<SpooledMessage>>> = Rc::default();
        let sink = handed.clone();
        let reader = glommio::spawn_local(async move {
            backlog
                .run(&mut |m| sink.borrow_mut().push(m))
                .await
                .expect("backlog")
        });
        let mut new_ids = vec![new_id];
        for n in 10_000..10_200u64 {
            let s = spool.clone();
            new_ids.push(
                s.store(&envelope(n, 1), &body(n, 300))
                    .await
                    .expect("store"),
            );
        }
        let recovery = reader.await;
        let handed = handed.take();
        assert_eq!(recovery.messages_recovered, live.len() as u64);
        let ids: Vec<MessageId> = handed.iter().map(|m| m.id).collect();
        let unique: HashSet<MessageId> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "a message handed over twice");
        assert_eq!(
            unique,
            live.keys().copied().collect::<HashSet<_>>(),
            "the backlog is exactly the live messages"
        );
        assert!(new_ids.iter().all(|id| !unique.contains(id)));
        assert_eq!(
            new_ids.iter().collect::<HashSet<_>>().len(),
            new_ids.len(),
            "new ids are unique"
        );
        for m in &handed {
            let n = live[&m.id];
            assert_eq!(m.envelope.mail_from, envelope(n, 2).mail_from);
            let attempts = m.envelope.recipients[0].attempts;
            assert_eq!(attempts, deferred.get(&m.id).copied().unwrap_or(0));
        }
        // Once read, old messages are the spool's like any other: read, update, remove.
        assert_eq!(
            spool.read_body(highest_old).await.expect("read old"),
            body(live[&highest_old], 600)
        );
        let after = spool.stats();
        assert_eq!(after.messages, (live.len() + new_ids.len()) as u64);
        for id in live.keys() {
            spool.remove(*id).await.expect("remove old");
        }
        // Every old segment is empty now and gone; only the segments of this run are left.
        let files = data_files(&root, 3).len() as u64;
        assert_eq!(spool.stats().segments, files);
        assert!(files <= 4, "{files} data files left");
        Rc::try_unwrap(spool)
            .expect("one handle")
            .close()
            .await
            .expect("close");
        let (_, recovery) = Spool::open(small(&root)).await.expect("reopen");
        let found: HashSet<MessageId> = recovery.messages.iter().map(|m| m.id).collect();
        assert_eq!(found, new_ids.iter().copied().collect::<HashSet<_>>());
    });
}

#[test]
fn a_backlog_cut_short_is_read_again_at_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (live, _) = fill(&root).await;
        // First start: a new message, and the backlog read only in part (cancelled, as a
        // shutdown does).
        let (spool, backlog) = Spool::open_early(small(&root), FileMode::default())
            .await
            .expect("open early");
        let new_id = spool
            .store(&envelope(7_777, 1), &body(7_777, 100))
            .await
            .expect("store");
        let handed = Rc::new(RefCell::new(0u64));
        let count = handed.clone();
        let reader = glommio::spawn_local(async move {
            let _ = backlog.run(&mut |_| *count.borrow_mut() += 1).await;
        });
        // The reader awaits the disk for every segment: it is cut between two of them.
        let mut rounds = 0;
        while *handed.borrow() == 0 && rounds < 20_000 {
            glommio::timer::sleep(std::time::Duration::from_micros(50)).await;
            rounds += 1;
        }
        reader.cancel().await;
        assert!(
            (*handed.borrow() as usize) < live.len(),
            "the backlog ended before it was cut"
        );
        spool.close().await.expect("close");
        // Second start (the files are as a crash would leave them too): everything is there,
        // and the new id is not handed out again.
        let (spool, recovery) = Spool::open(small(&root)).await.expect("reopen");
        let mut expect: HashSet<MessageId> = live.keys().copied().collect();
        expect.insert(new_id);
        let found: Vec<MessageId> = recovery.messages.iter().map(|m| m.id).collect();
        assert_eq!(found.len(), expect.len(), "a message twice or missing");
        assert_eq!(found.into_iter().collect::<HashSet<_>>(), expect);
        let next = spool
            .store(&envelope(8_888, 1), &body(8_888, 100))
            .await
            .expect("store");
        assert!(next > new_id);
        spool.close().await.expect("close");
    });
}

#[test]
fn a_backlog_dropped_unread_leaves_the_spool_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (live, _) = fill(&root).await;
        for _ in 0..3 {
            let (spool, backlog) = Spool::open_early(small(&root), FileMode::default())
                .await
                .expect("open early");
            drop(backlog);
            spool.close().await.expect("close");
        }
        let (_, recovery) = Spool::open(small(&root)).await.expect("reopen");
        assert_eq!(recovery.messages.len(), live.len());
        let ids: HashSet<MessageId> = recovery.messages.iter().map(|m| m.id).collect();
        assert_eq!(ids, live.keys().copied().collect::<HashSet<_>>());
    });
}
