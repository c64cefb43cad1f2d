//! Provider shaping limits the control plane pushes (issue 15, "Limits pushed from the control
//! plane are laid over the file"): per provider of the engines' shaping files, the five site
//! limits an operator sets with `PUT /v1/shaping/providers/{name}`. An engine lays them over
//! its merged shaping files (`petrel_delivery::shaping::ShapingOverlay`). One definition of the
//! rules, so the admin API refuses exactly what an engine would refuse in a snapshot.
//!
//! The control plane cannot know the engines' files, so any well-formed name is accepted; an
//! engine ignores a name none of its providers has. `default` addresses the files' `[default]`
//! section. The bounds are far above any provider's published figures: they catch a typo
//! (an extra zero) rather than encode policy.

use crate::error::PolicyError;

/// Longest provider name, in bytes (the shaping files' names are metric labels of this size).
pub const SHAPING_PROVIDER_NAME_MAX_BYTES: usize = 64;
/// Providers an overlay names, at most (a shaping file holds at most 1,000, plus `default`).
pub const SHAPING_PROVIDERS_MAX: usize = 1_001;
/// Upper bounds of each limit. Counts are at least 1; a rate of 0 means "unlimited" (it lifts a
/// rate the files set).
pub const SHAPING_CONNECTIONS_MAX: u32 = 10_000;
pub const SHAPING_MESSAGES_PER_CONNECTION_MAX: u32 = 1_000_000;
pub const SHAPING_MESSAGES_PER_MINUTE_MAX: u32 = 10_000_000;
pub const SHAPING_MESSAGES_PER_HOUR_MAX: u32 = 600_000_000;
pub const SHAPING_RECIPIENTS_PER_TRANSACTION_MAX: u32 = 10_000;

/// One provider's pushed limits; `None` leaves the files' value in force.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct ShapingLimits {
    /// A provider name of the shaping files, or `default`; see [`is_shaping_provider_name`].
    pub provider: String,
    /// Simultaneous connections to a site of the provider, engine-wide; 1..=[`SHAPING_CONNECTIONS_MAX`].
    #[serde(default)]
    pub connections_max: Option<u32>,
    /// Transactions on one connection; 1..=[`SHAPING_MESSAGES_PER_CONNECTION_MAX`].
    #[serde(default)]
    pub messages_per_connection_max: Option<u32>,
    /// Transactions per minute, engine-wide; 0 (unlimited)..=[`SHAPING_MESSAGES_PER_MINUTE_MAX`].
    #[serde(default)]
    pub messages_per_minute_max: Option<u32>,
    /// Transactions per hour, engine-wide; 0 (unlimited)..=[`SHAPING_MESSAGES_PER_HOUR_MAX`].
    #[serde(default)]
    pub messages_per_hour_max: Option<u32>,
    /// RCPT TO commands in one transaction; 1..=[`SHAPING_RECIPIENTS_PER_TRANSACTION_MAX`].
    #[serde(default)]
    pub recipients_per_transaction_max: Option<u32>,
}

/// True for a provider name the overlay may address: 1 to [`SHAPING_PROVIDER_NAME_MAX_BYTES`]
/// of `[a-z0-9_-]` (the shipped providers' names, and `default`).
pub fn is_shaping_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= SHAPING_PROVIDER_NAME_MAX_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl ShapingLimits {
    /// What is wrong with these limits, for a person (`None`: nothing). The admin API answers
    /// it as a 422; a snapshot holding it is refused.
    pub fn problem(&self) -> Option<String> {
        if !is_shaping_provider_name(&self.provider) {
            return Some(format!(
                "provider name {:?}: 1..={SHAPING_PROVIDER_NAME_MAX_BYTES} characters of [a-z0-9_-]",
                self.provider
            ));
        }
        let counts = [
            (
                "connections_max",
                self.connections_max,
                SHAPING_CONNECTIONS_MAX,
            ),
            (
                "messages_per_connection_max",
                self.messages_per_connection_max,
                SHAPING_MESSAGES_PER_CONNECTION_MAX,
            ),
            (
                "recipients_per_transaction_max",
                self.recipients_per_transaction_max,
                SHAPING_RECIPIENTS_PER_TRANSACTION_MAX,
            ),
        ];
        for (field, value, max) in counts {
            if value.is_some_and(|v| v == 0 || v > max) {
                return Some(format!("{field} must be 1..={max}"));
            }
        }
        let rates = [
            (
                "messages_per_minute_max",
                self.messages_per_minute_max,
                SHAPING_MESSAGES_PER_MINUTE_MAX,
            ),
            (
                "messages_per_hour_max",
                self.messages_per_hour_max,
                SHAPING_MESSAGES_PER_HOUR_MAX,
            ),
        ];
        for (field, value, max) in rates {
            if value.is_some_and(|v| v > max) {
                return Some(format!("{field} must be 0 (unlimited)..={max}"));
            }
        }
        None
    }
}

