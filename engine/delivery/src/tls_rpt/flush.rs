//! The shards' TLS-RPT counts to the durable event backlog, once a minute.
//!
//! [`rows_to_events`] is pure: rows in, events of type [`TLS_RPT_EVENT`] out, each carrying as
//! many rows as fit its `details` (`petrel_policy::event::DETAILS_MAX_BYTES`), with a stable id
//! made of the process's nonce, the flush's number and the event's index, so a batch the link
//! sends again is recognised by the control plane. [`TlsRptFlusher`] is the thread that runs it
//! every [`super::TLS_RPT_FLUSH_INTERVAL_MS`] and once more when it is stopped.
//!
//! A row's JSON (the control plane's `tls_rpt` ingest reads it):
//! `{"day": <days since the epoch>, "domain", "policy_type", "policy_strings": [..],
//! "mx_patterns": [..], "mx_host", "ip" (or null), "success": n, "failures": {"<type>": n}}`.

use std::sync::Arc;

use petrel_policy::event::{DETAILS_MAX_BYTES, EVENTS_BATCH_MAX_BYTES, EVENTS_PER_BATCH_MAX};
use petrel_policy::{Event, EventType, Outbox};
use serde_json::{json, Map, Value};

use super::{Row, TlsRptRecorder};
use crate::periodic::Periodic;

/// The event type of TLS-RPT counts (`petrel_policy::event::TLS_RPT_COUNTS`).
pub const TLS_RPT_EVENT: &str = petrel_policy::event::TLS_RPT_COUNTS;
/// Bytes of one event's `details` the rows may fill (the rest is the envelope's).
const DETAILS_ROWS_BYTES_MAX: usize = DETAILS_MAX_BYTES - 128;
/// A row's policy strings and MX patterns are cut to this many bytes together, so every row
/// fits an event (an MTA-STS policy may be 64 KiB; real ones are a few hundred bytes).
pub const TLS_RPT_POLICY_BYTES_MAX: usize = 2_048;

fn row_json(row: &Row) -> Value {
    let mut budget = TLS_RPT_POLICY_BYTES_MAX;
    let mut keep = |v: &[String]| -> Vec<String> {
        let mut out = Vec::new();
        for s in v {
            if s.len() + 4 > budget {
                break;
            }
            budget -= s.len() + 4;
            out.push(s.clone());
        }
        out
    };
    let strings = keep(&row.policy.strings);
    let patterns = keep(&row.policy.mx_patterns);
    let failures: Map<String, Value> = row
        .failures()
        .map(|(t, n)| (t.as_str().to_string(), json!(n)))
        .collect();
    json!({
        "day": row.day,
        "domain": row.policy.domain,
        "policy_type": row.policy.policy_type.as_str(),
        "policy_strings": strings,
        "mx_patterns": patterns,
        "mx_host": row.mx_host,
        "ip": row.ip.map(|ip| ip.to_string()),
        "success": row.successes,
        "failures": failures,
    })
}

/// The rows as events (see the module docs); `overflow` rides in the first one.
pub fn rows_to_events(
    rows: &[Row],
    overflow: u64,
    nonce: &str,
    flush_seq: u64,
    now_unix_ms: i64,
) -> Vec<Event> {
    let kind = EventType::Other(TLS_RPT_EVENT.to_string());
    let subject = format!("{nonce}-{flush_seq}");
    let mut events = Vec::new();
    let mut current: Vec<Value> = Vec::new();
    let mut bytes = 0;
    let close = |current: &mut Vec<Value>, events: &mut Vec<Event>| {
        if current.is_empty() && !(events.is_empty() && overflow > 0) {
            return;
        }
        let index = u32::try_from(events.len()).unwrap_or(u32::MAX);
        let mut details = Map::new();
        details.insert("rows".into(), Value::Array(std::mem::take(current)));
        if events.is_empty() && overflow > 0 {
            details.insert("overflow".into(), json!(overflow));
        }
        events.push(Event {
            details: Some(details),
            ..Event::bare(
                Event::stable_id("tls_rpt", &subject, index, 0, &kind),
                kind.clone(),
                now_unix_ms,
            )
        });
    };
    for row in rows {
        let v = row_json(row);
        let len = v.to_string().len() + 1;
        if bytes + len > DETAILS_ROWS_BYTES_MAX {
            close(&mut current, &mut events);
            bytes = 0;
        }
        bytes += len;
        current.push(v);
    }
    close(&mut current, &mut events);
    events
}

/// The thread that moves the shards' counts to the backlog.
#[derive(Debug)]
pub struct TlsRptFlusher(Periodic);

