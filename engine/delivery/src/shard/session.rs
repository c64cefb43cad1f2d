//! One delivery session: resolve a destination domain, apply its MTA-STS policy (`mta_sts.rs`)
//! and, per MX host, DANE (`dane.rs`),
//! hold a connection permit, connect (falling back over MX hosts and addresses), send batches of
//! the domain's ready entries over the connection (reusing it across messages, reconnecting
//! after `messages_per_connection_max`), and QUIT once nothing has come for `idle_timeout_ms`.
//!
//! A connection is shared across domains that go to the same place: when its domain has no
//! ready work left, the session looks (at most [`ADOPT_CANDIDATES_MAX`] at a time) for a ready
//! domain of this shard that has no session, the same next hops (the same smart host, or the
//! same set of MX hosts, as for the thousands of domains hosted by one provider) and the same
//! TLS policy, takes that domain's connection permit, gives up its own, and carries on with it
//! over the open connection. Postfix does the same per next hop, KumoMTA per "site".

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use petrel_outbound::{ClientError, OutgoingMessage, Route, PIPELINE_TRANSACTIONS_MAX};

use super::connect::{client_config, connect, Connected, OpenGauge};
use super::mta_sts;
use super::outcome::{apply, fail_entries, Attempt, RcptResult};
use super::prepare::prepare;
use super::tls_rpt;
use super::{now_unix_ms, Inner, SpoolAccess};
use crate::config::{DeliveryConfig, DomainLimits};
use crate::limits::{rate_burst, ConnectionPermit, DestinationCounters};
use crate::queue::{DomainId, Entry};

/// How often an idle session looks for new work, ms.
/// Idle sessions are woken by the driver's work notification; this bounds a missed one.
const IDLE_POLL_MS_MAX: u64 = 200;

/// Ready domains examined at most each time a session looks for one to carry on with.
const ADOPT_CANDIDATES_MAX: usize = 8;

/// Ready domains examined at most each time a write to a smart host has room for the
/// transactions of other domains routed there.
const BORROW_CANDIDATES_MAX: usize = 32;

/// Runs a session for domain `id`, then tells the shard it ended (for the domain it served
/// last: a session may have moved on to other domains of the same next hop).
pub(super) async fn run_session<S: SpoolAccess + 'static>(
    inner: Rc<Inner<S>>,
    id: DomainId,
    hop: Option<HopKey>,
) {
    let mut hop = hop;
    let last = session(&inner, id, &mut hop).await;
    inner.session_ended(last, hop);
}

/// Identifies a next hop: the same host names with the same addresses, in any order (equal MX
/// preferences are shuffled per lookup). A hash, not the list: it is computed for ready domains
/// on every driver round. Two hops that collide only share one cap, a stricter bound.
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

/// The domain a session serves now, with its limits and connection permit.
struct Serving {
    id: DomainId,
    domain: String,
    limits: DomainLimits,
    permit: ConnectionPermit,
    /// The domain's MTA-STS policy is enforced: the connection carries no other domain.
    sts_enforced: bool,
}

/// The `domain` label of a destination's gauges: its name when the operator configured limits
/// for it (in the file or pushed), else `other`, so the number of series stays bounded by the
/// configuration however many domains mail goes to.
pub(super) fn metric_domain<'a>(
    cfg: &DeliveryConfig,
    domain: &'a str,
    limits: &DomainLimits,
) -> &'a str {
    if has_own_limits(cfg, domain, limits) {
        domain
    } else {
        OTHER_DOMAINS_LABEL
    }
}

/// The operator gave this destination limits of its own (in the file or pushed). Such a domain
/// keeps exactly those: it is not counted under its next hop's session cap, which bounds the
/// long tail of domains that share a smart host or an MX set.
pub(super) fn has_own_limits(cfg: &DeliveryConfig, domain: &str, limits: &DomainLimits) -> bool {
    cfg.domain_limits.contains_key(domain) || *limits != cfg.default_limits
}

/// The `domain` label shared by destinations without limits of their own.
const OTHER_DOMAINS_LABEL: &str = "other";

