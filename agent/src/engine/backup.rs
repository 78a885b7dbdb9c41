//! Backup of a group of VMs at a common point in time (ARCHITECTURE §3, seed 000, seed
//! 001 §3 and §5).
//!
//! A job runs in three phases:
//!
//! 1. **Set-up, all VMs together.** Resolve every VM (devices, ExtraConfig, CBT state) and
//!    refuse the whole group when one cannot be backed up (unknown, already carrying one
//!    of our snapshots, listed twice): a group is only useful when all of its members share
//!    the point in time. Enable CBT where it is off. Journal and call PrepareForAccess.
//!    Journal every snapshot intent, then start every CreateSnapshot_Task at once; the
//!    skew (first to last completion) is recorded. If any snapshot fails the group is not
//!    consistent: the job undoes everything and fails. An *independent* job
//!    ([`BackupRequest::independent`], a job for many VMs, seed 002) does none of this
//!    refusing: a VM that cannot be set up or snapshotted fails alone (its own side
//!    effects undone, its lock let go) and the others go on.
//! 2. **Data, per VM in parallel.** Download the VMX, read the snapshot's disks and their
//!    changeIds, plan each disk (incremental from the last good changeId, or a labelled
//!    full), read the planned extents through VDDK into the repository (disks in parallel
//!    up to the [`Limits`]), validate the VM Service ExtraConfig (seed 001 §5.3), commit
//!    the restore point, then remove the snapshot and end access.
//! 3. **Clean-up.** Whatever phase 2 did not undo (after an error, a panic or
//!    cancellation) is undone here: snapshots removed, EndAccess called, journal closed.
//!
//! A crash anywhere leaves open journal entries, which [`super::reconcile`] undoes.

use futures_util::FutureExt as _;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::journal::{self, JobLock, SnapshotEffect, VmLock};
use super::limits::{Gate, Limits, PlaceLimits};
use super::vddk_source::{self, VddkSource};
use super::{Environment, Observer, blocking, crash_point, error_chain, vmx};
use crate::ids::{ChangeId, DiskKey, JobId, RestorePointId, VmMoref};
use crate::repo::catalog::{
    CatalogError, DiskRecord, DiskRole, JobEnd, JournalKind, NewPoint, PointKind, PointRecord,
    VmRecord,
};
use crate::repo::{DiskBackupStats, DiskPlan, Extent, RepoError, WrittenDisk, pipeline};
use crate::vddk::{DiskLibError, OpenFlags};
use crate::vmservice::{self, CapturedDisk, Validation, ValidationStatus};
use crate::vsphere::{
    ChangedArea, CreateSnapshot, DatastoreError, DatastorePath, FaultKind, SnapshotMoref,
    VirtualDiskInfo, VmInfo, VsphereError,
};

/// Every snapshot a backup creates has a description starting with this tag, followed by
/// the job id: how the agent (and an administrator) recognises its snapshots.
pub const SNAPSHOT_TAG: &str = "vadp-agent backup job";

/// Errors that stop a whole job (a single VM's failure is reported in its [`VmReport`]).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A vSphere call failed.
    #[error("{what}")]
    Vsphere {
        /// What the agent was doing.
        what: String,
        /// The vSphere error.
        #[source]
        source: VsphereError,
    },
    /// Datastore file transfer failed.
    #[error("{what}")]
    Datastore {
        /// What the agent was doing.
        what: String,
        /// The transfer error.
        #[source]
        source: DatastoreError,
    },
    /// A VDDK call failed.
    #[error("{what}")]
    Vddk {
        /// What the agent was doing.
        what: String,
        /// The VDDK error.
        #[source]
        source: DiskLibError,
    },
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A VM cannot be backed up as asked.
    #[error("VM {vm}: {reason}")]
    Refused {
        /// The VM (as given or resolved).
        vm: String,
        /// Why.
        reason: String,
    },
    /// Another job (or process) is backing up or restoring the VM now: nothing was changed,
    /// and the same request can be tried again once that job has ended.
    #[error(
        "VM {vm}: {holder} is working on it now; a VM is backed up or restored by one job at \
         a time: try again when that job has ended"
    )]
    VmBusy {
        /// The VM (`name (moref)`).
        vm: String,
        /// The job holding it (`backup job <id>`).
        holder: String,
    },
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A thread or task failed (panicked).
    #[error("{0}")]
    Thread(String),
}

/// How a VM is named on the command line or in the API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum VmSelector {
    /// A managed object reference, `vm-42`.
    Moref(VmMoref),
    /// A VM Service VM: `<namespace>/<name>` (the VM named `name` in the namespace's folder).
    Namespaced {
        /// Supervisor namespace.
        namespace: String,
        /// VM name.
        name: String,
    },
}

impl FromStr for VmSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self::Namespaced {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            None if s.starts_with("vm-") && s.len() > 3 => Ok(Self::Moref(VmMoref(s.to_owned()))),
            _ => Err(format!(
                "{s:?}: give a VM as NAMESPACE/NAME or as a managed object reference (vm-42)"
            )),
        }
    }
}

impl fmt::Display for VmSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Moref(m) => write!(f, "{m}"),
            Self::Namespaced { namespace, name } => write!(f, "{namespace}/{name}"),
        }
    }
}

/// One VM of a job, with its options.
#[derive(Debug, Clone)]
pub struct VmRequest {
    /// Which VM.
    pub selector: VmSelector,
    /// Quiesce the guest file systems (VMware Tools) when snapshotting.
    pub quiesce: bool,
}

/// A backup job.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// Name of the consistency group (recorded with the job).
    pub group: Option<String>,
    /// The VMs, snapshotted together.
    pub vms: Vec<VmRequest>,
    /// Each VM stands alone (a job for many VMs, seed 002): a VM that cannot be backed up
    /// (not found, refused, still busy after `busy_vm_wait`, its CBT, PrepareForAccess or
    /// snapshot failing) fails alone and the others go on. Off, the VMs are a consistency
    /// group (seed 000): any of these refuses or undoes the whole job.
    pub independent: bool,
    /// Read every allocated block even where CBT could give the changes.
    pub force_full: bool,
    /// Fail a VM whose backup could not be restored as a VM Service VM (instead of a warning).
    pub require_vmservice: bool,
    /// Bracket each VM's backup with PrepareForAccess/EndAccess (VMware's recommended order).
    pub prepare_access: bool,
    /// Disk read concurrency.
    pub limits: Limits,
    /// The per-host and per-datastore semaphores this job shares with others that run at
    /// once (the daemon's jobs); `None`: the job counts only its own reads.
    pub places: Option<Arc<PlaceLimits>>,
    /// How long, in all, to wait for VMs another job is backing up or restoring before the
    /// job fails with [`BackupError::VmBusy`] (zero: refuse at once). Nothing is changed
    /// while it waits; `waiting` events say for what.
    pub busy_vm_wait: Duration,
    /// Asked just before the snapshots (a policy's blackout windows, seed 000).
    pub snapshot_gate: Option<SnapshotGate>,
    /// Where each VM Service VM's VirtualMachineGroup and VirtualMachineServices are read,
    /// to be kept with its point (seed 001 §10.3–§10.4); `None`: they are not kept.
    pub supervisor: Option<Arc<crate::engine::restore::SupervisorLink>>,
    /// The job's place among those that run at once (the daemon's queue), given up while
    /// the job waits for a busy VM or a blackout window's end; `None`: it keeps none.
    pub slot: Option<Arc<dyn Slot>>,
}

/// A job's place among the jobs that run at once. A job that waits with nothing to do
/// steps out, so that another can run meanwhile, and steps in again before it goes on.
pub trait Slot: Send + Sync + std::fmt::Debug {
    /// Gives the place up.
    fn step_out(&self);
    /// Takes a place again, waiting for one to come free.
    fn step_in(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// Steps back into `slot` after a wait, unless the job is cancelled first.
async fn step_in(slot: Option<&dyn Slot>, cancel: &CancellationToken) -> Result<(), BackupError> {
    let Some(slot) = slot else {
        return Ok(());
    };
    tokio::select! {
        () = slot.step_in() => Ok(()),
        () = cancel.cancelled() => Err(BackupError::Cancelled),
    }
}

/// Asked just before a job's snapshots: the end of a window in which none may be taken (a
/// policy's blackout window, seed 000: a job that started before the window, then waited
/// for a busy VM or set up many VMs, must not snapshot inside it), or `None` when they may
/// be taken now. The job then waits, taking no snapshot, until that end or its
/// cancellation, and asks again.
#[derive(Clone)]
pub struct SnapshotGate(pub Arc<dyn Fn() -> Option<jiff::Zoned> + Send + Sync>);

impl std::fmt::Debug for SnapshotGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotGate")
    }
}

/// Progress and milestones of a job.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BackupEvent {
    /// At start, the reconciler undid what interrupted jobs had left (ARCHITECTURE §7).
    Reconciled {
        /// Snapshots removed.
        snapshots_removed: usize,
        /// PrepareForAccess calls ended.
        access_ended: usize,
        /// Jobs marked interrupted.
        jobs_interrupted: usize,
        /// What could not be undone (still journalled).
        errors: Vec<String>,
    },
    /// A VM of the job is held by another job: nothing was changed, and the job tries
    /// again in `retry_in_secs` (within [`BackupRequest::busy_vm_wait`]).
    Waiting {
        /// The VM (`name (moref)`).
        vm: String,
        /// The job holding it.
        holder: String,
        /// In words.
        reason: String,
        /// Seconds until the next try.
        retry_in_secs: u64,
    },
    /// The snapshots wait for the end of a window in which none may be taken
    /// ([`BackupRequest::snapshot_gate`]); nothing more is changed meanwhile.
    SnapshotsDeferred {
        /// When the window ends (RFC 3339 with the zone).
        until: String,
    },
    /// The job started.
    JobStarted {
        /// Job id.
        job: JobId,
        /// Number of VMs.
        vms: usize,
    },
    /// CBT was off and has been turned on (this VM's backup is a full).
    CbtEnabled {
        /// VM.
        vm: VmMoref,
        /// Name.
        name: String,
    },
    /// A snapshot of the group completed.
    SnapshotCreated {
        /// VM.
        vm: VmMoref,
        /// Name.
        name: String,
        /// The snapshot.
        snapshot: SnapshotMoref,
        /// Milliseconds since the group's snapshots were started.
        completed_ms: u64,
    },
    /// A disk's read started.
    DiskStarted {
        /// VM.
        vm: VmMoref,
        /// VM name.
        name: String,
        /// Device key.
        disk: DiskKey,
        /// Device label.
        label: String,
        /// Full or incremental.
        kind: PointKind,
        /// Why.
        reason: String,
        /// Bytes the pipeline will read (whole chunks).
        bytes_total: u64,
    },
    /// Bytes read so far.
    DiskProgress {
        /// VM.
        vm: VmMoref,
        /// Device key.
        disk: DiskKey,
        /// Done.
        bytes_done: u64,
        /// Total.
        bytes_total: u64,
    },
    /// A disk is in the repository.
    DiskFinished {
        /// VM.
        vm: VmMoref,
        /// Device key.
        disk: DiskKey,
        /// Bytes read.
        bytes_read: u64,
        /// Bytes of new chunks stored.
        bytes_stored: u64,
        /// Seconds.
        seconds: f64,
    },
    /// Something the administrator should know (e.g. the VM Service validation failed).
    Warning {
        /// VM.
        vm: VmMoref,
        /// Name.
        name: String,
        /// What.
        message: String,
    },
    /// A VM's restore point is committed.
    VmFinished {
        /// VM.
        vm: VmMoref,
        /// Name.
        name: String,
        /// The point.
        point: RestorePointId,
        /// Full or incremental.
        kind: PointKind,
    },
    /// A VM failed; nothing of it was committed.
    VmFailed {
        /// VM.
        vm: VmMoref,
        /// Name.
        name: String,
        /// Why.
        error: String,
    },
    /// The job ended.
    JobFinished {
        /// Job id.
        job: JobId,
        /// Whether every VM succeeded.
        succeeded: bool,
    },
}

