//! The SMTP session driver: a glommio socket on one side, `petrel_smtp::Session` on the other.
//!
//! The protocol core decides everything about SMTP; this file only moves bytes, enforces time
//! bounds, and answers the core's events with the engine's decisions (relay, AUTH, backpressure,
//! policy, DKIM, spool). Pipelined commands are processed as one batch and their replies leave
//! in one write.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::FutureExt;
use glommio::net::TcpStream;
use petrel_smtp::{DataVerdict, Event, PeerInfo, Reply, Session, Transaction, Verdict};

use crate::auth::Identity;
use crate::clock::now_ms;
use crate::config::ListenerProfile;
use crate::ctx::ShardCtx;
use crate::metrics as m;
use crate::rejections::Rejections;

/// Bytes read from the socket at once.
const READ_BUFFER_BYTES: usize = 16 << 10;
/// Input that extends the reply deadline while a client streams message data.
const DATA_PROGRESS_BYTES: u64 = 64 << 10;

/// A session's socket: plain, after STARTTLS, or gone (also the return-path intake's,
/// `intake_session.rs`).
pub(crate) enum Io {
    Plain(TcpStream),
    Tls(Box<futures_rustls::server::TlsStream<TcpStream>>),
    Gone,
}

impl Io {
    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf).await,
            Io::Tls(s) => s.read(buf).await,
            Io::Gone => Ok(0),
        }
    }

    pub(crate) async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => s.write_all(buf).await,
            Io::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
            Io::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    pub(crate) async fn close(&mut self) {
        match self {
            Io::Plain(s) => {
                let _ = s.close().await;
            }
            Io::Tls(s) => {
                let _ = s.close().await;
            }
            Io::Gone => {}
        }
    }
}

/// How a session ended, for the metrics label.
#[derive(Debug, Clone, Copy)]
enum End {
    Quit,
    ClientGone,
    Timeout,
    IoError,
    TlsFailed,
    Shutdown,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            End::Quit => "quit",
            End::ClientGone => "client_gone",
            End::Timeout => "timeout",
            End::IoError => "io_error",
            End::TlsFailed => "tls_failed",
            End::Shutdown => "shutdown",
        }
    }
}

