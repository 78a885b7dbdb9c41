//! `vadp-agent demo`: the main job on the built-in lab.
//!
//! Today the demo exercises the VDDK path end to end (issue #2): it creates a lab with a VM,
//! starts the lab's vCenter in this process (HTTPS with the lab's certificate), installs the
//! VDDK simulator as a VDDK distribution would lay it out, loads it through the agent's real
//! loader (re-exec, dlopen, InitEx with our log callbacks), writes a disk through VDDK
//! between PrepareForAccess and EndAccess (which the simulator turns into
//! DisableMethods/EnableMethods on the vCenter), snapshots the VM through the agent's SOAP
//! client, checks that the snapshot view stays frozen while the guest keeps writing, and
//! reads back exactly the areas QueryChangedDiskAreas reports. The daemon issue (#7) grows it into the full backup/restore demo.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use clap::Args;
use lab::Lab;
use lab::vmstate::{NewDisk, VmMoref};

use crate::vddk::{self, ConnectSpec, Credentials, OpenFlags, Secret, TransportMode, Vddk};
use crate::vsphere::{self, CreateSnapshot, SoapClient, SoapConfig, TlsVerification};

const MIB: u64 = 1 << 20;
/// The identity our PrepareForAccess calls carry (VDDK allows at most 50 characters).
const IDENTITY: &str = "vadp-agent demo";

