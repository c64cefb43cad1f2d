//! The Redis side of the cluster-wide quotas (issue 19; the engine-side leases are
//! `petrel_policy::quota`). One task on the slow-path runtime takes the shards' grant requests,
//! runs one Lua script per request on a multiplexed connection (the requests of one turn go
//! out together, pipelined), and deposits what Redis granted. Each script is atomic in Redis,
//! so engines sharing it cannot both take the last grant:
//! - `RATE`: a token bucket per key in milli-tokens, refilled from Redis's own clock (`TIME`),
//!   so the engines' clocks do not matter; the burst is one second of the rate, as the local
//!   limiter's (`petrel_policy::rate`);
//! - `DAY`: a counter per key and UTC day, kept two days, so it survives engine restarts;
//! - `NEW_TENANT`: a sorted set of grant times per tenant, trimmed to the rolling window.
//!
//! A turn that fails or takes longer than `cluster.request_timeout_ms` puts the quotas in
//! fallback (each engine counts its share locally); a probe every `cluster.probe_interval_ms`
//! brings them back. Both changes are logged and `petrel_cluster_quota_fallback` shows the
//! state.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use petrel_policy::quota::{ClusterQuotas, Grant, GrantRequest, Limit};
use petrel_policy::rate::RateKey;
use petrel_policy::PolicyStore;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use crate::config::ClusterSection;
use crate::error::EngineError;

/// Requests sent to Redis in one turn, at most.
pub const QUOTA_REQUESTS_PER_TURN_MAX: usize = 256;
/// The credential holding the Redis password (`LoadCredential=petrel-redis-password:...`).
pub const REDIS_PASSWORD_CREDENTIAL: &str = "petrel-redis-password";
/// A day counter is kept this long in Redis (the day it counts and the next, for clock skew).
pub const DAY_KEY_TTL_SECS: u64 = 2 * 86_400;

pub const METRIC_FALLBACK: &str = "petrel_cluster_quota_fallback";
pub const METRIC_REQUESTS: &str = "petrel_cluster_quota_redis_requests_total";
pub const METRIC_ENGINES_LIVE: &str = "petrel_cluster_engines_live";
pub const METRIC_WAITS: &str = "petrel_cluster_quota_waits_total";

const RATE_SCRIPT: &str = r"
local rate = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local cap = rate * 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tok', 'ts')
local tok = tonumber(b[1])
local ts = tonumber(b[2])
if tok == nil or ts == nil then
  tok = cap
  ts = now
end
if now > ts then
  tok = math.min(cap, tok + (now - ts) * rate)
  ts = now
end
local grant = math.min(want, math.floor(tok / 1000))
tok = tok - grant * 1000
redis.call('HSET', KEYS[1], 'tok', tok, 'ts', ts)
redis.call('PEXPIRE', KEYS[1], 2000)
local wait = 0
if grant == 0 then
  wait = math.ceil((1000 - tok) / rate)
end
return {grant, wait}
";

const DAY_SCRIPT: &str = r"
local limit = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.max(0, math.min(want, limit - used))
if grant > 0 then
  redis.call('INCRBY', KEYS[1], grant)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {grant, 0}
";

const NEW_TENANT_SCRIPT: &str = r"
local max = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
local grant = math.max(0, math.min(want, max - n))
for i = 1, grant do
  redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. i)
end
redis.call('PEXPIRE', KEYS[1], window)
local wait = 0
if grant == 0 then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if oldest[2] then
    wait = tonumber(oldest[2]) + window - now
  end
end
return {grant, wait}
";

static RATE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RATE_SCRIPT));
static DAY: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(DAY_SCRIPT));
static NEW_TENANT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(NEW_TENANT_SCRIPT));

/// `cluster.redis_url` must be a plain `redis://` URL without a password.
pub fn check_url(url: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    if !url.starts_with("redis://") {
        return Err("must start with redis:// (TLS to Redis is not built in)".into());
    }
    let info = url
        .into_connection_info()
        .map_err(|e| format!("not a Redis URL: {e}"))?;
    if info.redis_settings().password().is_some() {
        return Err(
            "must not carry a password: use cluster.redis_password_file or the credential \
             petrel-redis-password"
                .into(),
        );
    }
    Ok(())
}

