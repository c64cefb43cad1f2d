//! Petrel's test kit: the scaffolding every integration test shares, written once.
//!
//! Tests read like scenarios when the real parts around the code under test are one call away:
//!
//! - [`smtp_server`]: one scripted SMTP server on loopback (std threads). A [`smtp_server::Script`]
//!   says what it offers (PIPELINING, CHUNKING, SIZE, STARTTLS) and how it misbehaves (greeting,
//!   EHLO, MAIL, per-recipient and DATA replies, 421, cut-off DATA, silence, broken TLS); its
//!   [`smtp_server::Log`] records commands, transactions and connection counts.
//! - [`tls`]: a throw-away CA and a server certificate signed by it (rustls + rcgen).
//! - [`outbound`]: the SMTP client settings tests use against those servers.
//! - [`policy_server`]: an HTTPS server on loopback answering MTA-STS policy requests with a
//!   scripted response (certificates from [`tls`]).
//! - [`dns`]: a real DNS server on loopback (hickory-server, UDP and TCP) serving A, AAAA, MX,
//!   TXT and TLSA records of zone `test.`, changeable while it runs.
//! - [`http`]: one small HTTP/1.1 client (Content-Length and chunked bodies, JSON helpers) with a
//!   blocking std transport and an async tokio transport over TCP or TLS.
//! - [`glommio`]: run a future on a fresh glommio executor thread, optionally pinned and bounded
//!   in time, and await a condition with a bound.
//! - [`redis`]: a private `redis-server` on loopback (no persistence), stopped by PID.
//! - [`named`]: a private BIND `named` on loopback serving a zone DNSSEC-signed at start (its key
//!   is the trust anchor), optionally with a forged RRset (bogus), stopped by PID.
//! - [`shard`]: a delivery-shard harness (an in-memory spool, static routes to kit SMTP servers,
//!   `enqueue`, `await_removed`, `await_outcome`), so a shard test is a short scenario.
//!
//! Every wait in the kit has a bound, and a bound is never a performance assertion: a test that
//! hits one fails with a message saying what it waited for.
//!
//! The kit is a dev-dependency only. Crates it depends on (petrel-outbound, petrel-delivery) may
//! use it from their integration tests (`tests/`), never from unit tests in `src/`.

pub mod dns;
pub mod glommio;
pub mod http;
pub mod https_receiver;
pub mod mem_spool;
pub mod named;
pub mod outbound;
pub mod policy_server;
pub mod redis;
pub mod shard;
pub mod smtp_server;
mod smtp_session;
pub mod tls;

/// The environment variable that turns a missing peer program into a test failure.
/// `ops/test.sh` sets it: it installs every peer, so in CI a missing one is a broken set-up,
/// never a reason for a test to pass without testing.
pub const REQUIRE_PEERS_ENV: &str = "PETREL_REQUIRE_PEERS";

/// A test's peer program (`named`, `pebble`, `testssl.sh`, dkimpy...) is missing: fails when
/// [`REQUIRE_PEERS_ENV`] is set, else says SKIPPED (a developer's machine without it).
pub fn peer_missing(what: &str) {
    assert!(
        std::env::var_os(REQUIRE_PEERS_ENV).is_none(),
        "{what}; {REQUIRE_PEERS_ENV} is set (ops/test.sh installs every peer)"
    );
    println!("SKIPPED: {what}");
}
