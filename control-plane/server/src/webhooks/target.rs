//! Where a webhook may point: the URL rules and the address policy that keeps deliveries away
//! from the control plane's own networks (SSRF).
//!
//! A URL must be `https` (or `http` to a loopback address when the operator allows loopback
//! targets, for development), without credentials, and every address its host resolves to must
//! be public: never private, loopback, link-local, unique-local, CGNAT, multicast, unspecified,
//! reserved, documentation or benchmarking space, nor an IPv6 form that embeds such an IPv4
//! address (mapped, compatible, NAT64, 6to4). The check runs when the webhook is created and
//! again at every connect, on the addresses the connection then uses: the connection goes to
//! a checked address, so a DNS answer that changes in between (rebinding) cannot get past it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::dns::DnsChecker;

/// Longest webhook URL, bytes.
pub const WEBHOOK_URL_MAX_BYTES: usize = 2_048;
/// Addresses of one name that are checked and tried (a name with more is refused).
pub const TARGET_ADDRESSES_MAX: usize = 16;

/// Why a URL or an address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    #[error("not a URL: {0}")]
    Syntax(String),
    #[error("URL longer than {WEBHOOK_URL_MAX_BYTES} bytes")]
    TooLong,
    #[error("only https URLs are accepted")]
    Scheme,
    #[error("http is only accepted to loopback addresses, with loopback targets allowed")]
    PlainHttp,
    #[error("the URL must not carry a user name or password")]
    Credentials,
    #[error("the URL has no host")]
    NoHost,
    #[error("{host} does not resolve: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{host} has no address")]
    NoAddress { host: String },
    #[error("{host} has more than {TARGET_ADDRESSES_MAX} addresses")]
    TooManyAddresses { host: String },
    #[error("{ip} is a {kind} address; webhooks only go to public addresses")]
    Forbidden { ip: IpAddr, kind: &'static str },
}

/// The parts of an accepted URL a delivery needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// The host as written (a name without brackets, or an IP literal).
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Parses and checks a URL's form (not its addresses).
pub fn parse(url: &str, allow_loopback: bool) -> Result<Target, TargetError> {
    if url.len() > WEBHOOK_URL_MAX_BYTES {
        return Err(TargetError::TooLong);
    }
    let u = url::Url::parse(url).map_err(|e| TargetError::Syntax(e.to_string()))?;
    let https = match u.scheme() {
        "https" => true,
        "http" if allow_loopback => false,
        "http" => return Err(TargetError::PlainHttp),
        _ => return Err(TargetError::Scheme),
    };
    if !u.username().is_empty() || u.password().is_some() {
        return Err(TargetError::Credentials);
    }
    let host = match u.host() {
        Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(TargetError::NoHost),
    };
    let port = u.port_or_known_default().ok_or(TargetError::NoHost)?;
    let mut path = u.path().to_string();
    if let Some(q) = u.query() {
        path.push('?');
        path.push_str(q);
    }
    Ok(Target {
        https,
        host,
        port,
        path,
    })
}

/// What kind of special-purpose address `ip` is; None for a public one.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const NETS: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "unspecified"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([10, 0, 0, 0], 8, "private"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 168, 0, 0], 16, "private"),
        ([169, 254, 0, 0], 16, "link-local"),
        ([100, 64, 0, 0], 10, "CGNAT"),
        ([192, 0, 0, 0], 24, "IETF protocol"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([198, 18, 0, 0], 15, "benchmarking"),
        ([192, 88, 99, 0], 24, "6to4 relay"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved"),
    ];
    NETS.iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, kind)| *kind)
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // Forms that carry an IPv4 address: judged by it (mapped ::ffff:0:0/96, compatible ::/96,
    // NAT64 64:ff9b::/96, 6to4 2002::/16).
    let low_v4 = Ipv4Addr::new(
        (s[6] >> 8) as u8,
        (s[6] & 0xff) as u8,
        (s[7] >> 8) as u8,
        (s[7] & 0xff) as u8,
    );
    let mapped = s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0);
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    let embedded = if mapped || nat64 {
        Some(low_v4)
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            (s[1] & 0xff) as u8,
            (s[2] >> 8) as u8,
            (s[2] & 0xff) as u8,
        ))
    } else {
        None
    };
    if let Some(v4) = embedded {
        return Some(match classify_v4(v4) {
            Some("loopback") => "loopback",
            Some(_) => "IPv4-embedded special",
            None if s[0] == 0x2002 || s[0] == 0x64 => return None,
            // Mapped or compatible public IPv4: refuse anyway, no receiver needs that form.
            None => "IPv4-mapped",
        });
    }
    match s[0] {
        x if x & 0xfe00 == 0xfc00 => Some("unique-local"),
        x if x & 0xffc0 == 0xfe80 => Some("link-local"),
        x if x & 0xffc0 == 0xfec0 => Some("site-local"),
        x if x & 0xff00 == 0xff00 => Some("multicast"),
        0x2001 if s[1] == 0x0db8 => Some("documentation"),
        0x2001 if s[1] < 0x0200 => Some("IETF protocol"),
        0x3fff if s[1] < 0x1000 => Some("documentation"),
        0x0100 if s[1..4] == [0, 0, 0] => Some("discard"),
        _ => None,
    }
}