/// Attaches cluster quotas to `policy` and starts their driver on `runtime`, when
/// `cluster.redis_url` is set. Connecting happens in the background: until Redis answers, the
/// engine counts its share (fallback).
pub fn start(
    runtime: &tokio::runtime::Handle,
    cfg: &ClusterSection,
    policy: &Arc<PolicyStore>,
) -> Result<(), EngineError> {
    let Some(client) = client(cfg)? else {
        return Ok(());
    };
    let (quotas, requests) = ClusterQuotas::new();
    let quotas = Arc::new(quotas);
    policy.attach_cluster_quotas(Arc::clone(&quotas));
    let driver = Driver {
        client,
        conn: None,
        quotas,
        prefix: cfg.key_prefix.clone(),
        timeout: Duration::from_millis(cfg.request_timeout_ms),
        probe_interval: Duration::from_millis(cfg.probe_interval_ms),
        tag: format!("{:016x}", rand::random::<u64>()),
        seq: 0,
    };
    metrics::gauge!(METRIC_FALLBACK).set(0.0);
    // Both results exist from the start, so an alert on the first error can fire.
    metrics::counter!(METRIC_REQUESTS, "result" => "ok").increment(0);
    metrics::counter!(METRIC_REQUESTS, "result" => "error").increment(0);
    runtime.spawn(driver.run(requests));
    tracing::info!(prefix = %cfg.key_prefix, "cluster quotas on Redis");
    Ok(())
}

/// The Redis client of `cluster.redis_url` with the password from its file (or the
/// credential `petrel-redis-password`); None without a URL.
pub fn client(cfg: &ClusterSection) -> Result<Option<redis::Client>, EngineError> {
    use redis::IntoConnectionInfo;
    let Some(url) = &cfg.redis_url else {
        return Ok(None);
    };
    let bad = |message: String| EngineError::Config { message };
    let mut info = url
        .as_str()
        .into_connection_info()
        .map_err(|e| bad(format!("cluster.redis_url: {e}")))?;
    let password_file = cfg
        .redis_password_file
        .clone()
        .or_else(|| petrel_seal::secret_file::credential(REDIS_PASSWORD_CREDENTIAL));
    if let Some(path) = password_file {
        let password = petrel_seal::secret_file::read(&path)
            .map_err(|e| bad(format!("cluster.redis_password_file: {e}")))?;
        let settings = info.redis_settings().clone().set_password(password.trim());
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info)
        .map(Some)
        .map_err(|e| bad(format!("cluster.redis_url: {e}")))
}

struct Driver {
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    quotas: Arc<ClusterQuotas>,
    prefix: String,
    /// Bounds one turn (connecting included).
    timeout: Duration,
    probe_interval: Duration,
    /// Unique to this process: the new-tenant set's members are `<tag>:<seq>:<i>`.
    tag: String,
    seq: u64,
}

