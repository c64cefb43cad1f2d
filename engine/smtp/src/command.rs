//! Command line syntax: verbs, paths (RFC 5321 §4.1.2, RFC 6531) and MAIL/RCPT parameters.
//!
//! Everything here borrows from the input line; nothing allocates until an address is accepted.

use crate::dsn_params::{self, DsnParam, DsnParamError, RcptDsn};
use crate::types::{Body, MailParams};

/// RFC 5321 §4.5.3.1.1: longest local part.
const LOCAL_PART_MAX_BYTES: usize = 64;
/// RFC 5321 §4.5.3.1.2: longest domain.
const DOMAIN_MAX_BYTES: usize = 255;
/// RFC 1035: longest DNS label.
const LABEL_MAX_BYTES: usize = 63;
/// Longest BDAT chunk size field (u64 has 20 digits).
const NUMBER_MAX_DIGITS: usize = 20;

/// One parsed command line (CRLF removed).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    Ehlo(&'a [u8]),
    Helo(&'a [u8]),
    /// `path` is what lies between the angle brackets; `params` the rest, trimmed.
    Mail {
        path: &'a [u8],
        params: &'a [u8],
    },
    Rcpt {
        path: &'a [u8],
        params: &'a [u8],
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy,
    Expn,
    StartTls,
    Auth {
        mechanism: &'a [u8],
        initial: Option<&'a [u8]>,
    },
}

/// Why a command line was refused; each maps to one reply line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyntaxError {
    Unrecognized,
    /// "501 5.5.4 Syntax: <usage>" for the given verb.
    Usage(&'static str),
}

impl SyntaxError {
    pub(crate) fn reply(self) -> &'static str {
        match self {
            SyntaxError::Unrecognized => "500 5.5.2 Error: command not recognized\r\n",
            SyntaxError::Usage(reply) => reply,
        }
    }
}

/// Parses a command line (without its CRLF).
pub(crate) fn parse(line: &[u8]) -> Result<Command<'_>, SyntaxError> {
    let (verb, rest) = split_word(line);
    let rest = trim(rest);
    let usage = SyntaxError::Usage;
    match verb.len() {
        4 if verb.eq_ignore_ascii_case(b"EHLO") => one_word(rest)
            .map(Command::Ehlo)
            .ok_or(usage("501 5.5.4 Syntax: EHLO hostname\r\n")),
        4 if verb.eq_ignore_ascii_case(b"HELO") => one_word(rest)
            .map(Command::Helo)
            .ok_or(usage("501 5.5.4 Syntax: HELO hostname\r\n")),
        4 if verb.eq_ignore_ascii_case(b"MAIL") => {
            let (path, params) = path_after(rest, b"FROM:")
                .ok_or(usage("501 5.5.4 Syntax: MAIL FROM:<address>\r\n"))?;
            Ok(Command::Mail { path, params })
        }
        4 if verb.eq_ignore_ascii_case(b"RCPT") => {
            let (path, params) =
                path_after(rest, b"TO:").ok_or(usage("501 5.5.4 Syntax: RCPT TO:<address>\r\n"))?;
            Ok(Command::Rcpt { path, params })
        }
        4 if verb.eq_ignore_ascii_case(b"DATA") => {
            no_args(rest, Command::Data, "501 5.5.4 Syntax: DATA\r\n")
        }
        4 if verb.eq_ignore_ascii_case(b"BDAT") => {
            parse_bdat(rest).ok_or(usage("501 5.5.4 Syntax: BDAT size [LAST]\r\n"))
        }
        4 if verb.eq_ignore_ascii_case(b"RSET") => {
            no_args(rest, Command::Rset, "501 5.5.4 Syntax: RSET\r\n")
        }
        4 if verb.eq_ignore_ascii_case(b"NOOP") => Ok(Command::Noop),
        4 if verb.eq_ignore_ascii_case(b"QUIT") => {
            no_args(rest, Command::Quit, "501 5.5.4 Syntax: QUIT\r\n")
        }
        4 if verb.eq_ignore_ascii_case(b"HELP") => Ok(Command::Help),
        4 if verb.eq_ignore_ascii_case(b"VRFY") => {
            if rest.is_empty() {
                Err(usage("501 5.5.4 Syntax: VRFY address\r\n"))
            } else {
                Ok(Command::Vrfy)
            }
        }
        4 if verb.eq_ignore_ascii_case(b"EXPN") => Ok(Command::Expn),
        4 if verb.eq_ignore_ascii_case(b"AUTH") => {
            let (mechanism, initial) = split_word(rest);
            let initial = trim(initial);
            if mechanism.is_empty() || split_word(initial).1 != b"" {
                return Err(usage(
                    "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n",
                ));
            }
            let initial = (!initial.is_empty()).then_some(initial);
            Ok(Command::Auth { mechanism, initial })
        }
        8 if verb.eq_ignore_ascii_case(b"STARTTLS") => {
            no_args(rest, Command::StartTls, "501 5.5.4 Syntax: STARTTLS\r\n")
        }
        _ => Err(SyntaxError::Unrecognized),
    }
}

