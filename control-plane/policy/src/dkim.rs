//! DKIM signing per sending domain (RFC 6376, RFC 8463) on top of mail-auth 0.12.
//!
//! mail-auth's own `sign()` reads the system clock for `t=`; to keep time passed in we drive
//! its public pieces (header selection and canonicalization, body hash, key, signature
//! serialization) ourselves, in the same order as its `sign_stream`. Output is byte-identical
//! to mail-auth's except for the timestamp we choose.
//!
//! Canonicalization is relaxed/relaxed. The header list below is signed as found, plus every
//! listed header that is absent (so none can be added later without breaking the signature).

use base64::Engine as _;
use mail_auth::common::crypto::{
    Ed25519Key, HashContext, HashImpl, HashOutput, RsaKey, Sha256, SigningKey,
};
use mail_auth::common::headers::{HeaderStream, Writable, Writer};
use mail_auth::dkim::{Canonicalization, Done, Signature};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::PolicyError;
use crate::snapshot::{DkimAlgorithm, DkimKey};

/// Headers signed when present (and over-signed when absent), in this order.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

type MailAuthSigner = mail_auth::dkim::DkimSigner<mail_auth::common::crypto::DkimKey, Done>;

/// One loaded key of a domain.
struct LoadedKey {
    selector: String,
    algorithm: DkimAlgorithm,
    /// Signs only at or after this instant (Unix ms).
    active_from_unix_ms: u64,
    signer: MailAuthSigner,
}

/// The DKIM signer of one sending domain: its non-retired keys, newest activation first.
pub struct DkimSigner {
    /// The `d=` domain, lower case.
    domain: String,
    /// Non-retired keys sorted by `active_from_unix_ms` descending; never empty.
    keys: Vec<LoadedKey>,
}

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let selectors: Vec<&str> = self.keys.iter().map(|k| k.selector.as_str()).collect();
        f.debug_struct("DkimSigner")
            .field("domain", &self.domain)
            .field("selectors", &selectors)
            .finish()
    }
}

impl DkimSigner {
    /// Load the domain's non-retired keys. `Ok(None)` when none is left; an error when a key
    /// does not load (the caller decides whether that fails the whole snapshot).
    pub fn from_keys(domain: &str, keys: &[DkimKey]) -> Result<Option<DkimSigner>, PolicyError> {
        let mut loaded = Vec::with_capacity(keys.len());
        for k in keys.iter().filter(|k| !k.retired) {
            loaded.push(LoadedKey::load(domain, k)?);
        }
        Ok(DkimSigner::build(domain, loaded))
    }

    /// Like [`from_keys`](Self::from_keys), but a key that does not load is skipped and
    /// returned as an error, so one bad key does not stop a domain's other keys from signing.
    pub fn from_keys_skipping_bad(
        domain: &str,
        keys: &[DkimKey],
    ) -> (Option<DkimSigner>, Vec<PolicyError>) {
        let mut loaded = Vec::with_capacity(keys.len());
        let mut errors = Vec::new();
        for k in keys.iter().filter(|k| !k.retired) {
            match LoadedKey::load(domain, k) {
                Ok(l) => loaded.push(l),
                Err(e) => errors.push(e),
            }
        }
        (DkimSigner::build(domain, loaded), errors)
    }

