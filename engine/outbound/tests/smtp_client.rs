//! The SMTP client against a real SMTP server on loopback, inside glommio executors.

use std::net::SocketAddr;

use petrel_outbound::{ClientConfig, ClientError, RcptOutcome, SmtpConnection, Stage, TlsMode};
use petrel_testkit::glommio::run as glommio_run;
use petrel_testkit::outbound::client_config as cfg;
use petrel_testkit::smtp_server::{Script, SmtpServer};
use petrel_testkit::tls::test_pki;

/// The name the tests connect to (the scripted server's own name).
const MX: &str = "mx.test.local";

/// Connects and sends one message per entry of `messages`, on one connection, then QUITs.
fn deliver(
    addr: SocketAddr,
    cfg: ClientConfig,
    messages: Vec<(&'static str, Vec<&'static str>, Vec<u8>)>,
) -> Result<Vec<petrel_outbound::TransactionOutcome>, ClientError> {
    glommio_run(move || async move {
        let mut conn = SmtpConnection::connect(addr, MX, &cfg).await?;
        let mut outcomes = Vec::new();
        for (from, rcpts, body) in &messages {
            outcomes.push(conn.send(from, rcpts, body).await?);
        }
        conn.quit().await;
        Ok(outcomes)
    })
}

/// Connects to [`MX`] at `addr`; the error, if connecting fails.
fn connect_error(addr: SocketAddr, cfg: ClientConfig) -> Option<ClientError> {
    glommio_run(move || async move { SmtpConnection::connect(addr, MX, &cfg).await.err() })
}

#[test]
fn plain_delivery_without_pipelining() {
    let server = SmtpServer::start(Script::default());
    let body = b"Subject: hi\r\n\r\nhello\r\n".to_vec();
    let out = deliver(
        server.addr,
        cfg(TlsMode::Opportunistic),
        vec![("a@src.test", vec!["b@dst.test", "c@dst.test"], body.clone())],
    )
    .unwrap();
    assert_eq!(
        out[0].rcpts,
        vec![RcptOutcome::Accepted, RcptOutcome::Accepted]
    );
    let data = out[0].data.as_ref().unwrap();
    assert_eq!((data.code, data.enhanced), (250, Some((2, 0, 0))));
    assert!(out[0].mail_rejected.is_none());
    let log = server.log();
    assert_eq!(log.transactions.len(), 1);
    let t = &log.transactions[0];
    assert_eq!(t.mail_from, "a@src.test");
    assert_eq!(t.rcpts, ["b@dst.test", "c@dst.test"]);
    assert_eq!(t.data, body);
    assert!(!t.tls);
    assert_eq!(log.pipelined_mail, [false]);
    assert_eq!(log.commands.last().map(String::as_str), Some("QUIT"));
}

#[test]
fn dot_stuffing_round_trip_and_missing_final_crlf() {
    let server = SmtpServer::start(Script::default());
    let tricky = b".leading dot\r\n..two dots\r\n.\r\nmid.dle\r\n\r\n. space\r\n".to_vec();
    let no_crlf = b"Subject: x\r\n\r\nlast line without CRLF".to_vec();
    let out = deliver(
        server.addr,
        cfg(TlsMode::Disabled),
        vec![
            ("a@src.test", vec!["b@dst.test"], tricky.clone()),
            ("a@src.test", vec!["b@dst.test"], no_crlf.clone()),
        ],
    )
    .unwrap();
    assert!(out
        .iter()
        .all(|o| o.data.as_ref().is_some_and(|r| r.code == 250)));
    let log = server.log();
    assert_eq!(log.transactions[0].data, tricky);
    let mut expected = no_crlf;
    expected.extend_from_slice(b"\r\n");
    assert_eq!(log.transactions[1].data, expected);
}

