//! A std thread that runs a task every interval and once more when stopped (the TLS-RPT
//! flusher, the egress counts saver): the shape both need, written once.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A running periodic thread; [`Periodic::stop`] (or drop) runs the task a last time and joins.
#[derive(Debug)]
pub struct Periodic {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Periodic {
    /// Starts thread `name` running `tick` every `interval_ms` (at least 1 ms) and once more
    /// at stop.
    pub fn start(
        name: &str,
        interval_ms: u64,
        mut tick: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Periodic> {
        let (stop, stopped) = mpsc::channel::<()>();
        let interval = Duration::from_millis(interval_ms.max(1));
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                let last = !matches!(
                    stopped.recv_timeout(interval),
                    Err(mpsc::RecvTimeoutError::Timeout)
                );
                tick();
                if last {
                    return;
                }
            })?;
        Ok(Periodic {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs the task once more and joins the thread.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.stop();
    }
}
