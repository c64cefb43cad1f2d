//! Audit rows from what happens outside the admin API's mutations (issue 16):
//!
//! - the engines' signals, which arrive as events of the types in
//!   `petrel_policy::event::{SMTP_AUTH_FAILED, QUEUE_ADMIN}` and become audit rows
//!   (`smtp.auth_failed`: an address's failed SMTP AUTHs in one window, aggregated on the
//!   engine; `engine.queue_admin`: a queue admin call that changed something or was refused)
//!   instead of events;
//! - aggregated rows ([`Aggregates`]), one per key per window (`auth_failure_audit_window_secs`,
//!   flushed with the API's failed authentications): bulk reads of event and message data
//!   (`events.read`: who read how many events of which tenant, in how many requests), and
//!   sends the guardrails or an operator blocked (`send.blocked`: per tenant, the count per
//!   kind, from the engines' `rejected` events).
//!
//! Aggregates live in memory until their window ends: a node that stops loses at most one
//! window of them (as with `auth_failures.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use petrel_policy::event::{QUEUE_ADMIN, SMTP_AUTH_FAILED};
use petrel_policy::{Event, EventType, PolicyDenial};

use crate::api::App;
use crate::audit::AuditEntry;
use crate::store::StoreError;

/// Keys kept apart per window; beyond it they count together (actor `*`).
pub const AGGREGATE_KEYS_MAX: usize = 10_000;
/// The audit action of bulk reads of event data.
pub const EVENTS_READ_ACTION: &str = "events.read";
/// The audit action of blocked sends.
pub const SEND_BLOCKED_ACTION: &str = "send.blocked";

/// What one aggregated row is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregateKey {
    pub action: &'static str,
    pub tenant_id: Option<String>,
    pub actor: String,
    pub remote_addr: String,
    pub target: String,
}

#[derive(Debug, Clone)]
struct Aggregate {
    requests: u64,
    items: u64,
    first_unix_ms: i64,
    last_unix_ms: i64,
    kinds: BTreeMap<String, u64>,
}

/// The current window's aggregates.
#[derive(Debug, Default)]
pub struct Aggregates {
    map: Mutex<HashMap<AggregateKey, Aggregate>>,
}

impl Aggregates {
    /// Counts one occurrence of `key` covering `items` (events read, sends blocked) of `kind`.
    pub fn note(&self, mut key: AggregateKey, items: u64, kind: &str, now_unix_ms: i64) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= AGGREGATE_KEYS_MAX && !m.contains_key(&key) {
            key.actor = "*".into();
            key.remote_addr = "*".into();
        }
        let a = m.entry(key).or_insert(Aggregate {
            requests: 0,
            items: 0,
            first_unix_ms: now_unix_ms,
            last_unix_ms: now_unix_ms,
            kinds: BTreeMap::new(),
        });
        a.requests += 1;
        a.items += items;
        a.last_unix_ms = now_unix_ms;
        *a.kinds.entry(kind.to_string()).or_default() += items.max(1);
    }

    fn take(&self) -> Vec<(AggregateKey, Aggregate)> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = m.drain().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Appends one row per aggregate of the window that ended; returns how many were recorded. A
/// row that fails is logged and the others still go in. A row about a tenant that does not
/// exist (deleted, or an id an owner made up) is the operator's, the id as its target: no key
/// is ever made for a tenant from a read.
pub async fn flush(app: &App, window_secs: u64) -> Result<usize, StoreError> {
    let all = app.aggregates.take();
    let mut recorded = 0;
    for (k, a) in &all {
        match record(app, k, a, window_secs).await {
            Ok(()) => recorded += 1,
            Err(e) => {
                tracing::error!(error = %e, action = k.action, "an aggregated audit row was not recorded")
            }
        }
    }
    Ok(recorded)
}

async fn record(
    app: &App,
    k: &AggregateKey,
    a: &Aggregate,
    window_secs: u64,
) -> Result<(), StoreError> {
    let tenant_id = match &k.tenant_id {
        Some(t) if crate::store::tenants::exists(&mut *app.db.conn().await?, t).await? => {
            Some(t.clone())
        }
        _ => None,
    };
    let m = app.db.begin_data_mutation().await?;
    m.commit(AuditEntry {
        tenant_id,
        actor: k.actor.clone(),
        remote_addr: k.remote_addr.clone(),
        action: k.action.into(),
        target: k.target.clone(),
        at_unix_ms: app.now_ms(),
        before: None,
        after: Some(serde_json::json!({
            "requests": a.requests,
            "items": a.items,
            "kinds": a.kinds,
            "first_unix_ms": a.first_unix_ms,
            "last_unix_ms": a.last_unix_ms,
            "window_secs": window_secs,
        })),
    })
    .await?;
    Ok(())
}

/// True for an engine's audit signal (stored as an audit row, not an event).
pub fn is_signal(e: &Event) -> bool {
    matches!(&e.kind, EventType::Other(k) if k == SMTP_AUTH_FAILED || k == QUEUE_ADMIN)
}

/// The audit row an engine's signal event stands for (None: an ordinary event).
pub fn signal_entry(engine_id: &str, e: &Event) -> Option<AuditEntry> {
    let EventType::Other(kind) = &e.kind else {
        return None;
    };
    let details = e.details.clone().unwrap_or_default();
    let text = |k: &str| {
        details
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (action, remote_addr, target) = match kind.as_str() {
        SMTP_AUTH_FAILED => ("smtp.auth_failed", text("address"), text("address")),
        QUEUE_ADMIN => ("engine.queue_admin", text("peer"), text("path")),
        _ => return None,
    };
    Some(AuditEntry {
        tenant_id: None,
        actor: format!("engine:{engine_id}"),
        remote_addr,
        action: action.into(),
        target,
        at_unix_ms: e.timestamp_ms,
        before: None,
        after: Some(serde_json::Value::Object(details)),
    })
}

/// Counts the blocked sends among ingested events (`send.blocked` aggregates).
pub fn note_blocked(app: &App, engine_id: &str, events: &[std::borrow::Cow<'_, Event>]) {
    for e in events {
        if e.kind != EventType::Rejected {
            continue;
        }
        let (Some(tenant), Some(reply)) = (&e.tenant_id, &e.reply) else {
            continue;
        };
        if let Some(kind) = PolicyDenial::blocked_kind(&reply.text) {
            app.aggregates.note(
                AggregateKey {
                    action: SEND_BLOCKED_ACTION,
                    tenant_id: Some(tenant.clone()),
                    actor: format!("engine:{engine_id}"),
                    remote_addr: String::new(),
                    target: tenant.clone(),
                },
                1,
                kind,
                e.timestamp_ms,
            );
        }
    }
}
