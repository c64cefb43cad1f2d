//! `/v1/engines`: connected engines and the snapshot versions they applied.

use axum::extract::State;
use axum::Json;

use super::App;
use crate::auth::{Caller, Permission};
use crate::ApiError;

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
