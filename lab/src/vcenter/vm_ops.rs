//! The methods that change VMs and the inventory: the `*_Task`s (their checks run on the
//! call, their work on the task worker), QueryChangedDiskAreas, UnregisterVM,
//! DisableMethods/EnableMethods, MakeDirectory.

use std::fmt::Write as _;
use std::sync::Arc;

use super::fault::Fault;
use super::inventory::{
    DATACENTER, DATASTORE_FOLDER, HOST_FOLDER, NETWORK_FOLDER, ROOT_FOLDER, VM_FOLDER,
};
use super::objects::power_text;
use super::server::{Session, Vcenter};
use super::soap::{Call, returnval_ref};
use super::tasks::Work;
use super::value::Val;
use super::xml::Element;
use crate::datastore::{ChangeId, DatastorePath};
use crate::vmstate::{
    DisabledMethod, DiskKey, NewDisk, PowerState, SnapshotMoref, VmMoref, VmState,
};

fn lab_fault(e: crate::vmstate::LabError) -> Fault {
    Fault::from_lab(&e)
}

/// ExtraConfig changes: set, overwrite, or remove on an empty value (VSPHERE.md §A.9).
pub(crate) fn apply_extra_config(current: &mut Vec<(String, String)>, spec: &Element) {
    for ov in spec.children_named("extraConfig") {
        let Some(key) = ov.child_text("key") else {
            continue;
        };
        let value = ov
            .child("value")
            .map(|v| v.text.clone())
            .unwrap_or_default();
        if value.is_empty() {
            current.retain(|(k, _)| k != key);
        } else if let Some(e) = current.iter_mut().find(|(k, _)| k == key) {
            e.1 = value;
        } else {
            current.push((key.to_owned(), value));
        }
    }
}

/// The ConfigSpec fields a reconfigure or create applies to the VM state.
fn apply_spec(state: &mut VmState, spec: &Element) {
    if let Some(n) = spec.child_text("name").filter(|n| !n.is_empty()) {
        n.clone_into(&mut state.name);
    }
    if let Some(u) = spec.child_text("uuid").filter(|n| !n.is_empty()) {
        u.clone_into(&mut state.bios_uuid);
    }
    if let Some(u) = spec.child_text("instanceUuid").filter(|n| !n.is_empty()) {
        u.clone_into(&mut state.instance_uuid);
    }
    if let Some(g) = spec.child_text("guestId") {
        state.guest_id = Some(g.to_owned());
    }
    if let Some(n) = spec.child_parse("numCPUs") {
        state.num_cpus = Some(n);
    }
    if let Some(m) = spec.child_parse("memoryMB") {
        state.memory_mb = Some(m);
    }
    apply_extra_config(&mut state.extra_config, spec);
}

/// The `deviceChange` entries of a spec that add a `VirtualDisk`: (change, device).
fn disks_added(spec: &Element) -> impl Iterator<Item = (&Element, &Element)> {
    spec.children_named("deviceChange").filter_map(|dc| {
        let dev = dc
            .child("device")
            .filter(|d| d.xsi_type.as_deref() == Some("VirtualDisk"))?;
        (dc.child_text("operation") == Some("add")).then_some((dc, dev))
    })
}

/// The disks a ReconfigVM spec removes (`operation = remove`), by device key, and whether
/// their files go too (`fileOperation = destroy`).
fn disk_removals(spec: &Element) -> Vec<(DiskKey, bool)> {
    spec.children_named("deviceChange")
        .filter(|dc| dc.child_text("operation") == Some("remove"))
        .filter_map(|dc| {
            let dev = dc
                .child("device")
                .filter(|d| d.xsi_type.as_deref() == Some("VirtualDisk"))?;
            let key = dev.child_parse::<i32>("key")?;
            Some((
                DiskKey(key),
                dc.child_text("fileOperation") == Some("destroy"),
            ))
        })
        .collect()
}

