//! One mail transaction: RSET (on reuse), MAIL, RCPT..., DATA, the dot-stuffed body.
//! Pipelined (RFC 2920) when the peer offers it: every command up to DATA in one write.
//! With PIPELINING and CHUNKING (RFC 3030) and a body up to `BDAT_INLINE_BYTES_MAX`, the whole
//! transaction (RSET, MAIL, RCPT..., `BDAT n LAST` and the body) is one write and its replies
//! one read: a single round trip per message instead of two.
//! When the peer offers DSN (RFC 3461), a message's DSN parameters go on its MAIL and RCPT
//! lines; otherwise they are left off (the caller then reports as RFC 3461 §5.2.2 says).

use std::io::Write as _;

use super::io::with_timeout;
use super::{ClientError, RcptOutcome, Reply, SmtpConnection, Stage, TransactionOutcome};

/// Body bytes dot-stuffed and written per block (each block has `data_block_timeout_ms`).
pub const DATA_BLOCK_BYTES: usize = 64 * 1024;
/// Longest address we put on a MAIL or RCPT line (RFC 5321 §4.5.3.1.3 path: 256).
pub const ADDRESS_MAX_BYTES: usize = 256;
/// Recipients sent per transaction; the rest get a local 452 4.5.3 (retry them in another
/// transaction). RFC 5321 §4.5.3.1.8 only obliges servers to take 100; most take 1000.
pub const RCPTS_PER_TRANSACTION_MAX: usize = 1000;
/// RCPT commands written in one pipelined batch before reading their replies, so neither side
/// blocks on a full socket buffer while the other is writing (RFC 2920 §3.1's deadlock).
pub const PIPELINE_RCPTS_MAX: usize = 100;
/// Largest body sent as one BDAT chunk in the same write as the envelope. The body goes out
/// before the envelope's replies are known, so a refused transaction wastes at most this much;
/// larger bodies use DATA, which waits for the 354.
pub const BDAT_INLINE_BYTES_MAX: usize = 256 * 1024;
/// Most transactions `send_many` puts in one write.
pub const PIPELINE_TRANSACTIONS_MAX: usize = 16;

/// Longest DSN parameter text put on one MAIL or RCPT line: ENVID (100) and RET, or ORCPT
/// (500) and NOTIFY, with their keywords; a longer one (never made by Petrel) is left off.
pub const DSN_PARAMS_MAX_BYTES: usize = 640;

/// One message for [`SmtpConnection::send_many`].
#[derive(Debug, Clone, Copy)]
pub struct OutgoingMessage<'a> {
    pub from: &'a str,
    pub rcpts: &'a [&'a str],
    pub body: &'a [u8],
    /// The sender's DSN parameters, sent only when the server offers DSN.
    pub dsn: Option<OutgoingDsn<'a>>,
}

/// A message's DSN parameters in wire form (`RET=HDRS ENVID=x+2By`, `NOTIFY=NEVER
/// ORCPT=rfc822;a@b`): xtext-encoded by the caller. Text that is not printable ASCII, or is
/// over [`DSN_PARAMS_MAX_BYTES`], is left off the line rather than sent.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingDsn<'a> {
    /// After MAIL FROM's path; "" for none.
    pub mail: &'a str,
    /// After each RCPT TO's path, index for index with the recipients; "" (or missing) for none.
    pub rcpts: &'a [String],
}

/// Per recipient, the outcome so far; `send` lists the recipients still to put on the wire.
struct Plan {
    /// One per recipient given; `None` until decided.
    outcomes: Vec<Option<RcptOutcome>>,
    /// Indexes into the recipients, ascending; at most `RCPTS_PER_TRANSACTION_MAX`.
    send: Vec<usize>,
}

