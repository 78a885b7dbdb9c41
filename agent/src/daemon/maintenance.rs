//! Repository upkeep that the daemon (`serve`) and `schedule run-due` do on their own:
//! applying a scheduling policy's retention after its run ([`apply_retention`]), and
//! collecting garbage after restore points were removed ([`collect_if_pending`], the
//! daemon's [`run`] loop).
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

use tokio_util::sync::CancellationToken;

use super::queue::Queue;
use crate::config::PolicyConfig;
use crate::engine::{self, VmSelector};
use crate::repo::{ChunkStoreError, GcReport, PruneDecision, RepoError, Repository};

/// How often the daemon looks for garbage to collect while no job runs.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long the daemon waits before trying again after GC failed (not merely busy).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(3600);

/// Apply the retention of policy `name` to the points of its own VMs at `now` (Unix
/// seconds); `Ok(None)` when the policy has no retention. Runs on the caller's thread (it
/// takes the repository's shared lock and calls the catalog).
///
/// # Errors
/// The policy's VM list does not validate, or the prune failed (lock, catalog).
pub fn apply_retention(
    repo: &Repository,
    name: &str,
    p: &PolicyConfig,
    now: i64,
) -> Result<Option<Vec<PruneDecision>>, String> {
    let Some(retention) = p.retention else {
        return Ok(None);
    };
    let selectors = p.selectors(name).map_err(|e| e.to_string())?;
    let decisions = repo
        .prune_where(&retention.policy(), now, false, |vm| {
            selectors.iter().any(|(s, _)| match s {
                VmSelector::Moref(m) => *m == vm.moref,
                VmSelector::Namespaced { namespace, name } => {
                    vm.namespace.as_deref() == Some(namespace) && vm.name == *name
                }
            })
        })
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

/// The daemon's loop: every few seconds while no job is queued or running, collect
/// garbage if points were removed. After a failure (not a busy repository) it waits an
/// hour before trying again, so a damaged index is reported, not hammered.
pub async fn run(repo: Arc<Repository>, queue: Queue, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet_until: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if queue.figures() != (0, 0) || quiet_until.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        // One catalog read on the blocking pool; GC itself on a thread of its own.
        let r = Arc::clone(&repo);
        match tokio::task::spawn_blocking(move || r.gc_pending_since()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %engine::error_chain(&e), "reading the catalog");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the catalog");
                continue;
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let r = Arc::clone(&repo);
        let spawned = std::thread::Builder::new()
            .name("maintenance".into())
            .spawn(move || drop(tx.send(collect_if_pending(&r))));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the maintenance thread");
            continue;
        }
        match rx.await {
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
            Err(_) => tracing::error!("the maintenance thread failed"),
        }
    }
}
