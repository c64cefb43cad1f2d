//! The loopback DNS server: records as described, TXT replaced while running, usable from
//! inside a tokio runtime.

use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use petrel_testkit::dns::{a, mx, tlsa, txt, DnsServer};

/// How long one test query may wait for its answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest UDP answer read.
const ANSWER_MAX_BYTES: usize = 4096;

/// One UDP query; the response code and the answers' data.
fn query(server: SocketAddr, name: &str, rtype: RecordType) -> (ResponseCode, Vec<RData>) {
    let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_str(name).expect("name"), rtype));
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(QUERY_TIMEOUT)).expect("timeout");
    sock.send_to(&msg.to_vec().expect("encode"), server)
        .expect("send");
    let mut buf = vec![0u8; ANSWER_MAX_BYTES];
    let n = sock.recv(&mut buf).expect("an answer");
    let answer = Message::from_vec(&buf[..n]).expect("decode");
    let data = answer.answers.iter().map(|r| r.data.clone()).collect();
    (answer.metadata.response_code, data)
}

fn txt_values(data: &[RData]) -> Vec<String> {
    data.iter()
        .filter_map(|d| match d {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[test]
fn serves_described_records_and_replaces_txt() {
    let long = "k".repeat(300);
    let dns = DnsServer::start(vec![
        mx("m.test.", 60, 10, "mx.m.test."),
        a("mx.m.test.", 60, "127.0.0.1"),
        a("mx.m.test.", 60, "::1"),
        txt("t.test", 60, &long),
        tlsa("_25._tcp.mx.m.test.", 60, 3, 1, 1, vec![0xab; 32]),
    ]);
    assert_eq!(query(dns.addr, "m.test.", RecordType::MX).1.len(), 1);
    assert_eq!(query(dns.addr, "mx.m.test.", RecordType::A).1.len(), 1);
    assert_eq!(query(dns.addr, "mx.m.test.", RecordType::AAAA).1.len(), 1);
    assert_eq!(
        query(dns.addr, "_25._tcp.mx.m.test.", RecordType::TLSA)
            .1
            .len(),
        1
    );
    assert_eq!(
        txt_values(&query(dns.addr, "t.test.", RecordType::TXT).1),
        [long]
    );
    dns.set_txt("T.test", &["v=spf1 -all", "other"]);
    let mut now = txt_values(&query(dns.addr, "t.test.", RecordType::TXT).1);
    now.sort();
    assert_eq!(now, ["other", "v=spf1 -all"], "replaced, not added to");
    dns.set_txt("t.test", &[]);
    let (code, data) = query(dns.addr, "t.test.", RecordType::TXT);
    assert!(data.is_empty(), "{code:?} {data:?}");
    assert_eq!(
        query(dns.addr, "missing.test.", RecordType::TXT).0,
        ResponseCode::NXDomain
    );
    assert_eq!(
        query(dns.addr, "elsewhere.example.", RecordType::TXT).0,
        ResponseCode::Refused
    );
}

/// The control plane's tests start, change and drop it inside their own runtime.
#[tokio::test]
async fn starts_changes_and_stops_inside_a_tokio_runtime() {
    let dns = DnsServer::start(Vec::new());
    dns.set_txt("x.test", &["hello"]);
    let addr = dns.addr;
    let answer = tokio::task::spawn_blocking(move || query(addr, "x.test.", RecordType::TXT))
        .await
        .expect("query task");
    assert_eq!(txt_values(&answer.1), ["hello"]);
    drop(dns);
}
