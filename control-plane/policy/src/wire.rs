//! The push protocol between engines and the control plane.
//!
//! Every frame is `length u32 BE | kind u8 | payload`, where `length` counts the kind byte plus
//! the payload (so it is at least 1) and is at most [`FRAME_SIZE_MAX_BYTES`].
//!
//! | kind | direction     | frame                      | payload                                   |
//! |------|---------------|----------------------------|-------------------------------------------|
//! | 0x01 | engine -> CP  | `Hello`                    | JSON `{engine_id, token, applied_version, shards}` |
//! | 0x02 | engine -> CP  | `Ack { version }`          | u64 BE                                    |
//! | 0x03 | engine -> CP  | `Ping`                     | empty                                     |
//! | 0x04 | engine -> CP  | `Events { batch_seq, events }` | u64 BE batch_seq, then a JSON array of [`Event`] |
//! | 0x05 | engine -> CP  | `SuppressionsSince { version }` | u64 BE                           |
//! | 0x06 | engine -> CP  | `SuppressionsApplied { version }` | u64 BE                         |
//! | 0x81 | CP -> engine  | `Snapshot { version, bytes }` | u64 BE version, then `snapshot::encode` bytes |
//! | 0x82 | CP -> engine  | `Pong`                     | empty                                     |
//! | 0x83 | CP -> engine  | `Error { message }`        | UTF-8 text                                |
//! | 0x84 | CP -> engine  | `EventsAck { batch_seq }`  | u64 BE                                    |
//! | 0x85 | CP -> engine  | `SuppressionLoad(page)`    | binary, see [`suppressions`]              |
//! | 0x86 | CP -> engine  | `SuppressionChanges { changes }` | binary, see [`suppressions`]        |
//! | 0x87 | CP -> engine  | `AuditCheckpoint(checkpoint)` | JSON [`AuditCheckpoint`], at most [`crate::checkpoint::CHECKPOINT_JSON_MAX_BYTES`] |
//! | 0x88 | CP -> engine  | `Fleet { engines_live }`   | u32 BE: engines live across the control plane's nodes |
//!
//! The session: the engine sends `Hello`; the control plane checks the token and answers with
//! the current `Snapshot` (or `Error` and closes); it sends a new full `Snapshot` on each change.
//! The engine answers each applied snapshot with `Ack`, and may `Ping` (answered by `Pong`).
//!
//! Events flow the other way on the same session (after `Hello`). The engine numbers its
//! batches with `batch_seq`, strictly increasing per engine id (gaps allowed) and persisted
//! with its backlog, and sends them in order; at most [`crate::event::EVENTS_PER_BATCH_MAX`]
//! events and [`crate::event::EVENTS_BATCH_MAX_BYTES`] of JSON per frame. The control plane
//! answers `EventsAck { batch_seq }` only after the batch is committed to its store. Acks are
//! cumulative: an ack for N covers every batch <= N, so the engine drops all of them from its
//! backlog. A batch with `batch_seq` <= the last one acknowledged for that engine is
//! acknowledged again (with the last acknowledged seq) without being stored; events are also
//! idempotent by `id`, so a batch rebuilt with other seq and the same events stores nothing
//! twice. An invalid batch (bad JSON, a bound broken) gets `Error` and no ack, and the control
//! plane closes the connection: the engine must set such a batch aside (log it, do not resend
//! it unchanged) and carry on with the next seq. Unacknowledged batches are re-sent after a
//! reconnect.
//!
//! The suppression list follows on the same session, as deltas (issue 14). After `Hello` the
//! engine sends `SuppressionsSince { version }`: the change-log seq its set reflects (0: it has
//! none). The control plane answers with the changes after it (`SuppressionChanges`, pages of
//! at most [`SUPPRESSION_FRAME_ENTRIES_MAX`], in seq order), or, when the engine has nothing or
//! is older than the log's retention, with a full load (`SuppressionLoad` pages, the first
//! flagged `first`, the last `last`, each carrying the seq the load reflects) followed by the
//! changes after that seq. From then on every committed change is pushed as it happens. The
//! engine answers each applied frame with `SuppressionsApplied { version }`, which the control
//! plane records (`GET /v1/engines`). An engine that never asks gets no suppression frames.
//!
//! The signed audit checkpoint (issue 16) follows too: the control plane sends its newest one
//! after the first snapshot and each newer one as it is made; the engine verifies and keeps it
//! ([`crate::checkpoint`]) and answers nothing.
//!
//! Versions. Frames carry no version of their own, and an unknown kind is a protocol error on
//! both sides (the decoder refuses it and the session ends; an engine would reconnect only to
//! fail again). So a frame added later is sent only to a peer that says it knows it: the
//! engine names the protocol revision it speaks in `Hello.protocol` ([`PROTOCOL_VERSION`];
//! absent, as from engines built before it, reads 0), and the control plane sends a frame only
//! to engines at or past the revision that added it ([`PROTOCOL_AUDIT_CHECKPOINT`] for 0x87).
//! The other way round is safe too: a control plane built before the field ignores it (serde
//! skips unknown `Hello` fields) and never sends the frame. Revision 0 is every frame up to
//! 0x86; revision 1 adds 0x87; revision 2 adds 0x88 (sent at the session's start and whenever
//! the count of live engines changes, checked every second; the engine's cluster quotas divide
//! limits by it when Redis is down, see [`crate::quota`]).
//!
//! [`Frame::encode`] and [`FrameDecoder`] are pure; [`read_frame`] / [`write_frame`] adapt
//! them to tokio's `AsyncRead`/`AsyncWrite` for both sides.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::checkpoint::AuditCheckpoint;
use crate::error::PolicyError;
use crate::event::{Event, EVENTS_BATCH_MAX_BYTES, EVENTS_PER_BATCH_MAX};
use crate::suppression::SuppressionChange;

