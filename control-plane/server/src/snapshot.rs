//! Builds a [`PolicySnapshot`] from the store: every tenant, every sending domain with its
//! listed DKIM private keys, every credential (argon2 hashes only), destination limits and
//! defaults, the return path (bounce domain, one-click URL base, token keys), the tenants
//! deleted lately (whose queued mail the engines drop or bounce), the provider shaping limits
//! laid over the engines' shaping files, read in one
//! consistent transaction so the version matches the content.

use petrel_policy::snapshot::DeletedTenant;
use petrel_policy::{
    AuthFailure, Credential, CredentialKind, DestinationLimit, DkimKey, PolicySnapshot, ReturnPath,
    SendingDomain, Tenant, TokenKey,
};

use crate::api::Settings;
use crate::store::{self, Db};
use crate::ControlError;

fn u32_sat(v: Option<u64>) -> Option<u32> {
    v.map(|x| u32::try_from(x).unwrap_or(u32::MAX))
}

/// Reads the snapshot. `settings.dkim_rotation_grace_ms`: how long retired keys stay in it.
pub async fn build(
    db: &Db,
    now_ms: i64,
    settings: &Settings,
) -> Result<PolicySnapshot, ControlError> {
    let dkim_grace_ms = settings.dkim_rotation_grace_ms;
    let mut tx = db.begin_consistent_read().await?;
    let version = store::policy_version(&mut tx).await?;
    let defaults = store::limits::defaults(&mut tx).await?;

    let guard = crate::guardrails::snapshot_notes(&mut tx).await?;
    let mut tenants: Vec<Tenant> = store::tenants::list(&mut tx, db.sealer())
        .await?
        .into_iter()
        .map(|t| Tenant {
            new_tenant_cap: settings.guardrails.cap_for(
                t.created_unix_ms,
                t.is_operator,
                guard.cap_lifts.contains(&t.id),
            ),
            sending_disabled: guard.disabled(&t.id, ""),
            reputation_warning: guard.warning(&t.id, ""),
            id: t.id,
            name: t.name,
            suspended: t.suspended,
            messages_per_second_max: u32_sat(t.messages_per_second_max),
            messages_per_day_max: t.messages_per_day_max,
            allow_unverified_domains: t.allow_unverified_domains,
            list_unsubscribe: t.list_unsubscribe,
            arc_seal: t.arc_seal,
            egress_pool: t.egress_pool,
            delivery_weight: t.delivery_weight,
        })
        .collect();
    tenants.sort_by(|a, b| a.id.cmp(&b.id));

    let listed_after = now_ms.saturating_sub(dkim_grace_ms);
    let mut keys: std::collections::HashMap<String, Vec<DkimKey>> = Default::default();
    for k in store::domains::listed_keys_all(&mut tx, db.sealer(), listed_after).await? {
        keys.entry(k.domain_id).or_default().push(DkimKey {
            selector: k.selector,
            algorithm: k.algorithm,
            private_key_pkcs8_der: k.private_key_pkcs8_der,
            // Pending keys (record not yet seen) never sign.
            active_from_unix_ms: k
                .activated_unix_ms
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or(u64::MAX),
            retired: k.retired_unix_ms.is_some(),
        });
    }
    let mut failures: std::collections::HashMap<String, AuthFailure> = Default::default();
    for c in store::domain_checks::failing_all(&mut tx).await? {
        if let Some(check) = c.failing_check {
            failures.insert(
                c.domain_id,
                AuthFailure {
                    check,
                    detail: c.failure_detail.unwrap_or_default(),
                    checked_unix_ms: u64::try_from(c.changed_unix_ms).unwrap_or(0),
                },
            );
        }
    }
    let domains = store::domains::list_all(&mut tx)
        .await?
        .into_iter()
        .map(|d| SendingDomain {
            sending_disabled: guard.disabled(&d.tenant_id, &d.name),
            reputation_warning: guard.warning(&d.tenant_id, &d.name),
            auth_failure: failures.remove(&d.id),
            dkim_keys: keys.remove(&d.id).unwrap_or_default(),
            tenant_id: d.tenant_id,
            name: d.name,
            verified: d.verified || d.verified_loopback,
            messages_per_second_max: u32_sat(d.messages_per_second_max),
        })
        .collect();

    let credentials = store::credentials::list_all(&mut tx)
        .await?
        .into_iter()
        .map(|c| Credential {
            id: c.id,
            tenant_id: c.tenant_id,
            kind: if c.kind == "smtp" {
                CredentialKind::Smtp
            } else {
                CredentialKind::Api
            },
            username: c.username.unwrap_or_default(),
            prefix: c.prefix,
            argon2_phc: c.phc,
            scopes: c.scopes,
            allowed_sender_domains: c.allowed_sender_domains,
            ip_allowlist: c.ip_allowlist,
            revoked: c.revoked,
        })
        .collect();

    let destination_limits = store::limits::destinations(&mut tx, None)
        .await?
        .into_iter()
        .map(|d| DestinationLimit {
            domain: d.domain,
            connections_max: u32_sat(d.connections_max),
            messages_per_second_max: u32_sat(d.messages_per_second_max),
            tls_required: d.tls_required,
        })
        .collect();
    let token_keys = store::token_keys::active(&mut tx, db.sealer()).await?;
    // The newest deletions, however old: what the snapshot holds depends on the store only,
    // so one version always has one content.
    let deleted_tenants = store::deleted_tenants::since(
        &mut tx,
        0,
        i64::try_from(petrel_policy::snapshot::DELETED_TENANTS_MAX).unwrap_or(i64::MAX),
    )
    .await?
    .into_iter()
    .map(|d| DeletedTenant {
        id: d.tenant_id,
        bounce_queued: d.bounce_queued,
        deleted_unix_ms: u64::try_from(d.deleted_unix_ms).unwrap_or(0),
    })
    .collect();
    let shaping = store::shaping::list(&mut tx)
        .await?
        .into_iter()
        .map(|r| r.limits)
        .collect();
    tx.commit().await.map_err(store::StoreError::from)?;
    let return_path = ReturnPath {
        bounce_domain: settings.return_path_domain.clone(),
        one_click_url_base: settings.public_url.clone(),
        current_key_id: token_keys.last().map_or(0, |k| k.id),
        keys: token_keys
            .into_iter()
            .map(|k| TokenKey {
                id: k.id,
                secret: k.secret,
            })
            .collect(),
    };

    Ok(PolicySnapshot {
        version,
        generated_unix_ms: u64::try_from(now_ms).unwrap_or(0),
        tenants,
        domains,
        credentials,
        destination_limits,
        defaults,
        return_path,
        deleted_tenants,
        shaping,
    })
}
