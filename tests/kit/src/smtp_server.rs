//! One scripted SMTP server for every test that needs a peer: the outbound client's tests and
//! the delivery shard's sinks.
//!
//! A [`Script`] is plain data: what EHLO offers and which faults to play. The server accepts on
//! loopback with one std thread per connection (so it never shares an executor with the code
//! under test) and records everything in a [`Log`]. Recipient rules match an exact address or a
//! local-part prefix and can fire on the first time only, which is how a sink plays "greylisted
//! once, then accepted" ([`Script::by_local_part`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::smtp_session::Session;

/// Connections the server accepts before it stops accepting (bounds a runaway test).
pub const CONNECTIONS_MAX: usize = 500;
/// How long a session waits for the client's next bytes before it hangs up.
pub const SESSION_READ_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `Drop` waits to connect to its own listener to wake the accept loop.
const WAKE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the server offers and which faults it plays. `Script::default()` is a plain, well-behaved
/// server: no PIPELINING, CHUNKING, SIZE or STARTTLS; 8BITMIME and HELP offered; every command
/// accepted.
#[derive(Clone, Default)]
pub struct Script {
    /// Offer STARTTLS and do the handshake with this config (see [`crate::tls::test_pki`]).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Offer PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// Offer CHUNKING and take BDAT (RFC 3030).
    pub chunking: bool,
    /// Offer SIZE with this limit.
    pub size: Option<u64>,
    /// Offer DSN (RFC 3461); the parameters the client sends are recorded either way
    /// ([`Txn::mail_params`], [`Txn::rcpt_params`]).
    pub dsn: bool,
    /// Greeting line instead of "220 ..." (e.g. "554 5.7.1 no service").
    pub greeting: Option<String>,
    /// Accept connections but never send a byte.
    pub silent: bool,
    /// Answer EHLO with 502 (the client must fall back to HELO).
    pub reject_ehlo: bool,
    /// Reply to every MAIL with this line instead of 250 (no transaction starts).
    pub mail_reply: Option<String>,
    /// Reply to the end of the message (DATA's final dot or BDAT LAST) with this line instead
    /// of 250; the message is not accepted (not logged as a transaction).
    pub data_reply: Option<String>,
    /// Per-recipient behaviour, first match wins; recipients without a match are accepted.
    pub rcpt_rules: Vec<RcptRule>,
    /// Close the connection after this many DATA (or BDAT) bytes.
    pub drop_in_data_after_bytes: Option<usize>,
    /// Close the connection, without a word, right after the first message is accepted (an
    /// idle timeout on the server side).
    pub close_after_first_message: bool,
    /// Answer STARTTLS with 220, then send plaintext garbage instead of a TLS handshake.
    pub broken_tls: bool,
    /// Answer STARTTLS with 220 and, in the same write, a plaintext line that would be
    /// injected into the TLS session (CVE-2011-0411 style).
    pub starttls_injection: bool,
}

/// One recipient rule of a [`Script`].
#[derive(Clone, Debug)]
pub struct RcptRule {
    pub address: AddrMatch,
    pub action: RcptAction,
    /// Fire only the first time the server sees the address (server-wide, across
    /// connections): the RCPT for [`RcptAction::Reply`], the DATA for [`RcptAction::CutData`].
    /// Afterwards the recipient is accepted normally.
    pub first_only: bool,
}

/// Which recipients a [`RcptRule`] applies to (addresses compare case-sensitively, as sent).
#[derive(Clone, Debug)]
pub enum AddrMatch {
    Exact(String),
    /// The address starts with this (e.g. "temp" matches "temp1@dest.example").
    LocalPartPrefix(String),
}

/// What a [`RcptRule`] does.
#[derive(Clone, Debug)]
pub enum RcptAction {
    /// Answer RCPT with this full reply line (without CRLF); after a 421 the server closes the
    /// connection, as RFC 5321 §3.8 says.
    Reply(String),
    /// Accept the recipient; the DATA that carries it is cut off after its first line (the
    /// server closes the socket mid-message).
    CutData,
}

impl AddrMatch {
    pub fn matches(&self, address: &str) -> bool {
        match self {
            AddrMatch::Exact(a) => a == address,
            AddrMatch::LocalPartPrefix(p) => address.starts_with(p.as_str()),
        }
    }
}

impl Script {
    /// Adds a rule: answer RCPT for exactly `address` with `reply`, every time.
    pub fn rcpt_reply(mut self, address: &str, reply: &str) -> Script {
        self.rcpt_rules.push(RcptRule {
            address: AddrMatch::Exact(address.into()),
            action: RcptAction::Reply(reply.into()),
            first_only: false,
        });
        self
    }

    /// A sink whose answers depend on the recipient's local part:
    /// - `temp*`: 450 4.2.0 on the first RCPT for that address, 250 afterwards;
    /// - `defer*`: always 450 4.2.0;
    /// - `perm*`: 550 5.1.1;
    /// - `drop*`: the first DATA carrying it is cut off mid-message;
    /// - anything else: 250.
    pub fn by_local_part() -> Script {
        const GREYLISTED: &str = "450 4.2.0 greylisted, try later";
        let rule = |prefix: &str, action: RcptAction, first_only: bool| RcptRule {
            address: AddrMatch::LocalPartPrefix(prefix.into()),
            action,
            first_only,
        };
        Script {
            rcpt_rules: vec![
                rule("temp", RcptAction::Reply(GREYLISTED.into()), true),
                rule("defer", RcptAction::Reply(GREYLISTED.into()), false),
                rule(
                    "perm",
                    RcptAction::Reply("550 5.1.1 no such user".into()),
                    false,
                ),
                rule("drop", RcptAction::CutData, true),
            ],
            ..Script::default()
        }
    }

