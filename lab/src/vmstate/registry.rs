//! Inventory membership of VMs: generic state updates, UnregisterVM (files kept),
//! RegisterVM (state rebuilt from the `.vmx`, as ESXi does) and Destroy (files deleted).

use std::collections::BTreeMap;
use std::fs;

use super::lab::ds_err;
use super::model::{PowerState, VmDisk, VmState};
use super::{DiskKey, Lab, LabError, VmMoref};
use crate::datastore::{DatastorePath, DiskChain, OpenMode};

/// `.vmx` keys that are hardware configuration, not ExtraConfig.
fn is_hardware_key(key: &str) -> bool {
    const KEYS: &[&str] = &[
        ".encoding",
        "config.version",
        "virtualHW.version",
        "displayName",
        "uuid.bios",
        "vc.uuid",
        "ctkEnabled",
        "guestOS",
        "numvcpus",
        "memsize",
    ];
    KEYS.contains(&key) || key.starts_with("scsi")
}

impl Lab {
    /// Locked read-modify-write of `lab.json`; returns the new settings.
    ///
    /// # Errors
    /// I/O or JSON errors.
    pub fn update_settings(
        &self,
        f: impl FnOnce(&mut super::LabSettings),
    ) -> Result<super::LabSettings, LabError> {
        let _g = self.lock()?;
        let mut s = self.settings()?;
        f(&mut s);
        self.write_json(&self.root().join("lab.json"), &s)?;
        Ok(s)
    }

    /// Locked read-modify-write of a VM's state through `f`; rewrites the `.vmx`.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`], `f`'s error, I/O errors.
    pub fn modify_vm<T>(
        &self,
        vm: &VmMoref,
        f: impl FnOnce(&mut VmState) -> Result<T, LabError>,
    ) -> Result<T, LabError> {
        self.update(vm, |state| {
            let out = f(state)?;
            self.write_vmx(state)?;
            Ok(out)
        })
    }

    /// UnregisterVM: forgets the VM, keeps its files.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`], I/O errors.
    pub fn unregister_vm(&self, vm: &VmMoref) -> Result<VmState, LabError> {
        let _g = self.lock()?;
        let state = self.vm(vm)?;
        let p = self.vm_path(vm);
        fs::remove_file(&p).map_err(|source| LabError::Io {
            op: "remove",
            path: p,
            source,
        })?;
        Ok(state)
    }

