//! The corpus of real bounce replies (`testdata/bounce-corpus.tsv`), each with its expected
//! category and class, classified by the shipped rules: every line must come out as expected.

use petrel_bounce::{BounceClass, BounceClassifier, Category, Reply};

/// The corpus: `category<TAB>class<TAB>source<TAB>reply`, `#` comments.
const CORPUS: &str = include_str!("../testdata/bounce-corpus.tsv");

/// The issue asks for at least this many real replies.
const CORPUS_LINES_MIN: usize = 150;

struct Case<'a> {
    line_no: usize,
    category: Category,
    class: BounceClass,
    source: &'a str,
    reply: &'a str,
}

fn cases() -> Vec<Case<'static>> {
    let mut out = Vec::new();
    for (i, line) in CORPUS.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            fields.len(),
            4,
            "line {}: want 4 tab-separated fields",
            i + 1
        );
        out.push(Case {
            line_no: i + 1,
            category: Category::from_name(fields[0])
                .unwrap_or_else(|| panic!("line {}: category {:?}", i + 1, fields[0])),
            class: BounceClass::from_name(fields[1])
                .unwrap_or_else(|| panic!("line {}: class {:?}", i + 1, fields[1])),
            source: fields[2],
            reply: fields[3],
        });
    }
    out
}

#[test]
fn every_corpus_reply_is_classified_as_expected() {
    let classifier = BounceClassifier::shipped();
    let cases = cases();
    assert!(cases.len() >= CORPUS_LINES_MIN, "{} lines", cases.len());
    let mut wrong = Vec::new();
    for c in &cases {
        let reply = Reply::parse(c.reply)
            .unwrap_or_else(|| panic!("line {}: not a reply: {:?}", c.line_no, c.reply));
        let got = classifier.classify_reply(&reply);
        if (got.category, got.class) != (c.category, c.class) {
            wrong.push(format!(
                "line {}: want {} {}, got {} {} ({}): {}",
                c.line_no, c.category, c.class, got.category, got.class, c.source, c.reply
            ));
        }
    }
    let right = cases.len() - wrong.len();
    println!("corpus accuracy: {right}/{} lines", cases.len());
    assert!(
        wrong.is_empty(),
        "{} of {} wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn the_corpus_is_real_and_varied() {
    let cases = cases();
    let mut seen = std::collections::HashSet::new();
    for c in &cases {
        assert!(!c.source.trim().is_empty(), "line {}: no source", c.line_no);
        assert!(seen.insert(c.reply), "line {}: duplicate reply", c.line_no);
    }
    // Every category but `other`'s neighbours appears, so no rule family goes untested.
    for category in Category::ALL {
        assert!(
            cases.iter().any(|c| c.category == category),
            "no corpus line for {category}"
        );
    }
    assert!(cases.iter().any(|c| c.class == BounceClass::Soft));
}
