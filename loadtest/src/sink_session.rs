//! One sink core thread (accept loop) and one sink connection.
//!
//! `Session` is the protocol core: it consumes buffered input and appends replies, doing no
//! I/O itself; `serve` moves bytes between it and the socket, applies delays and upgrades to TLS.
//! Replies are batched: they are written only when the buffered input is used up, so a
//! pipelining client gets one write per batch.

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::msgid::find_in_message;
use crate::sink::{
    arrival_latency_us, now_us, DomainFault, OverLimit, ReceivedMessage, SinkShared,
};
use crate::stream::{next_line_end, Stream};
use crate::tls;

type ServerStream = Stream<tokio_rustls::server::TlsStream<TcpStream>>;

/// Read buffer growth step, in bytes.
const READ_CHUNK_BYTES: usize = 16 << 10;
/// Most recipients per transaction; later ones get 452.
const RCPTS_PER_TXN_MAX: usize = 1_000;

/// Accept loop of one core thread; returns when `shutdown` flips.
pub(crate) fn run_core(
    sh: Arc<SinkShared>,
    listener: std::net::TcpListener,
    thread: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(rt) = crate::stream::core_runtime() else {
        return;
    };
    let local = tokio::task::LocalSet::new();
    let pool: Pool = Rc::new(RefCell::new(Vec::new()));
    local.block_on(&rt, async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
        loop {
            let permit = if sh.cfg.over_limit == OverLimit::StopAccepting {
                tokio::select! {
                    p = sh.slots.clone().acquire_owned() => match p { Ok(p) => Some(p), Err(_) => return },
                    _ = shutdown.changed() => return,
                }
            } else {
                None
            };
            let tcp = tokio::select! {
                r = listener.accept() => match r { Ok((tcp, _)) => tcp, Err(_) => continue },
                _ = shutdown.changed() => return,
            };
            let permit = match permit {
                Some(p) => p,
                None => match sh.slots.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        sh.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
                        // A fresh socket's send buffer is empty: one non-blocking write suffices,
                        // and no task is spawned, so refused connections cost nothing to hold.
                        let _ = tcp.try_write(REFUSAL);
                        continue;
                    }
                },
            };
            let seq = sh.conn_seq.fetch_add(1, Ordering::Relaxed);
            let rng = StdRng::seed_from_u64(sh.cfg.seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            tokio::task::spawn_local(serve(sh.clone(), tcp, thread, rng, permit, pool.clone()));
        }
    });
}

/// The greeting over `connections_max` in `Reply421` mode.
const REFUSAL: &[u8] = b"421 4.7.0 too many connections, try later\r\n";

/// What the I/O loop must do after `Session::process`.
#[derive(Debug, PartialEq)]
enum Action {
    /// Write pending replies, then read more input.
    NeedInput,
    /// Write pending replies, then upgrade to TLS.
    StartTls,
    /// Write pending replies, then close.
    Close,
    /// Close at once without writing (drop in DATA).
    Drop,
}

