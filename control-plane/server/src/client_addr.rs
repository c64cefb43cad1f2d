//! The client address of an API request (issue 16): the TCP peer, or, when the peer is one of
//! the operator's trusted proxies (`--api-trusted-proxy`, the TLS proxy that
//! `--api-allow-plaintext` exists for), the address that proxy saw, from `X-Forwarded-For`.
//! The IP allowlists, the failed-key throttle, the one-click throttle and the audit log's
//! `remote_addr` all use it. Pure.
//!
//! `X-Forwarded-For` is read from the right: each proxy appends the address it received the
//! request from, so the rightmost entry that is not a trusted proxy is the client as far as
//! trusted hops can tell; anything to its left is the client's own word. A header from an
//! untrusted peer is ignored, so a client cannot pick its own address.

use std::net::IpAddr;

use ipnet::IpNet;

/// Longest `X-Forwarded-For` header read, in bytes (past it the peer's address is used).
pub const FORWARDED_FOR_BYTES_MAX: usize = 4096;
/// Entries of `X-Forwarded-For` walked, at most (from the right).
pub const FORWARDED_FOR_HOPS_MAX: usize = 32;

/// The client address of a request from `peer` carrying `forwarded_for` (the header's value).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for.filter(|h| h.len() <= FORWARDED_FOR_BYTES_MAX) else {
        return peer;
    };
    let mut client = peer;
    for entry in header.rsplit(',').take(FORWARDED_FOR_HOPS_MAX) {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            // A malformed hop: nothing left of it can be trusted.
            return client;
        };
        client = ip.to_canonical();
        if !is_trusted(&client) {
            return client;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies() -> Vec<IpNet> {
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ]
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let got = client_ip(ip("203.0.113.5"), Some("198.51.100.7"), &proxies());
        assert_eq!(got, ip("203.0.113.5"));
        assert_eq!(
            client_ip(ip("127.0.0.1"), Some("198.51.100.7"), &[]),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let p = proxies();
        assert_eq!(
            client_ip(ip("127.0.0.1"), Some("198.51.100.7"), &p),
            ip("198.51.100.7")
        );
        // The client's own claim (left) is not believed past the first untrusted hop.
        let got = client_ip(ip("10.1.1.1"), Some("1.2.3.4, 198.51.100.7, 10.2.2.2"), &p);
        assert_eq!(got, ip("198.51.100.7"));
        // No header, a malformed one, or one too long: the peer.
        assert_eq!(client_ip(ip("127.0.0.1"), None, &p), ip("127.0.0.1"));
        assert_eq!(
            client_ip(ip("127.0.0.1"), Some("nonsense"), &p),
            ip("127.0.0.1")
        );
        let long = "198.51.100.7,".repeat(FORWARDED_FOR_BYTES_MAX);
        assert_eq!(client_ip(ip("127.0.0.1"), Some(&long), &p), ip("127.0.0.1"));
        // IPv4-mapped IPv6 is the IPv4 address.
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), Some("::ffff:198.51.100.7"), &p),
            ip("198.51.100.7")
        );
    }
}
