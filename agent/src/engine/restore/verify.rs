//! After registration: the VirtualMachine read back from the Supervisor and checked against
//! seed 001 §8 (PoweredOff, `restored-<6 hex>` claims Bound; the labels, annotations,
//! cloud-init instance, image and identity of §8.1–§8.2, see [`spec_problems`]), and its
//! namespace against §6.1–§6.2: the backup's bootstrap Secrets and ConfigMaps are there
//! (read as metadata only), and after a restore in place the claims registration replaced
//! are gone ([`replaced_claims`]).

use serde_json::{Value, json};

use super::plan::Plan;
use super::{RestoreEnv, RestoreError, RestoreReport, RestoreType, Verification};
use crate::vmservice::related::{group_lists, selects};

/// Reads the VirtualMachine back and checks it against seed 001 §8.
pub(super) async fn verify(
    renv: &RestoreEnv,
    plan: &Plan,
    report: &RestoreReport,
) -> Result<Verification, RestoreError> {
    let mut v = Verification::default();
    let Some(obj) = renv
        .supervisor
        .virtual_machine(&plan.namespace, &plan.name, &plan.api_version)
        .await?
    else {
        v.problems.push(format!(
            "no VirtualMachine {}/{} after registration",
            plan.namespace, plan.name
        ));
        return Ok(v);
    };
    let obj = serde_json::to_value(obj).unwrap_or_default();
    v.power_state = obj
        .pointer("/spec/powerState")
        .and_then(|s| s.as_str())
        .map(str::to_owned);
    if v.power_state.as_deref() != Some("PoweredOff") {
        v.problems.push(format!(
            "spec.powerState is {:?}, not PoweredOff (§8.1.4)",
            v.power_state
        ));
    }
    v.labels = obj
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    v.annotations = obj
        .pointer("/metadata/annotations")
        .cloned()
        .unwrap_or(json!({}));
    let pvcs = renv.supervisor.pvcs(&plan.namespace).await?;
    for vol in obj
        .pointer("/spec/volumes")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default()
    {
        let name = vol.get("name").and_then(|n| n.as_str()).unwrap_or_default();
        let Some(claim) = vol
            .pointer("/persistentVolumeClaim/claimName")
            .and_then(|c| c.as_str())
        else {
            continue;
        };
        v.volumes.push((name.to_owned(), claim.to_owned()));
        let pvc = pvcs
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(claim));
        match pvc {
            None => v
                .problems
                .push(format!("volume {name}: PVC {claim} does not exist")),
            Some(p) => {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                if phase != Some("Bound") {
                    v.problems
                        .push(format!("PVC {claim} is {phase:?}, not Bound"));
                }
            }
        }
    }
    // Claims of this registration: a VM restored before already has restored-* claims,
    // which do not show that this one registered anything.
    let before = volumes_of(plan.existing_cr.as_ref());
    let restored_claims = v
        .volumes
        .iter()
        .filter(|(_, c)| is_restored_claim(c) && !before.iter().any(|(_, b)| b == c))
        .count();
    let pvc_disks = plan.data.as_ref().map_or(0, |d| d.pvc_disks.len());
    match plan.prediction.restore_type {
        RestoreType::New | RestoreType::Existing => {
            // WCP matches a restored disk with its pvc-disk-data entry by the disk's uuid:
            // each entry's uuid must be a disk of the registered VM.
            if let (Some(vm), Some(data)) = (&report.vm, plan.data.as_ref())
                && !data.pvc_disks.is_empty()
            {
                match renv.env.soap.vm_info(vm).await {
                    Ok(info) => {
                        let have: Vec<String> = info
                            .disks
                            .iter()
                            .filter_map(|d| d.uuid.as_deref().map(super::predict::hex_of))
                            .collect();
                        for pvc in &data.pvc_disks {
                            if !have.contains(&super::predict::hex_of(&pvc.uuid)) {
                                v.problems.push(format!(
                                    "no disk of {vm} has the uuid {} that pvc-disk-data gives \
                                     PVC {} ({}): WCP cannot bind that claim to it",
                                    pvc.uuid, pvc.pvc_name, pvc.file_name
                                ));
                            }
                        }
                    }
                    Err(e) => v.problems.push(format!(
                        "could not read the disks of {vm} to compare their uuids with \
                         pvc-disk-data: {}",
                        crate::engine::error_chain(&e)
                    )),
                }
            }
            if !plan.prediction.failover && restored_claims < pvc_disks {
                v.problems.push(format!(
                    "{restored_claims} restored-<6 hex> claims for {pvc_disks} PVC disks (§8.1.1)"
                ));
            }
            // Registration recreates the bootstrap Secrets and ConfigMaps (§4.1 step 9,
            // §6.1 step 3). A lookup that fails is a problem reported, not an error: the
            // restore is registered by now.
            for r in plan.data.iter().flat_map(|d| &d.bootstrap_resources) {
                match renv
                    .supervisor
                    .bootstrap_exists(&plan.namespace, &r.kind, &r.name)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => v.problems.push(format!(
                        "bootstrap {} {} of the backup is not in namespace {} (§4.1 step \
                         9, §6.1 step 3: registration recreates it)",
                        r.kind, r.name, plan.namespace
                    )),
                    Err(e) => v.problems.push(format!(
                        "could not check that bootstrap {} {} is in namespace {}: {}",
                        r.kind,
                        r.name,
                        plan.namespace,
                        crate::engine::error_chain(&e)
                    )),
                }
            }
            if plan.prediction.restore_type == RestoreType::Existing {
                let replaced = replaced_claims(&before, &v.volumes);
                let others: Vec<String> = if replaced.is_empty() {
                    Vec::new()
                } else {
                    match renv
                        .supervisor
                        .virtual_machines(&plan.namespace, &plan.api_version)
                        .await
                    {
                        Ok(vms) => vms
                            .into_iter()
                            .filter(|o| o.metadata.name.as_deref() != Some(plan.name.as_str()))
                            .filter_map(|o| serde_json::to_value(o).ok())
                            .flat_map(|o| volumes_of(Some(&o)))
                            .map(|(_, c)| c)
                            .collect(),
                        Err(e) => {
                            v.problems.push(format!(
                                "could not check that the replaced claims {replaced:?} are \
                                 deleted (§6.2 step 7): {}",
                                crate::engine::error_chain(&e)
                            ));
                            // Each would be reported as kept: checked by hand instead.
                            replaced.iter().map(|c| (*c).to_owned()).collect()
                        }
                    }
                };
                let dangling: Vec<&str> = replaced
                    .into_iter()
                    .filter(|c| !others.iter().any(|o| o == c))
                    .collect();
                let kept_of = |pvcs: &[k8s_openapi::api::core::v1::PersistentVolumeClaim]| {
                    dangling
                        .iter()
                        .copied()
                        .filter(|claim| {
                            pvcs.iter().any(|p| {
                                p.metadata.name.as_deref() == Some(*claim)
                                    && p.metadata.deletion_timestamp.is_none()
                            })
                        })
                        .collect::<Vec<&str>>()
                };
                let mut kept = kept_of(&pvcs);
                // WCP's clean-up of the dangling claims may trail its task a little: read
                // them again a few times before a claim is reported kept.
                for _ in 0..DANGLING_RECHECKS {
                    if kept.is_empty() {
                        break;
                    }
                    tokio::time::sleep(DANGLING_RECHECK_EVERY).await;
                    match renv.supervisor.pvcs(&plan.namespace).await {
                        Ok(now) => kept = kept_of(&now),
                        Err(e) => {
                            tracing::warn!(error = %crate::engine::error_chain(&e), "reading the claims again");
                            break;
                        }
                    }
                }
                for claim in kept {
                    v.problems.push(format!(
                        "PVC {claim} of the replaced VirtualMachine is used by no VM but still \
                         exists: registration deletes such dangling claims (§6.2 step 7). Its \
                         volume holds the disk as it was before the restore; once it is not \
                         needed: kubectl delete pvc {claim} -n {}",
                        plan.namespace
                    ));
                }
            }
            v.related = related(renv, plan, &obj, &report.point.to_string()).await;
            let backup = plan.data.as_ref().and_then(|d| d.vm_yaml.as_ref());
            v.problems.extend(spec_problems(
                &Expected {
                    backup,
                    existing: plan.existing_cr.as_ref(),
                    in_place: plan.prediction.restore_type == RestoreType::Existing,
                    failover: plan.prediction.failover,
                },
                &obj,
            ));
        }
        RestoreType::DiskOnly => {
            if restored_claims < report.disks.len() {
                v.problems.push(format!(
                    "{restored_claims} restored-<6 hex> claims for {} restored disks (§6.3)",
                    report.disks.len()
                ));
            }
        }
    }
    Ok(v)
}

