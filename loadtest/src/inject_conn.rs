//! One injector connection: connect, greeting, EHLO, STARTTLS, AUTH, then transactions.
//!
//! With PIPELINING the envelope (MAIL, RCPT.., DATA) is one write, and the end of data is
//! written together with the next message's envelope (or QUIT), as RFC 2920 allows: one round
//! trip per message on a reused connection. Buffers live for the whole connection loop and are
//! reused for every message.

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::inject::{Shared, ThreadStats, FILLER_LINE_BYTES};
use crate::msgid::{write_header, LoadId};
use crate::report::unix_now_us;
use crate::stream::{next_line_end, Stream};
use crate::tls;

type ClientStream = Stream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Longest reply (all lines of one multi-line reply) accepted, in bytes.
const REPLY_BYTES_MAX: usize = 64 << 10;
/// Read buffer growth step, in bytes.
const READ_CHUNK_BYTES: usize = 16 << 10;

/// How one message ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Ok,
    Temp,
    Perm,
    Error,
}

fn class(code: u16) -> Outcome {
    match code / 100 {
        2 | 3 => Outcome::Ok,
        4 => Outcome::Temp,
        5 => Outcome::Perm,
        _ => Outcome::Error,
    }
}

/// Why a network step failed (the message in flight counts as an error).
#[derive(Debug)]
enum Fail {
    Io,
    Timeout,
    Protocol,
}

/// A parsed reply: code and its byte range in the read buffer (valid until the next read).
struct Reply {
    code: u16,
    start: usize,
    end: usize,
}

/// Runs connections one after another until no ticket is left.
pub(crate) async fn connection_loop(sh: Arc<Shared>, stats: Rc<RefCell<ThreadStats>>, rng: StdRng) {
    let mut c = Client {
        sh,
        stats,
        rng,
        rbuf: Vec::with_capacity(READ_CHUNK_BYTES),
        rpos: 0,
        wbuf: Vec::with_capacity(4096),
        carry: None,
    };
    while let Some(n) = c.carry.take().or_else(|| c.sh.claim()) {
        if let Some(due) = c.sh.due(n) {
            tokio::time::sleep_until(due.into()).await;
        }
        c.session(n).await;
    }
}

struct Client {
    sh: Arc<Shared>,
    stats: Rc<RefCell<ThreadStats>>,
    rng: StdRng,
    /// Bytes read; `rbuf[rpos..]` is not yet parsed. 0 <= rpos <= rbuf.len().
    rbuf: Vec<u8>,
    rpos: usize,
    /// Bytes to write next.
    wbuf: Vec<u8>,
    /// A ticket whose envelope was sent on a connection that then failed: retried first.
    carry: Option<u64>,
}

/// Server capabilities from EHLO.
#[derive(Default, Clone, Copy)]
struct Caps {
    pipelining: bool,
    starttls: bool,
}

impl Client {
    fn finish(&self, outcome: Outcome) {
        let mut s = self.stats.borrow_mut();
        let c = &mut s.counts;
        c.messages_attempted += 1;
        match outcome {
            Outcome::Ok => c.messages_2xx += 1,
            Outcome::Temp => c.messages_4xx += 1,
            Outcome::Perm => c.messages_5xx += 1,
            Outcome::Error => c.messages_error += 1,
        }
        self.sh.done.fetch_add(1, Ordering::Relaxed);
    }

    fn fail(&self, f: Fail) {
        let mut s = self.stats.borrow_mut();
        match f {
            Fail::Timeout => s.counts.timeouts += 1,
            Fail::Io | Fail::Protocol => s.counts.io_errors += 1,
        }
    }

