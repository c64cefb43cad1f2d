//! Table-driven access test: every endpoint, every role, another tenant's ids, and no key.
//! Expect 401 without a key, 403 when the role lacks the permission, 404 for another tenant's
//! ids (owners manage tenants, so tenant routes answer them), 2xx otherwise.

mod common;

use std::collections::BTreeSet;

use common::scenarios::new_tenant;
use petrel_control::api::openapi::{Access, AccessTable};
use petrel_control::auth::role_allows;
use petrel_control::Role;
use serde_json::json;

#[path = "roles/table.rs"]
mod table;

use table::{cases, Case, Target, B_SUPPRESSED, DELETED_TENANT};

/// One call of a case with `key` (None: no key).
async fn call(h: &common::Harness, case: &Case, key: Option<&str>, n: usize) -> common::Resp {
    match case.raw {
        None => h.call(case.method, &case.path, key, (case.body)(n)).await,
        Some((content_type, text)) => {
            let tcp = tokio::net::TcpStream::connect(h.info.api_addr)
                .await
                .expect("connect");
            let mut req = petrel_testkit::http::Request::new(case.method, &case.path)
                .header("Content-Type", content_type)
                .body(text(n));
            if let Some(k) = key {
                req = req.bearer(k);
            }
            req.send_over(tcp, &h.info.api_addr.to_string())
                .await
                .expect("API answers")
                .into()
        }
    }
}

fn expected(role: Role, case: &Case) -> u16 {
    if !role_allows(role, case.permission) {
        return 403;
    }
    match case.target {
        Target::Own => 200,
        Target::OtherTenantsObject => 404,
        Target::OtherTenant if role == Role::Owner => 200,
        Target::OtherTenant => 404,
    }
}

