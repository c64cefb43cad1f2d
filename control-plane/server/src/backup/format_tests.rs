//! The file format on its own: round trips at chunk edges, every kind of damage, a wrong key,
//! and the archive parser fed in every split.

use super::*;
use crate::backup::material::Manifest;

const KEY_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn archive(parts: &[(PartKind, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, b) in parts {
        out.extend_from_slice(&part_prefix(*k, b.len() as u64));
        out.extend_from_slice(b);
    }
    out.push(ARCHIVE_END);
    out
}

fn sealed(key: &BackupKey, plain: &[u8]) -> Vec<u8> {
    let header = Header {
        kind: SourceKind::Sqlite,
        created_unix_ms: 1_700_000_000_000,
        key_fingerprint: key.fingerprint(),
        plaintext_len: plain.len() as u64,
        plaintext_sha256: Sha256::digest(plain).into(),
    };
    let mut out = Vec::new();
    seal(key, &header, &mut &plain[..], &mut out).expect("seal");
    assert_eq!(out.len() as u64, header.file_len());
    out
}

fn open(key: &BackupKey, file: &[u8]) -> Result<Manifest, BackupError> {
    let mut r = file;
    let header = open_header(key, &mut r)?;
    let mut m = Manifest::default();
    let mut p = ArchiveParser::new(&mut m);
    open_chunks(key, &header, &mut r, &mut p)?;
    Ok(m)
}

#[test]
fn round_trips_at_chunk_edges() {
    let key = BackupKey::from_hex(KEY_A).unwrap();
    for db_len in [
        0,
        1,
        CHUNK_PLAIN_BYTES - 19,
        CHUNK_PLAIN_BYTES,
        2 * CHUNK_PLAIN_BYTES + 5,
    ] {
        let db: Vec<u8> = (0..db_len).map(|i| (i % 251) as u8).collect();
        let plain = archive(&[(PartKind::Database, &db), (PartKind::Kek, b"v1 00")]);
        let m = open(&key, &sealed(&key, &plain)).expect("opens");
        assert_eq!(
            m.parts,
            vec![
                crate::backup::part_info(PartKind::Database, &db),
                crate::backup::part_info(PartKind::Kek, b"v1 00")
            ]
        );
    }
}

#[test]
fn a_wrong_key_is_named_as_such() {
    let a = BackupKey::from_hex(KEY_A).unwrap();
    let b = BackupKey::from_hex(KEY_B).unwrap();
    let file = sealed(
        &a,
        &archive(&[(PartKind::Database, b"db"), (PartKind::Kek, b"k")]),
    );
    let e = open(&b, &file).unwrap_err();
    assert!(matches!(e, BackupError::WrongKey), "{e}");
    assert!(e.to_string().contains("wrong --key-file"), "{e}");
    assert!(matches!(
        BackupKey::from_hex("not hex"),
        Err(BackupError::KeyFormat)
    ));
}

#[test]
fn every_damage_fails_before_a_part_is_trusted() {
    let key = BackupKey::from_hex(KEY_A).unwrap();
    let db = vec![7u8; CHUNK_PLAIN_BYTES + 100];
    let file = sealed(
        &key,
        &archive(&[(PartKind::Database, &db), (PartKind::Kek, b"k")]),
    );
    // A flipped bit in each chunk's ciphertext and in its tag.
    for at in [HEADER_BYTES + 40, file.len() - 1, file.len() - 50] {
        let mut f = file.clone();
        f[at] ^= 1;
        assert!(
            matches!(open(&key, &f), Err(BackupError::Tampered { .. })),
            "at {at}"
        );
    }
    // The header's time and checksum are bound to every chunk.
    for at in [12, 40] {
        let mut f = file.clone();
        f[at] ^= 1;
        assert!(
            matches!(open(&key, &f), Err(BackupError::Tampered { chunk: 0 })),
            "at {at}"
        );
    }
    let mut f = file.clone();
    f[0] = b'X';
    assert!(matches!(open(&key, &f), Err(BackupError::NotABackup)));
    let mut f = file.clone();
    f[8] = 9;
    assert!(matches!(
        open(&key, &f),
        Err(BackupError::UnsupportedVersion { version: 9, .. })
    ));
    assert!(matches!(
        open(&key, &file[..file.len() - 1]),
        Err(BackupError::Truncated)
    ));
    assert!(matches!(
        open(&key, &file[..10]),
        Err(BackupError::NotABackup)
    ));
    let mut f = file.clone();
    f.push(0);
    assert!(matches!(open(&key, &f), Err(BackupError::Malformed(_))));
    // Chunks swapped: each is bound to its index.
    let first = HEADER_BYTES..HEADER_BYTES + 100;
    let mut f = file.clone();
    let tail = f.split_off(HEADER_BYTES + CHUNK_PLAIN_BYTES + petrel_seal::SEALED_OVERHEAD_BYTES);
    f.truncate(HEADER_BYTES);
    f.extend_from_slice(&tail);
    f.extend_from_slice(&file[HEADER_BYTES..HEADER_BYTES + CHUNK_PLAIN_BYTES + 32]);
    assert!(open(&key, &f).is_err(), "{first:?}");
}

#[test]
fn the_header_bounds_the_content() {
    let key = BackupKey::from_hex(KEY_A).unwrap();
    let h = Header {
        kind: SourceKind::Postgres,
        created_unix_ms: 1,
        key_fingerprint: key.fingerprint(),
        plaintext_len: PLAINTEXT_BYTES_MAX + 1,
        plaintext_sha256: [0; 32],
    };
    assert!(matches!(
        Header::decode(&h.encode()),
        Err(BackupError::TooLarge { .. })
    ));
    let ok = Header {
        plaintext_len: 5,
        ..h
    };
    assert_eq!(Header::decode(&ok.encode()).unwrap(), ok);
}

#[test]
fn the_parser_takes_any_split_and_refuses_bad_archives() {
    let plain = archive(&[
        (PartKind::Database, b"database bytes"),
        (PartKind::Kek, b""),
        (PartKind::PushToken, b"tok"),
    ]);
    for split in 0..plain.len() {
        let mut m = Manifest::default();
        let mut p = ArchiveParser::new(&mut m);
        p.feed(&plain[..split]).unwrap();
        p.feed(&plain[split..]).unwrap();
        p.finish().unwrap();
        drop(p);
        assert_eq!(m.parts.len(), 3, "split {split}");
    }
    let bad: [(Vec<u8>, &str); 5] = [
        (archive(&[(PartKind::Kek, b"k")]), "no database"),
        (
            archive(&[(PartKind::Database, b"d")]),
            "no key-encryption key",
        ),
        (
            archive(&[(PartKind::Database, b"d"), (PartKind::Database, b"d")]),
            "twice",
        ),
        (vec![42, 0, 0, 0, 0, 0, 0, 0, 0, 0], "unknown part kind"),
        (plain[..plain.len() - 1].to_vec(), "incomplete"),
    ];
    for (bytes, why) in bad {
        let mut m = Manifest::default();
        let mut p = ArchiveParser::new(&mut m);
        let e = p.feed(&bytes).and_then(|()| p.finish()).unwrap_err();
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
    let mut huge = part_prefix(PartKind::Kek, KEY_PART_BYTES_MAX + 1).to_vec();
    huge.push(0);
    let mut m = Manifest::default();
    let mut p = ArchiveParser::new(&mut m);
    assert!(matches!(p.feed(&huge), Err(BackupError::TooLarge { .. })));
}
