//! Egress: the sources mail leaves from (local address, EHLO name, warm-up) and the weighted
//! pools tenants are mapped to (KumoMTA's and PowerMTA's "virtual MTAs").
//!
//! A **source** is one identity towards receivers: the address connections bind to and the
//! name given in EHLO. Receivers keep reputation per address, so a new address is warmed up:
//! its daily volume ramps over a configured number of days ([`warmup`]). A **pool** is a set of
//! sources with weights; the control plane maps each tenant to a pool
//! ([`TenantDeliverySource`]), and tenants without one (or with a name this engine does not
//! know) use the default pool. With no pool configured there is one implicit pool of one
//! implicit source that binds nothing and uses the configured EHLO name: Petrel as it was.
//!
//! **Choosing a source** ([`Egress::choose`]) is nginx's smooth weighted round-robin over the
//! pool's members: each pick adds every member's weight to its running score, takes the
//! highest and subtracts the total from it. It is deterministic, exact over a cycle (weights
//! 3:1 give 3:1 in every 4 picks) and spreads a heavy member's picks out instead of sending
//! them in a burst. Members at their warm-up cap for the day are left out of the round, so the
//! others share the mail in their own proportions; when all are at their cap the answer is
//! `None` and the mail waits for the next UTC day. The scores of a pool sit behind one
//! uncontended-most-of-the-time mutex shared by the shards: a pick is a few additions, and one
//! sequence for the whole engine keeps the proportions exact however the shards interleave.
//!
//! **Counting** ([`Egress::record_sent`]) bumps the source's daily counter ([`counters`]) and
//! `petrel_egress_messages_total{source}`. A cap is checked when a source is chosen and the
//! count moves when the message is sent, so the shards may overshoot a cap by the messages
//! chosen and not yet sent at the moment it is reached; a handful against daily caps of
//! hundreds or more.
//!
//! Pure but for the counts file and its saver thread ([`counters::CountsSaver`]); no glommio.

pub mod counters;
pub mod spec;
pub mod warmup;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

pub use counters::{CountsSaver, DailyCounters, DailyCounts, EGRESS_COUNTS_SAVE_INTERVAL_MS};
pub use spec::{
    EgressError, EgressSpec, MemberSpec, PoolSpec, SourceSpec, WarmupSpec, EGRESS_POOLS_MAX,
    EGRESS_SOURCES_MAX, EGRESS_WEIGHT_MAX,
};
pub use warmup::{Day, Warmup};

/// Messages sent, by source name (the scheduler counts them through [`Egress::record_sent`]).
pub const EGRESS_MESSAGES_TOTAL: &str = "petrel_egress_messages_total";
/// Today's warm-up cap of each source that has a warm-up, by source name (+Inf once none).
pub const EGRESS_WARMUP_CAP: &str = "petrel_egress_warmup_cap";
/// Tenants mapped to a pool this engine does not have (they used the default pool).
pub const EGRESS_UNKNOWN_POOL_TOTAL: &str = "petrel_egress_unknown_pool_total";

/// A source's place in [`Egress::sources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(u16);

impl SourceId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// The id of the source at `index` of [`Egress::sources`] (a queue lane keeps the index).
    pub fn from_index(index: u16) -> SourceId {
        SourceId(index)
    }
}

/// A pool's place in [`Egress::pools`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId(u16);

impl PoolId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// One egress identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// Unique among sources; the `source` label of the metrics.
    pub name: String,
    /// The address connections bind to; `None`: the kernel's choice (no bind).
    pub local_addr: Option<IpAddr>,
    /// The EHLO name; `None`: the engine's (`DeliveryConfig::helo_name`).
    pub ehlo_name: Option<String>,
    pub warmup: Option<Warmup>,
}

impl Source {
    /// The EHLO name to give: this source's, else `configured`.
    pub fn ehlo<'a>(&'a self, configured: &'a str) -> &'a str {
        self.ehlo_name.as_deref().unwrap_or(configured)
    }

    /// Whether a connection bound to this source can reach `peer`: a bound address reaches
    /// only its own family (an IPv4 source cannot connect to an IPv6 MX).
    pub fn can_reach(&self, peer: IpAddr) -> bool {
        self.local_addr
            .is_none_or(|local| local.is_ipv4() == peer.is_ipv4())
    }
}

/// Weighted sources; every member's weight is 1 to [`EGRESS_WEIGHT_MAX`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    /// Non-empty, each source once.
    pub members: Vec<(SourceId, u32)>,
}

/// The control plane's delivery settings of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantDelivery {
    /// The pool its mail leaves from; `None`: the default pool.
    pub egress_pool: Option<String>,
    /// Its share against other tenants at one site (relative; the scheduler's fairness).
    pub delivery_weight: u32,
}

/// The run-time tenant settings (the engine implements it over the pushed policy).
pub trait TenantDeliverySource: std::fmt::Debug + Send + Sync {
    fn tenant_delivery(&self, tenant_id: &str) -> Option<TenantDelivery>;
}

/// Per-source metric handles, made once so counting a message allocates nothing.
struct SourceMetrics {
    messages: metrics::Counter,
    warmup_cap: Option<metrics::Gauge>,
}

/// The engine's sources and pools, the pools' choosers and the daily counts; one per engine,
/// shared by the shards (`DeliveryConfig::egress`).
pub struct Egress {
    sources: Vec<Source>,
    pools: Vec<Pool>,
    pool_ids: HashMap<String, PoolId>,
    default_pool: PoolId,
    /// Per pool, each member's running score (smooth weighted round-robin), by member index.
    scores: Vec<Mutex<Vec<i64>>>,
    counters: DailyCounters,
    metrics: Vec<SourceMetrics>,
    unknown_pool: metrics::Counter,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("sources", &self.sources)
            .field("pools", &self.pools)
            .field("default_pool", &self.default_pool)
            .finish_non_exhaustive()
    }
}

