//! Segment files over glommio's io_uring file API, in either of its two flavours.
//!
//! `Buffered` goes through the page cache (`BufferedFile`): records are padded to 8 bytes and
//! written wherever they fall. `Direct` uses `O_DIRECT` (`DmaFile`): every write must start and end
//! on the device's logical block (512 B or 4 KiB), so each record is padded to it, which costs
//! space on small messages but skips the page cache copy. See the crate docs for the figures that
//! chose the default.

use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, DmaFile, OpenOptions};

use crate::error::SpoolError;
use crate::prefill::{Prefill, PREFILL_DATA_CHUNK_BYTES, PREFILL_JOURNAL_CHUNK_BYTES};
use crate::record::RECORD_ALIGN_BYTES;
use crate::recovery::{DATA_SUFFIX, JOURNAL_SUFFIX};

/// Which glommio file type backs the data segments (journals are always buffered: their records
/// are tiny and padding them to a device block would multiply their size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileMode {
    /// Page cache (`BufferedFile`); the default, see the crate docs.
    #[default]
    Buffered,
    /// `O_DIRECT` (`DmaFile`), records padded to the device block.
    Direct,
}

/// Largest single read issued while loading a file at recovery.
pub const READ_CHUNK_MAX_BYTES: usize = 4 << 20;

/// One open file of a segment.
#[derive(Debug)]
pub(crate) enum SegFile {
    /// Reads and syncs through the `BufferedFile`; writes through a `std` handle of the same
    /// file, in the calling thread (see `write_all_at`).
    Buffered(BufferedFile, std::fs::File, Prefill, PathBuf),
    /// Writes go through the `DmaFile`; reads through a buffered handle of the same file
    /// (glommio's direct reads fail with EOPNOTSUPP on some virtual disks, and the kernel keeps
    /// the two coherent: a direct write invalidates the cached pages it covers).
    Direct(DmaFile, BufferedFile, PathBuf),
}

