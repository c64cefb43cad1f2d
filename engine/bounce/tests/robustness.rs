//! Reply text comes from peers: parsing and classifying it never panics, whatever it holds.

use petrel_bounce::{BounceClass, BounceClassifier, Reply};
use proptest::prelude::*;

fn classifier() -> &'static BounceClassifier {
    static CLASSIFIER: std::sync::OnceLock<BounceClassifier> = std::sync::OnceLock::new();
    CLASSIFIER.get_or_init(BounceClassifier::shipped)
}

proptest! {
    #[test]
    fn any_line_parses_or_not_without_panicking(line in ".{0,300}") {
        if let Some(r) = Reply::parse(&line) {
            prop_assert!((200..600).contains(&r.code));
            let c = classifier().classify_reply(&r);
            if (400..500).contains(&r.code) {
                // Only an explicit `class = "hard"` rule could harden a 4xx; the shipped file has
                // none.
                prop_assert_eq!(c.class, BounceClass::Soft, "{:?}", line);
            }
        }
    }

    #[test]
    fn any_reply_classifies(code in 400u16..600, class in 4u8..=5, subject in 0u16..1000,
                            detail in 0u16..1000, text in "\\PC{0,400}") {
        // The shipped rules only ever soften a class, so a 4xx reply is always soft.
        for enhanced in [Some((class, subject, detail)), None] {
            let c = classifier().classify_reply(&Reply::new(code, enhanced, &text));
            if code < 500 {
                prop_assert_eq!(c.class, BounceClass::Soft);
            }
        }
    }
}
