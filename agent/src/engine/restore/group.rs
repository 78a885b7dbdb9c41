//! A restore of several restore points as one application, in the order of seed 001 §10.5:
//! every VM first (restored and registered one after the other, each as [`run_restore`]
//! does it), then the VirtualMachineGroups and VirtualMachineServices their points kept
//! (groups, then services, each once, when asked), then the check of every VM again, so
//! that its group membership and the services that select it are read after they exist.
//!
//! - **Before anything changes** every point is planned: a refusal of any VM refuses the
//!   whole restore, and every point is leased until the end (retention leaves them alone).
//! - **A VM that fails** stops the restore there: the VMs restored before it stay (they are
//!   registered and whole), the ones after it are not restored, and nothing is recreated;
//!   the report says which is which.
//! - **Power.** The VMs stay powered off, as registration leaves them (§8.1.4); a group
//!   kept `PoweredOn` is created without it, and its note says how to set it back once the
//!   VMs are checked (§10.5 phase 3).
//!
//! [`run_restore`]: super::run_restore

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::plan::{self, Plan};
use super::{
    RelatedObject, RestoreEnv, RestoreError, RestoreEvent, RestoreObserver, RestoreReport,
    RestoreRequest, check_registered, create_related, not_created, restore_planned,
};
use crate::engine::{BackupError, blocking, error_chain};
use crate::ids::RestorePointId;
use crate::vmservice::related::{GROUP_KIND, kind_of, name_of};

/// A VM Operator object kept with one of the points, and what the restore did with it.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRelated {
    /// The namespace it belongs in (its VM's).
    pub namespace: String,
    /// The point that kept it (the first, when several did).
    pub point: RestorePointId,
    /// The object and its outcome.
    #[serde(flatten)]
    pub object: RelatedObject,
}

/// The result of a group restore.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRestoreReport {
    /// The VMs restored, in the order asked (their predictions only, for a dry run); each
    /// one's `verification` is the check made after every VM was registered and the
    /// related objects created.
    pub vms: Vec<RestoreReport>,
    /// Why the restore stopped: the point whose restore failed, and the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The points not restored (the one that failed, and those after it).
    pub not_restored: Vec<RestorePointId>,
    /// Every VirtualMachineGroup and VirtualMachineService the points kept, once each.
    pub related: Vec<GroupRelated>,
    /// Kept objects asked for and not created, with how to create them.
    pub problems: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

impl GroupRestoreReport {
    /// Every VM restored, checked without a problem, and every object asked for created.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.error.is_none()
            && self.problems.is_empty()
            && self.vms.iter().all(|r| {
                r.verification
                    .as_ref()
                    .is_none_or(|v| v.problems.is_empty())
            })
    }
}

