//! The reconciler (ARCHITECTURE §7): at start-up, and on demand (`vadp-agent reconcile`),
//! undo every side effect still open in the journal whose job is no longer running —
//! detach what crashed backups left hot-added to this proxy VM (`VixDiskLib_Cleanup`),
//! remove our snapshots, call EndAccess — and mark interrupted jobs failed.
//!
//! A job is running when its `locks/job-<id>.lock` is held (see [`JobLock`]); the
//! reconciler takes that lock itself while it undoes the job's effects, so two
//! reconcilers, or a reconciler and the job, never act on the same entry.

use serde::Serialize;

use super::journal::{self, JobLock, SnapshotEffect};
use super::{BackupError, Environment, blocking, error_chain};
use crate::ids::JobId;
use crate::repo::ChunkStoreError;
use crate::repo::catalog::{JobEnd, JournalEntry};
use crate::vsphere::{SnapshotMoref, VmMoref};

/// What the reconciler did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReconcileReport {
    /// Snapshots of ours removed, per VM.
    pub snapshots_removed: Vec<(VmMoref, SnapshotMoref)>,
    /// VMs whose PrepareForAccess was ended.
    pub access_ended: Vec<VmMoref>,
    /// VMs whose VDDK transport state a crashed backup left (disks hot-added to this
    /// proxy VM) `VixDiskLib_Cleanup` removed.
    pub transport_cleaned: u32,
    /// VM shells a restore created and did not finish (reported, not deleted: a person
    /// decides; the restore engine's entries).
    pub half_created_vms: Vec<(VmMoref, serde_json::Value)>,
    /// Entries left alone because their job is still running.
    pub skipped_running: usize,
    /// Entries left alone because they were written against another vCenter (one
    /// repository may serve several): what each is, for a run against that vCenter.
    pub other_vcenter: Vec<String>,
    /// Jobs that were running when their agent stopped, now marked failed.
    pub jobs_interrupted: Vec<JobId>,
    /// What could not be undone (still journalled; the next run tries again).
    pub errors: Vec<String>,
}

