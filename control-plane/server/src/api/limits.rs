//! `/v1/limits` (tenant, domain, destination limits and defaults), `/v1/audit-log` and
//! `/v1/engines`: the read-mostly operator views.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use petrel_policy::DefaultLimits;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::tenants::{clamp_i64, fetch_tenant, TenantView};
use super::{audit_json, normalize_domain, ApiJson, ApiQuery, App};
use crate::audit::{AuditFilter, AuditRow, VerifyReport};
use crate::auth::{role_allows, Caller, Permission};
use crate::store::{get_bool, get_opt_u64};
use crate::ApiError;

/// Destination limits answered by one `GET /v1/limits`.
pub const DESTINATION_LIMITS_LISTED_MAX: i64 = 10_000;

/// One destination domain's limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DestinationView {
    pub domain: String,
    pub connections_max: Option<u64>,
    pub messages_per_second_max: Option<u64>,
    pub tls_required: bool,
}

/// One sending domain's limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DomainLimitView {
    pub id: String,
    pub name: String,
    pub messages_per_second_max: Option<u64>,
}

/// Everything that limits the caller's tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitsView {
    pub tenant: TenantView,
    pub domains: Vec<DomainLimitView>,
    pub destinations: Vec<DestinationView>,
    pub defaults: DefaultLimits,
}

pub(crate) async fn read_defaults<'e, E>(ex: E) -> Result<DefaultLimits, ApiError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let text: String = sqlx::query("SELECT defaults_json FROM petrel_meta WHERE id = 1")
        .fetch_one(ex)
        .await?
        .try_get("defaults_json")?;
    serde_json::from_str(&text).map_err(|e| ApiError::internal(format!("stored defaults: {e}")))
}

pub(crate) async fn read_destinations<'e, E>(ex: E) -> Result<Vec<DestinationView>, ApiError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query("SELECT * FROM destination_limits ORDER BY domain LIMIT $1")
        .bind(DESTINATION_LIMITS_LISTED_MAX)
        .fetch_all(ex)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DestinationView {
                domain: r.try_get("domain")?,
                connections_max: get_opt_u64(r, "connections_max")?,
                messages_per_second_max: get_opt_u64(r, "messages_per_second_max")?,
                tls_required: get_bool(r, "tls_required")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(ApiError::from)
}

