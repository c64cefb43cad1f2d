//! A restart on a full spool (issue 17): the engine takes mail before its spool's backlog is
//! requeued, and requeues all of it. A real `petrel engine`, a DNS server on loopback
//! (hickory-server) and the project's sink (`petrel load sink`, in-process) as the MX.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use petrel_loadtest::{start_sink, SinkConfig, SinkHandle};
use petrel_testkit::dns::{a, mx, DnsServer};

/// Messages spooled before the restart.
const OLD_MESSAGES: usize = 500;
/// The longest the test waits for mail to arrive.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(90);

fn sink() -> SinkHandle {
    start_sink(SinkConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        threads: 1,
        keep_messages_max: 10_000,
        ..SinkConfig::default()
    })
    .expect("start the sink")
}

fn subject_of(data: &[u8]) -> Option<String> {
    String::from_utf8_lossy(data)
        .lines()
        .find_map(|l| l.strip_prefix("Subject: ").map(|s| s.trim().to_string()))
}

/// `text` without terminal colour sequences (`ESC [ ... m`), as the log may carry them.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The queue id at the end of a 250 after DATA.
fn queued_id(text: &str) -> String {
    let id = text.trim_end().rsplit(' ').next().unwrap_or_default();
    assert!(
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "250 without a queue id: {text}"
    );
    id.to_string()
}

/// Sends `n` messages over one connection; returns their queue ids.
fn inject(engine: &Engine, prefix: &str, n: usize) -> Vec<String> {
    let mut c = Smtp::connect(engine.smtp);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO injector.test").0, 250);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let rcpt = format!("user{i}@a.test");
        assert_eq!(c.cmd("MAIL FROM:<sender@b.test>").0, 250);
        assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).0, 250);
        assert_eq!(c.cmd("DATA").0, 354);
        c.send(message("sender@b.test", &rcpt, &format!("{prefix}-{i}")).as_bytes());
        c.send(b".\r\n");
        let (code, text) = c.reply();
        assert_eq!(code, 250, "{text}");
        ids.push(queued_id(&text));
    }
    assert_eq!(c.cmd("QUIT").0, 221);
    ids
}

#[test]
fn after_kill9_new_mail_is_taken_while_the_backlog_is_requeued_and_all_of_it_is_delivered() {
    let dns = DnsServer::start(vec![
        mx("a.test.", 60, 10, "mx.a.test."),
        a("mx.a.test.", 60, "127.0.0.1"),
    ]);
    let sink = sink();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[delivery]\nnameservers = [\"{}\"]\nsmtp_port = {}\n",
        dns.addr,
        sink.addr().port()
    );
    let args = ["--shards", "2", "--trust-network", "127.0.0.0/8"];
    // First run without delivery: everything stays in the spool, then kill -9.
    let first = Engine::start_with(
        dir.path(),
        &[&args[..], &["--no-delivery"]].concat(),
        Some(&config),
    );
    let old_ids: HashSet<String> = inject(&first, "old", OLD_MESSAGES).into_iter().collect();
    assert_eq!(old_ids.len(), OLD_MESSAGES, "a queue id given twice");
    first.kill9();
    assert_eq!(spool_count(dir.path()), OLD_MESSAGES as u64);

    // Second run, with delivery: a new message is taken at once, under a new id.
    let (engine, log) = Engine::start_logged(dir.path(), &args, Some(&config));
    let new_ids = inject(&engine, "new", 3);
    for id in &new_ids {
        assert!(!old_ids.contains(id), "queue id {id} handed out again");
    }
    // Every message arrives, each once.
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    let counts = loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for m in sink.received() {
            if let Some(s) = subject_of(&m.data) {
                *counts.entry(s).or_default() += 1;
            }
        }
        if counts.len() >= OLD_MESSAGES + new_ids.len() || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut expected: HashSet<String> = (0..OLD_MESSAGES).map(|i| format!("old-{i}")).collect();
    expected.extend((0..new_ids.len()).map(|i| format!("new-{i}")));
    let got: HashSet<String> = counts.keys().cloned().collect();
    assert_eq!(
        expected.difference(&got).count(),
        0,
        "not delivered: {:?}",
        expected.difference(&got).take(10).collect::<Vec<_>>()
    );
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    // The shards listened before they had read their backlog, and said when they had (the
    // line follows the last hand-over by a sync: waited for, bounded).
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    let text = loop {
        let text = plain(&std::fs::read_to_string(&log).expect("engine log"));
        if text.matches("spool recovered").count() >= 2 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        text.matches("spool open; requeueing what it holds").count(),
        2,
        "{text}"
    );
    let recovered: u64 = text
        .lines()
        .filter(|l| l.contains("spool recovered"))
        .filter_map(|l| {
            let rest = l.split("recovered=").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(recovered, OLD_MESSAGES as u64, "{text}");
    assert!(engine.stop());
}
