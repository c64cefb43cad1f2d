//! One-click unsubscribe (RFC 8058): `POST /u/{token}` and the confirmation page
//! `GET /u/{token}`, the https link of the `List-Unsubscribe` header the engine adds.
//!
//! Public routes (`security(())`): the mailbox provider posts from its own servers, with no
//! cookies and no credentials. The token is the authority: `petrel-reports` checks its
//! HMAC-SHA256 tag against every unretired key of `token_keys` (so a rotated key's links keep
//! working) and reads the tenant, the message and the recipient from it. A POST then stores an
//! `unsubscribed` event through the store's one insert path, in one transaction with the
//! automatic suppression (`store::suppressions::add_from_events`), and wakes the webhooks;
//! the event's id comes from what the token says, so a repeated POST (a provider's retry, a
//! second click) is a no-op that answers 200 again.
//!
//! A GET never changes anything (RFC 8058 §3.1: link scanners fetch every URL of a message);
//! it shows a page whose button makes the POST. Requests with a forged or unknown token are
//! counted per client address; past [`ONE_CLICK_FAILURES_PER_WINDOW_MAX`] in
//! [`ONE_CLICK_FAILURE_WINDOW_SECS`] the address gets 429 (guessing an 80-bit tag is hopeless,
//! but each guess costs a key read). Valid requests are not rate-limited per address: one
//! provider's few addresses post for all its users; they are bounded by the API's concurrency
//! limit, and each is one small idempotent write.

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use petrel_policy::event::{Event, EventType};
use petrel_reports::{RecipientRef, TokenData, VerpKey, VerpKeys};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};

use super::App;
use crate::auth::Throttle;
use crate::store;
use crate::ApiError;

/// Largest one-click POST body accepted, bytes (the RFC 8058 body is 26 bytes).
pub const ONE_CLICK_BODY_BYTES_MAX: usize = 1024;
/// Forged or unknown tokens one client address may present per window before 429.
pub const ONE_CLICK_FAILURES_PER_WINDOW_MAX: u32 = 30;
/// The window of [`ONE_CLICK_FAILURES_PER_WINDOW_MAX`], seconds.
pub const ONE_CLICK_FAILURE_WINDOW_SECS: u64 = 60;
/// The engine id of events the control plane makes itself (CONTRACTS-14.md).
pub const CONTROL_PLANE_ENGINE_ID: &str = "control-plane";
/// The event type of an unsubscribe.
pub const UNSUBSCRIBED: &str = "unsubscribed";
/// The RFC 8058 form field and value a one-click POST carries.
const ONE_CLICK_FIELD: (&str, &str) = ("List-Unsubscribe", "One-Click");

/// The throttle of forged one-click tokens (one per control plane node).
pub fn one_click_throttle() -> Throttle {
    Throttle::new(
        ONE_CLICK_FAILURES_PER_WINDOW_MAX,
        ONE_CLICK_FAILURE_WINDOW_SECS,
    )
}

/// The RFC 8058 form, for the document: the handler reads the raw body (it must hold this
/// pair; other pairs are ignored), so the struct is never built.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct OneClickForm {
    /// `One-Click`.
    #[schema(rename = "List-Unsubscribe", example = "One-Click")]
    pub list_unsubscribe: String,
}

/// The answer to a one-click POST.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Unsubscribed {
    /// Always true: the recipient is unsubscribed (now, or already before).
    pub unsubscribed: bool,
}

