//! Request and response types of the `/v1` API.
//!
//! Requests carry `#[serde(deny_unknown_fields)]`; responses do not, and their enums carry
//! an `Unknown` fallback, so clients keep working when the agent adds fields or states.
//! Times are Unix seconds (UTC); identifiers are UUID strings.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One VM of a backup job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// `NAMESPACE/NAME` (a VM Service VM) or a managed object reference (`vm-42`).
    pub vm: String,
    /// Quiesce the guest file systems (VMware Tools) when snapshotting.
    #[serde(default)]
    pub quiesce: bool,
}

/// `POST /v1/jobs/backup`: back up a group of VMs at a common point in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupJobRequest {
    /// The VMs, snapshotted together (at least one).
    pub vms: Vec<VmSpec>,
    /// Name of the consistency group, recorded with the job. Not the name of one of the
    /// daemon's scheduling policies (a 400): a policy's retention takes its group's
    /// points for its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Each VM stands alone (a job for many VMs): a VM that cannot be backed up (not
    /// found, refused, still busy after the job's wait, its PrepareForAccess or snapshot
    /// failing) fails alone, with its error in the job's report, and the others are backed
    /// up. Default false: the VMs are a consistency group, and any of these fails the
    /// whole job before a disk is read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub independent: bool,
    /// Submitting again with the same key returns the job first created with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Higher runs first among queued jobs (default 0); equal priorities run in order.
    #[serde(default)]
    pub priority: i32,
    /// Read every allocated block even where change tracking has the changes.
    #[serde(default)]
    pub full: bool,
    /// Fail a VM whose backup could not be restored as a VM Service VM.
    #[serde(default)]
    pub require_vmservice: bool,
    /// Bracket each VM's backup with PrepareForAccess/EndAccess (default true).
    #[serde(default = "yes")]
    pub prepare_access: bool,
}

fn yes() -> bool {
    true
}

/// How a restore creates the VM (seed 001 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    /// Predict the restore type as the Supervisor will decide it.
    #[default]
    Auto,
    /// A new VM (new identity).
    New,
    /// Overwrite the existing VM.
    Existing,
    /// Restore disks only.
    DiskOnly,
}

impl std::str::FromStr for RestoreMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "new" => Ok(Self::New),
            "existing" => Ok(Self::Existing),
            "disk-only" => Ok(Self::DiskOnly),
            other => Err(format!(
                "unknown restore mode {other:?}: auto, new, existing or disk-only"
            )),
        }
    }
}

/// A network override mapping on restore (VCF 9 with NSX-VPC; seed 001 §9.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubnetMapping {
    /// The subnet the backed-up VM uses, by name; `subnetset:NAME` for a SubnetSet, and
    /// `subnetset:` alone for the namespace's default SubnetSet (seed 001 §9.3).
    pub from: String,
    /// The subnet (or `subnetset:NAME`) to use instead.
    pub to: String,
}

/// `POST /v1/jobs/restore`: restore a point into a Supervisor namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreJobRequest {
    /// The restore point.
    pub point: String,
    /// Target Supervisor namespace (default: the point's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Restore type.
    #[serde(default)]
    pub mode: RestoreMode,
    /// Device keys of the disks to restore (empty: all).
    #[serde(default)]
    pub disks: Vec<i32>,
    /// Network rewrites.
    #[serde(default)]
    pub subnet_map: Vec<SubnetMapping>,
    /// The datastore to put a new VM's disks and `.vmx` on (default: each disk on the
    /// datastore it was backed up from). Restores to a new VM only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<String>,
    /// Check everything and report what would happen, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Before changing anything, read and check every chunk the disks need (by default
    /// only that each chunk file exists), so that an in-place restore cannot stop part-way
    /// on a damaged chunk.
    #[serde(default)]
    pub verify_first: bool,
    /// Seconds to wait for WCP's automatic registration, when WCP registers the VM by
    /// itself, before calling registervm (default 120, at most 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_registration_wait_secs: Option<u64>,
    /// After registration, create the VirtualMachineGroup and VirtualMachineServices the
    /// point kept (seed 001 §10.5: groups, then services) where the namespace has none of
    /// that name; one already there is left as it is. Default false (and then not sent,
    /// so that agents older than the field take the request).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recreate_related: bool,
    /// More restore points (one VM each), restored in the same job with `point` as one
    /// application, in the order of seed 001 §10.5: every VM (in the order given, `point`
    /// first), then with `recreate_related` the groups and services their points kept,
    /// then every VM's check. The job's result is then a group report (`vms`, `related`,
    /// `problems`, `error`, `cancelled`, `not_restored`). Not with `disks` or mode
    /// `disk-only`. Default none (and then not sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub with_points: Vec<String>,
    /// Submitting again with the same key returns the job first created with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Higher runs first among queued jobs (default 0).
    #[serde(default)]
    pub priority: i32,
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Backup of a group of VMs.
    Backup,
    /// Restore of a point.
    Restore,
    /// Verify of the repository (`POST /v1/jobs/verify`).
    Verify,
    /// A kind this client does not know.
    #[serde(other)]
    Unknown,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a slot.
    Queued,
    /// Running.
    Running,
    /// Finished; every VM succeeded.
    Succeeded,
    /// Finished; something failed (see `error` and `result`).
    Failed,
    /// Cancelled before or while running.
    Cancelled,
    /// The daemon stopped while the job ran; its side effects were reconciled at start-up.
    Interrupted,
    /// A state this client does not know.
    #[serde(other)]
    Unknown,
}

