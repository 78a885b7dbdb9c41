//! Repository upkeep that the daemon (`serve`) and `schedule run-due` do on their own:
//! applying a scheduling policy's retention after its run ([`apply_retention`]),
//! collecting garbage after restore points were removed ([`collect_if_pending`]), and the
//! daily verify ([`run_scheduled_verify`]); the daemon's [`run`] loop drives the last two.
//! The daemon also reconciles every 15 minutes ([`reconcile_periodically`]): side effects
//! a job's own clean-up could not undo (vCenter down at that moment) are undone then, not
//! at the next job or restart.
//!
//! The daily verify (`maintenance.verify_daily_at`) re-reads one subset of the chunks each
//! day in turn (`verify_subsets`, default 7: every chunk once a week) and checks the rest
//! for presence, with the catalog and every index, and by default repairs what it finds
//! (quarantine and record, so the next backups heal it). It runs beside backups (it takes
//! the shared lock). Its last run, the next subset and the last result are kept in the
//! catalog (`maintenance.verify.*`), so a restart neither repeats nor skips a subset; a run
//! missed while the agent was down is caught up once.
//!
//! Removing points (retention, `DELETE /v1/points/{id}`, `repo prune`) frees no space by
//! itself: their chunks go only when GC sweeps them. Each removal records that in the
//! catalog (`gc.pending_since`, in the removal's own transaction, so a restart forgets
//! nothing); a successful GC clears it. GC needs the repository's exclusive lock, which no
//! backup, restore, verify or prune may hold: the daemon tries only while no job runs, and
//! a job that starts meanwhile waits for the lock ("waiting for garbage collection to
//! finish") instead of failing. With `maintenance.auto_gc = false` nothing here runs GC;
//! `repo info` then shows that garbage waits and `repo gc` (or `POST /v1/repository/gc`)
//! collects it.

// `RepoError` names what failed (point, file, digest) and is larger than clippy's default;
// it comes back on cold paths only (see `crate::repo`).
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{Timestamp, Zoned};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::on_thread;
use super::queue::Queue;
use super::schedule::{is_due, next_run};
use super::scheduler;
use crate::config::{MaintenanceConfig, PolicyConfig};
use crate::engine::{self, VmSelector};
use crate::ids::VmMoref;
use crate::repo::{
    ChunkStoreError, GcReport, PruneDecision, RepairReport, RepoError, Repository, VerifyOptions,
    VerifyReport, VerifySubset,
};

/// Catalog metadata: when the daily verify last started (Unix seconds).
const VERIFY_LAST_RUN: &str = "maintenance.verify.last_run";
/// Catalog metadata: when the agent first saw the daily verify configured (Unix seconds).
const VERIFY_FIRST_SEEN: &str = "maintenance.verify.first_seen";
/// Catalog metadata: the subset the next daily verify reads (1-based).
const VERIFY_NEXT_SUBSET: &str = "maintenance.verify.next_subset";
/// Catalog metadata: the last daily verify's [`VerifySummary`] (JSON).
pub const VERIFY_LAST_RESULT: &str = "maintenance.verify.last_result";

/// How often the daemon checks whether the daily verify is due and, while no job runs,
/// whether there is garbage to collect.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long the daemon waits before trying again after GC failed (not merely busy).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(3600);

