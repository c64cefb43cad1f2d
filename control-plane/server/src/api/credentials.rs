//! `/v1/credentials`: API keys and SMTP credentials. Secrets are random, shown once (at create
//! and rotate), stored as argon2id hashes with their 8-character prefix for lookup.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{audit_json, new_id, normalize_domain, ApiJson, App};
use crate::auth::{generate_key, hash_secret_async, Caller, HashCost, Permission, Role, SCOPES};
use crate::store::{get_bool, get_list};
use crate::{ApiError, ControlError};

/// Longest credential label or SMTP username, in bytes.
pub const CREDENTIAL_NAME_MAX_BYTES: usize = 128;

/// A credential as the API shows it (never the secret or its hash).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CredentialView {
    pub id: String,
    pub tenant_id: String,
    /// `api` or `smtp`.
    pub kind: String,
    pub name: String,
    /// SMTP username (SMTP credentials only).
    pub username: Option<String>,
    /// The secret's first 8 characters.
    pub prefix: String,
    /// Admin API role (API keys only).
    pub role: Option<Role>,
    pub scopes: Vec<String>,
    pub allowed_sender_domains: Vec<String>,
    pub ip_allowlist: Vec<String>,
    pub revoked: bool,
    pub created_unix_ms: i64,
    pub revoked_unix_ms: Option<i64>,
    pub rotated_unix_ms: Option<i64>,
}

/// A credential and its secret, returned once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialCreated {
    pub credential: CredentialView,
    /// The API key, or the SMTP password. Not retrievable later.
    pub secret: String,
}

pub(crate) fn credential_from(r: &AnyRow) -> Result<CredentialView, ControlError> {
    let role: Option<String> = r.try_get("role")?;
    Ok(CredentialView {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        kind: r.try_get("kind")?,
        name: r.try_get("name")?,
        username: r.try_get("username")?,
        prefix: r.try_get("prefix")?,
        role: role.as_deref().and_then(Role::parse),
        scopes: get_list(r, "scopes")?,
        allowed_sender_domains: get_list(r, "allowed_sender_domains")?,
        ip_allowlist: get_list(r, "ip_allowlist")?,
        revoked: get_bool(r, "revoked")?,
        created_unix_ms: r.try_get("created_unix_ms")?,
        revoked_unix_ms: r.try_get("revoked_unix_ms")?,
        rotated_unix_ms: r.try_get("rotated_unix_ms")?,
    })
}

/// What to create; [`NewCredential::prepare`] draws the secret and hashes it.
#[derive(Debug, Clone)]
pub struct NewCredential {
    pub tenant_id: String,
    pub kind: &'static str,
    pub name: String,
    pub username: Option<String>,
    pub role: Option<Role>,
    pub scopes: Vec<String>,
    pub allowed_sender_domains: Vec<String>,
    pub ip_allowlist: Vec<String>,
}

/// A credential with its secret drawn and hashed, ready to insert.
pub struct Prepared {
    new: NewCredential,
    id: String,
    secret: String,
    phc: String,
}

impl NewCredential {
    pub fn api_key(tenant_id: &str, name: &str, role: Role) -> NewCredential {
        NewCredential {
            tenant_id: tenant_id.to_string(),
            kind: "api",
            name: name.to_string(),
            username: None,
            role: Some(role),
            scopes: default_scopes("api", role),
            allowed_sender_domains: Vec::new(),
            ip_allowlist: Vec::new(),
        }
    }

    pub async fn prepare(self, cost: HashCost) -> Result<Prepared, ControlError> {
        let secret = generate_key();
        let phc = hash_secret_async(secret.clone(), cost).await?;
        Ok(Prepared {
            new: self,
            id: new_id("cred"),
            secret,
            phc,
        })
    }
}

fn default_scopes(kind: &str, role: Role) -> Vec<String> {
    let s: &[&str] = match (kind, role) {
        ("smtp", _) => &["send"],
        (_, Role::Viewer) => &["read"],
        _ => &["read", "admin"],
    };
    s.iter().map(|x| x.to_string()).collect()
}

fn json_list(v: &[String]) -> String {
    serde_json::Value::from(v.to_vec()).to_string()
}

