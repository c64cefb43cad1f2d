use std::net::IpAddr;
use std::sync::OnceLock;

use super::*;
use crate::snapshot::{DefaultLimits, DestinationLimit, DkimAlgorithm, DkimKey};
use crate::store::PolicyStore;

const PASSWORD: &str = "correct horse battery staple";

/// argon2 hashing is slow in debug builds: hash once for all tests.
fn phc() -> &'static str {
    static PHC: OnceLock<String> = OnceLock::new();
    PHC.get_or_init(|| auth::hash_password(PASSWORD).unwrap())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tenant(id: &str) -> Tenant {
    Tenant {
        id: id.into(),
        name: id.to_uppercase(),
        suspended: false,
        messages_per_second_max: None,
        messages_per_day_max: None,
        allow_unverified_domains: false,
        new_tenant_cap: None,
        sending_disabled: None,
        reputation_warning: None,
        list_unsubscribe: false,
        arc_seal: false,
        egress_pool: None,
        delivery_weight: 1,
    }
}

fn domain(tenant_id: &str, name: &str, verified: bool) -> SendingDomain {
    SendingDomain {
        tenant_id: tenant_id.into(),
        name: name.into(),
        verified,
        messages_per_second_max: None,
        dkim_keys: vec![],
        sending_disabled: None,
        reputation_warning: None,
        auth_failure: None,
    }
}

fn smtp(id: &str, tenant_id: &str, username: &str) -> Credential {
    Credential {
        id: id.into(),
        tenant_id: tenant_id.into(),
        kind: CredentialKind::Smtp,
        username: username.into(),
        prefix: "abcdefgh".into(),
        argon2_phc: phc().to_owned(),
        scopes: vec![SEND_SCOPE.into()],
        allowed_sender_domains: vec![],
        ip_allowlist: vec![],
        revoked: false,
    }
}

fn base(version: u64) -> PolicySnapshot {
    let mut limited = smtp("c2", "acme", "limited");
    limited.ip_allowlist = vec!["192.0.2.0/24".into(), "2001:db8::/32".into()];
    limited.allowed_sender_domains = vec!["news.acme.example".into()];
    PolicySnapshot {
        version,
        generated_unix_ms: 0,
        tenants: vec![tenant("acme"), tenant("other")],
        domains: vec![
            domain("acme", "acme.example", true),
            domain("acme", "news.acme.example", true),
            domain("acme", "trial.example", false),
            domain("other", "other.example", true),
        ],
        credentials: vec![smtp("c1", "acme", "acme"), limited],
        destination_limits: vec![DestinationLimit {
            domain: "gmail.com".into(),
            connections_max: Some(10),
            messages_per_second_max: None,
            tls_required: true,
        }],
        defaults: DefaultLimits {
            destination_messages_per_second_max: Some(100),
            ..Default::default()
        },
        return_path: Default::default(),
        deleted_tenants: Vec::new(),
        shaping: Vec::new(),
    }
}

fn who(credential_id: &str) -> AuthIdentity {
    AuthIdentity {
        tenant_id: "acme".into(),
        credential_id: credential_id.into(),
        username: if credential_id == "c1" {
            "acme"
        } else {
            "limited"
        }
        .into(),
    }
}

#[test]
fn right_password_ok_wrong_fails() {
    let p = CompiledPolicy::compile(base(1)).unwrap();
    assert!(p.auth_enabled());
    let id = p.verify_smtp("acme", PASSWORD, ip("203.0.113.9")).unwrap();
    assert_eq!(id, who("c1"));
    assert_eq!(
        p.verify_smtp("acme", "wrong", ip("203.0.113.9")),
        Err(AuthError::WrongPassword)
    );
    assert_eq!(
        p.verify_smtp("nobody", PASSWORD, ip("203.0.113.9")),
        Err(AuthError::UnknownUser)
    );
}

#[test]
fn success_is_cached_without_the_password_and_wrong_passwords_are_not() {
    let p = CompiledPolicy::compile(base(1)).unwrap();
    let peer = ip("203.0.113.9");
    assert!(p.verify_smtp_cached("acme", PASSWORD, peer).is_none());
    p.verify_smtp("acme", PASSWORD, peer).unwrap();
    assert_eq!(
        p.verify_smtp_cached("acme", PASSWORD, peer),
        Some(Ok(who("c1")))
    );
    let _ = p.verify_smtp("acme", "wrong", peer);
    assert!(p.verify_smtp_cached("acme", "wrong", peer).is_none());
    assert!(p
        .verify_smtp_cached("acme", "correct horse", peer)
        .is_none());
}

