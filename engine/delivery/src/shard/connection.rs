//! One connection of a site (`site.rs`): takes its writes from the site's rotation, connects
//! (falling back over the route's hosts and addresses, DANE per host: `connect.rs`), sends,
//! applies each outcome, reconnects after `messages_per_connection_max` transactions, and
//! QUITs once the site has had no work for `idle_timeout_ms` (or a site without a connection
//! wants its shard slot).
//!
//! A write is one transaction per domain per rotation turn, as many as the server takes at
//! once (PIPELINING and CHUNKING: up to `PIPELINE_TRANSACTIONS_MAX`, less for a host that
//! dropped a connection lately: `pipelining.rs`). The connection holds the connection permit
//! of the domain it carries first (engine-wide, `crate::limits`), and one permit for each other
//! domain of a write while the write lasts; a domain whose limit is reached elsewhere waits
//! its next turn. A rate-limited domain (an own site) sends one transaction per token.

use std::rc::Rc;
use std::time::{Duration, Instant};

use petrel_outbound::PIPELINE_TRANSACTIONS_MAX;

use super::connect::{client_config, connect, ConnectFailure, Connected};
use super::outcome::{fail_entries, Attempt, RcptResult};
use super::site::{take_ready, SiteId, ROTATION_LOOKS_MAX};
use super::tls_rpt;
use super::write::{deliver, requeue};
use super::{now_unix_ms, Inner, SpoolAccess, State, DAY_MS};
use crate::config::DomainLimits;
use crate::egress::{DailyCounts, Day, SourceId};
use crate::limits::{rate_burst, ConnectionPermit, DestinationCounters};
use crate::queue::{DomainId, Entry};
use crate::shaping::SiteLimits;

/// How often an idle connection looks for work without a notification (bounds a missed one).
const IDLE_POLL_MS_MAX: u64 = 200;

/// Runs a connection of `site` (already counted in the site's and the shard's connections),
/// then tells the shard it ended.
pub(super) async fn run_connection<S: SpoolAccess + 'static>(inner: Rc<Inner<S>>, site: SiteId) {
    connection(&inner, site).await;
    inner.connection_ended(site);
}

/// The domain a connection carries first, with its connection permit (by name: a domain's
/// lanes share its limits).
struct Held {
    domain: String,
    permit: ConnectionPermit,
}

/// One write's transactions, and the permits of its other domains.
#[derive(Default)]
struct Write {
    batches: Vec<(DomainId, Vec<Entry>)>,
    extra: Vec<(String, ConnectionPermit)>,
    /// The first domain is rate-limited: nothing else goes in this write.
    rate_limited: Option<DomainLimits>,
}

/// What the rotation gave.
enum Take {
    /// Nothing ready at the site.
    Nothing,
    /// Ready domains, none of which this connection may carry now (their connection limits
    /// are reached elsewhere).
    Blocked(Vec<DomainId>),
    /// A write with at least one transaction.
    Write,
}

fn take(empty: bool, blocked: Vec<DomainId>) -> Take {
    if !empty {
        Take::Write
    } else if blocked.is_empty() {
        Take::Nothing
    } else {
        Take::Blocked(blocked)
    }
}

