//! The return-path intake end to end (issue 14): a real control plane with a bounce domain, a
//! real engine relaying a tenant's mail to a real sink (which sees a VERP return path per
//! recipient) and listening on its intake port, and a real SMTP client sending what comes back:
//! an asynchronous DSN and an ARF report become `bounced` (async) and `complained` events at
//! `GET /v1/events` and rows at `GET /v1/suppressions`, of the recipient the return path (or,
//! without one, the original's Message-ID) leads to, whatever address the report names; a gzip'd DMARC aggregate report becomes
//! `dmarc_report` events; a forged token is refused at RCPT; a 10 MB report, a zip bomb and a
//! malformed ARF report are each refused with their code.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::control::{api, mailer, provision, start_control_with};
use common::*;
use lettre::Transport;
use petrel_testkit::dns::DnsServer;
use petrel_testkit::smtp_server::{Script, SmtpServer};
use serde_json::Value;

const DOMAIN: &str = "intake.test";
const BOUNCE_DOMAIN: &str = "bounce.intake.test";
const FBL: &str = "fbl@reports.intake.test";
const RUA: &str = "dmarc@reports.intake.test";
const TOKEN: &str = "intake-push-token-0123456789";
/// Upper bound on any wait (mail at the sink, events at the control plane).
const WAIT_MAX: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `f` until it returns `Some`, at most [`WAIT_MAX`].
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT_MAX:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn events(api_addr: SocketAddr, key: &str, kind: &str) -> Vec<Value> {
    let (code, page) = api(
        api_addr,
        "GET",
        &format!("/v1/events?type={kind}&limit=500"),
        key,
        None,
    );
    assert_eq!(code, 200, "{page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

fn suppressed(api_addr: SocketAddr, key: &str, address: &str) -> Option<Value> {
    let (code, page) = api(
        api_addr,
        "GET",
        &format!("/v1/suppressions?address={address}"),
        key,
        None,
    );
    assert_eq!(code, 200, "{page}");
    page["suppressions"].as_array()?.first().cloned()
}

/// Sends one mail to the intake; returns the reply to RCPT when it is a refusal, else the
/// reply to the end of DATA.
fn send_to_intake(intake: SocketAddr, from: &str, rcpt: &str, body: &[u8]) -> (u16, String) {
    let mut c = Smtp::connect(intake);
    assert_eq!(c.reply().0, 220);
    let (code, ehlo) = c.cmd("EHLO provider.test");
    assert_eq!(code, 250);
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "no AUTH at the intake: {ehlo}");
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).0, 250);
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    if r.0 != 250 {
        return r;
    }
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(body);
    c.send(b"\r\n.\r\n");
    let r = c.reply();
    let _ = c.cmd("QUIT");
    r
}

/// A tenant's message to `rcpt` through the engine; returns the return path the sink saw.
fn verp_of(
    engine: &Engine,
    sink: &SmtpServer,
    user: &str,
    pass: &str,
    rcpt: &str,
    subject: &str,
) -> String {
    let msg = message(&format!("news@{DOMAIN}"), rcpt, subject);
    let envelope = lettre::address::Envelope::new(
        Some(format!("news@{DOMAIN}").parse().unwrap()),
        vec![rcpt.parse().unwrap()],
    )
    .unwrap();
    let m = mailer(engine.smtp.port(), user, pass);
    // The credential works once the engine has the snapshot that carries it.
    wait_for("the engine takes the tenant's message", || {
        m.send_raw(&envelope, msg.as_bytes()).ok()
    });
    wait_for(&format!("{rcpt} at the sink"), || {
        sink.received()
            .into_iter()
            .find(|t| t.rcpts.iter().any(|r| r == rcpt))
            .map(|t| t.mail_from)
    })
}

/// The bound from a suppressing event to its refusal at RCPT on every shard.
const REFUSAL_BOUND: Duration = Duration::from_secs(5);

