//! Rule files: the TOML schema, its validation, and the bounds that keep an operator's file
//! from costing the shards memory or time.
//!
//! A file has two arrays of tables:
//!
//! ```toml
//! [[enhanced]]
//! code = "5.1.1"              # class.subject.detail; each part a number or "*"
//! category = "invalid_recipient"
//! generic = false             # true: patterns may refine it (5.7.1, 4.7.0, x.0.0)
//! class = "hard"              # optional; default from the reply code
//!
//! [[pattern]]
//! regex = "mailbox (is )?full" # case-insensitive, over the reply text
//! category = "mailbox_full"
//! class = "soft"              # optional
//! overrides_enhanced = false  # true: tried before the specific enhanced codes
//! ```
//!
//! Both kinds take an optional `note` (free text, e.g. the source of a provider's text).
//!
//! Patterns match the reply text as bytes with ASCII rules: case folding, `\w` and `\b` are
//! ASCII. SMTP reply text is ASCII (RFC 5321), a non-ASCII literal still matches its UTF-8 bytes,
//! and ASCII rules keep the lazy DFA on its fast path (a Unicode `\b` makes it give up on
//! non-ASCII input) and the behaviour the same for every reply.

use std::path::Path;

use regex::bytes::RegexBuilder;
use serde::Deserialize;

use crate::{BounceClass, Category};

/// The rules Petrel ships, embedded so a classifier never depends on a file being installed.
pub const SHIPPED_RULES: &str = include_str!("../rules/bounce-rules.toml");

/// The name errors give the shipped rules.
pub const SHIPPED_RULES_NAME: &str = "shipped bounce-rules.toml";

/// Largest rule file read, in bytes: the shipped file is about 30 KiB.
pub const RULE_FILE_BYTES_MAX: u64 = 1 << 20;

/// Most rules (enhanced plus pattern) in one file: every pattern joins a regex set that each
/// classification runs, so the count bounds the work per reply.
pub const RULES_PER_FILE_MAX: usize = 2_000;

/// Longest pattern, in bytes: provider texts are a sentence; longer is a mistake or an attack.
pub const PATTERN_LEN_BYTES_MAX: usize = 1_024;

/// The regex crate's compiled-size limit, in bytes, for one pattern and for each combined set
/// (the crate's own default is 10 MiB per regex; a set of hundreds of patterns needs more).
pub const REGEX_SIZE_BYTES_MAX: usize = 32 << 20;

/// Why a rule file was refused. Each variant names the file, and for a bad rule its section
/// (`enhanced` or `pattern`) and its 0-based index in that section.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {size_bytes} bytes, over the limit of {max_bytes}")]
    FileTooLarge {
        file: String,
        size_bytes: u64,
        max_bytes: u64,
    },
    #[error("{file}: not a valid rule file: {source}")]
    Parse {
        file: String,
        source: Box<toml::de::Error>,
    },
    #[error("{file}: {count} rules, over the limit of {max}")]
    TooManyRules {
        file: String,
        count: usize,
        max: usize,
    },
    #[error("{file}: {section} rule {index}: unknown {field} {value:?}")]
    UnknownName {
        file: String,
        section: &'static str,
        index: usize,
        field: &'static str,
        value: String,
    },
    #[error("{file}: enhanced rule {index}: bad code {code:?}: want class.subject.detail, class 4, 5 or *, numbers or *")]
    BadCode {
        file: String,
        index: usize,
        code: String,
    },
    #[error("{file}: pattern rule {index}: {len_bytes} bytes, over the limit of {max_bytes}")]
    PatternTooLong {
        file: String,
        index: usize,
        len_bytes: usize,
        max_bytes: usize,
    },
    #[error("{file}: pattern rule {index}: bad regex {regex:?}: {source}")]
    BadRegex {
        file: String,
        index: usize,
        regex: String,
        source: Box<regex::Error>,
    },
    #[error("the combined patterns do not compile within {max_bytes} bytes: {source}")]
    SetTooLarge {
        max_bytes: usize,
        source: Box<regex::Error>,
    },
}

