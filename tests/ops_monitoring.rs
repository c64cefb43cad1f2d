//! The monitoring files in `ops/monitoring/` (issue 19): every PromQL expression of the Grafana
//! dashboard and of the alert rules passes promtool, `prometheus.yml` passes `promtool check
//! config`, and every series those expressions read is one a real engine exports: an engine
//! linked to a control plane and counting a tenant's quota on Redis relays mail to a scripted
//! sink (delivered, deferred, bounced and expired recipients), takes an audit checkpoint, and
//! its `/metrics` is scraped. The alert rules also pass their unit tests
//! (`ops/monitoring/petrel-alerts.test.yml`, `promtool test rules`).
//! Without promtool (ops/test.sh fetches it; `PETREL_PROMTOOL`) the promtool checks say SKIPPED;
//! without redis-server (ops/test.sh installs it) the cluster quota series are not required and
//! the test says SKIPPED for them; the series check runs regardless.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::control::{api, mailer, provision, start_control};
use common::*;
use petrel_testkit::dns::{a, mx, DnsServer};
use petrel_testkit::redis::RedisServer;
use petrel_testkit::smtp_server::{Script, SmtpServer};

const TOKEN: &str = "ops-monitoring-push-token-0123456789";
/// Upper bound on the wait for every series to appear.
const WAIT_MAX: Duration = Duration::from_secs(60);
/// What the dashboard's Grafana variables stand for when promtool reads an expression.
const GRAFANA_VARIABLES: [(&str, &str); 2] = [("$__rate_interval", "5m"), ("$instance", ".*")];
/// Labels Prometheus adds at scrape time: no exposition carries them.
const TARGET_LABELS: [&str; 3] = ["instance", "job", "role"];
/// Counters of events a healthy test run never has (a panicked session, a record skipped at
/// spool recovery, a failed spool write of a delivery outcome, an event dropped because the
/// backlog is full, a failed backlog write): the engine exports them at 0 from its start, so
/// the alerts on their `increase` fire at the first one.
const ZERO_FROM_THE_START: [&str; 6] = [
    "petrel_smtp_session_panics_total",
    "petrel_spool_recovery_skipped_records_total",
    "petrel_delivery_spool_errors_total{op=\"update\"}",
    "petrel_delivery_spool_errors_total{op=\"remove\"}",
    "petrel_events_dropped_total{reason=\"backlog_full\"}",
    "petrel_events_backlog_errors_total",
];
/// The series an engine exports only with `[cluster] redis_url`.
const CLUSTER_PREFIX: &str = "petrel_cluster_";
/// The tenant whose daily quota the engine counts on Redis.
const QUOTA_DOMAIN: &str = "quota.test";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every expression to check, with where it comes from.
fn all_expressions() -> Vec<(String, String)> {
    let mut out = dashboard_expressions();
    out.extend(alert_expressions());
    assert!(out.len() > 30, "too few expressions found: {}", out.len());
    out
}

/// The dashboard's panel targets and the queries of its `label_values(...)` variables.
fn dashboard_expressions() -> Vec<(String, String)> {
    let path = root().join("ops/monitoring/grafana/petrel-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(
        dash["__inputs"][0]["name"], "DS_PROMETHEUS",
        "datasource input"
    );
    let mut out = Vec::new();
    collect_targets(&dash["panels"], &mut out);
    for var in dash["templating"]["list"].as_array().expect("templating") {
        let query = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .expect("a variable query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.rsplit_once(','))
            .map(|(metric, _)| metric.trim().to_string())
            .unwrap_or_else(|| panic!("variable query {query} is not label_values(..., label)"));
        out.push((format!("variable {}", var["name"]), inner));
    }
    out
}

fn collect_targets(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        assert_eq!(
            panel["datasource"]["uid"]
                .as_str()
                .unwrap_or("${DS_PROMETHEUS}"),
            "${DS_PROMETHEUS}",
            "panel {} names its own datasource",
            panel["title"]
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target has an expr");
            out.push((format!("panel {}", panel["title"]), expr.to_string()));
        }
        collect_targets(&panel["panels"], out);
    }
}

/// The `expr:` of every rule in petrel-alerts.yml (each on one line: a multi-line one fails).
fn alert_expressions() -> Vec<(String, String)> {
    let path = root().join("ops/monitoring/petrel-alerts.yml");
    let text = std::fs::read_to_string(&path).expect("read the alert rules");
    let rules = text
        .lines()
        .filter(|l| {
            l.trim_start().starts_with("- alert:") || l.trim_start().starts_with("- record:")
        })
        .count();
    let exprs: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(|e| ("petrel-alerts.yml".to_string(), e.trim().to_string()))
        .collect();
    assert_eq!(exprs.len(), rules, "every rule has a one-line expr");
    assert!(exprs
        .iter()
        .all(|(_, e)| !e.is_empty() && !e.starts_with(['|', '>'])));
    exprs
}

