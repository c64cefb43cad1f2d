//! One engine connection's suppression feed (the protocol is in `petrel_policy::wire`): a full
//! load, page by page, when the engine has nothing or fell behind the change log's retention,
//! then every change after the version it reflects, as the log grows.
//!
//! A full load reads [`store::suppressions::current_version`] before its first page and pages
//! through the live entries in key order; a change committed meanwhile may or may not be in the
//! pages, and is sent again as a delta after the load (the engine skips nothing: its set's
//! version is the one read first, and re-applying an add or a remove is harmless). So the
//! engine ends at the same state as the log without the load holding a transaction open.
//!
//! Each step sends one page (at most `SUPPRESSION_FRAME_ENTRIES_MAX` entries), and the session
//! handles the engine's frames between steps, so a 10-million-entry load never stalls the
//! engine's event ingest for long.

use petrel_policy::{write_frame, Frame, LoadEntry, LoadPage, SUPPRESSION_FRAME_ENTRIES_MAX};

use crate::api::App;
use crate::store::suppressions::{self as ss, ChangesSince};
use crate::ControlError;

/// Entries per page, as the store reads them.
const PAGE_ROWS: i64 = SUPPRESSION_FRAME_ENTRIES_MAX as i64;

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Feed {
    /// The engine has not asked (an engine that never asks gets nothing).
    Idle,
    /// A full load: `version` (read before the first page) and the last key sent.
    Loading {
        version: u64,
        after: Option<(String, String)>,
        first: bool,
    },
    /// The engine's set reflects the log up to `version`.
    Following { version: u64 },
}

impl Feed {
    /// The engine said where its set stands.
    pub(super) fn since(version: u64) -> Feed {
        if version == 0 {
            Feed::Loading {
                version: 0,
                after: None,
                first: true,
            }
        } else {
            Feed::Following { version }
        }
    }

    /// Whether a step has something to send, given the newest seq known.
    pub(super) fn has_work(&self, latest: u64) -> bool {
        match self {
            Feed::Idle => false,
            Feed::Loading { .. } => true,
            Feed::Following { version } => *version < latest,
        }
    }

    /// Sends the next page of the load, or the next page of changes.
    pub(super) async fn step<W>(
        &mut self,
        app: &App,
        latest: u64,
        writer: &mut W,
    ) -> Result<(), ControlError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        let mut conn = app.db.conn().await?;
        match self {
            Feed::Idle => Ok(()),
            Feed::Loading {
                version,
                after,
                first,
            } => {
                if *first {
                    *version = ss::current_version(&mut conn).await?;
                }
                let key = after.as_ref().map(|(s, a)| (s.as_str(), a.as_str()));
                let rows = ss::load_page(&mut conn, key, PAGE_ROWS, app.now_ms()).await?;
                drop(conn);
                let last = rows.len() < SUPPRESSION_FRAME_ENTRIES_MAX;
                *after = rows.last().map(|(s, a, _)| (s.clone(), a.clone()));
                let page = LoadPage {
                    version: *version,
                    first: *first,
                    last,
                    entries: rows
                        .into_iter()
                        .map(|(scope, address, reason)| LoadEntry {
                            scope,
                            address,
                            reason,
                        })
                        .collect(),
                };
                write_frame(writer, &Frame::SuppressionLoad(page)).await?;
                *first = false;
                if last {
                    *self = Feed::Following { version: *version };
                }
                Ok(())
            }
            Feed::Following { version } => {
                match ss::changes_since(&mut conn, *version, PAGE_ROWS).await? {
                    ChangesSince::Resync { .. } => {
                        tracing::info!(
                            version = *version,
                            "engine behind the suppression log's retention: full reload"
                        );
                        *self = Feed::since(0);
                    }
                    ChangesSince::Changes {
                        changes,
                        version: v,
                    } => {
                        drop(conn);
                        if changes.is_empty() {
                            // Nothing committed past `version` (the seq was read ahead of its
                            // commit, or rolled back): wait for the next seq.
                            *version = latest.max(*version);
                        } else {
                            write_frame(writer, &Frame::SuppressionChanges { changes }).await?;
                            *version = v;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}
