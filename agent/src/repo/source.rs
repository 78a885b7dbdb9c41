//! The seams between the repository and a disk: [`DiskSource`] (backup) and [`DiskSink`]
//! (restore), with raw-file implementations. A VDDK implementation arrives with the backup
//! engine; it is `Send` but not `Sync`, so the pipeline moves a source into its reader thread
//! and a sink into its writer thread and never shares them.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::repo::aligned::DIRECT_IO_ALIGN;

/// A byte range of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u64, u64)", into = "(u64, u64)")]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

impl From<(u64, u64)> for Extent {
    fn from((offset, length): (u64, u64)) -> Self {
        Self { offset, length }
    }
}

impl From<Extent> for (u64, u64) {
    fn from(e: Extent) -> Self {
        (e.offset, e.length)
    }
}

/// Errors of a disk source or sink; each names the disk (file) and offset.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Opening the disk failed.
    #[error("open {path}")]
    Open {
        /// The disk file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading failed (or the disk is shorter than expected).
    #[error("read {len} bytes at offset {offset} of {path}")]
    Read {
        /// The disk.
        path: PathBuf,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing failed (ENOSPC, EACCES, ...).
    #[error("write {len} bytes at offset {offset} of {path}")]
    Write {
        /// The disk.
        path: PathBuf,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// A disk to back up. Reads are at byte offsets; the pipeline reads whole chunks.
pub trait DiskSource: Send {
    /// Capacity in bytes.
    fn capacity_bytes(&self) -> u64;

    /// Allocated extents, for a full backup (default: the whole disk).
    ///
    /// # Errors
    /// A [`SourceError`] naming the disk.
    fn allocated_extents(&mut self) -> Result<Vec<Extent>, SourceError> {
        Ok(vec![Extent {
            offset: 0,
            length: self.capacity_bytes(),
        }])
    }

    /// Fill `buf` from `offset`.
    ///
    /// # Errors
    /// [`SourceError::Read`] naming the disk and offset.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError>;

    /// As [`DiskSource::read_at`], from the pipeline's reader: a source that may wait
    /// inside a read (VDDK's source, between tries on a lost connection) stops waiting
    /// once `abort` is set, as another stage failed and the backup is over.
    ///
    /// # Errors
    /// As [`DiskSource::read_at`].
    fn read_at_abortable(
        &mut self,
        offset: u64,
        buf: &mut [u8],
        abort: &std::sync::atomic::AtomicBool,
    ) -> Result<(), SourceError> {
        let _ = abort;
        self.read_at(offset, buf)
    }
}

/// A disk to restore into.
pub trait DiskSink: Send {
    /// Whether unwritten ranges read as zeros (a fresh sparse file), so zero chunks can be skipped.
    fn zeroes_are_holes(&self) -> bool;

    /// Write `data` at `offset`.
    ///
    /// # Errors
    /// [`SourceError::Write`] naming the disk and offset.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SourceError>;

    /// Make everything written durable.
    ///
    /// # Errors
    /// [`SourceError::Write`].
    fn finish(&mut self) -> Result<(), SourceError>;
}

/// A raw image file read as a disk.
#[derive(Debug)]
pub struct RawFileSource {
    file: File,
    path: PathBuf,
    capacity_bytes: u64,
}

impl RawFileSource {
    /// Open `path` read-only: a regular file, or a block device (an LVM snapshot, say);
    /// its size is where a seek to its end lands.
    ///
    /// # Errors
    /// [`SourceError::Open`], also for anything else (a FIFO, a character device, a
    /// directory), which has no size to back up; it is refused before it is opened, as
    /// opening a FIFO would wait for a writer.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::FileTypeExt;
        let open_err = |source| SourceError::Open {
            path: path.to_path_buf(),
            source,
        };
        let kind = std::fs::metadata(path).map_err(open_err)?.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            let what = if kind.is_dir() {
                "a directory"
            } else if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_char_device() {
                "a character device"
            } else {
                "not a regular file"
            };
            return Err(open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what}: an image backup reads a regular file or a block device"),
            )));
        }
        let mut file = File::open(path).map_err(open_err)?;
        // A file's length, and a device's size, which its metadata gives as 0. (Reads are
        // positioned, so where the seek leaves the offset does not matter.)
        let capacity_bytes = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            capacity_bytes,
        })
    }
}

