use super::*;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("petrel-outbox-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn body(i: u64, size: usize) -> Vec<u8> {
    let mut v = format!("[{{\"i\":{i},\"pad\":\"").into_bytes();
    v.resize(size.saturating_sub(3).max(v.len()), b'x');
    v.extend_from_slice(b"\"}]");
    v
}

#[test]
fn synced_batches_are_offered_in_order_and_acks_free_them() {
    let d = dir("order");
    let o = Outbox::open(&d, OUTBOX_BYTES_MAX_DEFAULT, 1_000).expect("open");
    let a = o.append(&body(1, 100), 1).expect("append");
    assert_eq!(a, 1_000_000, "a fresh backlog starts at now_ms * 1000");
    assert!(
        o.unsent_after(0, 10).expect("read").is_empty(),
        "unsynced is invisible"
    );
    o.sync().expect("sync");
    let b = o.append(&body(2, 100), 1).expect("append");
    o.sync().expect("sync");
    let got = o.unsent_after(0, 10).expect("read");
    assert_eq!(got.iter().map(|g| g.seq).collect::<Vec<_>>(), vec![a, b]);
    assert_eq!(&*got[1].json, &body(2, 100)[..]);
    assert_eq!(o.unsent_after(a, 10).expect("read").len(), 1);
    o.ack(a).expect("ack");
    assert_eq!(o.unacked_batches(), 1);
    o.ack(b).expect("ack");
    assert_eq!(o.unacked_batches(), 0);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn reopening_offers_every_unacked_batch_again_and_never_reuses_a_seq() {
    let d = dir("reopen");
    let seqs: Vec<u64> = {
        let o = Outbox::open(&d, OUTBOX_BYTES_MAX_DEFAULT, 5).expect("open");
        let s = (0..5)
            .map(|i| o.append(&body(i, 200), 1).expect("append"))
            .collect();
        o.sync().expect("sync");
        s
    };
    let o = Outbox::open(&d, OUTBOX_BYTES_MAX_DEFAULT, 1).expect("reopen");
    let got = o.unsent_after(0, 100).expect("read");
    assert_eq!(got.iter().map(|g| g.seq).collect::<Vec<_>>(), seqs);
    for (i, b) in got.iter().enumerate() {
        assert_eq!(&*b.json, &body(i as u64, 200)[..]);
        assert_eq!(b.events, 1);
    }
    o.ack(seqs[4]).expect("ack all");
    let next = o.append(&body(9, 50), 1).expect("append");
    assert!(next > seqs[4], "seq moves on after a restart: {next}");
    o.sync().expect("sync");
    drop(o);
    // Everything acknowledged and the process restarts with an earlier clock: seqs still grow.
    let o = Outbox::open(&d, OUTBOX_BYTES_MAX_DEFAULT, 1).expect("reopen");
    let again = o.append(&body(10, 50), 1).expect("append");
    assert!(again > next);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_torn_tail_is_cut_off_and_the_rest_survives() {
    let d = dir("torn");
    {
        let o = Outbox::open(&d, OUTBOX_BYTES_MAX_DEFAULT, 7).expect("open");
        for i in 0..3 {
            o.append(&body(i, 300), 1).expect("append");
        }
        o.sync().expect("sync");
    }
    let seg = std::fs::read_dir(&d)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .expect("segment");
    let len = std::fs::metadata(&seg).expect("meta").len();
    let f = OpenOptions::new().write(true).open(&seg).expect("open seg");
    f.set_len(len - 10).expect("truncate"); // the last record loses its end
    drop(f);
    let o = Outbox::open(&d, OUTBOX_BYTES_MAX_DEFAULT, 7).expect("reopen");
    assert_eq!(o.recovered_torn, 1);
    assert_eq!(o.unsent_after(0, 10).expect("read").len(), 2);
    // Appends continue after the cut, and a later open sees them.
    let s = o.append(&body(5, 100), 1).expect("append");
    o.sync().expect("sync");
    drop(o);
    let o = Outbox::open(&d, OUTBOX_BYTES_MAX_DEFAULT, 7).expect("reopen");
    assert_eq!(o.recovered_torn, 0);
    let got = o.unsent_after(0, 10).expect("read");
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].seq, s);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_bound_says_full_and_acks_make_room_across_segments() {
    let d = dir("full");
    let max = 3 * OUTBOX_SEGMENT_BYTES;
    let o = Outbox::open(&d, max, 11).expect("open");
    let chunk = 1 << 20;
    let mut last = 0;
    while !o.is_full() {
        last = o.append(&body(last, chunk), 1).expect("append");
        o.sync().expect("sync");
    }
    assert!(o.bytes() >= max);
    let files = || {
        std::fs::read_dir(&d)
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log"))
            })
            .count()
    };
    assert!(files() >= 3, "rolled into segments");
    // Still appends past the bound (outcomes of accepted mail are never lost).
    let extra = o.append(&body(0, 100), 1).expect("append past the bound");
    o.sync().expect("sync");
    o.ack(extra).expect("ack");
    assert!(!o.is_full());
    assert_eq!(o.unacked_batches(), 0);
    assert_eq!(files(), 1, "only the (new) current segment is left");
    assert_eq!(o.bytes(), 0, "nothing unacknowledged");
    // Bodies beyond the cache are read back from disk.
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bodies_beyond_the_cache_are_read_back_and_a_refused_batch_is_set_aside() {
    let d = dir("cache");
    let o = Outbox::open(&d, u64::MAX, 13).expect("open");
    let size = 3 << 20;
    let n = OUTBOX_CACHE_BYTES_MAX / size + 3;
    let seqs: Vec<u64> = (0..n as u64)
        .map(|i| o.append(&body(i, size), 1).expect("append"))
        .collect();
    o.sync().expect("sync");
    let got = o.unsent_after(0, n).expect("read");
    assert_eq!(got.len(), n);
    for (i, b) in got.iter().enumerate() {
        assert_eq!(&*b.json, &body(i as u64, size)[..], "batch {i}");
    }
    o.set_aside(seqs[1], seqs[1]).expect("set aside");
    let left: Vec<u64> = o
        .unsent_after(0, n)
        .expect("read")
        .iter()
        .map(|g| g.seq)
        .collect();
    assert!(!left.contains(&seqs[1]));
    assert_eq!(left.len(), n - 1);
    let kept = std::fs::read(
        d.join(OUTBOX_REFUSED_DIR)
            .join(format!("batch-{}.json", seqs[1])),
    )
    .expect("refused copy");
    assert_eq!(kept, body(1, size));
    assert!(matches!(
        o.append(&vec![b'x'; OUTBOX_RECORD_BODY_MAX_BYTES + 1], 1),
        Err(OutboxError::TooLarge { .. })
    ));
    let _ = std::fs::remove_dir_all(&d);
}

