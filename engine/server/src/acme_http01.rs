//! The HTTP-01 responder (RFC 8555 §8.3): the CA fetches
//! `http://<name>/.well-known/acme-challenge/<token>` and must get the key authorization.
//!
//! Tiny on purpose: one request per connection, the head read up to
//! [`HTTP01_REQUEST_BYTES_MAX`] within [`HTTP01_CONNECTION_TIMEOUT_MS`] for the whole exchange,
//! at most [`HTTP01_CONNECTIONS_MAX`] connections at once (more are closed unanswered). Only
//! `GET` of a token being validated answers 200; anything else is a 4xx with a JSON error. The
//! parsing and the answer ([`respond`]) are free of I/O.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest request head read; a validation request is a few hundred bytes.
pub const HTTP01_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// The whole exchange (read the head, write the answer) of one connection, at most.
pub const HTTP01_CONNECTION_TIMEOUT_MS: u64 = 10_000;
/// Connections served at once, at most (the CA validates from a few vantage points).
pub const HTTP01_CONNECTIONS_MAX: usize = 64;
/// Tokens published at once, at most: one per name of an order.
pub const HTTP01_TOKENS_MAX: usize = crate::config::ACME_DOMAINS_MAX;
/// The longest token accepted (RFC 8555 tokens are 43 base64url characters; CAs may use more).
pub const HTTP01_TOKEN_BYTES_MAX: usize = 128;
/// Headers parsed, at most.
const HEADERS_MAX: usize = 32;

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The key authorizations being validated, by token.
#[derive(Debug, Default)]
pub struct Challenges {
    tokens: Mutex<HashMap<String, String>>,
}

impl Challenges {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // A panic while holding it leaves a map that is still whole.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `key_authorization` for `token`; false when [`HTTP01_TOKENS_MAX`] are out.
    pub fn publish(&self, token: &str, key_authorization: &str) -> bool {
        let mut t = self.lock();
        if t.len() >= HTTP01_TOKENS_MAX && !t.contains_key(token) {
            return false;
        }
        t.insert(token.to_owned(), key_authorization.to_owned());
        true
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    fn get(&self, token: &str) -> Option<String> {
        self.lock().get(token).cloned()
    }
}

/// An answer: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    fn error(status: u16, code: &str) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: format!("{{\"error\":\"{code}\"}}"),
        }
    }

    /// The response bytes, `Connection: close`.
    pub fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.status,
            self.content_type,
            self.body.len(),
            self.body
        )
        .into_bytes()
    }
}

/// What a request head asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    Done(Answer),
}

/// Answers `head` (the bytes read so far) from `lookup` (token to key authorization).
pub fn respond(head: &[u8], lookup: impl Fn(&str) -> Option<String>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Partial) if head.len() >= HTTP01_REQUEST_BYTES_MAX => {
            Parsed::Done(Answer::error(431, "request_too_large"))
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            Parsed::Done(Answer::error(431, "too_many_headers"))
        }
        Err(_) => Parsed::Done(Answer::error(400, "malformed_request")),
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or_default();
            let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) else {
                return Parsed::Done(Answer::error(404, "not_found"));
            };
            if req.method != Some("GET") {
                return Parsed::Done(Answer::error(405, "method_not_allowed"));
            }
            let well_formed = !token.is_empty()
                && token.len() <= HTTP01_TOKEN_BYTES_MAX
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            match lookup(token).filter(|_| well_formed) {
                Some(key_authorization) => Parsed::Done(Answer {
                    status: 200,
                    content_type: "application/octet-stream",
                    body: key_authorization,
                }),
                None => Parsed::Done(Answer::error(404, "unknown_token")),
            }
        }
    }
}

/// Serves `listener` until `shutdown` closes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    challenges: Arc<Challenges>,
    shutdown: async_channel::Receiver<()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(HTTP01_CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.recv() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "ACME HTTP-01 responder: accept failed");
                // Out of descriptors: give the others a moment to close.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            continue; // Over the bound: dropped, closed unanswered.
        };
        let challenges = Arc::clone(&challenges);
        tokio::spawn(async move {
            let limit = Duration::from_millis(HTTP01_CONNECTION_TIMEOUT_MS);
            let served = tokio::time::timeout(limit, serve_one(stream, &challenges)).await;
            if let Ok(Err(e)) = served {
                tracing::debug!(%peer, error = %e, "ACME HTTP-01 responder: connection failed");
            }
            drop(permit);
        });
    }
}

async fn serve_one(
    mut stream: tokio::net::TcpStream,
    challenges: &Challenges,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let answer = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let room = HTTP01_REQUEST_BYTES_MAX - head.len();
        head.extend_from_slice(&buf[..n.min(room)]);
        if let Parsed::Done(a) = respond(&head, |t| challenges.get(t)) {
            break a;
        }
    };
    stream.write_all(&answer.encode()).await?;
    stream.shutdown().await
}

/// Binds the responder's address now, so a taken port stops the start.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(t: &str) -> Option<String> {
        (t == "tok-EN_1").then(|| "tok-EN_1.thumb".to_string())
    }

    fn answer(head: &str) -> Answer {
        match respond(head.as_bytes(), lookup) {
            Parsed::Done(a) => a,
            Parsed::Partial => panic!("partial: {head:?}"),
        }
    }

    #[test]
    fn known_token_gets_its_key_authorization() {
        let a =
            answer("GET /.well-known/acme-challenge/tok-EN_1 HTTP/1.1\r\nHost: mx.test\r\n\r\n");
        assert_eq!((a.status, a.body.as_str()), (200, "tok-EN_1.thumb"));
        let wire = String::from_utf8(a.encode()).unwrap();
        assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"), "{wire}");
        assert!(wire.contains("Content-Length: 14\r\n"), "{wire}");
    }

    #[test]
    fn everything_else_is_a_precise_4xx() {
        let cases = [
            (
                "GET /.well-known/acme-challenge/other HTTP/1.1\r\n\r\n",
                404,
            ),
            ("GET /.well-known/acme-challenge/ HTTP/1.1\r\n\r\n", 404),
            ("GET /.well-known/acme-challenge/a/b HTTP/1.1\r\n\r\n", 404),
            ("GET / HTTP/1.1\r\n\r\n", 404),
            (
                "POST /.well-known/acme-challenge/tok-EN_1 HTTP/1.1\r\n\r\n",
                405,
            ),
            ("GARBAGE\x01 / HTTP/1.1\r\n\r\n", 400),
        ];
        for (head, status) in cases {
            let a = answer(head);
            assert_eq!(a.status, status, "{head:?}");
            assert_eq!(a.content_type, "application/json");
            assert!(a.body.starts_with("{\"error\":"), "{}", a.body);
        }
    }

    #[test]
    fn a_head_is_bounded() {
        assert_eq!(
            respond(b"GET / HTTP/1.1\r\nHost: x\r\n", lookup),
            Parsed::Partial
        );
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(HTTP01_REQUEST_BYTES_MAX, b'a');
        assert!(matches!(respond(&big, lookup), Parsed::Done(a) if a.status == 431));
        let many: String = (0..HEADERS_MAX + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(respond(head.as_bytes(), lookup), Parsed::Done(a) if a.status == 431));
    }

    #[test]
    fn tokens_are_bounded() {
        let c = Challenges::default();
        for i in 0..HTTP01_TOKENS_MAX {
            assert!(c.publish(&format!("t{i}"), "k"));
        }
        assert!(!c.publish("one-more", "k"));
        assert!(
            c.publish("t0", "again"),
            "replacing a published token is not a new one"
        );
        c.clear();
        assert!(c.publish("one-more", "k"));
    }
}
