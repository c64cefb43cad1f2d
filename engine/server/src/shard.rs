//! One shard: a glommio executor that owns its listeners (SO_REUSEPORT: `smtp.listen`, each
//! `[[smtp.listeners]]` entry with its profile, the intake), a spool and its queues.
//!
//! A message never crosses shards: the shard that accepted it spools it, queues it and delivers
//! it. Engine-wide limits (connections, per-destination rates) are shared atomics, not messages
//! between shards, so one huge destination is delivered by every core at once.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use glommio::net::{TcpListener, TcpStream};
use glommio::{Latency, Shares, TaskQueueHandle};
use petrel_delivery::memory::SharedInterner;
use petrel_delivery::DeliveryShard;
use petrel_delivery::{AdminCommand, AdminReply};
use petrel_spool::{Backlog, FileMode, Spool, SpoolConfig};

use crate::admin::AdminRequest;
use crate::config::ListenerProfile;
use crate::ctx::{ShardCtx, ShardSetup};
use crate::error::EngineError;
use crate::metrics as m;
use crate::spool_access::SpoolAccessor;

/// CPU shares of the ingress task queue (SMTP sessions). Twice delivery's: a client waits on
/// every reply, and the 250 after DATA is what senders measure us by, while delivery is
/// throughput-bound and loses nothing by running a little later.
const INGRESS_SHARES: usize = 1000;
/// How soon glommio must preempt other queues for ingress: SMTP replies are small and frequent,
/// so a millisecond keeps a pipelined dialogue from waiting behind a delivery batch.
const INGRESS_LATENCY_MS: u64 = 1;
/// CPU shares of the delivery task queue: half of ingress's (see [`INGRESS_SHARES`]), enough to
/// keep outbound sessions busy when ingress is idle, since shares only bite under contention.
const DELIVERY_SHARES: usize = 500;
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin
/// while the condition lasts.
const ACCEPT_RETRY_MS: u64 = 10;
/// How often the drain checks whether every session has ended during the grace period.
const DRAIN_POLL_MS: u64 = 20;
/// How long sessions get to notice the cut (reply 421 and close) after the grace period.
const CUT_BOUND_MS: u64 = 2_000;
/// How often the drain checks for sessions still open after the cut.
const CUT_POLL_MS: u64 = 10;
/// CPU shares of the task queue that requeues the spool's backlog after a start: delivery's,
/// so under load it gets a third of the shard beside ingress and delivery, and all of it idle.
const RECOVERY_SHARES: usize = DELIVERY_SHARES;
/// How often the backpressure figures and spool gauges are refreshed when nothing else does:
/// fresh enough for admission decisions, cheap enough to ignore.
const FIGURES_PUBLISH_MS: u64 = 100;