/// Issue 16: with a keyring the bodies on disk are sealed (no recipient in the file), what the
/// sender gets after a restart is the JSON itself (from the cache read at open, and from disk
/// past it), a sealed backlog does not open without the keyring, and refused batches are set
/// aside sealed.
#[test]
fn sealed_bodies_hide_the_events_and_read_back_after_a_restart() {
    let d = dir("sealed");
    let kek = Arc::new(petrel_seal::KekFile::generate(&d.join("kek")).expect("kek"));
    let keys = Arc::new(petrel_seal::Keyring::open(&d.join("keys"), kek).expect("keyring"));
    let backlog = d.join("backlog");
    let marked = |i: u64| format!("[{{\"recipient\":\"marker-{i}@example.test\"}}]").into_bytes();
    let o = Outbox::open_sealed(
        &backlog,
        OUTBOX_BYTES_MAX_DEFAULT,
        1_000,
        Some(keys.clone()),
    )
    .expect("open");
    let a = o.append(&marked(1), 1).expect("append");
    let b = o.append(&marked(2), 1).expect("append");
    o.sync().expect("sync");
    assert_eq!(
        &*o.unsent_after(0, 10).expect("read")[0].json,
        &marked(1)[..]
    );
    drop(o);
    for f in std::fs::read_dir(&backlog).expect("dir") {
        let bytes = std::fs::read(f.expect("entry").path()).expect("read");
        assert!(!bytes.windows(7).any(|w| w == b"marker-"));
    }
    let o = Outbox::open_sealed(
        &backlog,
        OUTBOX_BYTES_MAX_DEFAULT,
        1_000,
        Some(keys.clone()),
    )
    .expect("reopen");
    let got = o.unsent_after(0, 10).expect("read");
    assert_eq!(got.iter().map(|g| g.seq).collect::<Vec<_>>(), vec![a, b]);
    assert_eq!(&*got[1].json, &marked(2)[..]);
    // Past the cache: read from disk and opened.
    let stored = o.lock().unacked[0].clone();
    assert_eq!(&*o.read_body(&stored).expect("from disk"), &marked(1)[..]);
    o.set_aside(a, a).expect("set aside");
    let aside = std::fs::read(
        backlog
            .join(OUTBOX_REFUSED_DIR)
            .join(format!("batch-{a}.json")),
    )
    .expect("set aside file");
    assert!(aside.starts_with(SEALED_BODY_PREFIX));
    drop(o);
    assert!(matches!(
        Outbox::open(&backlog, OUTBOX_BYTES_MAX_DEFAULT, 1_000),
        Err(OutboxError::Sealed { .. })
    ));
    let _ = std::fs::remove_dir_all(&d);
}
