//! The access test's table: every route with the permission it declares, what its id refers
//! to, and the body each call sends (`roles.rs` runs it for every role).

use petrel_control::auth::Permission as P;
use serde_json::{json, Value};

/// What the path's id refers to.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Target {
    /// No id: acts on the caller's own tenant (or globally).
    Own,
    /// Another tenant's domain or credential.
    OtherTenantsObject,
    /// Another tenant's id on a tenant-management route.
    OtherTenant,
}

pub struct Case {
    pub method: &'static str,
    pub route: &'static str,
    pub path: String,
    pub permission: P,
    pub target: Target,
    pub body: fn(usize) -> Option<Value>,
    /// A body that is not JSON (instead of `body`).
    pub raw: Option<RawBody>,
}

/// A content type and a body text made from the call's number.
pub type RawBody = (&'static str, fn(usize) -> String);

pub fn none(_: usize) -> Option<Value> {
    None
}

pub fn cases(b_tenant: &str, b_domain: &str, b_cred: &str, b_hook: &str) -> Vec<Case> {
    use Target::*;
    let c =
        |method, route: &'static str, permission, target, body: fn(usize) -> Option<Value>| Case {
            method,
            route,
            path: route
                .replace(
                    "{id}",
                    match route {
                        r if r.starts_with("/v1/tenants/") => b_tenant,
                        r if r.starts_with("/v1/domains/") => b_domain,
                        r if r.starts_with("/v1/webhooks/") => b_hook,
                        _ => b_cred,
                    },
                )
                .replace("{domain}", "roles.test")
                .replace("{name}", "roles-provider")
                .replace("{address}", B_SUPPRESSED),
            permission,
            target,
            body,
            raw: None,
        };
    vec![
        c("POST", "/v1/tenants", P::TenantsManage, Own, |n| {
            Some(json!({"name": format!("t-{n}")}))
        }),
        c("GET", "/v1/tenants", P::TenantsManage, Own, none),
        c("GET", "/v1/tenants/{id}", P::TenantRead, OtherTenant, none),
        c(
            "GET",
            "/v1/tenants/{id}/guardrails",
            P::TenantRead,
            OtherTenant,
            none,
        ),
        c(
            "POST",
            "/v1/tenants/{id}/guardrails/lift-cap",
            P::TenantsManage,
            OtherTenant,
            none,
        ),
        c(
            "POST",
            "/v1/tenants/{id}/guardrails/enable",
            P::TenantsManage,
            OtherTenant,
            |_| Some(json!({})),
        ),
        c(
            "PATCH",
            "/v1/tenants/{id}",
            P::TenantsManage,
            OtherTenant,
            |_| Some(json!({})),
        ),
        c(
            "POST",
            "/v1/tenants/{id}/suspend",
            P::TenantsManage,
            OtherTenant,
            none,
        ),
        c(
            "POST",
            "/v1/tenants/{id}/unsuspend",
            P::TenantsManage,
            OtherTenant,
            none,
        ),
        // The owner's start (202) comes before its fetch (202 running, or 200 ready).
        c(
            "POST",
            "/v1/tenants/{id}/export",
            P::TenantExport,
            OtherTenant,
            none,
        ),
        c(
            "GET",
            "/v1/tenants/{id}/export",
            P::TenantExport,
            OtherTenant,
            none,
        ),
        c(
            "PUT",
            "/v1/tenants/{id}/limits",
            P::TenantsManage,
            OtherTenant,
            |_| Some(json!({"messages_per_second_max": 9, "messages_per_day_max": null})),
        ),
        c("POST", "/v1/domains", P::DomainsWrite, Own, |n| {
            Some(json!({"name": format!("r{n}.example.test")}))
        }),
        c("GET", "/v1/domains", P::DomainsRead, Own, none),
        c(
            "GET",
            "/v1/domains/{id}/dmarc",
            P::DomainsRead,
            OtherTenantsObject,
            none,
        ),
        c(
            "GET",
            "/v1/domains/{id}",
            P::DomainsRead,
            OtherTenantsObject,
            none,
        ),
        c(
            "POST",
            "/v1/domains/{id}/verify",
            P::DomainsWrite,
            OtherTenantsObject,
            none,
        ),
        c(
            "POST",
            "/v1/domains/{id}/rotate",
            P::DomainsWrite,
            OtherTenantsObject,
            none,
        ),
        c(
            "POST",
            "/v1/domains/{id}/check",
            P::DomainsWrite,
            OtherTenantsObject,
            none,
        ),
        c(
            "PUT",
            "/v1/domains/{id}/limits",
            P::LimitsWrite,
            OtherTenantsObject,
            |_| Some(json!({"messages_per_second_max": 1})),
        ),
        c(
            "DELETE",
            "/v1/domains/{id}",
            P::DomainsWrite,
            OtherTenantsObject,
            none,
        ),
        c("POST", "/v1/credentials", P::CredentialsWrite, Own, |n| {
            Some(json!({"kind": "api", "name": format!("k{n}"), "role": "viewer"}))
        }),
        c("GET", "/v1/credentials", P::CredentialsRead, Own, none),
        c(
            "GET",
            "/v1/credentials/{id}",
            P::CredentialsRead,
            OtherTenantsObject,
            none,
        ),
        c(
            "POST",
            "/v1/credentials/{id}/rotate",
            P::CredentialsWrite,
            OtherTenantsObject,
            none,
        ),
        c(
            "POST",
            "/v1/credentials/{id}/revoke",
            P::CredentialsWrite,
            OtherTenantsObject,
            none,
        ),
        c(
            "PATCH",
            "/v1/credentials/{id}",
            P::CredentialsWrite,
            OtherTenantsObject,
            |_| Some(json!({"scopes": ["send"]})),
        ),
        c("GET", "/v1/limits", P::LimitsRead, Own, none),
        c(
            "PUT",
            "/v1/limits/defaults",
            P::GlobalLimitsWrite,
            Own,
            |_| Some(json!({"destination_connections_max": 10})),
        ),
        c(
            "PUT",
            "/v1/limits/destinations/{domain}",
            P::GlobalLimitsWrite,
            Own,
            |_| Some(json!({"connections_max": 2})),
        ),
        c(
            "DELETE",
            "/v1/limits/destinations/{domain}",
            P::GlobalLimitsWrite,
            Own,
            none,
        ),
        c(
            "GET",
            "/v1/shaping/providers",
            P::GlobalLimitsRead,
            Own,
            none,
        ),
        // The owner's set comes before its delete (204), so the entry exists by then.
        c(
            "PUT",
            "/v1/shaping/providers/{name}",
            P::GlobalLimitsWrite,
            Own,
            |_| Some(json!({"connections_max": 3})),
        ),
        c(
            "DELETE",
            "/v1/shaping/providers/{name}",
            P::GlobalLimitsWrite,
            Own,
            none,
        ),
        c("GET", "/v1/audit-log", P::AuditRead, Own, none),
        c("GET", "/v1/audit-log/verify", P::AuditVerify, Own, none),
        c(
            "POST",
            "/v1/audit-log/checkpoint",
            P::AuditVerify,
            Own,
            none,
        ),
        c("GET", "/v1/audit-log/export", P::AuditRead, Own, none),
        c("GET", "/v1/engines", P::EnginesRead, Own, none),
        c(
            "POST",
            "/v1/engines/{id}/identity",
            P::EnginesManage,
            Own,
            none,
        ),
        c(
            "POST",
            "/v1/engines/{id}/revoke",
            P::EnginesManage,
            Own,
            none,
        ),
        c("POST", "/v1/tls-rpt/send", P::EnginesManage, Own, |_| {
            Some(json!({"day": "2026-12-05"}))
        }),
        c("GET", "/v1/events", P::EventsRead, Own, none),
        c(
            "GET",
            "/v1/messages/{id}",
            P::EventsRead,
            OtherTenantsObject,
            none,
        ),
        c("GET", "/v1/stats", P::StatsRead, Own, none),
        c(
            "PUT",
            "/v1/tenants/{id}/retention",
            P::TenantsManage,
            OtherTenant,
            |_| Some(json!({"events_days": 45})),
        ),
        c("POST", "/v1/webhooks", P::WebhooksWrite, Own, |_| {
            Some(json!({"url": "https://93.184.216.34/in", "events": ["delivered"]}))
        }),
        c("GET", "/v1/webhooks", P::WebhooksRead, Own, none),
        c(
            "GET",
            "/v1/webhooks/{id}",
            P::WebhooksRead,
            OtherTenantsObject,
            none,
        ),
        c(
            "POST",
            "/v1/webhooks/{id}/rotate-secret",
            P::WebhooksWrite,
            OtherTenantsObject,
            none,
        ),
        c(
            "POST",
            "/v1/webhooks/{id}/enable",
            P::WebhooksWrite,
            OtherTenantsObject,
            none,
        ),
        c(
            "POST",
            "/v1/webhooks/{id}/test",
            P::WebhooksWrite,
            OtherTenantsObject,
            none,
        ),
        c(
            "GET",
            "/v1/webhooks/{id}/deliveries",
            P::WebhooksRead,
            OtherTenantsObject,
            none,
        ),
        c(
            "DELETE",
            "/v1/webhooks/{id}",
            P::WebhooksWrite,
            OtherTenantsObject,
            none,
        ),
        c("GET", "/v1/suppressions", P::SuppressionsRead, Own, none),
        c("POST", "/v1/suppressions", P::SuppressionsWrite, Own, |n| {
            Some(json!({"address": format!("r{n}@roles.test")}))
        }),
        c(
            "DELETE",
            "/v1/suppressions/{address}",
            P::SuppressionsWrite,
            OtherTenantsObject,
            none,
        ),
        Case {
            raw: Some(("text/csv", |n| format!("address\nr{n}@import.roles.test\n"))),
            ..c(
                "POST",
                "/v1/suppressions/import",
                P::SuppressionsWrite,
                Own,
                none,
            )
        },
        c(
            "GET",
            "/v1/suppressions/export",
            P::SuppressionsRead,
            Own,
            none,
        ),
        // Last, and on a tenant of its own (C): the owner's call deletes it.
        Case {
            path: format!("/v1/tenants/{}", deleted_tenant()),
            ..c(
                "DELETE",
                "/v1/tenants/{id}",
                P::TenantsManage,
                OtherTenant,
                |_| Some(json!({"confirm": deleted_tenant(), "queued": "drop"})),
            )
        },
    ]
}

/// Tenant C, which the owner's `DELETE /v1/tenants/{id}` removes.
pub static DELETED_TENANT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn deleted_tenant() -> &'static str {
    DELETED_TENANT.get().expect("tenant C made first")
}

/// An address on tenant B's suppression list.
pub const B_SUPPRESSED: &str = "b-only@roles.test";
