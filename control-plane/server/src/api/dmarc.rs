//! `GET /v1/domains/{id}/dmarc`: who sends as a tenant's domain, and whether it passes. The
//! rows are the `dmarc_report` events the intake stores from received RFC 7489 aggregate
//! reports; the store sums them (`store::dmarc`). Scoped like every domain route: another
//! tenant's domain id answers 404.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiQuery, App};
use crate::auth::{Caller, Permission};
use crate::store;
use crate::store::dmarc::DmarcSource;
use crate::ApiError;

/// The range read when `since` is not given: the last 30 days, ms.
pub const DMARC_DEFAULT_RANGE_MS: i64 = 30 * 86_400_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DmarcQuery {
    /// Unix ms, inclusive, on the report event's `timestamp_ms` (when it was received);
    /// default 30 days before `until`.
    pub since: Option<i64>,
    /// Unix ms, inclusive; default now.
    pub until: Option<i64>,
}

/// The summary of one domain's aggregate reports.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DmarcView {
    pub domain_id: String,
    pub domain: String,
    pub since: i64,
    pub until: i64,
    /// Report rows read.
    pub rows: u64,
    /// Messages the reports cover.
    pub messages: u64,
    /// Messages that passed DMARC.
    pub pass: u64,
    /// Messages that failed DMARC.
    pub fail: u64,
    /// By source IP, then disposition.
    pub sources: Vec<DmarcSource>,
    /// The range held more rows or groups than one summary reads: narrow it.
    pub truncated: bool,
}

#[utoipa::path(
    get,
    operation_id = "domains_dmarc",
    path = "/v1/domains/{id}/dmarc",
    summary = "DMARC aggregate reports of a sending domain, summed by source IP and disposition",
    params(("id" = String, Path, description = "The object's id"), DmarcQuery),
    responses((status = 200, body = DmarcView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::DomainsRead.name())))
)]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DmarcQuery>,
) -> Result<Json<DmarcView>, ApiError> {
    let until = q.until.unwrap_or_else(|| app.now_ms());
    let since = q
        .since
        .unwrap_or_else(|| until.saturating_sub(DMARC_DEFAULT_RANGE_MS));
    if since > until {
        return Err(ApiError::bad_request("since is after until"));
    }
    let mut conn = app.db.conn().await?;
    let domain = store::domains::get(&mut conn, &caller.tenant_id, &id).await?;
    let s = store::dmarc::summary(&mut conn, &caller.tenant_id, &domain.name, since, until).await?;
    Ok(Json(DmarcView {
        domain_id: domain.id,
        domain: domain.name,
        since,
        until,
        rows: s.rows,
        messages: s.messages,
        pass: s.pass,
        fail: s.fail,
        sources: s.sources,
        truncated: s.truncated,
    }))
}
