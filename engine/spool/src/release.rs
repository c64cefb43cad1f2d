//! The space of a reclaimed segment, given back a step at a time.
//!
//! Freeing a whole data file at once (64 MiB by default) makes ext4 discard all of its blocks at
//! once when the file system is mounted `discard`. Measured on this project's VM: about 65 MiB
//! discarded in 15 ms, and the commits' fdatasyncs that ran meanwhile took 10 ms at the median
//! instead of 0.2 ms, so every acknowledgement of those milliseconds waited (BENCHMARKS.md, issue
//! 17). So a reclaimed segment's files (and an empty segment's that the backlog finds at open,
//! while the shard serves) are unlinked at once (recovery never sees them again), and the open
//! data file is then shrunk by [`RELEASE_STEP_BYTES`] every [`RELEASE_PAUSE_MS`] on
//! glommio's blocking thread, down to nothing, before it is closed: each step's discard takes
//! about half a millisecond. RocksDB's delete scheduler truncates its files the same way.
//!
//! A crash meanwhile leaves what an unlinked open file always leaves (a journalled ext4 frees it
//! at mount, `fsck` without a journal), as a crash between the unlink and the close did before.
//! A step that fails ends the stepping: the close frees the rest at once. Data files written with
//! `O_DIRECT` have no plain handle here, and a file whose handle cannot be duplicated has none
//! either: those are closed at once.

use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::file::SegFile;
use crate::segments::{close_file, Inner};

/// Bytes of a reclaimed data file freed per step (about 0.5 ms of discard on a virtio disk).
pub const RELEASE_STEP_BYTES: u64 = 2 << 20;
/// Pause between two steps: a 64 MiB segment is given back in about a third of a second.
pub const RELEASE_PAUSE_MS: u64 = 10;

/// Shrinks `data` (already unlinked) to nothing a step at a time, then closes it, in a task of
/// its own; counts each step in `Inner::release_steps`.
pub(crate) fn release_gradually(inner: &Rc<Inner>, data: Rc<SegFile>) {
    let weak: Weak<Inner> = Rc::downgrade(inner);
    glommio::spawn_local(async move {
        if let Some(Ok(file)) = data.plain_handle() {
            shrink(&weak, file).await;
        }
        close_file(data).await;
    })
    .detach();
}

async fn shrink(inner: &Weak<Inner>, mut file: std::fs::File) {
    let mut len = match file.metadata() {
        Ok(m) => m.len(),
        Err(_) => return,
    };
    while len > 0 {
        len = len.saturating_sub(RELEASE_STEP_BYTES);
        let (back, result) = glommio::executor()
            .spawn_blocking(move || {
                let r = file.set_len(len);
                (file, r)
            })
            .await;
        file = back;
        if let Err(e) = result {
            tracing::debug!(error = %e, "shrinking a reclaimed segment failed; closing it");
            return;
        }
        if let Some(inner) = inner.upgrade() {
            inner.release_steps.set(inner.release_steps.get() + 1);
        }
        if len > 0 {
            glommio::timer::sleep(Duration::from_millis(RELEASE_PAUSE_MS)).await;
        }
    }
}
