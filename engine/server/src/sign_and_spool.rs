//! What happens between end-of-data and the 250: message checks, trace headers, DKIM signing,
//! the durable spool commit, and the hand-off to the shard's delivery queues.
//!
//! Phishing-style content of a tenant's submission is refused before signing (`[content]`,
//! `petrel-content`): nothing refused is signed or stored.
//!
//! Signing happens before spooling, so the signature survives restarts and a message is signed
//! exactly once however many times it is attempted. The List-Unsubscribe headers
//! (`list_unsubscribe`) are added just before signing, under a message id reserved from the
//! spool for the store that follows.
//!
//! A forwarding tenant's message (`arc_seal`) gets an ARC set over the message as it leaves,
//! after DKIM signing ([`seal_forwarded`], `arc.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use petrel_smtp::{Prepared, Reply, TraceInfo, Transaction, HEADER_SECTION_MAX_BYTES_DEFAULT};
use petrel_spool::{Attribution, Envelope, MessageId, Recipient, RecipientState};

use crate::arc_service::{Outcome, SealJob};
use crate::auth::Identity;
use crate::clock::now_ms;
use crate::ctx::ShardCtx;
use crate::list_unsubscribe;
use crate::metrics as m;

/// Why `prepare` refused a message: the reply, the metrics reason, and the `rejected` event's
/// details when there are any (a refused sending domain's check).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reply: Reply,
    pub reason: &'static str,
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

impl From<Reply> for Refusal {
    fn from(reply: Reply) -> Refusal {
        Refusal {
            reply,
            reason: "message_check",
            details: None,
        }
    }
}

impl Refusal {
    fn message_check(reply: Reply) -> Refusal {
        Refusal {
            reply,
            reason: "message_check",
            details: None,
        }
    }
}

/// A message ready to spool.
#[derive(Debug)]
pub struct PreparedMessage {
    pub body: Vec<u8>,
    pub attribution: Attribution,
    /// The message id reserved for it when one was written into it.
    pub reserved_id: Option<MessageId>,
    /// The ARC set it still needs, for a forwarding tenant ([`seal_forwarded`]).
    pub arc: Option<SealJob>,
}

/// Runs the message checks, adds Received (and Message-ID/Date for submissions), removes the
/// X-Petrel headers, checks the From domain ([`crate::domain_auth`]) and a tenant's submission
/// (sending not disabled, no phishing-style content), adds List-Unsubscribe when the tenant
/// asked for it, signs, and says which ARC set a forwarding tenant's message needs. A malformed
/// X-Petrel header (`550 5.6.0 <reason>`), a From domain that fails authentication
/// (`550 5.7.26`), disabled sending and phishing-style content (`550 5.7.1`) are refused here,
/// before anything is stored. A forwarding tenant may relay a From domain that is not its own
/// when its envelope sender's domain is (`arc::waives_from_check`).
pub fn prepare(
    ctx: &ShardCtx,
    tx: &Transaction,
    peer: SocketAddr,
    tls: Option<&str>,
    identity: Option<&Identity>,
    trace_id: &str,
) -> Result<PreparedMessage, Refusal> {
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
    let prepared = petrel_smtp::prepare(&tx.data, &trace, HEADER_SECTION_MAX_BYTES_DEFAULT)
        .map_err(|e| Refusal::message_check(e.reply()))?;
    let policy = ctx.policy.peek();
    let sending_domain = prepared
        .from_domain
        .as_deref()
        .and_then(|d| policy.find_domain(d));
    // A trusted-network client speaks for the From domain only if its network is mapped to it
    // (a plain `trusted_networks` entry speaks for none): see `ShardCtx::relay_may_sign`.
    let trusted = ctx.is_trusted(peer.ip())
        && ctx.relay_may_sign(peer.ip(), sending_domain.map(|d| d.name.as_str()));
    // The tenant that owns the From domain, when the policy knows one.
    let domain_tenant = sending_domain.map(|d| d.tenant_id.as_str());
    let Prepared {
        message,
        tags,
        metadata,
        rfc822_message_id,
        from_domain,
    } = prepared;
    let identity_tenant = identity.map(|i| i.tenant.as_deref());
    let tenant = tenant_of(identity_tenant, trusted, domain_tenant);
    let mail_from_domain = crate::arc::address_domain(&tx.mail_from);
    let forwarded = crate::arc::waives_from_check(
        &policy,
        identity_tenant,
        from_domain.as_deref(),
        mail_from_domain,
    );
    if !forwarded {
        crate::domain_auth::check_from(&policy, identity_tenant, from_domain.as_deref()).map_err(
            |r| Refusal {
                reply: r.reply,
                reason: "domain_auth",
                details: Some(r.details),
            },
        )?;
    }
    // Guardrails (issue 14): a tenant or From domain whose sending the control plane disabled
    // is refused before signing and storing (`550 5.7.1 sending disabled: <reason>`).
    if let Err(denial) = policy.check_message(tenant, from_domain.as_deref()) {
        let (code, enhanced, text) = denial.reply();
        return Err(Refusal {
            reason: "sending_disabled",
            reply: Reply::new(code, enhanced, text),
            details: None,
        });
    }
    if identity.is_some() || tenant.is_some() {
        check_content(ctx, &policy, &tx.data, from_domain.as_deref(), tenant)?;
    }
    let (message, reserved_id) = add_list_unsubscribe(ctx, &policy, tenant, tx, message);
    let unsigned_len = message.len();
    let message = match from_domain.as_deref() {
        Some(domain) if policy.has_signers() => {
            let allowed = may_sign(identity_tenant, trusted, domain_tenant);
            sign(&policy, domain, allowed, message, now_ms)
        }
        _ => message,
    };
    let arc = crate::arc::forwarding_tenant(&policy, tenant).map(|t| {
        let domain =
            crate::arc::seal_domain(&policy, t, from_domain.as_deref(), mail_from_domain, now_ms);
        SealJob {
            policy: ctx.policy.current(),
            domain: domain.unwrap_or_default().to_string(),
            // Signing only prepends.
            unsigned_from: message.len() - unsigned_len,
            mail_from_domain: mail_from_domain.unwrap_or_default().to_string(),
            peer: peer.ip(),
            now_unix_ms: now_ms,
        }
    });
    let attribution = Attribution {
        tenant_id: tenant.map(str::to_string),
        credential_id: identity
            .and_then(|i| i.policy.as_ref())
            .map(|p| p.credential_id.clone()),
        from_domain,
        rfc822_message_id,
        tags,
        metadata,
    };
    Ok(PreparedMessage {
        body: message,
        attribution,
        reserved_id,
        arc,
    })
}

