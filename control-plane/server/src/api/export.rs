//! `POST /v1/tenants/{id}/export` starts an export of the whole tenant (the job and the
//! archive's format: `crate::export`); `GET /v1/tenants/{id}/export` answers the job while it
//! runs and streams the archive once it is ready.
//!
//! Scope: a tenant's admin exports its own tenant, operator owners any tenant
//! (`TenantExport`); another tenant's id answers 404 like a missing one. A tenant has one
//! current export: starting one while another runs is a conflict (409), and starting one after
//! an earlier one finished replaces that earlier archive. Both are audited:
//! `tenant.export.start` when the job is created, `tenant.export.download` before the archive
//! streams (data access, like `audit.export`).

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::openapi::ErrorBody;
use super::stream::PageSender;
use super::tenants::visible_tenant;
use super::{new_id, App};
use crate::auth::{Caller, Permission};
use crate::store::exports::{self as xs, ExportRow, ExportStatus};
use crate::store::StoreError;
use crate::ApiError;

/// The content type of the archive.
pub const ARCHIVE_CONTENT_TYPE: &str = "application/x-ndjson";
/// The error code of `GET` on a failed export.
pub const EXPORT_FAILED_CODE: &str = "export_failed";

/// An export job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ExportView {
    pub id: String,
    pub tenant_id: String,
    pub status: ExportStatus,
    pub created_unix_ms: i64,
    /// When the job ended (ready or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<i64>,
    /// The archive's size; while running, what is written so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Records in the archive (the lines between its header and its `end`); while running,
    /// so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Why a failed export failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When a ready archive (or a failed job) is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_ms: Option<i64>,
}

impl From<ExportRow> for ExportView {
    fn from(r: ExportRow) -> ExportView {
        let unsigned = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        ExportView {
            id: r.id,
            tenant_id: r.tenant_id,
            status: r.status,
            created_unix_ms: r.created_unix_ms,
            finished_unix_ms: r.finished_unix_ms,
            bytes: unsigned(r.bytes),
            rows: unsigned(r.rows_total),
            error: r.error,
            expires_unix_ms: r.expires_unix_ms,
        }
    }
}

#[utoipa::path(
    post,
    operation_id = "tenants_export_start",
    path = "/v1/tenants/{id}/export",
    summary = "Start an export of the tenant's domains, DKIM keys (public halves), credentials (no secrets), suppression list, events, webhooks (no secrets) and audit rows as one JSON-lines archive; audited",
    params(("id" = String, Path, description = "The object's id")),
    responses(
        (status = 202, body = ExportView, description = "The job started; GET the same path for the archive"),
        (status = 409, body = ErrorBody, description = "An export of this tenant is already running"),
    ),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::TenantExport.name())))
)]
pub async fn start(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ExportView>), ApiError> {
    let tenant = visible_tenant(&app, &caller, &id).await?;
    let now = app.now_ms();
    let row = ExportRow::running(new_id("exp"), tenant.id, now);
    // In the audited transaction, which also serialises two starts (on every node).
    let mut m = app.db.begin_data_mutation().await?;
    if xs::running(m.conn(), &row.tenant_id).await?.is_some() {
        return Err(StoreError::Conflict(xs::RUNNING_CONFLICT).into());
    }
    xs::insert(m.conn(), &row, now).await?;
    let entry = app.entry(
        &caller,
        Some(&row.tenant_id),
        "tenant.export.start",
        &row.id,
        None,
        Some(serde_json::json!({"export_id": row.id})),
    );
    m.commit(entry).await?;
    crate::export::spawn(app.clone(), row.clone());
    Ok((StatusCode::ACCEPTED, Json(row.into())))
}

#[utoipa::path(
    get,
    operation_id = "tenants_export_fetch",
    path = "/v1/tenants/{id}/export",
    summary = "The tenant's export: the job while it runs (202), the archive streamed as JSON lines once ready (200, recorded as tenant.export.download); 409 export_failed with the job's error when it failed, 404 when there is none (or it expired, 24 h after it was ready)",
    params(("id" = String, Path, description = "The object's id")),
    responses(
        (status = 200, content((String = "application/x-ndjson")), description = "The archive"),
        (status = 202, body = ExportView, description = "Still running"),
        (status = 409, body = ErrorBody, description = "The export failed (code export_failed; the message holds its error); POST starts a new one"),
    ),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::TenantExport.name())))
)]
pub async fn fetch(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = visible_tenant(&app, &caller, &id).await?;
    let row = xs::current(&mut *app.db.conn().await?, &tenant.id, app.now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found("export"))?;
    match row.status {
        ExportStatus::Running => {
            Ok((StatusCode::ACCEPTED, Json(ExportView::from(row))).into_response())
        }
        ExportStatus::Failed => Err(ApiError::new(
            StatusCode::CONFLICT,
            EXPORT_FAILED_CODE,
            format!(
                "export {} failed: {}",
                row.id,
                row.error.as_deref().unwrap_or("unknown")
            ),
        )),
        ExportStatus::Ready => download(app, caller, row).await,
    }
}

/// Records the download, then streams the archive's chunks.
async fn download(app: App, caller: Caller, row: ExportRow) -> Result<Response, ApiError> {
    // Data access is audited (issue 16): the download's row comes first.
    let m = app.db.begin_data_mutation().await?;
    let entry = app.entry(
        &caller,
        Some(&row.tenant_id),
        "tenant.export.download",
        &row.id,
        None,
        Some(serde_json::json!({"export_id": row.id, "bytes": row.bytes})),
    );
    m.commit(entry).await?;
    let name = format!("{}-{}.ndjson", row.tenant_id, row.id);
    let (tx, body) = super::stream::channel();
    tokio::spawn(send_chunks(app, row, tx));
    let mut resp = Body::new(body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(ARCHIVE_CONTENT_TYPE),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Sends the chunks in order, each opened on a pooled connection of its own, until the last,
/// the client leaving, or an error. An archive that ends short of its recorded size (purged
/// meanwhile) ends the body with an error, so the client sees it cut off.
async fn send_chunks(app: App, row: ExportRow, tx: PageSender) {
    let expected = row.bytes.unwrap_or(0);
    let mut sent = 0i64;
    let mut n = 0i64;
    loop {
        let chunk = async {
            let mut conn = app.db.conn().await?;
            xs::chunk(&mut conn, app.db.sealer(), &row.id, n).await
        }
        .await;
        match chunk {
            Ok(Some(plain)) => {
                sent += i64::try_from(plain.len()).unwrap_or(i64::MAX);
                if tx.send(Ok(Bytes::from(plain))).await.is_err() {
                    return;
                }
                n += 1;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(export = %row.id, error = %e, "export download failed");
                let _ = tx.send(Err(std::io::Error::other("download failed"))).await;
                return;
            }
        }
    }
    if sent != expected {
        tracing::warn!(export = %row.id, sent, expected, "export archive incomplete");
        let _ = tx
            .send(Err(std::io::Error::other("archive incomplete")))
            .await;
    }
}
