//! Changed block tracking queries and switches, per disk file (QueryChangedDiskAreas).

use std::path::Path;

use super::chain::{Link, named_file, remove_if_exists};
use super::ctk::{ChangeId, CtkFile};
use super::disk::stem;
use super::{DatastoreError, DatastorePath, DiskChain, OpenMode};

/// The areas of `disk_file` changed since `change_id`, answered from that file's ctk:
/// blocks stamped with a sequence greater than the changeId's, coalesced (64 KiB
/// granularity). `"*"` returns the allocated extents of the chain up to `disk_file`.
///
/// `disk_file` is the file a snapshot's config names (frozen) or the current file.
///
/// # Errors
/// [`DatastoreError::ChangeTrackingDisabled`] (no ctk), [`DatastoreError::InvalidChangeId`],
/// [`DatastoreError::ChangeIdMismatch`] (CBT was reset since),
/// [`DatastoreError::ChangeIdFromFuture`], I/O errors.
pub fn changed_areas(
    root: &Path,
    disk_file: &DatastorePath,
    change_id: &ChangeId,
) -> Result<Vec<(u64, u64)>, DatastoreError> {
    let chain = DiskChain::open(root, disk_file, OpenMode::ReadOnly)?;
    if chain.change_id().is_none() {
        return Err(DatastoreError::ChangeTrackingDisabled {
            disk: disk_file.to_string(),
        });
    }
    if change_id.is_all() {
        return chain.allocated_extents(0, chain.capacity_bytes());
    }
    let link = Link::load(root, disk_file, false)?;
    let ctk = link
        .ctk
        .as_ref()
        .ok_or_else(|| DatastoreError::ChangeTrackingDisabled {
            disk: disk_file.to_string(),
        })?;
    ctk.changed_since(change_id, &disk_file.to_string())
}

/// The changeId of the disk file's current change-tracking state.
///
/// # Errors
/// [`DatastoreError::ChangeTrackingDisabled`], I/O errors.
pub fn current_change_id(
    root: &Path,
    disk_file: &DatastorePath,
) -> Result<ChangeId, DatastoreError> {
    Link::load(root, disk_file, false)?
        .ctk
        .as_ref()
        .map(CtkFile::change_id)
        .ok_or_else(|| DatastoreError::ChangeTrackingDisabled {
            disk: disk_file.to_string(),
        })
}

/// Turns change tracking on or off for the current disk file `disk_file` (which must
/// have no child). Off removes the ctk files of the whole chain; on creates a fresh ctk
/// with a new UUID for the current file. Either way older changeIds stop working.
///
/// # Errors
/// [`DatastoreError::Frozen`], [`DatastoreError::Busy`], I/O errors.
pub fn set_change_tracking(
    root: &Path,
    disk_file: &DatastorePath,
    enabled: bool,
) -> Result<(), DatastoreError> {
    // Opening for writing checks "no child" and excludes other writers.
    let chain = DiskChain::open(root, disk_file, OpenMode::ReadWrite)?;
    let capacity = chain.capacity_bytes();
    let mut links = chain.into_links();
    if enabled {
        let top = links.last_mut().expect("chain has at least one link");
        let name = format!("{}-ctk.vmdk", stem(disk_file.file_name()));
        CtkFile::create(&named_file(&top.host, &name)?, capacity)?;
        let mut desc = top.desc.clone();
        desc.set_header("changeTrackPath", &name, true);
        desc.store(&top.host)?;
    } else {
        for link in links.iter_mut().rev() {
            if let Some(name) = link.desc.change_track_path().map(str::to_owned) {
                let mut desc = link.desc.clone();
                desc.remove_header("changeTrackPath");
                desc.store(&link.host)?;
                remove_if_exists(&named_file(&link.host, &name)?)?;
            }
        }
    }
    Ok(())
}