/// The expression as Prometheus sees it once Grafana has filled in its variables.
fn as_promql(expr: &str) -> String {
    let mut out = expr.to_string();
    for (var, value) in GRAFANA_VARIABLES {
        out = out.replace(var, value);
    }
    assert!(!out.contains('$'), "an unknown Grafana variable in {expr}");
    out
}

/// The text with its double-quoted strings emptied (label values are not metric names).
fn without_strings(expr: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in expr.chars() {
        if quoted {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    quoted = false;
                    out.push(c);
                }
                _ => escaped = false,
            }
            continue;
        }
        quoted = c == '"';
        out.push(c);
    }
    out
}

/// Identifiers of the form `petrel_...` (all of the engine's series are, see the test).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let text = without_strings(expr);
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = text[i..].starts_with("petrel_") && (i == 0 || !ident(bytes[i - 1]));
        if !starts {
            i += 1;
            continue;
        }
        let end = (i..bytes.len())
            .find(|&j| !ident(bytes[j]))
            .unwrap_or(bytes.len());
        names.insert(text[i..end].to_string());
        i = end;
    }
    names
}

/// `(metric, label)` for each label a selector `metric{label=...}` matches on.
fn selector_labels(expr: &str) -> BTreeSet<(String, String)> {
    let text = without_strings(expr);
    let mut out = BTreeSet::new();
    for name in metric_names(expr) {
        for (at, _) in text.match_indices(&format!("{name}{{")) {
            let body = &text[at + name.len() + 1..];
            let body = &body[..body.find('}').expect("a closed selector")];
            for matcher in body.split(',').filter(|m| !m.trim().is_empty()) {
                let label = matcher
                    .split(['=', '!', '~'])
                    .next()
                    .unwrap_or_default()
                    .trim();
                out.insert((name.clone(), label.to_string()));
            }
        }
    }
    out
}

/// The labels of every `by (...)` and `without (...)` clause.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let text = without_strings(expr);
    let mut out = BTreeSet::new();
    for keyword in ["by", "without"] {
        for (at, _) in text.match_indices(keyword) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let rest = text[at + keyword.len()..].trim_start();
            let Some(body) = rest.strip_prefix('(') else {
                continue;
            };
            let body = &body[..body.find(')').expect("a closed grouping")];
            out.extend(
                body.split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    out
}

/// Series name to the label names its samples carry, from a Prometheus text exposition.
fn exposition_series(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = series.entry(line[..end].to_string()).or_default();
        if let Some(body) = line[end..].strip_prefix('{') {
            let body = without_strings(&body[..body.rfind('}').unwrap_or(body.len())]);
            labels.extend(
                body.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, _)| k.trim().to_string()),
            );
        }
    }
    series
}

/// The names of `wanted` that no sample of the exposition has. Histogram series are named
/// with their suffix (`_bucket`, `_sum`, `_count`), as the exposition has them.
fn missing_series<'a>(
    wanted: impl IntoIterator<Item = &'a String>,
    series: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    wanted
        .into_iter()
        .filter(|n| !series.contains_key(*n))
        .cloned()
        .collect()
}

/// `promtool check rules` on every expression, each as a recording rule of its own.
fn promtool_check_expressions(promtool: &Path, exprs: &[String]) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut yaml = String::from("groups:\n  - name: petrel-ops-check\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let quoted = serde_json::to_string(expr).expect("a string serializes");
        yaml.push_str(&format!(
            "      - record: petrel_ops_check:expr{i}\n        expr: {quoted}\n"
        ));
    }
    let file = dir.path().join("exprs.yml");
    std::fs::write(&file, yaml).expect("write the rules file");
    run_promtool(promtool, &["check", "rules"], &file)
}

fn run_promtool(promtool: &Path, args: &[&str], file: &Path) -> Result<String, String> {
    let out = Command::new(promtool)
        .args(args)
        .arg(file)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn every_expression_and_the_scrape_config_pass_promtool() {
    let Some(promtool) = promtool() else {
        petrel_testkit::peer_missing("promtool not found (ops/test.sh fetches it)");
        return;
    };
    let exprs: Vec<String> = all_expressions()
        .iter()
        .map(|(_, e)| as_promql(e))
        .collect();
    let report = promtool_check_expressions(&promtool, &exprs).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        report.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{report}"
    );
    // The same check refuses a broken expression.
    let broken = vec!["sum(rate(petrel_smtp_messages_accepted_total[5m])".to_string()];
    assert!(promtool_check_expressions(&promtool, &broken).is_err());
    let config = root().join("ops/monitoring/prometheus.yml");
    let report = run_promtool(&promtool, &["check", "config"], &config)
        .unwrap_or_else(|e| panic!("promtool check config: {e}"));
    assert!(report.contains("petrel-alerts.yml"), "{report}");
}

