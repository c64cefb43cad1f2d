//! A reclaimed segment's data file is unlinked at once, and its space given back a step of
//! `RELEASE_STEP_BYTES` at a time before it is closed (`release.rs`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{body, clear_config, data_files, envelope};
use petrel_spool::{Spool, RELEASE_PAUSE_MS, RELEASE_STEP_BYTES};
use petrel_testkit::glommio::run;

/// Whether this process still holds `path` open (unlinked files show as "<path> (deleted)").
fn still_open(path: &Path) -> bool {
    let name = path.to_string_lossy().to_string();
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| target.to_string_lossy().starts_with(&name))
}

#[test]
fn a_reclaimed_segment_is_unlinked_at_once_and_given_back_a_step_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let mut cfg = clear_config(&root, 0);
        cfg.segment_size_max_bytes = 7 << 20;
        let (spool, _) = Spool::open(cfg).await.unwrap();
        let mut first = Vec::new();
        for n in 0..6 {
            first.push(
                spool
                    .store(&envelope(n, 1), &body(n, 1 << 20))
                    .await
                    .unwrap(),
            );
        }
        let files = data_files(&root, 0);
        assert_eq!(files.len(), 1);
        let old = files[0].clone();
        let len = std::fs::metadata(&old).unwrap().len();
        assert!(len > 2 * RELEASE_STEP_BYTES, "{len} bytes");
        // The next message does not fit: a new segment; the old one is sealed.
        let kept = spool
            .store(&envelope(9, 1), &body(9, 2 << 20))
            .await
            .unwrap();
        assert_eq!(data_files(&root, 0).len(), 2);
        let before = spool.release_steps();
        for id in first {
            spool.remove(id).await.unwrap();
        }
        // The last removal reclaimed the segment: its name is gone at once.
        assert!(!old.exists(), "unlinked");
        assert!(still_open(&old), "its space is given back afterwards");
        let want = len.div_ceil(RELEASE_STEP_BYTES);
        let deadline = Instant::now() + Duration::from_secs(30);
        while (spool.release_steps() - before < want || still_open(&old))
            && Instant::now() < deadline
        {
            glommio::timer::sleep(Duration::from_millis(RELEASE_PAUSE_MS)).await;
        }
        assert_eq!(
            spool.release_steps() - before,
            want,
            "{len} bytes in steps of {RELEASE_STEP_BYTES}"
        );
        assert!(!still_open(&old), "closed once empty");
        // The rest of the spool is untouched.
        assert_eq!(spool.read_body(kept).await.unwrap(), body(9, 2 << 20));
        spool.close().await.unwrap();
    });
}

#[test]
fn an_empty_segment_found_at_open_is_given_back_a_step_at_a_time_too() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (old, len) = run({
        let root = root.clone();
        move || async move {
            // Every message removed while its segment is still the active one: nothing to
            // reclaim until the next open starts a new segment.
            let (spool, _) = Spool::open(clear_config(&root, 0)).await.unwrap();
            for n in 0..6 {
                let id = spool
                    .store(&envelope(n, 1), &body(n, 1 << 20))
                    .await
                    .unwrap();
                spool.remove(id).await.unwrap();
            }
            spool.close().await.unwrap();
            let old = data_files(&root, 0).pop().unwrap();
            let len = std::fs::metadata(&old).unwrap().len();
            (old, len)
        }
    });
    assert!(len > 2 * RELEASE_STEP_BYTES, "{len} bytes");
    run(move || async move {
        let (spool, _) = Spool::open(clear_config(&root, 0)).await.unwrap();
        assert!(!old.exists(), "the empty segment is deleted at open");
        let want = len.div_ceil(RELEASE_STEP_BYTES);
        let deadline = Instant::now() + Duration::from_secs(30);
        while (spool.release_steps() < want || still_open(&old)) && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(RELEASE_PAUSE_MS)).await;
        }
        assert_eq!(spool.release_steps(), want, "{len} bytes");
        assert!(!still_open(&old), "closed once empty");
        spool.close().await.unwrap();
    });
}
