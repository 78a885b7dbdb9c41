//! [`DiskSource`] over a VDDK disk opened at a snapshot: what the repository's pipeline
//! reads during a backup. The pipeline moves the source into its `disk-read` thread, so the
//! [`Disk`] handle is owned by exactly one I/O thread, as VMware's thread rules require.

use std::io;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::repo::{DiskSource, Extent, SourceError};
use crate::vddk::{Disk, DiskLibError};

/// A disk read through VDDK; reads stop with an `Interrupted` error once the job is
/// cancelled.
#[derive(Debug)]
pub struct VddkSource {
    disk: Disk,
    capacity_bytes: u64,
    /// "`[ds] vm/disk.vmdk` of vm-12 at snapshot-3", for errors.
    what: PathBuf,
    cancel: CancellationToken,
}

impl VddkSource {
    /// Wraps an open disk; `capacity_bytes` is what VDDK reports for it.
    #[must_use]
    pub fn new(disk: Disk, capacity_bytes: u64, cancel: CancellationToken) -> Self {
        let what = PathBuf::from(format!("{} of {}", disk.path(), disk.vm()));
        Self {
            disk,
            capacity_bytes,
            what,
            cancel,
        }
    }
}

impl DiskSource for VddkSource {
    fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn allocated_extents(&mut self) -> Result<Vec<Extent>, SourceError> {
        let whole = || {
            vec![crate::vddk::Extent {
                offset: 0,
                length: self.capacity_bytes,
            }]
        };
        let answer = match self.disk.allocated_extents(0, self.capacity_bytes) {
            // VDDK before 6.7 cannot say: read the whole disk.
            Err(DiskLibError::NotSupported { .. }) => Ok(whole()),
            // A host or transport that refuses the query (ESXi before 6.7 behind a newer
            // VDDK, say), as nbdkit finds out by trying: the whole disk, read as if it
            // were all allocated, is still a correct full backup.
            Err(DiskLibError::Vix(e)) => {
                tracing::warn!(disk = %self.what.display(), error = %e, "QueryAllocatedBlocks failed: reading the whole disk");
                Ok(whole())
            }
            other => other,
        };
        answer
            .map(|v| {
                v.into_iter()
                    .map(|e| Extent {
                        offset: e.offset,
                        length: e.length,
                    })
                    .collect()
            })
            .map_err(|e| SourceError::Read {
                path: self.what.clone(),
                offset: 0,
                len: 0,
                source: io::Error::other(e),
            })
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        super::pause_point_blocking("backup-mid-disk");
        if self.cancel.is_cancelled() {
            return Err(SourceError::Read {
                path: self.what.clone(),
                offset,
                len: buf.len(),
                source: io::Error::new(io::ErrorKind::Interrupted, "backup cancelled"),
            });
        }
        self.disk
            .read_at(offset, buf)
            .map_err(|e| SourceError::Read {
                path: self.what.clone(),
                offset,
                len: buf.len(),
                source: io::Error::other(e),
            })
    }
}