struct Driver {
    ctx: Rc<ShardCtx>,
    peer: SocketAddr,
    io: Io,
    session: Session,
    identity: Option<Identity>,
    tls_desc: Option<String>,
    rejections: Rejections,
    /// The tenant of the open transaction, whose suppression list RCPT checks: the
    /// authenticated credential's, or on a trusted network the MAIL FROM domain's owner.
    mail_tenant: Option<String>,
    /// The `rejected` events' details of the message just refused (a sending domain's check).
    refusal_details: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Runs one connection to its end, with the rules of the listener's `profile`; on an implicit
/// TLS listener (submissions, RFC 8314) the handshake comes first and the greeting goes under
/// it. Never panics on peer input; a panic in here is caught by the caller and counted, and
/// the shard goes on.
pub async fn run(ctx: Rc<ShardCtx>, stream: TcpStream, peer: SocketAddr, profile: ListenerProfile) {
    let _ = stream.set_nodelay(true);
    let config = ctx.session_config(peer.ip(), profile);
    // The session starts under TLS when the listener's does: no STARTTLS offered, AUTH is.
    let session = Session::new(
        config,
        PeerInfo {
            addr: peer,
            tls: profile.implicit_tls(),
        },
    );
    let rejections = Rejections::new(ctx.events.clone(), ctx.shard);
    let mut d = Driver {
        ctx,
        peer,
        io: Io::Plain(stream),
        session,
        identity: None,
        tls_desc: None,
        rejections,
        mail_tenant: None,
        refusal_details: None,
    };
    let handshake = if profile.implicit_tls() {
        d.handshake().await
    } else {
        Ok(())
    };
    let end = match handshake {
        Ok(()) => d.drive().await,
        Err(end) => end,
    };
    d.io.close().await;
    metrics::counter!(m::SESSIONS_TOTAL, "end" => end.label()).increment(1);
}

impl Driver {
    async fn drive(&mut self) -> End {
        let mut buf = vec![0u8; READ_BUFFER_BYTES];
        let command_timeout = Duration::from_millis(self.ctx.cfg.smtp.command_timeout_ms);
        let data_timeout = Duration::from_millis(self.ctx.cfg.smtp.data_timeout_ms);
        let mut deadline = Instant::now() + command_timeout;
        let mut since_reply_bytes: u64 = 0;
        loop {
            while let Some(event) = self.session.next_event() {
                if let Err(end) = self.handle(event).await {
                    return end;
                }
            }
            if !self.session.output().is_empty() {
                if let Err(end) = self.flush().await {
                    return end;
                }
                deadline = Instant::now() + command_timeout;
                since_reply_bytes = 0;
            }
            if self.session.is_closed() {
                return End::Quit;
            }
            if !self.session.wants_input() {
                // The core holds more than its pipelining bound and needs no answer from us: it
                // is waiting for output to drain, which just happened; let it process.
                self.session.feed(b"");
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return self.time_out().await;
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
                Ok(0) => return End::ClientGone,
                Ok(n) => {
                    since_reply_bytes += n as u64;
                    if since_reply_bytes >= DATA_PROGRESS_BYTES {
                        since_reply_bytes = 0;
                        deadline = Instant::now() + data_timeout.max(command_timeout);
                    }
                    self.session.feed(&buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return self.time_out().await;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    let bye = b"421 4.3.2 Service shutting down, closing connection\r\n";
                    let _ = self.io.write_all(bye).await;
                    return End::Shutdown;
                }
                Err(_) => return End::IoError,
            }
        }
    }

    async fn time_out(&mut self) -> End {
        self.session.timeout();
        let _ = self.flush().await;
        metrics::counter!(m::REJECTIONS_TOTAL, "reason" => "timeout").increment(1);
        End::Timeout
    }

    async fn flush(&mut self) -> Result<(), End> {
        while !self.session.output().is_empty() {
            let n = self.session.output().len();
            if self.io.write_all(self.session.output()).await.is_err() {
                return Err(End::IoError);
            }
            self.session.consume_output(n);
        }
        Ok(())
    }

    async fn handle(&mut self, event: Event) -> Result<(), End> {
        match event {
            Event::StartTls => self.start_tls().await,
            Event::Auth { username, password } => {
                self.auth(username, password).await;
                self.rejections.identity(self.identity.as_ref());
                Ok(())
            }
            Event::Mail { from, params, .. } => {
                let v = self.on_mail(&from, params.size).await;
                match &v {
                    Verdict::Reject(r) => self.rejections.refused(Some(&from), "", r),
                    _ => self.rejections.mail_from(Some(&from)),
                }
                self.session.mail_verdict(v);
                self.rejections.flush().await;
                Ok(())
            }
            Event::Rcpt { to } => {
                let (v, suppressed) = self.on_rcpt(&to);
                match &v {
                    Verdict::Reject(r) if suppressed => {
                        self.rejections
                            .suppressed(&to, r, self.mail_tenant.as_deref());
                    }
                    Verdict::Reject(r) => self.rejections.refused(None, &to, r),
                    _ => {}
                }
                self.session.rcpt_verdict(v);
                self.rejections.flush().await;
                Ok(())
            }
            Event::Message(tx) => {
                let v = self.on_message(&tx).await;
                let details = self.refusal_details.take();
                if let DataVerdict::Reject(r) = &v {
                    for rcpt in &tx.recipients {
                        let d = details.clone();
                        self.rejections
                            .refused_with(Some(&tx.mail_from), rcpt, r, d);
                    }
                }
                self.rejections.mail_from(None);
                self.session.data_verdict(v);
                self.rejections.flush().await;
                Ok(())
            }
            Event::Close => {
                let _ = self.flush().await;
                Err(End::Quit)
            }
        }
    }

    /// STARTTLS: the 220 out, the handshake, then the session starts over under TLS.
    async fn start_tls(&mut self) -> Result<(), End> {
        self.flush().await?;
        self.handshake().await?;
        self.session.tls_established();
        Ok(())
    }

    /// The server side of a TLS handshake on the plain socket (after STARTTLS, or at accept on
    /// an implicit TLS listener), bounded by `smtp.tls_handshake_timeout_ms`; a failure or a
    /// timeout is counted and ends the session.
    async fn handshake(&mut self) -> Result<(), End> {
        let Io::Plain(stream) = std::mem::replace(&mut self.io, Io::Gone) else {
            return Err(End::TlsFailed);
        };
        let acceptor = self.ctx.tls.clone();
        let limit = Duration::from_millis(self.ctx.cfg.smtp.tls_handshake_timeout_ms);
        let handshake = async { acceptor.accept(stream).await.map(Some) }.or(async {
            glommio::timer::sleep(limit).await;
            Ok(None)
        });
        match handshake.await {
            Ok(Some(tls)) => {
                let (_, conn) = tls.get_ref();
                self.tls_desc = Some(format!(
                    "{} {}",
                    conn.protocol_version()
                        .map(|v| format!("{v:?}"))
                        .unwrap_or_default(),
                    conn.negotiated_cipher_suite()
                        .map(|s| format!("{:?}", s.suite()))
                        .unwrap_or_default()
                ));
                self.io = Io::Tls(Box::new(tls));
                Ok(())
            }
            Ok(None) => {
                metrics::counter!(m::REJECTIONS_TOTAL, "reason" => "tls_timeout").increment(1);
                Err(End::Timeout)
            }
            Err(_) => {
                metrics::counter!(m::REJECTIONS_TOTAL, "reason" => "tls_handshake").increment(1);
                Err(End::TlsFailed)
            }
        }
    }

    async fn auth(&mut self, username: String, password: String) {
        let auth = Arc::clone(&self.ctx.auth);
        let ip = self.peer.ip();
        let now_secs = now_ms() / 1000;
        if let Err(retry_secs) = auth.locked_out(ip, now_secs) {
            tracing::info!(%ip, retry_secs, "AUTH refused: address locked out after failures");
            auth.record_locked_out(ip, &username);
            metrics::counter!(m::AUTH_TOTAL, "result" => "locked_out").increment(1);
            self.session.auth_locked_out();
            self.identity = None;
            return;
        }
        let tried = username.clone();
        let result = match auth.verify_cached(&username, &password, ip) {
            Some(hit) => Some(hit),
            None => {
                let verifier = Arc::clone(&auth);
                glommio::executor()
                    .spawn_blocking(move || verifier.verify_blocking(&username, &password, ip))
                    .await
            }
        };
        if result.is_none() {
            auth.record_failure(ip, now_secs, &tried);
        }
        let label = if result.is_some() { "ok" } else { "failed" };
        metrics::counter!(m::AUTH_TOTAL, "result" => label).increment(1);
        self.session
            .auth_result(result.as_ref().map(|i| i.username.clone()));
        self.identity = result;
    }

    async fn on_mail(&mut self, from: &str, size: Option<u64>) -> Verdict {
        if let Err(r) = self.ctx.pressure.admit_transaction() {
            return self.reject(r.reason(), r.reply());
        }
        if let Some(reason) = self.ctx.spool.unhealthy_reason() {
            tracing::warn!(reason, "spool unhealthy; refusing MAIL");
            let r = crate::pressure::Refusal::SpoolUnhealthy;
            return self.reject(r.reason(), r.reply());
        }
        if let Some(size) = size {
            if size > self.ctx.cfg.smtp.message_size_max_bytes as u64 {
                return self.reject(
                    "size",
                    Reply::new(552, (5, 3, 4), "Message size exceeds fixed limit"),
                );
            }
        }
        self.mail_tenant = self.tenant_of_mail(from);
        if let Some(pid) = self.identity.as_ref().and_then(|i| i.policy.as_ref()) {
            let policy = self.ctx.policy.current();
            let sender_domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            let checked = match policy.check_sender(pid, from) {
                Ok(()) => admit_rate(&policy, &pid.tenant_id, sender_domain).await,
                Err(d) => Err(d),
            };
            if let Err(denial) = checked {
                let (code, enhanced, text) = denial.reply();
                return self.reject("policy", Reply::new(code, enhanced, text));
            }
        }
        Verdict::Accept
    }

    /// The verdict, and whether a refusal is a suppression.
    fn on_rcpt(&mut self, to: &str) -> (Verdict, bool) {
        // Petrel hosts no mailboxes: every recipient is remote, so relaying needs AUTH or a
        // trusted network. No open relay, ever.
        if self.identity.is_none() && !self.ctx.is_trusted(self.peer.ip()) {
            let reply = Reply::new(550, (5, 7, 1), "Relay access denied: authenticate first");
            return (self.reject("relay_denied", reply), false);
        }
        // The tenant's list, then the operator-wide one (an unknown tenant: only the latter;
        // "" is no tenant's scope). Only this recipient is refused, never the transaction.
        let hit = {
            let set = self.ctx.policy.suppressions();
            set.check(self.mail_tenant.as_deref().unwrap_or(""), to)
        };
        match hit {
            Some(hit) => {
                let reply = Reply::new(550, (5, 7, 1), hit.reply_text());
                (self.reject("suppressed", reply), true)
            }
            None => (Verdict::Accept, false),
        }
    }

    /// The tenant whose lists apply to this transaction: the credential's, or, for a trusted
    /// network, the owner of the MAIL FROM domain when the policy knows it. Protective checks
    /// (suppression lists, a disabled tenant) apply to whoever owns the domain, whether or not
    /// the network is mapped to it; signing and attribution need the mapping
    /// (`sign_and_spool::prepare`).
    fn tenant_of_mail(&self, from: &str) -> Option<String> {
        if let Some(identity) = &self.identity {
            return identity.tenant.clone();
        }
        if !self.ctx.is_trusted(self.peer.ip()) {
            return None;
        }
        let domain = from.rsplit_once('@').map(|(_, d)| d)?;
        let policy = self.ctx.policy.peek();
        policy
            .find_domain(&domain.to_ascii_lowercase())
            .map(|d| d.tenant_id.clone())
    }

    fn reject(&self, reason: &'static str, reply: Reply) -> Verdict {
        metrics::counter!(m::REJECTIONS_TOTAL, "reason" => reason).increment(1);
        Verdict::Reject(reply)
    }

    async fn on_message(&mut self, tx: &Transaction) -> DataVerdict {
        let started = Instant::now();
        if let Err(r) = self.ctx.pressure.admit_transaction() {
            metrics::counter!(m::REJECTIONS_TOTAL, "reason" => r.reason()).increment(1);
            return DataVerdict::Reject(r.reply());
        }
        let _held = self.ctx.pressure.hold_memory(tx.data.len() as u64);
        let trace_id = self.ctx.next_trace_id();
        let prepared = crate::sign_and_spool::prepare(
            &self.ctx,
            tx,
            self.peer,
            self.tls_desc.as_deref(),
            self.identity.as_ref(),
            &trace_id,
        );
        let crate::sign_and_spool::PreparedMessage {
            body,
            attribution,
            reserved_id,
            arc,
        } = match prepared {
            Ok(p) => p,
            Err(refusal) => {
                metrics::counter!(m::REJECTIONS_TOTAL, "reason" => refusal.reason).increment(1);
                self.refusal_details = refusal.details;
                return DataVerdict::Reject(refusal.reply);
            }
        };
        let body = crate::sign_and_spool::seal_forwarded(&self.ctx, arc, body).await;
        let warning = crate::sign_and_spool::reputation_warning(&self.ctx, &attribution);
        match crate::sign_and_spool::spool_and_queue(
            &self.ctx,
            tx,
            self.peer,
            self.identity.as_ref(),
            body,
            attribution,
            reserved_id,
        )
        .await
        {
            Ok(id) => {
                metrics::histogram!(m::SPOOL_COMMIT_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!(m::MESSAGES_ACCEPTED_TOTAL).increment(1);
                metrics::counter!(m::ACCEPTED_BYTES_TOTAL).increment(tx.data.len() as u64);
                // The 250's text carries a reputation warning (issue 14) after the queue id.
                let queue_id = match warning {
                    Some(w) => format!("{id} (warning: {w})"),
                    None => id,
                };
                DataVerdict::Accept { queue_id }
            }
            Err(reply) => {
                metrics::counter!(m::REJECTIONS_TOTAL, "reason" => "spool").increment(1);
                DataVerdict::Reject(reply)
            }
        }
    }
}

/// The tenant's rates and quotas for one MAIL: local, or the fleet's (cluster quotas) where a
/// session may wait for its engine's next batch of grants, at most `QUOTA_WAIT_MAX_MS` (the
/// driver answers or falls back well within it).
async fn admit_rate(
    policy: &petrel_policy::CompiledPolicy,
    tenant_id: &str,
    sender_domain: &str,
) -> Result<(), petrel_policy::PolicyDenial> {
    use petrel_policy::quota::Admit;
    let deadline = std::time::Instant::now() + Duration::from_millis(QUOTA_WAIT_MAX_MS);
    loop {
        match policy.rate_admit(tenant_id, sender_domain, now_ms()) {
            Admit::Yes => return Ok(()),
            Admit::No(denial) => return Err(denial),
            Admit::Wait(listener) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero()
                    || glommio::timer::timeout(left, async {
                        listener.await;
                        Ok(())
                    })
                    .await
                    .is_err()
                {
                    return Err(petrel_policy::PolicyDenial::RateLimited {
                        scope: "the cluster quota service (no answer)".to_owned(),
                    });
                }
            }
        }
    }
}

/// The longest a MAIL waits for cluster quota grants (`cluster.request_timeout_ms` is at most
/// 10 s; past it the engine is in fallback and answers at once).
pub const QUOTA_WAIT_MAX_MS: u64 = 11_000;
