//! End to end: the engine's STARTTLS server spoken to by a real rustls client over loopback.
//! The server picks the suite by its own order; its certificate files are swapped under a
//! running engine (by the timed check and by SIGHUP) while a connection opened before keeps
//! working; a broken new pair is refused and logged; a generated certificate is valid for a
//! year at most and one near its end is replaced at start.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use petrel_engine::tls::TLS_RELOAD_CHECK_MS;
use petrel_engine::tls_cert::certificate_validity;
use rustls::crypto::aws_lc_rs::cipher_suite as suite;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, ProtocolVersion, StreamOwned,
    SupportedCipherSuite, SupportedProtocolVersion,
};

const DAY_SECS: u64 = 86_400;
/// How long a swap may take to show: a few periods of the engine's check.
const SWAP_VISIBLE_TIMEOUT: Duration = Duration::from_millis(3 * TLS_RELOAD_CHECK_MS + 2_000);
/// Between two looks at the certificate a new connection gets.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Tries at a new pair whose PEM files are as long as the old ones.
const SAME_SIZE_TRIES_MAX: usize = 2_000;

/// A client offering `suites` in this order, over `versions`, with no session resumption (each
/// connection sees the certificate).
fn client(
    versions: &[&'static SupportedProtocolVersion],
    suites: &[SupportedCipherSuite],
) -> Arc<ClientConfig> {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: suites.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(petrel_loadtest::AcceptAny(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

fn default_client() -> Arc<ClientConfig> {
    client(
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        rustls::crypto::aws_lc_rs::DEFAULT_CIPHER_SUITES,
    )
}

/// Reads one (possibly multi-line) reply.
fn reply(r: &mut impl BufRead) -> (u16, String) {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return (0, all);
        }
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return (line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0), all);
        }
    }
}

/// An SMTP session after STARTTLS.
struct TlsSmtp {
    r: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsSmtp {
    /// Connects, says EHLO, STARTTLS, completes the handshake and says EHLO again.
    fn start(addr: SocketAddr, config: Arc<ClientConfig>) -> TlsSmtp {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = BufReader::new(tcp);
        assert_eq!(reply(&mut r).0, 220);
        r.get_mut().write_all(b"EHLO client.test\r\n").unwrap();
        let (code, ehlo) = reply(&mut r);
        assert!(code == 250 && ehlo.contains("STARTTLS"), "{ehlo}");
        r.get_mut().write_all(b"STARTTLS\r\n").unwrap();
        assert_eq!(reply(&mut r).0, 220);
        let tcp = r.into_inner();
        let name = ServerName::try_from("mx.test").unwrap();
        let conn = ClientConnection::new(config, name).expect("client connection");
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
        }
        let mut s = TlsSmtp {
            r: BufReader::new(tls),
        };
        assert_eq!(s.cmd("EHLO client.test").0, 250);
        s
    }

    fn conn(&self) -> &ClientConnection {
        &self.r.get_ref().conn
    }

    fn leaf(&self) -> Vec<u8> {
        self.conn().peer_certificates().expect("a certificate")[0].to_vec()
    }

    fn suite(&self) -> CipherSuite {
        self.conn().negotiated_cipher_suite().unwrap().suite()
    }

    fn version(&self) -> ProtocolVersion {
        self.conn().protocol_version().unwrap()
    }

    fn cmd(&mut self, line: &str) -> (u16, String) {
        let w = self.r.get_mut();
        w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        w.flush().unwrap();
        reply(&mut self.r)
    }

    /// One message; the DATA reply's code.
    fn send_message(&mut self, subject: &str) -> u16 {
        assert_eq!(self.cmd("MAIL FROM:<a@client.test>").0, 250);
        assert_eq!(self.cmd("RCPT TO:<b@remote.test>").0, 250);
        assert_eq!(self.cmd("DATA").0, 354);
        let body = message("a@client.test", "b@remote.test", subject);
        self.cmd(&format!("{body}.")).0
    }
}

