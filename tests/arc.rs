//! End to end ARC sealing for a forwarding tenant (RFC 8617, issue 18), with the loopback DNS
//! server, a control plane, an engine and the sink; an independent verifier (Python dkimpy's
//! `arc_verify`) checks what arrives:
//! - a forwarding tenant relays a message DKIM-signed by another domain (its From); the copy at
//!   the sink carries an ARC set, i=1 cv=none, sealed with the tenant's domain's key, that
//!   dkimpy accepts (cv=pass), and the original DKIM-Signature still verifies;
//! - that copy forwarded again gets i=2, cv=pass, and still verifies;
//! - a copy whose body changed after the first hop gets i=2 cv=fail (the chain is over, but the
//!   forwarder says so under its seal);
//! - a tenant without the setting gets no ARC headers;
//! - `petrel_arc_seals_total{cv}` counts each seal.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::control::{api, mailer, provision, provision_rsa, start_control};
use common::*;
use lettre::address::Envelope;
use lettre::{SmtpTransport, Transport};
use petrel_loadtest::{start_sink, SinkConfig, SinkHandle};
use petrel_policy::{DkimAlgorithm, DkimKey, DkimSigner};
use petrel_testkit::dns::{txt, DnsServer};

/// The forwarding tenant's sending domain (its envelope sender's).
const FWD: &str = "fwd.test";
/// A tenant that does not forward.
const PLAIN: &str = "plain.test";
/// The author's domain: signs the original and publishes DMARC `p=reject`.
const ORIGIN: &str = "origin.test";
const ORIGIN_SELECTOR: &str = "orig";
const TOKEN: &str = "arc-push-token-0123456789abcdef";
/// The longest any step waits (the policy push, a delivery).
const WAIT_MAX: Duration = Duration::from_secs(30);
/// TTL of the records the test publishes.
const TTL_SECS: u32 = 60;

