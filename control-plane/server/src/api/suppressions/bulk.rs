//! `POST /v1/suppressions/import` and `GET /v1/suppressions/export`: a list of a million lines
//! in and out, streamed, never whole in memory.
//!
//! **Import.** The body is CSV (`Content-Type: text/csv`) with a header line naming the columns
//! (`address` required; `reason` and `expires_at` used when present; `created_at` and
//! `source_event_id`, which the export writes, ignored), or JSON lines
//! (`application/x-ndjson`), one object per line with the same fields. `reason` defaults to
//! `manual`; `expires_at` is RFC 3339 or Unix ms, empty for none. The body is read frame by
//! frame ([`LineReader`]: at most one partial line of [`IMPORT_LINE_MAX_BYTES`] buffered), and
//! every [`IMPORT_BATCH_ROWS`] good lines are one audited transaction (one multi-row upsert).
//! Bad lines are counted and the first [`IMPORT_ERRORS_MAX`] reported with their line numbers;
//! they do not stop the import. It stops early, keeping what it imported, past
//! [`IMPORT_LINES_MAX`] lines or [`IMPORT_BODY_MAX_BYTES`]. An import that fails midway
//! (database) has committed its earlier batches; importing again is harmless (re-adds).
//!
//! **Export.** CSV (default, or `format=csv`) or JSON lines (`format=ndjson`, or an `Accept`
//! naming `application/x-ndjson`), in the import's format, so an export imports back. A task
//! pages through the list by address ([`EXPORT_PAGE_ROWS`] a page, a pooled connection per
//! page) into a channel of [`EXPORT_CHANNEL_PAGES`] pages that the response body drains: memory
//! is bounded whatever the list's size. It is not a snapshot: entries changed during the export
//! may or may not be in it. A database failure midway cuts the response off (the chunked body
//! ends without its last chunk), which HTTP clients report as an error.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use petrel_policy::suppression::{normalize_address, SuppressionReason};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;

use super::{audit_tenant, check_expiry, write_scope, ScopeQuery};
use crate::api::{audit_json, ApiQuery, App};
use crate::auth::{Caller, Permission};
use crate::store::suppressions::{self as ss, NewSuppression, Search, SuppressionRow};
use crate::ApiError;

/// Data lines one import reads at most (the CSV header not counted).
pub const IMPORT_LINES_MAX: u64 = 1_000_000;
/// Bytes one import reads at most.
pub const IMPORT_BODY_MAX_BYTES: u64 = 256 << 20;
/// Longest line, in bytes; a longer one is an error for that line only.
pub const IMPORT_LINE_MAX_BYTES: usize = 1_024;
/// Good lines per transaction (one upsert of 8 columns, within one statement's parameters).
pub const IMPORT_BATCH_ROWS: usize = 2_000;
/// Bad lines reported by number and reason (the rest are only counted).
pub const IMPORT_ERRORS_MAX: usize = 100;
/// Entries per export page (one query each).
pub const EXPORT_PAGE_ROWS: i64 = 1_000;
/// Pages the export task may run ahead of the client.
pub const EXPORT_CHANNEL_PAGES: usize = crate::api::stream::STREAM_CHANNEL_PAGES;
/// The CSV header the export writes.
pub const CSV_HEADER: &str = "address,reason,expires_at,created_at,source_event_id";

const CSV: &str = "text/csv";
const NDJSON: &str = "application/x-ndjson";

/// One bad line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LineError {
    /// 1 for the body's first line (the CSV header).
    pub line: u64,
    pub error: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// Data lines read (blank ones included, the CSV header not).
    pub lines: u64,
    /// Entries added or re-added.
    pub imported: u64,
    /// Bad lines (not imported).
    pub failed: u64,
    /// The first 100 bad lines.
    pub errors: Vec<LineError>,
    /// False when the import stopped before the end of the body (`stopped` says why); what it
    /// read until then is imported.
    pub complete: bool,
    pub stopped: Option<String>,
}

impl ImportReport {
    fn fail(&mut self, line: u64, error: String) {
        self.failed += 1;
        if self.errors.len() < IMPORT_ERRORS_MAX {
            self.errors.push(LineError { line, error });
        }
    }
}

/// One line of the body.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(String),
    TooLong,
    NotUtf8,
}

/// Splits a streamed body into lines, holding at most one partial line (bounded by
/// [`IMPORT_LINE_MAX_BYTES`]) besides the frame being read.
pub struct LineReader<B> {
    body: B,
    chunk: Bytes,
    pos: usize,
    pending: Vec<u8>,
    /// Inside a line already longer than the maximum: drop bytes to its end.
    skipping: bool,
    eof: bool,
    /// Body bytes read so far.
    pub bytes: u64,
    /// The number of the last line returned (1-based).
    pub line_no: u64,
}

