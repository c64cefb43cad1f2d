//! MTA-STS discovery against real parts on loopback: the kit's DNS server publishes
//! `_mta-sts.<domain>` TXT and `mta-sts.<domain>` A 127.0.0.1, and the kit's HTTPS policy server
//! (certificates from the kit's throw-away CA) serves the policy on a port the
//! service is configured with (`https_port`). Time is a manual clock, so expiry and refresh
//! are exact.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::executor::block_on;
use petrel_outbound::mta_sts::{
    FetchError, Fetcher, Mode, WallClock, MTA_STS_FETCH_RETRY_SECS, MTA_STS_POLICY_BYTES_MAX,
};
use petrel_outbound::{MtaSts, MtaStsConfig};
use petrel_testkit::dns::{a, txt, DnsServer};
use petrel_testkit::policy_server::{PolicyServer, Reply};
use petrel_testkit::tls::{test_pki, TestPki};

const DOMAIN: &str = "a.test";
const POLICY_HOST: &str = "mta-sts.a.test";
const ENFORCE: &str =
    "version: STSv1\r\nmode: enforce\r\nmx: mx1.a.test\r\nmx: *.mx.a.test\r\nmax_age: 3600\r\n";
const TESTING: &str = "version: STSv1\nmode: testing\nmx: mx9.a.test\nmax_age: 3600\n";
/// The manual clock's starting point (any fixed instant).
const T0: u64 = 1_800_000_000;

/// Wall-clock time that moves only when told to.
struct ManualClock(AtomicU64);

