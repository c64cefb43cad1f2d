//! Session tests written as SMTP dialogues: each step feeds bytes and lists the replies expected
//! (prefixes of each reply's last line, separated by ';').

use super::*;
use crate::types::{Limits, Reply, Transaction};

fn config() -> ServerConfig {
    ServerConfig {
        hostname: "mx.test".into(),
        limits: Limits::default(),
        starttls_available: true,
        auth_without_tls: false,
        auth_enabled: true,
        tls_required: false,
        auth_required: false,
    }
}

fn peer(tls: bool) -> PeerInfo {
    PeerInfo {
        addr: "192.0.2.7:40000".parse().expect("literal address"),
        tls,
    }
}

/// A driver with a fixed policy: addresses containing "reject" are refused, the password
/// "secret" is right, STARTTLS always succeeds, messages are queued as Q<n>.
struct Harness {
    session: Session,
    messages: Vec<Transaction>,
    events: Vec<Event>,
    /// Every byte of output so far.
    transcript: String,
}

impl Harness {
    fn new(config: ServerConfig, tls: bool) -> Harness {
        let mut h = Harness {
            session: Session::new(Arc::new(config), peer(tls)),
            messages: Vec::new(),
            events: Vec::new(),
            transcript: String::new(),
        };
        let greeting = h.drain();
        assert_eq!(greeting, vec!["220 mx.test ESMTP Petrel".to_string()]);
        h
    }

    /// Feeds `input` (CRLF appended unless it ends with LF), answers events, returns replies.
    fn step(&mut self, input: &str) -> Vec<String> {
        let mut bytes = input.as_bytes().to_vec();
        if !input.ends_with('\n') {
            bytes.extend_from_slice(b"\r\n");
        }
        self.feed(&bytes)
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.session.feed(bytes);
        self.answer_all();
        self.drain()
    }

    fn answer_all(&mut self) {
        for _ in 0..10_000 {
            let Some(event) = self.session.next_event() else {
                return;
            };
            self.events.push(event.clone());
            let refuse = || Reply::new(550, (5, 7, 1), "Refused by policy");
            match event {
                Event::Mail { from, .. } if from.contains("reject") => {
                    self.session.mail_verdict(Verdict::Reject(refuse()))
                }
                Event::Mail { .. } => self.session.mail_verdict(Verdict::Accept),
                Event::Rcpt { to } if to.contains("reject") => {
                    self.session.rcpt_verdict(Verdict::Reject(refuse()))
                }
                Event::Rcpt { .. } => self.session.rcpt_verdict(Verdict::Accept),
                Event::Auth { username, .. } if username == "locked" => {
                    self.session.auth_locked_out()
                }
                Event::Auth { username, password } => self
                    .session
                    .auth_result((password == "secret").then_some(username)),
                Event::StartTls => self.session.tls_established(),
                Event::Message(txn) => {
                    self.messages.push(txn);
                    let queue_id = format!("Q{}", self.messages.len());
                    self.session.data_verdict(DataVerdict::Accept { queue_id });
                }
                Event::Close => {}
            }
        }
    }

    /// Takes the output; returns the last line of each reply.
    fn drain(&mut self) -> Vec<String> {
        let out = String::from_utf8_lossy(self.session.output()).into_owned();
        let n = self.session.output().len();
        self.session.consume_output(n);
        assert!(
            crate::check_replies(out.as_bytes()).is_ok(),
            "malformed: {out:?}"
        );
        self.transcript.push_str(&out);
        out.split("\r\n")
            .filter(|line| !line.is_empty() && line.as_bytes().get(3) != Some(&b'-'))
            .map(str::to_owned)
            .collect()
    }
}

/// Runs a dialogue on a new session and checks every step's replies.
fn dialogue_with(config: ServerConfig, tls: bool, steps: &[(&str, &str)]) -> Harness {
    let mut h = Harness::new(config, tls);
    for (input, expected) in steps {
        let replies = h.step(input);
        let expected: Vec<&str> = expected
            .split(';')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        assert_eq!(
            replies.len(),
            expected.len(),
            "step {input:?}: got {replies:?}"
        );
        for (reply, prefix) in replies.iter().zip(&expected) {
            assert!(
                reply.starts_with(prefix),
                "step {input:?}: got {reply:?}, want {prefix:?}"
            );
        }
    }
    h
}

