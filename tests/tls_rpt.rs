//! TLS-RPT (RFC 8460) end to end: a real engine delivers over STARTTLS to an MX host on
//! loopback (the kit's DNS server and SMTP server), its session counts cross an engine restart
//! and a control plane that was not there yet through the durable event backlog, and the
//! control plane sends the day's report to both URIs the destination's `_smtp._tls` record
//! names: an HTTPS receiver (the kit's, with a certificate from a test CA the control plane
//! trusts) and a `mailto:` address, as a mail submitted to the engine, which DKIM-signs it
//! and delivers it to the same loopback MX. Both copies validate against the JSON Schema
//! written from RFC 8460 (`tests/tlsrpt-schema.json`, checked by Python's jsonschema).

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::control::{api, dkimpy_verifies, provision};
use common::control_process::free_port;
use common::*;
use petrel_testkit::dns::{a, mx, txt, DnsServer};
use petrel_testkit::https_receiver::HttpsReceiver;
use petrel_testkit::smtp_server::{Script, SmtpServer};
use petrel_testkit::tls::test_pki;
use serde_json::{json, Value};

const TOKEN: &str = "tls-rpt-push-token-0123456789abcdef";
/// The sending (and reporting) domain, provisioned with a DKIM key.
const SENDER: &str = "sender.test";
const DEST: &str = "dest.test";
const MAILTO: &str = "tlsrpt@reports.test";
const RUA_HOST: &str = "rua.reports.test";
/// The bound on every wait.
const WAIT_MAX: Duration = Duration::from_secs(60);
const DAY_MS: u64 = 86_400_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `YYYY-MM-DD` of a Unix ms time.
fn day_of(unix_ms: u64) -> String {
    let days = (unix_ms / DAY_MS) as i64;
    // Civil date from days since the epoch (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Python's jsonschema on `report` against the RFC 8460 schema: Ok, or its errors.
fn validate(report: &Value) -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut child = Command::new("python3")
        .arg(root.join("tlsrpt_validate.py"))
        .arg(root.join("tlsrpt-schema.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(report.to_string().as_bytes())
            .expect("write the report");
    }
    let out = child.wait_with_output().expect("the validator ends");
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(String::from_utf8_lossy(&out.stdout).into_owned()),
        _ => panic!(
            "the validator could not run (jsonschema missing? ops/test.sh installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn gunzip_json(gz: &[u8]) -> Value {
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .expect("a gzip stream");
    serde_json::from_str(&text).expect("JSON")
}

/// The base64 attachment of a mailed report, decoded.
fn attachment(mail: &str) -> Vec<u8> {
    let body = mail
        .split("Content-Transfer-Encoding: base64\r\n")
        .nth(1)
        .and_then(|s| s.split("\r\n\r\n").nth(1))
        .expect("an attachment")
        .split("\r\n--")
        .next()
        .expect("its body")
        .replace("\r\n", "");
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("base64")
}

fn engine_args(dir: &Path, push: SocketAddr, push_pem: &str) -> Vec<String> {
    let ca = dir.join("push.pem");
    std::fs::write(&ca, push_pem).expect("write the push certificate");
    vec![
        "--shards".into(),
        "1".into(),
        "--control".into(),
        push.to_string(),
        "--control-token-file".into(),
        token_file(&ca, TOKEN),
        "--control-ca".into(),
        ca.to_str().expect("a UTF-8 path").to_string(),
        "--trust-network-domains".into(),
        format!("127.0.0.0/8={SENDER}"),
    ]
}

#[test]
fn a_days_report_reaches_an_https_receiver_and_a_mailto_address_signed_and_valid() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rua_pki = test_pki(RUA_HOST);
    let receiver = HttpsReceiver::start(&rua_pki);
    let mx_pki = test_pki("mx.dest.test");
    let sink = SmtpServer::start(Script {
        tls: Some(mx_pki.server_config.clone()),
        ..Script::default()
    });
    let rua = format!(
        "v=TLSRPTv1; rua=mailto:{MAILTO},https://{RUA_HOST}:{}/tlsrpt",
        receiver.port
    );
    let dns = DnsServer::start(vec![
        mx(&format!("{DEST}."), 60, 10, "mx.dest.test."),
        a("mx.dest.test.", 60, "127.0.0.1"),
        mx("reports.test.", 60, 10, "mx.dest.test."),
        a(&format!("{RUA_HOST}."), 60, "127.0.0.1"),
        txt(&format!("_smtp._tls.{DEST}."), 60, &rua),
    ]);

    // The control plane's push certificate first: the engine runs before the control plane.
    let cp_dir = dir.path().join("control");
    std::fs::create_dir_all(&cp_dir).expect("the control directory");
    let push = free_port();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("a push certificate");
    std::fs::write(cp_dir.join("push-cert.pem"), cert.cert.pem()).expect("push-cert.pem");
    std::fs::write(cp_dir.join("push-key.pem"), cert.key_pair.serialize_pem())
        .expect("push-key.pem");
    let args = engine_args(dir.path(), push, &cert.cert.pem());
    let config = format!(
        "[delivery]\nnameservers = [\"{}\"]\nsmtp_port = {}\nretry_initial_ms = 300\nretry_max_ms = 1000\n",
        dns.addr,
        sink.addr.port()
    );
    let data = dir.path().join("engine");

    // 1. A delivery over STARTTLS to dest.test's MX (no MTA-STS policy) is counted.
    let engine = Engine::start_with(&data, &args, Some(&config));
    let sent_at = unix_ms();
    let body = message(
        &format!("alice@{SENDER}"),
        &format!("bob@{DEST}"),
        "tls-rpt-1",
    );
    let (code, text) = send_one(
        engine.smtp,
        &format!("alice@{SENDER}"),
        &format!("bob@{DEST}"),
        &body,
    );
    assert_eq!(code, 250, "{text}");
    let deadline = Instant::now() + WAIT_MAX;
    while sink.received().is_empty() {
        assert!(Instant::now() < deadline, "the message never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sink.received()[0].tls, "delivered inside STARTTLS");
    let metrics = engine.scrape();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("petrel_tls_rpt_sessions_total{")
                && l.contains("policy_type=\"no-policy-found\"")
                && l.contains("result=\"success\"")
                && l.ends_with(" 1")),
        "the session is counted: {}",
        metrics
            .lines()
            .filter(|l| l.contains("tls_rpt"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A clean stop flushes the counts into the backlog; no control plane has read them yet.
    assert!(engine.stop());

    // 2. The engine again, and the control plane: the backlog reaches it.
    let engine = Engine::start_with(&data, &args, Some(&config));
    let ca_file = dir.path().join("rua-ca.pem");
    std::fs::write(&ca_file, &rua_pki.ca_pem).expect("the receiver's CA");
    let rt = runtime();
    let cfg = petrel_control::ControlConfig {
        data_dir: cp_dir.clone(),
        database_url: None,
        api_listen: "127.0.0.1:0".parse().expect("an address"),
        push_listen: push,
        push_token: TOKEN.into(),
        dns_nameservers: vec![dns.addr],
        webhooks_allow_loopback: true,
        webhooks_ca_file: Some(ca_file),
    };
    let opts = petrel_control::ServeOptions {
        tls_rpt: Some(petrel_control::tls_rpt::TlsRptSettings {
            // Off: only the trigger below sends, so nothing races it.
            enabled: false,
            organization: "Petrel Test".into(),
            contact: format!("tls-reports@{SENDER}"),
            submitter: SENDER.into(),
            from: format!("tls-reports@{SENDER}"),
            submit_to: Some(engine.smtp),
            send_hour_utc: 1,
        }),
        ..petrel_control::ServeOptions::default()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _control = rt.spawn(async move { petrel_control::serve_with(cfg, opts, Some(tx)).await });
    let info = rt
        .block_on(async { tokio::time::timeout(WAIT_MAX, rx).await })
        .expect("the control plane is ready in time")
        .expect("it reports its addresses");
    let owner = info.bootstrap_key.clone().expect("the owner key");
    // The reporting domain gets a DKIM key, so the engine signs the mailed report.
    let acme = provision(info.api_addr, &owner, &dns, "acme", SENDER, "acme-mailer");
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let (code, list) = api(info.api_addr, "GET", "/v1/engines", &owner, None);
        assert_eq!(code, 200);
        let applied = list.as_array().and_then(|a| a.first()).is_some_and(|e| {
            e["applied_version"] == e["sent_version"] && e["applied_version"] != 0
        });
        if applied {
            break;
        }
        assert!(Instant::now() < deadline, "snapshot never applied: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 3. The day's report, sent on demand, until both URIs are reached.
    let days = [day_of(sent_at), day_of(sent_at + DAY_MS)];
    let deadline = Instant::now() + WAIT_MAX;
    let report = loop {
        let mut got = None;
        for day in &days {
            let (code, r) = api(
                info.api_addr,
                "POST",
                "/v1/tls-rpt/send",
                &owner,
                Some(json!({ "day": day })),
            );
            assert_eq!(code, 200, "{r}");
            if let Some(rep) = r["reports"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["policy_domain"] == DEST))
            {
                got = Some((day.clone(), rep.clone()));
            }
        }
        match got {
            Some((day, rep)) if rep["state"] == "sent" => break (day, rep),
            other => {
                assert!(Instant::now() < deadline, "no report sent: {other:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    let (day, state) = report;
    assert_eq!(
        state["done_uris"].as_array().map(Vec::len),
        Some(2),
        "{state}"
    );
    let report_id = format!("{day}.{DEST}@{SENDER}");
    assert_eq!(state["report_id"], report_id);

    // The HTTPS copy.
    let posts = receiver.received();
    assert_eq!(posts.len(), 1, "one POST");
    let post = &posts[0];
    assert_eq!(
        (post.method.as_str(), post.path.as_str()),
        ("POST", "/tlsrpt")
    );
    assert_eq!(post.header("content-type"), Some("application/tlsrpt+gzip"));
    let json = gunzip_json(&post.body);
    validate(&json).unwrap_or_else(|e| panic!("the report validates: {e}\n{json:#}"));
    assert_eq!(json["report-id"], report_id);
    assert_eq!(json["organization-name"], "Petrel Test");
    assert_eq!(
        json["date-range"]["start-datetime"],
        format!("{day}T00:00:00Z")
    );
    let policies = json["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 1, "{json:#}");
    assert_eq!(policies[0]["policy"]["policy-type"], "no-policy-found");
    assert_eq!(policies[0]["policy"]["policy-domain"], DEST);
    assert_eq!(policies[0]["summary"]["total-successful-session-count"], 1);
    assert_eq!(policies[0]["summary"]["total-failure-session-count"], 0);

    // The mailed copy: delivered by the engine to reports.test's MX, DKIM-signed.
    let deadline = Instant::now() + WAIT_MAX;
    let mail = loop {
        if let Some(m) = sink
            .received()
            .into_iter()
            .find(|m| m.rcpts.iter().any(|r| r == MAILTO))
        {
            break m;
        }
        assert!(Instant::now() < deadline, "the mailed report never arrived");
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = String::from_utf8_lossy(&mail.data).into_owned();
    assert!(
        text.contains(&format!("\r\nTLS-Report-Domain: {DEST}\r\n")),
        "{text}"
    );
    assert!(text.contains(&format!("\r\nTLS-Report-Submitter: {SENDER}\r\n")));
    assert!(text.contains(&format!(
        "Subject: Report Domain: {DEST} Submitter: {SENDER} Report-ID: <{report_id}>"
    )));
    assert!(text.contains("multipart/report; report-type=\"tlsrpt\""));
    assert!(text.contains(&format!("filename=\"{SENDER}!{DEST}!")));
    assert!(
        text.contains(&format!("d={SENDER}")),
        "signed by the sending domain: {text}"
    );
    match dkimpy_verifies(&mail.data, SENDER, &acme.selector, &acme.dkim_txt) {
        Some(ok) => assert!(ok, "dkimpy verifies the report's signature"),
        None => petrel_testkit::peer_missing("dkimpy check: dkimpy is not installed"),
    }
    let mailed = gunzip_json(&attachment(&text));
    validate(&mailed).unwrap_or_else(|e| panic!("the mailed report validates: {e}"));
    assert_eq!(mailed, json, "the same report both ways");

    // Sent once: asking again sends nothing more.
    let (code, again) = api(
        info.api_addr,
        "POST",
        "/v1/tls-rpt/send",
        &owner,
        Some(json!({ "day": day })),
    );
    assert_eq!(code, 200, "{again}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.received().len(), 1, "not posted twice");

    // The schema check can fail: a report without its policies does not validate.
    let mut broken = json.clone();
    broken
        .as_object_mut()
        .expect("an object")
        .remove("policies");
    broken["policies"] = json!([{ "policy": { "policy-type": "dane" } }]);
    assert!(validate(&broken).is_err());
    assert!(engine.stop());
}
