//! `vadp-agent restore`: a VM Service VM from a restore point into a Supervisor namespace
//! (the restore engine, `engine::restore`), with the pre-flight prediction printed before
//! anything changes; several points (one VM each) as one application, in the order of
//! seed 001 §10.5 (`engine::restore::run_group_restore`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::backup::{ConnectionArgs, LimitArgs, SupervisorArgs, environment, password, tls_of};
use super::progress::DiskBars;
use crate::engine::restore::{
    self, GroupRestoreReport, Prediction, RestoreEnv, RestoreEvent, RestoreMode, RestoreObserver,
    RestoreReport, RestoreRequest,
};
use crate::ids::{DiskKey, RestorePointId};
use crate::vsphere::{Credentials, SubnetMapping};

/// `vadp-agent restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The repository.
    #[arg(long, env = "VADP_REPO", value_name = "DIR")]
    pub repo: PathBuf,
    /// The restore point; repeat for the VMs of one application, restored as seed 001
    /// §10.5 orders it (every VM, then with --recreate-related their groups and services,
    /// then the checks).
    #[arg(long = "point", required = true)]
    pub points: Vec<RestorePointId>,
    /// The Supervisor namespace to restore into (default: the backup's).
    #[arg(long)]
    pub namespace: Option<String>,
    /// auto (what WCP will choose), new, existing (in place) or disk-only.
    #[arg(long, default_value = "auto")]
    pub mode: RestoreMode,
    /// Disk-only: a disk to restore (device key, e.g. 2001); repeat for several.
    #[arg(long = "disk")]
    pub disks: Vec<i32>,
    /// Network override OLD=NEW (subnets); `subnetset:OLD=subnetset:NEW` for subnet sets,
    /// an empty OLD subnet set meaning the namespace's default (VCF 9, NSX-VPC).
    #[arg(long = "subnet-map")]
    pub subnet_map: Vec<String>,
    /// The datastore to put a new VM's disks and `.vmx` on (default: each disk on the
    /// datastore it was backed up from). Restores to a new VM only.
    #[arg(long)]
    pub datastore: Option<String>,
    /// Print the prediction and stop before changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Read and check every chunk the disks need before changing anything (by default only
    /// that each chunk file exists): an in-place restore then cannot stop part-way on a
    /// damaged chunk.
    #[arg(long)]
    pub verify_first: bool,
    /// Seconds to wait for WCP's automatic registration (when the prediction says WCP
    /// registers the VM by itself) before calling registervm.
    #[arg(long, default_value_t = 120)]
    pub auto_registration_wait: u64,
    /// After registration (of every VM, with several points), create the
    /// VirtualMachineGroup and VirtualMachineServices the backup kept (seed 001 §10.5:
    /// groups, then services) where the namespace has none of that name; one already there
    /// is left as it is.
    #[arg(long)]
    pub recreate_related: bool,
    /// How many disks are written at once.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The Supervisor.
    #[command(flatten)]
    pub supervisor: SupervisorArgs,
    /// vCenter and VDDK.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// Parses one `--subnet-map OLD=NEW`.
///
/// # Errors
/// A message naming the malformed mapping.
pub fn parse_subnet_map(s: &str) -> Result<SubnetMapping, String> {
    let (from, to) = s
        .split_once('=')
        .ok_or_else(|| format!("--subnet-map {s:?}: expected OLD=NEW"))?;
    restore::subnet_mapping(from, to).map_err(|e| format!("--subnet-map {s:?}: {e}"))
}

