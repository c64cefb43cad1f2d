//! The delivery side's view of the shard's spool (`petrel_delivery::SpoolAccess`).

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use petrel_delivery::memory::SharedInterner;
use petrel_delivery::{AttributionKey, RcptState, RcptUpdate, SpoolAccess, SpoolAccessError};
use petrel_spool::{
    Attribution, Envelope, MessageId, Recipient, RecipientState, RecipientUpdate, Spool, SpoolError,
};

/// Set once the shard's spool is open: delivery is built first, so that recovery hands each
/// message straight to its queues (no delivery runs before then).
pub struct SpoolAccessor {
    spool: OnceCell<Rc<Spool>>,
    /// Tenants, credentials and From domains of the attributions read back, shared.
    attribution_values: RefCell<SharedInterner>,
}

impl SpoolAccessor {
    pub fn new(spool: Rc<Spool>) -> Self {
        let a = Self::unopened();
        a.open(spool);
        a
    }

    /// An accessor whose spool is given later ([`SpoolAccessor::open`]).
    pub fn unopened() -> Self {
        SpoolAccessor {
            spool: OnceCell::new(),
            attribution_values: RefCell::default(),
        }
    }

    /// Gives the accessor its spool (the first call wins).
    pub fn open(&self, spool: Rc<Spool>) {
        let _ = self.spool.set(spool);
    }

    fn spool(&self) -> Result<&Rc<Spool>, SpoolAccessError> {
        self.spool.get().ok_or_else(|| {
            SpoolAccessError::Spool(Box::new(SpoolError::Unhealthy("the spool is not open yet")))
        })
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

/// The spool's attribution as delivery keeps it: tenant, credential and From domain shared
/// through the shard's interner, the rest packed in one allocation; None when empty.
pub(crate) fn for_delivery(
    a: Attribution,
    shared: &RefCell<SharedInterner>,
) -> Option<Arc<petrel_delivery::Attribution>> {
    if a.is_empty() {
        return None;
    }
    let key = shared.borrow_mut().intern(AttributionKey {
        tenant_id: a.tenant_id.map(String::into_boxed_str),
        credential_id: a.credential_id.map(String::into_boxed_str),
        from_domain: a.from_domain.map(String::into_boxed_str),
    });
    Some(Arc::new(petrel_delivery::Attribution::new(
        key,
        a.rfc822_message_id.as_deref(),
        &a.tags,
        a.metadata.as_deref(),
    )))
}

impl SpoolAccess for SpoolAccessor {
    async fn read_body(&self, id: u64) -> Result<Vec<u8>, SpoolAccessError> {
        self.spool()?
            .read_body(MessageId(id))
            .await
            .map_err(access_error)
    }

    async fn read_attribution(
        &self,
        id: u64,
    ) -> Result<Option<Arc<petrel_delivery::Attribution>>, SpoolAccessError> {
        Ok(self.read_body_attributed(id).await?.1)
    }

    async fn read_body_attributed(
        &self,
        id: u64,
    ) -> Result<(Vec<u8>, Option<Arc<petrel_delivery::Attribution>>), SpoolAccessError> {
        let (body, a) = self
            .spool()?
            .read_attributed(MessageId(id))
            .await
            .map_err(access_error)?;
        Ok((body, for_delivery(a, &self.attribution_values)))
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
        self.spool()?
            .update(MessageId(id), &updates)
            .await
            .map_err(access_error)
    }

    async fn remove(&self, id: u64, _last: &[RcptUpdate]) -> Result<(), SpoolAccessError> {
        self.spool()?
            .remove(MessageId(id))
            .await
            .map_err(access_error)
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
            // A returned message (RET=FULL) may carry 8-bit text: say so, so delivery sends
            // BODY=8BITMIME (and a peer without it gets the attempt refused, not mangled mail).
            body_8bit: body.iter().any(|b| *b >= 0x80),
            is_dsn: true,
        };
        self.spool()?
            .store(&env, body)
            .await
            .map(|id| id.0)
            .map_err(access_error)
    }
}
