//! Sites: where a shard's connections go, and the one place that decides who talks to whom.
//!
//! A **site** is an egress source and a next-hop set (a smart host, or a resolved MX set,
//! compared by [`hop_key`]) with a TLS policy (issue 15's model, as KumoMTA's sites and
//! Postfix's per-next-hop queues have it). Recipients wait in their queue (`crate::queue`: one
//! per destination domain, tenant and source, a *lane*) until due; a due queue is routed once
//! (resolve, then its MTA-STS policy: [`route_domain`]) and joins its site's **rotation**, the
//! site's ready queue. The site's connections (`connection.rs`) pull their writes from the
//! rotation, one batch per queue per turn, so the domains and the tenants of a site take turns
//! and one backlog never holds up the others; a write to a server that takes several
//! transactions at once is filled from several queues.
//!
//! **A domain with limits of its own is a site of its own** (configured or pushed limits that
//! differ from the defaults, or an enforced MTA-STS policy): its limits are the site's, exactly
//! as the operator set them, and its connections never carry another domain. Sub-limits inside
//! a shared site would need a second scheduler inside the first; a separate site costs only
//! the connections its limits already allow.
//!
//! Bounds: a shared site has at most `next_hop_sessions_max` connections per shard, an own
//! site at most its domain's `connections_max`; every connection holds the connection permit
//! of the domain it carries (engine-wide, `crate::limits`), a write's other domains one each
//! for the write; the shard has at most `shard_connections_max` connections, and an idle one
//! gives its slot up when a site without a connection wants one.

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use petrel_outbound::Route;

use super::connection::run_connection;
use super::mta_sts;
use super::outcome::{fail_entries, Attempt, RcptResult};
use super::rotation::Rotation;
use super::tls_rpt;
use super::{now_unix_ms, Inner, SpoolAccess, State};
use crate::config::{DeliveryConfig, DomainLimits, TlsPolicy};
use crate::limits::{DestinationCounters, GlobalLimits};
use crate::queue::{DomainId, Entry};
use crate::shaping::{ProviderId, SiteLimits, ThrottleKind};

/// Route lookups (DNS, then MTA-STS) a shard runs at once; more ready domains wait a round.
pub const ROUTING_TASKS_MAX: usize = 256;
/// A routed lane that comes back to a rotation within this long of its last check goes
/// straight in; later, its limits, weight, MTA-STS standing and route are checked again (a
/// pushed change takes effect within this long).
pub const FIT_RECHECK_MS: u64 = 1_000;
/// The largest delivery weight a tenant's lane gets (batches per rotation turn).
pub const TENANT_WEIGHT_MAX: u32 = 100;
/// Rotation turns one write may look at beyond the transactions it takes (domains skipped
/// because their connection limit is reached elsewhere).
pub const ROTATION_LOOKS_MAX: usize = 32;

/// Identifies a next hop: the same host names with the same addresses, in any order (equal MX
/// preferences are shuffled per lookup). A hash, not the list: two hops that collide only
/// share one site, a stricter bound.
pub(super) type HopKey = u64;

/// The [`HopKey`] of a route. Order-independent without sorting (no allocation): per host, the
/// hash of its name and of the sum of its addresses' hashes; then the sum over hosts.
pub(super) fn hop_key(route: &Route) -> HopKey {
    fn hash_one(v: impl std::hash::Hash) -> u64 {
        use std::hash::Hasher;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        v.hash(&mut hasher);
        hasher.finish()
    }
    route.hosts.iter().fold(0u64, |sum, h| {
        let addrs = h
            .addrs
            .iter()
            .fold(0u64, |acc, a| acc.wrapping_add(hash_one(a)));
        sum.wrapping_add(hash_one((&h.name, addrs)))
    })
}

/// The operator gave this destination limits of its own (in the file or pushed): it is a
/// site of its own.
pub(super) fn has_own_limits(cfg: &DeliveryConfig, domain: &str, limits: &DomainLimits) -> bool {
    cfg.domain_limits.contains_key(domain) || *limits != cfg.default_limits
}

