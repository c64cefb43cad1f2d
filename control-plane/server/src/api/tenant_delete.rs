//! `DELETE /v1/tenants/{id}` (issue 16): the operator's owners delete a tenant, confirming
//! with its id and choosing what becomes of its queued mail (see `crate::erasure`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{audit_json, ApiJson, App};
use crate::auth::{Caller, Permission};
use crate::erasure::Removed;
use crate::store::deleted_tenants::{self, Deletion};
use crate::store::{self, StoreError};
use crate::ApiError;

/// What becomes of a deleted tenant's queued mail on every engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueuedMail {
    /// Removed without a word to the senders.
    Drop,
    /// Bounced: each sender gets a DSN.
    Bounce,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteTenant {
    /// The tenant's id again: a deletion cannot be undone.
    pub confirm: String,
    pub queued: QueuedMail,
}

/// The deletion, as answered and as `GET /v1/tenants/{id}` reports it afterwards (410).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeletionView {
    pub tenant_id: String,
    pub queued: QueuedMail,
    pub deleted_unix_ms: i64,
    /// When its events, suppressions and history were erased (absent while that runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erased_unix_ms: Option<i64>,
    /// What the deletion removed at once (absent in later reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<Removed>,
}

impl DeletionView {
    pub fn of(d: Deletion, removed: Option<Removed>) -> DeletionView {
        DeletionView {
            tenant_id: d.tenant_id,
            queued: if d.bounce_queued {
                QueuedMail::Bounce
            } else {
                QueuedMail::Drop
            },
            deleted_unix_ms: d.deleted_unix_ms,
            erased_unix_ms: d.erased_unix_ms,
            removed,
        }
    }
}

#[utoipa::path(
    delete,
    operation_id = "tenants_delete",
    path = "/v1/tenants/{id}",
    summary = "Delete a tenant: its rows, its queued mail on every engine, its data keys",
    description = "Owners only. `confirm` must repeat the id. The tenant's domains, DKIM keys, \
        credentials and webhooks go at once and the engines drop or bounce its queued mail \
        (`queued`), then destroy its data keys; the control plane destroys its own, so \
        anything sealed for the tenant, in any copy, is unreadable. Its events, suppressions \
        and webhook history are erased in the background (`erased_unix_ms` in \
        `GET /v1/tenants/{id}`, which answers 410 from now on); the suppression change log \
        keeps the removals of its addresses for its 7-day retention, so engines that were \
        offline drop them too. The audit log keeps its \
        rows, their payloads redacted, and a `tenant.delete` row.",
    params(("id" = String, Path, description = "The object's id")),
    request_body = DeleteTenant,
    responses(
        (status = 202, body = DeletionView),
        (status = 409, body = super::openapi::ErrorBody, description = "The operator tenant cannot be deleted")
    ),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::TenantsManage.name())))
)]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DeleteTenant>,
) -> Result<(StatusCode, Json<DeletionView>), ApiError> {
    if req.confirm != id {
        return Err(ApiError::invalid(
            "confirm must repeat the tenant's id: a deletion cannot be undone",
        ));
    }
    let mut m = app.db.begin_mutation().await?;
    let tenant = store::tenants::get(m.conn(), app.db.sealer(), &id)
        .await?
        .ok_or(StoreError::NotFound("tenant"))?;
    if tenant.is_operator {
        return Err(ApiError::conflict("the operator tenant cannot be deleted"));
    }
    let deletion = Deletion {
        tenant_id: id.clone(),
        bounce_queued: req.queued == QueuedMail::Bounce,
        deleted_unix_ms: app.now_ms(),
        erased_unix_ms: None,
    };
    let removed = crate::erasure::delete_policy_rows(m.conn(), &deletion).await?;
    let view = DeletionView::of(deletion, Some(removed));
    // The operator's row (the tenant's own rows become unreadable with its keys); no name in
    // it, only the id and counts.
    let entry = app.entry(&caller, None, "tenant.delete", &id, None, audit_json(&view));
    let v = m.commit(entry).await?;
    app.notify(v);
    // Committed: a failure here is retried by the background erasure, which destroys the keys
    // first; the caller still learns the deletion happened.
    let destroyed = match app.db.conn().await {
        Ok(mut conn) => app.db.sealer().destroy_owner(&mut conn, &id).await,
        Err(e) => Err(e),
    };
    if let Err(e) = destroyed {
        tracing::error!(tenant = %id, error = %e, "destroying a deleted tenant's keys failed; the erasure retries");
    }
    app.erasure_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// The deletion of `id` as a 410 answer (owners asking after a deleted tenant).
pub async fn gone(app: &App, id: &str) -> Result<ApiError, ApiError> {
    let d = deleted_tenants::get(&mut *app.db.conn().await?, id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    let view = DeletionView::of(d, None);
    let mut e = ApiError::new(StatusCode::GONE, "gone", format!("tenant {id} was deleted"));
    e.details = Some(serde_json::to_value(&view).unwrap_or_default());
    Ok(e)
}
