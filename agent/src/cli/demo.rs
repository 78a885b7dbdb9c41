//! `vadp-agent demo`: the main job on the built-in lab.
//!
//! It creates a lab, starts the lab's vCenter and Supervisor in this process (HTTPS with the
//! lab's certificate, pinned by thumbprint), installs the VDDK simulator as a VDDK
//! distribution lays it out and loads it through the agent's real loader. Then, with the
//! same engines `vadp-agent backup` / `restore` and the daemon use:
//!
//! 1. VM Operator creates a Supervisor namespace with two VM Service VMs (an OS disk and a
//!    PVC disk each, cloud-init bootstrap, labels), whose guests write data, members of a
//!    VirtualMachineGroup and behind a VirtualMachineService (seed 001 §10.3–§10.4);
//! 2. both are backed up as one group at a common point in time (full: CBT is enabled),
//!    each point keeping the group and the service;
//! 3. the guests write again and an incremental reads only what CBT reports;
//! 4. one VirtualMachine is deleted on the Supervisor (its vSphere VM and disks go too),
//!    and so is the VirtualMachineService;
//! 5. it is restored from the incremental point: pre-flight prediction, disks through VDDK
//!    between PrepareForAccess and EndAccess, WCP registration with its progress, the
//!    service created again from the point (the group, still there, left as it is), and the
//!    VirtualMachine read back (PoweredOff, `restored-*` PVCs, in its group and selected by
//!    its service);
//! 6. every restored disk is compared with the backup, and a summary table is printed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use clap::Args;
use lab::Lab;
use lab::datastore::{DiskChain, OpenMode};
use lab::vmstate::VmMoref;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Set with `--json`: stdout then carries only the summary document, and the demo's
/// narrative goes to stderr.
static NARRATE_TO_STDERR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A line of the demo's narrative: on stdout, or on stderr with `--json`.
macro_rules! narrate {
    ($($arg:tt)*) => {
        if NARRATE_TO_STDERR.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!($($arg)*);
        } else {
            say!($($arg)*);
        }
    };
}

use crate::engine::restore::{
    self, RestoreEnv, RestoreEvent, RestoreMode, RestoreRequest, SupervisorLink, SupervisorTarget,
};
use crate::engine::{
    self, BackupEvent, BackupReport, BackupRequest, Environment, Limits, VddkTarget, VmRequest,
    VmSelector,
};
use crate::repo::Repository;
use crate::vddk::{self, Secret, TransportMode, Vddk};
use crate::vsphere::{self, SoapClient, SoapConfig, TlsVerification};

const MIB: u64 = 1 << 20;
/// The demo's Supervisor namespace.
const NAMESPACE: &str = "demo-ns";
/// The demo's VMs; the last one is deleted and restored.
const VMS: [&str; 2] = ["web-1", "web-2"];
/// Their VirtualMachineGroup (§10.4).
const GROUP: &str = "demo-group";
/// The VirtualMachineService in front of them (§10.3).
const SERVICE: &str = "demo-lb";

/// `vadp-agent demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Lab root to create (must not exist). Default: a fresh directory under the system
    /// temporary directory, removed at the end unless `--keep`.
    #[arg(long)]
    root: Option<PathBuf>,
    /// A VDDK distribution directory to use instead of the simulator built next to this
    /// executable (`libvixDiskLib.so`). Not read from `VADP_VDDK_LIBDIR`: on a proxy where
    /// that names the real VDDK, the demo would load it against its simulated vCenter.
    #[arg(long)]
    libdir: Option<PathBuf>,
    /// OS disk size of each demo VM, in MiB (a multiple of 4, at least 8); the PVC disk is
    /// half of it.
    #[arg(long, default_value_t = 256, value_parser = parse_disk_mib)]
    disk_mib: u64,
    /// Keep the lab directory afterwards.
    #[arg(long)]
    keep: bool,
}

fn parse_disk_mib(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n >= 8 && n % 4 == 0 && n <= 1 << 20 => Ok(n),
        _ => Err(format!("{s:?}: give a multiple of 4 between 8 and 1048576")),
    }
}

/// One line of the closing summary.
struct Step {
    what: &'static str,
    bytes: u64,
    secs: f64,
    result: String,
}