fn no_args<'a>(
    rest: &[u8],
    command: Command<'a>,
    usage: &'static str,
) -> Result<Command<'a>, SyntaxError> {
    if rest.is_empty() {
        Ok(command)
    } else {
        Err(SyntaxError::Usage(usage))
    }
}

fn parse_bdat(rest: &[u8]) -> Option<Command<'static>> {
    let (number, tail) = split_word(rest);
    let size = parse_number(number)?;
    let tail = trim(tail);
    let last = if tail.is_empty() {
        false
    } else if tail.eq_ignore_ascii_case(b"LAST") {
        true
    } else {
        return None;
    };
    Some(Command::Bdat { size, last })
}

/// Decimal digits only, at most 20, no overflow.
pub(crate) fn parse_number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > NUMBER_MAX_DIGITS {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// "FROM:<path> params" (a space after the colon is tolerated). Returns (path, params).
fn path_after<'a>(rest: &'a [u8], keyword: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    if rest.len() < keyword.len() || !rest[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return None;
    }
    let mut after = &rest[keyword.len()..];
    if let [b' ', tail @ ..] = after {
        after = tail;
    }
    let [b'<', inner @ ..] = after else {
        return None;
    };
    let close = closing_bracket(inner)?;
    let params = &inner[close + 1..];
    if !params.is_empty() && params[0] != b' ' {
        return None;
    }
    Some((&inner[..close], trim(params)))
}

/// Index of the '>' closing a path, skipping quoted strings (which may contain '>').
fn closing_bracket(inner: &[u8]) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in inner.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == b'>' && !quoted {
            return Some(i);
        }
    }
    None
}

fn split_word(line: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b' ', line) {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, b""),
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', tail @ ..] = s {
        s = tail;
    }
    while let [head @ .., b' ' | b'\t'] = s {
        s = head;
    }
    s
}

/// A single word of visible characters (EHLO/HELO argument).
fn one_word(rest: &[u8]) -> Option<&[u8]> {
    let ok = !rest.is_empty() && rest.iter().all(|&b| b > b' ' && b != 0x7f);
    ok.then_some(rest)
}

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PathError {
    /// 501 5.1.7 / 501 5.1.3.
    Syntax,
    /// 553 5.6.7: non-ASCII without SMTPUTF8.
    NonAscii,
}

/// Parses a path (between the brackets) into "local@domain". `allow_null` accepts "<>" (MAIL);
/// `allow_postmaster` accepts a bare "postmaster" (RCPT, RFC 5321 §4.1.1.3).
pub(crate) fn parse_path(
    path: &[u8],
    smtputf8: bool,
    allow_null: bool,
    allow_postmaster: bool,
) -> Result<String, PathError> {
    if !path.is_ascii() {
        if !smtputf8 {
            return Err(PathError::NonAscii);
        }
        std::str::from_utf8(path).map_err(|_| PathError::Syntax)?;
    }
    let mailbox = strip_source_route(path)?;
    if mailbox.is_empty() {
        return if allow_null && path.is_empty() {
            Ok(String::new())
        } else {
            Err(PathError::Syntax)
        };
    }
    if allow_postmaster && mailbox.eq_ignore_ascii_case(b"postmaster") {
        return Ok(String::from_utf8_lossy(mailbox).into_owned());
    }
    let at = local_part_end(mailbox).ok_or(PathError::Syntax)?;
    if mailbox.get(at) != Some(&b'@') || !valid_domain(&mailbox[at + 1..], smtputf8) {
        return Err(PathError::Syntax);
    }
    // Checked above: ASCII, or valid UTF-8 when SMTPUTF8 was given.
    std::str::from_utf8(mailbox)
        .map(str::to_owned)
        .map_err(|_| PathError::Syntax)
}

