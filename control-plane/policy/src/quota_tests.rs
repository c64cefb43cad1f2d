use super::*;

const T0: u64 = 1_700_000_000_000;

fn tenant(t: &str) -> RateKey {
    RateKey::Tenant(t.to_owned())
}

/// Takes every request the quotas sent.
fn drain(rx: &mut tokio::sync::mpsc::Receiver<GrantRequest>) -> Vec<GrantRequest> {
    let mut out = Vec::new();
    while let Ok(r) = rx.try_recv() {
        out.push(r);
    }
    out
}

fn admitted(a: Admit) -> bool {
    matches!(a, Admit::Yes)
}

#[test]
fn an_empty_lease_waits_for_its_batch_and_then_admits_exactly_the_grants() {
    let (q, mut rx) = ClusterQuotas::new();
    let checks = [(tenant("acme"), Limit::PerDay(10_000))];
    assert!(matches!(q.admit(&checks, T0), Admit::Wait(_)));
    // A second session does not send a second request while one is in flight.
    assert!(matches!(q.admit(&checks, T0), Admit::Wait(_)));
    let reqs = drain(&mut rx);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].want, 50, "10,000 / (200 x 1 engine)");
    assert_eq!(reqs[0].day, T0 / DAY_MS);
    q.deposit(
        &reqs[0],
        Grant {
            granted: 3,
            retry_in_ms: 0,
        },
        T0,
    );
    assert!(admitted(q.admit(&checks, T0)));
    assert!(admitted(q.admit(&checks, T0)));
    assert!(admitted(q.admit(&checks, T0)));
    // Low water passed at once (3 <= 25): the next batch was asked for ahead of need.
    assert_eq!(drain(&mut rx).len(), 1);
    // The fourth has no grant: it waits (the prefetch is still in flight).
    assert!(matches!(q.admit(&checks, T0), Admit::Wait(_)));
    assert_eq!(q.waits(), 3);
}

#[test]
fn a_deposit_wakes_the_waiting_listener() {
    let (q, mut rx) = ClusterQuotas::new();
    let checks = [(tenant("acme"), Limit::PerSecond(100))];
    let Admit::Wait(listener) = q.admit(&checks, T0) else {
        panic!("expected a wait");
    };
    let req = drain(&mut rx).pop().expect("a request");
    q.deposit(
        &req,
        Grant {
            granted: 5,
            retry_in_ms: 0,
        },
        T0,
    );
    // Completes at once: notified before it was polled.
    futures_lite_block_on(listener);
    assert!(admitted(q.admit(&checks, T0)));
}

/// Polls a listener that was already notified (no runtime needed).
fn futures_lite_block_on(listener: event_listener::EventListener) {
    let mut listener = std::pin::pin!(listener);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(
        std::future::Future::poll(listener.as_mut(), &mut cx).is_ready(),
        "the listener was not woken"
    );
}

#[test]
fn nothing_granted_refuses_until_the_recheck_then_asks_again() {
    let (q, mut rx) = ClusterQuotas::new();
    let checks = [(tenant("acme"), Limit::PerDay(1_000))];
    assert!(matches!(q.admit(&checks, T0), Admit::Wait(_)));
    let req = drain(&mut rx).pop().expect("a request");
    q.deposit(
        &req,
        Grant {
            granted: 0,
            retry_in_ms: 60_000,
        },
        T0,
    );
    match q.admit(&checks, T0 + 10) {
        Admit::No(PolicyDenial::DailyQuota { scope }) => assert_eq!(scope, "tenant acme"),
        other => panic!("expected the daily quota refusal, got {other:?}"),
    }
    assert!(drain(&mut rx).is_empty(), "no request while refusing");
    // After EXHAUSTED_RECHECK_MS it asks Redis again (a raised limit takes effect).
    assert!(matches!(
        q.admit(&checks, T0 + EXHAUSTED_RECHECK_MS),
        Admit::Wait(_)
    ));
    assert_eq!(drain(&mut rx).len(), 1);
}

#[test]
fn one_empty_lease_charges_none_of_the_others() {
    let (q, mut rx) = ClusterQuotas::new();
    let domain = RateKey::Domain("acme.example".to_owned());
    let both = [
        (tenant("acme"), Limit::PerSecond(1_000)),
        (domain.clone(), Limit::PerSecond(1_000)),
    ];
    assert!(matches!(q.admit(&both, T0), Admit::Wait(_)));
    let reqs = drain(&mut rx);
    assert_eq!(reqs.len(), 2);
    let tenant_req = reqs
        .iter()
        .find(|r| r.key.scope == tenant("acme"))
        .expect("the tenant's request");
    q.deposit(
        tenant_req,
        Grant {
            granted: 1,
            retry_in_ms: 0,
        },
        T0,
    );
    // The domain's lease is still empty: wait, and the tenant's grant stays.
    assert!(matches!(q.admit(&both, T0), Admit::Wait(_)));
    assert!(admitted(
        q.admit(&[(tenant("acme"), Limit::PerSecond(1_000))], T0)
    ));
}

