//! `/v1/tenants`: create, list, show, suspend/unsuspend, quotas. Managing tenants needs the
//! operator's `owner` role; any role may read its own tenant.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::credentials::{insert_credential, CredentialCreated, NewCredential};
use super::{audit_json, new_id, ApiJson, App};
use crate::auth::{Caller, Permission, Role};
use crate::store::{self, StoreError};
use crate::ApiError;

/// Longest tenant name, in bytes.
pub const TENANT_NAME_MAX_BYTES: usize = 64;

/// A tenant as the API shows it: its stored row (nothing in it is secret).
pub use crate::store::tenants::Tenant as TenantView;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1 to 64 of `[A-Za-z0-9-_. ]`.
    #[schema(pattern = r"^[A-Za-z0-9._ -]{1,64}$")]
    pub name: String,
    #[serde(default)]
    pub messages_per_second_max: Option<u64>,
    #[serde(default)]
    pub messages_per_day_max: Option<u64>,
    #[serde(default)]
    pub allow_unverified_domains: bool,
    /// Add `List-Unsubscribe` and one-click `List-Unsubscribe-Post` headers to the tenant's
    /// one-recipient messages (default off).
    #[serde(default)]
    pub list_unsubscribe: bool,
    /// The tenant forwards mail it received elsewhere: the engine adds an ARC set (RFC 8617)
    /// to its messages (default off).
    #[serde(default)]
    pub arc_seal: bool,
    /// The egress pool the tenant's mail leaves from (default: the engines' default pool).
    #[serde(default)]
    #[schema(pattern = r"^[a-z0-9_-]{1,64}$")]
    pub egress_pool: Option<String>,
    /// The tenant's share when tenants contend for a site, 1 to 100 (default 1).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub delivery_weight: Option<u64>,
}

/// `PATCH /v1/tenants/{id}`: the settings given change, the others stay.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    /// Add `List-Unsubscribe: <mailto:u-TOKEN@bounce domain>, <https://.../u/TOKEN>` and
    /// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 2369, RFC 8058) to the
    /// tenant's one-recipient messages, before DKIM signing. A message that has its own
    /// List-Unsubscribe keeps it.
    #[serde(default)]
    pub list_unsubscribe: Option<bool>,
    /// The tenant relays mail it received elsewhere (a forwarding service): the engine checks
    /// the DKIM signatures and ARC chain the message arrived with and adds an ARC set
    /// (`ARC-Authentication-Results`, `ARC-Message-Signature`, `ARC-Seal`, RFC 8617) signed
    /// with the sending domain's RSA DKIM key (ARC allows only `rsa-sha256`; a domain with
    /// Ed25519 keys alone sends unsealed). With it on, a message whose From domain is not the
    /// tenant's is accepted when its envelope sender's domain is (the forwarder's rewritten
    /// return path), and sealed with that domain's key.
    #[serde(default)]
    pub arc_seal: Option<bool>,
    /// The egress pool (a named set of source addresses the engines configure in
    /// `[[delivery.pools]]`) the tenant's mail leaves from: 1 to 64 of `[a-z0-9_-]`; `null`
    /// returns the tenant to the engines' default pool. An engine without a pool of that name
    /// uses its default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"^[a-z0-9_-]{1,64}$")]
    pub egress_pool: Option<Option<String>>,
    /// The tenant's share of a site's deliveries when tenants contend for it, relative to the
    /// others' weights: 1 (the default, all alike) to 100.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub delivery_weight: Option<u64>,
}

/// A field given, even as `null` (`Some(None)`), against one left out (`None`, by
/// `#[serde(default)]`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn check_egress_pool(pool: Option<&str>) -> Result<(), ApiError> {
    use petrel_policy::snapshot::{is_egress_pool_name, EGRESS_POOL_NAME_MAX_BYTES};
    match pool {
        Some(p) if !is_egress_pool_name(p) => Err(ApiError::invalid(format!(
            "egress_pool must be 1..={EGRESS_POOL_NAME_MAX_BYTES} characters of [a-z0-9_-]"
        ))),
        _ => Ok(()),
    }
}

