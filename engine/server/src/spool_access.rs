//! The delivery side's view of the shard's spool (`petrel_delivery::SpoolAccess`).

use std::rc::Rc;

use petrel_delivery::{RcptState, RcptUpdate, SpoolAccess, SpoolAccessError};
use petrel_spool::{
    Envelope, MessageId, Recipient, RecipientState, RecipientUpdate, Spool, SpoolError,
};

pub struct SpoolAccessor {
    spool: Rc<Spool>,
}

impl SpoolAccessor {
    pub fn new(spool: Rc<Spool>) -> Self {
        SpoolAccessor { spool }
    }
}

fn state(s: &RcptState) -> RecipientState {
    match s {
        RcptState::Pending => RecipientState::Pending,
        RcptState::Delivered => RecipientState::Delivered,
        RcptState::Bounced => RecipientState::Bounced,
        RcptState::Expired => RecipientState::Expired,
    }
}

/// The spool's error as delivery sees it: the two cases delivery can name (an unknown id, a bad
/// recipient index) become typed variants; everything else travels as the spool's own error.
fn access_error(e: SpoolError) -> SpoolAccessError {
    match e {
        SpoolError::NotFound(id) => SpoolAccessError::NotFound { id: id.0 },
        SpoolError::RecipientIndex {
            id,
            index,
            recipients,
        } => SpoolAccessError::RecipientIndex {
            id: id.0,
            index,
            recipients,
        },
        other => SpoolAccessError::Spool(Box::new(other)),
    }
}

impl SpoolAccess for SpoolAccessor {
    async fn read_body(&self, id: u64) -> Result<Vec<u8>, SpoolAccessError> {
        self.spool
            .read_body(MessageId(id))
            .await
            .map_err(access_error)
    }

    async fn update(&self, id: u64, updates: &[RcptUpdate]) -> Result<(), SpoolAccessError> {
        let updates: Vec<RecipientUpdate> = updates
            .iter()
            .map(|u| RecipientUpdate {
                index: u.index,
                state: state(&u.state),
                attempts: u.attempts,
                next_attempt_unix_ms: u.next_attempt_unix_ms,
                last_reply: u.last_reply.clone(),
            })
            .collect();
        self.spool
            .update(MessageId(id), &updates)
            .await
            .map_err(access_error)
    }

    async fn remove(&self, id: u64, _last: &[RcptUpdate]) -> Result<(), SpoolAccessError> {
        self.spool.remove(MessageId(id)).await.map_err(access_error)
    }

    async fn store_dsn(
        &self,
        mail_from: &str,
        rcpt: &str,
        body: &[u8],
    ) -> Result<u64, SpoolAccessError> {
        let now = crate::clock::now_ms();
        let env = Envelope {
            mail_from: mail_from.to_string(),
            recipients: vec![Recipient {
                address: rcpt.to_string(),
                state: RecipientState::Pending,
                attempts: 0,
                next_attempt_unix_ms: now,
                last_reply: None,
            }],
            tenant: None,
            received_unix_ms: now,
            client_addr: "local".into(),
            helo: String::new(),
            authenticated_as: None,
            smtputf8: false,
            body_8bit: false,
            is_dsn: true,
        };
        self.spool
            .store(&env, body)
            .await
            .map(|id| id.0)
            .map_err(access_error)
    }
}
