//! `/v1/audit-log`: the audit rows a caller may see (listed, or all of them streamed as JSON
//! lines or CSV), the chain walk and its signed checkpoints.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
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
    let filter = caller_filter(&caller, q.action, q.actor, q.since, q.until);
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
/// Signs the chain head now (or answers the checkpoint that already covers it); a new one is
/// sent to this node's engines.
pub async fn checkpoint(
    State(app): State<App>,
    _caller: Caller,
) -> Result<Json<Checkpoint>, ApiError> {
    Ok(Json(
        crate::audit_anchor::checkpoint(&app, app.now_ms()).await?,
    ))
}

/// The rows `caller` may see: its tenant's, or every row for operator owners.
fn caller_filter(
    caller: &Caller,
    action: Option<String>,
    actor: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
) -> AuditFilter {
    let all = caller.is_operator && role_allows(caller.role, Permission::AuditVerify);
    AuditFilter {
        tenant_id: (!all).then(|| caller.tenant_id.clone()),
        action,
        actor,
        since_unix_ms: since,
        until_unix_ms: until,
    }
}

/// Rows read per page of the export.
pub const EXPORT_PAGE_ROWS: i64 = 1_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditExportQuery {
    /// `ndjson` (default) or `csv`.
    pub format: Option<String>,
    pub action: Option<String>,
    pub actor: Option<String>,
    /// Unix ms, inclusive.
    pub since: Option<i64>,
    /// Unix ms, inclusive.
    pub until: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExportFormat {
    Ndjson,
    Csv,
}

const CSV_HEADER: &str =
    "seq,at_unix_ms,tenant_id,actor,remote_addr,action,target,before,after,prev_hash,hash";

/// A CSV field, quoted when it must be (RFC 4180).
fn csv_field(v: &str, out: &mut String) {
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

fn export_line(format: ExportFormat, r: &AuditRow, out: &mut Vec<u8>) {
    match format {
        ExportFormat::Ndjson => {
            out.extend_from_slice(serde_json::to_string(r).unwrap_or_default().as_bytes());
        }
        ExportFormat::Csv => {
            let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
            let fields = [
                r.seq.to_string(),
                r.at_unix_ms.to_string(),
                r.tenant_id.clone().unwrap_or_default(),
                r.actor.clone(),
                r.remote_addr.clone(),
                r.action.clone(),
                r.target.clone(),
                json(&r.before).unwrap_or_default(),
                json(&r.after).unwrap_or_default(),
                r.prev_hash.clone(),
                r.hash.clone(),
            ];
            let mut line = String::new();
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                csv_field(f, &mut line);
            }
            out.extend_from_slice(line.as_bytes());
        }
    }
    out.push(b'\n');
}

/// Pages through the rows into `tx` until the end, the client leaving, or an error.
async fn export_pages(
    app: App,
    filter: AuditFilter,
    format: ExportFormat,
    tx: super::stream::PageSender,
) {
    let header = (format == ExportFormat::Csv).then(|| format!("{CSV_HEADER}\n"));
    let fetch = |after: i64| {
        let (app, filter) = (app.clone(), filter.clone());
        async move {
            let mut conn = app.db.conn().await?;
            crate::audit::page(&mut conn, app.db.sealer(), &filter, after, EXPORT_PAGE_ROWS).await
        }
    };
    super::stream::send_pages(
        tx,
        header,
        EXPORT_PAGE_ROWS,
        "audit",
        0i64,
        fetch,
        |r: AuditRow, out| {
            export_line(format, &r, out);
            r.seq
        },
    )
    .await;
}

#[utoipa::path(
    get,
    operation_id = "audit_export",
    path = "/v1/audit-log/export",
    summary = "Every audit row the caller may see, oldest first, streamed as JSON lines or CSV (no row cap); the export is itself audited",
    params(AuditExportQuery),
    responses((status = 200, content(
        (String = "application/x-ndjson"),
        (String = "text/csv")
    ))),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::AuditRead.name())))
)]
/// Streams the rows; records the export (who, which filter) in the log first.
pub async fn export(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditExportQuery>,
) -> Result<Response, ApiError> {
    let format = match q.format.as_deref() {
        None | Some("ndjson") => ExportFormat::Ndjson,
        Some("csv") => ExportFormat::Csv,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format {other:?}: ndjson or csv"
            )))
        }
    };
    let filter = caller_filter(&caller, q.action, q.actor, q.since, q.until);
    // Data access is audited (issue 16): the export's own row comes first.
    let m = app.db.begin_data_mutation().await?;
    let entry = app.entry(
        &caller,
        filter.tenant_id.as_deref(),
        "audit.export",
        "audit-log",
        None,
        Some(serde_json::json!({
            "format": if format == ExportFormat::Csv { "csv" } else { "ndjson" },
            "action": filter.action,
            "actor": filter.actor,
            "since": filter.since_unix_ms,
            "until": filter.until_unix_ms,
        })),
    );
    m.commit(entry).await?;
    let (tx, body) = super::stream::channel();
    tokio::spawn(export_pages(app, filter, format, tx));
    let (mime, name) = match format {
        ExportFormat::Csv => ("text/csv", "audit-log.csv"),
        ExportFormat::Ndjson => ("application/x-ndjson", "audit-log.ndjson"),
    };
    let mut resp = Body::new(body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
