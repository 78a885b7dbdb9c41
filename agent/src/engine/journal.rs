//! The side-effect journal as the engine uses it: open an entry before acting, record what
//! was created, undo it and close the entry. The same undo functions serve the job's own
//! cleanup and the [`super::reconcile`]r.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{BackupError, Environment, blocking};
use crate::ids::JobId;
use crate::repo::catalog::JournalKind;
use crate::repo::{ChunkStoreError, RepoLock};
use crate::vsphere::{FaultKind, SnapshotMoref, VmMoref, VsphereError};

/// Exclusive `flock` on `locks/job-<id>.lock` held while a job runs; released by the
/// kernel when the process dies, which is how the reconciler tells a crashed job from a
/// running one.
#[derive(Debug)]
pub struct JobLock {
    _lock: RepoLock,
}

impl JobLock {
    fn path(repo_root: &Path, job: JobId) -> PathBuf {
        repo_root.join("locks").join(format!("job-{job}.lock"))
    }

    /// Takes the lock of `job`.
    ///
    /// # Errors
    /// [`ChunkStoreError::Busy`] when a live process holds it; I/O errors.
    pub fn acquire(repo_root: &Path, job: JobId) -> Result<Self, ChunkStoreError> {
        let dir = repo_root.join("locks");
        std::fs::create_dir_all(&dir).map_err(|source| ChunkStoreError::Lock {
            path: dir.clone(),
            source,
        })?;
        RepoLock::try_exclusive(&Self::path(repo_root, job)).map(|l| Self { _lock: l })
    }

    /// Removes the lock file of a finished job (best effort).
    pub fn remove_file(repo_root: &Path, job: JobId) {
        let _ = std::fs::remove_file(Self::path(repo_root, job));
    }
}

/// Exclusive `flock` on `locks/vm-<vCenter uuid>-<moref>.lock`, held by the job that backs a
/// VM up or restores into it for as long as the job runs, so that two jobs never work on
/// one VM at once (another process's, or the daemon's queue's, included). The file says
/// which job holds it. The files stay: removing a lock file that another process has open
/// would let two holders in.
#[derive(Debug)]
pub struct VmLock {
    _lock: RepoLock,
}

impl VmLock {
    fn path(repo_root: &Path, vcenter: &str, vm: &VmMoref) -> PathBuf {
        let safe = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        repo_root
            .join("locks")
            .join(format!("vm-{}-{}.lock", safe(vcenter), safe(vm.as_str())))
    }

    /// Takes the lock of `vm` of vCenter `vcenter` for `job`, which `what` describes
    /// (`backup`, `restore`).
    ///
    /// # Errors
    /// [`BackupError::VmBusy`] naming the job that holds it; a lock error otherwise.
    pub fn acquire(
        repo_root: &Path,
        vcenter: &str,
        vm: &VmMoref,
        name: &str,
        job: JobId,
        what: &str,
    ) -> Result<Self, BackupError> {
        let dir = repo_root.join("locks");
        let path = Self::path(repo_root, vcenter, vm);
        let lock_error = |e: ChunkStoreError| BackupError::Repo(crate::repo::RepoError::Lock(e));
        std::fs::create_dir_all(&dir).map_err(|source| {
            lock_error(ChunkStoreError::Lock {
                path: dir.clone(),
                source,
            })
        })?;
        match RepoLock::try_exclusive(&path) {
            Ok(lock) => {
                std::fs::write(&path, format!("{what} job {job}\n")).map_err(|source| {
                    lock_error(ChunkStoreError::Lock {
                        path: path.clone(),
                        source,
                    })
                })?;
                Ok(Self { _lock: lock })
            }
            Err(ChunkStoreError::Busy { .. }) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "another job".into());
                Err(BackupError::VmBusy {
                    // A new VM's name has no moref yet (`new-<name>`).
                    vm: if vm.as_str().starts_with("new-") {
                        format!(
                            "name {name} (restores to a new VM of one name take turns, whatever \
                             their namespaces: each registers it in the staging folder)"
                        )
                    } else {
                        format!("{name} ({vm})")
                    },
                    holder,
                })
            }
            Err(e) => Err(lock_error(e)),
        }
    }
}

/// The description our backup snapshots carry: how they are recognised.
pub(crate) fn snapshot_description(job: JobId) -> String {
    format!("{} {job}", super::SNAPSHOT_TAG)
}

