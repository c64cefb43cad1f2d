//! The accept loop shared by the admin API's TLS listener and the engine push listener: at most
//! `slots` connections handled at once (the next accept waits for a free slot), each in a task
//! of a `JoinSet` (dropping the loop's future ends them all), and a pause after a failed accept.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Pause after a failed accept (out of descriptors and the like), so the loop does not spin.
pub const ACCEPT_RETRY_DELAY_MS: u64 = 100;

/// Accepts on `listener` forever, running `handle` for each connection with at most `slots`
/// running at once. `what` names the listener in the log.
pub async fn accept_bounded<F, Fut>(listener: &TcpListener, slots: usize, what: &str, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(slots));
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.try_join_next().is_some() {}
        // The semaphore lives here and is never closed, so acquiring cannot fail.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_DELAY_MS)).await;
                continue;
            }
        };
        let work = handle(stream, peer);
        running.spawn(async move {
            let _permit = permit;
            work.await;
        });
    }
}
