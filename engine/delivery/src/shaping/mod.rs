//! Traffic shaping and automatic throttling per site: the rules and the state, as pure cores.
//!
//! A *site* is where a delivery connection goes: (egress source, next-hop set, TLS policy). This
//! module decides, for a site, how hard it may be pushed, and how to back off when the receiver
//! says so. It does no I/O after start and keeps no clock: time is passed in.
//!
//! * [`Shaping`]: the rules. The shipped `shaping.toml` (embedded), an operator's file laid over
//!   it (`delivery.shaping_file`), and a pushed [`ShapingOverlay`] laid over both. It answers
//!   which provider a site's MX hosts belong to ([`Shaping::provider_for`]), that provider's
//!   [`SiteLimits`], and which [`ThrottleAction`] a negative reply calls for
//!   ([`Shaping::throttle`]).
//! * [`SiteThrottle`] (`throttle.rs`): one site's automatic response in force (suspensions of the
//!   site or of one tenant at it, narrowed connection counts), expiring by itself.
//! * [`SiteRates`] (`rate.rs`): engine-wide messages per minute and per hour per site, shared by
//!   all shards (GCRA on atomics, as [`crate::limits`]).
//!
//! # Matching a site to a provider
//!
//! A provider matches when **every** MX host of the site matches one of its patterns, as KumoMTA
//! does: a vanity domain whose MX set mixes a provider's hosts with others is not that provider,
//! and gets the defaults. `*.example.com` matches any name below example.com (not example.com
//! itself); any other pattern is one exact host. Case and a trailing dot are ignored. Providers
//! are tried in order (an operator's new ones first, then the shipped ones in file order) and the
//! first match wins. A site with no MX hosts (a smart host, a literal) matches none.
//!
//! # Throttle rules
//!
//! A rule names conditions (reply code, enhanced code prefix, case-insensitive regex over the
//! reply text; all given ones must hold) and an action: suspend the site or one tenant at it, or
//! narrow the site's connections, for a duration. The first matching rule wins, in this order:
//! the operator file's rules for the site's provider, the operator file's global rules, then the
//! shipped file's provider rules and global rules. Within a file a provider's rules come first
//! because they know the provider's own texts.
//!
//! Why no "N matches an hour" trigger (KumoMTA's `Threshold`): a site's first throttling reply is
//! the receiver's clear statement; acting at once costs a few minutes of waiting, while waiting
//! for a count costs the reputation the rule is there to protect. Durations are short for that.

mod error;
mod file;
mod merge;
mod overlay;
mod pattern;
pub mod rate;
pub mod throttle;
pub mod throttles;

#[cfg(test)]
mod replies_tests;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::OnceLock;

use regex::bytes::Regex;

pub use error::ShapingError;
pub use file::{
    DEFAULT_SECTION, MX_PATTERNS_PER_PROVIDER_MAX, NAME_BYTES_MAX, PROVIDERS_MAX,
    REGEX_LEN_BYTES_MAX, REGEX_SIZE_BYTES_MAX, SHAPING_FILE_BYTES_MAX, THROTTLE_DURATION_SECS_MAX,
    THROTTLE_RULES_MAX,
};
pub use overlay::{ShapingCache, ShapingOverlay, ShapingSource};
pub use pattern::HOST_PATTERN_BYTES_MAX;
pub use rate::{SiteRates, RATE_BURST_PERMILLE, RATE_SITES_MAX};
pub use throttle::{SiteThrottle, THROTTLE_NARROWS_MAX, THROTTLE_TENANTS_MAX};

use pattern::{EnhancedPrefix, HostPattern};

/// The shaping Petrel ships, embedded so it never depends on a file being installed.
pub const SHIPPED_SHAPING: &str = include_str!("../../shaping.toml");

/// The name errors give the shipped file.
pub const SHIPPED_SHAPING_NAME: &str = "shipped shaping.toml";

/// Longest part of a reply's text the throttle regexes search, in bytes: a provider says what
/// matters in its first sentences, and the bound keeps a peer's long reply from costing more.
pub const REPLY_TEXT_BYTES_MAX: usize = 4_096;

/// What a site gets when neither a file's `[default]` nor its provider sets a limit: Petrel's
/// `[delivery]` defaults.
pub const BUILT_IN_LIMITS: SiteLimits = SiteLimits {
    connections_max: 32,
    messages_per_connection_max: 1_000,
    messages_per_minute_max: None,
    messages_per_hour_max: None,
    recipients_per_transaction_max: 100,
};

/// The limits of one site, engine-wide (all shards together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteLimits {
    /// Simultaneous connections; at least 1.
    pub connections_max: u32,
    /// Transactions over one connection before it is closed and another opened; at least 1.
    pub messages_per_connection_max: u32,
    /// Transactions per minute; `None`: unlimited. At least 1 when set.
    pub messages_per_minute_max: Option<u32>,
    /// Transactions per hour; `None`: unlimited. At least 1 when set.
    pub messages_per_hour_max: Option<u32>,
    /// RCPT TO commands in one transaction; at least 1.
    pub recipients_per_transaction_max: u32,
}

