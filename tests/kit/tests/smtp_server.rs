//! The scripted SMTP server's rules and counters, driven by Petrel's own SMTP client.

use std::time::Duration;

use petrel_outbound::{ClientConfig, ClientError, RcptOutcome, SmtpConnection, TlsMode};
use petrel_testkit::glommio::run;
use petrel_testkit::outbound::client_config;
use petrel_testkit::smtp_server::{Script, SmtpServer};

fn cfg() -> ClientConfig {
    client_config(TlsMode::Disabled)
}

/// The reply code of each recipient of one transaction on a new connection, or the error.
fn rcpt_codes(
    server: &SmtpServer,
    rcpts: &'static [&'static str],
) -> Result<Vec<u16>, ClientError> {
    let addr = server.addr;
    run(move || async move {
        let mut conn = SmtpConnection::connect(addr, "mx.test.local", &cfg()).await?;
        let out = conn.send("a@src.test", rcpts, b"m\r\n").await?;
        conn.quit().await;
        Ok(out
            .rcpts
            .iter()
            .map(|r| match r {
                RcptOutcome::Accepted => 250,
                RcptOutcome::Rejected(reply) => reply.code,
            })
            .collect())
    })
}

#[test]
fn by_local_part_greylists_once_defers_always_refuses_and_cuts_data_once() {
    let server = SmtpServer::start(Script::by_local_part());
    let rcpts = &["temp1@d.test", "defer1@d.test", "perm1@d.test", "ok@d.test"];
    assert_eq!(
        rcpt_codes(&server, rcpts).expect("sent"),
        [450, 450, 550, 250]
    );
    assert_eq!(
        rcpt_codes(&server, rcpts).expect("sent"),
        [250, 450, 550, 250]
    );
    let cut = rcpt_codes(&server, &["drop1@d.test"]).expect_err("cut off in DATA");
    assert!(matches!(cut, ClientError::Dropped { .. }), "{cut:?}");
    assert_eq!(rcpt_codes(&server, &["drop1@d.test"]).expect("sent"), [250]);
    assert_eq!(server.deliveries_to("ok@d.test"), 2);
    assert_eq!(server.deliveries_to("temp1@d.test"), 1);
    assert_eq!(server.deliveries_to("drop1@d.test"), 1);
    assert_eq!(server.deliveries_to("defer1@d.test"), 0);
    assert_eq!(server.connections(), 4);
    assert_eq!(server.peak(), 1, "one connection at a time");
}

#[test]
fn pipelined_transactions_count_as_one_burst() {
    let server = SmtpServer::start(Script::by_local_part_chunking());
    let addr = server.addr;
    run(move || async move {
        let mut conn = SmtpConnection::connect(addr, "mx.test.local", &cfg())
            .await
            .expect("connect");
        assert!(conn.can_send_many());
        let msg = |rcpts| petrel_outbound::OutgoingMessage {
            from: "a@src.test",
            rcpts,
            body: b"m\r\n",
            dsn: None,
        };
        let out = conn
            .send_many(&[msg(&["x@d.test"]), msg(&["y@d.test"]), msg(&["z@d.test"])])
            .await;
        assert!(out.iter().all(|o| o.is_ok()), "{out:?}");
        conn.quit().await;
    });
    assert_eq!(server.received().len(), 3);
    assert_eq!(server.mails_per_burst_max(), 3);
    assert_eq!(server.log().pipelined_mail, [true, true, true]);
}

#[test]
fn a_scripted_data_reply_refuses_the_message() {
    let server = SmtpServer::start(Script {
        data_reply: Some("452 4.3.1 insufficient storage".into()),
        ..Script::default()
    });
    let addr = server.addr;
    let data = run(move || async move {
        let mut conn = SmtpConnection::connect(addr, "mx.test.local", &cfg())
            .await
            .expect("connect");
        let out = conn.send("a@src.test", &["b@d.test"], b"m\r\n").await;
        conn.quit().await;
        out.expect("answered").data.map(|r| (r.code, r.enhanced))
    });
    assert_eq!(data, Some((452, Some((4, 3, 1)))));
    assert!(server.received().is_empty(), "not accepted");
}

#[test]
fn a_stopped_server_refuses_connections() {
    let server = SmtpServer::start(Script::default());
    let addr = server.addr;
    drop(server);
    let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    assert!(refused.is_err(), "nobody listens after drop");
}

/// One message over a new connection from `source` (the client's default EHLO name unless
/// `helo` is given).
fn send_from(server: &SmtpServer, source: &str, helo: Option<&'static str>) {
    let addr = server.addr;
    let source: std::net::IpAddr = source.parse().expect("an address");
    run(move || async move {
        let mut cfg = cfg();
        if let Some(name) = helo {
            cfg.helo_name = name.into();
        }
        let mut conn =
            SmtpConnection::connect_from(addr, "mx.test.local", &cfg, Some(source), None)
                .await
                .expect("connect");
        let out = conn.send("a@src.test", &["r@d.test"], b"m\r\n").await;
        assert!(out.is_ok(), "{out:?}");
        conn.quit().await;
    });
}

#[test]
fn each_transaction_records_the_peer_address_and_the_hello_name() {
    let server = SmtpServer::start(Script::default());
    send_from(&server, "127.0.0.2", Some("ip2.mta.test"));
    send_from(&server, "127.0.0.3", None);
    send_from(&server, "127.0.0.3", Some("ip3.mta.test"));
    let got: Vec<(String, String)> = server
        .received()
        .iter()
        .map(|t| (t.peer.expect("a peer").ip().to_string(), t.helo.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("127.0.0.2".into(), "ip2.mta.test".into()),
            (
                "127.0.0.3".into(),
                petrel_testkit::outbound::CLIENT_HELO_NAME.into()
            ),
            ("127.0.0.3".into(), "ip3.mta.test".into()),
        ]
    );
    let by_peer = server.transactions_by_peer();
    assert_eq!(by_peer.get(&"127.0.0.2".parse().unwrap()), Some(&1));
    assert_eq!(by_peer.get(&"127.0.0.3".parse().unwrap()), Some(&2));
    assert_eq!(by_peer.len(), 2);

    // A server that refuses EHLO records the HELO the client falls back to.
    let helo_only = SmtpServer::start(Script {
        reject_ehlo: true,
        ..Script::default()
    });
    send_from(&helo_only, "127.0.0.4", Some("old.mta.test"));
    let t = &helo_only.received()[0];
    assert_eq!(t.helo, "old.mta.test");
    assert_eq!(
        t.peer.map(|p| p.ip().to_string()).as_deref(),
        Some("127.0.0.4")
    );
    assert!(helo_only
        .log()
        .commands
        .iter()
        .any(|c| c == "HELO old.mta.test"));
}