/// Runs the demo.
///
/// # Errors
/// Any step that fails, with what it was doing.
pub fn run(args: &DemoArgs, json: bool) -> anyhow::Result<()> {
    NARRATE_TO_STDERR.store(json, std::sync::atomic::Ordering::Relaxed);
    // exec keeps the process id, so this default survives the re-exec below.
    let default_root = std::env::temp_dir().join(format!("vadp-agent-demo-{}", std::process::id()));
    let root = args.root.clone().unwrap_or(default_root);
    let libdir = match &args.libdir {
        Some(dir) => dir.clone(),
        None => root.join("vddk"),
    };
    if !vddk::reexecuted() {
        prepare_root(&root, args.libdir.is_none())?;
    }
    // Before InitEx or any thread: VDDK's directory goes on LD_LIBRARY_PATH (STYLE §5).
    vddk::reexec_with_library_path(&libdir)?;

    let outcome = run_in(&root, &libdir, args.disk_mib * MIB);
    if !args.keep && args.root.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        narrate!("lab kept at {}", root.display());
    }
    let steps = outcome?;
    print_summary(&steps, json)?;
    Ok(())
}

/// Creates the lab root and, unless a libdir was given, installs the simulator under
/// `<root>/vddk/lib64/libvixDiskLib.so.8`, where a VDDK distribution keeps it.
fn prepare_root(root: &Path, install_sim: bool) -> anyhow::Result<()> {
    ensure!(
        !root.exists(),
        "{} already exists; the demo creates a fresh lab",
        root.display()
    );
    Lab::create(&root.join("lab"))
        .with_context(|| format!("creating lab at {}", root.display()))?;
    if install_sim {
        let exe = std::env::current_exe().context("locating the vadp-agent executable")?;
        let sim = exe
            .parent()
            .context("executable has no directory")?
            .join("libvixDiskLib.so");
        if !sim.exists() {
            bail!(
                "the VDDK simulator is not next to {} (expected {}): build the workspace \
                 (cargo build --release --workspace) or pass --libdir",
                exe.display(),
                sim.display()
            );
        }
        let lib64 = root.join("vddk").join("lib64");
        std::fs::create_dir_all(&lib64)?;
        std::os::unix::fs::symlink(&sim, lib64.join("libvixDiskLib.so.8"))
            .context("installing the simulator")?;
    }
    Ok(())
}

