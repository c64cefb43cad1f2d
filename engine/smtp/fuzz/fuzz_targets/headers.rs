//! The message checks on arbitrary bytes: no panic, and an accepted message still parses after
//! the trace headers are added and the X-Petrel headers removed; the X-Petrel parser alone
//! never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use petrel_smtp::petrel_headers::parse_petrel_headers;
use petrel_smtp::{parse_headers, prepare_message, CheckError, TraceInfo};

fuzz_target!(|data: &[u8]| {
    let _ = parse_petrel_headers(data);
    let parsed = parse_headers(data).is_ok();
    let trace = TraceInfo {
        hostname: "mx.test",
        helo: "client.test",
        peer: ([192, 0, 2, 7], 40_000).into(),
        tls: Some("TLSv1.3 TLS_AES_128_GCM_SHA256"),
        authenticated_as: Some("alice"),
        queue_id: "Q1",
        recipient: Some("b@example.net"),
        now_unix_secs: i64::from_le_bytes(data.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8])),
        submission: true,
    };
    match prepare_message(data, &trace) {
        Ok(message) => {
            assert!(parsed);
            assert!(parse_headers(&message).is_ok(), "prepared message must parse");
        }
        Err(error) => {
            // A well-formed section can still carry malformed X-Petrel headers.
            assert!(!parsed || matches!(error, CheckError::PetrelHeader(_)));
            assert!(error.reply().code >= 500);
        }
    }
});
