//! A driver shared by the cargo-fuzz target (`fuzz/fuzz_targets/session.rs`) and a seeded unit
//! test: arbitrary bytes in arbitrary pieces, every event answered (accept and reject
//! alternately), and every reply checked for well-formedness. Hidden from the docs; not an API.

use crate::types::{DataVerdict, Event, Limits, PeerInfo, Reply, ServerConfig, Verdict};
use crate::Session;
use std::sync::Arc;

/// Events answered per fed piece at most (each answer may release one more event).
const EVENTS_PER_PIECE_MAX: usize = 10_000;

/// Feeds `data` to a fresh session in pieces whose sizes come from the data itself, answers
/// every event, and checks the output. `Err` describes the first malformed reply.
pub fn drive_session(data: &[u8]) -> Result<(), String> {
    let flags = data.first().copied().unwrap_or(0);
    let seed = data.iter().take(8).fold(0x9e37_79b9_7f4a_7c15u64, |s, &b| {
        (s ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let config = ServerConfig {
        starttls_available: flags & 1 == 0,
        auth_without_tls: flags & 2 == 0,
        auth_enabled: flags & 4 == 0,
        tls_required: flags & 16 != 0,
        auth_required: flags & 32 != 0,
        ..small_config()
    };
    let written = run(
        Arc::new(config),
        flags & 8 != 0,
        data,
        seed,
        PIECE_MAX_BYTES,
    )?;
    check_replies(&written)
}

/// Largest piece fed at once by [`drive_session`].
const PIECE_MAX_BYTES: usize = 64;

/// Small limits, so that the fuzzer reaches every one of them.
fn small_config() -> ServerConfig {
    ServerConfig {
        hostname: "mx.test".into(),
        limits: Limits {
            command_line_max_bytes: 128,
            text_line_max_bytes: 80,
            message_size_max_bytes: 2048,
            recipients_max: 3,
            errors_max: 20,
            auth_attempts_max: 2,
            pipeline_input_max_bytes: 512,
            header_section_max_bytes: 1024,
        },
        starttls_available: true,
        auth_without_tls: true,
        auth_enabled: true,
        tls_required: false,
        auth_required: false,
    }
}

/// Feeds `data` in pieces of 1..=`piece_max_bytes` (chosen by a PRNG from `seed`), answers
/// every event, writes out part of the output after each piece as a slow socket would, and
/// returns everything written (ending with the timeout's 421 if still open).
fn run(
    config: Arc<ServerConfig>,
    tls: bool,
    data: &[u8],
    mut seed: u64,
    piece_max_bytes: usize,
) -> Result<Vec<u8>, String> {
    let peer = PeerInfo {
        addr: ([127, 0, 0, 1], 40_000).into(),
        tls,
    };
    let mut session = Session::new(config, peer);
    let mut written = Vec::new();
    let mut accept = true;
    let mut pos = 0;
    while pos < data.len() && !session.is_closed() {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let piece = 1 + (seed >> 33) as usize % piece_max_bytes.max(1);
        let end = pos.saturating_add(piece).min(data.len());
        session.feed(&data[pos..end]);
        pos = end;
        for _ in 0..EVENTS_PER_PIECE_MAX {
            let Some(event) = session.next_event() else {
                break;
            };
            answer(&mut session, event, accept);
            accept = !accept;
        }
        let out = session.output();
        let n = if seed & 1 == 0 {
            out.len()
        } else {
            out.len() / 2
        };
        written.extend_from_slice(&out[..n]);
        session.consume_output(n);
    }
    session.timeout();
    written.extend_from_slice(session.output());
    let len = session.output().len();
    session.consume_output(len);
    if !session.output().is_empty() {
        return Err("output not consumed".into());
    }
    Ok(written)
}

fn answer(session: &mut Session, event: Event, accept: bool) {
    let reject = || Reply::new(550, (5, 7, 1), "Rejected by the fuzz driver");
    match event {
        Event::StartTls if accept => session.tls_established(),
        Event::StartTls | Event::Close => {}
        Event::Auth { username, .. } => session.auth_result(accept.then_some(username)),
        Event::Mail { .. } if accept => session.mail_verdict(Verdict::Accept),
        Event::Mail { .. } => session.mail_verdict(Verdict::Reject(reject())),
        Event::Rcpt { .. } if accept => session.rcpt_verdict(Verdict::Accept),
        Event::Rcpt { .. } => session.rcpt_verdict(Verdict::Reject(reject())),
        Event::Message(txn) => {
            let verdict = if accept && !txn.recipients.is_empty() {
                DataVerdict::Accept {
                    queue_id: "Q1".into(),
                }
            } else {
                DataVerdict::Reject(reject())
            };
            session.data_verdict(verdict);
        }
    }
}

/// Checks a stream of replies: CRLF-terminated lines "ddd text" or "ddd-text" (continuations
/// keep the code), codes 2xx..5xx, and an enhanced code of the same class on every 2xx/4xx/5xx
/// line except the 220 greeting and the EHLO/HELO lines (which start with the hostname).
pub fn check_replies(output: &[u8]) -> Result<(), String> {
    if !output.is_empty() && !output.ends_with(b"\r\n") {
        return Err("output does not end with CRLF".into());
    }
    let mut continued: Option<&[u8]> = None;
    for line in output.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let show = || String::from_utf8_lossy(line).into_owned();
        let Some(line) = line.strip_suffix(b"\r") else {
            return Err(format!("bare LF: {}", show()));
        };
        if line.contains(&b'\r') || line.len() < 4 {
            return Err(format!("malformed line: {}", show()));
        }
        let (code, sep, text) = (&line[..3], line[3], &line[4..]);
        if !code.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&code[0]) {
            return Err(format!("bad code: {}", show()));
        }
        if continued.is_some_and(|c| c != code) {
            return Err(format!("code changed in a multi-line reply: {}", show()));
        }
        continued = match sep {
            b'-' => Some(code),
            b' ' => None,
            _ => return Err(format!("bad separator: {}", show())),
        };
        let exempt =
            code[0] == b'3' || text.starts_with(b"mx.test") || code == b"250" && sep == b'-';
        let ehlo_last = code == b"250"
            && text
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == &b' ');
        if !exempt && !ehlo_last && !has_enhanced(text, code[0]) {
            return Err(format!("missing enhanced code: {}", show()));
        }
    }
    if continued.is_some() {
        return Err("unfinished multi-line reply".into());
    }
    Ok(())
}

