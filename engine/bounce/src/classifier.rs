//! The compiled classifier: rule sets merged by priority, patterns in two regex sets.
//!
//! Classification runs per failed recipient per attempt, tens of thousands of times a second
//! across shards, so everything is decided at build time: the enhanced rules are one short list
//! scanned in order (the first match is the reply's enhanced rule), and the patterns are one
//! `RegexSet` (overriding patterns first, then ordinary ones) that scans the text once; in each
//! tier the lowest matching index is the first rule in priority order. The classifier is immutable and `Send + Sync`: build it once and share it.

use std::path::Path;

use regex::bytes::{RegexSet, RegexSetBuilder};

use crate::rules::{
    load_rules_file, EnhancedRule, PatternRule, RuleSet, RulesError, Verdict, REGEX_SIZE_BYTES_MAX,
};
use crate::{BounceClass, Category, Classification, LocalFailure, Reply};

/// Maps replies and local failures to a [`Classification`]. See the crate docs for the order in
/// which rules decide.
#[derive(Debug, Clone)]
pub struct BounceClassifier {
    /// Enhanced rules, highest priority first. The first one whose code matches is the reply's
    /// enhanced rule: it decides at once unless it is `generic`, then only after the patterns.
    enhanced: Vec<EnhancedRule>,
    patterns: Patterns,
    rule_count: usize,
}

/// Every pattern in one set, the overriding ones first in priority order, then the ordinary
/// ones: a single scan of the text answers both tiers.
#[derive(Debug, Clone)]
struct Patterns {
    set: RegexSet,
    /// `verdicts[i]` belongs to the set's pattern `i`.
    verdicts: Vec<Verdict>,
    /// Patterns `0..overriding` have `overrides_enhanced = true`.
    overriding: usize,
}

impl Patterns {
    fn build(rules: &[&PatternRule]) -> Result<Patterns, RulesError> {
        let overriding = rules.iter().take_while(|r| r.overrides_enhanced).count();
        let (patterns, verdicts): (Vec<&str>, Vec<Verdict>) =
            rules.iter().map(|r| (r.regex.as_str(), r.verdict)).unzip();
        let set = RegexSetBuilder::new(patterns)
            .case_insensitive(true)
            .unicode(false)
            .size_limit(REGEX_SIZE_BYTES_MAX)
            .dfa_size_limit(REGEX_SIZE_BYTES_MAX)
            .build()
            .map_err(|e| RulesError::SetTooLarge {
                max_bytes: REGEX_SIZE_BYTES_MAX,
                source: Box::new(e),
            })?;
        Ok(Patterns {
            set,
            verdicts,
            overriding,
        })
    }

    /// The verdicts of the first overriding and the first ordinary pattern that match `text`.
    fn first_matches(&self, text: &str) -> (Option<Verdict>, Option<Verdict>) {
        if self.verdicts.is_empty() {
            return (None, None);
        }
        let matches = self.set.matches(text.as_bytes());
        // Ascending indices: the first is the highest-priority match of its tier.
        let mut indices = matches.iter();
        let Some(first) = indices.next() else {
            return (None, None);
        };
        let verdict = |i: usize| self.verdicts.get(i).copied();
        if first >= self.overriding {
            return (None, verdict(first));
        }
        let ordinary = indices.find(|&i| i >= self.overriding).and_then(verdict);
        (verdict(first), ordinary)
    }
}

impl BounceClassifier {
    /// The shipped rules alone.
    ///
    /// # Panics
    /// Never in a released build: the shipped file is embedded and a unit test compiles it.
    pub fn shipped() -> BounceClassifier {
        RuleSet::shipped()
            .and_then(|set| BounceClassifier::from_rule_sets(&[set]))
            .expect("the embedded bounce-rules.toml is valid: tested by the_shipped_file_is_valid")
    }

    /// The operator's file at `path` first, then the shipped rules.
    pub fn with_operator_rules(path: &Path) -> Result<BounceClassifier, RulesError> {
        let operator = load_rules_file(path)?;
        BounceClassifier::from_rule_sets(&[operator, RuleSet::shipped()?])
    }

    /// A classifier from rule sets, highest priority first (the control plane builds one from
    /// rules it stores as text, with [`RuleSet::parse`]).
    pub fn from_rule_sets(sets: &[RuleSet]) -> Result<BounceClassifier, RulesError> {
        let enhanced = || sets.iter().flat_map(|s| s.enhanced.iter());
        let patterns = || sets.iter().flat_map(|s| s.patterns.iter());
        let ordered: Vec<&PatternRule> = patterns()
            .filter(|r| r.overrides_enhanced)
            .chain(patterns().filter(|r| !r.overrides_enhanced))
            .collect();
        Ok(BounceClassifier {
            enhanced: enhanced().cloned().collect(),
            patterns: Patterns::build(&ordered)?,
            rule_count: sets.iter().map(RuleSet::rule_count).sum(),
        })
    }