/// The capacity and provisioning of a `VirtualDisk` device to create.
fn new_disk(dev: &Element) -> Result<NewDisk, Fault> {
    let capacity_bytes = dev
        .child_parse::<u64>("capacityInBytes")
        .filter(|b| *b > 0)
        .or_else(|| dev.child_parse::<u64>("capacityInKB").map(|k| k * 1024))
        .ok_or_else(|| Fault::invalid_argument("capacityInKB"))?;
    let thin = dev
        .child("backing")
        .and_then(|b| b.child_bool("thinProvisioned"))
        .unwrap_or(false);
    Ok(NewDisk {
        capacity_bytes,
        thin,
        fcd: false,
    })
}

/// A disk a ReconfigVM spec adds: a `VirtualDisk` whose backing names a file on a
/// datastore; with `fileOperation = create` the file is created first (with the backing's
/// `uuid` when the spec gives one, as vSphere honours it); at the spec's controller and
/// unit when it names them.
struct DiskAddition {
    path: DatastorePath,
    create: Option<NewDisk>,
    uuid: Option<String>,
    at: Option<(i32, i32)>,
    /// The backing's `diskMode`, when the spec gives one.
    mode: Option<String>,
}

fn disk_additions(spec: &Element) -> Result<Vec<DiskAddition>, Fault> {
    let mut out = Vec::new();
    for (dc, dev) in disks_added(spec) {
        let backing = dev
            .child("backing")
            .ok_or_else(|| Fault::invalid_argument("device.backing"))?;
        let name = backing.child_text("fileName").unwrap_or_default();
        // Anywhere on a datastore, as on ESXi (the .vmx names a disk outside the VM's
        // directory by its /vmfs/volumes path).
        let path = DatastorePath::parse(name)
            .map_err(|_| Fault::invalid_argument("device.backing.fileName"))?;
        let create = if dc.child_text("fileOperation") == Some("create") {
            Some(new_disk(dev)?)
        } else {
            None
        };
        let uuid = backing
            .child_text("uuid")
            .filter(|u| !u.is_empty() && create.is_some())
            .map(str::to_owned);
        let at = dev
            .child_parse::<i32>("unitNumber")
            .map(|u| (dev.child_parse::<i32>("controllerKey").unwrap_or(1000), u));
        let mode = backing
            .child_text("diskMode")
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        out.push(DiskAddition {
            path,
            create,
            uuid,
            at,
            mode,
        });
    }
    Ok(out)
}

impl Vcenter {
    fn vm_state(&self, id: &str) -> Result<VmState, Fault> {
        self.lab.vm(&VmMoref(id.to_owned())).map_err(lab_fault)
    }

