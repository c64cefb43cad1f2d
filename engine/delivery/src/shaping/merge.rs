//! Laying validated files over each other into one [`Shaping`].
//!
//! Files come highest priority first (the operator's, then the shipped one). A provider named in
//! several files takes each field from the highest file that sets it, and keeps the place of the
//! lowest file that names it; a provider new in a higher file is matched before the lower file's
//! providers (so an operator can carve a narrower provider out of a shipped pattern). Rules keep
//! file priority: all of a higher file's rules (its provider rules, then its global ones) come
//! before a lower file's.

use std::collections::HashSet;

use super::file::ParsedFile;
use super::{Provider, ProviderId, Rule, Shaping, ShapingError, BUILT_IN_LIMITS};
use super::{PROVIDERS_MAX, THROTTLE_RULES_MAX};

/// At most two files are merged (operator over shipped), each within the bounds: every index
/// fits the ids' `u16`.
const FILES_MAX: usize = 2;
const _: () = assert!(FILES_MAX * PROVIDERS_MAX <= u16::MAX as usize);
const _: () = assert!(FILES_MAX * THROTTLE_RULES_MAX <= u16::MAX as usize);

/// Merges `files` (highest priority first, at most [`FILES_MAX`]).
pub(crate) fn build(files: Vec<ParsedFile>) -> Result<Shaping, ShapingError> {
    debug_assert!(files.len() <= FILES_MAX);
    let default = files
        .iter()
        .fold(super::PartialLimits::default(), |acc, f| {
            acc.over(f.default)
        });
    let providers = providers(&files)?;
    let rules = rules(files, &providers);
    let default_limits = default.resolve(BUILT_IN_LIMITS);
    let providers = providers
        .into_iter()
        .map(|p| Provider {
            resolved: p.limits.resolve(default_limits),
            ..p
        })
        .collect();
    Ok(Shaping {
        default,
        default_limits,
        providers,
        rules,
    })
}

/// The providers in match order, their fields merged (limits not yet resolved).
fn providers(files: &[ParsedFile]) -> Result<Vec<Provider>, ShapingError> {
    let mut order: Vec<(usize, &str)> = Vec::new();
    let mut seen = HashSet::new();
    // A provider's place is that of the lowest file naming it; higher files' new ones go first.
    for (i, f) in files.iter().enumerate() {
        let below = |name: &str| {
            files[i + 1..]
                .iter()
                .any(|g| g.providers.iter().any(|p| p.name == name))
        };
        for p in &f.providers {
            if !below(&p.name) && seen.insert(p.name.as_str()) {
                order.push((i, p.name.as_str()));
            }
        }
    }
    order
        .into_iter()
        .map(|(_, name)| merged_provider(files, name))
        .collect()
}

fn merged_provider(files: &[ParsedFile], name: &str) -> Result<Provider, ShapingError> {
    let mut limits = super::PartialLimits::default();
    let mut mx = None;
    let mut first = None;
    for f in files {
        if let Some(p) = f.providers.iter().find(|p| p.name == name) {
            limits = limits.over(p.limits);
            if mx.is_none() {
                mx.clone_from(&p.mx);
            }
            first.get_or_insert((f.name.as_str(), p.line));
        }
    }
    let Some(mx) = mx else {
        let (file, line) = first.unwrap_or(("", 0));
        return Err(ShapingError::Invalid {
            file: file.to_string(),
            line,
            key: format!("provider.{name}.mx"),
            reason: "a provider the shipped file does not have needs `mx` patterns".to_string(),
        });
    };
    Ok(Provider {
        name: name.to_string(),
        mx,
        limits,
        resolved: BUILT_IN_LIMITS,
    })
}

/// Every rule in the order it is tried.
fn rules(files: Vec<ParsedFile>, providers: &[Provider]) -> Vec<Rule> {
    let id = |name: &str| {
        providers
            .iter()
            .position(|p| p.name == name)
            .and_then(|i| u16::try_from(i).ok())
            .map(ProviderId)
    };
    let mut out = Vec::new();
    for f in files {
        for p in f.providers {
            let provider = id(&p.name);
            out.extend(p.rules.into_iter().map(|r| Rule::from_parsed(r, provider)));
        }
        out.extend(f.rules.into_iter().map(|r| Rule::from_parsed(r, None)));
    }
    out
}

impl Rule {
    fn from_parsed(r: super::file::ParsedRule, provider: Option<ProviderId>) -> Rule {
        Rule {
            name: r.name,
            provider,
            code: r.code,
            enhanced: r.enhanced,
            regex: r.regex,
            kind: r.kind,
            duration_ms: r.duration_ms,
            scope: r.scope,
        }
    }
}