async fn connection<S: SpoolAccess + 'static>(inner: &Rc<Inner<S>>, site_id: SiteId) {
    let Some((route, tls, limits, label, shaped, counter_key)) =
        inner.state.borrow().sites.sites.get(&site_id).map(|s| {
            (
                s.route.clone(),
                s.tls,
                s.limits.clone(),
                s.label.to_string(),
                s.shaped,
                s.counter_key.to_string(),
            )
        })
    else {
        return;
    };
    // A shaped site's connections count engine-wide against its provider's limit.
    let _site_permit = match &shaped {
        Some(s) => {
            let counters = inner.limits.destination(&counter_key);
            let Some(permit) = ConnectionPermit::try_acquire(counters, s.connections_max) else {
                let lanes = rotation(inner, site_id);
                park(inner, site_id, &lanes);
                return;
            };
            Some(permit)
        }
        None => None,
    };
    let site_rated = shaped
        .as_ref()
        .is_some_and(|s| s.messages_per_minute_max.is_some() || s.messages_per_hour_max.is_some());
    let source = inner
        .state
        .borrow()
        .sites
        .sites
        .get(&site_id)
        .map(|s| s.source());
    let client = client_config(
        &inner.cfg,
        tls,
        source.and_then(|i| inner.cfg.egress.sources().get(usize::from(i))),
    );
    let mut conn: Option<Connected> = None;
    let mut held: Option<Held> = None;
    let mut blocked_since: Option<Instant> = None;
    while !inner.shutdown.get() {
        let room = match conn.as_ref() {
            Some(_) if site_rated => 1, // one transaction per token
            Some(c) => write_room(inner, c, &limits),
            None => 1, // the server's extensions are not known yet
        };
        let mut write = Write::default();
        let blocked = fill(inner, site_id, &mut held, room, &mut write);
        match take(write.batches.is_empty(), blocked) {
            Take::Write => {}
            Take::Nothing => {
                if conn.is_none() || !wait_for_work(inner, site_id).await {
                    break;
                }
                continue;
            }
            Take::Blocked(domains) => {
                if conn.is_none() {
                    park(inner, site_id, &domains);
                    break;
                }
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(inner.cfg.idle_timeout_ms) {
                    break;
                }
                let nap = inner.cfg.permit_retry_delay_ms.clamp(1, IDLE_POLL_MS_MAX);
                glommio::timer::sleep(Duration::from_millis(nap)).await;
                continue;
            }
        };
        blocked_since = None;
        if let (Some(l), Some(h)) = (&write.rate_limited, &held) {
            if !wait_for_rate(inner, h.permit.counters(), l).await {
                // Shutting down: the batch stays queued in memory for the next run.
                put_back(inner, write);
                break;
            }
        }
        if let Some(s) = shaped.as_ref().filter(|_| site_rated) {
            if !wait_for_site_rate(inner, &counter_key, s).await {
                put_back(inner, write);
                break;
            }
        }
        if conn
            .as_ref()
            .is_some_and(|c| c.sent >= limits.messages_per_connection_max)
        {
            if let Some(c) = conn.take() {
                c.conn.quit().await;
            }
        }
        if conn.is_none() {
            let domain = first_domain(inner, &write);
            let first_mx = route.hosts.first().map_or("", |h| h.name.as_str());
            tls_rpt::record_policy_fetch_failure(inner, &domain, first_mx);
            match connect(inner, &route, &client, &domain, &label).await {
                Ok(c) => conn = Some(c),
                Err(ConnectFailure {
                    attempt,
                    result,
                    refusal,
                }) => {
                    let throttled = refusal.as_ref().is_some_and(|reply| {
                        let tenant = first_tenant(inner, &write);
                        inner.observe_reply(site_id, tenant.as_deref(), reply)
                    });
                    if throttled {
                        // "Too many connections" and the like: the site is narrowed or
                        // suspended; the write goes back unattempted.
                        put_back(inner, write);
                    } else if site_connections(inner, site_id) > 1 {
                        // The site's other connections are up: only this write failed.
                        let domains: Vec<DomainId> =
                            write.batches.iter().map(|(d, _)| *d).collect();
                        let entries = write.batches.into_iter().flat_map(|(_, b)| b).collect();
                        fail_entries(inner, entries, &attempt, result).await;
                        for d in domains {
                            inner.batch_done(d);
                        }
                    } else {
                        // The site is unreachable: this write and its ready work wait.
                        site_unreachable(inner, site_id, write, &attempt, result).await;
                    }
                    break;
                }
            }
            if let Some(c) = conn.as_ref().filter(|_| !site_rated) {
                // Now that the server's extensions are known, fill the write.
                let room = write_room(inner, c, &limits);
                fill(inner, site_id, &mut held, room, &mut write);
            }
        }
        let Some(c) = conn.as_mut() else {
            put_back(inner, write);
            break;
        };
        let domains: Vec<DomainId> = write.batches.iter().map(|(d, _)| *d).collect();
        let usable = deliver(inner, site_id, c, write.batches).await;
        drop(write.extra); // the other domains' permits
        for d in domains {
            inner.batch_done(d);
        }
        if !usable {
            conn = None; // broken: dropped without QUIT
        }
        if over_cap(inner, site_id) {
            break; // suspended, or narrowed below the connections it has
        }
    }
    if let Some(c) = conn.take() {
        c.conn.quit().await;
    }
}

