use petrel_policy::{PolicySnapshot, Tenant, TokenKey};
use petrel_reports::{Purpose, VerpKey};

use super::*;

const SECRET_OLD: [u8; 32] = [7; 32];
const SECRET: [u8; 32] = [9; 32];
const TENANT: &str = "ten_00000000000000aa";
const MESSAGE_ID: u64 = 0x0100_0000_0000_0042;

fn tenant(id: &str, on: bool) -> Tenant {
    Tenant {
        id: id.into(),
        name: id.into(),
        suspended: false,
        messages_per_second_max: None,
        messages_per_day_max: None,
        allow_unverified_domains: false,
        new_tenant_cap: None,
        sending_disabled: None,
        reputation_warning: None,
        list_unsubscribe: on,
        arc_seal: false,
        egress_pool: None,
        delivery_weight: 1,
    }
}

fn policy(version: u64, bounce_domain: &str, url_base: &str, keys: bool) -> CompiledPolicy {
    let snapshot = PolicySnapshot {
        version,
        tenants: vec![tenant(TENANT, true), tenant("ten_00000000000000bb", false)],
        return_path: ReturnPath {
            bounce_domain: bounce_domain.into(),
            one_click_url_base: url_base.into(),
            current_key_id: if keys { 2 } else { 0 },
            keys: if keys {
                vec![
                    TokenKey {
                        id: 1,
                        secret: SECRET_OLD.to_vec(),
                    },
                    TokenKey {
                        id: 2,
                        secret: SECRET.to_vec(),
                    },
                ]
            } else {
                vec![]
            },
        },
        ..PolicySnapshot::default()
    };
    CompiledPolicy::compile(snapshot).expect("compiles")
}

fn verifier() -> VerpKeys {
    VerpKeys::new(
        VerpKey::new(2, &SECRET).expect("key"),
        vec![VerpKey::new(1, &SECRET_OLD).expect("key")],
    )
    .expect("keys")
}

const MESSAGE: &[u8] = b"Received: from x by y; Thu, 1 Jan 2026 00:00:00 +0000\r\n\
From: a@acme.example\r\nTo: r@dest.example\r\nSubject: hi\r\n\r\nbody\r\n\r\nmore\r\n";

fn rcpt() -> Vec<String> {
    vec!["r@dest.example".to_string()]
}

fn header_value<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.match_indices(&format!("\r\n{name}: "))
        .map(|(i, m)| {
            let rest = &text[i + m.len()..];
            let mut end = 0;
            // Unfold: the value runs until a CRLF not followed by white space.
            while let Some(j) = rest[end..].find("\r\n") {
                end += j + 2;
                if !rest[end..].starts_with(' ') {
                    end -= 2;
                    break;
                }
            }
            &rest[..end]
        })
        .collect()
}

#[test]
fn both_links_are_added_at_the_end_of_the_header_section_and_verify() {
    let p = policy(1, "bounce.example.net", "https://cp.example.net", true);
    let r = rcpt();
    let req = Request {
        tenant_id: TENANT,
        recipients: &r,
    };
    assert!(wanted(&p, &req));
    let out = String::from_utf8(add(&p, &req, MESSAGE_ID, MESSAGE.to_vec())).expect("utf-8");
    let (head, body) = out.split_once("\r\n\r\n").expect("blank line");
    assert_eq!(body, "body\r\n\r\nmore\r\n", "the body is untouched");
    assert!(head.starts_with("Received: "), "trace headers stay on top");
    let post = header_value(&out, LIST_UNSUBSCRIBE_POST);
    assert_eq!(post, vec!["List-Unsubscribe=One-Click"]);
    let value = header_value(&out, LIST_UNSUBSCRIBE);
    assert_eq!(value.len(), 1, "{out}");
    let (mailto, https) = value[0].split_once(",\r\n ").expect("two folded links");
    let address = mailto
        .strip_prefix("<mailto:")
        .and_then(|s| s.strip_suffix('>'))
        .expect("mailto");
    let decoded = verifier()
        .decode_address(address)
        .expect("mailto token verifies");
    assert_eq!(decoded.purpose, Purpose::Unsubscribe);
    assert_eq!(decoded.domain, "bounce.example.net");
    assert_eq!(decoded.data.tenant_id, TENANT);
    assert_eq!(decoded.data.message_id, MESSAGE_ID);
    assert_eq!(decoded.data.recipient, RecipientRef::Index(0));
    let token = https
        .strip_prefix("<https://cp.example.net/u/")
        .and_then(|s| s.strip_suffix('>'))
        .expect("https link");
    let data = verifier()
        .decode_token(Purpose::OneClick, token)
        .expect("one-click token verifies");
    assert_eq!(
        data.recipient,
        RecipientRef::Address("r@dest.example".into())
    );
    assert_eq!(data.message_id, MESSAGE_ID);
    // Signed by the current key (2): the old key alone does not verify it.
    let old_only = VerpKeys::new(VerpKey::new(1, &SECRET_OLD).expect("key"), vec![]).expect("k");
    assert!(old_only.decode_token(Purpose::OneClick, token).is_err());
}

