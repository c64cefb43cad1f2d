//! VERP return paths, unsubscribe addresses and one-click tokens: one signed token format.
//!
//! A tenant's outgoing message gets the return path `b-<token>@<bounce domain>`; its
//! List-Unsubscribe header gets `mailto:u-<token>@<bounce domain>` and
//! `https://.../u/<token>`. The token names the tenant, the Petrel message id and the recipient,
//! and carries a truncated HMAC-SHA256 tag under a per-deployment key, so an intake that sees the
//! address (at RCPT, before any body) knows whose message bounced without a lookup and refuses a
//! forged one.
//!
//! # Token layout (version 1)
//!
//! The bytes, before encoding:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version (1) |
//! | 1 | key id: which of the [`VerpKeys`] signed it, so keys rotate |
//! | 1 + n | tenant: `0` then 8 bytes for the control plane's `ten_<16 hex>` ids, or `n` (1..=14) then the id's bytes |
//! | 8 | Petrel message id, big-endian |
//! | 1 + … | recipient: `0` then the index (u16 BE), or `1`, a length byte and the address |
//! | 10 | tag: the first [`TAG_BYTES`] of HMAC-SHA256(key, domain ‖ purpose ‖ the bytes above) |
//!
//! The purpose ([`Purpose`]) is not written: it is bound into the tag, so a bounce token
//! replayed as an unsubscribe (or the reverse) fails the tag check like a forgery.
//!
//! The bytes are written in lowercase, unpadded base32 (RFC 4648 alphabet), because some MTAs
//! lowercase or uppercase local parts: decoding accepts either case. A bounce or unsubscribe
//! address with the compact tenant id and a recipient index is 54 bytes of local part, inside
//! RFC 5321's 64 ([`LOCAL_PART_BYTES_MAX`], checked at compile time for the longest tenant id).
//! A recipient given as an address makes the token too long for an address but fits a one-click
//! URL ([`URL_TOKEN_CHARS_MAX`]).
//!
//! Tag length: 80 bits. An attacker who wants one forged address accepted needs about 2^79
//! guesses on average, each an SMTP RCPT; the tag is compared in constant time.

use std::sync::LazyLock;

use data_encoding::{Encoding, Specification};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// RFC 5321 §4.5.3.1.1: the longest local part a receiver must accept, in bytes.
pub const LOCAL_PART_BYTES_MAX: usize = 64;
/// Bytes of the HMAC-SHA256 tag kept in a token (80 bits: see the module docs).
pub const TAG_BYTES: usize = 10;
/// The shortest key accepted, in bytes: less than 128 bits would make the key the weak part.
pub const KEY_BYTES_MIN: usize = 16;
/// Keys a decoder holds at once (the current one and those still valid for mail in flight).
pub const KEYS_MAX: usize = 16;
/// The token version this code writes and reads.
pub const TOKEN_VERSION: u8 = 1;
/// The longest tenant id written as raw bytes, in bytes: what keeps an address token in 64.
pub const TENANT_ID_RAW_BYTES_MAX: usize = 14;
/// The longest recipient address a token may carry, in bytes (RFC 5321 path limit).
pub const RECIPIENT_ADDRESS_BYTES_MAX: usize = 254;
/// The longest one-click URL token accepted, in characters (well inside any URL limit).
pub const URL_TOKEN_CHARS_MAX: usize = 512;
/// The longest address given to [`VerpKeys::decode_address`], in bytes (RFC 5321 path).
pub const ADDRESS_BYTES_MAX: usize = 256;

/// The prefix of a bounce (return-path) local part.
pub const BOUNCE_PREFIX: &str = "b-";
/// The prefix of an unsubscribe (`mailto:` List-Unsubscribe) local part.
pub const UNSUBSCRIBE_PREFIX: &str = "u-";

/// Domain separation: a tag made with this key for anything else cannot match a token.
const MAC_DOMAIN: &[u8] = b"petrel-verp-token";
/// Tenant field marker for the control plane's `ten_<16 hex>` ids.
const TENANT_COMPACT: u8 = 0;
/// The control plane's tenant id prefix (`api::new_id("ten")`).
const TENANT_ID_PREFIX: &str = "ten_";
const RECIPIENT_INDEX: u8 = 0;
const RECIPIENT_ADDRESS: u8 = 1;
/// Bytes of a token with the longest raw tenant id and a recipient index.
const ADDRESS_TOKEN_BYTES_MAX: usize = 2 + 1 + TENANT_ID_RAW_BYTES_MAX + 8 + 3 + TAG_BYTES;
const _: () = assert!(
    BOUNCE_PREFIX.len() + (ADDRESS_TOKEN_BYTES_MAX * 8).div_ceil(5) <= LOCAL_PART_BYTES_MAX,
    "the longest address token must fit a local part"
);
/// Bytes of the shortest well-formed token (compact tenant, recipient index).
const TOKEN_BYTES_MIN: usize = 2 + 1 + 8 + 8 + 3 + TAG_BYTES;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase RFC 4648 base32 without padding; uppercase decodes to the same bytes.
static BASE32_LOWER: LazyLock<Encoding> = LazyLock::new(|| {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.translate.from.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    spec.translate.to.push_str("abcdefghijklmnopqrstuvwxyz");
    // The specification is a constant that data-encoding accepts; a failure is a bug here.
    spec.encoding().expect("a valid base32 specification")
});

