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
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{audit_json, new_id, normalize_domain, ApiJson, App};
use crate::auth::{Caller, Permission};
use crate::dns::{records_for, DnsRecord, RecordCheck, RecordState};
use crate::store::{get_bool, get_opt_u64};
use crate::{ApiError, ControlError};

/// DKIM keys listed per domain (active, pending and retired within grace).
pub const DKIM_KEYS_PER_DOMAIN_MAX: usize = petrel_policy::snapshot::DKIM_KEYS_PER_DOMAIN_MAX;

/// A DKIM key as the API shows it (never the private half).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
}

pub(crate) fn algorithm_name(a: DkimAlgorithm) -> &'static str {
    match a {
        DkimAlgorithm::Ed25519 => "ed25519",
        DkimAlgorithm::Rsa2048 => "rsa2048",
    }
}

pub(crate) fn parse_algorithm(s: &str) -> Option<DkimAlgorithm> {
    match s {
        "ed25519" => Some(DkimAlgorithm::Ed25519),
        "rsa2048" | "rsa" => Some(DkimAlgorithm::Rsa2048),
        _ => None,
    }
}

fn key_from(r: &AnyRow, grace_ms: i64) -> Result<KeyView, sqlx::Error> {
    let retired: Option<i64> = r.try_get("retired_unix_ms")?;
    Ok(KeyView {
        selector: r.try_get("selector")?,
        algorithm: r.try_get("algorithm")?,
        dns_txt: r.try_get("dns_txt")?,
        created_unix_ms: r.try_get("created_unix_ms")?,
        activated_unix_ms: r.try_get("activated_unix_ms")?,
        retired_unix_ms: retired,
        listed_until_unix_ms: retired.map(|t| t.saturating_add(grace_ms)),
    })
}

/// Loads one domain of `tenant_id` with its listed keys (oldest first).
pub(crate) async fn fetch_domain(
    conn: &mut sqlx::AnyConnection,
    app: &App,
    tenant_id: &str,
    id: &str,
) -> Result<DomainView, ApiError> {
    let row = sqlx::query("SELECT * FROM domains WHERE id = $1 AND tenant_id = $2")
        .bind(id.to_string())
        .bind(tenant_id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ApiError::not_found("domain"))?;
    let grace = app.settings.dkim_rotation_grace_ms;
    let keys = sqlx::query(
        "SELECT * FROM dkim_keys WHERE domain_id = $1 AND tenant_id = $2 \
         AND (retired_unix_ms IS NULL OR retired_unix_ms > $3) ORDER BY created_unix_ms, id",
    )
    .bind(id.to_string())
    .bind(tenant_id.to_string())
    .bind(app.now_ms().saturating_sub(grace))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| key_from(r, grace))
    .collect::<Result<Vec<_>, _>>()?;
    let name: String = row.try_get("name")?;
    let dns_records = keys
        .last()
        .map(|k| records_for(&name, &k.selector, &k.dns_txt, &app.settings.spf_include))
        .unwrap_or_default();
    let last_check: Option<String> = row.try_get("last_check_json")?;
    Ok(DomainView {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name,
        verified: get_bool(&row, "verified")?,
        verified_for_loopback: get_bool(&row, "verified_loopback")?,
        verified_unix_ms: row.try_get("verified_unix_ms")?,
        messages_per_second_max: get_opt_u64(&row, "messages_per_second_max")?,
        created_unix_ms: row.try_get("created_unix_ms")?,
        keys,
        dns_records,
        last_check: last_check.and_then(|t| serde_json::from_str(&t).ok()),
    })
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

