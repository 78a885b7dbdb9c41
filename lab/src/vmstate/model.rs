//! The JSON documents of the lab: `lab.json` settings and `vms/<moref>.json` VM state.

use serde::{Deserialize, Serialize};

use super::{DiskKey, SnapshotMoref, VmMoref};
use crate::datastore::{ChangeId, DatastorePath};

/// `<root>/lab.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSettings {
    /// Host name the simulated vCenter answers as.
    pub server_name: String,
    /// Login user.
    pub user: String,
    /// Login password.
    pub password: String,
    /// SHA-1 thumbprint of the lab certificate, `AA:BB:...`.
    pub thumbprint: String,
    /// Datastore new VMs are created on.
    pub default_datastore: String,
    /// Next `vm-<n>`.
    pub next_vm: u64,
    /// Next `snapshot-<n>`.
    pub next_snapshot: u64,
    /// The SDK URL of the running lab vCenter (`https://127.0.0.1:8443/sdk`), written by
    /// `vadp-agent lab serve`; vddk-sim sends its control-plane calls there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcenter_url: Option<String>,
    /// Seconds added to the time `CurrentTime` answers (a vCenter whose clock differs
    /// from the proxy's; test fault injection).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub clock_offset_secs: i64,
    /// How many of the next `CurrentTime` calls fail with a `SystemError` (test fault
    /// injection: a proxy whose first comparison of clocks fails).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failing_current_time: u32,
    /// Free space a datastore reports (`summary.freeSpace`) instead of its file system's,
    /// by datastore name (test fault injection: a full datastore).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub datastore_free_bytes: std::collections::BTreeMap<String, u64>,
    /// `summary.type` a datastore reports instead of `VMFS` (`vsan`, `VVOL`, …), by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub datastore_types: std::collections::BTreeMap<String, String>,
    /// Datastores that report `summary.accessible` false (unmounted, all paths down).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub datastores_inaccessible: std::collections::BTreeSet<String>,
}

/// Power state, spelled as vSphere does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PowerState {
    /// `poweredOff`.
    PoweredOff,
    /// `poweredOn`.
    PoweredOn,
    /// `suspended`.
    Suspended,
}

/// One virtual disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDisk {
    /// Device key (2000, 2001, ...).
    pub key: DiskKey,
    /// `Hard disk 1`.
    pub label: String,
    /// Controller device key (1000 = first SCSI controller).
    pub controller_key: i32,
    /// Unit number on the controller.
    pub unit_number: i32,
    /// Capacity in bytes.
    pub capacity_bytes: u64,
    /// Current backing file (the top of the redo-log chain).
    pub file_name: DatastorePath,
    /// Backing uuid (`6000C29...`).
    pub uuid: String,
    /// Thin provisioned.
    pub thin: bool,
    /// The backing's `diskMode` (`persistent`, `independent_persistent`, …), as the
    /// `.vmx` keeps it in `scsi0:N.mode` (with dashes).
    #[serde(default = "persistent")]
    pub mode: String,
}

fn persistent() -> String {
    "persistent".into()
}

impl VmDisk {
    /// The `.vmx` spelling of [`VmDisk::mode`] (`independent-persistent`); `None` for
    /// `persistent`, which the `.vmx` leaves out.
    #[must_use]
    pub fn vmx_mode(&self) -> Option<String> {
        (self.mode != "persistent").then(|| self.mode.replace('_', "-"))
    }
}

/// One disk as a snapshot saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDisk {
    /// Device key.
    pub key: DiskKey,
    /// The file the snapshot froze (what its `config.hardware.device` names).
    pub file_name: DatastorePath,
    /// The changeId at snapshot time (`None` without CBT).
    pub change_id: Option<ChangeId>,
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// `snapshot-<n>`.
    pub moref: SnapshotMoref,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Creation time, seconds since the Unix epoch.
    pub create_time_unix_secs: u64,
    /// Parent snapshot.
    pub parent: Option<SnapshotMoref>,
    /// The disks as of this snapshot.
    pub disks: Vec<SnapshotDisk>,
    /// Whether the guest's file systems were quiesced (asked for, the VM powered on and
    /// VMware Tools running).
    #[serde(default)]
    pub quiesced: bool,
}

