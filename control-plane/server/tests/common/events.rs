//! Delivery event scenarios, run on SQLite (`tests/events.rs`) and PostgreSQL (`tests/pg.rs`):
//! a test engine speaks the real push link (TLS, `Hello`, `Events`, `EventsAck`), then the API
//! answers from what it stored.

use std::collections::BTreeSet;
use std::time::Duration;

use petrel_policy::event::{
    Bounce, BounceClass, Event, EventType, Remote, Reply, EVENTS_PER_BATCH_MAX, TAGS_MAX,
};
use petrel_policy::link::{connector, LinkTrust};
use petrel_policy::{read_frame, write_frame, Frame, Hello};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio_rustls::client::TlsStream;

use super::scenarios::new_tenant;
use super::{Harness, PUSH_TOKEN};

/// A TLS push connection of a test engine.
pub type Conn = TlsStream<tokio::net::TcpStream>;

/// How long a test waits for one frame.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// Connects as `engine_id` over the real push link and says Hello with the harness's token.
pub async fn connect(h: &Harness, engine_id: &str) -> Conn {
    connect_as(h, PUSH_TOKEN, engine_id, 1).await
}

/// Connects over the real push link and says Hello as `engine_id` with `token` and `shards`,
/// speaking protocol revision 0 (so no frame added since, such as audit checkpoints, arrives).
pub async fn connect_as(h: &Harness, token: &str, engine_id: &str, shards: u32) -> Conn {
    let hello = Hello {
        engine_id: engine_id.into(),
        token: token.into(),
        applied_version: 0,
        shards,
        protocol: 0,
    };
    connect_hello(h, hello).await
}

/// Connects over the real push link and says `hello`.
pub async fn connect_hello(h: &Harness, hello: Hello) -> Conn {
    let tls =
        connector(&LinkTrust::CaPem(h.info.push_cert_pem.as_bytes().to_vec())).expect("connector");
    let tcp = tokio::net::TcpStream::connect(h.info.push_addr)
        .await
        .expect("connect push");
    let name = ServerName::try_from("localhost").expect("name");
    let mut conn = tls.connect(name, tcp).await.expect("tls handshake");
    write_frame(&mut conn, &Frame::Hello(hello))
        .await
        .expect("hello");
    conn
}

/// The next frame that is not a snapshot (snapshots arrive whenever the policy changes);
/// None when the control plane closed the connection.
pub async fn next_reply(conn: &mut Conn) -> Option<Frame> {
    loop {
        let frame = tokio::time::timeout(FRAME_WAIT, read_frame(conn))
            .await
            .expect("a frame in time");
        match frame {
            Ok(Some(Frame::Snapshot { .. })) => continue,
            Ok(f) => return f,
            Err(_) => return None,
        }
    }
}

/// Sends one batch and returns the acknowledged seq (panics on anything else).
pub async fn send(conn: &mut Conn, batch_seq: u64, events: Vec<Event>) -> u64 {
    write_frame(conn, &Frame::Events { batch_seq, events })
        .await
        .expect("send events");
    match next_reply(conn).await {
        Some(Frame::EventsAck { batch_seq }) => batch_seq,
        other => panic!("expected EventsAck, got {other:?}"),
    }
}

/// Sends one batch that must be refused: an `Error` frame naming `why`, no ack, then close.
pub async fn send_refused(conn: &mut Conn, batch_seq: u64, events: Vec<Event>, why: &str) {
    write_frame(conn, &Frame::Events { batch_seq, events })
        .await
        .expect("send events");
    match next_reply(conn).await {
        Some(Frame::Error { message }) => assert!(message.contains(why), "{message}"),
        other => panic!("expected Error about {why}, got {other:?}"),
    }
    assert!(next_reply(conn).await.is_none(), "closed after the Error");
}