impl TlsRptFlusher {
    /// Starts the thread over the shards' recorders. Without a backlog (no control plane) the
    /// counts are only logged at debug level: the metric still counts the sessions.
    pub fn start(
        recorders: Vec<TlsRptRecorder>,
        outbox: Option<Arc<Outbox>>,
        interval_ms: u64,
    ) -> std::io::Result<TlsRptFlusher> {
        let nonce = format!("{:016x}", rand::random::<u64>());
        let mut seq = 0u64;
        Periodic::start("petrel-tls-rpt", interval_ms, move || {
            seq += 1;
            flush(&recorders, outbox.as_deref(), &nonce, seq);
        })
        .map(TlsRptFlusher)
    }

    /// Flushes once more and joins the thread.
    pub fn stop(&mut self) {
        self.0.stop();
    }
}

/// Takes every recorder's counts and appends them to the backlog (synced).
fn flush(recorders: &[TlsRptRecorder], outbox: Option<&Outbox>, nonce: &str, seq: u64) {
    let mut rows = Vec::new();
    let mut overflow = 0;
    for r in recorders {
        let (mut more, over) = r.take().into_rows();
        rows.append(&mut more);
        overflow += over;
    }
    if rows.is_empty() && overflow == 0 {
        return;
    }
    let now = i64::try_from(crate::shard::now_unix_ms()).unwrap_or(i64::MAX);
    let events = rows_to_events(&rows, overflow, nonce, seq, now);
    let Some(outbox) = outbox else {
        tracing::debug!(
            rows = rows.len(),
            overflow,
            "TLS-RPT counts (no control plane)"
        );
        return;
    };
    for chunk in events.chunks(EVENTS_PER_BATCH_MAX) {
        let json = match serde_json::to_vec(chunk) {
            Ok(j) if j.len() <= EVENTS_BATCH_MAX_BYTES => j,
            Ok(_) | Err(_) => {
                tracing::error!("TLS-RPT counts not encoded within a batch");
                continue;
            }
        };
        let n = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
        if let Err(e) = outbox.append(&json, n).and_then(|_| outbox.sync()) {
            tracing::error!(error = %e, "TLS-RPT counts not recorded in the event backlog");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Counts, FailureType, SessionPolicy, SessionResult};
    use super::*;

    #[test]
    fn rows_become_valid_events_within_the_details_bound() {
        let long: Vec<String> = (0..400).map(|i| format!("mx: host{i}.a.test")).collect();
        let big = SessionPolicy::new("a.test", super::super::PolicyType::Sts, long.clone(), long);
        let small = SessionPolicy::none_found("b.test");
        let mut c = Counts::default();
        for i in 0..50 {
            let mx = format!("mx{i}.b.test");
            c.record(
                0,
                &small,
                &mx,
                Some("192.0.2.7".parse().unwrap()),
                SessionResult::Success,
            );
        }
        c.record(
            0,
            &big,
            "mx.a.test",
            None,
            SessionResult::Failure(FailureType::CertificateExpired),
        );
        let (rows, _) = c.into_rows();
        let events = rows_to_events(&rows, 3, "n", 1, 1_000);
        assert!(events.len() > 1, "split over several events");
        petrel_policy::event::validate_batch(&events).expect("a valid batch");
        let mut seen = 0;
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.kind.as_str(), TLS_RPT_EVENT);
            let d = e.details.as_ref().expect("details");
            assert_eq!(d.get("overflow").is_some(), i == 0);
            seen += d["rows"].as_array().expect("rows").len();
        }
        assert_eq!(seen, 51);
        let again = rows_to_events(&rows, 3, "n", 1, 2_000);
        let ids = |v: &[Event]| v.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&events), ids(&again), "the same flush, the same ids");
        assert_ne!(ids(&events), ids(&rows_to_events(&rows, 3, "n", 2, 1_000)));
    }

    #[test]
    fn a_row_names_its_policy_and_counts() {
        let p = SessionPolicy::none_found("b.test");
        let mut c = Counts::default();
        let t = 20_000 * 86_400_000;
        c.record(
            t,
            &p,
            "mx.b.test",
            Some("192.0.2.7".parse().unwrap()),
            SessionResult::Success,
        );
        c.record(
            t,
            &p,
            "mx.b.test",
            Some("192.0.2.7".parse().unwrap()),
            SessionResult::Failure(FailureType::StarttlsNotSupported),
        );
        let (rows, _) = c.into_rows();
        let v = row_json(&rows[0]);
        assert_eq!(
            v,
            json!({"day": 20_000, "domain": "b.test", "policy_type": "no-policy-found",
                "policy_strings": [], "mx_patterns": [], "mx_host": "mx.b.test",
                "ip": "192.0.2.7", "success": 1, "failures": {"starttls-not-supported": 1}})
        );
    }
}
