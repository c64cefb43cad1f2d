//! TLS-RPT (RFC 8460): the outcome of every outbound TLS negotiation, counted per UTC day,
//! policy domain, applied policy, receiving MX host and address, for the control plane's daily
//! aggregate reports.
//!
//! A delivery session knows the policy it applies ([`SessionPolicy`]: an MTA-STS policy, a
//! DANE TLSA set, or none found) and records one [`SessionResult`] per connection attempt that
//! reached the TLS stage or was refused for a TLS-policy reason ([`classify`]). Counting is a
//! hash-map bump on the shard's own [`Counts`] behind an uncontended lock ([`TlsRptRecorder`]):
//! a known key allocates nothing, and a connection (not a message) is the unit, so the relay's
//! message rate never meets it. The number of keys is bounded ([`TLS_RPT_KEYS_MAX`]); past it
//! sessions are counted in `overflow` only.
//!
//! Every [`TLS_RPT_FLUSH_INTERVAL_MS`] the flusher ([`flush`]) takes every shard's counts and
//! appends them to the durable event backlog as events of type [`TLS_RPT_EVENT`] (their
//! `details` carry the rows), so they reach the control plane through the same link, with the
//! same acknowledgements and stable ids, as delivery events. An older control plane stores them
//! as events of a type it does not know; a newer one sums them into its TLS-RPT table instead.
//! Why not a frame of its own: an engine cannot tell which frames its control plane knows (the
//! protocol revision goes from engine to control plane only), and an unknown frame ends the
//! session. A crash loses at most one interval of counts (the reports are statistics).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use petrel_outbound::mta_sts::{Mode, Policy};

mod classify;
pub mod flush;

pub use classify::{classify, plaintext_result};
pub use flush::{rows_to_events, TlsRptFlusher, TLS_RPT_EVENT};

/// Keys (day, policy, MX host, address) one shard keeps between two flushes, at most.
pub const TLS_RPT_KEYS_MAX: usize = 10_000;
/// How often the shards' counts go to the backlog, ms.
pub const TLS_RPT_FLUSH_INTERVAL_MS: u64 = 60_000;
/// `petrel_tls_rpt_sessions_total{policy_type,result}`: sessions counted for TLS-RPT.
pub const TLS_RPT_SESSIONS_TOTAL: &str = "petrel_tls_rpt_sessions_total";
/// `petrel_tls_rpt_overflow_total`: sessions counted past [`TLS_RPT_KEYS_MAX`] (in no report).
pub const TLS_RPT_OVERFLOW_TOTAL: &str = "petrel_tls_rpt_overflow_total";
const MS_PER_DAY: u64 = 86_400_000;

/// The kind of policy applied (RFC 8460 §4.4 `policy-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyType {
    Sts,
    Tlsa,
    NoPolicyFound,
}

impl PolicyType {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// The failure types of RFC 8460 §4.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

impl FailureType {
    /// Every type, in the order of [`FailureType::index`].
    pub const ALL: [FailureType; 11] = [
        FailureType::StarttlsNotSupported,
        FailureType::CertificateHostMismatch,
        FailureType::CertificateExpired,
        FailureType::CertificateNotTrusted,
        FailureType::ValidationFailure,
        FailureType::TlsaInvalid,
        FailureType::DnssecInvalid,
        FailureType::DaneRequired,
        FailureType::StsPolicyFetchError,
        FailureType::StsPolicyInvalid,
        FailureType::StsWebpkiInvalid,
    ];

