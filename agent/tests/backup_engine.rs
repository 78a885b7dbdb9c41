//! The backup engine end to end: the `vadp-agent` binary (real VDDK loader, vddk-sim, SOAP
//! client, repository) against the lab's vCenter running in this test process.

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test data
mod tests {
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output};
    use std::time::{Duration, Instant};

    use base64::Engine as _;
    use lab::Lab;
    use lab::datastore::{DiskChain, OpenMode};
    use lab::vcenter::InProcessVcenter;
    use lab::vmstate::{DiskKey, NewDisk, VmMoref};
    use serde_json::Value;
    use vadp_agent::repo::Repository;
    use vadp_tests::{SimVariant, vddk_sim_libdir};

    const MIB: u64 = 1 << 20;
    const KIB64: u64 = 64 * 1024;
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vmservice");

    struct Fixture {
        dir: tempfile::TempDir,
        lab: Lab,
        vcenter: InProcessVcenter,
        libdir: PathBuf,
        /// Verify vCenter by a CA file (the lab's self-signed certificate) instead of
        /// pinning its thumbprint.
        by_ca: std::cell::Cell<bool>,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let lab_root = dir.path().join("lab");
            Lab::create(&lab_root).unwrap();
            let vcenter = InProcessVcenter::start(&lab_root, false).unwrap();
            let lab = Lab::open(&lab_root).unwrap();
            std::fs::write(
                dir.path().join("vddk.conf"),
                format!("vadp.lab.root = \"{}\"\n", lab_root.display()),
            )
            .unwrap();
            let mut f = std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new().write(true).create_new(true),
                0o600,
            )
            .open(dir.path().join("password"))
            .unwrap();
            writeln!(f, "{}", vcenter.running().password).unwrap();
            drop(f);
            let fx = Self {
                dir,
                lab,
                vcenter,
                libdir: vddk_sim_libdir(SimVariant::Vddk8),
                by_ca: std::cell::Cell::new(false),
            };
            let out = fx.run(&["repo", "init", "--path"], &[fx.repo().as_os_str()], None);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            fx.create_namespace_folder("demo-ns");
            fx
        }

        /// The Supervisor namespace's VM folder, created through the agent's SOAP client.
        fn create_namespace_folder(&self, namespace: &str) {
            use vadp_agent::vsphere::{
                Credentials, FolderMoref, SoapClient, SoapConfig, TlsVerification,
            };
            let _ = rustls::crypto::ring::default_provider().install_default();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut config = SoapConfig::new(self.vcenter.sdk_url().parse().unwrap());
            config.tls =
                TlsVerification::Thumbprint(self.vcenter.thumbprint().unwrap().parse().unwrap());
            let r = self.vcenter.running();
            config.credentials = Some(Credentials::new(&r.user, &r.password));
            rt.block_on(async {
                let client = SoapClient::connect(config).await.unwrap();
                let namespaces = client.find_namespace_folder("Namespaces").await.unwrap();
                let f = client
                    .create_folder(&FolderMoref(namespaces.0.clone()), namespace)
                    .await
                    .unwrap();
                assert!(!f.0.is_empty());
                client.logout().await.unwrap();
            });
        }

        fn repo(&self) -> PathBuf {
            self.dir.path().join("repo")
        }

        fn run(&self, args: &[&str], paths: &[&std::ffi::OsStr], crash: Option<&str>) -> Output {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_vadp-agent"));
            cmd.args(args).args(paths);
            if let Some(point) = crash {
                cmd.env("VADP_AGENT_CRASH_AT", point);
            }
            cmd.env_remove("VADP_AGENT_PASSWORD");
            // A read that lost its connection waits 2, 10 and 30 s before it is tried
            // again; the tests' connection losses need not.
            cmd.env("VADP_AGENT_READ_RETRY_PAUSES_MS", "20,20,20");
            cmd.env("VADP_AGENT_SNAPSHOT_REMOVE_PAUSES_MS", "20,20,20");
            cmd.output().unwrap()
        }

        fn connection(&self) -> Vec<String> {
            let r = self.vcenter.running();
            vec![
                "--vcenter".into(),
                self.vcenter.sdk_url().into(),
                "--user".into(),
                r.user.clone(),
                "--password-file".into(),
                self.dir.path().join("password").display().to_string(),
                if self.by_ca.get() {
                    "--ca-file".into()
                } else {
                    "--thumbprint".into()
                },
                if self.by_ca.get() {
                    self.dir
                        .path()
                        .join("lab/vcenter/cert.pem")
                        .display()
                        .to_string()
                } else {
                    self.vcenter.thumbprint().unwrap().into()
                },
                "--vddk-libdir".into(),
                self.libdir.display().to_string(),
                "--vddk-config".into(),
                self.dir.path().join("vddk.conf").display().to_string(),
            ]
        }

        /// `vadp-agent --json backup …`: exit status, the final report, every event.
        /// Starts a `backup` of `vms` with `extra` flags, paused at
        /// `backup-mid-disk` (marker files in `pause`), and returns once a disk read is
        /// held there; the output if the backup ends before.
        fn start_paused(&self, vms: &[&VmMoref], extra: &[&str], pause: &Path) -> Child {
            std::fs::create_dir_all(pause).unwrap();
            let mut args: Vec<String> = vec!["--json".into(), "backup".into(), "--repo".into()];
            args.push(self.repo().display().to_string());
            for vm in vms {
                args.extend(["--vm".into(), vm.0.clone()]);
            }
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            args.extend(self.connection());
            let mut child = Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
                .args(&args)
                .env_remove("VADP_AGENT_PASSWORD")
                .env("VADP_AGENT_PAUSE_AT", "backup-mid-disk")
                .env("VADP_AGENT_PAUSE_DIR", pause)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !pause.join("backup-mid-disk.reached").exists() {
                if child.try_wait().unwrap().is_some() {
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "the backup ended before it read: {}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                assert!(Instant::now() < deadline, "the backup never read");
                std::thread::sleep(Duration::from_millis(10));
            }
            child
        }

        fn backup(&self, vms: &[&VmMoref], extra: &[&str], crash: Option<&str>) -> Backup {
            let mut args: Vec<String> = vec!["--json".into(), "backup".into(), "--repo".into()];
            args.push(self.repo().display().to_string());
            for vm in vms {
                args.push("--vm".into());
                args.push(vm.0.clone());
            }
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            args.extend(self.connection());
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = self.run(&refs, &[], crash);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let events: Vec<Value> = stdout
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let report = events
                .iter()
                .find(|e| e["event"] == "report")
                .map(|e| e["report"].clone());
            Backup {
                code: out.status.code(),
                report,
                events,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }

        fn reconcile(&self, vms: &[&VmMoref]) -> Value {
            let (code, report) = self.reconcile_in(&self.repo(), vms, &[]);
            assert_eq!(code, Some(0), "reconcile: {report}");
            report
        }

        /// `vadp-agent reconcile` of `repo` against this fixture's vCenter: exit code and
        /// report.
        fn reconcile_in(
            &self,
            repo: &Path,
            vms: &[&VmMoref],
            extra: &[&str],
        ) -> (Option<i32>, Value) {
            let mut args: Vec<String> = vec!["--json".into(), "reconcile".into(), "--repo".into()];
            args.push(repo.display().to_string());
            for vm in vms {
                args.push("--vm".into());
                args.push(vm.0.clone());
            }
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            args.extend(self.connection());
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = self.run(&refs, &[], None);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout.lines().last().unwrap_or_else(|| {
                panic!(
                    "reconcile: no report: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
            let report = serde_json::from_str::<Value>(line).unwrap()["report"].clone();
            (out.status.code(), report)
        }

        fn new_vm(&self, name: &str, disks_mib: &[u64]) -> VmMoref {
            let disks: Vec<NewDisk> = disks_mib
                .iter()
                .map(|m| NewDisk {
                    capacity_bytes: m * MIB,
                    thin: true,
                    fcd: false,
                })
                .collect();
            self.lab
                .create_vm(name, "/dc1/vm/Namespaces/demo-ns", &disks)
                .unwrap()
        }

        /// The disk's current bytes, read from the lab's datastore directly.
        fn disk_bytes(&self, vm: &VmMoref, key: DiskKey) -> Vec<u8> {
            let file = self.lab.disk_file(vm, None, key).unwrap();
            let chain = DiskChain::open(self.lab.root(), &file, OpenMode::ReadOnly).unwrap();
            let mut buf = vec![0u8; usize::try_from(chain.capacity_bytes()).unwrap()];
            chain.read_at(0, &mut buf).unwrap();
            buf
        }

        fn restored(&self, point: &str, key: i32) -> Vec<u8> {
            let repo = Repository::open(&self.repo()).unwrap();
            let out = self.dir.path().join(format!("restored-{point}-{key}.raw"));
            repo.restore_disk_to_file(
                point.parse().unwrap(),
                Some(vadp_agent::ids::DiskKey(key)),
                &out,
                &mut |_, _| {},
            )
            .unwrap();
            std::fs::read(&out).unwrap()
        }

        fn assert_clean(&self, vms: &[&VmMoref]) {
            for vm in vms {
                let state = self.lab.vm(vm).unwrap();
                assert!(
                    state.snapshots.is_empty(),
                    "{vm} keeps {:?}",
                    state.snapshots
                );
                assert!(
                    self.lab.disabled_methods(vm).unwrap().is_empty(),
                    "{vm}: RelocateVM_Task still disabled"
                );
            }
        }

        fn verify_clean(&self) {
            let repo = self.repo();
            let out = self.run(&["repo", "verify", "--repo"], &[repo.as_os_str()], None);
            assert!(
                out.status.success(),
                "verify: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        fn points(&self) -> Vec<Value> {
            let repo = self.repo();
            let out = self.run(&["--json", "list", "--repo"], &[repo.as_os_str()], None);
            assert!(out.status.success());
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            v["points"].as_array().unwrap().clone()
        }
    }

    struct Backup {
        code: Option<i32>,
        report: Option<Value>,
        events: Vec<Value>,
        stderr: String,
    }

    impl Backup {
        fn ok(&self) -> &Value {
            assert_eq!(
                self.code,
                Some(0),
                "backup failed: {}\n{:?}",
                self.stderr,
                self.report
            );
            self.report.as_ref().unwrap()
        }
    }

    fn vm_report<'a>(report: &'a Value, vm: &VmMoref) -> &'a Value {
        report["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["vm"] == vm.0.as_str())
            .unwrap()
    }

    fn disk_report(vm: &Value, key: i32) -> &Value {
        vm["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["key"] == key)
            .unwrap()
    }

    fn pattern(seed: u8, len: u64) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn gz64(text: &str) -> String {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(text.as_bytes()).unwrap();
        base64::engine::general_purpose::STANDARD.encode(enc.finish().unwrap())
    }

    /// web-1's VM Service ExtraConfig (code spelling), with pvc-disk-data naming the lab
    /// VM's second disk: what VM Operator would have written for this VM.
    fn vmservice_extra_config(lab: &Lab, vm: &VmMoref) -> Vec<(String, String)> {
        let state = lab.vm(vm).unwrap();
        let yaml = std::fs::read_to_string(format!("{FIXTURES}/web-1/vm.yaml")).unwrap();
        let secrets =
            std::fs::read_to_string(format!("{FIXTURES}/web-1/additional-resources.yaml")).unwrap();
        let pvc = serde_json::json!([{
            "FileName": state.disks[1].file_name.to_string(),
            "PVCName": "web-1-data",
            "AccessModes": ["ReadWriteOnce"],
            "UUID": state.disks[1].uuid,
        }]);
        let classic = serde_json::json!([{
            "FileName": state.disks[0].file_name.to_string(),
            "UUID": state.disks[0].uuid,
        }]);
        vec![
            ("vmservice.virtualmachine.resource.yaml".into(), gz64(&yaml)),
            (
                "vmservice.virtualmachine.additional.resources.yaml".into(),
                gz64(&secrets),
            ),
            (
                "vmservice.virtualmachine.pvc.disk.data".into(),
                gz64(&pvc.to_string()),
            ),
            (
                "vmservice.virtualmachine.classicDiskData".into(),
                gz64(&classic.to_string()),
            ),
            (
                "vmservice.virtualmachine.backupVersion".into(),
                "1760433161318".into(),
            ),
            ("vmservice.namespacedName".into(), "demo-ns/web-1".into()),
        ]
    }

    #[test]
    fn group_full_then_incremental_restore_each_point_exactly() {
        let fx = Fixture::new();
        let web = fx.new_vm("web-1", &[24, 16]);
        let db = fx.new_vm("db-1", &[20]);
        fx.lab
            .set_extra_config(&web, vmservice_extra_config(&fx.lab, &web))
            .unwrap();
        let (d0, d1) = (DiskKey(2000), DiskKey(2001));
        // Guest data with holes.
        fx.lab
            .guest_write(&web, d0, 0, &pattern(1, 3 * MIB))
            .unwrap();
        fx.lab
            .guest_write(&web, d0, 10 * MIB, &pattern(2, MIB))
            .unwrap();
        fx.lab
            .guest_write(&web, d1, 5 * MIB, &pattern(3, 2 * MIB))
            .unwrap();
        fx.lab
            .guest_write(&db, d0, MIB, &pattern(4, 4 * MIB))
            .unwrap();
        let before = [
            fx.disk_bytes(&web, d0),
            fx.disk_bytes(&web, d1),
            fx.disk_bytes(&db, d0),
        ];

        let first = fx.backup(&[&web, &db], &["--group", "g1"], None);
        let r1 = first.ok().clone();
        assert!(r1["skew_ms"].is_u64(), "{r1}");
        for vm in [&web, &db] {
            let v = vm_report(&r1, vm);
            assert_eq!(v["kind"], "full", "{v}");
            assert!(
                v["reason"]
                    .as_str()
                    .unwrap()
                    .contains("change tracking was just enabled")
            );
        }
        assert_eq!(
            vm_report(&r1, &web)["validation"]["status"],
            "valid",
            "{r1}"
        );
        assert_eq!(vm_report(&r1, &db)["validation"]["status"], "notvmservice");
        // Secrets never enter the catalog or a manifest: no ExtraConfig value of web-1's
        // (its VM YAML and bootstrap Secrets among them) is in either file; the point's
        // config file gives them back.
        let web_point = vm_report(&r1, &web)["point"].as_str().unwrap().to_owned();
        let repo_dir = fx.repo();
        let kept = Repository::open(&repo_dir)
            .unwrap()
            .point_config(web_point.parse().unwrap())
            .unwrap()
            .unwrap();
        let live = vmservice_extra_config(&fx.lab, &web);
        let kept_extra = kept.extra_config.unwrap().to_string();
        let point_dir = repo_dir.join("indexes").join(&web_point);
        for (key, value) in live.iter().filter(|(_, v)| v.len() >= 32) {
            assert!(kept_extra.contains(value.as_str()), "{key} not kept");
            for file in [
                repo_dir.join("catalog.db"),
                repo_dir.join("catalog.db-wal"),
                point_dir.join("point.json"),
            ] {
                let bytes = std::fs::read(&file).unwrap_or_default();
                assert!(
                    !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                    "{} holds {key}",
                    file.display()
                );
            }
        }
        assert!(point_dir.join("config.chunk").is_file());
        assert!(
            first
                .events
                .iter()
                .any(|e| e["event"] == "snapshot_created")
        );
        assert!(first.events.iter().any(|e| e["event"] == "disk_progress"));
        fx.assert_clean(&[&web, &db]);

        // Guest writes after the first backup: 64 KiB here and there.
        let writes = [
            (web.clone(), d0, 2 * MIB),
            (web.clone(), d0, 17 * MIB + KIB64),
            (db.clone(), d0, 9 * MIB),
        ];
        for (vm, key, off) in &writes {
            fx.lab
                .guest_write(vm, *key, *off, &vec![0xee; KIB64 as usize])
                .unwrap();
        }
        let after = [
            fx.disk_bytes(&web, d0),
            fx.disk_bytes(&web, d1),
            fx.disk_bytes(&db, d0),
        ];

        // db-1's snapshot takes 2.5 s: the points still carry the moment the group's
        // snapshots started, the same for both VMs, not when each was committed.
        fx.lab
            .slow_next_snapshot(&db, Duration::from_millis(2500))
            .unwrap();
        let second = fx.backup(&[&web, &db], &["--group", "g1"], None);
        let ended = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        let r2 = second.ok().clone();
        let created = |vm: &VmMoref| {
            let id = vm_report(&r2, vm)["point"].clone();
            fx.points().into_iter().find(|p| p["id"] == id).unwrap()["created_at"]
                .as_i64()
                .unwrap()
        };
        assert_eq!(created(&web), created(&db));
        assert!(ended - created(&db) >= 2, "{} {ended}", created(&db));
        let w = vm_report(&r2, &web);
        assert_eq!(w["kind"], "incremental", "{w}");
        // Exactly the touched chunks were read; the untouched disk read nothing.
        let chunk = u64::from(Repository::open(&fx.repo()).unwrap().chunk_size_bytes());
        assert_eq!(disk_report(w, 2000)["bytes_changed"], 2 * KIB64);
        assert_eq!(disk_report(w, 2000)["stats"]["bytes_read"], 2 * chunk);
        assert_eq!(disk_report(w, 2001)["bytes_changed"], 0);
        assert_eq!(disk_report(w, 2001)["stats"]["bytes_read"], 0);
        let d = vm_report(&r2, &db);
        assert_eq!(disk_report(d, 2000)["bytes_changed"], KIB64);
        assert_eq!(disk_report(d, 2000)["stats"]["bytes_read"], chunk);
        fx.assert_clean(&[&web, &db]);

        // Both points restore byte for byte to the disks as they were at each snapshot.
        for (report, expected) in [(&r1, &before), (&r2, &after)] {
            let wp = vm_report(report, &web)["point"]
                .as_str()
                .unwrap()
                .to_owned();
            let dp = vm_report(report, &db)["point"].as_str().unwrap().to_owned();
            assert!(
                fx.restored(&wp, 2000) == expected[0],
                "web-1 disk 0 at {wp}"
            );
            assert!(
                fx.restored(&wp, 2001) == expected[1],
                "web-1 disk 1 at {wp}"
            );
            assert!(fx.restored(&dp, 2000) == expected[2], "db-1 disk 0 at {dp}");
        }
        assert!(before[0] != after[0]);

        // `show` tells the type and why, changed bytes, skew and validation.
        let wp = vm_report(&r2, &web)["point"].as_str().unwrap().to_owned();
        let repo = fx.repo();
        let out = fx.run(
            &["show", "--repo"],
            &[repo.as_os_str(), std::ffi::OsStr::new(&wp)],
            None,
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        for needle in [
            "incremental",
            "changed blocks since",
            "group skew",
            "VM Service: valid",
            "VMX:",
            // The namespace folder path (guide §5.3.3).
            "folder:     /dc1/vm/Namespaces/demo-ns (group-v",
        ] {
            assert!(text.contains(needle), "show lacks {needle:?}:\n{text}");
        }
        // `list` tells the same for every point, one line each.
        let out = fx.run(&["list", "--repo"], &[repo.as_os_str()], None);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        let line = text.lines().find(|l| l.starts_with(&wp)).unwrap();
        for needle in [
            "incremental",
            "changed blocks since",
            " valid ",
            "ms ",
            "Z  ",
        ] {
            assert!(line.contains(needle), "list lacks {needle:?}:\n{text}");
        }
        assert_eq!(fx.points().len(), 4);
        fx.verify_clean();
    }

    /// vCenter verified by a CA file rather than a pin: VDDK (which checks the server by
    /// SHA-1 thumbprint only; vddk-sim like the real one) is given the thumbprint of the
    /// certificate that verification accepted, and the backup reads its disks.
    #[test]
    fn a_vcenter_verified_by_a_ca_file_is_backed_up_through_vddk() {
        let fx = Fixture::new();
        let vm = fx.new_vm("ca-1", &[8]);
        fx.by_ca.set(true);
        let b = fx.backup(&[&vm], &[], None);
        assert_eq!(b.code, Some(0), "{}", b.stderr);
        let report = b.report.unwrap();
        let v = vm_report(&report, &vm);
        assert_eq!(v["disks"].as_array().map(Vec::len), Some(1), "{report}");
    }

    #[test]
    fn repair_then_a_cbt_incremental_with_no_changes_heals_the_full_point() {
        let fx = Fixture::new();
        let vm = fx.new_vm("heal-1", &[8]);
        fx.lab
            .guest_write(&vm, DiskKey(2000), MIB, &pattern(8, 3 * MIB))
            .unwrap();
        let expected = fx.disk_bytes(&vm, DiskKey(2000));
        let r1 = fx.backup(&[&vm], &[], None).ok().clone();
        let full = vm_report(&r1, &vm)["point"].as_str().unwrap().to_owned();

        // Damage one chunk of the point.
        let (digest, slots) = {
            let repo = Repository::open(&fx.repo()).unwrap();
            let point = repo
                .catalog()
                .get_point(full.parse().unwrap())
                .unwrap()
                .unwrap();
            let index = repo
                .load_index(&point, vadp_agent::ids::DiskKey(2000))
                .unwrap()
                .read_all()
                .unwrap();
            let d = *index.iter().find(|d| !d.is_zero()).unwrap();
            let path = repo.store().chunk_path(&d);
            let mut bytes = std::fs::read(&path).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            std::fs::write(&path, bytes).unwrap();
            (d, index.iter().filter(|s| **s == d).count() as u64)
        };
        let repo_dir = fx.repo();
        let out = fx.run(
            &["--json", "repo", "verify", "--repair", "--repo"],
            &[repo_dir.as_os_str()],
            None,
        );
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        // JSON lines: progress events, then the result.
        let stdout = String::from_utf8(out.stdout).unwrap();
        let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(v["report"]["problems"][0]["state"], "corrupt", "{v}");
        assert_eq!(v["repair"]["damaged"][0], digest.to_hex(), "{v}");

        // Nothing changed in the guest: CBT reports no extents, yet the slots holding the
        // damaged chunk are read again from the new snapshot and it is stored under its old
        // digest.
        let r2 = fx.backup(&[&vm], &[], None).ok().clone();
        let v2 = vm_report(&r2, &vm);
        assert_eq!(v2["kind"], "incremental", "{v2}");
        let d2 = disk_report(v2, 2000);
        assert_eq!(d2["bytes_changed"], 0, "{d2}");
        let chunk = u64::from(Repository::open(&fx.repo()).unwrap().chunk_size_bytes());
        assert_eq!(d2["stats"]["bytes_read"], slots * chunk, "{d2}");
        assert_eq!(d2["stats"]["chunks_new"], 1, "{d2}");
        fx.verify_clean();
        assert!(
            Repository::open(&fx.repo())
                .unwrap()
                .catalog()
                .damaged_list()
                .unwrap()
                .is_empty()
        );
        assert_eq!(fx.restored(&full, 2000), expected);
        fx.assert_clean(&[&vm]);

        // The catalog rebuilt from the point manifests keeps the VMX and ExtraConfig.
        let config = |point: &str| {
            Repository::open(&fx.repo())
                .unwrap()
                .point_config(point.parse().unwrap())
                .unwrap()
                .unwrap()
        };
        let before = config(&full);
        assert!(before.vmx.as_ref().is_some_and(|v| !v.is_empty()));
        std::fs::write(repo_dir.join("catalog.db"), b"not a database").unwrap();
        let out = fx.run(
            &["repo", "rebuild-catalog", "--repo"],
            &[repo_dir.as_os_str()],
            None,
        );
        assert!(out.status.success(), "{out:?}");
        let after = config(&full);
        assert_eq!(
            (after.vmx, after.extra_config),
            (before.vmx, before.extra_config)
        );
        assert_eq!(fx.points().len(), 2);
        fx.verify_clean();
    }

    /// Under cron, systemd or `2> log` there are no progress bars, and what they would
    /// print above themselves (snapshots, warnings, failures) goes to stderr as plain lines.
    #[test]
    fn off_a_terminal_a_backups_lines_are_on_stderr() {
        let fx = Fixture::new();
        let vm = fx.new_vm("plain-1", &[4]);
        let repo = fx.repo().display().to_string();
        let mut args: Vec<String> = vec!["backup".into(), "--repo".into(), repo];
        args.extend(["--vm".into(), vm.0.clone()]);
        args.extend(fx.connection());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = fx.run(&refs, &[], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("change tracking enabled on plain-1"),
            "{stderr}"
        );
        assert!(
            stderr.contains("snapshot ") && stderr.contains(" of plain-1 after "),
            "{stderr}"
        );
    }

    #[test]
    fn cbt_reset_gives_a_labelled_full_and_a_resize_a_full_of_that_disk_only() {
        let fx = Fixture::new();
        let vm = fx.new_vm("app-1", &[12, 8]);
        fx.lab
            .guest_write(&vm, DiskKey(2000), 0, &pattern(5, MIB))
            .unwrap();
        fx.lab
            .guest_write(&vm, DiskKey(2001), MIB, &pattern(6, MIB))
            .unwrap();
        fx.backup(&[&vm], &[], None).ok();

        // CBT off and on again: new change UUIDs, old changeIds are worthless.
        fx.lab.set_change_tracking(&vm, false).unwrap();
        fx.lab.set_change_tracking(&vm, true).unwrap();
        fx.lab
            .guest_write(&vm, DiskKey(2000), 4 * MIB, &pattern(7, KIB64))
            .unwrap();
        let r = fx.backup(&[&vm], &[], None).ok().clone();
        let v = vm_report(&r, &vm);
        assert_eq!(v["kind"], "full", "{v}");
        for key in [2000, 2001] {
            let d = disk_report(v, key);
            assert_eq!(d["kind"], "full");
            assert!(
                d["reason"]
                    .as_str()
                    .unwrap()
                    .contains("change tracking was reset"),
                "{d}"
            );
        }

        // Grow the second disk: that disk alone is read in full.
        fx.lab.resize_disk(&vm, DiskKey(2001), 16 * MIB).unwrap();
        fx.lab
            .guest_write(&vm, DiskKey(2001), 14 * MIB, &pattern(8, KIB64))
            .unwrap();
        fx.lab
            .guest_write(&vm, DiskKey(2000), 8 * MIB, &pattern(9, KIB64))
            .unwrap();
        let expected = [
            fx.disk_bytes(&vm, DiskKey(2000)),
            fx.disk_bytes(&vm, DiskKey(2001)),
        ];
        let r = fx.backup(&[&vm], &[], None).ok().clone();
        let v = vm_report(&r, &vm);
        assert_eq!(v["kind"], "incremental");
        assert_eq!(disk_report(v, 2000)["kind"], "incremental");
        let grown = disk_report(v, 2001);
        assert_eq!(grown["kind"], "full");
        assert!(
            grown["reason"].as_str().unwrap().contains("resized"),
            "{grown}"
        );
        assert_eq!(grown["capacity_bytes"], 16 * MIB);
        let point = v["point"].as_str().unwrap().to_owned();
        assert!(fx.restored(&point, 2000) == expected[0]);
        assert!(fx.restored(&point, 2001) == expected[1]);
        fx.verify_clean();
    }

    /// Change tracking off and a snapshot of the user's on the VM: VMware does not support
    /// enabling CBT then (its incrementals could miss changes), so the backup leaves it
    /// off, says why, and is full, as is the next; once the snapshot is gone, CBT is
    /// enabled and incrementals follow.
    #[test]
    fn change_tracking_is_not_enabled_while_the_vm_has_snapshots() {
        let fx = Fixture::new();
        let vm = fx.new_vm("snapped-1", &[8]);
        assert!(!fx.lab.vm(&vm).unwrap().change_tracking_enabled);
        fx.lab
            .guest_write(&vm, DiskKey(2000), 0, &pattern(3, MIB))
            .unwrap();
        let users = fx
            .lab
            .create_snapshot(&vm, "before-upgrade", "the user's own")
            .unwrap();
        let kind_after_backup = |warned: bool| {
            let b = fx.backup(&[&vm], &[], None);
            let r = b.ok().clone();
            let warning = b.events.iter().any(|e| {
                e["event"] == "warning"
                    && e["message"]
                        .as_str()
                        .unwrap()
                        .contains("VMware does not support enabling it then")
            });
            assert_eq!(warning, warned, "{:?}", b.events);
            let v = vm_report(&r, &vm).clone();
            (
                v["kind"].as_str().unwrap().to_owned(),
                v["point"].as_str().unwrap().to_owned(),
            )
        };
        assert_eq!(kind_after_backup(true).0, "full");
        assert!(!fx.lab.vm(&vm).unwrap().change_tracking_enabled);
        fx.lab
            .guest_write(&vm, DiskKey(2000), 2 * MIB, &pattern(4, KIB64))
            .unwrap();
        let (kind, point) = kind_after_backup(true);
        assert_eq!(kind, "full");
        assert!(fx.restored(&point, 2000) == fx.disk_bytes(&vm, DiskKey(2000)));
        assert_eq!(
            fx.lab.vm(&vm).unwrap().snapshots.len(),
            1,
            "the user's stays"
        );
        // The snapshot gone: enabled now, and the next backup is an incremental.
        fx.lab.remove_snapshot(&vm, &users).unwrap();
        assert_eq!(kind_after_backup(false).0, "full");
        assert!(fx.lab.vm(&vm).unwrap().change_tracking_enabled);
        fx.lab
            .guest_write(&vm, DiskKey(2000), 5 * MIB, &pattern(5, KIB64))
            .unwrap();
        let (kind, point) = kind_after_backup(false);
        assert_eq!(kind, "incremental");
        assert!(fx.restored(&point, 2000) == fx.disk_bytes(&vm, DiskKey(2000)));
    }

    #[test]
    fn a_crash_inside_the_cbt_enable_cycle_leaves_no_snapshot_after_reconcile() {
        let fx = Fixture::new();
        let vm = fx.new_vm("cbt-crash", &[8]);
        assert!(!fx.lab.vm(&vm).unwrap().change_tracking_enabled);
        let crashed = fx.backup(&[&vm], &[], Some("cbt-cycle-snapshot"));
        assert_ne!(crashed.code, Some(0), "the agent did not crash");
        let left = fx.lab.vm(&vm).unwrap().snapshots;
        assert_eq!(left.len(), 1, "the cycle's snapshot: {left:?}");
        let report = fx.reconcile(&[]);
        assert_eq!(
            report["snapshots_removed"].as_array().unwrap().len(),
            1,
            "{report}"
        );
        fx.assert_clean(&[&vm]);
        // CBT is on now, and the next backup works.
        fx.backup(&[&vm], &[], None).ok();
        fx.assert_clean(&[&vm]);
        fx.verify_clean();
    }

    /// A disk whose changeId went back (a revert to a snapshot older than the last backup)
    /// gets a full backup, said so, rather than a change query that could not name the
    /// blocks the revert took back.
    #[test]
    fn a_disk_whose_change_sequence_went_back_gets_a_full() {
        let fx = Fixture::new();
        let vm = fx.new_vm("web-1", &[4]);
        fx.lab
            .guest_write(&vm, DiskKey(2000), 0, &pattern(1, MIB))
            .unwrap();
        fx.backup(&[&vm], &[], None).ok();
        // As if the last backup had been taken at a later state than the disk has now.
        let db = rusqlite::Connection::open(fx.repo().join("catalog.db")).unwrap();
        let recorded: String = db
            .query_row("SELECT change_id FROM disks", [], |r| r.get(0))
            .unwrap();
        let (uuid, _) = recorded.rsplit_once('/').unwrap();
        db.execute(
            "UPDATE disks SET change_id = ?1",
            [format!("{uuid}/999999")],
        )
        .unwrap();
        drop(db);
        fx.lab
            .guest_write(&vm, DiskKey(2000), MIB, &pattern(2, KIB64))
            .unwrap();
        let b = fx.backup(&[&vm], &[], None);
        let d = disk_report(vm_report(b.ok(), &vm), 2000).clone();
        assert_eq!(d["kind"], "full", "{d}");
        assert!(
            d["reason"]
                .as_str()
                .unwrap()
                .contains("went back to an earlier state"),
            "{d}"
        );
        let point = vm_report(b.ok(), &vm)["point"].as_str().unwrap().to_owned();
        assert!(fx.restored(&point, 2000) == fx.disk_bytes(&vm, DiskKey(2000)));
    }

    /// Hotadd transport: the snapshot's disks are attached to the proxy VM while they are
    /// read and detached after. A backup killed while one is attached leaves it there, and
    /// vCenter cannot remove the snapshot until it goes: reconcile calls VixDiskLib_Cleanup
    /// first, which detaches it, and then removes the snapshot.
    #[test]
    fn a_disk_a_crashed_backup_left_hot_added_is_detached_before_its_snapshot_goes() {
        let fx = Fixture::new();
        let proxy = fx.new_vm("backup-proxy", &[1]);
        let conf = fx.dir.path().join("vddk.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&format!("vadp.sim.proxyVm = \"{proxy}\"\n"));
        std::fs::write(&conf, text).unwrap();
        let proxy_disks = |fx: &Fixture| fx.lab.vm(&proxy).unwrap().disks.len();
        let vm = fx.new_vm("web-1", &[8]);
        fx.lab
            .guest_write(&vm, DiskKey(2000), 0, &pattern(1, 3 * MIB))
            .unwrap();
        let hotadd = ["--transports", "hotadd:nbdssl"];

        // A backup reads through the proxy and leaves it as it was.
        let b = fx.backup(&[&vm], &hotadd, None);
        let v = vm_report(b.ok(), &vm);
        assert_eq!(disk_report(v, 2000)["transport"], "hotadd", "{v}");
        assert_eq!(proxy_disks(&fx), 1);
        fx.assert_clean(&[&vm]);

        // Killed while the disk is attached.
        fx.lab
            .guest_write(&vm, DiskKey(2000), 0, &pattern(2, KIB64))
            .unwrap();
        let crashed = fx.backup(&[&vm], &hotadd, Some("disk-opened"));
        assert_ne!(crashed.code, Some(0), "the agent did not crash");
        assert_eq!(
            proxy_disks(&fx),
            2,
            "the frozen disk is not on the proxy: {}",
            crashed.stderr
        );
        let state = fx.lab.vm(&vm).unwrap();
        assert_eq!(state.snapshots.len(), 1);
        // What a reconcile without Cleanup would meet.
        let refused = fx.lab.remove_snapshot(&vm, &state.snapshots[0].moref);
        assert!(
            matches!(refused, Err(lab::vmstate::LabError::DiskInUse { .. })),
            "{refused:?}"
        );

        let report = fx.reconcile(&[]);
        assert!(report["errors"].as_array().unwrap().is_empty(), "{report}");
        assert_eq!(report["transport_cleaned"], 1, "{report}");
        assert_eq!(report["snapshots_removed"].as_array().unwrap().len(), 1);
        assert_eq!(
            proxy_disks(&fx),
            1,
            "the hot-added disk is still on the proxy"
        );
        fx.assert_clean(&[&vm]);
        let records = fx.dir.path().join("lab/vddk-tmp/hotadd");
        assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0);
        // Nothing left: the next reconcile cleans nothing, and a backup works.
        assert_eq!(fx.reconcile(&[])["transport_cleaned"], 0);
        let expected = fx.disk_bytes(&vm, DiskKey(2000));
        let b = fx.backup(&[&vm], &hotadd, None);
        let point = vm_report(b.ok(), &vm)["point"].as_str().unwrap().to_owned();
        assert!(fx.restored(&point, 2000) == expected);
        assert_eq!(proxy_disks(&fx), 1);
        assert!(b.ok()["warnings"].as_array().unwrap().is_empty());

        // Another proxy holds the VM's disk (its own hot-add, which Cleanup here cannot
        // see): the backup commits, but its snapshot stays. The job succeeds with a warning
        // that says so, in its report and as an event.
        let other = fx.new_vm("other-proxy", &[1]);
        let file = fx.lab.disk_file(&vm, None, DiskKey(2000)).unwrap();
        fx.lab.attach_disk(&other, &file).unwrap();
        let b = fx.backup(&[&vm], &hotadd, None);
        let r = b.ok();
        assert!(vm_report(r, &vm)["point"].is_string(), "{r}");
        let warnings = r["warnings"].as_array().unwrap();
        // (One per attempt: the VM's own clean-up, then the job's.)
        assert!(!warnings.is_empty(), "{r}");
        assert!(
            warnings
                .iter()
                .all(|w| w.as_str().unwrap().contains("FileLocked")),
            "{warnings:?}"
        );
        assert!(
            b.events
                .iter()
                .any(|e| e["event"] == "warning"
                    && e["message"].as_str().unwrap().contains("reconcile")),
            "{:?}",
            b.events
        );
        assert_eq!(fx.lab.vm(&vm).unwrap().snapshots.len(), 1);
    }

    /// An independent disk is not frozen by the snapshot: the running VM is refused, naming
    /// the disk, with nothing changed; powered off, it is backed up.
    #[test]
    fn a_running_vm_with_an_independent_disk_is_refused() {
        let fx = Fixture::new();
        let vm = fx.new_vm("independent", &[4, 4]);
        fx.lab
            .modify_vm(&vm, |s| {
                s.disks[1].mode = "independent_persistent".into();
                s.power_state = lab::vmstate::PowerState::PoweredOn;
                Ok(())
            })
            .unwrap();
        let refused = fx.backup(&[&vm], &[], None);
        assert_ne!(refused.code, Some(0), "backup not refused");
        assert!(
            refused.stderr.contains("independent_persistent")
                && refused.stderr.contains("Hard disk 2"),
            "{}",
            refused.stderr
        );
        assert!(fx.points().is_empty());
        assert!(fx.lab.vm(&vm).unwrap().snapshots.is_empty());
        fx.lab
            .modify_vm(&vm, |s| {
                s.power_state = lab::vmstate::PowerState::PoweredOff;
                Ok(())
            })
            .unwrap();
        fx.backup(&[&vm], &[], None).ok();
        fx.assert_clean(&[&vm]);

        // Powered on while its disks are read: the independent disk may have been written
        // meanwhile, so no point is committed.
        for key in [DiskKey(2000), DiskKey(2001)] {
            fx.lab.guest_write(&vm, key, 0, &pattern(3, MIB)).unwrap();
        }
        let pause = fx.dir.path().join("pause");
        let child = fx.start_paused(&[&vm], &["--full"], &pause);
        let before = fx.points().len();
        fx.lab
            .modify_vm(&vm, |s| {
                s.power_state = lab::vmstate::PowerState::PoweredOn;
                Ok(())
            })
            .unwrap();
        std::fs::write(pause.join("backup-mid-disk.go"), b"").unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{stderr}");
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains("powered on while its independent disk was read"),
            "{stderr}"
        );
        assert_eq!(fx.points().len(), before, "a point was committed");
        assert!(fx.lab.vm(&vm).unwrap().snapshots.is_empty());
    }

    /// A job of many VMs holds no more VDDK connections (each a vCenter session of its
    /// own) than it reads disks at once: with one disk at a time, while the first VM's disk
    /// is read, the three others have not connected; they connect in turn, every VM is
    /// backed up, and every session is closed at the end.
    #[test]
    fn a_job_connects_no_more_vms_at_once_than_it_reads_disks() {
        let fx = Fixture::new();
        let vms: Vec<VmMoref> = (0..4)
            .map(|n| fx.new_vm(&format!("many-{n}"), &[4]))
            .collect();
        for (n, vm) in vms.iter().enumerate() {
            fx.lab
                .guest_write(vm, DiskKey(2000), 0, &pattern(n as u8, MIB))
                .unwrap();
        }
        // Sessions opened while the first disk read is held, beyond those open before.
        let opened_while_reading = |vms: &[VmMoref], run: usize| -> usize {
            let pause = fx.dir.path().join(format!("pause-{run}"));
            let before = fx.vcenter.running().vcenter.session_count();
            let vms: Vec<&VmMoref> = vms.iter().collect();
            let child = fx.start_paused(&vms, &["--full", "--disks-per-job", "1"], &pause);
            // Time for any other VM to connect, as each did at once before.
            std::thread::sleep(Duration::from_secs(1));
            let opened = fx.vcenter.running().vcenter.session_count() - before;
            std::fs::write(pause.join("backup-mid-disk.go"), b"").unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // Every session the job opened is closed again: VDDK's connections, its
            // PrepareForAccess and EndAccess calls, and the agent's own.
            assert_eq!(
                fx.vcenter.running().vcenter.session_count(),
                before,
                "sessions left open"
            );
            opened
        };
        let one = opened_while_reading(&vms[..1], 0);
        let four = opened_while_reading(&vms, 1);
        assert!(one >= 1, "the agent's session and the VM's connection");
        assert_eq!(
            four, one,
            "the other VMs connected while the first was read"
        );
        let points = fx.points();
        for vm in &vms {
            let n = points
                .iter()
                .filter(|p| p["vm"]["moref"] == vm.0.as_str())
                .count();
            assert_eq!(n, if *vm == vms[0] { 2 } else { 1 }, "{vm}");
        }
        fx.assert_clean(&vms.iter().collect::<Vec<_>>());
    }

    #[test]
    fn a_snapshot_removal_that_leaves_consolidation_needed_is_consolidated() {
        let fx = Fixture::new();
        let vm = fx.new_vm("consolidate", &[8]);
        fx.backup(&[&vm], &[], None).ok();
        fx.lab.leave_next_removal_unconsolidated(&vm).unwrap();
        fx.backup(&[&vm], &[], None).ok();
        let state = fx.lab.vm(&vm).unwrap();
        assert!(
            !state.leave_next_removal_unconsolidated,
            "no snapshot was removed"
        );
        assert!(
            !state.consolidation_needed,
            "runtime.consolidationNeeded stays set"
        );
        fx.assert_clean(&[&vm]);
    }

    #[test]
    fn a_crash_while_the_snapshot_is_being_created_leaves_no_snapshot_after_reconcile() {
        let fx = Fixture::new();
        let vm = fx.new_vm("slow-snapshot", &[8]);
        fx.backup(&[&vm], &[], None).ok();
        // The agent dies while vCenter is still creating its snapshot, which only appears
        // in the VM's snapshot tree after a while (a slow quiesce).
        let delay = Duration::from_secs(3);
        fx.lab.slow_next_snapshot(&vm, delay).unwrap();
        let started = Instant::now();
        let crashed = fx.backup(&[&vm], &[], Some("snapshot-task-running"));
        assert_ne!(crashed.code, Some(0), "the agent did not crash");
        assert!(
            fx.lab.vm(&vm).unwrap().snapshots.is_empty(),
            "the snapshot exists already: the test cannot tell a wait from none"
        );
        // Reconcile waits for the creation to end, then removes the snapshot it made.
        let report = fx.reconcile(&[]);
        assert_eq!(
            report["snapshots_removed"].as_array().unwrap().len(),
            1,
            "{report}"
        );
        // (Without the wait the snapshot would appear only now, after reconcile.)
        std::thread::sleep(delay.saturating_sub(started.elapsed()) + Duration::from_millis(500));
        fx.assert_clean(&[&vm]);
        fx.backup(&[&vm], &[], None).ok();
        fx.assert_clean(&[&vm]);
    }

    /// A read that loses its VDDK connection (a network blip, an ESXi host's NFC service
    /// restarting) is tried again on a new connection, and the backup goes on; its point
    /// holds the disks' bytes. A loss on every connection fails the VM once the retries are
    /// used up, naming the error and the attempts, and leaves nothing behind.
    #[test]
    fn a_read_that_lost_its_vddk_connection_is_tried_again_on_a_new_one() {
        let fx = Fixture::new();
        let vm = fx.new_vm("flaky-link", &[4, 3]);
        for (key, at) in [(2000, 0u64), (2000, 3 * MIB), (2001, MIB), (2001, 2 * MIB)] {
            let data: Vec<u8> = (0..MIB)
                .map(|i| (i % 251) as u8 ^ (at / MIB) as u8)
                .collect();
            fx.lab.guest_write(&vm, DiskKey(key), at, &data).unwrap();
        }
        let sessions = fx.vcenter.running().vcenter.session_count();
        // The next three opens lose their connection at their first read: three reads
        // fail in all, each on another connection (a read may fail twice in a row).
        fx.lab.lose_vddk_connections(&vm, 3, 0).unwrap();
        let b = fx.backup(&[&vm], &["--full"], None);
        let r = b.ok();
        assert_eq!(
            fx.lab.vm(&vm).unwrap().vddk_connection_losses,
            0,
            "no loss met"
        );
        assert_eq!(
            b.stderr
                .matches("reading through VDDK failed; connecting again")
                .count(),
            3,
            "{}",
            b.stderr
        );
        let point = vm_report(r, &vm)["point"].as_str().unwrap().to_owned();
        for key in [2000, 2001] {
            assert_eq!(
                fx.restored(&point, key),
                fx.disk_bytes(&vm, DiskKey(key)),
                "disk {key}"
            );
        }
        assert_eq!(
            fx.vcenter.running().vcenter.session_count(),
            sessions,
            "a lost connection's session left open"
        );
        fx.assert_clean(&[&vm]);

        let points = fx.points().len();
        fx.lab.lose_vddk_connections(&vm, 100, 0).unwrap();
        let b = fx.backup(&[&vm], &["--full"], None);
        assert_ne!(b.code, Some(0), "{}", b.stderr);
        let said = format!("{}{:?}", b.stderr, b.report);
        assert!(
            said.contains("tried 4 times, connecting again before each retry")
                && said.contains("VIX_E_HOST_TCP_CONN_LOST"),
            "{said}"
        );
        assert_eq!(fx.points().len(), points);
        fx.assert_clean(&[&vm]);
        assert_eq!(fx.vcenter.running().vcenter.session_count(), sessions);

        // A link that drops after every read: each read succeeds on its retry, but the
        // disk fails at its tenth lost connection instead of crawling on.
        let big = fx.new_vm("flaky-big", &[16]);
        let data: Vec<u8> = (0..16 * MIB).map(|i| (i % 253) as u8).collect();
        fx.lab.guest_write(&big, DiskKey(2000), 0, &data).unwrap();
        fx.lab.lose_vddk_connections(&big, 100, 1).unwrap();
        let b = fx.backup(&[&big], &["--full"], None);
        assert_ne!(b.code, Some(0), "{}", b.stderr);
        let said = format!("{}{:?}", b.stderr, b.report);
        assert!(
            said.contains("the disk's reads lost their connection 10 times"),
            "{said}"
        );
        assert_eq!(
            b.stderr
                .matches("reading through VDDK failed; connecting again")
                .count(),
            10,
            "{}",
            b.stderr
        );
        fx.assert_clean(&[&big]);
        assert_eq!(fx.vcenter.running().vcenter.session_count(), sessions);
        fx.verify_clean();
    }

    #[test]
    fn task_polls_that_fail_for_a_while_do_not_fail_the_backup_or_leave_a_snapshot() {
        let fx = Fixture::new();
        let vm = fx.new_vm("poll-outage", &[8]);
        fx.backup(&[&vm], &[], None).ok();
        // vCenter answers 503 to the next reads of the snapshot task's info while the
        // task runs on: the agent polls again instead of calling the snapshot failed.
        fx.lab.fail_next_task_polls(&vm, 3).unwrap();
        fx.backup(&[&vm], &[], None).ok();
        assert_eq!(
            fx.lab.vm(&vm).unwrap().failing_task_polls,
            0,
            "the task polls never failed"
        );
        fx.assert_clean(&[&vm]);
        fx.verify_clean();
    }

    /// A snapshot removal that fails for a passing reason (another task holding the VM, a
    /// vMotion say) is tried again within the job, so the snapshot does not stay on the
    /// running VM until reconcile; one that keeps failing is left to reconcile, as before.
    #[test]
    fn a_snapshot_removal_that_fails_for_a_while_is_tried_again() {
        let fx = Fixture::new();
        let vm = fx.new_vm("busy", &[8]);
        fx.backup(&[&vm], &[], None).ok();
        fx.lab.fail_next_snapshot_removals(&vm, 2).unwrap();
        let b = fx.backup(&[&vm], &[], None);
        let r = b.ok();
        assert!(vm_report(r, &vm)["point"].is_string(), "{r}");
        assert!(r["warnings"].as_array().unwrap().is_empty(), "{r}");
        assert_eq!(fx.lab.vm(&vm).unwrap().failing_snapshot_removals, 0);
        assert_eq!(
            b.stderr
                .matches("removing our snapshot failed; trying again")
                .count(),
            2,
            "{}",
            b.stderr
        );
        fx.assert_clean(&[&vm]);

        // Every try fails (four by the VM's clean-up, four by the job's): the point is
        // kept, the snapshot is left to reconcile.
        fx.lab.fail_next_snapshot_removals(&vm, 8).unwrap();
        let b = fx.backup(&[&vm], &[], None);
        let said = format!("{}{:?}", b.stderr, b.report);
        assert!(said.contains("TaskInProgress"), "{said}");
        assert_eq!(fx.lab.vm(&vm).unwrap().failing_snapshot_removals, 0);
        assert_eq!(fx.lab.vm(&vm).unwrap().snapshots.len(), 1, "{said}");
        let report = fx.reconcile(&[]);
        assert_eq!(
            report["snapshots_removed"].as_array().unwrap().len(),
            1,
            "{report}"
        );
        fx.assert_clean(&[&vm]);
        fx.verify_clean();
    }

    /// EndAccess after the points are committed: failures are tried again (two in a row
    /// would have been left to reconcile before, one by each clean-up) and the backup is
    /// clean; a vCenter that keeps failing it leaves the access prepared, the job
    /// succeeded with a warning, and its journal entry for reconcile, which ends it.
    #[test]
    fn a_failed_end_access_is_tried_again_then_left_to_reconcile() {
        let fx = Fixture::new();
        let vm = fx.new_vm("end-access", &[8]);
        fx.lab.fail_next_enable_methods(&vm, 2).unwrap();
        let b = fx.backup(&[&vm], &[], None);
        let r = b.ok();
        assert!(vm_report(r, &vm)["point"].is_string(), "{r}");
        assert!(r["warnings"].as_array().unwrap().is_empty(), "{r}");
        assert_eq!(fx.lab.vm(&vm).unwrap().failing_enable_methods, 0);
        fx.assert_clean(&[&vm]);

        // Every try fails (three by the VM's clean-up, one by the job's): the point is
        // committed all the same, RelocateVM_Task stays disabled, and the job says what is
        // left.
        fx.lab.fail_next_enable_methods(&vm, 4).unwrap();
        let b = fx.backup(&[&vm], &[], None);
        let r = b.ok();
        assert!(vm_report(r, &vm)["point"].is_string(), "{r}");
        let warnings = r["warnings"].as_array().unwrap();
        assert!(
            warnings.iter().any(|w| {
                let w = w.as_str().unwrap();
                w.contains("EndAccess") && w.contains("reconcile")
            }),
            "{r}"
        );
        assert_eq!(fx.lab.vm(&vm).unwrap().failing_enable_methods, 0);
        assert!(
            !fx.lab.disabled_methods(&vm).unwrap().is_empty(),
            "EndAccess succeeded after all"
        );
        let report = fx.reconcile(&[]);
        assert_eq!(
            report["access_ended"].as_array().unwrap().len(),
            1,
            "{report}"
        );
        fx.assert_clean(&[&vm]);
        fx.verify_clean();
    }

    #[test]
    fn a_json_reader_that_goes_away_does_not_leave_a_snapshot() {
        let fx = Fixture::new();
        let vm = fx.new_vm("closed-pipe", &[8]);
        let mut args: Vec<String> = vec!["--json".into(), "backup".into(), "--repo".into()];
        args.push(fx.repo().display().to_string());
        args.extend(["--vm".into(), vm.0.clone()]);
        args.extend(fx.connection());
        let mut child = Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
            .args(&args)
            .env_remove("VADP_AGENT_PASSWORD")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Like `| head -0`: nobody reads the events.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        fx.assert_clean(&[&vm]);
        assert_eq!(fx.points().len(), 1);
    }

    /// A restore point is stamped with vCenter's time, not this machine's: a proxy whose
    /// clock is ten days behind (here: a vCenter ten days ahead) still stamps it now, so
    /// that retention does not take it for ten days old once the clock is put right.
    #[test]
    fn a_point_is_stamped_with_vcenters_time() {
        let fx = Fixture::new();
        let a = fx.new_vm("node-a", &[8]);
        fx.lab
            .guest_write(&a, DiskKey(2000), 0, &pattern(5, MIB))
            .unwrap();
        let ahead = 10 * 86_400;
        fx.lab
            .update_settings(|s| s.clock_offset_secs = ahead)
            .unwrap();
        let before = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        fx.backup(&[&a], &[], None).ok();
        let after = before + 120;
        let created = fx.points()[0]["created_at"].as_i64().unwrap();
        assert!(
            (before + ahead..=after + ahead).contains(&created),
            "created_at {created}, vCenter's time {}..{}",
            before + ahead,
            after + ahead
        );
    }

    /// vCenter restarts right after answering `RemoveSnapshot_Task`, and no longer knows
    /// the task: that task's ManagedObjectNotFound is not the snapshot's, so the snapshot
    /// is not taken for removed; the job's second clean-up attempt removes it.
    #[test]
    fn a_lost_snapshot_removal_task_is_not_taken_for_a_removed_snapshot() {
        let fx = Fixture::new();
        let a = fx.new_vm("node-a", &[8]);
        fx.lab
            .guest_write(&a, DiskKey(2000), 0, &pattern(6, MIB))
            .unwrap();
        // The first backup turns CBT on (a snapshot of its own, removed at once): the loss
        // is armed for the backup's snapshot, after a first backup.
        fx.backup(&[&a], &[], None).ok();
        fx.lab.lose_next_snapshot_removal(&a).unwrap();
        let run = fx.backup(&[&a], &[], None);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert!(
            run.stderr.contains("no longer known to vCenter"),
            "the loss was not met: {}",
            run.stderr
        );
        let report = run.report.unwrap();
        assert!(
            report["warnings"].as_array().unwrap().is_empty(),
            "{report}"
        );
        fx.assert_clean(&[&a]);
        let reconciled = fx.reconcile(&[]);
        assert!(
            reconciled["snapshots_removed"]
                .as_array()
                .unwrap()
                .is_empty(),
            "{reconciled}"
        );
    }

    /// A VMX file larger than any VMX can be is refused, not read into memory whole.
    #[test]
    fn an_oversized_vmx_is_refused() {
        let fx = Fixture::new();
        let a = fx.new_vm("node-a", &[8]);
        let filler: Vec<(String, String)> = (0..17)
            .map(|i| (format!("filler.{i}"), "x".repeat(1 << 20)))
            .collect();
        fx.lab.set_extra_config(&a, filler).unwrap();
        let run = fx.backup(&[&a], &[], None);
        assert_ne!(run.code, Some(0));
        let all = format!("{:?}{}", run.events, run.stderr);
        assert!(all.contains("larger than 16777216 bytes"), "{all}");
        assert!(fx.points().is_empty());
        fx.assert_clean(&[&a]);
    }

    /// A panic in the job's set-up, after its snapshot was taken, ends the job with the
    /// snapshot removed and the access ended, by the job itself (no reconcile).
    #[test]
    fn a_panic_after_the_snapshot_undoes_the_snapshot() {
        let fx = Fixture::new();
        let a = fx.new_vm("node-a", &[8]);
        fx.lab
            .guest_write(&a, DiskKey(2000), 0, &pattern(4, MIB))
            .unwrap();
        let panicked = fx.backup(&[&a], &[], Some("panic:after-snapshot"));
        assert_eq!(panicked.code, Some(1), "{}", panicked.stderr);
        assert!(
            panicked.stderr.contains("set-up panicked"),
            "{}",
            panicked.stderr
        );
        fx.assert_clean(&[&a]);
        assert!(fx.points().is_empty());
        let report = fx.reconcile(&[]);
        assert!(
            report["snapshots_removed"].as_array().unwrap().is_empty(),
            "{report}"
        );
        assert!(
            report["access_ended"].as_array().unwrap().is_empty(),
            "{report}"
        );
    }

    /// One repository, two vCenters: a backup against the first is killed with its
    /// snapshot taken; a reconcile against the second, where the same morefs name other
    /// objects (a VM of the same moref with a snapshot of the same moref), leaves both that
    /// VM's snapshot and the entries alone; a reconcile against the first undoes them.
    #[test]
    fn reconcile_leaves_another_vcenters_journal_entries_alone() {
        let fx = Fixture::new();
        let other = Fixture::new();
        let a = fx.new_vm("node-a", &[8]);
        let twin = other.new_vm("node-a", &[8]);
        assert_eq!(a, twin, "the labs no longer give the same first moref");
        fx.lab
            .guest_write(&a, DiskKey(2000), 0, &pattern(3, MIB))
            .unwrap();
        let crashed = fx.backup(&[&a], &[], Some("after-snapshot"));
        assert_ne!(crashed.code, Some(0), "the agent did not crash");
        let ours = fx.lab.vm(&a).unwrap().snapshots;
        assert_eq!(ours.len(), 1);
        // The backup's snapshot is not the lab's first (enabling CBT took one): as many of
        // the user's as give one of the same moref.
        let mut users = 0;
        while !other
            .lab
            .vm(&twin)
            .unwrap()
            .snapshots
            .iter()
            .any(|s| s.moref == ours[0].moref)
        {
            users += 1;
            assert!(users < 10, "no snapshot of moref {:?}", ours[0].moref);
            other
                .lab
                .create_snapshot(&twin, &format!("users-own-{users}"), "not ours")
                .unwrap();
        }

        let (code, report) = other.reconcile_in(&fx.repo(), &[], &[]);
        assert_eq!(code, Some(0), "{report}");
        assert!(
            report["snapshots_removed"].as_array().unwrap().is_empty(),
            "{report}"
        );
        assert!(
            report["access_ended"].as_array().unwrap().is_empty(),
            "{report}"
        );
        let left = report["other_vcenter"].as_array().unwrap();
        assert_eq!(
            left.len(),
            2,
            "the snapshot and PrepareForAccess entries: {report}"
        );
        assert_eq!(
            other.lab.vm(&twin).unwrap().snapshots.len(),
            users,
            "another VM's snapshot went"
        );
        assert_eq!(fx.lab.vm(&a).unwrap().snapshots.len(), 1);

        let report = fx.reconcile(&[]);
        assert_eq!(
            report["snapshots_removed"].as_array().unwrap().len(),
            1,
            "{report}"
        );
        assert!(
            report["other_vcenter"].as_array().unwrap().is_empty(),
            "{report}"
        );
        fx.assert_clean(&[&a]);
        fx.verify_clean();
    }

    /// A snapshot of ours that an ended job of this repository left with its journal entry
    /// closed (a removal whose answer was lost, a clean-up that ran out of time) is removed
    /// by the next backup of the VM, with a warning, instead of refusing the VM at every
    /// run until someone runs `reconcile --vm`.
    #[test]
    fn a_snapshot_an_ended_job_of_ours_left_is_removed_by_the_next_backup() {
        let fx = Fixture::new();
        let vm = fx.new_vm("left-1", &[4]);
        fx.lab
            .guest_write(&vm, DiskKey(2000), 0, &pattern(7, MIB))
            .unwrap();
        let first = fx.backup(&[&vm], &[], None);
        let job = first.ok()["job"].as_str().unwrap().to_owned();
        let description = format!("{} {job}", vadp_agent::engine::SNAPSHOT_TAG);
        fx.lab
            .create_snapshot(&vm, "vadp-agent-left", &description)
            .unwrap();
        let next = fx.backup(&[&vm], &[], None);
        let report = next.ok();
        let r = vm_report(report, &vm);
        assert!(r["point"].is_string(), "{report}");
        assert!(
            r["warnings"][0]
                .as_str()
                .is_some_and(|w| w.contains("removed snapshot") && w.contains(&job)),
            "{report}"
        );
        fx.assert_clean(&[&vm]);
    }

    #[test]
    fn killed_backups_leave_nothing_behind_after_a_restart() {
        let fx = Fixture::new();
        let a = fx.new_vm("node-a", &[12]);
        let b = fx.new_vm("node-b", &[8]);
        fx.lab
            .guest_write(&a, DiskKey(2000), 0, &pattern(1, 6 * MIB))
            .unwrap();
        fx.lab
            .guest_write(&b, DiskKey(2000), 0, &pattern(2, 5 * MIB))
            .unwrap();
        let points = |fx: &Fixture| fx.points().len();

        // A snapshot carrying our tag of a job this repository has no record of (another
        // repository's job, maybe running, or a lost catalog): a backup refuses the VM and
        // says whose it is; `reconcile --vm` leaves it unless `--unknown-jobs` is given.
        let foreign = format!("vadp-agent backup job {}", uuid::Uuid::new_v4());
        fx.lab
            .create_snapshot(&a, "vadp-agent-old", &foreign)
            .unwrap();
        let refused = fx.backup(&[&a, &b], &["--group", "nodes"], None);
        assert_ne!(refused.code, Some(0), "backup not refused");
        assert!(
            refused.stderr.contains("no record of") && refused.stderr.contains("--unknown-jobs"),
            "{}",
            refused.stderr
        );
        assert_eq!(points(&fx), 0, "a refused group changes nothing");
        let (code, report) = fx.reconcile_in(&fx.repo(), &[&a], &[]);
        assert_eq!(code, Some(2), "{report}");
        assert!(
            report["snapshots_removed"].as_array().unwrap().is_empty(),
            "{report}"
        );
        assert!(
            report["errors"][0]
                .as_str()
                .unwrap()
                .contains("no record of"),
            "{report}"
        );
        assert_eq!(
            fx.lab.vm(&a).unwrap().snapshots.len(),
            1,
            "the snapshot was removed"
        );
        let (code, report) = fx.reconcile_in(&fx.repo(), &[&a], &["--unknown-jobs"]);
        assert_eq!(code, Some(0), "{report}");
        assert_eq!(
            report["snapshots_removed"].as_array().unwrap().len(),
            1,
            "{report}"
        );
        fx.assert_clean(&[&a, &b]);

        for (i, point) in [
            "after-prepare-access",
            "before-snapshot",
            "snapshot-unrecorded",
            "after-snapshot",
            "mid-disk",
            "before-commit",
            "after-commit",
        ]
        .into_iter()
        .enumerate()
        {
            fx.lab
                .guest_write(
                    &a,
                    DiskKey(2000),
                    (i as u64) * MIB,
                    &pattern(i as u8, KIB64),
                )
                .unwrap();
            let before = points(&fx);
            let crashed = fx.backup(&[&a, &b], &["--group", "nodes"], Some(point));
            assert_ne!(crashed.code, Some(0), "{point}: the agent did not crash");
            // No partial point: before the snapshots nothing can be committed; after them
            // each VM commits on its own, so a VM that finished before the crash has a
            // complete point (its disks all indexed; `repo verify` below reads them).
            let listed = fx.points();
            let new_points = &listed[before..];
            let may_commit = ["mid-disk", "before-commit", "after-commit"].contains(&point);
            assert!(
                new_points.len() <= if may_commit { 2 } else { 0 },
                "{point}: {} new point(s)",
                new_points.len()
            );
            for p in new_points {
                assert_eq!(p["disks"].as_array().unwrap().len(), 1, "{point}: {p}");
            }
            let committed = new_points.len();
            if point == "after-commit" {
                assert!(
                    committed >= 1,
                    "after-commit: the committed point is not listed"
                );
            }
            if i % 2 == 0 {
                // Restarted as `vadp-agent reconcile`.
                let report = fx.reconcile(&[]);
                assert!(
                    report["errors"].as_array().unwrap().is_empty(),
                    "{point}: {report}"
                );
                assert_eq!(report["jobs_interrupted"].as_array().unwrap().len(), 1);
            } else {
                // Restarted as the next backup, which reconciles first and then succeeds.
                let next = fx.backup(&[&a, &b], &["--group", "nodes"], None);
                next.ok();
                let reconciled = next
                    .events
                    .iter()
                    .find(|e| e["event"] == "reconciled")
                    .unwrap_or_else(|| panic!("{point}: the backup did not reconcile first"));
                assert_eq!(reconciled["jobs_interrupted"], 1, "{point}: {reconciled}");
                assert!(reconciled["errors"].as_array().unwrap().is_empty());
                assert_eq!(points(&fx) - before, committed + 2, "{point}");
            }
            fx.assert_clean(&[&a, &b]);
            fx.verify_clean();
            // Nothing is left open: a second reconcile has nothing to do.
            let again = fx.reconcile(&[]);
            assert!(
                again["snapshots_removed"].as_array().unwrap().is_empty(),
                "{point}"
            );
            assert!(
                again["access_ended"].as_array().unwrap().is_empty(),
                "{point}"
            );
        }
        // And the next backup works and restores exactly.
        let expected = fx.disk_bytes(&a, DiskKey(2000));
        let r = fx
            .backup(&[&a, &b], &["--group", "nodes"], None)
            .ok()
            .clone();
        let point = vm_report(&r, &a)["point"].as_str().unwrap().to_owned();
        assert!(fx.restored(&point, 2000) == expected);
    }

    /// A group job that failed for one VM says so on the points of the others: they have
    /// no companion from that job.
    #[test]
    fn the_points_of_a_group_job_that_failed_for_one_vm_say_so() {
        let fx = Fixture::new();
        let web = fx.new_vm("web-1", &[4, 4]);
        let db = fx.new_vm("db-1", &[4]);
        fx.lab
            .set_extra_config(&web, vmservice_extra_config(&fx.lab, &web))
            .unwrap();
        // db-1 is no VM Service VM: --require-vmservice fails it after the snapshots.
        let b = fx.backup(
            &[&web, &db],
            &["--group", "g1", "--require-vmservice"],
            None,
        );
        assert_ne!(b.code, Some(0), "{}", b.stderr);
        let report = b.report.clone().unwrap();
        assert!(vm_report(&report, &db)["error"].is_string(), "{report}");
        let failed: Vec<_> = b
            .events
            .iter()
            .filter(|e| e["event"] == "vm_failed")
            .collect();
        assert!(
            failed.len() == 1 && failed[0]["vm"] == db.0.as_str(),
            "{:?}",
            b.events
        );
        let point = vm_report(&report, &web)["point"]
            .as_str()
            .unwrap()
            .to_owned();
        let repo = fx.repo();
        let out = fx.run(
            &["show", "--repo"],
            &[repo.as_os_str(), std::ffi::OsStr::new(&point)],
            None,
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("group:      incomplete, db-1 failed in this job"),
            "{text}"
        );
        let out = fx.run(&["list", "--repo"], &[repo.as_os_str()], None);
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.starts_with(&point)).unwrap();
        assert!(
            line.contains("group incomplete: db-1 failed in this job"),
            "{text}"
        );
        fx.assert_clean(&[&web, &db]);
    }

    /// A job for many VMs (seed 002) with `--independent`: a VM that cannot be backed up
    /// (not found, refused in the set-up, held by another job, its snapshot failing) fails
    /// alone, undone, reported once and let go at once, and the others get their points,
    /// each its own VM's data. Without it the same VMs are one consistency group: refused
    /// whole, nothing changed.
    #[test]
    #[allow(clippy::too_many_lines)] // one scenario, step by step
    fn an_independent_job_backs_up_the_vms_it_can() {
        let fx = Fixture::new();
        let a = fx.new_vm("app-1", &[4]);
        let b = fx.new_vm("app-2", &[4]);
        let refused = fx.new_vm("app-3", &[4, 4]);
        let held = fx.new_vm("app-4", &[4]);
        // Another product has PrepareForAccess'ed app-5: ours fails (vSphere's
        // MethodAlreadyDisabled).
        let other = fx.new_vm("app-5", &[4]);
        let foreign = lab::vmstate::DisabledMethod {
            method: lab::vmstate::RELOCATE_METHOD.into(),
            source: "another-backup-product".into(),
        };
        fx.lab
            .modify_vm(&other, |s| {
                s.disabled_methods.push(foreign.clone());
                Ok(())
            })
            .unwrap();
        for (i, vm) in [&a, &b, &held].into_iter().enumerate() {
            let seed = u8::try_from(i).unwrap() + 4;
            fx.lab
                .guest_write(vm, DiskKey(2000), 0, &pattern(seed, MIB))
                .unwrap();
        }
        fx.lab
            .modify_vm(&refused, |s| {
                s.disks[1].mode = "independent_persistent".into();
                s.power_state = lab::vmstate::PowerState::PoweredOn;
                Ok(())
            })
            .unwrap();
        let gone = VmMoref("vm-999999".into());
        let group = fx.backup(&[&a, &b, &refused], &["--group", "g1"], None);
        assert_eq!(group.code, Some(1), "{}", group.stderr);
        assert!(
            group.stderr.contains("independent_persistent"),
            "{}",
            group.stderr
        );
        assert!(fx.points().is_empty());
        fx.assert_clean(&[&a, &b, &refused]);
        // b once on its own, so that its change tracking is on and the failure injected
        // below hits the job's own snapshot, not the one that turns change tracking on.
        fx.backup(&[&b], &[], None).ok();
        fx.lab
            .guest_write(&b, DiskKey(2000), 0, &pattern(9, MIB))
            .unwrap();

        // Another job holds app-4 (paused while it reads its disk).
        let holder_pause = fx.dir.path().join("pause-holder");
        let holder = fx.start_paused(&[&held], &[], &holder_pause);

        // The failing VM listed first: the snapshots of the others must stay theirs.
        fx.lab.fail_next_snapshot(&b).unwrap();
        let job_pause = fx.dir.path().join("pause-job");
        let job = fx.start_paused(
            &[&b, &refused, &gone, &held, &other, &a],
            &["--independent"],
            &job_pause,
        );
        // While the job reads a, the VMs that failed alone are free: b is backed up by
        // another job meanwhile.
        fx.backup(&[&b], &[], None).ok();
        std::fs::write(job_pause.join("backup-mid-disk.go"), b"").unwrap();
        let out = job.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{stdout}");
        let events: Vec<Value> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let report = events
            .iter()
            .find(|e| e["event"] == "report")
            .map(|e| e["report"].clone())
            .unwrap();
        let point = vm_report(&report, &a)["point"].as_str().unwrap().to_owned();
        assert_eq!(fx.restored(&point, 2000), fx.disk_bytes(&a, DiskKey(2000)));
        for (vm, says) in [
            // The job's own snapshot failed (not the change-tracking cycle's).
            (&b, "snapshot of app-2"),
            (&refused, "independent_persistent"),
            (&gone, "vm-999999"),
            (&held, "is working on it now"),
            (&other, "PrepareForAccess for app-5"),
        ] {
            let r = vm_report(&report, vm);
            assert!(r["point"].is_null(), "{vm}: {report}");
            assert!(
                r["error"].as_str().unwrap().contains(says),
                "{vm} ({says}): {report}"
            );
            let failed = events
                .iter()
                .filter(|e| e["event"] == "vm_failed" && e["vm"] == vm.0.as_str())
                .count();
            assert_eq!(failed, 1, "{vm}: {events:?}");
        }
        // a's point, and b's from the job that ran beside it (and its first).
        assert_eq!(fx.points().len(), 3);
        fx.assert_clean(&[&a, &b, &refused]);

        std::fs::write(holder_pause.join("backup-mid-disk.go"), b"").unwrap();
        let out = holder.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        fx.assert_clean(&[&held]);
        // Only the other product's mark is left on app-5: ours was ended.
        assert_eq!(fx.lab.disabled_methods(&other).unwrap(), vec![foreign]);
        assert!(fx.lab.vm(&other).unwrap().snapshots.is_empty());
        // Nothing any of the jobs journalled is left open.
        let repo = Repository::open(&fx.repo()).unwrap();
        let open = repo.catalog().journal_open_entries().unwrap();
        assert!(open.is_empty(), "{open:?}");
    }

    /// Refused credentials and a certificate that does not match the pin end the command
    /// with their own exit codes (77, 78), on which the daemon's unit does not restart: a
    /// restart would only log in with the same wrong password again.
    #[test]
    fn wrong_credentials_and_a_changed_certificate_have_their_own_exit_codes() {
        let fx = Fixture::new();
        let vm = fx.new_vm("creds-1", &[4]);
        let wrong = fx.dir.path().join("wrong-password");
        let mut f = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().write(true).create_new(true),
            0o600,
        )
        .open(&wrong)
        .unwrap();
        writeln!(f, "not-the-password").unwrap();
        drop(f);
        let run = |swap: &dyn Fn(&mut Vec<String>)| {
            let mut args: Vec<String> = vec!["backup".into(), "--repo".into()];
            args.push(fx.repo().display().to_string());
            args.extend(["--vm".into(), vm.0.clone()]);
            let mut conn = fx.connection();
            swap(&mut conn);
            args.extend(conn);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            fx.run(&refs, &[], None)
        };
        let replace = |conn: &mut Vec<String>, flag: &str, value: String| {
            let i = conn.iter().position(|a| a == flag).unwrap();
            conn[i + 1] = value;
        };
        let out = run(&|c| replace(c, "--password-file", wrong.display().to_string()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(77), "{stderr}");
        assert!(stderr.contains("InvalidLogin"), "{stderr}");
        let other = "AA:".repeat(19) + "AA";
        let out = run(&|c| replace(c, "--thumbprint", other.clone()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(stderr.contains("does not match the pinned"), "{stderr}");
        assert!(fx.points().is_empty());
        fx.assert_clean(&[&vm]);
    }

    /// A point is recorded as quiesced only when vCenter's snapshot says so: with VMware
    /// Tools not running vSphere ignores the flag, and the point says crash-consistent.
    #[test]
    fn a_quiesce_vsphere_could_not_do_is_reported_and_recorded_as_not_done() {
        let fx = Fixture::new();
        let vm = fx.new_vm("quiet-1", &[4]);
        fx.lab
            .modify_vm(&vm, |s| {
                s.power_state = lab::vmstate::PowerState::PoweredOn;
                Ok(())
            })
            .unwrap();
        let show = |point: &str| {
            let repo = fx.repo();
            let out = fx.run(
                &["show", "--repo"],
                &[repo.as_os_str(), point.as_ref()],
                None,
            );
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let point_of = |b: &Backup| vm_report(b.ok(), &vm)["point"].as_str().unwrap().to_owned();
        let warned = |b: &Backup| {
            b.events.iter().any(|e| {
                e["event"] == "warning"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("crash-consistent"))
            })
        };
        let quiet = fx.backup(&[&vm], &["--quiesce", &vm.0], None);
        assert!(!warned(&quiet), "{:?}", quiet.events);
        assert!(show(&point_of(&quiet)).contains("quiesced:   yes"));
        assert_eq!(vm_report(quiet.ok(), &vm)["quiesced"], true);
        fx.lab.set_tools_running(&vm, false).unwrap();
        let crash = fx.backup(&[&vm], &["--quiesce", &vm.0], None);
        assert!(warned(&crash), "{:?}", crash.events);
        // The report says it too, for a run nobody watched (the timer's, the API's).
        let r = vm_report(crash.ok(), &vm);
        assert_eq!(r["quiesced"], false, "{r}");
        assert!(
            r["warnings"][0]
                .as_str()
                .is_some_and(|m| m.contains("crash-consistent")),
            "{r}"
        );
        assert!(
            show(&point_of(&crash)).contains("quiesced:   no, though asked for"),
            "{}",
            show(&point_of(&crash))
        );
        let plain = fx.backup(&[&vm], &[], None);
        assert!(!warned(&plain));
        assert!(show(&point_of(&plain)).contains("quiesced:   no\n"));
        assert!(vm_report(plain.ok(), &vm)["quiesced"].is_null());
        assert_eq!(
            vm_report(plain.ok(), &vm)["warnings"],
            serde_json::json!([])
        );
    }

    #[test]
    fn corrupt_vmservice_extra_config_is_reported_and_the_disks_still_backed_up() {
        let fx = Fixture::new();
        let cases = [
            ("not-base64.json", "vmservice.virtualmachine.resource.yaml"),
            (
                "base64-not-gzip.json",
                "vmservice.virtualmachine.resource.yaml",
            ),
            (
                "missing-vm-yaml.json",
                "vmservice.virtualmachine.resource.yaml",
            ),
            (
                "apiversion-v1alpha1.json",
                "vmservice.virtualmachine.resource.yaml",
            ),
        ];
        for (i, (file, key)) in cases.iter().enumerate() {
            let vm = fx.new_vm(&format!("bad-{i}"), &[8]);
            fx.lab
                .guest_write(&vm, DiskKey(2000), 0, &pattern(3, MIB))
                .unwrap();
            let map: serde_json::Map<String, Value> = serde_json::from_str(
                &std::fs::read_to_string(Path::new(FIXTURES).join("bad").join(file)).unwrap(),
            )
            .unwrap();
            let extra = map
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap().to_owned()))
                .collect();
            fx.lab.set_extra_config(&vm, extra).unwrap();
            let b = fx.backup(&[&vm], &[], None);
            let r = b.ok();
            let v = vm_report(r, &vm);
            assert!(v["point"].is_string(), "{file}: disks not backed up: {v}");
            assert_eq!(v["validation"]["status"], "warning", "{file}: {v}");
            let warning = b
                .events
                .iter()
                .find(|e| e["event"] == "warning")
                .unwrap_or_else(|| panic!("{file}: no warning event"));
            assert_eq!(warning["vm"], vm.0.as_str());
            let message = warning["message"].as_str().unwrap();
            assert!(message.contains(key), "{file}: {message}");
            // With --require-vmservice the same VM fails and nothing is committed.
            let before = fx.points().len();
            let strict = fx.backup(&[&vm], &["--require-vmservice"], None);
            assert_eq!(strict.code, Some(2), "{file}: {}", strict.stderr);
            let sv = vm_report(strict.report.as_ref().unwrap(), &vm);
            assert!(sv["error"].as_str().unwrap().contains(key), "{file}: {sv}");
            assert_eq!(fx.points().len(), before);
            fx.assert_clean(&[&vm]);
        }
    }
}
