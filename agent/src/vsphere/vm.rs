//! Typed reads of virtual machines (VSPHERE.md §A.4, §A.8) and VM lookup: by moref, by
//! name in a folder, and by Supervisor namespace folder (§A.11).

use super::property::ObjectContent;
use super::soap::{SoapClient, VsphereError};
use super::types::{ChangeId, DatastoreMoref, DiskKey, FolderMoref, MoRef, SnapshotMoref, VmMoref};
use super::xml::{Element, XmlError};

/// The property paths [`SoapClient::vm_info`] reads.
const VM_PATHS: &[&str] = &[
    "name",
    "parent",
    "resourcePool",
    "datastore",
    "runtime.powerState",
    "runtime.host",
    "runtime.consolidationNeeded",
    "config.uuid",
    "config.instanceUuid",
    "config.changeTrackingEnabled",
    "config.hardware.device",
    "config.extraConfig",
    "config.files.vmPathName",
    "config.version",
    "snapshot",
];

impl SoapClient {
    /// Reads a VM's identity, state, disks, ExtraConfig and snapshot tree in one call.
    ///
    /// # Errors
    ///
    /// `ManagedObjectNotFound` fault when `vm` does not exist; [`VsphereError::Xml`] for
    /// values that do not parse.
    pub async fn vm_info(&self, vm: &VmMoref) -> Result<VmInfo, VsphereError> {
        let content = self.retrieve_object(&vm.moref(), VM_PATHS).await?;
        VmInfo::from_content(vm, &content).map_err(|source| VsphereError::Xml {
            method: "RetrievePropertiesEx",
            source,
        })
    }

    /// The disks of a snapshot as they were when it was taken (their `changeId`s are
    /// the base of the next incremental, §A.7).
    ///
    /// # Errors
    ///
    /// `ManagedObjectNotFound` for an unknown snapshot.
    pub async fn snapshot_disks(
        &self,
        snapshot: &SnapshotMoref,
    ) -> Result<Vec<VirtualDiskInfo>, VsphereError> {
        let content = self
            .retrieve_object(&snapshot.moref(), &["config.hardware.device"])
            .await?;
        content
            .get("config.hardware.device")
            .map(disks_from_devices)
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(|source| VsphereError::Xml {
                method: "RetrievePropertiesEx",
                source,
            })
    }

    /// The VM named `name` directly in `folder`.
    ///
    /// # Errors
    ///
    /// [`VsphereError::NotFound`] when there is none, [`VsphereError::Ambiguous`] when
    /// several share the name; `ManagedObjectNotFound` for an unknown folder.
    pub async fn find_vm_in_folder(
        &self,
        folder: &FolderMoref,
        name: &str,
    ) -> Result<VmMoref, VsphereError> {
        let vms = self
            .list_in_container(&folder.moref(), "VirtualMachine", &["name"], false)
            .await?;
        let what = || format!("VM {name:?} in folder {folder}");
        single(
            vms.iter()
                .filter(|o| o.text("name") == Some(name))
                .map(|o| o.obj.clone()),
            what,
        )
        .map(|m| VmMoref(m.value))
    }

    /// The VMs directly in `folder`, with their names.
    ///
    /// # Errors
    ///
    /// `ManagedObjectNotFound` for an unknown folder.
    pub async fn list_vms_in_folder(
        &self,
        folder: &FolderMoref,
    ) -> Result<Vec<(VmMoref, String)>, VsphereError> {
        let vms = self
            .list_in_container(&folder.moref(), "VirtualMachine", &["name"], false)
            .await?;
        Ok(vms
            .into_iter()
            .map(|o| {
                let name = o.text("name").unwrap_or_default().to_owned();
                (VmMoref(o.obj.value), name)
            })
            .collect())
    }

