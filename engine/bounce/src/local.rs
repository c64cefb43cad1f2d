//! Failures of our own: no reply to classify, so a fixed table decides.
//!
//! This crate does not depend on `petrel-outbound` (that would pull the engine's I/O stack into
//! the control plane); the delivery code maps its errors with this table:
//!
//! | `petrel-outbound` error                          | `LocalFailure`             | category, class            |
//! |--------------------------------------------------|----------------------------|----------------------------|
//! | `ResolveError::NoSuchDomain`                     | `Dns(DnsFailure::NxDomain)`    | `bad_domain`, hard     |
//! | `ResolveError::NullMx`                           | `Dns(DnsFailure::NullMx)`      | `bad_domain`, hard     |
//! | `ResolveError::NoAddresses`                      | `Dns(DnsFailure::NoAddresses)` | `routing_error`, hard  |
//! | `ResolveError::Temporary`                        | `Dns(DnsFailure::Temporary)`   | `transient`, soft      |
//! | `ClientError::Connect` (refused)                 | `ConnectionRefused`        | `transient`, soft          |
//! | `ClientError::Connect` (other)                   | `ConnectFailed`            | `transient`, soft          |
//! | `ClientError::Timeout { stage }`                 | `Timeout`                  | `transient`, soft          |
//! | `ClientError::Dropped { stage }`                 | `ConnectionDropped`        | `transient`, soft          |
//! | `ClientError::Io(e)`                             | [`LocalFailure::from_io_kind`] | as that variant        |
//! | `ClientError::TlsRequired`                       | `TlsRequired`              | `tls_required`, soft       |
//! | `ClientError::Tls` (opportunistic handshake)     | `TlsHandshake`             | `protocol_error`, soft     |
//! | `ClientError::Protocol { stage }`                | `Protocol`                 | `protocol_error`, soft     |
//! | no MX host matches the domain's MTA-STS policy   | `MtaStsNoMatchingMx`       | `tls_required`, soft       |
//! | DANE: TLSA mismatch, bogus TLSA, no STARTTLS     | `DaneFailed`               | `tls_required`, soft       |
//! | `ClientError::Rejected { reply, .. }`            | the reply, through the rules ([`crate::BounceClassifier::classify_local`]) | |
//!
//! The classes follow what the engine does with each failure today: only a domain that does not
//! exist, publishes a null MX, or has no address bounces at once; everything else is retried.

use crate::{BounceClass, Category, Classification};

/// A DNS answer that stopped a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsFailure {
    /// NXDOMAIN: the recipient's domain does not exist.
    NxDomain,
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    NullMx,
    /// Neither the MX hosts nor the domain itself have an address.
    NoAddresses,
    /// SERVFAIL, REFUSED or a resolver timeout: try again later.
    Temporary,
}

/// A delivery failure that produced no SMTP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LocalFailure {
    Dns(DnsFailure),
    /// The TCP connect was refused (RST).
    ConnectionRefused,
    /// The TCP connect failed otherwise (unreachable network or host).
    ConnectFailed,
    /// The server did not answer in time, at any stage.
    Timeout,
    /// The server closed or reset the connection mid-dialogue.
    ConnectionDropped,
    /// Our policy required TLS and the server did not offer it, or it failed.
    TlsRequired,
    /// An opportunistic TLS handshake failed; the attempt is retried.
    TlsHandshake,
    /// The domain's MTA-STS policy (RFC 8461) is enforced and none of its MX hosts matches
    /// it: nothing may be tried, the recipients wait (never bounced for it).
    MtaStsNoMatchingMx,
    /// DANE (RFC 7672) kept the mail from every MX host tried: validated TLSA records the
    /// certificate did not match, a TLSA answer that failed DNSSEC validation, or no TLS. The
    /// recipients wait (never bounced for it, never sent in plain text).
    DaneFailed,
    /// The server's replies broke the protocol (unparseable, out of sequence).
    Protocol,
    /// Another I/O error.
    Io,
}

