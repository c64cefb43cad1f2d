//! The return-path intake's listener and SMTP sessions (issue 14): where a bounce domain's MX
//! points. Every shard listens on `[intake] listen` (SO_REUSEPORT, as the main listener).
//!
//! The protocol is the same pure `petrel_smtp::Session` as the main listener's, configured
//! without AUTH (nobody submits here) and with STARTTLS (the engine always has a certificate);
//! the message limit is `petrel_reports::limits::MAIL_BYTES_MAX`, so an oversized report is
//! refused at DATA with `552 5.3.4` before it is parsed. RCPT decides by
//! `intake::check_recipient`: a forged token, an unknown mailbox or a foreign domain is refused
//! there, before any body is read. After DATA the report is parsed on glommio's blocking pool
//! (MIME parsing and decompression are CPU work a shard must not do inline), turned into events
//! (`intake.rs`), appended to the engine's durable event backlog and synced, and only then
//! answered `250`: a 250 from the intake means the events will reach the control plane (and the
//! suppressions they cause follow there). Nothing is spooled and nothing is relayed.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::io::AsyncWriteExt;
use futures_lite::FutureExt;
use glommio::net::TcpStream;
use petrel_reports::{IntakeRecipient, TokenData};
use petrel_smtp::{DataVerdict, Event, PeerInfo, Reply, Session, Transaction, Verdict};

use crate::clock::now_ms;
use crate::ctx::ShardCtx;
use crate::intake::{self, IntakeSetup, Outcome, Stamp};
use crate::intake_keys::IntakeShared;
use crate::session::Io;

/// Bytes read from the socket at once.
const READ_BUFFER_BYTES: usize = 16 << 10;
/// Reports received at the intake, by result (`bounce`, `complaint`, `unsubscribe`, `dmarc`,
/// `unattributed`, `ignored`, `refused`).
pub const INTAKE_REPORTS_TOTAL: &str = "petrel_intake_reports_total";
/// Recipients refused at the intake's RCPT.
pub const INTAKE_RCPT_REFUSED_TOTAL: &str = "petrel_intake_rcpt_refused_total";
/// Pause after a failed `accept`, so the loop does not spin while the condition lasts.
const ACCEPT_RETRY_MS: u64 = 10;

/// Accepts intake connections until `shutdown` closes. Connections count against the same
/// per-IP and total bounds as the main listener's (`Pressure::admit_connection`).
pub async fn listen(
    ctx: Rc<ShardCtx>,
    shared: Arc<IntakeShared>,
    listener: glommio::net::TcpListener,
    shutdown: async_channel::Receiver<()>,
) {
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                let _ = shutdown.recv().await;
                None
            })
            .await;
        let Some(accepted) = accepted else { break };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(shard = ctx.shard, error = %e, "intake accept failed");
                glommio::timer::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let permit = match ctx.pressure.admit_connection(peer.ip()) {
            Ok(p) => p,
            Err(refusal) => {
                let mut line = Vec::with_capacity(64);
                refusal.reply().write_to(&mut line);
                let mut stream = stream;
                let _ = stream.write_all(&line).await;
                let _ = stream.close().await;
                continue;
            }
        };
        let c = Rc::clone(&ctx);
        let s = Arc::clone(&shared);
        glommio::spawn_local(async move {
            c.session_started();
            let r = std::panic::AssertUnwindSafe(run(Rc::clone(&c), s, stream, peer))
                .catch_unwind()
                .await;
            if r.is_err() {
                tracing::error!(shard = c.shard, %peer, "intake session panicked; shard continues");
            }
            c.session_ended();
            drop(permit);
        })
        .detach();
    }
}

struct Driver {
    ctx: Rc<ShardCtx>,
    shared: Arc<IntakeShared>,
    io: Io,
    session: Session,
    /// What each accepted RCPT of the current transaction is, in order.
    recipients: Vec<IntakeRecipient>,
}

