//! Sequential read throughput through the VDDK FFI path next to plain `pread` of the same
//! extent file (issue #2's target: VDDK ≥ 0.8× pread).
//!
//! `cargo bench -p vadp-agent --bench vddk_read` (size: `VADP_BENCH_SIZE_MIB`, default 2048).
//! Builds the simulator in release, creates a lab VM whose disk is filled with data, takes a
//! snapshot (a backup reads the frozen base, as here), then for 1 MiB and 4 MiB requests
//! alternates runs of `pread` over the flat extent and `VixDiskLib_Read` through
//! `vadp_agent::vddk` (read-only connection at the snapshot). Both read from the page cache
//! (a warm-up pass reads the file first), so the comparison isolates what the FFI path and
//! the simulator add per byte. Prints a Markdown table of medians.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use lab::Lab;
use lab::datastore::DatastorePath;
use lab::vmstate::NewDisk;
use vadp_agent::vddk::{ConnectSpec, Credentials, OpenFlags, Secret, TransportMode, Vddk};
use vadp_tests::{SimProfile, SimVariant, vddk_sim_libdir_with};

const MIB: u64 = 1 << 20;
const RUNS: usize = 5;

fn main() {
    let size_mib = vadp_tests::bench::size_mib();
    let capacity = size_mib * MIB;

    let libdir = vddk_sim_libdir_with(SimVariant::Vddk8, SimProfile::Release);
    let work = vadp_tests::target_dir().join("bench-vddk");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("create bench dir");
    let root = work.join("lab");
    let lab = Lab::create(&root).expect("create lab");
    // vddk-sim's ConnectEx goes through the lab's vCenter; it runs until main returns.
    let _vcenter =
        lab::vcenter::InProcessVcenter::start(&root, true).expect("start the lab vCenter");
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
    let state = lab.vm(&vm).expect("vm state");
    let disk_key = state.disks[0].key;
    let disk_path = state.disks[0].file_name.to_string();

    // Fill the disk with incompressible-looking data through the guest path.
    eprintln!("filling a {size_mib} MiB disk …");
    let mut block = vec![0_u8; usize::try_from(4 * MIB).expect("4 MiB fits")];
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for off in (0..capacity).step_by(block.len()) {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        lab.guest_write(&vm, disk_key, off, &block)
            .expect("guest write");
    }
    let snapshot = lab
        .create_snapshot(&vm, "bench", "vadp-agent benchmark")
        .expect("snapshot");

    let descriptor = DatastorePath::parse(&disk_path)
        .expect("datastore path")
        .resolve(&root);
    let flat = descriptor.with_file_name(
        descriptor
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .replace(".vmdk", "-flat.vmdk"),
    );
    let flat_file = std::fs::File::open(&flat).expect("open flat extent");
    assert_eq!(flat_file.metadata().expect("stat").len(), capacity);

    let config = work.join("vddk.conf");
    std::fs::write(&config, format!("vadp.lab.root = \"{}\"\n", root.display()))
        .expect("write vddk config");
    let vddk = Vddk::load(&libdir, Some(&config)).expect("load vddk-sim");
    let settings = lab.settings().expect("lab settings");
    let spec = ConnectSpec {
        server: settings.server_name.clone(),
        port: None,
        thumbprint: Some(settings.thumbprint.clone()),
        credentials: Credentials::Password {
            user: settings.user.clone(),
            password: Secret::new(settings.password.clone()),
        },
        vm: vm.0.clone(),
        snapshot: Some(snapshot.0.clone()),
        transport_modes: vec![TransportMode::NbdSsl],
        read_only: true,
    };
    let conn = vddk.connect(&spec).expect("connect at snapshot");
    let disk = conn
        .open(&disk_path, OpenFlags::READ_ONLY)
        .expect("open base disk");

    // Warm the page cache for both paths.
    let mut buf = vec![0_u8; usize::try_from(4 * MIB).expect("4 MiB fits")];
    let _ = read_pread(&flat_file, capacity, &mut buf);

    println!("| request | pread (MiB/s) | VDDK Read via vddk-sim (MiB/s) | ratio |");
    println!("|---|--:|--:|--:|");
    for request in [MIB, 4 * MIB] {
        let buf = &mut buf[..usize::try_from(request).expect("fits")];
        let mut pread_runs = Vec::new();
        let mut vddk_runs = Vec::new();
        for _ in 0..RUNS {
            pread_runs.push(read_pread(&flat_file, capacity, buf));
            vddk_runs.push(time(|| {
                for off in (0..capacity).step_by(buf.len()) {
                    disk.read_at(off, buf).expect("VDDK read");
                }
            }));
        }
        let p = mib_per_sec(capacity, median(&mut pread_runs));
        let v = mib_per_sec(capacity, median(&mut vddk_runs));
        println!(
            "| {} MiB | {p:.0} | {v:.0} | {:.2}× |",
            request / MIB,
            v / p
        );
    }
    drop(disk);
    drop(conn);
    let _ = std::fs::remove_dir_all(&work);
}

fn read_pread(file: &std::fs::File, capacity: u64, buf: &mut [u8]) -> Duration {
    time(|| {
        for off in (0..capacity).step_by(buf.len()) {
            file.read_exact_at(buf, off).expect("pread");
        }
    })
}

fn time(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn median(runs: &mut [Duration]) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

#[allow(clippy::cast_precision_loss)] // throughput figures, not exact arithmetic
fn mib_per_sec(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / MIB as f64 / took.as_secs_f64()
}
