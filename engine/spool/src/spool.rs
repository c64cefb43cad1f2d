//! The glommio adapter's public face: one shard's [`Spool`] (open, store, read, update, remove,
//! close). The model it keeps is in `state.rs`, the segment lifecycle in `segments.rs`, the
//! write and sync batching in `batch.rs`, and loading the segments at open in `backlog.rs`
//! (over the pure `recovery.rs`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use glommio::io::Directory;
use glommio::sync::Semaphore;

use crate::backlog::{self, Backlog};
use crate::batch::DATA_BATCH_BYTES_MAX;
use crate::commit::GroupCommit;
use crate::error::SpoolError;
use crate::file::FileMode;
use crate::record::{self, Kind};
use crate::recovery::SHARD_DIR_PREFIX;
use crate::sealed;
use crate::segments::{close_file, Inner};
use crate::state::{Batch, IndexEntry, State};
use crate::types::{
    Attribution, DsnParams, Envelope, MessageId, RecipientUpdate, Recovery, SpoolConfig,
    SpoolStats, SpooledMessage, SyncSample, MESSAGE_ID_SEQUENCE_BITS,
};

/// Smallest accepted `segment_size_max_bytes` (a segment must hold its header and a record).
pub const SEGMENT_SIZE_MIN_BYTES: u64 = 4096;
/// Largest accepted `segment_size_max_bytes`: a record's offset (below this plus one record)
/// then fits the index's 32 bits.
pub const SEGMENT_SIZE_MAX_LIMIT_BYTES: u64 = 1 << 30;
/// Why a spool whose backlog could not be read takes no new message (until a restart).
const RECOVERY_FAILED: &str = "spool recovery failed";
/// Largest message sequence; the shard takes the 8 bits above it.
const ID_SEQUENCE_MAX: u64 = (1 << MESSAGE_ID_SEQUENCE_BITS) - 1;

/// One shard's spool. `!Send`: it lives on one glommio executor; all methods take `&self` and
/// may run concurrently from many tasks of that executor.
#[derive(Debug)]
pub struct Spool {
    pub(crate) inner: Rc<Inner>,
}

impl Spool {
    /// Opens (creating if needed) `<root>/shard-<shard>/`, recovers what is there, and starts a
    /// fresh active segment. Uses the default [`FileMode`].
    pub async fn open(cfg: SpoolConfig) -> Result<(Spool, Recovery), SpoolError> {
        Self::open_with_mode(cfg, FileMode::default()).await
    }

    /// [`Spool::open`] with an explicit file type for the new data segments (benchmarks).
    pub async fn open_with_mode(
        cfg: SpoolConfig,
        mode: FileMode,
    ) -> Result<(Spool, Recovery), SpoolError> {
        let mut messages = Vec::new();
        let (spool, mut recovery) =
            Self::open_streaming(cfg, mode, &mut |m| messages.push(m)).await?;
        messages.sort_by_key(|m| m.id);
        recovery.messages = messages;
        Ok((spool, recovery))
    }

    /// [`Spool::open_with_mode`] handing each recovered message to `on_message` as its segment
    /// is read (segments in order, ids in order within one), instead of collecting them all:
    /// a caller builds what it needs from them with one segment's envelopes in memory at a
    /// time. The spool takes messages only once this returns ([`Spool::open_early`] and
    /// [`Backlog::run`] in one step).
    pub async fn open_streaming(
        cfg: SpoolConfig,
        mode: FileMode,
        on_message: &mut dyn FnMut(SpooledMessage),
    ) -> Result<(Spool, Recovery), SpoolError> {
        let (spool, backlog) = Self::open_early(cfg, mode).await?;
        let recovery = backlog.run(on_message).await?;
        Ok((spool, recovery))
    }

