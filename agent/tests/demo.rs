//! The README's main job: `vadp-agent demo` runs the whole backup/restore flow to
//! completion on the built-in lab.

#[cfg(test)]
mod tests {
    use std::process::Command;

    use vadp_tests::{SimVariant, vddk_sim_libdir};

    #[test]
    fn demo_passes_and_cleans_up() {
        let libdir = vddk_sim_libdir(SimVariant::Vddk8);
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("demo");
        let out = Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
            .args(["demo", "--disk-mib", "32", "--root"])
            .arg(&root)
            .arg("--libdir")
            .arg(&libdir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "demo failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("demo passed"), "{stdout}");
        // The seed's flow: group backup, incremental, delete, restore, registration.
        for expected in [
            "full backup, 2 VMs as one group",
            "incremental backup (CBT)",
            "deleted VirtualMachine demo-ns/web-2",
            "pre-flight: WCP will do a restore to new",
            "registration 100/100 %",
            "VirtualMachine demo-ns/web-2: PoweredOff",
            "-> PVC restored-",
            "identical",
        ] {
            assert!(stdout.contains(expected), "{expected:?} missing: {stdout}");
        }

        // A second run into the same root refuses rather than mixing labs.
        let again = Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
            .args(["demo", "--root"])
            .arg(&root)
            .arg("--libdir")
            .arg(&libdir)
            .output()
            .unwrap();
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    }

    #[test]
    fn demo_json_summary() {
        let libdir = vddk_sim_libdir(SimVariant::Vddk8);
        let work = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
            .args(["--json", "demo", "--disk-mib", "16", "--root"])
            .arg(work.path().join("demo"))
            .arg("--libdir")
            .arg(&libdir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // With --json, stdout is the one summary document; the narrative is on stderr.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stdout}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("registration"),
            "the narrative is on stderr"
        );
        assert_eq!(v["demo"], "ok");
        let steps = v["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 4, "{v}");
        assert!(
            steps[2]["result"]
                .as_str()
                .unwrap()
                .contains("restore to new"),
            "{v}"
        );
    }
}
