//! `GET /v1/stats`: counts and rates of one tenant over a window, in total and per sending
//! (`From:`) domain, summed from the hourly buckets that ingest maintains (so the cost is one
//! indexed range read whatever the number of events).
//!
//! The window is `[since, until]` in Unix ms (default: the last 24 hours), widened to whole
//! buckets ([`crate::store::events::STATS_BUCKET_MS`]). Rates divide by `sent` (accepted
//! recipients) and are absent when nothing was sent. Only operator owners may name another
//! tenant (`tenant`); `*` is refused here (stats are per tenant).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::events::scope;
use super::{ApiQuery, App};
use crate::auth::{Caller, Permission};
use crate::store;
use crate::store::events::{Counts, Scope, STATS_BUCKET_MS};
use crate::ApiError;

/// The window when `since` is not given: this long before `until`, ms (24 hours).
pub const STATS_WINDOW_DEFAULT_MS: i64 = 86_400_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Unix ms, inclusive; default `until` minus 24 hours.
    pub since: Option<i64>,
    /// Unix ms, inclusive; default now.
    pub until: Option<i64>,
    /// Only this sending domain.
    pub from_domain: Option<String>,
    /// Operator owners: a tenant id.
    pub tenant: Option<String>,
}

/// Counts with the rates derived from them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StatsRow {
    /// The sending domain; absent for the totals and for events without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_domain: Option<String>,
    #[schema(inline)]
    pub counts: CountsView,
    /// delivered / sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_rate: Option<f64>,
    /// (bounced_hard + bounced_soft) / sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_rate: Option<f64>,
    /// bounced_hard / sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_bounce_rate: Option<f64>,
    /// deferred / sent (deferrals per accepted recipient; can exceed 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferral_rate: Option<f64>,
}

/// The counters (see `store::events::Counts`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CountsView {
    pub sent: i64,
    pub delivered: i64,
    pub bounced_hard: i64,
    pub bounced_soft: i64,
    pub deferred: i64,
    pub expired: i64,
    pub rejected: i64,
    pub complained: i64,
}

impl From<Counts> for CountsView {
    fn from(c: Counts) -> CountsView {
        let Counts {
            sent,
            delivered,
            bounced_hard,
            bounced_soft,
            deferred,
            expired,
            rejected,
            complained,
        } = c;
        CountsView {
            sent,
            delivered,
            bounced_hard,
            bounced_soft,
            deferred,
            expired,
            rejected,
            complained,
        }
    }
}

impl StatsRow {
    fn new(from_domain: Option<String>, c: CountsView) -> StatsRow {
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let rate = |n: i64| (c.sent > 0).then(|| n as f64 / c.sent as f64);
        StatsRow {
            from_domain,
            delivery_rate: rate(c.delivered),
            bounce_rate: rate(c.bounced_hard + c.bounced_soft),
            hard_bounce_rate: rate(c.bounced_hard),
            deferral_rate: rate(c.deferred),
            counts: c,
        }
    }
}

/// One tenant's counts over a window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StatsView {
    pub tenant_id: String,
    /// The window actually summed: bucket starts from `since_ms` to `until_ms`.
    pub since_ms: i64,
    pub until_ms: i64,
    pub bucket_ms: i64,
    pub totals: StatsRow,
    /// Per sending domain, by name.
    pub domains: Vec<StatsRow>,
}

#[utoipa::path(
    get,
    operation_id = "stats_show",
    path = "/v1/stats",
    summary = "Counts and rates per tenant and sending domain over a window",
    params(StatsQuery),
    responses((status = 200, body = StatsView)),
    security(("bearer" = [])),
    extensions(("x-permission" = json!(Permission::StatsRead.name())))
)]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> Result<Json<StatsView>, ApiError> {
    let tenant_id = match scope(&caller, q.tenant.as_deref())? {
        Scope::Tenant(t) => t,
        Scope::All => return Err(ApiError::bad_request("stats are per tenant: name one")),
    };
    let until = q.until.unwrap_or_else(|| app.now_ms());
    let since = q
        .since
        .unwrap_or_else(|| until.saturating_sub(STATS_WINDOW_DEFAULT_MS));
    let since = store::events::bucket_start(since);
    let mut conn = app.db.conn().await?;
    let rows = store::events::stats(
        &mut conn,
        &tenant_id,
        q.from_domain.as_deref(),
        since,
        until,
    )
    .await?;
    let mut total = CountsView::default();
    let mut domains = Vec::with_capacity(rows.len());
    for (domain, c) in rows {
        let c = CountsView::from(c);
        total.sent += c.sent;
        total.delivered += c.delivered;
        total.bounced_hard += c.bounced_hard;
        total.bounced_soft += c.bounced_soft;
        total.deferred += c.deferred;
        total.expired += c.expired;
        total.rejected += c.rejected;
        total.complained += c.complained;
        domains.push(StatsRow::new((!domain.is_empty()).then_some(domain), c));
    }
    Ok(Json(StatsView {
        tenant_id,
        since_ms: since,
        until_ms: until,
        bucket_ms: STATS_BUCKET_MS,
        totals: StatsRow::new(None, total),
        domains,
    }))
}
