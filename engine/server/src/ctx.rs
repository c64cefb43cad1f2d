//! A shard's context: what the main thread hands a shard ([`ShardSetup`], all `Send`) and what
//! the shard's tasks share once it runs ([`ShardCtx`], `Rc`: one thread).
//!
//! It has a file of its own so that the shard loop, the session driver and the sign-and-spool
//! step can all depend on it without depending on each other.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use petrel_delivery::memory::SharedInterner;
use petrel_delivery::{DeliveryShard, MessageDsn, QueuedAttribution, QueuedMessage, QueuedRcpt};
use petrel_smtp::ServerConfig;
use petrel_spool::{Attribution, Envelope, RecipientState, Spool};

use crate::admin::AdminRequest;
use crate::auth::Authenticator;
use crate::config::{EngineConfig, ListenerProfile};
use crate::delivery_setup::DeliveryShared;
use crate::pressure::Pressure;
use crate::spool_access::for_delivery;
use crate::spool_access::SpoolAccessor;

/// Everything a shard thread needs, built on the main thread (all `Send`).
pub struct ShardSetup {
    pub shard: usize,
    pub cfg: Arc<EngineConfig>,
    pub listen: SocketAddr,
    /// `[[smtp.listeners]]`, each port resolved once (port 0) so every shard binds the same.
    pub listeners: Vec<(ListenerProfile, SocketAddr)>,
    pub tls: Arc<rustls::ServerConfig>,
    pub pressure: Arc<Pressure>,
    pub auth: Arc<Authenticator>,
    pub policy: Arc<petrel_policy::PolicyStore>,
    pub delivery: Option<DeliveryShared>,
    /// The return-path intake's shared setup, when `[intake] listen` is set.
    pub intake: Option<Arc<crate::intake_keys::IntakeShared>>,
    /// The ARC thread that seals forwarding tenants' messages (None if it could not start).
    pub arc: Option<crate::arc_service::ArcService>,
    pub shutdown: async_channel::Receiver<()>,
    pub admin: async_channel::Receiver<AdminRequest>,
    /// Told once the shard listens (its bound address); a shard that fails reports through it too.
    pub ready: std::sync::mpsc::Sender<Result<SocketAddr, crate::error::EngineError>>,
}

/// The `[content]` checker. The configuration was validated at start (`EngineConfig::validate`
/// builds it too), so an error here cannot happen; were it to, the shipped defaults check
/// rather than nothing.
fn content_checker(cfg: &EngineConfig) -> Option<petrel_content::Checker> {
    cfg.content.checker().unwrap_or_else(|e| {
        tracing::error!(error = %e, "content checker configuration; using the defaults");
        petrel_content::Checker::new(&petrel_content::CheckerConfig::default()).ok()
    })
}

/// Per-shard state shared by its tasks (`Rc`: one thread).
pub struct ShardCtx {
    pub shard: usize,
    pub cfg: Arc<EngineConfig>,
    session_config: Arc<ServerConfig>,
    /// Development mode only: AUTH before STARTTLS for loopback clients.
    session_config_loopback_dev: Arc<ServerConfig>,
    /// The submission profiles (587 and 465): TLS, then AUTH, before MAIL, for every client.
    session_config_submission: Arc<ServerConfig>,
    pub tls: futures_rustls::TlsAcceptor,
    pub spool: Rc<Spool>,
    pub delivery: Option<Rc<DeliveryShard<SpoolAccessor>>>,
    pub pressure: Arc<Pressure>,
    pub auth: Arc<Authenticator>,
    pub policy: Arc<petrel_policy::PolicyStore>,
    /// Where sessions report `rejected` events (disabled without delivery).
    pub events: petrel_delivery::EventSink,
    /// The phishing-content checker of `[content]` (None when `phishing_check` is off).
    pub content: Option<petrel_content::Checker>,
    /// The ARC thread (`sign_and_spool::seal_forwarded`).
    pub arc: Option<crate::arc_service::ArcService>,
    /// Closed when the shutdown grace period ends: every session still open is cut.
    cut: (async_channel::Sender<()>, async_channel::Receiver<()>),
    trace_seq: Cell<u64>,
    /// Sessions running on this shard: +1 when one starts, -1 when it ends.
    sessions_open: Cell<usize>,
    /// Tenants, credentials and From domains of queued messages' attributions, shared.
    attribution_values: RefCell<SharedInterner>,
}

