//! The managed objects' properties as [`Val`] trees, built from one consistent read of
//! the lab ([`World`]): folders, datacenter, cluster, host, pools, datastores, VMs,
//! snapshots. Tasks and container views are added by the PropertyCollector.

use super::inventory::{
    CLUSTER, DATACENTER, DATASTORE_FOLDER, HOST, HOST_FOLDER, Inventory, NETWORK_FOLDER,
    ROOT_FOLDER, ROOT_POOL, VM_FOLDER,
};
use super::time::xsd_from_unix;
use super::value::Val;
use crate::Lab;
use crate::datastore::{self, DatastorePath};
use crate::vmstate::{PowerState, SnapshotInfo, VmState};

/// One read of the inventory and every VM.
#[derive(Debug, Clone)]
pub(crate) struct World {
    pub inv: Inventory,
    pub vms: Vec<VmState>,
    /// Every task's key with the id of the VM it runs on (VM tasks only), oldest first.
    pub vm_tasks: Vec<(String, String)>,
}

/// A moref as (type, value).
pub(crate) type Ref = (String, String);

fn r(kind: &str, id: &str) -> Ref {
    (kind.to_owned(), id.to_owned())
}

/// vSphere's spelling of a power state.
pub(crate) fn power_text(p: PowerState) -> &'static str {
    match p {
        PowerState::PoweredOff => "poweredOff",
        PowerState::PoweredOn => "poweredOn",
        PowerState::Suspended => "suspended",
    }
}

impl World {
    /// The VM by moref.
    pub(crate) fn vm(&self, id: &str) -> Option<&VmState> {
        self.vms.iter().find(|v| v.moref.0 == id)
    }

    /// The VM owning a snapshot, with the snapshot.
    pub(crate) fn snapshot(&self, id: &str) -> Option<(&VmState, &SnapshotInfo)> {
        self.vms
            .iter()
            .find_map(|v| v.snapshots.iter().find(|s| s.moref.0 == id).map(|s| (v, s)))
    }

    /// The folder a VM is in.
    pub(crate) fn vm_parent(&self, vm: &VmState) -> String {
        self.inv
            .folder_by_path(&vm.folder)
            .map_or_else(|| VM_FOLDER.to_owned(), |f| f.moref.clone())
    }

    /// The datastore moref of a datastore path.
    fn datastore_ref(&self, p: &DatastorePath) -> Option<Val> {
        self.inv
            .datastore_by_name(p.datastore())
            .map(|d| Val::moref("Datastore", &d.moref))
    }

    /// Whether the object exists.
    pub(crate) fn exists(&self, kind: &str, id: &str) -> bool {
        match kind {
            "Folder" => self.inv.folder(id).is_some(),
            "Datacenter" => id == DATACENTER,
            "ClusterComputeResource" | "ComputeResource" => id == CLUSTER,
            "HostSystem" => id == HOST,
            "ResourcePool" => self.inv.pool(id).is_some(),
            "Datastore" => self.inv.datastores.iter().any(|d| d.moref == id),
            "VirtualMachine" => self.vm(id).is_some(),
            "VirtualMachineSnapshot" => self.snapshot(id).is_some(),
            _ => false,
        }
    }

    /// Direct children in the inventory tree (what a container view walks).
    pub(crate) fn children(&self, kind: &str, id: &str) -> Vec<Ref> {
        let mut out = Vec::new();
        match kind {
            "Folder" => {
                if id == ROOT_FOLDER {
                    out.push(r("Datacenter", DATACENTER));
                }
                for f in self.inv.child_folders(id) {
                    out.push(r("Folder", &f.moref));
                }
                if id == HOST_FOLDER {
                    out.push(r("ClusterComputeResource", CLUSTER));
                }
                if id == DATASTORE_FOLDER {
                    for d in &self.inv.datastores {
                        out.push(r("Datastore", &d.moref));
                    }
                }
                for vm in &self.vms {
                    if self.vm_parent(vm) == id {
                        out.push(r("VirtualMachine", &vm.moref.0));
                    }
                }
            }
            "Datacenter" => {
                for f in [VM_FOLDER, HOST_FOLDER, DATASTORE_FOLDER, NETWORK_FOLDER] {
                    out.push(r("Folder", f));
                }
            }
            "ClusterComputeResource" => {
                out.push(r("HostSystem", HOST));
                out.push(r("ResourcePool", ROOT_POOL));
            }
            "ResourcePool" => {
                for p in self
                    .inv
                    .pools
                    .iter()
                    .filter(|p| p.parent.as_deref() == Some(id))
                {
                    out.push(r("ResourcePool", &p.moref));
                }
            }
            _ => {}
        }
        out
    }

