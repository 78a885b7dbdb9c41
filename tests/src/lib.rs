//! Test support shared by the workspace.
//!
//! [`vddk_sim_libdir`] builds the VDDK simulator (`vddk-sim`) in a target directory of its
//! own and lays it out like a VDDK distribution (`<libdir>/lib64/libvixDiskLib.so.8`), so a
//! test can hand that `libdir` to the agent's real loader. The simulator is built by a nested
//! `cargo build` because two builds of it exist (current VDDK, and VDDK 6.5 without the
//! optional symbols) and cargo cannot produce both from one build graph; cargo's own lock on
//! each target directory serialises concurrent test processes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Which build of the simulator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimVariant {
    /// VDDK 8: every function of our header, including the optional ones.
    Vddk8,
    /// VDDK 6.5: built with the `vddk65` feature, which leaves out
    /// `QueryAllocatedBlocks`, `FreeBlockList` and `AllocateConnectParams`.
    Vddk65,
}

impl SimVariant {
    fn dir_name(self) -> &'static str {
        match self {
            SimVariant::Vddk8 => "v8",
            SimVariant::Vddk65 => "v65",
        }
    }

    fn soname(self) -> &'static str {
        match self {
            // VDDK 6.5 ships as libvixDiskLib.so.6.
            SimVariant::Vddk8 => "libvixDiskLib.so.8",
            SimVariant::Vddk65 => "libvixDiskLib.so.6",
        }
    }
}

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The workspace's target directory (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Which cargo profile to build the simulator with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimProfile {
    /// `dev`: what tests use (fast to build).
    Debug,
    /// `release`: what benchmarks use, so the simulator's own speed does not hide the
    /// FFI path's.
    Release,
}

/// Builds (if needed) the debug simulator variant and returns a VDDK-style `libdir` whose
/// `lib64/` holds it under its soname.
///
/// # Panics
/// When cargo fails to build the simulator: a test cannot go on without it.
pub fn vddk_sim_libdir(variant: SimVariant) -> PathBuf {
    vddk_sim_libdir_with(variant, SimProfile::Debug)
}

/// Like [`vddk_sim_libdir`], with a choice of cargo profile.
///
/// # Panics
/// When cargo fails to build the simulator.
pub fn vddk_sim_libdir_with(variant: SimVariant, profile: SimProfile) -> PathBuf {
    let profile_dir = match profile {
        SimProfile::Debug => "debug",
        SimProfile::Release => "release",
    };
    let build_dir = target_dir()
        .join("vddk-sim")
        .join(format!("{}-{profile_dir}", variant.dir_name()));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "-p",
            "vddk-sim",
            "--lib",
            "--target-dir",
        ])
        .arg(&build_dir)
        // The outer cargo may have set these for the test process; they describe the
        // outer build, not this one.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_MAKEFLAGS");
    if variant == SimVariant::Vddk65 {
        cmd.args(["--features", "vddk65"]);
    }
    if profile == SimProfile::Release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo to build vddk-sim");
    assert!(
        status.success(),
        "building vddk-sim ({variant:?}) failed: {status}"
    );

    let built = build_dir.join(profile_dir).join("libvixDiskLib.so");
    let libdir = build_dir.join("libdir");
    let lib64 = libdir.join("lib64");
    std::fs::create_dir_all(&lib64).expect("create libdir/lib64");
    let link = lib64.join(variant.soname());
    // A symlink keeps following rebuilds; replace it atomically so concurrent test
    // processes never see it missing.
    if std::fs::read_link(&link).ok().as_deref() != Some(built.as_path()) {
        // Named after the process and the thread: two test threads may get here at once.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tmp = lib64.join(format!(
            ".{}.{}.{}",
            variant.soname(),
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&built, &tmp).expect("symlink vddk-sim");
        std::fs::rename(&tmp, &link).expect("install vddk-sim symlink");
    }
    libdir
}

/// What the benchmarks share: the image size and the timing helpers.
pub mod bench {
    use std::time::Instant;

    /// The benchmark image size in MiB: `VADP_BENCH_SIZE_MIB`, default 2048.
    #[must_use]
    pub fn size_mib() -> u64 {
        std::env::var("VADP_BENCH_SIZE_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2048)
    }

    /// The median of `v` (sorts it).
    ///
    /// # Panics
    /// On an empty slice.
    pub fn median(v: &mut [f64]) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    /// Seconds `f` takes.
    pub fn time(f: impl FnOnce()) -> f64 {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    }
}
