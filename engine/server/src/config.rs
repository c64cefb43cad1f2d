//! The engine's configuration: one TOML file parsed once into typed structs.
//!
//! Unknown keys and bad values are rejected with a message that names the key (serde's
//! `deny_unknown_fields` plus toml's span-aware errors). Every field has a default that works on a
//! fresh machine, so an empty file (or no file) is a valid configuration. Command-line flags are
//! applied on top by [`EngineConfig::apply_overrides`], through the same structs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::error::EngineError;

/// The whole engine configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    pub server: ServerSection,
    pub smtp: SmtpSection,
    pub limits: LimitsSection,
    pub spool: SpoolSection,
    pub encryption: EncryptionSection,
    pub metrics: MetricsSection,
    pub admin: AdminSection,
    pub auth: AuthSection,
    pub delivery: DeliverySection,
    pub control: ControlSection,
    pub events: EventsSection,
    pub intake: IntakeSection,
    pub content: ContentSection,
    pub cluster: ClusterSection,
    pub acme: AcmeSection,
}

/// Cluster-wide quotas on Redis (issue 19): with `redis_url` set, tenant rates and daily
/// quotas, sending-domain rates and the new-tenant cap count once for every engine sharing the
/// Redis (`petrel_policy::quota`, driver in `quota_redis.rs`). Without it, each engine counts
/// in its own memory, as a single engine should.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// `redis://host:port/db` (or `rediss://` for TLS). A password never goes here: put it in
    /// `redis_password_file` or the credential `petrel-redis-password`.
    pub redis_url: Option<String>,
    /// An owner-only file holding the Redis password (AUTH); the username, if any, is the
    /// URL's.
    pub redis_password_file: Option<PathBuf>,
    /// Prefix of every key Petrel writes, so engines of different fleets can share one Redis.
    pub key_prefix: String,
    /// A batch of grants not answered within this switches the engine to its share of each
    /// limit (fallback) until a probe finds Redis again; also how long a session waits for one.
    pub request_timeout_ms: u64,
    /// How often a fallback engine probes Redis.
    pub probe_interval_ms: u64,
}

/// Bounds of `cluster.request_timeout_ms` and `cluster.probe_interval_ms`.
pub const CLUSTER_TIMEOUT_MS_MAX: u64 = 10_000;
/// The longest `cluster.key_prefix`.
pub const CLUSTER_KEY_PREFIX_MAX_BYTES: usize = 64;

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            redis_url: None,
            redis_password_file: None,
            key_prefix: "petrel:".to_owned(),
            request_timeout_ms: 250,
            probe_interval_ms: 1_000,
        }
    }
}

/// Phishing-style content checks on a tenant's submissions (`petrel-content`): a message whose
/// rules score `phishing_threshold` or more is refused with `550 5.7.1` before it is signed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContentSection {
    /// Check submissions (authenticated clients, and trusted-network mail of a tenant's From
    /// domain) before signing (default true).
    pub phishing_check: bool,
    /// The score at which a message is refused (default
    /// `petrel_content::PHISHING_THRESHOLD_DEFAULT`, 50: one strong rule alone).
    pub phishing_threshold: u32,
    /// Registrable domains of shared click-tracking redirects (an ESP's tracking domain, such
    /// as `sendgrid.net`): a link through them counts as the sender's own, so a newsletter's
    /// rewritten links are not link-text mismatches. A tenant's own domains count already.
    pub redirect_domains: Vec<String>,
}

impl Default for ContentSection {
    fn default() -> Self {
        ContentSection {
            phishing_check: true,
            phishing_threshold: petrel_content::PHISHING_THRESHOLD_DEFAULT,
            redirect_domains: Vec::new(),
        }
    }
}

