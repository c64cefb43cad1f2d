//! The delivery wiring: what every shard's delivery shares ([`DeliveryShared`]), built from the
//! engine configuration.

use std::sync::Arc;

use petrel_delivery::egress::{CountsSaver, Day, Egress, EGRESS_COUNTS_SAVE_INTERVAL_MS};
use petrel_delivery::tls_rpt::{TlsRptFlusher, TlsRptRecorder, TLS_RPT_FLUSH_INTERVAL_MS};
use petrel_delivery::{
    DeliveryConfig, DomainLimits, EventSink, EventsConfig, GlobalLimits, TlsPolicy,
};
use petrel_outbound::dane::DaneConfig;
use petrel_outbound::{MtaSts, MtaStsConfig, Resolver, ResolverConfig, StaticRoute};

use crate::config::{DeliverySection, EngineConfig};
use crate::error::EngineError;

/// Destination domains tracked by the engine-wide limiter, at most.
const DESTINATIONS_MAX: usize = 1_000_000;

/// What every shard's delivery shares (all `Send + Sync`).
#[derive(Clone)]
pub struct DeliveryShared {
    pub config: Arc<DeliveryConfig>,
    pub resolver: Resolver,
    /// MTA-STS policies for MX delivery (`delivery.mta_sts`); its cache is flushed at shutdown.
    pub mta_sts: Option<MtaSts>,
    pub limits: Arc<GlobalLimits>,
    pub events: EventSink,
    /// The events writer thread, flushed and joined once the shards have stopped.
    pub writer: Arc<std::sync::Mutex<Option<petrel_delivery::EventWriter>>>,
    /// One TLS-RPT recorder per shard, by shard number (`petrel_delivery::tls_rpt`).
    pub tls_rpt: Vec<TlsRptRecorder>,
    /// Moves the recorders' counts to the event backlog; stopped (with a last flush) once the
    /// shards have stopped.
    pub tls_rpt_flusher: Arc<std::sync::Mutex<Option<TlsRptFlusher>>>,
    /// Saves the egress sources' daily counts (`<data>/egress-counts.json`); stopped, with a
    /// last save, once the shards have stopped.
    pub egress_saver: Arc<std::sync::Mutex<Option<CountsSaver>>>,
    /// The shaping delivery reads (the files' with the pushed overlay), for the admin
    /// endpoint's `GET /v1/shaping`.
    pub shaping: crate::shaping_overlay::ShapingView,
}

