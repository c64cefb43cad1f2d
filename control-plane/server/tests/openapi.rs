//! The OpenAPI document against independent tools, on a live control plane (fresh SQLite store,
//! the operator's owner key): `openapi-spec-validator` must accept the document, and
//! `schemathesis` (property-based requests generated from it, a bounded number per operation)
//! must find no 5xx and no response that breaks its documented schema. ops/test.sh installs
//! both; when they are missing this test fails rather than skips.

mod common;

use std::process::Stdio;
use std::time::Duration;

/// Requests schemathesis generates per operation and phase.
const EXAMPLES_PER_OPERATION_MAX: u32 = 20;
/// The whole schemathesis run must finish within this.
const SCHEMATHESIS_TIMEOUT_SECS: u64 = 240;
/// One request's timeout inside schemathesis.
const REQUEST_TIMEOUT_SECS: u64 = 30;
/// Fixed, so a failure reproduces (`--seed` on the command line below).
const SCHEMATHESIS_SEED: u64 = 12;

async fn run(what: &str, cmd: &mut tokio::process::Command, timeout_secs: u64) -> String {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{what} could not start ({e}); ops/test.sh installs it"));
    let out = tokio::time::timeout(Duration::from_secs(timeout_secs), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {timeout_secs} s"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_validates_and_schemathesis_finds_nothing() {
    let h = common::start().await;
    let doc = h.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    let file = h.dir.path().join("openapi.json");
    std::fs::write(&file, doc.body.to_string()).expect("write document");

    let report = run(
        "openapi-spec-validator",
        tokio::process::Command::new("python3")
            .arg("-m")
            .arg("openapi_spec_validator")
            .arg(&file),
        60,
    )
    .await;
    assert!(report.contains("OK"), "{report}");

    let url = format!("http://{}/v1/openapi.json", h.info.api_addr);
    // Two passes, because revoking or rotating a credential may hit the very key schemathesis
    // sends (it finds its id in GET /v1/credentials), after which every request answers 401
    // and the rest of the run would test nothing. So the first pass covers every other
    // operation, and the second pass those two, last.
    let self_destructive = ["credentials_revoke", "credentials_rotate"];
    let mut first = schemathesis(&url, &h.owner_key, h.dir.path());
    for id in self_destructive {
        first.arg("--exclude-operation-id").arg(id);
    }
    let report = run("schemathesis", &mut first, SCHEMATHESIS_TIMEOUT_SECS).await;
    eprintln!("{report}");
    assert!(report.contains("Tested: 61"), "{report}");
    let mut second = schemathesis(&url, &h.owner_key, h.dir.path());
    for id in self_destructive {
        second.arg("--include-operation-id").arg(id);
    }
    let report = run("schemathesis", &mut second, SCHEMATHESIS_TIMEOUT_SECS).await;
    eprintln!("{report}");
    assert!(report.contains("Tested: 2\n"), "{report}");
}

/// A schemathesis run against `url` with `key`: no 5xx, every response matches its schema.
fn schemathesis(url: &str, key: &str, dir: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("schemathesis");
    cmd.current_dir(dir)
        .env("NO_COLOR", "1")
        .arg("run")
        .arg(url)
        .arg("--checks")
        .arg("not_a_server_error,response_schema_conformance")
        .arg("--max-examples")
        .arg(EXAMPLES_PER_OPERATION_MAX.to_string())
        .arg("--seed")
        .arg(SCHEMATHESIS_SEED.to_string())
        .arg("--generation-database")
        .arg("none")
        .arg("--request-timeout")
        .arg(REQUEST_TIMEOUT_SECS.to_string())
        .arg("-H")
        .arg(format!("Authorization: Bearer {key}"));
    cmd
}
