//! Prometheus metrics: the recorder and its HTTP listener, run on the slow-path tokio thread.
//!
//! Every crate records through the `metrics` facade; this module installs the one recorder and
//! describes the engine's own series. Names: `petrel_` prefix, unit suffix, `_total` counters.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::error::EngineError;

pub const CONNECTIONS_TOTAL: &str = "petrel_smtp_connections_total";
pub const CONNECTIONS_OPEN: &str = "petrel_smtp_connections_open";
pub const SESSIONS_TOTAL: &str = "petrel_smtp_sessions_total";
pub const MESSAGES_ACCEPTED_TOTAL: &str = "petrel_smtp_messages_accepted_total";
pub const ACCEPTED_BYTES_TOTAL: &str = "petrel_smtp_accepted_bytes_total";
pub const REJECTIONS_TOTAL: &str = "petrel_smtp_rejections_total";
pub const SESSION_PANICS_TOTAL: &str = "petrel_smtp_session_panics_total";
pub const SPOOL_COMMIT_SECONDS: &str = "petrel_spool_commit_duration_seconds";
/// One group-commit round's fdatasyncs, by shard: the disk's share of `SPOOL_COMMIT_SECONDS`.
pub const SPOOL_SYNC_SECONDS: &str = "petrel_spool_sync_duration_seconds";
/// Writers (mostly messages) one group-commit round covered, by shard.
pub const SPOOL_COMMIT_GROUP_SIZE: &str = "petrel_spool_commit_group_size";
/// Group-commit rounds not measured because the shard did not drain them in time, by shard.
pub const SPOOL_SYNC_SAMPLES_DROPPED_TOTAL: &str = "petrel_spool_sync_samples_dropped_total";
pub const SPOOL_MESSAGES: &str = "petrel_spool_messages";
pub const SPOOL_BYTES: &str = "petrel_spool_bytes";
pub const SPOOL_INDEX_MEMORY_BYTES: &str = "petrel_spool_index_memory_bytes";
pub const SPOOL_BODY_CACHE_BYTES: &str = "petrel_spool_body_cache_bytes";
/// 1 while the shard's spool takes messages, 0 while a failed write or sync stops it.
pub const SPOOL_HEALTHY: &str = "petrel_spool_healthy";
pub const SPOOL_RECOVERY_SKIPPED_TOTAL: &str = "petrel_spool_recovery_skipped_records_total";
/// 1 while the shard requeues what its spool held at start (it takes mail meanwhile), then 0.
pub const SPOOL_RECOVERING: &str = "petrel_spool_recovering";
pub const AUTH_TOTAL: &str = "petrel_smtp_auth_total";
pub const DKIM_SIGNED_TOTAL: &str = "petrel_dkim_signed_total";
/// ARC sets added to forwarding tenants' messages, by the seal's `cv` (`none`, `pass`, `fail`).
pub const ARC_SEALS_TOTAL: &str = "petrel_arc_seals_total";
/// Forwarding tenants' messages sent without an ARC set, by reason (`arc.rs`).
pub const ARC_SEAL_SKIPPED_TOTAL: &str = "petrel_arc_seal_skipped_total";
pub const POLICY_VERSION: &str = "petrel_policy_version";
/// Deleted tenants whose queued mail was purged and data keys destroyed here.
pub const TENANTS_ERASED: &str = "petrel_tenants_erased_total";
/// The suppression set: entries, change-log seq, heap bytes.
pub const SUPPRESSION_ENTRIES: &str = "petrel_suppression_entries";
pub const SUPPRESSION_VERSION: &str = "petrel_suppression_version";
pub const SUPPRESSION_MEMORY_BYTES: &str = "petrel_suppression_memory_bytes";
/// The seq of the control plane's signed audit checkpoint this engine keeps (issue 16).
pub const AUDIT_CHECKPOINT_SEQ: &str = "petrel_audit_checkpoint_seq";
/// 1 while the push link to the control plane has a session, 0 otherwise; only with a control
/// plane configured.
pub const CONTROL_LINK_UP: &str = "petrel_control_link_up";
/// Spool writes of delivery outcomes that failed, by `op` (`petrel-delivery` counts them).
pub const DELIVERY_SPOOL_ERRORS_TOTAL: &str = "petrel_delivery_spool_errors_total";
/// How often the suppression gauges are refreshed, ms.
pub const SUPPRESSION_GAUGES_INTERVAL_MS: u64 = 1_000;