/// Whether `ip` may be connected to.
pub fn check_ip(ip: IpAddr, allow_loopback: bool) -> Result<(), TargetError> {
    match classify(ip) {
        None => Ok(()),
        Some("loopback") if allow_loopback => Ok(()),
        Some(kind) => Err(TargetError::Forbidden { ip, kind }),
    }
}

/// True for names that are loopback by definition (RFC 6761), whatever DNS says.
fn is_localhost(host: &str) -> bool {
    let h = host.trim_end_matches('.');
    h == "localhost" || h.ends_with(".localhost")
}

/// Resolves the target's host and checks every address; Ok: the addresses to connect to, in
/// order. Plain http additionally needs every address to be loopback.
pub async fn resolve(
    t: &Target,
    dns: &DnsChecker,
    allow_loopback: bool,
) -> Result<Vec<SocketAddr>, TargetError> {
    let ips: Vec<IpAddr> = if let Ok(ip) = t.host.parse::<IpAddr>() {
        vec![ip]
    } else if is_localhost(&t.host) {
        vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]
    } else {
        dns.lookup_ip(&t.host)
            .await
            .map_err(|reason| TargetError::Resolve {
                host: t.host.clone(),
                reason,
            })?
    };
    if ips.is_empty() {
        return Err(TargetError::NoAddress {
            host: t.host.clone(),
        });
    }
    if ips.len() > TARGET_ADDRESSES_MAX {
        return Err(TargetError::TooManyAddresses {
            host: t.host.clone(),
        });
    }
    for ip in &ips {
        check_ip(*ip, allow_loopback)?;
        if !t.https && !ip.is_loopback() {
            return Err(TargetError::PlainHttp);
        }
    }
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, t.port))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn special_addresses_are_refused_and_public_ones_pass() {
        for (a, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.31.255.255", "private"),
            ("192.168.0.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("192.0.2.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "IPv4-embedded special"),
            ("::ffff:8.8.8.8", "IPv4-mapped"),
            ("64:ff9b::a00:1", "IPv4-embedded special"),
            ("2002:c0a8:0101::1", "IPv4-embedded special"),
        ] {
            assert_eq!(classify(ip(a)), Some(kind), "{a}");
        }
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert_eq!(classify(ip(a)), None, "{a}");
        }
        assert!(check_ip(ip("127.0.0.1"), true).is_ok());
        assert!(check_ip(ip("::1"), true).is_ok());
        assert!(check_ip(ip("10.0.0.1"), true).is_err());
        assert!(check_ip(ip("127.0.0.1"), false).is_err());
    }

    #[test]
    fn url_rules() {
        let t = parse("https://hooks.example.com:8443/in?x=1", false).expect("ok");
        assert_eq!(
            t,
            Target {
                https: true,
                host: "hooks.example.com".into(),
                port: 8443,
                path: "/in?x=1".into()
            }
        );
        assert_eq!(parse("https://[::1]/", true).expect("v6").host, "::1");
        assert_eq!(parse("http://x.test/", false), Err(TargetError::PlainHttp));
        assert!(parse("http://127.0.0.1:1/", true).is_ok());
        assert_eq!(parse("ftp://x.test/", true), Err(TargetError::Scheme));
        assert_eq!(
            parse("https://u:p@x.test/", false),
            Err(TargetError::Credentials)
        );
        let long = format!("https://x.test/{}", "a".repeat(WEBHOOK_URL_MAX_BYTES));
        assert_eq!(parse(&long, false), Err(TargetError::TooLong));
        assert!(matches!(
            parse("not a url", false),
            Err(TargetError::Syntax(_))
        ));
        assert!(is_localhost("localhost") && is_localhost("a.localhost."));
    }
}
