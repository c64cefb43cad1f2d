//! Builds a [`PolicySnapshot`] from the store: every tenant, every sending domain with its
//! listed DKIM private keys, every credential (argon2 hashes only), destination limits and
//! defaults, read in one transaction so the version matches the content.

use petrel_policy::{
    Credential, CredentialKind, DestinationLimit, DkimKey, PolicySnapshot, SendingDomain, Tenant,
};
use sqlx::Row;

use crate::api::parse_algorithm;
use crate::store::{get_bool, get_list, get_opt_u64, Db, Dialect};
use crate::ControlError;

fn u32_sat(v: Option<u64>) -> Option<u32> {
    v.map(|x| u32::try_from(x).unwrap_or(u32::MAX))
}

fn corrupt(what: &str) -> ControlError {
    ControlError::Corrupt(what.to_string())
}

/// Reads the snapshot. `dkim_grace_ms`: how long retired keys stay in it.
pub async fn build(
    db: &Db,
    now_ms: i64,
    dkim_grace_ms: i64,
) -> Result<PolicySnapshot, ControlError> {
    let mut tx = db.pool.begin().await?;
    if db.dialect == Dialect::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
    }
    let meta = sqlx::query("SELECT policy_version, defaults_json FROM petrel_meta WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    let version = u64::try_from(meta.try_get::<i64, _>("policy_version")?).unwrap_or(0);
    let defaults_text: String = meta.try_get("defaults_json")?;
    let defaults = serde_json::from_str(&defaults_text)
        .map_err(|e| ControlError::Corrupt(format!("defaults_json: {e}")))?;

    let tenants = sqlx::query("SELECT * FROM tenants ORDER BY id")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok(Tenant {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                suspended: get_bool(r, "suspended")?,
                messages_per_second_max: u32_sat(get_opt_u64(r, "messages_per_second_max")?),
                messages_per_day_max: get_opt_u64(r, "messages_per_day_max")?,
                allow_unverified_domains: get_bool(r, "allow_unverified_domains")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;

    let key_rows = sqlx::query(
        "SELECT domain_id, selector, algorithm, private_key, activated_unix_ms, retired_unix_ms \
         FROM dkim_keys WHERE retired_unix_ms IS NULL OR retired_unix_ms > $1 \
         ORDER BY domain_id, created_unix_ms, id",
    )
    .bind(now_ms.saturating_sub(dkim_grace_ms))
    .fetch_all(&mut *tx)
    .await?;
    let mut keys: std::collections::HashMap<String, Vec<DkimKey>> = Default::default();
    for r in &key_rows {
        let alg: String = r.try_get("algorithm")?;
        let activated: Option<i64> = r.try_get("activated_unix_ms")?;
        let retired: Option<i64> = r.try_get("retired_unix_ms")?;
        keys.entry(r.try_get("domain_id")?)
            .or_default()
            .push(DkimKey {
                selector: r.try_get("selector")?,
                algorithm: parse_algorithm(&alg).ok_or_else(|| corrupt("dkim algorithm"))?,
                private_key_pkcs8_der: r.try_get("private_key")?,
                // Pending keys (record not yet seen) never sign.
                active_from_unix_ms: activated
                    .and_then(|t| u64::try_from(t).ok())
                    .unwrap_or(u64::MAX),
                retired: retired.is_some(),
            });
    }
    let domains = sqlx::query("SELECT * FROM domains ORDER BY name")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            let id: String = r.try_get("id")?;
            Ok(SendingDomain {
                tenant_id: r.try_get("tenant_id")?,
                name: r.try_get("name")?,
                verified: get_bool(r, "verified")? || get_bool(r, "verified_loopback")?,
                messages_per_second_max: u32_sat(get_opt_u64(r, "messages_per_second_max")?),
                dkim_keys: keys.remove(&id).unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;

    let mut credentials = Vec::new();
    for r in sqlx::query("SELECT * FROM credentials ORDER BY id")
        .fetch_all(&mut *tx)
        .await?
        .iter()
    {
        let kind: String = r.try_get("kind")?;
        let username: Option<String> = r.try_get("username")?;
        credentials.push(Credential {
            id: r.try_get("id")?,
            tenant_id: r.try_get("tenant_id")?,
            kind: if kind == "smtp" {
                CredentialKind::Smtp
            } else {
                CredentialKind::Api
            },
            username: username.unwrap_or_default(),
            prefix: r.try_get("prefix")?,
            argon2_phc: r.try_get("phc")?,
            scopes: get_list(r, "scopes")?,
            allowed_sender_domains: get_list(r, "allowed_sender_domains")?,
            ip_allowlist: get_list(r, "ip_allowlist")?,
            revoked: get_bool(r, "revoked")?,
        });
    }

    let destination_limits = sqlx::query("SELECT * FROM destination_limits ORDER BY domain")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok(DestinationLimit {
                domain: r.try_get("domain")?,
                connections_max: u32_sat(get_opt_u64(r, "connections_max")?),
                messages_per_second_max: u32_sat(get_opt_u64(r, "messages_per_second_max")?),
                tls_required: get_bool(r, "tls_required")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    tx.commit().await?;

    Ok(PolicySnapshot {
        version,
        generated_unix_ms: u64::try_from(now_ms).unwrap_or(0),
        tenants,
        domains,
        credentials,
        destination_limits,
        defaults,
    })
}
