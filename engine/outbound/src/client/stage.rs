//! Where in the SMTP dialogue a client failure happened.

/// The step of the dialogue a [`ClientError`](super::ClientError) happened in. Its `Display` is
/// the lowercase name that error messages (and so delivery events and DSNs) have always shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// The TCP connect.
    Connect,
    /// Waiting for the 220 greeting.
    Greeting,
    /// EHLO and its capability list.
    Ehlo,
    /// HELO, after EHLO was refused.
    Helo,
    /// The STARTTLS command and its reply.
    StartTls,
    /// The TLS handshake after STARTTLS.
    TlsHandshake,
    /// Starting a transaction on a connection that was already unusable.
    Reuse,
    /// RSET before the next transaction on a reused connection.
    Rset,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// The DATA command (or BDAT's first chunk) and its reply.
    Data,
    /// Writing one block of the message body.
    DataBlock,
    /// The end of the body and the server's final reply to it.
    DataDone,
    /// QUIT.
    Quit,
}

impl Stage {
    /// The stage's name as error messages show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "ehlo",
            Stage::Helo => "helo",
            Stage::StartTls => "starttls",
            Stage::TlsHandshake => "tls handshake",
            Stage::Reuse => "reuse",
            Stage::Rset => "rset",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::DataBlock => "data block",
            Stage::DataDone => "data done",
            Stage::Quit => "quit",
        }
    }

    /// True at the stages where a drop on a reused connection means the server closed it while
    /// idle: nothing of the transaction was accepted, so it is not an attempt.
    pub fn is_before_transaction(self) -> bool {
        matches!(self, Stage::Reuse | Stage::Rset)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Stage;

    #[test]
    fn display_is_the_name_in_error_messages() {
        assert_eq!(Stage::TlsHandshake.to_string(), "tls handshake");
        assert_eq!(Stage::DataDone.to_string(), "data done");
        assert_eq!(Stage::StartTls.to_string(), "starttls");
        assert!(Stage::Rset.is_before_transaction() && !Stage::Mail.is_before_transaction());
    }
}
