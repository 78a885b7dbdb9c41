//! Pre-flight: predict what WCP will do with a restored VM, before anything changes
//! (seed 001 §4.3, §6, §7, §11.2; VSPHERE.md §C.6). Pure: the caller gathers the facts.
//!
//! | rule | source | outcome |
//! |---|---|---|
//! | no VM-YAML key, or it does not decode | §7.1.3 | refusal `…ValidateVMResourceFailed` |
//! | PVC volumes in the YAML but no pvc-disk-data | §7.1.3 | refusal `…ValidateVMResourceFailed` |
//! | apiVersion older than v1alpha2 (or not VM Operator's) | §7.1.2 | refusal `…ConvertUnstructuredToVMTypeFailed` |
//! | the namespace has no folder | §7.2.3 | refusal `…NotFoundInNamespaceFolder` |
//! | restored into another namespace than the backup's VM YAML names | §7.2.3 | refusal `…NotFoundInNamespaceFolder` |
//! | no VirtualMachine on the Supervisor | §4.3 | restore to **new** |
//! | VirtualMachine exists, 8.0U3 | §7.2.2 | refusal `…AlreadyExistsOnSupervisor` |
//! | VirtualMachine exists with another `spec.biosUUID` than the backup's (another VM of that name) | §6.2, §9.2 (prerequisite: the VM exists) | refusal `vadp-agent:AnotherVm` |
//! | VirtualMachine exists, no (numeric) backup-version key | §7.1.3 | refusal `…ValidateVMResourceFailed` |
//! | VirtualMachine exists, ExtraConfig version < annotation | §4.3 | restore to **existing** |
//! | VirtualMachine exists, ExtraConfig version ≥ annotation | §4.3 | **disk-only** |
//! | another VM in the folder has the BIOS UUID (for a new VM shell) | §7.1.1 | refusal `…DuplicateVMBiosUUID` |
//! | manager-id annotation ≠ this vCenter's instanceUuid, VCF 9 | §6.4 | **failover** |
//! | network override on 8.0U3 | §7.3.2 | refusal (UNSUPPORTED) |
//! | snapshot revert in progress on the VirtualMachine | §7.2.1 | refusal (registration skipped) |
//! | auto-registration: 8.0U3 unless opted out, VCF 9 only when opted in | §4.2 | WCP registers after EndAccess; the agent follows that task |

use serde::Serialize;

use crate::vmservice::VmServiceData;

/// The prefix of WCP's registervm error ids (§11.2).
pub const ERROR_PREFIX: &str = "VCenterWcpWorkloadRegisterVM";

/// What the Supervisor allows (seed 001 §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SupervisorVersion {
    /// vSphere 8.0 Update 3: restore to new only, auto-registration opt-out.
    #[serde(rename = "8.0U3")]
    V80U3,
    /// VCF 9.0 and later: every restore type, failover, network override, opt-in.
    #[serde(rename = "VCF 9")]
    Vcf9,
}

impl SupervisorVersion {
    /// From vCenter's `about.apiVersion` (`8.0.3.0`, `9.0.0.0`); `None` before 8.0U3.
    #[must_use]
    pub fn from_api_version(api: &str) -> Option<Self> {
        let mut parts = api.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor, update) = (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        );
        match (major, minor, update) {
            (9.., _, _) => Some(Self::Vcf9),
            (8, 0, 3..) | (8, 1.., _) => Some(Self::V80U3),
            _ => None,
        }
    }
}

/// The restore type WCP chooses (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreType {
    /// No VirtualMachine on the Supervisor: a new one is created.
    New,
    /// The VirtualMachine exists and is newer than the backup: it is updated in place.
    Existing,
    /// The VirtualMachine exists and is not newer: only new (non-FCD) disks are registered.
    DiskOnly,
}

impl std::fmt::Display for RestoreType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::New => "restore to new",
            Self::Existing => "restore to existing",
            Self::DiskOnly => "disk-only restore",
        })
    }
}

/// A refusal WCP (or the agent, for a request it cannot honour) would make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// WCP's error id (`VCenterWcpWorkloadRegisterVM…`), or `vadp-agent:…` for ours.
    pub id: String,
    /// Why, naming the VM and key.
    pub reason: String,
}

