//! DSN parameters (RFC 3461) end to end: a real `petrel engine`, a real DNS server on loopback,
//! and the test kit's scripted SMTP server as every MX. A client injects with RET, ENVID,
//! NOTIFY and ORCPT over SMTP; the sink refuses one recipient and accepts another; the DSNs
//! Petrel writes come back to the same sink (the sender's MX) and are read there. A sink that
//! offers DSN is given the parameters on MAIL and RCPT.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use petrel_testkit::dns::{a, mx, DnsServer};
use petrel_testkit::smtp_server::{Script, SmtpServer, Txn};

/// The longest a test waits for mail to arrive.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(60);

fn dns() -> DnsServer {
    DnsServer::start(vec![
        mx("a.test.", 60, 10, "mx.a.test."),
        a("mx.a.test.", 60, "127.0.0.1"),
        mx("b.test.", 60, 10, "mx.b.test."),
        a("mx.b.test.", 60, "127.0.0.1"),
    ])
}

fn start_engine(dir: &std::path::Path, dns: SocketAddr, sink: SocketAddr) -> Engine {
    let config = format!(
        "[delivery]\nnameservers = [\"{dns}\"]\nsmtp_port = {}\nretry_initial_ms = 300\nretry_max_ms = 1000\n",
        sink.port()
    );
    Engine::start_with(
        dir,
        &["--shards", "1", "--trust-network", "127.0.0.0/8"],
        Some(&config),
    )
}

