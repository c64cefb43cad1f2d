//! Petrel's policy: what the control plane decides and every engine enforces.
//!
//! The control plane owns tenants, sending domains, DKIM keys, credentials and limits in SQL.
//! Whenever any of it changes it builds one [`PolicySnapshot`], a plain versioned value, and
//! pushes it whole to every engine. Full snapshots rather than deltas: an engine that missed
//! ten changes needs one message to catch up, and there is no ordering of patches to get wrong.
//! A snapshot of 100k credentials is a few tens of MiB at most; changes are rare next to mail.
//!
//! This crate is shared by both sides:
//!
//! - **Format** ([`snapshot`], [`wire`]): the snapshot types (rkyv 0.8 + serde), a checksummed
//!   byte format validated three ways (crc32c, bytecheck, semantic rules) and the framed push
//!   protocol (`length | kind | payload`) with pure and tokio codecs; the delivery [`event`]s
//!   engines send back on the same link.
//! - **Control plane side** ([`keys`]): DKIM key generation and the DNS TXT records to publish.
//! - **Engine side** ([`store`], [`compiled`], [`auth`], [`rate`], [`dkim`]): a [`PolicyStore`]
//!   holding an `Arc<CompiledPolicy>` behind an arc-swap, so shards read it without locks and a
//!   new snapshot replaces it atomically; persisted on disk so an engine restarts on its last
//!   policy while the control plane is away. [`CompiledPolicy`] answers the session's questions:
//!   SMTP AUTH (argon2id with a keyed-hash cache of successes), may this sender use this domain,
//!   is the tenant or domain over its rate, and which DKIM key signs.
//! - **Suppression lists** ([`suppression`]): the one list that is *not* in the snapshot, since
//!   10 million entries cannot be resent on every change. The control plane keeps a change log
//!   and engines apply its deltas to a compact set of keyed 62-bit hashes
//!   ([`suppression::SuppressionSet`], about 8.3 bytes per entry) checked at RCPT.
//! - **Link** ([`link`]): the engine's TLS client that registers, applies pushed snapshots,
//!   acks them and reconnects with capped backoff. The only networking (and the only tokio
//!   runtime use) in the crate.
//! - **Audit checkpoints** ([`checkpoint`]): the control plane's signed audit chain heads,
//!   pushed on the link; the engine verifies each and keeps the latest next to its policy.
//!
//! Trade-offs. The rules are pure and deterministic: time is passed in and nothing here
//! depends on glommio, so shards call them inline. argon2id is the exception in cost (tens of
//! milliseconds per miss); [`CompiledPolicy::verify_smtp_cached`] lets an engine answer hits
//! and cheap refusals on the shard and send misses elsewhere. Rate limits are per engine and
//! survive snapshot changes; a cluster-wide limit is the control plane's division to make.
//! DKIM signing drives mail-auth 0.12's public building blocks so that `t=` comes from the
//! caller's clock, not the system's.
//!
//! Errors: one [`PolicyError`] for failures (classified by [`PolicyError::is_transient`]), and
//! two answers that map to SMTP replies in one place each: [`AuthError::reply`] (535 5.7.8) and
//! [`PolicyDenial::reply`] (550 5.7.1 or 451 4.7.1).
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod auth;
pub mod checkpoint;
pub mod compiled;
pub mod dkim;
pub mod error;
pub mod event;
pub mod keys;
pub mod link;
pub mod new_tenant;
pub mod outbox;
pub mod quota;
pub mod rate;
pub mod snapshot;
pub mod store;
pub mod suppression;
pub mod wire;

pub use compiled::{AuthIdentity, CompiledPolicy, DestinationPolicy};
pub use dkim::DkimSigner;
pub use error::{AuthError, PolicyDenial, PolicyError};
pub use event::{Bounce, BounceClass, Event, EventError, EventType, Remote, Reply};
pub use link::{run_link, LinkConfig, LinkTrust};
pub use outbox::{Outbox, OutboxError};
/// Secrets read from owner-only files (moved to `petrel-seal`, which the spool shares).
pub use petrel_seal::secret_file;
pub use snapshot::{
    decode, encode, AuthFailure, Credential, CredentialKind, DefaultLimits, DestinationLimit,
    DkimAlgorithm, DkimKey, NewTenantCap, PolicySnapshot, ReturnPath, SendingDomain, Tenant,
    TokenKey,
};
pub use store::{AtRest, PolicyStore};
pub use wire::{
    read_frame, write_frame, Frame, FrameDecoder, Hello, LoadEntry, LoadPage,
    SUPPRESSION_FRAME_ENTRIES_MAX,
};
