//! The ESMTP session: a state machine fed with bytes, producing reply bytes and [`Event`]s.
//!
//! Input is processed as far as it can go: every complete command line is answered in order
//! (RFC 2920 pipelining), until a command needs the driver (MAIL, RCPT, AUTH, a message,
//! STARTTLS). Then processing stops, the rest stays buffered, and the driver's answer resumes it.
//! When nothing is buffered, `feed` parses straight from the caller's slice and copies only an
//! incomplete trailing line.

use crate::command::{self, Command, ParamError, PathError};
use crate::dsn_params::RcptDsn;
use crate::receive::BodyReceiver;
use crate::types::{
    push_u64, Body, DataVerdict, Event, MailParams, PeerInfo, ServerConfig, Transaction, Verdict,
};
use std::sync::Arc;

/// Capacity reserved for a message body when MAIL gave no SIZE= (bounded by the size limit).
const BODY_RESERVE_DEFAULT_BYTES: usize = 16 << 10;
/// Most capacity reserved up front from a declared SIZE=: a client declaring the maximum and
/// then trickling bytes must not pin `message_size_max_bytes` per connection. Larger messages
/// grow the buffer by doubling (a handful of reallocations, never one per line).
const BODY_RESERVE_MAX_BYTES: usize = 1 << 20;
/// Unprocessed input allowed, as a multiple of `pipeline_input_max_bytes` (plus one command
/// line), before a driver that ignores `wants_input()` gets 421 and a close.
const PIPELINE_INPUT_HARD_FACTOR: usize = 2;

const OK: &str = "250 2.0.0 Ok\r\n";
const NEED_HELO: &str = "503 5.5.1 Error: send HELO/EHLO first\r\n";
const NEED_MAIL: &str = "503 5.5.1 Error: need MAIL command\r\n";
const NEED_STARTTLS: &str = "530 5.7.0 Must issue a STARTTLS command first\r\n";
const NO_RECIPIENTS: &str = "554 5.5.1 Error: no valid recipients\r\n";
const HELP: &str =
    "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY STARTTLS AUTH\r\n";
const VRFY: &str = "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n";
const EXPN: &str = "502 5.5.1 Error: EXPN not supported\r\n";

/// Which driver answer the session is waiting for. While set, input is only buffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    Mail,
    Rcpt,
    Message,
    Auth,
    /// After STARTTLS: plaintext input is discarded until `tls_established()`.
    Tls,
}

/// What the next input bytes are.
#[derive(Debug)]
enum Mode {
    Command,
    /// The rest of an over-long line, discarded up to its LF.
    DiscardLine,
    /// Message text after DATA's 354.
    Data,
    /// A BDAT chunk; `remaining <= size`. `refusal` is the reply for a chunk that is consumed
    /// and discarded (RFC 3030 §4: pipelined chunks after a failure are read and dropped).
    Bdat {
        remaining: u64,
        size: u64,
        last: bool,
        refusal: Option<&'static str>,
    },
    /// After "AUTH PLAIN" without an initial response.
    AuthPlain,
    /// After "AUTH LOGIN": the username.
    AuthLoginUser,
    /// The password for `username`.
    AuthLoginPassword {
        username: String,
    },
}

/// A mail transaction in progress (after an accepted MAIL).
#[derive(Debug)]
struct Txn {
    from: String,
    params: MailParams,
    /// Accepted recipients; `len() <= recipients_max`.
    recipients: Vec<String>,
    /// Their DSN parameters: empty until a recipient gives one, then one per recipient.
    rcpt_dsn: Vec<RcptDsn>,
    /// A BDAT has been received: DATA and RCPT are out of sequence now.
    chunking: bool,
}