/// `promtool test rules` on the alert rules' unit tests, which hold a PetrelBackpressure case
/// that fires for each reason alone of every 452 refusal the engine makes.
#[test]
fn the_alert_rules_pass_their_unit_tests_for_every_backpressure_reason() {
    let tests = root().join("ops/monitoring/petrel-alerts.test.yml");
    let text = std::fs::read_to_string(&tests).expect("read the alert rules' tests");
    let fires_alone = backpressure_reasons_firing_alone(&text);
    let reasons = refusal_reasons();
    assert!(reasons.contains("event_backlog_full"), "{reasons:?}");
    let untested: Vec<&String> = reasons.difference(&fires_alone).collect();
    assert!(
        untested.is_empty(),
        "refusal reasons with no PetrelBackpressure case that fires: {untested:?}"
    );
    let Some(promtool) = promtool() else {
        petrel_testkit::peer_missing("promtool not found (ops/test.sh fetches it)");
        return;
    };
    let report = run_promtool(&promtool, &["test", "rules"], &tests)
        .unwrap_or_else(|e| panic!("promtool test rules: {e}"));
    assert!(report.contains("SUCCESS"), "{report}");
}

/// The reasons of `Refusal::reason` (engine/server/src/pressure.rs) that count in
/// `petrel_smtp_rejections_total`: all but the connection refusals (421 at connect, counted in
/// `petrel_smtp_connections_total{result}`).
fn refusal_reasons() -> BTreeSet<String> {
    let path = root().join("engine/server/src/pressure.rs");
    let text = std::fs::read_to_string(&path).expect("read pressure.rs");
    let body = text
        .split_once("pub fn reason(self)")
        .expect("Refusal::reason")
        .1;
    let body = &body[..body.find("\n    }\n").expect("the end of reason()")];
    let reasons: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Refusal::")?.split_once("=> \""))
        .map(|(_, r)| r.trim_end_matches("\",").to_string())
        .filter(|r| !r.starts_with("connections_"))
        .collect();
    assert!(reasons.len() >= 6, "too few reasons found: {reasons:?}");
    reasons
}

/// The reasons of the unit tests' groups that have one `petrel_smtp_rejections_total` series
/// and expect PetrelBackpressure to fire.
fn backpressure_reasons_firing_alone(tests: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for group in tests.split("\n  - interval:").skip(1) {
        let reasons: Vec<&str> = group
            .lines()
            .filter(|l| l.contains("petrel_smtp_rejections_total{"))
            .filter_map(|l| l.split_once("reason=\"")?.1.split_once('"'))
            .map(|(r, _)| r)
            .collect();
        let fires = group.contains("alertname: PetrelBackpressure") && group.contains("exp_labels");
        if let ([reason], true) = (reasons.as_slice(), fires) {
            out.insert(reason.to_string());
        }
    }
    out
}

