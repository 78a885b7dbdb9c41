//! Process-global behaviour of the VDDK layer, in a binary of its own: InitEx once per
//! process, Exit at shutdown, the re-exec, and `vadp-agent vddk info` against the v8 and
//! 6.5 builds of the simulator (run as the real binary).

#[cfg(test)]
mod tests {

    use std::path::{Path, PathBuf};
    use std::process::Command;

    use lab::Lab;
    use vadp_agent::vddk::{Library, Vddk, VddkInitError};
    use vadp_tests::{SimVariant, vddk_sim_libdir};

    /// A lab and a config file naming it; returns the config file.
    fn lab_config(dir: &Path) -> PathBuf {
        let root = dir.join("lab");
        Lab::create(&root).unwrap();
        let config = dir.join("vddk.conf");
        std::fs::write(&config, format!("vadp.lab.root = \"{}\"\n", root.display())).unwrap();
        config
    }

    fn info(libdir: &Path, config: &Path, json: bool) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vadp-agent"));
        cmd.args(["vddk", "info", "--libdir"])
            .arg(libdir)
            .arg("--config")
            .arg(config)
            .env_remove("VADP_AGENT_VDDK_REEXEC")
            .env("LD_LIBRARY_PATH", "/original/path");
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    }

    // One test: InitEx may run once in this process, so the order of steps matters.
    #[test]
    fn init_is_once_per_process_and_exit_runs_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let config = lab_config(dir.path());
        let libdir = vddk_sim_libdir(SimVariant::Vddk8);

        let vddk = Vddk::load(&libdir, Some(&config)).unwrap();
        assert_eq!(vddk.library().major(), 8);
        assert!(!vddk.transport_modes().is_empty());

        // A second InitEx is an error, not undefined behaviour.
        let err = Vddk::load(&libdir, Some(&config)).unwrap_err();
        assert!(matches!(err, VddkInitError::AlreadyInitialized), "{err}");

        // A clone keeps the library alive; the last handle's shutdown runs Exit.
        let clone = vddk.clone();
        assert!(!vddk.shutdown());
        assert!(clone.shutdown());

        // Still once per process, even after Exit.
        let err = Vddk::init(Library::load(&libdir).unwrap(), Some(&config)).unwrap_err();
        assert!(matches!(err, VddkInitError::AlreadyInitialized), "{err}");
    }

    #[test]
    fn vddk_info_on_v8_reports_every_optional_symbol_present() {
        let dir = tempfile::tempdir().unwrap();
        let config = lab_config(dir.path());
        let libdir = vddk_sim_libdir(SimVariant::Vddk8);
        let out = info(&libdir, &config, false);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let real = std::fs::canonicalize(libdir.join("lib64/libvixDiskLib.so.8")).unwrap();
        assert!(
            stdout.contains(&format!("vddk_dll={}\n", real.display())),
            "{stdout}"
        );
        assert!(stdout.contains("vddk_library_version=8\n"), "{stdout}");
        assert!(stdout.contains("vddk_transport_modes="), "{stdout}");
        for sym in [
            "VixDiskLib_QueryAllocatedBlocks",
            "VixDiskLib_FreeBlockList",
            "VixDiskLib_AllocateConnectParams",
        ] {
            assert!(stdout.contains(&format!("{sym}=1\n")), "{sym}: {stdout}");
        }
        // Re-executed with the library's directory first on LD_LIBRARY_PATH.
        let lib64 = libdir.join("lib64");
        assert!(
            stdout.contains(&format!(
                "vddk_ld_library_path_prefix={}\n",
                lib64.display()
            )),
            "{stdout}"
        );
    }

    #[test]
    fn vddk_info_on_65_reports_optional_symbols_missing() {
        let dir = tempfile::tempdir().unwrap();
        let config = lab_config(dir.path());
        let libdir = vddk_sim_libdir(SimVariant::Vddk65);
        let out = info(&libdir, &config, true);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["version"], 6);
        for sym in [
            "VixDiskLib_QueryAllocatedBlocks",
            "VixDiskLib_FreeBlockList",
            "VixDiskLib_AllocateConnectParams",
        ] {
            assert_eq!(v["optional_symbols"][sym], false, "{sym}: {v}");
        }
        assert!(v["library"].as_str().unwrap().contains("libvixDiskLib"));
    }

    #[test]
    fn vddk_info_without_a_library_lists_the_paths_tried() {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
            .args(["vddk", "info", "--libdir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(69));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                &dir.path()
                    .join("lib64/libvixDiskLib.so.9")
                    .display()
                    .to_string()
            ) && stderr.contains(&dir.path().join("libvixDiskLib.so.6").display().to_string()),
            "{stderr}"
        );
    }
}
