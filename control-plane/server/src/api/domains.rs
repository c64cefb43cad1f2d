//! `/v1/domains`: sending domains with their DKIM keys and DNS checks.
//!
//! Rotation is two-step so mail never goes out signed by an unpublished key: `rotate` adds a
//! *pending* key (not active, the old key keeps signing); the next successful `verify` finds the
//! new key's record, activates it and retires the others, which stay listed (and in snapshots,
//! marked retired) for the grace period while resolvers still hold the old record.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use petrel_policy::DkimAlgorithm;
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use super::{audit_json, new_id, normalize_domain, ApiJson, App};
use crate::auth::{Caller, Permission};
use crate::dns::{records_for, DnsRecord, RecordCheck, RecordState};
use crate::store;
use crate::store::domains::{algorithm_name, parse_algorithm, DkimKeyRow, Domain};
use crate::{ApiError, ControlError};

/// DKIM keys listed per domain (active, pending and retired within grace).
pub const DKIM_KEYS_PER_DOMAIN_MAX: usize = petrel_policy::snapshot::DKIM_KEYS_PER_DOMAIN_MAX;

/// A DKIM key as the API shows it (never the private half).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct KeyView {
    pub selector: String,
    /// `ed25519` or `rsa2048`.
    pub algorithm: String,
    /// The TXT value to publish at `<selector>._domainkey.<domain>`.
    pub dns_txt: String,
    pub created_unix_ms: i64,
    /// None: pending (published DNS not yet seen by verify).
    pub activated_unix_ms: Option<i64>,
    pub retired_unix_ms: Option<i64>,
    /// Retired keys disappear from listings and snapshots after this instant.
    pub listed_until_unix_ms: Option<i64>,
}

/// A sending domain as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DomainView {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub verified: bool,
    /// Marked verified for loopback development (`petrel up`), without DNS.
    pub verified_for_loopback: bool,
    pub verified_unix_ms: Option<i64>,
    pub messages_per_second_max: Option<u64>,
    pub created_unix_ms: i64,
    pub keys: Vec<KeyView>,
    /// What to publish for the newest key.
    pub dns_records: Vec<DnsRecord>,
    /// The last verify's outcome per record.
    pub last_check: Option<Vec<RecordCheck>>,
    /// The last DNS authentication check (scheduled or `POST .../check`); None: never checked.
    pub auth: Option<crate::domain_auth::DomainAuthView>,
    /// What to publish for Petrel to receive this domain's mail under MTA-STS: MX, the
    /// `_mta-sts` TXT, the `mta-sts.` policy host and `_smtp._tls` (empty when the operator
    /// has not turned inbound MTA-STS on). The policy is served once the MX records name the
    /// intake.
    pub inbound_records: Vec<DnsRecord>,
}

impl KeyView {
    fn of(k: &DkimKeyRow, grace_ms: i64) -> KeyView {
        KeyView {
            selector: k.selector.clone(),
            algorithm: algorithm_name(k.algorithm).to_string(),
            dns_txt: k.dns_txt.clone(),
            created_unix_ms: k.created_unix_ms,
            activated_unix_ms: k.activated_unix_ms,
            retired_unix_ms: k.retired_unix_ms,
            listed_until_unix_ms: k.retired_unix_ms.map(|t| t.saturating_add(grace_ms)),
        }
    }
}

/// Loads one domain of `tenant_id` with its listed keys (oldest first).
pub(crate) async fn fetch_domain(
    conn: &mut AnyConnection,
    app: &App,
    tenant_id: &str,
    id: &str,
) -> Result<DomainView, ApiError> {
    let row = store::domains::get(&mut *conn, tenant_id, id).await?;
    view(conn, app, row).await
}

