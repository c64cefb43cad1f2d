//! A real DNS server on loopback (hickory-server, in-memory zone "test.") over UDP and TCP.
//! Shared with engine/outbound's tests (same helper).

#![allow(dead_code)] // each test binary uses a different part

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::rdata::{A, AAAA, MX, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;

pub const SERIAL: u32 = 1;
/// SOA minimum, which bounds the negative TTL.
pub const NEGATIVE_TTL_SECS: u32 = 2;

pub struct DnsServer {
    pub addr: SocketAddr,
    pub zone: Arc<InMemoryZoneHandler<TokioRuntimeProvider>>,
    /// Keeps the server's runtime (and so the server) alive; dropping it stops the server.
    runtime: tokio::runtime::Runtime,
}

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

pub fn record(owner: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name(owner), ttl, data)
}

pub fn a(owner: &str, ttl: u32, ip: &str) -> Record {
    let rdata = match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    record(owner, ttl, rdata)
}

pub fn mx(owner: &str, ttl: u32, preference: u16, exchange: &str) -> Record {
    record(owner, ttl, RData::MX(MX::new(preference, name(exchange))))
}

impl DnsServer {
    /// Starts the server with `records` in zone "test." (an SOA is added), on UDP and TCP.
    pub fn start(records: Vec<Record>) -> DnsServer {
        DnsServer::start_with(records, true)
    }

    /// As `start`; without `tcp` only UDP is served (to prove that truncated answers use TCP).
    pub fn start_with(records: Vec<Record>, tcp: bool) -> DnsServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let origin = name("test.");
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = SOA::new(
            name("ns.test."),
            name("hostmaster.test."),
            SERIAL,
            3600,
            600,
            86400,
            NEGATIVE_TTL_SECS,
        );
        zone.upsert_mut(record("test.", NEGATIVE_TTL_SECS, RData::SOA(soa)), SERIAL);
        for r in records {
            assert!(zone.upsert_mut(r, SERIAL));
        }
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        let handler: Arc<dyn ZoneHandler> = zone.clone();
        catalog.upsert(LowerName::new(&origin), vec![handler]);

        let tcp_enabled = tcp;
        let addr = runtime.block_on(async {
            // The same port for UDP and TCP; retry if another test holds the TCP side.
            for _ in 0..20 {
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let addr = udp.local_addr().unwrap();
                let Ok(tcp) = tokio::net::TcpListener::bind(addr).await else {
                    continue;
                };
                let mut server = Server::new(catalog);
                server.register_socket(udp);
                if tcp_enabled {
                    server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
                }
                tokio::spawn(async move {
                    let _ = server.block_until_done().await;
                });
                return addr;
            }
            panic!("no free UDP+TCP port pair");
        });
        DnsServer {
            addr,
            zone,
            runtime,
        }
    }

    /// Adds or replaces a record while the server runs.
    pub fn upsert(&self, r: Record) {
        let zone = self.zone.clone();
        self.runtime
            .block_on(async move { zone.upsert(r, SERIAL).await });
    }
}
