//! Helpers for the end-to-end tests that run the control plane next to an engine: JSON calls to
//! the admin API, an AUTH-ing SMTP submitter, and an independent DKIM verifier (Python dkimpy).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::SmtpTransport;
use petrel_testkit::http::Request;
use serde_json::Value;

/// How long the submitter waits for any one SMTP reply.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(20);

/// One JSON request to the admin API: its status and its body (`Null` when not JSON).
pub fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let answer = Request::new(method, path)
        .bearer(key)
        .json_text(&body)
        .send(addr)
        .expect("admin API answers");
    (
        answer.status,
        serde_json::from_slice(&answer.body).unwrap_or(Value::Null),
    )
}

/// An SMTP submitter on loopback that requires STARTTLS (the engine's self-signed certificate
/// is accepted) and authenticates with PLAIN.
pub fn mailer(port: u16, user: &str, pass: &str) -> SmtpTransport {
    let tls = TlsParameters::builder("localhost".into())
        .dangerous_accept_invalid_certs(true)
        .build()
        .expect("TLS parameters");
    SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(user.into(), pass.into()))
        .authentication(vec![Mechanism::Plain])
        .timeout(Some(SUBMIT_TIMEOUT))
        .build()
}

/// dkimpy verifies `message` against the TXT record `txt_value` published at
/// `<selector>._domainkey.<domain>`; None when dkimpy is missing.
pub fn dkimpy_verifies(
    message: &[u8],
    domain: &str,
    selector: &str,
    txt_value: &str,
) -> Option<bool> {
    let probe = Command::new("python3")
        .args(["-c", "import dkim, nacl"])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    let dir = tempfile::tempdir().ok()?;
    let msg = dir.path().join("m.eml");
    std::fs::write(&msg, message).ok()?;
    let script = format!(
        "import dkim,sys\nrec={txt:?}.encode()\nname=b'{selector}._domainkey.{domain}.'\n\
         def dns(n, timeout=5):\n    return rec if n.rstrip(b'.')==name.rstrip(b'.') else None\n\
         m=open(sys.argv[1],'rb').read()\nprint('OK' if dkim.verify(m, dnsfunc=dns) else 'FAIL')\n",
        txt = txt_value
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&msg)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim() == "OK")
}

/// How long a control plane may take to say it is ready.
const CONTROL_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// TTL of the DNS records a test publishes for a sending domain.
const DNS_RECORD_TTL_SECS: u32 = 60;

/// Starts a control plane on loopback (SQLite under `data_dir`, admin API and push link on port
/// 0, DKIM and SPF looked up at `nameserver`) on `rt`, and waits for it to be ready. The task is
/// returned so a test can stop it (`abort`) and start another on the same data.
pub fn start_control(
    rt: &tokio::runtime::Runtime,
    data_dir: &std::path::Path,
    push_token: &str,
    nameserver: SocketAddr,
) -> (
    petrel_control::ServeInfo,
    tokio::task::JoinHandle<Result<(), petrel_control::ControlError>>,
) {
    let any = "127.0.0.1:0".parse().expect("loopback address");
    start_control_at(rt, data_dir, push_token, nameserver, any)
}

/// [`start_control`] with the push link on `push_listen` (a restarted control plane keeps the
/// address its engines dial).
pub fn start_control_at(
    rt: &tokio::runtime::Runtime,
    data_dir: &std::path::Path,
    push_token: &str,
    nameserver: SocketAddr,
    push_listen: SocketAddr,
) -> (
    petrel_control::ServeInfo,
    tokio::task::JoinHandle<Result<(), petrel_control::ControlError>>,
) {
    let any = "127.0.0.1:0".parse().expect("loopback address");
    let opts = petrel_control::ServeOptions::default();
    start_control_with(
        rt,
        data_dir,
        push_token,
        nameserver,
        (any, push_listen),
        opts,
    )
}