    /// Destroy: forgets the VM and deletes its files and its directory on the datastore,
    /// except its First Class Disks (a PVC's volume), which stay where they are. Refused, as ESXi
    /// refuses it ("file is locked"), while one of its disks is open for writing, through
    /// VDDK or otherwise.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`], [`LabError::Datastore`] with [`DatastoreError::Busy`]
    /// for a disk in use, I/O errors.
    ///
    /// [`DatastoreError::Busy`]: crate::datastore::DatastoreError::Busy
    pub fn destroy_vm(&self, vm: &VmMoref) -> Result<(), LabError> {
        let guard = self.lock()?;
        let state = self.vm(vm)?;
        for disk in &state.disks {
            // Only a writer's lock refuses; a missing or broken file is deleted all the same.
            if let Err(e @ crate::datastore::DatastoreError::Busy { .. }) =
                DiskChain::open(self.root(), &disk.file_name, OpenMode::ReadWrite)
            {
                return Err(ds_err(vm)(e));
            }
        }
        // Every file of its disks goes, as ESXi deletes them, also those outside the VM's
        // directory (a disk in a folder of its own): top of each chain first. A First Class
        // Disk stays, with its whole chain: CNS marks a PVC's volume keepAfterDeleteVm, so it
        // outlives the VM (the PVC still names it).
        let mut doomed: Vec<DatastorePath> = Vec::new();
        let mut kept: Vec<DatastorePath> = Vec::new();
        for d in &state.disks {
            let Ok(chain) = DiskChain::open(self.root(), &d.file_name, OpenMode::ReadOnly) else {
                continue;
            };
            let links = chain.link_paths();
            if links.iter().any(|p| self.fcd_id(p).is_some()) {
                kept.extend(links);
            } else {
                doomed.extend(links);
            }
        }
        drop(guard);
        let state = self.unregister_vm(vm)?;
        for path in &doomed {
            match crate::datastore::delete_disk(self.root(), path) {
                Ok(()) | Err(crate::datastore::DatastoreError::NotFound { .. }) => {}
                Err(e) => return Err(ds_err(vm)(e)),
            }
        }
        let vmx = state.vmx_path.resolve(self.root());
        let Some(dir) = vmx.parent() else {
            return Ok(());
        };
        // The kept disks' files in the VM's directory (`<stem>.vmdk`, `<stem>-flat.vmdk`,
        // `<stem>-ctk.vmdk`, …) stay with the directory; everything else goes.
        let stems: Vec<String> = kept
            .iter()
            .filter(|p| state.vmx_path.sibling(p.file_name()).ok().as_ref() == Some(*p))
            .map(|p| p.file_name().trim_end_matches(".vmdk").to_owned())
            .collect();
        let io = |op: &'static str, path: &std::path::Path| {
            let path = path.to_owned();
            move |source| LabError::Io { op, path, source }
        };
        if stems.is_empty() {
            fs::remove_dir_all(dir).map_err(io("remove directory", dir))?;
            return Ok(());
        }
        for entry in fs::read_dir(dir).map_err(io("read directory", dir))? {
            let entry = entry.map_err(io("read directory", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let of_kept = stems.iter().any(|s| {
                name.strip_prefix(s.as_str()).is_some_and(|rest| {
                    rest == ".vmdk" || (rest.starts_with('-') && rest.ends_with(".vmdk"))
                })
            });
            if !of_kept {
                let p = entry.path();
                let r = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                r.map_err(io("remove", &p))?;
            }
        }
        Ok(())
    }

    /// RegisterVM: a new VM (new moref, powered off, no snapshots) from the `.vmx` at
    /// `vmx_path`: name, uuids, guest, CBT flag, disks (`scsi0:N.fileName`) and every
    /// other key as ExtraConfig.
    ///
    /// # Errors
    /// [`LabError::VmxNotFound`], [`LabError::AlreadyRegistered`],
    /// [`LabError::InvalidVmx`], datastore errors for its disks.
    pub fn register_vm(
        &self,
        vmx_path: &DatastorePath,
        name: Option<&str>,
        folder: &str,
    ) -> Result<VmMoref, LabError> {
        let _g = self.lock()?;
        if let Some(vm) = self.vms()?.into_iter().find(|v| &v.vmx_path == vmx_path) {
            return Err(LabError::AlreadyRegistered {
                vmx: vmx_path.clone(),
                vm: vm.moref,
            });
        }
        let file = vmx_path.resolve(self.root());
        let text =
            fs::read_to_string(&file).map_err(|_| LabError::VmxNotFound(vmx_path.clone()))?;
        let entries = parse_vmx(&text);
        let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let invalid = |reason: &str| LabError::InvalidVmx {
            vmx: vmx_path.clone(),
            reason: reason.to_owned(),
        };
        let moref = VmMoref(format!("vm-{}", self.next_id(false)?));
        let mut units: BTreeMap<i32, String> = BTreeMap::new();
        for (k, v) in &entries {
            if let Some(unit) = k
                .strip_prefix("scsi0:")
                .and_then(|r| r.strip_suffix(".fileName"))
            {
                let unit: i32 = unit.parse().map_err(|_| invalid("bad scsi0 unit"))?;
                units.insert(unit, v.clone());
            }
        }
        let mut disks = Vec::new();
        for (i, (unit, file_name)) in (0i32..).zip(units) {
            let path = vmx_path
                .resolve_vmx_name(&file_name)
                .map_err(ds_err(&moref))?;
            let chain =
                DiskChain::open(self.root(), &path, OpenMode::ReadOnly).map_err(ds_err(&moref))?;
            disks.push(VmDisk {
                key: DiskKey(2000 + i),
                label: format!("Hard disk {}", i + 1),
                controller_key: 1000,
                unit_number: unit,
                capacity_bytes: chain.capacity_bytes(),
                file_name: path,
                uuid: chain
                    .uuid()
                    .and_then(crate::datastore::backing_uuid)
                    .unwrap_or_default(),
                thin: true,
                mode: get(&format!("scsi0:{unit}.mode"))
                    .map_or_else(|| "persistent".into(), |m| m.replace('-', "_")),
            });
        }
        let state = VmState {
            moref: moref.clone(),
            name: name
                .map(str::to_owned)
                .or_else(|| get("displayName").cloned())
                .ok_or_else(|| invalid("no displayName"))?,
            folder: folder.to_owned(),
            vmx_path: vmx_path.clone(),
            bios_uuid: get("uuid.bios")
                .cloned()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            instance_uuid: get("vc.uuid")
                .cloned()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            power_state: PowerState::PoweredOff,
            change_tracking_enabled: get("ctkEnabled").is_some_and(|v| v == "true"),
            disks,
            snapshots: Vec::new(),
            current_snapshot: None,
            disabled_methods: Vec::new(),
            extra_config: entries
                .iter()
                .filter(|(k, _)| !is_hardware_key(k))
                .cloned()
                .collect(),
            guest_id: get("guestOS").cloned(),
            num_cpus: get("numvcpus").and_then(|v| v.parse().ok()),
            memory_mb: get("memsize").and_then(|v| v.parse().ok()),
            consolidation_needed: false,
            leave_next_removal_unconsolidated: false,
            failing_task_polls: 0,
            failing_enable_methods: 0,
            next_snapshot_delay_ms: 0,
            created_disks_get_their_own_uuid: false,
            fail_next_snapshot: false,
            vddk_connection_losses: 0,
            vddk_reads_before_loss: 0,
            tools_not_running: false,
            lose_next_snapshot_removal: false,
            failing_snapshot_removals: 0,
        };
        self.write_vmx(&state)?;
        self.write_json(&self.vm_path(&moref), &state)?;
        Ok(moref)
    }
}

impl Lab {
    /// VirtualDiskManager.CreateVirtualDisk: a new base disk at `path` (no change
    /// tracking; a VM enables it), in a directory that exists, as vSphere makes none.
    ///
    /// # Errors
    /// Datastore errors ([`crate::datastore::DatastoreError::AlreadyExists`],
    /// [`crate::datastore::DatastoreError::NotFound`] for a missing directory, capacity).
    pub fn create_virtual_disk(
        &self,
        path: &DatastorePath,
        capacity_bytes: u64,
        thin: bool,
    ) -> Result<(), LabError> {
        let _g = self.lock()?;
        // vSphere makes no directories here: a caller makes them first (MakeDirectory).
        if let Some(dir) = path.resolve(self.root()).parent()
            && !dir.is_dir()
        {
            return Err(LabError::Datastore {
                vm: "lab".into(),
                source: crate::datastore::DatastoreError::NotFound {
                    path: dir.to_owned(),
                },
            });
        }
        let options = crate::datastore::DiskOptions {
            thin,
            change_tracking: false,
            ..crate::datastore::DiskOptions::default()
        };
        crate::datastore::create_disk(self.root(), path, capacity_bytes, &options).map_err(
            |source| LabError::Datastore {
                vm: "lab".into(),
                source,
            },
        )?;
        // A new file is no First Class Disk, whatever a deleted one there was.
        self.forget_fcds_locked(&[path])
    }

