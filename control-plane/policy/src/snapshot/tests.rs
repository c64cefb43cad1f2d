//! The snapshot's own tests: the byte format, corruption, the semantic rules.

use super::*;

pub(crate) fn sample() -> PolicySnapshot {
    PolicySnapshot {
        version: 7,
        generated_unix_ms: 1_700_000_000_000,
        tenants: vec![Tenant {
            id: "t1".into(),
            name: "Acme".into(),
            suspended: false,
            messages_per_second_max: Some(10),
            messages_per_day_max: None,
            allow_unverified_domains: false,
            new_tenant_cap: Some(NewTenantCap {
                messages_max: 10,
                window_ms: 86_400_000,
                until_unix_ms: 1_700_600_000_000,
            }),
            sending_disabled: None,
            reputation_warning: Some("bounce rate 8.5% nears 10%".into()),
            list_unsubscribe: false,
            arc_seal: true,
            egress_pool: Some("warm-1".into()),
            delivery_weight: 7,
        }],
        domains: vec![SendingDomain {
            tenant_id: "t1".into(),
            name: "acme.example".into(),
            verified: true,
            messages_per_second_max: None,
            dkim_keys: vec![DkimKey {
                selector: "s1".into(),
                algorithm: DkimAlgorithm::Ed25519,
                private_key_pkcs8_der: vec![1, 2, 3],
                active_from_unix_ms: 0,
                retired: false,
            }],
            sending_disabled: Some("bounce rate 12.0% over 10%".into()),
            reputation_warning: None,
            auth_failure: None,
        }],
        credentials: vec![Credential {
            id: "c1".into(),
            tenant_id: "t1".into(),
            kind: CredentialKind::Smtp,
            username: "acme".into(),
            prefix: "abcdefgh".into(),
            argon2_phc: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            scopes: vec!["send".into()],
            allowed_sender_domains: vec![],
            ip_allowlist: vec!["10.0.0.0/8".into(), "::1".into()],
            revoked: false,
        }],
        destination_limits: vec![DestinationLimit {
            domain: "gmail.com".into(),
            connections_max: Some(20),
            messages_per_second_max: None,
            tls_required: true,
        }],
        defaults: DefaultLimits::default(),
        return_path: ReturnPath {
            bounce_domain: "bounces.petrel.test".into(),
            one_click_url_base: "https://cp.petrel.test".into(),
            current_key_id: 1,
            keys: vec![TokenKey {
                id: 1,
                secret: vec![9; 32],
            }],
        },
        deleted_tenants: vec![DeletedTenant {
            id: "ten_gone".into(),
            bounce_queued: true,
            deleted_unix_ms: 1,
        }],
        shaping: vec![
            ShapingLimits {
                provider: "default".into(),
                connections_max: None,
                messages_per_connection_max: None,
                messages_per_minute_max: None,
                messages_per_hour_max: Some(20_000),
                recipients_per_transaction_max: None,
            },
            ShapingLimits {
                provider: "google".into(),
                connections_max: Some(12),
                messages_per_connection_max: Some(40),
                messages_per_minute_max: Some(0),
                messages_per_hour_max: None,
                recipients_per_transaction_max: Some(50),
            },
        ],
    }
}

#[test]
fn the_shaping_overlay_round_trips_and_a_bad_one_is_refused() {
    let s = sample();
    let decoded = decode(&encode(&s).unwrap()).unwrap();
    assert_eq!(decoded.shaping, s.shaping);
    assert_eq!(
        decoded.shaping[1].messages_per_minute_max,
        Some(0),
        "0 kept: unlimited"
    );
    // An empty overlay is the default, in JSON too (a snapshot written before the field).
    let mut json = serde_json::to_value(&s).unwrap();
    json.as_object_mut().unwrap().remove("shaping");
    let old: PolicySnapshot = serde_json::from_value(json).unwrap();
    assert!(old.shaping.is_empty());
    // Neither side accepts a bad overlay: encode refuses to push it, decode to apply it.
    let mut bad = s.clone();
    bad.shaping[1].connections_max = Some(0);
    let e = encode(&bad).unwrap_err();
    assert!(e.to_string().contains("connections_max"), "{e}");
    let mut twice = s.clone();
    twice.shaping[0].provider = "google".into();
    assert!(encode(&twice).is_err());
    let mut named = s;
    named.shaping[1].provider = "Google".into();
    assert!(encode(&named).is_err());
}

#[test]
fn a_deleted_tenant_may_not_also_be_listed() {
    let mut s = sample();
    assert!(s.validate().is_ok());
    s.deleted_tenants[0].id = s.tenants[0].id.clone();
    assert!(s.validate().is_err());
}