impl ReconcileReport {
    /// Whether nothing was left to do or everything was undone.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

fn job_of(entry: &JournalEntry) -> Option<JobId> {
    entry.detail.get("job")?.as_str()?.parse().ok()
}

/// Undoes what crashed jobs left. `vms`: also remove snapshots carrying our tag on these
/// VMs when their job is not running here (e.g. the journal entry is gone) — of jobs this
/// repository knows, and with `unknown_jobs` of any job (another repository's or agent's:
/// the caller makes sure none of them runs).
///
/// # Errors
/// Catalog errors; failures to undo a single effect are listed in the report instead.
pub async fn reconcile(
    env: &Environment,
    vms: &[VmMoref],
    unknown_jobs: bool,
) -> Result<ReconcileReport, BackupError> {
    reconcile_in(&env.for_job().await, vms, unknown_jobs).await
}

/// [`reconcile`] with `env` as it is: a job's own reconcile at its start, with the job's
/// environment (its VDDK thumbprint read once, for both).
pub(crate) async fn reconcile_in(
    env: &Environment,
    vms: &[VmMoref],
    unknown_jobs: bool,
) -> Result<ReconcileReport, BackupError> {
    let mut report = ReconcileReport::default();
    let root = env.repo.root().to_path_buf();
    let catalog = env.repo.catalog().clone();
    let listed = blocking(move || catalog.journal_open_entries()).await??;
    super::pause_point("reconcile-after-read").await;
    // First the locks of the jobs the journal names. A job found running keeps all its
    // entries.
    let mut held: Vec<(JobId, JobLock)> = Vec::new();
    let mut running: Vec<JobId> = Vec::new();
    for job in listed.iter().filter_map(job_of) {
        if held.iter().any(|(j, _)| *j == job) || running.contains(&job) {
            continue;
        }
        let r = root.clone();
        match blocking(move || JobLock::acquire(&r, job)).await? {
            Ok(lock) => held.push((job, lock)),
            Err(ChunkStoreError::Busy { .. }) => running.push(job),
            Err(e) => report
                .errors
                .push(format!("job {job}: {}", error_chain(&e))),
        }
    }
    // Then the entries again, as they are now that nothing else can change them: the list
    // above was read before the locks, and a job that ended meanwhile closed (or changed)
    // its entries before it let its lock go.
    let catalog = env.repo.catalog().clone();
    let mut entries: Vec<JournalEntry> = blocking(move || catalog.journal_open_entries())
        .await??
        .into_iter()
        .filter(|e| match job_of(e) {
            Some(job) if held.iter().any(|(j, _)| *j == job) => true,
            Some(job) => {
                // Running, or a job that started after the list (running too).
                if running.contains(&job) || !listed.iter().any(|l| l.id == e.id) {
                    report.skipped_running += 1;
                }
                false
            }
            None => true,
        })
        .collect();
    // A moref names an object of one vCenter only: an entry written against another is
    // that vCenter's to undo (undoing it here would remove another VM's snapshot, or
    // destroy another VM).
    let here = env.soap.service_content().about.instance_uuid.clone();
    entries.retain(|e| match journal::vcenter_of(&e.detail) {
        Some(there) if there != here => {
            let what = format!(
                "journal entry {} ({} of {}{}) belongs to vCenter {there}: run `vadp-agent \
                 reconcile` against that vCenter to undo it",
                e.id,
                e.kind,
                e.vm,
                job_of(e).map(|j| format!(", job {j}")).unwrap_or_default()
            );
            tracing::warn!("reconcile: {what}");
            report.other_vcenter.push(what);
            false
        }
        _ => true,
    });
    // Snapshots before EndAccess, as a backup ends. The VMs of restores before EndAccess
    // too: a half-restored VM is removed, and the unfinished disks a disk-only restore
    // attached detached, while RelocateVM_Task is still disabled, so that WCP never takes
    // them for a finished restore (a VM that stays keeps its access prepared).
    entries.sort_by_key(|e| {
        let rank = match e.kind.as_str() {
            "snapshot" => 0,
            "vm_shell" => 1,
            _ => 2,
        };
        (rank, e.id)
    });
    // A crashed backup may have left its snapshot's disks hot-added to this proxy VM, and
    // vCenter cannot remove a snapshot while they are: VDDK's Cleanup detaches them first.
    if entries.iter().any(|e| e.kind == "snapshot") || !vms.is_empty() {
        vddk_cleanup(env, &mut report).await;
    }
    let mut blocked: Vec<VmMoref> = Vec::new();
    for entry in &entries {
        undo(env, entry, &mut report, &mut blocked).await;
    }
    // Jobs still marked running whose process is gone.
    let catalog = env.repo.catalog().clone();
    for job in blocking(move || catalog.running_jobs()).await?? {
        if running.contains(&job) {
            continue;
        }
        if !held.iter().any(|(j, _)| *j == job) {
            let r = root.clone();
            match blocking(move || JobLock::acquire(&r, job)).await? {
                Ok(lock) => held.push((job, lock)),
                Err(_) => continue,
            }
            // It may have ended between the list and the lock.
            let catalog = env.repo.catalog().clone();
            if !blocking(move || catalog.running_jobs())
                .await??
                .contains(&job)
            {
                continue;
            }
        }
        let catalog = env.repo.catalog().clone();
        let end = JobEnd {
            succeeded: false,
            error: Some("interrupted: the agent stopped before the job ended".into()),
            stats: serde_json::json!({ "interrupted": true }),
        };
        blocking(move || catalog.job_finish(job, end, crate::repo::now_secs())).await??;
        report.jobs_interrupted.push(job);
    }
    for vm in vms {
        tagged_snapshots(env, vm, &root, unknown_jobs, &mut held, &mut report).await;
    }
    for (job, lock) in held {
        drop(lock);
        JobLock::remove_file(&root, job);
    }
    Ok(report)
}

/// `VixDiskLib_Cleanup` for the vCenter, on a blocking thread; what it did goes in the
/// report.
async fn vddk_cleanup(env: &Environment, report: &mut ReconcileReport) {
    let vddk = env.vddk.clone();
    let spec = env.vddk_target.spec(&VmMoref(String::new()), None, true);
    let server = spec.server.clone();
    let failed = |e: &dyn std::fmt::Display| format!("VixDiskLib_Cleanup against {server}: {e}");
    let outcome = match blocking(move || vddk.cleanup(&spec)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => return report.errors.push(failed(&e)),
        Err(e) => return report.errors.push(failed(&e)),
    };
    if outcome.cleaned > 0 {
        tracing::warn!(
            vms = outcome.cleaned,
            "reconcile: VixDiskLib_Cleanup removed what crashed backups left (disks hot-added to this proxy VM)"
        );
    }
    report.transport_cleaned = outcome.cleaned;
    if let Some(e) = outcome.error {
        report.errors.push(format!(
            "VixDiskLib_Cleanup against {server} left the transport state of {} VM(s) (disks hot-added to this proxy VM keep their snapshots from being removed): {}",
            outcome.remaining,
            error_chain(&e)
        ));
    }
}

/// The disk files an interrupted disk-only restore attached and had not finished writing.
fn unfinished_disks(entry: &JournalEntry) -> Vec<String> {
    entry
        .detail
        .get("attached")
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Undoes one entry. `blocked`: VMs whose unfinished restored disks could not be detached,
/// or that could not be removed, in this run, whose EndAccess must wait.
async fn undo(
    env: &Environment,
    entry: &JournalEntry,
    report: &mut ReconcileReport,
    blocked: &mut Vec<VmMoref>,
) {
    let vm = &entry.vm;
    match entry.kind.as_str() {
        "snapshot" => {
            let Some(job) = job_of(entry) else {
                report.errors.push(format!(
                    "journal entry {} for {vm} names no job; remove its snapshot by hand",
                    entry.id
                ));
                return;
            };
            let effect = SnapshotEffect {
                journal: Some(entry.id),
                job,
                moref: entry
                    .detail
                    .get("snapshot")
                    .and_then(|s| s.as_str())
                    .map(|s| SnapshotMoref(s.to_owned())),
            };
            match journal::remove_snapshot(env, vm, &effect, false).await {
                Ok(removed) => {
                    for s in removed {
                        tracing::info!(vm = %vm, snapshot = %s, "reconcile: removed our snapshot");
                        report.snapshots_removed.push((vm.clone(), s));
                    }
                }
                Err(e) => report.errors.push(format!(
                    "removing the snapshot of job {job} from {vm}: {}",
                    error_chain(&e)
                )),
            }
        }
        "prepare_access" if blocked.contains(vm) => report.errors.push(format!(
            "EndAccess for {vm} waits until the half-restored VM is removed or its unfinished restored disks are detached"
        )),
        "prepare_access" => {
            let identity = entry
                .detail
                .get("identity")
                .and_then(|s| s.as_str())
                .unwrap_or("vadp-agent")
                .to_owned();
            match journal::end_access(env, vm, &identity, entry.id, false).await {
                Ok(()) => {
                    tracing::info!(vm = %vm, "reconcile: EndAccess");
                    report.access_ended.push(vm.clone());
                }
                Err(e) => report
                    .errors
                    .push(format!("EndAccess for {vm}: {}", error_chain(&e))),
            }
        }
        "vm_shell" => {
            // A VM a crashed restore created and never finished: reported, and removed
            // when it was registered (it holds nothing but partly restored data, which
            // the repository still has).
            let shell = entry
                .detail
                .get("vm")
                .and_then(|v| v.as_str())
                .map(|v| VmMoref(v.to_owned()));
            let mut detail = entry.detail.clone();
            let in_place = entry
                .detail
                .get("in_place")
                .and_then(serde_json::Value::as_bool)
                == Some(true);
            match &shell {
                Some(shell) if in_place => {
                    let unfinished = unfinished_disks(entry);
                    let swapped = super::restore::swaps_of(&entry.detail);
                    if unfinished.is_empty() && swapped.is_empty() {
                        tracing::warn!(vm = %shell, "reconcile: a restore in place was interrupted; the VM's disks are partly restored");
                    }
                    if !unfinished.is_empty() {
                        let (detached, complete) =
                            super::restore::detach_unfinished(env, shell, &unfinished, None).await;
                        if !complete {
                            report.errors.push(format!(
                                "detaching the unfinished restored disks {unfinished:?} from {shell}: see the log; EndAccess waits for the next run"
                            ));
                            blocked.push(shell.clone());
                            return;
                        }
                        tracing::warn!(vm = %shell, detached = ?detached, "reconcile: a disk-only restore was interrupted; its unfinished disks are detached and deleted");
                        detail["detached"] = detached.into();
                    }
                    if !swapped.is_empty() {
                        // Before EndAccess, as the restore's own clean-up: the new,
                        // half-written disks go and the First Class Disks come back.
                        let (reattached, complete) =
                            super::restore::swap_back(
                                env,
                                shell,
                                &swapped,
                                super::restore::committing_of(&entry.detail),
                                None,
                            )
                            .await;
                        if !complete {
                            let fcds: Vec<&str> =
                                swapped.iter().map(|s| s.fcd_file.as_str()).collect();
                            report.errors.push(format!(
                                "swapping the First Class Disks {fcds:?} back onto {shell}: see the log; EndAccess waits for the next run"
                            ));
                            blocked.push(shell.clone());
                            return;
                        }
                        tracing::warn!(vm = %shell, reattached = ?reattached, "reconcile: a restore in place was interrupted; its new disks are deleted and its First Class Disks attached again");
                        detail["reattached"] = reattached.into();
                    }
                    detail["removed"] = false.into();
                    if let Err(e) = journal::close(env, entry.id).await {
                        report.errors.push(error_chain(&e));
                    }
                }
                Some(shell)
                    if entry.detail.get("complete").and_then(serde_json::Value::as_bool)
                        == Some(true) =>
                {
                    // Its data was all written before the agent stopped: the VM stays, its
                    // access is ended (its own entry), and WCP registers it or the user does
                    // (§11.1).
                    tracing::warn!(vm = %shell, "reconcile: a restore to a new VM stopped after its data was written; the VM stays: check that WCP registered it, or register it by hand");
                    detail["removed"] = false.into();
                    detail["kept"] = true.into();
                    if let Err(e) = journal::close(env, entry.id).await {
                        report.errors.push(error_chain(&e));
                    }
                }
                Some(shell) => match super::restore::remove_shell(env, shell).await {
                    Ok(()) => {
                        tracing::warn!(vm = %shell, "reconcile: removed a half-restored VM");
                        detail["removed"] = true.into();
                        // Then the directories the restore made.
                        let (gone, complete) =
                            super::restore::delete_dirs_named_in(env, &entry.detail).await;
                        if !complete {
                            report.errors.push(format!(
                                "deleting the directories {} of a half-restored VM: see the log; the entry stays for the next run",
                                entry.detail["dirs"]
                            ));
                            return;
                        }
                        if entry.detail["dirs"].as_array().is_some_and(|d| !d.is_empty()) {
                            detail["deleted"] = gone.into();
                        }
                        if let Err(e) = journal::close(env, entry.id).await {
                            report.errors.push(error_chain(&e));
                        }
                    }
                    Err(e) => {
                        report.errors.push(format!(
                            "removing the half-restored VM {shell}: {}; its access stays prepared until it is removed",
                            error_chain(&e)
                        ));
                        blocked.push(shell.clone());
                    }
                },
                None => {
                    // Before its VM was registered: the files it journalled go one by one.
                    let made = super::restore::Unregistered::from_detail(&entry.detail);
                    let (deleted, complete) = match &made {
                        Some(made) => {
                            super::restore::delete_unregistered(env, made, None).await
                        }
                        None => (Vec::new(), true),
                    };
                    if !complete {
                        report.errors.push(format!(
                            "deleting the files a restore made before registering its VM ({}): see the log; the entry stays for the next run",
                            entry.detail["vmx"]
                        ));
                        return;
                    }
                    match made {
                        Some(made) => {
                            tracing::warn!(journal = entry.id, deleted = ?deleted, left = ?made.creating, "reconcile: a restore crashed before registering its VM; the files it made are deleted");
                            if let Some(file) = made.creating_elsewhere() {
                                detail["maybe_left"] = file.into();
                            }
                        }
                        None => tracing::warn!(
                            journal = entry.id,
                            "reconcile: a restore crashed before registering its VM; its disk files remain (an agent older than the journalling of them wrote this entry)"
                        ),
                    }
                    detail["removed"] = false.into();
                    detail["deleted"] = deleted.into();
                    if let Err(e) = journal::close(env, entry.id).await {
                        report.errors.push(error_chain(&e));
                    }
                }
            }
            report
                .half_created_vms
                .push((shell.unwrap_or_else(|| vm.clone()), detail));
        }
        _ => report
            .half_created_vms
            .push((vm.clone(), entry.detail.clone())),
    }
}

async fn tagged_snapshots(
    env: &Environment,
    vm: &VmMoref,
    root: &std::path::Path,
    unknown_jobs: bool,
    held: &mut Vec<(JobId, JobLock)>,
    report: &mut ReconcileReport,
) {
    let info = match env.soap.vm_info(vm).await {
        Ok(i) => i,
        Err(e) => {
            report
                .errors
                .push(format!("reading {vm}: {}", error_chain(&e)));
            return;
        }
    };
    for s in info.all_snapshots() {
        let Some(job) = journal::snapshot_job(&s.description) else {
            continue;
        };
        // Every job of this repository is in its catalog before it takes a snapshot: one
        // it does not know is another repository's or agent's, maybe running now.
        let catalog = env.repo.catalog().clone();
        match blocking(move || catalog.job_known(job))
            .await
            .and_then(|r| r.map_err(BackupError::Catalog))
        {
            Ok(known) if known || unknown_jobs => {}
            Ok(_) => {
                report.errors.push(format!(
                    "snapshot {} ({:?}) of {vm} was taken by job {job}, which this repository \
                     has no record of: another repository's or agent's backup, maybe running \
                     now; left alone (run `vadp-agent reconcile --vm {vm}` with that \
                     repository, or, once no backup uses it, add `--unknown-jobs`)",
                    s.snapshot, s.name
                ));
                continue;
            }
            Err(e) => {
                report
                    .errors
                    .push(format!("job {job}: {}", error_chain(&e)));
                continue;
            }
        }
        if !held.iter().any(|(j, _)| *j == job) {
            let r = root.to_path_buf();
            match blocking(move || JobLock::acquire(&r, job)).await {
                Ok(Ok(lock)) => held.push((job, lock)),
                _ => {
                    report.skipped_running += 1;
                    continue;
                }
            }
        }
        let effect = SnapshotEffect {
            journal: None,
            job,
            moref: Some(s.snapshot.clone()),
        };
        match journal::remove_snapshot(env, vm, &effect, false).await {
            Ok(removed) => report
                .snapshots_removed
                .extend(removed.into_iter().map(|r| (vm.clone(), r))),
            Err(e) => report.errors.push(error_chain(&e)),
        }
    }
}
