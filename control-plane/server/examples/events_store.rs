//! Load driver for `benches/bench-events-store.sh`: realistic delivery events, generated
//! deterministically, through the control plane's real store code. An example, so it is built
//! only on request (`cargo build --release -p petrel-control --example events_store`) and is
//! no part of the `petrel` binary.
//!
//! - `ingest`: times `petrel_control::events::ingest` (validation, one transaction per batch,
//!   the engine's acked seq), batches of [`BATCH_EVENTS`] from one engine in sequence, the way
//!   an engine's push link sends them. Prints events/s.
//! - `fill`: loads many events through `store::events::insert_batch` (the path `ingest` runs),
//!   in transactions of `--tx-events`, then writes sample query values (recipients, message ids,
//!   tags of the operator's tenant) for the HTTP timing.
//!
//! The mix per recipient of a message: `accepted`, then 80 % `delivered`, 9 % `deferred` then
//! `delivered`, 5 % `bounced` (hard), 3 % `deferred` then `bounced` (soft), 2 % `deferred` then
//! `expired`, 1 % `rejected` at RCPT instead. Tags, metadata, remote and reply as engines send
//! them; recipients recur (a pool of one address per ten events), so a recipient query finds
//! a handful of rows among millions.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use petrel_control::api::{App, AppState, Settings};
use petrel_control::store::{events, Db};
use petrel_control::{auth, dns, SystemClock};
use petrel_policy::event::{Bounce, BounceClass, Event, EventType, Remote, Reply};
use serde_json::json;
use sqlx::Row;

/// Events per batch, as engines send them (`petrel_policy::event::EVENTS_PER_BATCH_MAX`).
const BATCH_EVENTS: usize = petrel_policy::event::EVENTS_PER_BATCH_MAX;
/// Made-up tenants besides the operator's (events may name any tenant id).
const OTHER_TENANTS: u64 = 9;
/// Share of messages sent by the operator's tenant (the one the bench's owner key reads), %.
const OPERATOR_SHARE_PERCENT: u64 = 30;
/// Distinct `campaign-N` tags.
const CAMPAIGNS: u64 = 500;
/// Sample values written per kind by `fill`.
const SAMPLES_PER_KIND: usize = 500;
/// Progress line every this many events.
const PROGRESS_EVENTS: u64 = 1_000_000;

#[derive(Parser)]
enum Cmd {
    /// Time `events::ingest` with batches of 1,000 events from one engine.
    Ingest(Common),
    /// Load events through `store::events::insert_batch` in big transactions.
    Fill {
        #[command(flatten)]
        common: Common,
        /// Events per transaction.
        #[arg(long, default_value_t = 50_000)]
        tx_events: usize,
        /// Where to write the sample query values (`kind<TAB>value` lines).
        #[arg(long)]
        samples: PathBuf,
        /// Stop loading after this many seconds (at a transaction boundary) and say so.
        #[arg(long, default_value_t = u64::MAX)]
        seconds_max: u64,
    },
}

#[derive(clap::Args)]
struct Common {
    /// The control plane's directory (`<data-dir>/control`); holds petrel.db on SQLite.
    #[arg(long)]
    control_dir: PathBuf,
    #[arg(long)]
    database_url: Option<String>,
    #[arg(long)]
    events: u64,
    /// Seeds the generator (a different seed: different ids, a later message range).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Timestamps span this many days before now.
    #[arg(long, default_value_t = 7)]
    days: i64,
}

