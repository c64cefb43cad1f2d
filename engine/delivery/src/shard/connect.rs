//! Opening a delivery connection: over the route's hosts and addresses in order, each host
//! under DANE when it publishes validated TLSA records (`dane.rs`), every TLS outcome counted
//! for TLS-RPT (`tls_rpt.rs`); and the client configuration of a session's TLS policy.

use std::net::SocketAddr;

use petrel_outbound::{ClientConfig, Route, SmtpConnection};

use super::dane;
use super::outcome::{Attempt, RcptResult};
use super::tls_rpt;
use super::{Inner, SpoolAccess};
use crate::classify::LocalFailure;
use crate::config::{DeliveryConfig, TlsPolicy};

/// An open connection and where it goes.
pub(super) struct Connected {
    pub(super) conn: SmtpConnection,
    pub(super) host: String,
    pub(super) addr: SocketAddr,
    /// "TLSv1.3 TLS13_AES_128_GCM_SHA256" when TLS is in use.
    pub(super) tls: Option<String>,
    /// Transactions sent on this connection.
    pub(super) sent: u32,
    pub(super) _gauge: OpenGauge,
}

/// Keeps `petrel_delivery_connections_open{domain}` right on every path.
pub(super) struct OpenGauge(metrics::Gauge);

impl OpenGauge {
    pub(super) fn new(label: &str) -> OpenGauge {
        let g = metrics::gauge!("petrel_delivery_connections_open", "domain" => label.to_string());
        g.increment(1.0);
        OpenGauge(g)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Why connecting failed: where it last tried and the recipients' result, and the server's
/// refusal when there was one (a `421` at the greeting, for the throttle rules).
pub(super) struct ConnectFailure {
    pub attempt: Attempt,
    pub result: RcptResult,
    pub refusal: Option<petrel_outbound::Reply>,
}

/// Connects to the first address that answers, in route order, trying at most
/// `connect_addresses_max` addresses.
pub(super) async fn connect<S: SpoolAccess>(
    inner: &Inner<S>,
    route: &Route,
    client: &ClientConfig,
    domain: &str,
    label: &str,
) -> Result<Connected, ConnectFailure> {
    let mut tried = 0;
    let report = tls_rpt::session_policy(inner, domain);
    let text = format!("{domain}: no address to connect to");
    let mut last = (
        Attempt::default(),
        RcptResult::local(text, LocalFailure::ConnectFailed),
    );
    let mut refusal = None;
    for host in &route.hosts {
        // DANE (RFC 7672, `dane.rs`): per host, validated TLSA records pin its certificate.
        let plan = match dane::for_host(inner, domain, &host.name, client.tls).await {
            dane::HostTls::Session => None,
            dane::HostTls::Dane(tlsa) => Some(tlsa),
            dane::HostTls::Refuse { failure, reason } => {
                tls_rpt::record_dane_refusal(inner, report.as_ref(), domain, &host.name, failure);
                let attempt = Attempt {
                    host: Some(host.name.clone()),
                    ..Attempt::default()
                };
                last = (
                    attempt,
                    dane::deferral(domain, &host.name, failure, &reason),
                );
                continue;
            }
        };
        for addr in &host.addrs {
            if client
                .source_addr
                .is_some_and(|s| s.is_ipv4() != addr.is_ipv4())
            {
                continue; // a bound source reaches only its own address family
            }
            if tried >= inner.cfg.connect_addresses_max {
                return Err(ConnectFailure {
                    attempt: last.0,
                    result: last.1,
                    refusal,
                });
            }
            tried += 1;
            let result = dane::connect(*addr, &host.name, client, domain, plan.as_ref()).await;
            let seen = result.as_ref();
            tls_rpt::record_connect(
                inner,
                report.as_ref(),
                plan.as_ref(),
                client.tls,
                domain,
                &host.name,
                *addr,
                seen,
            );
            match result {
                Ok(conn) => {
                    let tls = conn.tls().map(|t| format!("{} {}", t.version, t.cipher));
                    return Ok(Connected {
                        conn,
                        host: host.name.clone(),
                        addr: *addr,
                        tls,
                        sent: 0,
                        _gauge: OpenGauge::new(label),
                    });
                }
                Err(e) => {
                    if let petrel_outbound::ClientError::Rejected { reply, .. } = &e {
                        refusal = Some(reply.clone());
                    }
                    let attempt = Attempt {
                        host: Some(host.name.clone()),
                        addr: Some(*addr),
                        tls: None,
                        remote: false,
                        no_dsn: false,
                        next_hop_dsn: false,
                    };
                    let classifier = &inner.cfg.bounce_classifier;
                    let result =
                        dane::connect_failed(domain, &host.name, plan.as_ref(), &e, classifier);
                    last = (attempt, result);
                }
            }
        }
    }
    Err(ConnectFailure {
        attempt: last.0,
        result: last.1,
        refusal,
    })
}

/// The client configuration of a site's connections: its TLS policy, and its egress source's
/// address and EHLO name (`crate::egress`).
pub(super) fn client_config(
    cfg: &DeliveryConfig,
    tls: TlsPolicy,
    source: Option<&crate::egress::Source>,
) -> ClientConfig {
    ClientConfig {
        helo_name: source
            .map_or(cfg.helo_name.as_str(), |s| s.ehlo(&cfg.helo_name))
            .to_string(),
        source_addr: source.and_then(|s| s.local_addr),
        tls: tls.mode(),
        extra_root_certs_pem: cfg.extra_root_certs_pem.clone(),
        connect_timeout_ms: cfg.client.connect_timeout_ms,
        greeting_timeout_ms: cfg.client.greeting_timeout_ms,
        command_timeout_ms: cfg.client.command_timeout_ms,
        data_block_timeout_ms: cfg.client.data_block_timeout_ms,
        data_done_timeout_ms: cfg.client.data_done_timeout_ms,
    }
}
