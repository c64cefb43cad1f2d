//! Attribution is stored in the message's own record: it survives a restart and a crash (the
//! spool dropped without closing), `read_body` of an attributed message returns the body alone,
//! messages stored without one come back empty, and an oversized one is refused.

mod common;

use common::{body, clear_config, config, envelope, inspect};
use petrel_spool::record::ATTRIBUTION_SIZE_MAX_BYTES;
use petrel_spool::{Attribution, DsnParams, DsnRet, Spool, SpoolError};
use petrel_testkit::glommio::run;

fn attribution(n: u64) -> Attribution {
    Attribution {
        tenant_id: Some(format!("tenant-{n}")),
        credential_id: Some(format!("cred-{n}")),
        from_domain: Some("example.com".into()),
        rfc822_message_id: Some(format!("m{n}@example.com")),
        tags: vec!["welcome".into(), format!("batch-{n}")],
        metadata: Some(format!("{{\"user\":\"{n}\",\"vip\":true}}")),
    }
}

#[test]
fn attribution_survives_a_crash_and_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let inspect_root = root.clone();
    let (a, b) = run(move || async move {
        let (spool, _) = Spool::open(config(&root, 1)).await.unwrap();
        let a = spool
            .store_attributed(&envelope(1, 2), &attribution(1), &body(1, 5000))
            .await
            .unwrap();
        let b = spool.store(&envelope(2, 1), &body(2, 100)).await.unwrap();
        // Dropped without close: what a kill -9 leaves (every store above was synced).
        drop(spool);

        let (spool, rec) = Spool::open(config(&root, 1)).await.unwrap();
        assert_eq!(rec.messages.len(), 2);
        assert_eq!((rec.records_skipped, rec.bytes_skipped), (0, 0));
        assert_eq!(rec.messages[0].id, a);
        assert_eq!(rec.messages[0].attribution, attribution(1));
        assert_eq!(rec.messages[0].envelope, envelope(1, 2));
        assert_eq!(rec.messages[0].body_len_bytes, 5000);
        assert_eq!(rec.messages[1].id, b);
        assert!(rec.messages[1].attribution.is_empty());
        // Read back from disk (the body cache is empty after a restart): the body alone.
        assert_eq!(spool.read_body(a).await.unwrap(), body(1, 5000));
        assert_eq!(spool.read_body(b).await.unwrap(), body(2, 100));
        spool.close().await.unwrap();

        let (spool, rec) = Spool::open(config(&root, 1)).await.unwrap();
        assert_eq!(rec.messages[0].attribution, attribution(1));
        spool.close().await.unwrap();
        (a, b)
    });
    let seen = inspect(&inspect_root).unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!((seen[0].id, &seen[0].attribution), (a, &attribution(1)));
    assert_eq!(seen[1].id, b);
    assert!(seen[1].attribution.is_empty());
}

#[test]
fn an_oversized_attribution_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(config(&root, 0)).await.unwrap();
        let huge = Attribution {
            metadata: Some("x".repeat(ATTRIBUTION_SIZE_MAX_BYTES)),
            ..Attribution::default()
        };
        let err = spool
            .store_attributed(&envelope(1, 1), &huge, b"body")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                SpoolError::TooLarge {
                    what: "attribution",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(spool.stats().messages, 0);
        spool.close().await.unwrap();
    });
}

/// `read_attributed` (delivery's read-back of a waiting message's attribution) gives the body
/// and the attribution from one read of the record: sealed or clear, with DSN parameters in the
/// record or not, before and after a restart; a message without one gives an empty one.
#[test]
fn read_attributed_gives_the_body_and_the_attribution() {
    for sealed in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        run(move || async move {
            let cfg = || {
                if sealed {
                    config(&root, 0)
                } else {
                    clear_config(&root, 0)
                }
            };
            let (spool, _) = Spool::open(cfg()).await.unwrap();
            let a = spool
                .store_attributed(&envelope(1, 1), &attribution(1), &body(1, 3000))
                .await
                .unwrap();
            let dsn = DsnParams {
                ret: Some(DsnRet::Hdrs),
                envid: Some("env-2".into()),
                recipients: Vec::new(),
            };
            let b = spool
                .store_message(None, &envelope(2, 2), &attribution(2), &dsn, &body(2, 10))
                .await
                .unwrap();
            let c = spool.store(&envelope(3, 1), &body(3, 10)).await.unwrap();
            for _ in 0..2 {
                let (got, attr) = spool.read_attributed(a).await.unwrap();
                assert_eq!(
                    (got, attr),
                    (body(1, 3000), attribution(1)),
                    "sealed {sealed}"
                );
                let (got, attr) = spool.read_attributed(b).await.unwrap();
                assert_eq!(
                    (got, attr),
                    (body(2, 10), attribution(2)),
                    "sealed {sealed}"
                );
                let (got, attr) = spool.read_attributed(c).await.unwrap();
                assert_eq!(got, body(3, 10));
                assert!(attr.is_empty());
            }
            spool.close().await.unwrap();
            let (spool, _) = Spool::open(cfg()).await.unwrap();
            let (got, attr) = spool.read_attributed(b).await.unwrap();
            assert_eq!(
                (got, attr),
                (body(2, 10), attribution(2)),
                "sealed {sealed}"
            );
            spool.remove(b).await.unwrap();
            assert!(matches!(
                spool.read_attributed(b).await,
                Err(SpoolError::NotFound(_))
            ));
            spool.close().await.unwrap();
        });
    }
}
