//! The dispatcher: sends each webhook its tenant's events in order, at least once.
//!
//! For one webhook (while this node holds its lease), in rounds: the window is the deliveries
//! still pending (sent before and not acknowledged, perhaps by a node that crashed: sent again
//! with the same ids and the same events), topped up to [`DISPATCH_WINDOW_DELIVERIES`] with new
//! batches of at most [`WEBHOOK_BATCH_EVENTS_MAX`] matching events after the newest delivery,
//! all committed before the POSTs, which go out at once. One transaction then records every
//! answer and moves the cursor up to the oldest delivery still pending. A failure schedules the
//! retry ([`backoff_ms`]); while failing, a round retries only the pending deliveries (nothing
//! new starts), and a webhook failing for [`DISABLE_AFTER_FAILING_MS`] is disabled. The task
//! wakes after each ingest commit and polls every [`DISPATCH_POLL_MS`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::AnyConnection;
use tokio::sync::Semaphore;

use super::{
    backoff_ms, sign, DELIVERY_HISTORY_PURGE_CHUNK, DELIVERY_HISTORY_PURGE_INTERVAL_MS,
    DELIVERY_HISTORY_RETENTION_MS, DISABLE_AFTER_FAILING_MS, DISPATCH_CONCURRENCY_MAX,
    DISPATCH_DUE_PER_PASS_MAX, DISPATCH_LEASE_MS, DISPATCH_POLL_MS, DISPATCH_ROUNDS_PER_RUN_MAX,
    DISPATCH_WINDOW_DELIVERIES, WEBHOOK_BATCH_EVENTS_MAX,
};
use crate::api::events::EventView;
use crate::api::{new_id, App};
use crate::store::events::StoredEvent;
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