fn dialogue(steps: &[(&str, &str)]) -> Harness {
    dialogue_with(config(), false, steps)
}

const TXN: (&str, &str) = (
    "EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA",
    "250;250 2.1.0;250 2.1.5;354",
);

#[test]
fn ehlo_lists_extensions_and_auth_only_under_tls() {
    let h = dialogue(&[("EHLO client.test", "250 ENHANCEDSTATUSCODES")]);
    for keyword in [
        "250-mx.test",
        "250-SIZE 37748736",
        "250-PIPELINING",
        "250-8BITMIME",
    ] {
        assert!(
            h.transcript.contains(keyword),
            "{keyword} in {}",
            h.transcript
        );
    }
    for keyword in ["250-SMTPUTF8", "250-CHUNKING", "250-DSN", "250-STARTTLS"] {
        assert!(
            h.transcript.contains(keyword),
            "{keyword} in {}",
            h.transcript
        );
    }
    assert!(!h.transcript.contains("AUTH"));
    let h = dialogue_with(config(), true, &[("EHLO client.test", "250")]);
    assert!(h.transcript.contains("250-AUTH PLAIN LOGIN") && !h.transcript.contains("STARTTLS"));
    let h = dialogue_with(
        ServerConfig {
            auth_without_tls: true,
            ..config()
        },
        false,
        &[("EHLO c", "250")],
    );
    assert!(h.transcript.contains("250-AUTH PLAIN LOGIN"));
    let h = dialogue(&[
        ("HELO client.test", "250 mx.test"),
        ("MAIL FROM:<a@b.c>", "250 2.1.0"),
    ]);
    assert_eq!(h.events.len(), 1);
}

#[test]
fn pipelined_transaction_in_one_feed() {
    let mut h = dialogue(&[(
        "EHLO c\r\nMAIL FROM:<a@example.org> SIZE=100\r\nRCPT TO:<b@example.net>\r\n\
         RCPT TO:<c@example.net>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT",
        "250;250 2.1.0 Ok;250 2.1.5;250 2.1.5;354;250 2.0.0 Ok: queued as Q1;221 2.0.0",
    )]);
    assert!(h.session.is_closed());
    assert_eq!(h.events.last(), Some(&Event::Close));
    let txn = &h.messages[0];
    assert_eq!(txn.helo, "c");
    assert_eq!(txn.mail_from, "a@example.org");
    assert_eq!(txn.params.size, Some(100));
    assert_eq!(txn.recipients, ["b@example.net", "c@example.net"]);
    assert_eq!(txn.data, b"Subject: x\r\n\r\nbody\r\n");
    assert!(!txn.tls && txn.authenticated_as.is_none());
    assert!(h.step("NOOP").is_empty(), "closed sessions ignore input");
}

#[test]
fn data_dot_unstuffing_and_empty_lines() {
    let h = dialogue(&[
        TXN,
        (
            "..leading\r\n\r\n...\r\n.x\r\n.",
            "250 2.0.0 Ok: queued as Q1",
        ),
    ]);
    assert_eq!(h.messages[0].data, b".leading\r\n\r\n..\r\nx\r\n");
    let h = dialogue(&[TXN, (".", "250 2.0.0")]);
    assert_eq!(h.messages[0].data, b"");
}

#[test]
fn sequence_errors() {
    dialogue(&[
        ("MAIL FROM:<a@b.c>", "503 5.5.1"),
        ("RCPT TO:<a@b.c>", "503 5.5.1"),
        ("DATA", "503 5.5.1"),
        ("EHLO c", "250"),
        ("RCPT TO:<a@b.c>", "503 5.5.1"),
        ("MAIL FROM:<a@b.c>", "250"),
        ("MAIL FROM:<a@b.c>", "503 5.5.1"),
        ("DATA", "554 5.5.1"),
        ("BDAT 5 LAST\r\nabc", "554 5.5.1"),
        ("RSET", "250 2.0.0"),
        ("DATA", "503 5.5.1"),
        ("FOO", "500 5.5.2"),
        ("DATA x", "501 5.5.4"),
    ]);
}