/// xorshift64*: deterministic and fast; quality is irrelevant here.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Builds the events of one message after another.
struct Generator {
    rng: Rng,
    engine: String,
    operator: String,
    seed: u64,
    message_no: u64,
    recipients_pool: u64,
    start_ms: i64,
    step_ms: i64,
    /// One message of the operator's tenant in this many gives its values to the samples.
    sample_every: u64,
    /// Values of the operator's tenant, for the query samples.
    samples: Vec<(&'static str, String)>,
}

impl Generator {
    fn new(operator: &str, engine: &str, total_events: u64, seed: u64, days: i64) -> Generator {
        let now = petrel_control::now_unix_ms();
        let span = days * 86_400_000;
        // About 2.1 events per recipient and 1.6 recipients per message.
        let messages = (total_events / 3).max(1);
        Generator {
            rng: Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03)),
            engine: engine.to_string(),
            operator: operator.to_string(),
            seed,
            message_no: 0,
            recipients_pool: (total_events / 10).max(100),
            start_ms: now - span,
            step_ms: (span / i64::try_from(messages).unwrap_or(i64::MAX)).max(1),
            sample_every: (messages * OPERATOR_SHARE_PERCENT / 100 / SAMPLES_PER_KIND as u64 / 2)
                .max(1),
            samples: Vec::new(),
        }
    }

    fn message(&mut self, out: &mut Vec<Event>) {
        self.message_no += 1;
        let n = self.message_no;
        let t0 = self.start_ms + i64::try_from(n).unwrap_or(0) * self.step_ms;
        let tenant = if self.rng.below(100) < OPERATOR_SHARE_PERCENT {
            self.operator.clone()
        } else {
            format!("ten_bench{}", 1 + self.rng.below(OTHER_TENANTS))
        };
        // Shaped like a spool message id: 16 hex digits, the shard (of 2) in the top byte,
        // then a sequence that only grows (here the seed, then the message number).
        let message_id = format!(
            "{:016x}",
            ((n % 2) << 56) | ((self.seed & 0xffff) << 40) | (n & ((1 << 40) - 1))
        );
        let domain = format!("brand{}.example", self.rng.below(50));
        let mut tags = vec![if self.rng.below(10) < 7 {
            "newsletter".to_string()
        } else {
            "transactional".to_string()
        }];
        if self.rng.below(2) == 0 {
            tags.push(format!("campaign-{}", self.rng.below(CAMPAIGNS)));
        }
        if self.rng.below(10) == 0 {
            tags.push("welcome".into());
        }
        let metadata = serde_json::Map::from_iter([
            ("user_id".to_string(), json!(self.rng.below(1_000_000))),
            ("plan".to_string(), json!("pro")),
        ]);
        let rcpts = 1 + usize::from(self.rng.below(10) < 4) + usize::from(self.rng.below(10) < 2);
        let base = Event {
            id: String::new(),
            kind: EventType::Accepted,
            timestamp_ms: t0,
            tenant_id: Some(tenant.clone()),
            message_id: Some(message_id.clone()),
            rfc822_message_id: Some(format!("{message_id}.{n}@{domain}")),
            sender: format!("bounces+{n}@{domain}"),
            from_domain: Some(domain),
            recipient: None,
            tags,
            metadata: Some(metadata),
            attempt: 0,
            remote: None,
            reply: None,
            bounce: None,
            is_async: false,
            details: None,
        };
        let sampled = tenant == self.operator && self.rng.below(self.sample_every) == 0;
        for i in 0..rcpts {
            let r = self.rng.below(self.recipients_pool);
            let recipient = format!("user{r}@mbox{}.example", r % 1_000);
            if sampled {
                self.samples.push(("recipient", recipient.clone()));
                self.samples.push(("message_id", message_id.clone()));
            }
            let rcpt = Event {
                recipient: Some(recipient),
                ..base.clone()
            };
            self.recipient_events(&rcpt, u32::try_from(i).unwrap_or(0), out);
        }
    }

    fn recipient_events(&mut self, base: &Event, index: u32, out: &mut Vec<Event>) {
        let message_id = base.message_id.clone().unwrap_or_default();
        let mut push = |kind: EventType, attempt: u32, dt_ms: i64, reply: Reply, bounce| {
            let remote = match kind {
                EventType::Accepted | EventType::Rejected => Some(Remote {
                    mx_host: None,
                    address: Some("198.51.100.23".into()),
                    tls_version: Some("TLSv1.3".into()),
                    tls_cipher: Some("TLS13_AES_128_GCM_SHA256".into()),
                }),
                EventType::Expired => None,
                _ => Some(Remote {
                    mx_host: Some("mx1.mbox.example".into()),
                    address: Some("203.0.113.25".into()),
                    tls_version: Some("TLSv1.3".into()),
                    tls_cipher: Some("TLS13_AES_256_GCM_SHA384".into()),
                }),
            };
            out.push(Event {
                id: Event::stable_id(&self.engine, &message_id, index, attempt, &kind),
                kind,
                timestamp_ms: base.timestamp_ms + dt_ms,
                attempt,
                remote,
                reply: Some(reply),
                bounce,
                ..base.clone()
            });
        };
        let reply = |code: u16, enhanced: &str, text: &str| Reply {
            code,
            enhanced_code: Some(enhanced.into()),
            text: text.into(),
        };
        let ok = || reply(250, "2.0.0", "Ok: queued as 4XkQ2m1Zz9z3N");
        let soft = || Bounce {
            class: BounceClass::Soft,
            category: "mailbox_full".into(),
        };
        let defer = || reply(452, "4.2.2", "Mailbox full, try again later");
        let roll = self.rng.below(100);
        if roll == 0 {
            let refused = reply(550, "5.7.1", "Relaying denied for this sender");
            push(EventType::Rejected, 0, 0, refused, None);
            return;
        }
        push(EventType::Accepted, 0, 0, reply(250, "2.0.0", "Ok"), None);
        match roll {
            1..=80 => push(EventType::Delivered, 1, 900, ok(), None),
            81..=89 => {
                push(EventType::Deferred, 1, 900, defer(), Some(soft()));
                push(EventType::Delivered, 2, 600_000, ok(), None);
            }
            90..=94 => {
                let hard = Bounce {
                    class: BounceClass::Hard,
                    category: "invalid_recipient".into(),
                };
                let unknown = reply(
                    550,
                    "5.1.1",
                    "The email account that you tried to reach does not exist",
                );
                push(EventType::Bounced, 1, 900, unknown, Some(hard));
            }
            95..=97 => {
                push(EventType::Deferred, 1, 900, defer(), Some(soft()));
                push(EventType::Bounced, 2, 3_600_000, defer(), Some(soft()));
            }
            _ => {
                push(EventType::Deferred, 1, 900, defer(), Some(soft()));
                let gave_up = reply(451, "4.4.7", "Message expired in the queue");
                push(EventType::Expired, 2, 86_400_000, gave_up, None);
            }
        }
    }
}

