//! `[acme]`: the SMTP certificate obtained and renewed by ACME (RFC 8555; `crate::acme`).
//!
//! ACME is on when `directory_url` is set. It and `smtp.tls_cert_path` are exclusive: ACME
//! writes its own pair under `state_dir` and the TLS resolver reads it from there, so an
//! operator's files are never overwritten and one source is in force at a time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Names in one order, at most (Let's Encrypt's limit of names per certificate).
pub const ACME_DOMAINS_MAX: usize = 100;
/// The longest `acme.contact`, in bytes.
pub const ACME_CONTACT_BYTES_MAX: usize = 254;
/// The largest `acme.renew_before_days`.
pub const ACME_RENEW_BEFORE_DAYS_MAX: u32 = 365;
/// The longest name, in bytes (RFC 1035 §2.3.4).
const DOMAIN_BYTES_MAX: usize = 253;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeSection {
    /// The CA's ACME directory (`https://acme-v02.api.letsencrypt.org/directory` for Let's
    /// Encrypt). Unset: no ACME (default).
    pub directory_url: Option<String>,
    /// `mailto:` address the CA may write to about the account (expiry, incidents).
    pub contact: Option<String>,
    /// The names the certificate covers; empty: `server.hostname` alone (default).
    pub domains: Vec<String>,
    /// Where the engine's own HTTP-01 responder listens (default `127.0.0.1:9466`). The CA
    /// validates on port 80 of each name: listen on `0.0.0.0:80`, or forward
    /// `/.well-known/acme-challenge/` there.
    pub http01_listen: SocketAddr,
    /// A PEM file of roots trusted for the directory's own HTTPS, besides the web PKI (a test
    /// CA such as pebble's; a private CA).
    pub ca_file: Option<PathBuf>,
    /// Renew when fewer days than this remain (default 30), or a third of the certificate's
    /// lifetime for shorter-lived certificates.
    pub renew_before_days: u32,
    /// The account key (owner-only), the issued chain and its key. Default `<data_dir>/acme`.
    pub state_dir: Option<PathBuf>,
}

impl Default for AcmeSection {
    fn default() -> Self {
        AcmeSection {
            directory_url: None,
            contact: None,
            domains: Vec::new(),
            http01_listen: "127.0.0.1:9466".parse().expect("static address"),
            ca_file: None,
            renew_before_days: 30,
            state_dir: None,
        }
    }
}

impl AcmeSection {
    pub fn enabled(&self) -> bool {
        self.directory_url.is_some()
    }

    /// The names to order: `domains`, or the engine's hostname.
    pub fn names(&self, hostname: &str) -> Vec<String> {
        if self.domains.is_empty() {
            vec![hostname.to_ascii_lowercase()]
        } else {
            self.domains
                .iter()
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .collect()
        }
    }

    /// What `crate::acme::start` needs; None when ACME is off.
    pub fn settings(&self, hostname: &str, data_dir: &Path) -> Option<crate::acme::Settings> {
        Some(crate::acme::Settings {
            directory_url: self.directory_url.clone()?,
            contact: self.contact.clone(),
            names: self.names(hostname),
            http01_listen: self.http01_listen,
            ca_file: self.ca_file.clone(),
            renew_before_days: self.renew_before_days,
            state_dir: self.state_dir(data_dir),
        })
    }

    /// `state_dir`, or `<data_dir>/acme`.
    pub fn state_dir(&self, data_dir: &Path) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("acme"))
    }

    /// The checks serde cannot make: `Err((key, why))`.
    pub fn check(
        &self,
        hostname: &str,
        tls_cert_configured: bool,
    ) -> Result<(), (&'static str, String)> {
        let Some(url) = &self.directory_url else {
            return Ok(());
        };
        if !url.starts_with("https://") || url.len() <= "https://".len() {
            return Err(("acme.directory_url", "must be an https:// URL".into()));
        }
        if tls_cert_configured {
            return Err((
                "acme.directory_url",
                "ACME and smtp.tls_cert_path are exclusive: ACME keeps its own pair in \
                 acme.state_dir"
                    .into(),
            ));
        }
        if let Some(c) = &self.contact {
            let ok = c.len() <= ACME_CONTACT_BYTES_MAX
                && c.strip_prefix("mailto:")
                    .and_then(|a| a.rsplit_once('@'))
                    .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
                && !c.contains(|ch: char| ch.is_whitespace() || ch == ',');
            if !ok {
                return Err((
                    "acme.contact",
                    format!("{c:?} is not one address like mailto:ops@example.com"),
                ));
            }
        }
        let names = self.names(hostname);
        if names.len() > ACME_DOMAINS_MAX {
            return Err(("acme.domains", format!("at most {ACME_DOMAINS_MAX} names")));
        }
        for n in &names {
            if !is_dns_name(n) {
                return Err((
                    "acme.domains",
                    format!("{n:?} is not a DNS name (HTTP-01 has no wildcards or addresses)"),
                ));
            }
        }
        if !(1..=ACME_RENEW_BEFORE_DAYS_MAX).contains(&self.renew_before_days) {
            return Err((
                "acme.renew_before_days",
                format!("must be 1 to {ACME_RENEW_BEFORE_DAYS_MAX}"),
            ));
        }
        Ok(())
    }
}

/// A name with at least two labels of letters, digits and inner hyphens (no wildcard, no
/// address).
fn is_dns_name(n: &str) -> bool {
    let labels: Vec<&str> = n.split('.').collect();
    n.len() <= DOMAIN_BYTES_MAX
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !labels
            .last()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
}