/// What happened to one disk.
#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    /// Device key.
    pub key: DiskKey,
    /// Label.
    pub label: String,
    /// Full or incremental.
    pub kind: PointKind,
    /// Why this kind.
    pub reason: String,
    /// Capacity.
    pub capacity_bytes: u64,
    /// Bytes of the extents CBT (or the allocation map) reported.
    pub bytes_changed: u64,
    /// The VDDK transport mode the disk was read through (`hotadd`, `nbdssl` …).
    pub transport: String,
    /// Pipeline statistics (bytes read are whole chunks).
    pub stats: DiskBackupStats,
    /// Seconds.
    pub seconds: f64,
}

/// What happened to one VM.
#[derive(Debug, Clone, Serialize)]
pub struct VmReport {
    /// VM.
    pub vm: VmMoref,
    /// Name.
    pub name: String,
    /// The committed point (none when the VM failed).
    pub point: Option<RestorePointId>,
    /// Full or incremental (incremental when any disk was).
    pub kind: Option<PointKind>,
    /// Why.
    pub reason: String,
    /// The snapshot used.
    pub snapshot: Option<SnapshotMoref>,
    /// Disks.
    pub disks: Vec<DiskReport>,
    /// VM Service validation (seed 001 §5.3).
    pub validation: Option<Validation>,
    /// Size of the VMX kept.
    pub vmx_bytes: usize,
    /// Bytes of the NVRAM file kept with the point (none: the VM has none yet, or it could
    /// not be read, with a warning).
    pub nvram_bytes: Option<usize>,
    /// The VirtualMachineGroup and VirtualMachineServices kept with the point (`kind
    /// name`), seed 001 §10.3–§10.4.
    pub related: Vec<String>,
    /// Asked to quiesce: whether the snapshot was quiesced (vSphere makes it without when
    /// VMware Tools is not running); none when not asked.
    pub quiesced: Option<bool>,
    /// What went wrong short of failing the VM (a quiesce not done, change tracking left
    /// off, the NVRAM or the VM Service group not kept, ExtraConfig problems); each was
    /// also a `warning` event.
    pub warnings: Vec<String>,
    /// The error, when the VM failed.
    pub error: Option<String>,
    /// Problems cleaning up (a snapshot that could not be removed is also left in the
    /// journal for the reconciler).
    pub cleanup_errors: Vec<String>,
    /// Seconds from the group's snapshot start to the commit.
    pub seconds: f64,
}

/// What a job did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// Job id.
    pub job: JobId,
    /// Group name.
    pub group: Option<String>,
    /// Whether every VM succeeded.
    pub succeeded: bool,
    /// What could not be undone after the backups (a snapshot left, an EndAccess that
    /// failed), per VM: the points are committed, but the VMs need reconcile.
    pub warnings: Vec<String>,
    /// First-to-last snapshot completion, milliseconds.
    pub skew_ms: Option<u64>,
    /// Wall time.
    pub seconds: f64,
    /// Per VM.
    pub vms: Vec<VmReport>,
}

impl BackupReport {
    /// Whether the job committed a point of some VM (then a policy's retention applies).
    #[must_use]
    pub fn committed_any(&self) -> bool {
        self.vms.iter().any(|v| v.point.is_some())
    }

    /// The VMs the job tried and committed no point of (moref and name): retention keeps
    /// every point they have.
    #[must_use]
    pub fn failed_vms(&self) -> Vec<(VmMoref, String)> {
        self.vms
            .iter()
            .filter(|v| v.point.is_none())
            .map(|v| (v.vm.clone(), v.name.clone()))
            .collect()
    }
}

/// The waits of a job whose VM another job holds: 15 s, doubling up to 2 min, each with up
/// to 5 s more at random, so that two jobs never retry in step.
#[derive(Debug, Default)]
struct BusyWait {
    waited: Duration,
    last: Option<Duration>,
}

impl BusyWait {
    fn next_pause(&mut self) -> Duration {
        let base = self.last.map_or(Duration::from_secs(15), |p| {
            (p * 2).min(Duration::from_secs(120))
        });
        self.last = Some(base);
        let jitter_ms = u64::try_from(uuid::Uuid::new_v4().as_u128() % 5000).unwrap_or(0);
        let pause = base + Duration::from_millis(jitter_ms);
        self.waited += pause;
        pause
    }
}

/// A VM being backed up, and the side effects it holds.
#[derive(Debug)]
struct Member {
    request: VmRequest,
    info: VmInfo,
    cbt_enabled_now: bool,
    effects: Arc<Mutex<Effects>>,
}

#[derive(Debug, Default)]
struct Effects {
    /// Journal id of an un-ended PrepareForAccess.
    access: Option<i64>,
    /// Our snapshot, not yet removed.
    snapshot: Option<SnapshotEffect>,
}

/// Shared by the per-VM tasks of a job.
struct JobCtx {
    env: Environment,
    job: JobId,
    request: BackupRequest,
    identity: String,
    snapshot_name: String,
    vcenter_uuid: String,
    datacenter: String,
    gate: Gate,
    cancel: CancellationToken,
    observer: Observer,
    /// The locks of the job's VMs, held until the job has cleaned up after itself (or,
    /// in an independent job, until a VM that failed alone has).
    vm_locks: Mutex<Vec<(VmMoref, VmLock)>>,
    /// When the group's snapshots were started (Unix seconds, by vCenter's clock): the
    /// time of every point of the job, so that retention sees the group's points as one
    /// moment.
    snapshot_at: std::sync::OnceLock<i64>,
    /// vCenter's clock minus this machine's, in seconds, measured at the job's start.
    clock_offset_secs: i64,
    /// The warnings of the job's VMs so far ([`warn_vm`]).
    warnings: Mutex<Vec<(VmMoref, String)>>,
    /// The job's VMs as (Supervisor namespace, name), once set up (§10.3–§10.4: are a
    /// group's members and a service's VMs in the job?); no namespace for a VM that is no
    /// VM Service VM.
    job_vms: std::sync::OnceLock<Vec<(Option<String>, String)>>,
}

/// vCenter's clock minus this machine's, in seconds (`CurrentTime`; 0 when it cannot be
/// read). A restore point is stamped with vCenter's time: a proxy VM's clock can be wrong
/// for a while (booted before NTP corrected it), and a point stamped days off would be
/// judged days old, or young, by retention once the clock is right.
async fn vcenter_clock_offset(env: &Environment) -> i64 {
    let offset = match crate::daemon::clock::measure_skew(&env.soap).await {
        Ok(skew) => {
            // Also what retention, after the job, judges this machine's clock by.
            crate::daemon::clock::set_skew_secs(skew);
            -skew
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading vCenter's CurrentTime; points get this machine's time");
            return 0;
        }
    };
    if offset.abs() > crate::daemon::clock::MAX_SKEW_SECS {
        tracing::warn!(
            offset_secs = offset,
            "this machine's clock differs from vCenter's: the job's restore points are stamped with vCenter's time"
        );
    }
    offset
}

/// Runs a backup job to the end: every side effect it caused is undone before it returns,
/// whatever happened (cancel `cancel` to stop it early; it still cleans up).
///
/// # Errors
/// A [`BackupError`] when the job could not start or the group could not be snapshotted;
/// individual VM failures are in the returned report (`succeeded == false`).
pub async fn run_backup(
    env: &Environment,
    request: BackupRequest,
    cancel: CancellationToken,
    observer: Observer,
) -> Result<BackupReport, BackupError> {
    let env = &env.for_job().await;
    let job = JobId::new_random();
    let root = env.repo.root().to_path_buf();
    let lock_root = root.clone();
    let _job_lock = blocking(move || JobLock::acquire(&lock_root, job))
        .await?
        .map_err(|e| BackupError::Repo(RepoError::Lock(e)))?;
    // A restarted agent first undoes what its interrupted jobs left (never a running job's:
    // their locks are held). A failure here is reported; the VMs it concerns are refused
    // below while they still carry our snapshot.
    match super::reconcile::reconcile_in(env, &[], false).await {
        Ok(r) => {
            let did = r.snapshots_removed.len() + r.access_ended.len() + r.jobs_interrupted.len();
            if did > 0 || !r.errors.is_empty() {
                (observer)(&BackupEvent::Reconciled {
                    snapshots_removed: r.snapshots_removed.len(),
                    access_ended: r.access_ended.len(),
                    jobs_interrupted: r.jobs_interrupted.len(),
                    errors: r.errors,
                });
            }
        }
        Err(e) => tracing::warn!(error = %error_chain(&e), "reconcile at start failed"),
    }
    let catalog = env.repo.catalog().clone();
    let group = request.group.clone();
    blocking(move || catalog.job_start(job, group, crate::repo::now_secs())).await??;
    (observer)(&BackupEvent::JobStarted {
        job,
        vms: request.vms.len(),
    });
    let started = Instant::now();
    let outcome = run_job(env, job, request.clone(), cancel, observer.clone()).await;
    let (report, error) = match outcome {
        Ok(report) => (Some(report), None),
        Err(e) => (None, Some(e)),
    };
    let succeeded = report.as_ref().is_some_and(|r| r.succeeded);
    let end = JobEnd {
        succeeded,
        error: error.as_ref().map(|e| error_chain(e)).or_else(|| {
            report.as_ref().and_then(|r| {
                let failed: Vec<String> = r
                    .vms
                    .iter()
                    .filter_map(|v| v.error.as_ref().map(|e| format!("{}: {e}", v.name)))
                    .collect();
                (!failed.is_empty()).then(|| failed.join("; "))
            })
        }),
        stats: json!({
            "group": request.group,
            "independent": request.independent,
            "seconds": started.elapsed().as_secs_f64(),
            "skew_ms": report.as_ref().and_then(|r| r.skew_ms),
            "vms": report.as_ref().map(|r| r.vms.iter().map(|v| json!({
                "vm": v.vm, "name": v.name, "point": v.point, "error": v.error,
            })).collect::<Vec<_>>()),
        }),
    };
    let catalog = env.repo.catalog().clone();
    blocking(move || catalog.job_finish(job, end, crate::repo::now_secs())).await??;
    JobLock::remove_file(&root, job);
    (observer)(&BackupEvent::JobFinished { job, succeeded });
    match error {
        Some(e) => Err(e),
        None => Ok(report.expect("a job without error has a report")),
    }
}

