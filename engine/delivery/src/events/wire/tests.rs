use super::*;
use crate::events::tests::event;

fn outbox(name: &str) -> (Arc<Outbox>, std::path::PathBuf) {
    let d = std::env::temp_dir().join(format!("petrel-wire-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    (Arc::new(Outbox::open(&d, u64::MAX, 1).expect("outbox")), d)
}

fn written(o: &Outbox) -> Vec<Vec<petrel_policy::Event>> {
    o.unsent_after(0, usize::MAX)
        .expect("read")
        .iter()
        .map(|b| {
            let events: Vec<petrel_policy::Event> =
                serde_json::from_slice(&b.json).expect("a JSON array of events");
            assert_eq!(events.len() as u32, b.events, "the record's count");
            events
        })
        .collect()
}

#[test]
fn every_outcome_becomes_a_valid_control_plane_event_with_a_stable_id() {
    let (o, d) = outbox("kinds");
    let mut w = WireWriter::new(Some(o.clone()), "engine-7".into());
    let mut all = Vec::new();
    for (i, outcome) in [
        Outcome::Accepted,
        Outcome::Delivered,
        Outcome::Deferred,
        Outcome::Bounced,
        Outcome::Expired,
        Outcome::Rejected,
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = event(i as u32);
        e.outcome = outcome;
        e.tls = Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into());
        match outcome {
            Outcome::Deferred => {
                e.reply = None;
                e.reason = Some("connection refused".into());
                e.bounce = Some(petrel_bounce::Classification {
                    category: petrel_bounce::Category::RoutingError,
                    class: petrel_bounce::BounceClass::Soft,
                });
            }
            Outcome::Bounced => {
                e.reply = Some("550 5.1.1 <x@dest.example>: user unknown".into());
                e.bounce = Some(petrel_bounce::Classification {
                    category: petrel_bounce::Category::InvalidRecipient,
                    class: petrel_bounce::BounceClass::Hard,
                });
            }
            Outcome::Rejected => {
                e.message_id = None;
                e.session_id = Some("00000000000000aa".into());
                e.reply = Some("550 5.7.1 Relay access denied".into());
                e.host = None;
                e.address = None;
                e.tls = None;
            }
            _ => {}
        }
        w.push(&e);
        all.push(e);
    }
    w.commit();
    let batches = written(&o);
    assert_eq!(batches.len(), 1);
    let got = &batches[0];
    petrel_policy::event::validate_batch(got).expect("valid for the control plane");
    assert_eq!(got.len(), 6);
    for (e, g) in all.iter().zip(got) {
        assert_eq!(g.id, event_id("engine-7", e), "stable id");
        assert_eq!(g.kind.as_str(), e.outcome.as_str());
        assert_eq!(g.tenant_id.as_deref(), Some("tenant-a"));
        assert_eq!(g.sender, "sender@src.example");
        assert_eq!(g.recipient.as_deref(), Some(e.recipient.as_str()));
        let i = e.timestamp_unix_ms - 1_700_000_000_000;
        assert_eq!(
            g.metadata
                .as_ref()
                .and_then(|m| m.get("i"))
                .and_then(|v| v.as_u64()),
            Some(i),
            "metadata is the JSON object"
        );
        assert_eq!(g.tags, vec![format!("t{}", i % 3)]);
    }
    let delivered = &got[1];
    assert_eq!(delivered.message_id.as_deref(), Some("0000000000000001"));
    let remote = delivered.remote.as_ref().expect("remote");
    assert_eq!(remote.mx_host.as_deref(), Some("mx.dest.example"));
    assert_eq!(remote.tls_version.as_deref(), Some("TLSv1.3"));
    assert_eq!(
        remote.tls_cipher.as_deref(),
        Some("TLS13_AES_256_GCM_SHA384")
    );
    let reply = delivered.reply.as_ref().expect("reply");
    assert_eq!(
        (
            reply.code,
            reply.enhanced_code.as_deref(),
            reply.text.as_str()
        ),
        (250, Some("2.0.0"), "ok")
    );
    let deferred = &got[2];
    let reply = deferred.reply.as_ref().expect("local reply");
    assert_eq!(
        (reply.code, reply.text.as_str()),
        (451, "connection refused")
    );
    assert_eq!(
        deferred.bounce.as_ref().map(|b| b.category.as_str()),
        Some("routing_error")
    );
    let bounced = &got[3];
    assert_eq!(
        bounced.bounce.as_ref().map(|b| b.class.as_str()),
        Some("hard")
    );
    assert_eq!(
        bounced
            .reply
            .as_ref()
            .and_then(|r| r.enhanced_code.as_deref()),
        Some("5.1.1")
    );
    let rejected = &got[5];
    assert!(rejected.message_id.is_none());
    assert!(rejected.remote.is_none());
    assert_eq!(rejected.reply.as_ref().map(|r| r.code), Some(550));
    // The same outcome always has the same id; another attempt or type does not.
    let mut again = all[2].clone();
    assert_eq!(event_id("engine-7", &again), got[2].id);
    again.attempt += 1;
    assert_ne!(event_id("engine-7", &again), got[2].id);
    assert_ne!(event_id("engine-8", &all[2]), got[2].id);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn oversized_fields_are_clipped_and_batches_split_at_the_bounds() {
    let (o, d) = outbox("bounds");
    let mut w = WireWriter::new(Some(o.clone()), "e".into());
    let n = EVENTS_PER_BATCH_MAX + 10;
    for i in 0..n {
        let mut e = event(i as u32);
        e.rcpt_index = i as u32;
        e.recipient = format!("{}@dest.example", "r".repeat(400));
        e.reply = Some(format!("250 2.0.0 {}", "é".repeat(2000)));
        w.push(&e);
        w.push(&e); // the same outcome twice in one batch is written once
    }
    w.commit();
    let batches = written(&o);
    assert_eq!(
        batches.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![EVENTS_PER_BATCH_MAX, 10]
    );
    for b in &batches {
        petrel_policy::event::validate_batch(b).expect("within every bound");
    }
    let e = &batches[0][0];
    assert_eq!(
        e.recipient.as_deref().map(str::len),
        Some(ADDRESS_MAX_BYTES)
    );
    assert!(e
        .reply
        .as_ref()
        .is_some_and(|r| r.text.len() <= REPLY_TEXT_MAX_BYTES));
    // Large events close a batch by bytes before the count.
    let mut w = WireWriter::new(Some(o.clone()), "e2".into());
    for i in 0..3_000u32 {
        let mut e = event(i);
        e.rcpt_index = i;
        e.reply = Some(format!("550 5.0.0 {}", "x".repeat(1_500)));
        w.push(&e);
    }
    w.commit();
    let later: Vec<usize> = written(&o).iter().skip(2).map(Vec::len).collect();
    assert!(later.len() >= 2, "split by bytes: {later:?}");
    assert_eq!(later.iter().sum::<usize>(), 3_000);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn reply_lines_are_parsed() {
    assert_eq!(
        parse_reply("250 2.0.0 Ok: queued"),
        Some((250, Some("2.0.0"), "Ok: queued"))
    );
    assert_eq!(
        parse_reply("421-4.7.0 try later"),
        Some((421, Some("4.7.0"), "try later"))
    );
    assert_eq!(
        parse_reply("550 no such user"),
        Some((550, None, "no such user"))
    );
    assert_eq!(parse_reply("550 5.1 short"), Some((550, None, "5.1 short")));
    assert_eq!(parse_reply("999 x"), None);
    assert_eq!(parse_reply("ok"), None);
    assert_eq!(clip("aé", 2), "a");
}

#[test]
fn details_are_carried_and_an_oversized_object_is_left_out() {
    let (o, d) = outbox("details");
    let mut w = WireWriter::new(Some(o.clone()), "engine-7".into());
    let mut refused = event(1);
    refused.outcome = Outcome::Rejected;
    refused.reply = Some("550 5.7.26 dmarc check failed for a.test: missing".into());
    let mut details = serde_json::Map::new();
    details.insert("check".into(), "dmarc".into());
    details.insert("domain".into(), "a.test".into());
    refused.details = Some(details);
    let mut huge = event(2);
    let mut big = serde_json::Map::new();
    big.insert("x".into(), "y".repeat(DETAILS_MAX_BYTES).into());
    huge.details = Some(big);
    w.push(&refused);
    w.push(&huge);
    w.commit();
    let got = written(&o).concat();
    petrel_policy::event::validate_batch(&got).expect("valid for the control plane");
    let carried = got[0].details.as_ref().expect("details carried");
    assert_eq!(carried.get("check").and_then(|v| v.as_str()), Some("dmarc"));
    assert_eq!(got[0].reply.as_ref().map(|r| r.code), Some(550));
    assert!(got[1].details.is_none(), "too large: left out, event kept");
    let _ = std::fs::remove_dir_all(&d);
}