/// RFC 5321 A-d-l: "@a,@b:mailbox" must be accepted and the route ignored.
fn strip_source_route(path: &[u8]) -> Result<&[u8], PathError> {
    if path.first() != Some(&b'@') {
        return Ok(path);
    }
    let colon = memchr::memchr(b':', path).ok_or(PathError::Syntax)?;
    for hop in path[..colon].split(|&b| b == b',') {
        match hop {
            [b'@', domain @ ..] if valid_domain(domain, true) => {}
            _ => return Err(PathError::Syntax),
        }
    }
    Ok(&path[colon + 1..])
}

/// Length of a valid local part (dot-string or quoted-string) at the start of `mailbox`.
fn local_part_end(mailbox: &[u8]) -> Option<usize> {
    let end = if mailbox.first() == Some(&b'"') {
        let mut i = 1;
        loop {
            match *mailbox.get(i)? {
                b'"' => break i + 1,
                b'\\' => {
                    let escaped = *mailbox.get(i + 1)?;
                    if !(b' '..=b'~').contains(&escaped) && escaped < 0x80 {
                        return None;
                    }
                    i += 2;
                }
                b if b == b' ' || b == b'!' || (b'#'..=b'~').contains(&b) || b >= 0x80 => i += 1,
                _ => return None,
            }
        }
    } else {
        let end = memchr::memchr(b'@', mailbox)?;
        let local = &mailbox[..end];
        let atoms_ok = local
            .split(|&b| b == b'.')
            .all(|atom| !atom.is_empty() && atom.iter().all(|&b| is_atext(b)));
        if !atoms_ok {
            return None;
        }
        end
    };
    (end <= LOCAL_PART_MAX_BYTES).then_some(end)
}

/// RFC 5322 atext, plus UTF-8 bytes (only reachable when SMTPUTF8 allowed them).
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

/// A domain name (LDH labels, or U-labels under SMTPUTF8) or an address literal.
pub(crate) fn valid_domain(domain: &[u8], smtputf8: bool) -> bool {
    if domain.is_empty() || domain.len() > DOMAIN_MAX_BYTES {
        return false;
    }
    if let [b'[', inner @ .., b']'] = domain {
        return valid_address_literal(inner);
    }
    domain.split(|&b| b == b'.').all(|label| {
        !label.is_empty()
            && label.len() <= LABEL_MAX_BYTES
            && label[0] != b'-'
            && label[label.len() - 1] != b'-'
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || (smtputf8 && b >= 0x80))
    })
}

fn valid_address_literal(inner: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(inner) else {
        return false;
    };
    if let Some(v6) = text
        .strip_prefix("IPv6:")
        .or_else(|| text.strip_prefix("ipv6:"))
    {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if text.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    // General-address-literal: Standardized-tag ":" 1*dcontent.
    match text.split_once(':') {
        Some((tag, content)) => {
            !tag.is_empty()
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !content.is_empty()
                && content
                    .bytes()
                    .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b))
        }
        None => false,
    }
}

/// Why MAIL parameters were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParamError {
    /// 555 5.5.4.
    Unsupported,
    /// 501 5.5.4.
    Syntax,
    /// 501 5.5.4 with the DSN parameter's own reason (RFC 3461).
    Dsn(DsnParamError),
}

impl From<DsnParamError> for ParamError {
    fn from(e: DsnParamError) -> ParamError {
        ParamError::Dsn(e)
    }
}

