//! Who may call what: roles, the permission table, API key checks, the verification cache and
//! the failed-authentication throttle.
//!
//! A key is 40 characters of `[A-Za-z0-9]`; its first 8 are the *prefix*, stored in clear and
//! unique, used to find the row; the whole key is checked against the row's argon2id hash. A
//! successful check is cached in memory under HMAC-SHA256(process secret, key) together with the
//! PHC string it matched, so a rotated or revoked key misses the cache at once (the row is read
//! on every call; only the argon2 work is skipped). Plaintext keys are never stored.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{PasswordHasher, PasswordVerifier};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::api::App;
use crate::{ApiError, ControlError};

/// Length of a generated key or password, in characters.
pub const KEY_LENGTH_CHARS: usize = 40;
/// Length of the lookup prefix (the key's first characters).
pub const PREFIX_LENGTH_CHARS: usize = 8;
/// Failed authentications allowed from one address per window before 429.
pub const AUTH_FAILURES_PER_WINDOW_MAX: u32 = 10;
/// The throttle window.
pub const AUTH_FAILURE_WINDOW_SECS: u64 = 60;
/// Successful verifications remembered; past this the cache starts over.
pub const AUTH_CACHE_ENTRIES_MAX: usize = 10_000;

/// Roles, weakest first; `Ord` follows strength.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Developer,
    Admin,
    /// Only in the operator tenant: manages tenants and global settings.
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// See one's own tenant record.
    TenantRead,
    /// Create, list, show and suspend any tenant; set tenant quotas.
    TenantsManage,
    DomainsRead,
    /// Add, verify, rotate, delete sending domains.
    DomainsWrite,
    CredentialsRead,
    /// Create, revoke, rotate API keys and SMTP credentials (never above one's own role).
    CredentialsWrite,
    LimitsRead,
    /// Per sending domain limits of one's tenant.
    LimitsWrite,
    /// Destination limits and defaults (shared by all tenants), and the shaping overlay.
    GlobalLimitsWrite,
    /// Operator-wide settings only the operator sees: the provider shaping limits pushed to
    /// every engine (`GET /v1/shaping/providers`).
    GlobalLimitsRead,
    /// One's tenant's audit rows (owners: all rows).
    AuditRead,
    /// Walk the whole audit chain.
    AuditVerify,
    /// Connected engines and their applied versions.
    EnginesRead,
    /// Give an engine its own identity (token), or revoke it (operator owners).
    EnginesManage,
    /// Delivery events and message timelines of one's tenant (owners: any tenant).
    EventsRead,
    /// Delivery counts and rates of one's tenant.
    StatsRead,
    /// One's tenant's webhooks and their delivery history.
    WebhooksRead,
    /// Create, delete, rotate, enable and test one's tenant's webhooks.
    WebhooksWrite,
    /// Search and export one's tenant's suppression list (owners: any, and the operator's).
    SuppressionsRead,
    /// Add, import and remove entries of one's tenant's suppression list.
    SuppressionsWrite,
    /// Export one's whole tenant as one archive, and fetch it (owners: any tenant).
    TenantExport,
}

impl Permission {
    /// Every permission, in declaration order.
    pub const ALL: [Permission; 21] = [
        Permission::TenantRead,
        Permission::TenantsManage,
        Permission::DomainsRead,
        Permission::DomainsWrite,
        Permission::CredentialsRead,
        Permission::CredentialsWrite,
        Permission::LimitsRead,
        Permission::LimitsWrite,
        Permission::GlobalLimitsWrite,
        Permission::GlobalLimitsRead,
        Permission::AuditRead,
        Permission::AuditVerify,
        Permission::EnginesRead,
        Permission::EnginesManage,
        Permission::EventsRead,
        Permission::StatsRead,
        Permission::WebhooksRead,
        Permission::WebhooksWrite,
        Permission::SuppressionsRead,
        Permission::SuppressionsWrite,
        Permission::TenantExport,
    ];

