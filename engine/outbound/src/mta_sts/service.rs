//! The MTA-STS thread: policy discovery (RFC 8461 §3 and §5) against the cache, proactive
//! refresh, and batched writes of the cache file.
//!
//! Discovery of one domain, as RFC 8461 lays it out:
//! 1. Look up `_mta-sts.<domain>` TXT. With a cached, unexpired policy whose `id` equals the
//!    record's, use the cached policy: no fetch.
//! 2. Otherwise (no cached policy, or the `id` changed) fetch the policy over HTTPS; on success
//!    cache it under the record's `id` and use it.
//! 3. If the fetch fails, or the TXT record is absent, invalid or its lookup fails, use the
//!    cached unexpired policy if there is one ("the absence of a usable TXT record is not by
//!    itself sufficient to remove a sender's previously cached policy", §3.1), else none.
//!
//! A fetch that failed for one `id` is not retried for [`MTA_STS_FETCH_RETRY_SECS`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::oneshot;

use super::cache::{PolicyCache, MTA_STS_FETCH_RETRY_SECS};
use super::dns::StsDns;
use super::fetch::{policy_host, FetchError, Fetcher};
use super::policy::{Mode, Policy};
use super::{lock, store, MtaStsError, WallClock};

/// Requests queued for the MTA-STS thread before callers wait for room (backpressure).
pub const MTA_STS_REQUEST_QUEUE_MAX: usize = 4096;
/// Discoveries the thread runs at once; further requests wait in the queue.
pub const MTA_STS_LOOKUPS_IN_FLIGHT_MAX: usize = 256;
/// Domains refreshed per refresh pass; the rest wait for the next pass.
pub const MTA_STS_REFRESH_BATCH_MAX: usize = 1024;
/// Longest a changed cache waits before it is written to disk.
pub const MTA_STS_CACHE_FLUSH_INTERVAL_MS: u64 = 1_000;

/// One request to the thread.
pub(super) enum Request {
    /// The policy to apply to `domain` (normalised).
    Policy {
        domain: String,
        reply: oneshot::Sender<Option<Arc<Policy>>>,
    },
    /// Refresh every domain due; the reply is how many policies were fetched anew.
    Refresh { reply: oneshot::Sender<usize> },
    /// Write the cache file now if it changed.
    Flush {
        reply: oneshot::Sender<Result<(), MtaStsError>>,
    },
}

/// Everything the thread's tasks share.
pub(super) struct Service {
    pub(super) dns: StsDns,
    pub(super) fetcher: Fetcher,
    pub(super) cache: Arc<Mutex<PolicyCache>>,
    pub(super) clock: Arc<dyn WallClock>,
    /// The cache file; `None`: memory only.
    pub(super) path: Option<PathBuf>,
    /// Orders writes of the cache file: a later snapshot is never overwritten by an older one.
    pub(super) writer: tokio::sync::Mutex<()>,
    /// Refresh pass period in milliseconds; 0: only on request.
    pub(super) refresh_tick_ms: u64,
}

/// Callers waiting for a discovery already under way, by domain.
type Followers = HashMap<String, Vec<oneshot::Sender<Option<Arc<Policy>>>>>;

