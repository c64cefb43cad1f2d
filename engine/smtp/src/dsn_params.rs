//! The DSN extension's parameters (RFC 3461 §4): `RET` and `ENVID` on MAIL, `NOTIFY` and
//! `ORCPT` on RCPT, and the xtext encoding (§4) their values travel in.
//!
//! Values are decoded here, once: the rest of Petrel keeps the decoded text (what a DSN
//! prints) and encodes it again only to relay it. A decoded value must be printable US-ASCII
//! (§4.4 for ENVID; for ORCPT, since it is printed into `Original-Recipient:`), so no CR or LF
//! from a client can reach a DSN's header lines.

/// RFC 3461 §4.4: longest ENVID value (as sent, xtext-encoded).
pub const ENVID_MAX_BYTES: usize = 100;
/// RFC 3461 §4.2: longest ORCPT value (as sent: address type, `;`, xtext).
pub const ORCPT_MAX_BYTES: usize = 500;
/// Longest ORCPT address type (an atom, e.g. `rfc822`; RFC 3461 names no bound, this keeps
/// what is stored small).
pub const ORCPT_ADDR_TYPE_MAX_BYTES: usize = 32;

/// `RET=`: what of the message a failure DSN returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Its header section only.
    Hdrs,
}

/// `NOTIFY=`: which DSNs the sender wants for one recipient. All false is `NEVER`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    /// `NOTIFY=NEVER`.
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    /// The parameter's wire value (`NEVER`, or the conditions joined by commas).
    pub fn wire(self) -> String {
        if self == Notify::NEVER {
            return "NEVER".into();
        }
        let parts = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        let names: Vec<&str> = parts.iter().filter(|p| p.0).map(|p| p.1).collect();
        names.join(",")
    }
}

/// `ORCPT=`: the recipient's original address, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orcpt {
    /// The address type as sent (`rfc822` nearly always).
    pub addr_type: String,
    /// The address, xtext-decoded; printable US-ASCII.
    pub address: String,
}

/// The DSN parameters of one recipient (RCPT TO). The default is "none given".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptDsn {
    /// `None`: no NOTIFY (the default behaviour: failure DSNs, as without the extension).
    pub notify: Option<Notify>,
    pub orcpt: Option<Orcpt>,
}

impl RcptDsn {
    /// Neither parameter was given.
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }
}

/// Why a DSN parameter was refused; each is one `501 5.5.4` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DsnParamError {
    Repeated(DsnParam),
    Ret,
    Envid,
    Notify,
    Orcpt,
}

impl DsnParamError {
    pub(crate) fn reply(self) -> &'static str {
        match self {
            DsnParamError::Repeated(DsnParam::Ret) => "501 5.5.4 Error: RET given twice\r\n",
            DsnParamError::Repeated(DsnParam::Envid) => "501 5.5.4 Error: ENVID given twice\r\n",
            DsnParamError::Repeated(DsnParam::Notify) => {
                "501 5.5.4 Error: NOTIFY given twice\r\n"
            }
            DsnParamError::Repeated(DsnParam::Orcpt) => "501 5.5.4 Error: ORCPT given twice\r\n",
            DsnParamError::Ret => "501 5.5.4 Error: RET must be FULL or HDRS\r\n",
            DsnParamError::Envid => {
                "501 5.5.4 Error: ENVID must be xtext of printable ASCII, at most 100 characters\r\n"
            }
            DsnParamError::Notify => {
                "501 5.5.4 Error: NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY\r\n"
            }
            DsnParamError::Orcpt => {
                "501 5.5.4 Error: ORCPT must be addr-type;xtext of printable ASCII, at most 500 characters\r\n"
            }
        }
    }
}

/// Which DSN parameter (for "given twice").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DsnParam {
    Ret,
    Envid,
    Notify,
    Orcpt,
}

/// `RET=` value.
pub(crate) fn parse_ret(value: &[u8]) -> Result<Ret, DsnParamError> {
    if value.eq_ignore_ascii_case(b"FULL") {
        Ok(Ret::Full)
    } else if value.eq_ignore_ascii_case(b"HDRS") {
        Ok(Ret::Hdrs)
    } else {
        Err(DsnParamError::Ret)
    }
}

/// `ENVID=` value, decoded.
pub(crate) fn parse_envid(value: &[u8]) -> Result<String, DsnParamError> {
    if value.is_empty() || value.len() > ENVID_MAX_BYTES {
        return Err(DsnParamError::Envid);
    }
    xtext_decode(value).ok_or(DsnParamError::Envid)
}

/// `NOTIFY=` value: `NEVER` alone, or each of SUCCESS, FAILURE, DELAY at most once.
pub(crate) fn parse_notify(value: &[u8]) -> Result<Notify, DsnParamError> {
    if value.eq_ignore_ascii_case(b"NEVER") {
        return Ok(Notify::NEVER);
    }
    let mut n = Notify::NEVER;
    for word in value.split(|&b| b == b',') {
        let flag = if word.eq_ignore_ascii_case(b"SUCCESS") {
            &mut n.success
        } else if word.eq_ignore_ascii_case(b"FAILURE") {
            &mut n.failure
        } else if word.eq_ignore_ascii_case(b"DELAY") {
            &mut n.delay
        } else {
            return Err(DsnParamError::Notify);
        };
        if *flag {
            return Err(DsnParamError::Notify);
        }
        *flag = true;
    }
    Ok(n)
}

