//! `petrel control ...`: the subcommands the `petrel` binary mounts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::{ControlConfig, ControlError, ServeOptions};

/// `petrel control <command>`.
#[derive(Debug, clap::Subcommand)]
pub enum ControlCommand {
    /// Run the control plane (admin API and engine push).
    Serve(Box<ServeArgs>),
    /// Walk the audit log's hash chain and report the first broken link (exit status 1 if any).
    AuditVerify {
        /// Petrel's data directory; the control plane uses `<data-dir>/control`.
        #[arg(long, default_value = "./petrel-data")]
        data_dir: PathBuf,
        /// `postgres://...` for a shared database; default: SQLite under the data directory.
        #[arg(long, env = "PETREL_DATABASE_URL")]
        database_url: Option<String>,
        /// File holding the database password (mode 0600).
        #[arg(long)]
        database_password_file: Option<PathBuf>,
        /// The key-encryption key file (see `serve --key-file`).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The signed checkpoints (see `serve --audit-checkpoint-file`).
        #[arg(long)]
        audit_checkpoint_file: Option<PathBuf>,
        /// The audit signing key, whose public half the checkpoints must verify under (see
        /// `serve --audit-key-file`).
        #[arg(long)]
        audit_key_file: Option<PathBuf>,
        /// The audit public key (hex), instead of the key file: verify where the private key
        /// is not.
        #[arg(long)]
        audit_public_key: Option<String>,
    },
}

