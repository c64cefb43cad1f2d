//! Store/read/update/remove, recovery, group commit, damage handling, rollover and reclamation,
//! on real files with real glommio executors.

mod common;

use std::rc::Rc;

use common::{body, clear_config, config, data_files, delivered, envelope, inspect, journal_files};
use petrel_spool::{FileMode, MessageId, RecipientState, Spool, SpoolError};
use petrel_testkit::glommio::run;

#[test]
fn store_read_update_remove_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (spool, rec) = Spool::open(config(&root, 3)).await.unwrap();
        assert!(rec.messages.is_empty());
        let a = spool.store(&envelope(1, 3), &body(1, 1024)).await.unwrap();
        let b = spool.store(&envelope(2, 1), &body(2, 10)).await.unwrap();
        assert_eq!(a.shard(), 3);
        assert_eq!(b.sequence(), a.sequence() + 1);
        assert_eq!(format!("{a}").len(), 16);
        assert_eq!(spool.read_body(a).await.unwrap(), body(1, 1024));
        assert_eq!(spool.read_body(b).await.unwrap(), body(2, 10));
        spool.update(a, &[delivered(2)]).await.unwrap();
        let bad = spool.update(a, &[delivered(3)]).await.unwrap_err();
        assert!(
            matches!(
                bad,
                SpoolError::RecipientIndex {
                    index: 3,
                    recipients: 3,
                    ..
                }
            ),
            "{bad}"
        );
        assert!(!bad.is_transient());
        assert_eq!(spool.stats().messages, 2);
        spool.remove(b).await.unwrap();
        assert!(matches!(spool.read_body(b).await, Err(SpoolError::NotFound(id)) if id == b));
        assert!(matches!(
            spool.remove(b).await,
            Err(SpoolError::NotFound(_))
        ));
        let stats = spool.stats();
        assert_eq!((stats.messages, stats.segments), (1, 1));
        assert!(stats.bytes >= 1024);
        assert_eq!(spool.unhealthy_reason(), None);
        spool.close().await.unwrap();

        let (spool, rec) = Spool::open(config(&root, 3)).await.unwrap();
        assert_eq!(rec.messages.len(), 1);
        let m = &rec.messages[0];
        assert_eq!(m.id, a);
        assert_eq!(m.body_len_bytes, 1024);
        assert_eq!(m.envelope.recipients[2].state, RecipientState::Delivered);
        assert_eq!(
            m.envelope.recipients[2].last_reply.as_deref(),
            Some("250 2.0.0 ok")
        );
        assert_eq!(m.envelope.recipients[0].state, RecipientState::Pending);
        assert_eq!((rec.records_skipped, rec.bytes_skipped), (0, 0));
        assert_eq!(spool.read_body(a).await.unwrap(), body(1, 1024));
        // Ids continue after the highest ever seen, including removed ones.
        let c = spool.store(&envelope(3, 1), b"x").await.unwrap();
        assert_eq!(c.sequence(), b.sequence() + 1);
        spool.close().await.unwrap();
    });
}

#[test]
fn ids_survive_reclamation_of_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let mut last = MessageId(0);
        for round in 0..3u64 {
            let (spool, rec) = Spool::open(config(&root, 0)).await.unwrap();
            assert!(rec.messages.is_empty());
            let id = spool.store(&envelope(round, 1), b"body").await.unwrap();
            assert!(
                round == 0 || id.sequence() > last.sequence(),
                "{id} after {last}"
            );
            last = id;
            spool.remove(id).await.unwrap();
            spool.close().await.unwrap();
        }
        // Empty old segments are reclaimed at open; at most the newest two remain.
        assert!(data_files(&root, 0).len() <= 2);
    });
}