/// `ORCPT=` value: `addr-type ";" xtext`, the address decoded.
pub(crate) fn parse_orcpt(value: &[u8]) -> Result<Orcpt, DsnParamError> {
    if value.len() > ORCPT_MAX_BYTES {
        return Err(DsnParamError::Orcpt);
    }
    let semi = memchr::memchr(b';', value).ok_or(DsnParamError::Orcpt)?;
    let (addr_type, encoded) = (&value[..semi], &value[semi + 1..]);
    let atom_ok = !addr_type.is_empty()
        && addr_type.len() <= ORCPT_ADDR_TYPE_MAX_BYTES
        && addr_type
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b));
    if !atom_ok || encoded.is_empty() {
        return Err(DsnParamError::Orcpt);
    }
    let address = xtext_decode(encoded).ok_or(DsnParamError::Orcpt)?;
    Ok(Orcpt {
        addr_type: String::from_utf8_lossy(addr_type).into_owned(),
        address,
    })
}

/// Decodes xtext (RFC 3461 §4: `xchar` is `!`..`~` but `+` and `=`; `+XX` is a byte in two
/// upper-case hex digits). `None` for malformed xtext, or a decoded byte outside printable
/// US-ASCII (space included).
pub fn xtext_decode(xtext: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(xtext.len());
    let mut i = 0;
    while i < xtext.len() {
        let b = xtext[i];
        let decoded = match b {
            b'+' => {
                let hi = upper_hex(*xtext.get(i + 1)?)?;
                let lo = upper_hex(*xtext.get(i + 2)?)?;
                i += 3;
                (hi << 4) | lo
            }
            b'!'..=b'~' if b != b'=' => {
                i += 1;
                b
            }
            _ => return None,
        };
        if !(b' '..=b'~').contains(&decoded) {
            return None;
        }
        out.push(char::from(decoded));
    }
    Some(out)
}

/// Encodes text as xtext: `+`, `=`, and anything outside `!`..`~` as `+XX`.
pub fn xtext_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push('+');
            out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn upper_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_decodes_hexchars_and_refuses_malformed() {
        assert_eq!(xtext_decode(b"a+2Bb@x.y").as_deref(), Some("a+b@x.y"));
        assert_eq!(xtext_decode(b"+3D+20x").as_deref(), Some("= x"));
        assert_eq!(xtext_decode(b"QQ+2b"), None, "lower-case hex");
        assert_eq!(xtext_decode(b"ab+2"), None, "truncated hexchar");
        assert_eq!(xtext_decode(b"a=b"), None, "'=' must be encoded");
        assert_eq!(xtext_decode(b"a b"), None, "space must be encoded");
        assert_eq!(xtext_decode(b"a+0D+0Ab"), None, "CR LF never decode");
        assert_eq!(xtext_decode(b"+C3+A9"), None, "not ASCII");
        assert_eq!(xtext_decode(b"").as_deref(), Some(""));
    }

    #[test]
    fn xtext_round_trips() {
        for s in ["plain", "a+b=c d", "~!\"#", "x+2By"] {
            let e = xtext_encode(s);
            assert!(e.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'='));
            assert_eq!(xtext_decode(e.as_bytes()).as_deref(), Some(s));
        }
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
    }

    #[test]
    fn notify_values() {
        assert_eq!(parse_notify(b"never"), Ok(Notify::NEVER));
        assert_eq!(
            parse_notify(b"SUCCESS,delay"),
            Ok(Notify {
                success: true,
                failure: false,
                delay: true
            })
        );
        for bad in [
            &b""[..],
            b"NEVER,SUCCESS",
            b"SUCCESS,SUCCESS",
            b"SOMETIMES",
            b"FAILURE,",
        ] {
            assert_eq!(parse_notify(bad), Err(DsnParamError::Notify), "{bad:?}");
        }
        assert_eq!(
            parse_notify(b"FAILURE,SUCCESS")
                .map(Notify::wire)
                .as_deref(),
            Ok("SUCCESS,FAILURE")
        );
        assert_eq!(Notify::NEVER.wire(), "NEVER");
    }

    #[test]
    fn orcpt_and_envid_values() {
        assert_eq!(
            parse_orcpt(b"rfc822;bob+2Bx@example.org"),
            Ok(Orcpt {
                addr_type: "rfc822".into(),
                address: "bob+x@example.org".into()
            })
        );
        assert_eq!(parse_orcpt(b"bob@example.org"), Err(DsnParamError::Orcpt));
        assert_eq!(parse_orcpt(b";bob@example.org"), Err(DsnParamError::Orcpt));
        assert_eq!(parse_orcpt(b"rfc822;"), Err(DsnParamError::Orcpt));
        assert_eq!(parse_orcpt(b"rfc 822;a@b"), Err(DsnParamError::Orcpt));
        let long = format!("rfc822;{}@b.c", "a".repeat(ORCPT_MAX_BYTES));
        assert_eq!(parse_orcpt(long.as_bytes()), Err(DsnParamError::Orcpt));
        assert_eq!(parse_envid(b"QQ+2B1").as_deref(), Ok("QQ+1"));
        assert_eq!(
            parse_envid(&[b'x'; ENVID_MAX_BYTES]).map(|s| s.len()),
            Ok(100)
        );
        assert_eq!(
            parse_envid(&[b'x'; ENVID_MAX_BYTES + 1]),
            Err(DsnParamError::Envid)
        );
        assert_eq!(parse_envid(b""), Err(DsnParamError::Envid));
        assert_eq!(parse_ret(b"hdrs"), Ok(Ret::Hdrs));
        assert_eq!(parse_ret(b"ALL"), Err(DsnParamError::Ret));
    }
}
