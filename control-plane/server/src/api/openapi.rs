//! The OpenAPI 3.1 document, `GET /v1/openapi.json`, and the access table derived from it.
//!
//! There is one route list: [`super::routes`], whose handlers each carry a `#[utoipa::path]`
//! declaring method, path, body schemas and, as the `x-permission` extension, the name of the
//! [`Permission`] the route needs (or `security(())` for a public route). `utoipa_axum` builds
//! the router and the document from those declarations together; [`AccessTable`] is then read
//! back out of the finished document, and the route gate in [`super`] checks every request
//! against it. So the router, the document and the permission check cannot disagree: a route
//! without a declaration cannot be registered, and one whose declaration names no permission
//! (or an unknown one) stops the router from being built.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::Method;
use axum::{Extension, Json};
use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::auth::Permission;

/// The operation extension that names a route's permission.
pub const PERMISSION_EXTENSION: &str = "x-permission";

/// The document's fixed parts; the paths come from the route list.
#[derive(OpenApi)]
#[openapi(
    info(title = "Petrel control plane", description = "The admin API of the Petrel control plane."),
    components(schemas(ErrorBody, ErrorDetail)),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// Every error answer: `{"error": {"code": .., "message": ..}}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`unauthorized`, `forbidden`, `not_found`, ...).
    pub code: String,
    /// For humans.
    pub message: String,
    /// More about some refusals (a 410's deletion record).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// Serves the document built with the router.
#[utoipa::path(
    get,
    operation_id = "openapi_document",
    path = "/v1/openapi.json",
    summary = "This document",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)),
    security(())
)]
pub async fn document(Extension(doc): Extension<Arc<Value>>) -> Json<Value> {
    Json(doc.as_ref().clone())
}

/// Why the route list does not make a consistent document.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    #[error("the generated OpenAPI document does not serialize: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("{method} {path}: declares neither x-permission nor security(()) (public)")]
    Undeclared { method: String, path: String },
    #[error("{method} {path}: x-permission {name:?} names no Permission")]
    UnknownPermission {
        method: String,
        path: String,
        name: String,
    },
    #[error("{method} {path}: not an HTTP method")]
    BadMethod { method: String, path: String },
}

/// The error answers an operation that needs a key may give, by status (the public document
/// route answers none); 413 and 415 only where a body is read.
const ERRORS_ALWAYS: &[(&str, &str)] = &[
    ("400", "Malformed request (syntax, path or query parameter)"),
    ("404", "No such object in the caller's tenant"),
    ("409", "Conflicts with stored state"),
    ("422", "Well-formed but invalid request"),
];
const ERRORS_WITH_KEY: &[(&str, &str)] = &[
    ("401", "Missing, invalid or revoked key"),
    ("403", "The key's role or scope does not allow this"),
    ("429", "Too many failed authentications from this address"),
];
const ERRORS_WITH_BODY: &[(&str, &str)] = &[
    ("413", "Request body too large"),
    ("415", "The body is not declared as JSON"),
];

fn operations(doc: &mut Value) -> impl Iterator<Item = (String, String, &mut Value)> {
    doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.iter_mut())
        .flat_map(|(path, item)| {
            item.as_object_mut()
                .into_iter()
                .flat_map(|ops| ops.iter_mut())
                .filter(|(method, _)| is_lower_method(method))
                .map(move |(method, op)| (method.clone(), path.clone(), op))
        })
}

fn is_lower_method(m: &str) -> bool {
    matches!(
        m,
        "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace"
    )
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

/// The finished document: utoipa's, plus the bearer scheme and the error answers of every
/// operation (one JSON shape, see [`ErrorBody`]).
pub fn finish(doc: utoipa::openapi::OpenApi) -> Result<Value, RouteError> {
    let mut doc = serde_json::to_value(doc)?;
    doc["components"]["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer"}});
    for (_, _, op) in operations(&mut doc) {
        let public = op["security"] == json!([{}]);
        let with_body = op.get("requestBody").is_some();
        let mut errors: Vec<(&str, &str)> = Vec::new();
        if !public {
            errors.extend_from_slice(ERRORS_ALWAYS);
            errors.extend_from_slice(ERRORS_WITH_KEY);
        }
        if with_body {
            errors.extend_from_slice(ERRORS_WITH_BODY);
        }
        if let Some(responses) = op["responses"].as_object_mut() {
            for response in responses.values_mut() {
                if response["description"] == "" {
                    response["description"] = json!("Success");
                }
            }
            for (status, description) in errors {
                responses
                    .entry(status)
                    .or_insert_with(|| error_response(description));
            }
        }
    }
    Ok(doc)
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (`security(())`).
    Public,
    /// A key whose role and scopes grant this.
    Requires(Permission),
}