impl ContentSection {
    /// The checker this section describes; None when `phishing_check` is off.
    pub fn checker(&self) -> Result<Option<petrel_content::Checker>, petrel_content::ContentError> {
        if !self.phishing_check {
            return Ok(None);
        }
        petrel_content::Checker::new(&petrel_content::CheckerConfig {
            threshold: self.phishing_threshold,
            redirect_domains: self.redirect_domains.clone(),
        })
        .map(Some)
    }
}

/// The return-path intake (issue 14): the listener that bounce domains' MX records point at. It
/// takes bounces and feedback-loop reports sent to VERP return paths, unsubscribes sent to
/// `mailto:` List-Unsubscribe addresses, and reports sent to the configured mailboxes; it
/// offers STARTTLS and no AUTH, and relays nothing. See `crate::intake`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeSection {
    /// Where it listens (every shard, SO_REUSEPORT, like `smtp.listen`); unset: off (default).
    pub listen: Option<SocketAddr>,
    /// Addresses that take reports of any kind on any domain: the DMARC `rua` address, the
    /// address registered with providers' feedback loops. At most [`INTAKE_MAILBOXES_MAX`].
    pub mailboxes: Vec<String>,
}

/// The most `intake.mailboxes` accepted (each RCPT compares against all of them).
pub const INTAKE_MAILBOXES_MAX: usize = 64;
/// The longest `intake.mailboxes` entry, in bytes (RFC 5321 path limit).
pub const INTAKE_MAILBOX_BYTES_MAX: usize = 254;

/// Delivery events: the JSON-lines files operators may ship themselves, and the durable backlog
/// that carries them to the control plane (when `control.push_addr` is set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSection {
    /// Write `<data>/events/events-<n>.jsonl`. Default: only when the engine does not send its
    /// events to a control plane (the files are for operators who ship logs their own way;
    /// writing both costs a second serialization of every event).
    pub jsonl: Option<bool>,
    /// Also write an `accepted` line per recipient to the JSON-lines files of an engine without
    /// a control plane (default false: they carry outcomes and refusals; a linked engine sends
    /// `accepted` events to the control plane always).
    pub jsonl_accepted: bool,
    /// Send events to the control plane through the durable backlog when `control.push_addr`
    /// is set (default true); false keeps only the JSON-lines files.
    pub to_control_plane: bool,
    /// Bytes of events the control plane has not acknowledged yet, at most; past it the engine
    /// refuses new mail with `452 4.3.1` rather than lose events (default 1 GiB).
    pub backlog_bytes_max: u64,
    /// Days a JSON-lines file is kept after its last write (default 30, 1 to 3650). Files are
    /// rotated once a day old, and pruned at each rotation and at start (an idle engine prunes
    /// at its next event or restart).
    pub jsonl_retention_days: u64,
}

/// The smallest `events.backlog_bytes_max` accepted.
pub const EVENTS_BACKLOG_BYTES_MIN: u64 = 64 << 10;

impl Default for EventsSection {
    fn default() -> Self {
        EventsSection {
            jsonl: None,
            jsonl_accepted: false,
            to_control_plane: true,
            backlog_bytes_max: petrel_policy::outbox::OUTBOX_BYTES_MAX_DEFAULT,
            jsonl_retention_days: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Name used in the greeting, EHLO and Received headers.
    pub hostname: String,
    /// Where the spool, TLS material, events and policy snapshot live.
    pub data_dir: PathBuf,
    /// Number of shards (glommio executors); 0 means one per online CPU.
    pub shards: usize,
    /// Pin each shard to its CPU. Off in tests that run several engines at once.
    pub pin_shards: bool,
    /// Development mode: AUTH is offered before STARTTLS to loopback clients.
    pub development: bool,
    /// How long sessions may take to finish after SIGTERM before they are cut.
    pub shutdown_grace_ms: u64,
    /// Let the allocator use transparent huge pages. Off by default: with many small
    /// long-lived objects (a deep queue) they keep whole 2 MiB pages resident (see
    /// `engine::transparent_huge_pages`).
    pub transparent_huge_pages: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            hostname: "petrel.localhost".into(),
            data_dir: PathBuf::from("./petrel-data"),
            shards: 0,
            pin_shards: true,
            development: false,
            shutdown_grace_ms: 10_000,
            transparent_huge_pages: false,
        }
    }
}

