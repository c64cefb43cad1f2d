//! One shaping file: its TOML schema (documented in the shipped `shaping.toml` and in
//! `docs/shaping.md`), validated into plain values. Merging files is `merge.rs`'s.

use std::collections::HashMap;
use std::path::Path;

use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use toml::Spanned;

use super::pattern::{EnhancedPrefix, HostPattern};
use super::{PartialLimits, ShapingError, ThrottleKind, ThrottleScope};

/// Largest shaping file read, in bytes: the shipped one is about 10 KiB.
pub const SHAPING_FILE_BYTES_MAX: u64 = 1 << 20;

/// Most providers in one file: each new site is matched against them in order.
pub const PROVIDERS_MAX: usize = 1_000;

/// Most MX patterns of one provider.
pub const MX_PATTERNS_PER_PROVIDER_MAX: usize = 64;

/// Most throttle rules in one file (global and per provider together): a negative reply is
/// checked against a site's rules in order, so the count bounds the work per reply.
pub const THROTTLE_RULES_MAX: usize = 1_000;

/// Longest throttle regex, in bytes: provider texts are a sentence; longer is a mistake.
pub const REGEX_LEN_BYTES_MAX: usize = 1_024;

/// The regex crate's compiled-size limit for one throttle regex, in bytes.
pub const REGEX_SIZE_BYTES_MAX: usize = 1 << 20;

/// Longest throttle duration, in seconds (7 days): longer is a mistake, an operator who means
/// it suspends the site by hand.
pub const THROTTLE_DURATION_SECS_MAX: u64 = 7 * 24 * 3_600;

/// Longest provider or rule name, in bytes: names are metric labels.
pub const NAME_BYTES_MAX: usize = 64;

/// The name reserved for the default section in a [`super::ShapingOverlay`].
pub const DEFAULT_SECTION: &str = "default";

/// A validated file.
#[derive(Debug, Clone)]
pub(crate) struct ParsedFile {
    /// What errors call the file.
    pub name: String,
    pub default: PartialLimits,
    /// In file order.
    pub providers: Vec<ParsedProvider>,
    /// The global rules, in file order.
    pub rules: Vec<ParsedRule>,
}

