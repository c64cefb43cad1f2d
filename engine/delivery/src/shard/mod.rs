//! The delivery driver of one glommio shard: [`DeliveryShard`].
//!
//! `enqueue` routes each pending recipient into its destination domain's queue. `run` is the
//! loop: it sleeps on a glommio timer until the earliest due time (or until woken by `enqueue`,
//! `admin` or a connection ending), promotes due entries into the ready sets, routes ready
//! domains to their sites and starts connections for sites with more ready work than
//! connections (`site`), all bounded by the shard's `shard_connections_max`. Connections
//! (`connection`) pull their writes from their site's rotation and apply each outcome
//! (`outcome`) to the in-memory state and the spool, emit events, generate DSNs and remove
//! finished messages.
//!
//! Memory per queued recipient: the 24-byte [`crate::queue::Entry`] in its domain queue plus a
//! 24-byte `RcptSlot` (and its address) in the message record; per message a 48-byte
//! `MessageState` (`message.rs`). Neither the body nor the attribution stays in memory while a
//! message waits for a later attempt: both are read back from the spool record, in one read,
//! when the attempt comes.

mod admin;
mod connect;
mod connection;
mod dane;
mod events;
mod message;
mod mta_sts;
mod outcome;
mod pipelining;
mod prepare;
mod purge;
mod rotation;
mod site;
mod tls_rpt;
mod write;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::attribution::Attribution;
use crate::config::DeliveryConfig;
use crate::dsn_params::MessageDsn;
use crate::egress::{Day, SourceId};
use crate::error::SpoolAccessError;
use crate::events::{Event, EventSink};
use crate::limits::GlobalLimits;
use crate::memory::Interner;
use crate::queue::{Entry, Queues};
pub use events::EVENTS_BATCH_MAX;
use message::{AttributionAt, HeldAttributions, MessageState, RcptSlot};
use petrel_idmap::IdMap;

/// What a shard's delivery needs from its spool (the engine implements it over petrel-spool).
// The futures are !Send on purpose: everything here runs on one glommio executor.
#[allow(async_fn_in_trait)]
pub trait SpoolAccess {
    async fn read_body(&self, id: u64) -> Result<Vec<u8>, SpoolAccessError>;
    /// The message's attribution, read back from its record (a message waiting for a retry
    /// does not hold it: see `message.rs`); None when it has none.
    async fn read_attribution(&self, id: u64)
        -> Result<Option<Arc<Attribution>>, SpoolAccessError>;
    /// The body and the attribution, for the attempt of a message that let go of its
    /// attribution. A spool that can should read its record once; by default, both reads.
    async fn read_body_attributed(
        &self,
        id: u64,
    ) -> Result<(Vec<u8>, Option<Arc<Attribution>>), SpoolAccessError> {
        let body = self.read_body(id).await?;
        Ok((body, self.read_attribution(id).await?))
    }
    async fn update(&self, id: u64, updates: &[RcptUpdate]) -> Result<(), SpoolAccessError>;
    /// The message is final for every recipient: remove it. `last` are the updates of the
    /// attempt that finished it; a durable removal implies them, so a spool need not journal
    /// them separately.
    async fn remove(&self, id: u64, last: &[RcptUpdate]) -> Result<(), SpoolAccessError>;
    /// Durably store a new message (a DSN) and return its id; the caller then enqueues it.
    async fn store_dsn(
        &self,
        mail_from: &str,
        rcpt: &str,
        body: &[u8],
    ) -> Result<u64, SpoolAccessError>;
}

/// A change of one recipient's state, written to the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptUpdate {
    /// The recipient's index in the envelope.
    pub index: u32,
    pub state: RcptState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Next attempt, unix ms (0 when final).
    pub next_attempt_unix_ms: u64,
    /// The last remote reply or our reason.
    pub last_reply: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptState {
    Pending,
    Delivered,
    Bounced,
    Expired,
}

