//! A small, real SMTP server for the client tests: std::net threads, optional STARTTLS
//! (rustls), optional PIPELINING and SIZE, scripted replies per recipient, a mode that drops the
//! connection in the middle of DATA and one that never answers. It records what it received.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest line the test server accepts (it is a test; the bound keeps a bad client from
/// eating memory).
const LINE_MAX_BYTES: usize = 1 << 20;
/// Connections the test server handles before it stops accepting.
const CONNECTIONS_MAX: usize = 64;

#[derive(Clone, Default)]
pub struct ServerOpts {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub pipelining: bool,
    /// Offer CHUNKING and take BDAT (RFC 3030).
    pub chunking: bool,
    pub size: Option<u64>,
    /// Recipient -> full reply line (without CRLF), e.g. "550 5.1.1 no such user".
    pub rcpt_replies: HashMap<String, String>,
    /// Close the connection after this many DATA bytes.
    pub drop_in_data_after_bytes: Option<usize>,
    /// Accept connections but never send a byte.
    pub silent: bool,
    /// Answer EHLO with 502 (the client must fall back to HELO).
    pub reject_ehlo: bool,
    /// Reply to every MAIL with this line instead of 250 (no transaction starts).
    pub mail_reply: Option<String>,
    /// Close the connection, without a word, right after the first message is accepted (an
    /// idle timeout on the server side).
    pub close_after_first_message: bool,
    /// Greeting line instead of "220 ..." (e.g. "554 5.7.1 no service").
    pub greeting: Option<String>,
    /// Answer STARTTLS with 220, then send plaintext garbage instead of a TLS handshake.
    pub broken_tls: bool,
    /// Answer STARTTLS with 220 and, in the same write, a plaintext line that would be
    /// injected into the TLS session (CVE-2011-0411 style).
    pub starttls_injection: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub mail_from: String,
    pub mail_params: String,
    pub rcpts: Vec<String>,
    /// The message after removing dot-stuffing, with its final CRLF.
    pub data: Vec<u8>,
    pub tls: bool,
}

#[derive(Default, Debug)]
pub struct Log {
    /// Every command line received, in order, prefixed "tls:" after STARTTLS.
    pub commands: Vec<String>,
    pub transactions: Vec<Txn>,
    /// For each MAIL: whether the DATA (or BDAT) command had already arrived in the same read.
    pub pipelined_mail: Vec<bool>,
    pub connections: usize,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    pub fn start(opts: ServerOpts) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().take(CONNECTIONS_MAX) {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                log2.lock().unwrap().connections += 1;
                let (opts, log) = (opts.clone(), log2.clone());
                std::thread::spawn(move || {
                    let _ = Session::new(stream, opts, log).run();
                });
            }
        });
        TestServer { addr, log, stop }
    }

    pub fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

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
}

struct Session {
    conn: Conn,
    buf: Vec<u8>,
    opts: ServerOpts,
    log: Arc<Mutex<Log>>,
    tls: bool,
    txn: Option<Txn>,
}

type R = std::io::Result<()>;

impl Session {
    fn new(stream: TcpStream, opts: ServerOpts, log: Arc<Mutex<Log>>) -> Session {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Session {
            conn: Conn::Plain(stream),
            buf: Vec::new(),
            opts,
            log,
            tls: false,
            txn: None,
        }
    }

    fn reply(&mut self, line: &str) -> R {
        self.conn.write(format!("{line}\r\n").as_bytes())
    }

