//! The engine's admin endpoint (loopback HTTP, JSON) behind `petrel queue ...`.
//!
//! It runs on the slow-path tokio thread and reaches each shard through that shard's bounded
//! admin channel; every shard answers for its own queues and the replies are listed per shard.
//!
//! - `GET  /v1/queue` — depth, oldest age and state per domain, per shard
//! - `POST /v1/queue/{domain}/suspend|resume|retry|bounce`
//! - `GET  /v1/tenants/{id}/delivery` — the tenant's delivery settings in the policy in force
//!   (egress pool, delivery weight) and that policy's version: what delivery reads
//!   (`tenant_delivery.rs`)
//! - `GET  /v1/shaping` — the effective shaping limits per provider and of the default
//!   section (the files' with the control plane's pushed overlay), the overlay's provider
//!   names and the policy version: what a site made now takes (`shaping_overlay.rs`)
//!
//! Every request presents `Authorization: Bearer <token>` (issue 16): the token is read from
//! `admin.token_file`, the systemd credential `petrel-admin-token`, or `<data>/admin.token`
//! (made 0600 at first start, which `petrel queue --data-dir` reads). Anything else is a `401`.
//! Every request, allowed or not, is audited: one synced JSON line in `<data>/admin-audit.jsonl`
//! (time, peer, method, path, status), and a log line.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use petrel_delivery::{AdminCommand, AdminReply, DomainState};
use serde_json::json;

use crate::error::EngineError;

/// A request from the admin endpoint to one shard, answered on `reply`.
pub struct AdminRequest {
    pub command: petrel_delivery::AdminCommand,
    /// `None` when delivery is off.
    pub reply: async_channel::Sender<Option<petrel_delivery::AdminReply>>,
}

/// How long one shard may take to answer an admin request.
pub(crate) const SHARD_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Shards(Vec<async_channel::Sender<AdminRequest>>);

/// The token file's name in the data directory, when made there.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The systemd credential holding the token.
pub const ADMIN_TOKEN_CREDENTIAL: &str = "petrel-admin-token";
/// The audit file's name in the data directory.
pub const ADMIN_AUDIT_FILE: &str = "admin-audit.jsonl";
/// Longest request path recorded (longer ones are cut): the record must fit an event's
/// details for the control plane's audit log, whatever a caller sends.
pub const ADMIN_AUDIT_PATH_MAX_BYTES: usize = 512;

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Who may call the endpoint, and where calls are recorded.
#[derive(Clone)]
pub struct Guard {
    token_digest: [u8; 32],
    audit: std::path::PathBuf,
    /// The event backlog: changes and refusals also go to the control plane's audit log
    /// (`audit_signals::QUEUE_ADMIN`).
    outbox: Option<std::sync::Arc<petrel_policy::Outbox>>,
    nonce: std::sync::Arc<str>,
}

impl Guard {
    /// The token from the configuration (see the module doc), made when it is the data
    /// directory's and missing.
    pub fn new(
        cfg: &crate::config::EngineConfig,
        outbox: Option<std::sync::Arc<petrel_policy::Outbox>>,
    ) -> Result<Guard, EngineError> {
        let bad = |e: &dyn std::fmt::Display| EngineError::Config {
            message: format!("admin token: {e}"),
        };
        let path = cfg
            .admin
            .token_file
            .clone()
            .or_else(|| petrel_seal::secret_file::credential(ADMIN_TOKEN_CREDENTIAL))
            .unwrap_or_else(|| cfg.server.data_dir.join(ADMIN_TOKEN_FILE));
        if cfg.admin.token_file.is_none() && !path.exists() {
            let mut raw = [0u8; 32];
            petrel_seal::aead::random_bytes(&mut raw).map_err(|e| bad(&e))?;
            petrel_seal::kek::write_atomic(&path, hex::encode(raw).as_bytes())
                .map_err(|e| bad(&e))?;
        }
        let token = petrel_seal::secret_file::read(&path).map_err(|e| bad(&e))?;
        Ok(Guard {
            token_digest: digest(&token),
            audit: cfg.server.data_dir.join(ADMIN_AUDIT_FILE),
            outbox,
            nonce: crate::audit_signals::process_nonce().into(),
        })
    }
}

fn digest(s: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes()).into()
}

/// Checks the bearer token (digests compared in constant time), runs the request, and
/// appends the outcome to the audit file.
async fn guarded(
    State(guard): State<Guard>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(digest);
    let allowed = given.is_some_and(|d| {
        d.iter()
            .zip(guard.token_digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    });
    let (method, path) = (
        req.method().to_string(),
        cut(req.uri().path(), ADMIN_AUDIT_PATH_MAX_BYTES),
    );
    let response = if allowed {
        next.run(req).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin endpoint needs Authorization: Bearer <admin token>",
        )
    };
    let status = response.status().as_u16();
    tracing::info!(%peer, %method, %path, status, "admin request");
    let now = crate::clock::now_ms();
    let record = json!({
        "at_unix_ms": now,
        "peer": peer.to_string(),
        "method": method,
        "path": path,
        "status": status,
    });
    let line = record.to_string();
    let file = guard.audit.clone();
    // A change, or a refusal, is the control plane's to know as well (reads are not).
    let signal = (method != "GET" || status >= 400)
        .then(|| guard.outbox.clone())
        .flatten()
        .map(|o| {
            let at = i64::try_from(now).unwrap_or(i64::MAX);
            let subject = format!("{}-{at}-{}", guard.nonce, rand::random::<u32>());
            (
                o,
                crate::audit_signals::signal(
                    crate::audit_signals::QUEUE_ADMIN,
                    &subject,
                    at,
                    record,
                ),
            )
        });
    let written = tokio::task::spawn_blocking(move || {
        if let Some((o, e)) = signal {
            crate::audit_signals::record(&o, &[e]);
        }
        append_line(&file, &line)
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::error!(path = %guard.audit.display(), "cannot append to the admin audit file");
    }
    response
}

fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()
}