    /// The variant's name, as routes declare it (`x-permission` in the OpenAPI document).
    pub fn name(self) -> &'static str {
        match self {
            Permission::TenantRead => "TenantRead",
            Permission::TenantsManage => "TenantsManage",
            Permission::DomainsRead => "DomainsRead",
            Permission::DomainsWrite => "DomainsWrite",
            Permission::CredentialsRead => "CredentialsRead",
            Permission::CredentialsWrite => "CredentialsWrite",
            Permission::LimitsRead => "LimitsRead",
            Permission::LimitsWrite => "LimitsWrite",
            Permission::GlobalLimitsWrite => "GlobalLimitsWrite",
            Permission::GlobalLimitsRead => "GlobalLimitsRead",
            Permission::AuditRead => "AuditRead",
            Permission::AuditVerify => "AuditVerify",
            Permission::EnginesRead => "EnginesRead",
            Permission::EnginesManage => "EnginesManage",
            Permission::EventsRead => "EventsRead",
            Permission::StatsRead => "StatsRead",
            Permission::WebhooksRead => "WebhooksRead",
            Permission::WebhooksWrite => "WebhooksWrite",
            Permission::SuppressionsRead => "SuppressionsRead",
            Permission::SuppressionsWrite => "SuppressionsWrite",
            Permission::TenantExport => "TenantExport",
        }
    }

    /// The permission named `name` (see [`Permission::name`]).
    pub fn from_name(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Writes need the key's `admin` scope; reads need `read` or `admin`.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Permission::TenantsManage
                | Permission::DomainsWrite
                | Permission::CredentialsWrite
                | Permission::LimitsWrite
                | Permission::GlobalLimitsWrite
                | Permission::EnginesManage
                | Permission::WebhooksWrite
                | Permission::SuppressionsWrite
                // An export takes the tenant's whole data set and replaces the last archive.
                | Permission::TenantExport
        )
    }
}

use Permission as P;
/// The permission table. Each role has everything the weaker roles have, plus its row.
pub const PERMISSIONS: &[(Role, &[Permission])] = &[
    (
        Role::Viewer,
        &[
            P::TenantRead,
            P::DomainsRead,
            P::CredentialsRead,
            P::LimitsRead,
            P::EventsRead,
            P::StatsRead,
            P::WebhooksRead,
            P::SuppressionsRead,
        ],
    ),
    (
        Role::Developer,
        &[
            P::DomainsWrite,
            P::CredentialsWrite,
            P::WebhooksWrite,
            P::SuppressionsWrite,
        ],
    ),
    (
        Role::Admin,
        &[P::LimitsWrite, P::AuditRead, P::TenantExport],
    ),
    (
        Role::Owner,
        &[
            P::TenantsManage,
            P::GlobalLimitsWrite,
            P::GlobalLimitsRead,
            P::AuditVerify,
            P::EnginesRead,
            P::EnginesManage,
        ],
    ),
];

/// True when `role` (with its inherited rows) grants `p`.
pub fn role_allows(role: Role, p: Permission) -> bool {
    PERMISSIONS
        .iter()
        .filter(|(r, _)| *r <= role)
        .any(|(_, ps)| ps.contains(&p))
}

/// Scopes a credential may carry.
pub const SCOPES: &[&str] = &["send", "read", "admin"];

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant_id: String,
    pub credential_id: String,
    pub prefix: String,
    pub role: Role,
    pub scopes: Vec<String>,
    /// The caller's tenant is the operator tenant.
    pub is_operator: bool,
    pub remote: IpAddr,
}

impl Caller {
    /// 403 unless role and scopes grant `p`.
    pub fn require(&self, p: Permission) -> Result<(), ApiError> {
        if !role_allows(self.role, p) {
            return Err(ApiError::forbidden(format!(
                "role {} may not do this",
                self.role.as_str()
            )));
        }
        let scoped = if p.is_write() {
            self.scopes.iter().any(|s| s == "admin")
        } else {
            self.scopes.iter().any(|s| s == "admin" || s == "read")
        };
        if !scoped {
            return Err(ApiError::forbidden("the key lacks the scope for this"));
        }
        Ok(())
    }
    /// The audit `actor`.
    pub fn actor(&self) -> String {
        format!("key:{}", self.prefix)
    }
}

/// A new random key: 40 alphanumerics, the first 8 being the prefix.
pub fn generate_key() -> String {
    let mut rng = rand::thread_rng();
    (0..KEY_LENGTH_CHARS)
        .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
        .collect()
}

