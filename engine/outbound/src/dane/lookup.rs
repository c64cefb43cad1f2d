//! TLSA lookups with DNSSEC validation: a second hickory resolver on the route resolver's DNS
//! thread, validating from a trust anchor (the IANA root keys, or a configured file), with its
//! own cache of validated answers.
//!
//! For one MX host: first its address records (A, else AAAA), which must be secure for DANE to
//! apply (RFC 7672 §2.2.2: an insecure host gets no TLSA lookup, so an unsigned zone's broken
//! `_25._tcp` answers never hold its mail); then `_25._tcp.<host>` TLSA, classified as
//! [`TlsaLookup`]. The route resolver does not validate, and its addresses are the ones used to
//! connect: an attacker who forges them still has to present a certificate that matches.

use std::sync::Arc;

use futures::channel::oneshot;
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::TokioResolver;

use super::{
    DaneConfig, Tlsa, TlsaLookup, DANE_DNS_CACHE_ENTRIES_DEFAULT, DANE_LOOKUPS_IN_FLIGHT_MAX,
    DANE_LOOKUPS_TOTAL, TLSA_DATA_BYTES_MAX, TLSA_RECORDS_MAX,
};
use crate::OutboundError;

/// One request to the DNS thread: the TLSA answer for an MX host (normalised).
pub(crate) struct TlsaRequest {
    pub(crate) host: String,
    pub(crate) reply: oneshot::Sender<TlsaLookup>,
}

/// The validating resolver.
pub(crate) struct DaneDns {
    resolver: TokioResolver,
}

impl DaneDns {
    /// Must be called inside the tokio runtime that will run the lookups.
    pub(crate) fn new(
        cfg: &DaneConfig,
        nameservers: &[std::net::SocketAddr],
        query_timeout_ms: u64,
    ) -> Result<DaneDns, OutboundError> {
        let setup = |e: String| OutboundError::ResolverSetup(format!("DANE resolver: {e}"));
        let anchors = match &cfg.trust_anchor_file {
            Some(path) => TrustAnchors::from_file(path)
                .map_err(|e| setup(format!("trust anchor {}: {e}", path.display())))?,
            None => TrustAnchors::default(),
        };
        let mut builder = crate::resolver::hickory::resolver_builder(nameservers, query_timeout_ms)
            .map_err(setup)?
            .with_trust_anchor(Arc::new(anchors));
        let opts = builder.options_mut();
        opts.validate = true;
        let entries = if cfg.cache_entries == 0 {
            DANE_DNS_CACHE_ENTRIES_DEFAULT
        } else {
            cfg.cache_entries
        };
        opts.cache_size = u64::try_from(entries).unwrap_or(u64::MAX);
        let resolver = builder.build().map_err(|e| setup(e.to_string()))?;
        Ok(DaneDns { resolver })
    }

    /// The TLSA answer for `host` (see the module docs), counted in [`DANE_LOOKUPS_TOTAL`].
    pub(crate) async fn tlsa(&self, host: &str) -> TlsaLookup {
        let answer = self.lookup(host).await;
        metrics::counter!(DANE_LOOKUPS_TOTAL, "result" => answer.label()).increment(1);
        answer
    }

    async fn lookup(&self, host: &str) -> TlsaLookup {
        let name = format!("{host}.");
        let mut address = self.judge(self.resolver.lookup(name.as_str(), RecordType::A).await);
        if matches!(address, Judged::Empty(_)) {
            address = self.judge(self.resolver.lookup(name.as_str(), RecordType::AAAA).await);
        }
        match address {
            Judged::Records(Proof::Secure, _) => {}
            Judged::Records(Proof::Bogus, _) | Judged::Bogus => {
                return TlsaLookup::Bogus {
                    reason: format!("{host}: address records failed DNSSEC validation"),
                }
            }
            Judged::Failed(reason) => {
                return TlsaLookup::Failed {
                    reason: format!("{host}: address lookup: {reason}"),
                }
            }
            // Unsigned, unproven, or no address in the validated view: DANE does not apply.
            _ => return TlsaLookup::Insecure,
        }
        let owner = format!("_25._tcp.{host}.");
        let tlsa = self.resolver.lookup(owner.as_str(), RecordType::TLSA).await;
        match self.judge(tlsa) {
            Judged::Records(Proof::Secure, records) => tlsa_records(&owner, &records),
            Judged::Records(Proof::Bogus, _) | Judged::Bogus => TlsaLookup::Bogus {
                reason: format!("{owner} TLSA failed DNSSEC validation"),
            },
            Judged::Records(Proof::Insecure, _) | Judged::Empty(Proof::Insecure) => {
                TlsaLookup::Insecure
            }
            // Records neither proven secure nor insecure, under addresses proven secure: DANE
            // may be skipped only for a provably insecure answer (RFC 7672 §2.2).
            Judged::Records(_, _) => TlsaLookup::Failed {
                reason: format!("{owner} TLSA records neither proven secure nor insecure"),
            },
            Judged::Empty(Proof::Secure) => TlsaLookup::NoRecords,
            Judged::Empty(Proof::Bogus) => TlsaLookup::Bogus {
                reason: format!("{owner}: denial of existence failed DNSSEC validation"),
            },
            Judged::Empty(_) => TlsaLookup::Failed {
                reason: format!("{owner}: denial of existence not proven"),
            },
            Judged::Failed(reason) => TlsaLookup::Failed {
                reason: format!("{owner}: {reason}"),
            },
        }
    }

