//! `/v1/engines`: connected engines and the snapshot versions they applied; each engine's own
//! identity (issue 16): a token per engine, made and revoked here, audited.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;

use super::App;
use crate::auth::{Caller, Permission};
use crate::store::engine_identities::{self as ids, EngineIdentity};
use crate::ApiError;

/// Characters of an engine token shown as its prefix (`pen_` and 8 hex digits).
pub const ENGINE_TOKEN_PREFIX_CHARS: usize = 12;

/// Engines listed by `GET /v1/engines`.
pub const ENGINES_LISTED_MAX: i64 = 10_000;

/// One engine as `GET /v1/engines` shows it: its stored row.
pub use crate::store::engines::EngineRow as EngineView;

#[utoipa::path(
    get,
    operation_id = "engines_list",
    path = "/v1/engines",
    summary = "Engines, their applied snapshot version and last contact",
    responses((status = 200, body = Vec<EngineView>)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::EnginesRead.name())))
)]
pub async fn list(
    State(app): State<App>,
    _caller: Caller,
) -> Result<Json<Vec<EngineView>>, ApiError> {
    let mut conn = app.db.conn().await?;
    Ok(Json(
        crate::store::engines::list(&mut conn, ENGINES_LISTED_MAX).await?,
    ))
}

/// What `POST /v1/engines/{id}/identity` answers: the token, shown this once.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct EngineIdentityCreated {
    pub identity: EngineIdentity,
    /// Put it in the engine's `--control-token-file` (mode 0600); it is never shown again.
    pub token: String,
}

/// Characters an engine id may hold (it names a file-system-safe, log-safe identity).
fn check_engine_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= crate::push::ENGINE_ID_MAX_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "engine id must be 1..=255 characters of [A-Za-z0-9._-]",
        ))
    }
}

fn operator_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_operator {
        Ok(())
    } else {
        Err(ApiError::forbidden("engines are the operator's"))
    }
}

#[utoipa::path(
    post,
    operation_id = "engines_create_identity",
    path = "/v1/engines/{id}/identity",
    summary = "Give engine {id} its own token (replacing any earlier one); shown once",
    params(("id" = String, Path, description = "The engine's id (its `control.engine_id`)")),
    responses((status = 201, body = EngineIdentityCreated)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::EnginesManage.name())))
)]
/// From now on engine `id` must present this token (the shared push token no longer admits
/// it); a session holding an earlier token is cut.
pub async fn create_identity(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<EngineIdentityCreated>), ApiError> {
    operator_only(&caller)?;
    check_engine_id(&id)?;
    let mut raw = [0u8; 32];
    petrel_seal::aead::random_bytes(&mut raw).map_err(crate::ControlError::from)?;
    let token = format!("pen_{}", hex::encode(raw));
    let prefix = token[..ENGINE_TOKEN_PREFIX_CHARS].to_string();
    let phc = crate::auth::hash_secret_async(token.clone(), app.settings.hash_cost).await?;
    let now = app.now_ms();
    let mut m = app.db.begin_data_mutation().await?;
    let before = ids::get(m.conn(), &id).await?.map(|s| s.identity);
    ids::put(m.conn(), &id, &prefix, &phc, now).await?;
    let identity = EngineIdentity {
        engine_id: id.clone(),
        prefix,
        created_unix_ms: now,
        revoked_unix_ms: None,
    };
    let entry = app.entry(
        &caller,
        None,
        "engine.identity.create",
        &id,
        before.map(|b| json!(b)),
        Some(json!(identity)),
    );
    m.commit(entry).await?;
    app.engine_identities.send_modify(|v| *v += 1);
    Ok((
        StatusCode::CREATED,
        Json(EngineIdentityCreated { identity, token }),
    ))
}

#[utoipa::path(
    post,
    operation_id = "engines_revoke_identity",
    path = "/v1/engines/{id}/revoke",
    summary = "Revoke engine {id}'s identity: its link is cut and refused from now on",
    params(("id" = String, Path, description = "The engine's id")),
    responses((status = 200, body = EngineIdentity)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::EnginesManage.name())))
)]
/// Cuts engine `id` off alone: its live link is closed within a second on every node, and it
/// is refused until given a new identity. Other engines are untouched.
pub async fn revoke_identity(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<EngineIdentity>, ApiError> {
    operator_only(&caller)?;
    check_engine_id(&id)?;
    let now = app.now_ms();
    let mut m = app.db.begin_data_mutation().await?;
    let before = ids::get(m.conn(), &id)
        .await?
        .map(|s| s.identity)
        .ok_or_else(|| ApiError::not_found("engine identity"))?;
    ids::revoke(m.conn(), &id, now).await?;
    let after = EngineIdentity {
        revoked_unix_ms: before.revoked_unix_ms.or(Some(now)),
        ..before.clone()
    };
    let entry = app.entry(
        &caller,
        None,
        "engine.revoke",
        &id,
        Some(json!(before)),
        Some(json!(after)),
    );
    m.commit(entry).await?;
    app.engine_identities.send_modify(|v| *v += 1);
    Ok(Json(after))
}