    /// Rules in all sets.
    pub fn rule_count(&self) -> usize {
        self.rule_count
    }

    /// Classifies a remote reply: overriding patterns, specific enhanced codes, patterns,
    /// generic enhanced codes, then the reply code alone.
    pub fn classify_reply(&self, reply: &Reply<'_>) -> Classification {
        let enhanced = reply
            .enhanced
            .and_then(|code| self.enhanced.iter().find(|r| r.code.matches(code)));
        let specific = enhanced.filter(|r| !r.generic).map(|r| r.verdict);
        let generic = enhanced.filter(|r| r.generic).map(|r| r.verdict);
        let (overriding, ordinary) = self.patterns.first_matches(reply.text);
        let verdict = overriding.or(specific).or(ordinary).or(generic);
        let code_class = BounceClass::from_reply_code(reply.code);
        match verdict {
            Some(v) => Classification {
                category: v.category,
                class: v.class.unwrap_or(code_class),
            },
            None => Classification {
                category: match code_class {
                    BounceClass::Soft => Category::Transient,
                    BounceClass::Hard => Category::Other,
                },
                class: code_class,
            },
        }
    }

    /// Classifies a local failure; a refusal at the greeting, EHLO or STARTTLS is a reply and
    /// goes through the rules like any other.
    pub fn classify_local(
        &self,
        failure: &LocalFailure,
        reply: Option<&Reply<'_>>,
    ) -> Classification {
        match reply {
            Some(r) => self.classify_reply(r),
            None => failure.classification(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> RuleSet {
        RuleSet::parse("ops.toml", text).unwrap()
    }

    fn classify(c: &BounceClassifier, line: &str) -> (Category, BounceClass) {
        let r = c.classify_reply(&Reply::parse(line).unwrap());
        (r.category, r.class)
    }

    const TOY: &str = r#"
[[enhanced]]
code = "5.1.1"
category = "invalid_recipient"
[[enhanced]]
code = "*.7.1"
category = "policy_block"
generic = true
[[enhanced]]
code = "*.2.2"
category = "mailbox_full"
[[pattern]]
regex = "too many recipients this hour"
category = "rate_limited"
class = "soft"
overrides_enhanced = true
[[pattern]]
regex = "spamhaus"
category = "spam_block"
[[pattern]]
regex = "does not exist"
category = "bad_domain"
"#;

    #[test]
    fn precedence_follows_the_documented_order() {
        let c = BounceClassifier::from_rule_sets(&[rules(TOY)]).unwrap();
        // A specific code decides, even against a matching ordinary pattern.
        assert_eq!(
            classify(&c, "550 5.1.1 user does not exist"),
            (Category::InvalidRecipient, BounceClass::Hard)
        );
        // An overriding pattern beats the specific code, and its class beats the reply code.
        assert_eq!(
            classify(
                &c,
                "550 5.1.1 <a@b> - 192.0.2.1 has sent to too many recipients this hour"
            ),
            (Category::RateLimited, BounceClass::Soft)
        );
        // A generic code lets a pattern refine it...
        assert_eq!(
            classify(&c, "554 5.7.1 listed on Spamhaus SBL"),
            (Category::SpamBlock, BounceClass::Hard)
        );
        // ...and decides when none matches.
        assert_eq!(
            classify(&c, "550 5.7.1 go away"),
            (Category::PolicyBlock, BounceClass::Hard)
        );
        assert_eq!(
            classify(&c, "451 4.7.1 go away"),
            (Category::PolicyBlock, BounceClass::Soft)
        );
        // Without an enhanced code the patterns decide.
        assert_eq!(
            classify(&c, "553 SPAMHAUS listing"),
            (Category::SpamBlock, BounceClass::Hard)
        );
        // The class follows the reply code: a 4xx mailbox full stays soft.
        assert_eq!(
            classify(&c, "452 4.2.2 over quota"),
            (Category::MailboxFull, BounceClass::Soft)
        );
        assert_eq!(
            classify(&c, "552 5.2.2 over quota"),
            (Category::MailboxFull, BounceClass::Hard)
        );
        // Nothing matches: the reply code alone.
        assert_eq!(
            classify(&c, "451 try later"),
            (Category::Transient, BounceClass::Soft)
        );
        assert_eq!(
            classify(&c, "550 5.9.9 no idea"),
            (Category::Other, BounceClass::Hard)
        );
        assert_eq!(classify(&c, "550"), (Category::Other, BounceClass::Hard));
    }

    #[test]
    fn operator_rules_come_first_in_every_tier() {
        let ops = rules(
            r#"
[[enhanced]]
code = "5.1.1"
category = "inactive_mailbox"
[[pattern]]
regex = "spamhaus"
category = "policy_block"
class = "soft"
"#,
        );
        let c = BounceClassifier::from_rule_sets(&[ops, rules(TOY)]).unwrap();
        assert_eq!(c.rule_count(), 8);
        assert_eq!(
            classify(&c, "550 5.1.1 nope"),
            (Category::InactiveMailbox, BounceClass::Hard)
        );
        assert_eq!(
            classify(&c, "554 5.7.1 Spamhaus"),
            (Category::PolicyBlock, BounceClass::Soft)
        );
        // Rules the operator did not touch still apply.
        assert_eq!(
            classify(&c, "552 5.2.2 full"),
            (Category::MailboxFull, BounceClass::Hard)
        );
    }

    #[test]
    fn an_operator_pattern_beats_a_specific_code_only_when_overriding() {
        let ops = rules(
            r#"
[[pattern]]
regex = "mailbox is frozen"
category = "inactive_mailbox"
[[pattern]]
regex = "moved away"
category = "inactive_mailbox"
class = "soft"
overrides_enhanced = true
"#,
        );
        let c = BounceClassifier::from_rule_sets(&[ops, rules(TOY)]).unwrap();
        // Ordinary: the shipped specific 5.1.1 still decides.
        assert_eq!(
            classify(&c, "550 5.1.1 mailbox is frozen"),
            (Category::InvalidRecipient, BounceClass::Hard)
        );
        // Without a specific code, the ordinary operator pattern decides.
        assert_eq!(
            classify(&c, "550 5.7.1 mailbox is frozen"),
            (Category::InactiveMailbox, BounceClass::Hard)
        );
        // Overriding: beats the code, and the operator's overriding rule comes before the
        // shipped one when both match.
        assert_eq!(
            classify(&c, "550 5.1.1 moved away"),
            (Category::InactiveMailbox, BounceClass::Soft)
        );
        assert_eq!(
            classify(&c, "550 5.1.1 moved away, too many recipients this hour"),
            (Category::InactiveMailbox, BounceClass::Soft)
        );
        // An overriding match does not hide the ordinary tier from a reply it does not match.
        assert_eq!(
            classify(&c, "554 Spamhaus"),
            (Category::SpamBlock, BounceClass::Hard)
        );
    }

    #[test]
    fn operator_file_overrides_the_shipped_rules() {
        let shipped = BounceClassifier::shipped();
        let line = "550 5.7.1 Service unavailable; client [192.0.2.1] blocked using Spamhaus";
        assert_eq!(classify(&shipped, line).0, Category::SpamBlock);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops.toml");
        std::fs::write(&path, "[[pattern]]\nregex = 'blocked using spamhaus'\ncategory = 'policy_block'\nclass = 'soft'\n").unwrap();
        let c = BounceClassifier::with_operator_rules(&path).unwrap();
        assert_eq!(
            classify(&c, line),
            (Category::PolicyBlock, BounceClass::Soft)
        );
        assert_eq!(c.rule_count(), shipped.rule_count() + 1);

        std::fs::write(&path, "[[pattern]]\nregex = '('\ncategory = 'other'\n").unwrap();
        let e = BounceClassifier::with_operator_rules(&path).unwrap_err();
        assert!(
            matches!(&e, RulesError::BadRegex { file, index: 0, .. } if file.ends_with("ops.toml")),
            "{e}"
        );
    }

    #[test]
    fn empty_rule_sets_fall_back_to_the_reply_code() {
        let c = BounceClassifier::from_rule_sets(&[rules("")]).unwrap();
        assert_eq!(
            classify(&c, "421 4.7.0 later"),
            (Category::Transient, BounceClass::Soft)
        );
        assert_eq!(
            classify(&c, "554 5.7.1 no"),
            (Category::Other, BounceClass::Hard)
        );
    }

    #[test]
    fn a_refusal_reply_goes_through_the_rules() {
        let c = BounceClassifier::shipped();
        let reply = Reply::parse(
            "554 5.7.1 Service unavailable; client [192.0.2.1] blocked using Spamhaus",
        )
        .unwrap();
        let got = c.classify_local(&LocalFailure::Protocol, Some(&reply));
        assert_eq!(got.category, Category::SpamBlock);
        let got = c.classify_local(&LocalFailure::Timeout, None);
        assert_eq!(
            (got.category, got.class),
            (Category::Transient, BounceClass::Soft)
        );
    }

    #[test]
    fn shipped_rules_tell_a_missing_domain_from_a_missing_user() {
        let c = BounceClassifier::shipped();
        assert_eq!(
            classify(&c, "550 Domain does not exist").0,
            Category::BadDomain
        );
        assert_eq!(
            classify(&c, "550 User does not exist").0,
            Category::InvalidRecipient
        );
        // The sender's domain is an authentication matter, not the recipient's.
        assert_eq!(
            classify(&c, "450 4.1.8 Sender address rejected: Domain not found").0,
            Category::AuthFailure
        );
    }

    #[test]
    fn is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<BounceClassifier>();
    }
}