/// Buckets of `SPOOL_COMMIT_GROUP_SIZE`, in writers.
const GROUP_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Latency buckets in seconds, 50 µs to 10 s.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

/// How often histograms are drained into their summaries when nobody scrapes (the exporter's
/// own listener did this every 5 s).
pub const METRICS_UPKEEP_MS: u64 = 5_000;

/// Installs the global recorder and serves `GET /metrics` on `listen` (port 0 picks one) from the
/// given runtime. Returns the bound address. A second engine in the same process (tests) keeps
/// the first recorder and serves nothing.
pub fn install(
    rt: &tokio::runtime::Handle,
    listen: Option<SocketAddr>,
) -> Result<Option<SocketAddr>, EngineError> {
    let _guard = rt.enter();
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
        .map_err(EngineError::MetricsBuckets)?
        .set_buckets_for_metric(
            Matcher::Full(SPOOL_COMMIT_GROUP_SIZE.into()),
            GROUP_SIZE_BUCKETS,
        )
        .map_err(EngineError::MetricsBuckets)?
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        return Ok(None);
    }
    describe();
    register_at_zero();
    let upkeep = handle.clone();
    rt.spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(METRICS_UPKEEP_MS));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let Some(addr) = listen else {
        return Ok(None);
    };
    let std_listener =
        std::net::TcpListener::bind(addr).map_err(|source| EngineError::Listen { addr, source })?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({"error": {"code": "not_found", "message": "the metrics are at /metrics"}})),
            )
        });
    rt.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(Some(local))
}