impl<B> LineReader<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub fn new(body: B) -> LineReader<B> {
        LineReader {
            body,
            chunk: Bytes::new(),
            pos: 0,
            pending: Vec::new(),
            skipping: false,
            eof: false,
            bytes: 0,
            line_no: 0,
        }
    }

    /// The largest the partial-line buffer has been allowed to grow (for tests).
    pub fn pending_capacity(&self) -> usize {
        self.pending.capacity()
    }

    /// The next line without its `\n` (and `\r`), or None at the end of the body.
    pub async fn next_line(&mut self) -> Result<Option<Line>, ApiError> {
        loop {
            let rest = &self.chunk[self.pos..];
            if let Some(i) = rest.iter().position(|b| *b == b'\n') {
                let piece = self.chunk.slice(self.pos..self.pos + i);
                self.pos += i + 1;
                return Ok(Some(self.finish_line(&piece)));
            }
            if !self.skipping {
                if self.pending.len() + rest.len() > IMPORT_LINE_MAX_BYTES {
                    self.skipping = true;
                    self.pending = Vec::new();
                } else {
                    self.pending.extend_from_slice(rest);
                }
            }
            self.pos = self.chunk.len();
            if self.eof {
                return Ok(None);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.bytes += data.len() as u64;
                        self.chunk = data;
                        self.pos = 0;
                    }
                }
                Some(Err(e)) => return Err(ApiError::bad_request(format!("request body: {e}"))),
                None => {
                    self.eof = true;
                    if self.skipping || !self.pending.is_empty() {
                        return Ok(Some(self.finish_line(&[])));
                    }
                    return Ok(None);
                }
            }
        }
    }

    fn finish_line(&mut self, piece: &[u8]) -> Line {
        self.line_no += 1;
        if self.skipping || self.pending.len() + piece.len() > IMPORT_LINE_MAX_BYTES {
            self.skipping = false;
            self.pending.clear();
            return Line::TooLong;
        }
        self.pending.extend_from_slice(piece);
        let mut raw = std::mem::take(&mut self.pending);
        if raw.last() == Some(&b'\r') {
            raw.pop();
        }
        let line = match String::from_utf8(raw) {
            Ok(s) => Line::Text(s),
            Err(_) => Line::NotUtf8,
        };
        // Keep the buffer's allocation for the next line.
        self.pending = Vec::with_capacity(IMPORT_LINE_MAX_BYTES.min(256));
        line
    }
}

/// Where the CSV header put each column.
struct Columns {
    count: usize,
    address: usize,
    reason: Option<usize>,
    expires_at: Option<usize>,
}

fn csv_fields(line: &str) -> Vec<&str> {
    line.split(',')
        .map(|f| {
            let f = f.trim();
            f.strip_prefix('"')
                .and_then(|f| f.strip_suffix('"'))
                .unwrap_or(f)
        })
        .collect()
}

fn csv_header(line: &str) -> Result<Columns, String> {
    let names = csv_fields(line.trim_start_matches('\u{feff}'));
    let find = |n: &str| names.iter().position(|c| c.eq_ignore_ascii_case(n));
    for n in &names {
        let known = [
            "address",
            "reason",
            "expires_at",
            "created_at",
            "source_event_id",
        ];
        if !known.iter().any(|k| k.eq_ignore_ascii_case(n)) {
            return Err(format!("unknown column {n:?} in the header"));
        }
    }
    Ok(Columns {
        count: names.len(),
        address: find("address").ok_or("the header names no address column")?,
        reason: find("reason"),
        expires_at: find("expires_at"),
    })
}

/// A raw entry: address, reason text, expiry text (all as given).
type RawEntry = (String, Option<String>, Option<ExpiresAt>);

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ExpiresAt {
    Ms(i64),
    Text(String),
}

/// A JSON line; the fields the export writes besides these are accepted and ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    address: String,
    reason: Option<String>,
    expires_at: Option<ExpiresAt>,
    #[serde(default, rename = "created_at")]
    _created_at: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "source_event_id")]
    _source_event_id: Option<serde::de::IgnoredAny>,
}

fn csv_row(cols: &Columns, line: &str) -> Result<RawEntry, String> {
    let f = csv_fields(line);
    if f.len() != cols.count {
        return Err(format!("{} fields, the header has {}", f.len(), cols.count));
    }
    let get = |i: Option<usize>| i.map(|i| f[i]).filter(|v| !v.is_empty());
    Ok((
        f[cols.address].to_string(),
        get(cols.reason).map(str::to_string),
        get(cols.expires_at).map(|v| ExpiresAt::Text(v.to_string())),
    ))
}

