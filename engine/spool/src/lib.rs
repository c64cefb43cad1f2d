//! Petrel's per-shard durable spool.
//!
//! TODO essay.

mod commit;
mod error;
mod file;
pub mod record;
mod recovery;
mod spool;
mod types;

pub use error::SpoolError;
pub use file::FileMode;
pub use recovery::inspect;
pub use spool::{Spool, JOURNAL_SYNC_DELAY_MS, SEGMENT_SIZE_MIN_BYTES};
pub use types::*;