    /// One connection carrying ticket `first` and maybe more.
    async fn session(&mut self, first: u64) {
        let t0 = Instant::now();
        let tcp =
            match tokio::time::timeout(self.sh.io_timeout, TcpStream::connect(self.sh.cfg.target))
                .await
            {
                Ok(Ok(s)) => s,
                res => {
                    let mut s = self.stats.borrow_mut();
                    s.counts.connect_errors += 1;
                    if res.is_err() {
                        s.counts.timeouts += 1;
                    }
                    drop(s);
                    self.finish(Outcome::Error);
                    return;
                }
            };
        let _ = tcp.set_nodelay(true);
        {
            let mut s = self.stats.borrow_mut();
            s.counts.connections_opened += 1;
            s.connect.saturating_record(t0.elapsed().as_micros() as u64);
        }
        self.rbuf.clear();
        self.rpos = 0;
        match self.open(Stream::Plain(tcp)).await {
            Ok((mut stream, Ok(caps))) => self.transactions(&mut stream, first, caps).await,
            Ok((_, Err(outcome))) => self.finish(outcome),
            Err(f) => {
                self.fail(f);
                self.finish(Outcome::Error);
            }
        }
    }

    /// Greeting, EHLO, STARTTLS and AUTH. `Ok(Err(outcome))`: the server refused.
    /// Takes the stream by value because STARTTLS replaces it.
    async fn open(
        &mut self,
        mut stream: ClientStream,
    ) -> Result<(ClientStream, Result<Caps, Outcome>), Fail> {
        let greeting = self.read_reply(&mut stream).await?;
        if greeting.code / 100 != 2 {
            self.stats.borrow_mut().counts.greetings_rejected += 1;
            return Ok((stream, Err(class(greeting.code))));
        }
        let mut caps = match self.ehlo(&mut stream).await? {
            Ok(c) => c,
            Err(o) => return Ok((stream, Err(o))),
        };
        if let Some(connector) = self.sh.tls.clone() {
            if !caps.starttls {
                self.stats.borrow_mut().counts.starttls_missing += 1;
                return Ok((stream, Err(Outcome::Error)));
            }
            self.wbuf.clear();
            self.wbuf.extend_from_slice(b"STARTTLS\r\n");
            self.flush(&mut stream).await?;
            let r = self.read_reply(&mut stream).await?;
            if r.code != 220 {
                return Ok((stream, Err(class(r.code))));
            }
            if self.rpos != self.rbuf.len() {
                return Err(Fail::Protocol); // data after 220 would be a plaintext injection
            }
            let Stream::Plain(tcp) = stream else {
                return Err(Fail::Protocol);
            };
            let name =
                rustls::pki_types::ServerName::try_from("localhost").map_err(|_| Fail::Protocol)?;
            let tls = tokio::time::timeout(self.sh.io_timeout, connector.connect(name, tcp))
                .await
                .map_err(|_| Fail::Timeout)?
                .map_err(|_| Fail::Io)?;
            let resumed = tls::resumed(tls.get_ref().1);
            stream = Stream::Tls(Box::new(tls));
            {
                let counts = &mut self.stats.borrow_mut().counts;
                counts.tls_sessions += 1;
                counts.tls_resumed += u64::from(resumed);
            }
            caps = match self.ehlo(&mut stream).await? {
                Ok(c) => c,
                Err(o) => return Ok((stream, Err(o))),
            };
        }
        if let Some(line) = &self.sh.auth_line {
            self.wbuf.clear();
            self.wbuf.extend_from_slice(line);
            self.flush(&mut stream).await?;
            let r = self.read_reply(&mut stream).await?;
            if r.code != 235 {
                self.stats.borrow_mut().counts.auth_failures += 1;
                return Ok((stream, Err(class(r.code))));
            }
        }
        Ok((stream, Ok(caps)))
    }

