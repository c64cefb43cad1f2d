//! `petrel up`: the control plane and the engine together, on embedded defaults.
//!
//! Data under `./petrel-data`, SMTP on 127.0.0.1:2525, metrics on 127.0.0.1:9464, the admin API
//! on 127.0.0.1:8080. A development tenant, a sending domain and SMTP credentials are created
//! once and printed. Delivery stays off unless `--relay-to` names a smart host: a fresh machine
//! must not send mail (or DNS queries) anywhere by surprise.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use crate::{engine_config, run_engine, slow_runtime, EngineArgs};

/// How long `up` waits for the control plane to listen.
const CONTROL_READY_TIMEOUT_SECS: u64 = 60;

#[derive(clap::Args)]
pub struct UpArgs {
    #[arg(long, default_value = "./petrel-data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:2525")]
    smtp_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8080")]
    api_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8081")]
    push_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9465")]
    admin_listen: SocketAddr,
    /// Deliver everything to this smart host (for example a `petrel load sink`).
    #[arg(long)]
    relay_to: Option<SocketAddr>,
    #[arg(long)]
    shards: Option<usize>,
    /// The control plane's database: `postgres://...` (default: SQLite under the data
    /// directory).
    #[arg(long, env = "PETREL_DATABASE_URL")]
    database_url: Option<String>,
    /// File holding the database password (mode 0600); the URL must not carry one.
    #[arg(long)]
    database_password_file: Option<std::path::PathBuf>,
}

pub fn up(args: UpArgs) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create {}", args.data_dir.display()))?;
    let rt = slow_runtime()?;
    // One development key-encryption key for the engine and the control plane.
    let key_file = args.data_dir.join("keys").join("kek");
    let (_, key_created) = petrel_seal::KekFile::load_or_generate(&key_file)
        .with_context(|| format!("key file {}", key_file.display()))?;
    if key_created {
        eprintln!(
            "petrel: generated the key-encryption key {} (mode 0600); production keeps it \
             away from the data (--key-file, or the systemd credential petrel-kek)",
            key_file.display()
        );
    }
    let token = dev_push_token(&args.data_dir)?;
    let token_path = args.data_dir.join(DEV_PUSH_TOKEN_FILE);
    let control = petrel_control::ControlConfig {
        data_dir: args.data_dir.join("control"),
        database_url: petrel_control::database_url_with_password(
            args.database_url.clone(),
            args.database_password_file.as_deref(),
        )?,
        api_listen: args.api_listen,
        push_listen: args.push_listen,
        push_token: token.clone(),
        dns_nameservers: Vec::new(),
        // Development: webhooks may go to a receiver on this machine.
        webhooks_allow_loopback: true,
        webhooks_ca_file: None,
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let options = petrel_control::ServeOptions {
        key_file: Some(key_file.clone()),
        ..petrel_control::ServeOptions::default()
    };
    rt.spawn(async move {
        if let Err(e) = petrel_control::serve_with(control, options, Some(ready_tx)).await {
            eprintln!("petrel: control plane stopped: {e}");
        }
    });
    let info = rt
        .block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(CONTROL_READY_TIMEOUT_SECS),
                ready_rx,
            )
            .await
        })
        .context("control plane did not start in time")?
        .context("control plane failed to start")?;
    let ca_path = args.data_dir.join("control").join("push-cert.pem");
    std::fs::write(&ca_path, &info.push_cert_pem)?;
    let dev = rt.block_on(petrel_control::bootstrap_dev(&info))?;

    let mut banner = vec![format!(
        "control plane: {}://{}/v1 (OpenAPI at /v1/openapi.json)",
        info.api_scheme, info.api_addr
    )];
    if let Some(key) = &info.bootstrap_key {
        banner.push(format!("owner API key (shown once, keep it): {key}"));
    }
    banner.extend(dev.lines());
    banner.push("relay: loopback clients (127.0.0.0/8) are trusted in development".into());
    banner.push(format!(
        "at rest: spool, policy file and the database's secret columns sealed (AES-256-GCM) \
         under {}; production keeps the key elsewhere (--key-file, or the systemd credential \
         petrel-kek)",
        key_file.display()
    ));

    let engine_args = EngineArgs {
        data_dir: Some(args.data_dir.clone()),
        smtp_listen: Some(args.smtp_listen),
        metrics_listen: Some(args.metrics_listen),
        admin_listen: Some(args.admin_listen),
        shards: args.shards,
        trust_network: Vec::new(),
        // Development: loopback clients have every domain of the policy signed.
        trust_network_domains: vec![petrel_engine::config::TrustedNetworkDomains {
            cidr: "127.0.0.0/8".parse().context("static network")?,
            domains: vec![petrel_engine::config::ANY_SENDING_DOMAIN.to_string()],
        }],
        relay_to: args.relay_to,
        no_delivery: args.relay_to.is_none(),
        development: true,
        control: Some(info.push_addr),
        control_token_file: Some(token_path),
        control_ca: Some(ca_path),
        key_file: Some(key_file),
        ..EngineArgs::default()
    };
    let cfg = engine_config(&engine_args)?;
    run_engine(cfg, &engine_args, Some((rt, banner)))
}

/// The development push token's file in the data directory (mode 0600).
const DEV_PUSH_TOKEN_FILE: &str = "control-push.token";

/// The development push token: random once, kept in the data directory (mode 0600).
fn dev_push_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(DEV_PUSH_TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let mut bytes = [0u8; 24];
    getrandom(&mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    std::io::Write::write_all(&mut f, token.as_bytes())?;
    Ok(token)
}

fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}
