//! Backpressure: the engine-wide bounds on connections, spool, memory and queue.
//!
//! Shared by every shard (atomics and one small mutex for per-IP counts). A refusal is a value the
//! session turns into exactly one SMTP reply: `421 4.3.2` at connect, `452 4.3.1` at MAIL/DATA.
//! Nothing here sleeps or queues: when the pressure goes away, the next check passes by itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::LimitsSection;

/// Why the engine refuses work right now. Mapped to a reply in [`Refusal::reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ConnectionsTotal,
    ConnectionsPerIp,
    SpoolMessages,
    SpoolBytes,
    Memory,
    Queue,
    SpoolUnhealthy,
    /// The control plane has not acknowledged `events.backlog_bytes_max` of events.
    EventBacklogFull,
}

impl Refusal {
    /// The metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::ConnectionsTotal => "connections_total",
            Refusal::ConnectionsPerIp => "connections_per_ip",
            Refusal::SpoolMessages => "spool_messages",
            Refusal::SpoolBytes => "spool_bytes",
            Refusal::Memory => "memory",
            Refusal::Queue => "queue",
            Refusal::SpoolUnhealthy => "spool_unhealthy",
            Refusal::EventBacklogFull => "event_backlog_full",
        }
    }

    /// The SMTP reply: 421 at connect time, 452 for a transaction.
    pub fn reply(self) -> petrel_smtp::Reply {
        match self {
            Refusal::ConnectionsTotal | Refusal::ConnectionsPerIp => {
                petrel_smtp::Reply::new(421, (4, 3, 2), "Too many connections, try again later")
            }
            Refusal::SpoolUnhealthy => {
                petrel_smtp::Reply::new(452, (4, 3, 1), "Spool unavailable, try again later")
            }
            Refusal::EventBacklogFull => {
                petrel_smtp::Reply::new(452, (4, 3, 1), "Event backlog full, try again later")
            }
            _ => petrel_smtp::Reply::new(
                452,
                (4, 3, 1),
                "Insufficient system storage, try again later",
            ),
        }
    }
}

/// Per-shard published figures, summed on read.
#[derive(Default)]
struct ShardSlot {
    spool_messages: AtomicU64,
    spool_bytes: AtomicU64,
    queued_recipients: AtomicU64,
}

pub struct Pressure {
    limits: LimitsSection,
    connections: AtomicU64,
    /// Open connections per client address; entries are removed at zero, so the map is bounded
    /// by `connections_max`.
    per_ip: Mutex<HashMap<IpAddr, u64>>,
    /// Bytes of message data held by sessions between end-of-data and the spool's answer.
    memory_in_flight_bytes: AtomicU64,
    shards: Vec<ShardSlot>,
    /// The durable event backlog, when the engine has a control plane.
    events: Option<Arc<petrel_policy::Outbox>>,
}

impl Pressure {
    pub fn new(
        limits: LimitsSection,
        shard_count: usize,
        events: Option<Arc<petrel_policy::Outbox>>,
    ) -> Arc<Pressure> {
        Arc::new(Pressure {
            limits,
            connections: AtomicU64::new(0),
            per_ip: Mutex::new(HashMap::new()),
            memory_in_flight_bytes: AtomicU64::new(0),
            shards: (0..shard_count).map(|_| ShardSlot::default()).collect(),
            events,
        })
    }