/// Transactions the next write to `c` may hold.
fn write_room<S: SpoolAccess>(inner: &Inner<S>, c: &Connected, limits: &DomainLimits) -> usize {
    if !c.conn.can_send_many() || !inner.drops.borrow().may_pipeline(c.addr, Instant::now()) {
        return 1;
    }
    let room = limits.messages_per_connection_max.saturating_sub(c.sent) as usize;
    PIPELINE_TRANSACTIONS_MAX.min(room.max(1))
}

/// Fills `write` up to `room` transactions from the site's rotation, one batch per domain per
/// turn; the domains skipped for want of a connection permit. The write's first domain becomes
/// the connection's held one.
fn fill<S: SpoolAccess + 'static>(
    inner: &Inner<S>,
    site_id: SiteId,
    held: &mut Option<Held>,
    room: usize,
    write: &mut Write,
) -> Vec<DomainId> {
    let mut guard = inner.state.borrow_mut();
    let st: &mut State = &mut guard;
    let now = now_unix_ms();
    let mut blocked = Vec::new();
    let mut looks = 0;
    let mut taken = 0u64;
    let mut recheck = false;
    // A shaped site may allow fewer recipients per transaction than its domains.
    let site_rcpts = st
        .sites
        .sites
        .get(&site_id)
        .map_or(u32::MAX, |s| s.limits.recipients_per_transaction_max);
    while write.batches.len() < room
        && write.rate_limited.is_none()
        && looks < room + ROTATION_LOOKS_MAX
    {
        looks += 1;
        let Some(id) = st.sites.next_turn(site_id) else {
            break;
        };
        let Some(info) = st.sites.domains.get(&id) else {
            continue;
        };
        if !st.queues.is_ready(id) {
            // Emptied or suspended since it joined the rotation.
            if let Some(info) = st.sites.domains.get_mut(&id) {
                info.in_rotation = false;
            }
            Inner::<S>::forget_domain_if_idle(st, id);
            continue;
        }
        if now.saturating_sub(info.fit_checked_unix_ms) >= inner.cfg.route_recheck_ms {
            // A lane that never drains is checked again like one that comes back (limits,
            // weight, MTA-STS standing, route): it leaves the rotation and the driver, woken
            // below, routes it again in its next round.
            if let Some(info) = st.sites.domains.get_mut(&id) {
                info.in_rotation = false;
                info.turn_left = 0;
            }
            recheck = true;
            continue;
        }
        let limits = info.limits.clone();
        let capped = warmed_up(inner, st, id, now, taken);
        if capped.is_some() && to_another_source(inner, st, id, now) {
            // Its source sent its warm-up cap for today: its ready mail moved to another
            // source of the pool, whose lane joins that source's site.
            if let Some(info) = st.sites.domains.get_mut(&id) {
                info.in_rotation = false;
            }
            continue;
        }
        let wait = suspended_until(inner, st, site_id, id, now).or(capped);
        if let Some(until) = wait {
            // The site, or this lane's tenant there, was told to wait: its ready mail goes
            // back to the schedule until then, without an attempt.
            st.queues.unready(id, until);
            if let Some(info) = st.sites.domains.get_mut(&id) {
                info.in_rotation = false;
                info.turn_left = 0;
            }
            continue;
        }
        let first = write.batches.is_empty();
        let rate_limited = limits.messages_per_second_max.is_some();
        if rate_limited && !first {
            st.sites.requeue_turn(site_id, id);
            break; // it goes first in a write of its own
        }
        let Some(name) = st.queues.name(id) else {
            continue;
        };
        if !holds_permit(held, write, name) {
            let counters = match st.sites.domains.get(&id).and_then(|i| i.counters.clone()) {
                Some(c) => c,
                None => inner.limits.destination(name),
            };
            let Some(permit) = ConnectionPermit::try_acquire(counters, limits.connections_max)
            else {
                blocked.push(id);
                st.sites.requeue_turn(site_id, id);
                if blocked.len() > ROTATION_LOOKS_MAX {
                    break;
                }
                continue;
            };
            if first {
                // The connection carries this domain now; the one it held stays held for
                // this write if it is in it.
                let domain = name.to_string();
                if let Some(old) = held.replace(Held { domain, permit }) {
                    write.extra.push((old.domain, old.permit));
                }
            } else {
                write.extra.push((name.to_string(), permit));
            }
        }
        let batch = st.queues.pop_batch(
            id,
            limits.recipients_per_transaction_max.min(site_rcpts) as usize,
            now,
        );
        if batch.is_empty() {
            if let Some(info) = st.sites.domains.get_mut(&id) {
                info.in_rotation = false;
            }
            continue;
        }
        if let Some(info) = st.sites.domains.get_mut(&id) {
            info.inflight += 1;
            // A weighted tenant's lane takes `weight` batches per turn, then goes to the back.
            info.turn_left = match info.turn_left {
                0 => info.weight.saturating_sub(1),
                n => n - 1,
            };
            let more = info.turn_left > 0;
            if !st.queues.is_ready(id) {
                info.in_rotation = false;
                info.turn_left = 0;
            } else if more {
                st.sites.continue_turn(site_id, id);
            } else {
                st.sites.requeue_turn(site_id, id);
            }
        }
        // Counted when taken, so a warm-up cap holds exactly (an attempt counts); recorded
        // once per fill, below.
        taken += 1;
        write.batches.push((id, batch));
        if rate_limited {
            write.rate_limited = Some(limits);
        }
    }
    if let Some(source) = st.sites.sites.get(&site_id).map(|s| s.source()) {
        let day = Day::from_unix_ms(now);
        let source = SourceId::from_index(source);
        inner.cfg.egress.record_sent_n(source, day, taken);
    }
    drop(guard);
    if recheck {
        inner.wake();
    }
    blocked
}