/// Binds and serves; returns the bound address. Refuses non-loopback addresses.
pub fn start(
    rt: &tokio::runtime::Handle,
    addr: SocketAddr,
    shards: Vec<async_channel::Sender<AdminRequest>>,
    tenants: std::sync::Arc<crate::tenant_delivery::PolicyTenantDelivery>,
    shaping: Option<crate::shaping_overlay::ShapingView>,
    guard: Guard,
) -> Result<SocketAddr, EngineError> {
    if !addr.ip().is_loopback() {
        return Err(EngineError::Config {
            message: format!("admin.listen: {addr} is not a loopback address"),
        });
    }
    let std_listener =
        std::net::TcpListener::bind(addr).map_err(|source| EngineError::Listen { addr, source })?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let app = Router::new()
        .route("/v1/queue", get(list))
        .route("/v1/queue/{domain}/{action}", post(act))
        .route(
            "/v1/tenants/{id}/delivery",
            get(move |Path(id): Path<String>| async move { tenant_delivery(&tenants, &id) }),
        )
        .route(
            "/v1/shaping",
            get(move || async move {
                match &shaping {
                    Some(view) => Json(view.json()).into_response(),
                    None => error(
                        StatusCode::NOT_FOUND,
                        "delivery_off",
                        "delivery is off on this engine",
                    ),
                }
            }),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(Shards(shards))
        .layer(axum::middleware::from_fn_with_state(guard, guarded));
    let _guard = rt.enter();
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    rt.spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    });
    Ok(local)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn ask_all(shards: &Shards, command: impl Fn() -> AdminCommand) -> Response {
    let mut out = Vec::with_capacity(shards.0.len());
    for (shard, tx) in shards.0.iter().enumerate() {
        let (reply_tx, reply_rx) = async_channel::bounded(1);
        let req = AdminRequest {
            command: command(),
            reply: reply_tx,
        };
        if tx.send(req).await.is_err() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shard_down",
                "a shard is not running",
            );
        }
        match tokio::time::timeout(SHARD_ANSWER_TIMEOUT, reply_rx.recv()).await {
            Ok(Ok(reply)) => out.push(json!({"shard": shard, "reply": reply_json(reply.as_ref())})),
            _ => {
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "shard_timeout",
                    "a shard did not answer in time",
                )
            }
        }
    }
    Json(json!({ "shards": out })).into_response()
}

fn reply_json(reply: Option<&AdminReply>) -> serde_json::Value {
    match reply {
        None => json!({"delivery": "off"}),
        Some(AdminReply::Domains(list)) => json!({
            "domains": list.iter().map(|d| json!({
                "domain": d.domain,
                "depth": d.depth,
                "oldest_age_secs": d.oldest_age_secs,
                "state": match d.state { DomainState::Active => "active", DomainState::Suspended => "suspended" },
            })).collect::<Vec<_>>()
        }),
        Some(AdminReply::Done { domain, recipients }) => {
            json!({"done": {"domain": domain, "recipients": recipients}})
        }
        Some(AdminReply::UnknownDomain(d)) => json!({"unknown_domain": d}),
        Some(AdminReply::Purged {
            recipients,
            remaining,
        }) => json!({"purged": {"recipients": recipients, "remaining": remaining}}),
    }
}

async fn list(State(shards): State<Shards>) -> Response {
    ask_all(&shards, || AdminCommand::Ls).await
}

async fn act(
    State(shards): State<Shards>,
    Path((domain, action)): Path<(String, String)>,
) -> Response {
    let domain = domain.to_ascii_lowercase();
    if domain.is_empty()
        || domain.len() > 255
        || !domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return error(StatusCode::BAD_REQUEST, "bad_domain", "not a domain name");
    }
    let make: fn(String) -> AdminCommand = match action.as_str() {
        "suspend" => AdminCommand::Suspend,
        "resume" => AdminCommand::Resume,
        "retry" => AdminCommand::Retry,
        "bounce" => AdminCommand::Bounce,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_action",
                "action is one of suspend, resume, retry, bounce",
            )
        }
    };
    ask_all(&shards, || make(domain.clone())).await
}

/// `GET /v1/tenants/{id}/delivery`: the settings delivery reads for the tenant, or 404 when the
/// policy in force has no such tenant.
fn tenant_delivery(tenants: &crate::tenant_delivery::PolicyTenantDelivery, id: &str) -> Response {
    let ok = !id.is_empty()
        && id.len() <= petrel_policy::snapshot::NAME_LENGTH_MAX_BYTES
        && !id.chars().any(char::is_control);
    if !ok {
        return error(StatusCode::BAD_REQUEST, "bad_tenant", "not a tenant id");
    }
    match tenants.with_version(id) {
        (version, Some(d)) => Json(json!({
            "tenant_id": id,
            "policy_version": version,
            "egress_pool": d.egress_pool,
            "delivery_weight": d.delivery_weight,
        }))
        .into_response(),
        (_, None) => error(
            StatusCode::NOT_FOUND,
            "unknown_tenant",
            "the policy in force has no such tenant",
        ),
    }
}
