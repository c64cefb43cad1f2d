//! Crash test: inject continuously, `kill -9` the engine at random instants several times,
//! restart on the same data directory, and show that every message that received a 250 is in
//! the spool exactly once.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Kill rounds, each bounded in time.
const ROUNDS: usize = 4;
const INJECTORS: usize = 8;
const ROUND_MESSAGES_MAX: usize = 5_000;

fn queued_id(text: &str) -> Option<String> {
    text.trim_end()
        .rsplit(' ')
        .next()
        .filter(|id| id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// One injector: messages over one connection until the engine dies or `stop` is set. Every id
/// that got a 250 is recorded before anything else happens.
fn inject(addr: SocketAddr, acked: Arc<Mutex<Vec<String>>>, stop: Arc<AtomicBool>, tag: usize) {
    let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return;
    };
    drop(stream);
    let mut c = Smtp::connect(addr);
    if c.reply().0 != 220 || c.cmd("EHLO crash.test").0 != 250 {
        return;
    }
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) && n < ROUND_MESSAGES_MAX {
        n += 1;
        if c.cmd("MAIL FROM:<a@client.test>").0 != 250 {
            return;
        }
        if c.cmd("RCPT TO:<b@remote.test>").0 != 250 {
            return;
        }
        if c.cmd("DATA").0 != 354 {
            return;
        }
        c.send(message("a@client.test", "b@remote.test", &format!("c{tag}-{n}")).as_bytes());
        c.send(b".\r\n");
        let (code, text) = c.reply();
        if code != 250 {
            return;
        }
        if let Some(id) = queued_id(&text) {
            acked.lock().unwrap().push(id);
        } else {
            panic!("250 without a queue id: {text}");
        }
    }
}

#[test]
fn kill9_never_loses_an_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let args = [
        "--no-delivery",
        "--shards",
        "2",
        "--trust-network",
        "127.0.0.0/8",
    ];
    let mut rng_state: u64 = 0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    for round in 0..ROUNDS {
        let engine = Engine::start(dir.path(), &args);
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..INJECTORS)
            .map(|t| {
                let (a, s) = (Arc::clone(&acked), Arc::clone(&stop));
                let addr = engine.smtp;
                std::thread::spawn(move || inject(addr, a, s, round * 100 + t))
            })
            .collect();
        // Kill at a random instant between 300 ms and 1.5 s into the round.
        std::thread::sleep(Duration::from_millis(300 + next() % 1200));
        engine.kill9();
        stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        for t in threads {
            assert!(Instant::now() < deadline, "injector did not stop");
            let _ = t.join();
        }
    }
    // A final clean start proves recovery works on the result of all those kills.
    let engine = Engine::start(dir.path(), &args);
    assert!(engine.stop());
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "too few messages acknowledged to mean anything: {}",
        acked.len()
    );
    let spooled = spool_ids(dir.path());
    let unique: HashSet<&String> = spooled.iter().collect();
    assert_eq!(
        unique.len(),
        spooled.len(),
        "a message is in the spool twice"
    );
    let missing: Vec<&String> = acked.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let acked_unique: HashSet<&String> = acked.iter().collect();
    assert_eq!(
        acked_unique.len(),
        acked.len(),
        "two 250s carried the same id"
    );
    println!(
        "acknowledged {} messages over {ROUNDS} kills; spool holds {}",
        acked.len(),
        spooled.len()
    );
}