/// A control plane in this process with `opts` (a return-path domain, a public URL, a short
/// domain re-check interval...) on `(api_listen, push_listen)`; webhooks may reach loopback.
pub fn start_control_with(
    rt: &tokio::runtime::Runtime,
    data_dir: &std::path::Path,
    push_token: &str,
    nameserver: SocketAddr,
    (api_listen, push_listen): (SocketAddr, SocketAddr),
    opts: petrel_control::ServeOptions,
) -> (
    petrel_control::ServeInfo,
    tokio::task::JoinHandle<Result<(), petrel_control::ControlError>>,
) {
    let cfg = petrel_control::ControlConfig {
        data_dir: data_dir.to_path_buf(),
        database_url: None,
        api_listen,
        push_listen,
        push_token: push_token.into(),
        dns_nameservers: vec![nameserver],
        // Webhook receivers of the end-to-end tests listen on loopback.
        webhooks_allow_loopback: true,
        webhooks_ca_file: None,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = rt.spawn(async move { petrel_control::serve_with(cfg, opts, Some(tx)).await });
    let info = rt
        .block_on(async { tokio::time::timeout(CONTROL_READY_TIMEOUT, rx).await })
        .expect("the control plane is ready in time")
        .expect("the control plane reports its addresses");
    (info, task)
}

/// What [`provision`] made: a tenant with a verified Ed25519 sending domain and an SMTP
/// credential.
pub struct Provisioned {
    pub tenant_id: String,
    /// The tenant's first admin key.
    pub admin: String,
    pub domain_id: String,
    /// The DKIM selector and the TXT value published for it.
    pub selector: String,
    pub dkim_txt: String,
    pub username: String,
    pub password: String,
    pub credential_id: String,
}

/// Through the admin API at `api` with the owner key: creates tenant `tenant`, adds `domain`
/// with an Ed25519 key, publishes its DNS records on `dns`, verifies it, and creates the SMTP
/// credential `username` allowed to send for it. Asserts every step. The new tenant's sending
/// cap (10 messages a day, issue 14) is lifted: the tests of other features send more; the
/// guardrails' own test uses [`provision_new`].
pub fn provision(
    api_addr: SocketAddr,
    owner: &str,
    dns: &petrel_testkit::dns::DnsServer,
    tenant: &str,
    domain: &str,
    username: &str,
) -> Provisioned {
    let p = provision_new(api_addr, owner, dns, tenant, domain, username);
    let path = format!("/v1/tenants/{}/guardrails/lift-cap", p.tenant_id);
    let (code, lifted) = api(api_addr, "POST", &path, owner, None);
    assert_eq!(code, 200, "{lifted}");
    p
}

/// [`provision`] without lifting the new tenant's cap.
pub fn provision_new(
    api_addr: SocketAddr,
    owner: &str,
    dns: &petrel_testkit::dns::DnsServer,
    tenant: &str,
    domain: &str,
    username: &str,
) -> Provisioned {
    provision_keyed(api_addr, owner, dns, (tenant, domain, username), "ed25519")
}

/// [`provision`] with a DKIM key of `algorithm` (`ed25519` or `rsa2048`; ARC seals with RSA
/// only), the cap lifted.
pub fn provision_rsa(
    api_addr: SocketAddr,
    owner: &str,
    dns: &petrel_testkit::dns::DnsServer,
    (tenant, domain, username): (&str, &str, &str),
) -> Provisioned {
    let p = provision_keyed(api_addr, owner, dns, (tenant, domain, username), "rsa2048");
    let path = format!("/v1/tenants/{}/guardrails/lift-cap", p.tenant_id);
    let (code, lifted) = api(api_addr, "POST", &path, owner, None);
    assert_eq!(code, 200, "{lifted}");
    p
}

fn provision_keyed(
    api_addr: SocketAddr,
    owner: &str,
    dns: &petrel_testkit::dns::DnsServer,
    (tenant, domain, username): (&str, &str, &str),
    algorithm: &str,
) -> Provisioned {
    let (code, t) = api(
        api_addr,
        "POST",
        "/v1/tenants",
        owner,
        Some(serde_json::json!({"name": tenant})),
    );
    assert_eq!(code, 201, "{t}");
    let tenant_id = t["tenant"]["id"].as_str().expect("tenant id").to_string();
    let admin = t["admin_key"]["secret"]
        .as_str()
        .expect("admin key")
        .to_string();
    let (code, d) = api(
        api_addr,
        "POST",
        "/v1/domains",
        &admin,
        Some(serde_json::json!({"name": domain, "algorithm": algorithm})),
    );
    assert_eq!(code, 201, "{d}");
    let domain_id = d["id"].as_str().expect("domain id").to_string();
    let mut dkim = (String::new(), String::new());
    for r in d["dns_records"].as_array().expect("dns records") {
        let name = r["name"]
            .as_str()
            .expect("record name")
            .trim_end_matches('.')
            .to_string();
        let value = r["value"].as_str().expect("record value").to_string();
        if r["purpose"] == "dkim" {
            dkim = (name.clone(), value.clone());
        }
        dns.upsert(petrel_testkit::dns::txt(
            &format!("{name}."),
            DNS_RECORD_TTL_SECS,
            &value,
        ));
    }
    let selector = dkim
        .0
        .split("._domainkey")
        .next()
        .unwrap_or_default()
        .to_string();
    let (code, verified) = api(
        api_addr,
        "POST",
        &format!("/v1/domains/{domain_id}/verify"),
        &admin,
        None,
    );
    assert_eq!(
        (code, &verified["verified"]),
        (200, &serde_json::json!(true)),
        "{verified}"
    );
    let (code, cred) = api(
        api_addr,
        "POST",
        "/v1/credentials",
        &admin,
        Some(serde_json::json!({
            "kind": "smtp", "name": "mailer", "username": username, "allowed_sender_domains": [domain]
        })),
    );
    assert_eq!(code, 201, "{cred}");
    Provisioned {
        tenant_id,
        admin,
        domain_id,
        selector,
        dkim_txt: dkim.1,
        username: username.to_string(),
        password: cred["secret"].as_str().expect("secret").to_string(),
        credential_id: cred["credential"]["id"]
            .as_str()
            .expect("credential id")
            .to_string(),
    }
}
