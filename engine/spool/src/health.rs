//! Getting well again without a restart (issue 17). A spool stops taking messages when a data
//! write fails (`write_failed`: a full disk, a read-only remount, no inodes left) or when an
//! fdatasync fails (`fatal`). While it is so, a probe runs every [`HEALTH_PROBE_INTERVAL_MS`]:
//! it creates a file in the shard's directory, writes [`HEALTH_PROBE_BYTES`], syncs it and
//! removes it. Once that works:
//!
//! - after a failed write, the spool simply takes messages again (the failed write's bytes are
//!   a damaged stretch that recovery skips; every acknowledged record is whole and synced);
//! - after a failed sync, the files that saw it are not trusted again (Linux may have dropped
//!   the failed pages and cleared the error, so a later sync of the same file proves nothing):
//!   the active segment is sealed and a new one started, so every record acknowledged from then
//!   on is in a fresh file. The messages whose store failed were refused (never acknowledged);
//!   journal records (recipient updates, removals) of the failed sync may be lost, which can
//!   only make a message be delivered again after a restart, never lost.
//!
//! The probe is armed by whoever asks [`crate::Spool::unhealthy_reason`] (each SMTP MAIL, and
//! the engine's gauge loop), so an idle engine heals too.

use std::rc::Rc;
use std::time::Duration;

use crate::error::SpoolError;
use crate::file::{FileMode, SegFile};
use crate::segments::{close_file, Inner};

/// How often an unhealthy spool checks whether writing works again.
pub const HEALTH_PROBE_INTERVAL_MS: u64 = 1_000;
/// Bytes the probe writes and syncs (a few blocks: a disk with less free is still full).
pub const HEALTH_PROBE_BYTES: usize = 64 << 10;
/// The probe's file in the shard directory (removed after each probe).
pub const HEALTH_PROBE_FILE: &str = "health-probe";

impl Inner {
    /// Starts the probe unless it runs already (see the module doc).
    pub(crate) fn arm_health_probe(self: &Rc<Self>) {
        if self.probe_armed.replace(true) {
            return;
        }
        let weak = Rc::downgrade(self);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_millis(HEALTH_PROBE_INTERVAL_MS)).await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.fatal.get().is_none() && !inner.write_failed.get() {
                    inner.probe_armed.set(false);
                    return;
                }
                if let Err(e) = inner.probe().await {
                    tracing::debug!(error = %e, "spool still cannot write");
                    continue;
                }
                match inner.heal().await {
                    Ok(()) => {
                        tracing::warn!(dir = %inner.dir.display(), "spool writes again: taking messages");
                        inner.probe_armed.set(false);
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "spool could not start a new segment yet"),
                }
            }
        })
        .detach();
    }

    /// Creates, writes, syncs and removes the probe file.
    async fn probe(&self) -> Result<(), SpoolError> {
        let path = self.dir.join(HEALTH_PROBE_FILE);
        // A probe cut short by a crash leaves its file: it is only ever this one name.
        let _ = std::fs::remove_file(&path);
        let file = SegFile::create(&path, FileMode::Buffered).await?;
        let written = match file.write_all_at(vec![0u8; HEALTH_PROBE_BYTES], 0).await {
            Ok(()) => file.fdatasync().await,
            Err(e) => Err(e),
        };
        let removed = file.remove().await;
        close_file(Rc::new(file)).await;
        written.and(removed)
    }

    /// Clears the unhealthy state (see the module doc); after a failed sync, in a new segment.
    async fn heal(self: &Rc<Self>) -> Result<(), SpoolError> {
        if self.fatal.get().is_some() {
            let _permit = self
                .reserve
                .acquire_permit(1)
                .await
                .map_err(|_| SpoolError::Unhealthy("spool closed"))?;
            self.rollover().await?;
            self.commit.clear_failure();
            self.fatal.set(None);
            // The new segment and the directory entry, durable before anything is acknowledged
            // in them.
            self.commit_now().await?;
        }
        self.write_failed.set(false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Envelope, Recipient, RecipientState};
    use crate::{Spool, SpoolConfig};

    fn envelope(n: u64) -> Envelope {
        Envelope {
            mail_from: format!("s{n}@a.test"),
            recipients: vec![Recipient {
                address: format!("r{n}@b.test"),
                state: RecipientState::Pending,
                attempts: 0,
                next_attempt_unix_ms: 0,
                last_reply: None,
            }],
            tenant: None,
            received_unix_ms: 1,
            client_addr: "127.0.0.1:1".into(),
            helo: "c.test".into(),
            authenticated_as: None,
            smtputf8: false,
            body_8bit: false,
            is_dsn: false,
        }
    }

    #[test]
    fn after_a_failed_sync_the_spool_heals_into_a_new_segment_and_keeps_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let (spool, _) = Spool::open(SpoolConfig::new(&root, 0)).await.expect("open");
                let first = spool.store(&envelope(1), b"one").await.expect("store");
                // What a failed fdatasync leaves: the sticky reason and a failed group commit.
                spool.inner.fatal.set(Some("fdatasync failed"));
                spool.inner.commit.fail_for_test();
                assert!(spool.store(&envelope(2), b"two").await.is_err());
                let before = spool.inner.state.borrow().active;
                assert_eq!(spool.unhealthy_reason(), Some("fdatasync failed"));
                // The probe armed by that question heals it within an interval or two.
                for _ in 0..50 {
                    if spool.unhealthy_reason().is_none() {
                        break;
                    }
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
                assert_eq!(spool.unhealthy_reason(), None);
                assert!(spool.inner.state.borrow().active > before, "a new segment");
                let third = spool
                    .store(&envelope(3), b"three")
                    .await
                    .expect("store again");
                assert!(!root.join("shard-0").join(HEALTH_PROBE_FILE).exists());
                spool.close().await.expect("close");
                let (reopened, recovery) = Spool::open(SpoolConfig::new(&root, 0))
                    .await
                    .expect("reopen");
                let ids: Vec<_> = recovery.messages.iter().map(|m| m.id).collect();
                assert!(ids.contains(&first) && ids.contains(&third), "{ids:?}");
                reopened.close().await.expect("close");
            })
            .expect("executor")
            .join()
            .expect("join");
    }

    #[test]
    fn after_a_failed_write_the_spool_takes_messages_again_once_writing_works() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let (spool, _) = Spool::open(SpoolConfig::new(&root, 0)).await.expect("open");
                spool.inner.write_failed.set(true);
                let before = spool.inner.state.borrow().active;
                assert_eq!(spool.unhealthy_reason(), Some("disk write failed"));
                glommio::timer::sleep(Duration::from_millis(HEALTH_PROBE_INTERVAL_MS * 2 + 200))
                    .await;
                assert_eq!(spool.unhealthy_reason(), None);
                assert_eq!(spool.inner.state.borrow().active, before, "same segment");
                spool.store(&envelope(1), b"one").await.expect("store");
                spool.close().await.expect("close");
            })
            .expect("executor")
            .join()
            .expect("join");
    }
}
