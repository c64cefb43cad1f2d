//! SASL PLAIN (RFC 4616) and LOGIN decoding for AUTH (RFC 4954). Verification is the driver's.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// The mechanisms we offer, in EHLO order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    pub(crate) fn parse(name: &[u8]) -> Option<Mechanism> {
        if name.eq_ignore_ascii_case(b"PLAIN") {
            Some(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case(b"LOGIN") {
            Some(Mechanism::Login)
        } else {
            None
        }
    }
}

/// Why a SASL response was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SaslError {
    /// "*": the client cancelled (501 5.7.0).
    Cancelled,
    /// Not base64, or not UTF-8 where text is required (501 5.5.2).
    Malformed,
    /// A PLAIN authorization identity different from the authentication identity: we do not
    /// support proxy authorization (535 5.7.8, counted as a failed attempt).
    AuthzidMismatch,
}

impl SaslError {
    pub(crate) fn reply(self) -> &'static str {
        match self {
            SaslError::Cancelled => "501 5.7.0 Authentication cancelled\r\n",
            SaslError::Malformed => "501 5.5.2 Error: malformed authentication response\r\n",
            SaslError::AuthzidMismatch => "535 5.7.8 Error: authentication failed\r\n",
        }
    }
}

/// Decodes one client response: "*" cancels, "=" (or an empty line) is the empty response.
pub(crate) fn decode_response(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    match line {
        b"*" => Err(SaslError::Cancelled),
        b"" | b"=" => Ok(Vec::new()),
        _ => STANDARD.decode(line).map_err(|_| SaslError::Malformed),
    }
}

/// PLAIN: "authzid NUL authcid NUL passwd" -> (username, password).
pub(crate) fn plain_credentials(decoded: &[u8]) -> Result<(String, String), SaslError> {
    let mut parts = decoded.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if authcid.is_empty() {
        return Err(SaslError::Malformed);
    }
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::AuthzidMismatch);
    }
    Ok((utf8(authcid)?, utf8(password)?))
}

pub(crate) fn utf8(bytes: &[u8]) -> Result<String, SaslError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| SaslError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_forms() {
        assert_eq!(
            plain_credentials(b"\0alice\0secret"),
            Ok(("alice".to_string(), "secret".to_string()))
        );
        assert_eq!(
            plain_credentials(b"alice\0alice\0pw\0x"),
            Ok(("alice".to_string(), "pw\0x".to_string()))
        );
        assert_eq!(
            plain_credentials(b"bob\0alice\0pw"),
            Err(SaslError::AuthzidMismatch)
        );
        assert_eq!(plain_credentials(b"\0\0pw"), Err(SaslError::Malformed));
        assert_eq!(plain_credentials(b"alice"), Err(SaslError::Malformed));
        assert_eq!(decode_response(b"*"), Err(SaslError::Cancelled));
        assert_eq!(decode_response(b"="), Ok(Vec::new()));
        assert_eq!(decode_response(b"!!"), Err(SaslError::Malformed));
    }
}
