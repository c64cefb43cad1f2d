//! A DNSSEC-signed zone served on loopback by a private BIND `named` (Debian's `bind9`), signed
//! at start with `dnssec-keygen` and `dnssec-signzone` (Debian's `bind9-utils`; `ops/test.sh`
//! installs both). One ECDSA P-256 key signs everything, and that key, written to
//! [`NamedServer::trust_anchor`], is what a validating resolver trusts: no root needed.
//!
//! [`NamedServer::start`] takes the zone's records as zone-file lines and, optionally, forged
//! lines that replace an RRset after signing (its old RRSIG stays): a bogus answer a validating
//! resolver must refuse. The process is stopped by its PID when the server is dropped. `None`
//! when the binaries are missing, so a test can say SKIPPED.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting `named` may take to answer for its zone.
pub const NAMED_START_MAX: Duration = Duration::from_secs(15);
/// Ports tried before giving up (another process may take a free port before `named` binds it).
const PORT_ATTEMPTS_MAX: usize = 5;
/// How long one readiness query waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// TTL of every record in the zone, seconds.
pub const ZONE_TTL_SECS: u32 = 300;
/// The `named` binary (Debian installs it outside a user's PATH).
const NAMED_PATHS: [&str; 2] = ["/usr/sbin/named", "named"];

/// One `named` serving one signed zone.
pub struct NamedServer {
    /// UDP and TCP, on 127.0.0.1.
    pub addr: SocketAddr,
    /// The zone's signing key as a DNSKEY record: the trust anchor of a validating resolver.
    pub trust_anchor: PathBuf,
    child: Option<Child>,
    /// Its working directory (removed with the server).
    dir: PathBuf,
}

/// An RRset to replace after signing, so its signature no longer matches.
pub struct Forged {
    /// Owner name, absolute (`_25._tcp.mx.dane.test.`).
    pub owner: String,
    /// Record type (`TLSA`).
    pub rtype: String,
    /// The replacement records' data (`3 1 1 ab12...`).
    pub data: Vec<String>,
}

impl NamedServer {
    /// Signs zone `origin` (absolute, e.g. `dane.test.`) holding `records` (zone-file lines with
    /// absolute owners; an SOA, NS and the key are added) and serves it, with `forged` RRsets
    /// replaced after signing. None without `named` or `dnssec-signzone`.
    pub fn start(origin: &str, records: &[String], forged: &[Forged]) -> Option<NamedServer> {
        NamedServer::start_with_unsigned(origin, records, forged, &[])
    }