/// Limits that a file section or an overlay sets; `None` leaves the value below in force. A rate
/// of `Some(0)` says "unlimited" explicitly (it overrides a rate set below).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_connection_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_minute_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_hour_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients_per_transaction_max: Option<u32>,
}

impl PartialLimits {
    /// These values where set, else `below`'s.
    pub fn over(self, below: PartialLimits) -> PartialLimits {
        PartialLimits {
            connections_max: self.connections_max.or(below.connections_max),
            messages_per_connection_max: self
                .messages_per_connection_max
                .or(below.messages_per_connection_max),
            messages_per_minute_max: self
                .messages_per_minute_max
                .or(below.messages_per_minute_max),
            messages_per_hour_max: self.messages_per_hour_max.or(below.messages_per_hour_max),
            recipients_per_transaction_max: self
                .recipients_per_transaction_max
                .or(below.recipients_per_transaction_max),
        }
    }

    /// Complete limits: unset values from `base`. A count of 0 (possible only from an overlay;
    /// files refuse it) becomes 1, so a site is never shut by a limit, only by a suspension.
    pub fn resolve(self, base: SiteLimits) -> SiteLimits {
        let rate = |set: Option<u32>, base: Option<u32>| match set {
            Some(0) => None,
            Some(n) => Some(n),
            None => base,
        };
        SiteLimits {
            connections_max: self.connections_max.unwrap_or(base.connections_max).max(1),
            messages_per_connection_max: self
                .messages_per_connection_max
                .unwrap_or(base.messages_per_connection_max)
                .max(1),
            messages_per_minute_max: rate(
                self.messages_per_minute_max,
                base.messages_per_minute_max,
            ),
            messages_per_hour_max: rate(self.messages_per_hour_max, base.messages_per_hour_max),
            recipients_per_transaction_max: self
                .recipients_per_transaction_max
                .unwrap_or(base.recipients_per_transaction_max)
                .max(1),
        }
    }
}

/// A provider of a [`Shaping`]; valid for that `Shaping` and the ones derived from it with
/// [`Shaping::with_overlay`] (an overlay never adds or reorders providers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProviderId(u16);

/// A throttle rule of a [`Shaping`] (its place in the order rules are tried).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(u16);

/// What a throttle rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleKind {
    /// No new transaction for the duration (ready mail waits; nothing is bounced).
    Suspend,
    /// The site's connections capped at `connections_max` (at least 1) for the duration.
    Narrow { connections_max: u32 },
}

/// Whom a throttle action holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThrottleScope {
    /// Every tenant's mail at the site.
    #[default]
    Site,
    /// Only the tenant whose mail got the reply, at that site (Gmail's 4.7.28 about a DKIM
    /// domain is about that sender, not the IP).
    Tenant,
}

/// The action of the first throttle rule a reply matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleAction {
    pub kind: ThrottleKind,
    /// How long the action lasts from the reply, in ms; 1 s to [`THROTTLE_DURATION_SECS_MAX`].
    pub duration_ms: u64,
    pub scope: ThrottleScope,
    /// The rule, for logs and metric labels ([`Shaping::rule_name`]).
    pub rule: RuleId,
}

/// The shaping rules in force: providers (MX patterns and limits), the default limits, and the
/// throttle rules. Immutable; cheap to clone (compiled regexes are shared).
#[derive(Debug, Clone)]
pub struct Shaping {
    /// The default sections merged (operator over shipped), before an overlay.
    default: PartialLimits,
    /// `default` with the overlay's `default` entry, resolved over [`BUILT_IN_LIMITS`].
    default_limits: SiteLimits,
    /// In match order; `ProviderId` is the index.
    providers: Vec<Provider>,
    /// In the order they are tried; `RuleId` is the index.
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Provider {
    name: String,
    /// Never empty.
    mx: Vec<HostPattern>,
    /// The files' values merged, before an overlay.
    limits: PartialLimits,
    /// With the overlay, over the default, over the built-in limits.
    resolved: SiteLimits,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    /// `None`: every site.
    provider: Option<ProviderId>,
    code: Option<u16>,
    enhanced: Option<EnhancedPrefix>,
    regex: Option<Regex>,
    kind: ThrottleKind,
    duration_ms: u64,
    scope: ThrottleScope,
}

impl Shaping {
    /// The shipped rules alone. Parsed once per process; later calls clone it.
    pub fn shipped() -> Shaping {
        static SHIPPED: OnceLock<Shaping> = OnceLock::new();
        SHIPPED
            .get_or_init(|| {
                let file = file::parse(SHIPPED_SHAPING_NAME, SHIPPED_SHAPING)
                    .expect("the shipped shaping.toml parses (checked by shipped_file_parses)");
                merge::build(vec![file])
                    .expect("the shipped shaping.toml is complete (checked by shipped_file_parses)")
            })
            .clone()
    }