    /// The VMs directly in `folder` with their names and BIOS UUIDs (`config.uuid`), in
    /// one property collection.
    ///
    /// # Errors
    ///
    /// `ManagedObjectNotFound` for an unknown folder.
    pub async fn vms_in_folder_with_bios_uuids(
        &self,
        folder: &FolderMoref,
    ) -> Result<Vec<(VmMoref, String, Option<String>)>, VsphereError> {
        let vms = self
            .list_in_container(
                &folder.moref(),
                "VirtualMachine",
                &["name", "config.uuid"],
                false,
            )
            .await?;
        Ok(vms
            .into_iter()
            .map(|o| {
                let name = o.text("name").unwrap_or_default().to_owned();
                let uuid = o.text("config.uuid").map(str::to_owned);
                (VmMoref(o.obj.value), name, uuid)
            })
            .collect())
    }

    /// The VM folder of a Supervisor namespace: the one VM folder in the inventory named
    /// like the namespace (§A.11, guide §5.2.3). Host, datastore and network folders of
    /// that name do not count: only folders whose `childType` holds `VirtualMachine`.
    ///
    /// # Errors
    ///
    /// [`VsphereError::NotFound`] or [`VsphereError::Ambiguous`].
    pub async fn find_namespace_folder(
        &self,
        namespace: &str,
    ) -> Result<FolderMoref, VsphereError> {
        let root = self.service_content().root_folder.clone();
        let folders = self
            .list_in_container(&root, "Folder", &["name", "childType"], true)
            .await?;
        let what = || format!("VM folder of namespace {namespace:?}");
        single(
            folders
                .iter()
                .filter(|o| o.text("name") == Some(namespace) && holds_vms(o))
                .map(|o| o.obj.clone()),
            what,
        )
        .map(|m| FolderMoref(m.value))
    }

    /// The name of the inventory's datacenter, when there is exactly one (datastore HTTP
    /// addresses files by datacenter).
    ///
    /// # Errors
    ///
    /// [`VsphereError::NotFound`] or [`VsphereError::Ambiguous`].
    pub async fn only_datacenter_name(&self) -> Result<String, VsphereError> {
        self.only_datacenter().await.map(|(_, name)| name)
    }

    /// The VMs of a Supervisor namespace (those in its folder).
    ///
    /// # Errors
    ///
    /// As [`SoapClient::find_namespace_folder`].
    pub async fn list_vms_in_namespace(
        &self,
        namespace: &str,
    ) -> Result<Vec<(VmMoref, String)>, VsphereError> {
        let folder = self.find_namespace_folder(namespace).await?;
        self.list_vms_in_folder(&folder).await
    }
}

/// Whether folder `o` (read with its `childType`) is a VM folder. A server that leaves
/// `childType` out is taken at its word for the name alone.
fn holds_vms(o: &ObjectContent) -> bool {
    o.get("childType").is_none_or(|types| {
        types
            .children_named("string")
            .any(|t| t.text == "VirtualMachine")
    })
}

pub(super) fn single(
    mut matches: impl Iterator<Item = MoRef>,
    what: impl Fn() -> String,
) -> Result<MoRef, VsphereError> {
    let first = matches
        .next()
        .ok_or_else(|| VsphereError::NotFound { what: what() })?;
    let rest: Vec<MoRef> = matches.collect();
    if rest.is_empty() {
        Ok(first)
    } else {
        let mut candidates = vec![first];
        candidates.extend(rest);
        Err(VsphereError::Ambiguous {
            what: what(),
            candidates,
        })
    }
}

/// `runtime.powerState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    /// Running.
    PoweredOn,
    /// Off.
    PoweredOff,
    /// Suspended.
    Suspended,
}

