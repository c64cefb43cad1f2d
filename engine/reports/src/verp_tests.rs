use super::*;

fn keys() -> VerpKeys {
    VerpKeys::new(
        VerpKey::new(2, b"0123456789abcdef-current").unwrap(),
        vec![VerpKey::new(1, b"0123456789abcdef-previous").unwrap()],
    )
    .unwrap()
}

fn data() -> TokenData {
    TokenData {
        tenant_id: "ten_0a1b2c3d4e5f6789".into(),
        message_id: 0x0300_0000_0000_1234,
        recipient: RecipientRef::Index(7),
    }
}

#[test]
fn return_path_round_trips_and_fits_a_local_part() {
    let k = keys();
    let addr = k.return_path(&data(), "Bounce.Example.NET").unwrap();
    let (local, domain) = addr.split_once('@').unwrap();
    assert!(local.starts_with("b-"));
    assert_eq!(local.len(), 54, "{addr}");
    assert!(local.len() <= LOCAL_PART_BYTES_MAX);
    assert_eq!(domain, "bounce.example.net");
    assert!(local
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    let d = k.decode_address(&addr).unwrap();
    assert_eq!(d.purpose, Purpose::Bounce);
    assert_eq!(d.data, data());
    assert_eq!(d.domain, "bounce.example.net");
}

#[test]
fn case_changes_by_relays_do_not_break_a_token() {
    let k = keys();
    let addr = k.return_path(&data(), "bounce.example.net").unwrap();
    let d = k.decode_address(&addr.to_ascii_uppercase()).unwrap();
    assert_eq!(d.data, data());
    assert_eq!(d.domain, "bounce.example.net");
    let d = k.decode_address(&format!("<{addr}>")).unwrap();
    assert_eq!(d.data, data());
}

#[test]
fn the_longest_raw_tenant_id_still_fits() {
    let k = keys();
    let mut d = data();
    d.tenant_id = "x".repeat(TENANT_ID_RAW_BYTES_MAX);
    d.recipient = RecipientRef::Index(u16::MAX);
    let addr = k.unsubscribe_address(&d, "b.example").unwrap();
    assert!(addr.split_once('@').unwrap().0.len() <= LOCAL_PART_BYTES_MAX);
    assert_eq!(k.decode_address(&addr).unwrap().data, d);
    d.tenant_id = "x".repeat(TENANT_ID_RAW_BYTES_MAX + 1);
    assert_eq!(
        k.return_path(&d, "b.example"),
        Err(VerpError::TenantIdTooLong {
            bytes: 15,
            max: TENANT_ID_RAW_BYTES_MAX
        })
    );
    d.tenant_id = String::new();
    assert!(matches!(
        k.return_path(&d, "b.example"),
        Err(VerpError::TenantIdTooLong { .. })
    ));
    // Uppercase hex is not the control plane's form: kept raw (and too long here).
    d.tenant_id = "ten_0A1B2C3D4E5F6789".into();
    assert!(k.return_path(&d, "b.example").is_err());
}

#[test]
fn a_recipient_address_fits_a_url_token_but_not_an_address() {
    let k = keys();
    let mut d = data();
    d.recipient = RecipientRef::Address("Jane.Doe@Example.org".into());
    let token = k.one_click_token(&d).unwrap();
    assert_eq!(k.decode_token(Purpose::OneClick, &token).unwrap(), d);
    assert!(matches!(
        k.unsubscribe_address(&d, "b.example"),
        Err(VerpError::LocalPartTooLong { max: 64, .. })
    ));
    d.recipient = RecipientRef::Address("a".repeat(RECIPIENT_ADDRESS_BYTES_MAX + 1));
    assert!(matches!(
        k.one_click_token(&d),
        Err(VerpError::RecipientTooLong { .. })
    ));
}

#[test]
fn one_purpose_cannot_be_replayed_as_another() {
    let k = keys();
    let bounce = k.return_path(&data(), "b.example").unwrap();
    let token = &bounce[2..bounce.find('@').unwrap()];
    let as_unsub = format!("u-{token}@b.example");
    assert_eq!(k.decode_address(&as_unsub), Err(VerpError::BadTag));
    assert_eq!(
        k.decode_token(Purpose::OneClick, token),
        Err(VerpError::BadTag)
    );
    let click = k.one_click_token(&data()).unwrap();
    assert_eq!(
        k.decode_address(&format!("b-{click}@b.example")),
        Err(VerpError::BadTag)
    );
}

#[test]
fn forged_truncated_and_unknown_tokens_are_refused() {
    let k = keys();
    let token = k.encode_token(Purpose::Bounce, &data()).unwrap();
    // Flip each character to another base32 symbol: every change is refused.
    for i in 0..token.len() {
        let mut t = token.clone().into_bytes();
        t[i] = if t[i] == b'a' { b'b' } else { b'a' };
        let t = String::from_utf8(t).unwrap();
        assert!(k.decode_token(Purpose::Bounce, &t).is_err(), "position {i}");
    }
    for len in 0..token.len() {
        assert!(
            k.decode_token(Purpose::Bounce, &token[..len]).is_err(),
            "{len}"
        );
    }
    assert_eq!(
        k.decode_token(Purpose::Bounce, "not base32!"),
        Err(VerpError::BadEncoding)
    );
    // A token signed by a key the decoder does not hold.
    let other = VerpKeys::new(VerpKey::new(9, &[7; 32]).unwrap(), vec![]).unwrap();
    let foreign = other.encode_token(Purpose::Bounce, &data()).unwrap();
    assert_eq!(
        k.decode_token(Purpose::Bounce, &foreign),
        Err(VerpError::UnknownKey { key_id: 9 })
    );
    // The same key id with a different secret: a forgery.
    let impostor = VerpKeys::new(VerpKey::new(2, &[7; 32]).unwrap(), vec![]).unwrap();
    let forged = impostor.encode_token(Purpose::Bounce, &data()).unwrap();
    assert_eq!(
        k.decode_token(Purpose::Bounce, &forged),
        Err(VerpError::BadTag)
    );
    // Another version.
    let mut raw = BASE32_LOWER.decode(token.as_bytes()).unwrap();
    raw[0] = 2;
    assert_eq!(
        k.decode_token(Purpose::Bounce, &BASE32_LOWER.encode(&raw)),
        Err(VerpError::UnknownVersion { version: 2 })
    );
    assert!(matches!(
        k.decode_token(Purpose::OneClick, &"a".repeat(URL_TOKEN_CHARS_MAX + 1)),
        Err(VerpError::InputTooLong { .. })
    ));
}

#[test]
fn addresses_that_are_not_tokens() {
    let k = keys();
    for a in [
        "postmaster@b.example",
        "b-@b.example",
        "b-abc",
        "x-abcd@b",
        "b-abcd@",
    ] {
        assert!(k.decode_address(a).is_err(), "{a}");
    }
    assert_eq!(
        k.decode_address("postmaster@b.example"),
        Err(VerpError::NotATokenAddress)
    );
    assert!(matches!(
        k.decode_address(&"b".repeat(ADDRESS_BYTES_MAX + 1)),
        Err(VerpError::InputTooLong { .. })
    ));
}

#[test]
fn rotation_accepts_previous_keys_and_signs_with_the_current_one() {
    let old = VerpKeys::new(
        VerpKey::new(1, b"0123456789abcdef-previous").unwrap(),
        vec![],
    )
    .unwrap();
    let addr = old.return_path(&data(), "b.example").unwrap();
    let k = keys();
    assert_eq!(k.decode_address(&addr).unwrap().data, data());
    let new = k.return_path(&data(), "b.example").unwrap();
    assert_eq!(
        old.decode_address(&new),
        Err(VerpError::UnknownKey { key_id: 2 })
    );
}

#[test]
fn key_set_rules() {
    assert!(matches!(
        VerpKey::new(1, &[0; KEY_BYTES_MIN - 1]),
        Err(VerpError::KeyTooShort { .. })
    ));
    let key = |id| VerpKey::new(id, &[1; KEY_BYTES_MIN]).unwrap();
    assert_eq!(
        VerpKeys::new(key(1), vec![key(2), key(1)]).unwrap_err(),
        VerpError::DuplicateKeyId { key_id: 1 }
    );
    let many: Vec<VerpKey> = (1..=KEYS_MAX as u8).map(key).collect();
    assert_eq!(
        VerpKeys::new(key(0), many).unwrap_err(),
        VerpError::TooManyKeys { max: KEYS_MAX }
    );
    let debug = format!("{:?}", key(3));
    assert!(!debug.contains("1, 1"), "{debug}");
}