/// One SMTP server connection's protocol state. See the crate docs for the driver loop.
#[derive(Debug)]
pub struct Session {
    config: Arc<ServerConfig>,
    peer: PeerInfo,
    /// Buffered input; bytes before `input_start` are processed. `input_start <= input.len()`.
    input: Vec<u8>,
    input_start: usize,
    /// Pending output; bytes before `output_start` were written. `output_start <= output.len()`.
    output: Vec<u8>,
    output_start: usize,
    mode: Mode,
    awaiting: Option<Awaiting>,
    /// The event for the driver; taken once by `next_event`.
    event: Option<Event>,
    closed: bool,
    /// The EHLO/HELO argument; None before the first and after STARTTLS.
    helo: Option<String>,
    authenticated_as: Option<String>,
    /// Bad commands so far; reaching `errors_max` closes.
    errors: usize,
    /// Failed AUTH attempts so far; reaching `auth_attempts_max` closes.
    auth_failures: usize,
    txn: Option<Txn>,
    /// The MAIL (or RCPT) offered to the driver, kept until its verdict.
    pending_mail: Option<(String, MailParams)>,
    pending_rcpt: Option<(String, RcptDsn)>,
    body: BodyReceiver,
}

impl Session {
    /// A new session; the 220 greeting is queued in the output.
    pub fn new(config: Arc<ServerConfig>, peer: PeerInfo) -> Session {
        let limits = &config.limits;
        let body = BodyReceiver::new(limits.text_line_max_bytes, limits.message_size_max_bytes);
        let mut session = Session {
            input: Vec::new(),
            input_start: 0,
            output: Vec::with_capacity(512),
            output_start: 0,
            mode: Mode::Command,
            awaiting: None,
            event: None,
            closed: false,
            helo: None,
            authenticated_as: None,
            errors: 0,
            auth_failures: 0,
            txn: None,
            pending_mail: None,
            pending_rcpt: None,
            body,
            config,
            peer,
        };
        session.reply_with_host("220 ", " ESMTP Petrel");
        session
    }

    /// Bytes from the client. Processes as far as it can; stops at an event that needs an answer.
    pub fn feed(&mut self, input: &[u8]) {
        if self.closed || self.awaiting == Some(Awaiting::Tls) {
            return;
        }
        if self.input_start == self.input.len() && self.awaiting.is_none() {
            self.input.clear();
            self.input_start = 0;
            let used = self.run(input);
            if !self.closed && self.awaiting != Some(Awaiting::Tls) {
                self.input.extend_from_slice(&input[used..]);
            }
        } else {
            self.input.extend_from_slice(input);
            self.resume();
        }
        let limits = &self.config.limits;
        let hard_max = limits
            .pipeline_input_max_bytes
            .saturating_mul(PIPELINE_INPUT_HARD_FACTOR)
            .saturating_add(limits.command_line_max_bytes);
        if self.unprocessed() > hard_max {
            self.close_421("4.7.0", "too much pipelined input");
        }
    }

    /// Next event, if any. While an event awaits its answer, returns None and input stays buffered.
    pub fn next_event(&mut self) -> Option<Event> {
        self.event.take()
    }

    /// The answer to [`Event::Mail`].
    pub fn mail_verdict(&mut self, v: Verdict) {
        if !self.answer(Awaiting::Mail) {
            return;
        }
        let pending = self.pending_mail.take();
        match (v, pending) {
            (Verdict::Accept, Some((from, params))) => {
                let recipients = Vec::new();
                self.txn = Some(Txn {
                    from,
                    params,
                    recipients,
                    rcpt_dsn: Vec::new(),
                    chunking: false,
                });
                self.reply("250 2.1.0 Ok\r\n");
            }
            (Verdict::Accept, None) => self.reply("451 4.3.0 Error: internal state\r\n"),
            (Verdict::Reject(reply), _) => reply.write_to(&mut self.output),
        }
        self.resume();
    }

