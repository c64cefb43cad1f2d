//! Crash test: a child process (this test binary, re-executed) stores messages in a loop and
//! prints each id right after `store` returns; the parent kill -9s it at random instants, then
//! checks that every printed id is in the spool exactly once, intact.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{body, config, envelope, inspect};
use petrel_spool::{FileMode, Spool};
use petrel_testkit::glommio::run;
use rand::Rng;

/// Set in the child's environment: the spool root to write to.
const CHILD_ENV: &str = "PETREL_SPOOL_CRASH_CHILD_ROOT";
/// Kill rounds.
const ROUNDS: usize = 5;
/// Each round kills the child within this long after it printed its first id.
const ROUND_KILL_MAX_MS: u64 = 1500;
/// A child stops by itself after this many stores or this long (it is normally killed first).
const CHILD_STORES_MAX: u64 = 200_000;
const CHILD_RUN_MAX: Duration = Duration::from_secs(10);
/// The parent waits at most this long for the child's first id.
const CHILD_START_MAX: Duration = Duration::from_secs(20);
/// Segment size in the child (small, so segments roll over and get reclaimed).
const SEGMENT_BYTES: u64 = 64 << 10;

fn body_len(seq: u64) -> usize {
    200 + (seq % 3000) as usize
}

/// Child mode: does nothing unless started by `kill_9_never_loses_an_acknowledged_message`.
#[test]
fn crash_child() {
    let Some(root) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let root = PathBuf::from(root);
    run(move || async move {
        let mut cfg = config(&root, 7);
        // Small segments: rollover and reclamation happen while the child is being killed.
        cfg.segment_size_max_bytes = SEGMENT_BYTES;
        // Opened early, as a shard does: the earlier rounds' messages are read while this
        // round stores, so a kill may land in the middle of reading them too.
        let (spool, backlog) = Spool::open_early(cfg, FileMode::default())
            .await
            .expect("child opens the spool");
        let backlog = glommio::spawn_local(async move {
            backlog
                .run(&mut |_| {})
                .await
                .expect("child reads the backlog")
        });
        let spool = std::rc::Rc::new(spool);
        let started = Instant::now();
        // A few concurrent storers so that group commits cover several messages.
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let spool = spool.clone();
                glommio::spawn_local(async move {
                    let mut out = std::io::stdout();
                    for _ in 0..CHILD_STORES_MAX / 4 {
                        if started.elapsed() > CHILD_RUN_MAX {
                            break;
                        }
                        let n = u64::from(rand::thread_rng().gen::<u32>());
                        let id = spool
                            .store(&envelope(n, 2), &body(n, body_len(n)))
                            .await
                            .expect("store");
                        // The envelope carries n; print both so the parent can check the body.
                        writeln!(out, "ID {} {}", id.0, n).expect("stdout");
                        out.flush().expect("stdout");
                        if n % 3 == 0 {
                            spool.remove(id).await.expect("remove");
                            writeln!(out, "DEL {}", id.0).expect("stdout");
                            out.flush().expect("stdout");
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        backlog.await;
    });
}

#[test]
fn kill_9_never_loses_an_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let mut acked: Vec<Acked> = Vec::new();
    let mut rng = rand::thread_rng();
    for round in 0..ROUNDS {
        let printed = run_child_and_kill(&root, rng.gen_range(10..ROUND_KILL_MAX_MS));
        assert!(
            !printed.is_empty(),
            "round {round}: the child acknowledged nothing"
        );
        let this_round = printed.len();
        acked.extend(printed);
        let skipped = check(&root, &acked);
        eprintln!(
            "round {round}: {this_round} acknowledged, {} in total, {skipped} records skipped",
            acked.len()
        );
    }
}

/// An id the child printed after `store` returned; `removed` once `remove` returned too.
#[derive(Debug, Clone, Copy)]
struct Acked {
    id: u64,
    n: u64,
    removed: bool,
}

/// Starts the child, kills it `kill_after_ms` after its first id, returns the ids it printed.
fn run_child_and_kill(root: &Path, kill_after_ms: u64) -> Vec<Acked> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let reader = std::thread::spawn(move || {
        let mut ids = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may print "test crash_child ... " without a newline before the first id.
            let mut parts = line.split(' ').skip_while(|t| *t != "ID" && *t != "DEL");
            match parts.next() {
                Some("ID") => {
                    let id: u64 = parts.next().unwrap().parse().unwrap();
                    let n: u64 = parts.next().unwrap().parse().unwrap();
                    if ids.is_empty() {
                        let _ = tx.try_send(());
                    }
                    ids.push(Acked {
                        id,
                        n,
                        removed: false,
                    });
                }
                Some("DEL") => {
                    let id: u64 = parts.next().unwrap().parse().unwrap();
                    let acked = ids
                        .iter_mut()
                        .rev()
                        .find(|a| a.id == id)
                        .expect("DEL after ID");
                    acked.removed = true;
                }
                _ => {}
            }
        }
        ids
    });
    let first = rx.recv_timeout(CHILD_START_MAX);
    if first.is_ok() {
        std::thread::sleep(Duration::from_millis(kill_after_ms));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap()
}

/// Every acknowledged id is present exactly once with its envelope and body (removed ones may
/// come back: removals are not synced before `remove` returns); offline inspect agrees.
fn check(root: &Path, acked: &[Acked]) -> u64 {
    let root_owned = root.to_path_buf();
    let acked_owned = acked.to_vec();
    let skipped = run(move || async move {
        let mut cfg = config(&root_owned, 7);
        cfg.segment_size_max_bytes = SEGMENT_BYTES;
        let (spool, rec) = Spool::open(cfg).await.unwrap();
        let mut seen = HashSet::new();
        for m in &rec.messages {
            assert!(seen.insert(m.id.0), "id {} recovered twice", m.id);
        }
        for a in &acked_owned {
            let Some(m) = rec.messages.iter().find(|m| m.id.0 == a.id) else {
                // Gone is right when the child removed it, including a removal whose journal
                // write landed but whose "DEL" line the kill cut off (the child removes every
                // message with n % 3 == 0 right after acknowledging it).
                assert!(
                    a.removed || a.n % 3 == 0,
                    "acknowledged id {:016x} (n = {}) lost",
                    a.id,
                    a.n
                );
                continue;
            };
            assert_eq!(m.envelope, envelope(a.n, 2));
            let got = spool.read_body(m.id).await.unwrap();
            assert_eq!(got, body(a.n, body_len(a.n)), "body of {:016x}", a.id);
        }
        spool.close().await.unwrap();
        rec.records_skipped
    });
    // A kill can tear at most the records in flight; each open counts the old torn tails again.
    assert!(skipped <= (ROUNDS * 8) as u64, "{skipped} records skipped");
    let offline = inspect(root).unwrap();
    for a in acked.iter().filter(|a| !a.removed && a.n % 3 != 0) {
        assert_eq!(offline.iter().filter(|m| m.id.0 == a.id).count(), 1);
    }
    skipped
}