/// The facts the prediction needs.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The backup's decoded VM Service data (`None`: no `vmservice.*` key at all).
    pub data: Option<&'a VmServiceData>,
    /// The VM's name on the Supervisor.
    pub name: &'a str,
    /// The namespace restored into.
    pub namespace: &'a str,
    /// Whether that namespace's VM folder exists.
    pub folder_exists: bool,
    /// The Supervisor's version.
    pub supervisor: SupervisorVersion,
    /// This vCenter's instanceUuid.
    pub vcenter_uuid: &'a str,
    /// The VirtualMachine on the Supervisor, if any.
    pub existing_cr: Option<&'a serde_json::Value>,
    /// A vSphere VM in the namespace folder with the backup's BIOS UUID, if any.
    pub vm_with_bios_uuid: Option<&'a str>,
    /// The backup's BIOS UUID (its `.vmx`'s `uuid.bios`), if it has one.
    pub backup_bios_uuid: Option<&'a str>,
    /// Whether a network override was asked for.
    pub network_override: bool,
}

/// What the agent expects WCP to do.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// The restore type (meaningful when `refusals` is empty).
    pub restore_type: RestoreType,
    /// Cross-vCenter failover (§6.4).
    pub failover: bool,
    /// The Supervisor's version.
    pub supervisor: SupervisorVersion,
    /// Whether WCP registers the VM by itself once EndAccess is called (§4.2).
    pub auto_registration: bool,
    /// Everything WCP would refuse; empty when the restore can go ahead.
    pub refusals: Vec<Refusal>,
    /// What the restored VM will look like (§8.2), for the operator.
    pub expectations: Vec<String>,
}

fn refusal(code: &str, reason: String) -> Refusal {
    Refusal {
        id: format!("{ERROR_PREFIX}{code}"),
        reason,
    }
}

fn annotation<'a>(obj: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")?.get(key)?.as_str()
}

