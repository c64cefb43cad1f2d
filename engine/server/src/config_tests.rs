//! Tests of the engine configuration: parsing, defaults, validation of each section.

use super::*;

#[test]
fn content_section_defaults_on_and_is_validated() {
    let c = EngineConfig::from_toml("").expect("defaults are valid");
    assert!(c.content.phishing_check);
    assert!(c.content.checker().expect("default checker").is_some());
    let off = EngineConfig::from_toml("[content]\nphishing_check = false\n").unwrap();
    assert!(off.content.checker().unwrap().is_none());
    let tuned = EngineConfig::from_toml(
        "[content]\nphishing_threshold = 80\nredirect_domains = [\"sendgrid.net\"]\n",
    )
    .unwrap();
    assert_eq!(tuned.content.phishing_threshold, 80);
    for bad in [
        "[content]\nphishing_threshold = 0\n",
        "[content]\nredirect_domains = [\"click.sendgrid.net\"]\n",
    ] {
        let e = EngineConfig::from_toml(bad).unwrap_err().to_string();
        assert!(e.contains("content"), "{e}");
    }
}

#[test]
fn empty_file_gives_defaults() {
    let c = EngineConfig::from_toml("").expect("defaults are valid");
    assert_eq!(c.smtp.listen.port(), 2525);
    assert!(c.spool.fsync);
    assert!(c.smtp.trusted_networks.is_empty());
}

#[test]
fn unknown_key_is_named() {
    let e = EngineConfig::from_toml("[smtp]\nlisten_port = 25\n").unwrap_err();
    assert!(e.to_string().contains("listen_port"), "{e}");
}

#[test]
fn bad_value_is_named() {
    let e = EngineConfig::from_toml("[smtp]\nlisten = \"nope\"\n").unwrap_err();
    assert!(e.to_string().contains("listen"), "{e}");
    let e = EngineConfig::from_toml("[smtp]\nrecipients_max = 0\n").unwrap_err();
    assert!(e.to_string().contains("smtp.recipients_max"), "{e}");
    let e =
        EngineConfig::from_toml("[delivery]\nnext_hop_sessions_per_shard_max = 0\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("delivery.next_hop_sessions_per_shard_max"),
        "{e}"
    );
}

#[test]
fn the_intake_is_off_by_default_and_its_mailboxes_are_checked() {
    let c = EngineConfig::from_toml("").unwrap();
    assert_eq!(c.intake.listen, None);
    let c = EngineConfig::from_toml(
        "[intake]\nlisten = \"127.0.0.1:2526\"\nmailboxes = [\"dmarc@reports.example\"]\n",
    )
    .unwrap();
    assert_eq!(c.intake.listen, Some("127.0.0.1:2526".parse().unwrap()));
    assert_eq!(c.intake.mailboxes, ["dmarc@reports.example"]);
    let e = EngineConfig::from_toml("[intake]\nmailboxes = [\"not an address\"]\n").unwrap_err();
    assert!(e.to_string().contains("intake.mailboxes"), "{e}");
    let e = EngineConfig::from_toml("[intake]\nlisten = \"127.0.0.1:2525\"\n").unwrap_err();
    assert!(e.to_string().contains("intake.listen"), "{e}");
    let many: Vec<String> = (0..=INTAKE_MAILBOXES_MAX)
        .map(|i| format!("\"m{i}@r.example\""))
        .collect();
    let e = EngineConfig::from_toml(&format!("[intake]\nmailboxes = [{}]\n", many.join(",")))
        .unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
}

