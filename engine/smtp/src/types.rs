//! The public vocabulary of the crate: configuration, replies, verdicts, transactions, events.

use std::fmt;

use crate::dsn_params::{RcptDsn, Ret};
use std::net::SocketAddr;

/// Every bound the session enforces. All sizes are in bytes and include the CRLF where a line is
/// meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest command line accepted, CRLF included (RFC 5321 512 plus extension room).
    pub command_line_max_bytes: usize,
    /// Longest text line inside DATA/BDAT, CRLF included (RFC 5321 §4.5.3.1.6: 1000).
    pub text_line_max_bytes: usize,
    /// Largest message accepted (after dot-unstuffing); advertised in the EHLO SIZE keyword.
    pub message_size_max_bytes: usize,
    /// Most recipients accepted in one transaction; more get 452 4.5.3.
    pub recipients_max: usize,
    /// Bad commands tolerated; reaching this count queues 421 4.7.0 and closes.
    pub errors_max: usize,
    /// Failed AUTH attempts tolerated; reaching this count queues 421 4.7.0 and closes.
    pub auth_attempts_max: usize,
    /// Unprocessed command input kept while waiting on an event; over it `wants_input()` is false.
    pub pipeline_input_max_bytes: usize,
    /// Largest header section accepted by the message checks.
    pub header_section_max_bytes: usize,
}

/// Default for [`Limits::header_section_max_bytes`], also used by [`crate::parse_headers`].
pub const HEADER_SECTION_MAX_BYTES_DEFAULT: usize = 1 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            command_line_max_bytes: 2048,
            text_line_max_bytes: 1000,
            message_size_max_bytes: 36 << 20,
            recipients_max: 1000,
            errors_max: 10,
            auth_attempts_max: 3,
            pipeline_input_max_bytes: 64 << 10,
            header_section_max_bytes: HEADER_SECTION_MAX_BYTES_DEFAULT,
        }
    }
}

/// Server-wide settings shared (behind an `Arc`) by every session of a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Our name: used in the greeting, the EHLO reply and the Received header.
    pub hostname: String,
    /// The bounds every session enforces.
    pub limits: Limits,
    /// A TLS acceptor is configured (always true in the engine): STARTTLS is advertised.
    pub starttls_available: bool,
    /// AUTH is offered before STARTTLS (loopback in development mode only). Ignored when
    /// `tls_required` is set.
    pub auth_without_tls: bool,
    /// Any credentials exist: AUTH is advertised and accepted.
    pub auth_enabled: bool,
    /// Submission (RFC 6409, RFC 8314): AUTH and MAIL need TLS first (STARTTLS, or implicit
    /// TLS from the connect); before it they get `530 5.7.0 Must issue a STARTTLS command
    /// first` and AUTH is not advertised, whatever `auth_without_tls` says.
    pub tls_required: bool,
    /// Submission: MAIL needs a successful AUTH first (`530 5.7.0 Authentication required`,
    /// RFC 4954 §6). The core knows no trusted networks, so none bypasses it.
    pub auth_required: bool,
}

/// What we know of the peer when the connection is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The client's address.
    pub addr: SocketAddr,
    /// The connection is already under TLS (implicit TLS, or after STARTTLS).
    pub tls: bool,
}

/// A reply with an enhanced status code (RFC 2034); `text` has no CRLF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code, 200..=599.
    pub code: u16,
    /// Class, subject, detail (class matches the first digit of `code`).
    pub enhanced: Option<(u8, u16, u16)>,
    /// Human text, one line, no CR or LF (any are replaced by spaces when written).
    pub text: String,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// Appends the wire form ("550 5.1.1 text\r\n") to `out`. The code is clamped to 200..=599
    /// and CR/LF in the text become spaces so a caller's reply can never break the framing.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let code = self.code.clamp(200, 599);
        push_u64(out, u64::from(code));
        out.push(b' ');
        if let Some((class, subject, detail)) = self.enhanced {
            push_u64(out, u64::from(class));
            out.push(b'.');
            push_u64(out, u64::from(subject));
            out.push(b'.');
            push_u64(out, u64::from(detail));
            out.push(b' ');
        }
        out.extend(
            self.text
                .bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wire = Vec::with_capacity(self.text.len() + 16);
        self.write_to(&mut wire);
        f.write_str(String::from_utf8_lossy(&wire).trim_end())
    }
}

