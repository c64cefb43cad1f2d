//! Recovery's pure half: rebuilding a segment's state from its bytes, peeking at the newest
//! segments for the next message id, and the offline `inspect` (std::fs only). Loading the
//! segments into a running shard's state is `backlog.rs`.
//!
//! A segment is a data file (`seg-<16hex>.data`: a header record, then store records) and its
//! journal (`seg-<16hex>.journal`: update and remove records for messages of that data file
//! only). Replaying the journal over the data file gives each message's latest state; removed
//! messages drop out. Nothing refers across segments, so a segment whose messages are all
//! removed can be deleted whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::SpoolError;
use petrel_seal::Keyring;

use crate::record::{self, Kind, SegmentHeader};
use crate::sealed::{self, Unsealed};
use crate::types::{Attribution, DsnParams, Envelope, MessageId, SpooledMessage};

/// Prefix and suffixes of segment file names.
const SEGMENT_PREFIX: &str = "seg-";
pub(crate) const DATA_SUFFIX: &str = ".data";
pub(crate) const JOURNAL_SUFFIX: &str = ".journal";
/// Prefix of a shard's directory under the spool root.
pub(crate) const SHARD_DIR_PREFIX: &str = "shard-";

/// Path of segment `seq`'s data file in `dir`.
pub(crate) fn data_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{seq:016x}{DATA_SUFFIX}"))
}

/// Path of segment `seq`'s journal in `dir`.
pub(crate) fn journal_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{seq:016x}{JOURNAL_SUFFIX}"))
}

/// Segment sequences found in `dir`: those with a data file, and journals without one
/// (orphans left when a crash came between deleting the two files).
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub(crate) data: Vec<u64>,
    pub(crate) orphan_journals: Vec<u64>,
}

/// Lists `dir` (std::fs; also used at open, before the shard serves anything).
pub(crate) fn list_segments(dir: &Path) -> Result<Listing, SpoolError> {
    let mut data = Vec::new();
    let mut journals = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| SpoolError::io("read_dir", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::io("read_dir", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(SEGMENT_PREFIX) else {
            continue;
        };
        if let Some(hex) = rest.strip_suffix(DATA_SUFFIX) {
            if let Some(seq) = parse_seq(hex) {
                data.push(seq);
            }
        } else if let Some(hex) = rest.strip_suffix(JOURNAL_SUFFIX) {
            if let Some(seq) = parse_seq(hex) {
                journals.push(seq);
            }
        }
    }
    data.sort_unstable();
    journals.sort_unstable();
    let orphan_journals = journals
        .into_iter()
        .filter(|s| data.binary_search(s).is_err())
        .collect();
    Ok(Listing {
        data,
        orphan_journals,
    })
}

fn parse_seq(hex: &str) -> Option<u64> {
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// A live message found in a segment.
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) envelope: Envelope,
    pub(crate) attribution: Attribution,
    pub(crate) dsn: DsnParams,
    pub(crate) body_len_bytes: u64,
    /// Offset of its store record in the data file.
    pub(crate) offset: u64,
    /// Length of that record (padding included).
    pub(crate) record_len: u64,
    /// The data key that sealed it; 0 in the clear.
    pub(crate) key: u32,
}

/// One segment, rebuilt.
#[derive(Debug, Default)]
pub(crate) struct SegmentState {
    pub(crate) header: Option<SegmentHeader>,
    /// Live messages by id.
    pub(crate) live: BTreeMap<u64, Found>,
    /// Highest message sequence seen in store records (live or removed).
    pub(crate) max_id_seq: Option<u64>,
    pub(crate) records_skipped: u64,
    pub(crate) bytes_skipped: u64,
    /// End of the journal's last valid record: the journal is truncated here before appending.
    pub(crate) journal_valid_end: u64,
    /// Messages whose data key is gone (crypto-shredded).
    pub(crate) shredded: u64,
    /// Sealed records were found and no keyring was given.
    pub(crate) needs_keyring: bool,
}

/// Rebuilds one segment from its data and journal bytes, opening sealed records with `keys`.
/// `name` is for the logs. (`backlog.rs` does the same in steps, yielding between them.)
pub(crate) fn rebuild(
    data: &[u8],
    journal: &[u8],
    name: &Path,
    keys: Option<&Keyring>,
) -> SegmentState {
    let mut st = SegmentState::default();
    let scan = record::scan(data);
    note_skipped(&mut st, &scan.skipped, name, "data");
    for rec in &scan.records {
        st.data_record(rec, name, keys);
    }
    let jscan = record::scan(journal);
    st.journal_scanned(&jscan, name);
    for rec in &jscan.records {
        st.journal_record(rec, name, keys);
    }
    st
}