/// Apply the retention of policy `name` to the points of its own VMs at `now` (Unix
/// seconds); `Ok(None)` when the policy has no retention, or while this machine's clock
/// differs from vCenter's ([`super::clock`]). Its VMs are those of the vCenter
/// `vcenter_uuid` (the agent's): a repository that also holds another vCenter's VMs (after
/// a failover, say) keeps their points whatever their morefs or names. The VMs in
/// `failed` (the run tried them and committed no point: moref and name) keep every point
/// they have, and so does any VM of the same name (the same VM under an older moref, once
/// re-created),
/// rather than see them age out of the daily/weekly/monthly windows with nothing new to
/// replace them; the others are pruned, also those the run did not include (a VM
/// re-created under a new moref leaves its old moref's points to the policy). Runs on the
/// caller's thread (it takes the repository's shared lock and calls the catalog).
///
/// # Errors
/// The policy's VM list does not validate, or the prune failed (lock, catalog).
pub fn apply_retention(
    repo: &Repository,
    name: &str,
    p: &PolicyConfig,
    vcenter_uuid: &str,
    now: i64,
    failed: &[(VmMoref, String)],
) -> Result<Option<Vec<PruneDecision>>, String> {
    let Some(retention) = p.retention else {
        return Ok(None);
    };
    // Ages are measured with this machine's clock: not while it disagrees with vCenter's
    // (a clock a week ahead would delete points younger than the minimum age).
    if let Some(why) = super::clock::untrusted_because() {
        tracing::warn!(policy = %name, "retention skipped: {why}");
        return Ok(None);
    }
    let selectors = p.selectors(name).map_err(|e| e.to_string())?;
    // Only the points its own runs made: another policy's runs of the same VM, or a
    // vendor's backups through the API, have their own retention.
    let runs: std::collections::HashSet<String> = repo
        .catalog()
        .jobs_of_group(name)
        .map_err(|e| engine::error_chain(&e))?
        .into_iter()
        .map(|j| j.to_string())
        .collect();
    let decisions = repo
        .prune_where(
            &retention.policy(),
            now,
            &jiff::tz::TimeZone::system(),
            false,
            |point| {
                let vm = &point.vm;
                point
                    .stats
                    .get("job")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|j| runs.contains(j))
                    && vm.vcenter_uuid == vcenter_uuid
                    && selectors.iter().any(|(s, _)| match s {
                        VmSelector::Moref(m) => *m == vm.moref,
                        VmSelector::Namespaced { namespace, name } => {
                            vm.namespace.as_deref() == Some(namespace) && vm.name == *name
                        }
                    })
            },
            |vm| failed.iter().any(|(m, n)| *m == vm.moref || *n == vm.name),
        )
        .map_err(|e| engine::error_chain(&e))?;
    tracing::info!(
        policy = %name,
        removed = decisions.iter().filter(|d| !d.keep).count(),
        kept = decisions.iter().filter(|d| d.keep).count(),
        "retention applied"
    );
    Ok(Some(decisions))
}

/// What [`collect_if_pending`] did.
#[derive(Debug)]
pub enum GcAttempt {
    /// No point was removed since the last GC: nothing to do.
    NotNeeded,
    /// Another backup, restore, verify or prune holds the repository: try again later.
    Busy,
    /// GC ran.
    Done(GcReport),
}

/// Collect garbage if points were removed since the last successful GC, without waiting
/// for the repository's lock. Blocking: call it on a thread of its own.
///
/// # Errors
/// Catalog errors, or GC's own (an unreadable index stops it before it sweeps anything).
pub fn collect_if_pending(repo: &Repository) -> Result<GcAttempt, RepoError> {
    let Some(since) = repo.gc_pending_since()? else {
        return Ok(GcAttempt::NotNeeded);
    };
    match repo.gc() {
        Ok(report) => {
            tracing::info!(
                pending_since = since,
                chunks_removed = report.chunks_removed,
                bytes_removed = report.bytes_removed,
                chunks_kept = report.chunks_kept,
                orphan_indexes_removed = report.orphan_indexes_removed,
                "garbage collected after restore points were removed"
            );
            Ok(GcAttempt::Done(report))
        }
        Err(RepoError::Lock(ChunkStoreError::Busy { .. })) => Ok(GcAttempt::Busy),
        Err(e) => Err(e),
    }
}

/// What the last daily verify found (kept in the catalog, shown by `schedule show` and
/// `/v1/metrics`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct VerifySummary {
    /// When it started (Unix seconds).
    pub started_at: i64,
    /// How long it took.
    pub seconds: u64,
    /// The subset re-read (`N/T`), or none for every chunk.
    pub subset: Option<String>,
    /// Restore points checked.
    pub points: usize,
    /// Chunks checked (re-read, or found present outside the subset).
    pub chunks: usize,
    /// Chunks re-read.
    pub chunks_read: usize,
    /// Problems found (catalog, index, chunk).
    pub problems: usize,
    /// Chunk files the repair quarantined.
    pub quarantined: usize,
}