    /// Newest first; for equal activation times the later entry in the list wins.
    fn build(domain: &str, mut loaded: Vec<LoadedKey>) -> Option<DkimSigner> {
        if loaded.is_empty() {
            return None;
        }
        loaded.reverse();
        loaded.sort_by_key(|k| std::cmp::Reverse(k.active_from_unix_ms));
        Some(DkimSigner {
            domain: domain.to_owned(),
            keys: loaded,
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The selector and algorithm that would sign at `now_unix_ms`, if any key is active.
    pub fn active_key(&self, now_unix_ms: u64) -> Option<(&str, DkimAlgorithm)> {
        self.pick(now_unix_ms)
            .map(|k| (k.selector.as_str(), k.algorithm))
    }

    /// Sign `message` (header section, blank line, body; CRLF line ends) with the newest key
    /// active at `now_unix_ms`. Returns the `DKIM-Signature: ...\r\n` header to prepend.
    pub fn sign(&self, message: &[u8], now_unix_ms: u64) -> Result<Vec<u8>, PolicyError> {
        let key = self.pick(now_unix_ms).ok_or_else(|| PolicyError::Sign {
            reason: format!("no dkim key of {} is active yet", self.domain),
        })?;
        let signature = sign_at(&key.signer, message, now_unix_ms / 1000)?;
        let mut header = Vec::with_capacity(512);
        signature.write(&mut header, true);
        join_dangling_semicolon(&mut header);
        Ok(header)
    }

    /// The newest RSA key active at `now_unix_ms` and its selector, for an ARC set: RFC 8617
    /// §4.1.3 allows only `rsa-sha256` in ARC (dkimpy refuses `ed25519-sha256` there), so a
    /// domain that signs DKIM with Ed25519 needs an RSA key beside it to seal. The key is one
    /// of the domain's DKIM keys, so its published record covers both.
    pub fn arc_signing_key(
        &self,
        now_unix_ms: u64,
    ) -> Option<(&str, &mail_auth::common::crypto::DkimKey)> {
        self.keys
            .iter()
            .filter(|k| k.algorithm == DkimAlgorithm::Rsa2048)
            .find(|k| k.active_from_unix_ms <= now_unix_ms)
            .map(|k| (k.selector.as_str(), &k.signer.key))
    }

    fn pick(&self, now_unix_ms: u64) -> Option<&LoadedKey> {
        self.keys
            .iter()
            .find(|k| k.active_from_unix_ms <= now_unix_ms)
    }
}

/// A header ending on a fold before its closing `;` (`b=...\r\n\t;`; see
/// [`join_dangling_semicolon`]). ARC's message signature checks for it too.
pub const DANGLING_FOLD: &[u8] = b"\r\n\t;\r\n";

/// The fold mail-auth writes when `b=`'s value ends exactly at its 76th column: `b=...\r\n\t;`.
/// RFC 6376 §3.7 drops the whitespace around `b=`'s value when verifying, and mail-auth signs
/// so; dkimpy and others strip only folds followed by base64 and hash `b= ;`, so such a
/// signature fails for them now and then (it depends on the header's length). Nothing else
/// covers a DKIM-Signature we add, so joining the `;` back onto its line is safe.
pub fn join_dangling_semicolon(header: &mut Vec<u8>) {
    if header.ends_with(DANGLING_FOLD) {
        header.truncate(header.len() - DANGLING_FOLD.len());
        header.extend_from_slice(b";\r\n");
    }
}

impl LoadedKey {
    fn load(domain: &str, k: &DkimKey) -> Result<LoadedKey, PolicyError> {
        Ok(LoadedKey {
            selector: k.selector.clone(),
            algorithm: k.algorithm,
            active_from_unix_ms: k.active_from_unix_ms,
            signer: load_signer(domain, k)?,
        })
    }
}

fn load_signer(domain: &str, k: &DkimKey) -> Result<MailAuthSigner, PolicyError> {
    let key_err = |e: mail_auth::Error| PolicyError::Key {
        reason: format!("{domain} selector {}: {e}", k.selector),
    };
    let key: mail_auth::common::crypto::DkimKey = match k.algorithm {
        DkimAlgorithm::Ed25519 => Ed25519Key::from_pkcs8_der(&k.private_key_pkcs8_der)
            .map_err(key_err)?
            .into(),
        DkimAlgorithm::Rsa2048 => RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(k.private_key_pkcs8_der.as_slice()),
        ))
        .map_err(key_err)?
        .into(),
    };
    Ok(mail_auth::dkim::DkimSigner::from_key(key)
        .domain(domain)
        .selector(k.selector.as_str())
        .headers(SIGNED_HEADERS.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed))
}

/// mail-auth's `sign_stream` with `t=` passed in.
fn sign_at(
    signer: &MailAuthSigner,
    message: &[u8],
    now_unix_secs: u64,
) -> Result<Signature, PolicyError> {
    let sign_err = |reason: String| PolicyError::Sign { reason };
    let headers = MessageHeaders::new(message);
    let (_body_len, canonical_headers, signed_headers, canonical_body) =
        signer.template.canonicalize(headers);
    // `signed_headers` also lists the absent ones; require at least one real header (From).
    if !has_header(message, "From") {
        return Err(sign_err("message has no From header".into()));
    }
    let mut signature = signer.template.clone();
    let body_hash = hash_buffered(canonical_body);
    signature.bh = b64(body_hash.as_ref());
    signature.t = now_unix_secs;
    signature.h = signed_headers;
    // Canonicalization emits a byte at a time; collect it before it reaches the key.
    let mut signed_data = Vec::with_capacity(1024);
    Signable {
        headers: canonical_headers,
        signature: &signature,
    }
    .write(&mut signed_data);
    let b = signer
        .key
        .sign(signed_data.as_slice())
        .map_err(|e| sign_err(e.to_string()))?;
    signature.b = b64(&b);
    Ok(signature)
}

/// What the key signs: the canonical headers, then the signature header without `b=` value.
struct Signable<'a, H: Writable> {
    headers: H,
    signature: &'a Signature,
}