impl Plan {
    fn new(rcpts: &[&str]) -> Plan {
        let mut plan = Plan {
            outcomes: Vec::with_capacity(rcpts.len()),
            send: Vec::with_capacity(rcpts.len().min(RCPTS_PER_TRANSACTION_MAX)),
        };
        for (i, rcpt) in rcpts.iter().enumerate() {
            let local = if !address_ok(rcpt) {
                Some(local_rcpt_rejection())
            } else if plan.send.len() >= RCPTS_PER_TRANSACTION_MAX {
                Some(RcptOutcome::Rejected(Reply::new(
                    452,
                    (4, 5, 3),
                    "too many recipients for one transaction",
                )))
            } else {
                plan.send.push(i);
                None
            };
            plan.outcomes.push(local);
        }
        plan
    }

    fn set(&mut self, i: usize, outcome: RcptOutcome) {
        if let Some(slot) = self.outcomes.get_mut(i) {
            *slot = Some(outcome);
        }
    }

    fn fill_pending(&mut self, reply: &Reply) {
        for slot in self.outcomes.iter_mut().filter(|o| o.is_none()) {
            *slot = Some(RcptOutcome::Rejected(reply.clone()));
        }
    }

    /// Every recipient's outcome; one never decided (cannot happen) reads as a local 501.
    fn finish(self) -> Vec<RcptOutcome> {
        self.outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(local_rcpt_rejection))
            .collect()
    }
}

impl SmtpConnection {
    /// One transaction (RSET first when reused); PIPELINING when offered; dot-stuffs `body`
    /// (which has CRLF line ends; a missing final CRLF is added).
    ///
    /// Replies are returned as data. A message larger than the peer's SIZE is not sent: it gets
    /// `mail_rejected = 552 5.3.4`. Addresses that cannot be sent safely (CR, LF, angle
    /// brackets, over [`ADDRESS_MAX_BYTES`]) get a local 501 without touching the wire.
    /// An `Err` means the connection is unusable; drop it.
    pub async fn send(
        &mut self,
        from: &str,
        rcpts: &[&str],
        body: &[u8],
    ) -> Result<TransactionOutcome, ClientError> {
        let m = OutgoingMessage {
            from,
            rcpts,
            body,
            dsn: None,
        };
        self.send_message(&m).await
    }

    /// [`SmtpConnection::send`] of one [`OutgoingMessage`] (with its DSN parameters).
    pub async fn send_message(
        &mut self,
        m: &OutgoingMessage<'_>,
    ) -> Result<TransactionOutcome, ClientError> {
        let (from, rcpts, body) = (m.from, m.rcpts, m.body);
        if self.broken {
            return Err(ClientError::Dropped {
                stage: Stage::Reuse,
            });
        }
        if let Some(local) = self.local_rejection(from, body, rcpts.len()) {
            return Ok(local);
        }
        let plan = Plan::new(rcpts);
        if plan.send.is_empty() {
            // Nothing to put on the wire: no transaction at all.
            return Ok(TransactionOutcome {
                rcpts: plan.finish(),
                data: None,
                mail_rejected: None,
            });
        }
        let reuse = self.transactions > 0;
        self.transactions += 1;
        metrics::counter!("petrel_outbound_transactions_total").increment(1);
        let chunked = self.caps.pipelining
            && self.caps.chunking
            && body.len() <= BDAT_INLINE_BYTES_MAX
            && plan.send.len() <= PIPELINE_RCPTS_MAX;
        let result = if chunked {
            self.chunked(reuse, m, plan).await
        } else if self.caps.pipelining {
            self.pipelined(reuse, m, plan).await
        } else {
            self.stepwise(reuse, m, plan).await
        };
        match &result {
            Err(_) => self.broken = true,
            Ok(outcome) if closes_connection(outcome) => self.broken = true,
            Ok(_) => {}
        }
        result
    }

