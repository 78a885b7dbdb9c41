//! A disk opened through its VMDK text descriptor: flat extents (`FLAT`, `VMFS`) read and
//! written in place, allocation from the extent files' holes (`SEEK_DATA`/`SEEK_HOLE`),
//! `ddb.*` metadata read from and written back to the descriptor.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};

use vddk_sys::{
    VIX_E_DISK_INVAL, VIX_E_DISK_OUTOFRANGE, VIX_E_FILE_ACCESS_ERROR, VIX_E_FILE_NOT_FOUND,
    VIX_E_FILE_READ_ONLY, VIX_E_NOT_SUPPORTED, VIXDISKLIB_SECTOR_SIZE,
};

use crate::vix::{VixResult, fail};

const SECTOR: u64 = VIXDISKLIB_SECTOR_SIZE as u64;
/// Descriptors are small text files; anything bigger is a data file.
const MAX_DESCRIPTOR_BYTES: u64 = 64 * 1024;

#[derive(Debug)]
struct Extent {
    /// First byte of the disk this extent covers.
    start: u64,
    len: u64,
    file: File,
    /// Byte offset of the extent's data inside `file`.
    file_offset: u64,
}

/// An open disk.
#[derive(Debug)]
pub(crate) struct Disk {
    descriptor: PathBuf,
    writable: bool,
    capacity: u64,
    extents: Vec<Extent>,
    ddb: Vec<(String, String)>,
    parent_hint: Option<String>,
}

