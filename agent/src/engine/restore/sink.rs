//! [`DiskSink`] over a VDDK disk opened read-write: what the repository's restore pipeline
//! writes during a VM restore. The disk handle is opened and used by one named thread.

use std::io;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::repo::{DiskSink, SourceError};
use crate::vddk::Disk;

/// A disk written through VDDK; writes stop with an `Interrupted` error once the job is
/// cancelled.
#[derive(Debug)]
pub struct VddkSink {
    disk: Disk,
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
            fresh,
            what,
            cancel,
        }
    }
}

impl DiskSink for VddkSink {
    fn zeroes_are_holes(&self) -> bool {
        self.fresh
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SourceError> {
        let err = |source| SourceError::Write {
            path: self.what.clone(),
            offset,
            len: data.len(),
            source,
        };
        if self.cancel.is_cancelled() {
            return Err(err(io::Error::new(
                io::ErrorKind::Interrupted,
                "restore cancelled",
            )));
        }
        self.disk
            .write_at(offset, data)
            .map_err(|e| err(io::Error::other(e)))
    }

    fn finish(&mut self) -> Result<(), SourceError> {
        self.disk.flush().map_err(|e| SourceError::Write {
            path: self.what.clone(),
            offset: 0,
            len: 0,
            source: io::Error::other(e),
        })
    }
}
