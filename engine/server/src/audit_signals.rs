//! What the engine tells the control plane's audit log (issue 16), through the durable event
//! backlog like every event, under types the control plane routes to the audit log instead of
//! the event table:
//!
//! - [`SMTP_AUTH_FAILED`]: failed SMTP AUTHs aggregated per client address and window (one
//!   event per address per `auth.failure_audit_window_secs`, with the count, the first and
//!   last time, a few of the usernames tried, and how many were refused by the lockout), so a
//!   password-guessing run is one audit row per address per window, not one per attempt and
//!   not none;
//! - [`QUEUE_ADMIN`]: each call of the queue admin endpoint that changes something or is
//!   refused (method, path, status, caller's address), besides the engine's own synced
//!   `admin-audit.jsonl`.
//!
//! Without a control plane there is no backlog: the failures are still counted (and logged),
//! the admin calls still land in `admin-audit.jsonl`.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use petrel_policy::event::{Event, EventType};

pub use petrel_policy::event::{QUEUE_ADMIN, SMTP_AUTH_FAILED};
/// Addresses kept apart per window; beyond it they count together (address `*`).
pub const AUTH_FAILURE_ADDRESSES_MAX: usize = 10_000;
/// Usernames remembered per address and window.
pub const AUTH_FAILURE_USERNAMES_MAX: usize = 5;
/// Longest username remembered, bytes (longer ones are cut at a character boundary).
pub const AUTH_FAILURE_USERNAME_MAX_BYTES: usize = 64;

#[derive(Debug, Clone)]
struct Window {
    failures: u64,
    locked_out: u64,
    first_unix_ms: i64,
    last_unix_ms: i64,
    usernames: BTreeSet<String>,
}

/// The failed SMTP AUTHs of the current window, per address (`None`: the overflow). Shared by
/// every shard.
#[derive(Debug, Default)]
pub struct AuthFailureLog {
    windows: Mutex<HashMap<Option<IpAddr>, Window>>,
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl AuthFailureLog {
    /// Counts one refused AUTH from `ip` (`locked_out`: refused by the lockout, unverified).
    pub fn note(&self, ip: IpAddr, username: &str, locked_out: bool, now_unix_ms: i64) {
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let key = if w.len() < AUTH_FAILURE_ADDRESSES_MAX || w.contains_key(&Some(ip)) {
            Some(ip)
        } else {
            None
        };
        let e = w.entry(key).or_insert(Window {
            failures: 0,
            locked_out: 0,
            first_unix_ms: now_unix_ms,
            last_unix_ms: now_unix_ms,
            usernames: BTreeSet::new(),
        });
        e.failures += 1;
        e.locked_out += u64::from(locked_out);
        e.last_unix_ms = now_unix_ms;
        if e.usernames.len() < AUTH_FAILURE_USERNAMES_MAX && !username.is_empty() {
            e.usernames
                .insert(cut(username, AUTH_FAILURE_USERNAME_MAX_BYTES).to_string());
        }
    }

    /// The window's events, and a fresh window.
    pub fn take(&self, nonce: &str, now_unix_ms: i64) -> Vec<Event> {
        let drained: Vec<_> = {
            let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            w.drain().collect()
        };
        drained
            .into_iter()
            .map(|(ip, w)| {
                let address = ip.map_or_else(|| "*".to_string(), |ip| ip.to_string());
                let details = serde_json::json!({
                    "address": address,
                    "failures": w.failures,
                    "locked_out": w.locked_out,
                    "first_unix_ms": w.first_unix_ms,
                    "last_unix_ms": w.last_unix_ms,
                    "usernames": w.usernames,
                });
                signal(
                    SMTP_AUTH_FAILED,
                    &format!("{nonce}-{address}-{}", w.first_unix_ms),
                    now_unix_ms,
                    details,
                )
            })
            .collect()
    }
}

/// One audit signal as an event (`details` carries its content).
pub fn signal(kind: &str, subject: &str, now_unix_ms: i64, details: serde_json::Value) -> Event {
    let kind = EventType::Other(kind.to_string());
    Event {
        details: details.as_object().cloned(),
        ..Event::bare(
            Event::stable_id("audit", subject, 0, 0, &kind),
            kind,
            now_unix_ms,
        )
    }
}

/// Appends `events` to the backlog as one batch and syncs it.
pub fn record(outbox: &petrel_policy::Outbox, events: &[Event]) {
    if events.is_empty() {
        return;
    }
    let json = match serde_json::to_vec(events) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "audit signals not encoded");
            return;
        }
    };
    let n = u32::try_from(events.len()).unwrap_or(u32::MAX);
    if let Err(e) = outbox.append(&json, n).and_then(|_| outbox.sync()) {
        tracing::error!(error = %e, "audit signals not recorded in the event backlog");
    }
}

/// A random id for this process, so signals of two runs never share an event id.
pub fn process_nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Every `window_secs`, the window's failed AUTHs go to the backlog (or, without one, to the
/// log).
pub async fn flush_task(
    log: Arc<AuthFailureLog>,
    outbox: Option<Arc<petrel_policy::Outbox>>,
    window_secs: u64,
) {
    let nonce = process_nonce();
    let mut tick = tokio::time::interval(Duration::from_secs(window_secs.max(1)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX);
        let events = log.take(&nonce, now);
        if events.is_empty() {
            continue;
        }
        match &outbox {
            Some(o) => {
                let o = Arc::clone(o);
                let _ = tokio::task::spawn_blocking(move || record(&o, &events)).await;
            }
            None => {
                for e in &events {
                    tracing::warn!(details = ?e.details, "failed SMTP AUTHs");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_aggregate_per_address_and_window() {
        let log = AuthFailureLog::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for (i, u) in ["alice", "bob", "alice", "x", "y", "z", "w"]
            .iter()
            .enumerate()
        {
            log.note(a, u, i == 6, 1_000 + i as i64);
        }
        log.note(b, &"é".repeat(40), false, 2_000);
        let mut events = log.take("n", 3_000);
        events.sort_by_key(|e| e.details.as_ref().unwrap()["address"].to_string());
        assert_eq!(events.len(), 2);
        let d = events[0].details.as_ref().unwrap();
        assert_eq!(d["address"], "192.0.2.1");
        assert_eq!(d["failures"], 7);
        assert_eq!(d["locked_out"], 1);
        assert_eq!(d["first_unix_ms"], 1_000);
        assert_eq!(d["last_unix_ms"], 1_006);
        assert_eq!(
            d["usernames"].as_array().unwrap().len(),
            AUTH_FAILURE_USERNAMES_MAX
        );
        let long = events[1].details.as_ref().unwrap()["usernames"][0]
            .as_str()
            .unwrap()
            .to_string();
        assert!(long.len() <= AUTH_FAILURE_USERNAME_MAX_BYTES);
        assert_eq!(events[0].kind.as_str(), SMTP_AUTH_FAILED);
        assert_ne!(events[0].id, events[1].id);
        events[0].validate().unwrap();
        assert!(log.take("n", 4_000).is_empty(), "a new window");
    }
}