/// Until when lane `id` waits at `site_id` under a throttle rule, if it does now.
fn suspended_until<S: SpoolAccess>(
    inner: &Inner<S>,
    st: &State,
    site_id: SiteId,
    id: DomainId,
    now: u64,
) -> Option<u64> {
    let site = st.sites.sites.get(&site_id)?;
    let tenant = st.queues.tenant(id).filter(|t| !t.is_empty());
    inner
        .limits
        .throttles()
        .suspended_until(&site.counter_key, tenant, now)
}

/// When lane `id`'s egress source has sent its warm-up cap for today: the start of tomorrow
/// (UTC), when its lane may go on.
/// `taken`: batches this write has taken already, not yet counted.
fn warmed_up<S: SpoolAccess>(
    inner: &Inner<S>,
    st: &State,
    id: DomainId,
    now: u64,
    taken: u64,
) -> Option<u64> {
    let source = SourceId::from_index(st.queues.source(id)?);
    let egress = &inner.cfg.egress;
    let today = Day::from_unix_ms(now);
    let cap = egress.daily_cap(source, today)?;
    if egress.counters().sent_today(source, today) + taken < cap {
        return None;
    }
    metrics::counter!("petrel_egress_warmup_waits_total").increment(1);
    Some(u64::from(today.next().0) * DAY_MS)
}