    /// The answer to [`Event::Rcpt`].
    pub fn rcpt_verdict(&mut self, v: Verdict) {
        if !self.answer(Awaiting::Rcpt) {
            return;
        }
        let pending = self.pending_rcpt.take();
        match (v, pending, self.txn.as_mut()) {
            (Verdict::Accept, Some((to, dsn)), Some(txn)) => {
                // Kept index for index once any recipient gave a parameter; until then, empty.
                if !dsn.is_empty() || !txn.rcpt_dsn.is_empty() {
                    txn.rcpt_dsn
                        .resize(txn.recipients.len(), RcptDsn::default());
                    txn.rcpt_dsn.push(dsn);
                }
                txn.recipients.push(to);
                self.reply("250 2.1.5 Ok\r\n");
            }
            (Verdict::Accept, _, _) => self.reply("451 4.3.0 Error: internal state\r\n"),
            (Verdict::Reject(reply), _, _) => reply.write_to(&mut self.output),
        }
        self.resume();
    }

    /// The answer to [`Event::Message`]; the transaction is over either way.
    pub fn data_verdict(&mut self, v: DataVerdict) {
        if !self.answer(Awaiting::Message) {
            return;
        }
        match v {
            DataVerdict::Accept { queue_id } => {
                self.output.extend_from_slice(b"250 2.0.0 Ok: queued as ");
                self.output
                    .extend(queue_id.bytes().filter(|b| !b.is_ascii_control()));
                self.output.extend_from_slice(b"\r\n");
            }
            DataVerdict::Reject(reply) => reply.write_to(&mut self.output),
        }
        self.resume();
    }

    /// The answer to [`Event::Auth`]: the authenticated identity, or None for bad credentials.
    pub fn auth_result(&mut self, identity: Option<String>) {
        if !self.answer(Awaiting::Auth) {
            return;
        }
        match identity {
            Some(identity) => {
                self.authenticated_as = Some(identity);
                self.reply("235 2.7.0 Authentication successful\r\n");
            }
            None => self.auth_failed(),
        }
        self.resume();
    }

    /// The answer to [`Event::Auth`] when the client's address is locked out after repeated
    /// failures (RFC 4954 §6: `454 4.7.0`, temporary). Counts as a failed attempt.
    pub fn auth_locked_out(&mut self) {
        if !self.answer(Awaiting::Auth) {
            return;
        }
        self.auth_refused(
            "454 4.7.0 Temporary authentication failure: too many failures from this address\r\n",
        );
        self.resume();
    }

    /// The TLS handshake after STARTTLS succeeded: back to the initial state (RFC 3207 §4.2:
    /// a new EHLO is required), `peer.tls = true`, no greeting.
    pub fn tls_established(&mut self) {
        if self.closed {
            return;
        }
        self.peer.tls = true;
        self.input.clear();
        self.input_start = 0;
        self.mode = Mode::Command;
        self.awaiting = None;
        self.event = None;
        self.helo = None;
        self.authenticated_as = None;
        self.reset_transaction();
    }

    /// Bytes to send to the client; the driver writes them then calls `consume_output(n)`.
    pub fn output(&self) -> &[u8] {
        &self.output[self.output_start..]
    }

    /// Marks `n` bytes of `output()` as written.
    pub fn consume_output(&mut self, n: usize) {
        self.output_start = self.output_start.saturating_add(n).min(self.output.len());
        if self.output_start == self.output.len() {
            self.output.clear();
            self.output_start = 0;
        }
    }

    /// False while an event awaits its answer and the buffered unprocessed input is over
    /// `pipeline_input_max_bytes` (stop reading), while a TLS handshake is due, and once closed.
    /// With no event outstanding, all that can be buffered is one incomplete command line
    /// (bounded by `command_line_max_bytes`), so more input is always wanted then.
    pub fn wants_input(&self) -> bool {
        !self.closed
            && match self.awaiting {
                None => true,
                Some(Awaiting::Tls) => false,
                Some(_) => self.unprocessed() <= self.config.limits.pipeline_input_max_bytes,
            }
    }

