//! Tenant export (issue 16) on SQLite; the same scenarios run on PostgreSQL in `pg.rs`: the
//! round trip accounts for every row, and the archive is sealed at rest.

mod common;

use common::export::{conflicts_failures_and_purge, round_trip, MARKER_NAME};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_round_trip_accounts_for_every_row() {
    let h = common::start().await;
    let db = common::suppressions::db(&h, None).await;
    round_trip(&h, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_interrupted_jobs_and_the_purge() {
    let h = common::start().await;
    let db = common::suppressions::db(&h, None).await;
    conflicts_failures_and_purge(&h, &db).await;
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .expect("read")
                .windows(needle.len())
                .any(|w| w == needle)
            {
                hits.push(path);
            }
        }
    }
    hits
}

/// The archive holds the tenant's name (its `tenant.create` audit row), which the database
/// keeps sealed everywhere else: no file of the control plane's directory (the SQLite
/// database and its log) holds it in the clear, so the stored chunks are sealed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_archive_is_sealed_at_rest() {
    let h = common::start().await;
    let db = common::suppressions::db(&h, None).await;
    let done = round_trip(&h, &db).await;
    let marker = MARKER_NAME.as_bytes();
    assert!(
        done.archive.windows(marker.len()).any(|w| w == marker),
        "the marker is in the archive"
    );
    let control = h.dir.path().join("control");
    assert!(control.join("petrel.db").exists());
    assert_eq!(
        files_containing(&control, marker),
        Vec::<std::path::PathBuf>::new()
    );
    // And the digest line is not in the clear either.
    let end = done
        .archive
        .split(|b| *b == b'\n')
        .rev()
        .find(|l| !l.is_empty())
        .expect("end line");
    assert!(files_containing(&control, end).is_empty());
    assert!(!done.export_id.is_empty() && !done.tenant.is_empty());
}