impl<H: Writable> Writable for Signable<'_, H> {
    fn write(self, writer: &mut impl Writer) {
        self.headers.write(writer);
        self.signature.write(writer, false);
    }
}

/// Bytes gathered before each hash update (mail-auth's relaxed canonicalization writes one
/// byte per call; one update per byte costs more than the hashing itself).
const HASH_BUFFER_BYTES: usize = 8 << 10;

/// SHA-256 of what `data` writes, fed to the hash in blocks of up to `HASH_BUFFER_BYTES`.
fn hash_buffered(data: impl Writable) -> HashOutput {
    let mut w = BufferedHasher {
        hasher: <Sha256 as HashImpl>::hasher(),
        buffer: Vec::with_capacity(HASH_BUFFER_BYTES),
    };
    data.write(&mut w);
    w.hasher.write(&w.buffer);
    w.hasher.complete()
}

struct BufferedHasher<H: HashContext> {
    hasher: H,
    /// `buffer.len() <= HASH_BUFFER_BYTES`.
    buffer: Vec<u8>,
}

impl<H: HashContext> Writer for BufferedHasher<H> {
    // Called once per canonicalized piece of the body (a line or less): inlined into
    // mail-auth's canonicalizer loop it is a bounds check and a copy. Left to the code
    // generator it was sometimes an out-of-line call per piece (BENCHMARKS.md, twelfth session).
    #[inline]
    fn write(&mut self, buf: &[u8]) {
        if self.buffer.len() + buf.len() > HASH_BUFFER_BYTES {
            self.hasher.write(&self.buffer);
            self.buffer.clear();
        }
        if buf.len() > HASH_BUFFER_BYTES {
            self.hasher.write(buf);
        } else {
            self.buffer.extend_from_slice(buf);
        }
    }
}

fn has_header(message: &[u8], name: &str) -> bool {
    let mut it = MessageHeaders::new(message);
    while let Some((n, _)) = it.next_header() {
        if n.eq_ignore_ascii_case(name.as_bytes()) {
            return true;
        }
    }
    false
}

/// Splits a message into header fields and body for mail-auth's canonicalizer (its own
/// splitter is crate-private). A field runs to the LF that is not followed by SP/HTAB; the
/// name is the bytes before the first colon and the value everything after it, line ends
/// included. The header section ends at an empty line, or at a line that is not a field.
struct MessageHeaders<'x> {
    message: &'x [u8],
    /// Start of the next field; `pos <= message.len()`.
    pos: usize,
    /// Set once the header section has ended; `body_start <= message.len()`.
    body_start: Option<usize>,
}

impl<'x> MessageHeaders<'x> {
    fn new(message: &'x [u8]) -> Self {
        MessageHeaders {
            message,
            pos: 0,
            body_start: None,
        }
    }
}

impl<'x> HeaderStream<'x> for MessageHeaders<'x> {
    fn next_header(&mut self) -> Option<(&'x [u8], &'x [u8])> {
        if self.body_start.is_some() {
            return None;
        }
        let message = self.message;
        let rest = message.get(self.pos..).unwrap_or_default();
        let blank = if rest.starts_with(b"\r\n") {
            Some(2)
        } else if rest.starts_with(b"\n") {
            Some(1)
        } else if rest.is_empty() {
            Some(0)
        } else {
            None
        };
        if let Some(n) = blank {
            self.body_start = Some(self.pos + n);
            return None;
        }
        let mut end = self.pos;
        loop {
            match message[end..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    end += i + 1;
                    if !matches!(message.get(end), Some(b' ' | b'\t')) {
                        break;
                    }
                }
                None => {
                    end = message.len();
                    break;
                }
            }
        }
        let field = &message[self.pos..end];
        match field.iter().position(|&b| b == b':') {
            Some(colon) => {
                self.pos = end;
                Some((&field[..colon], &field[colon + 1..]))
            }
            None => {
                self.body_start = Some(self.pos);
                None
            }
        }
    }

    fn body(&mut self) -> &'x [u8] {
        while self.next_header().is_some() {}
        let start = self.body_start.unwrap_or(self.message.len());
        self.message.get(start..).unwrap_or_default()
    }
}

fn b64(bytes: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .into_bytes()
}

#[cfg(test)]
mod tests;