    /// The RFC's name (`result-type`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureType::StarttlsNotSupported => "starttls-not-supported",
            FailureType::CertificateHostMismatch => "certificate-host-mismatch",
            FailureType::CertificateExpired => "certificate-expired",
            FailureType::CertificateNotTrusted => "certificate-not-trusted",
            FailureType::ValidationFailure => "validation-failure",
            FailureType::TlsaInvalid => "tlsa-invalid",
            FailureType::DnssecInvalid => "dnssec-invalid",
            FailureType::DaneRequired => "dane-required",
            FailureType::StsPolicyFetchError => "sts-policy-fetch-error",
            FailureType::StsPolicyInvalid => "sts-policy-invalid",
            FailureType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    /// The type named `s` (the control plane reads the rows back with it).
    pub fn parse(s: &str) -> Option<FailureType> {
        FailureType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What one connection attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionResult {
    Success,
    Failure(FailureType),
}

impl SessionResult {
    /// The `result` label of [`TLS_RPT_SESSIONS_TOTAL`]: `success` or the failure type.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionResult::Success => "success",
            SessionResult::Failure(f) => f.as_str(),
        }
    }
}

/// The policy a delivery session applies to one domain, as a report names it. Built once per
/// session and shared by its connection attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPolicy {
    /// The policy domain (the recipient domain), lower case.
    pub domain: String,
    pub policy_type: PolicyType,
    /// `policy-string`: the policy's lines (MTA-STS) or TLSA records; empty for none found.
    pub strings: Vec<String>,
    /// `mx-host`: the MX patterns of an MTA-STS policy.
    pub mx_patterns: Vec<String>,
    /// A hash of everything above: rows of one policy share it.
    fingerprint: u64,
}

impl SessionPolicy {
    pub fn new(
        domain: &str,
        policy_type: PolicyType,
        strings: Vec<String>,
        mx_patterns: Vec<String>,
    ) -> Arc<SessionPolicy> {
        let domain = domain.to_ascii_lowercase();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&domain, policy_type, &strings, &mx_patterns).hash(&mut h);
        Arc::new(SessionPolicy {
            domain,
            policy_type,
            strings,
            mx_patterns,
            fingerprint: h.finish(),
        })
    }

    /// No policy found for `domain`.
    pub fn none_found(domain: &str) -> Arc<SessionPolicy> {
        SessionPolicy::new(domain, PolicyType::NoPolicyFound, Vec::new(), Vec::new())
    }

    /// An MTA-STS policy (`mode: none` counts as none found: it asks for nothing). The
    /// policy's lines are rebuilt from the parsed policy, in the order RFC 8461 §3.2 lists them.
    pub fn sts(domain: &str, policy: &Policy) -> Arc<SessionPolicy> {
        if policy.mode == Mode::None {
            return SessionPolicy::none_found(domain);
        }
        let mx: Vec<String> = policy.mx.iter().map(|p| p.to_string()).collect();
        let mut strings = Vec::with_capacity(mx.len() + 3);
        strings.push("version: STSv1".to_string());
        strings.push(format!("mode: {}", policy.mode.as_str()));
        strings.extend(mx.iter().map(|p| format!("mx: {p}")));
        strings.push(format!("max_age: {}", policy.max_age_secs));
        SessionPolicy::new(domain, PolicyType::Sts, strings, mx)
    }
}

impl SessionPolicy {
    /// The DANE TLSA records of MX host `mx_host` that a connection of `domain`'s session
    /// verified against (`policy-string`: each record as `usage selector matching hex`;
    /// `mx-host`: the host). The policy domain is the recipient domain: its `_smtp._tls`
    /// record says where reports go.
    pub fn tlsa(
        domain: &str,
        mx_host: &str,
        records: &[petrel_outbound::dane::Tlsa],
    ) -> Arc<SessionPolicy> {
        let strings = records
            .iter()
            .map(|r| {
                let hex: String = r.data.iter().map(|b| format!("{b:02x}")).collect();
                format!("{} {} {} {hex}", r.usage, r.selector, r.matching)
            })
            .collect();
        SessionPolicy::new(domain, PolicyType::Tlsa, strings, vec![mx_host.to_string()])
    }
}

