//! An in-memory `SpoolAccess`: what the engine's petrel-spool adapter does, minus the disk.
//!
//! It checks the contract as it goes (a message is removed only with every recipient final;
//! DSNs use the null sender) and remembers what happened, so a test can compare final states.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use petrel_delivery::{
    Attribution, QueuedAttribution, QueuedMessage, QueuedRcpt, RcptState, RcptUpdate, SpoolAccess,
    SpoolAccessError,
};

/// A recipient's recorded state: (state, attempts so far).
pub type Outcome = (RcptState, u32);

/// One spooled message.
struct Stored {
    rcpts: Vec<String>,
    body: Vec<u8>,
    /// Its attribution, as the record would hold it.
    attribution: Option<Arc<Attribution>>,
    /// Recorded states by recipient index.
    states: HashMap<u32, Outcome>,
}

/// The in-memory spool. Single-threaded (one shard's executor), hence `RefCell`.
#[derive(Default)]
pub struct MemSpool {
    messages: RefCell<HashMap<u64, Stored>>,
    /// Removed message ids, in removal order.
    removed: RefCell<Vec<u64>>,
    /// Final recipient states of removed messages: (id, index) -> outcome.
    finals: RefCell<HashMap<(u64, u32), Outcome>>,
    /// Ids of the DSNs stored, in order.
    dsns: RefCell<Vec<u64>>,
    /// The DSNs' bodies, in the same order (kept after they are delivered).
    dsn_bodies: RefCell<Vec<Vec<u8>>>,
    /// The last id handed out (ids start at 1).
    last_id: RefCell<u64>,
    /// Attributions read back (`read_attribution`, `read_body_attributed`).
    attribution_reads: Cell<u64>,
}

impl MemSpool {
    /// Stores a message and returns what the engine would enqueue for it.
    pub fn store(&self, mail_from: &str, rcpts: &[&str], body: &[u8]) -> QueuedMessage {
        self.store_attributed(mail_from, rcpts, body, None)
    }

    /// [`MemSpool::store`] of a message with an attribution, held by the returned message as
    /// live intake holds it (`QueuedAttribution::Held`) and kept with the stored message to
    /// be read back.
    pub fn store_attributed(
        &self,
        mail_from: &str,
        rcpts: &[&str],
        body: &[u8],
        attribution: Option<Arc<Attribution>>,
    ) -> QueuedMessage {
        let id = {
            let mut n = self.last_id.borrow_mut();
            *n += 1;
            *n
        };
        self.messages.borrow_mut().insert(
            id,
            Stored {
                rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
                body: body.to_vec(),
                attribution: attribution.clone(),
                states: HashMap::new(),
            },
        );
        QueuedMessage {
            id,
            mail_from: mail_from.into(),
            received_unix_ms: now_unix_ms(),
            is_dsn: false,
            recipients: rcpts
                .iter()
                .enumerate()
                .map(|(i, a)| QueuedRcpt {
                    index: i as u32,
                    address: a.to_string(),
                    attempts: 0,
                    next_attempt_unix_ms: 0,
                })
                .collect(),
            attribution: attribution.map_or(QueuedAttribution::None, QueuedAttribution::Held),
            dsn: None,
        }
    }