/// Adds the ARC set a forwarding tenant's message needs (`job`), on the ARC thread; the message
/// goes out unsealed when it cannot be sealed (counted by reason, never refused for it).
pub async fn seal_forwarded(ctx: &ShardCtx, job: Option<SealJob>, body: Vec<u8>) -> Vec<u8> {
    let Some(job) = job else {
        return body;
    };
    let outcome = match (&ctx.arc, job.domain.is_empty()) {
        (_, true) => Outcome::Skipped(crate::arc::Skip::NoKey),
        (None, false) => Outcome::Skipped(crate::arc::Skip::Unavailable),
        (Some(service), false) => {
            let shared = Arc::new(body);
            let outcome = service.seal(job, Arc::clone(&shared)).await;
            let body = Arc::try_unwrap(shared).unwrap_or_else(|m| (*m).clone());
            return finish(outcome, body);
        }
    };
    finish(outcome, body)
}

fn finish(outcome: Outcome, body: Vec<u8>) -> Vec<u8> {
    match outcome {
        Outcome::Sealed { headers, cv } => {
            metrics::counter!(m::ARC_SEALS_TOTAL, "cv" => cv.label()).increment(1);
            let mut out = Vec::with_capacity(headers.len() + body.len());
            out.extend_from_slice(&headers);
            out.extend_from_slice(&body);
            out
        }
        Outcome::Skipped(skip) => {
            metrics::counter!(m::ARC_SEAL_SKIPPED_TOTAL, "reason" => skip.reason()).increment(1);
            tracing::debug!(
                reason = skip.reason(),
                "forwarded message sent without an ARC set"
            );
            body
        }
    }
}

/// The List-Unsubscribe headers, when the message's tenant turned them on and the message has
/// one recipient: a message id is reserved from the spool first, since the links name it.
fn add_list_unsubscribe(
    ctx: &ShardCtx,
    policy: &petrel_policy::CompiledPolicy,
    tenant: Option<&str>,
    tx: &Transaction,
    message: Vec<u8>,
) -> (Vec<u8>, Option<MessageId>) {
    let Some(tenant_id) = tenant else {
        return (message, None);
    };
    let req = list_unsubscribe::Request {
        tenant_id,
        recipients: &tx.recipients,
    };
    if !list_unsubscribe::wanted(policy, &req) {
        return (message, None);
    }
    match ctx.spool.reserve_id() {
        Ok(id) => (list_unsubscribe::add(policy, &req, id.0, message), Some(id)),
        // The store that follows fails the same way and answers 451.
        Err(_) => (message, None),
    }
}

