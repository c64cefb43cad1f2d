//! Sending-domain authentication (issue 14): every verified domain's DKIM, SPF and DMARC
//! records are looked up again on a schedule ([`check_task`]) and on demand
//! (`POST /v1/domains/{id}/check`), and a domain that fails is blocked by the engines.
//!
//! - DKIM: the TXT record at `<selector>._domainkey.<domain>` of the active key carries that
//!   key's public half (`p=`).
//! - SPF: the domain's `v=spf1` record includes `Settings::spf_include`, or its `ip4:`/`ip6:`
//!   mechanisms cover every address in `Settings::spf_addresses` (the engines' outbound
//!   addresses, when the operator lists them).
//! - DMARC: exactly one `v=DMARC1` record at `_dmarc.<domain>` (RFC 7489 §6.6.3: several are
//!   as good as none).
//!
//! Each check's outcome is stored per domain (`store::domain_checks`). The verdict (the first
//! failing check, in the order above) goes into the snapshot, so engines refuse the domain's
//! mail with `550 5.7.26`; only a change of verdict is a policy mutation (new version, audit
//! entry `domain.auth_failed` / `domain.auth_passed`), a check that confirms the verdict is a
//! plain write. A lookup that errs (timeout, SERVFAIL) keeps the previous verdict: a flaky
//! resolver must neither block a domain nor unblock one. The verdict is what is cached: engines
//! never look DNS up at send time, and the resolver itself caches nothing, so a record removed
//! shows at the next check.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::App;
use crate::audit::AuditEntry;
use crate::dns::{judge, DnsRecord, RecordCheck, RecordState};
use crate::store::domain_checks::{self, DomainCheck};
use crate::store::domains::{self as sd, Domain};
use crate::ControlError;

/// Default period of the scheduled re-check of every verified domain: one hour.
pub const DOMAIN_CHECK_INTERVAL_SECS_DEFAULT: u64 = 3_600;
/// The actor of audit entries made by the scheduled check.
pub const SCHEDULER_ACTOR: &str = "system:domain-auth";

/// One domain's authentication as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DomainAuthView {
    /// When the records were last looked up.
    pub checked_unix_ms: i64,
    /// False: the domain's mail is refused (`550 5.7.26`).
    pub passing: bool,
    /// The first failing check: `dkim`, `spf` or `dmarc`.
    pub failing_check: Option<String>,
    /// What it found: `missing` or `mismatch`.
    pub failure_detail: Option<String>,
    /// When the verdict last changed.
    pub changed_unix_ms: i64,
    /// Every record's state at the last lookup (`error`: the lookup failed, verdict kept).
    pub checks: Vec<RecordCheck>,
}

impl DomainAuthView {
    pub fn of(row: &DomainCheck) -> DomainAuthView {
        DomainAuthView {
            checked_unix_ms: row.checked_unix_ms,
            passing: row.failing_check.is_none(),
            failing_check: row.failing_check.clone(),
            failure_detail: row.failure_detail.clone(),
            changed_unix_ms: row.changed_unix_ms,
            checks: serde_json::from_str(&row.checks_json).unwrap_or_default(),
        }
    }
}

/// What a set of record checks means for the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// The first failing check (`dkim`, `spf`, `dmarc`) and its state (`missing`, `mismatch`).
    Fail {
        check: String,
        detail: String,
    },
    /// No check failed but one could not be looked up: keep the previous verdict.
    Unknown,
}

/// The order checks are judged (and named) in.
const CHECK_ORDER: [&str; 3] = ["dkim", "spf", "dmarc"];

fn state_name(s: RecordState) -> &'static str {
    match s {
        RecordState::Found => "found",
        RecordState::Missing => "missing",
        RecordState::Mismatch => "mismatch",
        RecordState::Error => "error",
    }
}

/// The verdict of `checks`: the first check (in DKIM, SPF, DMARC order) that is missing or
/// mismatched fails the domain; else an errored lookup leaves it unknown; else it passes. A
/// check absent from `checks` counts as missing.
pub fn verdict(checks: &[RecordCheck]) -> Verdict {
    let mut unknown = false;
    for purpose in CHECK_ORDER {
        let state = checks
            .iter()
            .find(|c| c.purpose == purpose)
            .map_or(RecordState::Missing, |c| c.state);
        match state {
            RecordState::Found => {}
            RecordState::Error => unknown = true,
            s => {
                return Verdict::Fail {
                    check: purpose.to_string(),
                    detail: state_name(s).to_string(),
                }
            }
        }
    }
    if unknown {
        Verdict::Unknown
    } else {
        Verdict::Pass
    }
}

