//! Settings for tests that drive petrel-outbound's SMTP client against a kit server (or any
//! loopback server).

use petrel_outbound::{ClientConfig, TlsMode};

/// Every client timeout in tests: a bound on a hung peer, never a performance assertion.
pub const CLIENT_TIMEOUT_MS: u64 = 5_000;
/// The name the test client gives in EHLO/HELO.
pub const CLIENT_HELO_NAME: &str = "client.test.local";

/// The client's defaults with `tls`, the test HELO name and [`CLIENT_TIMEOUT_MS`] everywhere.
pub fn client_config(tls: TlsMode) -> ClientConfig {
    ClientConfig {
        helo_name: CLIENT_HELO_NAME.into(),
        tls,
        connect_timeout_ms: CLIENT_TIMEOUT_MS,
        greeting_timeout_ms: CLIENT_TIMEOUT_MS,
        command_timeout_ms: CLIENT_TIMEOUT_MS,
        data_block_timeout_ms: CLIENT_TIMEOUT_MS,
        data_done_timeout_ms: CLIENT_TIMEOUT_MS,
        ..ClientConfig::default()
    }
}
