//! The engine's admin endpoint (loopback HTTP, JSON) behind `petrel queue ...`.
//!
//! It runs on the slow-path tokio thread and reaches each shard through that shard's bounded
//! admin channel; every shard answers for its own queues and the replies are listed per shard.
//!
//! - `GET  /v1/queue` — depth, oldest age and state per domain, per shard
//! - `POST /v1/queue/{domain}/suspend|resume|retry|bounce`

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
const SHARD_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Shards(Vec<async_channel::Sender<AdminRequest>>);

/// Binds and serves; returns the bound address. Refuses non-loopback addresses.
pub fn start(
    rt: &tokio::runtime::Handle,
    addr: SocketAddr,
    shards: Vec<async_channel::Sender<AdminRequest>>,
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
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(Shards(shards));
    let _guard = rt.enter();
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    rt.spawn(async move {
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
