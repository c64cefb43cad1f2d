//! Delivery events from engines: the ingest behind the push link's `Events` frame, and the
//! retention purge.
//!
//! Ingest follows the wire contract (`petrel_policy::wire`): a batch is validated whole, then
//! stored in one transaction together with the engine's new acknowledged `batch_seq`, and only
//! then acknowledged. A batch at or below the acknowledged seq is acknowledged again without
//! touching the store; an event id stored before is skipped (and not counted twice in the
//! aggregates), so a re-sent batch under a new seq is harmless too.

use std::time::Duration;

use petrel_policy::event::{validate_batch, EventError};
use petrel_policy::Event;

use crate::api::App;
use crate::store::{engines, events, StoreError};

/// How often the purge task runs, ms.
pub const EVENTS_PURGE_INTERVAL_MS: u64 = 600_000;
/// Events deleted per purge transaction (so a purge never holds the write lock for long).
pub const EVENTS_PURGE_CHUNK_ROWS: i64 = 5_000;
/// Largest `batch_seq` accepted (it is stored as a `BIGINT`).
pub const BATCH_SEQ_MAX: u64 = i64::MAX as u64;

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The batch breaks the contract; the engine gets an `Error` frame and no ack.
    #[error("events batch {batch_seq} refused: {source}")]
    Invalid {
        batch_seq: u64,
        #[source]
        source: EventError,
    },
    /// `batch_seq` is 0 or above [`BATCH_SEQ_MAX`].
    #[error("events batch seq {0} out of range 1..={BATCH_SEQ_MAX}")]
    BadSeq(u64),
    /// The store failed; the engine re-sends after reconnecting.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for IngestError {
    fn from(e: sqlx::Error) -> IngestError {
        IngestError::Store(StoreError::Database(e))
    }
}

/// What an accepted batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// The seq to acknowledge (cumulative).
    pub ack_seq: u64,
    /// Events new to the store.
    pub inserted: usize,
}

/// Validates and stores one batch from `engine_id`; returns the seq to acknowledge.
pub async fn ingest(
    app: &App,
    engine_id: &str,
    batch_seq: u64,
    batch: &[Event],
) -> Result<Ingested, IngestError> {
    check(batch_seq, batch)?;
    ingest_checked(app, engine_id, &[(batch_seq, batch)]).await
}

/// The contract's checks of one batch, before anything is stored.
pub fn check(batch_seq: u64, batch: &[Event]) -> Result<(), IngestError> {
    if batch_seq == 0 || batch_seq > BATCH_SEQ_MAX {
        return Err(IngestError::BadSeq(batch_seq));
    }
    validate_batch(batch).map_err(|source| IngestError::Invalid { batch_seq, source })
}

