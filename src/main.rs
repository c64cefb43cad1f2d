//! `petrel`: the one user-facing binary.
//!
//! - `petrel up`: engine (and control plane) on embedded defaults, for a fresh machine.
//! - `petrel engine --config FILE [flags]`: the data plane.
//! - `petrel spool ls|count --data-dir DIR`: what is spooled (works with the engine stopped).
//! - `petrel keys rotate|status --data-dir DIR`: the key-encryption key and the data keys.
//! - `petrel queue ls|suspend|resume|retry|bounce`: a running engine's queues.
//! - `petrel control ...`: the control plane.
//! - `petrel backup|restore`: the control plane's database and key material, sealed.
//! - `petrel load ...`: the load-test harness.
// No unwrap outside tests: propagate a typed error, or `expect` an invariant checked right there.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;

mod cli_keys;
mod cli_queue;
mod cli_up;

/// The name the control plane's push certificate carries.
const CONTROL_SERVER_NAME: &str = "localhost";

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser)]
#[command(
    name = "petrel",
    version,
    about = "Petrel: a thread-per-core MTA for email service providers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start Petrel on embedded defaults (data under ./petrel-data, SMTP on 127.0.0.1:2525).
    Up(cli_up::UpArgs),
    /// Run the engine (data plane).
    Engine(EngineArgs),
    /// Inspect the spool of a (running or stopped) engine.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Operate a running engine's delivery queues.
    Queue(cli_queue::QueueArgs),
    /// Keys that seal data at rest: rotate the key-encryption key, show the keyring.
    Keys {
        #[command(subcommand)]
        command: cli_keys::KeysCommand,
    },
    /// The control plane.
    Control {
        #[command(subcommand)]
        command: petrel_control::ControlCommand,
    },
    /// Back up the control plane: its database and key material in one file sealed under a
    /// backup key.
    Backup(petrel_control::backup::BackupArgs),
    /// Restore a control-plane backup into an empty database and put its keys back.
    Restore(petrel_control::backup::RestoreArgs),
    /// The load-test harness.
    Load {
        #[command(subcommand)]
        command: petrel_loadtest::LoadCommand,
    },
    /// Print the argon2id hash of a password read from standard input (for `[[auth.users]]`).
    HashPassword,
}

#[derive(clap::Args, Clone, Default)]
pub struct EngineArgs {
    /// TOML configuration file; defaults apply without one.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    smtp_listen: Option<SocketAddr>,
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    #[arg(long)]
    shards: Option<usize>,
    /// Networks whose clients may relay without AUTH, unsigned and counted as no tenant's
    /// (repeatable).
    #[arg(long = "trust-network")]
    trust_network: Vec<ipnet::IpNet>,
    /// A network whose clients relay without AUTH and are DKIM-signed (and counted) for these
    /// sending domains: `CIDR=DOMAIN[,DOMAIN...]`, `CIDR=*` for every domain of the policy
    /// (repeatable; `[[smtp.trusted_network_domains]]` in the file).
    #[arg(long = "trust-network-domains", value_parser = parse_trust_network_domains)]
    trust_network_domains: Vec<petrel_engine::config::TrustedNetworkDomains>,
    /// Send everything to this smart host instead of resolving MX.
    #[arg(long)]
    relay_to: Option<SocketAddr>,
    /// DNS server for MX resolution (repeatable); tests point it at a loopback server.
    #[arg(long)]
    nameserver: Vec<SocketAddr>,
    /// Accept and spool only; deliver nothing.
    #[arg(long)]
    no_delivery: bool,
    /// Development mode: AUTH before STARTTLS for loopback clients.
    #[arg(long)]
    development: bool,
    /// Do not fsync before the 250 (benchmarks that say so only).
    #[arg(long)]
    no_fsync: bool,
    /// Do not pin shards to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Control plane push address (host:port); the engine keeps its last snapshot without it.
    #[arg(long)]
    control: Option<SocketAddr>,
    /// File holding the token for the control-plane link (mode 0600; default: the systemd
    /// credential `petrel-control-token`, if any).
    #[arg(long)]
    control_token_file: Option<PathBuf>,
    /// Refused: a secret on the command line (use --control-token-file).
    #[arg(long, hide = true)]
    control_token: Option<String>,
    /// PEM certificate of the control plane's push listener.
    #[arg(long)]
    control_ca: Option<PathBuf>,
    /// The key-encryption key file (mode 0600) sealing the spool and the policy file (default:
    /// the systemd credential `petrel-kek`, else `<data-dir>/keys/kek`, made at first start).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Write the spool and the policy file in the clear (benchmarks' A/B only).
    #[arg(long)]
    no_encryption_at_rest: bool,
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// One line per spooled message.
    Ls {
        #[arg(long, default_value = "./petrel-data")]
        data_dir: PathBuf,
        /// The key-encryption key file, when not the engine's default.
        #[arg(long)]
        key_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The number of spooled messages (first), then pending recipients and bytes.
    Count {
        #[arg(long, default_value = "./petrel-data")]
        data_dir: PathBuf,
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    init_tracing();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("petrel: error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PETREL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Up(args) => {
            petrel_engine::engine::catch_sighup_early();
            cli_up::up(args)
        }
        Command::Engine(args) => {
            petrel_engine::engine::catch_sighup_early();
            let cfg = engine_config(&args)?;
            run_engine(cfg, &args, None)
        }
        Command::Spool { command } => spool(command),
        Command::Queue(args) => cli_queue::run(args),
        Command::Keys { command } => cli_keys::run(command),
        Command::Control { command } => {
            let rt = slow_runtime()?;
            rt.block_on(petrel_control::run(command))?;
            Ok(0)
        }
        Command::Backup(args) => {
            slow_runtime()?.block_on(petrel_control::backup::cli::run_backup(args))?;
            Ok(0)
        }
        Command::Restore(args) => {
            slow_runtime()?.block_on(petrel_control::backup::cli::run_restore(args))?;
            Ok(0)
        }
        Command::Load { command } => petrel_loadtest::run(command),
        Command::HashPassword => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            println!(
                "{}",
                petrel_engine::auth::hash_password(line.trim_end_matches(['\r', '\n']))
            );
            Ok(0)
        }
    }
}

