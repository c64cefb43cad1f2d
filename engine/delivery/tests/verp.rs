//! VERP return paths on a real shard: a tenant's message goes out one recipient per
//! transaction, each with a signed return path (petrel-reports' real tokens) that names its
//! recipient; a message without a tenant and a null-sender message keep their sender and share
//! one transaction.

use std::sync::Arc;
use std::time::Duration;

use petrel_delivery::{
    Attribution, DeliveryConfig, DomainLimits, ReturnPathRequest, ReturnPathSource, TlsPolicy,
};
use petrel_reports::{Purpose, RecipientRef, TokenData, VerpKey, VerpKeys};
use petrel_testkit::shard::{routes, run_shard, ShardSetup};
use petrel_testkit::smtp_server::{Script, SmtpServer};

/// The bound on every wait of the scenario.
const TEST_DEADLINE: Duration = Duration::from_secs(20);
const BOUNCE_DOMAIN: &str = "bounce.petrel.test";
const TENANT: &str = "ten_00000000000000aa";

/// Signs return paths as the engine does (index tokens).
#[derive(Debug)]
struct Signer(VerpKeys);

impl ReturnPathSource for Signer {
    fn return_path(&self, r: &ReturnPathRequest<'_>) -> Option<String> {
        let data = TokenData {
            tenant_id: r.tenant_id.to_string(),
            message_id: r.message_id,
            recipient: RecipientRef::Index(u16::try_from(r.rcpt_index).ok()?),
        };
        self.0.return_path(&data, BOUNCE_DOMAIN).ok()
    }
}

fn keys() -> VerpKeys {
    VerpKeys::new(VerpKey::new(1, &[4; 32]).expect("key"), vec![]).expect("keys")
}

#[test]
fn a_tenants_recipients_each_get_their_own_signed_return_path() {
    let dest = SmtpServer::start(Script::by_local_part());
    let other = SmtpServer::start(Script::by_local_part());
    let mut cfg = DeliveryConfig {
        default_limits: DomainLimits {
            recipients_per_transaction_max: 10,
            tls: TlsPolicy::Disabled,
            ..DomainLimits::default()
        },
        idle_timeout_ms: 200,
        tick_ms_max: 50,
        ..DeliveryConfig::default()
    };
    cfg.return_path = Some(Arc::new(Signer(keys())));
    let setup = ShardSetup::new(cfg, routes(dest.addr, other.addr));
    let rcpts = ["a@dest.example", "b@dest.example", "c@dest.example"];
    let ((tenant_id, plain_id, dsn_id, done), _spool) = run_shard(setup, |h| async move {
        let tenant = Arc::new(Attribution::from(petrel_delivery::AttributionParts {
            tenant_id: Some(TENANT.into()),
            ..Default::default()
        }));
        let msg = h.spool().store_attributed(
            "news@shop.test",
            &rcpts,
            b"Subject: t\r\n\r\nx\r\n",
            Some(Arc::clone(&tenant)),
        );
        let tenant_id = msg.id;
        h.shard().enqueue(msg);
        let plain_id = h.enqueue("plain@shop.test", &["d@dest.example", "e@dest.example"]);
        let dsn = h.spool().store_attributed(
            "",
            &["f@dest.example", "g@dest.example"],
            b"\r\nx\r\n",
            Some(tenant),
        );
        let dsn_id = dsn.id;
        h.shard().enqueue(dsn);
        let done = h
            .await_spool(TEST_DEADLINE, |s| {
                [tenant_id, plain_id, dsn_id]
                    .iter()
                    .all(|id| s.removed().contains(id))
            })
            .await;
        (tenant_id, plain_id, dsn_id, done)
    });
    assert!(done, "every message delivered in time");
    let _ = (plain_id, dsn_id);
    let txns = dest.received();
    let keys = keys();
    let mut verped: Vec<(u16, String)> = Vec::new();
    for t in &txns {
        if t.mail_from.starts_with("b-") {
            assert_eq!(
                t.rcpts.len(),
                1,
                "one recipient per VERP transaction: {t:?}"
            );
            assert!(t.mail_from.ends_with(&format!("@{BOUNCE_DOMAIN}")));
            let decoded = keys.decode_address(&t.mail_from).expect("a valid token");
            assert_eq!(decoded.purpose, Purpose::Bounce);
            assert_eq!(decoded.data.tenant_id, TENANT);
            assert_eq!(decoded.data.message_id, tenant_id);
            let RecipientRef::Index(i) = decoded.data.recipient else {
                panic!("an index token")
            };
            verped.push((i, t.rcpts[0].clone()));
        }
    }
    verped.sort();
    assert_eq!(
        verped,
        vec![
            (0, "a@dest.example".to_string()),
            (1, "b@dest.example".to_string()),
            (2, "c@dest.example".to_string())
        ],
        "each token names the index of the recipient it went to"
    );
    let plain: Vec<_> = txns
        .iter()
        .filter(|t| t.mail_from == "plain@shop.test")
        .collect();
    assert_eq!(
        plain.len(),
        1,
        "an untenanted message keeps one transaction"
    );
    assert_eq!(plain[0].rcpts, ["d@dest.example", "e@dest.example"]);
    let null: Vec<_> = txns.iter().filter(|t| t.mail_from.is_empty()).collect();
    assert_eq!(null.len(), 1, "a null sender is never VERP'd");
    assert_eq!(null[0].rcpts.len(), 2);
}

