//! Whether a connection may carry several transactions in one write (issue 15: no duplicates
//! from lost replies). Pure: the caller passes the time.
//!
//! Pipelining whole transactions (`SmtpConnection::send_many`: up to 16 in one write) saves a
//! round trip per message, but when the server drops the connection partway, the replies it had
//! not flushed are lost with it: a transaction the server accepted looks failed and is sent
//! again. A server flushes its replies when its input runs dry, so a drop in the middle of a
//! write loses the replies of every transaction before it in that write. Measured
//! (`benches/bench-faults.sh`: 5 % of connections dropped in DATA, 30 % 451, 5 % 554): 20 % of
//! unique deliveries duplicated, Postfix 0 %.
//!
//! The trade: a host that dropped a connection in the middle of a transaction (its address, as
//! connected) gets one transaction per write for [`PIPELINE_PAUSE_AFTER_DROP_MS`]; the
//! transaction's own commands are still pipelined. Hosts that never drop keep the full
//! pipeline, so the relay's speed is unchanged; a dropping host costs a round trip per message
//! and at most one write's worth of duplicates per shard before the pause.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a host that dropped a connection mid-transaction gets one transaction per write.
pub const PIPELINE_PAUSE_AFTER_DROP_MS: u64 = 600_000;
/// Host addresses remembered per shard; past this, expired ones are forgotten first, then the
/// new drop is not remembered (that host keeps pipelining: a bounded table over a perfect one).
pub const PIPELINE_PAUSED_HOSTS_MAX: usize = 4_096;

/// The hosts (by address) that dropped a connection recently.
#[derive(Debug, Default)]
pub struct DropMemory {
    until: HashMap<SocketAddr, Instant>,
}

impl DropMemory {
    /// `addr` dropped a connection in the middle of a transaction at `now`.
    pub fn note_drop(&mut self, addr: SocketAddr, now: Instant) {
        if self.until.len() >= PIPELINE_PAUSED_HOSTS_MAX && !self.until.contains_key(&addr) {
            self.until.retain(|_, until| *until > now);
            if self.until.len() >= PIPELINE_PAUSED_HOSTS_MAX {
                return;
            }
        }
        let pause = Duration::from_millis(PIPELINE_PAUSE_AFTER_DROP_MS);
        self.until.insert(addr, now + pause);
    }

    /// Whether a connection to `addr` may put several transactions in one write at `now`.
    pub fn may_pipeline(&self, addr: SocketAddr, now: Instant) -> bool {
        self.until.get(&addr).is_none_or(|until| *until <= now)
    }

    /// Hosts remembered (expired ones included until the table fills).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 25))
    }

    #[test]
    fn a_dropping_host_gets_one_transaction_per_write_for_the_pause() {
        let mut m = DropMemory::default();
        let t0 = Instant::now();
        assert!(m.may_pipeline(addr(1), t0));
        m.note_drop(addr(1), t0);
        assert!(!m.may_pipeline(addr(1), t0 + Duration::from_secs(1)));
        assert!(m.may_pipeline(addr(2), t0), "other hosts keep pipelining");
        let after = t0 + Duration::from_millis(PIPELINE_PAUSE_AFTER_DROP_MS);
        assert!(m.may_pipeline(addr(1), after));
        // A later drop starts the pause again.
        m.note_drop(addr(1), after);
        assert!(!m.may_pipeline(addr(1), after + Duration::from_secs(1)));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_expired_hosts_first() {
        let mut m = DropMemory::default();
        let t0 = Instant::now();
        for i in 0..PIPELINE_PAUSED_HOSTS_MAX {
            let a = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 25));
            m.note_drop(a, t0);
        }
        assert_eq!(m.len(), PIPELINE_PAUSED_HOSTS_MAX);
        // Full of live entries: a new host is not remembered.
        m.note_drop(addr(9), t0);
        assert!(m.may_pipeline(addr(9), t0));
        assert_eq!(m.len(), PIPELINE_PAUSED_HOSTS_MAX);
        // Once they expired, the new one takes their place.
        let later = t0 + Duration::from_millis(PIPELINE_PAUSE_AFTER_DROP_MS + 1);
        m.note_drop(addr(9), later);
        assert_eq!(m.len(), 1);
        assert!(!m.may_pipeline(addr(9), later));
    }
}