#[test]
fn a_credential_without_the_send_scope_is_refused_at_smtp_auth() {
    let dir = tempfile::tempdir().unwrap();
    let store = PolicyStore::load_or_empty(dir.path());
    let mut snap = base(1);
    snap.credentials[0].scopes = vec!["read".into()];
    store.apply(snap).unwrap();
    assert_eq!(
        store
            .current()
            .verify_smtp("acme", PASSWORD, ip("203.0.113.9")),
        Err(AuthError::NoSendScope)
    );
    // The same reply as any other failure: no oracle.
    assert_eq!(AuthError::NoSendScope.reply().0, 535);
}

#[test]
fn revoked_fails_at_once_even_when_cached() {
    let dir = tempfile::tempdir().unwrap();
    let store = PolicyStore::load_or_empty(dir.path());
    store.apply(base(1)).unwrap();
    let peer = ip("203.0.113.9");
    store.current().verify_smtp("acme", PASSWORD, peer).unwrap();
    assert!(store
        .current()
        .verify_smtp_cached("acme", PASSWORD, peer)
        .is_some_and(|r| r.is_ok()));

    let mut revoked = base(2);
    revoked.credentials[0].revoked = true;
    store.apply(revoked).unwrap();
    assert_eq!(
        store.current().verify_smtp("acme", PASSWORD, peer),
        Err(AuthError::Revoked)
    );
    // A session that authenticated before the revocation is refused at its next MAIL.
    assert_eq!(
        store.current().check_sender(&who("c1"), "a@acme.example"),
        Err(PolicyDenial::CredentialRevoked)
    );

    // Password changed (new hash): the old cached success no longer applies.
    let mut rotated = base(3);
    rotated.credentials[0].argon2_phc = auth::hash_password("new password").unwrap();
    store.apply(rotated).unwrap();
    let p = store.current();
    assert!(p.verify_smtp_cached("acme", PASSWORD, peer).is_none());
    assert_eq!(
        p.verify_smtp("acme", PASSWORD, peer),
        Err(AuthError::WrongPassword)
    );
    p.verify_smtp("acme", "new password", peer).unwrap();
}

#[test]
fn suspended_tenant_cannot_authenticate_or_send() {
    let mut s = base(1);
    s.tenants[0].suspended = true;
    let p = CompiledPolicy::compile(s).unwrap();
    assert_eq!(
        p.verify_smtp("acme", PASSWORD, ip("203.0.113.9")),
        Err(AuthError::TenantSuspended)
    );
    let denial = p.check_sender(&who("c1"), "a@acme.example").unwrap_err();
    assert_eq!(denial.reply().0, 550);
    assert_eq!(denial.reply().1, (5, 7, 1));
}

#[test]
fn ip_allowlist() {
    let p = CompiledPolicy::compile(base(1)).unwrap();
    p.verify_smtp("limited", PASSWORD, ip("192.0.2.77"))
        .unwrap();
    p.verify_smtp("limited", PASSWORD, ip("::ffff:192.0.2.78"))
        .unwrap();
    p.verify_smtp("limited", PASSWORD, ip("2001:db8::1"))
        .unwrap();
    for outside in ["198.51.100.1", "127.0.0.1", "2001:db9::1"] {
        assert_eq!(
            p.verify_smtp("limited", PASSWORD, ip(outside)),
            Err(AuthError::AddressNotAllowed),
            "{outside}"
        );
    }
    // The allowlist is checked before the cache.
    assert_eq!(
        p.verify_smtp_cached("limited", PASSWORD, ip("198.51.100.1")),
        Some(Err(AuthError::AddressNotAllowed))
    );
}

#[test]
fn sender_domains() {
    let p = CompiledPolicy::compile(base(1)).unwrap();
    let acme = who("c1");
    p.check_sender(&acme, "news@acme.example").unwrap();
    p.check_sender(&acme, "x@ACME.Example.").unwrap();
    p.check_sender(&acme, "bounce@mail.acme.example").unwrap(); // subdomain of a sending domain
    let denied = |from: &str| p.check_sender(&acme, from).unwrap_err();
    assert!(matches!(
        denied("x@other.example"),
        PolicyDenial::SenderNotAllowed { .. }
    ));
    assert!(matches!(
        denied("x@unknown.example"),
        PolicyDenial::SenderNotAllowed { .. }
    ));
    assert!(matches!(denied(""), PolicyDenial::SenderNotAllowed { .. }));
    assert!(matches!(
        denied("x@example"),
        PolicyDenial::SenderNotAllowed { .. }
    ));
    let unverified = denied("x@trial.example");
    assert!(matches!(unverified, PolicyDenial::DomainUnverified { .. }));
    assert_eq!(unverified.reply().0, 550);

    // The credential restricted to news.acme.example.
    let limited = who("c2");
    p.check_sender(&limited, "a@news.acme.example").unwrap();
    assert!(p.check_sender(&limited, "a@acme.example").is_err());

    // A tenant that allows unverified domains.
    let mut s = base(2);
    s.tenants[0].allow_unverified_domains = true;
    let p = CompiledPolicy::compile(s).unwrap();
    p.check_sender(&acme, "x@trial.example").unwrap();
}

