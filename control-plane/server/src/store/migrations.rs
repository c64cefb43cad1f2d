//! The schema, as numbered migrations (see [`super::Db`]).

/// Schema versions, applied in order, each in its own transaction. `{blob}` is the dialect's
/// binary type, `{ctext}` text that compares byte-wise (`COLLATE "C"` on PostgreSQL, SQLite's
/// default). Never edit a released entry: append a new one.
pub(super) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE petrel_meta (
    id BIGINT PRIMARY KEY,
    policy_version BIGINT NOT NULL,
    defaults_json TEXT NOT NULL,
    audit_head_seq BIGINT NOT NULL,
    audit_head_hash TEXT NOT NULL
);
INSERT INTO petrel_meta (id, policy_version, defaults_json, audit_head_seq, audit_head_hash)
VALUES (1, 0, '{}', 0, '0000000000000000000000000000000000000000000000000000000000000000');
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    is_operator BIGINT NOT NULL,
    suspended BIGINT NOT NULL,
    messages_per_second_max BIGINT,
    messages_per_day_max BIGINT,
    allow_unverified_domains BIGINT NOT NULL,
    created_unix_ms BIGINT NOT NULL
);
CREATE TABLE domains (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL UNIQUE,
    verified BIGINT NOT NULL,
    verified_loopback BIGINT NOT NULL,
    verified_unix_ms BIGINT,
    messages_per_second_max BIGINT,
    last_check_json TEXT,
    created_unix_ms BIGINT NOT NULL
);
CREATE INDEX domains_tenant ON domains (tenant_id);
CREATE TABLE dkim_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    domain_id TEXT NOT NULL REFERENCES domains(id),
    selector TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    private_key {blob} NOT NULL,
    dns_txt TEXT NOT NULL,
    activated_unix_ms BIGINT,
    created_unix_ms BIGINT NOT NULL,
    retired_unix_ms BIGINT,
    UNIQUE (domain_id, selector)
);
CREATE INDEX dkim_keys_tenant ON dkim_keys (tenant_id, domain_id);
CREATE TABLE credentials (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    username TEXT UNIQUE,
    prefix TEXT NOT NULL UNIQUE,
    phc TEXT NOT NULL,
    role TEXT,
    scopes TEXT NOT NULL,
    allowed_sender_domains TEXT NOT NULL,
    ip_allowlist TEXT NOT NULL,
    revoked BIGINT NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    revoked_unix_ms BIGINT,
    rotated_unix_ms BIGINT
);
CREATE INDEX credentials_tenant ON credentials (tenant_id);
CREATE TABLE destination_limits (
    domain TEXT PRIMARY KEY,
    connections_max BIGINT,
    messages_per_second_max BIGINT,
    tls_required BIGINT NOT NULL,
    updated_unix_ms BIGINT NOT NULL
);
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    tenant_id TEXT,
    actor TEXT NOT NULL,
    remote_addr TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    at_unix_ms BIGINT NOT NULL,
    before_json TEXT,
    after_json TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, seq);