    async fn ehlo(&mut self, stream: &mut ClientStream) -> Result<Result<Caps, Outcome>, Fail> {
        self.wbuf.clear();
        let _ = write!(self.wbuf, "EHLO {}\r\n", self.sh.cfg.helo_name);
        self.flush(stream).await?;
        let r = self.read_reply(stream).await?;
        if r.code != 250 {
            return Ok(Err(class(r.code)));
        }
        let mut caps = Caps::default();
        let mut pos = r.start;
        while let Some(end) = next_line_end(&self.rbuf[..r.end], pos) {
            let kw = self.rbuf[pos..end].get(4..).unwrap_or(b"");
            let kw = &kw[..kw
                .iter()
                .position(|b| !b.is_ascii_alphanumeric())
                .unwrap_or(kw.len())];
            caps.pipelining |= kw.eq_ignore_ascii_case(b"PIPELINING");
            caps.starttls |= kw.eq_ignore_ascii_case(b"STARTTLS");
            pos = end;
        }
        let mut s = self.stats.borrow_mut();
        s.counts.starttls_offered += u64::from(caps.starttls);
        s.counts.pipelining_offered += u64::from(caps.pipelining);
        Ok(Ok(caps))
    }

    /// Sends transactions starting with ticket `first` until the per-connection count or the
    /// tickets run out, then QUIT.
    async fn transactions(&mut self, stream: &mut ClientStream, first: u64, caps: Caps) {
        let pipelining = self.sh.cfg.pipelining && caps.pipelining;
        let per_conn = u64::from(self.sh.cfg.messages_per_connection);
        let mut cur = first;
        let mut sent = 0u64;
        // Set when the current ticket's envelope already went out with the previous end of data.
        let mut envelope_at: Option<Instant> = None;
        loop {
            sent += 1;
            match self
                .envelope(stream, cur, pipelining, envelope_at.take())
                .await
            {
                Err(f) => {
                    self.fail(f);
                    self.finish(Outcome::Error);
                    return;
                }
                Ok(Some(rejected)) => {
                    self.finish(rejected);
                    if self.rset(stream).await.is_err() {
                        return;
                    }
                    let more = per_conn == 0 || sent < per_conn;
                    match more.then(|| self.sh.claim()).flatten() {
                        Some(n) => {
                            if let Some(due) = self.sh.due(n) {
                                tokio::time::sleep_until(due.into()).await;
                            }
                            cur = n;
                            continue;
                        }
                        None => {
                            let _ = self.quit(stream).await;
                            return;
                        }
                    }
                }
                Ok(None) => {}
            }
            // 354 received: end of data, plus (pipelining) the next envelope or QUIT.
            let more = per_conn == 0 || sent < per_conn;
            let next = more.then(|| self.sh.claim()).flatten();
            self.wbuf.clear();
            self.push_body(cur);
            let mut quit_sent = false;
            let mut merged = false;
            if pipelining {
                match next {
                    Some(n) if self.sh.due(n).is_none_or(|d| d <= Instant::now()) => {
                        self.push_envelope(n);
                        merged = true;
                        self.stats.borrow_mut().counts.envelopes_merged += 1;
                    }
                    Some(_) => {}
                    None => {
                        self.wbuf.extend_from_slice(b"QUIT\r\n");
                        quit_sent = true;
                    }
                }
            }
            let t_data = Instant::now();
            let res = match self.flush(stream).await {
                Ok(()) => self.read_reply(stream).await.map(|r| r.code),
                Err(f) => Err(f),
            };
            match res {
                Ok(code) => {
                    self.stats
                        .borrow_mut()
                        .data
                        .saturating_record(t_data.elapsed().as_micros() as u64);
                    self.finish(class(code));
                    if code == 421 {
                        // The server is closing: the pipelined next ticket goes to a new connection.
                        self.carry = next;
                        return;
                    }
                }
                Err(f) => {
                    self.fail(f);
                    self.finish(Outcome::Error);
                    self.carry = next;
                    return;
                }
            }
            let Some(n) = next else {
                if quit_sent {
                    let _ = self.read_reply(stream).await;
                } else {
                    let _ = self.quit(stream).await;
                }
                return;
            };
            if merged {
                envelope_at = Some(t_data);
            } else if let Some(due) = self.sh.due(n) {
                tokio::time::sleep_until(due.into()).await;
            }
            cur = n;
        }
    }