    /// Starts a `*_Task` method after its synchronous checks.
    pub(crate) fn start_task(
        self: &Arc<Self>,
        call: &Call<'_>,
        session: &Session,
    ) -> Result<String, Fault> {
        let (kind, id) = (call.this.0.clone(), call.this.1.clone());
        let lab = self.lab.clone();
        let vm_id = VmMoref(id.clone());
        let need_vm = |me: &Self| -> Result<VmState, Fault> {
            if kind != "VirtualMachine" {
                return Err(Fault::not_found_object(&kind, &id));
            }
            me.vm_state(&id)
        };
        let method: &'static str;
        let entity_name: String;
        let work: Work = match call.method.as_str() {
            "PowerOnVM_Task" | "PowerOffVM_Task" => {
                let vm = need_vm(self)?;
                entity_name = vm.name;
                let on = call.method == "PowerOnVM_Task";
                method = if on {
                    "PowerOnVM_Task"
                } else {
                    "PowerOffVM_Task"
                };
                Box::new(move |_| {
                    let target = if on {
                        PowerState::PoweredOn
                    } else {
                        PowerState::PoweredOff
                    };
                    lab.modify_vm(&vm_id, |s| {
                        if s.power_state == target {
                            return Ok(Err(Fault::invalid_power_state(
                                power_text(target),
                                power_text(s.power_state),
                            )));
                        }
                        s.power_state = target;
                        Ok(Ok(()))
                    })
                    .map_err(lab_fault)??;
                    Ok(None)
                })
            }
            "CreateSnapshot_Task" | "CreateSnapshotEx_Task" => {
                let vm = need_vm(self)?;
                entity_name = vm.name;
                method = "CreateSnapshot_Task";
                let name = call.req.child_text("name").unwrap_or_default().to_owned();
                let description = call
                    .req
                    .child_text("description")
                    .unwrap_or_default()
                    .to_owned();
                if name.is_empty() {
                    return Err(Fault::invalid_argument("name"));
                }
                let quiesce = call.req.child_bool("quiesce").unwrap_or(false);
                Box::new(move |p| {
                    p.set(30);
                    std::thread::sleep(lab.take_snapshot_delay(&vm_id));
                    if lab.take_snapshot_failure(&vm_id) {
                        return Err(Fault::system_error(
                            "An error occurred while saving the snapshot: Failed to quiesce \
                             the virtual machine (injected)",
                        ));
                    }
                    let s = lab
                        .create_snapshot_quiescing(&vm_id, &name, &description, quiesce)
                        .map_err(lab_fault)?;
                    Ok(Some(Val::moref("VirtualMachineSnapshot", &s.0)))
                })
            }
            "RemoveSnapshot_Task" => {
                let world = self.world()?;
                let (vm, snap) = world
                    .snapshot(&id)
                    .filter(|_| kind == "VirtualMachineSnapshot")
                    .ok_or_else(|| Fault::not_found_object(&kind, &id))?;
                entity_name = snap.name.clone();
                method = "RemoveSnapshot_Task";
                let remove_children = call.req.child_bool("removeChildren").unwrap_or(false);
                let vm_id = vm.moref.clone();
                let mut order = vec![snap.moref.clone()];
                if remove_children {
                    let mut i = 0;
                    while i < order.len() {
                        let kids: Vec<SnapshotMoref> = vm
                            .snapshots
                            .iter()
                            .filter(|s| s.parent.as_ref() == Some(&order[i]))
                            .map(|s| s.moref.clone())
                            .collect();
                        order.extend(kids);
                        i += 1;
                    }
                    order.reverse();
                }
                if self.lab.take_snapshot_removal_loss(&vm_id) {
                    // vCenter restarted after answering: a task it no longer knows, and
                    // no work done.
                    let key = self.tasks.add_external(
                        method,
                        call.this.clone(),
                        entity_name,
                        session.user.clone(),
                    );
                    self.tasks.forget(&key);
                    return Ok(returnval_ref("Task", &key));
                }
                Box::new(move |p| {
                    if lab.take_snapshot_removal_failure(&vm_id) {
                        return Err(Fault::task_in_progress("task-busy"));
                    }
                    for s in &order {
                        lab.remove_snapshot(&vm_id, s).map_err(lab_fault)?;
                        p.set(50);
                    }
                    Ok(None)
                })
            }
            "ConsolidateVMDisks_Task" => {
                let vm = need_vm(self)?;
                entity_name = vm.name;
                method = "ConsolidateVMDisks_Task";
                Box::new(move |_| {
                    lab.consolidate_disks(&vm_id).map_err(lab_fault)?;
                    Ok(None)
                })
            }
            "ReconfigVM_Task" => {
                let vm = need_vm(self)?;
                method = "ReconfigVM_Task";
                let spec = call.req.child("spec").cloned().unwrap_or_default();
                let added = disk_additions(&spec)?;
                let removed = disk_removals(&spec);
                entity_name = vm.name;
                Box::new(move |_| {
                    // vSphere applies a spec whole or not at all: what would fail part-way
                    // (a device to remove that is not there, a unit in use) fails first.
                    let now = lab.vm(&vm_id).map_err(lab_fault)?;
                    let remaining: Vec<_> = now
                        .disks
                        .iter()
                        .filter(|d| !removed.iter().any(|(k, _)| *k == d.key))
                        .collect();
                    for (key, _) in &removed {
                        if !now.disks.iter().any(|d| d.key == *key) {
                            return Err(lab_fault(crate::vmstate::LabError::DiskNotFound {
                                vm: vm_id.clone(),
                                disk: *key,
                            }));
                        }
                    }
                    for (i, a) in added.iter().enumerate() {
                        if a.create.is_some() && a.path.resolve(lab.root()).exists() {
                            return Err(Fault::file_already_exists(&a.path.to_string()));
                        }
                        let Some((controller, unit)) = a.at else {
                            continue;
                        };
                        let taken = remaining
                            .iter()
                            .find(|d| d.controller_key == controller && d.unit_number == unit)
                            .map(|d| d.key)
                            .or_else(|| {
                                added[..i]
                                    .iter()
                                    .any(|b| b.at == a.at)
                                    .then_some(DiskKey(-1))
                            });
                        if let Some(disk) = taken {
                            return Err(lab_fault(crate::vmstate::LabError::UnitInUse {
                                vm: vm_id.clone(),
                                controller,
                                unit,
                                disk,
                            }));
                        }
                    }
                    for (key, destroy) in &removed {
                        lab.detach_disk(&vm_id, *key, *destroy).map_err(lab_fault)?;
                    }
                    for a in &added {
                        if let Some(d) = &a.create {
                            lab.create_virtual_disk(&a.path, d.capacity_bytes, d.thin)
                                .map_err(lab_fault)?;
                            if let Some(u) = &a.uuid
                                && !now.created_disks_get_their_own_uuid
                            {
                                lab.set_disk_uuid(&a.path, u).map_err(lab_fault)?;
                            }
                        }
                        let key = lab
                            .attach_disk_at(&vm_id, &a.path, a.at)
                            .map_err(lab_fault)?;
                        if let Some(mode) = &a.mode {
                            lab.modify_vm(&vm_id, |s| {
                                if let Some(d) = s.disks.iter_mut().find(|d| d.key == key) {
                                    d.mode.clone_from(mode);
                                }
                                Ok(())
                            })
                            .map_err(lab_fault)?;
                        }
                    }
                    lab.modify_vm(&vm_id, |s| {
                        apply_spec(s, &spec);
                        Ok(())
                    })
                    .map_err(lab_fault)?;
                    if let Some(on) = spec.child_bool("changeTrackingEnabled") {
                        let current = lab.vm(&vm_id).map_err(lab_fault)?.change_tracking_enabled;
                        if current != on {
                            lab.set_change_tracking(&vm_id, on).map_err(lab_fault)?;
                        }
                    }
                    Ok(None)
                })
            }
            "RelocateVM_Task" => {
                let vm = need_vm(self)?;
                entity_name = vm.name;
                method = "RelocateVM_Task";
                // The lab has one host and one datastore per VM: relocation is a no-op.
                Box::new(|_| Ok(None))
            }
            "CreateVM_Task" => {
                method = "CreateVM_Task";
                let (folder_path, spec) = self.create_vm_checks(call)?;
                entity_name = spec.child_text("name").unwrap_or_default().to_owned();
                let me = Arc::clone(self);
                Box::new(move |p| me.create_vm(&folder_path, &spec, p))
            }
            "RegisterVM_Task" => {
                method = "RegisterVM_Task";
                let folder_path = self.vm_folder_path(&call.this)?;
                // A VM (not a template) is registered into a resource pool that exists.
                self.check_pool(call)?;
                let path_text = call.req.child_text("path").unwrap_or_default().to_owned();
                let path = DatastorePath::parse(&path_text)
                    .map_err(|_| Fault::invalid_argument("path"))?;
                let name = call.req.child_text("name").map(str::to_owned);
                entity_name = name.clone().unwrap_or_else(|| path_text.clone());
                Box::new(move |_| {
                    // A folder holds one VM of a name, as vCenter's inventory does.
                    if let Some(wanted) = &name
                        && let Some(dup) = lab
                            .vms()
                            .map_err(lab_fault)?
                            .into_iter()
                            .find(|v| &v.name == wanted && v.folder == folder_path)
                    {
                        return Err(Fault::duplicate_name(
                            wanted,
                            "VirtualMachine",
                            &dup.moref.0,
                        ));
                    }
                    let vm = lab
                        .register_vm(&path, name.as_deref(), &folder_path)
                        .map_err(lab_fault)?;
                    Ok(Some(Val::moref("VirtualMachine", &vm.0)))
                })
            }
            "CreateVirtualDisk_Task" => {
                if kind != "VirtualDiskManager" {
                    return Err(Fault::not_found_object(&kind, &id));
                }
                method = "CreateVirtualDisk_Task";
                let name = call.req.child_text("name").unwrap_or_default().to_owned();
                let path =
                    DatastorePath::parse(&name).map_err(|_| Fault::invalid_argument("name"))?;
                let spec = call
                    .req
                    .child("spec")
                    .ok_or_else(|| Fault::invalid_argument("spec"))?;
                let kb = spec
                    .child_parse::<u64>("capacityKb")
                    .filter(|k| *k > 0)
                    .ok_or_else(|| Fault::invalid_argument("spec.capacityKb"))?;
                let thin = spec.child_text("diskType") == Some("thin");
                if path.resolve(self.lab.root()).exists() {
                    return Err(Fault::file_already_exists(&name));
                }
                entity_name = name;
                Box::new(move |_| {
                    lab.create_virtual_disk(&path, kb * 1024, thin)
                        .map_err(lab_fault)?;
                    Ok(Some(Val::str(path.to_string())))
                })
            }
            "DeleteDatastoreFile_Task" => {
                if kind != "FileManager" {
                    return Err(Fault::not_found_object(&kind, &id));
                }
                method = "DeleteDatastoreFile_Task";
                let name = call.req.child_text("name").unwrap_or_default().to_owned();
                let path =
                    DatastorePath::parse(&name).map_err(|_| Fault::invalid_argument("name"))?;
                let file = path.resolve(self.lab.root());
                if !file.exists() {
                    return Err(Fault::file_not_found(&name));
                }
                entity_name = name.clone();
                // vSphere deletes a directory with everything in it.
                let is_dir = file.is_dir();
                Box::new(move |_| {
                    if is_dir {
                        lab.delete_directory(&path).map_err(lab_fault)?;
                        return Ok(None);
                    }
                    std::fs::remove_file(&file)
                        .map_err(|e| Fault::file_fault(&name, &e.to_string()))?;
                    Ok(None)
                })
            }
            "DeleteVirtualDisk_Task" => {
                if kind != "VirtualDiskManager" {
                    return Err(Fault::not_found_object(&kind, &id));
                }
                method = "DeleteVirtualDisk_Task";
                let name = call.req.child_text("name").unwrap_or_default().to_owned();
                let path =
                    DatastorePath::parse(&name).map_err(|_| Fault::invalid_argument("name"))?;
                if !path.resolve(self.lab.root()).exists() {
                    return Err(Fault::file_not_found(&name));
                }
                entity_name = name;
                Box::new(move |_| {
                    lab.delete_virtual_disk(&path).map_err(lab_fault)?;
                    Ok(None)
                })
            }
            "MoveIntoFolder_Task" => {
                method = "MoveIntoFolder_Task";
                let folder_path = self.vm_folder_path(&call.this)?;
                entity_name = folder_path.clone();
                let mut vms = Vec::new();
                for e in call.req.children_named("list") {
                    let (k, id) = e.moref().ok_or_else(|| Fault::invalid_argument("list"))?;
                    if k != "VirtualMachine" {
                        return Err(Fault::invalid_argument("list"));
                    }
                    self.vm_state(&id)?;
                    vms.push(VmMoref(id));
                }
                Box::new(move |_| {
                    for vm in &vms {
                        lab.move_vm(vm, &folder_path).map_err(lab_fault)?;
                    }
                    Ok(None)
                })
            }
            "Destroy_Task" => {
                method = "Destroy_Task";
                let (work, name) = self.destroy_work(call)?;
                entity_name = name;
                work
            }
            other => return Err(Fault::method_not_found(other)),
        };
        let key = self.tasks.submit(
            method,
            call.this.clone(),
            entity_name,
            session.user.clone(),
            work,
        );
        Ok(returnval_ref("Task", &key))
    }

