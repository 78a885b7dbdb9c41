//! The redo-log (delta) extent: `disk-0-000001-delta.vmdk`. The format is ours (see the
//! module documentation of [`crate::datastore`]): a 4 KiB header, an allocation bitmap
//! with one bit per 4 KiB grain, then the grain data, direct-mapped (grain `i` lives at
//! `data_offset + i * 4096`), so the file is sparse where nothing was written.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::DatastoreError;

/// Grain size of a delta file, in bytes.
pub const GRAIN_BYTES: u64 = 4096;
const MAGIC: &[u8; 8] = b"VADPDLTA";
const VERSION: u32 = 1;
const HEADER_BYTES: u64 = 4096;

/// An open delta file with its allocation bitmap in memory.
#[derive(Debug)]
pub(crate) struct DeltaFile {
    file: File,
    path: PathBuf,
    capacity_bytes: u64,
    data_offset: u64,
    bitmap: Vec<u8>,
}

fn bitmap_len(capacity_bytes: u64) -> u64 {
    capacity_bytes.div_ceil(GRAIN_BYTES).div_ceil(8)
}

pub(crate) fn to_usize(v: u64) -> usize {
    usize::try_from(v).expect("u64 fits in usize on the 64-bit hosts the lab supports")
}

impl DeltaFile {
    /// Creates an empty delta file of `capacity_bytes` (nothing allocated) and fsyncs it.
    pub fn create(path: &Path, capacity_bytes: u64) -> Result<(), DatastoreError> {
        let bitmap_bytes = bitmap_len(capacity_bytes).next_multiple_of(GRAIN_BYTES);
        let data_offset = HEADER_BYTES + bitmap_bytes;
        let mut header = vec![0u8; to_usize(HEADER_BYTES)];
        header[0..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&u32::try_from(GRAIN_BYTES).expect("4096").to_le_bytes());
        header[16..24].copy_from_slice(&capacity_bytes.to_le_bytes());
        header[24..32].copy_from_slice(&HEADER_BYTES.to_le_bytes());
        header[32..40].copy_from_slice(&data_offset.to_le_bytes());
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(DatastoreError::io("create", path))?;
        f.write_all_at(&header, 0)
            .map_err(DatastoreError::io("write", path))?;
        f.set_len(data_offset + capacity_bytes)
            .map_err(DatastoreError::io("truncate", path))?;
        f.sync_all().map_err(DatastoreError::io("fsync", path))
    }

    /// Opens a delta file and loads its bitmap.
    pub fn open(path: &Path, writable: bool) -> Result<Self, DatastoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(DatastoreError::io("open", path))?;
        let bad = |reason: &str| DatastoreError::Delta {
            path: path.to_owned(),
            reason: reason.into(),
        };
        let mut header = [0u8; 40];
        file.read_exact_at(&mut header, 0)
            .map_err(|_| bad("short header"))?;
        let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"));
        if &header[0..8] != MAGIC {
            return Err(bad("bad magic (not a lab delta file)"));
        }
        if u32_at(8) != VERSION {
            return Err(bad("unsupported version"));
        }
        if u64::from(u32_at(12)) != GRAIN_BYTES {
            return Err(bad("unsupported grain size"));
        }
        let capacity_bytes = u64_at(16);
        let bitmap_offset = u64_at(24);
        let data_offset = u64_at(32);
        let len = bitmap_len(capacity_bytes);
        if bitmap_offset != HEADER_BYTES || data_offset < bitmap_offset + len {
            return Err(bad("inconsistent header offsets"));
        }
        let mut bitmap = vec![0u8; to_usize(len)];
        file.read_exact_at(&mut bitmap, bitmap_offset)
            .map_err(|_| bad("short bitmap"))?;
        Ok(Self {
            file,
            path: path.to_owned(),
            capacity_bytes,
            data_offset,
            bitmap,
        })
    }

    /// Capacity recorded in the header.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Number of grains.
    pub fn grains(&self) -> u64 {
        self.capacity_bytes.div_ceil(GRAIN_BYTES)
    }

    /// Whether grain `g` has been written.
    pub fn is_allocated(&self, g: u64) -> bool {
        let byte = self.bitmap.get(to_usize(g / 8)).copied().unwrap_or(0);
        byte & (1 << (g % 8)) != 0
    }

    /// Reads data bytes at virtual `offset` (the caller checks allocation).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DatastoreError> {
        self.file
            .read_exact_at(buf, self.data_offset + offset)
            .map_err(DatastoreError::io("read", &self.path))
    }

    /// Writes whole grains starting at grain-aligned `offset` (the last one may be cut
    /// short at capacity), then marks them allocated. The data reaches the file before
    /// the bitmap bit does.
    pub fn write_grains(&mut self, offset: u64, data: &[u8]) -> Result<(), DatastoreError> {
        debug_assert_eq!(offset % GRAIN_BYTES, 0);
        self.file
            .write_all_at(data, self.data_offset + offset)
            .map_err(DatastoreError::io("write", &self.path))?;
        let first = offset / GRAIN_BYTES;
        let last = (offset + data.len() as u64 - 1) / GRAIN_BYTES;
        for g in first..=last {
            self.bitmap[to_usize(g / 8)] |= 1 << (g % 8);
        }
        let (b0, b1) = (to_usize(first / 8), to_usize(last / 8));
        self.file
            .write_all_at(&self.bitmap[b0..=b1], HEADER_BYTES + first / 8)
            .map_err(DatastoreError::io("write", &self.path))
    }

    /// Overwrites bytes inside grains that are already allocated.
    pub fn write_in_place(&self, offset: u64, data: &[u8]) -> Result<(), DatastoreError> {
        self.file
            .write_all_at(data, self.data_offset + offset)
            .map_err(DatastoreError::io("write", &self.path))
    }

    /// fsyncs the delta file.
    pub fn sync(&self) -> Result<(), DatastoreError> {
        self.file
            .sync_data()
            .map_err(DatastoreError::io("fsync", &self.path))
    }

    /// Runs of allocated grains as `(first_grain, grain_count)`.
    pub fn allocated_runs(&self) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut g = 0;
        let n = self.grains();
        while g < n {
            if self.bitmap[to_usize(g / 8)] == 0 && g % 8 == 0 {
                g += 8;
                continue;
            }
            if self.is_allocated(g) {
                let start = g;
                while g < n && self.is_allocated(g) {
                    g += 1;
                }
                runs.push((start, g - start));
            } else {
                g += 1;
            }
        }
        runs
    }

    /// The file, for locking.
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grains_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d-delta.vmdk");
        DeltaFile::create(&p, 1024 * 1024 + 512).unwrap();
        let mut d = DeltaFile::open(&p, true).unwrap();
        assert_eq!(d.grains(), 257);
        assert!(d.allocated_runs().is_empty());
        d.write_grains(8192, &[7u8; 8192]).unwrap();
        d.write_grains(256 * 4096, &[9u8; 512]).unwrap();
        let d = DeltaFile::open(&p, false).unwrap();
        assert_eq!(d.allocated_runs(), vec![(2, 2), (256, 1)]);
        let mut b = [0u8; 512];
        d.read(256 * 4096, &mut b).unwrap();
        assert_eq!(b, [9u8; 512]);
    }

    #[test]
    fn rejects_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, vec![1u8; 8192]).unwrap();
        assert!(matches!(
            DeltaFile::open(&p, false),
            Err(DatastoreError::Delta { .. })
        ));
    }
}