impl ManualClock {
    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl WallClock for ManualClock {
    fn now_unix_secs(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// DNS with the policy record of `DOMAIN` at `id` and its policy host on loopback.
fn dns(id: &str) -> DnsServer {
    DnsServer::start(vec![
        txt(
            &format!("_mta-sts.{DOMAIN}."),
            60,
            &format!("v=STSv1; id={id};"),
        ),
        a(&format!("{POLICY_HOST}."), 60, "127.0.0.1"),
        a("mta-sts.nopolicy.test.", 60, "127.0.0.1"),
    ])
}

struct Setup {
    dns: DnsServer,
    clock: Arc<ManualClock>,
    config: MtaStsConfig,
}

impl Setup {
    fn new(trusted: &TestPki, port: u16, data_dir: Option<&std::path::Path>) -> Setup {
        let dns = dns("one");
        let config = MtaStsConfig {
            nameservers: vec![dns.addr],
            query_timeout_ms: 2000,
            dns_cache_entries: 0, // see TXT changes at once
            https_port: port,
            fetch_timeout_ms: 5000,
            extra_root_certs_pem: vec![trusted.ca_pem.clone().into_bytes()],
            data_dir: data_dir.map(|d| d.to_path_buf()),
            cache_entries_max: 100,
            refresh_tick_ms: 0,
        };
        Setup {
            dns,
            clock: Arc::new(ManualClock(AtomicU64::new(T0))),
            config,
        }
    }

    fn start(&self) -> MtaSts {
        MtaSts::start_with_clock(self.config.clone(), self.clock.clone()).unwrap()
    }

    fn set_id(&self, id: &str) {
        let value = format!("v=STSv1; id={id};");
        self.dns
            .set_txt(&format!("_mta-sts.{DOMAIN}."), &[value.as_str()]);
    }
}

fn mode(sts: &MtaSts, domain: &str) -> Option<Mode> {
    block_on(sts.policy_for(domain)).map(|p| p.mode)
}

#[test]
fn enforce_policy_is_fetched_once_and_cached() {
    let pki = test_pki(POLICY_HOST);
    let server = PolicyServer::start(&pki, Reply::policy(ENFORCE));
    let setup = Setup::new(&pki, server.port, None);
    let sts = setup.start();
    let policy = block_on(sts.policy_for("A.Test.")).expect("a policy");
    assert!(policy.is_enforced());
    assert!(policy.matches_mx("mx1.a.test"));
    assert!(policy.matches_mx("x.mx.a.test"));
    assert!(!policy.matches_mx("evil.test"));
    assert_eq!(policy.max_age_secs, 3600);
    // The TXT id is unchanged: the cached policy applies, nothing is fetched.
    assert_eq!(mode(&sts, DOMAIN), Some(Mode::Enforce));
    assert_eq!(server.hits(), 1);
    let cached = sts.cached_policy(DOMAIN).unwrap();
    assert_eq!(cached.id, "one");
    assert_eq!((cached.fetched_at, cached.expires_at), (T0, T0 + 3600));
}

#[test]
fn testing_mode_and_none_mode_are_returned_as_such() {
    let pki = test_pki(POLICY_HOST);
    let server = PolicyServer::start(&pki, Reply::policy(TESTING));
    let setup = Setup::new(&pki, server.port, None);
    let sts = setup.start();
    let policy = block_on(sts.policy_for(DOMAIN)).unwrap();
    assert_eq!(policy.mode, Mode::Testing);
    assert!(!policy.is_enforced());
    server.set(Reply::policy("version: STSv1\nmode: none\nmax_age: 60\n"));
    setup.set_id("two");
    assert_eq!(mode(&sts, DOMAIN), Some(Mode::None));
}

#[test]
fn no_txt_record_means_no_policy_and_no_fetch() {
    let pki = test_pki(POLICY_HOST);
    let server = PolicyServer::start(&pki, Reply::policy(ENFORCE));
    let setup = Setup::new(&pki, server.port, None);
    let sts = setup.start();
    assert_eq!(mode(&sts, "nopolicy.test"), None);
    assert_eq!(
        mode(&sts, "[127.0.0.1]"),
        None,
        "a domain literal has no policy"
    );
    assert_eq!(server.hits(), 0);
}

#[test]
fn a_changed_id_fetches_the_new_policy() {
    let pki = test_pki(POLICY_HOST);
    let server = PolicyServer::start(&pki, Reply::policy(ENFORCE));
    let setup = Setup::new(&pki, server.port, None);
    let sts = setup.start();
    assert_eq!(mode(&sts, DOMAIN), Some(Mode::Enforce));
    server.set(Reply::policy(TESTING));
    setup.clock.advance(10);
    setup.set_id("two");
    assert_eq!(mode(&sts, DOMAIN), Some(Mode::Testing));
    assert_eq!(server.hits(), 2);
    let cached = sts.cached_policy(DOMAIN).unwrap();
    assert_eq!((cached.id.as_str(), cached.fetched_at), ("two", T0 + 10));
}

#[test]
fn a_failed_fetch_keeps_the_cached_policy_and_is_not_retried_at_once() {
    let pki = test_pki(POLICY_HOST);
    let server = PolicyServer::start(&pki, Reply::policy(ENFORCE));
    let setup = Setup::new(&pki, server.port, None);
    let sts = setup.start();
    assert_eq!(mode(&sts, DOMAIN), Some(Mode::Enforce));
    server.set(Reply::with(
        "500 Internal Server Error",
        "text/plain",
        b"",
        true,
    ));
    setup.set_id("two");
    assert_eq!(
        mode(&sts, DOMAIN),
        Some(Mode::Enforce),
        "the cached policy applies"
    );
    assert_eq!(mode(&sts, DOMAIN), Some(Mode::Enforce));
    assert_eq!(
        server.hits(),
        2,
        "no second attempt for id two within the retry delay"
    );
    // The TXT record disappearing does not remove the cached policy either (§3.1).
    setup.dns.set_txt(&format!("_mta-sts.{DOMAIN}."), &[]);
    assert_eq!(mode(&sts, DOMAIN), Some(Mode::Enforce));
    // After the retry delay, with the record back and the server fixed, the new policy comes.
    setup.set_id("two");
    server.set(Reply::policy(TESTING));
    setup.clock.advance(MTA_STS_FETCH_RETRY_SECS);
    assert_eq!(mode(&sts, DOMAIN), Some(Mode::Testing));
    assert_eq!(server.hits(), 3);
}

#[test]
fn an_expired_policy_is_not_used() {
    let pki = test_pki(POLICY_HOST);
    let server = PolicyServer::start(&pki, Reply::policy(ENFORCE));
    let setup = Setup::new(&pki, server.port, None);
    let sts = setup.start();
    assert_eq!(mode(&sts, DOMAIN), Some(Mode::Enforce));
    server.set(Reply::with("404 Not Found", "text/plain", b"", true));
    setup.clock.advance(3599);
    assert_eq!(
        mode(&sts, DOMAIN),
        Some(Mode::Enforce),
        "still fresh, same id"
    );
    setup.clock.advance(1);
    assert!(sts.cached_policy(DOMAIN).is_none());
    assert_eq!(mode(&sts, DOMAIN), None, "expired, and the refetch fails");
    assert_eq!(server.hits(), 2);
}

#[test]
fn a_policy_over_the_size_bound_is_refused() {
    let pki = test_pki(POLICY_HOST);
    let mut big = ENFORCE.to_string();
    big.push_str(&format!("x: {}\n", "y".repeat(MTA_STS_POLICY_BYTES_MAX)));
    let server = PolicyServer::start(&pki, Reply::policy(&big));
    let setup = Setup::new(&pki, server.port, None);
    let sts = setup.start();
    assert_eq!(mode(&sts, DOMAIN), None, "declared length over the bound");
    // Without a Content-Length (the body runs until the connection closes), reading stops at
    // the bound all the same.
    server.set(Reply::with("200 OK", "text/plain", big.as_bytes(), false));
    setup.clock.advance(MTA_STS_FETCH_RETRY_SECS);
    assert_eq!(mode(&sts, DOMAIN), None, "streamed body over the bound");
    assert_eq!(server.hits(), 2);
    // Just under the bound is fine.
    let mut fits = ENFORCE.to_string();
    fits.push_str(&format!(
        "x: {}\n",
        "y".repeat(MTA_STS_POLICY_BYTES_MAX - ENFORCE.len() - 4)
    ));
    assert_eq!(fits.len(), MTA_STS_POLICY_BYTES_MAX);
    server.set(Reply::with("200 OK", "text/plain", fits.as_bytes(), false));
    setup.clock.advance(MTA_STS_FETCH_RETRY_SECS);
    assert_eq!(mode(&sts, DOMAIN), Some(Mode::Enforce));
}

#[test]
fn a_redirect_or_another_media_type_is_refused() {
    let pki = test_pki(POLICY_HOST);
    let mut redirect = Reply::with("301 Moved Permanently", "text/plain", b"", true);
    let location = b"Location: https://mta-sts.a.test/elsewhere.txt\r\n";
    let at = redirect.0.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    redirect.0.splice(at..at, location.iter().copied());
    let server = PolicyServer::start(&pki, redirect);
    let setup = Setup::new(&pki, server.port, None);
    let sts = setup.start();
    assert_eq!(mode(&sts, DOMAIN), None);
    assert_eq!(server.hits(), 1, "the redirect is not followed");
    server.set(Reply::with("200 OK", "text/html", ENFORCE.as_bytes(), true));
    setup.clock.advance(MTA_STS_FETCH_RETRY_SECS);
    assert_eq!(mode(&sts, DOMAIN), None, "text/html is not a policy");
    server.set(Reply::policy(ENFORCE));
    setup.clock.advance(MTA_STS_FETCH_RETRY_SECS);
    assert_eq!(mode(&sts, DOMAIN), Some(Mode::Enforce));
}

#[test]
fn a_certificate_from_another_ca_or_for_another_name_is_refused() {
    let trusted = test_pki(POLICY_HOST);
    let other_ca = test_pki(POLICY_HOST);
    let server = PolicyServer::start(&other_ca, Reply::policy(ENFORCE));
    let setup = Setup::new(&trusted, server.port, None);
    let sts = setup.start();
    assert_eq!(mode(&sts, DOMAIN), None, "untrusted CA");
    let wrong_name = test_pki("mta-sts.other.test");
    let server = PolicyServer::start(&wrong_name, Reply::policy(ENFORCE));
    let setup = Setup::new(&wrong_name, server.port, None);
    let sts = setup.start();
    assert_eq!(mode(&sts, DOMAIN), None, "trusted CA, wrong name");
    assert_eq!(
        server.hits(),
        0,
        "no request is sent over a refused handshake"
    );
}

#[test]
fn the_cache_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki(POLICY_HOST);
    let server = PolicyServer::start(&pki, Reply::policy(ENFORCE));
    let data = dir.path().join("data"); // made by the service
    let setup = Setup::new(&pki, server.port, Some(&data));
    let sts = setup.start();
    assert_eq!(mode(&sts, DOMAIN), Some(Mode::Enforce));
    block_on(sts.flush()).unwrap();
    assert!(data
        .join(petrel_outbound::mta_sts::MTA_STS_CACHE_FILE)
        .exists());
    drop(sts);
    drop(server); // the policy host is down after the restart
    let restarted = setup.start();
    let cached = restarted.cached_policy(DOMAIN).expect("restored from disk");
    assert_eq!((cached.id.as_str(), cached.fetched_at), ("one", T0));
    assert_eq!(
        mode(&restarted, DOMAIN),
        Some(Mode::Enforce),
        "same id: no fetch needed"
    );
    // Expiry still counts from the original fetch.
    setup.clock.advance(3600);
    let again = setup.start();
    assert!(again.cached_policy(DOMAIN).is_none());
}

#[test]
fn due_policies_are_refreshed_before_they_expire() {
    let pki = test_pki(POLICY_HOST);
    let server = PolicyServer::start(&pki, Reply::policy(ENFORCE));
    let setup = Setup::new(&pki, server.port, None);
    let sts = setup.start();
    assert_eq!(mode(&sts, DOMAIN), Some(Mode::Enforce));
    assert!(sts.due_for_refresh().is_empty());
    setup.clock.advance(1800); // half of max_age
    assert_eq!(sts.due_for_refresh(), [DOMAIN]);
    assert_eq!(block_on(sts.refresh_due()).unwrap(), 1);
    assert_eq!(server.hits(), 2, "refetched under the same id");
    let cached = sts.cached_policy(DOMAIN).unwrap();
    assert_eq!(cached.expires_at, T0 + 1800 + 3600);
    assert!(sts.due_for_refresh().is_empty());
    // A failed refresh keeps the policy and waits before trying again.
    server.set(Reply::with(
        "503 Service Unavailable",
        "text/plain",
        b"",
        true,
    ));
    setup.clock.advance(1800);
    assert_eq!(block_on(sts.refresh_due()).unwrap(), 0);
    assert_eq!(mode(&sts, DOMAIN), Some(Mode::Enforce));
    assert!(sts.due_for_refresh().is_empty());
}

/// The fetcher on its own: each refusal comes back as its own error.
#[test]
fn fetch_errors_are_typed() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let loopback = ["127.0.0.1".parse().unwrap()];
    let pki = test_pki(POLICY_HOST);
    let fetch = |server: &PolicyServer, trusted: &TestPki| {
        let roots = [trusted.ca_pem.clone().into_bytes()];
        let fetcher = Fetcher::new(&roots, server.port, 5000).unwrap();
        rt.block_on(fetcher.fetch(DOMAIN, &loopback))
    };
    let server = PolicyServer::start(&pki, Reply::policy(ENFORCE));
    assert!(fetch(&server, &pki).unwrap().is_enforced());
    let other = test_pki(POLICY_HOST);
    assert!(matches!(
        fetch(&server, &other),
        Err(FetchError::Tls { .. })
    ));
    server.set(Reply::with("302 Found", "text/plain", b"", true));
    assert_eq!(
        fetch(&server, &pki),
        Err(FetchError::Redirect { status: 302 })
    );
    server.set(Reply::with("404 Not Found", "text/plain", b"", true));
    assert_eq!(
        fetch(&server, &pki),
        Err(FetchError::Status { status: 404 })
    );
    server.set(Reply::with(
        "200 OK",
        "application/octet-stream",
        ENFORCE.as_bytes(),
        true,
    ));
    assert!(matches!(
        fetch(&server, &pki),
        Err(FetchError::ContentType { .. })
    ));
    let big = "y".repeat(MTA_STS_POLICY_BYTES_MAX + 1);
    server.set(Reply::with("200 OK", "text/plain", big.as_bytes(), false));
    assert_eq!(fetch(&server, &pki), Err(FetchError::TooLarge));
    server.set(Reply::policy("version: STSv1\nmode: enforce\nmax_age: 1\n"));
    assert!(matches!(fetch(&server, &pki), Err(FetchError::Policy(_))));
    let wrong_name = test_pki("mta-sts.other.test");
    let renamed = PolicyServer::start(&wrong_name, Reply::policy(ENFORCE));
    assert!(matches!(
        fetch(&renamed, &wrong_name),
        Err(FetchError::Tls { .. })
    ));
    // A server that accepts and never answers: the timeout ends the fetch.
    let silent = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = silent.local_addr().unwrap().port();
    let fetcher = Fetcher::new(&[], port, 200).unwrap();
    assert_eq!(
        rt.block_on(fetcher.fetch(DOMAIN, &loopback)),
        Err(FetchError::Timeout { ms: 200 })
    );
    drop(silent);
    assert!(matches!(
        rt.block_on(fetcher.fetch(DOMAIN, &[])),
        Err(FetchError::NoAddress { .. })
    ));
}