/// Serves domain `id` (and maybe others of the same next hop); returns the last one served.
/// `hop` is the next hop this session is counted under; set here once the route is resolved
/// when the driver could not know it.
async fn session<S: SpoolAccess + 'static>(
    inner: &Rc<Inner<S>>,
    id: DomainId,
    hop: &mut Option<HopKey>,
) -> DomainId {
    let Some(domain) = inner.state.borrow().queues.name(id).map(str::to_string) else {
        return id;
    };
    let limits = inner.cfg.effective_limits(&domain);
    let route = match inner.resolver.route(&domain).await {
        Ok(route) => route,
        Err(e) => {
            let result = RcptResult::resolve_error(&e);
            let entries = take_ready(inner, id, usize::MAX);
            fail_entries(inner, entries, &Attempt::default(), result).await;
            return id;
        }
    };
    if hop.is_none() && !has_own_limits(&inner.cfg, &domain, &limits) {
        let key = hop_key(&route);
        if !inner.hop_enter(key, siblings_open(inner, id) > 0) {
            // The next hop is full: a session of it carries this domain (its route is cached
            // now, so the driver does not start another session for it).
            return id;
        }
        *hop = Some(key);
    }
    // MTA-STS (RFC 8461): an enforced policy narrows the route to the MX hosts it names and
    // requires verified TLS; with none of them left, the domain's ready mail waits.
    let sts = match mta_sts::route_under_policy(inner, &domain, &route, limits.tls).await {
        Ok(applied) => applied,
        Err(refusal) => {
            let first_mx = route.hosts.first().map_or("", |h| h.name.as_str());
            let report = tls_rpt::session_policy(inner, &domain);
            tls_rpt::record_refusal(inner, report.as_ref(), first_mx);
            let entries = take_ready(inner, id, usize::MAX);
            fail_entries(inner, entries, &Attempt::default(), refusal.result()).await;
            return id;
        }
    };
    let route = sts.route;
    let counters = inner.limits.destination(&domain);
    let Some(permit) = ConnectionPermit::try_acquire(counters, limits.connections_max) else {
        // The limit is held by other shards or sibling sessions. With a sibling open on this
        // shard, it takes the ready entries: nothing to do. Otherwise they wait
        // `permit_retry_delay_ms` in the schedule, without an attempt counted. (Leaving them
        // ready would make the run loop respawn a session at once, a busy loop.)
        if siblings_open(inner, id) == 0 {
            let due = now_unix_ms().saturating_add(inner.cfg.permit_retry_delay_ms);
            inner.state.borrow_mut().queues.unready(id, due);
        }
        return id;
    };
    if sts.mode.is_none() {
        // A session with a permit, about to connect: the one place a missing policy is counted.
        let first_mx = route.hosts.first().map_or("", |h| h.name.as_str());
        tls_rpt::record_policy_fetch_failure(inner, &domain, first_mx);
    }
    let client = client_config(&inner.cfg, sts.tls);
    let mut cur = Serving {
        id,
        domain,
        limits,
        permit,
        sts_enforced: sts.enforced,
    };
    let mut conn: Option<Connected> = None;
    let mut offers_seen = inner.offer_round.get();
    while !inner.shutdown.get() {
        let batch = take_batch(inner, cur.id, &cur.limits);
        if batch.is_empty() {
            let Some(c) = conn.as_mut() else {
                break;
            };
            let mut next = adopt(inner, &cur, &route);
            if next.is_none() {
                match wait_for_work(inner, cur.id, &mut offers_seen).await {
                    Wake::Work => continue,
                    Wake::Done => break,
                    // Another domain of this shard needs a session slot: carry it on this
                    // connection when it goes to the same place, else give the slot up.
                    Wake::SlotWanted => {
                        next = adopt(inner, &cur, &route);
                        if next.is_none() {
                            break;
                        }
                    }
                    // New domains were offered to idle sessions: carry one if it fits, else
                    // go on waiting.
                    Wake::Offered => next = adopt(inner, &cur, &route),
                }
            }
            if let Some(next) = next {
                move_on(inner, c, &mut cur, next);
            }
            continue;
        }
        let (id, domain, limits) = (cur.id, cur.domain.as_str(), &cur.limits);
        if !wait_for_rate(inner, cur.permit.counters(), limits).await {
            // Shutting down: the batch stays queued in memory for the next run.
            requeue(inner, id, batch);
            break;
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
            let label = metric_domain(&inner.cfg, domain, limits);
            match connect(inner, &route, &client, domain, label).await {
                Ok(c) => conn = Some(c),
                Err((attempt, result)) => {
                    // The destination is unreachable: defer this batch and all ready work.
                    let mut entries = batch;
                    entries.extend(take_ready(inner, id, usize::MAX));
                    fail_entries(inner, entries, &attempt, result).await;
                    break;
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            let (batches, borrowed) = take_more(inner, &cur, &route, c, batch);
            let usable = deliver(inner, c, batches).await;
            for b in borrowed {
                inner.return_borrowed(b.id); // its permit is released here
            }
            if !usable {
                conn = None; // broken: dropped without QUIT
                continue;
            }
            // Take turns: while the next hop has all its sessions and another of its domains
            // waits without one, this session moves on to that domain after each write (its
            // own keeps its ready messages for the next turn), so a steady backlog of a few
            // domains never starves the rest.
            if hop.is_some_and(|h| inner.hop_is_full(h)) {
                if let (Some(c), Some(next)) = (conn.as_mut(), adopt(inner, &cur, &route)) {
                    move_on(inner, c, &mut cur, next);
                }
            }
        }
    }
    if let Some(c) = conn.take() {
        c.conn.quit().await;
    }
    cur.id
}

/// A ready domain of this shard without a session that the open connection can carry: the
/// same next hops and TLS policy, and a connection permit of its own. The shard's bookkeeping
/// moves the session over to it; `None` when there is none.
fn adopt<S: SpoolAccess + 'static>(
    inner: &Rc<Inner<S>>,
    cur: &Serving,
    route: &Route,
) -> Option<Serving> {
    for (id, domain) in ready_without_session(inner, cur.id, ADOPT_CANDIDATES_MAX) {
        let Some((limits, permit)) = carriable(inner, cur, route, &domain, |_| true) else {
            continue;
        };
        if inner.adopt_session(cur.id, id) {
            return Some(Serving {
                id,
                domain,
                limits,
                permit,
                sts_enforced: false, // `carriable` takes no domain with an enforced policy
            });
        }
    }
    None
}

/// Up to `max` ready domains of this shard, other than `except`, that no session serves.
fn ready_without_session<S: SpoolAccess>(
    inner: &Inner<S>,
    except: DomainId,
    max: usize,
) -> Vec<(DomainId, String)> {
    let st = inner.state.borrow();
    st.queues
        .ready_domains()
        .filter(|&d| d != except && st.sessions.get(&d).is_none_or(|c| c.open == 0))
        .filter_map(|d| Some((d, st.queues.name(d)?.to_string())))
        .take(max)
        .collect()
}

/// `domain`'s limits and a connection permit of its own, when the connection of `cur` may carry
/// it: the same TLS policy (a connection made under one policy never serves another), no
/// enforced MTA-STS policy on either side (`mta_sts::may_share`), limits that `accept` takes,
/// and the same next hops by a route known without a lookup (static, or fresh in the DNS cache;
/// a domain not resolved yet gets a session of its own, which resolves it).
fn carriable<S: SpoolAccess>(
    inner: &Inner<S>,
    cur: &Serving,
    route: &Route,
    domain: &str,
    accept: impl Fn(&DomainLimits) -> bool,
) -> Option<(DomainLimits, ConnectionPermit)> {
    if !mta_sts::may_share(inner, cur.sts_enforced, domain) {
        return None;
    }
    let limits = inner.cfg.effective_limits(domain);
    if limits.tls != cur.limits.tls || !accept(&limits) {
        return None;
    }
    let theirs = inner.resolver.known_route(domain)?;
    if !same_next_hops(route, &theirs) {
        return None;
    }
    let counters = inner.limits.destination(domain);
    let permit = ConnectionPermit::try_acquire(counters, limits.connections_max)?;
    Some((limits, permit))
}

/// The session carries on with `next` over its open connection (the previous domain's permit
/// is released when `cur` is replaced).
fn move_on<S: SpoolAccess>(inner: &Inner<S>, c: &mut Connected, cur: &mut Serving, next: Serving) {
    c._gauge = OpenGauge::new(metric_domain(&inner.cfg, &next.domain, &next.limits));
    *cur = next;
}

/// Two routes lead to the same place: the same host names with the same addresses, in any
/// order (equal MX preferences are shuffled per lookup).
fn same_next_hops(a: &Route, b: &Route) -> bool {
    if a == b {
        return true;
    }
    // Different keys: different places, without building the sorted lists below.
    if a.hosts.len() != b.hosts.len() || hop_key(a) != hop_key(b) {
        return false;
    }
    let key = |r: &Route| {
        let mut hosts: Vec<(String, Vec<SocketAddr>)> = r
            .hosts
            .iter()
            .map(|h| {
                let mut addrs = h.addrs.clone();
                addrs.sort();
                (h.name.clone(), addrs)
            })
            .collect();
        hosts.sort();
        hosts
    };
    key(a) == key(b)
}

/// Sends the batches over the connection (several transactions in one write when the peer
/// offers PIPELINING and CHUNKING) and applies each outcome. Returns false when the connection
/// is no longer usable.
async fn deliver<S: SpoolAccess + 'static>(
    inner: &Rc<Inner<S>>,
    c: &mut Connected,
    batches: Vec<(DomainId, Vec<Entry>)>,
) -> bool {
    let prepared = prepare(inner, batches).await;
    if prepared.is_empty() {
        return true;
    }
    let rcpt_refs: Vec<Vec<&str>> = prepared
        .iter()
        .map(|p| p.rcpts.iter().map(String::as_str).collect())
        .collect();
    let messages: Vec<OutgoingMessage<'_>> = prepared
        .iter()
        .zip(&rcpt_refs)
        .map(|(p, r)| OutgoingMessage {
            from: &p.from,
            rcpts: r,
            body: &p.body,
            dsn: p.dsn.as_ref().map(|d| d.outgoing()),
        })
        .collect();
    let reused = c.sent > 0;
    let started = Instant::now();
    let results = c.conn.send_many(&messages).await;
    let per_message = started.elapsed().as_secs_f64() / prepared.len() as f64;
    let attempt_seconds = metrics::histogram!("petrel_delivery_attempt_duration_seconds");
    c.sent = c
        .sent
        .saturating_add(u32::try_from(prepared.len()).unwrap_or(u32::MAX));
    let mut usable = true;
    // A connection lost in the middle of a transaction may have taken the replies of the
    // write's earlier transactions with it: no more multi-transaction writes to this host for
    // a while (`pipelining.rs`).
    if results.iter().any(|r| {
        matches!(
            r,
            Err(ClientError::Dropped { .. } | ClientError::Io(_) | ClientError::Timeout { .. })
        )
    }) {
        inner.drops.borrow_mut().note_drop(c.addr, Instant::now());
        metrics::counter!("petrel_delivery_pipeline_pauses_total").increment(1);
    }
    for (n, (p, sent)) in prepared.into_iter().zip(results).enumerate() {
        attempt_seconds.record(per_message);
        let mut attempt = Attempt {
            host: Some(c.host.clone()),
            addr: Some(c.addr),
            tls: c.tls.clone(),
            remote: true,
            no_dsn: false,
            // The next hop took DSN duty over only when it was given the parameters.
            next_hop_dsn: c.conn.offers_dsn() && p.dsn.is_some(),
        };
        let message_id = p.batch[0].message_id;
        let id = p.domain;
        let results: Vec<RcptResult> = match sent {
            Ok(outcome) => (0..p.batch.len())
                .map(|i| RcptResult::classify(&outcome, i, &inner.cfg.bounce_classifier))
                .collect(),
            Err(ClientError::Dropped { stage })
                if (reused || n > 0) && stage.is_before_transaction() =>
            {
                // The server closed the connection before this transaction began (idle, or an
                // earlier one in the same write failed): not an attempt. The batch goes back,
                // due now, for a fresh connection.
                requeue(inner, id, p.batch);
                usable = false;
                continue;
            }
            Err(e) => {
                attempt.remote = false;
                usable = false;
                let result = RcptResult::client_error(&e, &inner.cfg.bounce_classifier);
                vec![result; p.batch.len()]
            }
        };
        apply(
            inner,
            message_id,
            &p.batch,
            &results,
            &attempt,
            Some(p.body.as_slice()),
        )
        .await;
    }
    usable
}