/// The operator's tenant id: the bench reads events with the operator owner key.
async fn operator_tenant(db: &Db) -> anyhow::Result<String> {
    let row = sqlx::query("SELECT id FROM tenants WHERE is_operator = 1 ORDER BY id LIMIT 1")
        .fetch_optional(&mut *db.conn().await?)
        .await?;
    Ok(match row {
        Some(r) => r.try_get("id")?,
        None => "ten_operator".to_string(),
    })
}

fn app(db: Db, control_dir: &std::path::Path) -> anyhow::Result<App> {
    let nameserver = "127.0.0.1:9".parse()?;
    let dns = dns::DnsChecker::new(&[nameserver])?;
    Ok(App(Arc::new(AppState {
        db,
        clock: Arc::new(SystemClock),
        throttle: auth::api_throttle(),
        one_click_throttle: petrel_control::api::unsubscribe::one_click_throttle(),
        verify_cache: auth::VerifyCache::default(),
        webhooks: petrel_control::webhooks::Webhooks::new(dns.clone(), false, None)?,
        dns,
        settings: Settings {
            spf_include: "spf.bench.invalid".into(),
            spf_addresses: Vec::new(),
            dkim_rotation_grace_ms: 0,
            hash_cost: auth::HashCost::default(),
            return_path_domain: String::new(),
            public_url: String::new(),
            guardrails: Default::default(),
            api_trusted_proxies: Vec::new(),
            retention: Default::default(),
            mta_sts: None,
            tls_rpt: None,
        },
        mx_verdicts: Default::default(),
        version_tx: tokio::sync::watch::channel(0).0,
        suppressions: petrel_control::suppressions::SuppressionWatch::new(0),
        guard: petrel_control::guardrails::Guard::new(),
        engine_identities: tokio::sync::watch::channel(0).0,
        auth_failures: Default::default(),
        erasure_wake: tokio::sync::Notify::new(),
        checkpoints: tokio::sync::watch::channel(None).0,
        aggregates: Default::default(),
        anchor: {
            use petrel_control::audit_anchor as anchor;
            let (key, generate) = anchor::key_path(control_dir, None);
            Arc::new(anchor::Anchor::new(
                anchor::load_key(&key, generate)?,
                control_dir.join(anchor::CHECKPOINT_FILE),
            ))
        },
    })))
}

