//! Builds what every shard's delivery shares from the engine configuration.

use std::sync::Arc;

use petrel_delivery::{
    DeliveryConfig, DomainLimits, EventSink, EventsConfig, GlobalLimits, TlsPolicy,
};
use petrel_outbound::{Resolver, ResolverConfig, StaticRoute};

use crate::config::{DeliverySection, EngineConfig};
use crate::engine::DeliveryShared;
use crate::error::EngineError;

/// Destination domains tracked by the engine-wide limiter, at most.
const DESTINATIONS_MAX: usize = 1_000_000;

pub fn build(
    cfg: &EngineConfig,
    _rt: &tokio::runtime::Handle,
) -> Result<DeliveryShared, EngineError> {
    let d = &cfg.delivery;
    let config = Arc::new(delivery_config(cfg)?);
    let mut static_routes: Vec<StaticRoute> = d
        .routes
        .iter()
        .map(|r| StaticRoute {
            domain: Some(r.domain.to_ascii_lowercase()),
            target: r.host,
        })
        .collect();
    if let Some(all) = d.relay_to {
        static_routes.push(StaticRoute {
            domain: None,
            target: all,
        });
    }
    let resolver = Resolver::start(ResolverConfig {
        nameservers: d.nameservers.clone(),
        static_routes,
        smtp_port: d.smtp_port,
        ..ResolverConfig::default()
    })
    .map_err(|e| EngineError::Other(format!("resolver: {e}")))?;
    let (events, writer) = EventSink::start(EventsConfig::new(cfg.server.data_dir.join("events")))
        .map_err(|e| EngineError::Other(format!("events: {e}")))?;
    Ok(DeliveryShared {
        config,
        resolver,
        limits: Arc::new(GlobalLimits::new(DESTINATIONS_MAX)),
        events,
        writer: Arc::new(std::sync::Mutex::new(Some(writer))),
    })
}

fn tls_policy(s: Option<&str>) -> TlsPolicy {
    match s {
        Some("require") => TlsPolicy::Required,
        Some("disabled") => TlsPolicy::Disabled,
        _ => TlsPolicy::Opportunistic,
    }
}

fn default_limits(d: &DeliverySection) -> DomainLimits {
    DomainLimits {
        connections_max: d.connections_per_domain_max,
        messages_per_connection_max: d.messages_per_connection_max,
        messages_per_second_max: (d.messages_per_second_per_domain_max > 0)
            .then_some(d.messages_per_second_per_domain_max),
        recipients_per_transaction_max: d.recipients_per_transaction_max,
        tls: TlsPolicy::Opportunistic,
    }
}

/// The delivery crate's configuration from the `[delivery]` section.
pub fn delivery_config(cfg: &EngineConfig) -> Result<DeliveryConfig, EngineError> {
    let d = &cfg.delivery;
    let defaults = default_limits(d);
    let mut out = DeliveryConfig {
        helo_name: cfg.server.hostname.clone(),
        default_limits: defaults.clone(),
        queued_recipients_max: cfg.limits.queued_recipients_max,
        ..DeliveryConfig::default()
    };
    out.retry.first_retry_delay_ms = d.retry_initial_ms;
    out.retry.retry_delay_ms_max = d.retry_max_ms;
    out.retry.age_max_ms = d.message_age_max_ms;
    for o in &d.domains {
        let l = DomainLimits {
            connections_max: o.connections_max.unwrap_or(defaults.connections_max),
            messages_per_connection_max: o
                .messages_per_connection_max
                .unwrap_or(defaults.messages_per_connection_max),
            messages_per_second_max: o
                .messages_per_second_max
                .or(defaults.messages_per_second_max),
            recipients_per_transaction_max: o
                .recipients_per_transaction_max
                .unwrap_or(defaults.recipients_per_transaction_max),
            tls: tls_policy(o.tls.as_deref()),
        };
        out.domain_limits.insert(o.domain.to_ascii_lowercase(), l);
    }
    for path in &d.extra_root_certs {
        let pem = std::fs::read(path).map_err(|e| EngineError::Config {
            message: format!("delivery.extra_root_certs: {}: {e}", path.display()),
        })?;
        out.extra_root_certs_pem.push(pem);
    }
    out.validate().map_err(|e| EngineError::Config {
        message: format!("delivery: {e}"),
    })?;
    Ok(out)
}