/// A ready domain whose transactions ride in a write of another domain's session (same static
/// next hop and TLS policy); it holds the domain's connection permit until the write is done.
struct Borrowed {
    id: DomainId,
    _permit: ConnectionPermit,
}

/// More batches to send with `first` in one write, while the peer takes several transactions
/// at once and the connection has room left: first more of the domain's own (none when it has
/// a rate limit), then ready domains without a session whose known route (static, or fresh in
/// the DNS cache) has the same next hops and whose TLS policy is the same (each under its own
/// connection permit, none rate-limited), so a thousand small domains behind one relay or one
/// provider's MX hosts share a few full writes.
fn take_more<S: SpoolAccess + 'static>(
    inner: &Inner<S>,
    cur: &Serving,
    route: &Route,
    c: &Connected,
    first: Vec<Entry>,
) -> (Vec<(DomainId, Vec<Entry>)>, Vec<Borrowed>) {
    let (id, limits) = (cur.id, &cur.limits);
    let mut batches = vec![(id, first)];
    let mut borrowed = Vec::new();
    if !c.conn.can_send_many() || !inner.drops.borrow().may_pipeline(c.addr, Instant::now()) {
        return (batches, borrowed);
    }
    let room = limits.messages_per_connection_max.saturating_sub(c.sent) as usize;
    let want = PIPELINE_TRANSACTIONS_MAX.min(room.max(1));
    // A rate-limited domain sends one message per token; the write may still carry others.
    while batches.len() < want && limits.messages_per_second_max.is_none() {
        let b = take_batch(inner, id, limits);
        if b.is_empty() {
            break;
        }
        batches.push((id, b));
    }
    if batches.len() >= want {
        return (batches, borrowed);
    }
    for (other, domain) in ready_without_session(inner, id, BORROW_CANDIDATES_MAX) {
        if batches.len() >= want {
            break;
        }
        // Its messages-per-connection limit counts this connection's transactions so far, as
        // for a domain a session adopts.
        let sent = (c.sent as usize).saturating_add(batches.len());
        let quota =
            |l: &DomainLimits| (l.messages_per_connection_max as usize).saturating_sub(sent);
        let Some((theirs, permit)) = carriable(inner, cur, route, &domain, |l| {
            l.messages_per_second_max.is_none() && quota(l) > 0
        }) else {
            continue;
        };
        let quota = quota(&theirs);
        if !inner.borrow_domain(other) {
            continue;
        }
        borrowed.push(Borrowed {
            id: other,
            _permit: permit,
        });
        let mut taken = 0;
        while batches.len() < want && taken < quota {
            let b = take_batch(inner, other, &theirs);
            if b.is_empty() {
                break;
            }
            batches.push((other, b));
            taken += 1;
        }
    }
    (batches, borrowed)
}

