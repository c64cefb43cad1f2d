//! Command-line arguments (`petrel load inject|sink|run`) and their translation to configs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::inject::InjectConfig;
use crate::sink::{DomainFault, OverLimit, SinkConfig};
use crate::LoadError;

/// `petrel load inject`: SMTP injection at a target rate or flat out.
#[derive(Debug, Clone, Args)]
pub struct InjectArgs {
    /// SMTP server to inject into.
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub target: SocketAddr,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 20)]
    pub connections: u32,
    /// Messages to send in total.
    #[arg(long, short = 'm', default_value_t = 10_000)]
    pub messages: u64,
    /// Stop starting messages after this long (e.g. 30s, 500ms, 2m).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Target rate in messages per second (default: flat out).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Messages per connection before QUIT and reconnect (0: reuse without limit; 1: a new
    /// connection per message).
    #[arg(long, default_value_t = 0)]
    pub per_connection: u32,
    /// Do not pipeline commands even when the server offers PIPELINING.
    #[arg(long)]
    pub no_pipelining: bool,
    /// Message size in bytes, or a distribution `SIZE:WEIGHT,SIZE:WEIGHT` (e.g. 1024:0.8,65536:0.2).
    #[arg(long, default_value = "1024", value_parser = parse_size_arg)]
    pub size: SizeDist,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    pub rcpts: u32,
    /// Number of destination domains (`d<i>.<suffix>`; with 1 it is `<suffix>` itself).
    #[arg(long, default_value_t = 1)]
    pub domains: usize,
    /// Suffix of generated domain names.
    #[arg(long, default_value = "example.test")]
    pub domain_suffix: String,
    /// Envelope sender and From: address (its domain picks the DKIM key on a signing MTA).
    #[arg(long, default_value = "load@petrel-load.test")]
    pub mail_from: String,
    /// Domain weights: `uniform`, `zipf`, or a comma list (one weight per domain).
    #[arg(long, default_value = "uniform")]
    pub domain_weights: String,
    /// Require STARTTLS (any certificate accepted).
    #[arg(long)]
    pub starttls: bool,
    /// Offer no TLS session from an earlier connection: every STARTTLS is a full handshake.
    #[arg(long)]
    pub no_tls_resumption: bool,
    /// AUTH PLAIN credentials as USER:PASSWORD.
    #[arg(long)]
    pub auth: Option<String>,
    /// Core threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Bound on each network wait, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub io_timeout_ms: u64,
    /// Allow a target outside loopback.
    #[arg(long)]
    pub allow_non_loopback: bool,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 unless every message was accepted.
    #[arg(long)]
    pub strict: bool,
}

impl InjectArgs {
    /// The injector configuration these arguments describe.
    pub fn to_config(&self) -> Result<InjectConfig, LoadError> {
        let auth = match &self.auth {
            Some(a) => {
                let (u, p) = a
                    .split_once(':')
                    .ok_or_else(|| LoadError::Config("--auth wants USER:PASSWORD".into()))?;
                Some((u.to_string(), p.to_string()))
            }
            None => None,
        };
        Ok(InjectConfig {
            target: self.target,
            connections: self.connections,
            messages: self.messages,
            duration_ms_max: self.duration.as_millis() as u64,
            rate_per_s: self.rate,
            messages_per_connection: self.per_connection,
            pipelining: !self.no_pipelining,
            sizes: self.size.0.clone(),
            rcpts_per_message: self.rcpts,
            domains: make_domains(self.domains, &self.domain_suffix, &self.domain_weights)?,
            starttls: self.starttls,
            tls_resumption: !self.no_tls_resumption,
            auth,
            threads: self.threads,
            io_timeout_ms: self.io_timeout_ms,
            allow_non_loopback: self.allow_non_loopback,
            progress: !self.json,
            mail_from: self.mail_from.clone(),
            ..InjectConfig::default()
        })
    }
}