    /// True after QUIT, a fatal 421 or `timeout()`: flush the output and close.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Queues "421 4.4.2 <host> Error: timeout exceeded" and closes.
    pub fn timeout(&mut self) {
        if !self.closed {
            self.close_421("4.4.2", "timeout exceeded");
        }
    }

    // ---- processing -------------------------------------------------------------------------

    fn unprocessed(&self) -> usize {
        self.input.len() - self.input_start
    }

    /// Clears `awaiting` if it is `what`; false (and nothing happens) for an unexpected answer.
    fn answer(&mut self, what: Awaiting) -> bool {
        if self.closed || self.awaiting != Some(what) {
            return false;
        }
        self.awaiting = None;
        self.event = None;
        true
    }

    /// Processes buffered input after an answer.
    fn resume(&mut self) {
        if self.input_start == self.input.len() {
            return;
        }
        let buf = std::mem::take(&mut self.input);
        let used = self.run(&buf[self.input_start..]);
        self.input = buf;
        if self.closed || self.awaiting == Some(Awaiting::Tls) {
            self.input.clear();
            self.input_start = 0;
        } else {
            self.input_start += used;
            if self.input_start == self.input.len() {
                self.input.clear();
                self.input_start = 0;
            } else if self.input_start >= self.input.len() / 2 {
                // Compact once the processed prefix dominates: linear over many resumes.
                self.input.drain(..self.input_start);
                self.input_start = 0;
            }
        }
    }

    /// Processes `buf` until it is used up, more input is needed, or an event is pending.
    /// Returns the bytes consumed.
    fn run(&mut self, buf: &[u8]) -> usize {
        let mut pos = 0;
        while pos < buf.len() && !self.closed && self.awaiting.is_none() {
            let used = match self.mode {
                Mode::Data => self.step_data(&buf[pos..]),
                Mode::Bdat { .. } => self.step_bdat(&buf[pos..]),
                Mode::DiscardLine => match memchr::memchr(b'\n', &buf[pos..]) {
                    Some(i) => {
                        self.mode = Mode::Command;
                        i + 1
                    }
                    None => buf.len() - pos,
                },
                _ => self.step_line(&buf[pos..]),
            };
            if used == 0 {
                break;
            }
            pos += used;
        }
        pos
    }

    /// Command and AUTH modes: one CRLF-terminated line.
    fn step_line(&mut self, buf: &[u8]) -> usize {
        let max = self.config.limits.command_line_max_bytes;
        let in_auth = !matches!(self.mode, Mode::Command);
        let too_long = if in_auth {
            "500 5.5.6 Error: authentication exchange line too long\r\n"
        } else {
            "500 5.5.2 Error: line too long\r\n"
        };
        let Some(lf) = memchr::memchr(b'\n', buf) else {
            if buf.len() >= max {
                self.mode = Mode::DiscardLine;
                self.error(too_long);
                return buf.len();
            }
            return 0;
        };
        if lf + 1 > max {
            self.mode = Mode::Command;
            self.error(too_long);
        } else if lf == 0 || buf[lf - 1] != b'\r' || memchr::memchr(b'\r', &buf[..lf - 1]).is_some()
        {
            self.mode = Mode::Command;
            self.error("500 5.5.2 Error: bare CR or LF in command, lines must end with CRLF\r\n");
        } else {
            let line = &buf[..lf - 1];
            match std::mem::replace(&mut self.mode, Mode::Command) {
                Mode::AuthPlain => self.on_plain_response(line),
                Mode::AuthLoginUser => self.on_login_user(line),
                Mode::AuthLoginPassword { username } => self.on_login_password(username, line),
                _ => self.on_command(line),
            }
        }
        lf + 1
    }

    fn step_data(&mut self, buf: &[u8]) -> usize {
        let (used, complete) = self.body.feed_data(buf);
        if complete {
            self.mode = Mode::Command;
            self.finish_message();
        }
        used
    }

