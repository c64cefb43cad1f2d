//! `petrel queue ...`: talks to a running engine's admin endpoint on loopback, with its admin
//! token (`--admin-token-file`, else the systemd credential `petrel-admin-token`, else
//! `<data-dir>/admin.token`, which the engine makes at first start).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};

/// How long the admin endpoint may take to answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest admin answer read.
const ADMIN_RESPONSE_MAX_BYTES: u64 = 64 << 20;

#[derive(clap::Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    command: QueueCommand,
    /// The engine's admin endpoint.
    #[arg(long, global = true, default_value = "127.0.0.1:9465")]
    admin: SocketAddr,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    json: bool,
    /// The engine's data directory (its `admin.token`).
    #[arg(long, global = true, default_value = "./petrel-data")]
    data_dir: std::path::PathBuf,
    /// The file holding the admin token (mode 0600).
    #[arg(long, global = true)]
    admin_token_file: Option<std::path::PathBuf>,
}

#[derive(clap::Subcommand)]
enum QueueCommand {
    /// Depth, oldest message and state per destination domain.
    Ls,
    /// Stop delivering to a domain (mail stays queued).
    Suspend { domain: String },
    /// Deliver to a suspended domain again.
    Resume { domain: String },
    /// Make every queued recipient of a domain due now.
    Retry { domain: String },
    /// Bounce every queued recipient of a domain (with DSNs).
    Bounce { domain: String },
}

pub fn run(args: QueueArgs) -> anyhow::Result<i32> {
    let (method, path) = match &args.command {
        QueueCommand::Ls => ("GET", "/v1/queue".to_string()),
        QueueCommand::Suspend { domain } => ("POST", format!("/v1/queue/{domain}/suspend")),
        QueueCommand::Resume { domain } => ("POST", format!("/v1/queue/{domain}/resume")),
        QueueCommand::Retry { domain } => ("POST", format!("/v1/queue/{domain}/retry")),
        QueueCommand::Bounce { domain } => ("POST", format!("/v1/queue/{domain}/bounce")),
    };
    let token_file = args
        .admin_token_file
        .clone()
        .or_else(|| {
            petrel_policy::secret_file::credential(petrel_engine::admin::ADMIN_TOKEN_CREDENTIAL)
        })
        .unwrap_or_else(|| args.data_dir.join(petrel_engine::admin::ADMIN_TOKEN_FILE));
    let token = petrel_policy::secret_file::read(&token_file)
        .with_context(|| format!("the admin token ({})", token_file.display()))?;
    let (status, body) = request(args.admin, method, &path, &token)?;
    if args.json || status != 200 {
        println!("{body}");
    } else {
        print_human(&body)?;
    }
    Ok(if status == 200 { 0 } else { 1 })
}

fn print_human(body: &str) -> anyhow::Result<()> {
    let v: serde_json::Value = serde_json::from_str(body).context("admin answer is not JSON")?;
    let shards = v["shards"].as_array().cloned().unwrap_or_default();
    for s in shards {
        println!("shard {}: {}", s["shard"], s["reply"]);
    }
    Ok(())
}

/// A minimal HTTP/1.1 request over loopback (Connection: close).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> anyhow::Result<(u16, String)> {
    if !addr.ip().is_loopback() {
        bail!("the admin endpoint is loopback only; {addr} is not");
    }
    let mut s = TcpStream::connect_timeout(&addr, ADMIN_TIMEOUT)
        .with_context(|| format!("cannot reach the engine's admin endpoint at {addr}"))?;
    s.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(ADMIN_RESPONSE_MAX_BYTES).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP status line")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