async fn run_job(
    env: &Environment,
    job: JobId,
    request: BackupRequest,
    cancel: CancellationToken,
    observer: Observer,
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let datacenter = match &env.datacenter {
        Some(dc) => dc.clone(),
        None => env
            .soap
            .only_datacenter_name()
            .await
            .map_err(|source| BackupError::Vsphere {
                what: "finding the datacenter (pass --datacenter when there are several)".into(),
                source,
            })?,
    };
    let short = job.to_string()[..8].to_owned();
    let clock_offset_secs = vcenter_clock_offset(env).await;
    let ctx = Arc::new(JobCtx {
        env: env.clone(),
        job,
        identity: format!("vadp-agent backup {short}"),
        snapshot_name: format!("vadp-agent-{short}"),
        vcenter_uuid: env.soap.service_content().about.instance_uuid.clone(),
        datacenter,
        gate: Gate::new(request.limits, request.places.clone()),
        cancel,
        observer,
        request,
        vm_locks: Mutex::new(Vec::new()),
        snapshot_at: std::sync::OnceLock::new(),
        clock_offset_secs,
        job_vms: std::sync::OnceLock::new(),
        warnings: Mutex::new(Vec::new()),
    });

    // Held until every point of the job is committed: GC waits (ARCHITECTURE §6). Let go
    // while the job waits for a busy VM, so that GC is not held off meanwhile.
    let lock_repo = || {
        let repo = Arc::clone(&env.repo);
        blocking(move || repo.lock_shared())
    };
    let mut repo_lock = Some(lock_repo().await??);
    let mut members = Vec::new();
    // The VMs of an independent job that failed alone in the set-up.
    let mut failed = Vec::new();
    let mut give_up_busy = false;
    let mut busy = BusyWait::default();
    let setup = loop {
        failed.clear();
        // A panic in the set-up must not skip the clean-up of what it did so far (the
        // snapshots and PrepareForAccess of `members`): it ends the job as an error.
        let setup =
            std::panic::AssertUnwindSafe(set_up(&ctx, &mut members, &mut failed, give_up_busy))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Err(BackupError::Thread("the backup's set-up panicked".into()))
                });
        // An independent job has waited long enough for its busy VMs: they fail alone.
        if let Err(BackupError::VmBusy { .. }) = &setup
            && members.is_empty()
            && busy.waited >= ctx.request.busy_vm_wait
            && ctx.request.independent
            && !give_up_busy
        {
            give_up_busy = true;
            ctx.vm_locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
            continue;
        }
        // Another job holds one of the VMs: the locks come before any change, so nothing
        // was changed. Let go of the VMs locked so far (two jobs each holding a VM the
        // other wants never wait for each other) and try again, within the request's wait.
        if let Err(BackupError::VmBusy { vm, holder }) = &setup
            && members.is_empty()
            && busy.waited < ctx.request.busy_vm_wait
        {
            ctx.vm_locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
            let pause = busy.next_pause();
            (ctx.observer)(&BackupEvent::Waiting {
                vm: vm.clone(),
                holder: holder.clone(),
                reason: format!("{holder} is working on it now"),
                retry_in_secs: pause.as_secs(),
            });
            tracing::info!(vm = %vm, holder = %holder, "the job waits for another job's VM");
            drop(repo_lock.take());
            // Nothing to do meanwhile: another job may run in this one's place.
            let slot = ctx.request.slot.as_deref();
            if let Some(slot) = slot {
                slot.step_out();
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {
                    if let Err(e) = step_in(slot, &ctx.cancel).await {
                        break Err(e);
                    }
                    repo_lock.replace(lock_repo().await??);
                    continue;
                }
                () = ctx.cancel.cancelled() => break Err(BackupError::Cancelled),
            }
        }
        break setup;
    };
    let (skew_ms, snapshots) = match setup {
        Ok(v) => v,
        Err(e) => {
            for m in &members {
                let _ = clean_up(&ctx, &m.info.moref, &m.effects, false).await;
            }
            return Err(e);
        }
    };
    // Reported once the set-up is over: an attempt that waited for a busy VM may have
    // met the same failures before.
    for r in &failed {
        say_left_for_reconcile(&ctx, r);
        (ctx.observer)(&BackupEvent::VmFailed {
            vm: r.vm.clone(),
            name: r.name.clone(),
            error: r.error.clone().unwrap_or_default(),
        });
    }
    let _ = ctx.job_vms.set(
        members
            .iter()
            .map(|m| {
                let ns =
                    vmservice::lookup(&m.info.extra_config, vmservice::Content::NamespacedName)
                        .and_then(|(_, v)| v.split_once('/'))
                        .map(|(ns, _)| ns.to_owned());
                (ns, m.info.name.clone())
            })
            .collect(),
    );

    // Phase 2: one task per VM; a panic inside one is a JoinError here.
    let mut tasks = Vec::new();
    for (m, snapshot) in members.iter().zip(snapshots) {
        let ctx = Arc::clone(&ctx);
        let info = m.info.clone();
        let request = m.request.clone();
        let cbt_now = m.cbt_enabled_now;
        let effects = Arc::clone(&m.effects);
        tasks.push(tokio::spawn(async move {
            back_up_vm(&ctx, info, request, cbt_now, snapshot, effects).await
        }));
    }
    let mut reports = failed;
    for (m, task) in members.iter().zip(tasks) {
        // A VM's failure was reported by its task as it happened (not after the VMs
        // before it in the list); a task that panicked is reported here.
        let mut report = match task.await {
            Ok(r) => r,
            Err(e) => {
                let error = format!("backup task failed: {e}");
                (ctx.observer)(&BackupEvent::VmFailed {
                    vm: m.info.moref.clone(),
                    name: m.info.name.clone(),
                    error: error.clone(),
                });
                failed_report(&m.info.moref, &m.info.name, error)
            }
        };
        // Phase 3: whatever the task left, tried again. What this attempt reports is what
        // is left now (an effect the task's own clean-up failed to undo and this one undid
        // is no work for reconcile).
        report.cleanup_errors = clean_up(&ctx, &m.info.moref, &m.effects, false).await;
        say_left_for_reconcile(&ctx, &report);
        reports.push(report);
    }
    {
        let warnings = ctx
            .warnings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in &mut reports {
            r.warnings = warnings
                .iter()
                .filter(|(vm, _)| *vm == r.vm)
                .map(|(_, m)| m.clone())
                .collect();
        }
    }
    let succeeded = reports.iter().all(|r| r.error.is_none());
    let warnings = reports
        .iter()
        .flat_map(|r| {
            r.cleanup_errors
                .iter()
                .map(move |e| format!("{}: {e}", r.name))
        })
        .collect();
    Ok(BackupReport {
        job,
        group: ctx.request.group.clone(),
        succeeded,
        warnings,
        skew_ms: Some(skew_ms),
        seconds: started.elapsed().as_secs_f64(),
        vms: reports,
    })
}

/// A `warning` event for each side effect of the VM of `report` its clean-up could not
/// undo (left journalled for reconcile).
fn say_left_for_reconcile(ctx: &JobCtx, report: &VmReport) {
    for e in &report.cleanup_errors {
        (ctx.observer)(&BackupEvent::Warning {
            vm: report.vm.clone(),
            name: report.name.clone(),
            message: format!("clean-up left work for reconcile: {e}"),
        });
    }
}