#[test]
fn trusted_networks_map_to_domains() {
    let c = EngineConfig::from_toml(
        "[smtp]\ntrusted_networks = [\"10.0.0.0/8\"]\n\
         [[smtp.trusted_network_domains]]\ncidr = \"192.0.2.0/24\"\n\
         domains = [\"Acme.test\"]\n",
    )
    .expect("valid");
    assert_eq!(
        c.smtp.trusted_networks.len(),
        1,
        "the plain list still parses"
    );
    let t = &c.smtp.trusted_network_domains[0];
    assert_eq!(t.cidr, "192.0.2.0/24".parse::<IpNet>().unwrap());
    assert!(t.maps("acme.test") && !t.maps("other.test"));
    let e = EngineConfig::from_toml(
        "[[smtp.trusted_network_domains]]\ncidr = \"192.0.2.0/24\"\nsigned = []\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("signed"), "{e}");
}

#[test]
fn a_mapped_network_speaks_only_for_its_domains_and_a_plain_one_for_none() {
    let c = EngineConfig::from_toml(
        "[smtp]\ntrusted_networks = [\"10.0.0.0/8\"]\n\
         [[smtp.trusted_network_domains]]\ncidr = \"10.1.0.0/16\"\ndomains = [\"a.test\"]\n\
         [[smtp.trusted_network_domains]]\ncidr = \"10.1.2.0/24\"\ndomains = [\"b.test\"]\n\
         [[smtp.trusted_network_domains]]\ncidr = \"192.0.2.0/24\"\ndomains = []\n\
         [[smtp.trusted_network_domains]]\ncidr = \"198.51.100.0/24\"\ndomains = [\"*\"]\n",
    )
    .expect("valid");
    let s = &c.smtp;
    let ip = |a: &str| a.parse::<std::net::IpAddr>().unwrap();
    // The plain list relays and speaks for no domain (issue 14: signed only when mapped).
    assert!(s.is_trusted(ip("10.9.0.1")));
    assert!(!s.relay_may_sign(ip("10.9.0.1"), Some("z.test")));
    // `*`: the operator maps the network to every domain, explicitly.
    assert!(s.relay_may_sign(ip("198.51.100.9"), Some("z.test")));
    assert!(!s.relay_may_sign(ip("198.51.100.9"), None));
    // A mapped subnet of it: only its domains (both entries containing the client count).
    assert!(s.relay_may_sign(ip("10.1.0.1"), Some("a.test")));
    assert!(!s.relay_may_sign(ip("10.1.0.1"), Some("b.test")));
    assert!(s.relay_may_sign(ip("10.1.2.3"), Some("b.test")));
    assert!(s.relay_may_sign(ip("10.1.2.3"), Some("a.test")));
    assert!(!s.relay_may_sign(ip("10.1.0.1"), None));
    // Mapped to nothing: relays (trusted) but speaks for no domain.
    assert!(s.is_trusted(ip("192.0.2.7")));
    assert!(!s.relay_may_sign(ip("192.0.2.7"), Some("a.test")));
    // Not trusted at all.
    assert!(!s.is_trusted(ip("203.0.113.1")));
    assert!(!s.relay_may_sign(ip("203.0.113.1"), Some("a.test")));
}

#[test]
fn overrides_apply() {
    let mut c = EngineConfig::default();
    c.apply_overrides(&Overrides {
        shards: Some(3),
        trust_networks: vec!["10.0.0.0/8".parse().unwrap()],
        trust_network_domains: vec![crate::config::TrustedNetworkDomains::parse_flag(
            "192.0.2.0/24=A.test, b.test",
        )
        .unwrap()],
        no_delivery: true,
        ..Overrides::default()
    })
    .unwrap();
    assert_eq!(c.shard_count(), 3);
    assert_eq!(c.smtp.trusted_networks.len(), 1);
    assert_eq!(
        c.smtp.trusted_network_domains[0].domains,
        ["a.test", "b.test"]
    );
    assert!(crate::config::TrustedNetworkDomains::parse_flag("192.0.2.0/24").is_err());
    assert!(crate::config::TrustedNetworkDomains::parse_flag("nonsense=*").is_err());
    let relay_only = crate::config::TrustedNetworkDomains::parse_flag("::1/128=").unwrap();
    assert!(relay_only.domains.is_empty());
    assert!(!c.delivery.enabled);
}

/// The annotated example in `ops/` stays a configuration the engine accepts, with the
/// encryption section as documented.
#[test]
fn the_example_configuration_parses() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/petrel.example.toml");
    let c = EngineConfig::from_file(&path).unwrap();
    assert!(c.encryption.at_rest);
    assert_eq!(c.encryption.data_key_rotate_after_days, 30);
    assert!(c.admin.token_file.is_none());
    let mut bad = EngineConfig::default();
    bad.encryption.data_key_rotate_after_days = 0;
    assert!(bad.validate().is_err());
}

#[test]
fn the_cluster_section_is_off_by_default_and_keeps_passwords_out_of_the_url() {
    let c = EngineConfig::from_toml("").unwrap();
    assert!(c.cluster.redis_url.is_none());
    let c = EngineConfig::from_toml("[cluster]\nredis_url = \"redis://127.0.0.1:6379/0\"\n")
        .expect("a plain URL");
    assert_eq!(c.cluster.key_prefix, "petrel:");
    for (bad, key) in [
        (
            "[cluster]\nredis_url = \"redis://:hunter2@127.0.0.1:6379/0\"\n",
            "cluster.redis_url",
        ),
        (
            "[cluster]\nredis_url = \"rediss://127.0.0.1:6379/0\"\n",
            "cluster.redis_url",
        ),
        (
            "[cluster]\nredis_url = \"not a url\"\n",
            "cluster.redis_url",
        ),
        (
            "[cluster]\nrequest_timeout_ms = 0\n",
            "cluster.request_timeout_ms",
        ),
        (
            "[cluster]\nprobe_interval_ms = 10001\n",
            "cluster.probe_interval_ms",
        ),
        ("[cluster]\nkey_prefix = \"a b\"\n", "cluster.key_prefix"),
    ] {
        let e = EngineConfig::from_toml(bad).unwrap_err().to_string();
        assert!(e.contains(key), "{bad}: {e}");
        assert!(!e.contains("hunter2"), "the password is not echoed: {e}");
    }
}