pub fn build(
    cfg: &EngineConfig,
    policy: Arc<petrel_policy::PolicyStore>,
    outbox: Option<Arc<petrel_policy::Outbox>>,
) -> Result<DeliveryShared, EngineError> {
    let d = &cfg.delivery;
    let mut config = delivery_config(cfg)?;
    config.return_path = Some(Arc::new(crate::intake_keys::PolicyReturnPath {
        keys: Arc::new(crate::intake_keys::KeyCache::new(Arc::clone(&policy))),
    }));
    config.tenant_delivery = Some(Arc::new(crate::tenant_delivery::PolicyTenantDelivery {
        policy: Arc::clone(&policy),
    }));
    let shaping_source = Arc::new(crate::shaping_overlay::PolicyShaping::new(Arc::clone(
        &policy,
    )));
    config.shaping_source = Some(shaping_source.clone());
    let limits = Arc::new(GlobalLimits::new(DESTINATIONS_MAX));
    // With Redis, pushed destination connection limits hold for the whole fleet.
    let fleet = cfg.cluster.redis_url.is_some().then(|| Arc::clone(&limits));
    config.dynamic_limits = Some(Arc::new(PolicyLimits { policy, fleet }));
    let config = Arc::new(config);
    let shaping = crate::shaping_overlay::ShapingView {
        source: shaping_source,
        file: Arc::clone(&config.shaping),
    };
    let mut static_routes: Vec<StaticRoute> = d
        .routes
        .iter()
        .map(|r| StaticRoute {
            domain: Some(r.domain.to_ascii_lowercase()),
            target: r.host,
            tls_name: r.tls_name.clone(),
        })
        .collect();
    if let Some(all) = d.relay_to {
        static_routes.push(StaticRoute {
            domain: None,
            target: all,
            tls_name: d.relay_tls_name.clone(),
        });
    }
    let resolver_config = ResolverConfig {
        nameservers: d.nameservers.clone(),
        static_routes,
        smtp_port: d.smtp_port,
        dane: d.dane.then(|| DaneConfig {
            trust_anchor_file: d.dnssec_trust_anchor_file.clone(),
            ..DaneConfig::default()
        }),
        ..ResolverConfig::default()
    };
    // With `relay_to` every domain has a static route: the service runs only when policies
    // apply to smart hosts too.
    let mta_sts = if d.mta_sts && (d.relay_to.is_none() || d.smart_host_mta_sts) {
        let sts = MtaSts::start(MtaStsConfig {
            data_dir: Some(cfg.server.data_dir.clone()),
            extra_root_certs_pem: config.extra_root_certs_pem.clone(),
            ..MtaStsConfig::default().with_resolver(&resolver_config)
        })
        .map_err(EngineError::MtaSts)?;
        Some(sts)
    } else {
        None
    };
    let resolver = Resolver::start(resolver_config).map_err(EngineError::Resolver)?;
    let tls_rpt: Vec<TlsRptRecorder> = (0..cfg.shard_count())
        .map(|_| TlsRptRecorder::default())
        .collect();
    let tls_rpt_flusher =
        TlsRptFlusher::start(tls_rpt.clone(), outbox.clone(), TLS_RPT_FLUSH_INTERVAL_MS)
            .map_err(EngineError::Io)?;
    let egress_saver = start_egress(&config.egress, cfg)?;
    let events = EventsConfig {
        jsonl: cfg.events_jsonl(),
        accepted: cfg.events.jsonl_accepted,
        outbox,
        engine_id: cfg.engine_id(),
        retention_ms: cfg.events.jsonl_retention_days.saturating_mul(86_400_000),
        ..EventsConfig::new(cfg.server.data_dir.join("events"))
    };
    let (events, writer) = EventSink::start(events).map_err(EngineError::Events)?;
    Ok(DeliveryShared {
        config,
        resolver,
        mta_sts,
        limits,
        events,
        writer: Arc::new(std::sync::Mutex::new(Some(writer))),
        tls_rpt,
        tls_rpt_flusher: Arc::new(std::sync::Mutex::new(Some(tls_rpt_flusher))),
        egress_saver: Arc::new(std::sync::Mutex::new(Some(egress_saver))),
        shaping,
    })
}

/// Restores today's counts from before a restart (a warm-up cap holds across it) and starts
/// the thread that saves them. A file that cannot be read is logged, not fatal: the counts
/// start from 0 and the file is written anew.
fn start_egress(egress: &Arc<Egress>, cfg: &EngineConfig) -> Result<CountsSaver, EngineError> {
    let data = &cfg.server.data_dir;
    match petrel_delivery::egress::counters::load(egress, data) {
        Ok(0) => {}
        Ok(n) => tracing::info!(sources = n, "egress daily counts restored"),
        Err(e) => {
            tracing::warn!(error = %e, "egress daily counts not restored; warm-up caps count from 0")
        }
    }
    egress.publish_caps(Day::today());
    CountsSaver::start(
        Arc::clone(egress),
        data.clone(),
        EGRESS_COUNTS_SAVE_INTERVAL_MS,
    )
    .map_err(EngineError::Io)
}

/// The control plane's pushed destination limits, read from the current snapshot at every new
/// delivery session: a change reaches delivery without a restart.
#[derive(Debug)]
pub struct PolicyLimits {
    pub policy: Arc<petrel_policy::PolicyStore>,
    /// The engine's limits registry when the fleet's connection limits apply (Redis
    /// configured): a pushed connection limit marks its destination for leases
    /// (`fleet_connections.rs`).
    pub fleet: Option<Arc<GlobalLimits>>,
}