/// Flags of `petrel control serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Petrel's data directory; the control plane uses `<data-dir>/control`.
    #[arg(long, default_value = "./petrel-data")]
    pub data_dir: PathBuf,
    /// The key-encryption key file (mode 0600) sealing the database's secret columns; the same
    /// on every node (default: the systemd credential `petrel-kek`, else
    /// `<data-dir>/control/keys/kek`, made at first start).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Days after which a tenant's (or the operator's) new secret values are sealed under a
    /// new data key; older keys stay for reading (1 to 3650).
    #[arg(
        long,
        default_value_t = crate::store::sealed::DATA_KEY_ROTATE_AFTER_DAYS_DEFAULT,
        value_parser = clap::value_parser!(u32)
            .range(1..=i64::from(crate::store::sealed::DATA_KEY_ROTATE_AFTER_DAYS_MAX))
    )]
    pub data_key_rotate_after_days: u32,
    /// The Ed25519 key (PKCS#8, mode 0600) that signs audit checkpoints (default: the systemd
    /// credential `petrel-audit-key`, else `<data-dir>/control/keys/audit-ed25519.key`).
    #[arg(long)]
    pub audit_key_file: Option<PathBuf>,
    /// Where signed audit checkpoints are appended (default:
    /// `<data-dir>/control/audit-checkpoints.jsonl`); keep it on other storage than the database.
    #[arg(long)]
    pub audit_checkpoint_file: Option<PathBuf>,
    /// Admit only engines with an identity of their own (`POST /v1/engines/{id}/identity`);
    /// the shared push token then admits none.
    #[arg(long)]
    pub require_engine_identity: bool,
    /// Seconds between scheduled audit checkpoints.
    #[arg(long, default_value_t = crate::audit_anchor::CHECKPOINT_INTERVAL_SECS_DEFAULT)]
    pub audit_checkpoint_interval_secs: u64,
    /// `postgres://...` for a shared database; default: SQLite under the data directory.
    #[arg(long, env = "PETREL_DATABASE_URL")]
    pub database_url: Option<String>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub api_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub push_listen: SocketAddr,
    /// File holding the secret engines present (mode 0600); default: the systemd credential
    /// `petrel-push-token`, else `<data-dir>/control/push.token`, created on first start.
    #[arg(long)]
    pub push_token_file: Option<PathBuf>,
    /// Refused: a secret on the command line (use --push-token-file).
    #[arg(long, hide = true)]
    pub push_token: Option<String>,
    /// File holding the database password (mode 0600; default: the systemd credential
    /// `petrel-database-password`, if any); --database-url must not carry one.
    #[arg(long)]
    pub database_password_file: Option<PathBuf>,
    /// Nameserver for domain verification (repeatable); default: the system's.
    #[arg(long = "dns-nameserver")]
    pub dns_nameservers: Vec<SocketAddr>,
    /// PEM certificate for the push listener (with --push-tls-key); default: self-signed.
    #[arg(long, requires = "push_tls_key")]
    pub push_tls_cert: Option<PathBuf>,
    #[arg(long, requires = "push_tls_cert")]
    pub push_tls_key: Option<PathBuf>,
    /// PEM certificate for the admin API (with --api-tls-key): HTTPS. Without it the API is
    /// plain HTTP, which only a loopback --api-listen gets.
    #[arg(long, requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,
    #[arg(long, requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
    /// Serve the admin API in plain HTTP on a non-loopback address (only behind a TLS proxy).
    #[arg(long)]
    pub api_allow_plaintext: bool,
    /// A proxy in front of the admin API (CIDR, repeatable): its `X-Forwarded-For` names the
    /// client for IP allowlists, throttles and the audit log.
    #[arg(long = "api-trusted-proxy")]
    pub api_trusted_proxies: Vec<ipnet::IpNet>,
    /// The domain tenants include in SPF.
    #[arg(long, default_value = crate::SPF_INCLUDE_DEFAULT)]
    pub spf_include: String,
    /// An outbound address of the engines (repeatable): a domain's SPF record may authorise
    /// these with ip4:/ip6: mechanisms instead of including --spf-include.
    #[arg(long = "spf-address")]
    pub spf_addresses: Vec<std::net::IpAddr>,
    /// Seconds between two DNS re-checks (DKIM, SPF, DMARC) of every verified sending domain.
    #[arg(long, default_value_t = crate::domain_auth::DOMAIN_CHECK_INTERVAL_SECS_DEFAULT)]
    pub domain_check_interval_secs: u64,
    /// Let webhooks reach loopback addresses, also over plain http (development only; private
    /// addresses stay refused).
    #[arg(long)]
    pub webhooks_allow_loopback: bool,
    /// The bounce domain of VERP return paths (its MX must point at the engines' intake
    /// listener); default: none (no VERP).
    #[arg(long, default_value = "")]
    pub return_path_domain: String,
    /// The control plane's public origin (https://host[:port]) for one-click unsubscribe links.
    #[arg(long, default_value = "")]
    pub public_url: String,
    /// PEM file of extra CA certificates webhook receivers may use (a private CA).
    #[arg(long)]
    pub webhooks_ca_file: Option<PathBuf>,
    /// The retention windows tenants may choose, days: `events=MIN..MAX,messages=MIN..MAX,
    /// audit=MIN..MAX` (kinds not named keep 1..3650, 1..3650 and 30..3650).
    #[arg(long, default_value = "")]
    pub retention_bounds: crate::retention::RetentionBounds,
    /// Abuse guardrails (`--guard-*`).
    #[command(flatten)]
    pub guard: GuardArgs,
    /// Inbound MTA-STS (`--intake-mx`, `--mta-sts-*`).
    #[command(flatten)]
    pub mta_sts: MtaStsArgs,
    /// Outbound TLS-RPT reports (`--tls-rpt-*`).
    #[command(flatten)]
    pub tls_rpt: crate::tls_rpt::args::TlsRptArgs,
}

