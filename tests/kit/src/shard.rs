//! A delivery-shard harness: a `DeliveryShard` over a [`MemSpool`], started on a glommio
//! executor, with static routes to kit SMTP servers, so a shard test reads as a scenario:
//!
//! ```ignore
//! let dest = SmtpServer::start(Script::by_local_part());
//! let other = SmtpServer::start(Script::by_local_part());
//! let setup = ShardSetup::new(config(), routes(dest.addr, other.addr));
//! let (removed, _spool) = run_shard(setup, |h| async move {
//!     h.enqueue("alice@src.example", &["ok@dest.example"]);
//!     h.await_removed(1, DEADLINE).await
//! });
//! assert_eq!(removed, 1);
//! assert_eq!(dest.connections(), 1);
//! ```
//!
//! Waits are bounded and return what they saw; the test asserts with its own words.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use petrel_delivery::{DeliveryConfig, DeliveryShard, EventSink, GlobalLimits};
use petrel_outbound::{MtaSts, Resolver, ResolverConfig, StaticRoute};

use crate::glommio::{wait_until, Runner};
pub use crate::mem_spool::{MemSpool, Outcome};

/// The domain [`routes`] sends to the `dest` server; every other domain goes to `other`.
pub const DEST_DOMAIN: &str = "dest.example";
/// The message every [`ShardHarness::enqueue`] stores.
pub const BODY: &[u8] =
    b"From: alice@src.example\r\nSubject: test\r\nMessage-ID: <m1@src.example>\r\n\r\nHello.\r\n";
/// A nameserver nobody answers on: the static routes answer everything, never the system
/// resolver.
const NO_NAMESERVER: &str = "127.0.0.1:9";
/// How long a stopped shard's tasks may take to let go of the spool.
const SPOOL_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// DNS query timeout of the harness resolver (never used while static routes answer).
const QUERY_TIMEOUT_MS: u64 = 500;

/// A resolver with static routes only: [`DEST_DOMAIN`] to `dest`, everything else to `other`.
pub fn routes(dest: SocketAddr, other: SocketAddr) -> Resolver {
    Resolver::start(ResolverConfig {
        nameservers: vec![NO_NAMESERVER.parse().expect("addr")],
        static_routes: vec![
            StaticRoute {
                domain: Some(DEST_DOMAIN.into()),
                target: dest,
                tls_name: None,
            },
            StaticRoute {
                domain: None,
                target: other,
                tls_name: None,
            },
        ],
        query_timeout_ms: QUERY_TIMEOUT_MS,
        ..ResolverConfig::default()
    })
    .expect("resolver")
}

/// Everything a shard is built from (`Send`: a test may build it, then start the shard on
/// another thread).
pub struct ShardSetup {
    /// The shard number (seeds its jitter).
    pub shard: u8,
    pub config: DeliveryConfig,
    pub resolver: Resolver,
    /// MTA-STS policies applied to the shard's sessions; `None` (the default): not applied.
    pub mta_sts: Option<MtaSts>,
    /// Engine-wide limits; share one `Arc` between setups to test limits across shards.
    pub limits: Arc<GlobalLimits>,
    pub events: EventSink,
    /// Where the shard counts its TLS negotiations (TLS-RPT); `None` (the default): nowhere.
    pub tls_rpt: Option<petrel_delivery::tls_rpt::TlsRptRecorder>,
}

impl ShardSetup {
    /// Shard 0 with fresh limits and no event log.
    pub fn new(config: DeliveryConfig, resolver: Resolver) -> ShardSetup {
        ShardSetup {
            shard: 0,
            config,
            resolver,
            mta_sts: None,
            limits: Arc::new(GlobalLimits::default()),
            events: EventSink::disabled(),
            tls_rpt: None,
        }
    }
}

/// A running shard and its spool, inside one executor. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct ShardHarness {
    shard: Rc<DeliveryShard<MemSpool>>,
    spool: Rc<MemSpool>,
}