/// `vadp-agent demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Lab root to create (must not exist). Default: a fresh directory under the system
    /// temporary directory, removed at the end unless `--keep`.
    #[arg(long)]
    root: Option<PathBuf>,
    /// A VDDK distribution directory to use instead of the simulator built next to this
    /// executable (`libvixDiskLib.so`).
    #[arg(long, env = "VADP_VDDK_LIBDIR")]
    libdir: Option<PathBuf>,
    /// Disk size of the demo VM, in MiB (a multiple of 4, at least 8).
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
        println!("lab kept at {}", root.display());
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
    // The control plane: the lab's vCenter, over HTTPS, before VDDK is loaded (vddk-sim's
    // ConnectEx and PrepareForAccess talk to it, as VDDK talks to vCenter).
    let vcenter = lab::vcenter::InProcessVcenter::start(&lab_root, false)
        .context("starting the lab's vCenter")?;
    let thumbprint = vcenter
        .thumbprint()
        .context("the lab's vCenter serves HTTPS")?
        .to_owned();
    println!(
        "lab vCenter at {} (thumbprint {thumbprint})",
        vcenter.sdk_url()
    );
    let config = root.join("vddk.conf");
    std::fs::write(
        &config,
        format!("vadp.lab.root = \"{}\"\n", lab_root.display()),
    )?;

    let vddk = Vddk::load(libdir, Some(&config))?;
    let lib = vddk.library();
    println!(
        "VDDK {} loaded from {} (transports {})",
        lib.major(),
        lib.path().display(),
        vddk.transport_modes().join(":")
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the SOAP client's runtime")?;
    let mut soap = SoapConfig::new(
        vcenter
            .sdk_url()
            .parse()
            .with_context(|| format!("vCenter URL {}", vcenter.sdk_url()))?,
    );
    soap.tls = TlsVerification::Thumbprint(
        thumbprint
            .parse()
            .with_context(|| format!("vCenter thumbprint {thumbprint}"))?,
    );
    let running = vcenter.running();
    soap.credentials = Some(vsphere::Credentials::new(&running.user, &running.password));
    let client = rt
        .block_on(SoapClient::connect(soap))
        .with_context(|| format!("logging in to {}", vcenter.sdk_url()))?;

    let vm = lab.create_vm(
        "demo-web-1",
        "vm/Namespaces/demo-ns",
        &[NewDisk {
            capacity_bytes: capacity,
            thin: true,
        }],
    )?;
    let svm = vsphere::VmMoref::from(vm.0.as_str());
    // Change tracking is off on a new VM, as in vSphere; a backup product turns it on.
    rt.block_on(client.enable_cbt(&svm))
        .with_context(|| format!("enabling change tracking on {vm}"))?;
    let state = lab.vm(&vm)?;
    let disk_path = state.disks[0].file_name.to_string();
    let disk_key = state.disks[0].key;
    println!("created {} ({}) with disk {disk_path}", state.name, vm.0);
    let mut steps = Vec::new();

    // 1. Write the whole disk through VDDK, bracketed by PrepareForAccess/EndAccess, as a
    //    restore does.
    let spec = connect_spec(&lab, &vm, None, false)?;
    vddk.prepare_for_access(&spec, IDENTITY)?;
    let disabled = lab.disabled_methods(&vm)?;
    ensure!(
        disabled
            .iter()
            .any(|d| d.method == "RelocateVM_Task" && d.source == IDENTITY),
        "PrepareForAccess did not disable RelocateVM_Task"
    );
    let write = (|| -> anyhow::Result<Step> {
        let conn = vddk.connect(&spec)?;
        let disk = conn.open(&disk_path, OpenFlags::NONE)?;
        let mut buf = vec![0_u8; usize::try_from(4 * MIB)?];
        let start = Instant::now();
        let mut written = 0;
        for offset in (0..capacity).step_by(buf.len()) {
            // Leave every fourth 4 MiB block unwritten: a thin disk keeps holes.
            if (offset / (4 * MIB)) % 4 == 3 {
                continue;
            }
            fill(&mut buf, offset);
            disk.write_at(offset, &buf)?;
            written += buf.len() as u64;
        }
        disk.flush()?;
        Ok(Step {
            what: "write disk through VDDK (read-write, no snapshot)",
            bytes: written,
            secs: start.elapsed().as_secs_f64(),
            result: format!("transport {}", disk.transport_mode()),
        })
    })();
    vddk.end_access(&spec, IDENTITY)?;
    steps.push(write?);
    ensure!(
        lab.disabled_methods(&vm)?.is_empty(),
        "EndAccess did not re-enable RelocateVM_Task"
    );
    steps.push(Step {
        what: "PrepareForAccess / EndAccess",
        bytes: 0,
        secs: 0.0,
        result: "RelocateVM_Task disabled, then enabled again".into(),
    });

    // 2. Snapshot through vCenter, then read it back through VDDK and compare with what
    //    was written.
    let snapshot = |name: &str| {
        rt.block_on(client.create_snapshot(
            &svm,
            &CreateSnapshot::backup(name, "vadp-agent demo"),
            |_| {},
        ))
        .with_context(|| format!("snapshot {name} of {vm}"))
    };
    let snap1 = snapshot("vadp-demo-1")?;
    let snap1_disk = rt
        .block_on(client.snapshot_disks(&snap1))
        .with_context(|| format!("disks of {}", snap1.0))?
        .into_iter()
        .next()
        .with_context(|| format!("{} has no disk", snap1.0))?;
    let frozen = snap1_disk.file_name.clone();
    let change_id = snap1_disk
        .change_id
        .clone()
        .context("the demo disk has change tracking")?;
    let read = read_and_check(&vddk, &lab, &vm, &snap1.0, &frozen, capacity, Check::Whole)?;
    steps.push(Step {
        what: "read snapshot through VDDK, compare",
        bytes: capacity,
        secs: read,
        result: "identical to what was written".into(),
    });

    // 3. The guest keeps writing; the snapshot view must not move.
    let guest_writes = [
        (MIB, 64 * 1024),
        (capacity / 2 + 4096, 8192),
        (capacity - MIB, MIB),
    ];
    for (offset, len) in guest_writes {
        lab.guest_write(&vm, disk_key, offset, &vec![0xee; usize::try_from(len)?])?;
    }
    read_and_check(&vddk, &lab, &vm, &snap1.0, &frozen, capacity, Check::Whole)?;
    steps.push(Step {
        what: "guest writes after the snapshot",
        bytes: guest_writes.iter().map(|(_, l)| l).sum(),
        secs: 0.0,
        result: "snapshot view unchanged".into(),
    });

    // 4. A second snapshot: QueryChangedDiskAreas reports exactly the guest's writes.
    let snap2 = snapshot("vadp-demo-2")?;
    let snap2_disk = rt
        .block_on(client.snapshot_disks(&snap2))
        .with_context(|| format!("disks of {}", snap2.0))?
        .into_iter()
        .next()
        .with_context(|| format!("{} has no disk", snap2.0))?;
    let areas: Vec<(u64, u64)> = rt
        .block_on(client.query_changed_disk_areas(
            &svm,
            Some(&snap2),
            snap2_disk.key,
            snap2_disk.capacity_bytes,
            &change_id,
        ))
        .with_context(|| format!("changed areas of {vm} since {change_id}"))?
        .iter()
        .map(|a| (a.start_bytes, a.length_bytes))
        .collect();
    let changed: u64 = areas.iter().map(|(_, l)| l).sum();
    for (offset, len) in guest_writes {
        ensure!(
            areas
                .iter()
                .any(|(o, l)| *o <= offset && offset + len <= o + l),
            "change tracking missed the write at {offset}"
        );
    }
    let secs = read_and_check(
        &vddk,
        &lab,
        &vm,
        &snap2.0,
        &snap2_disk.file_name,
        capacity,
        Check::Changed {
            areas: &areas,
            writes: &guest_writes,
        },
    )?;
    steps.push(Step {
        what: "read changed areas at snapshot 2 (CBT)",
        bytes: changed,
        secs,
        result: format!("{} extent(s) since {change_id}", areas.len()),
    });

    for snap in [&snap2, &snap1] {
        rt.block_on(client.remove_snapshot(snap, true, |_| {}))
            .with_context(|| format!("removing {}", snap.0))?;
    }
    ensure!(lab.vm(&vm)?.snapshots.is_empty(), "snapshots left behind");
    steps.push(Step {
        what: "remove snapshots (consolidate)",
        bytes: 0,
        secs: 0.0,
        result: "no snapshot left".into(),
    });
    if let Err(e) = rt.block_on(client.logout()) {
        tracing::warn!(error = %e, "logout from the lab's vCenter");
    }
    Ok(steps)
}