/// One event of `message` for recipient number `rcpt`, attempt `attempt`.
pub fn event(
    tenant: &str,
    message: &str,
    rcpt: u32,
    attempt: u32,
    kind: EventType,
    timestamp_ms: i64,
) -> Event {
    let bounce = match kind {
        EventType::Bounced => Some(BounceClass::Hard),
        EventType::Deferred => Some(BounceClass::Soft),
        _ => None,
    }
    .map(|class| Bounce {
        class,
        category: "mailbox_full".into(),
    });
    Event {
        id: Event::stable_id("engine-ev", message, rcpt, attempt, &kind),
        kind,
        timestamp_ms,
        tenant_id: Some(tenant.into()),
        message_id: Some(message.into()),
        rfc822_message_id: Some(format!("{message}@mail.test")),
        sender: "news@a.example.test".into(),
        from_domain: Some("a.example.test".into()),
        recipient: Some(format!("rcpt{rcpt}@dest.test")),
        tags: vec!["newsletter".into(), format!("m-{message}")],
        metadata: Some(serde_json::Map::from_iter([(
            "campaign".to_string(),
            json!(42),
        )])),
        attempt,
        remote: Some(Remote {
            mx_host: Some("mx.dest.test".into()),
            address: Some("192.0.2.7".into()),
            tls_version: Some("TLSv1.3".into()),
            tls_cipher: Some("TLS13_AES_256_GCM_SHA384".into()),
        }),
        reply: Some(Reply {
            code: 250,
            enhanced_code: Some("2.0.0".into()),
            text: "ok".into(),
        }),
        bounce,
        is_async: false,
        details: None,
    }
}

fn ids(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_string())
        .collect()
}

async fn get(h: &Harness, key: &str, path: &str) -> (u16, Value) {
    let r = h.call("GET", path, Some(key), None).await;
    (r.status, r.body)
}

