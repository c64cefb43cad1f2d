//! The scripted server's side of one SMTP connection (blocking std I/O, optional rustls).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Mutex;

use crate::smtp_server::{Log, RcptAction, Script, Txn};

/// Longest line the server accepts (a bound that keeps a bad client from eating memory).
const LINE_MAX_BYTES: usize = 1 << 20;
/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes of the client's hello read (and ignored) before a broken-TLS server answers garbage.
const CLIENT_HELLO_PEEK_BYTES: usize = 512;
/// The name the server gives itself.
const HOSTNAME: &str = "mx.test.local";

enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
    Closed,
}

impl Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
            Conn::Closed => Ok(0),
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(data),
            Conn::Tls(s) => s.write_all(data).and_then(|_| s.flush()),
            Conn::Closed => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    /// Hangs up at once (a fault the script asked for).
    fn hang_up(&mut self) {
        if let Conn::Plain(s) = self {
            let _ = s.shutdown(Shutdown::Both);
        }
        *self = Conn::Closed;
    }
}

/// Whether the session goes on after a command.
enum Next {
    Continue,
    Hangup,
}

type R = std::io::Result<Next>;

pub(crate) struct Session<'a> {
    conn: Conn,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    script: &'a Script,
    log: &'a Mutex<Log>,
    tls: bool,
    txn: Option<Txn>,
    /// MAIL commands read since the server last waited for the client.
    burst: usize,
    /// The connection was counted closed at QUIT (see [`Session::run`]).
    counted_closed: bool,
    /// The client's address, recorded in each transaction.
    peer: Option<SocketAddr>,
    /// The name of the client's last EHLO or HELO, recorded in each transaction.
    helo: String,
}