/// Entries of `smtp.trusted_network_domains`, at most.
pub const TRUSTED_NETWORK_DOMAINS_MAX: usize = 1_000;
/// Domains of one entry, at most.
pub const TRUSTED_NETWORK_DOMAINS_PER_ENTRY_MAX: usize = 1_000;

/// The `domains` entry that maps a trusted network to every sending domain of the policy (a
/// single-tenant relay, development): the operator's explicit choice, never a default.
pub const ANY_SENDING_DOMAIN: &str = "*";

/// A trusted network and the sending domains its clients may have signed.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustedNetworkDomains {
    pub cidr: IpNet,
    /// Registered sending domains (a From subdomain counts as its sending domain), or
    /// [`ANY_SENDING_DOMAIN`]; empty: the network relays but nothing is signed.
    pub domains: Vec<String>,
}

impl TrustedNetworkDomains {
    /// Whether `sending_domain` (lower case) is mapped to this network.
    pub fn maps(&self, sending_domain: &str) -> bool {
        self.domains.iter().any(|d| {
            d == ANY_SENDING_DOMAIN || d.trim_end_matches('.').eq_ignore_ascii_case(sending_domain)
        })
    }

    /// Parses the `--trust-network-domains` flag: `CIDR=DOMAIN[,DOMAIN...]` (`*`: any domain;
    /// nothing after `=`: relay only).
    pub fn parse_flag(flag: &str) -> Result<TrustedNetworkDomains, String> {
        let (cidr, domains) = flag
            .split_once('=')
            .ok_or_else(|| format!("{flag:?}: expected CIDR=DOMAIN[,DOMAIN...]"))?;
        let cidr: IpNet = cidr
            .trim()
            .parse()
            .map_err(|e| format!("{cidr:?}: not a network: {e}"))?;
        let domains: Vec<String> = domains
            .split(',')
            .map(|d| d.trim().to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        if domains.len() > TRUSTED_NETWORK_DOMAINS_PER_ENTRY_MAX {
            return Err(format!(
                "at most {TRUSTED_NETWORK_DOMAINS_PER_ENTRY_MAX} domains per network"
            ));
        }
        Ok(TrustedNetworkDomains { cidr, domains })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSection {
    pub listen: SocketAddr,
    /// Clients from these networks may relay without AUTH. Empty by default: nobody relays
    /// without authenticating. They relay only: their mail is neither DKIM-signed with a
    /// tenant's key nor counted as a tenant's (issue 14: a trusted network is signed only for
    /// the domains the operator maps to it). Map a network in `trusted_network_domains` to
    /// have its domains signed (`domains = ["*"]` for every domain of the policy).
    pub trusted_networks: Vec<IpNet>,
    /// `[[smtp.trusted_network_domains]] cidr = "...", domains = ["..."]`: trusted networks
    /// (they relay without AUTH too) whose clients are signed only for these sending domains.
    /// A client in such a network is held to the mapping even when a plain
    /// `trusted_networks` entry contains it as well, so a subnet can be narrowed.
    pub trusted_network_domains: Vec<TrustedNetworkDomains>,
    /// PEM certificate chain and key; when both are empty a self-signed pair is generated in
    /// `<data_dir>/tls/` so STARTTLS is always offered.
    pub tls_cert_path: Option<PathBuf>,
    pub tls_key_path: Option<PathBuf>,
    pub command_line_max_bytes: usize,
    pub text_line_max_bytes: usize,
    pub message_size_max_bytes: usize,
    pub recipients_max: usize,
    pub errors_max: usize,
    pub auth_attempts_max: usize,
    /// RFC 5321 §4.5.3.2.7: the server waits at least 5 minutes for the next command.
    pub command_timeout_ms: u64,
    /// RFC 5321 §4.5.3.2.6 (client side 10 min for "." reply); the server bounds each DATA read.
    pub data_timeout_ms: u64,
    /// RFC 5321 §4.5.3.2.1 gives 5 minutes for the greeting on the client; the server bounds TLS
    /// handshakes the same way, shorter.
    pub tls_handshake_timeout_ms: u64,
    /// `[[smtp.listeners]]`: more listeners, each with its profile (submission on 587,
    /// submissions on 465), on every shard like `listen`. At most [`SMTP_LISTENERS_MAX`]; none
    /// by default. MX on 25 is the return-path intake (`[intake] listen`), not a profile here.
    pub listeners: Vec<ListenerConfig>,
}

/// Entries of `smtp.listeners`, at most (each is a socket per shard).
pub const SMTP_LISTENERS_MAX: usize = 8;

/// One `[[smtp.listeners]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `addr:port`; port 0 picks one (tests), the same for every shard.
    pub listen: SocketAddr,
    pub profile: ListenerProfile,
}

/// What a listener asks of its clients.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProfile {
    /// `smtp.listen`: relay with AUTH or from a trusted network; STARTTLS offered; AUTH after
    /// it (before it on loopback in development mode). Not configurable in `smtp.listeners`.
    #[serde(skip_deserializing)]
    Relay,
    /// RFC 6409 (587): STARTTLS before AUTH and MAIL, AUTH before MAIL, on every address.
    Submission,
    /// RFC 8314 (465): TLS from the connect (no STARTTLS), then as `Submission`.
    Submissions,
}

impl ListenerProfile {
    /// The name in the configuration and on the ready line.
    pub fn name(self) -> &'static str {
        match self {
            ListenerProfile::Relay => "relay",
            ListenerProfile::Submission => "submission",
            ListenerProfile::Submissions => "submissions",
        }
    }

