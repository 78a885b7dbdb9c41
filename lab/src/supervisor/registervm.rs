//! WCP's RegisterVM (`com.vmware.vcenter.namespaces.instances.register_VM`): the request,
//! the task with its progress stages (seed 001 §12.3), validation (§7, §11.2) and the
//! restore types (§4.3, §6, §8; VSPHERE.md §C.6). The rules are listed in the module doc
//! of [`super`].

use serde::Deserialize;
use serde_json::{Value, json};

use super::FCD_ID_ANNOTATION;
use super::codec::{self, Key};
use super::operator::{
    ANN_BACKUP_VERSION, ANN_INSTANCE_ID, ANN_MANAGER_ID, ANN_PAUSE, LABEL_ZONE, claims, pvc_disk,
    same_uuid,
};
use super::store::{Store, SupervisorError};
use super::{Supervisor, SupervisorVersion, kind, lock};
use crate::vcenter::fault::Fault;
use crate::vmstate::{PowerState, VmDisk, VmMoref, VmState};

/// A queued registration.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// The cis task `description`/`operation` of a registration.
pub const TASK_METHOD: &str = "com.vmware.wcp.vmservice.registervm";

const ERR_PREFIX: &str = "VCenterWcpWorkloadRegisterVM";
const VM_NOT_FOUND: &str = "VCenterWcpWorkloadRegisterVMVMNotFound";
const NOT_IN_FOLDER: &str = "VCenterWcpWorkloadRegisterVMNotFoundInNamespaceFolder";
const DUPLICATE_BIOS: &str = "VCenterWcpWorkloadRegisterVMDuplicateVMBiosUUID";
const VALIDATE_FAILED: &str = "VCenterWcpWorkloadRegisterVMValidateVMResourceFailed";
const CONVERT_FAILED: &str = "VCenterWcpWorkloadRegisterVMConvertUnstructuredToVMTypeFailed";
const ALREADY_EXISTS: &str = "VCenterWcpWorkloadRegisterVMAlreadyExistsOnSupervisor";
const REGISTER_PVC_FAILED: &str = "VCenterWcpWorkloadRegisterVMRegisterPVCFailed";
/// Lab id (the guide names no error for §7.2.1).
const SNAPSHOT_REVERT: &str = "VCenterWcpWorkloadRegisterVMSnapshotRevertInProgress";

const ANN_RESTORED: &str = "vmoperator.vmware.com/restored-vm";
const ANN_FAILED_OVER: &str = "vmoperator.vmware.com/failed-over-vm";
const ANN_SNAPSHOT_REVERT: &str = "vmoperator.vmware.com/snapshot-revert-in-progress";
/// §8.1.3: kept from the existing CR on restore to existing.
const IMMUTABLE_ANNOTATIONS: [&str; 5] = [
    "vmoperator.vmware.com/created-at-build-version",
    "vmoperator.vmware.com/created-at-schema-version",
    "vmoperator.vmware.com/upgraded-to-build-version",
    "vmoperator.vmware.com/upgraded-to-schema-version",
    "vmoperator.vmware.com/upgraded-to-feature-version",
];

/// `RegisterVMSpec` (strict: unknown fields are refused).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterVmSpec {
    /// VM moref.
    pub vm: String,
    /// VCF 9.0+ subnet remapping.
    #[serde(default)]
    pub network_config_override: Option<NetworkConfigOverride>,
}

/// `network_config_override`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfigOverride {
    /// The mappings.
    pub subnet_mappings: Vec<SubnetMapping>,
}

/// One mapping.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetMapping {
    /// The subnet in the backup.
    pub current_subnet: Subnet,
    /// Its replacement.
    pub new_subnet: Subnet,
}

/// A subnet reference.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    /// `SUBNET` or `SUBNETSET`.
    #[serde(rename = "type")]
    pub kind: SubnetType,
    /// Name (`""`: the namespace's default SubnetSet).
    #[serde(default)]
    pub name: String,
}

/// `SUBNET` | `SUBNETSET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SubnetType {
    /// An NSX-VPC `Subnet`.
    #[serde(rename = "SUBNET")]
    Subnet,
    /// An NSX-VPC `SubnetSet`.
    #[serde(rename = "SUBNETSET")]
    SubnetSet,
}

