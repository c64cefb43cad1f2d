//! Petrel's outbound delivery: per-destination queues, global limits, retries, DSNs and events.
//!
//! # What this crate owns
//!
//! Every recipient of an accepted message is routed to the queue of its destination domain on the
//! shard that accepted the message. The body and the envelope stay in the spool (one body for
//! all recipients); in memory a queued recipient is a 24-byte [`queue::Entry`] plus a small
//! per-message record (sender, arrival time and the recipient addresses, which the driver needs
//! to talk SMTP). When the last recipient of a message is final (delivered, bounced or expired)
//! the message is removed from the spool.
//!
//! The crate is split into pure cores and one adapter:
//!
//! * [`queue`]: per-domain schedule (a min-heap by due time) plus a bounded ready set, with
//!   suspend/resume, retry-now, bounce-all and statistics. No I/O, no glommio.
//! * [`backoff`]: the retry schedule (exponential with jitter) and the maximum age.
//! * [`limits`]: [`GlobalLimits`], the cross-shard connection and rate registry (atomics only).
//! * [`dsn`]: RFC 3464 delivery status notifications, built from values passed in (time too).
//! * [`events`]: JSON-lines delivery records, written by a thread off the shards.
//! * [`classify`]: the bounce classification (`petrel-bounce`) of replies and of the outbound
//!   client's and resolver's errors, carried by `deferred`, `bounced` and `expired` events.
//! * [`egress`]: the sources mail leaves from (local address, EHLO name, warm-up), the weighted
//!   pools tenants are mapped to, and the daily counts warm-up caps are checked against.
//! * [`return_path`]: the envelope sender of an attempt: the client's, or one VERP return path
//!   per recipient of a tenant's message (then one transaction per recipient).
//! * [`shaping`]: per-site limits by provider (MX patterns) and the throttle rules that answer
//!   a provider's "slow down" replies, from the shipped `shaping.toml` and the operator's file;
//!   each site's throttle state and its engine-wide per-minute and per-hour rates.
//! * [`shard`]: [`DeliveryShard`], the glommio driver that ties them to the spool
//!   ([`SpoolAccess`]), the resolver and the SMTP client of `petrel-outbound`.
//!
//! # Trade-offs
//!
//! A message never leaves the shard that spooled it: its queues, retries and DSNs are all local,
//! so no cross-shard hand-off is needed and recovery is per shard. The price is that limits per
//! destination must be shared between shards; [`limits`] argues why atomics beat an owner shard
//! per domain. Backoff is per recipient (not per message), so one greylisting domain never
//! holds back the other recipients of the same message. The DSN for a null sender or for a DSN
//! is never generated, and DSNs are sent with the null sender, so bounces never loop.
//!
//! # Wiring (what the engine does)
//!
//! ```text
//! let limits = Arc::new(GlobalLimits::default());                 // one per engine
//! let (events, writer) = EventSink::start(EventsConfig::new(data.join("events")))?;
//! // on each shard's executor:
//! let mta_sts = MtaSts::start(MtaStsConfig::default().with_resolver(&resolver_cfg)).ok(); // optional
//! let delivery = Rc::new(DeliveryShard::new(shard, cfg.clone(), resolver.clone(), mta_sts.clone(),
//!                                           limits.clone(), spool_adapter, events.clone()));
//! glommio::spawn_local({ let d = delivery.clone(); async move { d.run().await } }).detach();
//! delivery.enqueue(queued_message);    // after each accepted message, and for each recovered one
//! // at shutdown: delivery.shutdown(), await run(), then writer.shutdown() flushes the events.
//! ```
// No unwrap outside tests: propagate a typed error, or `expect` an invariant checked right there.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![forbid(unsafe_code)]

pub mod attribution;
pub mod backoff;
pub mod classify;
pub mod config;
pub mod dsn;
pub mod dsn_params;
pub mod egress;
pub mod error;
pub mod events;
pub mod limits;
pub mod memory;
pub mod periodic;
pub mod queue;
pub mod return_path;
pub mod shaping;
pub mod shard;
pub mod tls_rpt;

pub use attribution::{Attribution, AttributionKey, AttributionParts};
pub use backoff::RetrySchedule;
pub use config::{
    ClientTimeouts, DeliveryConfig, DomainLimits, LimitsSource, TlsPolicy,
    NEXT_HOP_SESSIONS_MAX_DEFAULT,
};
pub use dsn_params::MessageDsn;
pub use error::{DeliveryError, SpoolAccessError};
pub use events::{EventSink, EventWriter, EventsConfig, Outcome};
pub use limits::{ConnectionPermit, GlobalLimits};
pub use petrel_bounce::{BounceClass, BounceClassifier, Category, Classification};
pub use return_path::{ReturnPathRequest, ReturnPathSource};
pub use shard::{
    AdminCommand, AdminReply, DeliveryShard, DomainState, DomainStatus, QueuedAttribution,
    QueuedMessage, QueuedRcpt, RcptState, RcptUpdate, SpoolAccess, TenantPurge,
};

#[cfg(test)]
mod tests {
    fn send_sync<T: Send + Sync>() {}
    fn clone_send<T: Clone + Send>() {}

    #[test]
    fn shared_handles_cross_threads() {
        send_sync::<crate::GlobalLimits>();
        clone_send::<crate::EventSink>();
    }
}