/// Stores consecutive batches of one engine, each passed by [`check`], in one transaction
/// (group commit: the push link hands over every batch that arrived while the previous commit
/// ran; per event, one commit of several batches writes far fewer pages than one commit each,
/// since the batches' index entries share pages). Returns the seq to acknowledge (cumulative).
pub async fn ingest_checked(
    app: &App,
    engine_id: &str,
    batches: &[(u64, &[Event])],
) -> Result<Ingested, IngestError> {
    // The engines' audit signals of the fresh batches go to the audit log first, each in a
    // mutation of its own that also claims its event id: a batch resent after a failure (or a
    // crash before the ack below) records none of them twice.
    let any_signal = batches
        .iter()
        .any(|(_, b)| b.iter().any(crate::audit_signals::is_signal));
    let signals_acked = if any_signal {
        engines::events_acked_seq(&mut *app.db.conn().await?, engine_id).await?
    } else {
        u64::MAX // no signal: nothing to record, no read on the ingest path
    };
    for (_, batch) in batches.iter().filter(|(s, _)| *s > signals_acked) {
        for e in batch.iter() {
            let Some(entry) = crate::audit_signals::signal_entry(engine_id, e) else {
                continue;
            };
            let mut m = app.db.begin_data_mutation().await?;
            if crate::store::audit::claim_signal(m.conn(), &e.id, entry.at_unix_ms).await? {
                m.commit(entry).await?;
            }
        }
    }
    let mut tx = app.db.begin_write().await?;
    let acked = engines::events_acked_seq(&mut tx, engine_id).await?;
    let fresh: Vec<&(u64, &[Event])> = batches.iter().filter(|(s, _)| *s > acked).collect();
    let Some(last) = fresh.iter().map(|(s, _)| *s).max() else {
        tx.commit().await?;
        return Ok(Ingested {
            ack_seq: acked,
            inserted: 0,
        });
    };
    let now = app.now_ms();
    let events: Vec<&Event> = fresh.iter().flat_map(|(_, b)| b.iter()).collect();
    // TLS-RPT counts are summed into their own table, each taken once (`crate::tls_rpt`).
    crate::tls_rpt::ingest(&mut tx, &events, now).await?;
    let events: Vec<&Event> = events
        .into_iter()
        .filter(|e| !crate::tls_rpt::is_counts(e))
        .collect();
    // Reports from the intakes get their tenant, message and recipient (`attribute.rs`).
    let mut events = events::attribute::attribute(&mut tx, &events).await?;
    // A deleted tenant's events (its queued mail dropped or bounced, reports that arrive late)
    // are not kept: its data is gone (`crate::erasure`).
    let mut tenants: Vec<&str> = events
        .iter()
        .filter_map(|e| e.tenant_id.as_deref())
        .collect();
    tenants.sort_unstable();
    tenants.dedup();
    let deleted = crate::store::deleted_tenants::which_deleted(&mut tx, &tenants).await?;
    events.retain(|e| {
        e.tenant_id.as_deref().is_none_or(|t| !deleted.contains(t))
            && !crate::audit_signals::is_signal(e)
    });
    // An event older than the shortest message-metadata window (an engine's backlog draining
    // after an outage) may land behind its tenant's scrub watermark: move the watermark back so
    // the next retention round scrubs it too (`retention.rs`). Not reached in normal operation.
    let late = now - app.settings.retention.messages.0 * crate::store::events::DAY_MS;
    let mut oldest: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    for e in events.iter().filter(|e| e.timestamp_ms < late) {
        if let Some(t) = e.tenant_id.as_deref() {
            let o = oldest.entry(t).or_insert(e.timestamp_ms);
            *o = (*o).min(e.timestamp_ms);
        }
    }
    for (tenant, ts) in oldest {
        crate::store::tenants::lower_scrub_watermark(&mut tx, tenant, ts).await?;
    }
    let inserted = events::insert_batch(&mut tx, engine_id, &events, now).await?;
    engines::set_events_acked_seq(&mut tx, engine_id, last, now).await?;
    if inserted > 0 {
        // Other nodes' dispatchers hear of them at commit (PostgreSQL).
        crate::store::announce_events(&mut tx, app.db.dialect).await?;
    }
    tx.commit().await?;
    if inserted > 0 {
        // This node's webhooks see new events at once, and its engines any suppression the
        // events added (a hard bounce, a complaint, an unsubscribe).
        app.webhooks.wake();
        app.suppressions.wake();
        // The guardrails re-evaluate these tenants' rates (a set insert per batch here).
        app.guard.note_ingest(events.iter().map(|e| e.as_ref()));
        crate::audit_signals::note_blocked(app, engine_id, &events);
    }
    Ok(Ingested {
        ack_seq: last,
        inserted,
    })
}

/// Deletes every event past its tenant's retention window, and the aggregate buckets past
/// theirs. The plan is one read outside any write transaction; each chunk of one tenant's
/// expired events is then its own short write transaction, so ingest never waits long.
/// Returns the number of events deleted.
pub async fn purge(app: &App, now_unix_ms: i64) -> Result<u64, StoreError> {
    let plan = events::purge_plan(&mut *app.db.conn().await?, now_unix_ms).await?;
    let chunk_rows = u64::try_from(EVENTS_PURGE_CHUNK_ROWS).unwrap_or(0);
    let mut total = 0;
    for target in &plan {
        loop {
            let mut tx = app.db.begin_write().await?;
            let n = events::purge_tenant_chunk(&mut tx, target, EVENTS_PURGE_CHUNK_ROWS).await?;
            tx.commit().await?;
            total += n;
            if n < chunk_rows {
                break;
            }
        }
    }
    let mut tx = app.db.begin_write().await?;
    events::purge_stats(&mut tx, now_unix_ms).await?;
    tx.commit().await?;
    Ok(total)
}

/// Runs [`purge`] every [`EVENTS_PURGE_INTERVAL_MS`] until dropped.
pub async fn purge_task(app: App) {
    let mut tick = tokio::time::interval(Duration::from_millis(EVENTS_PURGE_INTERVAL_MS));
    loop {
        tick.tick().await;
        match purge(&app, app.now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "purged expired events"),
            Err(e) => tracing::warn!(error = %e, "event purge failed"),
        }
    }
}
