//! `/v1/tenants/{id}/guardrails`: a tenant's new-tenant cap and reputation levels (readable by
//! the tenant itself), and the two operator actions: lift the new-tenant cap, re-enable
//! sending the guardrails disabled. Both operator actions need the operator's owner key, are
//! audited, and bump the policy version (engines learn of them in the next snapshot); the
//! re-enable also writes a `sending_enabled` event and a baseline, so the mail that disabled
//! the scope does not disable it again at the next check. Re-enabling what is not disabled
//! changes nothing and answers the same view (idempotent).

use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{normalize_domain, ApiJson, App};
use crate::auth::{role_allows, Caller, Permission};
use crate::guardrails::rules::{self, Level, Metric};
use crate::guardrails::{control_event, details, insert_event};
use crate::store::events::bucket_start;
use crate::store::{self, guardrails as gstore, StoreError};
use crate::ApiError;

/// A new tenant's cap as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CapView {
    pub messages_max: u32,
    pub window_ms: u64,
    /// The cap applies until then (the tenant's creation plus the new-tenant period).
    pub until_unix_ms: u64,
    /// True while it applies (not lifted, not past `until_unix_ms`).
    pub active: bool,
}

/// One reputation level that is not `ok`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LevelView {
    /// A sending domain, or null for the tenant as a whole.
    pub domain: Option<String>,
    /// `bounce_rate` or `complaint_rate`.
    pub metric: String,
    /// `warned` or `disabled`.
    pub level: String,
    /// The warning or the reason engines answer with.
    pub note: String,
    /// The rate that set the level (0.085 = 8.5 %).
    pub rate: f64,
    pub volume: i64,
    pub changed_unix_ms: i64,
}

/// A tenant's guardrails.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GuardrailsView {
    pub tenant_id: String,
    /// Null: no cap (lifted, an operator tenant, or caps are off).
    pub new_tenant_cap: Option<CapView>,
    pub cap_lifted: bool,
    pub levels: Vec<LevelView>,
}

/// `POST .../guardrails/enable`: which scope to re-enable.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnableSending {
    /// A sending domain of the tenant; absent: the tenant as a whole.
    #[serde(default)]
    pub domain: Option<String>,
}

fn is_owner(caller: &Caller) -> bool {
    caller.is_operator && role_allows(caller.role, Permission::TenantsManage)
}

async fn view(app: &App, tenant_id: &str) -> Result<GuardrailsView, ApiError> {
    let mut conn = app.db.conn().await?;
    let tenant = store::tenants::get(&mut conn, app.db.sealer(), tenant_id)
        .await?
        .ok_or(StoreError::NotFound("tenant"))?;
    let lifted = gstore::cap_lifts(&mut conn).await?.contains(tenant_id);
    let ids = [tenant_id.to_string()];
    let levels = gstore::states(&mut conn, Some(&ids[..]))
        .await?
        .into_iter()
        .map(|s| LevelView {
            domain: (!s.scope_domain.is_empty()).then_some(s.scope_domain),
            metric: s.metric,
            level: s.level,
            note: s.note,
            rate: s.rate_ppm as f64 / rules::PPM as f64,
            volume: s.volume,
            changed_unix_ms: s.changed_unix_ms,
        })
        .collect();
    let now = u64::try_from(app.now_ms()).unwrap_or(0);
    let cap = app
        .settings
        .guardrails
        .cap_for(tenant.created_unix_ms, tenant.is_operator, false)
        .map(|c| CapView {
            messages_max: c.messages_max,
            window_ms: c.window_ms,
            until_unix_ms: c.until_unix_ms,
            active: !lifted && c.applies(now),
        });
    Ok(GuardrailsView {
        tenant_id: tenant.id,
        new_tenant_cap: cap,
        cap_lifted: lifted,
        levels,
    })
}

#[utoipa::path(
    get,
    operation_id = "guardrails_show",
    path = "/v1/tenants/{id}/guardrails",
    summary = "A tenant's new-tenant cap and reputation levels (own tenant, or any for owners)",
    params(("id" = String, Path, description = "The object's id")),
    responses((status = 200, body = GuardrailsView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::TenantRead.name())))
)]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<GuardrailsView>, ApiError> {
    if id != caller.tenant_id && !is_owner(&caller) {
        return Err(ApiError::not_found("tenant"));
    }
    Ok(Json(view(&app, &id).await?))
}