    /// The TLS handshake comes first, before the greeting (RFC 8314 §3.3).
    pub fn implicit_tls(self) -> bool {
        self == ListenerProfile::Submissions
    }

    /// TLS and AUTH before MAIL, whatever the network or the mode.
    pub fn is_submission(self) -> bool {
        self != ListenerProfile::Relay
    }
}

impl SmtpSection {
    /// The client is on a trusted network (may relay without AUTH): a plain one or a network
    /// mapped to domains.
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_networks.iter().any(|n| n.contains(&ip))
            || self
                .trusted_network_domains
                .iter()
                .any(|t| t.cidr.contains(&ip))
    }

    /// Whether a trusted-network client at `ip` speaks for `sending_domain` (the registered
    /// sending domain of its From, None when the policy has none): only through a network
    /// mapped to that domain (every mapped network containing `ip` counts). A plain
    /// `trusted_networks` entry speaks for no domain: it relays, unsigned and untenanted.
    pub fn relay_may_sign(&self, ip: std::net::IpAddr, sending_domain: Option<&str>) -> bool {
        let Some(domain) = sending_domain else {
            return false;
        };
        self.trusted_network_domains
            .iter()
            .filter(|t| t.cidr.contains(&ip))
            .any(|t| t.maps(domain))
    }
}

impl Default for SmtpSection {
    fn default() -> Self {
        SmtpSection {
            listen: "127.0.0.1:2525".parse().expect("static address"),
            trusted_networks: Vec::new(),
            trusted_network_domains: Vec::new(),
            tls_cert_path: None,
            tls_key_path: None,
            command_line_max_bytes: 2048,
            text_line_max_bytes: 1000,
            message_size_max_bytes: 36 << 20,
            recipients_max: 1000,
            errors_max: 10,
            auth_attempts_max: 3,
            command_timeout_ms: 300_000,
            data_timeout_ms: 180_000,
            tls_handshake_timeout_ms: 30_000,
            listeners: Vec::new(),
        }
    }
}

