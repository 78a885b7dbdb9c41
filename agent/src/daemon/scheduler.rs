//! Which scheduling policies are due, and the daemon's scheduler loop that submits them
//! into the job queue. The last run of each policy is kept in the catalog's metadata
//! (`schedule.<policy>.last_run`, Unix seconds).

use std::sync::Arc;
use std::time::Duration;

use jiff::{Timestamp, Zoned};
use plugin_api::types::{BackupJobRequest, JobKind, VmSpec};
use tokio_util::sync::CancellationToken;

use super::queue::{Queue, Submission};
use super::schedule::{Schedule, clock_went_back, is_due};
use crate::config::{AgentConfig, ConfigError, PolicyConfig};
use crate::repo::{CatalogError, CatalogHandle};

fn key(policy: &str) -> String {
    format!("schedule.{policy}.last_run")
}

/// The last run of `policy`.
///
/// # Errors
/// Catalog errors.
pub fn last_run(catalog: &CatalogHandle, policy: &str) -> Result<Option<Timestamp>, CatalogError> {
    Ok(catalog
        .meta(&key(policy))?
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|s| Timestamp::from_second(s).ok()))
}

/// The time a schedule's next run counts from: its last run; or, if it never ran and has
/// no initial run, when the agent first saw it (`first_seen_key`, recorded at `now` the
/// first time when `record`). Without that anchor a schedule that never ran would count
/// from every check's "now", and its first daily time, once passed, would always move to
/// the next day: it would never run. A recorded time more than a day after `now` (the
/// clock went back) counts as `now`, and is rewritten so when `record` — unless the clock
/// disagrees with vCenter's (`clock_trusted` false), when `now` is what is wrong.
///
/// # Errors
/// Catalog errors.
pub fn reference_time(
    catalog: &CatalogHandle,
    last_key: &str,
    first_seen_key: &str,
    initial_run: bool,
    now: &Zoned,
    record: bool,
    clock_trusted: bool,
) -> Result<Option<Timestamp>, CatalogError> {
    let read = |key: &str| -> Result<Option<Timestamp>, CatalogError> {
        Ok(catalog
            .meta(key)?
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(|s| Timestamp::from_second(s).ok()))
    };
    // A time more than a day ahead of the clock: the clock went back since it was
    // recorded. Counted (and, when recording, rewritten) as now, said once: waiting for
    // the clock to catch up would stop the schedule for as long.
    // While the clock disagrees with vCenter's, it is `now` that is wrong (a boot before
    // NTP set it): the recorded time stands, and the schedule waits as it would.
    let fix = |key: &str, at: Timestamp| -> Result<Timestamp, CatalogError> {
        if !clock_went_back(at, now) || !clock_trusted {
            return Ok(at);
        }
        if record {
            tracing::warn!(key, recorded = %at, now = %now.timestamp(), "a schedule's time is recorded more than a day in the future: the clock went back; it counts from now");
            catalog.set_meta(key, &now.timestamp().as_second().to_string())?;
        }
        Ok(now.timestamp())
    };
    if let Some(last) = read(last_key)? {
        return fix(last_key, last).map(Some);
    }
    if initial_run {
        return Ok(None);
    }
    if let Some(seen) = read(first_seen_key)? {
        return fix(first_seen_key, seen).map(Some);
    }
    if record {
        catalog.set_meta(first_seen_key, &now.timestamp().as_second().to_string())?;
        return Ok(Some(now.timestamp()));
    }
    Ok(None)
}

/// [`reference_time`] of `policy`.
///
/// # Errors
/// Catalog errors.
pub fn policy_reference(
    catalog: &CatalogHandle,
    policy: &str,
    schedule: &Schedule,
    now: &Zoned,
    record: bool,
) -> Result<Option<Timestamp>, CatalogError> {
    reference_time(
        catalog,
        &key(policy),
        &format!("schedule.{policy}.first_seen"),
        schedule.initial_run,
        now,
        record,
        super::clock::trusted(),
    )
}

