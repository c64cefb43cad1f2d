//! Abuse guardrails (issue 14): the new-tenant cap's settings, and the reputation task that
//! warns about and disables tenants and sending domains whose bounce or complaint rate passes
//! its threshold.
//!
//! The task evaluates the tenants whose events an ingest just stored (woken by
//! [`Guard::note_ingest`], a set insert per batch, debounced by [`INGEST_DEBOUNCE_MS`]) and
//! every tenant every `check_interval_ms` (a window that slides can clear a warning without new
//! mail). The rules are pure ([`rules`]); here they are read from the store and applied, one
//! mutation per change: the level row, the event (`reputation_warning`, `sending_disabled`; through the
//! events insert path, so webhooks follow), an audit entry (actor `system:guardrails`), and a
//! policy version (engines get `sending_disabled` and the warning in the next snapshot). Each
//! change re-reads its row inside the mutation, so two control plane nodes evaluating at once
//! apply it once.
//!
//! [`Guard`] also keeps a small cache of each tenant's note (its warning or disable reason),
//! refreshed at every evaluation, which the API gate copies into `X-Petrel-Warning`.

pub mod rules;

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use petrel_policy::{Event, EventType};
use serde_json::json;

use crate::api::App;
use crate::audit::AuditEntry;
use crate::store::{self, guardrails as gstore, StoreError};
use rules::{Change, Level, Metric, Thresholds};

/// Engine id of the events the control plane makes itself.
pub const CONTROL_PLANE_ENGINE_ID: &str = "control-plane";
/// The audit actor of automatic changes.
pub const GUARD_ACTOR: &str = "system:guardrails";
/// How long the task waits after an ingest before evaluating, ms: the ingests of that time
/// are evaluated together.
pub const INGEST_DEBOUNCE_MS: u64 = 200;
/// Tenants remembered for the next evaluation; past it the next pass evaluates every tenant.
pub const DIRTY_TENANTS_MAX: usize = 10_000;

/// Defaults (the issue's).
pub const NEW_TENANT_MESSAGES_MAX_DEFAULT: u32 = 10;
pub const NEW_TENANT_WINDOW_MS_DEFAULT: u64 = 86_400_000;
pub const NEW_TENANT_PERIOD_MS_DEFAULT: u64 = 7 * 86_400_000;
pub const WINDOW_MS_DEFAULT: u64 = 86_400_000;
pub const MIN_VOLUME_DEFAULT: u64 = 100;
pub const BOUNCE_RATE_MAX_PERCENT_DEFAULT: f64 = 10.0;
pub const COMPLAINT_RATE_MAX_PERCENT_DEFAULT: f64 = 0.3;
pub const WARNING_PERCENT_DEFAULT: u32 = 80;
pub const CHECK_INTERVAL_MS_DEFAULT: u64 = 60_000;

/// The guardrails' settings (`petrel control serve --guard-*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardSettings {
    /// Messages a new tenant may send per `new_tenant_window_ms`; 0: no cap.
    pub new_tenant_messages_max: u32,
    pub new_tenant_window_ms: u64,
    /// How long a tenant is new after its creation.
    pub new_tenant_period_ms: u64,
    /// The rolling window of the rates (whole hourly buckets).
    pub window_ms: u64,
    /// Fewest messages sent in the window before a rate counts.
    pub min_volume: u64,
    pub bounce_rate_max_percent: f64,
    pub complaint_rate_max_percent: f64,
    /// A warning at this share of a threshold, percent.
    pub warning_percent: u32,
    /// The periodic pass over every tenant.
    pub check_interval_ms: u64,
}

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings {
            new_tenant_messages_max: NEW_TENANT_MESSAGES_MAX_DEFAULT,
            new_tenant_window_ms: NEW_TENANT_WINDOW_MS_DEFAULT,
            new_tenant_period_ms: NEW_TENANT_PERIOD_MS_DEFAULT,
            window_ms: WINDOW_MS_DEFAULT,
            min_volume: MIN_VOLUME_DEFAULT,
            bounce_rate_max_percent: BOUNCE_RATE_MAX_PERCENT_DEFAULT,
            complaint_rate_max_percent: COMPLAINT_RATE_MAX_PERCENT_DEFAULT,
            warning_percent: WARNING_PERCENT_DEFAULT,
            check_interval_ms: CHECK_INTERVAL_MS_DEFAULT,
        }
    }
}