/// What the engine hands to delivery for each accepted (or recovered) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub id: u64,
    /// "" for the null reverse-path.
    pub mail_from: String,
    pub received_unix_ms: u64,
    /// A DSN we generated: it never causes another DSN.
    pub is_dsn: bool,
    /// The pending recipients only.
    pub recipients: Vec<QueuedRcpt>,
    /// Who it belongs to (see [`QueuedAttribution`]).
    pub attribution: QueuedAttribution,
    /// The sender's DSN parameters (RFC 3461); None when it gave none (`crate::dsn_params`).
    pub dsn: Option<Box<MessageDsn>>,
}

/// A queued message's attribution as the engine hands it over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum QueuedAttribution {
    /// Nothing is known (and the DSNs Petrel generates: see `crate::attribution`).
    #[default]
    None,
    /// Held, shared by its recipients and events, until its first attempt (fresh mail: the
    /// attempt comes soon); a deferral lets go of it.
    Held(Arc<Attribution>),
    /// Left in the spool record (recovery): delivery keeps only the tenant, which scheduling
    /// needs, and reads the rest back when an attempt or an event needs it
    /// ([`SpoolAccess::read_attribution`]).
    Spooled {
        tenant_id: Option<String>,
        /// The whole attribution for the `accepted` events recovery sends again, only when
        /// they are wanted ([`DeliveryShard::wants_accepted_events`]); not kept.
        for_accepted: Option<Arc<Attribution>>,
    },
}

impl QueuedAttribution {
    /// What the message's `accepted` events carry.
    pub fn for_events(&self) -> Option<&Arc<Attribution>> {
        match self {
            QueuedAttribution::None => None,
            QueuedAttribution::Held(a) => Some(a),
            QueuedAttribution::Spooled { for_accepted, .. } => for_accepted.as_ref(),
        }
    }