/// §10.3–§10.5: the VirtualMachineGroup the restored VM names and the VirtualMachineServices
/// that select it. Neither is in a VM's ExtraConfig, nor recreated by registration: the
/// guide has the user recreate them once the VMs are registered (the point may keep them,
/// and `recreate_related` creates them). A group the VM names that is not there, or does
/// not list the VM among its members, is said so; so is a namespace where no
/// VirtualMachineService selects the VM (worth a look if one served it before).
async fn related(renv: &RestoreEnv, plan: &Plan, vm: &Value, point: &str) -> Vec<String> {
    let ns = &plan.namespace;
    let mut out = Vec::new();
    // Where to find a missing one: the point, or the user's own copy.
    let source = |kind: &str, name: &str| {
        if plan.related.iter().any(|o| {
            crate::vmservice::related::kind_of(o) == Some(kind)
                && crate::vmservice::related::name_of(o) == Some(name)
        }) {
            format!(
                "the point keeps it: `vadp-agent show --repo {} --related {point} | kubectl create -n {ns} -f -`, or restore with --recreate-related",
                renv.env.repo.root().display()
            )
        } else {
            "kubectl create from your own copy".to_owned()
        }
    };
    let list = |kind: &'static str| {
        renv.supervisor
            .vmop_objects_served(ns, kind, &plan.api_version)
    };
    if let Some(group) = string_at(vm, "/spec/groupName").filter(|g| !g.is_empty()) {
        match list("VirtualMachineGroup").await {
            Ok(Some(groups)) => {
                let found = groups
                    .iter()
                    .find(|g| string_at(g, "/metadata/name") == Some(group))
                    .cloned();
                out.push(match found {
                    None => format!(
                        "spec.groupName names VirtualMachineGroup {group}, which is not in namespace {ns}: recreate it ({}) to give the VM its group's power management and boot order back (§10.4)",
                        source(crate::vmservice::related::GROUP_KIND, group)
                    ),
                    Some(g) if !group_lists(&g, &plan.name) => format!(
                        "VirtualMachineGroup {group} does not list {} in spec.bootOrder[].members: the VM is no member until it does (§10.4)",
                        plan.name
                    ),
                    Some(g) => match string_at(&g, "/spec/powerState") {
                        Some("PoweredOn") => format!(
                            "member of VirtualMachineGroup {group}, whose spec.powerState PoweredOn has VM Operator power on its members that are off (§10.4)"
                        ),
                        _ => match powered_on_above(&g, &groups) {
                            Some(above) => format!(
                                "member of VirtualMachineGroup {group}, which belongs to VirtualMachineGroup {above}, whose spec.powerState PoweredOn has VM Operator power on its members, this VM among them (§10.4)"
                            ),
                            None => format!("member of VirtualMachineGroup {group}"),
                        },
                    },
                });
            }
            Ok(None) => out.push(format!(
                "spec.groupName names VirtualMachineGroup {group}; the Supervisor serves no VirtualMachineGroup (at {} or another version this agent knows), so it was not checked (§10.4)",
                plan.api_version
            )),
            Err(e) => out.push(format!(
                "could not check VirtualMachineGroup {group}: {}",
                crate::engine::error_chain(&e)
            )),
        }
    }
    let labels = vm.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
    match list("VirtualMachineService").await {
        Ok(Some(services)) => {
            let selecting: Vec<String> = services
                .iter()
                .filter(|s| selects(s, &labels))
                .filter_map(|s| string_at(s, "/metadata/name").map(str::to_owned))
                .collect();
            // Kept with the point and gone from the namespace.
            let missing: Vec<&str> = plan
                .related
                .iter()
                .filter(|o| {
                    crate::vmservice::related::kind_of(o)
                        == Some(crate::vmservice::related::SERVICE_KIND)
                })
                .filter_map(|o| crate::vmservice::related::name_of(o))
                .filter(|n| {
                    !services
                        .iter()
                        .any(|s| string_at(s, "/metadata/name") == Some(n))
                })
                .collect();
            for name in &missing {
                out.push(format!(
                    "VirtualMachineService {name} selected the VM at backup and is not in namespace {ns}: recreate it ({}, §10.3)",
                    source(crate::vmservice::related::SERVICE_KIND, name)
                ));
            }
            if !selecting.is_empty() {
                out.push(format!(
                    "selected by VirtualMachineService {}",
                    selecting.join(", ")
                ));
            } else if missing.is_empty() {
                out.push(format!(
                    "no VirtualMachineService in namespace {ns} selects the VM's labels: if one served it before, recreate it (kubectl create, §10.3)"
                ));
            }
        }
        Ok(None) => {}
        Err(e) => out.push(format!(
            "could not check the VirtualMachineServices of {ns}: {}",
            crate::engine::error_chain(&e)
        )),
    }
    out
}

