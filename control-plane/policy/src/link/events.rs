//! The engine's side of the event stream on the link: batches from the durable backlog
//! ([`crate::outbox::Outbox`]) go out as `Events` frames, in seq order, at most
//! [`LINK_EVENTS_IN_FLIGHT_MAX`] frames unacknowledged at a time; each cumulative `EventsAck`
//! frees them on disk. Consecutive batches are joined into one frame up to the frame's bounds
//! (1,000 events, 4 MiB), numbered with the last batch's seq: the backlog's batches are as small
//! as one writer round, and the control plane commits (and syncs) once per frame, so while it
//! is behind it gets fewer, fuller frames. A new connection starts again from the oldest
//! unacknowledged batch (the control plane acknowledges again what it already stored).

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::error::PolicyError;
use crate::event::{EVENTS_BATCH_MAX_BYTES, EVENTS_PER_BATCH_MAX};
use crate::outbox::{Outbox, OutboxBatch};
use crate::wire::encode_events_raw;

/// Frames sent and not yet acknowledged on one connection, at most.
pub const LINK_EVENTS_IN_FLIGHT_MAX: usize = 8;
/// Backlog batches read at once to fill frames.
pub const LINK_EVENTS_READ_BATCHES_MAX: usize = 256;

/// One connection's view of the backlog.
pub(super) struct EventsSender {
    outbox: Option<Arc<Outbox>>,
    /// Highest seq sent on this connection (0: none yet).
    sent_up_to: u64,
    /// Frames sent and not yet acknowledged, in order: (first batch seq, last batch seq).
    in_flight: std::collections::VecDeque<(u64, u64)>,
}

impl EventsSender {
    pub(super) fn new(outbox: Option<Arc<Outbox>>) -> EventsSender {
        EventsSender {
            outbox,
            sent_up_to: 0,
            in_flight: std::collections::VecDeque::new(),
        }
    }

    /// The backlog, when there is room to send more.
    pub(super) fn wants_more(&self) -> Option<&Arc<Outbox>> {
        self.outbox
            .as_ref()
            .filter(|_| self.in_flight.len() < LINK_EVENTS_IN_FLIGHT_MAX)
    }

    /// Sends synced batches after the last one sent, up to the window.
    pub(super) async fn send_more<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
    ) -> Result<(), PolicyError> {
        let Some(outbox) = self.outbox.clone() else {
            return Ok(());
        };
        let room = LINK_EVENTS_IN_FLIGHT_MAX.saturating_sub(self.in_flight.len());
        if room == 0 {
            return Ok(());
        }
        let batches = outbox
            .unsent_after(self.sent_up_to, LINK_EVENTS_READ_BATCHES_MAX)
            .map_err(|e| PolicyError::Io(std::io::Error::other(e.to_string())))?;
        if batches.is_empty() {
            return Ok(());
        }
        for frame in join_batches(&batches).into_iter().take(room) {
            let bytes = encode_events_raw(frame.last, &frame.json)?;
            writer.write_all(&bytes).await?;
            self.sent_up_to = frame.last;
            self.in_flight.push_back((frame.first, frame.last));
        }
        writer.flush().await?;
        Ok(())
    }

    /// The control plane committed every batch up to `seq`.
    pub(super) fn acked(&mut self, seq: u64) -> Result<(), PolicyError> {
        let Some(outbox) = &self.outbox else {
            return Err(PolicyError::protocol("EventsAck without events sent"));
        };
        while self.in_flight.front().is_some_and(|f| f.1 <= seq) {
            self.in_flight.pop_front();
        }
        tracing::trace!(
            batch_seq = seq,
            bytes = outbox.bytes(),
            unacked = outbox.unacked_batches(),
            "events acknowledged"
        );
        outbox
            .ack(seq)
            .map_err(|e| PolicyError::Io(std::io::Error::other(e.to_string())))
    }

    /// The control plane refused a batch (`Error` frame): if the message names one of ours
    /// (`events batch N refused: ...`), set it aside so the next connection carries on after
    /// it instead of sending it again unchanged.
    pub(super) fn refused(&mut self, message: &str) {
        let Some(outbox) = &self.outbox else { return };
        let Some(seq) = refused_seq(message) else {
            return;
        };
        let Some(&(first, last)) = self.in_flight.iter().find(|f| f.1 == seq) else {
            return;
        };
        tracing::error!(batch_seq = seq, reason = %message,
            "control plane refused an event batch; set aside under events-backlog/refused/");
        if let Err(e) = outbox.set_aside(first, last) {
            tracing::error!(batch_seq = seq, error = %e, "could not set the refused batch aside");
        }
    }
}