    /// Next line without CRLF; None at EOF.
    fn line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
                line.truncate(line.len() - 1);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            if self.buf.len() > LINE_MAX_BYTES {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.conn.read(&mut chunk)?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn run(mut self) -> R {
        if self.opts.silent {
            let mut sink = [0u8; 1024];
            while self.conn.read(&mut sink)? > 0 {}
            return Ok(());
        }
        let greeting = self.opts.greeting.clone();
        self.reply(
            greeting
                .as_deref()
                .unwrap_or("220 mx.test.local ESMTP test server"),
        )?;
        while let Some(line) = self.line()? {
            let line = String::from_utf8_lossy(&line).into_owned();
            let prefix = if self.tls { "tls:" } else { "" };
            self.log
                .lock()
                .unwrap()
                .commands
                .push(format!("{prefix}{line}"));
            let upper = line.to_ascii_uppercase();
            let verb = upper.split(' ').next().unwrap_or("").to_string();
            match verb.as_str() {
                "EHLO" if self.opts.reject_ehlo => self.reply("502 5.5.2 EHLO not supported")?,
                "EHLO" => self.ehlo()?,
                "HELO" => self.reply("250 mx.test.local")?,
                "STARTTLS" if self.opts.starttls_injection => {
                    self.conn.write(b"220 2.0.0 Ready\r\n250 injected\r\n")?;
                    return Ok(());
                }
                "STARTTLS" if self.opts.broken_tls => {
                    self.reply("220 2.0.0 Ready to start TLS")?;
                    let mut client_hello = [0u8; 512];
                    let _ = self.conn.read(&mut client_hello)?;
                    self.reply("this is not a TLS server hello")?;
                    return Ok(());
                }
                "STARTTLS" if self.opts.tls.is_some() && !self.tls => self.starttls()?,
                "MAIL" => self.mail(&line)?,
                "RCPT" => self.rcpt(&line)?,
                "BDAT" if self.opts.chunking => {
                    if !self.bdat(&upper)? {
                        return Ok(());
                    }
                }
                "DATA" => {
                    if !self.data()? {
                        return Ok(());
                    }
                    if self.opts.close_after_first_message
                        && !self.log.lock().unwrap().transactions.is_empty()
                    {
                        return Ok(());
                    }
                }
                "RSET" => {
                    self.txn = None;
                    self.reply("250 2.0.0 Ok")?;
                }
                "QUIT" => {
                    self.reply("221 2.0.0 Bye")?;
                    return Ok(());
                }
                _ => self.reply("502 5.5.2 Error: command not recognized")?,
            }
        }
        Ok(())
    }

    fn ehlo(&mut self) -> R {
        let mut lines = vec!["mx.test.local".to_string()];
        if self.opts.pipelining {
            lines.push("PIPELINING".into());
        }
        if self.opts.chunking {
            lines.push("CHUNKING".into());
        }
        if let Some(size) = self.opts.size {
            lines.push(format!("SIZE {size}"));
        }
        lines.push("8BITMIME".into());
        let offers_tls = self.opts.tls.is_some() || self.opts.broken_tls;
        if (offers_tls || self.opts.starttls_injection) && !self.tls {
            lines.push("STARTTLS".into());
        }
        lines.push("HELP".into());
        let n = lines.len();
        let mut out = String::new();
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.push_str(&format!("250{sep}{l}\r\n"));
        }
        self.conn.write(out.as_bytes())
    }