/// The first group above `group` (its `spec.groupName`, and so on up, at most 8 levels)
/// whose `spec.powerState` is `PoweredOn`: it powers on its members' members too.
fn powered_on_above(group: &Value, groups: &[Value]) -> Option<String> {
    let mut next = string_at(group, "/spec/groupName").filter(|n| !n.is_empty());
    for _ in 0..8 {
        let name = next?;
        let parent = groups
            .iter()
            .find(|g| string_at(g, "/metadata/name") == Some(name))?;
        if string_at(parent, "/spec/powerState") == Some("PoweredOn") {
            return Some(name.to_owned());
        }
        next = string_at(parent, "/spec/groupName").filter(|n| !n.is_empty());
    }
    None
}

/// A VirtualMachine's PVC volumes: (volume name, claim).
fn volumes_of(vm: Option<&Value>) -> Vec<(String, String)> {
    vm.and_then(|cr| cr.pointer("/spec/volumes"))
        .and_then(Value::as_array)
        .map(|vols| {
            vols.iter()
                .filter_map(|v| {
                    let name = v.get("name").and_then(Value::as_str)?;
                    let claim = v
                        .pointer("/persistentVolumeClaim/claimName")
                        .and_then(Value::as_str)?;
                    Some((name.to_owned(), claim.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The claims a restore in place replaced: a volume of the VM before (`before`) that the
/// restored VM (`now`) has under the same name on another claim (WCP's `restored-*`
/// one). Those are the dangling claims registration deletes (§6.2 steps 4, 7); a volume
/// the backup does not have (a disk attached since, still on the VM) is not one.
pub(super) fn replaced_claims<'a>(
    before: &'a [(String, String)],
    now: &[(String, String)],
) -> Vec<&'a str> {
    before
        .iter()
        .filter(|(name, claim)| {
            now.iter().any(|(n, c)| n == name && c != claim) && !now.iter().any(|(_, c)| c == claim)
        })
        .map(|(_, claim)| claim.as_str())
        .collect()
}

/// How often, and how far apart, the claims a restore in place replaced are read again
/// while one is still there.
const DANGLING_RECHECKS: u32 = 3;
const DANGLING_RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
const ANN_INSTANCE_ID: &str = "vmoperator.vmware.com/instance-id";
const ANN_PAUSE: &str = "vmoperator.vmware.com/pause";

/// The annotations a restore in place keeps from the VirtualMachine it replaces (§8.1.3).
const IMMUTABLE_ANNOTATIONS: [&str; 5] = [
    "vmoperator.vmware.com/created-at-build-version",
    "vmoperator.vmware.com/created-at-schema-version",
    "vmoperator.vmware.com/upgraded-to-build-version",
    "vmoperator.vmware.com/upgraded-to-schema-version",
    "vmoperator.vmware.com/upgraded-to-feature-version",
];

/// What a restored VirtualMachine is compared with.
pub(super) struct Expected<'a> {
    /// The VM YAML kept in the backup's ExtraConfig.
    pub(super) backup: Option<&'a Value>,
    /// The VirtualMachine as it was before the restore.
    pub(super) existing: Option<&'a Value>,
    /// Restored in place (§6.2) rather than as a new VM (§6.1).
    pub(super) in_place: bool,
    /// A cross-vCenter failover (§6.4).
    pub(super) failover: bool,
}

/// A label or annotation the user set: its key has no prefix, or a prefix outside the
/// Kubernetes and VMware domains (those belong to the infrastructure, §8.1.2).
fn users_key(key: &str) -> bool {
    key.split_once('/').is_none_or(|(domain, _)| {
        ![".kubernetes.io", ".k8s.io", ".x-k8s.io", ".vmware.com"]
            .iter()
            .any(|d| domain.ends_with(d) || domain == &d[1..])
    })
}

fn string_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str)
}

/// Entry `key` of the map at `pointer` (labels or annotations).
fn entry<'a>(obj: &'a Value, pointer: &str, key: &str) -> Option<&'a str> {
    obj.pointer(pointer)
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
}

