//! DANE (RFC 7672) applied to each MX host a session connects to.
//!
//! The session's TLS policy is already decided per domain (configured, then MTA-STS in
//! `mta_sts.rs`); DANE is decided per host, from the validated TLSA records of
//! `_25._tcp.<host>` ([`petrel_outbound::Resolver::tlsa`], [`petrel_outbound::dane::decide`]):
//! - usable records: TLS is required and the certificate must match one of them, whatever the
//!   session's policy (RFC 8461 §2: DANE wins over MTA-STS, and a failing DANE check is never
//!   overridden by it). A mismatch, or a host without STARTTLS, is a failure of that host:
//!   the next host is tried, and when none is left the recipients are deferred with `4.7.5`
//!   ([`LocalFailure::DaneFailed`], `tls_required`, soft); nothing is sent in plain text.
//! - records, none usable: TLS without authentication is required (unless the session already
//!   requires verified TLS, which is stronger).
//! - a bogus answer, or a lookup that failed for a host whose addresses are signed: the host is
//!   not tried at all (RFC 7672 §2.2), and likewise ends in `4.7.5`.
//! - no secure records (an unsigned zone, or a validated absence): the session's policy.
//!
//! Static routes (a smart host) are exempt, as for MTA-STS: the operator chose that hop.
//! Each host's result goes through [`observed`], the one place TLS-RPT (policy type `tlsa`)
//! can record it.

use std::net::SocketAddr;
use std::sync::Arc;

use petrel_outbound::dane::{decide, DaneDecision, DaneFailure, Tlsa, DANE_VERIFICATIONS_TOTAL};
use petrel_outbound::{ClientConfig, ClientError, SmtpConnection, TlsMode};

use super::outcome::RcptResult;
use super::{Inner, SpoolAccess};
use crate::classify::LocalFailure;
use petrel_bounce::BounceClassifier;

/// The enhanced status of a DANE deferral (RFC 3463 X.7.5, cryptographic failure).
pub(super) const DANE_DEFERRAL_STATUS: (u8, u16, u16) = (4, 7, 5);

/// How to connect to one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostTls {
    /// The session's client configuration: DANE does not apply to this host.
    Session,
    /// TLS required, the certificate matched against these records (empty: encryption
    /// without authentication).
    Dane(Arc<[Tlsa]>),
    /// The host must not be tried.
    Refuse {
        failure: DaneFailure,
        reason: String,
    },
}

/// The host's plan from its DANE decision and whether the session already requires verified
/// TLS (`TlsPolicy::Required`, configured or by MTA-STS) (pure).
pub(super) fn host_tls(decision: DaneDecision, session_verified: bool, reason: &str) -> HostTls {
    match decision {
        DaneDecision::NotApplicable => HostTls::Session,
        DaneDecision::Authenticate(records) => HostTls::Dane(records),
        DaneDecision::EncryptOnly if session_verified => HostTls::Session,
        DaneDecision::EncryptOnly => HostTls::Dane(Vec::new().into()),
        DaneDecision::Refuse(failure) => HostTls::Refuse {
            failure,
            reason: reason.to_string(),
        },
    }
}

/// The plan for `host` of `domain`'s route: looks its TLSA records up when DANE is on and the
/// route is not static.
pub(super) async fn for_host<S: SpoolAccess>(
    inner: &Inner<S>,
    domain: &str,
    host: &str,
    session: TlsMode,
) -> HostTls {
    if !inner.resolver.dane_enabled() || inner.resolver.static_route(domain).is_some() {
        return HostTls::Session;
    }
    let lookup = inner.resolver.tlsa(host).await;
    let reason = match &lookup {
        petrel_outbound::dane::TlsaLookup::Bogus { reason }
        | petrel_outbound::dane::TlsaLookup::Failed { reason } => reason.clone(),
        _ => String::new(),
    };
    let plan = host_tls(decide(&lookup), session == TlsMode::Required, &reason);
    if let HostTls::Refuse { failure, reason } = &plan {
        tracing::warn!(domain, host, %reason, "MX host skipped: its TLSA answer is not usable");
        observed(domain, host, Err(*failure));
    }
    plan
}

