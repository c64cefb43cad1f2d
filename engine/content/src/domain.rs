//! Hosts and registrable domains: what a link points to, what a link's text shows, and the
//! registrable domain ("eTLD+1", by the public suffix list) that two of them are compared by.

use url::{Host, Url};

use crate::limits::HREF_BYTES_MAX;

/// Where an href (or a form action) points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An http(s) URL with a host name (lowercase, ASCII: IDNs in punycode).
    Web {
        host: String,
        /// The URL carries a user name (`http://paypal.com@evil.example/`): the text before
        /// the `@` is shown to a reader as if it were the host.
        userinfo: bool,
    },
    /// An http(s) URL whose host is an IP address literal.
    Ip {
        /// A user name in front of the host, as for [`Target::Web`].
        userinfo: bool,
    },
    /// A `javascript:`, `vbscript:` or `data:` URL: code or a whole page in the link.
    Script,
    /// A `mailto:` address's domain.
    Mail(String),
    /// Relative, `tel:`, `#anchor`, unparsable: nothing to score.
    Other,
}

/// Parses an href or form action (cut to [`HREF_BYTES_MAX`]).
pub fn target(href: &str) -> Target {
    let href = cut(href.trim(), HREF_BYTES_MAX);
    let lower_scheme = href
        .get(..href.find(':').unwrap_or(0).min(16))
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match lower_scheme.as_str() {
        "javascript" | "vbscript" | "data" => return Target::Script,
        "mailto" => {
            let rest = &href[href.find(':').map_or(0, |i| i + 1)..];
            let addr = rest.split(['?', ',']).next().unwrap_or("");
            return match addr.rsplit_once('@') {
                Some((_, d)) => Target::Mail(d.trim().to_ascii_lowercase()),
                None => Target::Other,
            };
        }
        _ => {}
    }
    let Ok(url) = Url::parse(href) else {
        return Target::Other;
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Target::Other;
    }
    let userinfo = !url.username().is_empty() || url.password().is_some();
    match url.host() {
        Some(Host::Domain(d)) => Target::Web {
            host: d.trim_end_matches('.').to_string(),
            userinfo,
        },
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => Target::Ip { userinfo },
        None => Target::Other,
    }
}

/// The registrable domain of an ASCII host (`mail.shop.example.co.uk` → `example.co.uk`), when
/// its suffix is on the public suffix list; None for a bare suffix or an unknown one.
pub fn registrable(host: &str) -> Option<&str> {
    let d = psl::domain(host.as_bytes())?;
    if !d.suffix().is_known() {
        return None;
    }
    std::str::from_utf8(d.as_bytes()).ok()
}

/// Suffixes that are top-level domains and also common file extensions: a link text like
/// `invoice.zip` shows a file name, not a domain, unless a scheme or `www.` says otherwise.
const FILE_LIKE_SUFFIXES: &[&str] = &["zip", "mov", "py", "sh", "rs", "md", "pl", "cc", "so"];

/// The host a link's visible text shows, when the text is one URL or domain name and nothing
/// else (`www.paypal.com`, `https://paypal.com/signin`, `PayPal.com`); lowercase ASCII
/// (punycode for an IDN). Text that is a sentence, a button label or an email address shows no
/// domain: mismatches are only scored against what a reader takes for the destination.
pub fn shown_host(text: &str) -> Option<String> {
    let t = text.trim().trim_end_matches(['.', ',', ')', '>']);
    let t = t.trim_start_matches(['(', '<']);
    if t.is_empty() || t.chars().any(char::is_whitespace) || t.contains('@') {
        return None;
    }
    let lower = t.to_lowercase();
    let (explicit, rest) = match lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    {
        Some(r) => (true, r),
        None => (lower.starts_with("www."), lower.as_str()),
    };
    let host = rest
        .split(['/', '?', '#', ':'])
        .next()
        .unwrap_or("")
        .trim_end_matches('.');
    if !host.contains('.') || host.starts_with('.') || host.contains("..") {
        return None;
    }
    if !host
        .chars()
        .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
    {
        return None;
    }
    let ascii = idna::domain_to_ascii(host).ok()?;
    let suffix = psl::suffix(ascii.as_bytes())?;
    if !suffix.is_known() {
        return None;
    }
    let suffix = std::str::from_utf8(suffix.as_bytes()).ok()?;
    if !explicit && FILE_LIKE_SUFFIXES.contains(&suffix) {
        return None;
    }
    Some(ascii)
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            target(" https://Login.PayPal.com/x "),
            Target::Web {
                host: "login.paypal.com".into(),
                userinfo: false
            }
        );
        assert_eq!(
            target("http://www.paypal.com@evil.example/"),
            Target::Web {
                host: "evil.example".into(),
                userinfo: true
            }
        );
        assert_eq!(
            target("http://192.0.2.7/login"),
            Target::Ip { userinfo: false }
        );
        assert_eq!(
            target("http://www.bank.com@[2001:db8::1]/"),
            Target::Ip { userinfo: true }
        );
        assert_eq!(target("JavaScript:alert(1)"), Target::Script);
        assert_eq!(target("data:text/html;base64,PGh0"), Target::Script);
        assert_eq!(
            target("mailto:help@Shop.example?subject=x"),
            Target::Mail("shop.example".into())
        );
        assert_eq!(target("/relative"), Target::Other);
        assert_eq!(target("tel:+15550100"), Target::Other);
        // An IDN host comes back in punycode.
        assert_eq!(
            target("https://pаypal.com/"),
            Target::Web {
                host: "xn--pypal-4ve.com".into(),
                userinfo: false
            }
        );
    }

    #[test]
    fn registrable_domains() {
        assert_eq!(
            registrable("mail.shop.example.co.uk"),
            Some("example.co.uk")
        );
        assert_eq!(registrable("click.news.paypal.com"), Some("paypal.com"));
        assert_eq!(registrable("com"), None);
        assert_eq!(registrable("host.notarealtld"), None);
    }

    #[test]
    fn shown_hosts() {
        assert_eq!(
            shown_host("www.PayPal.com").as_deref(),
            Some("www.paypal.com")
        );
        assert_eq!(
            shown_host(" https://paypal.com/signin?x=1 ").as_deref(),
            Some("paypal.com")
        );
        assert_eq!(shown_host("paypal.com.").as_deref(), Some("paypal.com"));
        assert_eq!(shown_host("Click here"), None);
        assert_eq!(shown_host("View in browser"), None);
        assert_eq!(shown_host("help@paypal.com"), None);
        assert_eq!(shown_host("invoice.zip"), None);
        assert_eq!(
            shown_host("https://invoice.zip").as_deref(),
            Some("invoice.zip")
        );
        assert_eq!(shown_host("v2.1"), None);
        assert_eq!(shown_host("$12.99"), None);
    }

    #[test]
    fn cut_keeps_characters_whole() {
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("abc", 5), "abc");
    }
}
