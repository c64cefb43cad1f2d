//! `webhooks`, `webhook_deliveries`, `webhook_attempts`: customer webhooks, the batches sent to
//! them, and every attempt at sending one.
//!
//! Each webhook keeps a cursor over `events.seq` (`cursor_seq`): everything at or below it has
//! been acknowledged by the receiver. The dispatcher records the next batches as *pending
//! deliveries* (each with its id and seq range `[first_seq, last_seq]`, one after the other)
//! before sending them; `pending_delivery_id` is the oldest one still pending. A 2xx marks a
//! delivery delivered, and the cursor moves up to just before the oldest delivery still
//! pending (or to the newest delivery's end when none is), in the transaction that records the
//! answers. After a crash the pending deliveries are sent again with the same ids and the same
//! events (the events of the tenant and types in their ranges, which cannot grow:
//! `events.seq` is allocated from the single `event_seq` row inside the ingest transaction, so
//! a seq is never committed below one already visible).
//!
//! `lease_owner`/`lease_until_unix_ms` let several control plane nodes share one PostgreSQL
//! database: a node dispatches a webhook only while it holds the lease.
//!
//! Secrets are kept in clear (HMAC needs them); encryption at rest is future work.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::events::StoredEvent;
use super::sealed::{aad, Sealer};
use super::{get_bool, get_list, list_json, StoreError, StoreResult};

/// One webhook row.
#[derive(Clone)]
pub struct WebhookRow {
    pub id: String,
    pub tenant_id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until_unix_ms: Option<i64>,
    pub cursor_seq: i64,
    pub pending_delivery_id: Option<String>,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    pub disabled_unix_ms: Option<i64>,
    pub failing_since_unix_ms: Option<i64>,
    pub next_attempt_unix_ms: i64,
    pub created_unix_ms: i64,
}

impl std::fmt::Debug for WebhookRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRow")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("url", &self.url)
            .field("secret", &"<secret>")
            .finish_non_exhaustive()
    }
}

impl WebhookRow {
    /// The secrets valid at `now`: the current one, then the previous one during its overlap.
    pub fn secrets(&self, now_unix_ms: i64) -> Vec<&str> {
        let mut v = vec![self.secret.as_str()];
        if let (Some(prev), Some(until)) =
            (&self.previous_secret, self.previous_secret_until_unix_ms)
        {
            if now_unix_ms < until {
                v.push(prev.as_str());
            }
        }
        v
    }
}

fn decode(r: &AnyRow) -> StoreResult<WebhookRow> {
    Ok(WebhookRow {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        url: r.try_get("url")?,
        event_types: get_list(r, "event_types")?,
        secret: r.try_get("secret")?,
        previous_secret: r.try_get("previous_secret")?,
        previous_secret_until_unix_ms: r.try_get("previous_secret_until_unix_ms")?,
        cursor_seq: r.try_get("cursor_seq")?,
        pending_delivery_id: r.try_get("pending_delivery_id")?,
        disabled: get_bool(r, "disabled")?,
        disabled_reason: r.try_get("disabled_reason")?,
        disabled_unix_ms: r.try_get("disabled_unix_ms")?,
        failing_since_unix_ms: r.try_get("failing_since_unix_ms")?,
        next_attempt_unix_ms: r.try_get("next_attempt_unix_ms")?,
        created_unix_ms: r.try_get("created_unix_ms")?,
    })
}

/// The highest event seq allocated so far (a new webhook starts after it: no replay).
pub async fn events_end_seq(conn: &mut AnyConnection) -> StoreResult<i64> {
    Ok(sqlx::query("SELECT last_seq FROM event_seq WHERE id = 1")
        .fetch_one(conn)
        .await?
        .try_get("last_seq")?)
}

/// How many webhooks the tenant has.
pub async fn count(conn: &mut AnyConnection, tenant_id: &str) -> StoreResult<i64> {
    Ok(
        sqlx::query("SELECT COUNT(*) AS n FROM webhooks WHERE tenant_id = $1")
            .bind(tenant_id.to_string())
            .fetch_one(conn)
            .await?
            .try_get("n")?,
    )
}

