//! The tenant export job (issue 16): one archive of a tenant's settings, domains, DKIM keys,
//! credentials, suppression list, events, webhooks and audit rows, as JSON lines, written into the database
//! in sealed chunks (`store/exports.rs`) and served by `GET /v1/tenants/{id}/export`
//! (`api/export.rs`).
//!
//! The archive is one JSON-lines document:
//!
//! ```text
//! {"kind":"header","format":1,"tenant_id":"ten_..","export_id":"exp_..","created_unix_ms":..}
//! {"kind":"tenant","data":{..}}            one line per record, kinds in this order:
//! ...                                      tenant, domain, dkim_key, credential, suppression,
//! {"kind":"end","counts":{..},"sha256":".."}   event, webhook, audit
//! ```
//!
//! Each record's `data` is the API's view of the object, so nothing secret is in it: the tenant
//! (one record: its settings, such as its egress pool and delivery weight) as
//! `GET /v1/tenants/{id}` shows it, domains as `GET /v1/domains/{id}` shows them, DKIM keys without their private half (the column is
//! never read), credentials without secret or hash, webhooks without their secret, events as
//! `GET /v1/events`, audit rows opened as `GET /v1/audit-log` shows them. `end` counts the
//! records of each kind, and `sha256` is the hex digest of every byte before the `end` line.
//!
//! Memory is bounded: the job reads each table in pages of [`EXPORT_PAGE_ROWS`] (a pooled
//! connection per page, released before anything is written), appends lines to a buffer, and
//! every [`EXPORT_CHUNK_BYTES`] seals the chunk under the tenant's data key and stores it in a
//! short write transaction of its own, which also records the progress. The archive is not a
//! snapshot: rows changed while it runs may or may not be in it (events are read newest first
//! from the moment the job reaches them, so events that arrive later are not).
//!
//! Lifetime: a ready archive (and a failed job's row) expires after [`EXPORT_TTL_MS`]; the
//! purge task removes expired exports every [`EXPORT_PURGE_INTERVAL_MS`], in transactions of
//! [`EXPORT_PURGE_CHUNK_ROWS`] chunks. A job whose process died stays `running` in the database:
//! at start-up [`recover`] marks it failed (`interrupted`), and so does every purge pass once it
//! is older than [`EXPORT_STALE_MS`].

use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::credentials::CredentialView;
use crate::api::domains::{fetch_domain, KeyView};
use crate::api::events::EventView;
use crate::api::suppressions::SuppressionView;
use crate::api::webhooks::WebhookView;
use crate::api::App;
use crate::audit::AuditFilter;
use crate::store::events::{EventFilter, Scope};
use crate::store::exports::{self as xs, ExportRow, IdTable, PublicKeyRow};
use crate::store::suppressions::{self as ss, Search};
use crate::store::{self, Db, Dialect, StoreError};

/// Plain bytes per stored chunk (the last one may be shorter).
pub const EXPORT_CHUNK_BYTES: usize = 64 << 10;
/// Rows read per query of a table.
pub const EXPORT_PAGE_ROWS: i64 = 500;
/// How long a ready archive (or a failed job's row) is kept, ms: 24 hours.
pub const EXPORT_TTL_MS: i64 = 24 * 3_600_000;
/// A job still `running` this long after it started is taken for one whose node died, ms: two
/// hours. Multi-node caveat: on PostgreSQL the purge of every node applies it, so a job that
/// runs longer than this on a live node is marked failed too; that job notices at its next
/// chunk (its progress update finds no running row) and stops.
pub const EXPORT_STALE_MS: i64 = 2 * 3_600_000;
/// How often the purge task runs, ms.
pub const EXPORT_PURGE_INTERVAL_MS: u64 = 600_000;
/// Chunks deleted per transaction (4 MiB of archive at most): a purge never holds the write
/// lock for long.
pub const EXPORT_PURGE_CHUNK_ROWS: i64 = 64;
/// Expired exports removed per purge pass (the rest wait for the next).
pub const EXPORT_PURGE_EXPORTS_MAX: i64 = 100;
/// The archive's `format` (its header line says it).
pub const ARCHIVE_FORMAT: u32 = 1;
/// The error of a job whose node stopped while it ran.
pub const INTERRUPTED: &str = "interrupted";

const _: () = assert!(EXPORT_CHUNK_BYTES > 0 && EXPORT_PAGE_ROWS > 0);

/// The kinds of record, in archive order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Tenant,
    Domain,
    DkimKey,
    Credential,
    Suppression,
    Event,
    Webhook,
    Audit,
}

