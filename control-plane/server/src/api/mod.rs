//! The admin API: axum router, shared state, JSON extractors whose rejections are JSON errors.
//!
//! Every route except `GET /v1/openapi.json` takes a [`Caller`] (the bearer key), checks one
//! [`crate::auth::Permission`], and scopes every query to the caller's tenant, so an id from
//! another tenant answers 404 exactly like an id that does not exist.

pub mod audit;
pub mod credentials;
pub mod domains;
pub mod engines;
pub mod limits;
pub mod openapi;
pub mod tenants;

use std::ops::Deref;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Router;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::auth::{Caller, HashCost, Throttle, VerifyCache};
use crate::dns::DnsChecker;
use crate::store::Db;
use crate::{ApiError, Clock};

/// Largest request body accepted.
pub const REQUEST_BODY_MAX_BYTES: usize = 64 << 10;
/// Requests handled at once; more wait for a slot (each may hold a database connection or an
/// argon2 computation).
pub const REQUESTS_IN_FLIGHT_MAX: usize = 256;

/// Settings the handlers need (from [`crate::ControlConfig`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The domain tenants include in their SPF record.
    pub spf_include: String,
    /// How long a rotated-out DKIM key stays listed (and published in snapshots as retired).
    pub dkim_rotation_grace_ms: i64,
    pub hash_cost: HashCost,
}

/// Shared state of all handlers.
pub struct AppState {
    pub db: Db,
    pub clock: Arc<dyn Clock>,
    pub throttle: Throttle,
    pub verify_cache: VerifyCache,
    pub dns: DnsChecker,
    pub settings: Settings,
    /// The newest committed policy version; push connections watch it.
    pub version_tx: watch::Sender<u64>,
}

/// Cheap handle to [`AppState`].
#[derive(Clone)]
pub struct App(pub Arc<AppState>);

impl Deref for App {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.0
    }
}

impl App {
    /// Wakes push connections after a committed mutation.
    pub fn notify(&self, version: u64) {
        self.version_tx.send_if_modified(|v| {
            if version > *v {
                *v = version;
                true
            } else {
                false
            }
        });
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_unix_ms()
    }

    /// An audit entry for `caller` with the common fields filled in.
    pub fn entry(
        &self,
        caller: &Caller,
        tenant_id: Option<&str>,
        action: &str,
        target: &str,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    ) -> crate::audit::AuditEntry {
        crate::audit::AuditEntry {
            tenant_id: tenant_id.map(str::to_string),
            actor: caller.actor(),
            remote_addr: caller.remote.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            at_unix_ms: self.now_ms(),
            before,
            after,
        }
    }
}

/// The `/v1` router.
pub fn router(app: App) -> Router {
    let v1 = Router::new()
        .route("/openapi.json", get(openapi::document))
        .route("/tenants", post(tenants::create).get(tenants::list))
        .route("/tenants/{id}", get(tenants::show))
        .route("/tenants/{id}/suspend", post(tenants::suspend))
        .route("/tenants/{id}/unsuspend", post(tenants::unsuspend))
        .route("/tenants/{id}/limits", put(limits::set_tenant))
        .route("/domains", post(domains::create).get(domains::list))
        .route("/domains/{id}", get(domains::show).delete(domains::delete))
        .route("/domains/{id}/verify", post(domains::verify))
        .route("/domains/{id}/rotate", post(domains::rotate))
        .route("/domains/{id}/limits", put(limits::set_domain))
        .route(
            "/credentials",
            post(credentials::create).get(credentials::list),
        )
        .route("/credentials/{id}", get(credentials::show))
        .route("/credentials/{id}/revoke", post(credentials::revoke))
        .route("/credentials/{id}/rotate", post(credentials::rotate))
        .route("/limits", get(limits::show))
        .route("/limits/defaults", put(limits::set_defaults))
        .route(
            "/limits/destinations/{domain}",
            put(limits::set_destination).delete(limits::delete_destination),
        )
        .route("/audit-log", get(audit::list))
        .route("/audit-log/verify", get(audit::verify))
        .route("/engines", get(engines::list));
    Router::new()
        .nest("/v1", v1)
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(REQUEST_BODY_MAX_BYTES))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            REQUESTS_IN_FLIGHT_MAX,
        ))
        .with_state(app)
}

/// `axum::Json` whose rejections are JSON errors: bad syntax 400, wrong shape 422.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::invalid(e.body_text())),
            Err(JsonRejection::MissingJsonContentType(e)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                e.body_text(),
            )),
            Err(e) => Err(ApiError::new(e.status(), "bad_request", e.body_text())),
        }
    }
}

/// `axum::extract::Query` whose rejection is a JSON 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request(e.body_text()))
    }
}

/// A new random id: `<kind>_<16 hex>`.
pub fn new_id(kind: &str) -> String {
    format!("{kind}_{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// Lower-cases and checks a DNS name (letters, digits, hyphens, dots; 1..=253 bytes).
pub fn normalize_domain(name: &str) -> Result<String, ApiError> {
    let d = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(d)
    } else {
        Err(ApiError::invalid(format!("not a domain name: {name:?}")))
    }
}

/// Serializes a value for the audit log (never fails for our plain structs).
pub fn audit_json<T: serde::Serialize>(v: &T) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}
