//! # petrel-engine: the sharded data plane
//!
//! One glommio executor per core (a *shard*) owns an SMTP listener on the shared port
//! (SO_REUSEPORT), a spool and its delivery queues. The path of a message:
//!
//! SMTP in ([`session`], driving the pure `petrel_smtp::Session`) → checks and backpressure
//! ([`pressure`]) → policy (AUTH, sender rules, rates: `petrel_policy`) → DKIM signing and the
//! durable spool commit ([`sign_and_spool`]; the 250 follows the fsync) → per-domain queues and
//! SMTP out (`petrel_delivery`) → events.
//!
//! Slow-path services run on one tokio thread: metrics HTTP ([`metrics`]), the admin endpoint
//! ([`admin`]), DNS (`petrel_outbound::Resolver`) and the control-plane link. They talk to the
//! shards through bounded channels only.
//!
//! What the shard's files share lives in modules of its own, so the files' imports form no cycle:
//! [`ctx`] (what a shard is given and what its tasks share), [`clock`] (the wall clock) and
//! [`delivery_setup`] (what every shard's delivery shares). [`shard`] runs a shard, [`engine`]
//! starts them all.
//!
//! Trade-off: a message stays on the shard that accepted it (no cross-core copies, no
//! cross-shard spool references); engine-wide limits are shared atomics instead.
// No unwrap outside tests: propagate a typed error, or `expect` an invariant checked right there.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod acme;
pub mod admin;
pub mod arc;
pub mod arc_service;
pub mod at_rest;
pub mod audit_signals;
pub mod auth;
pub mod clock;
pub mod config;
pub mod ctx;
pub mod delivery_setup;
pub mod domain_auth;
pub mod dsn_params;
pub mod engine;
pub mod erasure;
pub mod error;
pub mod fleet_connections;
pub mod intake;
pub mod intake_keys;
pub mod intake_session;
pub mod list_unsubscribe;
pub mod metrics;
pub mod pressure;
pub mod quota_redis;
pub mod rejections;
pub mod session;
pub mod shaping_overlay;
pub mod shard;
pub mod sign_and_spool;
pub mod spool_access;
pub mod tenant_delivery;
pub mod tls;
pub mod tls_cert;

pub use config::{EngineConfig, Overrides};
pub use engine::{run, ReadyInfo, StopHandle};
pub use error::EngineError;