/// The slow-path runtime: one tokio worker for metrics, admin, DNS and the control link.
pub fn slow_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("petrel-slow")
        .enable_all()
        .build()
        .context("tokio runtime")
}

pub fn engine_config(args: &EngineArgs) -> anyhow::Result<petrel_engine::EngineConfig> {
    let mut cfg = match &args.config {
        Some(p) => petrel_engine::EngineConfig::from_file(p)?,
        None => petrel_engine::EngineConfig::default(),
    };
    cfg.apply_overrides(&petrel_engine::Overrides {
        data_dir: args.data_dir.clone(),
        smtp_listen: args.smtp_listen,
        metrics_listen: args.metrics_listen,
        admin_listen: args.admin_listen,
        shards: args.shards,
        trust_networks: args.trust_network.clone(),
        trust_network_domains: args.trust_network_domains.clone(),
        relay_to: args.relay_to,
        nameservers: args.nameserver.clone(),
        no_delivery: args.no_delivery,
        development: args.development,
        no_fsync: args.no_fsync,
        no_pin: args.no_pin,
        key_file: args.key_file.clone(),
        no_encryption_at_rest: args.no_encryption_at_rest,
    })?;
    if let Some(addr) = args.control {
        cfg.control.push_addr = Some(addr);
    }
    petrel_policy::secret_file::refuse_inline(
        args.control_token.as_deref(),
        "PETREL_CONTROL_TOKEN",
        "the control-plane token",
        "--control-token-file PATH",
    )?;
    let token_file = args
        .control_token_file
        .clone()
        .or_else(|| petrel_policy::secret_file::credential("petrel-control-token"));
    if let Some(path) = token_file {
        cfg.control.token = Some(petrel_policy::secret_file::read(&path)?);
    }
    if let Some(p) = &args.control_ca {
        cfg.control.ca_cert_path = Some(p.clone());
    }
    Ok(cfg)
}

