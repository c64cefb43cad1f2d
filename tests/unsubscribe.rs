//! End to end one-click and mailto unsubscribe (issue 14): a tenant with `list_unsubscribe` on submits
//! through a real engine linked to a real control plane; the message reaches the sink with
//! `List-Unsubscribe` (a `mailto:` on the bounce domain and the control plane's `/u/TOKEN`
//! link) and `List-Unsubscribe-Post`, both covered by the DKIM signature (dkimpy verifies it,
//! `h=` names both, and altering the link breaks it); a POST to the link, as a mailbox
//! provider makes it, gives an `unsubscribed` event of that message and a suppression of the
//! recipient within seconds. A message with the tenant's own List-Unsubscribe keeps it, and a
//! message to two recipients gets none. A mail to the `mailto:` address, at the engine's
//! return-path intake, unsubscribes too, and the tenant's next message to that recipient is
//! refused at RCPT within the bound.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::control::{api, dkimpy_verifies, mailer, provision, Provisioned};
use common::*;
use lettre::address::Envelope;
use lettre::{SmtpTransport, Transport};
use petrel_loadtest::{start_sink, SinkConfig, SinkHandle};
use petrel_testkit::dns::DnsServer;
use petrel_testkit::http::Request;
use serde_json::Value;

const DOMAIN: &str = "unsub.test";
const BOUNCE_DOMAIN: &str = "bounce.unsub.test";
const TOKEN: &str = "unsub-push-token-0123456789";
const READER: &str = "reader@example.test";
/// The longest any step waits for the engine, the sink or the control plane.
const WAIT_MAX: Duration = Duration::from_secs(30);
/// The bound: the event and the suppression follow the POST within seconds.
const UNSUBSCRIBE_VISIBLE_MAX: Duration = Duration::from_secs(5);

/// A loopback port free right now (the control plane's public URL must name its API port
/// before it starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The control plane with the bounce domain and its API as the one-click links' origin.
fn start_control(
    rt: &tokio::runtime::Runtime,
    data_dir: &std::path::Path,
    nameserver: SocketAddr,
    api_listen: SocketAddr,
) -> petrel_control::ServeInfo {
    let opts = petrel_control::ServeOptions {
        return_path_domain: BOUNCE_DOMAIN.into(),
        public_url: format!("http://{api_listen}"),
        ..petrel_control::ServeOptions::default()
    };
    let push = "127.0.0.1:0".parse().expect("loopback address");
    common::control::start_control_with(rt, data_dir, TOKEN, nameserver, (api_listen, push), opts).0
}