/// The weight given, checked; the default when none is.
fn check_delivery_weight(weight: Option<u64>) -> Result<u32, ApiError> {
    use petrel_policy::snapshot::{
        DELIVERY_WEIGHT_DEFAULT, DELIVERY_WEIGHT_MAX, DELIVERY_WEIGHT_MIN,
    };
    let Some(w) = weight else {
        return Ok(DELIVERY_WEIGHT_DEFAULT);
    };
    u32::try_from(w)
        .ok()
        .filter(|w| (DELIVERY_WEIGHT_MIN..=DELIVERY_WEIGHT_MAX).contains(w))
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "delivery_weight must be {DELIVERY_WEIGHT_MIN}..={DELIVERY_WEIGHT_MAX}"
            ))
        })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
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

#[utoipa::path(
    post,
    operation_id = "tenants_create",
    path = "/v1/tenants",
    summary = "Create a tenant (returns its first admin key once)",
    request_body = CreateTenant,
    responses((status = 201, body = TenantCreated)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::TenantsManage.name())))
)]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<TenantCreated>), ApiError> {
    check_tenant_name(&req.name)?;
    check_egress_pool(req.egress_pool.as_deref())?;
    let delivery_weight = check_delivery_weight(req.delivery_weight)?;
    let tenant = TenantView {
        id: new_id("ten"),
        name: req.name,
        is_operator: false,
        suspended: false,
        messages_per_second_max: req.messages_per_second_max,
        messages_per_day_max: req.messages_per_day_max,
        allow_unverified_domains: req.allow_unverified_domains,
        created_unix_ms: app.now_ms(),
        list_unsubscribe: req.list_unsubscribe,
        arc_seal: req.arc_seal,
        egress_pool: req.egress_pool,
        delivery_weight,
    };
    let new_key = NewCredential::api_key(&tenant.id, "initial admin key", Role::Admin);
    let prepared = new_key.prepare(app.settings.hash_cost).await?;
    // The tenant's data key, committed on its own before the mutation seals with it.
    app.db.sealer().prepare(Some(&tenant.id)).await?;
    let mut m = app.db.begin_mutation().await?;
    store::tenants::insert(m.conn(), app.db.sealer(), &tenant).await?;
    let admin_key = insert_credential(m.conn(), prepared, app.now_ms()).await?;
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

#[utoipa::path(
    get,
    operation_id = "tenants_list",
    path = "/v1/tenants",
    summary = "List tenants",
    responses((status = 200, body = Vec<TenantView>)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::TenantsManage.name())))
)]
pub async fn list(
    State(app): State<App>,
    _caller: Caller,
) -> Result<Json<Vec<TenantView>>, ApiError> {
    Ok(Json(
        store::tenants::list(&mut *app.db.conn().await?, app.db.sealer()).await?,
    ))
}

/// Owners see any tenant; everyone else only their own (others: 404).
pub(crate) async fn visible_tenant(
    app: &App,
    caller: &Caller,
    id: &str,
) -> Result<TenantView, ApiError> {
    let mut conn = app.db.conn().await?;
    let owner =
        caller.is_operator && crate::auth::role_allows(caller.role, Permission::TenantsManage);
    let found = if owner {
        store::tenants::get(&mut conn, app.db.sealer(), id).await?
    } else {
        store::tenants::get_scoped(&mut conn, app.db.sealer(), &caller.tenant_id, id).await?
    };
    drop(conn);
    match found {
        Some(t) => Ok(t),
        // Owners learn of a deletion and how far its erasure went; anyone else: 404.
        None if owner => Err(super::tenant_delete::gone(app, id).await?),
        None => Err(ApiError::not_found("tenant")),
    }
}

#[utoipa::path(
    get,
    operation_id = "tenants_show",
    path = "/v1/tenants/{id}",
    summary = "Show a tenant (own tenant, or any for owners)",
    params(("id" = String, Path, description = "The object's id")),
    responses(
        (status = 200, body = TenantView),
        (status = 410, body = super::openapi::ErrorBody, description = "Deleted (owners): `error.details` is the deletion")
    ),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::TenantRead.name())))
)]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(visible_tenant(&app, &caller, &id).await?))
}