    /// Opens (creating if needed) `<root>/shard-<shard>/` ready to take new messages after
    /// reading only the frames of its newest segment or two, and starts a fresh active
    /// segment. The messages already spooled are read by the returned [`Backlog`], which the
    /// caller runs meanwhile on the same executor (see `backlog.rs`); until it ends, the
    /// spool's figures count the unread segments at an estimate.
    pub async fn open_early(
        cfg: SpoolConfig,
        mode: FileMode,
    ) -> Result<(Spool, Backlog), SpoolError> {
        if cfg.segment_size_max_bytes < SEGMENT_SIZE_MIN_BYTES {
            return Err(SpoolError::Config(
                "segment_size_max_bytes is below SEGMENT_SIZE_MIN_BYTES",
            ));
        }
        if cfg.segment_size_max_bytes > SEGMENT_SIZE_MAX_LIMIT_BYTES {
            return Err(SpoolError::Config(
                "segment_size_max_bytes is above SEGMENT_SIZE_MAX_LIMIT_BYTES",
            ));
        }
        let dir = cfg.root.join(format!("{SHARD_DIR_PREFIX}{}", cfg.shard));
        std::fs::create_dir_all(&dir).map_err(|e| SpoolError::io("create_dir", &dir, e))?;
        let dir_handle = Directory::open(&dir)
            .await
            .map_err(|e| SpoolError::io("open_dir", &dir, e))?;
        let mut state = State::new(cfg.body_cache_bytes_max);
        let pending = backlog::open_early(&dir, cfg.keys.as_deref(), &mut state)?;
        let inner = Rc::new(Inner {
            cfg,
            mode,
            dir,
            dir_handle,
            state: RefCell::new(state),
            commit: GroupCommit::default(),
            reserve: Semaphore::new(1),
            fatal: Cell::new(None),
            write_failed: Cell::new(false),
            probe_armed: Cell::new(false),
            sync_timer_armed: Cell::new(false),
            journals_wanted: Cell::new(false),
            journal_syncs: Cell::new(0),
            data_writes: Cell::new(0),
            release_steps: Cell::new(0),
            journal_flush_armed: Cell::new(false),
            data_flush_armed: Cell::new(false),
            recovery_failed: Cell::new(false),
        });
        inner.new_active_segment().await?;
        // The new segment (its header carries the next sequence) and the orphan journals'
        // deletion, durable before anything is acknowledged in it.
        inner.sync_dirty().await?;
        let backlog = backlog::backlog(&inner, pending);
        Ok((Spool { inner }, backlog))
    }

    /// Stores a message; durable before it returns (with `fsync`): one fdatasync covers every
    /// store that arrived while the previous commit ran. The body is stored once.
    pub async fn store(&self, envelope: &Envelope, body: &[u8]) -> Result<MessageId, SpoolError> {
        self.store_attributed(envelope, &Attribution::default(), body)
            .await
    }

    /// [`Spool::store`] with the message's attribution, stored in the same record (so it is
    /// exactly as durable as the message) and handed back by recovery and `inspect`.
    pub async fn store_attributed(
        &self,
        envelope: &Envelope,
        attribution: &Attribution,
        body: &[u8],
    ) -> Result<MessageId, SpoolError> {
        self.store_attributed_as(None, envelope, attribution, body)
            .await
    }

    /// Takes the next message id now, for a message stored later with
    /// [`Spool::store_attributed_as`]: the engine writes it into the message (a one-click
    /// unsubscribe token) before signing, so before the store. An id reserved and never stored
    /// is a gap in the sequence, which nothing minds (a restart may hand it out again: no
    /// message was accepted under it); stored ids stay unique, since recovery restarts the
    /// sequence above every stored id.
    pub fn reserve_id(&self) -> Result<MessageId, SpoolError> {
        let mut st = self.inner.state.borrow_mut();
        if st.next_id_seq > ID_SEQUENCE_MAX {
            return Err(SpoolError::Unhealthy("message id sequence exhausted"));
        }
        let id = MessageId::new(self.inner.cfg.shard, st.next_id_seq);
        st.next_id_seq += 1;
        Ok(id)
    }

    /// [`Spool::store_attributed`] under an id from [`Spool::reserve_id`] (`None`: a new one).
    pub async fn store_attributed_as(
        &self,
        reserved: Option<MessageId>,
        envelope: &Envelope,
        attribution: &Attribution,
        body: &[u8],
    ) -> Result<MessageId, SpoolError> {
        self.store_message(reserved, envelope, attribution, &DsnParams::default(), body)
            .await
    }