fn json_row(line: &str) -> Result<RawEntry, String> {
    let j: JsonLine = serde_json::from_str(line).map_err(|e| format!("JSON: {e}"))?;
    Ok((j.address, j.reason, j.expires_at))
}

/// Unix ms of an `expires_at`: an integer, or RFC 3339.
fn expiry_ms(v: ExpiresAt) -> Result<Option<i64>, String> {
    match v {
        ExpiresAt::Ms(ms) => Ok(Some(ms)),
        ExpiresAt::Text(t) if t.is_empty() => Ok(None),
        ExpiresAt::Text(t) => match t.parse::<i64>() {
            Ok(ms) => Ok(Some(ms)),
            Err(_) => time::OffsetDateTime::parse(&t, &Rfc3339)
                .map(|d| Some(i64::try_from(d.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)))
                .map_err(|e| format!("expires_at {t:?}: {e}")),
        },
    }
}

/// An entry of `scope` from a raw one, or why not.
fn entry(scope: &str, raw: RawEntry, now: i64) -> Result<NewSuppression, String> {
    let (address, reason, expires) = raw;
    let address = normalize_address(&address).map_err(|e| format!("{address:?}: {e}"))?;
    let reason = match reason {
        None => SuppressionReason::Manual,
        Some(r) => SuppressionReason::parse(r.trim()).ok_or(format!("unknown reason {r:?}"))?,
    };
    let expires_unix_ms = check_expiry(expires.map(expiry_ms).transpose()?.flatten(), now)?;
    Ok(NewSuppression {
        scope: scope.to_string(),
        address,
        reason,
        source_event_id: None,
        expires_unix_ms,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
}

fn media_type(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

#[utoipa::path(
    post,
    operation_id = "suppressions_import",
    path = "/v1/suppressions/import",
    summary = "Bulk add (CSV with a header line, or JSON lines), streamed, up to 1,000,000 lines",
    params(ScopeQuery),
    request_body(content(
        (String = "text/csv", example = "address,reason,expires_at\nuser@example.com,unsubscribe,\n"),
        (String = "application/x-ndjson")
    )),
    responses((status = 200, body = ImportReport)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::SuppressionsWrite.name())))
)]
pub async fn import(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ScopeQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ImportReport>, ApiError> {
    let content_type = media_type(&headers, header::CONTENT_TYPE);
    let format = match content_type.split(';').next().map(str::trim) {
        Some(CSV) => Format::Csv,
        Some(NDJSON) => Format::Ndjson,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("send {CSV} or {NDJSON}"),
            ))
        }
    };
    let scope = write_scope(&app, &caller, q.tenant.as_deref()).await?;
    let mut reader = LineReader::new(body);
    let mut report = ImportReport::default();
    let mut columns: Option<Columns> = None;
    let mut batch: Vec<NewSuppression> = Vec::with_capacity(IMPORT_BATCH_ROWS);
    let mut batch_first_line = 0;
    while let Some(line) = reader.next_line().await? {
        let n = reader.line_no;
        if reader.bytes > IMPORT_BODY_MAX_BYTES {
            report.stopped = Some(format!("body larger than {IMPORT_BODY_MAX_BYTES} bytes"));
            break;
        }
        let text = match line {
            Line::Text(t) => t,
            Line::TooLong => {
                report.fail(n, format!("longer than {IMPORT_LINE_MAX_BYTES} bytes"));
                report.lines += u64::from(format == Format::Ndjson || columns.is_some());
                continue;
            }
            Line::NotUtf8 => {
                report.fail(n, "not UTF-8".into());
                report.lines += u64::from(format == Format::Ndjson || columns.is_some());
                continue;
            }
        };
        if format == Format::Csv && columns.is_none() {
            columns =
                Some(csv_header(&text).map_err(|e| ApiError::bad_request(format!("line 1: {e}")))?);
            continue;
        }
        if report.lines == IMPORT_LINES_MAX {
            report.stopped = Some(format!("more than {IMPORT_LINES_MAX} lines"));
            break;
        }
        report.lines += 1;
        if text.trim().is_empty() {
            continue;
        }
        let raw = match &columns {
            Some(cols) => csv_row(cols, &text),
            None => json_row(&text),
        };
        match raw.and_then(|r| entry(&scope, r, app.now_ms())) {
            Ok(e) => {
                if batch.is_empty() {
                    batch_first_line = n;
                }
                batch.push(e);
            }
            Err(e) => report.fail(n, e),
        }
        if batch.len() == IMPORT_BATCH_ROWS {
            flush(&app, &caller, &scope, &mut batch, (batch_first_line, n)).await?;
            report.imported += IMPORT_BATCH_ROWS as u64;
        }
    }
    let last = reader.line_no;
    report.imported += batch.len() as u64;
    flush(&app, &caller, &scope, &mut batch, (batch_first_line, last)).await?;
    if format == Format::Csv && columns.is_none() {
        return Err(ApiError::bad_request(
            "empty body: a CSV import starts with a header line",
        ));
    }
    report.complete = report.stopped.is_none();
    Ok(Json(report))
}

