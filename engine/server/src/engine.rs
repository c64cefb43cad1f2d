//! Start-up and shutdown: the slow-path thread (tokio: metrics, admin, DNS, control-plane link)
//! and one glommio executor per shard.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use crate::admin::AdminRequest;
use crate::auth::Authenticator;
use crate::config::EngineConfig;
use crate::ctx::ShardSetup;
use crate::error::EngineError;
use crate::pressure::Pressure;

/// Per-shard admin requests waiting, at most.
const ADMIN_CHANNEL_CAPACITY: usize = 64;
/// How long start-up waits for every shard to recover its spool and listen.
const SHARD_READY_TIMEOUT: Duration = Duration::from_secs(300);
/// io_uring registered buffer memory per shard (RLIMIT_MEMLOCK may be small).
const SHARD_IO_MEMORY_BYTES: usize = 2 << 20;

/// Where the engine listens, once it is ready.
#[derive(Debug, Clone)]
pub struct ReadyInfo {
    pub smtp: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub shards: usize,
    pub tls: crate::tls::CertSource,
    pub policy_version: u64,
    /// The return-path intake's bound address, when `[intake] listen` is set.
    pub intake: Option<SocketAddr>,
    /// `[[smtp.listeners]]` as bound, in configuration order.
    pub listeners: Vec<(crate::config::ListenerProfile, SocketAddr)>,
    /// The ACME HTTP-01 responder's address, when `[acme]` is on.
    pub acme_http01: Option<SocketAddr>,
}

/// A way to stop a running engine from another thread (besides SIGTERM/SIGINT).
#[derive(Clone)]
pub struct StopHandle {
    shutdown: async_channel::Sender<()>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.shutdown.close();
    }
}

