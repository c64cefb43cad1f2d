//! Token decoding on arbitrary text: no panic, and only a token this key made is accepted, for
//! the purpose it was made for.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use petrel_reports::{Purpose, VerpKey, VerpKeys};

static KEYS: LazyLock<VerpKeys> = LazyLock::new(|| {
    VerpKeys::new(
        VerpKey::new(1, b"petrel-fuzz-verp-key-000000001").expect("a long enough key"),
        vec![],
    )
    .expect("one key")
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(decoded) = KEYS.decode_address(&text) {
        // Re-encoding gives the same token, up to case (the decoder accepts either).
        let again = match decoded.purpose {
            Purpose::Bounce => KEYS.return_path(&decoded.data, &decoded.domain),
            _ => KEYS.unsubscribe_address(&decoded.data, &decoded.domain),
        };
        assert!(again.is_ok());
    }
    for purpose in [Purpose::Bounce, Purpose::Unsubscribe, Purpose::OneClick] {
        if let Ok(data) = KEYS.decode_token(purpose, &text) {
            let token = KEYS.encode_token(purpose, &data).expect("a decoded token re-encodes");
            assert!(token.eq_ignore_ascii_case(&text), "{token} vs {text}");
        }
    }
});
