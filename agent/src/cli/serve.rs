//! `vadp-agent serve` (the daemon) and `vadp-agent schedule run-due` (the timer's oneshot
//! for administrators without the daemon). Both read `/etc/vadp-agent/agent.toml`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use super::backup::{ConnectionArgs, environment};
use crate::api::{AppState, Listeners};
use crate::config::{AgentConfig, DEFAULT_PATH, read_secret_file};
use crate::daemon::backup_job::{BackupJobs, engine_request};
use crate::daemon::{Queue, maintenance, scheduler};
use crate::engine::{self, BackupEvent, Environment};

/// Where the configuration is.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The configuration file (TOML); `VADP_AGENT_<SECTION>__<KEY>` variables override it.
    #[arg(long = "config", env = "VADP_AGENT_CONFIG", default_value = DEFAULT_PATH)]
    pub path: PathBuf,
}

/// `vadp-agent serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `vadp-agent schedule …`.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Run the policies that are due now, once each, then exit (for a systemd timer).
    RunDue(ConfigArgs),
    /// Show each policy's last and next run.
    Show(ConfigArgs),
}

fn load(path: &std::path::Path) -> anyhow::Result<AgentConfig> {
    Ok(AgentConfig::load(path)?)
}

/// Checks the password file and sets up VDDK, the runtime, vCenter and the repository.
fn start(config: &AgentConfig) -> anyhow::Result<(tokio::runtime::Runtime, Environment)> {
    // Refuse a password file others can read before anything else.
    read_secret_file("vcenter.password_file", &config.vcenter.password_file)?;
    let conn = ConnectionArgs {
        vcenter: config
            .vcenter
            .url
            .parse()
            .context("configuration key vcenter.url")?,
        user: config.vcenter.user.clone(),
        password_file: Some(config.vcenter.password_file.clone()),
        thumbprint: config.vcenter.thumbprint.clone(),
        ca_file: config.vcenter.ca_file.clone(),
        datacenter: config.vcenter.datacenter.clone(),
        vddk_libdir: config.vddk.libdir.clone(),
        vddk_config: config.vddk.config.clone(),
        transports: config.vddk.transports.clone(),
    };
    environment(&conn, &config.repository.path)
}