/// Moves lane `id`'s ready entries to another source of its tenant's pool that is below its
/// warm-up cap today (the messages go on from there, retries too); false when the pool has
/// none.
fn to_another_source<S: SpoolAccess + 'static>(
    inner: &Inner<S>,
    st: &mut State,
    id: DomainId,
    now: u64,
) -> bool {
    let (Some(domain), Some(tenant), Some(old)) = (
        st.queues.name(id).map(str::to_string),
        st.queues.tenant(id).map(str::to_string),
        st.queues.source(id),
    ) else {
        return false;
    };
    let egress = &inner.cfg.egress;
    let pool = inner.pool_of(Some(tenant.as_str()).filter(|t| !t.is_empty()));
    let Some(new) = egress.choose(pool, egress.counters(), Day::from_unix_ms(now)) else {
        return false;
    };
    let new = u16::try_from(new.index()).unwrap_or(0);
    if new == old {
        return false;
    }
    let entries = take_ready(st, id);
    let lane = st.queues.queue_id(&domain, &tenant, new);
    for e in entries {
        if let Some(m) = st.messages.get_mut(e.message_id) {
            m.source = new;
        }
        st.queues.schedule(
            lane,
            Entry {
                due_unix_ms: now,
                ..e
            },
        );
    }
    metrics::counter!("petrel_egress_source_moves_total").increment(1);
    true
}

/// The site is suspended, or has more connections than it may have now: this one ends.
fn over_cap<S: SpoolAccess>(inner: &Inner<S>, site_id: SiteId) -> bool {
    let now = now_unix_ms();
    let st = inner.state.borrow();
    st.sites.sites.get(&site_id).is_some_and(|s| {
        let throttles = inner.limits.throttles();
        throttles
            .site_suspended_until(&s.counter_key, now)
            .is_some()
            || s.connections > s.cap(&inner.cfg, &inner.limits, now)
    })
}

/// Connections of the site on this shard (this one included).
fn site_connections<S: SpoolAccess>(inner: &Inner<S>, site_id: SiteId) -> usize {
    inner
        .state
        .borrow()
        .sites
        .sites
        .get(&site_id)
        .map_or(0, |s| s.connections)
}

/// The lanes in the site's rotation now.
fn rotation<S: SpoolAccess>(inner: &Inner<S>, site_id: SiteId) -> Vec<DomainId> {
    let st = inner.state.borrow();
    st.sites
        .sites
        .get(&site_id)
        .map(|s| s.rotation.iter().collect())
        .unwrap_or_default()
}

/// The tenant of the write's first transaction (`None`: no tenant).
fn first_tenant<S: SpoolAccess>(inner: &Inner<S>, write: &Write) -> Option<String> {
    let st = inner.state.borrow();
    let (id, _) = write.batches.first()?;
    st.queues
        .tenant(*id)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// Whether the connection already holds a permit for `domain` (held, or taken for this write).
fn holds_permit(held: &Option<Held>, write: &Write, domain: &str) -> bool {
    held.as_ref().is_some_and(|h| h.domain == domain)
        || write.extra.iter().any(|(d, _)| d == domain)
}

/// A new connection found nothing it may carry: when it is the site's only connection on this
/// shard, the blocked domains' ready work waits `permit_retry_delay_ms` in the schedule,
/// without an attempt counted (left ready, the driver would start a connection for it again
/// at once: a busy loop). With another connection open, that one takes the work.
fn park<S: SpoolAccess>(inner: &Inner<S>, site_id: SiteId, domains: &[DomainId]) {
    let mut guard = inner.state.borrow_mut();
    let st: &mut State = &mut guard;
    if st
        .sites
        .sites
        .get(&site_id)
        .is_none_or(|s| s.connections > 1)
    {
        return;
    }
    let due = now_unix_ms().saturating_add(inner.cfg.permit_retry_delay_ms);
    for id in domains {
        st.queues.unready(*id, due);
        st.sites.leave_rotation(*id, site_id);
    }
}

/// The name of the write's first domain.
fn first_domain<S: SpoolAccess>(inner: &Inner<S>, write: &Write) -> String {
    let st = inner.state.borrow();
    write
        .batches
        .first()
        .and_then(|(id, _)| st.queues.name(*id))
        .unwrap_or_default()
        .to_string()
}

/// Connecting failed: the write and every ready recipient of the site's rotation get the
/// failure (the next hop is the same for all of them).
async fn site_unreachable<S: SpoolAccess + 'static>(
    inner: &Rc<Inner<S>>,
    site_id: SiteId,
    write: Write,
    attempt: &Attempt,
    result: RcptResult,
) {
    let mut entries = Vec::new();
    let mut domains: Vec<DomainId> = Vec::new();
    for (id, batch) in write.batches {
        entries.extend(batch);
        domains.push(id);
    }
    {
        let mut guard = inner.state.borrow_mut();
        let st: &mut State = &mut guard;
        while let Some(id) = st.sites.next_turn(site_id) {
            if let Some(info) = st.sites.domains.get_mut(&id) {
                info.in_rotation = false;
                info.inflight += 1;
            }
            entries.extend(take_ready(st, id));
            domains.push(id);
        }
    }
    fail_entries(inner, entries, attempt, result).await;
    for d in domains {
        inner.batch_done(d);
    }
}

