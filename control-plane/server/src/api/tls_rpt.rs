//! `POST /v1/tls-rpt/send`: sends one day's TLS-RPT reports now (`crate::tls_rpt`), for an
//! operator catching up after an outage and for tests; what the daily task would send, with
//! the retry delay ignored. A day already sent to a domain is not sent again.

use axum::extract::State;
use axum::Json;

use super::{ApiJson, App};
use crate::auth::{Caller, Permission};
use crate::tls_rpt::report::{day_label, parse_day};
use crate::ApiError;

/// The day to send.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
pub struct SendDay {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
}

/// One policy domain's report of the day.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ReportView {
    pub policy_domain: String,
    pub report_id: String,
    /// `pending` (tried again later), `sent`, `no_rua` (the domain asks for none) or `failed`.
    pub state: String,
    pub attempts: i64,
    /// The report URIs reached.
    pub done_uris: Vec<String>,
    pub last_error: Option<String>,
}

/// The day's reports after the send.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SendReport {
    pub day: String,
    pub reports: Vec<ReportView>,
}

#[utoipa::path(
    post,
    operation_id = "tls_rpt_send",
    path = "/v1/tls-rpt/send",
    summary = "Send one day's TLS-RPT reports (RFC 8460) now",
    request_body = SendDay,
    responses(
        (status = 200, body = SendReport),
        (status = 409, body = super::openapi::ErrorBody, description = "TLS-RPT reports are not configured (--tls-rpt-submitter)")
    ),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::EnginesManage.name())))
)]
pub async fn send(
    State(app): State<App>,
    _caller: Caller,
    ApiJson(req): ApiJson<SendDay>,
) -> Result<Json<SendReport>, ApiError> {
    let Some(settings) = app.settings.tls_rpt.clone() else {
        return Err(ApiError::conflict(
            "TLS-RPT reports are not configured (--tls-rpt-submitter)",
        ));
    };
    let day =
        parse_day(req.day.trim()).ok_or_else(|| ApiError::invalid("day must be YYYY-MM-DD"))?;
    let rows = crate::tls_rpt::send_day(&app, &settings, day, true).await?;
    Ok(Json(SendReport {
        day: day_label(day),
        reports: rows
            .into_iter()
            .map(|r| ReportView {
                policy_domain: r.policy_domain,
                report_id: r.report_id,
                state: r.state,
                attempts: r.attempts,
                done_uris: r.done_uris,
                last_error: r.last_error,
            })
            .collect(),
    }))
}
