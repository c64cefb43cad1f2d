//! Look-alike domains of well-known brands: the shipped list (`data/brands.txt`), and the ways a
//! registrable domain imitates one of them.
//!
//! A host is judged by its registrable domain's label (`paypal-secure-login` of
//! `paypal-secure-login.com`), decoded from punycode, and by the labels in front of it. The
//! brand's own domains never score. The ways, each a [`Kind`]:
//! - homoglyph: the label's UTS #39 skeleton is the brand's (`pаypal` with a Cyrillic а,
//!   `paypa1`, `rnicrosoft`), but the label is not the brand;
//! - typo: one edit away (Damerau: insert, delete, replace, swap), for brands of five letters or
//!   more that are not everyday words (`paypall`, `amazno`);
//! - embedded: the brand as a hyphenated token (`paypal-secure-login`), or inside the label for
//!   distinctive names of six letters or more (`netflixbilling`); an everyday-word brand
//!   (`apple`, `booking`) only next to a lure word (`apple-id-verify`), so `salon-booking.com`
//!   stays clean;
//! - subdomain: the brand as a label in front of a foreign registrable domain
//!   (`paypal.com.account-check.info`);
//! - foreign suffix: the brand's name under a suffix it does not use (`paypal.support`).

use std::collections::HashMap;

use unicode_security::skeleton;

use crate::domain::registrable;
use crate::error::ContentError;

/// The shipped list.
const SHIPPED: &str = include_str!("../data/brands.txt");

/// Shortest brand name accepted: two-letter names would match half the web.
const BRAND_NAME_BYTES_MIN: usize = 3;
/// Shortest name matched by edit distance.
const TYPO_NAME_BYTES_MIN: usize = 5;
/// Shortest name matched inside a label without separators.
const SUBSTRING_NAME_BYTES_MIN: usize = 6;
/// Shortest everyday-word name matched inside a label next to a lure word.
const WORD_SUBSTRING_NAME_BYTES_MIN: usize = 4;
/// Brands in a list, at most (each costs a few hundred nanoseconds per checked host).
pub const BRANDS_MAX: usize = 512;
/// Labels of a host looked at, at most.
const HOST_LABELS_MAX: usize = 16;

/// Words a phishing domain puts next to a brand's name.
const LURE_WORDS: &[&str] = &[
    "login",
    "logon",
    "signin",
    "secure",
    "security",
    "verify",
    "verification",
    "account",
    "accounts",
    "support",
    "update",
    "billing",
    "confirm",
    "wallet",
    "service",
    "services",
    "alert",
    "auth",
    "portal",
    "online",
    "help",
    "id",
    "unlock",
    "recovery",
    "refund",
    "pay",
    "payment",
    "invoice",
    "customer",
    "center",
    "webmail",
    "mail",
];

/// How a domain imitates a brand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Homoglyph,
    Typo,
    Embedded,
    Subdomain,
    ForeignSuffix,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Homoglyph => "homoglyph",
            Kind::Typo => "typo",
            Kind::Embedded => "embedded",
            Kind::Subdomain => "subdomain",
            Kind::ForeignSuffix => "foreign_suffix",
        }
    }
}

/// One brand of the list.
#[derive(Debug, Clone)]
struct Brand {
    /// Lowercase ASCII, at least [`BRAND_NAME_BYTES_MIN`] bytes.
    name: String,
    /// `skeleton(name)`, computed once.
    skeleton: String,
    /// An everyday word too: scored only as a homoglyph or next to a lure word.
    word: bool,
}

/// The brand list and every brand's own registrable domains.
#[derive(Debug, Clone)]
pub struct Brands {
    brands: Vec<Brand>,
    /// Every listed registrable domain, with the index of the first brand that lists it.
    official: HashMap<String, usize>,
    /// Each brand's own domains, by brand index.
    domains: Vec<Vec<String>>,
}

impl Brands {
    /// The list shipped with the crate.
    pub fn shipped() -> Brands {
        Brands::parse(SHIPPED).expect("the shipped brand list parses (checked by a unit test)")
    }