    /// The inventory path of a VM folder moref (ManagedObjectNotFound otherwise).
    fn vm_folder_path(&self, this: &(String, String)) -> Result<String, Fault> {
        let inv = self.inventory();
        if this.0 != "Folder" {
            return Err(Fault::not_found_object(&this.0, &this.1));
        }
        inv.folder(&this.1)
            .ok_or_else(|| Fault::not_found_object(&this.0, &this.1))?;
        inv.folder_path(&this.1)
            .ok_or_else(|| Fault::not_found_object(&this.0, &this.1))
    }

    /// The call's `pool` argument names a resource pool of the inventory.
    fn check_pool(&self, call: &Call<'_>) -> Result<(), Fault> {
        let pool = call
            .req
            .child("pool")
            .and_then(Element::moref)
            .ok_or_else(|| Fault::invalid_argument("pool"))?;
        if self.inventory().pool(&pool.1).is_none() {
            return Err(Fault::not_found_object(&pool.0, &pool.1));
        }
        Ok(())
    }

    fn create_vm_checks(&self, call: &Call<'_>) -> Result<(String, Element), Fault> {
        let folder_path = self.vm_folder_path(&call.this)?;
        self.check_pool(call)?;
        let spec = call
            .req
            .child("config")
            .cloned()
            .ok_or_else(|| Fault::invalid_argument("config"))?;
        Ok((folder_path, spec))
    }

