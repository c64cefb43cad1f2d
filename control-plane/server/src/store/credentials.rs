//! The `credentials` table: API keys and SMTP credentials (argon2id hashes, never secrets).

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{conflict_on_unique, get_bool, get_list, list_json, StoreError, StoreResult};
use crate::auth::Role;

/// One `credentials` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRow {
    pub id: String,
    pub tenant_id: String,
    /// `api` or `smtp`.
    pub kind: String,
    pub name: String,
    pub username: Option<String>,
    /// The secret's first characters, unique, for lookup.
    pub prefix: String,
    /// The secret's argon2id PHC string.
    pub phc: String,
    /// None for SMTP credentials (and for a stored role this build does not know).
    pub role: Option<Role>,
    pub scopes: Vec<String>,
    pub allowed_sender_domains: Vec<String>,
    pub ip_allowlist: Vec<String>,
    pub revoked: bool,
    pub created_unix_ms: i64,
    pub revoked_unix_ms: Option<i64>,
    pub rotated_unix_ms: Option<i64>,
    /// When it stops working (the expiry task then revokes it); None: never.
    pub expires_unix_ms: Option<i64>,
}

fn decode(r: &AnyRow) -> StoreResult<CredentialRow> {
    let role: Option<String> = r.try_get("role")?;
    Ok(CredentialRow {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        kind: r.try_get("kind")?,
        name: r.try_get("name")?,
        username: r.try_get("username")?,
        prefix: r.try_get("prefix")?,
        phc: r.try_get("phc")?,
        role: role.as_deref().and_then(Role::parse),
        scopes: get_list(r, "scopes")?,
        allowed_sender_domains: get_list(r, "allowed_sender_domains")?,
        ip_allowlist: get_list(r, "ip_allowlist")?,
        revoked: get_bool(r, "revoked")?,
        created_unix_ms: r.try_get("created_unix_ms")?,
        revoked_unix_ms: r.try_get("revoked_unix_ms")?,
        rotated_unix_ms: r.try_get("rotated_unix_ms")?,
        expires_unix_ms: r.try_get("expires_unix_ms")?,
    })
}

/// Inserts a credential row.
pub async fn insert(conn: &mut AnyConnection, c: &CredentialRow) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO credentials (id, tenant_id, kind, name, username, prefix, phc, role, scopes, \
         allowed_sender_domains, ip_allowlist, revoked, created_unix_ms, revoked_unix_ms, \
         rotated_unix_ms, expires_unix_ms) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16)",
    )
    .bind(c.id.clone())
    .bind(c.tenant_id.clone())
    .bind(c.kind.clone())
    .bind(c.name.clone())
    .bind(c.username.clone())
    .bind(c.prefix.clone())
    .bind(c.phc.clone())
    .bind(c.role.map(|r| r.as_str().to_string()))
    .bind(list_json(&c.scopes))
    .bind(list_json(&c.allowed_sender_domains))
    .bind(list_json(&c.ip_allowlist))
    .bind(i64::from(c.revoked))
    .bind(c.created_unix_ms)
    .bind(c.revoked_unix_ms)
    .bind(c.rotated_unix_ms)
    .bind(c.expires_unix_ms)
    .execute(conn)
    .await
    .map_err(conflict_on_unique)?;
    Ok(())
}

/// Credential `id` of tenant `tenant_id`.
pub async fn get(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
) -> StoreResult<CredentialRow> {
    let row = sqlx::query("SELECT * FROM credentials WHERE id = $1 AND tenant_id = $2")
        .bind(id.to_string())
        .bind(tenant_id.to_string())
        .fetch_optional(conn)
        .await?
        .ok_or(StoreError::NotFound("credential"))?;
    decode(&row)
}