impl DiskSource for RawFileSource {
    fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// The file's data extents (`SEEK_DATA`/`SEEK_HOLE`): a sparse image's holes are not
    /// read, as VDDK's allocated-blocks query spares a thin disk's. The whole file when
    /// the file system cannot tell.
    fn allocated_extents(&mut self) -> Result<Vec<Extent>, SourceError> {
        use rustix::fs::{SeekFrom, seek};
        let whole = vec![Extent {
            offset: 0,
            length: self.capacity_bytes,
        }];
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < self.capacity_bytes {
            let data = match seek(&self.file, SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(rustix::io::Errno::NXIO) => break,
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => return Ok(whole),
                Err(e) => {
                    return Err(SourceError::Read {
                        path: self.path.clone(),
                        offset: pos,
                        len: 0,
                        source: e.into(),
                    });
                }
            };
            let hole = seek(&self.file, SeekFrom::Hole(data))
                .map_err(|e| SourceError::Read {
                    path: self.path.clone(),
                    offset: data,
                    len: 0,
                    source: e.into(),
                })?
                .min(self.capacity_bytes);
            if hole > data {
                out.push(Extent {
                    offset: data,
                    length: hole - data,
                });
            }
            pos = hole;
        }
        Ok(out)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| SourceError::Read {
                path: self.path.clone(),
                offset,
                len: buf.len(),
                source,
            })
    }
}

/// A raw image file written by a restore: created (or truncated) sparse at its capacity.
///
/// Block-aligned writes from aligned buffers (the restore pipeline's whole chunks) go to the
/// device directly (`O_DIRECT`, through a second descriptor), so a restore neither fills
/// the page cache nor pays for it. Other writes go through the page cache, and every
/// [`WRITEBACK_STEP`] bytes of them writeback of the range written since is started
/// (`posix_fadvise(POSIX_FADV_DONTNEED)`, which also lets the kernel drop the pages once
/// clean), so the disk writes overlap the restore instead of all waiting for the final
/// fsync. Where the file system refuses `O_DIRECT`, everything goes through the page cache.
#[derive(Debug)]
pub struct RawFileSink {
    file: File,
    /// The same file opened with `O_DIRECT`, while the file system accepts it.
    direct: Option<File>,
    path: PathBuf,
    /// Bytes written since writeback was last started, and the range they lie in.
    unflushed: u64,
    dirty: Option<(u64, u64)>,
}

/// Bytes written between two starts of writeback of a [`RawFileSink`].
pub const WRITEBACK_STEP: u64 = 32 << 20;

impl RawFileSink {
    /// Create `path` as a sparse file of `capacity_bytes`.
    ///
    /// # Errors
    /// [`SourceError::Open`] or [`SourceError::Write`].
    pub fn create(path: &Path, capacity_bytes: u64) -> Result<Self, SourceError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| SourceError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        file.set_len(capacity_bytes)
            .map_err(|source| SourceError::Write {
                path: path.to_path_buf(),
                offset: capacity_bytes,
                len: 0,
                source,
            })?;
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .inspect_err(|e| {
                tracing::debug!(file = %path.display(), error = %e,
                    "no direct I/O for the restored file; writing through the page cache");
            })
            .ok();
        Ok(Self {
            file,
            direct,
            path: path.to_path_buf(),
            unflushed: 0,
            dirty: None,
        })
    }

    /// Start writeback of the range written since the last call, without waiting for it.
    /// Advisory: an I/O error surfaces again at the final fsync, which is what reports it.
    fn start_writeback(&mut self) {
        let Some((lo, hi)) = self.dirty.take() else {
            return;
        };
        self.unflushed = 0;
        let advice = rustix::fs::fadvise(
            &self.file,
            lo,
            std::num::NonZeroU64::new(hi - lo),
            rustix::fs::Advice::DontNeed,
        );
        if let Err(e) = advice {
            tracing::debug!(file = %self.path.display(), error = %e,
                "posix_fadvise failed; the final fsync writes everything");
        }
    }
}