    /// Failures decided before sending anything: an oversized message or a bad sender.
    fn local_rejection(&self, from: &str, body: &[u8], n: usize) -> Option<TransactionOutcome> {
        let reply = if self
            .caps
            .size_bytes_max
            .is_some_and(|max| body.len() as u64 > max)
        {
            Reply::new(
                552,
                (5, 3, 4),
                "message larger than the server's SIZE limit",
            )
        } else if !address_ok(from) {
            Reply::new(501, (5, 1, 7), "sender address cannot be sent")
        } else {
            return None;
        };
        Some(TransactionOutcome {
            rcpts: vec![RcptOutcome::Rejected(reply.clone()); n],
            data: None,
            mail_rejected: Some(reply),
        })
    }

    fn push_mail(&mut self, m: &OutgoingMessage<'_>) {
        let (from, body) = (m.from, m.body);
        let dsn = self.caps.dsn;
        let w = &mut self.io.wbuf;
        w.extend_from_slice(b"MAIL FROM:<");
        w.extend_from_slice(from.as_bytes());
        w.push(b'>');
        if self.caps.size_bytes_max.is_some() {
            let _ = write!(w, " SIZE={}", body.len());
        }
        if self.caps.eightbitmime && body.iter().any(|b| *b >= 0x80) {
            w.extend_from_slice(b" BODY=8BITMIME");
        }
        if let Some(d) = m.dsn.filter(|_| dsn) {
            push_dsn(w, d.mail);
        }
        w.extend_from_slice(b"\r\n");
    }

    /// RCPT TO for recipient `i` of `m`.
    fn push_rcpt(&mut self, m: &OutgoingMessage<'_>, i: usize) {
        let dsn = self.caps.dsn;
        let w = &mut self.io.wbuf;
        w.extend_from_slice(b"RCPT TO:<");
        w.extend_from_slice(m.rcpts.get(i).copied().unwrap_or("").as_bytes());
        w.push(b'>');
        if let Some(d) = m.dsn.filter(|_| dsn) {
            push_dsn(w, d.rcpts.get(i).map_or("", String::as_str));
        }
        w.extend_from_slice(b"\r\n");
    }

    async fn read(&mut self, stage: Stage) -> Result<Reply, ClientError> {
        let ms = self.cfg.command_ms;
        let io = &mut self.io;
        with_timeout(ms, stage, io.read_reply(stage)).await
    }

    async fn flush(&mut self, stage: Stage) -> Result<(), ClientError> {
        let ms = self.cfg.command_ms;
        let io = &mut self.io;
        with_timeout(ms, stage, io.flush_wbuf(stage)).await
    }

    async fn rset_reply(&mut self) -> Result<(), ClientError> {
        let reply = self.read(Stage::Rset).await?;
        if reply.code == 250 {
            return Ok(());
        }
        Err(ClientError::Protocol {
            stage: Stage::Rset,
            reason: reply.to_string(),
        })
    }

    async fn pipelined(
        &mut self,
        reuse: bool,
        m: &OutgoingMessage<'_>,
        mut plan: Plan,
    ) -> Result<TransactionOutcome, ClientError> {
        let to_send = std::mem::take(&mut plan.send);
        let batches = to_send.len().div_ceil(PIPELINE_RCPTS_MAX);
        let mut mail = None;
        for (n, batch) in to_send.chunks(PIPELINE_RCPTS_MAX).enumerate() {
            self.io.wbuf.clear();
            if n == 0 {
                if reuse {
                    self.io.wbuf.extend_from_slice(b"RSET\r\n");
                }
                self.push_mail(m);
            }
            for &i in batch {
                self.push_rcpt(m, i);
            }
            if n + 1 == batches {
                self.io.wbuf.extend_from_slice(b"DATA\r\n");
            }
            // On a reused connection a write failure here means the peer closed it while idle.
            self.flush(if n == 0 && reuse {
                Stage::Rset
            } else {
                Stage::Mail
            })
            .await?;
            if n == 0 {
                if reuse {
                    self.rset_reply().await?;
                }
                let reply = self.read(Stage::Mail).await?;
                if reply.code == 421 {
                    return Ok(failed_before_data(reply, plan.finish(), &to_send));
                }
                mail = Some(reply);
            }
            if self.rcpt_replies(&mut plan, batch).await? {
                return Ok(closing(plan));
            }
        }
        let data = self.read(Stage::Data).await?;
        let Some(mail) = mail else {
            return Err(ClientError::Protocol {
                stage: Stage::Mail,
                reason: "no recipient to send".into(),
            });
        };
        let outcomes = plan.finish();
        if !mail.is_positive() || !outcomes.contains(&RcptOutcome::Accepted) {
            if data.code == 354 {
                // The server wants a message we no longer have a transaction for: end it empty.
                self.io.wbuf.clear();
                self.io.wbuf.extend_from_slice(b".\r\n");
                self.flush(Stage::Data).await?;
                self.read(Stage::DataDone).await?;
            }
            return Ok(failed_before_data(mail, outcomes, &to_send));
        }
        let data = if data.code == 354 {
            self.body(m.body).await?
        } else {
            data
        };
        Ok(TransactionOutcome {
            rcpts: outcomes,
            data: Some(data),
            mail_rejected: None,
        })
    }

