//! Helpers shared by the integration tests (the glommio runner is the test kit's).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use petrel_seal::{KekFile, Keyring};
use petrel_spool::{
    Envelope, Recipient, RecipientState, RecipientUpdate, SpoolConfig, SpooledMessage,
};

/// A shard's configuration, sealed at rest as the engine runs it (key file and keyring under
/// `root`, beside the shard directories).
pub fn config(root: &Path, shard: u8) -> SpoolConfig {
    let mut cfg = SpoolConfig::new(root, shard);
    cfg.keys = Some(keys(root));
    cfg
}

/// The same, in the clear (no keyring).
pub fn clear_config(root: &Path, shard: u8) -> SpoolConfig {
    SpoolConfig::new(root, shard)
}

/// The keyring under `root` (made on first use).
pub fn keys(root: &Path) -> Arc<Keyring> {
    std::fs::create_dir_all(root).expect("root");
    let (kek, _) = KekFile::load_or_generate(&root.join("kek")).expect("key file");
    Arc::new(Keyring::open(&root.join("keys"), Arc::new(kek)).expect("keyring"))
}

/// `petrel_spool::inspect` with the keyring under `root`.
pub fn inspect(root: &Path) -> Result<Vec<SpooledMessage>, petrel_spool::SpoolError> {
    petrel_spool::inspect(root, Some(&keys(root)))
}

pub fn envelope(n: u64, recipients: usize) -> Envelope {
    Envelope {
        mail_from: format!("sender{n}@example.com"),
        recipients: (0..recipients)
            .map(|i| Recipient {
                address: format!("rcpt{i}@dest{n}.example"),
                state: RecipientState::Pending,
                attempts: 0,
                next_attempt_unix_ms: 1_700_000_000_000 + n,
                last_reply: None,
            })
            .collect(),
        tenant: Some("tenant-a".into()),
        received_unix_ms: 1_700_000_000_000 + n,
        client_addr: "127.0.0.1:40000".into(),
        helo: "client.example".into(),
        authenticated_as: None,
        smtputf8: false,
        body_8bit: n.is_multiple_of(2),
        is_dsn: false,
    }
}

/// A body whose content is derived from `n` (so a reader can check it).
pub fn body(n: u64, len: usize) -> Vec<u8> {
    let seed = format!("Subject: message {n}\r\n\r\n");
    seed.bytes()
        .chain((0..).map(|i: u64| b'a' + ((i + n) % 26) as u8))
        .take(len.max(seed.len()))
        .collect()
}

/// Data files of shard `shard` under `root`, sorted.
pub fn data_files(root: &Path, shard: u8) -> Vec<std::path::PathBuf> {
    files_with(root, shard, ".data")
}

pub fn journal_files(root: &Path, shard: u8) -> Vec<std::path::PathBuf> {
    files_with(root, shard, ".journal")
}

fn files_with(root: &Path, shard: u8, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(root.join(format!("shard-{shard}")))
        .expect("shard dir exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// Recipient `index` marked delivered at its first attempt.
pub fn delivered(index: u32) -> RecipientUpdate {
    RecipientUpdate {
        index,
        state: RecipientState::Delivered,
        attempts: 1,
        next_attempt_unix_ms: 0,
        last_reply: Some("250 2.0.0 ok".into()),
    }
}
