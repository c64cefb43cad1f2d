//! Which RFC 8460 result a connection attempt's failure is (pure).
//!
//! The outbound client reports a failed handshake as text (`ClientError::Tls` and
//! `ClientError::TlsRequired` carry rustls's message), so the certificate problems are told
//! apart by the names rustls prints; the tests build those messages from rustls's own error
//! values, so a rustls that words them differently fails here, not in a report.

use petrel_outbound::{ClientError, Stage};

use super::{FailureType, SessionResult};

/// The TLS-RPT result of a failed connection attempt; `None` when it failed before TLS was
/// tried (TCP connect, greeting, EHLO), which a report does not count.
pub fn classify(e: &ClientError) -> Option<SessionResult> {
    let failure = match e {
        ClientError::TlsRequired { reason } => certificate_failure(reason).unwrap_or(
            // "does not offer STARTTLS" or "STARTTLS refused: ...".
            FailureType::StarttlsNotSupported,
        ),
        ClientError::Tls { reason } => {
            certificate_failure(reason).unwrap_or(FailureType::ValidationFailure)
        }
        ClientError::Timeout { stage }
        | ClientError::Dropped { stage }
        | ClientError::Protocol { stage, .. }
            if matches!(stage, Stage::StartTls | Stage::TlsHandshake) =>
        {
            FailureType::ValidationFailure
        }
        ClientError::Rejected {
            stage: Stage::StartTls,
            ..
        } => FailureType::StarttlsNotSupported,
        _ => return None,
    };
    Some(SessionResult::Failure(failure))
}

/// The result of a connection that ended up without TLS although TLS was wanted: the server
/// did not offer STARTTLS or refused it (opportunistic TLS carries on in plain text).
pub fn plaintext_result() -> SessionResult {
    SessionResult::Failure(FailureType::StarttlsNotSupported)
}

/// The certificate problem a handshake error names, if any.
fn certificate_failure(reason: &str) -> Option<FailureType> {
    let (_, cert) = reason.split_once("invalid peer certificate: ")?;
    let named = |names: &[&str]| names.iter().any(|n| cert.starts_with(n));
    Some(
        if named(&["certificate not valid for name", "NotValidForName"]) {
            FailureType::CertificateHostMismatch
        } else if named(&["certificate expired", "Expired"]) {
            FailureType::CertificateExpired
        } else if named(&[
            "UnknownIssuer",
            "BadSignature",
            "Revoked",
            "UnknownRevocationStatus",
        ]) {
            FailureType::CertificateNotTrusted
        } else {
            FailureType::ValidationFailure
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError;
    use rustls_pki_types::{ServerName, UnixTime};

    /// The reason text the client makes of a handshake failure (`e.to_string()` of the
    /// `io::Error` rustls's stream returns).
    fn reason(e: CertificateError) -> String {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(e),
        )
        .to_string()
    }

    fn failure(e: &ClientError) -> Option<FailureType> {
        match classify(e) {
            Some(SessionResult::Failure(f)) => Some(f),
            _ => None,
        }
    }

    #[test]
    fn certificate_problems_get_their_rfc_types() {
        let t = UnixTime::since_unix_epoch(std::time::Duration::from_secs(2_000_000_000));
        let cases = [
            (
                CertificateError::NotValidForNameContext {
                    expected: ServerName::try_from("mx.a.test").unwrap(),
                    presented: vec!["other.test".into()],
                },
                FailureType::CertificateHostMismatch,
            ),
            (
                CertificateError::NotValidForName,
                FailureType::CertificateHostMismatch,
            ),
            (
                CertificateError::ExpiredContext {
                    time: t,
                    not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1)),
                },
                FailureType::CertificateExpired,
            ),
            (CertificateError::Expired, FailureType::CertificateExpired),
            (
                CertificateError::UnknownIssuer,
                FailureType::CertificateNotTrusted,
            ),
            (
                CertificateError::BadEncoding,
                FailureType::ValidationFailure,
            ),
        ];
        for (e, want) in cases {
            let text = reason(e);
            for err in [
                ClientError::TlsRequired {
                    reason: text.clone(),
                },
                ClientError::Tls {
                    reason: text.clone(),
                },
            ] {
                assert_eq!(failure(&err), Some(want), "{text}");
            }
        }
    }

    #[test]
    fn starttls_missing_or_refused_and_handshake_failures() {
        let missing = ClientError::TlsRequired {
            reason: "mx.a.test does not offer STARTTLS".into(),
        };
        assert_eq!(failure(&missing), Some(FailureType::StarttlsNotSupported));
        let handshake = ClientError::Tls {
            reason: "received corrupt message".into(),
        };
        assert_eq!(failure(&handshake), Some(FailureType::ValidationFailure));
        let timeout = ClientError::Timeout {
            stage: Stage::TlsHandshake,
        };
        assert_eq!(failure(&timeout), Some(FailureType::ValidationFailure));
    }

    #[test]
    fn failures_before_tls_are_not_counted() {
        let refused = ClientError::Connect {
            addr: "192.0.2.1:25".parse().unwrap(),
            kind: std::io::ErrorKind::ConnectionRefused,
            reason: "refused".into(),
        };
        assert_eq!(classify(&refused), None);
        assert_eq!(
            classify(&ClientError::Timeout {
                stage: Stage::Greeting
            }),
            None
        );
    }
}