/// Stores one batch in its own audited transaction (the audit row names the lines, not every
/// address: an import writes a few hundred rows, not a million).
async fn flush(
    app: &App,
    caller: &Caller,
    scope: &str,
    batch: &mut Vec<NewSuppression>,
    lines: (u64, u64),
) -> Result<(), ApiError> {
    if batch.is_empty() {
        return Ok(());
    }
    let now = app.now_ms();
    let mut m = app.db.begin_data_mutation().await?;
    ss::upsert(m.conn(), batch, now).await?;
    let entry = app.entry(
        caller,
        audit_tenant(scope),
        "suppression.import",
        &format!("lines {}-{}", lines.0, lines.1),
        None,
        audit_json(&serde_json::json!({ "entries": batch.len() })),
    );
    m.commit(entry).await?;
    app.suppressions.wake();
    batch.clear();
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `csv` (default) or `ndjson`; without it, an `Accept` of `application/x-ndjson` picks
    /// JSON lines.
    pub format: Option<String>,
    /// Operator owners: a tenant id, or `*` for the operator-wide list.
    pub tenant: Option<String>,
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// One exported line (with its `\n`).
fn export_line(format: Format, r: SuppressionRow, out: &mut Vec<u8>) {
    let expires = r.expires_unix_ms.map(rfc3339);
    match format {
        Format::Csv => {
            let line = format!(
                "{},{},{},{},{}\n",
                r.address,
                r.reason.as_str(),
                expires.unwrap_or_default(),
                rfc3339(r.created_unix_ms),
                r.source_event_id.unwrap_or_default()
            );
            out.extend_from_slice(line.as_bytes());
        }
        Format::Ndjson => {
            let v = serde_json::json!({
                "address": r.address,
                "reason": r.reason,
                "expires_at": expires,
                "created_at": rfc3339(r.created_unix_ms),
                "source_event_id": r.source_event_id,
            });
            out.extend_from_slice(v.to_string().as_bytes());
            out.push(b'\n');
        }
    }
}

/// Pages through `scope`'s list into `tx` until the end, the client leaving, or an error.
async fn export_pages(
    app: App,
    scope: String,
    format: Format,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let header = (format == Format::Csv).then(|| format!("{CSV_HEADER}\n"));
    let fetch = |after: Option<String>| {
        let (app, scope) = (app.clone(), scope.clone());
        async move {
            let mut conn = app.db.conn().await?;
            let now = app.now_ms();
            ss::list(
                &mut conn,
                &scope,
                &Search::All,
                after.as_deref(),
                EXPORT_PAGE_ROWS,
                now,
            )
            .await
        }
    };
    super::super::stream::send_pages(
        tx,
        header,
        EXPORT_PAGE_ROWS,
        "suppression",
        None,
        fetch,
        |r: SuppressionRow, out| {
            let next = Some(r.address.clone());
            export_line(format, r, out);
            next
        },
    )
    .await;
}

#[utoipa::path(
    get,
    operation_id = "suppressions_export",
    path = "/v1/suppressions/export",
    summary = "The whole list, streamed, as CSV or JSON lines (the import's format)",
    params(ExportQuery),
    responses((status = 200, content(
        (String = "text/csv"),
        (String = "application/x-ndjson")
    ))),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::SuppressionsRead.name())))
)]
pub async fn export(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ExportQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = match q.format.as_deref() {
        Some("csv") => Format::Csv,
        Some("ndjson") => Format::Ndjson,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format {other:?}: csv or ndjson"
            )))
        }
        None if media_type(&headers, header::ACCEPT).contains(NDJSON) => Format::Ndjson,
        None => Format::Csv,
    };
    let scope = super::scope(&caller, q.tenant.as_deref())?;
    // Data access is audited (issue 16): the export's own row comes first.
    let m = app.db.begin_data_mutation().await?;
    let entry = app.entry(
        &caller,
        audit_tenant(&scope),
        "suppressions.export",
        &scope,
        None,
        Some(serde_json::json!({"format": match format {
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
        }})),
    );
    m.commit(entry).await?;
    let (tx, body) = crate::api::stream::channel();
    tokio::spawn(export_pages(app, scope, format, tx));
    let (mime, name) = match format {
        Format::Csv => (CSV, "suppressions.csv"),
        Format::Ndjson => (NDJSON, "suppressions.ndjson"),
    };
    let mut resp = Body::new(body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

#[cfg(test)]
#[path = "bulk_tests.rs"]
mod tests;
