//! The lab's Supervisor (feature `server`): a Kubernetes-style JSON API, VM Operator's
//! backup bookkeeping and WCP's RegisterVM, served by the lab vCenter on its own port and
//! certificate (ARCHITECTURE §8; seed 001; VSPHERE.md §B, §C).
//!
//! # Kubernetes API (`k8s_http`)
//! Core `/api/v1/namespaces[/{ns}]` and `/api/v1/namespaces/{ns}/{persistentvolumeclaims|
//! secrets|configmaps}[/{name}]`; `/apis/vmoperator.vmware.com/{v1alpha2..v1alpha5}/
//! namespaces/{ns}/{virtualmachines|virtualmachineservices|virtualmachinegroups}[/{name}]`
//! — one stored object per name, served under any of the four versions with `apiVersion`
//! rewritten to the requested one (no conversion: the lab stores whatever shape was
//! written); lists across namespaces at `/api/v1/{plural}` and
//! `/apis/vmoperator.vmware.com/{version}/{plural}`; discovery `/version`, `/api`, `/apis`,
//! `/apis/vmoperator.vmware.com/{version}`. GET/list (`labelSelector` with `k=v`, `k!=v`,
//! `k`, `!k`), POST, PUT, PATCH (merge; strategic and apply treated as merge; JSON patch
//! add/remove/replace/test) and DELETE (answers the deleted object); every call on a kind
//! of setting `forbidden_kinds` is 403 Forbidden (an account without rights). No watch. Auth on every route: `Authorization:
//! Bearer <vAPI session token>` or Basic with the lab credentials, else 401 `Status`.
//! Metadata: `uid`, one global `resourceVersion` counter, `creationTimestamp`,
//! `generation` (bumped when `spec` changes); a stale `resourceVersion` on replace/patch is
//! 409 Conflict. Objects persist in `<root>/supervisor/objects.json`, settings in
//! `<root>/supervisor/settings.json`. A namespace owns the VM folder
//! `/dc1/vm/Namespaces/<ns>` (created with it, its moref in annotation
//! `vmware-system-vm-folder`; and its resource pool, named like it below `Namespaces`
//! (`resgroup-11`), its moref in `vmware-system-resource-pool`,
//! VSPHERE.md §A.11); deleting it is refused (409) while it holds VMs, and otherwise
//! deletes its objects, folder and pool.
//!
//! # VM Operator (`operator`), after each write and on `POST /lab/supervisor/reconcile`
//! - Creating a VirtualMachine creates the vSphere VM `metadata.name` in the namespace
//!   folder: OS disk (`spec.advanced.bootDiskCapacity`, default 64Mi), one disk per PVC
//!   volume (the PVC must exist; capacity `spec.resources.requests.storage`; it becomes
//!   Bound), then the classic disks of annotation `lab.vadp-agent.dev/classic-disks`
//!   (`"32Mi,16Mi"`); all thin. A PVC records its disk in annotations
//!   `lab.vadp-agent.dev/disk-file` and `lab.vadp-agent.dev/disk-uuid`; binding it
//!   registers the disk file as a First Class Disk (CNS), whose id the PVC records in
//!   `lab.vadp-agent.dev/fcd-id` and vCenter shows as the device's `vDiskId`. A PVC's disk
//!   is made in the datastore's `fcd/` folder (`fcd/<32 hex>.vmdk`), as CNS makes volumes.
//!   `spec.powerState` drives the VM; deleting the CR destroys the VM and its files and
//!   directory, except its First Class Disks: the PVC objects remain, and so do their
//!   disks (CNS keeps a volume its PVC names).
//!   Admission defaults `spec.biosUUID`, `spec.instanceUUID` and, with cloud-init,
//!   `spec.bootstrap.cloudInit.instanceID` (= BIOS UUID, the webhook's default).
//! - `status`: `uniqueID`, `biosUUID`, `instanceUUID`, `powerState`, `volumes`,
//!   `conditions`; annotations `vmoperator.vmware.com/manager-id` (the vCenter's
//!   instanceUuid) and `…/instance-id`.
//! - Backup data (VSPHERE.md §C.2–C.4): VM YAML without status/managedFields/last-applied/
//!   zone label plus `…/backup-version`; bootstrap Secrets/ConfigMaps (every `{name, key}`
//!   selector under `spec.bootstrap`); pvc-disk-data; classic-disk-data (every non-PVC disk,
//!   the OS disk included); backupVersion (Unix ms); `vmservice.namespacedName`; gzip +
//!   base64. Keys in the code spelling, or the guide spelling by setting (the other
//!   spelling's keys are removed). Only changed keys are written, in one `Lab::modify_vm`.
//!   C.4: annotation backup-version > ExtraConfig backupVersion ⇒ nothing written,
//!   condition `VirtualMachineBackupUpToDate=False`/`VirtualMachineBackupPaused`. A CR
//!   annotated `vmoperator.vmware.com/pause` is not reconciled.
//!
//! # WCP RegisterVM (`registervm`), as a cis task, progress 5/10/20/40/80/100 (§12.3)
//! Refusals, in this order: VM moref unknown → `…VMNotFound` (§11.2); VM not in
//! `/dc1/vm/Namespaces/{ns}` → `…NotFoundInNamespaceFolder` (§7.2.3); another VM of that
//! folder has its BIOS UUID → `…DuplicateVMBiosUUID` (§7.1.1); no/undecodable VM YAML, a
//! PVC volume without pvc-disk-data (or data naming an unclaimed PVC), a backupVersion that
//! is not decimal → `…ValidateVMResourceFailed` (§7.1.3); apiVersion older than v1alpha2 or
//! kind not VirtualMachine → `…ConvertUnstructuredToVMTypeFailed` (§7.1.2); snapshot revert
//! annotation `vmoperator.vmware.com/snapshot-revert-in-progress` on the CR or in the
//! backup → `…SnapshotRevertInProgress` (lab id; §7.2.1); CR exists on 8.0U3 →
//! `…AlreadyExistsOnSupervisor` (§7.2.2); a restored PVC disk not found on the VM →
//! `…RegisterPVCFailed`, and so is (except on failover) a PVC disk that is already the
//! First Class Disk of a PVC (CnsRegisterVolume cannot register it again: a vendor must
//! restore a PVC disk into a new disk, §3.3). Network override on 8.0U3: synchronous 400 `UNSUPPORTED` (§7.3.2).
//! Decision (§4.3, C.6): no CR → restore to new (§6.1); CR and ExtraConfig version <
//! CR annotation → restore to existing (§6.2, 9.0); otherwise disk-only (§6.3, 9.0);
//! backup `manager-id` ≠ this vCenter → failover (§6.4, 9.0).
//! - New (§6.1, §8.1): bootstrap Secrets/ConfigMaps recreated; one PVC `restored-<6 hex>`
//!   per PVC disk (matched to pvc-disk-data by backing UUID, then FileName), Bound to it,
//!   claimNames rewritten, volume names kept (§8.1.1); user labels kept, zone label
//!   dropped (§8.1.2); backup annotations + `restored-vm`, − `instance-id` (§8.1.3,
//!   §8.1.5); new cloud-init instanceID (§8.1.5); PoweredOff (§8.1.4).
//! - Existing (§6.2, §8.2): `vmoperator.vmware.com/pause` during the task; new
//!   `restored-*` PVCs; the CR's old PVCs no longer referenced and whose disk is on no other
//!   VM are deleted (dangling) with their First Class Disk file (reclaim policy Delete) —
//!   except a PVC whose FCD is still attached to a VM, which stays, as CNS does not delete
//!   an attached volume; zone label and the five immutable annotations (§8.1.3)
//!   from the existing CR; cloud-init id preserved; PoweredOff; pause removed at the end.
//! - Disk-only (§6.3): the VM's disks that are in neither disk-data list and back no PVC
//!   of the namespace become `restored-*` PVCs appended to `spec.volumes`; nothing else.
//! - Failover (§6.4, §8.1.6): `spec.image` removed, `spec.imageName` "", annotation
//!   `failed-over-vm` instead of `restored-vm`; disks that already back a PVC of the
//!   namespace keep it; otherwise as new/existing.
//! - Network override (§9.3): `spec.network.interfaces[].network` remapped (`SUBNET` ↔
//!   kind `Subnet`, `SUBNETSET` ↔ `SubnetSet`; empty name = the default SubnetSet).
//!
//! # Automatic registration (`watcher`, thread `supervisor-wcp`, every 100 ms; §4.2, §7.3.3)
//! 8.0U3 opt-out (`disableAutomaticRegistration` true), triggered when a VM appears in or
//! moves into a namespace folder; 9.0 opt-in (`enableAutomaticRegistration` truthy),
//! triggered when the VM-YAML value changes (appearing included). VMs that are a CR's own
//! VM and not restored (C.4) are skipped. A trigger waits while `RelocateVM_Task` is
//! disabled (PrepareForAccess), unless it has been disabled longer than
//! `auto_registration_timeout_secs` (§7.3.3: it then proceeds prematurely). Tasks it
//! starts are listed by `GET /api/cis/tasks?targets=VirtualMachine:vm-N`.
//!
//! # Settings: `GET|PUT /lab/supervisor` (`version` `8.0U3`|`9.0`, default 9.0,
//! `key_spelling` `code`|`guide`, `auto_registration_timeout_secs` default 900; fields
//! left out of a PUT take their defaults); the version also sets `ServiceContent.about`
//! (8.0.3 / 8.0.3.0 or 9.0.0 / 9.0.0.0). `POST /lab/supervisor/reconcile` reconciles
//! every VirtualMachine. Auth: Bearer/`vmware-api-session-id` vAPI token, SOAP cookie or
//! Basic.
//!
//! # Rust façade
//! [`Supervisor`], reached through `Vcenter::supervisor()`: [`Supervisor::settings`],
//! [`Supervisor::set_settings`], [`Supervisor::create_namespace`], [`Supervisor::apply`],
//! [`Supervisor::get`], [`Supervisor::list`], [`Supervisor::delete`],
//! [`Supervisor::reconcile_all`], [`Supervisor::register_vm`], [`Supervisor::task`], [`Supervisor::registration_stages`], [`Supervisor::watcher_scans`],
//! [`Supervisor::tasks_for`].
//!
//! Deviations: no CSI/CNS (a PVC is Bound directly to a disk file of the VM; no PV
//! objects), no watch, no admission beyond the defaults above, adding a PVC volume to an
//! existing VM attaches nothing (disk hot-add is not modelled here).
//!
//! Locking: one mutex over the store; reconcile and each registration stage run under it
//! and may take the lab's `flock` (order: store, then lab). Registration tasks run on
//! the thread `supervisor-wcp-tasks`.

