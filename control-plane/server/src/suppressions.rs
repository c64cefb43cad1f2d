//! The suppression lists' housekeeping: expired entries become removals in the change log
//! (so engines drop them like any deletion), and the log itself is purged after its retention
//! (`store::suppressions::CHANGES_RETENTION_DAYS`; an engine further behind reloads the list).
//!
//! What the engine side calls to follow the lists is in `store::suppressions`:
//! `current_version`, `load_page` (a full load) and `changes_since` (the deltas).

use std::time::Duration;

use crate::api::App;
use crate::store::suppressions::{self as ss, EXPIRED_PURGE_ROWS_MAX};
use crate::store::StoreError;

/// How often the purge runs, ms. Expiry is therefore applied up to this late.
pub const SUPPRESSIONS_PURGE_INTERVAL_MS: u64 = 60_000;
/// Change-log rows deleted per transaction.
pub const CHANGES_PURGE_CHUNK_ROWS: i64 = 5_000;

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
