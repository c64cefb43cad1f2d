//! Every limit in one place: a tenant's quota (`PUT /v1/tenants/{id}/limits`), a sending
//! domain's rate (`PUT /v1/domains/{id}/limits`), the defaults and destination limits shared by
//! every tenant, and `GET /v1/limits`, which shows what limits the caller's tenant.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use petrel_policy::DefaultLimits;
use serde::{Deserialize, Serialize};

use super::domains::{fetch_domain, DomainView};
use super::tenants::TenantView;
use super::{audit_json, normalize_domain, ApiJson, App};
use crate::auth::{Caller, Permission};
use crate::store::limits::DestinationRow;
use crate::store::{self, StoreError};
use crate::ApiError;

/// Destination limits answered by one `GET /v1/limits`.
pub const DESTINATION_LIMITS_LISTED_MAX: i64 = 10_000;

/// One destination domain's limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DestinationView {
    pub domain: String,
    pub connections_max: Option<u64>,
    pub messages_per_second_max: Option<u64>,
    pub tls_required: bool,
}

impl From<DestinationRow> for DestinationView {
    fn from(d: DestinationRow) -> DestinationView {
        DestinationView {
            domain: d.domain,
            connections_max: d.connections_max,
            messages_per_second_max: d.messages_per_second_max,
            tls_required: d.tls_required,
        }
    }
}

/// One sending domain's limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DomainLimitView {
    pub id: String,
    pub name: String,
    pub messages_per_second_max: Option<u64>,
}

/// Everything that limits the caller's tenant.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimitsView {
    pub tenant: TenantView,
    pub domains: Vec<DomainLimitView>,
    pub destinations: Vec<DestinationView>,
    pub defaults: DefaultLimits,
}

#[utoipa::path(
    get,
    operation_id = "limits_show",
    path = "/v1/limits",
    summary = "Tenant, domain and destination limits and defaults",
    responses((status = 200, body = LimitsView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::LimitsRead.name())))
)]
pub async fn show(State(app): State<App>, caller: Caller) -> Result<Json<LimitsView>, ApiError> {
    let mut conn = app.db.conn().await?;
    let tenant = store::tenants::get(&mut conn, app.db.sealer(), &caller.tenant_id)
        .await?
        .ok_or(StoreError::NotFound("tenant"))?;
    let domains = store::domains::list(&mut conn, &caller.tenant_id)
        .await?
        .into_iter()
        .map(|d| DomainLimitView {
            id: d.id,
            name: d.name,
            messages_per_second_max: d.messages_per_second_max,
        })
        .collect();
    let destinations = store::limits::destinations(&mut conn, Some(DESTINATION_LIMITS_LISTED_MAX))
        .await?
        .into_iter()
        .map(DestinationView::from)
        .collect();
    Ok(Json(LimitsView {
        tenant,
        domains,
        destinations,
        defaults: store::limits::defaults(&mut conn).await?,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    pub messages_per_second_max: Option<u64>,
    pub messages_per_day_max: Option<u64>,
}

#[utoipa::path(
    put,
    operation_id = "limits_set_tenant",
    path = "/v1/tenants/{id}/limits",
    summary = "Set a tenant's quota (messages per second / per day)",
    params(("id" = String, Path, description = "The object's id")),
    request_body = TenantLimits,
    responses((status = 200, body = TenantView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::TenantsManage.name())))
)]
/// Sets a tenant's quota (owners only: a tenant does not raise its own quota).
pub async fn set_tenant(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TenantLimits>,
) -> Result<Json<TenantView>, ApiError> {
    let mut change = super::tenants::TenantChange::begin(&app, &id).await?;
    store::tenants::set_limits(
        change.conn(),
        &id,
        req.messages_per_second_max,
        req.messages_per_day_max,
    )
    .await?;
    let after = TenantView {
        messages_per_second_max: req.messages_per_second_max,
        messages_per_day_max: req.messages_per_day_max,
        ..change.before.clone()
    };
    change.commit(&app, &caller, "tenant.limits", after).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainLimits {
    pub messages_per_second_max: Option<u64>,
}

#[utoipa::path(
    put,
    operation_id = "limits_set_domain",
    path = "/v1/domains/{id}/limits",
    summary = "Set a sending domain's messages per second",
    params(("id" = String, Path, description = "The object's id")),
    request_body = DomainLimits,
    responses((status = 200, body = DomainView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::LimitsWrite.name())))
)]
/// Sets one of the caller's sending domains' messages per second.
pub async fn set_domain(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DomainLimits>,
) -> Result<Json<DomainView>, ApiError> {
    let mut m = app.db.begin_mutation().await?;
    let before = fetch_domain(m.conn(), &app, &caller.tenant_id, &id).await?;
    store::domains::set_rate(
        m.conn(),
        &caller.tenant_id,
        &id,
        req.messages_per_second_max,
    )
    .await?;
    let after = DomainView {
        messages_per_second_max: req.messages_per_second_max,
        ..before.clone()
    };
    let entry = app.entry(
        &caller,
        Some(&caller.tenant_id),
        "domain.limits",
        &id,
        audit_json(&before),
        audit_json(&after),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(after))
}

