//! Changing the inventory (VSPHERE.md §A.9, §A.10): ReconfigVM_Task, CreateFolder,
//! CreateVM_Task, RegisterVM_Task, power off/on, Destroy_Task, UnregisterVM.

use super::soap::{SoapClient, VsphereError};
use super::types::{FolderMoref, MoRef, ResourcePoolMoref, VmMoref};
use super::xml::{Element, XmlWriter};

impl SoapClient {
    /// `ReconfigVM_Task` with `spec`, waiting for the task.
    ///
    /// # Errors
    ///
    /// The call's fault or [`VsphereError::TaskFailed`] (e.g. `InvalidState`,
    /// `TaskInProgress`, `NoPermission`).
    pub async fn reconfigure_vm(
        &self,
        vm: &VmMoref,
        spec: &VmConfigSpec,
    ) -> Result<(), VsphereError> {
        let mut w = XmlWriter::new();
        spec.write("spec", &mut w);
        self.run_task("ReconfigVM_Task", &vm.moref(), &w.finish())
            .await
            .map(|_| ())
    }

    /// Sets and removes ExtraConfig keys in one reconfigure (removal = empty value).
    ///
    /// # Errors
    ///
    /// As [`SoapClient::reconfigure_vm`].
    pub async fn set_extra_config(
        &self,
        vm: &VmMoref,
        changes: Vec<ExtraConfigChange>,
    ) -> Result<(), VsphereError> {
        let spec = VmConfigSpec {
            extra_config: changes,
            ..VmConfigSpec::default()
        };
        self.reconfigure_vm(vm, &spec).await
    }

    /// `Folder.CreateFolder`.
    ///
    /// # Errors
    ///
    /// `DuplicateName` when `parent` already has a child named `name`.
    pub async fn create_folder(
        &self,
        parent: &FolderMoref,
        name: &str,
    ) -> Result<FolderMoref, VsphereError> {
        let mut w = XmlWriter::new();
        w.text("name", name);
        let response = self
            .invoke("CreateFolder", &parent.moref(), &w.finish())
            .await?;
        returned_moref("CreateFolder", &response).map(|m| FolderMoref(m.value))
    }

    /// `Folder.CreateVM_Task` into `folder` and `pool`; `spec.vm_path_name` is required.
    ///
    /// # Errors
    ///
    /// `DuplicateName`, `FileAlreadyExists`, `InvalidDatastore`, … as the call's fault
    /// or [`VsphereError::TaskFailed`].
    pub async fn create_vm(
        &self,
        folder: &FolderMoref,
        spec: &VmConfigSpec,
        pool: &ResourcePoolMoref,
        host: Option<&MoRef>,
    ) -> Result<VmMoref, VsphereError> {
        let mut w = XmlWriter::new();
        spec.write("config", &mut w);
        w.moref("pool", &pool.moref());
        if let Some(host) = host {
            w.moref("host", host);
        }
        let result = self
            .run_task("CreateVM_Task", &folder.moref(), &w.finish())
            .await?;
        task_moref("CreateVM_Task", result.as_ref()).map(|m| VmMoref(m.value))
    }

    /// `Folder.RegisterVM_Task` of `vmx_path` (`[ds] dir/vm.vmx`) as a VM (not a template).
    ///
    /// # Errors
    ///
    /// `AlreadyExists`, `DuplicateName`, `NotFound`/`FileFault`, `InvalidState`, …
    pub async fn register_vm(
        &self,
        folder: &FolderMoref,
        vmx_path: &str,
        name: Option<&str>,
        pool: &ResourcePoolMoref,
    ) -> Result<VmMoref, VsphereError> {
        let mut w = XmlWriter::new();
        w.text("path", vmx_path)
            .opt_text("name", name)
            .value("asTemplate", false);
        w.moref("pool", &pool.moref());
        let result = self
            .run_task("RegisterVM_Task", &folder.moref(), &w.finish())
            .await?;
        task_moref("RegisterVM_Task", result.as_ref()).map(|m| VmMoref(m.value))
    }