    /// Parses a list in the format of `data/brands.txt`.
    pub fn parse(text: &str) -> Result<Brands, ContentError> {
        let mut brands = Vec::new();
        let mut official = HashMap::new();
        let mut domains = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or("");
            let (word, name) = match first.strip_prefix('~') {
                Some(n) => (true, n),
                None => (false, first),
            };
            let bad = |reason: &'static str| ContentError::BrandList {
                line: i + 1,
                reason,
            };
            if name.len() < BRAND_NAME_BYTES_MIN
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Err(bad("a brand name is 3 or more lowercase letters or digits"));
            }
            let mut own = Vec::new();
            for d in words {
                if registrable(d) != Some(d) {
                    return Err(bad("an official domain must be a registrable domain"));
                }
                official.entry(d.to_string()).or_insert(brands.len());
                own.push(d.to_string());
            }
            domains.push(own);
            if brands.len() == BRANDS_MAX {
                return Err(bad("too many brands"));
            }
            brands.push(Brand {
                skeleton: skeleton(name).collect(),
                name: name.to_string(),
                word,
            });
        }
        Ok(Brands {
            brands,
            official,
            domains,
        })
    }

    /// Whether `domain` (a registrable domain) is one of a listed brand's own.
    pub fn is_official(&self, domain: &str) -> bool {
        self.official.contains_key(domain)
    }

    /// The distinctive brand (not an everyday word) a sender's display name claims, as a whole
    /// word (`"PayPal Service"`, `"Netflix"`), when `from_domain` is none of that brand's.
    pub fn claimed_by_name(&self, display_name: &str, from_domain: Option<&str>) -> Option<&str> {
        let lower = display_name.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let from_reg = from_domain.and_then(registrable);
        self.brands.iter().enumerate().find_map(|(i, b)| {
            let named = !b.word && words.contains(&b.name.as_str());
            let own = from_reg.is_some_and(|r| {
                self.official
                    .get(r)
                    .is_some_and(|&j| j == i || self.brands[j].name == b.name)
                    || self.official_of(i).any(|d| d == r)
            });
            (named && !own).then_some(b.name.as_str())
        })
    }

    /// The official domains listed for brand `i`.
    fn official_of(&self, i: usize) -> impl Iterator<Item = &str> {
        self.domains
            .get(i)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Whether two registrable domains belong to the same brand (`twitter.com`, `x.com`).
    pub fn same_brand(&self, a: &str, b: &str) -> bool {
        matches!((self.official.get(a), self.official.get(b)), (Some(x), Some(y)) if x == y)
    }

    /// How `host` (lowercase ASCII, punycode for IDNs) imitates a brand, if it does: the kind
    /// and the brand's name.
    pub fn lookalike(&self, host: &str) -> Option<(Kind, &str)> {
        let reg = registrable(host)?;
        if self.official.contains_key(reg) {
            return None;
        }
        let suffix_len = psl::suffix(reg.as_bytes())?.as_bytes().len();
        let ascii_label = reg.get(..reg.len().checked_sub(suffix_len + 1)?)?;
        let label = unicode(ascii_label);
        let front: Vec<String> = host[..host.len() - reg.len()]
            .split('.')
            .filter(|l| !l.is_empty())
            .take(HOST_LABELS_MAX)
            .map(unicode)
            .collect();
        let tokens: Vec<&str> = label.split('-').filter(|t| !t.is_empty()).collect();
        let lure = tokens
            .iter()
            .chain(
                front
                    .iter()
                    .flat_map(|l| l.split('-'))
                    .collect::<Vec<_>>()
                    .iter(),
            )
            .any(|t| LURE_WORDS.contains(t))
            || LURE_WORDS.iter().any(|w| w.len() >= 4 && label.contains(w));
        let label_skeleton: String = skeleton(&label).collect();
        let token_skeletons: Vec<String> = tokens.iter().map(|t| skeleton(t).collect()).collect();
        self.brands.iter().find_map(|b| {
            b.judge(
                &label,
                &label_skeleton,
                &tokens,
                &token_skeletons,
                &front,
                lure,
            )
            .map(|k| (k, b.name.as_str()))
        })
    }
}

