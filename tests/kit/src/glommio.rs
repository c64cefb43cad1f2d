//! Running test code on glommio: a fresh executor per call, on its own thread.
//!
//! [`run`] is what most tests need; [`Runner`] adds pinning, a name, a time bound and
//! [`Runner::run_here`] (the calling thread, so the future may borrow). Inside an executor,
//! [`wait_until`] polls a condition with a bound instead of a hand-written loop.

use std::future::Future;
use std::time::{Duration, Instant};

use ::glommio::{BuilderErrorKind, GlommioError, LocalExecutorBuilder, Placement};
use futures_lite::FutureExt;

/// io_uring buffer memory per test executor: small, because RLIMIT_MEMLOCK is 8 MiB here and
/// tests run in parallel.
pub const IO_MEMORY_BYTES: usize = 512 << 10;
/// How often [`wait_until`] looks at its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How to run a future on a fresh executor thread.
#[derive(Clone, Debug)]
pub struct Runner {
    placement: Placement,
    name: String,
    timeout: Option<Duration>,
}

impl Default for Runner {
    fn default() -> Runner {
        Runner {
            placement: Placement::Unbound,
            name: "test".into(),
            timeout: None,
        }
    }
}

impl Runner {
    /// Pins the executor thread to `cpu`.
    pub fn pinned(mut self, cpu: usize) -> Runner {
        self.placement = Placement::Fixed(cpu);
        self
    }

    /// Names the executor thread (shows in panics and in `top`).
    pub fn name(mut self, name: &str) -> Runner {
        self.name = name.into();
        self
    }

    /// Panics if the future has not finished within `timeout` (a bound, not a measurement).
    pub fn timeout(mut self, timeout: Duration) -> Runner {
        self.timeout = Some(timeout);
        self
    }

    /// Runs the future made by `make` on a new executor thread and returns its output; a panic
    /// inside is re-raised here.
    pub fn run<G, F, T>(self, make: G) -> T
    where
        G: FnOnce() -> F + Send + 'static,
        F: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let timeout = self.timeout;
        let handle = self
            .builder()
            .spawn(move || bounded(make(), timeout))
            .expect("a glommio executor thread");
        match handle.join() {
            Ok(out) => out,
            Err(GlommioError::BuilderError(BuilderErrorKind::ThreadPanic(panic))) => {
                std::panic::resume_unwind(panic)
            }
            Err(e) => panic!("glommio executor failed: {e}"),
        }
    }

    /// Runs `fut` on a new executor on the calling thread, so it may borrow from the caller
    /// (a test's servers, say). The thread must not be inside another executor.
    pub fn run_here<T>(self, fut: impl Future<Output = T>) -> T {
        let timeout = self.timeout;
        self.builder()
            .make()
            .expect("a glommio executor on this thread")
            .run(bounded(fut, timeout))
    }

    fn builder(&self) -> LocalExecutorBuilder {
        LocalExecutorBuilder::new(self.placement.clone())
            .io_memory(IO_MEMORY_BYTES)
            .name(&self.name)
    }
}

/// `fut`, failing the test if it runs longer than `timeout`.
async fn bounded<T>(fut: impl Future<Output = T>, timeout: Option<Duration>) -> T {
    let Some(bound) = timeout else {
        return fut.await;
    };
    async { Some(fut.await) }
        .or(async {
            ::glommio::timer::sleep(bound).await;
            None
        })
        .await
        .unwrap_or_else(|| panic!("test future still running after {bound:?}"))
}

/// Runs the future made by `make` on a fresh, unpinned executor thread.
pub fn run<G, F, T>(make: G) -> T
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    Runner::default().run(make)
}

/// Inside an executor: waits until `done()` holds, looking every [`POLL_INTERVAL`], at most
/// `within`. Returns whether it holds (the caller asserts, with its own message).
pub async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if done() {
            return true;
        }
        if started.elapsed() >= within {
            return false;
        }
        ::glommio::timer::sleep(POLL_INTERVAL).await;
    }
}
