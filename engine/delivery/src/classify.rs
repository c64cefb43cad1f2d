//! Bounce classification of attempt outcomes: `petrel-outbound`'s replies and errors in the
//! terms of `petrel-bounce`.
//!
//! `petrel-bounce` is pure and depends on no other Petrel crate (the control plane uses it
//! too), so the mapping from the outbound client's types lives here, on the side that has
//! both. It follows the table in `petrel_bounce::LocalFailure`'s module docs. A remote reply is
//! classified from the parsed [`petrel_outbound::Reply`] the client already holds (code,
//! enhanced code, text), never re-parsed from its display string; nothing is allocated.
//!
//! Which outcome carries what:
//! * `deferred` and `bounced` events: the classification of that attempt's reply or failure.
//! * `expired` events: the classification of the last attempt (the one after which the
//!   message was too old to retry); it is at hand, so it costs nothing.
//! * `delivered` events: none.
//! * A bounce by the administrator (no attempt at all): [`ADMINISTRATOR_BOUNCE`].

use petrel_bounce::{BounceClass, BounceClassifier, Category, Classification, DnsFailure};
use petrel_outbound::{ClientError, ResolveError};

pub use petrel_bounce::LocalFailure;

/// The classification of a recipient bounced by the administrator: no receiver said anything,
/// so the catch-all category, and hard because the recipient is final.
pub const ADMINISTRATOR_BOUNCE: Classification = Classification {
    category: Category::Other,
    class: BounceClass::Hard,
};

/// Classifies a remote reply from its parsed parts.
pub fn classify_reply(
    classifier: &BounceClassifier,
    reply: &petrel_outbound::Reply,
) -> Classification {
    classifier.classify_reply(&petrel_bounce::Reply::new(
        reply.code,
        reply.enhanced,
        &reply.text,
    ))
}

/// Classifies a failed connection or dialogue; a refusal at the greeting, EHLO or STARTTLS
/// carries a reply and goes through the rules.
pub fn classify_client_error(classifier: &BounceClassifier, e: &ClientError) -> Classification {
    match e {
        ClientError::Rejected { reply, .. } => classify_reply(classifier, reply),
        other => local_failure_of_client(other).classification(),
    }
}

/// The local failure a client error stands for (for [`ClientError::Rejected`], which has a
/// reply, [`LocalFailure::Protocol`]; use [`classify_client_error`] to classify it).
pub fn local_failure_of_client(e: &ClientError) -> LocalFailure {
    match e {
        ClientError::Connect { kind, .. } => match LocalFailure::from_io_kind(*kind) {
            LocalFailure::ConnectionRefused => LocalFailure::ConnectionRefused,
            _ => LocalFailure::ConnectFailed,
        },
        ClientError::Timeout { .. } => LocalFailure::Timeout,
        ClientError::Dropped { .. } => LocalFailure::ConnectionDropped,
        ClientError::Io(io) => LocalFailure::from_io_kind(io.kind()),
        ClientError::TlsRequired { .. } => LocalFailure::TlsRequired,
        ClientError::Tls { .. } => LocalFailure::TlsHandshake,
        ClientError::Protocol { .. } | ClientError::Rejected { .. } => LocalFailure::Protocol,
        // `ClientError` is non-exhaustive: a failure added later is retried like any other.
        _ => LocalFailure::Io,
    }
}