/// The API view of a stored domain: its listed keys and the records to publish.
async fn view(conn: &mut AnyConnection, app: &App, row: Domain) -> Result<DomainView, ApiError> {
    let grace = app.settings.dkim_rotation_grace_ms;
    let listed_after = app.now_ms().saturating_sub(grace);
    let keys: Vec<KeyView> =
        store::domains::listed_keys(conn, app.db.sealer(), &row.tenant_id, &row.id, listed_after)
            .await?
            .iter()
            .map(|k| KeyView::of(k, grace))
            .collect();
    let dns_records = keys
        .last()
        .map(|k| {
            records_for(
                &row.name,
                &k.selector,
                &k.dns_txt,
                &app.settings.spf_include,
            )
        })
        .unwrap_or_default();
    let auth = store::domain_checks::get(conn, &row.tenant_id, &row.id)
        .await?
        .as_ref()
        .map(crate::domain_auth::DomainAuthView::of);
    let inbound_records = app
        .settings
        .mta_sts
        .as_ref()
        .map(|m| m.records_for(&row.name, public_host(&app.settings.public_url)))
        .unwrap_or_default();
    Ok(DomainView {
        auth,
        inbound_records,
        id: row.id,
        tenant_id: row.tenant_id,
        name: row.name,
        verified: row.verified,
        verified_for_loopback: row.verified_loopback,
        verified_unix_ms: row.verified_unix_ms,
        messages_per_second_max: row.messages_per_second_max,
        created_unix_ms: row.created_unix_ms,
        keys,
        dns_records,
        last_check: row
            .last_check_json
            .and_then(|t| serde_json::from_str(&t).ok()),
    })
}

/// The host of the control plane's public origin (`https://host[:port]`), where the
/// `mta-sts.` policy hosts point; None when no origin is set.
fn public_host(public_url: &str) -> Option<&str> {
    let rest = public_url.split_once("://").map_or(public_url, |(_, r)| r);
    let host = rest.split(['/', ':']).next().unwrap_or("");
    (!host.is_empty()).then_some(host)
}

/// A fresh key, generated off the runtime threads (RSA takes a while).
pub(crate) async fn generate_key(
    alg: DkimAlgorithm,
) -> Result<petrel_policy::keys::GeneratedKey, ControlError> {
    tokio::task::spawn_blocking(move || petrel_policy::keys::generate(alg))
        .await
        .map_err(|e| ControlError::Config(format!("key task: {e}")))?
        .map_err(ControlError::from)
}

/// The row of a new key of `domain`. `activated`: None for a pending key.
pub(crate) fn key_row(
    domain: &Domain,
    selector: &str,
    key: petrel_policy::keys::GeneratedKey,
    now_ms: i64,
    activated: Option<i64>,
) -> DkimKeyRow {
    DkimKeyRow {
        id: new_id("key"),
        tenant_id: domain.tenant_id.clone(),
        domain_id: domain.id.clone(),
        selector: selector.to_string(),
        algorithm: key.algorithm,
        private_key_pkcs8_der: key.private_key_pkcs8_der,
        dns_txt: key.dns_txt,
        activated_unix_ms: activated,
        created_unix_ms: now_ms,
        retired_unix_ms: None,
    }
}

/// `ptl-<8 hex>`, a fresh DKIM selector.
pub(crate) fn new_selector() -> String {
    format!("ptl-{}", hex::encode(rand::random::<[u8; 4]>()))
}

fn check_selector(s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid("selector must be [a-z0-9-] labels"))
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDomain {
    /// A DNS name.
    #[schema(max_length = 253)]
    pub name: String,
    /// `ed25519` (default) or `rsa2048`.
    #[serde(default)]
    #[schema(pattern = "^(ed25519|rsa2048|rsa)$")]
    pub algorithm: Option<String>,
    /// `[a-z0-9-]` labels; default: a fresh `ptl-<8 hex>`.
    #[serde(default)]
    #[schema(pattern = r"^[a-z0-9-]+(\.[a-z0-9-]+)*$", max_length = 63)]
    pub selector: Option<String>,
}

fn pick_key_params(
    algorithm: Option<&str>,
    selector: Option<String>,
) -> Result<(DkimAlgorithm, String), ApiError> {
    let alg = match algorithm {
        None => DkimAlgorithm::Ed25519,
        Some(a) => parse_algorithm(a)
            .ok_or_else(|| ApiError::invalid("algorithm must be \"ed25519\" or \"rsa2048\""))?,
    };
    let selector = selector.unwrap_or_else(new_selector);
    check_selector(&selector)?;
    Ok((alg, selector))
}