    /// The whole transaction in one write: RSET (on reuse), MAIL, RCPT..., `BDAT n LAST` and
    /// the body (not dot-stuffed; a missing final CRLF is added, as with DATA). The server
    /// reads the chunk whatever it thinks of the envelope (RFC 3030 §2), so the replies come
    /// back in order and the connection stays in step even when every recipient is refused.
    async fn chunked(
        &mut self,
        reuse: bool,
        m: &OutgoingMessage<'_>,
        mut plan: Plan,
    ) -> Result<TransactionOutcome, ClientError> {
        let to_send = std::mem::take(&mut plan.send);
        self.io.wbuf.clear();
        self.push_chunked(reuse, m, &to_send);
        let stage = if reuse { Stage::Rset } else { Stage::Mail };
        let io = &mut self.io;
        with_timeout(self.cfg.data_block_ms, stage, io.flush_wbuf(stage)).await?;
        self.chunked_replies(reuse, plan, &to_send).await
    }

    /// Appends one whole CHUNKING transaction to the write buffer.
    fn push_chunked(&mut self, rset: bool, m: &OutgoingMessage<'_>, to_send: &[usize]) {
        let body = m.body;
        let crlf = !body.is_empty() && !body.ends_with(b"\r\n");
        let chunk_len = body.len() + if crlf { 2 } else { 0 };
        if rset {
            self.io.wbuf.extend_from_slice(b"RSET\r\n");
        }
        self.push_mail(m);
        for &i in to_send {
            self.push_rcpt(m, i);
        }
        let w = &mut self.io.wbuf;
        // Writing into a Vec cannot fail.
        let _ = write!(w, "BDAT {chunk_len} LAST\r\n");
        w.extend_from_slice(body);
        if crlf {
            w.extend_from_slice(b"\r\n");
        }
    }

    /// Reads the replies of one transaction written by `push_chunked`. `Ok` with a 421 in it
    /// means the server is closing.
    async fn chunked_replies(
        &mut self,
        rset: bool,
        mut plan: Plan,
        to_send: &[usize],
    ) -> Result<TransactionOutcome, ClientError> {
        if rset {
            self.rset_reply().await?;
        }
        let mail = self.read(Stage::Mail).await?;
        if mail.code == 421 {
            return Ok(failed_before_data(mail, plan.finish(), to_send));
        }
        if self.rcpt_replies(&mut plan, to_send).await? {
            return Ok(closing(plan));
        }
        let io = &mut self.io;
        let data = with_timeout(
            self.cfg.data_done_ms,
            Stage::DataDone,
            io.read_reply(Stage::DataDone),
        )
        .await?;
        let outcomes = plan.finish();
        if !mail.is_positive() || !outcomes.contains(&RcptOutcome::Accepted) {
            // The BDAT reply (503 or 554) only restates that there was no transaction.
            return Ok(failed_before_data(mail, outcomes, to_send));
        }
        Ok(TransactionOutcome {
            rcpts: outcomes,
            data: Some(data),
            mail_rejected: None,
        })
    }