    fn create_vm(
        &self,
        folder_path: &str,
        spec: &Element,
        p: &super::tasks::Progress,
    ) -> Result<Option<Val>, Fault> {
        let name = spec
            .child_text("name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Fault::invalid_argument("config.name"))?;
        let vm_path = spec
            .child("files")
            .and_then(|f| f.child_text("vmPathName"))
            .ok_or_else(|| Fault::invalid_argument("config.files.vmPathName"))?;
        let ds = vm_path
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|(d, _)| d)
            .ok_or_else(|| Fault::invalid_argument("config.files.vmPathName"))?;
        let inv = self.inventory();
        if inv.datastore_by_name(ds).is_none() {
            return Err(Fault::invalid_datastore(ds));
        }
        let default_ds = self.lab.settings().map_err(lab_fault)?.default_datastore;
        if ds != default_ds {
            return Err(Fault::invalid_datastore(ds));
        }
        let world = self.world()?;
        if let Some(dup) = world
            .vms
            .iter()
            .find(|v| v.name == name && v.folder == folder_path)
        {
            return Err(Fault::duplicate_name(name, "VirtualMachine", &dup.moref.0));
        }
        let disks = disks_added(spec)
            .map(|(_, dev)| new_disk(dev))
            .collect::<Result<Vec<_>, _>>()?;
        let vm = self
            .lab
            .create_vm(name, folder_path, &disks)
            .map_err(lab_fault)?;
        p.set(60);
        self.lab
            .modify_vm(&vm, |s| {
                apply_spec(s, spec);
                Ok(())
            })
            .map_err(lab_fault)?;
        if spec.child_bool("changeTrackingEnabled") == Some(true) {
            self.lab.set_change_tracking(&vm, true).map_err(lab_fault)?;
        }
        Ok(Some(Val::moref("VirtualMachine", &vm.0)))
    }

