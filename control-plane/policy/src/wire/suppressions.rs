//! The suppression frames' payloads: a compact binary form, because a full load of 10 million
//! entries is about 400 MB as JSON and a fifth of that here.
//!
//! ```text
//! SuppressionsSince / SuppressionsApplied:  version u64 BE
//! SuppressionLoad:    version u64 BE | flags u8 (1 first, 2 last) | count u32 BE | entries
//!   entry:            reason u8 | scope_len u8 | scope | address_len u8 | address
//! SuppressionChanges: count u32 BE | changes
//!   change:           seq u64 BE | op u8 (0 remove, 1 + reason code add) | scope_len u8 | scope
//!                     | address_len u8 | address
//! ```
//!
//! Reason codes: 0 hard_bounce, 1 complaint, 2 unsubscribe, 3 manual. Scopes and addresses are
//! UTF-8 within [`SCOPE_MAX_BYTES`] and [`ADDRESS_MAX_BYTES`]; a frame holds at most
//! [`SUPPRESSION_FRAME_ENTRIES_MAX`] entries. Decoding checks every length against the bytes
//! actually there, so a hostile length cannot make it allocate or read past the payload.

use crate::error::PolicyError;
use crate::suppression::{
    ChangeOp, SuppressionChange, SuppressionReason, ADDRESS_MAX_BYTES, SCOPE_MAX_BYTES,
};

/// Entries (or changes) in one suppression frame: a page of the control plane's change log.
pub const SUPPRESSION_FRAME_ENTRIES_MAX: usize = 10_000;

const FLAG_FIRST: u8 = 1;
const FLAG_LAST: u8 = 2;
const OP_REMOVE: u8 = 0;

/// One entry of a full load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadEntry {
    /// A tenant id or `*` (the operator-wide list).
    pub scope: String,
    /// Normalized.
    pub address: String,
    pub reason: SuppressionReason,
}

/// A page of a full load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadPage {
    /// The change-log seq the whole load reflects (read before its first page): changes after
    /// it follow as deltas.
    pub version: u64,
    /// Starts a new load (drop any load in progress).
    pub first: bool,
    /// Ends the load: the set is complete and replaces the one in force.
    pub last: bool,
    pub entries: Vec<LoadEntry>,
}

fn reason_byte(r: SuppressionReason) -> u8 {
    match r {
        SuppressionReason::HardBounce => 0,
        SuppressionReason::Complaint => 1,
        SuppressionReason::Unsubscribe => 2,
        SuppressionReason::Manual => 3,
    }
}

fn reason_from(b: u8) -> Result<SuppressionReason, PolicyError> {
    SuppressionReason::ALL
        .into_iter()
        .find(|r| reason_byte(*r) == b)
        .ok_or_else(|| PolicyError::protocol(format!("unknown suppression reason code {b}")))
}

fn check_count(n: usize) -> Result<u32, PolicyError> {
    if n > SUPPRESSION_FRAME_ENTRIES_MAX {
        return Err(PolicyError::protocol(format!(
            "suppression frame of {n} entries exceeds {SUPPRESSION_FRAME_ENTRIES_MAX}"
        )));
    }
    u32::try_from(n).map_err(|_| PolicyError::protocol("count"))
}

fn put_str(out: &mut Vec<u8>, s: &str, max: usize, what: &str) -> Result<(), PolicyError> {
    if s.len() > max || s.is_empty() {
        return Err(PolicyError::protocol(format!(
            "suppression {what} of {} bytes (1..={max})",
            s.len()
        )));
    }
    out.push(u8::try_from(s.len()).map_err(|_| PolicyError::protocol("length"))?);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

pub(super) fn encode_load(page: &LoadPage) -> Result<Vec<u8>, PolicyError> {
    let count = check_count(page.entries.len())?;
    let mut out = Vec::with_capacity(13 + page.entries.len() * 48);
    out.extend_from_slice(&page.version.to_be_bytes());
    out.push((u8::from(page.first) * FLAG_FIRST) | (u8::from(page.last) * FLAG_LAST));
    out.extend_from_slice(&count.to_be_bytes());
    for e in &page.entries {
        out.push(reason_byte(e.reason));
        put_str(&mut out, &e.scope, SCOPE_MAX_BYTES, "scope")?;
        put_str(&mut out, &e.address, ADDRESS_MAX_BYTES, "address")?;
    }
    Ok(out)
}

pub(super) fn encode_changes(changes: &[SuppressionChange]) -> Result<Vec<u8>, PolicyError> {
    let count = check_count(changes.len())?;
    let mut out = Vec::with_capacity(4 + changes.len() * 56);
    out.extend_from_slice(&count.to_be_bytes());
    for c in changes {
        out.extend_from_slice(&c.seq.to_be_bytes());
        out.push(match c.op {
            ChangeOp::Remove => OP_REMOVE,
            ChangeOp::Add(r) => 1 + reason_byte(r),
        });
        put_str(&mut out, &c.scope, SCOPE_MAX_BYTES, "scope")?;
        put_str(&mut out, &c.address, ADDRESS_MAX_BYTES, "address")?;
    }
    Ok(out)
}

/// Reads a payload front to back; every take is checked against what is left.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PolicyError> {
        let (head, rest) = self
            .rest
            .split_at_checked(n)
            .ok_or_else(|| PolicyError::protocol("suppression frame truncated"))?;
        self.rest = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, PolicyError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, PolicyError> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| short())?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, PolicyError> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| short())?;
        Ok(u64::from_be_bytes(b))
    }

    fn str(&mut self, max: usize, what: &str) -> Result<String, PolicyError> {
        let len = usize::from(self.u8()?);
        if len == 0 || len > max {
            return Err(PolicyError::protocol(format!(
                "suppression {what} of {len} bytes (1..={max})"
            )));
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| PolicyError::protocol(format!("suppression {what} is not UTF-8")))
    }

    fn count(&mut self) -> Result<usize, PolicyError> {
        let n = usize::try_from(self.u32()?).map_err(|_| short())?;
        check_count(n)?;
        Ok(n)
    }

    fn end(&self) -> Result<(), PolicyError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(PolicyError::protocol(
                "bytes after the suppression frame's entries",
            ))
        }
    }
}

