//! Secrets never come from the command line or the environment (issue 16): the old flags and
//! variables refuse to start with a message that says what to use instead, a secret file that
//! others may read is refused, and a database URL with a password inside is refused. (That a
//! token file works is what every linked engine in the other tests uses.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::petrel_bin;

/// How long a refused start may take (it reads its flags, then stops).
const REFUSAL_MAX: Duration = Duration::from_secs(20);

/// Runs petrel with `args` (and `env`), which must exit unsuccessfully in time; returns its
/// output.
fn refused(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(petrel_bin());
    cmd.args(args)
        .env_remove("PETREL_CONTROL_TOKEN")
        .env_remove("PETREL_PUSH_TOKEN")
        .env_remove("PETREL_DATABASE_URL")
        .env_remove("CREDENTIALS_DIRECTORY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run petrel");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if started.elapsed() > REFUSAL_MAX {
            let _ = child.kill();
            let _ = child.wait();
            panic!("petrel {args:?} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success(), "petrel {args:?} started");
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn old_secret_flags_and_variables_refuse_to_start_and_say_what_to_use() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let engine = ["engine", "--data-dir", data, "--control", "127.0.0.1:9"];

    let o = refused(&[&engine[..], &["--control-token", "s3cret"]].concat(), &[]);
    assert!(
        stderr(&o).contains("--control-token-file"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("s3cret"), "the secret is never echoed");
    let o = refused(&engine, &[("PETREL_CONTROL_TOKEN", "s3cret")]);
    assert!(
        stderr(&o).contains("--control-token-file"),
        "{}",
        stderr(&o)
    );

    let serve = [
        "control",
        "serve",
        "--data-dir",
        data,
        "--api-listen",
        "127.0.0.1:0",
        "--push-listen",
        "127.0.0.1:0",
    ];
    let o = refused(&[&serve[..], &["--push-token", "s3cret"]].concat(), &[]);
    assert!(stderr(&o).contains("--push-token-file"), "{}", stderr(&o));
    let o = refused(&serve, &[("PETREL_PUSH_TOKEN", "s3cret")]);
    assert!(stderr(&o).contains("--push-token-file"), "{}", stderr(&o));
    let url = "postgres://petrel:s3cret@127.0.0.1:9/petrel";
    let o = refused(&[&serve[..], &["--database-url", url]].concat(), &[]);
    assert!(
        stderr(&o).contains("--database-password-file"),
        "{}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains("s3cret"),
        "the password is never echoed"
    );
    let o = refused(&serve, &[("PETREL_DATABASE_URL", url)]);
    assert!(
        stderr(&o).contains("--database-password-file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_secret_file_others_may_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data = dir.path().join("data");
    let o = refused(
        &[
            "engine",
            "--data-dir",
            data.to_str().unwrap(),
            "--control",
            "127.0.0.1:9",
            "--control-token-file",
            token.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        stderr(&o).contains("mode 0644") && stderr(&o).contains("chmod 600"),
        "{}",
        stderr(&o)
    );
}
