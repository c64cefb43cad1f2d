//! One day's TLS-RPT aggregate report for one policy domain (RFC 8460 §4), its gzip, its file
//! name (§5.1) and its mail (§5.3). Pure: rows and settings in, bytes out.

use std::collections::BTreeMap;
use std::io::Write;

use base64::Engine;
use serde_json::{json, Value};

/// Seconds in a day.
const DAY_SECS: i64 = 86_400;
/// `failure-details` entries per policy, at most (the largest counts first; a report is for
/// people and tools to read, and a domain with thousands of failing MX addresses is rare).
pub const FAILURE_DETAILS_MAX: usize = 1_000;
/// Policies per report, at most (one domain rarely has more than a few in a day).
pub const POLICIES_MAX: usize = 100;
/// Base64 line length in the mail (RFC 2045's 76).
const BASE64_LINE: usize = 76;

/// Who sends the reports (the `[tls_rpt]` settings a report needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reporter {
    /// `organization-name`.
    pub organization: String,
    /// `contact-info`: an address or URL.
    pub contact: String,
    /// The submitter's domain (`TLS-Report-Submitter`, the file name's first part).
    pub submitter: String,
}

/// The summed sessions of one (policy, MX host, address, result) of one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayRow {
    pub policy_type: String,
    pub policy_strings: Vec<String>,
    pub mx_patterns: Vec<String>,
    pub mx_host: String,
    /// "" when no connection was made.
    pub receiving_ip: String,
    /// `success` or an RFC 8460 failure type.
    pub result: String,
    pub sessions: i64,
}

/// The report's id: unique per day, domain and submitter, and the same when a day is sent
/// again (a receiver can drop the duplicate).
pub fn report_id(day: i64, domain: &str, submitter: &str) -> String {
    format!("{}.{}@{}", day_label(day), domain, submitter)
}

/// `YYYY-MM-DD` of a day number (days since the epoch).
pub fn day_label(day: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(day.saturating_mul(DAY_SECS)) {
        Ok(t) => format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
        Err(_) => day.to_string(),
    }
}

/// The day number of `YYYY-MM-DD`.
pub fn parse_day(s: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(s, format).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp() / DAY_SECS)
}

/// The RFC 8460 §4 report of `domain` for `day` from its rows.
pub fn build(reporter: &Reporter, domain: &str, day: i64, rows: &[DayRow]) -> Value {
    // One entry per distinct policy, in a stable order.
    type PolicyKey<'a> = (&'a str, &'a [String], &'a [String]);
    let mut policies: BTreeMap<PolicyKey<'_>, (i64, i64, Vec<&DayRow>)> = BTreeMap::new();
    for r in rows {
        let key = (
            r.policy_type.as_str(),
            r.policy_strings.as_slice(),
            r.mx_patterns.as_slice(),
        );
        let e = policies.entry(key).or_insert((0, 0, Vec::new()));
        if r.result == "success" {
            e.0 += r.sessions;
        } else {
            e.1 += r.sessions;
            e.2.push(r);
        }
    }
    let start = day.saturating_mul(DAY_SECS);
    let policies: Vec<Value> = policies
        .into_iter()
        .take(POLICIES_MAX)
        .map(|((kind, strings, mx), (ok, failed, mut failures))| {
            failures.sort_by_key(|f| std::cmp::Reverse(f.sessions));
            let details: Vec<Value> = failures
                .iter()
                .take(FAILURE_DETAILS_MAX)
                .map(|f| {
                    let mut d = json!({
                        "result-type": f.result,
                        "failed-session-count": f.sessions,
                    });
                    if !f.mx_host.is_empty() {
                        d["receiving-mx-hostname"] = json!(f.mx_host);
                    }
                    if !f.receiving_ip.is_empty() {
                        d["receiving-ip"] = json!(f.receiving_ip);
                    }
                    d
                })
                .collect();
            let mut entry = json!({
                "policy": {
                    "policy-type": kind,
                    "policy-string": strings,
                    "policy-domain": domain,
                },
                "summary": {
                    "total-successful-session-count": ok,
                    "total-failure-session-count": failed,
                },
            });
            if !mx.is_empty() {
                entry["policy"]["mx-host"] = json!(mx);
            }
            if !details.is_empty() {
                entry["failure-details"] = Value::Array(details);
            }
            entry
        })
        .collect();
    json!({
        "organization-name": reporter.organization,
        "date-range": {
            "start-datetime": rfc3339(start),
            "end-datetime": rfc3339(start + DAY_SECS - 1),
        },
        "contact-info": reporter.contact,
        "report-id": report_id(day, domain, &reporter.submitter),
        "policies": policies,
    })
}