/// Decrements the current-connection gauge when the connection ends.
struct ConnGuard<'a>(&'a SinkShared);
impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.0
            .counters
            .connections_current
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve(
    sh: Arc<SinkShared>,
    tcp: TcpStream,
    thread: usize,
    rng: StdRng,
    _permit: OwnedSemaphorePermit,
    pool: Pool,
) {
    let c = &sh.counters;
    c.connections_total.fetch_add(1, Ordering::Relaxed);
    let cur = c.connections_current.fetch_add(1, Ordering::Relaxed) + 1;
    c.connections_max_seen.fetch_max(cur, Ordering::Relaxed);
    let _guard = ConnGuard(&sh);
    let _ = tcp.set_nodelay(true);
    let idle = Duration::from_millis(sh.cfg.idle_timeout_ms);
    let mut s = Session::new(&sh, thread, rng, Some(pool));
    s.out.extend_from_slice(b"220 petrel-sink ESMTP ready\r\n");
    let mut stream: ServerStream = Stream::Plain(tcp);
    loop {
        let action = s.process();
        if action == Action::Drop {
            return;
        }
        if !s.out.is_empty() {
            let delay = sh.cfg.reply_delay_ms
                + if s.data_reply_pending {
                    sh.cfg.data_reply_delay_ms
                } else {
                    0
                };
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            s.data_reply_pending = false;
            let io = async {
                stream.write_all(&s.out).await?;
                stream.flush().await
            };
            if !matches!(tokio::time::timeout(idle, io).await, Ok(Ok(()))) {
                return;
            }
            s.out.clear();
        }
        match action {
            Action::Close | Action::Drop => return,
            Action::StartTls => {
                let (Stream::Plain(tcp), Some(acceptor)) = (stream, sh.tls.clone()) else {
                    return;
                };
                match tokio::time::timeout(idle, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        sh.counters.tls_sessions.fetch_add(1, Ordering::Relaxed);
                        if tls::resumed(tls.get_ref().1) {
                            sh.counters.tls_resumed.fetch_add(1, Ordering::Relaxed);
                        }
                        stream = Stream::Tls(Box::new(tls));
                        s.tls = true;
                    }
                    _ => return,
                }
            }
            Action::NeedInput => {
                if s.rpos > 0 {
                    s.inbuf.drain(..s.rpos);
                    s.rpos = 0;
                }
                if s.inbuf.capacity() - s.inbuf.len() < 1024 {
                    s.inbuf.reserve(READ_CHUNK_BYTES);
                }
                match tokio::time::timeout(idle, stream.read_buf(&mut s.inbuf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
            }
        }
    }
}

/// Buffer sets of finished connections kept per core thread for the next connections.
const BUFFER_POOL_MAX: usize = 256;
/// A buffer whose capacity grew beyond this is freed rather than pooled, in bytes.
const POOLED_BUFFER_BYTES_MAX: usize = 1 << 20;

/// Per-core-thread pool of connection buffers (so a new connection per message allocates none).
type Pool = Rc<RefCell<Vec<[Vec<u8>; 3]>>>;

/// Protocol state of one connection (no I/O).
struct Session<'a> {
    /// Where the buffers go back when the connection ends (`None` in unit tests).
    pool: Option<Pool>,
    sh: &'a SinkShared,
    thread: usize,
    rng: StdRng,
    /// Input; `inbuf[rpos..]` is unconsumed. 0 <= rpos <= inbuf.len().
    inbuf: Vec<u8>,
    rpos: usize,
    /// Replies not yet written.
    out: Vec<u8>,
    /// Message being received: starts with a CRLF sentinel so the terminator is always CRLF.CRLF.
    msg: Vec<u8>,
    in_data: bool,
    /// In a BDAT chunk: bytes of it still to read (RFC 3030).
    bdat_remaining: usize,
    /// The chunk being read ends the message (`BDAT n LAST`).
    bdat_last: bool,
    /// The chunk being read is refused with this reply once read (no MAIL, no recipient).
    bdat_refusal: Option<&'static [u8]>,
    /// `msg` holds BDAT content (not dot-stuffed).
    msg_raw: bool,
    /// This DATA phase ends in a dropped connection.
    drop_this: bool,
    /// An end-of-data reply is in `out` (for the extra delay).
    data_reply_pending: bool,
    has_mail: bool,
    rcpts: usize,
    tls: bool,
    awaiting_auth: bool,
    /// Input follows the command being handled (set by `process`).
    input_pending: bool,
    /// Envelope, kept only when messages are stored.
    from: String,
    rcpt_list: Vec<String>,
}

impl<'a> Session<'a> {
    fn new(sh: &'a SinkShared, thread: usize, rng: StdRng, pool: Option<Pool>) -> Self {
        let pooled = pool.as_ref().and_then(|p| p.borrow_mut().pop());
        let [inbuf, out, msg] = pooled.unwrap_or_else(|| {
            [
                Vec::with_capacity(READ_CHUNK_BYTES),
                Vec::with_capacity(1024),
                Vec::with_capacity(4096),
            ]
        });
        Self {
            pool,
            sh,
            thread,
            rng,
            inbuf,
            rpos: 0,
            out,
            msg,
            in_data: false,
            bdat_remaining: 0,
            bdat_last: false,
            bdat_refusal: None,
            msg_raw: false,
            drop_this: false,
            data_reply_pending: false,
            has_mail: false,
            rcpts: 0,
            tls: false,
            awaiting_auth: false,
            input_pending: false,
            from: String::new(),
            rcpt_list: Vec::new(),
        }
    }

    fn storing(&self) -> bool {
        self.sh.cfg.store_dir.is_some() || self.sh.cfg.keep_messages_max > 0
    }

