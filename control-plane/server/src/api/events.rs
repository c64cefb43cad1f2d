//! `GET /v1/events` (filtered, paged), `GET /v1/messages/{id}` (one message's timeline) and
//! `PUT /v1/tenants/{id}/retention` (how long a tenant's events, message metadata and audit
//! rows are kept; `crate::retention`).
//!
//! Scope: a key reads its own tenant's events. Operator owners may name any tenant id with
//! `tenant` (also one no tenant has: events keep the id the engine sent), or `*` for every
//! tenant; anyone else naming another tenant gets 404, exactly like a missing object.
//!
//! Paging: newest first by the order the control plane stored them; `next_cursor` (absent on
//! the last page) is opaque (base64 of the last row's insertion sequence) and pages never
//! repeat or skip an event, also while new ones arrive. `since`/`until` are Unix milliseconds,
//! inclusive, on the event's `timestamp_ms`. `recipient`, `message_id`, `type` and `tag` match
//! exactly.

use axum::extract::{Path, State};
use axum::Json;
use base64::Engine as _;
use petrel_policy::event::{
    Bounce, Remote, Reply, ADDRESS_MAX_BYTES, EVENT_ID_FIELD_MAX_BYTES, EVENT_TYPE_MAX_BYTES,
    TAG_MAX_BYTES,
};
use petrel_policy::Event;
use serde::{Deserialize, Serialize};

use super::{audit_json, ApiJson, ApiQuery, App};
use crate::auth::{role_allows, Caller, Permission};
use crate::store::events::{EventFilter, Scope};
use crate::store::{self, StoreError};
use crate::ApiError;

/// Events per page when `limit` is not given.
pub const EVENTS_PAGE_DEFAULT: i64 = 100;
/// Largest `limit`.
pub const EVENTS_PAGE_MAX: i64 = 1_000;
/// `tenant` value with which operator owners read every tenant's events.
pub const ALL_TENANTS: &str = "*";

/// One event, as engines send it (`petrel_policy::Event`, field for field).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EventView {
    pub id: String,
    /// `accepted`, `rejected`, `delivered`, `deferred`, `bounced`, `expired`, or a newer type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix ms.
    pub timestamp_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rfc822_message_id: Option<String>,
    pub sender: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<Remote>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce: Option<Bounce>,
    /// A `bounced` event from a bounce message that came back later (the return-path intake).
    #[serde(rename = "async", default, skip_serializing_if = "std::ops::Not::not")]
    pub is_async: bool,
    /// What Petrel adds about the event (a complaint's feedback type, a DMARC report row, the
    /// failing checks of a refused domain, a warning's rates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

impl From<Event> for EventView {
    fn from(e: Event) -> EventView {
        // Destructured so a field added to the event fails to compile here.
        let Event {
            id,
            kind,
            timestamp_ms,
            tenant_id,
            message_id,
            rfc822_message_id,
            sender,
            from_domain,
            recipient,
            tags,
            metadata,
            attempt,
            remote,
            reply,
            bounce,
            is_async,
            details,
        } = e;
        EventView {
            id,
            kind: kind.as_str().to_string(),
            timestamp_ms,
            tenant_id,
            message_id,
            rfc822_message_id,
            sender,
            from_domain,
            recipient,
            tags,
            metadata,
            attempt,
            remote,
            reply,
            bounce,
            is_async,
            details,
        }
    }
}