impl SubnetType {
    fn kind(self) -> &'static str {
        match self {
            Self::Subnet => "Subnet",
            Self::SubnetSet => "SubnetSet",
        }
    }
}

/// A synchronous vAPI refusal (`error_type` as VSPHERE.md §B).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error_type} ({status}): {message}")]
pub struct VapiError {
    /// HTTP status.
    pub status: u16,
    /// `INVALID_ARGUMENT`, `UNSUPPORTED`, `NOT_FOUND`.
    pub error_type: &'static str,
    /// Text.
    pub message: String,
}

fn fail(id: &'static str, message: impl Into<String>) -> Fault {
    Fault {
        kind: id,
        message: message.into(),
        fields: String::new(),
    }
}

fn store_fault(e: SupervisorError) -> Fault {
    fail(REGISTER_PVC_FAILED, format!("supervisor: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RestoreType {
    New,
    Existing,
    DiskOnly,
}

/// What validation established.
struct Plan {
    vm: VmState,
    yaml: Value,
    name: String,
    pvc_data: Vec<Value>,
    classic_data: Vec<Value>,
    restore: RestoreType,
    failover: bool,
    existing: Option<Value>,
}

impl Supervisor {
    /// Starts a registration task; returns the cis task id.
    ///
    /// # Errors
    /// [`VapiError`] for a missing namespace or a network override on 8.0U3.
    pub fn register_vm(
        &self,
        ns: &str,
        spec: RegisterVmSpec,
        user: &str,
    ) -> Result<String, VapiError> {
        if spec.network_config_override.is_some()
            && self.settings().version == SupervisorVersion::V80U3
        {
            return Err(VapiError {
                status: 400,
                error_type: "UNSUPPORTED",
                message: "network_config_override needs a Supervisor with incremental restore support (VCF 9.0+)".into(),
            });
        }
        if self.get("namespaces", "", ns).is_none() {
            return Err(VapiError {
                status: 404,
                error_type: "NOT_FOUND",
                message: format!("namespace {ns} not found"),
            });
        }
        let name = self
            .lab
            .vm(&VmMoref(spec.vm.clone()))
            .map_or_else(|_| spec.vm.clone(), |v| v.name);
        let key = self.tasks.add_external(
            TASK_METHOD,
            ("VirtualMachine".into(), spec.vm.clone()),
            name,
            user.to_owned(),
        );
        let me = self.me.clone();
        let (ns, task) = (ns.to_owned(), key.clone());
        let job: Job = Box::new(move || {
            if let Some(sup) = me.upgrade() {
                sup.tasks.start_running(&task);
                let result = sup.run_registration(&ns, &spec, &task);
                if let Err(f) = &result {
                    tracing::info!(
                        task,
                        ns,
                        vm = spec.vm,
                        error = f.kind,
                        message = f.message,
                        "lab wcp: registervm failed"
                    );
                }
                sup.tasks.complete(&task, result.map(|()| None));
            }
        });
        if lock(&self.wcp_tx).send(job).is_err() {
            self.tasks.complete(
                &key,
                Err(fail(ERR_PREFIX, "the registration worker stopped")),
            );
        }
        Ok(key)
    }

    /// The cis `Info` of a task.
    #[must_use]
    pub fn task(&self, id: &str) -> Option<Value> {
        self.tasks.get(id).map(|t| crate::vcenter::cis_info(&t))
    }

    /// `{task id: Info}` of the tasks targeting `VirtualMachine:vm-N` (all for `None`).
    #[must_use]
    pub fn tasks_for(&self, target: Option<&str>) -> serde_json::Map<String, Value> {
        self.tasks
            .all()
            .into_iter()
            .filter(|t| target.is_none_or(|tg| format!("{}:{}", t.entity.0, t.entity.1) == tg))
            .map(|t| (t.key.clone(), crate::vcenter::cis_info(&t)))
            .collect()
    }

    fn stage(&self, task: &str, percent: u8) {
        self.tasks.progress(task).set(percent);
        lock(&self.stages)
            .entry(task.to_owned())
            .or_default()
            .push(percent);
        std::thread::sleep(self.task_step);
    }

    /// The progress stages a registration task went through, in order (§12.3).
    #[must_use]
    pub fn registration_stages(&self, task: &str) -> Vec<u8> {
        lock(&self.stages).get(task).cloned().unwrap_or_default()
    }

    fn run_registration(&self, ns: &str, spec: &RegisterVmSpec, task: &str) -> Result<(), Fault> {
        self.stage(task, 5);
        let vm = self.lab.vm(&VmMoref(spec.vm.clone())).map_err(|_| {
            fail(
                VM_NOT_FOUND,
                format!("virtual machine {} not found", spec.vm),
            )
        })?;
        self.stage(task, 10);
        if self.settings().failing_registrations.contains(&vm.name) {
            return Err(fail(
                VALIDATE_FAILED,
                format!("validating VM {}: injected failure", vm.name),
            ));
        }
        let plan = self.validate(ns, vm)?;
        if plan.restore == RestoreType::Existing {
            let mut store = lock(&self.store);
            let mut cr = plan.existing.clone().unwrap_or_default();
            cr["metadata"]["annotations"][ANN_PAUSE] = "true".into();
            if let Some(m) = cr["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            store
                .replace(&kind("virtualmachines"), ns, &plan.name, cr)
                .map_err(store_fault)?;
        }
        self.stage(task, 20);
        if plan.restore != RestoreType::DiskOnly {
            self.restore_resources(ns, &plan)?;
        }
        self.stage(task, 40);
        let mut store = lock(&self.store);
        let claim_map = self.register_volumes(&mut store, ns, &plan)?;
        drop(store);
        self.stage(task, 80);
        let mut store = lock(&self.store);
        self.write_cr(&mut store, ns, &plan, &claim_map, spec)?;
        self.reconcile_vm(&mut store, ns, &plan.name)
            .map_err(store_fault)?;
        drop(store);
        self.tasks.progress(task).set(100);
        lock(&self.stages)
            .entry(task.to_owned())
            .or_default()
            .push(100);
        Ok(())
    }

    /// Stage "validate VM" (§4.1 step 7; §7; §4.3).
    fn validate(&self, ns: &str, vm: VmState) -> Result<Plan, Fault> {
        let settings = self.settings();
        let folder = self.namespace_folder(ns);
        if vm.folder != folder {
            return Err(fail(
                NOT_IN_FOLDER,
                format!(
                    "virtual machine {} is in {}, not in the namespace folder {folder}",
                    vm.moref, vm.folder
                ),
            ));
        }
        let all = self
            .lab
            .vms()
            .map_err(|e| fail(VM_NOT_FOUND, e.to_string()))?;
        if let Some(dup) = all.iter().find(|o| {
            o.moref != vm.moref
                && o.folder == folder
                && o.bios_uuid.eq_ignore_ascii_case(&vm.bios_uuid)
        }) {
            return Err(fail(
                DUPLICATE_BIOS,
                format!(
                    "virtual machine {} in namespace {ns} has the same BIOS UUID {}",
                    dup.moref, vm.bios_uuid
                ),
            ));
        }
        let ec = &vm.extra_config;
        let sp = settings.key_spelling;
        let raw = Key::VmYaml.get(ec, sp).ok_or_else(|| {
            fail(
                VALIDATE_FAILED,
                "the VM has no VM resource YAML in ExtraConfig",
            )
        })?;
        let yaml = codec::decode(raw)
            .and_then(|t| codec::from_yaml(&t))
            .ok_or_else(|| {
                fail(
                    VALIDATE_FAILED,
                    "the VM resource YAML in ExtraConfig cannot be decoded",
                )
            })?;
        let api = yaml["apiVersion"].as_str().unwrap_or_default();
        let version_ok = api
            .strip_prefix("vmoperator.vmware.com/v1alpha")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n >= 2)
            || api.starts_with("vmoperator.vmware.com/v1beta")
            || api == "vmoperator.vmware.com/v1";
        if !version_ok || yaml["kind"] != "VirtualMachine" {
            return Err(fail(
                CONVERT_FAILED,
                format!(
                    "cannot convert {api} {} to a VirtualMachine (v1alpha2 or later)",
                    yaml["kind"]
                ),
            ));
        }
        let name = yaml["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| fail(VALIDATE_FAILED, "the VM resource YAML has no metadata.name"))?
            .to_owned();
        let decode_list = |k: Key| -> Result<Vec<Value>, Fault> {
            match k.get(ec, sp) {
                None => Ok(Vec::new()),
                Some(v) => codec::decode(v)
                    .and_then(|t| serde_json::from_str::<Vec<Value>>(&t).ok())
                    .ok_or_else(|| {
                        fail(VALIDATE_FAILED, format!("{} cannot be decoded", k.name(sp)))
                    }),
            }
        };
        let pvc_data = decode_list(Key::PvcDiskData)?;
        let classic_data = decode_list(Key::ClassicDiskData).unwrap_or_default();
        let vm_claims: Vec<String> = claims(&yaml).into_iter().map(|(_, c)| c).collect();
        for c in &vm_claims {
            if !pvc_data.iter().any(|e| e["PVCName"] == c.as_str()) {
                return Err(fail(
                    VALIDATE_FAILED,
                    format!("PVC volume {c} has no pvc-disk-data"),
                ));
            }
        }
        for e in &pvc_data {
            if !vm_claims.iter().any(|c| e["PVCName"] == c.as_str()) {
                return Err(fail(
                    VALIDATE_FAILED,
                    format!(
                        "pvc-disk-data names PVC {} that no volume claims",
                        e["PVCName"]
                    ),
                ));
            }
        }
        let ec_version = match Key::BackupVersion.get(ec, sp) {
            None => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                fail(
                    VALIDATE_FAILED,
                    format!("backup version {v:?} is not a decimal number"),
                )
            })?),
        };
        let existing = lock(&self.store).get(&kind("virtualmachines"), ns, &name);
        let reverting = |o: &Value| {
            o["metadata"]["annotations"]
                .get(ANN_SNAPSHOT_REVERT)
                .is_some()
        };
        if reverting(&yaml) || existing.as_ref().is_some_and(reverting) {
            return Err(fail(
                SNAPSHOT_REVERT,
                format!("a snapshot revert of {name} is in progress; registration skipped"),
            ));
        }
        let v9 = settings.version == SupervisorVersion::V90;
        if existing.is_some() && !v9 {
            return Err(fail(
                ALREADY_EXISTS,
                format!("VirtualMachine {ns}/{name} already exists on the Supervisor"),
            ));
        }
        let failover = v9
            && yaml["metadata"]["annotations"][ANN_MANAGER_ID]
                .as_str()
                .is_some_and(|m| !m.is_empty() && m != self.instance_uuid());
        let restore = match &existing {
            None => RestoreType::New,
            Some(cr) => {
                let ann = cr["metadata"]["annotations"][ANN_BACKUP_VERSION]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok());
                match (ec_version, ann) {
                    (Some(e), Some(a)) if e < a => RestoreType::Existing,
                    _ => RestoreType::DiskOnly,
                }
            }
        };
        Ok(Plan {
            vm,
            yaml,
            name,
            pvc_data,
            classic_data,
            restore,
            failover,
            existing,
        })
    }

    /// Stage "restore additional resources": the bootstrap Secrets/ConfigMaps.
    fn restore_resources(&self, ns: &str, plan: &Plan) -> Result<(), Fault> {
        let Some(text) = Key::AdditionalResources
            .get(&plan.vm.extra_config, self.settings().key_spelling)
            .and_then(codec::decode)
        else {
            return Ok(());
        };
        let docs = codec::from_yaml_documents(&text).ok_or_else(|| {
            fail(
                VALIDATE_FAILED,
                "the additional resources YAML cannot be decoded",
            )
        })?;
        let mut store = lock(&self.store);
        for mut d in docs {
            let Some(k) = d["kind"].as_str().and_then(super::KindInfo::find) else {
                continue;
            };
            if !matches!(k.kind, "Secret" | "ConfigMap") {
                continue;
            }
            if let Some(m) = d["metadata"].as_object_mut() {
                for f in [
                    "uid",
                    "resourceVersion",
                    "creationTimestamp",
                    "managedFields",
                    "ownerReferences",
                ] {
                    m.remove(f);
                }
            }
            let n = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let r = if store.get(&k, ns, &n).is_some() {
                store.replace(&k, ns, &n, d)
            } else {
                store.create(&k, ns, d)
            };
            r.map_err(|e| fail(VALIDATE_FAILED, format!("restore {} {n}: {e}", k.kind)))?;
        }
        Ok(())
    }

    /// Stage "register volumes": old claim name → new claim name (new/existing), or the
    /// appended `(volume, claim)` pairs keyed by `""` (disk-only).
    fn register_volumes(
        &self,
        store: &mut Store,
        ns: &str,
        plan: &Plan,
    ) -> Result<Vec<(String, String)>, Fault> {
        let pvck = kind("persistentvolumeclaims");
        let pvcs = store.list(&pvck, Some(ns), None).map_err(store_fault)?;
        let backed_by_pvc = |d: &VmDisk| {
            pvcs.iter()
                .find(|p| pvc_disk(p, &plan.vm).is_some_and(|x| x.key == d.key))
        };
        let in_list = |list: &[Value], d: &VmDisk| {
            list.iter().any(|e| {
                same_uuid(e["UUID"].as_str().unwrap_or_default(), &d.uuid)
                    || e["FileName"].as_str() == Some(d.file_name.to_string().as_str())
            })
        };
        let storage_class = plan.yaml["spec"]["storageClass"].clone();
        let mut out = Vec::new();
        if plan.restore == RestoreType::DiskOnly {
            for d in &plan.vm.disks {
                if in_list(&plan.pvc_data, d)
                    || in_list(&plan.classic_data, d)
                    || backed_by_pvc(d).is_some()
                {
                    continue;
                }
                let claim =
                    self.restored_pvc(store, ns, d, &json!(["ReadWriteOnce"]), &storage_class)?;
                out.push((String::new(), claim));
            }
            return Ok(out);
        }
        for e in &plan.pvc_data {
            let old = e["PVCName"].as_str().unwrap_or_default().to_owned();
            let uuid = e["UUID"].as_str().unwrap_or_default();
            let file = e["FileName"].as_str().unwrap_or_default();
            let disk = plan
                .vm
                .disks
                .iter()
                .find(|d| same_uuid(&d.uuid, uuid))
                .or_else(|| {
                    plan.vm
                        .disks
                        .iter()
                        .find(|d| d.file_name.to_string() == file)
                })
                .ok_or_else(|| {
                    fail(
                        REGISTER_PVC_FAILED,
                        format!(
                            "no disk of {} matches PVC {old} (UUID {uuid}, file {file})",
                            plan.vm.moref
                        ),
                    )
                })?;
            // §6.4 step 5: on failover a disk that already backs a PVC keeps it.
            if plan.failover
                && let Some(p) = backed_by_pvc(disk)
            {
                out.push((
                    old,
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ));
                continue;
            }
            // CnsRegisterVolume registers a disk as a new First Class Disk: one that is
            // already the FCD of a PVC cannot be registered again (§3.3: a vendor restores
            // a PVC disk into a new disk, which "loses the FCD property").
            if !plan.failover
                && let Some(fcd) = self.lab.vm_disk_fcd_id(&plan.vm, disk.key)
                && let Some(owner) = pvcs
                    .iter()
                    .find(|p| p["metadata"]["annotations"][FCD_ID_ANNOTATION] == fcd.as_str())
            {
                return Err(fail(
                    REGISTER_PVC_FAILED,
                    format!(
                        "CnsRegisterVolume: disk {} is already First Class Disk {fcd} of PVC {}",
                        disk.file_name,
                        owner["metadata"]["name"].as_str().unwrap_or_default()
                    ),
                ));
            }
            let claim = self.restored_pvc(store, ns, disk, &e["AccessModes"], &storage_class)?;
            out.push((old, claim));
        }
        Ok(out)
    }

    /// A new `restored-<6 hex>` PVC Bound to `disk` (§8.1.1).
    fn restored_pvc(
        &self,
        store: &mut Store,
        ns: &str,
        disk: &VmDisk,
        modes: &Value,
        storage_class: &Value,
    ) -> Result<String, Fault> {
        let pvck = kind("persistentvolumeclaims");
        let name = loop {
            let n = format!(
                "restored-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..6]
            );
            if store.get(&pvck, ns, &n).is_none() {
                break n;
            }
        };
        let modes = if modes.as_array().is_some_and(|a| !a.is_empty()) {
            modes.clone()
        } else {
            json!(["ReadWriteOnce"])
        };
        let mut spec = json!({"accessModes": modes, "resources": {"requests": {"storage": disk.capacity_bytes.to_string()}}});
        if storage_class.is_string() {
            spec["storageClassName"] = storage_class.clone();
        }
        let pvc = store
            .create(&pvck, ns, json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": spec}))
            .map_err(store_fault)?;
        self.bind_pvc(store, ns, pvc, disk).map_err(store_fault)?;
        Ok(name)
    }

    /// The final stage: create/update the VirtualMachine (§8.1, §8.2).
    fn write_cr(
        &self,
        store: &mut Store,
        ns: &str,
        plan: &Plan,
        claim_map: &[(String, String)],
        spec: &RegisterVmSpec,
    ) -> Result<(), Fault> {
        let vmk = kind("virtualmachines");
        if plan.restore == RestoreType::DiskOnly {
            let mut cr = store.get(&vmk, ns, &plan.name).unwrap_or_default();
            if !cr["spec"]["volumes"].is_array() {
                cr["spec"]["volumes"] = json!([]);
            }
            for (_, claim) in claim_map {
                if let Some(v) = cr["spec"]["volumes"].as_array_mut() {
                    v.push(json!({"name": claim, "persistentVolumeClaim": {"claimName": claim}}));
                }
            }
            if let Some(m) = cr["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            store
                .replace(&vmk, ns, &plan.name, cr)
                .map_err(store_fault)?;
            return Ok(());
        }
        let mut cr = plan.yaml.clone();
        if let Some(m) = cr["metadata"].as_object_mut() {
            for f in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "generation",
                "managedFields",
                "finalizers",
                "ownerReferences",
            ] {
                m.remove(f);
            }
            m.insert("namespace".into(), ns.into());
        }
        if !cr["metadata"]["annotations"].is_object() {
            cr["metadata"]["annotations"] = json!({});
        }
        if !cr["metadata"]["labels"].is_object() {
            cr["metadata"]["labels"] = json!({});
        }
        let labels = cr["metadata"]["labels"].as_object_mut().expect("an object");
        labels.remove(LABEL_ZONE);
        let anns = cr["metadata"]["annotations"]
            .as_object_mut()
            .expect("an object");
        anns.remove(ANN_RESTORED);
        anns.remove(ANN_FAILED_OVER);
        if plan.failover {
            anns.insert(ANN_FAILED_OVER.into(), "true".into());
        } else {
            anns.insert(ANN_RESTORED.into(), "true".into());
        }
        // §8.1.1: claim names rewritten, volume names kept.
        if let Some(vols) = cr["spec"]["volumes"].as_array_mut() {
            for v in vols {
                if let Some(c) = v["persistentVolumeClaim"]["claimName"].as_str()
                    && let Some((_, new)) = claim_map.iter().find(|(old, _)| old == c)
                {
                    v["persistentVolumeClaim"]["claimName"] = new.clone().into();
                }
            }
        }
        cr["spec"]["powerState"] = "PoweredOff".into();
        if plan.failover {
            if let Some(s) = cr["spec"].as_object_mut() {
                s.remove("image");
            }
            cr["spec"]["imageName"] = "".into();
        }
        if let Some(o) = &spec.network_config_override {
            remap_networks(&mut cr, o);
        }
        cr["status"] = json!({"uniqueID": plan.vm.moref.0, "biosUUID": plan.vm.bios_uuid,
                              "instanceUUID": plan.vm.instance_uuid, "powerState": "PoweredOff"});
        self.lab
            .modify_vm(&plan.vm.moref, |s| {
                s.power_state = PowerState::PoweredOff;
                Ok(())
            })
            .map_err(|e| fail(REGISTER_PVC_FAILED, e.to_string()))?;
        match (&plan.existing, plan.restore) {
            (Some(old), RestoreType::Existing) => {
                let old_ann = &old["metadata"]["annotations"];
                if let Some(z) = old["metadata"]["labels"][LABEL_ZONE].as_str() {
                    cr["metadata"]["labels"][LABEL_ZONE] = z.into();
                }
                let anns = cr["metadata"]["annotations"]
                    .as_object_mut()
                    .expect("an object");
                for a in IMMUTABLE_ANNOTATIONS {
                    match old_ann[a].as_str() {
                        Some(v) => anns.insert(a.into(), v.into()),
                        None => anns.remove(a),
                    };
                }
                if let Some(i) = old_ann[ANN_INSTANCE_ID].as_str() {
                    anns.insert(ANN_INSTANCE_ID.into(), i.into());
                }
                anns.insert(ANN_PAUSE.into(), "true".into());
                let old_id = old["spec"]["bootstrap"]["cloudInit"]["instanceID"].clone();
                if cr["spec"]["bootstrap"]["cloudInit"].is_object() && old_id.is_string() {
                    cr["spec"]["bootstrap"]["cloudInit"]["instanceID"] = old_id;
                }
                store
                    .replace(&kind("virtualmachines"), ns, &plan.name, cr.clone())
                    .map_err(store_fault)?;
                // §6.2 step 7: old PVCs no longer referenced and on no other VM.
                let now: Vec<String> = claims(&cr).into_iter().map(|(_, c)| c).collect();
                let pvck = kind("persistentvolumeclaims");
                let others: Vec<VmState> = self
                    .lab
                    .vms()
                    .map_err(|e| fail(REGISTER_PVC_FAILED, e.to_string()))?
                    .into_iter()
                    .filter(|v| v.moref != plan.vm.moref)
                    .collect();
                for (_, c) in claims(old) {
                    if now.contains(&c) {
                        continue;
                    }
                    let Some(p) = store.get(&pvck, ns, &c) else {
                        continue;
                    };
                    if others.iter().any(|v| pvc_disk(&p, v).is_some()) {
                        continue;
                    }
                    // Reclaim policy Delete: CNS deletes the claim's volume, its First Class
                    // Disk file with it — but never a volume still attached to a VM, whose
                    // claim then stays.
                    let fcd = p["metadata"]["annotations"][FCD_ID_ANNOTATION]
                        .as_str()
                        .map(str::to_owned);
                    if let Some(file) = fcd.as_deref().and_then(|id| self.lab.fcd_file(id))
                        && let Some(on) = self
                            .lab
                            .disk_attached(&file)
                            .map_err(|e| fail(REGISTER_PVC_FAILED, e.to_string()))?
                    {
                        tracing::info!(
                            ns,
                            pvc = c,
                            file = %file,
                            vm = %on.moref,
                            "lab cns: the dangling PVC stays: its volume is attached to a VM"
                        );
                        continue;
                    }
                    store.delete(&pvck, ns, &c).map_err(store_fault)?;
                    if let Some(id) = fcd {
                        match self.lab.delete_fcd(&id) {
                            Ok(Some(file)) => {
                                tracing::info!(ns, pvc = c, file = %file, "lab cns: deleted the volume of a dangling PVC");
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(ns, pvc = c, error = %e, "lab cns: the volume of the deleted PVC stays");
                            }
                        }
                    }
                }
                let mut cr = store.get(&vmk, ns, &plan.name).unwrap_or_default();
                if let Some(a) = cr["metadata"]["annotations"].as_object_mut() {
                    a.remove(ANN_PAUSE);
                }
                store
                    .replace(&vmk, ns, &plan.name, cr)
                    .map_err(store_fault)?;
            }
            _ => {
                // §8.1.5: new cloud-init instance, annotation dropped.
                if let Some(a) = cr["metadata"]["annotations"].as_object_mut() {
                    a.remove(ANN_INSTANCE_ID);
                }
                if cr["spec"]["bootstrap"]["cloudInit"].is_object() {
                    cr["spec"]["bootstrap"]["cloudInit"]["instanceID"] =
                        uuid::Uuid::new_v4().to_string().into();
                }
                store.create(&vmk, ns, cr).map_err(store_fault)?;
            }
        }
        Ok(())
    }
}

/// §9.3: `spec.network.interfaces[].network` remapped.
fn remap_networks(cr: &mut Value, o: &NetworkConfigOverride) {
    let Some(ifaces) = cr["spec"]["network"]["interfaces"].as_array_mut() else {
        return;
    };
    for i in ifaces {
        let net = &i["network"];
        let (ty, name) = match net["kind"].as_str() {
            Some("Subnet") => (SubnetType::Subnet, net["name"].as_str().unwrap_or_default()),
            Some("SubnetSet") | None => (
                SubnetType::SubnetSet,
                net["name"].as_str().unwrap_or_default(),
            ),
            Some(_) => continue,
        };
        if let Some(m) = o
            .subnet_mappings
            .iter()
            .find(|m| m.current_subnet.kind == ty && m.current_subnet.name == name)
        {
            i["network"] = json!({"apiVersion": "crd.nsx.vmware.com/v1alpha1",
                                  "kind": m.new_subnet.kind.kind(), "name": m.new_subnet.name});
        }
    }
}