/// Fills `batch` with the next [`BATCH_EVENTS`] events (at most `left`).
fn next_batch(g: &mut Generator, pending: &mut Vec<Event>, left: u64, batch: &mut Vec<Event>) {
    batch.clear();
    let want = usize::try_from(left)
        .unwrap_or(usize::MAX)
        .min(BATCH_EVENTS);
    while pending.len() < want {
        g.message(pending);
    }
    batch.extend(pending.drain(..want));
}

async fn ingest(c: Common) -> anyhow::Result<()> {
    let db = Db::open(&c.control_dir, c.database_url.as_deref()).await?;
    let operator = operator_tenant(&db).await?;
    let engine = format!("bench-ingest-{}", c.seed);
    let app = app(db, &c.control_dir)?;
    let now = app.now_ms();
    petrel_control::store::engines::register(&mut *app.db.conn().await?, &engine, "bench", 0, now)
        .await?;
    let mut g = Generator::new(&operator, &engine, c.events, c.seed, c.days);
    let (mut pending, mut batch) = (Vec::new(), Vec::new());
    let (mut done, mut inserted, mut seq) = (0u64, 0usize, 0u64);
    let started = Instant::now();
    while done < c.events {
        next_batch(&mut g, &mut pending, c.events - done, &mut batch);
        seq += 1;
        let r = petrel_control::events::ingest(&app, &engine, seq, &batch).await?;
        inserted += r.inserted;
        done += batch.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ingest: {done} events ({inserted} new) in {secs:.2} s: {:.0} events/s ({:?})",
        done as f64 / secs,
        app.db.dialect
    );
    Ok(())
}

async fn fill(
    c: Common,
    tx_events: usize,
    samples: PathBuf,
    seconds_max: u64,
) -> anyhow::Result<()> {
    let db = Db::open(&c.control_dir, c.database_url.as_deref()).await?;
    let operator = operator_tenant(&db).await?;
    let engine = format!("bench-fill-{}", c.seed);
    let mut g = Generator::new(&operator, &engine, c.events, c.seed, c.days);
    let (mut pending, mut batch) = (Vec::new(), Vec::new());
    let mut done = 0u64;
    let started = Instant::now();
    let mut next_progress = PROGRESS_EVENTS;
    while done < c.events {
        if started.elapsed().as_secs() >= seconds_max {
            eprintln!("fill: stopped after {seconds_max} s (--seconds-max) at {done} events");
            break;
        }
        let mut tx = db.begin_write().await?;
        let mut in_tx = 0;
        while in_tx < tx_events && done < c.events {
            next_batch(&mut g, &mut pending, c.events - done, &mut batch);
            let now = petrel_control::now_unix_ms();
            events::insert_batch(&mut tx, &engine, &batch, now).await?;
            in_tx += batch.len();
            done += batch.len() as u64;
        }
        tx.commit().await?;
        if done >= next_progress {
            next_progress += PROGRESS_EVENTS;
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "fill: {done} events, {secs:.0} s, {:.0} events/s",
                done as f64 / secs
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fill: {done} events in {secs:.1} s: {:.0} events/s ({:?})",
        done as f64 / secs,
        db.dialect
    );
    write_samples(&mut g, &samples)
}

/// Spreads the collected values over the whole load, so queries hit old and new rows alike.
fn write_samples(g: &mut Generator, path: &PathBuf) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for kind in ["recipient", "message_id"] {
        let values: Vec<&String> = g
            .samples
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, v)| v)
            .collect();
        let stride = (values.len() / SAMPLES_PER_KIND).max(1);
        for v in values.iter().step_by(stride).take(SAMPLES_PER_KIND) {
            writeln!(f, "{kind}\t{v}")?;
        }
    }
    for _ in 0..SAMPLES_PER_KIND {
        writeln!(f, "tag\tcampaign-{}", g.rng.below(CAMPAIGNS))?;
    }
    for t in EventType::KNOWN.iter().cycle().take(SAMPLES_PER_KIND) {
        writeln!(f, "type\t{t}")?;
    }
    Ok(f.flush()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cmd::parse() {
        Cmd::Ingest(c) => ingest(c).await,
        Cmd::Fill {
            common,
            tx_events,
            samples,
            seconds_max,
        } => fill(common, tx_events, samples, seconds_max).await,
    }
}