/// argon2id cost. The default is OWASP's (19 MiB, 2 passes); tests may lower it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        HashCost {
            memory_kib: argon2::Params::DEFAULT_M_COST,
            iterations: argon2::Params::DEFAULT_T_COST,
        }
    }
}

/// Hashes a secret into an argon2id PHC string (CPU-heavy: call from `spawn_blocking`).
pub fn hash_secret(secret: &str, cost: HashCost) -> Result<String, ControlError> {
    let params = argon2::Params::new(cost.memory_kib, cost.iterations, 1, None)
        .map_err(|e| ControlError::Config(format!("argon2 params: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::generate(&mut OsRng);
    argon
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ControlError::Config(format!("argon2: {e}")))
}

/// Async wrapper of [`hash_secret`] off the runtime threads.
pub async fn hash_secret_async(secret: String, cost: HashCost) -> Result<String, ControlError> {
    tokio::task::spawn_blocking(move || hash_secret(&secret, cost))
        .await
        .map_err(|e| ControlError::Config(format!("hash task: {e}")))?
}

/// True when `secret` matches the argon2id PHC string (CPU-heavy: call from `spawn_blocking`).
pub fn verify_secret(secret: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => argon2::Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// The failed-authentication throttle of the admin API: [`AUTH_FAILURES_PER_WINDOW_MAX`] per
/// [`AUTH_FAILURE_WINDOW_SECS`] per address.
pub type Throttle = petrel_policy::auth::FailureThrottle;

/// The admin API's throttle.
pub fn api_throttle() -> Throttle {
    Throttle::new(AUTH_FAILURES_PER_WINDOW_MAX, AUTH_FAILURE_WINDOW_SECS)
}

/// Successful verifications: keyed hash of the key -> the PHC it matched.
#[derive(Debug)]
pub struct VerifyCache {
    secret: [u8; 32],
    entries: Mutex<HashMap<[u8; 32], String>>,
}

impl Default for VerifyCache {
    fn default() -> Self {
        VerifyCache {
            secret: rand::random(),
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl VerifyCache {
    fn key(&self, token: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().into()
    }
    fn hit(&self, k: &[u8; 32], phc: &str) -> bool {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(k).is_some_and(|cached| cached == phc)
    }
    fn insert(&self, k: [u8; 32], phc: String) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= AUTH_CACHE_ENTRIES_MAX {
            map.clear();
        }
        map.insert(k, phc);
    }
}

/// True when `ip` is inside one of the CIDRs (empty list: any address).
pub fn ip_allowed(list: &[String], ip: IpAddr) -> bool {
    list.is_empty()
        || list.iter().any(|c| {
            petrel_policy::snapshot::parse_cidr(c)
                .map(|net| net.contains(&ip))
                .unwrap_or(false)
        })
}

/// A caller the route gate ([`crate::api::routes`]) authenticated and found to hold the route's
/// declared permission; handlers receive it as their [`Caller`].
#[derive(Debug, Clone)]
pub(crate) struct Authorized(pub(crate) Caller);

/// Handlers take a `Caller` only from the route gate: a route without a declared permission
/// cannot obtain one, so it cannot act for anybody (fails closed with 500).
impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _app: &App) -> Result<Caller, ApiError> {
        parts
            .extensions
            .get::<Authorized>()
            .map(|a| a.0.clone())
            .ok_or_else(|| ApiError::internal("route declares no permission"))
    }
}

impl Caller {
    /// Authenticates the bearer key of a request (401, or 429 when the address failed too
    /// often). The permission check is [`Caller::require`], made by the route gate.
    pub(crate) async fn authenticate(parts: &Parts, app: &App) -> Result<Caller, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let forwarded_for = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let remote =
            crate::client_addr::client_ip(peer, forwarded_for, &app.settings.api_trusted_proxies);
        let now_secs = u64::try_from(app.clock.now_unix_ms() / 1000).unwrap_or(0);
        app.throttle
            .check(remote, now_secs)
            .map_err(ApiError::too_many)?;
        let fail = |msg: &'static str| {
            app.throttle.record_failure(remote, now_secs);
            app.auth_failures.note(remote, app.now_ms(), msg);
            ApiError::unauthorized(msg)
        };
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            // No key is not a guess at one: it does not count towards the throttle.
            .ok_or_else(|| ApiError::unauthorized("missing bearer key"))?;
        if token.len() != KEY_LENGTH_CHARS || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(fail("invalid key"));
        }
        let prefix = &token[..PREFIX_LENGTH_CHARS];
        let row = {
            let mut conn = app.db.conn().await?;
            crate::store::credentials::api_key_by_prefix(&mut conn, prefix).await?
        };
        let Some(row) = row else {
            // As long as a wrong key with a known prefix takes: the time of a refusal does not
            // tell which prefixes exist.
            let t = token.to_string();
            let _ =
                tokio::task::spawn_blocking(move || petrel_policy::auth::equalize_refusal_time(&t))
                    .await;
            return Err(fail("invalid key"));
        };
        let phc = row.phc.clone();
        let cache_key = app.verify_cache.key(token);
        if !app.verify_cache.hit(&cache_key, &phc) {
            let (t, p) = (token.to_string(), phc.clone());
            let ok = tokio::task::spawn_blocking(move || verify_secret(&t, &p))
                .await
                .unwrap_or(false);
            if !ok {
                return Err(fail("invalid key"));
            }
            app.verify_cache.insert(cache_key, phc);
        }
        if row.revoked {
            return Err(fail("key revoked"));
        }
        // Expired keys fail at once; the expiry task also revokes them (audited).
        if row.expires_unix_ms.is_some_and(|at| at <= app.now_ms()) {
            return Err(fail("key expired"));
        }
        if !ip_allowed(&row.ip_allowlist, remote) {
            return Err(ApiError::forbidden(
                "this key may not be used from this address",
            ));
        }
        if row.tenant_suspended {
            return Err(ApiError::forbidden("tenant suspended"));
        }
        let role = row
            .role
            .as_deref()
            .and_then(Role::parse)
            .ok_or_else(|| ApiError::internal("key has no valid role"))?;
        Ok(Caller {
            tenant_id: row.tenant_id,
            credential_id: row.id,
            prefix: prefix.to_string(),
            role,
            scopes: row.scopes,
            is_operator: row.tenant_is_operator,
            remote,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::from_name(p.name()), Some(p));
            assert_eq!(p.name(), format!("{p:?}"), "the name is the variant's");
        }
        assert_eq!(Permission::from_name("domainswrite"), None);
    }

    #[test]
    fn api_throttle_blocks_after_ten_failures_for_a_minute() {
        let t = api_throttle();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        for _ in 0..AUTH_FAILURES_PER_WINDOW_MAX {
            assert!(t.check(ip, 1_000).is_ok());
            t.record_failure(ip, 1_000);
        }
        assert_eq!(t.check(ip, 1_000), Err(AUTH_FAILURE_WINDOW_SECS));
        assert!(t.check(ip, 1_000 + AUTH_FAILURE_WINDOW_SECS).is_ok());
    }

    #[test]
    fn keys_hash_and_verify() {
        let key = generate_key();
        assert_eq!(key.len(), KEY_LENGTH_CHARS);
        assert!(key.bytes().all(|b| b.is_ascii_alphanumeric()));
        let cheap = HashCost {
            memory_kib: 64,
            iterations: 1,
        };
        let phc = hash_secret(&key, cheap).expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(verify_secret(&key, &phc));
        assert!(!verify_secret("wrong", &phc));
        assert!(!verify_secret(&key, "not a phc"));
    }

    #[test]
    fn cache_is_keyed_and_bound_to_the_hash() {
        let c = VerifyCache::default();
        let k = c.key("secret-a");
        assert_ne!(k, c.key("secret-b"));
        assert_ne!(
            k,
            VerifyCache::default().key("secret-a"),
            "keyed per process"
        );
        c.insert(k, "phc-1".into());
        assert!(c.hit(&k, "phc-1"));
        assert!(!c.hit(&k, "phc-2"), "a rotated hash misses");
    }

    #[test]
    fn ip_allowlist_matches_cidrs() {
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        assert!(ip_allowed(&[], ip));
        assert!(ip_allowed(&["10.0.0.0/8".into()], ip));
        assert!(!ip_allowed(&["192.168.0.0/16".into()], ip));
        assert!(ip_allowed(&["10.1.2.3".into()], ip));
    }
}
