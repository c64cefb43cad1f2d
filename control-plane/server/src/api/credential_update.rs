//! `PATCH /v1/credentials/{id}`: change an API key's role, or a credential's scopes (issue 16:
//! role changes are audited as `credential.role.change`, other changes as
//! `credential.update`). Never above the caller's own role, never on a credential above it.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;

use super::credentials::{check_rank, CredentialView};
use super::{audit_json, ApiJson, App};
use crate::auth::{Caller, Permission, Role, SCOPES};
use crate::store;
use crate::ApiError;

/// The fields given change; the others stay.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCredential {
    /// API keys only; at most the caller's own role.
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

#[utoipa::path(
    patch,
    operation_id = "credentials_update",
    path = "/v1/credentials/{id}",
    summary = "Change an API key's role or a credential's scopes",
    params(("id" = String, Path, description = "The object's id")),
    request_body = UpdateCredential,
    responses((status = 200, body = CredentialView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::CredentialsWrite.name())))
)]
pub async fn update(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateCredential>,
) -> Result<Json<CredentialView>, ApiError> {
    if req.role.is_none() && req.scopes.is_none() {
        return Err(ApiError::invalid("give role or scopes"));
    }
    if let Some(scopes) = &req.scopes {
        if scopes.len() > petrel_policy::snapshot::SCOPES_MAX
            || scopes.iter().any(|s| !SCOPES.contains(&s.as_str()))
        {
            return Err(ApiError::invalid(format!(
                "scopes must be among {SCOPES:?}"
            )));
        }
    }
    let mut m = app.db.begin_mutation().await?;
    let before: CredentialView = store::credentials::get(m.conn(), &caller.tenant_id, &id)
        .await?
        .into();
    check_rank(&caller, &before)?;
    if before.revoked {
        return Err(ApiError::conflict("the credential is revoked"));
    }
    if let Some(role) = req.role {
        if before.kind != "api" {
            return Err(ApiError::invalid("only API keys have a role"));
        }
        if role > caller.role {
            return Err(ApiError::forbidden("cannot grant a role above your own"));
        }
        if role == Role::Owner && !caller.is_operator {
            return Err(ApiError::invalid(
                "the owner role exists only in the operator tenant",
            ));
        }
    }
    let after = CredentialView {
        role: req.role.or(before.role),
        scopes: req.scopes.unwrap_or_else(|| before.scopes.clone()),
        ..before.clone()
    };
    store::credentials::set_role_and_scopes(
        m.conn(),
        &caller.tenant_id,
        &id,
        after.role,
        &after.scopes,
    )
    .await?;
    let action = if after.role != before.role {
        "credential.role.change"
    } else {
        "credential.update"
    };
    let entry = app.entry(
        &caller,
        Some(&caller.tenant_id),
        action,
        &id,
        audit_json(&before),
        audit_json(&after),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(after))
}