fn connect_spec(
    lab: &Lab,
    vm: &VmMoref,
    snapshot: Option<&str>,
    read_only: bool,
) -> anyhow::Result<ConnectSpec> {
    let s = lab.settings()?;
    Ok(ConnectSpec {
        server: s.server_name,
        port: None,
        thumbprint: Some(s.thumbprint),
        credentials: Credentials::Password {
            user: s.user,
            password: Secret::new(s.password),
        },
        vm: vm.0.clone(),
        snapshot: snapshot.map(str::to_owned),
        transport_modes: vec![TransportMode::NbdSsl, TransportMode::Nbd],
        read_only,
    })
}

/// What [`read_and_check`] reads and compares.
enum Check<'a> {
    /// The whole disk, against the written pattern.
    Whole,
    /// Only the changed `areas` (offset, length), which must hold the guest's `writes`.
    Changed {
        areas: &'a [(u64, u64)],
        writes: &'a [(u64, u64)],
    },
}

/// Reads `path` at `snapshot` through VDDK and checks every byte it reads. Returns the
/// seconds the reads took.
fn read_and_check(
    vddk: &Vddk,
    lab: &Lab,
    vm: &VmMoref,
    snapshot: &str,
    path: &str,
    capacity: u64,
    check: Check<'_>,
) -> anyhow::Result<f64> {
    let conn = vddk.connect(&connect_spec(lab, vm, Some(snapshot), true)?)?;
    let disk = conn.open(path, OpenFlags::READ_ONLY)?;
    let mut buf = vec![0_u8; usize::try_from(4 * MIB)?];
    let mut expected = vec![0_u8; buf.len()];
    let start = Instant::now();
    match check {
        Check::Whole => {
            for offset in (0..capacity).step_by(buf.len()) {
                disk.read_at(offset, &mut buf)?;
                if (offset / (4 * MIB)) % 4 == 3 {
                    expected.fill(0);
                } else {
                    fill(&mut expected, offset);
                }
                ensure!(
                    buf == expected,
                    "snapshot data differs in the 4 MiB at {offset}"
                );
            }
        }
        Check::Changed { areas, writes } => {
            for (offset, len) in areas {
                let mut data = vec![0_u8; usize::try_from(*len)?];
                disk.read_at(*offset, &mut data)?;
                for (w_off, w_len) in writes {
                    if *offset <= *w_off && w_off + w_len <= offset + len {
                        let at = usize::try_from(w_off - offset)?;
                        let end = at + usize::try_from(*w_len)?;
                        ensure!(
                            data[at..end].iter().all(|b| *b == 0xee),
                            "changed area at {w_off} does not hold the guest's write"
                        );
                    }
                }
            }
        }
    }
    Ok(start.elapsed().as_secs_f64())
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

#[allow(clippy::cast_precision_loss)] // display figures
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
        println!("{}", serde_json::json!({ "demo": "ok", "steps": rows }));
        return Ok(());
    }
    println!();
    println!("{:<52} {:>10} {:>10}  result", "step", "MiB", "MiB/s");
    for s in steps {
        let mib = s.bytes as f64 / MIB as f64;
        let rate = if s.secs > 0.0 {
            format!("{:.0}", mib / s.secs)
        } else {
            "-".into()
        };
        println!("{:<52} {:>10.1} {:>10}  {}", s.what, mib, rate, s.result);
    }
    println!("\ndemo passed");
    Ok(())
}
