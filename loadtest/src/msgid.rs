//! The load id header: `X-Petrel-Load-Id: <run hex>-<n>-<unix µs at injection>`.
//!
//! Pure formatting and parsing, no clock: the caller passes the times in.

use std::io::Write;

/// Header name written by the injector and looked up by the sink (exact case).
pub const ID_HEADER: &str = "X-Petrel-Load-Id";

/// A parsed load id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadId {
    /// Random per injection run.
    pub run: u64,
    /// Message sequence number within the run, from 0.
    pub n: u64,
    /// Injection time, microseconds since the Unix epoch.
    pub injected_unix_us: u64,
}

impl LoadId {
    /// The key used for duplicate detection (run and sequence, not the timestamp).
    pub fn key(&self) -> u128 {
        (u128::from(self.run) << 64) | u128::from(self.n)
    }
}

/// Appends the full header line (with CRLF) to `out`; no allocation beyond `out`'s growth.
pub fn write_header(out: &mut Vec<u8>, id: &LoadId) {
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "{ID_HEADER}: {:016x}-{}-{}\r\n",
        id.run, id.n, id.injected_unix_us
    );
}

/// Parses a header value such as `0123abcd00000000-42-1700000000000000`.
pub fn parse_value(value: &[u8]) -> Option<LoadId> {
    let value = trim(value);
    let mut parts = value.split(|b| *b == b'-');
    let run = parse_hex(parts.next()?)?;
    let n = parse_dec(parts.next()?)?;
    let injected_unix_us = parse_dec(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some(LoadId {
        run,
        n,
        injected_unix_us,
    })
}

/// Finds the id header in a message's header section (`msg` starts at the first header line).
pub fn find_in_message(msg: &[u8]) -> Option<LoadId> {
    let header_end = memchr::memmem::find(msg, b"\r\n\r\n").unwrap_or(msg.len());
    let headers = &msg[..header_end];
    let name = ID_HEADER.as_bytes();
    let mut start = 0;
    while start < headers.len() {
        let end = memchr::memchr(b'\n', &headers[start..]).map_or(headers.len(), |i| start + i);
        let line = &headers[start..end];
        if line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()] == b':'
        {
            return parse_value(&line[name.len() + 1..]);
        }
        start = end + 1;
    }
    None
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &v[start..end.max(start)]
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

fn parse_dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = LoadId {
            run: 0xdead_beef,
            n: 42,
            injected_unix_us: 1_700_000_000_000_000,
        };
        let mut msg = b"From: a@b\r\n".to_vec();
        write_header(&mut msg, &id);
        msg.extend_from_slice(b"Subject: x\r\n\r\nX-Petrel-Load-Id: 1-2-3\r\n");
        assert_eq!(find_in_message(&msg), Some(id));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_value(b" zz-1-2"), None);
        assert_eq!(parse_value(b"1-2"), None);
        assert_eq!(parse_value(b"1-2-3-4"), None);
        assert_eq!(find_in_message(b"Subject: x\r\n\r\nbody"), None);
        assert_eq!(find_in_message(b""), None);
    }
}