/// The unfolded values of header `name` (any case) in the header section of `text`.
fn headers(text: &str, name: &str) -> Vec<String> {
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut fields: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push_str(line);
            }
        } else {
            fields.push(line.to_string());
        }
    }
    fields
        .iter()
        .filter_map(|f| f.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// The `h=` list of the DKIM-Signature, lower-cased.
fn signed_headers(text: &str) -> Vec<String> {
    let sig = headers(text, "DKIM-Signature")
        .pop()
        .expect("a DKIM-Signature");
    let compact: String = sig.chars().filter(|c| !c.is_whitespace()).collect();
    compact
        .split(';')
        .find_map(|tag| tag.strip_prefix("h="))
        .expect("an h= tag")
        .split(':')
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Sends `data` (retrying while the pushed credential is not there yet) and waits until the
/// sink holds `n` messages; returns the last one.
fn submit(sink: &SinkHandle, m: &SmtpTransport, rcpts: &[&str], data: &str, n: usize) -> String {
    let envelope = Envelope::new(
        Some(format!("news@{DOMAIN}").parse().expect("sender")),
        rcpts.iter().map(|r| r.parse().expect("rcpt")).collect(),
    )
    .expect("envelope");
    let deadline = Instant::now() + WAIT_MAX;
    while let Err(e) = m.send_raw(&envelope, data.as_bytes()) {
        assert!(Instant::now() < deadline, "never accepted: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
    while sink.received().len() < n {
        assert!(Instant::now() < deadline, "the sink never got {n} messages");
        std::thread::sleep(Duration::from_millis(50));
    }
    String::from_utf8_lossy(&sink.received()[n - 1].data).into_owned()
}

fn message(subject: &str, to: &str, extra: &str) -> String {
    format!(
        "From: News <news@{DOMAIN}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@client.test>\r\n{extra}\r\nHello.\r\n"
    )
}

/// The events of `kind` of the tenant (the control plane's `/v1/events`).
fn events_of(api_addr: SocketAddr, key: &str, kind: &str) -> Vec<Value> {
    let (code, page) = api(
        api_addr,
        "GET",
        &format!("/v1/events?type={kind}"),
        key,
        None,
    );
    assert_eq!(code, 200, "{page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

fn dkim_ok(delivered: &str, p: &Provisioned) -> Option<bool> {
    dkimpy_verifies(delivered.as_bytes(), DOMAIN, &p.selector, &p.dkim_txt)
}

#[test]
fn one_click_links_are_signed_and_a_post_unsubscribes_and_suppresses() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let api_listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let info = start_control(&rt, &dir.path().join("control"), dns.addr, api_listen);
    let owner = info.bootstrap_key.clone().expect("the owner key");
    let sink = start_sink(SinkConfig {
        threads: 1,
        keep_messages_max: 100,
        ..SinkConfig::default()
    })
    .unwrap();
    let args = linked_engine_args(
        dir.path(),
        info.push_addr,
        &info.push_cert_pem,
        TOKEN,
        2,
        sink.addr(),
    );
    // The return-path intake too: the mailto link's unsubscribes come back to it.
    let intake_config = "[intake]\nlisten = \"127.0.0.1:0\"\n";
    let engine = Engine::start_with(&dir.path().join("engine"), &args, Some(intake_config));
    let intake = intake_addr(&engine);

    let acme = provision(info.api_addr, &owner, &dns, "acme", DOMAIN, "acme-mailer");
    let (code, t) = api(
        info.api_addr,
        "PATCH",
        &format!("/v1/tenants/{}", acme.tenant_id),
        &owner,
        Some(serde_json::json!({"list_unsubscribe": true})),
    );
    assert_eq!(
        (code, &t["list_unsubscribe"]),
        (200, &Value::Bool(true)),
        "{t}"
    );
    let m = mailer(engine.smtp.port(), &acme.username, &acme.password);

    // 1. One recipient: both headers, signed. The setting reaches the engine with the push
    // after the PATCH; until then a message goes out without them, so send until one has it.
    let mut n = 0;
    let deadline = Instant::now() + WAIT_MAX;
    let delivered = loop {
        n += 1;
        let text = submit(
            &sink,
            &m,
            &[READER],
            &message(&format!("m{n}"), READER, ""),
            n,
        );
        if !headers(&text, "List-Unsubscribe").is_empty() {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no List-Unsubscribe ever: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let lu = headers(&delivered, "List-Unsubscribe");
    assert_eq!(lu.len(), 1, "{delivered}");
    let links: Vec<&str> = lu[0]
        .split(',')
        .map(|l| l.trim().trim_start_matches('<').trim_end_matches('>'))
        .collect();
    assert_eq!(links.len(), 2, "{lu:?}");
    let mailto = links[0]
        .strip_prefix("mailto:u-")
        .expect("a mailto u- link");
    assert!(mailto.ends_with(&format!("@{BOUNCE_DOMAIN}")), "{mailto}");
    let url = links[1];
    let path = url
        .strip_prefix(&format!("http://{api_listen}"))
        .expect("the link points at the control plane's public URL");
    assert!(path.starts_with("/u/"), "{url}");
    assert_eq!(
        headers(&delivered, "List-Unsubscribe-Post"),
        vec!["List-Unsubscribe=One-Click".to_string()]
    );
    let h = signed_headers(&delivered);
    for name in ["list-unsubscribe", "list-unsubscribe-post"] {
        assert!(h.contains(&name.to_string()), "h= lacks {name}: {h:?}");
    }
    match dkim_ok(&delivered, &acme) {
        Some(ok) => {
            assert!(ok, "dkimpy rejected the signature:\n{delivered}");
            // The links are covered: altering either header breaks the signature.
            let forged_link = delivered.replacen("/u/", "/u/x", 1);
            assert_eq!(dkim_ok(&forged_link, &acme), Some(false));
            let forged_post = delivered.replacen("=One-Click", "=Two-Clicks", 1);
            assert_eq!(dkim_ok(&forged_post, &acme), Some(false));
        }
        None => petrel_testkit::peer_missing("dkimpy check: python3 dkimpy/pynacl not installed"),
    }

    // 2. The tenant's own header is kept; two recipients get none.
    let own = "List-Unsubscribe: <mailto:leave@list.unsub.test>\r\n";
    let text = submit(&sink, &m, &[READER], &message("own", READER, own), n + 1);
    assert_eq!(
        headers(&text, "List-Unsubscribe"),
        vec!["<mailto:leave@list.unsub.test>".to_string()]
    );
    assert!(headers(&text, "List-Unsubscribe-Post").is_empty());
    let two = [READER, "other@example.test"];
    let text = submit(&sink, &m, &two, &message("two", READER, ""), n + 2);
    assert!(headers(&text, "List-Unsubscribe").is_empty(), "{text}");

    // 3. The provider's POST: no credentials, the RFC 8058 body.
    let posted = Instant::now();
    let answer = Request::new("POST", path)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(b"List-Unsubscribe=One-Click".to_vec())
        .send(info.api_addr)
        .expect("the control plane answers");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let deadline = posted + UNSUBSCRIBE_VISIBLE_MAX;
    let (event, suppressed) = loop {
        let event = events_of(info.api_addr, &acme.admin, "unsubscribed").pop();
        let (_, list) = api(info.api_addr, "GET", "/v1/suppressions", &acme.admin, None);
        let suppressed = list.to_string().contains(READER);
        if let (Some(e), true) = (&event, suppressed) {
            break (e.clone(), suppressed);
        }
        assert!(
            Instant::now() < deadline,
            "no unsubscribed event and suppression within {UNSUBSCRIBE_VISIBLE_MAX:?}: {event:?} {list}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(suppressed);
    println!(
        "unsubscribed and suppressed {:?} after the POST",
        posted.elapsed()
    );
    assert_eq!(event["recipient"], READER, "{event}");
    assert_eq!(event["details"]["method"], "one_click", "{event}");
    // The link names the very message that carried it (the id reserved before signing).
    let subject = format!("m{n}@client.test");
    let deadline = Instant::now() + WAIT_MAX;
    let carried = loop {
        let found = events_of(info.api_addr, &acme.admin, "delivered")
            .into_iter()
            .find(|e| e["rfc822_message_id"] == subject.as_str());
        if let Some(e) = found {
            break e;
        }
        assert!(Instant::now() < deadline, "no delivered event of {subject}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        event["message_id"], carried["message_id"],
        "{event} {carried}"
    );
    // A repeat is a no-op.
    let again = Request::new("POST", path)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(b"List-Unsubscribe=One-Click".to_vec())
        .send(info.api_addr)
        .expect("answer");
    assert_eq!(again.status, 200);
    assert_eq!(
        events_of(info.api_addr, &acme.admin, "unsubscribed").len(),
        1
    );

    // 4. The mailto link: the recipient mails its u- address (at the engine's intake), which
    // unsubscribes it, and the tenant's next message to it is refused at RCPT.
    let second = "second@example.test";
    // (Counted from the sink's messages: with VERP the two-recipient message arrived as two.)
    let before = sink.received().len();
    submit(
        &sink,
        &m,
        &[second],
        &message("mailto", second, ""),
        before + 1,
    );
    let text = sink
        .received()
        .iter()
        .map(|t| String::from_utf8_lossy(&t.data).into_owned())
        .find(|t| t.contains("Subject: mailto\r\n"))
        .expect("the mailto message at the sink");
    let lu = headers(&text, "List-Unsubscribe");
    let address = lu
        .first()
        .and_then(|h| h.split(',').next())
        .and_then(|l| l.trim().strip_prefix("<mailto:"))
        .and_then(|l| l.strip_suffix('>'))
        .unwrap_or_else(|| panic!("a mailto link: {text}"))
        .to_string();
    let mail =
        format!("From: <{second}>\r\nTo: <{address}>\r\nSubject: unsubscribe\r\n\r\nPlease.\r\n");
    let sent = Instant::now();
    let (code, reply) = send_to_intake(intake, second, &address, mail.as_bytes());
    assert_eq!(code, 250, "{reply}");
    let deadline = sent + UNSUBSCRIBE_VISIBLE_MAX;
    let event = loop {
        let found = events_of(info.api_addr, &acme.admin, "unsubscribed")
            .into_iter()
            .find(|e| e["recipient"] == second);
        if let Some(e) = found {
            break e;
        }
        assert!(Instant::now() < deadline, "no mailto unsubscribed event");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(event["details"]["method"], "mailto", "{event}");
    let envelope = Envelope::new(
        Some(format!("news@{DOMAIN}").parse().expect("sender")),
        vec![second.parse().expect("rcpt")],
    )
    .expect("envelope");
    loop {
        match m.send_raw(&envelope, message("again", second, "").as_bytes()) {
            Err(e) if e.to_string().contains("5.7.1") => break,
            _ => {}
        }
        assert!(
            sent.elapsed() <= UNSUBSCRIBE_VISIBLE_MAX,
            "{second} still accepted {:?} after its unsubscribe",
            sent.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "mailto unsubscribe to refusal at RCPT: {:?}",
        sent.elapsed()
    );
    assert!(engine.stop());
}

/// The engine's intake listener, from its start-up lines.
fn intake_addr(engine: &Engine) -> SocketAddr {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Ok(line) = engine.stdout_lines.recv_timeout(Duration::from_secs(1)) {
            if let Some(addr) = line.trim_start().strip_prefix("intake:  smtp=") {
                return addr.trim().parse().expect("the intake's address");
            }
        }
        assert!(
            Instant::now() < deadline,
            "the engine printed no intake address"
        );
    }
}

/// One message to the intake from `from` to `rcpt`; the final reply.
fn send_to_intake(intake: SocketAddr, from: &str, rcpt: &str, body: &[u8]) -> (u16, String) {
    let mut c = Smtp::connect(intake);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO provider.test").0, 250);
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
