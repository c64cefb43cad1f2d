//! The dispatcher: sends each webhook its tenant's events in order, at least once.
//!
//! For one webhook (while this node holds its lease): if a delivery is pending (sent before and
//! not acknowledged, perhaps by a node that crashed), it is sent again with the same id and the
//! same events; otherwise the next at most [`WEBHOOK_BATCH_EVENTS_MAX`] matching events after the
//! cursor become a new pending delivery, committed before the POST. A 2xx moves the cursor past
//! the batch in the transaction that records the attempt; anything else records the failure and
//! schedules the retry ([`backoff_ms`]); a webhook failing for [`DISABLE_AFTER_FAILING_MS`] is
//! disabled. The task wakes after each ingest commit and polls every [`DISPATCH_POLL_MS`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::AnyConnection;
use tokio::sync::Semaphore;

use super::{
    backoff_ms, sign, DELIVERY_HISTORY_PURGE_CHUNK, DELIVERY_HISTORY_PURGE_INTERVAL_MS,
    DELIVERY_HISTORY_RETENTION_MS, DISABLE_AFTER_FAILING_MS, DISPATCH_BATCHES_PER_RUN_MAX,
    DISPATCH_CONCURRENCY_MAX, DISPATCH_DUE_PER_PASS_MAX, DISPATCH_LEASE_MS, DISPATCH_POLL_MS,
    WEBHOOK_BATCH_EVENTS_MAX,
};
use crate::api::events::EventView;
use crate::api::{new_id, App};
use crate::store::webhooks::{self as ws, AttemptRow, DeliveryRow, NewDelivery, WebhookRow};
use crate::store::StoreError;

/// Runs until aborted (started by `serve`).
pub async fn run(app: App) {
    let permits = Arc::new(Semaphore::new(DISPATCH_CONCURRENCY_MAX));
    let mut last_purge: Option<std::time::Instant> = None;
    loop {
        if let Err(e) = pass(&app, &permits).await {
            tracing::warn!(error = %e, "webhook dispatch pass failed");
        }
        let purge_due = last_purge.is_none_or(|t| {
            t.elapsed() >= Duration::from_millis(DELIVERY_HISTORY_PURGE_INTERVAL_MS)
        });
        if purge_due {
            last_purge = Some(std::time::Instant::now());
            match purge_history(&app, app.now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "purged old webhook deliveries"),
                Err(e) => tracing::warn!(error = %e, "webhook history purge failed"),
            }
        }
        tokio::select! {
            _ = app.webhooks.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(DISPATCH_POLL_MS)) => {}
        }
    }
}

/// Deletes finished deliveries older than [`DELIVERY_HISTORY_RETENTION_MS`] at `now`, one
/// chunk per transaction; returns how many.
pub async fn purge_history(app: &App, now: i64) -> Result<u64, StoreError> {
    let before = now.saturating_sub(DELIVERY_HISTORY_RETENTION_MS);
    let mut total = 0;
    loop {
        let mut tx = app.db.begin_write().await?;
        let n = ws::purge_history(&mut tx, before, DELIVERY_HISTORY_PURGE_CHUNK).await?;
        tx.commit().await?;
        total += n;
        if n < u64::try_from(DELIVERY_HISTORY_PURGE_CHUNK).unwrap_or(0) {
            return Ok(total);
        }
    }
}

/// Starts a task for each due webhook not already being dispatched here.
async fn pass(app: &App, permits: &Arc<Semaphore>) -> Result<(), StoreError> {
    let ids = ws::due(
        &mut *app.db.conn().await?,
        app.now_ms(),
        DISPATCH_DUE_PER_PASS_MAX,
    )
    .await?;
    for id in ids {
        let fresh = app
            .webhooks
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        if !fresh {
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return Ok(());
        };
        let app = app.clone();
        tokio::spawn(async move {
            let result = run_webhook(&app, &id).await;
            app.webhooks
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            drop(permit);
            match result {
                // Events that arrived while this ran were skipped by the passes meanwhile.
                Ok(()) => app.webhooks.wake(),
                Err(e) => tracing::warn!(webhook = %id, error = %e, "webhook dispatch failed"),
            }
        });
    }
    Ok(())
}

