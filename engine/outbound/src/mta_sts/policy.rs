//! The MTA-STS wire formats, parsed without I/O: the `_mta-sts` TXT record (RFC 8461 §3.1) and
//! the policy file (§3.2), and MX matching (§4.1).
//!
//! Both parsers take untrusted bytes from the network and never panic; every bound is a named
//! constant. Where the RFC leaves room, the choice is written next to the code: unknown keys are
//! ignored (§3.2: "unknown fields SHOULD be ignored"), a repeated field other than `mx` keeps its
//! first value (§3.2: "all entries except for the first SHOULD be ignored"), blank lines are
//! skipped (common in the wild; harmless), and a line that is not `key: value` makes the whole
//! policy invalid (the ABNF has no room for it).

use std::fmt;

/// Largest policy body accepted (RFC 8461 §3.3 suggests 64 kilobytes).
pub const MTA_STS_POLICY_BYTES_MAX: usize = 64 * 1024;
/// Largest `max_age` (RFC 8461 §3.2: 31557600 seconds, about a year).
pub const MTA_STS_MAX_AGE_SECS_MAX: u32 = 31_557_600;
/// `mx` patterns kept per policy; more makes the policy invalid. Real policies list a handful;
/// the bound keeps `matches_mx` and the cache's memory per entry small.
pub const MTA_STS_MX_PATTERNS_MAX: usize = 64;
/// Longest policy `id` (RFC 8461 §3.1: 1 to 32 alphanumeric characters).
pub const MTA_STS_ID_BYTES_MAX: usize = 32;
/// Longest TXT record text considered (after joining its strings); DNS messages over UDP are
/// smaller, over TCP at most 64 KiB. Longer records are invalid.
pub const MTA_STS_TXT_BYTES_MAX: usize = 4096;
/// Longest domain name as text (RFC 1035 §2.3.4).
pub const DOMAIN_BYTES_MAX: usize = 253;
/// Longest DNS label (RFC 1035 §2.3.4).
pub const LABEL_BYTES_MAX: usize = 63;
/// Longest field name (RFC 8461 §3.2 ABNF: one alphanumeric then up to 31 more).
const FIELD_NAME_BYTES_MAX: usize = 32;

/// The version both formats carry.
const VERSION: &str = "STSv1";

/// Why a TXT record or a policy file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// No TXT record starts with `v=STSv1`.
    #[error("no MTA-STS TXT record")]
    NoRecord,
    /// More than one TXT record starts with `v=STSv1` (RFC 8461 §3.1: exactly one).
    #[error("{count} MTA-STS TXT records, expected one")]
    MultipleRecords { count: usize },
    /// The TXT record does not follow the §3.1 grammar.
    #[error("invalid MTA-STS TXT record: {reason}")]
    InvalidRecord { reason: &'static str },
    /// The policy body is larger than [`MTA_STS_POLICY_BYTES_MAX`].
    #[error("policy of {bytes} bytes exceeds {MTA_STS_POLICY_BYTES_MAX}")]
    TooLarge { bytes: usize },
    /// The policy body is not UTF-8 (§3.2: the file is text).
    #[error("policy is not UTF-8")]
    NotUtf8,
    /// A line is not `key: value`.
    #[error("line {line}: not a `key: value` field")]
    Syntax { line: usize },
    /// A required field is absent.
    #[error("missing field `{field}`")]
    Missing { field: &'static str },
    /// `version` is not `STSv1`.
    #[error("unsupported version")]
    Version,
    /// `mode` is not `enforce`, `testing` or `none`.
    #[error("invalid mode")]
    Mode,
    /// `max_age` is not 1 to 10 digits within 0..=[`MTA_STS_MAX_AGE_SECS_MAX`].
    #[error("invalid max_age")]
    MaxAge,
    /// An `mx` value is not a domain, optionally with a leading `*.`.
    #[error("line {line}: invalid mx pattern")]
    MxPattern { line: usize },
    /// More than [`MTA_STS_MX_PATTERNS_MAX`] `mx` fields.
    #[error("more than {MTA_STS_MX_PATTERNS_MAX} mx patterns")]
    TooManyMx,
}

/// The `_mta-sts.<domain>` TXT record: what matters of it is the policy `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// 1 to [`MTA_STS_ID_BYTES_MAX`] ASCII alphanumerics; compared byte for byte.
    pub id: String,
}

