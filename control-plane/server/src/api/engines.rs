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

pub async fn list(
    State(app): State<App>,
    caller: Caller,
) -> Result<Json<Vec<EngineView>>, ApiError> {
    caller.require(Permission::EnginesRead)?;
    let mut conn = app.db.conn().await?;
    Ok(Json(
        crate::store::engines::list(&mut conn, ENGINES_LISTED_MAX).await?,
    ))
}