/// What the agent needs to know about a VM.
#[derive(Clone, Debug)]
pub struct VmInfo {
    /// The VM.
    pub moref: VmMoref,
    /// Display name.
    pub name: String,
    /// Parent folder.
    pub parent: Option<FolderMoref>,
    /// Resource pool (absent for templates).
    pub resource_pool: Option<MoRef>,
    /// The host running the VM (`runtime.host`), when it has one.
    pub host: Option<MoRef>,
    /// Datastores the VM uses.
    pub datastores: Vec<DatastoreMoref>,
    /// Power state.
    pub power_state: Option<PowerState>,
    /// Whether disks need consolidation after a failed snapshot removal.
    pub consolidation_needed: bool,
    /// BIOS UUID (`config.uuid`).
    pub bios_uuid: Option<String>,
    /// vCenter instance UUID (`config.instanceUuid`).
    pub instance_uuid: Option<String>,
    /// Whether CBT is on.
    pub change_tracking_enabled: bool,
    /// `[ds] dir/vm.vmx`.
    pub vmx_path: Option<String>,
    /// Hardware version, e.g. `vmx-19`.
    pub hardware_version: Option<String>,
    /// Virtual disks in device order.
    pub disks: Vec<VirtualDiskInfo>,
    /// ExtraConfig entries in server order. Keys are unique on real vSphere; vcsim may
    /// repeat a key after it was set again (see [`VmInfo::extra_config_value`]).
    pub extra_config: Vec<(String, String)>,
    /// The snapshot tree's roots.
    pub snapshots: Vec<SnapshotTree>,
    /// The current snapshot, if any.
    pub current_snapshot: Option<SnapshotMoref>,
}

