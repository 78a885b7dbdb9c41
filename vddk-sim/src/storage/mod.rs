//! The storage seam: everything the exports need from the lab, translated into VIX codes.
//!
//! Disk content goes through `lab::datastore::DiskChain` (descriptor + flat extent + redo
//! logs, the same code the lab server uses, so both may work on one disk from different
//! processes); lab settings and a snapshot's frozen files through the `lab::Lab` facade.
//! Everything vCenter decides (logins, VMs, snapshots, disabled methods) goes through
//! [`crate::vcenter`] instead.
//! The rest of the crate sees only [`Disk`], [`LabView`] and [`parse_path`].
//!
//! No locking here: a [`Disk`] is owned by one disk handle, which serialises access; the
//! lab's own `flock`s keep a second writer out (also across processes).

mod errors;

use std::path::Path;

use lab::Lab;
pub(crate) use lab::datastore::DatastorePath;
use lab::datastore::{DiskChain, OpenMode};
use lab::vmstate::{LabSettings, SnapshotMoref, VmMoref};

use crate::vix::VixResult;
use errors::{from_datastore, from_lab};

/// `[ds] dir/disk.vmdk`; a malformed one is VIX_E_FILE_NOT_FOUND.
pub(crate) fn parse_path(text: &str) -> VixResult<DatastorePath> {
    DatastorePath::parse(text).map_err(from_datastore)
}

/// An open disk chain.
#[derive(Debug)]
pub(crate) struct Disk {
    chain: DiskChain,
}

impl Disk {
    /// Opens `path` under `root`. Writable opens of a frozen disk (one with a snapshot
    /// child) or of a disk another writer holds fail with VIX_E_FILE_ALREADY_LOCKED.
    pub(crate) fn open(root: &Path, path: &DatastorePath, writable: bool) -> VixResult<Self> {
        let mode = if writable {
            OpenMode::ReadWrite
        } else {
            OpenMode::ReadOnly
        };
        let mut chain = DiskChain::open(root, path, mode).map_err(from_datastore)?;
        if writable {
            chain.enable_direct_writes();
        }
        Ok(Self { chain })
    }

    pub(crate) fn capacity_bytes(&self) -> u64 {
        self.chain.capacity_bytes()
    }

    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> VixResult<()> {
        self.chain.read_at(offset, buf).map_err(from_datastore)
    }

    pub(crate) fn write_at(&mut self, offset: u64, buf: &[u8]) -> VixResult<()> {
        self.chain.write_at(offset, buf).map_err(from_datastore)
    }

    pub(crate) fn flush(&self) -> VixResult<()> {
        self.chain.flush().map_err(from_datastore)
    }

    /// Allocated byte ranges in `[offset, offset+len)`, coalesced.
    #[cfg_attr(feature = "vddk65", allow(dead_code))]
    pub(crate) fn allocated_extents(&self, offset: u64, len: u64) -> VixResult<Vec<(u64, u64)>> {
        self.chain
            .allocated_extents(offset, len)
            .map_err(from_datastore)
    }

    /// Base plus redo logs.
    pub(crate) fn num_links(&self) -> i32 {
        i32::try_from(self.chain.num_links()).unwrap_or(i32::MAX)
    }

    pub(crate) fn parent_file_name_hint(&self) -> Option<&str> {
        self.chain.parent_file_name_hint()
    }

    /// A `ddb.*` value, if present.
    pub(crate) fn ddb(&self, key: &str) -> Option<String> {
        self.chain.read_metadata(key).ok()
    }

    pub(crate) fn metadata_keys(&self) -> Vec<String> {
        self.chain.metadata_keys()
    }

    /// VIX_E_DISK_KEY_NOTFOUND for an unknown key.
    pub(crate) fn read_metadata(&self, key: &str) -> VixResult<String> {
        self.chain.read_metadata(key).map_err(from_datastore)
    }

    pub(crate) fn write_metadata(&mut self, key: &str, value: &str) -> VixResult<()> {
        self.chain
            .write_metadata(key, value)
            .map_err(from_datastore)
    }
}

/// The control-plane view of the lab: settings, VMs, snapshots, PrepareForAccess state.
#[derive(Debug)]
pub(crate) struct LabView {
    lab: Lab,
}

impl LabView {
    pub(crate) fn open(root: &Path) -> VixResult<Self> {
        Ok(Self {
            lab: Lab::open(root).map_err(from_lab)?,
        })
    }

    pub(crate) fn settings(&self) -> VixResult<LabSettings> {
        self.lab.settings().map_err(from_lab)
    }

    /// Takes a connection loss the lab arranged for an open of `vm`'s disks: the I/O calls
    /// the open serves before it.
    pub(crate) fn take_connection_loss(&self, vm: &str) -> Option<u32> {
        self.lab.take_vddk_connection_loss(&VmMoref(vm.to_owned()))
    }

    /// The files snapshot `snapshot` of `vm` froze; VIX_E_SNAPSHOT_NOTFOUND if none.
    pub(crate) fn snapshot_disks(&self, vm: &str, snapshot: &str) -> VixResult<Vec<DatastorePath>> {
        let info = self
            .lab
            .snapshot(&VmMoref(vm.to_owned()), &SnapshotMoref(snapshot.to_owned()))
            .map_err(from_lab)?;
        Ok(info.disks.into_iter().map(|d| d.file_name).collect())
    }
}

/// PrepareForAccess/EndAccess identities are 1 to 50 characters (VDDK.md §7).
pub(crate) fn check_identity(identity: &str) -> VixResult<()> {
    if identity.is_empty() || identity.chars().count() > 50 {
        return crate::vix::fail(
            vddk_sys::VIX_E_INVALID_ARG,
            format!("identity {identity:?} must be 1 to 50 characters"),
        );
    }
    Ok(())
}