/// What in the restored VirtualMachine `obj` (restore to new or in place) is not as seed 001
/// §8.1–§8.2 says it comes back:
/// - the user's labels and annotations are the backup's (§8.1.2, §8.1.3);
/// - a new VM has no zone label but the one VM Operator placed it with, one restored in
///   place the replaced VM's (§8.1.2); in place, the immutable annotations are the
///   replaced VM's (§8.1.3);
/// - `vmoperator.vmware.com/restored-vm`, or `failed-over-vm` for a failover, is set
///   (§8.1.3);
/// - a new VM has a new cloud-init instance ID and no `instance-id` annotation; one restored
///   in place keeps the replaced VM's instance ID (§8.1.5);
/// - a failover's `spec.image` and `spec.imageName` are cleared (§8.1.6);
/// - the BIOS and instance UUIDs are the backup's (§8.2).
pub(super) fn spec_problems(expected: &Expected<'_>, obj: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(backup) = expected.backup {
        for (map, what, section) in [
            ("/metadata/labels", "label", "§8.1.2"),
            ("/metadata/annotations", "annotation", "§8.1.3"),
        ] {
            let Some(theirs) = backup.pointer(map).and_then(Value::as_object) else {
                continue;
            };
            for (key, want) in theirs.iter().filter(|(k, _)| users_key(k)) {
                let got = entry(obj, map, key);
                if got != want.as_str() {
                    problems.push(format!(
                        "{what} {key} is {got:?}, the backup's is {want} ({section})"
                    ));
                }
            }
        }
        for (pointer, what) in [
            ("/spec/biosUUID", "spec.biosUUID"),
            ("/spec/instanceUUID", "spec.instanceUUID"),
        ] {
            let Some(want) = string_at(backup, pointer) else {
                continue;
            };
            let got = string_at(obj, pointer);
            if got.map(super::predict::hex_of) != Some(super::predict::hex_of(want)) {
                problems.push(format!(
                    "{what} is {got:?}, the backup's is {want:?} (§8.2)"
                ));
            }
        }
    }
    let annotations = "/metadata/annotations";
    // §9.2 step 6: registration unpauses the VM; one left paused is not reconciled (and not
    // powered on) by VM Operator. The code's spelling too (VSPHERE.md §C.5).
    for key in [ANN_PAUSE, "vmoperator.vmware.com/paused"] {
        if entry(obj, annotations, key).is_some() {
            problems.push(format!(
                "annotation {key} is still set: VM Operator leaves the VM alone until it goes \
                 (§9.2 step 6): kubectl annotate vm {} -n {} {key}-",
                string_at(obj, "/metadata/name").unwrap_or("<name>"),
                string_at(obj, "/metadata/namespace").unwrap_or("<namespace>"),
            ));
        }
    }
    let zone = entry(obj, "/metadata/labels", LABEL_ZONE);
    if expected.in_place {
        let existing = expected.existing.unwrap_or(&Value::Null);
        let kept = entry(existing, "/metadata/labels", LABEL_ZONE);
        if zone != kept {
            problems.push(format!(
                "label {LABEL_ZONE} is {zone:?}, not the replaced VM's {kept:?} (§8.1.2)"
            ));
        }
        for key in IMMUTABLE_ANNOTATIONS {
            let (got, kept) = (
                entry(obj, annotations, key),
                entry(existing, annotations, key),
            );
            if got != kept {
                problems.push(format!(
                    "annotation {key} is {got:?}, not the replaced VM's {kept:?} (§8.1.3)"
                ));
            }
        }
        let id = "/spec/bootstrap/cloudInit/instanceID";
        if let Some(kept) = string_at(existing, id)
            && string_at(obj, id) != Some(kept)
        {
            problems.push(format!(
                "spec.bootstrap.cloudInit.instanceID is {:?}, not the replaced VM's {kept:?} (§8.1.5)",
                string_at(obj, id)
            ));
        }
    } else {
        // "Removed (new zone assigned)": once VM Operator has placed the VM it labels it
        // with the zone it chose, the one its status names (possibly the backup's zone
        // again). A zone label without that placement behind it came from the backup.
        if let Some(z) = zone
            && string_at(obj, "/status/zone") != Some(z)
        {
            problems.push(format!(
                "label {LABEL_ZONE} {z:?} kept on a new VM that VM Operator has not placed \
                 there (status.zone is {:?}) (§8.1.2)",
                string_at(obj, "/status/zone")
            ));
        }
        // VM Operator records the new instance ID in the annotation again once it runs the
        // VM; the backup's must not come back.
        let id = "/spec/bootstrap/cloudInit/instanceID";
        if let Some(backup) = expected.backup
            && let Some(got) = entry(obj, annotations, ANN_INSTANCE_ID)
            && [
                entry(backup, annotations, ANN_INSTANCE_ID),
                string_at(backup, id),
            ]
            .contains(&Some(got))
        {
            problems.push(format!(
                "annotation {ANN_INSTANCE_ID} is the backup's {got:?}, kept on a new VM (§8.1.5)"
            ));
        }
        if let Some(old) = expected.backup.and_then(|b| string_at(b, id)) {
            match string_at(obj, id) {
                Some(new) if new != old => {}
                got => problems.push(format!(
                    "spec.bootstrap.cloudInit.instanceID is {got:?}, not a new ID in place of the backup's {old:?} (§8.1.5)"
                )),
            }
        }
    }
    let marker = if expected.failover {
        "vmoperator.vmware.com/failed-over-vm"
    } else {
        "vmoperator.vmware.com/restored-vm"
    };
    if entry(obj, annotations, marker).is_none() {
        problems.push(format!("annotation {marker} missing (§8.1.3)"));
    }
    if expected.failover {
        if obj.pointer("/spec/image").is_some_and(|i| !i.is_null()) {
            problems.push("spec.image kept by a failover (§8.1.6)".into());
        }
        if let Some(name) = string_at(obj, "/spec/imageName").filter(|n| !n.is_empty()) {
            problems.push(format!(
                "spec.imageName {name:?} kept by a failover (§8.1.6)"
            ));
        }
    }
    problems
}

