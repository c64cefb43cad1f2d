use super::*;

fn trace(submission: bool) -> TraceInfo<'static> {
    TraceInfo {
        hostname: "mx.test",
        helo: "client.example",
        peer: "192.0.2.7:40000".parse().expect("literal address"),
        tls: None,
        authenticated_as: None,
        queue_id: "Q1",
        recipient: Some("b@example.net"),
        now_unix_secs: 1_795_449_519,
        submission,
    }
}

fn date(secs: i64) -> String {
    let mut out = Vec::new();
    write_rfc5322_date(&mut out, secs);
    String::from_utf8(out).expect("ASCII date")
}

#[test]
fn dates_match_known_values() {
    assert_eq!(date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
    assert_eq!(date(-1), "Wed, 31 Dec 1969 23:59:59 +0000");
    assert_eq!(date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    assert_eq!(date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 +0000");
    assert_eq!(date(1_795_449_519), "Mon, 23 Nov 2026 15:58:39 +0000");
    assert_eq!(date(4_102_444_800), "Fri, 1 Jan 2100 00:00:00 +0000");
}

#[test]
fn parses_fields_with_folding() {
    let data =
        b"Subject: hello\r\n world\r\nFrom:a@b.c\r\nX-Empty:\r\n\r\nbody\r\nNot: a header\r\n";
    let fields = parse_headers(data).expect("valid");
    assert_eq!(
        fields,
        vec![
            ("Subject", &b" hello\r\n world"[..]),
            ("From", &b"a@b.c"[..]),
            ("X-Empty", &b""[..]),
        ]
    );
    // Headers only, with or without a final CRLF.
    assert_eq!(
        parse_headers(b"A: 1\r\nB: 2\r\n").expect("valid")[1],
        ("B", &b" 2"[..])
    );
    assert_eq!(
        parse_headers(b"A: 1\r\nB: 2").expect("valid")[1],
        ("B", &b" 2"[..])
    );
    assert_eq!(parse_headers(b"").expect("valid"), vec![]);
    assert_eq!(
        parse_headers(b"\r\nbody without headers").expect("valid"),
        vec![]
    );
}

#[test]
fn rejects_malformed_headers() {
    let cases: &[(&[u8], CheckError)] = &[
        (
            b"Subject hello\r\n\r\n",
            CheckError::MissingColon { offset: 0 },
        ),
        (
            b"A: 1\r\nBad Name: x\r\n",
            CheckError::FieldName { offset: 6 },
        ),
        (b": no name\r\n", CheckError::FieldName { offset: 0 }),
        (
            b" folded first\r\n",
            CheckError::OrphanContinuation { offset: 0 },
        ),
        (b"A: 1\nB: 2\r\n", CheckError::BareLineEnding { offset: 4 }),
        (b"A: 1\r2\r\n", CheckError::BareLineEnding { offset: 4 }),
        (b"N\xc3\xa4me: x\r\n", CheckError::FieldName { offset: 0 }),
    ];
    for (data, error) in cases {
        assert_eq!(
            parse_headers(data).as_ref(),
            Err(error),
            "{:?}",
            String::from_utf8_lossy(data)
        );
        let reply = error.reply();
        assert_eq!((reply.code, reply.enhanced), (554, Some((5, 6, 0))));
    }
    let big = format!("X: {}\r\n", "a".repeat(100)).repeat(20);
    let error = parse_headers_bounded(big.as_bytes(), 1000).expect_err("too large");
    assert_eq!(error, CheckError::HeaderSectionTooLarge { max_bytes: 1000 });
    assert_eq!(error.reply().code, 552);
    assert!(prepare_message(b"bad header\r\n\r\n", &trace(false)).is_err());
}

#[test]
fn received_is_prepended() {
    let out = prepare_message(b"Subject: x\r\n\r\nbody\r\n", &trace(false)).expect("valid");
    let expected = "Received: from client.example ([192.0.2.7])\r\n\
        \tby mx.test (Petrel) with ESMTP id Q1\r\n\
        \tfor <b@example.net>;\r\n\
        \tMon, 23 Nov 2026 15:58:39 +0000\r\n\
        Subject: x\r\n\r\nbody\r\n";
    assert_eq!(String::from_utf8_lossy(&out), expected);
    let fields = parse_headers(&out).expect("still valid");
    assert_eq!(fields[0].0, "Received");
}

#[test]
fn received_notes_tls_auth_and_ipv6() {
    let trace = TraceInfo {
        tls: Some("TLSv1.3 TLS_AES_128_GCM_SHA256"),
        authenticated_as: Some("alice"),
        peer: "[2001:db8::1]:25".parse().expect("literal address"),
        recipient: None,
        helo: "evil\r\nInjected: yes",
        ..trace(false)
    };
    let out = String::from_utf8(prepare_message(b"", &trace).expect("valid")).expect("ASCII");
    assert!(
        out.starts_with("Received: from evilInjected:yes ([IPv6:2001:db8::1])\r\n"),
        "{out}"
    );
    assert!(
        out.contains("with ESMTPSA id Q1\r\n\t(TLSv1.3 TLS_AES_128_GCM_SHA256);\r\n"),
        "{out}"
    );
    assert!(!out.contains("alice"));
    assert_eq!(parse_headers(out.as_bytes()).expect("valid").len(), 1);
}

#[test]
fn submissions_get_message_id_and_date_when_missing() {
    let out = prepare_message(b"Subject: x\r\n\r\nbody\r\n", &trace(true)).expect("valid");
    let out = String::from_utf8(out).expect("ASCII");
    assert!(
        out.contains("\r\nMessage-ID: <Q1.1795449519@mx.test>\r\n"),
        "{out}"
    );
    assert!(
        out.contains("\r\nDate: Mon, 23 Nov 2026 15:58:39 +0000\r\nSubject: x\r\n"),
        "{out}"
    );

    let kept = b"date: Sun, 1 Nov 2026 00:00:00 +0000\r\nMESSAGE-ID: <a@b>\r\n\r\nbody\r\n";
    let out =
        String::from_utf8(prepare_message(kept, &trace(true)).expect("valid")).expect("ASCII");
    assert_eq!(
        out.matches("Message-ID").count() + out.matches("MESSAGE-ID").count(),
        1
    );
    assert_eq!(
        out.matches("Date:").count(),
        0,
        "only the existing lowercase date"
    );

    let relay = prepare_message(b"Subject: x\r\n\r\n", &trace(false)).expect("valid");
    assert!(!String::from_utf8_lossy(&relay).contains("Message-ID"));
}

/// Pseudo-random header sections: no panic, errors map to 5xx, and whatever is accepted still
/// parses once the trace headers are added.
#[test]
fn prepared_messages_always_reparse() {
    const PIECES: &[&[u8]] = &[
        b"Subject: x",
        b"\r\n",
        b" folded",
        b"\tfold",
        b"From:",
        b":",
        b"X-A: b",
        b"\n",
        b"\r",
        b" ",
        b"Date: y",
        b"\xc3\xa4",
        b"\0",
        b"body",
    ];
    let mut seed = 0xfeed_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut data = Vec::new();
        for _ in 0..next() % 12 {
            data.extend_from_slice(PIECES[next() as usize % PIECES.len()]);
        }
        let trace = TraceInfo {
            now_unix_secs: next() as i64,
            ..trace(next() % 2 == 0)
        };
        match prepare_message_bounded(&data, &trace, 64) {
            Ok(out) => assert!(
                parse_headers(&out).is_ok(),
                "{:?}",
                String::from_utf8_lossy(&out)
            ),
            Err(e) => assert!(e.reply().code >= 500),
        }
    }
}
