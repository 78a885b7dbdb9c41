//! `vadp-agent backup`, `reconcile` and `show`: the backup engine on a vCenter.
//!
//! Connection settings come from flags or the `VADP_AGENT_*` environment variables; the
//! password only from a file or the environment, never from the command line (it would
//! show in the process list).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::progress::DiskBars;

use crate::engine::restore::{SupervisorLink, SupervisorTarget};
use crate::engine::{
    self, BackupEvent, BackupRequest, Environment, Limits, Observer, VddkTarget, VmRequest,
    VmSelector,
};
use crate::ids::{DiskKey, RestorePointId};
use crate::repo::Repository;
use crate::vddk::{self, Secret, TransportMode, Vddk};
use crate::vsphere::{self, Credentials, SoapClient, SoapConfig, TlsVerification, VmMoref};

/// How to reach vCenter and VDDK.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// The vCenter SDK URL, e.g. `https://vc.example.com/sdk`.
    #[arg(long, env = "VADP_AGENT_VCENTER")]
    pub vcenter: url::Url,
    /// vCenter user.
    #[arg(
        long,
        env = "VADP_AGENT_USER",
        default_value = "administrator@vsphere.local"
    )]
    pub user: String,
    /// File holding the vCenter password (first line).
    #[arg(long, env = "VADP_AGENT_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// SHA-1 thumbprint of vCenter's certificate (`AA:BB:…`): pins TLS to it and is handed
    /// to VDDK. Without it the system's roots verify the certificate.
    #[arg(long, env = "VADP_AGENT_THUMBPRINT")]
    pub thumbprint: Option<String>,
    /// A CA certificate file (PEM) to trust in addition to the system's roots.
    #[arg(long, env = "VADP_AGENT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Datacenter of the VMs (default: the inventory's only datacenter).
    #[arg(long, env = "VADP_AGENT_DATACENTER")]
    pub datacenter: Option<String>,
    /// VDDK distribution directory (holding lib64/libvixDiskLib.so.*).
    #[arg(long, visible_alias = "libdir", env = "VADP_VDDK_LIBDIR")]
    pub vddk_libdir: PathBuf,
    /// VDDK configuration file handed to InitEx.
    #[arg(long, env = "VADP_VDDK_CONFIG")]
    pub vddk_config: Option<PathBuf>,
    /// VDDK transport modes to try, in order (colon-separated: san:hotadd:nbdssl:nbd).
    #[arg(long, env = "VADP_AGENT_TRANSPORTS", default_value = "nbdssl")]
    pub transports: String,
}

/// How many disks a job reads (a backup) or writes (a restore) at once.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Disks read or written at once in this job.
    #[arg(long, default_value_t = Limits::default().disks_per_job)]
    pub disks_per_job: usize,
    /// Disks read or written at once on one ESXi host.
    #[arg(long, default_value_t = Limits::default().disks_per_host)]
    pub disks_per_host: usize,
    /// Disks read or written at once on one datastore.
    #[arg(long, default_value_t = Limits::default().disks_per_datastore)]
    pub disks_per_datastore: usize,
}

impl LimitArgs {
    /// The engine's limits.
    #[must_use]
    pub fn limits(&self) -> Limits {
        Limits {
            disks_per_job: self.disks_per_job,
            disks_per_host: self.disks_per_host,
            disks_per_datastore: self.disks_per_datastore,
        }
    }
}