/// Runs one intake connection to its end.
async fn run(ctx: Rc<ShardCtx>, shared: Arc<IntakeShared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let session = Session::new(
        Arc::clone(&shared.server_config),
        PeerInfo {
            addr: peer,
            tls: false,
        },
    );
    let mut d = Driver {
        ctx,
        shared,
        io: Io::Plain(stream),
        session,
        recipients: Vec::new(),
    };
    d.drive().await;
    d.io.close().await;
}

impl Driver {
    async fn drive(&mut self) {
        let mut buf = vec![0u8; READ_BUFFER_BYTES];
        let command_timeout = Duration::from_millis(self.ctx.cfg.smtp.command_timeout_ms);
        let data_timeout = Duration::from_millis(self.ctx.cfg.smtp.data_timeout_ms);
        let mut deadline = Instant::now() + command_timeout;
        loop {
            while let Some(event) = self.session.next_event() {
                if !self.handle(event).await {
                    return;
                }
            }
            if !self.session.output().is_empty() {
                if !self.flush().await {
                    return;
                }
                deadline = Instant::now() + command_timeout;
            }
            if self.session.is_closed() {
                return;
            }
            if !self.session.wants_input() {
                self.session.feed(b"");
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                self.session.timeout();
                let _ = self.flush().await;
                return;
            }
            let wait = deadline - now;
            let ctx = Rc::clone(&self.ctx);
            let read = self
                .io
                .read(&mut buf)
                .or(async {
                    glommio::timer::sleep(wait).await;
                    Err(std::io::ErrorKind::TimedOut.into())
                })
                .or(async move {
                    ctx.cut().await;
                    Err(std::io::ErrorKind::Interrupted.into())
                });
            match read.await {
                Ok(0) => return,
                Ok(n) => {
                    // A client streaming a report keeps its session alive, bounded per read.
                    deadline = Instant::now() + data_timeout.max(command_timeout);
                    self.session.feed(&buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    let bye = b"421 4.3.2 Service shutting down, closing connection\r\n";
                    let _ = self.io.write_all(bye).await;
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    self.session.timeout();
                    let _ = self.flush().await;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    async fn flush(&mut self) -> bool {
        while !self.session.output().is_empty() {
            let n = self.session.output().len();
            if self.io.write_all(self.session.output()).await.is_err() {
                return false;
            }
            self.session.consume_output(n);
        }
        true
    }

    /// Answers one core event; false ends the session.
    async fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::StartTls => self.start_tls().await,
            Event::Auth { .. } => {
                // Not offered; the core refuses AUTH itself when it is disabled.
                self.session.auth_result(None);
                true
            }
            Event::Mail { .. } => {
                self.recipients.clear();
                let v = match self.ctx.pressure.admit_transaction() {
                    Ok(()) => Verdict::Accept,
                    Err(r) => Verdict::Reject(r.reply()),
                };
                self.session.mail_verdict(v);
                true
            }
            Event::Rcpt { to } => {
                let v = self.on_rcpt(&to);
                self.session.rcpt_verdict(v);
                true
            }
            Event::Message(tx) => {
                let v = self.on_message(tx).await;
                self.recipients.clear();
                self.session.data_verdict(v);
                true
            }
            Event::Close => {
                let _ = self.flush().await;
                false
            }
        }
    }

    async fn start_tls(&mut self) -> bool {
        if !self.flush().await {
            return false;
        }
        let Io::Plain(stream) = std::mem::replace(&mut self.io, Io::Gone) else {
            return false;
        };
        let limit = Duration::from_millis(self.ctx.cfg.smtp.tls_handshake_timeout_ms);
        let acceptor = self.ctx.tls.clone();
        let handshake = async { acceptor.accept(stream).await.map(Some) }.or(async {
            glommio::timer::sleep(limit).await;
            Ok(None)
        });
        match handshake.await {
            Ok(Some(tls)) => {
                self.io = Io::Tls(Box::new(tls));
                self.session.tls_established();
                true
            }
            _ => false,
        }
    }

    fn on_rcpt(&mut self, to: &str) -> Verdict {
        if self.recipients.len() >= intake::INTAKE_RECIPIENTS_MAX {
            return Verdict::Reject(Reply::new(452, (4, 5, 3), "Too many recipients"));
        }
        let keys = self.shared.keys.current();
        let setup = IntakeSetup {
            keys: keys.as_deref().map(|k| &k.keys),
            bounce_domain: keys.as_deref().map_or("", |k| k.bounce_domain.as_str()),
            mailboxes: &self.shared.mailboxes,
        };
        match intake::check_recipient(&setup, to) {
            Ok(kind) => {
                self.recipients.push(kind);
                Verdict::Accept
            }
            Err(reply) => {
                metrics::counter!(INTAKE_RCPT_REFUSED_TOTAL).increment(1);
                tracing::info!(rcpt = %to, reply = %reply.text, "intake recipient refused");
                Verdict::Reject(reply)
            }
        }
    }

    async fn on_message(&mut self, tx: Transaction) -> DataVerdict {
        if let Err(r) = self.ctx.pressure.admit_transaction() {
            return DataVerdict::Reject(r.reply());
        }
        let _held = self.ctx.pressure.hold_memory(tx.data.len() as u64);
        let recipients = std::mem::take(&mut self.recipients);
        let shared = Arc::clone(&self.shared);
        let mail_from = tx.mail_from;
        let data = tx.data;
        // Parsing (MIME, gzip/zip, XML) is bounded but CPU-heavy: off the shard.
        let decided = glommio::executor()
            .spawn_blocking(move || decide(&shared, &recipients, &mail_from, &data))
            .await;
        let outcome = match decided {
            Ok(o) => o,
            Err(reply) => {
                metrics::counter!(INTAKE_REPORTS_TOTAL, "result" => "refused").increment(1);
                return DataVerdict::Reject(reply);
            }
        };
        let result = outcome.result;
        if !outcome.events.is_empty() {
            let outbox = Arc::clone(&self.shared.outbox);
            let events = outcome.events;
            let written = glommio::executor()
                .spawn_blocking(move || crate::intake_keys::write_durable(&outbox, &events))
                .await;
            if let Err(e) = written {
                tracing::error!(error = %e, "intake events not written to the backlog");
                return DataVerdict::Reject(Reply::new(
                    451,
                    (4, 3, 0),
                    "Report not recorded; try again later",
                ));
            }
        }
        metrics::counter!(INTAKE_REPORTS_TOTAL, "result" => result).increment(1);
        DataVerdict::Accept {
            queue_id: format!("intake-{result}"),
        }
    }
}

/// The events of one received mail (runs on the blocking pool).
fn decide(
    shared: &IntakeShared,
    recipients: &[IntakeRecipient],
    mail_from: &str,
    data: &[u8],
) -> Result<Outcome, Reply> {
    let keys = shared.keys.current();
    let policy = shared.policy.current();
    let stamp = Stamp {
        engine_id: &shared.engine_id,
        now_ms: i64::try_from(now_ms()).unwrap_or(i64::MAX),
    };
    let unsubscribes: Vec<TokenData> = recipients
        .iter()
        .filter_map(|r| match r {
            IntakeRecipient::Unsubscribe(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    let mut outcome = if unsubscribes.is_empty() {
        Outcome::default()
    } else {
        intake::unsubscribes(&unsubscribes, mail_from, &stamp)
    };
    let wants_report = recipients
        .iter()
        .any(|r| !matches!(r, IntakeRecipient::Unsubscribe(_)));
    if !wants_report {
        return Ok(outcome);
    }
    let token = recipients.iter().find_map(|r| match r {
        IntakeRecipient::ReturnPath(t) => Some(t),
        _ => None,
    });
    let report = petrel_reports::parse_report(data, &shared.classifier)
        .map_err(|e| intake::IntakeRefusal::from(e).reply())?;
    let owner = |domain: &str| policy.find_domain(domain).map(|d| d.tenant_id.clone());
    let reported = intake::report_events(
        &report,
        token,
        keys.as_deref().map(|k| &k.keys),
        &owner,
        &stamp,
    )
    .map_err(|e| e.reply())?;
    outcome.events.extend(reported.events);
    outcome.result = reported.result;
    Ok(outcome)
}