impl JobState {
    /// Whether the job has ended (it will not change again).
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Interrupted
        )
    }
}

/// How far a running job is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Progress {
    /// Bytes read so far (whole chunks).
    pub bytes_done: u64,
    /// Bytes to read in the disks started so far.
    pub bytes_total: u64,
    /// VMs finished (committed or failed).
    pub vms_done: u64,
    /// VMs in the job.
    pub vms_total: u64,
    /// A verify job: chunks re-read so far.
    pub chunks_done: u64,
    /// A verify job: chunks to re-read.
    pub chunks_total: u64,
}

/// A job as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// Job id.
    pub id: String,
    /// Backup or restore.
    pub kind: JobKind,
    /// State.
    pub state: JobState,
    /// Queue priority.
    #[serde(default)]
    pub priority: i32,
    /// The idempotency key it was submitted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Where it came from: `api` or `schedule:<policy>`.
    #[serde(default)]
    pub origin: String,
    /// Unix time submitted.
    pub created_at: i64,
    /// Unix time started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// Unix time finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// Progress (running jobs).
    #[serde(default)]
    pub progress: Progress,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The request, as submitted.
    #[schema(value_type = Object)]
    #[serde(default)]
    pub request: serde_json::Value,
    /// The engine's report (backup: per-VM points, kinds, bytes, validation).
    #[schema(value_type = Option<Object>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    #[serde(default)]
    pub jobs: Vec<Job>,
}

/// One disk of a restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PointDisk {
    /// Device key.
    pub key: i32,
    /// Device label.
    #[serde(default)]
    pub label: String,
    /// Capacity.
    #[serde(default)]
    pub capacity_bytes: u64,
    /// Bytes changed since the parent point.
    #[serde(default)]
    pub bytes_changed: u64,
    /// Bytes of new chunks stored.
    #[serde(default)]
    pub bytes_stored: u64,
}

/// A restore point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Point {
    /// Point id.
    pub id: String,
    /// VM moref at backup time.
    pub vm: String,
    /// VM name.
    #[serde(default)]
    pub name: String,
    /// Supervisor namespace, for a VM Service VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Unix time.
    pub created_at: i64,
    /// `full` or `incremental`.
    #[serde(default)]
    pub kind: String,
    /// Why that kind.
    #[serde(default)]
    pub reason: String,
    /// The parent point of an incremental.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Disks.
    #[serde(default)]
    pub disks: Vec<PointDisk>,
    /// Statistics and the VM Service validation.
    #[schema(value_type = Object)]
    #[serde(default)]
    pub stats: serde_json::Value,
    /// The backup job that made it, as the catalog knows it: the `job` of the API job's
    /// `result` (not the API job's own id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The VMs of that job that failed (by name): this point has no companion of theirs
    /// from it. In a consistency group the point is then not the whole application's, and
    /// a group restore should take all its VMs' points from a job where none failed. Empty
    /// for a point of an independent job, which stands alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_failed: Vec<String>,
}

/// `GET /v1/points`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PointList {
    /// Oldest first.
    #[serde(default)]
    pub points: Vec<Point>,
}

/// `GET /v1/points/{id}/related`: the VirtualMachineGroup and VirtualMachineServices the
/// point kept with a VM Service VM (seed 001 §10.3–§10.4), as a Kubernetes `v1` `List`
/// that `kubectl create -n NAMESPACE -f` takes: each item without status, namespace or
/// server-set metadata. Empty for a VM that is no VM Service VM, one in no group and behind
/// no service, and a point made before they were kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RelatedList {
    /// `v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `List`.
    pub kind: String,
    /// The objects, groups first (the order §10.5 creates them in).
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
}

