//! [`DiskChain`]: one open disk, i.e. its file plus every parent down to the base flat
//! extent, with the read/write/allocation logic of the redo-log chain.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::SeekFrom;

use super::ctk::{ChangeId, CtkFile};
use super::delta::{DeltaFile, GRAIN_BYTES, to_usize};
use super::descriptor::Descriptor;
use super::{DatastoreError, DatastorePath};

/// Sector size: every offset and length of a disk access is a multiple of it.
pub const SECTOR_BYTES: u64 = 512;
/// Longest chain we follow (ESXi allows 32 snapshots; this also catches loops).
const MAX_LINKS: usize = 64;

/// How a disk is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Reads only; never locks, so a frozen disk can be read while its child is written.
    ReadOnly,
    /// Reads and writes; the disk must have no child, and the handle takes an exclusive
    /// advisory lock on its data file (a second writer gets [`DatastoreError::Busy`]).
    ReadWrite,
}

#[derive(Debug)]
pub(crate) enum LinkData {
    Flat {
        file: File,
        /// The same file opened with `O_DIRECT`, after [`DiskChain::enable_direct_writes`]
        /// (where the file system allows): block-aligned writes from aligned buffers go
        /// straight to the device, as an ESXi host writes a VMFS disk without a host page
        /// cache.
        direct: Option<File>,
        path: PathBuf,
        thin: bool,
    },
    Delta(DeltaFile),
}

/// One disk file of a chain: descriptor, data extent, optional ctk.
#[derive(Debug)]
pub(crate) struct Link {
    pub path: DatastorePath,
    pub host: PathBuf,
    pub desc: Descriptor,
    pub data: LinkData,
    pub ctk: Option<CtkFile>,
}

/// The host path of a file named in a descriptor (same directory, plain name only).
pub(crate) fn named_file(desc_host: &Path, name: &str) -> Result<PathBuf, DatastoreError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(DatastoreError::Descriptor {
            path: desc_host.to_owned(),
            line: 0,
            reason: format!("file name {name:?} must be a plain name in the same directory"),
        });
    }
    Ok(desc_host.with_file_name(name))
}

impl Link {
    pub fn load(root: &Path, path: &DatastorePath, writable: bool) -> Result<Self, DatastoreError> {
        let host = path.resolve(root);
        let desc = Descriptor::load(&host)?;
        let bad = |reason: String| DatastoreError::Descriptor {
            path: host.clone(),
            line: 0,
            reason,
        };
        let [extent] = desc.extents.as_slice() else {
            return Err(bad("only single-extent disks are supported".into()));
        };
        let data_path = named_file(&host, &extent.file)?;
        let data = match extent.kind.as_str() {
            "VMFS" | "FLAT" if extent.offset.unwrap_or(0) == 0 => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(writable)
                    .open(&data_path)
                    .map_err(DatastoreError::io("open", &data_path))?;
                let thin = desc.ddb_value("thinProvisioned") == Some("1");
                LinkData::Flat {
                    file,
                    direct: None,
                    path: data_path,
                    thin,
                }
            }
            "VMFSSPARSE" => {
                let d = DeltaFile::open(&data_path, writable)?;
                if d.capacity_bytes() != extent.sectors * SECTOR_BYTES {
                    return Err(bad("delta capacity differs from the extent line".into()));
                }
                LinkData::Delta(d)
            }
            other => return Err(bad(format!("unsupported extent type {other}"))),
        };
        let ctk = match desc.change_track_path() {
            Some(name) => match CtkFile::open(&named_file(&host, name)?, writable) {
                Ok(c) => Some(c),
                // ESXi treats a missing ctk as "tracking must be reset": queries fail.
                Err(DatastoreError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok(Self {
            path: path.clone(),
            host,
            desc,
            data,
            ctk,
        })
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.desc.extents[0].sectors * SECTOR_BYTES
    }

    pub fn data_file(&self) -> &File {
        match &self.data {
            LinkData::Flat { file, .. } => file,
            LinkData::Delta(d) => d.file(),
        }
    }

    /// Takes the exclusive writer lock on the data file.
    pub fn lock_exclusive(&self) -> Result<(), DatastoreError> {
        match self.data_file().try_lock() {
            Ok(()) => Ok(()),
            Err(TryLockError::WouldBlock) => Err(DatastoreError::Busy {
                disk: self.path.to_string(),
            }),
            Err(TryLockError::Error(e)) => Err(DatastoreError::io("lock", &self.host)(e)),
        }
    }
}

/// Reads `buf.len()` bytes at `offset`, zero-filling past end of file.
fn read_full_at(
    file: &File,
    path: &Path,
    mut buf: &mut [u8],
    mut offset: u64,
) -> Result<(), DatastoreError> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                buf.fill(0);
                return Ok(());
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DatastoreError::io("read", path)(e)),
        }
    }
    Ok(())
}