impl LocalFailure {
    /// The fixed classification of this failure (see the table in the module docs).
    pub fn classification(self) -> Classification {
        let (category, class) = match self {
            LocalFailure::Dns(DnsFailure::NxDomain | DnsFailure::NullMx) => {
                (Category::BadDomain, BounceClass::Hard)
            }
            LocalFailure::Dns(DnsFailure::NoAddresses) => {
                (Category::RoutingError, BounceClass::Hard)
            }
            LocalFailure::Dns(DnsFailure::Temporary)
            | LocalFailure::ConnectionRefused
            | LocalFailure::ConnectFailed
            | LocalFailure::Timeout
            | LocalFailure::ConnectionDropped
            | LocalFailure::Io => (Category::Transient, BounceClass::Soft),
            LocalFailure::TlsRequired
            | LocalFailure::MtaStsNoMatchingMx
            | LocalFailure::DaneFailed => (Category::TlsRequired, BounceClass::Soft),
            LocalFailure::TlsHandshake | LocalFailure::Protocol => {
                (Category::ProtocolError, BounceClass::Soft)
            }
        };
        Classification { category, class }
    }

    /// The failure an I/O error kind stands for (for `ClientError::Io` and connect errors).
    pub fn from_io_kind(kind: std::io::ErrorKind) -> LocalFailure {
        use std::io::ErrorKind as K;
        match kind {
            K::ConnectionRefused => LocalFailure::ConnectionRefused,
            K::TimedOut | K::WouldBlock => LocalFailure::Timeout,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                LocalFailure::ConnectionDropped
            }
            K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                LocalFailure::ConnectFailed
            }
            _ => LocalFailure::Io,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    fn pair(f: LocalFailure) -> (Category, BounceClass) {
        let c = f.classification();
        (c.category, c.class)
    }

    #[test]
    fn the_table_in_the_docs() {
        use BounceClass::{Hard, Soft};
        use Category as C;
        assert_eq!(
            pair(LocalFailure::Dns(DnsFailure::NxDomain)),
            (C::BadDomain, Hard)
        );
        assert_eq!(
            pair(LocalFailure::Dns(DnsFailure::NullMx)),
            (C::BadDomain, Hard)
        );
        assert_eq!(
            pair(LocalFailure::Dns(DnsFailure::NoAddresses)),
            (C::RoutingError, Hard)
        );
        assert_eq!(
            pair(LocalFailure::Dns(DnsFailure::Temporary)),
            (C::Transient, Soft)
        );
        assert_eq!(pair(LocalFailure::ConnectionRefused), (C::Transient, Soft));
        assert_eq!(pair(LocalFailure::ConnectFailed), (C::Transient, Soft));
        assert_eq!(pair(LocalFailure::Timeout), (C::Transient, Soft));
        assert_eq!(pair(LocalFailure::ConnectionDropped), (C::Transient, Soft));
        assert_eq!(pair(LocalFailure::Io), (C::Transient, Soft));
        assert_eq!(pair(LocalFailure::TlsRequired), (C::TlsRequired, Soft));
        assert_eq!(
            pair(LocalFailure::MtaStsNoMatchingMx),
            (C::TlsRequired, Soft)
        );
        assert_eq!(pair(LocalFailure::DaneFailed), (C::TlsRequired, Soft));
        assert_eq!(pair(LocalFailure::TlsHandshake), (C::ProtocolError, Soft));
        assert_eq!(pair(LocalFailure::Protocol), (C::ProtocolError, Soft));
    }

    #[test]
    fn io_kinds() {
        assert_eq!(
            LocalFailure::from_io_kind(ErrorKind::ConnectionRefused),
            LocalFailure::ConnectionRefused
        );
        assert_eq!(
            LocalFailure::from_io_kind(ErrorKind::TimedOut),
            LocalFailure::Timeout
        );
        assert_eq!(
            LocalFailure::from_io_kind(ErrorKind::ConnectionReset),
            LocalFailure::ConnectionDropped
        );
        assert_eq!(
            LocalFailure::from_io_kind(ErrorKind::UnexpectedEof),
            LocalFailure::ConnectionDropped
        );
        assert_eq!(
            LocalFailure::from_io_kind(ErrorKind::NetworkUnreachable),
            LocalFailure::ConnectFailed
        );
        assert_eq!(
            LocalFailure::from_io_kind(ErrorKind::PermissionDenied),
            LocalFailure::Io
        );
    }
}