impl Brand {
    fn judge(
        &self,
        label: &str,
        label_skeleton: &str,
        tokens: &[&str],
        token_skeletons: &[String],
        front: &[String],
        lure: bool,
    ) -> Option<Kind> {
        let name = self.name.as_str();
        if label == name {
            return (!self.word).then_some(Kind::ForeignSuffix);
        }
        if label_skeleton == self.skeleton {
            return Some(Kind::Homoglyph);
        }
        let distinctive = !self.word;
        for (t, s) in tokens.iter().zip(token_skeletons) {
            if *t == name && tokens.len() > 1 && (distinctive || lure) {
                return Some(Kind::Embedded);
            }
            if *s == self.skeleton && *t != name && (tokens.len() == 1 || distinctive || lure) {
                return Some(Kind::Homoglyph);
            }
            if distinctive
                && name.len() >= TYPO_NAME_BYTES_MIN
                && t.len() >= TYPO_NAME_BYTES_MIN
                && t.len().abs_diff(name.len()) <= 1
                && !LURE_WORDS.contains(t)
                && (tokens.len() == 1 || lure)
                && strsim::damerau_levenshtein(t, name) == 1
            {
                return Some(Kind::Typo);
            }
        }
        let inside = label.contains(name);
        if inside
            && ((distinctive && name.len() >= SUBSTRING_NAME_BYTES_MIN)
                || (lure && name.len() >= WORD_SUBSTRING_NAME_BYTES_MIN))
        {
            return Some(Kind::Embedded);
        }
        let in_front = front
            .iter()
            .any(|l| l == name || l.split('-').any(|t| t == name));
        if in_front && (distinctive || lure) {
            return Some(Kind::Subdomain);
        }
        None
    }
}

/// A label decoded from punycode when it is one (`xn--pypal-4ve` → `pаypal`), else as is.
fn unicode(ascii: &str) -> String {
    if !ascii.contains("xn--") {
        return ascii.to_string();
    }
    idna::domain_to_unicode(ascii).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(host: &str) -> Option<Kind> {
        Brands::shipped().lookalike(host).map(|(k, _)| k)
    }

    #[test]
    fn shipped_list_parses() {
        let b = Brands::shipped();
        assert!(b.brands.len() > 50);
        assert!(b.is_official("paypal.com"));
    }

    #[test]
    fn brands_own_domains_are_clean() {
        for h in [
            "www.paypal.com",
            "click.e.fedex.com",
            "signin.aws.amazon.com",
            "apple.com",
        ] {
            assert_eq!(kind(h), None, "{h}");
        }
    }

    #[test]
    fn lookalikes() {
        assert_eq!(kind("xn--pypal-4ve.com"), Some(Kind::Homoglyph)); // Cyrillic а
        assert_eq!(kind("paypa1.com"), Some(Kind::Homoglyph));
        assert_eq!(kind("rnicrosoft.com"), Some(Kind::Homoglyph));
        assert_eq!(kind("paypall.com"), Some(Kind::Typo));
        assert_eq!(kind("amazno.com"), Some(Kind::Typo));
        assert_eq!(kind("paypal-secure-login.com"), Some(Kind::Embedded));
        assert_eq!(kind("netflixbilling.net"), Some(Kind::Embedded));
        assert_eq!(kind("apple-id-verify.com"), Some(Kind::Embedded));
        assert_eq!(kind("paypal.com.account-check.info"), Some(Kind::Subdomain));
        assert_eq!(kind("paypal.support"), Some(Kind::ForeignSuffix));
    }

    #[test]
    fn ordinary_domains_are_clean() {
        for h in [
            "salon-booking.com",
            "pineapple.com",
            "appleinsider.com",
            "chasebank-museum.org",
            "groupsupport.com",
            "zoomerang.com",
            "example.com",
            "shop-news.example.co.uk",
            "ample.com",
            "steamboat.com",
        ] {
            assert_eq!(kind(h), None, "{h}");
        }
    }

    #[test]
    fn display_names_claiming_a_brand() {
        let b = Brands::shipped();
        assert_eq!(
            b.claimed_by_name("PayPal Service", Some("paypal-notice.net")),
            Some("paypal")
        );
        assert_eq!(b.claimed_by_name("PayPal", Some("paypal.com")), None);
        assert_eq!(
            b.claimed_by_name(
                "Microsoft account team",
                Some("accountprotection.microsoft.com")
            ),
            None
        );
        assert_eq!(
            b.claimed_by_name("Google", Some("accounts.google.com")),
            None
        );
        assert_eq!(b.claimed_by_name("Apple", Some("apple-id.example")), None); // a word brand
        assert_eq!(
            b.claimed_by_name("Greenleaf Market", Some("greenleaf-market.com")),
            None
        );
        assert_eq!(b.claimed_by_name("Amazon.com", Some("amazon.com")), None);
    }

    #[test]
    fn bad_lists_are_refused() {
        assert!(Brands::parse("pp pp.com").is_err());
        assert!(Brands::parse("paypal www.paypal.com").is_err());
        assert!(Brands::parse("PayPal paypal.com").is_err());
    }
}
