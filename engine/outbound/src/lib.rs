//! Outbound mail: where to deliver (MX resolution) and how (the SMTP client).
//!
//! This crate owns the two halves of getting a message off a shard and into a remote server.
//!
//! **Resolution** ([`Resolver`]) runs on one dedicated helper thread with a small tokio runtime
//! and hickory's resolver. Shards are glommio executors on other threads, so the handle they
//! hold is runtime-agnostic: a request goes through a bounded `async-channel` and the answer
//! comes back through a `futures` oneshot. The routing logic (static routes, MX preference,
//! ties shuffled, implicit MX, RFC 7505 null MX) and our own TTL-respecting cache sit above a
//! narrow [`Dns`] trait, so a unit test can drive them with a fake clock and canned answers
//! while production and the loopback tests use the hickory-backed implementation. We cache
//! whole routes rather than leaning on hickory's record cache because one route is several
//! lookups (MX then A/AAAA per host) and a shard wants one answer, one TTL (the smallest);
//! hickory's own cache is therefore off. Concurrent requests for one domain share one lookup.
//! The trade-off: ties between equal-preference MX hosts are shuffled once per lookup, not per
//! call, so one cached route keeps its order until it expires.
//!
//! **Delivery** ([`SmtpConnection`]) is an ESMTP client over glommio's `TcpStream`, upgraded
//! with STARTTLS through futures-rustls. It pipelines MAIL/RCPT/DATA when the peer offers
//! PIPELINING, honours SIZE, reuses a connection with RSET, dot-stuffs the body and bounds
//! every step with the RFC 5321 §4.5.3.2 timeouts (glommio timers: `connect` and `send` must
//! run inside a glommio executor). Replies are parsed by a pure, bounded
//! parser ([`client::reply`]) that never panics on peer input. Opportunistic TLS does not
//! verify the certificate (as nearly every MTA does, since MX names are not authenticated
//! without DANE or MTA-STS); `Required` demands a certificate valid for the MX name.
//!
//! **MTA-STS** ([`MtaSts`], RFC 8461) tells delivery which policy a recipient domain publishes:
//! a pure parser and matcher ([`mta_sts::policy`]), an HTTPS fetcher and a cache kept on disk,
//! served from a thread of its own like the resolver. It only answers; delivery applies.
//!
//! **DANE** ([`dane`], RFC 7672): with [`ResolverConfig::dane`] set, the DNS thread also runs a
//! DNSSEC-validating resolver that answers [`Resolver::tlsa`] for an MX host; [`dane::decide`]
//! turns the answer into a per-host decision and [`SmtpConnection::connect_dane`] requires a
//! certificate that matches the records. Delivery applies it, per host, above MTA-STS.
//!
//! Every error here is temporary from the caller's point of view except the DNS answers that
//! say a domain cannot receive mail (`ResolveError::is_permanent`); SMTP replies themselves
//! are data ([`Reply`]), classified by the caller.
// No unwrap outside tests: propagate a typed error, or `expect` an invariant checked right there.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod client;
pub mod dane;
pub mod mta_sts;
pub mod resolver;

pub use client::{
    ClientConfig, ClientError, OutgoingDsn, OutgoingMessage, RcptOutcome, Reply, SmtpConnection,
    Stage, TlsInfo, TlsMode, TransactionOutcome, BDAT_INLINE_BYTES_MAX, PIPELINE_TRANSACTIONS_MAX,
    TCP_CONNECT_FAILURES,
};
pub use mta_sts::{MtaSts, MtaStsConfig, MtaStsError};
pub use resolver::{
    Clock, Dns, DnsError, IpAnswer, MxAnswer, MxRecord, ResolveError, Resolver, ResolverConfig,
    Route, RouteHost, RouteLogic, StaticRoute, SystemClock,
};

/// The crate's one error enum; the two halves' errors nest inside it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboundError {
    /// The resolver thread or its DNS configuration could not be set up.
    #[error("resolver setup failed: {0}")]
    ResolverSetup(String),
    /// A domain could not be resolved to a route.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// An SMTP client failure.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The MTA-STS service could not start or save its cache.
    #[error(transparent)]
    MtaSts(#[from] MtaStsError),
}