/// When the daily verify runs next, and which subset it reads; `None` when not configured.
///
/// # Errors
/// Catalog errors; the configuration was validated at load.
pub fn verify_plan(
    repo: &Repository,
    m: &MaintenanceConfig,
    now: &Zoned,
) -> Result<Option<(Zoned, Option<VerifySubset>)>, RepoError> {
    let Some(schedule) = m.verify_schedule().ok().flatten() else {
        return Ok(None);
    };
    let reference = verify_reference(repo, now, false)?;
    Ok(Some((
        next_run(&schedule, reference, now),
        next_subset(repo, m)?,
    )))
}

/// What the next daily verify counts from ([`scheduler::reference_time`]).
fn verify_reference(
    repo: &Repository,
    now: &Zoned,
    record: bool,
) -> Result<Option<Timestamp>, RepoError> {
    Ok(scheduler::reference_time(
        repo.catalog(),
        VERIFY_LAST_RUN,
        VERIFY_FIRST_SEEN,
        false,
        now,
        record,
        super::clock::trusted(),
    )?)
}

/// The subset of the next run (a stored bucket beyond a smaller `verify_subsets` wraps).
fn next_subset(
    repo: &Repository,
    m: &MaintenanceConfig,
) -> Result<Option<VerifySubset>, RepoError> {
    if m.verify_subsets <= 1 {
        return Ok(None);
    }
    let stored: u32 = repo
        .catalog()
        .meta(VERIFY_NEXT_SUBSET)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    Ok(VerifySubset::new((stored - 1) % m.verify_subsets + 1, m.verify_subsets).ok())
}

/// The daily verify, if it is due at `now`: records the run first (one attempt per day,
/// even if it fails), verifies the next subset, repairs if `verify_repair`, then moves to
/// the next subset and records the summary. Blocking: call it on a thread of its own.
/// `Ok(None)` when not configured or not due.
///
/// # Errors
/// Lock, catalog or repair errors (problems found are in the report, not errors).
pub fn run_scheduled_verify(
    repo: &Repository,
    m: &MaintenanceConfig,
    now: &Zoned,
) -> Result<Option<(VerifyReport, Option<RepairReport>)>, RepoError> {
    let Some(schedule) = m.verify_schedule().ok().flatten() else {
        return Ok(None);
    };
    if !is_due(&schedule, verify_reference(repo, now, true)?, now) {
        return Ok(None);
    }
    let started = Instant::now();
    let started_at = now.timestamp().as_second();
    repo.catalog()
        .set_meta(VERIFY_LAST_RUN, &started_at.to_string())?;
    let subset = next_subset(repo, m)?;
    tracing::info!(
        subset = %subset.map_or_else(|| "all".to_owned(), |s| s.to_string()),
        repair = m.verify_repair,
        "daily verify started"
    );
    let (report, repaired) = repo.verify_with(
        &VerifyOptions {
            subset,
            repair: m.verify_repair,
            ..VerifyOptions::default()
        },
        &mut |_, _| {},
    )?;
    if let Some(s) = subset {
        repo.catalog()
            .set_meta(VERIFY_NEXT_SUBSET, &(s.n % s.of + 1).to_string())?;
    }
    let summary = VerifySummary {
        started_at,
        seconds: started.elapsed().as_secs(),
        subset: subset.map(|s| s.to_string()),
        points: report.points,
        chunks: report.chunks,
        chunks_read: report.chunks_read,
        problems: report.problems.len(),
        quarantined: repaired.as_ref().map_or(0, |r| r.quarantined.len()),
    };
    if let Ok(json) = serde_json::to_string(&summary) {
        repo.catalog().set_meta(VERIFY_LAST_RESULT, &json)?;
    }
    if report.is_ok() {
        tracing::info!(
            subset = ?summary.subset,
            points = summary.points,
            chunks = summary.chunks,
            chunks_read = summary.chunks_read,
            seconds = summary.seconds,
            "daily verify: no problems"
        );
    } else {
        tracing::error!(
            subset = ?summary.subset,
            problems = summary.problems,
            quarantined = summary.quarantined,
            problem = ?report.problems.first(),
            "daily verify found problems; `vadp-agent repo verify` lists them"
        );
    }
    Ok(Some((report, repaired)))
}

/// The last daily verify's summary.
///
/// # Errors
/// Catalog errors.
pub fn last_verify_summary(repo: &Repository) -> Result<Option<VerifySummary>, RepoError> {
    Ok(repo
        .catalog()
        .meta(VERIFY_LAST_RESULT)?
        .and_then(|v| serde_json::from_str(&v).ok()))
}

