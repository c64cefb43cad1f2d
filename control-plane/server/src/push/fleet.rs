//! One engine connection's view of the fleet (the `Fleet` frame, protocol revision 2): how many
//! engines are live across every node of the control plane, sent at the session's start and
//! again when the count changed (counted every `ENGINE_IDENTITY_CHECK_MS`, 1 s, and after each
//! `Ping`), so engines that connect together learn of each other within a second. Engines divide their cluster-wide limits by it
//! while Redis is unreachable (`petrel_policy::quota`). Engines of an older revision get none.

use std::time::Duration;

use petrel_policy::wire::PROTOCOL_FLEET;
use petrel_policy::{write_frame, Frame};

use crate::api::App;
use crate::ControlError;

/// An engine counts as live while it is connected to some node and was heard from within
/// this (four of the engines' default 15 s pings): a node that died leaves its rows marked
/// connected, and they stop counting after it.
pub const ENGINE_LIVE_WINDOW_MS: i64 = 60_000;
/// A fleet write to one engine must finish within this, or the connection is dropped.
pub const FLEET_WRITE_TIMEOUT_MS: u64 = 10_000;

/// Where one session stands.
pub(super) struct FleetFeed {
    /// False for an engine of an older revision.
    enabled: bool,
    /// Count again at the next turn (start, every identity check, after each ping).
    due: bool,
    /// The count last sent on this session.
    sent: Option<u32>,
}

impl FleetFeed {
    /// The feed of an engine that said `protocol` in its Hello.
    pub(super) fn new(protocol: u32) -> FleetFeed {
        FleetFeed {
            enabled: protocol >= PROTOCOL_FLEET,
            due: true,
            sent: None,
        }
    }

    /// Count again at the next [`FleetFeed::send_due`].
    pub(super) fn recount(&mut self) {
        self.due = true;
    }

    /// Sends the live count when it is due and differs from the one sent last.
    pub(super) async fn send_due<W>(
        &mut self,
        app: &App,
        writer: &mut W,
    ) -> Result<(), ControlError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        if !self.enabled || !self.due {
            return Ok(());
        }
        self.due = false;
        let live = {
            let mut conn = app.db.conn().await?;
            crate::store::engines::live_count(&mut conn, app.now_ms() - ENGINE_LIVE_WINDOW_MS)
                .await?
        };
        if self.sent == Some(live) {
            return Ok(());
        }
        tokio::time::timeout(
            Duration::from_millis(FLEET_WRITE_TIMEOUT_MS),
            write_frame(writer, &Frame::Fleet { engines_live: live }),
        )
        .await
        .map_err(|_| ControlError::Config("fleet write timed out".into()))??;
        self.sent = Some(live);
        Ok(())
    }
}