    /// One lookup's result in DNSSEC terms.
    fn judge(&self, result: Result<Lookup, NetError>) -> Judged {
        match result {
            Ok(lookup) => {
                let records: Vec<Record> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() != RecordType::RRSIG)
                    .cloned()
                    .collect();
                if records.is_empty() {
                    return Judged::Empty(Proof::Indeterminate);
                }
                Judged::Records(weakest(records.iter().map(|r| r.proof)), records)
            }
            Err(NetError::Dns(HickoryDnsError::DnssecBogus)) => Judged::Bogus,
            Err(NetError::Dns(HickoryDnsError::Nsec { proof, .. })) => Judged::Empty(proof),
            Err(NetError::Dns(HickoryDnsError::NoRecordsFound(nr))) => {
                let proof = nr
                    .authorities
                    .as_deref()
                    .map_or(Proof::Indeterminate, |a| weakest(a.iter().map(|r| r.proof)));
                Judged::Empty(proof)
            }
            Err(NetError::Dns(HickoryDnsError::ResponseCode(code))) => {
                Judged::Failed(format!("response code {code}"))
            }
            Err(e) => Judged::Failed(e.to_string()),
        }
    }
}

/// A lookup's records (or none) with how DNSSEC judged them.
enum Judged {
    /// Records of the asked type, with the weakest proof among them.
    Records(Proof, Vec<Record>),
    /// No records (NXDOMAIN or NODATA), with the proof of the denial.
    Empty(Proof),
    /// Validation failed.
    Bogus,
    /// No answer.
    Failed(String),
}

/// The weakest proof of a set (one bogus record taints an RRset; an empty set proves nothing).
fn weakest(proofs: impl Iterator<Item = Proof>) -> Proof {
    let mut out: Option<Proof> = None;
    for p in proofs {
        out = Some(match (out, p) {
            (_, Proof::Bogus) | (Some(Proof::Bogus), _) => Proof::Bogus,
            (_, Proof::Indeterminate) | (Some(Proof::Indeterminate), _) => Proof::Indeterminate,
            (_, Proof::Insecure) | (Some(Proof::Insecure), _) => Proof::Insecure,
            _ => Proof::Secure,
        });
    }
    out.unwrap_or(Proof::Indeterminate)
}

/// The TLSA records of a secure answer, bounded in count and size (beyond: bogus).
fn tlsa_records(owner: &str, records: &[Record]) -> TlsaLookup {
    let mut out = Vec::new();
    for r in records {
        let RData::TLSA(t) = &r.data else {
            continue;
        };
        if out.len() >= TLSA_RECORDS_MAX || t.cert_data.len() > TLSA_DATA_BYTES_MAX {
            return TlsaLookup::Bogus {
                reason: format!(
                    "{owner}: more than {TLSA_RECORDS_MAX} TLSA records or one over \
                     {TLSA_DATA_BYTES_MAX} bytes"
                ),
            };
        }
        out.push(Tlsa {
            usage: t.cert_usage.into(),
            selector: t.selector.into(),
            matching: t.matching.into(),
            data: t.cert_data.clone(),
        });
    }
    if out.is_empty() {
        return TlsaLookup::NoRecords;
    }
    TlsaLookup::Secure(out.into())
}

/// Serves TLSA requests on the DNS thread until every [`crate::Resolver`] handle is gone, at
/// most [`DANE_LOOKUPS_IN_FLIGHT_MAX`] at once.
pub(crate) async fn serve(dns: Arc<DaneDns>, requests: async_channel::Receiver<TlsaRequest>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(DANE_LOOKUPS_IN_FLIGHT_MAX));
    while let Ok(request) = requests.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return; // never closed
        };
        let dns = dns.clone();
        tokio::spawn(async move {
            let answer = dns.tlsa(&request.host).await;
            let _ = request.reply.send(answer);
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weakest_proof_wins() {
        use Proof::*;
        assert_eq!(weakest([Secure, Secure].into_iter()), Secure);
        assert_eq!(weakest([Secure, Insecure].into_iter()), Insecure);
        assert_eq!(weakest([Insecure, Bogus, Secure].into_iter()), Bogus);
        assert_eq!(weakest([Secure, Indeterminate].into_iter()), Indeterminate);
        assert_eq!(weakest(std::iter::empty()), Indeterminate);
    }
}
