//! The engine's one error enum. Each variant carries what an operator needs to act.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("configuration: {message}")]
    Config { message: String },
    /// The SMTP server's certificate or key could not be loaded or generated.
    #[error("TLS material: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The shard's executor thread could not be started.
    #[error("shard {shard}: cannot start its executor: {source}")]
    ShardSpawn {
        shard: usize,
        source: std::io::Error,
    },
    /// A shard stopped with an error before it was ready (it could not open its spool or bind).
    #[error("shard {shard}: {source}")]
    ShardFailed {
        shard: usize,
        #[source]
        source: Box<EngineError>,
    },
    /// A shard neither became ready nor failed within the start-up bound.
    #[error("a shard did not start within {timeout_secs} s")]
    ShardStartTimeout { timeout_secs: u64 },
    /// The port-0 reservation socket reports no internet address (the OS answered oddly).
    #[error("the socket reserving a port for {addr} has no internet address")]
    ReservedPortNoAddress { addr: SocketAddr },
    /// The metrics exporter refused the histogram buckets.
    #[error("metrics buckets: {0}")]
    MetricsBuckets(#[source] metrics_exporter_prometheus::BuildError),
    /// The DNS resolver for delivery could not be started.
    #[error("resolver: {0}")]
    Resolver(#[source] petrel_outbound::OutboundError),
    /// The MTA-STS service for delivery (`delivery.mta_sts`) could not be started.
    #[error("MTA-STS: {0}")]
    MtaSts(#[source] petrel_outbound::MtaStsError),
    /// The delivery events writer could not be started.
    #[error("events: {0}")]
    Events(#[source] petrel_delivery::DeliveryError),
    #[error("spool: {0}")]
    Spool(#[from] petrel_spool::SpoolError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The operator's bounce rules (`delivery.bounce_rules_file`) could not be loaded; the
    /// source names the file and, for a bad rule, its section and index.
    #[error("delivery.bounce_rules_file: {0}")]
    BounceRules(#[source] petrel_bounce::RulesError),
    /// The operator's shaping file (`delivery.shaping_file`) could not be loaded; the source
    /// names the file and, for a bad value, its line and key.
    #[error("delivery.shaping_file: {0}")]
    Shaping(#[source] petrel_delivery::shaping::ShapingError),
    /// The key-encryption key or the keyring could not be read (issue 16): the wrong key file,
    /// one others may read, or a damaged keyring. The engine does not start without them.
    #[error("encryption at rest: {0}")]
    AtRest(#[from] petrel_seal::SealError),
    /// ACME could not be started (`[acme]`): its responder's port, its state directory or
    /// `acme.ca_file`.
    #[error("acme: {0}")]
    Acme(#[from] crate::acme::AcmeError),
}
