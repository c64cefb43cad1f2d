use std::net::SocketAddr;
use std::sync::Mutex;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::snapshot::{PolicySnapshot, Tenant};
use crate::wire::read_frame;

const TOKEN: &str = "s3cret-token";
/// Upper bound on any one test.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

struct TestTls {
    ca_pem: Vec<u8>,
    leaf_der: Vec<u8>,
    acceptor: TlsAcceptor,
}

/// A CA and a "localhost" certificate it signed, served by a rustls acceptor.
fn test_tls() -> TestTls {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    TestTls {
        ca_pem: ca.pem().into_bytes(),
        leaf_der: leaf.der().to_vec(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }
}

fn cfg(addr: SocketAddr, trust: LinkTrust) -> LinkConfig {
    let mut c = LinkConfig::new(&addr.to_string(), "localhost", trust, TOKEN, "engine-1");
    c.shards = 2;
    c.reconnect_delay_ms_min = 20;
    c.reconnect_delay_ms_max = 200;
    c.ping_interval_ms = 100;
    c
}

fn snapshot_bytes(version: u64) -> Vec<u8> {
    let s = PolicySnapshot {
        version,
        tenants: vec![Tenant {
            id: format!("tenant-{version}"),
            name: "T".into(),
            suspended: false,
            messages_per_second_max: None,
            messages_per_day_max: None,
            allow_unverified_domains: false,
            new_tenant_cap: None,
            sending_disabled: None,
            reputation_warning: None,
            list_unsubscribe: false,
            arc_seal: false,
            egress_pool: None,
            delivery_weight: 1,
        }],
        ..Default::default()
    };
    crate::snapshot::encode(&s).unwrap()
}

/// The control plane side of one connection, built on the crate's own codec.
struct Peer {
    stream: TlsStream<tokio::net::TcpStream>,
}

impl Peer {
    async fn accept(listener: &TcpListener, acceptor: &TlsAcceptor) -> Peer {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            // Handshakes that fail (e.g. a reconnect racing a test step) are retried.
            if let Ok(stream) = acceptor.accept(tcp).await {
                return Peer { stream };
            }
        }
    }

    /// The next frame that is not a Ping (Pings are answered) nor the engine's suppression
    /// request (`SuppressionsSince`, sent once per connection; tests of it use `next_any`).
    async fn next(&mut self) -> Option<Frame> {
        loop {
            match self.next_any().await? {
                Frame::SuppressionsSince { .. } => {}
                other => return Some(other),
            }
        }
    }

    /// The next frame that is not a Ping.
    async fn next_any(&mut self) -> Option<Frame> {
        loop {
            match read_frame(&mut self.stream).await.ok()? {
                Some(Frame::Ping) => write_frame(&mut self.stream, &Frame::Pong).await.ok()?,
                other => return other,
            }
        }
    }

    async fn hello(&mut self) -> Hello {
        match self.next().await {
            Some(Frame::Hello(h)) => h,
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    async fn push(&mut self, version: u64, bytes: Vec<u8>) {
        write_frame(&mut self.stream, &Frame::Snapshot { version, bytes })
            .await
            .unwrap();
    }

    async fn expect_ack(&mut self) -> u64 {
        match self.next().await {
            Some(Frame::Ack { version }) => version,
            other => panic!("expected Ack, got {other:?}"),
        }
    }
}

fn start_link(
    c: LinkConfig,
    dir: &std::path::Path,
) -> (
    Arc<PolicyStore>,
    Arc<Mutex<Vec<u64>>>,
    tokio::task::JoinHandle<()>,
) {
    let store = Arc::new(PolicyStore::load_or_empty(dir));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let task = tokio::spawn(run_link(c, store.clone(), move |v| {
        seen2.lock().unwrap().push(v)
    }));
    (store, seen, task)
}

#[tokio::test]
async fn pushes_two_snapshots_then_reconnects_after_restart() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let tls = test_tls();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (store, seen, task) =
            start_link(cfg(addr, LinkTrust::CaPem(tls.ca_pem.clone())), dir.path());

        let mut peer = Peer::accept(&listener, &tls.acceptor).await;
        let hello = peer.hello().await;
        assert_eq!(hello.token, TOKEN);
        assert_eq!(hello.engine_id, "engine-1");
        assert_eq!(hello.applied_version, 0);
        assert_eq!(hello.shards, 2);
        assert!(
            !store.link_up(),
            "no session before the control plane answers"
        );
        peer.push(1, snapshot_bytes(1)).await;
        assert_eq!(peer.expect_ack().await, 1);
        assert!(store.link_up(), "a session once the control plane answered");
        peer.push(2, snapshot_bytes(2)).await;
        assert_eq!(peer.expect_ack().await, 2);
        assert_eq!(store.version(), 2);
        assert!(store.current().tenant("tenant-2").is_some());
        assert_eq!(*seen.lock().unwrap(), vec![1, 2]);

        // The control plane restarts: connection and listener gone, then back on the same port.
        drop(peer);
        drop(listener);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            store.version(),
            2,
            "the engine keeps its policy while the CP is away"
        );
        assert!(!store.link_up(), "no session while the CP is away");
        let listener = TcpListener::bind(addr).await.unwrap();
        let mut peer = Peer::accept(&listener, &tls.acceptor).await;
        assert_eq!(peer.hello().await.applied_version, 2);
        // The CP re-sends what the engine has (no-op, acked), then something new.
        peer.push(2, snapshot_bytes(2)).await;
        assert_eq!(peer.expect_ack().await, 2);
        assert!(store.link_up(), "a session again after the reconnect");
        peer.push(3, snapshot_bytes(3)).await;
        assert_eq!(peer.expect_ack().await, 3);
        assert_eq!(store.version(), 3);
        task.abort();

        // And the applied policy survives an engine restart.
        assert_eq!(PolicyStore::load_or_empty(dir.path()).version(), 3);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_snapshots_are_not_acked_and_stale_ones_keep_ours() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let tls = test_tls();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (store, _seen, task) =
            start_link(cfg(addr, LinkTrust::CaPem(tls.ca_pem.clone())), dir.path());
        let mut peer = Peer::accept(&listener, &tls.acceptor).await;
        peer.hello().await;

        let mut corrupt = snapshot_bytes(5);
        let n = corrupt.len();
        corrupt[n - 3] ^= 0xff;
        peer.push(5, corrupt).await;
        peer.push(6, snapshot_bytes(6)).await;
        assert_eq!(peer.expect_ack().await, 6, "the corrupt one got no ack");
        peer.push(4, snapshot_bytes(4)).await;
        assert_eq!(
            peer.expect_ack().await,
            6,
            "stale: the engine reports what it runs"
        );
        assert_eq!(store.version(), 6);
        task.abort();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn keeps_the_newest_verified_audit_checkpoint() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let tls = test_tls();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (store, _seen, task) =
            start_link(cfg(addr, LinkTrust::CaPem(tls.ca_pem.clone())), dir.path());
        let mut peer = Peer::accept(&listener, &tls.acceptor).await;
        assert_eq!(peer.hello().await.protocol, crate::wire::PROTOCOL_VERSION);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let mut forged = crate::checkpoint::tests::signed(&key, 30, 3);
        forged.at_unix_ms += 1;
        for cp in [
            crate::checkpoint::tests::signed(&key, 12, 1),
            forged,
            crate::checkpoint::tests::signed(&key, 11, 2),
        ] {
            write_frame(&mut peer.stream, &Frame::AuditCheckpoint(cp))
                .await
                .unwrap();
        }
        // Frames are handled in order: once the snapshot is acked, the checkpoints were seen.
        peer.push(1, snapshot_bytes(1)).await;
        assert_eq!(peer.expect_ack().await, 1);
        assert_eq!(
            store.audit_checkpoint().seq(),
            Some(12),
            "the forged one and the older one are refused, the link carries on"
        );
        task.abort();
        assert_eq!(
            crate::checkpoint::CheckpointKeeper::open(dir.path()).seq(),
            Some(12)
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn pinned_fingerprint_accepts_the_right_cert_only() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let tls = test_tls();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        let good = LinkTrust::PinnedSha256(cert_fingerprint_sha256(&tls.leaf_der));
        let dir = tempfile::tempdir().unwrap();
        let (store, _seen, task) = start_link(cfg(addr, good), dir.path());
        let mut peer = Peer::accept(&listener, &tls.acceptor).await;
        peer.hello().await;
        peer.push(1, snapshot_bytes(1)).await;
        assert_eq!(peer.expect_ack().await, 1);
        assert_eq!(store.version(), 1);
        task.abort();
        drop(peer);

        let wrong = LinkTrust::PinnedSha256([7u8; 32]);
        let dir = tempfile::tempdir().unwrap();
        let (store, _seen, task) = start_link(cfg(addr, wrong), dir.path());
        // The engine keeps trying (bounded backoff) and every handshake fails.
        for _ in 0..3 {
            let (tcp, _) = listener.accept().await.unwrap();
            assert!(tls.acceptor.accept(tcp).await.is_err());
        }
        assert_eq!(store.version(), 0);
        task.abort();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn refused_token_retries_with_backoff() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let tls = test_tls();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(addr, LinkTrust::CaPem(tls.ca_pem.clone()));
        c.token = "wrong".into();
        let (store, _seen, task) = start_link(c, dir.path());
        for _ in 0..3 {
            let mut peer = Peer::accept(&listener, &tls.acceptor).await;
            assert_eq!(peer.hello().await.token, "wrong");
            write_frame(
                &mut peer.stream,
                &Frame::Error {
                    message: "bad token".into(),
                },
            )
            .await
            .unwrap();
        }
        assert_eq!(store.version(), 0);
        assert!(!store.link_up(), "a refused Hello is no session");
        task.abort();
    })
    .await
    .unwrap();
}

