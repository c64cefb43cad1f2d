//! `/v1/credentials`: API keys and SMTP credentials. Secrets are random, shown once (at create
//! and rotate), stored as argon2id hashes with their 8-character prefix for lookup.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use super::{audit_json, new_id, normalize_domain, ApiJson, App};
use crate::auth::{generate_key, hash_secret_async, Caller, HashCost, Permission, Role, SCOPES};
use crate::store::credentials::CredentialRow;
use crate::store::{self, StoreResult};
use crate::{ApiError, ControlError};

/// Longest credential label or SMTP username, in bytes.
pub const CREDENTIAL_NAME_MAX_BYTES: usize = 128;

/// A credential as the API shows it (never the secret or its hash).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
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
    /// When it stops working (Unix ms); then it is revoked (`credential.expire` in the audit
    /// log). Absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_ms: Option<i64>,
}

/// A credential and its secret, returned once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CredentialCreated {
    pub credential: CredentialView,
    /// The API key, or the SMTP password. Not retrievable later.
    pub secret: String,
}

impl From<CredentialRow> for CredentialView {
    /// Everything but the hash.
    fn from(c: CredentialRow) -> CredentialView {
        CredentialView {
            id: c.id,
            tenant_id: c.tenant_id,
            kind: c.kind,
            name: c.name,
            username: c.username,
            prefix: c.prefix,
            role: c.role,
            scopes: c.scopes,
            allowed_sender_domains: c.allowed_sender_domains,
            ip_allowlist: c.ip_allowlist,
            revoked: c.revoked,
            created_unix_ms: c.created_unix_ms,
            revoked_unix_ms: c.revoked_unix_ms,
            rotated_unix_ms: c.rotated_unix_ms,
            expires_unix_ms: c.expires_unix_ms,
        }
    }
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
    pub expires_unix_ms: Option<i64>,
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
            expires_unix_ms: None,
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

/// Inserts a prepared credential (inside a mutation); returns it with its secret.
pub(crate) async fn insert_credential(
    conn: &mut AnyConnection,
    p: Prepared,
    now_ms: i64,
) -> StoreResult<CredentialCreated> {
    let prefix = p.secret[..crate::auth::PREFIX_LENGTH_CHARS].to_string();
    let username = match (p.new.kind, &p.new.username) {
        ("smtp", Some(u)) => Some(u.clone()),
        ("smtp", None) => Some(format!("smtp-{}", prefix.to_ascii_lowercase())),
        _ => None,
    };
    let row = CredentialRow {
        id: p.id,
        tenant_id: p.new.tenant_id,
        kind: p.new.kind.to_string(),
        name: p.new.name,
        username,
        prefix,
        phc: p.phc,
        role: p.new.role,
        scopes: p.new.scopes,
        allowed_sender_domains: p.new.allowed_sender_domains,
        ip_allowlist: p.new.ip_allowlist,
        revoked: false,
        created_unix_ms: now_ms,
        revoked_unix_ms: None,
        rotated_unix_ms: None,
        expires_unix_ms: p.new.expires_unix_ms,
    };
    store::credentials::insert(conn, &row).await?;
    Ok(CredentialCreated {
        credential: row.into(),
        secret: p.secret,
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredential {
    /// `api` or `smtp`.
    #[schema(pattern = "^(api|smtp)$")]
    pub kind: String,
    /// 1 to 128 printable ASCII characters.
    #[schema(pattern = "^[ -~]{1,128}$")]
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
    /// When it stops working (Unix ms, in the future, at most `CREDENTIAL_EXPIRY_MAX_MS` ahead);
    /// default: never.
    #[serde(default)]
    pub expires_unix_ms: Option<i64>,
}

/// Farthest expiry a credential may be given: ten years.
pub const CREDENTIAL_EXPIRY_MAX_MS: i64 = 10 * 366 * 86_400_000;

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

fn validate(
    caller: &Caller,
    req: CreateCredential,
    now_ms: i64,
) -> Result<NewCredential, ApiError> {
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
    if let Some(at) = req.expires_unix_ms {
        if at <= now_ms || at - now_ms > CREDENTIAL_EXPIRY_MAX_MS {
            return Err(ApiError::invalid(format!(
                "expires_unix_ms must be in the future and at most {} days ahead",
                CREDENTIAL_EXPIRY_MAX_MS / 86_400_000
            )));
        }
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
        expires_unix_ms: req.expires_unix_ms,
    })
}

#[utoipa::path(
    post,
    operation_id = "credentials_create",
    path = "/v1/credentials",
    summary = "Create an API key or SMTP credential (secret shown once)",
    request_body = CreateCredential,
    responses((status = 201, body = CredentialCreated)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::CredentialsWrite.name())))
)]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateCredential>,
) -> Result<(StatusCode, Json<CredentialCreated>), ApiError> {
    let prepared = validate(&caller, req, app.now_ms())?
        .prepare(app.settings.hash_cost)
        .await?;
    let mut m = app.db.begin_mutation().await?;
    let created = insert_credential(m.conn(), prepared, app.now_ms()).await?;
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

#[utoipa::path(
    get,
    operation_id = "credentials_list",
    path = "/v1/credentials",
    summary = "List credentials",
    responses((status = 200, body = Vec<CredentialView>)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::CredentialsRead.name())))
)]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
) -> Result<Json<Vec<CredentialView>>, ApiError> {
    let rows = store::credentials::list(&mut *app.db.conn().await?, &caller.tenant_id).await?;
    Ok(Json(rows.into_iter().map(CredentialView::from).collect()))
}