impl GuardSettings {
    /// The rules' integer thresholds.
    pub fn thresholds(&self) -> Thresholds {
        let ppm = |pct: f64| (pct.clamp(0.0, 100.0) * 10_000.0).round() as i64;
        Thresholds {
            window_ms: i64::try_from(self.window_ms).unwrap_or(i64::MAX),
            min_volume: i64::try_from(self.min_volume.max(1)).unwrap_or(i64::MAX),
            bounce_rate_max_ppm: ppm(self.bounce_rate_max_percent),
            complaint_rate_max_ppm: ppm(self.complaint_rate_max_percent),
            warning_percent: i64::from(self.warning_percent.min(100)),
        }
    }

    /// The snapshot's cap for a tenant created at `created_unix_ms` (None: none applies).
    pub fn cap_for(
        &self,
        created_unix_ms: i64,
        is_operator: bool,
        lifted: bool,
    ) -> Option<petrel_policy::NewTenantCap> {
        if self.new_tenant_messages_max == 0 || is_operator || lifted {
            return None;
        }
        let created = u64::try_from(created_unix_ms).unwrap_or(0);
        Some(petrel_policy::NewTenantCap {
            messages_max: self
                .new_tenant_messages_max
                .min(petrel_policy::snapshot::NEW_TENANT_CAP_MESSAGES_MAX),
            window_ms: self
                .new_tenant_window_ms
                .clamp(1, petrel_policy::snapshot::NEW_TENANT_CAP_WINDOW_MS_MAX),
            until_unix_ms: created.saturating_add(self.new_tenant_period_ms),
        })
    }
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new()
    }
}

/// The task's shared state: the tenants to evaluate next, the notes cache.
#[derive(Debug)]
pub struct Guard {
    /// Tenants whose events were stored since the last evaluation (None: too many, evaluate
    /// all).
    dirty: Mutex<Option<HashSet<String>>>,
    wake: tokio::sync::Notify,
    /// Tenant id -> its warning or disable note (`X-Petrel-Warning`).
    notes: RwLock<HashMap<String, String>>,
}

impl Guard {
    pub fn new() -> Guard {
        Guard {
            dirty: Mutex::new(Some(HashSet::new())),
            wake: tokio::sync::Notify::new(),
            notes: RwLock::new(HashMap::new()),
        }
    }

    /// After an ingest committed: remembers the tenants of the events that move a rate and
    /// wakes the task.
    pub fn note_ingest<'a>(&self, events: impl IntoIterator<Item = &'a Event>) {
        let mut woke = false;
        {
            let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            for e in events {
                let moves = matches!(e.kind, EventType::Accepted | EventType::Bounced)
                    || e.kind.as_str() == "complained";
                let Some(t) = e.tenant_id.as_ref().filter(|_| moves) else {
                    continue;
                };
                woke = true;
                if let Some(set) = dirty.as_mut() {
                    if set.len() >= DIRTY_TENANTS_MAX {
                        *dirty = None;
                    } else if !set.contains(t) {
                        set.insert(t.clone());
                    }
                }
            }
        }
        if woke {
            self.wake.notify_one();
        }
    }

    /// The note of `tenant_id` for `X-Petrel-Warning`, if it has one.
    pub fn note(&self, tenant_id: &str) -> Option<String> {
        self.notes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant_id)
            .cloned()
    }

    fn take_dirty(&self) -> Option<Vec<String>> {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let taken = dirty.replace(HashSet::new());
        taken.map(|s| s.into_iter().collect())
    }

    fn set_notes(&self, tenants: Option<&[String]>, states: &[gstore::StateRow]) {
        let mut notes = self.notes.write().unwrap_or_else(|p| p.into_inner());
        match tenants {
            None => notes.clear(),
            Some(ts) => ts.iter().for_each(|t| {
                notes.remove(t);
            }),
        }
        // Disabled before warned, the tenant's own before a domain's.
        let mut best: HashMap<&str, (Level, bool, &str)> = HashMap::new();
        for s in states {
            let rank = (
                Level::parse(&s.level),
                s.scope_domain.is_empty(),
                s.note.as_str(),
            );
            let e = best.entry(&s.tenant_id).or_insert(rank);
            if (rank.0, rank.1) > (e.0, e.1) {
                *e = rank;
            }
        }
        for (t, (level, _, note)) in best {
            let text = match level {
                Level::Disabled => format!("sending disabled: {note}"),
                _ => note.to_string(),
            };
            notes.insert(t.to_string(), text);
        }
    }
}

