//! First-start and development bootstrap: the operator tenant with its owner key, and the
//! `petrel up` development tenant.

use crate::api::credentials::{insert_credential, NewCredential};
use crate::api::{domains, new_id};
use crate::audit::AuditEntry;
use crate::auth::{HashCost, Role};
use crate::store::{self, tenants::Tenant, Db};
use crate::{Clock, ControlError, ServeInfo};

/// The operator tenant's name.
pub const OPERATOR_TENANT_NAME: &str = "operator";
/// The development tenant `petrel up` creates.
pub const DEV_TENANT_NAME: &str = "dev";
/// Its sending domain (verified for loopback use without DNS).
pub const DEV_DOMAIN: &str = "dev.petrel.test";
/// The label of its SMTP credential.
pub const DEV_SMTP_NAME: &str = "dev smtp";

fn system_entry(
    clock: &dyn Clock,
    tenant: &str,
    action: &str,
    after: serde_json::Value,
) -> AuditEntry {
    AuditEntry {
        tenant_id: Some(tenant.to_string()),
        actor: "system:bootstrap".into(),
        remote_addr: "local".into(),
        action: action.into(),
        target: tenant.into(),
        at_unix_ms: clock.now_unix_ms(),
        before: None,
        after: Some(after),
    }
}

/// Creates the operator tenant and its owner key when no operator tenant exists.
/// Returns the key when it was just created.
pub async fn ensure_operator(
    db: &Db,
    cost: HashCost,
    clock: &dyn Clock,
) -> Result<Option<String>, ControlError> {
    if store::tenants::operator_exists(&mut *db.conn().await?).await? {
        return Ok(None);
    }
    let tenant = Tenant {
        id: new_id("ten"),
        name: OPERATOR_TENANT_NAME.into(),
        is_operator: true,
        suspended: false,
        messages_per_second_max: None,
        messages_per_day_max: None,
        allow_unverified_domains: false,
        created_unix_ms: clock.now_unix_ms(),
        list_unsubscribe: false,
        arc_seal: false,
        egress_pool: None,
        delivery_weight: petrel_policy::snapshot::DELIVERY_WEIGHT_DEFAULT,
    };
    let prepared = NewCredential::api_key(&tenant.id, "bootstrap owner key", Role::Owner)
        .prepare(cost)
        .await?;
    // The tenant's data key, committed on its own before the mutation seals with it.
    db.sealer().prepare(Some(&tenant.id)).await?;
    let mut m = db.begin_mutation().await?;
    store::tenants::insert(m.conn(), db.sealer(), &tenant).await?;
    let created = insert_credential(m.conn(), prepared, clock.now_unix_ms()).await?;
    let after =
        serde_json::json!({"tenant": tenant, "owner_key_prefix": created.credential.prefix});
    match m
        .commit(system_entry(clock, &tenant.id, "tenant.bootstrap", after))
        .await
    {
        Ok(_) => Ok(Some(created.secret)),
        // Another node won the race: its key was printed there.
        Err(e) if e.is_unique_violation() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What `petrel up` prints. Secrets are present only when this call created them.
#[derive(Debug, Clone)]
pub struct DevBootstrap {
    pub tenant_id: String,
    pub domain: String,
    pub smtp_username: String,
    pub smtp_password: Option<String>,
    /// An `admin` API key of the development tenant.
    pub api_key: Option<String>,
}

impl DevBootstrap {
    /// Human-readable lines for the start-up banner.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![
            format!(
                "development tenant: {} ({})",
                DEV_TENANT_NAME, self.tenant_id
            ),
            format!("sending domain: {} (verified for loopback)", self.domain),
        ];
        match &self.smtp_password {
            Some(p) => out.push(format!(
                "SMTP AUTH (shown once): username {} password {p}",
                self.smtp_username
            )),
            None => out.push(format!(
                "SMTP AUTH username {} (password shown at first start; rotate it with POST /v1/credentials/{{id}}/rotate)",
                self.smtp_username
            )),
        }
        if let Some(k) = &self.api_key {
            out.push(format!(
                "development tenant admin API key (shown once): {k}"
            ));
        }
        out
    }
}

/// Creates, once, the development tenant, its verified-for-loopback domain `dev.petrel.test`
/// and SMTP credentials; later calls return what exists (without secrets).
pub async fn bootstrap_dev(info: &ServeInfo) -> Result<DevBootstrap, ControlError> {
    let app = &info.app;
    let db = &app.db;
    let mut conn = db.conn().await?;
    if let Some(tenant) =
        store::tenants::get_by_name(&mut conn, db.sealer(), DEV_TENANT_NAME).await?
    {
        let user =
            store::credentials::smtp_username_by_name(&mut conn, &tenant.id, DEV_SMTP_NAME).await?;
        if let Some(username) = user {
            drop(conn);
            lift_dev_cap(info, &tenant.id).await?;
            return Ok(DevBootstrap {
                tenant_id: tenant.id,
                domain: DEV_DOMAIN.into(),
                smtp_username: username.unwrap_or_default(),
                smtp_password: None,
                api_key: None,
            });
        }
    }
    drop(conn);
    create_dev(info).await
}

