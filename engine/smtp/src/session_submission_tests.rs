//! The submission profiles as dialogues: port 587 (RFC 6409: STARTTLS before AUTH and MAIL, AUTH
//! before MAIL) and port 465 (RFC 8314: the session starts under TLS, then the same rules).

use super::*;

/// The profile of a submission listener (`tls_required`, `auth_required`).
fn submission() -> ServerConfig {
    ServerConfig {
        tls_required: true,
        auth_required: true,
        ..config()
    }
}

/// alice / secret, the harness's right password.
const AUTH_ALICE: &str = "AUTH PLAIN AGFsaWNlAHNlY3JldA==";
const NEED_TLS: &str = "530 5.7.0 Must issue a STARTTLS command first";
const NEED_AUTH: &str = "530 5.7.0 Authentication required";

#[test]
fn submission_refuses_mail_and_auth_before_starttls() {
    let h = dialogue_with(
        submission(),
        false,
        &[
            ("EHLO client.test", "250"),
            ("MAIL FROM:<a@b.c>", NEED_TLS),
            (AUTH_ALICE, NEED_TLS),
            ("RCPT TO:<d@e.f>", "503 5.5.1"),
            ("STARTTLS", "220 2.0.0"),
            ("EHLO client.test", "250"),
            ("MAIL FROM:<a@b.c>", NEED_AUTH),
            (AUTH_ALICE, "235 2.7.0"),
            ("MAIL FROM:<a@b.c>", "250 2.1.0"),
            ("RCPT TO:<d@e.f>", "250 2.1.5"),
            ("DATA", "354"),
            ("Subject: s\r\n\r\nbody\r\n.", "250 2.0.0 Ok: queued as Q1"),
        ],
    );
    let mails = h
        .events
        .iter()
        .filter(|e| matches!(e, Event::Mail { .. }))
        .count();
    assert_eq!(mails, 1, "no refused MAIL reaches the driver");
    assert_eq!(h.messages[0].authenticated_as.as_deref(), Some("alice"));
    assert!(h.messages[0].tls);
}

#[test]
fn submission_advertises_auth_only_under_tls_even_where_auth_without_tls_is_on() {
    // Development mode lets loopback clients AUTH before STARTTLS on the relay listener; a
    // submission listener never does.
    let dev = ServerConfig {
        auth_without_tls: true,
        ..submission()
    };
    let h = dialogue_with(
        dev,
        false,
        &[
            ("EHLO c", "250"),
            (AUTH_ALICE, NEED_TLS),
            ("STARTTLS", "220"),
        ],
    );
    let before = h.transcript.split("220 2.0.0").next().unwrap_or_default();
    assert!(before.contains("250-STARTTLS"), "{before}");
    assert!(!before.contains("AUTH PLAIN"), "{before}");
    let mut h = h;
    assert_eq!(h.step("EHLO c").len(), 1);
    assert!(h
        .transcript
        .ends_with("250-AUTH PLAIN LOGIN\r\n250 ENHANCEDSTATUSCODES\r\n"));
    assert!(h.events.iter().all(|e| !matches!(e, Event::Auth { .. })));
}

#[test]
fn submission_mail_without_auth_is_refused_and_counted() {
    // Each refusal is a bad command: a client that never authenticates is cut off at errors_max.
    let mut steps = vec![("EHLO c", "250")];
    steps.extend(std::iter::repeat_n(("MAIL FROM:<a@b.c>", NEED_AUTH), 9));
    steps.push(("MAIL FROM:<a@b.c>", "530 5.7.0;421 4.7.0"));
    let h = dialogue_with(submission(), true, &steps);
    assert!(h.session.is_closed());
    assert!(h.events.iter().all(|e| !matches!(e, Event::Mail { .. })));
}

#[test]
fn implicit_tls_offers_no_starttls_and_needs_auth() {
    let h = dialogue_with(
        submission(),
        true,
        &[
            ("EHLO client.test", "250 ENHANCEDSTATUSCODES"),
            ("STARTTLS", "503 5.5.1 Error: TLS already active"),
            ("MAIL FROM:<a@b.c>", NEED_AUTH),
            (AUTH_ALICE, "235"),
            TXN,
            ("x\r\n.", "250 2.0.0 Ok: queued as Q1"),
        ],
    );
    assert!(
        !h.transcript.contains("STARTTLS\r\n250"),
        "{}",
        h.transcript
    );
    assert!(h.transcript.contains("250-AUTH PLAIN LOGIN"));
    assert_eq!(h.messages[0].authenticated_as.as_deref(), Some("alice"));
}

#[test]
fn the_relay_profile_leaves_mail_to_the_driver() {
    // Without the submission flags the core passes MAIL on: the engine decides relay rights
    // (AUTH or a trusted network) at RCPT.
    dialogue_with(config(), false, &[TXN]);
    dialogue_with(config(), true, &[TXN]);
}