#[test]
fn pipelined_transaction_and_reuse_with_rset() {
    let server = SmtpServer::start(Script {
        pipelining: true,
        size: Some(10_000_000),
        ..Script::default()
    });
    let out = deliver(
        server.addr,
        cfg(TlsMode::Disabled),
        vec![
            (
                "a@src.test",
                vec!["b@dst.test", "c@dst.test"],
                b"one\r\n".to_vec(),
            ),
            ("x@src.test", vec!["y@dst.test"], b"two\r\n".to_vec()),
        ],
    )
    .unwrap();
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|o| o.data.as_ref().is_some_and(|r| r.code == 250)));
    let log = server.log();
    assert_eq!(
        log.pipelined_mail,
        [true, true],
        "MAIL..DATA sent in one write"
    );
    assert_eq!(log.transactions.len(), 2);
    assert_eq!(log.transactions[1].mail_from, "x@src.test");
    assert_eq!(log.transactions[1].data, b"two\r\n");
    assert!(log.transactions[0].mail_params.contains("SIZE=5"));
    let cmds: Vec<&str> = log.commands.iter().map(String::as_str).collect();
    let second_mail = cmds.iter().rposition(|c| c.starts_with("MAIL")).unwrap();
    assert_eq!(cmds[second_mail - 1], "RSET");
    assert_eq!(cmds.iter().filter(|c| **c == "RSET").count(), 1);
}

#[test]
fn per_recipient_outcomes() {
    for pipelining in [false, true] {
        let script = Script {
            pipelining,
            ..Script::default()
        }
        .rcpt_reply("busy@dst.test", "450 4.2.1 mailbox busy")
        .rcpt_reply("nobody@dst.test", "550 5.1.1 no such user");
        let server = SmtpServer::start(script);
        let rcpts = vec![
            "ok@dst.test",
            "busy@dst.test",
            "nobody@dst.test",
            "bad\r\nx@dst.test",
        ];
        let out = deliver(
            server.addr,
            cfg(TlsMode::Disabled),
            vec![
                ("a@src.test", rcpts, b"m\r\n".to_vec()),
                ("a@src.test", vec!["nobody@dst.test"], b"m\r\n".to_vec()),
            ],
        )
        .unwrap();
        let o = &out[0];
        assert_eq!(o.rcpts[0], RcptOutcome::Accepted);
        let code = |i: usize| match &o.rcpts[i] {
            RcptOutcome::Rejected(r) => (r.code, r.enhanced),
            RcptOutcome::Accepted => (250, None),
        };
        assert_eq!(code(1), (450, Some((4, 2, 1))));
        assert_eq!(code(2), (550, Some((5, 1, 1))));
        assert_eq!(code(3).0, 501, "CR/LF in an address is refused locally");
        assert_eq!(o.data.as_ref().map(|r| r.code), Some(250));
        // No recipient accepted: no DATA outcome, and the connection stays usable.
        assert_eq!(out[1].data, None);
        assert!(out[1].mail_rejected.is_none());
        let log = server.log();
        assert_eq!(log.transactions.len(), 1);
        assert_eq!(log.transactions[0].rcpts, ["ok@dst.test"]);
        assert!(!log.commands.iter().any(|c| c.contains("bad")));
    }
}

#[test]
fn size_limit_is_honoured_without_sending() {
    let server = SmtpServer::start(Script {
        size: Some(100),
        ..Script::default()
    });
    let out = deliver(
        server.addr,
        cfg(TlsMode::Disabled),
        vec![("a@src.test", vec!["b@dst.test"], vec![b'x'; 200])],
    )
    .unwrap();
    let rejected = out[0].mail_rejected.as_ref().unwrap();
    assert_eq!((rejected.code, rejected.enhanced), (552, Some((5, 3, 4))));
    assert!(matches!(&out[0].rcpts[0], RcptOutcome::Rejected(r) if r.code == 552));
    assert!(!server.log().commands.iter().any(|c| c.starts_with("MAIL")));
}

#[test]
fn helo_fallback_when_ehlo_is_refused() {
    let server = SmtpServer::start(Script {
        reject_ehlo: true,
        ..Script::default()
    });
    let out = deliver(
        server.addr,
        cfg(TlsMode::Opportunistic),
        vec![("a@src.test", vec!["b@dst.test"], b"m\r\n".to_vec())],
    )
    .unwrap();
    assert_eq!(out[0].data.as_ref().map(|r| r.code), Some(250));
    let log = server.log();
    assert!(log.commands.iter().any(|c| c == "HELO client.test.local"));
}

