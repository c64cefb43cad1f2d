//! One small HTTP/1.1 client for tests: one request per connection (`Connection: close`).
//!
//! The request encoding and the response parsing (Content-Length, chunked, or read to EOF) are
//! written once, free of I/O; two transports carry them: [`Request::send`] over a blocking std
//! socket (plain test threads) and [`Request::send_over`] over any tokio stream, plain TCP or
//! TLS ([`connect_tls`]), for tests that run on a tokio runtime next to the server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the whole response may take to arrive.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Response bytes read at most.
pub const RESPONSE_MAX_BYTES: usize = 8 << 20;
/// Response header lines parsed at most.
const HEADERS_MAX: usize = 32;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    #[error("HTTP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("no complete response within {RESPONSE_TIMEOUT:?}")]
    Timeout,
    #[error("the server closed the connection without a response")]
    Empty,
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// One request. Build with [`Request::new`] and the setters, then send.
#[derive(Clone, Debug)]
pub struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// `Authorization: Bearer <key>`.
    pub fn bearer(self, key: &str) -> Request {
        self.header("Authorization", &format!("Bearer {key}"))
    }

    /// A raw body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// A JSON text as body, with `Content-Type: application/json`.
    pub fn json_text(self, text: &str) -> Request {
        self.header("Content-Type", "application/json").body(text)
    }

    /// A JSON value as body, with `Content-Type: application/json`.
    pub fn json(self, value: &Value) -> Request {
        self.json_text(&value.to_string())
    }

    /// The bytes on the wire.
    pub fn encode(&self, host: &str) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\nHost: {host}\r\n", self.method, self.path);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        head.push_str("Connection: close\r\n\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    /// Sends over a new blocking TCP connection to `addr`.
    pub fn send(&self, addr: SocketAddr) -> Result<Response, HttpError> {
        let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        s.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        s.write_all(&self.encode(&addr.to_string()))?;
        let mut raw = Vec::new();
        s.take(RESPONSE_MAX_BYTES as u64).read_to_end(&mut raw)?;
        Response::parse(&raw)
    }

    /// Sends over a stream already open (plain TCP or TLS); `host` fills the Host header.
    pub async fn send_over<S>(&self, mut stream: S, host: &str) -> Result<Response, HttpError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        stream.write_all(&self.encode(host)).await?;
        let mut raw = Vec::new();
        let mut limited = (&mut stream).take(RESPONSE_MAX_BYTES as u64);
        tokio::time::timeout(RESPONSE_TIMEOUT, limited.read_to_end(&mut raw))
            .await
            .map_err(|_| HttpError::Timeout)??;
        Response::parse(&raw)
    }
}

/// Opens a TLS connection to `addr`, verifying the server as `server_name` against exactly the
/// root `root_der`.
pub async fn connect_tls(
    addr: SocketAddr,
    server_name: &str,
    root_der: rustls_pki_types::CertificateDer<'static>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, HttpError> {
    let config: Arc<rustls::ClientConfig> = crate::tls::client_config_trusting(root_der);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| HttpError::Timeout)??;
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| HttpError::Malformed(format!("server name {server_name:?}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(tls)
}

/// One response, its body already de-chunked.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Parses a whole response as read to EOF.
    pub fn parse(raw: &[u8]) -> Result<Response, HttpError> {
        if raw.is_empty() {
            return Err(HttpError::Empty);
        }
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(raw) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return Err(HttpError::Malformed("incomplete head".into()))
            }
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        };
        let status = resp
            .code
            .ok_or_else(|| HttpError::Malformed("no status".into()))?;
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value).into_owned();
                (h.name.to_string(), value)
            })
            .collect();
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let rest = &raw[head_len..];
        response.body = if response.is_chunked() {
            dechunk(rest)?
        } else if let Some(len) = response.content_length() {
            rest.get(..len)
                .ok_or_else(|| HttpError::Malformed(format!("body shorter than {len} bytes")))?
                .to_vec()
        } else {
            rest.to_vec()
        };
        Ok(response)
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON: `Null` when empty, a JSON string of the text when it is not JSON.
    pub fn json(&self) -> Value {
        if self.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.body).unwrap_or_else(|_| Value::String(self.text()))
    }

    fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length")?.trim().parse().ok()
    }
}

/// A response whose body is JSON, as the Petrel admin APIs answer.
#[derive(Clone, Debug)]
pub struct JsonResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl From<Response> for JsonResponse {
    fn from(r: Response) -> JsonResponse {
        let body = r.json();
        JsonResponse {
            status: r.status,
            headers: r.headers,
            body,
        }
    }
}

impl JsonResponse {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The API error code (`error.code`), "" when the body has none.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// Decodes a chunked body (RFC 9112 §7.1): hex size lines (extensions ignored), data, CRLF,
/// until the zero-size chunk; trailers are ignored.
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, HttpError> {
    let malformed = |what: &str| HttpError::Malformed(format!("chunked body: {what}"));
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| malformed("no size line"))?;
        let line = std::str::from_utf8(&raw[..line_end]).map_err(|_| malformed("size line"))?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| malformed("chunk size"))?;
        if size == 0 {
            return Ok(out);
        }
        let data_start = line_end + 2;
        let data = raw
            .get(data_start..data_start + size)
            .ok_or_else(|| malformed("chunk shorter than its size"))?;
        out.extend_from_slice(data);
        raw = raw
            .get(data_start + size + 2..)
            .ok_or_else(|| malformed("no CRLF after a chunk"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_content_length_bodies_parse() {
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        let r = Response::parse(chunked).expect("chunked");
        assert_eq!(r.json()["a"], 1);
        let sized = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nnoEXTRA";
        let r = Response::parse(sized).expect("sized");
        assert_eq!((r.status, r.text().as_str()), (404, "no"));
        assert!(matches!(Response::parse(b""), Err(HttpError::Empty)));
        let cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab";
        assert!(matches!(Response::parse(cut), Err(HttpError::Malformed(_))));
    }

    #[test]
    fn request_encoding_names_host_length_and_close() {
        let req = Request::new("POST", "/v1/x")
            .bearer("k")
            .json(&serde_json::json!({"a": 1}));
        let text = String::from_utf8(req.encode("h:1")).expect("utf8");
        assert_eq!(
            text,
            "POST /v1/x HTTP/1.1\r\nHost: h:1\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{\"a\":1}"
        );
    }
}