#[test]
fn concurrent_stores_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(config(&root, 1)).await.unwrap();
        let spool = Rc::new(spool);
        let base = spool.commits();
        let base_writes = spool.data_writes();
        spool.drain_sync_samples(|_| {});
        let stores = 64u64;
        let tasks: Vec<_> = (0..stores)
            .map(|n| {
                let spool = spool.clone();
                glommio::spawn_local(async move {
                    spool.store(&envelope(n, 2), &body(n, 1024)).await.unwrap()
                })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await);
        }
        let commits = spool.commits() - base;
        assert!(commits >= 1);
        assert!(
            commits * 4 <= stores,
            "{commits} commits for {stores} concurrent stores"
        );
        // The rounds kept for the metrics: one per commit, each store in exactly one.
        let (mut rounds, mut writers) = (0u64, 0u64);
        let dropped = spool.drain_sync_samples(|r| {
            rounds += 1;
            writers += r.writers;
            assert!(!r.duration.is_zero());
        });
        assert_eq!((rounds, writers, dropped), (commits, stores, 0));
        // Each round wrote its group's records with one `pwrite` before its fdatasync.
        let writes = spool.data_writes() - base_writes;
        assert!(
            writes <= commits,
            "{writes} data writes for {commits} commits of {stores} stores"
        );
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len() as u64, stores);
        for (n, id) in ids.iter().enumerate() {
            assert!(!spool.read_body(*id).await.unwrap().is_empty(), "{n}");
        }
        Rc::try_unwrap(spool).unwrap().close().await.unwrap();
    });
}

#[test]
fn torn_tail_is_skipped_counted_and_never_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let r = root.clone();
    let ids = run(move || async move {
        let (spool, _) = Spool::open(config(&r, 0)).await.unwrap();
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(spool.store(&envelope(n, 1), &body(n, 1000)).await.unwrap());
        }
        spool.close().await.unwrap();
        ids
    });
    let files = data_files(&root, 0);
    let last = files.last().unwrap();
    // The end of the last record (the file goes on with prefilled zeroes).
    let len = records_end(last);
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 300)
        .unwrap();
    let r = root.clone();
    run(move || async move {
        let (spool, rec) = Spool::open(config(&r, 0)).await.unwrap();
        let got: Vec<_> = rec.messages.iter().map(|m| m.id).collect();
        assert_eq!(got, ids[..4].to_vec());
        assert_eq!(rec.records_skipped, 1);
        assert!(
            rec.bytes_skipped > 700 && rec.bytes_skipped < 1100,
            "{}",
            rec.bytes_skipped
        );
        let new = spool.store(&envelope(9, 1), b"after").await.unwrap();
        assert!(new.sequence() > ids[3].sequence());
        spool.close().await.unwrap();
        // The damaged segment was not appended to: the new message lives in a newer file.
        let (spool, rec) = Spool::open(config(&r, 0)).await.unwrap();
        assert_eq!(rec.messages.len(), 5);
        assert_eq!(rec.records_skipped, 1);
        assert_eq!(spool.read_body(new).await.unwrap(), b"after");
        spool.close().await.unwrap();
    });
    assert_eq!(inspect(&root).unwrap().len(), 5);
}

