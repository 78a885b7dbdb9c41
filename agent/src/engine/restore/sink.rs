//! [`DiskSink`] over a VDDK disk opened read-write: what the repository's restore pipeline
//! writes during a VM restore. The disk handle is opened and used by one named thread.
//! Adjacent chunk writes are coalesced into VDDK writes of up to [`WRITE_BATCH`] bytes:
//! every VDDK call has a fixed cost (a round trip over NBD), so few large writes beat many
//! small ones. Memory: one buffer of that size per disk.

use std::io;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::repo::aligned::AlignedBuf;
use crate::repo::{DiskSink, SourceError};
use crate::vddk::Disk;

/// A disk written through VDDK; writes stop with an `Interrupted` error once the job is
/// cancelled.
/// The largest write handed to VDDK.
pub const WRITE_BATCH: usize = 4 << 20;

#[derive(Debug)]
pub struct VddkSink {
    disk: Disk,
    /// Data not yet written: `pending[..pending_len]`, starting at `pending_at`. Aligned,
    /// so a datastore that writes with direct I/O can use it as it is.
    pending: AlignedBuf,
    pending_len: usize,
    pending_at: u64,
    /// A freshly created thin disk reads unwritten ranges as zeros: zero chunks are skipped.
    fresh: bool,
    what: PathBuf,
    cancel: CancellationToken,
}

impl VddkSink {
    /// Wraps an open disk; `fresh` when it was just created (thin, all zeros).
    #[must_use]
    pub fn new(disk: Disk, fresh: bool, cancel: CancellationToken) -> Self {
        let what = PathBuf::from(format!("{} of {}", disk.path(), disk.vm()));
        Self {
            disk,
            pending: AlignedBuf::zeroed(WRITE_BATCH),
            pending_len: 0,
            pending_at: 0,
            fresh,
            what,
            cancel,
        }
    }
}

impl VddkSink {
    /// Writes the pending bytes through VDDK.
    fn write_pending(&mut self) -> Result<(), SourceError> {
        if self.pending_len == 0 {
            return Ok(());
        }
        let offset = self.pending_at;
        let len = self.pending_len;
        let result = self.disk.write_at(offset, &self.pending.as_slice()[..len]);
        self.pending_len = 0;
        result.map_err(|e| SourceError::Write {
            path: self.what.clone(),
            offset,
            len,
            source: io::Error::other(e),
        })
    }
}

impl DiskSink for VddkSink {
    fn zeroes_are_holes(&self) -> bool {
        self.fresh
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SourceError> {
        let err = |what: &PathBuf, source| SourceError::Write {
            path: what.clone(),
            offset,
            len: data.len(),
            source,
        };
        crate::engine::pause_point_blocking("restore-mid-disk");
        if self.cancel.is_cancelled() {
            return Err(err(
                &self.what,
                io::Error::new(io::ErrorKind::Interrupted, "restore cancelled"),
            ));
        }
        let pending_end = self.pending_at + self.pending_len as u64;
        if self.pending_len > 0
            && (offset != pending_end || self.pending_len + data.len() > WRITE_BATCH)
        {
            self.write_pending()?;
        }
        if data.len() >= WRITE_BATCH {
            return self
                .disk
                .write_at(offset, data)
                .map_err(|e| err(&self.what, io::Error::other(e)));
        }
        if self.pending_len == 0 {
            self.pending_at = offset;
        }
        self.pending.as_mut_slice()[self.pending_len..self.pending_len + data.len()]
            .copy_from_slice(data);
        self.pending_len += data.len();
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SourceError> {
        self.write_pending()?;
        self.disk.flush().map_err(|e| SourceError::Write {
            path: self.what.clone(),
            offset: 0,
            len: 0,
            source: io::Error::other(e),
        })
    }
}
