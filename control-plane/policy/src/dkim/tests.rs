use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};

use super::*;
use crate::keys::{self, GeneratedKey};

const MESSAGE: &[u8] = b"From: Alice <alice@acme.example>\r\n\
To: bob@example.net\r\n\
Subject:   Hello   there\r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <1@acme.example>\r\n\
X-Unsigned: yes\r\n\
\r\n\
Hi Bob,  \r\n\
\r\n\
a body line\r\n\
\r\n\
\r\n";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn key(selector: &str, g: &GeneratedKey, active_from_unix_ms: u64, retired: bool) -> DkimKey {
    DkimKey {
        selector: selector.into(),
        algorithm: g.algorithm,
        private_key_pkcs8_der: g.private_key_pkcs8_der.clone(),
        active_from_unix_ms,
        retired,
    }
}

/// A TXT cache that answers from a map, so mail-auth's verifier never touches the network.
struct TxtMap(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for TxtMap {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }
    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }
    fn insert(&self, key: Box<str>, value: Txt, _: std::time::Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

async fn mail_auth_verify(signed: &[u8], selector: &str, txt: &str) -> DkimResult {
    let cache = TxtMap(Mutex::new(HashMap::new()));
    let record = DomainKey::parse(txt.as_bytes()).unwrap();
    cache.insert(
        format!("{selector}._domainkey.acme.example.").into(),
        Txt::from(record),
        std::time::Instant::now() + std::time::Duration::from_secs(3600),
    );
    // No name servers: any lookup that misses the cache fails instead of leaving the machine.
    let resolver = MessageAuthenticator::new(
        ResolverConfig::from_parts(None, vec![], vec![]),
        ResolverOpts::default(),
    )
    .unwrap();
    let message = AuthenticatedMessage::parse(signed).unwrap();
    let out = resolver
        .verify_dkim(Parameters::new(&message).with_txt_cache(&cache))
        .await;
    assert_eq!(out.len(), 1);
    out[0].result().clone()
}

fn signed(signer: &DkimSigner, now_unix_ms: u64) -> Vec<u8> {
    let mut out = signer.sign(MESSAGE, now_unix_ms).unwrap();
    assert!(out.starts_with(b"DKIM-Signature: v=1; a="));
    assert!(out.ends_with(b"\r\n"));
    out.extend_from_slice(MESSAGE);
    out
}

#[tokio::test]
async fn ed25519_and_rsa_verify_with_mail_auth() {
    for alg in [DkimAlgorithm::Ed25519, DkimAlgorithm::Rsa2048] {
        let g = keys::generate(alg).unwrap();
        let signer = DkimSigner::from_keys("acme.example", &[key("s1", &g, 0, false)])
            .unwrap()
            .unwrap();
        let msg = signed(&signer, now_ms());
        assert_eq!(
            mail_auth_verify(&msg, "s1", &g.dns_txt).await,
            DkimResult::Pass,
            "{alg:?}"
        );
        // A changed body fails (mail-auth says "neutral: body hash mismatch")...
        let mut tampered = msg.clone();
        let n = tampered.len();
        tampered[n - 8] = b'X';
        let result = mail_auth_verify(&tampered, "s1", &g.dns_txt).await;
        assert!(
            matches!(
                result,
                DkimResult::Neutral(mail_auth::Error::Dkim(
                    mail_auth::dkim::DkimError::FailedBodyHashMatch
                ))
            ),
            "{alg:?} body: {result:?}"
        );
        // ...and so does a changed signed header.
        let text = String::from_utf8(msg.clone()).unwrap();
        let tampered = text.replace("Hello   there", "Hello there!");
        let result = mail_auth_verify(tampered.as_bytes(), "s1", &g.dns_txt).await;
        assert!(
            matches!(result, DkimResult::Fail(_)),
            "{alg:?} header: {result:?}"
        );
    }
}

#[test]
fn header_carries_pinned_time_and_relaxed_canonicalization() {
    let g = keys::generate(DkimAlgorithm::Ed25519).unwrap();
    let signer = DkimSigner::from_keys("acme.example", &[key("s1", &g, 0, false)])
        .unwrap()
        .unwrap();
    let header = String::from_utf8(signer.sign(MESSAGE, 1_700_000_000_123).unwrap()).unwrap();
    assert!(header.contains("a=ed25519-sha256"), "{header}");
    assert!(header.contains("c=relaxed/relaxed"), "{header}");
    assert!(header.contains("d=acme.example"), "{header}");
    assert!(header.contains("s=s1"), "{header}");
    assert!(header.contains("t=1700000000"), "{header}");
    let unfolded = header.replace("\r\n\t", "");
    assert!(
        unfolded.contains("h=Message-ID:Date:Subject:To:From:"),
        "{unfolded}"
    );
    assert!(!unfolded.contains("X-Unsigned"), "{unfolded}");
    // Ed25519 signatures are deterministic: same input, same time, same header.
    assert_eq!(
        signer.sign(MESSAGE, 1_700_000_000_999).unwrap(),
        header.as_bytes()
    );
}

#[test]
fn newest_active_non_retired_key_signs() {
    let a = keys::generate(DkimAlgorithm::Ed25519).unwrap();
    let keys = [
        key("old", &a, 1_000, false),
        key("current", &a, 2_000, false),
        key("future", &a, 9_000, false),
        key("retired", &a, 5_000, true),
    ];
    let signer = DkimSigner::from_keys("acme.example", &keys)
        .unwrap()
        .unwrap();
    assert_eq!(signer.active_key(500), None);
    assert_eq!(signer.active_key(1_500).unwrap().0, "old");
    assert_eq!(signer.active_key(6_000).unwrap().0, "current");
    assert_eq!(signer.active_key(9_000).unwrap().0, "future");
    assert!(signer.sign(MESSAGE, 500).is_err());
    let h = String::from_utf8(signer.sign(MESSAGE, 6_000).unwrap()).unwrap();
    assert!(h.contains("s=current;"), "{h}");

    let only_retired = [key("retired", &a, 0, true)];
    assert!(DkimSigner::from_keys("acme.example", &only_retired)
        .unwrap()
        .is_none());
}

#[test]
fn arc_seals_with_the_newest_active_rsa_key_only() {
    let ed = keys::generate(DkimAlgorithm::Ed25519).unwrap();
    let rsa = keys::generate(DkimAlgorithm::Rsa2048).unwrap();
    let keys = [
        key("rsa-old", &rsa, 1_000, false),
        key("ed", &ed, 3_000, false),
        key("rsa-new", &rsa, 2_000, false),
        key("rsa-retired", &rsa, 2_500, true),
    ];
    let signer = DkimSigner::from_keys("acme.example", &keys)
        .unwrap()
        .unwrap();
    assert!(signer.arc_signing_key(500).is_none());
    assert_eq!(signer.arc_signing_key(1_500).unwrap().0, "rsa-old");
    // DKIM signs with the newest key (Ed25519); ARC takes the newest RSA one.
    assert_eq!(signer.active_key(6_000).unwrap().0, "ed");
    assert_eq!(signer.arc_signing_key(6_000).unwrap().0, "rsa-new");
    let ed_only = DkimSigner::from_keys("acme.example", &[key("ed", &ed, 0, false)])
        .unwrap()
        .unwrap();
    assert!(ed_only.arc_signing_key(6_000).is_none());
}

#[test]
fn refuses_bad_keys_and_messages_without_from() {
    let a = keys::generate(DkimAlgorithm::Ed25519).unwrap();
    let mut bad = key("s1", &a, 0, false);
    bad.algorithm = DkimAlgorithm::Rsa2048;
    assert!(DkimSigner::from_keys("acme.example", &[bad]).is_err());

    let signer = DkimSigner::from_keys("acme.example", &[key("s1", &a, 0, false)])
        .unwrap()
        .unwrap();
    assert!(signer.sign(b"Subject: x\r\n\r\nbody\r\n", 0).is_err());
}

/// Cross-check with an independent implementation: Python dkimpy (pip install dkimpy pynacl).
#[test]
fn ed25519_and_rsa_verify_with_dkimpy() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import dkim, nacl"])
        .output();
    if !matches!(probe, Ok(ref o) if o.status.success()) {
        // ops/test.sh installs dkimpy and sets PETREL_REQUIRE_PEERS: there, missing is a failure
        // (this crate does not depend on the test kit's `peer_missing`).
        assert!(
            std::env::var_os("PETREL_REQUIRE_PEERS").is_none(),
            "python3 with dkimpy and pynacl not available; PETREL_REQUIRE_PEERS is set"
        );
        println!("SKIPPED: python3 with dkimpy and pynacl not available");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("verify.py");
    std::fs::write(&script, DKIMPY_VERIFY).unwrap();
    for alg in [DkimAlgorithm::Ed25519, DkimAlgorithm::Rsa2048] {
        let g = keys::generate(alg).unwrap();
        let signer = DkimSigner::from_keys("acme.example", &[key("sel-1", &g, 0, false)])
            .unwrap()
            .unwrap();
        let signed_msg = signed(&signer, now_ms());
        let run = |msg: &[u8]| {
            let msg_path = dir.path().join("msg.eml");
            std::fs::write(&msg_path, msg).unwrap();
            let out = std::process::Command::new("python3")
                .arg(&script)
                .arg(&msg_path)
                .arg("sel-1._domainkey.acme.example.")
                .arg(&g.dns_txt)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            (out.status.success(), stdout, stderr)
        };
        let (ok, stdout, stderr) = run(&signed_msg);
        assert!(ok && stdout == "pass", "{alg:?}: {stdout} {stderr}");
        // The same check fails on a changed header, so it is not vacuous.
        let tampered = String::from_utf8(signed_msg)
            .unwrap()
            .replace("Hello   there", "Hello there!");
        let (ok, stdout, _) = run(tampered.as_bytes());
        assert!(!ok && stdout == "fail", "{alg:?} tampered: {stdout}");
    }
}

const DKIMPY_VERIFY: &str = r#"
import sys, dkim
msg = open(sys.argv[1], "rb").read()
name, txt = sys.argv[2], sys.argv[3].encode()
def dnsfunc(qname, timeout=5):
    q = qname.decode() if isinstance(qname, bytes) else qname
    if q.rstrip(".") == name.rstrip("."):
        return txt
    return None
ok = dkim.verify(msg, dnsfunc=dnsfunc)
print("pass" if ok else "fail")
sys.exit(0 if ok else 1)
"#;

#[test]
fn a_semicolon_folded_after_b_is_joined_back() {
    let mut folded = b"DKIM-Signature: v=1; a=rsa-sha256; b=abc\r\n\t;\r\n".to_vec();
    join_dangling_semicolon(&mut folded);
    assert_eq!(folded, b"DKIM-Signature: v=1; a=rsa-sha256; b=abc;\r\n");
    let mut plain = b"DKIM-Signature: v=1; b=\r\n\tabc;\r\n".to_vec();
    join_dangling_semicolon(&mut plain);
    assert_eq!(plain, b"DKIM-Signature: v=1; b=\r\n\tabc;\r\n", "unchanged");
}