impl ShardCtx {
    /// The context of the shard `setup` describes, over its opened spool and delivery.
    pub fn new(
        setup: &ShardSetup,
        spool: Rc<Spool>,
        delivery: Option<Rc<DeliveryShard<SpoolAccessor>>>,
        attribution_values: RefCell<SharedInterner>,
    ) -> Self {
        ShardCtx {
            shard: setup.shard,
            session_config: server_config(&setup.cfg, false, false),
            session_config_loopback_dev: server_config(&setup.cfg, true, false),
            session_config_submission: server_config(&setup.cfg, false, true),
            cfg: Arc::clone(&setup.cfg),
            tls: futures_rustls::TlsAcceptor::from(Arc::clone(&setup.tls)),
            spool,
            delivery,
            pressure: Arc::clone(&setup.pressure),
            auth: Arc::clone(&setup.auth),
            policy: Arc::clone(&setup.policy),
            events: setup
                .delivery
                .as_ref()
                .map_or_else(petrel_delivery::EventSink::disabled, |d| d.events.clone()),
            content: content_checker(&setup.cfg),
            arc: setup.arc.clone(),
            cut: async_channel::bounded(1),
            trace_seq: Cell::new(0),
            sessions_open: Cell::new(0),
            attribution_values,
        }
    }

    /// The protocol settings of a session from `ip` on a listener with `profile`.
    pub fn session_config(&self, ip: IpAddr, profile: ListenerProfile) -> Arc<ServerConfig> {
        if profile.is_submission() {
            Arc::clone(&self.session_config_submission)
        } else if self.cfg.server.development && ip.is_loopback() {
            Arc::clone(&self.session_config_loopback_dev)
        } else {
            Arc::clone(&self.session_config)
        }
    }

    /// Resolves when the grace period after SIGTERM is over.
    pub async fn cut(&self) {
        let _ = self.cut.1.recv().await;
    }

    /// Ends the grace period: every open session's [`ShardCtx::cut`] resolves.
    pub fn cut_sessions(&self) {
        self.cut.0.close();
    }

    /// Counts a session in; pair with [`ShardCtx::session_ended`].
    pub fn session_started(&self) {
        self.sessions_open.set(self.sessions_open.get() + 1);
    }

    /// Counts a session out.
    pub fn session_ended(&self) {
        self.sessions_open.set(self.sessions_open.get() - 1);
    }

    /// Sessions running on this shard now.
    pub fn sessions_open(&self) -> usize {
        self.sessions_open.get()
    }

    /// The shard's attribution interner, for the messages the spool's backlog requeues after
    /// the context is made (`shard::requeue_backlog`).
    pub fn attribution_values(&self) -> &RefCell<SharedInterner> {
        &self.attribution_values
    }

    /// A short id for the Received header, unique per engine run.
    pub fn next_trace_id(&self) -> String {
        let n = self.trace_seq.get().wrapping_add(1);
        self.trace_seq.set(n);
        format!("{:02x}{:012x}", self.shard, n)
    }

    /// Hands a spooled (fresh or recovered) message, its attribution and its DSN parameters
    /// (`crate::dsn_params`) to delivery.
    pub fn enqueue(
        &self,
        id: u64,
        env: &Envelope,
        attribution: Attribution,
        dsn: Option<Box<MessageDsn>>,
    ) {
        if let Some(d) = &self.delivery {
            let attribution = for_delivery(attribution, &self.attribution_values)
                .map_or(QueuedAttribution::None, QueuedAttribution::Held);
            d.enqueue(queued(id, env, attribution, dsn));
        }
    }