/// Runs the engine until SIGTERM/SIGINT or `StopHandle::stop`. `on_ready` is called once every
/// shard listens. `policy` lets a caller (`petrel up`) share the store with its control link;
/// `events` is the durable event backlog that link sends (with a control plane), which the
/// engine fills and whose bound it enforces at MAIL and DATA.
pub fn run(
    cfg: EngineConfig,
    runtime: &tokio::runtime::Handle,
    policy: Arc<petrel_policy::PolicyStore>,
    events: Option<Arc<petrel_policy::Outbox>>,
    on_ready: impl FnOnce(&ReadyInfo, StopHandle),
) -> Result<(), EngineError> {
    catch_sighup_early();
    raise_limits();
    transparent_huge_pages(cfg.server.transparent_huge_pages);
    let mut cfg = cfg;
    std::fs::create_dir_all(&cfg.server.data_dir)?;
    // Absolute from here on: io_uring opens paths relative to nothing useful.
    cfg.server.data_dir = std::fs::canonicalize(&cfg.server.data_dir)?;
    let cfg = Arc::new(cfg);
    let metrics_addr = crate::metrics::install(runtime, cfg.metrics.listen)?;
    let server_tls = Arc::new(if cfg.acme.enabled() {
        let dir = cfg.acme.state_dir(&cfg.server.data_dir);
        crate::tls::ServerTls::load_acme(
            &cfg.server.data_dir,
            &cfg.server.hostname,
            &dir.join(crate::acme::ACME_CERT_FILE),
            &dir.join(crate::acme::ACME_KEY_FILE),
        )?
    } else {
        crate::tls::ServerTls::load(
            &cfg.server.data_dir,
            &cfg.server.hostname,
            cfg.smtp.tls_cert_path.as_deref(),
            cfg.smtp.tls_key_path.as_deref(),
        )?
    });
    let (tls, cert_source) = (server_tls.server_config(), server_tls.source().clone());
    runtime.spawn(crate::tls::watch(Arc::clone(&server_tls)));
    if let crate::tls::CertSource::GeneratedSelfSigned(p) = &cert_source {
        tracing::warn!(path = %p.display(), "no TLS certificate configured: generated a self-signed one for STARTTLS");
    }
    if !cfg.smtp.trusted_networks.is_empty() {
        // Issue 14: a plain trusted network relays only; its mail is not signed.
        tracing::info!(
            networks = cfg.smtp.trusted_networks.len(),
            "smtp.trusted_networks relay without signing; map networks to their domains with \
             [[smtp.trusted_network_domains]] (or --trust-network-domains CIDR=DOMAIN,...) to \
             have those signed"
        );
    }
    metrics::gauge!(crate::metrics::POLICY_VERSION).set(policy.version() as f64);
    crate::quota_redis::start(runtime, &cfg.cluster, &policy)?;
    if policy.keys().is_some() {
        runtime.spawn(rotate_data_keys(Arc::clone(&policy)));
    }
    let auth = Authenticator::new(&cfg.auth, Arc::clone(&policy));
    let signals = events.clone();
    runtime.spawn(crate::audit_signals::flush_task(
        Arc::clone(&auth.failures),
        signals.clone(),
        cfg.auth.failure_audit_window_secs,
    ));
    let shards = cfg.shard_count();
    let pressure = Pressure::new(cfg.limits.clone(), shards, events.clone());
    let intake_outbox = events.clone();
    let delivery = if cfg.delivery.enabled {
        Some(crate::delivery_setup::build(
            &cfg,
            Arc::clone(&policy),
            events,
        )?)
    } else {
        None
    };
    if let (Some(d), Some(quotas)) = (&delivery, policy.cluster_quotas()) {
        crate::fleet_connections::start(
            runtime,
            &cfg.cluster,
            Arc::clone(&d.limits),
            Arc::clone(quotas),
        )?;
    }
    let (intake, intake_reserve) = match cfg.intake.listen {
        Some(addr) => {
            let (addr, reserve) = reserve_port(addr)?;
            let shared = intake_shared(&cfg, addr, &policy, intake_outbox, delivery.as_ref())?;
            (Some(Arc::new(shared)), reserve)
        }
        None => (None, None),
    };

    // Port 0 (tests): pick the port once so every shard binds the same one.
    let (listen, reserve) = reserve_port(cfg.smtp.listen)?;
    let mut listeners = Vec::with_capacity(cfg.smtp.listeners.len());
    let mut listener_reserves = Vec::with_capacity(cfg.smtp.listeners.len());
    for l in &cfg.smtp.listeners {
        let (addr, reserve) = reserve_port(l.listen)?;
        listeners.push((l.profile, addr));
        listener_reserves.push(reserve);
    }
    let arc = start_arc(&cfg);
    let (shutdown_tx, shutdown_rx) = async_channel::bounded::<()>(1);
    let acme_http01 = match cfg
        .acme
        .settings(&cfg.server.hostname, &cfg.server.data_dir)
    {
        Some(s) => Some(crate::acme::start(
            s,
            Arc::clone(&server_tls),
            shutdown_rx.clone(),
        )?),
        None => None,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut admin_txs = Vec::with_capacity(shards);
    let mut handles = Vec::with_capacity(shards);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    for shard in 0..shards {
        let (admin_tx, admin_rx) = async_channel::bounded::<AdminRequest>(ADMIN_CHANNEL_CAPACITY);
        admin_txs.push(admin_tx);
        let setup = ShardSetup {
            shard,
            cfg: Arc::clone(&cfg),
            listen,
            listeners: listeners.clone(),
            tls: Arc::clone(&tls),
            pressure: Arc::clone(&pressure),
            auth: Arc::clone(&auth),
            policy: Arc::clone(&policy),
            delivery: delivery.clone(),
            intake: intake.clone(),
            arc: arc.clone(),
            shutdown: shutdown_rx.clone(),
            admin: admin_rx,
            ready: ready_tx.clone(),
        };
        let placement = if cfg.server.pin_shards {
            Placement::Fixed(shard % cpus)
        } else {
            Placement::Unbound
        };
        let failed = ready_tx.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("petrel-shard-{shard}"))
            .io_memory(SHARD_IO_MEMORY_BYTES)
            .spawn(move || async move {
                if let Err(e) = crate::shard::run(setup).await {
                    tracing::error!(shard, error = %e, "shard failed");
                    let _ = failed.send(Err(EngineError::ShardFailed {
                        shard,
                        source: Box::new(e),
                    }));
                }
            })
            .map_err(|e| EngineError::ShardSpawn {
                shard,
                source: e.into(),
            })?;
        handles.push(handle);
    }
    drop(ready_tx);
    runtime.spawn(crate::erasure::run(Arc::clone(&policy), admin_txs.clone()));
    let mut bound = None;
    for _ in 0..shards {
        match ready_rx.recv_timeout(SHARD_READY_TIMEOUT) {
            Ok(Ok(addr)) => bound = Some(addr),
            Ok(Err(e)) => {
                shutdown_tx.close();
                return Err(e);
            }
            Err(_) => {
                shutdown_tx.close();
                return Err(EngineError::ShardStartTimeout {
                    timeout_secs: SHARD_READY_TIMEOUT.as_secs(),
                });
            }
        }
    }
    drop(reserve);
    drop(intake_reserve);
    drop(listener_reserves);
    let smtp = bound.unwrap_or(listen);
    let admin = match cfg.admin.listen {
        Some(addr) => Some(crate::admin::start(
            runtime,
            addr,
            admin_txs,
            Arc::new(crate::tenant_delivery::PolicyTenantDelivery {
                policy: Arc::clone(&policy),
            }),
            delivery.as_ref().map(|d| d.shaping.clone()),
            crate::admin::Guard::new(&cfg, signals)?,
        )?),
        None => None,
    };
    let stop = StopHandle {
        shutdown: shutdown_tx.clone(),
    };
    spawn_signal_thread(stop.clone(), server_tls);
    on_ready(
        &ReadyInfo {
            smtp,
            metrics: metrics_addr,
            admin,
            shards,
            tls: cert_source,
            policy_version: policy.version(),
            intake: intake.as_ref().map(|i| i.listen),
            listeners,
            acme_http01,
        },
        stop,
    );
    for h in handles {
        if h.join().is_err() {
            tracing::error!("a shard thread ended abnormally");
        }
    }
    if let Some(d) = delivery {
        if let Some(sts) = &d.mta_sts {
            // The shards are gone: save the policies fetched since the last periodic write.
            if let Err(e) = futures_lite::future::block_on(sts.flush()) {
                tracing::warn!(error = %e, "MTA-STS policy cache not saved at shutdown");
            }
        }
        // The shards are gone: their last TLS-RPT counts go to the backlog.
        let flusher = d
            .tls_rpt_flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut f) = flusher {
            f.stop();
        }
        // The shards are gone: the egress counts' last save.
        let saver = d
            .egress_saver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut s) = saver {
            s.stop();
        }
        let writer = d.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(d);
        if let Some(w) = writer {
            if let Err(e) = w.shutdown() {
                tracing::warn!(error = %e, "events writer did not flush cleanly");
            }
        }
    }
    Ok(())
}

