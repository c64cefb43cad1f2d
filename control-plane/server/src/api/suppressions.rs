//! `/v1/suppressions`: search, add and remove entries of a suppression list; bulk import and
//! export in [`bulk`].
//!
//! Scope: a key works on its own tenant's list. Operator owners may name any tenant with
//! `tenant`, or `*` for the operator-wide list (applied to every tenant's mail); anyone else
//! naming another tenant gets 404, exactly like the events routes. Writes to a tenant that does
//! not exist answer 404; reads of one answer an empty list.
//!
//! Addresses are normalized (`petrel_policy::suppression::normalize_address`: trimmed and
//! lower-cased whole) before they are stored or looked up. Every change is an audited data
//! mutation (`Db::begin_data_mutation`): it does not bump the policy version, since engines
//! follow the list through its own change log, not through snapshots.

pub mod bulk;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine as _;
use petrel_policy::suppression::{
    normalize_address, SuppressionReason, ADDRESS_MAX_BYTES, DOMAIN_MAX_BYTES, OPERATOR_SCOPE,
};
use serde::{Deserialize, Serialize};

use super::{audit_json, ApiJson, ApiQuery, App};
use crate::auth::{role_allows, Caller, Permission};
use crate::store::suppressions::{self as ss, NewSuppression, Search, SuppressionRow};
use crate::store::{self, StoreError};
use crate::ApiError;

/// Entries per page when `limit` is not given.
pub const SUPPRESSIONS_PAGE_DEFAULT: i64 = 100;
/// Largest `limit`.
pub const SUPPRESSIONS_PAGE_MAX: i64 = 1_000;
/// Entries one `POST /v1/suppressions` may add (larger sets go through the import).
pub const SUPPRESSIONS_PER_REQUEST_MAX: usize = 100;
/// Latest expiry accepted, as a distance from now (ms): ten years.
pub const EXPIRY_AHEAD_MAX_MS: i64 = 10 * 366 * 86_400_000;

/// One entry as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SuppressionView {
    /// Normalized: trimmed and lower-cased.
    pub address: String,
    pub reason: SuppressionReason,
    /// The tenant's id, or `*` for the operator-wide list.
    pub scope: String,
    /// The event that suppressed it (hard bounce, complaint, unsubscribe).
    pub source_event_id: Option<String>,
    pub created_unix_ms: i64,
    /// The last time it was added again.
    pub updated_unix_ms: i64,
    /// When it stops applying; null: never.
    pub expires_unix_ms: Option<i64>,
}

impl From<SuppressionRow> for SuppressionView {
    fn from(r: SuppressionRow) -> SuppressionView {
        SuppressionView {
            address: r.address,
            reason: r.reason,
            scope: r.scope,
            source_event_id: r.source_event_id,
            created_unix_ms: r.created_unix_ms,
            updated_unix_ms: r.updated_unix_ms,
            expires_unix_ms: r.expires_unix_ms,
        }
    }
}

/// The list `tenant` names for `caller` (see the module doc); 404 for a foreign tenant.
pub fn scope(caller: &Caller, tenant: Option<&str>) -> Result<String, ApiError> {
    let owner = caller.is_operator && role_allows(caller.role, Permission::TenantsManage);
    match tenant {
        None => Ok(caller.tenant_id.clone()),
        Some(t) if t == caller.tenant_id => Ok(t.to_string()),
        Some(t) if owner && petrel_policy::suppression::is_scope(t) => Ok(t.to_string()),
        Some(_) => Err(StoreError::NotFound("tenant").into()),
    }
}

/// [`scope`] for a write: also 404 when the named tenant does not exist.
pub async fn write_scope(
    app: &App,
    caller: &Caller,
    tenant: Option<&str>,
) -> Result<String, ApiError> {
    let scope = scope(caller, tenant)?;
    if scope != OPERATOR_SCOPE {
        store::tenants::get(&mut *app.db.conn().await?, app.db.sealer(), &scope)
            .await?
            .ok_or(StoreError::NotFound("tenant"))?;
    }
    Ok(scope)
}

/// The audit row's tenant: None for the operator-wide list.
fn audit_tenant(scope: &str) -> Option<&str> {
    (scope != OPERATOR_SCOPE).then_some(scope)
}

