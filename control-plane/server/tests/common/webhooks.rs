//! Webhook scenarios, run on SQLite (`tests/webhooks.rs`) and PostgreSQL (`tests/pg.rs`): a
//! test engine pushes events over the real push link, the control plane delivers them over real
//! HTTPS to `tests/webhook_receiver.py` (its own signature check, Python's hmac) on loopback,
//! whose name the loopback DNS server answers. The control plane's clock is moved forward to
//! test the 24 h rules without waiting.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use petrel_policy::event::{Event, EventType};
use serde_json::{json, Value};

use super::events::{connect, event, send, Conn};
use super::scenarios::new_tenant;
use super::{start_custom, Harness, Tweaks};

/// One hour, ms.
pub const HOUR_MS: i64 = 3_600_000;
/// How long a test waits for deliveries to show.
const WAIT: Duration = Duration::from_secs(30);

/// The system clock plus an offset the test moves.
#[derive(Debug, Default)]
pub struct TestClock {
    offset_ms: AtomicI64,
}

impl TestClock {
    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl petrel_control::Clock for TestClock {
    fn now_unix_ms(&self) -> i64 {
        petrel_control::now_unix_ms() + self.offset_ms.load(Ordering::SeqCst)
    }
}

fn clock_now(c: &TestClock) -> i64 {
    petrel_control::Clock::now_unix_ms(c)
}

/// A test CA and a certificate for the receiver's names, as PEM files.
pub struct Pki {
    pub ca_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn pki(dir: &Path, names: &[&str]) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Petrel Webhook Test CA");
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let leaf = CertificateParams::new(names)
        .expect("leaf params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf");
    let cert = dir.join("receiver-cert.pem");
    let key = dir.join("receiver-key.pem");
    std::fs::write(&cert, format!("{}{}", leaf.pem(), ca.pem())).expect("cert");
    std::fs::write(&key, leaf_key.serialize_pem()).expect("key");
    Pki {
        ca_pem: ca.pem(),
        cert,
        key,
    }
}

/// `tests/webhook_receiver.py` running on a loopback port; killed (by PID) on drop.
pub struct Receiver {
    child: Child,
    pub port: u16,
    pub out: PathBuf,
    mode: PathBuf,
    secrets: Vec<PathBuf>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn receiver_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/webhook_receiver.py")
}

impl Receiver {
    /// Starts the receiver with TLS from `pki` and `secret_files` slots (written later with
    /// [`Receiver::set_secret`]), with a timestamp tolerance of `tolerance_secs`.
    pub async fn start(
        dir: &Path,
        pki: &Pki,
        secret_slots: usize,
        tolerance_secs: i64,
    ) -> Receiver {
        Receiver::start_with(dir, Some(pki), secret_slots, tolerance_secs).await
    }

    /// [`Receiver::start`]; without `pki` it speaks plain HTTP.
    pub async fn start_with(
        dir: &Path,
        pki: Option<&Pki>,
        secret_slots: usize,
        tolerance_secs: i64,
    ) -> Receiver {
        let port_file = dir.join("receiver.port");
        let out = dir.join("receiver.jsonl");
        let mode = dir.join("receiver.mode");
        let secrets: Vec<PathBuf> = (0..secret_slots)
            .map(|i| dir.join(format!("secret-{i}")))
            .collect();
        let mut cmd = Command::new("python3");
        cmd.arg(receiver_script())
            .arg("--port-file")
            .arg(&port_file)
            .arg("--out")
            .arg(&out)
            .arg("--mode-file")
            .arg(&mode)
            .arg("--tolerance-secs")
            .arg(tolerance_secs.to_string());
        for s in &secrets {
            cmd.arg("--secret-file").arg(s);
        }
        if let Some(pki) = pki {
            cmd.arg("--cert").arg(&pki.cert).arg("--key").arg(&pki.key);
        }
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 runs the receiver");
        let mut port = 0;
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                port = text.trim().parse().expect("a port");
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(port > 0, "the receiver wrote its port");
        Receiver {
            child,
            port,
            out,
            mode,
            secrets,
        }
    }

