//! Snapshot redo logs: creating a child of the current disk file, finding children, and
//! consolidating a child into its parent.

use std::fs;
use std::path::Path;

use super::chain::{Link, LinkData, SECTOR_BYTES, named_file, remove_if_exists};
use super::ctk::ChangeId;
use super::delta::{DeltaFile, GRAIN_BYTES, to_usize};
use super::descriptor::{Descriptor, Extent, sync_dir};
use super::disk::{random_cid, stem};
use super::{DatastoreError, DatastorePath};

/// What [`create_child`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildDisk {
    /// The new redo log (`disk-0-000001.vmdk`): the disk's new current file.
    pub child: DatastorePath,
    /// The changeId of the now-frozen parent (`None` without change tracking): the
    /// value a snapshot records for this disk.
    pub frozen_change_id: Option<ChangeId>,
}

fn is_extent_name(name: &str) -> bool {
    ["-flat.vmdk", "-delta.vmdk", "-ctk.vmdk", "-sesparse.vmdk"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The disk files in the same directory whose `parentFileNameHint` names `path`.
///
/// # Errors
/// I/O errors reading the directory.
pub fn children_of(
    root: &Path,
    path: &DatastorePath,
) -> Result<Vec<DatastorePath>, DatastoreError> {
    let host = path.resolve(root);
    let dir = host.parent().expect("a resolved path has a parent");
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DatastoreError::io("read directory", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(DatastoreError::io("read directory", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".vmdk") || is_extent_name(&name) || name.starts_with('.') {
            continue;
        }
        // Unparseable files are not children of anything.
        if let Ok(d) = Descriptor::load(&entry.path())
            && d.parent_file_name_hint() == Some(path.file_name())
        {
            out.push(path.sibling(&name)?);
        }
    }
    out.sort();
    Ok(out)
}

/// Takes a snapshot of one disk: creates the next redo log on top of `path` (the disk's
/// current file), e.g. `disk-0-000001.vmdk` + `disk-0-000001-delta.vmdk`, copies the ctk
/// with sequence + 1, and returns the new file and the frozen parent's changeId.
///
/// # Errors
/// [`DatastoreError::Frozen`] if `path` already has a child, [`DatastoreError::Busy`] if
/// it is open for writing, I/O errors.
pub fn create_child(root: &Path, path: &DatastorePath) -> Result<ChildDisk, DatastoreError> {
    if let Some(child) = children_of(root, path)?.into_iter().next() {
        return Err(DatastoreError::Frozen {
            disk: path.to_string(),
            child: child.to_string(),
        });
    }
    let parent = Link::load(root, path, false)?;
    parent.lock_exclusive()?;
    let base_stem = {
        let s = stem(path.file_name());
        match s.rsplit_once('-') {
            Some((b, n)) if n.len() == 6 && n.bytes().all(|c| c.is_ascii_digit()) => b.to_owned(),
            _ => s.to_owned(),
        }
    };
    let dir = parent
        .host
        .parent()
        .expect("a resolved path has a parent")
        .to_owned();
    let mut next = 1u32;
    for e in fs::read_dir(&dir).map_err(DatastoreError::io("read directory", &dir))? {
        let name = e
            .map_err(DatastoreError::io("read directory", &dir))?
            .file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix(&format!("{base_stem}-"))
            .and_then(|r| r.get(..6))
            .and_then(|n| n.parse::<u32>().ok())
        {
            next = next.max(n + 1);
        }
    }
    let child_stem = format!("{base_stem}-{next:06}");
    let child = path.sibling(&format!("{child_stem}.vmdk"))?;
    let child_host = child.resolve(root);
    let delta_name = format!("{child_stem}-delta.vmdk");
    let capacity = parent.capacity_bytes();
    DeltaFile::create(&named_file(&child_host, &delta_name)?, capacity)?;

    let mut desc = Descriptor::new(
        &[
            ("version", "1", false),
            ("encoding", "UTF-8", true),
            ("CID", "ffffffff", false),
            (
                "parentCID",
                &format!("{:08x}", parent.desc.cid().unwrap_or(0xffff_ffff)),
                false,
            ),
            ("isNativeSnapshot", "no", true),
            ("createType", "vmfsSparse", true),
            ("parentFileNameHint", path.file_name(), true),
        ],
        vec![Extent {
            access: "RW".into(),
            sectors: capacity / SECTOR_BYTES,
            kind: "VMFSSPARSE".into(),
            file: delta_name,
            offset: None,
        }],
        parent.desc.ddb.clone(),
    );
    desc.set_cid(random_cid());
    desc.set_ddb("grain", &(GRAIN_BYTES / SECTOR_BYTES).to_string());
    let frozen_change_id = match &parent.ctk {
        Some(ctk) => {
            let ctk_name = format!("{child_stem}-ctk.vmdk");
            ctk.copy_to(&named_file(&child_host, &ctk_name)?, ctk.current_seq() + 1)?;
            desc.set_header("changeTrackPath", &ctk_name, true);
            Some(ctk.change_id())
        }
        None => None,
    };
    // Make the parent's data durable before anything depends on it being frozen.
    parent
        .data_file()
        .sync_all()
        .map_err(DatastoreError::io("fsync", &parent.host))?;
    desc.store(&child_host)?;
    Ok(ChildDisk {
        child,
        frozen_change_id,
    })
}

/// Consolidates the redo log `child` into its parent: copies every allocated grain of
/// the child into the parent, moves the child's ctk over the parent's, gives the parent
/// the child's CID and disk database, re-points the child's children at the parent and
/// deletes the child. Returns the parent's path.
///
/// Crash safety: the child stays on top of the parent until the very end, so the view
/// through the child (and through any grandchild) is intact at every step; the parent's
/// own old view is given up as soon as the copy starts (it is the snapshot being
/// removed). Every step is idempotent: re-running after an interruption finishes the
/// job, and running it when the child is already gone only removes leftovers.
///
/// # Errors
/// [`DatastoreError::Busy`] if the child or the parent is open for writing,
/// [`DatastoreError::Chain`] if `child` is not a redo log, I/O errors.
pub fn consolidate(
    root: &Path,
    child: &DatastorePath,
) -> Result<Option<DatastorePath>, DatastoreError> {
    let host = child.resolve(root);
    if !host.exists() {
        let s = stem(child.file_name());
        for leftover in [format!("{s}-delta.vmdk"), format!("{s}-ctk.vmdk")] {
            remove_if_exists(&named_file(&host, &leftover)?)?;
        }
        return Ok(None);
    }
    let c = Link::load(root, child, false)?;
    let Some(hint) = c.desc.parent_file_name_hint() else {
        return Err(DatastoreError::Chain {
            disk: child.to_string(),
            reason: "not a redo log".into(),
        });
    };
    let parent_path = child.sibling(hint)?;
    let mut p = Link::load(root, &parent_path, true)?;
    c.lock_exclusive()?;
    p.lock_exclusive()?;
    let LinkData::Delta(delta) = &c.data else {
        return Err(DatastoreError::Chain {
            disk: child.to_string(),
            reason: "not a redo log".into(),
        });
    };
    let capacity = c.capacity_bytes();
    let mut buf = vec![0u8; 1 << 20];
    for (g, n) in delta.allocated_runs() {
        let mut pos = g * GRAIN_BYTES;
        let end = ((g + n) * GRAIN_BYTES).min(capacity);
        while pos < end {
            let len = (end - pos).min(buf.len() as u64);
            let part = &mut buf[..to_usize(len)];
            delta.read(pos, part)?;
            match &mut p.data {
                LinkData::Flat { file, path, .. } => {
                    std::os::unix::fs::FileExt::write_all_at(file, part, pos)
                        .map_err(DatastoreError::io("write", path.as_path()))?;
                }
                LinkData::Delta(d) => d.write_grains(pos, part)?,
            }
            pos += len;
        }
    }
    p.data_file()
        .sync_all()
        .map_err(DatastoreError::io("fsync", &p.host))?;

    let mut pdesc = p.desc.clone();
    pdesc.ddb = c.desc.ddb.clone();
    pdesc.remove_header("changeTrackPath");
    let p_stem = stem(parent_path.file_name()).to_owned();
    if let Some(cname) = c.desc.change_track_path() {
        let p_ctk = format!("{p_stem}-ctk.vmdk");
        let from = named_file(&host, cname)?;
        if from.exists() {
            fs::rename(&from, named_file(&p.host, &p_ctk)?)
                .map_err(DatastoreError::io("rename", &from))?;
        }
        pdesc.set_header("changeTrackPath", &p_ctk, true);
    } else if let Some(old) = p.desc.change_track_path() {
        remove_if_exists(&named_file(&p.host, old)?)?;
    }
    pdesc.set_cid(c.desc.cid().unwrap_or_else(random_cid));
    pdesc.store(&p.host)?;

    for grandchild in children_of(root, child)? {
        let gh = grandchild.resolve(root);
        let mut g = Descriptor::load(&gh)?;
        g.set_header("parentFileNameHint", parent_path.file_name(), true);
        g.store(&gh)?;
    }
    let cdesc = c.desc.clone();
    drop(c);
    fs::remove_file(&host).map_err(DatastoreError::io("remove", &host))?;
    for x in &cdesc.extents {
        remove_if_exists(&named_file(&host, &x.file)?)?;
    }
    if let Some(cname) = cdesc.change_track_path() {
        remove_if_exists(&named_file(&host, cname)?)?;
    }
    sync_dir(host.parent().expect("a resolved path has a parent"))?;
    Ok(Some(parent_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{DiskChain, DiskOptions, OpenMode, create_disk};

    fn view(root: &Path, p: &DatastorePath) -> Vec<u8> {
        let d = DiskChain::open(root, p, OpenMode::ReadOnly).unwrap();
        let mut v = vec![0u8; to_usize(d.capacity_bytes())];
        d.read_at(0, &mut v).unwrap();
        v
    }

    fn write(root: &Path, p: &DatastorePath, off: u64, byte: u8, len: usize) {
        let mut d = DiskChain::open(root, p, OpenMode::ReadWrite).unwrap();
        d.write_at(off, &vec![byte; len]).unwrap();
        d.flush().unwrap();
    }

    fn setup() -> (tempfile::TempDir, DatastorePath) {
        let dir = tempfile::tempdir().unwrap();
        let p = DatastorePath::parse("[ds1] vm/disk-0.vmdk").unwrap();
        create_disk(dir.path(), &p, 1 << 20, &DiskOptions::default()).unwrap();
        write(dir.path(), &p, 0, 1, 8192);
        (dir, p)
    }

    #[test]
    fn remove_latest_snapshot_consolidates_into_base() {
        let (dir, base) = setup();
        let root = dir.path();
        let c1 = create_child(root, &base).unwrap().child;
        write(root, &c1, 4096, 2, 512);
        write(root, &c1, 65536, 3, 8192);
        let before = view(root, &c1);
        assert_eq!(consolidate(root, &c1).unwrap(), Some(base.clone()));
        assert_eq!(view(root, &base), before);
        assert!(children_of(root, &base).unwrap().is_empty());
        assert!(!c1.resolve(root).exists());
        // Writable again; re-running is harmless.
        write(root, &base, 0, 9, 512);
        assert_eq!(consolidate(root, &c1).unwrap(), None);
        let names: Vec<_> = fs::read_dir(base.resolve(root).parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn remove_middle_snapshot_keeps_every_view() {
        let (dir, base) = setup();
        let root = dir.path();
        let c1 = create_child(root, &base).unwrap().child;
        write(root, &c1, 0, 2, 512);
        write(root, &c1, 12288, 2, 4096);
        let snap2_view = view(root, &c1);
        let c2 = create_child(root, &c1).unwrap().child;
        assert_eq!(c2.file_name(), "disk-0-000002.vmdk");
        write(root, &c2, 0, 3, 4096);
        let current = view(root, &c2);
        // Remove snapshot 1 (froze the base): its disk's child c1 merges into the base.
        assert_eq!(consolidate(root, &c1).unwrap(), Some(base.clone()));
        assert_eq!(
            view(root, &base),
            snap2_view,
            "snapshot 2 now names the base"
        );
        assert_eq!(view(root, &c2), current);
        let top = DiskChain::open(root, &c2, OpenMode::ReadOnly).unwrap();
        assert_eq!(top.num_links(), 2);
        assert_eq!(top.parent_file_name_hint(), Some("disk-0.vmdk"));
        drop(top);
        // Then remove snapshot 2: c2 merges into the base.
        consolidate(root, &c2).unwrap();
        assert_eq!(view(root, &base), current);
    }

    #[test]
    fn consolidate_into_middle_delta() {
        let (dir, base) = setup();
        let root = dir.path();
        let c1 = create_child(root, &base).unwrap().child;
        write(root, &c1, 512, 2, 512);
        let c2 = create_child(root, &c1).unwrap().child;
        write(root, &c2, 1024, 3, 512);
        let current = view(root, &c2);
        assert_eq!(consolidate(root, &c2).unwrap(), Some(c1.clone()));
        assert_eq!(view(root, &c1), current);
        assert_eq!(
            create_child(root, &c1).unwrap().child.file_name(),
            "disk-0-000002.vmdk"
        );
    }

    #[test]
    fn interrupted_consolidation_can_be_rerun() {
        let (dir, base) = setup();
        let root = dir.path();
        let c1 = create_child(root, &base).unwrap().child;
        write(root, &c1, 0, 7, 4096 * 3);
        let before = view(root, &c1);
        // Simulate a crash after part of the copy: the base got one grain already.
        write_raw_base(root, &base, 0, &[7u8; 4096]);
        assert_eq!(
            view(root, &c1),
            before,
            "the view through the child is intact"
        );
        consolidate(root, &c1).unwrap();
        assert_eq!(view(root, &base), before);
    }

    fn write_raw_base(root: &Path, base: &DatastorePath, off: u64, data: &[u8]) {
        let flat = base.sibling("disk-0-flat.vmdk").unwrap().resolve(root);
        let f = fs::OpenOptions::new().write(true).open(flat).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, data, off).unwrap();
    }
}