#[test]
fn listeners_take_a_profile_and_are_bounded() {
    let c = EngineConfig::from_toml("").unwrap();
    assert!(c.smtp.listeners.is_empty(), "no extra listener by default");
    let c = EngineConfig::from_toml(
        "[[smtp.listeners]]\nlisten = \"127.0.0.1:587\"\nprofile = \"submission\"\n\
         [[smtp.listeners]]\nlisten = \"127.0.0.1:465\"\nprofile = \"submissions\"\n",
    )
    .unwrap();
    let profiles: Vec<_> = c.smtp.listeners.iter().map(|l| l.profile).collect();
    assert_eq!(
        profiles,
        [ListenerProfile::Submission, ListenerProfile::Submissions]
    );
    assert!(profiles[1].implicit_tls() && !profiles[0].implicit_tls());
    for bad in ["relay", "mx", "Submission"] {
        let text = format!("[[smtp.listeners]]\nlisten = \"127.0.0.1:587\"\nprofile = \"{bad}\"\n");
        let e = EngineConfig::from_toml(&text).unwrap_err();
        assert!(e.to_string().contains("profile"), "{bad}: {e}");
    }
    let e = EngineConfig::from_toml("[[smtp.listeners]]\nprofile = \"submission\"\n").unwrap_err();
    assert!(e.to_string().contains("listen"), "{e}");
    // The main listener's port, a wildcard over it, the intake's, or another entry's: refused.
    for (extra, clash) in [
        ("", "127.0.0.1:2525"),
        ("", "0.0.0.0:2525"),
        ("[intake]\nlisten = \"127.0.0.1:2526\"\n", "127.0.0.1:2526"),
    ] {
        let text =
            format!("{extra}[[smtp.listeners]]\nlisten = \"{clash}\"\nprofile = \"submission\"\n");
        let e = EngineConfig::from_toml(&text).unwrap_err();
        assert!(e.to_string().contains("smtp.listeners"), "{clash}: {e}");
    }
    let twice = "[[smtp.listeners]]\nlisten = \"127.0.0.1:587\"\nprofile = \"submission\"\n";
    let e = EngineConfig::from_toml(&twice.repeat(2)).unwrap_err();
    assert!(e.to_string().contains("smtp.listeners"), "{e}");
    // Port 0 (tests) picks a free port per entry: never a clash.
    let zero = "[[smtp.listeners]]\nlisten = \"127.0.0.1:0\"\nprofile = \"submission\"\n";
    assert!(EngineConfig::from_toml(&zero.repeat(2)).is_ok());
    let e = EngineConfig::from_toml(&zero.repeat(SMTP_LISTENERS_MAX + 1)).unwrap_err();
    assert!(e.to_string().contains("at most 8"), "{e}");
}