    pub fn set_secret(&self, slot: usize, secret: &str) {
        std::fs::write(&self.secrets[slot], secret).expect("secret file");
    }

    /// `ok`, `500` or `close`.
    pub fn set_mode(&self, mode: &str) {
        std::fs::write(&self.mode, mode).expect("mode file");
    }

    /// Every request it answered, in order.
    pub fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// The event ids of each accepted (200) delivery, once per delivery id, in arrival order.
    pub fn deliveries(&self) -> Vec<Vec<String>> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for l in self.lines() {
            let delivery = l["delivery_id"].as_str().unwrap_or_default().to_string();
            if l["status"] != 200 || !seen.insert(delivery) {
                continue;
            }
            let ids = l["body"]["events"].as_array().into_iter().flatten();
            out.push(
                ids.map(|e| e["id"].as_str().expect("event id").to_string())
                    .collect(),
            );
        }
        out
    }

    /// The ids of the events of accepted deliveries, once per delivery id, in arrival order.
    pub fn delivered_ids(&self) -> Vec<String> {
        self.deliveries().concat()
    }

    /// The delivered ids with the deliveries put in the order of `want` (by where each one's
    /// first event is in it): several deliveries of a webhook are in flight at once, so they
    /// may arrive in any order, but each is in order and they tile the stream. Equal to `want`
    /// exactly when every event came once, each delivery in order, none overlapping.
    pub fn delivered_ids_by(&self, want: &[String]) -> Vec<String> {
        let at = |id: &String| want.iter().position(|w| w == id).unwrap_or(usize::MAX);
        let mut deliveries = self.deliveries();
        deliveries.sort_by_key(|d| d.first().map_or(usize::MAX, at));
        deliveries.concat()
    }
}

/// Waits until `f` holds (polling), or panics naming `what`.
pub async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A harness that lets webhooks reach loopback and trusts the receiver's CA, with a movable
/// clock; `hooks.test` resolves to 127.0.0.1.
pub async fn loopback_harness(
    database_url: Option<String>,
    dir: &Path,
) -> (Harness, Arc<TestClock>, Pki) {
    let pki = pki(dir, &["hooks.test", "rebind.test"]);
    let clock = Arc::new(TestClock::default());
    let h = loopback_node(database_url, &pki, clock.clone(), false).await;
    (h, clock, pki)
}

/// One node of [`loopback_harness`]'s kind; `second_node`: on a database another node set up.
pub async fn loopback_node(
    database_url: Option<String>,
    pki: &Pki,
    clock: Arc<TestClock>,
    second_node: bool,
) -> Harness {
    let h = start_custom(
        database_url,
        Tweaks {
            webhooks_allow_loopback: true,
            webhooks_ca_pem: Some(pki.ca_pem.clone()),
            clock: Some(clock),
            second_node,
            ..Tweaks::default()
        },
    )
    .await;
    h.dns
        .upsert(petrel_testkit::dns::a("hooks.test", 60, "127.0.0.1"));
    h
}

