use super::*;
use crate::message::{prepare, TraceInfo, RFC822_MESSAGE_ID_BYTES_MAX};

fn parse(data: &str) -> Result<PetrelHeaders, PetrelHeaderError> {
    parse_petrel_headers(data.as_bytes())
}

fn without(data: &str) -> String {
    let p = parse(data).expect("valid");
    let mut out = Vec::new();
    copy_without(data.as_bytes(), &p.remove, &mut out);
    String::from_utf8(out).expect("utf8")
}

#[test]
fn reads_tags_and_metadata_and_their_ranges() {
    let data = "From: a@b.c\r\nX-Petrel-Tag: welcome\r\nSubject: hi\r\n\
                X-Petrel-Metadata: {\"user\":\"42\",\"n\":7,\"vip\":true}\r\nX-Petrel-Tag: q4 \r\n\r\n\
                X-Petrel-Tag: body\r\n";
    let p = parse(data).expect("valid");
    assert_eq!(p.tags, vec!["welcome", "q4"]);
    assert_eq!(
        p.metadata.as_deref(),
        Some("{\"user\":\"42\",\"n\":7,\"vip\":true}")
    );
    assert_eq!(p.remove.len(), 3);
    assert_eq!(&data[p.remove[0].clone()], "X-Petrel-Tag: welcome\r\n");
    assert_eq!(
        without(data),
        "From: a@b.c\r\nSubject: hi\r\n\r\nX-Petrel-Tag: body\r\n",
        "only header-section fields go; the body is never touched"
    );
}

#[test]
fn names_are_case_insensitive_and_folding_is_undone() {
    let data = "x-petrel-TAG:\r\n  folded\r\n tag\r\nX-PETREL-METADATA: {\"a\":\r\n \"b\"}\r\nTo: x\r\n\r\n";
    let p = parse(data).expect("valid");
    assert_eq!(p.tags, vec!["folded tag"]);
    assert_eq!(p.metadata.as_deref(), Some("{\"a\": \"b\"}"));
    assert_eq!(without(data), "To: x\r\n\r\n");
}

#[test]
fn other_petrel_fields_and_headers_only_messages() {
    let data = "X-Petrel-Other: kept\r\nX-Petrel-Tag: last";
    let p = parse(data).expect("valid");
    assert_eq!(p.tags, vec!["last"]);
    assert_eq!(without(data), "X-Petrel-Other: kept\r\n");
    assert_eq!(parse("").expect("empty"), PetrelHeaders::default());
}

#[test]
fn tag_limits_at_max_and_beyond() {
    let five: String = (0..TAGS_MAX)
        .map(|i| format!("X-Petrel-Tag: t{i}\r\n"))
        .collect();
    assert_eq!(parse(&five).expect("five").tags.len(), TAGS_MAX);
    let six = format!("{five}X-Petrel-Tag: t5\r\n");
    assert_eq!(
        parse(&six),
        Err(PetrelHeaderError::TooManyTags { max: TAGS_MAX })
    );
    let at_max = format!("X-Petrel-Tag: {}\r\n", "a".repeat(TAG_BYTES_MAX));
    assert_eq!(parse(&at_max).expect("at max").tags[0].len(), TAG_BYTES_MAX);
    let over = format!(
        "X-Petrel-Tag: ok\r\nX-Petrel-Tag: {}\r\n",
        "a".repeat(TAG_BYTES_MAX + 1)
    );
    let err = parse(&over).expect_err("too long");
    assert_eq!(
        err,
        PetrelHeaderError::TagTooLong {
            number: 2,
            len_bytes: TAG_BYTES_MAX + 1,
            max_bytes: TAG_BYTES_MAX
        }
    );
    assert_eq!(
        err.to_string(),
        "X-Petrel-Tag 2 is 129 bytes, more than 128"
    );
}

