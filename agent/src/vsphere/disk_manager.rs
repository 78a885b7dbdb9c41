//! What a restore needs beyond creating VMs (VSPHERE.md §A.8, §A.10):
//! VirtualDiskManager.CreateVirtualDisk_Task and SetVirtualDiskUuid, Folder.MoveIntoFolder_Task,
//! creating and attaching a disk with ReconfigVM_Task, and the datacenter / resource pool
//! a restored VM is registered into.

use super::soap::{FaultKind, SoapClient, VsphereError};
use super::types::{DiskKey, FolderMoref, MoRef, ResourcePoolMoref, VmMoref};
use super::xml::XmlWriter;

/// One device change of [`SoapClient::reconfigure_disks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskChange<'a> {
    /// Remove disk `key`; with `destroy` its file is deleted too (`fileOperation =
    /// destroy`), without it the file stays on the datastore untouched.
    Remove {
        /// The device key.
        key: DiskKey,
        /// Delete the file.
        destroy: bool,
    },
    /// Create a new disk file at `path` and attach it (`fileOperation = create`).
    Create {
        /// `[ds] dir/disk.vmdk`.
        path: &'a str,
        /// Capacity.
        capacity_kb: u64,
        /// Thin provisioned (else thick).
        thin: bool,
        /// Controller device key.
        controller_key: i32,
        /// Unit number on the controller.
        unit_number: i32,
        /// `diskMode`: `persistent`, `independent_persistent`, …
        disk_mode: &'a str,
    },
    /// Attach the existing disk file at `path` (no file operation).
    Attach {
        /// `[ds] dir/disk.vmdk`.
        path: &'a str,
        /// Its capacity.
        capacity_kb: u64,
        /// Controller device key.
        controller_key: i32,
        /// Unit number on the controller.
        unit_number: i32,
        /// `diskMode`: `persistent`, `independent_persistent`, …
        disk_mode: &'a str,
    },
}

/// A datastore as [`SoapClient::datastores`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreSummary {
    /// Its name, as in `[name] path`.
    pub name: String,
    /// `summary.type`: `VMFS`, `NFS`, `NFS41`, `vsan`, `VVOL`, …
    pub kind: String,
    /// Capacity, when reported.
    pub capacity_bytes: Option<u64>,
    /// Free space, when reported.
    pub free_bytes: Option<u64>,
    /// Mounted and reachable.
    pub accessible: bool,
}

impl SoapClient {
    fn disk_manager(&self) -> Result<MoRef, VsphereError> {
        self.service_content()
            .virtual_disk_manager
            .clone()
            .ok_or_else(|| VsphereError::Malformed {
                method: "RetrieveServiceContent",
                reason: "the server has no VirtualDiskManager".into(),
            })
    }

    /// `VirtualDiskManager.CreateVirtualDisk_Task`: a new `lsiLogic` disk of
    /// `capacity_kb` at `path` (`[ds] dir/disk.vmdk`), thin or (lazy-zeroed) thick, not
    /// attached to any VM.
    ///
    /// # Errors
    ///
    /// `FileAlreadyExists`, `InvalidDatastore`, … as the call's fault or
    /// [`VsphereError::TaskFailed`].
    pub async fn create_virtual_disk(
        &self,
        datacenter: &MoRef,
        path: &str,
        capacity_kb: u64,
        thin: bool,
    ) -> Result<(), VsphereError> {
        let mut w = XmlWriter::new();
        w.text("name", path).moref("datacenter", datacenter);
        w.open_typed("spec", "FileBackedVirtualDiskSpec")
            .text("diskType", if thin { "thin" } else { "preallocated" })
            .text("adapterType", "lsiLogic")
            .value("capacityKb", capacity_kb)
            .close("spec");
        self.run_task("CreateVirtualDisk_Task", &self.disk_manager()?, &w.finish())
            .await
            .map(|_| ())
    }

    /// `VirtualDiskManager.DeleteVirtualDisk_Task`: deletes the disk at `path` (its
    /// descriptor and extents). vSphere refuses a disk a VM uses.
    ///
    /// # Errors
    ///
    /// `FileNotFound`, `FileLocked`, … as the call's fault or [`VsphereError::TaskFailed`].
    pub async fn delete_virtual_disk(
        &self,
        datacenter: &MoRef,
        path: &str,
    ) -> Result<(), VsphereError> {
        let mut w = XmlWriter::new();
        w.text("name", path).moref("datacenter", datacenter);
        self.run_task("DeleteVirtualDisk_Task", &self.disk_manager()?, &w.finish())
            .await
            .map(|_| ())
    }

    fn file_manager(&self) -> Result<MoRef, VsphereError> {
        self.service_content()
            .file_manager
            .clone()
            .ok_or_else(|| VsphereError::Malformed {
                method: "RetrieveServiceContent",
                reason: "the server has no FileManager".into(),
            })
    }