impl petrel_delivery::LimitsSource for PolicyLimits {
    fn overlay(&self, domain: &str, configured: &DomainLimits) -> DomainLimits {
        let pushed = self.policy.current().destination_limit(domain);
        let mut out = configured.clone();
        if let Some(fleet) = &self.fleet {
            fleet
                .destination(domain)
                .set_fleet_max(pushed.connections_max.map_or(0, |c| c.max(1)));
        }
        if let Some(c) = pushed.connections_max {
            out.connections_max = c.max(1);
        }
        if let Some(r) = pushed.messages_per_second_max {
            out.messages_per_second_max = Some(r.max(1));
        }
        if pushed.tls_required {
            out.tls = TlsPolicy::Required;
        }
        out
    }
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
        next_hop_sessions_max: d.next_hop_sessions_per_shard_max,
        smart_host_mta_sts: d.smart_host_mta_sts,
        ..DeliveryConfig::default()
    };
    out.egress = Arc::new(
        Egress::build(&d.egress_spec()).map_err(|e| EngineError::Config {
            message: e.to_string(),
        })?,
    );
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
    if let Some(path) = &d.bounce_rules_file {
        let classifier = petrel_delivery::BounceClassifier::with_operator_rules(path)
            .map_err(EngineError::BounceRules)?;
        out.bounce_classifier = Arc::new(classifier);
    }
    if let Some(path) = &d.shaping_file {
        let shaping =
            petrel_delivery::shaping::Shaping::load(Some(path)).map_err(EngineError::Shaping)?;
        tracing::info!(
            file = %path.display(),
            providers = shaping.providers().count(),
            throttle_rules = shaping.rule_count(),
            "delivery.shaping_file laid over the shipped shaping"
        );
        out.shaping = Arc::new(shaping);
    }
    out.validate().map_err(|e| EngineError::Config {
        message: format!("delivery: {e}"),
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_delivery::LimitsSource;

    #[test]
    fn operator_bounce_rules_load_and_a_bad_file_is_a_typed_error() {
        use petrel_delivery::{BounceClass, Category};
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ops-rules.toml");
        std::fs::write(
            &good,
            "[[pattern]]\nregex = 'acme mailbox retired'\ncategory = \"inactive_mailbox\"\n",
        )
        .unwrap();
        let mut cfg = EngineConfig::default();
        cfg.delivery.bounce_rules_file = Some(good);
        let d = delivery_config(&cfg).unwrap();
        let reply = petrel_bounce::Reply::new(550, None, "Acme mailbox retired in 2024");
        let c = d.bounce_classifier.classify_reply(&reply);
        assert_eq!(
            (c.category, c.class),
            (Category::InactiveMailbox, BounceClass::Hard)
        );
        // Without the file the shipped rules alone decide: a bare 550 is `other`.
        let shipped = delivery_config(&EngineConfig::default()).unwrap();
        let c = shipped.bounce_classifier.classify_reply(&reply);
        assert_eq!(c.category, Category::Other);

        let bad = dir.path().join("bad-rules.toml");
        std::fs::write(
            &bad,
            "[[enhanced]]\ncode = \"5.1.1\"\ncategory = \"user_unknown\"\n",
        )
        .unwrap();
        cfg.delivery.bounce_rules_file = Some(bad);
        let e = delivery_config(&cfg).unwrap_err();
        assert!(matches!(
            &e,
            EngineError::BounceRules(petrel_bounce::RulesError::UnknownName { .. })
        ));
        let text = e.to_string();
        assert!(text.contains("bad-rules.toml"), "{text}");
        assert!(text.contains("enhanced rule 0"), "{text}");
        assert!(text.contains("user_unknown"), "{text}");

        cfg.delivery.bounce_rules_file = Some(dir.path().join("missing.toml"));
        let e = delivery_config(&cfg).unwrap_err();
        assert!(
            matches!(
                &e,
                EngineError::BounceRules(petrel_bounce::RulesError::Read { .. })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("missing.toml"), "{e}");
    }

    #[test]
    fn egress_counts_are_restored_at_start_and_saved_at_stop() {
        use petrel_delivery::egress::DailyCounts;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = EngineConfig::from_toml(
            "[delivery]\ndefault_pool = \"p\"\n[[delivery.sources]]\nname = \"ip2\"\n\
             local_addr = \"127.0.0.2\"\n[[delivery.pools]]\nname = \"p\"\n\
             sources = [{ source = \"ip2\" }]\n",
        )
        .unwrap();
        cfg.server.data_dir = dir.path().to_path_buf();
        let today = Day::today();
        let first = delivery_config(&cfg).unwrap().egress;
        let ip2 = first.source_id("ip2").unwrap();
        let mut saver = start_egress(&first, &cfg).unwrap();
        first.record_sent(ip2, today);
        first.record_sent(ip2, today);
        saver.stop();
        let again = delivery_config(&cfg).unwrap().egress;
        assert_eq!(again.counters().sent_today(ip2, today), 0);
        let mut saver = start_egress(&again, &cfg).unwrap();
        assert_eq!(again.counters().sent_today(ip2, today), 2, "restored");
        saver.stop();
        // A bad file is not fatal: the counts start from 0.
        std::fs::write(dir.path().join("egress-counts.json"), "not json").unwrap();
        let third = delivery_config(&cfg).unwrap().egress;
        start_egress(&third, &cfg).unwrap().stop();
        assert_eq!(third.counters().sent_today(ip2, today), 0);
    }

    #[test]
    fn operator_shaping_file_loads_and_a_bad_one_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let gmail = ["gmail-smtp-in.l.google.com"];
        let shipped = delivery_config(&EngineConfig::default()).unwrap().shaping;
        assert_eq!(
            shipped.limits(shipped.provider_for(&gmail)).connections_max,
            5
        );

        let good = dir.path().join("shaping.toml");
        std::fs::write(&good, "[provider.google]\nconnections_max = 12\n").unwrap();
        let mut cfg = EngineConfig::from_toml(&format!(
            "[delivery]\nshaping_file = {:?}\n",
            good.display().to_string()
        ))
        .unwrap();
        let s = delivery_config(&cfg).unwrap().shaping;
        assert_eq!(s.limits(s.provider_for(&gmail)).connections_max, 12);

        let bad = dir.path().join("bad-shaping.toml");
        std::fs::write(&bad, "[provider.google]\n\nconnections_max = 0\n").unwrap();
        cfg.delivery.shaping_file = Some(bad);
        let e = delivery_config(&cfg).unwrap_err();
        assert!(matches!(&e, EngineError::Shaping(_)), "{e}");
        let text = e.to_string();
        assert!(text.contains("delivery.shaping_file"), "{text}");
        assert!(
            text.contains("bad-shaping.toml") && text.contains("line 1"),
            "{text}"
        );
        assert!(text.contains("provider.google.connections_max"), "{text}");

        cfg.delivery.shaping_file = Some(dir.path().join("missing.toml"));
        let e = delivery_config(&cfg).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
    }

    #[test]
    fn pushed_destination_limits_overlay_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(petrel_policy::PolicyStore::load_or_empty(dir.path()));
        let snapshot: petrel_policy::PolicySnapshot = serde_json::from_value(serde_json::json!({
            "version": 1, "generated_unix_ms": 0, "tenants": [], "domains": [], "credentials": [],
            "destination_limits": [{"domain": "gmail.test", "connections_max": 3,
                                    "messages_per_second_max": 50, "tls_required": true}],
            "defaults": {"tenant_messages_per_second_max": null, "tenant_messages_per_day_max": null,
                         "domain_messages_per_second_max": null, "destination_connections_max": null,
                         "destination_messages_per_second_max": null}
        }))
        .unwrap();
        let limits = PolicyLimits {
            policy: Arc::clone(&store),
            fleet: None,
        };
        let configured = DomainLimits::default();
        assert_eq!(
            limits.overlay("gmail.test", &configured),
            configured,
            "nothing pushed yet"
        );
        store.apply(snapshot).unwrap();
        let got = limits.overlay("gmail.test", &configured);
        assert_eq!(got.connections_max, 3);
        assert_eq!(got.messages_per_second_max, Some(50));
        assert_eq!(got.tls, TlsPolicy::Required);
        assert_eq!(limits.overlay("other.test", &configured), configured);
    }
}
