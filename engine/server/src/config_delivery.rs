//! The `[delivery]` section of the engine's configuration (see `config.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// Deliver queued mail. Off: the engine only accepts and spools (injection benchmarks).
    pub enabled: bool,
    /// Send everything to this host instead of resolving MX (a smart host).
    pub relay_to: Option<SocketAddr>,
    /// Per-domain smart hosts.
    pub routes: Vec<RouteEntry>,
    /// DNS servers; empty means the system's resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// Port used for MX hosts (25 in production).
    pub smtp_port: u16,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub message_age_max_ms: u64,
    pub connections_per_domain_max: u32,
    pub messages_per_connection_max: u32,
    /// Transactions per second per destination domain across the engine; 0 = unlimited.
    pub messages_per_second_per_domain_max: u32,
    pub recipients_per_transaction_max: u32,
    /// Sessions of one shard to one next hop (a smart host, or one set of MX hosts), all its
    /// domains together; the domains beyond share their writes. Domains listed under
    /// `[[delivery.domains]]` keep their own `connections_max` instead.
    pub next_hop_sessions_per_shard_max: usize,
    /// Certificates trusted for `require` TLS besides the web PKI roots (tests).
    pub extra_root_certs: Vec<PathBuf>,
    /// Apply recipient domains' MTA-STS policies (RFC 8461) to MX delivery: with `enforce`,
    /// only the MX hosts the policy names, over TLS with a certificate valid for the host, or
    /// the mail waits. Policies are cached in `<data>/mta-sts-policies.json`. Static routes
    /// (`relay_to`, `routes`) are not affected unless `smart_host_mta_sts` is set.
    pub mta_sts: bool,
    /// Apply recipient domains' MTA-STS policies to mail sent through a smart host
    /// (`relay_to`, `routes`) too: under an `enforce` policy the hop to the smart host must be
    /// TLS with a certificate valid for its `tls_name` (`relay_tls_name` for `relay_to`), or
    /// the mail waits (4.7.5); the MX names the policy lists are not checked, the smart host
    /// being the operator's chosen next hop. Off by default.
    pub smart_host_mta_sts: bool,
    /// The name `relay_to`'s certificate carries (see `smart_host_mta_sts`); default: its
    /// address.
    pub relay_tls_name: Option<String>,
    /// DANE (RFC 7672) for MX delivery: TLSA records of `_25._tcp.<mx host>`, validated with
    /// DNSSEC, pin the certificate each MX host must present (they win over MTA-STS); a
    /// mismatch or a bogus answer defers that host's mail (`4.7.5`). Off by default: it needs
    /// name servers that pass DNSSEC records through. Static routes are not affected.
    pub dane: bool,
    /// DNSKEY records (zone-file syntax) trusted as DNSSEC anchors for `dane`; unset: the IANA
    /// root keys.
    pub dnssec_trust_anchor_file: Option<PathBuf>,
    /// The operator's bounce classification rules (the schema of the shipped
    /// `engine/bounce/rules/bounce-rules.toml`), consulted before the shipped ones. A file that
    /// cannot be read or has a bad rule stops the start.
    pub bounce_rules_file: Option<PathBuf>,
    /// The operator's traffic shaping (the schema of the shipped
    /// `engine/delivery/shaping.toml`, `docs/shaping.md`), laid over the shipped file: per-site
    /// limits by MX provider and throttle rules tried before the shipped ones. A file that
    /// cannot be read or has a bad value stops the start.
    pub shaping_file: Option<PathBuf>,
    pub domains: Vec<DomainOverride>,
    /// Egress sources (`docs/egress.md`): a local address to bind, an EHLO name, a warm-up.
    pub sources: Vec<petrel_delivery::egress::SourceSpec>,
    /// Weighted sets of sources that tenants are mapped to; none: no bind, `server.hostname`.
    pub pools: Vec<petrel_delivery::egress::PoolSpec>,
    /// The pool of tenants without one; required with `pools`.
    pub default_pool: Option<String>,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            enabled: true,
            relay_to: None,
            routes: Vec::new(),
            nameservers: Vec::new(),
            smtp_port: 25,
            retry_initial_ms: 300_000,
            retry_max_ms: 4_000_000,
            message_age_max_ms: 5 * 24 * 3_600_000,
            connections_per_domain_max: 32,
            messages_per_connection_max: 1000,
            messages_per_second_per_domain_max: 0,
            recipients_per_transaction_max: 100,
            next_hop_sessions_per_shard_max: petrel_delivery::NEXT_HOP_SESSIONS_MAX_DEFAULT,
            extra_root_certs: Vec::new(),
            mta_sts: true,
            smart_host_mta_sts: false,
            relay_tls_name: None,
            dane: false,
            dnssec_trust_anchor_file: None,
            bounce_rules_file: None,
            shaping_file: None,
            domains: Vec::new(),
            sources: Vec::new(),
            pools: Vec::new(),
            default_pool: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    pub domain: String,
    pub host: SocketAddr,
    /// The name the smart host's certificate carries, checked when TLS to it is verified
    /// (`smart_host_mta_sts`, or `tls = "require"`); default: its address.
    #[serde(default)]
    pub tls_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainOverride {
    pub domain: String,
    pub connections_max: Option<u32>,
    pub messages_per_connection_max: Option<u32>,
    pub messages_per_second_max: Option<u32>,
    pub recipients_per_transaction_max: Option<u32>,
    /// "opportunistic" (default), "require" or "disabled".
    pub tls: Option<String>,
}
