//! Sealed at rest (issue 16): no plaintext in the files, a tampered record is refused, a
//! deleted tenant's mail is shredded while the others' stays, key-encryption-key rotation with
//! mail in the spool, and a sealed spool refuses to open without its keyring.

mod common;

use std::path::Path;

use common::{body, config, data_files, envelope, inspect, journal_files, keys};
use petrel_seal::{KekFile, KeySource};
use petrel_spool::{Attribution, RecipientState, RecipientUpdate, Spool, SpoolConfig, SpoolError};
use petrel_testkit::glommio::run;

const MARKER: &str = "MARKER-7f3a9c";

fn attributed(tenant: &str) -> Attribution {
    Attribution {
        tenant_id: Some(tenant.into()),
        rfc822_message_id: Some(format!("{MARKER}-id@example.com")),
        ..Attribution::default()
    }
}

fn marked_envelope(n: u64, tenant: &str) -> petrel_spool::Envelope {
    let mut e = envelope(n, 2);
    e.mail_from = format!("{MARKER}-sender@example.com");
    e.recipients[0].address = format!("{MARKER}-rcpt@example.org");
    e.tenant = Some(tenant.into());
    e
}

fn marked_body(n: u64) -> Vec<u8> {
    let mut b = format!("Subject: {MARKER} {n}\r\n\r\n").into_bytes();
    b.extend_from_slice(&body(n, 2000));
    b
}

fn raw_files_contain(root: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    for f in data_files(root, 0)
        .into_iter()
        .chain(journal_files(root, 0))
    {
        let bytes = std::fs::read(&f).unwrap();
        if bytes.windows(needle.len()).any(|w| w == needle) {
            hits.push(f);
        }
    }
    hits
}

#[test]
fn nothing_readable_reaches_the_files_and_everything_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let r = root.clone();
    let ids = run(move || async move {
        let (spool, _) = Spool::open(config(&r, 0)).await.unwrap();
        let mut ids = Vec::new();
        for n in 0..4 {
            let t = if n % 2 == 0 { "tenant-a" } else { "tenant-b" };
            let id = spool
                .store_attributed(&marked_envelope(n, t), &attributed(t), &marked_body(n))
                .await
                .unwrap();
            let reply = format!("550 5.1.1 <{MARKER}-rcpt@example.org> unknown");
            let up = RecipientUpdate {
                index: 0,
                state: RecipientState::Bounced,
                attempts: 1,
                next_attempt_unix_ms: 0,
                last_reply: Some(reply),
            };
            spool.update(id, &[up]).await.unwrap();
            ids.push(id);
        }
        spool.close().await.unwrap();
        ids
    });
    assert!(raw_files_contain(&root, MARKER.as_bytes()).is_empty());
    assert!(raw_files_contain(&root, b"tenant-a").is_empty());
    let r = root.clone();
    run(move || async move {
        let (spool, rec) = Spool::open(config(&r, 0)).await.unwrap();
        assert_eq!(rec.messages.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
        assert_eq!((rec.records_skipped, rec.messages_shredded), (0, 0));
        let m = &rec.messages[1];
        assert_eq!(m.envelope.tenant.as_deref(), Some("tenant-b"));
        assert_eq!(m.envelope.recipients[0].state, RecipientState::Bounced);
        assert!(m.envelope.recipients[0]
            .last_reply
            .as_deref()
            .unwrap()
            .contains(MARKER));
        assert_eq!(m.attribution, attributed("tenant-b"));
        // From disk (the cache is empty after a restart).
        assert_eq!(spool.read_body(ids[2]).await.unwrap(), marked_body(2));
        spool.close().await.unwrap();
    });
    assert_eq!(inspect(&root).unwrap().len(), 4);
    // Without the keyring the spool refuses to open rather than drop what it cannot read.
    assert!(matches!(
        petrel_spool::inspect(&root, None),
        Err(SpoolError::NoKeyring)
    ));
    let r = root.clone();
    let refused = run(move || async move { Spool::open(SpoolConfig::new(&r, 0)).await.err() });
    assert!(matches!(refused, Some(SpoolError::NoKeyring)));
}

