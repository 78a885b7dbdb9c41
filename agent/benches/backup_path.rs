//! The whole backup path against the repository-only image benchmark, in one run:
//! a lab VM with a seeded disk (40 % zero, 30 % random, 30 % text) is backed up by the
//! `vadp-agent backup` binary (SOAP + snapshot + CBT + VDDK through vddk-sim + repository),
//! full and then after a 1 % change, and the same bytes are backed up as a raw image
//! (`Repository::backup_image`). Target: the whole path at ≥ 0.8× the image throughput.
//!
//! `cargo bench -p vadp-agent --bench backup_path` (`VADP_BENCH_SIZE_MIB`, default 2048).

use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use lab::Lab;
use lab::vmstate::NewDisk;
use vadp_agent::repo::synthetic_image;
use vadp_agent::repo::{DEFAULT_CHUNK_SIZE_BYTES, ImageBackup, Repository};
use vadp_tests::bench::{self, median, time};
use vadp_tests::{SimProfile, SimVariant, vddk_sim_libdir_with};

const MIB: u64 = 1 << 20;
const KIB64: u64 = 64 * 1024;

fn main() {
    let size_mib = bench::size_mib();
    let capacity = size_mib * MIB;
    let libdir = vddk_sim_libdir_with(SimVariant::Vddk8, SimProfile::Release);
    let work = vadp_tests::target_dir().join("bench-backup");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("create bench dir");
    let root = work.join("lab");
    let lab = Lab::create(&root).expect("create lab");
    let vcenter = lab::vcenter::InProcessVcenter::start(&root, false).expect("start vCenter");
    std::fs::write(
        work.join("vddk.conf"),
        format!("vadp.lab.root = \"{}\"\n", root.display()),
    )
    .expect("vddk.conf");
    let mut pw = std::fs::File::create(work.join("password")).expect("password file");
    writeln!(pw, "{}", vcenter.running().password).expect("password");
    drop(pw);

    eprintln!("generating a {size_mib} MiB image and copying it into a lab VM …");
    let image = work.join("image.raw");
    synthetic_image::generate(&image, capacity, 1).expect("generate image");
    let vm = lab
        .create_vm(
            "bench-1",
            "vm",
            &[NewDisk {
                capacity_bytes: capacity,
                thin: true,
                fcd: false,
            }],
        )
        .expect("create vm");
    lab.set_change_tracking(&vm, true).expect("enable CBT");
    let key = lab.vm(&vm).expect("vm").disks[0].key;
    let file = std::fs::File::open(&image).expect("open image");
    let mut block = vec![0_u8; usize::try_from(4 * MIB).expect("fits")];
    for off in (0..capacity).step_by(block.len()) {
        file.read_exact_at(&mut block, off).expect("read image");
        if block.iter().any(|b| *b != 0) {
            lab.guest_write(&vm, key, off, &block).expect("guest write");
        }
    }

    let image_repo = Repository::init(
        &work.join("repo-image"),
        u64::from(DEFAULT_CHUNK_SIZE_BYTES),
    )
    .expect("init repo");
    let vm_repo_path = work.join("repo-vm");
    drop(Repository::init(&vm_repo_path, u64::from(DEFAULT_CHUNK_SIZE_BYTES)).expect("init repo"));

    let image_full = time(|| {
        image_repo
            .backup_image(
                &ImageBackup {
                    name: "bench".into(),
                    file: image.clone(),
                    changed: None,
                    parent: None,
                },
                &mut |_, _| {},
            )
            .expect("image full");
    });
    let vm_full = time(|| agent_backup(&vcenter, &libdir, &work, &vm_repo_path, &vm.0));

    // 1 % of the disk changes, as 64 KiB extents, in the image and in the VM alike; five
    // rounds (a different change each), medians reported.
    let count = usize::try_from(capacity / 100 / KIB64).expect("fits");
    let mut buf = vec![0_u8; usize::try_from(KIB64).expect("fits")];
    let (mut image_incrs, mut vm_incrs) = (Vec::new(), Vec::new());
    for seed in 2..7 {
        let extents = synthetic_image::mutate(&image, seed, count, KIB64).expect("mutate");
        for e in &extents {
            let len = usize::try_from(e.length).expect("fits");
            file.read_exact_at(&mut buf[..len], e.offset)
                .expect("read image");
            lab.guest_write(&vm, key, e.offset, &buf[..len])
                .expect("guest write");
        }
        let image_round = || {
            time(|| {
                image_repo
                    .backup_image(
                        &ImageBackup {
                            name: "bench".into(),
                            file: image.clone(),
                            changed: Some(extents.clone()),
                            parent: None,
                        },
                        &mut |_, _| {},
                    )
                    .expect("image incremental");
            })
        };
        let vm_round = || time(|| agent_backup(&vcenter, &libdir, &work, &vm_repo_path, &vm.0));
        // Alternate which goes first.
        if seed % 2 == 0 {
            image_incrs.push(image_round());
            vm_incrs.push(vm_round());
        } else {
            vm_incrs.push(vm_round());
            image_incrs.push(image_round());
        }
    }
    let image_incr = median(&mut image_incrs);
    let vm_incr = median(&mut vm_incrs);
    eprintln!("incremental rounds: image {image_incrs:.2?} s, whole path {vm_incrs:.2?} s");

    #[allow(clippy::cast_precision_loss)] // display figures
    let mibps = |secs: f64| capacity as f64 / MIB as f64 / secs;
    println!(
        "\n{size_mib} MiB lab disk, {} MiB chunks, {count} × 64 KiB changed (1 %), incremental: median of 5\n",
        DEFAULT_CHUNK_SIZE_BYTES >> 20
    );
    println!(
        "| backup | image (repository only) | whole path (SOAP + VDDK + repository) | ratio | target |"
    );
    println!("|---|--:|--:|--:|--:|");
    println!(
        "| full | {image_full:.2} s ({:.0} MiB/s) | {vm_full:.2} s ({:.0} MiB/s) | {:.2}× | ≥ 0.8× |",
        mibps(image_full),
        mibps(vm_full),
        image_full / vm_full
    );
    println!(
        "| 1 % incremental | {image_incr:.2} s | {vm_incr:.2} s | {:.2}× | ≥ 0.8× |",
        image_incr / vm_incr
    );
    // Gigabytes of lab disks and repositories: do not leave them in target/.
    let _ = std::fs::remove_dir_all(&work);
}