/// `vadp-agent backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The repository.
    #[arg(long, env = "VADP_REPO", value_name = "DIR")]
    pub repo: PathBuf,
    /// VMs to back up together: NAMESPACE/NAME (VM Service VMs) or a moref (vm-42).
    #[arg(long = "vm", required = true)]
    pub vms: Vec<VmSelector>,
    /// Name of the consistency group (recorded with the job).
    #[arg(long)]
    pub group: Option<String>,
    /// Each VM stands alone: one that cannot be backed up (not found, refused, busy, its
    /// PrepareForAccess or snapshot failing) fails alone and the others are backed up
    /// (exit 2). Without it the VMs are a consistency group: any of these fails the job.
    #[arg(long)]
    pub independent: bool,
    /// Quiesce these VMs' file systems when snapshotting (as given in --vm).
    #[arg(long = "quiesce")]
    pub quiesce: Vec<VmSelector>,
    /// Read every allocated block, even where CBT has the changes.
    #[arg(long)]
    pub full: bool,
    /// Fail a VM whose backup could not be restored as a VM Service VM.
    #[arg(long)]
    pub require_vmservice: bool,
    /// Do not bracket the backup with PrepareForAccess/EndAccess.
    #[arg(long)]
    pub no_prepare_access: bool,
    /// How many disks are read at once.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Do not read the VM Service VMs' VirtualMachineGroup and VirtualMachineServices
    /// from the Supervisor (by default they are kept with each point, seed 001 §10.3–§10.4).
    #[arg(long)]
    pub no_related: bool,
    /// The Supervisor.
    #[command(flatten)]
    pub supervisor: SupervisorArgs,
    /// vCenter and VDDK.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// Where the Supervisor's API is (`backup` reads each VM Service VM's VirtualMachineGroup
/// and VirtualMachineServices there, `restore` registers and checks the VM there).
#[derive(Debug, Args)]
pub struct SupervisorArgs {
    /// The Supervisor's API (default: the vCenter's address, as the lab serves it).
    #[arg(long, env = "VADP_AGENT_SUPERVISOR")]
    pub supervisor: Option<url::Url>,
    /// A file holding the Supervisor bearer token (default: the vCenter SSO session).
    #[arg(long, env = "VADP_AGENT_SUPERVISOR_TOKEN_FILE")]
    pub supervisor_token_file: Option<PathBuf>,
    /// SHA-1 thumbprint of the Supervisor API's certificate (default: vCenter's rules when
    /// the API is on vCenter's address, the system's roots otherwise).
    #[arg(long, env = "VADP_AGENT_SUPERVISOR_THUMBPRINT")]
    pub supervisor_thumbprint: Option<String>,
}

impl SupervisorArgs {
    /// The target these name (the token read from its file).
    ///
    /// # Errors
    /// Credentials in the URL, a bad thumbprint, an unreadable or unsafe token file.
    pub fn target(&self) -> anyhow::Result<SupervisorTarget> {
        if let Some(u) = &self.supervisor {
            crate::config::refuse_credentials_in_url("--supervisor", u)?;
        }
        Ok(SupervisorTarget {
            url: self.supervisor.clone(),
            tls: self
                .supervisor_thumbprint
                .as_ref()
                .map(|tp| {
                    tp.parse()
                        .map(TlsVerification::Thumbprint)
                        .with_context(|| format!("thumbprint {tp:?}"))
                })
                .transpose()?,
            token: self
                .supervisor_token_file
                .as_ref()
                .map(|f| {
                    crate::config::read_secret_file("--supervisor-token-file", f)
                        .map(|t| t.expose().to_owned())
                })
                .transpose()?,
            token_file: self.supervisor_token_file.clone(),
        })
    }
}

/// `vadp-agent reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The repository whose journal to reconcile.
    #[arg(long, env = "VADP_REPO", value_name = "DIR")]
    pub repo: PathBuf,
    /// Also remove our tagged snapshots from these VMs (morefs) when no running job of this
    /// repository owns them.
    #[arg(long = "vm")]
    pub vms: Vec<VmMoref>,
    /// With `--vm`: also remove tagged snapshots of jobs this repository has no record of
    /// (another repository's or agent's backups, or those of a catalog that was lost or
    /// rebuilt). Make sure none of those backups is running: its snapshot goes under it.
    #[arg(long, requires = "vms")]
    pub unknown_jobs: bool,
    /// vCenter and VDDK.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// `vadp-agent show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The repository.
    #[arg(long, env = "VADP_REPO", value_name = "DIR")]
    pub repo: PathBuf,
    /// The restore point.
    pub point: RestorePointId,
    /// Print only the VirtualMachineGroup and VirtualMachineServices the point kept, as
    /// YAML documents for `kubectl create -n NAMESPACE -f -` (with `--json`, one JSON
    /// `List`); a group's power state is left out, as a restore leaves it out.
    #[arg(long)]
    pub related: bool,
}