fn run_in(root: &Path, libdir: &Path, capacity: u64) -> anyhow::Result<Vec<Step>> {
    let lab_root = root.join("lab");
    let lab = Lab::open(&lab_root)?;
    // The control plane: the lab's vCenter and Supervisor, over HTTPS, before VDDK is
    // loaded (vddk-sim's ConnectEx and PrepareForAccess talk to it, as VDDK talks to vCenter).
    // Task steps of 50 ms (the lab's default) make the registration stages visible.
    let vcenter = lab::vcenter::InProcessVcenter::start_with(
        &lab_root,
        &lab::vcenter::ServeOptions::default(),
    )
    .context("starting the lab's vCenter")?;
    let thumbprint = vcenter
        .thumbprint()
        .context("the lab's vCenter serves HTTPS")?
        .to_owned();
    narrate!(
        "lab vCenter and Supervisor at {} (thumbprint {thumbprint})",
        vcenter.sdk_url()
    );
    let config = root.join("vddk.conf");
    std::fs::write(
        &config,
        format!("vadp.lab.root = \"{}\"\n", lab_root.display()),
    )?;
    let vddk = Vddk::load(libdir, Some(&config))?;
    let lib = vddk.library();
    narrate!(
        "VDDK {} loaded from {} (transports {})",
        lib.major(),
        lib.path().display(),
        vddk.transport_modes().join(":")
    );

    // 1. Two VM Service VMs, made by the lab's VM Operator.
    let sup = vcenter.running().vcenter.supervisor();
    sup.create_namespace(NAMESPACE)
        .map_err(|e| anyhow::anyhow!("creating namespace {NAMESPACE}: {e}"))?;
    let mut morefs = Vec::new();
    for name in VMS {
        morefs.push(create_vm(sup, &lab, name, capacity)?);
    }
    sup.apply(json!({
        "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineGroup",
        "metadata": {"name": GROUP, "namespace": NAMESPACE},
        "spec": {"powerState": "PoweredOn",
                 "bootOrder": [{"members": VMS.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()}]}
    }))
    .map_err(|e| anyhow::anyhow!("creating VirtualMachineGroup {GROUP}: {e}"))?;
    sup.apply(json!({
        "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineService",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {"type": "LoadBalancer", "selector": {"app": "demo"},
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
    }))
    .map_err(|e| anyhow::anyhow!("creating VirtualMachineService {SERVICE}: {e}"))?;
    narrate!(
        "VirtualMachineGroup {NAMESPACE}/{GROUP} holds {}; VirtualMachineService {NAMESPACE}/{SERVICE} selects app=demo",
        VMS.join(", ")
    );
    for (v, (name, vm)) in VMS.iter().zip(&morefs).enumerate() {
        let disks = lab.vm(vm)?.disks;
        for (i, d) in disks.iter().enumerate() {
            guest_writes(&lab, vm, d.key, d.capacity_bytes, (10 * v + i) as u64, 4)?;
        }
        narrate!(
            "VirtualMachine {NAMESPACE}/{name} is {} with {} disks ({})",
            vm.0,
            disks.len(),
            disks
                .iter()
                .map(|d| format!("{} {} MiB", d.label, d.capacity_bytes / MIB))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let running = vcenter.running();
    let sdk_url: url::Url = vcenter
        .sdk_url()
        .parse()
        .with_context(|| format!("vCenter URL {}", vcenter.sdk_url()))?;
    let tls = TlsVerification::Thumbprint(
        thumbprint
            .parse()
            .with_context(|| format!("vCenter thumbprint {thumbprint}"))?,
    );
    let mut soap = SoapConfig::new(sdk_url.clone());
    soap.tls = tls.clone();
    soap.credentials = Some(vsphere::Credentials::new(&running.user, &running.password));
    let client = rt
        .block_on(SoapClient::connect(soap))
        .with_context(|| format!("logging in to {}", vcenter.sdk_url()))?;
    let repo_path = root.join("repo");
    let repo = Repository::init(&repo_path, u64::from(crate::repo::DEFAULT_CHUNK_SIZE_BYTES))
        .with_context(|| format!("creating the repository at {}", repo_path.display()))?;
    let env = Environment {
        soap: client,
        vddk,
        vddk_target: VddkTarget {
            server: sdk_url.host_str().unwrap_or("127.0.0.1").to_owned(),
            port: sdk_url.port(),
            thumbprint: Some(thumbprint.clone()),
            credentials: vddk::Credentials::Password {
                user: running.user.clone(),
                password: Secret::new(running.password.clone()),
            },
            transport_modes: vec![TransportMode::NbdSsl],
            recheck: None,
        },
        repo: Arc::new(repo),
        datacenter: None,
    };
    let mut steps = Vec::new();

    // 2. One group backup at a common point in time.
    // One per job, as the CLI and the daemon make them.
    let link = || {
        SupervisorLink::new(
            &sdk_url,
            &tls,
            vsphere::Credentials::new(&running.user, &running.password),
            SupervisorTarget::default(),
        )
        .context("the Supervisor link")
    };
    let full = backup(&rt, &env, link()?)?;
    steps.push(backup_step("full backup, 2 VMs as one group", &full));
    for v in &full.vms {
        ensure!(
            v.related.len() == 2,
            "{}'s point keeps {:?}, not its VirtualMachineGroup and VirtualMachineService",
            v.name,
            v.related
        );
    }
    narrate!(
        "  each point keeps {} (seed 001 §10.3–§10.4)",
        full.vms[0].related.join(" and ")
    );
    // 3. The guests write; the incremental reads what CBT reports.
    for (v, vm) in morefs.iter().enumerate() {
        for (i, d) in lab.vm(vm)?.disks.iter().enumerate() {
            guest_writes(
                &lab,
                vm,
                d.key,
                d.capacity_bytes,
                (100 + 10 * v + i) as u64,
                32,
            )?;
        }
    }
    let incremental = backup(&rt, &env, link()?)?;
    steps.push(backup_step("incremental backup (CBT)", &incremental));
    let restored_name = VMS[VMS.len() - 1];
    let point = incremental
        .vms
        .iter()
        .find(|v| v.name == restored_name)
        .and_then(|v| v.point)
        .context("the incremental made no point for the VM to restore")?;

    // 4. The VirtualMachine is deleted on the Supervisor.
    sup.delete("VirtualMachine", NAMESPACE, restored_name)
        .map_err(|e| anyhow::anyhow!("deleting {restored_name}: {e}"))?;
    ensure!(
        lab.find_vm_by_name(restored_name)?.is_none(),
        "VM Operator did not remove the vSphere VM"
    );
    narrate!("deleted VirtualMachine {NAMESPACE}/{restored_name} (its vSphere VM and disks)");
    sup.delete("VirtualMachineService", NAMESPACE, SERVICE)
        .map_err(|e| anyhow::anyhow!("deleting {SERVICE}: {e}"))?;
    narrate!("deleted VirtualMachineService {NAMESPACE}/{SERVICE}");

    // 5. Restore and registration.
    let report = rt.block_on(async {
        let renv = RestoreEnv::connect(
            env.clone(),
            &sdk_url,
            &tls,
            vsphere::Credentials::new(&running.user, &running.password),
            SupervisorTarget::default(),
        )
        .await?;
        let last_percent = std::sync::atomic::AtomicU64::new(u64::MAX);
        let observer: restore::RestoreObserver = Arc::new(move |e: &RestoreEvent| match e {
            RestoreEvent::Predicted { prediction } => narrate!(
                "pre-flight: WCP will do a {}{}",
                prediction.restore_type,
                if prediction.refusals.is_empty() {
                    String::new()
                } else {
                    format!(" but refuse: {:?}", prediction.refusals)
                }
            ),
            RestoreEvent::Step { message } => narrate!("  {message}"),
            RestoreEvent::Registration { completed, total } => {
                let before = last_percent.swap(*completed, std::sync::atomic::Ordering::Relaxed);
                if before != *completed {
                    narrate!("  registration {completed}/{total} %");
                }
            }
            _ => {}
        });
        let request = RestoreRequest {
            point,
            namespace: None,
            mode: RestoreMode::Auto,
            disks: Vec::new(),
            subnet_map: Vec::new(),
            datastore: None,
            dry_run: false,
            verify_first: true,
            auto_registration_wait: restore::AUTO_REGISTRATION_WAIT,
            recreate_related: true,
            limits: engine::Limits::default(),
            places: None,
        };
        let r = restore::run_restore(&renv, &request, observer, CancellationToken::new()).await;
        let _ = renv.vapi.logout().await;
        r
    });
    let report = report.context("restore")?;
    if let Some(e) = report.unfinished_error() {
        bail!("the restore did not finish: {e}");
    }
    let verification = report
        .verification
        .clone()
        .context("the restore did not read the VirtualMachine back")?;
    ensure!(
        verification.problems.is_empty(),
        "the restored VirtualMachine is not as seed 001 §8 says: {:?}",
        verification.problems
    );
    // §10.5: the service came back from the point, the group was left as it was.
    let outcomes: Vec<String> = report
        .related
        .iter()
        .map(|r| format!("{} {}: {:?}", r.kind, r.name, r.outcome))
        .collect();
    ensure!(
        report
            .related
            .iter()
            .any(|r| r.name == SERVICE && r.outcome == restore::RelatedOutcome::Created)
            && report
                .related
                .iter()
                .any(|r| r.name == GROUP && r.outcome == restore::RelatedOutcome::AlreadyThere),
        "the point's VirtualMachineGroup and VirtualMachineService were not handled as §10.5 says: {outcomes:?}"
    );
    for r in &verification.related {
        narrate!("  {r}");
    }
    let restored = VmMoref(
        report
            .vm
            .as_ref()
            .context("the restore names no VM")?
            .as_str()
            .to_owned(),
    );
    narrate!(
        "VirtualMachine {NAMESPACE}/{restored_name}: {} (vSphere VM {}), volumes {}",
        verification.power_state.as_deref().unwrap_or("?"),
        restored.0,
        verification
            .volumes
            .iter()
            .map(|(v, c)| format!("{v} -> PVC {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    steps.push(Step {
        what: "restore: disks through VDDK + registration",
        bytes: report.bytes_total,
        secs: report.data_seconds,
        result: format!(
            "{}, {:.1} s in all, registered PoweredOff",
            report.prediction.restore_type, report.seconds
        ),
    });

    // 6. Every restored disk equals the backup.
    let start = Instant::now();
    let mut compared = 0;
    for d in &report.disks {
        let out = root.join(format!("point-{}.raw", d.key));
        env.repo
            .restore_disk_to_file(point, Some(d.key), &out, &mut |_, _| {})
            .with_context(|| format!("reading disk {} of the point", d.key))?;
        let file = lab.disk_file(&restored, None, lab::vmstate::DiskKey(d.key.0))?;
        compared += compare(&lab_root, &file, &out)
            .with_context(|| format!("comparing restored disk {} with the backup", d.key))?;
        let _ = std::fs::remove_file(&out);
    }
    steps.push(Step {
        what: "compare every restored disk with the backup",
        bytes: compared,
        secs: start.elapsed().as_secs_f64(),
        result: "identical".into(),
    });
    let _ = rt.block_on(env.soap.logout());
    Ok(steps)
}

/// A VirtualMachine with an OS disk of `capacity` and a PVC disk of half that.
fn create_vm(
    sup: &lab::supervisor::Supervisor,
    lab: &Lab,
    name: &str,
    capacity: u64,
) -> anyhow::Result<VmMoref> {
    let fail = |what: &str| {
        let what = what.to_owned();
        move |e: lab::supervisor::SupervisorError| anyhow::anyhow!("{what}: {e}")
    };
    sup.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("{name}-cloud-init"), "namespace": NAMESPACE},
        "stringData": {"user-data": format!("#cloud-config\nhostname: {name}\n")}
    }))
    .map_err(fail("creating the bootstrap secret"))?;
    sup.apply(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": format!("{name}-data"), "namespace": NAMESPACE},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": format!("{}Mi", capacity / MIB / 2)}}}
    }))
    .map_err(fail("creating the PVC"))?;
    sup.apply(json!({
        "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NAMESPACE,
                     "labels": {"app": "demo", "topology.kubernetes.io/zone": "zone-a"}},
        "spec": {
            "className": "best-effort-small", "imageName": "ubuntu-22.04",
            "groupName": GROUP,
            "powerState": "PoweredOn",
            "advanced": {"bootDiskCapacity": format!("{}Mi", capacity / MIB)},
            "bootstrap": {"cloudInit": {"rawCloudConfig": {"name": format!("{name}-cloud-init"), "key": "user-data"}}},
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": format!("{name}-data")}}]
        }
    }))
    .map_err(fail("creating the VirtualMachine"))?;
    let vm = sup
        .get("VirtualMachine", NAMESPACE, name)
        .and_then(|o| o["status"]["uniqueID"].as_str().map(str::to_owned))
        .context("VM Operator created no vSphere VM")?;
    let vm = VmMoref(vm);
    ensure!(lab.vm(&vm).is_ok(), "{vm} is not in the lab");
    Ok(vm)
}

