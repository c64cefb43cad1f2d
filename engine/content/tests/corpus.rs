//! The corpus: every phishing sample in `testdata/phish` is refused, no legitimate mail in
//! `testdata/legit` is. Prints the measured figures (`-- --nocapture`), which the crate docs
//! quote.
//!
//! A legitimate sample may carry `X-Test-Tenant-Domains: a.example b.example`: the domains its
//! tenant owns in the engine's policy (a click-tracking domain registered to the tenant), which
//! the engine hands the checker as [`Sender::own_domain`]. The operator's configured redirect
//! domains are [`REDIRECT_DOMAINS`] (three ESPs' shared click-tracking domains).

use std::path::{Path, PathBuf};

use petrel_content::{Checker, CheckerConfig, Sender, Verdict, PHISHING_THRESHOLD_DEFAULT};

/// The operator's `content.redirect_domains` in this test.
const REDIRECT_DOMAINS: &[&str] = &["sendgrid.net", "list-manage.com", "mjt.lu"];
/// Samples each directory must hold, at least.
const LEGIT_SAMPLES_MIN: usize = 40;
const PHISH_SAMPLES_MIN: usize = 20;

fn samples(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(dir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

fn checker() -> Checker {
    Checker::new(&CheckerConfig {
        threshold: PHISHING_THRESHOLD_DEFAULT,
        redirect_domains: REDIRECT_DOMAINS.iter().map(|s| s.to_string()).collect(),
    })
    .unwrap()
}

/// The tenant domains a sample declares for the test.
fn tenant_domains(mail: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(mail);
    text.lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("X-Test-Tenant-Domains:"))
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn check(checker: &Checker, mail: &[u8]) -> Verdict {
    let owned = tenant_domains(mail);
    let own = |host: &str| {
        owned
            .iter()
            .any(|d| host == d || host.ends_with(&format!(".{d}")))
    };
    checker.check(
        mail,
        &Sender {
            from_domain: None,
            own_domain: &own,
        },
    )
}

#[test]
fn every_phish_is_refused_and_no_legitimate_mail_is() {
    let checker = checker();
    let legit = samples("legit");
    let phish = samples("phish");
    assert!(legit.len() >= LEGIT_SAMPLES_MIN, "{} legit", legit.len());
    assert!(phish.len() >= PHISH_SAMPLES_MIN, "{} phish", phish.len());
    let mut false_positives = Vec::new();
    let mut legit_max = 0;
    for (name, mail) in &legit {
        let v = check(&checker, mail);
        println!("legit {name:48} score {:3} {}", v.score, v.rule_names());
        if v.score > 0 {
            println!("      {:?}", v.hits);
        }
        legit_max = legit_max.max(v.score);
        if v.blocked() {
            false_positives.push(format!("{name}: {v:?}"));
        }
    }
    let mut missed = Vec::new();
    let mut phish_min = u32::MAX;
    for (name, mail) in &phish {
        let v = check(&checker, mail);
        println!("phish {name:48} score {:3} {}", v.score, v.rule_names());
        phish_min = phish_min.min(v.score);
        if !v.blocked() {
            missed.push(format!("{name}: {v:?}"));
        }
    }
    println!(
        "phishing refused: {}/{} ({:.1} %); legitimate refused: {}/{} (false-positive rate {:.1} %); \
         highest legitimate score {legit_max}, lowest phishing score {phish_min}, threshold {}",
        phish.len() - missed.len(),
        phish.len(),
        100.0 * (phish.len() - missed.len()) as f64 / phish.len() as f64,
        false_positives.len(),
        legit.len(),
        100.0 * false_positives.len() as f64 / legit.len() as f64,
        PHISHING_THRESHOLD_DEFAULT,
    );
    assert!(missed.is_empty(), "phishing let through: {missed:#?}");
    assert!(
        false_positives.is_empty(),
        "legitimate mail refused: {false_positives:#?}"
    );
}

#[test]
fn tracking_through_an_unconfigured_esp_domain_is_a_mismatch() {
    // The same newsletter without the operator's redirect domains: its link text shows the
    // sender's site while the href goes to the ESP, which is what the configuration is for.
    let mail = samples("legit")
        .into_iter()
        .find(|(n, _)| n == "newsletter-04-esp-sendgrid.eml")
        .unwrap()
        .1;
    let bare = Checker::new(&CheckerConfig::default()).unwrap();
    let v = bare.check(&mail, &Sender::default());
    assert_eq!(v.rule_names(), "link_text_mismatch");
    assert!(!check(&checker(), &mail).blocked());
}

#[test]
fn the_engine_given_from_domain_and_tenant_domains_decide_ownership() {
    let mail = b"From: <news@shop.com>\r\nContent-Type: text/html\r\n\r\n\
<a href=\"https://click.shop-links.net/r/1\">www.shop.com</a>\r\n";
    let checker = Checker::new(&CheckerConfig::default()).unwrap();
    assert!(checker.check(mail, &Sender::default()).blocked());
    let own = |h: &str| h.ends_with("shop-links.net");
    let tenant = Sender {
        from_domain: Some("shop.com"),
        own_domain: &own,
    };
    assert!(!checker.check(mail, &tenant).blocked());
}

#[test]
fn the_threshold_is_configurable() {
    let mail = &samples("phish")
        .into_iter()
        .find(|(n, _)| n == "10-wellsfargo-userinfo-ip.eml")
        .unwrap()
        .1;
    let strict = Checker::new(&CheckerConfig::default()).unwrap();
    let v = strict.check(mail, &Sender::default());
    assert!(v.blocked(), "{v:?}");
    let lenient = Checker::new(&CheckerConfig {
        threshold: v.score + 1,
        ..CheckerConfig::default()
    })
    .unwrap();
    assert!(!lenient.check(mail, &Sender::default()).blocked());
    assert!(Checker::new(&CheckerConfig {
        threshold: 0,
        ..CheckerConfig::default()
    })
    .is_err());
    assert!(Checker::new(&CheckerConfig {
        redirect_domains: vec!["click.sendgrid.net".into()],
        ..CheckerConfig::default()
    })
    .is_err());
}
