//! Group commit: one fdatasync covers every write that finished while the previous one ran.
//!
//! Pure async bookkeeping (no glommio): a writer takes a ticket once its write has completed,
//! or once its record waits in a batch that every sync writes before it syncs (`sync_dirty`);
//! ticket `n` means "covered once sync number `n` has finished", and `n` is always the first
//! sync that has not started yet. Whoever finds no sync running leads the next one; everyone else
//! waits for it. While a sync runs, new writers pile up behind it and the next leader covers
//! them all with one call, so the number of syncs tracks the disk's latency, not the store rate.
//!
//! Under load the leader may hold its sync open for a short window first (PostgreSQL's
//! `commit_delay`): only when the previous group had at least [`COMMIT_WINDOW_GROUP_MIN`]
//! writers, so a lone client never waits for it. Writers arriving during the window take this
//! sync's ticket, and fewer, larger groups cost less CPU per message (an fdatasync is a worker
//! thread hop and a device flush). The window ends early once the group is as large as the
//! previous one: with a steady set of clients that wait for each reply, that is everyone, and
//! waiting longer would not grow it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::pin;
use std::task::{Poll, Waker};
use std::time::Instant;

use crate::types::SyncSample;

/// The previous group must have had this many writers for the next sync to wait for its
/// window: below it the spool is not busy enough for a wait to gather more. Three, not more:
/// twenty sessions that each wait for their reply (`smtp-source -d`) make groups of three to
/// five per shard without a window, and an fdatasync per three messages costs more CPU than
/// the messages' own SMTP.
pub const COMMIT_WINDOW_GROUP_MIN: u64 = 3;