/// The sessions of one key.
#[derive(Debug, Clone)]
pub struct Row {
    /// Days since the Unix epoch (UTC).
    pub day: u32,
    pub policy: Arc<SessionPolicy>,
    /// The receiving MX host name ("" when unknown).
    pub mx_host: String,
    /// The receiving address, when a connection was made.
    pub ip: Option<IpAddr>,
    pub successes: u64,
    /// Failures per type, by [`FailureType::index`].
    failures: [u64; FailureType::ALL.len()],
}

impl Row {
    /// The failure counts that are not zero.
    pub fn failures(&self) -> impl Iterator<Item = (FailureType, u64)> + '_ {
        FailureType::ALL
            .into_iter()
            .map(|t| (t, self.failures[t.index()]))
            .filter(|(_, n)| *n > 0)
    }
}

/// One shard's counts since the last flush (pure).
#[derive(Debug, Default)]
pub struct Counts {
    /// By the hash of (day, policy, MX host, address); a hash collision counts as overflow.
    rows: HashMap<u64, Row>,
    /// Sessions not counted in a row: past [`TLS_RPT_KEYS_MAX`] keys, or a hash collision.
    pub overflow: u64,
}

impl Counts {
    /// Counts one session.
    pub fn record(
        &mut self,
        now_unix_ms: u64,
        policy: &Arc<SessionPolicy>,
        mx_host: &str,
        ip: Option<IpAddr>,
        result: SessionResult,
    ) {
        let day = u32::try_from(now_unix_ms / MS_PER_DAY).unwrap_or(u32::MAX);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (day, policy.fingerprint, mx_host, ip).hash(&mut h);
        let key = h.finish();
        let full = self.rows.len() >= TLS_RPT_KEYS_MAX;
        let row = match self.rows.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if full => {
                self.overflow += 1;
                return;
            }
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Row {
                day,
                policy: Arc::clone(policy),
                mx_host: mx_host.to_string(),
                ip,
                successes: 0,
                failures: [0; FailureType::ALL.len()],
            }),
        };
        let same = row.day == day
            && row.ip == ip
            && row.mx_host == mx_host
            && (Arc::ptr_eq(&row.policy, policy) || row.policy == *policy);
        if !same {
            self.overflow += 1;
            return;
        }
        match result {
            SessionResult::Success => row.successes += 1,
            SessionResult::Failure(f) => row.failures[f.index()] += 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.overflow == 0
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// The rows, in no particular order.
    pub fn into_rows(self) -> (Vec<Row>, u64) {
        (self.rows.into_values().collect(), self.overflow)
    }
}

/// One shard's handle on its counts (cheap to clone; the flusher holds another).
#[derive(Debug, Clone, Default)]
pub struct TlsRptRecorder(Arc<Mutex<Counts>>);

impl TlsRptRecorder {
    /// Counts one session and its metric.
    pub fn record(
        &self,
        now_unix_ms: u64,
        policy: &Arc<SessionPolicy>,
        mx_host: &str,
        ip: Option<IpAddr>,
        result: SessionResult,
    ) {
        metrics::counter!(TLS_RPT_SESSIONS_TOTAL,
            "policy_type" => policy.policy_type.as_str(), "result" => result.as_str())
        .increment(1);
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let before = c.overflow;
        c.record(now_unix_ms, policy, mx_host, ip, result);
        if c.overflow > before {
            metrics::counter!(TLS_RPT_OVERFLOW_TOTAL).increment(1);
        }
    }

