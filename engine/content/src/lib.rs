//! Phishing-style content, refused before send. Bytes in, a [`Verdict`] out: no I/O, no clock,
//! no glommio, so the engine calls it on a shard between end-of-data and DKIM signing, and a
//! test, a bench or a fuzzer can feed it anything.
//!
//! # Map
//!
//! | module | owns |
//! |---|---|
//! | `extract` | the message's MIME parts through `mail-parser` (bounded window, line pre-count), raw HTML scan as the fallback |
//! | `html` | the bounded HTML scan (`html5gum` tokens): links with their visible text, forms with credential fields, visible text |
//! | `domain` | hosts of hrefs and form actions, the domain a link's text shows, registrable domains (`psl`) |
//! | [`brands`] | the shipped brand list (`data/brands.txt`) and look-alikes: homoglyphs (UTS #39 skeletons, punycode decoded), one edit, brand embedded, brand in a subdomain, brand under a foreign suffix |
//! | [`rules`] | the scored rule set ([`Rule`]: name, score) |
//! | [`limits`] | every size and count bound, named, with its reason |
//!
//! # False positives: what keeps legitimate mail clean
//!
//! - Link text is compared with its href only when the text itself shows a URL or a domain
//!   (`www.shop.example`, `https://shop.example/x`); "Track your order" never is.
//! - Registrable domains are compared, not hosts: `click.shop.example` is `shop.example`.
//! - A click-tracking redirect is the sender's own when its host belongs to the From domain's
//!   registrable domain, to a domain of the sender's tenant ([`Sender::own_domain`]), or to a
//!   configured redirect domain ([`CheckerConfig::redirect_domains`]: an ESP's shared
//!   tracking domain). Such a link never scores a mismatch (it still counts for look-alikes).
//! - Official domains of one brand are one site (`twitter.com` and `x.com`).
//! - Everyday-word brand names (apple, booking, chase) score only as homoglyphs or next to a
//!   lure word, so `salon-booking.com` is clean; edit distance needs five letters.
//!
//! # Measured on the corpus (`testdata/`, `tests/corpus.rs`)
//!
//! 25 phishing samples, 25 refused (100 %; lowest score 50); 45 legitimate transactional and
//! marketing mails (receipts, resets from the brand's own domain, shipping notices, security
//! notices, newsletters through the sender's, the tenant's and three ESPs' click-tracking
//! domains), 0 refused (false-positive rate 0 %; highest score 35, the ESP newsletters that link
//! `instagram.com/<shop>` through their tracking domain). Every sample's score and rules are
//! printed by `cargo test -p petrel-content --test corpus -- --nocapture`. The corpus is written
//! for this test, not collected: the figures say the rules do what they claim on the shapes
//! it covers, not what a production mix will measure.
//!
//! # Cost
//!
//! `benches/check.rs` checks a typical 10 KB HTML newsletter (multipart/alternative, 30 links
//! through a click-tracking domain), a phishing sample and a short plain message. Measured on
//! the shared 2-core development machine while other builds ran (load average 7 to 10, the
//! bench at `nice -n 19`, so these are upper bounds), criterion medians: newsletter 425 µs,
//! phishing sample (1.6 KB) 42 µs, short plain message 3.2 µs. An earlier run under load
//! average 13 gave 1.6 ms for the newsletter, whose CPU time (`perf stat -e task-clock` over
//! 5,000 checks) was about 200 µs: most of the wall time is waiting for a CPU. About half the
//! CPU is the HTML tokenizer (`html5gum`), a tenth `mail-parser`, the brand checks a few per
//! cent; a lighter scanner for the links and forms alone is where to look first if HTML-heavy
//! submissions show up in the relay's CPU.
//!
//! The check runs once per message of a tenant or an authenticated client, on the shard,
//! before signing; relay without either is not checked. For scale: the whole signing relay
//! costs about 48 µs of CPU per short message (BENCHMARKS.md, Ed25519), so an HTML check is
//! not free next to it; the `plain_short` case of the bench (a relay benchmark's message) is
//! what the relay benchmarks pay.
//!
//! # Example
//!
//! ```
//! use petrel_content::{Checker, CheckerConfig, Sender};
//!
//! let checker = Checker::new(&CheckerConfig::default())?;
//! let mail = b"From: <alerts@secure-mail.example>\r\nSubject: Action needed\r\n\
//! Content-Type: text/html\r\n\r\n<a href=\"https://paypal-account-verify.com/\">www.paypal.com</a>\r\n";
//! let verdict = checker.check(mail, &Sender::default());
//! assert!(verdict.blocked());
//! assert_eq!(verdict.rule_names(), "link_text_mismatch, lookalike_domain");
//! # Ok::<(), petrel_content::ContentError>(())
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod brands;
mod domain;
mod error;
mod extract;
mod html;
pub mod limits;
pub mod rules;

