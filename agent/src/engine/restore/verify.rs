//! After registration: the VirtualMachine read back from the Supervisor and checked against
//! seed 001 §8 (PoweredOff, `restored-<6 hex>` claims Bound, restored/failed-over
//! annotation, no zone label on a new VM).

use serde_json::json;

use super::plan::Plan;
use super::{RestoreEnv, RestoreError, RestoreReport, RestoreType, Verification};

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
    let restored_claims = v
        .volumes
        .iter()
        .filter(|(_, c)| is_restored_claim(c))
        .count();
    let pvc_disks = plan.data.as_ref().map_or(0, |d| d.pvc_disks.len());
    match plan.prediction.restore_type {
        RestoreType::New | RestoreType::Existing => {
            if !plan.prediction.failover && restored_claims < pvc_disks {
                v.problems.push(format!(
                    "{restored_claims} restored-<6 hex> claims for {pvc_disks} PVC disks (§8.1.1)"
                ));
            }
            let marker = if plan.prediction.failover {
                "vmoperator.vmware.com/failed-over-vm"
            } else {
                "vmoperator.vmware.com/restored-vm"
            };
            if v.annotations.get(marker).is_none() {
                v.problems
                    .push(format!("annotation {marker} missing (§8.1.3)"));
            }
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
    if plan.prediction.restore_type == RestoreType::New
        && v.labels.get("topology.kubernetes.io/zone").is_some()
    {
        v.problems
            .push("label topology.kubernetes.io/zone kept on a new VM (§8.1.2)".into());
    }
    Ok(v)
}

/// `restored-` followed by six hex digits (§8.1.1).
#[must_use]
pub fn is_restored_claim(name: &str) -> bool {
    name.strip_prefix("restored-")
        .is_some_and(|h| h.len() == 6 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn restored_claim_names() {
        assert!(super::is_restored_claim("restored-a1b2c3"));
        assert!(!super::is_restored_claim("restored-a1b2c"));
        assert!(!super::is_restored_claim("my-pvc"));
    }
}
