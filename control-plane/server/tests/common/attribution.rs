//! Report attribution at ingest (issue 14), run on SQLite (`tests/events.rs`) and PostgreSQL
//! (`tests/pg.rs`): a test engine on the real push link sends a message's `accepted` events,
//! then reports about it as an engine's intake would; the API shows each report attributed
//! to the recipient the message went to, and only that address suppressed.

use petrel_policy::event::{Bounce, BounceClass, Event, EventType, DETAIL_RCPT_INDEX};
use serde_json::{json, Value};

use super::events::{connect, event, send};
use super::scenarios::new_tenant;
use super::Harness;

/// The engine id the `accepted` events' ids are made with (`events::event`).
const ENGINE: &str = "engine-ev";
const MESSAGE: &str = "0100000000000007";

fn report(id: &str, kind: &str, tenant: Option<&str>, recipient: Option<&str>) -> Event {
    let mut e = event("x", MESSAGE, 0, 0, EventType::Accepted, 2_000);
    e.id = id.into();
    e.kind = EventType::parse(kind);
    e.tenant_id = tenant.map(String::from);
    e.message_id = tenant.map(|_| MESSAGE.to_string());
    e.rfc822_message_id = None;
    e.sender = String::new();
    e.from_domain = Some("forged.test".into());
    e.recipient = recipient.map(String::from);
    e.tags.clear();
    e.metadata = None;
    e.remote = None;
    e.reply = None;
    if e.kind == EventType::Bounced {
        e.is_async = true;
        e.bounce = Some(Bounce {
            class: BounceClass::Hard,
            category: "invalid_recipient".into(),
        });
    }
    e.details = Some(serde_json::Map::from_iter([(
        "source".to_string(),
        json!("arf"),
    )]));
    e
}

fn with_index(mut e: Event, index: u32) -> Event {
    e.details
        .get_or_insert_with(Default::default)
        .insert(DETAIL_RCPT_INDEX.into(), json!(index));
    e
}

fn by_id<'a>(events: &'a Value, id: &str) -> &'a Value {
    events["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("no event {id} in {events}"))
}

async fn suppressed(h: &Harness, key: &str, address: &str) -> bool {
    let r = h
        .call(
            "GET",
            &format!("/v1/suppressions?address={address}"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    !r.body["suppressions"]
        .as_array()
        .expect("suppressions")
        .is_empty()
}

pub async fn reports(h: &Harness) {
    let (a, a_key) = new_tenant(h, "attrib-a").await;
    let (b, b_key) = new_tenant(h, "attrib-b").await;
    let mut conn = connect(h, ENGINE).await;
    // Tenant A's message to two recipients, accepted.
    let accepted: Vec<Event> = (0..2)
        .map(|i| event(&a, MESSAGE, i, 0, EventType::Accepted, 1_000))
        .collect();
    assert_eq!(send(&mut conn, 1, accepted).await, 1);

    let reports = vec![
        // A complaint by recipient 1's token that names another address: the event names
        // recipient 1, and only recipient 1 is suppressed.
        with_index(
            report("ev_r1", "complained", Some(&a), Some("victim@dest.test")),
            1,
        ),
        // An async bounce without a token: found by the original's Message-ID and the
        // address it names (any case).
        {
            let mut e = report("ev_r2", "bounced", None, Some("RCPT0@dest.test"));
            e.rfc822_message_id = Some(format!("{MESSAGE}@mail.test"));
            e
        },
        // A Message-ID nobody sent: kept without a tenant, unresolved.
        {
            let mut e = report("ev_r3", "complained", None, Some("x@dest.test"));
            e.rfc822_message_id = Some("unknown@nowhere.test".into());
            e
        },
        // Tenant B's token naming A's message: not B's message, B keeps the reported address.
        with_index(
            report("ev_r4", "complained", Some(&b), Some("b-reader@dest.test")),
            0,
        ),
        // A redacted complaint (no address) by recipient 0's token.
        with_index(report("ev_r5", "complained", Some(&a), None), 0),
    ];
    assert_eq!(send(&mut conn, 2, reports).await, 2);

    let r = h
        .call("GET", "/v1/events?limit=100", Some(&a_key), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let e1 = by_id(&r.body, "ev_r1");
    assert_eq!(e1["recipient"], "rcpt1@dest.test", "{e1}");
    assert_eq!(e1["details"]["attribution"], "token", "{e1}");
    assert_eq!(e1["details"]["reported_recipient"], "victim@dest.test");
    // What the report lacked comes from the message: its domain and the tenant's tags.
    assert_eq!(e1["from_domain"], "a.example.test", "{e1}");
    assert_eq!(e1["tags"], json!(["newsletter", format!("m-{MESSAGE}")]));
    let e2 = by_id(&r.body, "ev_r2");
    assert_eq!(e2["tenant_id"], a.as_str(), "{e2}");
    assert_eq!(e2["message_id"], MESSAGE);
    assert_eq!(e2["recipient"], "rcpt0@dest.test");
    assert_eq!(e2["details"]["attribution"], "message_id");
    assert!(e2["details"].get("reported_recipient").is_none(), "{e2}");
    let e5 = by_id(&r.body, "ev_r5");
    assert_eq!(e5["recipient"], "rcpt0@dest.test", "{e5}");
    assert!(suppressed(h, &a_key, "rcpt1@dest.test").await);
    assert!(suppressed(h, &a_key, "rcpt0@dest.test").await);
    assert!(!suppressed(h, &a_key, "victim@dest.test").await);

    let r = h
        .call("GET", "/v1/events?limit=100", Some(&b_key), None)
        .await;
    let e4 = by_id(&r.body, "ev_r4");
    assert_eq!(e4["recipient"], "b-reader@dest.test", "{e4}");
    assert_eq!(e4["details"]["attribution"], "reported");
    assert!(!suppressed(h, &a_key, "b-reader@dest.test").await);

    let r = h.owner("GET", "/v1/events?tenant=*&limit=100", None).await;
    let e3 = by_id(&r.body, "ev_r3");
    assert!(e3["tenant_id"].is_null(), "{e3}");
    assert_eq!(e3["details"]["attribution"], "unresolved");
}
