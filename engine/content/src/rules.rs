//! The scored rule set: each rule has a name (the one a refusal reply and a metric show) and a
//! score; a message whose rules add up to the threshold is refused. Each rule scores once per
//! message, however often it fires.
//!
//! The weights say how much one rule alone tells. A link whose text shows one site while it
//! goes to another, a look-alike of a brand's domain, and a credential form posting off the
//! sender's domain each block alone (legitimate mail does none of them: 0 of 44 in the corpus).
//! The classic signals (a raw IP host, a `javascript:`/`data:` link, a user name in front of the
//! host, urgent credential wording) are common enough in old or clumsy legitimate mail that
//! they block only together.

use std::collections::HashSet;

use crate::brands::Brands;
use crate::domain::{cut, registrable, shown_host, target, Target};
use crate::extract::Content;
use crate::limits::{HITS_MAX, HIT_DETAIL_BYTES_MAX, HOSTS_CHECKED_MAX, LINKS_MAX};
use crate::Sender;

/// One rule of the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// A link's text shows a domain (`www.paypal.com`) and its href goes to another registrable
    /// domain that is not the sender's own (its From domain, its tenant's domains, a configured
    /// click-tracking domain).
    LinkTextMismatch,
    /// A host in a link, a link's text, a form action or the From address imitates a listed
    /// brand ([`crate::brands`]).
    LookalikeDomain,
    /// A link's text shows a listed brand's own domain (`www.paypal.com`) while its href goes
    /// through the sender's own domain, which is not that brand's: the ownership that spares a
    /// click-tracking redirect does not vouch for a brand it does not own. Alone below the
    /// threshold (a newsletter may link `instagram.com/shop` through its tracking domain).
    BrandTextRedirected,
    /// A form with a password (or card, PIN) field whose action leaves the sender's domains.
    CredentialFormOffDomain,
    /// A form with a credential field posting to the sender's domain or nowhere: mail has no
    /// business asking for a password, but alone this is not phishing.
    CredentialForm,
    /// The From display name claims a distinctive brand (`"PayPal Service"`) that the From
    /// domain is not one of.
    DisplayNameBrand,
    /// A URL with a user name in front of its host (`http://paypal.com@evil.example`).
    UserinfoLink,
    /// A URL whose host is an IP address.
    IpLink,
    /// A `javascript:`, `vbscript:` or `data:` link.
    ScriptLink,
    /// Two or more phrases that press for credentials under a threat.
    UrgentWording,
}

impl Rule {
    /// The name a refusal and a log show.
    pub fn name(self) -> &'static str {
        match self {
            Rule::LinkTextMismatch => "link_text_mismatch",
            Rule::LookalikeDomain => "lookalike_domain",
            Rule::BrandTextRedirected => "brand_text_redirected",
            Rule::CredentialFormOffDomain => "credential_form_off_domain",
            Rule::CredentialForm => "credential_form",
            Rule::DisplayNameBrand => "display_name_brand",
            Rule::UserinfoLink => "userinfo_link",
            Rule::IpLink => "ip_link",
            Rule::ScriptLink => "script_link",
            Rule::UrgentWording => "urgent_wording",
        }
    }

    /// Points the rule adds when it fires.
    pub fn score(self) -> u32 {
        match self {
            Rule::LinkTextMismatch => 60,
            Rule::LookalikeDomain => 60,
            Rule::BrandTextRedirected => 35,
            Rule::CredentialFormOffDomain => 80,
            Rule::CredentialForm => 30,
            Rule::DisplayNameBrand => 25,
            Rule::UserinfoLink => 30,
            Rule::IpLink => 15,
            Rule::ScriptLink => 20,
            Rule::UrgentWording => 15,
        }
    }
}

/// Phrases that press a reader to hand over credentials under a threat. Two distinct ones are
/// needed: a real security notice says one ("we noticed a new sign-in"), a lure piles them up.
const URGENT_PHRASES: &[&str] = &[
    "verify your account",
    "verify your identity",
    "confirm your identity",
    "confirm your account",
    "validate your account",
    "confirm your password",
    "enter your password",
    "update your payment",
    "update your billing",
    "account has been suspended",
    "account will be suspended",
    "account has been locked",
    "account will be closed",
    "account has been limited",
    "avoid suspension",
    "permanently deleted",
    "unusual sign-in activity",
    "suspicious activity",
    "unauthorized login",
    "restore access",
    "within 24 hours",
    "within 48 hours",
    "failure to verify",
    "immediate action required",
];
/// Distinct urgent phrases needed for [`Rule::UrgentWording`].
const URGENT_PHRASES_MIN: usize = 2;
const _: () = assert!(
    URGENT_PHRASES.len() <= 64,
    "a u64 holds which phrases were seen"
);

