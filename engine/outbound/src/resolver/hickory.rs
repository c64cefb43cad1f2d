//! The production [`Dns`]: hickory's resolver on the DNS thread's tokio runtime.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig as HickoryConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{ResolverBuilder, TokioResolver};

use super::route::{Dns, DnsError, IpAnswer, MxAnswer, MxRecord};
use super::ResolverConfig;
use crate::OutboundError;

/// Tries per query (the first plus retries), each bounded by `query_timeout_ms`.
const QUERY_ATTEMPTS: usize = 2;

/// A resolver builder on `nameservers` (UDP and TCP, each on its own port; the system's when
/// empty), `query_timeout_ms` per try, `QUERY_ATTEMPTS` tries, names taken as absolute (also
/// the MTA-STS lookups', `crate::mta_sts::dns`).
pub fn resolver_builder(
    nameservers: &[SocketAddr],
    query_timeout_ms: u64,
) -> Result<ResolverBuilder<TokioRuntimeProvider>, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| format!("system DNS config: {e}"))?
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(HickoryConfig::from_name_servers(servers), provider)
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = Duration::from_millis(query_timeout_ms.max(1));
    opts.attempts = QUERY_ATTEMPTS;
    opts.ndots = 0;
    Ok(builder)
}

/// hickory-backed DNS. hickory's own cache is off: [`super::RouteLogic`] caches whole routes and
/// two caches in a row would keep answers up to twice their TTL.
pub(super) struct HickoryDns {
    resolver: TokioResolver,
}

impl HickoryDns {
    /// Must be called inside the tokio runtime that will run the lookups.
    pub(super) fn new(cfg: &ResolverConfig) -> Result<HickoryDns, OutboundError> {
        let mut builder = resolver_builder(&cfg.nameservers, cfg.query_timeout_ms)
            .map_err(OutboundError::ResolverSetup)?;
        builder.options_mut().cache_size = 0;
        let resolver = builder
            .build()
            .map_err(|e| OutboundError::ResolverSetup(format!("hickory resolver: {e}")))?;
        Ok(HickoryDns { resolver })
    }
}

/// A lookup's outcome before record-type specifics: records, NODATA, or an error.
enum Outcome {
    Found(Lookup),
    NoData { negative_ttl_secs: Option<u32> },
}

fn classify(result: Result<Lookup, NetError>) -> Result<Outcome, DnsError> {
    match result {
        Ok(lookup) => Ok(Outcome::Found(lookup)),
        Err(NetError::Dns(HickoryDnsError::NoRecordsFound(nr))) => {
            if nr.response_code == ResponseCode::NXDomain {
                Err(DnsError::NxDomain {
                    negative_ttl_secs: nr.negative_ttl,
                })
            } else {
                Ok(Outcome::NoData {
                    negative_ttl_secs: nr.negative_ttl,
                })
            }
        }
        Err(e) => Err(DnsError::Temporary(e.to_string())),
    }
}

fn fqdn(name: &str) -> String {
    format!("{name}.")
}

impl Dns for HickoryDns {
    async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        let lookup = match classify(self.resolver.mx_lookup(fqdn(domain)).await)? {
            Outcome::Found(l) => l,
            Outcome::NoData { negative_ttl_secs } => {
                return Ok(MxAnswer {
                    records: Vec::new(),
                    ttl_secs: negative_ttl_secs,
                })
            }
        };
        let mut ttl_secs: Option<u32> = None;
        let mut records = Vec::new();
        for record in lookup.answers() {
            if let RData::MX(mx) = &record.data {
                ttl_secs = Some(ttl_secs.map_or(record.ttl, |t| t.min(record.ttl)));
                let exchange = super::normalise(&mx.exchange.to_ascii());
                records.push(MxRecord {
                    preference: mx.preference,
                    exchange,
                });
            }
        }
        Ok(MxAnswer { records, ttl_secs })
    }

    async fn ip(&self, host: &str) -> Result<IpAnswer, DnsError> {
        let name = fqdn(host);
        let (v4, v6) = futures::join!(
            self.resolver.ipv4_lookup(name.as_str()),
            self.resolver.ipv6_lookup(name.as_str())
        );
        let (v4, v6) = (classify(v4), classify(v6));
        let mut addrs = Vec::new();
        let mut ttl_secs: Option<u32> = None;
        let mut negative: Option<u32> = None;
        let mut temporary = None;
        let mut nxdomain = true;
        for outcome in [v4, v6] {
            match outcome {
                Ok(Outcome::Found(lookup)) => {
                    nxdomain = false;
                    for record in lookup.answers() {
                        let ip = match &record.data {
                            RData::A(a) => IpAddr::V4(a.0),
                            RData::AAAA(a) => IpAddr::V6(a.0),
                            _ => continue,
                        };
                        ttl_secs = Some(ttl_secs.map_or(record.ttl, |t| t.min(record.ttl)));
                        addrs.push(ip);
                    }
                }
                Ok(Outcome::NoData { negative_ttl_secs }) => {
                    nxdomain = false;
                    negative = negative.or(negative_ttl_secs);
                }
                Err(DnsError::NxDomain { negative_ttl_secs }) => {
                    negative = negative.or(negative_ttl_secs);
                }
                Err(DnsError::Temporary(reason)) => {
                    nxdomain = false;
                    temporary = Some(reason);
                }
            }
        }
        if !addrs.is_empty() {
            return Ok(IpAnswer { addrs, ttl_secs });
        }
        if let Some(reason) = temporary {
            return Err(DnsError::Temporary(reason));
        }
        if nxdomain {
            return Err(DnsError::NxDomain {
                negative_ttl_secs: negative,
            });
        }
        Ok(IpAnswer {
            addrs,
            ttl_secs: negative,
        })
    }
}