/// The SPF check: a `v=spf1` record that includes `include`, or whose `ip4:`/`ip6:` mechanisms
/// (pass qualifier) cover every one of `addresses` (none given: the include is required).
pub fn judge_spf(txts: &[String], include: &str, addresses: &[IpAddr]) -> RecordState {
    let records: Vec<&String> = txts
        .iter()
        .filter(|t| {
            let t = t.trim_start();
            t.len() >= 6 && t[..6].eq_ignore_ascii_case("v=spf1")
        })
        .collect();
    let [record] = records.as_slice() else {
        // None, or several (RFC 7208 §4.5: a permerror), authorise nothing.
        return if records.is_empty() {
            RecordState::Missing
        } else {
            RecordState::Mismatch
        };
    };
    let mechanisms: Vec<&str> = record
        .split_whitespace()
        .skip(1)
        .filter(|m| !m.starts_with(['-', '~', '?']))
        .map(|m| m.trim_start_matches('+'))
        .collect();
    let included = mechanisms.iter().any(|m| {
        m.split_once(':').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("include") && v.eq_ignore_ascii_case(include)
        })
    });
    let networks: Vec<IpNet> = mechanisms
        .iter()
        .filter_map(|m| {
            let (k, v) = m.split_once(':')?;
            if !(k.eq_ignore_ascii_case("ip4") || k.eq_ignore_ascii_case("ip6")) {
                return None;
            }
            v.parse::<IpNet>()
                .ok()
                .or_else(|| v.parse::<IpAddr>().ok().map(IpNet::from))
        })
        .collect();
    let covered = !addresses.is_empty()
        && addresses
            .iter()
            .all(|a| networks.iter().any(|n| n.contains(a)));
    if included || covered {
        RecordState::Found
    } else {
        RecordState::Mismatch
    }
}

/// The DMARC check: exactly one record starting with the `v=DMARC1` tag.
pub fn judge_dmarc(txts: &[String]) -> RecordState {
    let n = txts
        .iter()
        .filter(|t| {
            let squashed: String = t.chars().filter(|c| !c.is_whitespace()).collect();
            squashed
                .split(';')
                .next()
                .is_some_and(|tag| tag.eq_ignore_ascii_case("v=DMARC1"))
        })
        .count();
    match n {
        0 => RecordState::Missing,
        1 => RecordState::Found,
        _ => RecordState::Mismatch,
    }
}

/// Looks `domain`'s records up and judges them (no store access).
pub async fn look_up(
    app: &App,
    domain: &Domain,
    active: Option<&sd::DkimKeyRow>,
) -> Vec<RecordCheck> {
    let settings = &app.settings;
    let mut out = Vec::with_capacity(CHECK_ORDER.len());
    match active {
        None => out.push(RecordCheck {
            purpose: "dkim".into(),
            name: domain.name.clone(),
            // No active key: nothing can match.
            state: RecordState::Missing,
        }),
        Some(key) => {
            let rec = DnsRecord {
                purpose: "dkim".into(),
                rtype: "TXT".into(),
                name: format!("{}._domainkey.{}", key.selector, domain.name),
                value: key.dns_txt.clone(),
                required: true,
            };
            let state = match app.dns.txt(&rec.name).await {
                Ok(txts) => judge(&rec, &txts, ""),
                Err(_) => RecordState::Error,
            };
            out.push(RecordCheck {
                purpose: "dkim".into(),
                name: rec.name.clone(),
                state,
            });
        }
    }
    let state = match app.dns.txt(&domain.name).await {
        Ok(txts) => judge_spf(&txts, &settings.spf_include, &settings.spf_addresses),
        Err(_) => RecordState::Error,
    };
    out.push(RecordCheck {
        purpose: "spf".into(),
        name: domain.name.clone(),
        state,
    });
    let name = format!("_dmarc.{}", domain.name);
    let state = match app.dns.txt(&name).await {
        Ok(txts) => judge_dmarc(&txts),
        Err(_) => RecordState::Error,
    };
    out.push(RecordCheck {
        purpose: "dmarc".into(),
        name,
        state,
    });
    out
}

/// Who asked for a check: recorded as the audit entry's actor when the verdict changes.
#[derive(Debug, Clone)]
pub struct Actor {
    pub actor: String,
    pub remote_addr: String,
}

impl Actor {
    pub fn scheduler() -> Actor {
        Actor {
            actor: SCHEDULER_ACTOR.into(),
            remote_addr: "local".into(),
        }
    }
}

/// The newest active, unretired key of the domain (the one that signs).
async fn active_key(app: &App, domain: &Domain) -> Result<Option<sd::DkimKeyRow>, ControlError> {
    let mut conn = app.db.conn().await?;
    let keys =
        sd::listed_keys(&mut conn, app.db.sealer(), &domain.tenant_id, &domain.id, 0).await?;
    Ok(keys
        .into_iter()
        .filter(|k| k.activated_unix_ms.is_some() && k.retired_unix_ms.is_none())
        .max_by_key(|k| k.activated_unix_ms))
}