/// Rounds held for the shard's metrics until it drains them (every 100 ms): a shard would need
/// 40,000 rounds a second to fill it. Past it, rounds are counted but not kept.
pub const SYNC_SAMPLES_MAX: usize = 4_096;

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
    /// Tickets handed out for the sync that has not started yet.
    pending_tickets: Cell<u64>,
    /// Tickets the last started sync covered (its group's size).
    last_group: Cell<u64>,
    /// The leader waiting in its window: woken by each new ticket to see whether the group has
    /// grown to the previous one's size.
    window_waker: RefCell<Option<Waker>>,
    /// Rounds not yet drained for metrics, at most [`SYNC_SAMPLES_MAX`].
    samples: RefCell<Vec<SyncSample>>,
    /// Rounds not kept because `samples` was full.
    samples_dropped: Cell<u64>,
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
    /// Forgets a failed sync: the spool healed into a new segment (`health.rs`).
    pub(crate) fn clear_failure(&self) {
        self.failed.set(false);
    }

    /// Fails every wait from now on, as a failed sync does (a sync abandoned in a state that
    /// cannot be put back: `batch.rs`).
    pub(crate) fn fail(&self) {
        self.failed.set(true);
    }

    /// What a failed sync leaves, for tests.
    #[cfg(test)]
    pub(crate) fn fail_for_test(&self) {
        self.failed.set(true);
    }

    pub(crate) fn commits(&self) -> u64 {
        self.started.get()
    }

    /// Keeps one round for the metrics, while there is room.
    fn note_round(&self, duration: std::time::Duration, writers: u64) {
        let mut samples = self.samples.borrow_mut();
        if samples.len() < SYNC_SAMPLES_MAX {
            samples.push(SyncSample { duration, writers });
        } else {
            self.samples_dropped.set(self.samples_dropped.get() + 1);
        }
    }

    /// Hands every kept round to `f` and forgets it; returns the rounds dropped since the last
    /// drain because none drained them in time.
    pub(crate) fn drain_samples(&self, mut f: impl FnMut(SyncSample)) -> u64 {
        let samples = std::mem::take(&mut *self.samples.borrow_mut());
        for s in samples {
            f(s);
        }
        self.samples_dropped.replace(0)
    }

    /// The ticket for a write that has just completed (or a record the next sync writes first):
    /// the next sync to start covers it.
    pub(crate) fn ticket(&self) -> u64 {
        self.pending_tickets.set(self.pending_tickets.get() + 1);
        if let Some(leader) = self.window_waker.borrow_mut().take() {
            leader.wake();
        }
        self.started.get() + 1
    }

    /// Returns once sync `ticket` has finished, running it (via `sync`) if nobody else is. A
    /// leader first awaits `window(size of the previous group)` when it gives a future.
    pub(crate) async fn wait<E, F, Fut, W, WFut>(
        &self,
        ticket: u64,
        sync: F,
        window: W,
    ) -> Result<(), CommitError<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), E>>,
        W: Fn(u64) -> Option<WFut>,
        WFut: Future<Output = ()>,
    {
        loop {
            if self.failed.get() {
                return Err(CommitError::Failed);
            }
            if self.finished.get() >= ticket {
                return Ok(());
            }
            if !self.running.get() {
                self.running.set(true);
                let guard = LeaderGuard { gc: self };
                // Under load, hold the sync open a little: writers of the window take this
                // sync's ticket and it covers them too (fewer, larger groups).
                let target = self.last_group.get();
                if let Some(pause) = window(target) {
                    // Until the window ends or the group is as large as the last one.
                    let mut pause = pin!(pause);
                    std::future::poll_fn(|cx| {
                        if self.pending_tickets.get() >= target
                            || pause.as_mut().poll(cx).is_ready()
                        {
                            return Poll::Ready(());
                        }
                        *self.window_waker.borrow_mut() = Some(cx.waker().clone());
                        Poll::Pending
                    })
                    .await;
                    self.window_waker.borrow_mut().take();
                }
                let n = self.started.get() + 1;
                self.started.set(n);
                let writers = self.pending_tickets.replace(0);
                self.last_group.set(writers);
                let began = Instant::now();
                let result = sync().await;
                self.note_round(began.elapsed(), writers);
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

/// Ends the leader's turn even if its future is dropped mid-sync, so followers never hang: one
/// of them leads the next sync, which covers the files the dropped one took (`batch.rs`,
/// `GiveBack`), and only then are they released.
struct LeaderGuard<'a> {
    gc: &'a GroupCommit,
}

/// True when the group that just synced was large enough for the next sync to wait for its
/// window.
pub(crate) fn window_applies(last_group: u64) -> bool {
    last_group >= COMMIT_WINDOW_GROUP_MIN
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    fn run<F: Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::default()
            .spawn(f)
            .expect("executor")
            .join()
            .expect("join");
    }

    /// One writer: takes a ticket and waits until a sync (counted in `syncs`) covers it; as a
    /// leader whose window applies, it first awaits `pause()`.
    async fn write_and_wait<P, PFut>(gc: Rc<GroupCommit>, syncs: Rc<Cell<u32>>, pause: P)
    where
        P: Fn() -> PFut,
        PFut: Future<Output = ()>,
    {
        let t = gc.ticket();
        let sync = || {
            syncs.set(syncs.get() + 1);
            async { Ok::<(), ()>(()) }
        };
        let window = |last: u64| window_applies(last).then(&pause);
        gc.wait(t, sync, window).await.expect("synced");
    }

    #[test]
    fn under_load_writers_arriving_in_the_window_join_the_sync_about_to_start() {
        run(|| async {
            let gc = Rc::new(GroupCommit::default());
            gc.last_group.set(COMMIT_WINDOW_GROUP_MIN);
            let syncs = Rc::new(Cell::new(0u32));
            let wait = |gc, syncs| {
                write_and_wait(gc, syncs, || {
                    glommio::timer::sleep(Duration::from_millis(30))
                })
            };
            let leader = glommio::spawn_local(wait(gc.clone(), syncs.clone()));
            glommio::timer::sleep(Duration::from_millis(5)).await;
            let late = glommio::spawn_local(wait(gc.clone(), syncs.clone()));
            leader.await;
            late.await;
            assert_eq!(syncs.get(), 1, "one sync covered both");
            assert_eq!(gc.last_group.get(), 2);
            assert_eq!(gc.commits(), 1);
        });
    }

    #[test]
    fn the_window_ends_once_the_group_is_as_large_as_the_last_one() {
        run(|| async {
            let gc = Rc::new(GroupCommit::default());
            gc.last_group.set(COMMIT_WINDOW_GROUP_MIN + 1);
            let syncs = Rc::new(Cell::new(0u32));
            // A window that never ends by itself: only the group's size can end it.
            let wait = |gc, syncs| write_and_wait(gc, syncs, std::future::pending::<()>);
            let mut writers = Vec::new();
            for _ in 0..COMMIT_WINDOW_GROUP_MIN {
                writers.push(glommio::spawn_local(wait(gc.clone(), syncs.clone())));
                glommio::timer::sleep(Duration::from_millis(2)).await;
            }
            assert_eq!(syncs.get(), 0, "the group is one short: the window holds");
            writers.push(glommio::spawn_local(wait(gc.clone(), syncs.clone())));
            glommio::timer::timeout(Duration::from_secs(30), async {
                for w in writers {
                    w.await;
                }
                Ok(())
            })
            .await
            .expect("the last writer ended the window");
            assert_eq!(syncs.get(), 1, "one sync covered them all");
            assert_eq!(gc.last_group.get(), COMMIT_WINDOW_GROUP_MIN + 1);
        });
    }

    #[test]
    fn rounds_are_kept_for_metrics_up_to_the_bound() {
        let gc = GroupCommit::default();
        for i in 0..SYNC_SAMPLES_MAX as u64 + 5 {
            gc.note_round(Duration::from_micros(i), i);
        }
        let mut seen = Vec::new();
        let dropped = gc.drain_samples(|s| seen.push(s));
        assert_eq!(seen.len(), SYNC_SAMPLES_MAX);
        assert_eq!(dropped, 5);
        assert_eq!(seen[3].writers, 3);
        assert_eq!(gc.drain_samples(|_| panic!("drained already")), 0);
    }

    #[test]
    fn a_small_group_syncs_at_once() {
        run(|| async {
            let gc = GroupCommit::default();
            let asked = Cell::new(None);
            let paused = Cell::new(false);
            let t = gc.ticket();
            let window = |last: u64| {
                asked.set(Some(last));
                window_applies(last).then_some(async { paused.set(true) })
            };
            gc.wait(t, || async { Ok::<(), ()>(()) }, window)
                .await
                .expect("synced");
            assert_eq!(asked.get(), Some(0));
            assert!(!paused.get(), "no window for a small group");
            assert_eq!(gc.last_group.get(), 1);
        });
    }
}