/// In the clear, so the test can find the bytes to damage (`sealed.rs` damages sealed ones).
#[test]
fn flipped_bytes_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let r = root.clone();
    let ids = run(move || async move {
        let (spool, _) = Spool::open(clear_config(&r, 0)).await.unwrap();
        let mut ids = Vec::new();
        for n in 0..6 {
            ids.push(spool.store(&envelope(n, 1), &body(n, 500)).await.unwrap());
        }
        spool.close().await.unwrap();
        ids
    });
    let file = data_files(&root, 0).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    // Message 1's body (payload checksum) and message 3's magic (header, forces a resync).
    let find = |bytes: &[u8], needle: &[u8]| {
        bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    };
    let body1 = find(&bytes, b"Subject: message 1\r\n");
    bytes[body1 + 30] ^= 0x01;
    let env3 = find(&bytes, b"sender3@example.com");
    let header3 = bytes[..env3]
        .windows(4)
        .rposition(|w| w == b"PSPL")
        .unwrap();
    bytes[header3] ^= 0x80;
    std::fs::write(&file, &bytes).unwrap();
    let r = root.clone();
    let expect: Vec<_> = [0, 2, 4, 5].iter().map(|&i| ids[i]).collect();
    let e = expect.clone();
    run(move || async move {
        let (spool, rec) = Spool::open(clear_config(&r, 0)).await.unwrap();
        let got: Vec<_> = rec.messages.iter().map(|m| m.id).collect();
        assert_eq!(got, e);
        assert_eq!(rec.records_skipped, 2);
        assert!(rec.bytes_skipped >= 1000, "{}", rec.bytes_skipped);
        for (i, id) in [0u64, 2, 4, 5].iter().zip(&e) {
            assert_eq!(spool.read_body(*id).await.unwrap(), body(*i, 500));
        }
        spool.close().await.unwrap();
    });
    let offline: Vec<_> = petrel_spool::inspect(&root, None)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(offline, expect);
}

#[test]
fn rollover_and_reclamation_delete_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let r = root.clone();
    run(move || async move {
        let mut cfg = config(&r, 2);
        cfg.segment_size_max_bytes = 4096;
        let (spool, _) = Spool::open(cfg.clone()).await.unwrap();
        let mut ids = Vec::new();
        for n in 0..12 {
            ids.push(spool.store(&envelope(n, 1), &body(n, 1024)).await.unwrap());
        }
        let segments = spool.stats().segments;
        assert!(segments >= 4, "{segments} segments");
        assert_eq!(data_files(&r, 2).len() as u64, segments);
        // Journal some updates, then remove all but the last message.
        for id in &ids {
            spool.update(*id, &[delivered(0)]).await.unwrap();
        }
        for id in &ids[..11] {
            spool.remove(*id).await.unwrap();
        }
        // Sealed segments with no live message are gone; the one holding the last message and
        // the active one remain.
        let left = spool.stats().segments;
        assert!(left <= 2, "{left} segments left");
        assert_eq!(data_files(&r, 2).len() as u64, left);
        assert_eq!(journal_files(&r, 2).len() as u64, left);
        assert_eq!(spool.read_body(ids[11]).await.unwrap(), body(11, 1024));
        spool.close().await.unwrap();
        let (spool, rec) = Spool::open(cfg).await.unwrap();
        assert_eq!(rec.messages.len(), 1);
        assert_eq!(
            rec.messages[0].envelope.recipients[0].state,
            RecipientState::Delivered
        );
        spool.remove(ids[11]).await.unwrap();
        spool.close().await.unwrap();
    });
}

#[test]
fn inspect_matches_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let r = root.clone();
    let live = run(move || async move {
        for shard in [0u8, 1] {
            let (spool, _) = Spool::open(config(&r, shard)).await.unwrap();
            for n in 0..4 {
                let id = spool.store(&envelope(n, 2), &body(n, 64)).await.unwrap();
                if n == 1 {
                    spool.remove(id).await.unwrap();
                } else {
                    spool.update(id, &[delivered(1)]).await.unwrap();
                }
            }
            spool.close().await.unwrap();
        }
        let mut all = Vec::new();
        for shard in [0u8, 1] {
            let (spool, rec) = Spool::open(config(&r, shard)).await.unwrap();
            all.extend(rec.messages);
            spool.close().await.unwrap();
        }
        all
    });
    let offline = inspect(&root).unwrap();
    assert_eq!(offline.len(), 6);
    assert_eq!(offline, live);
    assert!(inspect(&root.join("missing")).unwrap().is_empty());
}