/// Backpressure bounds. Over a bound the server answers `421 4.3.2` at connect or `452 4.3.1`
/// at MAIL/DATA, and recovers by itself when the pressure goes away.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub connections_max: u64,
    pub connections_per_ip_max: u64,
    pub spool_messages_max: u64,
    pub spool_bytes_max: u64,
    /// Bytes of message data held in memory by sessions at once, across shards.
    pub memory_in_flight_max_bytes: u64,
    /// Recipients queued for delivery, across shards.
    pub queued_recipients_max: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            connections_max: 20_000,
            connections_per_ip_max: 2_000,
            spool_messages_max: 5_000_000,
            spool_bytes_max: 64 << 30,
            memory_in_flight_max_bytes: 2 << 30,
            queued_recipients_max: 10_000_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// fdatasync before the 250. Only a benchmark that says so turns it off.
    pub fsync: bool,
    pub segment_size_max_bytes: u64,
    /// Recently stored bodies kept in memory per shard for their first delivery attempt.
    pub body_cache_bytes_max: usize,
    /// Under load a group commit waits this long for more messages before its fdatasync
    /// (PostgreSQL's `commit_delay`); 0 never waits. A lone client never waits for it.
    pub commit_window_us: u64,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            fsync: true,
            segment_size_max_bytes: 64 << 20,
            body_cache_bytes_max: petrel_spool::BODY_CACHE_BYTES_MAX_DEFAULT,
            commit_window_us: petrel_spool::COMMIT_WINDOW_US_DEFAULT,
        }
    }
}

/// Sealing at rest (issue 16): the spool's records and the policy snapshot file, under
/// per-tenant data keys wrapped by a key-encryption key (see `at_rest.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionSection {
    /// On by default; off only for a benchmark's A/B (`--no-encryption-at-rest`).
    pub at_rest: bool,
    /// The key-encryption key file (owner-only). Unset: the systemd credential `petrel-kek`,
    /// else `<data_dir>/keys/kek`, made at the first start (a development default: production
    /// keeps the key away from the data).
    pub key_file: Option<PathBuf>,
    /// A tenant's new data goes under a new data key once its current one is this old.
    pub data_key_rotate_after_days: u32,
}

/// Most days between data key rotations.
pub const DATA_KEY_ROTATE_AFTER_DAYS_MAX: u32 = 3_650;

impl Default for EncryptionSection {
    fn default() -> Self {
        EncryptionSection {
            at_rest: true,
            key_file: None,
            data_key_rotate_after_days: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: Some("127.0.0.1:9464".parse().expect("static address")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// The queue admin endpoint; loopback only.
    pub listen: Option<SocketAddr>,
    /// The file holding the token its callers present (mode 0600). Unset: the systemd
    /// credential `petrel-admin-token`, else `<data_dir>/admin.token`, made at first start.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: Some("127.0.0.1:9465".parse().expect("static address")),
            token_file: None,
        }
    }
}

/// Static SMTP credentials (the control plane's pushed credentials take over when present), and
/// the lockout of addresses that keep failing AUTH.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    pub users: Vec<AuthUser>,
    /// Failed AUTH attempts one client address may make per window, across all its connections
    /// and all shards; past it, AUTH answers `454 4.7.0` until the window ends.
    pub failures_per_address_max: u32,
    /// The lockout window, in seconds.
    pub failure_window_secs: u64,
    /// Failed AUTHs go to the control plane's audit log aggregated per address over windows of
    /// this many seconds (`audit_signals.rs`).
    pub failure_audit_window_secs: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            users: Vec::new(),
            failures_per_address_max: 10,
            failure_window_secs: 300,
            failure_audit_window_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthUser {
    pub username: String,
    /// An argon2id PHC string (`$argon2id$v=19$...`). Plaintext is never accepted here.
    pub password_hash: String,
}

/// The link to the control plane. Without a URL the engine runs on its last persisted snapshot.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    /// `host:port` of the control plane's push listener.
    pub push_addr: Option<SocketAddr>,
    pub token: Option<String>,
    /// PEM of the control plane's push certificate (trusted as a root).
    pub ca_cert_path: Option<PathBuf>,
    pub engine_id: Option<String>,
}