/// (method, path template) -> what the route needs, read from the finished document.
#[derive(Debug, Default)]
pub struct AccessTable(HashMap<(Method, String), Access>);

impl AccessTable {
    /// Reads every operation's declaration; fails on an operation that declares none.
    pub fn from_document(doc: &Value) -> Result<AccessTable, RouteError> {
        let mut doc = doc.clone();
        let mut table = HashMap::new();
        for (method, path, op) in operations(&mut doc) {
            let http =
                Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    RouteError::BadMethod {
                        method: method.clone(),
                        path: path.clone(),
                    }
                })?;
            let access = match op.get(PERMISSION_EXTENSION) {
                Some(v) => {
                    let name = v.as_str().unwrap_or_default();
                    Access::Requires(Permission::from_name(name).ok_or_else(|| {
                        RouteError::UnknownPermission {
                            method: method.clone(),
                            path: path.clone(),
                            name: v.to_string(),
                        }
                    })?)
                }
                None if op["security"] == json!([{}]) => Access::Public,
                None => return Err(RouteError::Undeclared { method, path }),
            };
            table.insert((http, path), access);
        }
        Ok(AccessTable(table))
    }

    /// What `method path` needs (HEAD is answered by the GET route). None: no such route.
    pub fn get(&self, method: &Method, path: &str) -> Option<Access> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        self.0.get(&(method.clone(), path.to_string())).copied()
    }

    /// Every (method, path, access), sorted.
    pub fn entries(&self) -> Vec<(Method, String, Access)> {
        let mut v: Vec<_> = self
            .0
            .iter()
            .map(|((m, p), a)| (m.clone(), p.clone(), *a))
            .collect();
        v.sort_by(|a, b| (a.1.as_str(), a.0.as_str()).cmp(&(b.1.as_str(), b.0.as_str())));
        v
    }
}

/// The finished document, without starting a server.
pub fn build() -> Result<Value, RouteError> {
    finish(super::routes().into_openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_with(op: Value) -> Value {
        json!({"openapi": "3.1.0", "paths": {"/v1/x/{id}": {"post": op}}})
    }

    #[test]
    fn the_table_reads_permissions_and_public_routes() {
        let t = AccessTable::from_document(&doc_with(json!({"x-permission": "DomainsWrite"})))
            .expect("table");
        assert_eq!(
            t.get(&Method::POST, "/v1/x/{id}"),
            Some(Access::Requires(Permission::DomainsWrite))
        );
        assert_eq!(t.get(&Method::GET, "/v1/x/{id}"), None);
        let t = AccessTable::from_document(&doc_with(json!({"security": [{}]}))).expect("table");
        assert_eq!(t.get(&Method::POST, "/v1/x/{id}"), Some(Access::Public));
    }

    #[test]
    fn an_undeclared_or_unknown_permission_stops_the_router() {
        let undeclared = doc_with(json!({"security": [{"bearer": []}]}));
        assert!(matches!(
            AccessTable::from_document(&undeclared),
            Err(RouteError::Undeclared { .. })
        ));
        let unknown = doc_with(json!({"x-permission": "DomainsWrites"}));
        assert!(matches!(
            AccessTable::from_document(&unknown),
            Err(RouteError::UnknownPermission { .. })
        ));
    }

    #[test]
    fn head_is_answered_by_get() {
        let doc = json!({"paths": {"/v1/y": {"get": {"x-permission": "AuditRead"}}}});
        let t = AccessTable::from_document(&doc).expect("table");
        assert_eq!(
            t.get(&Method::HEAD, "/v1/y"),
            Some(Access::Requires(Permission::AuditRead))
        );
    }

    #[test]
    fn the_built_document_declares_every_route() {
        let doc = build().expect("document");
        let t = AccessTable::from_document(&doc).expect("table");
        assert_eq!(t.entries().len(), 64);
        for (status, _) in ERRORS_WITH_KEY {
            assert!(doc["paths"]["/v1/engines"]["get"]["responses"][status].is_object());
        }
    }
}
