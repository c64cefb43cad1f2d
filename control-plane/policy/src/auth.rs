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

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};

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

/// Spends one argon2id verification (the default parameters, as every stored credential has)
/// against a hash of a random password, and returns nothing. A refusal that needed no hashing
/// (unknown username, revoked credential, address not allowed, unknown key prefix) calls this
/// before answering, so a refusal takes as long whatever its reason and the time of an answer
/// does not tell which usernames or keys exist.
pub fn equalize_refusal_time(password: &str) {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| {
        let mut random = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut random);
        hash_password(&hex::encode(random)).ok()
    });
    if let Some(phc) = dummy {
        let clipped = &password.as_bytes()[..password.len().min(PASSWORD_LENGTH_MAX_BYTES)];
        let _ = verify_argon2id(phc, &String::from_utf8_lossy(clipped));
    }
}

/// Failed authentications per client address in fixed windows, shared by every shard (SMTP
/// AUTH) or every request handler (the admin API): past `failures_max` in one window the address
/// is locked out until the window ends. Bounded: at most `addresses_max` addresses are tracked;
/// past that, ended windows are dropped first, then everything (a flood of addresses must not
/// grow memory).
#[derive(Debug)]
pub struct FailureThrottle {
    failures_max: u32,
    window_secs: u64,
    addresses_max: usize,
    /// address -> (window start, failures in it).
    windows: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

/// Default bound on the addresses a [`FailureThrottle`] tracks.
pub const THROTTLE_ADDRESSES_MAX: usize = 100_000;

impl FailureThrottle {
    pub fn new(failures_max: u32, window_secs: u64) -> FailureThrottle {
        FailureThrottle {
            failures_max: failures_max.max(1),
            window_secs: window_secs.max(1),
            addresses_max: THROTTLE_ADDRESSES_MAX,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds until the lockout ends)` while `ip` is locked out.
    pub fn check(&self, ip: IpAddr, now_secs: u64) -> Result<(), u64> {
        let ip = ip.to_canonical();
        let map = self.lock();
        match map.get(&ip) {
            Some(&(start, count))
                if count >= self.failures_max && now_secs < start + self.window_secs =>
            {
                Err((start + self.window_secs - now_secs).max(1))
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, ip: IpAddr, now_secs: u64) {
        let ip = ip.to_canonical();
        let window = self.window_secs;
        let mut map = self.lock();
        if map.len() >= self.addresses_max && !map.contains_key(&ip) {
            map.retain(|_, (start, _)| now_secs < *start + window);
            if map.len() >= self.addresses_max {
                map.clear();
            }
        }
        let w = map.entry(ip).or_insert((now_secs, 0));
        if now_secs >= w.0 + window {
            *w = (now_secs, 0);
        }
        w.1 = w.1.saturating_add(1);
    }

    /// Addresses currently tracked (for tests and the status page).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u64, u32)>> {
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
    fn throttle_locks_an_address_out_after_its_failures_until_the_window_ends() {
        let t = FailureThrottle::new(10, 60);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..10 {
            assert!(t.check(ip, 1_000).is_ok());
            t.record_failure(ip, 1_000);
        }
        assert_eq!(t.check(ip, 1_000), Err(60));
        assert_eq!(t.check(ip, 1_045), Err(15));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        assert_eq!(t.check(mapped, 1_045), Err(15), "IPv4-mapped is the same");
        assert!(t.check(other, 1_000).is_ok(), "per address");
        assert!(t.check(ip, 1_060).is_ok(), "window over");
        t.record_failure(ip, 1_060);
        assert!(
            t.check(ip, 1_060).is_ok(),
            "a new window starts from one failure"
        );
    }

    #[test]
    fn throttle_tracks_a_bounded_number_of_addresses() {
        let mut t = FailureThrottle::new(3, 60);
        t.addresses_max = 4;
        for i in 0..4u8 {
            t.record_failure(IpAddr::from([198, 51, 100, i]), 1_000);
        }
        assert_eq!(t.tracked(), 4);
        // All windows live: the map starts over rather than grow.
        t.record_failure(IpAddr::from([198, 51, 100, 9]), 1_000);
        assert_eq!(t.tracked(), 1);
        // Ended windows go first.
        for i in 0..3u8 {
            t.record_failure(IpAddr::from([198, 51, 100, i]), 1_000);
        }
        t.record_failure(IpAddr::from([198, 51, 100, 20]), 1_100);
        assert_eq!(t.tracked(), 1);
    }

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
