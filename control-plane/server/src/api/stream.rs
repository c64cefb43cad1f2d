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