/// The version and suite a new connection with `config` gets.
fn negotiate(addr: SocketAddr, config: Arc<ClientConfig>) -> (ProtocolVersion, CipherSuite) {
    let mut s = TlsSmtp::start(addr, config);
    let got = (s.version(), s.suite());
    let _ = s.cmd("QUIT");
    got
}

/// The leaf a new connection gets.
fn leaf_now(addr: SocketAddr) -> Vec<u8> {
    let mut s = TlsSmtp::start(addr, default_client());
    let leaf = s.leaf();
    let _ = s.cmd("QUIT");
    leaf
}

/// Waits (bounded) until new connections get `want`.
fn wait_for_leaf(addr: SocketAddr, want: &[u8], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if leaf_now(addr) == want {
            return true;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    false
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A self-signed pair valid from `not_before` to `not_after` (Unix seconds): PEM cert and key.
fn pair(not_before: u64, not_after: u64) -> (String, String) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let mut params = rcgen::CertificateParams::new(vec!["mx.test".to_string()]).unwrap();
    params.not_before = epoch + Duration::from_secs(not_before);
    params.not_after = epoch + Duration::from_secs(not_after);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn fresh_pair() -> (String, String) {
    let now = now_unix();
    pair(now - DAY_SECS, now + 90 * DAY_SECS)
}

fn leaf_of(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64_decode(&b64)
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// Writes a file under another name and renames it in place.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Overwrites a file in place and puts its mtime back: same inode, size and mtime, so only
/// SIGHUP can tell it changed.
fn overwrite_unnoticed(path: &Path, text: &str) {
    let before = std::fs::metadata(path).unwrap();
    assert_eq!(before.len(), text.len() as u64);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    f.sync_all().unwrap();
}

/// A new pair whose PEM texts are exactly as long as `old`'s.
fn same_size_pair(old: &(String, String)) -> (String, String) {
    for _ in 0..SAME_SIZE_TRIES_MAX {
        let p = fresh_pair();
        if p.0.len() == old.0.len() && p.1.len() == old.1.len() {
            return p;
        }
    }
    panic!("no pair of the same size in {SAME_SIZE_TRIES_MAX} tries");
}

/// A single-shard engine without delivery, loopback trusted, logging into `<dir>/engine.log`.
fn start_logged(data_dir: &Path, config: &str) -> (Engine, PathBuf) {
    Engine::start_logged(
        data_dir,
        &[
            "--no-delivery",
            "--shards",
            "1",
            "--trust-network",
            "127.0.0.0/8",
        ],
        Some(config),
    )
}

/// An engine serving the pair it is given from files in `dir`.
fn engine_with_pair(dir: &Path, first: &(String, String)) -> (Engine, PathBuf, PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, &first.0).unwrap();
    std::fs::write(&key, &first.1).unwrap();
    let config = format!(
        "[smtp]\ntls_cert_path = \"{}\"\ntls_key_path = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let (engine, log) = start_logged(&dir.join("engine"), &config);
    (engine, cert, key, log)
}

fn expiry_gauge(engine: &Engine) -> Option<f64> {
    engine
        .scrape()
        .lines()
        .find_map(|l| l.strip_prefix("petrel_tls_certificate_expiry_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

fn kill_hup(engine: &Engine) {
    let ok = Command::new("kill")
        .arg("-HUP")
        .arg(engine.child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP");
}

#[test]
fn the_server_picks_its_own_suite_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path(), &["--no-delivery", "--shards", "1"]);
    let tls13 = &[&rustls::version::TLS13, &rustls::version::TLS12];
    // The client lists AES-128 first: the server picks AES-256, and TLS 1.3.
    let got = negotiate(
        engine.smtp,
        client(
            tls13,
            &[
                suite::TLS13_AES_128_GCM_SHA256,
                suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                suite::TLS13_CHACHA20_POLY1305_SHA256,
                suite::TLS13_AES_256_GCM_SHA384,
            ],
        ),
    );
    assert_eq!(
        got,
        (
            ProtocolVersion::TLSv1_3,
            CipherSuite::TLS13_AES_256_GCM_SHA384
        )
    );
    // Without AES-256 the server's next choice is ChaCha20, whatever the client prefers.
    let got = negotiate(
        engine.smtp,
        client(
            tls13,
            &[
                suite::TLS13_AES_128_GCM_SHA256,
                suite::TLS13_CHACHA20_POLY1305_SHA256,
            ],
        ),
    );
    assert_eq!(got.1, CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    // A TLS 1.2 client gets an ECDHE AEAD suite, the server's first.
    let got = negotiate(
        engine.smtp,
        client(
            &[&rustls::version::TLS12],
            &[
                suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ],
        ),
    );
    assert_eq!(
        got,
        (
            ProtocolVersion::TLSv1_2,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        )
    );
    assert!(engine.stop());
}

#[test]
fn a_changed_certificate_is_served_to_new_connections_and_open_ones_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let first = fresh_pair();
    let (engine, cert, key, log) = engine_with_pair(dir.path(), &first);
    let mut open = TlsSmtp::start(engine.smtp, default_client());
    assert_eq!(open.leaf(), leaf_of(&first.0));

    // 1. The timed check sees the renamed files.
    let second = fresh_pair();
    replace(&key, &second.1);
    replace(&cert, &second.0);
    assert!(
        wait_for_leaf(engine.smtp, &leaf_of(&second.0), SWAP_VISIBLE_TIMEOUT),
        "the new certificate was not served; log:\n{}",
        log_text(&log)
    );
    assert_eq!(open.send_message("after-timed-swap"), 250);
    assert_eq!(open.leaf(), leaf_of(&first.0));
    let not_after = certificate_validity(&leaf_of(&second.0))
        .unwrap()
        .not_after_unix;
    assert_eq!(expiry_gauge(&engine), Some(not_after as f64));

    // 2. Files rewritten in place with the same size and mtime: only SIGHUP reloads them.
    let mut open = TlsSmtp::start(engine.smtp, default_client());
    let third = same_size_pair(&second);
    overwrite_unnoticed(&key, &third.1);
    overwrite_unnoticed(&cert, &third.0);
    std::thread::sleep(Duration::from_millis(TLS_RELOAD_CHECK_MS + 1_000));
    assert_eq!(
        leaf_now(engine.smtp),
        leaf_of(&second.0),
        "the timed check saw no change"
    );
    kill_hup(&engine);
    assert!(
        wait_for_leaf(engine.smtp, &leaf_of(&third.0), Duration::from_secs(5)),
        "SIGHUP did not reload; log:\n{}",
        log_text(&log)
    );
    assert_eq!(open.send_message("after-sighup"), 250);
    assert_eq!(open.leaf(), leaf_of(&second.0));
    let text = log_text(&log);
    assert!(text.contains("TLS certificate reloaded"), "{text}");
    assert!(text.contains("SIGHUP"), "{text}");
    let _ = open.cmd("QUIT");
    assert!(engine.stop(), "SIGHUP did not change how the engine stops");
}

#[test]
fn a_broken_pair_keeps_the_old_certificate_and_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let first = fresh_pair();
    let (engine, cert, key, log) = engine_with_pair(dir.path(), &first);
    // A certificate with another pair's key.
    let (other_cert, _) = fresh_pair();
    let (_, other_key) = fresh_pair();
    replace(&cert, &other_cert);
    replace(&key, &other_key);
    let deadline = Instant::now() + SWAP_VISIBLE_TIMEOUT;
    while !log_text(&log).contains("TLS certificate not reloaded") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            log_text(&log)
        );
        std::thread::sleep(POLL_INTERVAL);
    }
    assert_eq!(leaf_now(engine.smtp), leaf_of(&first.0));
    // SIGHUP with the same broken pair: refused again, still the old one.
    kill_hup(&engine);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(leaf_now(engine.smtp), leaf_of(&first.0));
    // Garbage in the certificate file is refused too.
    replace(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot base64 !\n-----END CERTIFICATE-----\n",
    );
    kill_hup(&engine);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(leaf_now(engine.smtp), leaf_of(&first.0));
    let text = log_text(&log);
    assert!(
        text.matches("TLS certificate not reloaded").count() >= 3,
        "{text}"
    );
    let not_after = certificate_validity(&leaf_of(&first.0))
        .unwrap()
        .not_after_unix;
    assert_eq!(expiry_gauge(&engine), Some(not_after as f64));
    assert!(engine.stop());
}

#[test]
fn a_generated_certificate_lasts_a_year_and_one_near_its_end_is_replaced_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path(), &["--no-delivery", "--shards", "1"]);
    let leaf = leaf_now(engine.smtp);
    let v = certificate_validity(&leaf).unwrap();
    let span_days = (v.not_after_unix - v.not_before_unix) as f64 / DAY_SECS as f64;
    assert!(span_days <= 366.0, "valid for {span_days} days");
    assert_eq!(expiry_gauge(&engine), Some(v.not_after_unix as f64));
    assert!(engine.stop());

    // Ten days left: replaced at start, with a year ahead.
    let data = dir.path().join("near-end");
    let tls_dir = data.join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let now = now_unix();
    let old = pair(now - 355 * DAY_SECS, now + 10 * DAY_SECS);
    std::fs::write(tls_dir.join("cert.pem"), &old.0).unwrap();
    std::fs::write(tls_dir.join("key.pem"), &old.1).unwrap();
    let engine = Engine::start(&data, &["--no-delivery", "--shards", "1"]);
    let leaf = leaf_now(engine.smtp);
    assert_ne!(leaf, leaf_of(&old.0), "the old certificate is still served");
    let v = certificate_validity(&leaf).unwrap();
    assert!(v.not_after_unix as u64 > now + 360 * DAY_SECS);
    let on_disk = std::fs::read_to_string(tls_dir.join("cert.pem")).unwrap();
    assert_eq!(
        leaf_of(&on_disk),
        leaf,
        "the new one is kept in the data dir"
    );
    assert!(engine.stop());
}

