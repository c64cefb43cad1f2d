//! Sending-domain authentication at end of data (issue 14): the From domain must be a domain of
//! the authenticated tenant, and a domain the control plane found failing its DNS checks
//! (DKIM, SPF, DMARC: `SendingDomain::auth_failure` in the snapshot) is refused, whoever sends
//! it. Both answer `550 5.7.26 <check> check failed for <domain>: <detail>` (RFC 7372's
//! "multiple authentication checks failed", the code large receivers use for unauthenticated
//! mail) and the `rejected` event carries `details {check, domain, detail}`.
//!
//! A tenant that allows unverified domains (development, trials) skips both checks for its own
//! domains. A config-file user (no tenant) and a trusted-network relay have no tenant to match,
//! so only the DNS verdict applies to them. A message without a From domain is left to the
//! message checks: there is nothing to authenticate.

use petrel_policy::CompiledPolicy;
use petrel_smtp::Reply;
use serde_json::{Map, Value};

/// The enhanced status of every refusal here (RFC 7372 §3.1).
pub const AUTH_FAILED_STATUS: (u8, u16, u16) = (5, 7, 26);
/// The check named when the From domain is not the tenant's.
pub const FROM_DOMAIN_CHECK: &str = "from_domain";

/// A refused From domain: the reply and the event's details.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthRefusal {
    pub reply: Reply,
    pub details: Map<String, Value>,
}

fn refusal(check: &str, domain: &str, detail: &str, checked_unix_ms: Option<u64>) -> AuthRefusal {
    let mut details = Map::new();
    details.insert("check".into(), check.into());
    details.insert("domain".into(), domain.into());
    details.insert("detail".into(), detail.into());
    if let Some(t) = checked_unix_ms {
        details.insert("checked_unix_ms".into(), t.into());
    }
    AuthRefusal {
        reply: Reply::new(
            550,
            AUTH_FAILED_STATUS,
            format!("{check} check failed for {domain}: {detail}"),
        ),
        details,
    }
}

/// Whether the message may go out with From domain `from_domain`. `identity_tenant`: None
/// without AUTH, `Some(None)` for a config-file user, `Some(Some(tenant))` for a tenant's
/// credential.
pub fn check_from(
    policy: &CompiledPolicy,
    identity_tenant: Option<Option<&str>>,
    from_domain: Option<&str>,
) -> Result<(), AuthRefusal> {
    let Some(from) = from_domain else {
        return Ok(());
    };
    let sending = policy.find_domain(from);
    if let Some(Some(tenant_id)) = identity_tenant {
        let lenient = policy
            .tenant(tenant_id)
            .is_some_and(|t| t.allow_unverified_domains);
        if lenient {
            return Ok(());
        }
        if sending.is_none_or(|d| d.tenant_id != tenant_id) {
            return Err(refusal(
                FROM_DOMAIN_CHECK,
                from,
                "not a sending domain of the authenticated tenant",
                None,
            ));
        }
    }
    let Some(domain) = sending else {
        return Ok(());
    };
    let Some(failure) = &domain.auth_failure else {
        return Ok(());
    };
    let owner_lenient = policy
        .tenant(&domain.tenant_id)
        .is_some_and(|t| t.allow_unverified_domains);
    if owner_lenient {
        return Ok(());
    }
    Err(refusal(
        &failure.check,
        &domain.name,
        &failure.detail,
        Some(failure.checked_unix_ms),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_policy::{AuthFailure, PolicySnapshot, SendingDomain, Tenant};

    fn tenant(id: &str, lenient: bool) -> Tenant {
        Tenant {
            id: id.into(),
            name: id.into(),
            suspended: false,
            messages_per_second_max: None,
            messages_per_day_max: None,
            allow_unverified_domains: lenient,
            new_tenant_cap: None,
            sending_disabled: None,
            reputation_warning: None,
            list_unsubscribe: false,
            arc_seal: false,
            egress_pool: None,
            delivery_weight: 1,
        }
    }

    fn domain(tenant_id: &str, name: &str, failing: Option<&str>) -> SendingDomain {
        SendingDomain {
            tenant_id: tenant_id.into(),
            name: name.into(),
            verified: true,
            messages_per_second_max: None,
            dkim_keys: vec![],
            sending_disabled: None,
            reputation_warning: None,
            auth_failure: failing.map(|c| AuthFailure {
                check: c.into(),
                detail: "missing".into(),
                checked_unix_ms: 42,
            }),
        }
    }

    fn policy() -> CompiledPolicy {
        let snap = PolicySnapshot {
            version: 1,
            tenants: vec![
                tenant("t1", false),
                tenant("t2", false),
                tenant("dev", true),
            ],
            domains: vec![
                domain("t1", "good.test", None),
                domain("t1", "bad.test", Some("dmarc")),
                domain("t2", "other.test", None),
                domain("dev", "dev.test", Some("spf")),
            ],
            ..PolicySnapshot::default()
        };
        CompiledPolicy::compile(snap).expect("valid policy")
    }

    #[test]
    fn a_tenant_sends_only_its_own_passing_domains() {
        let p = policy();
        let t1 = Some(Some("t1"));
        assert_eq!(check_from(&p, t1, Some("good.test")), Ok(()));
        // A subdomain counts as its registered sending domain.
        assert_eq!(check_from(&p, t1, Some("news.good.test")), Ok(()));
        let e = check_from(&p, t1, Some("other.test")).unwrap_err();
        assert_eq!((e.reply.code, e.reply.enhanced), (550, Some((5, 7, 26))));
        assert!(e
            .reply
            .to_string()
            .contains("from_domain check failed for other.test"));
        assert_eq!(e.details["check"], "from_domain");
        let e = check_from(&p, t1, Some("unknown.test")).unwrap_err();
        assert_eq!(e.details["domain"], "unknown.test");
        let e = check_from(&p, t1, Some("bad.test")).unwrap_err();
        assert!(
            e.reply
                .to_string()
                .contains("dmarc check failed for bad.test: missing"),
            "{}",
            e.reply
        );
        assert_eq!(e.details["check"], "dmarc");
        assert_eq!(e.details["checked_unix_ms"], 42);
        // No From domain: nothing to check here.
        assert_eq!(check_from(&p, t1, None), Ok(()));
    }

    #[test]
    fn a_failing_domain_is_refused_whoever_sends_it_unless_its_tenant_is_lenient() {
        let p = policy();
        // A trusted-network relay and a config-file user: the DNS verdict applies.
        assert_eq!(
            check_from(&p, None, Some("bad.test")).unwrap_err().details["check"],
            "dmarc"
        );
        assert!(check_from(&p, Some(None), Some("bad.test")).is_err());
        assert_eq!(check_from(&p, None, Some("good.test")), Ok(()));
        assert_eq!(check_from(&p, None, Some("elsewhere.test")), Ok(()));
        // A development tenant: its own failing domain and foreign domains pass.
        let dev = Some(Some("dev"));
        assert_eq!(check_from(&p, dev, Some("dev.test")), Ok(()));
        assert_eq!(check_from(&p, dev, Some("good.test")), Ok(()));
        assert_eq!(check_from(&p, None, Some("dev.test")), Ok(()));
    }
}
