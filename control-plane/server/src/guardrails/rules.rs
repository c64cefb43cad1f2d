//! The guardrails' rules, pure (time and rows passed in): from the hourly buckets of a rolling
//! window, each tenant's and each sending domain's bounce rate (hard bounces / sent) and
//! complaint rate (complaints / sent), and the level changes they call for.
//!
//! Which scope is disabled: a sending domain whose own rates pass a threshold is disabled by
//! itself (the rates are that domain's; the tenant's other domains keep sending). The tenant as
//! a whole is disabled when its rates, over the mail of its domains that are still enabled
//! (and mail without a sending domain), pass a threshold. Below the minimum volume nothing is
//! warned or disabled (a rate of 1 bounce in 3 messages says nothing), and a warning clears.
//! `disabled` is sticky: only an operator's re-enable clears it (and sets a baseline, so the
//! mail that disabled the scope does not disable it again at the next check).
//!
//! Rates are integers in parts per million, so thresholds compare exactly. The window is made
//! of whole hourly buckets: it starts at the bucket holding `now - window`, so it spans up to
//! one hour more than `window_ms`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::store::events::bucket_start;
use crate::store::guardrails::{BaselineRow, BucketRow, StateRow};

/// Parts per million in 100 %.
pub const PPM: i64 = 1_000_000;
/// A warning clears once its rate falls below this share of the warning level, percent, so a
/// rate hovering at the warning level does not warn at every check.
pub const WARNING_CLEAR_PERCENT: i64 = 90;

/// The thresholds (settings; see `GuardSettings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub window_ms: i64,
    /// Fewest messages sent in the window before a rate counts.
    pub min_volume: i64,
    pub bounce_rate_max_ppm: i64,
    pub complaint_rate_max_ppm: i64,
    /// A warning at this share of a threshold, percent (80).
    pub warning_percent: i64,
}

impl Thresholds {
    pub fn max_ppm(&self, m: Metric) -> i64 {
        match m {
            Metric::BounceRate => self.bounce_rate_max_ppm,
            Metric::ComplaintRate => self.complaint_rate_max_ppm,
        }
    }

    pub fn warning_ppm(&self, m: Metric) -> i64 {
        self.max_ppm(m).saturating_mul(self.warning_percent) / 100
    }

    /// The window's first bucket at `now_ms`.
    pub fn window_start(&self, now_ms: i64) -> i64 {
        bucket_start(now_ms.saturating_sub(self.window_ms))
    }

    pub fn window_hours(&self) -> i64 {
        (self.window_ms + 3_599_999) / 3_600_000
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    BounceRate,
    ComplaintRate,
}

impl Metric {
    pub const ALL: [Metric; 2] = [Metric::BounceRate, Metric::ComplaintRate];

    /// The stored and event name (`details.metric`).
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::BounceRate => "bounce_rate",
            Metric::ComplaintRate => "complaint_rate",
        }
    }

    pub fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.as_str() == s)
    }

    fn label(self) -> &'static str {
        match self {
            Metric::BounceRate => "bounce rate",
            Metric::ComplaintRate => "complaint rate",
        }
    }
}

/// A scope's standing for one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Ok,
    Warned,
    Disabled,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warned => "warned",
            Level::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Level {
        match s {
            "warned" => Level::Warned,
            "disabled" => Level::Disabled,
            _ => Level::Ok,
        }
    }
}

/// Counters of one scope over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub sent: i64,
    pub bounced_hard: i64,
    pub complained: i64,
}

impl Counts {
    fn add(&mut self, sent: i64, bounced_hard: i64, complained: i64) {
        self.sent = self.sent.saturating_add(sent);
        self.bounced_hard = self.bounced_hard.saturating_add(bounced_hard);
        self.complained = self.complained.saturating_add(complained);
    }

    fn minus(self, b: &BaselineRow) -> Counts {
        Counts {
            sent: (self.sent - b.sent).max(0),
            bounced_hard: (self.bounced_hard - b.bounced_hard).max(0),
            complained: (self.complained - b.complained).max(0),
        }
    }

    /// The metric's rate in parts per million (0 without mail).
    pub fn rate_ppm(&self, m: Metric) -> i64 {
        let n = match m {
            Metric::BounceRate => self.bounced_hard,
            Metric::ComplaintRate => self.complained,
        };
        if self.sent <= 0 {
            return 0;
        }
        let r = i128::from(n) * i128::from(PPM) / i128::from(self.sent);
        i64::try_from(r).unwrap_or(i64::MAX)
    }
}

/// One level change the evaluation calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub tenant_id: String,
    /// A sending domain, or "" for the tenant.
    pub scope_domain: String,
    pub metric: Metric,
    pub from: Level,
    pub to: Level,
    pub rate_ppm: i64,
    pub threshold_ppm: i64,
    pub volume: i64,
    /// The warning or the disable reason engines show (empty for a change to `ok`).
    pub note: String,
}