/// The author's message, DKIM-signed by ORIGIN (with every header the engine would otherwise
/// add, so the signature survives the submission).
fn original(key: &DkimSigner) -> Vec<u8> {
    let message = format!(
        "From: Alice <alice@{ORIGIN}>\r\nTo: <list@{FWD}>\r\nSubject: forwarded\r\n\
         Date: Sun, 06 Dec 2026 01:00:00 +0000\r\nMessage-ID: <m1@{ORIGIN}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello from the origin.\r\n"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut signed = key.sign(message.as_bytes(), now_ms).expect("origin signs");
    signed.extend_from_slice(message.as_bytes());
    signed
}

/// Submits `message` with envelope sender `from`; Ok or the refusal's text.
fn submit(m: &SmtpTransport, from: &str, to: &str, message: &[u8]) -> Result<(), String> {
    let envelope = Envelope::new(Some(from.parse().unwrap()), vec![to.parse().unwrap()]).unwrap();
    m.send_raw(&envelope, message)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The delivered copy for `rcpt`, waiting (bounded).
fn delivered(sink: &SinkHandle, rcpt: &str) -> Vec<u8> {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(m) = sink
            .received()
            .into_iter()
            .find(|m| m.rcpts.iter().any(|r| r == rcpt))
        {
            return m.data;
        }
        assert!(Instant::now() < deadline, "{rcpt} never delivered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What dkimpy says of a message.
struct Dkimpy {
    /// `arc_verify`'s cv: `pass`, `fail`, `none`, or `terminated` (a chain whose newest seal
    /// says cv=fail: dkimpy's None).
    cv: String,
    /// Its first DKIM-Signature verifies.
    dkim_ok: bool,
    /// The newest set's ARC-Message-Signature and ARC-Seal both verify.
    newest_set_valid: bool,
    reason: String,
}

/// What dkimpy says of `message`; None when dkimpy (or authres) is missing. `records` maps each
/// `<selector>._domainkey.<domain>` to its TXT value.
fn dkimpy_arc(message: &[u8], records: &[(String, String)]) -> Option<Dkimpy> {
    let probe = Command::new("python3")
        .args(["-c", "import dkim, nacl, authres"])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    let dir = tempfile::tempdir().ok()?;
    let msg = dir.path().join("m.eml");
    std::fs::write(&msg, message).ok()?;
    let table: Vec<String> = records
        .iter()
        .map(|(name, value)| format!("{name:?}: {value:?}"))
        .collect();
    let script = format!(
        "import dkim,sys\nrecs={{{}}}\n\
         def dns(n, timeout=5):\n    v=recs.get(n.decode().rstrip('.').lower())\n    \
         return v.encode() if v else None\n\
         m=open(sys.argv[1],'rb').read()\ncv,res,reason=dkim.arc_verify(m, dnsfunc=dns)\n\
         ok=dkim.verify(m, dnsfunc=dns)\ncvs=cv.decode() if cv is not None else 'terminated'\n\
         last=bool(res) and res[0]['ams-valid'] and res[0]['as-valid']\n\
         print(cvs+'|'+str(ok)+'|'+str(last)+'|'+repr(reason))\n",
        table.join(", ")
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&msg)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "dkimpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let parts: Vec<&str> = text.splitn(4, '|').collect();
    let [cv, ok, last, reason] = parts[..] else {
        panic!("dkimpy printed {text:?}");
    };
    Some(Dkimpy {
        cv: cv.to_string(),
        dkim_ok: ok == "True",
        newest_set_valid: last == "True",
        reason: reason.to_string(),
    })
}

/// The ARC header of `name` at instance `i` (unfolded), if present.
fn arc_header(message: &[u8], name: &str, i: u32) -> Option<String> {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with(&format!("{}: i={i};", name.to_ascii_lowercase()))
        })
        .map(str::to_string)
}

fn metric(engine: &Engine, line_start: &str) -> Option<f64> {
    engine
        .scrape()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn start_engine(
    dir: &std::path::Path,
    push: (SocketAddr, &str),
    sink: SocketAddr,
    dns: &DnsServer,
) -> Engine {
    let mut args = linked_engine_args(dir, push.0, push.1, TOKEN, 1, sink);
    args.extend(["--nameserver".to_string(), dns.addr.to_string()]);
    Engine::start(&dir.join("engine"), &args)
}

#[test]
fn a_forwarding_tenant_seals_what_it_relays_and_dkimpy_accepts_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (info, _control) = start_control(&rt, &dir.path().join("control"), TOKEN, dns.addr);
    let owner = info.bootstrap_key.clone().expect("the owner key");
    let sink = start_sink(SinkConfig {
        threads: 1,
        keep_messages_max: 100,
        ..SinkConfig::default()
    })
    .unwrap();
    let engine = start_engine(
        dir.path(),
        (info.push_addr, &info.push_cert_pem),
        sink.addr(),
        &dns,
    );

    // ARC is rsa-sha256 only (RFC 8617 §4.1.3): the forwarder's domain has an RSA key.
    let fwd = provision_rsa(
        info.api_addr,
        &owner,
        &dns,
        ("forwarder", FWD, "fwd-mailer"),
    );
    let plain = provision(info.api_addr, &owner, &dns, "plain", PLAIN, "plain-mailer");
    // The author's key and DMARC record.
    let origin_key = petrel_policy::keys::generate(DkimAlgorithm::Rsa2048).unwrap();
    dns.upsert(txt(
        &format!("{ORIGIN_SELECTOR}._domainkey.{ORIGIN}."),
        TTL_SECS,
        &origin_key.dns_txt,
    ));
    dns.upsert(txt(
        &format!("_dmarc.{ORIGIN}."),
        TTL_SECS,
        "v=DMARC1; p=reject",
    ));
    let origin = DkimSigner::from_keys(
        ORIGIN,
        &[DkimKey {
            selector: ORIGIN_SELECTOR.into(),
            algorithm: DkimAlgorithm::Rsa2048,
            private_key_pkcs8_der: origin_key.private_key_pkcs8_der.clone(),
            active_from_unix_ms: 0,
            retired: false,
        }],
    )
    .unwrap()
    .expect("the origin's signer");
    let records = vec![
        (
            format!("{ORIGIN_SELECTOR}._domainkey.{ORIGIN}"),
            origin_key.dns_txt.clone(),
        ),
        (
            format!("{}._domainkey.{FWD}", fwd.selector),
            fwd.dkim_txt.clone(),
        ),
    ];

    // The setting: off by default, on through PATCH, shown.
    let path = format!("/v1/tenants/{}", fwd.tenant_id);
    assert_eq!(
        api(info.api_addr, "GET", &path, &owner, None).1["arc_seal"],
        false
    );
    let (code, t) = api(
        info.api_addr,
        "PATCH",
        &path,
        &owner,
        Some(serde_json::json!({"arc_seal": true})),
    );
    assert_eq!(
        (code, &t["arc_seal"]),
        (200, &serde_json::json!(true)),
        "{t}"
    );

    // 1. The first hop: accepted once the pushed policy says the tenant forwards (until then a
    //    foreign From is refused), delivered with an ARC set i=1 cv=none.
    let m = mailer(engine.smtp.port(), "fwd-mailer", &fwd.password);
    let message = original(&origin);
    let envelope_from = format!("srs-alice@{FWD}");
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        match submit(&m, &envelope_from, "first@dest.test", &message) {
            Ok(()) => break,
            Err(e) => {
                assert!(e.contains("5.7.26"), "{e}");
                assert!(Instant::now() < deadline, "arc_seal never applied: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let first = delivered(&sink, "first@dest.test");
    assert!(
        first.starts_with(b"ARC-Seal: i=1;"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    let seal = arc_header(&first, "ARC-Seal", 1).expect("ARC-Seal");
    assert!(
        seal.contains(&format!("d={FWD}")) && seal.contains("cv=none"),
        "{seal}"
    );
    assert!(seal.contains(&format!("s={}", fwd.selector)), "{seal}");
    assert!(seal.contains("a=rsa-sha256"), "{seal}");
    let ams = arc_header(&first, "ARC-Message-Signature", 1).expect("ARC-Message-Signature");
    assert!(ams.contains(&format!("d={FWD}")), "{ams}");
    let aar = arc_header(&first, "ARC-Authentication-Results", 1).expect("ARC-A-R");
    assert!(
        aar.contains(&format!("dkim=pass header.d={ORIGIN}")),
        "{aar}"
    );
    assert!(
        aar.contains(&format!("dmarc=pass header.from={ORIGIN}")),
        "{aar}"
    );
    assert!(aar.contains("arc=none"), "{aar}");
    assert!(!aar.contains("spf="), "SPF was not checked here: {aar}");

    // 2. The second hop: i=2, cv=pass.
    submit(&m, &envelope_from, "second@dest.test", &first).expect("second hop accepted");
    let second = delivered(&sink, "second@dest.test");
    let seal2 = arc_header(&second, "ARC-Seal", 2).expect("ARC-Seal i=2");
    assert!(seal2.contains("cv=pass"), "{seal2}");
    assert!(
        arc_header(&second, "ARC-Seal", 1).is_some(),
        "the first set stays"
    );
    let aar2 = arc_header(&second, "ARC-Authentication-Results", 2).expect("ARC-A-R i=2");
    assert!(aar2.contains("arc=pass"), "{aar2}");

    // 3. A body changed after the first hop: the chain fails, the forwarder still seals (i=2
    //    cv=fail, RFC 8617 §5.1.2).
    let mut tampered = first.clone();
    tampered.extend_from_slice(b"A footer a list added.\r\n");
    submit(&m, &envelope_from, "third@dest.test", &tampered).expect("tampered accepted");
    let third = delivered(&sink, "third@dest.test");
    let seal3 = arc_header(&third, "ARC-Seal", 2).expect("ARC-Seal i=2 of the tampered copy");
    assert!(seal3.contains("cv=fail"), "{seal3}");

    // 4. A tenant without the setting: no ARC headers.
    let mp = mailer(engine.smtp.port(), "plain-mailer", &plain.password);
    let own = format!(
        "From: <news@{PLAIN}>\r\nTo: <fourth@dest.test>\r\nSubject: plain\r\n\r\nHello.\r\n"
    );
    submit(
        &mp,
        &format!("news@{PLAIN}"),
        "fourth@dest.test",
        own.as_bytes(),
    )
    .expect("plain accepted");
    let fourth = delivered(&sink, "fourth@dest.test");
    assert!(fourth.starts_with(b"DKIM-Signature:"));
    assert!(
        !String::from_utf8_lossy(&fourth)
            .to_ascii_lowercase()
            .contains("arc-"),
        "{}",
        String::from_utf8_lossy(&fourth)
    );

    // The independent verifier.
    match dkimpy_arc(&first, &records) {
        Some(first) => {
            assert_eq!(first.cv, "pass", "first hop: {}", first.reason);
            assert!(first.dkim_ok, "the origin's DKIM-Signature still verifies");
            let second = dkimpy_arc(&second, &records).unwrap();
            assert_eq!(second.cv, "pass", "second hop: {}", second.reason);
            assert!(second.dkim_ok);
            // Petrel's set verifies and says the chain failed, which ends it for dkimpy.
            let third = dkimpy_arc(&third, &records).unwrap();
            assert!(third.newest_set_valid, "tampered: {}", third.reason);
            assert_eq!(third.cv, "terminated", "tampered: {}", third.reason);
            assert!(
                third.reason.contains("ARC-Seal[2] reported failure"),
                "{}",
                third.reason
            );
        }
        None => petrel_testkit::peer_missing(
            "dkimpy ARC check: python3 dkimpy/pynacl/authres not installed \
             (ops/test.sh installs them)",
        ),
    }

    // One seal of each cv, counted.
    for cv in ["none", "pass", "fail"] {
        let line = format!("petrel_arc_seals_total{{cv=\"{cv}\"}}");
        assert_eq!(metric(&engine, &line), Some(1.0), "{line}");
    }
    assert!(engine.stop());
}