    /// Every object below `container` (or directly in it).
    pub(crate) fn contents(&self, container: &Ref, recursive: bool) -> Vec<Ref> {
        let mut out: Vec<Ref> = Vec::new();
        let mut queue = self.children(&container.0, &container.1);
        while let Some(next) = queue.pop() {
            if out.contains(&next) {
                continue;
            }
            if recursive {
                queue.extend(self.children(&next.0, &next.1));
            }
            out.push(next);
        }
        out
    }

    /// The object's properties, `None` if it does not exist.
    pub(crate) fn object(&self, lab: &Lab, kind: &str, id: &str) -> Option<Val> {
        if !self.exists(kind, id) {
            return None;
        }
        let refs =
            |items: Vec<Ref>| Val::refs(items.iter().map(|(k, i)| Val::moref(k, i)).collect());
        Some(match kind {
            "Folder" => {
                let f = self.inv.folder(id)?;
                let mut fields = vec![("name", Val::str(&f.name))];
                if let Some(p) = &f.parent {
                    let pk = if p == DATACENTER {
                        "Datacenter"
                    } else {
                        "Folder"
                    };
                    fields.push(("parent", Val::moref(pk, p)));
                }
                fields.push(("childEntity", refs(self.children(kind, id))));
                fields.push(("childType", Val::strings(f.child_type.clone())));
                Val::obj("Folder", fields)
            }
            "Datacenter" => Val::obj(
                "Datacenter",
                vec![
                    ("name", Val::str(&self.inv.datacenter_name)),
                    ("parent", Val::moref("Folder", ROOT_FOLDER)),
                    ("vmFolder", Val::moref("Folder", VM_FOLDER)),
                    ("hostFolder", Val::moref("Folder", HOST_FOLDER)),
                    ("datastoreFolder", Val::moref("Folder", DATASTORE_FOLDER)),
                    ("networkFolder", Val::moref("Folder", NETWORK_FOLDER)),
                    (
                        "datastore",
                        refs(
                            self.inv
                                .datastores
                                .iter()
                                .map(|d| r("Datastore", &d.moref))
                                .collect(),
                        ),
                    ),
                ],
            ),
            "ClusterComputeResource" | "ComputeResource" => Val::obj(
                "ClusterComputeResource",
                vec![
                    ("name", Val::str(&self.inv.cluster_name)),
                    ("parent", Val::moref("Folder", HOST_FOLDER)),
                    ("host", refs(vec![r("HostSystem", HOST)])),
                    ("resourcePool", Val::moref("ResourcePool", ROOT_POOL)),
                    (
                        "datastore",
                        refs(
                            self.inv
                                .datastores
                                .iter()
                                .map(|d| r("Datastore", &d.moref))
                                .collect(),
                        ),
                    ),
                ],
            ),
            "HostSystem" => Val::obj(
                "HostSystem",
                vec![
                    ("name", Val::str(&self.inv.host_name)),
                    ("parent", Val::moref("ClusterComputeResource", CLUSTER)),
                    (
                        "vm",
                        refs(
                            self.vms
                                .iter()
                                .map(|v| r("VirtualMachine", &v.moref.0))
                                .collect(),
                        ),
                    ),
                    (
                        "runtime",
                        Val::obj(
                            "HostRuntimeInfo",
                            vec![
                                (
                                    "connectionState",
                                    Val::Enum("HostSystemConnectionState", "connected".into()),
                                ),
                                (
                                    "powerState",
                                    Val::Enum("HostSystemPowerState", "poweredOn".into()),
                                ),
                            ],
                        ),
                    ),
                ],
            ),
            "ResourcePool" => {
                let p = self.inv.pool(id)?;
                let parent = match &p.parent {
                    Some(pp) => Val::moref("ResourcePool", pp),
                    None => Val::moref("ClusterComputeResource", CLUSTER),
                };
                let vms = if id == ROOT_POOL {
                    self.vms
                        .iter()
                        .map(|v| r("VirtualMachine", &v.moref.0))
                        .collect()
                } else {
                    Vec::new()
                };
                Val::obj(
                    "ResourcePool",
                    vec![
                        ("name", Val::str(&p.name)),
                        ("parent", parent),
                        ("owner", Val::moref("ClusterComputeResource", CLUSTER)),
                        ("resourcePool", refs(self.children(kind, id))),
                        ("vm", refs(vms)),
                    ],
                )
            }
            "Datastore" => {
                let d = self.inv.datastores.iter().find(|d| d.moref == id)?;
                let url = format!("ds:///vmfs/volumes/{}/", d.name);
                // The file system's figures under the datastore's directory, as a VMFS
                // volume's are its own; the lab's settings can report it fuller.
                let fs = rustix::fs::statvfs(lab.root().join("datastores").join(&d.name)).ok();
                let capacity = fs.as_ref().map_or(1 << 40, |f| f.f_blocks * f.f_frsize);
                let settings = lab.settings().ok();
                let free = settings
                    .as_ref()
                    .and_then(|s| s.datastore_free_bytes.get(&d.name).copied())
                    .or_else(|| fs.as_ref().map(|f| f.f_bavail * f.f_frsize))
                    .unwrap_or(1 << 39);
                let kind = settings
                    .as_ref()
                    .and_then(|s| s.datastore_types.get(&d.name).cloned())
                    .unwrap_or_else(|| "VMFS".into());
                let accessible = !settings
                    .as_ref()
                    .is_some_and(|s| s.datastores_inaccessible.contains(&d.name));
                let long = |v: u64| Val::Long(i64::try_from(v).unwrap_or(i64::MAX));
                Val::obj(
                    "Datastore",
                    vec![
                        ("name", Val::str(&d.name)),
                        ("parent", Val::moref("Folder", DATASTORE_FOLDER)),
                        (
                            "summary",
                            Val::obj(
                                "DatastoreSummary",
                                vec![
                                    ("datastore", Val::moref("Datastore", &d.moref)),
                                    ("name", Val::str(&d.name)),
                                    ("url", Val::str(&url)),
                                    ("capacity", long(capacity)),
                                    ("freeSpace", long(free)),
                                    ("accessible", Val::Bool(accessible)),
                                    ("type", Val::str(&kind)),
                                ],
                            ),
                        ),
                        (
                            "info",
                            Val::obj(
                                "DatastoreInfo",
                                vec![("name", Val::str(&d.name)), ("url", Val::str(&url))],
                            ),
                        ),
                        (
                            "vm",
                            refs(
                                self.vms
                                    .iter()
                                    .filter(|v| v.vmx_path.datastore() == d.name)
                                    .map(|v| r("VirtualMachine", &v.moref.0))
                                    .collect(),
                            ),
                        ),
                    ],
                )
            }
            "VirtualMachine" => self.vm_object(lab, self.vm(id)?),
            "VirtualMachineSnapshot" => {
                let (vm, snap) = self.snapshot(id)?;
                let children: Vec<Ref> = vm
                    .snapshots
                    .iter()
                    .filter(|s| s.parent.as_ref() == Some(&snap.moref))
                    .map(|s| r("VirtualMachineSnapshot", &s.moref.0))
                    .collect();
                Val::obj(
                    "VirtualMachineSnapshot",
                    vec![
                        ("config", self.config_info(lab, vm, Some(snap))),
                        ("childSnapshot", refs(children)),
                        ("vm", Val::moref("VirtualMachine", &vm.moref.0)),
                    ],
                )
            }
            _ => return None,
        })
    }