impl Default for Egress {
    fn default() -> Self {
        Egress::implicit()
    }
}

impl Egress {
    /// No pools configured: one pool of one source that binds nothing.
    pub fn implicit() -> Egress {
        let source = Source {
            name: spec::IMPLICIT_NAME.to_string(),
            local_addr: None,
            ehlo_name: None,
            warmup: None,
        };
        let pool = Pool {
            name: spec::IMPLICIT_NAME.to_string(),
            members: vec![(SourceId(0), 1)],
        };
        let ids = HashMap::from([(pool.name.clone(), PoolId(0))]);
        Egress::from_parts(vec![source], vec![pool], ids, PoolId(0))
    }

    fn from_parts(
        sources: Vec<Source>,
        pools: Vec<Pool>,
        pool_ids: HashMap<String, PoolId>,
        default_pool: PoolId,
    ) -> Egress {
        let metrics = sources
            .iter()
            .map(|s| SourceMetrics {
                messages: metrics::counter!(EGRESS_MESSAGES_TOTAL, "source" => s.name.clone()),
                warmup_cap: s
                    .warmup
                    .is_some()
                    .then(|| metrics::gauge!(EGRESS_WARMUP_CAP, "source" => s.name.clone())),
            })
            .collect();
        let scores = pools
            .iter()
            .map(|p| Mutex::new(vec![0; p.members.len()]))
            .collect();
        Egress {
            counters: DailyCounters::new(sources.len()),
            sources,
            pools,
            pool_ids,
            default_pool,
            scores,
            metrics,
            unknown_pool: metrics::counter!(EGRESS_UNKNOWN_POOL_TOTAL),
        }
    }

    /// Every source, by [`SourceId::index`].
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Every pool, by [`PoolId::index`].
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The source `id` names. Ids come from this egress, so the index is in range.
    pub fn source(&self, id: SourceId) -> &Source {
        &self.sources[id.index()]
    }

    /// The pool `id` names. Ids come from this egress, so the index is in range.
    pub fn pool(&self, id: PoolId) -> &Pool {
        &self.pools[id.index()]
    }

    /// The source called `name`.
    pub fn source_id(&self, name: &str) -> Option<SourceId> {
        self.sources
            .iter()
            .position(|s| s.name == name)
            .map(|i| SourceId(i as u16))
    }

    /// The pool of tenants without one.
    pub fn default_pool(&self) -> PoolId {
        self.default_pool
    }

    /// The pool a tenant's mail leaves from: its pool, else the default. A name this engine
    /// does not know (the control plane's mapping ahead of this engine's configuration) falls
    /// back to the default pool and counts `petrel_egress_unknown_pool_total`.
    pub fn pool_for(&self, tenant_pool: Option<&str>) -> PoolId {
        let Some(name) = tenant_pool else {
            return self.default_pool;
        };
        match self.pool_ids.get(name) {
            Some(id) => *id,
            None => {
                self.unknown_pool.increment(1);
                self.default_pool
            }
        }
    }

    /// The warm-up cap of `source` on `today`; `None`: no cap.
    pub fn daily_cap(&self, source: SourceId, today: Day) -> Option<u64> {
        self.source(source)
            .warmup
            .as_ref()
            .and_then(|w| w.daily_cap(today))
    }

    fn at_cap(&self, source: SourceId, counts: &impl DailyCounts, today: Day) -> bool {
        self.daily_cap(source, today)
            .is_some_and(|cap| counts.sent_today(source, today) >= cap)
    }

    /// The next source of `pool` (see the module docs); `None` when every member is at its
    /// warm-up cap for `today` (the mail waits for the next day).
    pub fn choose(&self, pool: PoolId, counts: &impl DailyCounts, today: Day) -> Option<SourceId> {
        let members = &self.pools.get(pool.index())?.members;
        let mut scores = self.scores[pool.index()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, &(id, weight)) in members.iter().enumerate() {
            if self.at_cap(id, counts, today) {
                continue;
            }
            scores[i] += i64::from(weight);
            total += i64::from(weight);
            if best.is_none_or(|b| scores[i] > scores[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        scores[best] -= total;
        Some(members[best].0)
    }

    /// The engine's daily counts (what [`Egress::choose`] is given in production).
    pub fn counters(&self) -> &DailyCounters {
        &self.counters
    }

    /// One message sent from `source` on `today`: the daily count and
    /// `petrel_egress_messages_total{source}`.
    pub fn record_sent(&self, source: SourceId, today: Day) {
        self.record_sent_n(source, today, 1);
    }

    /// `n` messages sent from `source` on `today` (one write's transactions).
    pub fn record_sent_n(&self, source: SourceId, today: Day, n: u64) {
        if n == 0 {
            return;
        }
        self.counters.add(source, today, n);
        if let Some(m) = self.metrics.get(source.index()) {
            m.messages.increment(n);
        }
    }

    /// Sets `petrel_egress_warmup_cap{source}` to each warmed-up source's cap on `today`.
    pub fn publish_caps(&self, today: Day) {
        for (i, m) in self.metrics.iter().enumerate() {
            if let Some(gauge) = &m.warmup_cap {
                let cap = self.daily_cap(SourceId(i as u16), today);
                gauge.set(cap.map_or(f64::INFINITY, |c| c as f64));
            }
        }
    }
}

#[cfg(test)]
mod tests;