/// Inbound MTA-STS (RFC 8461) for the domains the engines' intake receives (`crate::mta_sts`).
#[derive(Debug, Clone, clap::Args)]
pub struct MtaStsArgs {
    /// The host names of the engines' intake (MX on 25), repeated; a `*.` wildcard may start
    /// one. Given: `GET /.well-known/mta-sts.txt` serves a policy naming them, for the bounce
    /// domain and every verified domain whose MX records all name them. Default: none (off).
    #[arg(long = "intake-mx")]
    pub intake_mx: Vec<String>,
    /// The policy's mode: enforce, or testing (senders report but deliver anyway).
    #[arg(long, value_enum, default_value_t = crate::mta_sts::Mode::Enforce)]
    pub mta_sts_mode: crate::mta_sts::Mode,
    /// How long senders may cache the policy, seconds (86400..=31557600).
    #[arg(long, default_value_t = crate::mta_sts::MAX_AGE_SECS_DEFAULT)]
    pub mta_sts_max_age_secs: u64,
    /// The TLS-RPT address (mailto: or https:) shown in each domain's `_smtp._tls` record.
    #[arg(long)]
    pub tls_rpt_rua: Option<String>,
}

impl MtaStsArgs {
    pub fn settings(&self) -> Result<Option<crate::mta_sts::InboundMtaSts>, ControlError> {
        crate::mta_sts::InboundMtaSts::new(
            &self.intake_mx,
            self.mta_sts_mode,
            self.mta_sts_max_age_secs,
            self.tls_rpt_rua.as_deref(),
        )
        .map_err(|e| ControlError::Config(e.to_string()))
    }
}

/// The abuse guardrails' flags (defaults: the issue's).
#[derive(Debug, Clone, clap::Args)]
pub struct GuardArgs {
    /// Messages a new tenant may send per --guard-new-tenant-window-secs; 0: no cap.
    #[arg(long, default_value_t = crate::guardrails::NEW_TENANT_MESSAGES_MAX_DEFAULT)]
    pub guard_new_tenant_messages_max: u32,
    #[arg(long, default_value_t = crate::guardrails::NEW_TENANT_WINDOW_MS_DEFAULT / 1000)]
    pub guard_new_tenant_window_secs: u64,
    /// How long a tenant counts as new after its creation.
    #[arg(long, default_value_t = crate::guardrails::NEW_TENANT_PERIOD_MS_DEFAULT / 1000)]
    pub guard_new_tenant_period_secs: u64,
    /// The rolling window of bounce and complaint rates (whole hours of buckets).
    #[arg(long, default_value_t = crate::guardrails::WINDOW_MS_DEFAULT / 1000)]
    pub guard_window_secs: u64,
    /// Fewest messages sent in the window before a rate counts.
    #[arg(long, default_value_t = crate::guardrails::MIN_VOLUME_DEFAULT)]
    pub guard_min_volume: u64,
    /// Sending is disabled past this hard-bounce rate, percent.
    #[arg(long, default_value_t = crate::guardrails::BOUNCE_RATE_MAX_PERCENT_DEFAULT)]
    pub guard_bounce_rate_max_percent: f64,
    /// Sending is disabled past this complaint rate, percent.
    #[arg(long, default_value_t = crate::guardrails::COMPLAINT_RATE_MAX_PERCENT_DEFAULT)]
    pub guard_complaint_rate_max_percent: f64,
    /// A reputation warning at this share of a threshold, percent.
    #[arg(long, default_value_t = crate::guardrails::WARNING_PERCENT_DEFAULT)]
    pub guard_warning_percent: u32,
    /// The periodic evaluation of every tenant (ingests trigger their tenants' at once).
    #[arg(long, default_value_t = crate::guardrails::CHECK_INTERVAL_MS_DEFAULT / 1000)]
    pub guard_check_interval_secs: u64,
}

impl GuardArgs {
    pub fn settings(&self) -> crate::guardrails::GuardSettings {
        let ms = |s: u64| s.saturating_mul(1000);
        crate::guardrails::GuardSettings {
            new_tenant_messages_max: self.guard_new_tenant_messages_max,
            new_tenant_window_ms: ms(self.guard_new_tenant_window_secs),
            new_tenant_period_ms: ms(self.guard_new_tenant_period_secs),
            window_ms: ms(self.guard_window_secs),
            min_volume: self.guard_min_volume,
            bounce_rate_max_percent: self.guard_bounce_rate_max_percent,
            complaint_rate_max_percent: self.guard_complaint_rate_max_percent,
            warning_percent: self.guard_warning_percent,
            check_interval_ms: ms(self.guard_check_interval_secs),
        }
    }
}