#[test]
fn direct_io_mode_round_trip_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let mut cfg = config(&root, 0);
        cfg.segment_size_max_bytes = 8192;
        let (spool, _) = Spool::open_with_mode(cfg.clone(), FileMode::Direct)
            .await
            .unwrap();
        let mut ids = Vec::new();
        for n in 0..10 {
            ids.push(
                spool
                    .store(&envelope(n, 1), &body(n, 1024 + n as usize * 37))
                    .await
                    .unwrap(),
            );
        }
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(
                spool.read_body(*id).await.unwrap(),
                body(n as u64, 1024 + n * 37)
            );
        }
        spool.close().await.unwrap();
        let (spool, rec) = Spool::open_with_mode(cfg, FileMode::Direct).await.unwrap();
        assert_eq!(rec.messages.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
        assert_eq!(rec.records_skipped, 0);
        for id in &ids {
            spool.remove(*id).await.unwrap();
        }
        spool.close().await.unwrap();
    });
}

#[test]
fn limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let mut cfg = config(&root, 0);
        cfg.segment_size_max_bytes = 100;
        assert!(matches!(Spool::open(cfg).await, Err(SpoolError::Config(_))));
        let (spool, _) = Spool::open(config(&root, 0)).await.unwrap();
        let huge = vec![b'x'; petrel_spool::record::BODY_SIZE_MAX_BYTES + 1];
        let err = spool.store(&envelope(0, 1), &huge).await.unwrap_err();
        assert!(
            matches!(err, SpoolError::TooLarge { what: "body", .. }),
            "{err}"
        );
        assert!(!err.is_transient());
        spool.close().await.unwrap();
    });
}

#[test]
fn journal_writes_are_synced_soon_without_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(config(&root, 0)).await.unwrap();
        let id = spool.store(&envelope(0, 2), b"body").await.unwrap();
        let before = spool.commits();
        let journal_syncs = spool.journal_syncs();
        let delay = std::time::Duration::from_millis(petrel_spool::JOURNAL_SYNC_DELAY_MS * 3);
        // Until the periodic journal sync has run (bounded: a loaded machine may be slow).
        let synced_after = |n: u64| {
            let spool = &spool;
            async move {
                for _ in 0..50 {
                    if spool.journal_syncs() > n {
                        break;
                    }
                    glommio::timer::sleep(delay).await;
                }
                spool.journal_syncs()
            }
        };
        spool.update(id, &[delivered(0)]).await.unwrap();
        // The update returns before any sync; the periodic journal sync follows shortly, beside
        // the group commit (no store waits for it).
        assert_eq!(spool.journal_syncs(), journal_syncs);
        assert_eq!(synced_after(journal_syncs).await, journal_syncs + 1);
        assert_eq!(spool.commits(), before);
        // The buffered record was written before that sync.
        let journal = journal_files(&root, 0).pop().expect("a journal");
        let written = records_end(&journal);
        assert!(written > 0, "journal on disk after the periodic sync");
        // A store right after an update syncs its own record, not the journal: an
        // acknowledgement does not wait for others' delivery updates.
        spool.update(id, &[delivered(1)]).await.unwrap();
        spool.store(&envelope(1, 1), b"x").await.unwrap();
        assert_eq!(spool.commits(), before + 1);
        assert_eq!(
            spool.journal_syncs(),
            journal_syncs + 1,
            "the store left the journal alone"
        );
        // The periodic sync covers the update.
        assert_eq!(synced_after(journal_syncs + 1).await, journal_syncs + 2);
        assert!(records_end(&journal) > written);
        assert_eq!(spool.commits(), before + 1);
        glommio::timer::sleep(delay).await;
        // The timer is armed by journal writes only.
        assert_eq!(spool.journal_syncs(), journal_syncs + 2);
        spool.close().await.unwrap();
    });
}