/// The rows `tenant` names for `caller` (see the module doc); 404 for a foreign tenant.
pub fn scope(caller: &Caller, tenant: Option<&str>) -> Result<Scope, ApiError> {
    let owner = caller.is_operator && role_allows(caller.role, Permission::TenantsManage);
    match tenant {
        None => Ok(Scope::Tenant(caller.tenant_id.clone())),
        Some(t) if t == caller.tenant_id => Ok(Scope::Tenant(t.to_string())),
        Some(ALL_TENANTS) if owner => Ok(Scope::All),
        Some(t) if owner && t.len() <= EVENT_ID_FIELD_MAX_BYTES => Ok(Scope::Tenant(t.to_string())),
        Some(_) => Err(StoreError::NotFound("tenant").into()),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Event type, e.g. `bounced`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    pub recipient: Option<String>,
    /// Petrel's message id.
    pub message_id: Option<String>,
    pub tag: Option<String>,
    /// Unix ms, inclusive, on the event's `timestamp_ms`.
    pub since: Option<i64>,
    /// Unix ms, inclusive, on the event's `timestamp_ms`.
    pub until: Option<i64>,
    /// 1 to 1000; default 100.
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Operator owners: a tenant id, or `*` for all tenants.
    pub tenant: Option<String>,
}

/// One page of events, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventsPage {
    pub events: Vec<EventView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The opaque cursor after the row with insertion sequence `seq`.
pub fn encode_cursor(seq: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("e{seq}"))
}

/// The insertion sequence in a cursor; 400 for anything [`encode_cursor`] did not make.
pub fn decode_cursor(cursor: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::bad_request("bad cursor");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
    text.strip_prefix('e')
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(bad)
}

fn bounded(name: &str, v: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    match v {
        Some(s) if s.len() > max => Err(ApiError::bad_request(format!(
            "{name} longer than {max} bytes"
        ))),
        other => Ok(other),
    }
}

#[utoipa::path(
    get,
    operation_id = "events_list",
    path = "/v1/events",
    summary = "Delivery events, newest first (filters: type, recipient, message_id, tag, since, until; paged by cursor)",
    params(EventsQuery),
    responses((status = 200, body = EventsPage)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::EventsRead.name())))
)]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let limit = q.limit.unwrap_or(EVENTS_PAGE_DEFAULT);
    if !(1..=EVENTS_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {EVENTS_PAGE_MAX}"
        )));
    }
    let filter = EventFilter {
        scope: scope(&caller, q.tenant.as_deref())?,
        kind: bounded("type", q.kind, EVENT_TYPE_MAX_BYTES)?,
        recipient: bounded("recipient", q.recipient, ADDRESS_MAX_BYTES)?,
        message_id: bounded("message_id", q.message_id, EVENT_ID_FIELD_MAX_BYTES)?,
        tag: bounded("tag", q.tag, TAG_MAX_BYTES)?,
        since_ms: q.since,
        until_ms: q.until,
        before_seq: q.cursor.as_deref().map(decode_cursor).transpose()?,
    };
    let mut conn = app.db.conn().await?;
    // One row more than the page says whether there is a next page.
    let mut rows = store::events::list(&mut conn, &filter, limit + 1).await?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if more {
        rows.last().map(|r| encode_cursor(r.seq))
    } else {
        None
    };
    note_read(&app, &caller, &filter.scope, "events", rows.len());
    Ok(Json(EventsPage {
        events: rows.into_iter().map(|r| r.event.into()).collect(),
        next_cursor,
    }))
}

/// Counts a read of event data for the audit log (`events.read`, aggregated per caller,
/// tenant and window: `crate::audit_signals`).
fn note_read(app: &App, caller: &Caller, scope: &Scope, kind: &str, rows: usize) {
    let tenant_id = match scope {
        Scope::Tenant(t) => Some(t.clone()),
        Scope::All => None,
    };
    app.aggregates.note(
        crate::audit_signals::AggregateKey {
            action: crate::audit_signals::EVENTS_READ_ACTION,
            target: tenant_id.clone().unwrap_or_else(|| ALL_TENANTS.into()),
            tenant_id,
            actor: caller.actor(),
            remote_addr: caller.remote.to_string(),
        },
        rows as u64,
        kind,
        app.now_ms(),
    );
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MessageQuery {
    /// Operator owners: the message's tenant id, or `*` for any tenant.
    pub tenant: Option<String>,
}

/// One message and its timeline.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageView {
    pub message_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rfc822_message_id: Option<String>,
    pub sender: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_domain: Option<String>,
    /// Every recipient with an event, in order of first appearance.
    pub recipients: Vec<String>,
    /// Its events, oldest first.
    pub events: Vec<EventView>,
}

