//! [`Lab`]: the facade over a lab root — settings, per-VM state files, and the VM-level
//! operations (snapshots, guest writes, CBT, PrepareForAccess/EndAccess).

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::model::{
    DisabledMethod, LabSettings, PowerState, SnapshotDisk, SnapshotInfo, VmDisk, VmState,
};
use super::{DiskKey, SnapshotMoref, VmMoref};
use crate::datastore::{
    self, ChangeId, DatastoreError, DatastorePath, DiskChain, DiskOptions, OpenMode, write_atomic,
};

/// The method PrepareForAccess disables.
pub const RELOCATE_METHOD: &str = "RelocateVM_Task";

/// Errors of [`Lab`] operations.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A datastore operation failed.
    #[error("datastore operation on {vm}")]
    Datastore {
        /// The VM (or `lab`).
        vm: String,
        /// The cause.
        #[source]
        source: DatastoreError,
    },
    /// A host file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON state file is unreadable.
    #[error("state file {path}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// `Lab::create` on a root that already has `lab.json`.
    #[error("a lab already exists at {0}")]
    AlreadyExists(PathBuf),
    /// No such VM.
    #[error("vm {0} not found")]
    VmNotFound(VmMoref),
    /// No such snapshot on the VM.
    #[error("snapshot {snapshot} not found on {vm}")]
    SnapshotNotFound {
        /// The VM.
        vm: VmMoref,
        /// The snapshot.
        snapshot: SnapshotMoref,
    },
    /// RegisterVM of a `.vmx` that does not exist.
    #[error("vmx file {0} not found")]
    VmxNotFound(DatastorePath),
    /// RegisterVM of a `.vmx` that a VM of the inventory already uses.
    #[error("vmx file {vmx} is already registered as {vm}")]
    AlreadyRegistered {
        /// The file.
        vmx: DatastorePath,
        /// The VM using it.
        vm: VmMoref,
    },
    /// A `.vmx` the lab cannot read.
    #[error("vmx file {vmx}: {reason}")]
    InvalidVmx {
        /// The file.
        vmx: DatastorePath,
        /// What is wrong.
        reason: String,
    },
    /// A disk file a VM still uses (CNS does not delete an attached volume).
    #[error("disk {disk} is attached to {vm}")]
    DiskInUse {
        /// The file.
        disk: String,
        /// The VM using it.
        vm: VmMoref,
    },
    /// ReconfigVM adding a disk at a controller unit another device uses.
    #[error("unit {unit} of controller {controller} of {vm} is in use by disk {disk}")]
    UnitInUse {
        /// The VM.
        vm: VmMoref,
        /// The controller key.
        controller: i32,
        /// The unit number.
        unit: i32,
        /// The device there.
        disk: DiskKey,
    },
    /// No such disk on the VM.
    #[error("disk {disk} not found on {vm}")]
    DiskNotFound {
        /// The VM.
        vm: VmMoref,
        /// The device key.
        disk: DiskKey,
    },
}

pub(super) fn ds_err(vm: &VmMoref) -> impl FnOnce(DatastoreError) -> LabError + '_ {
    move |source| LabError::Datastore {
        vm: vm.to_string(),
        source,
    }
}

/// Capacity and provisioning of a disk for [`Lab::create_vm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewDisk {
    /// Capacity in bytes (multiple of 512).
    pub capacity_bytes: u64,
    /// Thin provisioned.
    pub thin: bool,
    /// Made by CNS for a PVC: a First Class Disk file in the datastore's `fcd/` folder
    /// (`fcd/<32 hex>.vmdk`), not in the VM's directory, so that it outlives the VM.
    pub fcd: bool,
}

/// A lab rooted at a directory. Cheap to open; every mutation takes the lab-wide
/// exclusive advisory lock `<root>/lab.lock` and rewrites state files atomically, so
/// several handles in several processes can work on the same lab.
#[derive(Debug, Clone)]
pub struct Lab {
    root: PathBuf,
}