#[test]
fn misc_commands() {
    dialogue(&[
        ("NOOP", "250 2.0.0"),
        ("noop anything", "250 2.0.0"),
        ("HELP", "214 2.0.0"),
        ("VRFY user", "252 2.5.0"),
        ("VRFY", "501 5.5.4"),
        ("EXPN list", "502 5.5.1"),
        ("EHLO", "501 5.5.4"),
        ("RSET", "250 2.0.0"),
        ("QUIT", "221 2.0.0"),
    ]);
}

#[test]
fn policy_rejections_are_written_as_given() {
    let h = dialogue(&[
        ("EHLO c", "250"),
        ("MAIL FROM:<reject@b.c>", "550 5.7.1 Refused by policy"),
        ("MAIL FROM:<>", "250 2.1.0"),
        ("RCPT TO:<reject@b.c>", "550 5.7.1"),
        ("DATA", "554 5.5.1"),
        ("RCPT TO:<Postmaster>", "250 2.1.5"),
        ("DATA\r\nhi\r\n.", "354;250 2.0.0"),
    ]);
    assert_eq!(h.messages[0].mail_from, "");
    assert_eq!(h.messages[0].recipients, ["Postmaster"]);
}

#[test]
fn address_syntax() {
    let h = dialogue(&[
        ("EHLO c", "250"),
        ("MAIL FROM: <\"john doe\"@example.org>", "250"),
        (
            "RCPT TO:<@relay.example,@r2.example:User.Name@[192.0.2.1]>",
            "250",
        ),
        ("RCPT TO:<x@[IPv6:2001:db8::1]>", "250"),
        ("RCPT TO:b@example.net", "501 5.5.4"),
        ("RCPT TO:<b@>", "501 5.1.3"),
        ("RCPT TO:<b..c@example.net>", "501 5.1.3"),
        ("RCPT TO:<b@-bad.example>", "501 5.1.3"),
        ("RCPT TO:<>", "501 5.1.3"),
        ("RCPT TO:<j\u{f6}rg@example.net>", "553 5.6.7"),
        ("RCPT TO:<b@example.net> XNOTIFY=NEVER", "555 5.5.4"),
    ]);
    assert_eq!(
        h.events[..3],
        [
            Event::Mail {
                from: "\"john doe\"@example.org".into(),
                params: MailParams::default(),
                authenticated_as: None
            },
            Event::Rcpt {
                to: "User.Name@[192.0.2.1]".into()
            },
            Event::Rcpt {
                to: "x@[IPv6:2001:db8::1]".into()
            },
        ]
    );
}

#[test]
fn mail_parameters() {
    let h = dialogue(&[
        ("EHLO c", "250"),
        ("MAIL FROM:<a@b.c> FOO=BAR", "555 5.5.4"),
        ("MAIL FROM:<a@b.c> SIZE=x", "501 5.5.4"),
        ("MAIL FROM:<a@b.c> BODY=9BIT", "501 5.5.4"),
        ("MAIL FROM:<a@b.c> SIZE=37748737", "552 5.3.4"),
        ("MAIL FROM:<j\u{f6}rg@b.c>", "553 5.6.7"),
        (
            "MAIL FROM:<j\u{f6}rg@b\u{fc}.c> SMTPUTF8 BODY=8BITMIME AUTH=<>",
            "250 2.1.0",
        ),
        ("RCPT TO:<\u{fc}@b\u{fc}.c>", "250 2.1.5"),
    ]);
    let Event::Mail { from, params, .. } = &h.events[0] else {
        panic!("not MAIL")
    };
    assert_eq!(from, "j\u{f6}rg@b\u{fc}.c");
    assert_eq!(
        params,
        &MailParams {
            size: None,
            body: Body::EightBitMime,
            smtputf8: true,
            ..MailParams::default()
        }
    );
}