    /// Reads one RCPT reply per index into `plan`. True when the server is closing (421):
    /// every unanswered recipient then holds that reply.
    async fn rcpt_replies(
        &mut self,
        plan: &mut Plan,
        indices: &[usize],
    ) -> Result<bool, ClientError> {
        for &i in indices {
            let reply = self.read(Stage::Rcpt).await?;
            if reply.code == 421 {
                plan.fill_pending(&reply);
                return Ok(true);
            }
            plan.set(i, rcpt_outcome(reply));
        }
        Ok(false)
    }

    /// Whether [`SmtpConnection::send_many`] can put several transactions in one write here.
    pub fn can_send_many(&self) -> bool {
        self.caps.pipelining && self.caps.chunking && !self.broken
    }

    /// Several transactions in one write, their replies read in order: RFC 2920 lets a client
    /// pipeline the next RSET and MAIL after a `BDAT LAST` (RFC 3030). Needs PIPELINING and
    /// CHUNKING ([`SmtpConnection::can_send_many`]) and bodies up to `BDAT_INLINE_BYTES_MAX`;
    /// otherwise (or for one message) it is [`SmtpConnection::send`] once per message.
    ///
    /// One result per message, in order. When the connection fails or the server closes it
    /// (421) partway, the message being read gets that result and every later one
    /// `Err(Dropped { stage: Stage::Rset })`: sent, perhaps unread by the server, to be tried again.
    pub async fn send_many(
        &mut self,
        messages: &[OutgoingMessage<'_>],
    ) -> Vec<Result<TransactionOutcome, ClientError>> {
        let batchable = messages.len() > 1
            && self.can_send_many()
            && messages.len() <= PIPELINE_TRANSACTIONS_MAX
            && messages.iter().all(|m| {
                m.body.len() <= BDAT_INLINE_BYTES_MAX && m.rcpts.len() <= PIPELINE_RCPTS_MAX
            });
        if !batchable {
            let mut results = Vec::with_capacity(messages.len());
            for m in messages {
                results.push(self.send_message(m).await);
            }
            return results;
        }
        let mut results: Vec<Option<Result<TransactionOutcome, ClientError>>> =
            Vec::with_capacity(messages.len());
        // Decide locally what needs no wire at all, then write every other transaction.
        let mut planned: Vec<Option<(Plan, Vec<usize>, bool)>> = Vec::with_capacity(messages.len());
        self.io.wbuf.clear();
        for m in messages {
            if let Some(local) = self.local_rejection(m.from, m.body, m.rcpts.len()) {
                results.push(Some(Ok(local)));
                planned.push(None);
                continue;
            }
            let mut plan = Plan::new(m.rcpts);
            if plan.send.is_empty() {
                results.push(Some(Ok(TransactionOutcome {
                    rcpts: plan.finish(),
                    data: None,
                    mail_rejected: None,
                })));
                planned.push(None);
                continue;
            }
            let to_send = std::mem::take(&mut plan.send);
            let rset = self.transactions > 0;
            self.transactions += 1;
            metrics::counter!("petrel_outbound_transactions_total").increment(1);
            self.push_chunked(rset, m, &to_send);
            results.push(None);
            planned.push(Some((plan, to_send, rset)));
        }
        let first_stage = if planned.iter().flatten().next().is_some_and(|p| p.2) {
            Stage::Rset
        } else {
            Stage::Mail
        };
        let io = &mut self.io;
        let written = with_timeout(
            self.cfg.data_block_ms,
            first_stage,
            io.flush_wbuf(first_stage),
        )
        .await;
        let mut failed = written.err();
        for (slot, plan) in results.iter_mut().zip(planned) {
            let Some((plan, to_send, rset)) = plan else {
                continue;
            };
            if self.broken || failed.is_some() {
                *slot = Some(Err(failed
                    .take()
                    .unwrap_or(ClientError::Dropped { stage: Stage::Rset })));
                self.broken = true;
                continue;
            }
            let outcome = self.chunked_replies(rset, plan, &to_send).await;
            match &outcome {
                Err(_) => self.broken = true,
                Ok(o) if closes_connection(o) => self.broken = true,
                Ok(_) => {}
            }
            *slot = Some(outcome);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(ClientError::Dropped { stage: Stage::Rset })))
            .collect()
    }

