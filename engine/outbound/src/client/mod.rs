//! The outbound ESMTP client (RFC 5321) with STARTTLS (RFC 3207), PIPELINING (RFC 2920) and
//! SIZE (RFC 1870), over glommio sockets.

mod bind;
mod io;
pub mod reply;
mod stage;
mod tls;
mod transaction;

use std::net::{IpAddr, SocketAddr};

use io::{with_timeout, Io, Transport};
pub use reply::Reply;
pub use stage::Stage;
pub use transaction::{
    dot_stuff, OutgoingDsn, OutgoingMessage, ADDRESS_MAX_BYTES, BDAT_INLINE_BYTES_MAX,
    DATA_BLOCK_BYTES, DSN_PARAMS_MAX_BYTES, PIPELINE_RCPTS_MAX, PIPELINE_TRANSACTIONS_MAX,
    RCPTS_PER_TRANSACTION_MAX,
};

/// Longest QUIT wait, in milliseconds, whatever `command_timeout_ms` says: the mail is delivered.
pub const QUIT_TIMEOUT_MS_MAX: u64 = 10_000;

/// Whether and how to use STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Never use TLS.
    Disabled,
    /// Use STARTTLS when offered, without verifying the certificate. A failed handshake leaves
    /// the connection unusable: `connect` returns [`ClientError::Tls`] and the caller retries
    /// (a later attempt may choose `Disabled` for that host).
    #[default]
    Opportunistic,
    /// Demand STARTTLS and a certificate valid for the MX name, else [`ClientError::TlsRequired`]
    /// or [`ClientError::Tls`] (both temporary).
    Required,
}

/// Client settings; the timeouts default to RFC 5321 §4.5.3.2.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    /// The egress source address connections bind to before connecting; `None`: the kernel's
    /// choice. See [`SmtpConnection::connect_from`].
    pub source_addr: Option<IpAddr>,
    pub tls: TlsMode,
    /// PEM certificates trusted in `Required` mode besides the webpki roots (tests, private CAs).
    pub extra_root_certs_pem: Vec<Vec<u8>>,
    /// TCP connect, in milliseconds (default 30 s).
    pub connect_timeout_ms: u64,
    /// Waiting for the 220 greeting, in milliseconds (default 5 min).
    pub greeting_timeout_ms: u64,
    /// Every other command reply (EHLO, STARTTLS, MAIL, RCPT, RSET, DATA's 354), in milliseconds
    /// (default 5 min; RFC 5321 suggests 2 min for DATA's 354, we use the larger one).
    pub command_timeout_ms: u64,
    /// Writing one block of the message, in milliseconds (default 3 min).
    pub data_block_timeout_ms: u64,
    /// Waiting for the reply after the final ".", in milliseconds (default 10 min).
    pub data_done_timeout_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            helo_name: "localhost".into(),
            source_addr: None,
            tls: TlsMode::Opportunistic,
            extra_root_certs_pem: Vec::new(),
            connect_timeout_ms: 30_000,
            greeting_timeout_ms: 300_000,
            command_timeout_ms: 300_000,
            data_block_timeout_ms: 180_000,
            data_done_timeout_ms: 600_000,
        }
    }
}

/// The negotiated TLS session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. "TLSv1.3".
    pub version: String,
    /// e.g. "TLS13_AES_128_GCM_SHA256".
    pub cipher: String,
}

/// What the server said to one RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    Accepted,
    Rejected(Reply),
}

/// The result of one transaction; SMTP replies are data, classified by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionOutcome {
    /// One per recipient given, same order. When MAIL was rejected, each holds that reply.
    pub rcpts: Vec<RcptOutcome>,
    /// The reply to the message (after "."), or DATA's own rejection; `None` when MAIL failed
    /// or no recipient was accepted.
    pub data: Option<Reply>,
    /// Set when MAIL FROM was rejected (or the message exceeds the peer's SIZE: 552 5.3.4).
    pub mail_rejected: Option<Reply>,
}