/// Runs the evaluations until dropped: after ingests (debounced) and every
/// `check_interval_ms`.
pub async fn run(app: App) {
    let every = Duration::from_millis(app.settings.guardrails.check_interval_ms.max(100));
    let mut tick = tokio::time::interval(every);
    loop {
        let tenants = tokio::select! {
            _ = tick.tick() => None,
            _ = app.guard.wake.notified() => {
                tokio::time::sleep(Duration::from_millis(INGEST_DEBOUNCE_MS)).await;
                app.guard.take_dirty()
            }
        };
        if let Err(e) = evaluate(&app, tenants.as_deref()).await {
            tracing::warn!(error = %e, "guardrails evaluation failed");
        }
    }
}

/// Evaluates `tenants` (None: every tenant) now and applies the changes. Returns them.
pub async fn evaluate(app: &App, tenants: Option<&[String]>) -> Result<Vec<Change>, StoreError> {
    let th = app.settings.guardrails.thresholds();
    let now = app.now_ms();
    let (buckets, domains, states, baselines) = {
        let mut conn = app.db.conn().await?;
        (
            gstore::window_buckets(&mut conn, th.window_start(now), tenants).await?,
            gstore::domains(&mut conn, tenants).await?,
            gstore::states(&mut conn, tenants).await?,
            gstore::baselines(&mut conn, tenants).await?,
        )
    };
    let changes = rules::evaluate(&th, now, &buckets, &domains, &states, &baselines);
    for c in &changes {
        apply(app, &th, c, now).await?;
    }
    let states = if changes.is_empty() {
        states
    } else {
        gstore::states(&mut *app.db.conn().await?, tenants).await?
    };
    app.guard.set_notes(tenants, &states);
    if tenants.is_none() {
        let mut tx = app.db.begin_write().await?;
        gstore::purge_baselines(&mut tx, th.window_start(now)).await?;
        tx.commit().await?;
    }
    Ok(changes)
}

/// The event type of a change, if it makes one (a cleared warning does not).
fn event_type(c: &Change) -> Option<&'static str> {
    match (c.from, c.to) {
        (_, Level::Disabled) => Some("sending_disabled"),
        (Level::Ok, Level::Warned) => Some("reputation_warning"),
        _ => None,
    }
}