    fn step_bdat(&mut self, buf: &[u8]) -> usize {
        let Mode::Bdat {
            remaining, refusal, ..
        } = &mut self.mode
        else {
            return 0;
        };
        let take = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
        *remaining -= take as u64;
        let done = *remaining == 0;
        if refusal.is_none() {
            self.body.feed_chunk(&buf[..take]);
        }
        if done {
            self.finish_chunk();
        }
        take
    }

    fn on_command(&mut self, line: &[u8]) {
        let command = match command::parse(line) {
            Ok(command) => command,
            Err(e) => return self.error(e.reply()),
        };
        match command {
            Command::Ehlo(name) => self.on_hello(name, true),
            Command::Helo(name) => self.on_hello(name, false),
            Command::Mail { path, params } => self.on_mail(path, params),
            Command::Rcpt { path, params } => self.on_rcpt(path, params),
            Command::Data => self.on_data(),
            Command::Bdat { size, last } => self.on_bdat(size, last),
            Command::Rset => {
                self.reset_transaction();
                self.reply(OK);
            }
            Command::Noop => self.reply(OK),
            Command::Quit => {
                self.reply("221 2.0.0 Bye\r\n");
                self.closed = true;
                self.event = Some(Event::Close);
            }
            Command::Help => self.reply(HELP),
            Command::Vrfy => self.reply(VRFY),
            Command::Expn => self.reply(EXPN),
            Command::StartTls => self.on_starttls(),
            Command::Auth { mechanism, initial } => self.on_auth(mechanism, initial),
        }
    }

    fn on_hello(&mut self, name: &[u8], extended: bool) {
        self.reset_transaction();
        self.helo = Some(String::from_utf8_lossy(name).into_owned());
        if !extended {
            return self.reply_with_host("250 ", "");
        }
        self.reply_with_host("250-", "");
        self.output.extend_from_slice(b"250-SIZE ");
        push_u64(
            &mut self.output,
            self.config.limits.message_size_max_bytes as u64,
        );
        self.output.extend_from_slice(
            b"\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-DSN\r\n",
        );
        if self.config.starttls_available && !self.peer.tls {
            self.output.extend_from_slice(b"250-STARTTLS\r\n");
        }
        if self.auth_offered() {
            self.output.extend_from_slice(b"250-AUTH PLAIN LOGIN\r\n");
        }
        self.output
            .extend_from_slice(b"250 ENHANCEDSTATUSCODES\r\n");
    }

    fn auth_offered(&self) -> bool {
        self.config.auth_enabled && self.tls_satisfied_for_auth()
    }

    /// TLS is up, or this listener lets AUTH go first (never when TLS is required).
    fn tls_satisfied_for_auth(&self) -> bool {
        self.peer.tls || (self.config.auth_without_tls && !self.config.tls_required)
    }

    fn on_mail(&mut self, path: &[u8], params: &[u8]) {
        if self.helo.is_none() {
            return self.error(NEED_HELO);
        }
        if self.txn.is_some() {
            return self.error("503 5.5.1 Error: nested MAIL command\r\n");
        }
        if self.config.tls_required && !self.peer.tls {
            return self.error(NEED_STARTTLS);
        }
        if self.config.auth_required && self.authenticated_as.is_none() {
            return self.error("530 5.7.0 Authentication required\r\n");
        }
        let params = match command::parse_mail_params(params) {
            Ok(params) => params,
            Err(ParamError::Unsupported) => {
                return self.error("555 5.5.4 Error: unsupported MAIL parameter\r\n")
            }
            Err(ParamError::Syntax) => {
                return self.error("501 5.5.4 Error: bad MAIL parameter syntax\r\n")
            }
            Err(ParamError::Dsn(e)) => return self.error(e.reply()),
        };
        let limit = self.config.limits.message_size_max_bytes as u64;
        if params.size.is_some_and(|size| size > limit) {
            return self.reply("552 5.3.4 Message size exceeds fixed maximum message size\r\n");
        }
        let from = match command::parse_path(path, params.smtputf8, true, false) {
            Ok(from) => from,
            Err(PathError::Syntax) => return self.error("501 5.1.7 Bad sender address syntax\r\n"),
            Err(PathError::NonAscii) => return self.error(NON_ASCII),
        };
        self.pending_mail = Some((from.clone(), params.clone()));
        let authenticated_as = self.authenticated_as.clone();
        self.emit(
            Event::Mail {
                from,
                params,
                authenticated_as,
            },
            Awaiting::Mail,
        );
    }

