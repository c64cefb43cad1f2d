//! MTA-STS (RFC 8461) applied to one delivery session: which MX hosts it may use and how it
//! must speak TLS to them.
//!
//! The decision is [`apply`], pure: a route, the destination's policy (or none) and the
//! configured TLS policy in; the route and TLS policy to use, or a refusal, out.
//! - `enforce`: only MX hosts that match the policy (RFC 8461 §4.1) stay, in their order, and
//!   TLS is required with a certificate that validates (web PKI plus the configured extra roots)
//!   for the MX host name (§4.2: `TlsPolicy::Required`, whose client verifies chain and name).
//!   When no host matches, nothing is tried: every ready recipient is deferred with
//!   [`LocalFailure::MtaStsNoMatchingMx`] (`4.7.5`, `tls_required`, soft), never bounced and
//!   never sent in plain text (§5).
//! - `testing`: delivery goes on as without a policy; a mismatch is logged and counted (TLS-RPT
//!   reports will come from here).
//! - `none`, or no policy: unchanged.
//!
//! [`route_under_policy`] asks the shard's `MtaSts` service for the policy; static routes (a
//! smart host) are left alone: the operator chose that hop, and its name is an address.
//! A connection under an enforced policy is never shared with another domain, and a domain
//! whose cached policy is enforced never rides another domain's connection ([`may_share`]).

use std::sync::Arc;

use petrel_outbound::mta_sts::{Mode, Policy};
use petrel_outbound::Route;

use super::outcome::RcptResult;
use super::{Inner, SpoolAccess};
use crate::classify::LocalFailure;
use crate::config::TlsPolicy;

/// The enhanced status of a deferral under an enforced policy (RFC 3463 X.7.5, cryptographic
/// failure: the policy forbids every host we could use).
pub(super) const MTA_STS_DEFERRAL_STATUS: (u8, u16, u16) = (4, 7, 5);

/// A session's route and TLS policy once the destination's MTA-STS policy is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Applied {
    /// Where to connect: the resolved route, or (enforce) its hosts that match the policy.
    pub route: Arc<Route>,
    /// The TLS policy of the session's connections.
    pub tls: TlsPolicy,
    /// An enforced policy applies: the connection carries this domain only.
    pub enforced: bool,
    /// MX hosts of the resolved route that the policy does not name (0 without a policy).
    pub mismatched: usize,
    /// The policy's mode, `None` without a policy.
    pub mode: Option<Mode>,
}

/// Why a session may not deliver at all under the destination's policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(super) enum StsRefusal {
    /// Enforce mode, and none of the route's MX hosts matches the policy's `mx` patterns.
    #[error("{domain}: no MX host matches its MTA-STS policy (mode enforce; hosts: {hosts})")]
    NoMatchingMx { domain: String, hosts: String },
}

impl StsRefusal {
    /// The deferral every ready recipient of the domain gets.
    pub(super) fn result(&self) -> RcptResult {
        let failure = match self {
            StsRefusal::NoMatchingMx { .. } => LocalFailure::MtaStsNoMatchingMx,
        };
        RcptResult::Transient {
            status: Some(MTA_STS_DEFERRAL_STATUS),
            text: self.to_string(),
            bounce: failure.classification(),
        }
    }
}

/// The route and TLS policy to use for `domain` under `policy` (see the module docs).
pub(super) fn apply(
    domain: &str,
    route: &Arc<Route>,
    policy: Option<&Policy>,
    tls: TlsPolicy,
) -> Result<Applied, StsRefusal> {
    let unchanged = |mismatched, mode| Applied {
        route: route.clone(),
        tls,
        enforced: false,
        mismatched,
        mode,
    };
    let Some(policy) = policy else {
        return Ok(unchanged(0, None));
    };
    let matches = |name: &str| policy.matches_mx(name);
    let mismatched = route.hosts.iter().filter(|h| !matches(&h.name)).count();
    match policy.mode {
        Mode::None => Ok(unchanged(0, Some(Mode::None))),
        Mode::Testing => Ok(unchanged(mismatched, Some(Mode::Testing))),
        Mode::Enforce => {
            if mismatched == route.hosts.len() {
                let hosts: Vec<&str> = route.hosts.iter().map(|h| h.name.as_str()).collect();
                return Err(StsRefusal::NoMatchingMx {
                    domain: domain.to_string(),
                    hosts: hosts.join(", "),
                });
            }
            let route = if mismatched == 0 {
                route.clone()
            } else {
                let hosts = route
                    .hosts
                    .iter()
                    .filter(|h| matches(&h.name))
                    .cloned()
                    .collect();
                Arc::new(Route { hosts })
            };
            Ok(Applied {
                route,
                tls: TlsPolicy::Required,
                enforced: true,
                mismatched,
                mode: Some(Mode::Enforce),
            })
        }
    }
}