impl DiskSink for RawFileSink {
    fn zeroes_are_holes(&self) -> bool {
        true
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SourceError> {
        let align = DIRECT_IO_ALIGN as u64;
        let aligned = !data.is_empty()
            && offset.is_multiple_of(align)
            && (data.len() as u64).is_multiple_of(align)
            && data.as_ptr().align_offset(DIRECT_IO_ALIGN) == 0;
        if let Some(direct) = self.direct.as_ref().filter(|_| aligned) {
            match direct.write_all_at(data, offset) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!(file = %self.path.display(), error = %e,
                        "direct I/O refused; writing the restored file through the page cache");
                    self.direct = None;
                }
                Err(source) => {
                    return Err(SourceError::Write {
                        path: self.path.clone(),
                        offset,
                        len: data.len(),
                        source,
                    });
                }
            }
        }
        self.file
            .write_all_at(data, offset)
            .map_err(|source| SourceError::Write {
                path: self.path.clone(),
                offset,
                len: data.len(),
                source,
            })?;
        let end = offset + data.len() as u64;
        self.dirty = Some(
            self.dirty
                .map_or((offset, end), |(lo, hi)| (lo.min(offset), hi.max(end))),
        );
        self.unflushed += data.len() as u64;
        if self.unflushed >= WRITEBACK_STEP {
            self.start_writeback();
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SourceError> {
        self.file.sync_all().map_err(|source| SourceError::Write {
            path: self.path.clone(),
            offset: 0,
            len: 0,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_parse_as_pairs() {
        let e: Vec<Extent> = serde_json::from_str("[[0, 65536], [1048576, 4096]]").unwrap();
        assert_eq!(
            e[1],
            Extent {
                offset: 1_048_576,
                length: 4096
            }
        );
    }

    #[test]
    fn a_sparse_image_reports_only_its_data() {
        // Needs a file system with SEEK_HOLE (every local Linux one; tmpfs included).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse.img");
        let mib = 1u64 << 20;
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(64 * mib).unwrap();
        f.write_all_at(&[7; 4096], 8 * mib).unwrap();
        f.write_all_at(&[9; 65536], 40 * mib).unwrap();
        f.sync_all().unwrap();
        let mut src = RawFileSource::open(&p).unwrap();
        let extents = src.allocated_extents().unwrap();
        let covers = |at: u64, len: u64| {
            extents
                .iter()
                .any(|e| e.offset <= at && at + len <= e.offset + e.length)
        };
        assert!(covers(8 * mib, 4096), "{extents:?}");
        assert!(covers(40 * mib, 65536), "{extents:?}");
        let total: u64 = extents.iter().map(|e| e.length).sum();
        assert!(
            total < 8 * mib,
            "the holes were reported as data: {extents:?}"
        );
    }

    #[test]
    fn raw_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        let mut sink = RawFileSink::create(&p, 8192).unwrap();
        sink.write_at(4096, &[1; 4096]).unwrap();
        sink.finish().unwrap();
        let mut src = RawFileSource::open(&p).unwrap();
        assert_eq!(src.capacity_bytes(), 8192);
        let mut buf = [0u8; 4096];
        src.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf, [1; 4096]);
        let err = src.read_at(8000, &mut buf).unwrap_err().to_string();
        assert!(
            err.contains("offset 8000") && err.contains("d.img"),
            "{err}"
        );
    }

    #[test]
    fn raw_sink_mixes_direct_and_buffered_writes_correctly() {
        use crate::repo::aligned::AlignedBuf;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.img");
        let size = 3 * 65536 + 1000;
        let mut sink = RawFileSink::create(&path, size).unwrap();
        let mut expect = vec![0u8; usize::try_from(size).unwrap()];
        let mut put = |sink: &mut RawFileSink, offset: usize, data: &[u8]| {
            sink.write_at(offset as u64, data).unwrap();
            expect[offset..offset + data.len()].copy_from_slice(data);
        };
        // Aligned buffer, offset and length: direct when the file system allows it.
        let mut a = AlignedBuf::zeroed(65536);
        a.as_mut_slice().fill(1);
        put(&mut sink, 65536, a.as_slice());
        // Unaligned buffer start, unaligned length, unaligned offset: buffered.
        let b = vec![2u8; 70000];
        put(&mut sink, 131_072 + 3, &b[1..61_000]);
        put(&mut sink, 3 * 65536, &[3u8; 1000]);
        // Overwrite part of the direct range through the page cache, then directly again.
        put(&mut sink, 65536 + 10, &[4u8; 10]);
        let mut c = AlignedBuf::zeroed(4096);
        c.as_mut_slice().fill(5);
        put(&mut sink, 0, c.as_slice());
        sink.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == expect);
    }
}
