//! Credentials with an expiry (issue 16): an API key stops working at its `expires_unix_ms`
//! (the API's authentication checks it on every call), and this task then revokes every expired
//! credential in a mutation of its own, audited as `credential.expire` by
//! [`EXPIRY_ACTOR`]. The revocation bumps the policy version, so engines stop taking an expired
//! SMTP credential within one check interval plus the push (the snapshot carries no clock).

use crate::api::{audit_json, credentials::CredentialView, App};
use crate::audit::AuditEntry;
use crate::store::{self, StoreError};

/// How often expired credentials are looked for.
pub const CREDENTIAL_EXPIRY_CHECK_MS: u64 = 1_000;
/// Credentials revoked per pass, at most (the next pass takes the rest).
pub const EXPIRED_PER_PASS_MAX: i64 = 100;
/// The audit log's actor of an expiry.
pub const EXPIRY_ACTOR: &str = "system:credential-expiry";

/// Revokes expired credentials every [`CREDENTIAL_EXPIRY_CHECK_MS`].
pub async fn task(app: App) {
    let mut tick =
        tokio::time::interval(std::time::Duration::from_millis(CREDENTIAL_EXPIRY_CHECK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = pass(&app).await {
            tracing::warn!(error = %e, "credential expiry pass failed");
        }
    }
}

/// One pass: revokes the credentials expired by now; returns how many.
pub async fn pass(app: &App) -> Result<usize, StoreError> {
    let now = app.now_ms();
    let expired =
        store::credentials::expired(&mut *app.db.conn().await?, now, EXPIRED_PER_PASS_MAX).await?;
    let mut revoked = 0;
    for row in expired {
        let mut m = app.db.begin_mutation().await?;
        // Read again inside the mutation: an operator, or another node, may have been first.
        let current = store::credentials::get(m.conn(), &row.tenant_id, &row.id).await?;
        if current.revoked {
            continue;
        }
        let at = current.expires_unix_ms.unwrap_or(now);
        store::credentials::revoke(m.conn(), &current.tenant_id, &current.id, at).await?;
        let before = CredentialView::from(current);
        let after = CredentialView {
            revoked: true,
            revoked_unix_ms: Some(at),
            ..before.clone()
        };
        let entry = AuditEntry {
            tenant_id: Some(before.tenant_id.clone()),
            actor: EXPIRY_ACTOR.to_string(),
            remote_addr: String::new(),
            action: "credential.expire".to_string(),
            target: before.id.clone(),
            at_unix_ms: now,
            before: audit_json(&before),
            after: audit_json(&after),
        };
        let v = m.commit(entry).await?;
        app.notify(v);
        tracing::info!(credential = %after.id, tenant = %after.tenant_id, "credential expired");
        revoked += 1;
    }
    Ok(revoked)
}