CREATE TABLE engines (
    id TEXT PRIMARY KEY,
    remote_addr TEXT NOT NULL,
    connected BIGINT NOT NULL,
    connected_unix_ms BIGINT NOT NULL,
    last_contact_unix_ms BIGINT NOT NULL,
    sent_version BIGINT NOT NULL,
    applied_version BIGINT NOT NULL
);
"#,
    ),
    (
        2,
        r#"
ALTER TABLE tenants ADD COLUMN events_retention_days BIGINT NOT NULL DEFAULT 30;
ALTER TABLE engines ADD COLUMN events_acked_seq BIGINT NOT NULL DEFAULT 0;
CREATE TABLE event_seq (
    id BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
INSERT INTO event_seq (id, last_seq) VALUES (1, 0);
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL UNIQUE,
    tenant_id TEXT,
    type TEXT NOT NULL,
    timestamp_ms BIGINT NOT NULL,
    message_id TEXT,
    rfc822_message_id TEXT,
    sender TEXT NOT NULL,
    from_domain TEXT,
    recipient TEXT,
    tags TEXT NOT NULL,
    metadata TEXT,
    attempt BIGINT NOT NULL,
    remote TEXT,
    reply TEXT,
    bounce_class TEXT,
    bounce_category TEXT,
    engine_id TEXT NOT NULL,
    received_unix_ms BIGINT NOT NULL
);
CREATE INDEX events_tenant_seq ON events (tenant_id, seq);
CREATE INDEX events_tenant_time ON events (tenant_id, timestamp_ms);
CREATE INDEX events_tenant_recipient ON events (tenant_id, recipient, seq);
CREATE INDEX events_tenant_message ON events (tenant_id, message_id, seq);
CREATE INDEX events_tenant_type ON events (tenant_id, type, seq);
CREATE TABLE event_tags (
    event_seq BIGINT NOT NULL,
    tenant_id TEXT,
    tag TEXT NOT NULL
);
CREATE INDEX event_tags_lookup ON event_tags (tenant_id, tag, event_seq);
CREATE INDEX event_tags_event ON event_tags (event_seq);
CREATE TABLE event_stats (
    tenant_id TEXT NOT NULL,
    from_domain TEXT NOT NULL,
    bucket_start_ms BIGINT NOT NULL,
    sent BIGINT NOT NULL,
    delivered BIGINT NOT NULL,
    bounced_hard BIGINT NOT NULL,
    bounced_soft BIGINT NOT NULL,
    deferred BIGINT NOT NULL,
    expired BIGINT NOT NULL,
    rejected BIGINT NOT NULL,
    complained BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, from_domain, bucket_start_ms)
);
CREATE INDEX event_stats_time ON event_stats (bucket_start_ms);
"#,
    ),
    (
        3,
        r#"
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    url TEXT NOT NULL,
    event_types TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_secret_until_unix_ms BIGINT,
    cursor_seq BIGINT NOT NULL,
    pending_delivery_id TEXT,
    disabled BIGINT NOT NULL,
    disabled_reason TEXT,
    disabled_unix_ms BIGINT,
    failing_since_unix_ms BIGINT,
    next_attempt_unix_ms BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until_unix_ms BIGINT,
    created_unix_ms BIGINT NOT NULL
);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id);
CREATE INDEX webhooks_due ON webhooks (disabled, next_attempt_unix_ms);
CREATE TABLE webhook_delivery_seq (
    id BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
INSERT INTO webhook_delivery_seq (id, last_seq) VALUES (1, 0);
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL UNIQUE,
    webhook_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    first_seq BIGINT,
    last_seq BIGINT,
    event_count BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    delivered_unix_ms BIGINT
);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, seq);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_unix_ms);
CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    at_unix_ms BIGINT NOT NULL,
    ok BIGINT NOT NULL,
    status_code BIGINT,
    error TEXT,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
