//! A small SMTP sink on loopback (std::net, one thread per connection) whose answers depend on
//! the recipient's local part:
//! - `temp*`: 450 4.2.0 on the first RCPT for that address, 250 afterwards;
//! - `defer*`: always 450 4.2.0;
//! - `perm*`: 550 5.1.1;
//! - `drop*`: the first DATA carrying it is cut off mid-message (the sink closes the socket);
//! - anything else: 250.
//!
//! It records every accepted message and the peak number of simultaneous connections.
//! [`Sink::start_chunking`] also offers PIPELINING and CHUNKING (BDAT) and records the most
//! transactions (MAIL commands) that arrived in one burst, read without waiting for the client.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One message the sink accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub data: String,
}

#[derive(Default)]
pub struct SinkState {
    pub received: Mutex<Vec<Received>>,
    /// RCPT commands seen per address.
    pub rcpt_seen: Mutex<HashMap<String, u32>>,
    /// DATA cut off already, per address.
    pub dropped: Mutex<HashMap<String, bool>>,
    pub open: AtomicUsize,
    pub peak: AtomicUsize,
    pub connections: AtomicUsize,
    pub stop: AtomicBool,
    /// Offer PIPELINING and CHUNKING.
    pub chunking: AtomicBool,
    /// Most MAIL commands read in one burst (the client wrote them before reading a reply).
    pub mails_per_burst_max: AtomicUsize,
}

pub struct Sink {
    pub addr: SocketAddr,
    pub state: Arc<SinkState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Longest the sink waits for a client line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at most (bounds the test).
const CONNECTIONS_MAX: usize = 500;

impl Sink {
    pub fn start() -> Sink {
        Sink::start_with(false)
    }

    /// A sink that offers PIPELINING and CHUNKING.
    pub fn start_chunking() -> Sink {
        Sink::start_with(true)
    }

    fn start_with(chunking: bool) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(SinkState::default());
        state.chunking.store(chunking, Ordering::Release);
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            while !st.stop.load(Ordering::Acquire)
                && st.connections.load(Ordering::Acquire) < CONNECTIONS_MAX
            {
                match listener.accept() {
                    Ok((stream, _)) => {
                        st.connections.fetch_add(1, Ordering::AcqRel);
                        let st = st.clone();
                        std::thread::spawn(move || serve(stream, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Sink {
            addr,
            state,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("lock").clone()
    }

    pub fn peak(&self) -> usize {
        self.state.peak.load(Ordering::Acquire)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Acquire)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, st: &SinkState) {
    let now = st.open.fetch_add(1, Ordering::AcqRel) + 1;
    st.peak.fetch_max(now, Ordering::AcqRel);
    let _ = session(stream, st);
    st.open.fetch_sub(1, Ordering::AcqRel);
}

fn session(stream: TcpStream, st: &SinkState) -> std::io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::with_capacity(1 << 16, stream);
    let mut burst = 0usize;
    out.write_all(b"220 sink.test ESMTP\r\n")?;
    let mut from = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut data_chunks: Vec<u8> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.buffer().is_empty() {
            burst = 0; // the next read waits for the client: a new burst
        }
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") && st.chunking.load(Ordering::Acquire) {
            out.write_all(b"250-sink.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n")?;
        } else if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            out.write_all(b"250 sink.test\r\n")?;
        } else if let Some(args) = upper.strip_prefix("BDAT ") {
            let mut words = args.split_whitespace();
            let size: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let last = words.next() == Some("LAST");
            let mut chunk = vec![0u8; size];
            std::io::Read::read_exact(&mut lines, &mut chunk)?;
            data_chunks.extend_from_slice(&chunk);
            if last {
                st.received.lock().expect("lock").push(Received {
                    mail_from: from.clone(),
                    rcpts: std::mem::take(&mut rcpts),
                    data: String::from_utf8_lossy(&std::mem::take(&mut data_chunks)).into(),
                });
                out.write_all(b"250 2.0.0 ok: queued\r\n")?;
            } else {
                out.write_all(b"250 2.0.0 chunk ok\r\n")?;
            }
        } else if upper.starts_with("MAIL FROM:") {
            burst += 1;
            st.mails_per_burst_max.fetch_max(burst, Ordering::AcqRel);
            from = angle(&cmd[10..]);
            rcpts.clear();
            out.write_all(b"250 2.1.0 ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            let to = angle(&cmd[8..]);
            let seen = {
                let mut m = st.rcpt_seen.lock().expect("lock");
                let n = m.entry(to.clone()).or_insert(0);
                *n += 1;
                *n
            };
            if to.starts_with("perm") {
                out.write_all(b"550 5.1.1 no such user\r\n")?;
            } else if to.starts_with("defer") || (to.starts_with("temp") && seen == 1) {
                out.write_all(b"450 4.2.0 greylisted, try later\r\n")?;
            } else {
                rcpts.push(to);
                out.write_all(b"250 2.1.5 ok\r\n")?;
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                out.write_all(b"503 5.5.1 no valid recipients\r\n")?;
                continue;
            }
            out.write_all(b"354 go ahead\r\n")?;
            let cut = rcpts
                .iter()
                .find(|r| r.starts_with("drop"))
                .is_some_and(|r| {
                    let mut d = st.dropped.lock().expect("lock");
                    !d.insert(r.clone(), true).unwrap_or(false)
                });
            if cut {
                line.clear();
                lines.read_line(&mut line)?; // one line of the message, then hang up
                return Ok(());
            }
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                data.push_str(&line);
            }
            st.received.lock().expect("lock").push(Received {
                mail_from: from.clone(),
                rcpts: std::mem::take(&mut rcpts),
                data,
            });
            out.write_all(b"250 2.0.0 ok: queued\r\n")?;
        } else if upper == "RSET" || upper == "NOOP" {
            rcpts.clear();
            data_chunks.clear();
            out.write_all(b"250 2.0.0 ok\r\n")?;
        } else if upper == "QUIT" {
            out.write_all(b"221 2.0.0 bye\r\n")?;
            return Ok(());
        } else {
            out.write_all(b"502 5.5.2 unknown command\r\n")?;
        }
    }
}

/// The address inside `<...>` (parameters after it ignored).
fn angle(s: &str) -> String {
    let s = s.trim();
    match (s.find('<'), s.find('>')) {
        (Some(a), Some(b)) if a < b => s[a + 1..b].to_string(),
        _ => s.split_whitespace().next().unwrap_or("").to_string(),
    }
}