/// Runs the engine on this thread until it stops. `banner` adds lines to the ready message.
pub fn run_engine(
    cfg: petrel_engine::EngineConfig,
    _args: &EngineArgs,
    extra: Option<(tokio::runtime::Runtime, Vec<String>)>,
) -> anyhow::Result<i32> {
    let (rt, banner) = match extra {
        Some((rt, banner)) => (rt, banner),
        None => (slow_runtime()?, Vec::new()),
    };
    let at_rest = petrel_engine::at_rest::open(&cfg)?;
    let policy = Arc::new(petrel_policy::PolicyStore::open(
        &cfg.server.data_dir.join("policy"),
        at_rest,
    ));
    let mut outbox = None;
    if let Some(addr) = cfg.control.push_addr {
        let ca = match &cfg.control.ca_cert_path {
            Some(p) => std::fs::read(p).with_context(|| format!("control CA {}", p.display()))?,
            None => anyhow::bail!(
                "control.ca_cert_path (--control-ca) is needed to trust the control plane"
            ),
        };
        let engine_id = cfg.engine_id();
        if cfg.events_to_control_plane() {
            outbox = Some(std::sync::Arc::new(
                petrel_policy::Outbox::open_sealed(
                    &cfg.server.data_dir.join("events-backlog"),
                    cfg.events.backlog_bytes_max,
                    petrel_engine::clock::now_ms(),
                    policy.keys().cloned(),
                )
                .context("event backlog")?,
            ));
        }
        let mut link = petrel_policy::LinkConfig::new(
            &addr.to_string(),
            CONTROL_SERVER_NAME,
            petrel_policy::LinkTrust::CaPem(ca),
            cfg.control.token.as_deref().unwrap_or_default(),
            &engine_id,
        );
        link.shards = cfg.shard_count() as u32;
        link.outbox = outbox.clone();
        let store = Arc::clone(&policy);
        rt.spawn(petrel_policy::run_link(link, store, |v| {
            metrics::gauge!(petrel_engine::metrics::POLICY_VERSION).set(v as f64);
            tracing::info!(version = v, "policy snapshot applied on all shards");
        }));
        rt.spawn(petrel_engine::metrics::publish_suppressions(Arc::clone(
            &policy,
        )));
    }
    let delivery_note = if cfg.delivery.enabled {
        match cfg.delivery.relay_to {
            Some(a) => format!("delivery: on, everything relayed to {a}"),
            None => "delivery: on, MX resolution".to_string(),
        }
    } else {
        "delivery: off (accept and spool only)".to_string()
    };
    let data_dir = cfg.server.data_dir.clone();
    petrel_engine::run(cfg, rt.handle(), policy, outbox, |info, _stop| {
        println!(
            "petrel engine ready: smtp={} shards={} data={}",
            info.smtp,
            info.shards,
            data_dir.display()
        );
        for (profile, a) in &info.listeners {
            println!("  listener: {} smtp={a}", profile.name());
        }
        if let Some(m) = info.metrics {
            println!("  metrics: http://{m}/metrics");
        }
        if let Some(a) = info.admin {
            println!("  admin:   http://{a}/v1/queue");
        }
        if let Some(a) = info.intake {
            println!("  intake:  smtp={a}");
        }
        if let Some(a) = info.acme_http01 {
            println!("  acme:    http-01={a}");
        }
        println!("  tls:     {:?}", info.tls);
        println!("  policy:  version {}", info.policy_version);
        println!("  {delivery_note}");
        for line in &banner {
            println!("  {line}");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(0)
}

/// Everything spooled under `data_dir`, opened with its keyring when it has one.
fn inspect_spool(
    data_dir: &std::path::Path,
    key_file: Option<PathBuf>,
) -> anyhow::Result<Vec<petrel_spool::SpooledMessage>> {
    let mut cfg = petrel_engine::EngineConfig::default();
    cfg.server.data_dir = data_dir.to_path_buf();
    cfg.encryption.key_file = key_file;
    let keys = petrel_engine::at_rest::open_existing(&cfg)?;
    Ok(petrel_spool::inspect(
        &data_dir.join("spool"),
        keys.as_ref(),
    )?)
}

fn spool(cmd: SpoolCommand) -> anyhow::Result<i32> {
    match cmd {
        SpoolCommand::Ls {
            data_dir,
            key_file,
            json,
        } => {
            let msgs = inspect_spool(&data_dir, key_file)?;
            for m in &msgs {
                let pending = m
                    .envelope
                    .recipients
                    .iter()
                    .filter(|r| r.state == petrel_spool::RecipientState::Pending)
                    .count();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "id": m.id.to_string(),
                            "from": m.envelope.mail_from,
                            "recipients": m.envelope.recipients.iter().map(|r| &r.address).collect::<Vec<_>>(),
                            "pending": pending,
                            "bytes": m.body_len_bytes,
                            "received_unix_ms": m.envelope.received_unix_ms,
                        })
                    );
                } else {
                    println!(
                        "{} from=<{}> rcpts={} pending={} bytes={}",
                        m.id,
                        m.envelope.mail_from,
                        m.envelope.recipients.len(),
                        pending,
                        m.body_len_bytes
                    );
                }
            }
            Ok(0)
        }
        SpoolCommand::Count { data_dir, key_file } => {
            let msgs = inspect_spool(&data_dir, key_file)?;
            let pending: usize = msgs
                .iter()
                .map(|m| {
                    m.envelope
                        .recipients
                        .iter()
                        .filter(|r| r.state == petrel_spool::RecipientState::Pending)
                        .count()
                })
                .sum();
            let bytes: u64 = msgs.iter().map(|m| m.body_len_bytes).sum();
            println!("{}", msgs.len());
            println!("pending_recipients {pending}");
            println!("bytes {bytes}");
            Ok(0)
        }
    }
}

fn parse_trust_network_domains(
    s: &str,
) -> Result<petrel_engine::config::TrustedNetworkDomains, String> {
    petrel_engine::config::TrustedNetworkDomains::parse_flag(s)
}
