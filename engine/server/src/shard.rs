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
use petrel_spool::{FileMode, Spool, SpoolConfig};

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
/// How often the backpressure figures and spool gauges are refreshed when nothing else does:
/// fresh enough for admission decisions, cheap enough to ignore.
const FIGURES_PUBLISH_MS: u64 = 100;

/// The shard's life: recover, listen, serve, drain.
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
    let (spool, recovery) = Spool::open_streaming(
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
        &mut |msg| {
            if let Some(d) = &delivery {
                d.enqueue(crate::ctx::queued_owned(
                    msg.id.0,
                    msg.envelope,
                    crate::ctx::for_delivery(msg.attribution, &attribution_values),
                    crate::dsn_params::for_delivery(msg.dsn),
                ));
            }
        },
    )
    .await?;
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
    let spool = Rc::new(spool);
    accessor.open(Rc::clone(&spool));
    let ctx = Rc::new(ShardCtx::new(
        &setup,
        Rc::clone(&spool),
        delivery.clone(),
        attribution_values,
    ));
    let recovered = recovery.messages_recovered;
    ctx.publish_figures();
    tracing::info!(shard, recovered, "spool recovered");

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
    let delivery_task = delivery.clone().map(|d| {
        glommio::spawn_local_into(async move { d.run().await }, delivery_tq).map(|t| t.detach())
    });
    // Not detached: dropping these tasks at shutdown cancels them.
    let figures = glommio::spawn_local(publish_loop(Rc::clone(&ctx)));
    let admin = glommio::spawn_local(admin_loop(Rc::clone(&ctx), setup.admin.clone()));

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
    // The other listeners' loops end at once: they watch the same shutdown channel.
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

async fn admin_loop(ctx: Rc<ShardCtx>, rx: async_channel::Receiver<AdminRequest>) {
    while let Ok(req) = rx.recv().await {
        let reply = ctx.delivery.as_ref().map(|d| d.admin(req.command));
        let _ = req.reply.send(reply).await;
    }
}