/// What a segment's data file tells without opening a record: enough for the next message id.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peek {
    /// The header record, when it is whole.
    pub(crate) header: Option<SegmentHeader>,
    /// Highest message sequence of its store records (whole frames, opened or not: a sequence
    /// counted for a record that would not open only leaves a gap).
    pub(crate) max_id_seq: Option<u64>,
    /// Store records, and their bytes (padding included): the mean record length.
    pub(crate) store_records: u64,
    pub(crate) store_bytes: u64,
    /// It holds sealed records (they need a keyring).
    pub(crate) sealed: bool,
}

/// Reads the frames of a data file (checksums verified) and the ids of its store records,
/// without decoding an envelope or opening a sealed record.
pub(crate) fn peek(data: &[u8]) -> Peek {
    let mut p = Peek::default();
    for rec in &record::scan(data).records {
        let id = match rec.kind {
            Kind::SegmentHeader if rec.offset == 0 => {
                p.header = SegmentHeader::from_bytes(rec.payload);
                continue;
            }
            Kind::Store | Kind::StoreAttributed | Kind::StoreDsn => {
                record::split_store(rec.payload).map(|s| s.id)
            }
            Kind::SealedStore | Kind::SealedStoreDsn => {
                p.sealed = true;
                sealed::peek(rec.payload).map(|(id, _)| id)
            }
            _ => continue,
        };
        p.store_records += 1;
        p.store_bytes += rec.record_len;
        if let Some(id) = id {
            let seq = MessageId(id).sequence();
            p.max_id_seq = Some(p.max_id_seq.map_or(seq, |m| m.max(seq)));
        }
    }
    p
}

impl SegmentState {
    /// Takes one record of the data file, in file order.
    pub(crate) fn data_record(
        &mut self,
        rec: &record::RawRecord<'_>,
        name: &Path,
        keys: Option<&Keyring>,
    ) {
        match rec.kind {
            Kind::SegmentHeader if rec.offset == 0 => {
                self.header = SegmentHeader::from_bytes(rec.payload);
                if self.header.is_none() {
                    skip_record(
                        self,
                        name,
                        rec.offset,
                        rec.record_len,
                        "unreadable segment header",
                    );
                }
            }
            Kind::Store | Kind::StoreAttributed | Kind::StoreDsn => {
                match record::decode_store(rec.kind, rec.payload) {
                    Some(s) => {
                        let seq = MessageId(s.id).sequence();
                        self.max_id_seq = Some(self.max_id_seq.map_or(seq, |m| m.max(seq)));
                        let found = Found {
                            envelope: s.envelope,
                            attribution: s.attribution,
                            dsn: s.dsn,
                            body_len_bytes: s.body.len() as u64,
                            offset: rec.offset,
                            record_len: rec.record_len,
                            key: 0,
                        };
                        self.live.insert(s.id, found);
                    }
                    None => skip_record(
                        self,
                        name,
                        rec.offset,
                        rec.record_len,
                        "envelope or attribution failed validation",
                    ),
                }
            }
            Kind::SealedStore | Kind::SealedStoreDsn => {
                let Some(keys) = keys else {
                    self.needs_keyring = true;
                    return;
                };
                match sealed::open_store(rec.kind, rec.payload, keys) {
                    Ok(s) => {
                        let seq = MessageId(s.id).sequence();
                        self.max_id_seq = Some(self.max_id_seq.map_or(seq, |m| m.max(seq)));
                        let found = Found {
                            body_len_bytes: s.body().len() as u64,
                            envelope: s.envelope,
                            attribution: s.attribution,
                            dsn: s.dsn,
                            offset: rec.offset,
                            record_len: rec.record_len,
                            key: s.key_id,
                        };
                        self.live.insert(s.id, found);
                    }
                    Err(Unsealed::NoKey(key)) => {
                        // Still counts for the id sequence: ids are never reused.
                        if let Some((id, _)) = sealed::peek(rec.payload) {
                            let seq = MessageId(id).sequence();
                            self.max_id_seq = Some(self.max_id_seq.map_or(seq, |m| m.max(seq)));
                        }
                        tracing::info!(segment = %name.display(), offset = rec.offset, key, "spool record's data key was destroyed: message shredded");
                        self.shredded += 1;
                    }
                    Err(Unsealed::Damaged) => skip_record(
                        self,
                        name,
                        rec.offset,
                        rec.record_len,
                        "sealed record failed authentication",
                    ),
                }
            }
            _ => skip_record(
                self,
                name,
                rec.offset,
                rec.record_len,
                "unexpected record kind in data file",
            ),
        }
    }

    /// Notes the journal's damage and where its valid records end (before its records).
    pub(crate) fn journal_scanned(&mut self, jscan: &record::Scan<'_>, name: &Path) {
        note_skipped(self, &jscan.skipped, name, "journal");
        self.journal_valid_end = jscan.valid_end;
    }