    /// [`Script::by_local_part`] that also offers PIPELINING and CHUNKING.
    pub fn by_local_part_chunking() -> Script {
        Script {
            pipelining: true,
            chunking: true,
            ..Script::by_local_part()
        }
    }
}

/// One message the server accepted.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub mail_from: String,
    /// The MAIL parameters after the path, e.g. "SIZE=10".
    pub mail_params: String,
    /// The accepted recipients, in order.
    pub rcpts: Vec<String>,
    /// Their RCPT parameters after the path (e.g. "NOTIFY=SUCCESS"), index for index.
    pub rcpt_params: Vec<String>,
    /// The message after removing dot-stuffing (or the BDAT chunks joined), with its final CRLF.
    pub data: Vec<u8>,
    /// Received inside STARTTLS.
    pub tls: bool,
    /// The client's address as this server saw it (its bound source address, for egress tests).
    pub peer: Option<SocketAddr>,
    /// The name the client gave in its last EHLO or HELO on the connection ("" if none).
    pub helo: String,
}

impl Txn {
    /// The message as text (lossy UTF-8), for `contains` checks.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// Everything the server saw, across connections.
#[derive(Debug, Default)]
pub struct Log {
    /// Every command line received, in order, prefixed "tls:" after STARTTLS.
    pub commands: Vec<String>,
    pub transactions: Vec<Txn>,
    /// For each MAIL: whether the DATA (or BDAT) command had already arrived in the same read.
    pub pipelined_mail: Vec<bool>,
    /// Connections accepted so far.
    pub connections: usize,
    /// Connections open now.
    pub connections_open: usize,
    /// Most connections open at once.
    pub connections_peak: usize,
    /// Most MAIL commands read in one burst (the client wrote them before reading a reply).
    pub mails_per_burst_max: usize,
    /// RCPT commands seen per address (for first-only rules).
    pub(crate) rcpt_seen: std::collections::HashMap<String, u32>,
    /// Addresses whose first DATA was cut off already (for first-only rules).
    pub(crate) data_cut: std::collections::HashSet<String>,
}

impl Log {
    /// Accepted messages that name `rcpt` among their recipients.
    pub fn deliveries_to(&self, rcpt: &str) -> usize {
        self.transactions
            .iter()
            .filter(|t| t.rcpts.iter().any(|r| r == rcpt))
            .count()
    }

    /// Accepted messages per client address (egress sources: which address sent how many).
    pub fn transactions_by_peer(&self) -> BTreeMap<IpAddr, usize> {
        let mut out = BTreeMap::new();
        for ip in self
            .transactions
            .iter()
            .filter_map(|t| t.peer)
            .map(|p| p.ip())
        {
            *out.entry(ip).or_insert(0) += 1;
        }
        out
    }
}

/// A running scripted server; dropping it stops accepting.
pub struct SmtpServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl SmtpServer {
    /// Binds 127.0.0.1 on a free port and serves `script` on every connection.
    pub fn start(script: Script) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the SMTP test server");
        let addr = listener.local_addr().expect("its address");
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let script = Arc::new(script);
        let acceptor = std::thread::spawn(move || {
            for stream in listener.incoming().take(CONNECTIONS_MAX) {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                log2.lock().expect("log").connections += 1;
                let (script, log) = (script.clone(), log2.clone());
                std::thread::spawn(move || serve(stream, &script, &log));
            }
        });
        SmtpServer {
            addr,
            log,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// The log, locked: read it, then let go (sessions wait for it meanwhile).
    pub fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().expect("SMTP test server log")
    }

    /// A copy of the accepted messages.
    pub fn received(&self) -> Vec<Txn> {
        self.log().transactions.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.log().connections
    }

    /// Most connections open at once.
    pub fn peak(&self) -> usize {
        self.log().connections_peak
    }

    /// Most MAIL commands read in one burst.
    pub fn mails_per_burst_max(&self) -> usize {
        self.log().mails_per_burst_max
    }

    /// Accepted messages that name `rcpt` among their recipients.
    pub fn deliveries_to(&self, rcpt: &str) -> usize {
        self.log().deliveries_to(rcpt)
    }

    /// Accepted messages per client address.
    pub fn transactions_by_peer(&self) -> BTreeMap<IpAddr, usize> {
        self.log().transactions_by_peer()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the loop sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, WAKE_CONNECT_TIMEOUT);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// One connection: counted open for its whole life (peak), then the dialogue.
fn serve(stream: TcpStream, script: &Script, log: &Mutex<Log>) {
    {
        let mut l = log.lock().expect("log");
        l.connections_open += 1;
        l.connections_peak = l.connections_peak.max(l.connections_open);
    }
    let counted_closed = stream.set_read_timeout(Some(SESSION_READ_TIMEOUT)).is_ok()
        && Session::new(stream, script, log).run();
    if !counted_closed {
        log.lock().expect("log").connections_open -= 1;
    }
}