/// All of [`URGENT_PHRASES`] in one searcher (leftmost-first, so a SIMD prefilter scans for
/// all of them at once): one pass over a text, where a substring search per phrase cost more
/// than the rest of a short message's check.
static URGENT: std::sync::LazyLock<Option<aho_corasick::AhoCorasick>> =
    std::sync::LazyLock::new(|| {
        aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostFirst)
            .build(URGENT_PHRASES)
            .ok()
    });

/// How many distinct urgent phrases the lowercase texts hold, counted up to
/// [`URGENT_PHRASES_MIN`]. One non-overlapping pass settles most texts (no match: no phrase is
/// there; two distinct: enough); after exactly one, each phrase is searched for on its own,
/// since a phrase may hide inside another's match ("verify your account has been suspended"
/// holds two).
fn urgent_phrases(text: &str, html_text: &str) -> usize {
    let each = || {
        URGENT_PHRASES
            .iter()
            .filter(|p| text.contains(*p) || html_text.contains(*p))
            .count()
            .min(URGENT_PHRASES_MIN)
    };
    // The searcher of a fixed list always builds; the search per phrase else.
    let Some(ac) = URGENT.as_ref() else {
        return each();
    };
    let mut seen = 0u64;
    for t in [text, html_text] {
        for m in ac.find_iter(t) {
            seen |= 1 << m.pattern().as_usize();
        }
    }
    match seen.count_ones() {
        0 => 0,
        1 => each(),
        _ => URGENT_PHRASES_MIN,
    }
}

/// One fired rule, with the first thing that fired it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub rule: Rule,
    /// The domain or URL, at most [`HIT_DETAIL_BYTES_MAX`] bytes (for logs, never for the
    /// client: it is the sender's own content).
    pub detail: String,
}

/// The rules that fired, in the order they were found.
#[derive(Debug, Default)]
pub struct Hits(pub Vec<Hit>);

impl Hits {
    fn add(&mut self, rule: Rule, detail: &str) {
        if self.0.len() < HITS_MAX && !self.0.iter().any(|h| h.rule == rule) {
            self.0.push(Hit {
                rule,
                detail: cut(detail, HIT_DETAIL_BYTES_MAX).to_string(),
            });
        }
    }
}

/// Runs every rule over one message's content.
pub fn run(
    content: &Content,
    sender: &Sender,
    brands: &Brands,
    redirect: &HashSet<String>,
) -> Hits {
    let from = sender
        .from_domain
        .map(str::to_ascii_lowercase)
        .or_else(|| content.from_domain.clone());
    let site = Site {
        from_reg: from.as_deref().and_then(registrable).map(str::to_string),
        sender,
        redirect,
    };
    let mut hits = Hits::default();
    if let Some(name) = content.display_name.as_deref() {
        if let Some(brand) = brands.claimed_by_name(name, from.as_deref()) {
            hits.add(Rule::DisplayNameBrand, brand);
        }
    }
    let mut hosts: Vec<String> = from.into_iter().collect();
    for link in &content.scan.links {
        match target(&link.href) {
            Target::Web { host, userinfo } => {
                if userinfo {
                    hits.add(Rule::UserinfoLink, &link.href);
                }
                if let Some(shown) = shown_host(&link.text) {
                    if !same_site(&shown, &host, brands) {
                        let detail = format!("{shown} -> {host}");
                        if !site.is_own(&host) {
                            hits.add(Rule::LinkTextMismatch, &detail);
                        } else if registrable(&shown).is_some_and(|r| brands.is_official(r)) {
                            hits.add(Rule::BrandTextRedirected, &detail);
                        }
                    }
                    hosts.push(shown);
                }
                hosts.push(host);
            }
            Target::Ip { .. } if shown_host(&link.text).is_some() => {
                hits.add(
                    Rule::LinkTextMismatch,
                    &format!("{} -> {}", link.text, link.href),
                );
                note_target(target(&link.href), &link.href, &mut hits, &mut hosts);
            }
            other => note_target(other, &link.href, &mut hits, &mut hosts),
        }
    }
    for url in text_urls(&content.text) {
        note_target(target(url), url, &mut hits, &mut hosts);
    }
    for form in content.scan.forms.iter().filter(|f| f.asks_credential) {
        match target(&form.action) {
            Target::Web { host, .. } if !site.is_own(&host) => {
                hits.add(Rule::CredentialFormOffDomain, &form.action);
                hosts.push(host);
            }
            Target::Ip { .. } | Target::Script => {
                hits.add(Rule::CredentialFormOffDomain, &form.action);
            }
            _ => hits.add(Rule::CredentialForm, &form.action),
        }
    }
    check_hosts(hosts, brands, &mut hits);
    let phrases = urgent_phrases(&content.text, &content.scan.text);
    if phrases >= URGENT_PHRASES_MIN {
        hits.add(Rule::UrgentWording, &format!("{phrases} phrases"));
    }
    hits
}