    fn destroy_work(self: &Arc<Self>, call: &Call<'_>) -> Result<(Work, String), Fault> {
        let (kind, id) = call.this.clone();
        let lab = self.lab.clone();
        match kind.as_str() {
            "VirtualMachine" => {
                let vm = self.vm_state(&id)?;
                let vm_id = vm.moref.clone();
                let work: Work = Box::new(move |_| {
                    let s = lab.vm(&vm_id).map_err(lab_fault)?;
                    if s.power_state != PowerState::PoweredOff {
                        return Err(Fault::invalid_power_state(
                            "poweredOff",
                            power_text(s.power_state),
                        ));
                    }
                    lab.destroy_vm(&vm_id).map_err(lab_fault)?;
                    Ok(None)
                });
                Ok((work, vm.name))
            }
            "Folder" => {
                let inv = self.inventory();
                let f = inv
                    .folder(&id)
                    .ok_or_else(|| Fault::not_found_object(&kind, &id))?;
                if [
                    ROOT_FOLDER,
                    VM_FOLDER,
                    HOST_FOLDER,
                    DATASTORE_FOLDER,
                    NETWORK_FOLDER,
                    DATACENTER,
                ]
                .contains(&id.as_str())
                {
                    return Err(Fault::invalid_argument("_this"));
                }
                let name = f.name.clone();
                let me = Arc::clone(self);
                let work: Work = Box::new(move |_| {
                    let mut paths = Vec::new();
                    me.modify_inventory(|inv| {
                        paths = inv.remove_folder(&id);
                        Ok(())
                    })?;
                    for vm in me.lab.vms().map_err(lab_fault)? {
                        if paths.contains(&vm.folder) {
                            lab.destroy_vm(&vm.moref).map_err(lab_fault)?;
                        }
                    }
                    Ok(None)
                });
                Ok((work, name))
            }
            _ => Err(Fault::not_found_object(&kind, &id)),
        }
    }