    async fn stepwise(
        &mut self,
        reuse: bool,
        m: &OutgoingMessage<'_>,
        mut plan: Plan,
    ) -> Result<TransactionOutcome, ClientError> {
        if reuse {
            self.io.wbuf.clear();
            self.io.wbuf.extend_from_slice(b"RSET\r\n");
            self.flush(Stage::Rset).await?;
            self.rset_reply().await?;
        }
        self.io.wbuf.clear();
        self.push_mail(m);
        self.flush(Stage::Mail).await?;
        let mail = self.read(Stage::Mail).await?;
        let to_send = std::mem::take(&mut plan.send);
        if !mail.is_positive() {
            return Ok(failed_before_data(mail, plan.finish(), &to_send));
        }
        for &i in &to_send {
            self.io.wbuf.clear();
            self.push_rcpt(m, i);
            self.flush(Stage::Rcpt).await?;
            let reply = self.read(Stage::Rcpt).await?;
            if reply.code == 421 {
                plan.fill_pending(&reply);
                return Ok(failed_before_data(mail, plan.finish(), &to_send));
            }
            plan.set(i, rcpt_outcome(reply));
        }
        let outcomes = plan.finish();
        if !outcomes.contains(&RcptOutcome::Accepted) {
            return Ok(failed_before_data(mail, outcomes, &to_send));
        }
        self.io.wbuf.clear();
        self.io.wbuf.extend_from_slice(b"DATA\r\n");
        self.flush(Stage::Data).await?;
        let data = self.read(Stage::Data).await?;
        let data = if data.code == 354 {
            self.body(m.body).await?
        } else {
            data
        };
        Ok(TransactionOutcome {
            rcpts: outcomes,
            data: Some(data),
            mail_rejected: None,
        })
    }

    /// Writes the dot-stuffed body in blocks, then "." and reads the final reply.
    async fn body(&mut self, body: &[u8]) -> Result<Reply, ClientError> {
        let mut at_line_start = true;
        for block in body.chunks(DATA_BLOCK_BYTES) {
            self.io.wbuf.clear();
            at_line_start = dot_stuff(block, at_line_start, &mut self.io.wbuf);
            let io = &mut self.io;
            with_timeout(
                self.cfg.data_block_ms,
                Stage::DataBlock,
                io.flush_wbuf(Stage::DataBlock),
            )
            .await?;
        }
        self.io.wbuf.clear();
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            self.io.wbuf.extend_from_slice(b"\r\n");
        }
        self.io.wbuf.extend_from_slice(b".\r\n");
        let io = &mut self.io;
        with_timeout(self.cfg.data_done_ms, Stage::DataDone, async move {
            io.flush_wbuf(Stage::DataDone).await?;
            io.read_reply(Stage::DataDone).await
        })
        .await
    }
}

/// Appends `input` to `out`, doubling a "." that starts a line (RFC 5321 §4.5.2). A line
/// starts after LF (bare LF too, in case the peer treats it as a line end). Returns whether
/// the next byte would start a line, to carry across blocks.
pub fn dot_stuff(input: &[u8], mut at_line_start: bool, out: &mut Vec<u8>) -> bool {
    out.reserve(input.len() + input.len() / 64);
    let mut rest = input;
    while !rest.is_empty() {
        if at_line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        match memchr::memchr(b'\n', rest) {
            Some(nl) => {
                out.extend_from_slice(&rest[..=nl]);
                rest = &rest[nl + 1..];
                at_line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                at_line_start = false;
                rest = &[];
            }
        }
    }
    at_line_start
}