#[test]
fn rate_grants_expire_so_unused_ones_cannot_make_a_burst() {
    let (q, mut rx) = ClusterQuotas::new();
    let checks = [(tenant("acme"), Limit::PerSecond(2_000))];
    assert!(matches!(q.admit(&checks, T0), Admit::Wait(_)));
    let req = drain(&mut rx).pop().expect("a request");
    assert_eq!(req.want, 100, "50 ms of 2,000/s");
    q.deposit(
        &req,
        Grant {
            granted: 100,
            retry_in_ms: 0,
        },
        T0,
    );
    assert!(admitted(q.admit(&checks, T0 + 1)));
    assert!(matches!(
        q.admit(&checks, T0 + RATE_GRANT_TTL_MS),
        Admit::Wait(_)
    ));
}

#[test]
fn batches_shrink_with_the_fleet_and_stay_within_bounds() {
    let (q, _rx) = ClusterQuotas::new();
    assert_eq!(q.batch(&Limit::PerDay(1_000)), 5);
    q.set_engines_live(2);
    assert_eq!(q.batch(&Limit::PerDay(1_000)), 2);
    assert_eq!(q.batch(&Limit::PerDay(10)), 1);
    assert_eq!(q.batch(&Limit::PerDay(u64::MAX)), GRANT_BATCH_MAX);
    assert_eq!(q.batch(&Limit::PerSecond(1)), 1);
    q.set_engines_live(0);
    assert_eq!(q.engines_live(), 1, "0 is taken as 1");
}

#[test]
fn fallback_admits_this_engines_share_of_the_day_and_wakes_waiters() {
    let (q, mut rx) = ClusterQuotas::new();
    q.set_engines_live(4);
    let checks = [(tenant("acme"), Limit::PerDay(10))];
    let Admit::Wait(listener) = q.admit(&checks, T0) else {
        panic!("expected a wait");
    };
    assert!(q.fail(), "the mode changed");
    assert!(!q.fail(), "already in fallback");
    futures_lite_block_on(listener);
    // 10 / 4 engines = 2 here.
    assert!(admitted(q.admit(&checks, T0)));
    assert!(admitted(q.admit(&checks, T0)));
    assert!(matches!(
        q.admit(&checks, T0),
        Admit::No(PolicyDenial::DailyQuota { .. })
    ));
    drain(&mut rx);
    assert!(q.recover());
    assert!(matches!(q.admit(&checks, T0), Admit::Wait(_)));
}

#[test]
fn fallback_shares_the_new_tenant_cap_at_least_one_message() {
    let (q, _rx) = ClusterQuotas::new();
    q.set_engines_live(8);
    q.fail();
    let cap = NewTenantCap {
        messages_max: 4,
        window_ms: 3_600_000,
        until_unix_ms: T0 + 86_400_000,
    };
    let checks = [(tenant("new"), Limit::NewTenant(cap))];
    assert!(admitted(q.admit(&checks, T0)));
    match q.admit(&checks, T0) {
        Admit::No(PolicyDenial::NewTenantCap { messages_max, .. }) => assert_eq!(messages_max, 1),
        other => panic!("expected the cap, got {other:?}"),
    }
}

#[test]
fn leases_of_tenants_gone_from_the_snapshot_are_forgotten() {
    let (q, mut rx) = ClusterQuotas::new();
    let _ = q.admit(&[(tenant("gone"), Limit::PerDay(100))], T0);
    let _ = q.admit(&[(tenant("kept"), Limit::PerDay(100))], T0);
    for req in drain(&mut rx) {
        q.deposit(
            &req,
            Grant {
                granted: 1,
                retry_in_ms: 0,
            },
            T0,
        );
    }
    let tenants: HashSet<&str> = ["kept"].into_iter().collect();
    q.retain(&tenants, &HashSet::new());
    assert!(admitted(
        q.admit(&[(tenant("kept"), Limit::PerDay(100))], T0)
    ));
    assert!(matches!(
        q.admit(&[(tenant("gone"), Limit::PerDay(100))], T0),
        Admit::Wait(_)
    ));
}
