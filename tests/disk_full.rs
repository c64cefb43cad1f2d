//! A full disk (issue 17): the engine's data directory on a small tmpfs the test mounts. While
//! the disk is full the engine refuses with `452 4.3.1` (or `451` for the message whose write
//! failed) and acknowledges nothing it has not stored; once space is freed it takes mail again
//! within 5 seconds, without a restart, and every acknowledged message is in the spool.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Size of the test's filesystem.
const TMPFS_SIZE: &str = "48m";

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path) -> Mounted {
    std::fs::create_dir_all(at).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE}"), "tmpfs"])
        .arg(at)
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "mounting a tmpfs needs root (the test kit runs as root)"
    );
    Mounted(at.to_path_buf())
}

/// Writes `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    // The last partial blocks too.
    while f.write(&[0xa5u8; 512]).is_ok_and(|n| n > 0) {
        total += 512;
    }
    total
}

/// About 216 KB: with 1 MiB segments, the disk fills at a segment boundary too.
fn send(addr: std::net::SocketAddr, n: u32) -> (u16, String) {
    let body = format!(
        "From: <a@src.test>\r\nTo: <b@dst.test>\r\nSubject: disk {n}\r\n\r\n{}\r\n",
        format!("{}\r\n", "x".repeat(70)).repeat(3_000)
    );
    send_one(addr, "a@src.test", "b@dst.test", &body)
}

#[test]
fn a_full_disk_refuses_then_heals_without_a_restart_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _mounted = mount_tmpfs(&data);
    let args = [
        "--no-delivery",
        "--shards",
        "1",
        "--trust-network",
        "127.0.0.0/8",
    ];
    // Small segments: a store while the disk is full also needs a new segment file.
    let engine = Engine::start_with(
        &data,
        &args,
        Some("[spool]\nsegment_size_max_bytes = 1048576\n"),
    );
    let mut acked = 0u64;
    for n in 0..5 {
        let (code, text) = send(engine.smtp, n);
        assert_eq!(code, 250, "{text}");
        acked += 1;
    }
    let filler = data.join("filler");
    assert!(fill(&filler) > 0);
    // Full: refused once the space the spool zeroed ahead of its segment's end is used up (at
    // most `PREFILL_DATA_CHUNK_BYTES` and a half past the records), and never a 250 for
    // something that was not stored, nor after a refusal.
    let mut refused = 0;
    for n in 5..15 {
        let (code, text) = send(engine.smtp, n);
        match code {
            250 => {
                assert_eq!(refused, 0, "taken after a refusal while still full: {text}");
                acked += 1;
            }
            451 | 452 => refused += 1,
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert!(refused >= 5, "a full disk must refuse: {refused} refused");
    assert!(
        std::fs::read_dir(data.join("spool").join("shard-0"))
            .unwrap()
            .count()
            >= 4,
        "the test crossed a segment boundary"
    );
    let (code, text) = send(engine.smtp, 15);
    assert_eq!(code, 452, "{text}");
    assert!(text.contains("4.3.1"), "{text}");

    // Space back: accepted again within 5 s, no restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    loop {
        let (code, text) = send(engine.smtp, 16);
        if code == 250 {
            acked += 1;
            break;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(5),
            "still refusing {:?} after space came back: {code} {text}",
            freed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Across further segment boundaries, all taken.
    for n in 17..25 {
        let (code, text) = send(engine.smtp, n);
        assert_eq!(code, 250, "{text}");
        acked += 1;
    }
    // The gauge follows within its publishing period.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = engine.scrape();
        if metrics.contains("petrel_spool_healthy{shard=\"0\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(engine.stop());
    assert_eq!(
        spool_count(&data),
        acked,
        "every acknowledged message is in the spool"
    );
}