impl StsRecord {
    /// The one MTA-STS record among a name's TXT records, each given as its strings joined
    /// (§3.1: "treated as if those strings are concatenated together without adding spaces").
    /// Records not starting with `v=STSv1` are discarded; exactly one must remain and parse.
    pub fn from_txt<S: AsRef<[u8]>>(records: &[S]) -> Result<StsRecord, PolicyError> {
        let mut candidates = records.iter().map(AsRef::as_ref).filter(|r| is_sts(r));
        let first = candidates.next().ok_or(PolicyError::NoRecord)?;
        let others = candidates.count();
        if others > 0 {
            return Err(PolicyError::MultipleRecords { count: others + 1 });
        }
        StsRecord::parse(first)
    }

    /// One record's text: `v=STSv1; id=<id>[; ext=value]*[;]`.
    pub fn parse(text: &[u8]) -> Result<StsRecord, PolicyError> {
        let invalid = |reason| PolicyError::InvalidRecord { reason };
        if text.len() > MTA_STS_TXT_BYTES_MAX {
            return Err(invalid("too long"));
        }
        let text = std::str::from_utf8(text).map_err(|_| invalid("not UTF-8"))?;
        let mut fields = text.split(';').map(|f| f.trim_matches(is_wsp));
        if fields.next() != Some("v=STSv1") {
            return Err(invalid("does not start with v=STSv1"));
        }
        let mut id = None;
        let mut fields = fields.peekable();
        while let Some(field) = fields.next() {
            if field.is_empty() && fields.peek().is_none() {
                break; // the optional final `;`
            }
            let (name, value) = field.split_once('=').ok_or(invalid("field without `=`"))?;
            if !is_field_name(name) {
                return Err(invalid("bad field name"));
            }
            if name == "id" {
                if !is_id(value) {
                    return Err(invalid("id is not 1-32 alphanumerics"));
                }
                id.get_or_insert_with(|| value.to_string()); // first one wins, as in §3.2
            } else if value.is_empty() || !value.bytes().all(is_ext_value_byte) {
                return Err(invalid("bad extension value"));
            }
        }
        let id = id.ok_or(invalid("missing id"))?;
        Ok(StsRecord { id })
    }
}

/// A record is a candidate when it starts with `v=STSv1` and then `;` (optionally after
/// whitespace, as the §3.1 grammar allows) or ends.
fn is_sts(record: &[u8]) -> bool {
    record
        .strip_prefix(b"v=STSv1")
        .map(|rest| {
            let rest = rest.trim_ascii_start();
            rest.is_empty() || rest[0] == b';'
        })
        .unwrap_or(false)
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `(ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")` (§3.1 and §3.2).
fn is_field_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= FIELD_NAME_BYTES_MAX
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

fn is_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MTA_STS_ID_BYTES_MAX
        && value.bytes().all(|c| c.is_ascii_alphanumeric())
}

/// `%x21-3A / %x3C / %x3E-7E`: visible ASCII except `;` and `=`.
fn is_ext_value_byte(c: u8) -> bool {
    (0x21..=0x7e).contains(&c) && c != b';' && c != b'='
}

/// What a sender does with a policy (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Deliver only to matching MX hosts with a valid certificate; otherwise defer.
    Enforce,
    /// Report failures (TLS-RPT) but deliver as without a policy.
    Testing,
    /// As if the domain had no policy (how a domain withdraws one, §8.3).
    None,
}

impl Mode {
    /// The policy file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }

    fn parse(value: &str) -> Option<Mode> {
        match value {
            "enforce" => Some(Mode::Enforce),
            "testing" => Some(Mode::Testing),
            "none" => Some(Mode::None),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `mx` pattern: a host name, or `*.` and the parent of the one label it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MxPattern {
    /// `true` for `*.<suffix>`: matches exactly one label in front of `suffix`.
    pub wildcard: bool,
    /// Lowercase, no trailing dot, a valid host name (LDH labels of 1..=63 bytes).
    pub suffix: String,
}

impl MxPattern {
    /// Parses `host` or `*.host` (A-labels only; case-insensitive; a trailing dot is ignored).
    pub fn parse(value: &str) -> Option<MxPattern> {
        let (wildcard, host) = match value.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        is_host_name(host).then(|| MxPattern {
            wildcard,
            suffix: host.to_ascii_lowercase(),
        })
    }

    /// Whether `host` (already lowercase, no trailing dot) matches (§4.1).
    fn matches(&self, host: &str) -> bool {
        if !self.wildcard {
            return host == self.suffix;
        }
        match host.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest == self.suffix,
            None => false,
        }
    }
}

impl fmt::Display for MxPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.suffix)
    }
}