/// One frame's worth of consecutive backlog batches.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    first: u64,
    last: u64,
    json: Vec<u8>,
}

/// Joins consecutive batches (JSON arrays) into frames of at most `EVENTS_PER_BATCH_MAX` events
/// and `EVENTS_BATCH_MAX_BYTES` bytes; a batch is never split.
fn join_batches(batches: &[OutboxBatch]) -> Vec<Frame> {
    let mut frames: Vec<Frame> = Vec::new();
    let mut events = 0usize;
    for b in batches {
        let n = b.events as usize;
        let inner = b
            .json
            .strip_prefix(b"[")
            .and_then(|j| j.strip_suffix(b"]"))
            .unwrap_or(&[]);
        let fits = frames.last().is_some_and(|f| {
            events + n <= EVENTS_PER_BATCH_MAX
                && f.json.len() + inner.len() < EVENTS_BATCH_MAX_BYTES
        });
        match frames.last_mut() {
            Some(f) if fits => {
                if !inner.is_empty() {
                    f.json.pop(); // the closing bracket
                    if f.json.len() > 1 {
                        f.json.push(b',');
                    }
                    f.json.extend_from_slice(inner);
                    f.json.push(b']');
                }
                f.last = b.seq;
                events += n;
            }
            _ => {
                frames.push(Frame {
                    first: b.seq,
                    last: b.seq,
                    json: b.json.to_vec(),
                });
                events = n;
            }
        }
    }
    frames
}

/// The seq in the control plane's `events batch N refused: ...` message.
fn refused_seq(message: &str) -> Option<u64> {
    let rest = message.strip_prefix("events batch ")?;
    let (n, tail) = rest.split_once(' ')?;
    tail.starts_with("refused")
        .then(|| n.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, ids: &[u32]) -> OutboxBatch {
        let items: Vec<String> = ids.iter().map(|i| format!("{{\"id\":\"e{i}\"}}")).collect();
        OutboxBatch {
            seq,
            json: format!("[{}]", items.join(",")).into_bytes().into(),
            events: ids.len() as u32,
        }
    }

    #[test]
    fn consecutive_batches_join_into_frames_within_the_bounds() {
        let frames = join_batches(&[batch(7, &[1, 2]), batch(8, &[3]), batch(9, &[4, 5])]);
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].first, frames[0].last), (7, 9));
        let v: serde_json::Value = serde_json::from_slice(&frames[0].json).expect("JSON");
        let ids: Vec<&str> = v
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|e| e["id"].as_str())
            .collect();
        assert_eq!(ids, ["e1", "e2", "e3", "e4", "e5"]);
        // At most EVENTS_PER_BATCH_MAX events a frame; a batch is never split.
        let big: Vec<u32> = (0..600).collect();
        let frames = join_batches(&[batch(1, &big), batch(2, &big), batch(3, &[1])]);
        assert_eq!(
            frames.iter().map(|f| (f.first, f.last)).collect::<Vec<_>>(),
            vec![(1, 1), (2, 3)]
        );
        for f in &frames {
            let v: serde_json::Value = serde_json::from_slice(&f.json).expect("JSON");
            assert!(v.as_array().expect("array").len() <= EVENTS_PER_BATCH_MAX);
        }
    }

    #[test]
    fn reads_the_refused_seq() {
        assert_eq!(
            refused_seq("events batch 17 refused: event \"x\": tags is 200 bytes (max 128)"),
            Some(17)
        );
        assert_eq!(refused_seq("bad token"), None);
        assert_eq!(refused_seq("events batch x refused"), None);
    }
}