/// `DELETE /v1/points/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PointDeleted {
    /// The point removed (its chunks go at the next GC).
    pub id: String,
}

/// `POST /v1/repository/verify` (the body is optional: no body is `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Also move corrupt chunk files to `quarantine/` and record damaged chunks, so the next
    /// backups store them again and heal the points that use them (`repo verify --repair`).
    /// Backups go on meanwhile.
    #[serde(default)]
    pub repair: bool,
    /// Re-read only the chunks in bucket N of T (by digest), `"N/T"`, and check that the
    /// others exist: `"1/7"` … `"7/7"` on seven days read every chunk once a week. Chunks
    /// recorded as damaged are always re-read. Absent: every chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "3/7")]
    pub subset: Option<String>,
    /// Only the chunks these restore points use (and chunks recorded as damaged), e.g. the
    /// point a backup just made; absent or empty: every point's. Every index is still read,
    /// so a problem names all the points it affects. An unknown point is a 404.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<String>,
}

/// `POST /v1/jobs/verify`: the same verify as a queued job, for repositories too large for
/// one HTTP request: `verify_progress` events (`chunks_done`, `chunks_total`), the job's
/// `progress`, cancellation (nothing is repaired then). The job succeeds when nothing is
/// wrong and fails otherwise; its `result` is a [`VerifyResult`] either way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyJobRequest {
    /// As [`VerifyRequest::repair`].
    #[serde(default)]
    pub repair: bool,
    /// As [`VerifyRequest::subset`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "3/7")]
    pub subset: Option<String>,
    /// As [`VerifyRequest::points`] (an unknown point fails the job).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<String>,
    /// The same key returns the same job (200 instead of 202).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Queue priority (higher first).
    #[serde(default)]
    pub priority: i32,
}

/// `POST /v1/repository/verify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VerifyResult {
    /// Whether everything is intact (of what was checked: see `subset`).
    pub ok: bool,
    /// Points checked.
    #[serde(default)]
    pub points: u64,
    /// Distinct chunks checked.
    #[serde(default)]
    pub chunks: u64,
    /// Of those, chunks re-read and re-hashed (all of them without `subset`).
    #[serde(default)]
    pub chunks_read: u64,
    /// The subset re-read, as requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Problems (`kind`: `catalog`, `index`, `config` (a point's `.vmx`, ExtraConfig and
    /// NVRAM file) or `chunk`, with the points affected; a chunk's `state` is `missing`,
    /// `corrupt` or `unreadable`).
    #[schema(value_type = Vec<Object>)]
    #[serde(default)]
    pub problems: Vec<serde_json::Value>,
    /// With `repair`: the chunk files quarantined, the digests recorded as damaged, those
    /// left unreadable and how many earlier records were cleared.
    #[schema(value_type = Option<Object>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<serde_json::Value>,
}

/// `POST /v1/repository/prune`: apply a retention policy to every VM's points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    /// Keep the N newest.
    #[serde(default)]
    pub keep_last: u32,
    /// Keep the newest of each of the N most recent days.
    #[serde(default)]
    pub keep_daily: u32,
    /// Keep the newest of each of the N most recent ISO weeks.
    #[serde(default)]
    pub keep_weekly: u32,
    /// Keep the newest of each of the N most recent months.
    #[serde(default)]
    pub keep_monthly: u32,
    /// Never remove a point younger than this many days (default 3, the least allowed).
    #[serde(default = "three")]
    pub min_age_days: u32,
    /// Decide only; remove nothing.
    #[serde(default)]
    pub dry_run: bool,
}

fn three() -> u32 {
    3
}

/// The retention decision for one point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PruneDecision {
    /// The point.
    pub id: String,
    /// Unix time it was created.
    pub created_at: i64,
    /// Whether it stays.
    pub keep: bool,
    /// The rules that keep it.
    #[serde(default)]
    pub reasons: Vec<String>,
}

/// `POST /v1/repository/prune`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PruneResult {
    /// Whether points were actually removed.
    #[serde(default)]
    pub dry_run: bool,
    /// One decision per point.
    #[serde(default)]
    pub decisions: Vec<PruneDecision>,
}

/// `POST /v1/repository/gc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct GcResult {
    /// Chunks referenced by committed indexes.
    pub chunks_marked: u64,
    /// Chunk files removed.
    pub chunks_removed: u64,
    /// Bytes of removed chunk files.
    pub bytes_removed: u64,
}