/// The VMs that failed in a job, from the job's statistics (its other VMs' points do not
/// have their companions from that job). None for an independent job: its points stand
/// alone, and no VM of it is another's companion.
#[must_use]
pub fn failed_members(job_stats: &serde_json::Value) -> Vec<String> {
    if job_stats.get("independent") == Some(&serde_json::Value::Bool(true)) {
        return Vec::new();
    }
    job_stats
        .get("vms")
        .and_then(serde_json::Value::as_array)
        .map(|vms| {
            vms.iter()
                .filter(|v| v.get("error").is_some_and(|e| !e.is_null()))
                .filter_map(|v| v.get("name").and_then(serde_json::Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn failed_report(vm: &VmMoref, name: &str, error: String) -> VmReport {
    VmReport {
        vm: vm.clone(),
        name: name.to_owned(),
        point: None,
        kind: None,
        reason: String::new(),
        snapshot: None,
        disks: Vec::new(),
        validation: None,
        vmx_bytes: 0,
        nvram_bytes: None,
        related: Vec::new(),
        quiesced: None,
        warnings: Vec::new(),
        error: Some(error),
        cleanup_errors: Vec::new(),
        seconds: 0.0,
    }
}

/// Whether a snapshot leaves `disk` unfrozen (`independent_persistent`,
/// `independent_nonpersistent`).
fn is_independent(disk: &VirtualDiskInfo) -> bool {
    disk.disk_mode
        .as_deref()
        .is_some_and(|m| m.starts_with("independent"))
}

/// Why a backup of `info` now would read a disk its snapshot does not freeze: an
/// independent disk (VSPHERE.md §A.7) of a VM that is not powered off, whose guest may be
/// writing it while it is read. Such a point would look complete and hold a torn disk, so
/// the VM is refused instead, naming the disk. A powered-off VM's independent disks do not
/// change and are backed up.
fn unfrozen_disk(info: &VmInfo) -> Option<String> {
    if info.power_state == Some(crate::vsphere::PowerState::PoweredOff) {
        return None;
    }
    let d = info.disks.iter().find(|d| is_independent(d))?;
    Some(format!(
        "disk {} ({}, {}) is attached {}: a snapshot does not freeze an independent disk, so \
         its backup would be read while the guest writes it. Power the VM off for its backup, \
         or attach the disk as persistent",
        d.key,
        d.label,
        d.file_name,
        d.disk_mode.as_deref().unwrap_or_default()
    ))
}

/// Whether `e`, met while setting one VM up, concerns that VM alone: in an independent
/// job the others go on. A cancel, the catalog or the repository failing ends any job.
fn fails_alone(ctx: &JobCtx, e: &BackupError) -> bool {
    ctx.request.independent
        && matches!(
            e,
            BackupError::Vsphere { .. }
                | BackupError::Datastore { .. }
                | BackupError::Vddk { .. }
                | BackupError::Refused { .. }
                | BackupError::VmBusy { .. }
        )
}

/// In an independent job `vm` fails alone: its report is kept for the job's, and its lock
/// is let go unless its clean-up left work (`cleanup_errors`) for the job's own. In a
/// consistency group, or for an error that is not the VM's alone, `e` is returned: it ends
/// the job.
fn fail_alone(
    ctx: &JobCtx,
    failed: &mut Vec<VmReport>,
    (vm, name): (&VmMoref, &str),
    e: BackupError,
    cleanup_errors: Vec<String>,
) -> Result<(), BackupError> {
    if !fails_alone(ctx, &e) {
        return Err(e);
    }
    if cleanup_errors.is_empty() {
        ctx.vm_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(m, _)| m != vm);
    }
    let error = error_chain(&e);
    tracing::warn!(vm = %vm, name, error = %error, "the VM fails alone; the job's other VMs go on");
    failed.push(VmReport {
        cleanup_errors,
        ..failed_report(vm, name, error)
    });
    Ok(())
}

/// Phase 1. Members are pushed as soon as they hold a side effect, so the caller can undo.
/// In an independent job a VM that fails here is undone at once and reported in `failed`
/// (`give_up_busy`: also a VM another job holds, after the job's wait for it).
async fn set_up(
    ctx: &Arc<JobCtx>,
    members: &mut Vec<Member>,
    failed: &mut Vec<VmReport>,
    give_up_busy: bool,
) -> Result<(u64, Vec<SnapshotMoref>), BackupError> {
    let env = &ctx.env;
    if ctx.request.vms.is_empty() {
        return Err(BackupError::Refused {
            vm: "(none)".into(),
            reason: "no VM given".into(),
        });
    }
    // Resolve and check every VM before changing anything.
    let mut resolved: Vec<(VmRequest, VmInfo)> = Vec::new();
    let mut seen = HashSet::new();
    for r in &ctx.request.vms {
        let as_given = r.selector.to_string();
        let moref = match resolve(env, &r.selector).await {
            Ok(m) => m,
            // Not found: the VM as given, and its name (by which retention still holds the
            // points of a VM that failed).
            Err(e) => {
                let vm = VmMoref::from(as_given.as_str());
                let name = match &r.selector {
                    VmSelector::Namespaced { name, .. } => name.as_str(),
                    VmSelector::Moref(_) => as_given.as_str(),
                };
                fail_alone(ctx, failed, (&vm, name), e, Vec::new())?;
                continue;
            }
        };
        if !seen.insert(moref.clone()) {
            return Err(BackupError::Refused {
                vm: r.selector.to_string(),
                reason: format!("{moref} is listed twice in the job"),
            });
        }
        // The lock first, then the VM's state: read before it, the state could show the
        // snapshot of a job that removed it and ended meanwhile.
        let (root, vcenter, vm, name, job) = (
            env.repo.root().to_path_buf(),
            ctx.vcenter_uuid.clone(),
            moref.clone(),
            r.selector.to_string(),
            ctx.job,
        );
        let vm_lock =
            match blocking(move || VmLock::acquire(&root, &vcenter, &vm, &name, job, "backup"))
                .await?
            {
                Ok(l) => l,
                Err(e @ BackupError::VmBusy { .. }) if give_up_busy => {
                    fail_alone(ctx, failed, (&moref, &as_given), e, Vec::new())?;
                    continue;
                }
                Err(e) => return Err(e),
            };
        ctx.vm_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((moref.clone(), vm_lock));
        let read_info = || async {
            env.soap
                .vm_info(&moref)
                .await
                .map_err(|source| BackupError::Vsphere {
                    what: format!("reading VM {} ({moref})", r.selector),
                    source,
                })
        };
        let mut info = match read_info().await {
            Ok(info) => info,
            Err(e) => {
                fail_alone(ctx, failed, (&moref, &as_given), e, Vec::new())?;
                continue;
            }
        };
        let leftover = |info: &VmInfo| {
            info.all_snapshots()
                .into_iter()
                .find_map(|s| journal::snapshot_job(&s.description).map(|job| (s.clone(), job)))
        };
        // A snapshot an ended job of ours left (its journal entry closed: a removal whose
        // answer was lost, a clean-up that ran out of time) is removed now, as `reconcile
        // --vm` would, rather than refusing the VM at every run until someone does.
        let mut not_removed = None;
        // The state of the leftover's job, once asked (a probe of its lock takes the lock
        // for a moment: asked once per snapshot).
        let mut asked = None;
        if let Some((s, job)) = leftover(&info) {
            let state = job_state(env, job).await?;
            asked = Some((s.snapshot.clone(), state));
            // Ours, and its job ended (otherwise refused below, saying which).
            if state == (true, false) {
                let r = super::reconcile::reconcile_in(env, std::slice::from_ref(&moref), false)
                    .await?;
                if r.snapshots_removed.iter().any(|(_, sn)| *sn == s.snapshot) {
                    warn_vm(
                        ctx,
                        (&moref, &info.name),
                        format!(
                            "removed snapshot {} ({:?}) that earlier backup job {job} left",
                            s.snapshot, s.name
                        ),
                    );
                    info = match read_info().await {
                        Ok(info) => info,
                        Err(e) => {
                            fail_alone(ctx, failed, (&moref, &as_given), e, Vec::new())?;
                            continue;
                        }
                    };
                } else {
                    not_removed = Some(r.errors.join("; "));
                }
            }
        }
        let refused = if let Some((s, job)) = leftover(&info) {
            let (ours, running) = match asked {
                Some((snapshot, state)) if snapshot == s.snapshot => state,
                _ => job_state(env, job).await?,
            };
            let reason = if !ours {
                format!(
                    "it carries snapshot {} ({:?}) of job {job}, which this repository has no \
                     record of: another repository's or agent's backup, maybe running now; \
                     when it has ended, run `vadp-agent reconcile --vm {moref}` with that \
                     repository, or here with `--unknown-jobs`",
                    s.snapshot, s.name
                )
            } else if running {
                format!(
                    "job {job} is backing it up now, or a reconcile is cleaning up after it \
                     (snapshot {}); a VM is not backed up by two jobs at once: try again when \
                     that job has ended",
                    s.snapshot
                )
            } else {
                format!(
                    "it still carries snapshot {} ({:?}) left by an earlier backup, which \
                     could not be removed now ({}); run `vadp-agent reconcile --vm {moref}` \
                     once vCenter allows it",
                    s.snapshot,
                    s.name,
                    not_removed.as_deref().unwrap_or("it stayed")
                )
            };
            Some(reason)
        } else if info.disks.is_empty() {
            Some("it has no virtual disk".into())
        } else {
            unfrozen_disk(&info)
        };
        if let Some(reason) = refused {
            let e = BackupError::Refused {
                vm: format!("{} ({moref})", info.name),
                reason,
            };
            fail_alone(ctx, failed, (&moref, &info.name), e, Vec::new())?;
            continue;
        }
        resolved.push((r.clone(), info));
    }
    if resolved.is_empty() {
        // An independent job whose every VM failed alone.
        return Ok((0, Vec::new()));
    }
    // Inside a blackout window before any change (CBT, PrepareForAccess): the wait then
    // disables nothing on the VMs. Asked again just before the snapshots, should the
    // set-up have reached a window.
    wait_for_gate(ctx).await?;
    for (request, mut info) in resolved {
        check_cancel(ctx)?;
        let mut cbt_enabled_now = false;
        let snapshots = info.all_snapshots().len();
        if !info.change_tracking_enabled && snapshots > 0 {
            // VMware does not support enabling change tracking while a VM has snapshots
            // (KB 1020128), and since vSphere 6.5 QueryChangedDiskAreas no longer fails on
            // the tracking data that makes: incrementals could then miss changes. It stays
            // off, and each backup is full (its disks record no changeId), until the
            // snapshots are gone.
            warn_vm(
                ctx,
                (&info.moref, &info.name),
                format!(
                    "change tracking is off and the VM has {snapshots} snapshot(s): VMware \
                     does not support enabling it then (its incrementals could miss \
                     changes), so it stays off and this backup is full; delete or \
                     consolidate the snapshots to have it enabled at the next backup"
                ),
            );
        } else if !info.change_tracking_enabled {
            let enabled = match enable_cbt(env, ctx, &info).await {
                Ok(()) => {
                    (ctx.observer)(&BackupEvent::CbtEnabled {
                        vm: info.moref.clone(),
                        name: info.name.clone(),
                    });
                    env.soap
                        .vm_info(&info.moref)
                        .await
                        .map_err(|source| BackupError::Vsphere {
                            what: format!("re-reading VM {}", info.moref),
                            source,
                        })
                }
                Err(e) => Err(e),
            };
            match enabled {
                Ok(now) => {
                    info = now;
                    cbt_enabled_now = true;
                }
                Err(e) if fails_alone(ctx, &e) => {
                    // The cycle's snapshot not removed, or its consolidation not done:
                    // journalled for reconcile, and the VM kept locked until the job ends.
                    let left = still_journalled(ctx, &info.moref).await?;
                    fail_alone(ctx, failed, (&info.moref, &info.name), e, left)?;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        members.push(Member {
            request,
            info,
            cbt_enabled_now,
            effects: Arc::new(Mutex::new(Effects::default())),
        });
    }
    if ctx.request.prepare_access {
        let mut i = 0;
        while i < members.len() {
            check_cancel(ctx)?;
            let m = &members[i];
            let vm = &m.info.moref;
            let id = journal::open(
                env,
                JournalKind::PrepareAccess,
                vm,
                json!({ "job": ctx.job, "identity": ctx.identity }),
            )
            .await?;
            lock(&m.effects).access = Some(id);
            let vddk = env.vddk.clone();
            let spec = env.vddk_target.spec(vm, None, true);
            let identity = ctx.identity.clone();
            let prepared = blocking(move || vddk.prepare_for_access(&spec, &identity))
                .await?
                .map_err(|source| BackupError::Vddk {
                    what: format!("PrepareForAccess for {} ({vm})", m.info.name),
                    source,
                });
            match prepared {
                Ok(()) => {
                    crash_point("after-prepare-access");
                    i += 1;
                }
                Err(e) if fails_alone(ctx, &e) => {
                    let m = members.remove(i);
                    let left = clean_up(ctx, &m.info.moref, &m.effects, false).await;
                    fail_alone(ctx, failed, (&m.info.moref, &m.info.name), e, left)?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    check_cancel(ctx)?;
    wait_for_gate(ctx).await?;
    // Journal every intent first, then start the snapshots together.
    let description = journal::snapshot_description(ctx.job);
    for m in members.iter() {
        let effect = journal_snapshot_intent(env, ctx, &m.info.moref, &ctx.snapshot_name).await?;
        lock(&m.effects).snapshot = Some(effect);
    }
    crash_point("before-snapshot");
    let t0 = Instant::now();
    let _ = ctx
        .snapshot_at
        .set(crate::repo::now_secs().saturating_add(ctx.clock_offset_secs));
    let creates = members.iter().map(|m| {
        let request = CreateSnapshot {
            quiesce: m.request.quiesce,
            ..CreateSnapshot::backup(&ctx.snapshot_name, &description)
        };
        let soap = env.soap.clone();
        let vm = m.info.moref.clone();
        async move {
            let r = soap
                .create_snapshot(&vm, &request, |_| crash_point("snapshot-task-running"))
                .await;
            (r, t0.elapsed())
        }
    });
    let results = futures_util::future::join_all(creates).await;
    let mut first_error = None;
    let mut snapshots = Vec::new();
    let mut done_ms = Vec::new();
    // The members (by index) of an independent job whose snapshot failed.
    let mut lost = Vec::new();
    for (i, (m, (result, elapsed))) in members.iter().zip(results).enumerate() {
        match result {
            Ok(snapshot) => {
                crash_point("snapshot-unrecorded");
                let effect = {
                    let mut e = lock(&m.effects);
                    let s = e.snapshot.as_mut().expect("journalled above");
                    s.moref = Some(snapshot.clone());
                    s.clone()
                };
                if let Some(id) = effect.journal {
                    journal::update(env, id, effect.detail(&ctx.snapshot_name)).await?;
                }
                let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
                done_ms.push(ms);
                (ctx.observer)(&BackupEvent::SnapshotCreated {
                    vm: m.info.moref.clone(),
                    name: m.info.name.clone(),
                    snapshot: snapshot.clone(),
                    completed_ms: ms,
                });
                snapshots.push(snapshot);
            }
            Err(source) if ctx.request.independent => lost.push((
                i,
                BackupError::Vsphere {
                    what: format!("snapshot of {} ({}) failed", m.info.name, m.info.moref),
                    source,
                },
            )),
            Err(source) => {
                first_error.get_or_insert(BackupError::Vsphere {
                    what: format!(
                        "snapshot of {} ({}) failed, so the group has no common point in time",
                        m.info.name, m.info.moref
                    ),
                    source,
                });
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // From the last, so that the indexes stay right; `snapshots` holds the others'.
    let mut gone = Vec::new();
    for (i, e) in lost.into_iter().rev() {
        gone.push((members.remove(i), e));
    }
    // Undone together (each may wait for its snapshot task): the others' snapshots are
    // held meanwhile. A snapshot may exist all the same (a task whose answer was lost):
    // found by the job's description, as reconcile would.
    let left = futures_util::future::join_all(
        gone.iter()
            .map(|(m, _)| clean_up(ctx, &m.info.moref, &m.effects, false)),
    )
    .await;
    for ((m, e), left) in gone.into_iter().rev().zip(left.into_iter().rev()) {
        fail_alone(ctx, failed, (&m.info.moref, &m.info.name), e, left)?;
    }
    crash_point("after-snapshot");
    let skew =
        done_ms.iter().max().copied().unwrap_or(0) - done_ms.iter().min().copied().unwrap_or(0);
    Ok((skew, snapshots))
}

fn lock(m: &Mutex<Effects>) -> std::sync::MutexGuard<'_, Effects> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The VM's NVRAM file: the `.vmx`'s `nvram` entry, a file name in the `.vmx`'s directory
/// (default `<vmx name>.nvram`). `None` when the VM has none (404: never powered on, or
/// BIOS firmware), or names one elsewhere (an absolute path, which the restore could not
/// place next to the `.vmx`).
async fn download_nvram(
    env: &Environment,
    vmx: &DatastorePath,
    entries: &[(String, String)],
) -> Result<Option<Vec<u8>>, crate::vsphere::DatastoreError> {
    let Some(path) = nvram_path(vmx, entries) else {
        return Ok(None);
    };
    match env
        .soap
        .download_small(&path, crate::repo::point_config::MAX_FILE_KEPT_BYTES)
        .await
    {
        Ok(bytes) => Ok(Some(bytes)),
        Err(crate::vsphere::DatastoreError::Http { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where the `.vmx` at `vmx` with `entries` keeps its NVRAM file (see [`download_nvram`]).
pub(crate) fn nvram_path(
    vmx: &DatastorePath,
    entries: &[(String, String)],
) -> Option<DatastorePath> {
    let name = match entries
        .iter()
        .rev()
        .find(|(k, _)| k.eq_ignore_ascii_case("nvram"))
    {
        Some((_, v)) => v.clone(),
        None => {
            let file = vmx.path.rsplit('/').next().unwrap_or_default();
            format!("{}.nvram", file.strip_suffix(".vmx").unwrap_or(file))
        }
    };
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return None;
    }
    let path = match vmx.path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{name}"),
        None => name,
    };
    Some(DatastorePath {
        path,
        ..vmx.clone()
    })
}

/// Longest sleep between two questions to a [`SnapshotGate`] (a window's end can move when
/// the clock is corrected).
const GATE_RECHECK: Duration = Duration::from_secs(60);

/// Waits out the request's snapshot gate, if it has one ([`wait_for_snapshot_gate`]).
async fn wait_for_gate(ctx: &JobCtx) -> Result<(), BackupError> {
    match &ctx.request.snapshot_gate {
        Some(gate) => {
            wait_for_snapshot_gate(
                gate,
                ctx.request.slot.as_deref(),
                &ctx.cancel,
                &ctx.observer,
            )
            .await
        }
        None => Ok(()),
    }
}

/// Waits while `gate` says no snapshot may be taken, announcing each new end once, out of
/// `slot` meanwhile. Back in its slot (which may take a while), the job asks the gate
/// again: another window may have begun meanwhile.
async fn wait_for_snapshot_gate(
    gate: &SnapshotGate,
    slot: Option<&dyn Slot>,
    cancel: &CancellationToken,
    observer: &Observer,
) -> Result<(), BackupError> {
    let mut announced: Option<jiff::Zoned> = None;
    let mut away = false;
    loop {
        let Some(end) = (gate.0)() else {
            if !away {
                return Ok(());
            }
            step_in(slot, cancel).await?;
            away = false;
            continue;
        };
        if !away && let Some(slot) = slot {
            slot.step_out();
            away = true;
        }
        if announced.as_ref() != Some(&end) {
            tracing::info!(until = %end, "the snapshots wait for the end of a blackout window");
            observer(&BackupEvent::SnapshotsDeferred {
                until: end.to_string(),
            });
            announced = Some(end.clone());
        }
        let left = jiff::Zoned::now()
            .duration_until(&end)
            .unsigned_abs()
            .min(GATE_RECHECK)
            .max(Duration::from_millis(100));
        tokio::select! {
            () = cancel.cancelled() => return Err(BackupError::Cancelled),
            () = tokio::time::sleep(left) => {}
        }
    }
}

fn check_cancel(ctx: &JobCtx) -> Result<(), BackupError> {
    if ctx.cancel.is_cancelled() {
        Err(BackupError::Cancelled)
    } else {
        Ok(())
    }
}

/// A warning about one VM: logged, sent as a `warning` event, and kept for the VM's
/// report (`VmReport::warnings`), so that a run nobody watches (the timer's, the daemon's)
/// still says it.
fn warn_vm(ctx: &JobCtx, (vm, name): (&VmMoref, &str), message: String) {
    tracing::warn!(vm = %vm, name, "{message}");
    ctx.warnings
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((vm.clone(), message.clone()));
    (ctx.observer)(&BackupEvent::Warning {
        vm: vm.clone(),
        name: name.to_owned(),
        message,
    });
}

/// Whether the job that made a snapshot of ours is this repository's (`.0`) and running
/// now (`.1`: marked so and its lock held; reconcile then, rightly, leaves its snapshot
/// alone). The lock is probed only for a job the catalog calls running: a probe takes it
/// for a moment, and a reconcile meeting it then takes a dead job for a live one.
async fn job_state(env: &Environment, job: JobId) -> Result<(bool, bool), BackupError> {
    let catalog = env.repo.catalog().clone();
    let marked = blocking(move || catalog.running_jobs())
        .await?
        .map_err(BackupError::Catalog)?
        .contains(&job);
    let root = env.repo.root().to_path_buf();
    let running = marked
        && matches!(
            blocking(move || JobLock::acquire(&root, job)).await?,
            Err(crate::repo::ChunkStoreError::Busy { .. })
        );
    let catalog = env.repo.catalog().clone();
    let ours = blocking(move || catalog.job_known(job))
        .await?
        .map_err(BackupError::Catalog)?;
    Ok((ours, running))
}

/// What this job still has journalled for `vm` (side effects its clean-up could not undo,
/// left for reconcile), as problems for the VM's report.
async fn still_journalled(ctx: &JobCtx, vm: &VmMoref) -> Result<Vec<String>, BackupError> {
    let catalog = ctx.env.repo.catalog().clone();
    let entries = blocking(move || catalog.journal_open_entries())
        .await?
        .map_err(BackupError::Catalog)?;
    let job = ctx.job.to_string();
    Ok(entries
        .into_iter()
        .filter(|e| {
            e.vm == *vm && e.detail.get("job").and_then(serde_json::Value::as_str) == Some(&job)
        })
        .map(|e| {
            format!(
                "{} of {vm} not undone (left for `vadp-agent reconcile`)",
                e.kind
            )
        })
        .collect())
}

async fn resolve(env: &Environment, selector: &VmSelector) -> Result<VmMoref, BackupError> {
    match selector {
        VmSelector::Moref(m) => Ok(m.clone()),
        VmSelector::Namespaced { namespace, name } => {
            let folder = env
                .soap
                .find_namespace_folder(namespace)
                .await
                .map_err(|source| BackupError::Vsphere {
                    what: format!("finding the folder of namespace {namespace}"),
                    source,
                })?;
            env.soap
                .find_vm_in_folder(&folder, name)
                .await
                .map_err(|source| BackupError::Vsphere {
                    what: format!("finding VM {name} in namespace {namespace}"),
                    source,
                })
        }
    }
}

/// Undoes what `vm` still holds in `effects`: the snapshot first, then EndAccess
/// (VMware's order; tried again after a failure with `retry_end_access`). Returns the
/// problems; an effect that could not be undone stays journalled.
async fn clean_up(
    ctx: &JobCtx,
    vm: &VmMoref,
    effects: &Mutex<Effects>,
    retry_end_access: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let snapshot = lock(effects).snapshot.clone();
    if let Some(effect) = snapshot {
        // Tried again for two minutes unless the job was cancelled (a shutdown is not
        // held up; reconcile removes it then).
        match journal::remove_snapshot(&ctx.env, vm, &effect, !ctx.cancel.is_cancelled()).await {
            Ok(_) => lock(effects).snapshot = None,
            Err(e) => problems.push(format!(
                "snapshot of {vm} not removed (left for `vadp-agent reconcile`): {}",
                error_chain(&e)
            )),
        }
    }
    let access = lock(effects).access;
    if let Some(journal_id) = access {
        match journal::end_access(&ctx.env, vm, &ctx.identity, journal_id, retry_end_access).await {
            Ok(()) => lock(effects).access = None,
            Err(e) => problems.push(format!(
                "EndAccess for {vm} failed (left for `vadp-agent reconcile`): {}",
                error_chain(&e)
            )),
        }
    }
    for p in &problems {
        tracing::error!(vm = %vm, "{p}");
    }
    problems
}

/// How one disk will be read.
#[derive(Debug)]
enum Plan {
    Full {
        allocated: Option<Vec<Extent>>,
        reason: String,
    },
    Incremental {
        parent: Box<PointRecord>,
        changed: Vec<Extent>,
        reason: String,
    },
}

/// Phase 2 for one VM. Never panics on purpose; returns a report with `error` set on failure.
async fn back_up_vm(
    ctx: &Arc<JobCtx>,
    info: VmInfo,
    request: VmRequest,
    cbt_enabled_now: bool,
    snapshot: SnapshotMoref,
    effects: Arc<Mutex<Effects>>,
) -> VmReport {
    let started = Instant::now();
    let mut report = failed_report(&info.moref, &info.name, String::new());
    report.error = None;
    report.snapshot = Some(snapshot.clone());
    if let Err(e) = back_up_vm_inner(
        ctx,
        &info,
        &request,
        cbt_enabled_now,
        &snapshot,
        &mut report,
    )
    .await
    {
        report.error = Some(error_chain(&e));
    }
    report.seconds = started.elapsed().as_secs_f64();
    // Undo now rather than after the slowest VM of the group.
    // EndAccess tried again unless the job was cancelled (a shutdown waits for it).
    report.cleanup_errors = clean_up(ctx, &info.moref, &effects, !ctx.cancel.is_cancelled()).await;
    if let Some(e) = &report.error {
        (ctx.observer)(&BackupEvent::VmFailed {
            vm: info.moref.clone(),
            name: info.name.clone(),
            error: e.clone(),
        });
    }
    report
}

#[allow(clippy::too_many_lines)] // one VM's backup, step by step
async fn back_up_vm_inner(
    ctx: &Arc<JobCtx>,
    info: &VmInfo,
    request: &VmRequest,
    cbt_enabled_now: bool,
    snapshot: &SnapshotMoref,
    report: &mut VmReport,
) -> Result<(), BackupError> {
    let env = &ctx.env;
    let vm = &info.moref;
    let who = format!("{} ({vm})", info.name);
    let started = Instant::now();
    // Chosen before the data is written: index files live under it.
    let point = RestorePointId::new_random();
    // The VMX, byte for byte, with its ExtraConfig.
    let vmx_path = info
        .vmx_path
        .as_deref()
        .ok_or_else(|| BackupError::Refused {
            vm: who.clone(),
            reason: "vCenter reports no VMX path (config.files.vmPathName)".into(),
        })?;
    let ds_path = DatastorePath::parse(&ctx.datacenter, vmx_path).map_err(|source| {
        BackupError::Datastore {
            what: format!("VMX path of {who}"),
            source,
        }
    })?;
    let vmx_bytes = env
        .soap
        .download_small(&ds_path, crate::repo::point_config::MAX_FILE_KEPT_BYTES)
        .await
        .map_err(|source| BackupError::Datastore {
            what: format!("downloading the VMX of {who} ({vmx_path})"),
            source,
        })?;
    report.vmx_bytes = vmx_bytes.len();
    let vmx_entries = vmx::parse(&vmx_bytes).map_err(|e| BackupError::Refused {
        vm: who.clone(),
        reason: format!("{vmx_path}: {e}"),
    })?;
    // The NVRAM file next to it: a VM restored without it boots with empty EFI variables
    // (its boot entries and Secure Boot keys gone) and a vTPM's state lost. A VM that has
    // none yet (never powered on) keeps none; one that cannot be read is a warning, not a
    // failure (the disks and the `.vmx` are what the restore cannot do without).
    let nvram = match download_nvram(env, &ds_path, &vmx_entries).await {
        Ok(n) => n,
        Err(e) => {
            let message = format!(
                "the NVRAM file was not kept ({}): a restore to a new VM starts with empty \
                 EFI variables",
                crate::engine::error_chain(&e)
            );
            warn_vm(ctx, (vm, &info.name), message);
            None
        }
    };
    report.nvram_bytes = nvram.as_ref().map(Vec::len);
    // Read now, at the job's start for every VM (the VMs' tasks start together), rather
    // than after the disks: the group and services as they were at the snapshots, and a
    // Supervisor session as fresh as the job.
    let related = related_objects(ctx, info, vmservice::decode(&vmx_entries).as_ref()).await;
    let related_names: Vec<String> = related.iter().map(vmservice::related::describe).collect();
    // The snapshot's own disks: the frozen files and the changeIds of this point.
    let disks = env
        .soap
        .snapshot_disks(snapshot)
        .await
        .map_err(|source| BackupError::Vsphere {
            what: format!("reading the disks of snapshot {snapshot} of {who}"),
            source,
        })?;
    if disks.is_empty() {
        return Err(BackupError::Refused {
            vm: who,
            reason: format!("snapshot {snapshot} lists no disk"),
        });
    }
    let folder = vm_folder(ctx, info).await;
    let folder_name = folder.as_ref().map(|f| f.name.clone());
    let captured = |is_captured: &dyn Fn(DiskKey) -> bool| -> Vec<CapturedDisk> {
        disks
            .iter()
            .map(|d| CapturedDisk {
                key: d.key.0,
                label: d.label.clone(),
                file_name: live_file_name(info, d),
                uuid: d.uuid.clone(),
                fcd: d.vdisk_id.is_some(),
                captured: is_captured(d.key),
            })
            .collect()
    };
    // Fail before reading any data when the VM could never be restored as asked.
    if ctx.request.require_vmservice {
        let pre =
            vmservice::validate_backup(&vmx_entries, folder_name.as_deref(), &captured(&|_| true));
        if pre.status != ValidationStatus::Valid {
            return Err(BackupError::Refused {
                vm: who,
                reason: format!(
                    "--require-vmservice: not restorable as a VM Service VM: {}",
                    describe(&pre)
                ),
            });
        }
    }
    // vSphere ignores the quiesce flag when VMware Tools is not running (or the VM is off):
    // the snapshot says what it got, and the point is recorded as that.
    // Not knowing is no reason to lose the backup: it is recorded as not quiesced (the
    // claim we can stand behind) and said so.
    let quiesced = if request.quiesce {
        let (quiesced, why_not) = match env.soap.vm_info(vm).await {
            Ok(now) => {
                let q = now
                    .all_snapshots()
                    .iter()
                    .any(|s| &s.snapshot == snapshot && s.quiesced);
                (
                    q,
                    format!(
                        "quiescing was asked for, but vCenter made snapshot {snapshot} without \
                         it (VMware Tools not running, or the VM powered off): this point is \
                         crash-consistent"
                    ),
                )
            }
            Err(e) => (
                false,
                format!(
                    "quiescing was asked for, but whether snapshot {snapshot} got it could not \
                     be read ({e}): this point is recorded as crash-consistent"
                ),
            ),
        };
        if !quiesced {
            warn_vm(ctx, (vm, &info.name), why_not);
        }
        quiesced
    } else {
        false
    };
    report.quiesced = request.quiesce.then_some(quiesced);
    let previous = previous_point(ctx, info).await?;
    let restored_in_place = restored_in_place_since(ctx, info, previous.as_ref()).await?;
    // Plan every disk, then read them in parallel within the limits. Each disk's read opens
    // its own VDDK connection once it has its permits (see `read_disk`): a connection is a
    // vCenter session, so a job holds no more than the disks it reads at once, however
    // many VMs it backs up.
    let read_all = async {
        let mut reads = Vec::new();
        for d in &disks {
            check_cancel(ctx)?;
            let plan = plan_disk(
                ctx,
                info,
                snapshot,
                d,
                previous.as_ref(),
                cbt_enabled_now,
                restored_in_place,
            )
            .await?;
            let datastore = DatastorePath::parse(&ctx.datacenter, &d.file_name)
                .ok()
                .map(|p| p.datastore);
            let host = info.host.as_ref().map(|h| h.value.clone());
            let ctx = Arc::clone(ctx);
            let disk = d.clone();
            let vm = vm.clone();
            let name = info.name.clone();
            let snapshot = snapshot.clone();
            reads.push(async move {
                let _permits = ctx.gate.enter(host.as_deref(), datastore.as_deref()).await;
                check_cancel(&ctx)?;
                read_disk(ctx, vm, name, snapshot, disk, plan, point).await
            });
        }
        Ok::<_, BackupError>(futures_util::future::join_all(reads).await)
    };
    let results = read_all.await?;
    let mut written = Vec::new();
    let mut first_error = None;
    for r in results {
        match r {
            Ok(w) => written.push(w),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // Validation with what was captured.
    let validation = vmservice::validate_backup(
        &vmx_entries,
        folder_name.as_deref(),
        &captured(&|key| written.iter().any(|(d, _, _)| d.key == key)),
    );
    if validation.status == ValidationStatus::Warning {
        let message = format!(
            "not restorable as a VM Service VM as it stands: {}",
            describe(&validation)
        );
        if ctx.request.require_vmservice {
            return Err(BackupError::Refused {
                vm: who,
                reason: format!("--require-vmservice: {message}"),
            });
        }
        warn_vm(ctx, (vm, &info.name), message);
    }
    let roles: BTreeMap<i32, DiskRole> = validation.roles.iter().copied().collect();
    check_cancel(ctx)?;
    // A snapshot does not freeze an independent disk, which was backed up only because the
    // VM was off at set-up: a VM powered on since may have written it while it was read.
    if info.disks.iter().any(is_independent) {
        let now = env
            .soap
            .vm_info(&info.moref)
            .await
            .map_err(|source| BackupError::Vsphere {
                what: format!("reading the power state of {} ({})", info.name, info.moref),
                source,
            })?;
        if now.power_state != Some(crate::vsphere::PowerState::PoweredOff) {
            return Err(BackupError::Refused {
                vm: format!("{} ({})", info.name, info.moref),
                reason: "it was powered on while its independent disk was read (a snapshot \
                         does not freeze one, so the guest may have written it meanwhile); \
                         no restore point was committed: back it up again powered off"
                    .into(),
            });
        }
    }
    // Commit: one transaction makes the point visible.
    let any_incremental = written
        .iter()
        .any(|(_, w, _)| w.kind == PointKind::Incremental);
    let kind = if any_incremental {
        PointKind::Incremental
    } else {
        PointKind::Full
    };
    let reasons: Vec<String> = written
        .iter()
        .map(|(d, _, r)| format!("{}: {}", d.label, r.reason))
        .collect();
    let reason = reasons.join("; ");
    let namespace = validation.data.as_ref().and_then(|d| d.namespace.clone());
    let stats = json!({
        "job": ctx.job,
        "group": ctx.request.group,
        "snapshot": snapshot,
        "seconds": started.elapsed().as_secs_f64(),
        "quiesce_requested": request.quiesce,
        "quiesced": quiesced,
        "disks": written.iter().map(|(_, _, r)| r).collect::<Vec<_>>(),
        "bytes_changed": written.iter().map(|(_, w, _)| w.bytes_changed).sum::<u64>(),
        "bytes_read": written.iter().map(|(_, w, _)| w.stats.bytes_read).sum::<u64>(),
        "bytes_stored": written.iter().map(|(_, w, _)| w.stats.bytes_stored).sum::<u64>(),
        "validation": validation,
        "related": related_names,
        "folder": folder,
    });
    let extra_config = serde_json::Value::Array(
        info.extra_config
            .iter()
            .map(|(k, v)| json!([k, v]))
            .collect(),
    );
    let new_point = NewPoint {
        id: point,
        vm: VmRecord {
            moref: vm.clone(),
            name: info.name.clone(),
            vcenter_uuid: ctx.vcenter_uuid.clone(),
            namespace,
        },
        job: Some(ctx.job),
        parent: if any_incremental {
            previous.as_ref().map(|p| p.id)
        } else {
            None
        },
        created_at: ctx
            .snapshot_at
            .get()
            .copied()
            .unwrap_or_else(|| crate::repo::now_secs().saturating_add(ctx.clock_offset_secs)),
        kind,
        reason: reason.clone(),
        vmx: Some(vmx_bytes),
        extra_config: Some(extra_config),
        nvram,
        related,
        config_digest: None,
        stats,
        disks: written
            .iter()
            .map(|(d, w, _)| DiskRecord {
                key: d.key,
                label: d.label.clone(),
                capacity_bytes: w.capacity_bytes,
                backing_file: live_file_name(info, d),
                disk_uuid: d.uuid.clone(),
                change_id: d.change_id.clone(),
                role: roles.get(&d.key.0).copied().unwrap_or(DiskRole::Classic),
                index_path: w.index_path.clone(),
                bytes_changed: w.bytes_changed,
                bytes_stored: w.stats.bytes_stored,
            })
            .collect(),
    };
    crash_point("before-commit");
    let repo = Arc::clone(&env.repo);
    blocking(move || repo.commit_point(new_point)).await??;
    crash_point("after-commit");
    report.point = Some(point);
    report.kind = Some(kind);
    report.reason = reason;
    report.disks = written.into_iter().map(|(_, _, r)| r).collect();
    report.related = related_names;
    report.validation = Some(validation);
    (ctx.observer)(&BackupEvent::VmFinished {
        vm: vm.clone(),
        name: info.name.clone(),
        point,
        kind,
    });
    Ok(())
}

/// Seed 001 §10.3–§10.4: the VirtualMachineGroup a VM Service VM names and the
/// VirtualMachineServices that select it, read from its namespace on the Supervisor to be
/// kept with its point ("record … before or during backup"), ready to be created again
/// after a restore. None for a VM that is not a VM Service VM, nor when the job reads no
/// Supervisor. Whatever stands in the way is a warning, never a failure (the point is
/// kept without them: its disks and `.vmx` are what matter): a Supervisor that cannot be
/// read (after which the job stops asking it), a group the VM names that is not there,
/// and group members or selected VMs that are not in this job (§10.3 and §10.4 step 2
/// want them backed up together).
async fn related_objects(
    ctx: &JobCtx,
    info: &VmInfo,
    data: Option<&vmservice::VmServiceData>,
) -> Vec<serde_json::Value> {
    use vmservice::related::{GROUP_KIND, SERVICE_KIND, group_lists, pick, selects};
    let (Some(link), Some(data)) = (&ctx.request.supervisor, data) else {
        return Vec::new();
    };
    let (Some(vm), Some(ns), Some(api_version)) =
        (&data.vm_yaml, &data.namespace, &data.api_version)
    else {
        return Vec::new();
    };
    let warn = |message: String| warn_vm(ctx, (&info.moref, &info.name), message);
    let not_kept = |what: &str, e: &str| {
        format!(
            "its {what} not kept ({e}): after a restore, recreate them from a copy of your \
             own (seed 001 §10.3, §10.4)"
        )
    };
    let both = "VirtualMachineGroup and VirtualMachineServices were";
    if let Some(e) = link.unreadable() {
        warn(not_kept(
            both,
            &format!("the Supervisor could not be read earlier in this job: {e}"),
        ));
        return Vec::new();
    }
    let version = api_version
        .rsplit_once('/')
        .map_or(api_version.as_str(), |(_, v)| v);
    let group = vm
        .pointer("/spec/groupName")
        .and_then(serde_json::Value::as_str)
        .filter(|g| !g.is_empty());
    // Each kind read on its own: what one read gives is kept whatever the other's
    // failure. An unreachable Supervisor (no connection, a timeout, a refused session) is
    // not asked again in this job; a refusal (no rights on a kind, in this namespace, say)
    // costs this VM only.
    let read = async {
        let supervisor = link.get().await.map_err(str::to_owned)?;
        let groups = match group {
            Some(_) => {
                let r = supervisor
                    .vmop_objects_served(ns, GROUP_KIND, version)
                    .await;
                // Unreachable: the services' read would only wait for the same failure.
                if let Err(e) = &r
                    && e.is_unreachable()
                {
                    return Err(error_chain(e));
                }
                Some(r)
            }
            None => None,
        };
        let services = supervisor
            .vmop_objects_served(ns, SERVICE_KIND, version)
            .await;
        Ok::<_, String>((groups, services))
    };
    let read = tokio::select! {
        r = read => r,
        () = ctx.cancel.cancelled() => return Vec::new(),
    };
    let (groups, services) = match read {
        Ok(r) => r,
        Err(e) => {
            link.mark_unreadable(&e);
            warn(not_kept(both, &e));
            return Vec::new();
        }
    };
    // `None` when the read failed (said so).
    let take =
        |what: &str,
         read: Result<Option<Vec<serde_json::Value>>, crate::supervisor::SupervisorError>,
         kind: &str| {
            match read {
                Ok(Some(objects)) => Some(objects),
                Ok(None) => {
                    warn(not_kept(
                        what,
                        &format!("the Supervisor serves no {kind} at any version this agent knows"),
                    ));
                    None
                }
                Err(e) => {
                    let message = error_chain(&e);
                    if e.is_unreachable() {
                        link.mark_unreadable(&message);
                    }
                    warn(not_kept(what, &message));
                    None
                }
            }
        };
    let groups = groups.map(|g| take("VirtualMachineGroup was", g, GROUP_KIND));
    let services = take("VirtualMachineServices were", services, SERVICE_KIND);
    let kept = pick(
        vm,
        groups
            .as_ref()
            .and_then(Option::as_deref)
            .unwrap_or_default(),
        services.as_deref().unwrap_or_default(),
        api_version,
    );
    // The group checks below only once the groups were read.
    let group = group.filter(|_| matches!(groups, Some(Some(_))));
    let in_job = |name: &str| {
        ctx.job_vms.get().is_some_and(|n| {
            n.iter()
                .any(|(vns, v)| vns.as_deref() == Some(ns.as_str()) && v == name)
        })
    };
    // Which VMs the kept services select, to tell those this job leaves out (only a
    // warning is lost when they cannot be listed).
    if kept
        .iter()
        .any(|o| vmservice::related::kind_of(o) == Some(SERVICE_KIND))
    {
        let listed = tokio::select! {
            r = async { link.get().await.ok()?.virtual_machines(ns, version).await.ok() } => r,
            () = ctx.cancel.cancelled() => return kept,
        };
        match listed {
            Some(vms) => {
                let outside: Vec<String> = vms
                    .into_iter()
                    .filter_map(|v| serde_json::to_value(v).ok())
                    .filter(|v| {
                        let labels = v.pointer("/metadata/labels").cloned().unwrap_or_default();
                        kept.iter().any(|s| selects(s, &labels))
                    })
                    .filter_map(|v| vmservice::related::name_of(&v).map(str::to_owned))
                    .filter(|v| !in_job(v))
                    .collect();
                if !outside.is_empty() {
                    warn(format!(
                        "its VirtualMachineServices also select {}, not in this job: back up the \
                         VMs a service selects in one job (seed 001 §10.3)",
                        outside.join(", ")
                    ));
                }
            }
            None => warn(format!(
                "the VirtualMachines of namespace {ns} could not be listed: whether its \
                 VirtualMachineServices select VMs outside this job was not checked"
            )),
        }
    }
    // A group that belongs to a group not there (or beyond the levels followed).
    let kept_group = |name: &str| {
        kept.iter().any(|o| {
            vmservice::related::kind_of(o) == Some(GROUP_KIND)
                && vmservice::related::name_of(o) == Some(name)
        })
    };
    for o in kept
        .iter()
        .filter(|o| vmservice::related::kind_of(o) == Some(GROUP_KIND))
    {
        if let Some(parent) = o
            .pointer("/spec/groupName")
            .and_then(serde_json::Value::as_str)
            .filter(|p| !p.is_empty() && !kept_group(p))
        {
            warn(format!(
                "VirtualMachineGroup {} belongs to VirtualMachineGroup {parent}, which is not \
                 in namespace {ns}: not kept (seed 001 §10.4)",
                vmservice::related::name_of(o).unwrap_or_default()
            ));
        }
    }
    if let Some(g) = group {
        // The VM's own group (the groups it belongs to in turn are kept beside it).
        match kept.iter().find(|o| {
            vmservice::related::kind_of(o) == Some(GROUP_KIND)
                && vmservice::related::name_of(o) == Some(g)
        }) {
            None => warn(format!(
                "spec.groupName names VirtualMachineGroup {g}, which is not in namespace {ns}: \
                 not kept (seed 001 §10.4)"
            )),
            Some(obj) => {
                let members: Vec<&str> = vmservice::related::vm_members(obj)
                    .filter(|m| !in_job(m))
                    .collect();
                if !members.is_empty() {
                    warn(format!(
                        "VirtualMachineGroup {g} also lists {}, not in this job: back up a \
                         group's members in one job (seed 001 §10.4)",
                        members.join(", ")
                    ));
                }
                if !group_lists(obj, &info.name) {
                    warn(format!(
                        "VirtualMachineGroup {g} does not list {} in spec.bootOrder[].members: \
                         the VM is no member of it (seed 001 §10.4)",
                        info.name
                    ));
                }
            }
        }
    }
    kept
}

fn describe(v: &Validation) -> String {
    if v.status == ValidationStatus::NotVmService {
        return "the VMX carries no VM Service ExtraConfig (vmservice.* keys)".into();
    }
    v.problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The VM's folder as the point records it (guide §5.3.3: the namespace folder path is
/// part of the backup's metadata).
#[derive(Debug, Clone, serde::Serialize)]
struct VmFolder {
    /// `group-v…`.
    moref: String,
    /// Its name (a Supervisor namespace folder is named after the namespace).
    name: String,
    /// Its inventory path (`/dc1/vm/Namespaces/demo-ns`), when every ancestor could be
    /// read.
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

/// Ancestors read at most, folder to datacenter, for [`VmFolder::path`].
const FOLDER_DEPTH_MAX: usize = 32;

/// The VM's parent folder; `None` when it cannot be read.
async fn vm_folder(ctx: &JobCtx, info: &VmInfo) -> Option<VmFolder> {
    let parent = info.parent.as_ref()?;
    let read = |obj: crate::vsphere::MoRef| async move {
        ctx.env
            .soap
            .retrieve_object(&obj, &["name", "parent"])
            .await
    };
    let folder = match read(parent.moref()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(vm = %info.moref, error = %e, "cannot read the VM's folder");
            return None;
        }
    };
    let name = folder.text("name")?.to_owned();
    // Up to the datacenter, whose name starts the path.
    let mut names = vec![name.clone()];
    let mut next = folder.get("parent").and_then(|p| p.moref().ok());
    let mut path = None;
    for _ in 0..FOLDER_DEPTH_MAX {
        let Some(obj) = next.take() else { break };
        let Ok(c) = read(obj.clone()).await else {
            break;
        };
        let Some(n) = c.text("name") else { break };
        names.push(n.to_owned());
        if obj.kind == "Datacenter" {
            names.reverse();
            path = Some(format!("/{}", names.join("/")));
            break;
        }
        next = c.get("parent").and_then(|p| p.moref().ok());
    }
    Some(VmFolder {
        moref: parent.0.clone(),
        name,
        path,
    })
}

/// The live disk's backing file for a snapshot disk (same key): what the VM Service disk
/// data names. Falls back to the snapshot's file.
fn live_file_name(info: &VmInfo, snapshot_disk: &VirtualDiskInfo) -> String {
    info.disks
        .iter()
        .find(|d| d.key == snapshot_disk.key)
        .map_or_else(
            || snapshot_disk.file_name.clone(),
            |d| base_file_name(&d.file_name),
        )
}

/// `[ds] vm/disk-000001.vmdk` → `[ds] vm/disk.vmdk`: the live config names the redo log of
/// a snapshotted disk; the disk's identity is its base.
fn base_file_name(name: &str) -> String {
    if let Some(stem) = name.strip_suffix(".vmdk")
        && let Some((base, seq)) = stem.rsplit_once('-')
        && seq.len() == 6
        && seq.bytes().all(|b| b.is_ascii_digit())
    {
        return format!("{base}.vmdk");
    }
    name.to_owned()
}

/// The newest committed point of this VM (same vCenter), the base of incrementals.
async fn previous_point(ctx: &JobCtx, info: &VmInfo) -> Result<Option<PointRecord>, BackupError> {
    let catalog = ctx.env.repo.catalog().clone();
    let (vcenter, vm) = (ctx.vcenter_uuid.clone(), info.moref.clone());
    Ok(blocking(move || catalog.latest_point(vcenter, vm)).await??)
}

/// Whether a restore in place wrote this VM's disks since `previous`, its newest point,
/// was made (see [`crate::repo::catalog::RESTORED_IN_PLACE_PREFIX`]).
async fn restored_in_place_since(
    ctx: &JobCtx,
    info: &VmInfo,
    previous: Option<&PointRecord>,
) -> Result<bool, BackupError> {
    let Some(previous) = previous else {
        return Ok(false);
    };
    let catalog = ctx.env.repo.catalog().clone();
    let key = format!(
        "{}{}/{}",
        crate::repo::catalog::RESTORED_IN_PLACE_PREFIX,
        ctx.vcenter_uuid,
        info.moref
    );
    let marked = blocking(move || catalog.meta(&key)).await??;
    Ok(marked.is_some_and(|id| id == previous.id.to_string()))
}

/// Decides full or incremental for one disk (VSPHERE.md §A.7 agent policy).
async fn plan_disk(
    ctx: &JobCtx,
    info: &VmInfo,
    snapshot: &SnapshotMoref,
    disk: &VirtualDiskInfo,
    previous: Option<&PointRecord>,
    cbt_enabled_now: bool,
    restored_in_place: bool,
) -> Result<Plan, BackupError> {
    let full = |reason: String| Plan::Full {
        allocated: None,
        reason,
    };
    let prev_disk = previous.and_then(|p| p.disks.iter().find(|d| d.key == disk.key));
    let plan = match (previous, prev_disk) {
        _ if ctx.request.force_full => full("full backup requested".into()),
        _ if cbt_enabled_now => full("change tracking was just enabled".into()),
        // VDDK's writes need not show in change tracking (a hot-added disk is written by
        // the proxy VM): the disk may differ from the last point where no change says so.
        (Some(_), Some(_)) if restored_in_place => {
            full("the VM was restored in place since its last backup".into())
        }
        (None, _) => full("first backup of this VM".into()),
        (Some(_), None) => full("first backup of this disk".into()),
        (Some(p), Some(pd)) => match (&pd.change_id, &disk.change_id) {
            (_, None) => full("the snapshot reports no changeId for this disk".into()),
            (None, _) => full("the previous backup recorded no changeId".into()),
            (Some(old), Some(_)) if old.0 == "*" => {
                full("the previous backup recorded no usable changeId".into())
            }
            (Some(old), Some(new)) => {
                if pd.capacity_bytes != disk.capacity_bytes {
                    full(format!(
                        "disk resized from {} to {} bytes",
                        pd.capacity_bytes, disk.capacity_bytes
                    ))
                } else if old.tracking_uuid() != new.tracking_uuid() {
                    full("change tracking was reset (its change UUID changed)".into())
                } else if let (Some(was), Some(now)) = (old.sequence(), new.sequence())
                    && now <= was
                {
                    // Every snapshot advances the sequence, and this backup's snapshot came
                    // after the last one's: a sequence not past the recorded one means the
                    // disk went back (a revert to a snapshot from before the last backup).
                    // The blocks it took back carry older stamps, and no change query
                    // since the last backup would name them.
                    full(format!(
                        "the disk went back to an earlier state (changeId {} after {}): a snapshot revert",
                        new.0, old.0
                    ))
                } else if pd.disk_uuid.is_some() && pd.disk_uuid != disk.uuid {
                    full("a different disk now has this device key (its UUID changed)".into())
                } else {
                    match ctx
                        .env
                        .soap
                        .query_changed_disk_areas(
                            &info.moref,
                            Some(snapshot),
                            disk.key,
                            disk.capacity_bytes,
                            old,
                        )
                        .await
                    {
                        Ok(areas) => Plan::Incremental {
                            parent: Box::new(p.clone()),
                            changed: extents_of(&areas, disk.capacity_bytes),
                            reason: format!("changed blocks since {}", old.0),
                        },
                        Err(e)
                            if matches!(
                                e.fault_kind(),
                                Some(FaultKind::FileFault | FaultKind::InvalidArgument)
                            ) =>
                        {
                            full(format!(
                                "vCenter rejected changeId {}: {}",
                                old.0,
                                error_chain(&e)
                            ))
                        }
                        Err(source) => {
                            return Err(BackupError::Vsphere {
                                what: format!(
                                    "changed areas of {} disk {} since {}",
                                    info.moref, disk.key, old.0
                                ),
                                source,
                            });
                        }
                    }
                }
            }
        },
    };
    // A full reads what the disk has in use ("*"), else the allocation map from VDDK.
    Ok(match plan {
        Plan::Full { reason, .. } => {
            let allocated = match ctx
                .env
                .soap
                .query_changed_disk_areas(
                    &info.moref,
                    Some(snapshot),
                    disk.key,
                    disk.capacity_bytes,
                    &ChangeId::all(),
                )
                .await
            {
                Ok(areas) => Some(extents_of(&areas, disk.capacity_bytes)),
                Err(e) => {
                    tracing::info!(
                        vm = %info.moref, disk = %disk.key, error = %e,
                        "QueryChangedDiskAreas(\"*\") failed; using VDDK's allocation map"
                    );
                    None
                }
            };
            Plan::Full { allocated, reason }
        }
        incremental => incremental,
    })
}

/// vSphere's changed areas as the repository's extents, each cut at the disk's end: an area vCenter reports
/// beyond it (the last one rounded up) holds nothing to read, and the chunk at the end is
/// read whole anyway.
fn extents_of(areas: &[ChangedArea], capacity_bytes: u64) -> Vec<Extent> {
    areas
        .iter()
        .filter(|a| a.start_bytes < capacity_bytes)
        .map(|a| Extent {
            offset: a.start_bytes,
            length: a.length_bytes.min(capacity_bytes - a.start_bytes),
        })
        .collect()
}

/// What a disk read returns: the snapshot's disk, the repository's record, the report.
type DiskOutcome = (VirtualDiskInfo, WrittenDisk, DiskReport);

/// Reads one disk on its own thread (`backup/<vm>/<key>`): Open through VDDK, then the
/// repository pipeline, whose `disk-read` thread owns the VDDK handle.
async fn read_disk(
    ctx: Arc<JobCtx>,
    vm: VmMoref,
    name: String,
    snapshot: SnapshotMoref,
    disk: VirtualDiskInfo,
    plan: Plan,
    point: RestorePointId,
) -> Result<DiskOutcome, BackupError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_name = format!("backup/{vm}/{}", disk.key);
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            // The disk's own connection: opened, used and closed (a blocking disconnect)
            // on this thread, before the snapshot is removed, whether the read succeeded
            // or not.
            let spec = ctx.env.vddk_target.spec(&vm, Some(&snapshot), true);
            let r = ctx
                .env
                .vddk
                .connect(&spec)
                .map_err(|source| BackupError::Vddk {
                    what: format!("connecting to {name} ({vm}) at {snapshot} through VDDK"),
                    source,
                })
                .and_then(|connection| {
                    read_disk_blocking(&ctx, &spec, &connection, &vm, &name, &disk, plan, point)
                });
            let _ = tx.send(r.map(|(w, rep)| (disk, w, rep)));
        })
        .map_err(|e| BackupError::Thread(format!("start thread {thread_name}: {e}")))?;
    rx.await
        .map_err(|_| BackupError::Thread(format!("thread {thread_name} panicked")))?
}

#[allow(clippy::too_many_arguments)] // one disk's whole context, on its own thread
fn read_disk_blocking(
    ctx: &JobCtx,
    spec: &crate::vddk::ConnectSpec,
    connection: &crate::vddk::Connection,
    vm: &VmMoref,
    name: &str,
    disk: &VirtualDiskInfo,
    plan: Plan,
    point: RestorePointId,
) -> Result<(WrittenDisk, DiskReport), BackupError> {
    let started = Instant::now();
    let repo = &ctx.env.repo;
    let vddk_err = |what: String| move |source| BackupError::Vddk { what, source };
    let handle = connection
        .open(&disk.file_name, OpenFlags::READ_ONLY)
        .map_err(vddk_err(format!("opening {} of {vm}", disk.file_name)))?;
    let capacity = handle
        .info()
        .map_err(vddk_err(format!(
            "reading the size of {} of {vm}",
            disk.file_name
        )))?
        .capacity_bytes;
    let transport = handle.transport_mode();
    // The disk is open (with hotadd, attached to the proxy VM).
    crash_point("disk-opened");
    let (repo_plan, kind, reason) = match plan {
        Plan::Full { allocated, reason } => (DiskPlan::Full { allocated }, PointKind::Full, reason),
        Plan::Incremental {
            parent,
            changed,
            reason,
        } => match repo.load_index(&parent, disk.key) {
            Ok(parent_index) => (
                DiskPlan::Incremental {
                    parent_index,
                    changed,
                },
                PointKind::Incremental,
                reason,
            ),
            // Nothing is lost by reading everything again.
            Err(e) => (
                DiskPlan::Full { allocated: None },
                PointKind::Full,
                format!("the parent's index is unreadable ({})", error_chain(&e)),
            ),
        },
    };
    // An extent beyond the disk fails in write_disk, naming it; 0 until then.
    let bytes_total = match &repo_plan {
        DiskPlan::Full {
            allocated: Some(extents),
        }
        | DiskPlan::Incremental {
            changed: extents, ..
        } => pipeline::bytes_covered(extents, repo.chunk_size_bytes(), capacity).unwrap_or(0),
        DiskPlan::Full { allocated: None } => capacity,
    };
    (ctx.observer)(&BackupEvent::DiskStarted {
        vm: vm.clone(),
        name: name.to_owned(),
        disk: disk.key,
        label: disk.label.clone(),
        kind,
        reason: reason.clone(),
        bytes_total,
    });
    // A read that loses its connection is tried again on a new one (see `vddk_source`).
    let reopen = {
        let (vddk, spec, path) = (ctx.env.vddk.clone(), spec.clone(), disk.file_name.clone());
        Box::new(move || vddk.connect(&spec)?.open(&path, OpenFlags::READ_ONLY))
    };
    let source = VddkSource::new(handle, capacity, ctx.cancel.clone())
        .retrying(reopen, vddk_source::read_retry_pauses());
    let observer = ctx.observer.clone();
    let mut progress = |done: u64, total: u64| {
        // After a chunk is stored, before the disk's index is written.
        if done > 0 {
            crash_point("mid-disk");
        }
        observer(&BackupEvent::DiskProgress {
            vm: vm.clone(),
            disk: disk.key,
            bytes_done: done,
            bytes_total: total,
        });
    };
    let written = repo.write_disk(point, name, disk.key, source, repo_plan, &mut progress)?;
    let seconds = started.elapsed().as_secs_f64();
    (ctx.observer)(&BackupEvent::DiskFinished {
        vm: vm.clone(),
        disk: disk.key,
        bytes_read: written.stats.bytes_read,
        bytes_stored: written.stats.bytes_stored,
        seconds,
    });
    let report = DiskReport {
        key: disk.key,
        label: disk.label.clone(),
        kind: written.kind,
        reason: written.fallback.clone().unwrap_or(reason),
        capacity_bytes: written.capacity_bytes,
        bytes_changed: written.bytes_changed,
        transport,
        stats: written.stats,
        seconds,
    };
    Ok((written, report))
}

/// Journals the intent to create snapshot `name` of `vm` for this job (before creating it:
/// its moref is not known yet, the job's tag in its description finds it).
async fn journal_snapshot_intent(
    env: &Environment,
    ctx: &JobCtx,
    vm: &VmMoref,
    name: &str,
) -> Result<SnapshotEffect, BackupError> {
    let mut effect = SnapshotEffect {
        journal: None,
        job: ctx.job,
        moref: None,
    };
    effect.journal =
        Some(journal::open(env, JournalKind::Snapshot, vm, effect.detail(name)).await?);
    Ok(effect)
}

/// Turns CBT on for `info`'s VM. The create/remove cycle's snapshot is journalled like the
/// backup's own and tagged with the job: if the cycle fails part-way (the remove refused, a
/// lost reply, a crash), its snapshot is removed now, or by `reconcile` after a crash, and
/// never stays behind on a VM whose CBT is on from then on.
async fn enable_cbt(env: &Environment, ctx: &JobCtx, info: &VmInfo) -> Result<(), BackupError> {
    let vm = &info.moref;
    let effect = journal_snapshot_intent(env, ctx, vm, crate::vsphere::CBT_CYCLE_SNAPSHOT).await?;
    let description = journal::snapshot_description(ctx.job);
    let cycle = env
        .soap
        .enable_cbt(vm, &description, |_| crash_point("cbt-cycle-snapshot"))
        .await;
    match cycle {
        Ok(_) => {
            // As for the backup's own snapshot: no redo logs stay behind once the cycle's
            // snapshot is gone, also when this job stops before it takes its own (whose
            // removal would check it). The entry stays open until then.
            journal::consolidate_if_needed(env, vm).await?;
            if let Some(id) = effect.journal {
                journal::close(env, id).await?;
            }
            Ok(())
        }
        Err(source) => {
            if let Err(e) =
                journal::remove_snapshot(env, vm, &effect, !ctx.cancel.is_cancelled()).await
            {
                tracing::error!(vm = %vm, error = %error_chain(&e), "enabling CBT failed and its snapshot could not be removed; reconcile will retry");
            }
            Err(BackupError::Vsphere {
                what: format!("enabling change tracking on {} ({vm})", info.name),
                source,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot that records what the job did with it.
    #[derive(Debug, Default)]
    struct Recorded(Mutex<Vec<&'static str>>);

    impl Slot for Recorded {
        fn step_out(&self) {
            self.0.lock().unwrap().push("out");
        }

        fn step_in(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
            self.0.lock().unwrap().push("in");
            Box::pin(async {})
        }
    }

    /// Out of its slot while a blackout window lasts; back in its slot, the job asks the
    /// gate again, and waits out of its slot again for a window that began meanwhile,
    /// announcing it, before any snapshot.
    #[tokio::test]
    async fn a_window_that_began_while_the_job_took_its_slot_back_is_waited_out() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let at = |ms| {
            jiff::Zoned::now()
                .checked_add(jiff::SignedDuration::from_millis(ms))
                .unwrap()
        };
        let (first, second) = (at(150), at(400));
        let (a, b) = (first.clone(), second.clone());
        let phase = AtomicUsize::new(0);
        let gate = SnapshotGate(Arc::new(move || {
            let now = jiff::Zoned::now();
            match phase.load(Ordering::SeqCst) {
                0 if now < a => Some(a.clone()),
                0 => {
                    phase.store(1, Ordering::SeqCst);
                    None
                }
                // Asked again once back in the slot: the second window has begun.
                1 => {
                    phase.store(2, Ordering::SeqCst);
                    Some(b.clone())
                }
                2 if now < b => Some(b.clone()),
                _ => {
                    phase.store(3, Ordering::SeqCst);
                    None
                }
            }
        }));
        let slot = Recorded::default();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&events);
        let observer: Observer = Arc::new(move |e: &BackupEvent| {
            seen.lock().unwrap().push(serde_json::to_value(e).unwrap());
        });
        let cancel = CancellationToken::new();
        wait_for_snapshot_gate(&gate, Some(&slot), &cancel, &observer)
            .await
            .unwrap();
        assert!(jiff::Zoned::now() >= second);
        assert_eq!(*slot.0.lock().unwrap(), ["out", "in", "out", "in"]);
        let deferred: Vec<String> = events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e["until"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(deferred, [first.to_string(), second.to_string()]);
    }

    /// The NVRAM file is where the `.vmx` names it, next to it; by default it takes the
    /// `.vmx`'s name; one named elsewhere is not kept.
    #[test]
    fn the_nvram_file_is_found_next_to_the_vmx() {
        let vmx = DatastorePath {
            datacenter: "dc1".into(),
            datastore: "ds1".into(),
            path: "web-1/web-1.vmx".into(),
        };
        let at = |entries: &[(&str, &str)]| {
            let entries: Vec<(String, String)> = entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            nvram_path(&vmx, &entries).map(|p| (p.datastore, p.path))
        };
        assert_eq!(at(&[]), Some(("ds1".into(), "web-1/web-1.nvram".into())));
        assert_eq!(
            at(&[("NVRAM", "efi.nvram")]),
            Some(("ds1".into(), "web-1/efi.nvram".into()))
        );
        assert_eq!(at(&[("nvram", "/vmfs/volumes/ds2/x.nvram")]), None);
        assert_eq!(at(&[("nvram", "..")]), None);
        let root = DatastorePath {
            path: "w.vmx".into(),
            ..vmx.clone()
        };
        assert_eq!(nvram_path(&root, &[]).unwrap().path, "w.nvram");
    }

    /// The snapshots wait while the gate says a window is on, announce its end once, and go
    /// on when it has passed; a cancellation ends the wait.
    #[tokio::test]
    async fn snapshots_wait_for_the_end_of_a_blackout_window() {
        let end = jiff::Zoned::now()
            .checked_add(jiff::SignedDuration::from_millis(400))
            .unwrap();
        let gate_end = end.clone();
        let gate = SnapshotGate(Arc::new(move || {
            (jiff::Zoned::now() < gate_end).then(|| gate_end.clone())
        }));
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&events);
        let observer: Observer = Arc::new(move |e: &BackupEvent| {
            seen.lock().unwrap().push(serde_json::to_value(e).unwrap());
        });
        let cancel = CancellationToken::new();
        wait_for_snapshot_gate(&gate, None, &cancel, &observer)
            .await
            .unwrap();
        assert!(jiff::Zoned::now() >= end);
        let events = events.lock().unwrap().clone();
        assert_eq!(
            events,
            [serde_json::json!({"event": "snapshots_deferred", "until": end.to_string()})]
        );

        let never = SnapshotGate(Arc::new(|| {
            Some(
                jiff::Zoned::now()
                    .checked_add(jiff::SignedDuration::from_hours(1))
                    .unwrap(),
            )
        }));
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            canceller.cancel();
        });
        assert!(matches!(
            wait_for_snapshot_gate(&never, None, &cancel, &observer).await,
            Err(BackupError::Cancelled)
        ));
    }

    #[test]
    fn an_independent_jobs_failed_vms_are_no_ones_missing_companions() {
        let stats = json!({"vms": [
            {"name": "db-1", "error": "snapshot failed", "point": null},
            {"name": "web-1", "error": null, "point": "p"},
        ]});
        assert_eq!(failed_members(&stats), vec!["db-1".to_owned()]);
        let mut independent = stats.clone();
        independent["independent"] = true.into();
        assert!(failed_members(&independent).is_empty());
        // Jobs recorded before the flag existed were groups.
        let mut older = stats;
        older["independent"] = serde_json::Value::Null;
        assert_eq!(failed_members(&older), vec!["db-1".to_owned()]);
    }

    #[test]
    fn selectors_parse() {
        assert_eq!(
            "demo-ns/web-1".parse::<VmSelector>().unwrap(),
            VmSelector::Namespaced {
                namespace: "demo-ns".into(),
                name: "web-1".into()
            }
        );
        assert_eq!(
            "vm-42".parse::<VmSelector>().unwrap(),
            VmSelector::Moref(VmMoref("vm-42".into()))
        );
        for bad in ["web-1", "/x", "ns/", "a/b/c", "vm-"] {
            assert!(bad.parse::<VmSelector>().is_err(), "{bad}");
        }
    }

    #[test]
    fn redo_log_names_map_to_their_base() {
        assert_eq!(
            base_file_name("[ds1] web/disk-0-000001.vmdk"),
            "[ds1] web/disk-0.vmdk"
        );
        assert_eq!(
            base_file_name("[ds1] web/disk-0.vmdk"),
            "[ds1] web/disk-0.vmdk"
        );
        assert_eq!(
            base_file_name("[ds1] web/db-12.vmdk"),
            "[ds1] web/db-12.vmdk"
        );
    }
}