/// How often the daemon reconciles while the journal holds entries.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(15 * 60);

/// The daemon's periodic reconcile (ARCHITECTURE §7): every [`RECONCILE_EVERY`], when the
/// journal holds open entries, what ended jobs left open (a snapshot whose removal failed
/// while vCenter was unreachable, an EndAccess that did not go through) is undone again,
/// as at start-up. Entries of jobs still running are theirs: reconcile finds their job
/// locks held and leaves them.
pub async fn reconcile_periodically(env: engine::Environment, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + RECONCILE_EVERY,
        RECONCILE_EVERY,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let catalog = env.repo.catalog().clone();
        match read_or_log("the journal", move || catalog.journal_open_entries()).await {
            Some(entries) if !entries.is_empty() => {}
            _ => continue,
        }
        log_reconcile(
            "periodic reconcile",
            &engine::reconcile(&env, &[], false).await,
            false,
        );
    }
}

/// A catalog read on the blocking pool for a maintenance loop; `None`, logged as a
/// warning, when it fails (the loop tries again at its next turn).
async fn read_or_log<T, E>(
    what: &str,
    read: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Option<T>
where
    T: Send + 'static,
    E: std::error::Error + Send + 'static,
{
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %engine::error_chain(&e), "reading {what}");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading {what}");
            None
        }
    }
}

/// Logs what a reconcile of the daemon's (`what`: at start-up, periodic) did: what it
/// undid at `info` (the only trace of a crash's leftovers being cleaned), what it could
/// not, or what needs a person (a VM shell a restore left), at `warn`; a run with nothing
/// to do at `info` when `idle_at_info` (start-up), else at `debug`.
pub fn log_reconcile(
    what: &str,
    result: &Result<engine::ReconcileReport, engine::BackupError>,
    idle_at_info: bool,
) {
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %engine::error_chain(e), "{what}");
            return;
        }
    };
    let (removed, ended, interrupted, transport, shells) = (
        r.snapshots_removed.len(),
        r.access_ended.len(),
        r.jobs_interrupted.len(),
        r.transport_cleaned,
        r.half_created_vms.len(),
    );
    if !r.errors.is_empty() || shells > 0 {
        tracing::warn!(
            snapshots_removed = removed,
            access_ended = ended,
            jobs_interrupted = interrupted,
            transport_cleaned = transport,
            half_created_vms = ?r.half_created_vms,
            errors = ?r.errors,
            "{what}: some of what interrupted jobs left is still there (errors are tried again \
             later; a half-created VM is for a person to remove)"
        );
    } else if removed + ended + interrupted > 0 || transport > 0 {
        tracing::info!(
            snapshots_removed = removed,
            access_ended = ended,
            jobs_interrupted = interrupted,
            transport_cleaned = transport,
            "{what}: undid what interrupted jobs left"
        );
    } else if idle_at_info {
        tracing::info!("{what}: nothing left open");
    } else {
        tracing::debug!("{what}: nothing left open");
    }
}

