//! The vocabulary: categories and classes, with the exact names events and the API use.

use serde::{Deserialize, Serialize};

/// Why a delivery attempt failed. The serde names are the names in events, the API and rule
/// files; they never change once published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// The mailbox does not exist (5.1.1 "user unknown").
    InvalidRecipient,
    /// The recipient's domain does not exist or accepts no mail (NXDOMAIN, null MX, 5.1.2).
    BadDomain,
    /// The mailbox exists but is disabled, suspended or closed (5.2.1, Gmail "DisabledUser").
    InactiveMailbox,
    /// The mailbox is over quota (x.2.2).
    MailboxFull,
    /// The message is larger than the receiver accepts (5.3.4, 5.2.3).
    MessageTooLarge,
    /// The sender's IP or domain is blocked for reputation (RBL listings, Outlook S3150).
    SpamBlock,
    /// The receiver's local policy refused the message ("policy reasons", sender rejected).
    PolicyBlock,
    /// The content was refused (spam or virus content, URL listings, malformed headers).
    ContentBlock,
    /// SPF, DKIM, DMARC or reverse-DNS checks failed.
    AuthFailure,
    /// Too many messages or connections: slow down (Yahoo TSS04, Gmail 4.7.28).
    RateLimited,
    /// The receiver requires TLS, or our policy required TLS that could not be had.
    TlsRequired,
    /// The message cannot be routed (relaying denied, mail loop, no route to the MX hosts).
    RoutingError,
    /// The SMTP dialogue broke (bad sequence, syntax, TLS handshake failure).
    ProtocolError,
    /// A temporary failure with no more specific reason (4xx, timeouts, refused connections).
    Transient,
    /// A failure no rule recognises.
    Other,
}

impl Category {
    /// Every category, in declaration order.
    pub const ALL: [Category; 15] = [
        Category::InvalidRecipient,
        Category::BadDomain,
        Category::InactiveMailbox,
        Category::MailboxFull,
        Category::MessageTooLarge,
        Category::SpamBlock,
        Category::PolicyBlock,
        Category::ContentBlock,
        Category::AuthFailure,
        Category::RateLimited,
        Category::TlsRequired,
        Category::RoutingError,
        Category::ProtocolError,
        Category::Transient,
        Category::Other,
    ];

    /// The name in events, the API and rule files (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Category::InvalidRecipient => "invalid_recipient",
            Category::BadDomain => "bad_domain",
            Category::InactiveMailbox => "inactive_mailbox",
            Category::MailboxFull => "mailbox_full",
            Category::MessageTooLarge => "message_too_large",
            Category::SpamBlock => "spam_block",
            Category::PolicyBlock => "policy_block",
            Category::ContentBlock => "content_block",
            Category::AuthFailure => "auth_failure",
            Category::RateLimited => "rate_limited",
            Category::TlsRequired => "tls_required",
            Category::RoutingError => "routing_error",
            Category::ProtocolError => "protocol_error",
            Category::Transient => "transient",
            Category::Other => "other",
        }
    }

    /// The category with this name, for rule files and API filters.
    pub fn from_name(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether retrying can help, as the receiver (or our own failure) says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceClass {
    /// Permanent: a 5xx reply, or a local failure that cannot pass (NXDOMAIN, null MX).
    Hard,
    /// Temporary: a 4xx reply, or a local failure worth retrying.
    Soft,
}

impl BounceClass {
    /// The name in events and the API (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            BounceClass::Hard => "hard",
            BounceClass::Soft => "soft",
        }
    }

    /// The class with this name, for rule files.
    pub fn from_name(name: &str) -> Option<BounceClass> {
        match name {
            "hard" => Some(BounceClass::Hard),
            "soft" => Some(BounceClass::Soft),
            _ => None,
        }
    }

    /// The class a reply code implies: 5xx (and anything not 4xx) hard, 4xx soft.
    pub fn from_reply_code(code: u16) -> BounceClass {
        if (400..500).contains(&code) {
            BounceClass::Soft
        } else {
            BounceClass::Hard
        }
    }
}

impl std::fmt::Display for BounceClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `bounce` object of a `bounced` or `deferred` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Classification {
    pub category: Category,
    pub class: BounceClass,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_are_the_published_ones() {
        let expected = [
            "invalid_recipient",
            "bad_domain",
            "inactive_mailbox",
            "mailbox_full",
            "message_too_large",
            "spam_block",
            "policy_block",
            "content_block",
            "auth_failure",
            "rate_limited",
            "tls_required",
            "routing_error",
            "protocol_error",
            "transient",
            "other",
        ];
        for (c, name) in Category::ALL.into_iter().zip(expected) {
            assert_eq!(c.as_str(), name);
            assert_eq!(c.to_string(), name);
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{name}\""));
            let back: Category = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, c);
            assert_eq!(Category::from_name(name), Some(c));
        }
        assert_eq!(Category::from_name("Invalid_Recipient"), None);
    }

    #[test]
    fn class_names_and_reply_codes() {
        assert_eq!(
            serde_json::to_string(&BounceClass::Hard).unwrap(),
            "\"hard\""
        );
        assert_eq!(
            serde_json::to_string(&BounceClass::Soft).unwrap(),
            "\"soft\""
        );
        assert_eq!(BounceClass::from_name("soft"), Some(BounceClass::Soft));
        assert_eq!(BounceClass::from_name("permanent"), None);
        assert_eq!(BounceClass::from_reply_code(421), BounceClass::Soft);
        assert_eq!(BounceClass::from_reply_code(499), BounceClass::Soft);
        assert_eq!(BounceClass::from_reply_code(550), BounceClass::Hard);
        let c = Classification {
            category: Category::MailboxFull,
            class: BounceClass::Soft,
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"category":"mailbox_full","class":"soft"}"#
        );
    }
}
