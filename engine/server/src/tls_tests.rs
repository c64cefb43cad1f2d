//! Tests of the server's TLS: the generated certificate, reloads, refusals, the suite order.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;
use crate::tls_cert::{
    certificate_validity, SELF_SIGNED_RENEW_BEFORE_DAYS, SELF_SIGNED_SPAN_MAX_DAYS,
};

const DAY_SECS: i64 = 86_400;

fn now_unix() -> i64 {
    i64::try_from(now_ms() / 1_000).unwrap()
}

/// A self-signed pair for `name` valid from `not_before` to `not_after` (Unix seconds), PEM.
fn pair_pem(name: &str, not_before: i64, not_after: i64) -> (String, String) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.not_before = epoch + Duration::from_secs(not_before as u64);
    params.not_after = epoch + Duration::from_secs(not_after as u64);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes a file whole under another name and renames it in place (as an operator's tools do).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn leaf_of(pem: &str) -> Vec<u8> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    certs[0].as_ref().to_vec()
}

/// A configured pair in `dir` (cert.pem, key.pem), valid for 90 days from now.
fn configured(dir: &Path, name: &str) -> (ServerTls, String) {
    let now = now_unix();
    let (cert, key) = pair_pem(name, now - DAY_SECS, now + 90 * DAY_SECS);
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.join("key.pem"), &key).unwrap();
    let tls = ServerTls::load(
        dir,
        "mx.test",
        Some(&dir.join("cert.pem")),
        Some(&dir.join("key.pem")),
    )
    .unwrap();
    (tls, cert)
}

#[test]
fn generates_once_then_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let first = ServerTls::load(dir.path(), "mx.test", None, None).unwrap();
    assert!(matches!(first.source(), CertSource::GeneratedSelfSigned(_)));
    let second = ServerTls::load(dir.path(), "mx.test", None, None).unwrap();
    assert!(matches!(second.source(), CertSource::ExistingSelfSigned(_)));
    assert_eq!(first.current_leaf(), second.current_leaf());
    let mode = std::fs::metadata(dir.path().join("tls/key.pem"))
        .unwrap()
        .permissions();
    assert_eq!(mode.mode() & 0o777, 0o600);
}

#[test]
fn generated_certificate_is_valid_for_a_year_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let tls = ServerTls::load(dir.path(), "mx.test", None, None).unwrap();
    let v = tls.validity();
    let now = now_unix();
    assert!(v.not_before_unix <= now && v.not_before_unix > now - DAY_SECS);
    let span = v.not_after_unix - v.not_before_unix;
    assert!(span <= 366 * DAY_SECS, "valid for {} days", span / DAY_SECS);
    assert!(span >= 364 * DAY_SECS, "valid for {} days", span / DAY_SECS);
    // The validity read back from the file is what the resolver serves.
    let leaf = tls.current_leaf().unwrap();
    assert_eq!(certificate_validity(&leaf).unwrap(), v);
}

#[test]
fn validity_is_read_from_the_der() {
    let (cert, _) = pair_pem("a.test", 1_000_000_000, 2_000_000_000);
    let v = certificate_validity(&leaf_of(&cert)).unwrap();
    assert_eq!(v.not_before_unix, 1_000_000_000);
    assert_eq!(v.not_after_unix, 2_000_000_000);
    // After 2049 X.509 says GeneralizedTime.
    let (cert, _) = pair_pem("a.test", 1_000_000_000, 4_000_000_000);
    let v = certificate_validity(&leaf_of(&cert)).unwrap();
    assert_eq!(v.not_after_unix, 4_000_000_000);
    assert!(certificate_validity(b"\x30\x03\x02\x01\x01").is_err());
}

