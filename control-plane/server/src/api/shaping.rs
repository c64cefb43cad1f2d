//! `/v1/shaping/providers`: the provider shaping limits pushed to every engine (issue 15,
//! "Limits pushed from the control plane are laid over the file"). Each engine lays them over
//! its shaping files (the shipped `shaping.toml` and its `delivery.shaping_file`) without a
//! restart. Operator owners only; every change is audited and bumps the policy version.
//!
//! The control plane does not know the engines' files, so any well-formed provider name is
//! accepted and an engine ignores one none of its providers has (an overlay cannot add a
//! provider: it has no MX patterns to match). `default` addresses the files' `[default]`
//! section, which every provider falls back to.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use petrel_policy::snapshot::{
    is_shaping_provider_name, ShapingLimits, SHAPING_PROVIDERS_MAX, SHAPING_PROVIDER_NAME_MAX_BYTES,
};
use serde::{Deserialize, Serialize};

use super::{audit_json, ApiJson, App};
use crate::auth::{Caller, Permission};
use crate::store::shaping::ShapingRow;
use crate::store::{self, StoreError};
use crate::ApiError;

/// One provider's pushed limits, as stored. An unset limit leaves the engines' files' value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ShapingProviderView {
    /// A provider of the engines' shaping files, or `default`.
    pub name: String,
    pub connections_max: Option<u32>,
    pub messages_per_connection_max: Option<u32>,
    /// 0: unlimited (lifts the files' rate).
    pub messages_per_minute_max: Option<u32>,
    /// 0: unlimited (lifts the files' rate).
    pub messages_per_hour_max: Option<u32>,
    pub recipients_per_transaction_max: Option<u32>,
    /// When it was last set (Unix ms).
    pub updated_unix_ms: i64,
}

impl From<ShapingRow> for ShapingProviderView {
    fn from(r: ShapingRow) -> ShapingProviderView {
        let l = r.limits;
        ShapingProviderView {
            name: l.provider,
            connections_max: l.connections_max,
            messages_per_connection_max: l.messages_per_connection_max,
            messages_per_minute_max: l.messages_per_minute_max,
            messages_per_hour_max: l.messages_per_hour_max,
            recipients_per_transaction_max: l.recipients_per_transaction_max,
            updated_unix_ms: r.updated_unix_ms,
        }
    }
}

/// A provider's limits; each optional. Counts (`connections_max`,
/// `messages_per_connection_max`, `recipients_per_transaction_max`) are at least 1; a rate of
/// 0 means unlimited. The upper bounds are `petrel_policy::snapshot::SHAPING_*_MAX`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShapingProviderLimits {
    #[serde(default)]
    pub connections_max: Option<u64>,
    #[serde(default)]
    pub messages_per_connection_max: Option<u64>,
    #[serde(default)]
    pub messages_per_minute_max: Option<u64>,
    #[serde(default)]
    pub messages_per_hour_max: Option<u64>,
    #[serde(default)]
    pub recipients_per_transaction_max: Option<u64>,
}

/// The path's provider name, checked.
fn check_name(name: &str) -> Result<(), ApiError> {
    if is_shaping_provider_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "a shaping provider name is 1..={SHAPING_PROVIDER_NAME_MAX_BYTES} characters of [a-z0-9_-] (or `default`)"
        )))
    }
}

/// Defence in depth: only the operator tenant holds owners, who alone have these permissions.
fn operator_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_operator {
        Ok(())
    } else {
        Err(ApiError::forbidden("shaping is the operator's"))
    }
}