/// What a token is for. Bound into the tag: a token made for one purpose fails for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// A VERP return path (`b-<token>@`): bounces and feedback reports come back to it.
    Bounce,
    /// The `mailto:` List-Unsubscribe address (`u-<token>@`).
    Unsubscribe,
    /// The RFC 8058 one-click URL `/u/{token}`.
    OneClick,
}

impl Purpose {
    fn mac_byte(self) -> u8 {
        match self {
            Purpose::Bounce => b'b',
            Purpose::Unsubscribe => b'u',
            Purpose::OneClick => b'o',
        }
    }
}

/// Which recipient of the message a token is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecipientRef {
    /// The recipient's index in the message's envelope (fits an address token).
    Index(u16),
    /// The address itself (fits a one-click URL token; too long for most address tokens).
    Address(String),
}

/// What a token says: whose message, which message, which recipient.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenData {
    /// The control plane's tenant id (`ten_<16 hex>`, or any id of at most
    /// [`TENANT_ID_RAW_BYTES_MAX`] bytes).
    pub tenant_id: String,
    /// The Petrel message id (`MessageId.0`: shard in the top 8 bits).
    pub message_id: u64,
    pub recipient: RecipientRef,
}

/// A decoded address at the intake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedAddress {
    /// [`Purpose::Bounce`] for `b-`, [`Purpose::Unsubscribe`] for `u-`.
    pub purpose: Purpose,
    pub data: TokenData,
    /// The domain after `@`, lowercased, for the caller to check against its bounce domains.
    pub domain: String,
}

/// Why a key set could not be built, or a token not made or not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerpError {
    #[error("key {key_id} is {bytes} bytes; at least {min} are needed")]
    KeyTooShort {
        key_id: u8,
        bytes: usize,
        min: usize,
    },
    #[error("key id {key_id} appears twice")]
    DuplicateKeyId { key_id: u8 },
    #[error("more than {max} keys")]
    TooManyKeys { max: usize },
    #[error("tenant id of {bytes} bytes does not fit a token (at most {max}, or ten_<16 hex>)")]
    TenantIdTooLong { bytes: usize, max: usize },
    #[error("recipient address of {bytes} bytes does not fit a token (at most {max})")]
    RecipientTooLong { bytes: usize, max: usize },
    #[error("the local part would be {bytes} bytes; RFC 5321 allows {max}")]
    LocalPartTooLong { bytes: usize, max: usize },
    #[error("not a token address (no b- or u- local part, or no domain)")]
    NotATokenAddress,
    #[error("input of {bytes} bytes is longer than the {max} accepted")]
    InputTooLong { bytes: usize, max: usize },
    #[error("token is not base32")]
    BadEncoding,
    #[error("token is truncated")]
    Truncated,
    #[error("token version {version} is unknown")]
    UnknownVersion { version: u8 },
    #[error("token key id {key_id} is not a current key")]
    UnknownKey { key_id: u8 },
    #[error("token tag does not verify (forged, altered, or made for another purpose)")]
    BadTag,
    #[error("token fields are malformed")]
    Malformed,
}

/// One signing key. The secret never appears in `Debug` output.
#[derive(Clone)]
pub struct VerpKey {
    id: u8,
    secret: Vec<u8>,
}

impl std::fmt::Debug for VerpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerpKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl VerpKey {
    /// A key from the deployment's secret bytes (at least [`KEY_BYTES_MIN`]).
    pub fn new(id: u8, secret: &[u8]) -> Result<VerpKey, VerpError> {
        if secret.len() < KEY_BYTES_MIN {
            return Err(VerpError::KeyTooShort {
                key_id: id,
                bytes: secret.len(),
                min: KEY_BYTES_MIN,
            });
        }
        Ok(VerpKey {
            id,
            secret: secret.to_vec(),
        })
    }

    /// The id written in tokens this key signs.
    pub fn id(&self) -> u8 {
        self.id
    }

    fn mac(&self, purpose: Purpose, body: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length; the length was checked in `new`.
        let mut mac =
            HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts keys of any length");
        mac.update(MAC_DOMAIN);
        mac.update(&[purpose.mac_byte()]);
        mac.update(body);
        mac
    }
}