/// Runs one `petrel control` command.
pub async fn run(cmd: ControlCommand) -> anyhow::Result<()> {
    match cmd {
        ControlCommand::Serve(a) => {
            let a = *a;
            let dir = a.data_dir.join("control");
            petrel_policy::secret_file::refuse_inline(
                a.push_token.as_deref(),
                "PETREL_PUSH_TOKEN",
                "the push token",
                "--push-token-file PATH",
            )?;
            let token_file = a
                .push_token_file
                .clone()
                .or_else(|| petrel_policy::secret_file::credential("petrel-push-token"));
            let push_token = match token_file {
                Some(path) => petrel_policy::secret_file::read(&path)?,
                None => read_or_create_token(&dir)?,
            };
            let database_url =
                database_url_with_password(a.database_url, a.database_password_file.as_deref())?;
            let cfg = ControlConfig {
                data_dir: dir,
                database_url,
                api_listen: a.api_listen,
                push_listen: a.push_listen,
                push_token,
                dns_nameservers: a.dns_nameservers,
                webhooks_allow_loopback: a.webhooks_allow_loopback,
                webhooks_ca_file: a.webhooks_ca_file,
            };
            let opts = ServeOptions {
                push_tls_cert: a.push_tls_cert,
                push_tls_key: a.push_tls_key,
                api_tls_cert: a.api_tls_cert,
                api_tls_key: a.api_tls_key,
                api_allow_plaintext: a.api_allow_plaintext,
                api_trusted_proxies: a.api_trusted_proxies,
                spf_include: a.spf_include,
                spf_addresses: a.spf_addresses,
                domain_check_interval_secs: a.domain_check_interval_secs,
                return_path_domain: a.return_path_domain,
                public_url: a.public_url,
                guardrails: a.guard.settings(),
                retention: a.retention_bounds,
                mta_sts: a.mta_sts.settings()?,
                tls_rpt: a.tls_rpt.settings()?,
                key_file: a.key_file,
                data_key_rotate_after_days: a.data_key_rotate_after_days,
                audit_key_file: a.audit_key_file,
                audit_checkpoint_file: a.audit_checkpoint_file,
                audit_checkpoint_interval_secs: a.audit_checkpoint_interval_secs,
                require_engine_identity: a.require_engine_identity,
                ..ServeOptions::default()
            };
            crate::serve_with(cfg, opts, None).await?;
            Ok(())
        }
        ControlCommand::AuditVerify {
            data_dir,
            database_url,
            database_password_file,
            key_file,
            audit_checkpoint_file,
            audit_key_file,
            audit_public_key,
        } => {
            let database_url =
                database_url_with_password(database_url, database_password_file.as_deref())?;
            let db = crate::store::Db::open_keyed(
                &data_dir.join("control"),
                database_url.as_deref(),
                key_file.as_deref(),
            )
            .await?;
            let control = data_dir.join("control");
            let public_key = match audit_public_key {
                Some(h) => hex::decode(h.trim())
                    .map_err(|e| anyhow::anyhow!("--audit-public-key is not hex: {e}"))?,
                None => {
                    let (path, _) =
                        crate::audit_anchor::key_path(&control, audit_key_file.as_deref());
                    let key = crate::audit_anchor::load_key(&path, false)?;
                    aws_lc_rs::signature::KeyPair::public_key(&key)
                        .as_ref()
                        .to_vec()
                }
            };
            let file = audit_checkpoint_file
                .unwrap_or_else(|| control.join(crate::audit_anchor::CHECKPOINT_FILE));
            let report =
                crate::audit_anchor::verify_all(&mut *db.conn().await?, &file, &public_key).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report.ok {
                Ok(())
            } else {
                anyhow::bail!(
                    "audit chain broken at seq {}",
                    report.first_broken_seq.unwrap_or_default()
                )
            }
        }
    }
}