/// The intake's shared setup. It writes its events to the durable backlog and answers 250
/// only once they are synced, so it needs a control plane (`control.push_addr`).
fn intake_shared(
    cfg: &EngineConfig,
    listen: SocketAddr,
    policy: &Arc<petrel_policy::PolicyStore>,
    outbox: Option<Arc<petrel_policy::Outbox>>,
    delivery: Option<&crate::delivery_setup::DeliveryShared>,
) -> Result<crate::intake_keys::IntakeShared, EngineError> {
    let Some(outbox) = outbox else {
        return Err(EngineError::Config {
            message: "intake.listen: the intake needs a control plane to send its events to \
                      (control.push_addr, events.to_control_plane)"
                .into(),
        });
    };
    let classifier = match delivery {
        Some(d) => Arc::clone(&d.config.bounce_classifier),
        None => Arc::new(petrel_bounce::BounceClassifier::shipped()),
    };
    let s = &cfg.smtp;
    let server_config = Arc::new(petrel_smtp::ServerConfig {
        hostname: cfg.server.hostname.clone(),
        limits: petrel_smtp::Limits {
            command_line_max_bytes: s.command_line_max_bytes,
            text_line_max_bytes: s.text_line_max_bytes,
            message_size_max_bytes: petrel_reports::limits::MAIL_BYTES_MAX,
            recipients_max: crate::intake::INTAKE_RECIPIENTS_MAX,
            errors_max: s.errors_max,
            ..petrel_smtp::Limits::default()
        },
        starttls_available: true,
        auth_without_tls: false,
        auth_enabled: false,
        tls_required: false,
        auth_required: false,
    });
    Ok(crate::intake_keys::IntakeShared {
        listen,
        keys: Arc::new(crate::intake_keys::KeyCache::new(Arc::clone(policy))),
        policy: Arc::clone(policy),
        outbox,
        classifier,
        mailboxes: cfg
            .intake
            .mailboxes
            .iter()
            .map(|m| m.to_ascii_lowercase())
            .collect(),
        engine_id: cfg.engine_id(),
        server_config,
    })
}

/// glommio needs locked memory for io_uring; many connections need file descriptors.
/// The ARC thread (`arc_service.rs`), asking delivery's DNS servers. The engine runs without it
/// when it cannot start: forwarding tenants' messages then go out unsealed, counted.
fn start_arc(cfg: &EngineConfig) -> Option<crate::arc_service::ArcService> {
    crate::arc_service::ArcService::start(&cfg.server.hostname, &cfg.delivery.nameservers)
        .inspect_err(|e| tracing::error!(error = %e, "ARC sealing unavailable"))
        .ok()
}