/// MAIL FROM parameters: SIZE, BODY, SMTPUTF8, AUTH (RFC 4954 §5, accepted and ignored), and
/// the DSN extension's RET and ENVID (RFC 3461 §4.3, §4.4).
pub(crate) fn parse_mail_params(params: &[u8]) -> Result<MailParams, ParamError> {
    let mut out = MailParams::default();
    let (mut seen_size, mut seen_body) = (false, false);
    for param in params.split(|&b| b == b' ').filter(|p| !p.is_empty()) {
        let (key, value) = match memchr::memchr(b'=', param) {
            Some(i) => (&param[..i], Some(&param[i + 1..])),
            None => (param, None),
        };
        if key.eq_ignore_ascii_case(b"SIZE") && !seen_size {
            seen_size = true;
            out.size = Some(value.and_then(parse_number).ok_or(ParamError::Syntax)?);
        } else if key.eq_ignore_ascii_case(b"BODY") && !seen_body {
            seen_body = true;
            out.body = match value.ok_or(ParamError::Syntax)? {
                v if v.eq_ignore_ascii_case(b"7BIT") => Body::SevenBit,
                v if v.eq_ignore_ascii_case(b"8BITMIME") => Body::EightBitMime,
                v if v.eq_ignore_ascii_case(b"BINARYMIME") => Body::BinaryMime,
                _ => return Err(ParamError::Syntax),
            };
        } else if key.eq_ignore_ascii_case(b"SMTPUTF8") && value.is_none() && !out.smtputf8 {
            out.smtputf8 = true;
        } else if key.eq_ignore_ascii_case(b"AUTH") && value.is_some_and(|v| !v.is_empty()) {
        } else if key.eq_ignore_ascii_case(b"RET") {
            if out.ret.is_some() {
                return Err(DsnParamError::Repeated(DsnParam::Ret).into());
            }
            out.ret = Some(dsn_params::parse_ret(value.unwrap_or_default())?);
        } else if key.eq_ignore_ascii_case(b"ENVID") {
            if out.envid.is_some() {
                return Err(DsnParamError::Repeated(DsnParam::Envid).into());
            }
            out.envid = Some(dsn_params::parse_envid(value.unwrap_or_default())?);
        } else if [&b"SIZE"[..], b"BODY", b"SMTPUTF8", b"AUTH"]
            .iter()
            .any(|known| key.eq_ignore_ascii_case(known))
        {
            return Err(ParamError::Syntax);
        } else {
            return Err(ParamError::Unsupported);
        }
    }
    Ok(out)
}