    /// `FileManager.MakeDirectory`: the directory `path` (`[ds] dir`), in a parent that
    /// exists (no `createParentDirectories`). On vSAN a top-level directory is a new
    /// namespace object of that friendly name.
    ///
    /// # Errors
    ///
    /// `FileAlreadyExists` (the directory is there: not made by this call),
    /// `FileNotFound`, `InvalidDatastore`, … as the call's fault.
    pub async fn make_directory(&self, datacenter: &MoRef, path: &str) -> Result<(), VsphereError> {
        let mut w = XmlWriter::new();
        w.text("name", path)
            .moref("datacenter", datacenter)
            .text("createParentDirectories", "false");
        self.invoke("MakeDirectory", &self.file_manager()?, &w.finish())
            .await
            .map(|_| ())
    }

    /// `FileManager.DeleteDatastoreFile_Task` on a directory: deletes it **with everything
    /// it holds**. Only for a directory a restore made for itself (its name carries the
    /// job's id); every other deletion names a file ([`Self::delete_datastore_file`]).
    ///
    /// # Errors
    ///
    /// `FileNotFound`, `CannotDeleteFile`, … as the call's fault or
    /// [`VsphereError::TaskFailed`].
    pub async fn delete_directory(
        &self,
        datacenter: &MoRef,
        path: &str,
    ) -> Result<(), VsphereError> {
        self.delete_path(datacenter, path.trim_end_matches('/'))
            .await
    }

    /// `FileManager.DeleteDatastoreFile_Task` on `path`, a file or a directory.
    async fn delete_path(&self, datacenter: &MoRef, path: &str) -> Result<(), VsphereError> {
        let mut w = XmlWriter::new();
        w.text("name", path).moref("datacenter", datacenter);
        self.run_task(
            "DeleteDatastoreFile_Task",
            &self.file_manager()?,
            &w.finish(),
        )
        .await
        .map(|_| ())
    }

    /// `FileManager.DeleteDatastoreFile_Task`: deletes the file at `path` (a `.vmx` a
    /// restore uploaded; never a directory, which vSphere would delete with all it holds).
    ///
    /// # Errors
    ///
    /// `FileNotFound`, `CannotDeleteFile`, … as the call's fault or
    /// [`VsphereError::TaskFailed`]; [`VsphereError::Config`] for a path ending in `/`.
    pub async fn delete_datastore_file(
        &self,
        datacenter: &MoRef,
        path: &str,
    ) -> Result<(), VsphereError> {
        if path.ends_with('/') || path.ends_with(']') {
            return Err(VsphereError::Config {
                reason: format!("{path} is a directory: the agent deletes files only"),
            });
        }
        self.delete_path(datacenter, path).await
    }

    /// `VirtualDiskManager.SetVirtualDiskUuid`: gives the disk at `path` the backing uuid
    /// it had when it was backed up (VM Operator matches PVC disks on it).
    ///
    /// # Errors
    ///
    /// `FileNotFound`, `InvalidArgument` (a malformed uuid).
    pub async fn set_virtual_disk_uuid(
        &self,
        datacenter: &MoRef,
        path: &str,
        uuid: &str,
    ) -> Result<(), VsphereError> {
        let mut w = XmlWriter::new();
        w.text("name", path)
            .moref("datacenter", datacenter)
            .text("uuid", &ddb_uuid(uuid));
        self.invoke("SetVirtualDiskUuid", &self.disk_manager()?, &w.finish())
            .await
            .map(|_| ())
    }

    /// `Folder.MoveIntoFolder_Task` of VMs.
    ///
    /// # Errors
    ///
    /// `DuplicateName`, `InvalidFolder`, `ManagedObjectNotFound`, …
    pub async fn move_into_folder(
        &self,
        folder: &FolderMoref,
        vms: &[VmMoref],
    ) -> Result<(), VsphereError> {
        let mut w = XmlWriter::new();
        for vm in vms {
            w.moref("list", &vm.moref());
        }
        self.run_task("MoveIntoFolder_Task", &folder.moref(), &w.finish())
            .await
            .map(|_| ())
    }

    /// `ReconfigVM_Task` creating a new disk file at `path` (`[ds] dir/disk.vmdk`, in the
    /// VM's directory) of `capacity_kb`, thin or thick, and attaching it to `vm` as a
    /// persistent disk on controller `controller_key`, unit `unit_number`, in one task
    /// (`fileOperation = create`): no moment with a file created and not attached.
    ///
    /// # Errors
    ///
    /// `FileAlreadyExists`, `InvalidDeviceSpec`, … as [`VsphereError::TaskFailed`].
    pub async fn add_new_disk(
        &self,
        vm: &VmMoref,
        path: &str,
        capacity_kb: u64,
        thin: bool,
        controller_key: i32,
        unit_number: i32,
    ) -> Result<(), VsphereError> {
        self.reconfigure_disks(
            vm,
            &[DiskChange::Create {
                path,
                capacity_kb,
                thin,
                controller_key,
                unit_number,
                disk_mode: "persistent",
            }],
        )
        .await
    }