impl RecordKind {
    /// Every kind, in archive order.
    pub const ALL: [RecordKind; 8] = [
        RecordKind::Tenant,
        RecordKind::Domain,
        RecordKind::DkimKey,
        RecordKind::Credential,
        RecordKind::Suppression,
        RecordKind::Event,
        RecordKind::Webhook,
        RecordKind::Audit,
    ];

    /// The record's `kind` in the archive.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Tenant => "tenant",
            RecordKind::Domain => "domain",
            RecordKind::DkimKey => "dkim_key",
            RecordKind::Credential => "credential",
            RecordKind::Suppression => "suppression",
            RecordKind::Event => "event",
            RecordKind::Webhook => "webhook",
            RecordKind::Audit => "audit",
        }
    }
}

/// Why a job stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A read or a chunk write failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// An object's API view could not be made.
    #[error("{kind}: {message}")]
    View { kind: &'static str, message: String },
    /// A record did not serialize (not expected of our plain views).
    #[error("serialize: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The row is no longer running: another node took the job for a dead one, or it was
    /// purged.
    #[error("the export is no longer running")]
    NotRunning,
}

impl ExportError {
    /// What the job's row says (the caller sees it: no internals; the log has the detail).
    pub fn reason(&self) -> &'static str {
        match self {
            ExportError::Store(_) => "the database failed while the export ran",
            ExportError::View { .. } => "an object could not be read",
            ExportError::Serialize(_) => "an object could not be serialized",
            ExportError::NotRunning => INTERRUPTED,
        }
    }
}

/// A DKIM key in the archive: the API's key view with its ids.
#[derive(Debug, Clone, Serialize)]
pub struct DkimKeyRecord {
    pub id: String,
    pub domain_id: String,
    #[serde(flatten)]
    pub key: KeyView,
}

impl DkimKeyRecord {
    fn of(k: PublicKeyRow, grace_ms: i64) -> DkimKeyRecord {
        DkimKeyRecord {
            key: KeyView {
                selector: k.selector,
                algorithm: k.algorithm,
                dns_txt: k.dns_txt,
                created_unix_ms: k.created_unix_ms,
                activated_unix_ms: k.activated_unix_ms,
                retired_unix_ms: k.retired_unix_ms,
                listed_until_unix_ms: k.retired_unix_ms.map(|t| t.saturating_add(grace_ms)),
            },
            id: k.id,
            domain_id: k.domain_id,
        }
    }
}

/// Runs the job of the new export `row` in a task of its own.
pub fn spawn(app: App, row: ExportRow) {
    tokio::spawn(run(app, row));
}

async fn run(app: App, row: ExportRow) {
    let result = write(&app, &row).await;
    let Err(e) = result else {
        tracing::info!(export = %row.id, tenant = %row.tenant_id, "tenant export ready");
        return;
    };
    tracing::warn!(export = %row.id, tenant = %row.tenant_id, error = %e, "tenant export failed");
    let now = app.now_ms();
    let failed = async {
        let mut tx = app.db.begin_write().await?;
        xs::fail(&mut tx, &row.id, e.reason(), now, now + EXPORT_TTL_MS).await?;
        tx.commit().await?;
        delete_chunks(&app.db, &row.id).await
    }
    .await;
    if let Err(e) = failed {
        tracing::warn!(export = %row.id, error = %e, "could not record the failed export");
    }
}

/// Writes the whole archive of `row`, then marks it ready.
async fn write(app: &App, row: &ExportRow) -> Result<(), ExportError> {
    // The tenant's key, committed and cached before the first chunk's transaction seals.
    app.db.sealer().prepare(Some(&row.tenant_id)).await?;
    let mut a = Archive::new(app, row);
    a.line(&serde_json::json!({
        "kind": "header",
        "format": ARCHIVE_FORMAT,
        "tenant_id": row.tenant_id,
        "export_id": row.id,
        "created_unix_ms": row.created_unix_ms,
    }))?;
    a.tenant().await?;
    a.domains().await?;
    a.dkim_keys().await?;
    a.credentials().await?;
    a.suppressions().await?;
    a.events().await?;
    a.webhooks().await?;
    a.audit().await?;
    a.finish().await
}

/// The archive being written: the bytes not yet in a chunk, the digest of every byte so far,
/// the counts.
struct Archive<'a> {
    app: &'a App,
    row: &'a ExportRow,
    /// Lines not yet stored; `len() < EXPORT_CHUNK_BYTES` between records.
    buf: Vec<u8>,
    sha: Sha256,
    /// Records per kind, indexed as [`RecordKind::ALL`].
    counts: [u64; RecordKind::ALL.len()],
    /// The next chunk's number.
    next_chunk: i64,
    /// Bytes stored in chunks so far.
    stored_bytes: i64,
}