/// The row a check of `checks` makes after `prev` (an unknown verdict keeps `prev`'s).
fn next_row(
    domain: &Domain,
    prev: Option<&DomainCheck>,
    checks: &[RecordCheck],
    now: i64,
) -> DomainCheck {
    let (failing_check, failure_detail) = match verdict(checks) {
        Verdict::Pass => (None, None),
        Verdict::Fail { check, detail } => (Some(check), Some(detail)),
        Verdict::Unknown => (
            prev.and_then(|p| p.failing_check.clone()),
            prev.and_then(|p| p.failure_detail.clone()),
        ),
    };
    let changed =
        prev.is_none_or(|p| p.failing_check != failing_check || p.failure_detail != failure_detail);
    DomainCheck {
        domain_id: domain.id.clone(),
        tenant_id: domain.tenant_id.clone(),
        checked_unix_ms: now,
        changed_unix_ms: match prev {
            Some(p) if !changed => p.changed_unix_ms,
            _ => now,
        },
        failing_check,
        failure_detail,
        checks_json: serde_json::to_string(checks).unwrap_or_else(|_| "[]".into()),
    }
}

/// Whether going from `prev` to `next` changes what engines enforce. A first check that passes
/// changes nothing (no row and a passing row both mean "not blocked").
fn verdict_changed(prev: Option<&DomainCheck>, next: &DomainCheck) -> bool {
    let (pc, pd) = prev.map_or((None, None), |p| {
        (p.failing_check.as_ref(), p.failure_detail.as_ref())
    });
    pc != next.failing_check.as_ref() || pd != next.failure_detail.as_ref()
}

/// Checks one domain now and stores the outcome (a policy mutation with an audit entry when the
/// verdict changed, else a plain write). Returns the stored row.
pub async fn check_domain(
    app: &App,
    domain: &Domain,
    by: &Actor,
) -> Result<DomainCheck, ControlError> {
    let key = active_key(app, domain).await?;
    let checks = look_up(app, domain, key.as_ref()).await;
    let prev = {
        let mut conn = app.db.conn().await?;
        domain_checks::get(&mut conn, &domain.tenant_id, &domain.id).await?
    };
    let next = next_row(domain, prev.as_ref(), &checks, app.now_ms());
    if !verdict_changed(prev.as_ref(), &next) {
        let mut tx = app.db.begin_write().await?;
        domain_checks::upsert(&mut tx, &next).await?;
        tx.commit().await?;
        return Ok(next);
    }
    let mut m = app.db.begin_mutation().await?;
    // Read again under the write lock: the entry's "before" is what the mutation replaces.
    let prev = domain_checks::get(m.conn(), &domain.tenant_id, &domain.id).await?;
    domain_checks::upsert(m.conn(), &next).await?;
    let summary = |c: Option<&DomainCheck>| {
        json!({
            "domain": domain.name,
            "failing_check": c.and_then(|c| c.failing_check.clone()),
            "failure_detail": c.and_then(|c| c.failure_detail.clone()),
        })
    };
    let entry = AuditEntry {
        tenant_id: Some(domain.tenant_id.clone()),
        actor: by.actor.clone(),
        remote_addr: by.remote_addr.clone(),
        action: if next.failing_check.is_some() {
            "domain.auth_failed".into()
        } else {
            "domain.auth_passed".into()
        },
        target: domain.id.clone(),
        at_unix_ms: app.now_ms(),
        before: Some(summary(prev.as_ref())),
        after: Some(summary(Some(&next))),
    };
    let v = m.commit(entry).await?;
    app.notify(v);
    tracing::info!(
        domain = %domain.name,
        failing_check = next.failing_check.as_deref().unwrap_or("none"),
        "sending domain authentication verdict changed"
    );
    Ok(next)
}

/// Checks every verified domain (loopback-verified development domains have no DNS to check).
/// Returns how many were checked; one domain's failure is logged and does not stop the round.
pub async fn check_all(app: &App) -> Result<usize, ControlError> {
    let domains = {
        let mut conn = app.db.conn().await?;
        sd::list_all(&mut conn).await?
    };
    let by = Actor::scheduler();
    let mut n = 0;
    for d in domains
        .iter()
        .filter(|d| d.verified && !d.verified_loopback)
    {
        match check_domain(app, d, &by).await {
            Ok(_) => n += 1,
            Err(e) => tracing::warn!(domain = %d.name, error = %e, "domain check failed"),
        }
    }
    Ok(n)
}

/// Runs [`check_all`] every `interval` until dropped (the first round one interval after start).
pub async fn check_task(app: App, interval: Duration) {
    let start = tokio::time::Instant::now() + interval;
    let mut tick = tokio::time::interval_at(start, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match check_all(&app).await {
            Ok(n) => tracing::debug!(domains = n, "sending domains re-checked"),
            Err(e) => tracing::warn!(error = %e, "sending domain re-check failed"),
        }
    }
}

#[cfg(test)]
#[path = "domain_auth_tests.rs"]
mod tests;