/// Inserts a webhook, its secret sealed under the tenant's data key.
pub async fn insert(conn: &mut AnyConnection, sealer: &Sealer, w: &WebhookRow) -> StoreResult<()> {
    let secret = seal_secret(conn, sealer, &w.tenant_id, &w.id, &w.secret).await?;
    sqlx::query(
        "INSERT INTO webhooks (id, tenant_id, url, event_types, secret, previous_secret, \
         previous_secret_until_unix_ms, cursor_seq, pending_delivery_id, disabled, \
         disabled_reason, disabled_unix_ms, failing_since_unix_ms, next_attempt_unix_ms, \
         created_unix_ms) VALUES ($1,$2,$3,$4,$5,NULL,NULL,$6,NULL,0,NULL,NULL,NULL,$7,$8)",
    )
    .bind(w.id.clone())
    .bind(w.tenant_id.clone())
    .bind(w.url.clone())
    .bind(list_json(&w.event_types))
    .bind(secret)
    .bind(w.cursor_seq)
    .bind(w.next_attempt_unix_ms)
    .bind(w.created_unix_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Webhook `id` of the tenant (404 for another tenant's).
pub async fn get(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    tenant_id: &str,
    id: &str,
) -> StoreResult<WebhookRow> {
    let row = sqlx::query("SELECT * FROM webhooks WHERE id = $1 AND tenant_id = $2")
        .bind(id.to_string())
        .bind(tenant_id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound("webhook"))?;
    let mut w = decode(&row)?;
    open_secrets(conn, sealer, &mut w).await?;
    Ok(w)
}

/// The associated data of a webhook's secrets (the previous one is the current one moved).
fn secret_aad(id: &str) -> String {
    aad("webhooks", "secret", id)
}

/// A secret sealed for webhook `id` of `tenant_id` (issue 16: never stored in the clear).
pub async fn seal_secret(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    tenant_id: &str,
    id: &str,
    secret: &str,
) -> StoreResult<String> {
    sealer
        .seal_text(conn, Some(tenant_id), &secret_aad(id), secret)
        .await
}

/// Opens a row's sealed secrets in place.
async fn open_secrets(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    w: &mut WebhookRow,
) -> StoreResult<()> {
    let gone = || StoreError::Corrupt {
        column: "webhooks.secret",
        reason: "its data key is gone".into(),
    };
    let aad = secret_aad(&w.id);
    w.secret = sealer
        .open_text(conn, &aad, &w.secret)
        .await?
        .ok_or_else(gone)?;
    if let Some(p) = w.previous_secret.take() {
        w.previous_secret = Some(sealer.open_text(conn, &aad, &p).await?.ok_or_else(gone)?);
    }
    Ok(())
}

/// Webhook `id` of any tenant (the dispatcher); None once deleted.
pub async fn get_any(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    id: &str,
) -> StoreResult<Option<WebhookRow>> {
    let row = sqlx::query("SELECT * FROM webhooks WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let mut w = decode(&row)?;
    open_secrets(conn, sealer, &mut w).await?;
    Ok(Some(w))
}

/// The tenant's webhooks, oldest first.
pub async fn list(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    tenant_id: &str,
) -> StoreResult<Vec<WebhookRow>> {
    let mut all =
        sqlx::query("SELECT * FROM webhooks WHERE tenant_id = $1 ORDER BY created_unix_ms, id")
            .bind(tenant_id.to_string())
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(decode)
            .collect::<StoreResult<Vec<_>>>()?;
    for w in &mut all {
        open_secrets(conn, sealer, w).await?;
    }
    Ok(all)
}

/// Deletes a webhook of the tenant with its history.
pub async fn delete(conn: &mut AnyConnection, tenant_id: &str, id: &str) -> StoreResult<()> {
    let done = sqlx::query("DELETE FROM webhooks WHERE id = $1 AND tenant_id = $2")
        .bind(id.to_string())
        .bind(tenant_id.to_string())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if done == 0 {
        return Err(StoreError::NotFound("webhook"));
    }
    sqlx::query(
        "DELETE FROM webhook_attempts WHERE delivery_id IN \
         (SELECT id FROM webhook_deliveries WHERE webhook_id = $1)",
    )
    .bind(id.to_string())
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Installs a new secret; the current one stays valid until `previous_until_unix_ms`.
pub async fn rotate_secret(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    tenant_id: &str,
    id: &str,
    secret: &str,
    previous_until_unix_ms: i64,
) -> StoreResult<()> {
    let secret = seal_secret(conn, sealer, tenant_id, id, secret).await?;
    sqlx::query(
        "UPDATE webhooks SET previous_secret = secret, previous_secret_until_unix_ms = $1, \
         secret = $2 WHERE id = $3 AND tenant_id = $4",
    )
    .bind(previous_until_unix_ms)
    .bind(secret)
    .bind(id.to_string())
    .bind(tenant_id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Re-enables a webhook: its failure streak starts over and it is due at once.
pub async fn enable(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
    now_unix_ms: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE webhooks SET disabled = 0, disabled_reason = NULL, disabled_unix_ms = NULL, \
         failing_since_unix_ms = NULL, next_attempt_unix_ms = $1 WHERE id = $2 AND tenant_id = $3",
    )
    .bind(now_unix_ms)
    .bind(id.to_string())
    .bind(tenant_id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Enabled webhooks due at `now` whose lease is free and that have work (a pending delivery,
/// or events of their tenant past the cursor), at most `limit`, most overdue first.
pub async fn due(
    conn: &mut AnyConnection,
    now_unix_ms: i64,
    limit: i64,
) -> StoreResult<Vec<String>> {
    let rows = sqlx::query(
        "SELECT id FROM webhooks WHERE disabled = 0 AND next_attempt_unix_ms <= $1 AND \
         (lease_until_unix_ms IS NULL OR lease_until_unix_ms < $1) AND \
         (pending_delivery_id IS NOT NULL OR EXISTS (SELECT 1 FROM events e WHERE \
         e.tenant_id = webhooks.tenant_id AND e.seq > webhooks.cursor_seq)) \
         ORDER BY next_attempt_unix_ms LIMIT $2",
    )
    .bind(now_unix_ms)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>("id").map_err(StoreError::from))
        .collect()
}

/// Takes (or renews) the lease on a webhook for `node`; false when another node holds it.
pub async fn claim(
    conn: &mut AnyConnection,
    id: &str,
    node: &str,
    now_unix_ms: i64,
    lease_ms: i64,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE webhooks SET lease_owner = $1, lease_until_unix_ms = $2 WHERE id = $3 AND \
         (lease_owner IS NULL OR lease_owner = $1 OR lease_until_unix_ms < $4)",
    )
    .bind(node.to_string())
    .bind(now_unix_ms.saturating_add(lease_ms))
    .bind(id.to_string())
    .bind(now_unix_ms)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// Gives the lease up (only if `node` still holds it).
pub async fn release(conn: &mut AnyConnection, id: &str, node: &str) -> StoreResult<()> {
    sqlx::query(
        "UPDATE webhooks SET lease_owner = NULL, lease_until_unix_ms = NULL \
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id.to_string())
    .bind(node.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Drops every lease. Only for SQLite at start: one SQLite database has one control plane
/// node, so a lease in it was left by this node's previous process (killed mid-delivery), and
/// waiting for it to lapse would only delay the re-send.
pub async fn release_all(conn: &mut AnyConnection) -> StoreResult<()> {
    sqlx::query("UPDATE webhooks SET lease_owner = NULL, lease_until_unix_ms = NULL")
        .execute(conn)
        .await?;
    Ok(())
}

/// The tenant's events of `types` with `after_seq < seq <= upto_seq` (no upper bound: None),
/// oldest first, at most `limit`.
pub async fn events_after(
    conn: &mut AnyConnection,
    tenant_id: &str,
    types: &[String],
    after_seq: i64,
    upto_seq: Option<i64>,
    limit: i64,
) -> StoreResult<Vec<StoredEvent>> {
    // Placeholders $4.. for the types; the list is bounded by the API.
    let marks: Vec<String> = (0..types.len()).map(|i| format!("${}", i + 4)).collect();
    let sql = format!(
        "SELECT * FROM events WHERE tenant_id = $1 AND seq > $2 AND seq <= $3 AND type IN ({}) \
         ORDER BY seq LIMIT ${}",
        marks.join(","),
        types.len() + 4
    );
    let mut q = sqlx::query(&sql)
        .bind(tenant_id.to_string())
        .bind(after_seq)
        .bind(upto_seq.unwrap_or(i64::MAX));
    for t in types {
        q = q.bind(t.clone());
    }
    q.bind(limit)
        .fetch_all(conn)
        .await?
        .iter()
        .map(super::events::decode)
        .collect()
}

/// The tenant's highest event seq (0 without events). Every event at or below it is committed
/// already (seq order is commit order), so a cursor may move up to it.
pub async fn tenant_end_seq(conn: &mut AnyConnection, tenant_id: &str) -> StoreResult<i64> {
    let v: Option<i64> = sqlx::query("SELECT MAX(seq) AS m FROM events WHERE tenant_id = $1")
        .bind(tenant_id.to_string())
        .fetch_one(conn)
        .await?
        .try_get("m")?;
    Ok(v.unwrap_or(0))
}

/// Moves the cursor forward over events the webhook does not subscribe to.
pub async fn skip_to(conn: &mut AnyConnection, webhook_id: &str, seq: i64) -> StoreResult<()> {
    sqlx::query("UPDATE webhooks SET cursor_seq = $1 WHERE id = $2 AND cursor_seq < $1")
        .bind(seq)
        .bind(webhook_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// One delivery (a batch of events, or a test) with its attempts.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: String,
    pub seq: i64,
    pub webhook_id: String,
    /// `events` or `test`.
    pub kind: String,
    /// `pending`, `delivered` or `failed` (a test that failed; event batches stay pending).
    pub state: String,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub event_count: i64,
    pub attempts: i64,
    pub created_unix_ms: i64,
    pub delivered_unix_ms: Option<i64>,
}

fn decode_delivery(r: &AnyRow) -> StoreResult<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.try_get("id")?,
        seq: r.try_get("seq")?,
        webhook_id: r.try_get("webhook_id")?,
        kind: r.try_get("kind")?,
        state: r.try_get("state")?,
        first_seq: r.try_get("first_seq")?,
        last_seq: r.try_get("last_seq")?,
        event_count: r.try_get("event_count")?,
        attempts: r.try_get("attempts")?,
        created_unix_ms: r.try_get("created_unix_ms")?,
        delivered_unix_ms: r.try_get("delivered_unix_ms")?,
    })
}

/// What a new delivery carries.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    pub id: &'a str,
    pub webhook: &'a WebhookRow,
    pub kind: &'a str,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub event_count: i64,
    pub now_unix_ms: i64,
}

/// Records a new pending delivery and returns its `seq`; an event batch becomes the webhook's
/// oldest pending one when there is none.
pub async fn insert_delivery(conn: &mut AnyConnection, d: &NewDelivery<'_>) -> StoreResult<i64> {
    let seq: i64 = sqlx::query(
        "UPDATE webhook_delivery_seq SET last_seq = last_seq + 1 WHERE id = 1 RETURNING last_seq",
    )
    .fetch_one(&mut *conn)
    .await?
    .try_get("last_seq")?;
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, seq, webhook_id, tenant_id, kind, state, first_seq, \
         last_seq, event_count, attempts, created_unix_ms, delivered_unix_ms) VALUES \
         ($1,$2,$3,$4,$5,'pending',$6,$7,$8,0,$9,NULL)",
    )
    .bind(d.id.to_string())
    .bind(seq)
    .bind(d.webhook.id.clone())
    .bind(d.webhook.tenant_id.clone())
    .bind(d.kind.to_string())
    .bind(d.first_seq)
    .bind(d.last_seq)
    .bind(d.event_count)
    .bind(d.now_unix_ms)
    .execute(&mut *conn)
    .await?;
    if d.kind == "events" {
        sqlx::query(
            "UPDATE webhooks SET pending_delivery_id = $1 WHERE id = $2 AND \
             pending_delivery_id IS NULL",
        )
        .bind(d.id.to_string())
        .bind(d.webhook.id.clone())
        .execute(conn)
        .await?;
    }
    Ok(seq)
}

/// Delivery `id` (of any webhook).
pub async fn get_delivery(conn: &mut AnyConnection, id: &str) -> StoreResult<DeliveryRow> {
    let row = sqlx::query("SELECT * FROM webhook_deliveries WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?
        .ok_or(StoreError::NotFound("delivery"))?;
    decode_delivery(&row)
}

/// One attempt at sending a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub attempt: i64,
    pub at_unix_ms: i64,
    pub ok: bool,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// Appends an attempt and counts it on its delivery; `ok` marks the delivery delivered,
/// `final_failure` marks it failed (tests; event batches are retried instead).
pub async fn record_attempt(
    conn: &mut AnyConnection,
    delivery_id: &str,
    a: &AttemptRow,
    final_failure: bool,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, at_unix_ms, ok, status_code, error, \
         duration_ms) VALUES ($1,$2,$3,$4,$5,$6,$7)",
    )
    .bind(delivery_id.to_string())
    .bind(a.attempt)
    .bind(a.at_unix_ms)
    .bind(i64::from(a.ok))
    .bind(a.status_code)
    .bind(a.error.clone())
    .bind(a.duration_ms)
    .execute(&mut *conn)
    .await?;
    let state = if a.ok {
        "delivered"
    } else if final_failure {
        "failed"
    } else {
        "pending"
    };
    sqlx::query(
        "UPDATE webhook_deliveries SET attempts = $1, state = $2, delivered_unix_ms = $3 \
         WHERE id = $4",
    )
    .bind(a.attempt)
    .bind(state.to_string())
    .bind(a.ok.then_some(a.at_unix_ms))
    .bind(delivery_id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// After a round whose every delivery got a 2xx: the failure streak ends, and the webhook is
/// due again at once.
pub async fn acknowledge(
    conn: &mut AnyConnection,
    webhook_id: &str,
    now_unix_ms: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE webhooks SET failing_since_unix_ms = NULL, next_attempt_unix_ms = $1 WHERE id = $2",
    )
    .bind(now_unix_ms)
    .bind(webhook_id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Where the webhook's window starts after a round: the cursor (never moved back) and the
/// oldest delivery still pending (None: every delivery made so far was acknowledged).
pub async fn set_window(
    conn: &mut AnyConnection,
    webhook_id: &str,
    cursor_seq: i64,
    oldest_pending: Option<&str>,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE webhooks SET cursor_seq = CASE WHEN cursor_seq < $1 THEN $1 ELSE cursor_seq END, \
         pending_delivery_id = $2 WHERE id = $3",
    )
    .bind(cursor_seq)
    .bind(oldest_pending.map(str::to_string))
    .bind(webhook_id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// The webhook's event deliveries still pending, oldest first, at most `limit`, from delivery
/// `from_id` on (the webhook's `pending_delivery_id`, its oldest pending one: the scan starts
/// there on the `(webhook_id, seq)` index instead of at the webhook's first delivery).
pub async fn pending_window(
    conn: &mut AnyConnection,
    webhook_id: &str,
    from_id: &str,
    limit: i64,
) -> StoreResult<Vec<DeliveryRow>> {
    sqlx::query(
        "SELECT * FROM webhook_deliveries WHERE webhook_id = $1 AND seq >= \
         (SELECT seq FROM webhook_deliveries WHERE id = $2) AND kind = 'events' AND \
         state = 'pending' ORDER BY seq LIMIT $3",
    )
    .bind(webhook_id.to_string())
    .bind(from_id.to_string())
    .bind(limit)
    .fetch_all(conn)
    .await?
    .iter()
    .map(decode_delivery)
    .collect()
}

/// The last event seq covered by the webhook's newest event delivery (None before its
/// first): new deliveries start after it.
pub async fn newest_delivery_last_seq(
    conn: &mut AnyConnection,
    webhook_id: &str,
) -> StoreResult<Option<i64>> {
    let row = sqlx::query(
        "SELECT last_seq FROM webhook_deliveries WHERE webhook_id = $1 AND kind = 'events' \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(webhook_id.to_string())
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        Some(r) => r.try_get("last_seq")?,
        None => None,
    })
}

/// A pending delivery whose events all passed their retention before it was acknowledged:
/// nothing is left to send, so it ends as `expired`.
pub async fn expire_delivery(conn: &mut AnyConnection, delivery_id: &str) -> StoreResult<()> {
    sqlx::query("UPDATE webhook_deliveries SET state = 'expired' WHERE id = $1")
        .bind(delivery_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// After a failure: the streak's start (kept if already failing), the next attempt's time, and
/// `disabled_reason` when the webhook is to be disabled.
pub async fn failed(
    conn: &mut AnyConnection,
    webhook_id: &str,
    failing_since_unix_ms: i64,
    next_attempt_unix_ms: i64,
    disable: Option<(&str, i64)>,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE webhooks SET failing_since_unix_ms = $1, next_attempt_unix_ms = $2, \
         disabled = $3, disabled_reason = $4, disabled_unix_ms = $5 WHERE id = $6",
    )
    .bind(failing_since_unix_ms)
    .bind(next_attempt_unix_ms)
    .bind(i64::from(disable.is_some()))
    .bind(disable.map(|(r, _)| r.to_string()))
    .bind(disable.map(|(_, at)| at))
    .bind(webhook_id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes at most `limit` finished deliveries (delivered, or failed tests) created before
/// `before_unix_ms`, with their attempts; returns how many. Pending ones stay: they are the
/// webhooks' unacknowledged batches.
pub async fn purge_history(
    conn: &mut AnyConnection,
    before_unix_ms: i64,
    limit: i64,
) -> StoreResult<u64> {
    let ids: Vec<String> = sqlx::query(
        "SELECT id FROM webhook_deliveries WHERE created_unix_ms < $1 AND state <> 'pending' \
         ORDER BY seq LIMIT $2",
    )
    .bind(before_unix_ms)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| r.try_get::<String, _>("id"))
    .collect::<Result<_, _>>()?;
    for id in &ids {
        sqlx::query("DELETE FROM webhook_attempts WHERE delivery_id = $1")
            .bind(id.clone())
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE id = $1")
            .bind(id.clone())
            .execute(&mut *conn)
            .await?;
    }
    Ok(u64::try_from(ids.len()).unwrap_or(0))
}

/// A page of the webhook's deliveries, newest first, with their attempts (oldest first).
pub async fn deliveries(
    conn: &mut AnyConnection,
    webhook_id: &str,
    before_seq: Option<i64>,
    limit: i64,
) -> StoreResult<Vec<(DeliveryRow, Vec<AttemptRow>)>> {
    let rows = sqlx::query(
        "SELECT * FROM webhook_deliveries WHERE webhook_id = $1 AND seq < $2 \
         ORDER BY seq DESC LIMIT $3",
    )
    .bind(webhook_id.to_string())
    .bind(before_seq.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let d = decode_delivery(r)?;
        let attempts = attempts(conn, &d.id).await?;
        out.push((d, attempts));
    }
    Ok(out)
}

/// A delivery's attempts, oldest first.
pub async fn attempts(conn: &mut AnyConnection, delivery_id: &str) -> StoreResult<Vec<AttemptRow>> {
    sqlx::query("SELECT * FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt")
        .bind(delivery_id.to_string())
        .fetch_all(conn)
        .await?
        .iter()
        .map(|r| {
            Ok(AttemptRow {
                attempt: r.try_get("attempt")?,
                at_unix_ms: r.try_get("at_unix_ms")?,
                ok: get_bool(r, "ok")?,
                status_code: r.try_get("status_code")?,
                error: r.try_get("error")?,
                duration_ms: r.try_get("duration_ms")?,
            })
        })
        .collect()
}

/// Seals secrets stored before sealing. Returns how many rows changed.
pub(super) async fn seal_existing(conn: &mut AnyConnection, sealer: &Sealer) -> StoreResult<u64> {
    let rows = sqlx::query("SELECT id, tenant_id, secret, previous_secret FROM webhooks")
        .fetch_all(&mut *conn)
        .await?;
    let mut n = 0;
    for r in rows {
        let id: String = r.try_get("id")?;
        let tenant: String = r.try_get("tenant_id")?;
        let secret: String = r.try_get("secret")?;
        let previous: Option<String> = r.try_get("previous_secret")?;
        let clear = |v: &str| !v.starts_with(super::sealed::SEALED_TEXT_PREFIX);
        if !clear(&secret) && !previous.as_deref().is_some_and(clear) {
            continue;
        }
        let secret = if clear(&secret) {
            seal_secret(conn, sealer, &tenant, &id, &secret).await?
        } else {
            secret
        };
        let previous = match previous {
            Some(p) if clear(&p) => Some(seal_secret(conn, sealer, &tenant, &id, &p).await?),
            other => other,
        };
        sqlx::query("UPDATE webhooks SET secret = $1, previous_secret = $2 WHERE id = $3")
            .bind(secret)
            .bind(previous)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        n += 1;
    }
    Ok(n)
}