/// Two nodes on one database: each webhook batch is sent by one node only (the lease), in
/// order, while events are ingested on both.
pub async fn two_nodes(node1: &Harness, node2: &Harness, pki: &Pki, dir: &Path) {
    let rx = Receiver::start(dir, pki, 1, 300).await;
    let (tenant, key) = new_tenant(node1, "two-nodes-co").await;
    let r = node1
        .call(
            "POST",
            "/v1/webhooks",
            Some(&key),
            Some(json!({"url": format!("https://hooks.test:{}/", rx.port), "events": ["delivered", "bounced"]})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    rx.set_secret(0, r.body["secret"].as_str().expect("secret"));
    let mut c1 = connect(node1, "engine-n1").await;
    let mut c2 = connect(node2, "engine-n2").await;
    let (mut s1, mut s2) = (0, 0);
    let mut want = Vec::new();
    for round in 0..6 {
        let events = batch(&tenant, &format!("r{round}"), 60);
        want.extend(matching(&events, &["delivered", "bounced"]));
        if round % 2 == 0 {
            push(&mut c1, &mut s1, &events).await;
        } else {
            push(&mut c2, &mut s2, &events).await;
        }
    }
    wait_for("every event", || rx.delivered_ids().len() >= want.len()).await;
    assert_eq!(rx.delivered_ids_by(&want), want, "once each, in order");
    let lines = rx.lines();
    assert!(lines.iter().all(|l| l["status"] == 200));
    let ids: std::collections::BTreeSet<&str> = lines
        .iter()
        .map(|l| l["delivery_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), lines.len(), "no batch sent twice");
}

/// `n` events of `tenant`, cycling accepted, delivered, bounced, deferred.
pub fn batch(tenant: &str, message: &str, n: u32) -> Vec<Event> {
    use EventType::*;
    let now = petrel_control::now_unix_ms();
    (0..n)
        .map(|i| {
            let kind = [Accepted, Delivered, Bounced, Deferred][(i % 4) as usize].clone();
            event(tenant, message, i, 1, kind, now + i64::from(i))
        })
        .collect()
}

/// The ids of `events` of the given types, in order.
pub fn matching(events: &[Event], types: &[&str]) -> Vec<String> {
    events
        .iter()
        .filter(|e| types.contains(&e.kind.as_str()))
        .map(|e| e.id.clone())
        .collect()
}

async fn deliveries(h: &Harness, key: &str, id: &str) -> Value {
    let r = h
        .call(
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?limit=100"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

async fn show(h: &Harness, key: &str, id: &str) -> Value {
    let r = h
        .call("GET", &format!("/v1/webhooks/{id}"), Some(key), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

/// Sends `events` as one or more batches (at most the wire's batch size each).
async fn push(conn: &mut Conn, seq: &mut u64, events: &[Event]) {
    for chunk in events.chunks(petrel_policy::event::EVENTS_PER_BATCH_MAX) {
        *seq += 1;
        assert_eq!(send(conn, *seq, chunk.to_vec()).await, *seq);
    }
}

/// Delivery in order and in batches of at most 100, an outage with retries and the history
/// showing them, secret rotation (both signatures for 24 h, then only the new), the test
/// delivery, disabling after 24 h of failure and re-enabling, and the owner's `tenant` view.
pub async fn delivery(h: &Harness, clock: &TestClock, pki: &Pki, dir: &Path) {
    // The clock moves by days: the receiver's tolerance covers that; its tolerance check
    // itself is exercised in `tests/webhooks.rs`.
    let rx = Receiver::start(dir, pki, 2, 30 * 24 * 3600).await;
    let (tenant, key) = new_tenant(h, "hooks-co").await;
    let types = ["delivered", "bounced"];
    // Events from before the webhook exists are not replayed.
    let mut conn = connect(h, "engine-wh").await;
    let mut seq = 0;
    push(&mut conn, &mut seq, &batch(&tenant, "before", 8)).await;
    let url = format!("https://hooks.test:{}/in?src=petrel", rx.port);
    let r = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&key),
            Some(json!({"url": url, "events": types})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    let secret = r.body["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(r.body["webhook"]["events"], json!(types));
    assert!(r.body["webhook"].get("secret").is_none());
    rx.set_secret(0, &secret);

    // 450 events, 226 of them matching: at least three POSTs, each at most 100, in order.
    let first = batch(&tenant, "m1", 450);
    let want = matching(&first, &types);
    let started = std::time::Instant::now();
    push(&mut conn, &mut seq, &first).await;
    wait_for("the first events", || {
        rx.delivered_ids().len() >= want.len()
    })
    .await;
    let lag = started.elapsed();
    assert_eq!(
        rx.delivered_ids_by(&want),
        want,
        "every matching event once, in order"
    );
    let lines = rx.lines();
    assert!(lines.iter().all(|l| l["status"] == 200), "{lines:?}");
    assert!(lines.len() >= 3);
    for l in &lines {
        let n = l["body"]["events"].as_array().expect("events").len();
        assert!((1..=100).contains(&n), "{n} events in one POST");
        assert_eq!(l["webhook_id"], json!(id));
        assert_eq!(l["signatures"], 1);
        assert_eq!(l["matched"], json!([0]));
        assert_eq!(l["content_type"], "application/json");
    }
    // The body's events are the API's events.
    let api = h
        .call("GET", "/v1/events?type=bounced&limit=1", Some(&key), None)
        .await;
    let newest = &api.body["events"][0];
    let posted = lines
        .iter()
        .flat_map(|l| l["body"]["events"].as_array().cloned().unwrap_or_default())
        .find(|e| e["id"] == newest["id"])
        .expect("the newest bounced event was posted");
    assert_eq!(newest["type"], "bounced");
    assert_eq!(*newest, posted);
    eprintln!(
        "webhook: {} events delivered {lag:?} after the push began",
        want.len()
    );
    // Lag of one event: from the engine's ack to the receiver.
    let mut want = want;
    let one = batch(&tenant, "lag", 2);
    let before = rx.delivered_ids().len();
    let started = std::time::Instant::now();
    push(&mut conn, &mut seq, &one).await;
    wait_for("one event", || rx.delivered_ids().len() > before).await;
    let lag = started.elapsed();
    eprintln!("webhook: one event delivered {lag:?} after its push");
    assert!(lag < Duration::from_secs(2), "webhook lag {lag:?}");
    want.extend(matching(&one, &types));
    assert_eq!(rx.delivered_ids_by(&want), want);

    // Outage: the receiver answers 500; the batch is retried with the same delivery id.
    rx.set_mode("500");
    let second = batch(&tenant, "m2", 20);
    push(&mut conn, &mut seq, &second).await;
    wait_for("a failed attempt", || {
        rx.lines().iter().any(|l| l["status"] == 500)
    })
    .await;
    // Each retry comes due when the clock passes the backoff.
    for _ in 0..2 {
        let before = rx.lines().len();
        clock.advance(HOUR_MS);
        h.info.app.webhooks.wake();
        wait_for("a retry", || rx.lines().len() > before).await;
    }
    rx.set_mode("ok");
    clock.advance(HOUR_MS);
    h.info.app.webhooks.wake();
    let mut want_all = want.clone();
    want_all.extend(matching(&second, &types));
    wait_for("the events after the outage", || {
        rx.delivered_ids().len() >= want_all.len()
    })
    .await;
    assert_eq!(rx.delivered_ids_by(&want_all), want_all);
    let failed: Vec<Value> = rx
        .lines()
        .into_iter()
        .filter(|l| l["status"] == 500)
        .collect();
    assert_eq!(failed.len(), 3);
    let retried = failed[0]["delivery_id"].clone();
    assert!(failed.iter().all(|l| l["delivery_id"] == retried));
    let ok_line = rx
        .lines()
        .into_iter()
        .find(|l| l["status"] == 200 && l["delivery_id"] == retried)
        .expect("the retried delivery finally accepted");
    assert_eq!(ok_line["body"], failed[0]["body"], "the same batch again");
    let hist = deliveries(h, &key, &id).await;
    let d = hist["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .find(|d| d["id"] == retried)
        .expect("the retried delivery in the history")
        .clone();
    assert_eq!(d["state"], "delivered");
    let attempts = d["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 4, "{d}");
    for a in &attempts[..3] {
        assert_eq!(a["ok"], false);
        assert_eq!(a["status_code"], 500);
        assert!(a["error"].as_str().is_some_and(|e| e.contains("500")));
        assert!(a["duration_ms"].as_i64().is_some());
    }
    assert_eq!(attempts[3]["ok"], true);
    assert!(show(h, &key, &id).await["failing_since_unix_ms"].is_null());

    // A partial failure: three deliveries in flight at once, the receiver refusing every
    // second one. The accepted ones are never sent again; the refused one is retried with its
    // own id and events; nothing is lost and the stream is still tiled in order.
    let lines_before = rx.lines().len();
    rx.set_mode("odd500");
    let partial = batch(&tenant, "partial", 450);
    push(&mut conn, &mut seq, &partial).await;
    wait_for("three deliveries answered", || {
        rx.lines().len() >= lines_before + 3
    })
    .await;
    rx.set_mode("ok");
    clock.advance(HOUR_MS);
    h.info.app.webhooks.wake();
    want_all.extend(matching(&partial, &types));
    wait_for("the events after the partial failure", || {
        rx.delivered_ids().len() >= want_all.len()
    })
    .await;
    assert_eq!(rx.delivered_ids_by(&want_all), want_all);
    let phase: Vec<Value> = rx.lines().split_off(lines_before);
    let refused: Vec<&Value> = phase.iter().filter(|l| l["status"] == 500).collect();
    assert_eq!(refused.len(), 1, "{phase:?}");
    let mut accepted = std::collections::BTreeMap::new();
    for l in phase.iter().filter(|l| l["status"] == 200) {
        let n = accepted.entry(l["delivery_id"].to_string()).or_insert(0);
        *n += 1;
    }
    assert_eq!(accepted.len(), 3, "three deliveries, each accepted");
    assert!(
        accepted.values().all(|n| *n == 1),
        "none sent again: {accepted:?}"
    );
    let retry = phase
        .iter()
        .find(|l| l["status"] == 200 && l["delivery_id"] == refused[0]["delivery_id"])
        .expect("the refused delivery, retried");
    assert_eq!(retry["body"], refused[0]["body"], "the same batch again");
    assert!(show(h, &key, &id).await["failing_since_unix_ms"].is_null());

    // Rotation: both signatures for 24 h (the receiver knows both secrets), then the new only.
    let r = h
        .call(
            "POST",
            &format!("/v1/webhooks/{id}/rotate-secret"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let new_secret = r.body["secret"].as_str().expect("new secret").to_string();
    assert_ne!(new_secret, secret);
    rx.set_secret(1, &new_secret);
    let third = batch(&tenant, "m3", 4);
    push(&mut conn, &mut seq, &third).await;
    want_all.extend(matching(&third, &types));
    wait_for("events after the rotation", || {
        rx.delivered_ids().len() >= want_all.len()
    })
    .await;
    let l = rx.lines().last().cloned().expect("a line");
    assert_eq!(l["signatures"], 2, "{l}");
    assert_eq!(l["matched"], json!([0, 1]));
    clock.advance(24 * HOUR_MS + 60_000);
    let fourth = batch(&tenant, "m4", 4);
    push(&mut conn, &mut seq, &fourth).await;
    want_all.extend(matching(&fourth, &types));
    wait_for("events after the overlap", || {
        rx.delivered_ids().len() >= want_all.len()
    })
    .await;
    let l = rx.lines().last().cloned().expect("a line");
    assert_eq!(l["signatures"], 1, "{l}");
    assert_eq!(l["matched"], json!([1]), "only the new secret signs now");
    assert_eq!(rx.delivered_ids_by(&want_all), want_all);

    // The test delivery: sent now, signed, answered with its result.
    let r = h
        .call("POST", &format!("/v1/webhooks/{id}/test"), Some(&key), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["kind"], "test");
    assert_eq!(r.body["state"], "delivered");
    assert_eq!(r.body["attempts"][0]["status_code"], 200);
    let l = rx.lines().last().cloned().expect("a line");
    assert_eq!(l["body"], json!({"events": [], "test": true}));
    assert_eq!(l["delivery_id"], r.body["id"]);

    // Failing for 24 h disables it; every failed attempt is in the history.
    rx.set_mode("500");
    let fifth = batch(&tenant, "m5", 2);
    push(&mut conn, &mut seq, &fifth).await;
    wait_for("the first failure", || {
        rx.lines().last().is_some_and(|l| l["status"] == 500)
    })
    .await;
    for _ in 0..3 {
        let before = rx.lines().len();
        clock.advance(8 * HOUR_MS + 1_000);
        h.info.app.webhooks.wake();
        wait_for("a retry", || rx.lines().len() > before).await;
    }
    let mut shown = Value::Null;
    for _ in 0..100 {
        shown = show(h, &key, &id).await;
        if shown["disabled"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shown["disabled"], true, "{shown}");
    assert!(shown["disabled_reason"]
        .as_str()
        .is_some_and(|r| r.contains("500")));
    assert!(shown["disabled_unix_ms"].as_i64().is_some());
    let hist = deliveries(h, &key, &id).await;
    let pending = &hist["deliveries"][0];
    assert_eq!(pending["state"], "pending");
    assert_eq!(pending["attempts"].as_array().map(Vec::len), Some(4));
    // Disabled: nothing more is sent, whatever the clock says.
    let before = rx.lines().len();
    clock.advance(2 * HOUR_MS);
    h.info.app.webhooks.wake();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rx.lines().len(), before);
    // Enabled again, the pending batch goes out at once.
    rx.set_mode("ok");
    let r = h
        .call(
            "POST",
            &format!("/v1/webhooks/{id}/enable"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["disabled"], false);
    want_all.extend(matching(&fifth, &types));
    wait_for("events after enabling", || {
        rx.delivered_ids().len() >= want_all.len()
    })
    .await;
    assert_eq!(rx.delivered_ids_by(&want_all), want_all);

    // The owner may name the tenant; the history pages with a cursor.
    let r = h
        .owner("GET", &format!("/v1/webhooks/{id}?tenant={tenant}"), None)
        .await;
    assert_eq!(r.status, 200);
    let r = h.owner("GET", &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(r.status, 404, "the owner's own tenant has no such webhook");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut p = format!("/v1/webhooks/{id}/deliveries?limit=2");
        if let Some(c) = &cursor {
            p.push_str(&format!("&cursor={c}"));
        }
        let r = h.call("GET", &p, Some(&key), None).await;
        assert_eq!(r.status, 200);
        for d in r.body["deliveries"].as_array().expect("page") {
            seen.push(d["id"].as_str().expect("id").to_string());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let all = deliveries(h, &key, &id).await;
    let all_ids: Vec<String> = all["deliveries"]
        .as_array()
        .expect("all")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(seen, all_ids);

    // 31 days on, the finished deliveries leave the history; the webhook stays.
    let before = all_ids.len();
    clock.advance(31 * 24 * HOUR_MS);
    let purged = petrel_control::webhooks::dispatch::purge_history(&h.info.app, clock_now(clock))
        .await
        .expect("purge");
    assert_eq!(usize::try_from(purged).expect("count"), before);
    let left = deliveries(h, &key, &id).await;
    assert_eq!(left["deliveries"], json!([]));

    // Deleted: gone, audited.
    let r = h
        .call("DELETE", &format!("/v1/webhooks/{id}"), Some(&key), None)
        .await;
    assert_eq!(r.status, 204);
    let r = h
        .call("GET", &format!("/v1/webhooks/{id}"), Some(&key), None)
        .await;
    assert_eq!(r.status, 404);
    let audit = h.call("GET", "/v1/audit-log", Some(&key), None).await;
    let text = audit.body.to_string();
    for action in [
        "webhook.create",
        "webhook.disable",
        "webhook.rotate_secret",
        "webhook.enable",
        "webhook.delete",
    ] {
        assert!(text.contains(action), "{action} audited");
    }
    assert!(
        !text.contains(&secret) && !text.contains(&new_secret),
        "no secret in the audit log"
    );
    drop(conn);
}
