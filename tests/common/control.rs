//! Helpers for the end-to-end tests that run the control plane next to an engine: JSON calls to
//! the admin API, an AUTH-ing SMTP submitter, and an independent DKIM verifier (Python dkimpy).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::SmtpTransport;
use petrel_testkit::http::Request;
use serde_json::Value;

/// How long the submitter waits for any one SMTP reply.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(20);

/// One JSON request to the admin API: its status and its body (`Null` when not JSON).
pub fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let answer = Request::new(method, path)
        .bearer(key)
        .json_text(&body)
        .send(addr)
        .expect("admin API answers");
    (
        answer.status,
        serde_json::from_slice(&answer.body).unwrap_or(Value::Null),
    )
}

/// An SMTP submitter on loopback that requires STARTTLS (the engine's self-signed certificate
/// is accepted) and authenticates with PLAIN.
pub fn mailer(port: u16, user: &str, pass: &str) -> SmtpTransport {
    let tls = TlsParameters::builder("localhost".into())
        .dangerous_accept_invalid_certs(true)
        .build()
        .expect("TLS parameters");
    SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(user.into(), pass.into()))
        .authentication(vec![Mechanism::Plain])
        .timeout(Some(SUBMIT_TIMEOUT))
        .build()
}

/// dkimpy verifies `message` against the TXT record `txt_value` published at
/// `<selector>._domainkey.<domain>`; None when dkimpy is missing.
pub fn dkimpy_verifies(
    message: &[u8],
    domain: &str,
    selector: &str,
    txt_value: &str,
) -> Option<bool> {
    let probe = Command::new("python3")
        .args(["-c", "import dkim, nacl"])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    let dir = tempfile::tempdir().ok()?;
    let msg = dir.path().join("m.eml");
    std::fs::write(&msg, message).ok()?;
    let script = format!(
        "import dkim,sys\nrec={txt:?}.encode()\nname=b'{selector}._domainkey.{domain}.'\n\
         def dns(n, timeout=5):\n    return rec if n.rstrip(b'.')==name.rstrip(b'.') else None\n\
         m=open(sys.argv[1],'rb').read()\nprint('OK' if dkim.verify(m, dnsfunc=dns) else 'FAIL')\n",
        txt = txt_value
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&msg)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim() == "OK")
}
