//! DSN parameters (RFC 3461, issue 18) are stored in the message's own record, sealed or in
//! the clear: they survive a crash and a clean restart, `read_body` still returns the body
//! alone, and a message stored without any is written exactly as before (its old record kind)
//! and comes back with none.

mod common;

use std::path::Path;

use common::{body, clear_config, config, data_files, envelope, inspect};
use petrel_spool::record::{
    self, decode_at, decode_attribution_part, decode_store, dsn_part, encode_attribution,
    encode_dsn, encode_envelope, encode_record, store_prefix, Kind, DSN_SIZE_MAX_BYTES,
};
use petrel_spool::{
    Attribution, DsnParams, DsnRet, RecipientDsn, RecipientState, RecipientUpdate, Spool,
    SpoolConfig, NOTIFY_DELAY, NOTIFY_FAILURE, NOTIFY_SUCCESS,
};
use petrel_testkit::glommio::run;

fn dsn() -> DsnParams {
    DsnParams {
        ret: Some(DsnRet::Hdrs),
        envid: Some("QQ+314159".into()),
        recipients: vec![
            RecipientDsn {
                notify: Some(NOTIFY_SUCCESS | NOTIFY_DELAY),
                orcpt: Some("rfc822;Orig+1@dest1.example".into()),
            },
            RecipientDsn {
                notify: Some(0),
                orcpt: None,
            },
        ],
    }
}

fn attribution() -> Attribution {
    Attribution {
        tenant_id: Some("tenant-a".into()),
        ..Attribution::default()
    }
}

/// The kinds of the store records in shard 0's data files, in file order.
fn store_kinds(root: &Path) -> Vec<Kind> {
    let mut kinds = Vec::new();
    for f in data_files(root, 0) {
        let bytes = std::fs::read(&f).unwrap();
        let scan = record::scan(&bytes);
        kinds.extend(scan.records.iter().map(|r| r.kind).filter(|k| k.is_store()));
    }
    kinds
}

fn round_trip(cfg: fn(&Path, u8) -> SpoolConfig, sealed: bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let r = root.clone();
    let (a, b) = run(move || async move {
        let (spool, _) = Spool::open(cfg(&r, 0)).await.unwrap();
        let a = spool
            .store_message(
                None,
                &envelope(1, 2),
                &attribution(),
                &dsn(),
                &body(1, 3000),
            )
            .await
            .unwrap();
        let b = spool
            .store_message(
                None,
                &envelope(2, 1),
                &attribution(),
                &DsnParams::default(),
                &body(2, 100),
            )
            .await
            .unwrap();
        let up = RecipientUpdate {
            index: 1,
            state: RecipientState::Bounced,
            attempts: 1,
            next_attempt_unix_ms: 0,
            last_reply: Some("550 5.1.1 no".into()),
        };
        spool.update(a, &[up]).await.unwrap();
        // Dropped without close: what a kill -9 leaves.
        drop(spool);

        let (spool, rec) = Spool::open(cfg(&r, 0)).await.unwrap();
        assert_eq!((rec.records_skipped, rec.messages.len()), (0, 2));
        assert_eq!(rec.messages[0].id, a);
        assert_eq!(rec.messages[0].dsn, dsn());
        assert_eq!(rec.messages[0].attribution, attribution());
        assert_eq!(rec.messages[1].id, b);
        assert!(rec.messages[1].dsn.is_empty());
        // From disk (the body cache is empty after a restart): the body alone.
        assert_eq!(spool.read_body(a).await.unwrap(), body(1, 3000));
        assert_eq!(spool.read_body(b).await.unwrap(), body(2, 100));
        spool.close().await.unwrap();

        let (spool, rec) = Spool::open(cfg(&r, 0)).await.unwrap();
        assert_eq!(rec.messages[0].dsn, dsn());
        spool.close().await.unwrap();
        (a, b)
    });
    let (with, without) = if sealed {
        (Kind::SealedStoreDsn, Kind::SealedStore)
    } else {
        (Kind::StoreDsn, Kind::StoreAttributed)
    };
    assert_eq!(store_kinds(&root), [with, without]);
    if sealed {
        let seen = inspect(&root).unwrap();
        assert_eq!((seen[0].id, &seen[0].dsn), (a, &dsn()));
        assert_eq!(seen[1].id, b);
        assert!(seen[1].dsn.is_empty());
    }
}

#[test]
fn sealed_dsn_parameters_survive_a_crash_and_a_restart() {
    round_trip(config, true);
}

#[test]
fn clear_dsn_parameters_survive_a_crash_and_a_restart() {
    round_trip(clear_config, false);
}

fn frame_parts(kind: Kind, parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_record(&mut v, kind, parts, 8);
    v
}

/// The record format itself: a kind 8 record round-trips with or without an attribution, a
/// damaged one is refused, and the older kinds decode with no DSN parameters.
#[test]
fn a_store_record_with_dsn_parameters_round_trips_and_old_kinds_have_none() {
    let env = envelope(1, 2);
    let d = DsnParams {
        ret: Some(DsnRet::Hdrs),
        envid: Some("QQ314159".into()),
        recipients: vec![
            RecipientDsn::default(),
            RecipientDsn {
                notify: Some(NOTIFY_SUCCESS | NOTIFY_FAILURE),
                orcpt: Some("rfc822;bob+x@example.org".into()),
            },
        ],
    };
    assert!(encode_dsn(&DsnParams::default()).unwrap().is_empty());
    let meta = encode_envelope(&env).unwrap();
    for attribution in [Attribution::default(), attribution()] {
        let attr = encode_attribution(&attribution).unwrap();
        let dsn = encode_dsn(&d).unwrap();
        assert!(dsn.len() <= DSN_SIZE_MAX_BYTES);
        let part = dsn_part(&attr, &dsn);
        let kind = Kind::store_kind(&attribution, false, true);
        assert_eq!(kind, Kind::StoreDsn);
        let p = store_prefix(3, meta.len(), part.len());
        let v = frame_parts(kind, &[&p, &meta, &part, b"body"]);
        let r = decode_at(&v, 0).unwrap();
        assert!(r.kind.is_store() && r.kind.has_dsn() && !r.kind.is_sealed_store());
        let s = decode_store(r.kind, r.payload).unwrap();
        assert_eq!(
            (&s.envelope, &s.attribution, &s.dsn),
            (&env, &attribution, &d)
        );
        assert_eq!(s.body, b"body");
    }
    // A kind 8 record must carry parameters, and its attribution length must fit.
    let p = store_prefix(3, meta.len(), 4);
    let v = frame_parts(Kind::StoreDsn, &[&p, &meta, &0u32.to_le_bytes(), b"body"]);
    assert!(decode_store(Kind::StoreDsn, decode_at(&v, 0).unwrap().payload).is_none());
    let part = dsn_part(&[], &encode_dsn(&d).unwrap());
    let mut bad = part.clone();
    bad[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(decode_attribution_part(Kind::StoreDsn, &bad).is_none());
    assert_eq!(
        decode_attribution_part(Kind::StoreDsn, &part),
        Some((Attribution::default(), d))
    );
    // Records of the older kinds have no DSN parameters.
    assert_eq!(
        decode_attribution_part(Kind::Store, &[]),
        Some((Attribution::default(), DsnParams::default()))
    );
    let attr = encode_attribution(&attribution()).unwrap();
    assert_eq!(
        decode_attribution_part(Kind::StoreAttributed, &attr),
        Some((attribution(), DsnParams::default()))
    );
}
