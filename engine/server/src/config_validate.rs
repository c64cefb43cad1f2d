//! [`EngineConfig::validate`]: the checks serde cannot make, each naming its key.

use super::*;

impl EngineConfig {
    /// Checks values serde cannot: each message names the key.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |key: &str, why: &str| {
            Err(EngineError::Config {
                message: format!("{key}: {why}"),
            })
        };
        if self.server.hostname.is_empty() || self.server.hostname.contains(char::is_whitespace) {
            return bad("server.hostname", "must be a non-empty name without spaces");
        }
        let days = self.encryption.data_key_rotate_after_days;
        if days == 0 || days > DATA_KEY_ROTATE_AFTER_DAYS_MAX {
            return bad(
                "encryption.data_key_rotate_after_days",
                "must be 1 to DATA_KEY_ROTATE_AFTER_DAYS_MAX (3650)",
            );
        }
        let c = &self.cluster;
        if !(1..=CLUSTER_TIMEOUT_MS_MAX).contains(&c.request_timeout_ms) {
            return bad("cluster.request_timeout_ms", "must be 1 to 10000");
        }
        if !(1..=CLUSTER_TIMEOUT_MS_MAX).contains(&c.probe_interval_ms) {
            return bad("cluster.probe_interval_ms", "must be 1 to 10000");
        }
        if c.key_prefix.len() > CLUSTER_KEY_PREFIX_MAX_BYTES
            || c.key_prefix.contains(char::is_whitespace)
        {
            return bad("cluster.key_prefix", "at most 64 bytes, without spaces");
        }
        if let Some(url) = &c.redis_url {
            if let Err(why) = crate::quota_redis::check_url(url) {
                return bad("cluster.redis_url", &why);
            }
        }
        if self.server.shards > 256 {
            return bad(
                "server.shards",
                "at most 256 shards (the shard id is 8 bits)",
            );
        }
        if self.events.backlog_bytes_max < EVENTS_BACKLOG_BYTES_MIN {
            return bad(
                "events.backlog_bytes_max",
                &format!("must be at least {EVENTS_BACKLOG_BYTES_MIN}"),
            );
        }
        if self.intake.mailboxes.len() > INTAKE_MAILBOXES_MAX {
            return bad(
                "intake.mailboxes",
                &format!("at most {INTAKE_MAILBOXES_MAX} mailboxes"),
            );
        }
        for m in &self.intake.mailboxes {
            let well_formed = m.len() <= INTAKE_MAILBOX_BYTES_MAX
                && m.rsplit_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
                && !m.contains(|c: char| c.is_whitespace() || c == '<' || c == '>');
            if !well_formed {
                return bad(
                    "intake.mailboxes",
                    &format!("{m:?} is not an address like dmarc@reports.example"),
                );
            }
        }
        if self.intake.listen == Some(self.smtp.listen) && self.smtp.listen.port() != 0 {
            return bad("intake.listen", "must differ from smtp.listen");
        }
        self.validate_listeners()?;
        if let Err((key, why)) = self
            .acme
            .check(&self.server.hostname, self.smtp.tls_cert_path.is_some())
        {
            return bad(key, &why);
        }
        if let Err(e) = self.content.checker() {
            return bad("content", &e.to_string());
        }
        if self.smtp.command_line_max_bytes < 512 {
            return bad("smtp.command_line_max_bytes", "RFC 5321 needs at least 512");
        }
        if self.smtp.text_line_max_bytes < 1000 {
            return bad("smtp.text_line_max_bytes", "RFC 5321 needs at least 1000");
        }
        if self.smtp.message_size_max_bytes < 1024 {
            return bad("smtp.message_size_max_bytes", "must be at least 1024");
        }
        if self.smtp.trusted_network_domains.len() > TRUSTED_NETWORK_DOMAINS_MAX {
            return bad(
                "smtp.trusted_network_domains",
                &format!("at most {TRUSTED_NETWORK_DOMAINS_MAX} entries"),
            );
        }
        if self
            .smtp
            .trusted_network_domains
            .iter()
            .any(|t| t.domains.len() > TRUSTED_NETWORK_DOMAINS_PER_ENTRY_MAX)
        {
            return bad(
                "smtp.trusted_network_domains.domains",
                &format!("at most {TRUSTED_NETWORK_DOMAINS_PER_ENTRY_MAX} per entry"),
            );
        }
        if self.smtp.recipients_max == 0 {
            return bad(
                "smtp.recipients_max",
                "RFC 5321 needs at least 100; 0 refuses all",
            );
        }
        if self.smtp.tls_cert_path.is_some() != self.smtp.tls_key_path.is_some() {
            return bad(
                "smtp.tls_cert_path",
                "tls_cert_path and tls_key_path go together",
            );
        }
        if self.auth.failures_per_address_max == 0 {
            return bad("auth.failures_per_address_max", "must be at least 1");
        }
        if self.auth.failure_window_secs == 0 {
            return bad("auth.failure_window_secs", "must be at least 1");
        }
        if self.limits.connections_max == 0 {
            return bad("limits.connections_max", "must be at least 1");
        }
        if self.spool.commit_window_us > 10_000 {
            return bad(
                "spool.commit_window_us",
                "at most 10000 (every acknowledgement under load waits for it)",
            );
        }
        if self.spool.segment_size_max_bytes < (1 << 20) {
            return bad("spool.segment_size_max_bytes", "must be at least 1 MiB");
        }
        if self.spool.segment_size_max_bytes > petrel_spool::SEGMENT_SIZE_MAX_LIMIT_BYTES {
            return bad("spool.segment_size_max_bytes", "must be at most 1 GiB");
        }
        if !(1..=3_650).contains(&self.events.jsonl_retention_days) {
            return bad("events.jsonl_retention_days", "must be 1 to 3650");
        }
        if self.delivery.retry_initial_ms == 0
            || self.delivery.retry_max_ms < self.delivery.retry_initial_ms
        {
            return bad(
                "delivery.retry_max_ms",
                "needs 0 < retry_initial_ms <= retry_max_ms",
            );
        }
        if self.delivery.connections_per_domain_max == 0 {
            return bad("delivery.connections_per_domain_max", "must be at least 1");
        }
        if self.delivery.next_hop_sessions_per_shard_max == 0 {
            return bad(
                "delivery.next_hop_sessions_per_shard_max",
                "must be at least 1",
            );
        }
        // Sources, pools and warm-ups: a bad pool stops the start (the message names the key).
        if let Err(e) = petrel_delivery::egress::Egress::build(&self.delivery.egress_spec()) {
            return Err(EngineError::Config {
                message: e.to_string(),
            });
        }
        for d in &self.delivery.domains {
            if let Some(t) = &d.tls {
                if !matches!(t.as_str(), "opportunistic" | "require" | "disabled") {
                    return bad(
                        "delivery.domains.tls",
                        "one of \"opportunistic\", \"require\", \"disabled\"",
                    );
                }
            }
        }
        Ok(())
    }

    /// `smtp.listeners`: bounded, and no two listeners (nor `smtp.listen`, nor the intake) on
    /// one port: SO_REUSEPORT would let both bind and split the connections between profiles.
    fn validate_listeners(&self) -> Result<(), EngineError> {
        let bad = |why: String| {
            Err(EngineError::Config {
                message: format!("smtp.listeners: {why}"),
            })
        };
        let listeners = &self.smtp.listeners;
        if listeners.len() > SMTP_LISTENERS_MAX {
            return bad(format!("at most {SMTP_LISTENERS_MAX} listeners"));
        }
        let mut taken: Vec<(&str, SocketAddr)> = vec![("smtp.listen", self.smtp.listen)];
        if let Some(intake) = self.intake.listen {
            taken.push(("intake.listen", intake));
        }
        for l in listeners {
            if let Some((key, _)) = taken.iter().find(|(_, a)| same_port(*a, l.listen)) {
                return bad(format!("{} ({}) is also {key}", l.listen, l.profile.name()));
            }
            taken.push(("another smtp.listeners entry", l.listen));
        }
        Ok(())
    }
}

impl DeliverySection {
    /// The egress part of the section (`[[delivery.sources]]`, `[[delivery.pools]]`,
    /// `delivery.default_pool`), as `petrel_delivery::egress::Egress::build` takes it.
    pub fn egress_spec(&self) -> petrel_delivery::egress::EgressSpec {
        petrel_delivery::egress::EgressSpec {
            sources: self.sources.clone(),
            pools: self.pools.clone(),
            default_pool: self.default_pool.clone(),
        }
    }
}

/// Both would take the same connections: one port (not 0, which picks a free one) on one
/// address or the wildcard.
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