    /// `PowerOffVM_Task`.
    ///
    /// # Errors
    ///
    /// `InvalidPowerState` when the VM is already off.
    pub async fn power_off_vm(&self, vm: &VmMoref) -> Result<(), VsphereError> {
        self.run_task("PowerOffVM_Task", &vm.moref(), "")
            .await
            .map(|_| ())
    }

    /// `PowerOnVM_Task`.
    ///
    /// # Errors
    ///
    /// `InvalidPowerState` when the VM is already on.
    pub async fn power_on_vm(&self, vm: &VmMoref) -> Result<(), VsphereError> {
        self.run_task("PowerOnVM_Task", &vm.moref(), "")
            .await
            .map(|_| ())
    }

    /// `ManagedEntity.Destroy_Task`: for a VM, deletes its files too (it must be off).
    ///
    /// # Errors
    ///
    /// `InvalidPowerState`/`InvalidState` for a running VM, `ManagedObjectNotFound`.
    pub async fn destroy(&self, entity: &MoRef) -> Result<(), VsphereError> {
        self.run_task("Destroy_Task", entity, "").await.map(|_| ())
    }

    /// `VirtualMachine.UnregisterVM`: removes the VM from the inventory, keeps its files.
    ///
    /// # Errors
    ///
    /// `InvalidPowerState` for a running VM.
    pub async fn unregister_vm(&self, vm: &VmMoref) -> Result<(), VsphereError> {
        self.invoke("UnregisterVM", &vm.moref(), "")
            .await
            .map(|_| ())
    }
}

fn returned_moref(method: &'static str, response: &Element) -> Result<MoRef, VsphereError> {
    response
        .child("returnval")
        .ok_or_else(|| VsphereError::Malformed {
            method,
            reason: "no returnval".into(),
        })?
        .moref()
        .map_err(|source| VsphereError::Xml { method, source })
}

fn task_moref(method: &'static str, result: Option<&Element>) -> Result<MoRef, VsphereError> {
    result
        .ok_or_else(|| VsphereError::Malformed {
            method,
            reason: "task has no result".into(),
        })?
        .moref()
        .map_err(|source| VsphereError::Xml { method, source })
}

/// One ExtraConfig change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtraConfigChange {
    /// Set `key` to `value` (added or overwritten).
    Set(String, String),
    /// Remove `key` (sent with an empty value, §A.9).
    Remove(String),
}

/// A new thin, persistent virtual disk on a new paravirtual SCSI controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDisk {
    /// Capacity in KiB.
    pub capacity_kb: u64,
    /// Unit number on the controller (0–15, not 7).
    pub unit_number: i32,
}

/// The `VirtualMachineConfigSpec` subset the agent sends; unset fields are omitted.
/// Written in WSDL order (§A.9).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmConfigSpec {
    /// VM name.
    pub name: Option<String>,
    /// Hardware version, e.g. `vmx-19`.
    pub version: Option<String>,
    /// BIOS UUID to keep.
    pub uuid: Option<String>,
    /// Instance UUID to keep.
    pub instance_uuid: Option<String>,
    /// Guest OS id, e.g. `otherGuest64`.
    pub guest_id: Option<String>,
    /// `files.vmPathName`: `[ds]` or `[ds] dir/` (required by CreateVM).
    pub vm_path_name: Option<String>,
    /// vCPUs.
    pub num_cpus: Option<u32>,
    /// Memory in MiB.
    pub memory_mb: Option<u64>,
    /// Disks to create (with one new SCSI controller).
    pub new_disks: Vec<NewDisk>,
    /// ExtraConfig changes.
    pub extra_config: Vec<ExtraConfigChange>,
    /// CBT on/off.
    pub change_tracking_enabled: Option<bool>,
}

/// Temporary (negative) device key of the controller added for [`NewDisk`]s.
const NEW_CONTROLLER_KEY: i32 = -100;