/// The shard's life: open the spool, listen and serve while its backlog is requeued, drain.
pub async fn run(setup: ShardSetup) -> Result<(), EngineError> {
    let shard = setup.shard;
    let cfg = Arc::clone(&setup.cfg);
    // Delivery first, its spool given once open: recovery hands each message straight to its
    // queues, a segment at a time (issue 17: the compact form, never every envelope at once).
    let accessor = Rc::new(SpoolAccessor::unopened());
    let delivery = setup.delivery.as_ref().map(|d| {
        let delivery = DeliveryShard::new(
            shard as u8,
            Arc::clone(&d.config),
            d.resolver.clone(),
            d.mta_sts.clone(),
            Arc::clone(&d.limits),
            Rc::clone(&accessor),
            d.events.clone(),
        );
        if let Some(r) = d.tls_rpt.get(shard) {
            delivery.set_tls_rpt(r.clone());
        }
        Rc::new(delivery)
    });
    let attribution_values = RefCell::new(SharedInterner::default());
    // Issue 17: the shard listens once the spool knows its next id and has a fresh segment;
    // the messages already spooled are requeued meanwhile (`requeue_backlog`).
    let opened = Instant::now();
    let (spool, backlog) = Spool::open_early(
        SpoolConfig {
            root: cfg.server.data_dir.join("spool"),
            shard: shard as u8,
            segment_size_max_bytes: cfg.spool.segment_size_max_bytes,
            fsync: cfg.spool.fsync,
            body_cache_bytes_max: cfg.spool.body_cache_bytes_max,
            commit_window_us: cfg.spool.commit_window_us,
            keys: setup.policy.keys().cloned(),
        },
        FileMode::default(),
    )
    .await?;
    let spool = Rc::new(spool);
    accessor.open(Rc::clone(&spool));
    let ctx = Rc::new(ShardCtx::new(
        &setup,
        Rc::clone(&spool),
        delivery.clone(),
        attribution_values,
    ));
    ctx.publish_figures();
    tracing::info!(
        shard,
        segments = backlog.segments(),
        "spool open; requeueing what it holds"
    );

    let ingress_tq = glommio::executor().create_task_queue(
        Shares::Static(INGRESS_SHARES),
        Latency::Matters(Duration::from_millis(INGRESS_LATENCY_MS)),
        "ingress",
    );
    let delivery_tq = glommio::executor().create_task_queue(
        Shares::Static(DELIVERY_SHARES),
        Latency::NotImportant,
        "delivery",
    );
    let recovery_tq = glommio::executor().create_task_queue(
        Shares::Static(RECOVERY_SHARES),
        Latency::NotImportant,
        "recovery",
    );
    let delivery_task = delivery.clone().map(|d| {
        glommio::spawn_local_into(async move { d.run().await }, delivery_tq).map(|t| t.detach())
    });
    // Closed when the backlog is requeued (or its task ends otherwise): see `admin_loop`.
    let (requeued_tx, requeued_rx) = async_channel::bounded::<()>(1);
    let requeue = glommio::spawn_local_into(
        requeue_backlog(Rc::clone(&ctx), backlog, requeued_tx, opened),
        recovery_tq,
    )
    .map_err(|e| EngineError::Io(e.into()))?;
    // Not detached: dropping these tasks at shutdown cancels them.
    let figures = glommio::spawn_local(publish_loop(Rc::clone(&ctx)));
    let admin = glommio::spawn_local(admin_loop(
        Rc::clone(&ctx),
        setup.admin.clone(),
        requeued_rx,
    ));

    // A failure here reaches start-up through the shard thread's error report (engine.rs).
    let listener = bind(setup.listen)?;
    let local = listener.local_addr().unwrap_or(setup.listen);
    // `[[smtp.listeners]]`: each on its own port, every shard (SO_REUSEPORT), its own profile.
    let mut profiled = Vec::with_capacity(setup.listeners.len());
    for &(profile, addr) in &setup.listeners {
        let task = accept_loop(
            Rc::clone(&ctx),
            bind(addr)?,
            profile,
            setup.shutdown.clone(),
            ingress_tq,
        );
        profiled.extend(glommio::spawn_local_into(task, ingress_tq).ok());
    }
    // The return-path intake, when configured: its own port, the same shards (SO_REUSEPORT).
    let intake = match &setup.intake {
        Some(shared) => {
            let task = crate::intake_session::listen(
                Rc::clone(&ctx),
                Arc::clone(shared),
                bind(shared.listen)?,
                setup.shutdown.clone(),
            );
            glommio::spawn_local_into(task, ingress_tq).ok()
        }
        None => None,
    };
    let _ = setup.ready.send(Ok(local));

    accept_loop(
        Rc::clone(&ctx),
        listener,
        ListenerProfile::Relay,
        setup.shutdown.clone(),
        ingress_tq,
    )
    .await;

    // Drain: stop accepting, let sessions finish within the grace period, flush the spool.
    // The other listeners' loops end at once: they watch the same shutdown channel. A backlog
    // still being requeued stops here; the next start reads it again.
    requeue.cancel().await;
    if let Some(t) = intake {
        t.await;
    }
    for t in profiled {
        t.await;
    }
    let grace = Instant::now() + Duration::from_millis(cfg.server.shutdown_grace_ms);
    while ctx.sessions_open() > 0 && Instant::now() < grace {
        glommio::timer::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
    }
    ctx.cut_sessions();
    let cut_bound = Instant::now() + Duration::from_millis(CUT_BOUND_MS);
    while ctx.sessions_open() > 0 && Instant::now() < cut_bound {
        glommio::timer::sleep(Duration::from_millis(CUT_POLL_MS)).await;
    }
    if let Some(d) = &delivery {
        d.shutdown();
    }
    if let Some(Ok(t)) = delivery_task {
        let bound = Duration::from_millis(cfg.server.shutdown_grace_ms);
        let _ = t
            .or(async {
                glommio::timer::sleep(bound).await;
                None
            })
            .await;
    }
    drop(figures);
    drop(admin);
    drop(delivery);
    let open = ctx.sessions_open();
    drop(ctx);
    match Rc::try_unwrap(spool) {
        Ok(s) => s.close().await?,
        Err(_) => tracing::warn!(
            shard,
            open,
            "spool still referenced at shutdown; synced by its last commit"
        ),
    }
    tracing::info!(shard, "shard stopped");
    Ok(())
}