#[test]
fn a_tampered_sealed_record_is_skipped_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let r = root.clone();
    let ids = run(move || async move {
        let (spool, _) = Spool::open(config(&r, 0)).await.unwrap();
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(spool.store(&envelope(n, 1), &body(n, 800)).await.unwrap());
        }
        spool.close().await.unwrap();
        ids
    });
    // Flip a ciphertext bit of the second record and fix its checksums up: only the GCM tag can
    // tell.
    let file = data_files(&root, 0).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let scan = petrel_spool::record::scan(&bytes);
    let stores: Vec<_> = scan.records.iter().filter(|r| r.kind.is_store()).collect();
    let (off, payload_len, rec_len) = (
        stores[1].offset as usize,
        stores[1].payload.len(),
        stores[1].record_len as usize,
    );
    let p = off + petrel_spool::record::RECORD_HEADER_BYTES;
    bytes[p + 100] ^= 0x04;
    let kind = bytes[off + 4];
    let mut fixed = Vec::new();
    petrel_spool::record::encode_record(
        &mut fixed,
        petrel_spool::record::Kind::SealedStore,
        &[&bytes[p..p + payload_len]],
        8,
    );
    assert_eq!((kind, fixed.len() <= rec_len), (6, true));
    bytes[off..off + fixed.len()].copy_from_slice(&fixed);
    std::fs::write(&file, &bytes).unwrap();
    let r = root.clone();
    run(move || async move {
        let (spool, rec) = Spool::open(config(&r, 0)).await.unwrap();
        let got: Vec<_> = rec.messages.iter().map(|m| m.id).collect();
        assert_eq!(got, vec![ids[0], ids[2]]);
        assert_eq!(rec.records_skipped, 1);
        spool.close().await.unwrap();
    });
}

#[test]
fn a_deleted_tenants_mail_is_shredded_and_the_others_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let r = root.clone();
    let (gone, kept) = run(move || async move {
        let (spool, _) = Spool::open(config(&r, 0)).await.unwrap();
        let mut gone = Vec::new();
        let mut kept = Vec::new();
        for n in 0..6 {
            let t = if n % 2 == 0 { "gone" } else { "kept" };
            let id = spool
                .store_attributed(&marked_envelope(n, t), &attributed(t), &marked_body(n))
                .await
                .unwrap();
            if n % 2 == 0 { &mut gone } else { &mut kept }.push(id);
        }
        spool.close().await.unwrap();
        (gone, kept)
    });
    assert_eq!(keys(&root).destroy_owner("gone").unwrap(), 1);
    let r = root.clone();
    let k = kept.clone();
    run(move || async move {
        let (spool, rec) = Spool::open(config(&r, 0)).await.unwrap();
        assert_eq!(rec.messages.iter().map(|m| m.id).collect::<Vec<_>>(), k);
        assert_eq!((rec.messages_shredded, rec.records_skipped), (3, 0));
        assert!(matches!(
            spool.read_body(gone[0]).await,
            Err(SpoolError::NotFound(_))
        ));
        assert_eq!(spool.read_body(k[0]).await.unwrap(), marked_body(1));
        // New mail of the deleted tenant would get a new key: ids keep climbing.
        let id = spool.store(&envelope(9, 1), &body(9, 10)).await.unwrap();
        assert!(id > *gone.iter().max().unwrap());
        spool.close().await.unwrap();
    });
    assert_eq!(inspect(&root).unwrap().len(), 4);
}

#[test]
fn rotating_the_key_encryption_key_keeps_every_message_readable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let r = root.clone();
    let before = run(move || async move {
        let (spool, _) = Spool::open(config(&r, 0)).await.unwrap();
        let id = spool
            .store_attributed(&marked_envelope(1, "t"), &attributed("t"), &marked_body(1))
            .await
            .unwrap();
        spool.close().await.unwrap();
        id
    });
    let kek = std::sync::Arc::new(KekFile::load(&root.join("kek")).unwrap());
    let ring = petrel_seal::Keyring::open(&root.join("keys"), kek.clone()).unwrap();
    let v2 = kek.add_version().unwrap();
    assert_eq!(ring.rewrap().unwrap(), 1);
    kek.retain_versions(&[v2]).unwrap();
    assert_eq!(
        KekFile::load(&root.join("kek")).unwrap().current_version(),
        v2
    );
    let r = root.clone();
    run(move || async move {
        let (spool, rec) = Spool::open(config(&r, 0)).await.unwrap();
        assert_eq!(rec.messages.len(), 1);
        assert_eq!(spool.read_body(before).await.unwrap(), marked_body(1));
        let after = spool
            .store_attributed(&marked_envelope(2, "t"), &attributed("t"), &marked_body(2))
            .await
            .unwrap();
        spool.close().await.unwrap();
        let (spool, rec) = Spool::open(config(&r, 0)).await.unwrap();
        assert_eq!(rec.messages.len(), 2);
        assert_eq!(spool.read_body(after).await.unwrap(), marked_body(2));
        spool.close().await.unwrap();
    });
}
