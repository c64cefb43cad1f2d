//! The admin API: the route list, the route gate, shared state, JSON extractors whose
//! rejections are JSON errors.
//!
//! Every route declares, in its `#[utoipa::path]`, the [`crate::auth::Permission`] it needs
//! (`x-permission`) or that it is public (`security(())`). [`router`] builds the axum router
//! and the OpenAPI document from [`routes`] together, reads the access table back out of the
//! document (see [`openapi`]), and puts one gate in front of every route: it authenticates the
//! bearer key and checks the declared permission before the handler runs. Handlers get the
//! [`Caller`] from the gate only, and scope every query to the caller's tenant, so an id from
//! another tenant answers 404 exactly like an id that does not exist.

pub mod audit;
pub mod credential_update;
pub mod credentials;
pub mod dmarc;
pub mod domain_auth;
pub mod domains;
pub mod engines;
pub mod events;
pub mod export;
pub mod guardrails;
pub mod limits;
pub mod mta_sts;
pub mod openapi;
pub mod shaping;
pub mod stats;
pub mod stream;
pub mod suppressions;
pub mod tenant_delete;
pub mod tenants;
pub mod tls_rpt;
pub mod unsubscribe;
pub mod webhooks;

use std::ops::Deref;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Authorized, Caller, HashCost, Throttle, VerifyCache};
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
    /// The engines' outbound addresses: an SPF record whose ip4:/ip6: mechanisms cover all of
    /// them authorises the platform as well as the include does (empty: the include only).
    pub spf_addresses: Vec<std::net::IpAddr>,
    /// How long a rotated-out DKIM key stays listed (and published in snapshots as retired).
    pub dkim_rotation_grace_ms: i64,
    pub hash_cost: HashCost,
    /// The bounce domain of VERP return paths (its MX points at the engines' intake); empty:
    /// no VERP.
    pub return_path_domain: String,
    /// The control plane's public origin (`https://host[:port]`, no trailing slash), where
    /// one-click unsubscribe links point; empty: no https List-Unsubscribe link.
    pub public_url: String,
    /// Abuse guardrails: the new-tenant cap, thresholds, window, minimum volume.
    pub guardrails: crate::guardrails::GuardSettings,
    /// Proxies whose `X-Forwarded-For` names the client (`crate::client_addr`).
    pub api_trusted_proxies: Vec<ipnet::IpNet>,
    /// The retention windows tenants may choose (`crate::retention`).
    pub retention: crate::retention::RetentionBounds,
    /// Inbound MTA-STS for the domains the intake receives (`crate::mta_sts`); None: off.
    pub mta_sts: Option<Arc<crate::mta_sts::InboundMtaSts>>,
    /// Outbound TLS-RPT reports (`crate::tls_rpt`); None: not sent.
    pub tls_rpt: Option<Arc<crate::tls_rpt::TlsRptSettings>>,
}