    /// VirtualDiskManager.SetVirtualDiskUuid (synchronous).
    pub(crate) fn set_virtual_disk_uuid(&self, call: &Call<'_>) -> Result<String, Fault> {
        if call.this.0 != "VirtualDiskManager" {
            return Err(Fault::not_found_object(&call.this.0, &call.this.1));
        }
        let name = call.req.child_text("name").unwrap_or_default();
        let path = DatastorePath::parse(name).map_err(|_| Fault::invalid_argument("name"))?;
        let uuid = call.req.child_text("uuid").unwrap_or_default();
        self.lab.set_disk_uuid(&path, uuid).map_err(|e| match &e {
            crate::vmstate::LabError::Datastore {
                source: crate::datastore::DatastoreError::InvalidUuid { .. },
                ..
            } => Fault::invalid_argument("uuid"),
            _ => lab_fault(e),
        })?;
        Ok(String::new())
    }

    /// UnregisterVM (synchronous).
    pub(crate) fn unregister(&self, call: &Call<'_>) -> Result<String, Fault> {
        let vm = self.vm_state(&call.this.1)?;
        if vm.power_state != PowerState::PoweredOff {
            return Err(Fault::invalid_power_state(
                "poweredOff",
                power_text(vm.power_state),
            ));
        }
        self.lab.unregister_vm(&vm.moref).map_err(lab_fault)?;
        Ok(String::new())
    }

    /// QueryChangedDiskAreas from the lab's change tracking (VSPHERE.md §A.7).
    pub(crate) fn query_changed_disk_areas(&self, call: &Call<'_>) -> Result<String, Fault> {
        let vm = self.vm_state(&call.this.1)?;
        let snapshot = match call.req.child("snapshot").and_then(Element::moref) {
            Some((k, id)) => {
                if !vm.snapshots.iter().any(|s| s.moref.0 == id) {
                    return Err(Fault::not_found_object(&k, &id));
                }
                Some(SnapshotMoref(id))
            }
            None => None,
        };
        let key: i32 = call
            .req
            .child_parse("deviceKey")
            .ok_or_else(|| Fault::invalid_argument("deviceKey"))?;
        let disk = vm
            .disks
            .iter()
            .find(|d| d.key == DiskKey(key))
            .ok_or_else(|| {
                Fault::not_found(&format!("device {key} is not a disk of {}", vm.moref))
            })?;
        let start: u64 = call.req.child_parse("startOffset").unwrap_or(0);
        if start > disk.capacity_bytes {
            return Err(Fault::invalid_argument("startOffset"));
        }
        let change_id = ChangeId::new(call.req.child_text("changeId").unwrap_or_default());
        let areas = self
            .lab
            .changed_areas(&vm.moref, snapshot.as_ref(), DiskKey(key), &change_id)
            .map_err(lab_fault)?;
        let mut out = format!(
            "<returnval><startOffset>{start}</startOffset><length>{}</length>",
            disk.capacity_bytes - start
        );
        for (s, l) in areas {
            let end = s + l;
            if end <= start {
                continue;
            }
            let s = s.max(start);
            let _ = write!(
                out,
                "<changedArea><start>{s}</start><length>{}</length></changedArea>",
                end - s
            );
        }
        out.push_str("</returnval>");
        Ok(out)
    }

