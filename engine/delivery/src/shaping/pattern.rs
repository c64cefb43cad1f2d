//! The two small matchers of the shaping file: MX host patterns and enhanced status code
//! prefixes. Both compare without allocating, since they run for every new site and every
//! negative reply.

/// Longest host pattern, in bytes (a DNS name is at most 253).
pub const HOST_PATTERN_BYTES_MAX: usize = 253;

/// Longest label of a host pattern, in bytes (RFC 1035).
const LABEL_BYTES_MAX: usize = 63;

/// An MX host pattern: `*.example.com` (any name below example.com) or one exact host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// The suffix with its leading dot, lowercase, no trailing dot: `.example.com`.
    Below(String),
    /// One host, lowercase, no trailing dot.
    Exact(String),
}

impl HostPattern {
    /// Parses a pattern as written in the file; `Err` says what is wrong.
    pub fn parse(text: &str) -> Result<HostPattern, &'static str> {
        let t = text.strip_suffix('.').unwrap_or(text);
        if t.is_empty() || t.len() > HOST_PATTERN_BYTES_MAX {
            return Err("a host pattern is 1 to 253 bytes");
        }
        let (below, name) = match t.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let ok_label = |l: &str| {
            !l.is_empty()
                && l.len() <= LABEL_BYTES_MAX
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name.split('.').all(ok_label) {
            return Err("want a host name, or `*.` followed by one (letters, digits, `-`, `_`)");
        }
        let name = name.to_ascii_lowercase();
        Ok(if below {
            HostPattern::Below(format!(".{name}"))
        } else {
            HostPattern::Exact(name)
        })
    }

    /// Whether `host` (any case, a trailing dot allowed) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Below(suffix) => {
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        }
    }
}

/// The leading parts of an RFC 3463 code a rule wants: `4.7` (or `4.7.`) matches 4.7.x;
/// `4.7.28` matches only 4.7.28. Parts are compared as numbers, so `4.7.2` is not a prefix of
/// `4.7.28`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EnhancedPrefix {
    parts: [u16; 3],
    /// 1 to 3.
    len: usize,
}

impl EnhancedPrefix {
    pub fn parse(text: &str) -> Result<EnhancedPrefix, &'static str> {
        const WANT: &str = "want class[.subject[.detail]] with class 2, 4 or 5, parts of 1 to 3 digits (a trailing dot allowed)";
        let t = text.strip_suffix('.').unwrap_or(text);
        let mut parts = [0u16; 3];
        let mut len = 0;
        for part in t.split('.') {
            if len == 3 || part.is_empty() || part.len() > 3 {
                return Err(WANT);
            }
            parts[len] = part.parse().map_err(|_| WANT)?;
            len += 1;
        }
        if !matches!(parts[0], 2 | 4 | 5) {
            return Err(WANT);
        }
        Ok(EnhancedPrefix { parts, len })
    }

    /// Whether the reply's enhanced code (`4.7.28`) starts with these parts.
    pub fn matches(&self, code: &str) -> bool {
        let mut got = code.trim().split('.');
        self.parts[..self.len]
            .iter()
            .all(|want| got.next().and_then(|p| p.parse::<u16>().ok()) == Some(*want))
    }

    /// As [`EnhancedPrefix::matches`], for a code already parsed (`petrel_bounce::Reply`).
    pub fn matches_parts(&self, (class, subject, detail): (u8, u16, u16)) -> bool {
        let got = [u16::from(class), subject, detail];
        self.parts[..self.len] == got[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_matches_subdomains_in_any_case_with_a_trailing_dot() {
        let p = HostPattern::parse("*.Google.com.").unwrap();
        assert!(p.matches("gmail-smtp-in.l.google.com"));
        assert!(p.matches("ASPMX.L.GOOGLE.COM."));
        assert!(!p.matches("google.com"), "the apex is not below itself");
        assert!(!p.matches("notgoogle.com"));
        assert!(!p.matches("google.com.evil.example"));
        let exact = HostPattern::parse("mx1.Example.NET").unwrap();
        assert!(exact.matches("MX1.example.net."));
        assert!(!exact.matches("a.mx1.example.net"));
    }

    #[test]
    fn bad_host_patterns_are_refused() {
        for bad in [
            "",
            "*.",
            "a..b",
            "*.*.example",
            "mx.exa mple.com",
            "a*.example.com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(HostPattern::parse(&"a".repeat(254)).is_err());
    }

    #[test]
    fn enhanced_prefixes_compare_whole_parts() {
        let p = EnhancedPrefix::parse("4.7.").unwrap();
        assert!(p.matches("4.7.28") && p.matches("4.7.0"));
        assert!(!p.matches("4.2.1") && !p.matches("5.7.28") && !p.matches(""));
        assert!(p.matches_parts((4, 7, 28)) && !p.matches_parts((5, 7, 28)));
        let exact = EnhancedPrefix::parse("4.7.2").unwrap();
        assert!(exact.matches_parts((4, 7, 2)) && !exact.matches_parts((4, 7, 28)));
        assert!(exact.matches("4.7.2"));
        assert!(!exact.matches("4.7.28"));
        for bad in ["", "3.7", "4.x", "4.7.0.1", "4..7", "4.7777"] {
            assert!(EnhancedPrefix::parse(bad).is_err(), "{bad:?}");
        }
    }
}