/// "c.sss.ddd " at the start of `text` with class `class`.
fn has_enhanced(text: &[u8], class: u8) -> bool {
    let mut parts = text.splitn(2, |&b| b == b' ');
    let Some(code) = parts.next() else {
        return false;
    };
    let numbers: Vec<&[u8]> = code.split(|&b| b == b'.').collect();
    numbers.len() == 3
        && numbers[0] == [class]
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.len() <= 3 && n.iter().all(u8::is_ascii_digit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of SMTP that pseudo-random inputs are made of, so they reach deep states.
    const FRAGMENTS: &[&str] = &[
        "EHLO c\r\n",
        "HELO c\r\n",
        "MAIL FROM:<a@b.c>\r\n",
        "MAIL FROM:<a@b.c> BODY=BINARYMIME\r\n",
        "RCPT TO:<d@e.f>\r\n",
        "DATA\r\n",
        "BDAT 5\r\n",
        "BDAT 3 LAST\r\n",
        "BDAT 0 LAST\r\n",
        ".\r\n",
        "\r\n",
        "\n",
        "\r",
        ".",
        "..",
        "text",
        "STARTTLS\r\n",
        "AUTH PLAIN\r\n",
        "AUTH LOGIN\r\n",
        "AGFsaWNlAHNlY3JldA==\r\n",
        "*\r\n",
        "=\r\n",
        "RSET\r\n",
        "QUIT\r\n",
        "NOOP\r\n",
        "\u{fc}",
        "\0",
        "SIZE=99999999",
    ];

    /// The fuzz target's driver over seeded pseudo-random inputs built from SMTP fragments.
    #[test]
    fn fuzz_driver_on_pseudo_random_inputs() {
        let mut seed = 0x5eed_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut input = vec![(next() % 16) as u8];
            for _ in 0..next() % 40 {
                let r = next();
                if r % 5 == 0 {
                    input.extend((0..r % 50).map(|i| (r >> (i % 56)) as u8));
                } else {
                    input.extend_from_slice(
                        FRAGMENTS[(r >> 8) as usize % FRAGMENTS.len()].as_bytes(),
                    );
                }
            }
            if let Err(e) = super::drive_session(&input) {
                panic!("{e} for input {:?}", String::from_utf8_lossy(&input));
            }
        }
    }

    /// Chunking does not change the dialogue: random pieces give the same transcript as one
    /// feed (without STARTTLS, whose discard depends on what was already read, and with a
    /// pipeline limit large enough never to cut the session off).
    #[test]
    fn chunking_does_not_change_replies() {
        let config = Arc::new(ServerConfig {
            starttls_available: false,
            limits: Limits {
                pipeline_input_max_bytes: 1 << 20,
                ..small_config().limits
            },
            ..small_config()
        });
        let mut seed = 0xc0ffee_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..1000 {
            let mut input = Vec::new();
            for _ in 0..next() % 40 {
                let r = next();
                let fragment = FRAGMENTS[(r >> 8) as usize % FRAGMENTS.len()];
                if !fragment.starts_with("STARTTLS") {
                    input.extend_from_slice(fragment.as_bytes());
                }
            }
            let whole = run(config.clone(), false, &input, 1, usize::MAX).expect("runs");
            let pieces = run(config.clone(), false, &input, next(), 7).expect("runs");
            assert_eq!(
                String::from_utf8_lossy(&whole),
                String::from_utf8_lossy(&pieces),
                "input {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}
