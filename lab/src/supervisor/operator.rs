//! VM Operator: the vSphere VM behind a VirtualMachine (create, power, destroy), its
//! `status`, and the backup data it keeps in ExtraConfig (VSPHERE.md §C.2–C.4).

use serde_json::{Value, json};

use super::api::lab_error;
use super::codec::{self, Key, KeySpelling, NAMESPACED_NAME};
use super::store::{Store, SupervisorError};
use super::{
    CLASSIC_DISKS_ANNOTATION, DISK_FILE_ANNOTATION, DISK_UUID_ANNOTATION, FCD_ID_ANNOTATION,
    Supervisor, kind,
};
use crate::vmstate::{NewDisk, PowerState, VmDisk, VmMoref, VmState};

pub(crate) const ANN_BACKUP_VERSION: &str = "vmoperator.vmware.com/backup-version";
pub(crate) const ANN_MANAGER_ID: &str = "vmoperator.vmware.com/manager-id";
pub(crate) const ANN_INSTANCE_ID: &str = "vmoperator.vmware.com/instance-id";
pub(crate) const ANN_PAUSE: &str = "vmoperator.vmware.com/pause";
const ANN_PAUSED: &str = "vmoperator.vmware.com/paused";
const ANN_LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const ANN_FORCE_BACKUP: &str = "vmoperator.vmware.com/force-enable-backup";
pub(crate) const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
const COND_BACKUP: &str = "VirtualMachineBackupUpToDate";

/// `64Mi`, `20Gi`, `1G`, `512` → bytes, rounded up to 512.
pub(crate) fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    Some(n.checked_mul(mult)?.div_ceil(512) * 512)
}

/// Backing UUIDs compared as vSphere does (case and separators ignored).
pub(crate) fn same_uuid(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_hexdigit())
            .collect::<String>()
            .to_ascii_lowercase()
    };
    !a.is_empty() && norm(a) == norm(b)
}

/// The disk of `vm` a PVC is bound to (by recorded UUID, then file).
pub(crate) fn pvc_disk<'a>(pvc: &Value, vm: &'a VmState) -> Option<&'a VmDisk> {
    let ann = &pvc["metadata"]["annotations"];
    let uuid = ann[DISK_UUID_ANNOTATION].as_str().unwrap_or_default();
    let file = ann[DISK_FILE_ANNOTATION].as_str().unwrap_or_default();
    vm.disks
        .iter()
        .find(|d| same_uuid(&d.uuid, uuid))
        .or_else(|| vm.disks.iter().find(|d| d.file_name.to_string() == file))
}