/// Sends a webhook's batches in order until it is caught up, fails, or has sent
/// [`DISPATCH_BATCHES_PER_RUN_MAX`].
async fn run_webhook(app: &App, id: &str) -> Result<(), StoreError> {
    let node = app.webhooks.node.clone();
    for _ in 0..DISPATCH_BATCHES_PER_RUN_MAX {
        let now = app.now_ms();
        let mut conn = app.db.conn().await?;
        if !ws::claim(&mut conn, id, &node, now, DISPATCH_LEASE_MS).await? {
            return Ok(());
        }
        drop(conn);
        let sent = one_batch(app, id, &node, now).await;
        let mut conn = app.db.conn().await?;
        match sent {
            Ok(true) => continue,
            Ok(false) => {
                ws::release(&mut conn, id, &node).await?;
                return Ok(());
            }
            Err(e) => {
                ws::release(&mut conn, id, &node).await?;
                return Err(e);
            }
        }
    }
    ws::release(&mut *app.db.conn().await?, id, &node).await
}

/// Sends the pending or next batch. Ok(true): delivered, look for more.
async fn one_batch(app: &App, id: &str, node: &str, now: i64) -> Result<bool, StoreError> {
    let Some(w) = ws::get_any(&mut *app.db.conn().await?, id).await? else {
        return Ok(false);
    };
    if w.disabled || w.next_attempt_unix_ms > now {
        return Ok(false);
    }
    let (delivery, events) = match &w.pending_delivery_id {
        Some(d) => {
            let mut conn = app.db.conn().await?;
            let d = ws::get_delivery(&mut conn, d).await?;
            let events = ws::events_after(
                &mut conn,
                &w.tenant_id,
                &w.event_types,
                w.cursor_seq,
                d.last_seq,
                WEBHOOK_BATCH_EVENTS_MAX,
            )
            .await?;
            (d, events)
        }
        None => {
            let mut tx = app.db.begin_write().await?;
            let end = ws::tenant_end_seq(&mut tx, &w.tenant_id).await?;
            let events = ws::events_after(
                &mut tx,
                &w.tenant_id,
                &w.event_types,
                w.cursor_seq,
                Some(end),
                WEBHOOK_BATCH_EVENTS_MAX,
            )
            .await?;
            let (Some(first), Some(last)) = (events.first(), events.last()) else {
                // Nothing it subscribes to up to `end`: skip those events for good.
                ws::skip_to(&mut tx, &w.id, end).await?;
                tx.commit().await?;
                return Ok(false);
            };
            let delivery_id = new_id("dlv");
            let new = NewDelivery {
                id: &delivery_id,
                webhook: &w,
                kind: "events",
                first_seq: Some(first.seq),
                last_seq: Some(last.seq),
                event_count: i64::try_from(events.len()).unwrap_or(i64::MAX),
                now_unix_ms: now,
            };
            ws::insert_delivery(&mut tx, &new).await?;
            tx.commit().await?;
            let d = ws::get_delivery(&mut *app.db.conn().await?, &delivery_id).await?;
            (d, events)
        }
    };
    let last_seq = delivery.last_seq.unwrap_or(w.cursor_seq);
    if events.is_empty() {
        // Its events expired (retention) before it was acknowledged: nothing left to send.
        let mut tx = app.db.begin_write().await?;
        ws::acknowledge(&mut tx, &w.id, last_seq, now).await?;
        tx.commit().await?;
        return Ok(true);
    }
    let views: Vec<EventView> = events.into_iter().map(|e| e.event.into()).collect();
    let body = serde_json::to_vec(&json!({ "events": views })).unwrap_or_default();
    let outcome = post(app, &w, &delivery, body, now).await;
    let at = app.now_ms();
    let attempt = attempt_row(delivery.attempts + 1, now, &outcome);
    let since = w.failing_since_unix_ms.unwrap_or(now);
    let disable =
        (!outcome.ok() && at.saturating_sub(since) >= DISABLE_AFTER_FAILING_MS).then(|| {
            format!(
                "failing since {since} (Unix ms) for over {} h; last error: {}",
                DISABLE_AFTER_FAILING_MS / 3_600_000,
                attempt.error.as_deref().unwrap_or("unknown")
            )
        });
    // Disabling is a change an operator must be able to trace: a mutation with its audit
    // entry. Every other result is delivery state only.
    let mut mutation = None;
    let mut plain = None;
    let conn: &mut AnyConnection = if disable.is_some() {
        mutation.insert(app.db.begin_mutation().await?).conn()
    } else {
        &mut *plain.insert(app.db.begin_write().await?)
    };
    if !ws::claim(conn, id, node, at, DISPATCH_LEASE_MS).await? {
        // Another node took over (this one stalled past its lease): it sends the batch again.
        return Ok(false);
    }
    ws::record_attempt(conn, &delivery.id, &attempt, false).await?;
    if outcome.ok() {
        ws::acknowledge(conn, &w.id, last_seq, at).await?;
    } else {
        let next = at.saturating_add(backoff_ms(attempt.attempt));
        ws::failed(
            conn,
            &w.id,
            since,
            next,
            disable.as_deref().map(|r| (r, at)),
        )
        .await?;
    }
    if let Some(tx) = plain {
        tx.commit().await?;
    }
    if let (Some(m), Some(reason)) = (mutation, &disable) {
        let entry = crate::audit::AuditEntry {
            tenant_id: Some(w.tenant_id.clone()),
            actor: "system:webhooks".into(),
            remote_addr: "-".into(),
            action: "webhook.disable".into(),
            target: w.id.clone(),
            at_unix_ms: at,
            before: Some(json!({"disabled": false})),
            after: Some(json!({"disabled": true, "disabled_reason": reason})),
        };
        let v = m.commit(entry).await?;
        app.notify(v);
        tracing::warn!(webhook = %w.id, tenant = %w.tenant_id, "webhook disabled after failing for 24 h");
    }
    Ok(outcome.ok())
}
fn attempt_row(n: i64, at: i64, o: &super::client::Outcome) -> AttemptRow {
    AttemptRow {
        attempt: n,
        at_unix_ms: at,
        ok: o.ok(),
        status_code: o.status.map(i64::from),
        error: o.error.clone(),
        duration_ms: o.duration_ms,
    }
}