#[test]
fn round_trip() {
    let s = sample();
    let bytes = encode(&s).unwrap();
    assert_eq!(&bytes[..8], SNAPSHOT_MAGIC);
    assert_eq!(SNAPSHOT_MAGIC, b"PTRLSNP5");
    let decoded = decode(&bytes).unwrap();
    assert_eq!(decoded.tenants[0].egress_pool.as_deref(), Some("warm-1"));
    assert_eq!(decoded.tenants[0].delivery_weight, 7);
    assert_eq!(decoded, s);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<PolicySnapshot>(&json).unwrap(), s);
}

#[test]
fn every_single_byte_corruption_is_rejected() {
    let bytes = encode(&sample()).unwrap();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x20;
        assert!(decode(&bad).is_err(), "flip at {i} accepted");
    }
    for n in 0..bytes.len() {
        assert!(decode(&bytes[..n]).is_err(), "truncation to {n} accepted");
    }
}

#[test]
fn garbage_with_valid_checksum_fails_archive_validation() {
    let payload = vec![0xffu8; 64];
    let mut bytes = Vec::new();
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let err = decode(&bytes).unwrap_err();
    assert!(matches!(err, PolicyError::Corrupt { .. }), "{err}");
}

#[test]
fn random_payloads_with_valid_checksums_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let good = encode(&sample()).unwrap();
    for round in 0..2000 {
        // Half pure noise, half the real payload with a few random bytes changed.
        let mut payload = if round % 2 == 0 {
            (0..rng.gen_range(0..512))
                .map(|_| rng.gen())
                .collect::<Vec<u8>>()
        } else {
            good[SNAPSHOT_HEADER_BYTES..].to_vec()
        };
        for _ in 0..rng.gen_range(1..4) {
            if !payload.is_empty() {
                let i = rng.gen_range(0..payload.len());
                payload[i] = rng.gen();
            }
        }
        let mut bytes = Vec::new();
        bytes.extend_from_slice(SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        if let Ok(s) = decode(&bytes) {
            s.validate().unwrap(); // whatever decodes is valid
        }
    }
}

#[test]
fn semantic_rules() {
    let mut s = sample();
    s.domains[0].tenant_id = "nobody".into();
    assert!(matches!(encode(&s), Err(PolicyError::Invalid { .. })));

    let mut s = sample();
    s.credentials.push(s.credentials[0].clone());
    assert!(encode(&s).is_err(), "duplicate username");

    let mut s = sample();
    s.credentials[0].ip_allowlist = vec!["10.0.0.300/8".into()];
    assert!(encode(&s).is_err(), "bad CIDR");

    let mut s = sample();
    s.domains[0].name = "Acme.Example".into();
    assert!(encode(&s).is_err(), "upper case domain");

    let mut s = sample();
    s.domains[0].dkim_keys[0].selector = "bad selector".into();
    assert!(encode(&s).is_err(), "bad selector");

    let mut s = sample();
    s.tenants[0].sending_disabled = Some("a\r\n250 forged".into());
    assert!(encode(&s).is_err(), "control characters in a reason");

    let mut s = sample();
    s.domains[0].reputation_warning = Some("x".repeat(GUARD_NOTE_MAX_BYTES + 1));
    assert!(encode(&s).is_err(), "overlong warning");

    let mut s = sample();
    s.tenants[0].new_tenant_cap = Some(NewTenantCap {
        messages_max: NEW_TENANT_CAP_MESSAGES_MAX + 1,
        window_ms: 1,
        until_unix_ms: 0,
    });
    assert!(encode(&s).is_err(), "cap above its bound");

    let mut s = sample();
    s.tenants[0].egress_pool = Some("Warm 1".into());
    assert!(encode(&s).is_err(), "bad pool name");

    let mut s = sample();
    s.tenants[0].egress_pool = Some(String::new());
    assert!(encode(&s).is_err(), "empty pool name");

    for weight in [0, DELIVERY_WEIGHT_MAX + 1] {
        let mut s = sample();
        s.tenants[0].delivery_weight = weight;
        assert!(encode(&s).is_err(), "weight {weight}");
    }
}

#[test]
fn cidr_forms() {
    assert!(parse_cidr("192.0.2.7")
        .unwrap()
        .contains(&"192.0.2.7".parse::<std::net::IpAddr>().unwrap()));
    assert!(parse_cidr("192.0.2.7/24")
        .unwrap()
        .contains(&"192.0.2.200".parse::<std::net::IpAddr>().unwrap()));
    assert!(parse_cidr("2001:db8::/32").is_ok());
    assert!(parse_cidr("nope").is_err());
}

#[test]
fn a_json_tenant_without_delivery_settings_gets_the_defaults() {
    let mut json = serde_json::to_value(sample()).unwrap();
    let t = json["tenants"][0].as_object_mut().unwrap();
    t.remove("egress_pool");
    t.remove("delivery_weight");
    let s: PolicySnapshot = serde_json::from_value(json).unwrap();
    assert_eq!(s.tenants[0].egress_pool, None);
    assert_eq!(s.tenants[0].delivery_weight, DELIVERY_WEIGHT_DEFAULT);
    s.validate().unwrap();
}