/// The keys of a deployment: the current one signs, all of them verify (rotation).
#[derive(Debug, Clone)]
pub struct VerpKeys {
    /// `keys[0]` is the current key; ids are unique; `keys.len() <= KEYS_MAX`.
    keys: Vec<VerpKey>,
}

impl VerpKeys {
    /// A key set that signs with `current` and also accepts tokens of `previous` keys.
    pub fn new(current: VerpKey, previous: Vec<VerpKey>) -> Result<VerpKeys, VerpError> {
        let mut keys = Vec::with_capacity(1 + previous.len());
        keys.push(current);
        for key in previous {
            if keys.iter().any(|k| k.id == key.id) {
                return Err(VerpError::DuplicateKeyId { key_id: key.id });
            }
            keys.push(key);
        }
        if keys.len() > KEYS_MAX {
            return Err(VerpError::TooManyKeys { max: KEYS_MAX });
        }
        Ok(VerpKeys { keys })
    }

    /// The token for `data` and `purpose`, signed with the current key.
    pub fn encode_token(&self, purpose: Purpose, data: &TokenData) -> Result<String, VerpError> {
        let key = &self.keys[0];
        let mut bytes = Vec::with_capacity(ADDRESS_TOKEN_BYTES_MAX + RECIPIENT_ADDRESS_BYTES_MAX);
        bytes.extend_from_slice(&[TOKEN_VERSION, key.id]);
        write_tenant(&mut bytes, &data.tenant_id)?;
        bytes.extend_from_slice(&data.message_id.to_be_bytes());
        write_recipient(&mut bytes, &data.recipient)?;
        let tag = key.mac(purpose, &bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag[..TAG_BYTES]);
        Ok(BASE32_LOWER.encode(&bytes))
    }

    /// Checks a token made for `purpose` and returns what it says.
    pub fn decode_token(&self, purpose: Purpose, token: &str) -> Result<TokenData, VerpError> {
        if token.len() > URL_TOKEN_CHARS_MAX {
            return Err(VerpError::InputTooLong {
                bytes: token.len(),
                max: URL_TOKEN_CHARS_MAX,
            });
        }
        let bytes = BASE32_LOWER
            .decode(token.as_bytes())
            .map_err(|_| VerpError::BadEncoding)?;
        if bytes.len() < 2 {
            return Err(VerpError::Truncated);
        }
        if bytes[0] != TOKEN_VERSION {
            return Err(VerpError::UnknownVersion { version: bytes[0] });
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id == bytes[1])
            .ok_or(VerpError::UnknownKey { key_id: bytes[1] })?;
        if bytes.len() < TOKEN_BYTES_MIN {
            return Err(VerpError::Truncated);
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_BYTES);
        key.mac(purpose, body)
            .verify_truncated_left(tag)
            .map_err(|_| VerpError::BadTag)?;
        read_fields(&body[2..])
    }

    /// The VERP return path `b-<token>@<bounce_domain>`.
    pub fn return_path(&self, data: &TokenData, bounce_domain: &str) -> Result<String, VerpError> {
        self.address(Purpose::Bounce, BOUNCE_PREFIX, data, bounce_domain)
    }

    /// The List-Unsubscribe `mailto:` address `u-<token>@<domain>`.
    pub fn unsubscribe_address(&self, data: &TokenData, domain: &str) -> Result<String, VerpError> {
        self.address(Purpose::Unsubscribe, UNSUBSCRIBE_PREFIX, data, domain)
    }

    /// The token of the one-click URL `/u/{token}` (RFC 8058).
    pub fn one_click_token(&self, data: &TokenData) -> Result<String, VerpError> {
        self.encode_token(Purpose::OneClick, data)
    }

    /// Decodes an address at the intake: `b-` or `u-` local part (any case), a token that
    /// verifies, and a domain. The caller checks the domain is one of its bounce domains.
    pub fn decode_address(&self, address: &str) -> Result<DecodedAddress, VerpError> {
        if address.len() > ADDRESS_BYTES_MAX {
            return Err(VerpError::InputTooLong {
                bytes: address.len(),
                max: ADDRESS_BYTES_MAX,
            });
        }
        let address = address.trim().trim_start_matches('<').trim_end_matches('>');
        let (local, domain) = address
            .rsplit_once('@')
            .ok_or(VerpError::NotATokenAddress)?;
        if domain.is_empty() || local.len() <= BOUNCE_PREFIX.len() || !local.is_ascii() {
            return Err(VerpError::NotATokenAddress);
        }
        let (prefix, token) = local.split_at(BOUNCE_PREFIX.len());
        let purpose = if prefix.eq_ignore_ascii_case(BOUNCE_PREFIX) {
            Purpose::Bounce
        } else if prefix.eq_ignore_ascii_case(UNSUBSCRIBE_PREFIX) {
            Purpose::Unsubscribe
        } else {
            return Err(VerpError::NotATokenAddress);
        };
        let data = self.decode_token(purpose, token)?;
        Ok(DecodedAddress {
            purpose,
            data,
            domain: domain.to_ascii_lowercase(),
        })
    }

