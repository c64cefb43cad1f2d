//! The `[tls_rpt]` settings as `petrel control serve` flags (the control plane is configured
//! by flags; `docs/tls-rpt.md` lists them).

use std::net::SocketAddr;

use super::{TlsRptSettings, SEND_HOUR_UTC_DEFAULT};
use crate::ControlError;

/// Outbound TLS-RPT reports (RFC 8460): `--tls-rpt-*`.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsRptArgs {
    /// Send each day's TLS-RPT reports from --tls-rpt-send-hour on (counts are stored either
    /// way; `POST /v1/tls-rpt/send` sends a day on demand once --tls-rpt-submitter is set).
    #[arg(long)]
    pub tls_rpt_enabled: bool,
    /// The reporting organization's domain (`TLS-Report-Submitter`, the report ids and file
    /// names). Given: reports can be sent.
    #[arg(long)]
    pub tls_rpt_submitter: Option<String>,
    /// The report's `organization-name` (default: the submitter).
    #[arg(long)]
    pub tls_rpt_organization: Option<String>,
    /// The report's `contact-info`, an address or URL (default: the From address).
    #[arg(long)]
    pub tls_rpt_contact: Option<String>,
    /// The From address of mailed reports; its domain needs a DKIM key in a tenant, so the
    /// engine signs them (default: `tls-reports@<submitter>`).
    #[arg(long)]
    pub tls_rpt_from: Option<String>,
    /// The engine listener (host:port) mailed reports are submitted to; it must relay for the
    /// control plane's address and sign for the From domain (`[[smtp.trusted_network_domains]]`).
    /// Default: none (`mailto:` report URIs are skipped).
    #[arg(long)]
    pub tls_rpt_submit_to: Option<SocketAddr>,
    /// The UTC hour (0..=23) from which the previous days' reports are sent.
    #[arg(long, default_value_t = SEND_HOUR_UTC_DEFAULT,
          value_parser = clap::value_parser!(u8).range(0..=23))]
    pub tls_rpt_send_hour: u8,
}

impl TlsRptArgs {
    /// The settings; `None` without a submitter.
    pub fn settings(&self) -> Result<Option<TlsRptSettings>, ControlError> {
        let Some(submitter) = self.tls_rpt_submitter.as_deref() else {
            if self.tls_rpt_enabled {
                return Err(ControlError::Config(
                    "--tls-rpt-enabled needs --tls-rpt-submitter".into(),
                ));
            }
            return Ok(None);
        };
        let submitter = submitter.trim().trim_end_matches('.').to_ascii_lowercase();
        if submitter.is_empty() || !submitter.contains('.') {
            return Err(ControlError::Config(format!(
                "--tls-rpt-submitter {submitter:?} is not a domain"
            )));
        }
        let from = self
            .tls_rpt_from
            .clone()
            .unwrap_or_else(|| format!("tls-reports@{submitter}"));
        if from.parse::<lettre::Address>().is_err() {
            return Err(ControlError::Config(format!(
                "--tls-rpt-from {from:?} is not an address"
            )));
        }
        Ok(Some(TlsRptSettings {
            enabled: self.tls_rpt_enabled,
            organization: self
                .tls_rpt_organization
                .clone()
                .unwrap_or_else(|| submitter.clone()),
            contact: self.tls_rpt_contact.clone().unwrap_or_else(|| from.clone()),
            submitter,
            from,
            submit_to: self.tls_rpt_submit_to,
            send_hour_utc: self.tls_rpt_send_hour,
        }))
    }
}