    fn on_rcpt(&mut self, path: &[u8], params: &[u8]) {
        let Some(txn) = &self.txn else {
            return self.error(NEED_MAIL);
        };
        if txn.chunking {
            return self.error("503 5.5.1 Error: RCPT after BDAT\r\n");
        }
        if txn.recipients.len() >= self.config.limits.recipients_max {
            return self.reply("452 4.5.3 Error: too many recipients\r\n");
        }
        let dsn = match command::parse_rcpt_params(params) {
            Ok(dsn) => dsn,
            Err(ParamError::Dsn(e)) => return self.error(e.reply()),
            Err(ParamError::Syntax | ParamError::Unsupported) => {
                return self.error("555 5.5.4 Error: unsupported RCPT parameter\r\n")
            }
        };
        let to = match command::parse_path(path, txn.params.smtputf8, false, true) {
            Ok(to) => to,
            Err(PathError::Syntax) => {
                return self.error("501 5.1.3 Bad recipient address syntax\r\n")
            }
            Err(PathError::NonAscii) => return self.error(NON_ASCII),
        };
        self.pending_rcpt = Some((to.clone(), dsn));
        self.emit(Event::Rcpt { to }, Awaiting::Rcpt);
    }

    fn on_data(&mut self) {
        let Some(txn) = &self.txn else {
            return self.error(NEED_MAIL);
        };
        if txn.recipients.is_empty() {
            return self.error(NO_RECIPIENTS);
        }
        if txn.params.body == Body::BinaryMime {
            return self.error("503 5.5.1 Error: BODY=BINARYMIME requires BDAT\r\n");
        }
        if txn.chunking {
            return self.error("503 5.5.1 Error: DATA after BDAT\r\n");
        }
        let reserve = reserve_bytes(&txn.params);
        self.body.start(true, false, reserve);
        self.mode = Mode::Data;
        self.reply("354 End data with <CR><LF>.<CR><LF>\r\n");
    }

    fn on_bdat(&mut self, size: u64, last: bool) {
        let limit = self.config.limits.message_size_max_bytes as u64;
        let refusal = match self.txn.as_mut() {
            None => Some(NEED_MAIL),
            Some(txn) if txn.recipients.is_empty() => Some(NO_RECIPIENTS),
            Some(txn) => {
                if !txn.chunking {
                    txn.chunking = true;
                    let binary = txn.params.body == Body::BinaryMime;
                    self.body.start(false, binary, reserve_bytes(&txn.params));
                }
                if self.body.chunked_bytes().saturating_add(size) > limit {
                    self.body.fail(crate::receive::BodyError::TooBig);
                }
                None
            }
        };
        self.mode = Mode::Bdat {
            remaining: size,
            size,
            last,
            refusal,
        };
        if size == 0 {
            self.finish_chunk();
        }
    }

    /// The end of a BDAT chunk: refuse, acknowledge, or hand over the message.
    fn finish_chunk(&mut self) {
        let Mode::Bdat {
            size,
            last,
            refusal,
            ..
        } = std::mem::replace(&mut self.mode, Mode::Command)
        else {
            return;
        };
        if let Some(refusal) = refusal {
            // Not counted as an error: a client may have pipelined chunks after a failure.
            return self.reply(refusal);
        }
        if last {
            self.body.finish_chunked();
        }
        if let Some(error) = self.body.error() {
            self.reply(error.reply());
            return self.reset_transaction();
        }
        if last {
            return self.deliver();
        }
        self.output.extend_from_slice(b"250 2.0.0 Ok: ");
        push_u64(&mut self.output, size);
        self.output.extend_from_slice(b" octets received\r\n");
    }

