//! End to end: the engine orders its SMTP certificate from a real ACME server on loopback
//! (Debian's `pebble`), proving each name over its own HTTP-01 responder (pebble really
//! validates: `PEBBLE_VA_ALWAYS_VALID` is not set; it resolves the name through the kit's DNS
//! server). Then STARTTLS serves a chain that verifies against pebble's root, fetched from
//! pebble's management interface; a restart reuses the pair; a short-lived certificate is
//! renewed and the new one served without a restart.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use petrel_engine::tls_cert::certificate_validity;
use petrel_testkit::dns::{a, DnsServer};
use petrel_testkit::http::Request;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// The name the engine orders a certificate for (zone `test.` of the kit's DNS server).
const NAME: &str = "mx.test";
/// How long pebble may take to listen.
const PEBBLE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a first order (account, validation, issuance) may take to be served.
const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(90);
/// Between two looks at what STARTTLS serves.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Pebble's certificate lifetime in the renewal test: renewed a third before its end (~15 s).
const SHORT_VALIDITY_SECS: u64 = 45;

fn pebble_bin() -> Option<&'static str> {
    let found = Command::new("pebble")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        petrel_testkit::peer_missing(
            "pebble not found (Debian's pebble package; ops/test.sh installs it)",
        );
    }
    found.then_some("pebble")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running pebble, killed by PID on drop.
