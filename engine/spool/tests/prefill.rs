//! Zeroes written ahead of a segment's end (`prefill`): the files really carry them, recovery
//! reads them as the end of the file (nothing counted as damage), a record torn inside them is
//! skipped alone, and a spool reopened after a crash (dropped without closing) gives back every
//! acknowledged message with its latest state and appends after them in a new segment.

mod common;

use std::path::{Path, PathBuf};

use common::{body, clear_config, delivered, envelope};
use petrel_spool::{
    RecipientState, Spool, SpoolConfig, PREFILL_ALIGN_BYTES, PREFILL_DATA_CHUNK_BYTES,
};
use petrel_testkit::glommio::run;

/// Messages stored per test: more than a data chunk's worth, so several fills run.
const MESSAGES: u64 = 600;
const BODY_BYTES: usize = 4000;

fn files(root: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("shard-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn cfg(root: &Path) -> SpoolConfig {
    clear_config(root, 0)
}

/// Stores `MESSAGES`, marks the first recipient of every third delivered and removes every
/// fifth; drops the spool without closing it. Returns the ids kept, in order.
fn write_and_crash(root: &Path) -> Vec<u64> {
    let root = root.to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(cfg(&root)).await.unwrap();
        let mut kept = Vec::new();
        for n in 0..MESSAGES {
            let id = spool
                .store(&envelope(n, 2), &body(n, BODY_BYTES))
                .await
                .unwrap();
            if n % 5 == 0 {
                spool.remove(id).await.unwrap();
            } else {
                if n % 3 == 0 {
                    spool.update(id, &[delivered(0)]).await.unwrap();
                }
                kept.push(id.0);
            }
        }
        // Every store was acknowledged (synced); journal writes ride on those syncs.
        drop(spool);
        kept
    })
}

#[test]
fn prefilled_segments_recover_whole_with_nothing_counted_as_damage() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let kept = write_and_crash(&root);

    let data = files(&root, ".data");
    assert_eq!(data.len(), 1);
    let len = std::fs::metadata(&data[0]).unwrap().len();
    let stored = MESSAGES * BODY_BYTES as u64;
    assert!(
        len > stored && len.is_multiple_of(PREFILL_ALIGN_BYTES),
        "the data file ends in prefilled zeroes: {len} bytes for {stored} of bodies"
    );
    assert!(len <= stored * 2 + 2 * PREFILL_DATA_CHUNK_BYTES);
    let bytes = std::fs::read(&data[0]).unwrap();
    assert!(
        bytes[bytes.len() - 4096..].iter().all(|&b| b == 0),
        "the tail is zeroes"
    );

    let root2 = root.clone();
    run(move || async move {
        let (spool, rec) = Spool::open(cfg(&root2)).await.unwrap();
        assert_eq!((rec.records_skipped, rec.bytes_skipped), (0, 0));
        let ids: Vec<u64> = rec.messages.iter().map(|m| m.id.0).collect();
        assert_eq!(ids, kept, "every acknowledged message, nothing removed");
        for m in &rec.messages {
            let n = m.envelope.received_unix_ms - 1_700_000_000_000;
            let want = if n % 3 == 0 {
                RecipientState::Delivered
            } else {
                RecipientState::Pending
            };
            assert_eq!(m.envelope.recipients[0].state, want, "message {n}");
            assert_eq!(
                spool.read_body(m.id).await.unwrap(),
                body(n, BODY_BYTES),
                "message {n}'s body"
            );
        }
        // Appending resumes in a new segment; the old one's zeroes are never written over.
        let id = spool
            .store(&envelope(9999, 1), &body(9999, 10))
            .await
            .unwrap();
        assert!(kept.iter().all(|k| *k < id.0), "ids are not reused");
        spool.close().await.unwrap();
    });
    assert_eq!(files(&root, ".data").len(), 2);
    assert_eq!(std::fs::metadata(&data[0]).unwrap().len(), len);
}

#[test]
fn a_record_torn_inside_prefilled_space_is_skipped_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let kept = write_and_crash(&root);
    let data = files(&root, ".data");

    // Tear the data file's last record (the store of message 599, kept): zero its second half,
    // as a write cut short by a power loss would leave it in space that was prefilled.
    let (offset, record_len) = {
        let bytes = std::fs::read(&data[0]).unwrap();
        let scan = petrel_spool::record::scan(&bytes);
        let last = scan.records.last().unwrap();
        (last.offset, last.record_len)
    };
    let mut bytes = std::fs::read(&data[0]).unwrap();
    let half = (offset + record_len / 2) as usize;
    bytes[half..(offset + record_len) as usize].fill(0);
    std::fs::write(&data[0], &bytes).unwrap();

    let root3 = root.clone();
    run(move || async move {
        let (spool, rec) = Spool::open(cfg(&root3)).await.unwrap();
        assert_eq!(rec.records_skipped, 1, "the torn record, and only it");
        let ids: Vec<u64> = rec.messages.iter().map(|m| m.id.0).collect();
        assert_eq!(ids, kept[..kept.len() - 1], "every other message");
        spool.close().await.unwrap();
    });
}