    /// The shipped rules with the operator's file (if any) laid over them.
    pub fn load(operator_file: Option<&Path>) -> Result<Shaping, ShapingError> {
        let Some(path) = operator_file else {
            return Ok(Shaping::shipped());
        };
        let operator = file::read_file(path)?;
        Shaping::with_operator(operator)
    }

    /// As [`Shaping::load`], from the operator file's text (`name` is what errors call it).
    pub fn parse_operator(name: &str, text: &str) -> Result<Shaping, ShapingError> {
        Shaping::with_operator(file::parse(name, text)?)
    }

    fn with_operator(operator: file::ParsedFile) -> Result<Shaping, ShapingError> {
        let shipped = file::parse(SHIPPED_SHAPING_NAME, SHIPPED_SHAPING)?;
        merge::build(vec![operator, shipped])
    }

    /// These rules with `overlay`'s limits laid over the files' (see [`ShapingOverlay`]).
    pub fn with_overlay(&self, overlay: &ShapingOverlay) -> Shaping {
        overlay::apply(self, overlay)
    }

    /// The first provider whose patterns match every one of `mx_hosts`; `None` for no hosts or
    /// no such provider (see the module doc).
    pub fn provider_for(&self, mx_hosts: &[&str]) -> Option<ProviderId> {
        if mx_hosts.is_empty() {
            return None;
        }
        self.providers
            .iter()
            .position(|p| {
                mx_hosts
                    .iter()
                    .all(|host| p.mx.iter().any(|pattern| pattern.matches(host)))
            })
            .and_then(|i| u16::try_from(i).ok())
            .map(ProviderId)
    }

    /// The limits of a site of `provider` (`None`: the default section's).
    pub fn limits(&self, provider: Option<ProviderId>) -> SiteLimits {
        provider
            .and_then(|id| self.providers.get(usize::from(id.0)))
            .map_or(self.default_limits, |p| p.resolved)
    }

    /// The provider's name (for metric labels and logs); `"default"` for `None`.
    pub fn name(&self, provider: Option<ProviderId>) -> &str {
        provider
            .and_then(|id| self.providers.get(usize::from(id.0)))
            .map_or(DEFAULT_SECTION, |p| p.name.as_str())
    }

    /// The provider called `name`.
    pub fn provider_named(&self, name: &str) -> Option<ProviderId> {
        let i = self.providers.iter().position(|p| p.name == name)?;
        u16::try_from(i).ok().map(ProviderId)
    }

    /// The rule's `name` in its file, or its key there (`provider.yahoo.throttle[0]`).
    pub fn rule_name(&self, rule: RuleId) -> &str {
        self.rules
            .get(usize::from(rule.0))
            .map_or("", |r| r.name.as_str())
    }

    /// The providers, in match order.
    pub fn providers(&self) -> impl Iterator<Item = ProviderId> + '_ {
        (0..self.providers.len()).filter_map(|i| u16::try_from(i).ok().map(ProviderId))
    }

    /// The action of the first rule that matches a reply at a site of `provider`: the reply
    /// `code`, its RFC 3463 code if it has one (`"4.7.28"`), and its text (the first
    /// [`REPLY_TEXT_BYTES_MAX`] bytes are searched). `None`: no rule matches; the reply is an
    /// ordinary deferral or bounce.
    pub fn throttle(
        &self,
        provider: Option<ProviderId>,
        code: u16,
        enhanced: Option<&str>,
        text: &str,
    ) -> Option<ThrottleAction> {
        self.first_match(provider, code, text, |e| {
            enhanced.is_some_and(|got| e.matches(got))
        })
    }

    /// As [`Shaping::throttle`], for a reply `petrel_bounce` parsed (no formatting of its code).
    pub fn throttle_reply(
        &self,
        provider: Option<ProviderId>,
        reply: &petrel_bounce::Reply<'_>,
    ) -> Option<ThrottleAction> {
        self.first_match(provider, reply.code, reply.text, |e| {
            reply.enhanced.is_some_and(|got| e.matches_parts(got))
        })
    }

    fn first_match(
        &self,
        provider: Option<ProviderId>,
        code: u16,
        text: &str,
        enhanced_matches: impl Fn(&EnhancedPrefix) -> bool,
    ) -> Option<ThrottleAction> {
        let bytes = text.as_bytes();
        let bytes = &bytes[..bytes.len().min(REPLY_TEXT_BYTES_MAX)];
        let i = self.rules.iter().position(|r| {
            (r.provider.is_none() || r.provider == provider)
                && r.code.is_none_or(|c| c == code)
                && r.enhanced.as_ref().is_none_or(&enhanced_matches)
                && r.regex.as_ref().is_none_or(|re| re.is_match(bytes))
        })?;
        let r = &self.rules[i];
        Some(ThrottleAction {
            kind: r.kind,
            duration_ms: r.duration_ms,
            scope: r.scope,
            rule: RuleId(u16::try_from(i).ok()?),
        })
    }

    /// Throttle rules in force (all providers'), for tests and the start-up log.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}