pub(crate) fn password(args: &ConnectionArgs) -> anyhow::Result<String> {
    if let Some(file) = &args.password_file {
        // As strict as the daemon: a password file others can read is refused.
        let secret = crate::config::read_secret_file("--password-file", file)?;
        return Ok(secret.expose().to_owned());
    }
    if let Ok(p) = std::env::var("VADP_AGENT_PASSWORD") {
        return Ok(p);
    }
    bail!("no vCenter password: give --password-file or set VADP_AGENT_PASSWORD")
}

/// Re-executes with VDDK's directory on `LD_LIBRARY_PATH`, loads VDDK (InitEx, before any
/// other thread exists, as VMware requires), then starts the async runtime, logs in to
/// vCenter and opens the repository.
pub(crate) fn environment(
    conn: &ConnectionArgs,
    repo: &Path,
) -> anyhow::Result<(tokio::runtime::Runtime, Environment)> {
    vddk::reexec_with_library_path(&conn.vddk_libdir)?;
    crate::config::refuse_credentials_in_url("--vcenter", &conn.vcenter)?;
    let vddk_thumbprint = conn
        .thumbprint
        .as_deref()
        .map(vsphere::Thumbprint::for_vddk)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let password = password(conn)?;
    let vddk = Vddk::load(&conn.vddk_libdir, conn.vddk_config.as_deref())
        .with_context(|| format!("loading VDDK from {}", conn.vddk_libdir.display()))?;
    let rt = runtime()?;
    let mut soap = SoapConfig::new(conn.vcenter.clone());
    soap.tls = tls_of(conn)?;
    soap.credentials = Some(vsphere::Credentials::new(&conn.user, &password));
    let client = rt
        .block_on(SoapClient::connect(soap))
        .with_context(|| format!("logging in to {}", conn.vcenter))?;
    // Verified by a CA rather than pinned: VDDK, which checks the server by SHA-1
    // thumbprint only, is pinned to the certificate that verification accepted.
    let vddk_thumbprint = match vddk_thumbprint {
        Some(tp) => Some(tp),
        None => Some(
            rt.block_on(vsphere::verified_server_thumbprint(
                &conn.vcenter,
                &tls_of(conn)?,
            ))
            .with_context(|| format!("reading the certificate of {}", conn.vcenter))?
            .to_string(),
        ),
    };
    let repository =
        Repository::open(repo).with_context(|| format!("opening repository {}", repo.display()))?;
    let server = conn
        .vcenter
        .host_str()
        .context("the vCenter URL has no host")?
        .to_owned();
    let recheck = if conn.thumbprint.is_none() {
        Some((conn.vcenter.clone(), tls_of(conn)?))
    } else {
        None
    };
    let env = Environment {
        soap: client,
        vddk,
        vddk_target: VddkTarget {
            server,
            port: conn.vcenter.port(),
            thumbprint: vddk_thumbprint,
            recheck,
            credentials: vddk::Credentials::Password {
                user: conn.user.clone(),
                password: Secret::new(password),
            },
            transport_modes: {
                let modes =
                    TransportMode::parse_list(&conn.transports).map_err(anyhow::Error::msg)?;
                if modes.contains(&TransportMode::Nbd) {
                    tracing::warn!(transports = %conn.transports, "transport nbd is in the list: if VDDK falls back to it, disk data crosses the network unencrypted");
                }
                modes
            },
        },
        repo: Arc::new(repository),
        datacenter: conn.datacenter.clone(),
    };
    Ok((rt, env))
}

