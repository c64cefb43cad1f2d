//! What `petrel_outbound_connect_failures_total` counts (its description in the engine's
//! `metrics.rs` says so): a failed SMTP handshake on a TCP connection that was made, not a
//! refused TCP connect, which `petrel_outbound_tcp_connect_failures_total{kind="refused"}`
//! counts. One test in its own binary: it installs the process's global recorder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use petrel_outbound::{ClientError, SmtpConnection, TlsMode};
use petrel_testkit::glommio::run as glommio_run;
use petrel_testkit::outbound::client_config as cfg;
use petrel_testkit::smtp_server::{Script, SmtpServer};

const CONNECT_FAILURES: &str = "petrel_outbound_connect_failures_total";

/// Counts increments of [`CONNECT_FAILURES`] and of refused TCP connects; every other series
/// goes nowhere.
struct ConnectFailures(Arc<AtomicU64>, Arc<AtomicU64>);

impl Recorder for ConnectFailures {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let refused = key
            .labels()
            .any(|l| l.key() == "kind" && l.value() == "refused");
        if key.name() == CONNECT_FAILURES {
            Counter::from_arc(Arc::clone(&self.0))
        } else if key.name() == petrel_outbound::TCP_CONNECT_FAILURES && refused {
            Counter::from_arc(Arc::clone(&self.1))
        } else {
            Counter::noop()
        }
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn connect_error(addr: std::net::SocketAddr) -> Option<ClientError> {
    glommio_run(move || async move {
        SmtpConnection::connect(addr, "mx.test.local", &cfg(TlsMode::Disabled))
            .await
            .err()
    })
}

#[test]
fn counts_failed_handshakes_not_refused_tcp_connects() {
    let failures = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    metrics::set_global_recorder(ConnectFailures(Arc::clone(&failures), Arc::clone(&refused)))
        .expect("the only recorder of this test binary");

    // Nobody listens: the TCP connect is refused, and not counted.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = connect_error(nobody);
    assert!(matches!(err, Some(ClientError::Connect { .. })), "{err:?}");
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert_eq!(
        refused.load(Ordering::Relaxed),
        1,
        "counted as a refused TCP connect"
    );

    // TCP connects, the greeting is 554: counted.
    let refuser = SmtpServer::start(Script {
        greeting: Some("554 5.3.2 no service".into()),
        ..Script::default()
    });
    let err = connect_error(refuser.addr);
    assert!(matches!(err, Some(ClientError::Rejected { .. })), "{err:?}");
    assert_eq!(failures.load(Ordering::Relaxed), 1);

    // A handshake that succeeds is not a failure.
    let server = SmtpServer::start(Script::default());
    assert!(connect_error(server.addr).is_none());
    assert_eq!(failures.load(Ordering::Relaxed), 1);
    assert_eq!(refused.load(Ordering::Relaxed), 1);
}