#[test]
fn backoff_grows_and_is_capped() {
    let mut c = cfg(
        "127.0.0.1:1".parse().unwrap(),
        LinkTrust::PinnedSha256([0; 32]),
    );
    c.reconnect_delay_ms_min = 100;
    c.reconnect_delay_ms_max = 1_000;
    let d1 = reconnect_delay_ms(&c, 1);
    assert!((75..=100).contains(&d1), "{d1}");
    let d3 = reconnect_delay_ms(&c, 3);
    assert!((300..=400).contains(&d3), "{d3}");
    for f in [5, 40, u32::MAX] {
        let d = reconnect_delay_ms(&c, f);
        assert!((750..=1_000).contains(&d), "{f}: {d}");
    }
}

#[test]
fn bad_trust_configuration_is_an_error() {
    assert!(connector(&LinkTrust::CaPem(b"no pem here".to_vec())).is_err());
}

/// `Events` frames of a test peer, as (seq, number of events).
async fn expect_events(peer: &mut Peer) -> (u64, usize) {
    match peer.next().await {
        Some(Frame::Events { batch_seq, events }) => (batch_seq, events.len()),
        other => panic!("expected Events, got {other:?}"),
    }
}

fn batch_json(n: usize, tag: &str) -> Vec<u8> {
    let events: Vec<crate::Event> = (0..n)
        .map(|i| {
            let mut e = crate::event::tests::sample(crate::EventType::Delivered);
            e.id = format!("ev_{tag}_{i}");
            e
        })
        .collect();
    serde_json::to_vec(&events).unwrap()
}