pub mod suppressions;
pub use suppressions::{LoadEntry, LoadPage, SUPPRESSION_FRAME_ENTRIES_MAX};

/// Largest `length` field accepted: kind byte plus payload, in bytes.
pub const FRAME_SIZE_MAX_BYTES: usize = 64 << 20;
/// Bytes in the length prefix.
pub const FRAME_LENGTH_BYTES: usize = 4;
/// Longest `Error` message sent or kept, in bytes.
pub const ERROR_MESSAGE_MAX_BYTES: usize = 4096;
/// Largest `Hello` payload, in bytes (ids and token are short).
pub const HELLO_SIZE_MAX_BYTES: usize = 4096;
/// The protocol revision this build speaks (see the module doc's "Versions").
pub const PROTOCOL_VERSION: u32 = 2;
/// The revision that added `AuditCheckpoint` (0x87).
pub const PROTOCOL_AUDIT_CHECKPOINT: u32 = 1;
/// The revision that added `Fleet` (0x88).
pub const PROTOCOL_FLEET: u32 = 2;

pub const KIND_HELLO: u8 = 0x01;
pub const KIND_ACK: u8 = 0x02;
pub const KIND_PING: u8 = 0x03;
pub const KIND_EVENTS: u8 = 0x04;
pub const KIND_SUPPRESSIONS_SINCE: u8 = 0x05;
pub const KIND_SUPPRESSIONS_APPLIED: u8 = 0x06;
pub const KIND_SNAPSHOT: u8 = 0x81;
pub const KIND_PONG: u8 = 0x82;
pub const KIND_ERROR: u8 = 0x83;
pub const KIND_EVENTS_ACK: u8 = 0x84;
pub const KIND_SUPPRESSION_LOAD: u8 = 0x85;
pub const KIND_SUPPRESSION_CHANGES: u8 = 0x86;
pub const KIND_AUDIT_CHECKPOINT: u8 = 0x87;
pub const KIND_FLEET: u8 = 0x88;

/// The engine introduces itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hello {
    /// Stable name of the engine (host name by default).
    pub engine_id: String,
    /// Shared secret configured on both sides.
    pub token: String,
    /// Version of the snapshot the engine runs (0: none yet).
    pub applied_version: u64,
    /// Number of shards (cores) the engine runs; informational.
    pub shards: u32,
    /// The protocol revision the engine speaks ([`PROTOCOL_VERSION`]); 0 when absent (engines
    /// built before the field): the control plane sends it no frame added since.
    #[serde(default)]
    pub protocol: u32,
}

