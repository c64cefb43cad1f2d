//! One write of a connection (`connection.rs`): the batches prepared, sent in one go, and each
//! transaction's outcome applied; a refusal that matches a throttle rule is reported to the
//! site (`site.rs`, `Inner::observe_reply`).

use std::rc::Rc;
use std::time::Instant;

use petrel_outbound::{ClientError, OutgoingMessage};

use super::connect::Connected;
use super::outcome::{apply, Attempt, RcptResult};
use super::prepare::prepare;
use super::site::SiteId;
use super::{now_unix_ms, Inner, SpoolAccess};
use crate::queue::{DomainId, Entry};

/// Sends the batches over the connection (several transactions in one write when the peer
/// offers PIPELINING and CHUNKING) and applies each outcome. Returns false when the connection
/// is no longer usable.
pub(super) async fn deliver<S: SpoolAccess + 'static>(
    inner: &Rc<Inner<S>>,
    site_id: SiteId,
    c: &mut Connected,
    batches: Vec<(DomainId, Vec<Entry>)>,
) -> bool {
    let prepared = prepare(inner, batches).await;
    if prepared.is_empty() {
        return true;
    }
    let rcpt_refs: Vec<Vec<&str>> = prepared
        .iter()
        .map(|p| p.rcpts.iter().map(String::as_str).collect())
        .collect();
    let messages: Vec<OutgoingMessage<'_>> = prepared
        .iter()
        .zip(&rcpt_refs)
        .map(|(p, r)| OutgoingMessage {
            from: &p.from,
            rcpts: r,
            body: &p.body,
            dsn: p.dsn.as_ref().map(|d| d.outgoing()),
        })
        .collect();
    let reused = c.sent > 0;
    let started = Instant::now();
    let results = c.conn.send_many(&messages).await;
    let per_message = started.elapsed().as_secs_f64() / prepared.len() as f64;
    let attempt_seconds = metrics::histogram!("petrel_delivery_attempt_duration_seconds");
    c.sent = c
        .sent
        .saturating_add(u32::try_from(prepared.len()).unwrap_or(u32::MAX));
    let mut usable = true;
    // A connection lost in the middle of a transaction may have taken the replies of the
    // write's earlier transactions with it: no more multi-transaction writes to this host for
    // a while (`pipelining.rs`).
    if results.iter().any(|r| {
        matches!(
            r,
            Err(ClientError::Dropped { .. } | ClientError::Io(_) | ClientError::Timeout { .. })
        )
    }) {
        inner.drops.borrow_mut().note_drop(c.addr, Instant::now());
        metrics::counter!("petrel_delivery_pipeline_pauses_total").increment(1);
    }
    for (n, (p, sent)) in prepared.into_iter().zip(results).enumerate() {
        attempt_seconds.record(per_message);
        let mut attempt = Attempt {
            host: Some(c.host.clone()),
            addr: Some(c.addr),
            tls: c.tls.clone(),
            remote: true,
            no_dsn: false,
            // The next hop took DSN duty over only when it was given the parameters.
            next_hop_dsn: c.conn.offers_dsn() && p.dsn.is_some(),
        };
        let message_id = p.batch[0].message_id;
        let refusal = match &sent {
            Ok(outcome) => negative_reply(outcome),
            Err(ClientError::Rejected { reply, .. }) => Some(reply),
            Err(_) => None,
        };
        if let Some(reply) = refusal {
            let tenant = inner
                .state
                .borrow()
                .queues
                .tenant(p.domain)
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            inner.observe_reply(site_id, tenant.as_deref(), reply);
        }
        let results: Vec<RcptResult> = match sent {
            Ok(outcome) => (0..p.batch.len())
                .map(|i| RcptResult::classify(&outcome, i, &inner.cfg.bounce_classifier))
                .collect(),
            Err(ClientError::Dropped { stage })
                if (reused || n > 0) && stage.is_before_transaction() =>
            {
                // The server closed the connection before this transaction began (idle, or an
                // earlier one in the same write failed): not an attempt. The batch goes back,
                // due now, for a fresh connection.
                requeue(inner, p.domain, p.batch);
                usable = false;
                continue;
            }
            Err(e) => {
                attempt.remote = false;
                usable = false;
                let result = RcptResult::client_error(&e, &inner.cfg.bounce_classifier);
                vec![result; p.batch.len()]
            }
        };
        apply(
            inner,
            message_id,
            &p.batch,
            &results,
            &attempt,
            Some(p.body.as_slice()),
        )
        .await;
    }
    usable
}

/// The transaction's first refusal: MAIL's, the message's, else a recipient's.
fn negative_reply(
    outcome: &petrel_outbound::TransactionOutcome,
) -> Option<&petrel_outbound::Reply> {
    let rcpt = outcome.rcpts.iter().find_map(|r| match r {
        petrel_outbound::RcptOutcome::Rejected(reply) => Some(reply),
        _ => None,
    });
    outcome
        .mail_rejected
        .as_ref()
        .or(outcome.data.as_ref().filter(|r| !r.is_positive()))
        .or(rcpt)
}

/// Puts entries back into the domain's schedule, due now (the domain is held by the batch).
pub(super) fn requeue<S: SpoolAccess>(inner: &Inner<S>, id: DomainId, entries: Vec<Entry>) {
    let mut st = inner.state.borrow_mut();
    let now = now_unix_ms();
    for e in entries {
        st.queues.schedule(
            id,
            Entry {
                due_unix_ms: now,
                ..e
            },
        );
    }
}