/// Appends the decimal form of `n` without allocating.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The driver's answer to [`Event::Mail`] and [`Event::Rcpt`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The machine writes its own 250 reply.
    Accept,
    /// The reply is written as given.
    Reject(Reply),
}

/// The driver's answer to [`Event::Message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataVerdict {
    /// The message is durable: "250 2.0.0 Ok: queued as <id>".
    Accept { queue_id: String },
    /// The reply is written as given.
    Reject(Reply),
}

/// The MAIL BODY= parameter (RFC 6152, RFC 3030).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Body {
    /// No BODY parameter, or BODY=7BIT.
    #[default]
    SevenBit,
    /// BODY=8BITMIME.
    EightBitMime,
    /// BODY=BINARYMIME: the message must come by BDAT.
    BinaryMime,
}

/// The parameters of MAIL FROM we understand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// SIZE= declared by the client (RFC 1870), at most `message_size_max_bytes`.
    pub size: Option<u64>,
    /// BODY= (RFC 6152 / RFC 3030).
    pub body: Body,
    /// SMTPUTF8 was given (RFC 6531): addresses may be UTF-8.
    pub smtputf8: bool,
    /// RET= (RFC 3461 §4.3): what a failure DSN returns; `None` when not given.
    pub ret: Option<Ret>,
    /// ENVID= (RFC 3461 §4.4), xtext-decoded: printable ASCII, at most `ENVID_MAX_BYTES`.
    pub envid: Option<String>,
}

/// A complete mail transaction, handed to the driver in [`Event::Message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The EHLO/HELO argument.
    pub helo: String,
    /// The reverse path, "" for the null reverse-path.
    pub mail_from: String,
    /// The MAIL FROM parameters.
    pub params: MailParams,
    /// Accepted recipients, in order, as "local@domain"; never empty, at most `recipients_max`.
    pub recipients: Vec<String>,
    /// The recipients' DSN parameters (NOTIFY, ORCPT), index for index with `recipients`; empty
    /// (no allocation) when no recipient gave any, which is nearly always.
    pub rcpt_dsn: Vec<RcptDsn>,
    /// The message as received (unstuffed), CRLF line ends, at most `message_size_max_bytes`.
    pub data: Vec<u8>,
    /// The identity from a successful AUTH.
    pub authenticated_as: Option<String>,
    /// The session is under TLS.
    pub tls: bool,
}

/// What the session needs the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The 220 for STARTTLS is in the output. Flush it, handshake, then call `tls_established()`
    /// (or drop the session). Any plaintext pipelined after STARTTLS has been discarded.
    StartTls,
    /// Verify credentials, then call `auth_result(Some(identity))` or `auth_result(None)`.
    Auth { username: String, password: String },
    /// Syntax-checked MAIL FROM; answer with `mail_verdict(..)`.
    Mail {
        from: String,
        params: MailParams,
        authenticated_as: Option<String>,
    },
    /// Syntax-checked RCPT TO; answer with `rcpt_verdict(..)`.
    Rcpt { to: String },
    /// A complete message that passed the protocol checks (strict CRLF, line length, size).
    /// Spool it, then answer with `data_verdict(..)`.
    Message(Transaction),
    /// Flush the output, then close the connection (after QUIT, or a fatal 421).
    Close,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_written_on_one_line() {
        let reply = Reply::new(550, (5, 7, 1), "no\r\nMAIL FROM:<x>");
        let mut wire = Vec::new();
        reply.write_to(&mut wire);
        assert_eq!(wire, b"550 5.7.1 no  MAIL FROM:<x>\r\n");
        assert_eq!(reply.to_string(), "550 5.7.1 no  MAIL FROM:<x>");
        assert!(!reply.is_positive());
        assert!(Reply::new(354, (2, 0, 0), "go").is_positive());
        let odd = Reply {
            code: 9999,
            enhanced: None,
            text: String::new(),
        };
        assert_eq!(odd.to_string(), "599");
        let mut n = Vec::new();
        push_u64(&mut n, u64::MAX);
        assert_eq!(n, u64::MAX.to_string().as_bytes());
    }
}