/// `petrel load sink`: a smart SMTP sink for delivery tests.
#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:2526")]
    pub listen: SocketAddr,
    /// Exit once this many unique messages have arrived.
    #[arg(long)]
    pub expect: Option<u64>,
    /// Exit after this long in any case.
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Core threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// RCPT 450 for DOMAIN (and subdomains) with probability P: `DOMAIN=P`, repeatable.
    #[arg(long, value_parser = parse_domain_fault)]
    pub rcpt_tempfail: Vec<DomainFault>,
    /// RCPT 550 for DOMAIN with probability P: `DOMAIN=P`, repeatable.
    #[arg(long, value_parser = parse_domain_fault)]
    pub rcpt_permfail: Vec<DomainFault>,
    /// End of data answered 451 with this probability.
    #[arg(long, default_value_t = 0.0)]
    pub data_tempfail: f64,
    /// End of data answered 554 with this probability.
    #[arg(long, default_value_t = 0.0)]
    pub data_permfail: f64,
    /// Close the connection in the middle of DATA with this probability.
    #[arg(long, default_value_t = 0.0)]
    pub drop_in_data: f64,
    /// Delay before each batch of replies, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub reply_delay_ms: u64,
    /// Extra delay before the end-of-data reply, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub data_reply_delay_ms: u64,
    /// Do not offer STARTTLS.
    #[arg(long)]
    pub no_starttls: bool,
    /// Issue no TLS tickets and keep no TLS sessions: every handshake is a full one.
    #[arg(long)]
    pub no_tls_resumption: bool,
    /// Do not offer PIPELINING.
    #[arg(long)]
    pub no_pipelining: bool,
    /// Do not offer CHUNKING (BDAT).
    #[arg(long)]
    pub no_chunking: bool,
    /// Accepted AUTH PLAIN credentials USER:PASSWORD (repeatable; none: accept any).
    #[arg(long)]
    pub auth_user: Vec<String>,
    /// Most concurrent connections.
    #[arg(long, default_value_t = 10_000)]
    pub connections_max: u32,
    /// What to do over the limit.
    #[arg(long, value_enum, default_value = "reply421")]
    pub over_limit: OverLimit,
    /// Write each accepted message to DIR as one .eml file.
    #[arg(long)]
    pub store_dir: Option<PathBuf>,
    /// Rewrite PATH with the stats as JSON every 200 ms.
    #[arg(long)]
    pub stats_file: Option<PathBuf>,
    /// Allow listening outside loopback.
    #[arg(long)]
    pub allow_non_loopback: bool,
    /// Seed for the fault dice.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    /// Print the final report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

impl SinkArgs {
    /// The sink configuration these arguments describe.
    pub fn to_config(&self) -> Result<SinkConfig, LoadError> {
        let auth_users = self
            .auth_user
            .iter()
            .map(|a| {
                a.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
                    .ok_or_else(|| LoadError::Config("--auth-user wants USER:PASSWORD".into()))
            })
            .collect::<Result<_, _>>()?;
        Ok(SinkConfig {
            listen: self.listen,
            threads: self.threads,
            rcpt_tempfail: self.rcpt_tempfail.clone(),
            rcpt_permfail: self.rcpt_permfail.clone(),
            data_tempfail: self.data_tempfail,
            data_permfail: self.data_permfail,
            drop_in_data: self.drop_in_data,
            reply_delay_ms: self.reply_delay_ms,
            data_reply_delay_ms: self.data_reply_delay_ms,
            starttls: !self.no_starttls,
            tls_resumption: !self.no_tls_resumption,
            pipelining: !self.no_pipelining,
            chunking: !self.no_chunking,
            auth_users,
            connections_max: self.connections_max,
            over_limit: self.over_limit,
            store_dir: self.store_dir.clone(),
            stats_file: self.stats_file.clone(),
            allow_non_loopback: self.allow_non_loopback,
            seed: self.seed,
            ..SinkConfig::default()
        })
    }
}