"#,
    ),
    (
        4,
        r#"
CREATE TABLE suppressions (
    scope {ctext} NOT NULL,
    address {ctext} NOT NULL,
    domain {ctext} NOT NULL,
    reason TEXT NOT NULL,
    source_event_id TEXT,
    created_unix_ms BIGINT NOT NULL,
    updated_unix_ms BIGINT NOT NULL,
    expires_unix_ms BIGINT,
    PRIMARY KEY (scope, address)
);
CREATE INDEX suppressions_domain ON suppressions (scope, domain, address);
CREATE INDEX suppressions_expiry ON suppressions (expires_unix_ms);
CREATE TABLE suppression_seq (
    id BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    purged_through_seq BIGINT NOT NULL
);
INSERT INTO suppression_seq (id, last_seq, purged_through_seq) VALUES (1, 0, 0);
CREATE TABLE suppression_changes (
    seq BIGINT PRIMARY KEY,
    scope TEXT NOT NULL,
    address TEXT NOT NULL,
    op TEXT NOT NULL,
    reason TEXT,
    at_unix_ms BIGINT NOT NULL
);
CREATE INDEX suppression_changes_time ON suppression_changes (at_unix_ms);
"#,
    ),
    (
        5,
        r#"
CREATE TABLE token_keys (
    id BIGINT PRIMARY KEY,
    secret {blob} NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    retired_unix_ms BIGINT
);
ALTER TABLE engines ADD COLUMN suppression_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN is_async BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN details TEXT;
"#,
    ),
    (
        6,
        r#"
CREATE TABLE guard_states (
    tenant_id {ctext} NOT NULL,
    scope_domain {ctext} NOT NULL,
    metric TEXT NOT NULL,
    level TEXT NOT NULL,
    note TEXT NOT NULL,
    rate_ppm BIGINT NOT NULL,
    volume BIGINT NOT NULL,
    changed_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, scope_domain, metric)
);
CREATE TABLE guard_baselines (
    tenant_id {ctext} NOT NULL,
    scope_domain {ctext} NOT NULL,
    bucket_start_ms BIGINT NOT NULL,
    sent BIGINT NOT NULL,
    bounced_hard BIGINT NOT NULL,
    complained BIGINT NOT NULL,
    set_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, scope_domain)
);
CREATE TABLE guard_cap_lifts (
    tenant_id {ctext} PRIMARY KEY,
    lifted_by TEXT NOT NULL,
    lifted_unix_ms BIGINT NOT NULL
);
"#,
    ),
    (
        // domauth (issue 14): each sending domain's last DNS authentication check.
        7,
        r#"
CREATE TABLE domain_checks (
    domain_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    checked_unix_ms BIGINT NOT NULL,
    failing_check TEXT,
    failure_detail TEXT,
    changed_unix_ms BIGINT NOT NULL,
    checks_json TEXT NOT NULL
);
CREATE INDEX domain_checks_failing ON domain_checks (failing_check);
"#,
    ),
    (
        8,
        r#"
ALTER TABLE tenants ADD COLUMN list_unsubscribe BIGINT NOT NULL DEFAULT 0;
CREATE INDEX events_dmarc ON events (tenant_id, from_domain, timestamp_ms) WHERE type = 'dmarc_report';
"#,
    ),
    (
        // A report without a VERP token is traced by the original's Message-ID among the
        // `accepted` events (store/events/attribute.rs).
        9,
        r#"
CREATE INDEX events_rfc822_accepted ON events (rfc822_message_id) WHERE type = 'accepted';
"#,
    ),
    (
        // Credentials may expire (issue 16); the expiry task revokes them at that moment.
        10,
        r#"
ALTER TABLE credentials ADD COLUMN expires_unix_ms BIGINT;
CREATE INDEX credentials_expiry ON credentials (expires_unix_ms) WHERE revoked = 0;
"#,
    ),
    (
        // Encryption at rest (issue 16, store/sealed.rs): the data keys, wrapped by the
        // key-encryption key kept outside the database (owner '' is the operator's); tenant
        // names are sealed, and stay unique through their blind index.
        11,
        r#"
CREATE TABLE data_keys (
    id BIGINT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    kek_version BIGINT NOT NULL,
    wrapped {blob} NOT NULL
);
CREATE INDEX data_keys_owner ON data_keys (owner, created_unix_ms);
ALTER TABLE tenants ADD COLUMN name_index TEXT;
CREATE UNIQUE INDEX tenants_name_index ON tenants (name_index);
"#,
    ),
    (
        // One identity per engine (issue 16, store/engine_identities.rs).
        12,
        r#"
CREATE TABLE engine_identities (
    engine_id TEXT PRIMARY KEY,
    prefix TEXT NOT NULL,
    token_phc TEXT NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    revoked_unix_ms BIGINT
);
"#,
    ),
    (
        // Tenant exports (issue 16, store/exports.rs): one job row per export, its archive in
        // sealed chunks in the database (every node of a PostgreSQL control plane serves it).
        // At most one running export per tenant.
        13,
        r#"
CREATE TABLE exports (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    finished_unix_ms BIGINT,
    bytes BIGINT,
    rows_total BIGINT,
    error TEXT,
    expires_unix_ms BIGINT
);
CREATE INDEX exports_tenant ON exports (tenant_id, created_unix_ms);
CREATE UNIQUE INDEX exports_running ON exports (tenant_id) WHERE status = 'running';
CREATE INDEX exports_expiry ON exports (expires_unix_ms);
CREATE TABLE export_chunks (
    export_id TEXT NOT NULL,
    n BIGINT NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (export_id, n)
);
"#,
    ),
    (
        // Tenant deletion and retention (issue 16, store/deleted_tenants.rs, retention.rs):
        // deleted tenants (listed to the engines, which drop or bounce their queued mail and
        // destroy their keys; their leftover rows are erased in the background), and the
        // message-metadata and audit windows beside the events' one.
        14,
        r#"
CREATE TABLE deleted_tenants (
    id TEXT PRIMARY KEY,
    bounce_queued BIGINT NOT NULL,
    deleted_unix_ms BIGINT NOT NULL,
    erased_unix_ms BIGINT
);
CREATE INDEX deleted_tenants_time ON deleted_tenants (deleted_unix_ms);
ALTER TABLE tenants ADD COLUMN messages_retention_days BIGINT NOT NULL DEFAULT 30;
ALTER TABLE tenants ADD COLUMN audit_retention_days BIGINT NOT NULL DEFAULT 90;
ALTER TABLE tenants ADD COLUMN messages_scrubbed_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_log ADD COLUMN pruned BIGINT NOT NULL DEFAULT 0;
CREATE INDEX audit_log_unpruned ON audit_log (tenant_id, at_unix_ms) WHERE pruned = 0;
"#,
    ),
    (
        // The engines' audit signals recorded once however often a batch is resent
        // (`audit_signals.rs`), and the tenant's webhook history found by index when it is
        // erased (`erasure.rs`).
        15,
        r#"
CREATE TABLE audit_signal_ids (
    event_id TEXT PRIMARY KEY,
    at_unix_ms BIGINT NOT NULL
);
CREATE INDEX audit_signal_ids_time ON audit_signal_ids (at_unix_ms);
CREATE INDEX webhook_deliveries_tenant ON webhook_deliveries (tenant_id);
"#,
    ),
    (
        // TLS-RPT (RFC 8460, issue 18, `tls_rpt/`): the engines' session counts summed per UTC
        // day (days since the epoch), policy and receiving MX; each counts event taken once
        // however often its batch is resent; each day's report per policy domain and how far
        // its delivery got (the URIs done), so a day is sent once.
        16,
        r#"
CREATE TABLE tls_rpt_event_ids (
    event_id TEXT PRIMARY KEY,
    at_unix_ms BIGINT NOT NULL
);
CREATE INDEX tls_rpt_event_ids_time ON tls_rpt_event_ids (at_unix_ms);
CREATE TABLE tls_rpt_counts (
    day BIGINT NOT NULL,
    policy_domain TEXT NOT NULL,
    policy_type TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    policy_json TEXT NOT NULL,
    mx_host TEXT NOT NULL,
    receiving_ip TEXT NOT NULL,
    result TEXT NOT NULL,
    sessions BIGINT NOT NULL,
    PRIMARY KEY (day, policy_domain, policy_type, policy_hash, mx_host, receiving_ip, result)
);
CREATE TABLE tls_rpt_reports (
    day BIGINT NOT NULL,
    policy_domain TEXT NOT NULL,
    report_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    done_uris TEXT NOT NULL,
    last_error TEXT,
    next_attempt_unix_ms BIGINT NOT NULL,
    updated_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (day, policy_domain)
);
"#,
    ),
    (
        // ARC sealing for forwarding tenants (issue 18, the engine's `arc.rs`): the tenant
        // relays mail it received elsewhere, and the engine adds an ARC set to it.
        17,
        r#"
ALTER TABLE tenants ADD COLUMN arc_seal BIGINT NOT NULL DEFAULT 0;
"#,
    ),
    (
        // Delivery by site (issue 15): the egress pool a tenant's mail leaves from (NULL: the
        // engine's default) and its weight when tenants share a site (1..=100).
        18,
        r#"
ALTER TABLE tenants ADD COLUMN egress_pool TEXT;
ALTER TABLE tenants ADD COLUMN delivery_weight BIGINT NOT NULL DEFAULT 1;
"#,
    ),
    (
        // Traffic shaping pushed from the control plane (issue 15, `store/shaping.rs`): per
        // provider of the engines' shaping files (or `default`), the limits laid over the files;
        // NULL leaves the files' value, a rate of 0 lifts the files' rate.
        19,
        r#"
CREATE TABLE shaping_providers (
    name TEXT PRIMARY KEY,
    connections_max BIGINT,
    messages_per_connection_max BIGINT,
    messages_per_minute_max BIGINT,
    messages_per_hour_max BIGINT,
    recipients_per_transaction_max BIGINT,
    updated_unix_ms BIGINT NOT NULL
);
"#,
    ),
];
