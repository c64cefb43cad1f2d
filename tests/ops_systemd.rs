//! The systemd units in `ops/systemd/` (issue 19): `systemd-analyze verify` finds nothing to say
//! about them, `systemd-analyze security --offline=yes` scores each at most 2.0, a unit stripped
//! of its hardening scores above that (so the check can fail), every secret the code reads as a
//! systemd credential is loaded by a unit, and the ExecStart lines parse with the real binary.
//! Offline: no systemd needs to be running. Without `systemd-analyze` the tests say SKIPPED.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The highest exposure score a unit may have (`systemd-analyze security`, 0.0 to 10.0).
const EXPOSURE_MAX: f64 = 2.0;
/// The same bound on `--threshold`'s scale (it takes an integer, ten times the score).
const THRESHOLD_ARG: &str = "--threshold=20";
/// Where the units install the binary; the tests point ExecStart at the one cargo built.
const INSTALLED_BIN: &str = "/usr/local/bin/petrel";
const UNITS: [&str; 2] = ["petrel-engine.service", "petrel-control.service"];
/// The directives a weakened copy keeps: what the unit does, none of how it is confined.
const WEAKENED_KEEPS: [&str; 5] = ["Description", "Type", "ExecStart", "User", "Group"];
/// Credentials the units load for a path given in the configuration or on the command line
/// (TLS private keys), not by a name the code looks up.
const PATH_ONLY_CREDENTIALS: [&str; 3] = [
    "petrel-smtp-tls-key",
    "petrel-api-tls-key",
    "petrel-push-tls-key",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn unit_text(name: &str) -> String {
    let path = root().join("ops/systemd").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `systemd-analyze`, when this machine has it.
fn systemd_analyze() -> Option<PathBuf> {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIPPED: systemd-analyze not found (Debian's systemd package has it)");
    }
    ok.then(|| PathBuf::from("systemd-analyze"))
}

/// The unit's text with ExecStart pointing at the built binary (`verify` checks that it exists).
fn staged(text: &str) -> String {
    text.replace(
        &format!("ExecStart={INSTALLED_BIN} "),
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_petrel")),
    )
}

/// Writes `text` as `dir/name` and returns its path.
fn write_unit(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the staged unit");
    path
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `systemd-analyze security --offline=yes --threshold=20 <unit>`: whether it passed the
/// threshold, the overall exposure it printed, and everything it printed.
fn security(tool: &Path, unit: &Path) -> (bool, f64, String) {
    let out = Command::new(tool)
        .args(["security", "--offline=yes", THRESHOLD_ARG])
        .arg(unit)
        .current_dir(unit.parent().expect("a unit has a directory"))
        .output()
        .expect("run systemd-analyze security");
    let text = output_text(&out);
    let score =
        overall_exposure(&text).unwrap_or_else(|| panic!("no overall exposure level in:\n{text}"));
    (out.status.success(), score, text)
}

/// The number in `→ Overall exposure level for petrel-engine.service: 1.5 OK`.
fn overall_exposure(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    let (_, after) = line.split_once(".service: ")?;
    after.split_whitespace().next()?.parse().ok()
}

/// The IDs of every `LoadCredential=ID[:PATH]` line.
fn loaded_credentials(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("LoadCredential="))
        .map(|v| v.split(':').next().unwrap_or_default().to_string())
        .collect()
}

/// The systemd credential names the code looks up: `"petrel-..."` string literals on lines of
/// `src/`, `engine/` and `control-plane/` that speak of credentials.
fn credentials_in_code() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for dir in ["src", "engine", "control-plane"] {
        scan_for_credentials(&root().join(dir), &mut found);
    }
    found
}

fn scan_for_credentials(dir: &Path, found: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != "fuzz" && name != "tests" {
                scan_for_credentials(&path, found);
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines().filter(|l| {
            !l.trim_start().starts_with("//")
                && (l.contains("credential(") || l.contains("_CREDENTIAL: &str"))
        }) {
            for literal in line.split('"').skip(1).step_by(2) {
                if literal.starts_with("petrel-") {
                    found.insert(literal.to_string());
                }
            }
        }
    }
}

#[test]
fn the_units_verify_without_a_word() {
    let Some(tool) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    for name in UNITS {
        let unit = write_unit(dir.path(), name, &staged(&unit_text(name)));
        let out = Command::new(&tool)
            .arg("verify")
            .arg(&unit)
            .current_dir(dir.path())
            .output()
            .expect("run systemd-analyze verify");
        let text = output_text(&out);
        assert!(out.status.success(), "verify {name}:\n{text}");
        // verify exits 0 on an unknown key or a bad value and only prints it: any line about
        // the unit fails the test.
        let about_unit: Vec<&str> = text.lines().filter(|l| l.contains(".service")).collect();
        assert!(about_unit.is_empty(), "verify {name}:\n{text}");
    }
}

#[test]
fn each_unit_scores_at_most_2_0() {
    let Some(tool) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    for name in UNITS {
        let unit = write_unit(dir.path(), name, &staged(&unit_text(name)));
        let (passed, score, text) = security(&tool, &unit);
        println!("{name}: exposure {score}");
        assert!(score <= EXPOSURE_MAX, "{name} scores {score}:\n{text}");
        assert!(passed, "{name} fails {THRESHOLD_ARG}:\n{text}");
    }
}

/// The score check can fail: the same unit without its confinement scores far above 2.0.
#[test]
fn a_unit_without_its_hardening_scores_above_2_0() {
    let Some(tool) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let full = staged(&unit_text("petrel-engine.service"));
    let weakened: String = full
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or_default();
            l.starts_with('[') || WEAKENED_KEEPS.contains(&key)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let unit = write_unit(dir.path(), "petrel-weakened.service", &weakened);
    let (passed, score, text) = security(&tool, &unit);
    assert!(
        score > EXPOSURE_MAX,
        "the weakened unit scores {score}:\n{text}"
    );
    assert!(!passed, "the weakened unit passes {THRESHOLD_ARG}:\n{text}");
}

/// Every credential the code reads is loaded by a unit; the key-encryption key by both.
#[test]
fn every_credential_the_code_reads_is_loaded() {
    let engine = loaded_credentials(&unit_text("petrel-engine.service"));
    let control = loaded_credentials(&unit_text("petrel-control.service"));
    let in_code = credentials_in_code();
    for expected in [
        "petrel-kek",
        "petrel-admin-token",
        "petrel-control-token",
        "petrel-audit-key",
        "petrel-push-token",
        "petrel-database-password",
    ] {
        assert!(
            in_code.contains(expected),
            "the code scan misses {expected}: {in_code:?}"
        );
    }
    let loaded: BTreeSet<String> = engine.union(&control).cloned().collect();
    let missing: Vec<&String> = in_code.difference(&loaded).collect();
    assert!(missing.is_empty(), "no unit loads {missing:?}");
    assert!(engine.contains("petrel-kek") && control.contains("petrel-kek"));
    for name in ["petrel-admin-token", "petrel-control-token"] {
        assert!(engine.contains(name), "the engine unit lacks {name}");
    }
    for name in [
        "petrel-audit-key",
        "petrel-push-token",
        "petrel-database-password",
    ] {
        assert!(control.contains(name), "the control unit lacks {name}");
    }
    let unknown: Vec<&String> = loaded
        .iter()
        .filter(|c| !in_code.contains(*c) && !PATH_ONLY_CREDENTIALS.contains(&c.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "units load credentials nothing reads: {unknown:?}"
    );
}

/// What the issue names, beyond the score: these settings stay even if weights change.
#[test]
fn the_units_carry_the_named_hardening() {
    for name in UNITS {
        let text = unit_text(name);
        let lines: BTreeSet<&str> = text.lines().map(str::trim).collect();
        for required in [
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "User=petrel",
            "StateDirectory=petrel",
            "UMask=0077",
            "MemoryDenyWriteExecute=yes",
            "SystemCallArchitectures=native",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        ] {
            assert!(lines.contains(required), "{name} lacks {required}");
        }
    }
    // glommio is io_uring: the engine's allow list names its calls.
    let engine = unit_text("petrel-engine.service");
    let allow = engine
        .lines()
        .find(|l| l.starts_with("SystemCallFilter=@system-service"))
        .expect("the engine has a system call allow list");
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allow.contains(call), "{allow} lacks {call}");
    }
    assert!(engine.lines().any(|l| l == "LimitMEMLOCK=infinity"));
}

/// The ExecStart lines name commands and flags the binary has (clap stops at `--help` after
/// checking the flags before it).
#[test]
fn the_exec_start_lines_parse() {
    for name in UNITS {
        let text = unit_text(name);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("an ExecStart line");
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some(INSTALLED_BIN), "{line}");
        let args: Vec<&str> = words.filter(|w| !w.starts_with('$')).collect();
        let out = Command::new(env!("CARGO_BIN_EXE_petrel"))
            .args(&args)
            .arg("--help")
            .output()
            .expect("run petrel");
        assert!(
            out.status.success(),
            "{name}: {line}\n{}",
            output_text(&out)
        );
    }
}

#[test]
fn the_score_parser_reads_systemd_analyze_output() {
    let text = "  NAME  DESCRIPTION  EXPOSURE\n\
                → Overall exposure level for petrel-engine.service: 1.5 OK :-)\n";
    assert_eq!(overall_exposure(text), Some(1.5));
    assert_eq!(overall_exposure("nothing"), None);
}