struct Pebble {
    child: Child,
    dir: PathBuf,
    acme: SocketAddr,
    management: SocketAddr,
    /// The CA of pebble's own HTTPS certificate (what `acme.ca_file` points at).
    https_ca_file: PathBuf,
    https_ca_der: CertificateDer<'static>,
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port`, resolving through `dns`, issuing
    /// certificates valid for `validity_secs` (pebble's default when None).
    fn start(
        bin: &str,
        dir: &Path,
        http_port: u16,
        dns: SocketAddr,
        validity_secs: Option<u64>,
    ) -> Pebble {
        std::fs::create_dir_all(dir).unwrap();
        let (ca_pem, ca_der, cert_pem, key_pem) = https_pki();
        let https_ca_file = dir.join("pebble-https-ca.pem");
        std::fs::write(&https_ca_file, ca_pem).unwrap();
        std::fs::write(dir.join("pebble-https.pem"), cert_pem).unwrap();
        std::fs::write(dir.join("pebble-https.key"), key_pem).unwrap();
        let acme: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cfg = serde_json::json!({
            "listenAddress": acme.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": dir.join("pebble-https.pem"),
            "privateKey": dir.join("pebble-https.key"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(secs) = validity_secs {
            cfg["certificateValidityPeriod"] = secs.into();
        }
        let cfg_file = dir.join("pebble.json");
        std::fs::write(&cfg_file, serde_json::json!({ "pebble": cfg }).to_string()).unwrap();
        let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
        let child = Command::new(bin)
            .arg("-config")
            .arg(&cfg_file)
            .arg("-dnsserver")
            .arg(dns.to_string())
            // No random validation delays, no refused nonces: fast and deterministic. Every
            // order proves its names again (no reused authorizations).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn pebble");
        let pebble = Pebble {
            child,
            dir: dir.to_path_buf(),
            acme,
            management,
            https_ca_file,
            https_ca_der: ca_der,
        };
        let deadline = Instant::now() + PEBBLE_START_TIMEOUT;
        for addr in [acme, management] {
            while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "pebble did not listen on {addr}: {}",
                    pebble.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        pebble
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// The root pebble issues under (made anew at each launch), from `/roots/0`.
    fn root(&self) -> CertificateDer<'static> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let rsp = rt.block_on(async {
            let tls = petrel_testkit::http::connect_tls(
                self.management,
                "127.0.0.1",
                self.https_ca_der.clone(),
            )
            .await
            .expect("TLS to pebble's management interface");
            Request::get("/roots/0")
                .send_over(tls, &self.management.to_string())
                .await
                .expect("GET /roots/0")
        });
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        pem_certs(&rsp.text()).into_iter().next().expect("a root")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a leaf for 127.0.0.1 and localhost: pebble's own HTTPS. (ca PEM, ca DER, leaf
/// PEM, leaf key PEM)
fn https_pki() -> (String, CertificateDer<'static>, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Pebble HTTPS test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut leaf_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf_params.subject_alt_names = vec![
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
        SanType::DnsName("localhost".try_into().unwrap()),
    ];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    (
        ca.pem(),
        ca.der().clone(),
        leaf.pem(),
        leaf_key.serialize_pem(),
    )
}

/// The certificates of a PEM text.
fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use base64::Engine as _;
    let mut out = Vec::new();
    let mut b64 = None::<String>;
    for line in pem.lines() {
        match (line.trim(), b64.as_mut()) {
            ("-----BEGIN CERTIFICATE-----", _) => b64 = Some(String::new()),
            ("-----END CERTIFICATE-----", Some(s)) => {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .expect("base64 certificate");
                out.push(CertificateDer::from(der));
                b64 = None;
            }
            (l, Some(s)) => s.push_str(l),
            _ => {}
        }
    }
    out
}

/// A client that verifies the server as `mx.test` against exactly `root` (webpki), with no
/// session resumption (every handshake shows the chain).
fn verifying_client(root: CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).expect("pebble's root");
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// EHLO, STARTTLS and a verified handshake: the chain the server presented, or why not.
fn starttls_chain(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(tcp);
    let mut line = String::new();
    let mut expect = |r: &mut BufReader<TcpStream>, code: &str| -> Result<(), String> {
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            if !line.starts_with(code) {
                return Err(format!("expected {code}: {line:?}"));
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    };
    expect(&mut r, "220")?;
    r.get_mut().write_all(b"EHLO client.test\r\n").unwrap();
    expect(&mut r, "250")?;
    r.get_mut().write_all(b"STARTTLS\r\n").unwrap();
    expect(&mut r, "220")?;
    let conn = ClientConnection::new(config, ServerName::try_from(NAME).unwrap()).unwrap();
    let mut tls = StreamOwned::new(conn, r.into_inner());
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    let chain = tls
        .conn
        .peer_certificates()
        .ok_or("no certificate")?
        .to_vec();
    let _ = tls.write_all(b"QUIT\r\n");
    Ok(chain)
}

/// Waits (bounded) for a verified chain whose leaf is not `other`.
fn wait_for_chain(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    other: Option<&CertificateDer<'static>>,
    timeout: Duration,
    logs: impl Fn() -> String,
) -> Vec<CertificateDer<'static>> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match starttls_chain(addr, Arc::clone(config)) {
            Ok(chain) if Some(&chain[0]) != other => return chain,
            Ok(_) => last = "the same certificate as before".into(),
            Err(e) => last = e,
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    panic!(
        "no new verified certificate in {timeout:?} (last: {last})\n{}",
        logs()
    );
}

fn engine_config(pebble: &Pebble, http01_port: u16) -> String {
    format!(
        "[server]\nhostname = \"{NAME}\"\n\
         [acme]\ndirectory_url = \"https://{}/dir\"\ncontact = \"mailto:postmaster@petrel.example.org\"\n\
         http01_listen = \"127.0.0.1:{http01_port}\"\nca_file = \"{}\"\n",
        pebble.acme,
        pebble.https_ca_file.display()
    )
}

/// The value of the sample `name` (labels included) in an exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn not_after(leaf: &CertificateDer<'_>) -> i64 {
    certificate_validity(leaf).unwrap().not_after_unix
}

const ISSUED: &str = "petrel_acme_orders_total{result=\"issued\"}";
const EXPIRY: &str = "petrel_tls_certificate_expiry_timestamp_seconds";

#[test]
fn acme_issues_the_certificate_starttls_serves_and_a_restart_keeps_it() {
    let Some(bin) = pebble_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![a(&format!("{NAME}."), 60, "127.0.0.1")]);
    let http01 = free_port();
    let pebble = Pebble::start(bin, &tmp.path().join("pebble"), http01, dns.addr, None);
    let client = verifying_client(pebble.root());
    let data = tmp.path().join("engine");
    let config = engine_config(&pebble, http01);
    let (engine, log) = Engine::start_logged(&data, &["--no-delivery"], Some(&config));
    let logs = || {
        format!(
            "engine log:\n{}\npebble log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            pebble.log()
        )
    };

    let chain = wait_for_chain(engine.smtp, &client, None, ISSUANCE_TIMEOUT, logs);
    assert!(chain.len() >= 2, "leaf and pebble's intermediate");
    let metrics = engine.scrape();
    assert_eq!(sample(&metrics, ISSUED), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, EXPIRY), Some(not_after(&chain[0]) as f64));
    match promtool() {
        Some(p) => promtool_check_metrics(&p, &metrics).expect("promtool check metrics"),
        None => petrel_testkit::peer_missing(
            "promtool check: promtool not found (ops/test.sh fetches it)",
        ),
    }
    // The account key and the certificate key are the owner's alone.
    let state = data.join("acme");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("key.pem")), 0o600);
    let accounts: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("account-"))
        .collect();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(mode(&accounts[0]), 0o600);
    let account = std::fs::read_to_string(&accounts[0]).unwrap();
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains(&account),
        "the account key is never logged"
    );
    // The responder answers only tokens being validated.
    let http01_addr: SocketAddr = format!("127.0.0.1:{http01}").parse().unwrap();
    let rsp = Request::get("/.well-known/acme-challenge/no-such-token")
        .send(http01_addr)
        .unwrap();
    assert_eq!(rsp.status, 404);
    assert_eq!(rsp.json()["error"], "unknown_token");
    assert_eq!(Request::get("/").send(http01_addr).unwrap().status, 404);

    // Pebble really fetched the token from the engine's responder, through the kit's DNS.
    let plog = pebble.log();
    let fetched = format!("validate w/ HTTP: http://{NAME}:{http01}/.well-known/acme-challenge/");
    assert!(plog.contains(&fetched), "{plog}");
    assert!(plog.contains("set VALID by completed challenge"), "{plog}");
    // A restart serves the pair it has and orders nothing.
    assert!(engine.stop());
    let (engine, _log) = Engine::start_logged(&data, &["--no-delivery"], Some(&config));
    let again = starttls_chain(engine.smtp, Arc::clone(&client)).expect("verified at once");
    assert_eq!(again[0], chain[0]);
    assert_eq!(sample(&engine.scrape(), ISSUED), Some(0.0));
    assert!(engine.stop());

    // Without its pair, a restart serves the generated one and orders again with the saved
    // account (no second account file).
    std::fs::remove_file(state.join("cert.pem")).unwrap();
    std::fs::remove_file(state.join("key.pem")).unwrap();
    let (engine, log) = Engine::start_logged(&data, &["--no-delivery"], Some(&config));
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let third = wait_for_chain(
        engine.smtp,
        &client,
        Some(&chain[0]),
        ISSUANCE_TIMEOUT,
        logs,
    );
    assert_eq!(sample(&engine.scrape(), ISSUED), Some(1.0));
    let accounts_now = std::fs::read_dir(&state)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("account-")
        })
        .count();
    assert_eq!(accounts_now, 1);
    assert_ne!(third[0], chain[0]);
    assert!(engine.stop());
}

#[test]
fn acme_renews_a_short_lived_certificate_without_a_restart() {
    let Some(bin) = pebble_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(vec![a(&format!("{NAME}."), 60, "127.0.0.1")]);
    let http01 = free_port();
    let pebble = Pebble::start(
        bin,
        &tmp.path().join("pebble"),
        http01,
        dns.addr,
        Some(SHORT_VALIDITY_SECS),
    );
    let client = verifying_client(pebble.root());
    let data = tmp.path().join("engine");
    let config = engine_config(&pebble, http01);
    let (engine, log) = Engine::start_logged(&data, &["--no-delivery"], Some(&config));
    let logs = || {
        format!(
            "engine log:\n{}\npebble log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            pebble.log()
        )
    };

    let first = wait_for_chain(engine.smtp, &client, None, ISSUANCE_TIMEOUT, logs);
    let v1 = certificate_validity(&first[0]).unwrap();
    assert!(
        v1.not_after_unix - v1.not_before_unix <= SHORT_VALIDITY_SECS as i64,
        "pebble issued for {SHORT_VALIDITY_SECS} s: {v1:?}"
    );
    // Renewed a third of its lifetime before its end, while the engine runs.
    let second = wait_for_chain(
        engine.smtp,
        &client,
        Some(&first[0]),
        Duration::from_secs(SHORT_VALIDITY_SECS) + ISSUANCE_TIMEOUT,
        logs,
    );
    let v2 = certificate_validity(&second[0]).unwrap();
    assert!(v2.not_after_unix > v1.not_after_unix, "{v1:?} then {v2:?}");
    let metrics = engine.scrape();
    assert!(sample(&metrics, ISSUED).unwrap_or(0.0) >= 2.0, "{metrics}");
    assert!(sample(&metrics, EXPIRY).unwrap_or(0.0) >= v2.not_after_unix as f64);
    assert!(engine.stop());
}
