//! The body of a backup job in the daemon: the API's [`BackupJobRequest`] becomes an
//! engine [`BackupRequest`], the engine's events go to the job's event stream, its report
//! becomes the job's result. A job from a scheduling policy with a retention prunes that
//! policy's VMs after it succeeded.

use std::sync::Arc;

use plugin_api::types::{BackupJobRequest, JobKind, JobState};

use super::queue::{BodyFuture, JobBody, Outcome, RunContext};
use crate::config::AgentConfig;
use crate::engine::{
    self, BackupError, BackupEvent, BackupRequest, Environment, VmRequest, VmSelector,
};

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
        vms,
        force_full: r.full,
        require_vmservice: r.require_vmservice,
        prepare_access: r.prepare_access,
        limits,
    })
}

/// Runs backups with the daemon's environment.
#[derive(Debug)]
pub struct BackupJobs {
    /// vCenter, VDDK, repository.
    pub env: Environment,
    /// The configuration (limits, policies' retention).
    pub config: Arc<AgentConfig>,
}

impl JobBody for Arc<BackupJobs> {
    fn run(&self, ctx: RunContext) -> BodyFuture {
        let me = Arc::clone(self);
        Box::pin(async move { me.run_job(ctx).await })
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
        if ctx.kind != JobKind::Backup {
            return failed("restore jobs are not wired to the restore engine yet".into());
        }
        let request: BackupJobRequest = match serde_json::from_value(ctx.request.clone()) {
            Ok(r) => r,
            Err(e) => return failed(format!("stored request: {e}")),
        };
        let request = match engine_request(&request, self.config.limits.engine()) {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let sink = ctx.events.clone();
        let observer: engine::Observer = Arc::new(move |e: &BackupEvent| {
            if let Ok(v) = serde_json::to_value(e) {
                sink.emit(v);
            }
        });
        let result = engine::run_backup(&self.env, request, ctx.cancel.clone(), observer).await;
        let outcome = match result {
            Ok(report) => Outcome {
                state: if report.succeeded {
                    JobState::Succeeded
                } else {
                    JobState::Failed
                },
                error: (!report.succeeded).then(|| {
                    let failed: Vec<String> = report
                        .vms
                        .iter()
                        .filter_map(|v| v.error.as_ref().map(|e| format!("{}: {e}", v.name)))
                        .collect();
                    format!("{} VM(s) failed: {}", failed.len(), failed.join("; "))
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
        if outcome.state == JobState::Succeeded
            && let Some(policy) = ctx.origin.strip_prefix("schedule:")
        {
            self.prune_policy(policy).await;
        }
        outcome
    }

    /// Applies the retention of `policy` to its VMs' points.
    async fn prune_policy(&self, policy: &str) {
        let Some(p) = self.config.policy.get(policy) else {
            return;
        };
        let Some(retention) = p.retention else {
            return;
        };
        let Ok(selectors) = p.selectors(policy) else {
            return;
        };
        let repo = Arc::clone(&self.env.repo);
        let name = policy.to_owned();
        let result = tokio::task::spawn_blocking(move || {
            let now = jiff::Timestamp::now().as_second();
            repo.prune_where(&retention.policy(), now, false, |vm| {
                selectors.iter().any(|(s, _)| match s {
                    VmSelector::Moref(m) => *m == vm.moref,
                    VmSelector::Namespaced { namespace, name } => {
                        vm.namespace.as_deref() == Some(namespace) && vm.name == *name
                    }
                })
            })
            .map_err(|e| engine::error_chain(&e))
        })
        .await;
        match result {
            Ok(Ok(d)) => tracing::info!(
                policy = %name,
                removed = d.iter().filter(|d| !d.keep).count(),
                kept = d.iter().filter(|d| d.keep).count(),
                "retention applied"
            ),
            Ok(Err(e)) => {
                tracing::warn!(policy = %name, error = %e, "retention failed")
            }
            Err(e) => tracing::warn!(policy = %name, error = %e, "retention failed"),
        }
    }
}