/// Records that `policy` ran (was submitted) at `at`.
///
/// # Errors
/// Catalog errors.
pub fn record_run(
    catalog: &CatalogHandle,
    policy: &str,
    at: Timestamp,
) -> Result<(), CatalogError> {
    catalog.set_meta(&key(policy), &at.as_second().to_string())
}

/// A policy whose run is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRun {
    /// The policy.
    pub name: String,
    /// What it is due after: its last recorded run (or when it was first seen; `None` for
    /// a first run at start-up). The same until this run is recorded.
    pub after: Option<Timestamp>,
}

/// The policies due at `now`.
///
/// # Errors
/// Catalog errors, or a policy that does not validate.
pub fn due_policies(
    config: &AgentConfig,
    catalog: &CatalogHandle,
    now: &Zoned,
) -> Result<Vec<DueRun>, SchedulerError> {
    let mut due = Vec::new();
    for (name, p) in &config.policy {
        let schedule = p.schedule(name)?;
        let after = policy_reference(catalog, name, &schedule, now, true)?;
        if is_due(&schedule, after, now) {
            due.push(DueRun {
                name: name.clone(),
                after,
            });
        }
    }
    Ok(due)
}

/// The API request a policy's run submits.
#[must_use]
pub fn policy_request(run: &DueRun, p: &PolicyConfig) -> BackupJobRequest {
    let name = &run.name;
    let mut request = BackupJobRequest {
        vms: p
            .vms
            .iter()
            .map(|vm| VmSpec {
                vm: vm.clone(),
                quiesce: p.quiesce.contains(vm),
            })
            .collect(),
        group: Some(name.to_owned()),
        independent: p.independent,
        idempotency_key: None,
        priority: p.priority,
        full: false,
        require_vmservice: false,
        prepare_access: true,
    };
    // One job per due run: until the run is recorded (if recording fails, say), every
    // later look finds it due again, with the same key, and gets the same job. The
    // request's digest is in the key too: a policy changed meanwhile is a new job, not one
    // the queue refuses for reusing a key with another request (for good, as the run would
    // never be recorded).
    let digest = blake3::hash(
        serde_json::to_string(&request)
            .unwrap_or_default()
            .as_bytes(),
    );
    request.idempotency_key = Some(format!(
        "schedule:{name}:after:{}:{}",
        run.after
            .map_or("start".into(), |t| t.as_second().to_string()),
        &digest.to_hex()[..16]
    ));
    request
}

/// What the scheduler does about a policy, given the jobs its runs made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Its last run is still queued or running: a run that comes due meanwhile starts
    /// after it (two runs of one group at once would refuse each other's VMs).
    Wait,
    /// Its last run was interrupted (the daemon stopped or died while it ran): run it
    /// again, once, now; or it failed, and `retry_failed_after` has passed since: run it
    /// again, once. A retry that is interrupted or fails in its turn is not retried: the
    /// policy waits for its next due run (a daemon stopped over and over, or a VM that
    /// always fails, must not turn one run into an endless chain).
    Retry(String),
    /// Submit a run if one is due.
    IfDue,
}

/// How long after its retry delay a failed run may still be retried: a daemon that was
/// down then (a failure at 23:10, a start at 09:00) leaves the run to the policy's next
/// daily time rather than backing up in the middle of the working day.
const RETRY_WINDOW_SECS: i64 = 2 * 3600;

