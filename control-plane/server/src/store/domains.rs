//! The `domains` and `dkim_keys` tables: sending domains and their DKIM keys. Every query names
//! the owning tenant, except the snapshot's whole-table reads.

use petrel_policy::DkimAlgorithm;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::sealed::{aad, Sealer};
use super::{clamp_i64, conflict_on_unique, get_bool, get_opt_u64, StoreError, StoreResult};

/// The stored (and API) name of a DKIM algorithm.
pub fn algorithm_name(a: DkimAlgorithm) -> &'static str {
    match a {
        DkimAlgorithm::Ed25519 => "ed25519",
        DkimAlgorithm::Rsa2048 => "rsa2048",
    }
}

/// Parses an algorithm name (`rsa` is accepted for `rsa2048`).
pub fn parse_algorithm(s: &str) -> Option<DkimAlgorithm> {
    match s {
        "ed25519" => Some(DkimAlgorithm::Ed25519),
        "rsa2048" | "rsa" => Some(DkimAlgorithm::Rsa2048),
        _ => None,
    }
}

/// One `domains` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub verified: bool,
    /// Verified for loopback development (`petrel up`), without DNS.
    pub verified_loopback: bool,
    pub verified_unix_ms: Option<i64>,
    pub messages_per_second_max: Option<u64>,
    /// The last verify's outcome, as JSON text.
    pub last_check_json: Option<String>,
    pub created_unix_ms: i64,
}

fn decode_domain(r: &AnyRow) -> StoreResult<Domain> {
    Ok(Domain {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        name: r.try_get("name")?,
        verified: get_bool(r, "verified")?,
        verified_loopback: get_bool(r, "verified_loopback")?,
        verified_unix_ms: r.try_get("verified_unix_ms")?,
        messages_per_second_max: get_opt_u64(r, "messages_per_second_max")?,
        last_check_json: r.try_get("last_check_json")?,
        created_unix_ms: r.try_get("created_unix_ms")?,
    })
}

/// One `dkim_keys` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKeyRow {
    pub id: String,
    pub tenant_id: String,
    pub domain_id: String,
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    pub private_key_pkcs8_der: Vec<u8>,
    /// The TXT value to publish at `<selector>._domainkey.<domain>`.
    pub dns_txt: String,
    /// None: pending (its record not yet seen by verify).
    pub activated_unix_ms: Option<i64>,
    pub created_unix_ms: i64,
    pub retired_unix_ms: Option<i64>,
}

fn decode_key(r: &AnyRow) -> StoreResult<DkimKeyRow> {
    let alg: String = r.try_get("algorithm")?;
    Ok(DkimKeyRow {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        domain_id: r.try_get("domain_id")?,
        selector: r.try_get("selector")?,
        algorithm: parse_algorithm(&alg).ok_or_else(|| StoreError::Corrupt {
            column: "dkim_keys.algorithm",
            reason: format!("unknown algorithm {alg:?}"),
        })?,
        private_key_pkcs8_der: r.try_get("private_key")?,
        dns_txt: r.try_get("dns_txt")?,
        activated_unix_ms: r.try_get("activated_unix_ms")?,
        created_unix_ms: r.try_get("created_unix_ms")?,
        retired_unix_ms: r.try_get("retired_unix_ms")?,
    })
}

/// Domain `id` of tenant `tenant_id`.
pub async fn get(conn: &mut AnyConnection, tenant_id: &str, id: &str) -> StoreResult<Domain> {
    let row = sqlx::query("SELECT * FROM domains WHERE id = $1 AND tenant_id = $2")
        .bind(id.to_string())
        .bind(tenant_id.to_string())
        .fetch_optional(conn)
        .await?
        .ok_or(StoreError::NotFound("domain"))?;
    decode_domain(&row)
}

/// The tenant's domains, by name.
pub async fn list(conn: &mut AnyConnection, tenant_id: &str) -> StoreResult<Vec<Domain>> {
    sqlx::query("SELECT * FROM domains WHERE tenant_id = $1 ORDER BY name")
        .bind(tenant_id.to_string())
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode_domain)
        .collect()
}

