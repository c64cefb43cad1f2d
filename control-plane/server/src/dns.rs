//! The DNS side of sending domains: which records to publish, and whether they are published.
//!
//! A domain is verified when its DKIM TXT record carries our public key and its SPF record
//! includes our SPF domain. DMARC is reported but only suggested here; the ongoing enforcement
//! (DKIM, SPF and a required DMARC record, re-checked on a schedule) is `crate::domain_auth`.
//! Lookups go to the configured nameservers (tests run one on loopback), never cached, so a fix
//! shows at the next check.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use serde::{Deserialize, Serialize};

use crate::ControlError;

/// One DNS query's time limit.
pub const DNS_QUERY_TIMEOUT_MS: u64 = 3_000;
/// TXT strings read per name (a name with more is not one we published).
pub const TXT_RECORDS_PER_NAME_MAX: usize = 64;
/// MX records read per name.
pub const MX_RECORDS_PER_NAME_MAX: usize = 32;

/// A record the tenant should publish.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DnsRecord {
    /// `dkim`, `spf` or `dmarc`.
    pub purpose: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub name: String,
    pub value: String,
    /// False for suggestions (DMARC).
    pub required: bool,
}

/// The state of one record after a lookup.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    /// Published as expected.
    Found,
    /// No such record.
    Missing,
    /// A record of this kind exists but says something else (another key, no include).
    Mismatch,
    /// The lookup failed (timeout, SERVFAIL): try again later.
    Error,
}

/// One record's check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RecordCheck {
    pub purpose: String,
    pub name: String,
    pub state: RecordState,
}

/// The records for a domain whose signing key is `selector`; `dkim_txt` is the key's
/// `v=DKIM1; k=..; p=..` value.
pub fn records_for(
    domain: &str,
    selector: &str,
    dkim_txt: &str,
    spf_include: &str,
) -> Vec<DnsRecord> {
    vec![
        DnsRecord {
            purpose: "dkim".into(),
            rtype: "TXT".into(),
            name: format!("{selector}._domainkey.{domain}"),
            value: dkim_txt.to_string(),
            required: true,
        },
        DnsRecord {
            purpose: "spf".into(),
            rtype: "TXT".into(),
            name: domain.to_string(),
            value: format!("v=spf1 include:{spf_include} ~all"),
            required: true,
        },
        DnsRecord {
            purpose: "dmarc".into(),
            rtype: "TXT".into(),
            name: format!("_dmarc.{domain}"),
            value: format!("v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"),
            required: false,
        },
    ]
}

/// Looks TXT records up. Cloning shares the resolver.
#[derive(Clone)]
pub struct DnsChecker {
    resolver: Arc<TokioResolver>,
}

impl std::fmt::Debug for DnsChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DnsChecker")
    }
}

