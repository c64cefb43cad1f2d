//! The suppression lists' housekeeping: expired entries become removals in the change log
//! (so engines drop them like any deletion), and the log itself is purged after its retention
//! (`store::suppressions::CHANGES_RETENTION_DAYS`; an engine further behind reloads the list).
//!
//! What the engine side calls to follow the lists is in `store::suppressions`:
//! `current_version`, `load_page` (a full load) and `changes_since` (the deltas); the push
//! sessions (`push/suppressions.rs`) serve them. [`SuppressionWatch`] tells those sessions
//! that the log moved: [`watch_task`] reads the log's last seq when woken (this node committed
//! a change: an API call, an ingest) and every [`SUPPRESSION_POLL_MS`] (changes committed by
//! another node, expiries).

use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::api::App;
use crate::store::suppressions::{self as ss, EXPIRED_PURGE_ROWS_MAX};
use crate::store::StoreError;

/// How often the purge runs, ms. Expiry is therefore applied up to this late.
pub const SUPPRESSIONS_PURGE_INTERVAL_MS: u64 = 60_000;
/// Change-log rows deleted per transaction.
pub const CHANGES_PURGE_CHUNK_ROWS: i64 = 5_000;

/// How often the change log's last seq is read when nothing wakes the watch, ms: the bound on
/// how late a change committed by another control plane node reaches this node's engines.
pub const SUPPRESSION_POLL_MS: u64 = 250;

/// The change log's newest seq as this node knows it; push sessions wait on it.
#[derive(Debug)]
pub struct SuppressionWatch {
    tx: watch::Sender<u64>,
    wake: Notify,
}

impl SuppressionWatch {
    pub fn new(version: u64) -> SuppressionWatch {
        SuppressionWatch {
            tx: watch::channel(version).0,
            wake: Notify::new(),
        }
    }

    /// A receiver that sees each newer seq.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// The newest seq known.
    pub fn latest(&self) -> u64 {
        *self.tx.borrow()
    }

    /// This node committed a change: read the log now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn advance(&self, version: u64) {
        self.tx.send_if_modified(|v| {
            if version > *v {
                *v = version;
                true
            } else {
                false
            }
        });
    }
}

/// Keeps [`SuppressionWatch`] current until dropped: reads the log's last seq when woken and
/// every [`SUPPRESSION_POLL_MS`].
pub async fn watch_task(app: App) {
    loop {
        let _ = tokio::time::timeout(
            Duration::from_millis(SUPPRESSION_POLL_MS),
            app.suppressions.wake.notified(),
        )
        .await;
        let read = async {
            let mut conn = app.db.conn().await?;
            ss::current_version(&mut conn).await
        };
        match read.await {
            Ok(v) => app.suppressions.advance(v),
            Err(e) => tracing::warn!(error = %e, "suppression log poll failed"),
        }
    }
}

/// What one purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Entries past their expiry (each logged as a removal).
    pub expired: u64,
    /// Change-log rows past the retention.
    pub changes: u64,
}

/// Removes expired entries and old change-log rows, each chunk its own short write
/// transaction so ingest and API writes never wait long.
pub async fn purge(app: &App, now_unix_ms: i64) -> Result<Purged, StoreError> {
    let mut purged = Purged::default();
    let full = u64::try_from(EXPIRED_PURGE_ROWS_MAX).unwrap_or(u64::MAX);
    loop {
        let mut tx = app.db.begin_write().await?;
        let n = ss::purge_expired(&mut tx, now_unix_ms).await?;
        tx.commit().await?;
        purged.expired += n;
        if n > 0 {
            app.suppressions.wake();
        }
        if n < full {
            break;
        }
    }
    loop {
        let mut tx = app.db.begin_write().await?;
        let n = ss::purge_changes(&mut tx, now_unix_ms, CHANGES_PURGE_CHUNK_ROWS).await?;
        tx.commit().await?;
        purged.changes += n;
        if n == 0 {
            break;
        }
    }
    Ok(purged)
}

/// Runs [`purge`] every [`SUPPRESSIONS_PURGE_INTERVAL_MS`] until dropped.
pub async fn purge_task(app: App) {
    let mut tick = tokio::time::interval(Duration::from_millis(SUPPRESSIONS_PURGE_INTERVAL_MS));
    loop {
        tick.tick().await;
        match purge(&app, app.now_ms()).await {
            Ok(p) if p == Purged::default() => {}
            Ok(p) => tracing::info!(
                expired = p.expired,
                changes = p.changes,
                "purged suppression entries and change log"
            ),
            Err(e) => tracing::warn!(error = %e, "suppression purge failed"),
        }
    }
}