#[test]
fn opportunistic_tls_with_self_signed_cert() {
    let pki = test_pki("mx.test.local");
    let server = SmtpServer::start(Script {
        tls: Some(pki.server_config.clone()),
        pipelining: true,
        ..Script::default()
    });
    let addr = server.addr;
    let tls = glommio_run(move || async move {
        let c = cfg(TlsMode::Opportunistic);
        // The name does not even match: opportunistic TLS does not verify.
        let mut conn = SmtpConnection::connect(addr, "wrong.name.test", &c)
            .await
            .unwrap();
        let tls = conn.tls().cloned();
        assert!(conn.pipelining());
        let out = conn
            .send("a@src.test", &["b@dst.test"], b"secret\r\n")
            .await
            .unwrap();
        assert_eq!(out.data.map(|r| r.code), Some(250));
        conn.quit().await;
        tls
    });
    let tls = tls.expect("TLS negotiated");
    assert!(tls.version.starts_with("TLSv1."), "{tls:?}");
    assert!(!tls.cipher.is_empty());
    let log = server.log();
    assert!(log.transactions[0].tls);
    assert!(log
        .commands
        .iter()
        .any(|c| c == "tls:EHLO client.test.local"));
}

#[test]
fn required_tls_without_starttls_fails() {
    let server = SmtpServer::start(Script::default());
    let err = connect_error(server.addr, cfg(TlsMode::Required));
    assert!(
        matches!(err, Some(ClientError::TlsRequired { .. })),
        "{err:?}"
    );
    assert!(!err.unwrap().is_permanent());
}

#[test]
fn required_tls_verifies_against_extra_roots_and_name() {
    let pki = test_pki("mx.test.local");
    let server = SmtpServer::start(Script {
        tls: Some(pki.server_config.clone()),
        ..Script::default()
    });
    let addr = server.addr;
    let ca = pki.ca_pem.clone().into_bytes();
    let (good, wrong_name, unknown_root) = glommio_run(move || async move {
        let mut trusted = cfg(TlsMode::Required);
        trusted.extra_root_certs_pem = vec![ca];
        let good = match SmtpConnection::connect(addr, "mx.test.local", &trusted).await {
            Ok(mut conn) => {
                let out = conn.send("a@src.test", &["b@dst.test"], b"m\r\n").await;
                let tls = conn.tls().cloned();
                conn.quit().await;
                Ok((out.map(|o| o.data.map(|r| r.code)), tls))
            }
            Err(e) => Err(e),
        };
        let wrong_name = SmtpConnection::connect(addr, "other.test.local", &trusted)
            .await
            .err();
        let unknown_root = SmtpConnection::connect(addr, "mx.test.local", &cfg(TlsMode::Required))
            .await
            .err();
        (good, wrong_name, unknown_root)
    });
    let (sent, tls) = good.expect("verified TLS connection");
    assert_eq!(sent.unwrap(), Some(250));
    assert!(tls.is_some());
    assert!(
        matches!(wrong_name, Some(ClientError::TlsRequired { .. })),
        "{wrong_name:?}"
    );
    assert!(
        matches!(unknown_root, Some(ClientError::TlsRequired { .. })),
        "{unknown_root:?}"
    );
}

#[test]
fn dropped_connection_in_data() {
    let server = SmtpServer::start(Script {
        drop_in_data_after_bytes: Some(10_000),
        ..Script::default()
    });
    let body: Vec<u8> = b"0123456789012345678901234567890123456789\r\n".repeat(50_000);
    let err = deliver(
        server.addr,
        cfg(TlsMode::Disabled),
        vec![("a@src.test", vec!["b@dst.test"], body)],
    )
    .unwrap_err();
    assert!(matches!(err, ClientError::Dropped { .. }), "{err:?}");
    assert!(server.log().transactions.is_empty());
}