/// Once `rcpt` is suppressed at the control plane, the tenant's next message to it is refused
/// at RCPT (`550 5.7.1`) within [`REFUSAL_BOUND`] (each try opens a new session, so a shard at
/// random answers).
fn next_send_refused(engine: &Engine, user: &str, pass: &str, rcpt: &str) {
    let started = Instant::now();
    let msg = message(&format!("news@{DOMAIN}"), rcpt, "again");
    let envelope = lettre::address::Envelope::new(
        Some(format!("news@{DOMAIN}").parse().unwrap()),
        vec![rcpt.parse().unwrap()],
    )
    .unwrap();
    let m = mailer(engine.smtp.port(), user, pass);
    loop {
        match m.send_raw(&envelope, msg.as_bytes()) {
            Err(e) if e.to_string().contains("5.7.1") => break,
            _ => {}
        }
        assert!(
            started.elapsed() <= REFUSAL_BOUND,
            "{rcpt} still accepted {:?} after its suppression",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "{rcpt}: refused {:?} after the suppression row",
        started.elapsed()
    );
}

fn dsn(verp: &str, rcpt: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.dest.test\r\nTo: {verp}\r\nSubject: Undelivered Mail\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; \
         boundary=\"d1\"\r\n\r\n--d1\r\nContent-Type: text/plain\r\n\r\nIt bounced.\r\n\
         --d1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.dest.test\r\n\
         \r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown\r\n\
         \r\n--d1--\r\n"
    )
}

fn arf(verp: &str, rcpt: &str) -> String {
    format!(
        "From: fbl@provider.test\r\nTo: {FBL}\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n\
         --b1\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n\
         User-Agent: ProviderFBL/2.0\r\nVersion: 1\r\nOriginal-Rcpt-To: <{rcpt}>\r\n\r\n\
         --b1\r\nContent-Type: message/rfc822\r\n\r\nReturn-Path: <{verp}>\r\n\
         From: <news@{DOMAIN}>\r\nTo: {rcpt}\r\nSubject: offers\r\n\r\nBody.\r\n--b1--\r\n"
    )
}

/// A mail with one attachment (base64, 76-column lines).
fn with_attachment(to: &str, content_type: &str, name: &str, bytes: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut body = String::with_capacity(b64.len() * 80 / 76 + 1024);
    for line in b64.as_bytes().chunks(76) {
        body.push_str(std::str::from_utf8(line).unwrap());
        body.push_str("\r\n");
    }
    format!(
        "From: noreply-dmarc@provider.test\r\nTo: {to}\r\nSubject: Report Domain: {DOMAIN}\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"m1\"\r\n\r\n\
         --m1\r\nContent-Type: text/plain\r\n\r\nA DMARC report.\r\n\
         --m1\r\nContent-Type: {content_type}; name=\"{name}\"\r\n\
         Content-Disposition: attachment; filename=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{body}--m1--\r\n"
    )
    .into_bytes()
}

fn dmarc_xml() -> String {
    let record = |ip: &str, count: u32, dkim: &str, spf: &str| {
        format!(
            "<record><row><source_ip>{ip}</source_ip><count>{count}</count><policy_evaluated>\
             <disposition>none</disposition><dkim>{dkim}</dkim><spf>{spf}</spf>\
             </policy_evaluated></row><identifiers><header_from>{DOMAIN}</header_from>\
             </identifiers><auth_results><dkim><domain>{DOMAIN}</domain><result>{dkim}</result>\
             </dkim><spf><domain>{DOMAIN}</domain><result>{spf}</result></spf></auth_results>\
             </record>"
        )
    };
    format!(
        "<?xml version=\"1.0\"?><feedback><report_metadata><org_name>provider.test</org_name>\
         <email>noreply-dmarc@provider.test</email><report_id>intake-e2e-1</report_id>\
         <date_range><begin>1764892800</begin><end>1764979199</end></date_range>\
         </report_metadata><policy_published><domain>{DOMAIN}</domain><p>none</p></policy_published>\
         {}{}</feedback>",
        record("192.0.2.10", 40, "pass", "pass"),
        record("198.51.100.7", 3, "fail", "fail")
    )
}