/// Appends " <params>" when they are safe on a command line (printable ASCII, bounded).
fn push_dsn(w: &mut Vec<u8>, params: &str) {
    let safe = !params.is_empty()
        && params.len() <= DSN_PARAMS_MAX_BYTES
        && params.bytes().all(|b| (b' '..=b'~').contains(&b));
    if safe {
        w.push(b' ');
        w.extend_from_slice(params.as_bytes());
    }
}

/// Safe to put between angle brackets on a command line.
fn address_ok(addr: &str) -> bool {
    addr.len() <= ADDRESS_MAX_BYTES
        && !addr
            .bytes()
            .any(|b| matches!(b, b'\r' | b'\n' | b'<' | b'>') || b < 0x20)
}

fn rcpt_outcome(reply: Reply) -> RcptOutcome {
    if reply.is_positive() {
        RcptOutcome::Accepted
    } else {
        RcptOutcome::Rejected(reply)
    }
}

fn local_rcpt_rejection() -> RcptOutcome {
    RcptOutcome::Rejected(Reply::new(
        501,
        (5, 1, 3),
        "recipient address cannot be sent",
    ))
}

/// MAIL rejected (every recipient sent, or to be sent, gets its reply; local decisions stay)
/// or no recipient accepted.
fn failed_before_data(
    mail: Reply,
    mut rcpts: Vec<RcptOutcome>,
    sent: &[usize],
) -> TransactionOutcome {
    if mail.is_positive() {
        return TransactionOutcome {
            rcpts,
            data: None,
            mail_rejected: None,
        };
    }
    for &i in sent {
        if let Some(slot) = rcpts.get_mut(i) {
            *slot = RcptOutcome::Rejected(mail.clone());
        }
    }
    TransactionOutcome {
        rcpts,
        data: None,
        mail_rejected: Some(mail),
    }
}

/// The outcome of a transaction the server ended with a 421 during RCPT.
fn closing(plan: Plan) -> TransactionOutcome {
    TransactionOutcome {
        rcpts: plan.finish(),
        data: None,
        mail_rejected: None,
    }
}

/// A 421 anywhere means the server is closing the connection (RFC 5321 §3.8).
fn closes_connection(outcome: &TransactionOutcome) -> bool {
    let is_421 = |r: &Reply| r.code == 421;
    outcome.mail_rejected.as_ref().is_some_and(is_421)
        || outcome.data.as_ref().is_some_and(is_421)
        || outcome
            .rcpts
            .iter()
            .any(|o| matches!(o, RcptOutcome::Rejected(r) if r.code == 421))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuff(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut start = true;
        for p in parts {
            start = dot_stuff(p, start, &mut out);
        }
        out
    }

    #[test]
    fn stuffs_leading_dots_across_blocks() {
        assert_eq!(stuff(&[b".a\r\nb\r\n.\r\n"]), b"..a\r\nb\r\n..\r\n");
        assert_eq!(stuff(&[b"x\r\n", b".y\r\n"]), b"x\r\n..y\r\n");
        assert_eq!(stuff(&[b"x\r", b"\n.", b"z"]), b"x\r\n..z");
        assert_eq!(stuff(&[b"a.b\r\n"]), b"a.b\r\n");
        assert_eq!(stuff(&[b""]), b"");
    }

    #[test]
    fn address_checks() {
        assert!(address_ok("a@b.example"));
        assert!(address_ok(""));
        assert!(!address_ok("a@b\r\nRCPT TO:<x@y>"));
        assert!(!address_ok("a>@b"));
        assert!(!address_ok(&"a".repeat(ADDRESS_MAX_BYTES + 1)));
    }
}