/// Sends a webhook's rounds until it is caught up, fails, or has sent
/// [`DISPATCH_ROUNDS_PER_RUN_MAX`], then gives its lease up.
async fn run_webhook(app: &App, id: &str) -> Result<(), StoreError> {
    let node = app.webhooks.node.clone();
    let mut result = Ok(());
    for _ in 0..DISPATCH_ROUNDS_PER_RUN_MAX {
        match one_round(app, id, &node).await {
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let mut tx = app.db.begin_write().await?;
    ws::release(&mut tx, id, &node).await?;
    tx.commit().await?;
    result
}

/// One delivery of a round: its row and the events it carries.
struct InFlight {
    delivery: DeliveryRow,
    events: Vec<StoredEvent>,
}

/// One round: the webhook's window of at most [`DISPATCH_WINDOW_DELIVERIES`] deliveries (the
/// pending ones, topped up with new batches unless it is failing), committed before anything
/// is sent, then POSTed at once, then every answer recorded in one transaction. Ok(true):
/// every delivery was acknowledged, look for more.
async fn one_round(app: &App, id: &str, node: &str) -> Result<bool, StoreError> {
    let now = app.now_ms();
    let Some((w, mut window, frontier)) = open_window(app, id, node, now).await? else {
        return Ok(false);
    };
    // The events of deliveries made in an earlier round (a retry, or a resend after a crash).
    let mut conn = app.db.conn().await?;
    for f in window.iter_mut().filter(|f| f.events.is_empty()) {
        let d = &f.delivery;
        let first = d.first_seq.unwrap_or(w.cursor_seq + 1);
        f.events = ws::events_after(
            &mut conn,
            &w.tenant_id,
            &w.event_types,
            first - 1,
            d.last_seq,
            WEBHOOK_BATCH_EVENTS_MAX,
        )
        .await?;
    }
    drop(conn);
    let outcomes = post_all(app, &w, &mut window, now).await;
    let at = app.now_ms();
    let mut attempts = Vec::with_capacity(window.len());
    for (f, outcome) in window.iter().zip(&outcomes) {
        attempts.push(
            outcome
                .as_ref()
                .map(|o| attempt_row(f.delivery.attempts + 1, now, o)),
        );
    }
    let failed = attempts
        .iter()
        .flatten()
        .filter(|a| !a.ok)
        .collect::<Vec<_>>();
    let since = w.failing_since_unix_ms.unwrap_or(now);
    let disable = failed
        .first()
        .filter(|_| at.saturating_sub(since) >= DISABLE_AFTER_FAILING_MS)
        .map(|a| {
            format!(
                "failing since {since} (Unix ms) for over {} h; last error: {}",
                DISABLE_AFTER_FAILING_MS / 3_600_000,
                a.error.as_deref().unwrap_or("unknown")
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
        // Another node took over (this one stalled past its lease): it sends them again.
        return Ok(false);
    }
    for (f, attempt) in window.iter().zip(&attempts) {
        match attempt {
            Some(a) => ws::record_attempt(conn, &f.delivery.id, a, false).await?,
            None => ws::expire_delivery(conn, &f.delivery.id).await?,
        }
    }
    // The cursor: up to just before the oldest delivery still pending, or past them all.
    let oldest = window.first().map(|f| f.delivery.id.clone());
    let still = match &oldest {
        Some(o) => ws::pending_window(conn, &w.id, o, 1).await?,
        None => Vec::new(),
    };
    match still.first() {
        Some(p) => {
            let cursor = p.first_seq.map_or(w.cursor_seq, |s| s - 1);
            ws::set_window(conn, &w.id, cursor, Some(&p.id)).await?;
        }
        None => ws::set_window(conn, &w.id, frontier, None).await?,
    }
    if let Some(worst) = failed.iter().map(|a| a.attempt).max() {
        let next = at.saturating_add(backoff_ms(worst));
        ws::failed(
            conn,
            &w.id,
            since,
            next,
            disable.as_deref().map(|r| (r, at)),
        )
        .await?;
    } else {
        ws::acknowledge(conn, &w.id, at).await?;
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
    Ok(failed.is_empty())
}

/// Claims the webhook and makes its window, in one transaction committed before sending:
/// the pending deliveries (their events are read after), then new deliveries of the events
/// after the newest one, unless the webhook is failing (then only the pending ones are
/// retried). Returns the webhook, the window and the event seq its newest delivery ends at;
/// None when there is nothing to send (not claimed, disabled, not due, or caught up).
async fn open_window(
    app: &App,
    id: &str,
    node: &str,
    now: i64,
) -> Result<Option<(WebhookRow, Vec<InFlight>, i64)>, StoreError> {
    let mut tx = app.db.begin_write().await?;
    if !ws::claim(&mut tx, id, node, now, DISPATCH_LEASE_MS).await? {
        tx.commit().await?;
        return Ok(None);
    }
    let Some(w) = ws::get_any(&mut tx, app.db.sealer(), id).await? else {
        tx.commit().await?;
        return Ok(None);
    };
    if w.disabled || w.next_attempt_unix_ms > now {
        tx.commit().await?;
        return Ok(None);
    }
    let window_max = i64::try_from(DISPATCH_WINDOW_DELIVERIES).unwrap_or(1);
    let mut window: Vec<InFlight> = match &w.pending_delivery_id {
        Some(p) => ws::pending_window(&mut tx, &w.id, p, window_max).await?,
        None => Vec::new(),
    }
    .into_iter()
    .map(|delivery| InFlight {
        delivery,
        events: Vec::new(),
    })
    .collect();
    let newest = ws::newest_delivery_last_seq(&mut tx, &w.id).await?;
    let mut frontier = w.cursor_seq.max(newest.unwrap_or(0));
    let room = DISPATCH_WINDOW_DELIVERIES.saturating_sub(window.len());
    if w.failing_since_unix_ms.is_none() && room > 0 {
        let end = ws::tenant_end_seq(&mut tx, &w.tenant_id).await?;
        let events = ws::events_after(
            &mut tx,
            &w.tenant_id,
            &w.event_types,
            frontier,
            Some(end),
            WEBHOOK_BATCH_EVENTS_MAX.saturating_mul(i64::try_from(room).unwrap_or(1)),
        )
        .await?;
        if events.is_empty() && window.is_empty() {
            // Nothing it subscribes to up to `end`: skip those events for good.
            ws::skip_to(&mut tx, &w.id, end).await?;
            tx.commit().await?;
            return Ok(None);
        }
        let per = usize::try_from(WEBHOOK_BATCH_EVENTS_MAX).unwrap_or(1);
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let batch: Vec<StoredEvent> = events.by_ref().take(per).collect();
            let (first, last) = (batch[0].seq, batch[batch.len() - 1].seq);
            let delivery_id = new_id("dlv");
            let new = NewDelivery {
                id: &delivery_id,
                webhook: &w,
                kind: "events",
                first_seq: Some(first),
                last_seq: Some(last),
                event_count: i64::try_from(batch.len()).unwrap_or(i64::MAX),
                now_unix_ms: now,
            };
            let seq = ws::insert_delivery(&mut tx, &new).await?;
            let event_count = new.event_count;
            frontier = last;
            window.push(InFlight {
                delivery: DeliveryRow {
                    id: delivery_id,
                    seq,
                    webhook_id: w.id.clone(),
                    kind: "events".into(),
                    state: "pending".into(),
                    first_seq: Some(first),
                    last_seq: Some(last),
                    event_count,
                    attempts: 0,
                    created_unix_ms: now,
                    delivered_unix_ms: None,
                },
                events: batch,
            });
        }
    }
    tx.commit().await?;
    if window.is_empty() {
        return Ok(None);
    }
    Ok(Some((w, window, frontier)))
}

/// POSTs every delivery of the window at once; an answer per delivery, in window order
/// (None: its events are gone, nothing was sent).
async fn post_all(
    app: &App,
    w: &WebhookRow,
    window: &mut [InFlight],
    now: i64,
) -> Vec<Option<super::client::Outcome>> {
    let mut outcomes = vec![None; window.len()];
    let mut sent = vec![false; window.len()];
    let mut posts = tokio::task::JoinSet::new();
    for (i, f) in window.iter_mut().enumerate() {
        if f.events.is_empty() {
            continue;
        }
        sent[i] = true;
        // The events are not needed after their body is built: moved, not cloned.
        let events = std::mem::take(&mut f.events);
        let views: Vec<EventView> = events.into_iter().map(|e| e.event.into()).collect();
        let body = serde_json::to_vec(&json!({ "events": views })).unwrap_or_default();
        let headers = headers(w, &f.delivery, &body, now);
        let client = app.webhooks.client.clone();
        let url = w.url.clone();
        posts.spawn(async move { (i, client.post(&url, &headers, body).await) });
    }
    while let Some(done) = posts.join_next().await {
        match done {
            Ok((i, outcome)) => outcomes[i] = Some(outcome),
            Err(e) => tracing::warn!(webhook = %w.id, error = %e, "webhook POST task failed"),
        }
    }
    // A POST task that died (it cannot panic by design) counts as a failed attempt.
    for (o, sent) in outcomes.iter_mut().zip(sent) {
        if o.is_none() && sent {
            *o = Some(super::client::Outcome {
                status: None,
                error: Some("the request task failed".into()),
                duration_ms: 0,
            });
        }
    }
    outcomes
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

/// The signed headers of one delivery's POST.
fn headers(
    w: &WebhookRow,
    delivery: &DeliveryRow,
    body: &[u8],
    now: i64,
) -> [(&'static str, String); 4] {
    let ts = now.div_euclid(1000);
    [
        ("X-Petrel-Webhook-Id", w.id.clone()),
        ("X-Petrel-Delivery-Id", delivery.id.clone()),
        ("X-Petrel-Timestamp", ts.to_string()),
        (
            "X-Petrel-Signature",
            sign::header(&w.secrets(now), ts, body),
        ),
    ]
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
    let headers = headers(w, &d, &body, now);
    let outcome = app.webhooks.client.post(&w.url, &headers, body).await;
    let attempt = attempt_row(1, now, &outcome);
    let mut tx = app.db.begin_write().await?;
    ws::record_attempt(&mut tx, &d.id, &attempt, true).await?;
    tx.commit().await?;
    let d = ws::get_delivery(&mut *app.db.conn().await?, &delivery_id).await?;
    Ok((d, attempt))
}
