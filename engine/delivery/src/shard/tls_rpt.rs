//! TLS-RPT recording for one delivery session (`crate::tls_rpt`): which policy the session
//! reports under, and one count per connection attempt that reached TLS or was refused by
//! the domain's policy.
//!
//! Not recorded: static routes (a smart host the operator chose is not the domain's MX, so
//! its TLS says nothing to the domain's owner), and connections made with TLS disabled.

use std::net::SocketAddr;
use std::sync::Arc;

use petrel_outbound::dane::{DaneFailure, Tlsa};
use petrel_outbound::{ClientError, SmtpConnection, TlsMode};

use super::{now_unix_ms, Inner, SpoolAccess};
use crate::tls_rpt::{
    classify, plaintext_result, FailureType, PolicyType, SessionPolicy, SessionResult,
};

/// The policy `domain`'s connections report under: its cached MTA-STS policy (fetched by
/// this session's `mta_sts::route_under_policy` just before), else none found; `None` when
/// nothing is recorded (no recorder, or a static route).
pub(super) fn session_policy<S: SpoolAccess>(
    inner: &Inner<S>,
    domain: &str,
) -> Option<Arc<SessionPolicy>> {
    inner.tls_rpt.get()?;
    if inner.resolver.static_route(domain).is_some() {
        return None;
    }
    let cached = inner.mta_sts.as_ref().and_then(|s| s.cached_policy(domain));
    Some(match cached {
        Some(c) => SessionPolicy::sts(domain, &c.policy),
        None => SessionPolicy::none_found(domain),
    })
}

/// Counts a session made without the domain's MTA-STS policy because fetching it failed lately
/// (`sts-policy-fetch-error`, `sts-policy-invalid`, `sts-webpki-invalid`; RFC 8460 §4.3.2.3):
/// one failure under an `sts` policy with no policy string, at the first MX host's name. The
/// session's connections are counted as usual, under no policy found.
pub(super) fn record_policy_fetch_failure<S: SpoolAccess>(
    inner: &Inner<S>,
    domain: &str,
    first_mx: &str,
) {
    let (Some(r), Some(sts)) = (inner.tls_rpt.get(), inner.mta_sts.as_ref()) else {
        return;
    };
    if inner.resolver.static_route(domain).is_some() || sts.cached_policy(domain).is_some() {
        return;
    }
    let Some(kind) = sts
        .fetch_failure(domain)
        .and_then(|k| FailureType::parse(k.result_type()))
    else {
        return;
    };
    let p = SessionPolicy::new(domain, PolicyType::Sts, Vec::new(), Vec::new());
    r.record(
        now_unix_ms(),
        &p,
        first_mx,
        None,
        SessionResult::Failure(kind),
    );
}

/// Counts a session refused before any connection because no MX host matches the domain's
/// enforced MTA-STS policy (one `validation-failure` under the first MX host's name).
pub(super) fn record_refusal<S: SpoolAccess>(
    inner: &Inner<S>,
    policy: Option<&Arc<SessionPolicy>>,
    first_mx: &str,
) {
    let (Some(r), Some(p)) = (inner.tls_rpt.get(), policy) else {
        return;
    };
    let result = SessionResult::Failure(FailureType::ValidationFailure);
    r.record(now_unix_ms(), p, first_mx, None, result);
}

/// Counts one connection attempt to `host` at `addr` (nothing when it failed before TLS, or
/// TLS was not wanted). Under DANE (`dane`: the host's TLSA records) the attempt is reported
/// under a `tlsa` policy, and a failed DANE check as `tlsa-invalid` or `dane-required`.
#[allow(clippy::too_many_arguments)]
pub(super) fn record_connect<S: SpoolAccess>(
    inner: &Inner<S>,
    policy: Option<&Arc<SessionPolicy>>,
    dane: Option<&Arc<[Tlsa]>>,
    tls: TlsMode,
    domain: &str,
    host: &str,
    addr: SocketAddr,
    result: Result<&SmtpConnection, &ClientError>,
) {
    let (Some(r), Some(p)) = (inner.tls_rpt.get(), policy) else {
        return;
    };
    if tls == TlsMode::Disabled && dane.is_none() {
        return;
    }
    let dane_failure = match (dane, result) {
        (Some(_), Err(e)) => super::dane::failure_of(e).and_then(dane_type),
        _ => None,
    };
    let outcome = match (result, dane_failure) {
        (_, Some(f)) => SessionResult::Failure(f),
        (Ok(conn), None) if conn.tls().is_some() => SessionResult::Success,
        (Ok(_), None) => plaintext_result(),
        (Err(e), None) => match classify(e) {
            Some(outcome) => outcome,
            None => return,
        },
    };
    let tlsa;
    let p = match dane {
        Some(records) => {
            tlsa = SessionPolicy::tlsa(domain, host, records);
            &tlsa
        }
        None => p,
    };
    r.record(now_unix_ms(), p, host, Some(addr.ip()), outcome);
}

/// Counts an MX host DANE kept the session from trying (its TLSA answer bogus, or its lookup
/// failed: `dnssec-invalid`).
pub(super) fn record_dane_refusal<S: SpoolAccess>(
    inner: &Inner<S>,
    policy: Option<&Arc<SessionPolicy>>,
    domain: &str,
    host: &str,
    failure: DaneFailure,
) {
    let (Some(r), Some(_), Some(f)) = (inner.tls_rpt.get(), policy, dane_type(failure)) else {
        return;
    };
    let p = SessionPolicy::tlsa(domain, host, &[]);
    r.record(now_unix_ms(), &p, host, None, SessionResult::Failure(f));
}

fn dane_type(f: DaneFailure) -> Option<FailureType> {
    FailureType::parse(f.result_type())
}
