//! SMTP AUTH: static users from the config file, then the control plane's pushed credentials.
//!
//! argon2id verification costs milliseconds, so it runs on glommio's blocking pool, never on the
//! shard, and successful verifications are cached in memory keyed by a keyed SHA-256 of the
//! username and password (never the plaintext). The cache is bounded and dropped whole when full.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use sha2::{Digest, Sha256};

use crate::config::AuthUser;

/// Cached successful verifications of static users, at most.
pub const AUTH_CACHE_ENTRIES_MAX: usize = 100_000;

/// Who authenticated: a static user, or a control-plane credential of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    pub tenant: Option<String>,
    /// Present for control-plane credentials: what the policy checks at MAIL.
    pub policy: Option<petrel_policy::AuthIdentity>,
}

pub struct Authenticator {
    /// username -> argon2id PHC string.
    static_users: HashMap<String, String>,
    /// Random per process; makes cache keys useless outside it.
    cache_key: [u8; 32],
    cache: Mutex<HashMap<[u8; 32], Identity>>,
    policy: Arc<petrel_policy::PolicyStore>,
}

impl Authenticator {
    pub fn new(users: &[AuthUser], policy: Arc<petrel_policy::PolicyStore>) -> Arc<Self> {
        let mut cache_key = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut cache_key[..]);
        Arc::new(Authenticator {
            static_users: users
                .iter()
                .map(|u| (u.username.clone(), u.password_hash.clone()))
                .collect(),
            cache_key,
            cache: Mutex::new(HashMap::new()),
            policy,
        })
    }

    pub fn has_credentials(&self) -> bool {
        !self.static_users.is_empty() || self.policy.current().auth_enabled()
    }

    /// The fast path, on the shard: a cached control-plane verification, or None when the
    /// answer needs argon2 (then call [`Authenticator::verify_blocking`] off the shard).
    pub fn verify_cached(
        &self,
        username: &str,
        password: &str,
        peer: IpAddr,
    ) -> Option<Option<Identity>> {
        if self.static_users.contains_key(username) {
            let key = self.cache_key(username, password);
            return self.cache_lock().get(&key).cloned().map(Some);
        }
        let policy = self.policy.current();
        policy
            .verify_smtp_cached(username, password, peer)
            .map(|r| r.ok().map(identity_of))
    }

    /// Verifies; blocking (argon2). Call from a blocking pool.
    pub fn verify_blocking(
        &self,
        username: &str,
        password: &str,
        peer: IpAddr,
    ) -> Option<Identity> {
        if let Some(phc) = self.static_users.get(username) {
            let key = self.cache_key(username, password);
            if let Some(id) = self.cache_lock().get(&key) {
                return Some(id.clone());
            }
            let ok = PasswordHash::new(phc)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false);
            if !ok {
                return None;
            }
            let id = Identity {
                username: username.to_string(),
                tenant: None,
                policy: None,
            };
            let mut cache = self.cache_lock();
            if cache.len() >= AUTH_CACHE_ENTRIES_MAX {
                cache.clear();
            }
            cache.insert(key, id.clone());
            return Some(id);
        }
        let policy = self.policy.current();
        policy
            .verify_smtp(username, password, peer)
            .ok()
            .map(identity_of)
    }

    fn cache_key(&self, username: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        h.update((username.len() as u64).to_le_bytes());
        h.update(username.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Identity>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn identity_of(id: petrel_policy::AuthIdentity) -> Identity {
    Identity {
        username: id.username.clone(),
        tenant: Some(id.tenant_id.clone()),
        policy: Some(id),
    }
}

/// Hashes a password for the config file (`petrel hash-password`): the same argon2id
/// parameters as the control plane's credentials.
pub fn hash_password(password: &str) -> String {
    petrel_policy::auth::hash_password(password).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_user_verifies_and_caches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(petrel_policy::PolicyStore::load_or_empty(dir.path()));
        let users = vec![AuthUser {
            username: "alice".into(),
            password_hash: hash_password("s3cret"),
        }];
        let a = Authenticator::new(&users, store);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(a.verify_blocking("alice", "nope", ip).is_none());
        assert_eq!(
            a.verify_blocking("alice", "s3cret", ip).unwrap().username,
            "alice"
        );
        assert_eq!(a.cache_lock().len(), 1);
        assert!(a.verify_blocking("alice", "s3cret", ip).is_some());
        assert!(a.verify_blocking("bob", "s3cret", ip).is_none());
        assert!(a.has_credentials());
    }
}