/// Guest writes: one 64 KiB-aligned block of seeded data in every `stride`-th 1 MiB of
/// the disk (the rest stays a hole of the thin disk).
fn guest_writes(
    lab: &Lab,
    vm: &VmMoref,
    disk: lab::vmstate::DiskKey,
    capacity: u64,
    seed: u64,
    stride: u64,
) -> anyhow::Result<()> {
    let mut buf = vec![0_u8; 256 * 1024];
    for mib in (0..capacity / MIB).step_by(usize::try_from(stride.max(1))?) {
        let offset = mib * MIB + (seed % 4) * 64 * 1024;
        fill(&mut buf, offset ^ seed);
        lab.guest_write(vm, disk, offset, &buf)?;
    }
    Ok(())
}

fn backup(
    rt: &tokio::runtime::Runtime,
    env: &Environment,
    supervisor: SupervisorLink,
) -> anyhow::Result<BackupReport> {
    let supervisor = Arc::new(supervisor);
    let request = BackupRequest {
        group: Some("demo".into()),
        independent: false,
        vms: VMS
            .iter()
            .map(|n| VmRequest {
                selector: VmSelector::Namespaced {
                    namespace: NAMESPACE.into(),
                    name: (*n).into(),
                },
                quiesce: false,
            })
            .collect(),
        force_full: false,
        require_vmservice: true,
        prepare_access: true,
        limits: Limits::default(),
        places: None,
        busy_vm_wait: std::time::Duration::ZERO,
        snapshot_gate: None,
        supervisor: Some(Arc::clone(&supervisor)),
        slot: None,
    };
    let observer: engine::Observer = Arc::new(|e: &BackupEvent| {
        if let BackupEvent::SnapshotCreated {
            name, completed_ms, ..
        } = e
        {
            narrate!("  snapshot of {name} after {completed_ms} ms");
        }
    });
    let report = rt
        .block_on(async {
            let r = engine::run_backup(env, request, CancellationToken::new(), observer).await;
            supervisor.close().await;
            r
        })
        .context("backup")?;
    if !report.succeeded {
        let errors: Vec<String> = report
            .vms
            .iter()
            .filter_map(|v| v.error.as_ref().map(|e| format!("{}: {e}", v.name)))
            .collect();
        bail!("the backup failed: {}", errors.join("; "));
    }
    Ok(report)
}

