//! What happens between end-of-data and the 250: message checks, trace headers, DKIM signing,
//! the durable spool commit, and the hand-off to the shard's delivery queues.
//!
//! Signing happens before spooling, so the signature survives restarts and a message is signed
//! exactly once however many times it is attempted.

use std::net::SocketAddr;

use petrel_smtp::{Reply, TraceInfo, Transaction};
use petrel_spool::{Envelope, Recipient, RecipientState};

use crate::auth::Identity;
use crate::clock::now_ms;
use crate::ctx::ShardCtx;
use crate::metrics as m;

/// Runs the message checks, adds Received (and Message-ID/Date for submissions), signs.
pub fn prepare(
    ctx: &ShardCtx,
    tx: &Transaction,
    peer: SocketAddr,
    tls: Option<&str>,
    identity: Option<&Identity>,
    trace_id: &str,
) -> Result<Vec<u8>, Reply> {
    let now_ms = now_ms();
    let trace = TraceInfo {
        hostname: &ctx.cfg.server.hostname,
        helo: &tx.helo,
        peer,
        tls,
        authenticated_as: identity.map(|i| i.username.as_str()),
        queue_id: trace_id,
        recipient: match tx.recipients.as_slice() {
            [one] => Some(one.as_str()),
            _ => None,
        },
        now_unix_secs: (now_ms / 1000) as i64,
        submission: identity.is_some(),
    };
    let message = petrel_smtp::prepare_message(&tx.data, &trace).map_err(|e| e.reply())?;
    Ok(sign(ctx, identity, peer, message, now_ms))
}

/// DKIM-signs with the From domain's current key when the policy has one and the client may
/// speak for that domain (its tenant authenticated, or a trusted network).
fn sign(
    ctx: &ShardCtx,
    identity: Option<&Identity>,
    peer: SocketAddr,
    message: Vec<u8>,
    now_ms: u64,
) -> Vec<u8> {
    let policy = ctx.policy.peek();
    if !policy.has_signers() {
        return message;
    }
    let Some(domain) = from_domain(&message) else {
        return message;
    };
    let Some(signer) = policy.signer_for(&domain) else {
        return message;
    };
    let tenant = policy
        .find_domain(&domain)
        .map(|d| d.tenant_id.as_str())
        .unwrap_or("");
    let trusted = ctx
        .cfg
        .smtp
        .trusted_networks
        .iter()
        .any(|n| n.contains(&peer.ip()));
    let allowed = trusted || identity.and_then(|i| i.tenant.as_deref()) == Some(tenant);
    if !allowed {
        return message;
    }
    match signer.sign(&message, now_ms) {
        Ok(header) => {
            metrics::counter!(m::DKIM_SIGNED_TOTAL).increment(1);
            let mut out = Vec::with_capacity(header.len() + message.len());
            out.extend_from_slice(&header);
            out.extend_from_slice(&message);
            out
        }
        Err(e) => {
            tracing::warn!(domain, error = %e, "DKIM signing failed; sending unsigned");
            message
        }
    }
}

/// The domain of the first address in the From header, lowercased.
fn from_domain(message: &[u8]) -> Option<String> {
    let headers = petrel_smtp::parse_headers(message).ok()?;
    let (_, value) = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("from"))?;
    let value = std::str::from_utf8(value).ok()?;
    let addr = match (value.rfind('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.trim(),
    };
    let domain = addr.rsplit_once('@')?.1.trim();
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

/// Stores durably (the 250 follows this) and queues for delivery. Returns the queue id.
pub async fn spool_and_queue(
    ctx: &ShardCtx,
    tx: &Transaction,
    peer: SocketAddr,
    identity: Option<&Identity>,
    body: Vec<u8>,
) -> Result<String, Reply> {
    let received_unix_ms = now_ms();
    let envelope = Envelope {
        mail_from: tx.mail_from.clone(),
        recipients: tx
            .recipients
            .iter()
            .map(|r| Recipient {
                address: r.clone(),
                state: RecipientState::Pending,
                attempts: 0,
                next_attempt_unix_ms: received_unix_ms,
                last_reply: None,
            })
            .collect(),
        tenant: identity.and_then(|i| i.tenant.clone()),
        received_unix_ms,
        client_addr: peer.to_string(),
        helo: tx.helo.clone(),
        authenticated_as: identity.map(|i| i.username.clone()),
        smtputf8: tx.params.smtputf8,
        body_8bit: !matches!(tx.params.body, petrel_smtp::Body::SevenBit),
        is_dsn: false,
    };
    let id = match ctx.spool.store(&envelope, &body).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "spool store failed");
            return Err(Reply::new(
                451,
                (4, 3, 0),
                "Local error in processing: spool write failed",
            ));
        }
    };
    ctx.enqueue(id.0, &envelope);
    ctx.publish_figures();
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_domain_variants() {
        let m = b"From: Alice <alice@Example.COM>\r\nTo: b@x\r\n\r\nhi\r\n";
        assert_eq!(from_domain(m).as_deref(), Some("example.com"));
        let m = b"From: bob@dev.petrel.test\r\n\r\nhi\r\n";
        assert_eq!(from_domain(m).as_deref(), Some("dev.petrel.test"));
        let m = b"To: b@x\r\n\r\nhi\r\n";
        assert_eq!(from_domain(m), None);
    }
}