/// The `details` of a guardrails event.
pub fn details(
    th: &Thresholds,
    metric: Metric,
    rate_ppm: i64,
    volume: i64,
) -> serde_json::Map<String, serde_json::Value> {
    let v = json!({
        "metric": metric.as_str(),
        "rate": rate_ppm as f64 / rules::PPM as f64,
        "threshold": th.max_ppm(metric) as f64 / rules::PPM as f64,
        "window_hours": th.window_hours(),
        "volume": volume,
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// An event the control plane makes, with a unique id.
pub fn control_event(
    kind: &str,
    tenant_id: &str,
    scope_domain: &str,
    now: i64,
    details: serde_json::Map<String, serde_json::Value>,
) -> Event {
    let subject = format!(
        "{kind}:{tenant_id}:{scope_domain}:{now}:{}",
        crate::api::new_id("g")
    );
    Event {
        id: Event::stable_id(
            CONTROL_PLANE_ENGINE_ID,
            &subject,
            0,
            0,
            &EventType::parse(kind),
        ),
        kind: EventType::parse(kind),
        timestamp_ms: now,
        tenant_id: Some(tenant_id.to_string()),
        message_id: None,
        rfc822_message_id: None,
        sender: String::new(),
        from_domain: (!scope_domain.is_empty()).then(|| scope_domain.to_string()),
        recipient: None,
        tags: Vec::new(),
        metadata: None,
        attempt: 0,
        remote: None,
        reply: None,
        bounce: None,
        is_async: false,
        details: Some(details),
    }
}

/// Stores `event` in `conn`'s transaction through the ingest's insert (aggregates, webhooks'
/// stream) and announces it to other nodes on commit.
pub async fn insert_event(
    app: &App,
    conn: &mut sqlx::AnyConnection,
    event: &Event,
    now: i64,
) -> Result<(), StoreError> {
    store::events::insert_batch(&mut *conn, CONTROL_PLANE_ENGINE_ID, &[event], now).await?;
    store::announce_events(conn, app.db.dialect).await
}

/// Applies one change in its own mutation, unless the row moved meanwhile (another node).
async fn apply(app: &App, th: &Thresholds, c: &Change, now: i64) -> Result<(), StoreError> {
    let mut m = app.db.begin_mutation().await?;
    let tenants = [c.tenant_id.clone()];
    let current = gstore::states(m.conn(), Some(&tenants[..]))
        .await?
        .into_iter()
        .find(|s| s.scope_domain == c.scope_domain && s.metric == c.metric.as_str())
        .map_or(Level::Ok, |s| Level::parse(&s.level));
    if current != c.from {
        return Ok(()); // dropped: rolls back, the version bump with it
    }
    if c.to == Level::Ok {
        gstore::clear_state(
            m.conn(),
            &c.tenant_id,
            &c.scope_domain,
            Some(c.metric.as_str()),
        )
        .await?;
    } else {
        let row = gstore::StateRow {
            tenant_id: c.tenant_id.clone(),
            scope_domain: c.scope_domain.clone(),
            metric: c.metric.as_str().to_string(),
            level: c.to.as_str().to_string(),
            note: c.note.clone(),
            rate_ppm: c.rate_ppm,
            volume: c.volume,
            changed_unix_ms: now,
        };
        gstore::set_state(m.conn(), &row).await?;
    }
    let mut d = details(th, c.metric, c.rate_ppm, c.volume);
    if c.to == Level::Disabled {
        d.insert("reason".into(), json!(c.note));
    }
    let mut inserted = false;
    if let Some(kind) = event_type(c) {
        let event = control_event(kind, &c.tenant_id, &c.scope_domain, now, d.clone());
        insert_event(app, m.conn(), &event, now).await?;
        inserted = true;
    }
    let action = match c.to {
        Level::Disabled => "guard.sending_disabled",
        Level::Warned => "guard.reputation_warning",
        Level::Ok => "guard.warning_cleared",
    };
    let target = if c.scope_domain.is_empty() {
        c.tenant_id.clone()
    } else {
        c.scope_domain.clone()
    };
    let entry = AuditEntry {
        tenant_id: Some(c.tenant_id.clone()),
        actor: GUARD_ACTOR.to_string(),
        remote_addr: String::new(),
        action: action.to_string(),
        target,
        at_unix_ms: now,
        before: Some(json!({"level": c.from.as_str()})),
        after: Some(serde_json::Value::Object(d)),
    };
    let v = m.commit(entry).await?;
    app.notify(v);
    if inserted {
        app.webhooks.wake();
    }
    tracing::info!(tenant = %c.tenant_id, scope = %c.scope_domain, metric = c.metric.as_str(),
        level = c.to.as_str(), rate_ppm = c.rate_ppm, "guardrails level changed");
    Ok(())
}

/// What the snapshot carries of the guardrails, read in the snapshot's transaction.
#[derive(Debug, Default)]
pub struct SnapshotNotes {
    pub cap_lifts: HashSet<String>,
    /// (tenant, scope domain) -> (disable reason, warning).
    notes: HashMap<(String, String), (Option<String>, Option<String>)>,
}

impl SnapshotNotes {
    /// The disable reason of a scope ("" for the tenant), if disabled.
    pub fn disabled(&self, tenant_id: &str, scope_domain: &str) -> Option<String> {
        self.get(tenant_id, scope_domain).and_then(|n| n.0.clone())
    }

    /// The warning of a scope, if warned (and not disabled).
    pub fn warning(&self, tenant_id: &str, scope_domain: &str) -> Option<String> {
        self.get(tenant_id, scope_domain)
            .filter(|n| n.0.is_none())
            .and_then(|n| n.1.clone())
    }

    fn get(&self, t: &str, d: &str) -> Option<&(Option<String>, Option<String>)> {
        self.notes.get(&(t.to_string(), d.to_string()))
    }
}

/// Reads the guardrails' part of the snapshot (lifted caps, levels).
pub async fn snapshot_notes(conn: &mut sqlx::AnyConnection) -> Result<SnapshotNotes, StoreError> {
    let mut out = SnapshotNotes {
        cap_lifts: gstore::cap_lifts(&mut *conn).await?,
        notes: HashMap::new(),
    };
    for s in gstore::states(conn, None).await? {
        let note = clip_note(&s.note);
        let e = out.notes.entry((s.tenant_id, s.scope_domain)).or_default();
        match Level::parse(&s.level) {
            Level::Disabled if e.0.is_none() => e.0 = Some(note),
            Level::Warned if e.1.is_none() => e.1 = Some(note),
            _ => {}
        }
    }
    Ok(out)
}

/// A note within the snapshot's bound and free of control characters (it goes into SMTP
/// replies).
fn clip_note(note: &str) -> String {
    let mut s: String = note.chars().filter(|c| !c.is_control()).collect();
    let max = petrel_policy::snapshot::GUARD_NOTE_MAX_BYTES;
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    if s.is_empty() {
        s.push_str("reputation threshold passed");
    }
    s
}