/// Client failures; all temporary (the connection is unusable afterwards).
///
/// `stage` says where in the dialogue it happened ([`Stage`]). On a reused connection, `Dropped`
/// at [`Stage::Reuse`] or [`Stage::Rset`] ([`Stage::is_before_transaction`]) means the peer
/// closed it while idle: nothing of this transaction was accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// `kind` is the socket error's kind: a refused connect (RST) and an unreachable host are
    /// classified differently (see `petrel-bounce`'s local failures).
    #[error("connect to {addr} failed: {reason}")]
    Connect {
        addr: SocketAddr,
        kind: std::io::ErrorKind,
        reason: String,
    },
    #[error("timeout during {stage}")]
    Timeout { stage: Stage },
    #[error("TLS failure: {reason}")]
    Tls { reason: String },
    #[error("TLS required but not possible: {reason}")]
    TlsRequired { reason: String },
    #[error("protocol error during {stage}: {reason}")]
    Protocol { stage: Stage, reason: String },
    /// The server refused us at the greeting, EHLO/HELO or STARTTLS (e.g. 554 no service).
    #[error("rejected during {stage}: {reply}")]
    Rejected { stage: Stage, reply: Reply },
    #[error("connection dropped during {stage}")]
    Dropped { stage: Stage },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// Always false: a client failure says nothing final about the recipient.
    pub fn is_permanent(&self) -> bool {
        false
    }
}

/// What the server offered in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Capabilities {
    pipelining: bool,
    /// CHUNKING (RFC 3030): BDAT instead of DATA.
    chunking: bool,
    starttls: bool,
    eightbitmime: bool,
    /// DSN (RFC 3461): NOTIFY, ORCPT, RET and ENVID may be sent.
    dsn: bool,
    /// SIZE parameter in bytes; `None` when not offered or 0 (no limit).
    size_bytes_max: Option<u64>,
}

impl Capabilities {
    /// Parses the EHLO reply's lines after the first (keywords are case-insensitive).
    fn parse(ehlo: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in ehlo.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "CHUNKING" => caps.chunking = true,
                "STARTTLS" => caps.starttls = true,
                "8BITMIME" => caps.eightbitmime = true,
                "DSN" => caps.dsn = true,
                "SIZE" => {
                    caps.size_bytes_max = words
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .filter(|n| *n > 0);
                }
                _ => {}
            }
        }
        caps
    }
}

/// One SMTP connection, ready for transactions. `!Send`: lives on one glommio executor.
pub struct SmtpConnection {
    io: Io,
    caps: Capabilities,
    tls: Option<TlsInfo>,
    cfg: Timeouts,
    /// Transactions attempted on this connection; from the second on, RSET goes first.
    transactions: u64,
    /// Set after a 421 or an error mid-transaction: the connection must not be reused.
    broken: bool,
}

/// The timeouts, copied out of [`ClientConfig`] (milliseconds).
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    command_ms: u64,
    data_block_ms: u64,
    data_done_ms: u64,
}

/// TCP connects to a next hop that failed, by `kind`: `refused`, `timeout` (no answer within
/// `connect_timeout_ms`), `unreachable` or `other` (the handshakes that fail after TCP
/// connected are `petrel_outbound_connect_failures_total`).
pub const TCP_CONNECT_FAILURES: &str = "petrel_outbound_tcp_connect_failures_total";

/// The `kind` label of [`TCP_CONNECT_FAILURES`] for a failed connect.
pub fn tcp_failure_kind(e: &ClientError) -> &'static str {
    use std::io::ErrorKind;
    match e {
        ClientError::Timeout { .. } => "timeout",
        ClientError::Connect { kind, .. } => match kind {
            ErrorKind::ConnectionRefused => "refused",
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => "unreachable",
            ErrorKind::TimedOut => "timeout",
            _ => "other",
        },
        _ => "other",
    }
}

impl SmtpConnection {
    /// Connects, reads the greeting, EHLO (HELO on 5xx), STARTTLS per `cfg.tls`.
    ///
    /// With `TlsMode::Opportunistic`, a failed TLS handshake returns [`ClientError::Tls`]: the
    /// connection is dead by then (the server is mid-handshake), so falling back to plaintext
    /// means a new connection, which is the caller's decision.
    pub async fn connect(
        addr: SocketAddr,
        mx_name: &str,
        cfg: &ClientConfig,
    ) -> Result<SmtpConnection, ClientError> {
        SmtpConnection::connect_from(addr, mx_name, cfg, cfg.source_addr, None).await
    }

    /// As [`SmtpConnection::connect`], under DANE (RFC 7672): STARTTLS is required whatever
    /// `cfg.tls` says, and the certificate must match one of `tlsa` (usable records, see
    /// [`crate::dane::DaneVerifier`]; none: TLS without authentication). A missing STARTTLS
    /// is [`ClientError::TlsRequired`], a certificate matching no record [`ClientError::TlsRequired`]
    /// too (the handshake's `InvalidData`).
    pub async fn connect_dane(
        addr: SocketAddr,
        mx_name: &str,
        cfg: &ClientConfig,
        tlsa: std::sync::Arc<[crate::dane::Tlsa]>,
    ) -> Result<SmtpConnection, ClientError> {
        SmtpConnection::connect_from(addr, mx_name, cfg, cfg.source_addr, Some(tlsa)).await
    }