/// A linked engine's series after mail of every outcome; checks every name and selector label
/// the expressions use.
#[test]
fn every_series_the_expressions_read_is_exported() {
    let exprs = all_expressions();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut labels: BTreeSet<(String, String)> = BTreeSet::new();
    for (_, expr) in &exprs {
        wanted.extend(metric_names(expr));
        labels.extend(selector_labels(expr));
    }
    println!(
        "{} expressions read {} series names",
        exprs.len(),
        wanted.len()
    );
    let redis = RedisServer::start();
    let must_be_scraped: BTreeSet<String> = match &redis {
        Some(_) => wanted.clone(),
        None => {
            petrel_testkit::peer_missing(&format!("redis-server not installed: the {CLUSTER_PREFIX}* series are not checked (ops/test.sh installs it)"));
            wanted
                .iter()
                .filter(|n| !n.starts_with(CLUSTER_PREFIX))
                .cloned()
                .collect()
        }
    };
    assert!(
        must_be_scraped.contains("petrel_control_link_up"),
        "the dashboard and alerts read the control link"
    );

    let scrape = scrape_after_traffic(&must_be_scraped, redis.as_ref());
    let series = exposition_series(&scrape);
    let missing = missing_series(&must_be_scraped, &series);
    assert!(missing.is_empty(), "not exported: {missing:?}\n{scrape}");
    for sample in ZERO_FROM_THE_START {
        assert_eq!(
            sample_value(&scrape, sample),
            Some(0.0),
            "{sample}\n{scrape}"
        );
    }
    assert_eq!(
        sample_value(&scrape, "petrel_control_link_up"),
        Some(1.0),
        "the engine is linked\n{scrape}"
    );
    if redis.is_some() {
        assert_eq!(
            sample_value(&scrape, "petrel_cluster_quota_fallback"),
            Some(0.0),
            "Redis is up\n{scrape}"
        );
    }
    // The `petrel_` rule finds every name: the engine exports nothing else.
    let foreign: Vec<&String> = series
        .keys()
        .filter(|n| !n.starts_with("petrel_"))
        .collect();
    assert!(foreign.is_empty(), "series outside petrel_: {foreign:?}");
    for (metric, label) in &labels {
        if TARGET_LABELS.contains(&label.as_str()) || !series.contains_key(metric) {
            continue;
        }
        assert!(
            series[metric].contains(label),
            "{metric} has no label {label}: {:?}",
            series[metric]
        );
    }
    // Each label an expression groups by is on one of the series it reads (when all of them
    // were scraped).
    for (origin, expr) in &exprs {
        let names = metric_names(expr);
        if names.iter().any(|n| !series.contains_key(n)) {
            continue;
        }
        for label in grouping_labels(expr) {
            let found = TARGET_LABELS.contains(&label.as_str())
                || names.iter().any(|n| series[n].contains(&label));
            assert!(found, "{origin}: no series of {expr} has the label {label}");
        }
    }
    // The same check catches a name the engine does not export.
    let bogus = ["petrel_smtp_messages_acepted_total".to_string()];
    assert_eq!(missing_series(&bogus, &series), bogus.to_vec());
}

