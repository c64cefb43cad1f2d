//! Customer webhooks: the delivery events of a tenant, pushed as signed HTTPS POSTs.
//!
//! - [`target`]: which URLs and addresses a webhook may reach (checked at creation and again at
//!   every connect, against DNS rebinding).
//! - [`sign`]: secrets and the `X-Petrel-Signature` header.
//! - [`client`]: the bounded HTTP client (no redirects, verified TLS).
//! - [`dispatch`]: the durable, at-least-once dispatcher (cursor over `events.seq`, pending
//!   delivery recorded before sending, retries with backoff, disabling after 24 h of failure).
//!
//! The store side is `store::webhooks`, the routes `api::webhooks`.

pub mod client;
pub mod dispatch;
pub mod sign;
pub mod target;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::dns::DnsChecker;
use crate::ControlError;

/// Events in one delivery at most.
pub const WEBHOOK_BATCH_EVENTS_MAX: i64 = 100;
/// Webhooks one tenant may have.
pub const WEBHOOKS_PER_TENANT_MAX: i64 = 25;
/// Event types one webhook may subscribe to.
pub const WEBHOOK_EVENT_TYPES_MAX: usize = 32;
/// The first retry's delay, ms; each further retry doubles it.
pub const RETRY_BACKOFF_FIRST_MS: i64 = 5_000;
/// The longest delay between two attempts, ms (1 h).
pub const RETRY_BACKOFF_MAX_MS: i64 = 3_600_000;
/// A webhook failing continuously this long is disabled, ms (24 h). Retries go on until then.
pub const DISABLE_AFTER_FAILING_MS: i64 = 24 * 3_600_000;
/// How long a rotated-out secret stays valid (both signatures are sent meanwhile), ms (24 h).
pub const SECRET_OVERLAP_MS: i64 = 24 * 3_600_000;
/// The dispatcher's fallback poll, ms (ingest on this node wakes it at once; this catches
/// events ingested by other nodes and retries coming due).
pub const DISPATCH_POLL_MS: u64 = 500;
/// How long a node's claim on one webhook lasts, ms (longer than one request's time limit, so a
/// live node never loses it mid-request; a crashed node's claim lapses after it).
pub const DISPATCH_LEASE_MS: i64 = 60_000;
/// Webhooks dispatched at once by one node.
pub const DISPATCH_CONCURRENCY_MAX: usize = 16;
/// Due webhooks read per dispatcher pass.
pub const DISPATCH_DUE_PER_PASS_MAX: i64 = 256;
/// How long finished deliveries stay in the history, ms (30 days; pending ones stay until
/// acknowledged).
pub const DELIVERY_HISTORY_RETENTION_MS: i64 = 30 * 24 * 3_600_000;
/// How often the dispatcher purges the history, ms.
pub const DELIVERY_HISTORY_PURGE_INTERVAL_MS: u64 = 600_000;
/// Deliveries deleted per purge transaction.
pub const DELIVERY_HISTORY_PURGE_CHUNK: i64 = 1_000;

/// Rounds one webhook runs in a row before yielding to the next pass.
pub const DISPATCH_ROUNDS_PER_RUN_MAX: usize = 50;
/// Deliveries of one webhook in flight at once (one round: 800 events at most). One at a
/// time capped a webhook at one batch per round trip plus two store commits (measured: about
/// 1,000 events/s under a steady ingest on the 2-core bench machine); several in flight make
/// the order between deliveries loose (each delivery is in order), which docs/webhooks.md says.
pub const DISPATCH_WINDOW_DELIVERIES: usize = 8;

/// The webhook machinery a control plane node runs.
pub struct Webhooks {
    pub client: client::Client,
    /// Woken after each ingest commit (and by tests after moving the clock).
    pub wake: Arc<Notify>,
    /// This node's lease owner name.
    node: String,
    /// Webhooks this node is dispatching now.
    in_flight: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    pub fn new(
        dns: DnsChecker,
        allow_loopback: bool,
        ca_file: Option<&Path>,
    ) -> Result<Webhooks, ControlError> {
        Ok(Webhooks {
            client: client::Client::new(dns, allow_loopback, ca_file)?,
            wake: Arc::new(Notify::new()),
            node: format!("node_{}", hex::encode(rand::random::<[u8; 8]>())),
            in_flight: Mutex::new(HashSet::new()),
        })
    }

    /// Wakes the dispatcher (new events, a re-enabled webhook, a moved test clock).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// The delay before retry number `failures` + 1 after `failures` consecutive failures (>= 1):
/// [`RETRY_BACKOFF_FIRST_MS`] doubling, capped at [`RETRY_BACKOFF_MAX_MS`].
pub fn backoff_ms(failures: i64) -> i64 {
    let shift = u32::try_from(failures.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    RETRY_BACKOFF_FIRST_MS
        .saturating_mul(1_i64 << shift)
        .min(RETRY_BACKOFF_MAX_MS)
}

/// True for a token an event type may be: 1 to 32 bytes of `[a-z0-9_.-]`, starting with a letter.
pub fn is_event_type_token(t: &str) -> bool {
    (1..=petrel_policy::event::EVENT_TYPE_MAX_BYTES.min(32)).contains(&t.len())
        && t.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && t.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped_and_retries_last_a_day() {
        assert_eq!(backoff_ms(1), 5_000);
        assert_eq!(backoff_ms(2), 10_000);
        assert_eq!(backoff_ms(10), 2_560_000);
        assert_eq!(backoff_ms(11), RETRY_BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(i64::MAX), RETRY_BACKOFF_MAX_MS);
        // Retries go on until the webhook is disabled: at least 24 h of them.
        let mut t = 0;
        let mut n = 0;
        while t < DISABLE_AFTER_FAILING_MS {
            n += 1;
            t += backoff_ms(n);
        }
        assert!(n > 20, "{n} attempts in a day");
    }

    #[test]
    fn event_type_tokens() {
        for ok in ["delivered", "suppressed", "list.unsubscribed", "a1_b-c"] {
            assert!(is_event_type_token(ok), "{ok}");
        }
        for bad in ["", "Delivered", "1x", "a b", "x;y", &"a".repeat(33)] {
            assert!(!is_event_type_token(bad), "{bad}");
        }
    }
}