/// One protocol frame.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Ack {
        version: u64,
    },
    Ping,
    /// `bytes` is the output of [`crate::snapshot::encode`]; `version` repeats its version so a
    /// receiver can skip stale ones without decoding.
    Snapshot {
        version: u64,
        bytes: Vec<u8>,
    },
    Pong,
    Error {
        message: String,
    },
    /// A batch of events, numbered per engine (see the module doc for the ordering rules).
    /// Decoding checks the batch's bounds and JSON shape; [`crate::event::validate_batch`]
    /// checks the events themselves.
    Events {
        batch_seq: u64,
        events: Vec<Event>,
    },
    /// Every batch with a seq <= `batch_seq` is committed on the control plane.
    EventsAck {
        batch_seq: u64,
    },
    /// The engine's suppression set reflects the change log up to `version` (0: empty, never
    /// loaded): send what comes after.
    SuppressionsSince {
        version: u64,
    },
    /// The engine applied the suppression frames up to `version`.
    SuppressionsApplied {
        version: u64,
    },
    /// A page of a full load of the suppression list.
    SuppressionLoad(LoadPage),
    /// Changes of the suppression list, in seq order.
    SuppressionChanges {
        changes: Vec<SuppressionChange>,
    },
    /// The control plane's newest signed audit checkpoint (revision 1; decoding checks its
    /// shape, the engine's keeper its signature and seq).
    AuditCheckpoint(AuditCheckpoint),
    /// How many engines are live across the control plane's nodes (revision 2).
    Fleet {
        engines_live: u32,
    },
}

impl std::fmt::Debug for Frame {
    // Never print the token or the (key-bearing) snapshot bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frame::Hello(h) => write!(
                f,
                "Hello {{ engine_id: {:?}, applied_version: {}, shards: {}, protocol: {} }}",
                h.engine_id, h.applied_version, h.shards, h.protocol
            ),
            Frame::Ack { version } => write!(f, "Ack {{ version: {version} }}"),
            Frame::Ping => write!(f, "Ping"),
            Frame::Snapshot { version, bytes } => write!(
                f,
                "Snapshot {{ version: {version}, {} bytes }}",
                bytes.len()
            ),
            Frame::Pong => write!(f, "Pong"),
            Frame::Error { message } => write!(f, "Error {{ message: {message:?} }}"),
            Frame::Events { batch_seq, events } => write!(
                f,
                "Events {{ batch_seq: {batch_seq}, {} events }}",
                events.len()
            ),
            Frame::EventsAck { batch_seq } => write!(f, "EventsAck {{ batch_seq: {batch_seq} }}"),
            Frame::SuppressionsSince { version } => {
                write!(f, "SuppressionsSince {{ version: {version} }}")
            }
            Frame::SuppressionsApplied { version } => {
                write!(f, "SuppressionsApplied {{ version: {version} }}")
            }
            // Addresses are personal data: counts only.
            Frame::SuppressionLoad(p) => write!(
                f,
                "SuppressionLoad {{ version: {}, first: {}, last: {}, {} entries }}",
                p.version,
                p.first,
                p.last,
                p.entries.len()
            ),
            Frame::SuppressionChanges { changes } => {
                write!(f, "SuppressionChanges {{ {} changes }}", changes.len())
            }
            Frame::AuditCheckpoint(cp) => write!(f, "AuditCheckpoint {{ seq: {} }}", cp.seq),
            Frame::Fleet { engines_live } => write!(f, "Fleet {{ engines_live: {engines_live} }}"),
        }
    }
}