#[utoipa::path(
    post,
    operation_id = "unsubscribe_one_click",
    path = "/u/{token}",
    summary = "One-click unsubscribe (RFC 8058): no credentials, the token is checked by HMAC",
    params(("token" = String, Path, description = "The token of the List-Unsubscribe link")),
    request_body(content = OneClickForm, content_type = "application/x-www-form-urlencoded",
        description = "List-Unsubscribe=One-Click"),
    responses(
        (status = 200, body = Unsubscribed),
        (status = 400, description = "No List-Unsubscribe=One-Click in the body", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Forged, altered or unknown token", body = crate::api::openapi::ErrorBody),
    ),
    security(())
)]
pub async fn post(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request_headers: HeaderMap,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<Json<Unsubscribed>, ApiError> {
    let remote = client(&app, peer, &request_headers);
    let data = checked_token(&app, remote, &token).await?;
    if body.len() > ONE_CLICK_BODY_BYTES_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body longer than {ONE_CLICK_BODY_BYTES_MAX} bytes"),
        ));
    }
    if !is_one_click_body(&body) {
        return Err(ApiError::bad_request(
            "the body must carry List-Unsubscribe=One-Click",
        ));
    }
    let event = event_of(&data, app.now_ms())?;
    let mut tx = app.db.begin_write().await?;
    let inserted = store::events::insert_batch(
        &mut tx,
        CONTROL_PLANE_ENGINE_ID,
        std::slice::from_ref(&event),
        app.now_ms(),
    )
    .await?;
    if inserted > 0 {
        store::announce_events(&mut tx, app.db.dialect).await?;
    }
    tx.commit().await?;
    if inserted > 0 {
        app.webhooks.wake();
        tracing::info!(tenant = %data.tenant_id, event = %event.id, "one-click unsubscribe");
    }
    Ok(Json(Unsubscribed { unsubscribed: true }))
}

#[utoipa::path(
    get,
    operation_id = "unsubscribe_page",
    path = "/u/{token}",
    summary = "The unsubscribe confirmation page (no side effect; its button posts)",
    params(("token" = String, Path, description = "The token of the List-Unsubscribe link")),
    responses(
        (status = 200, description = "An HTML page with a form", content_type = "text/html", body = String),
        (status = 404, description = "Forged, altered or unknown token", body = crate::api::openapi::ErrorBody),
    ),
    security(())
)]
pub async fn page(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request_headers: HeaderMap,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    checked_token(&app, client(&app, peer, &request_headers), &token).await?;
    let mut headers = HeaderMap::new();
    // The page must not be framed (clickjacking) nor cached by a shared cache.
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("default-src 'none'; form-action 'self'"),
    );
    Ok((headers, Html(PAGE_HTML)).into_response())
}

/// The confirmation page: a form that posts the RFC 8058 body to this same URL. No script,
/// no token in the markup (the form posts to the page's own address).
const PAGE_HTML: &str = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>Unsubscribe</title></head>\
<body><h1>Unsubscribe</h1><p>Stop receiving these messages at this address?</p>\
<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
<button type=\"submit\">Unsubscribe</button></form></body></html>\n";

/// The token's content, after the throttle and the HMAC check (404 for anything forged,
/// altered, signed by a retired key, or not naming a recipient by address).
async fn checked_token(app: &App, remote: IpAddr, token: &str) -> Result<TokenData, ApiError> {
    let now_secs = u64::try_from(app.now_ms() / 1000).unwrap_or(0);
    app.one_click_throttle
        .check(remote, now_secs)
        .map_err(|secs| ApiError {
            retry_after_secs: Some(secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "too many invalid unsubscribe links from this address",
            )
        })?;
    let keys = verp_keys(&mut *app.db.conn().await?, app.db.sealer()).await?;
    let data = keys
        .and_then(|k| petrel_reports::unsubscribe::from_one_click(&k, token).ok())
        .map(|r| r.data)
        .filter(|d| matches!(d.recipient, RecipientRef::Address(_)));
    data.ok_or_else(|| {
        app.one_click_throttle.record_failure(remote, now_secs);
        ApiError::not_found("unsubscribe link")
    })
}