    /// VirtualDiskManager.SetVirtualDiskUuid.
    ///
    /// # Errors
    /// Datastore errors (invalid uuid, disk not found).
    pub fn set_disk_uuid(&self, path: &DatastorePath, uuid: &str) -> Result<(), LabError> {
        let _g = self.lock()?;
        crate::datastore::set_disk_uuid(self.root(), path, uuid).map_err(|source| {
            LabError::Datastore {
                vm: "lab".into(),
                source,
            }
        })
    }

    /// Folder.MoveIntoFolder for one VM: its inventory folder becomes `folder`.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`], I/O errors.
    pub fn move_vm(&self, vm: &VmMoref, folder: &str) -> Result<(), LabError> {
        self.modify_vm(vm, |s| {
            folder.clone_into(&mut s.folder);
            Ok(())
        })
    }

    /// ReconfigVM_Task adding an existing disk file: a new device (next key, next free
    /// unit on the first SCSI controller) backed by `path`; returns its key.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`], datastore errors (the file is missing or unreadable).
    pub fn attach_disk(&self, vm: &VmMoref, path: &DatastorePath) -> Result<DiskKey, LabError> {
        self.attach_disk_at(vm, path, None)
    }

    /// [`Lab::attach_disk`] at controller `at.0`, unit `at.1` when given (ReconfigVM's
    /// `controllerKey`/`unitNumber`), refused when another device uses that unit.
    ///
    /// # Errors
    /// As [`Lab::attach_disk`]; [`LabError::UnitInUse`].
    pub fn attach_disk_at(
        &self,
        vm: &VmMoref,
        path: &DatastorePath,
        at: Option<(i32, i32)>,
    ) -> Result<DiskKey, LabError> {
        let chain = DiskChain::open(self.root(), path, OpenMode::ReadOnly).map_err(ds_err(vm))?;
        let (capacity, uuid) = (
            chain.capacity_bytes(),
            chain
                .uuid()
                .and_then(crate::datastore::backing_uuid)
                .unwrap_or_default(),
        );
        drop(chain);
        self.modify_vm(vm, |s| {
            let key = DiskKey(s.disks.iter().map(|d| d.key.0).max().unwrap_or(1999) + 1);
            let (controller, unit) = match at {
                Some((controller, unit)) => {
                    if let Some(d) = s
                        .disks
                        .iter()
                        .find(|d| d.controller_key == controller && d.unit_number == unit)
                    {
                        return Err(LabError::UnitInUse {
                            vm: vm.clone(),
                            controller,
                            unit,
                            disk: d.key,
                        });
                    }
                    (controller, unit)
                }
                None => (
                    1000,
                    (0..)
                        .find(|u| *u != 7 && !s.disks.iter().any(|d| d.unit_number == *u))
                        .unwrap_or(0),
                ),
            };
            s.disks.push(VmDisk {
                key,
                label: format!("Hard disk {}", s.disks.len() + 1),
                controller_key: controller,
                unit_number: unit,
                capacity_bytes: capacity,
                file_name: path.clone(),
                uuid,
                thin: true,
                mode: "persistent".into(),
            });
            Ok(key)
        })
    }