/// Every tenant's domains, by name (the snapshot).
pub async fn list_all(conn: &mut AnyConnection) -> StoreResult<Vec<Domain>> {
    sqlx::query("SELECT * FROM domains ORDER BY name")
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode_domain)
        .collect()
}

/// True when some tenant has a verified domain of that name (inbound MTA-STS serves a policy
/// only for those; `crate::mta_sts`).
pub async fn verified_by_name(conn: &mut AnyConnection, name: &str) -> StoreResult<bool> {
    let rows = sqlx::query("SELECT * FROM domains WHERE name = $1")
        .bind(name.to_string())
        .fetch_all(conn)
        .await?;
    for r in &rows {
        if decode_domain(r)?.verified {
            return Ok(true);
        }
    }
    Ok(false)
}

/// True when the tenant has a domain of that name.
pub async fn exists_by_name(
    conn: &mut AnyConnection,
    tenant_id: &str,
    name: &str,
) -> StoreResult<bool> {
    Ok(
        sqlx::query("SELECT id FROM domains WHERE name = $1 AND tenant_id = $2")
            .bind(name.to_string())
            .bind(tenant_id.to_string())
            .fetch_optional(conn)
            .await?
            .is_some(),
    )
}

/// Inserts a domain row (`last_check_json` starts empty).
pub async fn insert(conn: &mut AnyConnection, d: &Domain) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO domains (id, tenant_id, name, verified, verified_loopback, \
         verified_unix_ms, messages_per_second_max, created_unix_ms) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
    )
    .bind(d.id.clone())
    .bind(d.tenant_id.clone())
    .bind(d.name.clone())
    .bind(i64::from(d.verified))
    .bind(i64::from(d.verified_loopback))
    .bind(d.verified_unix_ms)
    .bind(d.messages_per_second_max.map(clamp_i64))
    .bind(d.created_unix_ms)
    .execute(conn)
    .await
    .map_err(conflict_on_unique)?;
    Ok(())
}