#[derive(Debug, Clone)]
pub(crate) struct ParsedProvider {
    pub name: String,
    /// `None`: not set here (a provider of a lower file keeps its patterns).
    pub mx: Option<Vec<HostPattern>>,
    pub limits: PartialLimits,
    pub rules: Vec<ParsedRule>,
    /// Line of the provider's table, for errors found while merging.
    pub line: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct ParsedRule {
    pub name: String,
    pub code: Option<u16>,
    pub enhanced: Option<EnhancedPrefix>,
    /// Case-insensitive, ASCII classes, over the reply text's bytes.
    pub regex: Option<Regex>,
    pub kind: ThrottleKind,
    pub duration_ms: u64,
    pub scope: ThrottleScope,
}

/// Reads and validates a file (at most [`SHAPING_FILE_BYTES_MAX`]).
pub(crate) fn read_file(path: &Path) -> Result<ParsedFile, ShapingError> {
    let file = path.display().to_string();
    let read_err = |source| ShapingError::Read {
        file: file.clone(),
        source,
    };
    let size_bytes = std::fs::metadata(path).map_err(read_err)?.len();
    if size_bytes > SHAPING_FILE_BYTES_MAX {
        return Err(ShapingError::FileTooLarge {
            file,
            size_bytes,
            max_bytes: SHAPING_FILE_BYTES_MAX,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    parse(&file, &text)
}

/// Parses and validates file text; `name` is what errors call the file.
pub(crate) fn parse(name: &str, text: &str) -> Result<ParsedFile, ShapingError> {
    if text.len() as u64 > SHAPING_FILE_BYTES_MAX {
        return Err(ShapingError::FileTooLarge {
            file: name.to_string(),
            size_bytes: text.len() as u64,
            max_bytes: SHAPING_FILE_BYTES_MAX,
        });
    }
    let raw: RawFile = toml::from_str(text).map_err(|e| ShapingError::Parse {
        file: name.to_string(),
        source: Box::new(e),
    })?;
    let cx = Cx { name, text };
    cx.bound("providers", raw.provider.len(), PROVIDERS_MAX)?;
    let rule_count = raw.throttle.len()
        + raw
            .provider
            .values()
            .map(|p| p.throttle.len())
            .sum::<usize>();
    cx.bound("throttle rules", rule_count, THROTTLE_RULES_MAX)?;

    let default = match &raw.default {
        Some(d) => cx.limits(
            d.get_ref().limits(),
            DEFAULT_SECTION,
            cx.line(d.span().start),
        )?,
        None => PartialLimits::default(),
    };
    // A map loses the file's order, and the order decides which provider matches first.
    let mut providers: Vec<(usize, String, RawProvider)> = raw
        .provider
        .into_iter()
        .map(|(pname, p)| (provider_line(text, &pname), pname, p))
        .collect();
    providers.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let providers = providers
        .into_iter()
        // Line 0 in errors: the provider has no header line of its own.
        .map(|(line, pname, p)| cx.provider(if line == usize::MAX { 0 } else { line }, pname, p))
        .collect::<Result<_, _>>()?;
    let rules = raw
        .throttle
        .into_iter()
        .enumerate()
        .map(|(i, r)| cx.rule(&format!("throttle[{i}]"), r))
        .collect::<Result<_, _>>()?;
    Ok(ParsedFile {
        name: name.to_string(),
        default,
        providers,
        rules,
    })
}

/// The file being validated: its name and text (for line numbers).
struct Cx<'a> {
    name: &'a str,
    text: &'a str,
}

impl Cx<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn invalid(&self, offset: usize, key: &str, reason: impl Into<String>) -> ShapingError {
        self.invalid_at(self.line(offset), key, reason)
    }

    fn invalid_at(&self, line: usize, key: &str, reason: impl Into<String>) -> ShapingError {
        ShapingError::Invalid {
            file: self.name.to_string(),
            line,
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn bound(&self, what: &'static str, count: usize, max: usize) -> Result<(), ShapingError> {
        if count > max {
            return Err(ShapingError::TooMany {
                file: self.name.to_string(),
                what,
                count,
                max,
            });
        }
        Ok(())
    }

    /// Counts and sizes must be at least 1; a rate of 0 means unlimited.
    fn limits(
        &self,
        l: PartialLimits,
        key: &str,
        line: usize,
    ) -> Result<PartialLimits, ShapingError> {
        let at_least_one = [
            ("connections_max", l.connections_max),
            ("messages_per_connection_max", l.messages_per_connection_max),
            (
                "recipients_per_transaction_max",
                l.recipients_per_transaction_max,
            ),
        ];
        for (field, value) in at_least_one {
            if value == Some(0) {
                return Err(self.invalid_at(line, &format!("{key}.{field}"), "must be at least 1"));
            }
        }
        Ok(l)
    }

    fn provider(
        &self,
        line: usize,
        pname: String,
        p: RawProvider,
    ) -> Result<ParsedProvider, ShapingError> {
        let key = format!("provider.{pname}");
        check_name(&pname).map_err(|r| self.invalid_at(line, &key, r))?;
        if pname == DEFAULT_SECTION {
            return Err(self.invalid_at(line, &key, "`default` is the default section's name"));
        }
        let limits = self.limits(p.limits(), &key, line)?;
        let mx = match p.mx {
            None => None,
            Some(list) => Some(self.mx(&key, line, list)?),
        };
        let rules = p
            .throttle
            .into_iter()
            .enumerate()
            .map(|(i, r)| self.rule(&format!("{key}.throttle[{i}]"), r))
            .collect::<Result<_, _>>()?;
        Ok(ParsedProvider {
            name: pname,
            mx,
            limits,
            rules,
            line,
        })
    }

    fn mx(
        &self,
        key: &str,
        line: usize,
        list: Vec<String>,
    ) -> Result<Vec<HostPattern>, ShapingError> {
        let key = format!("{key}.mx");
        if list.is_empty() {
            return Err(self.invalid_at(line, &key, "a provider needs at least one pattern"));
        }
        self.bound(
            "MX patterns in one provider",
            list.len(),
            MX_PATTERNS_PER_PROVIDER_MAX,
        )?;
        list.iter()
            .map(|t| {
                HostPattern::parse(t)
                    .map_err(|r| self.invalid_at(line, &key, format!("{t:?}: {r}")))
            })
            .collect()
    }

    fn rule(&self, key: &str, r: Spanned<RawRule>) -> Result<ParsedRule, ShapingError> {
        let offset = r.span().start;
        let r = r.into_inner();
        let name = match r.name {
            Some(n) => {
                check_name(&n).map_err(|why| self.invalid(offset, &format!("{key}.name"), why))?;
                n
            }
            None => key.to_string(),
        };
        if r.code.is_none() && r.enhanced.is_none() && r.regex.is_none() {
            return Err(self.invalid(offset, key, "a rule needs `code`, `enhanced` or `regex`"));
        }
        if let Some(code) = r.code {
            if !(200..=599).contains(&code) {
                return Err(self.invalid(
                    offset,
                    &format!("{key}.code"),
                    "an SMTP reply code is 200 to 599",
                ));
            }
        }
        let enhanced = match &r.enhanced {
            None => None,
            Some(t) => Some(EnhancedPrefix::parse(t).map_err(|why| {
                self.invalid(offset, &format!("{key}.enhanced"), format!("{t:?}: {why}"))
            })?),
        };
        let regex = match &r.regex {
            None => None,
            Some(pattern) => Some(self.regex(&format!("{key}.regex"), offset, pattern)?),
        };
        let kind = match (r.action, r.connections_max) {
            (RawAction::Suspend, None) => ThrottleKind::Suspend,
            (RawAction::Suspend, Some(_)) => {
                return Err(self.invalid(
                    offset,
                    &format!("{key}.connections_max"),
                    "only `narrow` takes a connection count",
                ));
            }
            (RawAction::Narrow, Some(n)) if n >= 1 => ThrottleKind::Narrow { connections_max: n },
            (RawAction::Narrow, _) => {
                return Err(self.invalid(
                    offset,
                    &format!("{key}.connections_max"),
                    "`narrow` needs connections_max of at least 1 (0 is `suspend`)",
                ));
            }
        };
        if r.duration_secs == 0 || r.duration_secs > THROTTLE_DURATION_SECS_MAX {
            return Err(self.invalid(
                offset,
                &format!("{key}.duration_secs"),
                format!("1 to {THROTTLE_DURATION_SECS_MAX} seconds"),
            ));
        }
        let scope = match r.scope {
            RawScope::Site => ThrottleScope::Site,
            RawScope::Tenant => ThrottleScope::Tenant,
        };
        if scope == ThrottleScope::Tenant && kind != ThrottleKind::Suspend {
            return Err(self.invalid(
                offset,
                &format!("{key}.scope"),
                "a site's connections are shared by its tenants: `narrow` is per site",
            ));
        }
        Ok(ParsedRule {
            name,
            code: r.code,
            enhanced,
            regex,
            kind,
            duration_ms: r.duration_secs * 1_000,
            scope,
        })
    }

    fn regex(&self, key: &str, offset: usize, pattern: &str) -> Result<Regex, ShapingError> {
        if pattern.len() > REGEX_LEN_BYTES_MAX {
            return Err(self.invalid(
                offset,
                key,
                format!(
                    "{} bytes, over the limit of {REGEX_LEN_BYTES_MAX}",
                    pattern.len()
                ),
            ));
        }
        // ASCII rules, as the bounce rules: reply text is ASCII, and a Unicode `\b` would take
        // the lazy DFA off its fast path.
        RegexBuilder::new(pattern)
            .case_insensitive(true)
            .unicode(false)
            .size_limit(REGEX_SIZE_BYTES_MAX)
            .build()
            .map_err(|e| ShapingError::BadRegex {
                file: self.name.to_string(),
                line: self.line(offset),
                key: key.to_string(),
                source: Box::new(e),
            })
    }
}

/// The line of the first table header under `provider.<name>` (`[provider.google]`,
/// `[[provider."google".throttle]]`); after every line when the provider is written some other
/// way (dotted keys, an inline table), which only moves it to the end of the match order.
fn provider_line(text: &str, name: &str) -> usize {
    let wanted = format!("provider.{name}");
    text.lines()
        .position(|l| {
            let Some(header) = l.trim_start().strip_prefix('[') else {
                return false;
            };
            let path: String = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .chars()
                .filter(|c| !matches!(c, '"' | '\'' | ' ' | '\t'))
                .collect();
            path == wanted || path.starts_with(&format!("{wanted}."))
        })
        .map_or(usize::MAX, |i| i + 1)
}

/// Names become metric labels: short, and of a plain alphabet.
fn check_name(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err("a name is 1 to 64 letters, digits, `-`, `_` or `.`")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    default: Option<Spanned<RawLimits>>,
    #[serde(default)]
    throttle: Vec<Spanned<RawRule>>,
    #[serde(default)]
    // Not `Spanned`: toml cannot span a table made only by its sub-tables
    // (`[[provider.x.throttle]]` alone); `provider_line` finds the line instead.
    provider: HashMap<String, RawProvider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    connections_max: Option<u32>,
    messages_per_connection_max: Option<u32>,
    messages_per_minute_max: Option<u32>,
    messages_per_hour_max: Option<u32>,
    recipients_per_transaction_max: Option<u32>,
}

impl RawLimits {
    fn limits(&self) -> PartialLimits {
        PartialLimits {
            connections_max: self.connections_max,
            messages_per_connection_max: self.messages_per_connection_max,
            messages_per_minute_max: self.messages_per_minute_max,
            messages_per_hour_max: self.messages_per_hour_max,
            recipients_per_transaction_max: self.recipients_per_transaction_max,
        }
    }
}

// The limits are spelled out again rather than flattened: serde's `flatten` and
// `deny_unknown_fields` do not work together, and a misspelt key must be an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    mx: Option<Vec<String>>,
    connections_max: Option<u32>,
    messages_per_connection_max: Option<u32>,
    messages_per_minute_max: Option<u32>,
    messages_per_hour_max: Option<u32>,
    recipients_per_transaction_max: Option<u32>,
    #[serde(default)]
    throttle: Vec<Spanned<RawRule>>,
    #[allow(dead_code)] // reason: documentation for people reading the file
    note: Option<String>,
}

impl RawProvider {
    fn limits(&self) -> PartialLimits {
        PartialLimits {
            connections_max: self.connections_max,
            messages_per_connection_max: self.messages_per_connection_max,
            messages_per_minute_max: self.messages_per_minute_max,
            messages_per_hour_max: self.messages_per_hour_max,
            recipients_per_transaction_max: self.recipients_per_transaction_max,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    code: Option<u16>,
    enhanced: Option<String>,
    regex: Option<String>,
    action: RawAction,
    connections_max: Option<u32>,
    duration_secs: u64,
    #[serde(default)]
    scope: RawScope,
    #[allow(dead_code)] // reason: documentation for people reading the file
    note: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawAction {
    Suspend,
    Narrow,
}

#[derive(Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "lowercase")]
enum RawScope {
    #[default]
    Site,
    Tenant,
}