    fn entity_vms(&self, call: &Call<'_>) -> Result<Vec<VmMoref>, Fault> {
        call.req
            .children_named("entity")
            .map(|e| {
                let (k, id) = e.moref().ok_or_else(|| Fault::invalid_argument("entity"))?;
                if k != "VirtualMachine" {
                    return Err(Fault::not_found_object(&k, &id));
                }
                self.vm_state(&id).map(|v| v.moref)
            })
            .collect()
    }

    /// AuthorizationManager.DisableMethods (VSPHERE.md §A.12).
    pub(crate) fn disable_methods(&self, call: &Call<'_>) -> Result<String, Fault> {
        let vms = self.entity_vms(call)?;
        let source = call
            .req
            .child_text("sourceId")
            .unwrap_or_default()
            .to_owned();
        let methods: Vec<String> = call
            .req
            .children_named("method")
            .map(|m| m.child_text("method").unwrap_or(m.text.trim()).to_owned())
            .collect();
        for vm in vms {
            self.lab
                .modify_vm(&vm, |s| {
                    for m in &methods {
                        if let Some(d) = s
                            .disabled_methods
                            .iter()
                            .find(|d| &d.method == m && d.source != source)
                        {
                            return Ok(Err(Fault::method_already_disabled(&d.source)));
                        }
                    }
                    for m in &methods {
                        let entry = DisabledMethod {
                            method: m.clone(),
                            source: source.clone(),
                        };
                        if !s.disabled_methods.contains(&entry) {
                            s.disabled_methods.push(entry);
                        }
                    }
                    Ok(Ok(()))
                })
                .map_err(lab_fault)??;
        }
        Ok(String::new())
    }

    /// AuthorizationManager.EnableMethods.
    pub(crate) fn enable_methods(&self, call: &Call<'_>) -> Result<String, Fault> {
        let vms = self.entity_vms(call)?;
        let source = call
            .req
            .child_text("sourceId")
            .unwrap_or_default()
            .to_owned();
        let methods: Vec<String> = call
            .req
            .children_named("method")
            .map(|m| m.text.trim().to_owned())
            .collect();
        if let Some(vm) = vms
            .iter()
            .find(|vm| self.lab.take_enable_methods_failure(vm))
        {
            return Err(Fault::system_error(&format!(
                "EnableMethods on {}: injected failure",
                vm.0
            )));
        }
        for vm in vms {
            self.lab
                .modify_vm(&vm, |s| {
                    s.disabled_methods
                        .retain(|d| !(methods.contains(&d.method) && d.source == source));
                    Ok(())
                })
                .map_err(lab_fault)?;
        }
        Ok(String::new())
    }

    /// FileManager.MakeDirectory.
    pub(crate) fn make_directory(&self, call: &Call<'_>) -> Result<String, Fault> {
        let name = call.req.child_text("name").unwrap_or_default();
        let path = DatastorePath::parse(name).map_err(|_| Fault::invalid_argument("name"))?;
        if self
            .inventory()
            .datastore_by_name(path.datastore())
            .is_none()
        {
            return Err(Fault::invalid_datastore(path.datastore()));
        }
        let dir = path.resolve(self.lab.root());
        if dir.exists() {
            return Err(Fault::file_already_exists(name));
        }
        let parents = call
            .req
            .child_bool("createParentDirectories")
            .unwrap_or(false);
        let r = if parents {
            std::fs::create_dir_all(&dir)
        } else {
            std::fs::create_dir(&dir)
        };
        r.map_err(|_| Fault::file_not_found(name))?;
        Ok(String::new())
    }
}
