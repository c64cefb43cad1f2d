use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};

use super::*;

fn key() -> Ed25519KeyPair {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
}

/// A checkpoint of head `seq` signed by `key`, as the control plane makes it.
pub(crate) fn signed(key: &Ed25519KeyPair, seq: u64, at_unix_ms: i64) -> AuditCheckpoint {
    let hash = format!("{seq:064x}");
    let signature = key.sign(&signed_bytes(seq, &hash, at_unix_ms));
    AuditCheckpoint {
        seq,
        hash,
        at_unix_ms,
        public_key: hex::encode(key.public_key().as_ref()),
        signature: hex::encode(signature.as_ref()),
    }
}

#[test]
fn a_signed_checkpoint_verifies_and_a_changed_one_does_not() {
    let k = key();
    let cp = signed(&k, 7, 1_800_000_000_000);
    cp.verify().unwrap();
    // The message is the one the control plane signs (its format, pinned).
    assert_eq!(
        signed_bytes(7, "ab", 5),
        b"petrel-audit-checkpoint/1\n7\nab\n5".to_vec()
    );
    let tampers: [fn(&mut AuditCheckpoint); 4] = [
        |c| c.seq += 1,
        |c| c.hash = format!("{:064x}", 8),
        |c| c.at_unix_ms += 1,
        |c| c.public_key = hex::encode(key().public_key().as_ref()),
    ];
    for tamper in tampers {
        let mut bad = cp.clone();
        tamper(&mut bad);
        assert!(
            matches!(bad.verify(), Err(CheckpointError::BadSignature { .. })),
            "{bad:?}"
        );
    }
    let mut short = cp.clone();
    short.signature.pop();
    assert!(matches!(
        short.verify(),
        Err(CheckpointError::Malformed { .. })
    ));
    let mut long_hash = cp.clone();
    long_hash.hash = "a".repeat(CHECKPOINT_HASH_MAX_BYTES + 1);
    assert!(long_hash.to_json().is_err());
    let json = cp.to_json().unwrap();
    assert_eq!(AuditCheckpoint::from_json(&json).unwrap(), cp);
    assert!(AuditCheckpoint::from_json(&vec![b' '; CHECKPOINT_JSON_MAX_BYTES + 1]).is_err());
    assert!(AuditCheckpoint::from_json(b"{\"seq\":1}").is_err());
}

#[test]
fn the_keeper_checks_signatures_refuses_older_seqs_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policy");
    let k = key();
    let keeper = CheckpointKeeper::open(&policy_dir);
    assert_eq!(keeper.seq(), None);

    // A forged signature is refused and nothing is written.
    let mut forged = signed(&k, 9, 1_000);
    forged.hash = format!("{:064x}", 10);
    assert!(matches!(
        keeper.keep(forged),
        Err(PolicyError::Checkpoint(CheckpointError::BadSignature {
            seq: 9
        }))
    ));
    assert!(!policy_dir.join(CHECKPOINT_FILE).exists());

    let first = signed(&k, 5, 1_000);
    assert_eq!(keeper.keep(first.clone()).unwrap(), Kept::New);
    assert_eq!(keeper.keep(first.clone()).unwrap(), Kept::Unchanged);
    let second = signed(&k, 9, 2_000);
    assert_eq!(keeper.keep(second.clone()).unwrap(), Kept::New);
    assert_eq!(keeper.seq(), Some(9));
    // Older: refused, the kept one stays.
    assert!(matches!(
        keeper.keep(first),
        Err(PolicyError::Checkpoint(CheckpointError::Stale {
            kept: 9,
            offered: 5
        }))
    ));
    // The same head signed again (another node, same key, later): kept.
    let again = signed(&k, 9, 3_000);
    assert_eq!(keeper.keep(again.clone()).unwrap(), Kept::New);
    assert_eq!(keeper.latest(), Some(again.clone()));
    // Another key: refused (the first one is pinned).
    assert!(matches!(
        keeper.keep(signed(&key(), 10, 3_500)),
        Err(PolicyError::Checkpoint(CheckpointError::KeyChanged {
            seq: 10,
            ..
        }))
    ));
    // Another hash for the kept seq, properly signed: proof of a rewrite, refused.
    let mut rewritten = signed(&k, 9, 3_600);
    rewritten.hash = format!("{:064x}", 99);
    rewritten.signature = hex::encode(k.sign(&signed_bytes(9, &rewritten.hash, 3_600)).as_ref());
    assert!(matches!(
        keeper.keep(rewritten),
        Err(PolicyError::Checkpoint(CheckpointError::Conflict {
            seq: 9,
            ..
        }))
    ));
    // Every checkpoint taken is in the history, in order, as the control plane writes them.
    let history = std::fs::read_to_string(policy_dir.join(CHECKPOINT_HISTORY_FILE)).unwrap();
    let seqs: Vec<u64> = history
        .lines()
        .map(|l| serde_json::from_str::<AuditCheckpoint>(l).unwrap().seq)
        .collect();
    assert_eq!(seqs, vec![5, 9, 9]);

    // The file round-trips: a restart starts from it.
    let reopened = CheckpointKeeper::open(&policy_dir);
    assert_eq!(reopened.latest(), Some(again.clone()));
    assert!(!policy_dir.join(CHECKPOINT_TEMP_FILE).exists());
    let on_disk: AuditCheckpoint =
        serde_json::from_slice(&std::fs::read(policy_dir.join(CHECKPOINT_FILE)).unwrap()).unwrap();
    assert_eq!(on_disk, again);

    // A damaged file is ignored at start (and replaced by the next checkpoint).
    let mut damaged = again.clone();
    damaged.at_unix_ms += 1;
    std::fs::write(
        policy_dir.join(CHECKPOINT_FILE),
        serde_json::to_vec(&damaged).unwrap(),
    )
    .unwrap();
    let reopened = CheckpointKeeper::open(&policy_dir);
    assert_eq!(reopened.seq(), None);
    assert_eq!(reopened.keep(signed(&k, 2, 4_000)).unwrap(), Kept::New);
}

#[test]
fn the_history_keeps_the_newest_checkpoints_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    const MAX: usize = 20;
    let keeper = CheckpointKeeper::open_with_history(dir.path(), MAX);
    let total = 2 * MAX + 1;
    for seq in 1..=total as u64 {
        keeper.keep(signed(&k, seq, seq as i64)).unwrap();
    }
    let history = std::fs::read_to_string(dir.path().join(CHECKPOINT_HISTORY_FILE)).unwrap();
    let seqs: Vec<u64> = history
        .lines()
        .map(|l| serde_json::from_str::<AuditCheckpoint>(l).unwrap().seq)
        .collect();
    assert_eq!(seqs.len(), MAX);
    assert_eq!(seqs.last(), Some(&(total as u64)));
}