#[test]
fn renewal_is_due_near_the_end_or_for_too_long_a_span() {
    let now = 1_800_000_000;
    let v = |before_days: i64, after_days: i64| Validity {
        not_before_unix: now + before_days * DAY_SECS,
        not_after_unix: now + after_days * DAY_SECS,
    };
    let renew = SELF_SIGNED_RENEW_BEFORE_DAYS as i64;
    assert!(!v(-10, 300).needs_renewal(now));
    assert!(!v(-300, renew + 1).needs_renewal(now));
    assert!(v(-300, renew - 1).needs_renewal(now));
    assert!(v(-400, -1).needs_renewal(now));
    let span = SELF_SIGNED_SPAN_MAX_DAYS as i64;
    assert!(v(-10, span).needs_renewal(now));
}

#[test]
fn a_generated_certificate_near_its_end_is_replaced_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let now = now_unix();
    let (cert, key) = pair_pem("mx.test", now - 355 * DAY_SECS, now + 10 * DAY_SECS);
    std::fs::write(tls_dir.join("cert.pem"), &cert).unwrap();
    std::fs::write(tls_dir.join("key.pem"), &key).unwrap();
    let tls = ServerTls::load(dir.path(), "mx.test", None, None).unwrap();
    assert!(matches!(tls.source(), CertSource::GeneratedSelfSigned(_)));
    assert_ne!(tls.current_leaf().unwrap(), leaf_of(&cert));
    assert!(tls.validity().not_after_unix > now + 360 * DAY_SECS);
}

#[test]
fn a_generated_certificate_is_renewed_by_the_periodic_check() {
    let dir = tempfile::tempdir().unwrap();
    let tls = ServerTls::load(dir.path(), "mx.test", None, None).unwrap();
    let before = tls.current_leaf();
    assert_eq!(tls.check(ReloadTrigger::Timer, now_unix()).unwrap(), None);
    // Eleven months on, fewer than 30 days remain.
    let later = tls.validity().not_after_unix - 20 * DAY_SECS;
    let renewed = tls.check(ReloadTrigger::Timer, later).unwrap().unwrap();
    assert!(renewed.not_after_unix > later + 360 * DAY_SECS);
    assert_ne!(tls.current_leaf(), before);
    let on_disk = std::fs::read_to_string(dir.path().join("tls/cert.pem")).unwrap();
    assert_eq!(tls.current_leaf().unwrap(), leaf_of(&on_disk));
}

#[test]
fn changed_files_are_swapped_in_and_unchanged_ones_are_not_reread() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, first) = configured(dir.path(), "mx.test");
    assert!(matches!(tls.source(), CertSource::Configured(_)));
    assert_eq!(tls.current_leaf().unwrap(), leaf_of(&first));
    let held = tls.resolver.current();
    assert_eq!(tls.check(ReloadTrigger::Timer, now_unix()).unwrap(), None);
    let now = now_unix();
    let (cert, key) = pair_pem("mx.test", now - DAY_SECS, now + 60 * DAY_SECS);
    replace(&dir.path().join("key.pem"), &key);
    replace(&dir.path().join("cert.pem"), &cert);
    let v = tls
        .check(ReloadTrigger::Timer, now_unix())
        .unwrap()
        .unwrap();
    assert_eq!(v.not_after_unix, now + 60 * DAY_SECS);
    assert_eq!(tls.current_leaf().unwrap(), leaf_of(&cert));
    // What a connection took before the swap is still whole.
    assert_eq!(held.cert[0].as_ref(), leaf_of(&first).as_slice());
}

#[test]
fn sighup_reloads_even_when_the_files_look_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _) = configured(dir.path(), "mx.test");
    assert!(tls
        .check(ReloadTrigger::Signal, now_unix())
        .unwrap()
        .is_some());
}