/// A VERP'd message sent with DSN parameters to a next hop that offers DSN: the parameters are
/// not relayed (that hop's reports would go to the VERP address, and NOTIFY=NEVER would
/// silence the failures the return path is for), so Petrel answers NOTIFY=SUCCESS itself with
/// a `relayed` DSN to the sender.
#[test]
fn verp_transactions_carry_no_dsn_parameters_and_petrel_answers_notify() {
    use petrel_delivery::dsn_params::{MessageDsn, Notify, RcptDsn};
    let dest = SmtpServer::start(Script {
        dsn: true,
        ..Script::by_local_part()
    });
    let other = SmtpServer::start(Script::by_local_part());
    let mut cfg = DeliveryConfig {
        default_limits: DomainLimits {
            tls: TlsPolicy::Disabled,
            ..DomainLimits::default()
        },
        idle_timeout_ms: 200,
        tick_ms_max: 50,
        ..DeliveryConfig::default()
    };
    cfg.return_path = Some(Arc::new(Signer(keys())));
    let setup = ShardSetup::new(cfg, routes(dest.addr, other.addr));
    let (done, spool) = run_shard(setup, |h| async move {
        let mut msg = h.spool().store_attributed(
            "news@shop.test",
            &["a@dest.example", "b@dest.example"],
            b"From: news@shop.test\r\nSubject: t\r\n\r\nx\r\n",
            Some(Arc::new(Attribution::from(
                petrel_delivery::AttributionParts {
                    tenant_id: Some(TENANT.into()),
                    ..Default::default()
                },
            ))),
        );
        let success = Some(Notify {
            success: true,
            failure: true,
            delay: false,
        });
        msg.dsn = Some(Box::new(MessageDsn {
            ret: None,
            envid: None,
            recipients: vec![
                RcptDsn {
                    notify: success,
                    orcpt: None,
                },
                RcptDsn {
                    notify: Some(Notify::NEVER),
                    orcpt: None,
                },
            ]
            .into(),
        }));
        let id = msg.id;
        h.shard().enqueue(msg);
        h.await_spool(TEST_DEADLINE, |s| s.removed().contains(&id))
            .await
    });
    assert!(done, "delivered in time");
    let txns = dest.received();
    assert_eq!(txns.len(), 2, "one transaction per recipient: {txns:?}");
    for t in &txns {
        assert!(t.mail_from.starts_with("b-"), "VERP'd: {t:?}");
        assert_eq!(t.mail_params, "", "no DSN parameters under VERP: {t:?}");
        assert_eq!(t.rcpt_params, [""], "{t:?}");
    }
    let dsns = spool.dsn_texts();
    assert_eq!(dsns.len(), 1, "one relayed DSN, for a@ only: {dsns:?}");
    assert!(dsns[0].contains("Action: relayed"), "{}", dsns[0]);
    assert!(dsns[0].contains("a@dest.example"), "{}", dsns[0]);
}