/// Flags that override the file (`petrel engine --data-dir ...`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub smtp_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub shards: Option<usize>,
    pub trust_networks: Vec<IpNet>,
    /// `--trust-network-domains CIDR=DOMAIN,...`.
    pub trust_network_domains: Vec<TrustedNetworkDomains>,
    pub relay_to: Option<SocketAddr>,
    pub nameservers: Vec<SocketAddr>,
    pub no_delivery: bool,
    pub development: bool,
    pub no_fsync: bool,
    pub no_pin: bool,
    /// `--key-file PATH`: the key-encryption key file.
    pub key_file: Option<PathBuf>,
    /// `--no-encryption-at-rest` (benchmarks' A/B only).
    pub no_encryption_at_rest: bool,
}

impl EngineConfig {
    /// True when events go to a control plane (a push address and `events.to_control_plane`).
    pub fn events_to_control_plane(&self) -> bool {
        self.control.push_addr.is_some() && self.events.to_control_plane
    }

    /// Whether the JSON-lines event files are written (see [`EventsSection::jsonl`]).
    pub fn events_jsonl(&self) -> bool {
        self.events
            .jsonl
            .unwrap_or_else(|| !self.events_to_control_plane())
    }

    /// This engine's id towards the control plane: `control.engine_id`, or the host name.
    pub fn engine_id(&self) -> String {
        self.control
            .engine_id
            .clone()
            .unwrap_or_else(|| self.server.hostname.clone())
    }

    /// Reads and validates a TOML file. Errors name the offending key.
    pub fn from_file(path: &Path) -> Result<EngineConfig, EngineError> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::Config {
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<EngineConfig, EngineError> {
        let cfg: EngineConfig = toml::from_str(text).map_err(|e| EngineError::Config {
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn apply_overrides(&mut self, o: &Overrides) -> Result<(), EngineError> {
        if let Some(d) = &o.data_dir {
            self.server.data_dir = d.clone();
        }
        if let Some(a) = o.smtp_listen {
            self.smtp.listen = a;
        }
        if let Some(a) = o.metrics_listen {
            self.metrics.listen = Some(a);
        }
        if let Some(a) = o.admin_listen {
            self.admin.listen = Some(a);
        }
        if let Some(n) = o.shards {
            self.server.shards = n;
        }
        self.smtp
            .trusted_networks
            .extend(o.trust_networks.iter().copied());
        self.smtp
            .trusted_network_domains
            .extend(o.trust_network_domains.iter().cloned());
        if o.relay_to.is_some() {
            self.delivery.relay_to = o.relay_to;
        }
        if !o.nameservers.is_empty() {
            self.delivery.nameservers = o.nameservers.clone();
        }
        if o.no_delivery {
            self.delivery.enabled = false;
        }
        if o.development {
            self.server.development = true;
        }
        if o.no_fsync {
            self.spool.fsync = false;
        }
        if o.no_pin {
            self.server.pin_shards = false;
        }
        if o.key_file.is_some() {
            self.encryption.key_file = o.key_file.clone();
        }
        if o.no_encryption_at_rest {
            self.encryption.at_rest = false;
        }
        self.validate()
    }

    /// The number of shards to start: the configured count, or one per online CPU.
    pub fn shard_count(&self) -> usize {
        if self.server.shards > 0 {
            self.server.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(256)
        }
    }
}

#[path = "config_validate.rs"]
mod validate;

#[path = "config_acme.rs"]
mod acme;
pub use acme::*;

#[path = "config_delivery.rs"]
mod delivery;
pub use delivery::*;

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