/// An enhanced-code pattern: each part is `None` for `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CodeMatch {
    pub class: Option<u8>,
    pub subject: Option<u16>,
    pub detail: Option<u16>,
}

impl CodeMatch {
    pub fn matches(&self, (class, subject, detail): (u8, u16, u16)) -> bool {
        self.class.is_none_or(|c| c == class)
            && self.subject.is_none_or(|s| s == subject)
            && self.detail.is_none_or(|d| d == detail)
    }

    fn parse(code: &str) -> Option<CodeMatch> {
        let mut parts = code.trim().split('.');
        let class = match parts.next()? {
            "*" => None,
            "4" => Some(4),
            "5" => Some(5),
            _ => return None,
        };
        let subject = parse_wild(parts.next()?)?;
        let detail = parse_wild(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(CodeMatch {
            class,
            subject,
            detail,
        })
    }
}

/// `*` is `Some(None)`; a number of 1 to 3 digits is `Some(Some(n))`; anything else `None`.
fn parse_wild(part: &str) -> Option<Option<u16>> {
    if part == "*" {
        return Some(None);
    }
    if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok().map(Some)
}

/// What a matching rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub category: Category,
    /// `None`: the class follows the reply code.
    pub class: Option<BounceClass>,
}

#[derive(Debug, Clone)]
pub(crate) struct EnhancedRule {
    pub code: CodeMatch,
    pub generic: bool,
    pub verdict: Verdict,
}

#[derive(Debug, Clone)]
pub(crate) struct PatternRule {
    /// Already checked to compile alone, case-insensitively, within the size limit.
    pub regex: String,
    pub overrides_enhanced: bool,
    pub verdict: Verdict,
}

/// One validated rule file. Classifiers are built from a list of these, highest priority first.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub(crate) name: String,
    pub(crate) enhanced: Vec<EnhancedRule>,
    pub(crate) patterns: Vec<PatternRule>,
}

impl RuleSet {
    /// The shipped rules.
    pub fn shipped() -> Result<RuleSet, RulesError> {
        RuleSet::parse(SHIPPED_RULES_NAME, SHIPPED_RULES)
    }

    /// Parses and validates rule text; `name` is what errors call the file.
    pub fn parse(name: &str, text: &str) -> Result<RuleSet, RulesError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| RulesError::Parse {
            file: name.to_string(),
            source: Box::new(e),
        })?;
        let count = raw.enhanced.len() + raw.pattern.len();
        if count > RULES_PER_FILE_MAX {
            return Err(RulesError::TooManyRules {
                file: name.to_string(),
                count,
                max: RULES_PER_FILE_MAX,
            });
        }
        let enhanced = raw
            .enhanced
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.validate(name, i))
            .collect::<Result<_, _>>()?;
        let patterns = raw
            .pattern
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.validate(name, i))
            .collect::<Result<_, _>>()?;
        Ok(RuleSet {
            name: name.to_string(),
            enhanced,
            patterns,
        })
    }

    /// The name errors give this file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Enhanced plus pattern rules.
    pub fn rule_count(&self) -> usize {
        self.enhanced.len() + self.patterns.len()
    }
}