/// The local failure a resolution error stands for.
pub fn local_failure_of_resolve(e: &ResolveError) -> LocalFailure {
    LocalFailure::Dns(match e {
        ResolveError::NoSuchDomain { .. } => DnsFailure::NxDomain,
        ResolveError::NullMx { .. } => DnsFailure::NullMx,
        ResolveError::NoAddresses { .. } => DnsFailure::NoAddresses,
        ResolveError::Temporary { .. } => DnsFailure::Temporary,
        // `ResolveError` is non-exhaustive: an answer added later is retried, never bounced.
        _ => DnsFailure::Temporary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_outbound::{Reply, Stage};
    use std::io::ErrorKind;

    fn pair(c: Classification) -> (Category, BounceClass) {
        (c.category, c.class)
    }

    #[test]
    fn replies_use_their_parsed_parts() {
        let c = BounceClassifier::shipped();
        let unknown = Reply::new(
            550,
            (5, 1, 1),
            "The email account that you tried to reach does not exist.",
        );
        assert_eq!(
            pair(classify_reply(&c, &unknown)),
            (Category::InvalidRecipient, BounceClass::Hard)
        );
        let full = Reply::new(
            452,
            (4, 2, 2),
            "The email account that you tried to reach is over quota.",
        );
        assert_eq!(
            pair(classify_reply(&c, &full)),
            (Category::MailboxFull, BounceClass::Soft)
        );
    }

    #[test]
    fn client_errors_follow_the_table() {
        let c = BounceClassifier::shipped();
        let addr = "127.0.0.1:25".parse().expect("an address");
        let refused = ClientError::Connect {
            addr,
            kind: ErrorKind::ConnectionRefused,
            reason: "refused".into(),
        };
        assert_eq!(
            local_failure_of_client(&refused),
            LocalFailure::ConnectionRefused
        );
        let unreachable = ClientError::Connect {
            addr,
            kind: ErrorKind::HostUnreachable,
            reason: "unreachable".into(),
        };
        assert_eq!(
            local_failure_of_client(&unreachable),
            LocalFailure::ConnectFailed
        );
        let cases = [
            (
                ClientError::Timeout {
                    stage: Stage::Greeting,
                },
                LocalFailure::Timeout,
            ),
            (
                ClientError::Dropped { stage: Stage::Rcpt },
                LocalFailure::ConnectionDropped,
            ),
            (
                ClientError::Io(std::io::Error::from(ErrorKind::ConnectionReset)),
                LocalFailure::ConnectionDropped,
            ),
            (
                ClientError::TlsRequired {
                    reason: "no STARTTLS".into(),
                },
                LocalFailure::TlsRequired,
            ),
            (
                ClientError::Tls {
                    reason: "handshake".into(),
                },
                LocalFailure::TlsHandshake,
            ),
            (
                ClientError::Protocol {
                    stage: Stage::Mail,
                    reason: "garbage".into(),
                },
                LocalFailure::Protocol,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(local_failure_of_client(&e), want, "{e}");
            assert_eq!(classify_client_error(&c, &e), want.classification(), "{e}");
        }
        assert_eq!(
            pair(classify_client_error(&c, &refused)),
            (Category::Transient, BounceClass::Soft)
        );
        // A refusal at the greeting is a reply: the rules decide, not the table.
        let greeting = ClientError::Rejected {
            stage: Stage::Greeting,
            reply: Reply::new(
                554,
                (5, 7, 1),
                "Service unavailable; Client host [192.0.2.1] blocked using Spamhaus",
            ),
        };
        assert_eq!(
            classify_client_error(&c, &greeting).class,
            BounceClass::Hard
        );
        assert_ne!(
            classify_client_error(&c, &greeting).category,
            Category::ProtocolError
        );
    }

    #[test]
    fn resolve_errors_follow_the_table() {
        let d = || "example.invalid".to_string();
        let cases = [
            (
                ResolveError::NoSuchDomain { domain: d() },
                (Category::BadDomain, BounceClass::Hard),
            ),
            (
                ResolveError::NullMx { domain: d() },
                (Category::BadDomain, BounceClass::Hard),
            ),
            (
                ResolveError::NoAddresses { domain: d() },
                (Category::RoutingError, BounceClass::Hard),
            ),
            (
                ResolveError::Temporary {
                    domain: d(),
                    reason: "SERVFAIL".into(),
                },
                (Category::Transient, BounceClass::Soft),
            ),
        ];
        for (e, want) in cases {
            assert_eq!(
                pair(local_failure_of_resolve(&e).classification()),
                want,
                "{e}"
            );
        }
    }
}
