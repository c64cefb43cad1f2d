//! Pure ESMTP server state machine and message checks: bytes in, replies and events out, no I/O.
//!
//! # What this crate owns
//!
//! [`Session`] is the server side of one SMTP connection (RFC 5321 with SIZE, PIPELINING,
//! 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING, DSN, STARTTLS and AUTH PLAIN/LOGIN). Like
//! rustls, it never touches a socket: the driver (the engine's glommio task, a test, a fuzzer)
//! feeds it bytes, writes out what [`Session::output`] holds, and answers the [`Event`]s that need
//! a decision (MAIL, RCPT, AUTH, a complete message, STARTTLS):
//!
//! ```
//! use petrel_smtp::{Event, Limits, PeerInfo, ServerConfig, Session, Verdict, DataVerdict};
//! use std::sync::Arc;
//! let config = Arc::new(ServerConfig { hostname: "mx.example".into(), limits: Limits::default(),
//!     starttls_available: false, auth_without_tls: false, auth_enabled: false,
//!     tls_required: false, auth_required: false });
//! let peer = PeerInfo { addr: "127.0.0.1:40000".parse().unwrap(), tls: false };
//! let mut session = Session::new(config, peer);
//! session.feed(b"EHLO client\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n\
//!     DATA\r\nSubject: hi\r\n\r\nHello\r\n.\r\nQUIT\r\n");
//! while let Some(event) = session.next_event() {
//!     match event {
//!         Event::Mail { .. } => session.mail_verdict(Verdict::Accept),
//!         Event::Rcpt { .. } => session.rcpt_verdict(Verdict::Accept),
//!         Event::Message(_txn) => session.data_verdict(DataVerdict::Accept { queue_id: "Q1".into() }),
//!         Event::Close => break,
//!         _ => {}
//!     }
//! }
//! assert!(String::from_utf8_lossy(session.output()).contains("250 2.0.0 Ok: queued as Q1"));
//! assert!(session.is_closed());
//! ```
//!
//! The message checks ([`prepare_message`], [`parse_headers`]) validate the RFC 5322 header
//! section and add the trace header (and, for submissions, Message-ID and Date); [`prepare`]
//! also returns the tenant's labels ([`petrel_headers`]: `X-Petrel-Tag`, `X-Petrel-Metadata`,
//! removed from the message), its Message-ID and its From domain.
//!
//! # Trade-offs
//!
//! - **Strictness over leniency.** Lines end in CRLF, full stop: a bare CR or LF in a command is
//!   a 500, and in a message it poisons the message, which is refused at its real end. The only
//!   end of DATA is CRLF "." CRLF. This closes the 2023 SMTP smuggling attacks at the cost of
//!   refusing the rare broken client. After STARTTLS, buffered plaintext is discarded.
//! - **Answers are synchronous, processing is not.** At most one event is outstanding; while it
//!   waits, input is buffered (bounded: `wants_input()` tells the driver to stop reading). This
//!   keeps replies in command order under pipelining without a reply queue.
//! - **Few allocations.** Command lines are parsed in place from the input (often straight from
//!   the caller's slice); replies are static byte strings; the message buffer is reserved from
//!   SIZE= and moved, not copied, into the [`Transaction`]. Strings are only made for what leaves
//!   the crate (addresses, credentials).
//! - **Every bound is named** in [`Limits`]; the only implicit ones are RFC maxima for address
//!   parts (local part 64, domain 255 bytes).
//! - 3xx replies (354, 334) carry no enhanced code (RFC 2034 defines them for 2xx/4xx/5xx), nor do
//!   the greeting and the EHLO/HELO reply.
// No unwrap outside tests: propagate a typed error, or `expect` an invariant checked right there.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod auth;
mod command;
pub mod dsn_params;
mod fuzz_driver;
mod message;
pub mod petrel_headers;
mod receive;
mod session;
mod types;

pub use dsn_params::{Notify, Orcpt, RcptDsn, Ret};
#[doc(hidden)]
pub use fuzz_driver::{check_replies, drive_session};
pub use message::{
    address_domain, parse_headers, parse_headers_bounded, prepare, prepare_message,
    prepare_message_bounded, CheckError, Prepared, TraceInfo, RFC822_MESSAGE_ID_BYTES_MAX,
};
pub use petrel_headers::{PetrelHeaderError, PetrelHeaders};
pub use session::Session;
pub use types::{
    Body, DataVerdict, Event, Limits, MailParams, PeerInfo, Reply, ServerConfig, Transaction,
    Verdict, HEADER_SECTION_MAX_BYTES_DEFAULT,
};
