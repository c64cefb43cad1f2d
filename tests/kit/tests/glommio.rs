//! The glommio runner: output, borrowing on the calling thread, the time bound.

use std::time::Duration;

use petrel_testkit::glommio::{run, wait_until, Runner};

#[test]
fn runs_on_a_fresh_executor_and_here() {
    assert_eq!(run(|| async { 6 * 7 }), 42);
    let borrowed = String::from("abc");
    let len = Runner::default().run_here(async { borrowed.len() });
    assert_eq!(len, 3);
    let waited = run(|| async {
        let started = std::time::Instant::now();
        let never = wait_until(Duration::from_millis(50), || false).await;
        let at_once = wait_until(Duration::from_secs(5), || true).await;
        (
            never,
            at_once,
            started.elapsed() >= Duration::from_millis(50),
        )
    });
    assert_eq!(waited, (false, true, true));
}

#[test]
#[should_panic(expected = "still running")]
fn a_future_past_its_bound_fails_the_test() {
    Runner::default()
        .timeout(Duration::from_millis(50))
        .run(|| glommio::timer::sleep(Duration::from_secs(5)));
}
