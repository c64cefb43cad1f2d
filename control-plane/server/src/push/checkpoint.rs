//! One engine connection's audit checkpoints (issue 16; the frame is in `petrel_policy::wire`):
//! the newest signed checkpoint this node knows, once the session's first snapshot is out, then
//! each newer one as [`crate::audit_anchor::publish`] announces it. Engines that speak a
//! protocol revision before the frame get none (they would refuse its kind and reconnect).
//! The engine answers nothing: it keeps the checkpoint or logs why not.

use std::time::Duration;

use petrel_policy::checkpoint::AuditCheckpoint;
use petrel_policy::wire::PROTOCOL_AUDIT_CHECKPOINT;
use petrel_policy::{write_frame, Frame};
use tokio::sync::watch;

use crate::api::App;
use crate::ControlError;

/// A checkpoint write to one engine must finish within this, or the connection is dropped.
pub const CHECKPOINT_WRITE_TIMEOUT_MS: u64 = 10_000;

/// Where one session stands.
pub(super) struct CheckpointFeed {
    /// The node's newest checkpoint; None when the engine gets none (an older revision).
    latest: Option<watch::Receiver<Option<AuditCheckpoint>>>,
    /// The seq last sent on this session (None: nothing yet).
    sent_seq: Option<u64>,
}

impl CheckpointFeed {
    /// The feed of an engine that said `protocol` in its Hello.
    pub(super) fn new(app: &App, protocol: u32) -> CheckpointFeed {
        CheckpointFeed {
            latest: (protocol >= PROTOCOL_AUDIT_CHECKPOINT).then(|| app.checkpoints.subscribe()),
            sent_seq: None,
        }
    }

    /// Sends the newest checkpoint when it is newer than the one sent last.
    pub(super) async fn send_due<W>(&mut self, writer: &mut W) -> Result<(), ControlError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        let Some(latest) = self.latest.as_mut() else {
            return Ok(());
        };
        let Some(cp) = latest.borrow_and_update().clone() else {
            return Ok(());
        };
        if self.sent_seq.is_some_and(|s| cp.seq <= s) {
            return Ok(());
        }
        let seq = cp.seq;
        tokio::time::timeout(
            Duration::from_millis(CHECKPOINT_WRITE_TIMEOUT_MS),
            write_frame(writer, &Frame::AuditCheckpoint(cp)),
        )
        .await
        .map_err(|_| ControlError::Config("audit checkpoint write timed out".into()))??;
        self.sent_seq = Some(seq);
        Ok(())
    }

    /// Resolves when another checkpoint is published; never for an engine that gets none (nor
    /// once the node shuts down: the session's other arms end it).
    pub(super) async fn changed(&mut self) {
        let open = match self.latest.as_mut() {
            Some(latest) => latest.changed().await.is_ok(),
            None => false,
        };
        if !open {
            std::future::pending::<()>().await;
        }
    }
}