/// Puts a write's batches back into their domains' schedules, due now.
fn put_back<S: SpoolAccess + 'static>(inner: &Inner<S>, write: Write) {
    for (id, batch) in write.batches {
        requeue(inner, id, batch);
        inner.batch_done(id);
    }
}

/// Waits (as an idle connection) up to `idle_timeout_ms` for work at the site; false when
/// none came, the shard is shutting down, or a site without a connection wants the slot.
async fn wait_for_work<S: SpoolAccess>(inner: &Inner<S>, site_id: SiteId) -> bool {
    let Some(work) = set_idle(inner, site_id, true) else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_millis(inner.cfg.idle_timeout_ms);
    let mut found = false;
    while Instant::now() < deadline && !inner.shutdown.get() {
        // Listen before looking, so a notification between the look and the wait is not lost.
        let listener = work.listen();
        let has_work = inner
            .state
            .borrow()
            .sites
            .sites
            .get(&site_id)
            .is_some_and(|s| !s.rotation.is_empty());
        if has_work {
            found = true;
            break;
        }
        let wanted = inner.slots_wanted.get();
        if wanted > 0 {
            inner.slots_wanted.set(wanted - 1);
            break; // another site waits for a slot of this shard
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let nap = left.min(Duration::from_millis(IDLE_POLL_MS_MAX));
        futures_lite::future::or(listener, glommio::timer::sleep(nap)).await;
    }
    set_idle(inner, site_id, false);
    found
}

/// Counts the connection in (or out of) its site's idle ones; the site's work event.
fn set_idle<S: SpoolAccess>(
    inner: &Inner<S>,
    site_id: SiteId,
    idle: bool,
) -> Option<Rc<event_listener::Event>> {
    let mut st = inner.state.borrow_mut();
    let site = st.sites.sites.get_mut(&site_id)?;
    site.idle = if idle {
        site.idle + 1
    } else {
        site.idle.saturating_sub(1)
    };
    Some(site.work.clone())
}

/// Waits for a token of the shaped site's per-minute and per-hour rates; false if shutting
/// down meanwhile.
async fn wait_for_site_rate<S: SpoolAccess>(inner: &Inner<S>, key: &str, s: &SiteLimits) -> bool {
    loop {
        let now = Instant::now();
        match inner.limits.site_rates().try_take(
            key,
            s.messages_per_minute_max,
            s.messages_per_hour_max,
            now,
        ) {
            Ok(()) => return true,
            Err(wait) => {
                if inner.shutdown.get() {
                    return false;
                }
                glommio::timer::sleep(wait.clamp(Duration::from_millis(1), Duration::from_secs(1)))
                    .await;
            }
        }
    }
}

/// Waits for a rate token of the destination; false if shutting down meanwhile.
async fn wait_for_rate<S: SpoolAccess>(
    inner: &Inner<S>,
    counters: &DestinationCounters,
    limits: &DomainLimits,
) -> bool {
    let Some(rate) = limits.messages_per_second_max else {
        return true;
    };
    loop {
        match inner.limits.try_rate(counters, rate, rate_burst(rate)) {
            Ok(()) => return true,
            Err(wait) => {
                if inner.shutdown.get() {
                    return false;
                }
                glommio::timer::sleep(wait.clamp(Duration::from_millis(1), Duration::from_secs(1)))
                    .await;
            }
        }
    }
}