/// The failure a connection attempt under DANE ended in, if it is DANE's to report: a TLS
/// failure (certificate matching no record: `tlsa-invalid`; no STARTTLS or a failed
/// handshake: `dane-required`). Other failures (refused, timeout) are ordinary ones.
pub(super) fn failure_of(e: &ClientError) -> Option<DaneFailure> {
    match e {
        // rustls's words for a certificate the verifier refused.
        ClientError::TlsRequired { reason } if reason.contains("invalid peer certificate") => {
            Some(DaneFailure::TlsaInvalid)
        }
        ClientError::TlsRequired { .. } | ClientError::Tls { .. } => {
            Some(DaneFailure::DaneRequired)
        }
        _ => None,
    }
}

/// Connects to `addr` of `host` under the host's plan (`Some`: DANE with these records), and
/// records a DANE handshake's result ([`observed`]).
pub(super) async fn connect(
    addr: SocketAddr,
    host: &str,
    client: &ClientConfig,
    domain: &str,
    plan: Option<&Arc<[Tlsa]>>,
) -> Result<SmtpConnection, ClientError> {
    let Some(tlsa) = plan else {
        return SmtpConnection::connect(addr, host, client).await;
    };
    let result = SmtpConnection::connect_dane(addr, host, client, tlsa.clone()).await;
    match &result {
        Ok(_) => observed(domain, host, Ok(())),
        Err(e) => {
            if let Some(failure) = failure_of(e) {
                observed(domain, host, Err(failure));
            }
        }
    }
    result
}

/// What a failed connection means for the recipients: a DANE deferral when DANE's check
/// failed, else the ordinary classification.
pub(super) fn connect_failed(
    domain: &str,
    host: &str,
    plan: Option<&Arc<[Tlsa]>>,
    e: &ClientError,
    classifier: &BounceClassifier,
) -> RcptResult {
    match plan.and_then(|_| failure_of(e)) {
        Some(failure) => deferral(domain, host, failure, &e.to_string()),
        None => RcptResult::client_error(e, classifier),
    }
}

/// The deferral of the recipients when DANE kept the mail from the last host tried.
pub(super) fn deferral(domain: &str, host: &str, failure: DaneFailure, detail: &str) -> RcptResult {
    RcptResult::Transient {
        status: Some(DANE_DEFERRAL_STATUS),
        text: format!(
            "{domain}: DANE ({}) for MX host {host}: {detail}",
            failure.result_type()
        ),
        bounce: LocalFailure::DaneFailed.classification(),
    }
}