    /// ReconfigVM `remove` of disk `key`; with `destroy` (`fileOperation = destroy`) its
    /// file is deleted too.
    ///
    /// # Errors
    /// [`LabError::DiskNotFound`], datastore errors.
    pub fn detach_disk(&self, vm: &VmMoref, key: DiskKey, destroy: bool) -> Result<(), LabError> {
        let path = self.modify_vm(vm, |s| {
            let i = s.disks.iter().position(|d| d.key == key).ok_or_else(|| {
                LabError::DiskNotFound {
                    vm: vm.clone(),
                    disk: key,
                }
            })?;
            Ok(s.disks.remove(i).file_name)
        })?;
        if destroy {
            let _g = self.lock()?;
            crate::datastore::delete_disk(self.root(), &path).map_err(ds_err(vm))?;
            self.forget_fcds_locked(&[&path])?;
        }
        Ok(())
    }
}

/// `key = "value"` lines (`|22` is an escaped quote, as VMware writes it).
fn parse_vmx(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.replace("|22", "\"")))
        })
        .filter(|(k, _)| !k.is_empty() && !k.starts_with('#'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmstate::NewDisk;

    #[test]
    fn unregister_register_destroy() {
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab::create(dir.path()).unwrap();
        let vm = lab
            .create_vm(
                "r1",
                "/dc1/vm",
                &[NewDisk {
                    capacity_bytes: 1 << 20,
                    thin: true,
                    fcd: false,
                }],
            )
            .unwrap();
        lab.modify_vm(&vm, |s| {
            s.extra_config.push(("vmservice.a".into(), "x\"y".into()));
            s.guest_id = Some("otherGuest64".into());
            Ok(())
        })
        .unwrap();
        let before = lab.vm(&vm).unwrap();
        assert!(matches!(
            lab.register_vm(&before.vmx_path, None, "/dc1/vm"),
            Err(LabError::AlreadyRegistered { .. })
        ));
        lab.unregister_vm(&vm).unwrap();
        assert!(matches!(lab.vm(&vm), Err(LabError::VmNotFound(_))));
        let again = lab.register_vm(&before.vmx_path, None, "/dc1/f").unwrap();
        let after = lab.vm(&again).unwrap();
        assert_ne!(again, vm);
        assert_eq!(after.name, "r1");
        assert_eq!(after.bios_uuid, before.bios_uuid);
        assert_eq!(after.extra_config, before.extra_config);
        assert_eq!(after.disks[0].file_name, before.disks[0].file_name);
        assert_eq!(after.disks[0].capacity_bytes, 1 << 20);
        let missing = DatastorePath::parse("[ds1] nope/nope.vmx").unwrap();
        assert!(matches!(
            lab.register_vm(&missing, None, "/dc1/vm"),
            Err(LabError::VmxNotFound(_))
        ));
        lab.destroy_vm(&again).unwrap();
        assert!(!before.vmx_path.resolve(dir.path()).exists());
    }
}
