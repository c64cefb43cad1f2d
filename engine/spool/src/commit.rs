//! Group commit: one fdatasync covers every write that finished while the previous one ran.
//!
//! Pure async bookkeeping (no glommio): a writer takes a ticket after its write has completed;
//! ticket `n` means "covered once sync number `n` has finished", and `n` is always the first sync
//! that has not started yet. Whoever finds no sync running leads the next one; everyone else
//! waits for it. While a sync runs, new writers pile up behind it and the next leader covers
//! them all with one call, so the number of syncs tracks the disk's latency, not the store rate.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::task::{Poll, Waker};

/// Shared by every writer of one spool (single-threaded: lives on one executor).
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    /// Syncs started so far; the running one (if any) has this number.
    started: Cell<u64>,
    /// Highest sync number that has finished (successfully or not); `finished <= started`.
    finished: Cell<u64>,
    /// A sync is in progress.
    running: Cell<bool>,
    /// Set for good after a failed sync: nothing written before it can be trusted to be durable.
    failed: Cell<bool>,
    /// Tasks waiting for the running sync to end. Bounded by the number of concurrent writers.
    waiters: RefCell<Vec<Waker>>,
}

/// Why a wait for durability failed.
#[derive(Debug)]
pub(crate) enum CommitError<E> {
    /// The sync this caller led failed.
    Sync(E),
    /// An earlier sync failed; the spool no longer promises durability.
    Failed,
}

impl GroupCommit {
    /// Syncs started so far (one per fdatasync round).
    pub(crate) fn commits(&self) -> u64 {
        self.started.get()
    }

    /// The ticket for a write that has just completed: the next sync to start covers it.
    pub(crate) fn ticket(&self) -> u64 {
        self.started.get() + 1
    }

    /// Returns once sync `ticket` has finished, running it (via `sync`) if nobody else is.
    pub(crate) async fn wait<E, F, Fut>(&self, ticket: u64, sync: F) -> Result<(), CommitError<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        loop {
            if self.failed.get() {
                return Err(CommitError::Failed);
            }
            if self.finished.get() >= ticket {
                return Ok(());
            }
            if !self.running.get() {
                let n = self.started.get() + 1;
                self.started.set(n);
                self.running.set(true);
                let guard = LeaderGuard { gc: self };
                let result = sync().await;
                if result.is_err() {
                    self.failed.set(true);
                }
                self.finished.set(n);
                drop(guard);
                result.map_err(CommitError::Sync)?;
                continue;
            }
            std::future::poll_fn(|cx| {
                if !self.running.get() || self.finished.get() >= ticket {
                    Poll::Ready(())
                } else {
                    self.waiters.borrow_mut().push(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
        }
    }
}

/// Ends the leader's turn even if its future is dropped mid-sync, so followers never hang.
struct LeaderGuard<'a> {
    gc: &'a GroupCommit,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        self.gc.running.set(false);
        let waiters = std::mem::take(&mut *self.gc.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }
}
