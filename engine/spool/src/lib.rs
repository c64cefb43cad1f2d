//! Petrel's per-shard durable spool.
//!
//! Every accepted message lands here before the client hears "250": one [`Spool`] per shard,
//! living on that shard's glommio executor, owning `<root>/shard-<N>/`. It is the only copy of
//! the message until delivery is final for every recipient, so its one promise is: when
//! [`Spool::store`] returns `Ok`, the message survives a crash (kill -9 or power loss).
//!
//! **Layout.** The shard directory holds segments. Segment `seg-<16hex>.data` is append-only: a
//! header record, then one store record per message (id, rkyv-archived [`Envelope`], body; the body
//! is stored once whatever the number of recipients). Its sidecar `seg-<16hex>.journal` holds the
//! update and remove records of the messages stored in that data file, and nothing else: no record
//! points across segments, so once every message of a sealed segment is removed, both files are
//! deleted and the space is back (the data file's a step at a time, [`RELEASE_STEP_BYTES`], so a
//! file system mounted `discard` does not stall the syncs). Every record is framed with a magic,
//! its length and crc32c checksums of header and payload ([`record`]).
//!
//! **Durability and group commit.** A store reserves its offset and encodes its record into the
//! segment's batch, then waits for an fdatasync that covers it. Whoever finds no sync running leads
//! one; the stores that arrive meanwhile queue behind it and share the next one. With buffered
//! files and fsync on, the records wait in the batch and each sync first writes every batch with
//! one `pwrite`, so a group costs one write, not one per message; otherwise the store writes first
//! and waits for a sync that started after its write ended. The fsync rate thus follows the disk's
//! latency, not the message rate: 64 concurrent storers on one core need a small fraction of the
//! syncs of 64 sequential ones (see `benches/spool_append.rs` and `Spool::commits`). Buffered
//! writes are `pwrite`s in the shard's thread (a copy into the page cache; io_uring would hand each
//! to an io-wq worker), into space zeroed ahead of the file's end (`prefill.rs`,
//! [`PREFILL_DATA_CHUNK_BYTES`]), so the fdatasync that follows writes the data and flushes without
//! also writing the inode for a new size. Updates and removes do not wait for a sync (at-least-once
//! delivery tolerates a redelivery after a crash); a journal sync of their own, beside the group
//! commit, covers them within [`JOURNAL_SYNC_DELAY_MS`], so an acknowledgement never waits for
//! them. A sync whose leader is dropped midway (its task cancelled) gives the files it took back,
//! and its writers wait for the next sync, which covers them.
//!
//! **File type.** Data segments can be written through the page cache (`BufferedFile`, the
//! default) or with `O_DIRECT` (`DmaFile`), see [`FileMode`]. Direct writes must cover whole
//! device blocks, so a 1 KiB message takes a 1.5 KiB (512 B blocks) or 4 KiB record, and each
//! write goes to the device before the fdatasync that follows it, instead of being flushed with
//! its neighbours by that one fdatasync. Measured here (`cargo bench -p petrel-spool`, 1 KiB
//! bodies, fsync on, one executor, a shared 2-core VM under heavy load, two runs): buffered
//! 340-460 msg/s with one storer and 3,300-4,900 msg/s with 64 concurrent storers (about 31
//! stores per fdatasync); direct 66-73 msg/s with one storer and about 1,900 msg/s with 64
//! (about 12 stores per fdatasync). Buffered is the default.
//!
//! **Recovery.** [`Spool::open`] scans every segment, replays its journal over its data and
//! returns the live messages with their latest recipient states. [`Spool::open_early`] takes
//! new messages after reading only the newest segment's frames (the next id), and hands the
//! rest to a [`Backlog`] that the shard runs while it serves (`backlog.rs`). A torn tail or a record with a
//! bad checksum is skipped, counted in [`Recovery`] and logged, never fatal; appending resumes
//! in a fresh segment, never after a torn tail (journals are cut back to their last good
//! record). Message ids are `shard << 56 | sequence`; the sequence restarts above every one seen,
//! and each segment header records the next sequence, so ids are not reused after reclamation.
//!
//! **Memory.** The index maps id to (segment, offset, record length, recipient count): 32 bytes
//! of key and entry per live message, about 37 bytes with the hash table's control byte at full
//! load (up to twice that just after it grows). Envelopes stay on disk.
//!
//! **Offline.** [`inspect`] reads the same files with std::fs only, for `petrel spool ls|count`
//! while the engine is stopped (or running: it sees written, not necessarily synced, state).
//!
//! **Sealed at rest** (issue 16). With a keyring ([`SpoolConfig::keys`]) every store record is
//! sealed with AES-256-GCM under its tenant's current data key (the operator's for a message
//! without a tenant), and its journal updates under the same key ([`sealed`]); removals carry
//! only an id. Recovery and [`inspect`] open them with the keyring; a record whose key was
//! destroyed (its tenant deleted) is counted as shredded and dropped. A spool holding sealed
//! records refuses to open without a keyring. Without one (benchmarks' A/B, unit tests) records
//! are written in the clear, as before.
//!
//! Trade-offs: a single damaged header makes the scanner resynchronise on the next aligned valid
//! header, which in theory could be found inside a message body; bodies are not scrambled.
//! A failed fdatasync makes the spool refuse writes until a probe finds writing works again;
//! it then continues in a new segment, never trusting the files that saw the failure again
//! (the page cache may have dropped the failed pages). A failed write (a full disk) marks it
//! unhealthy until the probe succeeds (`health.rs`).
// No unwrap outside tests: propagate a typed error, or `expect` an invariant checked right there.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod backlog;
mod batch;
mod cache;
mod commit;
mod error;
mod file;
pub mod health;
mod prefill;
pub mod record;
mod recovery;
mod release;
pub mod sealed;
mod segments;
mod spool;
mod state;
mod types;

pub use backlog::{Backlog, BACKLOG_RECORD_BYTES_ASSUMED, BACKLOG_YIELD_RECORDS};
pub use batch::JOURNAL_SYNC_DELAY_MS;
pub use commit::SYNC_SAMPLES_MAX;
pub use error::SpoolError;
pub use file::{FileMode, READ_CHUNK_MAX_BYTES};
pub use prefill::{PREFILL_ALIGN_BYTES, PREFILL_DATA_CHUNK_BYTES, PREFILL_JOURNAL_CHUNK_BYTES};
pub use recovery::inspect;
pub use release::{RELEASE_PAUSE_MS, RELEASE_STEP_BYTES};
pub use spool::{Spool, SEGMENT_SIZE_MAX_LIMIT_BYTES, SEGMENT_SIZE_MIN_BYTES};
pub use types::*;