/// Runs the daemon until SIGTERM or SIGINT.
///
/// # Errors
/// Configuration, set-up or listener failures (a failed job never stops the daemon).
pub fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Arc::new(load(&args.config.path)?);
    let token = read_secret_file("api.token_file", &config.api.token_file)?;
    let (rt, env) = start(&config)?;
    let listeners = Listeners {
        tcp: if config.api.listen.is_empty() {
            None
        } else {
            Some(
                config
                    .api
                    .listen
                    .parse()
                    .context("configuration key api.listen")?,
            )
        },
        socket: config.api.socket.clone(),
        tls: match (&config.api.tls_cert, &config.api.tls_key) {
            (Some(cert), Some(key)) => Some(crate::api::server_config(cert, key)?),
            _ => None,
        },
    };
    let result = rt.block_on(async {
        let body = Arc::new(BackupJobs {
            env: env.clone(),
            config: Arc::clone(&config),
            places: engine::PlaceLimits::new(config.limits.engine()),
        });
        // Undo what interrupted jobs left in vSphere before new work starts touching it:
        // the queue dispatches as soon as it starts, and a queued backup of a VM whose
        // snapshot is still being removed here would be refused.
        crate::daemon::maintenance::log_reconcile(
            "reconcile at start-up",
            &engine::reconcile(&env, &[], false).await,
            true,
        );
        let (queue, interrupted) = Queue::start(
            env.repo.catalog().clone(),
            Arc::new(body),
            config.limits.concurrent_jobs,
        )
        .await?;
        if !interrupted.is_empty() {
            tracing::warn!(jobs = ?interrupted, "jobs interrupted by the last stop, marked so");
        }
        let shutdown = CancellationToken::new();
        let state = Arc::new(AppState {
            queue: queue.clone(),
            env: env.clone(),
            token,
            limits: config.limits.engine(),
            policies: config.policy.keys().cloned().collect(),
            ready: AtomicBool::new(false),
            shutdown: shutdown.clone(),
        });
        let (s, q) = (shutdown.clone(), queue.clone());
        tokio::spawn(async move {
            super::wait_for_signal().await;
            tracing::info!("stopping: cancelling running jobs");
            s.cancel();
            // Now, not once the server has stopped: the server waits for its open
            // connections, and a client following a job's events keeps one open until the
            // job ends.
            q.shut_down();
            engine::pause_point("serve-stopping").await;
        });
        // The first comparison before the scheduler and maintenance act on the clock (a
        // boot before NTP set it is the case it is for); bounded, so that a slow vCenter
        // does not hold the start.
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(15),
            crate::daemon::clock::check(&env.soap),
        )
        .await;
        tokio::spawn(crate::daemon::clock::watch(
            env.soap.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(scheduler::run(
            Arc::clone(&config),
            env.repo.catalog().clone(),
            queue.clone(),
            shutdown.clone(),
        ));
        // Always: besides GC and the daily verify (each only when configured) it trims
        // the job history, which `job_history_days` bounds whatever the other settings.
        tokio::spawn(maintenance::run(
            Arc::clone(&env.repo),
            queue.clone(),
            config.maintenance.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(maintenance::reconcile_periodically(
            env.clone(),
            shutdown.clone(),
        ));
        let served = crate::api::serve(state, listeners, shutdown).await;
        queue.shut_down();
        // Give running jobs the chance to clean up (snapshots, EndAccess) before exiting.
        while queue.figures().1 > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        served.map_err(anyhow::Error::from)
    });
    let _ = rt.block_on(env.soap.logout());
    // The runtime's tasks (the queue's dispatcher among them) hold clones of the
    // environment: dropped with the runtime first, so that the last clone of VDDK, and
    // with it VixDiskLib_Exit, goes here, on the main thread (VDDK's rule), with `env`.
    drop(rt);
    drop(env);
    result.map(|()| ExitCode::SUCCESS)
}

/// Runs `vadp-agent schedule …`.
///
/// # Errors
/// Configuration and set-up failures. Exit code 2 when a due policy failed.
pub fn schedule(cmd: &ScheduleCommand, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        ScheduleCommand::Show(c) => show(&load(&c.path)?, json),
        ScheduleCommand::RunDue(c) => run_due(&load(&c.path)?, json),
    }
}

fn show(config: &AgentConfig, json: bool) -> anyhow::Result<ExitCode> {
    let repo = crate::repo::Repository::open(&config.repository.path)?;
    let now = jiff::Zoned::now();
    if let Some((next, subset)) = maintenance::verify_plan(&repo, &config.maintenance, &now)? {
        let subset = subset.map_or_else(|| "every chunk".to_owned(), |s| format!("subset {s}"));
        let last = maintenance::last_verify_summary(&repo)?;
        if json {
            say!(
                "{}",
                serde_json::json!({"verify": {"next_run": next.to_string(), "next_subset": subset, "last": last}})
            );
        } else {
            say!(
                "daily verify: next run {next} ({subset}); last: {}",
                last.map_or("never".into(), |l| format!(
                    "{} problem(s), {} of {} chunks re-read, {} s",
                    l.problems, l.chunks_read, l.chunks, l.seconds
                ))
            );
        }
    }
    for (name, p) in &config.policy {
        let last = scheduler::last_run(repo.catalog(), name)?;
        let schedule = p.schedule(name)?;
        let reference = scheduler::policy_reference(repo.catalog(), name, &schedule, &now, false)?;
        let next = crate::daemon::next_run(&schedule, reference, &now);
        if json {
            say!(
                "{}",
                serde_json::json!({"policy": name, "last_run": last.map(|t| t.to_string()), "next_run": next.to_string()})
            );
        } else {
            say!(
                "{name}: last run {}, next run {}",
                last.map_or("never".into(), |t| t.to_string()),
                next
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_due(config: &AgentConfig, json: bool) -> anyhow::Result<ExitCode> {
    let (rt, env) = start(config)?;
    rt.block_on(crate::daemon::clock::check(&env.soap));
    let now = crate::daemon::clock::vcenter_now();
    let due = scheduler::due_policies(config, env.repo.catalog(), &now)?;
    // A run that failed is run again once, `retry_failed_after_minutes` after it ended
    // (within two hours of that), as the daemon does, unless the policy is due anyway.
    let mut runs: Vec<(scheduler::DueRun, bool)> = due.into_iter().map(|r| (r, false)).collect();
    for (name, p) in &config.policy {
        if runs.iter().any(|(r, _)| &r.name == name) {
            continue;
        }
        if let Some((end, false)) = scheduler::failed_run(env.repo.catalog(), name)?
            && scheduler::retry_is_due(end, p.retry_failed_after(), now.timestamp().as_second())
        {
            tracing::info!(policy = %name, "its last run failed: running it again once");
            runs.push((
                scheduler::DueRun {
                    name: name.clone(),
                    after: scheduler::last_run(env.repo.catalog(), name)?,
                },
                true,
            ));
        }
    }
    let mut code = ExitCode::SUCCESS;
    if runs.is_empty() {
        tracing::info!("no policy is due");
    }
    // SIGTERM (`systemctl stop`, a reboot, the unit's timeout) or SIGINT cancels the run
    // in progress, so that it cleans up before the process exits.
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        rt.spawn(async move {
            super::wait_for_signal().await;
            tracing::warn!("interrupted: cancelling the scheduled run and cleaning up");
            stop.cancel();
        });
    }
    for (run, retry) in runs {
        let name = run.name.clone();
        let Some(p) = config.policy.get(&name) else {
            continue;
        };
        // Looked at again before each run: the runs before it may have taken until its
        // blackout window. The timer's next start runs it then.
        let schedule = p.schedule(&name)?;
        if let Some(end) =
            crate::daemon::blocked_until(&schedule, &crate::daemon::clock::vcenter_now())
        {
            tracing::info!(policy = %name, until = %end, "inside a blackout window: left for a later run");
            continue;
        }
        let mut request =
            engine_request(&scheduler::policy_request(&run, p), config.limits.engine())
                .map_err(anyhow::Error::msg)?;
        request.snapshot_gate = Some(crate::daemon::backup_job::blackout_gate(schedule));
        // As the daemon's runs: the VM Service VMs' group and services kept with the points.
        request.supervisor = crate::daemon::backup_job::supervisor_link(config)
            .inspect_err(|message| tracing::warn!("{message}"))
            .ok()
            .flatten();
        let link = request.supervisor.clone();
        let observer: engine::Observer = Arc::new(|e: &BackupEvent| {
            if let BackupEvent::VmFailed { name, error, .. } = e {
                tracing::warn!(vm = %name, error = %error, "VM failed");
            }
        });
        let report = rt.block_on(async {
            let r = engine::run_backup(&env, request, stop.clone(), observer).await;
            if let Some(l) = &link {
                l.close().await;
            }
            r
        });
        // A run stopped by a signal has cleaned up (its snapshots removed, its accesses
        // ended) and is not recorded: like a run killed part-way (a reboot), the timer's
        // next start runs it again. The policies after it are left for that start too.
        if stop.is_cancelled() {
            tracing::warn!(policy = %name, "stopped by a signal: the run is left for the timer's next start");
            return Ok(ExitCode::from(1));
        }
        // Recorded once the run has ended, whatever its outcome.
        scheduler::record_run(env.repo.catalog(), &name, now.timestamp())?;
        let succeeded = report.as_ref().is_ok_and(|r| r.succeeded);
        scheduler::record_outcome(
            env.repo.catalog(),
            &name,
            (!succeeded).then(|| {
                (
                    crate::daemon::clock::vcenter_now().timestamp().as_second(),
                    retry,
                )
            }),
        )?;
        match report {
            Ok(r) => {
                if json {
                    say!(
                        "{}",
                        serde_json::json!({"policy": name, "retry": retry, "report": r})
                    );
                } else {
                    say!(
                        "policy {name}: job {} {} ({} VM(s)){}",
                        r.job,
                        if r.succeeded { "succeeded" } else { "FAILED" },
                        r.vms.len(),
                        if retry {
                            ", a retry of the failed run"
                        } else {
                            ""
                        }
                    );
                }
                if !r.succeeded {
                    code = ExitCode::from(2);
                }
                // Retention once the run committed a point, also when some VMs failed:
                // those keep every point.
                if !r.committed_any() {
                    continue;
                }
                let failed = r.failed_vms();
                let vcenter = &env.soap.service_content().about.instance_uuid;
                if let Err(e) = maintenance::apply_retention(
                    &env.repo,
                    &name,
                    p,
                    vcenter,
                    now.timestamp().as_second(),
                    &failed,
                ) {
                    tracing::error!(policy = %name, error = %e, "retention failed");
                    code = ExitCode::from(2);
                }
            }
            Err(e) => {
                tracing::error!(policy = %name, error = %engine::error_chain(&e), "backup failed");
                code = ExitCode::from(2);
            }
        }
    }
    let _ = rt.block_on(env.soap.logout());
    if config.maintenance.auto_gc {
        match maintenance::collect_if_pending(&env.repo) {
            Ok(maintenance::GcAttempt::Busy) => {
                tracing::info!("garbage collection left for the next run: the repository is in use")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %engine::error_chain(&e), "garbage collection failed");
                code = ExitCode::from(2);
            }
        }
    }
    match maintenance::run_scheduled_verify(
        &env.repo,
        &config.maintenance,
        &crate::daemon::clock::vcenter_now(),
    ) {
        Ok(Some((report, _))) if !report.is_ok() => code = ExitCode::from(2),
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %engine::error_chain(&e), "daily verify failed");
            code = ExitCode::from(2);
        }
    }
    Ok(code)
}