mod api;
mod codec;
pub(crate) mod k8s_http;
mod operator;
mod registervm;
mod settings;
mod store;
mod watcher;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use serde_json::Value;

pub use codec::KeySpelling;
pub use registervm::{
    NetworkConfigOverride, RegisterVmSpec, Subnet, SubnetMapping, SubnetType,
    TASK_METHOD as REGISTERVM_TASK, VapiError,
};
pub use settings::{SupervisorSettings, SupervisorVersion};
pub use store::{KINDS, KindInfo, SupervisorError, VMOP_GROUP, VMOP_VERSIONS};

use crate::Lab;
use crate::vcenter::inventory::Inventory;
use crate::vcenter::tasks::Tasks;
use store::Store;

/// Lab annotation: classic disks to create with a VirtualMachine (`"32Mi,16Mi"`).
pub const CLASSIC_DISKS_ANNOTATION: &str = "lab.vadp-agent.dev/classic-disks";
/// Lab annotation on a PVC: the disk file backing it.
pub const DISK_FILE_ANNOTATION: &str = "lab.vadp-agent.dev/disk-file";
/// Lab annotation on a PVC: the backing UUID of the disk backing it.
pub const DISK_UUID_ANNOTATION: &str = "lab.vadp-agent.dev/disk-uuid";
/// Lab annotation on a PVC: the First Class Disk id of its volume (the CNS volume id).
pub const FCD_ID_ANNOTATION: &str = "lab.vadp-agent.dev/fcd-id";

