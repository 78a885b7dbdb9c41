//! The body of the daemon's jobs. A backup: the API's [`BackupJobRequest`] becomes an
//! engine [`BackupRequest`], the engine's events go to the job's event stream, its report
//! becomes the job's result; a job from a scheduling policy with a retention prunes that
//! policy's VMs after it succeeded. A restore: the API's [`RestoreJobRequest`] becomes an
//! engine [`RestoreRequest`] run with vAPI and Supervisor clients made for the job; it
//! succeeds when the VM is registered and the Supervisor shows what seed 001 §8 predicts.
//! A verify: the repository's verify on its own thread, cancellable between chunks.

use std::sync::Arc;

use plugin_api::types::{
    BackupJobRequest, JobKind, JobState, RestoreJobRequest, VerifyJobRequest, VerifyResult,
};

use super::maintenance;
use super::queue::{BodyFuture, JobBody, Outcome, RunContext};
use crate::config::{AgentConfig, read_secret_file};
use crate::engine::restore::{
    self, RestoreEnv, RestoreError, RestoreEvent, RestoreObserver, RestoreRequest, SupervisorLink,
    SupervisorTarget,
};
use crate::engine::{
    self, BackupError, BackupEvent, BackupRequest, Environment, VmRequest, VmSelector,
};
use crate::ids::{DiskKey, RestorePointId};
use crate::repo::{RepairReport, RepoError, VerifyOptions, VerifyReport, VerifySubset};
use crate::vsphere::{Credentials, TlsVerification};

/// vCenter's address, rules and credentials, and the Supervisor's, from the configuration.
struct VcenterAccess {
    sdk: url::Url,
    tls: TlsVerification,
    credentials: Credentials,
    supervisor: SupervisorTarget,
}

/// How `config` reaches vCenter's vAPI and the Supervisor (reads its secret files: a
/// blocking call).
fn vcenter_access(c: &AgentConfig) -> Result<VcenterAccess, String> {
    let sdk: url::Url = c
        .vcenter
        .url
        .parse()
        .map_err(|e| format!("vcenter.url: {e}"))?;
    let thumbprint = |key: &str, tp: &str| {
        tp.parse()
            .map(TlsVerification::Thumbprint)
            .map_err(|e| format!("{key}: {e}"))
    };
    let tls = match (&c.vcenter.thumbprint, &c.vcenter.ca_file) {
        (Some(tp), _) => thumbprint("vcenter.thumbprint", tp)?,
        (None, Some(ca)) => TlsVerification::WithCaFile(ca.clone()),
        (None, None) => TlsVerification::SystemRoots,
    };
    let password = read_secret_file("vcenter.password_file", &c.vcenter.password_file)
        .map_err(|e| e.to_string())?;
    let token = c
        .supervisor
        .token_file
        .as_deref()
        .map(|f| {
            read_secret_file("supervisor.token_file", f)
                .map(|t| t.expose().to_owned())
                .map_err(|e| e.to_string())
        })
        .transpose()?;
    let supervisor = SupervisorTarget {
        url: c
            .supervisor
            .url
            .as_deref()
            .map(|u| u.parse().map_err(|e| format!("supervisor.url: {e}")))
            .transpose()?,
        tls: c
            .supervisor
            .thumbprint
            .as_deref()
            .map(|tp| thumbprint("supervisor.thumbprint", tp))
            .transpose()?,
        token,
        token_file: c.supervisor.token_file.clone(),
    };
    Ok(VcenterAccess {
        sdk,
        tls,
        credentials: Credentials::new(&c.vcenter.user, password.expose()),
        supervisor,
    })
}

