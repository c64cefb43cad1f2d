//! `DeliveryShard` on a real glommio executor, a real SMTP client and real SMTP sinks on
//! loopback (reached through static routes), with an in-memory `SpoolAccess`.

mod support;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use petrel_delivery::{
    DeliveryConfig, DeliveryShard, DomainLimits, EventSink, EventsConfig, GlobalLimits,
    QueuedMessage, QueuedRcpt, RcptState, RcptUpdate, RetrySchedule, SpoolAccess, SpoolAccessError,
    TlsPolicy, NEXT_HOP_SESSIONS_MAX_DEFAULT,
};
use petrel_outbound::{Resolver, ResolverConfig, StaticRoute};
use support::sink::Sink;

/// One spooled message of the in-memory spool.
struct Stored {
    rcpts: Vec<String>,
    body: Vec<u8>,
    states: HashMap<u32, (RcptState, u32)>,
}

/// The in-memory spool: what the engine's petrel-spool adapter does, minus the disk.
#[derive(Default)]
struct MemSpool {
    messages: RefCell<HashMap<u64, Stored>>,
    removed: RefCell<Vec<u64>>,
    /// Final recipient states of removed messages: (id, index) -> (state, attempts).
    finals: RefCell<HashMap<(u64, u32), (RcptState, u32)>>,
    dsns: RefCell<Vec<u64>>,
    next_id: RefCell<u64>,
}

impl MemSpool {
    fn store(&self, mail_from: &str, rcpts: &[&str], body: &[u8]) -> QueuedMessage {
        let id = {
            let mut n = self.next_id.borrow_mut();
            *n += 1;
            *n
        };
        self.messages.borrow_mut().insert(
            id,
            Stored {
                rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
                body: body.to_vec(),
                states: HashMap::new(),
            },
        );
        QueuedMessage {
            id,
            mail_from: mail_from.into(),
            received_unix_ms: now_ms(),
            is_dsn: false,
            recipients: rcpts
                .iter()
                .enumerate()
                .map(|(i, a)| QueuedRcpt {
                    index: i as u32,
                    address: a.to_string(),
                    attempts: 0,
                    next_attempt_unix_ms: 0,
                })
                .collect(),
            attribution: None,
        }
    }
}

impl SpoolAccess for MemSpool {
    async fn read_body(&self, id: u64) -> Result<Vec<u8>, SpoolAccessError> {
        let m = self.messages.borrow();
        m.get(&id)
            .map(|s| s.body.clone())
            .ok_or(SpoolAccessError::NotFound { id })
    }

    async fn update(&self, id: u64, updates: &[RcptUpdate]) -> Result<(), SpoolAccessError> {
        let mut m = self.messages.borrow_mut();
        let s = m.get_mut(&id).ok_or(SpoolAccessError::NotFound { id })?;
        for u in updates {
            if u.index as usize >= s.rcpts.len() {
                return Err(SpoolAccessError::RecipientIndex {
                    id,
                    index: u.index,
                    recipients: s.rcpts.len() as u32,
                });
            }
            s.states.insert(u.index, (u.state, u.attempts));
        }
        Ok(())
    }

    async fn remove(&self, id: u64, last: &[RcptUpdate]) -> Result<(), SpoolAccessError> {
        self.update(id, last).await?;
        let s = self
            .messages
            .borrow_mut()
            .remove(&id)
            .ok_or(SpoolAccessError::NotFound { id })?;
        for i in 0..s.rcpts.len() as u32 {
            let st = s.states.get(&i).copied().ok_or_else(|| {
                SpoolAccessError::Spool("removed with a recipient not final".into())
            })?;
            assert_ne!(st.0, RcptState::Pending, "removed with a pending recipient");
            self.finals.borrow_mut().insert((id, i), st);
        }
        self.removed.borrow_mut().push(id);
        Ok(())
    }

