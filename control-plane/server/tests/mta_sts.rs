//! Inbound MTA-STS (issue 18): `GET /.well-known/mta-sts.txt` serves the intake's policy for
//! the bounce domain and for verified domains whose MX records name the intake, and domain
//! views show the records to publish. Real HTTP on loopback, the loopback DNS server.

mod common;

use std::net::SocketAddr;

use petrel_control::mta_sts::{InboundMtaSts, Mode, MAX_AGE_SECS_DEFAULT};
use petrel_testkit::dns::mx;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// Status, headers (lowercase names) and body of one GET with the given `Host`.
async fn get_policy(addr: SocketAddr, host: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {POLICY_PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn inbound() -> InboundMtaSts {
    InboundMtaSts::new(
        &[
            "mx1.petrel.test".to_string(),
            "*.pool.petrel.test".to_string(),
        ],
        Mode::Enforce,
        MAX_AGE_SECS_DEFAULT,
        Some("mailto:tlsrpt@petrel.test"),
    )
    .expect("settings")
    .expect("on")
}

#[tokio::test]
async fn the_policy_is_served_for_domains_the_intake_receives() {
    let policy = inbound();
    let h = common::start_custom(
        None,
        common::Tweaks {
            mta_sts: Some(policy.clone()),
            return_path_domain: Some("bounces.petrel.test".into()),
            ..Default::default()
        },
    )
    .await;
    let addr = h.info.api_addr;

    // The bounce domain: always the intake's.
    let (status, head, body) = get_policy(addr, "mta-sts.bounces.petrel.test").await;
    assert_eq!(status, 200, "{head}{body}");
    assert!(head.contains("content-type: text/plain"), "{head}");
    assert_eq!(body, policy.policy());
    assert!(
        body.starts_with("version: STSv1\r\nmode: enforce\r\n"),
        "{body}"
    );

    // A verified domain whose MX names the intake (one exact, one under the wildcard).
    let (id, key) = common::domain_auth::verified_domain(&h, "shop-co", "shop.example.test").await;
    h.dns
        .upsert(mx("shop.example.test", 60, 10, "mx1.petrel.test"));
    h.dns
        .upsert(mx("shop.example.test", 60, 20, "b.pool.petrel.test"));
    let (status, _, body) = get_policy(addr, "MTA-STS.Shop.Example.Test:443").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, policy.policy());

    // Its view lists what to publish, with the policy's id.
    let r = h
        .call("GET", &format!("/v1/domains/{id}"), Some(&key), None)
        .await;
    let records = r.body["inbound_records"]
        .as_array()
        .expect("inbound_records");
    let sts = records
        .iter()
        .find(|r| r["purpose"] == "mta_sts")
        .expect("an _mta-sts record");
    assert_eq!(sts["name"], "_mta-sts.shop.example.test");
    assert_eq!(sts["value"], format!("v=STSv1; id={}", policy.id()));
    assert!(records
        .iter()
        .any(|r| r["purpose"] == "tls_rpt"
            && r["value"] == "v=TLSRPTv1; rua=mailto:tlsrpt@petrel.test"));
    assert!(records
        .iter()
        .any(|r| r["purpose"] == "mx" && r["value"] == "10 mx1.petrel.test."));

    // A verified domain whose mail goes elsewhere in part: no policy (it would make senders
    // defer the mail for the other host).
    common::domain_auth::verified_domain(&h, "split-co", "split.example.test").await;
    h.dns
        .upsert(mx("split.example.test", 60, 10, "mx1.petrel.test"));
    h.dns
        .upsert(mx("split.example.test", 60, 20, "mx.elsewhere.test"));
    let (status, _, body) = get_policy(addr, "mta-sts.split.example.test").await;
    assert_eq!(status, 404, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
    assert_eq!(err["error"]["code"], "not_found", "{body}");

    // A verified domain without MX, and a name nobody verified (its MX pointing at us).
    common::domain_auth::verified_domain(&h, "nomx-co", "nomx.example.test").await;
    let (status, _, _) = get_policy(addr, "mta-sts.nomx.example.test").await;
    assert_eq!(status, 404);
    h.dns
        .upsert(mx("stranger.example.test", 60, 10, "mx1.petrel.test"));
    let (status, _, _) = get_policy(addr, "mta-sts.stranger.example.test").await;
    assert_eq!(status, 404);

    // A Host that is no policy host.
    for bad in ["www.shop.example.test", "mta-sts.shop.test:x"] {
        let (status, _, body) = get_policy(addr, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let err: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(err["error"]["code"], "bad_host", "{body}");
    }
}

#[tokio::test]
async fn without_intake_mx_nothing_is_served_and_nothing_shown() {
    let h = common::start_custom(
        None,
        common::Tweaks {
            return_path_domain: Some("bounces.petrel.test".into()),
            ..Default::default()
        },
    )
    .await;
    let (status, _, _) = get_policy(h.info.api_addr, "mta-sts.bounces.petrel.test").await;
    assert_eq!(status, 404);
    let (id, key) = common::domain_auth::verified_domain(&h, "off-co", "off.example.test").await;
    let r = h
        .call("GET", &format!("/v1/domains/{id}"), Some(&key), None)
        .await;
    assert_eq!(
        r.body["inbound_records"],
        serde_json::json!([]),
        "{:?}",
        r.body
    );
}
