//! Test harness: a real control plane on loopback ports, a tiny HTTP/1.1 client over a real
//! socket, and a TXT-only DNS server on loopback UDP.
#![allow(dead_code)]

pub mod scenarios;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{RData, Record, RecordType};
use petrel_control::{ControlConfig, HashCost, ServeInfo, ServeOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const PUSH_TOKEN: &str = "test-push-token";
/// Response bytes read at most by the test client.
const RESPONSE_MAX_BYTES: usize = 8 << 20;

/// TXT records served by the test DNS server: lower-case name without trailing dot -> values.
pub type Zone = Arc<Mutex<HashMap<String, Vec<String>>>>;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub info: ServeInfo,
    pub owner_key: String,
    pub zone: Zone,
    task: tokio::task::JoinHandle<()>,
    dns_task: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
        self.dns_task.abort();
    }
}

/// Cheap argon2 so tests spend their time on behaviour, not hashing (same code path).
pub fn test_options() -> ServeOptions {
    ServeOptions {
        hash_cost: HashCost {
            memory_kib: 256,
            iterations: 1,
        },
        spf_include: "spf.petrel.test".into(),
        version_poll_ms: 200,
        ..ServeOptions::default()
    }
}

pub async fn start() -> Harness {
    start_with(None).await
}

/// Starts a control plane; `database_url` None: SQLite in a temp dir.
pub async fn start_with(database_url: Option<String>) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let (zone, dns_addr, dns_task) = start_dns().await;
    let cfg = ControlConfig {
        data_dir: dir.path().join("control"),
        database_url,
        api_listen: "127.0.0.1:0".parse().expect("addr"),
        push_listen: "127.0.0.1:0".parse().expect("addr"),
        push_token: PUSH_TOKEN.into(),
        dns_nameservers: vec![dns_addr],
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        if let Err(e) = petrel_control::serve_with(cfg, test_options(), Some(tx)).await {
            eprintln!("control plane stopped: {e}");
        }
    });
    let info = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("control plane ready in time")
        .expect("control plane started");
    let owner_key = info
        .bootstrap_key
        .clone()
        .expect("first start prints a key");
    Harness {
        dir,
        info,
        owner_key,
        zone,
        task,
        dns_task,
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Harness {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let body = body.map(|b| b.to_string());
        http(self.info.api_addr, method, path, key, body.as_deref()).await
    }
    pub async fn owner(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        self.call(method, path, Some(&self.owner_key.clone()), body)
            .await
    }
    pub fn set_txt(&self, name: &str, values: &[&str]) {
        self.zone.lock().expect("zone").insert(
            name.to_ascii_lowercase(),
            values.iter().map(|s| s.to_string()).collect(),
        );
    }
}

/// A raw HTTP/1.1 exchange (`Connection: close`), body sent as JSON when given.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Resp {
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect api");
    http_over(s, addr, method, path, key, body).await
}

/// [`http`] over a stream already open (plain TCP or TLS).
pub async fn http_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(k) = key {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut buf = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        (&mut s)
            .take(RESPONSE_MAX_BYTES as u64)
            .read_to_end(&mut buf),
    )
    .await
    .expect("response in time")
    .expect("read response");
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(&buf).expect("parse response") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("partial response"),
    };
    let hs: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let chunked = hs
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let raw = &buf[head_len..];
    let body_bytes = if chunked { dechunk(raw) } else { raw.to_vec() };
    let body = if body_bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body_bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body_bytes).into_owned()))
    };
    Resp {
        status: resp.code.expect("status"),
        headers: hs,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(pos) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..pos]).unwrap_or("0").trim(), 16)
                .unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[pos + 2..pos + 2 + size]);
        raw = &raw[pos + 2 + size + 2..];
    }
}

/// A UDP DNS server answering TXT queries from the zone (NXDOMAIN otherwise).
pub async fn start_dns() -> (Zone, SocketAddr, tokio::task::JoinHandle<()>) {
    let zone: Zone = Arc::default();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind dns");
    let addr = sock.local_addr().expect("dns addr");
    let z = zone.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            resp.metadata.recursion_desired = q.metadata.recursion_desired;
            resp.metadata.recursion_available = true;
            resp.metadata.authoritative = true;
            resp.queries = q.queries.clone();
            let mut found = false;
            if let Some(query) = q.queries.first() {
                let name = query
                    .name()
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                if let Some(values) = z.lock().expect("zone").get(&name) {
                    found = true;
                    if query.query_type() == RecordType::TXT {
                        for v in values {
                            let strings: Vec<String> = v
                                .as_bytes()
                                .chunks(255)
                                .map(|c| String::from_utf8_lossy(c).into_owned())
                                .collect();
                            resp.answers.push(Record::from_rdata(
                                query.name().clone(),
                                60,
                                RData::TXT(TXT::new(strings)),
                            ));
                        }
                    }
                }
            }
            if !found {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
            if let Ok(bytes) = resp.to_vec() {
                let _ = sock.send_to(&bytes, peer).await;
            }
        }
    });
    (zone, addr, task)
}