impl SegFile {
    /// Creates a new, empty file (fails if it exists: names are never reused).
    pub(crate) async fn create(path: &Path, mode: FileMode) -> Result<SegFile, SpoolError> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create_new(true);
        Self::open_with(path, mode, &opts, "create").await
    }

    /// Opens an existing file for reading and writing.
    pub(crate) async fn open(path: &Path, mode: FileMode) -> Result<SegFile, SpoolError> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        Self::open_with(path, mode, &opts, "open").await
    }

    async fn open_with(
        path: &Path,
        mode: FileMode,
        opts: &OpenOptions,
        op: &'static str,
    ) -> Result<SegFile, SpoolError> {
        let p = path.to_path_buf();
        Ok(match mode {
            FileMode::Buffered => {
                let file = opts
                    .buffered_open(path)
                    .await
                    .map_err(|e| SpoolError::io(op, path, e))?;
                let writer = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| SpoolError::io("open", path, e))?;
                // Data files and journals get zeroes written ahead of their end (`prefill`);
                // other files (the health probe's) do not.
                let name = path.to_string_lossy();
                let chunk = if name.ends_with(DATA_SUFFIX) {
                    PREFILL_DATA_CHUNK_BYTES
                } else if name.ends_with(JOURNAL_SUFFIX) {
                    PREFILL_JOURNAL_CHUNK_BYTES
                } else {
                    0
                };
                SegFile::Buffered(file, writer, Prefill::new(chunk), p)
            }
            FileMode::Direct => {
                let dma = opts
                    .dma_open(path)
                    .await
                    .map_err(|e| SpoolError::io(op, path, e))?;
                let reader = OpenOptions::new()
                    .read(true)
                    .buffered_open(path)
                    .await
                    .map_err(|e| SpoolError::io("open", path, e))?;
                SegFile::Direct(dma, reader, p)
            }
        })
    }

    /// A plain handle of a buffered file (a `dup` of the writer's), for work on glommio's
    /// blocking thread; `None` for `O_DIRECT` files.
    pub(crate) fn plain_handle(&self) -> Option<std::io::Result<std::fs::File>> {
        match self {
            SegFile::Buffered(_, w, ..) => Some(w.try_clone()),
            SegFile::Direct(..) => None,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        match self {
            SegFile::Buffered(_, _, _, p) | SegFile::Direct(_, _, p) => p,
        }
    }

    /// Records written to this file are padded to this (a power of two).
    pub(crate) fn align(&self) -> usize {
        match self {
            SegFile::Buffered(..) => RECORD_ALIGN_BYTES,
            SegFile::Direct(f, _, _) => (f.alignment() as usize).max(RECORD_ALIGN_BYTES),
        }
    }

    /// Writes all of `bytes` at `pos`; a short write is an error (regular files only write short
    /// when the disk is full). For direct files both must be multiples of `align()`.
    pub(crate) async fn write_all_at(&self, bytes: Vec<u8>, pos: u64) -> Result<(), SpoolError> {
        let len = bytes.len();
        let n = match self {
            // A `pwrite` into the page cache, here: io_uring would hand a buffered write to an
            // io-wq worker (ext4 cannot do it without blocking), a thread hop and two context
            // switches for a copy of a few KiB. `write_all_at` never writes short.
            SegFile::Buffered(_, w, _, _) => {
                use std::os::unix::fs::FileExt;
                w.write_all_at(&bytes, pos).map(|()| len)
            }
            SegFile::Direct(f, _, _) => {
                let mut dma = f.alloc_dma_buffer(len);
                dma.as_bytes_mut().copy_from_slice(&bytes);
                f.write_at(dma, pos).await.map_err(std::io::Error::from)
            }
        }
        .map_err(|e| SpoolError::io("write", self.path(), e))?;
        if n != len {
            return Err(SpoolError::io(
                "write",
                self.path(),
                std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write: {n} of {len} bytes"),
                ),
            ));
        }
        Ok(())
    }

    /// The file's reserved end moved to `reserved_end`: writes zeroes ahead of it, never past
    /// `limit`, if it is time (`prefill`).
    pub(crate) fn prefill_ahead(&self, reserved_end: u64, limit: Option<u64>) {
        if let SegFile::Buffered(_, w, prefill, path) = self {
            if let Some((start, end)) = prefill.next_fill(reserved_end, limit) {
                if let Err(e) = prefill.fill(w, start, end) {
                    tracing::debug!(path = %path.display(), error = %e,
                        "spool prefill failed; this file is appended to without it");
                }
            }
        }
    }

    /// Reads exactly `len` bytes at `pos`.
    pub(crate) async fn read_exact_at(&self, pos: u64, len: usize) -> Result<Vec<u8>, SpoolError> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let at = pos + out.len() as u64;
            let want = (len - out.len()).min(READ_CHUNK_MAX_BYTES);
            let r = match self {
                SegFile::Buffered(f, ..) | SegFile::Direct(_, f, _) => f.read_at(at, want).await,
            }
            .map_err(|e| SpoolError::io("read", self.path(), e))?;
            if r.is_empty() {
                return Err(SpoolError::io(
                    "read",
                    self.path(),
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "file shorter than expected",
                    ),
                ));
            }
            out.extend_from_slice(&r);
        }
        Ok(out)
    }

    pub(crate) async fn truncate(&self, len: u64) -> Result<(), SpoolError> {
        match self {
            SegFile::Buffered(f, _, prefill, _) => {
                prefill.truncated(len);
                f.truncate(len).await
            }
            SegFile::Direct(f, _, _) => f.truncate(len).await,
        }
        .map_err(|e| SpoolError::io("truncate", self.path(), e))
    }

    pub(crate) async fn fdatasync(&self) -> Result<(), SpoolError> {
        match self {
            SegFile::Buffered(f, ..) => f.fdatasync().await,
            SegFile::Direct(f, _, _) => f.fdatasync().await,
        }
        .map_err(|e| SpoolError::io("fdatasync", self.path(), e))
    }

    /// Unlinks the file (it stays usable until closed).
    pub(crate) async fn remove(&self) -> Result<(), SpoolError> {
        match self {
            SegFile::Buffered(f, ..) => f.remove().await,
            SegFile::Direct(f, _, _) => f.remove().await,
        }
        .map_err(|e| SpoolError::io("remove", self.path(), e))
    }

    /// Closes the file, logging (not failing) on error: used where the data is already synced
    /// or deleted.
    pub(crate) async fn close(self) {
        let r = match self {
            SegFile::Buffered(f, ..) => f.close().await,
            SegFile::Direct(f, reader, _) => {
                if let Err(e) = reader.close().await {
                    tracing::warn!(error = %e, "closing a spool file failed");
                }
                f.close().await
            }
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "closing a spool file failed");
        }
    }
}