#[utoipa::path(
    post,
    operation_id = "guardrails_lift_cap",
    path = "/v1/tenants/{id}/guardrails/lift-cap",
    summary = "Lift a new tenant's sending cap (operator owners)",
    params(("id" = String, Path, description = "The object's id")),
    responses((status = 200, body = GuardrailsView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::TenantsManage.name())))
)]
pub async fn lift_cap(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<GuardrailsView>, ApiError> {
    if !is_owner(&caller) {
        return Err(ApiError::forbidden(
            "only the operator lifts a new tenant's cap",
        ));
    }
    let before = view(&app, &id).await?;
    let mut m = app.db.begin_mutation().await?;
    gstore::lift_cap(m.conn(), &id, &caller.actor(), app.now_ms()).await?;
    let entry = app.entry(
        &caller,
        Some(&id),
        "guard.cap_lifted",
        &id,
        Some(json!({"cap_lifted": before.cap_lifted})),
        Some(json!({"cap_lifted": true})),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(view(&app, &id).await?))
}

#[utoipa::path(
    post,
    operation_id = "guardrails_enable",
    path = "/v1/tenants/{id}/guardrails/enable",
    summary = "Re-enable sending the guardrails disabled, for the tenant or one of its domains (operator owners)",
    params(("id" = String, Path, description = "The object's id")),
    request_body = EnableSending,
    responses((status = 200, body = GuardrailsView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::TenantsManage.name())))
)]
pub async fn enable(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<EnableSending>,
) -> Result<Json<GuardrailsView>, ApiError> {
    if !is_owner(&caller) {
        return Err(ApiError::forbidden("only the operator re-enables sending"));
    }
    let scope = req
        .domain
        .as_deref()
        .map(normalize_domain)
        .transpose()?
        .unwrap_or_default();
    let now = app.now_ms();
    let th = app.settings.guardrails.thresholds();
    let ids = [id.clone()];
    let mut m = app.db.begin_mutation().await?;
    store::tenants::get(m.conn(), app.db.sealer(), &id)
        .await?
        .ok_or(StoreError::NotFound("tenant"))?;
    let states = gstore::states(m.conn(), Some(&ids[..])).await?;
    let Some(disabled) = states
        .iter()
        .find(|s| s.scope_domain == scope && Level::parse(&s.level) == Level::Disabled)
        .cloned()
    else {
        // Idempotent: sending there is enabled already (nothing changes, nothing is audited).
        drop(m);
        return Ok(Json(view(&app, &id).await?));
    };
    // The baseline: what the scope has counted in the current bucket so far.
    let bucket = bucket_start(now);
    let rows = gstore::window_buckets(m.conn(), bucket, Some(&ids[..])).await?;
    let domains = gstore::domains(m.conn(), Some(&ids[..])).await?;
    let still_disabled: HashSet<String> = states
        .iter()
        .filter(|s| !s.scope_domain.is_empty() && s.scope_domain != scope)
        .filter(|s| Level::parse(&s.level) == Level::Disabled)
        .map(|s| s.scope_domain.clone())
        .collect();
    let c = rules::scope_counts(&rows, &domains, &id, &scope, &still_disabled);
    gstore::set_baseline(
        m.conn(),
        &gstore::BaselineRow {
            tenant_id: id.clone(),
            scope_domain: scope.clone(),
            bucket_start_ms: bucket,
            sent: c.sent,
            bounced_hard: c.bounced_hard,
            complained: c.complained,
            set_unix_ms: now,
        },
    )
    .await?;
    gstore::clear_state(m.conn(), &id, &scope, None).await?;
    let metric = Metric::parse(&disabled.metric).unwrap_or(Metric::BounceRate);
    let mut d = details(&th, metric, disabled.rate_ppm, disabled.volume);
    d.insert("by".into(), json!(caller.actor()));
    d.insert("reason".into(), json!(disabled.note));
    let event = control_event("sending_enabled", &id, &scope, now, d.clone());
    insert_event(&app, m.conn(), &event, now).await?;
    let target = if scope.is_empty() {
        id.clone()
    } else {
        scope.clone()
    };
    let entry = app.entry(
        &caller,
        Some(&id),
        "guard.sending_enabled",
        &target,
        Some(json!({"level": "disabled", "note": disabled.note})),
        Some(serde_json::Value::Object(d)),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    app.webhooks.wake();
    // Refresh the tenant's note for X-Petrel-Warning.
    crate::guardrails::evaluate(&app, Some(&ids[..])).await?;
    Ok(Json(view(&app, &id).await?))
}