/// Refuses phishing-style content (`[content] phishing_check`): `550 5.7.1 message refused:
/// looks like phishing (<rule names>)`. A link through one of the tenant's own sending domains
/// (its click-tracking domain) counts as the sender's own.
fn check_content(
    ctx: &ShardCtx,
    policy: &petrel_policy::CompiledPolicy,
    message: &[u8],
    from_domain: Option<&str>,
    tenant: Option<&str>,
) -> Result<(), Refusal> {
    let Some(checker) = ctx.content.as_ref() else {
        return Ok(());
    };
    let own = |host: &str| {
        tenant.is_some()
            && policy
                .find_domain(host)
                .is_some_and(|d| Some(d.tenant_id.as_str()) == tenant)
    };
    let verdict = checker.check(
        message,
        &petrel_content::Sender {
            from_domain,
            own_domain: &own,
        },
    );
    if !verdict.blocked() {
        return Ok(());
    }
    let rules = verdict.rule_names();
    tracing::info!(
        tenant,
        score = verdict.score,
        rules,
        "phishing-style content refused"
    );
    // What fired it (URLs of the message, possibly with tokens): debug only.
    tracing::debug!(hits = ?verdict.hits, "phishing-style content hits");
    Err(Refusal {
        details: None,
        reason: "content",
        reply: Reply::new(
            550,
            (5, 7, 1),
            format!("message refused: looks like phishing ({rules})"),
        ),
    })
}

/// The tenant a message is attributed to: the authenticated identity's (none for a config-file
/// user), else, for a trusted network, the tenant owning the From domain. `identity_tenant` is
/// None without AUTH and `Some(tenant)` with it.
fn tenant_of<'a>(
    identity_tenant: Option<Option<&'a str>>,
    trusted: bool,
    domain_tenant: Option<&'a str>,
) -> Option<&'a str> {
    match identity_tenant {
        Some(tenant) => tenant,
        None if trusted => domain_tenant,
        None => None,
    }
}

/// Whether the client may have the From domain signed: a trusted network (without a tenant's
/// credential), or a credential of the tenant that owns the domain.
fn may_sign(
    identity_tenant: Option<Option<&str>>,
    trusted: bool,
    domain_tenant: Option<&str>,
) -> bool {
    match identity_tenant {
        // A tenant's credential signs its own domains only, from wherever it connects.
        Some(Some(t)) => domain_tenant == Some(t),
        // A config-file user, or no AUTH: the network decides.
        Some(None) | None => trusted,
    }
}

/// DKIM-signs with the From domain's current key when the policy has one and the client may
/// speak for that domain (`allowed`: its tenant authenticated, or a trusted network).
fn sign(
    policy: &petrel_policy::CompiledPolicy,
    domain: &str,
    allowed: bool,
    message: Vec<u8>,
    now_ms: u64,
) -> Vec<u8> {
    let Some(signer) = policy.signer_for(domain) else {
        return message;
    };
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

/// The guardrails' warning for the 250 after DATA (`queued as X (warning: ...)`): the From
/// domain's or the tenant's rate near its threshold, as the current snapshot says.
pub fn reputation_warning(ctx: &ShardCtx, attribution: &Attribution) -> Option<String> {
    ctx.policy
        .peek()
        .reputation_warning(
            attribution.tenant_id.as_deref(),
            attribution.from_domain.as_deref(),
        )
        .map(str::to_string)
}

/// Stores durably (the 250 follows this) and queues for delivery. Returns the queue id.
pub async fn spool_and_queue(
    ctx: &ShardCtx,
    tx: &Transaction,
    peer: SocketAddr,
    identity: Option<&Identity>,
    body: Vec<u8>,
    attribution: Attribution,
    reserved_id: Option<MessageId>,
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
    let dsn = crate::dsn_params::for_spool(tx);
    let id = match ctx
        .spool
        .store_message(reserved_id, &envelope, &attribution, &dsn, &body)
        .await
    {
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
    ctx.enqueue(
        id.0,
        &envelope,
        attribution,
        crate::dsn_params::for_delivery(dsn),
    );
    ctx.publish_figures();
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_comes_from_the_identity_or_a_trusted_from_domain() {
        // AUTH with a control-plane credential: its tenant, whatever the From domain says.
        assert_eq!(tenant_of(Some(Some("t1")), false, Some("t2")), Some("t1"));
        // AUTH as a config-file user: no tenant, even from a trusted network.
        assert_eq!(tenant_of(Some(None), true, Some("t2")), None);
        // Trusted-network relay: the From domain's tenant, if the policy has the domain.
        assert_eq!(tenant_of(None, true, Some("t2")), Some("t2"));
        assert_eq!(tenant_of(None, true, None), None);
        // Neither (cannot relay anyway): nothing.
        assert_eq!(tenant_of(None, false, Some("t2")), None);
    }

    #[test]
    fn signing_needs_a_trusted_network_or_the_owning_tenant() {
        assert!(may_sign(None, true, None));
        assert!(may_sign(Some(Some("t1")), false, Some("t1")));
        assert!(!may_sign(Some(Some("t1")), false, Some("t2")));
        assert!(!may_sign(Some(None), false, None));
        assert!(!may_sign(Some(Some("t1")), false, None));
        // A tenant's credential from a trusted network still signs only its own domains.
        assert!(!may_sign(Some(Some("t1")), true, Some("t2")));
        assert!(!may_sign(Some(Some("t1")), true, None));
        assert!(may_sign(Some(Some("t1")), true, Some("t1")));
        assert!(may_sign(Some(None), true, None));
    }
}