/// [`Step`] for `policy`, from the queue's jobs (newest first), at `now` (Unix seconds):
/// a failed run is retried once `retry_failed_after` (none: never) has passed since it
/// ended, and no later than [`RETRY_WINDOW_SECS`] after that.
pub(crate) fn next_step(
    policy: &str,
    jobs: &[plugin_api::types::Job],
    retry_failed_after: Option<Duration>,
    now: i64,
) -> Step {
    use plugin_api::types::JobState;
    let origin = format!("schedule:{policy}");
    let is_retry = |j: &plugin_api::types::Job| {
        j.idempotency_key
            .as_deref()
            .is_some_and(|k| k.starts_with(&format!("schedule:{policy}:retry:")))
    };
    match jobs.iter().find(|j| j.origin == origin) {
        Some(j) if matches!(j.state, JobState::Queued | JobState::Running) => Step::Wait,
        Some(j) if j.state == JobState::Interrupted && !is_retry(j) => Step::Retry(j.id.clone()),
        Some(j)
            if j.state == JobState::Failed
                && !is_retry(j)
                && j.finished_at
                    .is_some_and(|end| retry_is_due(end, retry_failed_after, now)) =>
        {
            Step::Retry(j.id.clone())
        }
        _ => Step::IfDue,
    }
}

/// Whether a failed run that ended at `end` (Unix seconds) is to be run again at `now`:
/// `retry_failed_after` (none: never) has passed, and no more than [`RETRY_WINDOW_SECS`]
/// after that.
pub(crate) fn retry_is_due(end: i64, retry_failed_after: Option<Duration>, now: i64) -> bool {
    retry_failed_after.is_some_and(|after| {
        let from = end.saturating_add(i64::try_from(after.as_secs()).unwrap_or(i64::MAX));
        (from..=from.saturating_add(RETRY_WINDOW_SECS)).contains(&now)
    })
}

fn failed_key(policy: &str) -> String {
    format!("schedule.{policy}.failed")
}

/// `schedule run-due`'s record of a policy's failed run (the daemon's is its job
/// history): when it ended (Unix seconds), and whether it was itself a retry.
///
/// # Errors
/// Catalog errors.
pub fn failed_run(
    catalog: &CatalogHandle,
    policy: &str,
) -> Result<Option<(i64, bool)>, CatalogError> {
    Ok(catalog.meta(&failed_key(policy))?.and_then(|v| {
        let (end, retry) = v
            .strip_suffix(":retry")
            .map_or((v.as_str(), false), |e| (e, true));
        end.parse().ok().map(|e| (e, retry))
    }))
}

/// Records how `schedule run-due`'s run of `policy` ended: failed at `end` (a retry or
/// not), or succeeded (`None`, which forgets an earlier failure).
///
/// # Errors
/// Catalog errors.
pub fn record_outcome(
    catalog: &CatalogHandle,
    policy: &str,
    failed: Option<(i64, bool)>,
) -> Result<(), CatalogError> {
    match failed {
        Some((end, retry)) => catalog.set_meta(
            &failed_key(policy),
            &format!("{end}{}", if retry { ":retry" } else { "" }),
        ),
        None => {
            if let Some(v) = catalog.meta(&failed_key(policy))? {
                catalog.clear_meta_if(&failed_key(policy), &v)?;
            }
            Ok(())
        }
    }
}