impl<'a> Session<'a> {
    pub(crate) fn new(stream: TcpStream, script: &'a Script, log: &'a Mutex<Log>) -> Session<'a> {
        Session {
            peer: stream.peer_addr().ok(),
            helo: String::new(),
            conn: Conn::Plain(stream),
            buf: Vec::new(),
            script,
            log,
            tls: false,
            txn: None,
            burst: 0,
            counted_closed: false,
        }
    }

    /// Runs the dialogue; true when the connection was already counted closed, at QUIT:
    /// before the 221, so a client that waits for it and connects again is never seen with
    /// both connections open (the peak a connection-limit test reads).
    pub(crate) fn run(mut self) -> bool {
        let _ = self.dialogue();
        self.counted_closed
    }

    fn log(&self) -> std::sync::MutexGuard<'a, Log> {
        self.log.lock().expect("SMTP test server log")
    }

    fn reply(&mut self, line: &str) -> std::io::Result<()> {
        self.conn.write(format!("{line}\r\n").as_bytes())
    }

    /// Reads more bytes into `buf`; false at EOF.
    fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        let n = self.conn.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Next line without CRLF; None at EOF.
    fn line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            if self.buf.len() > LINE_MAX_BYTES {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    fn dialogue(&mut self) -> std::io::Result<()> {
        if self.script.silent {
            let mut sink = [0u8; CLIENT_HELLO_PEEK_BYTES];
            while self.conn.read(&mut sink)? > 0 {}
            return Ok(());
        }
        let greeting = self.script.greeting.clone();
        let greeting = greeting.unwrap_or_else(|| format!("220 {HOSTNAME} ESMTP test server"));
        self.reply(&greeting)?;
        loop {
            if self.buf.is_empty() {
                self.burst = 0; // the next read waits for the client: a new burst
            }
            let Some(line) = self.line()? else {
                return Ok(());
            };
            let line = String::from_utf8_lossy(&line).into_owned();
            let prefix = if self.tls { "tls:" } else { "" };
            self.log().commands.push(format!("{prefix}{line}"));
            if let Next::Hangup = self.command(&line)? {
                return Ok(());
            }
        }
    }

    fn command(&mut self, line: &str) -> R {
        let upper = line.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or("");
        let script = self.script;
        if verb == "EHLO" || verb == "HELO" {
            self.helo = line.get(5..).unwrap_or("").trim().to_string();
        }
        match verb {
            "EHLO" if script.reject_ehlo => self.reply("502 5.5.2 EHLO not supported")?,
            "EHLO" => self.ehlo()?,
            "HELO" => self.reply(&format!("250 {HOSTNAME}"))?,
            "STARTTLS" if script.starttls_injection => {
                self.conn.write(b"220 2.0.0 Ready\r\n250 injected\r\n")?;
                return Ok(Next::Hangup);
            }
            "STARTTLS" if script.broken_tls => {
                self.reply("220 2.0.0 Ready to start TLS")?;
                let mut client_hello = [0u8; CLIENT_HELLO_PEEK_BYTES];
                let _ = self.conn.read(&mut client_hello)?;
                self.reply("this is not a TLS server hello")?;
                return Ok(Next::Hangup);
            }
            "STARTTLS" if script.tls.is_some() && !self.tls => return self.starttls(),
            "MAIL" => self.mail(line)?,
            "RCPT" => return self.rcpt(line),
            "BDAT" if script.chunking => return self.bdat(&upper),
            "DATA" => return self.data(),
            "RSET" | "NOOP" => {
                if verb == "RSET" {
                    self.txn = None;
                }
                self.reply("250 2.0.0 Ok")?;
            }
            "QUIT" => {
                self.log().connections_open -= 1;
                self.counted_closed = true;
                self.reply("221 2.0.0 Bye")?;
                return Ok(Next::Hangup);
            }
            _ => self.reply("502 5.5.2 Error: command not recognized")?,
        }
        Ok(Next::Continue)
    }

    fn ehlo(&mut self) -> std::io::Result<()> {
        let script = self.script;
        let mut lines = vec![HOSTNAME.to_string()];
        if script.pipelining {
            lines.push("PIPELINING".into());
        }
        if script.chunking {
            lines.push("CHUNKING".into());
        }
        if let Some(size) = script.size {
            lines.push(format!("SIZE {size}"));
        }
        lines.push("8BITMIME".into());
        if script.dsn {
            lines.push("DSN".into());
        }
        let offers_tls = script.tls.is_some() || script.broken_tls || script.starttls_injection;
        if offers_tls && !self.tls {
            lines.push("STARTTLS".into());
        }
        lines.push("HELP".into());
        let last = lines.len() - 1;
        let mut out = String::new();
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.push_str(&format!("250{sep}{l}\r\n"));
        }
        self.conn.write(out.as_bytes())
    }

    fn starttls(&mut self) -> R {
        self.reply("220 2.0.0 Ready to start TLS")?;
        let Conn::Plain(mut stream) = std::mem::replace(&mut self.conn, Conn::Closed) else {
            return Ok(Next::Hangup);
        };
        let config = self
            .script
            .tls
            .clone()
            .expect("STARTTLS offered only with a config");
        let mut tls = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
        while tls.is_handshaking() {
            if tls.complete_io(&mut stream).is_err() {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
        }
        self.conn = Conn::Tls(Box::new(rustls::StreamOwned::new(tls, stream)));
        self.tls = true;
        self.buf.clear();
        self.txn = None;
        Ok(Next::Continue)
    }

    fn mail(&mut self, line: &str) -> std::io::Result<()> {
        let pipelined = self
            .buf
            .windows(5)
            .any(|w| w.eq_ignore_ascii_case(b"DATA\r") || w.eq_ignore_ascii_case(b"BDAT "));
        self.burst += 1;
        {
            let mut log = self.log();
            log.pipelined_mail.push(pipelined);
            log.mails_per_burst_max = log.mails_per_burst_max.max(self.burst);
        }
        if let Some(reply) = self.script.mail_reply.clone() {
            return self.reply(&reply);
        }
        let (mail_from, mail_params) = path_and_params(line);
        self.txn = Some(Txn {
            mail_from,
            mail_params,
            tls: self.tls,
            peer: self.peer,
            helo: self.helo.clone(),
            ..Txn::default()
        });
        self.reply("250 2.1.0 Ok")
    }

    fn rcpt(&mut self, line: &str) -> R {
        let (addr, params) = path_and_params(line);
        if self.txn.is_none() {
            self.reply("503 5.5.1 Error: need MAIL command")?;
            return Ok(Next::Continue);
        }
        let seen = {
            let mut log = self.log();
            let n = log.rcpt_seen.entry(addr.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let reply = self
            .script
            .rcpt_rules
            .iter()
            .find_map(|rule| match &rule.action {
                RcptAction::Reply(reply)
                    if rule.address.matches(&addr) && (!rule.first_only || seen == 1) =>
                {
                    Some(reply.clone())
                }
                _ => None,
            });
        if let Some(reply) = reply {
            self.reply(&reply)?;
            if reply.starts_with("421") {
                // RFC 5321 §3.8: the server closes after 421.
                self.conn.hang_up();
                return Ok(Next::Hangup);
            }
            return Ok(Next::Continue);
        }
        if let Some(txn) = self.txn.as_mut() {
            txn.rcpts.push(addr);
            txn.rcpt_params.push(params);
        }
        self.reply("250 2.1.5 Ok")?;
        Ok(Next::Continue)
    }

    /// DATA bytes after which this transaction is cut off: the script's limit, or after the
    /// first line when a cut-data rule holds for one of its recipients.
    fn cut_after_bytes(&self) -> Option<usize> {
        let rcpts = self.txn.as_ref().map_or(&[][..], |t| t.rcpts.as_slice());
        let mut log = self.log();
        for rule in &self.script.rcpt_rules {
            let RcptAction::CutData = rule.action else {
                continue;
            };
            for r in rcpts.iter().filter(|r| rule.address.matches(r)) {
                if !rule.first_only || log.data_cut.insert(r.clone()) {
                    return Some(0);
                }
            }
        }
        self.script.drop_in_data_after_bytes
    }

    /// `BDAT n [LAST]`: reads exactly n bytes (always, as RFC 3030 requires), then answers.
    fn bdat(&mut self, upper: &str) -> R {
        let mut words = upper.split_ascii_whitespace().skip(1);
        let Some(n) = words.next().and_then(|n| n.parse::<usize>().ok()) else {
            self.reply("501 5.5.4 Syntax: BDAT size [LAST]")?;
            return Ok(Next::Continue);
        };
        let last = words.next() == Some("LAST");
        let cut = self.cut_after_bytes();
        while self.buf.len() < n {
            if !self.fill()? {
                return Ok(Next::Hangup);
            }
            if cut.is_some_and(|limit| self.buf.len() > limit) {
                self.conn.hang_up();
                return Ok(Next::Hangup);
            }
        }
        let content: Vec<u8> = self.buf.drain(..n).collect();
        let Some(txn) = self.txn.as_mut() else {
            self.reply("503 5.5.1 Error: need MAIL command")?;
            return Ok(Next::Continue);
        };
        if txn.rcpts.is_empty() {
            self.txn = None;
            self.reply("554 5.5.1 Error: no valid recipients")?;
            return Ok(Next::Continue);
        }
        txn.data.extend_from_slice(&content);
        if !last {
            self.reply("250 2.0.0 Ok: chunk")?;
            return Ok(Next::Continue);
        }
        self.accept_message()
    }

    fn data(&mut self) -> R {
        if self.txn.as_ref().is_none_or(|t| t.rcpts.is_empty()) {
            self.reply("554 5.5.1 Error: no valid recipients")?;
            return Ok(Next::Continue);
        }
        let cut = self.cut_after_bytes();
        self.reply("354 End data with <CR><LF>.<CR><LF>")?;
        let mut data = Vec::new();
        let mut received = 0usize;
        loop {
            let Some(line) = self.line()? else {
                return Ok(Next::Hangup);
            };
            received += line.len() + 2;
            if cut.is_some_and(|limit| received > limit) {
                self.conn.hang_up();
                return Ok(Next::Hangup);
            }
            if line == b"." {
                break;
            }
            let line = line.strip_prefix(b".").unwrap_or(&line);
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
        if let Some(txn) = self.txn.as_mut() {
            txn.data = data;
        }
        self.accept_message()
    }

    /// Logs the finished transaction and answers 250, or answers the script's DATA reply.
    fn accept_message(&mut self) -> R {
        let txn = self.txn.take().expect("a transaction with recipients");
        if let Some(reply) = self.script.data_reply.clone() {
            self.reply(&reply)?;
            return Ok(Next::Continue);
        }
        self.log().transactions.push(txn);
        self.reply("250 2.0.0 Ok: queued as TEST")?;
        if self.script.close_after_first_message {
            return Ok(Next::Hangup);
        }
        Ok(Next::Continue)
    }
}

/// "MAIL FROM:<a@b> SIZE=10" -> ("a@b", "SIZE=10").
fn path_and_params(line: &str) -> (String, String) {
    let start = line.find('<').map_or(line.len(), |i| i + 1);
    let end = line[start..].find('>').map_or(line.len(), |i| start + i);
    let addr = line.get(start..end).unwrap_or("").to_string();
    let params = line.get(end + 1..).unwrap_or("").trim().to_string();
    (addr, params)
}