impl Disk {
    /// Opens the descriptor at `path` (already resolved under the lab root).
    pub(crate) fn open(path: &Path, writable: bool) -> VixResult<Self> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => meta,
            _ => {
                return fail(
                    VIX_E_FILE_NOT_FOUND,
                    format!("no disk descriptor at {}", path.display()),
                );
            }
        };
        if meta.len() > MAX_DESCRIPTOR_BYTES {
            return fail(
                VIX_E_DISK_INVAL,
                format!("{} is not a VMDK text descriptor", path.display()),
            );
        }
        let text = std::fs::read_to_string(path).or_else(|e| {
            fail(
                VIX_E_FILE_ACCESS_ERROR,
                format!("read {}: {e}", path.display()),
            )
        })?;
        let parsed = Descriptor::parse(&text);
        if let Some(parent) = &parsed.parent_hint {
            return fail(
                VIX_E_NOT_SUPPORTED,
                format!(
                    "{} is a redo log of {parent}: vddk-sim reads redo logs once the lab's \
                     disk chain (branch lab-ds) is wired in",
                    path.display()
                ),
            );
        }
        let dir = path.parent().unwrap_or(Path::new("/"));
        let mut extents = Vec::new();
        let mut start = 0u64;
        for e in &parsed.extents {
            let kind = e.kind.to_ascii_uppercase();
            if kind != "FLAT" && kind != "VMFS" {
                return fail(
                    VIX_E_NOT_SUPPORTED,
                    format!(
                        "{}: extent type {} is not supported",
                        path.display(),
                        e.kind
                    ),
                );
            }
            let file_path = dir.join(&e.file);
            let file = OpenOptions::new()
                .read(true)
                .write(writable)
                .open(&file_path)
                .or_else(|err| {
                    fail(
                        VIX_E_FILE_NOT_FOUND,
                        format!(
                            "extent {} of {}: {err}",
                            file_path.display(),
                            path.display()
                        ),
                    )
                })?;
            let len = e.sectors.saturating_mul(SECTOR);
            extents.push(Extent {
                start,
                len,
                file,
                file_offset: e.offset_sectors.saturating_mul(SECTOR),
            });
            start = start.saturating_add(len);
        }
        if extents.is_empty() {
            return fail(
                VIX_E_DISK_INVAL,
                format!("{} has no extents", path.display()),
            );
        }
        Ok(Self {
            descriptor: path.to_path_buf(),
            writable,
            capacity: start,
            extents,
            ddb: parsed.ddb,
            parent_hint: None,
        })
    }

    pub(crate) fn capacity_bytes(&self) -> u64 {
        self.capacity
    }

    /// Base plus redo logs.
    pub(crate) fn num_links(&self) -> i32 {
        1
    }

    pub(crate) fn parent_file_name_hint(&self) -> Option<&str> {
        self.parent_hint.as_deref()
    }

    pub(crate) fn ddb(&self, key: &str) -> Option<&str> {
        self.ddb
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Splits `[offset, offset+len)` into per-extent pieces: (extent, offset in file,
    /// offset in the caller's buffer, length).
    fn pieces(&self, offset: u64, len: u64) -> VixResult<Vec<(usize, u64, usize, usize)>> {
        let end = offset.checked_add(len).filter(|end| *end <= self.capacity);
        let Some(end) = end else {
            return fail(
                VIX_E_DISK_OUTOFRANGE,
                format!("bytes {offset}+{len} beyond capacity {}", self.capacity),
            );
        };
        let mut out = Vec::new();
        for (i, e) in self.extents.iter().enumerate() {
            let lo = offset.max(e.start);
            let hi = end.min(e.start + e.len);
            if lo < hi {
                let buf_at = usize::try_from(lo - offset).unwrap_or(usize::MAX);
                let n = usize::try_from(hi - lo).unwrap_or(usize::MAX);
                out.push((i, e.file_offset + (lo - e.start), buf_at, n));
            }
        }
        Ok(out)
    }

    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> VixResult<()> {
        for (i, at, buf_at, n) in self.pieces(offset, buf.len() as u64)? {
            let piece = &mut buf[buf_at..buf_at + n];
            // Reads past the end of a sparse extent file return zeros.
            let mut done = 0;
            while done < piece.len() {
                match self.extents[i]
                    .file
                    .read_at(&mut piece[done..], at + done as u64)
                {
                    Ok(0) => {
                        piece[done..].fill(0);
                        break;
                    }
                    Ok(k) => done += k,
                    Err(e) => return fail(VIX_E_FILE_ACCESS_ERROR, format!("read: {e}")),
                }
            }
        }
        Ok(())
    }

    pub(crate) fn write_at(&self, offset: u64, buf: &[u8]) -> VixResult<()> {
        if !self.writable {
            return fail(
                VIX_E_FILE_READ_ONLY,
                format!("{} is open read-only", self.descriptor.display()),
            );
        }
        for (i, at, buf_at, n) in self.pieces(offset, buf.len() as u64)? {
            self.extents[i]
                .file
                .write_all_at(&buf[buf_at..buf_at + n], at)
                .or_else(|e| fail(VIX_E_FILE_ACCESS_ERROR, format!("write: {e}")))?;
        }
        Ok(())
    }

    pub(crate) fn flush(&self) -> VixResult<()> {
        if !self.writable {
            return Ok(());
        }
        for e in &self.extents {
            e.file
                .sync_data()
                .or_else(|err| fail(VIX_E_FILE_ACCESS_ERROR, format!("flush: {err}")))?;
        }
        Ok(())
    }

    /// Allocated byte ranges inside `[offset, offset+len)`, sorted, not coalesced.
    #[cfg_attr(feature = "vddk65", allow(dead_code))]
    pub(crate) fn allocated_extents(&self, offset: u64, len: u64) -> VixResult<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        for (i, at, buf_at, n) in self.pieces(offset, len)? {
            let e = &self.extents[i];
            let disk_base = offset + buf_at as u64;
            for (lo, hi) in data_ranges(&e.file, at, at + n as u64)? {
                out.push((disk_base + (lo - at), hi - lo));
            }
        }
        Ok(out)
    }

    /// `ddb.*` keys without the prefix, in descriptor order, without duplicates.
    pub(crate) fn metadata_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for (k, _) in &self.ddb {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
        keys
    }

    pub(crate) fn read_metadata(&self, key: &str) -> Option<&str> {
        self.ddb(key)
    }

    /// Sets `ddb.<key>` and rewrites the descriptor (temp file + rename).
    pub(crate) fn write_metadata(&mut self, key: &str, value: &str) -> VixResult<()> {
        if !self.writable {
            return fail(
                VIX_E_FILE_READ_ONLY,
                format!("{} is open read-only", self.descriptor.display()),
            );
        }
        let text = std::fs::read_to_string(&self.descriptor)
            .or_else(|e| fail(VIX_E_FILE_ACCESS_ERROR, format!("read descriptor: {e}")))?;
        let new_line = format!("ddb.{key} = \"{}\"", value.replace('"', "'"));
        let mut replaced = false;
        let mut lines: Vec<String> = text
            .lines()
            .map(|line| match ddb_entry(line) {
                Some((k, _)) if k == key && !replaced => {
                    replaced = true;
                    new_line.clone()
                }
                _ => line.to_owned(),
            })
            .collect();
        if !replaced {
            lines.push(new_line);
        }
        let mut out = lines.join("\n");
        out.push('\n');
        let tmp = self.descriptor.with_extension("vmdk.vddk-sim-tmp");
        std::fs::write(&tmp, out)
            .and_then(|()| std::fs::rename(&tmp, &self.descriptor))
            .or_else(|e| fail(VIX_E_FILE_ACCESS_ERROR, format!("write descriptor: {e}")))?;
        match self.ddb.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.ddb.push((key.to_owned(), value.to_owned())),
        }
        Ok(())
    }

    /// The file name of a redo log in the same directory whose parent is this disk, if any:
    /// such a disk is frozen by a snapshot.
    pub(crate) fn child(&self) -> Option<String> {
        let dir = self.descriptor.parent()?;
        let own = self.descriptor.file_name()?.to_str()?;
        std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let small = entry.metadata().ok()?.len() <= MAX_DESCRIPTOR_BYTES;
            if !name.ends_with(".vmdk") || name == own || !small {
                return None;
            }
            let text = std::fs::read_to_string(entry.path()).ok()?;
            let hint = Descriptor::parse(&text).parent_hint?;
            let hint_name = Path::new(&hint).file_name()?.to_str()?.to_owned();
            (hint_name == own).then_some(name)
        })
    }
}