#[test]
fn bad_tags() {
    assert_eq!(
        parse("X-Petrel-Tag:   \r\n"),
        Err(PetrelHeaderError::TagEmpty { number: 1 })
    );
    assert_eq!(
        parse_petrel_headers(b"X-Petrel-Tag: a\x01b\r\n"),
        Err(PetrelHeaderError::TagNotText { number: 1 })
    );
    assert_eq!(
        parse("X-Petrel-Tag: a\r\n\tb\r\n"),
        Err(PetrelHeaderError::TagNotText { number: 1 }),
        "a tab is a control character, even one from folding"
    );
    assert_eq!(
        parse_petrel_headers(b"X-Petrel-Tag: \xff\xfe\r\n"),
        Err(PetrelHeaderError::TagNotText { number: 1 })
    );
    assert_eq!(
        parse("X-Petrel-Tag: caf\u{e9} cr\u{e8}me\r\n")
            .expect("UTF-8 text")
            .tags,
        vec!["caf\u{e9} cr\u{e8}me"]
    );
}

#[test]
fn metadata_limits_at_max_and_beyond() {
    // {"k":"vvv..."} is 8 bytes plus the value.
    let at_max = format!("{{\"k\":\"{}\"}}", "v".repeat(METADATA_BYTES_MAX - 8));
    assert_eq!(at_max.len(), METADATA_BYTES_MAX);
    let p = parse(&format!("X-Petrel-Metadata: {at_max}\r\n")).expect("at max");
    assert_eq!(p.metadata.as_deref(), Some(at_max.as_str()));
    let over = format!("{{\"k\":\"{}\"}}", "v".repeat(METADATA_BYTES_MAX - 7));
    assert_eq!(
        parse(&format!("X-Petrel-Metadata: {over}\r\n")),
        Err(PetrelHeaderError::MetadataTooLarge {
            len_bytes: METADATA_BYTES_MAX + 1,
            max_bytes: METADATA_BYTES_MAX
        })
    );
}

#[test]
fn bad_metadata() {
    let m = |v: &str| parse(&format!("X-Petrel-Metadata: {v}\r\n"));
    assert_eq!(
        parse("X-Petrel-Metadata: {}\r\nx-petrel-metadata: {}\r\n"),
        Err(PetrelHeaderError::DuplicateMetadata)
    );
    let err = m("{\"a\":").expect_err("truncated JSON");
    assert!(matches!(err, PetrelHeaderError::MetadataNotJson { .. }));
    assert!(
        err.to_string()
            .starts_with("X-Petrel-Metadata is not valid JSON: EOF while parsing"),
        "{err}"
    );
    assert_eq!(m("[1,2]"), Err(PetrelHeaderError::MetadataNotObject));
    assert_eq!(m("\"s\""), Err(PetrelHeaderError::MetadataNotObject));
    assert_eq!(m("{\"\":1}"), Err(PetrelHeaderError::MetadataKeyEmpty));
    for bad in ["null", "[1]", "{\"x\":1}"] {
        assert_eq!(
            m(&format!("{{\"key\":{bad}}}")),
            Err(PetrelHeaderError::MetadataValueNotScalar {
                key: "\"key\"".into()
            })
        );
    }
    // A key with a line break is escaped in the reason: it cannot end the reply line.
    let err = m("{\"a\\r\\n250 ok\":null}").expect_err("null value");
    assert_eq!(
        err.to_string(),
        "X-Petrel-Metadata value of \"a\\r\\n250 ok\" must be a string, number or boolean"
    );
    assert!(!err.to_string().contains('\n'));
    assert!(matches!(
        parse_petrel_headers(b"X-Petrel-Metadata: {\"a\":\"\xff\"}\r\n"),
        Err(PetrelHeaderError::MetadataNotJson { .. })
    ));
}

fn trace() -> TraceInfo<'static> {
    TraceInfo {
        hostname: "mx.test",
        helo: "client.example",
        peer: "192.0.2.7:40000".parse().expect("literal address"),
        tls: None,
        authenticated_as: Some("alice"),
        queue_id: "Q1",
        recipient: None,
        now_unix_secs: 1_795_449_519,
        submission: true,
    }
}

