//! `/v1/tenants`: create, list, show, suspend/unsuspend, quotas. Managing tenants needs the
//! operator's `owner` role; any role may read its own tenant.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::credentials::{insert_credential, CredentialCreated, NewCredential};
use super::{audit_json, new_id, ApiJson, App};
use crate::auth::{Caller, Permission, Role};
use crate::store::{get_bool, get_opt_u64};
use crate::{ApiError, ControlError};

/// Longest tenant name, in bytes.
pub const TENANT_NAME_MAX_BYTES: usize = 64;

/// A tenant as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub is_operator: bool,
    pub suspended: bool,
    /// None: the default limit.
    pub messages_per_second_max: Option<u64>,
    pub messages_per_day_max: Option<u64>,
    pub allow_unverified_domains: bool,
    pub created_unix_ms: i64,
}

pub(crate) fn tenant_from(r: &AnyRow) -> Result<TenantView, sqlx::Error> {
    Ok(TenantView {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        is_operator: get_bool(r, "is_operator")?,
        suspended: get_bool(r, "suspended")?,
        messages_per_second_max: get_opt_u64(r, "messages_per_second_max")?,
        messages_per_day_max: get_opt_u64(r, "messages_per_day_max")?,
        allow_unverified_domains: get_bool(r, "allow_unverified_domains")?,
        created_unix_ms: r.try_get("created_unix_ms")?,
    })
}

pub(crate) async fn fetch_tenant<'e, E>(ex: E, id: &str) -> Result<Option<TenantView>, ApiError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query("SELECT * FROM tenants WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(ex)
        .await?;
    Ok(row.as_ref().map(tenant_from).transpose()?)
}

/// Inserts a tenant row (inside a mutation).
pub(crate) async fn insert_tenant(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    t: &TenantView,
) -> Result<(), ControlError> {
    sqlx::query(
        "INSERT INTO tenants (id, name, is_operator, suspended, messages_per_second_max, \
         messages_per_day_max, allow_unverified_domains, created_unix_ms) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
    )
    .bind(t.id.clone())
    .bind(t.name.clone())
    .bind(i64::from(t.is_operator))
    .bind(i64::from(t.suspended))
    .bind(t.messages_per_second_max.map(clamp_i64))
    .bind(t.messages_per_day_max.map(clamp_i64))
    .bind(i64::from(t.allow_unverified_domains))
    .bind(t.created_unix_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
    #[serde(default)]
    pub messages_per_second_max: Option<u64>,
    #[serde(default)]
    pub messages_per_day_max: Option<u64>,
    #[serde(default)]
    pub allow_unverified_domains: bool,
}

#[derive(Debug, Serialize)]
pub struct TenantCreated {
    pub tenant: TenantView,
    /// An `admin` API key for the new tenant; its secret is shown only here.
    pub admin_key: CredentialCreated,
}

fn check_tenant_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= TENANT_NAME_MAX_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_. ".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "tenant name must be 1..={TENANT_NAME_MAX_BYTES} characters of [A-Za-z0-9-_. ]"
        )))
    }
}

pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<TenantCreated>), ApiError> {
    caller.require(Permission::TenantsManage)?;
    check_tenant_name(&req.name)?;
    let tenant = TenantView {
        id: new_id("ten"),
        name: req.name,
        is_operator: false,
        suspended: false,
        messages_per_second_max: req.messages_per_second_max,
        messages_per_day_max: req.messages_per_day_max,
        allow_unverified_domains: req.allow_unverified_domains,
        created_unix_ms: app.now_ms(),
    };
    let new_key = NewCredential::api_key(&tenant.id, "initial admin key", Role::Admin);
    let prepared = new_key.prepare(app.settings.hash_cost).await?;
    let mut m = app.db.begin_mutation().await?;
    insert_tenant(&mut m.tx, &tenant).await?;
    let admin_key = insert_credential(&mut m.tx, prepared, app.now_ms()).await?;
    let entry = app.entry(
        &caller,
        Some(&tenant.id),
        "tenant.create",
        &tenant.id,
        None,
        audit_json(&tenant),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok((
        StatusCode::CREATED,
        Json(TenantCreated { tenant, admin_key }),
    ))
}

pub async fn list(
    State(app): State<App>,
    caller: Caller,
) -> Result<Json<Vec<TenantView>>, ApiError> {
    caller.require(Permission::TenantsManage)?;
    let rows = sqlx::query("SELECT * FROM tenants ORDER BY created_unix_ms, id")
        .fetch_all(&app.db.pool)
        .await?;
    let list = rows.iter().map(tenant_from).collect::<Result<_, _>>()?;
    Ok(Json(list))
}

/// Owners see any tenant; everyone else only their own (others: 404).
async fn visible_tenant(app: &App, caller: &Caller, id: &str) -> Result<TenantView, ApiError> {
    if caller.is_operator && crate::auth::role_allows(caller.role, Permission::TenantsManage) {
        fetch_tenant(&app.db.pool, id).await?
    } else {
        let row = sqlx::query("SELECT * FROM tenants WHERE id = $1 AND id = $2")
            .bind(id.to_string())
            .bind(caller.tenant_id.clone())
            .fetch_optional(&app.db.pool)
            .await?;
        row.as_ref().map(tenant_from).transpose()?
    }
    .ok_or_else(|| ApiError::not_found("tenant"))
}

pub async fn show(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    caller.require(Permission::TenantRead)?;
    Ok(Json(visible_tenant(&app, &caller, &id).await?))
}

pub async fn suspend(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    set_suspended(app, caller, id, true).await
}

pub async fn unsuspend(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    set_suspended(app, caller, id, false).await
}

async fn set_suspended(
    app: App,
    caller: Caller,
    id: String,
    suspended: bool,
) -> Result<Json<TenantView>, ApiError> {
    caller.require(Permission::TenantsManage)?;
    let mut m = app.db.begin_mutation().await?;
    let before = fetch_tenant(&mut *m.tx, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    if before.is_operator && suspended {
        return Err(ApiError::conflict(
            "the operator tenant cannot be suspended",
        ));
    }
    sqlx::query("UPDATE tenants SET suspended = $1 WHERE id = $2")
        .bind(i64::from(suspended))
        .bind(id.clone())
        .execute(&mut *m.tx)
        .await?;
    let after = TenantView {
        suspended,
        ..before.clone()
    };
    let action = if suspended {
        "tenant.suspend"
    } else {
        "tenant.unsuspend"
    };
    let entry = app.entry(
        &caller,
        Some(&id),
        action,
        &id,
        audit_json(&before),
        audit_json(&after),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(after))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    pub messages_per_second_max: Option<u64>,
    pub messages_per_day_max: Option<u64>,
}

/// Sets a tenant's quota (owners only: a tenant does not raise its own quota).
pub async fn set_limits(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TenantLimits>,
) -> Result<Json<TenantView>, ApiError> {
    caller.require(Permission::TenantsManage)?;
    let mut m = app.db.begin_mutation().await?;
    let before = fetch_tenant(&mut *m.tx, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    sqlx::query(
        "UPDATE tenants SET messages_per_second_max = $1, messages_per_day_max = $2 WHERE id = $3",
    )
    .bind(req.messages_per_second_max.map(clamp_i64))
    .bind(req.messages_per_day_max.map(clamp_i64))
    .bind(id.clone())
    .execute(&mut *m.tx)
    .await?;
    let after = TenantView {
        messages_per_second_max: req.messages_per_second_max,
        messages_per_day_max: req.messages_per_day_max,
        ..before.clone()
    };
    let entry = app.entry(
        &caller,
        Some(&id),
        "tenant.limits",
        &id,
        audit_json(&before),
        audit_json(&after),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(after))
}
