//! Fixed index: one file per disk per restore point (`indexes/<point>/<disk key>.fidx`).
//!
//! ```text
//! offset size field
//!      0    8 magic "VFIDX\0\0\x01"
//!      8    4 format version (1), little endian
//!     12    4 chunk size in bytes, little endian
//!     16    8 disk size in bytes, little endian
//!     24    8 slot count, little endian
//!     32   32 BLAKE3 of the slots
//!     64  32n slots: chunk digests; all zeros = a chunk of zeros (hole), not stored
//! ```
//!
//! Slot `i` covers bytes `[i × chunk size, min((i+1) × chunk size, disk size))`. Written to a
//! temp file, fsynced, renamed; never modified. An incremental starts from its parent's
//! slots, so every index describes a full image.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::ids::ChunkDigest;
use crate::repo::durable;

const MAGIC: &[u8; 8] = b"VFIDX\0\0\x01";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;

/// Errors reading or writing an index file; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum FixedIndexError {
    /// I/O on the index file failed.
    #[error("index {path}")]
    Io {
        /// The index file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not a valid index.
    #[error("index {path} corrupt: {reason}")]
    Corrupt {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// An in-memory fixed index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIndex {
    chunk_size_bytes: u32,
    disk_size_bytes: u64,
    slots: Vec<ChunkDigest>,
}

impl FixedIndex {
    /// An index of `disk_size_bytes` with every slot a hole.
    #[must_use]
    pub fn new_zero(chunk_size_bytes: u32, disk_size_bytes: u64) -> Self {
        let count = disk_size_bytes.div_ceil(u64::from(chunk_size_bytes));
        let count = usize::try_from(count).expect("slot count fits in memory");
        Self {
            chunk_size_bytes,
            disk_size_bytes,
            slots: vec![ChunkDigest::ZERO; count],
        }
    }

    /// A copy of `parent` resized to `disk_size_bytes` (new slots are holes).
    #[must_use]
    pub fn derive(parent: &Self, disk_size_bytes: u64) -> Self {
        let mut index = Self::new_zero(parent.chunk_size_bytes, disk_size_bytes);
        let n = index.slots.len().min(parent.slots.len());
        index.slots[..n].copy_from_slice(&parent.slots[..n]);
        // A shrunk disk's last slot is shorter now: the old digest covers more bytes.
        if disk_size_bytes < parent.disk_size_bytes && n > 0 {
            let last_len = index.slot_len(n - 1);
            if last_len != parent.slot_len(n - 1) {
                index.slots[n - 1] = ChunkDigest::ZERO;
            }
        }
        index
    }

    /// Chunk size in bytes.
    #[must_use]
    pub fn chunk_size_bytes(&self) -> u32 {
        self.chunk_size_bytes
    }

    /// Disk size in bytes.
    #[must_use]
    pub fn disk_size_bytes(&self) -> u64 {
        self.disk_size_bytes
    }

    /// The slots.
    #[must_use]
    pub fn slots(&self) -> &[ChunkDigest] {
        &self.slots
    }

    /// Set slot `i`.
    pub fn set(&mut self, i: usize, digest: ChunkDigest) {
        self.slots[i] = digest;
    }

    /// Byte offset of slot `i`.
    #[must_use]
    pub fn slot_offset(&self, i: usize) -> u64 {
        u64::try_from(i).expect("usize fits in u64") * u64::from(self.chunk_size_bytes)
    }

    /// Length in bytes covered by slot `i` (shorter for the last slot).
    #[must_use]
    pub fn slot_len(&self, i: usize) -> u64 {
        let start = self.slot_offset(i);
        (self.disk_size_bytes - start).min(u64::from(self.chunk_size_bytes))
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.slots.len() * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.chunk_size_bytes.to_le_bytes());
        out.extend_from_slice(&self.disk_size_bytes.to_le_bytes());
        out.extend_from_slice(&(self.slots.len() as u64).to_le_bytes());
        out.extend_from_slice(&[0; 32]);
        for slot in &self.slots {
            out.extend_from_slice(&slot.0);
        }
        let checksum = blake3::hash(&out[HEADER_LEN..]);
        out[32..64].copy_from_slice(checksum.as_bytes());
        out
    }

    /// Write the index to `path`: temp file, fsync, rename, fsync of the directory.
    ///
    /// # Errors
    /// [`FixedIndexError::Io`] naming the file.
    pub fn write(&self, path: &Path) -> Result<(), FixedIndexError> {
        durable::write_file(path, &self.encode())
            .map_err(|(path, source)| FixedIndexError::Io { path, source })
    }

    /// [`FixedIndex::read`], then check the header against the catalog: the repository's
    /// chunk size and the disk's size. The checksum covers only the slots, so this is what
    /// finds a damaged header (a restore of the wrong length, an incremental writing at
    /// the wrong offsets).
    ///
    /// # Errors
    /// As [`FixedIndex::read`]; [`FixedIndexError::Corrupt`] for a header that disagrees.
    pub fn read_expecting(
        path: &Path,
        chunk_size_bytes: u32,
        disk_size_bytes: u64,
    ) -> Result<Self, FixedIndexError> {
        let index = Self::read(path)?;
        if index.chunk_size_bytes != chunk_size_bytes || index.disk_size_bytes != disk_size_bytes {
            return Err(FixedIndexError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "header says chunk size {} and disk size {}, the catalog {chunk_size_bytes} \
                     and {disk_size_bytes}",
                    index.chunk_size_bytes, index.disk_size_bytes
                ),
            });
        }
        Ok(index)
    }

    /// Read and check an index file.
    ///
    /// # Errors
    /// [`FixedIndexError::Io`] or [`FixedIndexError::Corrupt`] naming the file.
    pub fn read(path: &Path) -> Result<Self, FixedIndexError> {
        let mut buf = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(|source| FixedIndexError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let corrupt = |reason: String| FixedIndexError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        if buf.len() < HEADER_LEN || &buf[0..8] != MAGIC {
            return Err(corrupt("not an index file (bad magic or too short)".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(corrupt(format!(
                "version {version}, this agent reads {VERSION}"
            )));
        }
        let chunk_size_bytes = u32_at(12);
        let disk_size_bytes = u64_at(16);
        let count = u64_at(24);
        if chunk_size_bytes == 0 || count != disk_size_bytes.div_ceil(u64::from(chunk_size_bytes)) {
            return Err(corrupt(format!(
                "{count} slots do not match disk size {disk_size_bytes} / chunk size {chunk_size_bytes}"
            )));
        }
        let body = &buf[HEADER_LEN..];
        if u64::try_from(body.len()).ok() != count.checked_mul(32) {
            return Err(corrupt(format!(
                "{} slot bytes for {count} slots",
                body.len()
            )));
        }
        if blake3::hash(body).as_bytes() != &buf[32..64] {
            return Err(corrupt("checksum mismatch".into()));
        }
        let slots = body
            .chunks_exact(32)
            .map(|s| ChunkDigest(s.try_into().expect("32-byte slot")))
            .collect();
        Ok(Self {
            chunk_size_bytes,
            disk_size_bytes,
            slots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn write_read_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p/2000.fidx");
        let mut idx = FixedIndex::new_zero(1024, 5000);
        assert_eq!(idx.slots().len(), 5);
        assert_eq!(idx.slot_len(4), 904);
        idx.set(1, ChunkDigest::of(b"x"));
        idx.write(&path).unwrap();
        assert_eq!(FixedIndex::read(&path).unwrap(), idx);

        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_LEN + 40] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let err = FixedIndex::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("2000.fidx") && err.contains("checksum"),
            "{err}"
        );
    }

    #[test]
    fn derive_resizes() {
        let mut parent = FixedIndex::new_zero(1024, 4096);
        parent.set(3, ChunkDigest::of(b"a"));
        let grown = FixedIndex::derive(&parent, 8192);
        assert_eq!(grown.slots().len(), 8);
        assert_eq!(grown.slots()[3], ChunkDigest::of(b"a"));
        let shrunk = FixedIndex::derive(&parent, 3500);
        assert_eq!(shrunk.slots().len(), 4);
        assert!(shrunk.slots()[3].is_zero());
    }
}
