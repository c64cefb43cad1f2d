//! Sending-domain authentication (issue 14) on SQLite, with the loopback DNS server: the
//! on-demand check, the scheduled round, and the scheduler itself at a one-second period.
//! `pg.rs` runs the same scenarios on PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::domain_auth;

#[tokio::test]
async fn on_demand_checks_block_and_unblock() {
    let h = common::start().await;
    domain_auth::domain_checks(&h).await;
}

#[tokio::test]
async fn a_scheduled_round_checks_verified_domains() {
    let h = common::start().await;
    domain_auth::scheduled_round(&h).await;
}

/// How long the one-second scheduler may take to notice a removed record.
const SCHEDULED_WAIT_MAX: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_notices_a_removed_record() {
    let h = common::start_custom(
        None,
        common::Tweaks {
            domain_check_interval_secs: Some(1),
            ..Default::default()
        },
    )
    .await;
    let name = "tick.example.test";
    let (id, key) = domain_auth::verified_domain(&h, "tick-co", name).await;
    h.set_txt(&format!("_dmarc.{name}"), &[]);
    let deadline = Instant::now() + SCHEDULED_WAIT_MAX;
    loop {
        let r = h
            .call("GET", &format!("/v1/domains/{id}"), Some(&key), None)
            .await;
        if r.body["auth"]["failing_check"] == "dmarc" {
            break;
        }
        assert!(Instant::now() < deadline, "never re-checked: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