/// A percentage of parts per million, with two decimals below 1 % (0.25%) and one above.
pub fn percent(ppm: i64) -> String {
    let pct = ppm as f64 / 10_000.0;
    if ppm < 10_000 {
        format!("{pct:.2}%")
    } else {
        format!("{pct:.1}%")
    }
}

/// What a level says, as engines show it: `bounce rate 8.5% nears 10.0%`, or
/// `bounce rate of news.example 15.0% over 10.0% in 24 h (120 sent)`.
pub fn note(th: &Thresholds, scope_domain: &str, m: Metric, level: Level, c: &Counts) -> String {
    let of = if scope_domain.is_empty() {
        String::new()
    } else {
        format!(" of {scope_domain}")
    };
    let (rate, max) = (percent(c.rate_ppm(m)), percent(th.max_ppm(m)));
    match level {
        Level::Ok => String::new(),
        Level::Warned => format!("{}{of} {rate} nears {max}", m.label()),
        Level::Disabled => format!(
            "{}{of} {rate} over {max} in {} h ({} sent)",
            m.label(),
            th.window_hours(),
            c.sent
        ),
    }
}

/// The level the counts call for (before stickiness and hysteresis).
fn target(th: &Thresholds, m: Metric, c: &Counts) -> Level {
    if c.sent < th.min_volume {
        return Level::Ok;
    }
    let rate = c.rate_ppm(m);
    if rate > th.max_ppm(m) {
        Level::Disabled
    } else if rate >= th.warning_ppm(m) {
        Level::Warned
    } else {
        Level::Ok
    }
}

/// The sending domain of `tenant` that owns `from_domain`: itself or its closest parent.
fn owner<'a>(domains: &'a HashSet<(&str, &str)>, tenant: &str, from: &'a str) -> Option<&'a str> {
    let mut candidate = from;
    loop {
        if domains.contains(&(tenant, candidate)) {
            return Some(candidate);
        }
        candidate = candidate.split_once('.')?.1;
    }
}

/// Sums of one scope, and the baselines to take off them once summed.
#[derive(Default)]
struct Acc<'a> {
    counts: Counts,
    /// Baselines whose bucket was seen (each once).
    minus: Vec<&'a BaselineRow>,
}

impl<'a> Acc<'a> {
    /// Adds a row unless it is before `baseline`'s bucket; remembers the baseline when the
    /// row is in its bucket.
    fn add(&mut self, r: &BucketRow, baseline: Option<&'a BaselineRow>) {
        if let Some(b) = baseline {
            if r.bucket_start_ms < b.bucket_start_ms {
                return;
            }
            if r.bucket_start_ms == b.bucket_start_ms
                && !self.minus.iter().any(|m| std::ptr::eq(*m, b))
            {
                self.minus.push(b);
            }
        }
        self.counts.add(r.sent, r.bounced_hard, r.complained);
    }

    fn total(&self) -> Counts {
        self.minus.iter().fold(self.counts, |c, b| c.minus(b))
    }
}