/// The tenant's credentials, oldest first.
pub async fn list(conn: &mut AnyConnection, tenant_id: &str) -> StoreResult<Vec<CredentialRow>> {
    sqlx::query("SELECT * FROM credentials WHERE tenant_id = $1 ORDER BY created_unix_ms, id")
        .bind(tenant_id.to_string())
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Every tenant's credentials, by id (the snapshot).
pub async fn list_all(conn: &mut AnyConnection) -> StoreResult<Vec<CredentialRow>> {
    sqlx::query("SELECT * FROM credentials ORDER BY id")
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Marks a credential of the tenant revoked.
pub async fn revoke(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
    now_unix_ms: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE credentials SET revoked = 1, revoked_unix_ms = $1 WHERE id = $2 AND tenant_id = $3",
    )
    .bind(now_unix_ms)
    .bind(id.to_string())
    .bind(tenant_id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets a credential's role and scopes.
pub async fn set_role_and_scopes(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
    role: Option<crate::auth::Role>,
    scopes: &[String],
) -> StoreResult<()> {
    sqlx::query("UPDATE credentials SET role = $1, scopes = $2 WHERE id = $3 AND tenant_id = $4")
        .bind(role.map(|r| r.as_str().to_string()))
        .bind(list_json(scopes))
        .bind(id.to_string())
        .bind(tenant_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Replaces a credential's secret (its prefix and hash).
pub async fn set_secret(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
    prefix: &str,
    phc: &str,
    now_unix_ms: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE credentials SET prefix = $1, phc = $2, rotated_unix_ms = $3 \
         WHERE id = $4 AND tenant_id = $5",
    )
    .bind(prefix.to_string())
    .bind(phc.to_string())
    .bind(now_unix_ms)
    .bind(id.to_string())
    .bind(tenant_id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// The username of the tenant's oldest unrevoked SMTP credential named `name`, if any
/// (`Some(None)`: found, without a username).
pub async fn smtp_username_by_name(
    conn: &mut AnyConnection,
    tenant_id: &str,
    name: &str,
) -> StoreResult<Option<Option<String>>> {
    let row = sqlx::query(
        "SELECT username FROM credentials WHERE tenant_id = $1 AND kind = 'smtp' \
         AND name = $2 AND revoked = 0 ORDER BY created_unix_ms LIMIT 1",
    )
    .bind(tenant_id.to_string())
    .bind(name.to_string())
    .fetch_optional(conn)
    .await?;
    row.map(|r| r.try_get::<Option<String>, _>("username"))
        .transpose()
        .map_err(StoreError::from)
}

/// An API key row joined with what its tenant adds to the check.
#[derive(Debug, Clone)]
pub struct ApiKeyRow {
    pub id: String,
    pub tenant_id: String,
    pub phc: String,
    /// The stored role name as is: the caller refuses a key without a valid one.
    pub role: Option<String>,
    pub scopes: Vec<String>,
    pub ip_allowlist: Vec<String>,
    pub revoked: bool,
    pub expires_unix_ms: Option<i64>,
    pub tenant_suspended: bool,
    pub tenant_is_operator: bool,
}

/// The API key whose prefix is `prefix` (prefixes are unique), for authentication. Not scoped to
/// a tenant: this is what finds the caller's tenant.
pub async fn api_key_by_prefix(
    conn: &mut AnyConnection,
    prefix: &str,
) -> StoreResult<Option<ApiKeyRow>> {
    let row = sqlx::query(
        "SELECT c.id, c.tenant_id, c.phc, c.role, c.scopes, c.ip_allowlist, c.revoked, \
         c.expires_unix_ms, t.suspended, t.is_operator FROM credentials c JOIN tenants t ON t.id = c.tenant_id \
         WHERE c.prefix = $1 AND c.kind = 'api'",
    )
    .bind(prefix.to_string())
    .fetch_optional(conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(ApiKeyRow {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        phc: r.try_get("phc")?,
        role: r.try_get("role")?,
        scopes: get_list(&r, "scopes")?,
        ip_allowlist: get_list(&r, "ip_allowlist")?,
        revoked: get_bool(&r, "revoked")?,
        expires_unix_ms: r.try_get("expires_unix_ms")?,
        tenant_suspended: get_bool(&r, "suspended")?,
        tenant_is_operator: get_bool(&r, "is_operator")?,
    }))
}

/// Unrevoked credentials whose expiry is at or before `now_unix_ms`, oldest expiry first, at
/// most `limit`.
pub async fn expired(
    conn: &mut AnyConnection,
    now_unix_ms: i64,
    limit: i64,
) -> StoreResult<Vec<CredentialRow>> {
    sqlx::query(
        "SELECT * FROM credentials WHERE revoked = 0 AND expires_unix_ms IS NOT NULL \
         AND expires_unix_ms <= $1 ORDER BY expires_unix_ms LIMIT $2",
    )
    .bind(now_unix_ms)
    .bind(limit)
    .fetch_all(conn)
    .await?
    .iter()
    .map(decode)
    .collect()
}