/// `POST /v1/reconcile`: what interrupted jobs had left, and what was undone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ReconcileResult {
    /// Snapshots removed (`vm:snapshot`).
    pub snapshots_removed: Vec<String>,
    /// VMs whose PrepareForAccess was ended.
    pub access_ended: Vec<String>,
    /// VMs whose VDDK transport state crashed backups left (disks hot-added to the proxy
    /// VM) `VixDiskLib_Cleanup` removed.
    #[serde(default)]
    pub transport_cleaned: u32,
    /// Engine jobs marked interrupted.
    pub jobs_interrupted: Vec<String>,
    /// Half-created VMs to look at.
    pub half_created_vms: Vec<String>,
    /// Journal entries left alone because their job is still running.
    #[serde(default)]
    pub skipped_running: u32,
    /// Journal entries left alone because they were written against another vCenter
    /// (a repository may serve several): what each is, for a reconcile against that one.
    #[serde(default)]
    pub other_vcenter: Vec<String>,
    /// What could not be undone (still journalled).
    pub errors: Vec<String>,
}

/// `GET /v1/health`: the process is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// Agent version.
    #[serde(default)]
    pub version: String,
}

/// `GET /v1/ready`: the daemon accepts jobs (repository open, queue running).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// Whether jobs are accepted.
    pub ready: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Jobs queued.
    #[serde(default)]
    pub queued: u64,
    /// Jobs running.
    #[serde(default)]
    pub running: u64,
}

/// The body of every error response (4xx, 5xx; the 503 of `GET /v1/ready` is a `Ready`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code (`plugin_api::openapi::ERROR_CODES`): `bad_request` (400),
    /// `unauthorized` (401), `not_found` (404: no such job, restore point or route),
    /// `method_not_allowed` (405), `conflict` (409: an idempotency key reused for another
    /// request, the repository lock busy, a point a restore is using), `clock_untrusted`
    /// (409: a prune while this machine's clock and vCenter's disagree, or before they
    /// were compared), `payload_too_large` (413: a body over 2 MB), `stopping` (503: the
    /// agent is stopping and stopped a synchronous verify), `internal` (500), `http_error`
    /// (another error of the HTTP layer, e.g. a body that could not be read).
    pub code: String,
    /// What went wrong, for a human.
    pub message: String,
}

/// The final server-sent event of `GET /v1/jobs/{id}/events` (event name `end`); the
/// events before it are the engine's progress events (`data` is JSON with an `event`
/// field: `job_started`, `snapshot_created`, `disk_started`, `disk_progress`,
/// `disk_finished`, `vm_finished`, `vm_failed`, `warning`, `job_finished`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobEnded {
    /// The job as it ended.
    pub job: Job,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_strict() {
        let ok: BackupJobRequest =
            serde_json::from_str(r#"{"vms":[{"vm":"ns/web-1","quiesce":true}],"priority":5}"#)
                .unwrap();
        assert!(ok.prepare_access);
        assert_eq!(ok.priority, 5);
        let err = serde_json::from_str::<BackupJobRequest>(r#"{"vms":[],"fulll":true}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fulll"), "{err}");
        assert!(serde_json::from_str::<VmSpec>(r#"{"vm":"vm-1","x":1}"#).is_err());
        let r: RestoreJobRequest = serde_json::from_str(
            r#"{"point":"p","mode":"disk-only","disks":[2000],"subnet_map":[{"from":"a","to":"b"}],"dry_run":true}"#,
        )
        .unwrap();
        assert_eq!(r.mode, RestoreMode::DiskOnly);
        assert!(
            serde_json::from_str::<RestoreJobRequest>(r#"{"point":"p","mode":"sideways"}"#)
                .is_err()
        );
        let p: PruneRequest = serde_json::from_str(r#"{"keep_last":2}"#).unwrap();
        assert_eq!(p.min_age_days, 3);
    }

    #[test]
    fn responses_are_tolerant() {
        let job: Job = serde_json::from_str(
            r#"{"id":"j","kind":"replicate","state":"paused","created_at":1,"new_field":[1]}"#,
        )
        .unwrap();
        assert_eq!(job.kind, JobKind::Unknown);
        assert_eq!(job.state, JobState::Unknown);
        assert!(!job.state.is_final());
        let round: Job = serde_json::from_value(serde_json::to_value(&job).unwrap()).unwrap();
        assert_eq!(round.id, "j");
    }
}