impl Driver {
    async fn run(mut self, mut requests: mpsc::Receiver<GrantRequest>) {
        let mut probe = tokio::time::interval(self.probe_interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut waits_seen = 0u64;
        loop {
            let first = tokio::select! {
                r = requests.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
                _ = probe.tick() => {
                    self.upkeep(&mut waits_seen).await;
                    continue;
                }
            };
            let mut turn = vec![first];
            while turn.len() < QUOTA_REQUESTS_PER_TURN_MAX {
                match requests.try_recv() {
                    Ok(r) => turn.push(r),
                    Err(_) => break,
                }
            }
            if self.quotas.in_fallback() {
                // Admissions count locally now; these were asked for before the switch.
                continue;
            }
            match tokio::time::timeout(self.timeout, self.serve(&turn)).await {
                Ok(Ok(grants)) => {
                    metrics::counter!(METRIC_REQUESTS, "result" => "ok")
                        .increment(turn.len() as u64);
                    let now = crate::clock::now_ms();
                    for (req, grant) in turn.iter().zip(grants) {
                        self.quotas.deposit(req, grant, now);
                    }
                }
                Ok(Err(e)) => self.fail(turn.len(), &e.to_string()),
                Err(_) => self.fail(turn.len(), "timed out"),
            }
        }
    }

    /// Every probe tick: metrics, and in fallback a probe of Redis.
    async fn upkeep(&mut self, waits_seen: &mut u64) {
        metrics::gauge!(METRIC_ENGINES_LIVE).set(f64::from(self.quotas.engines_live()));
        let waits = self.quotas.waits();
        metrics::counter!(METRIC_WAITS).increment(waits.saturating_sub(*waits_seen));
        *waits_seen = waits;
        if !self.quotas.in_fallback() {
            return;
        }
        let timeout = self.timeout;
        let ping = async {
            let conn = self.connection().await?;
            redis::cmd("PING").query_async::<String>(conn).await
        };
        if let Ok(Ok(_)) = tokio::time::timeout(timeout, ping).await {
            if self.quotas.recover() {
                metrics::gauge!(METRIC_FALLBACK).set(0.0);
                tracing::info!("Redis reachable again: cluster-wide quotas back on");
            }
        } else {
            self.conn = None;
        }
    }

    fn fail(&mut self, requests: usize, why: &str) {
        metrics::counter!(METRIC_REQUESTS, "result" => "error").increment(requests as u64);
        self.conn = None;
        if self.quotas.fail() {
            metrics::gauge!(METRIC_FALLBACK).set(1.0);
            tracing::warn!(
                error = why,
                engines_live = self.quotas.engines_live(),
                "Redis unreachable: each limit now counted locally at this engine's share \
                 (limit / live engines) until Redis answers"
            );
        }
    }

    async fn connection(&mut self) -> redis::RedisResult<&mut MultiplexedConnection> {
        if self.conn.is_none() {
            let conn = self.client.get_multiplexed_async_connection().await?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("invariant: set just above"))
    }

    /// One turn: every request's script, pipelined on the multiplexed connection.
    async fn serve(&mut self, turn: &[GrantRequest]) -> redis::RedisResult<Vec<Grant>> {
        let mut invocations = Vec::with_capacity(turn.len());
        for req in turn {
            self.seq += 1;
            invocations.push(self.invocation(req));
        }
        let conn = self.connection().await?.clone();
        let mut set = tokio::task::JoinSet::new();
        for (i, (script, keys, args)) in invocations.into_iter().enumerate() {
            let mut conn = conn.clone();
            set.spawn(async move {
                let mut inv = script.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                for a in &args {
                    inv.arg(a);
                }
                let r: redis::RedisResult<(u64, u64)> = inv.invoke_async(&mut conn).await;
                (i, r)
            });
        }
        let mut out = vec![
            Grant {
                granted: 0,
                retry_in_ms: 0,
            };
            turn.len()
        ];
        while let Some(joined) = set.join_next().await {
            let (i, r) = joined.map_err(|e| {
                redis::RedisError::from(std::io::Error::other(format!("quota task: {e}")))
            })?;
            let (granted, retry_in_ms) = r?;
            out[i] = Grant {
                granted: granted.min(turn[i].want),
                retry_in_ms,
            };
        }
        Ok(out)
    }

    /// The script, keys and arguments of one request.
    fn invocation(&self, req: &GrantRequest) -> (&'static redis::Script, Vec<String>, Vec<String>) {
        let scope = match &req.key.scope {
            RateKey::Tenant(t) => format!("{}t:{t}", self.prefix),
            RateKey::Domain(d) => format!("{}d:{d}", self.prefix),
        };
        let want = req.want.to_string();
        match req.limit {
            Limit::PerSecond(rate) => (
                &RATE,
                vec![format!("{scope}:rate")],
                vec![rate.max(1).to_string(), want],
            ),
            Limit::PerDay(limit) => (
                &DAY,
                vec![format!("{scope}:day:{}", req.day)],
                vec![limit.to_string(), want, DAY_KEY_TTL_SECS.to_string()],
            ),
            Limit::NewTenant(cap) => (
                &NEW_TENANT,
                vec![format!("{scope}:new")],
                vec![
                    cap.messages_max.to_string(),
                    cap.window_ms.max(1).to_string(),
                    want,
                    format!("{}:{}", self.tag, self.seq),
                ],
            ),
        }
    }
}
