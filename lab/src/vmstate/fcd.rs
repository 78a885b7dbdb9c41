//! First Class Disks: `<root>/fcds.json` maps a disk file (`[ds] dir/disk.vmdk`, the base
//! of its chain) to the FCD id CNS registered it under. The id belongs to the FILE, not to
//! a VM's device, so it survives detaching the disk and attaching it again, as a vSphere
//! FCD does; vCenter then shows it as the device's `VirtualDisk.vDiskId`. A file becomes
//! an FCD when CNS registers it for a PVC (the lab's CnsRegisterVolume, and VM Operator's
//! volumes); a new file created at a path is not one, and a deleted file's id goes with it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::lab::{Lab, LabError};
use super::model::VmState;
use crate::datastore::DatastorePath;

/// File (`[ds] dir/disk.vmdk`) → FCD id.
type Catalog = BTreeMap<String, String>;

impl Lab {
    fn fcd_path(&self) -> PathBuf {
        self.root().join("fcds.json")
    }

    fn fcd_catalog(&self) -> Catalog {
        let p = self.fcd_path();
        if !p.exists() {
            return Catalog::new();
        }
        Self::read_json(&p).unwrap_or_default()
    }

    /// Whether the disk file at `path` still exists (its descriptor).
    fn disk_exists(&self, path: &str) -> bool {
        DatastorePath::parse(path).is_ok_and(|p| p.resolve(self.root()).exists())
    }

    /// CNS registers the disk file `path` as a First Class Disk; returns its FCD id (the one
    /// it has already, if it is one).
    ///
    /// # Errors
    /// I/O errors.
    pub fn register_fcd(&self, path: &DatastorePath) -> Result<String, LabError> {
        let _g = self.lock()?;
        let mut c = self.fcd_catalog();
        let id = c
            .entry(path.to_string())
            .or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        self.write_json(&self.fcd_path(), &c)?;
        Ok(id)
    }

    /// The FCD id of the disk file `path`, if it is a First Class Disk.
    #[must_use]
    pub fn fcd_id(&self, path: &DatastorePath) -> Option<String> {
        let key = path.to_string();
        self.fcd_catalog()
            .remove(&key)
            .filter(|_| self.disk_exists(&key))
    }

    /// The disk file of FCD `id`, if it still exists.
    #[must_use]
    pub fn fcd_file(&self, id: &str) -> Option<DatastorePath> {
        self.fcd_catalog()
            .into_iter()
            .find(|(f, i)| i == id && self.disk_exists(f))
            .and_then(|(f, _)| DatastorePath::parse(&f).ok())
    }

    /// The FCD id of disk `key` of `vm` (its current file, or the base its snapshots
    /// froze), as vCenter shows it in `VirtualDisk.vDiskId`.
    #[must_use]
    pub fn vm_disk_fcd_id(&self, vm: &VmState, key: super::DiskKey) -> Option<String> {
        let c = self.fcd_catalog();
        if c.is_empty() {
            return None;
        }
        let current = vm
            .disks
            .iter()
            .find(|d| d.key == key)?
            .file_name
            .to_string();
        std::iter::once(current)
            .chain(vm.snapshots.iter().flat_map(|s| {
                s.disks
                    .iter()
                    .filter(|d| d.key == key)
                    .map(|d| d.file_name.to_string())
            }))
            .find_map(|f| c.get(&f).cloned().filter(|_| self.disk_exists(&f)))
    }

    /// Whether the disk file `path` is in use by a VM (a device's file, or the base of one
    /// a snapshot froze).
    ///
    /// # Errors
    /// I/O or JSON errors reading the VMs.
    pub fn disk_attached(&self, path: &DatastorePath) -> Result<Option<VmState>, LabError> {
        Ok(self.vms()?.into_iter().find(|v| {
            v.disks.iter().any(|d| &d.file_name == path)
                || v.snapshots
                    .iter()
                    .any(|s| s.disks.iter().any(|d| &d.file_name == path))
        }))
    }

    /// Forgets the FCD ids of `paths` (new files created there, or the files deleted);
    /// the caller holds the lab's lock.
    pub(super) fn forget_fcds_locked(&self, paths: &[&DatastorePath]) -> Result<(), LabError> {
        let mut c = self.fcd_catalog();
        let before = c.len();
        for p in paths {
            c.remove(&p.to_string());
        }
        if c.len() != before {
            self.write_json(&self.fcd_path(), &c)?;
        }
        Ok(())
    }