/// Other sessions of domain `id` open on this shard (this one excluded).
fn siblings_open<S: SpoolAccess>(inner: &Inner<S>, id: DomainId) -> u32 {
    let st = inner.state.borrow();
    st.sessions.get(&id).map_or(0, |c| c.open.saturating_sub(1))
}

/// Up to `recipients_per_transaction_max` ready entries of one message.
fn take_batch<S: SpoolAccess>(inner: &Inner<S>, id: DomainId, limits: &DomainLimits) -> Vec<Entry> {
    let max = limits.recipients_per_transaction_max as usize;
    inner
        .state
        .borrow_mut()
        .queues
        .pop_batch(id, max, now_unix_ms())
}

/// Every ready entry of the domain (refilled from its due entries), at most `max`.
fn take_ready<S: SpoolAccess>(inner: &Inner<S>, id: DomainId, max: usize) -> Vec<Entry> {
    let mut st = inner.state.borrow_mut();
    let now = now_unix_ms();
    let mut all = Vec::new();
    while all.len() < max {
        let batch = st.queues.pop_batch(id, usize::MAX, now);
        if batch.is_empty() {
            break;
        }
        all.extend(batch);
    }
    all
}

/// Puts entries back into the domain's schedule, due now.
fn requeue<S: SpoolAccess>(inner: &Inner<S>, id: DomainId, entries: Vec<Entry>) {
    let mut st = inner.state.borrow_mut();
    let now = now_unix_ms();
    for e in entries {
        st.queues.schedule(
            id,
            Entry {
                due_unix_ms: now,
                ..e
            },
        );
    }
}