#[test]
fn bdat_chunks_split_across_feeds() {
    let mut h = dialogue(&[(
        "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>",
        "250;250;250",
    )]);
    assert!(h.feed(b"BDAT 12\r\nSubject:").is_empty());
    assert_eq!(h.feed(b" x\r\n"), ["250 2.0.0 Ok: 12 octets received"]);
    assert!(h.feed(b"BDAT 6 LAST\r\n\r\nbo").is_empty());
    assert_eq!(
        h.feed(b"dyNOOP\r\n"),
        ["250 2.0.0 Ok: queued as Q1", "250 2.0.0 Ok"]
    );
    assert_eq!(
        h.messages[0].data, b"Subject: x\r\n\r\nbody\r\n",
        "CRLF appended"
    );
    assert_eq!(
        h.feed(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nBDAT 5\r\nab\r\ncBDAT 0 LAST\r\n"),
        [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "250 2.0.0 Ok: 5 octets received",
            "250 2.0.0 Ok: queued as Q2"
        ]
    );
    assert_eq!(h.messages[1].data, b"ab\r\nc\r\n");
    let h = dialogue(&[
        (
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nBDAT 4\r\nab\r\n",
            "250;250;250;250",
        ),
        ("DATA", "503 5.5.1"),
        ("RCPT TO:<x@e.f>", "503 5.5.1"),
        ("BDAT 0 LAST", "250 2.0.0 Ok: queued as Q1"),
        ("BDAT 3 LAST\r\nx", "503 5.5.1"),
        ("BDAT x", "501 5.5.4"),
    ]);
    assert_eq!(h.messages[0].data, b"ab\r\n");
}

#[test]
fn binarymime_requires_bdat_and_skips_line_checks() {
    let mut h = dialogue(&[
        (
            "EHLO c\r\nMAIL FROM:<a@b.c> BODY=BINARYMIME\r\nRCPT TO:<d@e.f>",
            "250;250;250",
        ),
        ("DATA", "503 5.5.1"),
    ]);
    assert_eq!(
        h.feed(b"BDAT 4 LAST\r\na\nb\r"),
        ["250 2.0.0 Ok: queued as Q1"]
    );
    assert_eq!(h.messages[0].data, b"a\nb\r");
    assert_eq!(h.messages[0].params.body, Body::BinaryMime);
}

#[test]
fn bdat_failures_discard_pipelined_chunks() {
    let h = dialogue(&[
        (
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>",
            "250;250;250",
        ),
        (
            "BDAT 3\r\na\nbBDAT 6\r\nMAIL\r\nBDAT 0 LAST",
            "550 5.6.0;503 5.5.1;503 5.5.1",
        ),
        (
            "MAIL FROM:<a@b.c> SIZE=10\r\nRCPT TO:<d@e.f>\r\nBDAT 37748737 LAST",
            "250;250",
        ),
    ]);
    assert!(h.messages.is_empty());
    let mut h = h;
    assert!(
        h.feed(&vec![b'x'; 1 << 20]).is_empty(),
        "an oversized chunk is consumed"
    );
}

/// Each smuggling variant: the fake end must not end the message, the smuggled commands must
/// not run, and the message is refused at its real end.
#[test]
fn smtp_smuggling_variants_are_refused() {
    for fake_end in [
        "\n.\n",
        "\r\n.\n",
        "\n.\r\n",
        "\r.\r",
        "\r.\r\n",
        "\r\n.\r",
        "\r\n\n.\r\n",
    ] {
        let smuggled = format!(
            "Subject: x\r\n\r\nbody{fake_end}MAIL FROM:<evil@x.y>\r\nRCPT TO:<v@e.f>\r\nDATA\r\n\
             forged\r\n.\r\n"
        );
        let h = dialogue(&[TXN, (&smuggled, "550 5.6.0"), ("NOOP", "250 2.0.0")]);
        assert!(h.messages.is_empty(), "{fake_end:?}");
        assert_eq!(h.events.len(), 2, "{fake_end:?}: no smuggled MAIL event");
    }
}

#[test]
fn bare_line_endings_and_long_lines_in_commands() {
    let mut h = dialogue(&[
        ("EHLO c\nNOOP", "500 5.5.2;250 2.0.0"),
        ("NO\rOP", "500 5.5.2"),
    ]);
    assert_eq!(
        h.feed(b"NOOP\n\r\n"),
        [
            "500 5.5.2 Error: bare CR or LF in command, lines must end with CRLF",
            "500 5.5.2 Error: command not recognized"
        ]
    );
    let long = format!("NOOP {}", "x".repeat(3000));
    dialogue(&[
        (&long, "500 5.5.2 Error: line too long"),
        ("NOOP", "250 2.0.0"),
    ]);
    let mut h = Harness::new(config(), false);
    assert_eq!(
        h.feed("x".repeat(2048).as_bytes()),
        ["500 5.5.2 Error: line too long"]
    );
    assert!(h.feed(b"still the same line").is_empty());
    assert_eq!(h.feed(b"\r\nNOOP\r\n"), ["250 2.0.0 Ok"]);
}

#[test]
fn text_line_too_long_and_message_too_big() {
    let long_line = format!("{}\r\n.", "y".repeat(999));
    let h = dialogue(&[TXN, (&long_line, "552 5.5.6"), ("NOOP", "250")]);
    assert!(h.messages.is_empty());
    let ok_line = format!("{}\r\n.", "y".repeat(998));
    dialogue(&[TXN, (&ok_line, "250 2.0.0")]);

    let small = ServerConfig {
        limits: Limits {
            message_size_max_bytes: 100,
            ..Limits::default()
        },
        ..config()
    };
    let big = format!("{}.", "0123456789abcdefgh\r\n".repeat(10));
    let h = dialogue_with(
        small.clone(),
        false,
        &[TXN, (&big, "552 5.3.4"), ("NOOP", "250")],
    );
    assert!(h.messages.is_empty());
    dialogue_with(
        small,
        false,
        &[
            (
                "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>",
                "250;250;250",
            ),
            ("BDAT 101 LAST", ""),
            (&"z".repeat(99), "552 5.3.4"),
            ("MAIL FROM:<a@b.c> SIZE=101", "552 5.3.4"),
        ],
    );
}

#[test]
fn too_many_recipients() {
    let two = ServerConfig {
        limits: Limits {
            recipients_max: 2,
            ..Limits::default()
        },
        ..config()
    };
    let h = dialogue_with(
        two,
        false,
        &[
            ("EHLO c\r\nMAIL FROM:<a@b.c>", "250;250"),
            (
                "RCPT TO:<1@b.c>\r\nRCPT TO:<2@b.c>\r\nRCPT TO:<3@b.c>",
                "250;250;452 4.5.3",
            ),
            ("DATA\r\n.", "354;250 2.0.0"),
        ],
    );
    assert_eq!(h.messages[0].recipients, ["1@b.c", "2@b.c"]);
}

#[test]
fn starttls_discards_injected_plaintext_and_resets() {
    let mut h = dialogue(&[
        ("EHLO c", "250"),
        (
            "STARTTLS\r\nMAIL FROM:<evil@x.y>\r\nRCPT TO:<v@e.f>",
            "220 2.0.0",
        ),
        ("MAIL FROM:<a@b.c>", "503 5.5.1"),
        ("EHLO c", "250"),
        ("STARTTLS", "503 5.5.1"),
        (
            "MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n.",
            "250;250;354;250",
        ),
    ]);
    assert_eq!(h.events[0], Event::StartTls);
    assert!(matches!(&h.events[1], Event::Mail { from, .. } if from == "a@b.c"));
    assert!(h.messages[0].tls);
    assert!(h.transcript.contains("250-AUTH PLAIN LOGIN"));
    assert!(h.step("QUIT").len() == 1);
    let off = ServerConfig {
        starttls_available: false,
        ..config()
    };
    dialogue_with(
        off,
        false,
        &[("STARTTLS", "502 5.5.1"), ("STARTTLS x", "501 5.5.4")],
    );
}

#[test]
fn starttls_pauses_input_until_handshake() {
    let mut s = Session::new(Arc::new(config()), peer(false));
    s.feed(b"EHLO c\r\nSTARTTLS\r\nNOOP\r\n");
    assert_eq!(s.next_event(), Some(Event::StartTls));
    assert!(!s.wants_input());
    s.feed(b"NOOP\r\n");
    assert!(String::from_utf8_lossy(s.output()).ends_with("220 2.0.0 Ready to start TLS\r\n"));
    s.tls_established();
    assert!(s.wants_input());
    s.feed(b"NOOP\r\n");
    assert!(String::from_utf8_lossy(s.output()).ends_with("TLS\r\n250 2.0.0 Ok\r\n"));
}

#[test]
fn auth_plain_and_login_flows() {
    // base64("\0alice\0secret") and friends.
    let h = dialogue_with(
        config(),
        true,
        &[
            ("EHLO c", "250"),
            ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "235 2.7.0"),
            ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "503 5.5.1"),
            ("MAIL FROM:<a@b.c>", "250"),
        ],
    );
    assert!(matches!(&h.events[1], Event::Mail { authenticated_as: Some(a), .. } if a == "alice"));
    dialogue_with(
        config(),
        true,
        &[
            ("EHLO c", "250"),
            ("AUTH PLAIN", "334"),
            ("AGFsaWNlAHNlY3JldA==", "235 2.7.0"),
        ],
    );
    dialogue_with(
        config(),
        true,
        &[
            ("EHLO c", "250"),
            ("AUTH LOGIN", "334 VXNlcm5hbWU6"),
            ("YWxpY2U=", "334 UGFzc3dvcmQ6"),
            ("c2VjcmV0", "235 2.7.0"),
        ],
    );
    let h = dialogue_with(
        config(),
        true,
        &[
            ("EHLO c", "250"),
            ("AUTH LOGIN YWxpY2U=", "334 UGFzc3dvcmQ6"),
            ("=", "535 5.7.8"),
            ("AUTH PLAIN", "334"),
            ("*", "501 5.7.0"),
            ("AUTH LOGIN", "334"),
            ("!!!", "501 5.5.2"),
            ("AUTH CRAM-MD5", "504 5.5.4"),
            ("AUTH PLAIN Ym9iAGFsaWNlAHNlY3JldA==", "535 5.7.8"),
        ],
    );
    assert_eq!(
        h.events[0],
        Event::Auth {
            username: "alice".into(),
            password: String::new()
        }
    );
}

