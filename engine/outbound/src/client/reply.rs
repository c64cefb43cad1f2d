//! SMTP reply parsing (RFC 5321 §4.2, enhanced codes RFC 2034/3463). Pure, bounded, and total:
//! any byte sequence from a peer yields a reply, "need more input" or a typed error, never a panic.

/// Longest reply line accepted, CRLF included (RFC 5321 §4.5.3.1.5 says 512; servers exceed it).
pub const REPLY_LINE_MAX_BYTES: usize = 4096;
/// Most lines in one multi-line reply (EHLO lists rarely pass 20).
pub const REPLY_LINES_MAX: usize = 128;

/// A reply with an optional enhanced status code; `text` has no CRLF (lines joined by "\n",
/// the enhanced code removed from each line that carries it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit code, 200..=599.
    pub code: u16,
    pub enhanced: Option<(u8, u16, u16)>,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: give up.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The text lines, for EHLO keyword parsing.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split('\n')
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some((a, b, c)) = self.enhanced {
            write!(f, " {a}.{b}.{c}")?;
        }
        write!(f, " {}", self.text.replace('\n', " / "))
    }
}

/// Why a reply could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line longer than {REPLY_LINE_MAX_BYTES} bytes")]
    LineTooLong,
    #[error("reply longer than {REPLY_LINES_MAX} lines")]
    TooManyLines,
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
}

/// Parses one complete reply from the start of `buf`.
/// Returns `Ok(Some((reply, consumed_bytes)))`, `Ok(None)` when more input is needed, or an error.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code: Option<u16> = None;
    let mut enhanced = None;
    let mut text = String::new();
    for line_no in 0..REPLY_LINES_MAX {
        let rest = &buf[pos..];
        let Some(nl) = memchr::memchr(b'\n', rest) else {
            if rest.len() >= REPLY_LINE_MAX_BYTES {
                return Err(ReplyError::LineTooLong);
            }
            return Ok(None);
        };
        if nl + 1 > REPLY_LINE_MAX_BYTES {
            return Err(ReplyError::LineTooLong);
        }
        let raw = &rest[..nl];
        let line = raw.strip_suffix(b"\r").unwrap_or(raw); // tolerate bare LF
        pos += nl + 1;
        let (line_code, last, line_text) = split_line(line)?;
        match code {
            None => code = Some(line_code),
            Some(c) if c != line_code => {
                return Err(ReplyError::Malformed(lossy(line)));
            }
            Some(_) => {}
        }
        let (line_enhanced, line_text) = split_enhanced(line_text, line_code);
        if line_no == 0 {
            enhanced = line_enhanced;
        } else {
            text.push('\n');
        }
        text.push_str(&String::from_utf8_lossy(line_text));
        if last {
            let code = code.ok_or_else(|| ReplyError::Malformed(String::new()))?;
            return Ok(Some((
                Reply {
                    code,
                    enhanced,
                    text,
                },
                pos,
            )));
        }
    }
    Err(ReplyError::TooManyLines)
}

/// "250-text", "250 text" or "250": (code, is_last_line, text).
fn split_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    let malformed = || ReplyError::Malformed(lossy(line));
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let code = line[..3]
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if !(200..=599).contains(&code) {
        return Err(malformed());
    }
    match line.get(3) {
        None => Ok((code, true, &[])),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(malformed()),
    }
}

/// Strips a leading "x.y.z " enhanced code whose class matches the reply's first digit.
fn split_enhanced(text: &[u8], code: u16) -> (Option<(u8, u16, u16)>, &[u8]) {
    let end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
    let Ok(token) = std::str::from_utf8(&text[..end]) else {
        return (None, text);
    };
    let mut parts = token.split('.');
    let parsed = (|| {
        let class: u8 = parse_digits(parts.next()?, 1)?;
        let subject: u16 = parse_digits(parts.next()?, 3)?;
        let detail: u16 = parse_digits(parts.next()?, 3)?;
        if parts.next().is_some() || u16::from(class) != code / 100 {
            return None;
        }
        Some((class, subject, detail))
    })();
    match parsed {
        Some(e) => (Some(e), text.get(end + 1..).unwrap_or(&[])),
        None => (None, text),
    }
}

fn parse_digits<T: std::str::FromStr>(s: &str, max_len: usize) -> Option<T> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn lossy(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_enhanced_code() {
        let (r, n) = parse_reply(b"250 2.1.0 Ok\r\nextra").unwrap().unwrap();
        assert_eq!(n, 14);
        assert_eq!(r, Reply::new(250, (2, 1, 0), "Ok"));
    }

    #[test]
    fn multi_line() {
        let input = b"250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n";
        let (r, n) = parse_reply(input).unwrap().unwrap();
        assert_eq!(n, input.len());
        assert_eq!(r.code, 250);
        assert_eq!(r.enhanced, None);
        let lines: Vec<_> = r.lines().collect();
        assert_eq!(
            lines,
            ["mx.example Hello", "PIPELINING", "SIZE 1000", "STARTTLS"]
        );
    }

    #[test]
    fn incomplete_needs_more() {
        assert_eq!(parse_reply(b"250-a\r\n250 b").unwrap(), None);
        assert_eq!(parse_reply(b"").unwrap(), None);
    }

    #[test]
    fn bare_code_and_mismatched_class() {
        let (r, _) = parse_reply(b"354\r\n").unwrap().unwrap();
        assert_eq!((r.code, r.text.as_str()), (354, ""));
        let (r, _) = parse_reply(b"550 2.1.0 odd\r\n").unwrap().unwrap();
        assert_eq!(r.enhanced, None);
        assert_eq!(r.text, "2.1.0 odd");
    }

    #[test]
    fn malformed_and_limits() {
        assert!(parse_reply(b"hello\r\n").is_err());
        assert!(parse_reply(b"250-a\r\n251 b\r\n").is_err());
        assert!(parse_reply(b"999 x\r\n").is_err());
        assert!(parse_reply(b"250x\r\n").is_err());
        let long = vec![b'2'; REPLY_LINE_MAX_BYTES + 1];
        assert_eq!(parse_reply(&long), Err(ReplyError::LineTooLong));
        let many = b"250-x\r\n".repeat(REPLY_LINES_MAX + 1);
        assert_eq!(parse_reply(&many), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..(seed % 64) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                buf.push(b"0123456789 -.\r\nA\xff"[(seed % 17) as usize]);
            }
            let _ = parse_reply(&buf);
        }
    }
}