impl Frame {
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => KIND_HELLO,
            Frame::Ack { .. } => KIND_ACK,
            Frame::Ping => KIND_PING,
            Frame::Snapshot { .. } => KIND_SNAPSHOT,
            Frame::Pong => KIND_PONG,
            Frame::Error { .. } => KIND_ERROR,
            Frame::Events { .. } => KIND_EVENTS,
            Frame::EventsAck { .. } => KIND_EVENTS_ACK,
            Frame::SuppressionsSince { .. } => KIND_SUPPRESSIONS_SINCE,
            Frame::SuppressionsApplied { .. } => KIND_SUPPRESSIONS_APPLIED,
            Frame::SuppressionLoad(_) => KIND_SUPPRESSION_LOAD,
            Frame::SuppressionChanges { .. } => KIND_SUPPRESSION_CHANGES,
            Frame::AuditCheckpoint(_) => KIND_AUDIT_CHECKPOINT,
            Frame::Fleet { .. } => KIND_FLEET,
        }
    }

    /// The full frame bytes (length prefix included).
    pub fn encode(&self) -> Result<Vec<u8>, PolicyError> {
        let payload: Vec<u8> = match self {
            Frame::Hello(h) => serde_json::to_vec(h)
                .map_err(|e| PolicyError::protocol(format!("hello encoding: {e}")))?,
            Frame::Ack { version } => version.to_be_bytes().to_vec(),
            Frame::Ping | Frame::Pong => Vec::new(),
            Frame::Snapshot { version, bytes } => {
                let mut p = Vec::with_capacity(8 + bytes.len());
                p.extend_from_slice(&version.to_be_bytes());
                p.extend_from_slice(bytes);
                p
            }
            Frame::Error { message } => truncate_utf8(message, ERROR_MESSAGE_MAX_BYTES)
                .as_bytes()
                .to_vec(),
            Frame::Events { batch_seq, events } => {
                check_batch_count(events.len())?;
                let json = serde_json::to_vec(events)
                    .map_err(|e| PolicyError::protocol(format!("events encoding: {e}")))?;
                check_batch_bytes(json.len())?;
                let mut p = Vec::with_capacity(8 + json.len());
                p.extend_from_slice(&batch_seq.to_be_bytes());
                p.extend_from_slice(&json);
                p
            }
            Frame::EventsAck { batch_seq } => batch_seq.to_be_bytes().to_vec(),
            Frame::SuppressionsSince { version } | Frame::SuppressionsApplied { version } => {
                version.to_be_bytes().to_vec()
            }
            Frame::SuppressionLoad(page) => suppressions::encode_load(page)?,
            Frame::SuppressionChanges { changes } => suppressions::encode_changes(changes)?,
            Frame::AuditCheckpoint(cp) => cp.to_json()?,
            Frame::Fleet { engines_live } => engines_live.to_be_bytes().to_vec(),
        };
        if matches!(self, Frame::Hello(_)) && payload.len() > HELLO_SIZE_MAX_BYTES {
            return Err(PolicyError::protocol("hello too large"));
        }
        let length = payload.len() + 1;
        if length > FRAME_SIZE_MAX_BYTES {
            return Err(PolicyError::protocol(format!(
                "frame of {length} bytes exceeds {FRAME_SIZE_MAX_BYTES}"
            )));
        }
        let length_u32 = u32::try_from(length)
            .map_err(|_| PolicyError::protocol("frame length overflows u32"))?;
        let mut out = Vec::with_capacity(FRAME_LENGTH_BYTES + length);
        out.extend_from_slice(&length_u32.to_be_bytes());
        out.push(self.kind());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Parse a frame from its kind and payload (the length prefix already removed).
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Frame, PolicyError> {
        match kind {
            KIND_HELLO => {
                if payload.len() > HELLO_SIZE_MAX_BYTES {
                    return Err(PolicyError::protocol("hello too large"));
                }
                serde_json::from_slice(payload)
                    .map(Frame::Hello)
                    .map_err(|e| PolicyError::protocol(format!("bad hello: {e}")))
            }
            KIND_ACK => Ok(Frame::Ack {
                version: be_u64(payload, "ack")?,
            }),
            KIND_PING => empty(payload, "ping").map(|()| Frame::Ping),
            KIND_PONG => empty(payload, "pong").map(|()| Frame::Pong),
            KIND_SNAPSHOT => {
                let (head, rest) = payload
                    .split_at_checked(8)
                    .ok_or_else(|| PolicyError::protocol("snapshot frame shorter than 8 bytes"))?;
                Ok(Frame::Snapshot {
                    version: be_u64(head, "snapshot")?,
                    bytes: rest.to_vec(),
                })
            }
            KIND_EVENTS => {
                let (head, json) = payload
                    .split_at_checked(8)
                    .ok_or_else(|| PolicyError::protocol("events frame shorter than 8 bytes"))?;
                check_batch_bytes(json.len())?;
                let events: Vec<Event> = serde_json::from_slice(json)
                    .map_err(|e| PolicyError::protocol(format!("bad events batch: {e}")))?;
                check_batch_count(events.len())?;
                Ok(Frame::Events {
                    batch_seq: be_u64(head, "events")?,
                    events,
                })
            }
            KIND_EVENTS_ACK => Ok(Frame::EventsAck {
                batch_seq: be_u64(payload, "events ack")?,
            }),
            KIND_SUPPRESSIONS_SINCE => Ok(Frame::SuppressionsSince {
                version: be_u64(payload, "suppressions since")?,
            }),
            KIND_SUPPRESSIONS_APPLIED => Ok(Frame::SuppressionsApplied {
                version: be_u64(payload, "suppressions applied")?,
            }),
            KIND_SUPPRESSION_LOAD => suppressions::decode_load(payload).map(Frame::SuppressionLoad),
            KIND_SUPPRESSION_CHANGES => suppressions::decode_changes(payload)
                .map(|changes| Frame::SuppressionChanges { changes }),
            KIND_AUDIT_CHECKPOINT => AuditCheckpoint::from_json(payload)
                .map(Frame::AuditCheckpoint)
                .map_err(|e| PolicyError::protocol(e.to_string())),
            KIND_FLEET => {
                let bytes: [u8; 4] = payload
                    .try_into()
                    .map_err(|_| PolicyError::protocol("fleet payload is not 4 bytes"))?;
                Ok(Frame::Fleet {
                    engines_live: u32::from_be_bytes(bytes),
                })
            }
            KIND_ERROR => {
                let text = String::from_utf8_lossy(payload);
                Ok(Frame::Error {
                    message: truncate_utf8(&text, ERROR_MESSAGE_MAX_BYTES).to_owned(),
                })
            }
            other => Err(PolicyError::protocol(format!(
                "unknown frame kind {other:#04x}"
            ))),
        }
    }
}

