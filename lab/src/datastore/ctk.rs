//! Change tracking: the `-ctk.vmdk` file of one disk file, and [`ChangeId`].
//!
//! Format (ours): a 512-byte header — magic `VADPLCTK`, version `u32`, block size `u32`
//! (64 KiB), capacity `u64`, block count `u64`, change UUID (16 bytes), current sequence
//! `u64`, all little-endian — then one `u64` sequence per block. A write stamps its
//! blocks with the current sequence; "changed since `<uuid>/<n>`" is every block whose
//! stamp is greater than `n`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::DatastoreError;
use super::delta::to_usize;
use super::descriptor::write_atomic;

/// Change-tracking block size, in bytes.
pub const CTK_BLOCK_BYTES: u64 = 64 * 1024;
const MAGIC: &[u8; 8] = b"VADPLCTK";
const VERSION: u32 = 1;
const HEADER_BYTES: u64 = 512;

/// A vSphere changeId: `"52 2d 7b 8f ac 61 51 cc-77 4c 7b ec 91 50 bb 7b/3"` (change
/// tracking UUID, `/`, sequence) or `"*"` (everything in use).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChangeId(String);

impl ChangeId {
    /// The `"*"` changeId: all allocated areas.
    #[must_use]
    pub fn all() -> Self {
        Self("*".to_owned())
    }