    fn vm_object(&self, lab: &Lab, vm: &VmState) -> Val {
        let mut fields = vec![
            ("name", Val::str(&vm.name)),
            ("parent", Val::moref("Folder", &self.vm_parent(vm))),
            ("resourcePool", Val::moref("ResourcePool", ROOT_POOL)),
            (
                "datastore",
                Val::refs(self.datastore_ref(&vm.vmx_path).into_iter().collect()),
            ),
            (
                "runtime",
                Val::obj(
                    "VirtualMachineRuntimeInfo",
                    vec![
                        ("host", Val::moref("HostSystem", HOST)),
                        (
                            "connectionState",
                            Val::Enum("VirtualMachineConnectionState", "connected".into()),
                        ),
                        (
                            "powerState",
                            Val::Enum(
                                "VirtualMachinePowerState",
                                power_text(vm.power_state).into(),
                            ),
                        ),
                        ("consolidationNeeded", Val::Bool(vm.consolidation_needed)),
                    ],
                ),
            ),
            ("config", self.config_info(lab, vm, None)),
        ];
        if !vm.snapshots.is_empty() {
            fields.push(("snapshot", snapshot_info(vm)));
        }
        let recent: Vec<Val> = self
            .vm_tasks
            .iter()
            .filter(|(_, on)| *on == vm.moref.0)
            .map(|(key, _)| Val::moref("Task", key))
            .collect();
        if !recent.is_empty() {
            fields.push(("recentTask", Val::refs(recent)));
        }
        fields.push((
            "disabledMethod",
            Val::strings(
                vm.disabled_methods
                    .iter()
                    .map(|m| m.method.clone())
                    .collect(),
            ),
        ));
        fields.push((
            "summary",
            Val::obj(
                "VirtualMachineSummary",
                vec![
                    ("vm", Val::moref("VirtualMachine", &vm.moref.0)),
                    (
                        "runtime",
                        Val::obj(
                            "VirtualMachineRuntimeInfo",
                            vec![(
                                "powerState",
                                Val::Enum(
                                    "VirtualMachinePowerState",
                                    power_text(vm.power_state).into(),
                                ),
                            )],
                        ),
                    ),
                    (
                        "config",
                        Val::obj(
                            "VirtualMachineConfigSummary",
                            vec![
                                ("name", Val::str(&vm.name)),
                                ("template", Val::Bool(false)),
                                ("vmPathName", Val::str(vm.vmx_path.to_string())),
                                ("uuid", Val::str(&vm.bios_uuid)),
                                ("instanceUuid", Val::str(&vm.instance_uuid)),
                            ],
                        ),
                    ),
                ],
            ),
        ));
        Val::obj("VirtualMachine", fields)
    }

