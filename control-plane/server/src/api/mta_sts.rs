//! `GET /.well-known/mta-sts.txt`: the inbound MTA-STS policy of the domain the `Host` header
//! names (`mta-sts.<domain>`), for the domains Petrel receives mail for (`crate::mta_sts`).
//!
//! Public, as RFC 8461 §3.3 requires (senders fetch it anonymously). The policy must be
//! served over HTTPS with a certificate valid for `mta-sts.<domain>`: the admin API's TLS
//! listener, or the operator's TLS proxy in front of it, terminates that.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{ApiError, App};
use crate::mta_sts::{mx_covered, policy_domain_of_host, HostError};

/// How long a fetched policy may be cached by HTTP caches between us and the sender. Senders
/// cache by `max_age` themselves; this only spares a proxy.
pub const POLICY_CACHE_CONTROL: &str = "max-age=300";

#[utoipa::path(
    get,
    operation_id = "mta_sts_policy",
    path = "/.well-known/mta-sts.txt",
    summary = "The inbound MTA-STS policy (RFC 8461) of the domain named by Host: mta-sts.<domain>",
    responses(
        (status = 200, description = "The policy file", content_type = "text/plain", body = String),
        (status = 400, description = "The Host header names no mta-sts.<domain> host", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Inbound MTA-STS is off, or Petrel does not receive this domain's mail", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "The domain's MX records could not be looked up", body = crate::api::openapi::ErrorBody),
    ),
    security(())
)]
pub async fn policy(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    let Some(inbound) = app.settings.mta_sts.clone() else {
        return Err(ApiError::not_found("MTA-STS policy"));
    };
    let host = headers
        .get(header::HOST)
        .map(|h| h.to_str().map_err(|_| HostError::Malformed))
        .transpose()
        .and_then(policy_domain_of_host);
    let domain =
        host.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_host", format!("Host: {e}")))?;
    if !receives(&app, &inbound.mx, &domain).await? {
        return Err(ApiError::not_found("MTA-STS policy"));
    }
    let mut out = HeaderMap::new();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(POLICY_CACHE_CONTROL),
    );
    Ok((out, inbound.policy().to_string()).into_response())
}

/// True when Petrel receives `domain`'s mail: the VERP bounce domain, or a verified tenant
/// domain whose MX records all name intake hosts (a cached verdict, `MX_VERDICT_TTL_MS`).
async fn receives(app: &App, intake_mx: &[String], domain: &str) -> Result<bool, ApiError> {
    if !app.settings.return_path_domain.is_empty() && domain == app.settings.return_path_domain {
        return Ok(true);
    }
    let now = u64::try_from(app.now_ms()).unwrap_or(0);
    if let Some(v) = app.mx_verdicts.get(domain, now) {
        return Ok(v);
    }
    let mut conn = app.db.conn().await?;
    if !crate::store::domains::verified_by_name(&mut conn, domain).await? {
        // Not cached: a name nobody verified costs a query, never a DNS lookup.
        return Ok(false);
    }
    drop(conn);
    let found = app.dns.mx(domain).await.map_err(|e| {
        tracing::warn!(domain, error = %e, "MX lookup for the MTA-STS policy failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "dns_unavailable",
            "the domain's MX records could not be looked up; try again",
        )
    })?;
    let covered = mx_covered(&found, intake_mx);
    app.mx_verdicts.put(domain, covered, now);
    Ok(covered)
}
