//! The engine's side of the suppression feed on the link (see [`crate::wire`]): ask for what
//! comes after the set in force, build a full load page by page, apply deltas, and publish
//! each result to the shards through [`PolicyStore::publish_suppressions`].
//!
//! Building and applying are CPU work proportional to the set (a full load of 10 million
//! entries sorts 80 MB; a delta may trigger an overlay merge of the same size), so they run on
//! tokio's blocking pool, never on the link's reactor thread, which also serves DNS and
//! metrics. Pages and deltas are applied one at a time and in order: the session awaits each
//! before reading the next frame.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;

use crate::error::PolicyError;
use crate::store::PolicyStore;
use crate::suppression::{SuppressionChange, SuppressionSetBuilder, SET_ENTRIES_MAX};
use crate::wire::{write_frame, Frame, LoadPage};

/// At most one save of the set to disk per this long while deltas flow (a full load is saved
/// at once): an engine restarted without its control plane is at most this far behind.
pub const SUPPRESSION_SAVE_INTERVAL_MS: u64 = 30_000;

/// A full load in progress on one connection.
struct Loading {
    builder: SuppressionSetBuilder,
    version: u64,
    entries: usize,
}

/// One connection's suppression state.
pub(super) struct SuppressionFollower {
    loading: Option<Loading>,
    /// When the set was last saved (None: not on this connection).
    saved_at: Option<Instant>,
    /// A save is running (in the background: the feed never waits for the disk).
    saving: Arc<AtomicBool>,
}

impl SuppressionFollower {
    pub(super) fn new() -> SuppressionFollower {
        SuppressionFollower {
            loading: None,
            saved_at: None,
            saving: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Saves the set in force, after a full load or when the last save is old enough, in the
    /// background: the next delta never waits for a save (80 MB at 10 million entries). A save
    /// still running skips this one; the next due one catches up. A failed save is logged: the
    /// engine runs on, the next save may work.
    fn save(&mut self, store: &Arc<PolicyStore>, force: bool) {
        let due = self
            .saved_at
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(SUPPRESSION_SAVE_INTERVAL_MS));
        if !(force || due) {
            return;
        }
        if self.saving.swap(true, Ordering::AcqRel) {
            if force {
                self.saved_at = None; // the next delta saves at once
            }
            return;
        }
        self.saved_at = Some(Instant::now());
        let set = store.suppressions_full();
        let dir = store.dir().to_path_buf();
        let saving = Arc::clone(&self.saving);
        tokio::spawn(async move {
            let saved =
                tokio::task::spawn_blocking(move || crate::suppression::persist::save(&dir, &set))
                    .await;
            match saved {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "suppression list not saved"),
                Err(e) => tracing::error!(error = %e, "suppression save task failed"),
            }
            saving.store(false, Ordering::Release);
        });
    }

    /// Asks for what comes after the set in force (sent once, after `Hello`).
    pub(super) async fn start<W: AsyncWrite + Unpin>(
        &self,
        store: &PolicyStore,
        writer: &mut W,
    ) -> Result<(), PolicyError> {
        let version = store.suppressions().version();
        write_frame(writer, &Frame::SuppressionsSince { version }).await
    }

    /// A page of a full load: the last one replaces the set in force.
    pub(super) async fn load<W: AsyncWrite + Unpin>(
        &mut self,
        store: &Arc<PolicyStore>,
        page: LoadPage,
        writer: &mut W,
    ) -> Result<(), PolicyError> {
        if page.first {
            self.loading = Some(Loading {
                builder: SuppressionSetBuilder::new(
                    store.suppression_keyer().clone(),
                    page.version,
                    0,
                ),
                version: page.version,
                entries: 0,
            });
        }
        let Some(loading) = self.loading.as_mut() else {
            return Err(PolicyError::protocol(
                "suppression load page without a first page",
            ));
        };
        if page.version != loading.version {
            return Err(PolicyError::protocol(
                "suppression load pages disagree on their version",
            ));
        }
        loading.entries = loading.entries.saturating_add(page.entries.len());
        if loading.entries > SET_ENTRIES_MAX {
            return Err(PolicyError::protocol(format!(
                "suppression load beyond {SET_ENTRIES_MAX} entries"
            )));
        }
        for e in &page.entries {
            loading.builder.push(&e.scope, &e.address, e.reason);
        }
        if !page.last {
            return Ok(());
        }
        let Some(done) = self.loading.take() else {
            return Ok(());
        };
        let set = tokio::task::spawn_blocking(move || done.builder.finish())
            .await
            .map_err(|e| PolicyError::Io(std::io::Error::other(e.to_string())))?;
        let version = set.version();
        let len = set.len();
        store.publish_suppressions(set);
        tracing::info!(version, entries = len, "suppression list loaded");
        write_frame(writer, &Frame::SuppressionsApplied { version }).await?;
        self.save(store, true);
        Ok(())
    }

    /// Changes after the set in force.
    pub(super) async fn apply<W: AsyncWrite + Unpin>(
        &mut self,
        store: &Arc<PolicyStore>,
        changes: Vec<SuppressionChange>,
        writer: &mut W,
    ) -> Result<(), PolicyError> {
        if self.loading.is_some() {
            return Err(PolicyError::protocol(
                "suppression changes in the middle of a full load",
            ));
        }
        let current = store.suppressions_full();
        let set = tokio::task::spawn_blocking(move || {
            let mut set = (*current).clone();
            set.apply(&changes);
            set
        })
        .await
        .map_err(|e| PolicyError::Io(std::io::Error::other(e.to_string())))?;
        let version = set.version();
        store.publish_suppressions(set);
        write_frame(writer, &Frame::SuppressionsApplied { version }).await?;
        self.save(store, false);
        Ok(())
    }
}
