//! The DNS half of policy discovery, on the MTA-STS thread's tokio runtime: the
//! `_mta-sts.<domain>` TXT record and the addresses of `mta-sts.<domain>`.
//!
//! A hickory resolver of its own, configured like the route resolver (same name servers, same
//! query timeout), because the route resolver's [`crate::Dns`] answers MX and addresses only
//! and runs on another thread. Unlike the route resolver it keeps hickory's record cache
//! (bounded by `MtaStsConfig::dns_cache_entries`), since the TXT record is asked before every
//! use of a policy and is cached by nothing else.

use std::net::IpAddr;

use hickory_resolver::config::{LookupIpStrategy, ResolverOpts};
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use super::fetch::MTA_STS_ADDRS_TRIED_MAX;
use super::policy::{PolicyError, StsRecord};
use super::{MtaStsConfig, MtaStsError};

/// TXT records considered at `_mta-sts.<domain>`; more are ignored (a domain has one or two).
const TXT_RECORDS_MAX: usize = 16;

/// Why no MTA-STS record is usable right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// No record, or not exactly one valid one: the domain has no policy to discover.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// DNS failed (SERVFAIL, timeout).
    #[error("DNS: {0}")]
    Dns(String),
}

pub(super) struct StsDns {
    resolver: TokioResolver,
}

impl StsDns {
    /// Must be called inside the runtime that will run the lookups.
    pub(super) fn new(cfg: &MtaStsConfig) -> Result<StsDns, MtaStsError> {
        let setup = |e: String| MtaStsError::Setup { reason: e };
        let mut builder =
            crate::resolver::hickory::resolver_builder(&cfg.nameservers, cfg.query_timeout_ms)
                .map_err(setup)?;
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.cache_size = cfg.dns_cache_entries as u64;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let resolver = builder
            .build()
            .map_err(|e| setup(format!("hickory resolver: {e}")))?;
        Ok(StsDns { resolver })
    }

    /// The one valid MTA-STS record of `domain` (RFC 8461 §3.1).
    pub(super) async fn record(&self, domain: &str) -> Result<StsRecord, RecordError> {
        let name = format!("_mta-sts.{domain}.");
        let lookup = match self.resolver.txt_lookup(name).await {
            Ok(lookup) => lookup,
            Err(NetError::Dns(HickoryDnsError::NoRecordsFound(_))) => {
                return Err(PolicyError::NoRecord.into())
            }
            Err(e) => return Err(RecordError::Dns(e.to_string())),
        };
        let records: Vec<Vec<u8>> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(txt.txt_data.concat()),
                _ => None,
            })
            .take(TXT_RECORDS_MAX)
            .collect();
        Ok(StsRecord::from_txt(&records)?)
    }

    /// Addresses of `host`, at most [`MTA_STS_ADDRS_TRIED_MAX`].
    pub(super) async fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let lookup = self
            .resolver
            .lookup_ip(format!("{host}."))
            .await
            .map_err(|e| e.to_string())?;
        Ok(lookup.iter().take(MTA_STS_ADDRS_TRIED_MAX).collect())
    }
}
