//! Bounce classification: what a failed delivery attempt means, as a category and a class.
//!
//! Every negative SMTP reply (code, RFC 3463 enhanced code, text) and every local failure (DNS,
//! TLS, timeout, refused connection) maps to one [`Category`] and one [`BounceClass`]. The
//! `bounced` and `deferred` events carry both, and the control plane shows and filters by them,
//! so this crate is pure (no glommio, no sockets, no clock) and both sides depend on it.
//!
//! # Rules are data
//!
//! The rules ship as `rules/bounce-rules.toml`, embedded in the binary ([`SHIPPED_RULES`]); an
//! operator adds a file of the same schema with [`BounceClassifier::with_operator_rules`]. A file
//! has `[[enhanced]]` rules (RFC 3463 codes, with `*` wildcards) and `[[pattern]]` rules (ordered,
//! case-insensitive regular expressions over the reply text). The order of the decision, first
//! answer wins:
//!
//! 1. `[[pattern]]` rules with `overrides_enhanced = true`: provider texts known to contradict
//!    their own enhanced code (a 5.1.1 that is really a rate limit).
//! 2. The first `[[enhanced]]` rule whose code matches, if it is specific: a code that says what
//!    it means (5.1.1, 5.2.2, 5.7.26).
//! 3. Ordinary `[[pattern]]` rules: the big mailbox providers' own texts.
//! 4. That first matching `[[enhanced]]` rule, if it is `generic = true` (5.0.0, 5.7.1, 4.7.0,
//!    ...): codes that providers use for anything, so the patterns had the first say.
//! 5. The reply code alone: 4xx is `transient`, 5xx is `other`.
//!
//! Within each step the operator's rules come before the shipped ones, in file order, so an
//! operator overrides a shipped rule by writing one that matches first.
//!
//! # Class
//!
//! The class is the receiver's own verdict: 5xx is [`BounceClass::Hard`], 4xx is
//! [`BounceClass::Soft`], as KumoMTA and PowerMTA record it. A rule may override it with
//! `class = "soft"` where providers are known to send 5xx for a condition that passes (per-hour
//! rate limits), or `class = "hard"`. A 4xx "mailbox full" therefore stays soft and a 552 one is
//! hard. Suppression decisions should key on the category (`invalid_recipient`, `bad_domain`,
//! `inactive_mailbox`), not on the class alone: a 5xx `spam_block` says nothing about the
//! recipient's address.
//!
//! # Example
//!
//! ```
//! use petrel_bounce::{BounceClassifier, BounceClass, Category, Reply};
//!
//! let classifier = BounceClassifier::shipped();
//! let reply = Reply::parse("550 5.1.1 The email account that you tried to reach does not exist.")
//!     .expect("a reply line");
//! let c = classifier.classify_reply(&reply);
//! assert_eq!((c.category, c.class), (Category::InvalidRecipient, BounceClass::Hard));
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod category;
mod classifier;
mod local;
mod reply;
mod rules;

pub use category::{BounceClass, Category, Classification};
pub use classifier::BounceClassifier;
pub use local::{DnsFailure, LocalFailure};
pub use reply::Reply;
pub use rules::{
    load_rules_file, RuleSet, RulesError, PATTERN_LEN_BYTES_MAX, REGEX_SIZE_BYTES_MAX,
    RULES_PER_FILE_MAX, RULE_FILE_BYTES_MAX, SHIPPED_RULES, SHIPPED_RULES_NAME,
};
