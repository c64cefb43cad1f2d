//! Delivering one report to the URIs of its domain's TLS-RPT record (RFC 8460 §5): an HTTPS
//! POST, or a mail submitted to an engine listener, which DKIM-signs it.

use std::time::Duration;

use super::report::{self, DayRow, Reporter};
use super::rua::{self, Rua};
use super::{retry_delay_ms, ReportState, TlsRptSettings, REPORT_ATTEMPTS_MAX};
use crate::api::App;
use crate::store::tls_rpt::ReportRow;

/// The SMTP submission's time bound (connect, each command, the message), ms.
pub const SUBMIT_TIMEOUT_MS: u64 = 30_000;
/// Longest error text kept in a report's state, bytes.
pub const ERROR_TEXT_MAX_BYTES: usize = 512;
/// The media type of a gzipped report (RFC 8460 §6.5).
pub const TLSRPT_GZIP: &str = "application/tlsrpt+gzip";

/// Why one URI was not reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    #[error("https: {0}")]
    Https(String),
    #[error("mail: {0}")]
    Mail(String),
    #[error("mailto URI, but no --tls-rpt-submit-to listener is configured")]
    NoSubmitListener,
    #[error("report not built: {0}")]
    Build(std::io::Error),
}

/// Sends the report of `state`'s day and domain to every URI not reached yet, and updates
/// `state`: sent, no record, or pending with the next attempt (failed after the last).
pub async fn deliver(app: &App, settings: &TlsRptSettings, state: &mut ReportRow, rows: &[DayRow]) {
    let now = app.now_ms();
    let domain = state.policy_domain.clone();
    let uris = match app.dns.txt(&format!("_smtp._tls.{domain}")).await {
        Ok(txts) => rua::parse(&txts),
        Err(e) => {
            // The lookup failed (not "no record"): try again later.
            retry(state, &format!("DNS: {e}"), now);
            return;
        }
    };
    let uris = match uris {
        Ok(u) => u,
        // No record, or none usable: the domain asks for no report (final).
        Err(e) => {
            state.state = ReportState::NoRua.as_str().into();
            state.last_error = Some(e.to_string());
            return;
        }
    };
    let reporter = Reporter {
        organization: settings.organization.clone(),
        contact: settings.contact.clone(),
        submitter: settings.submitter.clone(),
    };
    let json = report::build(&reporter, &domain, state.day, rows);
    let gz = match report::gzip(&json) {
        Ok(gz) => gz,
        Err(e) => {
            retry(state, &SendError::Build(e).to_string(), now);
            return;
        }
    };
    let todo: Vec<Rua> = uris
        .into_iter()
        .filter(|u| !state.done_uris.contains(&u.uri()))
        .collect();
    let mut errors = Vec::new();
    for uri in &todo {
        let sent = match uri {
            Rua::Https(url) => post(app, url, &gz).await,
            Rua::Mailto(to) => mail(settings, &reporter, to, &domain, state.day, &gz, now).await,
        };
        match sent {
            Ok(()) => {
                tracing::info!(%domain, uri = %uri.uri(), report_id = %state.report_id, "TLS-RPT report sent");
                state.done_uris.push(uri.uri());
            }
            Err(e) => {
                tracing::warn!(%domain, uri = %uri.uri(), error = %e, "TLS-RPT report not sent");
                errors.push(format!("{}: {e}", uri.uri()));
            }
        }
    }
    if errors.is_empty() {
        state.state = ReportState::Sent.as_str().into();
        state.last_error = None;
    } else {
        retry(state, &errors.join("; "), now);
    }
}

/// Counts a failed attempt: pending with the next attempt, or failed after the last.
fn retry(state: &mut ReportRow, error: &str, now: i64) {
    state.attempts += 1;
    state.last_error = Some(clip(error));
    if state.attempts >= REPORT_ATTEMPTS_MAX {
        state.state = ReportState::Failed.as_str().into();
    } else {
        state.state = ReportState::Pending.as_str().into();
        state.next_attempt_unix_ms = now.saturating_add(retry_delay_ms(state.attempts - 1));
    }
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(ERROR_TEXT_MAX_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// RFC 8460 §5.2: one POST of the gzipped report.
async fn post(app: &App, url: &str, gz: &[u8]) -> Result<(), SendError> {
    let headers = [("content-type", TLSRPT_GZIP.to_string())];
    let outcome = app.webhooks.client.post(url, &headers, gz.to_vec()).await;
    if outcome.ok() {
        Ok(())
    } else {
        Err(SendError::Https(outcome.error.unwrap_or_default()))
    }
}

/// RFC 8460 §5.3: the report as a mail, submitted to the configured engine listener.
async fn mail(
    settings: &TlsRptSettings,
    reporter: &Reporter,
    to: &str,
    domain: &str,
    day: i64,
    gz: &[u8],
    now_unix_ms: i64,
) -> Result<(), SendError> {
    let listener = settings.submit_to.ok_or(SendError::NoSubmitListener)?;
    let date = time::OffsetDateTime::from_unix_timestamp(now_unix_ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_default();
    let message = report::mail(reporter, &settings.from, to, domain, day, gz, &date);
    let from: lettre::Address = settings
        .from
        .parse()
        .map_err(|e| SendError::Mail(format!("from {:?}: {e}", settings.from)))?;
    let rcpt: lettre::Address = to
        .parse()
        .map_err(|e| SendError::Mail(format!("to {to:?}: {e}")))?;
    let envelope = lettre::address::Envelope::new(Some(from), vec![rcpt])
        .map_err(|e| SendError::Mail(e.to_string()))?;
    let submitted = tokio::task::spawn_blocking(move || {
        use lettre::Transport;
        let transport = lettre::SmtpTransport::builder_dangerous(listener.ip().to_string())
            .port(listener.port())
            .timeout(Some(Duration::from_millis(SUBMIT_TIMEOUT_MS)))
            .build();
        transport.send_raw(&envelope, &message).map(|_| ())
    })
    .await;
    match submitted {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SendError::Mail(e.to_string())),
        Err(e) => Err(SendError::Mail(e.to_string())),
    }
}