/// Whether process `pid` catches SIGHUP (bit 0 of `SigCgt` in `/proc/<pid>/status`).
fn catches_sighup(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & 1 != 0)
}

/// A child process killed by PID on drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A SIGHUP while the engine starts (`systemctl reload` right after `start`, a certificate
/// hook) does not end it: the engine catches SIGHUP before it does anything else, and reloads
/// the certificate once it is up.
#[test]
fn sighup_during_start_up_does_not_end_the_engine() {
    const CAUGHT_TIMEOUT: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("engine.log");
    let mut child = KillOnDrop(
        Command::new(petrel_bin())
            .arg("engine")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--smtp-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(["--admin-listen", "127.0.0.1:0", "--no-pin", "--no-delivery"])
            .env("PETREL_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn petrel engine"),
    );
    let pid = child.0.id();
    // At the first instant it catches SIGHUP (before that the kernel's default would end it:
    // no engine could help that), send one.
    let deadline = Instant::now() + CAUGHT_TIMEOUT;
    while !catches_sighup(pid) {
        assert!(child.0.try_wait().unwrap().is_none(), "the engine ended");
        assert!(
            Instant::now() < deadline,
            "SIGHUP not caught in {CAUGHT_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP sent");
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ready = stdout
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with("petrel engine ready"));
        let _ = tx.send(ready);
    });
    let ready = rx.recv_timeout(ENGINE_READY_TIMEOUT).unwrap_or(false);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ready, "the engine did not come up after SIGHUP:\n{text}");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the engine ended:\n{text}"
    );
    // The signal thread answers it right after start-up (it may log after the ready line).
    let deadline = Instant::now() + CAUGHT_TIMEOUT;
    let mut text = text;
    while !(text.contains("SIGHUP during start-up") && text.contains("TLS certificate reloaded")) {
        assert!(
            Instant::now() < deadline,
            "the SIGHUP came during start-up and was answered after it:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
        text = std::fs::read_to_string(&log).unwrap_or_default();
    }
}