    /// The counts so far, leaving empty ones.
    pub fn take(&self) -> Counts {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 86_400_000;

    fn sts() -> Arc<SessionPolicy> {
        let p = Policy::parse(
            b"version: STSv1\nmode: enforce\nmx: mx1.a.test\nmx: *.b.test\nmax_age: 86400\n",
        )
        .expect("policy");
        SessionPolicy::sts("A.test", &p)
    }

    #[test]
    fn sts_policy_strings_are_the_policy_lines() {
        let p = sts();
        assert_eq!(p.domain, "a.test");
        assert_eq!(p.policy_type, PolicyType::Sts);
        assert_eq!(
            p.strings,
            [
                "version: STSv1",
                "mode: enforce",
                "mx: mx1.a.test",
                "mx: *.b.test",
                "max_age: 86400"
            ]
        );
        assert_eq!(p.mx_patterns, ["mx1.a.test", "*.b.test"]);
        let none = Policy::parse(b"version: STSv1\nmode: none\nmax_age: 1\n").expect("policy");
        assert_eq!(
            SessionPolicy::sts("a.test", &none).policy_type,
            PolicyType::NoPolicyFound
        );
    }

    #[test]
    fn sessions_of_one_key_share_a_row_and_days_split_rows() {
        let p = sts();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut c = Counts::default();
        let t = 20_000 * DAY_MS + 5;
        c.record(t, &p, "mx1.a.test", Some(ip), SessionResult::Success);
        c.record(t + 1, &p, "mx1.a.test", Some(ip), SessionResult::Success);
        let mismatch = SessionResult::Failure(FailureType::CertificateHostMismatch);
        c.record(t + 2, &p, "mx1.a.test", Some(ip), mismatch);
        // The same policy rebuilt (another session) is the same key.
        c.record(
            t + 3,
            &sts(),
            "mx1.a.test",
            Some(ip),
            SessionResult::Success,
        );
        c.record(
            t + DAY_MS,
            &p,
            "mx1.a.test",
            Some(ip),
            SessionResult::Success,
        );
        c.record(
            t,
            &SessionPolicy::none_found("a.test"),
            "mx1.a.test",
            Some(ip),
            SessionResult::Success,
        );
        assert_eq!(c.len(), 3);
        let (mut rows, overflow) = c.into_rows();
        assert_eq!(overflow, 0);
        rows.sort_by_key(|r| (r.day, r.policy.policy_type.as_str()));
        let first = rows
            .iter()
            .find(|r| r.day == 20_000 && r.policy.policy_type == PolicyType::Sts)
            .unwrap();
        assert_eq!(first.successes, 3);
        assert_eq!(
            first.failures().collect::<Vec<_>>(),
            [(FailureType::CertificateHostMismatch, 1)]
        );
        assert_eq!(rows.iter().filter(|r| r.day == 20_001).count(), 1);
    }

    #[test]
    fn keys_are_bounded_and_the_rest_overflows() {
        let p = SessionPolicy::none_found("a.test");
        let mut c = Counts::default();
        for i in 0..TLS_RPT_KEYS_MAX + 5 {
            c.record(
                0,
                &p,
                &format!("mx{i}.a.test"),
                None,
                SessionResult::Success,
            );
        }
        // Known keys still count past the bound.
        c.record(0, &p, "mx0.a.test", None, SessionResult::Success);
        assert_eq!(c.len(), TLS_RPT_KEYS_MAX);
        assert_eq!(c.overflow, 5);
        let (rows, _) = c.into_rows();
        assert_eq!(
            rows.iter().map(|r| r.successes).sum::<u64>(),
            TLS_RPT_KEYS_MAX as u64 + 1
        );
    }

    #[test]
    fn failure_names_are_the_rfcs_and_parse_back() {
        for t in FailureType::ALL {
            assert_eq!(FailureType::parse(t.as_str()), Some(t));
            assert_eq!(FailureType::ALL[t.index()], t);
        }
        assert_eq!(FailureType::parse("nope"), None);
        let names: Vec<&str> = FailureType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names, petrel_policy::event::TLS_RPT_FAILURE_TYPES);
    }

    #[test]
    fn the_recorder_hands_its_counts_over_once() {
        let r = TlsRptRecorder::default();
        r.record(0, &sts(), "mx1.a.test", None, SessionResult::Success);
        assert_eq!(r.take().len(), 1);
        assert!(r.take().is_empty());
    }
}