/// How often the job history is trimmed.
const HISTORY_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The daemon's loop, every few seconds: the daily verify when it is due (beside any
/// jobs), hourly the trimming of the job history (`job_history_days`), and, while no job
/// is queued or running, GC if points were removed (with
/// `auto_gc`). After a GC failure (not a busy repository) it waits an hour before trying
/// GC again, so a damaged index is reported, not hammered.
pub async fn run(
    repo: Arc<Repository>,
    queue: Queue,
    config: MaintenanceConfig,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet_until: Option<Instant> = None;
    let verify = config.verify_schedule().ok().flatten();
    let mut history_checked: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Hourly: the job history beyond its keep goes, from the catalog and from memory.
        // Not while the clock disagrees with vCenter's: a clock set a month ahead would
        // forget every job and its idempotency key.
        if history_checked.is_none_or(|t| t.elapsed() >= HISTORY_EVERY) && super::clock::trusted() {
            history_checked = Some(Instant::now());
            let keep = config.job_history();
            match queue.forget_ended(keep).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    jobs = n,
                    keep_days = keep.as_secs() / 86_400,
                    "forgot jobs that ended before the job history's keep"
                ),
                Err(e) => tracing::warn!(error = %e, "forgetting old jobs"),
            }
        }
        if let Some(schedule) = &verify {
            let r = Arc::clone(&repo);
            let now = super::clock::vcenter_now();
            let n = now.clone();
            let due =
                match tokio::task::spawn_blocking(move || verify_reference(&r, &n, true)).await {
                    Ok(Ok(reference)) => is_due(schedule, reference, &now),
                    _ => false,
                };
            if due {
                let (r, m) = (Arc::clone(&repo), config.clone());
                match on_thread("verify", move || run_scheduled_verify(&r, &m, &now)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %engine::error_chain(&e), "daily verify failed");
                    }
                    Err(e) => tracing::error!(error = %e, "daily verify failed"),
                }
            }
        }
        if !config.auto_gc
            || queue.figures() != (0, 0)
            || quiet_until.is_some_and(|t| Instant::now() < t)
        {
            continue;
        }
        // One catalog read on the blocking pool; GC itself on a thread of its own.
        let r = Arc::clone(&repo);
        let Some(Some(_)) = read_or_log("the catalog", move || r.gc_pending_since()).await else {
            continue;
        };
        let r = Arc::clone(&repo);
        match on_thread("gc", move || collect_if_pending(&r)).await {
            Ok(Ok(GcAttempt::Busy)) => {
                tracing::debug!("garbage collection deferred: the repository is in use");
            }
            Ok(Ok(GcAttempt::NotNeeded | GcAttempt::Done(_))) => quiet_until = None,
            Ok(Err(e)) => {
                tracing::error!(
                    error = %engine::error_chain(&e),
                    retry_in_s = RETRY_AFTER_FAILURE.as_secs(),
                    "garbage collection failed"
                );
                quiet_until = Some(Instant::now() + RETRY_AFTER_FAILURE);
            }
            Err(e) => tracing::error!(error = %e, "garbage collection"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test data
mod tests {
    use super::*;
    use crate::daemon::tests::at;
    use crate::repo::{ImageBackup, synthetic_image};

    #[test]
    fn a_policys_retention_leaves_another_vcenters_vm_and_another_policys_points_alone() {
        use crate::config::RetentionConfig;
        use crate::ids::VmMoref;
        // The clocks compared and found the same (retention waits until then).
        super::super::clock::set_skew_secs(0);
        use crate::repo::catalog::sample_point;
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&dir.path().join("repo"), 64 << 10).unwrap();
        let day = 86_400;
        // Points of the policy's runs (group "web"), and one of another policy's run of
        // the same VM, which only that policy's retention may remove.
        let commit = |vcenter: &str, group: &str, created_at: i64| {
            let mut point = sample_point("web", created_at);
            point.vm.moref = VmMoref("vm-42".into());
            point.vm.vcenter_uuid = vcenter.into();
            let job = point.job.unwrap();
            point.stats = serde_json::json!({ "job": job });
            repo.catalog()
                .job_start(job, Some(group.into()), created_at)
                .unwrap();
            repo.catalog().commit_point(point).unwrap();
        };
        for vcenter in ["vc-ours", "vc-other"] {
            for n in 0..3 {
                commit(vcenter, "web", day * (10 + n));
            }
        }
        commit("vc-ours", "db", day * 5);
        let policy = PolicyConfig {
            vms: vec!["vm-42".into()],
            quiesce: vec![],
            independent: false,
            daily_at: "01:00".into(),
            blackout: vec![],
            initial_run: false,
            priority: 0,
            retry_failed_after_minutes: 0,
            retention: Some(RetentionConfig {
                keep_last: 1,
                keep_daily: 0,
                keep_weekly: 0,
                keep_monthly: 0,
                min_age_days: 3,
            }),
        };
        // A VM whose backup failed in the run keeps every point.
        let none = apply_retention(
            &repo,
            "web",
            &policy,
            "vc-ours",
            100 * day,
            &[(VmMoref("vm-42".into()), "web".into())],
        )
        .unwrap()
        .unwrap();
        assert!(!none.is_empty() && none.iter().all(|d| d.keep), "{none:?}");
        // The same VM re-created under a new moref, failed: its old moref's points stay.
        let renamed = apply_retention(
            &repo,
            "web",
            &policy,
            "vc-ours",
            100 * day,
            &[(VmMoref("vm-77".into()), "web".into())],
        )
        .unwrap()
        .unwrap();
        assert!(renamed.iter().all(|d| d.keep), "{renamed:?}");
        assert_eq!(repo.catalog().list_points().unwrap().len(), 7);
        let decisions = apply_retention(&repo, "web", &policy, "vc-ours", 100 * day, &[])
            .unwrap()
            .unwrap();
        assert_eq!(decisions.iter().filter(|d| !d.keep).count(), 2);
        let left: Vec<String> = repo
            .catalog()
            .list_points()
            .unwrap()
            .into_iter()
            .map(|p| p.vm.vcenter_uuid)
            .collect();
        assert_eq!(
            left.iter().filter(|v| *v == "vc-other").count(),
            3,
            "{left:?}"
        );
        assert_eq!(
            left.iter().filter(|v| *v == "vc-ours").count(),
            2,
            "the newest of the policy's, and the other policy's: {left:?}"
        );
    }

    #[test]
    fn the_daily_verify_rotates_subsets_runs_once_a_day_and_records_its_result() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&dir.path().join("repo"), 64 << 10).unwrap();
        let img = dir.path().join("disk.img");
        synthetic_image::generate(&img, 4 << 20, 5).unwrap();
        let req = ImageBackup {
            name: "vm".into(),
            file: img,
            changed: None,
            parent: None,
        };
        repo.backup_image(&req, &mut |_, _| {}).unwrap();
        let m = MaintenanceConfig {
            verify_daily_at: Some("03:00".into()),
            verify_subsets: 3,
            ..MaintenanceConfig::default()
        };
        // Never ran: no run at start-up, the first at the next 03:00, subset 1/3.
        let now = at("2026-12-02T10:00:00+00:00");
        assert!(run_scheduled_verify(&repo, &m, &now).unwrap().is_none());
        let (next, subset) = verify_plan(&repo, &m, &now).unwrap().unwrap();
        assert_eq!(next, at("2026-12-03T03:00:00+00:00"));
        assert_eq!(subset.unwrap().to_string(), "1/3");
        assert!(last_verify_summary(&repo).unwrap().is_none());

        // One run a day, the subsets in turn; the first three together read every chunk.
        let mut read = 0;
        let mut chunks = 0;
        for (day, expected) in [(3, "1/3"), (4, "2/3"), (5, "3/3"), (6, "1/3")] {
            let t = at(&format!("2026-12-0{day}T03:00:30+00:00"));
            let (report, repaired) = run_scheduled_verify(&repo, &m, &t).unwrap().expect("due");
            assert!(report.is_ok(), "{report:?}");
            assert_eq!(report.subset.unwrap().to_string(), expected);
            assert!(repaired.is_some(), "verify_repair is on by default");
            if day < 6 {
                read += report.chunks_read;
            }
            chunks = report.chunks;
            let later = at(&format!("2026-12-0{day}T23:00:00+00:00"));
            assert!(run_scheduled_verify(&repo, &m, &later).unwrap().is_none());
        }
        assert!(chunks > 3);
        assert_eq!(read, chunks);
        let summary = last_verify_summary(&repo).unwrap().unwrap();
        assert_eq!(summary.subset.as_deref(), Some("1/3"));
        assert_eq!(
            summary.started_at,
            at("2026-12-06T03:00:30+00:00").timestamp().as_second()
        );
        assert_eq!((summary.problems, summary.chunks), (0, chunks));

        // Days missed while the agent was down: one catch-up run, the next subset (2/3);
        // fewer subsets configured since: the stored one wraps; one subset: every chunk.
        let t = at("2026-12-09T12:00:00+00:00");
        let (report, _) = run_scheduled_verify(&repo, &m, &t).unwrap().unwrap();
        assert_eq!(report.subset.unwrap().to_string(), "2/3");
        let two = MaintenanceConfig {
            verify_subsets: 2,
            ..m.clone()
        };
        let (_, subset) = verify_plan(&repo, &two, &t).unwrap().unwrap();
        assert_eq!(subset.unwrap().to_string(), "1/2");
        let one = MaintenanceConfig {
            verify_subsets: 1,
            ..m
        };
        let t = at("2026-12-10T03:00:00+00:00");
        let (report, _) = run_scheduled_verify(&repo, &one, &t).unwrap().unwrap();
        assert_eq!((report.subset, report.chunks_read), (None, chunks));
    }
}