/// `expires_unix_ms` checked: in the future, at most [`EXPIRY_AHEAD_MAX_MS`] ahead.
pub fn check_expiry(expires: Option<i64>, now: i64) -> Result<Option<i64>, String> {
    match expires {
        Some(t) if t <= now => Err("expiry is not in the future".into()),
        Some(t) if t > now.saturating_add(EXPIRY_AHEAD_MAX_MS) => {
            Err("expiry more than ten years ahead".into())
        }
        other => Ok(other),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// One address (matched after normalization).
    pub address: Option<String>,
    /// Addresses starting with this text (lower-cased).
    pub prefix: Option<String>,
    /// Addresses at this domain.
    pub domain: Option<String>,
    /// 1 to 1000; default 100.
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Operator owners: a tenant id, or `*` for the operator-wide list.
    pub tenant: Option<String>,
}

/// One page of entries, by address.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuppressionsPage {
    pub suppressions: Vec<SuppressionView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The opaque cursor after `address`.
pub fn encode_cursor(address: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("s{address}"))
}

/// The address in a cursor; 400 for anything [`encode_cursor`] did not make.
pub fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("bad cursor");
    if cursor.len() > ADDRESS_MAX_BYTES * 2 {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    text.strip_prefix('s')
        .filter(|a| !a.is_empty() && a.len() <= ADDRESS_MAX_BYTES)
        .map(str::to_string)
        .ok_or_else(bad)
}

/// Lower-cased per character, like stored addresses.
fn lower(s: &str) -> String {
    s.trim().chars().flat_map(char::to_lowercase).collect()
}

fn search_of(q: &ListQuery) -> Result<Search, ApiError> {
    let given = [&q.address, &q.prefix, &q.domain]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if given > 1 {
        return Err(ApiError::bad_request(
            "give at most one of address, prefix and domain",
        ));
    }
    let bounded = |name: &str, v: String, max: usize| {
        if v.is_empty() || v.len() > max {
            Err(ApiError::bad_request(format!(
                "{name} must be 1 to {max} bytes"
            )))
        } else {
            Ok(v)
        }
    };
    Ok(if let Some(a) = &q.address {
        let a = normalize_address(a).map_err(|e| ApiError::bad_request(format!("address: {e}")))?;
        Search::Exact(a)
    } else if let Some(p) = &q.prefix {
        Search::Prefix(bounded("prefix", lower(p), ADDRESS_MAX_BYTES)?)
    } else if let Some(d) = &q.domain {
        Search::Domain(bounded("domain", lower(d), DOMAIN_MAX_BYTES)?)
    } else {
        Search::All
    })
}

#[utoipa::path(
    get,
    operation_id = "suppressions_list",
    path = "/v1/suppressions",
    summary = "Suppressed addresses by address (search: address, prefix or domain; paged by cursor)",
    params(ListQuery),
    responses((status = 200, body = SuppressionsPage)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::SuppressionsRead.name())))
)]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<SuppressionsPage>, ApiError> {
    let limit = q.limit.unwrap_or(SUPPRESSIONS_PAGE_DEFAULT);
    if !(1..=SUPPRESSIONS_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {SUPPRESSIONS_PAGE_MAX}"
        )));
    }
    let scope = scope(&caller, q.tenant.as_deref())?;
    let search = search_of(&q)?;
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let mut conn = app.db.conn().await?;
    let mut rows = ss::list(
        &mut conn,
        &scope,
        &search,
        after.as_deref(),
        limit + 1,
        app.now_ms(),
    )
    .await?;
    let page = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > page;
    rows.truncate(page);
    let next_cursor = if more {
        rows.last().map(|r| encode_cursor(&r.address))
    } else {
        None
    };
    Ok(Json(SuppressionsPage {
        suppressions: rows.into_iter().map(SuppressionView::from).collect(),
        next_cursor,
    }))
}

/// One entry to add.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEntry {
    #[schema(max_length = 254)]
    pub address: String,
    /// Default `manual`. A `manual` re-add keeps an automatic reason already there.
    pub reason: Option<SuppressionReason>,
    /// Unix ms, in the future; absent: never expires. A re-add keeps the later expiry.
    pub expires_unix_ms: Option<i64>,
}

