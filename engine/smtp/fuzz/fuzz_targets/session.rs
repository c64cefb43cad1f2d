//! Arbitrary bytes, fed in pieces of data-derived sizes to a Session whose events are answered
//! accept/reject alternately: nothing may panic and every reply must be well-formed.
//! The same driver runs over seeded inputs in the crate's unit tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(problem) = petrel_smtp::drive_session(data) {
        panic!("{problem}");
    }
});