    /// Takes one record of the journal, in file order, after every data record.
    pub(crate) fn journal_record(
        &mut self,
        rec: &record::RawRecord<'_>,
        name: &Path,
        keys: Option<&Keyring>,
    ) {
        apply_journal_record(self, rec, name, keys);
    }
}

/// Applies one message's updates. An update for an unknown id belongs to a removed, damaged
/// or shredded message: ignored.
fn apply_updates(st: &mut SegmentState, id: u64, updates: Vec<crate::types::RecipientUpdate>) {
    if let Some(found) = st.live.get_mut(&id) {
        for u in updates {
            if let Some(r) = found.envelope.recipients.get_mut(u.index as usize) {
                r.state = u.state;
                r.attempts = u.attempts;
                r.next_attempt_unix_ms = u.next_attempt_unix_ms;
                r.last_reply = u.last_reply;
            }
        }
    }
}

fn apply_journal_record(
    st: &mut SegmentState,
    rec: &record::RawRecord<'_>,
    name: &Path,
    keys: Option<&Keyring>,
) {
    match rec.kind {
        Kind::SealedUpdate => {
            let Some(keys) = keys else {
                st.needs_keyring = true;
                return;
            };
            match sealed::open_update(rec.payload, keys) {
                Ok((id, updates)) => apply_updates(st, id, updates),
                Err(Unsealed::NoKey(_)) => {}
                Err(Unsealed::Damaged) => skip_record(
                    st,
                    name,
                    rec.offset,
                    rec.record_len,
                    "sealed update failed authentication",
                ),
            }
        }
        Kind::Update => match record::decode_update(rec.payload) {
            Some((id, updates)) => apply_updates(st, id, updates),
            None => skip_record(
                st,
                name,
                rec.offset,
                rec.record_len,
                "update failed validation",
            ),
        },
        Kind::Remove => match record::decode_remove(rec.payload) {
            Some(id) => {
                st.live.remove(&id);
            }
            None => skip_record(st, name, rec.offset, rec.record_len, "bad remove record"),
        },
        _ => skip_record(
            st,
            name,
            rec.offset,
            rec.record_len,
            "unexpected record kind in journal",
        ),
    }
}

pub(crate) fn note_skipped(
    st: &mut SegmentState,
    skipped: &[record::Skipped],
    name: &Path,
    which: &str,
) {
    for s in skipped {
        tracing::warn!(
            segment = %name.display(), file = which, offset = s.offset, len_bytes = s.len_bytes,
            "spool recovery skipped a damaged or torn record"
        );
        st.records_skipped += 1;
        st.bytes_skipped += s.len_bytes;
    }
}

fn skip_record(st: &mut SegmentState, name: &Path, offset: u64, len: u64, why: &'static str) {
    tracing::warn!(segment = %name.display(), offset, len_bytes = len, reason = why, "spool recovery skipped a record");
    st.records_skipped += 1;
    st.bytes_skipped += len;
}

/// Turns a rebuilt segment's live messages into the public form.
/// The segment's live messages, moved out (recovery builds nothing twice).
pub(crate) fn spooled(st: SegmentState) -> impl Iterator<Item = SpooledMessage> {
    st.live.into_iter().map(|(id, f)| SpooledMessage {
        id: MessageId(id),
        envelope: f.envelope,
        attribution: f.attribution,
        dsn: f.dsn,
        body_len_bytes: f.body_len_bytes,
    })
}

/// Offline view of everything spooled under `spool_root` (every `shard-<N>` directory), with
/// std::fs only: the engine may be stopped. Reads each segment whole, one at a time. Damaged
/// records are skipped (and logged) exactly as recovery would, shredded ones left out; sealed
/// records need `keys` ([`SpoolError::NoKeyring`] without). Sorted by id.
pub fn inspect(
    spool_root: &Path,
    keys: Option<&Keyring>,
) -> Result<Vec<SpooledMessage>, SpoolError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(spool_root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(SpoolError::io("read_dir", spool_root, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::io("read_dir", spool_root, e))?;
        let is_shard = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(SHARD_DIR_PREFIX));
        if !is_shard || !entry.path().is_dir() {
            continue;
        }
        let dir = entry.path();
        for seq in list_segments(&dir)?.data {
            let dpath = data_path(&dir, seq);
            let data = match std::fs::read(&dpath) {
                Ok(d) => d,
                // Reclaimed by a running engine between the listing and now.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SpoolError::io("read", &dpath, e)),
            };
            let jpath = journal_path(&dir, seq);
            let journal = match std::fs::read(&jpath) {
                Ok(j) => j,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(SpoolError::io("read", &jpath, e)),
            };
            let seg = rebuild(&data, &journal, &dpath, keys);
            if seg.needs_keyring {
                return Err(SpoolError::NoKeyring);
            }
            out.extend(spooled(seg));
        }
    }
    out.sort_by_key(|m| m.id);
    Ok(out)
}