/// Binds one of the shard's listening sockets (glommio sets SO_REUSEPORT: every shard binds
/// the same address and the kernel spreads the connections).
fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, EngineError> {
    TcpListener::bind(addr).map_err(|e| EngineError::Listen {
        addr,
        source: e.into(),
    })
}

/// Accepts on `listener` until shutdown; each admitted connection gets a session with
/// `profile` on the ingress queue, a refused one its `421` and a close.
async fn accept_loop(
    ctx: Rc<ShardCtx>,
    listener: TcpListener,
    profile: ListenerProfile,
    shutdown: async_channel::Receiver<()>,
    ingress_tq: TaskQueueHandle,
) {
    let shard = ctx.shard;
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                let _ = shutdown.recv().await;
                None
            })
            .await;
        let Some(accepted) = accepted else { break };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(shard, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        match ctx.pressure.admit_connection(peer.ip()) {
            Ok(permit) => {
                metrics::counter!(m::CONNECTIONS_TOTAL, "result" => "accepted").increment(1);
                let c = Rc::clone(&ctx);
                let spawned = glommio::spawn_local_into(
                    async move {
                        c.session_started();
                        metrics::gauge!(m::CONNECTIONS_OPEN).increment(1.0);
                        let r = std::panic::AssertUnwindSafe(crate::session::run(
                            Rc::clone(&c),
                            stream,
                            peer,
                            profile,
                        ))
                        .catch_unwind()
                        .await;
                        if r.is_err() {
                            metrics::counter!(m::SESSION_PANICS_TOTAL).increment(1);
                            tracing::error!(shard = c.shard, %peer, "session panicked; shard continues");
                        }
                        metrics::gauge!(m::CONNECTIONS_OPEN).decrement(1.0);
                        c.session_ended();
                        drop(permit);
                    },
                    ingress_tq,
                );
                if let Ok(t) = spawned {
                    t.detach();
                }
            }
            Err(refusal) => {
                metrics::counter!(m::CONNECTIONS_TOTAL, "result" => refusal.reason()).increment(1);
                glommio::spawn_local(refuse(stream, refusal)).detach();
            }
        }
    }
}

async fn refuse(mut stream: TcpStream, refusal: crate::pressure::Refusal) {
    use futures_lite::io::AsyncWriteExt;
    let mut line = Vec::with_capacity(64);
    refusal.reply().write_to(&mut line);
    let _ = stream.write_all(&line).await;
    let _ = stream.close().await;
}

