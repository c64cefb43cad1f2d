//! Unsubscribes: a mail to the `mailto:` List-Unsubscribe address (RFC 2369), or a one-click
//! POST to `/u/{token}` (RFC 8058). The token decides; the mail's body and subject are ignored
//! (RFC 2369 clients send anything or nothing there), so this is a thin layer over
//! [`crate::verp`] that insists on the unsubscribe purpose.

use crate::limits::MAIL_BYTES_MAX;
use crate::mail::{MailError, OriginalMessage};
use crate::verp::{Purpose, TokenData, VerpError, VerpKeys};

/// A verified unsubscribe request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubscribeRequest {
    /// Whose message, which recipient.
    pub data: TokenData,
    /// The domain of the `u-` address (empty for a one-click token).
    pub domain: String,
}

/// Why an unsubscribe was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnsubscribeError {
    #[error(transparent)]
    Token(#[from] VerpError),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("the address is a token address of another kind (a return path)")]
    NotAnUnsubscribeAddress,
    #[error("no u- address among the envelope recipient and the To header")]
    NoUnsubscribeAddress,
}

/// The request behind an envelope recipient (at RCPT: refuse the recipient on an error).
pub fn from_recipient(keys: &VerpKeys, rcpt: &str) -> Result<UnsubscribeRequest, UnsubscribeError> {
    let decoded = keys.decode_address(rcpt)?;
    if decoded.purpose != Purpose::Unsubscribe {
        return Err(UnsubscribeError::NotAnUnsubscribeAddress);
    }
    Ok(UnsubscribeRequest {
        data: decoded.data,
        domain: decoded.domain,
    })
}

/// The request behind a one-click URL token.
pub fn from_one_click(
    keys: &VerpKeys,
    token: &str,
) -> Result<UnsubscribeRequest, UnsubscribeError> {
    Ok(UnsubscribeRequest {
        data: keys.decode_token(Purpose::OneClick, token)?,
        domain: String::new(),
    })
}

/// The request behind a received mail: the envelope recipient when it is a `u-` address, else
/// the first `u-` address in the To header (a forwarder may have rewritten the envelope).
pub fn from_mail(
    keys: &VerpKeys,
    rcpt: Option<&str>,
    raw: &[u8],
) -> Result<UnsubscribeRequest, UnsubscribeError> {
    if let Some(rcpt) = rcpt {
        if let Ok(request) = from_recipient(keys, rcpt) {
            return Ok(request);
        }
    }
    if raw.len() > MAIL_BYTES_MAX {
        return Err(UnsubscribeError::Mail(MailError::TooLarge {
            bytes: raw.len(),
            max: MAIL_BYTES_MAX,
        }));
    }
    // Only the header section is read, bounded like an original's headers.
    let headers = OriginalMessage::from_header_text(raw).unwrap_or_default();
    headers
        .to
        .iter()
        .find_map(|to| from_recipient(keys, to).ok())
        .ok_or(UnsubscribeError::NoUnsubscribeAddress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verp::{RecipientRef, VerpKey};

    fn keys() -> VerpKeys {
        VerpKeys::new(VerpKey::new(1, &[42; 32]).unwrap(), vec![]).unwrap()
    }

    fn data() -> TokenData {
        TokenData {
            tenant_id: "ten_00000000000000ff".into(),
            message_id: 99,
            recipient: RecipientRef::Index(0),
        }
    }

    #[test]
    fn the_token_decides() {
        let k = keys();
        let u = k.unsubscribe_address(&data(), "b.example").unwrap();
        let mail = b"From: someone@x\r\nSubject: unsubscribe me\r\n\r\nignored body\r\n";
        assert_eq!(from_mail(&k, Some(&u), mail).unwrap().data, data());
        let to_header = format!("From: a@x\r\nTo: <{u}>\r\n\r\n");
        let r = from_mail(&k, Some("postmaster@b.example"), to_header.as_bytes()).unwrap();
        assert_eq!((r.data, r.domain.as_str()), (data(), "b.example"));
        assert_eq!(
            from_mail(&k, None, mail).unwrap_err(),
            UnsubscribeError::NoUnsubscribeAddress
        );
        let mut big = to_header.clone().into_bytes();
        big.resize(MAIL_BYTES_MAX + 1, b'x');
        assert!(matches!(
            from_mail(&k, None, &big).unwrap_err(),
            UnsubscribeError::Mail(MailError::TooLarge { .. })
        ));
        // The envelope decides before the mail is looked at.
        assert_eq!(from_mail(&k, Some(&u), &big).unwrap().data, data());
    }

    #[test]
    fn other_kinds_and_forgeries_are_refused() {
        let k = keys();
        let b = k.return_path(&data(), "b.example").unwrap();
        assert_eq!(
            from_recipient(&k, &b).unwrap_err(),
            UnsubscribeError::NotAnUnsubscribeAddress
        );
        let u = k.unsubscribe_address(&data(), "b.example").unwrap();
        let at = u.find('@').unwrap();
        // The next-to-last symbol holds five bits of the tag (the last one has padding bits).
        let flipped = if &u[at - 2..at - 1] == "a" { "b" } else { "a" };
        let forged = format!("{}{flipped}{}", &u[..at - 2], &u[at - 1..]);
        assert_eq!(
            from_recipient(&k, &forged).unwrap_err(),
            UnsubscribeError::Token(VerpError::BadTag)
        );
        let click = k.one_click_token(&data()).unwrap();
        assert_eq!(from_one_click(&k, &click).unwrap().data, data());
        let token = &u[2..u.find('@').unwrap()];
        assert_eq!(
            from_one_click(&k, token).unwrap_err(),
            UnsubscribeError::Token(VerpError::BadTag)
        );
    }
}