    /// Sends (unless already sent at `sent_at`) and reads the envelope of ticket `n`.
    /// `Ok(None)`: DATA got 354. `Ok(Some(outcome))`: refused, RSET needed.
    async fn envelope(
        &mut self,
        stream: &mut ClientStream,
        n: u64,
        pipelining: bool,
        sent_at: Option<Instant>,
    ) -> Result<Option<Outcome>, Fail> {
        let rcpts = self.sh.cfg.rcpts_per_message;
        if pipelining {
            let t_mail = match sent_at {
                Some(t) => t,
                None => {
                    self.wbuf.clear();
                    self.push_envelope(n);
                    let t = Instant::now();
                    self.flush(stream).await?;
                    t
                }
            };
            let mail = self.read_reply(stream).await?.code;
            self.stats
                .borrow_mut()
                .mail
                .saturating_record(t_mail.elapsed().as_micros() as u64);
            let mut first_fail = (class(mail) != Outcome::Ok).then(|| class(mail));
            let mut any_rcpt = false;
            for _ in 0..rcpts {
                let code = self.read_reply(stream).await?.code;
                any_rcpt |= self.count_rcpt(code);
                if !any_rcpt && first_fail.is_none() && class(code) != Outcome::Ok {
                    first_fail = Some(class(code));
                }
            }
            let data = self.read_reply(stream).await?.code;
            if data == 354 {
                return Ok(None);
            }
            Ok(Some(if any_rcpt && mail / 100 == 2 {
                class(data)
            } else {
                first_fail.unwrap_or(class(data))
            }))
        } else {
            self.wbuf.clear();
            let _ = write!(self.wbuf, "MAIL FROM:<{}>\r\n", self.sh.cfg.mail_from);
            let t_mail = Instant::now();
            self.flush(stream).await?;
            let mail = self.read_reply(stream).await?.code;
            self.stats
                .borrow_mut()
                .mail
                .saturating_record(t_mail.elapsed().as_micros() as u64);
            if mail / 100 != 2 {
                return Ok(Some(class(mail)));
            }
            let mut any_rcpt = false;
            let mut last = Outcome::Error;
            for r in 0..rcpts {
                self.wbuf.clear();
                self.push_rcpt(n, r);
                self.flush(stream).await?;
                let code = self.read_reply(stream).await?.code;
                any_rcpt |= self.count_rcpt(code);
                last = class(code);
            }
            if !any_rcpt {
                return Ok(Some(last));
            }
            self.wbuf.clear();
            self.wbuf.extend_from_slice(b"DATA\r\n");
            self.flush(stream).await?;
            let data = self.read_reply(stream).await?.code;
            Ok(if data == 354 { None } else { Some(class(data)) })
        }
    }

    fn count_rcpt(&self, code: u16) -> bool {
        let mut s = self.stats.borrow_mut();
        match class(code) {
            Outcome::Ok => s.counts.rcpts_2xx += 1,
            Outcome::Temp => s.counts.rcpts_4xx += 1,
            Outcome::Perm => s.counts.rcpts_5xx += 1,
            Outcome::Error => {}
        }
        code / 100 == 2
    }

    fn push_envelope(&mut self, n: u64) {
        let _ = write!(self.wbuf, "MAIL FROM:<{}>\r\n", self.sh.cfg.mail_from);
        for r in 0..self.sh.cfg.rcpts_per_message {
            self.push_rcpt(n, r);
        }
        self.wbuf.extend_from_slice(b"DATA\r\n");
    }

    fn push_rcpt(&mut self, n: u64, r: u32) {
        let domain = self.sh.pick_domain(&mut self.rng);
        let _ = write!(self.wbuf, "RCPT TO:<u{}.{}@{}>\r\n", n % 1000, r, domain);
    }

