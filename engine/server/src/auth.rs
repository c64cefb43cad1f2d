//! SMTP AUTH: static users from the config file, then the control plane's pushed credentials.
//!
//! argon2id verification costs milliseconds, so it runs on glommio's blocking pool, never on the
//! shard, and successful verifications are cached in memory keyed by a keyed SHA-256 of the
//! username and password (never the plaintext). The cache is bounded and dropped whole when full.
//!
//! Only a cached success answers on the shard. Every refusal goes through the blocking pool and
//! costs one argon2id verification, whether or not the username exists, so the time of an answer
//! does not tell which usernames exist. An address that fails `auth.failures_per_address_max`
//! times within `auth.failure_window_secs` (across connections and shards) is locked out of AUTH
//! until the window ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use sha2::{Digest, Sha256};

use petrel_policy::auth::FailureThrottle;

use crate::config::AuthSection;

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
    throttle: FailureThrottle,
    /// Refusals of the current window, for the control plane's audit log.
    pub failures: Arc<crate::audit_signals::AuthFailureLog>,
}

impl Authenticator {
    pub fn new(section: &AuthSection, policy: Arc<petrel_policy::PolicyStore>) -> Arc<Self> {
        let users = &section.users;
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
            throttle: FailureThrottle::new(
                section.failures_per_address_max,
                section.failure_window_secs,
            ),
            failures: Arc::default(),
        })
    }

    /// `Err(seconds left)` while `peer` is locked out of AUTH.
    pub fn locked_out(&self, peer: IpAddr, now_secs: u64) -> Result<(), u64> {
        self.throttle.check(peer, now_secs)
    }

    /// Counts a failed AUTH of `peer` towards its lockout, and for the audit log.
    pub fn record_failure(&self, peer: IpAddr, now_secs: u64, username: &str) {
        self.throttle.record_failure(peer, now_secs);
        let now_ms = i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX);
        self.failures.note(peer, username, false, now_ms);
    }

    /// Counts an AUTH the lockout refused (for the audit log only).
    pub fn record_locked_out(&self, peer: IpAddr, username: &str) {
        let now_ms = i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX);
        self.failures.note(peer, username, true, now_ms);
    }

    pub fn has_credentials(&self) -> bool {
        !self.static_users.is_empty() || self.policy.current().auth_enabled()
    }

    /// The fast path, on the shard: a cached success, or None when the answer needs argon2
    /// (then call [`Authenticator::verify_blocking`] off the shard). A refusal is never
    /// answered here, however cheap to decide: see the module's note on timing.
    pub fn verify_cached(&self, username: &str, password: &str, peer: IpAddr) -> Option<Identity> {
        if self.static_users.contains_key(username) {
            let key = self.cache_key(username, password);
            return self.cache_lock().get(&key).cloned();
        }
        let policy = self.policy.current();
        match policy.verify_smtp_cached(username, password, peer) {
            Some(Ok(id)) => Some(identity_of(id)),
            _ => None,
        }
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
        match policy.verify_smtp(username, password, peer) {
            Ok(id) => Some(identity_of(id)),
            // argon2 ran and refused: the answer already took a verification's time.
            Err(petrel_policy::AuthError::WrongPassword) => None,
            Err(_) => {
                petrel_policy::auth::equalize_refusal_time(password);
                None
            }
        }
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

    /// An authenticator with one static user, alice / s3cret, and an empty policy in `dir`.
    fn alice(dir: &tempfile::TempDir) -> Arc<Authenticator> {
        let store = Arc::new(petrel_policy::PolicyStore::load_or_empty(dir.path()));
        let section = AuthSection {
            users: vec![crate::config::AuthUser {
                username: "alice".into(),
                password_hash: hash_password("s3cret"),
            }],
            ..AuthSection::default()
        };
        Authenticator::new(&section, store)
    }

    #[test]
    fn static_user_verifies_and_caches() {
        let dir = tempfile::tempdir().unwrap();
        let a = alice(&dir);
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

    #[test]
    fn only_a_cached_success_is_answered_on_the_shard() {
        let dir = tempfile::tempdir().unwrap();
        let a = alice(&dir);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        // An unknown username is not refused at once: it goes where a wrong password goes.
        assert_eq!(a.verify_cached("mallory", "x", ip), None);
        assert_eq!(
            a.verify_cached("alice", "s3cret", ip),
            None,
            "not cached yet"
        );
        assert!(a.verify_blocking("alice", "s3cret", ip).is_some());
        assert!(a.verify_cached("alice", "s3cret", ip).is_some());
        assert_eq!(a.verify_cached("alice", "wrong", ip), None);
    }

    #[test]
    fn an_address_is_locked_out_after_its_failures() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(petrel_policy::PolicyStore::load_or_empty(dir.path()));
        let section = AuthSection {
            failures_per_address_max: 2,
            failure_window_secs: 30,
            ..AuthSection::default()
        };
        let a = Authenticator::new(&section, store);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(a.locked_out(ip, 100).is_ok());
        a.record_failure(ip, 100, "u");
        assert!(a.locked_out(ip, 100).is_ok());
        a.record_failure(ip, 101, "u");
        assert_eq!(a.locked_out(ip, 110), Err(20));
        assert!(a.locked_out("192.0.2.8".parse().unwrap(), 110).is_ok());
        assert!(a.locked_out(ip, 130).is_ok());
    }
}