/// Runs `vadp-agent restore`: 0 when the VM is registered and verified, 2 when the
/// Supervisor shows something other than seed 001 §8 predicts, 1 on errors (a refusal
/// before any change included). With several points: 0 when every VM is, 2 when one shows
/// a problem (or a kept object asked for was not created), 1 when one was not restored.
///
/// # Errors
/// Set-up failures, refusals and restore errors.
pub fn restore(args: &RestoreArgs, json: bool) -> anyhow::Result<ExitCode> {
    let subnet_map = args
        .subnet_map
        .iter()
        .map(|s| parse_subnet_map(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let disks: Vec<DiskKey> = args.disks.iter().copied().map(DiskKey).collect();
    restore::check_request(
        args.mode,
        &disks,
        args.datastore.as_deref(),
        std::time::Duration::from_secs(args.auto_registration_wait),
    )
    .map_err(|e| {
        // The API's field names, as the options spell them.
        let e = [
            ("disks:", "--disk:"),
            ("datastore:", "--datastore:"),
            ("auto_registration_wait_secs:", "--auto-registration-wait:"),
        ]
        .iter()
        .find_map(|(field, option)| e.strip_prefix(field).map(|rest| format!("{option}{rest}")))
        .unwrap_or(e);
        anyhow::anyhow!(e)
    })?;
    let supervisor = args.supervisor.target()?;
    let (rt, env) = environment(&args.connection, &args.repo)?;
    let tls = tls_of(&args.connection)?;
    let credentials = Credentials::new(&args.connection.user, &password(&args.connection)?);
    let requests: Vec<RestoreRequest> = args
        .points
        .iter()
        .map(|&point| RestoreRequest {
            point,
            namespace: args.namespace.clone(),
            mode: args.mode,
            disks: disks.clone(),
            subnet_map: subnet_map.clone(),
            datastore: args.datastore.clone(),
            dry_run: args.dry_run,
            verify_first: args.verify_first,
            auto_registration_wait: std::time::Duration::from_secs(args.auto_registration_wait),
            recreate_related: args.recreate_related,
            limits: args.limits.limits(),
            places: None,
        })
        .collect();
    let observer = observer(json);
    let cancel = CancellationToken::new();
    let result = rt.block_on(async {
        let renv = RestoreEnv::connect(
            env.clone(),
            &args.connection.vcenter,
            &tls,
            credentials,
            supervisor,
        )
        .await?;
        let c = cancel.clone();
        tokio::spawn(async move {
            super::wait_for_signal().await;
            tracing::warn!("interrupted: cancelling the restore and cleaning up");
            c.cancel();
            crate::engine::pause_point("restore-cancel-requested").await;
        });
        let r = match requests.as_slice() {
            [one] => restore::run_restore(&renv, one, observer, cancel)
                .await
                .map(|r| Done::One(Box::new(r))),
            several => restore::run_group_restore(&renv, several, observer, cancel)
                .await
                .map(Done::Group),
        };
        let _ = renv.vapi.logout().await;
        anyhow::Ok(r)
    });
    let _ = rt.block_on(env.soap.logout());
    let report = match result?.context("restore")? {
        Done::One(report) => *report,
        Done::Group(group) => return Ok(group_done(&group, json)),
    };
    if json {
        super::emit_line(&serde_json::json!({ "event": "report", "report": report }).to_string());
    } else {
        print_report(&report);
    }
    if report.unfinished.is_some() {
        return Ok(ExitCode::FAILURE);
    }
    let verified = report
        .verification
        .as_ref()
        .is_none_or(|v| v.problems.is_empty());
    Ok(if verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// What a restore of one point, or of several, answered.
enum Done {
    One(Box<RestoreReport>),
    Group(GroupRestoreReport),
}

/// Prints a group restore's report; its exit code.
fn group_done(group: &GroupRestoreReport, json: bool) -> ExitCode {
    if json {
        super::emit_line(&serde_json::json!({ "event": "report", "report": group }).to_string());
    } else {
        for r in &group.vms {
            print_report(r);
        }
        for r in &group.related {
            let o = &r.object;
            say!(
                "{} {} in {} (kept with point {}): {}{}",
                o.kind,
                o.name,
                r.namespace,
                r.point,
                serde_json::to_value(o.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                o.note
                    .as_deref()
                    .or(o.error.as_deref())
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            );
        }
        for p in &group.problems {
            say!("NOT AS EXPECTED: {p}");
        }
        if let Some(e) = &group.error {
            say!("STOPPED: {e}");
        }
        if !group.not_restored.is_empty() {
            let rest: Vec<String> = group.not_restored.iter().map(ToString::to_string).collect();
            say!("not restored: {}", rest.join(", "));
        }
    }
    if group.error.is_some() {
        ExitCode::FAILURE
    } else if group.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn print_prediction(p: &Prediction) {
    say!(
        "pre-flight ({} Supervisor): WCP will do a {}{}{}",
        serde_json::to_value(p.supervisor)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        p.restore_type,
        if p.failover {
            " (cross-vCenter failover)"
        } else {
            ""
        },
        if p.auto_registration {
            ", registering it by itself after EndAccess"
        } else {
            ""
        }
    );
    for e in &p.expectations {
        say!("  expect: {e}");
    }
    for r in &p.refusals {
        say!("  REFUSED {}: {}", r.id, r.reason);
    }
}

#[allow(clippy::cast_precision_loss)] // display figures
fn print_report(r: &RestoreReport) {
    let Some(vm) = &r.vm else {
        say!("dry run: nothing changed");
        return;
    };
    let mib = r.bytes_total as f64 / f64::from(1 << 20);
    say!(
        "restored {} as {vm}: {} disk(s), {mib:.0} MiB in {:.1} s ({:.0} MiB/s); total {:.1} s",
        r.vm_name,
        r.disks.len(),
        r.data_seconds,
        mib / r.data_seconds.max(1e-9),
        r.seconds
    );
    if let Some(t) = &r.registration_task {
        say!(
            "registration task {t}{}",
            if r.auto_registered {
                " (started by WCP)"
            } else {
                ""
            }
        );
    }
    if let Some(v) = &r.verification {
        say!(
            "VirtualMachine {}: {}",
            r.vm_name,
            v.power_state.as_deref().unwrap_or("?")
        );
        for (vol, claim) in &v.volumes {
            say!("  volume {vol} -> PVC {claim}");
        }
        for p in &v.problems {
            say!("  NOT AS EXPECTED: {p}");
        }
        for n in &v.related {
            say!("  §10: {n}");
        }
    }
    if let Some(u) = &r.unfinished {
        say!(
            "NOT FINISHED{}: {}",
            if u.cancelled { " (cancelled)" } else { "" },
            u.error
        );
    }
}

fn observer(json: bool) -> RestoreObserver {
    if json {
        return Arc::new(|e: &RestoreEvent| {
            if !matches!(e, RestoreEvent::DiskProgress { .. }) {
                super::emit_line(&serde_json::to_string(e).unwrap_or_default());
            }
        });
    }
    let bars: DiskBars<DiskKey> = DiskBars::new();
    let registration: Mutex<Option<ProgressBar>> = Mutex::new(None);
    let printed_registration: Mutex<Option<(u64, u64)>> = Mutex::new(None);
    Arc::new(move |e: &RestoreEvent| match e {
        RestoreEvent::Predicted { prediction } => print_prediction(prediction),
        RestoreEvent::Step { message } => bars.println(format!("- {message}")),
        RestoreEvent::DiskStarted {
            vm: _,
            disk,
            label,
            bytes_total,
        } => bars.start(*disk, format!("{disk} {label}"), *bytes_total),
        RestoreEvent::DiskProgress {
            vm: _,
            disk,
            bytes_done,
            bytes_total,
        } => bars.set(disk, *bytes_done, *bytes_total),
        RestoreEvent::DiskFinished {
            vm: _,
            disk,
            capacity_bytes,
            seconds,
        } => {
            bars.finish(disk);
            bars.println(format!(
                "- disk {disk}: {capacity_bytes} bytes written in {seconds:.2} s"
            ));
        }
        RestoreEvent::Registration { completed, total } => {
            if !bars.terminal() {
                // One line per step of the task, not one per poll (every few seconds).
                let mut last = printed_registration
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *last != Some((*completed, *total)) {
                    *last = Some((*completed, *total));
                    bars.println(format!("- registration {completed}/{total}"));
                }
                return;
            }
            let mut r = registration
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let bar = r.get_or_insert_with(|| {
                let bar = bars.multi().add(ProgressBar::new(*total));
                bar.set_style(
                    ProgressStyle::with_template("  registration [{bar:30}] {pos}%")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar
            });
            bar.set_position(*completed);
            if completed >= total {
                bar.finish();
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn subnet_maps() {
        let m = super::parse_subnet_map("subnet-prod-a=subnet-dr-a").unwrap();
        assert_eq!(m.current_subnet.kind, "SUBNET");
        assert_eq!(m.new_subnet.name, "subnet-dr-a");
        let m = super::parse_subnet_map("subnetset:=subnetset:dr-default").unwrap();
        assert_eq!(m.current_subnet.kind, "SUBNETSET");
        assert_eq!(m.current_subnet.name, "");
        assert!(super::parse_subnet_map("nope").is_err());
        assert!(super::parse_subnet_map("=b").is_err());
    }
}