/// The `domain` label shared by destinations without limits of their own, so the number of
/// series stays bounded by the configuration however many domains mail goes to.
const OTHER_DOMAINS_LABEL: &str = "other";

/// What makes two domains one site.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct SiteKey {
    hop: HopKey,
    tls: TlsPolicy,
    /// The egress source its connections leave from (`crate::egress`).
    pub source: u16,
    /// The domain, for a domain that is a site of its own.
    own: Option<Rc<str>>,
}

pub(super) type SiteId = u64;

/// One site of this shard.
pub(super) struct Site {
    key: SiteKey,
    /// Where its connections go (under an enforced MTA-STS policy, the hosts it allows).
    pub route: Arc<Route>,
    pub tls: TlsPolicy,
    /// Its limits: the domain's for an own site, the defaults for a shared one (a shaped
    /// site's messages per connection and recipients per transaction taken from `shaped`).
    pub limits: DomainLimits,
    /// The mailbox provider its MX hosts belong to (`crate::shaping`); shared sites only.
    pub provider: Option<ProviderId>,
    /// The provider's limits: connections and rates engine-wide, under `counter_key`.
    pub shaped: Option<SiteLimits>,
    /// The site's key in the engine-wide registries (connection permits, rates).
    pub counter_key: Rc<str>,
    /// The `domain` label of its connection gauge.
    pub label: Rc<str>,
    /// Its ready domains, in turn order; each at most once.
    pub rotation: Rotation,
    /// Connections of this shard to the site, and how many of them wait for work.
    pub connections: usize,
    pub idle: usize,
    /// Domains routed here (a site with none and no connection is forgotten).
    mapped: usize,
    /// Notified when the rotation gets work, or a shard slot is wanted.
    pub work: Rc<event_listener::Event>,
}

impl Site {
    /// The egress source its connections leave from (an index of `Egress::sources`).
    pub fn source(&self) -> u16 {
        self.key.source
    }

    /// Connections this shard may have to the site now (a throttle rule may have narrowed
    /// them: `limits.throttles()`, engine-wide under the site's key).
    pub fn cap(&self, cfg: &DeliveryConfig, limits: &GlobalLimits, now_unix_ms: u64) -> usize {
        let mut cap = if self.key.own.is_some() {
            self.limits.connections_max as usize
        } else {
            cfg.next_hop_sessions_max
        };
        if let Some(shaped) = &self.shaped {
            cap = cap.min(shaped.connections_max as usize);
        }
        if let Some(narrowed) = limits
            .throttles()
            .connections_cap(&self.counter_key, now_unix_ms)
        {
            cap = cap.min(narrowed as usize);
        }
        cap.max(1)
    }
}

/// What a new site is made of, besides its key.
struct SiteSpec {
    route: Arc<Route>,
    limits: DomainLimits,
    provider: Option<ProviderId>,
    shaped: Option<SiteLimits>,
    /// A shaped site's key in the engine-wide registries: its provider and source.
    provider_key: Option<String>,
}

/// Where a domain stands with routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Routing {
    Unrouted,
    /// A route lookup is running.
    Pending,
    Routed {
        site: SiteId,
        /// The hop of its resolved route before MTA-STS narrowed it (to see a DNS change).
        raw_hop: HopKey,
        at_unix_ms: u64,
    },
}

/// A domain's part in the sites.
#[derive(Debug)]
pub(super) struct DomainInfo {
    pub routing: Routing,
    pub in_rotation: bool,
    /// Its tenant, by index (`Queues::tenant_index`): a rotation's turns go by tenant.
    pub tenant: u32,
    /// Batches of it taken by connections and not yet finished.
    pub inflight: u32,
    /// Its limits as of its last entry into a rotation.
    pub limits: DomainLimits,
    /// Its tenant's delivery weight (1..=100, pushed): batches it takes per rotation turn.
    pub weight: u32,
    /// Batches left of its current turn.
    pub turn_left: u32,
    /// When its limits, weight and route were last checked against its site (unix ms).
    pub fit_checked_unix_ms: u64,
    /// Its domain's engine-wide counters (held here, the registry keeps them), set at that
    /// check: the driver and the connections look at them without the registry's lock.
    pub counters: Option<Arc<DestinationCounters>>,
}

