//! `List-Unsubscribe` (RFC 2369) and `List-Unsubscribe-Post` (RFC 8058), added before DKIM
//! signing for tenants that turned `list_unsubscribe` on, so both headers are signed
//! (`petrel_policy::dkim::SIGNED_HEADERS` lists them) and a receiver can trust the one-click
//! link.
//!
//! The header is
//! `List-Unsubscribe: <mailto:u-TOKEN@BOUNCE_DOMAIN>,<CRLF> <ONE_CLICK_URL_BASE/u/TOKEN>` plus
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click`, with tokens from `petrel-reports`
//! signed by the snapshot's current return-path key. Each token names the tenant, the Petrel
//! message id (reserved from the spool before signing, so the id in the link is the id the
//! message is stored and reported under) and the recipient:
//! - the one-click token carries the recipient's address, so the control plane's `POST /u/…`
//!   needs no lookup to make the `unsubscribed` event and the suppression;
//! - the `mailto:` token carries the recipient's index (0): the address does not fit an RFC
//!   5321 local part of 64 bytes; the intake resolves it from the message.
//!
//! Only one-recipient messages get the headers. One body goes to every recipient of a
//! message, so a link naming one recipient would unsubscribe that recipient when another one
//! clicks, and a link naming none could not say whom to suppress. Bulk senders send one
//! message per recipient anyway (that is what VERP and per-recipient links need everywhere).
//!
//! A message that already has a `List-Unsubscribe` or `List-Unsubscribe-Post` header keeps
//! the tenant's own and gets nothing added (a mailing-list manager knows its list better).
//! The headers go at the end of the header section, below the trace headers.

use std::cell::RefCell;
use std::rc::Rc;

use petrel_policy::{CompiledPolicy, ReturnPath};
use petrel_reports::{RecipientRef, TokenData, VerpKey, VerpKeys};

/// The header names, as written and as looked for (case-insensitively).
pub const LIST_UNSUBSCRIBE: &str = "List-Unsubscribe";
pub const LIST_UNSUBSCRIBE_POST: &str = "List-Unsubscribe-Post";
/// The one-click header line (RFC 8058 §3.1).
const POST_LINE: &[u8] = b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n";
/// Bytes of the header section scanned for a tenant's own header at most; past it the
/// message is left alone (the SMTP checks bound the section well below this).
pub const HEADER_SCAN_BYTES_MAX: usize = 1 << 20;

thread_local! {
    /// The key set of the policy version last used on this shard's thread: built once per
    /// snapshot, not per message.
    static KEYS: RefCell<Option<(u64, Option<Rc<VerpKeys>>)>> = const { RefCell::new(None) };
}

/// What to add, when the message qualifies: who it is from, and to whom.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The tenant the message is attributed to.
    pub tenant_id: &'a str,
    /// The envelope recipients.
    pub recipients: &'a [String],
}

/// True when the tenant asked for the headers and the message has one recipient: the caller
/// then reserves a message id and calls [`add`].
pub fn wanted(policy: &CompiledPolicy, req: &Request<'_>) -> bool {
    let rp = &policy.snapshot().return_path;
    req.recipients.len() == 1
        && policy
            .tenant(req.tenant_id)
            .is_some_and(|t| t.list_unsubscribe)
        && rp.current_key().is_some()
        && (!rp.bounce_domain.is_empty() || !rp.one_click_url_base.is_empty())
}

/// The message with the headers added (at the end of its header section), or unchanged when
/// it has its own, has no header section, or no token can be made.
pub fn add(
    policy: &CompiledPolicy,
    req: &Request<'_>,
    message_id: u64,
    message: Vec<u8>,
) -> Vec<u8> {
    let (Some(recipient), Some(end)) = (req.recipients.first(), header_end(&message)) else {
        return message;
    };
    if has_own_header(&message[..end]) {
        return message;
    }
    let Some(keys) = keys_for(policy) else {
        return message;
    };
    let Some(header) = header_lines(
        &policy.snapshot().return_path,
        &keys,
        req.tenant_id,
        message_id,
        recipient,
    ) else {
        return message;
    };
    let mut out = Vec::with_capacity(message.len() + header.len());
    out.extend_from_slice(&message[..end]);
    out.extend_from_slice(&header);
    out.extend_from_slice(&message[end..]);
    out
}

/// The two header lines, CRLF-terminated; None when neither link can be made.
fn header_lines(
    rp: &ReturnPath,
    keys: &VerpKeys,
    tenant_id: &str,
    message_id: u64,
    recipient: &str,
) -> Option<Vec<u8>> {
    let data = |recipient| TokenData {
        tenant_id: tenant_id.to_string(),
        message_id,
        recipient,
    };
    let mailto = (!rp.bounce_domain.is_empty())
        .then(|| {
            keys.unsubscribe_address(&data(RecipientRef::Index(0)), &rp.bounce_domain)
                .ok()
        })
        .flatten();
    let https = (!rp.one_click_url_base.is_empty())
        .then(|| {
            keys.one_click_token(&data(RecipientRef::Address(recipient.to_string())))
                .ok()
        })
        .flatten()
        .map(|token| format!("{}/u/{token}", rp.one_click_url_base));
    let links: Vec<String> = [
        mailto.map(|a| format!("<mailto:{a}>")),
        https.clone().map(|u| format!("<{u}>")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if links.is_empty() {
        return None;
    }
    // One link per line (folded), so each line stays short.
    let mut out = format!("{LIST_UNSUBSCRIBE}: {}\r\n", links.join(",\r\n ")).into_bytes();
    if https.is_some() {
        out.extend_from_slice(POST_LINE);
    }
    Some(out)
}

/// The key set of `policy`'s return path, cached per policy version on this thread.
fn keys_for(policy: &CompiledPolicy) -> Option<Rc<VerpKeys>> {
    let version = policy.version();
    KEYS.with(|cell| {
        let mut cached = cell.borrow_mut();
        if let Some((v, keys)) = cached.as_ref() {
            if *v == version {
                return keys.clone();
            }
        }
        let keys = build_keys(&policy.snapshot().return_path).map(Rc::new);
        *cached = Some((version, keys.clone()));
        keys
    })
}

/// `VerpKeys` from the snapshot: the current key signs, the others verify (CONTRACTS-14).
fn build_keys(rp: &ReturnPath) -> Option<VerpKeys> {
    let current = rp.current_key()?;
    let current = VerpKey::new(current.id, &current.secret).ok()?;
    let previous = rp
        .keys
        .iter()
        .filter(|k| k.id != rp.current_key_id)
        .filter_map(|k| VerpKey::new(k.id, &k.secret).ok())
        .collect();
    match VerpKeys::new(current, previous) {
        Ok(keys) => Some(keys),
        Err(e) => {
            tracing::warn!(error = %e, "return-path keys unusable; no List-Unsubscribe");
            None
        }
    }
}

/// The offset just past the header section's last CRLF (where the blank line starts), within
/// [`HEADER_SCAN_BYTES_MAX`]; None for a message without a blank line there.
fn header_end(message: &[u8]) -> Option<usize> {
    let scan = &message[..message.len().min(HEADER_SCAN_BYTES_MAX)];
    if scan.starts_with(b"\r\n") {
        return Some(0);
    }
    scan.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
}

/// True when a header field of the section is List-Unsubscribe or List-Unsubscribe-Post.
fn has_own_header(section: &[u8]) -> bool {
    section
        .split(|&b| b == b'\n')
        .filter(|line| !line.first().is_some_and(|b| *b == b' ' || *b == b'\t'))
        .filter_map(|line| line.iter().position(|&b| b == b':').map(|i| &line[..i]))
        .map(|name| name.trim_ascii())
        .any(|name| {
            name.eq_ignore_ascii_case(LIST_UNSUBSCRIBE.as_bytes())
                || name.eq_ignore_ascii_case(LIST_UNSUBSCRIBE_POST.as_bytes())
        })
}

#[cfg(test)]
#[path = "list_unsubscribe_tests.rs"]
mod tests;