/// Deletes a domain of the tenant and its keys.
pub async fn delete(conn: &mut AnyConnection, tenant_id: &str, id: &str) -> StoreResult<()> {
    sqlx::query("DELETE FROM dkim_keys WHERE domain_id = $1 AND tenant_id = $2")
        .bind(id.to_string())
        .bind(tenant_id.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM domains WHERE id = $1 AND tenant_id = $2")
        .bind(id.to_string())
        .bind(tenant_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a verify's outcome.
pub async fn set_verification(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
    verified: bool,
    verified_unix_ms: Option<i64>,
    last_check_json: String,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE domains SET verified = $1, verified_unix_ms = $2, last_check_json = $3 \
         WHERE id = $4 AND tenant_id = $5",
    )
    .bind(i64::from(verified))
    .bind(verified_unix_ms)
    .bind(last_check_json)
    .bind(id.to_string())
    .bind(tenant_id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets a domain's messages per second (None: the tenant's).
pub async fn set_rate(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
    messages_per_second_max: Option<u64>,
) -> StoreResult<()> {
    sqlx::query("UPDATE domains SET messages_per_second_max = $1 WHERE id = $2 AND tenant_id = $3")
        .bind(messages_per_second_max.map(clamp_i64))
        .bind(id.to_string())
        .bind(tenant_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

fn private_key_aad(id: &str) -> String {
    aad("dkim_keys", "private_key", id)
}

/// Opens the sealed private keys of `rows` in place (a key whose data key is gone cannot sign:
/// it is dropped).
async fn open_keys(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    rows: Vec<DkimKeyRow>,
) -> StoreResult<Vec<DkimKeyRow>> {
    let mut out = Vec::with_capacity(rows.len());
    for mut k in rows {
        let aad = private_key_aad(&k.id);
        if let Some(der) = sealer
            .open_bytes(conn, &aad, &k.private_key_pkcs8_der)
            .await?
        {
            k.private_key_pkcs8_der = der;
            out.push(k);
        }
    }
    Ok(out)
}

/// The domain's keys still listed at `listed_after_unix_ms` (not retired, or retired after it),
/// oldest first.
pub async fn listed_keys(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    tenant_id: &str,
    domain_id: &str,
    listed_after_unix_ms: i64,
) -> StoreResult<Vec<DkimKeyRow>> {
    let rows = sqlx::query(
        "SELECT * FROM dkim_keys WHERE domain_id = $1 AND tenant_id = $2 \
         AND (retired_unix_ms IS NULL OR retired_unix_ms > $3) ORDER BY created_unix_ms, id",
    )
    .bind(domain_id.to_string())
    .bind(tenant_id.to_string())
    .bind(listed_after_unix_ms)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(decode_key)
    .collect::<StoreResult<Vec<_>>>()?;
    open_keys(conn, sealer, rows).await
}

/// Every tenant's listed keys, by domain then age (the snapshot).
pub async fn listed_keys_all(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    listed_after_unix_ms: i64,
) -> StoreResult<Vec<DkimKeyRow>> {
    let rows = sqlx::query(
        "SELECT * FROM dkim_keys WHERE retired_unix_ms IS NULL OR retired_unix_ms > $1 \
         ORDER BY domain_id, created_unix_ms, id",
    )
    .bind(listed_after_unix_ms)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(decode_key)
    .collect::<StoreResult<Vec<_>>>()?;
    open_keys(conn, sealer, rows).await
}

/// Inserts a key row, its private key sealed under the tenant's data key.
pub async fn insert_key(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    k: &DkimKeyRow,
) -> StoreResult<()> {
    let private_key = sealer
        .seal_bytes(
            conn,
            Some(&k.tenant_id),
            &private_key_aad(&k.id),
            &k.private_key_pkcs8_der,
        )
        .await?;
    sqlx::query(
        "INSERT INTO dkim_keys (id, tenant_id, domain_id, selector, algorithm, private_key, \
         dns_txt, activated_unix_ms, created_unix_ms, retired_unix_ms) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
    )
    .bind(k.id.clone())
    .bind(k.tenant_id.clone())
    .bind(k.domain_id.clone())
    .bind(k.selector.clone())
    .bind(algorithm_name(k.algorithm))
    .bind(private_key)
    .bind(k.dns_txt.clone())
    .bind(k.activated_unix_ms)
    .bind(k.created_unix_ms)
    .bind(k.retired_unix_ms)
    .execute(conn)
    .await
    .map_err(conflict_on_unique)?;
    Ok(())
}

/// Activates `selector` and retires every other key of the domain.
pub async fn activate_key(
    conn: &mut AnyConnection,
    tenant_id: &str,
    domain_id: &str,
    selector: &str,
    now_unix_ms: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE dkim_keys SET retired_unix_ms = $1 WHERE domain_id = $2 AND tenant_id = $3 \
         AND selector <> $4 AND retired_unix_ms IS NULL",
    )
    .bind(now_unix_ms)
    .bind(domain_id.to_string())
    .bind(tenant_id.to_string())
    .bind(selector.to_string())
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE dkim_keys SET activated_unix_ms = $1 WHERE domain_id = $2 AND tenant_id = $3 \
         AND selector = $4",
    )
    .bind(now_unix_ms)
    .bind(domain_id.to_string())
    .bind(tenant_id.to_string())
    .bind(selector.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Seals private keys stored before sealing. Returns how many.
pub(super) async fn seal_existing(conn: &mut AnyConnection, sealer: &Sealer) -> StoreResult<u64> {
    let rows = sqlx::query("SELECT id, tenant_id, private_key FROM dkim_keys")
        .fetch_all(&mut *conn)
        .await?;
    let mut n = 0;
    for r in rows {
        let id: String = r.try_get("id")?;
        let tenant: String = r.try_get("tenant_id")?;
        let stored: Vec<u8> = r.try_get("private_key")?;
        if stored.starts_with(super::sealed::SEALED_BYTES_PREFIX) {
            continue;
        }
        let sealed = sealer
            .seal_bytes(conn, Some(&tenant), &private_key_aad(&id), &stored)
            .await?;
        sqlx::query("UPDATE dkim_keys SET private_key = $1 WHERE id = $2")
            .bind(sealed)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        n += 1;
    }
    Ok(n)
}