/// Incremental decoder for callers that own their buffers (pure; no I/O).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// Bytes received and not yet returned as frames; bounded by one frame plus one read.
    buffer: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or a protocol error
    /// (after which the connection must be dropped).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, PolicyError> {
        let Some(prefix) = self.buffer.first_chunk::<FRAME_LENGTH_BYTES>() else {
            return Ok(None);
        };
        let length = check_length(u32::from_be_bytes(*prefix))?;
        let total = FRAME_LENGTH_BYTES + length;
        if self.buffer.len() < total {
            return Ok(None);
        }
        let kind = self.buffer[FRAME_LENGTH_BYTES];
        let frame = Frame::decode(kind, &self.buffer[FRAME_LENGTH_BYTES + 1..total]);
        self.buffer.drain(..total);
        frame.map(Some)
    }
}

/// Read one frame. `Ok(None)` on a clean end of stream between frames; an error on a stream
/// that ends inside a frame, an oversized length, or a malformed payload. Memory grows with
/// the bytes actually received, not with the announced length.
///
/// Not cancel-safe: a frame partly read when the future is dropped is lost. Do not race it in
/// `select!` against other events; there, read with `AsyncReadExt::read` into a
/// [`FrameDecoder`] (as `link.rs` does), or read frames in a task of their own.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, PolicyError> {
    let mut prefix = [0u8; FRAME_LENGTH_BYTES];
    let mut got = 0;
    while got < FRAME_LENGTH_BYTES {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(PolicyError::protocol("stream ended inside a frame length"));
        }
        got += n;
    }
    let length = check_length(u32::from_be_bytes(prefix))?;
    let mut body = Vec::with_capacity(length.min(64 << 10));
    let length_u64 = u64::try_from(length).map_err(|_| PolicyError::protocol("length"))?;
    let read = r.take(length_u64).read_to_end(&mut body).await?;
    if read != length {
        return Err(PolicyError::protocol(format!(
            "stream ended inside a frame ({read} of {length} bytes)"
        )));
    }
    let (kind, payload) = body
        .split_first()
        .ok_or_else(|| PolicyError::protocol("empty frame"))?;
    Frame::decode(*kind, payload).map(Some)
}

/// The bytes of an `Events` frame whose JSON array is already serialized (the engine's backlog
/// keeps batches as JSON): the same bytes [`Frame::encode`] makes for the decoded events.
pub fn encode_events_raw(batch_seq: u64, json: &[u8]) -> Result<Vec<u8>, PolicyError> {
    check_batch_bytes(json.len())?;
    let length = 1 + 8 + json.len();
    let length_u32 =
        u32::try_from(length).map_err(|_| PolicyError::protocol("frame length overflows u32"))?;
    let mut out = Vec::with_capacity(FRAME_LENGTH_BYTES + length);
    out.extend_from_slice(&length_u32.to_be_bytes());
    out.push(KIND_EVENTS);
    out.extend_from_slice(&batch_seq.to_be_bytes());
    out.extend_from_slice(json);
    Ok(out)
}

/// Write one frame and flush.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), PolicyError> {
    let bytes = frame.encode()?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

