//! A restore of several restore points as one application, in the order of seed 001 §10.5:
//! every VM first (restored and registered one after the other, each as [`run_restore`]
//! does it), then, when asked, the VirtualMachineGroups and VirtualMachineServices their
//! points kept (groups, then services, each once), then the check of every VM again, so
//! that its group membership and the services that select it are read after they exist.
//!
//! - **Before anything changes** what interrupted jobs left is reconciled, then every point
//!   is planned (its prediction emitted) and its chunks checked (read, with
//!   `verify_first`): a refusal or a missing chunk of any VM refuses the whole restore.
//!   Every point is leased until the end (retention leaves them alone).
//! - **Whole VMs only**: a disk-only restore (asked for, or predicted) is one VM's.
//! - **A VM that fails**, or a cancel, stops the restore there: the VMs restored before it
//!   stay (registered and whole), the ones after it are not restored, and nothing more is
//!   created; the report says which is which.
//! - **One copy of each object**: points that kept an object of the same namespace, kind
//!   and name give the newest point's copy; copies that differ are said so.
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
    RelatedObject, RestoreEnv, RestoreError, RestoreEvent, RestoreMode, RestoreObserver,
    RestoreReport, RestoreRequest, RestoreType, check_chunks, check_registered, create_related,
    not_created, reconcile_first, restore_planned,
};
use crate::engine::{BackupError, blocking, error_chain};
use crate::ids::RestorePointId;
use crate::vmservice::related::{GROUP_KIND, kind_of, name_of};

/// A VM Operator object kept with one of the points, and what the restore did with it.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRelated {
    /// The namespace it belongs in (its VM's).
    pub namespace: String,
    /// The point whose copy is created (the newest of those that kept it; the first when
    /// their copies are the same).
    pub point: RestorePointId,
    /// The object and its outcome.
    #[serde(flatten)]
    pub object: RelatedObject,
}

/// The result of a group restore.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRestoreReport {
    /// The VMs restored, in the order asked (their predictions only, for a dry run). Each
    /// one's `related` is empty (the group's `related` says what was kept and done, once
    /// per object), and after a recreation its `verification` is the check made once the
    /// objects exist.
    pub vms: Vec<RestoreReport>,
    /// Why the restore stopped: the point whose restore failed, and the error; or the
    /// cancel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The restore was cancelled (`error` says where).
    pub cancelled: bool,
    /// The points not restored whole (the one that failed or was cut off, and those after
    /// it).
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