    /// Consumes all complete input, appending replies.
    fn process(&mut self) -> Action {
        loop {
            if self.bdat_remaining > 0 {
                match self.bdat_chunk() {
                    Some(a) => return a,
                    None => continue,
                }
            }
            if self.in_data {
                match self.data() {
                    Some(a) => return a,
                    None => continue,
                }
            }
            let Some(end) = next_line_end(&self.inbuf, self.rpos) else {
                if self.inbuf.len() - self.rpos > self.sh.cfg.line_length_max_bytes {
                    self.out.extend_from_slice(b"500 5.5.2 line too long\r\n");
                    return Action::Close;
                }
                return Action::NeedInput;
            };
            let start = self.rpos;
            self.rpos = end;
            if end - start > self.sh.cfg.line_length_max_bytes {
                self.out.extend_from_slice(b"500 5.5.2 line too long\r\n");
                return Action::Close;
            }
            // Take the buffer out so the line can be borrowed while `self` is updated.
            let inbuf = std::mem::take(&mut self.inbuf);
            self.input_pending = self.rpos != inbuf.len();
            let action = self.command(trim_eol(&inbuf[start..end]));
            self.inbuf = inbuf;
            if let Some(a) = action {
                return a;
            }
        }
    }

    /// In DATA: gathers input until CRLF.CRLF. `None`: the message ended, keep processing.
    fn data(&mut self) -> Option<Action> {
        if self.drop_this && self.rpos < self.inbuf.len() {
            self.sh
                .counters
                .drops_in_data
                .fetch_add(1, Ordering::Relaxed);
            return Some(Action::Drop);
        }
        let scan_from = self.msg.len().saturating_sub(4);
        self.msg.extend_from_slice(&self.inbuf[self.rpos..]);
        self.rpos = self.inbuf.len();
        let Some(i) = memchr::memmem::find(&self.msg[scan_from..], b"\r\n.\r\n") else {
            if self.msg.len() > self.sh.cfg.message_size_max_bytes {
                self.out.extend_from_slice(b"552 5.3.4 message too big\r\n");
                return Some(Action::Close);
            }
            return Some(Action::NeedInput);
        };
        let end = scan_from + i;
        // Pipelined commands after the terminator go back to the input buffer.
        self.inbuf.clear();
        self.inbuf.extend_from_slice(&self.msg[end + 5..]);
        self.rpos = 0;
        self.msg.truncate(end + 2);
        self.in_data = false;
        self.end_of_data();
        None
    }

    /// In a BDAT chunk: gathers its bytes. `None`: the chunk is complete, keep processing.
    fn bdat_chunk(&mut self) -> Option<Action> {
        if self.rpos >= self.inbuf.len() {
            return Some(Action::NeedInput);
        }
        if self.drop_this {
            self.sh
                .counters
                .drops_in_data
                .fetch_add(1, Ordering::Relaxed);
            return Some(Action::Drop);
        }
        let take = self.bdat_remaining.min(self.inbuf.len() - self.rpos);
        if self.bdat_refusal.is_none() {
            self.msg
                .extend_from_slice(&self.inbuf[self.rpos..self.rpos + take]);
        }
        self.rpos += take;
        self.bdat_remaining -= take;
        if self.msg.len() > self.sh.cfg.message_size_max_bytes {
            self.out.extend_from_slice(b"552 5.3.4 message too big\r\n");
            return Some(Action::Close);
        }
        if self.bdat_remaining > 0 {
            return Some(Action::NeedInput);
        }
        if let Some(reply) = self.bdat_refusal.take() {
            self.out.extend_from_slice(reply);
            self.msg.clear();
            self.reset();
        } else if self.bdat_last {
            self.end_of_data();
            self.msg_raw = false;
        } else {
            self.out.extend_from_slice(b"250 2.0.0 chunk ok\r\n");
        }
        None
    }