/// The changes the window calls for at `now_ms`.
///
/// `buckets`: the window's buckets of the tenants evaluated; `domains`: their sending domains
/// (tenant, name); `states`: their current levels; `baselines`: their re-enables.
pub fn evaluate(
    th: &Thresholds,
    now_ms: i64,
    buckets: &[BucketRow],
    domains: &[(String, String)],
    states: &[StateRow],
    baselines: &[BaselineRow],
) -> Vec<Change> {
    let start = th.window_start(now_ms);
    let domain_set: HashSet<(&str, &str)> = domains
        .iter()
        .map(|(t, d)| (t.as_str(), d.as_str()))
        .collect();
    let base: HashMap<(&str, &str), &BaselineRow> = baselines
        .iter()
        .map(|b| ((b.tenant_id.as_str(), b.scope_domain.as_str()), b))
        .collect();
    let mut current: HashMap<(&str, &str, Metric), Level> = HashMap::new();
    for s in states {
        if let Some(m) = Metric::parse(&s.metric) {
            current.insert(
                (s.tenant_id.as_str(), s.scope_domain.as_str(), m),
                Level::parse(&s.level),
            );
        }
    }
    let rows: Vec<(&BucketRow, Option<&str>)> = buckets
        .iter()
        .filter(|r| r.bucket_start_ms >= start)
        .map(|r| (r, owner(&domain_set, &r.tenant_id, &r.from_domain)))
        .collect();
    let mut per_domain: BTreeMap<(&str, &str), Acc> = BTreeMap::new();
    for (r, d) in &rows {
        if let Some(d) = *d {
            let scope = (r.tenant_id.as_str(), d);
            per_domain
                .entry(scope)
                .or_default()
                .add(r, base.get(&scope).copied());
        }
    }
    let mut changes = Vec::new();
    let mut disabled_domains: HashSet<(&str, &str)> = HashSet::new();
    // Domains first: their levels decide which mail the tenant's rates cover.
    let mut domain_scopes: BTreeSet<(&str, &str)> = per_domain.keys().copied().collect();
    domain_scopes.extend(
        current
            .keys()
            .filter(|k| !k.1.is_empty())
            .map(|k| (k.0, k.1)),
    );
    for scope in domain_scopes {
        let c = per_domain.get(&scope).map(Acc::total).unwrap_or_default();
        if decide(th, scope, &c, &current, &mut changes) {
            disabled_domains.insert(scope);
        }
    }
    // The tenant: the mail of its enabled domains (each from its own baseline on) and the
    // mail of no sending domain, from the tenant's baseline on.
    let mut per_tenant: BTreeMap<&str, Acc> = BTreeMap::new();
    for (r, d) in &rows {
        let t = r.tenant_id.as_str();
        if d.is_some_and(|d| disabled_domains.contains(&(t, d))) {
            continue;
        }
        let tenant_base = base.get(&(t, "")).copied();
        if tenant_base.is_some_and(|b| r.bucket_start_ms < b.bucket_start_ms) {
            continue;
        }
        let acc = per_tenant.entry(t).or_default();
        match d.and_then(|d| base.get(&(t, d)).copied()) {
            Some(domain_base) if r.bucket_start_ms < domain_base.bucket_start_ms => {}
            domain_base => {
                acc.add(r, domain_base);
                if let Some(b) = tenant_base {
                    let marker = BucketRow {
                        sent: 0,
                        bounced_hard: 0,
                        complained: 0,
                        ..BucketRow::clone(r)
                    };
                    acc.add(&marker, Some(b));
                }
            }
        }
    }
    let mut tenant_scopes: BTreeSet<&str> = per_tenant.keys().copied().collect();
    tenant_scopes.extend(current.keys().filter(|k| k.1.is_empty()).map(|k| k.0));
    for t in tenant_scopes {
        let c = per_tenant.get(t).map(Acc::total).unwrap_or_default();
        decide(th, (t, ""), &c, &current, &mut changes);
    }
    changes
}

/// The counts of one scope in `rows` (one bucket, for a re-enable's baseline): a domain's own
/// mail (its subdomains' too), or for the tenant ("") the mail of no domain in `disabled`.
pub fn scope_counts(
    rows: &[BucketRow],
    domains: &[(String, String)],
    tenant_id: &str,
    scope_domain: &str,
    disabled: &HashSet<String>,
) -> Counts {
    let domain_set: HashSet<(&str, &str)> = domains
        .iter()
        .map(|(t, d)| (t.as_str(), d.as_str()))
        .collect();
    let mut c = Counts::default();
    for r in rows.iter().filter(|r| r.tenant_id == tenant_id) {
        let d = owner(&domain_set, tenant_id, &r.from_domain);
        let counts = if scope_domain.is_empty() {
            d.is_none_or(|d| !disabled.contains(d))
        } else {
            d == Some(scope_domain)
        };
        if counts {
            c.add(r.sent, r.bounced_hard, r.complained);
        }
    }
    c
}

/// Pushes the changes of one scope; true when the scope is (or becomes) disabled.
fn decide(
    th: &Thresholds,
    scope: (&str, &str),
    c: &Counts,
    current: &HashMap<(&str, &str, Metric), Level>,
    changes: &mut Vec<Change>,
) -> bool {
    let mut disabled = false;
    for m in Metric::ALL {
        let from = current
            .get(&(scope.0, scope.1, m))
            .copied()
            .unwrap_or(Level::Ok);
        if from == Level::Disabled {
            disabled = true;
            continue;
        }
        let mut to = target(th, m, c);
        let rate = c.rate_ppm(m);
        if from == Level::Warned
            && to == Level::Ok
            && c.sent >= th.min_volume
            && rate * 100 >= th.warning_ppm(m) * WARNING_CLEAR_PERCENT
        {
            to = Level::Warned; // not far enough below the warning level to clear it
        }
        disabled |= to == Level::Disabled;
        if to != from {
            changes.push(Change {
                tenant_id: scope.0.to_string(),
                scope_domain: scope.1.to_string(),
                metric: m,
                from,
                to,
                rate_ppm: rate,
                threshold_ppm: th.max_ppm(m),
                volume: c.sent,
                note: note(th, scope.1, m, to, c),
            });
        }
    }
    disabled
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