/// Inserts a key row (inside a mutation). `activated`: None for a pending key.
pub(crate) async fn insert_key(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    tenant_id: &str,
    domain_id: &str,
    selector: &str,
    key: &petrel_policy::keys::GeneratedKey,
    now_ms: i64,
    activated: Option<i64>,
) -> Result<(), ControlError> {
    sqlx::query(
        "INSERT INTO dkim_keys (id, tenant_id, domain_id, selector, algorithm, private_key, \
         dns_txt, activated_unix_ms, created_unix_ms) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
    )
    .bind(new_id("key"))
    .bind(tenant_id.to_string())
    .bind(domain_id.to_string())
    .bind(selector.to_string())
    .bind(algorithm_name(key.algorithm))
    .bind(key.private_key_pkcs8_der.clone())
    .bind(key.dns_txt.clone())
    .bind(activated)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDomain {
    pub name: String,
    /// `ed25519` (default) or `rsa2048`.
    #[serde(default)]
    pub algorithm: Option<String>,
    #[serde(default)]
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

pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateDomain>,
) -> Result<(StatusCode, Json<DomainView>), ApiError> {
    caller.require(Permission::DomainsWrite)?;
    let name = normalize_domain(&req.name)?;
    let (alg, selector) = pick_key_params(req.algorithm.as_deref(), req.selector)?;
    let key = generate_key(alg).await?;
    let id = new_id("dom");
    let now = app.now_ms();
    let mut m = app.db.begin_mutation().await?;
    sqlx::query(
        "INSERT INTO domains (id, tenant_id, name, verified, verified_loopback, created_unix_ms) \
         VALUES ($1,$2,$3,0,0,$4)",
    )
    .bind(id.clone())
    .bind(caller.tenant_id.clone())
    .bind(name.clone())
    .bind(now)
    .execute(&mut *m.tx)
    .await?;
    insert_key(
        &mut m.tx,
        &caller.tenant_id,
        &id,
        &selector,
        &key,
        now,
        Some(now),
    )
    .await?;
    let view = fetch_domain(&mut m.tx, &app, &caller.tenant_id, &id).await?;
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

pub async fn list(
    State(app): State<App>,
    caller: Caller,
) -> Result<Json<Vec<DomainView>>, ApiError> {
    caller.require(Permission::DomainsRead)?;
    let mut conn = app.db.pool.acquire().await?;
    let ids: Vec<String> = sqlx::query("SELECT id FROM domains WHERE tenant_id = $1 ORDER BY name")
        .bind(caller.tenant_id.clone())
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(fetch_domain(&mut conn, &app, &caller.tenant_id, &id).await?);
    }
    Ok(Json(out))
}

pub async fn show(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DomainView>, ApiError> {
    caller.require(Permission::DomainsRead)?;
    let mut conn = app.db.pool.acquire().await?;
    Ok(Json(
        fetch_domain(&mut conn, &app, &caller.tenant_id, &id).await?,
    ))
}

pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Permission::DomainsWrite)?;
    let mut m = app.db.begin_mutation().await?;
    let before = fetch_domain(&mut m.tx, &app, &caller.tenant_id, &id).await?;
    sqlx::query("DELETE FROM dkim_keys WHERE domain_id = $1 AND tenant_id = $2")
        .bind(id.clone())
        .bind(caller.tenant_id.clone())
        .execute(&mut *m.tx)
        .await?;
    sqlx::query("DELETE FROM domains WHERE id = $1 AND tenant_id = $2")
        .bind(id.clone())
        .bind(caller.tenant_id.clone())
        .execute(&mut *m.tx)
        .await?;
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

/// Looks the records up; marks the domain verified when DKIM (newest key) and SPF are found,
/// and activates a pending key whose record is found.
pub async fn verify(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DomainView>, ApiError> {
    caller.require(Permission::DomainsWrite)?;
    let expected = {
        let mut conn = app.db.pool.acquire().await?;
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
    let before = fetch_domain(&mut m.tx, &app, &caller.tenant_id, &id).await?;
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
    sqlx::query(
        "UPDATE domains SET verified = $1, verified_unix_ms = $2, last_check_json = $3 \
         WHERE id = $4 AND tenant_id = $5",
    )
    .bind(i64::from(verified))
    .bind(verified_at)
    .bind(checks_json)
    .bind(id.clone())
    .bind(caller.tenant_id.clone())
    .execute(&mut *m.tx)
    .await?;
    if let (true, Some(newest)) = (dkim_found, before.keys.last()) {
        if newest.activated_unix_ms.is_none() {
            activate(&mut m.tx, &caller.tenant_id, &id, &newest.selector, now).await?;
        }
    }
    let after = fetch_domain(&mut m.tx, &app, &caller.tenant_id, &id).await?;
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

/// Activates `selector` and retires every other key of the domain.
async fn activate(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    tenant_id: &str,
    domain_id: &str,
    selector: &str,
    now: i64,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE dkim_keys SET retired_unix_ms = $1 WHERE domain_id = $2 AND tenant_id = $3 \
         AND selector <> $4 AND retired_unix_ms IS NULL",
    )
    .bind(now)
    .bind(domain_id.to_string())
    .bind(tenant_id.to_string())
    .bind(selector.to_string())
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE dkim_keys SET activated_unix_ms = $1 WHERE domain_id = $2 AND tenant_id = $3 \
         AND selector = $4",
    )
    .bind(now)
    .bind(domain_id.to_string())
    .bind(tenant_id.to_string())
    .bind(selector.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateDomain {
    #[serde(default)]
    pub algorithm: Option<String>,
    #[serde(default)]
    pub selector: Option<String>,
}

/// Adds a pending key under a new selector (see the module doc).
pub async fn rotate(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<DomainView>, ApiError> {
    caller.require(Permission::DomainsWrite)?;
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
    let before = fetch_domain(&mut m.tx, &app, &caller.tenant_id, &id).await?;
    if before.keys.len() >= DKIM_KEYS_PER_DOMAIN_MAX {
        return Err(ApiError::conflict(
            "too many DKIM keys listed for this domain",
        ));
    }
    if before.keys.iter().any(|k| k.selector == selector) {
        return Err(ApiError::conflict("selector already used for this domain"));
    }
    insert_key(
        &mut m.tx,
        &caller.tenant_id,
        &id,
        &selector,
        &key,
        now,
        None,
    )
    .await?;
    let after = fetch_domain(&mut m.tx, &app, &caller.tenant_id, &id).await?;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainLimits {
    pub messages_per_second_max: Option<u64>,
}

pub async fn set_limits(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DomainLimits>,
) -> Result<Json<DomainView>, ApiError> {
    caller.require(Permission::LimitsWrite)?;
    let mut m = app.db.begin_mutation().await?;
    let before = fetch_domain(&mut m.tx, &app, &caller.tenant_id, &id).await?;
    sqlx::query("UPDATE domains SET messages_per_second_max = $1 WHERE id = $2 AND tenant_id = $3")
        .bind(req.messages_per_second_max.map(super::tenants::clamp_i64))
        .bind(id.clone())
        .bind(caller.tenant_id.clone())
        .execute(&mut *m.tx)
        .await?;
    let after = DomainView {
        messages_per_second_max: req.messages_per_second_max,
        ..before.clone()
    };
    let entry = app.entry(
        &caller,
        Some(&caller.tenant_id),
        "domain.limits",
        &id,
        audit_json(&before),
        audit_json(&after),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(after))
}