/// Every site of a shard, and where each domain goes.
#[derive(Default)]
pub(super) struct Sites {
    by_key: HashMap<SiteKey, SiteId>,
    pub sites: HashMap<SiteId, Site>,
    next_id: SiteId,
    /// Sites with a non-empty rotation.
    active: BTreeSet<SiteId>,
    pub domains: HashMap<DomainId, DomainInfo>,
    routing_tasks: usize,
}

impl Sites {
    /// Route lookups running (`run` waits for them at shutdown).
    pub fn routing_tasks(&self) -> usize {
        self.routing_tasks
    }
}

impl Sites {
    /// The site of `key`, made when needed; an own site takes the domain's current limits.
    fn site_for(&mut self, key: SiteKey, spec: SiteSpec) -> SiteId {
        if let Some(id) = self.by_key.get(&key) {
            if let Some(site) = self.sites.get_mut(id) {
                if key.own.is_some() {
                    site.limits = spec.limits;
                }
                site.route = spec.route; // the same hop: equal up to order
                site.mapped += 1;
                return *id;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let label: Rc<str> = key
            .own
            .clone()
            .unwrap_or_else(|| OTHER_DOMAINS_LABEL.into());
        // A shaped site counts against its provider's limits, whatever its MX set: the
        // provider's sites (gmail.com's, Workspace's, each Office 365 tenant's) share them.
        let counter_key: Rc<str> = match &spec.provider_key {
            Some(k) => k.as_str().into(),
            None => format!(
                "site/{}/{:016x}/{:?}/{}",
                key.own.as_deref().unwrap_or(""),
                key.hop,
                key.tls,
                key.source
            )
            .into(),
        };
        self.sites.insert(
            id,
            Site {
                key: key.clone(),
                route: spec.route,
                tls: key.tls,
                limits: spec.limits,
                provider: spec.provider,
                shaped: spec.shaped,
                counter_key,
                label,
                rotation: Rotation::default(),
                connections: 0,
                idle: 0,
                mapped: 1,
                work: Rc::new(event_listener::Event::new()),
            },
        );
        self.by_key.insert(key, id);
        id
    }

    /// A domain no longer routed to `site`.
    fn unmap(&mut self, site: SiteId) {
        if let Some(s) = self.sites.get_mut(&site) {
            s.mapped = s.mapped.saturating_sub(1);
        }
        self.forget_if_unused(site);
    }

    /// Forgets a site nothing is routed to and no connection uses.
    pub fn forget_if_unused(&mut self, site: SiteId) {
        let unused = self
            .sites
            .get(&site)
            .is_some_and(|s| s.mapped == 0 && s.connections == 0 && s.rotation.is_empty());
        if unused {
            if let Some(s) = self.sites.remove(&site) {
                self.by_key.remove(&s.key);
            }
            self.active.remove(&site);
        }
    }

    /// Puts ready domain `id` at the end of its site's rotation, waking the site's idle
    /// connections when the rotation was empty.
    fn enter_rotation(&mut self, id: DomainId, site: SiteId) {
        let Some(s) = self.sites.get_mut(&site) else {
            return;
        };
        let Some(info) = self.domains.get_mut(&id) else {
            return;
        };
        info.in_rotation = true;
        let was_empty = s.rotation.is_empty();
        s.rotation.push_back(info.tenant, id);
        if was_empty {
            self.active.insert(site);
            s.work.notify(usize::MAX);
        }
    }

    /// Takes `id` out of its site's rotation (its ready work was put back in the schedule).
    pub fn leave_rotation(&mut self, id: DomainId, site: SiteId) {
        let Some(info) = self.domains.get_mut(&id) else {
            return;
        };
        info.in_rotation = false;
        if let Some(s) = self.sites.get_mut(&site) {
            s.rotation.remove(info.tenant, id);
            if s.rotation.is_empty() {
                self.active.remove(&site);
            }
        }
    }

    /// The next domain of `site`'s rotation, taken off it (the caller puts it back with
    /// [`Sites::requeue_turn`] when it keeps ready work).
    pub fn next_turn(&mut self, site: SiteId) -> Option<DomainId> {
        let s = self.sites.get_mut(&site)?;
        let id = s.rotation.pop_front().map(|(_, id)| id);
        if s.rotation.is_empty() {
            self.active.remove(&site);
        }
        id
    }

    /// `id`, which keeps ready work, goes to the end of `site`'s rotation.
    pub fn requeue_turn(&mut self, site: SiteId, id: DomainId) {
        let tenant = self.domains.get(&id).map_or(0, |i| i.tenant);
        if let Some(s) = self.sites.get_mut(&site) {
            s.rotation.push_back(tenant, id);
            self.active.insert(site);
        }
    }

    /// `id` has batches left of its turn: it stays at the front of `site`'s rotation.
    pub fn continue_turn(&mut self, site: SiteId, id: DomainId) {
        let tenant = self.domains.get(&id).map_or(0, |i| i.tenant);
        if let Some(s) = self.sites.get_mut(&site) {
            s.rotation.push_front(tenant, id);
            self.active.insert(site);
        }
    }
}

impl<S: SpoolAccess + 'static> Inner<S> {
    /// One driver round: routes the ready domains that are not in a rotation, puts the routed
    /// ones into their site's rotation, and starts connections for sites whose ready work
    /// outgrows their connections.
    pub(super) fn schedule(self: &Rc<Self>) {
        let now = now_unix_ms();
        let mut guard = self.state.borrow_mut();
        let st: &mut State = &mut guard;
        let mut to_route: Vec<(DomainId, String)> = Vec::new();
        let ready: Vec<DomainId> = st.queues.ready_domains().collect();
        for id in ready {
            let Some(name) = st.queues.name(id) else {
                continue;
            };
            let tenant = st.queues.tenant_index(id).unwrap_or(0);
            let info = st.sites.domains.entry(id).or_insert_with(|| DomainInfo {
                routing: Routing::Unrouted,
                in_rotation: false,
                tenant,
                inflight: 0,
                limits: self.cfg.default_limits.clone(),
                weight: 1,
                turn_left: 0,
                fit_checked_unix_ms: 0,
                counters: None,
            });
            if info.in_rotation || info.routing == Routing::Pending {
                continue;
            }
            if let Routing::Routed { site, .. } = info.routing {
                // Back within `FIT_RECHECK_MS` of its last check (a busy lane drains and
                // refills all the time): it goes straight back to its site's rotation.
                if now.saturating_sub(info.fit_checked_unix_ms) < FIT_RECHECK_MS
                    && st.sites.sites.contains_key(&site)
                {
                    st.sites.enter_rotation(id, site);
                    continue;
                }
            }
            let limits = self.cfg.effective_limits(name);
            let routed = match info.routing {
                Routing::Routed {
                    site,
                    raw_hop,
                    at_unix_ms,
                } if now.saturating_sub(at_unix_ms) < self.cfg.route_recheck_ms => st
                    .sites
                    .sites
                    .get(&site)
                    .filter(|s| self.still_fits(s, name, &limits, raw_hop))
                    .map(|_| site),
                _ => None,
            };
            if let Some(site) = routed {
                info.limits = limits;
                info.weight = self.tenant_weight(st.queues.tenant(id));
                info.fit_checked_unix_ms = now;
                info.counters = Some(self.limits.destination(name));
                st.sites.enter_rotation(id, site);
                continue;
            }
            if st.sites.routing_tasks >= ROUTING_TASKS_MAX {
                continue;
            }
            let old = std::mem::replace(&mut info.routing, Routing::Pending);
            if let Routing::Routed { site, .. } = old {
                st.sites.unmap(site);
            }
            st.sites.routing_tasks += 1;
            to_route.push((id, name.to_string()));
        }
        let (spawn, wanted) = self.connections_wanted(st);
        self.slots_wanted.set(wanted);
        if wanted > 0 {
            // Idle connections of other sites give their slots up.
            for s in st.sites.sites.values().filter(|s| s.idle > 0) {
                s.work.notify(usize::MAX);
            }
        }
        drop(guard); // the tasks borrow the state as soon as they run
        for (id, name) in to_route {
            glommio::spawn_local(route_domain(self.clone(), id, name)).detach();
        }
        for site in spawn {
            glommio::spawn_local(run_connection(self.clone(), site)).detach();
        }
    }

    /// The delivery weight of a lane's tenant (1 without a tenant or a setting).
    fn tenant_weight(&self, tenant: Option<&str>) -> u32 {
        let (Some(t), Some(source)) = (tenant.filter(|t| !t.is_empty()), &self.cfg.tenant_delivery)
        else {
            return 1;
        };
        source
            .tenant_delivery(t)
            .map_or(1, |d| d.delivery_weight.clamp(1, TENANT_WEIGHT_MAX))
    }

    /// Whether a routed domain still belongs to `site`: the same own-or-shared standing and
    /// limits, no newly enforced MTA-STS policy, and the same resolved hop (known without a
    /// lookup; an expired DNS answer routes it again).
    fn still_fits(&self, site: &Site, name: &str, limits: &DomainLimits, raw_hop: HopKey) -> bool {
        let own = has_own_limits(&self.cfg, name, limits);
        let enforced = !mta_sts::may_share(self, false, name);
        match &site.key.own {
            Some(_) if !own && !enforced => return false,
            Some(_) if own && site.limits != *limits => return false,
            None if own || enforced => return false,
            _ => {}
        }
        if site.tls != limits.tls && !enforced {
            return false;
        }
        self.resolver
            .known_route(name)
            .is_some_and(|r| hop_key(&r) == raw_hop)
    }

    /// The connections to start this round (one site id per connection), counted in already,
    /// and how many sites with work and no connection found the shard full.
    fn connections_wanted(&self, st: &mut State) -> (Vec<SiteId>, usize) {
        let mut spawn = Vec::new();
        let mut wanted = 0;
        let now = now_unix_ms();
        let active: Vec<SiteId> = st.sites.active.iter().copied().collect();
        for site_id in active {
            let Some(site) = st.sites.sites.get(&site_id) else {
                continue;
            };
            let throttles = self.limits.throttles();
            if throttles
                .site_suspended_until(&site.counter_key, now)
                .is_some()
            {
                continue; // its connections start again once the suspension ends
            }
            let cap = site.cap(&self.cfg, &self.limits, now);
            let (mut connections, idle) = (site.connections, site.idle);
            while idle == 0 && connections < cap && self.backlog(st, site, connections) {
                if self.sessions_open.get() >= self.cfg.shard_connections_max {
                    wanted += usize::from(connections == 0);
                    break;
                }
                // A connection also needs room under the site's engine-wide limit (a shaped
                // site), and an extra one under the front domain's (other shards count, and
                // the fleet's lease): without it, it could only fail to get a permit, end,
                // and be started again.
                if !self.permit_room(st, site, connections > 0) {
                    break;
                }
                connections += 1;
                self.sessions_open.set(self.sessions_open.get() + 1);
                spawn.push(site_id);
            }
            if let Some(site) = st.sites.sites.get_mut(&site_id) {
                site.connections = connections;
            }
        }
        (spawn, wanted)
    }

    /// The site's rotation holds more ready recipients than `connections`.
    fn backlog(&self, st: &State, site: &Site, connections: usize) -> bool {
        let mut sum = 0usize;
        for id in site.rotation.iter() {
            sum += st.queues.ready_len(id);
            if sum > connections {
                return true;
            }
        }
        false
    }

    /// The site has room under its engine-wide limit (a shaped site), and, for an `extra`
    /// connection, the domain at the front of its rotation under its own.
    fn permit_room(&self, st: &State, site: &Site, extra: bool) -> bool {
        if let Some(shaped) = &site.shaped {
            if !self
                .limits
                .has_room(&site.counter_key, shaped.connections_max)
            {
                return false;
            }
        }
        if !extra {
            return true;
        }
        let Some(id) = site.rotation.front() else {
            return false;
        };
        let (Some(name), Some(info)) = (st.queues.name(id), st.sites.domains.get(&id)) else {
            return false;
        };
        match &info.counters {
            Some(c) => c.has_room(info.limits.connections_max),
            None => self.limits.has_room(name, info.limits.connections_max),
        }
    }

    /// A connection of `site` ended.
    pub(super) fn connection_ended(&self, site: SiteId) {
        let mut st = self.state.borrow_mut();
        if let Some(s) = st.sites.sites.get_mut(&site) {
            s.connections = s.connections.saturating_sub(1);
        }
        st.sites.forget_if_unused(site);
        drop(st);
        self.sessions_open
            .set(self.sessions_open.get().saturating_sub(1));
        self.wake();
    }

    /// A batch of `id` taken by a connection is finished (delivered, deferred or put back);
    /// the domain is forgotten once nothing of it is queued, taken or being routed.
    pub(super) fn batch_done(&self, id: DomainId) {
        let mut st = self.state.borrow_mut();
        if let Some(info) = st.sites.domains.get_mut(&id) {
            info.inflight = info.inflight.saturating_sub(1);
        }
        Self::forget_domain_if_idle(&mut st, id);
        self.forget_routing_if_waiting(&mut st, id, now_unix_ms());
    }

    /// Forgets a domain with nothing queued that no rotation, connection or routing holds.
    pub(super) fn forget_domain_if_idle(st: &mut State, id: DomainId) {
        let held = st
            .sites
            .domains
            .get(&id)
            .is_some_and(|i| i.in_rotation || i.inflight > 0 || i.routing == Routing::Pending);
        if held || !st.queues.remove_if_idle(id) {
            return;
        }
        if let Some(DomainInfo {
            routing: Routing::Routed { site, .. },
            ..
        }) = st.sites.domains.remove(&id)
        {
            st.sites.unmap(site);
        }
    }
}

/// Routes domain `id` (`name`): resolves it, applies its MTA-STS policy, and assigns its site;
/// on failure its ready recipients are deferred or bounced with the reason.
async fn route_domain<S: SpoolAccess + 'static>(inner: Rc<Inner<S>>, id: DomainId, name: String) {
    let limits = inner.cfg.effective_limits(&name);
    let routed = match inner.resolver.route(&name).await {
        Err(e) => Err(RcptResult::resolve_error(&e)),
        Ok(route) => match mta_sts::route_under_policy(&inner, &name, &route, limits.tls).await {
            Ok(applied) => Ok((hop_key(&route), applied)),
            Err(refusal) => {
                let first_mx = route.hosts.first().map_or("", |h| h.name.as_str());
                let report = tls_rpt::session_policy(&inner, &name);
                tls_rpt::record_refusal(&inner, report.as_ref(), first_mx);
                Err(refusal.result())
            }
        },
    };
    let failed: Option<(Vec<Entry>, RcptResult)> = {
        let mut guard = inner.state.borrow_mut();
        let st: &mut State = &mut guard;
        st.sites.routing_tasks = st.sites.routing_tasks.saturating_sub(1);
        match routed {
            Ok((raw_hop, applied)) => {
                let own = has_own_limits(&inner.cfg, &name, &limits) || applied.enforced;
                let key = SiteKey {
                    hop: hop_key(&applied.route),
                    tls: applied.tls,
                    source: st.queues.source(id).unwrap_or(0),
                    own: own.then(|| Rc::from(name.as_str())),
                };
                let spec = site_spec(&inner, &name, own, &limits, applied.route, key.source);
                let site = st.sites.site_for(key, spec);
                if let Some(info) = st.sites.domains.get_mut(&id) {
                    info.routing = Routing::Routed {
                        site,
                        raw_hop,
                        at_unix_ms: now_unix_ms(),
                    };
                    info.inflight += 1; // until the driver has seen it routed
                } else {
                    st.sites.unmap(site);
                }
                None
            }
            Err(result) => {
                if let Some(info) = st.sites.domains.get_mut(&id) {
                    info.routing = Routing::Unrouted;
                    info.inflight += 1;
                }
                let entries = take_ready(st, id);
                Some((entries, result))
            }
        }
    };
    if let Some((entries, result)) = failed {
        fail_entries(&inner, entries, &Attempt::default(), result).await;
    }
    inner.batch_done(id);
    inner.wake();
}