impl VmConfigSpec {
    /// Writes `<element>` with the set fields in WSDL order.
    pub fn write(&self, element: &str, w: &mut XmlWriter) {
        w.open(element);
        w.opt_text("name", self.name.as_deref())
            .opt_text("version", self.version.as_deref())
            .opt_text("uuid", self.uuid.as_deref())
            .opt_text("instanceUuid", self.instance_uuid.as_deref())
            .opt_text("guestId", self.guest_id.as_deref());
        if let Some(path) = &self.vm_path_name {
            w.open("files").text("vmPathName", path).close("files");
        }
        if let Some(n) = self.num_cpus {
            w.value("numCPUs", n);
        }
        if let Some(mb) = self.memory_mb {
            w.value("memoryMB", mb);
        }
        if !self.new_disks.is_empty() {
            w.open("deviceChange").text("operation", "add");
            w.open_typed("device", "ParaVirtualSCSIController")
                .value("key", NEW_CONTROLLER_KEY)
                .value("busNumber", 0)
                .text("sharedBus", "noSharing")
                .close("device")
                .close("deviceChange");
            for (i, disk) in (1..).zip(&self.new_disks) {
                w.open("deviceChange")
                    .text("operation", "add")
                    .text("fileOperation", "create")
                    .open_typed("device", "VirtualDisk")
                    .value("key", NEW_CONTROLLER_KEY - i)
                    .open_typed("backing", "VirtualDiskFlatVer2BackingInfo")
                    .text("fileName", "")
                    .text("diskMode", "persistent")
                    .value("thinProvisioned", true)
                    .close("backing")
                    .value("controllerKey", NEW_CONTROLLER_KEY)
                    .value("unitNumber", disk.unit_number)
                    .value("capacityInKB", disk.capacity_kb)
                    .close("device")
                    .close("deviceChange");
            }
        }
        for change in &self.extra_config {
            let (key, value) = match change {
                ExtraConfigChange::Set(k, v) => (k.as_str(), v.as_str()),
                ExtraConfigChange::Remove(k) => (k.as_str(), ""),
            };
            w.open_typed("extraConfig", "OptionValue")
                .text("key", key)
                .typed_text("value", "xsd:string", value)
                .close("extraConfig");
        }
        if let Some(on) = self.change_tracking_enabled {
            w.value("changeTrackingEnabled", on);
        }
        w.close(element);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_config_before_change_tracking_and_removal_is_empty() {
        let spec = VmConfigSpec {
            extra_config: vec![
                ExtraConfigChange::Set("a".into(), "1".into()),
                ExtraConfigChange::Remove("b".into()),
            ],
            change_tracking_enabled: Some(true),
            ..VmConfigSpec::default()
        };
        let mut w = XmlWriter::new();
        spec.write("spec", &mut w);
        assert_eq!(
            w.finish(),
            concat!(
                "<spec><extraConfig xsi:type=\"OptionValue\"><key>a</key>",
                "<value xsi:type=\"xsd:string\">1</value></extraConfig>",
                "<extraConfig xsi:type=\"OptionValue\"><key>b</key>",
                "<value xsi:type=\"xsd:string\"></value></extraConfig>",
                "<changeTrackingEnabled>true</changeTrackingEnabled></spec>"
            )
        );
    }

    #[test]
    fn create_spec_order() {
        let spec = VmConfigSpec {
            name: Some("r".into()),
            uuid: Some("u".into()),
            guest_id: Some("otherGuest64".into()),
            vm_path_name: Some("[ds]".into()),
            num_cpus: Some(1),
            memory_mb: Some(64),
            new_disks: vec![NewDisk {
                capacity_kb: 1024,
                unit_number: 0,
            }],
            extra_config: vec![ExtraConfigChange::Set("k".into(), "v".into())],
            ..VmConfigSpec::default()
        };
        let mut w = XmlWriter::new();
        spec.write("config", &mut w);
        let root = Element::parse(
            format!(
                "<r xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">{}</r>",
                w.finish()
            )
            .as_bytes(),
        )
        .unwrap();
        let names: Vec<&str> = root.children[0]
            .children
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "name",
                "uuid",
                "guestId",
                "files",
                "numCPUs",
                "memoryMB",
                "deviceChange",
                "deviceChange",
                "extraConfig"
            ]
        );
    }
}