    fn address(
        &self,
        purpose: Purpose,
        prefix: &str,
        data: &TokenData,
        domain: &str,
    ) -> Result<String, VerpError> {
        let token = self.encode_token(purpose, data)?;
        let local_bytes = prefix.len() + token.len();
        if local_bytes > LOCAL_PART_BYTES_MAX {
            return Err(VerpError::LocalPartTooLong {
                bytes: local_bytes,
                max: LOCAL_PART_BYTES_MAX,
            });
        }
        Ok(format!("{prefix}{token}@{}", domain.to_ascii_lowercase()))
    }
}

fn write_tenant(out: &mut Vec<u8>, tenant_id: &str) -> Result<(), VerpError> {
    if let Some(compact) = compact_tenant(tenant_id) {
        out.push(TENANT_COMPACT);
        out.extend_from_slice(&compact);
        return Ok(());
    }
    let bytes = tenant_id.as_bytes();
    if bytes.is_empty() || bytes.len() > TENANT_ID_RAW_BYTES_MAX {
        return Err(VerpError::TenantIdTooLong {
            bytes: bytes.len(),
            max: TENANT_ID_RAW_BYTES_MAX,
        });
    }
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
    Ok(())
}

/// The 8 bytes of a `ten_<16 lowercase hex>` id (the form the control plane makes).
fn compact_tenant(tenant_id: &str) -> Option<[u8; 8]> {
    let hex = tenant_id.strip_prefix(TENANT_ID_PREFIX)?;
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let value = u64::from_str_radix(hex, 16).ok()?;
    Some(value.to_be_bytes())
}

fn write_recipient(out: &mut Vec<u8>, recipient: &RecipientRef) -> Result<(), VerpError> {
    match recipient {
        RecipientRef::Index(i) => {
            out.push(RECIPIENT_INDEX);
            out.extend_from_slice(&i.to_be_bytes());
        }
        RecipientRef::Address(a) => {
            if a.is_empty() || a.len() > RECIPIENT_ADDRESS_BYTES_MAX {
                return Err(VerpError::RecipientTooLong {
                    bytes: a.len(),
                    max: RECIPIENT_ADDRESS_BYTES_MAX,
                });
            }
            out.push(RECIPIENT_ADDRESS);
            out.push(a.len() as u8);
            out.extend_from_slice(a.as_bytes());
        }
    }
    Ok(())
}

/// Reads the fields after version and key id (the tag has verified them, so a failure here
/// means a key was used to sign garbage, which this code never does).
fn read_fields(mut b: &[u8]) -> Result<TokenData, VerpError> {
    let tenant_id = match take(&mut b, 1)?[0] {
        TENANT_COMPACT => {
            let raw: [u8; 8] = take(&mut b, 8)?
                .try_into()
                .map_err(|_| VerpError::Malformed)?;
            format!("{TENANT_ID_PREFIX}{:016x}", u64::from_be_bytes(raw))
        }
        n if usize::from(n) <= TENANT_ID_RAW_BYTES_MAX => {
            let raw = take(&mut b, usize::from(n))?;
            String::from_utf8(raw.to_vec()).map_err(|_| VerpError::Malformed)?
        }
        _ => return Err(VerpError::Malformed),
    };
    let id: [u8; 8] = take(&mut b, 8)?
        .try_into()
        .map_err(|_| VerpError::Malformed)?;
    let recipient = match take(&mut b, 1)?[0] {
        RECIPIENT_INDEX => {
            let i: [u8; 2] = take(&mut b, 2)?
                .try_into()
                .map_err(|_| VerpError::Malformed)?;
            RecipientRef::Index(u16::from_be_bytes(i))
        }
        RECIPIENT_ADDRESS => {
            let len = usize::from(take(&mut b, 1)?[0]);
            let raw = take(&mut b, len)?;
            RecipientRef::Address(
                String::from_utf8(raw.to_vec()).map_err(|_| VerpError::Malformed)?,
            )
        }
        _ => return Err(VerpError::Malformed),
    };
    if !b.is_empty() {
        return Err(VerpError::Malformed);
    }
    Ok(TokenData {
        tenant_id,
        message_id: u64::from_be_bytes(id),
        recipient,
    })
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], VerpError> {
    if b.len() < n {
        return Err(VerpError::Malformed);
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

#[cfg(test)]
#[path = "verp_tests.rs"]
mod tests;