    /// Headers (with the load id), filler body to about the chosen size, and the final dot.
    fn push_body(&mut self, n: u64) {
        let size = self.sh.pick_size(&mut self.rng);
        let start = self.wbuf.len();
        let id = LoadId {
            run: self.sh.run_id,
            n,
            injected_unix_us: unix_now_us(),
        };
        write_header(&mut self.wbuf, &id);
        let _ = write!(
            self.wbuf,
            "From: <{}>\r\nTo: undisclosed-recipients:;\r\nSubject: petrel load {n}\r\nMessage-ID: <{:016x}.{n}@petrel-load.test>\r\n\r\n",
            self.sh.cfg.mail_from, self.sh.run_id
        );
        let want = size.saturating_sub(self.wbuf.len() - start + 3);
        let lines = want.div_ceil(FILLER_LINE_BYTES).max(1);
        let body = (lines * FILLER_LINE_BYTES).min(self.sh.filler.len());
        self.wbuf.extend_from_slice(&self.sh.filler[..body]);
        self.wbuf.extend_from_slice(b".\r\n");
    }

    async fn rset(&mut self, stream: &mut ClientStream) -> Result<(), Fail> {
        self.wbuf.clear();
        self.wbuf.extend_from_slice(b"RSET\r\n");
        self.flush(stream).await?;
        let r = self.read_reply(stream).await?;
        if r.code / 100 == 2 {
            Ok(())
        } else {
            Err(Fail::Protocol)
        }
    }

    async fn quit(&mut self, stream: &mut ClientStream) -> Result<(), Fail> {
        self.wbuf.clear();
        self.wbuf.extend_from_slice(b"QUIT\r\n");
        self.flush(stream).await?;
        self.read_reply(stream).await.map(|_| ())
    }

    async fn flush(&mut self, stream: &mut ClientStream) -> Result<(), Fail> {
        let io = async {
            stream.write_all(&self.wbuf).await?;
            stream.flush().await
        };
        match tokio::time::timeout(self.sh.io_timeout, io).await {
            Ok(Ok(())) => {
                self.stats.borrow_mut().counts.bytes_sent += self.wbuf.len() as u64;
                Ok(())
            }
            Ok(Err(_)) => Err(Fail::Io),
            Err(_) => Err(Fail::Timeout),
        }
    }

    /// Reads one complete (possibly multi-line) reply.
    async fn read_reply(&mut self, stream: &mut ClientStream) -> Result<Reply, Fail> {
        loop {
            let start = self.rpos;
            let mut pos = start;
            while let Some(end) = next_line_end(&self.rbuf, pos) {
                let line = &self.rbuf[pos..end];
                pos = end;
                let code = parse_code(line).ok_or(Fail::Protocol)?;
                if line.get(3) == Some(&b'-') {
                    continue;
                }
                self.rpos = end;
                return Ok(Reply { code, start, end });
            }
            if self.rpos > 0 {
                self.rbuf.drain(..self.rpos);
                self.rpos = 0;
            }
            if self.rbuf.len() > REPLY_BYTES_MAX {
                return Err(Fail::Protocol);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(READ_CHUNK_BYTES);
            }
            match tokio::time::timeout(self.sh.io_timeout, stream.read_buf(&mut self.rbuf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Fail::Io),
                Ok(Ok(_)) => {}
                Err(_) => return Err(Fail::Timeout),
            }
        }
    }
}

fn parse_code(line: &[u8]) -> Option<u16> {
    let d = line.get(..3)?;
    if !d.iter().all(u8::is_ascii_digit)
        || !matches!(line.get(3), Some(b' ' | b'-' | b'\r' | b'\n'))
    {
        return None;
    }
    Some(u16::from(d[0] - b'0') * 100 + u16::from(d[1] - b'0') * 10 + u16::from(d[2] - b'0'))
}