    /// The general connect: [`SmtpConnection::connect`], or with `tlsa`
    /// [`SmtpConnection::connect_dane`], from the egress source address `source` when given
    /// (the socket is bound to it before connecting; see `bind.rs`). A source of the other
    /// address family than `addr` fails at once with [`ClientError::Connect`]
    /// (`InvalidInput`): an IPv4 source cannot reach an IPv6 MX.
    pub async fn connect_from(
        addr: SocketAddr,
        mx_name: &str,
        cfg: &ClientConfig,
        source: Option<IpAddr>,
        dane: Option<std::sync::Arc<[crate::dane::Tlsa]>>,
    ) -> Result<SmtpConnection, ClientError> {
        // Under DANE, TLS is required; the DANE verifier replaces the web PKI one.
        let dane_cfg;
        let cfg = match dane {
            Some(_) => {
                dane_cfg = ClientConfig {
                    tls: TlsMode::Required,
                    ..cfg.clone()
                };
                &dane_cfg
            }
            None => cfg,
        };
        let connected = with_timeout(cfg.connect_timeout_ms, Stage::Connect, async {
            bind::connect_tcp(addr, source)
                .await
                .map_err(|e| ClientError::Connect {
                    addr,
                    kind: e.kind(),
                    reason: e.to_string(),
                })
        })
        .await;
        let stream = match connected {
            Ok(s) => s,
            Err(e) => {
                metrics::counter!(TCP_CONNECT_FAILURES, "kind" => tcp_failure_kind(&e))
                    .increment(1);
                return Err(e);
            }
        };
        // Replies are small and the body's last block is followed by a wait for the reply:
        // without TCP_NODELAY, Nagle plus the peer's delayed ACK stalls each message ~40 ms.
        let _ = stream.set_nodelay(true);
        let mut conn = SmtpConnection {
            io: Io::new(stream),
            caps: Capabilities::default(),
            tls: None,
            cfg: Timeouts {
                command_ms: cfg.command_timeout_ms,
                data_block_ms: cfg.data_block_timeout_ms,
                data_done_ms: cfg.data_done_timeout_ms,
            },
            transactions: 0,
            broken: false,
        };
        match conn.handshake(addr, mx_name, cfg, dane).await {
            Ok(()) => {
                let tls = if conn.tls.is_some() { "yes" } else { "no" };
                metrics::counter!("petrel_outbound_connections_total", "tls" => tls).increment(1);
                Ok(conn)
            }
            Err(e) => {
                metrics::counter!("petrel_outbound_connect_failures_total").increment(1);
                conn.io.close().await;
                Err(e)
            }
        }
    }

    /// The TLS session, if STARTTLS succeeded.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The peer's SIZE limit, if it announced one (SIZE 0, "no limit", is `None`).
    pub fn max_size_bytes(&self) -> Option<u64> {
        self.caps.size_bytes_max
    }

    /// Whether the peer offered PIPELINING (after STARTTLS, if any).
    pub fn pipelining(&self) -> bool {
        self.caps.pipelining
    }

    /// Whether the peer offered DSN (RFC 3461; after STARTTLS, if any): the DSN parameters
    /// of what it accepts went with it, and it reports from there on.
    pub fn offers_dsn(&self) -> bool {
        self.caps.dsn
    }

    /// Whether the peer offered CHUNKING (after STARTTLS, if any).
    pub fn chunking(&self) -> bool {
        self.caps.chunking
    }

    /// False once the connection saw a 421, a protocol error or a failure mid-transaction.
    pub fn is_reusable(&self) -> bool {
        !self.broken
    }

    /// Sends QUIT and closes; errors are ignored (the mail is already delivered).
    pub async fn quit(mut self) {
        if !self.broken {
            let timeout_ms = self.cfg.command_ms.min(QUIT_TIMEOUT_MS_MAX);
            let io = &mut self.io;
            let _ = with_timeout(timeout_ms, Stage::Quit, async move {
                io.write_all(b"QUIT\r\n", Stage::Quit).await?;
                io.read_reply(Stage::Quit).await
            })
            .await;
        }
        self.io.close().await;
    }