/// The database URL with the password from its file (or the systemd credential
/// `petrel-database-password`) filled in. A URL that carries a password itself is refused: it
/// would sit on the command line or in the environment.
pub fn database_url_with_password(
    url: Option<String>,
    password_file: Option<&Path>,
) -> anyhow::Result<Option<String>> {
    let Some(url) = url else {
        return Ok(None);
    };
    let mut parsed =
        url::Url::parse(&url).map_err(|e| anyhow::anyhow!("--database-url is not a URL: {e}"))?;
    if parsed.password().is_some() {
        return Err(petrel_policy::secret_file::SecretError::NotInFile {
            what: "a password inside the database URL",
            instead: "--database-password-file PATH (and a URL without the password)",
        }
        .into());
    }
    let file = password_file
        .map(Path::to_path_buf)
        .or_else(|| petrel_policy::secret_file::credential("petrel-database-password"));
    let Some(file) = file else {
        return Ok(Some(url));
    };
    let password = petrel_policy::secret_file::read(&file)?;
    parsed
        .set_password(Some(&password))
        .map_err(|()| anyhow::anyhow!("--database-url cannot carry a password (no host)"))?;
    Ok(Some(parsed.to_string()))
}

/// The push token kept in `<dir>/push.token` (mode 0600), created on first use.
fn read_or_create_token(dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("push.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    std::fs::create_dir_all(dir)?;
    let token = hex::encode(rand::random::<[u8; 24]>());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(token.as_bytes())?;
    eprintln!("petrel control: push token written to {}", path.display());
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ControlCommand,
    }

    #[test]
    fn serve_flags_parse() {
        let cli = Cli::try_parse_from([
            "petrel",
            "serve",
            "--data-dir",
            "/tmp/d",
            "--dns-nameserver",
            "127.0.0.1:5353",
            "--dns-nameserver",
            "[::1]:53",
            "--push-token-file",
            "/tmp/t",
        ])
        .expect("parses");
        let ControlCommand::Serve(a) = cli.command else {
            panic!("serve expected")
        };
        assert_eq!(a.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(a.dns_nameservers.len(), 2);
        assert_eq!(
            a.api_listen,
            "127.0.0.1:8080".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(
            a.push_listen,
            "127.0.0.1:8081".parse::<SocketAddr>().expect("addr")
        );
        assert!(!a.webhooks_allow_loopback);
        let cli = Cli::try_parse_from([
            "petrel",
            "serve",
            "--webhooks-allow-loopback",
            "--webhooks-ca-file",
            "/ca.pem",
        ])
        .expect("parses");
        let ControlCommand::Serve(a) = cli.command else {
            panic!("serve expected")
        };
        assert!(a.webhooks_allow_loopback);
        assert_eq!(a.webhooks_ca_file, Some(PathBuf::from("/ca.pem")));
        assert!(Cli::try_parse_from(["petrel", "serve", "--push-tls-cert", "c.pem"]).is_err());
        let cli = Cli::try_parse_from(["petrel", "serve", "--data-key-rotate-after-days", "7"])
            .expect("parses");
        let ControlCommand::Serve(a) = cli.command else {
            panic!("serve expected")
        };
        assert_eq!(a.data_key_rotate_after_days, 7);
        for out_of_bounds in ["0", "3651"] {
            assert!(Cli::try_parse_from([
                "petrel",
                "serve",
                "--data-key-rotate-after-days",
                out_of_bounds
            ])
            .is_err());
        }
        let cli =
            Cli::try_parse_from(["petrel", "audit-verify", "--data-dir", "/x"]).expect("parses");
        assert!(matches!(cli.command, ControlCommand::AuditVerify { .. }));
    }

    #[test]
    fn push_token_is_created_once() {
        let dir = tempfile_dir();
        let a = read_or_create_token(&dir).expect("create");
        let b = read_or_create_token(&dir).expect("read");
        assert_eq!(a, b);
        assert_eq!(a.len(), 48);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        std::env::temp_dir().join(format!(
            "petrel-cli-{}",
            hex::encode(rand::random::<[u8; 6]>())
        ))
    }
}