#[test]
fn prepare_removes_the_fields_and_reports_attribution() {
    let data = b"From: Alice <alice@Example.COM>\r\nX-Petrel-Tag: t1\r\n\
                 X-Petrel-Metadata: {\"a\":1}\r\nMessage-ID: <m1@example.com>\r\n\r\nhi\r\n";
    let p = prepare(data, &trace(), 64 << 10).expect("valid");
    let text = String::from_utf8(p.message).expect("utf8");
    assert!(!text.to_ascii_lowercase().contains("x-petrel"), "{text}");
    assert!(text.ends_with(
        "From: Alice <alice@Example.COM>\r\nMessage-ID: <m1@example.com>\r\n\r\nhi\r\n"
    ));
    assert_eq!(p.tags, vec!["t1"]);
    assert_eq!(p.metadata.as_deref(), Some("{\"a\":1}"));
    assert_eq!(p.rfc822_message_id.as_deref(), Some("m1@example.com"));
    assert_eq!(p.from_domain.as_deref(), Some("example.com"));
    // A submission without a Message-ID gets Petrel's, and that is the one recorded.
    let p = prepare(
        b"From: bob@dev.petrel.test\r\n\r\nhi\r\n",
        &trace(),
        64 << 10,
    )
    .expect("ok");
    assert_eq!(
        p.rfc822_message_id.as_deref(),
        Some("Q1.1795449519@mx.test")
    );
    assert!(p.tags.is_empty() && p.metadata.is_none());
    // Relay: no Message-ID is added, none is recorded; no From, no domain.
    let relay = TraceInfo {
        submission: false,
        ..trace()
    };
    let p = prepare(b"To: b@x\r\n\r\nhi\r\n", &relay, 64 << 10).expect("ok");
    assert_eq!((p.rfc822_message_id, p.from_domain), (None, None));
}

#[test]
fn prepare_refuses_a_malformed_field_with_550_5_6_0() {
    let data = b"From: a@b.c\r\nX-Petrel-Metadata: [1]\r\n\r\nhi\r\n";
    let err = prepare(data, &trace(), 64 << 10).expect_err("not an object");
    let reply = err.reply();
    assert_eq!((reply.code, reply.enhanced), (550, Some((5, 6, 0))));
    assert_eq!(reply.text, "X-Petrel-Metadata must be a JSON object");
}

#[test]
fn message_id_is_cleaned_or_dropped() {
    let id = |v: &str| {
        let data = format!("Message-ID:{v}\r\n\r\n");
        prepare(data.as_bytes(), &trace(), 64 << 10)
            .expect("valid")
            .rfc822_message_id
    };
    assert_eq!(id(" <a@b>").as_deref(), Some("a@b"));
    assert_eq!(id("\r\n  <a@b> ").as_deref(), Some("a@b"));
    assert_eq!(id(" bare@id").as_deref(), Some("bare@id"));
    assert_eq!(id(" <>"), None);
    let long = format!(" <{}@x>", "a".repeat(RFC822_MESSAGE_ID_BYTES_MAX));
    assert_eq!(id(&long), None);
}

/// Arbitrary bytes (xorshift) and mutations of a valid section: never a panic, and the
/// removal ranges always stay sorted, disjoint and inside the data.
#[test]
fn garbage_never_panics() {
    let seed = b"X-Petrel-Tag: a\r\n b\r\nX-Petrel-Metadata: {\"k\":\"v\"}\r\nFrom: x\r\n\r\nbody";
    let mut state = 0x9e37_79b9u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    for round in 0..4096 {
        let mut data: Vec<u8> = if round % 2 == 0 {
            seed.to_vec()
        } else {
            (0..next() % 200).map(|_| next() as u8).collect()
        };
        for _ in 0..(next() % 6) {
            if data.is_empty() {
                break;
            }
            let i = next() as usize % data.len();
            data[i] = b"\r\n :{}\"X-Petrel-Tag\x00\xff"[next() as usize % 20];
        }
        if let Ok(p) = parse_petrel_headers(&data) {
            let mut end = 0;
            for r in &p.remove {
                assert!(r.start >= end && r.start < r.end && r.end <= data.len());
                end = r.end;
            }
            assert!(p.tags.len() <= TAGS_MAX);
            let mut out = Vec::new();
            copy_without(&data, &p.remove, &mut out);
            assert_eq!(
                out.len() + p.remove.iter().map(|r| r.len()).sum::<usize>(),
                data.len()
            );
        }
        let _ = prepare(&data, &trace(), 64 << 10);
    }
}
