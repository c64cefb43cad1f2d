//! `/v1/webhooks`: a tenant's webhooks (create, list, show, delete, rotate-secret, enable,
//! test) and their delivery history.
//!
//! Scope: a key manages its own tenant's webhooks; operator owners may name any tenant with
//! `tenant` (like the events API); anyone else naming another tenant, or another tenant's
//! webhook id, gets 404. The secret is shown at create and at rotate-secret only. Every change
//! is a mutation with its audit entry (the secret is never in it).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::events::{decode_cursor, encode_cursor};
use super::{audit_json, new_id, ApiJson, ApiQuery, App};
use crate::auth::{role_allows, Caller, Permission};
use crate::store::webhooks::{self as ws, AttemptRow, DeliveryRow, WebhookRow};
use crate::store::{self, StoreError};
use crate::webhooks::{
    dispatch, is_event_type_token, sign, target, SECRET_OVERLAP_MS, WEBHOOKS_PER_TENANT_MAX,
    WEBHOOK_EVENT_TYPES_MAX,
};
use crate::ApiError;

/// Deliveries per page when `limit` is not given.
pub const DELIVERIES_PAGE_DEFAULT: i64 = 20;
/// Largest `limit` of the delivery history.
pub const DELIVERIES_PAGE_MAX: i64 = 100;

/// A webhook as the API shows it (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub tenant_id: String,
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// True once it kept failing for 24 h (or more); `POST .../enable` resumes it.
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    pub disabled_unix_ms: Option<i64>,
    /// Start of the current failure streak; null while deliveries succeed.
    pub failing_since_unix_ms: Option<i64>,
    /// When the next attempt is due while failing.
    pub next_attempt_unix_ms: i64,
    /// Until when the previous secret's signature is sent too (after a rotation).
    pub previous_secret_valid_until_unix_ms: Option<i64>,
    pub created_unix_ms: i64,
}

impl WebhookView {
    pub(crate) fn new(w: WebhookRow, now: i64) -> WebhookView {
        WebhookView {
            previous_secret_valid_until_unix_ms: w
                .previous_secret_until_unix_ms
                .filter(|until| *until > now),
            id: w.id,
            tenant_id: w.tenant_id,
            url: w.url,
            events: w.event_types,
            disabled: w.disabled,
            disabled_reason: w.disabled_reason,
            disabled_unix_ms: w.disabled_unix_ms,
            failing_since_unix_ms: w.failing_since_unix_ms,
            next_attempt_unix_ms: w.next_attempt_unix_ms,
            created_unix_ms: w.created_unix_ms,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `https://...` (http only to loopback, when the operator allows loopback targets).
    #[schema(max_length = 2048)]
    pub url: String,
    /// Event types to receive, e.g. `["delivered", "bounced"]` (1 to 32 tokens; the set is
    /// open, so types added later can be named).
    pub events: Vec<String>,
}

/// A new webhook and its secret, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookCreated {
    pub id: String,
    /// `whsec_...`: the HMAC key of `X-Petrel-Signature`. Not retrievable later.
    pub secret: String,
    pub webhook: WebhookView,
}

/// A new secret, shown once; the previous one stays valid until the time given.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretRotated {
    pub id: String,
    pub secret: String,
    pub previous_secret_valid_until_unix_ms: i64,
}

/// One attempt at sending a delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AttemptView {
    /// 1 for the first attempt.
    pub attempt: i64,
    pub at_unix_ms: i64,
    /// A 2xx came back.
    pub ok: bool,
    /// The HTTP status, when a response came.
    pub status_code: Option<i64>,
    /// Why it failed (status, timeout, connect or TLS error, refused address).
    pub error: Option<String>,
    pub duration_ms: i64,
}