/// `petrel load run SCENARIO`: sink + engine + injection, end to end.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Scenario TOML file (see loadtest/scenarios/).
    pub scenario: PathBuf,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Domain names and weights: `d<i>.<suffix>` (or `<suffix>` alone when n == 1).
pub fn make_domains(
    n: usize,
    suffix: &str,
    weights: &str,
) -> Result<Vec<(String, f64)>, LoadError> {
    if n == 0 || n > crate::inject::DOMAINS_MAX {
        return Err(LoadError::Config("--domains must be in 1..=1000000".into()));
    }
    let w: Vec<f64> = match weights {
        "uniform" => vec![1.0; n],
        "zipf" => (1..=n).map(|i| 1.0 / i as f64).collect(),
        list => {
            let w = list
                .split(',')
                .map(|x| x.trim().parse::<f64>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    LoadError::Config("--domain-weights: uniform, zipf or numbers".into())
                })?;
            if w.len() != n {
                return Err(LoadError::Config(format!(
                    "--domain-weights has {} weights for {n} domains",
                    w.len()
                )));
            }
            w
        }
    };
    Ok(w.into_iter()
        .enumerate()
        .map(|(i, w)| {
            (
                if n == 1 {
                    suffix.to_string()
                } else {
                    format!("d{i}.{suffix}")
                },
                w,
            )
        })
        .collect())
}

/// Parses `30`, `30s`, `500ms`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult_ms) = if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e3)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60e3)
    } else if let Some(v) = s.strip_suffix('h') {
        (v, 3600e3)
    } else {
        (s, 1e3)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?}"))?;
    if !(0.0..=1e10).contains(&v) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_millis((v * mult_ms) as u64))
}

/// Message sizes in bytes with weights, as given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeDist(pub Vec<(usize, f64)>);

fn parse_size_arg(s: &str) -> Result<SizeDist, String> {
    parse_weighted_sizes(s).map(SizeDist)
}

/// Parses `1024` or `1024:0.7,65536:0.3`.
pub fn parse_weighted_sizes(s: &str) -> Result<Vec<(usize, f64)>, String> {
    s.split(',')
        .map(|part| {
            let (size, w) = part.split_once(':').unwrap_or((part, "1"));
            let size = size
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("bad size {size:?}"))?;
            let w = w
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("bad weight {w:?}"))?;
            if w < 0.0 {
                return Err("weights must be >= 0".to_string());
            }
            Ok((size, w))
        })
        .collect()
}

/// Parses `DOMAIN=P`.
pub fn parse_domain_fault(s: &str) -> Result<DomainFault, String> {
    let (d, p) = s.split_once('=').ok_or("want DOMAIN=PROBABILITY")?;
    let probability: f64 = p.parse().map_err(|_| format!("bad probability {p:?}"))?;
    if !(0.0..=1.0).contains(&probability) {
        return Err("probability must be within 0..=1".into());
    }
    Ok(DomainFault {
        domain: d.trim().to_ascii_lowercase(),
        probability,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("x").is_err());
        assert_eq!(parse_weighted_sizes("1024").unwrap(), vec![(1024, 1.0)]);
        assert_eq!(
            parse_weighted_sizes("10:0.5,20:1.5").unwrap(),
            vec![(10, 0.5), (20, 1.5)]
        );
        assert_eq!(
            parse_domain_fault("Example.test=0.2").unwrap().domain,
            "example.test"
        );
        assert!(parse_domain_fault("example.test=2").is_err());
        let d = make_domains(3, "example.test", "zipf").unwrap();
        assert_eq!(d[2].0, "d2.example.test");
        assert_eq!(make_domains(1, "x.test", "uniform").unwrap()[0].0, "x.test");
        assert!(make_domains(2, "x.test", "1").is_err());
    }
}