/// A new site's route and limits. A shared site whose MX hosts all belong to one mailbox
/// provider of the shaping rules (`crate::shaping`; never a smart host) is shaped: its
/// connections and rates are the provider's, engine-wide, and so are its messages per
/// connection and (at most) its recipients per transaction.
fn site_spec<S: SpoolAccess>(
    inner: &Inner<S>,
    name: &str,
    own: bool,
    limits: &DomainLimits,
    route: Arc<Route>,
    source: u16,
) -> SiteSpec {
    if own {
        return SiteSpec {
            route,
            limits: limits.clone(),
            provider: None,
            shaped: None,
            provider_key: None,
        };
    }
    let mut limits = inner.cfg.default_limits.clone();
    let shaping = inner.cfg.current_shaping();
    let provider = if inner.resolver.static_route(name).is_some() {
        None
    } else {
        let hosts: Vec<&str> = route.hosts.iter().map(|h| h.name.as_str()).collect();
        shaping.provider_for(&hosts)
    };
    let shaped = provider.map(|p| shaping.limits(Some(p)));
    if let Some(s) = &shaped {
        limits.messages_per_connection_max = s.messages_per_connection_max;
        limits.recipients_per_transaction_max = limits
            .recipients_per_transaction_max
            .min(s.recipients_per_transaction_max);
    }
    let provider_key = provider.map(|p| format!("provider/{}/{source}", shaping.name(Some(p))));
    SiteSpec {
        route,
        limits,
        provider,
        shaped,
        provider_key,
    }
}