impl From<AttemptRow> for AttemptView {
    fn from(a: AttemptRow) -> AttemptView {
        AttemptView {
            attempt: a.attempt,
            at_unix_ms: a.at_unix_ms,
            ok: a.ok,
            status_code: a.status_code,
            error: a.error,
            duration_ms: a.duration_ms,
        }
    }
}

/// One delivery: a batch of events (or a test) and its attempts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DeliveryView {
    /// `X-Petrel-Delivery-Id`: the same on every attempt.
    pub id: String,
    /// `events` or `test`.
    pub kind: String,
    /// `pending` (sent, or being retried), `delivered`, `failed` (a test that failed), or
    /// `expired` (its events passed the retention window before it was acknowledged).
    pub state: String,
    pub event_count: i64,
    pub created_unix_ms: i64,
    pub delivered_unix_ms: Option<i64>,
    /// Oldest first.
    pub attempts: Vec<AttemptView>,
}

fn delivery_view(d: DeliveryRow, attempts: Vec<AttemptRow>) -> DeliveryView {
    DeliveryView {
        id: d.id,
        kind: d.kind,
        state: d.state,
        event_count: d.event_count,
        created_unix_ms: d.created_unix_ms,
        delivered_unix_ms: d.delivered_unix_ms,
        attempts: attempts.into_iter().map(AttemptView::from).collect(),
    }
}

/// One page of deliveries, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveriesPage {
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    /// Operator owners: the tenant whose webhooks these are.
    pub tenant: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// 1 to 100; default 20.
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Operator owners: the tenant whose webhook this is.
    pub tenant: Option<String>,
}

/// The tenant `tenant` names for `caller`; 404 for another tenant unless an operator owner.
fn tenant_of(caller: &Caller, tenant: Option<&str>) -> Result<String, ApiError> {
    let owner = caller.is_operator && role_allows(caller.role, Permission::TenantsManage);
    match tenant {
        None => Ok(caller.tenant_id.clone()),
        Some(t) if t == caller.tenant_id || owner => Ok(t.to_string()),
        Some(_) => Err(StoreError::NotFound("tenant").into()),
    }
}

/// Checks and normalises the event type list (deduplicated, order kept).
fn event_types(v: Vec<String>) -> Result<Vec<String>, ApiError> {
    if v.is_empty() || v.len() > WEBHOOK_EVENT_TYPES_MAX {
        return Err(ApiError::invalid(format!(
            "events must list 1 to {WEBHOOK_EVENT_TYPES_MAX} event types"
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(v.len());
    for t in v {
        if !is_event_type_token(&t) {
            return Err(ApiError::invalid(format!(
                "not an event type: {t:?} (lower-case letters, digits, '_', '.', '-'; 1 to 32 bytes)"
            )));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

#[utoipa::path(
    post,
    operation_id = "webhooks_create",
    path = "/v1/webhooks",
    summary = "Create a webhook (secret shown once); it receives events from now on",
    params(TenantQuery),
    request_body = CreateWebhook,
    responses((status = 201, body = WebhookCreated)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::WebhooksWrite.name())))
)]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TenantQuery>,
    ApiJson(req): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, Json<WebhookCreated>), ApiError> {
    let tenant = tenant_of(&caller, q.tenant.as_deref())?;
    let types = event_types(req.events)?;
    let client = &app.webhooks.client;
    let t = target::parse(&req.url, client.allow_loopback())
        .map_err(|e| ApiError::invalid(format!("url: {e}")))?;
    target::resolve(&t, client.dns(), client.allow_loopback())
        .await
        .map_err(|e| ApiError::invalid(format!("url: {e}")))?;
    let now = app.now_ms();
    let secret = sign::new_secret();
    let mut m = app.db.begin_mutation().await?;
    store::tenants::get(m.conn(), app.db.sealer(), &tenant)
        .await?
        .ok_or(StoreError::NotFound("tenant"))?;
    if ws::count(m.conn(), &tenant).await? >= WEBHOOKS_PER_TENANT_MAX {
        return Err(ApiError::conflict(format!(
            "a tenant has at most {WEBHOOKS_PER_TENANT_MAX} webhooks"
        )));
    }
    let row = WebhookRow {
        id: new_id("wh"),
        tenant_id: tenant.clone(),
        url: req.url,
        event_types: types,
        secret: secret.clone(),
        previous_secret: None,
        previous_secret_until_unix_ms: None,
        // From the current end of the stream: a new webhook does not replay history.
        cursor_seq: ws::events_end_seq(m.conn()).await?,
        pending_delivery_id: None,
        disabled: false,
        disabled_reason: None,
        disabled_unix_ms: None,
        failing_since_unix_ms: None,
        next_attempt_unix_ms: now,
        created_unix_ms: now,
    };
    ws::insert(m.conn(), app.db.sealer(), &row).await?;
    let view = WebhookView::new(row, now);
    let entry = app.entry(
        &caller,
        Some(&tenant),
        "webhook.create",
        &view.id,
        None,
        audit_json(&view),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok((
        StatusCode::CREATED,
        Json(WebhookCreated {
            id: view.id.clone(),
            secret,
            webhook: view,
        }),
    ))
}

#[utoipa::path(
    get,
    operation_id = "webhooks_list",
    path = "/v1/webhooks",
    summary = "List webhooks",
    params(TenantQuery),
    responses((status = 200, body = Vec<WebhookView>)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::WebhooksRead.name())))
)]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> Result<Json<Vec<WebhookView>>, ApiError> {
    let tenant = tenant_of(&caller, q.tenant.as_deref())?;
    let now = app.now_ms();
    let rows = ws::list(&mut *app.db.conn().await?, app.db.sealer(), &tenant).await?;
    Ok(Json(
        rows.into_iter().map(|w| WebhookView::new(w, now)).collect(),
    ))
}