/// Whether a snapshot description is one of ours; returns its job id.
pub(crate) fn snapshot_job(description: &str) -> Option<JobId> {
    description
        .strip_prefix(super::SNAPSHOT_TAG)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The key of an entry's detail that names the vCenter (its `instanceUuid`) the entry's
/// morefs belong to: one repository may serve several vCenters, and a moref means nothing
/// on another (the reconciler leaves such entries for a run against their own vCenter).
pub(crate) const VCENTER_KEY: &str = "vcenter";

/// `detail` with the connected vCenter's `instanceUuid` under [`VCENTER_KEY`].
fn with_vcenter(env: &Environment, mut detail: serde_json::Value) -> serde_json::Value {
    if let Some(map) = detail.as_object_mut() {
        map.insert(
            VCENTER_KEY.into(),
            env.soap
                .service_content()
                .about
                .instance_uuid
                .clone()
                .into(),
        );
    }
    detail
}

/// The vCenter an entry was written against (`None` for entries written before the
/// journal recorded it: taken as the connected one's, as the reconciler then did).
pub(crate) fn vcenter_of(detail: &serde_json::Value) -> Option<&str> {
    detail.get(VCENTER_KEY)?.as_str()
}

/// Opens a journal entry (fsynced by SQLite's commit) and returns its id; the detail gets
/// the vCenter's `instanceUuid` ([`VCENTER_KEY`]).
pub(crate) async fn open(
    env: &Environment,
    kind: JournalKind,
    vm: &VmMoref,
    detail: serde_json::Value,
) -> Result<i64, BackupError> {
    let detail = with_vcenter(env, detail);
    let catalog = env.repo.catalog().clone();
    let vm = vm.clone();
    blocking(move || catalog.journal_open(kind, vm, detail, crate::repo::now_secs()))
        .await?
        .map_err(BackupError::Catalog)
}

/// Replaces an entry's detail (the vCenter's `instanceUuid` kept, as [`open`] adds it).
pub(crate) async fn update(
    env: &Environment,
    id: i64,
    detail: serde_json::Value,
) -> Result<(), BackupError> {
    let detail = with_vcenter(env, detail);
    let catalog = env.repo.catalog().clone();
    blocking(move || catalog.journal_update(id, detail))
        .await?
        .map_err(BackupError::Catalog)
}

/// Closes an entry.
pub(crate) async fn close(env: &Environment, id: i64) -> Result<(), BackupError> {
    let catalog = env.repo.catalog().clone();
    blocking(move || catalog.journal_close(id, crate::repo::now_secs()))
        .await?
        .map_err(BackupError::Catalog)
}

/// What one journalled snapshot is, as far as we know.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotEffect {
    /// The journal entry (`None` for a tagged snapshot found without one).
    pub journal: Option<i64>,
    pub job: JobId,
    pub moref: Option<SnapshotMoref>,
}

impl SnapshotEffect {
    pub(crate) fn detail(&self, name: &str) -> serde_json::Value {
        json!({
            "job": self.job,
            "name": name,
            "snapshot": self.moref.as_ref().map(|m| m.0.clone()),
        })
    }
}

