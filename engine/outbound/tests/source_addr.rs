//! Connections from an egress source address: the socket is bound before it connects, so the
//! peer sees that address. Linux routes all of 127.0.0.0/8 to the loopback interface, so
//! 127.0.0.2 and 127.0.0.3 work as sources without any setup.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};

use petrel_outbound::{ClientConfig, ClientError, SmtpConnection, Stage, TlsMode};
use petrel_testkit::glommio::run as glommio_run;
use petrel_testkit::outbound::{client_config, CLIENT_HELO_NAME};
use petrel_testkit::smtp_server::{Script, SmtpServer};

const MX: &str = "mx.test.local";

fn cfg() -> ClientConfig {
    client_config(TlsMode::Disabled)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// Connects from `source` and sends one message; the error, if any.
fn send_from(addr: SocketAddr, cfg: ClientConfig, source: Option<IpAddr>) -> Option<ClientError> {
    glommio_run(move || async move {
        let mut conn = match SmtpConnection::connect_from(addr, MX, &cfg, source, None).await {
            Ok(c) => c,
            Err(e) => return Some(e),
        };
        let out = conn.send("a@src.test", &["r@d.test"], b"m\r\n").await;
        conn.quit().await;
        out.err()
    })
}

#[test]
fn the_peer_sees_the_source_address_and_its_ehlo_name() {
    let server = SmtpServer::start(Script::default());
    let ehlo_2 = ClientConfig {
        helo_name: "ip2.mta.test".into(),
        ..cfg()
    };
    assert!(send_from(server.addr, ehlo_2, Some(ip("127.0.0.2"))).is_none());
    assert!(send_from(server.addr, cfg(), Some(ip("127.0.0.3"))).is_none());
    assert!(send_from(server.addr, cfg(), None).is_none());
    let seen: Vec<(IpAddr, String)> = server
        .received()
        .iter()
        .map(|t| (t.peer.expect("recorded").ip(), t.helo.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (ip("127.0.0.2"), "ip2.mta.test".to_string()),
            (ip("127.0.0.3"), CLIENT_HELO_NAME.to_string()),
            (ip("127.0.0.1"), CLIENT_HELO_NAME.to_string()),
        ]
    );
}

#[test]
fn a_refused_connect_from_a_source_is_a_connect_error() {
    // Bind a port, then free it: nobody listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let e = send_from(closed, cfg(), Some(ip("127.0.0.2"))).expect("refused");
    assert_eq!(petrel_outbound::client::tcp_failure_kind(&e), "refused");
    match e {
        ClientError::Connect { addr, kind, .. } => {
            assert_eq!((addr, kind), (closed, ErrorKind::ConnectionRefused));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_source_of_the_other_family_fails_at_once() {
    let server = SmtpServer::start(Script::default());
    let e = send_from(server.addr, cfg(), Some(ip("::1"))).expect("refused");
    assert!(
        matches!(&e, ClientError::Connect { kind: ErrorKind::InvalidInput, reason, .. }
            if reason.contains("::1")),
        "{e:?}"
    );
    assert_eq!(server.connections(), 0, "nothing was sent");
}

#[test]
fn a_connect_that_gets_no_answer_times_out() {
    // A listener whose accept queue is full drops further SYNs: the connect hangs until the
    // client's timeout.
    let listener = socket2_glommio::Socket::new(
        socket2_glommio::Domain::IPV4,
        socket2_glommio::Type::STREAM,
        None,
    )
    .expect("socket");
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    listener.listen(0).expect("listen");
    let addr = listener
        .local_addr()
        .expect("address")
        .as_socket()
        .expect("inet");
    let _held: Vec<std::net::TcpStream> = (0..2)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)).ok()
        })
        .collect();
    let quick = ClientConfig {
        connect_timeout_ms: 300,
        ..cfg()
    };
    let e = send_from(addr, quick, Some(ip("127.0.0.2"))).expect("no answer");
    assert!(
        matches!(
            e,
            ClientError::Timeout {
                stage: Stage::Connect
            }
        ),
        "{e:?}"
    );
}