/// Restores `requests` (two or more points, one VM each) as one application (see the
/// module doc). `recreate_related` asks for §10.5 phase 2; each request's own
/// `recreate_related` is ignored.
///
/// # Errors
/// [`RestoreError::Refused`] (every VM's refusals) or [`RestoreError::Invalid`] before any
/// change; cancellation. A VM's failure is not an error: it is in the report.
pub async fn run_group_restore(
    renv: &RestoreEnv,
    requests: &[RestoreRequest],
    recreate_related: bool,
    observer: RestoreObserver,
    cancel: CancellationToken,
) -> Result<GroupRestoreReport, RestoreError> {
    let started = Instant::now();
    if requests.iter().any(|r| !r.disks.is_empty()) {
        return Err(RestoreError::Invalid(
            "a restore of several points restores whole VMs: give the disks of a disk-only \
             restore with one point"
                .into(),
        ));
    }
    // Every point leased until the end: the point each VM is planned from is the one it is
    // restored from, also for the last VM, hours later.
    let mut leases = Vec::new();
    for r in requests {
        let (repo, point) = (Arc::clone(&renv.env.repo), r.point);
        leases.push(
            blocking(move || repo.lease_point(point))
                .await?
                .map_err(BackupError::Repo)?,
        );
    }
    // Pre-flight of every VM before any change.
    let mut refusals = Vec::new();
    let mut targets: Vec<(String, RestorePointId)> = Vec::new();
    for r in requests {
        let plan = plan::plan(renv, r).await?;
        let target = format!("{}/{}", plan.namespace, plan.name);
        if let Some((_, other)) = targets.iter().find(|(t, _)| *t == target) {
            return Err(RestoreError::Invalid(format!(
                "points {other} and {} both restore VM {target}: give one point per VM",
                r.point
            )));
        }
        refusals.extend(plan.prediction.refusals.iter().cloned().map(|mut f| {
            f.reason = format!("point {} ({target}): {}", r.point, f.reason);
            f
        }));
        targets.push((target, r.point));
    }
    if !refusals.is_empty() {
        return Err(RestoreError::Refused { refusals });
    }
    let step = |message: String| observer(&RestoreEvent::Step { message });
    let mut report = GroupRestoreReport {
        vms: Vec::new(),
        error: None,
        not_restored: Vec::new(),
        related: Vec::new(),
        problems: Vec::new(),
        seconds: 0.0,
    };
    // Phase 1: every VM, restored and registered.
    let mut plans: Vec<Plan> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(RestoreError::Engine(BackupError::Cancelled));
        }
        step(format!(
            "VM {} of {}: {} from point {}",
            i + 1,
            requests.len(),
            targets[i].0,
            r.point
        ));
        let one = RestoreRequest {
            recreate_related: false,
            ..r.clone()
        };
        match restore_planned(renv, &one, Arc::clone(&observer), cancel.clone()).await {
            Ok((mut vm, plan)) => {
                // The group's own list says what was kept and done, once per object.
                vm.related.clear();
                report.vms.push(vm);
                plans.push(plan);
            }
            Err(RestoreError::Engine(BackupError::Cancelled)) => {
                return Err(RestoreError::Engine(BackupError::Cancelled));
            }
            Err(e) => {
                report.error = Some(format!(
                    "point {} ({}): {}",
                    r.point,
                    targets[i].0,
                    error_chain(&e)
                ));
                report.not_restored = requests[i..].iter().map(|r| r.point).collect();
                break;
            }
        }
    }
    // Every kept object once, in the namespace of the VM whose point kept it: groups first.
    let mut kept: Vec<(String, RestorePointId, serde_json::Value)> = Vec::new();
    for (plan, vm) in plans.iter().zip(&report.vms) {
        for obj in &plan.related {
            let seen = kept.iter().any(|(ns, _, o)| {
                *ns == plan.namespace && kind_of(o) == kind_of(obj) && name_of(o) == name_of(obj)
            });
            if !seen {
                kept.push((plan.namespace.clone(), vm.point, obj.clone()));
            }
        }
    }
    kept.sort_by(|(a_ns, _, a), (b_ns, _, b)| {
        let rank = |o: &serde_json::Value| u8::from(kind_of(o) != Some(GROUP_KIND));
        (rank(a), a_ns, name_of(a)).cmp(&(rank(b), b_ns, name_of(b)))
    });
    report.related = kept
        .iter()
        .map(|(ns, point, obj)| GroupRelated {
            namespace: ns.clone(),
            point: *point,
            object: RelatedObject::kept(obj),
        })
        .collect();
    let dry_run = requests.first().is_some_and(|r| r.dry_run);
    if dry_run || report.error.is_some() || !recreate_related {
        if report.error.is_some() && recreate_related && !kept.is_empty() {
            step("a VM was not restored: its group and services are not recreated".into());
        }
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    // Phase 2: the kept objects, once every VM is registered.
    step(format!(
        "all {} VMs are registered: recreating what their points kept (§10.5 phase 2)",
        report.vms.len()
    ));
    for (i, (ns, _, obj)) in kept.iter().enumerate() {
        let mut entry = [report.related[i].object.clone()];
        create_related(renv, ns, std::slice::from_ref(obj), &mut entry, &step).await;
        let [entry] = entry;
        report.related[i].object = entry;
    }
    for r in &report.related {
        report.problems.extend(not_created(
            renv,
            &r.namespace,
            r.point,
            std::slice::from_ref(&r.object),
        ));
    }
    // Phase 3: every VM checked again, now that its group and services exist.
    for (plan, vm) in plans.iter().zip(report.vms.iter_mut()) {
        step(format!(
            "checking {} again with its group and services",
            vm.vm_name
        ));
        vm.verification = Some(check_registered(renv, plan, vm).await);
    }
    drop(leases);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
