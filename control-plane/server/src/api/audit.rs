//! `/v1/audit-log`: the audit rows a caller may see, and the chain walk.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::{ApiQuery, App};
use crate::audit::{AuditFilter, AuditRow, VerifyReport};
use crate::audit_anchor::Checkpoint;
use crate::auth::{role_allows, Caller, Permission};
use crate::ApiError;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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

#[utoipa::path(
    get,
    operation_id = "audit_list",
    path = "/v1/audit-log",
    summary = "Audit rows, newest first (filters: action, actor, since, until, limit)",
    params(AuditQuery),
    responses((status = 200, body = Vec<AuditRow>)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::AuditRead.name())))
)]
/// Admins see their tenant's rows; operator owners see every row.
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditRow>>, ApiError> {
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
    };
    let mut conn = app.db.conn().await?;
    Ok(Json(
        crate::audit::list(&mut conn, app.db.sealer(), &filter, q.limit).await?,
    ))
}

#[utoipa::path(
    get,
    operation_id = "audit_verify",
    path = "/v1/audit-log/verify",
    summary = "Walk the hash chain; reports the first broken link",
    responses((status = 200, body = VerifyReport)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::AuditVerify.name())))
)]
/// Walks the whole chain, then checks every signed checkpoint against it; reports the first
/// broken link.
pub async fn verify(
    State(app): State<App>,
    _caller: Caller,
) -> Result<Json<VerifyReport>, ApiError> {
    let mut conn = app.db.conn().await?;
    let key = hex::decode(app.anchor.public_key_hex()).unwrap_or_default();
    Ok(Json(
        crate::audit_anchor::verify_all(&mut conn, app.anchor.file(), &key).await?,
    ))
}

#[utoipa::path(
    post,
    operation_id = "audit_checkpoint",
    path = "/v1/audit-log/checkpoint",
    summary = "Sign the chain head now and append it to the checkpoint file outside the database",
    responses((status = 200, body = Checkpoint)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::AuditVerify.name())))
)]
/// Signs the chain head now (or answers the checkpoint that already covers it).
pub async fn checkpoint(
    State(app): State<App>,
    _caller: Caller,
) -> Result<Json<Checkpoint>, ApiError> {
    Ok(Json(app.anchor.checkpoint(&app.db, app.now_ms()).await?))
}
