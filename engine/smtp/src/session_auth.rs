//! AUTH (RFC 4954) for the session: the command's preconditions and the PLAIN / LOGIN exchanges.
//! Credentials go to the driver in [`Event::Auth`]; failures count towards `auth_attempts_max`.

use super::{Awaiting, Mode, Session, NEED_HELO, NEED_STARTTLS};
use crate::auth::{self, Mechanism, SaslError};
use crate::types::Event;

impl Session {
    pub(super) fn on_auth(&mut self, mechanism: &[u8], initial: Option<&[u8]>) {
        if !self.config.auth_enabled {
            return self.error("503 5.5.1 Error: authentication not enabled\r\n");
        }
        if self.helo.is_none() {
            return self.error(NEED_HELO);
        }
        if !self.tls_satisfied_for_auth() {
            return self.error(NEED_STARTTLS);
        }
        if self.authenticated_as.is_some() {
            return self.error("503 5.5.1 Error: already authenticated\r\n");
        }
        if self.txn.is_some() {
            return self.error("503 5.5.1 Error: MAIL transaction in progress\r\n");
        }
        let Some(mechanism) = Mechanism::parse(mechanism) else {
            return self.error("504 5.5.4 Error: unsupported authentication mechanism\r\n");
        };
        match (mechanism, initial) {
            (Mechanism::Plain, None) => {
                self.mode = Mode::AuthPlain;
                self.reply("334 \r\n");
            }
            (Mechanism::Plain, Some(response)) => self.on_plain_response(response),
            (Mechanism::Login, None) => {
                self.mode = Mode::AuthLoginUser;
                self.reply("334 VXNlcm5hbWU6\r\n");
            }
            (Mechanism::Login, Some(response)) => self.on_login_user(response),
        }
    }

    pub(super) fn on_plain_response(&mut self, line: &[u8]) {
        match auth::decode_response(line).and_then(|decoded| auth::plain_credentials(&decoded)) {
            Ok((username, password)) => {
                self.emit(Event::Auth { username, password }, Awaiting::Auth)
            }
            Err(SaslError::AuthzidMismatch) => self.auth_failed(),
            Err(e) => self.error(e.reply()),
        }
    }

    pub(super) fn on_login_user(&mut self, line: &[u8]) {
        match auth::decode_response(line).and_then(|decoded| auth::utf8(&decoded)) {
            Ok(username) => {
                self.mode = Mode::AuthLoginPassword { username };
                self.reply("334 UGFzc3dvcmQ6\r\n");
            }
            Err(e) => self.error(e.reply()),
        }
    }

    pub(super) fn on_login_password(&mut self, username: String, line: &[u8]) {
        match auth::decode_response(line).and_then(|decoded| auth::utf8(&decoded)) {
            Ok(password) => self.emit(Event::Auth { username, password }, Awaiting::Auth),
            Err(e) => self.error(e.reply()),
        }
    }

    pub(super) fn auth_failed(&mut self) {
        self.auth_refused("535 5.7.8 Error: authentication failed\r\n");
    }

    /// A refused attempt: `reply`, and it counts towards `auth_attempts_max`.
    pub(super) fn auth_refused(&mut self, reply: &'static str) {
        self.auth_failures += 1;
        self.reply(reply);
        if self.auth_failures >= self.config.limits.auth_attempts_max {
            self.close_421("4.7.0", "too many failed authentication attempts");
        }
    }
}