impl Service {
    /// The thread's loop; returns (after a last flush) when every handle is gone.
    pub(super) async fn serve(self: Arc<Self>, requests: async_channel::Receiver<Request>) {
        let flusher = tokio::spawn(self.clone().flush_loop());
        let refresher = tokio::spawn(self.clone().refresh_loop());
        let permits = Arc::new(tokio::sync::Semaphore::new(MTA_STS_LOOKUPS_IN_FLIGHT_MAX));
        let followers: Arc<Mutex<Followers>> = Arc::default();
        while let Ok(request) = requests.recv().await {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break; // never closed
            };
            let service = self.clone();
            match request {
                Request::Policy { domain, reply } => {
                    {
                        let mut waiting = lock(&followers);
                        if let Some(list) = waiting.get_mut(&domain) {
                            list.push(reply);
                            continue;
                        }
                        waiting.insert(domain.clone(), Vec::new());
                    }
                    let followers = followers.clone();
                    tokio::spawn(async move {
                        // Should discovery panic, the guard still clears the followers' entry:
                        // they see a cancelled oneshot (no policy) and later requests start anew.
                        let mut guard = LeaderGuard {
                            domain: Some(domain.clone()),
                            followers: followers.clone(),
                        };
                        let answer = service.policy_for(&domain).await;
                        guard.domain = None;
                        let waiting = lock(&followers).remove(&domain).unwrap_or_default();
                        for r in waiting {
                            let _ = r.send(answer.clone());
                        }
                        let _ = reply.send(answer);
                        drop(permit);
                    });
                }
                Request::Refresh { reply } => {
                    tokio::spawn(async move {
                        let _ = reply.send(service.refresh_due().await);
                        drop(permit);
                    });
                }
                Request::Flush { reply } => {
                    tokio::spawn(async move {
                        let _ = reply.send(service.flush().await);
                        drop(permit);
                    });
                }
            }
        }
        flusher.abort();
        refresher.abort();
        if let Err(e) = self.flush().await {
            tracing::warn!(error = %e, "MTA-STS cache not saved at shutdown");
        }
    }

    /// Writes the cache when it changed, at most once per flush interval.
    async fn flush_loop(self: Arc<Self>) {
        let tick = Duration::from_millis(MTA_STS_CACHE_FLUSH_INTERVAL_MS);
        loop {
            tokio::time::sleep(tick).await;
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "MTA-STS cache not saved");
            }
        }
    }

    /// Runs a refresh pass every `refresh_tick_ms` (none when 0); a slow pass delays the next
    /// one, never lookups or flushes.
    async fn refresh_loop(self: Arc<Self>) {
        if self.refresh_tick_ms == 0 {
            return;
        }
        let tick = Duration::from_millis(self.refresh_tick_ms);
        loop {
            tokio::time::sleep(tick).await;
            self.refresh_due().await;
        }
    }

    /// Discovery of `domain` (see the module documentation).
    pub(super) async fn policy_for(&self, domain: &str) -> Option<Arc<Policy>> {
        let now = self.clock.now_unix_secs();
        let cached = lock(&self.cache).get(domain, now);
        let record = match self.dns.record(domain).await {
            Ok(record) => record,
            Err(e) => {
                if cached.is_some() {
                    tracing::debug!(domain, error = %e, "MTA-STS record unusable; cached policy applies");
                }
                count_lookup(if cached.is_some() { "cached" } else { "none" });
                return cached.map(|c| c.policy);
            }
        };
        if let Some(c) = cached.as_ref().filter(|c| c.id == record.id) {
            count_lookup("cached");
            return Some(c.policy.clone());
        }
        if lock(&self.cache).fetch_recently_failed(domain, &record.id, now) {
            count_lookup(if cached.is_some() { "stale" } else { "none" });
            return cached.map(|c| c.policy);
        }
        match self.fetch(domain).await {
            Ok(policy) => {
                let policy = Arc::new(policy);
                let now = self.clock.now_unix_secs();
                lock(&self.cache).insert(domain, &record.id, policy.clone(), now);
                count_lookup("fetched");
                Some(policy)
            }
            Err(e) => {
                tracing::warn!(domain, id = %record.id, error = %e, retry_secs = MTA_STS_FETCH_RETRY_SECS,
                    "MTA-STS policy fetch failed");
                lock(&self.cache).note_failure(domain, &record.id, now, e.report_failure());
                count_lookup(if cached.is_some() { "stale" } else { "none" });
                cached.map(|c| c.policy)
            }
        }
    }

    /// Refetches every policy due (RFC 8461 §3.3: refresh before expiry, even under an
    /// unchanged `id`, which restarts its `max_age`). Returns the policies fetched anew.
    pub(super) async fn refresh_due(&self) -> usize {
        let now = self.clock.now_unix_secs();
        let due = lock(&self.cache).due_for_refresh(now, MTA_STS_REFRESH_BATCH_MAX);
        let mut refreshed = 0;
        for domain in due {
            if self.refresh(&domain).await {
                refreshed += 1;
            }
        }
        refreshed
    }

    async fn refresh(&self, domain: &str) -> bool {
        let now = self.clock.now_unix_secs();
        let Some(cached) = lock(&self.cache).get(domain, now) else {
            return false; // expired or evicted since the pass began
        };
        // Alert on failure (RFC 8461 §3.3: "MTAs SHOULD alert administrators ... when such
        // attempts fail, unless the cached policy mode is 'none'"), keep the policy until it
        // expires, and try again later.
        let alert = |error: String| {
            metrics::counter!("petrel_mta_sts_refresh_failures_total").increment(1);
            if cached.policy.mode != Mode::None {
                tracing::warn!(
                    domain,
                    error,
                    "MTA-STS policy refresh failed; cached policy kept until it expires"
                );
            }
        };
        let record = match self.dns.record(domain).await {
            Ok(record) => record,
            Err(e) => {
                alert(e.to_string());
                lock(&self.cache).postpone_refresh(domain, now);
                return false;
            }
        };
        match self.fetch(domain).await {
            Ok(policy) => {
                let now = self.clock.now_unix_secs();
                lock(&self.cache).insert(domain, &record.id, Arc::new(policy), now);
                true
            }
            Err(e) => {
                alert(e.to_string());
                lock(&self.cache).note_failure(domain, &record.id, now, e.report_failure());
                false
            }
        }
    }

    /// Resolves the policy host and fetches its policy.
    async fn fetch(&self, domain: &str) -> Result<Policy, FetchError> {
        let host = policy_host(domain);
        let result = match self.dns.addrs(&host).await {
            Ok(addrs) => self.fetcher.fetch(domain, &addrs).await,
            Err(reason) => Err(FetchError::NoAddress { host, reason }),
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        metrics::counter!("petrel_mta_sts_fetches_total", "result" => label).increment(1);
        result
    }

    /// Writes the cache file if the cache changed since the last write.
    pub(super) async fn flush(&self) -> Result<(), MtaStsError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let _order = self.writer.lock().await;
        let bytes = {
            let mut cache = lock(&self.cache);
            if !cache.take_dirty() {
                return Ok(());
            }
            store::serialize(&cache)
        };
        let written = tokio::task::spawn_blocking(move || store::write_atomically(&path, &bytes))
            .await
            .map_err(|e| MtaStsError::Setup {
                reason: format!("cache writer task: {e}"),
            })?;
        if written.is_err() {
            // Not saved: try again at the next flush.
            let mut cache = lock(&self.cache);
            cache.mark_dirty();
        }
        Ok(written?)
    }
}

fn count_lookup(outcome: &'static str) {
    metrics::counter!("petrel_mta_sts_lookups_total", "outcome" => outcome).increment(1);
}

/// Removes a domain's followers entry when its leader task ends, however it ends.
struct LeaderGuard {
    /// `None` once the leader removed the entry itself.
    domain: Option<String>,
    followers: Arc<Mutex<Followers>>,
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if let Some(domain) = self.domain.take() {
            lock(&self.followers).remove(&domain);
        }
    }
}