/// The Supervisor link of a backup job run by the daemon or `schedule run-due`, from
/// `config` (a blocking call: it reads the secret files and a CA file); none with
/// `supervisor.keep_related = false`. A configuration that cannot name the Supervisor
/// costs the job only the VM Service VMs' VirtualMachineGroup and VirtualMachineServices:
/// the error is the warning to give.
///
/// # Errors
/// The warning's text.
pub fn supervisor_link(config: &AgentConfig) -> Result<Option<Arc<SupervisorLink>>, String> {
    if !config.supervisor.keep_related {
        return Ok(None);
    }
    vcenter_access(config)
        .and_then(|a| {
            SupervisorLink::new(&a.sdk, &a.tls, a.credentials, a.supervisor)
                .map_err(|e| engine::error_chain(&e))
        })
        .map(|l| Some(Arc::new(l)))
        .map_err(|e| {
            format!(
                "the Supervisor is not set up for this job ({e}): its VM Service VMs' \
                 VirtualMachineGroup and VirtualMachineServices are not kept"
            )
        })
}

/// How long a backup job waits, in all, for VMs another job is working on before it fails.
pub const VM_BUSY_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Turns an API request into the engine's, refusing what the engine would refuse later.
///
/// # Errors
/// A message naming the bad field.
pub fn engine_request(
    r: &BackupJobRequest,
    limits: engine::Limits,
) -> Result<BackupRequest, String> {
    if r.vms.is_empty() {
        return Err("vms: give at least one VM".into());
    }
    // The same VM named twice the same way (the engine refuses it named two ways, once
    // it has resolved both).
    if let Some((i, v)) = r
        .vms
        .iter()
        .enumerate()
        .find(|(i, v)| r.vms[..*i].iter().any(|w| w.vm.trim() == v.vm.trim()))
    {
        return Err(format!("vms: {} is given twice (entry {})", v.vm, i + 1));
    }
    let vms = r
        .vms
        .iter()
        .map(|v| {
            v.vm.parse::<VmSelector>()
                .map(|selector| VmRequest {
                    selector,
                    quiesce: v.quiesce,
                })
                .map_err(|e| format!("vms: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BackupRequest {
        group: r.group.clone(),
        independent: r.independent,
        vms,
        force_full: r.full,
        require_vmservice: r.require_vmservice,
        prepare_access: r.prepare_access,
        limits,
        places: None,
        busy_vm_wait: VM_BUSY_WAIT_MAX,
        snapshot_gate: None,
        supervisor: None,
        slot: None,
    })
}

/// The schedule of the policy whose run `origin` (`schedule:<policy>`) is; `None` for an
/// API job or a policy no longer configured.
fn policy_schedule(config: &AgentConfig, origin: &str) -> Option<crate::daemon::Schedule> {
    let name = origin.strip_prefix("schedule:")?;
    config.policy.get(name)?.schedule(name).ok()
}

/// The gate that keeps a policy's snapshots out of its blackout windows, also when its run
/// started before a window and reached its snapshots inside it.
#[must_use]
pub fn blackout_gate(schedule: crate::daemon::Schedule) -> engine::SnapshotGate {
    engine::SnapshotGate(Arc::new(move || {
        crate::daemon::blocked_until(&schedule, &crate::daemon::clock::vcenter_now())
    }))
}

/// What a verify request (`POST /v1/repository/verify` or `/v1/jobs/verify`) selects: its
/// `subset` (`"N/T"`) and its restore `points`, parsed.
///
/// # Errors
/// A malformed subset or point id, with what was expected.
pub fn verify_selection(
    subset: Option<&str>,
    points: &[String],
) -> Result<(Option<VerifySubset>, Vec<RestorePointId>), String> {
    let subset = subset.map(str::parse).transpose()?;
    let points = points
        .iter()
        .map(|p| {
            p.parse::<RestorePointId>()
                .map_err(|e| format!("points: {p:?}: {e}"))
        })
        .collect::<Result<_, String>>()?;
    Ok((subset, points))
}

/// The API's view of a verify and its repair.
#[must_use]
pub fn verify_result(report: &VerifyReport, repaired: Option<&RepairReport>) -> VerifyResult {
    VerifyResult {
        repair: repaired.and_then(|r| serde_json::to_value(r).ok()),
        ok: report.is_ok(),
        points: report.points as u64,
        chunks: report.chunks as u64,
        chunks_read: report.chunks_read as u64,
        subset: report.subset.map(|s| s.to_string()),
        problems: report
            .problems
            .iter()
            .filter_map(|p| serde_json::to_value(p).ok())
            .collect(),
    }
}

/// Turns an API restore request into the engine's, one per point: `point`, then
/// `with_points` (a group restore, seed 001 §10.5), writing disks within `limits` (the
/// caller shares the per-host and per-datastore ones through `places`).
///
/// # Errors
/// A message naming the bad field.
pub fn restore_requests(
    r: &RestoreJobRequest,
    limits: engine::Limits,
) -> Result<Vec<RestoreRequest>, String> {
    let point = r
        .point
        .parse::<RestorePointId>()
        .map_err(|e| format!("point: {e}"))?;
    let mut points = vec![point];
    for p in &r.with_points {
        let p = p
            .parse::<RestorePointId>()
            .map_err(|e| format!("with_points: {p:?}: {e}"))?;
        if points.contains(&p) {
            return Err(format!("with_points: point {p} is given twice"));
        }
        points.push(p);
    }
    // Refused now rather than by the job (whose engine refuses it too).
    if points.len() > 1
        && (!r.disks.is_empty() || r.mode == plugin_api::types::RestoreMode::DiskOnly)
    {
        return Err(
            "with_points: a restore of several points restores whole VMs; a disk-only \
             restore takes one point"
                .into(),
        );
    }
    let disks: Vec<DiskKey> = r.disks.iter().copied().map(DiskKey).collect();
    let auto_registration_wait = r.auto_registration_wait_secs.map_or(
        restore::AUTO_REGISTRATION_WAIT,
        std::time::Duration::from_secs,
    );
    restore::check_request(
        r.mode,
        &disks,
        r.datastore.as_deref(),
        auto_registration_wait,
    )?;
    let subnet_map = r
        .subnet_map
        .iter()
        .map(|m| restore::subnet_mapping(&m.from, &m.to).map_err(|e| format!("subnet_map: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(points
        .into_iter()
        .map(|point| RestoreRequest {
            point,
            namespace: r.namespace.clone(),
            mode: r.mode,
            disks: disks.clone(),
            subnet_map: subnet_map.clone(),
            datastore: r.datastore.clone(),
            dry_run: r.dry_run,
            verify_first: r.verify_first,
            auto_registration_wait,
            recreate_related: r.recreate_related,
            limits,
            places: None,
        })
        .collect())
}

/// Runs backups and restores with the daemon's environment.
#[derive(Debug)]
pub struct BackupJobs {
    /// vCenter, VDDK, repository.
    pub env: Environment,
    /// The configuration (limits, policies' retention).
    pub config: Arc<AgentConfig>,
    /// The per-host and per-datastore read limits, shared by every job.
    pub places: Arc<engine::PlaceLimits>,
}

impl JobBody for Arc<BackupJobs> {
    fn run(&self, ctx: RunContext) -> BodyFuture {
        let me = Arc::clone(self);
        Box::pin(async move { me.run_job(ctx).await })
    }

    /// A policy's run that waited in the queue into one of the policy's blackout windows
    /// starts when the window ends (the windows say when no run starts, not only when none
    /// is queued).
    fn may_start(&self, origin: &str) -> bool {
        let Some(schedule) = policy_schedule(&self.config, origin) else {
            return true;
        };
        match crate::daemon::blocked_until(&schedule, &crate::daemon::clock::vcenter_now()) {
            None => true,
            Some(end) => {
                tracing::debug!(origin = %origin, until = %end, "the scheduled run waits for the end of its blackout window");
                false
            }
        }
    }
}

fn failed(error: String) -> Outcome {
    Outcome {
        state: JobState::Failed,
        error: Some(error),
        result: None,
    }
}

impl BackupJobs {
    async fn run_job(&self, ctx: RunContext) -> Outcome {
        match ctx.kind {
            JobKind::Backup => {}
            JobKind::Restore => return self.run_restore(ctx).await,
            JobKind::Verify => return self.run_verify(ctx).await,
            JobKind::Unknown => return failed("a job of an unknown kind".into()),
        }
        let request: BackupJobRequest = match serde_json::from_value(ctx.request.clone()) {
            Ok(r) => r,
            Err(e) => return failed(format!("stored request: {e}")),
        };
        let mut request = match engine_request(&request, self.config.limits.engine()) {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        request.snapshot_gate = policy_schedule(&self.config, &ctx.origin).map(blackout_gate);
        request.places = Some(Arc::clone(&self.places));
        // A wait for a busy VM or a blackout window's end lends the job's slot to the queue.
        request.slot = Some(Arc::new(ctx.slot.clone()));
        // The VM Service VMs' VirtualMachineGroup and VirtualMachineServices are kept with
        // their points when the Supervisor can be reached; a configuration that cannot
        // name it loses only them (a warning), never the backup.
        // Off the runtime: it reads the secret files and a CA file.
        let config = Arc::clone(&self.config);
        let link = match tokio::task::spawn_blocking(move || supervisor_link(&config)).await {
            Ok(Ok(l)) => l,
            Ok(Err(message)) => {
                tracing::warn!("{message}");
                ctx.events
                    .emit(serde_json::json!({"event": "warning", "message": message}));
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "setting up the Supervisor link");
                None
            }
        };
        request.supervisor.clone_from(&link);
        let sink = ctx.events.clone();
        let observer: engine::Observer = Arc::new(move |e: &BackupEvent| {
            if let Ok(v) = serde_json::to_value(e) {
                sink.emit(v);
            }
        });
        let result = engine::run_backup(&self.env, request, ctx.cancel.clone(), observer).await;
        if let Some(l) = &link {
            l.close().await;
        }
        // A run that committed a point applies the policy's retention, also when some of
        // its VMs failed: those keep every point (see `maintenance::apply_retention`).
        let committed = result
            .as_ref()
            .is_ok_and(engine::BackupReport::committed_any);
        let failed_vms = result
            .as_ref()
            .map(engine::BackupReport::failed_vms)
            .unwrap_or_default();
        // Cancelled once its snapshots were taken, a job ends with a report whose VMs
        // failed for the cancellation (and those that committed before it, their points):
        // it was cancelled, not failed.
        let cancelled = ctx.cancel.is_cancelled();
        let outcome = match result {
            Ok(report) => Outcome {
                state: match (report.succeeded, cancelled) {
                    (true, _) => JobState::Succeeded,
                    (false, true) => JobState::Cancelled,
                    (false, false) => JobState::Failed,
                },
                error: (!report.succeeded).then(|| {
                    let failed: Vec<String> = report
                        .vms
                        .iter()
                        .filter_map(|v| v.error.as_ref().map(|e| format!("{}: {e}", v.name)))
                        .collect();
                    if cancelled {
                        format!(
                            "cancelled: {} VM(s) did not finish: {}",
                            failed.len(),
                            failed.join("; ")
                        )
                    } else {
                        format!("{} VM(s) failed: {}", failed.len(), failed.join("; "))
                    }
                }),
                result: serde_json::to_value(&report).ok(),
            },
            Err(BackupError::Cancelled) => Outcome {
                state: JobState::Cancelled,
                error: Some("cancelled".into()),
                result: None,
            },
            Err(e) => failed(engine::error_chain(&e)),
        };
        if committed && let Some(policy) = ctx.origin.strip_prefix("schedule:") {
            self.prune_policy(policy, failed_vms).await;
        }
        outcome
    }

    /// How this daemon reaches vCenter's vAPI and the Supervisor, from the configuration
    /// (its secret files read on a blocking thread).
    async fn vcenter_access(&self) -> Result<VcenterAccess, String> {
        let config = Arc::clone(&self.config);
        tokio::task::spawn_blocking(move || vcenter_access(&config))
            .await
            .map_err(|e| format!("reading the secret files: {e}"))?
    }

    /// The vAPI and Supervisor clients of one restore, from the configuration.
    async fn restore_env(&self) -> Result<RestoreEnv, String> {
        let a = self.vcenter_access().await?;
        RestoreEnv::connect(
            self.env.clone(),
            &a.sdk,
            &a.tls,
            a.credentials,
            a.supervisor,
        )
        .await
        .map_err(|e| engine::error_chain(&e))
    }

    async fn run_restore(&self, ctx: RunContext) -> Outcome {
        let mut requests = match serde_json::from_value::<RestoreJobRequest>(ctx.request.clone())
            .map_err(|e| format!("stored request: {e}"))
            .and_then(|r| restore_requests(&r, self.config.limits.engine()))
        {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        // The per-host and per-datastore limits shared with the daemon's other jobs (a
        // restore's writes count as a backup's reads do).
        for r in &mut requests {
            r.places = Some(Arc::clone(&self.places));
        }
        let renv = match self.restore_env().await {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let sink = ctx.events.clone();
        let observer: RestoreObserver = Arc::new(move |e: &RestoreEvent| {
            if let Ok(v) = serde_json::to_value(e) {
                sink.emit(v);
            }
        });
        let cancel = ctx.cancel.clone();
        // One point; or several, as one application (seed 001 §10.5), whose group report
        // is the result whatever the end.
        let result = match requests.as_slice() {
            [one] => restore::run_restore(&renv, one, observer, cancel)
                .await
                .map(|report| {
                    let problems = report
                        .verification
                        .as_ref()
                        .map(|v| v.problems.clone())
                        .unwrap_or_default();
                    // Restored, but its registration (or the check after it) did not
                    // finish: the report is the result all the same.
                    let (stopped, cancelled) = report
                        .unfinished
                        .as_ref()
                        .map_or((None, false), |u| (Some(u.error.clone()), u.cancelled));
                    (
                        stopped,
                        problems,
                        cancelled,
                        serde_json::to_value(&report).ok(),
                    )
                }),
            several => restore::run_group_restore(&renv, several, observer, cancel)
                .await
                .map(|report| {
                    let problems = report
                        .vms
                        .iter()
                        .flat_map(|r| r.verification.iter().flat_map(|v| v.problems.clone()))
                        .chain(report.problems.iter().cloned())
                        .collect();
                    let stopped = report.error.as_ref().map(|e| format!("stopped: {e}"));
                    (
                        stopped,
                        problems,
                        report.cancelled,
                        serde_json::to_value(&report).ok(),
                    )
                }),
        };
        let _ = renv.vapi.logout().await;
        match result {
            Ok((stopped, problems, cancelled, result)) => {
                let error = stopped.or_else(|| {
                    (!problems.is_empty())
                        .then(|| format!("the Supervisor shows: {}", problems.join("; ")))
                });
                Outcome {
                    state: match (&error, cancelled) {
                        (_, true) => JobState::Cancelled,
                        (None, false) => JobState::Succeeded,
                        (Some(_), false) => JobState::Failed,
                    },
                    error,
                    result,
                }
            }
            Err(RestoreError::Engine(BackupError::Cancelled)) => Outcome {
                state: JobState::Cancelled,
                error: Some("cancelled".into()),
                result: None,
            },
            Err(e) => failed(engine::error_chain(&e)),
        }
    }

    /// A verify job: the repository's verify on a thread of its own, its progress as
    /// `verify_progress` events, stopped between chunks when the job is cancelled.
    // `RepoError` names what failed and is larger than clippy's default (see `crate::repo`).
    #[allow(clippy::result_large_err)]
    async fn run_verify(&self, ctx: RunContext) -> Outcome {
        let request: VerifyJobRequest = match serde_json::from_value(ctx.request.clone()) {
            Ok(r) => r,
            Err(e) => return failed(format!("stored request: {e}")),
        };
        let (subset, points) = match verify_selection(request.subset.as_deref(), &request.points) {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let (repo, events, cancel) = (Arc::clone(&self.env.repo), ctx.events, ctx.cancel);
        let verified = super::on_thread("verify", move || {
            let stop = || cancel.is_cancelled();
            let options = VerifyOptions {
                subset,
                repair: request.repair,
                stop: Some(&stop),
                points,
            };
            let mut progress = |done: u64, total: u64| {
                events.emit(serde_json::json!({
                    "event": "verify_progress",
                    "chunks_done": done,
                    "chunks_total": total,
                }));
            };
            repo.verify_with(&options, &mut progress)
        })
        .await;
        match verified {
            Ok(Ok((report, repaired))) => Outcome {
                state: if report.is_ok() {
                    JobState::Succeeded
                } else {
                    JobState::Failed
                },
                error: (!report.is_ok())
                    .then(|| format!("verify found {} problem(s)", report.problems.len())),
                result: serde_json::to_value(verify_result(&report, repaired.as_ref())).ok(),
            },
            Ok(Err(RepoError::Cancelled)) => Outcome {
                state: JobState::Cancelled,
                error: Some("cancelled".into()),
                result: None,
            },
            Ok(Err(e)) => failed(engine::error_chain(&e)),
            Err(e) => failed(e),
        }
    }

    /// Applies the retention of `policy`, every point of the VMs the run `failed` kept (on
    /// the blocking pool: it takes the repository lock and calls the catalog). The daemon's maintenance loop collects
    /// the garbage once no job runs.
    async fn prune_policy(&self, policy: &str, failed: Vec<(crate::ids::VmMoref, String)>) {
        let Some(p) = self.config.policy.get(policy).cloned() else {
            return;
        };
        let repo = Arc::clone(&self.env.repo);
        let name = policy.to_owned();
        let vcenter = self.env.soap.service_content().about.instance_uuid.clone();
        let result = tokio::task::spawn_blocking(move || {
            // Points are stamped with vCenter's time; ages are measured by it too.
            let now = crate::daemon::clock::vcenter_now().timestamp().as_second();
            maintenance::apply_retention(&repo, &name, &p, &vcenter, now, &failed)
        })
        .await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(policy = %policy, error = %e, "retention failed"),
            Err(e) => tracing::warn!(policy = %policy, error = %e, "retention failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::restore_requests;

    /// The one engine request of a request without `with_points`.
    fn restore_request(
        r: &plugin_api::types::RestoreJobRequest,
    ) -> Result<crate::engine::restore::RestoreRequest, String> {
        let mut all = restore_requests(r, crate::engine::Limits::default())?;
        assert_eq!(all.len(), 1);
        Ok(all.swap_remove(0))
    }

    /// `with_points` makes one engine request per point, `point` first, with the same
    /// options; a point twice, a malformed one, or disks with several points are refused.
    #[test]
    fn with_points_make_a_group_of_requests() {
        let (a, b) = (
            "0b7e8c52-1111-4222-8333-944455556666",
            "0b7e8c52-1111-4222-8333-944455556667",
        );
        let request = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"point": a, "with_points": [b], "dry_run": true});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<plugin_api::types::RestoreJobRequest>(v).unwrap()
        };
        let group = restore_requests(
            &request(serde_json::json!({})),
            crate::engine::Limits::default(),
        )
        .unwrap();
        let points: Vec<String> = group.iter().map(|r| r.point.to_string()).collect();
        assert_eq!(points, [a, b]);
        assert!(group.iter().all(|r| r.dry_run));
        let twice = restore_requests(
            &request(serde_json::json!({"with_points": [b, a]})),
            crate::engine::Limits::default(),
        );
        assert!(twice.unwrap_err().contains("given twice"));
        let bad = restore_requests(
            &request(serde_json::json!({"with_points": ["nope"]})),
            crate::engine::Limits::default(),
        );
        assert!(bad.unwrap_err().starts_with("with_points: \"nope\""));
        let disks = restore_requests(
            &request(serde_json::json!({"disks": [2000]})),
            crate::engine::Limits::default(),
        );
        assert!(disks.unwrap_err().contains("disk-only"));
        // Without, one request, as before.
        let one = request(serde_json::json!({"with_points": []}));
        assert_eq!(
            restore_requests(&one, crate::engine::Limits::default())
                .unwrap()
                .len(),
            1
        );
        assert_eq!(restore_request(&one).unwrap().point.to_string(), a);
    }

    /// A VM named twice in a backup request is a 400, not a job the engine refuses.
    #[test]
    fn a_backup_request_naming_a_vm_twice_is_refused() {
        let r: plugin_api::types::BackupJobRequest = serde_json::from_value(
            serde_json::json!({"vms": [{"vm": "vm-1"}, {"vm": "ns/web"}, {"vm": "vm-1"}]}),
        )
        .unwrap();
        let e = super::engine_request(&r, crate::engine::Limits::default()).unwrap_err();
        assert_eq!(e, "vms: vm-1 is given twice (entry 3)");
        let r: plugin_api::types::BackupJobRequest =
            serde_json::from_value(serde_json::json!({"vms": [{"vm": "vm-1"}, {"vm": "vm-2"}]}))
                .unwrap();
        assert!(super::engine_request(&r, crate::engine::Limits::default()).is_ok());
    }

    /// A request that contradicts itself is refused where it arrives (the API's 400),
    /// naming the field, rather than queued for its job to fail.
    #[test]
    fn contradictory_restore_requests_are_refused_naming_the_field() {
        let refused = |v: serde_json::Value| {
            let mut r = serde_json::json!({"point": "0b7e8c52-1111-4222-8333-944455556666"});
            r.as_object_mut()
                .unwrap()
                .extend(v.as_object().unwrap().clone());
            let r: plugin_api::types::RestoreJobRequest = serde_json::from_value(r).unwrap();
            restore_request(&r).map(|_| ()).unwrap_err()
        };
        for (request, expected) in [
            (
                serde_json::json!({"mode": "new", "disks": [2000]}),
                "disks: disks are chosen only",
            ),
            (
                serde_json::json!({"mode": "existing", "disks": [2000]}),
                "with mode existing",
            ),
            (
                serde_json::json!({"mode": "disk-only"}),
                "disks: a disk-only restore needs",
            ),
            (
                serde_json::json!({"mode": "disk-only", "disks": [2000, 2001, 2000]}),
                "disk 2000 is given twice",
            ),
            (
                serde_json::json!({"mode": "existing", "datastore": "ds2"}),
                "datastore: ds2 places",
            ),
            (
                serde_json::json!({"mode": "disk-only", "disks": [2001], "datastore": "ds2"}),
                "mode disk-only writes",
            ),
            (
                serde_json::json!({"auto_registration_wait_secs": 86_400}),
                "auto_registration_wait_secs: 86400 s",
            ),
        ] {
            let e = refused(request.clone());
            assert!(e.contains(expected), "{request}: {e}");
        }
        // What is coherent passes (auto decides with the namespace, at plan time).
        for ok in [
            serde_json::json!({"mode": "auto", "disks": [2000]}),
            serde_json::json!({"mode": "new", "datastore": "ds2"}),
            serde_json::json!({"mode": "disk-only", "disks": [2000, 2001]}),
            serde_json::json!({"auto_registration_wait_secs": 3600}),
        ] {
            let mut r = serde_json::json!({"point": "0b7e8c52-1111-4222-8333-944455556666"});
            r.as_object_mut()
                .unwrap()
                .extend(ok.as_object().unwrap().clone());
            let r: plugin_api::types::RestoreJobRequest = serde_json::from_value(r).unwrap();
            assert!(restore_request(&r).is_ok(), "{ok}");
        }
    }

    /// The API's registration wait reaches the engine; without it, the default.
    #[test]
    fn the_api_registration_wait_reaches_the_engine() {
        let mut r: plugin_api::types::RestoreJobRequest =
            serde_json::from_value(serde_json::json!({
                "point": "0b7e8c52-1111-4222-8333-944455556666",
            }))
            .unwrap();
        assert_eq!(
            restore_request(&r).unwrap().auto_registration_wait,
            crate::engine::restore::AUTO_REGISTRATION_WAIT
        );
        r.auto_registration_wait_secs = Some(5);
        assert_eq!(
            restore_request(&r).unwrap().auto_registration_wait,
            std::time::Duration::from_secs(5)
        );
    }

    /// The API's datastore reaches the engine.
    #[test]
    fn the_api_datastore_reaches_the_engine() {
        let r: plugin_api::types::RestoreJobRequest = serde_json::from_value(serde_json::json!({
            "point": "0b7e8c52-1111-4222-8333-944455556666",
            "datastore": "vsanDatastore",
        }))
        .unwrap();
        assert_eq!(
            restore_request(&r).unwrap().datastore.as_deref(),
            Some("vsanDatastore")
        );
    }
}
