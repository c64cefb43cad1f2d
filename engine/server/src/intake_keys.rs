//! What the return path shares across shards: the keys of the current policy snapshot (as
//! `petrel_reports::VerpKeys`), the VERP return paths delivery asks for
//! (`petrel_delivery::ReturnPathSource`), the intake's setup ([`IntakeShared`]) and its durable
//! event write ([`write_durable`]). It has no `crate::` imports, so the shard context, the
//! delivery wiring and the intake session can all use it.
//!
//! The control plane pushes the bounce domain and the token keys in the snapshot
//! (`PolicySnapshot.return_path`); building `VerpKeys` (one HMAC key schedule per key) at every
//! recipient would cost more than the token itself, so the keys are built once per snapshot
//! version and shared by every shard behind an `Arc` (one read lock and a version compare per
//! use). The current key signs; every other pushed key still verifies (rotation).

use std::sync::{Arc, RwLock};

use petrel_delivery::{ReturnPathRequest, ReturnPathSource};
use petrel_policy::snapshot::ReturnPath;
use petrel_reports::{RecipientRef, TokenData, VerpKey, VerpKeys};

/// What the snapshot's return-path section turns into.
#[derive(Debug)]
pub struct ReturnPathKeys {
    /// Lower-case; never empty.
    pub bounce_domain: String,
    pub keys: VerpKeys,
}

impl ReturnPathKeys {
    /// The keys of a section, or `None` when VERP is off (no bounce domain) or the pushed keys
    /// are unusable (the snapshot's own validation makes that a bug on the control plane).
    pub fn from_section(rp: &ReturnPath) -> Option<ReturnPathKeys> {
        if rp.bounce_domain.is_empty() {
            return None;
        }
        let current = rp.current_key()?;
        let signing = VerpKey::new(current.id, &current.secret).ok()?;
        let previous = rp
            .keys
            .iter()
            .filter(|k| k.id != current.id)
            .filter_map(|k| VerpKey::new(k.id, &k.secret).ok())
            .collect();
        Some(ReturnPathKeys {
            bounce_domain: rp.bounce_domain.to_ascii_lowercase(),
            keys: VerpKeys::new(signing, previous).ok()?,
        })
    }

    /// The VERP return path of one recipient: the recipient's address in the token when the
    /// address still fits a local part (only very short ones do), else its index.
    pub fn return_path(&self, r: &ReturnPathRequest<'_>) -> Option<String> {
        let mut data = TokenData {
            tenant_id: r.tenant_id.to_string(),
            message_id: r.message_id,
            recipient: RecipientRef::Address(r.recipient.to_ascii_lowercase()),
        };
        if let Ok(address) = self.keys.return_path(&data, &self.bounce_domain) {
            return Some(address);
        }
        data.recipient = RecipientRef::Index(u16::try_from(r.rcpt_index).ok()?);
        self.keys.return_path(&data, &self.bounce_domain).ok()
    }
}

/// The keys of the policy store's current snapshot, rebuilt when its version changes.
#[derive(Debug)]
pub struct KeyCache {
    policy: Arc<petrel_policy::PolicyStore>,
    built: RwLock<(u64, Option<Arc<ReturnPathKeys>>)>,
}

impl KeyCache {
    pub fn new(policy: Arc<petrel_policy::PolicyStore>) -> KeyCache {
        KeyCache {
            policy,
            // u64::MAX: no snapshot has that version, so the first use builds.
            built: RwLock::new((u64::MAX, None)),
        }
    }

    /// The current keys; `None` while no bounce domain is configured.
    pub fn current(&self) -> Option<Arc<ReturnPathKeys>> {
        let version = self.policy.version();
        {
            let built = self.built.read().unwrap_or_else(|p| p.into_inner());
            if built.0 == version {
                return built.1.clone();
            }
        }
        let policy = self.policy.current();
        let keys = ReturnPathKeys::from_section(&policy.snapshot().return_path).map(Arc::new);
        let mut built = self.built.write().unwrap_or_else(|p| p.into_inner());
        *built = (policy.version(), keys.clone());
        keys
    }
}