#[test]
fn a_broken_pair_is_refused_and_the_old_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, first) = configured(dir.path(), "mx.test");
    let now = now_unix();
    // A key that is not the certificate's.
    let (cert, _) = pair_pem("mx.test", now - DAY_SECS, now + 60 * DAY_SECS);
    let (_, other_key) = pair_pem("mx.test", now - DAY_SECS, now + 60 * DAY_SECS);
    replace(&dir.path().join("cert.pem"), &cert);
    replace(&dir.path().join("key.pem"), &other_key);
    let e = tls.check(ReloadTrigger::Timer, now).unwrap_err();
    assert!(matches!(e, TlsError::Key { .. }), "{e}");
    assert_eq!(tls.current_leaf().unwrap(), leaf_of(&first));
    // Refused once; the same files are not tried (and logged) again at every check.
    assert_eq!(tls.check(ReloadTrigger::Timer, now).unwrap(), None);
    // Garbage is refused too.
    replace(&dir.path().join("cert.pem"), "not a certificate\n");
    let e = tls.check(ReloadTrigger::Timer, now).unwrap_err();
    assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
    assert_eq!(tls.current_leaf().unwrap(), leaf_of(&first));
}

#[test]
fn missing_configured_cert_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = ServerTls::load(
        dir.path(),
        "mx.test",
        Some(&dir.path().join("nope.pem")),
        Some(&dir.path().join("nope.key")),
    )
    .unwrap_err();
    assert!(e.to_string().contains("nope.pem"), "{e}");
}

#[test]
fn the_server_picks_by_its_own_order_from_its_suites() {
    let dir = tempfile::tempdir().unwrap();
    let tls = ServerTls::load(dir.path(), "mx.test", None, None).unwrap();
    let config = tls.server_config();
    assert!(config.ignore_client_order);
    let suites: Vec<_> = config
        .crypto_provider()
        .cipher_suites
        .iter()
        .map(|s| s.suite())
        .collect();
    let expected: Vec<_> = CIPHER_SUITES.iter().map(|s| s.suite()).collect();
    assert_eq!(suites, expected);
    assert_eq!(
        suites[0],
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        "TLS 1.3 first"
    );
}

#[test]
fn acme_serves_the_generated_pair_until_install_puts_its_own_in_use() {
    let data = tempfile::tempdir().unwrap();
    let acme = data.path().join("acme");
    std::fs::create_dir_all(&acme).unwrap();
    let (cert_path, key_path) = (acme.join("cert.pem"), acme.join("key.pem"));
    let tls = ServerTls::load_acme(data.path(), "mx.test", &cert_path, &key_path).unwrap();
    assert!(matches!(tls.source(), CertSource::AcmePending(_)));
    let placeholder = tls.current_leaf().unwrap();
    // No ACME files yet: the periodic check has nothing to reload.
    assert!(tls
        .check(ReloadTrigger::Timer, now_unix())
        .unwrap()
        .is_none());

    // A pair whose key is not the certificate's is refused before anything is written.
    let now = now_unix();
    let (cert, key) = pair_pem("mx.test", now - 60, now + 30 * DAY_SECS);
    let (_, other_key) = pair_pem("mx.test", now - 60, now + 30 * DAY_SECS);
    assert!(tls.install(cert.as_bytes(), other_key.as_bytes()).is_err());
    assert!(!cert_path.exists() && !key_path.exists());
    assert_eq!(tls.current_leaf().unwrap(), placeholder);

    let v = tls.install(cert.as_bytes(), key.as_bytes()).unwrap();
    assert_eq!(v.not_after_unix, now + 30 * DAY_SECS);
    assert_eq!(tls.current_leaf().unwrap(), leaf_of(&cert));
    assert_eq!(std::fs::read_to_string(&cert_path).unwrap(), cert);
    let key_mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);
    // What install wrote is what the check has seen: no second reload.
    assert!(tls
        .check(ReloadTrigger::Timer, now_unix())
        .unwrap()
        .is_none());

    // The next start serves ACME's pair from its files.
    let again = ServerTls::load_acme(data.path(), "mx.test", &cert_path, &key_path).unwrap();
    assert!(matches!(again.source(), CertSource::Acme(_)));
    assert_eq!(again.current_leaf().unwrap(), leaf_of(&cert));
}