    /// `VirtualMachineConfigInfo` of the VM now, or as of `snap`.
    fn config_info(&self, lab: &Lab, vm: &VmState, snap: Option<&SnapshotInfo>) -> Val {
        let mut devices = vec![Val::obj(
            "VirtualLsiLogicController",
            vec![
                ("key", Val::Int(1000)),
                (
                    "deviceInfo",
                    Val::obj(
                        "Description",
                        vec![
                            ("label", Val::str("SCSI controller 0")),
                            ("summary", Val::str("LSI Logic")),
                        ],
                    ),
                ),
                ("busNumber", Val::Int(0)),
                (
                    "sharedBus",
                    Val::Enum("VirtualSCSISharing", "noSharing".into()),
                ),
            ],
        )];
        for d in &vm.disks {
            let (file, change_id) = match snap {
                Some(s) => {
                    let sd = s.disks.iter().find(|x| x.key == d.key);
                    (
                        sd.map_or_else(|| d.file_name.clone(), |x| x.file_name.clone()),
                        sd.and_then(|x| x.change_id.clone())
                            .map(|c| c.as_str().to_owned()),
                    )
                }
                None => (
                    d.file_name.clone(),
                    datastore::current_change_id(lab.root(), &d.file_name)
                        .ok()
                        .map(|c| c.as_str().to_owned()),
                ),
            };
            let mut backing = vec![("fileName", Val::str(file.to_string()))];
            if let Some(ds) = self.datastore_ref(&file) {
                backing.push(("datastore", ds));
            }
            backing.push(("diskMode", Val::str(&d.mode)));
            backing.push(("thinProvisioned", Val::Bool(d.thin)));
            backing.push(("uuid", Val::str(&d.uuid)));
            if let Some(c) = change_id {
                backing.push(("changeId", Val::str(c)));
            }
            let capacity = i64::try_from(d.capacity_bytes).unwrap_or(i64::MAX);
            // A First Class Disk (a PVC volume) carries its FCD id (VSPHERE.md §A.8).
            let vdisk_id = lab
                .vm_disk_fcd_id(vm, d.key)
                .map(|id| ("vDiskId", Val::obj("ID", vec![("id", Val::str(id))])));
            devices.push(Val::obj(
                "VirtualDisk",
                [
                    ("key", Val::Int(i64::from(d.key.0))),
                    (
                        "deviceInfo",
                        Val::obj(
                            "Description",
                            vec![
                                ("label", Val::str(&d.label)),
                                ("summary", Val::str(format!("{} KB", capacity / 1024))),
                            ],
                        ),
                    ),
                    (
                        "backing",
                        Val::obj("VirtualDiskFlatVer2BackingInfo", backing),
                    ),
                    ("controllerKey", Val::Int(i64::from(d.controller_key))),
                    ("unitNumber", Val::Int(i64::from(d.unit_number))),
                    ("capacityInKB", Val::Long(capacity / 1024)),
                    ("capacityInBytes", Val::Long(capacity)),
                ]
                .into_iter()
                .chain(vdisk_id)
                .collect(),
            ));
        }
        let extra = vm
            .extra_config
            .iter()
            .map(|(k, v)| option_value(k, v))
            .collect();
        let mut fields = vec![
            ("name", Val::str(&vm.name)),
            ("version", Val::str("vmx-19")),
            ("uuid", Val::str(&vm.bios_uuid)),
            ("instanceUuid", Val::str(&vm.instance_uuid)),
            ("template", Val::Bool(false)),
            (
                "guestId",
                Val::str(vm.guest_id.as_deref().unwrap_or("otherGuest64")),
            ),
            (
                "files",
                Val::obj(
                    "VirtualMachineFileInfo",
                    vec![("vmPathName", Val::str(vm.vmx_path.to_string()))],
                ),
            ),
            (
                "hardware",
                Val::obj(
                    "VirtualHardware",
                    vec![
                        ("numCPU", Val::Int(i64::from(vm.num_cpus.unwrap_or(1)))),
                        ("numCoresPerSocket", Val::Int(1)),
                        (
                            "memoryMB",
                            Val::Int(i64::try_from(vm.memory_mb.unwrap_or(64)).unwrap_or(64)),
                        ),
                        (
                            "device",
                            Val::List(
                                "ArrayOfVirtualDevice".into(),
                                "VirtualDevice".into(),
                                devices,
                            ),
                        ),
                    ],
                ),
            ),
            (
                "extraConfig",
                Val::List("ArrayOfOptionValue".into(), "OptionValue".into(), extra),
            ),
            (
                "changeTrackingEnabled",
                Val::Bool(vm.change_tracking_enabled),
            ),
            ("firmware", Val::str("bios")),
        ];
        if snap.is_some() {
            fields.retain(|(k, _)| *k != "extraConfig");
        }
        Val::obj("VirtualMachineConfigInfo", fields)
    }
}