/// Counters of rare events exist from the start at 0, with every label value the alert rules
/// and the dashboard read: otherwise a counter appears at its first event already at 1, and
/// `increase(...) > 0` misses that first event.
fn register_at_zero() {
    use petrel_delivery::events::wire::{EVENTS_BACKLOG_ERRORS_TOTAL, EVENTS_DROPPED_TOTAL};
    metrics::counter!(SESSION_PANICS_TOTAL).increment(0);
    metrics::counter!(SPOOL_RECOVERY_SKIPPED_TOTAL).increment(0);
    for op in ["update", "remove"] {
        metrics::counter!(DELIVERY_SPOOL_ERRORS_TOTAL, "op" => op).increment(0);
    }
    metrics::counter!(EVENTS_DROPPED_TOTAL, "reason" => "backlog_full").increment(0);
    metrics::counter!(EVENTS_BACKLOG_ERRORS_TOTAL).increment(0);
    // Each source's petrel_egress_messages_total exists from its Egress::build on.
    metrics::counter!(petrel_delivery::egress::EGRESS_UNKNOWN_POOL_TOTAL).increment(0);
    for result in ["issued", "failed"] {
        metrics::counter!(crate::acme::METRIC_ORDERS, "result" => result).increment(0);
    }
    {
        use petrel_delivery::tls_rpt::{
            PolicyType, TLS_RPT_OVERFLOW_TOTAL, TLS_RPT_SESSIONS_TOTAL,
        };
        for t in [PolicyType::Sts, PolicyType::Tlsa, PolicyType::NoPolicyFound] {
            metrics::counter!(TLS_RPT_SESSIONS_TOTAL, "policy_type" => t.as_str(), "result" => "success")
                .increment(0);
        }
        metrics::counter!(TLS_RPT_OVERFLOW_TOTAL).increment(0);
    }
    for cv in crate::arc::CV_LABELS {
        metrics::counter!(ARC_SEALS_TOTAL, "cv" => cv).increment(0);
    }
    for reason in crate::arc::SKIP_REASONS {
        metrics::counter!(ARC_SEAL_SKIPPED_TOTAL, "reason" => reason).increment(0);
    }
    {
        use petrel_outbound::dane::{DANE_LOOKUPS_TOTAL, DANE_VERIFICATIONS_TOTAL};
        for result in ["secure", "insecure", "bogus", "none", "failed"] {
            metrics::counter!(DANE_LOOKUPS_TOTAL, "result" => result).increment(0);
        }
        for result in ["success", "tlsa-invalid", "dnssec-invalid", "dane-required"] {
            metrics::counter!(DANE_VERIFICATIONS_TOTAL, "result" => result).increment(0);
        }
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(CONNECTIONS_TOTAL, "SMTP connections accepted or refused");
    describe_counter!(
        TENANTS_ERASED,
        "Deleted tenants whose queued mail was purged and data keys destroyed"
    );
    describe_gauge!(CONNECTIONS_OPEN, "SMTP connections open now");
    describe_counter!(SESSIONS_TOTAL, "SMTP sessions ended, by how they ended");
    describe_counter!(
        MESSAGES_ACCEPTED_TOTAL,
        "Messages acknowledged with 250 after the spool commit"
    );
    describe_counter!(
        ACCEPTED_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes of accepted messages"
    );
    describe_counter!(REJECTIONS_TOTAL, "Commands or messages refused, by reason");
    describe_counter!(
        SESSION_PANICS_TOTAL,
        "Sessions that panicked (the shard survived)"
    );
    describe_histogram!(
        SPOOL_COMMIT_SECONDS,
        Unit::Seconds,
        "Time from end of data to durable spool commit"
    );
    describe_histogram!(
        SPOOL_SYNC_SECONDS,
        Unit::Seconds,
        "Time of one group-commit round's fdatasyncs (the data files it wrote and the directory), by shard"
    );
    describe_histogram!(
        SPOOL_COMMIT_GROUP_SIZE,
        "Writers (mostly messages) one group-commit round made durable, by shard"
    );
    describe_counter!(
        SPOOL_SYNC_SAMPLES_DROPPED_TOTAL,
        "Group-commit rounds left out of the sync metrics because the shard did not drain them in time"
    );
    describe_gauge!(SPOOL_MESSAGES, "Messages in the spool");
    describe_gauge!(SPOOL_BYTES, Unit::Bytes, "Bytes in the spool");
    describe_gauge!(
        SPOOL_INDEX_MEMORY_BYTES,
        Unit::Bytes,
        "Heap bytes of the spool's index of live messages, by shard"
    );
    describe_gauge!(
        SPOOL_BODY_CACHE_BYTES,
        Unit::Bytes,
        "Bytes of message bodies the spool holds for first delivery attempts, by shard"
    );
    describe_gauge!(
        SPOOL_HEALTHY,
        "1 while the shard's spool takes messages, 0 while a failed write or sync stops it"
    );
    describe_counter!(
        SPOOL_RECOVERY_SKIPPED_TOTAL,
        "Spool records skipped at recovery (torn or corrupt)"
    );
    describe_gauge!(
        SPOOL_RECOVERING,
        "1 while the shard requeues what its spool held at start (taking mail meanwhile), by shard"
    );
    describe_counter!(AUTH_TOTAL, "SMTP AUTH attempts by result");
    describe_counter!(DKIM_SIGNED_TOTAL, "Messages DKIM-signed before spooling");
    describe_counter!(
        ARC_SEALS_TOTAL,
        "ARC sets added to forwarding tenants' messages, by the seal's chain validation (cv)"
    );
    describe_counter!(
        ARC_SEAL_SKIPPED_TOTAL,
        "Forwarding tenants' messages sent without an ARC set, by reason"
    );
    describe_gauge!(POLICY_VERSION, "Applied control-plane policy version");
    describe_gauge!(SUPPRESSION_ENTRIES, "Entries in the suppression set");
    describe_gauge!(
        SUPPRESSION_VERSION,
        "Suppression change-log seq the set reflects"
    );
    describe_gauge!(
        SUPPRESSION_MEMORY_BYTES,
        "Heap bytes held by the suppression set"
    );
    describe_gauge!(
        AUDIT_CHECKPOINT_SEQ,
        "Audit chain seq of the control plane's signed checkpoint kept here (absent: none yet)"
    );
    describe_gauge!(
        CONTROL_LINK_UP,
        "1 while the push link to the control plane has a session, 0 while it connects or waits to reconnect (absent: no control plane configured)"
    );
    describe_gauge!(
        crate::tls::METRIC_CERT_EXPIRY,
        "notAfter of the SMTP server's TLS certificate in use, Unix seconds (it follows reloads)"
    );
    describe_counter!(
        crate::acme::METRIC_ORDERS,
        "ACME certificate orders ([acme]), by result: issued, failed (retried with a doubling wait)"
    );
    describe_gauge!(
        crate::quota_redis::METRIC_FALLBACK,
        "1 while Redis is unreachable and each cluster-wide limit is counted here at this engine's share (limit / live engines), 0 while Redis counts them (absent: no [cluster] redis_url)"
    );
    describe_counter!(
        crate::quota_redis::METRIC_REQUESTS,
        "Grant requests sent to Redis for the cluster-wide quotas, by result (ok; error: the turn failed or timed out)"
    );
    describe_gauge!(
        crate::quota_redis::METRIC_ENGINES_LIVE,
        "Live engines of the fleet as the control plane last reported them (0: not reported yet); the divisor of the fallback share"
    );
    describe_counter!(
        crate::quota_redis::METRIC_WAITS,
        "Admissions that waited for a grant from Redis (no lease left at this engine)"
    );
    describe_gauge!(
        "petrel_delivery_connections_open",
        "Outbound connections open now, by destination: the domain for destinations with limits of their own (configured or pushed), `other` for the rest"
    );
    describe_counter!(
        "petrel_delivery_delivered_total",
        "Recipients delivered (2xx from the remote server)"
    );
    describe_counter!(
        "petrel_delivery_deferred_total",
        "Delivery attempts deferred (4xx, timeouts, refused or dropped connections)"
    );
    describe_counter!(
        "petrel_delivery_bounced_total",
        "Recipients bounced (5xx or an administrator's bounce)"
    );
    describe_counter!(
        "petrel_delivery_expired_total",
        "Recipients that reached the maximum queue age"
    );
    describe_counter!(
        DELIVERY_SPOOL_ERRORS_TOTAL,
        "Spool writes of delivery outcomes that failed, by operation (update, remove): the outcome holds in memory, a restart may deliver again"
    );
    describe_counter!(
        "petrel_egress_warmup_waits_total",
        "Lane turns held back because their egress source sent its warm-up cap for the day"
    );
    describe_counter!(
        "petrel_egress_source_moves_total",
        "Lanes whose ready mail moved to another source of the pool because theirs reached its warm-up cap"
    );
    describe_counter!(
        "petrel_delivery_site_throttles_total",
        "Replies that matched a throttle rule of the shaping, by provider and action (suspend, narrow): the site, or one tenant there, waits or gets fewer connections for the rule's time"
    );
    describe_counter!(
        "petrel_delivery_pipeline_pauses_total",
        "Connections lost mid-transaction: their host gets one transaction per write for a while (lost replies make duplicates)"
    );
    describe_histogram!(
        "petrel_delivery_attempt_duration_seconds",
        Unit::Seconds,
        "Time of one delivery attempt per message (a write of several transactions is shared)"
    );
    describe_histogram!(
        "petrel_delivery_end_to_end_seconds",
        Unit::Seconds,
        "Time from acceptance to the last recipient's final outcome"
    );
    describe_gauge!(
        "petrel_queue_depth",
        "Recipients queued for delivery, by shard"
    );
    describe_gauge!(
        "petrel_queue_memory_bytes",
        Unit::Bytes,
        "Heap bytes of the queued mail, by shard and part: messages (the table), recipients, attribution (held ones), senders, domains (the queues), routes (the lanes' routing state and the sites)"
    );
    describe_gauge!(
        "petrel_queue_oldest_age_seconds",
        Unit::Seconds,
        "Age of the oldest queued message, by shard"
    );
    describe_counter!(
        "petrel_outbound_connections_total",
        "Outbound SMTP connections made"
    );
    describe_counter!(
        "petrel_outbound_connect_failures_total",
        "Outbound connections whose SMTP handshake failed after TCP connected: a greeting other than 220, EHLO and HELO refused, STARTTLS failed (or required and not offered), or a timeout in any of these; refused or timed-out TCP connects are not counted (they show as deferrals)"
    );
    describe_counter!(
        "petrel_mta_sts_lookups_total",
        "MTA-STS policy lookups by outcome: cached, fetched, stale (a cached policy kept after a failed refresh) or none"
    );
    describe_counter!(
        "petrel_mta_sts_fetches_total",
        "HTTPS fetches of MTA-STS policy files, by result"
    );
    describe_counter!(
        "petrel_mta_sts_refresh_failures_total",
        "Background refreshes of cached MTA-STS policies that failed (the cached policy stays in use until it expires)"
    );
    describe_counter!(
        "petrel_delivery_mta_sts_sessions_total",
        "Delivery sessions looked up under MTA-STS, by mode (enforce, testing, none) and outcome (all_mx_match, some_mx_outside, no_mx_match, smart_host)"
    );
    describe_counter!(
        petrel_outbound::dane::DANE_LOOKUPS_TOTAL,
        "DNSSEC-validated TLSA lookups of MX hosts (DANE), by result: secure, insecure, bogus, none (validated absence) or failed"
    );
    describe_counter!(
        petrel_outbound::dane::DANE_VERIFICATIONS_TOTAL,
        "MX hosts checked under DANE, by result: success, or the TLS-RPT failure type (tlsa-invalid, dnssec-invalid, dane-required)"
    );
    describe_counter!(
        petrel_outbound::TCP_CONNECT_FAILURES,
        "Outbound TCP connects that failed, by kind: refused, timeout, unreachable, other"
    );
    describe_counter!(
        "petrel_outbound_transactions_total",
        "Outbound SMTP transactions sent"
    );
    describe_counter!(
        "petrel_outbound_route_cache_hits_total",
        "Destination routes answered from the resolver's cache"
    );
    describe_counter!(
        "petrel_outbound_route_cache_misses_total",
        "Destination routes that needed DNS lookups"
    );
    describe_counter!(
        "petrel_outbound_route_failures_total",
        "Destination routes that could not be resolved"
    );
    describe_gauge!(
        petrel_delivery::events::wire::EVENTS_BACKLOG_BYTES,
        Unit::Bytes,
        "Bytes of events the control plane has not acknowledged yet (new mail gets 452 4.3.1 past events.backlog_bytes_max)"
    );
    describe_counter!(
        petrel_delivery::events::wire::EVENTS_BACKLOGGED_TOTAL,
        "Events written to the durable backlog for the control plane"
    );
    describe_counter!(
        petrel_delivery::events::wire::EVENTS_DROPPED_TOTAL,
        "Events not kept, by reason (backlog_full: rejected events while the backlog is full)"
    );
    describe_counter!(
        petrel_delivery::events::wire::EVENTS_BACKLOG_ERRORS_TOTAL,
        "Failed writes or syncs of the event backlog (each retried; outcomes wait meanwhile)"
    );
    describe_counter!(
        petrel_delivery::tls_rpt::TLS_RPT_SESSIONS_TOTAL,
        "Outbound connection attempts counted for TLS-RPT (RFC 8460), by policy type and result (success or the failure type)"
    );
    describe_counter!(
        petrel_delivery::egress::EGRESS_MESSAGES_TOTAL,
        "Messages sent, by egress source (docs/egress.md)"
    );
    describe_gauge!(
        petrel_delivery::egress::EGRESS_WARMUP_CAP,
        "Messages a warming-up egress source may send today (UTC), by source; +Inf once its ramp ends without a full_day_max"
    );
    describe_counter!(
        petrel_delivery::egress::EGRESS_UNKNOWN_POOL_TOTAL,
        "Lookups of a tenant's egress pool that named a pool this engine does not configure (its mail leaves from the default pool instead)"
    );
    describe_counter!(
        petrel_delivery::tls_rpt::TLS_RPT_OVERFLOW_TOTAL,
        "TLS-RPT sessions past the per-shard key bound between two flushes (in no report)"
    );
}

/// Refreshes the gauges of the control plane link and of what it feeds (the link's session,
/// the suppression set, the kept audit checkpoint's seq) every
/// [`SUPPRESSION_GAUGES_INTERVAL_MS`] (tokio; runs until dropped). Started only when a control
/// plane is configured, so [`CONTROL_LINK_UP`] is absent without one.
pub async fn publish_suppressions(policy: std::sync::Arc<petrel_policy::PolicyStore>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(
        SUPPRESSION_GAUGES_INTERVAL_MS,
    ));
    loop {
        tick.tick().await;
        metrics::gauge!(CONTROL_LINK_UP).set(if policy.link_up() { 1.0 } else { 0.0 });
        let set = policy.suppressions();
        metrics::gauge!(SUPPRESSION_ENTRIES).set(set.len() as f64);
        metrics::gauge!(SUPPRESSION_VERSION).set(set.version() as f64);
        metrics::gauge!(SUPPRESSION_MEMORY_BYTES).set(set.memory_bytes() as f64);
        if let Some(seq) = policy.audit_checkpoint().seq() {
            metrics::gauge!(AUDIT_CHECKPOINT_SEQ).set(seq as f64);
        }
    }
}