    /// Wraps a string without checking it (checking happens when it is used).
    #[must_use]
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// Builds `"<uuid>/<seq>"` in VMware's spelling.
    #[must_use]
    pub fn from_parts(uuid: Uuid, seq: u64) -> Self {
        let b = uuid.as_bytes();
        let hex = |s: &[u8]| {
            s.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        Self(format!("{}-{}/{seq}", hex(&b[..8]), hex(&b[8..])))
    }

    /// Whether this is `"*"`.
    #[must_use]
    pub fn is_all(&self) -> bool {
        self.0 == "*"
    }

    /// Splits into UUID and sequence.
    ///
    /// # Errors
    /// [`DatastoreError::InvalidChangeId`] when it is `"*"` or malformed.
    pub fn parts(&self) -> Result<(Uuid, u64), DatastoreError> {
        let bad = || DatastoreError::InvalidChangeId {
            change_id: self.0.clone(),
        };
        let (u, seq) = self.0.rsplit_once('/').ok_or_else(bad)?;
        let seq = seq.trim().parse::<u64>().map_err(|_| bad())?;
        let hex: String = u.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        let uuid = Uuid::try_parse(&hex).map_err(|_| bad())?;
        Ok((uuid, seq))
    }

    /// The text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An open ctk file with its block stamps in memory.
#[derive(Debug)]
pub(crate) struct CtkFile {
    file: File,
    path: PathBuf,
    uuid: Uuid,
    current_seq: u64,
    capacity_bytes: u64,
    stamps: Vec<u64>,
}

fn encode(uuid: Uuid, seq: u64, capacity_bytes: u64, stamps: &[u64]) -> Vec<u8> {
    let mut out = vec![0u8; to_usize(HEADER_BYTES)];
    out[0..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(
        &u32::try_from(CTK_BLOCK_BYTES)
            .expect("64 KiB")
            .to_le_bytes(),
    );
    out[16..24].copy_from_slice(&capacity_bytes.to_le_bytes());
    out[24..32].copy_from_slice(&(stamps.len() as u64).to_le_bytes());
    out[32..48].copy_from_slice(uuid.as_bytes());
    out[48..56].copy_from_slice(&seq.to_le_bytes());
    out.reserve(stamps.len() * 8);
    for s in stamps {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

impl CtkFile {
    /// Writes a fresh ctk (new UUID, sequence 1, nothing changed) atomically.
    pub fn create(path: &Path, capacity_bytes: u64) -> Result<(), DatastoreError> {
        let blocks = to_usize(capacity_bytes.div_ceil(CTK_BLOCK_BYTES));
        write_atomic(
            path,
            &encode(Uuid::new_v4(), 1, capacity_bytes, &vec![0; blocks]),
        )
    }

    /// Opens and loads a ctk file.
    pub fn open(path: &Path, writable: bool) -> Result<Self, DatastoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(DatastoreError::io("open", path))?;
        let bad = |reason: &str| DatastoreError::Ctk {
            path: path.to_owned(),
            reason: reason.into(),
        };
        let len = file
            .metadata()
            .map_err(DatastoreError::io("stat", path))?
            .len();
        let mut buf = vec![0u8; to_usize(len)];
        file.read_exact_at(&mut buf, 0)
            .map_err(DatastoreError::io("read", path))?;
        if buf.len() < to_usize(HEADER_BYTES) || &buf[0..8] != MAGIC {
            return Err(bad("bad magic (not a lab ctk file)"));
        }
        let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().expect("8 bytes"));
        if u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes")) != VERSION {
            return Err(bad("unsupported version"));
        }
        if u64::from(u32::from_le_bytes(buf[12..16].try_into().expect("4 bytes")))
            != CTK_BLOCK_BYTES
        {
            return Err(bad("unsupported block size"));
        }
        let capacity_bytes = u64_at(16);
        let blocks = u64_at(24);
        if blocks != capacity_bytes.div_ceil(CTK_BLOCK_BYTES)
            || buf.len() as u64 != HEADER_BYTES + blocks * 8
        {
            return Err(bad("block count does not match capacity or file size"));
        }
        let uuid = Uuid::from_slice(&buf[32..48]).map_err(|_| bad("bad uuid"))?;
        let current_seq = u64_at(48);
        let stamps = buf[to_usize(HEADER_BYTES)..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(Self {
            file,
            path: path.to_owned(),
            uuid,
            current_seq,
            capacity_bytes,
            stamps,
        })
    }

    /// The changeId naming the current state.
    pub fn change_id(&self) -> ChangeId {
        ChangeId::from_parts(self.uuid, self.current_seq)
    }

    /// Stamps the blocks touched by `[offset, offset+len)` with the current sequence.
    pub fn mark(&mut self, offset: u64, len: u64) -> Result<(), DatastoreError> {
        if len == 0 {
            return Ok(());
        }
        let first = offset / CTK_BLOCK_BYTES;
        let last = ((offset + len - 1) / CTK_BLOCK_BYTES).min(self.stamps.len() as u64 - 1);
        let range = to_usize(first)..=to_usize(last);
        if self.stamps[range.clone()]
            .iter()
            .all(|s| *s == self.current_seq)
        {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(range.clone().count() * 8);
        for s in &mut self.stamps[range] {
            *s = self.current_seq;
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        self.file
            .write_all_at(&bytes, HEADER_BYTES + first * 8)
            .map_err(DatastoreError::io("write", &self.path))
    }

    /// fsyncs the file.
    pub fn sync(&self) -> Result<(), DatastoreError> {
        self.file
            .sync_data()
            .map_err(DatastoreError::io("fsync", &self.path))
    }

    /// Writes a copy of this ctk to `dest` with the same UUID and sequence `seq`.
    pub fn copy_to(&self, dest: &Path, seq: u64) -> Result<(), DatastoreError> {
        write_atomic(
            dest,
            &encode(self.uuid, seq, self.capacity_bytes, &self.stamps),
        )
    }

    /// The current sequence.
    pub fn current_seq(&self) -> u64 {
        self.current_seq
    }

    /// Extents (bytes) changed after `change_id`, coalesced. `disk` is used in errors.
    pub fn changed_since(
        &self,
        change_id: &ChangeId,
        disk: &str,
    ) -> Result<Vec<(u64, u64)>, DatastoreError> {
        let (uuid, seq) = change_id.parts()?;
        if uuid != self.uuid {
            return Err(DatastoreError::ChangeIdMismatch {
                disk: disk.to_owned(),
                change_id: change_id.to_string(),
                current: self.change_id().to_string(),
            });
        }
        if seq > self.current_seq {
            return Err(DatastoreError::ChangeIdFromFuture {
                disk: disk.to_owned(),
                change_id: change_id.to_string(),
                current: self.change_id().to_string(),
            });
        }
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, s) in self.stamps.iter().enumerate() {
            if *s > seq {
                let start = i as u64 * CTK_BLOCK_BYTES;
                let len = CTK_BLOCK_BYTES.min(self.capacity_bytes - start);
                match out.last_mut() {
                    Some((o, l)) if *o + *l == start => *l += len,
                    _ => out.push((start, len)),
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_id_round_trip() {
        let u = Uuid::new_v4();
        let c = ChangeId::from_parts(u, 42);
        assert_eq!(c.as_str().len(), 47 + 3);
        assert_eq!(c.parts().unwrap(), (u, 42));
        let vmware = ChangeId::new("52 2d 7b 8f ac 61 51 cc-77 4c 7b ec 91 50 bb 7b/1");
        assert_eq!(vmware.parts().unwrap().1, 1);
        for bad in ["*", "abc/1", "52 2d/x", ""] {
            assert!(ChangeId::new(bad).parts().is_err(), "{bad}");
        }
    }

    #[test]
    fn marks_and_queries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d-ctk.vmdk");
        let cap = 10 * CTK_BLOCK_BYTES + 512;
        CtkFile::create(&p, cap).unwrap();
        let mut c = CtkFile::open(&p, true).unwrap();
        let base = c.change_id();
        c.mark(CTK_BLOCK_BYTES - 512, 1024).unwrap();
        c.mark(10 * CTK_BLOCK_BYTES, 512).unwrap();
        let c = CtkFile::open(&p, false).unwrap();
        assert_eq!(
            c.changed_since(&ChangeId::from_parts(c.uuid, 0), "d")
                .unwrap(),
            vec![(0, 2 * CTK_BLOCK_BYTES), (10 * CTK_BLOCK_BYTES, 512)]
        );
        assert!(c.changed_since(&base, "d").unwrap().is_empty());
        let future = ChangeId::from_parts(c.uuid, 2);
        assert!(matches!(
            c.changed_since(&future, "d"),
            Err(DatastoreError::ChangeIdFromFuture { .. })
        ));
        let foreign = ChangeId::from_parts(Uuid::new_v4(), 1);
        assert!(matches!(
            c.changed_since(&foreign, "d"),
            Err(DatastoreError::ChangeIdMismatch { .. })
        ));
    }
}