/// Delivery's VERP source over the pushed policy (see `petrel_delivery::return_path`).
#[derive(Debug)]
pub struct PolicyReturnPath {
    pub keys: Arc<KeyCache>,
}

impl ReturnPathSource for PolicyReturnPath {
    fn return_path(&self, request: &ReturnPathRequest<'_>) -> Option<String> {
        self.keys.current()?.return_path(request)
    }
}

/// What every shard's intake listener shares (all `Send + Sync`), built at engine start.
#[derive(Debug)]
pub struct IntakeShared {
    pub listen: std::net::SocketAddr,
    pub keys: Arc<KeyCache>,
    pub policy: Arc<petrel_policy::PolicyStore>,
    /// The engine's durable event backlog: the intake needs a control plane.
    pub outbox: Arc<petrel_policy::Outbox>,
    pub classifier: Arc<petrel_bounce::BounceClassifier>,
    /// `[intake] mailboxes`.
    pub mailboxes: Vec<String>,
    pub engine_id: String,
    /// No AUTH, STARTTLS, `MAIL_BYTES_MAX` per message.
    pub server_config: Arc<petrel_smtp::ServerConfig>,
}

/// Why intake events could not be recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntakeWriteError {
    #[error("an intake event failed validation: {0}")]
    Invalid(#[from] petrel_policy::EventError),
    #[error("event backlog: {0}")]
    Backlog(#[from] petrel_policy::OutboxError),
    #[error("the event backlog is full")]
    BacklogFull,
    #[error("serializing events: {0}")]
    Json(#[from] serde_json::Error),
}

/// Appends `events` to the backlog in batches within the wire bounds and syncs them (one
/// `fdatasync`); blocking, so it runs on glommio's blocking pool. When it returns `Ok`, the
/// events survive a crash and the link will send them.
pub fn write_durable(
    outbox: &petrel_policy::Outbox,
    events: &[petrel_policy::Event],
) -> Result<(), IntakeWriteError> {
    use petrel_policy::event::{EVENTS_BATCH_MAX_BYTES, EVENTS_PER_BATCH_MAX};
    if outbox.is_full() {
        return Err(IntakeWriteError::BacklogFull);
    }
    let mut batch: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut count = 0usize;
    let flush = |batch: &mut Vec<u8>, count: &mut usize| -> Result<(), IntakeWriteError> {
        if *count > 0 {
            batch.push(b']');
            outbox.append(batch, u32::try_from(*count).unwrap_or(u32::MAX))?;
        }
        batch.clear();
        *count = 0;
        Ok(())
    };
    for e in events {
        e.validate()?;
        let json = serde_json::to_vec(e)?;
        if count == EVENTS_PER_BATCH_MAX || batch.len() + json.len() + 2 > EVENTS_BATCH_MAX_BYTES {
            flush(&mut batch, &mut count)?;
        }
        batch.push(if count == 0 { b'[' } else { b',' });
        batch.extend_from_slice(&json);
        count += 1;
    }
    flush(&mut batch, &mut count)?;
    outbox.sync()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_policy::snapshot::TokenKey;
    use petrel_reports::Purpose;

    fn section(domain: &str) -> ReturnPath {
        ReturnPath {
            bounce_domain: domain.into(),
            one_click_url_base: String::new(),
            current_key_id: 2,
            keys: vec![
                TokenKey {
                    id: 1,
                    secret: vec![1; 32],
                },
                TokenKey {
                    id: 2,
                    secret: vec![2; 32],
                },
            ],
        }
    }

    #[test]
    fn a_tenants_recipient_gets_a_verifiable_return_path_on_the_bounce_domain() {
        let keys = ReturnPathKeys::from_section(&section("Bounce.Petrel.Test")).unwrap();
        let request = ReturnPathRequest {
            tenant_id: "ten_00000000000000aa",
            message_id: 0x0100_0000_0000_0042,
            rcpt_index: 3,
            recipient: "someone.long@example.org",
        };
        let rp = keys.return_path(&request).unwrap();
        assert!(
            rp.starts_with("b-") && rp.ends_with("@bounce.petrel.test"),
            "{rp}"
        );
        assert!(rp.split('@').next().unwrap().len() <= 64);
        let decoded = keys.keys.decode_address(&rp).unwrap();
        assert_eq!(decoded.purpose, Purpose::Bounce);
        assert_eq!(
            decoded.data,
            TokenData {
                tenant_id: "ten_00000000000000aa".into(),
                message_id: 0x0100_0000_0000_0042,
                recipient: RecipientRef::Index(3),
            }
        );
        // A very short address fits the token itself.
        let short = ReturnPathRequest {
            recipient: "a@b.io",
            ..request
        };
        let decoded = keys
            .keys
            .decode_address(&keys.return_path(&short).unwrap())
            .unwrap();
        assert_eq!(
            decoded.data.recipient,
            RecipientRef::Address("a@b.io".into())
        );
        // An index past a token's 16 bits gets no VERP rather than a wrong one.
        let far = ReturnPathRequest {
            rcpt_index: 70_000,
            ..request
        };
        assert_eq!(keys.return_path(&far), None);
    }

    #[test]
    fn intake_events_are_synced_to_the_backlog_in_wire_batches() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = petrel_policy::Outbox::open(dir.path(), 64 << 20, 1_000).unwrap();
        let kind = petrel_policy::EventType::Other("dmarc_report".into());
        let events: Vec<petrel_policy::Event> = (0..1_500u32)
            .map(|i| petrel_policy::Event {
                id: petrel_policy::Event::stable_id("e1", "dmarc:x", i, 0, &kind),
                kind: kind.clone(),
                timestamp_ms: 1,
                tenant_id: Some("ten_00000000000000aa".into()),
                message_id: None,
                rfc822_message_id: None,
                sender: String::new(),
                from_domain: Some("shop.test".into()),
                recipient: None,
                tags: Vec::new(),
                metadata: None,
                attempt: 0,
                remote: None,
                reply: None,
                bounce: None,
                is_async: false,
                details: None,
            })
            .collect();
        write_durable(&outbox, &events).unwrap();
        let batches = outbox.unsent_after(0, 16).unwrap();
        assert_eq!(batches.len(), 2, "at most 1,000 events a batch");
        let mut read = Vec::new();
        for b in &batches {
            let got: Vec<petrel_policy::Event> = serde_json::from_slice(&b.json).unwrap();
            assert_eq!(got.len() as u32, b.events);
            read.extend(got);
        }
        assert_eq!(read, events);
        // An event the control plane would refuse is never written.
        let mut bad = events[0].clone();
        bad.id.clear();
        assert!(matches!(
            write_durable(&outbox, &[bad]),
            Err(IntakeWriteError::Invalid(_))
        ));
    }

    #[test]
    fn tokens_of_a_previous_key_still_verify_and_no_domain_means_off() {
        let old = ReturnPathKeys::from_section(&ReturnPath {
            current_key_id: 1,
            ..section("bounce.test")
        })
        .unwrap();
        let new = ReturnPathKeys::from_section(&section("bounce.test")).unwrap();
        let request = ReturnPathRequest {
            tenant_id: "ten_00000000000000aa",
            message_id: 7,
            rcpt_index: 0,
            recipient: "someone@example.org",
        };
        let signed_by_old = old.return_path(&request).unwrap();
        assert!(new.keys.decode_address(&signed_by_old).is_ok());
        assert!(ReturnPathKeys::from_section(&section("")).is_none());
    }
}
