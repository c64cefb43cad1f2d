//! The connection's byte layer: a plain or TLS glommio socket, a bounded read buffer that yields
//! parsed replies, a reused write buffer, and a timeout on every step.

use std::future::Future;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::reply::{parse_reply, Reply};
use super::{ClientError, Stage};

/// Reply bytes buffered but not yet parsed (several pipelined replies fit easily).
pub const READ_BUFFER_MAX_BYTES: usize = 64 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// The socket, before or after STARTTLS.
pub(super) enum Transport {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
    /// Only between taking the plain stream for the TLS handshake and getting the TLS one back;
    /// a failed handshake leaves it here, and every later operation fails with `Dropped`.
    Gone,
}

/// Socket plus buffers.
pub(super) struct Io {
    pub(super) transport: Transport,
    /// Received bytes not yet parsed. Invariant: `rbuf.len() <= READ_BUFFER_MAX_BYTES`.
    rbuf: Vec<u8>,
    /// Reused for every command batch and data block.
    pub(super) wbuf: Vec<u8>,
}

/// Runs `fut`, or fails with `Timeout { stage }` after `ms` milliseconds.
pub(super) async fn with_timeout<T>(
    ms: u64,
    stage: Stage,
    fut: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let timer = async move {
        glommio::timer::sleep(Duration::from_millis(ms.max(1))).await;
        Err(ClientError::Timeout { stage })
    };
    futures_lite::future::or(fut, timer).await
}

/// I/O errors that mean the peer went away.
fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected
    )
}

fn io_error(e: std::io::Error, stage: Stage) -> ClientError {
    if is_disconnect(&e) {
        ClientError::Dropped { stage }
    } else {
        ClientError::Io(e)
    }
}

impl Io {
    pub(super) fn new(stream: TcpStream) -> Io {
        Io {
            transport: Transport::Plain(stream),
            rbuf: Vec::with_capacity(READ_CHUNK_BYTES),
            wbuf: Vec::with_capacity(READ_CHUNK_BYTES),
        }
    }

    /// True when unparsed bytes are buffered (e.g. sent by the peer before our TLS handshake).
    pub(super) fn has_buffered_input(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Writes `wbuf` entirely and flushes; `wbuf` is cleared afterwards (capacity kept).
    pub(super) async fn flush_wbuf(&mut self, stage: Stage) -> Result<(), ClientError> {
        let data = std::mem::take(&mut self.wbuf);
        let result = self.write_all(&data, stage).await;
        self.wbuf = data;
        self.wbuf.clear();
        result
    }

    pub(super) async fn write_all(&mut self, data: &[u8], stage: Stage) -> Result<(), ClientError> {
        let result = match &mut self.transport {
            Transport::Plain(s) => match s.write_all(data).await {
                Ok(()) => s.flush().await,
                Err(e) => Err(e),
            },
            Transport::Tls(s) => match s.write_all(data).await {
                Ok(()) => s.flush().await,
                Err(e) => Err(e),
            },
            Transport::Gone => return Err(ClientError::Dropped { stage }),
        };
        result.map_err(|e| io_error(e, stage))
    }

    /// The next complete reply, reading as needed (no timeout here; callers wrap it).
    pub(super) async fn read_reply(&mut self, stage: Stage) -> Result<Reply, ClientError> {
        loop {
            match parse_reply(&self.rbuf) {
                Ok(Some((reply, used))) => {
                    self.rbuf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(ClientError::Protocol {
                        stage,
                        reason: e.to_string(),
                    })
                }
            }
            if self.rbuf.len() >= READ_BUFFER_MAX_BYTES {
                return Err(ClientError::Protocol {
                    stage,
                    reason: format!("reply larger than {READ_BUFFER_MAX_BYTES} bytes"),
                });
            }
            self.fill(stage).await?;
        }
    }

    /// Reads once into `rbuf`; end of stream is `Dropped`.
    async fn fill(&mut self, stage: Stage) -> Result<(), ClientError> {
        let old = self.rbuf.len();
        let room = READ_CHUNK_BYTES.min(READ_BUFFER_MAX_BYTES - old);
        self.rbuf.resize(old + room, 0);
        let target = &mut self.rbuf[old..];
        let result = match &mut self.transport {
            Transport::Plain(s) => s.read(target).await,
            Transport::Tls(s) => s.read(target).await,
            Transport::Gone => Ok(0),
        };
        match result {
            Ok(0) => {
                self.rbuf.truncate(old);
                Err(ClientError::Dropped { stage })
            }
            Ok(n) => {
                self.rbuf.truncate(old + n);
                Ok(())
            }
            Err(e) => {
                self.rbuf.truncate(old);
                Err(io_error(e, stage))
            }
        }
    }

    /// Closes the socket (TLS close_notify first); errors are irrelevant by then.
    pub(super) async fn close(&mut self) {
        match std::mem::replace(&mut self.transport, Transport::Gone) {
            Transport::Plain(mut s) => {
                let _ = s.close().await;
            }
            Transport::Tls(mut s) => {
                let _ = s.close().await;
            }
            Transport::Gone => {}
        }
    }
}