/// A link target other than a web host with text: scripts, IPs, mail domains.
fn note_target(t: Target, href: &str, hits: &mut Hits, hosts: &mut Vec<String>) {
    match t {
        Target::Script => hits.add(Rule::ScriptLink, href),
        Target::Ip { userinfo } => {
            if userinfo {
                hits.add(Rule::UserinfoLink, href);
            }
            hits.add(Rule::IpLink, href);
        }
        Target::Web { host, userinfo } => {
            if userinfo {
                hits.add(Rule::UserinfoLink, href);
            }
            hosts.push(host);
        }
        Target::Mail(domain) => hosts.push(domain),
        Target::Other => {}
    }
}

/// Checks distinct hosts (at most [`HOSTS_CHECKED_MAX`]) against the brand list.
fn check_hosts(mut hosts: Vec<String>, brands: &Brands, hits: &mut Hits) {
    hosts.sort_unstable();
    hosts.dedup();
    for host in hosts.iter().take(HOSTS_CHECKED_MAX) {
        if let Some((kind, brand)) = brands.lookalike(host) {
            hits.add(
                Rule::LookalikeDomain,
                &format!("{host} ({} of {brand})", kind.name()),
            );
            return;
        }
    }
}

/// The http(s) URLs in plain text, at most [`LINKS_MAX`].
fn text_urls(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices("http")
        .filter_map(|(i, _)| {
            let rest = &text[i..];
            (rest.starts_with("http://") || rest.starts_with("https://")).then(|| {
                let end = rest
                    .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | ')' | ']'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
        })
        .take(LINKS_MAX)
}

/// The sender's own sites: its From domain's registrable domain, its tenant's domains, the
/// configured click-tracking domains.
struct Site<'a> {
    from_reg: Option<String>,
    sender: &'a Sender<'a>,
    redirect: &'a HashSet<String>,
}

impl Site<'_> {
    fn is_own(&self, host: &str) -> bool {
        let reg = registrable(host);
        (reg.is_some() && reg == self.from_reg.as_deref())
            || reg.is_some_and(|r| self.redirect.contains(r))
            || (self.sender.own_domain)(host)
    }
}

/// Whether two hosts are one site: the same registrable domain (the same host when either has
/// none), or official domains of the same brand (`twitter.com` and `x.com`).
fn same_site(a: &str, b: &str, brands: &Brands) -> bool {
    match (registrable(a), registrable(b)) {
        (Some(ra), Some(rb)) => ra == rb || brands.same_brand(ra, rb),
        _ => a.trim_start_matches("www.") == b.trim_start_matches("www."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Checker, CheckerConfig};

    fn rules(html: &str) -> String {
        let mail = format!("From: <news@shop.com>\r\nContent-Type: text/html\r\n\r\n{html}\r\n");
        let checker = Checker::new(&CheckerConfig::default()).unwrap();
        checker
            .check(mail.as_bytes(), &Sender::default())
            .rule_names()
    }

    #[test]
    fn link_text_is_compared_only_when_it_shows_a_domain() {
        assert_eq!(rules(r#"<a href="https://evil.com/x">Sign in</a>"#), "");
        assert_eq!(
            rules(r#"<a href="https://evil.com/x">www.bank.com</a>"#),
            "link_text_mismatch"
        );
        assert_eq!(
            rules(r#"<a href="https://www.bank.com/x">bank.com</a>"#),
            ""
        );
        assert_eq!(
            rules(r#"<a href="http://192.0.2.8/x">www.bank.com</a>"#),
            "link_text_mismatch, ip_link"
        );
    }

    #[test]
    fn the_senders_own_links_and_brand_text() {
        // Through the sender's own tracking subdomain: not a mismatch.
        assert_eq!(
            rules(r#"<a href="https://click.shop.com/r/1">www.partner.com</a>"#),
            ""
        );
        // But it does not vouch for a brand's domain.
        assert_eq!(
            rules(r#"<a href="https://click.shop.com/r/1">www.paypal.com</a>"#),
            "brand_text_redirected"
        );
    }

    #[test]
    fn credential_forms() {
        assert_eq!(
            rules(r#"<form action="https://shop.com/a"><input type=password></form>"#),
            "credential_form"
        );
        assert_eq!(
            rules(r#"<form action="https://other.com/a"><input type=password></form>"#),
            "credential_form_off_domain"
        );
        assert_eq!(
            rules(r#"<form action="https://other.com/a"><input name=q></form>"#),
            ""
        );
    }

    #[test]
    fn each_rule_scores_once() {
        let v = Checker::new(&CheckerConfig::default()).unwrap().check(
            b"Content-Type: text/html\r\n\r\n<a href=javascript:a>x</a><a href=javascript:b>y</a>",
            &Sender::default(),
        );
        assert_eq!(v.score, Rule::ScriptLink.score());
    }
}
