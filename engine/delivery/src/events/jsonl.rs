//! The JSON-lines event files: `events-<n>.jsonl`, rotated by size and once a day old, the
//! oldest deleted beyond `files_max` and once past the retention window (`retention_ms`, from
//! their last write; checked at each rotation and at start). For operators who ship logs their own way (they are a log, in the clear, like
//! Postfix's maillog; a linked engine does not write them unless told to); the control plane
//! gets the same events, sealed, through the durable backlog (`super::wire`).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::EventsConfig;
use crate::error::DeliveryError;

/// `events-<n>.jsonl` files, rotated by size.
pub(super) struct RotatingFile {
    cfg: EventsConfig,
    /// Numbers of the files on disk, oldest first; the last is the current one.
    numbers: VecDeque<u64>,
    current: BufWriter<File>,
    /// Bytes in the current file.
    current_bytes: u64,
    /// When the current file was opened (unix ms).
    opened_unix_ms: u64,
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl RotatingFile {
    pub(super) fn open(cfg: &EventsConfig) -> Result<RotatingFile, DeliveryError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DeliveryError::Events { path, source }
        };
        std::fs::create_dir_all(&cfg.dir).map_err(err(&cfg.dir))?;
        let mut numbers: Vec<u64> = std::fs::read_dir(&cfg.dir)
            .map_err(err(&cfg.dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| file_number(&e.file_name().to_string_lossy()))
            .collect();
        numbers.sort_unstable();
        let next = numbers.last().map_or(0, |n| n + 1);
        let mut numbers: VecDeque<u64> = numbers.into();
        let (current, path) = create(&cfg.dir, next)?;
        numbers.push_back(next);
        let mut files = RotatingFile {
            cfg: cfg.clone(),
            numbers,
            current,
            current_bytes: 0,
            opened_unix_ms: now_unix_ms(),
        };
        files.prune().map_err(err(&path))?;
        Ok(files)
    }

    pub(super) fn write(&mut self, line: &[u8]) -> Result<(), DeliveryError> {
        let len = line.len() as u64;
        let full = self.current_bytes + len > self.cfg.file_size_max_bytes;
        let old = now_unix_ms().saturating_sub(self.opened_unix_ms) >= self.cfg.file_age_max_ms;
        if self.current_bytes > 0 && (full || old) {
            self.rotate()?;
        }
        let path = self.current_path();
        self.current
            .write_all(line)
            .map_err(|source| DeliveryError::Events { path, source })?;
        self.current_bytes += len;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), DeliveryError> {
        self.flush()?;
        let next = self.numbers.back().map_or(0, |n| n + 1);
        let (file, path) = create(&self.cfg.dir, next)?;
        self.current = file;
        self.current_bytes = 0;
        self.opened_unix_ms = now_unix_ms();
        self.numbers.push_back(next);
        self.prune()
            .map_err(|source| DeliveryError::Events { path, source })
    }

    fn prune(&mut self) -> std::io::Result<()> {
        while self.numbers.len() > self.cfg.files_max.max(1) {
            if let Some(old) = self.numbers.pop_front() {
                std::fs::remove_file(file_path(&self.cfg.dir, old))?;
            }
        }
        // Closed files whose last write is past the retention window.
        let cutoff = std::time::SystemTime::now()
            .checked_sub(std::time::Duration::from_millis(self.cfg.retention_ms))
            .unwrap_or(std::time::UNIX_EPOCH);
        while self.numbers.len() > 1 {
            let Some(&oldest) = self.numbers.front() else {
                break;
            };
            let path = file_path(&self.cfg.dir, oldest);
            let expired = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_or(true, |t| t < cutoff);
            if !expired {
                break;
            }
            self.numbers.pop_front();
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) fn flush(&mut self) -> Result<(), DeliveryError> {
        let path = self.current_path();
        self.current
            .flush()
            .map_err(|source| DeliveryError::Events { path, source })
    }

    fn current_path(&self) -> PathBuf {
        file_path(&self.cfg.dir, self.numbers.back().copied().unwrap_or(0))
    }
}

fn create(dir: &Path, n: u64) -> Result<(BufWriter<File>, PathBuf), DeliveryError> {
    let path = file_path(dir, n);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|source| DeliveryError::Events {
            path: path.clone(),
            source,
        })?;
    Ok((BufWriter::with_capacity(64 << 10, file), path))
}

pub(super) fn file_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("events-{n}.jsonl"))
}

pub(super) fn file_number(name: &str) -> Option<u64> {
    name.strip_prefix("events-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}
