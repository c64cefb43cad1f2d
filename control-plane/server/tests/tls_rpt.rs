//! TLS-RPT counts in the store (migration 16) on SQLite, and on PostgreSQL when
//! `PETREL_TEST_PG_URL` is set (a database of its own): counts events from an engine are summed
//! per day and key, a resent event is taken once, they never land in the event table, and a
//! day's reports get their states (no record: `no_rua`; a `mailto:` without a submission
//! listener: `pending`, tried again later).

mod common;

use petrel_control::tls_rpt::report::day_label;
use petrel_policy::event::TLS_RPT_COUNTS;
use petrel_policy::{Event, EventType};
use serde_json::json;

const DAY: i64 = 20_792; // 2026-12-05

fn counts_event(id: &str, success: u64, expired: u64) -> Event {
    let rows = json!([
        {"day": DAY, "domain": "rpt.test", "policy_type": "sts",
         "policy_strings": ["version: STSv1", "mode: enforce", "mx: mx.rpt.test", "max_age: 86400"],
         "mx_patterns": ["mx.rpt.test"], "mx_host": "mx.rpt.test", "ip": "192.0.2.1",
         "success": success, "failures": {"certificate-expired": expired}},
        {"day": DAY, "domain": "quiet.test", "policy_type": "no-policy-found",
         "mx_host": "mx.quiet.test", "ip": "192.0.2.2", "success": 1}
    ]);
    Event {
        details: json!({ "rows": rows }).as_object().cloned(),
        ..Event::bare(
            id.to_string(),
            EventType::Other(TLS_RPT_COUNTS.into()),
            1_796_500_000_000,
        )
    }
}

async fn scenario(h: &common::Harness) {
    let app = &h.info.app;
    h.set_txt(
        "_smtp._tls.rpt.test",
        &["v=TLSRPTv1; rua=mailto:reports@rpt.test"],
    );
    let first = [counts_event("ev_tlsrpt_1", 3, 1)];
    petrel_control::events::ingest(app, "e1", 1, &first)
        .await
        .expect("ingested");
    // The same event again in a rebuilt batch (another seq), and a new one.
    let again = [
        counts_event("ev_tlsrpt_1", 3, 1),
        counts_event("ev_tlsrpt_2", 2, 0),
    ];
    let done = petrel_control::events::ingest(app, "e1", 2, &again)
        .await
        .expect("ingested");
    assert_eq!(done.inserted, 0, "counts are not events");

    let mut conn = app.db.conn().await.expect("a connection");
    let rows = petrel_control::store::tls_rpt::day_rows(&mut conn, DAY, "rpt.test")
        .await
        .expect("rows");
    let sessions = |result: &str| {
        rows.iter()
            .filter(|r| r.result == result)
            .map(|r| r.sessions)
            .sum::<i64>()
    };
    assert_eq!(
        sessions("success"),
        5,
        "3 + 2, the resent event once: {rows:?}"
    );
    assert_eq!(sessions("certificate-expired"), 1);
    assert_eq!(rows[0].mx_patterns, ["mx.rpt.test"]);
    drop(conn);

    let day = day_label(DAY);
    let r = h
        .owner("POST", "/v1/tls-rpt/send", Some(json!({ "day": day })))
        .await;
    let body = r.body;
    assert_eq!(r.status, 200, "{body}");
    let reports = body["reports"].as_array().expect("reports");
    let state = |d: &str| {
        reports
            .iter()
            .find(|r| r["policy_domain"] == d)
            .unwrap_or_else(|| panic!("{d} in {body}"))
            .clone()
    };
    assert_eq!(state("quiet.test")["state"], "no_rua");
    let rpt = state("rpt.test");
    assert_eq!(rpt["state"], "pending", "{rpt}");
    assert_eq!(rpt["attempts"], 1);
    assert!(
        rpt["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("submit-to"),
        "{rpt}"
    );
    assert_eq!(rpt["report_id"], format!("{day}.rpt.test@petrel.test"));
    // A bad day is a 4xx with a JSON error.
    let r = h
        .owner(
            "POST",
            "/v1/tls-rpt/send",
            Some(json!({ "day": "05/12/2026" })),
        )
        .await;
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.body);
    assert!(!r.code().is_empty(), "{}", r.body);
}

#[tokio::test]
async fn counts_are_summed_once_and_reports_get_their_states_on_sqlite() {
    let h = common::start().await;
    scenario(&h).await;
}

#[tokio::test]
async fn counts_are_summed_once_and_reports_get_their_states_on_postgres() {
    let Some(base) = std::env::var("PETREL_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        petrel_testkit::peer_missing("PETREL_TEST_PG_URL not set");
        return;
    };
    sqlx::any::install_default_drivers();
    let name = format!("petrel_test_{}", hex::encode(rand::random::<[u8; 6]>()));
    let pool = sqlx::AnyPool::connect(&base).await.expect("connect");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .expect("create database");
    let (root, _) = base.rsplit_once('/').expect("a database in the URL");
    let h = common::start_with(Some(format!("{root}/{name}"))).await;
    scenario(&h).await;
    drop(h);
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&pool)
        .await;
}