#[test]
fn bodies_read_back_from_disk_with_the_cache_off_or_outgrown() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        for cache in [0usize, 8 * 1024] {
            let mut cfg = config(&root, 1);
            cfg.body_cache_bytes_max = cache;
            let (spool, _) = Spool::open(cfg).await.unwrap();
            let mut ids = Vec::new();
            for n in 0..40u64 {
                ids.push((
                    n,
                    spool.store(&envelope(n, 1), &body(n, 1000)).await.unwrap(),
                ));
            }
            // With an 8 KiB cache only the newest few bodies are in memory; the rest come from
            // the segment, and both must be byte-identical to what was stored.
            for (n, id) in &ids {
                assert_eq!(
                    spool.read_body(*id).await.unwrap(),
                    body(*n, 1000),
                    "cache {cache}"
                );
            }
            for (_, id) in &ids {
                spool.remove(*id).await.unwrap();
            }
            spool.close().await.unwrap();
        }
    });
}

#[test]
fn many_buffered_journal_records_survive_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(config(&root, 2)).await.unwrap();
        let mut ids = Vec::new();
        for n in 0..3000u64 {
            ids.push(spool.store(&envelope(n, 2), b"b").await.unwrap());
        }
        // Enough records to pass the journal buffer bound several times over.
        for (i, id) in ids.iter().enumerate() {
            if i % 2 == 0 {
                spool.remove(*id).await.unwrap();
            } else {
                spool.update(*id, &[delivered(1)]).await.unwrap();
            }
        }
        spool.close().await.unwrap();
        let (spool, rec) = Spool::open(config(&root, 2)).await.unwrap();
        assert_eq!(rec.messages.len(), 1500);
        assert_eq!((rec.records_skipped, rec.bytes_skipped), (0, 0));
        for m in &rec.messages {
            assert_eq!(m.envelope.recipients[1].state, RecipientState::Delivered);
            assert_eq!(m.envelope.recipients[0].state, RecipientState::Pending);
        }
        spool.close().await.unwrap();
    });
}

/// An id reserved before the store (the engine writes it into the message first) is stored
/// under, recovered, and never handed out again once stored; one from elsewhere is refused.
#[test]
fn reserved_ids_are_stored_under_and_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(config(&root, 2)).await.unwrap();
        let reserved = spool.reserve_id().unwrap();
        assert_eq!(reserved.shard(), 2);
        // A store in between takes the next id; the reserved one is stored later.
        let other = spool.store(&envelope(1, 1), b"other").await.unwrap();
        assert_eq!(other.sequence(), reserved.sequence() + 1);
        let envelope_r = envelope(2, 1);
        let attribution = petrel_spool::Attribution::default();
        let stored = spool
            .store_attributed_as(Some(reserved), &envelope_r, &attribution, b"reserved")
            .await
            .unwrap();
        assert_eq!(stored, reserved);
        assert_eq!(spool.read_body(reserved).await.unwrap(), b"reserved");
        for foreign in [MessageId::new(3, 0), MessageId::new(2, 1_000)] {
            let e = spool
                .store_attributed_as(Some(foreign), &envelope_r, &attribution, b"x")
                .await
                .unwrap_err();
            assert!(
                matches!(e, SpoolError::NotReserved(id) if id == foreign.0),
                "{e}"
            );
        }
        // Reserved and never stored (the message was refused): nothing was accepted under it.
        let _unused = spool.reserve_id().unwrap();
        spool.close().await.unwrap();

        let (spool, rec) = Spool::open(config(&root, 2)).await.unwrap();
        let mut ids: Vec<MessageId> = rec.messages.iter().map(|m| m.id).collect();
        ids.sort();
        assert_eq!(ids, vec![reserved, other]);
        let next = spool.store(&envelope(3, 1), b"next").await.unwrap();
        assert!(next.sequence() > other.sequence(), "{next} after {other}");
        spool.close().await.unwrap();
    });
}

/// Where a segment file's records end: it may go on with zeroes written ahead (prefill).
fn records_end(path: &std::path::Path) -> u64 {
    petrel_spool::record::scan(&std::fs::read(path).unwrap()).valid_end
}