/// The claim names of `spec.volumes`, with their volume names.
pub(crate) fn claims(obj: &Value) -> Vec<(String, String)> {
    obj["spec"]["volumes"]
        .as_array()
        .map(|vols| {
            vols.iter()
                .filter_map(|v| {
                    let c = v["persistentVolumeClaim"]["claimName"].as_str()?;
                    Some((v["name"].as_str().unwrap_or(c).to_owned(), c.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Sets (or updates) a condition; the transition time changes only with the status.
pub(crate) fn set_condition(obj: &mut Value, ty: &str, status: bool, reason: &str, msg: &str) {
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    if !obj["status"]["conditions"].is_array() {
        obj["status"]["conditions"] = json!([]);
    }
    let status = if status { "True" } else { "False" };
    let conds = obj["status"]["conditions"]
        .as_array_mut()
        .expect("made an array above");
    let old = conds.iter().position(|c| c["type"] == ty);
    let time = match old.map(|i| &conds[i]) {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => crate::vcenter::now_rfc3339().into(),
    };
    let c = json!({"type": ty, "status": status, "reason": reason, "message": msg, "lastTransitionTime": time});
    match old {
        Some(i) => conds[i] = c,
        None => conds.push(c),
    }
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

fn power_of(spec: &Value) -> Option<PowerState> {
    match spec["powerState"].as_str()? {
        "PoweredOn" => Some(PowerState::PoweredOn),
        "PoweredOff" => Some(PowerState::PoweredOff),
        "Suspended" => Some(PowerState::Suspended),
        _ => None,
    }
}

fn power_name(p: PowerState) -> &'static str {
    match p {
        PowerState::PoweredOn => "PoweredOn",
        PowerState::PoweredOff => "PoweredOff",
        PowerState::Suspended => "Suspended",
    }
}

/// Every `{name, key}` selector (and `rawCloudConfig`/`rawSysprep`) under
/// `spec.bootstrap`: the Secrets/ConfigMaps a VM's bootstrap reads.
fn bootstrap_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let (Some(Value::String(n)), true) = (m.get("name"), m.contains_key("key"))
                && !out.contains(n)
            {
                out.push(n.clone());
            }
            if let Some(Value::String(n)) = m.get("rawProperties")
                && !out.contains(n)
            {
                out.push(n.clone());
            }
            m.values().for_each(|x| bootstrap_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| bootstrap_refs(x, out)),
        _ => {}
    }
}

/// The VM YAML object of §C.3 (without the version annotation when `version` is None).
fn backup_object(obj: &Value, version: Option<u64>) -> Value {
    let mut o = obj.clone();
    o["status"] = json!({});
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    if let Some(a) = o["metadata"]["annotations"].as_object_mut() {
        a.remove(ANN_LAST_APPLIED);
        a.remove(ANN_BACKUP_VERSION);
    }
    if let Some(l) = o["metadata"]["labels"].as_object_mut() {
        l.remove(LABEL_ZONE);
    }
    if let Some(v) = version {
        o["metadata"]["annotations"][ANN_BACKUP_VERSION] = v.to_string().into();
    }
    o
}

/// What the stored YAML is compared on: the object without version and resourceVersion.
fn comparable(mut o: Value) -> Value {
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    if let Some(a) = o["metadata"]["annotations"].as_object_mut() {
        a.remove(ANN_BACKUP_VERSION);
    }
    o
}

impl Supervisor {
    /// The vSphere VM of a CR: `status.uniqueID`, else by name in the namespace folder.
    pub(crate) fn find_vm(
        &self,
        obj: &Value,
        ns: &str,
    ) -> Result<Option<VmState>, SupervisorError> {
        if let Some(id) = obj["status"]["uniqueID"].as_str()
            && let Ok(vm) = self.lab.vm(&VmMoref(id.to_owned()))
        {
            return Ok(Some(vm));
        }
        let folder = self.namespace_folder(ns);
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        Ok(self
            .lab
            .vms()
            .map_err(lab_error)?
            .into_iter()
            .find(|v| v.folder == folder && v.name == name))
    }

    /// Destroys the vSphere VM of a deleted CR.
    pub(crate) fn destroy_vm_of(&self, obj: &Value) -> Result<(), SupervisorError> {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
        if let Some(vm) = self.find_vm(obj, ns)? {
            self.lab.destroy_vm(&vm.moref).map_err(lab_error)?;
        }
        Ok(())
    }

    /// Creates the vSphere VM of `obj`; `None` (with a False condition) while a PVC is
    /// missing.
    fn create_vsphere_vm(
        &self,
        store: &mut Store,
        obj: &mut Value,
        ns: &str,
        name: &str,
    ) -> Result<Option<VmState>, SupervisorError> {
        let pvck = kind("persistentvolumeclaims");
        let boot = obj["spec"]["advanced"]["bootDiskCapacity"]
            .as_str()
            .and_then(parse_quantity)
            .unwrap_or(64 << 20);
        let mut disks = vec![NewDisk {
            capacity_bytes: boot,
            thin: true,
            fcd: false,
        }];
        let mut pvcs = Vec::new();
        for (_, claim) in claims(obj) {
            let Some(pvc) = store.get(&pvck, ns, &claim) else {
                set_condition(
                    obj,
                    "VirtualMachineCreated",
                    false,
                    "PersistentVolumeClaimNotFound",
                    &format!("persistentvolumeclaim {claim} not found"),
                );
                return Ok(None);
            };
            let cap = pvc["spec"]["resources"]["requests"]["storage"]
                .as_str()
                .and_then(parse_quantity)
                .unwrap_or(1 << 20);
            disks.push(NewDisk {
                capacity_bytes: cap,
                thin: true,
                fcd: true,
            });
            pvcs.push(pvc);
        }
        let classic = obj["metadata"]["annotations"][CLASSIC_DISKS_ANNOTATION]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for q in classic.split(',').filter(|q| !q.trim().is_empty()) {
            let cap = parse_quantity(q).ok_or_else(|| {
                SupervisorError::new(422, "Invalid", format!("bad classic disk size {q:?}"))
            })?;
            disks.push(NewDisk {
                capacity_bytes: cap,
                thin: true,
                fcd: false,
            });
        }
        let folder = self.namespace_folder(ns);
        let moref = self
            .lab
            .create_vm(name, &folder, &disks)
            .map_err(lab_error)?;
        let bios = obj["spec"]["biosUUID"].as_str().map(str::to_owned);
        let inst = obj["spec"]["instanceUUID"].as_str().map(str::to_owned);
        let vm = self
            .lab
            .modify_vm(&moref, |s| {
                if let Some(b) = bios {
                    s.bios_uuid = b;
                }
                if let Some(i) = inst {
                    s.instance_uuid = i;
                }
                Ok(s.clone())
            })
            .map_err(lab_error)?;
        for (i, pvc) in pvcs.into_iter().enumerate() {
            self.bind_pvc(store, ns, pvc, &vm.disks[i + 1])?;
        }
        set_condition(obj, "VirtualMachineCreated", true, "", "");
        Ok(Some(vm))
    }

    /// Binds an existing PVC object to `disk` (annotations, volumeName, Bound).
    pub(crate) fn bind_pvc(
        &self,
        store: &mut Store,
        ns: &str,
        mut pvc: Value,
        disk: &VmDisk,
    ) -> Result<Value, SupervisorError> {
        let name = pvc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // CNS registers the disk as a First Class Disk backing the claim's volume.
        let fcd = self.lab.register_fcd(&disk.file_name).map_err(lab_error)?;
        let ann = &mut pvc["metadata"]["annotations"];
        ann[DISK_FILE_ANNOTATION] = disk.file_name.to_string().into();
        ann[DISK_UUID_ANNOTATION] = disk.uuid.clone().into();
        ann[FCD_ID_ANNOTATION] = fcd.into();
        let uid = pvc["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if pvc["spec"]["volumeName"].as_str().is_none_or(str::is_empty) {
            pvc["spec"]["volumeName"] = format!("pvc-{uid}").into();
        }
        let modes = pvc["spec"]["accessModes"].clone();
        let cap = pvc["spec"]["resources"]["requests"]["storage"].clone();
        pvc["status"] =
            json!({"phase": "Bound", "accessModes": modes, "capacity": {"storage": cap}});
        if let Some(m) = pvc["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        store.replace(&kind("persistentvolumeclaims"), ns, &name, pvc)
    }

    /// One reconcile of VirtualMachine `ns/name` (no-op when absent or paused).
    pub(crate) fn reconcile_vm(
        &self,
        store: &mut Store,
        ns: &str,
        name: &str,
    ) -> Result<(), SupervisorError> {
        let vmk = kind("virtualmachines");
        let Some(obj) = store.get(&vmk, ns, name) else {
            return Ok(());
        };
        let ann = &obj["metadata"]["annotations"];
        if ann.get(ANN_PAUSE).is_some() || ann.get(ANN_PAUSED).is_some() {
            return Ok(());
        }
        let mut new = obj.clone();
        let vm = match self.find_vm(&obj, ns)? {
            Some(vm) => Some(vm),
            None => self.create_vsphere_vm(store, &mut new, ns, name)?,
        };
        if let Some(mut vm) = vm {
            if let Some(p) = power_of(&new["spec"])
                && p != vm.power_state
            {
                vm = self
                    .lab
                    .modify_vm(&vm.moref, |s| {
                        s.power_state = p;
                        Ok(s.clone())
                    })
                    .map_err(lab_error)?;
            }
            self.fill_status(store, &mut new, ns, &vm);
            self.backup(store, &mut new, &vm)?;
        }
        if new != obj {
            if let Some(m) = new["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            store.replace(&vmk, ns, name, new)?;
        }
        Ok(())
    }

    fn fill_status(&self, store: &Store, obj: &mut Value, ns: &str, vm: &VmState) {
        obj["metadata"]["annotations"][ANN_MANAGER_ID] = self.instance_uuid().into();
        // The cloud-init instance ID is recorded next to the spec field that sets it.
        if let Some(id) = obj["spec"]["bootstrap"]["cloudInit"]["instanceID"].as_str() {
            let id = id.to_owned();
            obj["metadata"]["annotations"][ANN_INSTANCE_ID] = id.into();
        }
        if !obj["status"].is_object() {
            obj["status"] = json!({});
        }
        let pvck = kind("persistentvolumeclaims");
        let volumes: Vec<Value> = claims(obj)
            .into_iter()
            .map(|(vol, claim)| {
                let disk = store
                    .get(&pvck, ns, &claim)
                    .and_then(|p| pvc_disk(&p, vm).cloned());
                json!({"name": vol, "type": "Managed", "attached": disk.is_some(),
                       "diskUUID": disk.map(|d| d.uuid).unwrap_or_default()})
            })
            .collect();
        let st = &mut obj["status"];
        st["uniqueID"] = vm.moref.0.clone().into();
        st["biosUUID"] = vm.bios_uuid.clone().into();
        st["instanceUUID"] = vm.instance_uuid.clone().into();
        st["powerState"] = power_name(vm.power_state).into();
        st["volumes"] = volumes.into();
    }

    /// §C.3–C.4: keeps the backup ExtraConfig current, or pauses it on a restored VM.
    fn backup(&self, store: &Store, obj: &mut Value, vm: &VmState) -> Result<(), SupervisorError> {
        let labels = &obj["metadata"]["labels"];
        if (labels.get("capw.vmware.com/cluster.role").is_some()
            || labels.get("capv.vmware.com/cluster.role").is_some())
            && obj["metadata"]["annotations"]
                .get(ANN_FORCE_BACKUP)
                .is_none()
        {
            return Ok(());
        }
        let spelling = self.settings().key_spelling;
        let ec = &vm.extra_config;
        let ec_version = Key::BackupVersion
            .get(ec, spelling)
            .and_then(|v| v.parse::<u64>().ok());
        let ann_version = obj["metadata"]["annotations"][ANN_BACKUP_VERSION]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok());
        if let (Some(a), Some(e)) = (ann_version, ec_version)
            && a > e
        {
            set_condition(
                obj,
                COND_BACKUP,
                false,
                "VirtualMachineBackupPaused",
                "A restore was detected",
            );
            return Ok(());
        }
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (pvc_data, classic_data) = self.disk_data(store, obj, &ns, vm);
        let additional = self.additional_resources(store, obj, &ns);
        let old_yaml = Key::VmYaml
            .get(ec, spelling)
            .and_then(codec::decode)
            .and_then(|t| codec::from_yaml(&t))
            .map(comparable);
        let decoded = |k: Key| {
            k.get(ec, spelling)
                .and_then(codec::decode)
                .unwrap_or_default()
        };
        let namespaced = format!("{ns}/{}", vm.name.clone());
        let namespaced = obj["metadata"]["name"]
            .as_str()
            .map_or(namespaced, |n| format!("{ns}/{n}"));
        let other = match spelling {
            KeySpelling::Code => KeySpelling::Guide,
            KeySpelling::Guide => KeySpelling::Code,
        };
        let stale_spelling = Key::BACKUP
            .iter()
            .any(|k| ec.iter().any(|(key, _)| key == k.name(other)));
        let changed = ann_version.is_none()
            || ec_version.is_none()
            || stale_spelling
            || old_yaml != Some(comparable(backup_object(obj, None)))
            || decoded(Key::PvcDiskData) != pvc_data
            || decoded(Key::ClassicDiskData) != classic_data
            || decoded(Key::AdditionalResources) != additional
            || !ec
                .iter()
                .any(|(k, v)| k == NAMESPACED_NAME && *v == namespaced);
        if !changed {
            let v = ann_version.unwrap_or_default();
            set_condition(obj, COND_BACKUP, true, "", &format!("Backup version: {v}"));
            return Ok(());
        }
        let version = now_ms()
            .max(ec_version.map_or(0, |v| v + 1))
            .max(ann_version.map_or(0, |v| v + 1));
        let yaml = codec::to_yaml(&backup_object(obj, Some(version)));
        let enc = |t: &str| {
            if t.is_empty() {
                String::new()
            } else {
                codec::encode(t)
            }
        };
        let mut wanted: Vec<(String, String)> = vec![
            (Key::VmYaml.name(spelling).into(), codec::encode(&yaml)),
            (
                Key::AdditionalResources.name(spelling).into(),
                enc(&additional),
            ),
            (Key::PvcDiskData.name(spelling).into(), enc(&pvc_data)),
            (
                Key::ClassicDiskData.name(spelling).into(),
                enc(&classic_data),
            ),
            (
                Key::BackupVersion.name(spelling).into(),
                version.to_string(),
            ),
            (NAMESPACED_NAME.into(), namespaced),
        ];
        wanted.extend(
            Key::BACKUP
                .iter()
                .map(|k| (k.name(other).to_owned(), String::new())),
        );
        // Only the keys whose (decoded) content changed are written.
        let current = |k: &str| ec.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        wanted.retain(|(k, v)| match (current(k), v.is_empty()) {
            (None, empty) => !empty,
            (Some(_), true) => true,
            (Some(old), false) => {
                old != *v
                    && (codec::decode(&old).is_none() || codec::decode(&old) != codec::decode(v))
            }
        });
        self.lab
            .modify_vm(&vm.moref, |s| {
                for (k, v) in wanted {
                    let pos = s.extra_config.iter().position(|(key, _)| *key == k);
                    match (pos, v.is_empty()) {
                        (Some(i), true) => {
                            s.extra_config.remove(i);
                        }
                        (Some(i), false) => s.extra_config[i].1 = v,
                        (None, false) => s.extra_config.push((k, v)),
                        (None, true) => {}
                    }
                }
                Ok(())
            })
            .map_err(lab_error)?;
        obj["metadata"]["annotations"][ANN_BACKUP_VERSION] = version.to_string().into();
        set_condition(
            obj,
            COND_BACKUP,
            true,
            "",
            &format!("Backup version: {version}"),
        );
        Ok(())
    }

    /// pvc-disk-data and classic-disk-data JSON (`""` for no PVC disks), device order.
    fn disk_data(&self, store: &Store, obj: &Value, ns: &str, vm: &VmState) -> (String, String) {
        let pvck = kind("persistentvolumeclaims");
        let mut pvc_disks: Vec<(usize, Value)> = Vec::new();
        for (_, claim) in claims(obj) {
            let Some(pvc) = store.get(&pvck, ns, &claim) else {
                continue;
            };
            let Some(d) = pvc_disk(&pvc, vm) else {
                continue;
            };
            let idx = vm
                .disks
                .iter()
                .position(|x| x.key == d.key)
                .unwrap_or_default();
            let modes = match &pvc["spec"]["accessModes"] {
                Value::Array(a) if !a.is_empty() => Value::Array(a.clone()),
                _ => json!(["ReadWriteOnce"]),
            };
            // Go's json.Marshal of PVCDiskData: FileName, PVCName, AccessModes, UUID.
            let entry = format!(
                "{{\"FileName\":{},\"PVCName\":{},\"AccessModes\":{},\"UUID\":{}}}",
                Value::from(d.file_name.to_string()),
                Value::from(claim.clone()),
                modes,
                Value::from(d.uuid.clone())
            );
            pvc_disks.push((idx, Value::String(entry)));
        }
        pvc_disks.sort_by_key(|(i, _)| *i);
        let pvc_idx: Vec<usize> = pvc_disks.iter().map(|(i, _)| *i).collect();
        let join = |items: Vec<String>| {
            if items.is_empty() {
                String::new()
            } else {
                format!("[{}]", items.join(","))
            }
        };
        let pvc = join(
            pvc_disks
                .into_iter()
                .filter_map(|(_, v)| v.as_str().map(str::to_owned))
                .collect(),
        );
        let classic = join(
            vm.disks
                .iter()
                .enumerate()
                .filter(|(i, _)| !pvc_idx.contains(i))
                .map(|(_, d)| {
                    format!(
                        "{{\"FileName\":{},\"UUID\":{}}}",
                        Value::from(d.file_name.to_string()),
                        Value::from(d.uuid.clone())
                    )
                })
                .collect(),
        );
        (pvc, classic)
    }

    /// The bootstrap Secrets/ConfigMaps as YAML documents joined by `\n---\n`.
    fn additional_resources(&self, store: &Store, obj: &Value, ns: &str) -> String {
        let mut names = Vec::new();
        bootstrap_refs(&obj["spec"]["bootstrap"], &mut names);
        let mut docs = Vec::new();
        for n in names {
            let found = store
                .get(&kind("secrets"), ns, &n)
                .map(|o| (o, "Secret"))
                .or_else(|| {
                    store
                        .get(&kind("configmaps"), ns, &n)
                        .map(|o| (o, "ConfigMap"))
                });
            if let Some((mut o, k)) = found {
                if let Some(m) = o["metadata"].as_object_mut() {
                    m.remove("managedFields");
                }
                o["apiVersion"] = "v1".into();
                o["kind"] = k.into();
                docs.push(codec::to_yaml(&o));
            }
        }
        docs.join("\n---\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_uuids() {
        assert_eq!(parse_quantity("64Mi"), Some(64 << 20));
        assert_eq!(
            parse_quantity("1G"),
            Some(1_000_000_000_u64.div_ceil(512) * 512)
        );
        assert_eq!(parse_quantity("x"), None);
        assert!(same_uuid("6000C29e-f450-eaed", "6000c29ef450eaed"));
        assert!(!same_uuid("", ""));
    }

    #[test]
    fn bootstrap_refs_find_selectors() {
        let mut out = Vec::new();
        bootstrap_refs(
            &json!({"cloudInit": {"rawCloudConfig": {"name": "a", "key": "user-data"}},
                    "sysprep": {"sysprep": {"guiUnattended": {"password": {"name": "b", "key": "p"}}}}}),
            &mut out,
        );
        assert_eq!(out, ["a", "b"]);
    }
}
