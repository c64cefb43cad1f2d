//! Delivery configuration: retry schedule, per-destination limits, bounds and client timeouts.

use std::collections::HashMap;
use std::sync::Arc;

use petrel_bounce::BounceClassifier;

pub use crate::backoff::RetrySchedule;
use crate::error::DeliveryError;

/// TLS policy towards a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TlsPolicy {
    /// Plain text only (tests and private relays).
    Disabled,
    /// STARTTLS when offered, without certificate verification (the default, like Postfix `may`).
    #[default]
    Opportunistic,
    /// STARTTLS with a valid certificate for the MX name; otherwise the attempt is deferred.
    Required,
}

impl TlsPolicy {
    /// The client mode of `petrel-outbound` for this policy.
    pub fn mode(self) -> petrel_outbound::TlsMode {
        match self {
            TlsPolicy::Disabled => petrel_outbound::TlsMode::Disabled,
            TlsPolicy::Opportunistic => petrel_outbound::TlsMode::Opportunistic,
            TlsPolicy::Required => petrel_outbound::TlsMode::Required,
        }
    }
}

/// Limits towards one destination domain. They hold for the whole engine (all shards) through
/// [`crate::GlobalLimits`]: connections exactly, the rate within one token of burst.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainLimits {
    /// Simultaneous connections to the domain from the whole engine; at least 1.
    pub connections_max: u32,
    /// Transactions sent over one connection before it is closed and a new one opened; at least 1.
    pub messages_per_connection_max: u32,
    /// Transactions per second to the domain from the whole engine; `None` = unlimited.
    pub messages_per_second_max: Option<u32>,
    /// Recipients in one SMTP transaction (RCPT TO commands); at least 1.
    pub recipients_per_transaction_max: u32,
    /// TLS policy for connections to the domain.
    pub tls: TlsPolicy,
}

impl Default for DomainLimits {
    fn default() -> Self {
        DomainLimits {
            connections_max: 10,
            messages_per_connection_max: 100,
            messages_per_second_max: None,
            recipients_per_transaction_max: 100,
            tls: TlsPolicy::Opportunistic,
        }
    }
}

/// SMTP client timeouts (RFC 5321 §4.5.3.2 defaults), in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTimeouts {
    pub connect_timeout_ms: u64,
    pub greeting_timeout_ms: u64,
    pub command_timeout_ms: u64,
    pub data_block_timeout_ms: u64,
    pub data_done_timeout_ms: u64,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            connect_timeout_ms: 30_000,
            greeting_timeout_ms: 300_000,
            command_timeout_ms: 300_000,
            data_block_timeout_ms: 180_000,
            data_done_timeout_ms: 600_000,
        }
    }
}

/// Everything a [`crate::DeliveryShard`] needs; shared by all shards behind an `Arc`.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Our name in EHLO and the Reporting-MTA of DSNs.
    pub helo_name: String,
    /// When to retry and when to give up.
    pub retry: RetrySchedule,
    /// Limits for every destination without an override.
    pub default_limits: DomainLimits,
    /// Per-destination overrides, keyed by lowercase domain.
    pub domain_limits: HashMap<String, DomainLimits>,
    /// Bound of each domain's ready set (entries due and waiting for a connection); entries
    /// beyond it stay in the schedule until room frees up.
    pub ready_max: usize,
    /// Recipients queued on one shard above which the engine should refuse new mail
    /// (452 4.3.1); compare with [`crate::DeliveryShard::queued_recipients`].
    pub queued_recipients_max: u64,
    /// Simultaneous outbound connections (delivery sessions) of one shard, all domains together.
    pub shard_connections_max: usize,
    /// Connections of one shard to one shared site (a smart host, or one set of MX hosts, with
    /// one TLS policy and one egress source), all the domains routed there together: they take
    /// turns on those connections, as Postfix's `default_destination_concurrency_limit` holds
    /// per relayhost and KumoMTA's `connection_limit` per site. The per-domain
    /// `connections_max` still applies, a provider's shaping limits may lower it, and a domain
    /// with limits of its own (configured or pushed) is a site of its own, not counted here.
    pub next_hop_sessions_max: usize,
    /// An open connection with nothing to send is closed (QUIT) after this long.
    pub idle_timeout_ms: u64,
    /// When the destination's connection limit is reached elsewhere, ready entries wait this
    /// long before trying again (no attempt is counted).
    pub permit_retry_delay_ms: u64,
    /// Addresses tried (over all MX hosts, in preference order) per connection attempt.
    pub connect_addresses_max: usize,
    /// SMTP client timeouts.
    pub client: ClientTimeouts,
    /// PEM certificates trusted for TLS Required besides the webpki roots (tests, private CAs).
    pub extra_root_certs_pem: Vec<Vec<u8>>,
    /// Recipient domains' MTA-STS policies apply to static routes (smart hosts) too: under
    /// `enforce`, verified TLS to the smart host's name (`shard/mta_sts.rs`).
    pub smart_host_mta_sts: bool,
    /// The longest wait of the driver's loop between two looks at the schedule.
    pub tick_ms_max: u64,
    /// How long a routed lane keeps its route (DNS, MTA-STS) and its limits before they are
    /// checked again, even a lane that never drains (`shard/site.rs`; default
    /// `ROUTE_RECHECK_MS_DEFAULT`).
    pub route_recheck_ms: u64,
    /// Limits that change at run time (the control plane's pushed destination limits), laid
    /// over `default_limits`/`domain_limits` at every new delivery session.
    pub dynamic_limits: Option<Arc<dyn LimitsSource>>,
    /// Classifies every deferral and bounce for its event. Built once at engine start (the
    /// shipped rules, plus the operator's `delivery.bounce_rules_file`) and shared by all
    /// shards: classifying reads it, never changes it.
    pub bounce_classifier: Arc<BounceClassifier>,
    /// Makes the VERP return path of a tenant's recipient (the engine wires the pushed bounce
    /// domain and token keys here); `None`: every attempt uses the client's envelope sender.
    /// See [`crate::return_path`].
    pub return_path: Option<Arc<dyn crate::return_path::ReturnPathSource>>,
    /// Each tenant's egress pool and delivery weight (the engine wires the pushed policy
    /// here); `None`: every tenant uses the default pool with the same weight.
    pub tenant_delivery: Option<Arc<dyn crate::egress::TenantDeliverySource>>,
    /// The sources and pools mail leaves from, the pools' choosers and the daily counts their
    /// warm-up caps are checked against; one per engine, shared by every shard
    /// ([`crate::egress`]). The default is one source that binds nothing: no pools configured.
    pub egress: Arc<crate::egress::Egress>,
    /// Per-site limits by provider and the throttle rules (`crate::shaping`): the shipped
    /// `shaping.toml` with the operator's `delivery.shaping_file` laid over it, loaded once at
    /// engine start (a bad file stops the start) and shared by all shards. Delivery reads it
    /// through [`DeliveryConfig::current_shaping`], never directly.
    pub shaping: Arc<crate::shaping::Shaping>,
    /// The control plane's pushed provider limits, laid over `shaping` at run time (the engine
    /// wires the policy snapshot here); `None`: `shaping` alone.
    pub shaping_source: Option<Arc<dyn crate::shaping::ShapingSource>>,
}