/// One entry, or a list of at most 100.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum AddSuppressions {
    One(NewEntry),
    Many(Vec<NewEntry>),
}

/// The entries as stored after the add.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Added {
    pub suppressions: Vec<SuppressionView>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ScopeQuery {
    /// Operator owners: a tenant id, or `*` for the operator-wide list.
    pub tenant: Option<String>,
}

#[utoipa::path(
    post,
    operation_id = "suppressions_add",
    path = "/v1/suppressions",
    summary = "Suppress one address or a list of up to 100 (adding again never shortens an entry)",
    params(ScopeQuery),
    request_body = AddSuppressions,
    responses((status = 200, body = Added)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::SuppressionsWrite.name())))
)]
pub async fn add(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ScopeQuery>,
    ApiJson(req): ApiJson<AddSuppressions>,
) -> Result<Json<Added>, ApiError> {
    let entries = match req {
        AddSuppressions::One(e) => vec![e],
        AddSuppressions::Many(v) => v,
    };
    if entries.is_empty() || entries.len() > SUPPRESSIONS_PER_REQUEST_MAX {
        return Err(ApiError::invalid(format!(
            "give 1 to {SUPPRESSIONS_PER_REQUEST_MAX} entries (more: POST /v1/suppressions/import)"
        )));
    }
    let scope = write_scope(&app, &caller, q.tenant.as_deref()).await?;
    let now = app.now_ms();
    let mut new = Vec::with_capacity(entries.len());
    for e in entries {
        let address = normalize_address(&e.address)
            .map_err(|err| ApiError::invalid(format!("{:?}: {err}", e.address)))?;
        let expires_unix_ms = check_expiry(e.expires_unix_ms, now).map_err(ApiError::invalid)?;
        new.push(NewSuppression {
            scope: scope.clone(),
            address,
            reason: e.reason.unwrap_or(SuppressionReason::Manual),
            source_event_id: None,
            expires_unix_ms,
        });
    }
    let mut m = app.db.begin_data_mutation().await?;
    ss::upsert(m.conn(), &new, now).await?;
    let mut stored = Vec::with_capacity(new.len());
    for n in &new {
        if !stored
            .iter()
            .any(|v: &SuppressionView| v.address == n.address)
        {
            let rows = ss::list(
                m.conn(),
                &scope,
                &Search::Exact(n.address.clone()),
                None,
                1,
                now,
            )
            .await?;
            stored.extend(rows.into_iter().map(SuppressionView::from));
        }
    }
    let target = match stored.as_slice() {
        [one] => one.address.clone(),
        many => format!("{} addresses", many.len()),
    };
    let entry = app.entry(
        &caller,
        audit_tenant(&scope),
        "suppression.add",
        &target,
        None,
        audit_json(&stored),
    );
    m.commit(entry).await?;
    app.suppressions.wake();
    Ok(Json(Added {
        suppressions: stored,
    }))
}

#[utoipa::path(
    delete,
    operation_id = "suppressions_delete",
    path = "/v1/suppressions/{address}",
    summary = "Stop suppressing an address",
    params(("address" = String, Path, description = "The address (any case)"), ScopeQuery),
    responses((status = 204, description = "Done")),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::SuppressionsWrite.name())))
)]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    Path(address): Path<String>,
    ApiQuery(q): ApiQuery<ScopeQuery>,
) -> Result<StatusCode, ApiError> {
    let scope = scope(&caller, q.tenant.as_deref())?;
    // An address that cannot be stored is not in the list.
    let address = normalize_address(&address).map_err(|_| StoreError::NotFound("suppression"))?;
    let mut m = app.db.begin_data_mutation().await?;
    let before = ss::remove(m.conn(), &scope, &address, app.now_ms()).await?;
    let entry = app.entry(
        &caller,
        audit_tenant(&scope),
        "suppression.delete",
        &address,
        audit_json(&SuppressionView::from(before)),
        None,
    );
    m.commit(entry).await?;
    app.suppressions.wake();
    Ok(StatusCode::NO_CONTENT)
}