/// The deployment's token keys: the newest signs (not needed here), all of them verify.
async fn verp_keys(
    conn: &mut sqlx::AnyConnection,
    sealer: &store::sealed::Sealer,
) -> Result<Option<VerpKeys>, ApiError> {
    let rows = store::token_keys::active(conn, sealer).await?;
    let mut keys = rows
        .iter()
        .rev()
        .filter_map(|k| VerpKey::new(k.id, &k.secret).ok());
    let Some(current) = keys.next() else {
        return Ok(None);
    };
    Ok(VerpKeys::new(current, keys.collect()).ok())
}

/// True when the form body carries `List-Unsubscribe=One-Click` (RFC 8058 §3.2).
fn is_one_click_body(body: &[u8]) -> bool {
    url::form_urlencoded::parse(body).any(|(k, v)| k == ONE_CLICK_FIELD.0 && v == ONE_CLICK_FIELD.1)
}

/// The `unsubscribed` event of a verified token. Its id depends only on the tenant, the
/// message and the recipient, so every repeat (any key, any letter case of the token) is the
/// same event and is stored once.
fn event_of(data: &TokenData, now_ms: i64) -> Result<Event, ApiError> {
    let RecipientRef::Address(recipient) = &data.recipient else {
        return Err(ApiError::not_found("unsubscribe link"));
    };
    let message_id = format!("{:016x}", data.message_id);
    let mut h = Sha256::new();
    for part in [data.tenant_id.as_bytes(), recipient.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    let index = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let kind = EventType::Other(UNSUBSCRIBED.to_string());
    let mut details = serde_json::Map::new();
    details.insert("method".into(), "one_click".into());
    let event = Event {
        id: Event::stable_id(CONTROL_PLANE_ENGINE_ID, &message_id, index, 0, &kind),
        kind,
        timestamp_ms: now_ms,
        tenant_id: Some(data.tenant_id.clone()),
        message_id: Some(message_id),
        rfc822_message_id: None,
        sender: String::new(),
        from_domain: None,
        recipient: Some(recipient.clone()),
        tags: Vec::new(),
        metadata: None,
        attempt: 0,
        remote: None,
        reply: None,
        bounce: None,
        is_async: false,
        details: Some(details),
    };
    event
        .validate()
        .map_err(|e| ApiError::bad_request(format!("unsubscribe link: {e}")))?;
    Ok(event)
}

/// The client's address: the peer, or what a trusted proxy says (`crate::client_addr`).
fn client(app: &App, peer: SocketAddr, headers: &HeaderMap) -> std::net::IpAddr {
    let forwarded_for = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    crate::client_addr::client_ip(peer.ip(), forwarded_for, &app.settings.api_trusted_proxies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(recipient: &str) -> TokenData {
        TokenData {
            tenant_id: "ten_00000000000000ff".into(),
            message_id: 0x0100_0000_0000_002a,
            recipient: RecipientRef::Address(recipient.into()),
        }
    }

    #[test]
    fn the_body_must_say_one_click() {
        assert!(is_one_click_body(b"List-Unsubscribe=One-Click"));
        assert!(is_one_click_body(b"x=1&List-Unsubscribe=One-Click"));
        assert!(!is_one_click_body(b""));
        assert!(!is_one_click_body(b"List-Unsubscribe=one-click-ish"));
    }

    #[test]
    fn the_event_id_depends_on_message_and_recipient_only() {
        let a = event_of(&data("a@example.test"), 1).expect("event");
        assert_eq!(
            a.id,
            event_of(&data("a@example.test"), 2).expect("event").id
        );
        assert_ne!(
            a.id,
            event_of(&data("b@example.test"), 1).expect("event").id
        );
        assert!(a.id.starts_with("ev_010000000000002a"), "{}", a.id);
        assert_eq!(a.kind.as_str(), UNSUBSCRIBED);
        assert_eq!(a.details.as_ref().expect("details")["method"], "one_click");
        let by_index = TokenData {
            recipient: RecipientRef::Index(0),
            ..data("a@example.test")
        };
        assert_eq!(event_of(&by_index, 1).expect_err("no address").status, 404);
    }
}