#[utoipa::path(
    get,
    operation_id = "credentials_show",
    path = "/v1/credentials/{id}",
    summary = "Show a credential",
    params(("id" = String, Path, description = "The object's id")),
    responses((status = 200, body = CredentialView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::CredentialsRead.name())))
)]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    let row = store::credentials::get(&mut *app.db.conn().await?, &caller.tenant_id, &id).await?;
    Ok(Json(row.into()))
}

/// A caller may only act on credentials whose role is not above its own.
pub(crate) fn check_rank(caller: &Caller, c: &CredentialView) -> Result<(), ApiError> {
    match c.role {
        Some(r) if r > caller.role => Err(ApiError::forbidden(
            "cannot change a credential with a role above your own",
        )),
        _ => Ok(()),
    }
}

#[utoipa::path(
    post,
    operation_id = "credentials_revoke",
    path = "/v1/credentials/{id}/revoke",
    summary = "Revoke a credential",
    params(("id" = String, Path, description = "The object's id")),
    responses((status = 200, body = CredentialView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::CredentialsWrite.name())))
)]
pub async fn revoke(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    let now = app.now_ms();
    let mut m = app.db.begin_mutation().await?;
    let before: CredentialView = store::credentials::get(m.conn(), &caller.tenant_id, &id)
        .await?
        .into();
    check_rank(&caller, &before)?;
    store::credentials::revoke(m.conn(), &caller.tenant_id, &id, now).await?;
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

#[utoipa::path(
    post,
    operation_id = "credentials_rotate",
    path = "/v1/credentials/{id}/rotate",
    summary = "Replace a credential's secret (new secret shown once)",
    params(("id" = String, Path, description = "The object's id")),
    responses((status = 200, body = CredentialCreated)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::CredentialsWrite.name())))
)]
/// Replaces the secret (new prefix, new hash); the old secret stops working at once.
pub async fn rotate(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CredentialCreated>, ApiError> {
    let secret = generate_key();
    let phc = hash_secret_async(secret.clone(), app.settings.hash_cost).await?;
    let prefix = secret[..crate::auth::PREFIX_LENGTH_CHARS].to_string();
    let now = app.now_ms();
    let mut m = app.db.begin_mutation().await?;
    let before: CredentialView = store::credentials::get(m.conn(), &caller.tenant_id, &id)
        .await?
        .into();
    check_rank(&caller, &before)?;
    if before.revoked {
        return Err(ApiError::conflict("credential is revoked"));
    }
    store::credentials::set_secret(m.conn(), &caller.tenant_id, &id, &prefix, &phc, now).await?;
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