/// The simulated Supervisor.
#[derive(Debug)]
pub struct Supervisor {
    lab: Lab,
    inv: Arc<Mutex<Inventory>>,
    tasks: Tasks,
    task_step: Duration,
    store: Mutex<Store>,
    settings: Mutex<SupervisorSettings>,
    watch: Mutex<watcher::WatchState>,
    wcp_tx: Mutex<std::sync::mpsc::Sender<registervm::Job>>,
    stages: Mutex<std::collections::HashMap<String, Vec<u8>>>,
    me: Weak<Supervisor>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Supervisor {
    /// Loads the store and settings of `lab` and starts the threads `supervisor-wcp`
    /// (auto-registration) and `supervisor-wcp-tasks` (registration tasks); both end once
    /// the Supervisor is dropped.
    pub(crate) fn start(
        lab: Lab,
        inv: Arc<Mutex<Inventory>>,
        tasks: Tasks,
        task_step: Duration,
    ) -> std::io::Result<Arc<Self>> {
        let store = Store::load(lab.root())?;
        let settings = settings::load(lab.root())?;
        let (tx, rx) = std::sync::mpsc::channel::<registervm::Job>();
        let sup = Arc::new_cyclic(|me| Self {
            lab,
            inv,
            tasks,
            task_step,
            store: Mutex::new(store),
            settings: Mutex::new(settings),
            watch: Mutex::default(),
            wcp_tx: Mutex::new(tx),
            stages: Mutex::default(),
            me: me.clone(),
        });
        std::thread::Builder::new()
            .name("supervisor-wcp-tasks".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        watcher::spawn(Arc::downgrade(&sup))?;
        Ok(sup)
    }

    /// The lab.
    #[must_use]
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The current settings.
    #[must_use]
    pub fn settings(&self) -> SupervisorSettings {
        lock(&self.settings).clone()
    }

    /// Replaces and persists the settings.
    ///
    /// # Errors
    /// The settings file cannot be written.
    pub fn set_settings(&self, s: SupervisorSettings) -> Result<(), SupervisorError> {
        settings::save(self.lab.root(), &s)
            .map_err(|e| SupervisorError::new(500, "InternalError", e.to_string()))?;
        *lock(&self.settings) = s;
        Ok(())
    }

    /// The vCenter's instance UUID (what `manager-id` holds).
    pub(crate) fn instance_uuid(&self) -> String {
        lock(&self.inv).instance_uuid.clone()
    }

    /// `/dc1/vm/Namespaces/<ns>`.
    pub(crate) fn namespace_folder(&self, ns: &str) -> String {
        format!("/{}/vm/Namespaces/{ns}", lock(&self.inv).datacenter_name)
    }

    /// Creates namespace `ns` (and its VM folder) unless it exists; returns it.
    ///
    /// # Errors
    /// An invalid name or a failed write.
    pub fn create_namespace(&self, ns: &str) -> Result<Value, SupervisorError> {
        let kind = kind("namespaces");
        if let Some(v) = lock(&self.store).get(&kind, "", ns) {
            return Ok(v);
        }
        self.create(&kind, "", serde_json::json!({"metadata": {"name": ns}}))
    }

    /// Create-or-replace of a full object (`kind`, `metadata.name`, `metadata.namespace`),
    /// ignoring its `resourceVersion`; runs the VM Operator hooks.
    ///
    /// # Errors
    /// Unknown kind, missing namespace, invalid object.
    pub fn apply(&self, mut obj: Value) -> Result<Value, SupervisorError> {
        let k = obj["kind"]
            .as_str()
            .and_then(KindInfo::find)
            .ok_or_else(|| SupervisorError::bad_request("unknown or missing kind"))?;
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        if self.get(k.kind, &ns, &name).is_some() {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            self.replace(&k, &ns, &name, obj)
        } else {
            self.create(&k, &ns, obj)
        }
    }

    /// One object by kind (`VirtualMachine` or plural), namespace (`""` for namespaces)
    /// and name.
    #[must_use]
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let k = KindInfo::find(kind)?;
        lock(&self.store).get(&k, ns, name)
    }

    /// Every object of a kind in `ns` (`None`: all namespaces).
    #[must_use]
    pub fn list(&self, kind: &str, ns: Option<&str>) -> Vec<Value> {
        KindInfo::find(kind)
            .and_then(|k| lock(&self.store).list(&k, ns, None).ok())
            .unwrap_or_default()
    }

    /// Deletes an object (with the VM Operator effects); returns it.
    ///
    /// # Errors
    /// NotFound, or a namespace that still holds VMs.
    pub fn delete(&self, kind: &str, ns: &str, name: &str) -> Result<Value, SupervisorError> {
        let k = KindInfo::find(kind)
            .ok_or_else(|| SupervisorError::bad_request(format!("unknown kind {kind}")))?;
        self.delete_object(&k, ns, name)
    }

    /// Reconciles every VirtualMachine.
    ///
    /// # Errors
    /// A store write failed.
    pub fn reconcile_all(&self) -> Result<(), SupervisorError> {
        let mut store = lock(&self.store);
        let vms = store.list(&kind("virtualmachines"), None, None)?;
        for vm in vms {
            let ns = vm["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = vm["metadata"]["name"].as_str().unwrap_or_default();
            self.reconcile_vm(&mut store, ns, name)?;
        }
        Ok(())
    }
}

/// A kind known to exist.
pub(crate) fn kind(name: &str) -> KindInfo {
    KindInfo::find(name).expect("a kind of KINDS")
}

#[cfg(test)]
mod tests;
