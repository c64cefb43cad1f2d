//! A message waiting for a later attempt lets go of its attribution and reads it back from the
//! spool when its next attempt, or an event about it, needs it (issue 17): the events of every
//! attempt carry the same tenant, credential, From domain, Message-ID, tags and metadata as the
//! first, live and after a restart (recovery hands over the tenant alone).

use std::sync::Arc;
use std::time::Duration;

use petrel_delivery::{
    AdminCommand, Attribution, AttributionParts, DeliveryConfig, DomainLimits, EventSink,
    EventsConfig, RcptState, RetrySchedule, TlsPolicy,
};
use petrel_testkit::shard::{routes, run_shard, ShardSetup};
use petrel_testkit::smtp_server::{Script, SmtpServer};

/// The bound on every wait of the scenarios.
const TEST_DEADLINE: Duration = Duration::from_secs(20);
const BODY: &[u8] = b"From: news@shop.test\r\nSubject: t\r\n\r\nx\r\n";

fn config() -> DeliveryConfig {
    let mut cfg = DeliveryConfig {
        helo_name: "petrel.test".into(),
        retry: RetrySchedule {
            first_retry_delay_ms: 200,
            retry_delay_ms_max: 400,
            multiplier: 2,
            jitter_percent: 10,
            age_max_ms: 60_000,
        },
        default_limits: DomainLimits {
            tls: TlsPolicy::Disabled,
            ..DomainLimits::default()
        },
        idle_timeout_ms: 200,
        tick_ms_max: 50,
        permit_retry_delay_ms: 50,
        ..DeliveryConfig::default()
    };
    cfg.client.connect_timeout_ms = 2_000;
    cfg.client.command_timeout_ms = 2_000;
    cfg.validate().expect("valid config");
    cfg
}

fn parts() -> AttributionParts {
    AttributionParts {
        tenant_id: Some("ten_reload".into()),
        credential_id: Some("cred_7".into()),
        from_domain: Some("shop.test".into()),
        rfc822_message_id: Some("20261206.abc@shop.test".into()),
        tags: vec!["welcome".into(), "batch-3".into()],
        metadata: Some("{\"user\":\"42\"}".into()),
    }
}

/// The attribution fields of an event line, as parts.
fn attribution_of(v: &serde_json::Value) -> AttributionParts {
    let s = |k: &str| v[k].as_str().map(String::from);
    AttributionParts {
        tenant_id: s("tenant_id"),
        credential_id: s("credential_id"),
        from_domain: s("from_domain"),
        rfc822_message_id: s("rfc822_message_id"),
        tags: v["tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        metadata: (!v["metadata"].is_null()).then(|| v["metadata"].to_string()),
    }
}

/// Every event line in `dir`: (recipient, outcome, attribution).
fn events(dir: &std::path::Path) -> Vec<(String, String, AttributionParts)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("events dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            out.push((
                v["recipient"].as_str().unwrap_or("").to_string(),
                v["outcome"].as_str().unwrap_or("").to_string(),
                attribution_of(&v),
            ));
        }
    }
    out
}

#[test]
fn a_deferred_messages_next_attempt_carries_the_same_attribution() {
    let dest = SmtpServer::start(Script::by_local_part());
    let other = SmtpServer::start(Script::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let (sink, writer) = EventSink::start(EventsConfig::new(dir.path())).expect("events");
    let setup = ShardSetup {
        events: sink,
        ..ShardSetup::new(config(), routes(dest.addr, other.addr))
    };
    let (done, spool) = run_shard(setup, |h| async move {
        let a = Arc::new(Attribution::from(parts()));
        // `temp*`: 450 at the first RCPT, 250 at the next.
        let msg = h
            .spool()
            .store_attributed("s@shop.test", &["temp1@dest.example"], BODY, Some(a));
        let id = msg.id;
        h.shard().enqueue(msg);
        h.await_spool(TEST_DEADLINE, |s| s.removed().contains(&id))
            .await
    });
    writer.shutdown().expect("events flushed");
    assert!(done, "delivered at the second attempt in time");
    assert!(
        spool.attribution_reads() >= 1,
        "the deferred message let go of its attribution and read it back"
    );
    let seen = events(dir.path());
    let outcomes: Vec<&str> = seen.iter().map(|(_, o, _)| o.as_str()).collect();
    assert_eq!(outcomes, ["deferred", "delivered"], "{seen:?}");
    for (rcpt, outcome, a) in &seen {
        assert_eq!(rcpt, "temp1@dest.example");
        assert_eq!(a, &parts(), "{outcome}");
    }
}

#[test]
fn a_recovered_message_reads_its_attribution_back_for_attempts_and_bounces() {
    let dest = SmtpServer::start(Script::by_local_part());
    let other = SmtpServer::start(Script::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let (sink, writer) = EventSink::start(EventsConfig::new(dir.path())).expect("events");
    let setup = ShardSetup {
        events: sink,
        ..ShardSetup::new(config(), routes(dest.addr, other.addr))
    };
    let (done, spool) = run_shard(setup, |h| async move {
        // Stored before a restart; recovery hands over the tenant alone.
        let a = Arc::new(Attribution::from(parts()));
        let stored = h.spool().store_attributed(
            "s@shop.test",
            &["temp2@dest.example", "defer1@dest.example"],
            BODY,
            Some(a),
        );
        let id = stored.id;
        drop(stored);
        let recovered = h.spool().recovered(id, "s@shop.test").expect("stored");
        assert!(recovered.attribution.for_events().is_none());
        assert_eq!(recovered.attribution.tenant_id(), Some("ten_reload"));
        h.shard().enqueue(recovered);
        // `temp2` goes at its second attempt, `defer1` never: the administrator bounces it
        // (an event without an attempt).
        let delivered = h
            .await_spool(TEST_DEADLINE, |s| {
                s.outcome(id, 0)
                    .is_some_and(|(state, _)| state == RcptState::Delivered)
            })
            .await;
        assert!(delivered, "temp2 delivered in time");
        // defer1 may be in the middle of an attempt: bounce until it is final (bounded).
        let deadline = std::time::Instant::now() + TEST_DEADLINE;
        while !h.spool().removed().contains(&id) && std::time::Instant::now() < deadline {
            h.shard().admin(AdminCommand::Bounce("dest.example".into()));
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
        h.spool().removed().contains(&id)
    });
    writer.shutdown().expect("events flushed");
    assert!(done, "every recipient final in time");
    assert!(spool.attribution_reads() >= 1);
    let seen = events(dir.path());
    for want in [
        ("temp2@dest.example", "deferred"),
        ("temp2@dest.example", "delivered"),
        ("defer1@dest.example", "deferred"),
        ("defer1@dest.example", "bounced"),
    ] {
        assert!(
            seen.iter()
                .any(|(r, o, _)| (r.as_str(), o.as_str()) == want),
            "{want:?} in {seen:?}"
        );
    }
    // The failure DSN to the sender is Petrel's, with no attribution of its own.
    for (rcpt, outcome, a) in seen.iter().filter(|(r, _, _)| r != "s@shop.test") {
        assert_eq!(a, &parts(), "{rcpt} {outcome}");
    }
}