/// `[lo, hi)` data ranges of `file` between `from` and `to` (SEEK_DATA / SEEK_HOLE).
#[cfg_attr(feature = "vddk65", allow(dead_code))]
fn data_ranges(file: &File, from: u64, to: u64) -> VixResult<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let seek = |pos: u64, whence: i32| -> Option<u64> {
        let pos = libc::off_t::try_from(pos).ok()?;
        // SAFETY: `fd` is an open descriptor owned by `file`, which outlives this call;
        // lseek has no memory-safety preconditions.
        let r = unsafe { libc::lseek(fd, pos, whence) };
        u64::try_from(r).ok()
    };
    let mut out = Vec::new();
    let mut pos = from;
    while pos < to {
        // ENXIO (no data after pos) or EOF: the rest is a hole.
        let Some(data) = seek(pos, libc::SEEK_DATA) else {
            break;
        };
        if data >= to {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE).unwrap_or(to).min(to);
        if hole <= data {
            break;
        }
        out.push((data, hole));
        pos = hole;
    }
    Ok(out)
}

/// The parts of a descriptor the simulator uses.
#[derive(Debug, Default)]
struct Descriptor {
    extents: Vec<ExtentLine>,
    ddb: Vec<(String, String)>,
    parent_hint: Option<String>,
}

#[derive(Debug)]
struct ExtentLine {
    sectors: u64,
    kind: String,
    file: String,
    offset_sectors: u64,
}

impl Descriptor {
    fn parse(text: &str) -> Self {
        let mut d = Descriptor::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some((key, value)) = ddb_entry(line) {
                d.ddb.push((key, value));
            } else if let Some(extent) = extent_line(line) {
                d.extents.push(extent);
            } else if let Some((key, value)) = line.split_once('=')
                && key.trim() == "parentFileNameHint"
            {
                d.parent_hint = Some(value.trim().trim_matches('"').to_owned());
            }
        }
        d
    }
}

/// `ddb.key = "value"` → (key, value).
fn ddb_entry(line: &str) -> Option<(String, String)> {
    let (key, value) = line.trim().split_once('=')?;
    let key = key.trim().strip_prefix("ddb.")?;
    Some((key.to_owned(), value.trim().trim_matches('"').to_owned()))
}