/// One ExtraConfig entry.
pub(crate) fn option_value(k: &str, v: &str) -> Val {
    Val::obj(
        "OptionValue",
        vec![
            ("key", Val::str(k)),
            ("value", Val::Any(Box::new(Val::str(v)))),
        ],
    )
}

/// `VirtualMachineSnapshotInfo` (the lab's chain is a tree with one branch).
fn snapshot_info(vm: &VmState) -> Val {
    fn tree(vm: &VmState, s: &SnapshotInfo) -> Val {
        let children = vm
            .snapshots
            .iter()
            .filter(|c| c.parent.as_ref() == Some(&s.moref))
            .map(|c| tree(vm, c))
            .collect();
        let id = s
            .moref
            .0
            .rsplit('-')
            .next()
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(0);
        Val::obj(
            "VirtualMachineSnapshotTree",
            vec![
                ("snapshot", Val::moref("VirtualMachineSnapshot", &s.moref.0)),
                ("vm", Val::moref("VirtualMachine", &vm.moref.0)),
                ("name", Val::str(&s.name)),
                ("description", Val::str(&s.description)),
                ("id", Val::Int(id)),
                (
                    "createTime",
                    Val::Time(xsd_from_unix(s.create_time_unix_secs)),
                ),
                (
                    "state",
                    Val::Enum("VirtualMachinePowerState", "poweredOff".into()),
                ),
                ("quiesced", Val::Bool(s.quiesced)),
                (
                    "childSnapshotList",
                    Val::List(
                        "ArrayOfVirtualMachineSnapshotTree".into(),
                        "VirtualMachineSnapshotTree".into(),
                        children,
                    ),
                ),
            ],
        )
    }
    let roots = vm
        .snapshots
        .iter()
        .filter(|s| s.parent.is_none())
        .map(|s| tree(vm, s))
        .collect();
    let mut fields = Vec::new();
    if let Some(c) = &vm.current_snapshot {
        fields.push((
            "currentSnapshot",
            Val::moref("VirtualMachineSnapshot", &c.0),
        ));
    }
    fields.push((
        "rootSnapshotList",
        Val::List(
            "ArrayOfVirtualMachineSnapshotTree".into(),
            "VirtualMachineSnapshotTree".into(),
            roots,
        ),
    ));
    Val::obj("VirtualMachineSnapshotInfo", fields)
}