impl ShardHarness {
    /// The shard, for admin commands and its counters.
    pub fn shard(&self) -> &DeliveryShard<MemSpool> {
        &self.shard
    }

    /// The spool, for what happened to each recipient.
    pub fn spool(&self) -> &MemSpool {
        &self.spool
    }

    /// Stores a message with [`BODY`] and enqueues it; returns its id.
    pub fn enqueue(&self, mail_from: &str, rcpts: &[&str]) -> u64 {
        let msg = self.spool.store(mail_from, rcpts, BODY);
        let id = msg.id;
        self.shard.enqueue(msg);
        id
    }

    /// [`ShardHarness::enqueue`] for a message of `tenant`.
    pub fn enqueue_for(&self, tenant: &str, mail_from: &str, rcpts: &[&str]) -> u64 {
        let key = petrel_delivery::AttributionKey {
            tenant_id: Some(tenant.into()),
            ..Default::default()
        };
        let none: &[&str] = &[];
        let attribution = std::sync::Arc::new(petrel_delivery::Attribution::new(
            Some(std::sync::Arc::new(key)),
            None,
            none,
            None,
        ));
        let msg = self
            .spool
            .store_attributed(mail_from, rcpts, BODY, Some(attribution));
        let id = msg.id;
        self.shard.enqueue(msg);
        id
    }

    /// Waits until at least `n` messages are removed (every recipient final: delivered,
    /// bounced or expired), at most `within`; returns how many are.
    pub async fn await_removed(&self, n: usize, within: Duration) -> usize {
        wait_until(within, || self.spool.removed_count() >= n).await;
        self.spool.removed_count()
    }

    /// Waits until the recipient `index` of message `id` has a recorded outcome (its first
    /// attempt finished), at most `within`.
    pub async fn await_outcome(&self, id: u64, index: u32, within: Duration) -> Option<Outcome> {
        wait_until(within, || self.spool.outcome(id, index).is_some()).await;
        self.spool.outcome(id, index)
    }

    /// Waits until `done(spool)` holds, at most `within`; returns whether it does.
    pub async fn await_spool(&self, within: Duration, done: impl Fn(&MemSpool) -> bool) -> bool {
        wait_until(within, || done(&self.spool)).await
    }
}

/// Runs `scenario` against a new shard built from `setup`, on a new executor on the calling
/// thread (so the scenario may borrow the test's servers); then shuts the shard down (its
/// sessions finish their transaction) and returns the scenario's output with the spool. For
/// shards running at once, call it from one std thread each.
pub fn run_shard<F, Fut, T>(setup: ShardSetup, scenario: F) -> (T, MemSpool)
where
    F: FnOnce(ShardHarness) -> Fut,
    Fut: Future<Output = T>,
{
    Runner::default().name("shard").run_here(async move {
        let spool = Rc::new(MemSpool::default());
        let shard = Rc::new(DeliveryShard::new(
            setup.shard,
            Arc::new(setup.config),
            setup.resolver,
            setup.mta_sts,
            setup.limits,
            spool.clone(),
            setup.events,
        ));
        if let Some(r) = setup.tls_rpt {
            shard.set_tls_rpt(r);
        }
        let runner = {
            let shard = shard.clone();
            ::glommio::spawn_local(async move { shard.run().await })
        };
        let harness = ShardHarness {
            shard: shard.clone(),
            spool: spool.clone(),
        };
        let out = scenario(harness).await;
        shard.shutdown();
        runner.await;
        drop(shard);
        // Session tasks drop their handles a moment after the runner returns.
        let released = wait_until(SPOOL_RELEASE_TIMEOUT, || Rc::strong_count(&spool) == 1).await;
        assert!(released, "the shard released the spool");
        let spool = Rc::try_unwrap(spool)
            .ok()
            .expect("the scenario kept no handle to the spool");
        (out, spool)
    })
}