/// Feeds the spool's group-commit rounds since the last call to their histograms.
fn publish_sync_rounds(ctx: &ShardCtx) {
    let shard = ctx.shard.to_string();
    let seconds = metrics::histogram!(m::SPOOL_SYNC_SECONDS, "shard" => shard.clone());
    let writers = metrics::histogram!(m::SPOOL_COMMIT_GROUP_SIZE, "shard" => shard.clone());
    let dropped = ctx.spool.drain_sync_samples(|round| {
        seconds.record(round.duration.as_secs_f64());
        writers.record(round.writers as f64);
    });
    // Incremented by 0 too, so the series exists from the shard's start.
    metrics::counter!(m::SPOOL_SYNC_SAMPLES_DROPPED_TOTAL, "shard" => shard).increment(dropped);
}

/// Keeps the backpressure figures and gauges fresh even when nothing is being accepted.
async fn publish_loop(ctx: Rc<ShardCtx>) {
    let mut was_healthy = true;
    loop {
        ctx.publish_figures();
        let s = ctx.spool.stats();
        metrics::gauge!(m::SPOOL_MESSAGES, "shard" => ctx.shard.to_string()).set(s.messages as f64);
        metrics::gauge!(m::SPOOL_BYTES, "shard" => ctx.shard.to_string()).set(s.bytes as f64);
        metrics::gauge!(m::SPOOL_INDEX_MEMORY_BYTES, "shard" => ctx.shard.to_string())
            .set(s.index_memory_bytes as f64);
        metrics::gauge!(m::SPOOL_BODY_CACHE_BYTES, "shard" => ctx.shard.to_string())
            .set(s.body_cache_bytes as f64);
        publish_sync_rounds(&ctx);
        // Asking also arms the spool's probe, so an idle shard heals too.
        let unhealthy = ctx.spool.unhealthy_reason();
        if unhealthy.is_none() != was_healthy {
            was_healthy = unhealthy.is_none();
            match unhealthy {
                Some(reason) => tracing::error!(
                    shard = ctx.shard,
                    reason,
                    "spool unhealthy: refusing new mail with 452 4.3.1"
                ),
                None => tracing::warn!(shard = ctx.shard, "spool healthy again: taking new mail"),
            }
        }
        metrics::gauge!(m::SPOOL_HEALTHY, "shard" => ctx.shard.to_string())
            .set(f64::from(u8::from(was_healthy)));
        glommio::timer::sleep(Duration::from_millis(FIGURES_PUBLISH_MS)).await;
    }
}

/// Answers the admin endpoint's and the erasure's commands. While the backlog is requeued the
/// queues hold only part of the shard's mail, so a listing answers at once (what is queued so
/// far), a tenant purge answers that every tenant still has mail here (the erasure asks again
/// a second later, and destroys no key before the backlog is in the queues), and a command
/// that acts on a domain's queued mail waits until every message is queued.
async fn admin_loop(
    ctx: Rc<ShardCtx>,
    rx: async_channel::Receiver<AdminRequest>,
    requeued: async_channel::Receiver<()>,
) {
    while let Ok(req) = rx.recv().await {
        let during = (!requeued.is_closed()).then(|| while_requeueing(&req.command));
        let reply = match (during, req.command) {
            (Some(Requeueing::Refuse), AdminCommand::PurgeTenants(purges)) => {
                ctx.delivery.as_ref().map(|_| AdminReply::Purged {
                    recipients: 0,
                    remaining: purges.into_iter().map(|p| p.tenant_id).collect(),
                })
            }
            (Some(Requeueing::Wait), command) => {
                // Returns once the channel is closed: the backlog's task has ended.
                let _ = requeued.recv().await;
                ctx.delivery.as_ref().map(|d| d.admin(command))
            }
            (_, command) => ctx.delivery.as_ref().map(|d| d.admin(command)),
        };
        let _ = req.reply.send(reply).await;
    }
}

/// What an admin command gets while the backlog is requeued (see [`admin_loop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requeueing {
    /// Answered now, from what is queued so far.
    Answer,
    /// A tenant purge: every tenant still has mail here, ask again.
    Refuse,
    /// Applied once every message is queued.
    Wait,
}

