//! Password verification for SMTP AUTH: argon2id, plus a bounded cache of successes.
//!
//! argon2id is deliberately slow (tens of milliseconds, ~19 MiB); a busy submission client
//! authenticates on every connection, so successes are remembered. The cache never holds a
//! password: an entry is `HMAC-SHA256(process key, credential id | PHC string | username |
//! password)` with a key drawn at start-up and never stored. Because the PHC string is part of
//! the tag, a password change makes old entries unreachable; revocation, suspension and the IP
//! allowlist are checked against the current snapshot *before* the cache, so they act at once.
//!
//! Eviction is two-generational: when the current set fills half the bound it becomes the
//! previous set and the old previous set is dropped. Hits in the previous set are promoted.
//! At most `entries_max` tags are held; the recently used survive.

use std::collections::HashSet;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::error::AuthError;

/// Default bound on cached successful verifications.
pub const AUTH_CACHE_ENTRIES_MAX: usize = 10_000;
/// Longest password accepted for verification, in bytes (argon2 takes any length; this bounds
/// the work a client can ask for).
pub const PASSWORD_LENGTH_MAX_BYTES: usize = 1024;

/// A cache tag: never the password, never reversible without the process key.
pub type AuthTag = [u8; 32];

/// The cache of successful verifications (Send + Sync, shared by all shards).
pub struct AuthCache {
    /// Random per process; never leaves memory.
    key: [u8; 32],
    /// Bound on `current.len() + previous.len()`.
    entries_max: usize,
    sets: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    /// `current.len() <= entries_max / 2` (rotated when it would exceed it).
    current: HashSet<AuthTag>,
    previous: HashSet<AuthTag>,
}

impl std::fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCache")
            .field("entries_max", &self.entries_max)
            .field("len", &self.len())
            .finish()
    }
}

impl AuthCache {
    pub fn new(entries_max: usize) -> AuthCache {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        AuthCache {
            key,
            entries_max: entries_max.max(2),
            sets: Mutex::new(Generations::default()),
        }
    }

    /// The tag for one verification; fields are length-prefixed so none can bleed into another.
    pub fn tag(&self, credential_id: &str, phc: &str, username: &str, password: &str) -> AuthTag {
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            // HMAC accepts keys of any length; this arm cannot run.
            Err(_) => return [0u8; 32],
        };
        for field in [credential_id, phc, username, password] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    pub fn contains(&self, tag: &AuthTag) -> bool {
        let mut sets = self.lock();
        if sets.current.contains(tag) {
            return true;
        }
        if sets.previous.remove(tag) {
            Self::insert_locked(&mut sets, *tag, self.entries_max);
            return true;
        }
        false
    }

    pub fn insert(&self, tag: AuthTag) {
        let mut sets = self.lock();
        Self::insert_locked(&mut sets, tag, self.entries_max);
    }

    pub fn clear(&self) {
        let mut sets = self.lock();
        sets.current.clear();
        sets.previous.clear();
    }

    pub fn len(&self) -> usize {
        let sets = self.lock();
        sets.current.len() + sets.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert_locked(sets: &mut Generations, tag: AuthTag, entries_max: usize) {
        if sets.current.len() >= entries_max / 2 {
            sets.previous = std::mem::take(&mut sets.current);
        }
        sets.current.insert(tag);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // Poisoning only means a panic elsewhere mid-insert; the sets are still sets.
        self.sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Check `password` against an argon2id PHC string. CPU-heavy (the hash's own parameters).
pub fn verify_argon2id(phc: &str, password: &str) -> Result<(), AuthError> {
    if password.len() > PASSWORD_LENGTH_MAX_BYTES {
        return Err(AuthError::WrongPassword);
    }
    let hash = PasswordHash::new(phc).map_err(|_| AuthError::BadHash)?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(AuthError::BadHash);
    }
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .map_err(|e| match e {
            argon2::password_hash::Error::Password => AuthError::WrongPassword,
            _ => AuthError::BadHash,
        })
}

/// Hash a password as the control plane stores it (argon2id, default parameters, random salt).
/// Here so both sides agree on the format; tests use it too.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| AuthError::BadHash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_verify() {
        let phc = hash_password("hunter2").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        verify_argon2id(&phc, "hunter2").unwrap();
        assert_eq!(
            verify_argon2id(&phc, "hunter3"),
            Err(AuthError::WrongPassword)
        );
        assert_eq!(verify_argon2id("not a hash", "x"), Err(AuthError::BadHash));
        let argon2i = phc.replacen("$argon2id$", "$argon2i$", 1);
        assert_eq!(
            verify_argon2id(&argon2i, "hunter2"),
            Err(AuthError::BadHash)
        );
    }

    #[test]
    fn tags_differ_per_field_and_per_process() {
        let a = AuthCache::new(10);
        let b = AuthCache::new(10);
        let t = a.tag("c1", "phc", "user", "pw");
        assert_eq!(t, a.tag("c1", "phc", "user", "pw"));
        assert_ne!(t, a.tag("c1", "phc", "user", "pw2"));
        assert_ne!(t, a.tag("c1", "phc2", "user", "pw"));
        assert_ne!(a.tag("c1", "phc", "ab", "c"), a.tag("c1", "phc", "a", "bc"));
        assert_ne!(t, b.tag("c1", "phc", "user", "pw"));
    }

    #[test]
    fn bounded_with_recent_entries_kept() {
        let c = AuthCache::new(100);
        let hot = c.tag("hot", "", "", "");
        c.insert(hot);
        for i in 0..1000 {
            c.insert(c.tag(&i.to_string(), "", "", ""));
            assert!(c.len() <= 100);
            if i % 10 == 0 {
                assert!(c.contains(&hot), "hot entry evicted at {i}");
            }
        }
        assert!(!c.contains(&c.tag("0", "", "", "")));
        c.clear();
        assert!(c.is_empty());
    }
}