#[utoipa::path(
    post,
    operation_id = "domains_create",
    path = "/v1/domains",
    summary = "Add a sending domain; generates a DKIM key (ed25519 or rsa2048) and returns the DNS records",
    request_body = CreateDomain,
    responses((status = 201, body = DomainView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::DomainsWrite.name())))
)]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateDomain>,
) -> Result<(StatusCode, Json<DomainView>), ApiError> {
    let name = normalize_domain(&req.name)?;
    let (alg, selector) = pick_key_params(req.algorithm.as_deref(), req.selector)?;
    let key = generate_key(alg).await?;
    let now = app.now_ms();
    let domain = Domain {
        id: new_id("dom"),
        tenant_id: caller.tenant_id.clone(),
        name,
        verified: false,
        verified_loopback: false,
        verified_unix_ms: None,
        messages_per_second_max: None,
        last_check_json: None,
        created_unix_ms: now,
    };
    let id = domain.id.clone();
    let mut m = app.db.begin_mutation().await?;
    store::domains::insert(m.conn(), &domain).await?;
    let key = key_row(&domain, &selector, key, now, Some(now));
    store::domains::insert_key(m.conn(), app.db.sealer(), &key).await?;
    let view = fetch_domain(m.conn(), &app, &caller.tenant_id, &id).await?;
    let entry = app.entry(
        &caller,
        Some(&caller.tenant_id),
        "domain.create",
        &id,
        None,
        audit_json(&view),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(
    get,
    operation_id = "domains_list",
    path = "/v1/domains",
    summary = "List sending domains",
    responses((status = 200, body = Vec<DomainView>)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::DomainsRead.name())))
)]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
) -> Result<Json<Vec<DomainView>>, ApiError> {
    let mut conn = app.db.conn().await?;
    let rows = store::domains::list(&mut conn, &caller.tenant_id).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(view(&mut conn, &app, row).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(
    get,
    operation_id = "domains_show",
    path = "/v1/domains/{id}",
    summary = "Show a sending domain with its keys and DNS records",
    params(("id" = String, Path, description = "The object's id")),
    responses((status = 200, body = DomainView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::DomainsRead.name())))
)]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DomainView>, ApiError> {
    let mut conn = app.db.conn().await?;
    Ok(Json(
        fetch_domain(&mut conn, &app, &caller.tenant_id, &id).await?,
    ))
}