/// Who lifts the development tenant's new-tenant cap (guardrails, issue 14).
const DEV_CAP_ACTOR: &str = "system:bootstrap";

/// Lifts the development tenant's new-tenant cap when a data directory made before the
/// guardrails has none lifted yet (one audited mutation, once).
async fn lift_dev_cap(info: &ServeInfo, tenant_id: &str) -> Result<(), ControlError> {
    let app = &info.app;
    let lifted = store::guardrails::cap_lifts(&mut *app.db.conn().await?).await?;
    if lifted.contains(tenant_id) {
        return Ok(());
    }
    let mut m = app.db.begin_mutation().await?;
    let now = app.now_ms();
    store::guardrails::lift_cap(m.conn(), tenant_id, DEV_CAP_ACTOR, now).await?;
    let entry = system_entry(
        app.clock.as_ref(),
        tenant_id,
        "guard.cap_lifted",
        serde_json::json!({"cap_lifted": true}),
    );
    let v = m.commit(entry).await?;
    app.notify(v);
    Ok(())
}

async fn create_dev(info: &ServeInfo) -> Result<DevBootstrap, ControlError> {
    let app = &info.app;
    let now = app.now_ms();
    let cost = app.settings.hash_cost;
    let existing =
        store::tenants::get_by_name(&mut *app.db.conn().await?, app.db.sealer(), DEV_TENANT_NAME)
            .await?;
    let (tenant, tenant_exists) = match existing {
        Some(t) => (t, true),
        None => (
            Tenant {
                id: new_id("ten"),
                name: DEV_TENANT_NAME.into(),
                is_operator: false,
                suspended: false,
                messages_per_second_max: None,
                messages_per_day_max: None,
                allow_unverified_domains: true,
                created_unix_ms: now,
                list_unsubscribe: false,
                arc_seal: false,
                egress_pool: None,
                delivery_weight: petrel_policy::snapshot::DELIVERY_WEIGHT_DEFAULT,
            },
            false,
        ),
    };
    let mut smtp = NewCredential::api_key(&tenant.id, DEV_SMTP_NAME, Role::Viewer);
    smtp.kind = "smtp";
    smtp.role = None;
    smtp.scopes = vec!["send".into()];
    smtp.username = Some(format!("dev@{DEV_DOMAIN}"));
    let smtp = smtp.prepare(cost).await?;
    let api = NewCredential::api_key(&tenant.id, "dev admin key", Role::Admin)
        .prepare(cost)
        .await?;
    let key = domains::generate_key(petrel_policy::DkimAlgorithm::Ed25519).await?;

    app.db.sealer().prepare(Some(&tenant.id)).await?;
    let mut m = app.db.begin_mutation().await?;
    if !tenant_exists {
        store::tenants::insert(m.conn(), app.db.sealer(), &tenant).await?;
    }
    if !store::domains::exists_by_name(m.conn(), &tenant.id, DEV_DOMAIN).await? {
        let domain = store::domains::Domain {
            id: new_id("dom"),
            tenant_id: tenant.id.clone(),
            name: DEV_DOMAIN.into(),
            verified: true,
            verified_loopback: true,
            verified_unix_ms: Some(now),
            messages_per_second_max: None,
            last_check_json: None,
            created_unix_ms: now,
        };
        store::domains::insert(m.conn(), &domain).await?;
        let selector = domains::new_selector();
        let row = domains::key_row(&domain, &selector, key, now, Some(now));
        store::domains::insert_key(m.conn(), app.db.sealer(), &row).await?;
    }
    let smtp = insert_credential(m.conn(), smtp, now).await?;
    let api = insert_credential(m.conn(), api, now).await?;
    // The operator's development tenant is not a new customer: no new-tenant cap.
    store::guardrails::lift_cap(m.conn(), &tenant.id, DEV_CAP_ACTOR, now).await?;
    let after = serde_json::json!({
        "tenant": tenant, "domain": DEV_DOMAIN,
        "smtp_credential": smtp.credential, "api_key_prefix": api.credential.prefix,
    });
    let v = m
        .commit(system_entry(
            app.clock.as_ref(),
            &tenant.id,
            "dev.bootstrap",
            after,
        ))
        .await?;
    app.notify(v);
    Ok(DevBootstrap {
        tenant_id: tenant.id,
        domain: DEV_DOMAIN.into(),
        smtp_username: smtp.credential.username.unwrap_or_default(),
        smtp_password: Some(smtp.secret),
        api_key: Some(api.secret),
    })
}