impl VmInfo {
    /// The effective value of ExtraConfig `key` (the last entry wins).
    #[must_use]
    pub fn extra_config_value(&self, key: &str) -> Option<&str> {
        self.extra_config
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All snapshots, depth first.
    #[must_use]
    pub fn all_snapshots(&self) -> Vec<&SnapshotTree> {
        fn walk<'a>(trees: &'a [SnapshotTree], out: &mut Vec<&'a SnapshotTree>) {
            for t in trees {
                out.push(t);
                walk(&t.children, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.snapshots, &mut out);
        out
    }

    pub(super) fn from_content(vm: &VmMoref, c: &ObjectContent) -> Result<Self, XmlError> {
        let moref_of = |path: &str| c.get(path).map(Element::moref).transpose();
        let bool_of = |path: &str| {
            c.get(path)
                .map(Element::bool_text)
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let power_state = match c.text("runtime.powerState").map(str::trim) {
            Some("poweredOn") => Some(PowerState::PoweredOn),
            Some("poweredOff") => Some(PowerState::PoweredOff),
            Some("suspended") => Some(PowerState::Suspended),
            Some(other) => {
                return Err(XmlError::Value {
                    element: "powerState".into(),
                    value: other.into(),
                });
            }
            None => None,
        };
        let datastores = match c.get("datastore") {
            Some(list) => list
                .children
                .iter()
                .map(|d| d.moref().map(|m| DatastoreMoref(m.value)))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let extra_config = c
            .get("config.extraConfig")
            .map(|list| {
                list.children
                    .iter()
                    .filter_map(|o| {
                        Some((
                            o.child_text("key")?.to_owned(),
                            o.child_text("value")?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (snapshots, current_snapshot) = match c.get("snapshot") {
            Some(info) => (
                info.children_named("rootSnapshotList")
                    .map(SnapshotTree::from_xml)
                    .collect::<Result<_, _>>()?,
                info.child("currentSnapshot")
                    .map(|s| s.moref().map(|m| SnapshotMoref(m.value)))
                    .transpose()?,
            ),
            None => (Vec::new(), None),
        };
        Ok(Self {
            moref: vm.clone(),
            name: c.text("name").unwrap_or_default().to_owned(),
            parent: moref_of("parent")?.map(|m| FolderMoref(m.value)),
            resource_pool: moref_of("resourcePool")?,
            host: moref_of("runtime.host")?,
            datastores,
            power_state,
            consolidation_needed: bool_of("runtime.consolidationNeeded")?,
            bios_uuid: c.text("config.uuid").map(str::to_owned),
            instance_uuid: c.text("config.instanceUuid").map(str::to_owned),
            change_tracking_enabled: bool_of("config.changeTrackingEnabled")?,
            vmx_path: c.text("config.files.vmPathName").map(str::to_owned),
            hardware_version: c.text("config.version").map(str::to_owned),
            disks: c
                .get("config.hardware.device")
                .map(disks_from_devices)
                .transpose()?
                .unwrap_or_default(),
            extra_config,
            snapshots,
            current_snapshot,
        })
    }
}

/// One virtual disk (`VirtualDisk` with its backing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualDiskInfo {
    /// Device key.
    pub key: DiskKey,
    /// Device label, e.g. `Hard disk 1`.
    pub label: String,
    /// Backing type, e.g. `VirtualDiskFlatVer2BackingInfo`.
    pub backing_type: String,
    /// `[ds] dir/disk.vmdk` (the delta file while a snapshot exists, in live config).
    pub file_name: String,
    /// The backing's datastore.
    pub datastore: Option<DatastoreMoref>,
    /// The disk UUID (`6000C29…`), which VM Operator keys PVC data on.
    pub uuid: Option<String>,
    /// The CBT change id, when CBT is on.
    pub change_id: Option<ChangeId>,
    /// Capacity in bytes.
    pub capacity_bytes: u64,
    /// The controller's device key.
    pub controller_key: Option<i32>,
    /// Unit number on the controller.
    pub unit_number: Option<i32>,
    /// `persistent`, `independent_persistent`, …
    pub disk_mode: Option<String>,
    /// Thin provisioned.
    pub thin_provisioned: Option<bool>,
    /// First Class Disk id (PVC volumes).
    pub vdisk_id: Option<String>,
}

fn disks_from_devices(devices: &Element) -> Result<Vec<VirtualDiskInfo>, XmlError> {
    devices
        .children
        .iter()
        .filter(|d| d.xsi_type.as_deref() == Some("VirtualDisk"))
        .map(VirtualDiskInfo::from_xml)
        .collect()
}

impl VirtualDiskInfo {
    fn from_xml(d: &Element) -> Result<Self, XmlError> {
        let key = d
            .child_parse::<i32>("key")?
            .ok_or_else(|| XmlError::Value {
                element: "VirtualDisk".into(),
                value: "no key".into(),
            })?;
        let capacity_bytes = match d.child_parse::<u64>("capacityInBytes")? {
            Some(bytes) if bytes > 0 => bytes,
            _ => d
                .child_parse::<u64>("capacityInKB")?
                .unwrap_or_default()
                .saturating_mul(1024),
        };
        let backing = d.child("backing").cloned().unwrap_or_default();
        let text = |e: &Element, n: &str| e.child_text(n).map(str::to_owned);
        Ok(Self {
            key: DiskKey(key),
            label: d
                .child("deviceInfo")
                .and_then(|i| i.child_text("label"))
                .unwrap_or_default()
                .to_owned(),
            backing_type: backing.xsi_type.clone().unwrap_or_default(),
            file_name: text(&backing, "fileName").unwrap_or_default(),
            datastore: backing
                .child("datastore")
                .map(|m| m.moref().map(|m| DatastoreMoref(m.value)))
                .transpose()?,
            uuid: text(&backing, "uuid"),
            change_id: text(&backing, "changeId").map(ChangeId),
            capacity_bytes,
            controller_key: d.child_parse("controllerKey")?,
            unit_number: d.child_parse("unitNumber")?,
            disk_mode: text(&backing, "diskMode"),
            thin_provisioned: backing
                .child("thinProvisioned")
                .map(Element::bool_text)
                .transpose()?,
            vdisk_id: d
                .child("vDiskId")
                .and_then(|v| v.child_text("id"))
                .map(str::to_owned),
        })
    }
}

/// One node of the snapshot tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotTree {
    /// The snapshot.
    pub snapshot: SnapshotMoref,
    /// Its name.
    pub name: String,
    /// Its description (the agent tags its own snapshots here).
    pub description: String,
    /// Creation time as sent (xsd:dateTime).
    pub create_time: String,
    /// Whether it was quiesced.
    pub quiesced: bool,
    /// Child snapshots.
    pub children: Vec<SnapshotTree>,
}

impl SnapshotTree {
    fn from_xml(e: &Element) -> Result<Self, XmlError> {
        let snapshot = e
            .child("snapshot")
            .ok_or_else(|| XmlError::Value {
                element: "snapshotTree".into(),
                value: "no snapshot".into(),
            })?
            .moref()?;
        Ok(Self {
            snapshot: SnapshotMoref(snapshot.value),
            name: e.child_text("name").unwrap_or_default().to_owned(),
            description: e.child_text("description").unwrap_or_default().to_owned(),
            create_time: e.child_text("createTime").unwrap_or_default().to_owned(),
            quiesced: e
                .child("quiesced")
                .map(Element::bool_text)
                .transpose()?
                .unwrap_or_default(),
            children: e
                .children_named("childSnapshotList")
                .map(SnapshotTree::from_xml)
                .collect::<Result<_, _>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICES: &str = r#"<val xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="ArrayOfVirtualDevice"><VirtualDevice XMLSchema-instance:type="VirtualIDEController"><key>200</key></VirtualDevice><VirtualDevice XMLSchema-instance:type="VirtualDisk"><key>204</key><deviceInfo><label>disk-202-0</label><summary>32 MB</summary></deviceInfo><backing XMLSchema-instance:type="VirtualDiskFlatVer2BackingInfo"><fileName>[LocalDS_0] DC0_H0_VM0/disk1.vmdk</fileName><datastore type="Datastore">datastore-52</datastore><diskMode>persistent</diskMode><thinProvisioned>true</thinProvisioned><uuid>6000C29a-0d1c</uuid><changeId>52 2d/3</changeId></backing><controllerKey>202</controllerKey><unitNumber>0</unitNumber><capacityInKB>32768</capacityInKB><capacityInBytes>0</capacityInBytes></VirtualDevice></val>"#;

    #[test]
    fn reads_disks_with_vcsim_type_spelling() {
        let disks = disks_from_devices(&Element::parse(DEVICES.as_bytes()).unwrap()).unwrap();
        assert_eq!(disks.len(), 1);
        let d = &disks[0];
        assert_eq!(d.key, DiskKey(204));
        assert_eq!(d.file_name, "[LocalDS_0] DC0_H0_VM0/disk1.vmdk");
        assert_eq!(d.capacity_bytes, 32 << 20);
        assert_eq!(d.controller_key, Some(202));
        assert_eq!(d.unit_number, Some(0));
        assert_eq!(d.uuid.as_deref(), Some("6000C29a-0d1c"));
        assert_eq!(d.change_id, Some(ChangeId("52 2d/3".into())));
        assert_eq!(d.datastore, Some(DatastoreMoref("datastore-52".into())));
        assert_eq!(d.thin_provisioned, Some(true));
    }

    #[test]
    fn snapshot_tree_nests() {
        let doc = br#"<rootSnapshotList><snapshot type="VirtualMachineSnapshot">snapshot-1</snapshot><name>a</name><quiesced>false</quiesced><childSnapshotList><snapshot type="VirtualMachineSnapshot">snapshot-2</snapshot><name>b</name></childSnapshotList></rootSnapshotList>"#;
        let tree = SnapshotTree::from_xml(&Element::parse(doc).unwrap()).unwrap();
        assert_eq!(
            tree.children[0].snapshot,
            SnapshotMoref("snapshot-2".into())
        );
    }

    #[test]
    fn lookup_uniqueness() {
        let one = [MoRef::new("Folder", "a")];
        assert!(single(one.iter().cloned(), String::new).is_ok());
        let two = [MoRef::new("Folder", "a"), MoRef::new("Folder", "b")];
        assert!(matches!(
            single(two.iter().cloned(), String::new),
            Err(VsphereError::Ambiguous { .. })
        ));
        assert!(matches!(
            single(std::iter::empty(), String::new),
            Err(VsphereError::NotFound { .. })
        ));
    }
}