#[utoipa::path(
    get,
    operation_id = "webhooks_show",
    path = "/v1/webhooks/{id}",
    summary = "Show a webhook",
    params(("id" = String, Path, description = "The object's id"), TenantQuery),
    responses((status = 200, body = WebhookView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::WebhooksRead.name())))
)]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> Result<Json<WebhookView>, ApiError> {
    let tenant = tenant_of(&caller, q.tenant.as_deref())?;
    let w = ws::get(&mut *app.db.conn().await?, app.db.sealer(), &tenant, &id).await?;
    Ok(Json(WebhookView::new(w, app.now_ms())))
}

#[utoipa::path(
    delete,
    operation_id = "webhooks_delete",
    path = "/v1/webhooks/{id}",
    summary = "Delete a webhook and its delivery history",
    params(("id" = String, Path, description = "The object's id"), TenantQuery),
    responses((status = 204, description = "Done")),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::WebhooksWrite.name())))
)]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_of(&caller, q.tenant.as_deref())?;
    let mut m = app.db.begin_mutation().await?;
    let before = WebhookView::new(
        ws::get(m.conn(), app.db.sealer(), &tenant, &id).await?,
        app.now_ms(),
    );
    ws::delete(m.conn(), &tenant, &id).await?;
    let entry = app.entry(
        &caller,
        Some(&tenant),
        "webhook.delete",
        &id,
        audit_json(&before),
        None,
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    operation_id = "webhooks_rotate_secret",
    path = "/v1/webhooks/{id}/rotate-secret",
    summary = "New secret (shown once); the old one stays valid, and is signed with too, for 24 h",
    params(("id" = String, Path, description = "The object's id"), TenantQuery),
    responses((status = 200, body = SecretRotated)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::WebhooksWrite.name())))
)]
pub async fn rotate_secret(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> Result<Json<SecretRotated>, ApiError> {
    let tenant = tenant_of(&caller, q.tenant.as_deref())?;
    let now = app.now_ms();
    let until = now.saturating_add(SECRET_OVERLAP_MS);
    let secret = sign::new_secret();
    let mut m = app.db.begin_mutation().await?;
    let before = WebhookView::new(ws::get(m.conn(), app.db.sealer(), &tenant, &id).await?, now);
    ws::rotate_secret(m.conn(), app.db.sealer(), &tenant, &id, &secret, until).await?;
    let after = WebhookView::new(ws::get(m.conn(), app.db.sealer(), &tenant, &id).await?, now);
    let entry = app.entry(
        &caller,
        Some(&tenant),
        "webhook.rotate_secret",
        &id,
        audit_json(&before),
        audit_json(&after),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(SecretRotated {
        id,
        secret,
        previous_secret_valid_until_unix_ms: until,
    }))
}

#[utoipa::path(
    post,
    operation_id = "webhooks_enable",
    path = "/v1/webhooks/{id}/enable",
    summary = "Resume a disabled webhook (its pending delivery is sent again at once)",
    params(("id" = String, Path, description = "The object's id"), TenantQuery),
    responses((status = 200, body = WebhookView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::WebhooksWrite.name())))
)]
pub async fn enable(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> Result<Json<WebhookView>, ApiError> {
    let tenant = tenant_of(&caller, q.tenant.as_deref())?;
    let now = app.now_ms();
    let mut m = app.db.begin_mutation().await?;
    let before = WebhookView::new(ws::get(m.conn(), app.db.sealer(), &tenant, &id).await?, now);
    ws::enable(m.conn(), &tenant, &id, now).await?;
    let after = WebhookView::new(ws::get(m.conn(), app.db.sealer(), &tenant, &id).await?, now);
    let entry = app.entry(
        &caller,
        Some(&tenant),
        "webhook.enable",
        &id,
        audit_json(&before),
        audit_json(&after),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    app.webhooks.wake();
    Ok(Json(after))
}

#[utoipa::path(
    post,
    operation_id = "webhooks_test",
    path = "/v1/webhooks/{id}/test",
    summary = "Send one signed test delivery now and answer how it went",
    params(("id" = String, Path, description = "The object's id"), TenantQuery),
    responses((status = 200, body = DeliveryView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::WebhooksWrite.name())))
)]
pub async fn test(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> Result<Json<DeliveryView>, ApiError> {
    let tenant = tenant_of(&caller, q.tenant.as_deref())?;
    let w = ws::get(&mut *app.db.conn().await?, app.db.sealer(), &tenant, &id).await?;
    let (d, attempt) = dispatch::send_test(&app, &w).await?;
    Ok(Json(delivery_view(d, vec![attempt])))
}

#[utoipa::path(
    get,
    operation_id = "webhooks_deliveries",
    path = "/v1/webhooks/{id}/deliveries",
    summary = "The webhook's deliveries and every attempt, newest first (paged by cursor)",
    params(("id" = String, Path, description = "The object's id"), DeliveriesQuery),
    responses((status = 200, body = DeliveriesPage)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::WebhooksRead.name())))
)]
pub async fn deliveries(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> Result<Json<DeliveriesPage>, ApiError> {
    let tenant = tenant_of(&caller, q.tenant.as_deref())?;
    let limit = q.limit.unwrap_or(DELIVERIES_PAGE_DEFAULT);
    if !(1..=DELIVERIES_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {DELIVERIES_PAGE_MAX}"
        )));
    }
    let before = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let mut conn = app.db.conn().await?;
    ws::get(&mut conn, app.db.sealer(), &tenant, &id).await?;
    let mut rows = ws::deliveries(&mut conn, &id, before, limit + 1).await?;
    let page = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > page;
    rows.truncate(page);
    let next_cursor = if more {
        rows.last().map(|(d, _)| encode_cursor(d.seq))
    } else {
        None
    };
    Ok(Json(DeliveriesPage {
        deliveries: rows.into_iter().map(|(d, a)| delivery_view(d, a)).collect(),
        next_cursor,
    }))
}