/// Every event of `path` (a `/v1/events` query), page by page with `limit`; asserts the pages
/// never repeat an event.
pub async fn all_pages(h: &Harness, key: &str, path: &str, limit: usize) -> Vec<String> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1_000 {
        let mut p = format!("{path}{sep}limit={limit}");
        if let Some(c) = &cursor {
            p.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = get(h, key, &p).await;
        assert_eq!(status, 200, "{p}: {body}");
        let page = ids(&body);
        assert!(page.len() <= limit);
        out.extend(page);
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let unique: BTreeSet<&String> = out.iter().collect();
    assert_eq!(unique.len(), out.len(), "a page repeated an event: {out:?}");
    out
}

/// Ingest (acks, re-sends, idempotence by id), every filter, paging, message timelines,
/// tenant isolation, stats, refused batches, retention.
pub async fn events(h: &Harness) {
    let (a, a_key) = new_tenant(h, "events-a").await;
    let (b, b_key) = new_tenant(h, "events-b").await;
    let now = petrel_control::now_unix_ms();
    let t0 = now - 3_600_000;
    use EventType::*;
    let m1 = vec![
        event(&a, "m1", 0, 0, Accepted, t0),
        event(&a, "m1", 1, 0, Accepted, t0),
        event(&a, "m1", 0, 1, Deferred, t0 + 1_000),
        event(&a, "m1", 0, 2, Delivered, t0 + 2_000),
        event(&a, "m1", 1, 1, Bounced, t0 + 3_000),
    ];
    let m2 = vec![
        event(&b, "m2", 0, 0, Accepted, t0),
        event(&b, "m2", 0, 1, Delivered, t0 + 500),
    ];

    let mut conn = connect(h, "engine-ev").await;
    assert_eq!(send(&mut conn, 1, m1.clone()).await, 1);
    // The same batch again: acknowledged, nothing stored twice.
    assert_eq!(send(&mut conn, 1, m1.clone()).await, 1);
    // Old events under a new seq, plus new ones: only the new ones are stored.
    let mut batch2 = m1[..2].to_vec();
    batch2.extend(m2.clone());
    assert_eq!(send(&mut conn, 5, batch2).await, 5);
    // Below the acknowledged seq: acknowledged cumulatively, not stored.
    assert_eq!(
        send(&mut conn, 3, vec![event(&a, "late", 0, 0, Accepted, t0)]).await,
        5
    );
    drop(conn);

    let all = all_pages(h, &a_key, "/v1/events", 100).await;
    assert_eq!(all.len(), m1.len(), "A's events once each: {all:?}");
    // Newest first.
    let expected: Vec<String> = m1.iter().rev().map(|e| e.id.clone()).collect();
    assert_eq!(all, expected);
    // Paging with a small page returns each event exactly once, in the same order.
    assert_eq!(all_pages(h, &a_key, "/v1/events", 2).await, expected);
    assert_eq!(all_pages(h, &a_key, "/v1/events", 1).await, expected);

    // The event as the API shows it is the event the engine sent.
    let (_, body) = get(h, &a_key, "/v1/events?type=bounced").await;
    let got: Event = serde_json::from_value(body["events"][0].clone()).expect("an event");
    assert_eq!(got, m1[4]);
    let cases: Vec<(String, Vec<&Event>)> = vec![
        ("type=accepted".into(), vec![&m1[1], &m1[0]]),
        ("type=deferred".into(), vec![&m1[2]]),
        ("recipient=rcpt1@dest.test".into(), vec![&m1[4], &m1[1]]),
        ("message_id=m1&type=delivered".into(), vec![&m1[3]]),
        ("message_id=nope".into(), vec![]),
        ("tag=newsletter&type=bounced".into(), vec![&m1[4]]),
        ("tag=m-m2".into(), vec![]),
        ("tag=unknown".into(), vec![]),
        (format!("since={}", t0 + 2_000), vec![&m1[4], &m1[3]]),
        (format!("until={}", t0 + 999), vec![&m1[1], &m1[0]]),
        (
            format!("since={}&until={}", t0 + 1_000, t0 + 2_000),
            vec![&m1[3], &m1[2]],
        ),
    ];
    for (query, want) in cases {
        let want: Vec<String> = want.iter().map(|e| e.id.clone()).collect();
        let got = all_pages(h, &a_key, &format!("/v1/events?{query}"), 100).await;
        assert_eq!(got, want, "{query}");
    }
    // Filters and paging together.
    let got = all_pages(h, &a_key, "/v1/events?recipient=rcpt0@dest.test", 1).await;
    assert_eq!(got.len(), 3);

    // Tenant isolation: B sees its own only, never A's; naming A is 404.
    let b_all = all_pages(h, &b_key, "/v1/events", 100).await;
    assert_eq!(b_all.len(), m2.len());
    assert!(b_all.iter().all(|id| m2.iter().any(|e| &e.id == id)));
    let (status, body) = get(h, &b_key, &format!("/v1/events?tenant={a}")).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = get(h, &b_key, "/v1/events?tenant=*").await;
    assert_eq!(status, 404);
    let (status, _) = get(h, &b_key, "/v1/messages/m1").await;
    assert_eq!(status, 404, "B cannot see A's message");
    let (status, _) = get(h, &b_key, &format!("/v1/messages/m1?tenant={a}")).await;
    assert_eq!(status, 404);
    let (status, _) = get(h, &b_key, &format!("/v1/stats?tenant={a}")).await;
    assert_eq!(status, 404);
    // The operator owner names any tenant, or all of them.
    let owner = h.owner_key.clone();
    assert_eq!(
        all_pages(h, &owner, &format!("/v1/events?tenant={a}"), 3).await,
        expected
    );
    assert_eq!(
        all_pages(h, &owner, "/v1/events?tenant=*", 100).await.len(),
        7
    );
    assert!(all_pages(h, &owner, "/v1/events", 100).await.is_empty());

    // A message's timeline, in time order.
    let (status, body) = get(h, &a_key, "/v1/messages/m1").await;
    assert_eq!(status, 200, "{body}");
    let timeline: Vec<String> = m1.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids(&body), timeline);
    assert_eq!(
        body["recipients"],
        json!(["rcpt0@dest.test", "rcpt1@dest.test"])
    );
    assert_eq!(body["rfc822_message_id"], "m1@mail.test");
    assert_eq!(body["from_domain"], "a.example.test");
    let (status, _) = get(h, &a_key, "/v1/messages/m2").await;
    assert_eq!(status, 404);

    // Stats from the buckets: 2 sent, 1 delivered, 1 hard bounce, 1 deferral.
    let since = t0 - 7_200_000;
    let (status, body) = get(h, &a_key, &format!("/v1/stats?since={since}")).await;
    assert_eq!(status, 200, "{body}");
    let totals = &body["totals"];
    assert_eq!(
        totals["counts"],
        json!({"sent": 2, "delivered": 1, "bounced_hard": 1, "bounced_soft": 0,
               "deferred": 1, "expired": 0, "rejected": 0, "complained": 0})
    );
    assert_eq!(totals["delivery_rate"], 0.5);
    assert_eq!(totals["bounce_rate"], 0.5);
    assert_eq!(totals["deferral_rate"], 0.5);
    assert_eq!(body["domains"][0]["from_domain"], "a.example.test");
    assert_eq!(body["domains"][0]["counts"]["sent"], 2);
    let (_, body) = get(
        h,
        &a_key,
        &format!("/v1/stats?since={since}&from_domain=other.test"),
    )
    .await;
    assert_eq!(body["totals"]["counts"]["sent"], 0);
    assert!(
        body["totals"].get("delivery_rate").is_none(),
        "no rate without sends"
    );
    // A window before the events counts nothing.
    let (_, body) = get(
        h,
        &a_key,
        &format!(
            "/v1/stats?since={}&until={}",
            t0 - 10 * 3_600_000,
            t0 - 5 * 3_600_000
        ),
    )
    .await;
    assert_eq!(body["totals"]["counts"]["sent"], 0);
    let (_, body) = get(h, &b_key, &format!("/v1/stats?since={since}")).await;
    assert_eq!(body["totals"]["counts"]["delivered"], 1);
    assert_eq!(body["totals"]["delivery_rate"], 1.0);

    // Bad requests are JSON errors.
    for bad in [
        "/v1/events?cursor=!!!",
        "/v1/events?cursor=eA",
        "/v1/events?limit=0",
        "/v1/events?limit=1001",
        "/v1/events?since=yesterday",
    ] {
        let (status, body) = get(h, &a_key, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"]["code"].is_string(), "{bad}: {body}");
    }

    refused_batches(h, &a).await;
    unknown_tenant(h, &a_key, t0).await;
    retention(h, &a, &b, &a_key, &b_key).await;
}

/// Invalid batches get an Error frame and no ack, and store nothing; the engine's acked seq
/// survives a reconnect.
async fn refused_batches(h: &Harness, a: &str) {
    let now = petrel_control::now_unix_ms();
    let ok = event(a, "r1", 0, 0, EventType::Accepted, now);
    let mut too_many_tags = ok.clone();
    too_many_tags.tags = vec!["t".into(); TAGS_MAX + 1];
    let mut conn = connect(h, "engine-bad").await;
    send_refused(&mut conn, 1, vec![ok.clone(), too_many_tags], "tags").await;
    let mut conn = connect(h, "engine-bad").await;
    let mut no_bounce = event(a, "r1", 0, 1, EventType::Bounced, now);
    no_bounce.bounce = None;
    send_refused(&mut conn, 1, vec![no_bounce], "bounce").await;
    let mut conn = connect(h, "engine-bad").await;
    send_refused(&mut conn, 0, vec![ok.clone()], "seq").await;
    let mut conn = connect(h, "engine-bad").await;
    send_refused(&mut conn, 1, vec![ok.clone(), ok.clone()], "twice").await;
    // A frame whose JSON is not events: Error, then the connection closes.
    let mut conn = connect(h, "engine-bad").await;
    let mut raw = Frame::Events {
        batch_seq: 1,
        events: Vec::new(),
    }
    .encode()
    .expect("encode");
    raw.truncate(raw.len() - 2); // "[]" out, "{}" in, same length
    raw.extend_from_slice(b"{}");
    tokio::io::AsyncWriteExt::write_all(&mut conn, &raw)
        .await
        .expect("write");
    match next_reply(&mut conn).await {
        Some(Frame::Error { message }) => assert!(message.contains("events"), "{message}"),
        other => panic!("expected Error, got {other:?}"),
    }
    // More events than a batch may hold (our encoder refuses to build it, so build it by hand).
    let mut conn = connect(h, "engine-bad").await;
    let many: Vec<Event> = (0..=EVENTS_PER_BATCH_MAX)
        .map(|i| {
            event(
                a,
                "r1",
                u32::try_from(i).expect("small"),
                0,
                EventType::Accepted,
                now,
            )
        })
        .collect();
    let mut payload = 1u64.to_be_bytes().to_vec();
    payload.extend_from_slice(&serde_json::to_vec(&many).expect("json"));
    let length = u32::try_from(payload.len() + 1).expect("fits");
    let mut raw = length.to_be_bytes().to_vec();
    raw.push(petrel_policy::wire::KIND_EVENTS);
    raw.extend_from_slice(&payload);
    tokio::io::AsyncWriteExt::write_all(&mut conn, &raw)
        .await
        .expect("write");
    match next_reply(&mut conn).await {
        Some(Frame::Error { message }) => assert!(message.contains("exceeds"), "{message}"),
        other => panic!("expected Error, got {other:?}"),
    }
    // Nothing of the refused batches was stored.
    let owner = h.owner_key.clone();
    let (_, body) = get(h, &owner, &format!("/v1/events?tenant={a}&message_id=r1")).await;
    assert_eq!(ids(&body).len(), 0, "{body}");
    // The good batch goes through, and its seq is remembered across connections.
    let mut conn = connect(h, "engine-bad").await;
    assert_eq!(send(&mut conn, 1, vec![ok.clone()]).await, 1);
    drop(conn);
    let mut conn = connect(h, "engine-bad").await;
    assert_eq!(send(&mut conn, 1, vec![ok]).await, 1);
    let (_, body) = get(h, &owner, &format!("/v1/events?tenant={a}&message_id=r1")).await;
    assert_eq!(ids(&body).len(), 1, "{body}");
}

/// Events of an unknown (or no) tenant are kept and shown to operator owners only.
async fn unknown_tenant(h: &Harness, a_key: &str, t0: i64) {
    let mut e = event("ten_gone", "u1", 0, 0, EventType::Rejected, t0);
    e.reply = Some(Reply {
        code: 550,
        enhanced_code: Some("5.7.1".into()),
        text: "relay denied".into(),
    });
    let mut none = event("x", "u2", 0, 0, EventType::Rejected, t0);
    none.tenant_id = None;
    none.message_id = None;
    let mut conn = connect(h, "engine-unknown").await;
    assert_eq!(send(&mut conn, 1, vec![e.clone(), none.clone()]).await, 1);
    let owner = h.owner_key.clone();
    let got = all_pages(h, &owner, "/v1/events?tenant=ten_gone", 10).await;
    assert_eq!(got, vec![e.id.clone()]);
    let got = all_pages(h, &owner, "/v1/events?tenant=*&type=rejected", 10).await;
    assert_eq!(got, vec![none.id, e.id]);
    let (status, _) = get(h, a_key, "/v1/events?tenant=ten_gone").await;
    assert_eq!(status, 404);
}

/// A tenant's retention removes its old events only; other tenants keep theirs.
async fn retention(h: &Harness, a: &str, b: &str, a_key: &str, b_key: &str) {
    let now = petrel_control::now_unix_ms();
    let day = 86_400_000;
    let old_a = event(a, "old", 0, 0, EventType::Accepted, now - 2 * day);
    let new_a = event(a, "new", 0, 0, EventType::Accepted, now - day / 2);
    let old_b = event(b, "old-b", 0, 0, EventType::Accepted, now - 2 * day);
    let ancient_b = event(b, "ancient-b", 0, 0, EventType::Accepted, now - 31 * day);
    let mut conn = connect(h, "engine-retention").await;
    let batch = vec![
        old_a.clone(),
        new_a.clone(),
        old_b.clone(),
        ancient_b.clone(),
    ];
    assert_eq!(send(&mut conn, 1, batch).await, 1);

    let r = h
        .owner(
            "PUT",
            &format!("/v1/tenants/{a}/retention"),
            Some(json!({"events_days": 1})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"tenant_id": a, "events_days": 1, "messages_days": 30, "audit_days": 90})
    );
    let r = h
        .owner(
            "PUT",
            &format!("/v1/tenants/{a}/retention"),
            Some(json!({"events_days": 0})),
        )
        .await;
    assert_eq!(r.status, 422);
    let r = h
        .call(
            "PUT",
            &format!("/v1/tenants/{a}/retention"),
            Some(a_key),
            Some(json!({"events_days": 9})),
        )
        .await;
    assert_eq!(r.status, 403, "only owners set retention");

    let deleted = petrel_control::events::purge(&h.info.app, now)
        .await
        .expect("purge");
    assert_eq!(deleted, 2, "A's 2-day-old event and B's 31-day-old one");
    let a_ids = all_pages(h, a_key, "/v1/events?type=accepted", 100).await;
    assert!(a_ids.contains(&new_a.id));
    assert!(!a_ids.contains(&old_a.id));
    let b_ids = all_pages(h, b_key, "/v1/events", 100).await;
    assert!(b_ids.contains(&old_b.id), "B keeps 30 days");
    assert!(!b_ids.contains(&ancient_b.id));
    // The tag index lost the purged rows too.
    let got = all_pages(h, a_key, "/v1/events?tag=m-old", 100).await;
    assert!(got.is_empty(), "{got:?}");
    // Nothing more to purge.
    let again = petrel_control::events::purge(&h.info.app, now)
        .await
        .expect("purge");
    assert_eq!(again, 0);
}
