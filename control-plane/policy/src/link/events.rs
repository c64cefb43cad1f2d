//! The engine's side of the event stream on the link: batches from the durable backlog
//! ([`crate::outbox::Outbox`]) go out as `Events` frames, in seq order, at most
//! [`LINK_EVENTS_IN_FLIGHT_MAX`] unacknowledged at a time; each cumulative `EventsAck` frees them
//! on disk. A new connection starts again from the oldest unacknowledged batch (the control
//! plane acknowledges again what it already stored).

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::error::PolicyError;
use crate::outbox::Outbox;
use crate::wire::encode_events_raw;

/// Batches sent and not yet acknowledged on one connection, at most.
pub const LINK_EVENTS_IN_FLIGHT_MAX: usize = 8;

/// One connection's view of the backlog.
pub(super) struct EventsSender {
    outbox: Option<Arc<Outbox>>,
    /// Highest seq sent on this connection (0: none yet).
    sent_up_to: u64,
    /// Seqs sent and not yet acknowledged, in order.
    in_flight: std::collections::VecDeque<u64>,
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
            .unsent_after(self.sent_up_to, room)
            .map_err(|e| PolicyError::Io(std::io::Error::other(e.to_string())))?;
        if batches.is_empty() {
            return Ok(());
        }
        for (seq, json) in batches {
            let frame = encode_events_raw(seq, &json)?;
            writer.write_all(&frame).await?;
            self.sent_up_to = seq;
            self.in_flight.push_back(seq);
        }
        writer.flush().await?;
        Ok(())
    }

    /// The control plane committed every batch up to `seq`.
    pub(super) fn acked(&mut self, seq: u64) -> Result<(), PolicyError> {
        let Some(outbox) = &self.outbox else {
            return Err(PolicyError::protocol("EventsAck without events sent"));
        };
        while self.in_flight.front().is_some_and(|s| *s <= seq) {
            self.in_flight.pop_front();
        }
        metrics_ack(outbox);
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
        if !self.in_flight.contains(&seq) {
            return;
        }
        tracing::error!(batch_seq = seq, reason = %message,
            "control plane refused an event batch; set aside under events-backlog/refused/");
        if let Err(e) = outbox.set_aside(seq) {
            tracing::error!(batch_seq = seq, error = %e, "could not set the refused batch aside");
        }
    }
}

fn metrics_ack(outbox: &Outbox) {
    tracing::trace!(
        bytes = outbox.bytes(),
        unacked = outbox.unacked_batches(),
        "events acknowledged"
    );
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