/// Default of [`DeliveryConfig::route_recheck_ms`]: a minute.
pub const ROUTE_RECHECK_MS_DEFAULT: u64 = 60_000;

/// Default of [`DeliveryConfig::next_hop_sessions_max`]: 16 per shard, so 32 connections to a
/// smart host on two cores (KumoMTA's default `connection_limit` per site is 32).
pub const NEXT_HOP_SESSIONS_MAX_DEFAULT: usize = 16;

/// A run-time source of per-destination limits (the engine wires the pushed policy here).
pub trait LimitsSource: std::fmt::Debug + Send + Sync {
    /// The limits for `domain`, starting from the configured ones.
    fn overlay(&self, domain: &str, configured: &DomainLimits) -> DomainLimits;
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            helo_name: "localhost".to_string(),
            retry: RetrySchedule::default(),
            default_limits: DomainLimits::default(),
            domain_limits: HashMap::new(),
            ready_max: 10_000,
            queued_recipients_max: 2_000_000,
            shard_connections_max: 256,
            next_hop_sessions_max: NEXT_HOP_SESSIONS_MAX_DEFAULT,
            idle_timeout_ms: 5_000,
            permit_retry_delay_ms: 1_000,
            connect_addresses_max: 5,
            client: ClientTimeouts::default(),
            extra_root_certs_pem: Vec::new(),
            smart_host_mta_sts: false,
            tick_ms_max: 1_000,
            route_recheck_ms: ROUTE_RECHECK_MS_DEFAULT,
            dynamic_limits: None,
            bounce_classifier: Arc::new(BounceClassifier::shipped()),
            return_path: None,
            tenant_delivery: None,
            egress: Arc::new(crate::egress::Egress::default()),
            shaping: Arc::new(crate::shaping::Shaping::shipped()),
            shaping_source: None,
        }
    }
}

impl DeliveryConfig {
    /// The limits for `domain` (lowercase): its override, else the defaults.
    pub fn limits_for(&self, domain: &str) -> &DomainLimits {
        self.domain_limits
            .get(domain)
            .unwrap_or(&self.default_limits)
    }

    /// The configured limits for `domain` with the run-time overlay applied.
    pub fn effective_limits(&self, domain: &str) -> DomainLimits {
        let configured = self.limits_for(domain);
        match &self.dynamic_limits {
            Some(source) => source.overlay(domain, configured),
            None => configured.clone(),
        }
    }

    /// The shaping in force: the files' with the pushed overlay over it. A site takes its
    /// limits from it when it is made (a site in use is made again when its domains are
    /// re-routed, at most `DeliveryConfig::route_recheck_ms` (60 s) later), a reply its throttle rule when it comes.
    pub fn current_shaping(&self) -> Arc<crate::shaping::Shaping> {
        match &self.shaping_source {
            Some(source) => source.current(&self.shaping),
            None => Arc::clone(&self.shaping),
        }
    }

    /// Checks the ranges the driver relies on.
    pub fn validate(&self) -> Result<(), DeliveryError> {
        let all = std::iter::once(&self.default_limits).chain(self.domain_limits.values());
        for l in all {
            if l.connections_max == 0 {
                return Err(DeliveryError::Config("connections_max must be at least 1"));
            }
            if l.messages_per_connection_max == 0 || l.recipients_per_transaction_max == 0 {
                return Err(DeliveryError::Config(
                    "messages_per_connection_max and recipients_per_transaction_max must be at least 1",
                ));
            }
            if l.messages_per_second_max == Some(0) {
                return Err(DeliveryError::Config(
                    "messages_per_second_max must be at least 1",
                ));
            }
        }
        if self.ready_max == 0
            || self.shard_connections_max == 0
            || self.next_hop_sessions_max == 0
            || self.connect_addresses_max == 0
        {
            return Err(DeliveryError::Config(
                "ready_max, shard_connections_max, next_hop_sessions_max and connect_addresses_max must be at least 1",
            ));
        }
        self.retry.validate()
    }
}