fn rfc3339(unix_secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_secs)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// The report's JSON, gzipped (RFC 8460 §5.1: `application/tlsrpt+gzip`).
pub fn gzip(report: &Value) -> std::io::Result<Vec<u8>> {
    let json = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&json)?;
    z.finish()
}

/// The attachment's file name (RFC 8460 §5.1): `submitter!policy-domain!begin!end.json.gz`,
/// the times in seconds since the epoch.
pub fn file_name(submitter: &str, domain: &str, day: i64) -> String {
    let begin = day.saturating_mul(DAY_SECS);
    format!(
        "{submitter}!{domain}!{begin}!{}.json.gz",
        begin + DAY_SECS - 1
    )
}

/// The report as a mail (RFC 8460 §5.3): `multipart/report; report-type="tlsrpt"` with a short
/// text part and the gzipped report, the `TLS-Report-Domain` and `TLS-Report-Submitter`
/// headers, and the subject the RFC gives. CRLF line ends, ready for SMTP.
pub fn mail(
    reporter: &Reporter,
    from: &str,
    to: &str,
    domain: &str,
    day: i64,
    gz: &[u8],
    date_rfc2822: &str,
) -> Vec<u8> {
    let id = report_id(day, domain, &reporter.submitter);
    let boundary = format!("tlsrpt-{:016x}", rand::random::<u64>());
    let name = file_name(&reporter.submitter, domain, day);
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    let mut m = String::with_capacity(b64.len() + 2048);
    let mut line = |s: &str| {
        m.push_str(s);
        m.push_str("\r\n");
    };
    line(&format!("From: <{from}>"));
    line(&format!("To: <{to}>"));
    line(&format!(
        "Subject: Report Domain: {domain} Submitter: {} Report-ID: <{id}>",
        reporter.submitter
    ));
    line(&format!("Date: {date_rfc2822}"));
    line(&format!("Message-ID: <{id}.{:08x}>", rand::random::<u32>()));
    line(&format!("TLS-Report-Domain: {domain}"));
    line(&format!("TLS-Report-Submitter: {}", reporter.submitter));
    line("MIME-Version: 1.0");
    line(&format!(
        "Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\""
    ));
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/plain; charset=\"us-ascii\"");
    line("Content-Transfer-Encoding: 7bit");
    line("");
    line(&format!(
        "This is an aggregate TLS report (RFC 8460) from {} for {domain}, {}.",
        reporter.organization,
        day_label(day)
    ));
    line("");
    line(&format!("--{boundary}"));
    line(&format!(
        "Content-Type: application/tlsrpt+gzip; name=\"{name}\""
    ));
    line("Content-Transfer-Encoding: base64");
    line(&format!(
        "Content-Disposition: attachment; filename=\"{name}\""
    ));
    line("");
    for chunk in b64.as_bytes().chunks(BASE64_LINE) {
        line(std::str::from_utf8(chunk).unwrap_or(""));
    }
    line("");
    line(&format!("--{boundary}--"));
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reporter() -> Reporter {
        Reporter {
            organization: "Petrel Test".into(),
            contact: "tlsrpt@sender.test".into(),
            submitter: "sender.test".into(),
        }
    }

    fn row(kind: &str, mx: &str, ip: &str, result: &str, n: i64) -> DayRow {
        let (strings, patterns) = if kind == "sts" {
            (
                vec![
                    "version: STSv1".to_string(),
                    "mode: enforce".to_string(),
                    "mx: mx1.a.test".to_string(),
                    "max_age: 86400".to_string(),
                ],
                vec!["mx1.a.test".to_string()],
            )
        } else {
            (Vec::new(), Vec::new())
        };
        DayRow {
            policy_type: kind.into(),
            policy_strings: strings,
            mx_patterns: patterns,
            mx_host: mx.into(),
            receiving_ip: ip.into(),
            result: result.into(),
            sessions: n,
        }
    }

    #[test]
    fn a_report_sums_per_policy_and_lists_failures_largest_first() {
        let day = parse_day("2026-12-05").expect("a day");
        assert_eq!(day_label(day), "2026-12-05");
        let rows = [
            row("sts", "mx1.a.test", "192.0.2.1", "success", 7),
            row("sts", "mx1.a.test", "192.0.2.2", "success", 3),
            row("sts", "mx1.a.test", "192.0.2.1", "certificate-expired", 1),
            row(
                "sts",
                "mx1.a.test",
                "192.0.2.2",
                "certificate-host-mismatch",
                4,
            ),
            row("no-policy-found", "mx.a.test", "", "validation-failure", 2),
        ];
        let r = build(&reporter(), "a.test", day, &rows);
        assert_eq!(r["organization-name"], "Petrel Test");
        assert_eq!(r["date-range"]["start-datetime"], "2026-12-05T00:00:00Z");
        assert_eq!(r["date-range"]["end-datetime"], "2026-12-05T23:59:59Z");
        assert_eq!(r["report-id"], "2026-12-05.a.test@sender.test");
        let policies = r["policies"].as_array().expect("policies");
        assert_eq!(policies.len(), 2);
        let none = &policies[0];
        assert_eq!(none["policy"]["policy-type"], "no-policy-found");
        assert!(none["policy"].get("mx-host").is_none());
        assert_eq!(
            none["failure-details"][0]["receiving-mx-hostname"],
            "mx.a.test"
        );
        assert!(none["failure-details"][0].get("receiving-ip").is_none());
        let sts = &policies[1];
        assert_eq!(sts["policy"]["policy-domain"], "a.test");
        assert_eq!(sts["policy"]["mx-host"], json!(["mx1.a.test"]));
        assert_eq!(sts["summary"]["total-successful-session-count"], 10);
        assert_eq!(sts["summary"]["total-failure-session-count"], 5);
        assert_eq!(
            sts["failure-details"][0]["result-type"],
            "certificate-host-mismatch"
        );
        assert_eq!(sts["failure-details"][0]["failed-session-count"], 4);
        assert_eq!(sts["failure-details"][1]["receiving-ip"], "192.0.2.1");
    }

    #[test]
    fn the_mail_has_the_rfcs_headers_and_the_gzip_attachment() {
        use std::io::Read;
        let day = parse_day("2026-12-05").expect("a day");
        let report = build(
            &reporter(),
            "a.test",
            day,
            &[row("sts", "m", "", "success", 1)],
        );
        let gz = gzip(&report).expect("gzip");
        let m = mail(
            &reporter(),
            "reports@sender.test",
            "tlsrpt@a.test",
            "a.test",
            day,
            &gz,
            "Sun, 06 Dec 2026 01:00:00 +0000",
        );
        let text = String::from_utf8(m).expect("ascii");
        assert!(text.contains("\r\nTLS-Report-Domain: a.test\r\n"));
        assert!(text.contains("\r\nTLS-Report-Submitter: sender.test\r\n"));
        assert!(text.contains(
            "\r\nSubject: Report Domain: a.test Submitter: sender.test Report-ID: <2026-12-05.a.test@sender.test>\r\n"
        ));
        assert!(text.contains("multipart/report; report-type=\"tlsrpt\""));
        let name = "sender.test!a.test!1796428800!1796515199.json.gz";
        assert_eq!(file_name("sender.test", "a.test", day), name);
        assert!(text.contains(&format!("filename=\"{name}\"")));
        assert!(text.lines().all(|l| l.len() <= 998));
        // The attachment decodes back to the report.
        let body: String = text
            .split("Content-Transfer-Encoding: base64\r\n")
            .nth(1)
            .and_then(|s| s.split("\r\n\r\n").nth(1))
            .expect("attachment")
            .split("\r\n--")
            .next()
            .expect("body")
            .replace("\r\n", "");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("base64");
        let mut json = String::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_string(&mut json)
            .expect("gunzip");
        assert_eq!(serde_json::from_str::<Value>(&json).expect("json"), report);
    }
}