/// A UUID's hex digits, lower case: how a `.vmx` (`42 31 …-…`) and VM Operator
/// (`4231…-…`) spell the same UUID compare equal.
pub(super) fn hex_of(uuid: &str) -> String {
    uuid.chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Whether WCP registers the VM by itself once EndAccess is called (§4.2), going by the
/// opt-in (VCF 9) or opt-out (8.0U3) key of the ExtraConfig it will see: the restored one,
/// or for a disk-only restore the VM's own.
#[must_use]
pub fn auto_registers(supervisor: SupervisorVersion, data: Option<&VmServiceData>) -> bool {
    data.is_some_and(|d| match supervisor {
        SupervisorVersion::V80U3 => d.auto_registration_opt_out != Some(true),
        SupervisorVersion::Vcf9 => d.auto_registration_opt_in == Some(true),
    })
}

/// Why the VirtualMachine `cr` is mid-revert (§7.2.1), if it is: the revert annotation, or
/// a snapshot asked for in `spec.currentSnapshotName` (or v1alpha5's
/// `spec.currentSnapshot.name`) that its status does not show as current yet.
fn reverting(cr: &serde_json::Value) -> Option<String> {
    if annotation(cr, SNAPSHOT_REVERT_ANNOTATION).is_some() {
        return Some(format!("annotation {SNAPSHOT_REVERT_ANNOTATION}"));
    }
    let name_at = |pointers: &[&str]| {
        pointers
            .iter()
            .find_map(|p| cr.pointer(p).and_then(serde_json::Value::as_str))
            .filter(|n| !n.is_empty())
    };
    let wanted = name_at(&["/spec/currentSnapshotName", "/spec/currentSnapshot/name"])?;
    let current = name_at(&[
        "/status/currentSnapshotName",
        "/status/currentSnapshot/name",
    ]);
    (current != Some(wanted)).then(|| {
        format!(
            "spec asks for snapshot {wanted}, status shows {}",
            current.unwrap_or("none")
        )
    })
}

/// The annotation VM Operator keeps the last backup version in (§C.5).
pub const BACKUP_VERSION_ANNOTATION: &str = "vmoperator.vmware.com/backup-version";
/// The annotation naming the vCenter that manages the VM (§C.5).
pub const MANAGER_ID_ANNOTATION: &str = "vmoperator.vmware.com/manager-id";
/// Set while a snapshot revert runs (§7.2.1).
pub const SNAPSHOT_REVERT_ANNOTATION: &str = "vmoperator.vmware.com/snapshot-revert-in-progress";

/// Whether `api_version` (`vmoperator.vmware.com/v1alpha3`) is one WCP converts (§12.4).
#[must_use]
pub fn supported_api_version(api_version: &str) -> bool {
    matches!(
        api_version.strip_prefix("vmoperator.vmware.com/"),
        Some("v1alpha2" | "v1alpha3" | "v1alpha4" | "v1alpha5")
    )
}

/// Predicts WCP's decision from `facts`.
#[must_use]
pub fn predict(facts: &Facts<'_>) -> Prediction {
    let who = format!("{}/{}", facts.namespace, facts.name);
    let mut refusals = Vec::new();
    let yaml = facts.data.and_then(|d| d.vm_yaml.as_ref());
    match facts.data {
        None => refusals.push(refusal(
            "ValidateVMResourceFailed",
            format!("{who}: the backup has no vmservice.* ExtraConfig: not a VM Service VM"),
        )),
        Some(d) if d.vm_yaml.is_none() => {
            let why = d
                .problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            refusals.push(refusal(
                "ValidateVMResourceFailed",
                format!("{who}: the VM YAML key is missing or unreadable ({why})"),
            ));
        }
        Some(d) => {
            let pvc_volumes = yaml
                .and_then(|y| y.pointer("/spec/volumes"))
                .and_then(|v| v.as_array())
                .is_some_and(|v| v.iter().any(|v| v.get("persistentVolumeClaim").is_some()));
            if pvc_volumes && d.pvc_disks.is_empty() {
                let pvc = crate::vmservice::Content::PvcDiskData;
                let unreadable = d
                    .problems
                    .iter()
                    .find(|p| p.key == pvc.code_key() || p.key == pvc.guide_key());
                refusals.push(refusal(
                    "ValidateVMResourceFailed",
                    match unreadable {
                        Some(p) => format!(
                            "{who}: the VM has PVC volumes but its pvc-disk-data key does not \
                             decode ({p})"
                        ),
                        None => format!("{who}: the VM has PVC volumes but no pvc-disk-data key"),
                    },
                ));
            }
            match d.api_version.as_deref() {
                Some(v) if supported_api_version(v) => {}
                other => refusals.push(refusal(
                    "ConvertUnstructuredToVMTypeFailed",
                    format!(
                        "{who}: apiVersion {} is not one WCP converts (v1alpha2 to v1alpha5)",
                        other.unwrap_or("(none)")
                    ),
                )),
            }
        }
    }
    if !facts.folder_exists {
        refusals.push(refusal(
            "NotFoundInNamespaceFolder",
            format!(
                "namespace {} has no VM folder in this vCenter (is it a Supervisor namespace?)",
                facts.namespace
            ),
        ));
    }
    // The VM YAML and `vmservice.namespacedName` name the VM's namespace; WCP checks the VM
    // against that namespace's folder (§7.2.3), so a restore into another namespace's
    // folder would be refused there.
    if let Some(own) = facts.data.and_then(|d| d.namespace.as_deref())
        && own != facts.namespace
    {
        refusals.push(refusal(
            "NotFoundInNamespaceFolder",
            format!(
                "{who}: the backup's VM belongs to namespace {own} (its VM YAML and vmservice.namespacedName say so); in the folder of namespace {} WCP would not find it in its namespace folder",
                facts.namespace
            ),
        ));
    }
    // The backup's own YAML marked as mid-revert is one WCP skips whether or not the
    // VirtualMachine exists (§7.2.1).
    if let Some(y) = yaml
        && annotation(y, SNAPSHOT_REVERT_ANNOTATION).is_some()
    {
        refusals.push(Refusal {
            id: "vadp-agent:SnapshotRevertInProgress".into(),
            reason: format!(
                "{who}: the backup's VM YAML carries {SNAPSHOT_REVERT_ANNOTATION} (backed up during a snapshot revert); WCP skips registration of it (§7.2.1)"
            ),
        });
    }
    let backup_version = facts.data.and_then(|d| d.backup_version_ms);
    let restore_type = match facts.existing_cr {
        None => RestoreType::New,
        Some(cr) => {
            if facts.supervisor == SupervisorVersion::V80U3 {
                refusals.push(refusal(
                    "AlreadyExistsOnSupervisor",
                    format!(
                        "{who}: the VirtualMachine exists and 8.0U3 cannot restore onto it; delete it first or upgrade to VCF 9"
                    ),
                ));
            }
            // A VirtualMachine of the same name that is another VM (the backed-up one was
            // deleted and another made under its name): WCP would restore onto it,
            // overwriting its disks and deleting its volumes as dangling (§6.2, §9.2).
            if let (Some(theirs), Some(ours)) = (
                cr.pointer("/spec/biosUUID")
                    .and_then(serde_json::Value::as_str),
                facts.backup_bios_uuid,
            ) && !theirs.is_empty()
                && hex_of(theirs) != hex_of(ours)
            {
                refusals.push(Refusal {
                    id: "vadp-agent:AnotherVm".into(),
                    reason: format!(
                        "{who}: the VirtualMachine of that name is another VM (its spec.biosUUID {theirs} is not the backup's uuid.bios {ours}); restoring onto it would overwrite its disks and drop its volumes: delete or rename it first"
                    ),
                });
            }
            if let Some(why) = reverting(cr) {
                refusals.push(Refusal {
                    id: "vadp-agent:SnapshotRevertInProgress".into(),
                    reason: format!(
                        "{who}: a snapshot revert is in progress ({why}); WCP skips registration: wait for it to end (§7.2.1)"
                    ),
                });
            }
            if backup_version.is_none() && facts.data.is_some_and(|d| d.vm_yaml.is_some()) {
                refusals.push(refusal(
                    "ValidateVMResourceFailed",
                    format!(
                        "{who}: the VirtualMachine exists and the backup's backup-version key is missing or not a number: WCP needs it to choose between restoring to it and restoring disks only"
                    ),
                ));
            }
            let current =
                annotation(cr, BACKUP_VERSION_ANNOTATION).and_then(|v| v.parse::<u64>().ok());
            match (backup_version, current) {
                (Some(b), Some(c)) if b < c => RestoreType::Existing,
                _ => RestoreType::DiskOnly,
            }
        }
    };
    if restore_type == RestoreType::New
        && let Some(vm) = facts.vm_with_bios_uuid
    {
        refusals.push(refusal(
            "DuplicateVMBiosUUID",
            format!(
                "{who}: {vm} in the namespace folder already has the backup's BIOS UUID, and no VirtualMachine names it (an earlier restore whose registration failed, or a VM made outside VM Service): register it (WCP's registervm, guide §11.1) or delete it"
            ),
        ));
    }
    let manager = yaml.and_then(|y| annotation(y, MANAGER_ID_ANNOTATION));
    let failover = facts.supervisor == SupervisorVersion::Vcf9
        && manager.is_some_and(|m| !m.eq_ignore_ascii_case(facts.vcenter_uuid));
    if facts.network_override && facts.supervisor == SupervisorVersion::V80U3 {
        refusals.push(Refusal {
            id: "UNSUPPORTED".into(),
            reason: "a network override needs a VCF 9 Supervisor with NSX-VPC (§7.3.2)".into(),
        });
    }
    let auto_registration = auto_registers(facts.supervisor, facts.data);
    let mut expectations = Vec::new();
    match restore_type {
        RestoreType::New => expectations.extend([
            "a new VirtualMachine, PoweredOff".to_owned(),
            "PVCs named restored-<6 hex> bound to the restored disks".to_owned(),
            "user labels and annotations from the backup; zone label removed".to_owned(),
            "annotation vmoperator.vmware.com/restored-vm; new cloud-init instance id".to_owned(),
        ]),
        RestoreType::Existing => expectations.extend([
            "the same VirtualMachine updated, PoweredOff".to_owned(),
            "new restored-<6 hex> PVCs; the old, now dangling PVCs deleted".to_owned(),
            "zone label and immutable annotations kept; restored-vm added; cloud-init id kept"
                .to_owned(),
        ]),
        RestoreType::DiskOnly => expectations.push(
            "only disks that are neither PVC nor classic disks get new restored-<6 hex> PVCs"
                .to_owned(),
        ),
    }
    if failover {
        expectations.push(
            "failover: spec.image cleared, annotation vmoperator.vmware.com/failed-over-vm"
                .to_owned(),
        );
    }
    Prediction {
        restore_type,
        failover,
        supervisor: facts.supervisor,
        auto_registration,
        refusals,
        expectations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The facts of web-1's restore into its own namespace on VCF 9, from `data`, with the
    /// VirtualMachine `cr` when there is one.
    fn web1_facts<'a>(
        data: &'a crate::vmservice::VmServiceData,
        cr: Option<&'a serde_json::Value>,
    ) -> Facts<'a> {
        Facts {
            data: Some(data),
            name: "web-1",
            namespace: "demo-ns",
            folder_exists: true,
            supervisor: SupervisorVersion::Vcf9,
            vcenter_uuid: "vc",
            existing_cr: cr,
            vm_with_bios_uuid: None,
            backup_bios_uuid: None,
            network_override: false,
        }
    }

    /// §7.1.3: with the VirtualMachine there, WCP needs the backup's version to choose
    /// between restoring to it and restoring disks only.
    #[test]
    fn an_existing_vm_and_no_readable_backup_version_is_refused() {
        let data = crate::vmservice::decode(&crate::vmservice::fixtures::extra_config(
            "bad/backup-version-not-decimal.json",
        ))
        .unwrap();
        assert!(data.vm_yaml.is_some() && data.backup_version_ms.is_none());
        let cr = serde_json::json!({"metadata": {"annotations": {
            "vmoperator.vmware.com/backup-version": "1700000000000"}}});
        let facts = web1_facts(&data, Some(&cr));
        let p = predict(&facts);
        assert!(
            p.refusals.iter().any(|r| r.id
                == "VCenterWcpWorkloadRegisterVMValidateVMResourceFailed"
                && r.reason.contains("backup-version")),
            "{:?}",
            p.refusals
        );
        // Without the VirtualMachine the version does not matter: a new VM.
        let facts = Facts {
            existing_cr: None,
            ..facts
        };
        assert!(predict(&facts).refusals.is_empty());
        // Into another namespace than the VM's own: WCP would not find it in its folder.
        assert_eq!(data.namespace.as_deref(), Some("demo-ns"));
        let elsewhere = predict(&Facts {
            namespace: "other-ns",
            ..facts
        });
        assert!(
            elsewhere
                .refusals
                .iter()
                .any(|r| r.id.ends_with("NotFoundInNamespaceFolder")),
            "{:?}",
            elsewhere.refusals
        );
    }

    /// A VM with PVC volumes whose pvc-disk-data key is there but does not decode is
    /// refused for that, not for a missing key.
    #[test]
    fn an_undecodable_pvc_disk_data_key_is_named_as_such() {
        let mut extra = crate::vmservice::fixtures::extra_config("web-1/extraconfig.code.json");
        let key = crate::vmservice::Content::PvcDiskData.code_key();
        for (k, v) in &mut extra {
            if k == key {
                *v = "not base64 at all".into();
            }
        }
        let data = crate::vmservice::decode(&extra).unwrap();
        assert!(data.pvc_disks.is_empty());
        let p = predict(&web1_facts(&data, None));
        assert!(
            p.refusals
                .iter()
                .any(|r| r.reason.contains("pvc-disk-data key does not decode")),
            "{:?}",
            p.refusals
        );
    }

    /// A VirtualMachine of the backup's name whose BIOS UUID is not the backup's is another
    /// VM: refused, whatever WCP would choose; the same VM (the UUID spelled as a `.vmx`
    /// spells it) is not.
    #[test]
    fn a_virtual_machine_that_is_another_vm_is_refused() {
        let data = crate::vmservice::decode(&crate::vmservice::fixtures::extra_config(
            "web-1/extraconfig.code.json",
        ))
        .unwrap();
        let version = data.backup_version_ms.unwrap();
        let cr = serde_json::json!({
            "metadata": {"annotations": {
                "vmoperator.vmware.com/backup-version": (version + 1).to_string()}},
            "spec": {"biosUUID": "77408572-146a-4b20-b32d-75673620da45"},
        });
        let facts = |bios: &'static str| Facts {
            backup_bios_uuid: Some(bios),
            ..web1_facts(&data, Some(&cr))
        };
        let same = predict(&facts("77 40 85 72 14 6a 4b 20-b3 2d 75 67 36 20 da 45"));
        assert!(same.refusals.is_empty(), "{:?}", same.refusals);
        assert_eq!(same.restore_type, RestoreType::Existing);
        let other = predict(&facts("42 31 85 72 14 6a 4b 20-b3 2d 75 67 36 20 da 45"));
        assert!(
            other
                .refusals
                .iter()
                .any(|r| r.id == "vadp-agent:AnotherVm" && r.reason.contains("77408572")),
            "{:?}",
            other.refusals
        );
    }

    /// §7.2.1: WCP skips a VM mid-revert: the annotation on the VirtualMachine or in the
    /// backup's YAML, or a snapshot the spec asks for that the status does not show yet.
    #[test]
    fn a_snapshot_revert_in_progress_is_refused() {
        let mut data = crate::vmservice::decode(&crate::vmservice::fixtures::extra_config(
            "web-1/extraconfig.code.json",
        ))
        .unwrap();
        let version = data.backup_version_ms.unwrap();
        let facts = web1_facts;
        let reverting = |p: &Prediction| {
            p.refusals
                .iter()
                .any(|r| r.id == "vadp-agent:SnapshotRevertInProgress")
        };
        let cr = |extra: serde_json::Value| {
            let mut cr = serde_json::json!({"metadata": {"annotations": {
                "vmoperator.vmware.com/backup-version": (version + 1).to_string()}}});
            json_patch_merge(&mut cr, extra);
            cr
        };
        let quiet = cr(serde_json::json!({}));
        assert!(!reverting(&predict(&facts(&data, Some(&quiet)))));
        for (extra, want) in [
            (
                serde_json::json!({"metadata": {"annotations": {SNAPSHOT_REVERT_ANNOTATION: "true"}}}),
                true,
            ),
            (
                serde_json::json!({"spec": {"currentSnapshotName": "snap-1"}}),
                true,
            ),
            (
                serde_json::json!({"spec": {"currentSnapshot": {"name": "snap-1"}},
                                   "status": {"currentSnapshot": {"name": "snap-0"}}}),
                true,
            ),
            // The revert is over: the status shows the snapshot the spec asks for.
            (
                serde_json::json!({"spec": {"currentSnapshotName": "snap-1"},
                                   "status": {"currentSnapshotName": "snap-1"}}),
                false,
            ),
        ] {
            let cr = cr(extra.clone());
            assert_eq!(
                reverting(&predict(&facts(&data, Some(&cr)))),
                want,
                "{extra}"
            );
        }
        // Backed up mid-revert: refused even as a new VM.
        data.vm_yaml.as_mut().unwrap()["metadata"]["annotations"][SNAPSHOT_REVERT_ANNOTATION] =
            "true".into();
        assert!(reverting(&predict(&facts(&data, None))));
    }

    /// Merges `patch` into `target` (objects recursively; anything else replaced).
    fn json_patch_merge(target: &mut serde_json::Value, patch: serde_json::Value) {
        match (target, patch) {
            (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    json_patch_merge(t.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (t, p) => *t = p,
        }
    }

    #[test]
    fn versions() {
        assert_eq!(
            SupervisorVersion::from_api_version("8.0.3.0"),
            Some(SupervisorVersion::V80U3)
        );
        assert_eq!(
            SupervisorVersion::from_api_version("9.0.0.0"),
            Some(SupervisorVersion::Vcf9)
        );
        assert_eq!(SupervisorVersion::from_api_version("8.0.2.0"), None);
        assert!(supported_api_version("vmoperator.vmware.com/v1alpha5"));
        assert!(!supported_api_version("vmoperator.vmware.com/v1alpha1"));
    }
}