/// Inserts a prepared credential (inside a mutation).
pub(crate) async fn insert_credential(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    p: Prepared,
    now_ms: i64,
) -> Result<CredentialCreated, ControlError> {
    let prefix = p.secret[..crate::auth::PREFIX_LENGTH_CHARS].to_string();
    let username = match (p.new.kind, &p.new.username) {
        ("smtp", Some(u)) => Some(u.clone()),
        ("smtp", None) => Some(format!("smtp-{}", prefix.to_ascii_lowercase())),
        _ => None,
    };
    sqlx::query(
        "INSERT INTO credentials (id, tenant_id, kind, name, username, prefix, phc, role, scopes, \
         allowed_sender_domains, ip_allowlist, revoked, created_unix_ms) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,0,$12)",
    )
    .bind(p.id.clone())
    .bind(p.new.tenant_id.clone())
    .bind(p.new.kind)
    .bind(p.new.name.clone())
    .bind(username.clone())
    .bind(prefix.clone())
    .bind(p.phc)
    .bind(p.new.role.map(|r| r.as_str().to_string()))
    .bind(json_list(&p.new.scopes))
    .bind(json_list(&p.new.allowed_sender_domains))
    .bind(json_list(&p.new.ip_allowlist))
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(CredentialCreated {
        credential: CredentialView {
            id: p.id,
            tenant_id: p.new.tenant_id,
            kind: p.new.kind.to_string(),
            name: p.new.name,
            username,
            prefix,
            role: p.new.role,
            scopes: p.new.scopes,
            allowed_sender_domains: p.new.allowed_sender_domains,
            ip_allowlist: p.new.ip_allowlist,
            revoked: false,
            created_unix_ms: now_ms,
            revoked_unix_ms: None,
            rotated_unix_ms: None,
        },
        secret: p.secret,
    })
}

pub(crate) async fn fetch_credential<'e, E>(
    ex: E,
    tenant_id: &str,
    id: &str,
) -> Result<CredentialView, ApiError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query("SELECT * FROM credentials WHERE id = $1 AND tenant_id = $2")
        .bind(id.to_string())
        .bind(tenant_id.to_string())
        .fetch_optional(ex)
        .await?
        .ok_or_else(|| ApiError::not_found("credential"))?;
    Ok(credential_from(&row)?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCredential {
    /// `api` or `smtp`.
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_sender_domains: Vec<String>,
    #[serde(default)]
    pub ip_allowlist: Vec<String>,
}

fn check_name(what: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= CREDENTIAL_NAME_MAX_BYTES
        && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{what} must be 1..={CREDENTIAL_NAME_MAX_BYTES} printable ASCII characters"
        )))
    }
}

fn validate(caller: &Caller, req: CreateCredential) -> Result<NewCredential, ApiError> {
    use petrel_policy::snapshot::{
        ALLOWED_SENDER_DOMAINS_MAX, IP_ALLOWLIST_ENTRIES_MAX, SCOPES_MAX,
    };
    let kind: &'static str = match req.kind.as_str() {
        "api" => "api",
        "smtp" => "smtp",
        _ => return Err(ApiError::invalid("kind must be \"api\" or \"smtp\"")),
    };
    check_name("name", &req.name)?;
    let role = match kind {
        "api" => {
            let role = req.role.unwrap_or(Role::Viewer);
            if role > caller.role {
                return Err(ApiError::forbidden("cannot grant a role above your own"));
            }
            if role == Role::Owner && !caller.is_operator {
                return Err(ApiError::invalid(
                    "the owner role exists only in the operator tenant",
                ));
            }
            Some(role)
        }
        _ => None,
    };
    if let Some(u) = &req.username {
        if kind != "smtp" {
            return Err(ApiError::invalid("username is for SMTP credentials"));
        }
        check_name("username", u)?;
        if u.contains(' ') {
            return Err(ApiError::invalid("username must not contain spaces"));
        }
    }
    let scopes = req
        .scopes
        .unwrap_or_else(|| default_scopes(kind, role.unwrap_or(Role::Viewer)));
    if scopes.len() > SCOPES_MAX || scopes.iter().any(|s| !SCOPES.contains(&s.as_str())) {
        return Err(ApiError::invalid(format!(
            "scopes must be among {SCOPES:?}"
        )));
    }
    if req.allowed_sender_domains.len() > ALLOWED_SENDER_DOMAINS_MAX
        || req.ip_allowlist.len() > IP_ALLOWLIST_ENTRIES_MAX
    {
        return Err(ApiError::invalid(
            "too many allowed sender domains or addresses",
        ));
    }
    let allowed_sender_domains = req
        .allowed_sender_domains
        .iter()
        .map(|d| normalize_domain(d))
        .collect::<Result<Vec<_>, _>>()?;
    for c in &req.ip_allowlist {
        petrel_policy::snapshot::parse_cidr(c)
            .map_err(|_| ApiError::invalid(format!("not a CIDR: {c:?}")))?;
    }
    Ok(NewCredential {
        tenant_id: caller.tenant_id.clone(),
        kind,
        name: req.name,
        username: req.username,
        role,
        scopes,
        allowed_sender_domains,
        ip_allowlist: req.ip_allowlist,
    })
}

pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateCredential>,
) -> Result<(StatusCode, Json<CredentialCreated>), ApiError> {
    caller.require(Permission::CredentialsWrite)?;
    let prepared = validate(&caller, req)?
        .prepare(app.settings.hash_cost)
        .await?;
    let mut m = app.db.begin_mutation().await?;
    let created = insert_credential(&mut m.tx, prepared, app.now_ms()).await?;
    let entry = app.entry(
        &caller,
        Some(&caller.tenant_id),
        "credential.create",
        &created.credential.id,
        None,
        audit_json(&created.credential),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn list(
    State(app): State<App>,
    caller: Caller,
) -> Result<Json<Vec<CredentialView>>, ApiError> {
    caller.require(Permission::CredentialsRead)?;
    let rows =
        sqlx::query("SELECT * FROM credentials WHERE tenant_id = $1 ORDER BY created_unix_ms, id")
            .bind(caller.tenant_id.clone())
            .fetch_all(&app.db.pool)
            .await?;
    let list = rows.iter().map(credential_from).collect::<Result<_, _>>()?;
    Ok(Json(list))
}

pub async fn show(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    caller.require(Permission::CredentialsRead)?;
    Ok(Json(
        fetch_credential(&app.db.pool, &caller.tenant_id, &id).await?,
    ))
}

/// A caller may only act on credentials whose role is not above its own.
fn check_rank(caller: &Caller, c: &CredentialView) -> Result<(), ApiError> {
    match c.role {
        Some(r) if r > caller.role => Err(ApiError::forbidden(
            "cannot change a credential with a role above your own",
        )),
        _ => Ok(()),
    }
}

pub async fn revoke(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    caller.require(Permission::CredentialsWrite)?;
    let now = app.now_ms();
    let mut m = app.db.begin_mutation().await?;
    let before = fetch_credential(&mut *m.tx, &caller.tenant_id, &id).await?;
    check_rank(&caller, &before)?;
    sqlx::query(
        "UPDATE credentials SET revoked = 1, revoked_unix_ms = $1 WHERE id = $2 AND tenant_id = $3",
    )
    .bind(now)
    .bind(id.clone())
    .bind(caller.tenant_id.clone())
    .execute(&mut *m.tx)
    .await?;
    let after = CredentialView {
        revoked: true,
        revoked_unix_ms: Some(now),
        ..before.clone()
    };
    let entry = app.entry(
        &caller,
        Some(&caller.tenant_id),
        "credential.revoke",
        &id,
        audit_json(&before),
        audit_json(&after),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(after))
}

/// Replaces the secret (new prefix, new hash); the old secret stops working at once.
pub async fn rotate(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CredentialCreated>, ApiError> {
    caller.require(Permission::CredentialsWrite)?;
    let secret = generate_key();
    let phc = hash_secret_async(secret.clone(), app.settings.hash_cost).await?;
    let prefix = secret[..crate::auth::PREFIX_LENGTH_CHARS].to_string();
    let now = app.now_ms();
    let mut m = app.db.begin_mutation().await?;
    let before = fetch_credential(&mut *m.tx, &caller.tenant_id, &id).await?;
    check_rank(&caller, &before)?;
    if before.revoked {
        return Err(ApiError::conflict("credential is revoked"));
    }
    sqlx::query(
        "UPDATE credentials SET prefix = $1, phc = $2, rotated_unix_ms = $3 \
         WHERE id = $4 AND tenant_id = $5",
    )
    .bind(prefix.clone())
    .bind(phc)
    .bind(now)
    .bind(id.clone())
    .bind(caller.tenant_id.clone())
    .execute(&mut *m.tx)
    .await?;
    let after = CredentialView {
        prefix,
        rotated_unix_ms: Some(now),
        ..before.clone()
    };
    let entry = app.entry(
        &caller,
        Some(&caller.tenant_id),
        "credential.rotate",
        &id,
        audit_json(&before),
        audit_json(&after),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(Json(CredentialCreated {
        credential: after,
        secret,
    }))
}