pub async fn show(State(app): State<App>, caller: Caller) -> Result<Json<LimitsView>, ApiError> {
    caller.require(Permission::LimitsRead)?;
    let tenant = fetch_tenant(&app.db.pool, &caller.tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    let domains = sqlx::query(
        "SELECT id, name, messages_per_second_max FROM domains WHERE tenant_id = $1 ORDER BY name",
    )
    .bind(caller.tenant_id.clone())
    .fetch_all(&app.db.pool)
    .await?
    .iter()
    .map(|r| {
        Ok(DomainLimitView {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            messages_per_second_max: get_opt_u64(r, "messages_per_second_max")?,
        })
    })
    .collect::<Result<_, sqlx::Error>>()?;
    Ok(Json(LimitsView {
        tenant,
        domains,
        destinations: read_destinations(&app.db.pool).await?,
        defaults: read_defaults(&app.db.pool).await?,
    }))
}

pub async fn set_defaults(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<DefaultLimits>,
) -> Result<Json<DefaultLimits>, ApiError> {
    caller.require(Permission::GlobalLimitsWrite)?;
    let text = serde_json::to_string(&req).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut m = app.db.begin_mutation().await?;
    let before = read_defaults(&mut *m.tx).await?;
    sqlx::query("UPDATE petrel_meta SET defaults_json = $1 WHERE id = 1")
        .bind(text)
        .execute(&mut *m.tx)
        .await?;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationLimits {
    #[serde(default)]
    pub connections_max: Option<u64>,
    #[serde(default)]
    pub messages_per_second_max: Option<u64>,
    #[serde(default)]
    pub tls_required: bool,
}

async fn fetch_destination(
    conn: &mut sqlx::AnyConnection,
    domain: &str,
) -> Result<Option<DestinationView>, ApiError> {
    let row = sqlx::query("SELECT * FROM destination_limits WHERE domain = $1")
        .bind(domain.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(DestinationView {
            domain: r.try_get("domain")?,
            connections_max: get_opt_u64(&r, "connections_max")?,
            messages_per_second_max: get_opt_u64(&r, "messages_per_second_max")?,
            tls_required: get_bool(&r, "tls_required")?,
        })
    })
    .transpose()
    .map_err(|e: sqlx::Error| ApiError::from(e))
}

pub async fn set_destination(
    State(app): State<App>,
    caller: Caller,
    Path(domain): Path<String>,
    ApiJson(req): ApiJson<DestinationLimits>,
) -> Result<Json<DestinationView>, ApiError> {
    caller.require(Permission::GlobalLimitsWrite)?;
    let domain = normalize_domain(&domain)?;
    let after = DestinationView {
        domain: domain.clone(),
        connections_max: req.connections_max,
        messages_per_second_max: req.messages_per_second_max,
        tls_required: req.tls_required,
    };
    let mut m = app.db.begin_mutation().await?;
    let before = fetch_destination(&mut m.tx, &domain).await?;
    sqlx::query(
        "INSERT INTO destination_limits (domain, connections_max, messages_per_second_max, \
         tls_required, updated_unix_ms) VALUES ($1,$2,$3,$4,$5) ON CONFLICT (domain) DO UPDATE \
         SET connections_max = excluded.connections_max, \
         messages_per_second_max = excluded.messages_per_second_max, \
         tls_required = excluded.tls_required, updated_unix_ms = excluded.updated_unix_ms",
    )
    .bind(domain.clone())
    .bind(req.connections_max.map(clamp_i64))
    .bind(req.messages_per_second_max.map(clamp_i64))
    .bind(i64::from(req.tls_required))
    .bind(app.now_ms())
    .execute(&mut *m.tx)
    .await?;
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

pub async fn delete_destination(
    State(app): State<App>,
    caller: Caller,
    Path(domain): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Permission::GlobalLimitsWrite)?;
    let domain = normalize_domain(&domain)?;
    let mut m = app.db.begin_mutation().await?;
    let before = fetch_destination(&mut m.tx, &domain)
        .await?
        .ok_or_else(|| ApiError::not_found("destination limit"))?;
    sqlx::query("DELETE FROM destination_limits WHERE domain = $1")
        .bind(domain.clone())
        .execute(&mut *m.tx)
        .await?;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub action: Option<String>,
    pub actor: Option<String>,
    /// Unix ms, inclusive.
    pub since: Option<i64>,
    /// Unix ms, inclusive.
    pub until: Option<i64>,
    pub limit: Option<i64>,
}

/// Admins see their tenant's rows; operator owners see every row.
pub async fn audit_list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditRow>>, ApiError> {
    caller.require(Permission::AuditRead)?;
    let all = caller.is_operator && role_allows(caller.role, Permission::AuditVerify);
    let filter = AuditFilter {
        tenant_id: if all {
            None
        } else {
            Some(caller.tenant_id.clone())
        },
        action: q.action,
        actor: q.actor,
        since_unix_ms: q.since,
        until_unix_ms: q.until,
        limit: q.limit,
    };
    Ok(Json(crate::audit::list(&app.db.pool, &filter).await?))
}

pub async fn audit_verify(
    State(app): State<App>,
    caller: Caller,
) -> Result<Json<VerifyReport>, ApiError> {
    caller.require(Permission::AuditVerify)?;
    Ok(Json(crate::audit::verify(&app.db.pool).await?))
}

pub async fn engines(
    State(app): State<App>,
    caller: Caller,
) -> Result<Json<Vec<crate::push::EngineView>>, ApiError> {
    caller.require(Permission::EnginesRead)?;
    Ok(Json(crate::push::list_engines(&app.db.pool).await?))
}