    /// The end of DATA: refuse, or hand over the message.
    fn finish_message(&mut self) {
        match self.body.error() {
            Some(error) => {
                self.reply(error.reply());
                self.reset_transaction();
            }
            None => self.deliver(),
        }
    }

    fn deliver(&mut self) {
        let Some(txn) = self.txn.take() else {
            return self.reply("451 4.3.0 Error: internal state\r\n");
        };
        let transaction = Transaction {
            helo: self.helo.clone().unwrap_or_default(),
            mail_from: txn.from,
            params: txn.params,
            recipients: txn.recipients,
            rcpt_dsn: txn.rcpt_dsn,
            data: self.body.take(),
            authenticated_as: self.authenticated_as.clone(),
            tls: self.peer.tls,
        };
        self.emit(Event::Message(transaction), Awaiting::Message);
    }

    fn on_starttls(&mut self) {
        if !self.config.starttls_available {
            return self.error("502 5.5.1 Error: STARTTLS not available\r\n");
        }
        if self.peer.tls {
            return self.error("503 5.5.1 Error: TLS already active\r\n");
        }
        self.reply("220 2.0.0 Ready to start TLS\r\n");
        // `run` drops everything after this line: plaintext pipelined after STARTTLS must never
        // be read as if it came under TLS (CVE-2011-0411).
        self.emit(Event::StartTls, Awaiting::Tls);
    }

    // ---- helpers ----------------------------------------------------------------------------

    fn emit(&mut self, event: Event, awaiting: Awaiting) {
        self.event = Some(event);
        self.awaiting = Some(awaiting);
    }

    fn reset_transaction(&mut self) {
        self.txn = None;
        self.pending_mail = None;
        self.pending_rcpt = None;
        self.body.reset();
    }

    fn reply(&mut self, line: &'static str) {
        self.output.extend_from_slice(line.as_bytes());
    }

    /// A reply for a bad command: counted, and the session closes at `errors_max`.
    fn error(&mut self, line: &'static str) {
        self.reply(line);
        self.errors += 1;
        if self.errors >= self.config.limits.errors_max {
            self.close_421("4.7.0", "too many errors");
        }
    }

    fn reply_with_host(&mut self, head: &str, tail: &str) {
        self.output.extend_from_slice(head.as_bytes());
        let host = self
            .config
            .hostname
            .bytes()
            .filter(|b| !b.is_ascii_control());
        self.output.extend(host);
        self.output.extend_from_slice(tail.as_bytes());
        self.output.extend_from_slice(b"\r\n");
    }

    /// "421 <enhanced> <host> Error: <what>", then close.
    fn close_421(&mut self, enhanced: &str, what: &str) {
        self.output.extend_from_slice(b"421 ");
        self.output.extend_from_slice(enhanced.as_bytes());
        self.output.push(b' ');
        self.reply_with_host("", &format!(" Error: {what}"));
        self.closed = true;
        self.awaiting = None;
        self.event = Some(Event::Close);
        self.mode = Mode::Command;
        self.reset_transaction();
    }
}

const NON_ASCII: &str = "553 5.6.7 Error: non-ASCII address requires SMTPUTF8\r\n";

/// Body capacity to reserve: the declared SIZE (bounded later by the limit) or a default.
fn reserve_bytes(params: &MailParams) -> usize {
    params
        .size
        .map(|size| usize::try_from(size).unwrap_or(usize::MAX))
        .map_or(BODY_RESERVE_DEFAULT_BYTES, |size| {
            size.min(BODY_RESERVE_MAX_BYTES)
        })
}

#[path = "session_auth.rs"]
mod session_auth;

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
