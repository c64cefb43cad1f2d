//! Fleet-wide connection limits (issue 19): a destination connection limit the control plane
//! pushes holds for all engines sharing one Redis, not for each of them.
//!
//! Each engine leases connection slots per limited destination. One Lua script per
//! destination keeps, in a hash, every engine's record `held:desired:time` and grants this
//! engine at most the limit minus what the others hold, so the sum of the leases never passes
//! the limit. When the engines together want more than the limit, each is granted at most its
//! fair share (limit / engines wanting), and one that holds more gives the surplus back as its
//! connections close (its record keeps what it still holds until then). A record not renewed
//! within `FLEET_RECORD_STALE_MS` (a dead engine) is dropped by the next script that sees it.
//!
//! Every `FLEET_TICK_MS` the task renews the destinations whose sessions were refused by the
//! lease alone (`wanted`), and every `FLEET_RENEW_MS` all of them (heartbeat, and an idle engine
//! gives its slots back). A destination limited anew starts with no slots. While the cluster
//! quotas are in fallback (Redis unreachable) each engine takes the limit divided by the live
//! engines (at least 1), like the quotas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use petrel_delivery::GlobalLimits;
use petrel_policy::quota::ClusterQuotas;

use crate::config::ClusterSection;
use crate::error::EngineError;

/// How often destinations refused by their lease are renewed.
pub const FLEET_TICK_MS: u64 = 100;
/// How often every limited destination's lease is renewed.
pub const FLEET_RENEW_MS: u64 = 1_000;
/// A record older than this is a dead engine's (several renewals missed).
pub const FLEET_RECORD_STALE_MS: u64 = 5_000;
/// Destinations renewed in one turn, at most (the rest wait for the next turn).
pub const FLEET_DESTINATIONS_PER_TURN_MAX: usize = 1_024;

const LEASE_SCRIPT: &str = r"
local me = ARGV[1]
local max = tonumber(ARGV[2])
local desired = tonumber(ARGV[3])
local held = tonumber(ARGV[4])
local stale = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local others, others_desired, wanting = 0, 0, 0
for i = 1, #all, 2 do
  if all[i] ~= me then
    local h, d, ts = string.match(all[i + 1], '^(%d+):(%d+):(%d+)$')
    if h == nil or now - tonumber(ts) > stale then
      redis.call('HDEL', KEYS[1], all[i])
    else
      others = others + tonumber(h)
      others_desired = others_desired + tonumber(d)
      if tonumber(d) > 0 then
        wanting = wanting + 1
      end
    end
  end
end
local grant = math.max(0, math.min(desired, max - others))
if others_desired + desired > max then
  local fair = math.max(1, math.floor(max / (wanting + 1)))
  grant = math.min(grant, fair)
end
redis.call('HSET', KEYS[1], me, math.max(grant, held) .. ':' .. desired .. ':' .. now)
redis.call('PEXPIRE', KEYS[1], stale * 2)
return grant
";

/// Starts the lease task when the engine has both delivery and cluster quotas.
pub fn start(
    runtime: &tokio::runtime::Handle,
    cfg: &ClusterSection,
    limits: Arc<GlobalLimits>,
    quotas: Arc<ClusterQuotas>,
) -> Result<(), EngineError> {
    let Some(client) = crate::quota_redis::client(cfg)? else {
        return Ok(());
    };
    let task = Leases {
        client,
        conn: None,
        limits,
        quotas,
        prefix: cfg.key_prefix.clone(),
        timeout: Duration::from_millis(cfg.request_timeout_ms),
        me: format!("{:016x}", rand::random::<u64>()),
        script: redis::Script::new(LEASE_SCRIPT),
    };
    runtime.spawn(task.run());
    Ok(())
}

struct Leases {
    client: redis::Client,
    conn: Option<redis::aio::MultiplexedConnection>,
    limits: Arc<GlobalLimits>,
    quotas: Arc<ClusterQuotas>,
    prefix: String,
    timeout: Duration,
    /// This engine's field in every destination's hash.
    me: String,
    script: redis::Script,
}

impl Leases {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(FLEET_TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed = Instant::now();
        loop {
            tick.tick().await;
            let all = renewed.elapsed() >= Duration::from_millis(FLEET_RENEW_MS);
            if all {
                renewed = Instant::now();
            }
            let mut turn = Vec::new();
            for (domain, counters) in self.limits.fleet_destinations() {
                if turn.len() >= FLEET_DESTINATIONS_PER_TURN_MAX {
                    break;
                }
                let wanted = counters.take_wanted();
                if all || wanted {
                    turn.push((domain, counters, wanted));
                }
            }
            if turn.is_empty() {
                continue;
            }
            if self.quotas.in_fallback() {
                let engines = self.quotas.engines_live();
                for (_, c, _) in &turn {
                    c.set_fleet_cap((c.fleet_max() / engines).max(1));
                }
                continue;
            }
            match tokio::time::timeout(self.timeout, self.renew(&turn)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.fail(&e.to_string()),
                Err(_) => self.fail("timed out"),
            }
        }
    }

    fn fail(&mut self, why: &str) {
        self.conn = None;
        if self.quotas.fail() {
            tracing::warn!(
                error = why,
                "Redis unreachable: fleet connection limits now at this engine's share"
            );
        }
    }

    /// One script per destination, pipelined on the multiplexed connection.
    async fn renew(
        &mut self,
        turn: &[(
            String,
            Arc<petrel_delivery::limits::DestinationCounters>,
            bool,
        )],
    ) -> redis::RedisResult<()> {
        if self.conn.is_none() {
            self.conn = Some(self.client.get_multiplexed_async_connection().await?);
        }
        let conn = self.conn.clone().expect("invariant: set just above");
        let mut set = tokio::task::JoinSet::new();
        for (i, (domain, c, wanted)) in turn.iter().enumerate() {
            let held = c.connections();
            let desired = if *wanted { c.fleet_max() } else { held };
            let script = self.script.clone();
            let key = format!("{}c:{domain}", self.prefix);
            let (me, max) = (self.me.clone(), c.fleet_max());
            let mut conn = conn.clone();
            set.spawn(async move {
                let r: redis::RedisResult<u32> = script
                    .key(key)
                    .arg(me)
                    .arg(max)
                    .arg(desired)
                    .arg(held)
                    .arg(FLEET_RECORD_STALE_MS)
                    .invoke_async(&mut conn)
                    .await;
                (i, r)
            });
        }
        while let Some(joined) = set.join_next().await {
            let (i, r) = joined.map_err(|e| {
                redis::RedisError::from(std::io::Error::other(format!("lease task: {e}")))
            })?;
            turn[i].1.set_fleet_cap(r?);
        }
        Ok(())
    }
}