/// The value of one sample, `name` or `name{label="value",...}` exactly as the exposition
/// writes it.
fn sample_value(exposition: &str, sample: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix(sample)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Starts a control plane, a sink, a loopback DNS server and a linked engine that resolves MX
/// records; sends mail that is delivered, deferred then delivered, bounced, expired (its host
/// greets with 554) and unroutable; fails a TLS handshake; takes an audit checkpoint. With
/// `redis`, the engine counts cluster-wide quotas there and a tenant with a daily quota sends
/// one message over AUTH. Returns the first scrape that has every name of `wanted` (or the last
/// one after [`WAIT_MAX`]).
fn scrape_after_traffic(wanted: &BTreeSet<String>, redis: Option<&RedisServer>) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let dns = DnsServer::start(vec![
        mx("dest.test.", 60, 10, "mx.dest.test."),
        a("mx.dest.test.", 60, "127.0.0.1"),
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (info, _control) = start_control(&rt, &dir.path().join("control"), TOKEN, dns.addr);
    let owner = info.bootstrap_key.clone().expect("the owner key");
    // temp*: 450 once, then 250; defer*: always 450; perm*: 550 5.1.1; others: 250.
    let sink = SmtpServer::start(Script::by_local_part());
    // down.test's static route: a server that greets with 554 (a failed connection).
    let refuser = SmtpServer::start(Script {
        greeting: Some("554 5.3.2 no service".into()),
        ..Script::default()
    });
    let ca = dir.path().join("push.pem");
    std::fs::write(&ca, &info.push_cert_pem).expect("write the push certificate");
    let args = [
        "--shards".to_string(),
        "2".to_string(),
        "--trust-network".to_string(),
        "127.0.0.0/8".to_string(),
        "--control".to_string(),
        info.push_addr.to_string(),
        "--control-token-file".to_string(),
        token_file(&ca, TOKEN),
        "--control-ca".to_string(),
        ca.to_str().expect("a UTF-8 path").to_string(),
    ];
    let mut config = format!(
        "[delivery]\nnameservers = [\"{}\"]\nsmtp_port = {}\nretry_initial_ms = 300\n\
         retry_max_ms = 600\nmessage_age_max_ms = 3000\n\
         [[delivery.routes]]\ndomain = \"down.test\"\nhost = \"{}\"\n",
        dns.addr,
        sink.addr.port(),
        refuser.addr
    );
    if let Some(redis) = redis {
        config.push_str(&format!("[cluster]\nredis_url = \"{}\"\n", redis.url()));
    }
    let engine = Engine::start_with(&dir.path().join("engine"), &args, Some(&config));
    if redis.is_some() {
        send_within_a_daily_quota(&info, &owner, &dns, engine.smtp.port());
    }
    let rcpts = [
        "ok1@dest.test",
        "ok2@dest.test",
        "temp1@dest.test",
        "perm1@dest.test",
        "defer1@dest.test",
        "someone@down.test",
        "someone@nowhere.test",
    ];
    for to in rcpts {
        let body = message("news@ops.test", to, "monitoring");
        let (code, text) = send_one(engine.smtp, "news@ops.test", to, &body);
        assert_eq!(code, 250, "{to}: {text}");
    }
    // A client that asks for TLS and then speaks in the clear: a refused handshake.
    let mut c = Smtp::connect(engine.smtp);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("STARTTLS").0, 220);
    c.send(b"this is not a TLS ClientHello\r\n\r\n");
    drop(c);
    let (code, checkpoint) = api(
        info.api_addr,
        "POST",
        "/v1/audit-log/checkpoint",
        &owner,
        None,
    );
    assert_eq!(code, 200, "{checkpoint}");
    let scrape = wait_for_series(&engine, wanted);
    assert!(engine.stop(), "the engine stops cleanly");
    scrape
}

/// A tenant with a daily quota sends one message over AUTH (once the engine has the snapshot
/// with its credential): the engine asks Redis for grants.
fn send_within_a_daily_quota(
    info: &petrel_control::ServeInfo,
    owner: &str,
    dns: &DnsServer,
    smtp_port: u16,
) {
    use lettre::Transport;
    let tenant = provision(
        info.api_addr,
        owner,
        dns,
        "quota",
        QUOTA_DOMAIN,
        "quota-user",
    );
    let (code, body) = api(
        info.api_addr,
        "PUT",
        &format!("/v1/tenants/{}/limits", tenant.tenant_id),
        owner,
        Some(serde_json::json!({"messages_per_second_max": null, "messages_per_day_max": 1000})),
    );
    assert_eq!(code, 200, "{body}");
    let mailer = mailer(smtp_port, "quota-user", &tenant.password);
    let message = lettre::Message::builder()
        .from(format!("<news@{QUOTA_DOMAIN}>").parse().expect("a mailbox"))
        .to("ok3@dest.test".parse().expect("a mailbox"))
        .subject("quota")
        .body(String::from("counted on Redis\r\n"))
        .expect("a message");
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        match mailer.send(&message) {
            Ok(_) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the tenant never sent through the engine: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_series(engine: &Engine, wanted: &BTreeSet<String>) -> String {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let scrape = engine.scrape();
        let series = exposition_series(&scrape);
        if missing_series(wanted, &series).is_empty() || Instant::now() > deadline {
            return scrape;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn names_and_labels_are_read_from_expressions_and_expositions() {
    let expr = r#"histogram_quantile(0.99, sum by (le) (rate(petrel_spool_commit_duration_seconds_bucket{instance=~"petrel_x.*", shard!="1"}[5m]))) / petrel_queue_depth"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(
        names,
        [
            "petrel_queue_depth",
            "petrel_spool_commit_duration_seconds_bucket"
        ]
    );
    let labels: Vec<(String, String)> = selector_labels(expr).into_iter().collect();
    let bucket = "petrel_spool_commit_duration_seconds_bucket".to_string();
    assert_eq!(
        labels,
        [
            (bucket.clone(), "instance".to_string()),
            (bucket, "shard".to_string())
        ]
    );
    let exposition = "# TYPE petrel_spool_commit_duration_seconds histogram\n\
        petrel_spool_commit_duration_seconds_bucket{le=\"0.5\",shard=\"0\"} 3\n\
        petrel_spool_commit_duration_seconds_sum 0.1\n\
        petrel_queue_depth{shard=\"a,b=c\"} 0\n";
    let series = exposition_series(exposition);
    assert_eq!(
        series["petrel_spool_commit_duration_seconds_bucket"],
        BTreeSet::from(["le".to_string(), "shard".to_string()])
    );
    assert_eq!(
        series["petrel_queue_depth"],
        BTreeSet::from(["shard".to_string()])
    );
    let base = ["petrel_spool_commit_duration_seconds".to_string()];
    assert_eq!(missing_series(&base, &series), base.to_vec());
    assert_eq!(as_promql("rate(x[$__rate_interval])"), "rate(x[5m])");
    let grouped = r#"sum by (le, shard) (x{a="by (nope)"}) / sum without(part) (y) / bypass"#;
    assert_eq!(
        grouping_labels(grouped),
        BTreeSet::from(["le".to_string(), "shard".to_string(), "part".to_string()])
    );
}