#[allow(clippy::cast_precision_loss)] // display figures
fn backup_step(what: &'static str, r: &BackupReport) -> Step {
    let read: u64 = r
        .vms
        .iter()
        .flat_map(|v| &v.disks)
        .map(|d| d.stats.bytes_read)
        .sum();
    let stored: u64 = r
        .vms
        .iter()
        .flat_map(|v| &v.disks)
        .map(|d| d.stats.bytes_stored)
        .sum();
    let kinds: Vec<String> = r
        .vms
        .iter()
        .map(|v| {
            format!(
                "{} {}",
                v.name,
                v.kind.map_or("?", |k| match k {
                    crate::repo::catalog::PointKind::Full => "full",
                    crate::repo::catalog::PointKind::Incremental => "incremental",
                })
            )
        })
        .collect();
    Step {
        what,
        bytes: read,
        secs: r.seconds,
        result: format!(
            "{}; {:.1} MiB stored; skew {} ms",
            kinds.join(", "),
            stored as f64 / MIB as f64,
            r.skew_ms.unwrap_or(0)
        ),
    }
}

/// Compares a lab disk with a raw image, 4 MiB at a time; returns the bytes compared.
fn compare(
    lab_root: &Path,
    disk: &lab::datastore::DatastorePath,
    raw: &Path,
) -> anyhow::Result<u64> {
    use std::os::unix::fs::FileExt as _;
    let chain = DiskChain::open(lab_root, disk, OpenMode::ReadOnly)?;
    let file = std::fs::File::open(raw)?;
    let size = chain.capacity_bytes();
    ensure!(
        file.metadata()?.len() == size,
        "{disk} is {size} bytes, the backup {} bytes",
        file.metadata()?.len()
    );
    let mut a = vec![0_u8; usize::try_from(4 * MIB)?];
    let mut b = a.clone();
    let mut offset = 0;
    while offset < size {
        let n = usize::try_from((size - offset).min(4 * MIB))?;
        chain.read_at(offset, &mut a[..n])?;
        file.read_exact_at(&mut b[..n], offset)?;
        ensure!(
            a[..n] == b[..n],
            "{disk} differs from the backup at offset {offset}"
        );
        offset += n as u64;
    }
    Ok(size)
}

/// The demo's data: a recognisable, offset-dependent pattern.
fn fill(buf: &mut [u8], offset: u64) {
    let mut x = offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for word in buf.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
}

fn print_summary(steps: &[Step], json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<_> = steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "step": s.what, "bytes": s.bytes, "seconds": s.secs, "result": s.result,
                })
            })
            .collect();
        say!("{}", serde_json::json!({ "demo": "ok", "steps": rows }));
        return Ok(());
    }
    say!();
    say!("{:<52} {:>10} {:>10}  result", "step", "MiB", "MiB/s");
    for s in steps {
        let mib = s.bytes as f64 / MIB as f64;
        let rate = if s.secs > 0.0 {
            format!("{:.0}", mib / s.secs)
        } else {
            "-".into()
        };
        say!("{:<52} {:>10.1} {:>10}  {}", s.what, mib, rate, s.result);
    }
    say!("\ndemo passed");
    Ok(())
}