/// One `vadp-agent backup` run (process start, VDDK load and login included).
fn agent_backup(
    vcenter: &lab::vcenter::InProcessVcenter,
    libdir: &Path,
    work: &Path,
    repo: &Path,
    vm: &str,
) {
    let out = Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
        .args(["--json", "backup", "--repo"])
        .arg(repo)
        .args(["--vm", vm, "--vcenter", vcenter.sdk_url(), "--user"])
        .arg(&vcenter.running().user)
        .arg("--password-file")
        .arg(work.join("password"))
        .args(["--thumbprint", vcenter.thumbprint().expect("https")])
        .arg("--vddk-libdir")
        .arg(libdir)
        .arg("--vddk-config")
        .arg(work.join("vddk.conf"))
        .output()
        .expect("run vadp-agent backup");
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Where the time went, from the agent's own report.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if let Some(r) = events.iter().find(|e| e["event"] == "report") {
        let v = &r["report"]["vms"][0];
        let d = &v["disks"][0];
        eprintln!(
            "  agent: job {:.2} s, VM {:.2} s, disk {:.2} s ({}, {} bytes read)",
            r["report"]["seconds"].as_f64().unwrap_or_default(),
            v["seconds"].as_f64().unwrap_or_default(),
            d["seconds"].as_f64().unwrap_or_default(),
            d["kind"],
            d["stats"]["bytes_read"]
        );
    }
}