/// Data extents of a sparse file inside `[offset, end)`, via SEEK_DATA/SEEK_HOLE.
fn sparse_extents(
    file: &File,
    path: &Path,
    offset: u64,
    end: u64,
) -> Result<Vec<(u64, u64)>, DatastoreError> {
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        let data = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(DatastoreError::io("seek", path)(e.into())),
        };
        if data >= end {
            break;
        }
        let hole = match rustix::fs::seek(file, SeekFrom::Hole(data)) {
            Ok(h) => h,
            Err(rustix::io::Errno::NXIO) => end,
            Err(e) => return Err(DatastoreError::io("seek", path)(e.into())),
        };
        out.push((data, hole.min(end) - data));
        pos = hole;
    }
    Ok(out)
}

/// Sorts and merges overlapping or touching extents.
pub(crate) fn coalesce(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (o, l) in v {
        match out.last_mut() {
            Some((po, pl)) if *po + *pl >= o => *pl = (*pl).max(o + l - *po),
            _ => out.push((o, l)),
        }
    }
    out
}

/// An open disk: the named disk file and its parents, base first.
///
/// Reads take `&self` and may run concurrently from several threads; writes take
/// `&mut self`. Reads cost one `pread` per run of grains that come from the same link
/// (a single `pread` on a disk without snapshots) and allocate nothing.
#[derive(Debug)]
pub struct DiskChain {
    path: DatastorePath,
    links: Vec<Link>,
    mode: OpenMode,
    capacity_bytes: u64,
}

impl DiskChain {
    /// Opens a disk file and its parent chain.
    ///
    /// # Errors
    /// [`DatastoreError::NotFound`] for a missing file; `Descriptor`, `Delta`, `Ctk` or
    /// `Chain` for broken files (wrong `parentCID`, capacity mismatch, loops);
    /// [`DatastoreError::Frozen`] when opening for writing a disk that has a child;
    /// [`DatastoreError::Busy`] when another writer holds it.
    pub fn open(root: &Path, path: &DatastorePath, mode: OpenMode) -> Result<Self, DatastoreError> {
        let writable = mode == OpenMode::ReadWrite;
        if writable
            && let Some(child) = super::snapshot::children_of(root, path)?.into_iter().next()
        {
            return Err(DatastoreError::Frozen {
                disk: path.to_string(),
                child: child.to_string(),
            });
        }
        let chain_err = |reason: String| DatastoreError::Chain {
            disk: path.to_string(),
            reason,
        };
        let mut links: Vec<Link> = Vec::new();
        let mut cur = path.clone();
        loop {
            let link = Link::load(root, &cur, writable && links.is_empty())?;
            if let Some(child) = links.last() {
                if child.desc.parent_cid() != link.desc.cid() {
                    return Err(chain_err(format!(
                        "parentCID of {} does not match CID of {} (parent modified after the child was created)",
                        child.path, link.path
                    )));
                }
                if child.capacity_bytes() != link.capacity_bytes() {
                    return Err(chain_err(format!(
                        "{} and {} differ in capacity",
                        child.path, link.path
                    )));
                }
            }
            let parent = link.desc.parent_file_name_hint().map(str::to_owned);
            let is_delta = matches!(link.data, LinkData::Delta(_));
            links.push(link);
            match parent {
                None if is_delta => {
                    return Err(chain_err(format!(
                        "redo log {cur} has no parentFileNameHint"
                    )));
                }
                None => break,
                Some(_) if !is_delta => {
                    return Err(chain_err(format!("flat disk {cur} names a parent")));
                }
                Some(hint) => cur = cur.sibling(&hint)?,
            }
            if links.len() > MAX_LINKS {
                return Err(chain_err(format!("more than {MAX_LINKS} links (loop?)")));
            }
        }
        links.reverse();
        let capacity_bytes = links[0].capacity_bytes();
        if writable {
            links.last().expect("chain has a link").lock_exclusive()?;
        }
        Ok(Self {
            path: path.clone(),
            links,
            mode,
            capacity_bytes,
        })
    }