fn while_requeueing(command: &AdminCommand) -> Requeueing {
    match command {
        AdminCommand::Ls => Requeueing::Answer,
        AdminCommand::PurgeTenants(_) => Requeueing::Refuse,
        AdminCommand::Suspend(_)
        | AdminCommand::Resume(_)
        | AdminCommand::Retry(_)
        | AdminCommand::Bounce(_) => Requeueing::Wait,
    }
}

/// Requeues the spool's backlog (the segments [`Spool::open_early`] left unread), a segment at
/// a time, then reports the recovery. On the recovery task queue; cancelled by the drain.
async fn requeue_backlog(
    ctx: Rc<ShardCtx>,
    backlog: Backlog,
    requeued: async_channel::Sender<()>,
    opened: Instant,
) {
    let shard = ctx.shard;
    let gauge = metrics::gauge!(m::SPOOL_RECOVERING, "shard" => shard.to_string());
    gauge.set(1.0);
    let delivery = ctx.delivery.clone();
    let attribution_values = ctx.attribution_values();
    // The callback's body is the one recovery ran before the shard listened, when the
    // interner was a local; here it is the context's, a reference already.
    #[allow(clippy::needless_borrow)]
    let result = backlog
        .run(&mut |msg| {
            if let Some(d) = &delivery {
                // The attribution stays in the spool record: delivery keeps the tenant alone,
                // as it does for a live message once it waits for a retry (issue 17).
                let attribution = crate::ctx::spooled_attribution(
                    msg.attribution,
                    d.wants_accepted_events(),
                    &attribution_values,
                );
                d.enqueue(crate::ctx::queued_owned(
                    msg.id.0,
                    msg.envelope,
                    attribution,
                    crate::dsn_params::for_delivery(msg.dsn),
                ));
            }
        })
        .await;
    gauge.set(0.0);
    drop(requeued);
    ctx.publish_figures();
    if let Some(d) = &ctx.delivery {
        // Delivery refreshes its gauges every few seconds, and first did so with part of the
        // backlog queued: the depth is made current the moment all of it is.
        metrics::gauge!("petrel_queue_depth", "shard" => shard.to_string())
            .set(d.queued_recipients() as f64);
    }
    let recovery = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(
                shard,
                error = %e,
                "spool recovery failed: refusing new mail until a restart reads the spool again"
            );
            return;
        }
    };
    if recovery.messages_shredded > 0 {
        tracing::info!(
            shard,
            messages = recovery.messages_shredded,
            "spool recovery dropped messages whose data key was destroyed (deleted tenants)"
        );
    }
    if recovery.records_skipped > 0 {
        tracing::warn!(
            shard,
            records = recovery.records_skipped,
            bytes = recovery.bytes_skipped,
            "spool recovery skipped torn or corrupt records"
        );
        metrics::counter!(m::SPOOL_RECOVERY_SKIPPED_TOTAL).increment(recovery.records_skipped);
    }
    tracing::info!(
        shard,
        recovered = recovery.messages_recovered,
        elapsed_ms = opened.elapsed().as_millis() as u64,
        "spool recovered"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_delivery::TenantPurge;

    #[test]
    fn while_the_backlog_is_requeued_only_listings_answer_at_once() {
        let d = || "a.test".to_string();
        assert_eq!(while_requeueing(&AdminCommand::Ls), Requeueing::Answer);
        let purge = AdminCommand::PurgeTenants(vec![TenantPurge {
            tenant_id: "t".into(),
            bounce: true,
        }]);
        assert_eq!(while_requeueing(&purge), Requeueing::Refuse);
        for c in [
            AdminCommand::Suspend(d()),
            AdminCommand::Resume(d()),
            AdminCommand::Retry(d()),
            AdminCommand::Bounce(d()),
        ] {
            assert_eq!(while_requeueing(&c), Requeueing::Wait, "{c:?}");
        }
    }
}