/// An entry of `disabledMethod`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisabledMethod {
    /// `RelocateVM_Task`.
    pub method: String,
    /// Who disabled it (the PrepareForAccess identity).
    pub source: String,
}

/// `<root>/vms/<moref>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// `vm-<n>`.
    pub moref: VmMoref,
    /// Display name.
    pub name: String,
    /// Inventory folder path (`/dc1/vm/Namespaces/demo-ns`).
    pub folder: String,
    /// The `.vmx` file.
    pub vmx_path: DatastorePath,
    /// BIOS uuid.
    pub bios_uuid: String,
    /// Instance uuid.
    pub instance_uuid: String,
    /// Power state.
    pub power_state: PowerState,
    /// `config.changeTrackingEnabled`.
    pub change_tracking_enabled: bool,
    /// Virtual disks.
    pub disks: Vec<VmDisk>,
    /// Snapshots, oldest first (a linear chain).
    pub snapshots: Vec<SnapshotInfo>,
    /// The current snapshot.
    pub current_snapshot: Option<SnapshotMoref>,
    /// `disabledMethod`.
    pub disabled_methods: Vec<DisabledMethod>,
    /// ExtraConfig, in order.
    pub extra_config: Vec<(String, String)>,
    /// `config.guestId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_id: Option<String>,
    /// `config.hardware.numCPU`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_cpus: Option<u32>,
    /// `config.hardware.memoryMB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// `runtime.consolidationNeeded`: set by a snapshot removal the lab was told to leave
    /// unconsolidated ([`crate::Lab::leave_next_removal_unconsolidated`]), cleared by
    /// `ConsolidateVMDisks_Task`.
    #[serde(default)]
    pub consolidation_needed: bool,
    /// The next snapshot removal sets `consolidation_needed` (a test's fault injection: a
    /// disk still locked, e.g. by a hot-add proxy, when the snapshot was removed).
    #[serde(default)]
    pub leave_next_removal_unconsolidated: bool,
    /// Reads of this VM's tasks' `info` still to answer with HTTP 503 (a test's fault
    /// injection: a vCenter restarting or a proxy dropping requests while a task runs).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failing_task_polls: u32,
    /// `EnableMethods` calls on this VM still to fail with a `SystemError` (a test's fault
    /// injection: vCenter failing the EndAccess that follows a backup or a restore).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failing_enable_methods: u32,
    /// The next `RemoveSnapshot_Task` of this VM's snapshots is lost before it runs (a
    /// test's fault injection: vCenter restarting after it answered with the task): its
    /// task is unknown from then on, and the snapshot stays.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lose_next_snapshot_removal: bool,
    /// How many more `RemoveSnapshot_Task`s on this VM's snapshots fail with
    /// `TaskInProgress`, removing nothing (a test's fault injection: another task holding
    /// the VM, a vMotion say).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failing_snapshot_removals: u32,
    /// How long the next `CreateSnapshot_Task` on this VM runs before it creates the
    /// snapshot, in milliseconds (a test's fault injection: a slow quiesce).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_snapshot_delay_ms: u64,
    /// The next `CreateSnapshot_Task` on this VM fails, creating nothing (a test's fault
    /// injection: a quiesce that times out, a locked disk).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fail_next_snapshot: bool,
    /// How many more VDDK opens of this VM's disks lose their connection (a test's fault
    /// injection: a network blip, an ESXi host's NFC service restarting), and after how
    /// many reads each (see `Lab::lose_vddk_connections`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vddk_connection_losses: u32,
    /// The reads an open of [`Self::vddk_connection_losses`] serves before the loss.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vddk_reads_before_loss: u32,
    /// VMware Tools is not running in the guest: a snapshot asked to quiesce is made
    /// without (vSphere ignores the flag then), as a test's state.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tools_not_running: bool,
    /// A disk a `ReconfigVM_Task` creates on this VM gets a uuid of vCenter's choosing,
    /// whatever uuid the spec asks for (a test's state: vSphere documents the spec's
    /// backing `uuid` as honoured, but a client must not depend on it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub created_disks_get_their_own_uuid: bool,
}

/// For serde's `skip_serializing_if`: the test knobs stay out of a VM's JSON while unset.
fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}
