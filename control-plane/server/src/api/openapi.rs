//! `GET /v1/openapi.json`: an OpenAPI 3.1 document generated from [`ROUTES`], the one list of
//! routes (the router in `mod.rs` must match it; a test checks every route answers).

use axum::Json;
use serde_json::{json, Map, Value};

/// One documented route: method, path (axum syntax), summary, required permission (None: public).
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub permission: Option<&'static str>,
    /// The request takes a JSON body.
    pub body: bool,
}

const fn r(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    permission: Option<&'static str>,
    body: bool,
) -> RouteDoc {
    RouteDoc {
        method,
        path,
        summary,
        permission,
        body,
    }
}

/// Every route of the admin API.
pub const ROUTES: &[RouteDoc] = &[
    r("get", "/v1/openapi.json", "This document", None, false),
    r("post", "/v1/tenants", "Create a tenant (returns its first admin key once)", Some("TenantsManage"), true),
    r("get", "/v1/tenants", "List tenants", Some("TenantsManage"), false),
    r("get", "/v1/tenants/{id}", "Show a tenant (own tenant, or any for owners)", Some("TenantRead"), false),
    r("post", "/v1/tenants/{id}/suspend", "Suspend a tenant", Some("TenantsManage"), false),
    r("post", "/v1/tenants/{id}/unsuspend", "Lift a suspension", Some("TenantsManage"), false),
    r("put", "/v1/tenants/{id}/limits", "Set a tenant's quota (messages per second / per day)", Some("TenantsManage"), true),
    r("post", "/v1/domains", "Add a sending domain; generates a DKIM key (ed25519 or rsa2048) and returns the DNS records", Some("DomainsWrite"), true),
    r("get", "/v1/domains", "List sending domains", Some("DomainsRead"), false),
    r("get", "/v1/domains/{id}", "Show a sending domain with its keys and DNS records", Some("DomainsRead"), false),
    r("delete", "/v1/domains/{id}", "Delete a sending domain and its keys", Some("DomainsWrite"), false),
    r("post", "/v1/domains/{id}/verify", "Look the DNS records up; marks the domain verified when DKIM and SPF are found", Some("DomainsWrite"), false),
    r("post", "/v1/domains/{id}/rotate", "Add a pending DKIM key under a new selector (activated by the next successful verify)", Some("DomainsWrite"), true),
    r("put", "/v1/domains/{id}/limits", "Set a sending domain's messages per second", Some("LimitsWrite"), true),
    r("post", "/v1/credentials", "Create an API key or SMTP credential (secret shown once)", Some("CredentialsWrite"), true),
    r("get", "/v1/credentials", "List credentials", Some("CredentialsRead"), false),
    r("get", "/v1/credentials/{id}", "Show a credential", Some("CredentialsRead"), false),
    r("post", "/v1/credentials/{id}/revoke", "Revoke a credential", Some("CredentialsWrite"), false),
    r("post", "/v1/credentials/{id}/rotate", "Replace a credential's secret (new secret shown once)", Some("CredentialsWrite"), false),
    r("get", "/v1/limits", "Tenant, domain and destination limits and defaults", Some("LimitsRead"), false),
    r("put", "/v1/limits/defaults", "Set default limits", Some("GlobalLimitsWrite"), true),
    r("put", "/v1/limits/destinations/{domain}", "Set a destination domain's limits", Some("GlobalLimitsWrite"), true),
    r("delete", "/v1/limits/destinations/{domain}", "Remove a destination domain's limits", Some("GlobalLimitsWrite"), false),
    r("get", "/v1/audit-log", "Audit rows, newest first (filters: action, actor, since, until, limit)", Some("AuditRead"), false),
    r("get", "/v1/audit-log/verify", "Walk the hash chain; reports the first broken link", Some("AuditVerify"), false),
    r("get", "/v1/engines", "Engines, their applied snapshot version and last contact", Some("EnginesRead"), false),
];

fn operation(route: &RouteDoc) -> Value {
    let mut op = json!({
        "summary": route.summary,
        "responses": {
            "200": {"description": "OK (201 for creations, 204 for deletions)"},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"},
            "404": {"$ref": "#/components/responses/Error"},
            "409": {"$ref": "#/components/responses/Error"},
            "422": {"$ref": "#/components/responses/Error"},
            "429": {"$ref": "#/components/responses/Error"}
        }
    });
    if let Some(p) = route.permission {
        op["x-permission"] = json!(p);
    } else {
        op["security"] = json!([]);
    }
    let params: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    if !params.is_empty() {
        op["parameters"] = Value::Array(params);
    }
    if route.body {
        op["requestBody"] =
            json!({"content": {"application/json": {"schema": {"type": "object"}}}});
    }
    op
}

/// The OpenAPI document.
pub fn build() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(route.method.to_string(), operation(route));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Petrel control plane", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {
                "description": "An error",
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {"error": {"type": "object", "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"}}}}
                }}}
            }}
        }
    })
}

pub async fn document() -> Json<Value> {
    Json(build())
}