/// The request as the snapshot's entry, or a 422 naming the field out of range.
fn limits(name: &str, req: &ShapingProviderLimits) -> Result<ShapingLimits, ApiError> {
    // A value past u32 is out of every range: it becomes u32::MAX, which each bound refuses.
    let narrow = |v: Option<u64>| v.map(|v| u32::try_from(v).unwrap_or(u32::MAX));
    let l = ShapingLimits {
        provider: name.to_string(),
        connections_max: narrow(req.connections_max),
        messages_per_connection_max: narrow(req.messages_per_connection_max),
        messages_per_minute_max: narrow(req.messages_per_minute_max),
        messages_per_hour_max: narrow(req.messages_per_hour_max),
        recipients_per_transaction_max: narrow(req.recipients_per_transaction_max),
    };
    match l.problem() {
        None => Ok(l),
        Some(p) => Err(ApiError::invalid(p)),
    }
}

#[utoipa::path(
    get,
    operation_id = "shaping_list",
    path = "/v1/shaping/providers",
    summary = "Provider shaping limits pushed to every engine, by name",
    responses((status = 200, body = Vec<ShapingProviderView>)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::GlobalLimitsRead.name())))
)]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
) -> Result<Json<Vec<ShapingProviderView>>, ApiError> {
    operator_only(&caller)?;
    let mut conn = app.db.conn().await?;
    let rows = store::shaping::list(&mut conn).await?;
    Ok(Json(
        rows.into_iter().map(ShapingProviderView::from).collect(),
    ))
}

#[utoipa::path(
    put,
    operation_id = "shaping_set",
    path = "/v1/shaping/providers/{name}",
    summary = "Set a provider's shaping limits (replacing its entry); engines lay them over their shaping files",
    params(("name" = String, Path, description = "A provider name of the shaping files, or `default`")),
    request_body = ShapingProviderLimits,
    responses((status = 200, body = ShapingProviderView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::GlobalLimitsWrite.name())))
)]
/// `name` is a provider of the engines' shaping files, or `default` for the files' default
/// section. Any well-formed name is accepted: the control plane does not know the engines'
/// files, and an engine ignores a name none of its providers has. Unset limits leave the files'
/// values. Engines apply the change without a restart, to each site as it is made (a site in
/// use is made again when its domains are re-routed, within a minute).
pub async fn set(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ShapingProviderLimits>,
) -> Result<Json<ShapingProviderView>, ApiError> {
    operator_only(&caller)?;
    check_name(&name)?;
    let row = ShapingRow {
        limits: limits(&name, &req)?,
        updated_unix_ms: app.now_ms(),
    };
    let mut m = app.db.begin_mutation().await?;
    let before = store::shaping::get(m.conn(), &name)
        .await?
        .map(ShapingProviderView::from);
    if before.is_none() && store::shaping::count(m.conn()).await? >= SHAPING_PROVIDERS_MAX as u64 {
        return Err(ApiError::conflict(format!(
            "at most {SHAPING_PROVIDERS_MAX} providers have shaping limits; delete one first"
        )));
    }
    store::shaping::upsert(m.conn(), &row).await?;
    let after = ShapingProviderView::from(row);
    let entry = app.entry(
        &caller,
        None,
        "shaping.provider.set",
        &name,
        before.as_ref().and_then(audit_json),
        audit_json(&after),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(after))
}

#[utoipa::path(
    delete,
    operation_id = "shaping_delete",
    path = "/v1/shaping/providers/{name}",
    summary = "Remove a provider's shaping limits; engines return to their files' values",
    params(("name" = String, Path, description = "A provider name of the shaping files, or `default`")),
    responses((status = 204, description = "Done")),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::GlobalLimitsWrite.name())))
)]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    operator_only(&caller)?;
    check_name(&name)?;
    let mut m = app.db.begin_mutation().await?;
    let before = store::shaping::get(m.conn(), &name)
        .await?
        .map(ShapingProviderView::from)
        .ok_or(StoreError::NotFound("shaping provider"))?;
    store::shaping::delete(m.conn(), &name).await?;
    let entry = app.entry(
        &caller,
        None,
        "shaping.provider.delete",
        &name,
        audit_json(&before),
        None,
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(StatusCode::NO_CONTENT)
}