    /// The disk file this chain was opened by.
    #[must_use]
    pub fn path(&self) -> &DatastorePath {
        &self.path
    }

    /// Capacity in bytes (a multiple of 512).
    #[must_use]
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Number of files in the chain (1 for a disk without snapshots).
    #[must_use]
    pub fn num_links(&self) -> usize {
        self.links.len()
    }

    /// The chain's disk files, the opened one first, its base last.
    #[must_use]
    pub fn link_paths(&self) -> Vec<DatastorePath> {
        self.links.iter().rev().map(|l| l.path.clone()).collect()
    }

    /// The opened disk file's `parentFileNameHint` (`None` for a base disk).
    #[must_use]
    pub fn parent_file_name_hint(&self) -> Option<&str> {
        self.top().desc.parent_file_name_hint()
    }

    /// The disk's `ddb.uuid` as written (`"60 00 C2 ..."`).
    #[must_use]
    pub fn uuid(&self) -> Option<&str> {
        self.top().desc.ddb_value("uuid")
    }

    /// The current changeId of the opened disk file, if change tracking is on.
    #[must_use]
    pub fn change_id(&self) -> Option<ChangeId> {
        self.top().ctk.as_ref().map(CtkFile::change_id)
    }

    fn top(&self) -> &Link {
        self.links.last().expect("chain has at least one link")
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), DatastoreError> {
        if !offset.is_multiple_of(SECTOR_BYTES) || !len.is_multiple_of(SECTOR_BYTES) {
            return Err(DatastoreError::Unaligned {
                disk: self.path.to_string(),
                offset,
                len,
            });
        }
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.capacity_bytes)
        {
            return Err(DatastoreError::OutOfRange {
                disk: self.path.to_string(),
                offset,
                len,
                capacity: self.capacity_bytes,
            });
        }
        Ok(())
    }

    /// Write block-aligned data from aligned buffers to a flat top link with `O_DIRECT`,
    /// as VDDK's writes reach an ESXi datastore without a host page cache (vddk-sim turns
    /// this on for its read-write opens). The lab's own guest writes stay buffered, so
    /// what a test or bench writes as the guest is read back from memory as on a raw image.
    /// A no-op for read-only chains, delta tops, or file systems that refuse `O_DIRECT`.
    pub fn enable_direct_writes(&mut self) {
        if self.mode != OpenMode::ReadWrite {
            return;
        }
        let Some(top) = self.links.last_mut() else {
            return;
        };
        if let LinkData::Flat { direct, path, .. } = &mut top.data {
            *direct = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&*path)
                .ok();
        }
    }

    /// Reads `buf.len()` bytes at byte `offset`.
    ///
    /// # Errors
    /// [`DatastoreError::Unaligned`], [`DatastoreError::OutOfRange`], or I/O errors.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DatastoreError> {
        self.check(offset, buf.len() as u64)?;
        self.read_upto(self.links.len(), offset, buf)
    }

    /// The index of the topmost link among the first `n` that holds grain `g`.
    fn source(&self, n: usize, g: u64) -> usize {
        (1..n)
            .rev()
            .find(|&k| matches!(&self.links[k].data, LinkData::Delta(d) if d.is_allocated(g)))
            .unwrap_or(0)
    }

    /// Reads through the first `n` links only.
    fn read_upto(&self, n: usize, offset: u64, buf: &mut [u8]) -> Result<(), DatastoreError> {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let (src, run_end) = if n == 1 {
                (0, end)
            } else {
                let g = pos / GRAIN_BYTES;
                let src = self.source(n, g);
                let mut run_end = ((g + 1) * GRAIN_BYTES).min(end);
                while run_end < end && self.source(n, run_end / GRAIN_BYTES) == src {
                    run_end = (run_end + GRAIN_BYTES).min(end);
                }
                (src, run_end)
            };
            let part = &mut buf[to_usize(pos - offset)..to_usize(run_end - offset)];
            match &self.links[src].data {
                LinkData::Flat { file, path, .. } => read_full_at(file, path, part, pos)?,
                LinkData::Delta(d) => d.read(pos, part)?,
            }
            pos = run_end;
        }
        Ok(())
    }

    /// Writes `data` at byte `offset` into the opened (top) disk file and stamps the
    /// touched blocks in its ctk. Partial grains of a redo log are completed from the
    /// parents first (copy-on-write).
    ///
    /// # Errors
    /// [`DatastoreError::ReadOnly`], [`DatastoreError::Unaligned`],
    /// [`DatastoreError::OutOfRange`], or I/O errors.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DatastoreError> {
        if self.mode != OpenMode::ReadWrite {
            return Err(DatastoreError::ReadOnly {
                disk: self.path.to_string(),
            });
        }
        let len = data.len() as u64;
        self.check(offset, len)?;
        let top = self.links.len() - 1;
        let end = offset + len;
        let cap = self.capacity_bytes;
        let mut pos = offset;
        while pos < end {
            let g = pos / GRAIN_BYTES;
            let (gs, ge) = (g * GRAIN_BYTES, ((g + 1) * GRAIN_BYTES).min(cap));
            let cow = match &self.links[top].data {
                LinkData::Flat {
                    file, direct, path, ..
                } => {
                    write_flat(file, direct.as_ref(), data, offset)
                        .map_err(DatastoreError::io("write", path))?;
                    break;
                }
                LinkData::Delta(d) => !(d.is_allocated(g) || pos == gs && end >= ge),
            };
            let grain = if cow {
                let mut buf = vec![0u8; to_usize(ge - gs)];
                self.read_upto(top, gs, &mut buf)?;
                let chunk_end = ge.min(end);
                buf[to_usize(pos - gs)..to_usize(chunk_end - gs)]
                    .copy_from_slice(&data[to_usize(pos - offset)..to_usize(chunk_end - offset)]);
                Some(buf)
            } else {
                None
            };
            let LinkData::Delta(d) = &mut self.links[top].data else {
                unreachable!("flat links are handled above");
            };
            if let Some(buf) = grain {
                d.write_grains(gs, &buf)?;
                pos = ge.min(end);
            } else if pos == gs && end >= ge {
                // A run of whole grains: one pwrite, then the bitmap.
                let mut run_end = ge;
                while run_end < end && (run_end + GRAIN_BYTES).min(cap) <= end {
                    run_end = (run_end + GRAIN_BYTES).min(cap);
                }
                d.write_grains(
                    pos,
                    &data[to_usize(pos - offset)..to_usize(run_end - offset)],
                )?;
                pos = run_end;
            } else {
                let chunk_end = ge.min(end);
                d.write_in_place(
                    pos,
                    &data[to_usize(pos - offset)..to_usize(chunk_end - offset)],
                )?;
                pos = chunk_end;
            }
        }
        if let Some(ctk) = self.links[top].ctk.as_mut() {
            ctk.mark(offset, len)?;
        }
        Ok(())
    }

    /// Makes every write so far durable (fsync of the data file and the ctk).
    ///
    /// # Errors
    /// I/O errors.
    pub fn flush(&self) -> Result<(), DatastoreError> {
        if self.mode == OpenMode::ReadOnly {
            return Ok(());
        }
        let top = self.top();
        match &top.data {
            LinkData::Flat { file, path, .. } => file
                .sync_data()
                .map_err(DatastoreError::io("fsync", path))?,
            LinkData::Delta(d) => d.sync()?,
        }
        top.ctk.as_ref().map_or(Ok(()), CtkFile::sync)
    }

    /// The areas in use in `[offset, offset+len)`, coalesced: the union over the chain of
    /// the base's data extents (SEEK_DATA/SEEK_HOLE; all of it for a thick disk) and the
    /// redo logs' allocated grains.
    ///
    /// # Errors
    /// [`DatastoreError::OutOfRange`] or I/O errors.
    pub fn allocated_extents(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64)>, DatastoreError> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.capacity_bytes)
        {
            return Err(DatastoreError::OutOfRange {
                disk: self.path.to_string(),
                offset,
                len,
                capacity: self.capacity_bytes,
            });
        }
        let end = offset + len;
        let mut all = Vec::new();
        for link in &self.links {
            match &link.data {
                LinkData::Flat { thin: false, .. } => all.push((offset, len)),
                LinkData::Flat { file, path, .. } => {
                    all.extend(sparse_extents(file, path, offset, end)?)
                }
                LinkData::Delta(d) => {
                    for (g, n) in d.allocated_runs() {
                        let s = (g * GRAIN_BYTES).max(offset);
                        let e = ((g + n) * GRAIN_BYTES).min(end).min(self.capacity_bytes);
                        if s < e {
                            all.push((s, e - s));
                        }
                    }
                }
            }
        }
        Ok(coalesce(all.into_iter().filter(|(_, l)| *l > 0).collect()))
    }

    /// The metadata keys (the descriptor's `ddb.*` keys without the prefix), in order.
    #[must_use]
    pub fn metadata_keys(&self) -> Vec<String> {
        self.top().desc.ddb.iter().map(|(k, _)| k.clone()).collect()
    }

    /// One metadata value.
    ///
    /// # Errors
    /// [`DatastoreError::MetadataKeyNotFound`].
    pub fn read_metadata(&self, key: &str) -> Result<String, DatastoreError> {
        self.top()
            .desc
            .ddb_value(key)
            .map(str::to_owned)
            .ok_or_else(|| DatastoreError::MetadataKeyNotFound {
                disk: self.path.to_string(),
                key: key.to_owned(),
            })
    }

    /// Sets one metadata value and persists the descriptor atomically.
    ///
    /// # Errors
    /// [`DatastoreError::ReadOnly`], [`DatastoreError::InvalidMetadata`] (key not
    /// `[A-Za-z0-9._-]+`, value with `"` or a line break), or I/O errors.
    pub fn write_metadata(&mut self, key: &str, value: &str) -> Result<(), DatastoreError> {
        if self.mode != OpenMode::ReadWrite {
            return Err(DatastoreError::ReadOnly {
                disk: self.path.to_string(),
            });
        }
        let invalid = |reason| DatastoreError::InvalidMetadata {
            key: key.to_owned(),
            value: value.to_owned(),
            reason,
        };
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid("key must be [A-Za-z0-9._-]+"));
        }
        if value.contains(['"', '\n', '\r', '\0']) {
            return Err(invalid("value must not contain quotes or line breaks"));
        }
        let top = self.links.last_mut().expect("chain has at least one link");
        let mut desc = top.desc.clone();
        desc.set_ddb(key, value);
        desc.store(&top.host)?;
        top.desc = desc;
        Ok(())
    }

    /// Consumes the chain into its links (for consolidation).
    pub(crate) fn into_links(self) -> Vec<Link> {
        self.links
    }
}