    /// `BDAT <size> [LAST]`: starts reading a chunk (a zero-size LAST chunk ends at once).
    fn bdat(&mut self, arg: &[u8]) {
        let mut parts = arg.split(|b| *b == b' ').filter(|p| !p.is_empty());
        let size = parts
            .next()
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<usize>().ok());
        let last = match parts.next() {
            None => Some(false),
            Some(w) if w.eq_ignore_ascii_case(b"LAST") => Some(true),
            Some(_) => None,
        };
        let (Some(size), Some(last)) = (size, last) else {
            self.out
                .extend_from_slice(b"501 5.5.4 syntax: BDAT size [LAST]\r\n");
            return;
        };
        if size > self.sh.cfg.message_size_max_bytes {
            self.out.extend_from_slice(b"552 5.3.4 message too big\r\n");
            return;
        }
        if !self.msg_raw {
            // The first chunk of this message (same sentinel as DATA, see `msg`).
            self.msg.clear();
            self.msg.extend_from_slice(b"\r\n");
            self.msg_raw = true;
            self.drop_this = self.has_mail
                && self.rcpts > 0
                && self.sh.cfg.drop_in_data > 0.0
                && self.rng.gen::<f64>() < self.sh.cfg.drop_in_data;
        }
        self.bdat_refusal = if !self.has_mail {
            Some(b"503 5.5.1 need MAIL\r\n")
        } else if self.rcpts == 0 {
            Some(b"554 5.5.1 no valid recipients\r\n")
        } else {
            None
        };
        if self.bdat_refusal.is_some() {
            self.msg_raw = false;
            self.drop_this = false;
        }
        self.bdat_last = last;
        self.bdat_remaining = size;
        if size == 0 {
            // Nothing to read: complete the chunk now.
            self.bdat_remaining = 0;
            if let Some(reply) = self.bdat_refusal.take() {
                self.out.extend_from_slice(reply);
                self.msg.clear();
                self.reset();
            } else if last {
                self.end_of_data();
                self.msg_raw = false;
            } else {
                self.out.extend_from_slice(b"250 2.0.0 chunk ok\r\n");
            }
        }
    }

    fn end_of_data(&mut self) {
        let cfg = &self.sh.cfg;
        let c = &self.sh.counters;
        let content = &self.msg[2..];
        c.bytes_received
            .fetch_add(content.len() as u64, Ordering::Relaxed);
        self.data_reply_pending = true;
        let roll: f64 = self.rng.gen();
        if roll < cfg.data_tempfail {
            c.messages_tempfailed.fetch_add(1, Ordering::Relaxed);
            self.out
                .extend_from_slice(b"451 4.3.0 temporary failure (sink)\r\n");
        } else if roll < cfg.data_tempfail + cfg.data_permfail {
            c.messages_permfailed.fetch_add(1, Ordering::Relaxed);
            self.out
                .extend_from_slice(b"554 5.6.0 permanent failure (sink)\r\n");
        } else {
            let now = now_us();
            c.messages_accepted.fetch_add(1, Ordering::Relaxed);
            self.sh.note_arrival(now);
            let id = find_in_message(content);
            match id {
                Some(id) => {
                    if self.sh.record_id(id.key()) {
                        if let Ok(mut h) = self.sh.latency[self.thread].lock() {
                            h.saturating_record(arrival_latency_us(id.injected_unix_us, now));
                        }
                    }
                }
                None => {
                    c.messages_without_id.fetch_add(1, Ordering::Relaxed);
                }
            }
            if self.storing() {
                self.store(id);
            }
            self.out.extend_from_slice(b"250 2.0.0 ok: queued\r\n");
        }
        self.has_mail = false;
        self.rcpts = 0;
    }

    fn store(&mut self, id: Option<crate::msgid::LoadId>) {
        let data = if self.msg_raw {
            self.msg[2..].to_vec()
        } else {
            unstuff(&self.msg[2..])
        };
        let cfg = &self.sh.cfg;
        if let Some(dir) = &cfg.store_dir {
            let seq = self.sh.store_seq.fetch_add(1, Ordering::Relaxed);
            let name = match id {
                Some(id) => format!("{seq:08}-{:016x}-{}.eml", id.run, id.n),
                None => format!("{seq:08}.eml"),
            };
            if std::fs::write(dir.join(name), &data).is_err() {
                self.sh
                    .counters
                    .store_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if cfg.keep_messages_max > 0 {
            if let Ok(mut r) = self.sh.received.lock() {
                if r.len() < cfg.keep_messages_max {
                    r.push(ReceivedMessage {
                        mail_from: self.from.clone(),
                        rcpts: std::mem::take(&mut self.rcpt_list),
                        data,
                        load_id: id,
                    });
                }
            }
        }
        self.rcpt_list.clear();
    }

    /// Handles one command line; `Some` ends the processing pass.
    fn command(&mut self, line: &[u8]) -> Option<Action> {
        if self.awaiting_auth {
            self.awaiting_auth = false;
            self.auth_plain(line);
            return None;
        }
        let verb_end = line.iter().position(|b| *b == b' ').unwrap_or(line.len());
        let (verb, arg) = (&line[..verb_end], line.get(verb_end + 1..).unwrap_or(b""));
        let is = |v: &[u8]| verb.eq_ignore_ascii_case(v);
        if is(b"EHLO") || is(b"HELO") {
            self.reset();
            let cfg = &self.sh.cfg;
            self.out.extend_from_slice(b"250-petrel-sink\r\n");
            if cfg.pipelining {
                self.out.extend_from_slice(b"250-PIPELINING\r\n");
            }
            if cfg.chunking {
                self.out.extend_from_slice(b"250-CHUNKING\r\n");
            }
            if self.sh.tls.is_some() && !self.tls {
                self.out.extend_from_slice(b"250-STARTTLS\r\n");
            }
            let _ = write!(self.out, "250-SIZE {}\r\n", cfg.message_size_max_bytes);
            self.out.extend_from_slice(
                b"250-AUTH PLAIN\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n",
            );
        } else if is(b"MAIL") {
            if self.has_mail {
                self.out.extend_from_slice(b"503 5.5.1 nested MAIL\r\n");
            } else {
                self.has_mail = true;
                self.rcpts = 0;
                if self.storing() {
                    self.from = String::from_utf8_lossy(angle(arg)).into_owned();
                }
                self.out.extend_from_slice(b"250 2.1.0 ok\r\n");
            }
        } else if is(b"RCPT") {
            self.rcpt(arg);
        } else if is(b"DATA") {
            if !self.has_mail {
                self.out.extend_from_slice(b"503 5.5.1 need MAIL\r\n");
            } else if self.rcpts == 0 {
                self.out
                    .extend_from_slice(b"554 5.5.1 no valid recipients\r\n");
            } else {
                self.out
                    .extend_from_slice(b"354 end data with <CRLF>.<CRLF>\r\n");
                self.in_data = true;
                self.msg.clear();
                self.msg.extend_from_slice(b"\r\n");
                self.drop_this = self.sh.cfg.drop_in_data > 0.0
                    && self.rng.gen::<f64>() < self.sh.cfg.drop_in_data;
            }
        } else if is(b"BDAT") && self.sh.cfg.chunking {
            self.bdat(arg);
        } else if is(b"RSET") {
            self.reset();
            self.out.extend_from_slice(b"250 2.0.0 ok\r\n");
        } else if is(b"NOOP") {
            self.out.extend_from_slice(b"250 2.0.0 ok\r\n");
        } else if is(b"QUIT") {
            self.out.extend_from_slice(b"221 2.0.0 bye\r\n");
            return Some(Action::Close);
        } else if is(b"STARTTLS") {
            if self.sh.tls.is_some() && !self.tls {
                self.out
                    .extend_from_slice(b"220 2.0.0 ready to start TLS\r\n");
                if self.input_pending {
                    return Some(Action::Close); // pipelined after STARTTLS: injection attempt
                }
                self.reset();
                return Some(Action::StartTls);
            }
            self.out
                .extend_from_slice(b"502 5.5.1 STARTTLS not offered\r\n");
        } else if is(b"AUTH") {
            let mut parts = arg.splitn(2, |b| *b == b' ');
            let mech = parts.next().unwrap_or(b"");
            if !mech.eq_ignore_ascii_case(b"PLAIN") {
                self.out
                    .extend_from_slice(b"504 5.5.4 mechanism not supported\r\n");
            } else {
                match parts.next() {
                    Some(ir) => self.auth_plain(ir),
                    None => {
                        self.out.extend_from_slice(b"334 \r\n");
                        self.awaiting_auth = true;
                    }
                }
            }
        } else {
            self.out
                .extend_from_slice(b"500 5.5.2 command not recognized\r\n");
        }
        None
    }

    fn rcpt(&mut self, arg: &[u8]) {
        if !self.has_mail {
            self.out.extend_from_slice(b"503 5.5.1 need MAIL\r\n");
            return;
        }
        if self.rcpts >= RCPTS_PER_TXN_MAX {
            self.out
                .extend_from_slice(b"452 4.5.3 too many recipients\r\n");
            return;
        }
        let addr = angle(arg);
        let domain = addr
            .iter()
            .rposition(|b| *b == b'@')
            .map_or(&b""[..], |i| &addr[i + 1..]);
        let c = &self.sh.counters;
        if roll_domain(&self.sh.cfg.rcpt_tempfail, domain, &mut self.rng) {
            c.rcpts_tempfailed.fetch_add(1, Ordering::Relaxed);
            self.out
                .extend_from_slice(b"450 4.2.0 recipient temporarily unavailable (sink)\r\n");
        } else if roll_domain(&self.sh.cfg.rcpt_permfail, domain, &mut self.rng) {
            c.rcpts_permfailed.fetch_add(1, Ordering::Relaxed);
            self.out
                .extend_from_slice(b"550 5.1.1 recipient rejected (sink)\r\n");
        } else {
            c.rcpts_accepted.fetch_add(1, Ordering::Relaxed);
            self.rcpts += 1;
            if self.storing() {
                self.rcpt_list
                    .push(String::from_utf8_lossy(addr).into_owned());
            }
            self.out.extend_from_slice(b"250 2.1.5 ok\r\n");
        }
    }

    fn auth_plain(&mut self, b64: &[u8]) {
        use base64::Engine;
        let ok = match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(raw) => {
                let mut f = raw.split(|b| *b == 0);
                let (_authz, user, pass) =
                    (f.next(), f.next().unwrap_or(b""), f.next().unwrap_or(b""));
                let users = &self.sh.cfg.auth_users;
                users.is_empty()
                    || users
                        .iter()
                        .any(|(u, p)| u.as_bytes() == user && p.as_bytes() == pass)
            }
            Err(_) => false,
        };
        let c = &self.sh.counters;
        if ok {
            c.auth_ok.fetch_add(1, Ordering::Relaxed);
            self.out
                .extend_from_slice(b"235 2.7.0 authentication succeeded\r\n");
        } else {
            c.auth_failed.fetch_add(1, Ordering::Relaxed);
            self.out
                .extend_from_slice(b"535 5.7.8 authentication failed\r\n");
        }
    }

    fn reset(&mut self) {
        self.msg_raw = false;
        self.has_mail = false;
        self.rcpts = 0;
        self.rcpt_list.clear();
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else { return };
        let mut bufs = [
            std::mem::take(&mut self.inbuf),
            std::mem::take(&mut self.out),
            std::mem::take(&mut self.msg),
        ];
        if bufs.iter().any(|b| b.capacity() > POOLED_BUFFER_BYTES_MAX) {
            return;
        }
        bufs.iter_mut().for_each(Vec::clear);
        let mut pool = pool.borrow_mut();
        if pool.len() < BUFFER_POOL_MAX {
            pool.push(bufs);
        }
    }
}