    async fn handshake(
        &mut self,
        addr: SocketAddr,
        mx_name: &str,
        cfg: &ClientConfig,
        dane: Option<std::sync::Arc<[crate::dane::Tlsa]>>,
    ) -> Result<(), ClientError> {
        let greeting = self
            .reply_within(cfg.greeting_timeout_ms, Stage::Greeting)
            .await?;
        if greeting.code != 220 {
            return Err(ClientError::Rejected {
                stage: Stage::Greeting,
                reply: greeting,
            });
        }
        self.hello(&cfg.helo_name).await?;
        let want_tls = cfg.tls != TlsMode::Disabled;
        if want_tls && self.caps.starttls {
            self.starttls(addr, mx_name, cfg, dane).await?;
            self.hello(&cfg.helo_name).await?;
        } else if cfg.tls == TlsMode::Required {
            return Err(ClientError::TlsRequired {
                reason: format!("{mx_name} does not offer STARTTLS"),
            });
        }
        Ok(())
    }

    /// EHLO, or HELO when EHLO gets a 5xx (RFC 5321 §3.2).
    async fn hello(&mut self, helo_name: &str) -> Result<(), ClientError> {
        let ehlo = self
            .command(&format!("EHLO {helo_name}\r\n"), Stage::Ehlo)
            .await?;
        if ehlo.code == 250 {
            self.caps = Capabilities::parse(&ehlo);
            return Ok(());
        }
        if !ehlo.is_permanent() {
            return Err(ClientError::Rejected {
                stage: Stage::Ehlo,
                reply: ehlo,
            });
        }
        let helo = self
            .command(&format!("HELO {helo_name}\r\n"), Stage::Helo)
            .await?;
        if helo.code != 250 {
            return Err(ClientError::Rejected {
                stage: Stage::Helo,
                reply: helo,
            });
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    async fn starttls(
        &mut self,
        addr: SocketAddr,
        mx_name: &str,
        cfg: &ClientConfig,
        dane: Option<std::sync::Arc<[crate::dane::Tlsa]>>,
    ) -> Result<(), ClientError> {
        let reply = self.command("STARTTLS\r\n", Stage::StartTls).await?;
        if reply.code != 220 {
            if cfg.tls == TlsMode::Required {
                return Err(ClientError::TlsRequired {
                    reason: format!("STARTTLS refused: {reply}"),
                });
            }
            // Opportunistic: carry on in plaintext on the same connection (RFC 3207 §4.1).
            return Ok(());
        }
        // Bytes after the 220 and before the handshake would be plaintext injected into the
        // TLS session (CVE-2011-0411 style); refuse.
        if self.io.has_buffered_input() {
            return Err(ClientError::Protocol {
                stage: Stage::StartTls,
                reason: "data pipelined after the STARTTLS reply".into(),
            });
        }
        let config = match (dane, cfg.tls) {
            (Some(tlsa), _) => tls::dane_config(tlsa)?,
            (None, TlsMode::Required) => tls::required_config(&cfg.extra_root_certs_pem)?,
            (None, _) => tls::opportunistic_config()?,
        };
        let Transport::Plain(stream) = std::mem::replace(&mut self.io.transport, Transport::Gone)
        else {
            return Err(ClientError::Protocol {
                stage: Stage::StartTls,
                reason: "STARTTLS on a TLS connection".into(),
            });
        };
        let connector = futures_rustls::TlsConnector::from(config);
        let name = tls::server_name(mx_name, addr);
        let stream = with_timeout(cfg.command_timeout_ms, Stage::TlsHandshake, async {
            connector.connect(name, stream).await.map_err(|e| {
                let reason = e.to_string();
                if cfg.tls == TlsMode::Required && e.kind() == std::io::ErrorKind::InvalidData {
                    ClientError::TlsRequired { reason }
                } else {
                    ClientError::Tls { reason }
                }
            })
        })
        .await?;
        self.tls = Some(tls::info(stream.get_ref().1));
        self.io.transport = Transport::Tls(Box::new(stream));
        Ok(())
    }

    /// Sends one command line and reads its reply within the command timeout.
    async fn command(&mut self, line: &str, stage: Stage) -> Result<Reply, ClientError> {
        let io = &mut self.io;
        with_timeout(self.cfg.command_ms, stage, async move {
            io.write_all(line.as_bytes(), stage).await?;
            io.read_reply(stage).await
        })
        .await
    }

    async fn reply_within(&mut self, ms: u64, stage: Stage) -> Result<Reply, ClientError> {
        let io = &mut self.io;
        with_timeout(ms, stage, io.read_reply(stage)).await
    }
}
