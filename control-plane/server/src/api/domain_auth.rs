//! `POST /v1/domains/{id}/check`: looks a sending domain's DKIM, SPF and DMARC records up now
//! (see [`crate::domain_auth`]) and answers the stored verdict. A change of verdict is a policy
//! change (engines refuse or accept the domain's mail again) with an audit entry naming the
//! caller; the scheduled re-check does the same for every verified domain.

use axum::extract::{Path, State};
use axum::Json;

use super::App;
use crate::auth::{Caller, Permission};
use crate::domain_auth::{check_domain, Actor, DomainAuthView};
use crate::store;
use crate::ApiError;

#[utoipa::path(
    post,
    operation_id = "domains_check",
    path = "/v1/domains/{id}/check",
    summary = "Look the domain's DKIM, SPF and DMARC records up now; a failing domain's mail is refused (550 5.7.26)",
    params(("id" = String, Path, description = "The object's id")),
    responses((status = 200, body = DomainAuthView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::DomainsWrite.name())))
)]
pub async fn check(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DomainAuthView>, ApiError> {
    let domain = {
        let mut conn = app.db.conn().await?;
        store::domains::get(&mut conn, &caller.tenant_id, &id).await?
    };
    let by = Actor {
        actor: caller.actor(),
        remote_addr: caller.remote.to_string(),
    };
    let row = check_domain(&app, &domain, &by).await?;
    Ok(Json(DomainAuthView::of(&row)))
}