/// Whether the points share their backup's moment, as an application's VMs restored
/// together should (seed 000's consistency groups): what a person should know when they
/// do not, said before anything changes. Points of different jobs were taken at different
/// moments; a point whose job had VMs that failed has no companion of theirs from it.
/// `points`: each point with the job that made it.
async fn common_moment(
    env: &crate::engine::Environment,
    points: Vec<(RestorePointId, Option<crate::ids::JobId>)>,
) -> Result<Vec<String>, RestoreError> {
    let catalog = env.repo.catalog().clone();
    let jobs = blocking(move || {
        let mut jobs: Vec<(crate::ids::JobId, Vec<RestorePointId>, Vec<String>)> = Vec::new();
        for (p, job) in points {
            let Some(job) = job else {
                continue;
            };
            match jobs.iter_mut().find(|(j, _, _)| *j == job) {
                Some((_, ps, _)) => ps.push(p),
                None => {
                    let failed = catalog
                        .job_stats(job)?
                        .map(|s| crate::engine::failed_members(&s))
                        .unwrap_or_default();
                    jobs.push((job, vec![p], failed));
                }
            }
        }
        Ok::<_, crate::repo::CatalogError>(jobs)
    })
    .await?
    .map_err(BackupError::Catalog)?;
    let mut messages = Vec::new();
    if jobs.len() > 1 {
        let list = jobs
            .iter()
            .map(|(job, ps, _)| {
                let ps: Vec<String> = ps.iter().map(ToString::to_string).collect();
                format!("job {job}: {}", ps.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ");
        messages.push(format!(
            "the points come from {} different backup jobs ({list}): the VMs come back as of \
             different moments, not one application's common point in time",
            jobs.len()
        ));
    }
    for (job, _, failed) in jobs.iter().filter(|(_, _, f)| !f.is_empty()) {
        messages.push(format!(
            "in backup job {job}, {} failed: no point of theirs from that job is restored \
             with the others",
            failed.join(", ")
        ));
    }
    Ok(messages)
}

/// Restores `requests` (two or more points, one VM each) as one application (see the
/// module doc); each request's `recreate_related` asks for §10.5 phase 2 (the CLI and the
/// API set it alike on all).
///
/// # Errors
/// Before any change: [`RestoreError::Refused`] (every VM's refusals),
/// [`RestoreError::Unrestorable`], [`RestoreError::Invalid`]. A VM's failure, or a cancel
/// after the first change, is not an error: it is in the report.
pub async fn run_group_restore(
    renv: &RestoreEnv,
    requests: &[RestoreRequest],
    observer: RestoreObserver,
    cancel: CancellationToken,
) -> Result<GroupRestoreReport, RestoreError> {
    let renv = &renv.for_job().await;
    let started = Instant::now();
    let env = &renv.env;
    let dry_run = requests.iter().any(|r| r.dry_run);
    let recreate = requests.iter().any(|r| r.recreate_related);
    if requests
        .iter()
        .any(|r| !r.disks.is_empty() || r.mode == RestoreMode::DiskOnly)
    {
        return Err(whole_vms_only());
    }
    // Every point leased until the end: the point each VM is planned from is the one it is
    // restored from, also for the last VM, hours later.
    let mut leases = Vec::new();
    let mut created_at = Vec::new();
    let mut jobs = Vec::new();
    for r in requests {
        let (repo, point) = (Arc::clone(&env.repo), r.point);
        let (lease, record) = blocking(move || {
            let lease = repo.lease_point(point)?;
            Ok::<_, crate::repo::RepoError>((lease, repo.catalog().get_point(point)?))
        })
        .await?
        .map_err(BackupError::Repo)?;
        leases.push(lease);
        created_at.push(record.as_ref().map_or(0, |p| p.created_at));
        jobs.push((r.point, record.and_then(|p| p.job())));
    }
    // Only informs: a catalog that cannot say is logged, not a reason to refuse.
    match common_moment(env, jobs).await {
        Ok(messages) => {
            for message in messages {
                tracing::warn!("{message}");
                observer(&RestoreEvent::Step { message });
            }
        }
        Err(e) => tracing::warn!(
            error = %crate::engine::error_chain(&e),
            "could not check that the points are one backup job's"
        ),
    }
    if !dry_run {
        reconcile_first(env, &observer).await;
    }
    // Pre-flight of every VM before any change: its prediction, then its chunks.
    let mut refusals = Vec::new();
    let mut preflight: Vec<(String, RestorePointId, Plan)> = Vec::new();
    for r in requests {
        let plan = plan::plan(renv, r).await?;
        observer(&RestoreEvent::Predicted {
            prediction: plan.prediction.clone(),
        });
        let target = format!("{}/{}", plan.namespace, plan.name);
        if let Some((_, other, _)) = preflight.iter().find(|(t, _, _)| *t == target) {
            return Err(RestoreError::Invalid(format!(
                "points {other} and {} both restore VM {target}: give one point per VM",
                r.point
            )));
        }
        // Two new VMs of one BIOS UUID in one namespace folder: the second would be refused
        // (DuplicateVMBiosUUID) once the first exists, after the first was restored.
        let new_bios = |p: &Plan| {
            (p.prediction.restore_type == RestoreType::New)
                .then(|| p.bios_uuid())
                .flatten()
        };
        if let Some(bios) = new_bios(&plan)
            && let Some((other_target, other, _)) = preflight.iter().find(|(_, _, p)| {
                p.namespace == plan.namespace && new_bios(p).as_ref() == Some(&bios)
            })
        {
            return Err(RestoreError::Invalid(format!(
                "points {other} ({other_target}) and {} ({target}) are VMs of one BIOS UUID \
                 ({bios}): once the first is restored into namespace {}, WCP would refuse the \
                 second (DuplicateVMBiosUUID); restore one of them into another namespace",
                r.point, plan.namespace
            )));
        }
        if plan.prediction.refusals.is_empty()
            && plan.prediction.restore_type == RestoreType::DiskOnly
        {
            return Err(whole_vms_only());
        }
        refusals.extend(plan.prediction.refusals.iter().cloned().map(|mut f| {
            f.reason = format!("point {} ({target}): {}", r.point, f.reason);
            f
        }));
        preflight.push((target, r.point, plan));
    }
    if !refusals.is_empty() {
        return Err(RestoreError::Refused { refusals });
    }
    for (r, (_, _, plan)) in requests.iter().zip(&preflight) {
        check_chunks(env, plan, r, &observer).await?;
    }
    let step = |message: String| observer(&RestoreEvent::Step { message });
    let mut report = GroupRestoreReport {
        vms: Vec::new(),
        error: None,
        cancelled: false,
        not_restored: Vec::new(),
        related: Vec::new(),
        problems: Vec::new(),
        seconds: 0.0,
    };
    // Phase 1: every VM, restored and registered. Its prediction was emitted above, with
    // the recreation the group will do; the VM's own (which leaves that to the group) is
    // not emitted again.
    let quiet: RestoreObserver = {
        let observer = Arc::clone(&observer);
        Arc::new(move |e: &RestoreEvent| {
            if !matches!(e, RestoreEvent::Predicted { .. }) {
                observer(e);
            }
        })
    };
    let mut plans: Vec<Plan> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let target = &preflight[i].0;
        let stop = |report: &mut GroupRestoreReport, error: String| {
            report.error = Some(error);
            report.not_restored = requests[i..].iter().map(|r| r.point).collect();
        };
        if cancel.is_cancelled() {
            report.cancelled = true;
            stop(
                &mut report,
                format!("cancelled before {target} was restored"),
            );
            break;
        }
        step(format!(
            "VM {} of {}: {target} from point {}",
            i + 1,
            requests.len(),
            r.point
        ));
        let one = RestoreRequest {
            recreate_related: false,
            ..r.clone()
        };
        let predicted = preflight[i].2.prediction.restore_type;
        match restore_planned(
            renv,
            &one,
            Some(predicted),
            Arc::clone(&quiet),
            cancel.clone(),
        )
        .await
        {
            Ok((mut vm, plan)) => {
                vm.related.clear();
                vm.prediction = preflight[i].2.prediction.clone();
                // Its data complete and its access ended, but not registered (or not
                // checked): restored, and listed so, but the group stops there.
                let unfinished = vm.unfinished.clone();
                report.vms.push(vm);
                plans.push(plan);
                if let Some(u) = unfinished {
                    report.cancelled = u.cancelled;
                    report.error = Some(format!("point {} ({target}): {}", r.point, u.error));
                    report.not_restored = requests[i + 1..].iter().map(|r| r.point).collect();
                    break;
                }
            }
            Err(RestoreError::Engine(BackupError::Cancelled)) => {
                // Cancelled before its data was complete: what the restore changed was
                // undone where it could be (the steps say what), and disks a restore in
                // place had begun to overwrite stay partly restored.
                report.cancelled = true;
                stop(
                    &mut report,
                    format!(
                        "cancelled while {target} was restored, before its data was \
                         complete: what the restore had changed is undone (see the steps), \
                         except disks a restore in place had begun to overwrite, which stay \
                         partly restored: restore it again"
                    ),
                );
                break;
            }
            Err(e) => {
                stop(
                    &mut report,
                    format!("point {} ({target}): {}", r.point, error_chain(&e)),
                );
                break;
            }
        }
    }
    let kept = kept_once(&plans, &report.vms, &created_at, requests, &step);
    report.related = kept
        .iter()
        .map(|(ns, point, obj)| GroupRelated {
            namespace: ns.clone(),
            point: *point,
            object: RelatedObject::kept(obj),
        })
        .collect();
    if dry_run || report.error.is_some() || !recreate {
        if report.error.is_some() && recreate && !kept.is_empty() {
            step("not every VM was restored: their groups and services are not recreated".into());
        }
        drop(leases);
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    // Phase 2: the kept objects, once every VM is registered.
    step(format!(
        "all {} VMs are registered: recreating what their points kept (§10.5 phase 2)",
        report.vms.len()
    ));
    for (entry, (ns, _, obj)) in report.related.iter_mut().zip(&kept) {
        if cancel.is_cancelled() {
            report.cancelled = true;
            report.error = Some(format!(
                "cancelled while the groups and services were recreated: {} {} and those \
                 after it were not",
                entry.object.kind, entry.object.name
            ));
            break;
        }
        create_related(
            renv,
            ns,
            std::slice::from_ref(obj),
            std::slice::from_mut(&mut entry.object),
            &step,
        )
        .await;
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
    if !report.cancelled {
        for (i, plan) in plans.iter().enumerate() {
            let name = report.vms[i].vm_name.clone();
            step(format!("checking {name} again with its group and services"));
            let checked = tokio::select! {
                v = check_registered(renv, plan, &report.vms[i]) => Some(v),
                () = cancel.cancelled() => None,
            };
            let Some(v) = checked else {
                // Everything is restored and created: only the second checks are cut.
                report.cancelled = true;
                report.error = Some(format!(
                    "cancelled while the VMs were checked again: {name} and those after it \
                     keep their first check, made before their group and services existed"
                ));
                break;
            };
            report.vms[i].verification = Some(v);
        }
    }
    drop(leases);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The refusal of a disk-only restore with several points.
fn whole_vms_only() -> RestoreError {
    RestoreError::Invalid(
        "a restore of several points restores whole VMs: a disk-only restore (--disk, \
         --mode disk-only, or predicted) takes one point"
            .into(),
    )
}

/// Every object the restored VMs' points kept, once per namespace, kind and name (the copy
/// of the newest point, by `created_at`; differing copies said so through `step`), groups
/// first, then services, each by namespace and name.
fn kept_once(
    plans: &[Plan],
    vms: &[RestoreReport],
    created_at: &[i64],
    requests: &[RestoreRequest],
    step: &dyn Fn(String),
) -> Vec<(String, RestorePointId, serde_json::Value)> {
    let when = |p: RestorePointId| {
        requests
            .iter()
            .position(|r| r.point == p)
            .map_or(0, |i| created_at[i])
    };
    let mut kept: Vec<(String, RestorePointId, serde_json::Value)> = Vec::new();
    for (plan, vm) in plans.iter().zip(vms) {
        for obj in &plan.related {
            let same = |(ns, _, o): &(String, RestorePointId, serde_json::Value)| {
                *ns == plan.namespace && kind_of(o) == kind_of(obj) && name_of(o) == name_of(obj)
            };
            match kept.iter_mut().find(|k| same(k)) {
                None => kept.push((plan.namespace.clone(), vm.point, obj.clone())),
                Some(k) => {
                    if k.2 != *obj {
                        let newer = when(vm.point) > when(k.1);
                        step(format!(
                            "points {} and {} kept different copies of {}: the newer, of point \
                             {}, is the one recreated",
                            k.1,
                            vm.point,
                            crate::vmservice::related::describe(obj),
                            if newer { vm.point } else { k.1 }
                        ));
                        if newer {
                            *k = (plan.namespace.clone(), vm.point, obj.clone());
                        }
                    }
                }
            }
        }
    }
    kept.sort_by(|(a_ns, _, a), (b_ns, _, b)| {
        let rank = |o: &serde_json::Value| u8::from(kind_of(o) != Some(GROUP_KIND));
        (rank(a), a_ns, name_of(a)).cmp(&(rank(b), b_ns, name_of(b)))
    });
    kept
}