/// Errors of the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A policy is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Every 30 seconds (and at start), submits the due policies into `queue`.
pub async fn run(
    config: Arc<AgentConfig>,
    catalog: CatalogHandle,
    queue: Queue,
    stop: CancellationToken,
) {
    if config.policy.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    let mut overdue_warned: std::collections::HashMap<String, String> =
        std::collections::HashMap::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // By vCenter's clock: a proxy whose clock is off runs the policy when it is due.
        let now = super::clock::vcenter_now();
        let (c, cfg, n) = (catalog.clone(), Arc::clone(&config), now.clone());
        let due = match tokio::task::spawn_blocking(move || due_policies(&cfg, &c, &n)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "scheduler");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduler");
                continue;
            }
        };
        let jobs = queue.list();
        let mut runs = Vec::new();
        for (name, p) in &config.policy {
            let retry_failed_after = p.retry_failed_after();
            // Job times are this machine's (the queue's).
            let local_now = jiff::Timestamp::now().as_second();
            let step = match next_step(name, &jobs, retry_failed_after, local_now) {
                // A retry that comes when the policy is due anyway is the due run.
                Step::Retry(_) if due.iter().any(|r| &r.name == name) => Step::IfDue,
                step => step,
            };
            match step {
                Step::Wait => {
                    // Due again while its previous run has not ended (a hung vCenter task,
                    // a job waiting for a VM): said once per such run, not silently skipped.
                    let origin = format!("schedule:{name}");
                    if due.iter().any(|r| &r.name == name)
                        && let Some(j) = jobs.iter().find(|j| j.origin == origin)
                        && overdue_warned.get(name) != Some(&j.id)
                    {
                        tracing::warn!(policy = %name, job = %j.id, state = ?j.state, started_at = ?j.started_at, "the policy is due again but its previous run has not ended; the next run waits for it");
                        overdue_warned.insert(name.clone(), j.id.clone());
                    }
                }
                Step::Retry(interrupted) => runs.push((
                    DueRun {
                        name: name.clone(),
                        after: None,
                    },
                    Some(interrupted),
                )),
                Step::IfDue => {
                    if let Some(run) = due.iter().find(|r| &r.name == name) {
                        runs.push((run.clone(), None));
                    }
                }
            }
        }
        for (run, retry_of) in runs {
            let name = run.name.clone();
            let Some(p) = config.policy.get(&name) else {
                continue;
            };
            let mut request = policy_request(&run, p);
            if let Some(job) = &retry_of {
                tracing::warn!(policy = %name, job = %job, "the policy's last run was interrupted or failed: running it again");
                request.idempotency_key = Some(format!("schedule:{name}:retry:{job}"));
            }
            let submission = Submission {
                kind: JobKind::Backup,
                idempotency_key: request.idempotency_key.clone(),
                priority: request.priority,
                request: serde_json::to_value(&request).unwrap_or_default(),
                origin: format!("schedule:{name}"),
            };
            match queue.submit(submission).await {
                Ok((job, _)) => {
                    tracing::info!(policy = %name, job = %job.id, "scheduled backup queued");
                    let (c, n, at) = (catalog.clone(), name.clone(), now.timestamp());
                    if let Ok(Err(e)) =
                        tokio::task::spawn_blocking(move || record_run(&c, &n, at)).await
                    {
                        tracing::error!(policy = %name, error = %e, "recording the run");
                    }
                }
                Err(e) => {
                    tracing::error!(policy = %name, error = %e, "queueing the scheduled backup")
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test data
mod tests {
    use super::*;
    use crate::daemon::parse_hhmm;
    use crate::daemon::tests::at;

    /// A policy's run waits while its previous run is queued or running, and a run the
    /// daemon's stop interrupted is run again; one that failed is run again once its retry
    /// delay has passed; one that ended otherwise leaves the policy to its schedule.
    #[test]
    fn a_run_waits_for_the_previous_one_and_an_interrupted_one_is_run_again() {
        let job = |id: &str, origin: &str, state: &str| -> plugin_api::types::Job {
            serde_json::from_value(serde_json::json!({
                "id": id, "kind": "backup", "state": state, "origin": origin, "created_at": 0,
                "finished_at": 1000,
            }))
            .unwrap()
        };
        let never = None;
        let next_step =
            |policy: &str, jobs: &[plugin_api::types::Job]| next_step(policy, jobs, never, 5000);
        // Newest first, as `Queue::list` gives them.
        let jobs = |latest: &str| {
            vec![
                job("j3", "api", "running"),
                job("j2", "schedule:nightly", latest),
                job("j1", "schedule:nightly", "interrupted"),
                job("j0", "schedule:other", "running"),
            ]
        };
        for state in ["queued", "running"] {
            assert_eq!(next_step("nightly", &jobs(state)), Step::Wait, "{state}");
        }
        assert_eq!(
            next_step("nightly", &jobs("interrupted")),
            Step::Retry("j2".into())
        );
        for state in ["succeeded", "failed", "cancelled"] {
            assert_eq!(next_step("nightly", &jobs(state)), Step::IfDue, "{state}");
        }
        // The retry itself interrupted: no retry of the retry; the schedule takes over.
        let mut retried = jobs("interrupted");
        retried[1].idempotency_key = Some("schedule:nightly:retry:j1".into());
        assert_eq!(next_step("nightly", &retried), Step::IfDue);
        // Another policy's retry key does not count.
        retried[1].idempotency_key = Some("schedule:nightly-2:retry:j1".into());
        assert_eq!(next_step("nightly", &retried), Step::Retry("j2".into()));
        assert_eq!(next_step("never-ran", &jobs("running")), Step::IfDue);

        // A failed run: again once its delay has passed since it ended (at 1000), not
        // before, never without a delay, and never a failed retry.
        let half_hour = Some(Duration::from_secs(1800));
        let failed = jobs("failed");
        assert_eq!(
            super::next_step("nightly", &failed, half_hour, 2799),
            Step::IfDue
        );
        assert_eq!(
            super::next_step("nightly", &failed, half_hour, 2800),
            Step::Retry("j2".into())
        );
        assert_eq!(
            super::next_step("nightly", &failed, half_hour, 2800 + 7200),
            Step::Retry("j2".into())
        );
        assert_eq!(
            super::next_step("nightly", &failed, half_hour, 2801 + 7200),
            Step::IfDue,
            "too late: the next daily run takes over"
        );
        assert_eq!(
            super::next_step("nightly", &failed, None, 9999),
            Step::IfDue
        );
        let mut failed_retry = failed.clone();
        failed_retry[1].idempotency_key = Some("schedule:nightly:retry:j1".into());
        assert_eq!(
            super::next_step("nightly", &failed_retry, half_hour, 9999),
            Step::IfDue
        );
        // A cancelled run is the client's decision: not retried.
        assert_eq!(
            super::next_step("nightly", &jobs("cancelled"), half_hour, 9999),
            Step::IfDue
        );
    }

    /// A last run recorded a month in the future (the clock was set back): the first check
    /// rewrites it to its own time, and the policy runs at that day's daily time.
    #[test]
    fn a_last_run_in_the_future_is_rewritten_to_now() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, _thread) = CatalogHandle::spawn(&dir.path().join("catalog.db")).unwrap();
        let s = Schedule {
            daily_at: parse_hhmm("23:00").unwrap(),
            blackout: Vec::new(),
            initial_run: false,
        };
        record_run(&catalog, "p", at("2025-04-10T23:00:00+00:00").timestamp()).unwrap();
        let due = |now: &str| {
            let now = at(now);
            is_due(
                &s,
                policy_reference(&catalog, "p", &s, &now, true).unwrap(),
                &now,
            )
        };
        assert!(!due("2025-03-11T09:00:00+00:00"));
        assert_eq!(
            catalog.meta("schedule.p.last_run").unwrap().unwrap(),
            at("2025-03-11T09:00:00+00:00")
                .timestamp()
                .as_second()
                .to_string()
        );
        assert!(!due("2025-03-11T22:59:00+00:00"));
        assert!(due("2025-03-11T23:00:05+00:00"));
    }

    /// While the clock disagrees with vCenter's, a last run in the future is left alone:
    /// the clock, not the record, is wrong (a boot before NTP set it).
    #[test]
    fn a_last_run_in_the_future_stands_while_the_clock_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, _thread) = CatalogHandle::spawn(&dir.path().join("catalog.db")).unwrap();
        let last = at("2025-04-10T23:00:00+00:00").timestamp();
        record_run(&catalog, "p", last).unwrap();
        let now = at("2025-03-11T09:00:00+00:00");
        let got = reference_time(
            &catalog,
            "schedule.p.last_run",
            "schedule.p.first_seen",
            false,
            &now,
            true,
            false,
        )
        .unwrap();
        assert_eq!(got, Some(last));
        assert_eq!(
            catalog.meta("schedule.p.last_run").unwrap().unwrap(),
            last.as_second().to_string()
        );
    }

    #[test]
    fn a_schedule_without_initial_run_runs_at_its_first_daily_time() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, _thread) = CatalogHandle::spawn(&dir.path().join("catalog.db")).unwrap();
        let s = Schedule {
            daily_at: parse_hhmm("23:00").unwrap(),
            blackout: Vec::new(),
            initial_run: false,
        };
        let due = |now: &str| {
            let now = at(now);
            is_due(
                &s,
                policy_reference(&catalog, "p", &s, &now, true).unwrap(),
                &now,
            )
        };
        // First seen at 10:00 (a check every few seconds from then on).
        assert!(!due("2025-03-10T10:00:00+00:00"));
        assert!(!due("2025-03-10T22:59:58+00:00"));
        // A check a few seconds after 23:00 still finds it due.
        assert!(due("2025-03-10T23:00:03+00:00"));
        assert_eq!(
            catalog.meta("schedule.p.first_seen").unwrap().unwrap(),
            at("2025-03-10T10:00:00+00:00")
                .timestamp()
                .as_second()
                .to_string()
        );
        // Once it ran, the last run counts; `show` (record = false) records nothing.
        record_run(&catalog, "p", at("2025-03-10T23:00:03+00:00").timestamp()).unwrap();
        assert!(!due("2025-03-11T12:00:00+00:00"));
        assert!(
            policy_reference(&catalog, "q", &s, &at("2025-03-11T12:00:00+00:00"), false)
                .unwrap()
                .is_none()
        );
        assert!(catalog.meta("schedule.q.first_seen").unwrap().is_none());
    }

    /// Every look that finds a run due before it is recorded asks for the same job (a
    /// failed record must not queue the policy again a minute later); the next run, once
    /// this one is recorded, is another job.
    #[test]
    fn a_due_run_keeps_its_job_key_until_it_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, _thread) = CatalogHandle::spawn(&dir.path().join("catalog.db")).unwrap();
        let toml = dir.path().join("agent.toml");
        std::fs::write(
            &toml,
            r#"
[vcenter]
url = "https://vc.example.com/sdk"
user = "backup@vsphere.local"
password_file = "/etc/vadp-agent/credentials"
[vddk]
libdir = "/opt/vmware-vix-disklib-distrib"
[repository]
path = "/var/lib/vadp-agent/repo"
[api]
token_file = "/etc/vadp-agent/token"
[policy.nightly]
vms = ["ns/web-1"]
daily_at = "23:00"
initial_run = false
"#,
        )
        .unwrap();
        let config = AgentConfig::load_with_env(&toml, std::iter::empty()).unwrap();
        let p = &config.policy["nightly"];
        let keys = |now: &str| -> Vec<String> {
            due_policies(&config, &catalog, &at(now))
                .unwrap()
                .iter()
                .map(|run| policy_request(run, p).idempotency_key.unwrap())
                .collect()
        };
        assert!(keys("2025-03-10T10:00:00+00:00").is_empty());
        let first = keys("2025-03-10T23:00:05+00:00");
        assert_eq!(first.len(), 1);
        // Not recorded (the catalog write failed): minutes later, the same job ...
        assert_eq!(keys("2025-03-10T23:03:40+00:00"), first);
        // ... unless the policy changed meanwhile: another request, another key.
        let mut changed = p.clone();
        changed.vms.push("ns/web-2".into());
        let other = due_policies(&config, &catalog, &at("2025-03-10T23:04:00+00:00"))
            .unwrap()
            .iter()
            .map(|run| policy_request(run, &changed).idempotency_key.unwrap())
            .collect::<Vec<_>>();
        assert_ne!(other, first);
        record_run(
            &catalog,
            "nightly",
            at("2025-03-10T23:03:40+00:00").timestamp(),
        )
        .unwrap();
        assert!(keys("2025-03-11T12:00:00+00:00").is_empty());
        let next = keys("2025-03-11T23:00:10+00:00");
        assert_eq!(next.len(), 1);
        assert_ne!(next, first);
    }
}