impl<'a> Archive<'a> {
    fn new(app: &'a App, row: &'a ExportRow) -> Archive<'a> {
        Archive {
            app,
            row,
            buf: Vec::with_capacity(EXPORT_CHUNK_BYTES * 2),
            sha: Sha256::new(),
            counts: [0; RecordKind::ALL.len()],
            next_chunk: 0,
            stored_bytes: 0,
        }
    }

    fn records(&self) -> i64 {
        i64::try_from(self.counts.iter().sum::<u64>()).unwrap_or(i64::MAX)
    }

    /// Appends one line (the value's JSON and `\n`) to the buffer and the digest.
    fn line(&mut self, value: &impl Serialize) -> Result<(), ExportError> {
        let start = self.buf.len();
        serde_json::to_writer(&mut self.buf, value)?;
        self.buf.push(b'\n');
        self.sha.update(&self.buf[start..]);
        Ok(())
    }

    /// Appends one record, and stores full chunks.
    async fn record(&mut self, kind: RecordKind, data: &impl Serialize) -> Result<(), ExportError> {
        self.line(&Record {
            kind: kind.as_str(),
            data,
        })?;
        self.counts[kind as usize] += 1;
        while self.buf.len() >= EXPORT_CHUNK_BYTES {
            let rest = self.buf.split_off(EXPORT_CHUNK_BYTES);
            let full = std::mem::replace(&mut self.buf, rest);
            self.store(&full).await?;
        }
        Ok(())
    }

    /// Stores `plain` as the next chunk, in a write transaction of its own.
    async fn store(&mut self, plain: &[u8]) -> Result<(), ExportError> {
        let bytes = self.stored_bytes + i64::try_from(plain.len()).unwrap_or(i64::MAX);
        let db = &self.app.db;
        let mut tx = db.begin_write().await?;
        let progress = (bytes, self.records());
        let n = self.next_chunk;
        let (id, tenant) = (&self.row.id, &self.row.tenant_id);
        if !xs::append_chunk(&mut tx, db.sealer(), tenant, id, n, plain, progress).await? {
            return Err(ExportError::NotRunning);
        }
        tx.commit().await?;
        self.next_chunk += 1;
        self.stored_bytes = bytes;
        Ok(())
    }

    /// Appends the `end` line, stores the rest and marks the export ready.
    async fn finish(mut self) -> Result<(), ExportError> {
        let sha256 = hex::encode(self.sha.clone().finalize());
        let counts: serde_json::Map<String, serde_json::Value> = RecordKind::ALL
            .iter()
            .map(|k| (k.as_str().to_string(), self.counts[*k as usize].into()))
            .collect();
        self.line(&serde_json::json!({"kind": "end", "counts": counts, "sha256": sha256}))?;
        let rest = std::mem::take(&mut self.buf);
        for piece in rest.chunks(EXPORT_CHUNK_BYTES) {
            self.store(piece).await?;
        }
        let now = self.app.now_ms();
        let mut tx = self.app.db.begin_write().await?;
        let totals = (self.stored_bytes, self.records());
        if !xs::finish(&mut tx, &self.row.id, totals, now, now + EXPORT_TTL_MS).await? {
            return Err(ExportError::NotRunning);
        }
        tx.commit().await?;
        Ok(())
    }

    /// The tenant's own row as the API shows it (none once the tenant is deleted: its export
    /// goes with it).
    async fn tenant(&mut self) -> Result<(), ExportError> {
        let view = {
            let mut conn = self.app.db.conn().await?;
            store::tenants::get(&mut conn, self.app.db.sealer(), &self.row.tenant_id).await?
        };
        if let Some(view) = view {
            self.record(RecordKind::Tenant, &view).await?;
        }
        Ok(())
    }

    async fn domains(&mut self) -> Result<(), ExportError> {
        let mut after = String::new();
        loop {
            let (ids, views) = {
                let mut conn = self.app.db.conn().await?;
                let ids = self.ids(&mut conn, IdTable::Domains, &after).await?;
                let mut views = Vec::with_capacity(ids.len());
                for id in &ids {
                    match fetch_domain(&mut conn, self.app, &self.row.tenant_id, id).await {
                        Ok(v) => views.push(v),
                        // Deleted since the page of ids was read.
                        Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {}
                        Err(e) => {
                            return Err(ExportError::View {
                                kind: "domain",
                                message: e.message,
                            })
                        }
                    }
                }
                (ids, views)
            };
            for v in &views {
                self.record(RecordKind::Domain, v).await?;
            }
            match next_after(&ids) {
                Some(last) => after = last,
                None => return Ok(()),
            }
        }
    }

    async fn dkim_keys(&mut self) -> Result<(), ExportError> {
        let grace = self.app.settings.dkim_rotation_grace_ms;
        let mut after = String::new();
        loop {
            let rows = {
                let mut conn = self.app.db.conn().await?;
                let t = &self.row.tenant_id;
                xs::public_keys_page(&mut conn, t, &after, EXPORT_PAGE_ROWS).await?
            };
            let full = is_full(rows.len());
            after = rows.last().map_or(after, |k| k.id.clone());
            for k in rows {
                self.record(RecordKind::DkimKey, &DkimKeyRecord::of(k, grace))
                    .await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn credentials(&mut self) -> Result<(), ExportError> {
        let mut after = String::new();
        loop {
            let (ids, views) = {
                let mut conn = self.app.db.conn().await?;
                let ids = self.ids(&mut conn, IdTable::Credentials, &after).await?;
                let mut views = Vec::with_capacity(ids.len());
                for id in &ids {
                    match store::credentials::get(&mut conn, &self.row.tenant_id, id).await {
                        Ok(c) => views.push(CredentialView::from(c)),
                        Err(StoreError::NotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                (ids, views)
            };
            for v in &views {
                self.record(RecordKind::Credential, v).await?;
            }
            match next_after(&ids) {
                Some(last) => after = last,
                None => return Ok(()),
            }
        }
    }

    async fn suppressions(&mut self) -> Result<(), ExportError> {
        let mut after: Option<String> = None;
        loop {
            let rows = {
                let mut conn = self.app.db.conn().await?;
                let (t, now) = (&self.row.tenant_id, self.app.now_ms());
                let a = after.as_deref();
                ss::list(&mut conn, t, &Search::All, a, EXPORT_PAGE_ROWS, now).await?
            };
            let full = is_full(rows.len());
            after = rows.last().map(|r| r.address.clone()).or(after);
            for r in rows {
                self.record(RecordKind::Suppression, &SuppressionView::from(r))
                    .await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn events(&mut self) -> Result<(), ExportError> {
        let mut filter = EventFilter {
            scope: Scope::Tenant(self.row.tenant_id.clone()),
            kind: None,
            recipient: None,
            message_id: None,
            tag: None,
            since_ms: None,
            until_ms: None,
            before_seq: None,
        };
        loop {
            let rows = {
                let mut conn = self.app.db.conn().await?;
                store::events::list(&mut conn, &filter, EXPORT_PAGE_ROWS).await?
            };
            let full = is_full(rows.len());
            filter.before_seq = rows.last().map(|r| r.seq).or(filter.before_seq);
            for r in rows {
                self.record(RecordKind::Event, &EventView::from(r.event))
                    .await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn webhooks(&mut self) -> Result<(), ExportError> {
        let mut after = String::new();
        loop {
            let (ids, views) = {
                let mut conn = self.app.db.conn().await?;
                let ids = self.ids(&mut conn, IdTable::Webhooks, &after).await?;
                let (sealer, now) = (self.app.db.sealer(), self.app.now_ms());
                let mut views = Vec::with_capacity(ids.len());
                for id in &ids {
                    let t = &self.row.tenant_id;
                    match store::webhooks::get(&mut conn, sealer, t, id).await {
                        Ok(w) => views.push(WebhookView::new(w, now)),
                        Err(StoreError::NotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                (ids, views)
            };
            for v in &views {
                self.record(RecordKind::Webhook, v).await?;
            }
            match next_after(&ids) {
                Some(last) => after = last,
                None => return Ok(()),
            }
        }
    }

    async fn audit(&mut self) -> Result<(), ExportError> {
        let filter = AuditFilter {
            tenant_id: Some(self.row.tenant_id.clone()),
            ..AuditFilter::default()
        };
        let mut after = 0i64;
        loop {
            let rows = {
                let mut conn = self.app.db.conn().await?;
                let sealer = self.app.db.sealer();
                crate::audit::page(&mut conn, sealer, &filter, after, EXPORT_PAGE_ROWS).await?
            };
            let full = is_full(rows.len());
            after = rows.last().map_or(after, |r| r.seq);
            for r in &rows {
                self.record(RecordKind::Audit, r).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// A page of the tenant's ids of `table` after `after`.
    async fn ids(
        &self,
        conn: &mut sqlx::AnyConnection,
        table: IdTable,
        after: &str,
    ) -> Result<Vec<String>, ExportError> {
        let t = &self.row.tenant_id;
        Ok(xs::ids_page(conn, table, t, after, EXPORT_PAGE_ROWS).await?)
    }
}

/// One record line.
#[derive(Serialize)]
struct Record<'a, T: Serialize> {
    kind: &'static str,
    data: &'a T,
}

/// True when a page of `n` rows was full (so there may be more).
fn is_full(n: usize) -> bool {
    usize::try_from(EXPORT_PAGE_ROWS).is_ok_and(|page| n >= page)
}

/// The cursor after a full page of ids; None after the last page.
fn next_after(ids: &[String]) -> Option<String> {
    if is_full(ids.len()) {
        ids.last().cloned()
    } else {
        None
    }
}

/// Deletes every chunk of export `id`, [`EXPORT_PURGE_CHUNK_ROWS`] per transaction.
async fn delete_chunks(db: &Db, id: &str) -> Result<(), StoreError> {
    loop {
        let mut tx = db.begin_write().await?;
        let n = xs::delete_chunks(&mut tx, id, EXPORT_PURGE_CHUNK_ROWS).await?;
        tx.commit().await?;
        if n == 0 {
            return Ok(());
        }
    }
}

/// Marks failed (`interrupted`) the jobs a dead node left running and deletes their chunks:
/// on SQLite (one node per database) every running job, at start-up, before the API serves; on
/// PostgreSQL, and in every purge pass, those older than [`EXPORT_STALE_MS`].
pub async fn recover(db: &Db, now_unix_ms: i64) -> Result<u64, StoreError> {
    let older_than_ms = match db.dialect {
        Dialect::Sqlite => 0,
        Dialect::Postgres => EXPORT_STALE_MS,
    };
    fail_stale(db, now_unix_ms, now_unix_ms - older_than_ms).await
}

async fn fail_stale(db: &Db, now: i64, created_before: i64) -> Result<u64, StoreError> {
    let mut tx = db.begin_write().await?;
    let expires = now + EXPORT_TTL_MS;
    let ids = xs::fail_running_before(&mut tx, created_before, INTERRUPTED, now, expires).await?;
    tx.commit().await?;
    for id in &ids {
        tracing::warn!(export = %id, "tenant export interrupted (its node stopped)");
        delete_chunks(db, id).await?;
    }
    Ok(ids.len() as u64)
}

/// One purge pass at `now_unix_ms`: stale jobs failed, then up to
/// [`EXPORT_PURGE_EXPORTS_MAX`] expired exports removed with their chunks. Returns how many
/// were removed.
pub async fn purge(db: &Db, now_unix_ms: i64) -> Result<u64, StoreError> {
    fail_stale(db, now_unix_ms, now_unix_ms - EXPORT_STALE_MS).await?;
    let ids = xs::expired(
        &mut *db.conn().await?,
        now_unix_ms,
        EXPORT_PURGE_EXPORTS_MAX,
    )
    .await?;
    for id in &ids {
        delete_chunks(db, id).await?;
        let mut tx = db.begin_write().await?;
        xs::delete(&mut tx, id).await?;
        tx.commit().await?;
    }
    Ok(ids.len() as u64)
}

/// Runs [`purge`] every [`EXPORT_PURGE_INTERVAL_MS`] until dropped.
pub async fn purge_task(app: App) {
    let mut tick = tokio::time::interval(Duration::from_millis(EXPORT_PURGE_INTERVAL_MS));
    loop {
        tick.tick().await;
        match purge(&app.db, app.now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "purged expired tenant exports"),
            Err(e) => tracing::warn!(error = %e, "tenant export purge failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_in_archive_order_and_index_their_counts() {
        for (i, k) in RecordKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        let names: Vec<_> = RecordKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "tenant",
                "domain",
                "dkim_key",
                "credential",
                "suppression",
                "event",
                "webhook",
                "audit"
            ]
        );
    }

    #[test]
    fn a_page_is_full_only_at_the_page_size() {
        let page = usize::try_from(EXPORT_PAGE_ROWS).expect("page");
        assert!(!is_full(page - 1));
        assert!(is_full(page));
        let ids: Vec<String> = (0..page).map(|i| format!("id{i:04}")).collect();
        assert_eq!(next_after(&ids), ids.last().cloned());
        assert_eq!(next_after(&ids[..3]), None);
    }

    #[test]
    fn reasons_name_no_internals() {
        let e = ExportError::Store(StoreError::NotFound("x"));
        assert_eq!(e.reason(), "the database failed while the export ran");
        assert_eq!(ExportError::NotRunning.reason(), INTERRUPTED);
    }
}