impl DnsChecker {
    /// `nameservers` empty: the system's resolver configuration.
    pub fn new(nameservers: &[SocketAddr]) -> Result<DnsChecker, ControlError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if nameservers.is_empty() {
            match TokioResolver::builder(provider.clone()) {
                Ok(b) => b,
                Err(e) => {
                    // Start anyway: verification then reports `error` until DNS is configured.
                    tracing::warn!(error = %e, "no usable system DNS configuration");
                    TokioResolver::builder_with_config(
                        ResolverConfig::from_name_servers(Vec::new()),
                        provider,
                    )
                }
            }
        } else {
            let servers = nameservers
                .iter()
                .map(|sa| {
                    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                    for c in &mut ns.connections {
                        c.port = sa.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = Duration::from_millis(DNS_QUERY_TIMEOUT_MS);
        opts.attempts = 1;
        opts.cache_size = 0;
        // Webhook targets: every address of a name is checked, so ask for both families.
        opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        let resolver = builder
            .build()
            .map_err(|e| ControlError::Config(format!("DNS resolver: {e}")))?;
        Ok(DnsChecker {
            resolver: Arc::new(resolver),
        })
    }

    /// TXT strings at `name` (each record's character-strings joined). Ok(empty) = no record.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.txt_lookup(fqdn.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .take(TXT_RECORDS_PER_NAME_MAX)
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The addresses of `name` (A and AAAA), never cached, so a changed answer shows at once
    /// (webhook delivery re-checks them at every connect). Ok(empty): the name has none.
    pub async fn lookup_ip(&self, name: &str) -> Result<Vec<std::net::IpAddr>, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(lookup) => Ok(lookup.iter().collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The MX exchange names of `name` (lowercase, no trailing dot). Ok(empty): none.
    pub async fn mx(&self, name: &str) -> Result<Vec<String>, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(
                        mx.exchange
                            .to_ascii()
                            .trim_end_matches('.')
                            .to_ascii_lowercase(),
                    ),
                    _ => None,
                })
                .take(MX_RECORDS_PER_NAME_MAX)
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Checks the published records against what we expect.
    pub async fn check(&self, expected: &[DnsRecord], spf_include: &str) -> Vec<RecordCheck> {
        let mut out = Vec::with_capacity(expected.len());
        for rec in expected {
            let state = match self.txt(&rec.name).await {
                Err(_) => RecordState::Error,
                Ok(txts) => judge(rec, &txts, spf_include),
            };
            out.push(RecordCheck {
                purpose: rec.purpose.clone(),
                name: rec.name.clone(),
                state,
            });
        }
        out
    }
}

fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Decides one record's state from the TXT strings found at its name.
pub fn judge(rec: &DnsRecord, txts: &[String], spf_include: &str) -> RecordState {
    let marker = match rec.purpose.as_str() {
        "spf" => "v=spf1",
        "dmarc" => "v=DMARC1",
        _ => "",
    };
    let want_p = squash(&rec.value)
        .split(';')
        .find(|t| t.starts_with("p="))
        .map(str::to_string)
        .unwrap_or_default();
    let include = format!("include:{spf_include}");
    let wanted = |t: &str| match rec.purpose.as_str() {
        "dkim" => squash(t).split(';').any(|tag| tag == want_p),
        "spf" => t
            .split_whitespace()
            .any(|w| w.trim_start_matches('+') == include),
        _ => true,
    };
    let relevant: Vec<&String> = txts
        .iter()
        .filter(|t| marker.is_empty() || t.trim_start().starts_with(marker))
        .collect();
    if relevant.is_empty() {
        RecordState::Missing
    } else if relevant.iter().any(|t| wanted(t)) {
        RecordState::Found
    } else {
        RecordState::Mismatch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_reads_dkim_spf_dmarc() {
        let recs = records_for(
            "ex.test",
            "s1",
            "v=DKIM1; k=ed25519; p=QUJD",
            "spf.petrel.test",
        );
        let dkim = &recs[0];
        assert_eq!(judge(dkim, &[], "x"), RecordState::Missing);
        assert_eq!(
            judge(dkim, &["v=DKIM1; k=ed25519; p=QU JD".into()], "x"),
            RecordState::Found
        );
        assert_eq!(
            judge(dkim, &["v=DKIM1; k=ed25519; p=XYZ".into()], "x"),
            RecordState::Mismatch
        );
        let spf = &recs[1];
        let inc = "spf.petrel.test";
        assert_eq!(
            judge(spf, &["google-site-verification=1".into()], inc),
            RecordState::Missing
        );
        assert_eq!(
            judge(spf, &["v=spf1 include:other -all".into()], inc),
            RecordState::Mismatch
        );
        assert_eq!(
            judge(spf, &["v=spf1 a include:spf.petrel.test ~all".into()], inc),
            RecordState::Found
        );
        assert_eq!(
            judge(&recs[2], &["v=DMARC1; p=reject".into()], inc),
            RecordState::Found
        );
    }
}