fn short() -> PolicyError {
    PolicyError::protocol("suppression frame truncated")
}

pub(super) fn decode_load(payload: &[u8]) -> Result<LoadPage, PolicyError> {
    let mut r = Reader { rest: payload };
    let version = r.u64()?;
    let flags = r.u8()?;
    if flags & !(FLAG_FIRST | FLAG_LAST) != 0 {
        return Err(PolicyError::protocol(format!(
            "suppression load flags {flags:#04x}"
        )));
    }
    let count = r.count()?;
    // Each entry takes at least 5 bytes: a count larger than that cannot be honest.
    let mut entries = Vec::with_capacity(count.min(r.rest.len() / 5));
    for _ in 0..count {
        let reason = reason_from(r.u8()?)?;
        let scope = r.str(SCOPE_MAX_BYTES, "scope")?;
        let address = r.str(ADDRESS_MAX_BYTES, "address")?;
        entries.push(LoadEntry {
            scope,
            address,
            reason,
        });
    }
    r.end()?;
    Ok(LoadPage {
        version,
        first: flags & FLAG_FIRST != 0,
        last: flags & FLAG_LAST != 0,
        entries,
    })
}

pub(super) fn decode_changes(payload: &[u8]) -> Result<Vec<SuppressionChange>, PolicyError> {
    let mut r = Reader { rest: payload };
    let count = r.count()?;
    let mut changes = Vec::with_capacity(count.min(r.rest.len() / 13));
    let mut last_seq = 0;
    for _ in 0..count {
        let seq = r.u64()?;
        if seq <= last_seq {
            return Err(PolicyError::protocol(
                "suppression changes out of seq order",
            ));
        }
        last_seq = seq;
        let op = match r.u8()? {
            OP_REMOVE => ChangeOp::Remove,
            b => ChangeOp::Add(reason_from(b - 1)?),
        };
        let scope = r.str(SCOPE_MAX_BYTES, "scope")?;
        let address = r.str(ADDRESS_MAX_BYTES, "address")?;
        changes.push(SuppressionChange {
            seq,
            scope,
            address,
            op,
        });
    }
    r.end()?;
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64, op: ChangeOp) -> SuppressionChange {
        SuppressionChange {
            seq,
            scope: "ten_0123456789abcdef".into(),
            address: format!("user{seq}@example.com"),
            op,
        }
    }

    #[test]
    fn pages_and_changes_round_trip() {
        let page = LoadPage {
            version: 42,
            first: true,
            last: false,
            entries: SuppressionReason::ALL
                .into_iter()
                .enumerate()
                .map(|(i, reason)| LoadEntry {
                    scope: if i == 0 { "*".into() } else { "t1".into() },
                    address: format!("a{i}@x.example"),
                    reason,
                })
                .collect(),
        };
        assert_eq!(decode_load(&encode_load(&page).unwrap()).unwrap(), page);
        let changes = vec![
            change(3, ChangeOp::Add(SuppressionReason::Complaint)),
            change(4, ChangeOp::Remove),
            change(9, ChangeOp::Add(SuppressionReason::Manual)),
        ];
        assert_eq!(
            decode_changes(&encode_changes(&changes).unwrap()).unwrap(),
            changes
        );
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let changes = vec![
            change(1, ChangeOp::Add(SuppressionReason::HardBounce)),
            change(2, ChangeOp::Remove),
        ];
        let bytes = encode_changes(&changes).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode_changes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_changes(&longer).is_err());
        let mut bad_op = bytes.clone();
        bad_op[12] = 9;
        assert!(decode_changes(&bad_op).is_err());
        let disorder = encode_changes(&[changes[1].clone(), changes[0].clone()]).unwrap();
        assert!(decode_changes(&disorder).is_err(), "seqs must increase");
        // A count far beyond the bytes present allocates nothing big and fails.
        let mut huge = 10_000u32.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 20]);
        assert!(decode_changes(&huge).is_err());
        let mut over = 10_001u32.to_be_bytes().to_vec();
        over.extend_from_slice(&[0; 20]);
        assert!(decode_changes(&over).is_err());
        // Every byte flipped in a load page: an error or a page, never a panic.
        let page = LoadPage {
            version: 1,
            first: true,
            last: true,
            entries: vec![LoadEntry {
                scope: "t".into(),
                address: "a@b".into(),
                reason: SuppressionReason::Manual,
            }],
        };
        let bytes = encode_load(&page).unwrap();
        for i in 0..bytes.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = decode_load(&b);
            }
        }
    }

    #[test]
    fn oversized_fields_are_refused_when_encoding() {
        let mut c = change(1, ChangeOp::Remove);
        c.address = "a".repeat(ADDRESS_MAX_BYTES + 1);
        assert!(encode_changes(&[c]).is_err());
        let many: Vec<_> = (1..=SUPPRESSION_FRAME_ENTRIES_MAX as u64 + 1)
            .map(|s| change(s, ChangeOp::Remove))
            .collect();
        assert!(encode_changes(&many).is_err());
    }
}
