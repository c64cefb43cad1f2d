//! Every report parser on arbitrary bytes: no panic, and what `parse_report` accepts, the
//! parser for that kind accepts too.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use petrel_bounce::BounceClassifier;
use petrel_reports::{
    parse_aggregate_attachment, parse_aggregate_mail, parse_arf, parse_dsn, parse_report,
    Report,
};

static CLASSIFIER: LazyLock<BounceClassifier> = LazyLock::new(BounceClassifier::shipped);

fuzz_target!(|data: &[u8]| {
    let classifier = &*CLASSIFIER;
    match parse_report(data, classifier) {
        Ok(Report::Complaint(r)) => assert_eq!(parse_arf(data).ok(), Some(r)),
        Ok(Report::DmarcAggregate(r)) => assert_eq!(parse_aggregate_mail(data).ok(), Some(r)),
        Ok(Report::Bounce(_)) | Err(_) => {
            let _ = parse_dsn(data, classifier);
            let _ = parse_arf(data);
            let _ = parse_aggregate_mail(data);
        }
    }
    let _ = parse_aggregate_attachment(data);
});
