//! Test harness: a real control plane on loopback ports, with the test kit's HTTP client
//! (JSON answers) and its loopback DNS server for the TXT records the domain checks look up.
#![allow(dead_code)]

pub mod attribution;
pub mod deletion;
pub mod domain_auth;
pub mod events;
pub mod export;
pub mod guardrails;
pub mod plans;
pub mod retention;
pub mod scenarios;
pub mod shaping;
pub mod suppression_push;
pub mod suppressions;
pub mod suppressions_api;
pub mod tenant_delivery;
pub mod unsubscribe;
pub mod webhooks;

use std::net::SocketAddr;
use std::time::Duration;

use petrel_control::{ControlConfig, HashCost, ServeInfo, ServeOptions};
use petrel_testkit::dns::DnsServer;
use petrel_testkit::http::Request;
use serde_json::Value;

pub const PUSH_TOKEN: &str = "test-push-token";

/// One HTTP answer with its body as JSON.
pub type Resp = petrel_testkit::http::JsonResponse;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub info: ServeInfo,
    pub owner_key: String,
    /// The loopback DNS server the control plane asks (zone `test.`).
    pub dns: DnsServer,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Cheap argon2 so tests spend their time on behaviour, not hashing (same code path).
/// One key-encryption key for every control plane of this test process, so nodes sharing a
/// database (and a second handle on it) open each other's sealed values, as production nodes
/// given the same key file do.
pub fn shared_key_file() -> std::path::PathBuf {
    static KEY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let path = dir.join("kek");
        petrel_seal::KekFile::generate(&path).expect("key file");
        path
    })
    .clone()
}

pub fn test_options() -> ServeOptions {
    ServeOptions {
        key_file: Some(shared_key_file()),
        auth_failure_audit_window_secs: 1,
        hash_cost: HashCost {
            memory_kib: 256,
            iterations: 1,
        },
        spf_include: "spf.petrel.test".into(),
        version_poll_ms: 200,
        // `POST /v1/tls-rpt/send` answers (the daily task stays off; no mail is submitted).
        tls_rpt: Some(petrel_control::tls_rpt::TlsRptSettings {
            enabled: false,
            organization: "Petrel Test".into(),
            contact: "tls-reports@petrel.test".into(),
            submitter: "petrel.test".into(),
            from: "tls-reports@petrel.test".into(),
            submit_to: None,
            send_hour_utc: petrel_control::tls_rpt::SEND_HOUR_UTC_DEFAULT,
        }),
        ..ServeOptions::default()
    }
}

pub async fn start() -> Harness {
    start_with(None).await
}

/// Starts a control plane; `database_url` None: SQLite in a temp dir.
pub async fn start_with(database_url: Option<String>) -> Harness {
    start_custom(database_url, Tweaks::default()).await
}

/// What some tests change in the harness's configuration.
#[derive(Default)]
pub struct Tweaks {
    pub webhooks_allow_loopback: bool,
    /// Written to a file and passed as `webhooks_ca_file`.
    pub webhooks_ca_pem: Option<String>,
    pub clock: Option<std::sync::Arc<dyn petrel_control::Clock>>,
    /// Another node on a database a first node set up (no owner key is created).
    pub second_node: bool,
    /// Guardrails settings other than the defaults.
    pub guardrails: Option<petrel_control::guardrails::GuardSettings>,
    /// The scheduled domain re-check's period (default: the server's, an hour).
    pub domain_check_interval_secs: Option<u64>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub api_trusted_proxies: Vec<ipnet::IpNet>,
    /// Inbound MTA-STS settings (default: off).
    pub mta_sts: Option<petrel_control::mta_sts::InboundMtaSts>,
    /// The VERP bounce domain (default: none).
    pub return_path_domain: Option<String>,
}

/// [`start_with`] with [`Tweaks`].
pub async fn start_custom(database_url: Option<String>, tweaks: Tweaks) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let dns = DnsServer::start(Vec::new());
    let tweaks_second_node = tweaks.second_node;
    let webhooks_ca_file = tweaks.webhooks_ca_pem.map(|pem| {
        let path = dir.path().join("webhooks-ca.pem");
        std::fs::write(&path, pem).expect("write CA file");
        path
    });
    let cfg = ControlConfig {
        data_dir: dir.path().join("control"),
        database_url,
        api_listen: "127.0.0.1:0".parse().expect("addr"),
        push_listen: "127.0.0.1:0".parse().expect("addr"),
        push_token: PUSH_TOKEN.into(),
        dns_nameservers: vec![dns.addr],
        webhooks_allow_loopback: tweaks.webhooks_allow_loopback,
        webhooks_ca_file,
    };
    let defaults = test_options();
    let opts = ServeOptions {
        clock: tweaks.clock,
        guardrails: tweaks.guardrails.unwrap_or_default(),
        api_trusted_proxies: tweaks.api_trusted_proxies,
        mta_sts: tweaks.mta_sts,
        return_path_domain: tweaks.return_path_domain.unwrap_or_default(),
        domain_check_interval_secs: tweaks
            .domain_check_interval_secs
            .unwrap_or(defaults.domain_check_interval_secs),
        ..defaults
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        if let Err(e) = petrel_control::serve_with(cfg, opts, Some(tx)).await {
            eprintln!("control plane stopped: {e}");
        }
    });
    let info = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("control plane ready in time")
        .expect("control plane started");
    // A further node on a shared database finds the operator made already: no key.
    let owner_key = match (info.bootstrap_key.clone(), tweaks_second_node) {
        (Some(k), false) => k,
        (None, true) => String::new(),
        (k, _) => panic!(
            "first start prints a key, later nodes none: {:?}",
            k.is_some()
        ),
    };
    Harness {
        dir,
        info,
        owner_key,
        dns,
        task,
    }
}

impl Harness {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let body = body.map(|b| b.to_string());
        http(self.info.api_addr, method, path, key, body.as_deref()).await
    }
    pub async fn owner(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        self.call(method, path, Some(&self.owner_key.clone()), body)
            .await
    }
    /// Publishes `values` as the TXT records at `name`, replacing what was there.
    pub fn set_txt(&self, name: &str, values: &[&str]) {
        self.dns.set_txt(name, values);
    }
}

/// One JSON request to the admin API (`Content-Type: application/json` when there is a body
/// or the method is POST or PUT).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Resp {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect api");
    http_over(tcp, addr, method, path, key, body).await
}

/// [`http`] over a stream already open (plain TCP or TLS).
pub async fn http_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Resp {
    let mut req = Request::new(method, path);
    if let Some(k) = key {
        req = req.bearer(k);
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req = req.json_text(body);
    }
    req.send_over(s, &addr.to_string())
        .await
        .expect("API answers")
        .into()
}