    /// The client is on a trusted network (may relay without AUTH): a plain one or a network
    /// mapped to domains.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.cfg.smtp.is_trusted(ip)
    }

    /// Whether a trusted-network client speaks for `sending_domain` (see
    /// [`crate::config::SmtpSection::relay_may_sign`]).
    pub fn relay_may_sign(&self, ip: IpAddr, sending_domain: Option<&str>) -> bool {
        self.cfg.smtp.relay_may_sign(ip, sending_domain)
    }

    /// Publishes spool and queue figures for backpressure and metrics.
    pub fn publish_figures(&self) {
        let s = self.spool.stats();
        let queued = self
            .delivery
            .as_ref()
            .map(|d| d.queued_recipients())
            .unwrap_or(0);
        self.pressure
            .publish(self.shard, s.messages, s.bytes, queued);
    }
}

pub(crate) fn queued(
    id: u64,
    env: &Envelope,
    attribution: QueuedAttribution,
    dsn: Option<Box<MessageDsn>>,
) -> QueuedMessage {
    QueuedMessage {
        attribution,
        dsn,
        id,
        mail_from: env.mail_from.clone(),
        received_unix_ms: env.received_unix_ms,
        is_dsn: env.is_dsn,
        recipients: env
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state == RecipientState::Pending)
            .map(|(i, r)| QueuedRcpt {
                index: i as u32,
                address: r.address.clone(),
                attempts: r.attempts,
                next_attempt_unix_ms: r.next_attempt_unix_ms,
            })
            .collect(),
    }
}

/// [`queued`] of an envelope the caller owns (recovery): its strings move, none is copied.
pub(crate) fn queued_owned(
    id: u64,
    env: Envelope,
    attribution: QueuedAttribution,
    dsn: Option<Box<MessageDsn>>,
) -> QueuedMessage {
    QueuedMessage {
        attribution,
        dsn,
        id,
        mail_from: env.mail_from,
        received_unix_ms: env.received_unix_ms,
        is_dsn: env.is_dsn,
        recipients: env
            .recipients
            .into_iter()
            .enumerate()
            .filter(|(_, r)| r.state == RecipientState::Pending)
            .map(|(i, r)| QueuedRcpt {
                index: i as u32,
                address: r.address,
                attempts: r.attempts,
                next_attempt_unix_ms: r.next_attempt_unix_ms,
            })
            .collect(),
    }
}

/// The attribution of a message recovery found, as delivery keeps it: only the tenant, the rest
/// left in the spool record (issue 17); the whole of it only for the `accepted` events sent
/// again when `accepted` is true.
pub(crate) fn spooled_attribution(
    a: Attribution,
    accepted: bool,
    shared: &RefCell<SharedInterner>,
) -> QueuedAttribution {
    if a.is_empty() {
        return QueuedAttribution::None;
    }
    let tenant_id = a.tenant_id.clone();
    let for_accepted = if accepted {
        for_delivery(a, shared)
    } else {
        None
    };
    QueuedAttribution::Spooled {
        tenant_id,
        for_accepted,
    }
}

/// `submission`: TLS and AUTH required before MAIL (RFC 6409, RFC 8314).
fn server_config(
    cfg: &EngineConfig,
    auth_without_tls: bool,
    submission: bool,
) -> Arc<ServerConfig> {
    let s = &cfg.smtp;
    Arc::new(ServerConfig {
        hostname: cfg.server.hostname.clone(),
        limits: petrel_smtp::Limits {
            command_line_max_bytes: s.command_line_max_bytes,
            text_line_max_bytes: s.text_line_max_bytes,
            message_size_max_bytes: s.message_size_max_bytes,
            recipients_max: s.recipients_max,
            errors_max: s.errors_max,
            auth_attempts_max: s.auth_attempts_max,
            ..petrel_smtp::Limits::default()
        },
        starttls_available: true,
        auth_without_tls,
        auth_enabled: true,
        tls_required: submission,
        auth_required: submission,
    })
}