#[test]
fn auth_failures_close_the_session() {
    let h = dialogue_with(
        config(),
        true,
        &[
            ("EHLO c", "250"),
            ("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8"),
            ("AUTH LOGIN YWxpY2U=\r\nd3Jvbmc=", "334;535 5.7.8"),
            (
                "AUTH PLAIN AGFsaWNlAHdyb25n",
                "535 5.7.8;421 4.7.0 mx.test Error: too many failed",
            ),
        ],
    );
    assert!(h.session.is_closed());
}

#[test]
fn a_locked_out_address_gets_a_temporary_failure_that_counts_as_an_attempt() {
    let h = dialogue_with(
        config(),
        true,
        &[
            ("EHLO c", "250"),
            ("AUTH PLAIN AGxvY2tlZABzZWNyZXQ=", "454 4.7.0"),
            ("MAIL FROM:<a@b.test>", "250"),
            ("RSET", "250"),
            ("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8"),
            (
                "AUTH PLAIN AGxvY2tlZABzZWNyZXQ=",
                "454 4.7.0;421 4.7.0 mx.test Error: too many failed",
            ),
        ],
    );
    assert!(h.session.is_closed());
}

#[test]
fn auth_refused_before_tls_or_when_disabled() {
    dialogue(&[
        ("EHLO c", "250"),
        ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "530 5.7.0"),
    ]);
    dialogue_with(config(), true, &[("AUTH PLAIN", "503 5.5.1")]);
    let off = ServerConfig {
        auth_enabled: false,
        ..config()
    };
    dialogue_with(off, true, &[("EHLO c", "250"), ("AUTH PLAIN", "503 5.5.1")]);
    let dev = ServerConfig {
        auth_without_tls: true,
        ..config()
    };
    dialogue_with(
        dev,
        false,
        &[
            ("EHLO c", "250"),
            ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "235"),
        ],
    );
}