/// RCPT TO parameters: the DSN extension's NOTIFY and ORCPT (RFC 3461 §4.1, §4.2); any other
/// is unsupported.
pub(crate) fn parse_rcpt_params(params: &[u8]) -> Result<RcptDsn, ParamError> {
    let mut out = RcptDsn::default();
    for param in params.split(|&b| b == b' ').filter(|p| !p.is_empty()) {
        let (key, value) = match memchr::memchr(b'=', param) {
            Some(i) => (&param[..i], &param[i + 1..]),
            None => (param, &b""[..]),
        };
        if key.eq_ignore_ascii_case(b"NOTIFY") {
            if out.notify.is_some() {
                return Err(DsnParamError::Repeated(DsnParam::Notify).into());
            }
            out.notify = Some(dsn_params::parse_notify(value)?);
        } else if key.eq_ignore_ascii_case(b"ORCPT") {
            if out.orcpt.is_some() {
                return Err(DsnParamError::Repeated(DsnParam::Orcpt).into());
            }
            out.orcpt = Some(dsn_params::parse_orcpt(value)?);
        } else {
            return Err(ParamError::Unsupported);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_case_insensitive_and_arguments_checked() {
        assert_eq!(parse(b"ehlo x.y"), Ok(Command::Ehlo(b"x.y")));
        assert_eq!(parse(b"QuIt"), Ok(Command::Quit));
        assert_eq!(
            parse(b"BDAT 10 last"),
            Ok(Command::Bdat {
                size: 10,
                last: true
            })
        );
        assert!(parse(b"BDAT 99999999999999999999999").is_err(), "overflow");
        assert!(parse(b"BDAT 1 LAST x").is_err());
        assert!(parse(b"EHLO two words").is_err());
        assert_eq!(parse(b"MAILFROM:<a@b>"), Err(SyntaxError::Unrecognized));
        assert_eq!(
            parse(b"AUTH PLAIN abc="),
            Ok(Command::Auth {
                mechanism: b"PLAIN",
                initial: Some(b"abc=")
            })
        );
        assert!(parse(b"AUTH PLAIN a b").is_err());
    }

    #[test]
    fn paths_and_quoted_brackets() {
        assert_eq!(
            parse(b"MAIL FROM:<\"a>b\"@c.d> SIZE=5"),
            Ok(Command::Mail {
                path: b"\"a>b\"@c.d",
                params: b"SIZE=5"
            })
        );
        assert_eq!(
            parse_path(b"\"a>b\"@c.d", false, false, false),
            Ok("\"a>b\"@c.d".into())
        );
        assert_eq!(
            parse_path(b"\"a\\\"b\"@c.d", false, false, false),
            Ok("\"a\\\"b\"@c.d".into())
        );
        assert_eq!(
            parse_path(b"\"ab@c.d", false, false, false),
            Err(PathError::Syntax)
        );
        assert_eq!(parse_path(b"", false, true, false), Ok(String::new()));
        assert_eq!(parse_path(b"", false, false, false), Err(PathError::Syntax));
        let long_local = format!("{}@b.c", "a".repeat(65));
        assert_eq!(
            parse_path(long_local.as_bytes(), false, false, false),
            Err(PathError::Syntax)
        );
        assert_eq!(
            parse_path(b"a@b.c\xff", true, false, false),
            Err(PathError::Syntax)
        );
        assert_eq!(
            parse_path(b"a@b_c.d", false, false, false),
            Err(PathError::Syntax)
        );
        assert_eq!(
            parse_path(b"Mixed.Case@Example.ORG", false, false, false),
            Ok("Mixed.Case@Example.ORG".into())
        );
    }

    #[test]
    fn domains_and_literals() {
        assert!(valid_domain(b"a-b.example", false));
        assert!(valid_domain(b"[10.0.0.1]", false));
        assert!(valid_domain(b"[IPv6:::1]", false));
        assert!(valid_domain(b"[x-tag:stuff]", false));
        assert!(!valid_domain(b"[10.0.0.256]", false));
        assert!(!valid_domain(b"[IPv6:zz]", false));
        assert!(!valid_domain(b"a..b", false));
        assert!(!valid_domain(&[b'a'; 64], false));
        assert!(valid_domain("b\u{fc}cher.de".as_bytes(), true));
        assert!(!valid_domain("b\u{fc}cher.de".as_bytes(), false));
    }

    #[test]
    fn mail_params() {
        let p = parse_mail_params(b"size=10 body=binarymime smtputf8").expect("valid");
        assert_eq!(
            p,
            MailParams {
                size: Some(10),
                body: Body::BinaryMime,
                smtputf8: true,
                ..MailParams::default()
            }
        );
        assert_eq!(parse_mail_params(b"SIZE=1 SIZE=2"), Err(ParamError::Syntax));
        assert_eq!(parse_mail_params(b"SMTPUTF8=yes"), Err(ParamError::Syntax));
        assert_eq!(
            parse_mail_params(b"MT-PRIORITY=1"),
            Err(ParamError::Unsupported)
        );
        assert_eq!(parse_mail_params(b"AUTH=<>"), Ok(MailParams::default()));
    }

    #[test]
    fn dsn_mail_params() {
        let p = parse_mail_params(b"RET=hdrs ENVID=QQ+2B314 SIZE=5").expect("valid");
        assert_eq!(p.ret, Some(crate::Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("QQ+314"));
        assert_eq!(
            parse_mail_params(b"RET=FULL RET=HDRS"),
            Err(ParamError::Dsn(DsnParamError::Repeated(DsnParam::Ret)))
        );
        assert_eq!(
            parse_mail_params(b"ENVID=a ENVID=b"),
            Err(ParamError::Dsn(DsnParamError::Repeated(DsnParam::Envid)))
        );
        assert_eq!(
            parse_mail_params(b"RET"),
            Err(ParamError::Dsn(DsnParamError::Ret))
        );
        assert_eq!(
            parse_mail_params(b"ENVID=a+0Db"),
            Err(ParamError::Dsn(DsnParamError::Envid))
        );
    }

    #[test]
    fn dsn_rcpt_params() {
        let r = parse_rcpt_params(b"NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@c.d").expect("valid");
        let n = r.notify.expect("notify");
        assert!(n.success && n.failure && !n.delay);
        assert_eq!(r.orcpt.expect("orcpt").address, "a+b@c.d");
        assert_eq!(parse_rcpt_params(b""), Ok(RcptDsn::default()));
        assert_eq!(
            parse_rcpt_params(b"NOTIFY=NEVER NOTIFY=NEVER"),
            Err(ParamError::Dsn(DsnParamError::Repeated(DsnParam::Notify)))
        );
        assert_eq!(
            parse_rcpt_params(b"NOTIFY=NEVER,DELAY"),
            Err(ParamError::Dsn(DsnParamError::Notify))
        );
        assert_eq!(parse_rcpt_params(b"XFOO=1"), Err(ParamError::Unsupported));
    }
}