#[test]
fn what_comes_back_to_the_intake_becomes_events_and_suppressions() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let rt = runtime();
    let opts = petrel_control::ServeOptions {
        return_path_domain: BOUNCE_DOMAIN.into(),
        ..petrel_control::ServeOptions::default()
    };
    let any = "127.0.0.1:0".parse().unwrap();
    let (info, _control) = start_control_with(
        &rt,
        &dir.path().join("control"),
        TOKEN,
        dns.addr,
        (any, any),
        opts,
    );
    let owner = info.bootstrap_key.clone().expect("the owner key");
    let sink = SmtpServer::start(Script::by_local_part());
    let args = linked_engine_args(
        dir.path(),
        info.push_addr,
        &info.push_cert_pem,
        TOKEN,
        2,
        sink.addr,
    );
    let config =
        format!("[intake]\nlisten = \"127.0.0.1:0\"\nmailboxes = [\"{FBL}\", \"{RUA}\"]\n");
    let engine = Engine::start_with(&dir.path().join("engine"), &args, Some(&config));
    let intake: SocketAddr = wait_for("the intake's address", || {
        let line = engine
            .stdout_lines
            .recv_timeout(Duration::from_secs(1))
            .ok()?;
        line.trim_start()
            .strip_prefix("intake:  smtp=")?
            .parse()
            .ok()
    });
    let acme = provision(info.api_addr, &owner, &dns, "acme", DOMAIN, "acme-mailer");

    // Outgoing mail carries a VERP return path on the bounce domain.
    let gone = "gone@dest.test";
    let verp_gone = verp_of(&engine, &sink, &acme.username, &acme.password, gone, "one");
    assert!(
        verp_gone.starts_with("b-") && verp_gone.ends_with(&format!("@{BOUNCE_DOMAIN}")),
        "{verp_gone}"
    );

    // An asynchronous DSN to that return path: bounced (async, hard) and suppressed.
    let r = send_to_intake(intake, "", &verp_gone, dsn(&verp_gone, gone).as_bytes());
    assert_eq!(r.0, 250, "{}", r.1);
    let bounced = wait_for("the async bounce at the control plane", || {
        events(info.api_addr, &acme.admin, "bounced")
            .into_iter()
            .find(|e| e["recipient"] == gone)
    });
    assert_eq!(bounced["async"], true, "{bounced}");
    assert_eq!(bounced["bounce"]["class"], "hard");
    assert_eq!(bounced["bounce"]["category"], "invalid_recipient");
    assert_eq!(bounced["tenant_id"], acme.tenant_id.as_str());
    assert_eq!(bounced["details"]["reporting_mta"], "mx.dest.test");
    let row = wait_for("the bounce's suppression", || {
        suppressed(info.api_addr, &acme.admin, gone)
    });
    assert_eq!(row["reason"], "hard_bounce", "{row}");
    next_send_refused(&engine, &acme.username, &acme.password, gone);

    // An ARF report to the feedback-loop mailbox, traced by the original's return path.
    let reader = "reader@dest.test";
    let verp_reader = verp_of(
        &engine,
        &sink,
        &acme.username,
        &acme.password,
        reader,
        "two",
    );
    let r = send_to_intake(
        intake,
        "fbl@provider.test",
        FBL,
        arf(&verp_reader, reader).as_bytes(),
    );
    assert_eq!(r.0, 250, "{}", r.1);
    let complained = wait_for("the complaint at the control plane", || {
        events(info.api_addr, &acme.admin, "complained")
            .into_iter()
            .find(|e| e["recipient"] == reader)
    });
    assert_eq!(complained["details"]["feedback_type"], "abuse");
    assert_eq!(complained["details"]["source"], "arf");
    let row = wait_for("the complaint's suppression", || {
        suppressed(info.api_addr, &acme.admin, reader)
    });
    assert_eq!(row["reason"], "complaint", "{row}");
    next_send_refused(&engine, &acme.username, &acme.password, reader);

    // A DSN to a return path that names another address: the event and the suppression are
    // the return path's own recipient's (the control plane reads it from the message's
    // `accepted` event); the named address is only noted.
    let third = "third@dest.test";
    let verp_third = verp_of(
        &engine,
        &sink,
        &acme.username,
        &acme.password,
        third,
        "three",
    );
    let victim = "victim@dest.test";
    let r = send_to_intake(intake, "", &verp_third, dsn(&verp_third, victim).as_bytes());
    assert_eq!(r.0, 250, "{}", r.1);
    let bounced = wait_for("the redirected bounce at the control plane", || {
        events(info.api_addr, &acme.admin, "bounced")
            .into_iter()
            .find(|e| e["recipient"] == third)
    });
    assert_eq!(bounced["details"]["attribution"], "token", "{bounced}");
    assert_eq!(
        bounced["details"]["reported_recipient"], victim,
        "{bounced}"
    );
    wait_for("the return path's recipient suppressed", || {
        suppressed(info.api_addr, &acme.admin, third)
    });
    assert!(suppressed(info.api_addr, &acme.admin, victim).is_none());

    // A feedback loop that strips the return path: the complaint is found by the original's
    // Message-ID (`<four@client.test>`, set by the tenant's client).
    let fourth = "fourth@dest.test";
    verp_of(
        &engine,
        &sink,
        &acme.username,
        &acme.password,
        fourth,
        "four",
    );
    let stripped = arf("bounces@elsewhere.test", fourth).replace(
        "Subject: offers\r\n",
        "Subject: offers\r\nMessage-ID: <four@client.test>\r\n",
    );
    let r = send_to_intake(intake, "fbl@provider.test", FBL, stripped.as_bytes());
    assert_eq!(r.0, 250, "{}", r.1);
    let complained = wait_for("the complaint found by Message-ID", || {
        events(info.api_addr, &acme.admin, "complained")
            .into_iter()
            .find(|e| e["recipient"] == fourth)
    });
    assert_eq!(
        complained["details"]["attribution"], "message_id",
        "{complained}"
    );
    assert_eq!(complained["rfc822_message_id"], "four@client.test");
    let row = wait_for("the Message-ID complaint's suppression", || {
        suppressed(info.api_addr, &acme.admin, fourth)
    });
    assert_eq!(row["reason"], "complaint", "{row}");
    next_send_refused(&engine, &acme.username, &acme.password, fourth);

    // A forged token (a character inside the tag changed, the last one only holds padding
    // bits) is refused at RCPT.
    let (local, domain) = verp_gone.split_once('@').unwrap();
    let at = local.len() - 4;
    let was = local.as_bytes()[at];
    let forged = format!(
        "{}{}{}@{domain}",
        &local[..at],
        if was == b'a' { 'b' } else { 'a' },
        &local[at + 1..]
    );
    let r = send_to_intake(intake, "", &forged, b"unused");
    assert_eq!(r.0, 550, "{}", r.1);
    assert!(r.1.contains("5.7.1") && r.1.contains("token"), "{}", r.1);
    let r = send_to_intake(intake, "", "someone@elsewhere.test", b"unused");
    assert!(r.0 == 550 && r.1.contains("5.1.1"), "{}", r.1);

    // A 10 MB report: 552 5.3.4 at the end of DATA, nothing parsed.
    let mut big = dsn(&verp_gone, gone).into_bytes();
    let line = [b'x'; 998];
    while big.len() < 10_000_000 {
        big.extend_from_slice(b"\r\n");
        big.extend_from_slice(&line);
    }
    let r = send_to_intake(intake, "", &verp_gone, &big);
    assert!(r.0 == 552 && r.1.contains("5.3.4"), "{}", r.1);

    // A zip bomb: 12 MiB of XML-ish bytes (past the 10 MiB cap) deflated into a few KiB.
    let bomb = {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        w.start_file("report.xml", options).unwrap();
        w.write_all(b"<?xml version=\"1.0\"?><feedback>").unwrap();
        w.write_all(&vec![b' '; 12 << 20]).unwrap();
        w.finish().unwrap().into_inner()
    };
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let mail = with_attachment(RUA, "application/zip", "bomb.zip", &bomb);
    let r = send_to_intake(intake, "", RUA, &mail);
    assert!(r.0 == 550 && r.1.contains("5.6.0"), "{}", r.1);

    // A malformed ARF report (no Feedback-Type): refused with the parser's reason.
    let malformed = arf(&verp_reader, reader).replace("Feedback-Type: abuse\r\n", "");
    let r = send_to_intake(intake, "fbl@provider.test", FBL, malformed.as_bytes());
    assert!(r.0 == 550 && r.1.contains("5.6.0"), "{}", r.1);

    // A gzip'd DMARC aggregate report for the tenant's domain: one event per row.
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(dmarc_xml().as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let mail = with_attachment(
        RUA,
        "application/gzip",
        "provider.test!intake.test.xml.gz",
        &gz,
    );
    let r = send_to_intake(intake, "", RUA, &mail);
    assert_eq!(r.0, 250, "{}", r.1);
    let rows = wait_for("the DMARC rows at the control plane", || {
        let rows = events(info.api_addr, &acme.admin, "dmarc_report");
        (rows.len() >= 2).then_some(rows)
    });
    assert_eq!(rows.len(), 2, "{rows:?}");
    let pass = rows
        .iter()
        .find(|e| e["details"]["source_ip"] == "192.0.2.10")
        .expect("the passing source");
    assert_eq!(
        (&pass["details"]["count"], &pass["details"]["dmarc"]),
        (&Value::from(40), &Value::from("pass"))
    );
    assert_eq!(pass["from_domain"], DOMAIN);
    let fail = rows
        .iter()
        .find(|e| e["details"]["source_ip"] == "198.51.100.7")
        .expect("the failing source");
    assert_eq!(fail["details"]["dmarc"], "fail");
    assert_eq!(fail["details"]["report_id"], "intake-e2e-1");

    assert!(engine.stop(), "the engine stops cleanly");
}