#[utoipa::path(
    patch,
    operation_id = "tenants_update",
    path = "/v1/tenants/{id}",
    summary = "Change a tenant's settings (list_unsubscribe, arc_seal, egress_pool, delivery_weight)",
    params(("id" = String, Path, description = "The object's id")),
    request_body = UpdateTenant,
    responses((status = 200, body = TenantView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::TenantsManage.name())))
)]
pub async fn update(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateTenant>,
) -> Result<Json<TenantView>, ApiError> {
    // Checked before the mutation begins: a refused change holds no write lock.
    if let Some(pool) = &req.egress_pool {
        check_egress_pool(pool.as_deref())?;
    }
    let weight = match req.delivery_weight {
        Some(w) => Some(check_delivery_weight(Some(w))?),
        None => None,
    };
    let mut change = TenantChange::begin(&app, &id).await?;
    let mut after = change.before.clone();
    if let Some(on) = req.list_unsubscribe {
        store::tenants::set_list_unsubscribe(change.conn(), &id, on).await?;
        after.list_unsubscribe = on;
    }
    if let Some(on) = req.arc_seal {
        store::tenants::set_arc_seal(change.conn(), &id, on).await?;
        after.arc_seal = on;
    }
    if let Some(pool) = req.egress_pool {
        store::tenants::set_egress_pool(change.conn(), &id, pool.as_deref()).await?;
        after.egress_pool = pool;
    }
    if let Some(w) = weight {
        store::tenants::set_delivery_weight(change.conn(), &id, w).await?;
        after.delivery_weight = w;
    }
    change.commit(&app, &caller, "tenant.update", after).await
}

#[utoipa::path(
    post,
    operation_id = "tenants_suspend",
    path = "/v1/tenants/{id}/suspend",
    summary = "Suspend a tenant",
    params(("id" = String, Path, description = "The object's id")),
    responses((status = 200, body = TenantView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::TenantsManage.name())))
)]
pub async fn suspend(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    set_suspended(app, caller, id, true).await
}

#[utoipa::path(
    post,
    operation_id = "tenants_unsuspend",
    path = "/v1/tenants/{id}/unsuspend",
    summary = "Lift a suspension",
    params(("id" = String, Path, description = "The object's id")),
    responses((status = 200, body = TenantView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::TenantsManage.name())))
)]
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
    let mut change = TenantChange::begin(&app, &id).await?;
    if change.before.is_operator && suspended {
        return Err(ApiError::conflict(
            "the operator tenant cannot be suspended",
        ));
    }
    store::tenants::set_suspended(change.conn(), &id, suspended).await?;
    let after = TenantView {
        suspended,
        ..change.before.clone()
    };
    let action = if suspended {
        "tenant.suspend"
    } else {
        "tenant.unsuspend"
    };
    change.commit(&app, &caller, action, after).await
}

/// A change to one tenant's row: the row as it was, read in the mutation that changes it.
pub(crate) struct TenantChange {
    m: store::Mutation,
    id: String,
    pub before: TenantView,
}

impl TenantChange {
    /// Begins the mutation and reads the tenant (404 when there is none).
    pub async fn begin(app: &App, id: &str) -> Result<TenantChange, ApiError> {
        let mut m = app.db.begin_mutation().await?;
        let before = store::tenants::get(m.conn(), app.db.sealer(), id)
            .await?
            .ok_or(StoreError::NotFound("tenant"))?;
        Ok(TenantChange {
            m,
            id: id.to_string(),
            before,
        })
    }

    pub fn conn(&mut self) -> &mut sqlx::AnyConnection {
        self.m.conn()
    }

    /// Commits with the audit entry (`action`, the row before and `after`) and pushes the new
    /// policy version.
    pub async fn commit(
        self,
        app: &App,
        caller: &Caller,
        action: &str,
        after: TenantView,
    ) -> Result<Json<TenantView>, ApiError> {
        let entry = app.entry(
            caller,
            Some(&self.id),
            action,
            &self.id,
            audit_json(&self.before),
            audit_json(&after),
        );
        let v = self.m.commit(entry).await?;
        app.notify(v);
        Ok(Json(after))
    }
}