/// Records the DANE result of one host: the metric and the log line. TLS-RPT (RFC 8460,
/// policy type `tlsa`, policy domain `host`) reads the same `Result`: `Ok` a successful
/// session, `Err` the failure's `result_type()`.
pub(super) fn observed(domain: &str, host: &str, result: Result<(), DaneFailure>) {
    let label = match result {
        Ok(()) => "success",
        Err(f) => f.result_type(),
    };
    if let Err(f) = result {
        tracing::warn!(domain, host, result = f.result_type(), "DANE check failed");
    }
    metrics::counter!(DANE_VERIFICATIONS_TOTAL, "result" => label).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsPolicy;
    use crate::shard::mta_sts;
    use petrel_outbound::dane::TlsaLookup;
    use petrel_outbound::mta_sts::Policy;
    use petrel_outbound::{Route, RouteHost};

    fn ee() -> Tlsa {
        Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![1; 32],
        }
    }

    fn pkix() -> Tlsa {
        Tlsa { usage: 1, ..ee() }
    }

    /// The TLS policy the session has once MTA-STS in `mode` (or none) is applied to a route
    /// whose one MX host the policy names, over `configured`.
    fn session_tls(mode: Option<&str>, configured: TlsPolicy) -> TlsPolicy {
        let route = Arc::new(Route {
            hosts: vec![RouteHost {
                name: "mx.a.test".into(),
                addrs: vec!["192.0.2.1:25".parse().expect("an address")],
            }],
        });
        let policy = mode.map(|m| {
            let text = format!("version: STSv1\nmode: {m}\nmx: mx.a.test\nmax_age: 3600\n");
            Policy::parse(text.as_bytes()).expect("a policy")
        });
        mta_sts::apply("a.test", &route, policy.as_ref(), configured)
            .expect("applied")
            .tls
    }

    fn plan(lookup: TlsaLookup, session: TlsPolicy) -> HostTls {
        host_tls(decide(&lookup), session == TlsPolicy::Required, "why")
    }

    #[test]
    fn the_precedence_of_dane_mta_sts_and_the_configured_policy() {
        let secure = || TlsaLookup::Secure(vec![ee()].into());
        let unusable = || TlsaLookup::Secure(vec![pkix()].into());
        let bogus = || TlsaLookup::Bogus { reason: "x".into() };
        let refused = HostTls::Refuse {
            failure: DaneFailure::DnssecInvalid,
            reason: "why".into(),
        };
        let authenticate = HostTls::Dane(vec![ee()].into());
        let encrypt_only = HostTls::Dane(Vec::new().into());
        use TlsPolicy::{Disabled, Opportunistic, Required};
        // (MTA-STS mode, configured policy) -> the session's policy; then each lookup.
        for (mode, configured, session) in [
            (None, Opportunistic, Opportunistic),
            (None, Disabled, Disabled),
            (None, Required, Required),
            (Some("testing"), Opportunistic, Opportunistic),
            (Some("enforce"), Opportunistic, Required),
            (Some("enforce"), Disabled, Required),
        ] {
            let tls = session_tls(mode, configured);
            assert_eq!(tls, session, "{mode:?} over {configured:?}");
            // Validated, usable TLSA records win over everything.
            assert_eq!(plan(secure(), tls), authenticate, "{mode:?} {configured:?}");
            // A bogus or failed answer refuses the host, whatever MTA-STS says.
            assert_eq!(plan(bogus(), tls), refused);
            let failed = TlsaLookup::Failed { reason: "x".into() };
            assert_eq!(plan(failed, tls), refused);
            // No secure records: MTA-STS, else the configured policy, decides.
            assert_eq!(plan(TlsaLookup::Insecure, tls), HostTls::Session);
            assert_eq!(plan(TlsaLookup::NoRecords, tls), HostTls::Session);
            // Only unusable records: at least encryption; verified TLS when already required.
            let expected = if tls == Required {
                HostTls::Session
            } else {
                encrypt_only.clone()
            };
            assert_eq!(plan(unusable(), tls), expected);
        }
    }

    #[test]
    fn client_errors_in_tls_rpt_terms() {
        let mismatch = ClientError::TlsRequired {
            reason: "invalid peer certificate: ApplicationVerificationFailure".into(),
        };
        assert_eq!(failure_of(&mismatch), Some(DaneFailure::TlsaInvalid));
        let no_starttls = ClientError::TlsRequired {
            reason: "mx.a.test does not offer STARTTLS".into(),
        };
        assert_eq!(failure_of(&no_starttls), Some(DaneFailure::DaneRequired));
        let refused = ClientError::Connect {
            addr: "192.0.2.1:25".parse().expect("an address"),
            kind: std::io::ErrorKind::ConnectionRefused,
            reason: "refused".into(),
        };
        assert_eq!(
            failure_of(&refused),
            None,
            "no TLS happened: an ordinary failure"
        );
    }

    #[test]
    fn a_dane_deferral_is_4_7_5_tls_required_and_soft() {
        match deferral("a.test", "mx.a.test", DaneFailure::TlsaInvalid, "no match") {
            RcptResult::Transient {
                status,
                text,
                bounce,
            } => {
                assert_eq!(status, Some((4, 7, 5)));
                assert!(text.contains("tlsa-invalid"), "{text}");
                assert_eq!(bounce.category, petrel_bounce::Category::TlsRequired);
                assert_eq!(bounce.class, petrel_bounce::BounceClass::Soft);
            }
            other => panic!("a deferral: {other:?}"),
        }
    }
}