/// Why an idle session stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// Its domain has ready work.
    Work,
    /// Another domain of the shard waits for a session slot.
    SlotWanted,
    /// The shard offered ready domains to its idle sessions (a new offer since `offers_seen`).
    Offered,
    /// Nothing came within `idle_timeout_ms`, or the shard is shutting down.
    Done,
}

/// Waits (as an idle session) up to `idle_timeout_ms` for the domain to get ready work.
async fn wait_for_work<S: SpoolAccess>(
    inner: &Inner<S>,
    id: DomainId,
    offers_seen: &mut u64,
) -> Wake {
    set_idle(inner, id, true);
    let deadline = Instant::now() + Duration::from_millis(inner.cfg.idle_timeout_ms);
    let mut wake = Wake::Done;
    while Instant::now() < deadline && !inner.shutdown.get() {
        // Listen before looking, so a notification between the look and the wait is not lost.
        let listener = inner.work.listen();
        if inner.state.borrow().queues.ready_len(id) > 0 {
            wake = Wake::Work;
            break;
        }
        let wanted = inner.slots_wanted.get();
        if wanted > 0 {
            inner.slots_wanted.set(wanted - 1);
            // Another domain waits for a session slot of this shard: the session carries it
            // or gives its slot up now rather than after the idle timeout.
            wake = Wake::SlotWanted;
            break;
        }
        let round = inner.offer_round.get();
        if round != *offers_seen {
            *offers_seen = round;
            wake = Wake::Offered;
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let nap = left.min(Duration::from_millis(IDLE_POLL_MS_MAX));
        futures_lite::future::or(listener, glommio::timer::sleep(nap)).await;
    }
    set_idle(inner, id, false);
    wake
}

fn set_idle<S: SpoolAccess>(inner: &Inner<S>, id: DomainId, idle: bool) {
    let n = inner.sessions_idle.get();
    inner
        .sessions_idle
        .set(if idle { n + 1 } else { n.saturating_sub(1) });
    if let Some(c) = inner.state.borrow_mut().sessions.get_mut(&id) {
        c.idle = if idle {
            c.idle + 1
        } else {
            c.idle.saturating_sub(1)
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_destinations_with_their_own_limits_get_their_own_label() {
        let mut cfg = DeliveryConfig::default();
        let mut gmail = cfg.default_limits.clone();
        gmail.connections_max = 50;
        cfg.domain_limits.insert("gmail.com".into(), gmail.clone());
        assert_eq!(metric_domain(&cfg, "gmail.com", &gmail), "gmail.com");
        let defaults = cfg.default_limits.clone();
        assert_eq!(metric_domain(&cfg, "tiny.example", &defaults), "other");
        // Limits pushed by the control plane (different from the defaults) count too.
        let mut pushed = defaults.clone();
        pushed.connections_max = 3;
        assert_eq!(
            metric_domain(&cfg, "pushed.example", &pushed),
            "pushed.example"
        );
    }
}
