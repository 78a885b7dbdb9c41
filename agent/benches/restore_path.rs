//! The VM restore data path against the repository-only image restore, in one run: a seeded
//! 2 GiB image (40 % zero, 30 % random, 30 % text) is backed up as an image; it is then
//! restored five times each way, alternating which goes first (the second meets the
//! first's dirty pages): (a) to a raw file (`Repository::restore_image`) and (b) through
//! VDDK into a new thin lab disk (vddk-sim, read-write connection, zero chunks skipped) with
//! `Repository::restore_disk_to_sink` and the restore engine's `VddkSink` — the path
//! `vadp-agent restore` writes disks with. Target: (b) at ≥ 0.8× the throughput of (a).
//!
//! `cargo bench -p vadp-agent --bench restore_path` (`VADP_BENCH_SIZE_MIB`, default 2048).

use lab::Lab;
use lab::vmstate::NewDisk;
use tokio_util::sync::CancellationToken;
use vadp_agent::engine::restore::VddkSink;
use vadp_agent::repo::synthetic_image;
use vadp_agent::repo::{DEFAULT_CHUNK_SIZE_BYTES, ImageBackup, Repository};
use vadp_agent::vddk::{ConnectSpec, Credentials, OpenFlags, Secret, TransportMode, Vddk};
use vadp_tests::bench::{self, median, time};
use vadp_tests::{SimProfile, SimVariant, vddk_sim_libdir_with};

const MIB: u64 = 1 << 20;
const ROUNDS: usize = 5;

fn main() {
    let size_mib = bench::size_mib();
    let capacity = size_mib * MIB;
    let libdir = vddk_sim_libdir_with(SimVariant::Vddk8, SimProfile::Release);
    let work = vadp_tests::target_dir().join("bench-restore");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("create bench dir");
    let root = work.join("lab");
    let lab = Lab::create(&root).expect("create lab");
    let config = work.join("vddk.conf");
    std::fs::write(&config, format!("vadp.lab.root = \"{}\"\n", root.display()))
        .expect("vddk.conf");
    // InitEx before any other thread exists (VMware's rule).
    let vddk = Vddk::load(&libdir, Some(&config)).expect("load vddk-sim");
    // vddk-sim asks the lab's vCenter to validate ConnectEx.
    let _vcenter = lab::vcenter::InProcessVcenter::start(&root, false).expect("start vCenter");

    eprintln!("generating a {size_mib} MiB image and backing it up …");
    let image = work.join("image.raw");
    synthetic_image::generate(&image, capacity, 1).expect("generate image");
    let repo = Repository::init(&work.join("repo"), u64::from(DEFAULT_CHUNK_SIZE_BYTES))
        .expect("init repo");
    let point = repo
        .backup_image(
            &ImageBackup {
                name: "bench".into(),
                file: image.clone(),
                changed: None,
                parent: None,
            },
            &mut |_, _| {},
        )
        .expect("image backup")
        .point;
    let key = repo
        .list()
        .expect("list")
        .into_iter()
        .find(|p| p.id == point)
        .expect("point")
        .disks[0]
        .key;
    let settings = lab.settings().expect("lab settings");

    let mut image_secs = Vec::new();
    let mut vddk_secs = Vec::new();
    let image_round = |round: usize| {
        let out = work.join(format!("restored-{round}.raw"));
        let secs = time(|| {
            repo.restore_image(point, &out, &mut |_, _| {})
                .expect("image restore");
        });
        let _ = std::fs::remove_file(&out);
        secs
    };
    let vddk_round = |round: usize| {
        let vm = lab
            .create_vm(
                &format!("restore-{round}"),
                "vm",
                &[NewDisk {
                    capacity_bytes: capacity,
                    thin: true,
                    fcd: false,
                }],
            )
            .expect("create vm");
        let disk_path = lab.vm(&vm).expect("vm").disks[0].file_name.to_string();
        let spec = ConnectSpec {
            server: settings.server_name.clone(),
            port: None,
            thumbprint: Some(settings.thumbprint.clone()),
            credentials: Credentials::Password {
                user: settings.user.clone(),
                password: Secret::new(settings.password.clone()),
            },
            vm: vm.0.clone(),
            snapshot: None,
            transport_modes: vec![TransportMode::NbdSsl],
            read_only: false,
        };
        let secs = time(|| {
            let conn = vddk.connect(&spec).expect("connect read-write");
            let disk = conn.open(&disk_path, OpenFlags::NONE).expect("open disk");
            let mut sink = VddkSink::new(disk, true, CancellationToken::new());
            repo.restore_disk_to_sink(point, key, &mut sink, &mut |_, _| {})
                .expect("restore through VDDK");
        });
        lab.destroy_vm(&vm).expect("remove vm");
        secs
    };
    for round in 0..ROUNDS {
        // Alternate which path goes first, so neither always meets the other's dirty pages.
        if round % 2 == 0 {
            image_secs.push(image_round(round));
            vddk_secs.push(vddk_round(round));
        } else {
            vddk_secs.push(vddk_round(round));
            image_secs.push(image_round(round));
        }
        eprintln!(
            "round {round}: image {:.2} s, VDDK {:.2} s",
            image_secs[round], vddk_secs[round]
        );
    }
    let (image_s, vddk_s) = (median(&mut image_secs), median(&mut vddk_secs));
    #[allow(clippy::cast_precision_loss)] // display figures
    let mib = capacity as f64 / MIB as f64;
    println!("| path ({size_mib} MiB, median of {ROUNDS}) | seconds | MiB/s |");
    println!("|---|--:|--:|");
    println!(
        "| repository → raw file (image restore) | {image_s:.2} | {:.0} |",
        mib / image_s
    );
    println!(
        "| repository → VDDK (vddk-sim) → new thin lab disk | {vddk_s:.2} | {:.0} |",
        mib / vddk_s
    );
    println!(
        "| ratio (VDDK / image throughput), target ≥ 0.8× | {:.2}× | |",
        image_s / vddk_s
    );
    // Gigabytes of lab disks and repositories: do not leave them in target/.
    let _ = std::fs::remove_dir_all(&work);
}