    /// VirtualDiskManager.DeleteVirtualDisk_Task: deletes the disk at `file` (descriptor
    /// and extents), refused while a powered-on VM uses it, as vSphere refuses a locked
    /// disk — and, like vSphere, not refused for a powered-off VM's disk, which then names a
    /// file that is gone; an FCD it was is forgotten.
    ///
    /// # Errors
    /// [`LabError::DiskInUse`] naming the VM; datastore errors (a file that does not exist).
    pub fn delete_virtual_disk(&self, file: &DatastorePath) -> Result<(), LabError> {
        if let Some(vm) = self.disk_attached(file)?
            && vm.power_state != super::PowerState::PoweredOff
        {
            return Err(LabError::DiskInUse {
                disk: file.to_string(),
                vm: vm.moref,
            });
        }
        let _g = self.lock()?;
        crate::datastore::delete_disk(self.root(), file).map_err(|source| LabError::Datastore {
            vm: "lab".into(),
            source,
        })?;
        self.forget_fcds_locked(&[file])
    }

    /// FileManager.DeleteDatastoreFile_Task on a directory: deletes it with everything in
    /// it, as vSphere does, refused while a file in it is locked: the `.vmx` or a disk of a
    /// powered-on VM, or a disk open for writing (through VDDK or otherwise). A powered-off
    /// VM's files go, as on vSphere, and the VM then names files that are gone.
    ///
    /// # Errors
    /// [`LabError::DiskInUse`] naming the VM; datastore errors for a disk open for writing;
    /// I/O errors.
    pub fn delete_directory(&self, dir: &DatastorePath) -> Result<(), LabError> {
        let _g = self.lock()?;
        let prefix = format!("{dir}/");
        for vm in self.vms()? {
            let mut files = std::iter::once(vm.vmx_path.to_string())
                .chain(vm.disks.iter().map(|d| d.file_name.to_string()))
                .chain(
                    vm.snapshots
                        .iter()
                        .flat_map(|s| s.disks.iter().map(|d| d.file_name.to_string())),
                );
            if let Some(file) = files.find(|f| f.starts_with(&prefix))
                && vm.power_state != super::PowerState::PoweredOff
            {
                return Err(LabError::DiskInUse {
                    disk: file,
                    vm: vm.moref,
                });
            }
        }
        let host = dir.resolve(self.root());
        // A disk someone has open for writing holds its lock, as on VMFS.
        for entry in std::fs::read_dir(&host).map_err(|source| LabError::Io {
            op: "read directory",
            path: host.clone(),
            source,
        })? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".vmdk")
                || name.ends_with("-flat.vmdk")
                || name.ends_with("-ctk.vmdk")
            {
                continue;
            }
            let Ok(path) = DatastorePath::parse(&format!("{prefix}{name}")) else {
                continue;
            };
            if let Err(e @ crate::datastore::DatastoreError::Busy { .. }) =
                crate::datastore::DiskChain::open(
                    self.root(),
                    &path,
                    crate::datastore::OpenMode::ReadWrite,
                )
            {
                return Err(LabError::Datastore {
                    vm: "lab".into(),
                    source: e,
                });
            }
        }
        std::fs::remove_dir_all(&host).map_err(|source| LabError::Io {
            op: "remove directory",
            path: host,
            source,
        })
    }

    /// CNS deletes FCD `id` (a PVC with reclaim policy Delete went): its file is deleted,
    /// unless a VM still uses it — CNS does not delete an attached volume. Returns the file
    /// deleted; `Ok(None)` when the FCD no longer exists.
    ///
    /// # Errors
    /// [`LabError::DiskInUse`] naming the VM the file is attached to; datastore errors.
    pub fn delete_fcd(&self, id: &str) -> Result<Option<DatastorePath>, LabError> {
        let Some(file) = self.fcd_file(id) else {
            return Ok(None);
        };
        if let Some(vm) = self.disk_attached(&file)? {
            return Err(LabError::DiskInUse {
                disk: file.to_string(),
                vm: vm.moref,
            });
        }
        let _g = self.lock()?;
        crate::datastore::delete_disk(self.root(), &file).map_err(|source| {
            LabError::Datastore {
                vm: "lab".into(),
                source,
            }
        })?;
        self.forget_fcds_locked(&[&file])?;
        Ok(Some(file))
    }
}