/// How long clean-up waits, in all, for snapshots still being created before it gives up
/// (and leaves the journal entry open for the next attempt).
const SNAPSHOT_CREATE_WAIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Removes our snapshot of `vm` (the journalled moref, or every snapshot whose description
/// carries the job id when the moref was never learnt: after the VM's snapshot creations
/// still running have ended, since a snapshot being created is not in its tree yet),
/// consolidating, then closes the entry. A VM or snapshot that no longer exists counts as
/// removed. When vCenter reports `runtime.consolidationNeeded` afterwards (a disk it could
/// not merge, e.g. still locked), `ConsolidateVMDisks_Task` runs before the entry closes,
/// so redo logs never stay behind a snapshot that is gone (VSPHERE.md §A.6). Returns the
/// snapshots removed.
pub(crate) async fn remove_snapshot(
    env: &Environment,
    vm: &VmMoref,
    effect: &SnapshotEffect,
    retry: bool,
) -> Result<Vec<SnapshotMoref>, BackupError> {
    if effect.moref.is_none() {
        match env
            .soap
            .wait_for_snapshot_creates(vm, SNAPSHOT_CREATE_WAIT)
            .await
        {
            Ok(_) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => {
                return Err(BackupError::Vsphere {
                    what: format!("waiting for the snapshots still being created on {vm}"),
                    source: e,
                });
            }
        }
    }
    let targets = match &effect.moref {
        Some(m) => vec![m.clone()],
        None => match env.soap.vm_info(vm).await {
            Ok(info) => info
                .all_snapshots()
                .into_iter()
                .filter(|s| snapshot_job(&s.description) == Some(effect.job))
                .map(|s| s.snapshot.clone())
                .collect(),
            Err(e) if is_gone(&e) => Vec::new(),
            Err(e) => {
                return Err(BackupError::Vsphere {
                    what: format!("reading the snapshots of {vm}"),
                    source: e,
                });
            }
        },
    };
    let mut removed = Vec::new();
    for snapshot in targets {
        let mut pauses = snapshot_remove_pauses().into_iter().filter(|_| retry);
        loop {
            match env.soap.remove_snapshot(&snapshot, true, |_| {}).await {
                Ok(()) => {
                    removed.push(snapshot);
                    break;
                }
                Err(e) if is_gone(&e) => break,
                Err(e) => match pauses.next() {
                    Some(pause) if e.is_retryable() => {
                        tracing::warn!(vm = %vm, snapshot = %snapshot, error = %super::error_chain(&e), retry_in_secs = pause.as_secs_f64(), "removing our snapshot failed; trying again");
                        tokio::time::sleep(pause).await;
                    }
                    _ => {
                        return Err(BackupError::Vsphere {
                            what: format!("removing snapshot {snapshot} of {vm}"),
                            source: e,
                        });
                    }
                },
            }
        }
    }
    consolidate_if_needed(env, vm).await?;
    if let Some(id) = effect.journal {
        close(env, id).await?;
    }
    Ok(removed)
}

/// `ConsolidateVMDisks_Task` when `vm` reports `runtime.consolidationNeeded`.
pub(crate) async fn consolidate_if_needed(
    env: &Environment,
    vm: &VmMoref,
) -> Result<(), BackupError> {
    let needed = match env.soap.vm_info(vm).await {
        Ok(info) => info.consolidation_needed,
        Err(e) if is_gone(&e) => false,
        Err(e) => {
            return Err(BackupError::Vsphere {
                what: format!("reading whether {vm} needs disk consolidation"),
                source: e,
            });
        }
    };
    if !needed {
        return Ok(());
    }
    tracing::warn!(vm = %vm, "the VM needs disk consolidation after its snapshot was removed: consolidating");
    match env.soap.consolidate_disks(vm).await {
        Ok(()) => {
            tracing::info!(vm = %vm, "disks consolidated");
            Ok(())
        }
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(BackupError::Vsphere {
            what: format!("consolidating the disks of {vm} after removing our snapshot"),
            source: e,
        }),
    }
}

/// The pauses before a snapshot removal that failed for a passing reason (another task on
/// the VM, a vMotion say; vCenter restarting; a host not answering) is tried again, where a
/// caller asks for it: a snapshot left on a running VM grows with every write until
/// reconcile removes it, so the job tries for two minutes first.
const SNAPSHOT_REMOVE_RETRIES: [std::time::Duration; 3] = [
    std::time::Duration::from_secs(5),
    std::time::Duration::from_secs(30),
    std::time::Duration::from_secs(90),
];

/// [`SNAPSHOT_REMOVE_RETRIES`], or what `VADP_AGENT_SNAPSHOT_REMOVE_PAUSES_MS` lists (the
/// tests').
fn snapshot_remove_pauses() -> Vec<std::time::Duration> {
    super::pauses_from_env(
        "VADP_AGENT_SNAPSHOT_REMOVE_PAUSES_MS",
        &SNAPSHOT_REMOVE_RETRIES,
    )
}

/// The pauses before EndAccess is tried again, where a caller asks for it: a vCenter that
/// failed it once (a restart, a dropped connection) is given two more tries, 2 s and 5 s
/// later, before the call is left to the caller's clean-up and to reconcile.
const END_ACCESS_RETRIES: [std::time::Duration; 2] = [
    std::time::Duration::from_secs(2),
    std::time::Duration::from_secs(5),
];

/// Calls EndAccess for `vm` with `identity` and closes the entry; a VM that no longer exists
/// (vCenter says so after EndAccess failed) has no access left to end. With `retry`, a
/// failed call is tried again ([`END_ACCESS_RETRIES`]; EndAccess may be repeated): where
/// it ends a restore whose data is all written, or a backup that was not cancelled. A
/// clean-up after a failure or a cancel, a second clean-up and reconcile try once (a
/// shutdown is not held up by the pauses; reconcile runs again).
pub(crate) async fn end_access(
    env: &Environment,
    vm: &VmMoref,
    identity: &str,
    journal: i64,
    retry: bool,
) -> Result<(), BackupError> {
    super::pause_point("end-access").await;
    let what = format!("EndAccess for {vm}");
    let mut pauses = END_ACCESS_RETRIES.iter().filter(|_| retry);
    loop {
        let vddk = env.vddk.clone();
        let spec = env.vddk_target.spec(vm, None, true);
        let id = identity.to_owned();
        let Err(source) = blocking(move || vddk.end_access(&spec, &id)).await? else {
            break;
        };
        // The VM's disabled methods went with the VM: a half-restored VM is destroyed
        // before its access is ended, so that WCP never takes it for a finished restore.
        match env.soap.vm_info(vm).await {
            Err(e) if is_gone(&e) => {
                tracing::info!(vm = %vm, "EndAccess: the VM no longer exists; nothing to end");
                break;
            }
            _ => match pauses.next() {
                Some(pause) => {
                    tracing::warn!(vm = %vm, error = %super::error_chain(&source), retry_in_secs = pause.as_secs(), "EndAccess failed; trying again");
                    tokio::time::sleep(*pause).await;
                }
                None => return Err(BackupError::Vddk { what, source }),
            },
        }
    }
    close(env, journal).await
}

/// The object is gone: nothing left to undo.
pub(crate) fn is_gone(e: &VsphereError) -> bool {
    matches!(e.fault_kind(), Some(FaultKind::ManagedObjectNotFound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_tag_round_trips() {
        let job = JobId::new_random();
        assert_eq!(snapshot_job(&snapshot_description(job)), Some(job));
        assert_eq!(
            snapshot_job("vadp-agent: enable changed block tracking"),
            None
        );
        assert_eq!(snapshot_job("someone else's snapshot"), None);
    }
}