    /// The tenant, if known.
    pub fn tenant_id(&self) -> Option<&str> {
        match self {
            QueuedAttribution::None => None,
            QueuedAttribution::Held(a) => a.tenant_id(),
            QueuedAttribution::Spooled { tenant_id, .. } => tenant_id.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRcpt {
    pub index: u32,
    pub address: String,
    pub attempts: u32,
    /// When the recipient is due; 0 or a past time means now.
    pub next_attempt_unix_ms: u64,
}

/// Queue administration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// Every domain queue: depth, oldest age, state.
    Ls,
    /// Stop delivering to a domain (its queue keeps filling).
    Suspend(String),
    Resume(String),
    /// Make every queued recipient of the domain due now.
    Retry(String),
    /// Bounce every queued recipient of the domain (with DSNs).
    Bounce(String),
    /// Deleted tenants (issue 16): their queued recipients are bounced (with DSNs) or dropped
    /// (without), per tenant; answered with [`AdminReply::Purged`].
    PurgeTenants(Vec<TenantPurge>),
}

/// One deleted tenant's queued mail, and what becomes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPurge {
    pub tenant_id: String,
    /// True: bounce to the senders; false: drop silently.
    pub bounce: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminReply {
    Domains(Vec<DomainStatus>),
    /// The command applied to `domain`; `recipients` is the number affected (Bounce) or queued.
    Done {
        domain: String,
        recipients: u64,
    },
    UnknownDomain(String),
    /// `PurgeTenants`: recipients taken from the queues now, and the tenants that still have
    /// messages here (in flight, or taken and not yet finished): ask again until none.
    Purged {
        recipients: u64,
        remaining: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainStatus {
    pub domain: String,
    /// Queued recipients.
    pub depth: u64,
    /// Age of the oldest queued message, seconds.
    pub oldest_age_secs: u64,
    pub state: DomainState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    Active,
    Suspended,
}

/// Bound of the per-shard list of recipients waiting to be bounced by the run loop.
pub const ADMIN_BOUNCES_MAX: usize = 1_000_000;
/// Milliseconds in a UTC day (`egress::Day` counts them from the Unix epoch).
pub(crate) const DAY_MS: u64 = 86_400_000;
/// How often the queue gauges (depth, oldest age) are refreshed, ms.
pub const GAUGE_INTERVAL_MS: u64 = 5_000;

/// One shard's delivery. `!Send`: create and run it on the shard's glommio executor.
pub struct DeliveryShard<S: SpoolAccess> {
    inner: Rc<Inner<S>>,
}

struct State {
    queues: Queues,
    /// Messages with at least one pending recipient, by spool id.
    messages: IdMap<MessageState>,
    /// Envelope senders of queued messages, shared among their messages.
    senders: Interner,
    /// Heap bytes the entries of `messages` own, kept as they come and go
    /// (`MessageState::heap_bytes`: their recipients).
    rcpts_heap_bytes: usize,
    /// The attributions of the messages that hold theirs (`message.rs`).
    attributions: HeldAttributions,
    /// The sites of this shard and where each domain goes (`site.rs`).
    sites: site::Sites,
    /// Recipients drained by `admin(Bounce)` or a bouncing `PurgeTenants`, bounced by the run
    /// loop.
    admin_bounces: Vec<Entry>,
    /// Recipients of deleted tenants to drop without a DSN, by the run loop.
    admin_drops: Vec<Entry>,
    /// The DSN parameters of the queued messages that have any, by spool id (a side table:
    /// `MessageState` stays small for the others); dropped with the message.
    dsn: HashMap<u64, Rc<MessageDsn>>,
    /// Pending recipients of all messages (queued or in flight).
    pending_total: u64,
    /// Last refresh of the queue gauges, unix ms.
    gauges_unix_ms: u64,
}

impl State {
    /// Heap bytes of the queued mail by part (the `part` label of `petrel_queue_memory_bytes`;
    /// see `crate::memory`): the message table, the recipients' slots and addresses, the
    /// attributions held, the interned senders, the domain queues, the lanes' routing state.
    fn memory_parts(&self) -> [(&'static str, usize); 6] {
        [
            ("messages", self.messages.memory_bytes()),
            ("recipients", self.rcpts_heap_bytes),
            ("attribution", self.attributions.memory_bytes()),
            ("senders", self.senders.memory_bytes()),
            ("domains", self.queues.memory_bytes()),
            ("routes", self.sites.memory_bytes()),
        ]
    }

    /// Drops a message whose recipients are all final, with what it held.
    fn forget(&mut self, id: u64) {
        if let Some(done) = self.messages.remove(id) {
            self.rcpts_heap_bytes = self.rcpts_heap_bytes.saturating_sub(done.heap_bytes());
            self.senders.release(done.sender);
            if done.attribution == AttributionAt::Held {
                self.attributions.remove(id);
            }
        }
    }

    /// An attribution read back from the spool for message `id` (None: it has none), held
    /// until the message waits again.
    fn hold_attribution(&mut self, id: u64, a: Option<Arc<Attribution>>) {
        let Some(msg) = self.messages.get_mut(id) else {
            return;
        };
        if msg.attribution != AttributionAt::Spool {
            return; // read back meanwhile
        }
        match a {
            Some(a) => {
                msg.attribution = AttributionAt::Held;
                self.attributions.insert(id, a);
            }
            None => msg.attribution = AttributionAt::Nowhere,
        }
    }
}

struct Inner<S: SpoolAccess> {
    shard: u8,
    cfg: Arc<DeliveryConfig>,
    resolver: petrel_outbound::Resolver,
    /// MTA-STS policies of destination domains (`None`: not applied; see `mta_sts.rs`).
    mta_sts: Option<petrel_outbound::MtaSts>,
    limits: Arc<GlobalLimits>,
    spool: Rc<S>,
    events: EventSink,
    state: RefCell<State>,
    rng: RefCell<StdRng>,
    /// Connections running on this shard; at most `cfg.shard_connections_max`.
    sessions_open: Cell<usize>,
    shutdown: Cell<bool>,
    wake_tx: async_channel::Sender<()>,
    wake_rx: async_channel::Receiver<()>,
    /// Events of this scheduler round, handed to the writer as one batch.
    events_buf: RefCell<Vec<Event>>,
    /// Spool updates and removals of this round's outcomes, applied once their events are
    /// durable (only with a durable backlog; see `crate::events`).
    spool_ops_buf: RefCell<Vec<outcome::SpoolOp>>,
    /// Rounds whose spool operations wait for their events' sync.
    spool_ops_waiting: Cell<usize>,
    events_flush_armed: Cell<bool>,
    /// Sites with ready work the last driver round left without a connection because the
    /// shard's connections were all taken: that many idle connections close and give up
    /// their slots.
    slots_wanted: Cell<usize>,
    /// Hosts that dropped a connection mid-transaction lately: one transaction per write.
    drops: RefCell<pipelining::DropMemory>,
    /// This shard's TLS-RPT counts (`crate::tls_rpt`); unset: nothing recorded.
    tls_rpt: std::cell::OnceCell<crate::tls_rpt::TlsRptRecorder>,
}

impl<S: SpoolAccess + 'static> DeliveryShard<S> {
    /// A shard's delivery; with `mta_sts`, the MTA-STS policies of destination domains are
    /// applied to their sessions (RFC 8461; static routes excepted).
    pub fn new(
        shard: u8,
        cfg: Arc<DeliveryConfig>,
        resolver: petrel_outbound::Resolver,
        mta_sts: Option<petrel_outbound::MtaSts>,
        limits: Arc<GlobalLimits>,
        spool: Rc<S>,
        events: EventSink,
    ) -> Self {
        let (wake_tx, wake_rx) = async_channel::bounded(1);
        let state = State {
            queues: Queues::new(cfg.ready_max),
            messages: IdMap::new(),
            senders: Interner::default(),
            rcpts_heap_bytes: 0,
            attributions: HeldAttributions::default(),
            sites: site::Sites::default(),
            admin_bounces: Vec::new(),
            admin_drops: Vec::new(),
            dsn: HashMap::new(),
            pending_total: 0,
            gauges_unix_ms: 0,
        };
        let seed = now_unix_ms() ^ (u64::from(shard) << 56);
        DeliveryShard {
            inner: Rc::new(Inner {
                shard,
                cfg,
                resolver,
                mta_sts,
                limits,
                spool,
                events,
                state: RefCell::new(state),
                rng: RefCell::new(StdRng::seed_from_u64(seed)),
                sessions_open: Cell::new(0),
                shutdown: Cell::new(false),
                wake_tx,
                wake_rx,
                events_buf: RefCell::new(Vec::new()),
                spool_ops_buf: RefCell::new(Vec::new()),
                spool_ops_waiting: Cell::new(0),
                events_flush_armed: Cell::new(false),
                slots_wanted: Cell::new(0),
                drops: RefCell::new(pipelining::DropMemory::default()),
                tls_rpt: std::cell::OnceCell::new(),
            }),
        }
    }

    /// Records the outcome of this shard's TLS negotiations in `recorder` (RFC 8460 TLS-RPT;
    /// see `crate::tls_rpt`). Set once, before `run`; a second call is ignored.
    pub fn set_tls_rpt(&self, recorder: crate::tls_rpt::TlsRptRecorder) {
        let _ = self.inner.tls_rpt.set(recorder);
    }

    /// Routes the message's pending recipients to their domain queues. Never blocks; a message
    /// already queued is ignored (recovery and acceptance cannot race on one id).
    pub fn enqueue(&self, msg: QueuedMessage) {
        self.inner.record_accepted(&msg);
        self.inner.enqueue(msg);
    }

    /// The delivery loop; returns after [`DeliveryShard::shutdown`] once the running sessions
    /// finished their transaction (each bounded by the client timeouts).
    pub async fn run(&self) {
        let inner = &self.inner;
        while !inner.shutdown.get() {
            inner.bounce_admin_drained().await;
            let now = now_unix_ms();
            let wait_ms = {
                let mut st = inner.state.borrow_mut();
                st.queues.promote_due(now);
                inner.refresh_gauges(&mut st, now);
                let next = st.queues.next_wakeup().unwrap_or(u64::MAX);
                next.saturating_sub(now)
                    .clamp(1, inner.cfg.tick_ms_max.max(1))
            };
            inner.schedule();
            let sleep = glommio::timer::sleep(Duration::from_millis(wait_ms));
            let woken = async {
                let _ = inner.wake_rx.recv().await;
            };
            futures_lite::future::or(sleep, woken).await;
        }
        // Connections finish their writes; route lookups finish too (a failed one applies
        // its outcome, whose events are flushed below).
        while inner.sessions_open.get() > 0 || inner.state.borrow().sites.routing_tasks() > 0 {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        inner.flush_events().await;
        // Outcomes whose events are being synced: let them reach the spool before it closes.
        while inner.spool_ops_waiting.get() > 0 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Asks `run` to return; sessions finish their current transaction and QUIT.
    pub fn shutdown(&self) {
        self.inner.shutdown.set(true);
        self.inner.wake();
    }

    /// Whether the events of this shard include `accepted` ones: recovery then hands over each
    /// message's whole attribution for them ([`QueuedAttribution::Spooled`]).
    pub fn wants_accepted_events(&self) -> bool {
        self.inner.events.wants_accepted()
    }

    /// Pending recipients on this shard (queued or being delivered), for ingress backpressure.
    pub fn queued_recipients(&self) -> u64 {
        self.inner.state.borrow().pending_total
    }

    pub fn admin(&self, cmd: AdminCommand) -> AdminReply {
        let now = now_unix_ms();
        let reply = {
            let mut st = self.inner.state.borrow_mut();
            admin::apply(&mut st, cmd, now)
        };
        self.inner.wake();
        reply
    }
}

impl<S: SpoolAccess + 'static> Inner<S> {
    fn wake(&self) {
        let _ = self.wake_tx.try_send(()); // full: a wake-up is already pending
    }

    /// The egress pool of `tenant`'s mail (the pushed setting; the default pool without one).
    fn pool_of(&self, tenant: Option<&str>) -> crate::egress::PoolId {
        let pool_name = tenant
            .and_then(|t| self.cfg.tenant_delivery.as_ref()?.tenant_delivery(t))
            .and_then(|d| d.egress_pool);
        self.cfg.egress.pool_for(pool_name.as_deref())
    }

    /// The egress source a message of `tenant` leaves from (the next of its pool by weight,
    /// `crate::egress`), and the time it may not go before: the start of tomorrow (UTC) when
    /// every source of the pool has sent its warm-up cap for today, else 0.
    fn choose_source(&self, tenant: Option<&str>, now: u64) -> (u16, u64) {
        let egress = &self.cfg.egress;
        let pool = self.pool_of(tenant);
        let today = Day::from_unix_ms(now);
        let members = &egress.pool(pool).members;
        let index = |s: SourceId| u16::try_from(s.index()).unwrap_or(0);
        if let [(only, _)] = members.as_slice() {
            if egress.daily_cap(*only, today).is_none() {
                return (index(*only), 0); // one source, no cap: no choosing (the usual case)
            }
        }
        match egress.choose(pool, egress.counters(), today) {
            Some(source) => (index(source), 0),
            None => {
                let first = members.first().map_or(0, |(s, _)| index(*s));
                (first, u64::from(today.next().0) * DAY_MS)
            }
        }
    }

    fn enqueue(&self, msg: QueuedMessage) {
        let mut st = self.state.borrow_mut();
        if st.messages.contains_key(msg.id) || msg.recipients.is_empty() {
            return;
        }
        let received_unix_secs = u32::try_from(msg.received_unix_ms / 1000).unwrap_or(u32::MAX);
        let mut rcpts: Vec<RcptSlot> = Vec::with_capacity(msg.recipients.len());
        let tenant_id = msg.attribution.tenant_id();
        let tenant = st.queues.tenant_index_of(tenant_id.unwrap_or(""));
        let (source, not_before) = self.choose_source(tenant_id, now_unix_ms());
        for r in msg.recipients {
            let id = st
                .queues
                .queue_id_at(&domain_of(&r.address), tenant, source);
            st.queues.schedule(
                id,
                Entry {
                    due_unix_ms: r.next_attempt_unix_ms.max(not_before),
                    message_id: msg.id,
                    rcpt_index: r.index,
                    received_unix_secs,
                },
            );
            rcpts.push(RcptSlot::new(r.index, r.address, r.attempts));
        }
        st.pending_total += rcpts.len() as u64;
        let sender = st.senders.intern(&msg.mail_from);
        let at = match msg.attribution {
            QueuedAttribution::None => AttributionAt::Nowhere,
            QueuedAttribution::Held(a) => {
                st.attributions.insert(msg.id, a);
                AttributionAt::Held
            }
            QueuedAttribution::Spooled { .. } => AttributionAt::Spool,
        };
        let state = MessageState::new(
            (sender, tenant, source),
            msg.received_unix_ms,
            msg.is_dsn,
            rcpts,
            at,
        );
        st.rcpts_heap_bytes += state.heap_bytes();
        st.messages.insert(msg.id, state);
        if let Some(dsn) = msg.dsn.filter(|d| !d.is_empty()) {
            st.dsn.insert(msg.id, Rc::from(dsn));
        }
        drop(st);
        self.wake();
    }

    fn refresh_gauges(&self, st: &mut State, now: u64) {
        if now.saturating_sub(st.gauges_unix_ms) < GAUGE_INTERVAL_MS {
            return;
        }
        st.gauges_unix_ms = now;
        let shard = self.shard.to_string();
        // The spool hands out ids in arrival order, so the smallest id is the oldest message
        // (O(chunks), not a scan of every message every few seconds).
        let oldest_ms = st.messages.first().map(|(_, m)| m.received_unix_ms);
        let age = oldest_ms.map_or(0, |r| now.saturating_sub(r) / 1000);
        metrics::gauge!("petrel_queue_depth", "shard" => shard.clone())
            .set(st.pending_total as f64);
        metrics::gauge!("petrel_queue_oldest_age_seconds", "shard" => shard.clone())
            .set(age as f64);
        st.queues.trim_memory();
        st.sites.trim_memory();
        for (part, bytes) in st.memory_parts() {
            metrics::gauge!("petrel_queue_memory_bytes", "shard" => shard.clone(), "part" => part)
                .set(bytes as f64);
        }
    }

    /// Bounces what `admin(Bounce)` drained, and drops what `PurgeTenants` took to drop.
    async fn bounce_admin_drained(self: &Rc<Self>) {
        let (drained, dropped) = {
            let mut st = self.state.borrow_mut();
            (
                std::mem::take(&mut st.admin_bounces),
                std::mem::take(&mut st.admin_drops),
            )
        };
        if !drained.is_empty() {
            outcome::fail_entries(
                self,
                drained,
                &outcome::Attempt::default(),
                outcome::RcptResult::administrator(),
            )
            .await;
        }
        if !dropped.is_empty() {
            let quiet = outcome::Attempt {
                no_dsn: true,
                ..outcome::Attempt::default()
            };
            outcome::fail_entries(self, dropped, &quiet, outcome::RcptResult::tenant_deleted())
                .await;
        }
    }
}

/// The domain of an address, lowercase ("" when there is no '@').
/// The address's domain, lowercased (borrowed when it already is: most are).
fn domain_of(address: &str) -> std::borrow::Cow<'_, str> {
    let d = address
        .rsplit_once('@')
        .map_or("", |(_, d)| d.trim_end_matches('>'));
    if d.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(d.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(d)
    }
}

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_of_lowercases_and_handles_missing_at() {
        assert_eq!(domain_of("Bob@Dest.Example"), "dest.example");
        assert_eq!(domain_of("a@b@c.example"), "c.example");
        assert_eq!(domain_of("nodomain"), "");
    }
}