#[test]
fn silent_server_times_out() {
    let server = SmtpServer::start(Script {
        silent: true,
        ..Script::default()
    });
    let addr = server.addr;
    let started = std::time::Instant::now();
    let mut c = cfg(TlsMode::Opportunistic);
    c.greeting_timeout_ms = 200;
    let err = connect_error(addr, c);
    assert!(
        matches!(
            err,
            Some(ClientError::Timeout {
                stage: Stage::Greeting
            })
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn connect_refused_is_a_connect_error() {
    // Bind then drop a listener to get a port with nobody behind it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = connect_error(addr, cfg(TlsMode::Disabled));
    assert!(matches!(err, Some(ClientError::Connect { .. })), "{err:?}");
}

#[test]
fn many_recipients_are_batched_and_capped() {
    let server = SmtpServer::start(Script {
        pipelining: true,
        ..Script::default()
    });
    let addrs: Vec<String> = (0..1005).map(|i| format!("r{i}@dst.test")).collect();
    let addr = server.addr;
    let out = glommio_run(move || async move {
        let mut conn = SmtpConnection::connect(addr, "mx.test.local", &cfg(TlsMode::Disabled))
            .await
            .unwrap();
        let rcpts: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let out = conn.send("a@src.test", &rcpts, b"m\r\n").await.unwrap();
        conn.quit().await;
        out
    });
    let max = petrel_outbound::client::RCPTS_PER_TRANSACTION_MAX;
    assert!(out.rcpts[..max].iter().all(|o| *o == RcptOutcome::Accepted));
    assert!(out.rcpts[max..]
        .iter()
        .all(|o| matches!(o, RcptOutcome::Rejected(r) if r.code == 452)));
    assert_eq!(out.data.map(|r| r.code), Some(250));
    let log = server.log();
    assert_eq!(log.transactions[0].rcpts.len(), max);
}

#[test]
fn mail_rejection_applies_to_every_recipient() {
    for pipelining in [false, true] {
        let server = SmtpServer::start(Script {
            pipelining,
            mail_reply: Some("550 5.7.1 sender denied".into()),
            ..Script::default()
        });
        let out = deliver(
            server.addr,
            cfg(TlsMode::Disabled),
            vec![
                (
                    "bad@src.test",
                    vec!["b@dst.test", "c@dst.test"],
                    b"m\r\n".to_vec(),
                ),
                ("bad@src.test", vec!["d@dst.test"], b"m\r\n".to_vec()),
            ],
        )
        .unwrap();
        let mail = out[0].mail_rejected.clone().expect("MAIL rejected");
        assert_eq!((mail.code, mail.enhanced), (550, Some((5, 7, 1))));
        assert_eq!(out[0].rcpts, vec![RcptOutcome::Rejected(mail.clone()); 2]);
        assert_eq!(out[0].data, None);
        assert_eq!(
            out[1].mail_rejected,
            Some(mail),
            "connection reusable after a 550"
        );
        assert!(server.log().transactions.is_empty());
    }
}

#[test]
fn a_421_marks_the_connection_unusable() {
    for pipelining in [false, true] {
        let script = Script {
            pipelining,
            ..Script::default()
        }
        .rcpt_reply("late@dst.test", "421 4.3.2 shutting down");
        let server = SmtpServer::start(script);
        let addr = server.addr;
        let (out, reusable, second) = glommio_run(move || async move {
            let mut conn = SmtpConnection::connect(addr, "mx.test.local", &cfg(TlsMode::Disabled))
                .await
                .unwrap();
            let rcpts = ["ok@dst.test", "late@dst.test", "never@dst.test"];
            let out = conn.send("a@src.test", &rcpts, b"m\r\n").await.unwrap();
            let reusable = conn.is_reusable();
            let second = conn.send("a@src.test", &["x@dst.test"], b"m\r\n").await;
            (out, reusable, second.err())
        });
        assert_eq!(out.rcpts[0], RcptOutcome::Accepted);
        assert!(matches!(&out.rcpts[1], RcptOutcome::Rejected(r) if r.code == 421));
        assert!(matches!(&out.rcpts[2], RcptOutcome::Rejected(r) if r.code == 421));
        assert_eq!(out.data, None);
        assert!(!reusable);
        assert!(
            matches!(second, Some(ClientError::Dropped { .. })),
            "{second:?}"
        );
        assert!(server.log().transactions.is_empty());
    }
}

#[test]
fn idle_close_on_reuse_is_dropped_at_rset() {
    for pipelining in [false, true] {
        let server = SmtpServer::start(Script {
            pipelining,
            close_after_first_message: true,
            ..Script::default()
        });
        let addr = server.addr;
        let second = glommio_run(move || async move {
            let mut conn = SmtpConnection::connect(addr, "mx.test.local", &cfg(TlsMode::Disabled))
                .await
                .unwrap();
            let first = conn
                .send("a@src.test", &["b@dst.test"], b"m\r\n")
                .await
                .unwrap();
            assert_eq!(first.data.map(|r| r.code), Some(250));
            glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
            conn.send("a@src.test", &["c@dst.test"], b"m\r\n")
                .await
                .err()
        });
        assert!(
            matches!(second, Some(ClientError::Dropped { stage: Stage::Rset })),
            "{second:?}"
        );
        assert_eq!(server.log().transactions.len(), 1);
    }
}

#[test]
fn failed_opportunistic_handshake_is_a_tls_error() {
    let server = SmtpServer::start(Script {
        broken_tls: true,
        ..Script::default()
    });
    let err = connect_error(server.addr, cfg(TlsMode::Opportunistic));
    assert!(matches!(err, Some(ClientError::Tls { .. })), "{err:?}");
}

#[test]
fn rejected_greeting() {
    let server = SmtpServer::start(Script {
        greeting: Some("554 5.7.1 no service for you".into()),
        ..Script::default()
    });
    let err = connect_error(server.addr, cfg(TlsMode::Opportunistic));
    match err {
        Some(ClientError::Rejected { stage, reply }) => {
            assert_eq!(stage, Stage::Greeting);
            assert_eq!((reply.code, reply.enhanced), (554, Some((5, 7, 1))));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn plaintext_after_starttls_reply_is_refused() {
    let server = SmtpServer::start(Script {
        starttls_injection: true,
        ..Script::default()
    });
    let err = connect_error(server.addr, cfg(TlsMode::Opportunistic));
    assert!(
        matches!(
            err,
            Some(ClientError::Protocol {
                stage: Stage::StartTls,
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn chunking_sends_the_whole_transaction_in_one_write() {
    let script = Script {
        pipelining: true,
        chunking: true,
        size: Some(10_000_000),
        ..Script::default()
    }
    .rcpt_reply("nobody@dst.test", "550 5.1.1 no such user");
    let server = SmtpServer::start(script);
    let big = vec![b'x'; petrel_outbound::BDAT_INLINE_BYTES_MAX + 10];
    let out = deliver(
        server.addr,
        cfg(TlsMode::Disabled),
        vec![
            // Leading dots are content under BDAT (no stuffing); the final CRLF is added.
            (
                "a@src.test",
                vec!["b@dst.test", "nobody@dst.test"],
                b".dot\r\n..two\r\nend".to_vec(),
            ),
            // Every recipient refused: the chunk is still read, the connection stays in step.
            ("a@src.test", vec!["nobody@dst.test"], b"m\r\n".to_vec()),
            ("c@src.test", vec!["d@dst.test"], b"three\r\n".to_vec()),
            // Too large for one inline chunk: DATA.
            ("e@src.test", vec!["f@dst.test"], big.clone()),
        ],
    )
    .unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(out[0].rcpts[0], RcptOutcome::Accepted);
    assert!(matches!(&out[0].rcpts[1], RcptOutcome::Rejected(r) if r.code == 550));
    assert_eq!(out[0].data.as_ref().map(|r| r.code), Some(250));
    assert_eq!(out[1].data, None);
    assert!(out[1].mail_rejected.is_none());
    assert_eq!(out[2].data.as_ref().map(|r| r.code), Some(250));
    assert_eq!(out[3].data.as_ref().map(|r| r.code), Some(250));
    let log = server.log();
    assert_eq!(log.transactions.len(), 3);
    assert_eq!(log.transactions[0].data, b".dot\r\n..two\r\nend\r\n");
    assert_eq!(log.transactions[1].data, b"three\r\n");
    assert_eq!(log.transactions[2].data.len(), big.len() + 2);
    let bdats = log
        .commands
        .iter()
        .filter(|c| c.starts_with("BDAT"))
        .count();
    let datas = log.commands.iter().filter(|c| *c == "DATA").count();
    assert_eq!((bdats, datas), (3, 1));
    assert!(log.commands.iter().any(|c| c == "BDAT 18 LAST"));
    assert_eq!(log.pipelined_mail, [true, true, true, true]);
}

#[test]
fn send_many_pipelines_whole_transactions_and_stops_cleanly_at_a_421() {
    let script = Script {
        pipelining: true,
        chunking: true,
        ..Script::default()
    }
    .rcpt_reply("nobody@dst.test", "550 5.1.1 no such user")
    .rcpt_reply("closing@dst.test", "421 4.3.2 shutting down");
    let server = SmtpServer::start(script);
    let addr = server.addr;
    let (first, second) = glommio_run(move || async move {
        let cfg = cfg(TlsMode::Disabled);
        let mut conn = SmtpConnection::connect(addr, "mx.test.local", &cfg)
            .await
            .expect("connect");
        assert!(conn.can_send_many());
        let msg = |from, rcpts, body| petrel_outbound::OutgoingMessage {
            from,
            rcpts,
            body,
            dsn: None,
        };
        let first = conn
            .send_many(&[
                msg("a@src.test", &["b@dst.test"], b"one\r\n"),
                msg("a@src.test", &["nobody@dst.test"], b"refused\r\n"),
                msg("c@src.test", &["d@dst.test", "e@dst.test"], b".three"),
            ])
            .await;
        let second = conn
            .send_many(&[
                msg("a@src.test", &["f@dst.test"], b"four\r\n"),
                msg("a@src.test", &["closing@dst.test"], b"five\r\n"),
                msg("a@src.test", &["g@dst.test"], b"six\r\n"),
            ])
            .await;
        assert!(!conn.is_reusable(), "a 421 ends the connection");
        (first, second)
    });
    let code = |r: &Result<petrel_outbound::TransactionOutcome, ClientError>| {
        r.as_ref()
            .ok()
            .and_then(|o| o.data.as_ref())
            .map(|d| d.code)
    };
    assert_eq!(first.len(), 3);
    assert_eq!(code(&first[0]), Some(250));
    let refused = first[1].as_ref().expect("answered");
    assert_eq!(refused.data, None);
    assert!(matches!(&refused.rcpts[0], RcptOutcome::Rejected(r) if r.code == 550));
    assert_eq!(code(&first[2]), Some(250));
    assert_eq!(second.len(), 3);
    assert_eq!(code(&second[0]), Some(250));
    let closing = second[1].as_ref().expect("answered");
    assert!(matches!(&closing.rcpts[0], RcptOutcome::Rejected(r) if r.code == 421));
    assert!(
        matches!(second[2], Err(ClientError::Dropped { stage: Stage::Rset })),
        "after the 421 the rest is for another connection: {:?}",
        second[2]
    );
    let log = server.log();
    let bodies: Vec<&[u8]> = log.transactions.iter().map(|t| t.data.as_slice()).collect();
    assert_eq!(bodies, [&b"one\r\n"[..], b".three\r\n", b"four\r\n"]);
    assert_eq!(log.transactions[1].rcpts, ["d@dst.test", "e@dst.test"]);
    // One write per send_many: the first MAIL of each batch saw the rest of it in the buffer.
    assert!(log.pipelined_mail[0]);
}