fn raise_limits() {
    use rlimit::Resource;
    let _ = rlimit::setrlimit(Resource::MEMLOCK, rlimit::INFINITY, rlimit::INFINITY);
    let _ = rlimit::increase_nofile_limit(1 << 20);
}

/// Transparent huge pages off for this process unless the configuration asks for them. The
/// allocator asks for huge pages on its segments; the queues are millions of small objects
/// that live for hours, so a 2 MiB page stays resident for a few of them: measured (issue 17,
/// BENCHMARKS.md), a million queued recipients held 643 MiB after a restart with them and
/// 475 MiB without, 407 and 365 MiB live.
fn transparent_huge_pages(on: bool) {
    if !on {
        if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
            tracing::warn!(error = %e, "could not turn transparent huge pages off");
        }
    }
}

/// Binds port 0 once (SO_REUSEPORT) so every shard can bind the same chosen port; the socket is
/// dropped once the shards listen.
fn reserve_port(addr: SocketAddr) -> Result<(SocketAddr, Option<socket2::Socket>), EngineError> {
    if addr.port() != 0 {
        return Ok((addr, None));
    }
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    let local = s
        .local_addr()?
        .as_socket()
        .ok_or(EngineError::ReservedPortNoAddress { addr })?;
    Ok((local, Some(s)))
}

/// How often the data keys of the policy in force are checked against their rotation period
/// (a new snapshot checks too).
const DATA_KEY_ROTATION_CHECK_SECS: u64 = 3600;

/// Gives each owner a new data key once its current one is past the rotation period.
async fn rotate_data_keys(policy: Arc<petrel_policy::PolicyStore>) {
    let mut tick =
        tokio::time::interval(std::time::Duration::from_secs(DATA_KEY_ROTATION_CHECK_SECS));
    loop {
        tick.tick().await;
        let p = Arc::clone(&policy);
        match tokio::task::spawn_blocking(move || p.rotate_data_keys()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(keys = n, "data keys rotated"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "data key rotation failed; retrying in an hour")
            }
            Err(e) => tracing::error!(error = %e, "data key rotation task failed"),
        }
    }
}

/// Set by SIGHUPs that arrive before the signal thread runs; `None` when the handler could not
/// be installed.
static EARLY_SIGHUP: OnceLock<Option<Arc<AtomicBool>>> = OnceLock::new();

/// Catches SIGHUP from now on. Its default action ends the process, and `systemctl reload` (or
/// a certificate deployment hook) may send it while the engine is still starting, before
/// [`spawn_signal_thread`] takes over: call this first thing (`petrel engine` and `petrel up`
/// do, and [`run`] again). One that arrived meanwhile reloads the certificate once the engine
/// is up. Idempotent.
pub fn catch_sighup_early() {
    EARLY_SIGHUP.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        match signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&flag)) {
            Ok(_) => Some(flag),
            Err(e) => {
                tracing::warn!(error = %e, "cannot catch SIGHUP during start-up");
                None
            }
        }
    });
}

/// Whether a SIGHUP came before the signal thread ran (and forgets it).
fn take_early_sighup() -> bool {
    EARLY_SIGHUP
        .get()
        .and_then(|f| f.as_ref())
        .is_some_and(|f| f.swap(false, Ordering::SeqCst))
}

/// SIGTERM or SIGINT stops the engine (the first one; the thread ends with it); SIGHUP reloads
/// the TLS certificate, as often as it comes.
fn spawn_signal_thread(stop: StopHandle, tls: Arc<crate::tls::ServerTls>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) else {
        tracing::warn!("cannot install signal handlers; stop with the StopHandle");
        return;
    };
    let _ = std::thread::Builder::new()
        .name("petrel-signals".into())
        .spawn(move || {
            // After `Signals::new`: a SIGHUP from now on reaches the loop as well.
            if take_early_sighup() {
                tracing::info!("SIGHUP during start-up: reloading the TLS certificate now");
                tls.check_logged(crate::tls::ReloadTrigger::Signal);
            }
            for sig in signals.forever() {
                if sig == SIGHUP {
                    tls.check_logged(crate::tls::ReloadTrigger::Signal);
                    continue;
                }
                tracing::info!(
                    signal = sig,
                    "shutting down: no new connections, draining sessions"
                );
                stop.stop();
                break;
            }
        });
}