/// Shared state of all handlers.
pub struct AppState {
    pub db: Db,
    pub clock: Arc<dyn Clock>,
    pub throttle: Throttle,
    /// Forged one-click unsubscribe tokens per client address (`unsubscribe`).
    pub one_click_throttle: Throttle,
    pub verify_cache: VerifyCache,
    pub dns: DnsChecker,
    pub settings: Settings,
    /// The newest committed policy version; push connections watch it.
    pub version_tx: watch::Sender<u64>,
    /// Webhook delivery: client, dispatcher wake-up.
    pub webhooks: crate::webhooks::Webhooks,
    /// The suppression change log's newest seq; push connections follow it.
    pub suppressions: crate::suppressions::SuppressionWatch,
    /// Abuse guardrails: the tenants to evaluate, the `X-Petrel-Warning` notes.
    pub guard: crate::guardrails::Guard,
    /// Signs audit chain checkpoints into a file outside the database (`audit_anchor.rs`).
    pub anchor: Arc<crate::audit_anchor::Anchor>,
    /// The newest signed checkpoint this node knows (seq only moves up; None before the
    /// first): push sessions send it to engines at start and on each change
    /// (`audit_anchor::publish`).
    pub checkpoints: watch::Sender<Option<petrel_policy::checkpoint::AuditCheckpoint>>,
    /// Bumped when an engine identity is revoked or replaced: this node's push sessions check
    /// theirs at once (other nodes' within `push::ENGINE_IDENTITY_CHECK_MS`).
    pub engine_identities: watch::Sender<u64>,
    /// Failed authentications of the current window, per address (`auth_failures.rs`).
    pub auth_failures: crate::auth_failures::AuthFailures,
    /// Wakes the erasure of deleted tenants (`erasure.rs`).
    pub erasure_wake: tokio::sync::Notify,
    /// Bulk reads and blocked sends of the current window (`audit_signals.rs`).
    pub aggregates: crate::audit_signals::Aggregates,
    /// Inbound MTA-STS: whether a domain's MX names the intake, per domain (`api::mta_sts`).
    pub mx_verdicts: crate::mta_sts::MxVerdicts,
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

/// The one route list: every handler with its `#[utoipa::path]` declaration (method, path,
/// schemas, permission). Handlers that share a path are listed together.
pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(openapi::document))
        .routes(routes!(tenants::create, tenants::list))
        .routes(routes!(
            tenants::show,
            tenants::update,
            tenant_delete::delete
        ))
        .routes(routes!(tenants::suspend))
        .routes(routes!(tenants::unsuspend))
        .routes(routes!(export::start, export::fetch))
        .routes(routes!(limits::set_tenant))
        .routes(routes!(domains::create, domains::list))
        .routes(routes!(domains::show, domains::delete))
        .routes(routes!(domains::verify))
        .routes(routes!(domains::rotate))
        .routes(routes!(dmarc::show))
        .routes(routes!(domain_auth::check))
        .routes(routes!(limits::set_domain))
        .routes(routes!(credentials::create, credentials::list))
        .routes(routes!(credentials::show, credential_update::update))
        .routes(routes!(credentials::revoke))
        .routes(routes!(credentials::rotate))
        .routes(routes!(limits::show))
        .routes(routes!(limits::set_defaults))
        .routes(routes!(limits::set_destination, limits::delete_destination))
        .routes(routes!(shaping::list))
        .routes(routes!(shaping::set, shaping::delete))
        .routes(routes!(audit::list))
        .routes(routes!(audit::verify))
        .routes(routes!(audit::checkpoint))
        .routes(routes!(audit::export))
        .routes(routes!(engines::list))
        .routes(routes!(engines::create_identity))
        .routes(routes!(engines::revoke_identity))
        .routes(routes!(events::list))
        .routes(routes!(events::message))
        .routes(routes!(stats::show))
        .routes(routes!(events::set_retention))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::show, webhooks::delete))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::enable))
        .routes(routes!(webhooks::test))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(suppressions::list, suppressions::add))
        .routes(routes!(suppressions::delete))
        .routes(routes!(suppressions::bulk::import))
        .routes(routes!(suppressions::bulk::export))
        .routes(routes!(guardrails::show))
        .routes(routes!(guardrails::lift_cap))
        .routes(routes!(guardrails::enable))
        .routes(routes!(unsubscribe::page, unsubscribe::post))
        .routes(routes!(mta_sts::policy))
        .routes(routes!(tls_rpt::send))
}

/// What the route gate needs: the app (to authenticate) and the access table.
#[derive(Clone)]
struct Gate {
    app: App,
    table: Arc<openapi::AccessTable>,
}

/// The one permission check: authenticates the key and requires the permission the matched
/// route declares, then hands the [`Caller`] to the handler.
async fn gate(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    let access = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| gate.table.get(req.method(), p.as_str()));
    let permission = match access {
        Some(openapi::Access::Requires(p)) => p,
        // Public, or a method the path does not serve (the 405 fallback answers it).
        Some(openapi::Access::Public) | None => return next.run(req).await,
    };
    let (mut parts, body) = req.into_parts();
    let caller = match Caller::authenticate(&parts, &gate.app).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = caller.require(permission) {
        return e.into_response();
    }
    let note = gate.app.guard.note(&caller.tenant_id);
    parts.extensions.insert(Authorized(caller));
    let mut response = next.run(Request::from_parts(parts, body)).await;
    // Guardrails (issue 14): the caller's tenant is near a threshold or disabled (a cached
    // note, refreshed at each evaluation: no query per request).
    if let Some(value) = note.and_then(|n| axum::http::HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert(WARNING_HEADER, value);
    }
    response
}

/// The response header that carries a tenant's reputation warning or disable reason.
pub const WARNING_HEADER: &str = "x-petrel-warning";

/// The `/v1` router with its document and gate. Fails when a route's declaration is
/// inconsistent (a programming error the tests catch).
pub fn router(app: App) -> Result<Router, openapi::RouteError> {
    let (routes, doc) = routes().split_for_parts();
    let doc = openapi::finish(doc)?;
    let table = Arc::new(openapi::AccessTable::from_document(&doc)?);
    let gate_state = Gate {
        app: app.clone(),
        table,
    };
    Ok(routes
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .route_layer(axum::middleware::from_fn_with_state(gate_state, gate))
        .layer(Extension(Arc::new(doc)))
        .fallback(|| async { ApiError::not_found("route") })
        .layer(DefaultBodyLimit::max(REQUEST_BODY_MAX_BYTES))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            REQUESTS_IN_FLIGHT_MAX,
        ))
        .with_state(app))
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