#[utoipa::path(
    put,
    operation_id = "limits_set_defaults",
    path = "/v1/limits/defaults",
    summary = "Set default limits",
    request_body = DefaultLimits,
    responses((status = 200, body = DefaultLimits)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::GlobalLimitsWrite.name())))
)]
pub async fn set_defaults(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<DefaultLimits>,
) -> Result<Json<DefaultLimits>, ApiError> {
    let mut m = app.db.begin_mutation().await?;
    let before = store::limits::defaults(m.conn()).await?;
    store::limits::set_defaults(m.conn(), &req).await?;
    let entry = app.entry(
        &caller,
        None,
        "limits.defaults",
        "defaults",
        audit_json(&before),
        audit_json(&req),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(req))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationLimits {
    #[serde(default)]
    pub connections_max: Option<u64>,
    #[serde(default)]
    pub messages_per_second_max: Option<u64>,
    #[serde(default)]
    pub tls_required: bool,
}

#[utoipa::path(
    put,
    operation_id = "limits_set_destination",
    path = "/v1/limits/destinations/{domain}",
    summary = "Set a destination domain's limits",
    params(("domain" = String, Path, description = "The destination domain name")),
    request_body = DestinationLimits,
    responses((status = 200, body = DestinationView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::GlobalLimitsWrite.name())))
)]
pub async fn set_destination(
    State(app): State<App>,
    caller: Caller,
    Path(domain): Path<String>,
    ApiJson(req): ApiJson<DestinationLimits>,
) -> Result<Json<DestinationView>, ApiError> {
    let domain = normalize_domain(&domain)?;
    let row = DestinationRow {
        domain: domain.clone(),
        connections_max: req.connections_max,
        messages_per_second_max: req.messages_per_second_max,
        tls_required: req.tls_required,
    };
    let mut m = app.db.begin_mutation().await?;
    let before = store::limits::destination(m.conn(), &domain)
        .await?
        .map(DestinationView::from);
    store::limits::upsert_destination(m.conn(), &row, app.now_ms()).await?;
    let after = DestinationView::from(row);
    let entry = app.entry(
        &caller,
        None,
        "limits.destination.set",
        &domain,
        before.as_ref().and_then(audit_json),
        audit_json(&after),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(after))
}

#[utoipa::path(
    delete,
    operation_id = "limits_delete_destination",
    path = "/v1/limits/destinations/{domain}",
    summary = "Remove a destination domain's limits",
    params(("domain" = String, Path, description = "The destination domain name")),
    responses((status = 204, description = "Done")),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::GlobalLimitsWrite.name())))
)]
pub async fn delete_destination(
    State(app): State<App>,
    caller: Caller,
    Path(domain): Path<String>,
) -> Result<StatusCode, ApiError> {
    let domain = normalize_domain(&domain)?;
    let mut m = app.db.begin_mutation().await?;
    let before = store::limits::destination(m.conn(), &domain)
        .await?
        .map(DestinationView::from)
        .ok_or(StoreError::NotFound("destination limit"))?;
    store::limits::delete_destination(m.conn(), &domain).await?;
    let entry = app.entry(
        &caller,
        None,
        "limits.destination.delete",
        &domain,
        audit_json(&before),
        None,
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(StatusCode::NO_CONTENT)
}