/// RFC 5321 `Domain`: dot-separated labels of letters, digits and inner hyphens.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= DOMAIN_BYTES_MAX
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= LABEL_BYTES_MAX
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// A parsed policy file (RFC 8461 §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    pub mode: Mode,
    /// At least one pattern unless `mode` is `none`; at most [`MTA_STS_MX_PATTERNS_MAX`].
    pub mx: Vec<MxPattern>,
    /// Seconds the policy may be cached from its fetch: 0..=[`MTA_STS_MAX_AGE_SECS_MAX`].
    pub max_age_secs: u32,
}

impl Policy {
    /// Parses a policy body: LF or CRLF lines of `key: value`.
    pub fn parse(body: &[u8]) -> Result<Policy, PolicyError> {
        if body.len() > MTA_STS_POLICY_BYTES_MAX {
            return Err(PolicyError::TooLarge { bytes: body.len() });
        }
        let text = std::str::from_utf8(body).map_err(|_| PolicyError::NotUtf8)?;
        let mut version = None;
        let mut mode = None;
        let mut max_age = None;
        let mut mx = Vec::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line_no = index + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw).trim_matches(is_wsp);
            if line.is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once(':')
                .filter(|(k, _)| is_field_name(k))
                .ok_or(PolicyError::Syntax { line: line_no })?;
            let value = value.trim_matches(is_wsp);
            match key {
                "version" if version.is_none() => version = Some(value == VERSION),
                "mode" if mode.is_none() => {
                    mode = Some(Mode::parse(value).ok_or(PolicyError::Mode)?)
                }
                "max_age" if max_age.is_none() => max_age = Some(parse_max_age(value)?),
                "mx" => {
                    let pattern =
                        MxPattern::parse(value).ok_or(PolicyError::MxPattern { line: line_no })?;
                    if mx.len() == MTA_STS_MX_PATTERNS_MAX {
                        return Err(PolicyError::TooManyMx);
                    }
                    if !mx.contains(&pattern) {
                        mx.push(pattern);
                    }
                }
                _ => {} // a repeated field (the first wins) or an extension: ignored
            }
        }
        match version {
            None => return Err(PolicyError::Missing { field: "version" }),
            Some(false) => return Err(PolicyError::Version),
            Some(true) => {}
        }
        let mode = mode.ok_or(PolicyError::Missing { field: "mode" })?;
        let max_age_secs = max_age.ok_or(PolicyError::Missing { field: "max_age" })?;
        if mx.is_empty() && mode != Mode::None {
            return Err(PolicyError::Missing { field: "mx" });
        }
        Ok(Policy {
            mode,
            mx,
            max_age_secs,
        })
    }

    /// Whether MX host `host` may receive mail under this policy (§4.1): case-insensitive, a
    /// trailing dot ignored; `*.example.com` matches `mx.example.com` but neither
    /// `example.com` nor `a.b.example.com`.
    pub fn matches_mx(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| p.matches(&host))
    }

    /// True in `enforce` mode: a mismatch or a certificate failure defers delivery.
    pub fn is_enforced(&self) -> bool {
        self.mode == Mode::Enforce
    }

    /// The policy in canonical file form (LF lines); [`Policy::parse`] reads it back unchanged.
    pub fn to_text(&self) -> String {
        let mut out = format!("version: {VERSION}\nmode: {}\n", self.mode);
        for p in &self.mx {
            out.push_str(&format!("mx: {p}\n"));
        }
        out.push_str(&format!("max_age: {}\n", self.max_age_secs));
        out
    }
}

/// `1*10(DIGIT)` within the RFC's maximum.
fn parse_max_age(value: &str) -> Result<u32, PolicyError> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|c| c.is_ascii_digit()) {
        return Err(PolicyError::MaxAge);
    }
    let secs: u64 = value.parse().map_err(|_| PolicyError::MaxAge)?;
    u32::try_from(secs)
        .ok()
        .filter(|s| *s <= MTA_STS_MAX_AGE_SECS_MAX)
        .ok_or(PolicyError::MaxAge)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