    /// As [`NamedServer::start`], also serving `unsigned` zones (origin, records), each
    /// delegated from the signed zone without a DS record (the caller adds the NS record to
    /// `records`): provably insecure to a validating resolver.
    pub fn start_with_unsigned(
        origin: &str,
        records: &[String],
        forged: &[Forged],
        unsigned: &[(String, Vec<String>)],
    ) -> Option<NamedServer> {
        let named = named_binary()?;
        if !runs("dnssec-signzone", &["-h"]) || !runs("dnssec-keygen", &["-h"]) {
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("petrel-named-{}-{}", std::process::id(), unique()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the named directory");
        let trust_anchor = sign(&dir, origin, records, forged);
        let mut zones = vec![(origin.to_string(), "signed.zone".to_string())];
        for (i, (child, child_records)) in unsigned.iter().enumerate() {
            let file = format!("unsigned-{i}.zone");
            std::fs::write(dir.join(&file), zone_text(child, "", child_records))
                .expect("an unsigned zone file");
            zones.push((child.clone(), file));
        }
        for _ in 0..PORT_ATTEMPTS_MAX {
            let port = free_port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            write_config(&dir, &zones, port);
            let child = Command::new(&named)
                .args(["-g", "-n", "1", "-c"])
                .arg(dir.join("named.conf"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("named.log")).ok()?)
                .spawn()
                .expect("named starts");
            let mut server = NamedServer {
                addr,
                trust_anchor: trust_anchor.clone(),
                child: Some(child),
                dir: dir.clone(),
            };
            if zones.iter().all(|(zone, _)| server.wait_ready(zone)) {
                return Some(server);
            }
            server.stop();
        }
        panic!(
            "named did not serve {origin}; its log: {}",
            std::fs::read_to_string(dir.join("named.log")).unwrap_or_default()
        );
    }

    /// Stops it (SIGKILL by PID).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (bounded) until an SOA query for `origin` gets an authoritative answer; false if
    /// the process exited or the time ran out.
    fn wait_ready(&mut self, origin: &str) -> bool {
        let deadline = Instant::now() + NAMED_START_MAX;
        let query = soa_query(origin);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if !matches!(child.try_wait(), Ok(None)) {
                    return false;
                }
            }
            if probe(self.addr, &query) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for NamedServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes and signs the zone in `dir`; returns the trust anchor file.
fn sign(dir: &Path, origin: &str, records: &[String], forged: &[Forged]) -> PathBuf {
    let out = Command::new("dnssec-keygen")
        .current_dir(dir)
        .args(["-q", "-a", "ECDSAP256SHA256", "-n", "ZONE", origin])
        .output()
        .expect("dnssec-keygen runs");
    assert!(out.status.success(), "dnssec-keygen: {out:?}");
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let key_text = std::fs::read_to_string(dir.join(format!("{key}.key"))).expect("the key");
    let dnskey: String = key_text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let zone = zone_text(origin, &dnskey, records);
    std::fs::write(dir.join("zone"), zone).expect("the zone file");
    let out = Command::new("dnssec-signzone")
        .current_dir(dir)
        .args([
            "-q",
            "-z",
            "-O",
            "full",
            "-o",
            origin,
            "-f",
            "signed.zone",
            "zone",
        ])
        .arg(&key)
        .output()
        .expect("dnssec-signzone runs");
    assert!(out.status.success(), "dnssec-signzone: {out:?}");
    if !forged.is_empty() {
        forge(&dir.join("signed.zone"), forged);
    }
    let anchor = dir.join("trust-anchor.keys");
    std::fs::write(&anchor, format!("{dnskey}\n")).expect("the trust anchor");
    anchor
}

/// A zone file: SOA, NS (`ns.<origin>` on 127.0.0.1), `extra` (the key), then `records`.
fn zone_text(origin: &str, extra: &str, records: &[String]) -> String {
    let mut zone = format!(
        "$TTL {ZONE_TTL_SECS}\n{origin} IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 {ZONE_TTL_SECS}\n\
         {origin} IN NS ns.{origin}\nns.{origin} IN A 127.0.0.1\n{extra}\n"
    );
    for r in records {
        zone.push_str(r);
        zone.push('\n');
    }
    zone
}

/// Replaces each forged RRset's records in the signed file (one record a line, `-O full`),
/// keeping its RRSIG, which no longer covers them.
fn forge(signed: &Path, forged: &[Forged]) {
    let text = std::fs::read_to_string(signed).expect("the signed zone");
    let mut out = String::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let replaced = forged.iter().any(|f| {
            fields
                .first()
                .is_some_and(|o| o.eq_ignore_ascii_case(&f.owner))
                && fields
                    .get(3)
                    .is_some_and(|t| t.eq_ignore_ascii_case(&f.rtype))
        });
        if !replaced {
            out.push_str(line);
            out.push('\n');
        }
    }
    for f in forged {
        for data in &f.data {
            let line = format!("{} {ZONE_TTL_SECS} IN {} {data}\n", f.owner, f.rtype);
            out.push_str(&line);
        }
    }
    std::fs::write(signed, out).expect("the forged zone");
}

/// `named.conf` serving `zones` (origin, file in `dir`) on `port`.
fn write_config(dir: &Path, zones: &[(String, String)], port: u16) {
    let d = dir.display();
    let mut conf = format!(
        "options {{\n  directory \"{d}\";\n  listen-on port {port} {{ 127.0.0.1; }};\n  \
         listen-on-v6 {{ none; }};\n  pid-file \"{d}/named.pid\";\n  \
         session-keyfile \"{d}/session.key\";\n  managed-keys-directory \"{d}\";\n  \
         recursion no;\n  dnssec-validation no;\n  notify no;\n}};\ncontrols {{ }};\n"
    );
    for (origin, file) in zones {
        let zone = origin.trim_end_matches('.');
        conf.push_str(&format!(
            "zone \"{zone}\" {{ type primary; file \"{d}/{file}\"; }};\n"
        ));
    }
    std::fs::write(dir.join("named.conf"), conf).expect("named.conf");
}

/// A port free for UDP and TCP on 127.0.0.1 right now.
fn free_port() -> u16 {
    for _ in 0..PORT_ATTEMPTS_MAX * 4 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
        let port = udp.local_addr().expect("its address").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// An SOA query for `origin`, recursion not desired.
fn soa_query(origin: &str) -> Vec<u8> {
    let mut q = vec![0x50, 0x54, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in origin.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len()).expect("a label under 64 bytes"));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 6, 0, 1]);
    q
}

/// Whether the server answers `query` with NOERROR, authoritative, at least one answer.
fn probe(addr: SocketAddr, query: &[u8]) -> bool {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(PROBE_TIMEOUT));
    if socket.send_to(query, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    match socket.recv(&mut buf) {
        Ok(n) if n >= 12 => {
            let authoritative = buf[2] & 0x04 != 0;
            let rcode = buf[3] & 0x0f;
            let answers = u16::from_be_bytes([buf[6], buf[7]]);
            authoritative && rcode == 0 && answers > 0
        }
        _ => false,
    }
}

fn named_binary() -> Option<PathBuf> {
    NAMED_PATHS
        .iter()
        .find(|p| runs(p, &["-v"]))
        .map(PathBuf::from)
}

/// Whether `program` runs at all (present and executable).
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A number unique in this process, for directory names.
fn unique() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}
