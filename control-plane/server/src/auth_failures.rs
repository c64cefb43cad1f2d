//! Failed admin API authentications, aggregated per client address and window into the audit
//! log (issue 16): a key-guessing run is one row per address per window (`api.auth_failed`:
//! failures, first and last time, reasons), not one per request and not none. Missing keys are
//! not counted (they are not guesses), as in the throttle.
//!
//! Each node aggregates its own requests in memory and appends its rows every
//! `auth_failure_audit_window_secs` (60); at most [`AUTH_FAILURE_ADDRESSES_MAX`] addresses per
//! window are kept apart, the rest are counted together under the address `*`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use crate::api::App;
use crate::audit::AuditEntry;
use crate::store::StoreError;

/// Default seconds per aggregation window.
pub const AUTH_FAILURE_AUDIT_WINDOW_SECS_DEFAULT: u64 = 60;
/// Addresses kept apart per window; beyond it they count under `*`.
pub const AUTH_FAILURE_ADDRESSES_MAX: usize = 10_000;
/// The audit action of a window's row.
pub const AUTH_FAILED_ACTION: &str = "api.auth_failed";

#[derive(Debug, Clone)]
struct Window {
    failures: u64,
    first_unix_ms: i64,
    last_unix_ms: i64,
    reasons: BTreeMap<&'static str, u64>,
}

/// The failures of the current window, per address (`None`: the overflow).
#[derive(Debug, Default)]
pub struct AuthFailures {
    windows: Mutex<HashMap<Option<IpAddr>, Window>>,
}

impl AuthFailures {
    /// Counts one failed authentication from `ip`.
    pub fn note(&self, ip: IpAddr, now_unix_ms: i64, reason: &'static str) {
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let key = if w.len() < AUTH_FAILURE_ADDRESSES_MAX || w.contains_key(&Some(ip)) {
            Some(ip)
        } else {
            None
        };
        let e = w.entry(key).or_insert(Window {
            failures: 0,
            first_unix_ms: now_unix_ms,
            last_unix_ms: now_unix_ms,
            reasons: BTreeMap::new(),
        });
        e.failures += 1;
        e.last_unix_ms = now_unix_ms;
        *e.reasons.entry(reason).or_default() += 1;
    }

    fn take(&self) -> Vec<(Option<IpAddr>, Window)> {
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = w.drain().collect();
        out.sort_by_key(|(ip, _)| *ip);
        out
    }
}

/// Appends one row per address of the window that ended; returns how many.
pub async fn flush(app: &App, window_secs: u64) -> Result<usize, StoreError> {
    let windows = app.auth_failures.take();
    for (ip, w) in &windows {
        let address = ip.map_or_else(|| "*".to_string(), |ip| ip.to_string());
        let m = app.db.begin_data_mutation().await?;
        m.commit(AuditEntry {
            tenant_id: None,
            actor: "system:api-auth".into(),
            remote_addr: address.clone(),
            action: AUTH_FAILED_ACTION.into(),
            target: address,
            at_unix_ms: app.now_ms(),
            before: None,
            after: Some(serde_json::json!({
                "failures": w.failures,
                "first_unix_ms": w.first_unix_ms,
                "last_unix_ms": w.last_unix_ms,
                "window_secs": window_secs,
                "reasons": w.reasons,
            })),
        })
        .await?;
    }
    Ok(windows.len())
}

/// Flushes at the end of each window.
pub async fn task(app: App, window_secs: u64) {
    let window_secs = window_secs.max(1);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(window_secs));
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = flush(&app, window_secs).await {
            tracing::error!(error = %e, "could not record failed API authentications");
        }
        if let Err(e) = crate::audit_signals::flush(&app, window_secs).await {
            tracing::error!(error = %e, "could not record bulk reads and blocked sends");
        }
    }
}
