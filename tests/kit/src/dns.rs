//! A real DNS server on loopback (hickory-server, in-memory zone `test.`) over UDP and TCP.
//!
//! The zone is described as a list of records built with the helpers here ([`a`], [`mx`],
//! [`txt`], [`tlsa`], [`record`] for anything else); an SOA is added, whose minimum bounds
//! negative caching ([`NEGATIVE_TTL_SECS`]). Names outside `test.` are refused, as a real
//! authoritative server would. The server runs on its own tokio runtime thread, so tests on
//! glommio, on a tokio runtime of their own or on plain threads can all use it and change the
//! zone while it runs ([`DnsServer::upsert`], [`DnsServer::set_txt`]).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_proto::rr::rdata::{A, AAAA, MX, SOA, TLSA, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;

/// The zone every record lives in.
pub const ORIGIN: &str = "test.";
/// The zone's SOA serial (records are upserted under it).
pub const SERIAL: u32 = 1;
/// SOA minimum, which bounds the negative TTL.
pub const NEGATIVE_TTL_SECS: u32 = 2;
/// TTL of the TXT records [`DnsServer::set_txt`] publishes.
pub const SET_TXT_TTL_SECS: u32 = 60;
/// SOA refresh, retry and expire: secondaries' timers, unused on loopback but required.
const SOA_REFRESH_SECS: i32 = 3600;
const SOA_RETRY_SECS: i32 = 600;
const SOA_EXPIRE_SECS: i32 = 86400;
/// Attempts at finding a port free for both UDP and TCP.
const PORT_ATTEMPTS_MAX: usize = 20;
/// How long the TCP side waits for a client's query.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest DNS message over TCP.
const TCP_BUFFER_BYTES: usize = 64 * 1024;
/// Longest bytes of one TXT character-string (RFC 1035 §3.3).
const TXT_STRING_BYTES_MAX: usize = 255;

type Zone = InMemoryZoneHandler<TokioRuntimeProvider>;

/// A running DNS server; dropping it stops it.
pub struct DnsServer {
    /// Where it listens: the same port on UDP and TCP.
    pub addr: SocketAddr,
    zone: Arc<Zone>,
    /// The server's runtime; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

/// `s` as a fully qualified name (a missing final dot is added).
fn name(s: &str) -> Name {
    let fqdn = if s.ends_with('.') {
        s.to_string()
    } else {
        format!("{s}.")
    };
    Name::from_str(&fqdn).unwrap_or_else(|e| panic!("DNS name {s:?}: {e}"))
}

/// Any record.
pub fn record(owner: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name(owner), ttl, data)
}

/// An A or AAAA record, by the address's family.
pub fn a(owner: &str, ttl: u32, ip: &str) -> Record {
    let rdata = match ip.parse::<IpAddr>().expect("an IP address") {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    record(owner, ttl, rdata)
}

/// An MX record ("." as exchange: a null MX, RFC 7505).
pub fn mx(owner: &str, ttl: u32, preference: u16, exchange: &str) -> Record {
    record(owner, ttl, RData::MX(MX::new(preference, name(exchange))))
}

/// A TXT record holding `value`, split into character-strings of at most 255 bytes.
pub fn txt(owner: &str, ttl: u32, value: &str) -> Record {
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(TXT_STRING_BYTES_MAX)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    record(owner, ttl, RData::TXT(TXT::new(strings)))
}

/// A TLSA record (RFC 6698), e.g. `tlsa("_25._tcp.mx.a.test.", 60, 3, 1, 1, sha256)`.
pub fn tlsa(owner: &str, ttl: u32, usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Record {
    let rdata = TLSA::new(
        CertUsage::from(usage),
        Selector::from(selector),
        Matching::from(matching),
        data,
    );
    record(owner, ttl, RData::TLSA(rdata))
}

impl DnsServer {
    /// Starts the server with `records` in zone `test.` (an SOA is added), on UDP and TCP.
    pub fn start(records: Vec<Record>) -> DnsServer {
        DnsServer::start_with(records, true)
    }

    /// As `start`; without `tcp` only UDP is served (to prove that truncated answers use TCP).
    pub fn start_with(records: Vec<Record>, tcp: bool) -> DnsServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kit-dns")
            .enable_all()
            .build()
            .expect("DNS server runtime");
        let zone = Arc::new(zone_with(records));
        let mut catalog = Catalog::new();
        let handler: Arc<dyn ZoneHandler> = zone.clone();
        catalog.upsert(LowerName::new(&name(ORIGIN)), vec![handler]);
        // Spawned, not `block_on`: the caller may itself run inside a tokio runtime.
        let addr = wait_for(&runtime, async move {
            // The same port for UDP and TCP; retry if another test holds the TCP side.
            for _ in 0..PORT_ATTEMPTS_MAX {
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                    .await
                    .expect("bind UDP");
                let addr = udp.local_addr().expect("UDP address");
                let Ok(tcp_listener) = tokio::net::TcpListener::bind(addr).await else {
                    continue;
                };
                let mut server = Server::new(catalog);
                server.register_socket(udp);
                if tcp {
                    server.register_listener(tcp_listener, TCP_TIMEOUT, TCP_BUFFER_BYTES);
                }
                tokio::spawn(async move {
                    let _ = server.block_until_done().await;
                });
                return addr;
            }
            panic!("no free UDP+TCP port pair in {PORT_ATTEMPTS_MAX} attempts");
        });
        DnsServer {
            addr,
            zone,
            runtime: Some(runtime),
        }
    }

    /// Adds a record while the server runs (a record set of that name and type grows by it;
    /// an SOA or CNAME is replaced).
    pub fn upsert(&self, r: Record) {
        let zone = self.zone.clone();
        wait_for(self.runtime(), async move {
            assert!(zone.upsert(r, SERIAL).await, "record upserted");
        });
    }

    /// Replaces every TXT record at `owner` with one record per value (none: the name has no
    /// TXT records any more).
    pub fn set_txt(&self, owner: &str, values: &[&str]) {
        let records: Vec<Record> = values
            .iter()
            .map(|v| txt(owner, SET_TXT_TTL_SECS, v))
            .collect();
        let key = RrKey::new(LowerName::new(&name(owner)), RecordType::TXT);
        let zone = self.zone.clone();
        wait_for(self.runtime(), async move {
            zone.records_mut().await.remove(&key);
            for r in records {
                assert!(zone.upsert(r, SERIAL).await, "TXT record upserted");
            }
        });
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime lives until drop")
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Not a plain drop: that panics when the owner is dropped inside an async context.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Zone `test.` with its SOA and `records`.
fn zone_with(records: Vec<Record>) -> Zone {
    let mut zone = Zone::empty(name(ORIGIN), ZoneType::Primary, AxfrPolicy::Deny);
    let soa = SOA::new(
        name("ns.test."),
        name("hostmaster.test."),
        SERIAL,
        SOA_REFRESH_SECS,
        SOA_RETRY_SECS,
        SOA_EXPIRE_SECS,
        NEGATIVE_TTL_SECS,
    );
    zone.upsert_mut(record(ORIGIN, NEGATIVE_TTL_SECS, RData::SOA(soa)), SERIAL);
    for r in records {
        let shown = r.to_string();
        assert!(zone.upsert_mut(r, SERIAL), "record accepted: {shown}");
    }
    zone
}

/// Runs `fut` on the server's runtime and waits for its result on this thread. Unlike
/// `Runtime::block_on` this works from inside another runtime's task (the caller's thread just
/// blocks for the moment it takes).
fn wait_for<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .expect("the task on the DNS server runtime finished (it panicked otherwise)")
}