    /// One `ReconfigVM_Task` with several disk changes, applied by vSphere together (all or
    /// none): removals, new disk files created and attached, existing files attached. A
    /// restore in place swaps a First Class Disk for a new plain disk at the same
    /// controller and unit this way, and its clean-up swaps back.
    ///
    /// # Errors
    ///
    /// `FileAlreadyExists`, `InvalidDeviceSpec` (a unit in use), `FileNotFound`, … as
    /// [`VsphereError::TaskFailed`].
    pub async fn reconfigure_disks(
        &self,
        vm: &VmMoref,
        changes: &[DiskChange<'_>],
    ) -> Result<(), VsphereError> {
        let mut w = XmlWriter::new();
        w.open("spec");
        let mut new_key = -1;
        for change in changes {
            w.open("deviceChange");
            match change {
                DiskChange::Remove { key, destroy } => {
                    w.text("operation", "remove");
                    if *destroy {
                        w.text("fileOperation", "destroy");
                    }
                    w.open_typed("device", "VirtualDisk")
                        .value("key", key.0)
                        .close("device");
                }
                DiskChange::Create {
                    path,
                    capacity_kb,
                    thin,
                    controller_key,
                    unit_number,
                    disk_mode,
                } => {
                    // Element order as the vim25 schema has it (vCenter rejects any other).
                    w.text("operation", "add")
                        .text("fileOperation", "create")
                        .open_typed("device", "VirtualDisk")
                        .value("key", new_key)
                        .open_typed("backing", "VirtualDiskFlatVer2BackingInfo")
                        .text("fileName", path)
                        .text("diskMode", disk_mode)
                        .value("thinProvisioned", *thin)
                        .close("backing")
                        .value("controllerKey", *controller_key)
                        .value("unitNumber", *unit_number)
                        .value("capacityInKB", *capacity_kb)
                        .close("device");
                    new_key -= 1;
                }
                DiskChange::Attach {
                    path,
                    capacity_kb,
                    controller_key,
                    unit_number,
                    disk_mode,
                } => {
                    w.text("operation", "add")
                        .open_typed("device", "VirtualDisk")
                        .value("key", new_key)
                        .open_typed("backing", "VirtualDiskFlatVer2BackingInfo")
                        .text("fileName", path)
                        .text("diskMode", disk_mode)
                        .close("backing")
                        .value("controllerKey", *controller_key)
                        .value("unitNumber", *unit_number)
                        .value("capacityInKB", *capacity_kb)
                        .close("device");
                    new_key -= 1;
                }
            }
            w.close("deviceChange");
        }
        w.close("spec");
        self.run_task("ReconfigVM_Task", &vm.moref(), &w.finish())
            .await
            .map(|_| ())
    }

    /// `ReconfigVM_Task` removing disk `key` from `vm` and, with `destroy`, deleting its file
    /// (`fileOperation = destroy`).
    ///
    /// # Errors
    ///
    /// `InvalidDeviceSpec`, `FileFault`, … as [`VsphereError::TaskFailed`].
    pub async fn detach_disk(
        &self,
        vm: &VmMoref,
        key: DiskKey,
        destroy: bool,
    ) -> Result<(), VsphereError> {
        self.reconfigure_disks(vm, &[DiskChange::Remove { key, destroy }])
            .await
    }

    /// The inventory's only datacenter: its moref and name.
    ///
    /// # Errors
    ///
    /// [`VsphereError::NotFound`] or [`VsphereError::Ambiguous`].
    pub async fn only_datacenter(&self) -> Result<(MoRef, String), VsphereError> {
        let root = self.service_content().root_folder.clone();
        let dcs = self
            .list_in_container(&root, "Datacenter", &["name"], true)
            .await?;
        match dcs.as_slice() {
            [one] => Ok((
                one.obj.clone(),
                one.text("name").unwrap_or_default().to_owned(),
            )),
            [] => Err(VsphereError::NotFound {
                what: "datacenter".into(),
            }),
            _ => Err(VsphereError::Ambiguous {
                what: "datacenter".into(),
                candidates: dcs.iter().map(|o| o.obj.clone()).collect(),
            }),
        }
    }

    /// The datastores of `datacenter`, with what a restore needs to know of each
    /// (`summary`: name, type, free space, accessible).
    ///
    /// # Errors
    ///
    /// As the property collector; [`VsphereError::Malformed`] for a datastore without a
    /// name.
    pub async fn datastores(
        &self,
        datacenter: &MoRef,
    ) -> Result<Vec<DatastoreSummary>, VsphereError> {
        let found = self
            .list_in_container(
                datacenter,
                "Datastore",
                &[
                    "summary.name",
                    "summary.type",
                    "summary.capacity",
                    "summary.freeSpace",
                    "summary.accessible",
                ],
                true,
            )
            .await?;
        found
            .iter()
            .map(|o| {
                let number = |p: &str| o.text(p).and_then(|t| t.trim().parse::<u64>().ok());
                Ok(DatastoreSummary {
                    name: o
                        .text("summary.name")
                        .ok_or_else(|| VsphereError::Malformed {
                            method: "RetrievePropertiesEx",
                            reason: format!("datastore {} has no summary.name", o.obj.value),
                        })?
                        .to_owned(),
                    kind: o.text("summary.type").unwrap_or_default().to_owned(),
                    capacity_bytes: number("summary.capacity"),
                    free_bytes: number("summary.freeSpace"),
                    // Not reported counts as not accessible.
                    accessible: o.text("summary.accessible").map(str::trim) == Some("true"),
                })
            })
            .collect()
    }

    /// The datacenter's root VM folder (`vmFolder`).
    ///
    /// # Errors
    ///
    /// As [`SoapClient::only_datacenter`].
    pub async fn root_vm_folder(&self, datacenter: &MoRef) -> Result<FolderMoref, VsphereError> {
        let o = self.retrieve_object(datacenter, &["vmFolder"]).await?;
        o.get("vmFolder")
            .and_then(|e| e.moref().ok())
            .map(|m| FolderMoref(m.value))
            .ok_or_else(|| VsphereError::NotFound {
                what: format!("vmFolder of {}", datacenter.value),
            })
    }

    /// The resource pool to register a new VM of `namespace` into: `annotated` (the
    /// Supervisor's `vmware-system-resource-pool` annotation of the namespace) when given
    /// and still a pool, else the one pool of the inventory named like the namespace
    /// (VSPHERE.md §A.11). Never another pool: a VM registered in the cluster's root pool
    /// or another namespace's would escape the namespace's resource limits.
    ///
    /// # Errors
    ///
    /// [`VsphereError::NotFound`] when the annotated pool is gone or no pool has the
    /// namespace's name, [`VsphereError::Ambiguous`] when several have it (one per zone:
    /// the annotation decides then).
    pub async fn namespace_resource_pool(
        &self,
        namespace: &str,
        annotated: Option<&str>,
    ) -> Result<ResourcePoolMoref, VsphereError> {
        if let Some(moref) = annotated {
            let pool = MoRef::new("ResourcePool", moref);
            let gone = || VsphereError::NotFound {
                what: format!(
                    "resource pool {moref} (the vmware-system-resource-pool annotation of namespace {namespace:?})"
                ),
            };
            return match self.retrieve_object(&pool, &["name"]).await {
                Ok(o) if o.text("name").is_some() => Ok(ResourcePoolMoref(moref.to_owned())),
                Ok(_) => Err(gone()),
                Err(e)
                    if e.fault()
                        .is_some_and(|f| f.kind == FaultKind::ManagedObjectNotFound) =>
                {
                    Err(gone())
                }
                Err(e) => Err(e),
            };
        }
        let root = self.service_content().root_folder.clone();
        let pools = self
            .list_in_container(&root, "ResourcePool", &["name"], true)
            .await?;
        super::vm::single(
            pools
                .iter()
                .filter(|p| p.text("name") == Some(namespace))
                .map(|p| p.obj.clone()),
            || format!("resource pool named like namespace {namespace:?}"),
        )
        .map(|m| ResourcePoolMoref(m.value))
    }
}

/// A backing uuid (`6000C29a-1b2c-3d4e-5f60-718293a4b5c6`) in the spelling
/// SetVirtualDiskUuid takes (`60 00 C2 9a 1b 2c 3d 4e-5f 60 71 82 93 a4 b5 c6`); other
/// spellings pass through for the server to judge.
#[must_use]
pub fn ddb_uuid(backing_uuid: &str) -> String {
    let hex: String = backing_uuid
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .collect();
    if hex.len() != 32 || !hex.is_ascii() {
        return backing_uuid.to_owned();
    }
    let pairs: Vec<&str> = (0..16).map(|i| &hex[2 * i..2 * i + 2]).collect();
    format!("{}-{}", pairs[..8].join(" "), pairs[8..].join(" "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ddb_uuid_spelling() {
        assert_eq!(
            super::ddb_uuid("6000C29a-1b2c-3d4e-5f60-718293a4b5c6"),
            "60 00 C2 9a 1b 2c 3d 4e-5f 60 71 82 93 a4 b5 c6"
        );
        assert_eq!(super::ddb_uuid("nonsense"), "nonsense");
    }
}