#[tokio::test]
async fn sends_the_backlog_in_order_frees_it_on_ack_and_resends_the_rest_after_a_reconnect() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let tls = test_tls();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(Outbox::open(&dir.path().join("backlog"), u64::MAX, 1).unwrap());
        let first = outbox.append(&batch_json(3, "a"), 3).unwrap();
        outbox.sync().unwrap();
        let mut c = cfg(addr, LinkTrust::CaPem(tls.ca_pem.clone()));
        c.outbox = Some(outbox.clone());
        let (_store, _seen, task) = start_link(c, dir.path());

        let mut peer = Peer::accept(&listener, &tls.acceptor).await;
        peer.hello().await;
        assert_eq!(expect_events(&mut peer).await, (first, 3));
        // A batch synced while connected goes out at once.
        let second = outbox.append(&batch_json(2, "b"), 2).unwrap();
        outbox.sync().unwrap();
        assert_eq!(expect_events(&mut peer).await, (second, 2));
        // Cumulative ack of the first only; then the CP goes away.
        write_frame(&mut peer.stream, &Frame::EventsAck { batch_seq: first })
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while outbox.unacked_batches() != 1 {
            assert!(tokio::time::Instant::now() < deadline, "ack not applied");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(peer);
        // The next connection starts again from the oldest unacknowledged batch.
        let mut peer = Peer::accept(&listener, &tls.acceptor).await;
        peer.hello().await;
        assert_eq!(expect_events(&mut peer).await, (second, 2));
        // A refused batch is set aside and not sent again.
        write_frame(
            &mut peer.stream,
            &Frame::Error {
                message: format!("events batch {second} refused: event \"x\": bad"),
            },
        )
        .await
        .unwrap();
        let mut peer = Peer::accept(&listener, &tls.acceptor).await;
        peer.hello().await;
        let third = outbox.append(&batch_json(1, "c"), 1).unwrap();
        outbox.sync().unwrap();
        assert_eq!(expect_events(&mut peer).await, (third, 1));
        assert!(dir
            .path()
            .join("backlog/refused")
            .join(format!("batch-{second}.json"))
            .exists());
        write_frame(&mut peer.stream, &Frame::EventsAck { batch_seq: third })
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while outbox.unacked_batches() != 0 {
            assert!(tokio::time::Instant::now() < deadline, "ack not applied");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn follows_the_suppression_list_and_refuses_a_broken_feed() {
    use crate::suppression::{ChangeOp, SuppressionChange, SuppressionReason};
    use crate::wire::{LoadEntry, LoadPage};
    tokio::time::timeout(TEST_TIMEOUT, async {
        let tls = test_tls();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(addr, LinkTrust::CaPem(tls.ca_pem.clone()));
        c.reconnect_delay_ms_min = 20;
        let (store, _seen, task) = start_link(c, dir.path());
        let mut peer = Peer::accept(&listener, &tls.acceptor).await;
        assert!(matches!(peer.next_any().await, Some(Frame::Hello(_))));
        match peer.next_any().await {
            Some(Frame::SuppressionsSince { version: 0 }) => {}
            other => panic!("expected SuppressionsSince 0, got {other:?}"),
        }
        let entry = |scope: &str, address: &str| LoadEntry {
            scope: scope.into(),
            address: address.into(),
            reason: SuppressionReason::HardBounce,
        };
        for (first, last, e) in [
            (true, false, entry("t1", "a@x.example")),
            (false, true, entry("*", "b@x.example")),
        ] {
            let page = LoadPage {
                version: 5,
                first,
                last,
                entries: vec![e],
            };
            write_frame(&mut peer.stream, &Frame::SuppressionLoad(page))
                .await
                .unwrap();
        }
        match peer.next_any().await {
            Some(Frame::SuppressionsApplied { version: 5 }) => {}
            other => panic!("expected SuppressionsApplied 5, got {other:?}"),
        }
        assert_eq!(store.suppressions().len(), 2);
        assert!(store.suppressions().check("t1", "A@x.example").is_some());
        assert!(store
            .suppressions()
            .check("t2", "b@x.example")
            .is_some_and(|h| h.operator_wide));
        let changes = vec![
            SuppressionChange {
                seq: 6,
                scope: "t1".into(),
                address: "a@x.example".into(),
                op: ChangeOp::Remove,
            },
            SuppressionChange {
                seq: 7,
                scope: "t2".into(),
                address: "c@x.example".into(),
                op: ChangeOp::Add(SuppressionReason::Unsubscribe),
            },
        ];
        write_frame(&mut peer.stream, &Frame::SuppressionChanges { changes })
            .await
            .unwrap();
        match peer.next_any().await {
            Some(Frame::SuppressionsApplied { version: 7 }) => {}
            other => panic!("expected SuppressionsApplied 7, got {other:?}"),
        }
        assert!(store.suppressions().check("t1", "a@x.example").is_none());
        assert!(store.suppressions().check("t2", "c@x.example").is_some());

        // A load page without its first page is a broken feed: the link drops the connection,
        // keeps its set, and asks again from where it stands.
        let orphan = LoadPage {
            version: 9,
            first: false,
            last: true,
            entries: vec![],
        };
        write_frame(&mut peer.stream, &Frame::SuppressionLoad(orphan))
            .await
            .unwrap();
        let mut peer = Peer::accept(&listener, &tls.acceptor).await;
        assert!(matches!(peer.next_any().await, Some(Frame::Hello(_))));
        match peer.next_any().await {
            Some(Frame::SuppressionsSince { version: 7 }) => {}
            other => panic!("expected SuppressionsSince 7, got {other:?}"),
        }
        assert_eq!(store.suppressions().len(), 2);
        task.abort();
    })
    .await
    .expect("test finished in time");
}