/// Checks a snapshot's overlay: bounded, each entry well-formed, each provider named once.
pub(crate) fn check(list: &[ShapingLimits]) -> Result<(), PolicyError> {
    if list.len() > SHAPING_PROVIDERS_MAX {
        return Err(PolicyError::invalid(format!(
            "{} shaping providers (max {SHAPING_PROVIDERS_MAX})",
            list.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(list.len());
    for l in list {
        if let Some(p) = l.problem() {
            return Err(PolicyError::invalid(format!("shaping: {p}")));
        }
        if !seen.insert(l.provider.as_str()) {
            return Err(PolicyError::invalid(format!(
                "shaping: provider {} listed twice",
                l.provider
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(provider: &str) -> ShapingLimits {
        ShapingLimits {
            provider: provider.into(),
            connections_max: None,
            messages_per_connection_max: None,
            messages_per_minute_max: None,
            messages_per_hour_max: None,
            recipients_per_transaction_max: None,
        }
    }

    #[test]
    fn names() {
        let longest = "x".repeat(SHAPING_PROVIDER_NAME_MAX_BYTES);
        for good in [
            "google",
            "default",
            "gmx-webde",
            "yahoo_jp",
            "a1",
            longest.as_str(),
        ] {
            assert!(is_shaping_provider_name(good), "{good}");
        }
        let long = "x".repeat(SHAPING_PROVIDER_NAME_MAX_BYTES + 1);
        for bad in [
            "",
            "Google",
            "mail.com",
            "a b",
            "pööl",
            "a\n",
            long.as_str(),
        ] {
            assert!(!is_shaping_provider_name(bad), "{bad:?}");
        }
    }

    /// Sets one limit of an entry.
    type Setter = fn(&mut ShapingLimits, u32);

    #[test]
    fn counts_are_at_least_one_and_rates_may_be_zero() {
        assert_eq!(limits("google").problem(), None, "nothing set is fine");
        let set = |f: fn(&mut ShapingLimits, u32), v: u32| {
            let mut l = limits("google");
            f(&mut l, v);
            l.problem()
        };
        let counts: [(Setter, u32); 3] = [
            (|l, v| l.connections_max = Some(v), SHAPING_CONNECTIONS_MAX),
            (
                |l, v| l.messages_per_connection_max = Some(v),
                SHAPING_MESSAGES_PER_CONNECTION_MAX,
            ),
            (
                |l, v| l.recipients_per_transaction_max = Some(v),
                SHAPING_RECIPIENTS_PER_TRANSACTION_MAX,
            ),
        ];
        for (f, max) in counts {
            assert_eq!(set(f, 1), None);
            assert_eq!(set(f, max), None);
            assert!(set(f, 0).is_some_and(|p| p.contains("must be 1..=")));
            assert!(set(f, max + 1).is_some());
        }
        let rates: [(Setter, u32); 2] = [
            (
                |l, v| l.messages_per_minute_max = Some(v),
                SHAPING_MESSAGES_PER_MINUTE_MAX,
            ),
            (
                |l, v| l.messages_per_hour_max = Some(v),
                SHAPING_MESSAGES_PER_HOUR_MAX,
            ),
        ];
        for (f, max) in rates {
            assert_eq!(set(f, 0), None, "0 is unlimited");
            assert_eq!(set(f, max), None);
            assert!(set(f, max + 1).is_some_and(|p| p.contains("unlimited")));
        }
    }

    #[test]
    fn a_list_is_bounded_and_names_each_provider_once() {
        assert!(check(&[limits("google"), limits("default")]).is_ok());
        let twice = check(&[limits("google"), limits("google")]).unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
        assert!(check(&[limits("Google")]).is_err());
        let many: Vec<ShapingLimits> = (0..=SHAPING_PROVIDERS_MAX)
            .map(|i| limits(&format!("p{i}")))
            .collect();
        assert!(check(&many).is_err());
        assert!(check(&many[..SHAPING_PROVIDERS_MAX]).is_ok());
    }
}