    /// Admits a new connection or says why not. The permit releases on drop.
    pub fn admit_connection(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let prev = self.connections.fetch_add(1, Ordering::AcqRel);
        if prev >= self.limits.connections_max {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::ConnectionsTotal);
        }
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.limits.connections_per_ip_max {
            drop(map);
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::ConnectionsPerIp);
        }
        *n += 1;
        Ok(ConnectionPermit {
            pressure: Arc::clone(self),
            ip,
        })
    }

    /// May a new transaction start (MAIL) or a message be taken (DATA)?
    pub fn admit_transaction(&self) -> Result<(), Refusal> {
        let (msgs, bytes, queued) = self.totals();
        if msgs >= self.limits.spool_messages_max {
            return Err(Refusal::SpoolMessages);
        }
        if bytes >= self.limits.spool_bytes_max {
            return Err(Refusal::SpoolBytes);
        }
        if queued >= self.limits.queued_recipients_max {
            return Err(Refusal::Queue);
        }
        if self.memory_in_flight_bytes.load(Ordering::Acquire)
            >= self.limits.memory_in_flight_max_bytes
        {
            return Err(Refusal::Memory);
        }
        if self.events.as_ref().is_some_and(|o| o.is_full()) {
            return Err(Refusal::EventBacklogFull);
        }
        Ok(())
    }

    /// Accounts message bytes held in memory until the permit drops.
    pub fn hold_memory(self: &Arc<Self>, bytes: u64) -> MemoryPermit {
        self.memory_in_flight_bytes
            .fetch_add(bytes, Ordering::AcqRel);
        MemoryPermit {
            pressure: Arc::clone(self),
            bytes,
        }
    }

    /// A shard publishes its spool and queue figures after each change.
    pub fn publish(&self, shard: usize, spool_messages: u64, spool_bytes: u64, queued: u64) {
        if let Some(s) = self.shards.get(shard) {
            s.spool_messages.store(spool_messages, Ordering::Release);
            s.spool_bytes.store(spool_bytes, Ordering::Release);
            s.queued_recipients.store(queued, Ordering::Release);
        }
    }

    /// (spool messages, spool bytes, queued recipients) across shards.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.shards.iter().fold((0, 0, 0), |(m, b, q), s| {
            (
                m + s.spool_messages.load(Ordering::Acquire),
                b + s.spool_bytes.load(Ordering::Acquire),
                q + s.queued_recipients.load(Ordering::Acquire),
            )
        })
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }
}

pub struct ConnectionPermit {
    pressure: Arc<Pressure>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut map = self
            .pressure
            .per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
        drop(map);
        self.pressure.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct MemoryPermit {
    pressure: Arc<Pressure>,
    bytes: u64,
}

impl Drop for MemoryPermit {
    fn drop(&mut self) {
        self.pressure
            .memory_in_flight_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsSection {
        LimitsSection {
            connections_max: 3,
            connections_per_ip_max: 2,
            spool_messages_max: 10,
            spool_bytes_max: 1000,
            memory_in_flight_max_bytes: 100,
            queued_recipients_max: 5,
        }
    }

    #[test]
    fn connection_limits_hold_and_recover() {
        let p = Pressure::new(limits(), 2, None);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = p.admit_connection(a).unwrap();
        let _p2 = p.admit_connection(a).unwrap();
        assert_eq!(p.admit_connection(a).err(), Some(Refusal::ConnectionsPerIp));
        let _p3 = p.admit_connection(b).unwrap();
        assert_eq!(p.admit_connection(b).err(), Some(Refusal::ConnectionsTotal));
        drop(p1);
        let _p4 = p.admit_connection(b).unwrap();
        assert_eq!(p.connections(), 3);
    }

    #[test]
    fn transaction_limits_sum_shards_and_recover() {
        let p = Pressure::new(limits(), 2, None);
        assert!(p.admit_transaction().is_ok());
        p.publish(0, 6, 10, 0);
        p.publish(1, 4, 10, 0);
        assert_eq!(p.admit_transaction(), Err(Refusal::SpoolMessages));
        p.publish(1, 0, 10, 5);
        assert_eq!(p.admit_transaction(), Err(Refusal::Queue));
        p.publish(1, 0, 10, 0);
        assert!(p.admit_transaction().is_ok());
        let m = p.hold_memory(100);
        assert_eq!(p.admit_transaction(), Err(Refusal::Memory));
        drop(m);
        assert!(p.admit_transaction().is_ok());
        assert_eq!(Refusal::Memory.reply().code, 452);
        assert_eq!(Refusal::ConnectionsTotal.reply().code, 421);
    }

    #[test]
    fn a_full_event_backlog_refuses_transactions_until_acknowledged() {
        let dir = std::env::temp_dir().join(format!("petrel-pressure-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let outbox = Arc::new(petrel_policy::Outbox::open(&dir, 4096, 1).unwrap());
        let p = Pressure::new(limits(), 2, Some(Arc::clone(&outbox)));
        assert!(p.admit_transaction().is_ok());
        let seq = outbox.append(&vec![b' '; 5000], 1).unwrap();
        outbox.sync().unwrap();
        assert_eq!(p.admit_transaction(), Err(Refusal::EventBacklogFull));
        let r = Refusal::EventBacklogFull.reply();
        assert_eq!((r.code, r.enhanced), (452, Some((4, 3, 1))));
        outbox.ack(seq).unwrap();
        assert!(p.admit_transaction().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
