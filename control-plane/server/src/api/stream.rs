//! A streamed response body: pages sent by a task on a bounded channel, so an export is never
//! whole in memory and a client that stops reading stops the task (its send fails).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use hyper::body::Frame;

/// Pages queued between the producing task and the client, at most.
pub const STREAM_CHANNEL_PAGES: usize = 4;

/// The sending half a producing task writes pages (or one final error) to.
pub type PageSender = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

/// The response body: the pages the producing task sends.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

/// A body and the sender its task fills.
pub fn channel() -> (PageSender, ChannelBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_CHANNEL_PAGES);
    (tx, ChannelBody(rx))
}

/// Streams a paged export into `tx`: `header` first (a CSV header line), then every row of
/// each page `fetch(cursor)` reads (`line` writes it and returns its cursor, from which the
/// next page starts),
/// until a page shorter than `page_rows`, the client leaving (a send fails), or a store error
/// (logged as `what`'s, and the stream ends in an error so the client sees it cut short).
pub async fn send_pages<R, C, Fut>(
    tx: PageSender,
    header: Option<String>,
    page_rows: i64,
    what: &'static str,
    mut cursor: C,
    mut fetch: impl FnMut(C) -> Fut,
    mut line: impl FnMut(R, &mut Vec<u8>) -> C,
) where
    C: Clone,
    Fut: std::future::Future<Output = Result<Vec<R>, crate::store::StoreError>>,
{
    if let Some(h) = header {
        if tx.send(Ok(Bytes::from(h))).await.is_err() {
            return;
        }
    }
    let page_rows = usize::try_from(page_rows).unwrap_or(0);
    loop {
        let rows = match fetch(cursor.clone()).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, what, "export failed");
                let _ = tx.send(Err(std::io::Error::other("export failed"))).await;
                return;
            }
        };
        let full = rows.len() == page_rows;
        let mut out = Vec::new();
        for r in rows {
            cursor = line(r, &mut out);
        }
        if tx.send(Ok(Bytes::from(out))).await.is_err() || !full {
            return;
        }
    }
}