#[utoipa::path(
    delete,
    operation_id = "domains_delete",
    path = "/v1/domains/{id}",
    summary = "Delete a sending domain and its keys",
    params(("id" = String, Path, description = "The object's id")),
    responses((status = 204, description = "Done")),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::DomainsWrite.name())))
)]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut m = app.db.begin_mutation().await?;
    let before = fetch_domain(m.conn(), &app, &caller.tenant_id, &id).await?;
    store::domains::delete(m.conn(), &caller.tenant_id, &id).await?;
    store::domain_checks::delete(m.conn(), &caller.tenant_id, &id).await?;
    let entry = app.entry(
        &caller,
        Some(&caller.tenant_id),
        "domain.delete",
        &id,
        audit_json(&before),
        None,
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    operation_id = "domains_verify",
    path = "/v1/domains/{id}/verify",
    summary = "Look the DNS records up; marks the domain verified when DKIM and SPF are found",
    params(("id" = String, Path, description = "The object's id")),
    responses((status = 200, body = DomainView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::DomainsWrite.name())))
)]
/// Looks the records up; marks the domain verified when DKIM (newest key) and SPF are found,
/// and activates a pending key whose record is found.
pub async fn verify(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DomainView>, ApiError> {
    let expected = {
        let mut conn = app.db.conn().await?;
        fetch_domain(&mut conn, &app, &caller.tenant_id, &id).await?
    };
    let checks = app
        .dns
        .check(&expected.dns_records, &app.settings.spf_include)
        .await;
    let state = |p: &str| checks.iter().find(|c| c.purpose == p).map(|c| c.state);
    let dkim_found = state("dkim") == Some(RecordState::Found);
    let spf_found = state("spf") == Some(RecordState::Found);
    let any_error = checks.iter().any(|c| c.state == RecordState::Error);
    let now = app.now_ms();

    let mut m = app.db.begin_mutation().await?;
    let before = fetch_domain(m.conn(), &app, &caller.tenant_id, &id).await?;
    let verified = if dkim_found && spf_found {
        true
    } else if any_error {
        before.verified
    } else {
        before.verified_for_loopback
    };
    let verified_at = match (verified, before.verified) {
        (true, false) => Some(now),
        (true, true) => before.verified_unix_ms,
        _ => None,
    };
    let checks_json =
        serde_json::to_string(&checks).map_err(|e| ApiError::internal(e.to_string()))?;
    store::domains::set_verification(
        m.conn(),
        &caller.tenant_id,
        &id,
        verified,
        verified_at,
        checks_json,
    )
    .await?;
    if let (true, Some(newest)) = (dkim_found, before.keys.last()) {
        if newest.activated_unix_ms.is_none() {
            store::domains::activate_key(m.conn(), &caller.tenant_id, &id, &newest.selector, now)
                .await?;
        }
    }
    let after = fetch_domain(m.conn(), &app, &caller.tenant_id, &id).await?;
    let entry = app.entry(
        &caller,
        Some(&caller.tenant_id),
        "domain.verify",
        &id,
        audit_json(&before),
        audit_json(&after),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(after))
}

#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateDomain {
    /// `ed25519` (default) or `rsa2048`.
    #[serde(default)]
    #[schema(pattern = "^(ed25519|rsa2048|rsa)$")]
    pub algorithm: Option<String>,
    /// `[a-z0-9-]` labels, unused for this domain; default: a fresh `ptl-<8 hex>`.
    #[serde(default)]
    #[schema(pattern = r"^[a-z0-9-]+(\.[a-z0-9-]+)*$", max_length = 63)]
    pub selector: Option<String>,
}

#[utoipa::path(
    post,
    operation_id = "domains_rotate",
    path = "/v1/domains/{id}/rotate",
    summary = "Add a pending DKIM key under a new selector (activated by the next successful verify)",
    params(("id" = String, Path, description = "The object's id")),
    request_body(content = Option<RotateDomain>, description = "Optional: an empty body picks the defaults", content_type = "application/json"),
    responses((status = 200, body = DomainView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::DomainsWrite.name())))
)]
/// Adds a pending key under a new selector (see the module doc).
pub async fn rotate(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<DomainView>, ApiError> {
    let req: RotateDomain = if body.iter().all(u8::is_ascii_whitespace) {
        RotateDomain::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            if e.is_data() {
                ApiError::invalid(e.to_string())
            } else {
                ApiError::bad_request(e.to_string())
            }
        })?
    };
    let (alg, selector) = pick_key_params(req.algorithm.as_deref(), req.selector)?;
    let key = generate_key(alg).await?;
    let now = app.now_ms();
    let mut m = app.db.begin_mutation().await?;
    let row = store::domains::get(m.conn(), &caller.tenant_id, &id).await?;
    let before = view(m.conn(), &app, row.clone()).await?;
    if before.keys.len() >= DKIM_KEYS_PER_DOMAIN_MAX {
        return Err(ApiError::conflict(
            "too many DKIM keys listed for this domain",
        ));
    }
    if before.keys.iter().any(|k| k.selector == selector) {
        return Err(ApiError::conflict("selector already used for this domain"));
    }
    store::domains::insert_key(
        m.conn(),
        app.db.sealer(),
        &key_row(&row, &selector, key, now, None),
    )
    .await?;
    let after = fetch_domain(m.conn(), &app, &caller.tenant_id, &id).await?;
    let entry = app.entry(
        &caller,
        Some(&caller.tenant_id),
        "domain.rotate",
        &id,
        audit_json(&before),
        audit_json(&after),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(after))
}