#[utoipa::path(
    get,
    operation_id = "messages_show",
    path = "/v1/messages/{id}",
    summary = "One message (Petrel's message id) and its events in time order",
    params(("id" = String, Path, description = "Petrel's message id"), MessageQuery),
    responses((status = 200, body = MessageView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::EventsRead.name())))
)]
pub async fn message(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<MessageQuery>,
) -> Result<Json<MessageView>, ApiError> {
    let scope = scope(&caller, q.tenant.as_deref())?;
    let mut conn = app.db.conn().await?;
    let rows = store::events::message(&mut conn, &scope, &id).await?;
    note_read(&app, &caller, &scope, "message", rows.len());
    let first = rows
        .first()
        .map(|r| r.event.clone())
        .ok_or(StoreError::NotFound("message"))?;
    let mut recipients: Vec<String> = Vec::new();
    for r in &rows {
        if let Some(rcpt) = &r.event.recipient {
            if !recipients.contains(rcpt) {
                recipients.push(rcpt.clone());
            }
        }
    }
    // Fields that later events may know better (the header id is known once accepted).
    let rfc822_message_id = rows.iter().find_map(|r| r.event.rfc822_message_id.clone());
    Ok(Json(MessageView {
        message_id: id,
        tenant_id: first.tenant_id,
        rfc822_message_id,
        sender: first.sender,
        from_domain: first.from_domain,
        recipients,
        events: rows.into_iter().map(|r| r.event.into()).collect(),
    }))
}

/// `PUT /v1/tenants/{id}/retention`: the windows given change, the others stay. Each must be
/// within the operator's bounds (`--retention-bounds`; by default events and message metadata
/// 1 to 3650 days, audit rows 30 to 3650).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Days events are kept (default 30).
    #[serde(default)]
    pub events_days: Option<i64>,
    /// Days message metadata (tags, `X-Petrel-Metadata`, Message-ID) stays on events
    /// (default 30).
    #[serde(default)]
    pub messages_days: Option<i64>,
    /// Days audit rows are kept (default 90).
    #[serde(default)]
    pub audit_days: Option<i64>,
}

/// A tenant's retention windows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RetentionView {
    pub tenant_id: String,
    pub events_days: i64,
    pub messages_days: i64,
    pub audit_days: i64,
}

#[utoipa::path(
    put,
    operation_id = "tenants_set_retention",
    path = "/v1/tenants/{id}/retention",
    summary = "Set how many days a tenant's events, message metadata and audit rows are kept",
    params(("id" = String, Path, description = "The object's id")),
    request_body = Retention,
    responses((status = 200, body = RetentionView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::TenantsManage.name())))
)]
pub async fn set_retention(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<Retention>,
) -> Result<Json<RetentionView>, ApiError> {
    let b = app.settings.retention;
    for (name, v, (min, max)) in [
        ("events_days", req.events_days, b.events),
        ("messages_days", req.messages_days, b.messages),
        ("audit_days", req.audit_days, b.audit),
    ] {
        if v.is_some_and(|d| !(min..=max).contains(&d)) {
            return Err(ApiError::invalid(format!("{name} must be {min} to {max}")));
        }
    }
    if req.events_days.is_none() && req.messages_days.is_none() && req.audit_days.is_none() {
        return Err(ApiError::invalid(
            "give events_days, messages_days or audit_days",
        ));
    }
    let mut m = app.db.begin_mutation().await?;
    let before = store::tenants::retention(m.conn(), &id)
        .await?
        .ok_or(StoreError::NotFound("tenant"))?;
    let after = store::tenants::RetentionDays {
        events: req.events_days.unwrap_or(before.events),
        messages: req.messages_days.unwrap_or(before.messages),
        audit: req.audit_days.unwrap_or(before.audit),
    };
    store::tenants::set_retention(m.conn(), &id, after).await?;
    let view = |d: store::tenants::RetentionDays| RetentionView {
        tenant_id: id.clone(),
        events_days: d.events,
        messages_days: d.messages,
        audit_days: d.audit,
    };
    let after = view(after);
    let entry = app.entry(
        &caller,
        Some(&id),
        "tenant.retention.set",
        &id,
        audit_json(&view(before)),
        audit_json(&after),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(after))
}