/// Reads and validates an operator's rule file (at most [`RULE_FILE_BYTES_MAX`]).
pub fn load_rules_file(path: &Path) -> Result<RuleSet, RulesError> {
    let file = path.display().to_string();
    let read_err = |source| RulesError::Read {
        file: file.clone(),
        source,
    };
    let size_bytes = std::fs::metadata(path).map_err(read_err)?.len();
    if size_bytes > RULE_FILE_BYTES_MAX {
        return Err(RulesError::FileTooLarge {
            file,
            size_bytes,
            max_bytes: RULE_FILE_BYTES_MAX,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    RuleSet::parse(&file, &text)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    enhanced: Vec<RawEnhanced>,
    #[serde(default)]
    pattern: Vec<RawPattern>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnhanced {
    code: String,
    category: String,
    #[serde(default)]
    generic: bool,
    class: Option<String>,
    #[allow(dead_code)] // reason: documentation for people reading the file
    note: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPattern {
    regex: String,
    category: String,
    class: Option<String>,
    #[serde(default)]
    overrides_enhanced: bool,
    #[allow(dead_code)] // reason: documentation for people reading the file
    note: Option<String>,
}

impl RawEnhanced {
    fn validate(self, file: &str, index: usize) -> Result<EnhancedRule, RulesError> {
        let verdict = verdict(file, "enhanced", index, &self.category, self.class)?;
        let code = CodeMatch::parse(&self.code).ok_or_else(|| RulesError::BadCode {
            file: file.to_string(),
            index,
            code: self.code.clone(),
        })?;
        Ok(EnhancedRule {
            code,
            generic: self.generic,
            verdict,
        })
    }
}

impl RawPattern {
    fn validate(self, file: &str, index: usize) -> Result<PatternRule, RulesError> {
        let verdict = verdict(file, "pattern", index, &self.category, self.class)?;
        if self.regex.len() > PATTERN_LEN_BYTES_MAX {
            return Err(RulesError::PatternTooLong {
                file: file.to_string(),
                index,
                len_bytes: self.regex.len(),
                max_bytes: PATTERN_LEN_BYTES_MAX,
            });
        }
        // Compiled alone so the error names this rule; the classifier compiles the set.
        if let Err(e) = RegexBuilder::new(&self.regex)
            .case_insensitive(true)
            .unicode(false)
            .size_limit(REGEX_SIZE_BYTES_MAX)
            .build()
        {
            return Err(RulesError::BadRegex {
                file: file.to_string(),
                index,
                regex: self.regex,
                source: Box::new(e),
            });
        }
        Ok(PatternRule {
            regex: self.regex,
            overrides_enhanced: self.overrides_enhanced,
            verdict,
        })
    }
}

fn verdict(
    file: &str,
    section: &'static str,
    index: usize,
    category: &str,
    class: Option<String>,
) -> Result<Verdict, RulesError> {
    let unknown = |field, value: &str| RulesError::UnknownName {
        file: file.to_string(),
        section,
        index,
        field,
        value: value.to_string(),
    };
    let category = Category::from_name(category).ok_or_else(|| unknown("category", category))?;
    let class = match class {
        None => None,
        Some(name) => Some(BounceClass::from_name(&name).ok_or_else(|| unknown("class", &name))?),
    };
    Ok(Verdict { category, class })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_is_valid_and_within_bounds() {
        let set = RuleSet::shipped().unwrap();
        assert!(set.rule_count() > 50, "{}", set.rule_count());
        assert!(set.rule_count() <= RULES_PER_FILE_MAX);
        assert!((SHIPPED_RULES.len() as u64) < RULE_FILE_BYTES_MAX);
    }

    #[test]
    fn code_patterns() {
        let m = CodeMatch::parse("5.1.1").unwrap();
        assert!(m.matches((5, 1, 1)) && !m.matches((4, 1, 1)) && !m.matches((5, 1, 10)));
        let m = CodeMatch::parse("*.2.2").unwrap();
        assert!(m.matches((4, 2, 2)) && m.matches((5, 2, 2)) && !m.matches((5, 2, 3)));
        let m = CodeMatch::parse("5.7.*").unwrap();
        assert!(m.matches((5, 7, 606)) && !m.matches((4, 7, 0)));
        for bad in ["5.1", "6.1.1", "5.1.1.1", "5.x.1", "5.1.1000", "", "5..1"] {
            assert_eq!(CodeMatch::parse(bad), None, "{bad:?}");
        }
    }

    fn err(text: &str) -> RulesError {
        RuleSet::parse("ops.toml", text).unwrap_err()
    }

    #[test]
    fn bad_files_name_the_rule_and_the_field() {
        let e = err("[[pattern]]\nregex = \"ok\"\ncategory = \"other\"\n[[pattern]]\nregex = \"(unclosed\"\ncategory = \"other\"\n");
        assert!(
            matches!(&e, RulesError::BadRegex { file, index: 1, regex, .. } if file == "ops.toml" && regex == "(unclosed"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("ops.toml: pattern rule 1: bad regex"),
            "{e}"
        );

        let e = err("[[enhanced]]\ncode = \"5.1.1\"\ncategory = \"user_unknown\"\n");
        assert!(
            matches!(&e, RulesError::UnknownName { section: "enhanced", index: 0, field: "category", value, .. } if value == "user_unknown"),
            "{e}"
        );

        let e = err("[[pattern]]\nregex = \"x\"\ncategory = \"other\"\nclass = \"permanent\"\n");
        assert!(
            matches!(
                &e,
                RulesError::UnknownName {
                    section: "pattern",
                    field: "class",
                    ..
                }
            ),
            "{e}"
        );

        let e = err("[[enhanced]]\ncode = \"5.1\"\ncategory = \"other\"\n");
        assert!(
            matches!(&e, RulesError::BadCode { index: 0, code, .. } if code == "5.1"),
            "{e}"
        );

        let e = err("[[pattern]]\nregexp = \"x\"\ncategory = \"other\"\n");
        assert!(matches!(&e, RulesError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("regexp"), "{e}");

        let e = err("this is not toml =");
        assert!(matches!(&e, RulesError::Parse { .. }), "{e}");
    }

    #[test]
    fn size_bounds_are_enforced() {
        let long = "a".repeat(PATTERN_LEN_BYTES_MAX + 1);
        let e = err(&format!(
            "[[pattern]]\nregex = \"{long}\"\ncategory = \"other\"\n"
        ));
        assert!(
            matches!(e, RulesError::PatternTooLong { index: 0, len_bytes, .. } if len_bytes == PATTERN_LEN_BYTES_MAX + 1)
        );
        let ok = "a".repeat(PATTERN_LEN_BYTES_MAX);
        RuleSet::parse(
            "ops.toml",
            &format!("[[pattern]]\nregex = \"{ok}\"\ncategory = \"other\"\n"),
        )
        .unwrap();

        let many =
            "[[enhanced]]\ncode = \"5.1.1\"\ncategory = \"other\"\n".repeat(RULES_PER_FILE_MAX + 1);
        let e = err(&many);
        assert!(
            matches!(e, RulesError::TooManyRules { count, .. } if count == RULES_PER_FILE_MAX + 1)
        );

        // A short pattern that compiles past the size limit: nested counted repetitions.
        let e = err("[[pattern]]\nregex = '((a{1000}){1000}){100}'\ncategory = \"other\"\n");
        assert!(matches!(e, RulesError::BadRegex { .. }), "{e}");
    }

    #[test]
    fn files_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let e = load_rules_file(&missing).unwrap_err();
        assert!(
            matches!(&e, RulesError::Read { file, .. } if file.ends_with("missing.toml")),
            "{e}"
        );

        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; RULE_FILE_BYTES_MAX as usize + 1]).unwrap();
        assert!(matches!(
            load_rules_file(&big).unwrap_err(),
            RulesError::FileTooLarge { .. }
        ));

        let good = dir.path().join("good.toml");
        std::fs::write(&good, "[[pattern]]\nregex = \"x\"\ncategory = \"other\"\n").unwrap();
        let set = load_rules_file(&good).unwrap();
        assert_eq!(set.rule_count(), 1);
        assert!(set.name().ends_with("good.toml"));
    }
}