/// How vCenter's certificate is verified: the pinned thumbprint, a CA file, or the
/// system's roots.
pub(crate) fn tls_of(conn: &ConnectionArgs) -> anyhow::Result<TlsVerification> {
    Ok(if let Some(tp) = &conn.thumbprint {
        TlsVerification::Thumbprint(tp.parse().with_context(|| format!("thumbprint {tp:?}"))?)
    } else if let Some(ca) = &conn.ca_file {
        TlsVerification::WithCaFile(ca.clone())
    } else {
        TlsVerification::SystemRoots
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs `vadp-agent backup`. Exit code 0 when every VM succeeded, 2 when some failed.
///
/// # Errors
/// Set-up failures and job-level errors.
pub fn backup(args: &BackupArgs, json: bool) -> anyhow::Result<ExitCode> {
    for q in &args.quiesce {
        if !args.vms.contains(q) {
            bail!("--quiesce {q} names a VM that is not in --vm");
        }
    }
    // After `environment`, which refuses credentials in the URL and re-executes for VDDK.
    let (rt, env) = environment(&args.connection, &args.repo)?;
    let supervisor = if args.no_related {
        None
    } else {
        // Credentials in its URL are refused outright; anything else wrong with the
        // Supervisor's settings costs the backup only the VM Service VMs' group and
        // services, as in the daemon.
        if let Some(u) = &args.supervisor.supervisor {
            crate::config::refuse_credentials_in_url("--supervisor", u)?;
        }
        let link = args.supervisor.target().and_then(|target| {
            Ok(SupervisorLink::new(
                &args.connection.vcenter,
                &tls_of(&args.connection)?,
                Credentials::new(&args.connection.user, &password(&args.connection)?),
                target,
            )?)
        });
        match link {
            Ok(l) => Some(Arc::new(l)),
            Err(e) => {
                tracing::warn!(
                    "the Supervisor is not set up for this backup ({e:#}): its VM Service VMs' \
                     VirtualMachineGroup and VirtualMachineServices are not kept"
                );
                None
            }
        }
    };
    let request = BackupRequest {
        group: args.group.clone(),
        independent: args.independent,
        vms: args
            .vms
            .iter()
            .map(|s| VmRequest {
                selector: s.clone(),
                quiesce: args.quiesce.contains(s),
            })
            .collect(),
        force_full: args.full,
        require_vmservice: args.require_vmservice,
        prepare_access: !args.no_prepare_access,
        limits: args.limits.limits(),
        places: None,
        // Ad hoc: refused at once, naming the job that holds the VM.
        busy_vm_wait: std::time::Duration::ZERO,
        snapshot_gate: None,
        supervisor: supervisor.clone(),
        slot: None,
    };
    let cancel = CancellationToken::new();
    let observer = observer(json);
    let report = rt.block_on(async {
        let c = cancel.clone();
        tokio::spawn(async move {
            super::wait_for_signal().await;
            tracing::warn!("interrupted: cancelling the backup and cleaning up");
            c.cancel();
        });
        let report = engine::run_backup(&env, request, cancel, observer).await;
        if let Some(s) = &supervisor {
            s.close().await;
        }
        report
    });
    let _ = rt.block_on(env.soap.logout());
    let report = report.context("backup job")?;
    if json {
        super::emit_line(&serde_json::json!({ "event": "report", "report": report }).to_string());
    } else {
        print_report(&report);
    }
    Ok(if report.succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

#[allow(clippy::cast_precision_loss)] // display figures
fn print_report(r: &engine::BackupReport) {
    say!(
        "job {}{}: {} VM(s) in {:.1} s, snapshot skew {} ms",
        r.job,
        r.group
            .as_deref()
            .map(|g| format!(" (group {g})"))
            .unwrap_or_default(),
        r.vms.len(),
        r.seconds,
        r.skew_ms.unwrap_or(0)
    );
    for v in &r.vms {
        match (&v.point, &v.error) {
            (Some(p), _) => {
                let read: u64 = v.disks.iter().map(|d| d.stats.bytes_read).sum();
                let stored: u64 = v.disks.iter().map(|d| d.stats.bytes_stored).sum();
                say!(
                    "  {} ({}): point {p}, {}, read {:.1} MiB, stored {:.1} MiB",
                    v.name,
                    v.vm,
                    kind_text(v.kind),
                    read as f64 / 1_048_576.0,
                    stored as f64 / 1_048_576.0
                );
                for d in &v.disks {
                    say!(
                        "    {} ({}): {} — {}",
                        d.label,
                        d.key,
                        kind_text(Some(d.kind)),
                        d.reason
                    );
                }
                if let Some(val) = &v.validation {
                    say!("    VM Service validation: {}", validation_text(val));
                }
            }
            (None, e) => say!(
                "  {} ({}): FAILED: {}",
                v.name,
                v.vm,
                e.as_deref().unwrap_or("unknown error")
            ),
        }
        if v.quiesced == Some(false) {
            say!("    quiesce asked for, not done: the point is crash-consistent");
        }
        for w in &v.warnings {
            say!("    warning: {w}");
        }
        for c in &v.cleanup_errors {
            say!("    cleanup: {c}");
        }
    }
}

fn kind_text(k: Option<crate::repo::PointKind>) -> &'static str {
    match k {
        Some(crate::repo::PointKind::Full) => "full",
        Some(crate::repo::PointKind::Incremental) => "incremental",
        None => "-",
    }
}

fn validation_text(v: &crate::vmservice::Validation) -> String {
    match v.status {
        crate::vmservice::ValidationStatus::Valid => "valid".into(),
        crate::vmservice::ValidationStatus::NotVmService => "not a VM Service VM".into(),
        crate::vmservice::ValidationStatus::Warning => format!(
            "WARNING: {}",
            v.problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// Progress: a bar per disk on a terminal, JSON lines with `--json`, milestones otherwise.
fn observer(json: bool) -> Observer {
    if json {
        return Arc::new(|e: &BackupEvent| {
            if let Ok(line) = serde_json::to_string(e) {
                super::emit_line(&line);
            }
        });
    }
    let bars: DiskBars<(VmMoref, DiskKey)> = DiskBars::new();
    Arc::new(move |e: &BackupEvent| match e {
        BackupEvent::DiskStarted {
            vm,
            name,
            disk,
            label,
            bytes_total,
            kind,
            ..
        } => {
            let msg = format!("{name} {label} ({})", kind_text(Some(*kind)));
            if !bars.terminal() {
                eprintln!("reading {msg}: {bytes_total} bytes");
            }
            bars.start((vm.clone(), *disk), msg, *bytes_total);
        }
        BackupEvent::DiskProgress {
            vm,
            disk,
            bytes_done,
            bytes_total,
        } => bars.set(&(vm.clone(), *disk), *bytes_done, *bytes_total),
        BackupEvent::DiskFinished { vm, disk, .. } => bars.finish(&(vm.clone(), *disk)),
        BackupEvent::SnapshotCreated {
            name,
            snapshot,
            completed_ms,
            ..
        } => bars.println(format!(
            "snapshot {snapshot} of {name} after {completed_ms} ms"
        )),
        BackupEvent::Reconciled {
            snapshots_removed,
            access_ended,
            jobs_interrupted,
            errors,
        } => {
            bars.println(format!(
                "reconciled interrupted jobs: {snapshots_removed} snapshot(s) removed, \
                 {access_ended} EndAccess, {jobs_interrupted} job(s) marked interrupted"
            ));
            for e in errors {
                bars.println(format!("reconcile: {e}"));
            }
        }
        BackupEvent::CbtEnabled { name, .. } => {
            bars.println(format!("change tracking enabled on {name} (full backup)"));
        }
        BackupEvent::Warning { name, message, .. } => {
            bars.println(format!("warning: {name}: {message}"));
        }
        BackupEvent::VmFailed { name, error, .. } => {
            bars.println(format!("FAILED: {name}: {error}"));
        }
        _ => {}
    })
}

/// Runs `vadp-agent reconcile`.
///
/// # Errors
/// Set-up and catalog failures.
pub fn reconcile(args: &ReconcileArgs, json: bool) -> anyhow::Result<ExitCode> {
    let (rt, env) = environment(&args.connection, &args.repo)?;
    let report = rt.block_on(engine::reconcile(&env, &args.vms, args.unknown_jobs));
    let _ = rt.block_on(env.soap.logout());
    let report = report.context("reconcile")?;
    if json {
        say!(
            "{}",
            serde_json::json!({ "event": "reconcile", "report": report })
        );
    } else {
        if report.transport_cleaned > 0 {
            say!(
                "VixDiskLib_Cleanup: removed the disks crashed backups of {} VM(s) left hot-added to this proxy VM",
                report.transport_cleaned
            );
        }
        for (vm, s) in &report.snapshots_removed {
            say!("removed snapshot {s} of {vm}");
        }
        for vm in &report.access_ended {
            say!("EndAccess for {vm}");
        }
        for (vm, detail) in &report.half_created_vms {
            say!("half-created VM {vm}: {detail}");
        }
        for job in &report.jobs_interrupted {
            say!("job {job} was interrupted; marked failed");
        }
        if report.skipped_running > 0 {
            say!(
                "{} entries belong to jobs still running; left alone",
                report.skipped_running
            );
        }
        for e in &report.other_vcenter {
            say!("left: {e}");
        }
        for e in &report.errors {
            say!("error: {e}");
        }
        if report.is_clean() {
            say!("reconcile: clean");
        }
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// `show --related`: the kept objects as a restore creates them (a group without a
/// power state that would power on the VM just restored, [`for_restore`]), as YAML
/// documents (`---` between them, a comment naming what was left out) or, with `--json`,
/// one `v1` `List` (what was left out on stderr); nothing but them on stdout, so that it
/// can be piped to `kubectl create -n NAMESPACE -f -`.
///
/// [`for_restore`]: crate::vmservice::related::for_restore
fn print_related(related: &[serde_json::Value], json: bool) -> anyhow::Result<ExitCode> {
    let objects: Vec<(serde_json::Value, Option<String>)> = related
        .iter()
        .map(|o| {
            let (obj, power) = crate::vmservice::related::for_restore(o);
            let note = power.map(|p| {
                format!(
                    "{}: spec.powerState {p} left out (it would power on the VM just restored); \
                     set it once the VMs are checked (seed 001 §10.5 phase 3)",
                    crate::vmservice::related::describe(o)
                )
            });
            (obj, note)
        })
        .collect();
    if json {
        for note in objects.iter().filter_map(|(_, n)| n.as_ref()) {
            eprintln!("{note}");
        }
        let items: Vec<&serde_json::Value> = objects.iter().map(|(o, _)| o).collect();
        say!(
            "{}",
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
        );
        return Ok(ExitCode::SUCCESS);
    }
    if related.is_empty() {
        eprintln!(
            "this point keeps no VirtualMachineGroup or VirtualMachineService (a VM that is no \
             VM Service VM, one in none, or a point made before they were kept)"
        );
    }
    for (i, (obj, note)) in objects.iter().enumerate() {
        let yaml = serde_norway::to_string(obj).context("writing YAML")?;
        if i > 0 {
            say!("---");
        }
        if let Some(note) = note {
            say!("# {note}");
        }
        say!("{}", yaml.trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `vadp-agent show POINT`.
///
/// # Errors
/// Repository errors; an unknown point.
#[allow(clippy::cast_precision_loss)] // display figures
pub fn show(args: &ShowArgs, json: bool) -> anyhow::Result<ExitCode> {
    let repo = Repository::open(&args.repo)
        .with_context(|| format!("opening repository {}", args.repo.display()))?;
    let point = repo
        .catalog()
        .get_point(args.point)?
        .with_context(|| format!("restore point {} not found", args.point))?;
    let job = repo.catalog().point_config(args.point)?.and_then(|c| c.job);
    if args.related {
        let related = repo
            .point_config(args.point)
            .with_context(|| format!("reading what restore point {} kept", args.point))?
            .map(|c| c.related)
            .unwrap_or_default();
        return print_related(&related, json);
    }
    // A point whose config file verify reports as bad is still shown, with the reason.
    let kept = repo
        .point_config(args.point)
        .map(|c| {
            c.map_or((None, None, Vec::new()), |c| {
                (
                    c.vmx.map(|v| v.len()),
                    c.nvram.map(|n| n.len()),
                    c.related
                        .iter()
                        .map(crate::vmservice::related::describe)
                        .collect::<Vec<_>>(),
                )
            })
        })
        .map_err(|e| crate::repo::verify::error_chain(&e));
    let vmx_bytes = kept.as_ref().map(|k| k.0).map_err(Clone::clone);
    let nvram_bytes = kept.as_ref().ok().and_then(|k| k.1);
    let related = kept.as_ref().map(|k| k.2.clone()).unwrap_or_default();
    let job_stats = match job {
        Some(job) => repo.catalog().job_stats(job)?,
        None => None,
    };
    let skew = job_stats.as_ref().and_then(|s| s.get("skew_ms")).cloned();
    let group_failed = job_stats
        .as_ref()
        .map(crate::engine::failed_members)
        .unwrap_or_default();
    if json {
        say!(
            "{}",
            serde_json::json!({
                "event": "show", "point": point, "skew_ms": skew, "group_failed": group_failed,
                "vmx_bytes": vmx_bytes.as_ref().ok().copied().flatten(),
                "nvram_bytes": nvram_bytes,
                "related": related,
                "config_error": vmx_bytes.as_ref().err(),
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    say!("restore point {}", point.id);
    say!(
        "  VM:         {} ({}){}",
        point.vm.name,
        point.vm.moref,
        point
            .vm
            .namespace
            .as_deref()
            .map(|n| format!(", namespace {n}"))
            .unwrap_or_default()
    );
    say!("  created:    {}", super::utc(point.created_at));
    say!(
        "  type:       {} — {}",
        kind_text(Some(point.kind)),
        point.reason
    );
    if let Some(parent) = point.parent {
        say!("  parent:     {parent}");
    }
    let stat = |k: &str| point.stats.get(k).and_then(serde_json::Value::as_f64);
    if let Some(s) = stat("seconds") {
        say!("  duration:   {s:.2} s");
    }
    if let Some(s) = skew.as_ref().and_then(serde_json::Value::as_u64) {
        say!("  group skew: {s} ms");
    }
    if !group_failed.is_empty() {
        say!(
            "  group:      incomplete, {} failed in this job: this point has no companion from it",
            group_failed.join(", ")
        );
    }
    let flag = |k: &str| point.stats.get(k).and_then(serde_json::Value::as_bool);
    // Points from before the snapshot was read back carry only `quiesced`, which then
    // meant "asked for": nothing is claimed for them.
    match (flag("quiesce_requested"), flag("quiesced")) {
        (Some(true), Some(false)) => {
            say!(
                "  quiesced:   no, though asked for (crash-consistent: VMware Tools not running?)"
            );
        }
        (Some(_), Some(true)) => say!("  quiesced:   yes"),
        (Some(_), Some(false)) => say!("  quiesced:   no"),
        _ => {}
    }
    let changed: u64 = point.disks.iter().map(|d| d.bytes_changed).sum();
    say!("  changed:    {:.1} MiB", changed as f64 / 1_048_576.0);
    if let Some(f) = point.stats.get("folder").filter(|f| f.is_object()) {
        let text = |k: &str| f.get(k).and_then(serde_json::Value::as_str);
        say!(
            "  folder:     {} ({})",
            text("path").or_else(|| text("name")).unwrap_or("?"),
            text("moref").unwrap_or("?")
        );
    }
    if let Some(v) = point.stats.get("validation") {
        match serde_json::from_value::<crate::vmservice::Validation>(v.clone()) {
            Ok(val) => say!("  VM Service: {}", validation_text(&val)),
            Err(_) => say!("  VM Service: {v}"),
        }
    }
    match &vmx_bytes {
        Ok(Some(n)) => say!("  VMX:        {n} bytes kept"),
        Ok(None) => {}
        Err(e) => say!("  VMX:        unreadable: {e}"),
    }
    if let Some(n) = nvram_bytes {
        say!("  NVRAM:      {n} bytes kept");
    }
    if !related.is_empty() {
        say!(
            "  related:    {} kept (`show --related` prints them for kubectl create)",
            related.join(", ")
        );
    }
    say!("  disks:");
    for d in &point.disks {
        say!(
            "    {} {} ({:?}) {} bytes, changeId {}, changed {} bytes, stored {} bytes",
            d.key,
            d.label,
            d.role,
            d.capacity_bytes,
            d.change_id.as_ref().map_or("-", |c| c.0.as_str()),
            d.bytes_changed,
            d.bytes_stored
        );
        say!("      {}", d.backing_file);
    }
    Ok(ExitCode::SUCCESS)
}