/// Holds `lab.lock` until dropped.
pub(super) struct LockGuard(#[allow(dead_code, reason = "held for its lock")] File);

impl Lab {
    /// Creates a new lab: `lab.json`, `vms/`, and the default datastore `ds1`.
    ///
    /// # Errors
    /// [`LabError::AlreadyExists`], I/O errors.
    pub fn create(root: &Path) -> Result<Self, LabError> {
        let lab = Self {
            root: root.to_owned(),
        };
        for d in [root.join("vms"), datastore::datastore_dir(root, "ds1")] {
            fs::create_dir_all(&d).map_err(|source| LabError::Io {
                op: "create directory",
                path: d,
                source,
            })?;
        }
        let _g = lab.lock()?;
        if lab.settings_path().exists() {
            return Err(LabError::AlreadyExists(root.to_owned()));
        }
        let digest = [
            uuid::Uuid::new_v4().into_bytes(),
            uuid::Uuid::new_v4().into_bytes(),
        ]
        .concat();
        let thumbprint = digest[..20]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let settings = LabSettings {
            server_name: "vcenter.lab.local".into(),
            user: "administrator@vsphere.local".into(),
            password: "lab-password".into(),
            thumbprint,
            default_datastore: "ds1".into(),
            next_vm: 1,
            next_snapshot: 1,
            vcenter_url: None,
            clock_offset_secs: 0,
            failing_current_time: 0,
            datastore_free_bytes: std::collections::BTreeMap::new(),
            datastore_types: std::collections::BTreeMap::new(),
            datastores_inaccessible: std::collections::BTreeSet::new(),
        };
        lab.write_json(&lab.settings_path(), &settings)?;
        Ok(lab)
    }

    /// Opens an existing lab.
    ///
    /// # Errors
    /// I/O errors when `lab.json` is missing or unreadable.
    pub fn open(root: &Path) -> Result<Self, LabError> {
        let lab = Self {
            root: root.to_owned(),
        };
        lab.settings()?;
        Ok(lab)
    }

    /// The lab root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn settings_path(&self) -> PathBuf {
        self.root.join("lab.json")
    }

    pub(super) fn vm_path(&self, vm: &VmMoref) -> PathBuf {
        self.root.join("vms").join(format!("{vm}.json"))
    }

    pub(super) fn lock(&self) -> Result<LockGuard, LabError> {
        let p = self.root.join("lab.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|source| LabError::Io {
                op: "open",
                path: p.clone(),
                source,
            })?;
        f.lock().map_err(|source| LabError::Io {
            op: "lock",
            path: p,
            source,
        })?;
        Ok(LockGuard(f))
    }

    pub(super) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LabError> {
        let bytes = fs::read(path).map_err(|source| LabError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| LabError::Json {
            path: path.to_owned(),
            source,
        })
    }

    pub(super) fn write_json<T: serde::Serialize>(
        &self,
        path: &Path,
        value: &T,
    ) -> Result<(), LabError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| LabError::Json {
            path: path.to_owned(),
            source,
        })?;
        write_atomic(path, &bytes).map_err(|source| LabError::Datastore {
            vm: "lab".into(),
            source,
        })
    }

    /// The lab settings.
    ///
    /// # Errors
    /// I/O or JSON errors.
    pub fn settings(&self) -> Result<LabSettings, LabError> {
        Self::read_json(&self.settings_path())
    }

    /// A VM's state.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`], JSON errors.
    pub fn vm(&self, vm: &VmMoref) -> Result<VmState, LabError> {
        // Read without the lab's lock: a VM destroyed meanwhile is simply not found.
        match Self::read_json(&self.vm_path(vm)) {
            Err(LabError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(LabError::VmNotFound(vm.clone()))
            }
            other => other,
        }
    }

    /// Every VM, ordered by moref.
    ///
    /// # Errors
    /// I/O or JSON errors.
    pub fn vms(&self) -> Result<Vec<VmState>, LabError> {
        let dir = self.root.join("vms");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|source| LabError::Io {
            op: "read directory",
            path: dir.clone(),
            source,
        })? {
            let p = e
                .map_err(|source| LabError::Io {
                    op: "read directory",
                    path: dir.clone(),
                    source,
                })?
                .path();
            if p.extension().is_some_and(|x| x == "json") {
                // Read without the lab's lock (some callers hold it): a VM destroyed since
                // the listing is gone, not an error.
                match Self::read_json::<VmState>(&p) {
                    Ok(vm) => out.push(vm),
                    Err(LabError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        out.sort_by(|a, b| a.moref.cmp(&b.moref));
        Ok(out)
    }

    /// The first VM with this name.
    ///
    /// # Errors
    /// I/O or JSON errors.
    pub fn find_vm_by_name(&self, name: &str) -> Result<Option<VmState>, LabError> {
        Ok(self.vms()?.into_iter().find(|v| v.name == name))
    }

    /// Locked read-modify-write of one VM's state.
    pub(super) fn update<T>(
        &self,
        vm: &VmMoref,
        f: impl FnOnce(&mut VmState) -> Result<T, LabError>,
    ) -> Result<T, LabError> {
        let _g = self.lock()?;
        let mut state = self.vm(vm)?;
        let out = f(&mut state)?;
        self.write_json(&self.vm_path(vm), &state)?;
        Ok(out)
    }

    pub(super) fn next_id(&self, snapshot: bool) -> Result<u64, LabError> {
        let mut s = self.settings()?;
        let counter = if snapshot {
            &mut s.next_snapshot
        } else {
            &mut s.next_vm
        };
        let id = *counter;
        *counter += 1;
        self.write_json(&self.settings_path(), &s)?;
        Ok(id)
    }

    /// Creates a powered-off VM with the given disks (`[ds] <name>/disk-<i>.vmdk`, CBT
    /// off) and a minimal `.vmx`.
    ///
    /// # Errors
    /// Datastore errors (e.g. the VM directory's disks already exist), I/O errors.
    pub fn create_vm(
        &self,
        name: &str,
        folder: &str,
        disks: &[NewDisk],
    ) -> Result<VmMoref, LabError> {
        let _g = self.lock()?;
        let settings = self.settings()?;
        let moref = VmMoref(format!("vm-{}", self.next_id(false)?));
        let ds = &settings.default_datastore;
        let vmx_path =
            DatastorePath::new(ds, &format!("{name}/{name}.vmx")).map_err(ds_err(&moref))?;
        let mut vm_disks = Vec::new();
        for (i, d) in disks.iter().enumerate() {
            let path = if d.fcd {
                DatastorePath::new(ds, &format!("fcd/{}.vmdk", uuid::Uuid::new_v4().simple()))
            } else {
                vmx_path.sibling(&format!("disk-{i}.vmdk"))
            }
            .map_err(ds_err(&moref))?;
            let options = DiskOptions {
                thin: d.thin,
                change_tracking: false,
                ..DiskOptions::default()
            };
            datastore::create_disk(&self.root, &path, d.capacity_bytes, &options)
                .map_err(ds_err(&moref))?;
            self.forget_fcds_locked(&[&path])?;
            let chain =
                DiskChain::open(&self.root, &path, OpenMode::ReadOnly).map_err(ds_err(&moref))?;
            let uuid: String = chain
                .uuid()
                .unwrap_or_default()
                .chars()
                .filter(|c| !matches!(c, ' ' | '-'))
                .collect();
            let n = i32::try_from(i).expect("fewer than 2^31 disks");
            vm_disks.push(VmDisk {
                key: DiskKey(2000 + n),
                label: format!("Hard disk {}", n + 1),
                controller_key: 1000,
                unit_number: if n >= 7 { n + 1 } else { n },
                capacity_bytes: d.capacity_bytes,
                file_name: path,
                uuid: format!(
                    "{}-{}-{}-{}-{}",
                    &uuid[..8],
                    &uuid[8..12],
                    &uuid[12..16],
                    &uuid[16..20],
                    &uuid[20..]
                ),
                thin: d.thin,
                mode: "persistent".into(),
            });
        }
        let state = VmState {
            moref: moref.clone(),
            name: name.to_owned(),
            folder: folder.to_owned(),
            vmx_path,
            bios_uuid: uuid::Uuid::new_v4().to_string(),
            instance_uuid: uuid::Uuid::new_v4().to_string(),
            power_state: PowerState::PoweredOff,
            change_tracking_enabled: false,
            disks: vm_disks,
            snapshots: Vec::new(),
            current_snapshot: None,
            disabled_methods: Vec::new(),
            extra_config: Vec::new(),
            guest_id: None,
            num_cpus: None,
            memory_mb: None,
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

    pub(super) fn write_vmx(&self, s: &VmState) -> Result<(), LabError> {
        let mut t = String::from(
            ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"19\"\n",
        );
        t.push_str(&format!(
            "displayName = \"{}\"\nuuid.bios = \"{}\"\nvc.uuid = \"{}\"\n",
            s.name, s.bios_uuid, s.instance_uuid
        ));
        if let Some(g) = &s.guest_id {
            t.push_str(&format!("guestOS = \"{g}\"\n"));
        }
        if let Some(n) = s.num_cpus {
            t.push_str(&format!("numvcpus = \"{n}\"\n"));
        }
        if let Some(m) = s.memory_mb {
            t.push_str(&format!("memsize = \"{m}\"\n"));
        }
        t.push_str(&format!(
            "ctkEnabled = \"{}\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"lsilogic\"\n",
            s.change_tracking_enabled
        ));
        for d in &s.disks {
            let dev = format!("scsi0:{}", d.unit_number);
            t.push_str(&format!(
                "{dev}.present = \"TRUE\"\n{dev}.fileName = \"{}\"\n",
                s.vmx_path.vmx_name_of(&d.file_name)
            ));
            t.push_str(&format!(
                "{dev}.ctkEnabled = \"{}\"\n",
                s.change_tracking_enabled
            ));
            if let Some(mode) = d.vmx_mode() {
                t.push_str(&format!("{dev}.mode = \"{mode}\"\n"));
            }
        }
        for (k, v) in &s.extra_config {
            t.push_str(&format!("{k} = \"{}\"\n", v.replace('"', "|22")));
        }
        write_atomic(&s.vmx_path.resolve(&self.root), t.as_bytes()).map_err(ds_err(&s.moref))
    }

    fn disk_index(state: &VmState, disk: DiskKey) -> Result<usize, LabError> {
        state
            .disks
            .iter()
            .position(|d| d.key == disk)
            .ok_or_else(|| LabError::DiskNotFound {
                vm: state.moref.clone(),
                disk,
            })
    }

    /// Takes a snapshot: every disk gets a redo log; records the frozen files and their
    /// changeIds.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`], datastore errors.
    pub fn create_snapshot(
        &self,
        vm: &VmMoref,
        name: &str,
        description: &str,
    ) -> Result<SnapshotMoref, LabError> {
        self.create_snapshot_quiescing(vm, name, description, false)
    }

    /// [`Self::create_snapshot`], quiescing the guest when `quiesce` is asked and can be
    /// done: the VM powered on with VMware Tools running (vSphere ignores the flag
    /// otherwise, and the snapshot's `quiesced` says so).
    ///
    /// # Errors
    /// As [`Self::create_snapshot`].
    pub fn create_snapshot_quiescing(
        &self,
        vm: &VmMoref,
        name: &str,
        description: &str,
        quiesce: bool,
    ) -> Result<SnapshotMoref, LabError> {
        let _g = self.lock()?;
        let mut state = self.vm(vm)?;
        let moref = SnapshotMoref(format!("snapshot-{}", self.next_id(true)?));
        let mut disks = Vec::new();
        for d in &mut state.disks {
            let child = datastore::create_child(&self.root, &d.file_name).map_err(ds_err(vm))?;
            disks.push(SnapshotDisk {
                key: d.key,
                file_name: d.file_name.clone(),
                change_id: child.frozen_change_id,
            });
            d.file_name = child.child;
        }
        state.snapshots.push(SnapshotInfo {
            moref: moref.clone(),
            name: name.to_owned(),
            description: description.to_owned(),
            create_time_unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            parent: state.current_snapshot.clone(),
            disks,
            quiesced: quiesce
                && state.power_state == PowerState::PoweredOn
                && !state.tools_not_running,
        });
        state.current_snapshot = Some(moref.clone());
        self.write_vmx(&state)?;
        self.write_json(&self.vm_path(vm), &state)?;
        Ok(moref)
    }

    /// One snapshot of a VM.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`], [`LabError::SnapshotNotFound`].
    pub fn snapshot(
        &self,
        vm: &VmMoref,
        snapshot: &SnapshotMoref,
    ) -> Result<SnapshotInfo, LabError> {
        self.vm(vm)?
            .snapshots
            .into_iter()
            .find(|s| &s.moref == snapshot)
            .ok_or_else(|| LabError::SnapshotNotFound {
                vm: vm.clone(),
                snapshot: snapshot.clone(),
            })
    }

    /// Removes a snapshot and consolidates: for each disk the child of the file the
    /// snapshot froze is merged into it (ESXi's rule), and whatever named that child (the
    /// next snapshot or the current disk) now names the merged file. Safe to re-run after
    /// a crash: the state file is only updated after every disk is consolidated.
    ///
    /// Refused, as vCenter cannot consolidate a disk another VM holds open, while a file
    /// the snapshot froze is attached to another VM: a backup proxy's hot-add (VDDK's
    /// hotadd transport) that its process never detached.
    ///
    /// # Errors
    /// [`LabError::SnapshotNotFound`], [`LabError::DiskInUse`] naming the other VM,
    /// datastore errors.
    pub fn remove_snapshot(&self, vm: &VmMoref, snapshot: &SnapshotMoref) -> Result<(), LabError> {
        let frozen = self.snapshot(vm, snapshot)?.disks;
        for other in self.vms()?.iter().filter(|o| &o.moref != vm) {
            if let Some(d) = other
                .disks
                .iter()
                .find(|d| frozen.iter().any(|f| f.file_name == d.file_name))
            {
                return Err(LabError::DiskInUse {
                    disk: d.file_name.to_string(),
                    vm: other.moref.clone(),
                });
            }
        }
        self.update(vm, |state| {
            let idx = state
                .snapshots
                .iter()
                .position(|s| &s.moref == snapshot)
                .ok_or_else(|| LabError::SnapshotNotFound {
                    vm: vm.clone(),
                    snapshot: snapshot.clone(),
                })?;
            let removed = state.snapshots[idx].clone();
            for sd in &removed.disks {
                let di = Self::disk_index(state, sd.key)?;
                let child = match state.snapshots.get(idx + 1) {
                    Some(next) => next
                        .disks
                        .iter()
                        .find(|d| d.key == sd.key)
                        .map(|d| d.file_name.clone()),
                    None => None,
                }
                .unwrap_or_else(|| state.disks[di].file_name.clone());
                datastore::consolidate(&self.root, &child).map_err(ds_err(vm))?;
                if let Some(next) = state.snapshots.get_mut(idx + 1) {
                    for d in next.disks.iter_mut().filter(|d| d.key == sd.key) {
                        d.file_name = sd.file_name.clone();
                    }
                } else {
                    state.disks[di].file_name = sd.file_name.clone();
                }
            }
            if let Some(next) = state.snapshots.get_mut(idx + 1) {
                next.parent = removed.parent.clone();
            }
            if state.current_snapshot.as_ref() == Some(snapshot) {
                state.current_snapshot = removed.parent.clone();
            }
            state.snapshots.remove(idx);
            if std::mem::take(&mut state.leave_next_removal_unconsolidated) {
                state.consolidation_needed = true;
            }
            self.write_vmx(state)
        })
    }

    /// Makes the next snapshot removal on `vm` leave `runtime.consolidationNeeded` set, as
    /// vCenter does when a disk could not be consolidated (test fault injection).
    ///
    /// # Errors
    /// [`LabError::VmNotFound`].
    pub fn leave_next_removal_unconsolidated(&self, vm: &VmMoref) -> Result<(), LabError> {
        self.update(vm, |state| {
            state.leave_next_removal_unconsolidated = true;
            Ok(())
        })
    }

    /// Makes the next `count` reads of the `info` of a task on `vm` fail with HTTP 503, as
    /// from a vCenter restarting while the task keeps running (test fault injection).
    ///
    /// # Errors
    /// [`LabError::VmNotFound`].
    pub fn fail_next_task_polls(&self, vm: &VmMoref, count: u32) -> Result<(), LabError> {
        self.update(vm, |state| {
            state.failing_task_polls = count;
            Ok(())
        })
    }

    /// Takes one of the failures [`Self::fail_next_task_polls`] arranged for `vm`; `false`
    /// when none is left (or the VM is gone).
    #[must_use]
    pub fn take_task_poll_failure(&self, vm: &VmMoref) -> bool {
        self.take_count(vm, |s| s.failing_task_polls, |s| &mut s.failing_task_polls)
    }

    /// Makes the next `count` `EnableMethods` calls on `vm` fail with a `SystemError`, its
    /// methods staying disabled (test fault injection: a failing EndAccess).
    ///
    /// # Errors
    /// [`LabError::VmNotFound`].
    pub fn fail_next_enable_methods(&self, vm: &VmMoref, count: u32) -> Result<(), LabError> {
        self.update(vm, |state| {
            state.failing_enable_methods = count;
            Ok(())
        })
    }

    /// Takes one of the failures [`Self::fail_next_enable_methods`] arranged for `vm`;
    /// `false` when none is left (or the VM is gone).
    #[must_use]
    pub fn take_enable_methods_failure(&self, vm: &VmMoref) -> bool {
        self.take_count(
            vm,
            |s| s.failing_enable_methods,
            |s| &mut s.failing_enable_methods,
        )
    }

    /// Makes the next `RemoveSnapshot_Task` of a snapshot of `vm` get lost before it runs,
    /// as when vCenter restarts right after answering with the task: the task is unknown
    /// from then on (reading it: `ManagedObjectNotFound`), and the snapshot stays (test
    /// fault injection).
    ///
    /// # Errors
    /// [`LabError::VmNotFound`].
    pub fn lose_next_snapshot_removal(&self, vm: &VmMoref) -> Result<(), LabError> {
        self.update(vm, |state| {
            state.lose_next_snapshot_removal = true;
            Ok(())
        })
    }

    /// Takes the loss [`Self::lose_next_snapshot_removal`] arranged for `vm`.
    #[must_use]
    pub fn take_snapshot_removal_loss(&self, vm: &VmMoref) -> bool {
        self.take_knob(
            vm,
            |s| s.lose_next_snapshot_removal,
            |s| std::mem::take(&mut s.lose_next_snapshot_removal),
        )
        .unwrap_or(false)
    }

    /// Makes the next `count` `RemoveSnapshot_Task`s of `vm`'s snapshots fail with
    /// `TaskInProgress`, removing nothing (test fault injection: another task holding the
    /// VM for a while).
    ///
    /// # Errors
    /// [`LabError::VmNotFound`].
    pub fn fail_next_snapshot_removals(&self, vm: &VmMoref, count: u32) -> Result<(), LabError> {
        self.update(vm, |state| {
            state.failing_snapshot_removals = count;
            Ok(())
        })
    }

    /// Takes one of the failures [`Self::fail_next_snapshot_removals`] arranged for `vm`;
    /// `false` when none is left (or the VM is gone).
    #[must_use]
    pub fn take_snapshot_removal_failure(&self, vm: &VmMoref) -> bool {
        self.take_count(
            vm,
            |s| s.failing_snapshot_removals,
            |s| &mut s.failing_snapshot_removals,
        )
    }

    /// Makes the next `CreateSnapshot_Task` on `vm` run for `delay` (while `running`)
    /// before it creates the snapshot, as a slow quiesce does (test fault injection).
    ///
    /// # Errors
    /// [`LabError::VmNotFound`].
    pub fn slow_next_snapshot(&self, vm: &VmMoref, delay: Duration) -> Result<(), LabError> {
        self.update(vm, |state| {
            state.next_snapshot_delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            Ok(())
        })
    }

    /// Makes the next `CreateSnapshot_Task` on `vm` fail without creating anything (test
    /// fault injection).
    ///
    /// # Errors
    /// [`LabError::VmNotFound`].
    pub fn fail_next_snapshot(&self, vm: &VmMoref) -> Result<(), LabError> {
        self.update(vm, |state| {
            state.fail_next_snapshot = true;
            Ok(())
        })
    }

    /// Takes the failure [`Self::fail_next_snapshot`] arranged for `vm`: whether this
    /// snapshot is to fail.
    #[must_use]
    pub fn take_snapshot_failure(&self, vm: &VmMoref) -> bool {
        self.take_knob(
            vm,
            |s| s.fail_next_snapshot,
            |s| std::mem::take(&mut s.fail_next_snapshot),
        )
        .unwrap_or(false)
    }

    /// Makes the next `opens` VDDK opens of `vm`'s disks lose their connection after
    /// `reads_before` reads each (test fault injection: a network blip, an ESXi host's NFC
    /// service restarting). vddk-sim counts reads, writes and allocated-blocks queries,
    /// fails the one that meets the loss with `VIX_E_HOST_TCP_CONN_LOST` and every later one
    /// on the handle with `VIX_E_HOST_CONNECTION_LOST`: only a new connection reads again.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`].
    pub fn lose_vddk_connections(
        &self,
        vm: &VmMoref,
        opens: u32,
        reads_before: u32,
    ) -> Result<(), LabError> {
        self.update(vm, |state| {
            state.vddk_connection_losses = opens;
            state.vddk_reads_before_loss = reads_before;
            Ok(())
        })
    }

    /// Takes one of the losses [`Self::lose_vddk_connections`] arranged for `vm`: the
    /// reads this open serves before its connection is lost, `None` when none is left.
    #[must_use]
    pub fn take_vddk_connection_loss(&self, vm: &VmMoref) -> Option<u32> {
        self.take_knob(
            vm,
            |s| s.vddk_connection_losses > 0,
            // Checked again under the lab's lock: another open may have taken the last.
            |s| {
                let armed = s.vddk_connection_losses > 0;
                s.vddk_connection_losses = s.vddk_connection_losses.saturating_sub(1);
                armed.then_some(s.vddk_reads_before_loss)
            },
        )
        .flatten()
    }

    /// Stops (or starts again) VMware Tools in `vm`'s guest: a quiescing snapshot is then
    /// made without quiescing.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`].
    pub fn set_tools_running(&self, vm: &VmMoref, running: bool) -> Result<(), LabError> {
        self.update(vm, |state| {
            state.tools_not_running = !running;
            Ok(())
        })
    }

    /// Takes the delay [`Self::slow_next_snapshot`] arranged for `vm` (zero if none).
    #[must_use]
    pub fn take_snapshot_delay(&self, vm: &VmMoref) -> Duration {
        self.take_knob(
            vm,
            |s| s.next_snapshot_delay_ms > 0,
            |s| std::mem::take(&mut s.next_snapshot_delay_ms),
        )
        .map_or(Duration::ZERO, Duration::from_millis)
    }

    /// Runs `take` on `vm`'s state (locked, written back) when `armed` says a test knob is
    /// set; `None` when it is not or the VM is gone. The unarmed path only reads, so the
    /// hot paths that consult a knob (every task poll, every snapshot) write nothing.
    fn take_knob<T>(
        &self,
        vm: &VmMoref,
        armed: impl Fn(&VmState) -> bool,
        take: impl FnOnce(&mut VmState) -> T,
    ) -> Option<T> {
        if !self.vm(vm).is_ok_and(|s| armed(&s)) {
            return None;
        }
        self.update(vm, |state| Ok(take(state))).ok()
    }

    /// Takes one of the failures a counted knob of `vm` (read by `count`, counted down
    /// through `count_mut`) arranged; `false` when none is left (or the VM is gone).
    fn take_count(
        &self,
        vm: &VmMoref,
        count: impl Fn(&VmState) -> u32,
        count_mut: impl FnOnce(&mut VmState) -> &mut u32,
    ) -> bool {
        self.take_knob(
            vm,
            |s| count(s) > 0,
            |s| {
                let left = count_mut(s);
                let armed = *left > 0;
                *left = left.saturating_sub(1);
                armed
            },
        )
        .unwrap_or(false)
    }

    /// `ConsolidateVMDisks_Task`: clears `runtime.consolidationNeeded`.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`].
    pub fn consolidate_disks(&self, vm: &VmMoref) -> Result<(), LabError> {
        self.update(vm, |state| {
            state.consolidation_needed = false;
            Ok(())
        })
    }

    /// Writes guest data through the current top of a disk's chain (updating its ctk).
    ///
    /// # Errors
    /// [`LabError::DiskNotFound`], datastore errors (alignment, range).
    pub fn guest_write(
        &self,
        vm: &VmMoref,
        disk: DiskKey,
        offset: u64,
        data: &[u8],
    ) -> Result<(), LabError> {
        let _g = self.lock()?;
        let state = self.vm(vm)?;
        let path = &state.disks[Self::disk_index(&state, disk)?].file_name;
        let mut chain =
            DiskChain::open(&self.root, path, OpenMode::ReadWrite).map_err(ds_err(vm))?;
        chain.write_at(offset, data).map_err(ds_err(vm))?;
        chain.flush().map_err(ds_err(vm))
    }

    /// QueryChangedDiskAreas: changes of a disk since `change_id`, as of `snapshot`
    /// (`None` = the current state).
    ///
    /// # Errors
    /// [`LabError::SnapshotNotFound`], [`LabError::DiskNotFound`], datastore errors
    /// (CBT off, changeId rejected: the vCenter layer maps these to FileFault).
    pub fn changed_areas(
        &self,
        vm: &VmMoref,
        snapshot: Option<&SnapshotMoref>,
        disk: DiskKey,
        change_id: &ChangeId,
    ) -> Result<Vec<(u64, u64)>, LabError> {
        let file = self.disk_file(vm, snapshot, disk)?;
        datastore::changed_areas(&self.root, &file, change_id).map_err(ds_err(vm))
    }

    /// The disk file a snapshot (or the current state) names for a disk.
    ///
    /// # Errors
    /// [`LabError::SnapshotNotFound`], [`LabError::DiskNotFound`].
    pub fn disk_file(
        &self,
        vm: &VmMoref,
        snapshot: Option<&SnapshotMoref>,
        disk: DiskKey,
    ) -> Result<DatastorePath, LabError> {
        let not_found = || LabError::DiskNotFound {
            vm: vm.clone(),
            disk,
        };
        match snapshot {
            Some(s) => self
                .snapshot(vm, s)?
                .disks
                .into_iter()
                .find(|d| d.key == disk)
                .map(|d| d.file_name)
                .ok_or_else(not_found),
            None => self
                .vm(vm)?
                .disks
                .into_iter()
                .find(|d| d.key == disk)
                .map(|d| d.file_name)
                .ok_or_else(not_found),
        }
    }

    /// Turns CBT on or off for every disk (a reset: new change UUIDs).
    ///
    /// # Errors
    /// Datastore errors.
    pub fn set_change_tracking(&self, vm: &VmMoref, enabled: bool) -> Result<(), LabError> {
        self.update(vm, |state| {
            for d in &state.disks {
                datastore::set_change_tracking(&self.root, &d.file_name, enabled)
                    .map_err(ds_err(vm))?;
            }
            state.change_tracking_enabled = enabled;
            self.write_vmx(state)
        })
    }

    /// Grows a disk (no snapshots allowed); resets its change tracking.
    ///
    /// # Errors
    /// [`LabError::DiskNotFound`], datastore errors (shrink, snapshots present).
    pub fn resize_disk(
        &self,
        vm: &VmMoref,
        disk: DiskKey,
        capacity_bytes: u64,
    ) -> Result<(), LabError> {
        self.update(vm, |state| {
            let i = Self::disk_index(state, disk)?;
            datastore::resize_disk(&self.root, &state.disks[i].file_name, capacity_bytes)
                .map_err(ds_err(vm))?;
            state.disks[i].capacity_bytes = capacity_bytes;
            Ok(())
        })
    }

    /// VDDK PrepareForAccess: disables `RelocateVM_Task` with `identity` as source.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`], I/O errors.
    pub fn prepare_for_access(&self, vm: &VmMoref, identity: &str) -> Result<(), LabError> {
        self.update(vm, |state| {
            let entry = DisabledMethod {
                method: RELOCATE_METHOD.into(),
                source: identity.to_owned(),
            };
            if !state.disabled_methods.contains(&entry) {
                state.disabled_methods.push(entry);
            }
            Ok(())
        })
    }

    /// VDDK EndAccess: re-enables `RelocateVM_Task` for `identity`; harmless without a
    /// prior PrepareForAccess.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`], I/O errors.
    pub fn end_access(&self, vm: &VmMoref, identity: &str) -> Result<(), LabError> {
        self.update(vm, |state| {
            state
                .disabled_methods
                .retain(|m| !(m.method == RELOCATE_METHOD && m.source == identity));
            Ok(())
        })
    }

    /// The VM's `disabledMethod` list.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`].
    pub fn disabled_methods(&self, vm: &VmMoref) -> Result<Vec<DisabledMethod>, LabError> {
        Ok(self.vm(vm)?.disabled_methods)
    }

    /// Replaces the VM's ExtraConfig (order preserved) and rewrites the `.vmx`.
    ///
    /// # Errors
    /// [`LabError::VmNotFound`], I/O errors.
    pub fn set_extra_config(
        &self,
        vm: &VmMoref,
        extra_config: Vec<(String, String)>,
    ) -> Result<(), LabError> {
        self.update(vm, |state| {
            state.extra_config = extra_config;
            self.write_vmx(state)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn lab_with_vm(thin: bool) -> (tempfile::TempDir, Lab, VmMoref) {
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab::create(dir.path()).unwrap();
        let vm = lab
            .create_vm(
                "web-1",
                "/dc1/vm/Namespaces/demo-ns",
                &[NewDisk {
                    capacity_bytes: 4 * MIB,
                    thin,
                    fcd: false,
                }],
            )
            .unwrap();
        (dir, lab, vm)
    }

    #[test]
    fn create_vm_and_settings() {
        let (dir, lab, vm) = lab_with_vm(true);
        assert_eq!(vm.0, "vm-1");
        assert!(matches!(
            Lab::create(dir.path()),
            Err(LabError::AlreadyExists(_))
        ));
        let s = Lab::open(dir.path()).unwrap().settings().unwrap();
        assert_eq!(s.thumbprint.len(), 59);
        let state = lab.find_vm_by_name("web-1").unwrap().unwrap();
        assert_eq!(state.disks[0].key, DiskKey(2000));
        assert_eq!(
            state.disks[0].file_name.to_string(),
            "[ds1] web-1/disk-0.vmdk"
        );
        assert!(
            state.disks[0].uuid.starts_with("6000c2") || state.disks[0].uuid.starts_with("6000C2")
        );
        lab.set_extra_config(
            &vm,
            vec![(
                "vmservice.virtualmachine.resource.yaml".into(),
                "abc".into(),
            )],
        )
        .unwrap();
        let vmx = fs::read_to_string(state.vmx_path.resolve(dir.path())).unwrap();
        assert!(vmx.contains("scsi0:0.fileName = \"disk-0.vmdk\""), "{vmx}");
        assert!(vmx.contains("vmservice.virtualmachine.resource.yaml = \"abc\""));
    }

    #[test]
    fn cbt_since_old_backup_sees_rewritten_block() {
        let (_dir, lab, vm) = lab_with_vm(true);
        let d = DiskKey(2000);
        lab.set_change_tracking(&vm, true).unwrap();
        lab.guest_write(&vm, d, 0, &[1u8; 4096]).unwrap();
        // Backup 1.
        let s1 = lab.create_snapshot(&vm, "backup-1", "").unwrap();
        let c1 = lab.snapshot(&vm, &s1).unwrap().disks[0]
            .change_id
            .clone()
            .unwrap();
        assert_eq!(
            lab.changed_areas(&vm, Some(&s1), d, &ChangeId::all())
                .unwrap(),
            vec![(0, 4096)]
        );
        assert!(
            lab.changed_areas(&vm, Some(&s1), d, &c1)
                .unwrap()
                .is_empty()
        );
        lab.remove_snapshot(&vm, &s1).unwrap();
        // Guest writes block X, snapshot 2, guest writes X again.
        let x = 2 * MIB;
        lab.guest_write(&vm, d, x, &[2u8; 512]).unwrap();
        let s2 = lab.create_snapshot(&vm, "backup-2", "").unwrap();
        lab.guest_write(&vm, d, x, &[3u8; 512]).unwrap();
        let changed = lab.changed_areas(&vm, Some(&s2), d, &c1).unwrap();
        assert_eq!(changed, vec![(x, CTK_BLOCK)]);
        // The current state also sees it; snapshot 2's own changeId has nothing newer.
        let c2 = lab.snapshot(&vm, &s2).unwrap().disks[0]
            .change_id
            .clone()
            .unwrap();
        assert!(
            lab.changed_areas(&vm, Some(&s2), d, &c2)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            lab.changed_areas(&vm, None, d, &c2).unwrap(),
            vec![(x, CTK_BLOCK)]
        );
        // A changeId from the future is rejected by the frozen disk.
        let future = lab.changed_areas(
            &vm,
            Some(&s2),
            d,
            &ChangeId::from_parts(c2.parts().unwrap().0, 99),
        );
        assert!(matches!(
            future,
            Err(LabError::Datastore {
                source: DatastoreError::ChangeIdFromFuture { .. },
                ..
            })
        ));
        lab.remove_snapshot(&vm, &s2).unwrap();
        // Disable/enable resets the UUID: old changeIds are rejected.
        lab.set_change_tracking(&vm, false).unwrap();
        assert!(matches!(
            lab.changed_areas(&vm, None, d, &c2),
            Err(LabError::Datastore {
                source: DatastoreError::ChangeTrackingDisabled { .. },
                ..
            })
        ));
        lab.set_change_tracking(&vm, true).unwrap();
        assert!(matches!(
            lab.changed_areas(&vm, None, d, &c2),
            Err(LabError::Datastore {
                source: DatastoreError::ChangeIdMismatch { .. },
                ..
            })
        ));
        // Resize resets too.
        let s3 = lab.create_snapshot(&vm, "s3", "").unwrap();
        let c3 = lab.snapshot(&vm, &s3).unwrap().disks[0]
            .change_id
            .clone()
            .unwrap();
        assert!(
            lab.resize_disk(&vm, d, 8 * MIB).is_err(),
            "no resize with snapshots"
        );
        lab.remove_snapshot(&vm, &s3).unwrap();
        lab.resize_disk(&vm, d, 8 * MIB).unwrap();
        assert!(matches!(
            lab.changed_areas(&vm, None, d, &c3),
            Err(LabError::Datastore {
                source: DatastoreError::ChangeIdMismatch { .. },
                ..
            })
        ));
    }

    const CTK_BLOCK: u64 = crate::datastore::CTK_BLOCK_BYTES;

    #[test]
    fn star_on_thin_and_thick() {
        let (_dir, lab, vm) = lab_with_vm(true);
        lab.set_change_tracking(&vm, true).unwrap();
        lab.guest_write(&vm, DiskKey(2000), MIB, &[1u8; 8192])
            .unwrap();
        assert_eq!(
            lab.changed_areas(&vm, None, DiskKey(2000), &ChangeId::all())
                .unwrap(),
            vec![(MIB, 8192)]
        );
        let (_dir2, lab2, vm2) = lab_with_vm(false);
        lab2.set_change_tracking(&vm2, true).unwrap();
        assert_eq!(
            lab2.changed_areas(&vm2, None, DiskKey(2000), &ChangeId::all())
                .unwrap(),
            vec![(0, 4 * MIB)]
        );
    }

    #[test]
    fn remove_middle_snapshot_updates_state() {
        let (dir, lab, vm) = lab_with_vm(true);
        let d = DiskKey(2000);
        lab.guest_write(&vm, d, 0, &[1u8; 512]).unwrap();
        let s1 = lab.create_snapshot(&vm, "s1", "first").unwrap();
        lab.guest_write(&vm, d, 0, &[2u8; 512]).unwrap();
        let s2 = lab.create_snapshot(&vm, "s2", "second").unwrap();
        lab.guest_write(&vm, d, 0, &[3u8; 512]).unwrap();
        lab.remove_snapshot(&vm, &s1).unwrap();
        let snap2 = lab.snapshot(&vm, &s2).unwrap();
        assert_eq!(snap2.parent, None);
        assert_eq!(
            snap2.disks[0].file_name.to_string(),
            "[ds1] web-1/disk-0.vmdk"
        );
        let read = |p: &DatastorePath| {
            let c = DiskChain::open(dir.path(), p, OpenMode::ReadOnly).unwrap();
            let mut b = [0u8; 512];
            c.read_at(0, &mut b).unwrap();
            b[0]
        };
        assert_eq!(read(&snap2.disks[0].file_name), 2);
        assert_eq!(read(&lab.vm(&vm).unwrap().disks[0].file_name), 3);
        lab.remove_snapshot(&vm, &s2).unwrap();
        let state = lab.vm(&vm).unwrap();
        assert!(state.snapshots.is_empty() && state.current_snapshot.is_none());
        assert_eq!(read(&state.disks[0].file_name), 3);
        assert!(matches!(
            lab.snapshot(&vm, &s1),
            Err(LabError::SnapshotNotFound { .. })
        ));
    }

    #[test]
    fn concurrent_prepare_end_access_loses_nothing() {
        let (dir, lab, vm) = lab_with_vm(true);
        lab.end_access(&vm, "never-prepared").unwrap();
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let root = dir.path().to_owned();
                let vm = vm.clone();
                std::thread::Builder::new()
                    .name(format!("hammer/{t}"))
                    .spawn(move || {
                        let lab = Lab::open(&root).unwrap();
                        for i in 0..40 {
                            lab.prepare_for_access(&vm, &format!("t{t}-{i}")).unwrap();
                            if i % 2 == 1 {
                                lab.end_access(&vm, &format!("t{t}-{i}")).unwrap();
                            }
                        }
                    })
                    .unwrap()
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let m = lab.disabled_methods(&vm).unwrap();
        assert_eq!(m.len(), 40);
        assert!(m.iter().all(|e| e.method == RELOCATE_METHOD));
    }
}