#[test]
fn rate_limits_answer_451() {
    let mut s = base(1);
    s.tenants[0].messages_per_second_max = Some(3);
    s.domains[1].messages_per_second_max = Some(1); // news.acme.example
    s.tenants[0].messages_per_day_max = Some(5);
    let p = CompiledPolicy::compile(s).unwrap();
    let t0 = 1_000_000_000;
    p.rate_check("acme", "news.acme.example", t0).unwrap();
    let d = p.rate_check("acme", "news.acme.example", t0).unwrap_err();
    assert_eq!(d.reply().0, 451);
    assert_eq!(d.reply().1, (4, 7, 1));
    // Another domain of the tenant still has tenant tokens (3/s, one used).
    p.rate_check("acme", "acme.example", t0).unwrap();
    p.rate_check("acme", "acme.example", t0).unwrap();
    assert!(matches!(
        p.rate_check("acme", "acme.example", t0),
        Err(PolicyDenial::RateLimited { .. })
    ));
    // A second later: two more, then the day's quota of 5 is spent.
    p.rate_check("acme", "acme.example", t0 + 1000).unwrap();
    p.rate_check("acme", "acme.example", t0 + 1000).unwrap();
    assert!(matches!(
        p.rate_check("acme", "acme.example", t0 + 2000),
        Err(PolicyDenial::DailyQuota { .. })
    ));
    // Tenants without limits are not limited.
    for _ in 0..100 {
        p.rate_check("other", "other.example", t0).unwrap();
    }
}

#[test]
fn rate_state_survives_a_new_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = PolicyStore::load_or_empty(dir.path());
    let mut s = base(1);
    s.tenants[0].messages_per_second_max = Some(1);
    store.apply(s.clone()).unwrap();
    store
        .current()
        .rate_check("acme", "acme.example", 5_000)
        .unwrap();
    s.version = 2;
    store.apply(s).unwrap();
    assert!(store
        .current()
        .rate_check("acme", "acme.example", 5_000)
        .is_err());
}

#[test]
fn signer_lookup_and_destinations() {
    let g = crate::keys::generate(DkimAlgorithm::Ed25519).unwrap();
    let mut s = base(1);
    s.domains[0].dkim_keys = vec![DkimKey {
        selector: "s1".into(),
        algorithm: DkimAlgorithm::Ed25519,
        private_key_pkcs8_der: g.private_key_pkcs8_der.clone(),
        active_from_unix_ms: 0,
        retired: false,
    }];
    // A broken key on another domain is skipped, not fatal.
    s.domains[3].dkim_keys = vec![DkimKey {
        selector: "bad".into(),
        algorithm: DkimAlgorithm::Rsa2048,
        private_key_pkcs8_der: vec![0x30, 0x00],
        active_from_unix_ms: 0,
        retired: false,
    }];
    let p = CompiledPolicy::compile(s).unwrap();
    assert_eq!(p.key_errors().len(), 1);
    assert_eq!(
        p.signer_for("acme.example").unwrap().domain(),
        "acme.example"
    );
    assert_eq!(
        p.signer_for("Mail.Acme.Example").unwrap().domain(),
        "acme.example"
    );
    assert!(p.signer_for("other.example").is_none());
    assert!(p.signer_for("nowhere.example").is_none());

    let gmail = p.destination_limit("GMAIL.com");
    assert_eq!(gmail.connections_max, Some(10));
    assert_eq!(gmail.messages_per_second_max, Some(100));
    assert!(gmail.tls_required);
    let other = p.destination_limit("example.org");
    assert_eq!(other.connections_max, None);
    assert!(!other.tls_required);
}

#[test]
fn empty_policy_refuses_everything() {
    let p = CompiledPolicy::empty();
    assert_eq!(p.version(), 0);
    assert!(!p.auth_enabled());
    assert_eq!(
        p.verify_smtp("acme", PASSWORD, ip("127.0.0.1")),
        Err(AuthError::UnknownUser)
    );
    assert!(p.check_sender(&who("c1"), "a@acme.example").is_err());
}