/// True with the probability configured for `domain` (exact or parent-domain match).
fn roll_domain(faults: &[DomainFault], domain: &[u8], rng: &mut StdRng) -> bool {
    let Some(f) = faults
        .iter()
        .find(|f| domain_matches(domain, f.domain.as_bytes()))
    else {
        return false;
    };
    f.probability > 0.0 && rng.gen::<f64>() < f.probability
}

fn domain_matches(domain: &[u8], key: &[u8]) -> bool {
    if domain.eq_ignore_ascii_case(key) {
        return true;
    }
    domain.len() > key.len()
        && domain[domain.len() - key.len()..].eq_ignore_ascii_case(key)
        && domain[domain.len() - key.len() - 1] == b'.'
}

/// The address between `<` and `>` in `FROM:<a@b> SIZE=1` / `TO:<a@b>`.
fn angle(arg: &[u8]) -> &[u8] {
    let Some(open) = memchr::memchr(b'<', arg) else {
        return b"";
    };
    let rest = &arg[open + 1..];
    &rest[..memchr::memchr(b'>', rest).unwrap_or(rest.len())]
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let mut l = line;
    while let [rest @ .., b'\r' | b'\n'] = l {
        l = rest;
    }
    l
}

/// Removes SMTP dot-stuffing (a leading `.` doubled on lines starting with `.`).
fn unstuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut at_line_start = true;
    for (i, b) in data.iter().enumerate() {
        if at_line_start && *b == b'.' && data.get(i + 1) == Some(&b'.') {
            at_line_start = false;
            continue;
        }
        out.push(*b);
        at_line_start = *b == b'\n';
    }
    out
}

#[cfg(test)]
#[path = "sink_session_tests.rs"]
mod tests;