use std::collections::HashSet;

pub use brands::Brands;
pub use error::ContentError;
pub use rules::{Hit, Rule};

/// The default refusal threshold: one strong rule (60 or more), or the classic signals together.
pub const PHISHING_THRESHOLD_DEFAULT: u32 = 50;

/// How the checker is set up (the engine's `[content]` section).
#[derive(Debug, Clone)]
pub struct CheckerConfig {
    /// Refuse at this score or more (at least 1).
    pub threshold: u32,
    /// Registrable domains of shared click-tracking redirects (an ESP's `click.esp.example`):
    /// a link through them is the sender's own.
    pub redirect_domains: Vec<String>,
}

impl Default for CheckerConfig {
    fn default() -> Self {
        CheckerConfig {
            threshold: PHISHING_THRESHOLD_DEFAULT,
            redirect_domains: Vec::new(),
        }
    }
}

/// Who sends the message, as the engine knows it.
pub struct Sender<'a> {
    /// The From domain the engine found (the message's own From header when None).
    pub from_domain: Option<&'a str>,
    /// Whether a host belongs to the sender's tenant (one of its sending domains, or below one).
    pub own_domain: &'a dyn Fn(&str) -> bool,
}

impl Default for Sender<'_> {
    fn default() -> Self {
        Sender {
            from_domain: None,
            own_domain: &|_| false,
        }
    }
}

/// The checker: the brand list and the threshold, built once and shared (it is `Sync`).
#[derive(Debug, Clone)]
pub struct Checker {
    brands: Brands,
    threshold: u32,
    redirect: HashSet<String>,
}

impl Checker {
    /// A checker with the shipped brand list.
    pub fn new(config: &CheckerConfig) -> Result<Checker, ContentError> {
        Checker::with_brands(config, Brands::shipped())
    }

    /// A checker with another brand list.
    pub fn with_brands(config: &CheckerConfig, brands: Brands) -> Result<Checker, ContentError> {
        if config.threshold == 0 {
            return Err(ContentError::ZeroThreshold);
        }
        let mut redirect = HashSet::new();
        for d in &config.redirect_domains {
            let d = d.trim().to_ascii_lowercase();
            if domain::registrable(&d) != Some(d.as_str()) {
                return Err(ContentError::RedirectDomain { domain: d });
            }
            redirect.insert(d);
        }
        Ok(Checker {
            brands,
            threshold: config.threshold,
            redirect,
        })
    }

    /// Scores one message (the raw RFC 5322 bytes). Never panics; reads at most
    /// [`limits::MESSAGE_BYTES_SCANNED_MAX`] bytes of it.
    pub fn check(&self, message: &[u8], sender: &Sender) -> Verdict {
        let content = extract::extract(message);
        let hits = rules::run(&content, sender, &self.brands, &self.redirect).0;
        Verdict {
            score: hits.iter().map(|h| h.rule.score()).sum(),
            threshold: self.threshold,
            hits,
        }
    }
}

/// What the checker found in one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The fired rules' scores added up.
    pub score: u32,
    /// The threshold it was judged by.
    pub threshold: u32,
    /// Each fired rule once, with what fired it first.
    pub hits: Vec<Hit>,
}

impl Verdict {
    /// Whether the message is refused.
    pub fn blocked(&self) -> bool {
        self.score >= self.threshold
    }

    /// The fired rules' names, comma-separated (for the refusal reply).
    pub fn rule_names(&self) -> String {
        let names: Vec<&str> = self.hits.iter().map(|h| h.rule.name()).collect();
        names.join(", ")
    }
}
