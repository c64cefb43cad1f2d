//! No input panics the checker, and every bound holds: arbitrary bytes, mutated corpus samples,
//! and hostile shapes (megabytes of links, forms, boundaries, header lines, deep nesting).

use std::path::Path;

use petrel_content::limits::HITS_MAX;
use petrel_content::{Checker, CheckerConfig, Sender, Verdict};
use proptest::prelude::*;

fn checker() -> Checker {
    Checker::new(&CheckerConfig::default()).unwrap()
}

fn check(mail: &[u8]) -> Verdict {
    let v = checker().check(mail, &Sender::default());
    assert!(v.hits.len() <= HITS_MAX);
    assert_eq!(v.score, v.hits.iter().map(|h| h.rule.score()).sum::<u32>());
    v
}

fn corpus() -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for dir in ["legit", "phish"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(dir);
        for e in std::fs::read_dir(dir).unwrap() {
            all.push(std::fs::read(e.unwrap().path()).unwrap());
        }
    }
    all.sort();
    all
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        check(&bytes);
    }

    #[test]
    fn html_like_soup(parts in proptest::collection::vec(prop_oneof![
        Just("<a href=\"".to_string()), Just("\">".to_string()), Just("</a>".to_string()),
        Just("<form action=".to_string()), Just("<input type=password>".to_string()),
        Just("www.paypal.com".to_string()), Just("http://xn--".to_string()),
        Just("http://[::1]@".to_string()), Just("javascript:".to_string()),
        Just("\r\n--b\r\n".to_string()), Just("Content-Type: text/html\r\n\r\n".to_string()),
        "[a-zA-Z0-9.:/@\\-é]{0,12}",
    ], 0..200)) {
        let mut mail = b"From: <a@shop.com>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        mail.extend(parts.concat().into_bytes());
        check(&mail);
    }

    #[test]
    fn mutated_corpus(seed in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>(),
                      flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..32)) {
        let corpus = corpus();
        let mut mail = corpus[seed.index(corpus.len())].clone();
        for (at, byte) in flips {
            let i = at.index(mail.len());
            mail[i] = byte;
        }
        let end = cut.index(mail.len() + 1);
        check(&mail[..end]);
    }
}

#[test]
fn hostile_shapes_stay_bounded() {
    let mb = 4 << 20;
    let links = "<a href=\"http://192.0.2.1/x\">www.paypal.com</a>".repeat(mb / 48);
    let v = check(format!("Content-Type: text/html\r\n\r\n{links}").as_bytes());
    assert!(v.blocked());
    check(
        &"<form action=http://a.com><input type=password>"
            .repeat(mb / 48)
            .into_bytes(),
    );
    check(&b"--b\r\n".repeat(mb / 5));
    check(&b"a:b\r\n".repeat(mb / 5));
    check(&"<div>".repeat(mb / 5).into_bytes());
    check(&"<a href=x>".repeat(mb / 10).into_bytes());
    let nested = "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n".repeat(2000);
    check(nested.as_bytes());
    let long_href = format!(
        "Content-Type: text/html\r\n\r\n<a href=\"https://{}.com/\">x</a>",
        "a".repeat(1 << 20)
    );
    check(long_href.as_bytes());
    check(&[]);
    check(&[0xff; 100_000]);
}

#[test]
fn a_phish_after_the_scanned_window_is_not_scored() {
    // The documented limit: content past MESSAGE_BYTES_SCANNED_MAX is not read.
    let pad = "x".repeat(petrel_content::limits::MESSAGE_BYTES_SCANNED_MAX);
    let mail = format!(
        "Content-Type: text/html\r\n\r\n{pad}<a href=\"https://paypa1.com/\">www.paypal.com</a>"
    );
    assert!(!check(mail.as_bytes()).blocked());
}