/// POSTs a signed body for `delivery`.
async fn post(
    app: &App,
    w: &WebhookRow,
    delivery: &DeliveryRow,
    body: Vec<u8>,
    now: i64,
) -> super::client::Outcome {
    let ts = now.div_euclid(1000);
    let headers = [
        ("X-Petrel-Webhook-Id", w.id.clone()),
        ("X-Petrel-Delivery-Id", delivery.id.clone()),
        ("X-Petrel-Timestamp", ts.to_string()),
        (
            "X-Petrel-Signature",
            sign::header(&w.secrets(now), ts, &body),
        ),
    ];
    app.webhooks.client.post(&w.url, &headers, body).await
}

/// Sends one signed test delivery (`{"events": [], "test": true}`) now, records it in the
/// history, and returns it with its attempt. It does not touch the cursor or the failure streak.
pub async fn send_test(app: &App, w: &WebhookRow) -> Result<(DeliveryRow, AttemptRow), StoreError> {
    let now = app.now_ms();
    let delivery_id = new_id("dlv");
    let mut tx = app.db.begin_write().await?;
    ws::insert_delivery(
        &mut tx,
        &NewDelivery {
            id: &delivery_id,
            webhook: w,
            kind: "test",
            first_seq: None,
            last_seq: None,
            event_count: 0,
            now_unix_ms: now,
        },
    )
    .await?;
    tx.commit().await?;
    let mut conn = app.db.conn().await?;
    let d = ws::get_delivery(&mut conn, &delivery_id).await?;
    drop(conn);
    let body = serde_json::to_vec(&json!({ "events": [], "test": true })).unwrap_or_default();
    let outcome = post(app, w, &d, body, now).await;
    let attempt = attempt_row(1, now, &outcome);
    let mut tx = app.db.begin_write().await?;
    ws::record_attempt(&mut tx, &d.id, &attempt, true).await?;
    tx.commit().await?;
    let d = ws::get_delivery(&mut *app.db.conn().await?, &delivery_id).await?;
    Ok((d, attempt))
}