impl<S: SpoolAccess + 'static> Inner<S> {
    /// A negative reply at `site` to `tenant`'s mail (`None`: no tenant): when a throttle rule
    /// of the shaping matches it, the site (or the tenant there) is suspended, or its
    /// connections narrowed, for the rule's time; logged and counted. True when a rule matched.
    pub(super) fn observe_reply(
        &self,
        site: SiteId,
        tenant: Option<&str>,
        reply: &petrel_outbound::Reply,
    ) -> bool {
        if reply.is_positive() {
            return false;
        }
        let mut st = self.state.borrow_mut();
        let Some(s) = st.sites.sites.get_mut(&site) else {
            return false;
        };
        let parsed = petrel_bounce::Reply::new(reply.code, reply.enhanced, &reply.text);
        let shaping = self.cfg.current_shaping();
        let Some(action) = shaping.throttle_reply(s.provider, &parsed) else {
            return false;
        };
        self.limits
            .throttles()
            .apply(&s.counter_key, &action, tenant, now_unix_ms());
        let kind = match action.kind {
            ThrottleKind::Suspend => "suspend",
            ThrottleKind::Narrow { .. } => "narrow",
        };
        let provider = shaping.name(s.provider).to_string();
        let rule = shaping.rule_name(action.rule).to_string();
        tracing::warn!(
            site = %s.counter_key,
            provider,
            rule,
            action = kind,
            scope = ?action.scope,
            tenant,
            duration_ms = action.duration_ms,
            reply = %reply,
            "site throttled"
        );
        metrics::counter!(
            "petrel_delivery_site_throttles_total",
            "provider" => provider,
            "action" => kind
        )
        .increment(1);
        true
    }
}

/// Every ready entry of domain `id` (refilled from its due entries).
pub(super) fn take_ready(st: &mut State, id: DomainId) -> Vec<Entry> {
    let now = now_unix_ms();
    let mut all = Vec::new();
    loop {
        let batch = st.queues.pop_batch(id, usize::MAX, now);
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

#[path = "site_memory.rs"]
mod memory;