    /// [`Spool::store_attributed_as`] with the client's DSN parameters (RFC 3461), stored in
    /// the same record and handed back by recovery; empty ones cost nothing (`record`).
    pub async fn store_message(
        &self,
        reserved: Option<MessageId>,
        envelope: &Envelope,
        attribution: &Attribution,
        dsn: &DsnParams,
        body: &[u8],
    ) -> Result<MessageId, SpoolError> {
        let inner = &self.inner;
        if let Some(id) = reserved {
            let issued =
                id.shard() == inner.cfg.shard && id.sequence() < inner.state.borrow().next_id_seq;
            if !issued {
                return Err(SpoolError::NotReserved(id.0));
            }
        }
        inner.check_healthy()?;
        if inner.recovery_failed.get() {
            return Err(SpoolError::Unhealthy(RECOVERY_FAILED));
        }
        check_len("body", body.len(), record::BODY_SIZE_MAX_BYTES)?;
        check_len("recipients", envelope.recipients.len(), u32::MAX as usize)?;
        let meta = record::encode_envelope(envelope).map_err(|e| SpoolError::Encode {
            what: "envelope",
            reason: e.to_string(),
        })?;
        check_len("envelope", meta.len(), record::ENVELOPE_SIZE_MAX_BYTES)?;
        let attr = record::encode_attribution(attribution).map_err(|e| SpoolError::Encode {
            what: "attribution",
            reason: e.to_string(),
        })?;
        check_len(
            "attribution",
            attr.len(),
            record::ATTRIBUTION_SIZE_MAX_BYTES,
        )?;
        let dsn_bytes = record::encode_dsn(dsn).map_err(|e| SpoolError::Encode {
            what: "DSN parameters",
            reason: e.to_string(),
        })?;
        check_len(
            "DSN parameters",
            dsn_bytes.len(),
            record::DSN_SIZE_MAX_BYTES,
        )?;
        // The common case (no DSN parameter) writes the attribution as it always did.
        let with_dsn = !dsn_bytes.is_empty();
        let dsn_part;
        let attr: &[u8] = if with_dsn {
            dsn_part = record::dsn_part(&attr, &dsn_bytes);
            &dsn_part
        } else {
            &attr
        };
        // Sealed under the tenant's current data key (the operator's without a tenant); the
        // key is made ahead when the policy names the tenant, so this rarely writes the keyring.
        let key = match &inner.cfg.keys {
            Some(keys) => {
                let owner = attribution
                    .tenant_id
                    .as_deref()
                    .or(envelope.tenant.as_deref());
                Some(keys.current_or_create(owner)?)
            }
            None => None,
        };
        let kind = Kind::store_kind(attribution, key.is_some(), with_dsn);
        let payload_len = match &key {
            Some(_) => sealed::store_payload_len(meta.len(), attr.len(), body.len()),
            None => record::STORE_PREFIX_BYTES + meta.len() + attr.len() + body.len(),
        };
        let (id, seg, offset, record_len, batch, deferred) = {
            let _permit = inner
                .reserve
                .acquire_permit(1)
                .await
                .map_err(|_| SpoolError::Unhealthy("spool closed"))?;
            let align = inner.active_segment_file()?.align();
            let record_len =
                record::align_up(record::RECORD_HEADER_BYTES + payload_len, align) as u64;
            if inner.needs_rollover(record_len) {
                if let Err(e) = inner.rollover().await {
                    // Not written: unhealthy until the probe finds writing works (`health.rs`).
                    inner.write_failed.set(true);
                    return Err(e);
                }
            }
            let id = match reserved {
                Some(id) => id,
                None => self.reserve_id()?,
            };
            let (active, offset, batch, first, full, deferred) = {
                let mut st = inner.state.borrow_mut();
                let active = st.active;
                let seg = st.active_mut()?;
                let offset = seg.data_len;
                seg.data_len += record_len;
                seg.inflight += 1;
                // The record joins the segment's batch. With buffered files the sync covering
                // the store writes it (fsync on), or the store at once, below; with O_DIRECT one
                // write is in flight at a time and the records stored meanwhile share the next
                // (`flush_data_soon`).
                let first = seg.data_buf.is_empty();
                if first {
                    seg.data_batch = Rc::new(Batch::default());
                }
                match &key {
                    Some(key) => {
                        sealed::encode_store(
                            &mut seg.data_buf,
                            kind,
                            id.0,
                            key,
                            &meta,
                            attr,
                            body,
                            align,
                        );
                    }
                    None => {
                        let prefix = record::store_prefix(id.0, meta.len(), attr.len());
                        record::encode_record(
                            &mut seg.data_buf,
                            kind,
                            &[&prefix, &meta, attr, body],
                            align,
                        );
                    }
                }
                let batch = seg.data_batch.clone();
                let full = seg.data_buf.len() >= DATA_BATCH_BYTES_MAX;
                if first {
                    st.data_pending.push(active);
                }
                // With fsync on, a buffered record waits in the segment's batch for the sync
                // that covers it: that sync writes the whole group with one `pwrite` first.
                let deferred = inner.mode == FileMode::Buffered && inner.cfg.fsync && !full;
                // Marked dirty once written (`flush_data`), not now: a sync that ran before the
                // write finished must not consume the mark and leave this record unsynced.
                (active, offset, batch, first, full, deferred)
            };
            if deferred {
                // Written by the sync that covers it (`sync_dirty`), with the rest of its group.
            } else if inner.mode == FileMode::Buffered {
                // A `pwrite` into the page cache from this thread: it cannot interleave with
                // another write, so the one-writer order holds.
                inner.flush_data().await;
            } else if full {
                inner.flush_data_soon(true);
            } else if first {
                inner.flush_data_soon(false);
            }
            (id, active, offset, record_len, batch, deferred)
        };
        let guard = InflightGuard {
            inner,
            segment: seg,
        };
        if deferred {
            // The ticket is taken after the record joined the batch, so the sync that covers
            // it writes the batch before its fdatasync. Nothing is indexed yet on failure.
            inner.commit_stores().await?;
        }
        let written = batch.written().await;
        inner.write_failed.set(!written);
        if !written {
            return Err(SpoolError::io(
                "write",
                &inner.dir,
                std::io::Error::other("writing this record's batch failed (see the log)"),
            ));
        }
        {
            let mut st = inner.state.borrow_mut();
            let entry = IndexEntry {
                segment: seg,
                offset: offset as u32,
                record_len: record_len as u32,
                recipients: envelope.recipients.len() as u32,
                key: key.as_ref().map_or(0, |k| k.id()),
            };
            st.index.insert(id.0, entry);
            st.bodies.insert(id.0, body);
            st.live_bytes += record_len;
            if let Some(s) = st.segments.get_mut(&seg) {
                s.live += 1;
            }
        }
        drop(guard);
        if inner.cfg.fsync && !deferred {
            if let Err(e) = inner.commit_stores().await {
                // Not known durable: forget it here (recovery will find it if it was).
                inner.forget(id);
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Reads a live message's body back (checksum verified).
    pub async fn read_body(&self, id: MessageId) -> Result<Vec<u8>, SpoolError> {
        if let Some(body) = self.inner.state.borrow().bodies.get(id.0) {
            return Ok(body);
        }
        Ok(self.read_stored(id, false).await?.0)
    }

    /// Reads a live message's body and attribution back, from one read of its record
    /// (checksum verified, opened when sealed): delivery does not hold the attribution of a
    /// message that waits for a later attempt (issue 17), and takes it back with the body
    /// when the attempt comes. The body cache is not consulted: the record is read anyway.
    pub async fn read_attributed(
        &self,
        id: MessageId,
    ) -> Result<(Vec<u8>, Attribution), SpoolError> {
        let (body, attribution) = self.read_stored(id, true).await?;
        Ok((body, attribution.unwrap_or_default()))
    }

    /// Reads message `id`'s store record from its segment: its body, and its attribution when
    /// `attribution` is asked (a sealed record gives it anyway: it is opened whole).
    async fn read_stored(
        &self,
        id: MessageId,
        attribution: bool,
    ) -> Result<(Vec<u8>, Option<Attribution>), SpoolError> {
        let (entry, data) = self.inner.locate(id)?;
        let buf = data
            .read_exact_at(u64::from(entry.offset), entry.record_len as usize)
            .await?;
        let corrupt = |reason| SpoolError::Corrupt {
            path: data.path().to_path_buf(),
            offset: u64::from(entry.offset),
            reason,
        };
        let rec = record::decode_at(&buf, 0).map_err(|_| corrupt("bad frame or checksum"))?;
        if rec.kind.is_sealed_store() {
            let keys = self.inner.cfg.keys.as_ref().ok_or(SpoolError::NoKeyring)?;
            let mut opened =
                sealed::open_store(rec.kind, rec.payload, keys).map_err(|e| match e {
                    sealed::Unsealed::NoKey(_) => corrupt("its data key was destroyed"),
                    sealed::Unsealed::Damaged => corrupt("sealed record failed authentication"),
                })?;
            if opened.id != id.0 {
                return Err(corrupt("record is not this message"));
            }
            let attribution = std::mem::take(&mut opened.attribution);
            return Ok((opened.into_body(), Some(attribution)));
        }
        if !rec.kind.is_store() {
            return Err(corrupt("record is not this message"));
        }
        let parts = record::split_store(rec.payload).ok_or(corrupt("bad store payload"))?;
        if parts.id != id.0 {
            return Err(corrupt("record is not this message"));
        }
        let attribution = if attribution {
            let (a, _) = record::decode_attribution_part(rec.kind, parts.attribution)
                .ok_or(corrupt("bad attribution"))?;
            Some(a)
        } else {
            None
        };
        Ok((parts.body.to_vec(), attribution))
    }

    /// Journals recipient state changes. Returns once buffered (not written or synced): the
    /// periodic journal sync (within `JOURNAL_SYNC_DELAY_MS`) writes and syncs it. A crash
    /// before then means the recipients are tried again.
    pub async fn update(
        &self,
        id: MessageId,
        updates: &[RecipientUpdate],
    ) -> Result<(), SpoolError> {
        let inner = &self.inner;
        inner.check_healthy()?;
        let (entry, _) = inner.locate(id)?;
        // A message with an update stays queued past its first attempt: its body is read from
        // the segment when next needed, not held (the cache is for first attempts).
        inner.state.borrow_mut().bodies.remove(id.0);
        if let Some(u) = updates.iter().find(|u| u.index >= entry.recipients) {
            return Err(SpoolError::RecipientIndex {
                id,
                index: u.index,
                recipients: entry.recipients,
            });
        }
        let archived = record::encode_updates(updates).map_err(|e| SpoolError::Encode {
            what: "updates",
            reason: e.to_string(),
        })?;
        check_len("update", archived.len(), record::UPDATE_SIZE_MAX_BYTES)?;
        let mut bytes = Vec::new();
        let key = match (entry.key, &inner.cfg.keys) {
            (0, _) => None,
            (k, Some(keys)) => Some(keys.get(k).ok_or(petrel_seal::SealError::UnknownKey(k))?),
            (_, None) => return Err(SpoolError::NoKeyring),
        };
        match key {
            Some(key) => {
                sealed::encode_update(&mut bytes, id.0, &key, &archived);
            }
            None => {
                let prefix = record::update_prefix(id.0);
                record::encode_record(
                    &mut bytes,
                    Kind::Update,
                    &[&prefix, &archived],
                    record::RECORD_ALIGN_BYTES,
                );
            }
        }
        inner.append_journal(entry.segment, bytes).await
    }

    /// The message is final for every recipient: journals its removal and reclaims its segment
    /// once every message of that (sealed) segment is removed.
    pub async fn remove(&self, id: MessageId) -> Result<(), SpoolError> {
        let inner = &self.inner;
        inner.check_healthy()?;
        let (segment, reclaim) = {
            let mut st = inner.state.borrow_mut();
            let entry = st.index.remove(id.0).ok_or(SpoolError::NotFound(id))?;
            st.bodies.remove(id.0);
            st.live_bytes = st.live_bytes.saturating_sub(u64::from(entry.record_len));
            let seg = st
                .segments
                .get_mut(&entry.segment)
                .ok_or(SpoolError::NotFound(id))?;
            seg.live = seg.live.saturating_sub(1);
            (entry.segment, seg.reclaimable())
        };
        if reclaim {
            // Deleting the data file removes the message with everything else in the segment.
            return inner.reclaim(segment).await;
        }
        let mut bytes = Vec::new();
        record::encode_record(
            &mut bytes,
            Kind::Remove,
            &[&id.0.to_le_bytes()],
            record::RECORD_ALIGN_BYTES,
        );
        inner.append_journal(segment, bytes).await
    }

    /// Live counts. While a [`Backlog`] runs, its unread segments count at their data files'
    /// sizes and an estimate of their messages (see `backlog.rs`), so what admission compares
    /// with its limits is the whole spool from the start.
    pub fn stats(&self) -> SpoolStats {
        let st = self.inner.state.borrow();
        let (unread_messages, unread_bytes) = st.unscanned_totals();
        SpoolStats {
            messages: st.index.len() as u64 + unread_messages,
            bytes: st.live_bytes + unread_bytes,
            segments: (st.segments.len() + st.unscanned.len()) as u64,
            index_memory_bytes: st.index.memory_bytes() as u64,
            body_cache_bytes: st.bodies.bytes() as u64,
        }
    }

    /// Number of fdatasync rounds (group commits) so far; compare with the number of stores.
    pub fn commits(&self) -> u64 {
        self.inner.commit.commits()
    }

    /// Hands each group-commit round since the last call to `f` (its fdatasync time and the
    /// writers it covered) and returns how many rounds were not kept because nobody drained
    /// them in time (more than [`crate::SYNC_SAMPLES_MAX`]). The shard feeds them to its
    /// metrics.
    pub fn drain_sync_samples(&self, f: impl FnMut(SyncSample)) -> u64 {
        self.inner.commit.drain_samples(f)
    }

    /// Positional writes of store batches so far: with fsync on and buffered files, about one
    /// per group commit; compare with the number of stores.
    pub fn data_writes(&self) -> u64 {
        self.inner.data_writes.get()
    }

    /// Steps so far that gave back part of a reclaimed segment's data file: one per
    /// [`crate::RELEASE_STEP_BYTES`] (`release.rs`).
    pub fn release_steps(&self) -> u64 {
        self.inner.release_steps.get()
    }

    /// Journal sync rounds so far: the periodic journal sync's (when a journal was left
    /// unsynced), and the group commits asked for everything (a close, a heal, the end of the
    /// backlog read). A store's own commit leaves the journals alone.
    pub fn journal_syncs(&self) -> u64 {
        self.inner.journal_syncs.get()
    }

    /// Why the spool should not take new messages right now, if it should not. Cheap. While
    /// it is unhealthy, asking arms the probe that heals it once writing works again
    /// (`health.rs`).
    pub fn unhealthy_reason(&self) -> Option<&'static str> {
        if self.inner.recovery_failed.get() {
            return Some(RECOVERY_FAILED);
        }
        let reason = self.inner.fatal.get().or(self
            .inner
            .write_failed
            .get()
            .then_some("disk write failed"));
        if reason.is_some() {
            self.inner.arm_health_probe();
        }
        reason
    }

    /// Syncs everything written and closes the files.
    pub async fn close(self) -> Result<(), SpoolError> {
        let inner = self.inner;
        inner.reserve.close();
        inner.flush_data().await;
        inner.flush_journals().await?;
        inner.commit_now().await?;
        let segments = std::mem::take(&mut inner.state.borrow_mut().segments);
        for (_, seg) in segments {
            close_file(seg.data).await;
            close_file(seg.journal).await;
        }
        Ok(())
    }
}

/// Counts a reserved store until its write is done, even if the store future is dropped;
/// reclaims a sealed segment that this store was the last thing keeping alive.
struct InflightGuard<'a> {
    inner: &'a Rc<Inner>,
    segment: u64,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let reclaim = {
            let mut st = self.inner.state.borrow_mut();
            match st.segments.get_mut(&self.segment) {
                Some(seg) => {
                    seg.inflight = seg.inflight.saturating_sub(1);
                    seg.reclaimable()
                }
                None => false,
            }
        };
        if reclaim {
            let inner = self.inner.clone();
            let seq = self.segment;
            glommio::spawn_local(async move {
                if let Err(e) = inner.reclaim(seq).await {
                    tracing::warn!(error = %e, "spool segment reclamation failed");
                }
            })
            .detach();
        }
    }
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), SpoolError> {
    if len > max {
        return Err(SpoolError::TooLarge {
            what,
            len_bytes: len as u64,
            max_bytes: max as u64,
        });
    }
    Ok(())
}