fn check_length(length: u32) -> Result<usize, PolicyError> {
    let length = usize::try_from(length).map_err(|_| PolicyError::protocol("length"))?;
    if length == 0 {
        return Err(PolicyError::protocol("frame length 0 (no kind byte)"));
    }
    if length > FRAME_SIZE_MAX_BYTES {
        return Err(PolicyError::protocol(format!(
            "frame of {length} bytes exceeds {FRAME_SIZE_MAX_BYTES}"
        )));
    }
    Ok(length)
}

fn check_batch_count(count: usize) -> Result<(), PolicyError> {
    if count > EVENTS_PER_BATCH_MAX {
        return Err(PolicyError::protocol(format!(
            "events batch of {count} events exceeds {EVENTS_PER_BATCH_MAX}"
        )));
    }
    Ok(())
}

fn check_batch_bytes(len: usize) -> Result<(), PolicyError> {
    if len > EVENTS_BATCH_MAX_BYTES {
        return Err(PolicyError::protocol(format!(
            "events batch of {len} bytes exceeds {EVENTS_BATCH_MAX_BYTES}"
        )));
    }
    Ok(())
}

fn be_u64(payload: &[u8], what: &str) -> Result<u64, PolicyError> {
    let bytes: [u8; 8] = payload
        .try_into()
        .map_err(|_| PolicyError::protocol(format!("{what} payload is not 8 bytes")))?;
    Ok(u64::from_be_bytes(bytes))
}

fn empty(payload: &[u8], what: &str) -> Result<(), PolicyError> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(PolicyError::protocol(format!("{what} with a payload")))
    }
}