#[test]
fn too_many_errors_close_with_421() {
    let mut steps = vec![("EHLO c", "250")];
    steps.extend(std::iter::repeat_n(("BOGUS", "500 5.5.2"), 9));
    steps.push((
        "BOGUS",
        "500 5.5.2;421 4.7.0 mx.test Error: too many errors",
    ));
    let mut h = dialogue(&steps);
    assert!(h.session.is_closed());
    assert_eq!(h.events, [Event::Close]);
    assert!(h.step("NOOP").is_empty());
}

#[test]
fn timeout_queues_421_and_closes() {
    let mut s = Session::new(Arc::new(config()), peer(false));
    s.timeout();
    assert!(s.is_closed());
    assert_eq!(s.next_event(), Some(Event::Close));
    let out = String::from_utf8_lossy(s.output()).into_owned();
    assert!(
        out.ends_with("421 4.4.2 mx.test Error: timeout exceeded\r\n"),
        "{out}"
    );
}

#[test]
fn input_is_buffered_while_an_event_waits() {
    let mut s = Session::new(Arc::new(config()), peer(false));
    s.feed(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nNOOP\r\n");
    let Some(Event::Mail { .. }) = s.next_event() else {
        panic!("expected MAIL")
    };
    assert_eq!(s.next_event(), None, "one outstanding event");
    let noise = vec![b'x'; 64 << 10];
    s.feed(&noise);
    assert!(!s.wants_input(), "over pipeline_input_max_bytes");
    s.feed(&noise);
    assert!(!s.is_closed());
    s.feed(&noise);
    assert!(
        s.is_closed(),
        "a driver that ignores wants_input is cut off"
    );
    assert!(String::from_utf8_lossy(s.output()).contains("421 4.7.0"));

    // With no event outstanding, a partial line is all that is buffered: keep reading.
    let tiny = ServerConfig {
        limits: Limits {
            pipeline_input_max_bytes: 16,
            ..Limits::default()
        },
        ..config()
    };
    let mut s = Session::new(Arc::new(tiny), peer(false));
    s.feed("NOOP ".repeat(100).as_bytes());
    assert!(s.wants_input() && !s.is_closed());
    s.feed(b"\r\n");
    assert!(String::from_utf8_lossy(s.output()).ends_with("250 2.0.0 Ok\r\n"));
}

/// A long dialogue covering every mode, fed whole and byte by byte: the same transcript.
#[test]
fn byte_by_byte_feeding_gives_the_same_replies() {
    let script = "EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nMAIL FROM:<a@b.c> SIZE=20\r\n\
        RCPT TO:<reject@e.f>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nSubject: a\r\n\r\n..x\r\n.\r\n\
        MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nBDAT 7\r\nab\r\ncd\rBDAT 1 LAST\r\n\nBOGUS\n\
        NOOP\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nx\n.\r\n.\r\nRSET\r\nQUIT\r\n";
    let mut whole = Harness::new(
        ServerConfig {
            auth_without_tls: true,
            ..config()
        },
        false,
    );
    whole.feed(script.as_bytes());
    let mut bytewise = Harness::new(
        ServerConfig {
            auth_without_tls: true,
            ..config()
        },
        false,
    );
    for b in script.as_bytes() {
        bytewise.feed(std::slice::from_ref(b));
    }
    assert_eq!(whole.transcript, bytewise.transcript);
    assert_eq!(whole.messages, bytewise.messages);
    assert_eq!(whole.messages.len(), 2);
    assert_eq!(whole.messages[1].data, b"ab\r\ncd\r\n");
    assert!(
        whole.transcript.contains("550 5.6.0"),
        "{}",
        whole.transcript
    );
    assert!(whole.session.is_closed() && bytewise.session.is_closed());
}

#[path = "session_submission_tests.rs"]
mod submission;

#[path = "session_dsn_tests.rs"]
mod dsn;