#[test]
fn disabled_sending_answers_550_at_mail_and_data() {
    let mut s = base(1);
    s.domains[1].sending_disabled = Some("bounce rate 15.0% over 10.0%".into()); // news.acme.example
    let p = CompiledPolicy::compile(s.clone()).unwrap();
    let denial = p
        .check_sender(&who("c1"), "a@news.acme.example")
        .unwrap_err();
    let (code, enhanced, text) = denial.reply();
    assert_eq!((code, enhanced), (550, (5, 7, 1)));
    assert_eq!(text, "sending disabled: bounce rate 15.0% over 10.0%");
    // The tenant's other domains still send; the disabled one is refused at DATA too (a
    // trusted network's relay, or a From header naming it).
    p.check_sender(&who("c1"), "a@acme.example").unwrap();
    p.check_message(Some("acme"), Some("acme.example")).unwrap();
    assert!(p.check_message(None, Some("x.news.acme.example")).is_err());

    s.tenants[0].sending_disabled = Some("complaint rate 0.5% over 0.3%".into());
    let p = CompiledPolicy::compile(s).unwrap();
    let text = p
        .check_sender(&who("c1"), "a@acme.example")
        .unwrap_err()
        .reply()
        .2;
    assert_eq!(text, "sending disabled: complaint rate 0.5% over 0.3%");
    assert!(p.check_message(Some("acme"), None).is_err());
    p.check_message(Some("other"), Some("other.example"))
        .unwrap();
}

#[test]
fn warnings_prefer_the_domain_and_stay_within_the_tenant() {
    let mut s = base(1);
    s.tenants[0].reputation_warning = Some("bounce rate 8.5% nears 10.0%".into());
    s.domains[1].reputation_warning = Some("complaint rate 0.25% nears 0.30%".into());
    s.domains[3].reputation_warning = Some("other's".into());
    let p = CompiledPolicy::compile(s).unwrap();
    assert_eq!(
        p.reputation_warning(Some("acme"), Some("news.acme.example")),
        Some("complaint rate 0.25% nears 0.30%")
    );
    assert_eq!(
        p.reputation_warning(Some("acme"), Some("acme.example")),
        Some("bounce rate 8.5% nears 10.0%")
    );
    // Another tenant's domain in the From header does not lend its warning.
    assert_eq!(
        p.reputation_warning(Some("acme"), Some("other.example")),
        Some("bounce rate 8.5% nears 10.0%")
    );
    assert_eq!(p.reputation_warning(Some("other"), None), None);
}

#[test]
fn a_new_tenant_is_capped_over_a_rolling_window_until_its_probation_ends() {
    const DAY: u64 = 86_400_000;
    let t0 = 20_000 * DAY;
    let mut s = base(1);
    s.tenants[0].new_tenant_cap = Some(crate::snapshot::NewTenantCap {
        messages_max: 10,
        window_ms: DAY,
        until_unix_ms: t0 + 7 * DAY,
    });
    s.tenants[0].messages_per_second_max = Some(1_000);
    let p = CompiledPolicy::compile(s.clone()).unwrap();
    for i in 0..10 {
        p.rate_check("acme", "acme.example", t0 + i).unwrap();
    }
    let denial = p.rate_check("acme", "acme.example", t0 + 10).unwrap_err();
    assert!(
        matches!(denial, PolicyDenial::NewTenantCap { .. }),
        "{denial}"
    );
    assert_eq!(denial.reply().0, 451);
    // Another tenant is not capped.
    for _ in 0..20 {
        p.rate_check("other", "other.example", t0).unwrap();
    }
    // A cap lifted by an operator: the next snapshot has none.
    s.version = 2;
    s.tenants[0].new_tenant_cap = None;
    let lifted = CompiledPolicy::compile_with(s, Arc::clone(p.shared())).unwrap();
    lifted.rate_check("acme", "acme.example", t0 + 11).unwrap();
    // Past the probation the cap no longer applies.
    p.rate_check("acme", "acme.example", t0 + 7 * DAY).unwrap();
}

#[test]
fn a_rate_denial_does_not_spend_a_new_tenants_slot() {
    let mut s = base(1);
    s.tenants[0].new_tenant_cap = Some(crate::snapshot::NewTenantCap {
        messages_max: 2,
        window_ms: 86_400_000,
        until_unix_ms: u64::MAX,
    });
    s.tenants[0].messages_per_second_max = Some(1);
    let p = CompiledPolicy::compile(s).unwrap();
    p.rate_check("acme", "acme.example", 1_000).unwrap();
    // Refused by the per-second rate: the window keeps its second slot.
    assert!(matches!(
        p.rate_check("acme", "acme.example", 1_000),
        Err(PolicyDenial::RateLimited { .. })
    ));
    p.rate_check("acme", "acme.example", 2_000).unwrap();
    assert!(matches!(
        p.rate_check("acme", "acme.example", 3_000),
        Err(PolicyDenial::NewTenantCap { .. })
    ));
}