fn truncate_utf8(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::CHECKPOINT_JSON_MAX_BYTES;
    use crate::event::tests::sample;
    use crate::event::EventType;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                engine_id: "e1".into(),
                token: "secret".into(),
                applied_version: 3,
                shards: 2,
                protocol: PROTOCOL_VERSION,
            }),
            Frame::Ack { version: 9 },
            Frame::Ping,
            Frame::Snapshot {
                version: 9,
                bytes: vec![1, 2, 3],
            },
            Frame::Pong,
            Frame::Fleet { engines_live: 3 },
            Frame::Error {
                message: "bad token".into(),
            },
            Frame::Events {
                batch_seq: 7,
                events: vec![
                    sample(EventType::Delivered),
                    sample(EventType::Bounced),
                    sample(EventType::Other("complained".into())),
                ],
            },
            Frame::Events {
                batch_seq: u64::MAX,
                events: Vec::new(),
            },
            Frame::EventsAck { batch_seq: 7 },
            Frame::SuppressionsSince { version: 0 },
            Frame::SuppressionsApplied { version: 12 },
            Frame::SuppressionLoad(LoadPage {
                version: 12,
                first: true,
                last: true,
                entries: vec![LoadEntry {
                    scope: "t1".into(),
                    address: "a@b.example".into(),
                    reason: crate::suppression::SuppressionReason::Complaint,
                }],
            }),
            Frame::SuppressionChanges {
                changes: vec![crate::suppression::SuppressionChange {
                    seq: 13,
                    scope: "*".into(),
                    address: "c@d.example".into(),
                    op: crate::suppression::ChangeOp::Remove,
                }],
            },
            Frame::AuditCheckpoint(AuditCheckpoint {
                seq: 41,
                hash: "ab".repeat(32),
                at_unix_ms: 1_800_000_000_000,
                public_key: "01".repeat(32),
                signature: "02".repeat(64),
            }),
        ]
    }

    #[test]
    fn round_trip_through_decoder_byte_by_byte() {
        let mut all = Vec::new();
        for f in all_frames() {
            all.extend_from_slice(&f.encode().unwrap());
        }
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for b in all {
            d.feed(&[b]);
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, all_frames());
    }

    #[test]
    fn rejects_bad_frames() {
        let mut d = FrameDecoder::new();
        d.feed(&[0, 0, 0, 0]);
        assert!(d.next_frame().is_err(), "zero length");

        let mut d = FrameDecoder::new();
        d.feed(&((FRAME_SIZE_MAX_BYTES + 1) as u32).to_be_bytes());
        assert!(d.next_frame().is_err(), "oversized");

        assert!(Frame::decode(0x55, &[]).is_err(), "unknown kind");
        assert!(Frame::decode(KIND_ACK, &[1, 2]).is_err(), "short ack");
        assert!(Frame::decode(KIND_PING, &[1]).is_err(), "ping payload");
        assert!(
            Frame::decode(KIND_SNAPSHOT, &[1]).is_err(),
            "short snapshot"
        );
        assert!(Frame::decode(KIND_HELLO, b"{").is_err(), "bad json");
        assert!(
            Frame::decode(KIND_AUDIT_CHECKPOINT, b"{\"seq\":1}").is_err(),
            "checkpoint without fields"
        );
        let over = vec![b' '; CHECKPOINT_JSON_MAX_BYTES + 1];
        assert!(
            Frame::decode(KIND_AUDIT_CHECKPOINT, &over).is_err(),
            "oversized checkpoint"
        );
    }

    #[test]
    fn hello_from_an_older_engine_reads_protocol_0() {
        let old = br#"{"engine_id":"e","token":"t","applied_version":1,"shards":1}"#;
        match Frame::decode(KIND_HELLO, old).expect("old hello") {
            Frame::Hello(h) => assert_eq!(h.protocol, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_frames_are_bounded() {
        let seq = 3u64.to_be_bytes();
        assert!(Frame::decode(KIND_EVENTS, &[1, 2]).is_err(), "short events");
        let mut p = seq.to_vec();
        p.extend_from_slice(b"[{\"id\":1}]");
        assert!(Frame::decode(KIND_EVENTS, &p).is_err(), "bad event shape");
        let mut p = seq.to_vec();
        p.extend_from_slice(b"{}");
        assert!(Frame::decode(KIND_EVENTS, &p).is_err(), "not an array");
        assert!(
            Frame::decode(KIND_EVENTS_ACK, &[0; 7]).is_err(),
            "short ack"
        );

        let one = sample(EventType::Delivered);
        let too_many = Frame::Events {
            batch_seq: 1,
            events: vec![one.clone(); EVENTS_PER_BATCH_MAX + 1],
        };
        assert!(too_many.encode().is_err(), "encode refuses too many events");
        let mut p = seq.to_vec();
        p.extend_from_slice(
            &serde_json::to_vec(&vec![one.clone(); EVENTS_PER_BATCH_MAX + 1]).unwrap(),
        );
        assert!(
            Frame::decode(KIND_EVENTS, &p).is_err(),
            "decode refuses too many events"
        );
        let mut p = seq.to_vec();
        p.extend_from_slice(&vec![b' '; EVENTS_BATCH_MAX_BYTES + 1]);
        assert!(
            Frame::decode(KIND_EVENTS, &p).is_err(),
            "decode refuses too many bytes"
        );
        let mut fat = one;
        fat.sender = "s".repeat(EVENTS_BATCH_MAX_BYTES / EVENTS_PER_BATCH_MAX + 1);
        let fat = Frame::Events {
            batch_seq: 1,
            events: vec![fat; EVENTS_PER_BATCH_MAX],
        };
        assert!(fat.encode().is_err(), "encode refuses too many bytes");
        // The largest valid batch fits in one frame.
        const _: () = assert!(EVENTS_BATCH_MAX_BYTES + 9 <= FRAME_SIZE_MAX_BYTES);
    }

    #[test]
    fn raw_events_frames_equal_encoded_ones() {
        for f in all_frames() {
            if let Frame::Events { batch_seq, events } = &f {
                let json = serde_json::to_vec(events).expect("json");
                assert_eq!(
                    encode_events_raw(*batch_seq, &json).expect("raw"),
                    f.encode().expect("encode")
                );
            }
        }
        assert!(encode_events_raw(1, &vec![b' '; EVENTS_BATCH_MAX_BYTES + 1]).is_err());
    }

    #[test]
    fn debug_hides_the_token() {
        let s = format!("{:?}", all_frames()[0]);
        assert!(!s.contains("secret"), "{s}");
    }

    #[tokio::test]
    async fn async_read_write() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let frames = all_frames();
        let sent = frames.clone();
        let writer = tokio::spawn(async move {
            for f in &sent {
                write_frame(&mut a, f).await.unwrap();
            }
        });
        let mut got = Vec::new();
        while let Some(f) = read_frame(&mut b).await.unwrap() {
            got.push(f);
        }
        writer.await.unwrap();
        assert_eq!(got, frames);
    }

    #[tokio::test]
    async fn truncated_stream_is_an_error() {
        let bytes = Frame::Ack { version: 1 }.encode().unwrap();
        let mut r = &bytes[..bytes.len() - 2];
        assert!(read_frame(&mut r).await.is_err());
        let mut r = &bytes[..2];
        assert!(read_frame(&mut r).await.is_err());
    }
}