/// One transaction: MAIL with `mail_params`, each (recipient, RCPT parameters), the message.
fn inject(addr: SocketAddr, from: &str, mail_params: &str, rcpts: &[(&str, &str)], subject: &str) {
    let mut c = Smtp::connect(addr);
    assert_eq!(c.reply().0, 220);
    let (code, ehlo) = c.cmd("EHLO injector.test");
    assert_eq!(code, 250);
    assert!(ehlo.contains("DSN"), "DSN is offered: {ehlo}");
    let (code, text) = c.cmd(&format!("MAIL FROM:<{from}> {mail_params}"));
    assert_eq!(code, 250, "{text}");
    for (rcpt, params) in rcpts {
        let (code, text) = c.cmd(&format!("RCPT TO:<{rcpt}> {params}"));
        assert_eq!(code, 250, "{text}");
    }
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(message(from, rcpts[0].0, subject).as_bytes());
    c.send(b".\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    assert_eq!(c.cmd("QUIT").0, 221);
}

/// Waits until `pred` holds for what the sink accepted, bounded.
fn wait_until(sink: &SmtpServer, what: &str, pred: impl Fn(&[Txn]) -> bool) -> Vec<Txn> {
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    loop {
        let got = sink.received();
        if pred(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the sink has {got:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The DSNs the sink accepted (null sender), as text.
fn dsns(got: &[Txn]) -> Vec<String> {
    got.iter()
        .filter(|t| t.mail_from.is_empty())
        .map(Txn::text)
        .collect()
}

#[test]
fn dsn_parameters_shape_the_dsns_petrel_writes() {
    let dns = dns();
    // No DSN offered: Petrel reports, `perm*` recipients are refused (550 5.1.1).
    let sink = SmtpServer::start(Script::by_local_part());
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), dns.addr, sink.addr);
    inject(
        engine.smtp,
        "sender@a.test",
        "RET=HDRS ENVID=QQ+2B314",
        &[
            ("ok@b.test", "NOTIFY=SUCCESS ORCPT=rfc822;ok+2Borig@b.test"),
            (
                "perm-x@b.test",
                "NOTIFY=FAILURE,DELAY ORCPT=rfc822;x+2Borig@b.test",
            ),
            ("perm-never@b.test", "NOTIFY=NEVER"),
        ],
        "dsn-1",
    );
    let got = wait_until(&sink, "the DSN", |got| !dsns(got).is_empty());
    let delivered = got
        .iter()
        .find(|t| t.mail_from == "sender@a.test")
        .expect("ok@b.test accepted");
    assert_eq!(delivered.rcpts, ["ok@b.test"]);
    assert_eq!(
        (
            delivered.mail_params.as_str(),
            delivered.rcpt_params[0].as_str()
        ),
        ("", ""),
        "a sink without DSN is not given the parameters"
    );
    let all = dsns(&got);
    assert_eq!(all.len(), 1, "{all:#?}");
    let d = &all[0];
    assert!(d.contains("To: <sender@a.test>"), "{d}");
    assert!(d.contains("Original-Envelope-Id: QQ+314\r\n"), "{d}");
    assert!(
        d.contains(
            "Original-Recipient: rfc822; x+orig@b.test\r\n\
         Final-Recipient: rfc822; perm-x@b.test\r\nAction: failed\r\nStatus: 5.1.1"
        ),
        "{d}"
    );
    // NOTIFY=SUCCESS and a next hop without DSN: `relayed` (RFC 3461 §5.2.2).
    assert!(
        d.contains(
            "Original-Recipient: rfc822; ok+orig@b.test\r\n\
         Final-Recipient: rfc822; ok@b.test\r\nAction: relayed\r\nStatus: 2.0.0"
        ),
        "{d}"
    );
    assert!(!d.contains("perm-never@b.test"), "NOTIFY=NEVER: no report");
    assert!(d.contains("Content-Type: text/rfc822-headers"), "{d}");
    assert!(d.contains("Subject: dsn-1"));
    assert!(!d.contains("Hello."), "RET=HDRS: the headers only");

    // RET=FULL and no NOTIFY: a failure DSN as always, with the whole message.
    inject(
        engine.smtp,
        "sender@a.test",
        "RET=FULL",
        &[("perm-y@b.test", "")],
        "dsn-2",
    );
    let got = wait_until(&sink, "the second DSN", |got| dsns(got).len() >= 2);
    let all = dsns(&got);
    let full = all
        .iter()
        .find(|d| d.contains("perm-y@b.test"))
        .expect("a DSN for perm-y");
    assert!(full.contains("Content-Type: message/rfc822"), "{full}");
    assert!(full.contains("Hello."), "RET=FULL: the whole message");
    assert!(!full.contains("Original-Recipient"), "no ORCPT, no field");
    assert!(engine.stop());
}

#[test]
fn a_sink_offering_dsn_gets_the_parameters_and_petrel_does_not_report_success() {
    let dns = dns();
    let sink = SmtpServer::start(Script {
        dsn: true,
        ..Script::by_local_part()
    });
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), dns.addr, sink.addr);
    inject(
        engine.smtp,
        "sender@a.test",
        "RET=HDRS ENVID=QQ+2B314",
        &[
            (
                "ok@b.test",
                "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;ok+2Borig@b.test",
            ),
            ("plain@b.test", ""),
        ],
        "dsn-3",
    );
    let got = wait_until(&sink, "the delivery", |got| {
        got.iter().any(|t| t.mail_from == "sender@a.test")
    });
    let t = got
        .iter()
        .find(|t| t.mail_from == "sender@a.test")
        .expect("delivered");
    assert_eq!(t.mail_params, "RET=HDRS ENVID=QQ+2B314");
    assert_eq!(
        t.rcpt_params,
        ["NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;ok+2Borig@b.test", ""]
    );
    // A later refusal's DSN is the only DSN: none came for the success the sink took over.
    inject(
        engine.smtp,
        "sender@a.test",
        "",
        &[("perm-z@b.test", "")],
        "dsn-4",
    );
    let got = wait_until(&sink, "the refusal's DSN", |got| !dsns(got).is_empty());
    let all = dsns(&got);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(all[0].contains("perm-z@b.test") && !all[0].contains("ok@b.test"));
    assert!(engine.stop());
}