#[test]
fn acme_is_off_by_default_and_validated() {
    let c = EngineConfig::from_toml("").unwrap();
    assert!(!c.acme.enabled());
    let on = EngineConfig::from_toml(
        "[server]\nhostname = \"mx.example.com\"\n[acme]\n\
         directory_url = \"https://acme.example/dir\"\ncontact = \"mailto:ops@example.com\"\n",
    )
    .unwrap();
    assert!(on.acme.enabled());
    assert_eq!(on.acme.names("mx.example.com"), ["mx.example.com"]);
    assert_eq!(on.acme.renew_before_days, 30);
    assert_eq!(
        on.acme.state_dir(Path::new("/d")),
        PathBuf::from("/d/acme"),
        "state under the data directory by default"
    );
    let listed = EngineConfig::from_toml(
        "[acme]\ndirectory_url = \"https://a.example/dir\"\ndomains = [\"MX.Example.com.\", \"b.example.com\"]\n",
    )
    .unwrap();
    assert_eq!(
        listed.acme.names("ignored.example"),
        ["mx.example.com", "b.example.com"]
    );
    let url = "[acme]\ndirectory_url = \"https://acme.example/dir\"\n";
    for (extra, key) in [
        (
            "[acme]\ndirectory_url = \"http://acme.example/dir\"\n",
            "acme.directory_url",
        ),
        (
            "[smtp]\ntls_cert_path = \"/c.pem\"\ntls_key_path = \"/k.pem\"\n",
            "exclusive",
        ),
        ("contact = \"ops@example.com\"\n", "acme.contact"),
        (
            "contact = \"mailto:a@example.com,mailto:b@example.com\"\n",
            "acme.contact",
        ),
        ("domains = [\"*.example.com\"]\n", "acme.domains"),
        ("domains = [\"192.0.2.1\"]\n", "acme.domains"),
        ("domains = [\"localhost\"]\n", "acme.domains"),
        ("renew_before_days = 0\n", "acme.renew_before_days"),
        ("renew_before_days = 366\n", "acme.renew_before_days"),
    ] {
        // The [smtp] case goes before the [acme] table; the rest are keys inside it.
        let text = if extra.starts_with('[') && !extra.starts_with("[acme]") {
            format!("{extra}{url}")
        } else if extra.starts_with("[acme]") {
            extra.to_string()
        } else {
            format!("{url}{extra}")
        };
        let e = EngineConfig::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
    let many: Vec<String> = (0..=ACME_DOMAINS_MAX)
        .map(|i| format!("\"h{i}.example.com\""))
        .collect();
    let text = format!("{url}domains = [{}]\n", many.join(","));
    let e = EngineConfig::from_toml(&text).unwrap_err().to_string();
    assert!(e.contains("at most 100"), "{e}");
}

#[test]
fn smart_hosts_may_carry_mta_sts_with_their_certificate_names() {
    let c = EngineConfig::from_toml(
        "[delivery]\nsmart_host_mta_sts = true\nrelay_to = \"127.0.0.1:2526\"\n\
         relay_tls_name = \"relay.example.net\"\n\
         [[delivery.routes]]\ndomain = \"a.test\"\nhost = \"127.0.0.1:2527\"\ntls_name = \"mx.a.test\"\n\
         [[delivery.routes]]\ndomain = \"b.test\"\nhost = \"127.0.0.1:2528\"\n",
    )
    .unwrap();
    assert!(c.delivery.smart_host_mta_sts);
    assert_eq!(
        c.delivery.relay_tls_name.as_deref(),
        Some("relay.example.net")
    );
    let names: Vec<_> = c
        .delivery
        .routes
        .iter()
        .map(|r| r.tls_name.as_deref())
        .collect();
    assert_eq!(names, [Some("mx.a.test"), None]);
    assert!(
        !EngineConfig::from_toml("")
            .unwrap()
            .delivery
            .smart_host_mta_sts,
        "off by default"
    );
}

/// `[[delivery.sources]]`, `[[delivery.pools]]` and `delivery.default_pool` (docs/egress.md).
const EGRESS_TOML: &str = r#"
[delivery]
default_pool = "shared"

[[delivery.sources]]
name = "ip1"
local_addr = "127.0.0.2"
ehlo_name = "mta1.example.com"

[[delivery.sources]]
name = "ip2"
local_addr = "127.0.0.3"
warmup = { start_date = "2026-12-01", days = 30, first_day_max = 500, full_day_max = 200000 }

[[delivery.pools]]
name = "shared"
sources = [{ source = "ip1", weight = 3 }, { source = "ip2" }]
"#;

#[test]
fn egress_pools_parse_and_a_bad_pool_stops_the_start() {
    let c = EngineConfig::from_toml(EGRESS_TOML).expect("a valid egress");
    let egress = petrel_delivery::egress::Egress::build(&c.delivery.egress_spec()).unwrap();
    assert_eq!(egress.sources().len(), 2);
    let shared = egress.pool(egress.default_pool());
    assert_eq!(shared.name, "shared");
    assert_eq!(
        shared.members.iter().map(|m| m.1).collect::<Vec<_>>(),
        [3, 1],
        "weight defaults to 1"
    );
    assert_eq!(egress.sources()[1].ehlo("fallback"), "fallback");
    for (bad, needle) in [
        (
            EGRESS_TOML.replace("{ source = \"ip2\" }", "{ source = \"ip9\" }"),
            "delivery.pools \"shared\": unknown source \"ip9\"",
        ),
        (
            EGRESS_TOML.replace("weight = 3", "weight = 0"),
            "has weight 0",
        ),
        (
            EGRESS_TOML.replace("default_pool = \"shared\"", ""),
            "delivery.default_pool: required",
        ),
        (
            EGRESS_TOML.replace("days = 30", "days = 0"),
            "delivery.sources \"ip2\": warmup: days must be 1 to 365",
        ),
        (
            EGRESS_TOML.replace("ehlo_name =", "helo ="),
            "unknown field `helo`",
        ),
    ] {
        let e = EngineConfig::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
    }
}