/// A smart host under the destination's policy (`smart_host_mta_sts`). The operator chose
/// that hop, so the policy's MX names are not matched against it; but under `enforce` the hop
/// is TLS verified for the smart host's name (its `tls_name`, else its address) and carries
/// this domain only, so mail the recipient domain wants protected never crosses it in plain
/// text or to an impostor.
pub(super) fn via_smart_host(
    route: &Arc<Route>,
    policy: Option<&Policy>,
    tls: TlsPolicy,
) -> Applied {
    let mode = policy.map(|p| p.mode);
    let enforced = mode == Some(Mode::Enforce);
    Applied {
        route: route.clone(),
        tls: if enforced { TlsPolicy::Required } else { tls },
        enforced,
        mismatched: 0,
        mode,
    }
}

/// [`apply`] with the policy the shard's MTA-STS service gives for `domain` (none when the
/// service is off, or the route is static and `smart_host_mta_sts` is off; [`via_smart_host`]
/// when it is on), logged and counted.
pub(super) async fn route_under_policy<S: SpoolAccess>(
    inner: &Inner<S>,
    domain: &str,
    route: &Arc<Route>,
    tls: TlsPolicy,
) -> Result<Applied, StsRefusal> {
    let smart_host = inner.resolver.static_route(domain).is_some();
    let policy = match &inner.mta_sts {
        Some(sts) if !smart_host || inner.cfg.smart_host_mta_sts => sts.policy_for(domain).await,
        _ => None,
    };
    let applied = if smart_host {
        Ok(via_smart_host(route, policy.as_deref(), tls))
    } else {
        apply(domain, route, policy.as_deref(), tls)
    };
    let (mode, outcome) = match &applied {
        Ok(Applied { mode: None, .. }) => return applied,
        Ok(a) if smart_host => (a.mode, "smart_host"),
        Ok(a) if a.mismatched == 0 => (a.mode, "all_mx_match"),
        Ok(a) => {
            tracing::info!(
                domain,
                mode = ?a.mode,
                mismatched = a.mismatched,
                hosts = route.hosts.len(),
                "MX hosts outside the domain's MTA-STS policy"
            );
            (a.mode, "some_mx_outside")
        }
        Err(e) => {
            tracing::warn!(error = %e, "delivery deferred by MTA-STS");
            (Some(Mode::Enforce), "no_mx_match")
        }
    };
    let mode = mode.map_or("none", Mode::as_str);
    metrics::counter!("petrel_delivery_mta_sts_sessions_total", "mode" => mode, "outcome" => outcome)
        .increment(1);
    applied
}