    fn starttls(&mut self) -> R {
        self.reply("220 2.0.0 Ready to start TLS")?;
        let Conn::Plain(stream) = std::mem::replace(&mut self.conn, Conn::Closed) else {
            return Ok(());
        };
        let config = self.opts.tls.clone().unwrap();
        let mut tls = rustls::ServerConnection::new(config).unwrap();
        let mut stream = stream;
        while tls.is_handshaking() {
            if tls.complete_io(&mut stream).is_err() {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
        }
        self.conn = Conn::Tls(Box::new(rustls::StreamOwned::new(tls, stream)));
        self.tls = true;
        self.buf.clear();
        self.txn = None;
        Ok(())
    }

    fn mail(&mut self, line: &str) -> R {
        let pipelined = self
            .buf
            .windows(5)
            .any(|w| w.eq_ignore_ascii_case(b"DATA\r") || w.eq_ignore_ascii_case(b"BDAT "));
        self.log.lock().unwrap().pipelined_mail.push(pipelined);
        if let Some(reply) = self.opts.mail_reply.clone() {
            return self.reply(&reply);
        }
        let (addr, params) = path_and_params(line);
        self.txn = Some(Txn {
            mail_from: addr,
            mail_params: params,
            tls: self.tls,
            ..Txn::default()
        });
        self.reply("250 2.1.0 Ok")
    }

    fn rcpt(&mut self, line: &str) -> R {
        let (addr, _) = path_and_params(line);
        if self.txn.is_none() {
            return self.reply("503 5.5.1 Error: need MAIL command");
        }
        if let Some(reply) = self.opts.rcpt_replies.get(&addr).cloned() {
            self.reply(&reply)?;
            if reply.starts_with("421") {
                // RFC 5321 §3.8: the server closes after 421.
                if let Conn::Plain(s) = &self.conn {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
                self.conn = Conn::Closed;
            }
            return Ok(());
        }
        if let Some(txn) = self.txn.as_mut() {
            txn.rcpts.push(addr);
        }
        self.reply("250 2.1.5 Ok")
    }

    /// `BDAT n [LAST]`: reads exactly n bytes (always, as RFC 3030 requires), then answers.
    /// Returns false when the connection ended.
    fn bdat(&mut self, upper: &str) -> std::io::Result<bool> {
        let mut words = upper.split_ascii_whitespace().skip(1);
        let Some(n) = words.next().and_then(|n| n.parse::<usize>().ok()) else {
            self.reply("501 5.5.4 Syntax: BDAT size [LAST]")?;
            return Ok(true);
        };
        let last = words.next() == Some("LAST");
        while self.buf.len() < n {
            let mut chunk = [0u8; 16 * 1024];
            let got = self.conn.read(&mut chunk)?;
            if got == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&chunk[..got]);
            if let Some(limit) = self.opts.drop_in_data_after_bytes {
                if self.buf.len() > limit {
                    if let Conn::Plain(s) = &self.conn {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                    self.conn = Conn::Closed;
                    return Ok(false);
                }
            }
        }
        let content: Vec<u8> = self.buf.drain(..n).collect();
        let Some(txn) = self.txn.as_mut() else {
            self.reply("503 5.5.1 Error: need MAIL command")?;
            return Ok(true);
        };
        if txn.rcpts.is_empty() {
            self.txn = None;
            self.reply("554 5.5.1 Error: no valid recipients")?;
            return Ok(true);
        }
        txn.data.extend_from_slice(&content);
        if !last {
            self.reply("250 2.0.0 Ok: chunk")?;
            return Ok(true);
        }
        let txn = self.txn.take().unwrap();
        self.log.lock().unwrap().transactions.push(txn);
        self.reply("250 2.0.0 Ok: queued as TEST")?;
        Ok(true)
    }

    /// Returns false when the connection was dropped on purpose.
    fn data(&mut self) -> std::io::Result<bool> {
        if self.txn.as_ref().is_none_or(|t| t.rcpts.is_empty()) {
            self.reply("554 5.5.1 Error: no valid recipients")?;
            return Ok(true);
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>")?;
        let mut data = Vec::new();
        let mut received = 0usize;
        loop {
            let Some(line) = self.line()? else {
                return Ok(false);
            };
            received += line.len() + 2;
            if let Some(limit) = self.opts.drop_in_data_after_bytes {
                if received > limit {
                    if let Conn::Plain(s) = &self.conn {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                    self.conn = Conn::Closed;
                    return Ok(false);
                }
            }
            if line == b"." {
                break;
            }
            let line = line.strip_prefix(b".").unwrap_or(&line);
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
        let mut txn = self.txn.take().unwrap();
        txn.data = data;
        self.log.lock().unwrap().transactions.push(txn);
        self.reply("250 2.0.0 Ok: queued as TEST")?;
        Ok(true)
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

/// A CA and a leaf certificate for `name` signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

pub fn test_pki(name: &str) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Petrel Test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .unwrap();
    TestPki {
        ca_pem: ca.pem(),
        server_config: Arc::new(config),
    }
}

/// Runs the future made by `g` on a fresh glommio executor thread with a small io_memory
/// (RLIMIT_MEMLOCK is 8 MiB here).
pub fn glommio_run<G, F, T>(g: G) -> T
where
    G: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 << 10)
        .name("test")
        .spawn(g)
        .unwrap()
        .join()
        .unwrap()
}