    /// What recovery would enqueue for stored message `id` as it stands: its pending
    /// recipients with their attempts, the attribution left in the record
    /// (`QueuedAttribution::Spooled`, the tenant alone); None when it is not stored.
    pub fn recovered(&self, id: u64, mail_from: &str) -> Option<QueuedMessage> {
        let m = self.messages.borrow();
        let s = m.get(&id)?;
        let recipients = s
            .rcpts
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let (state, attempts) = s
                    .states
                    .get(&(i as u32))
                    .copied()
                    .unwrap_or((RcptState::Pending, 0));
                (state == RcptState::Pending).then(|| QueuedRcpt {
                    index: i as u32,
                    address: a.clone(),
                    attempts,
                    next_attempt_unix_ms: 0,
                })
            })
            .collect();
        let attribution = match &s.attribution {
            Some(a) => QueuedAttribution::Spooled {
                tenant_id: a.tenant_id().map(String::from),
                for_accepted: None,
            },
            None => QueuedAttribution::None,
        };
        Some(QueuedMessage {
            id,
            mail_from: mail_from.into(),
            received_unix_ms: now_unix_ms(),
            is_dsn: false,
            recipients,
            attribution,
            dsn: None,
        })
    }

    /// How many times an attribution was read back.
    pub fn attribution_reads(&self) -> u64 {
        self.attribution_reads.get()
    }

    /// Removed message ids, in removal order.
    pub fn removed(&self) -> Vec<u64> {
        self.removed.borrow().clone()
    }

    /// How many messages were removed (every recipient final).
    pub fn removed_count(&self) -> usize {
        self.removed.borrow().len()
    }

    /// Ids of the DSNs stored, in order.
    pub fn dsns(&self) -> Vec<u64> {
        self.dsns.borrow().clone()
    }

    /// The DSNs' bodies as text (lossy UTF-8), in the order they were stored.
    pub fn dsn_texts(&self) -> Vec<String> {
        self.dsn_bodies
            .borrow()
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    /// Final recipient states of removed messages: (id, index) -> (state, attempts).
    pub fn finals(&self) -> HashMap<(u64, u32), Outcome> {
        self.finals.borrow().clone()
    }

    /// The latest recorded state of a recipient: final if its message was removed, else the
    /// last update; `None` before the first attempt finished.
    pub fn outcome(&self, id: u64, index: u32) -> Option<Outcome> {
        if let Some(done) = self.finals.borrow().get(&(id, index)) {
            return Some(*done);
        }
        let messages = self.messages.borrow();
        messages.get(&id)?.states.get(&index).copied()
    }
}

impl SpoolAccess for MemSpool {
    async fn read_body(&self, id: u64) -> Result<Vec<u8>, SpoolAccessError> {
        let m = self.messages.borrow();
        m.get(&id)
            .map(|s| s.body.clone())
            .ok_or(SpoolAccessError::NotFound { id })
    }

    async fn read_attribution(
        &self,
        id: u64,
    ) -> Result<Option<Arc<Attribution>>, SpoolAccessError> {
        self.attribution_reads.set(self.attribution_reads.get() + 1);
        let m = self.messages.borrow();
        m.get(&id)
            .map(|s| s.attribution.clone())
            .ok_or(SpoolAccessError::NotFound { id })
    }

    async fn update(&self, id: u64, updates: &[RcptUpdate]) -> Result<(), SpoolAccessError> {
        let mut m = self.messages.borrow_mut();
        let s = m.get_mut(&id).ok_or(SpoolAccessError::NotFound { id })?;
        for u in updates {
            if u.index as usize >= s.rcpts.len() {
                return Err(SpoolAccessError::RecipientIndex {
                    id,
                    index: u.index,
                    recipients: s.rcpts.len() as u32,
                });
            }
            s.states.insert(u.index, (u.state, u.attempts));
        }
        Ok(())
    }

    async fn remove(&self, id: u64, last: &[RcptUpdate]) -> Result<(), SpoolAccessError> {
        self.update(id, last).await?;
        let s = self
            .messages
            .borrow_mut()
            .remove(&id)
            .ok_or(SpoolAccessError::NotFound { id })?;
        for i in 0..s.rcpts.len() as u32 {
            let st = s.states.get(&i).copied().ok_or_else(|| {
                SpoolAccessError::Spool("removed with a recipient not final".into())
            })?;
            assert_ne!(st.0, RcptState::Pending, "removed with a pending recipient");
            self.finals.borrow_mut().insert((id, i), st);
        }
        self.removed.borrow_mut().push(id);
        Ok(())
    }

    async fn store_dsn(
        &self,
        mail_from: &str,
        rcpt: &str,
        body: &[u8],
    ) -> Result<u64, SpoolAccessError> {
        assert_eq!(mail_from, "", "DSNs use the null sender");
        let q = self.store(mail_from, &[rcpt], body);
        self.dsns.borrow_mut().push(q.id);
        self.dsn_bodies.borrow_mut().push(body.to_vec());
        Ok(q.id)
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