/// Whether a connection of the session serving a domain (`enforced`: under an enforced
/// policy) may carry `other`: never from an enforced session, and never a domain whose cached
/// policy is enforced (it gets a session of its own, which applies the policy).
pub(super) fn may_share<S: SpoolAccess>(inner: &Inner<S>, enforced: bool, other: &str) -> bool {
    if enforced {
        return false;
    }
    let Some(sts) = &inner.mta_sts else {
        return true;
    };
    !sts.cached_policy(other)
        .is_some_and(|c| c.policy.is_enforced())
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_outbound::RouteHost;

    fn route(names: &[&str]) -> Arc<Route> {
        let hosts = names
            .iter()
            .enumerate()
            .map(|(i, n)| RouteHost {
                name: n.to_string(),
                addrs: vec![format!("192.0.2.{}:25", i + 1).parse().expect("an address")],
            })
            .collect();
        Arc::new(Route { hosts })
    }

    fn policy(mode: &str) -> Policy {
        let text = format!(
            "version: STSv1\nmode: {mode}\nmx: mx1.a.test\nmx: *.mx.a.test\nmax_age: 3600\n"
        );
        Policy::parse(text.as_bytes()).expect("a policy")
    }

    #[test]
    fn no_policy_or_mode_none_changes_nothing() {
        let r = route(&["evil.test"]);
        for p in [None, Some(policy("none"))] {
            let a = apply("a.test", &r, p.as_ref(), TlsPolicy::Opportunistic).expect("applied");
            assert!(Arc::ptr_eq(&a.route, &r));
            assert_eq!(a.tls, TlsPolicy::Opportunistic);
            assert!(!a.enforced);
            assert_eq!(a.mismatched, 0);
        }
    }

    #[test]
    fn enforce_keeps_the_matching_hosts_in_order_and_requires_verified_tls() {
        let r = route(&["evil.test", "b.mx.a.test", "mx1.a.test", "a.b.mx.a.test"]);
        let p = policy("enforce");
        let a = apply("a.test", &r, Some(&p), TlsPolicy::Opportunistic).expect("applied");
        let names: Vec<&str> = a.route.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["b.mx.a.test", "mx1.a.test"]);
        assert_eq!(a.route.hosts[0].addrs, r.hosts[1].addrs);
        assert_eq!(a.tls, TlsPolicy::Required);
        assert!(a.enforced);
        assert_eq!(a.mismatched, 2);
        // Even a domain configured for plain text gets verified TLS under an enforced policy.
        let a = apply(
            "a.test",
            &route(&["mx1.a.test"]),
            Some(&p),
            TlsPolicy::Disabled,
        )
        .expect("applied");
        assert_eq!(a.tls, TlsPolicy::Required);
        assert_eq!(a.mismatched, 0);
    }

    #[test]
    fn enforce_without_a_matching_host_defers_with_4_7_5() {
        let r = route(&["evil.test", "mx.a.test"]);
        let e = apply(
            "a.test",
            &r,
            Some(&policy("enforce")),
            TlsPolicy::Opportunistic,
        )
        .expect_err("refused");
        assert!(matches!(e, StsRefusal::NoMatchingMx { .. }));
        let text = e.to_string();
        assert!(text.contains("evil.test, mx.a.test"), "{text}");
        match e.result() {
            RcptResult::Transient { status, bounce, .. } => {
                assert_eq!(status, Some((4, 7, 5)));
                assert_eq!(
                    bounce.category,
                    petrel_bounce::Category::TlsRequired,
                    "events and DSNs say why"
                );
                assert_eq!(bounce.class, petrel_bounce::BounceClass::Soft);
            }
            other => panic!("a deferral, never a bounce: {other:?}"),
        }
    }

    #[test]
    fn a_smart_host_under_enforce_needs_verified_tls_and_no_mx_match() {
        let r = route(&["192.0.2.7"]);
        let a = via_smart_host(&r, Some(&policy("enforce")), TlsPolicy::Opportunistic);
        assert!(Arc::ptr_eq(&a.route, &r), "the smart host stays the hop");
        assert_eq!(a.tls, TlsPolicy::Required);
        assert!(a.enforced, "its connection carries this domain only");
        assert_eq!((a.mismatched, a.mode), (0, Some(Mode::Enforce)));
        for p in [Some(policy("testing")), Some(policy("none")), None] {
            let a = via_smart_host(&r, p.as_ref(), TlsPolicy::Opportunistic);
            assert_eq!(a.tls, TlsPolicy::Opportunistic);
            assert!(!a.enforced);
        }
    }

    #[test]
    fn testing_delivers_as_before_and_reports_the_mismatch() {
        let r = route(&["evil.test", "mx1.a.test"]);
        let a = apply(
            "a.test",
            &r,
            Some(&policy("testing")),
            TlsPolicy::Opportunistic,
        )
        .expect("applied");
        assert!(Arc::ptr_eq(&a.route, &r));
        assert_eq!(a.tls, TlsPolicy::Opportunistic);
        assert!(!a.enforced);
        assert_eq!((a.mismatched, a.mode), (1, Some(Mode::Testing)));
    }
}