#[test]
fn only_the_links_that_can_be_made_and_the_post_header_only_with_https() {
    let r = rcpt();
    let req = Request {
        tenant_id: TENANT,
        recipients: &r,
    };
    let mailto_only = policy(2, "bounce.example.net", "", true);
    let out = String::from_utf8(add(&mailto_only, &req, 1, MESSAGE.to_vec())).expect("utf-8");
    let v = header_value(&out, LIST_UNSUBSCRIBE);
    assert!(
        v[0].starts_with("<mailto:u-") && !v[0].contains("https"),
        "{out}"
    );
    assert!(header_value(&out, LIST_UNSUBSCRIBE_POST).is_empty());
    let https_only = policy(3, "", "https://cp.example.net", true);
    let out = String::from_utf8(add(&https_only, &req, 1, MESSAGE.to_vec())).expect("utf-8");
    assert!(header_value(&out, LIST_UNSUBSCRIBE)[0].starts_with("<https://cp.example.net/u/"));
    assert_eq!(header_value(&out, LIST_UNSUBSCRIBE_POST).len(), 1);
    assert!(!wanted(&policy(4, "", "", true), &req));
}

#[test]
fn not_wanted_when_off_without_keys_or_with_several_recipients() {
    let p = policy(5, "bounce.example.net", "https://cp.example.net", true);
    let one = rcpt();
    let two = vec!["a@x.example".to_string(), "b@x.example".to_string()];
    let off = Request {
        tenant_id: "ten_00000000000000bb",
        recipients: &one,
    };
    assert!(!wanted(&p, &off));
    let unknown = Request {
        tenant_id: "ten_unknown",
        recipients: &one,
    };
    assert!(!wanted(&p, &unknown));
    let several = Request {
        tenant_id: TENANT,
        recipients: &two,
    };
    assert!(!wanted(&p, &several));
    let keyless = policy(6, "", "", false);
    let req = Request {
        tenant_id: TENANT,
        recipients: &one,
    };
    assert!(!wanted(&keyless, &req));
    // Called anyway (a caller bug): the message is left as it was.
    assert_eq!(add(&keyless, &req, 1, MESSAGE.to_vec()), MESSAGE);
}

#[test]
fn a_tenants_own_header_is_kept() {
    let p = policy(7, "bounce.example.net", "https://cp.example.net", true);
    let r = rcpt();
    let req = Request {
        tenant_id: TENANT,
        recipients: &r,
    };
    for own in [
        "List-Unsubscribe: <mailto:leave@list.example>\r\n",
        "list-unsubscribe : <https://list.example/x>\r\n",
        "LIST-UNSUBSCRIBE-POST: List-Unsubscribe=One-Click\r\n",
    ] {
        let msg = format!(
            "From: a@acme.example\r\n{own}Subject: s\r\n\r\nList-Unsubscribe: in the body\r\n"
        );
        assert_eq!(add(&p, &req, 1, msg.clone().into_bytes()), msg.into_bytes());
    }
    // A folded continuation line that merely mentions the name is not a header field.
    let msg = "From: a@acme.example\r\nSubject: s\r\n List-Unsubscribe: no\r\n\r\nb\r\n";
    let out = String::from_utf8(add(&p, &req, 1, msg.as_bytes().to_vec())).expect("utf-8");
    assert_eq!(header_value(&out, LIST_UNSUBSCRIBE).len(), 1, "{out}");
    // No header section end: unchanged.
    let headless = b"From: a@acme.example\r\nSubject: s\r\n".to_vec();
    assert_eq!(add(&p, &req, 1, headless.clone()), headless);
}