/// `RW 2097152 VMFS "disk-0-flat.vmdk" [offset]`.
fn extent_line(line: &str) -> Option<ExtentLine> {
    let mut words = line.splitn(3, ' ');
    let access = words.next()?;
    if !matches!(access, "RW" | "RDONLY" | "NOACCESS") {
        return None;
    }
    let sectors = words.next()?.parse().ok()?;
    let rest = words.next()?.trim();
    let (kind, rest) = rest.split_once(' ')?;
    let rest = rest.trim().strip_prefix('"')?;
    let (file, tail) = rest.split_once('"')?;
    let offset_sectors = tail.trim().parse().unwrap_or(0);
    Some(ExtentLine {
        sectors,
        kind: kind.to_owned(),
        file: file.to_owned(),
        offset_sectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thin_disk(dir: &Path, sectors: u64) -> PathBuf {
        std::fs::write(
            dir.join("d.vmdk"),
            format!(
                "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                 createType=\"vmfs\"\n\nRW {sectors} VMFS \"d-flat.vmdk\"\n\n# The Disk Data Base\n\
                 #DDB\nddb.adapterType = \"lsilogic\"\nddb.uuid = \"60 00 C2 9a\"\n"
            ),
        )
        .unwrap();
        let f = File::create(dir.join("d-flat.vmdk")).unwrap();
        f.set_len(sectors * SECTOR).unwrap();
        dir.join("d.vmdk")
    }

    #[test]
    fn read_write_and_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = thin_disk(dir.path(), 4096);
        let disk = Disk::open(&path, true).unwrap();
        assert_eq!(disk.capacity_bytes(), 4096 * SECTOR);
        disk.write_at(SECTOR, &[7u8; 512]).unwrap();
        let mut buf = [0u8; 1024];
        disk.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf[..512], &[0u8; 512]);
        assert_eq!(&buf[512..], &[7u8; 512]);
        let err = disk.read_at(4095 * SECTOR, &mut buf).unwrap_err();
        assert_eq!(err.code, VIX_E_DISK_OUTOFRANGE);
        let ro = Disk::open(&path, false).unwrap();
        assert_eq!(ro.write_at(0, &buf).unwrap_err().code, VIX_E_FILE_READ_ONLY);
    }

    #[test]
    fn allocation_follows_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = thin_disk(dir.path(), 1 << 16);
        let disk = Disk::open(&path, true).unwrap();
        assert!(
            disk.allocated_extents(0, disk.capacity_bytes())
                .unwrap()
                .is_empty()
        );
        disk.write_at(1 << 20, &[1u8; 4096]).unwrap();
        let ranges = disk.allocated_extents(0, disk.capacity_bytes()).unwrap();
        assert_eq!(ranges.len(), 1, "{ranges:?}");
        let (lo, len) = ranges[0];
        assert!(lo <= 1 << 20 && lo + len >= (1 << 20) + 4096, "{ranges:?}");
    }

    #[test]
    fn metadata_round_trip_and_child_detection() {
        let dir = tempfile::tempdir().unwrap();
        let path = thin_disk(dir.path(), 128);
        let mut disk = Disk::open(&path, true).unwrap();
        assert_eq!(disk.metadata_keys(), ["adapterType", "uuid"]);
        disk.write_metadata("uuid", "11 22").unwrap();
        disk.write_metadata("vadp.tag", "x").unwrap();
        let again = Disk::open(&path, false).unwrap();
        assert_eq!(again.read_metadata("uuid"), Some("11 22"));
        assert_eq!(again.read_metadata("vadp.tag"), Some("x"));
        assert!(again.child().is_none());
        std::fs::write(
            dir.path().join("d-000001.vmdk"),
            "parentFileNameHint=\"d.vmdk\"\nRW 128 VMFSSPARSE \"d-000001-delta.vmdk\"\n",
        )
        .unwrap();
        assert_eq!(again.child().as_deref(), Some("d-000001.vmdk"));
        let err = Disk::open(&dir.path().join("d-000001.vmdk"), false).unwrap_err();
        assert_eq!(err.code, VIX_E_NOT_SUPPORTED);
    }
}
