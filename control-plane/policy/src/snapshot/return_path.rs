//! The return-path section of the snapshot: where bounces, complaints and unsubscribes come
//! back to, and the keys that sign the tokens in those addresses and links.
//!
//! The control plane owns the keys (`token_keys`, generated at its first start) and pushes them
//! here; an engine signs VERP return paths and List-Unsubscribe addresses with the current key
//! and its intake checks every token against all of them, so a key can be rotated while mail
//! signed with the previous one is still coming back. `petrel-reports` (`VerpKeys`) does the
//! signing; this crate only carries and bounds the material.

use crate::error::PolicyError;

/// Keys pushed at once (the current one and those still accepted), as `petrel_reports::KEYS_MAX`.
pub const TOKEN_KEYS_MAX: usize = 16;
/// Shortest key accepted, in bytes (as `petrel_reports::KEY_BYTES_MIN`: 128 bits).
pub const TOKEN_KEY_BYTES_MIN: usize = 16;
/// Longest key accepted, in bytes.
pub const TOKEN_KEY_BYTES_MAX: usize = 64;
/// Longest one-click URL base, in bytes.
pub const URL_BASE_MAX_BYTES: usize = 512;

/// Return paths and unsubscribe links. An empty `bounce_domain` turns VERP and the intake's
/// token addresses off (the envelope sender is left as the client gave it).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct ReturnPath {
    /// The domain of `b-<token>@` return paths and `u-<token>@` unsubscribe addresses; its MX
    /// points at the engines' intake listener. Lower-case ASCII, or empty (off).
    pub bounce_domain: String,
    /// Where one-click links point: `<one_click_url_base>/u/<token>` (the control plane's
    /// public HTTPS origin, no trailing slash). Empty: no https List-Unsubscribe link.
    pub one_click_url_base: String,
    /// Key id (as written in tokens) of the key that signs new tokens; 0 when there are no keys.
    pub current_key_id: u8,
    /// Every key still accepted, the current one among them; at most [`TOKEN_KEYS_MAX`].
    pub keys: Vec<TokenKey>,
}

/// One token-signing key.
#[derive(
    Clone,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct TokenKey {
    /// 1..=255, unique.
    pub id: u8,
    /// [`TOKEN_KEY_BYTES_MIN`]..=[`TOKEN_KEY_BYTES_MAX`] random bytes.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenKey {{ id: {}, {} bytes }}",
            self.id,
            self.secret.len()
        )
    }
}

impl ReturnPath {
    /// The key that signs new tokens, when there is one.
    pub fn current_key(&self) -> Option<&TokenKey> {
        self.keys.iter().find(|k| k.id == self.current_key_id)
    }

    /// Bounded, unique ids, a current key when any key is given, well-formed names.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.keys.len() > TOKEN_KEYS_MAX {
            return Err(PolicyError::invalid(format!(
                "{} token keys (at most {TOKEN_KEYS_MAX})",
                self.keys.len()
            )));
        }
        let mut seen = [false; 256];
        for k in &self.keys {
            if k.id == 0 {
                return Err(PolicyError::invalid("token key id 0"));
            }
            if std::mem::replace(&mut seen[usize::from(k.id)], true) {
                return Err(PolicyError::invalid(format!(
                    "duplicate token key {}",
                    k.id
                )));
            }
            if !(TOKEN_KEY_BYTES_MIN..=TOKEN_KEY_BYTES_MAX).contains(&k.secret.len()) {
                return Err(PolicyError::invalid(format!(
                    "token key {} has {} bytes (want {TOKEN_KEY_BYTES_MIN}..={TOKEN_KEY_BYTES_MAX})",
                    k.id,
                    k.secret.len()
                )));
            }
        }
        if !self.keys.is_empty() && self.current_key().is_none() {
            return Err(PolicyError::invalid(format!(
                "current token key {} is not among the keys",
                self.current_key_id
            )));
        }
        if !self.bounce_domain.is_empty() {
            super::check_domain(&self.bounce_domain)?;
            if self.keys.is_empty() {
                return Err(PolicyError::invalid("a bounce domain needs a token key"));
            }
        }
        if self.one_click_url_base.len() > URL_BASE_MAX_BYTES
            || !(self.one_click_url_base.is_empty()
                || self.one_click_url_base.starts_with("https://")
                || self.one_click_url_base.starts_with("http://"))
            || self.one_click_url_base.ends_with('/')
        {
            return Err(PolicyError::invalid(
                "one-click URL base must be an http(s) origin without a trailing slash",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u8) -> TokenKey {
        TokenKey {
            id,
            secret: vec![7; 32],
        }
    }

    #[test]
    fn a_usable_section_passes_and_broken_ones_say_why() {
        let ok = ReturnPath {
            bounce_domain: "bounces.petrel.test".into(),
            one_click_url_base: "https://cp.petrel.test".into(),
            current_key_id: 2,
            keys: vec![key(1), key(2)],
        };
        ok.validate().unwrap();
        assert_eq!(ok.current_key().map(|k| k.id), Some(2));
        ReturnPath::default().validate().unwrap();

        let mut bad = ok.clone();
        bad.current_key_id = 3;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.keys.push(key(2));
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.keys[0].secret = vec![1; 8];
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.keys.clear();
        bad.current_key_id = 0;
        assert!(bad.validate().is_err(), "a bounce domain without keys");
        let mut bad = ok.clone();
        bad.one_click_url_base = "https://cp.petrel.test/".into();
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.keys = (1..=17).map(key).collect();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let k = TokenKey {
            id: 1,
            secret: b"0123456789abcdef-secret".to_vec(),
        };
        assert!(!format!("{k:?}").contains("secret"));
    }
}