/// Removes a file, ignoring "not found".
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), DatastoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(DatastoreError::io("remove", path)(e))
        }
        _ => Ok(()),
    }
}

/// Write `data` at `offset` of a flat extent: through `direct` when offset, length and
/// buffer are block-aligned (falling back if the device wants more), else through `file`.
fn write_flat(file: &File, direct: Option<&File>, data: &[u8], offset: u64) -> io::Result<()> {
    const ALIGN: usize = 4096;
    let aligned = !data.is_empty()
        && offset.is_multiple_of(ALIGN as u64)
        && data.len().is_multiple_of(ALIGN)
        && data.as_ptr().align_offset(ALIGN) == 0;
    if let Some(direct) = direct.filter(|_| aligned) {
        match direct.write_all_at(data, offset) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            other => return other,
        }
    }
    file.write_all_at(data, offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{DiskOptions, create_child, create_disk};

    fn setup(cap: u64) -> (tempfile::TempDir, DatastorePath) {
        let dir = tempfile::tempdir().unwrap();
        let p = DatastorePath::parse("[ds1] vm/disk-0.vmdk").unwrap();
        create_disk(dir.path(), &p, cap, &DiskOptions::default()).unwrap();
        (dir, p)
    }

    #[test]
    fn alignment_and_range_errors() {
        let (dir, p) = setup(1 << 20);
        let mut d = DiskChain::open(dir.path(), &p, OpenMode::ReadWrite).unwrap();
        let mut b = vec![0u8; 512];
        assert!(matches!(
            d.read_at(100, &mut b),
            Err(DatastoreError::Unaligned { .. })
        ));
        assert!(matches!(
            d.write_at(0, &[0u8; 100]),
            Err(DatastoreError::Unaligned { .. })
        ));
        assert!(matches!(
            d.read_at(1 << 20, &mut b),
            Err(DatastoreError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.write_at(u64::MAX - 511, &b),
            Err(DatastoreError::OutOfRange { .. })
        ));
        let ro = DiskChain::open(dir.path(), &p, OpenMode::ReadOnly).unwrap();
        drop(d);
        let mut ro = ro;
        assert!(matches!(
            ro.write_at(0, &b),
            Err(DatastoreError::ReadOnly { .. })
        ));
        let _w = DiskChain::open(dir.path(), &p, OpenMode::ReadWrite).unwrap();
        assert!(matches!(
            DiskChain::open(dir.path(), &p, OpenMode::ReadWrite),
            Err(DatastoreError::Busy { .. })
        ));
    }

    #[test]
    fn snapshot_freezes_base_and_partial_grains_copy_on_write() {
        let cap = 2 << 20;
        let (dir, p) = setup(cap);
        let root = dir.path();
        let mut d = DiskChain::open(root, &p, OpenMode::ReadWrite).unwrap();
        d.write_at(0, &vec![1u8; 64 * 1024]).unwrap();
        drop(d);
        let c = create_child(root, &p).unwrap();
        assert_eq!(c.child.to_string(), "[ds1] vm/disk-0-000001.vmdk");
        assert!(matches!(
            DiskChain::open(root, &p, OpenMode::ReadWrite),
            Err(DatastoreError::Frozen { .. })
        ));
        let base = DiskChain::open(root, &p, OpenMode::ReadOnly).unwrap();
        let mut top = DiskChain::open(root, &c.child, OpenMode::ReadWrite).unwrap();
        assert_eq!(top.num_links(), 2);
        assert_eq!(top.parent_file_name_hint(), Some("disk-0.vmdk"));
        assert_eq!(top.uuid(), base.uuid());
        // Partial grain: sectors 1..2 of grain 0, and a write straddling grains 1/2.
        top.write_at(512, &[2u8; 512]).unwrap();
        top.write_at(4096 + 3584, &[3u8; 1024]).unwrap();
        // Whole grains past the old data, and the very last sector.
        top.write_at(1 << 20, &vec![4u8; 3 * 4096]).unwrap();
        top.write_at(cap - 512, &[5u8; 512]).unwrap();
        top.flush().unwrap();
        let mut got = vec![0u8; 16384];
        top.read_at(0, &mut got).unwrap();
        assert!(got[..512].iter().all(|&b| b == 1));
        assert!(got[512..1024].iter().all(|&b| b == 2));
        assert!(got[1024..7680].iter().all(|&b| b == 1));
        assert!(got[7680..8704].iter().all(|&b| b == 3));
        assert!(got[8704..].iter().all(|&b| b == 1));
        base.read_at(0, &mut got).unwrap();
        assert!(got.iter().all(|&b| b == 1), "base is frozen");
        let mut tail = [0u8; 512];
        top.read_at(cap - 512, &mut tail).unwrap();
        assert_eq!(tail, [5u8; 512]);
        base.read_at(cap - 512, &mut tail).unwrap();
        assert_eq!(tail, [0u8; 512]);
        // Allocation: the base's 64 KiB plus the redo log's grains.
        let ext = top.allocated_extents(0, cap).unwrap();
        assert_eq!(
            ext,
            vec![(0, 64 * 1024), (1 << 20, 3 * 4096), (cap - 4096, 4096)]
        );
        // Reopening from scratch sees the same thing.
        drop(top);
        let again = DiskChain::open(root, &c.child, OpenMode::ReadOnly).unwrap();
        again.read_at(0, &mut got).unwrap();
        assert!(got[512..1024].iter().all(|&b| b == 2));
    }

    #[test]
    fn broken_parent_cid_is_reported() {
        let (dir, p) = setup(1 << 20);
        let root = dir.path();
        let c = create_child(root, &p).unwrap();
        let host = p.resolve(root);
        let mut desc = Descriptor::load(&host).unwrap();
        desc.set_cid(0x0bad_0bad);
        desc.store(&host).unwrap();
        let e = DiskChain::open(root, &c.child, OpenMode::ReadOnly).unwrap_err();
        assert!(matches!(e, DatastoreError::Chain { .. }), "{e}");
    }

    #[test]
    fn metadata_round_trip() {
        let (dir, p) = setup(1 << 20);
        let mut d = DiskChain::open(dir.path(), &p, OpenMode::ReadWrite).unwrap();
        assert!(d.metadata_keys().contains(&"uuid".to_owned()));
        d.write_metadata("vadp.backup", "job 7").unwrap();
        assert!(matches!(
            d.write_metadata("bad key", "x"),
            Err(DatastoreError::InvalidMetadata { .. })
        ));
        assert!(matches!(
            d.read_metadata("nope"),
            Err(DatastoreError::MetadataKeyNotFound { .. })
        ));
        drop(d);
        let d = DiskChain::open(dir.path(), &p, OpenMode::ReadOnly).unwrap();
        assert_eq!(d.read_metadata("vadp.backup").unwrap(), "job 7");
        assert_eq!(d.metadata_keys().last().unwrap(), "vadp.backup");
    }

    /// Large reads through a child see its blocks over the parent's, and zeros elsewhere.
    /// (Speed is for benchmarks, not tests.)
    #[test]
    fn big_reads_through_a_child_see_both_layers() {
        let (dir, p) = setup(256 << 20);
        let root = dir.path();
        let mut d = DiskChain::open(root, &p, OpenMode::ReadWrite).unwrap();
        d.write_at(0, &vec![7u8; 1 << 20]).unwrap();
        drop(d);
        let c = create_child(root, &p).unwrap();
        let mut top = DiskChain::open(root, &c.child, OpenMode::ReadWrite).unwrap();
        for i in 0..64u64 {
            top.write_at(i * (4 << 20), &[9u8; 4096]).unwrap();
        }
        let mut buf = vec![0u8; 4 << 20];
        for i in 0..64u64 {
            top.read_at(i * (4 << 20), &mut buf).unwrap();
            assert!(buf[..4096].iter().all(|&b| b == 9), "chunk {i}");
            let parent = if i == 0 { 1 << 20 } else { 4096 };
            assert!(buf[4096..parent].iter().all(|&b| b == 7), "chunk {i}");
            assert!(buf[parent..].iter().all(|&b| b == 0), "chunk {i}");
        }
    }
}