/// `restored-` followed by six hex digits (§8.1.1).
#[must_use]
pub fn is_restored_claim(name: &str) -> bool {
    name.strip_prefix("restored-")
        .is_some_and(|h| h.len() == 6 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{Expected, powered_on_above, replaced_claims, spec_problems};
    use crate::vmservice::fixtures;

    /// A group powers on its members' members: the first `PoweredOn` group above a VM's
    /// group is found, through any number of levels up to 8, a loop ending the walk.
    #[test]
    fn a_powered_on_group_above_the_vms_group_is_found() {
        let group = |name: &str, parent: &str, power: &str| json!({"metadata": {"name": name}, "spec": {"groupName": parent, "powerState": power}});
        let groups = [
            group("web", "tier", "PoweredOff"),
            group("tier", "site", "PoweredOff"),
            group("site", "", "PoweredOn"),
            group("loop-a", "loop-b", "PoweredOff"),
            group("loop-b", "loop-a", "PoweredOff"),
        ];
        assert_eq!(
            powered_on_above(&groups[0], &groups).as_deref(),
            Some("site")
        );
        assert_eq!(powered_on_above(&groups[2], &groups), None);
        assert_eq!(powered_on_above(&groups[3], &groups), None);
        let orphan = group("orphan", "gone", "PoweredOff");
        assert_eq!(powered_on_above(&orphan, &groups), None);
    }

    #[test]
    fn only_claims_replaced_under_the_same_volume_name_are_dangling() {
        let v = |n: &str, c: &str| (n.to_owned(), c.to_owned());
        let before = [
            v("data", "web-1-data"),
            v("logs", "web-1-logs"),
            // Attached by a disk-only restore since the backup: not in the backup, so
            // not re-registered, and its disk is still on the VM.
            v("restored-disk", "restored-aa11bb"),
        ];
        let now = [v("data", "restored-0f0f0f"), v("logs", "web-1-logs")];
        assert_eq!(replaced_claims(&before, &now), ["web-1-data"]);
    }

    fn backup() -> Value {
        let mut yaml: Value = serde_norway::from_str(&fixtures::text("web-1/vm.yaml")).unwrap();
        yaml["metadata"]["labels"]["topology.kubernetes.io/zone"] = "zone-a".into();
        yaml["metadata"]["annotations"]["vmoperator.vmware.com/instance-id"] = "old-id".into();
        yaml
    }

    /// The backup's VM YAML as WCP registers it (seed 001 §8.1), `existing` the VM replaced.
    fn registered(backup: &Value, existing: Option<&Value>, failover: bool) -> Value {
        let mut obj = backup.clone();
        let labels = obj["metadata"]["labels"].as_object_mut().unwrap();
        labels.remove("topology.kubernetes.io/zone");
        let anns = obj["metadata"]["annotations"].as_object_mut().unwrap();
        anns.remove("vmoperator.vmware.com/instance-id");
        let marker = if failover {
            "failed-over-vm"
        } else {
            "restored-vm"
        };
        anns.insert(format!("vmoperator.vmware.com/{marker}"), "true".into());
        obj["spec"]["bootstrap"]["cloudInit"]["instanceID"] = "new-id".into();
        // VM Operator records the new ID once it runs the VM.
        obj["metadata"]["annotations"]["vmoperator.vmware.com/instance-id"] = "new-id".into();
        if failover {
            obj["spec"].as_object_mut().unwrap().remove("image");
            obj["spec"]["imageName"] = "".into();
        }
        if let Some(old) = existing {
            obj["metadata"]["labels"]["topology.kubernetes.io/zone"] =
                old["metadata"]["labels"]["topology.kubernetes.io/zone"].clone();
            for a in super::IMMUTABLE_ANNOTATIONS {
                let anns = obj["metadata"]["annotations"].as_object_mut().unwrap();
                match old["metadata"]["annotations"][a].as_str() {
                    Some(v) => anns.insert(a.into(), v.into()),
                    None => anns.remove(a),
                };
            }
            obj["spec"]["bootstrap"]["cloudInit"]["instanceID"] =
                old["spec"]["bootstrap"]["cloudInit"]["instanceID"].clone();
        }
        obj
    }

    fn existing() -> Value {
        let mut old = backup();
        old["metadata"]["labels"]["topology.kubernetes.io/zone"] = "zone-b".into();
        old["metadata"]["annotations"]["vmoperator.vmware.com/created-at-build-version"] =
            "1.9.0".into();
        old["metadata"]["annotations"]["vmoperator.vmware.com/upgraded-to-schema-version"] =
            "v1alpha4".into();
        old["spec"]["bootstrap"]["cloudInit"]["instanceID"] = "kept-id".into();
        old
    }

    fn problems_after(
        in_place: bool,
        failover: bool,
        change: impl FnOnce(&mut Value),
    ) -> Vec<String> {
        let backup = backup();
        let old = existing();
        let existing = in_place.then_some(&old);
        let mut obj = registered(&backup, existing, failover);
        change(&mut obj);
        spec_problems(
            &Expected {
                backup: Some(&backup),
                existing,
                in_place,
                failover,
            },
            &obj,
        )
    }

    fn one_problem(problems: &[String], needle: &str) {
        assert!(
            problems.len() == 1 && problems[0].contains(needle),
            "{needle}: {problems:?}"
        );
    }

    #[test]
    fn a_vm_registered_as_the_guide_says_has_no_problem() {
        for (in_place, failover) in [(false, false), (true, false), (false, true)] {
            let problems = problems_after(in_place, failover, |_| {});
            assert!(problems.is_empty(), "{in_place} {failover}: {problems:?}");
        }
    }

    #[test]
    fn lost_user_labels_and_annotations_are_reported_and_infrastructure_ones_are_not() {
        for in_place in [false, true] {
            let p = problems_after(in_place, false, |o| {
                o["metadata"]["labels"]
                    .as_object_mut()
                    .unwrap()
                    .remove("tier");
            });
            one_problem(
                &p,
                "label tier is None, the backup's is \"frontend\" (§8.1.2)",
            );
            let p = problems_after(in_place, false, |o| {
                o["metadata"]["annotations"]["app.example.com/owner"] = "someone".into();
            });
            one_problem(&p, "annotation app.example.com/owner is Some(\"someone\")");
            let p = problems_after(in_place, false, |o| {
                let anns = o["metadata"]["annotations"].as_object_mut().unwrap();
                anns.remove("vmoperator.vmware.com/backup-version");
                anns.remove("vmoperator.vmware.com/manager-id");
            });
            assert!(p.is_empty(), "{p:?}");
        }
    }

    #[test]
    fn a_vm_left_paused_is_reported_with_the_command_that_unpauses_it() {
        for (in_place, key) in [
            (true, "vmoperator.vmware.com/pause"),
            (false, "vmoperator.vmware.com/paused"),
        ] {
            let p = problems_after(in_place, false, |o| {
                o["metadata"]["annotations"][key] = "true".into();
            });
            one_problem(&p, &format!("kubectl annotate vm web-1 -n demo-ns {key}-"));
        }
    }

    #[test]
    fn keys_of_the_kubernetes_cluster_api_and_vmware_domains_are_not_the_users() {
        for key in [
            "app",
            "tier",
            "app.example.com/owner",
            "k8s.io.example.com/x",
            "my-vmware.com/x",
        ] {
            assert!(super::users_key(key), "{key}");
        }
        for key in [
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
            "node.k8s.io/x",
            "cluster.x-k8s.io/cluster-name",
            "vmoperator.vmware.com/backup-version",
            "vmware.com/x",
        ] {
            assert!(!super::users_key(key), "{key}");
        }
    }

    #[test]
    fn the_zone_label_goes_from_a_new_vm_and_stays_on_one_restored_in_place() {
        let p = problems_after(false, false, |o| {
            o["metadata"]["labels"]["topology.kubernetes.io/zone"] = "zone-a".into();
        });
        one_problem(&p, "kept on a new VM that VM Operator has not placed there");
        // Placed by VM Operator, in the backup's zone again or in another: its own label.
        for placed in ["zone-a", "zone-c"] {
            let p = problems_after(false, false, |o| {
                o["metadata"]["labels"]["topology.kubernetes.io/zone"] = placed.into();
                o["status"]["zone"] = placed.into();
            });
            assert!(p.is_empty(), "{placed}: {p:?}");
        }
        // In place: the replaced VM's zone, not the backup's.
        let p = problems_after(true, false, |o| {
            o["metadata"]["labels"]["topology.kubernetes.io/zone"] = "zone-a".into();
        });
        one_problem(&p, "not the replaced VM's Some(\"zone-b\")");
    }

    #[test]
    fn a_restore_in_place_keeps_the_immutable_annotations_and_the_instance_id() {
        let p = problems_after(true, false, |o| {
            o["metadata"]["annotations"]["vmoperator.vmware.com/created-at-build-version"] =
                "1.8.6+a6b2f0c+24146529".into();
        });
        one_problem(&p, "created-at-build-version is Some(\"1.8.6");
        let p = problems_after(true, false, |o| {
            let anns = o["metadata"]["annotations"].as_object_mut().unwrap();
            anns.remove("vmoperator.vmware.com/upgraded-to-schema-version");
        });
        one_problem(&p, "upgraded-to-schema-version is None");
        let p = problems_after(true, false, |o| {
            o["spec"]["bootstrap"]["cloudInit"]["instanceID"] = "new-id".into();
        });
        one_problem(&p, "not the replaced VM's \"kept-id\" (§8.1.5)");
    }

    #[test]
    fn a_new_vm_gets_a_new_cloud_init_instance() {
        let id = "77408572-146a-4b20-b32d-75673620da45";
        let p = problems_after(false, false, |o| {
            o["spec"]["bootstrap"]["cloudInit"]["instanceID"] = id.into();
        });
        one_problem(&p, "not a new ID in place of the backup's");
        let p = problems_after(false, false, |o| {
            o["metadata"]["annotations"]["vmoperator.vmware.com/instance-id"] = "old-id".into();
        });
        one_problem(
            &p,
            "instance-id is the backup's \"old-id\", kept on a new VM (§8.1.5)",
        );
    }

    #[test]
    fn a_failover_clears_the_image_and_is_marked_failed_over() {
        let p = problems_after(false, true, |o| {
            o["spec"]["image"] = json!({"kind": "ClusterVirtualMachineImage", "name": "vmi-1"});
        });
        one_problem(&p, "spec.image kept by a failover");
        let p = problems_after(false, true, |o| {
            o["spec"]["imageName"] = "ubuntu".into();
        });
        one_problem(&p, "spec.imageName \"ubuntu\" kept");
        let p = problems_after(false, true, |o| {
            let anns = o["metadata"]["annotations"].as_object_mut().unwrap();
            anns.remove("vmoperator.vmware.com/failed-over-vm");
            anns.insert("vmoperator.vmware.com/restored-vm".into(), "true".into());
        });
        one_problem(&p, "failed-over-vm missing");
        let p = problems_after(false, false, |o| {
            let anns = o["metadata"]["annotations"].as_object_mut().unwrap();
            anns.remove("vmoperator.vmware.com/restored-vm");
        });
        one_problem(&p, "restored-vm missing");
    }

    #[test]
    fn the_bios_and_instance_uuids_are_the_backups() {
        let p = problems_after(false, false, |o| {
            o["spec"]["biosUUID"] = "77408572-146A-4B20-B32D-75673620DA45".into();
        });
        assert!(p.is_empty(), "{p:?}");
        let p = problems_after(true, false, |o| {
            o["spec"]["instanceUUID"] = "d134354e-c94f-42e4-a3d7-000000000000".into();
        });
        one_problem(&p, "spec.instanceUUID is Some(");
    }

    #[test]
    fn restored_claim_names() {
        assert!(super::is_restored_claim("restored-a1b2c3"));
        assert!(!super::is_restored_claim("restored-a1b2c"));
        assert!(!super::is_restored_claim("my-pvc"));
    }
}