#[tokio::test]
async fn every_endpoint_every_role_and_tenant_isolation() {
    let h = common::start().await;
    let (_a, a_admin) = new_tenant(&h, "tenant-a").await;
    let mk = |role: &'static str| {
        let h = &h;
        let a_admin = a_admin.clone();
        async move {
            let r = h
                .call(
                    "POST",
                    "/v1/credentials",
                    Some(&a_admin),
                    Some(json!({"kind": "api", "name": role, "role": role})),
                )
                .await;
            assert_eq!(r.status, 201, "{:?}", r.body);
            r.body["secret"].as_str().expect("secret").to_string()
        }
    };
    let a_viewer = mk("viewer").await;
    let a_dev = mk("developer").await;
    let (b, b_admin) = new_tenant(&h, "tenant-b").await;
    let r = h
        .call(
            "POST",
            "/v1/domains",
            Some(&b_admin),
            Some(json!({"name": "b.example.test"})),
        )
        .await;
    let b_domain = r.body["id"].as_str().expect("b domain").to_string();
    let r = h
        .call(
            "POST",
            "/v1/credentials",
            Some(&b_admin),
            Some(json!({"kind": "smtp", "name": "b smtp"})),
        )
        .await;
    let b_cred = r.body["credential"]["id"]
        .as_str()
        .expect("b cred")
        .to_string();

    let r = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&b_admin),
            Some(json!({"url": "https://93.184.216.34/b", "events": ["bounced"]})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let b_hook = r.body["id"].as_str().expect("b webhook").to_string();
    let r = h
        .call(
            "POST",
            "/v1/suppressions",
            Some(&b_admin),
            Some(json!({"address": B_SUPPRESSED})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (c, _) = new_tenant(&h, "tenant-c").await;
    DELETED_TENANT.set(c).expect("set once");
    let table = cases(&b, &b_domain, &b_cred, &b_hook);
    // The table covers every documented route, with the permission the document declares.
    let doc = h.call("GET", "/v1/openapi.json", None, None).await.body;
    let documented: BTreeSet<(String, String, &str)> = AccessTable::from_document(&doc)
        .expect("access table")
        .entries()
        .into_iter()
        .filter_map(|(m, p, a)| match a {
            Access::Requires(perm) => Some((m.to_string(), p, perm.name())),
            Access::Public => None,
        })
        .collect();
    let tested: BTreeSet<(String, String, &str)> = table
        .iter()
        .map(|c| {
            (
                c.method.to_string(),
                c.route.to_string(),
                c.permission.name(),
            )
        })
        .collect();
    assert_eq!(documented, tested);

    let keys = [
        (Role::Viewer, a_viewer),
        (Role::Developer, a_dev),
        (Role::Admin, a_admin.clone()),
        (Role::Owner, h.owner_key.clone()),
    ];
    let mut n = 0;
    let mut failures = Vec::new();
    for case in &table {
        n += 1;
        let r = call(&h, case, None, n).await;
        if r.status != 401 || r.code() != "unauthorized" {
            failures.push(format!(
                "no key: {} {} -> {} {:?}",
                case.method, case.path, r.status, r.body
            ));
        }
    }
    for (role, key) in &keys {
        for case in &table {
            n += 1;
            let r = call(&h, case, Some(key), n).await;
            let want = expected(*role, case);
            let good = if want == 200 {
                (200..=204).contains(&r.status)
            } else {
                r.status == want
            };
            let body_ok = r.status < 400 || r.body["error"]["code"].is_string();
            if !good || !body_ok {
                failures.push(format!(
                    "{role:?}: {} {} -> {} (want {want}) {:?}",
                    case.method, case.path, r.status, r.body
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing of tenant B changed through A's keys (the owner only suspended and restored it).
    let r = h
        .call(
            "GET",
            &format!("/v1/domains/{b_domain}"),
            Some(&b_admin),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "B's domain intact: {:?}", r.body);
    assert_eq!(
        r.body["keys"].as_array().map(Vec::len),
        Some(1),
        "no rotation through A"
    );
    let r = h
        .call(
            "GET",
            &format!("/v1/credentials/{b_cred}"),
            Some(&b_admin),
            None,
        )
        .await;
    assert_eq!(r.body["revoked"], false);
    let r = h
        .call(
            "GET",
            &format!("/v1/webhooks/{b_hook}"),
            Some(&b_admin),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "B's webhook intact: {:?}", r.body);
    assert!(
        r.body["previous_secret_valid_until_unix_ms"].is_null(),
        "no rotation through A"
    );
    assert!(r.body["rotated_unix_ms"].is_null());
    let r = h
        .call("GET", "/v1/suppressions", Some(&b_admin), None)
        .await;
    assert_eq!(
        r.body["suppressions"][0]["address"], B_SUPPRESSED,
        "B's suppression intact: {:?}",
        r.body
    );
    // And A's admin sees none of B in listings or the audit log.
    for path in [
        "/v1/domains",
        "/v1/credentials",
        "/v1/audit-log",
        "/v1/webhooks",
        "/v1/suppressions",
    ] {
        let r = h.call("GET", path, Some(&a_admin), None).await;
        let text = r.body.to_string();
        assert!(
            !text.contains(&b) && !text.contains("b.example.test"),
            "{path} leaks B: {text}"
        );
    }
}

#[tokio::test]
async fn own_objects_answer_where_foreign_ones_404() {
    // Positive control for the table above: the same routes with the caller's own ids work.
    let h = common::start().await;
    let (_a, admin) = new_tenant(&h, "tenant-own").await;
    let r = h
        .call(
            "POST",
            "/v1/domains",
            Some(&admin),
            Some(json!({"name": "own.example.test"})),
        )
        .await;
    let d = r.body["id"].as_str().expect("domain").to_string();
    let r = h
        .call(
            "POST",
            "/v1/credentials",
            Some(&admin),
            Some(json!({"kind": "smtp", "name": "own"})),
        )
        .await;
    let c = r.body["credential"]["id"]
        .as_str()
        .expect("cred")
        .to_string();
    for (method, path, body) in [
        ("GET", format!("/v1/domains/{d}"), None),
        ("POST", format!("/v1/domains/{d}/verify"), None),
        ("POST", format!("/v1/domains/{d}/rotate"), None),
        ("POST", format!("/v1/domains/{d}/check"), None),
        (
            "PUT",
            format!("/v1/domains/{d}/limits"),
            Some(json!({"messages_per_second_max": 3})),
        ),
        ("GET", format!("/v1/credentials/{c}"), None),
        ("POST", format!("/v1/credentials/{c}/rotate"), None),
        ("POST", format!("/v1/credentials/{c}/revoke"), None),
        ("DELETE", format!("/v1/domains/{d}"), None),
    ] {
        let r = h.call(method, &path, Some(&admin), body).await;
        assert!(
            (200..=204).contains(&r.status),
            "{method} {path} -> {} {:?}",
            r.status,
            r.body
        );
    }
    // A non-owner sees its own tenant record, and only that.
    let r = h.call("GET", "/v1/credentials", Some(&admin), None).await;
    let tenant = r.body[0]["tenant_id"].as_str().expect("tenant").to_string();
    let r = h
        .call("GET", &format!("/v1/tenants/{tenant}"), Some(&admin), None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["name"], "tenant-own");
}

/// Keys may carry an expiry (issue 16): a bad expiry is a 422; past it an API key gets 401 at
/// once, and the expiry task revokes it and an SMTP credential with it, audited as
/// `credential.expire` (the revocation is what reaches the engines).
#[tokio::test]
async fn credentials_expire_and_are_revoked_with_an_audit_entry() {
    use common::webhooks::{TestClock, HOUR_MS};
    use std::sync::Arc;
    let clock = Arc::new(TestClock::default());
    let h = common::start_custom(
        None,
        common::Tweaks {
            clock: Some(clock.clone()),
            ..Default::default()
        },
    )
    .await;
    let (_t, admin) = new_tenant(&h, "expiring").await;
    let now = petrel_control::Clock::now_unix_ms(clock.as_ref());
    for bad in [now - 1, now + 11 * 366 * 86_400_000] {
        let r = h
            .call(
                "POST",
                "/v1/credentials",
                Some(&admin),
                Some(json!({"kind": "api", "name": "x", "expires_unix_ms": bad})),
            )
            .await;
        assert_eq!(r.status, 422, "{}", r.body);
    }
    let at = now + HOUR_MS;
    let r = h
        .call(
            "POST",
            "/v1/credentials",
            Some(&admin),
            Some(json!({"kind": "api", "name": "hourly", "role": "viewer", "expires_unix_ms": at})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["credential"]["expires_unix_ms"], at);
    let key = r.body["secret"].as_str().unwrap().to_string();
    let r = h
        .call(
            "POST",
            "/v1/credentials",
            Some(&admin),
            Some(json!({"kind": "smtp", "name": "hourly-smtp", "expires_unix_ms": at})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let smtp_id = r.body["credential"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        h.call("GET", "/v1/credentials", Some(&key), None)
            .await
            .status,
        200
    );

    clock.advance(HOUR_MS);
    let r = h.call("GET", "/v1/credentials", Some(&key), None).await;
    assert_eq!(r.status, 401, "an expired key fails at once: {}", r.body);
    // Within a few of the task's passes both are revoked, and the audit log says why.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = h.call("GET", "/v1/credentials", Some(&admin), None).await;
        let revoked = |name: &str| {
            r.body
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == name && c["revoked"] == true)
        };
        if revoked("hourly") && revoked("hourly-smtp") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.body);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = h
        .owner("GET", "/v1/audit-log?action=credential.expire", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let text = r.body.to_string();
    assert!(
        text.contains(&smtp_id) && text.contains("system:credential-expiry"),
        "{text}"
    );
}

/// `GET /v1/credentials` with `key`, as if through a proxy that says the client is `xff`.
async fn via_proxy(h: &common::Harness, key: &str, xff: Option<&str>) -> u16 {
    let mut req = petrel_testkit::http::Request::new("GET", "/v1/credentials").bearer(key);
    if let Some(x) = xff {
        req = req.header("X-Forwarded-For", x);
    }
    let tcp = tokio::net::TcpStream::connect(h.info.api_addr)
        .await
        .expect("connect");
    req.send_over(tcp, &h.info.api_addr.to_string())
        .await
        .expect("answer")
        .status
}

/// The IP allowlist sees the client behind a trusted proxy (issue 16): with loopback as the
/// operator's proxy, `X-Forwarded-For` names the client; from a peer that is not a trusted
/// proxy the header is ignored, so a client cannot choose its address.
#[tokio::test]
async fn the_allowlist_sees_the_client_behind_a_trusted_proxy_and_only_there() {
    for trusted in [true, false] {
        let h = common::start_custom(
            None,
            common::Tweaks {
                api_trusted_proxies: if trusted {
                    vec!["127.0.0.0/8".parse().unwrap()]
                } else {
                    Vec::new()
                },
                ..Default::default()
            },
        )
        .await;
        let (_t, admin) = new_tenant(&h, "proxied").await;
        let r = h
            .call(
                "POST",
                "/v1/credentials",
                Some(&admin),
                Some(json!({"kind": "api", "name": "office", "ip_allowlist": ["198.51.100.7"]})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let key = r.body["secret"].as_str().unwrap().to_string();
        let office = via_proxy(&h, &key, Some("198.51.100.7")).await;
        let spoofed_chain = via_proxy(&h, &key, Some("198.51.100.7, 203.0.113.9")).await;
        let elsewhere = via_proxy(&h, &key, Some("198.51.100.8")).await;
        let direct = via_proxy(&h, &key, None).await;
        if trusted {
            assert_eq!(office, 200);
            assert_eq!(spoofed_chain, 403, "the rightmost untrusted hop counts");
        } else {
            assert_eq!(office, 403, "an untrusted peer's header is ignored");
        }
        assert_eq!((elsewhere, direct), (403, 403));
    }
}
