//! Per-shard append-only durable spool on glommio's io_uring files, with group commit and recovery.