    async fn store_dsn(
        &self,
        mail_from: &str,
        rcpt: &str,
        body: &[u8],
    ) -> Result<u64, SpoolAccessError> {
        assert_eq!(mail_from, "", "DSNs use the null sender");
        let q = self.store(mail_from, &[rcpt], body);
        self.dsns.borrow_mut().push(q.id);
        Ok(q.id)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn config() -> DeliveryConfig {
    let mut cfg = DeliveryConfig {
        helo_name: "petrel.test".into(),
        retry: RetrySchedule {
            first_retry_delay_ms: 200,
            retry_delay_ms_max: 400,
            multiplier: 2,
            jitter_percent: 10,
            age_max_ms: 60_000,
        },
        default_limits: DomainLimits {
            connections_max: 2,
            messages_per_connection_max: 3,
            messages_per_second_max: None,
            recipients_per_transaction_max: 2,
            tls: TlsPolicy::Opportunistic,
        },
        idle_timeout_ms: 200,
        tick_ms_max: 50,
        permit_retry_delay_ms: 50,
        ..DeliveryConfig::default()
    };
    cfg.client.connect_timeout_ms = 2_000;
    cfg.client.greeting_timeout_ms = 2_000;
    cfg.client.command_timeout_ms = 2_000;
    cfg.client.data_block_timeout_ms = 2_000;
    cfg.client.data_done_timeout_ms = 2_000;
    cfg.validate().expect("valid config");
    cfg
}

fn resolver(dest: SocketAddr, other: SocketAddr) -> Resolver {
    Resolver::start(ResolverConfig {
        // Never the system resolver: static routes answer everything in this test.
        nameservers: vec!["127.0.0.1:9".parse().expect("addr")],
        static_routes: vec![
            StaticRoute {
                domain: Some("dest.example".into()),
                target: dest,
            },
            StaticRoute {
                domain: None,
                target: other,
            },
        ],
        query_timeout_ms: 500,
        ..ResolverConfig::default()
    })
    .expect("resolver")
}

const BODY: &[u8] =
    b"From: alice@src.example\r\nSubject: test\r\nMessage-ID: <m1@src.example>\r\n\r\nHello.\r\n";
const BULK_MESSAGES: usize = 30;
const TEST_DEADLINE: Duration = Duration::from_secs(20);

#[test]
fn delivers_retries_bounces_and_respects_connection_limit() {
    let dest = Sink::start();
    let other = Sink::start();
    let events_dir =
        std::env::temp_dir().join(format!("petrel-delivery-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&events_dir);
    let (events, writer) = EventSink::start(EventsConfig::new(&events_dir)).expect("events");
    let resolver = resolver(dest.addr, other.addr);
    let limits = Arc::new(GlobalLimits::default());
    let cfg = Arc::new(config());

    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor");
    let (spool, elapsed) = ex.run(async move {
        let spool = Rc::new(MemSpool::default());
        let shard = Rc::new(DeliveryShard::new(
            0,
            cfg,
            resolver,
            limits,
            spool.clone(),
            events,
        ));
        let runner = {
            let shard = shard.clone();
            glommio::spawn_local(async move { shard.run().await })
        };
        let started = Instant::now();
        let mut ids = vec![
            spool.store(
                "alice@src.example",
                &["ok1@dest.example", "ok2@dest.example", "ok3@other.example"],
                BODY,
            ),
            spool.store("alice@src.example", &["temp1@dest.example"], BODY),
            spool.store(
                "bob@src.example",
                &["perm1@dest.example", "ok4@dest.example"],
                BODY,
            ),
            spool.store("alice@src.example", &["drop1@dest.example"], BODY),
        ];
        for i in 0..BULK_MESSAGES {
            let to = format!("bulk{i}@dest.example");
            ids.push(spool.store("alice@src.example", &[to.as_str()], BODY));
        }
        let expected: Vec<u64> = ids.iter().map(|m| m.id).collect();
        for m in ids {
            shard.enqueue(m);
        }
        assert!(shard.queued_recipients() >= 35);
        // Wait until every message (and the DSN) is removed from the spool.
        while started.elapsed() < TEST_DEADLINE {
            let removed = spool.removed.borrow().clone();
            let dsns = spool.dsns.borrow().clone();
            let all_done = expected.iter().all(|id| removed.contains(id))
                && !dsns.is_empty()
                && dsns.iter().all(|id| removed.contains(id));
            if all_done {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = started.elapsed();
        assert_eq!(shard.queued_recipients(), 0, "nothing left pending");
        shard.shutdown();
        runner.await;
        drop(shard);
        (Rc::try_unwrap(spool).ok().expect("spool unshared"), elapsed)
    });
    writer.shutdown().expect("events flushed");
    assert!(elapsed < TEST_DEADLINE, "all messages final in time");

    // Final states in the spool: ids 1..=4 as stored above.
    let finals = spool.finals.borrow();
    assert_eq!(finals[&(1, 0)].0, RcptState::Delivered);
    assert_eq!(finals[&(1, 2)].0, RcptState::Delivered);
    assert_eq!(
        finals[&(2, 0)],
        (RcptState::Delivered, 2),
        "450 then delivered on retry"
    );
    assert_eq!(
        finals[&(3, 0)],
        (RcptState::Bounced, 1),
        "550 bounced at once"
    );
    assert_eq!(finals[&(3, 1)].0, RcptState::Delivered);
    assert_eq!(
        finals[&(4, 0)],
        (RcptState::Delivered, 2),
        "dropped mid-DATA, then delivered"
    );

    // What the sinks saw.
    let got = dest.received();
    let to_dest = |addr: &str| {
        got.iter()
            .filter(|m| m.rcpts.iter().any(|r| r == addr))
            .count()
    };
    for addr in [
        "ok1@dest.example",
        "ok2@dest.example",
        "temp1@dest.example",
        "ok4@dest.example",
        "drop1@dest.example",
    ] {
        assert_eq!(to_dest(addr), 1, "{addr} delivered exactly once");
    }
    for i in 0..BULK_MESSAGES {
        assert_eq!(to_dest(&format!("bulk{i}@dest.example")), 1);
    }
    assert!(
        got.iter().all(|m| m.rcpts.len() <= 2),
        "recipients_per_transaction_max"
    );
    eprintln!(
        "dest sink: peak {} connections, {} connections in all, {} messages; took {elapsed:?}",
        dest.peak(),
        dest.state
            .connections
            .load(std::sync::atomic::Ordering::Acquire),
        got.len()
    );
    assert!(
        dest.peak() <= 2,
        "connections_max at the sink: peak {}",
        dest.peak()
    );
    let conns = dest
        .state
        .connections
        .load(std::sync::atomic::Ordering::Acquire);
    assert!(
        conns < 34,
        "connections reused across messages ({conns} connections)"
    );

    let dsn: Vec<_> = other
        .received()
        .into_iter()
        .filter(|m| m.mail_from.is_empty())
        .collect();
    assert_eq!(dsn.len(), 1, "one DSN, sent with the null sender");
    assert_eq!(dsn[0].rcpts, ["bob@src.example"]);
    assert!(dsn[0].data.contains("report-type=delivery-status"));
    assert!(dsn[0]
        .data
        .contains("Final-Recipient: rfc822; perm1@dest.example"));
    assert!(dsn[0].data.contains("Status: 5.1.1"));
    assert!(
        !dsn[0].data.contains("ok4@dest.example"),
        "only the failed recipient"
    );
    assert!(other
        .received()
        .iter()
        .any(|m| m.rcpts == ["ok3@other.example"]));

    // Events: every outcome recorded as JSON lines.
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for entry in std::fs::read_dir(&events_dir).expect("events dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            *outcomes
                .entry(v["outcome"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    assert_eq!(outcomes.get("bounced"), Some(&1));
    assert_eq!(outcomes.get("deferred"), Some(&2), "{outcomes:?}");
    assert_eq!(
        outcomes.get("delivered"),
        Some(&(6 + BULK_MESSAGES + 1)),
        "{outcomes:?}"
    );
    let _ = std::fs::remove_dir_all(&events_dir);
}

/// Two shards (two executors on two threads) share one `GlobalLimits`: the destination's
/// connection limit holds across them, and every message is still delivered.
#[test]
fn connection_limit_holds_across_shards() {
    const PER_SHARD: usize = 20;
    let dest = Sink::start();
    let other = Sink::start();
    let resolver = resolver(dest.addr, other.addr);
    let limits = Arc::new(GlobalLimits::default());
    let mut cfg = config();
    cfg.default_limits.messages_per_connection_max = 2;
    let cfg = Arc::new(cfg);
    let threads: Vec<_> = (0..2u8)
        .map(|shard_no| {
            let (cfg, resolver, limits) = (cfg.clone(), resolver.clone(), limits.clone());
            std::thread::spawn(move || {
                let ex = LocalExecutorBuilder::new(Placement::Unbound)
                    .io_memory(512 << 10)
                    .make()
                    .expect("executor");
                ex.run(async move {
                    let spool = Rc::new(MemSpool::default());
                    let events = EventSink::disabled();
                    let shard = Rc::new(DeliveryShard::new(
                        shard_no,
                        cfg,
                        resolver,
                        limits,
                        spool.clone(),
                        events,
                    ));
                    let runner = {
                        let shard = shard.clone();
                        glommio::spawn_local(async move { shard.run().await })
                    };
                    for i in 0..PER_SHARD {
                        let to = format!("s{shard_no}n{i}@dest.example");
                        shard.enqueue(spool.store("alice@src.example", &[to.as_str()], BODY));
                    }
                    let started = Instant::now();
                    while started.elapsed() < TEST_DEADLINE
                        && spool.removed.borrow().len() < PER_SHARD
                    {
                        glommio::timer::sleep(Duration::from_millis(20)).await;
                    }
                    shard.shutdown();
                    runner.await;
                    let removed = spool.removed.borrow().len();
                    removed
                })
            })
        })
        .collect();
    for t in threads {
        assert_eq!(
            t.join().expect("shard thread"),
            PER_SHARD,
            "every message final"
        );
    }
    assert_eq!(dest.received().len(), 2 * PER_SHARD);
    assert!(
        dest.peak() <= 2,
        "connections_max across shards: peak {}",
        dest.peak()
    );
    assert_eq!(
        limits.connections("dest.example"),
        0,
        "every permit released"
    );
}

/// Admin commands (suspend, ls, resume, retry, bounce) and expiry with a DSN.
#[test]
fn admin_commands_and_expiry() {
    use petrel_delivery::{AdminCommand, AdminReply, DomainState};
    let dest = Sink::start();
    let other = Sink::start();
    let resolver = resolver(dest.addr, other.addr);
    let mut cfg = config();
    cfg.retry.first_retry_delay_ms = 5_000; // only an admin Retry brings it back in time
    cfg.retry.retry_delay_ms_max = 5_000;
    cfg.retry.age_max_ms = 300;
    // The sinks offer no STARTTLS: TLS Required towards this domain must defer, never send.
    let secure = DomainLimits {
        tls: TlsPolicy::Required,
        ..cfg.default_limits.clone()
    };
    cfg.domain_limits.insert("secure.example".into(), secure);
    let cfg = Arc::new(cfg);
    let other_sink = &other;
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor");
    let spool = ex.run(async move {
        let spool = Rc::new(MemSpool::default());
        let limits = Arc::new(GlobalLimits::default());
        let events = EventSink::disabled();
        let shard = Rc::new(DeliveryShard::new(
            0,
            cfg,
            resolver,
            limits,
            spool.clone(),
            events,
        ));
        let runner = {
            let shard = shard.clone();
            glommio::spawn_local(async move { shard.run().await })
        };
        let sleep = |ms| glommio::timer::sleep(Duration::from_millis(ms));
        shard.admin(AdminCommand::Suspend("Held.Example".into()));
        shard.admin(AdminCommand::Suspend("gone.example".into()));
        let held = spool.store("alice@src.example", &["ok@held.example"], BODY);
        let gone = spool.store("carol@src.example", &["x@gone.example"], BODY);
        let deferred = spool.store("dave@src.example", &["defer1@dest.example"], BODY);
        let secure = spool.store("erin@src.example", &["u@secure.example"], BODY);
        let (held_id, gone_id, deferred_id, secure_id) = (held.id, gone.id, deferred.id, secure.id);
        for m in [held, gone, deferred, secure] {
            shard.enqueue(m);
        }
        // First attempt of defer1: 450, retry in 5 s.
        let started = Instant::now();
        while started.elapsed() < TEST_DEADLINE
            && spool
                .messages
                .borrow()
                .get(&deferred_id)
                .is_none_or(|m| m.states.is_empty())
        {
            sleep(20).await;
        }
        let AdminReply::Domains(ls) = shard.admin(AdminCommand::Ls) else {
            panic!("ls answers with domains");
        };
        let held_status = ls
            .iter()
            .find(|d| d.domain == "held.example")
            .expect("listed");
        assert_eq!(
            (held_status.depth, held_status.state),
            (1, DomainState::Suspended)
        );
        assert!(
            other_sink.received().is_empty(),
            "nothing delivered while suspended"
        );

        let reply = shard.admin(AdminCommand::Bounce("gone.example".into()));
        assert_eq!(
            reply,
            AdminReply::Done {
                domain: "gone.example".into(),
                recipients: 1
            }
        );
        assert_eq!(
            shard.admin(AdminCommand::Resume("nowhere.example".into())),
            AdminReply::UnknownDomain("nowhere.example".into())
        );
        shard.admin(AdminCommand::Resume("held.example".into()));
        sleep(350).await; // past age_max_ms: the next failure expires the recipient
        let retry_at = Instant::now();
        shard.admin(AdminCommand::Retry("dest.example".into()));
        let secure_tried = || {
            spool
                .messages
                .borrow()
                .get(&secure_id)
                .is_some_and(|m| !m.states.is_empty())
        };
        while started.elapsed() < TEST_DEADLINE
            && (spool.removed.borrow().len() < 3 + 2 || !secure_tried())
        {
            sleep(20).await;
        }
        assert!(
            retry_at.elapsed() < Duration::from_secs(4),
            "Retry made it due now"
        );
        shard.shutdown();
        runner.await;
        drop(shard);
        let spool = Rc::try_unwrap(spool).ok().expect("spool unshared");
        let finals = spool.finals.borrow().clone();
        assert_eq!(finals[&(held_id, 0)].0, RcptState::Delivered);
        assert_eq!(finals[&(gone_id, 0)], (RcptState::Bounced, 1));
        assert_eq!(finals[&(deferred_id, 0)], (RcptState::Expired, 2));
        let tls_state = spool.messages.borrow()[&secure_id].states.get(&0).copied();
        assert_eq!(
            tls_state,
            Some((RcptState::Pending, 1)),
            "TLS Required failure deferred"
        );
        spool
    });
    assert_eq!(
        spool.dsns.borrow().len(),
        2,
        "one DSN for the bounce, one for the expiry"
    );
    let got = other.received();
    let dsn_to = |who: &str| {
        got.iter()
            .find(|m| m.mail_from.is_empty() && m.rcpts == [who])
            .map(|m| m.data.clone())
            .unwrap_or_else(|| panic!("DSN to {who}"))
    };
    let carol = dsn_to("carol@src.example");
    assert!(carol.contains("Final-Recipient: rfc822; x@gone.example"));
    assert!(carol.contains("Status: 5.0.0"));
    let dave = dsn_to("dave@src.example");
    assert!(dave.contains("Final-Recipient: rfc822; defer1@dest.example"));
    assert!(dave.contains("delivery time expired"));
    assert!(dave.contains("Status: 4.2.0"));
    assert!(dave.contains("Remote-MTA: dns; "));
    assert!(got.iter().any(|m| m.rcpts == ["ok@held.example"]));
    assert!(
        !got.iter().any(|m| m.rcpts == ["u@secure.example"]),
        "never sent in plain text"
    );
}

/// With every session slot of the shard taken by an idle session, a domain that gets work must
/// not wait for that session's idle timeout: the idle one closes and gives up its slot.
#[test]
fn an_idle_session_yields_its_slot_to_a_domain_without_one() {
    let dest = Sink::start();
    let other = Sink::start();
    let mut cfg = config();
    cfg.shard_connections_max = 1;
    // The idle timeout (120 s, set by the helper) is far beyond the deadline: only yielding
    // the slot can deliver the second message.
    let removed = run_idle_then(
        resolver(dest.addr, other.addr),
        cfg,
        "a@dest.example",
        vec!["b@elsewhere.example".into()],
        2,
        TEST_DEADLINE,
    );
    assert_eq!(
        removed, 2,
        "the second domain got the slot before the idle session's timeout"
    );
    assert_eq!(dest.received().len(), 1);
    assert_eq!(other.received().len(), 1);
}

/// A shard whose domain is at the engine-wide connection limit keeps delivering on the session
/// it has: it neither starts an extra session that cannot get a permit nor pushes its ready
/// work back by `permit_retry_delay_ms`.
#[test]
fn a_full_engine_wide_limit_does_not_delay_a_shards_ready_work() {
    // Enough that delivering them takes several driver ticks, during which the shard would
    // like a second session.
    const MESSAGES: usize = 400;
    let dest = Sink::start();
    let other = Sink::start();
    let resolver = resolver(dest.addr, other.addr);
    let limits = Arc::new(GlobalLimits::default());
    let mut cfg = config();
    cfg.default_limits.messages_per_connection_max = 1_000;
    cfg.default_limits.recipients_per_transaction_max = 1;
    // Far beyond the deadline: any push-back would make the test fail.
    cfg.permit_retry_delay_ms = 120_000;
    cfg.idle_timeout_ms = 60_000;
    let cfg = Arc::new(cfg);
    let spawn_shard = |shard_no: u8, messages: usize, start_after: Option<u32>| {
        let (cfg, resolver, limits) = (cfg.clone(), resolver.clone(), limits.clone());
        std::thread::spawn(move || {
            let ex = LocalExecutorBuilder::new(Placement::Unbound)
                .io_memory(512 << 10)
                .make()
                .expect("executor");
            ex.run(async move {
                let spool = Rc::new(MemSpool::default());
                let shard = Rc::new(DeliveryShard::new(
                    shard_no,
                    cfg,
                    resolver,
                    limits.clone(),
                    spool.clone(),
                    EventSink::disabled(),
                ));
                let runner = {
                    let shard = shard.clone();
                    glommio::spawn_local(async move { shard.run().await })
                };
                let started = Instant::now();
                if let Some(n) = start_after {
                    // Enqueue once the other shard holds `n` connections to the domain.
                    while started.elapsed() < TEST_DEADLINE
                        && limits.connections("dest.example") < n
                    {
                        glommio::timer::sleep(Duration::from_millis(5)).await;
                    }
                }
                let begun = Instant::now();
                for i in 0..messages {
                    let to = format!("s{shard_no}n{i}@dest.example");
                    shard.enqueue(spool.store("alice@src.example", &[to.as_str()], BODY));
                }
                while begun.elapsed() < TEST_DEADLINE && spool.removed.borrow().len() < messages {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
                let done = spool.removed.borrow().len();
                // Keep the idle session (and its permit) until the other shard is done.
                if start_after.is_none() {
                    while begun.elapsed() < TEST_DEADLINE && limits.connections("dest.example") < 2
                    {
                        glommio::timer::sleep(Duration::from_millis(5)).await;
                    }
                    glommio::timer::sleep(Duration::from_millis(500)).await;
                }
                shard.shutdown();
                runner.await;
                done
            })
        })
    };
    // Shard 0 sends one message and keeps its session (one of the two permits) idle.
    let first = spawn_shard(0, 1, None);
    // Shard 1 gets the other permit and must deliver all its messages over that one session.
    let second = spawn_shard(1, MESSAGES, Some(1));
    assert_eq!(
        second.join().expect("shard 1"),
        MESSAGES,
        "shard 1 delivered everything"
    );
    assert_eq!(first.join().expect("shard 0"), 1);
    assert!(dest.peak() <= 2);
}

/// Runs a shard (give it `shard_connections_max`): delivers a first message (its session then
/// idles), then
/// enqueues `then` and waits until `expect_removed` messages are done or `within` passes.
/// Returns how many messages were removed (delivered) in all.
fn run_idle_then(
    resolver: Resolver,
    mut cfg: DeliveryConfig,
    first: &'static str,
    then: Vec<String>,
    expect_removed: usize,
    within: Duration,
) -> usize {
    // Far beyond the test: a session ends only by giving its slot up or carrying others.
    cfg.idle_timeout_ms = 120_000;
    let cfg = Arc::new(cfg);
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor");
    ex.run(async move {
        let spool = Rc::new(MemSpool::default());
        let shard = Rc::new(DeliveryShard::new(
            0,
            cfg,
            resolver,
            Arc::new(GlobalLimits::default()),
            spool.clone(),
            EventSink::disabled(),
        ));
        let runner = {
            let shard = shard.clone();
            glommio::spawn_local(async move { shard.run().await })
        };
        let sleep = |ms| glommio::timer::sleep(Duration::from_millis(ms));
        let wait_removed = |n: usize, within: Duration| {
            let spool = spool.clone();
            async move {
                let started = Instant::now();
                while started.elapsed() < within && spool.removed.borrow().len() < n {
                    sleep(10).await;
                }
                spool.removed.borrow().len()
            }
        };
        shard.enqueue(spool.store("alice@src.example", &[first], BODY));
        assert_eq!(wait_removed(1, TEST_DEADLINE).await, 1, "first delivered");
        sleep(100).await; // the first session is idle now
        for rcpt in &then {
            shard.enqueue(spool.store("alice@src.example", &[rcpt.as_str()], BODY));
        }
        let removed = wait_removed(expect_removed, within).await;
        shard.shutdown();
        runner.await;
        removed
    })
}

/// Domains with the same next hop share one connection: the idle session carries each newly
/// ready domain instead of giving up its slot and a new connection being made for it.
#[test]
fn a_connection_carries_other_domains_with_the_same_next_hop() {
    let host = Sink::start();
    let then: Vec<String> = (1..10).map(|i| format!("r{i}@d{i}.example")).collect();
    let mut cfg = smart_host_config(NEXT_HOP_SESSIONS_MAX_DEFAULT);
    cfg.shard_connections_max = 1;
    let removed = deliver_via_smart_host(&host, cfg, then);
    assert_eq!(removed, 10, "all delivered");
    assert_eq!(host.received().len(), 10);
    assert_eq!(
        host.connections(),
        1,
        "one connection carried all ten domains"
    );
}

/// A connection made under opportunistic TLS never carries a domain that requires TLS: that
/// domain gets a session of its own, whose STARTTLS demand the sink cannot meet.
#[test]
fn a_connection_never_carries_a_domain_with_another_tls_policy() {
    let dest = Sink::start();
    let other = Sink::start();
    let mut cfg = config();
    cfg.shard_connections_max = 1;
    cfg.domain_limits.insert(
        "secure.example".into(),
        DomainLimits {
            tls: TlsPolicy::Required,
            ..cfg.default_limits.clone()
        },
    );
    let removed = run_idle_then(
        resolver(dest.addr, other.addr),
        cfg,
        "r0@d0.example",
        vec!["s@secure.example".into(), "r1@d1.example".into()],
        3,
        // Long enough for several retries of the require-TLS message (first retry 200 ms).
        Duration::from_millis(1_500),
    );
    assert_eq!(removed, 2, "the require-TLS message stays queued");
    let rcpts: Vec<String> = other.received().into_iter().flat_map(|r| r.rcpts).collect();
    assert!(
        !rcpts.iter().any(|r| r.contains("secure.example")),
        "{rcpts:?}"
    );
    assert!(rcpts.iter().any(|r| r.contains("d1.example")), "{rcpts:?}");
}

/// With free session slots, a new domain that goes to the same smart host is still offered to
/// the idle session first, which carries it: no second connection.
#[test]
fn an_idle_session_is_offered_a_new_domain_before_a_new_connection_is_made() {
    let host = Sink::start();
    let mut cfg = smart_host_config(NEXT_HOP_SESSIONS_MAX_DEFAULT);
    cfg.shard_connections_max = 8;
    let removed = deliver_via_smart_host(&host, cfg, vec!["r1@d1.example".into()]);
    assert_eq!(removed, 2);
    assert_eq!(host.connections(), 1, "the idle session carried d1.example");
}

/// The smart-host tests' config: room for many sessions, `next_hop_sessions_max` to the smart
/// host, connections that last.
fn smart_host_config(next_hop_sessions_max: usize) -> DeliveryConfig {
    let mut cfg = config();
    cfg.shard_connections_max = 64;
    cfg.next_hop_sessions_max = next_hop_sessions_max;
    cfg.default_limits.messages_per_connection_max = 100;
    cfg
}

/// Delivers `r0@d0.example`, then `then`, through the smart host `host` (the catch-all route);
/// returns how many messages were delivered.
fn deliver_via_smart_host(host: &Sink, cfg: DeliveryConfig, then: Vec<String>) -> usize {
    let dest = Sink::start();
    let expect = then.len() + 1;
    run_idle_then(
        resolver(dest.addr, host.addr),
        cfg,
        "r0@d0.example",
        then,
        expect,
        TEST_DEADLINE,
    )
}

/// Thirty domains behind one smart host become ready at once: the shard opens no more than
/// `next_hop_sessions_max` connections to it, and those carry every domain.
#[test]
fn sessions_to_one_smart_host_stay_within_the_next_hop_limit() {
    let host = Sink::start();
    let then: Vec<String> = (1..=30).map(|i| format!("r{i}@d{i}.example")).collect();
    let removed = deliver_via_smart_host(&host, smart_host_config(2), then);
    assert_eq!(removed, 31, "all delivered");
    assert_eq!(host.received().len(), 31);
    assert!(host.peak() <= 2, "peak {} connections", host.peak());
}

/// With PIPELINING and CHUNKING, a session to a smart host fills its write with the ready
/// domains of that host that have no session: several domains' transactions in one burst.
#[test]
fn a_write_to_a_smart_host_carries_transactions_of_several_domains() {
    let host = Sink::start_chunking();
    let then: Vec<String> = (1..=20).map(|i| format!("r{i}@d{i}.example")).collect();
    let removed = deliver_via_smart_host(&host, smart_host_config(1), then);
    assert_eq!(removed, 21, "all delivered");
    let received = host.received();
    assert_eq!(received.len(), 21);
    assert!(received.iter().all(|r| r.data.contains("Subject: test")));
    assert_eq!(host.peak(), 1, "one connection");
    let burst = host
        .state
        .mails_per_burst_max
        .load(std::sync::atomic::Ordering::Acquire);
    assert!(burst >= 2, "at most {burst} transaction per write");
}

/// A rate-limited domain with a backlog never holds every session to its smart host: the last
/// one stays for domains without a session, so their mail does not wait for the backlog.
#[test]
fn a_rate_limited_backlog_leaves_a_smart_host_session_for_other_domains() {
    let host = Sink::start();
    let mut cfg = smart_host_config(2);
    let mut slow = cfg.default_limits.clone();
    slow.messages_per_second_max = Some(4);
    cfg.domain_limits.insert("slow.example".into(), slow);
    let mut then: Vec<String> = (0..12).map(|i| format!("s{i}@slow.example")).collect();
    then.extend((1..=4).map(|i| format!("r{i}@d{i}.example")));
    let removed = deliver_via_smart_host(&host, cfg, then);
    assert_eq!(removed, 17, "all delivered");
    let order: Vec<bool> = host
        .received()
        .iter()
        .map(|r| r.rcpts.iter().any(|a| a.ends_with("@slow.example")))
        .collect();
    let last_other = order
        .iter()
        .rposition(|slow| !slow)
        .expect("others arrived");
    let slow_before = order[..last_other].iter().filter(|s| **s).count();
    assert!(
        slow_before < 8,
        "the other domains waited for {slow_before} of the 12 rate-limited messages: {order:?}"
    );
}

/// A destination the operator gave limits of its own keeps them: its sessions are not counted
/// under the smart host's cap (here 1, held by the idle session of another domain).
#[test]
fn a_domain_with_its_own_limits_is_not_held_to_the_next_hop_cap() {
    let host = Sink::start();
    let mut cfg = smart_host_config(1);
    let mut big = cfg.default_limits.clone();
    big.connections_max = 3;
    cfg.domain_limits.insert("big.example".into(), big);
    let then: Vec<String> = (0..60).map(|i| format!("b{i}@big.example")).collect();
    let removed = deliver_via_smart_host(&host, cfg, then);
    assert_eq!(removed, 61, "all delivered");
    assert!(host.peak() >= 2, "peak {} connections", host.peak());
    assert!(host.peak() <= 4, "peak {} connections", host.peak());
}

/// When the smart host has all its sessions, they take turns among the waiting domains after
/// each write: one domain's backlog does not keep another's mail waiting until it drains.
#[test]
fn sessions_of_a_full_next_hop_take_turns_among_its_domains() {
    let host = Sink::start();
    let mut then: Vec<String> = (0..40).map(|i| format!("a{i}@busy.example")).collect();
    then.push("b0@quiet.example".into());
    let removed = deliver_via_smart_host(&host, smart_host_config(1), then);
    assert_eq!(removed, 42, "all delivered");
    let order: Vec<bool> = host
        .received()
        .iter()
        .map(|r| r.rcpts.iter().any(|a| a.ends_with("@quiet.example")))
        .collect();
    let quiet_at = order
        .iter()
        .position(|q| *q)
        .expect("quiet.example arrived");
    assert!(
        quiet_at < 20,
        "quiet.example waited behind {quiet_at} messages of busy.example"
    );
}
