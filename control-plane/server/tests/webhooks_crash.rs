//! At-least-once across a crash: the control plane runs as its own process (this test binary
//! re-executed into [`control_plane_process`]), is killed with SIGKILL while a delivery is in
//! flight (the receiver holds the request unanswered), and restarted on the same SQLite store.
//! The batch is sent again with the same delivery id, and nothing is lost.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::webhooks::{pki, wait_for, Receiver};
use petrel_policy::link::{connector, LinkTrust};
use petrel_policy::{read_frame, write_frame, Frame, Hello};
use petrel_testkit::dns::{a, DnsServer};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};

/// Where the child finds its directory (the parent's temp dir).
const CHILD_DIR_ENV: &str = "PETREL_WEBHOOK_CRASH_DIR";
/// Where the child finds the DNS server.
const CHILD_DNS_ENV: &str = "PETREL_WEBHOOK_CRASH_DNS";
const TOKEN: &str = "crash-push-token";

/// What the child reports once it listens (written to `<dir>/info.json`).
fn info_path(dir: &Path) -> PathBuf {
    dir.join("info.json")
}

/// The control plane process of [`a_killed_control_plane_resends_the_batch_in_flight`]; run
/// by that test only (it fails when run on its own).
#[tokio::test]
#[ignore = "the control plane process of the crash test; not a test of its own"]
async fn control_plane_process() {
    let dir = PathBuf::from(std::env::var(CHILD_DIR_ENV).expect("run by the crash test"));
    let dns = std::env::var(CHILD_DNS_ENV)
        .expect("run by the crash test")
        .parse()
        .expect("a DNS address");
    let cfg = petrel_control::ControlConfig {
        data_dir: dir.join("control"),
        database_url: None,
        api_listen: "127.0.0.1:0".parse().expect("addr"),
        push_listen: "127.0.0.1:0".parse().expect("addr"),
        push_token: TOKEN.into(),
        dns_nameservers: vec![dns],
        webhooks_allow_loopback: true,
        webhooks_ca_file: Some(dir.join("ca.pem")),
    };
    // The same key file across the restarts (the shared test key is per process).
    let key_file = dir.join("kek");
    petrel_seal::KekFile::load_or_generate(&key_file).expect("key file");
    let options = petrel_control::ServeOptions {
        key_file: Some(key_file),
        ..common::test_options()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let report = async move {
        let info: petrel_control::ServeInfo = rx.await.expect("started");
        let v = json!({
            "api": info.api_addr.to_string(),
            "push": info.push_addr.to_string(),
            "push_cert": info.push_cert_pem,
            "owner_key": info.bootstrap_key,
        });
        let tmp = dir.join("info.json.tmp");
        std::fs::write(&tmp, v.to_string()).expect("write info");
        std::fs::rename(&tmp, info_path(&dir)).expect("publish info");
    };
    let serve = petrel_control::serve_with(cfg, options, Some(tx));
    let (served, ()) = tokio::join!(serve, report);
    served.expect("the control plane runs");
}

/// A control plane child process; SIGKILLed on drop.
struct Node {
    child: Child,
    info: Value,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    async fn start(dir: &Path, dns: &DnsServer) -> Node {
        let _ = std::fs::remove_file(info_path(dir));
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "control_plane_process",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_DIR_ENV, dir)
            .env(CHILD_DNS_ENV, dns.addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the control plane process");
        let mut info = Value::Null;
        for _ in 0..600 {
            if let Ok(text) = std::fs::read_to_string(info_path(dir)) {
                info = serde_json::from_str(&text).expect("info JSON");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(info.is_object(), "the control plane started");
        Node { child, info }
    }

    fn api(&self) -> std::net::SocketAddr {
        self.info["api"]
            .as_str()
            .expect("api")
            .parse()
            .expect("addr")
    }

    async fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> common::Resp {
        let body = body.map(|b| b.to_string());
        common::http(self.api(), method, path, Some(key), body.as_deref()).await
    }

    /// Sends one events batch as engine `crash-engine` and waits for its ack.
    async fn push(&self, batch_seq: u64, events: Vec<petrel_policy::Event>) {
        let pem = self.info["push_cert"].as_str().expect("push cert");
        let tls = connector(&LinkTrust::CaPem(pem.as_bytes().to_vec())).expect("connector");
        let addr: std::net::SocketAddr = self.info["push"]
            .as_str()
            .expect("push")
            .parse()
            .expect("addr");
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect push");
        let name = ServerName::try_from("localhost").expect("name");
        let mut conn = tls.connect(name, tcp).await.expect("TLS");
        let hello = Hello {
            engine_id: "crash-engine".into(),
            token: TOKEN.into(),
            applied_version: 0,
            shards: 1,
            protocol: 0,
        };
        write_frame(&mut conn, &Frame::Hello(hello))
            .await
            .expect("hello");
        write_frame(&mut conn, &Frame::Events { batch_seq, events })
            .await
            .expect("events");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut conn))
                .await
                .expect("a frame in time")
                .expect("a frame");
            match frame {
                Some(Frame::Snapshot { .. }) => continue,
                Some(Frame::EventsAck { batch_seq: acked }) => {
                    assert_eq!(acked, batch_seq);
                    return;
                }
                other => panic!("expected EventsAck, got {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_control_plane_resends_the_batch_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path(), &["hooks.test"]);
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).expect("CA file");
    let dns = DnsServer::start(vec![a("hooks.test", 60, "127.0.0.1")]);
    let rx = Receiver::start(dir.path(), &pki, 1, 300).await;

    let node = Node::start(dir.path(), &dns).await;
    let owner = node.info["owner_key"]
        .as_str()
        .expect("owner key")
        .to_string();
    let r = node
        .call(
            "POST",
            "/v1/tenants",
            &owner,
            Some(json!({"name": "crash-co"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let tenant = r.body["tenant"]["id"].as_str().expect("tenant").to_string();
    let key = r.body["admin_key"]["secret"]
        .as_str()
        .expect("key")
        .to_string();
    let url = format!("https://hooks.test:{}/", rx.port);
    let r = node
        .call(
            "POST",
            "/v1/webhooks",
            &key,
            Some(json!({"url": url, "events": ["delivered", "bounced"]})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    rx.set_secret(0, r.body["secret"].as_str().expect("secret"));

    // The receiver takes the first batch and never answers; the control plane dies meanwhile.
    rx.set_mode("hold");
    let first = common::webhooks::batch(&tenant, "c1", 40);
    node.push(1, first.clone()).await;
    wait_for("the batch to reach the receiver", || {
        rx.lines().iter().any(|l| l["status"] == 0)
    })
    .await;
    drop(node); // SIGKILL
    let held = rx.lines()[0].clone();
    assert_eq!(held["status"], 0);

    // Restarted on the same store: the same batch again, same delivery id, then new events.
    rx.set_mode("ok");
    let node = Node::start(dir.path(), &dns).await;
    assert!(node.info["owner_key"].is_null(), "the same store");
    let types = ["delivered", "bounced"];
    let mut want = common::webhooks::matching(&first, &types);
    wait_for("the re-sent batch", || {
        rx.delivered_ids().len() >= want.len()
    })
    .await;
    let resent = rx
        .lines()
        .into_iter()
        .find(|l| l["status"] == 200)
        .expect("an accepted delivery");
    assert_eq!(
        resent["delivery_id"], held["delivery_id"],
        "same delivery id"
    );
    assert_eq!(resent["body"], held["body"], "same events");
    let second = common::webhooks::batch(&tenant, "c2", 8);
    node.push(2, second.clone()).await;
    want.extend(common::webhooks::matching(&second, &types));
    wait_for("the later events", || {
        rx.delivered_ids().len() >= want.len()
    })
    .await;
    assert_eq!(
        rx.delivered_ids_by(&want),
        want,
        "nothing lost, each delivery in order"
    );
    let r = node
        .call("GET", &format!("/v1/webhooks/{id}/deliveries"), &key, None)
        .await;
    let held_id = held["delivery_id"].as_str().expect("delivery id");
    let d = r.body["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .find(|d| d["id"] == held_id)
        .expect("the re-sent delivery")
        .clone();
    assert_eq!(d["state"], "delivered");
}
