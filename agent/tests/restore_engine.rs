//! The restore engine end to end: back up a VM Service VM that the lab's Supervisor (VM
//! Operator) created, then `vadp-agent restore` it through the real binary (VDDK loader,
//! vddk-sim, SOAP, vAPI and `kube` clients) against the lab vCenter + Supervisor running in
//! this test process, checking the results against seed 001 (§6, §7, §8.2, §11.2).

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)] // test data
mod tests {
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};
    use std::sync::Arc;

    use lab::Lab;
    use lab::datastore::{DiskChain, OpenMode};
    use lab::supervisor::{Supervisor, SupervisorSettings, SupervisorVersion};
    use lab::vcenter::InProcessVcenter;
    use lab::vmstate::{DiskKey, VmMoref};
    use serde_json::{Value, json};
    use vadp_tests::{SimVariant, vddk_sim_libdir};

    const MIB: u64 = 1 << 20;
    const NS: &str = "ns1";

    /// One lab vCenter + Supervisor.
    struct Site {
        root: PathBuf,
        lab: Lab,
        vcenter: InProcessVcenter,
    }

    impl Site {
        fn new(dir: &Path, name: &str) -> Self {
            let root = dir.join(name);
            Lab::create(&root).unwrap();
            // A second datastore (`--datastore`).
            std::fs::create_dir_all(root.join("datastores/ds2")).unwrap();
            let vcenter = InProcessVcenter::start(&root, false).unwrap();
            let lab = Lab::open(&root).unwrap();
            std::fs::write(
                dir.join(format!("{name}-vddk.conf")),
                format!("vadp.lab.root = \"{}\"\n", root.display()),
            )
            .unwrap();
            let mut f = std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new().write(true).create_new(true),
                0o600,
            )
            .open(dir.join(format!("{name}-password")))
            .unwrap();
            writeln!(f, "{}", vcenter.running().password).unwrap();
            let site = Self { root, lab, vcenter };
            site.sup().create_namespace(NS).unwrap();
            site
        }

        fn sup(&self) -> &Arc<Supervisor> {
            self.vcenter.running().vcenter.supervisor()
        }

        fn connection(&self, dir: &Path, name: &str) -> Vec<String> {
            let r = self.vcenter.running();
            vec![
                "--vcenter".into(),
                self.vcenter.sdk_url().into(),
                "--user".into(),
                r.user.clone(),
                "--password-file".into(),
                dir.join(format!("{name}-password")).display().to_string(),
                "--thumbprint".into(),
                self.vcenter.thumbprint().unwrap().into(),
                "--vddk-libdir".into(),
                vddk_sim_libdir(SimVariant::Vddk8).display().to_string(),
                "--vddk-config".into(),
                dir.join(format!("{name}-vddk.conf")).display().to_string(),
            ]
        }

        /// A VM Service VM: OS disk, one PVC disk, one classic disk, cloud-init bootstrap,
        /// user labels and annotations, a zone label, a subnet and an image.
        fn create_vm(&self, name: &str) -> VmMoref {
            let sup = self.sup();
            sup.apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("{name}-cloud-init"), "namespace": NS},
                "stringData": {"user-data": "#cloud-config\nhostname: web\n"}
            }))
            .unwrap();
            sup.apply(json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": format!("{name}-data"), "namespace": NS},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "6Mi"}}}
            }))
            .unwrap();
            sup.apply(json!({
                "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachine",
                "metadata": {
                    "name": name, "namespace": NS,
                    "labels": {"app": "web", "topology.kubernetes.io/zone": "zone-a"},
                    "annotations": {"example.com/owner": "team-a", "lab.vadp-agent.dev/classic-disks": "3Mi"}
                },
                "spec": {
                    "className": "best-effort-small", "imageName": "ubuntu-22.04",
                    "image": {"kind": "VirtualMachineImage", "name": "ubuntu-22.04"},
                    "powerState": "PoweredOff",
                    "advanced": {"bootDiskCapacity": "5Mi"},
                    "network": {"interfaces": [{"name": "eth0", "network": {"kind": "Subnet", "name": "subnet-prod-a"}}]},
                    "bootstrap": {"cloudInit": {"rawCloudConfig": {"name": format!("{name}-cloud-init"), "key": "user-data"}}},
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": format!("{name}-data")}}]
                }
            }))
            .unwrap();
            let vm = sup.get("VirtualMachine", NS, name).unwrap();
            let moref = VmMoref(vm["status"]["uniqueID"].as_str().unwrap().to_owned());
            // Guest data on every disk, some of it in the middle.
            for d in self.lab.vm(&moref).unwrap().disks {
                for (i, off) in [0u64, MIB + 4096, 2 * MIB + 512].iter().enumerate() {
                    let data: Vec<u8> = (0..69_632u32)
                        .map(|x| (x as u8) ^ (d.key.0 as u8) ^ (i as u8 * 37))
                        .collect();
                    self.lab.guest_write(&moref, d.key, *off, &data).unwrap();
                }
            }
            moref
        }

        /// Changes the VirtualMachine `name` (a label): VM Operator then writes a newer
        /// backup version, and WCP restores an older backup to it (§8.2).
        /// A LoadBalancer VirtualMachineService `name` selecting `app: web` (every VM
        /// [`Self::create_vm`] makes).
        fn web_service(&self, name: &str) {
            self.sup()
                .apply(json!({
                    "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineService",
                    "metadata": {"name": name, "namespace": NS},
                    "spec": {"type": "LoadBalancer", "selector": {"app": "web"}}
                }))
                .unwrap();
        }

        /// Deletes each (kind, name) of the namespace.
        fn delete_all(&self, objects: &[(&str, &str)]) {
            for (kind, name) in objects {
                self.sup().delete(kind, NS, name).unwrap();
            }
        }

        fn change_since_backup(&self, name: &str) {
            let mut cr = self.sup().get("VirtualMachine", NS, name).unwrap();
            cr["metadata"]["labels"]["tier"] = json!("gold");
            self.sup().apply(cr).unwrap();
        }

        /// The files of `vm`'s disks, in device order.
        fn disk_files(&self, vm: &VmMoref) -> Vec<String> {
            self.lab
                .vm(vm)
                .unwrap()
                .disks
                .iter()
                .map(|d| d.file_name.to_string())
                .collect()
        }

        /// `vm`'s disk at `(controller key, unit number)`.
        fn disk_at(&self, vm: &VmMoref, slot: (i32, i32)) -> lab::vmstate::VmDisk {
            self.lab
                .vm(vm)
                .unwrap()
                .disks
                .into_iter()
                .find(|d| (d.controller_key, d.unit_number) == slot)
                .unwrap()
        }

        fn disk_bytes(&self, vm: &VmMoref, key: DiskKey) -> Vec<u8> {
            let file = self.lab.disk_file(vm, None, key).unwrap();
            let chain = DiskChain::open(&self.root, &file, OpenMode::ReadOnly).unwrap();
            let mut buf = vec![0u8; usize::try_from(chain.capacity_bytes()).unwrap()];
            chain.read_at(0, &mut buf).unwrap();
            buf
        }

        /// A VM made in vSphere only (no VirtualMachine), in the namespace's folder, with
        /// one thin disk of `mib` MiB.
        fn plain_vm_in_namespace(&self, name: &str, mib: u64) -> VmMoref {
            self.lab
                .create_vm(
                    name,
                    &format!("/dc1/vm/Namespaces/{NS}"),
                    &[lab::vmstate::NewDisk {
                        capacity_bytes: mib * MIB,
                        thin: true,
                        fcd: false,
                    }],
                )
                .unwrap()
        }

        fn vm_by_name(&self, name: &str) -> Option<VmMoref> {
            self.lab
                .vms()
                .unwrap()
                .into_iter()
                .find(|v| v.name == name)
                .map(|v| v.moref)
        }

        /// Every API call on these kinds answers 403 (an account without rights on them).
        fn forbid(&self, kinds: &[&str]) {
            let s = SupervisorSettings {
                forbidden_kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
                ..self.sup().settings()
            };
            self.sup().set_settings(s).unwrap();
        }

        fn set_version(&self, version: SupervisorVersion) {
            let s = SupervisorSettings {
                version,
                ..self.sup().settings()
            };
            self.sup().set_settings(s).unwrap();
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        site: Site,
    }

    struct Run {
        code: Option<i32>,
        events: Vec<Value>,
        stdout: String,
        stderr: String,
    }

    impl Run {
        /// A `--json` run's exit code, events and output.
        fn of(out: &Output) -> Self {
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            Self {
                code: out.status.code(),
                events: stdout
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect(),
                stdout,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }

        /// The messages of its `warning` events.
        fn warnings(&self) -> Vec<&str> {
            self.events
                .iter()
                .filter(|e| e["event"] == "warning")
                .filter_map(|e| e["message"].as_str())
                .collect()
        }

        fn report(&self) -> &Value {
            self.events
                .iter()
                .find(|e| e["event"] == "report")
                .map(|e| &e["report"])
                .unwrap_or_else(|| panic!("no report: {}\n{}", self.stdout, self.stderr))
        }
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let site = Site::new(dir.path(), "site-a");
            let fx = Self { dir, site };
            let out = fx.run(&["repo", "init", "--path", &fx.repo()], None);
            assert!(out.status.success());
            fx
        }

        fn repo(&self) -> String {
            self.dir.path().join("repo").display().to_string()
        }

        fn run(&self, args: &[&str], crash: Option<&str>) -> Output {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_vadp-agent"));
            cmd.args(args);
            if let Some(c) = crash {
                cmd.env("VADP_AGENT_CRASH_AT", c);
            }
            cmd.env_remove("VADP_AGENT_PASSWORD");
            cmd.output().unwrap()
        }

        fn json(
            &self,
            args: Vec<String>,
            site: &Site,
            site_name: &str,
            crash: Option<&str>,
        ) -> Run {
            let mut all: Vec<String> = vec!["--json".into()];
            all.extend(args);
            all.extend(site.connection(self.dir.path(), site_name));
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            Run::of(&self.run(&refs, crash))
        }

        /// Backs up `ns1/<name>`; returns the point id.
        fn backup(&self, name: &str) -> String {
            self.backup_selector(&format!("{NS}/{name}"))
        }

        /// Backs up a VM given as `NS/NAME` or moref; returns the point id.
        fn backup_selector(&self, vm: &str) -> String {
            let r = self.backup_run(vm, &[]);
            assert_eq!(r.code, Some(0), "backup: {}\n{}", r.stdout, r.stderr);
            r.report()["vms"][0]["point"].as_str().unwrap().to_owned()
        }

        /// `vadp-agent backup --vm VM EXTRA…` on site A.
        /// Backs up the VMs `names` of the namespace in one job: the run and the points, in
        /// the order of `names`.
        fn backup_together(&self, names: &[&str]) -> (Run, Vec<String>) {
            let mut extra = Vec::new();
            for name in &names[1..] {
                extra.push("--vm".to_owned());
                extra.push(format!("{NS}/{name}"));
            }
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let b = self.backup_run(&format!("{NS}/{}", names[0]), &extra);
            assert_eq!(b.code, Some(0), "{}\n{}", b.stdout, b.stderr);
            let points = (0..names.len())
                .map(|i| b.report()["vms"][i]["point"].as_str().unwrap().to_owned())
                .collect();
            (b, points)
        }

        fn backup_run(&self, vm: &str, extra: &[&str]) -> Run {
            let mut args: Vec<String> = vec![
                "backup".into(),
                "--repo".into(),
                self.repo(),
                "--vm".into(),
                vm.to_owned(),
            ];
            args.extend(extra.iter().map(|a| (*a).to_owned()));
            self.json(args, &self.site, "site-a", None)
        }

        fn restore_on(
            &self,
            site: &Site,
            site_name: &str,
            point: &str,
            extra: &[&str],
            crash: Option<&str>,
        ) -> Run {
            let mut args: Vec<String> = vec![
                "restore".into(),
                "--repo".into(),
                self.repo(),
                "--point".into(),
                point.into(),
            ];
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            self.json(args, site, site_name, crash)
        }

        fn restore(&self, point: &str, extra: &[&str]) -> Run {
            self.restore_on(&self.site, "site-a", point, extra, None)
        }

        /// The repository and the record of `point`.
        fn open_point(
            &self,
            point: &str,
        ) -> (vadp_agent::repo::Repository, vadp_agent::repo::PointRecord) {
            let repo = vadp_agent::repo::Repository::open(Path::new(&self.repo())).unwrap();
            let rec = repo
                .list()
                .unwrap()
                .into_iter()
                .find(|p| p.id.to_string() == point)
                .unwrap();
            (repo, rec)
        }

        /// The file of the first non-zero chunk of disk `key` of `point` (its first disk
        /// when `None`).
        fn first_chunk(&self, point: &str, key: Option<i32>) -> PathBuf {
            let (repo, rec) = self.open_point(point);
            let key = key.map_or(rec.disks[0].key, vadp_agent::ids::DiskKey);
            let index = repo.load_index(&rec, key).unwrap();
            let digest = *index
                .read_all()
                .unwrap()
                .iter()
                .find(|d| !d.is_zero())
                .unwrap();
            repo.store().chunk_path(&digest)
        }

        /// The bytes of each disk of `point`, by key, from the repository.
        fn point_disks(&self, point: &str) -> Vec<(i32, Vec<u8>)> {
            let (repo, rec) = self.open_point(point);
            rec.disks
                .iter()
                .map(|d| {
                    let out = self.dir.path().join(format!("p-{point}-{}", d.key.0));
                    repo.restore_disk_to_file(rec.id, Some(d.key), &out, &mut |_, _| {})
                        .unwrap();
                    (d.key.0, std::fs::read(&out).unwrap())
                })
                .collect()
        }

        fn open_journal(&self) -> usize {
            let repo = vadp_agent::repo::Repository::open(Path::new(&self.repo())).unwrap();
            repo.catalog().journal_open_entries().unwrap().len()
        }
    }

    /// `r` failed with refusal `id` among its prediction's.
    fn assert_refused(r: &Run, id: &str) {
        assert_ne!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        assert!(
            refusal_ids(r).iter().any(|i| i == id),
            "{id} not in {:?}\n{}",
            refusal_ids(r),
            r.stderr
        );
    }

    fn refusal_ids(r: &Run) -> Vec<String> {
        r.events
            .iter()
            .filter(|e| e["event"] == "predicted")
            .flat_map(|e| {
                e["prediction"]["refusals"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|x| x["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn restored_claim(c: &str) -> bool {
        vadp_agent::engine::restore::is_restored_claim(c)
    }

    #[test]
    fn restore_to_new_after_the_vm_is_deleted() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("web-1");
        // A member of a VirtualMachineGroup (§10.4), behind a VirtualMachineService (§10.3).
        let mut cr = s.sup().get("VirtualMachine", NS, "web-1").unwrap();
        cr["spec"]["groupName"] = "web-group".into();
        s.sup().apply(cr).unwrap();
        s.sup()
            .apply(json!({
                "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineService",
                "metadata": {"name": "web-lb", "namespace": NS},
                "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                         "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
            }))
            .unwrap();
        let before = s.sup().get("VirtualMachine", NS, "web-1").unwrap();
        let point = fx.backup("web-1");
        let expected = fx.point_disks(&point);
        for (key, bytes) in &expected {
            assert_eq!(
                bytes,
                &s.disk_bytes(&vm, DiskKey(*key)),
                "backup of disk {key}"
            );
        }
        s.sup().delete("VirtualMachine", NS, "web-1").unwrap();
        assert!(s.vm_by_name("web-1").is_none());

        // The pre-flight alone changes nothing.
        let dry = fx.restore(&point, &["--dry-run"]);
        assert_eq!(dry.code, Some(0), "{}\n{}", dry.stdout, dry.stderr);
        assert_eq!(dry.report()["prediction"]["restore_type"], "new");
        assert!(
            dry.report()["prediction"]["expectations"]
                .as_array()
                .unwrap()
                .contains(&json!("the VM's .vmx and disks in a new directory [ds1] web-1-restore-<job> (<job>: the first 8 hex digits of this job's id)")),
            "{}",
            dry.report()
        );
        assert!(dry.report()["vm"].is_null());
        assert!(s.vm_by_name("web-1").is_none());

        let r = fx.restore(&point, &[]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        let report = r.report();
        assert_eq!(report["prediction"]["restore_type"], "new");
        assert_eq!(report["prediction"]["failover"], false);
        assert_eq!(report["verification"]["problems"], json!([]), "{report}");
        // Registration went through WCP's stages to 100 %.
        let stages: Vec<u64> = r
            .events
            .iter()
            .filter(|e| e["event"] == "registration")
            .map(|e| e["completed"].as_u64().unwrap())
            .collect();
        assert_eq!(stages.last(), Some(&100), "{stages:?}");

        // The vSphere VM: same name, UUIDs, ExtraConfig; every disk equal to the backup.
        let restored = VmMoref(report["vm"].as_str().unwrap().to_owned());
        let state = s.lab.vm(&restored).unwrap();
        assert_eq!(state.folder, format!("/dc1/vm/Namespaces/{NS}"));
        assert_eq!(
            state.bios_uuid,
            before["status"]["biosUUID"].as_str().unwrap()
        );
        assert!(s.lab.disabled_methods(&restored).unwrap().is_empty());
        assert!(
            state
                .extra_config
                .iter()
                .any(|(k, _)| k == "vmservice.virtualmachine.resource.yaml")
        );
        for (key, bytes) in &expected {
            assert_eq!(
                &s.disk_bytes(&restored, DiskKey(*key)),
                bytes,
                "restored disk {key}"
            );
        }

        // The Supervisor, as seed 001 §8.2 says for a restore to new.
        let cr = s.sup().get("VirtualMachine", NS, "web-1").unwrap();
        assert_eq!(cr["spec"]["powerState"], "PoweredOff");
        let claim = cr["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
            .as_str()
            .unwrap();
        assert!(restored_claim(claim), "{claim}");
        assert_eq!(cr["spec"]["volumes"][0]["name"], "data");
        let pvc = s.sup().get("PersistentVolumeClaim", NS, claim).unwrap();
        assert_eq!(pvc["status"]["phase"], "Bound");
        assert_eq!(cr["metadata"]["labels"]["app"], "web");
        assert!(cr["metadata"]["labels"]["topology.kubernetes.io/zone"].is_null());
        assert_eq!(cr["metadata"]["annotations"]["example.com/owner"], "team-a");
        assert!(!cr["metadata"]["annotations"]["vmoperator.vmware.com/restored-vm"].is_null());
        assert_ne!(
            cr["spec"]["bootstrap"]["cloudInit"]["instanceID"],
            before["spec"]["bootstrap"]["cloudInit"]["instanceID"]
        );
        assert!(s.sup().get("Secret", NS, "web-1-cloud-init").is_some());
        assert_eq!(fx.open_journal(), 0);
        // §10: the group the VM names is gone (the user deleted it with the VM), the
        // service that selects it is there; neither is the restore's to recreate.
        assert_eq!(cr["spec"]["groupName"], "web-group");
        let related = report["verification"]["related"].as_array().unwrap();
        assert!(
            related.iter().any(|n| n.as_str().unwrap().starts_with(
                "spec.groupName names VirtualMachineGroup web-group, which is not in namespace"
            ) && n.as_str().unwrap().contains("from your own copy")),
            "{related:?}"
        );
        // The point kept the service that selected the VM (there was no group to keep),
        // and the restore, not asked to, did not create anything.
        assert_eq!(
            report["related"],
            json!([{"kind": "VirtualMachineService", "name": "web-lb", "outcome": "kept"}])
        );
        assert!(
            related.contains(&json!("selected by VirtualMachineService web-lb")),
            "{related:?}"
        );
    }

    /// vCenter ends a vAPI session left unused for 30 minutes, and a restore's disk copy
    /// uses none: the registration after the copy logs in again, and the Supervisor calls
    /// after it (the wait for the VirtualMachine, the checks) must not go on with the
    /// ended session's token. The lab ends every vAPI session as the registration arrives.
    #[test]
    fn a_restore_goes_on_after_its_vapi_session_ended_during_the_copy() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("web-1");
        let point = fx.backup("web-1");
        let expected = fx.point_disks(&point);
        s.sup().delete("VirtualMachine", NS, "web-1").unwrap();

        let lab_vc = &s.vcenter.running().vcenter;
        let logins = lab_vc.api_login_count();
        lab_vc.end_api_sessions_before_next_registervm();
        let r = fx.restore(&point, &[]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        let report = r.report();
        assert_eq!(report["verification"]["problems"], json!([]), "{report}");
        assert_eq!(
            lab_vc.api_login_count() - logins,
            2,
            "one login at the start, one after the session ended"
        );
        let cr = s.sup().get("VirtualMachine", NS, "web-1").unwrap();
        assert_eq!(cr["spec"]["powerState"], "PoweredOff");
        let restored = VmMoref(report["vm"].as_str().unwrap().to_owned());
        assert_ne!(restored, vm);
        for (key, bytes) in &expected {
            assert_eq!(&s.disk_bytes(&restored, DiskKey(*key)), bytes, "disk {key}");
        }
        assert_eq!(fx.open_journal(), 0);
    }

    /// §10.5 for a whole application: two VMs of one group behind one service, backed up
    /// together, restored with two `--point`s: both VMs first, then the group and the
    /// service once each, then both checked again, now members of their group and selected
    /// by their service. Before anything changes, every VM is planned and its chunks
    /// checked: one VM refused, or one chunk missing, refuses both.
    #[test]
    fn a_restore_of_several_points_brings_the_application_back_in_the_guides_order() {
        let fx = Fixture::new();
        let s = &fx.site;
        for name in ["app-1", "app-2"] {
            let vm = s.create_vm(name);
            // Data of its own, so that app-2's first chunk is not app-1's too.
            let disk = s.lab.vm(&vm).unwrap().disks[0].key;
            let mut data = vec![0u8; 4096];
            data[..name.len()].copy_from_slice(name.as_bytes());
            s.lab.guest_write(&vm, disk, 0, &data).unwrap();
            let mut cr = s.sup().get("VirtualMachine", NS, name).unwrap();
            cr["spec"]["groupName"] = "app-group".into();
            s.sup().apply(cr).unwrap();
        }
        let group = json!({
            "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineGroup",
            "metadata": {"name": "app-group", "namespace": NS},
            "spec": {"powerState": "PoweredOn", "groupName": "a-site", "bootOrder": [
                {"members": [{"name": "app-1"}]}, {"members": [{"name": "app-2"}]}
            ]}
        });
        s.sup().apply(group).unwrap();
        // The group belongs to a group of its own (vm-operator's hierarchical groups).
        s.sup()
            .apply(json!({
                "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineGroup",
                "metadata": {"name": "a-site", "namespace": NS},
                "spec": {"bootOrder": [
                    {"members": [{"name": "app-group", "kind": "VirtualMachineGroup"}]}
                ]}
            }))
            .unwrap();
        s.web_service("app-lb");
        let (b, points) = fx.backup_together(&["app-1", "app-2"]);
        assert!(b.warnings().is_empty(), "{:?}", b.warnings());

        // The application is gone.
        s.delete_all(&[
            ("VirtualMachine", "app-1"),
            ("VirtualMachine", "app-2"),
            ("VirtualMachineGroup", "app-group"),
            ("VirtualMachineGroup", "a-site"),
            ("VirtualMachineService", "app-lb"),
        ]);
        // One point twice is refused before anything changes.
        let twice = fx.restore(&points[0], &["--point", &points[0]]);
        assert_eq!(twice.code, Some(1), "{}", twice.stdout);
        assert!(twice.stderr.contains("both restore VM"), "{}", twice.stderr);
        // So is the application when one of its VMs would be refused (a new app-2, while
        // an app-2 is in the namespace), or one of its points lacks a chunk: app-1, planned
        // first and fine, is not restored either.
        s.create_vm("app-2");
        let refused = fx.restore(&points[0], &["--point", &points[1], "--mode", "new"]);
        assert_eq!(refused.code, Some(1), "{}", refused.stdout);
        assert!(
            refused
                .stderr
                .contains(&format!("point {} ({NS}/app-2)", points[1])),
            "{}",
            refused.stderr
        );
        assert!(s.sup().get("VirtualMachine", NS, "app-1").is_none());
        s.sup().delete("VirtualMachine", NS, "app-2").unwrap();
        let chunk = fx.first_chunk(&points[1], None);
        let moved = chunk.with_extension("away");
        std::fs::rename(&chunk, &moved).unwrap();
        let unrestorable = fx.restore(&points[0], &["--point", &points[1]]);
        assert_eq!(unrestorable.code, Some(1), "{}", unrestorable.stdout);
        assert!(
            unrestorable.stderr.contains(&points[1]),
            "{}",
            unrestorable.stderr
        );
        assert!(s.sup().get("VirtualMachine", NS, "app-1").is_none());
        std::fs::rename(&moved, &chunk).unwrap();
        // A dry run plans both and lists what the points kept, once each.
        let dry = fx.restore(
            &points[0],
            &["--point", &points[1], "--recreate-related", "--dry-run"],
        );
        assert_eq!(dry.code, Some(0), "{}\n{}", dry.stdout, dry.stderr);
        let kept = |r: &Value| -> Vec<String> {
            r["related"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| format!("{} {} {}", o["kind"], o["name"], o["outcome"]))
                .collect()
        };
        assert_eq!(
            kept(dry.report()),
            [
                r#""VirtualMachineGroup" "a-site" "kept""#,
                r#""VirtualMachineGroup" "app-group" "kept""#,
                r#""VirtualMachineService" "app-lb" "kept""#
            ]
        );
        assert!(s.sup().get("VirtualMachine", NS, "app-1").is_none());

        let r = fx.restore(&points[0], &["--point", &points[1], "--recreate-related"]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        // §10.5's order: both VMs registered, then the group, then the service.
        let steps: Vec<&str> = r
            .events
            .iter()
            .filter(|e| e["event"] == "step")
            .filter_map(|e| e["message"].as_str())
            .collect();
        let at = |prefix: &str| {
            steps
                .iter()
                .position(|m| m.starts_with(prefix))
                .unwrap_or_else(|| panic!("no step {prefix}: {steps:?}"))
        };
        // One job's points: nothing to say about their moment.
        assert!(
            !steps
                .iter()
                .any(|m| m.contains("backup job") && m.contains("different")),
            "{steps:?}"
        );
        let registered: Vec<usize> = (0..steps.len())
            .filter(|&i| steps[i].starts_with("registration complete"))
            .collect();
        assert_eq!(registered.len(), 2, "{steps:?}");
        let group_at = at("created VirtualMachineGroup app-group");
        assert!(registered[1] < group_at, "{steps:?}");
        assert!(
            group_at < at("created VirtualMachineService app-lb"),
            "{steps:?}"
        );
        let report = r.report();
        assert_eq!(
            kept(report),
            [
                r#""VirtualMachineGroup" "a-site" "created""#,
                r#""VirtualMachineGroup" "app-group" "created""#,
                r#""VirtualMachineService" "app-lb" "created""#
            ]
        );
        assert!(
            report["problems"].as_array().unwrap().is_empty(),
            "{report}"
        );
        assert!(report["not_restored"].as_array().unwrap().is_empty());
        // The group was created without the power state that would power the VMs on.
        let created = s.sup().get("VirtualMachineGroup", NS, "app-group").unwrap();
        assert!(created["spec"].get("powerState").is_none(), "{created}");
        assert_eq!(created["spec"]["groupName"], "a-site");
        assert!(s.sup().get("VirtualMachineGroup", NS, "a-site").is_some());
        // Each VM checked after its group and service were there.
        for (i, name) in ["app-1", "app-2"].into_iter().enumerate() {
            let vm = &report["vms"][i];
            assert_eq!(vm["vm_name"], format!("{NS}/{name}"));
            assert!(s.sup().get("VirtualMachine", NS, name).is_some());
            let v = &vm["verification"];
            assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
            let notes: Vec<&str> = v["related"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(
                notes,
                [
                    "member of VirtualMachineGroup app-group",
                    "selected by VirtualMachineService app-lb"
                ],
                "{name}"
            );
        }
        // The group above theirs gone: the next backup keeps what is there and says so.
        s.sup().delete("VirtualMachineGroup", NS, "a-site").unwrap();
        let (b, _) = fx.backup_together(&["app-1", "app-2"]);
        assert!(
            b.warnings().iter().any(|w| w.starts_with(
                "VirtualMachineGroup app-group belongs to VirtualMachineGroup a-site, which is not in namespace"
            )),
            "{:?}",
            b.warnings()
        );
    }

    /// Two points of VMs sharing one BIOS UUID, both to be new VMs in one namespace: WCP
    /// would refuse the second once the first exists (§7.1.1), so the group is refused
    /// before anything changes.
    #[test]
    fn a_group_of_two_vms_of_one_bios_uuid_is_refused_before_any_change() {
        let fx = Fixture::new();
        let s = &fx.site;
        let first = s.create_vm("twin-1");
        let second = s.create_vm("twin-2");
        let bios = s.lab.vm(&first).unwrap().bios_uuid;
        s.lab
            .modify_vm(&second, |st| {
                st.bios_uuid = bios;
                Ok(())
            })
            .unwrap();
        let (_, points) = fx.backup_together(&["twin-1", "twin-2"]);
        s.delete_all(&[("VirtualMachine", "twin-1"), ("VirtualMachine", "twin-2")]);
        let vms_before = s.lab.vms().unwrap().len();
        let r = fx.restore(&points[0], &["--point", &points[1]]);
        assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("one BIOS UUID") && r.stderr.contains("DuplicateVMBiosUUID"),
            "{}",
            r.stderr
        );
        assert_eq!(s.lab.vms().unwrap().len(), vms_before, "a VM was created");
        assert!(s.sup().get("VirtualMachine", NS, "twin-1").is_none());
        // A dry run says so too.
        let dry = fx.restore(&points[0], &["--point", &points[1], "--dry-run"]);
        assert_eq!(dry.code, Some(1), "{}", dry.stdout);
        assert!(dry.stderr.contains("one BIOS UUID"), "{}", dry.stderr);
    }

    /// A group restore stops at a VM whose restore fails (here WCP's registration): the
    /// VM before it stays, registered; that one and those after it are reported not
    /// restored; the group and service are not recreated; exit 1.
    #[test]
    fn a_group_restore_stops_at_a_vm_that_fails_and_keeps_those_before() {
        let fx = Fixture::new();
        let s = &fx.site;
        let names = ["stop-1", "stop-2", "stop-3"];
        for name in names {
            s.create_vm(name);
        }
        s.web_service("stop-lb");
        let (_, points) = fx.backup_together(&names);
        s.delete_all(&[
            ("VirtualMachine", "stop-1"),
            ("VirtualMachine", "stop-2"),
            ("VirtualMachine", "stop-3"),
            ("VirtualMachineService", "stop-lb"),
        ]);
        let settings = SupervisorSettings {
            failing_registrations: vec!["stop-2".into()],
            ..s.sup().settings()
        };
        s.sup().set_settings(settings).unwrap();
        let r = fx.restore(
            &points[0],
            &[
                "--point",
                &points[1],
                "--point",
                &points[2],
                "--recreate-related",
            ],
        );
        assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
        let report = r.report();
        let error = report["error"].as_str().unwrap();
        assert!(
            error.contains(&points[1]) && error.contains("injected failure"),
            "{error}"
        );
        assert_eq!(report["cancelled"], false);
        // The second VM's data was complete when its registration failed: it stays, is
        // listed among the VMs restored (with what did not finish), and is not among
        // those to restore again.
        assert_eq!(report["not_restored"], json!([points[2]]));
        let restored: Vec<&str> = report["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["vm_name"].as_str().unwrap())
            .collect();
        assert_eq!(restored, [format!("{NS}/stop-1"), format!("{NS}/stop-2")]);
        assert!(report["vms"][0].get("unfinished").is_none(), "{report}");
        let unfinished = &report["vms"][1]["unfinished"];
        assert_eq!(unfinished["cancelled"], false, "{report}");
        let why = unfinished["error"].as_str().unwrap();
        assert!(
            why.contains("injected failure")
                && why.contains("EndAccess called")
                && why.contains(&format!("kubectl get vm -n {NS} stop-2")),
            "{why}"
        );
        assert!(s.sup().get("VirtualMachine", NS, "stop-1").is_some());
        assert!(s.vm_by_name("stop-2").is_some(), "the restored VM was kept");
        assert!(s.vm_by_name("stop-3").is_none());
        assert!(s.sup().get("VirtualMachine", NS, "stop-3").is_none());
        assert!(
            s.sup()
                .get("VirtualMachineService", NS, "stop-lb")
                .is_none(),
            "recreated although not every VM was restored"
        );
        assert_eq!(report["related"][0]["outcome"], "kept");
    }

    /// Two points that kept different copies of one group (backed up apart, the group
    /// changed between): the newer point's copy is created, and a step says so.
    #[test]
    fn a_group_restore_recreates_the_newest_copy_of_an_object() {
        let fx = Fixture::new();
        let s = &fx.site;
        for name in ["copy-1", "copy-2"] {
            s.create_vm(name);
            let mut cr = s.sup().get("VirtualMachine", NS, name).unwrap();
            cr["spec"]["groupName"] = "copy-group".into();
            s.sup().apply(cr).unwrap();
        }
        let group = |tier: &str| {
            json!({
                "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineGroup",
                "metadata": {"name": "copy-group", "namespace": NS, "labels": {"tier": tier}},
                "spec": {"bootOrder": [{"members": [{"name": "copy-1"}, {"name": "copy-2"}]}]}
            })
        };
        s.sup().apply(group("old")).unwrap();
        let older = fx.backup("copy-1");
        s.sup().apply(group("new")).unwrap();
        // Points are stamped in seconds.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let newer = fx.backup("copy-2");
        for name in ["copy-1", "copy-2"] {
            s.sup().delete("VirtualMachine", NS, name).unwrap();
        }
        s.sup()
            .delete("VirtualMachineGroup", NS, "copy-group")
            .unwrap();
        // The older point given first: the newer copy wins all the same.
        let r = fx.restore(&older, &["--point", &newer, "--recreate-related"]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        let created = s
            .sup()
            .get("VirtualMachineGroup", NS, "copy-group")
            .unwrap();
        assert_eq!(created["metadata"]["labels"]["tier"], "new", "{created}");
        let report = r.report();
        assert_eq!(report["related"].as_array().unwrap().len(), 1, "{report}");
        assert_eq!(report["related"][0]["point"], newer.as_str());
        assert!(
            r.events.iter().any(|e| e["event"] == "step"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("kept different copies of VirtualMachineGroup copy-group")),
            "{}",
            r.stdout
        );
        // Backed up by two jobs: said before anything changes.
        assert!(
            r.events.iter().any(|e| e["event"] == "step"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("the points come from 2 different backup jobs")),
            "{}",
            r.stdout
        );
    }

    /// A group restore cancelled part-way prints its report: what was not restored, and
    /// nothing recreated; exit 1.
    #[test]
    fn a_cancelled_group_restore_reports_what_it_did_not_restore() {
        let fx = Fixture::new();
        let s = &fx.site;
        for name in ["halt-1", "halt-2"] {
            s.create_vm(name);
        }
        s.web_service("halt-lb");
        let (_, points) = fx.backup_together(&["halt-1", "halt-2"]);
        s.delete_all(&[
            ("VirtualMachine", "halt-1"),
            ("VirtualMachine", "halt-2"),
            ("VirtualMachineService", "halt-lb"),
        ]);
        let dir = fx.dir.path().join("pause");
        std::fs::create_dir_all(&dir).unwrap();
        // The first VM registered and about to be checked when Ctrl-C comes.
        std::fs::write(dir.join("restore-cancel-requested.go"), b"").unwrap();
        let repo = fx.repo();
        let mut restore = fx.spawn_paused(
            &[
                "restore",
                "--repo",
                &repo,
                "--point",
                &points[0],
                "--point",
                &points[1],
                "--recreate-related",
            ],
            "restore-before-verify,restore-cancel-requested",
            &dir,
        );
        wait_reached(&mut restore, &dir, "restore-before-verify");
        let pid = i32::try_from(restore.id()).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid, no memory involved.
        let sent = unsafe { libc::kill(pid, libc::SIGINT) };
        assert_eq!(sent, 0);
        wait_reached(&mut restore, &dir, "restore-cancel-requested");
        std::fs::write(dir.join("restore-before-verify.go"), b"").unwrap();
        let out = restore.wait_with_output().unwrap();
        let r = Run::of(&out);
        assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
        let report = r.report();
        assert_eq!(report["cancelled"], true, "{report}");
        // The first VM was registered before the cancel: it stays, and is reported
        // restored (its check cut short), not as one to restore again.
        assert_eq!(report["not_restored"], json!([points[1]]));
        assert_eq!(report["vms"][0]["vm_name"], format!("{NS}/halt-1"));
        let unfinished = &report["vms"][0]["unfinished"];
        assert_eq!(unfinished["cancelled"], true, "{report}");
        assert!(
            unfinished["error"]
                .as_str()
                .unwrap()
                .contains("registration task"),
            "{report}"
        );
        assert!(s.sup().get("VirtualMachine", NS, "halt-1").is_some());
        assert!(s.sup().get("VirtualMachine", NS, "halt-2").is_none());
        assert!(
            s.sup()
                .get("VirtualMachineService", NS, "halt-lb")
                .is_none()
        );
    }

    /// Seed 001 §10.3–§10.5: the backup keeps the VirtualMachineGroup the VM names and the
    /// VirtualMachineServices that select it (without what the server set); `show
    /// --related` prints them for kubectl; `--recreate-related` creates after registration
    /// those the namespace lacks and leaves the user's own alone. A Supervisor that cannot
    /// be reached costs the backup only them, with a warning.
    #[test]
    fn the_points_group_and_services_come_back_with_recreate_related() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("web-1");
        // Also behind web-lb (label app=web), and not in the job.
        s.create_vm("web-2");
        let mut cr = s.sup().get("VirtualMachine", NS, "web-1").unwrap();
        cr["spec"]["groupName"] = "web-group".into();
        s.sup().apply(cr).unwrap();
        let group_spec = json!({"powerState": "PoweredOn", "bootOrder": [
            {"members": [{"name": "db-1"}]},
            {"members": [{"name": "web-1"}], "powerOnDelay": "30s"}
        ]});
        s.sup()
            .apply(json!({
                "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineGroup",
                "metadata": {"name": "web-group", "namespace": NS, "labels": {"team": "a"}},
                "spec": group_spec
            }))
            .unwrap();
        let lb_spec = json!({"type": "LoadBalancer", "selector": {"app": "web"},
                             "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]});
        for (name, spec) in [
            ("web-lb", lb_spec.clone()),
            // Selects other VMs: not kept.
            (
                "db-lb",
                json!({"type": "LoadBalancer", "selector": {"app": "db"}}),
            ),
        ] {
            s.sup()
                .apply(json!({
                    "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineService",
                    "metadata": {"name": name, "namespace": NS}, "spec": spec
                }))
                .unwrap();
        }
        let b = fx.backup_run(&format!("{NS}/web-1"), &[]);
        assert_eq!(b.code, Some(0), "{}\n{}", b.stdout, b.stderr);
        assert_eq!(
            b.report()["vms"][0]["related"],
            json!([
                "VirtualMachineGroup web-group",
                "VirtualMachineService web-lb"
            ])
        );
        // §10.4 step 2: the group's other member is not in the job.
        let warnings = b.warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w
                    .starts_with("VirtualMachineGroup web-group also lists db-1, not in this job")),
            "{warnings:?}"
        );
        // §10.3 step 2: web-2, which web-lb also selects, is not in the job.
        assert!(
            warnings
                .iter()
                .any(|w| w
                    .starts_with("its VirtualMachineServices also select web-2, not in this job")),
            "{warnings:?}"
        );
        let point = b.report()["vms"][0]["point"].as_str().unwrap().to_owned();

        // `show --related`: YAML documents for kubectl create, as they were, without what
        // the server set, and a group without the power state that would power on the VM
        // just restored (a comment says so); with --json one List.
        let shown = fx.run(&["show", "--repo", &fx.repo(), "--related", &point], None);
        assert!(shown.status.success());
        let text = String::from_utf8(shown.stdout).unwrap();
        assert!(
            text.starts_with("# VirtualMachineGroup web-group: spec.powerState PoweredOn left out"),
            "{text}"
        );
        let docs: Vec<Value> = text
            .split("\n---\n")
            .map(|d| serde_norway::from_str(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert_eq!(docs[0]["kind"], "VirtualMachineGroup");
        let mut without_power = group_spec.clone();
        without_power.as_object_mut().unwrap().remove("powerState");
        assert_eq!(docs[0]["spec"], without_power);
        assert_eq!(docs[0]["metadata"]["labels"]["team"], "a");
        assert_eq!(docs[1]["metadata"]["name"], "web-lb");
        assert_eq!(docs[1]["spec"], lb_spec);
        for d in &docs {
            for k in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "generation",
                "namespace",
            ] {
                assert!(d["metadata"].get(k).is_none(), "{k} kept: {d}");
            }
            assert!(d.get("status").is_none(), "{d}");
        }
        let listed = fx.run(
            &["--json", "show", "--repo", &fx.repo(), "--related", &point],
            None,
        );
        let list: Value = serde_json::from_slice(&listed.stdout).unwrap();
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"].as_array().unwrap().len(), 2);

        // The application is gone: the VM, its group; the service was recreated by hand,
        // differently.
        s.sup().delete("VirtualMachine", NS, "web-1").unwrap();
        s.sup()
            .delete("VirtualMachineGroup", NS, "web-group")
            .unwrap();
        s.sup()
            .delete("VirtualMachineService", NS, "web-lb")
            .unwrap();
        let mine = json!({"type": "LoadBalancer", "selector": {"app": "web"},
                          "ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 8443}]});
        s.sup()
            .apply(json!({
                "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineService",
                "metadata": {"name": "web-lb", "namespace": NS}, "spec": mine
            }))
            .unwrap();

        let dry = fx.restore(&point, &["--dry-run", "--recreate-related"]);
        assert_eq!(dry.code, Some(0), "{}\n{}", dry.stdout, dry.stderr);
        assert!(
            dry.report()["prediction"]["expectations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e.as_str().unwrap().starts_with(
                    "after registration, VirtualMachineGroup web-group, VirtualMachineService web-lb (kept with the point) created"
                )),
            "{}",
            dry.report()
        );
        assert!(
            s.sup()
                .get("VirtualMachineGroup", NS, "web-group")
                .is_none()
        );

        let r = fx.restore(&point, &["--recreate-related"]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        let report = r.report();
        assert_eq!(report["verification"]["problems"], json!([]), "{report}");
        assert_eq!(report["related"][0]["kind"], "VirtualMachineGroup");
        assert_eq!(report["related"][0]["outcome"], "created");
        // Created without the power state that would power on the VM just restored
        // (§8.1.4), which the report tells the user to set.
        assert!(
            report["related"][0]["note"]
                .as_str()
                .unwrap()
                .starts_with("created without spec.powerState PoweredOn"),
            "{report}"
        );
        assert_eq!(
            report["related"][1],
            json!({"kind": "VirtualMachineService", "name": "web-lb", "outcome": "already_there"})
        );
        let group = s.sup().get("VirtualMachineGroup", NS, "web-group").unwrap();
        assert_eq!(group["spec"], without_power);
        assert_eq!(group["metadata"]["labels"]["team"], "a");
        // The user's service is left as it is.
        assert_eq!(
            s.sup().get("VirtualMachineService", NS, "web-lb").unwrap()["spec"],
            mine
        );
        let related = report["verification"]["related"].as_array().unwrap();
        // Created without its power state, the group does not power its members on.
        assert!(
            related.contains(&json!("member of VirtualMachineGroup web-group")),
            "{related:?}"
        );
        assert!(
            related.contains(&json!("selected by VirtualMachineService web-lb")),
            "{related:?}"
        );

        // A Supervisor that cannot be reached: the backup commits its point without them,
        // and says so.
        let token = fx.dir.path().join("token");
        std::fs::write(&token, "t").unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let b = fx.backup_run(
            &format!("{NS}/web-1"),
            &[
                "--supervisor",
                "https://127.0.0.1:9",
                "--supervisor-token-file",
                &token.display().to_string(),
            ],
        );
        assert_eq!(b.code, Some(0), "{}\n{}", b.stdout, b.stderr);
        assert_eq!(b.report()["vms"][0]["related"], json!([]));
        assert!(
            b.warnings()
                .iter()
                .any(|w| w.contains("VirtualMachineGroup and VirtualMachineServices were not kept")),
            "{}",
            b.stdout
        );
        // --no-related: not read, no warning.
        let b = fx.backup_run(&format!("{NS}/web-1"), &["--no-related"]);
        assert_eq!(b.code, Some(0), "{}\n{}", b.stdout, b.stderr);
        assert_eq!(b.report()["vms"][0]["related"], json!([]));
        assert!(b.warnings().is_empty(), "{}", b.stdout);
    }

    /// What the Supervisor refuses (an account without rights on a kind): a backup keeps
    /// what it could read (the group), says what it could not for each VM and goes on
    /// asking for the next VM (a refusal is not an unreachable Supervisor), its points
    /// committed; a restore asked to recreate a group it may not create ends with the VM
    /// registered and a problem naming the group (exit 2).
    #[test]
    fn related_objects_the_supervisor_refuses_are_warnings_and_problems() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("web-1");
        s.create_vm("web-2");
        let mut cr = s.sup().get("VirtualMachine", NS, "web-1").unwrap();
        cr["spec"]["groupName"] = "web-group".into();
        s.sup().apply(cr).unwrap();
        s.sup()
            .apply(json!({
                "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineGroup",
                "metadata": {"name": "web-group", "namespace": NS},
                "spec": {"bootOrder": [{"members": [{"name": "web-1"}, {"name": "web-2"}]}]}
            }))
            .unwrap();

        s.forbid(&["VirtualMachineService"]);
        let b = fx.backup_run(&format!("{NS}/web-1"), &["--vm", &format!("{NS}/web-2")]);
        assert_eq!(b.code, Some(0), "{}\n{}", b.stdout, b.stderr);
        let not_kept: Vec<&str> = b
            .warnings()
            .into_iter()
            .filter(|m| m.contains("VirtualMachineServices were not kept"))
            .collect();
        assert_eq!(not_kept.len(), 2, "{not_kept:?}");
        for m in &not_kept {
            assert!(m.contains("Forbidden") || m.contains("forbidden"), "{m}");
            assert!(!m.contains("earlier in this job"), "{m}");
        }
        for v in b.report()["vms"].as_array().unwrap() {
            assert!(v["point"].is_string(), "{v}");
            let expected = if v["name"] == "web-1" {
                json!(["VirtualMachineGroup web-group"])
            } else {
                json!([])
            };
            assert_eq!(v["related"], expected, "{v}");
        }

        s.forbid(&[]);
        let point = fx.backup("web-1");
        s.sup().delete("VirtualMachine", NS, "web-1").unwrap();
        s.sup()
            .delete("VirtualMachineGroup", NS, "web-group")
            .unwrap();
        s.forbid(&["VirtualMachineGroup"]);
        let r = fx.restore(&point, &["--recreate-related"]);
        assert_eq!(r.code, Some(2), "{}\n{}", r.stdout, r.stderr);
        let report = r.report();
        assert!(report["vm"].is_string(), "{report}");
        assert_eq!(report["related"][0]["name"], "web-group");
        assert_eq!(report["related"][0]["outcome"], "failed", "{report}");
        let problems = report["verification"]["problems"].as_array().unwrap();
        assert!(
            problems.iter().any(|p| p.as_str().unwrap().starts_with(
                "VirtualMachineGroup web-group (kept with the point) was not created in ns1"
            )),
            "{problems:?}"
        );
        assert!(s.vm_by_name("web-1").is_some());
    }

    #[test]
    fn on_8_0u3_wcp_registers_by_itself_only_after_end_access() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.set_version(SupervisorVersion::V80U3);
        s.create_vm("auto-1");
        let point = fx.backup("auto-1");
        let expected = fx.point_disks(&point);
        s.sup().delete("VirtualMachine", NS, "auto-1").unwrap();
        let r = fx.restore(&point, &[]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        let report = r.report();
        // Opt-out model (§4.2): WCP registers the VM once EndAccess ends the restore, and
        // the agent follows WCP's task instead of calling registervm a second time.
        assert_eq!(report["prediction"]["auto_registration"], true);
        assert_eq!(report["auto_registered"], true, "{report}");
        assert_eq!(report["verification"]["problems"], json!([]), "{report}");
        let restored = VmMoref(report["vm"].as_str().unwrap().to_owned());
        for (key, bytes) in &expected {
            assert_eq!(&s.disk_bytes(&restored, DiskKey(*key)), bytes, "disk {key}");
        }
        let tasks = s
            .sup()
            .tasks_for(Some(&format!("VirtualMachine:{}", restored.0)));
        let registrations = tasks
            .values()
            .filter(|t| t["operation"] == "register_VM")
            .count();
        assert_eq!(registrations, 1, "one registration only: {tasks:?}");
    }

    /// WCP's own registration starts after the agent stopped waiting for it and before its
    /// registervm call (which is not idempotent, and then fails on the VM WCP registered):
    /// the agent follows WCP's task rather than failing the restore.
    #[test]
    fn a_registration_wcp_starts_after_the_wait_is_followed() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.set_version(SupervisorVersion::V80U3);
        s.create_vm("late-1");
        let point = fx.backup("late-1");
        s.sup().delete("VirtualMachine", NS, "late-1").unwrap();
        let dir = fx.dir.path().join("pause-late");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = fx.repo();
        let mut restore = fx.spawn_paused(
            &[
                "restore",
                "--repo",
                &repo,
                "--point",
                &point,
                "--auto-registration-wait",
                "0",
            ],
            "restore-before-registervm",
            &dir,
        );
        wait_reached(&mut restore, &dir, "restore-before-registervm");
        // WCP registers the VM by itself meanwhile.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        loop {
            let done = s
                .sup()
                .tasks_for(None)
                .values()
                .any(|t| t["operation"] == "register_VM" && t["status"] == "SUCCEEDED");
            if done {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "WCP never registered");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::fs::write(dir.join("restore-before-registervm.go"), b"").unwrap();
        let out = restore.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["event"] == "report")
            .map(|e| e["report"].clone())
            .unwrap();
        assert_eq!(report["auto_registered"], true, "{report}");
        assert_eq!(report["verification"]["problems"], json!([]), "{report}");
    }

    #[test]
    fn disk_only_then_in_place_to_an_older_point() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("db-1");
        let p1 = fx.backup("db-1");
        let old = fx.point_disks(&p1);
        // Where each disk of p1 sits: the PVC's disk, a First Class Disk, is swapped for a
        // new disk at the same controller and unit by the restore in place.
        let slots: Vec<(i32, (i32, i32))> = s
            .lab
            .vm(&vm)
            .unwrap()
            .disks
            .iter()
            .map(|d| (d.key.0, (d.controller_key, d.unit_number)))
            .collect();
        let slot_of = |key: i32| slots.iter().find(|(k, _)| *k == key).unwrap().1;
        let fcd = s.lab.vm(&vm).unwrap().disks[1].file_name.clone();
        assert!(s.lab.fcd_id(&fcd).is_some(), "the PVC's disk is an FCD");
        let at_slot = |slot: (i32, i32)| s.disk_at(&vm, slot);
        // The VM moves on: VM Operator writes a newer backup version; the guest writes.
        s.change_since_backup("db-1");
        let pvc_disk = s.lab.vm(&vm).unwrap().disks[1].key;
        s.lab.guest_write(&vm, pvc_disk, 0, &[0xEE; 8192]).unwrap();
        let p2 = fx.backup("db-1");
        let newer = fx.point_disks(&p2);

        // A disk-only restore that stops part-way (a chunk found corrupt only when read)
        // takes its new, half-written disk off the VM again before EndAccess.
        let pvc_chunk = fx.first_chunk(&p2, Some(pvc_disk.0));
        let good = std::fs::read(&pvc_chunk).unwrap();
        let mut bad = good.clone();
        bad[40] ^= 1;
        std::fs::write(&pvc_chunk, &bad).unwrap();
        let files = || s.disk_files(&vm);
        let before = files();
        let r = fx.restore(
            &p2,
            &["--mode", "disk-only", "--disk", &pvc_disk.0.to_string()],
        );
        assert_ne!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        assert_eq!(files(), before, "the unfinished disk stays attached");
        assert!(s.lab.disabled_methods(&vm).unwrap().is_empty());
        let vm_dir = s.lab.vm(&vm).unwrap().vmx_path;
        let leftovers: Vec<String> =
            std::fs::read_dir(vm_dir.resolve(s.lab.root()).parent().unwrap())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("restored-"))
                .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert_eq!(fx.open_journal(), 0);
        std::fs::write(&pvc_chunk, &good).unwrap();
        // Killed with the new disk attached and unwritten: reconcile takes it away (before
        // its EndAccess).
        let r = fx.restore_on(
            s,
            "site-a",
            &p2,
            &["--mode", "disk-only", "--disk", &pvc_disk.0.to_string()],
            Some("restore-after-attach"),
        );
        assert_ne!(r.code, Some(0));
        assert_ne!(files(), before, "{}", r.stderr);
        let rec = fx.reconcile();
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        let report = &rec.events.last().unwrap()["report"];
        assert_eq!(files(), before, "{report}");
        assert_eq!(
            report["half_created_vms"][0][1]["detached"]
                .as_array()
                .map(Vec::len),
            Some(1),
            "{report}"
        );
        assert!(s.lab.disabled_methods(&vm).unwrap().is_empty());
        assert_eq!(fx.open_journal(), 0);
        // Killed with the disk journalled and not yet created: reconcile finds nothing to
        // detach, ends access and closes the entry.
        let r = fx.restore_on(
            s,
            "site-a",
            &p2,
            &["--mode", "disk-only", "--disk", &pvc_disk.0.to_string()],
            Some("restore-disk-journalled"),
        );
        assert_ne!(r.code, Some(0));
        assert_eq!(files(), before, "{}", r.stderr);
        assert!(!s.lab.disabled_methods(&vm).unwrap().is_empty());
        let rec = fx.reconcile();
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        let report = &rec.events.last().unwrap()["report"];
        assert_eq!(
            report["half_created_vms"][0][1]["detached"],
            json!([]),
            "{report}"
        );
        assert_eq!(files(), before, "{report}");
        assert!(s.lab.disabled_methods(&vm).unwrap().is_empty());
        assert_eq!(fx.open_journal(), 0);

        // Disk-only: the ExtraConfig version equals the annotation (§4.3).
        let r = fx.restore(
            &p2,
            &["--mode", "disk-only", "--disk", &pvc_disk.0.to_string()],
        );
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        assert_eq!(r.report()["prediction"]["restore_type"], "disk-only");
        assert_eq!(
            r.report()["verification"]["problems"],
            json!([]),
            "{}",
            r.report()
        );
        let state = s.lab.vm(&vm).unwrap();
        let added = state.disks.last().unwrap();
        assert!(added.file_name.to_string().contains("restored-"));
        let want = &newer.iter().find(|(k, _)| *k == pvc_disk.0).unwrap().1;
        assert_eq!(&s.disk_bytes(&vm, added.key), want);
        let cr = s.sup().get("VirtualMachine", NS, "db-1").unwrap();
        let vols = cr["spec"]["volumes"].as_array().unwrap();
        assert_eq!(vols[0]["persistentVolumeClaim"]["claimName"], "db-1-data");
        assert!(vols.iter().any(|v| {
            restored_claim(
                v["persistentVolumeClaim"]["claimName"]
                    .as_str()
                    .unwrap_or_default(),
            )
        }));

        // A disk-only restore leaves the VM's ExtraConfig as it is, so WCP decides
        // auto-registration by the VM's own keys, not the backup's (§4.2): the VM opted in
        // since, the backup did not.
        let mut extra = s.lab.vm(&vm).unwrap().extra_config;
        extra.push((
            "vmservice.virtualmachine.enableAutomaticRegistration".into(),
            "true".into(),
        ));
        s.lab.set_extra_config(&vm, extra.clone()).unwrap();
        let dry = fx.restore(
            &p2,
            &[
                "--mode",
                "disk-only",
                "--disk",
                &pvc_disk.0.to_string(),
                "--dry-run",
            ],
        );
        assert_eq!(dry.code, Some(0), "{}\n{}", dry.stdout, dry.stderr);
        assert_eq!(dry.report()["prediction"]["auto_registration"], true);
        extra.pop();
        s.lab.set_extra_config(&vm, extra).unwrap();

        // The disks of the older point too: a disk-only restore leaves the VM's ExtraConfig
        // alone, so WCP compares the VM's own version, not the point's (§4.3).
        let r = fx.restore(
            &p1,
            &["--mode", "disk-only", "--disk", &pvc_disk.0.to_string()],
        );
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        assert_eq!(r.report()["prediction"]["restore_type"], "disk-only");
        let added = s.lab.vm(&vm).unwrap().disks.last().unwrap().clone();
        let want = &old.iter().find(|(k, _)| *k == pvc_disk.0).unwrap().1;
        assert_eq!(&s.disk_bytes(&vm, added.key), want);

        // Asking for the wrong type is refused before any change.
        let r = fx.restore(&p2, &["--mode", "new"]);
        assert_ne!(r.code, Some(0));
        assert!(
            refusal_ids(&r)
                .iter()
                .any(|i| i == "vadp-agent:ModeMismatch")
        );

        // A chunk of the older point goes missing: the in-place restore is refused before it
        // changes anything (the VM's disks would otherwise be left half overwritten).
        let chunk = fx.first_chunk(&p1, None);
        let aside = fx.dir.path().join("aside");
        std::fs::rename(&chunk, &aside).unwrap();
        let disks_now = || -> Vec<Vec<u8>> {
            old.iter()
                .map(|(key, _)| s.disk_bytes(&vm, DiskKey(*key)))
                .collect()
        };
        let before = disks_now();
        let r = fx.restore(&p1, &["--mode", "existing"]);
        assert_ne!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        let said = format!("{}{}", r.stdout, r.stderr);
        assert!(
            said.contains("cannot be restored, nothing was changed")
                && said.contains(&chunk.display().to_string()),
            "{said}"
        );
        assert!(before == disks_now(), "the VM's disks were touched");
        assert!(s.lab.disabled_methods(&vm).unwrap().is_empty());
        assert_eq!(fx.open_journal(), 0);
        std::fs::rename(&aside, &chunk).unwrap();
        // A chunk whose content is bad is found before any change with --verify-first.
        let good = std::fs::read(&chunk).unwrap();
        let mut bad = good.clone();
        bad[40] ^= 1;
        std::fs::write(&chunk, &bad).unwrap();
        let r = fx.restore(&p1, &["--mode", "existing", "--verify-first"]);
        assert_ne!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        let said = format!("{}{}", r.stdout, r.stderr);
        assert!(
            said.contains("cannot be restored, nothing was changed") && said.contains("corrupt"),
            "{said}"
        );
        assert!(before == disks_now(), "the VM's disks were touched");
        // Without it, the restore stops part-way: the disks are partly written, but the
        // VM keeps its own vmservice.* ExtraConfig, so WCP, told by EndAccess that the
        // restore is over, has no restore to act on.
        let vmservice = || -> Vec<(String, String)> {
            let mut kv: Vec<(String, String)> = s
                .lab
                .vm(&vm)
                .unwrap()
                .extra_config
                .into_iter()
                .filter(|(k, _)| k.starts_with("vmservice."))
                .collect();
            kv.sort();
            kv
        };
        let own = vmservice();
        let attached_before = files();
        let r = fx.restore(&p1, &["--mode", "existing"]);
        assert_ne!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        assert!(s.lab.disabled_methods(&vm).unwrap().is_empty());
        assert!(
            own == vmservice(),
            "ExtraConfig changed by a failed restore"
        );
        assert_eq!(fx.open_journal(), 0);
        // Its First Class Disk was swapped for a new disk, and is swapped back: attached
        // again at its controller and unit, untouched, the new file deleted.
        assert!(
            r.events.iter().any(|e| e["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("swapping First Class Disk")),
            "{}",
            r.stdout
        );
        let mut now = files();
        now.sort();
        let mut want = attached_before.clone();
        want.sort();
        assert_eq!(now, want, "{}", r.stderr);
        assert_eq!(at_slot(slot_of(pvc_disk.0)).file_name, fcd);
        let leftovers: Vec<String> =
            std::fs::read_dir(vm_dir.resolve(s.lab.root()).parent().unwrap())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("restored-{}", &p1[..8])))
                // The disk-only restore of p1 above attached one for good.
                .filter(|n| {
                    let stem = n.trim_end_matches(".vmdk").trim_end_matches("-flat");
                    !attached_before
                        .iter()
                        .any(|f| f.ends_with(&format!("/{stem}.vmdk")))
                })
                .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::write(&chunk, &good).unwrap();

        // In place to the older point: the VM is powered off first (§9.2).
        let r = fx.restore(&p1, &["--mode", "existing", "--verify-first"]);
        assert!(
            r.events.iter().any(|e| e["event"] == "step"
                && e["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("verifying the chunks of point")),
            "{}",
            r.stdout
        );
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        assert!(
            own != vmservice(),
            "the backup's ExtraConfig is the VM's own: {own:?}"
        );
        assert_eq!(r.report()["prediction"]["restore_type"], "existing");
        assert_eq!(r.report()["vm"].as_str().unwrap(), vm.0);
        assert_eq!(
            r.report()["verification"]["problems"],
            json!([]),
            "{}",
            r.report()
        );
        for (key, bytes) in &old {
            let now = at_slot(slot_of(*key));
            assert_eq!(&s.disk_bytes(&vm, now.key), bytes, "disk {key} back to p1");
        }
        // The PVC's disk was restored into a new disk at its slot, the FCD left alone.
        let new = at_slot(slot_of(pvc_disk.0));
        assert!(
            new.file_name
                .to_string()
                .contains(&format!("/restored-{}-", &p1[..8])),
            "{}",
            new.file_name
        );
        assert!(!files().contains(&fcd.to_string()));
        let cr = s.sup().get("VirtualMachine", NS, "db-1").unwrap();
        let claim = cr["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(restored_claim(&claim), "{claim}");
        // WCP registered the new disk as a new FCD behind the new PVC, and deleted the old,
        // dangling PVC — and, reclaim policy Delete, its volume: the detached FCD (§6.2).
        let pvc = s.sup().get("PersistentVolumeClaim", NS, &claim).unwrap();
        assert_eq!(pvc["status"]["phase"], "Bound");
        assert_eq!(
            pvc["metadata"]["annotations"]["lab.vadp-agent.dev/disk-file"],
            new.file_name.to_string()
        );
        assert!(s.lab.fcd_id(&new.file_name).is_some());
        assert!(!fcd.resolve(s.lab.root()).exists(), "{fcd} deleted by CNS");
        // §8.2 restore to existing: zone label preserved, old PVC deleted as dangling.
        assert_eq!(
            cr["metadata"]["labels"]["topology.kubernetes.io/zone"],
            "zone-a"
        );
        assert!(
            s.sup()
                .get("PersistentVolumeClaim", NS, "db-1-data")
                .is_none()
        );
        assert!(cr["metadata"]["annotations"]["vmoperator.vmware.com/pause"].is_null());
        assert!(s.lab.disabled_methods(&vm).unwrap().is_empty());
        assert_eq!(fx.open_journal(), 0);
    }

    #[test]
    fn refusals_are_predicted_before_any_change() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("app-1");
        let point = fx.backup("app-1");
        let vms_before = s.lab.vms().unwrap().len();
        let check_unchanged = |r: &Run, id: &str| {
            assert_ne!(r.code, Some(0), "{id}: {}", r.stdout);
            assert!(
                refusal_ids(r).iter().any(|i| i == id),
                "{id} not predicted: {}\n{}",
                r.stdout,
                r.stderr
            );
            assert!(r.stderr.contains(id), "{id} not in the error: {}", r.stderr);
            assert_eq!(
                s.lab.vms().unwrap().len(),
                vms_before,
                "{id}: a VM appeared"
            );
            assert!(s.lab.disabled_methods(&vm).unwrap().is_empty());
            assert_eq!(fx.open_journal(), 0);
        };
        // 8.0U3: the VirtualMachine exists (§7.2.2).
        s.set_version(SupervisorVersion::V80U3);
        let r = fx.restore(&point, &[]);
        check_unchanged(&r, "VCenterWcpWorkloadRegisterVMAlreadyExistsOnSupervisor");
        // 8.0U3 has no network override (§7.3.2).
        let r = fx.restore(&point, &["--subnet-map", "subnet-prod-a=subnet-dr-a"]);
        check_unchanged(&r, "UNSUPPORTED");
        s.set_version(SupervisorVersion::V90);
        // A namespace without a folder (§7.2.3).
        let r = fx.restore(&point, &["--namespace", "nope"]);
        check_unchanged(&r, "VCenterWcpWorkloadRegisterVMNotFoundInNamespaceFolder");
        // Duplicate BIOS UUID (§7.1.1): the CR is gone but another VM in the folder has it.
        let bios = s.lab.vm(&vm).unwrap().bios_uuid;
        s.sup().delete("VirtualMachine", NS, "app-1").unwrap();
        let other = s.plain_vm_in_namespace("copy", 1);
        s.lab
            .modify_vm(&other, |st| {
                st.bios_uuid = bios;
                Ok(())
            })
            .unwrap();
        let r = fx.restore(&point, &[]);
        assert_eq!(
            s.lab.vms().unwrap().len(),
            vms_before,
            "only the copy exists"
        );
        assert!(
            refusal_ids(&r)
                .iter()
                .any(|i| i == "VCenterWcpWorkloadRegisterVMDuplicateVMBiosUUID"),
            "{}",
            r.stdout
        );
        assert_ne!(r.code, Some(0));

        // Corrupt ExtraConfig and an old API version (§7.1.2, §7.1.3): plain VMs carrying
        // the shared fixtures' invalid data, backed up (with a warning) then restored.
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vmservice");
        for (file, id) in [
            (
                "bad/not-base64.json",
                "VCenterWcpWorkloadRegisterVMValidateVMResourceFailed",
            ),
            (
                "bad/apiversion-v1alpha1.json",
                "VCenterWcpWorkloadRegisterVMConvertUnstructuredToVMTypeFailed",
            ),
        ] {
            let path = fixtures.join(file);
            if !path.exists() {
                panic!("fixture {} missing", path.display());
            }
            let extra: Vec<(String, String)> = fixture_extra_config(&path);
            let name = file.trim_start_matches("bad/").trim_end_matches(".json");
            let v = s.plain_vm_in_namespace(name, 2);
            s.lab.set_extra_config(&v, extra).unwrap();
            let p = fx.backup_moref(&v);
            let count = s.lab.vms().unwrap().len();
            let r = fx.restore(&p, &["--namespace", NS]);
            assert!(
                refusal_ids(&r).iter().any(|i| i == id),
                "{file}: {}\n{}",
                r.stdout,
                r.stderr
            );
            assert_ne!(r.code, Some(0));
            assert_eq!(s.lab.vms().unwrap().len(), count);
        }
    }

    /// The ExtraConfig of a shared fixture file (`{"extraConfig": {k: v}}` or `[[k, v]]`).
    fn fixture_extra_config(path: &Path) -> Vec<(String, String)> {
        let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let ec = v.get("extraConfig").cloned().unwrap_or(v);
        match ec {
            Value::Object(m) => m
                .into_iter()
                .filter(|(k, _)| k.starts_with("vmservice."))
                .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
                .collect(),
            Value::Array(a) => a
                .into_iter()
                .map(|e| {
                    if let Some(pair) = e.as_array() {
                        (
                            pair[0].as_str().unwrap().to_owned(),
                            pair[1].as_str().unwrap().to_owned(),
                        )
                    } else {
                        (
                            e["key"].as_str().unwrap().to_owned(),
                            e["value"].as_str().unwrap().to_owned(),
                        )
                    }
                })
                .collect(),
            _ => panic!("unexpected fixture shape in {}", path.display()),
        }
    }

    impl Fixture {
        fn backup_moref(&self, vm: &VmMoref) -> String {
            self.backup_selector(&vm.0)
        }

        fn reconcile(&self) -> Run {
            self.json(
                vec!["reconcile".into(), "--repo".into(), self.repo()],
                &self.site,
                "site-a",
                None,
            )
        }
    }

    #[test]
    fn failover_into_a_second_vcenter_with_a_network_override() {
        let fx = Fixture::new();
        let vm = fx.site.create_vm("web-2");
        let point = fx.backup("web-2");
        let expected = fx.point_disks(&point);
        let _ = vm;
        let b = Site::new(fx.dir.path(), "site-b");
        let r = fx.restore_on(
            &b,
            "site-b",
            &point,
            &["--subnet-map", "subnet-prod-a=subnet-dr-a"],
            None,
        );
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        let report = r.report();
        assert_eq!(report["prediction"]["restore_type"], "new");
        assert_eq!(report["prediction"]["failover"], true);
        assert_eq!(report["verification"]["problems"], json!([]), "{report}");
        let restored = VmMoref(report["vm"].as_str().unwrap().to_owned());
        for (key, bytes) in &expected {
            assert_eq!(&b.disk_bytes(&restored, DiskKey(*key)), bytes, "disk {key}");
        }
        // §6.4, §8.1.6: image cleared, failed-over annotation; §9.3: subnet remapped.
        let cr = b.sup().get("VirtualMachine", NS, "web-2").unwrap();
        assert!(cr["spec"]["image"].is_null());
        assert_eq!(cr["spec"]["imageName"], "");
        assert!(!cr["metadata"]["annotations"]["vmoperator.vmware.com/failed-over-vm"].is_null());
        assert_eq!(
            cr["spec"]["network"]["interfaces"][0]["network"]["name"],
            "subnet-dr-a"
        );
        assert_eq!(cr["spec"]["powerState"], "PoweredOff");
    }

    #[test]
    fn killed_between_prepare_and_end_access() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("crash-1");
        let p1 = fx.backup("crash-1");
        s.change_since_backup("crash-1");
        // In place: the agent dies with the disks written and RelocateVM_Task disabled.
        let r = fx.restore_on(
            s,
            "site-a",
            &p1,
            &["--mode", "existing"],
            Some("restore-after-data"),
        );
        assert_ne!(r.code, Some(0));
        assert!(
            !s.lab.disabled_methods(&vm).unwrap().is_empty(),
            "{}",
            r.stderr
        );
        let rec = fx.reconcile();
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        let report = &rec.events.last().unwrap()["report"];
        assert!(
            s.lab.disabled_methods(&vm).unwrap().is_empty(),
            "RelocateVM_Task still disabled"
        );
        assert_eq!(report["access_ended"], json!([vm.0]));
        assert_eq!(report["half_created_vms"][0][0], json!(vm.0), "{report}");
        assert_eq!(fx.open_journal(), 0);

        // A new VM: the shell a crash leaves is ended, reported and removed.
        s.sup().delete("VirtualMachine", NS, "crash-1").unwrap();
        let r = fx.restore_on(s, "site-a", &p1, &[], Some("restore-after-prepare-access"));
        assert_ne!(r.code, Some(0));
        let shell = s.vm_by_name("crash-1").expect("the half-restored VM");
        assert!(!s.lab.disabled_methods(&shell).unwrap().is_empty());
        // The shell goes before EndAccess: WCP registers no VM whose RelocateVM_Task is
        // disabled (§7.3.3), so it never takes the half-restored one for a restore.
        let dir = fx.dir.path().join("pause");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = fx.repo();
        let mut rec = fx.spawn_paused(&["reconcile", "--repo", &repo], "end-access", &dir);
        wait_reached(&mut rec, &dir, "end-access");
        assert!(
            s.vm_by_name("crash-1").is_none(),
            "EndAccess came before the half-restored VM was removed"
        );
        std::fs::write(dir.join("end-access.go"), b"").unwrap();
        let rec = Run::of(&rec.wait_with_output().unwrap());
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        let report = &rec.events.last().unwrap()["report"];
        assert_eq!(report["access_ended"], json!([shell.0]));
        assert_eq!(
            report["half_created_vms"][0][1]["removed"], true,
            "{report}"
        );
        assert!(s.vm_by_name("crash-1").is_none());
        // And the restore then succeeds.
        let r = fx.restore(&p1, &[]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    }

    impl Fixture {
        /// Starts `vadp-agent --json ARGS` against site-a, paused at `pause` (see
        /// `engine::pause_point`) with its marker files in `dir`.
        fn spawn_paused(&self, args: &[&str], pause: &str, dir: &Path) -> std::process::Child {
            let mut all: Vec<String> = vec!["--json".into()];
            all.extend(args.iter().map(|s| (*s).to_owned()));
            all.extend(self.site.connection(self.dir.path(), "site-a"));
            Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
                .args(&all)
                .env("VADP_AGENT_PAUSE_AT", pause)
                .env("VADP_AGENT_PAUSE_DIR", dir)
                .env_remove("VADP_AGENT_PASSWORD")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        }
    }

    /// Waits for `<dir>/<point>.reached`, failing if `child` exits first.
    fn wait_reached(child: &mut std::process::Child, dir: &Path, point: &str) {
        let marker = dir.join(format!("{point}.reached"));
        // Only a guard against a hang: a loaded machine may take long to get there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        while std::time::Instant::now() < deadline {
            if marker.exists() {
                return;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("exited ({status}) before {point}");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{point} not reached in 300 s");
    }

    /// A restore in place writes the VM's disks through VDDK, which its change tracking
    /// need not see (a hot-added disk is written by the proxy VM): the VM's next backup is
    /// full for every disk, saying why, and the one after it is incremental again.
    #[test]
    fn the_backup_after_a_restore_in_place_is_full() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("inplace-1");
        let p1 = fx.backup("inplace-1");
        s.change_since_backup("inplace-1");
        let r = fx.restore(&p1, &["--mode", "existing"]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        let vm_of = |r: &Run| r.report()["vms"][0].clone();
        let after = vm_of(&fx.backup_run(&format!("{NS}/inplace-1"), &[]));
        let disks = after["disks"].as_array().unwrap();
        assert!(!disks.is_empty(), "{after}");
        // The classic disks written in place say why; the PVC's disk, swapped for a new
        // one (a new device key), is a disk of its own.
        assert!(disks.iter().all(|d| d["kind"] == "full"), "{after}");
        let restored = disks
            .iter()
            .filter(|d| d["reason"] == "the VM was restored in place since its last backup")
            .count();
        assert_eq!(restored, 2, "{after}");
        // From that point on, the classic disks are incremental again.
        let next = vm_of(&fx.backup_run(&format!("{NS}/inplace-1"), &[]));
        let incremental = next["disks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"] == "incremental")
            .count();
        assert_eq!(incremental, 2, "{next}");
    }

    /// WCP's registration fails after the restore's data was written and EndAccess called:
    /// the restore keeps the VM (its disks whole), prints its report with what did not
    /// finish, and fails (exit 1), with the job recorded failed.
    #[test]
    fn a_restore_whose_registration_fails_keeps_the_vm_and_reports_it() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("unreg-1");
        let point = fx.backup("unreg-1");
        s.sup().delete("VirtualMachine", NS, "unreg-1").unwrap();
        let settings = SupervisorSettings {
            failing_registrations: vec!["unreg-1".into()],
            ..s.sup().settings()
        };
        s.sup().set_settings(settings).unwrap();
        let r = fx.restore(&point, &[]);
        assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
        let report = r.report();
        let vm = report["vm"].as_str().unwrap();
        let unfinished = &report["unfinished"];
        assert_eq!(unfinished["cancelled"], false, "{report}");
        let why = unfinished["error"].as_str().unwrap();
        assert!(
            why.contains("injected failure")
                && why.contains(&format!("after {vm}'s data was restored"))
                && why.contains("did not complete")
                && why.contains(&format!("kubectl get vm -n {NS} unreg-1")),
            "{why}"
        );
        assert!(!report["disks"].as_array().unwrap().is_empty(), "{report}");
        assert_eq!(s.vm_by_name("unreg-1").map(|m| m.0), Some(vm.to_owned()));
        assert_eq!(fx.open_journal(), 0);
        // The catalog's job says it failed, and why.
        let db = rusqlite::Connection::open(Path::new(&fx.repo()).join("catalog.db")).unwrap();
        let (state, error): (String, String) = db
            .query_row(
                "SELECT state, error FROM jobs WHERE id = ?1",
                [report["job"].as_str().unwrap()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(state, "failed");
        assert!(error.contains("injected failure"), "{error}");
    }

    /// The VM is registered, but the check after registration cannot read it back (here
    /// the account loses its rights on VirtualMachines meanwhile): the restore keeps its
    /// report, the VM stays, and the failed check is a problem (exit 2), not an error that
    /// hides what was done.
    #[test]
    fn a_check_that_cannot_read_the_vm_back_is_a_problem_of_the_report() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("check-1");
        let point = fx.backup("check-1");
        s.sup().delete("VirtualMachine", NS, "check-1").unwrap();
        let dir = fx.dir.path().join("pause-check");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = fx.repo();
        let mut restore = fx.spawn_paused(
            &["restore", "--repo", &repo, "--point", &point],
            "restore-before-verify",
            &dir,
        );
        wait_reached(&mut restore, &dir, "restore-before-verify");
        s.forbid(&["VirtualMachine"]);
        std::fs::write(dir.join("restore-before-verify.go"), b"").unwrap();
        let r = Run::of(&restore.wait_with_output().unwrap());
        s.forbid(&[]);
        assert_eq!(r.code, Some(2), "{}\n{}", r.stdout, r.stderr);
        let report = r.report();
        assert!(report["vm"].is_string(), "{report}");
        let problems = report["verification"]["problems"].as_array().unwrap();
        assert!(
            problems.iter().any(|p| p.as_str().unwrap().starts_with(
                "the VM is registered, but the check after registration could not read it back"
            )),
            "{problems:?}"
        );
        assert!(s.sup().get("VirtualMachine", NS, "check-1").is_some());
        assert!(s.vm_by_name("check-1").is_some());
        assert_eq!(fx.open_journal(), 0);
    }

    #[test]
    fn reconcile_leaves_alone_a_restore_that_finished_while_it_ran() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("race-1");
        let p1 = fx.backup("race-1");
        s.sup().delete("VirtualMachine", NS, "race-1").unwrap();
        assert!(s.vm_by_name("race-1").is_none());
        let (restore_dir, reconcile_dir) = (fx.dir.path().join("p1"), fx.dir.path().join("p2"));
        std::fs::create_dir_all(&restore_dir).unwrap();
        std::fs::create_dir_all(&reconcile_dir).unwrap();
        // A restore to a new VM, paused once the VM is registered (its shell entry open,
        // its job lock held) ...
        let repo = fx.repo();
        let mut restore = fx.spawn_paused(
            &["restore", "--repo", &repo, "--point", &p1],
            "restore-after-register",
            &restore_dir,
        );
        wait_reached(&mut restore, &restore_dir, "restore-after-register");
        // ... a reconcile that reads the journal then ...
        let mut reconcile = fx.spawn_paused(
            &["reconcile", "--repo", &repo],
            "reconcile-after-read",
            &reconcile_dir,
        );
        wait_reached(&mut reconcile, &reconcile_dir, "reconcile-after-read");
        // ... the restore finishes and lets its lock go, and only then does the reconcile
        // take it.
        std::fs::write(restore_dir.join("restore-after-register.go"), b"").unwrap();
        let out = restore.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let restored = s.vm_by_name("race-1").expect("the restored VM");
        std::fs::write(reconcile_dir.join("reconcile-after-read.go"), b"").unwrap();
        let out = reconcile.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            s.vm_by_name("race-1"),
            Some(restored.clone()),
            "the reconcile undid a finished restore: {stdout}"
        );
        assert!(s.lab.disabled_methods(&restored).unwrap().is_empty());
        assert_eq!(fx.open_journal(), 0);
    }

    /// A restore writes its disks within the limits a backup reads them by: one at a
    /// time with `--disks-per-job 1`, each disk started once the one before has finished.
    #[test]
    fn a_restore_writes_no_more_disks_at_once_than_its_limit() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("limited-1");
        let p1 = fx.backup("limited-1");
        s.sup().delete("VirtualMachine", NS, "limited-1").unwrap();
        let r = fx.restore(&p1, &["--disks-per-job", "1"]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        let disk_events: Vec<&str> = r
            .events
            .iter()
            .filter_map(|e| e["event"].as_str())
            .filter(|e| matches!(*e, "disk_started" | "disk_finished"))
            .collect();
        assert!(disk_events.len() >= 4, "{disk_events:?}");
        for pair in disk_events.chunks(2) {
            assert_eq!(pair, ["disk_started", "disk_finished"], "{disk_events:?}");
        }
    }

    /// The EndAccess that ends a restore whose data is all written is tried again when
    /// vCenter fails it: two failures in a row no longer fail the restore (and leave the VM
    /// unregistered), the VM is registered and RelocateVM_Task enabled again.
    #[test]
    fn a_restore_tries_a_failed_end_access_again() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("end-access-1");
        let p1 = fx.backup("end-access-1");
        s.sup()
            .delete("VirtualMachine", NS, "end-access-1")
            .unwrap();
        let dir = fx.dir.path().join("pause");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = fx.repo();
        let mut restore = fx.spawn_paused(
            &["restore", "--repo", &repo, "--point", &p1],
            "end-access",
            &dir,
        );
        wait_reached(&mut restore, &dir, "end-access");
        let restored = s.vm_by_name("end-access-1").expect("the VM being restored");
        s.lab.fail_next_enable_methods(&restored, 2).unwrap();
        std::fs::write(dir.join("end-access.go"), b"").unwrap();
        let out = restore.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert_eq!(s.lab.vm(&restored).unwrap().failing_enable_methods, 0);
        assert!(s.lab.disabled_methods(&restored).unwrap().is_empty());
        assert!(
            s.sup().get("VirtualMachine", NS, "end-access-1").is_some(),
            "the VM was not registered: {stdout}"
        );
        assert_eq!(fx.open_journal(), 0, "{stderr}");
    }

    #[test]
    fn a_cancelled_restore_closes_its_disks_before_it_removes_the_vm() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("cancel-1");
        let p1 = fx.backup("cancel-1");
        s.sup().delete("VirtualMachine", NS, "cancel-1").unwrap();
        let dir = fx.dir.path().join("pause");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = fx.repo();
        // The disks are open for writing and their threads about to write ...
        // (The second point only marks that the signal was seen: its `.go` is there.)
        std::fs::write(dir.join("restore-cancel-requested.go"), b"").unwrap();
        let mut restore = fx.spawn_paused(
            &["restore", "--repo", &repo, "--point", &p1],
            "restore-mid-disk,restore-cancel-requested,end-access",
            &dir,
        );
        wait_reached(&mut restore, &dir, "restore-mid-disk");
        let shell = s.vm_by_name("cancel-1").expect("the VM being restored");
        // ... when SIGTERM comes (`systemctl stop`, a vendor's runner; Ctrl-C's SIGINT is
        // handled alike). Nothing is cleaned up before they stop: the VM cannot be
        // destroyed while its disks are open, and EndAccess must not come first.
        let pid = i32::try_from(restore.id()).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid, no memory involved.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0);
        wait_reached(&mut restore, &dir, "restore-cancel-requested");
        std::fs::write(dir.join("restore-mid-disk.go"), b"").unwrap();
        // The VM goes before EndAccess: WCP registers no VM whose RelocateVM_Task is
        // disabled (§7.3.3), so it never takes the half-restored one for a restore.
        wait_reached(&mut restore, &dir, "end-access");
        assert!(
            s.vm_by_name("cancel-1").is_none(),
            "EndAccess came before the unfinished VM {shell} was removed"
        );
        std::fs::write(dir.join("end-access.go"), b"").unwrap();
        let out = restore.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(!out.status.success(), "{stdout}\n{stderr}");
        assert!(stderr.contains("cancelled"), "{stderr}");
        assert!(
            s.vm_by_name("cancel-1").is_none(),
            "the unfinished VM {shell} stays: {stderr}"
        );
        assert_eq!(fx.open_journal(), 0, "{stderr}");
        // And the next restore of the point succeeds.
        let r = fx.restore(&p1, &[]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    }

    /// One job at a time per VM: a restore in place of a VM a backup is reading is refused
    /// before it changes anything, naming the backup; once the backup has ended it runs.
    #[test]
    fn a_backup_and_a_restore_in_place_of_one_vm_refuse_each_other() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("busy-1");
        let p1 = fx.backup("busy-1");
        s.change_since_backup("busy-1");
        // Something for the next backup to read.
        let disk = s.lab.vm(&vm).unwrap().disks[0].key;
        s.lab.guest_write(&vm, disk, 0, &[7u8; 65536]).unwrap();
        let dir = fx.dir.path().join("pause");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = fx.repo();
        let selector = format!("{NS}/busy-1");
        let mut backup = fx.spawn_paused(
            &["backup", "--repo", &repo, "--vm", &selector],
            "backup-mid-disk",
            &dir,
        );
        wait_reached(&mut backup, &dir, "backup-mid-disk");
        let r = fx.restore(&p1, &["--mode", "existing"]);
        assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("backup job") && r.stderr.contains("is working on it now"),
            "{}",
            r.stderr
        );
        // The refused restore left no job lock file behind: the backup's is the only one.
        let job_locks = std::fs::read_dir(std::path::Path::new(&repo).join("locks"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("job-"))
            .collect::<Vec<_>>();
        assert_eq!(job_locks.len(), 1, "{job_locks:?}");
        std::fs::write(dir.join("backup-mid-disk.go"), b"").unwrap();
        let out = backup.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(fx.open_journal(), 0);
        let r = fx.restore(&p1, &["--mode", "existing"]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        // And a second backup while a restore holds the VM is refused the same way.
        let mut restore = fx.spawn_paused(
            &[
                "restore", "--repo", &repo, "--point", &p1, "--mode", "existing",
            ],
            "restore-mid-disk",
            &dir,
        );
        wait_reached(&mut restore, &dir, "restore-mid-disk");
        let b = fx.json(
            vec![
                "backup".into(),
                "--repo".into(),
                repo.clone(),
                "--vm".into(),
                selector,
            ],
            s,
            "site-a",
            None,
        );
        assert_ne!(b.code, Some(0));
        assert!(
            b.stderr.contains("restore job") && b.stderr.contains("is working on it now"),
            "{}",
            b.stderr
        );
        std::fs::write(dir.join("restore-mid-disk.go"), b"").unwrap();
        let out = restore.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    /// A restore killed with the VM's access prepared does not stand in the way of the next
    /// restore of that VM: the next one undoes what it left first. Each restore prepares
    /// access under its own identity, so ending an old one's never ends a live one's.
    #[test]
    fn a_restore_killed_after_prepare_access_is_cleaned_up_by_the_next() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("again-1");
        let p1 = fx.backup("again-1");
        // Changed since the backup: WCP would restore to the existing VM (§8.2).
        s.change_since_backup("again-1");
        let r = fx.restore_on(
            s,
            "site-a",
            &p1,
            &["--mode", "existing"],
            Some("restore-after-prepare-access"),
        );
        assert_ne!(r.code, Some(0));
        let disabled = s.lab.disabled_methods(&vm).unwrap();
        assert_eq!(disabled.len(), 1, "{disabled:?} {}", r.stderr);
        assert!(
            disabled[0].source.starts_with("vadp-agent restore "),
            "{disabled:?}"
        );
        let r = fx.restore(&p1, &["--mode", "existing"]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains("reconciled interrupted jobs first"),
            "{}",
            r.stdout
        );
        assert!(s.lab.disabled_methods(&vm).unwrap().is_empty());
        assert_eq!(fx.open_journal(), 0);
    }

    /// A restore in place killed around the swap of the PVC's First Class Disk for a new
    /// disk leaves, once reconcile has run, the VM with its FCD attached again at the same
    /// controller and unit, untouched, and no new file: journalled before the swap, undone
    /// (judged from the VM's devices) before EndAccess.
    #[test]
    fn a_restore_in_place_killed_after_the_swap_is_swapped_back() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("swap-1");
        let p1 = fx.backup("swap-1");
        s.change_since_backup("swap-1");
        // Attached independent: the new disk takes that mode, and the swap back keeps it.
        s.lab
            .modify_vm(&vm, |st| {
                st.disks[1].mode = "independent_persistent".into();
                Ok(())
            })
            .unwrap();
        let before = s.lab.vm(&vm).unwrap();
        let fcd = before.disks[1].clone();
        let slot = (fcd.controller_key, fcd.unit_number);
        let fcd_id = s
            .lab
            .fcd_id(&fcd.file_name)
            .expect("the PVC's disk is an FCD");
        let fcd_bytes = s.disk_bytes(&vm, fcd.key);
        // The new disk is made beside the First Class Disk it stands in for.
        let fcd_dir = fcd
            .file_name
            .resolve(s.lab.root())
            .parent()
            .unwrap()
            .to_owned();
        let new_files = || -> Vec<String> {
            std::fs::read_dir(&fcd_dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("restored-"))
                .collect()
        };
        let files = || s.disk_files(&vm);
        let at_slot = || s.disk_at(&vm, slot);
        let all_before = files();

        // Killed with the swap journalled and not yet made: nothing to swap back.
        let r = fx.restore_on(
            s,
            "site-a",
            &p1,
            &["--mode", "existing"],
            Some("restore-swap-journalled"),
        );
        assert_ne!(r.code, Some(0));
        assert_eq!(files(), all_before, "{}", r.stderr);
        assert!(!s.lab.disabled_methods(&vm).unwrap().is_empty());
        let rec = fx.reconcile();
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        let report = &rec.events.last().unwrap()["report"];
        assert_eq!(
            report["half_created_vms"][0][1]["reattached"],
            json!([]),
            "{report}"
        );
        assert_eq!(files(), all_before);
        assert!(s.lab.disabled_methods(&vm).unwrap().is_empty());
        assert_eq!(fx.open_journal(), 0);

        // Killed with the new disk made (and given its uuid) but not swapped in: a file on
        // no VM, which reconcile deletes.
        let r = fx.restore_on(
            s,
            "site-a",
            &p1,
            &["--mode", "existing"],
            Some("restore-swap-created"),
        );
        assert_ne!(r.code, Some(0));
        assert_eq!(files(), all_before, "{}", r.stderr);
        assert_eq!(new_files().len(), 2, "{:?}", new_files()); // descriptor and extent
        let rec = fx.reconcile();
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        assert!(new_files().is_empty(), "{:?}", new_files());
        assert_eq!(files(), all_before);
        assert!(s.lab.disabled_methods(&vm).unwrap().is_empty());
        assert_eq!(fx.open_journal(), 0);

        // Killed after the swap: the new disk sits at the FCD's controller and unit, the
        // FCD is detached (still an FCD, its file untouched).
        let r = fx.restore_on(
            s,
            "site-a",
            &p1,
            &["--mode", "existing"],
            Some("restore-after-swap"),
        );
        assert_ne!(r.code, Some(0));
        let there = at_slot();
        assert!(
            there.file_name.to_string().contains("/restored-"),
            "{} {}",
            there.file_name,
            r.stderr
        );
        assert_eq!(there.mode, "independent_persistent");
        assert!(!files().contains(&fcd.file_name.to_string()));
        assert_eq!(s.lab.fcd_id(&fcd.file_name), Some(fcd_id.clone()));
        assert!(
            new_files()
                .iter()
                .any(|n| n.starts_with(&format!("restored-{}-", &p1[..8]))),
            "{:?}",
            new_files()
        );
        assert!(!s.lab.disabled_methods(&vm).unwrap().is_empty());
        let rec = fx.reconcile();
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        let report = &rec.events.last().unwrap()["report"];
        assert_eq!(
            report["half_created_vms"][0][1]["reattached"],
            json!([fcd.file_name.to_string()]),
            "{report}"
        );
        // The FCD is back where it was, untouched; the new file is gone; access ended.
        let back = at_slot();
        assert_eq!(back.file_name, fcd.file_name);
        assert_eq!(back.mode, "independent_persistent");
        assert_eq!(s.disk_bytes(&vm, back.key), fcd_bytes);
        assert_eq!(
            s.lab.vm_disk_fcd_id(&s.lab.vm(&vm).unwrap(), back.key),
            Some(fcd_id)
        );
        assert!(new_files().is_empty(), "{:?}", new_files());
        assert_eq!(files().len(), all_before.len());
        assert!(s.lab.disabled_methods(&vm).unwrap().is_empty());
        assert_eq!(fx.open_journal(), 0);
        // A second reconcile finds nothing left to do.
        let rec = fx.reconcile();
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        assert_eq!(at_slot().file_name, fcd.file_name);

        // And the restore, run again, goes through.
        let r = fx.restore(&p1, &["--mode", "existing"]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        assert_eq!(
            r.report()["verification"]["problems"],
            json!([]),
            "{}",
            r.report()
        );
        assert!(!fcd.file_name.resolve(s.lab.root()).exists());
        assert!(
            s.sup()
                .get("PersistentVolumeClaim", NS, "swap-1-data")
                .is_none()
        );
    }

    /// Killed once every disk is written and the backup's ExtraConfig is on the VM, before
    /// the journal says so: reconcile goes forward, not back. The new disks hold the restored
    /// data and stay (swapping back would leave the backup's ExtraConfig over the unrestored
    /// FCDs); access ends.
    #[test]
    fn a_restore_in_place_killed_after_its_extra_config_is_set_is_kept() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("commit-1");
        let p1 = fx.backup("commit-1");
        let restored = fx.point_disks(&p1);
        s.change_since_backup("commit-1");
        let before = s.lab.vm(&vm).unwrap();
        let fcd = before.disks[1].clone();
        let slot = (fcd.controller_key, fcd.unit_number);
        let at_slot = || s.disk_at(&vm, slot);
        let r = fx.restore_on(
            s,
            "site-a",
            &p1,
            &["--mode", "existing"],
            Some("restore-after-extra-config"),
        );
        assert_ne!(r.code, Some(0));
        assert!(!s.lab.disabled_methods(&vm).unwrap().is_empty());
        let rec = fx.reconcile();
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        let there = at_slot();
        assert!(
            there.file_name.to_string().contains("/restored-"),
            "{} {}",
            there.file_name,
            rec.stderr
        );
        let want = &restored.iter().find(|(k, _)| *k == fcd.key.0).unwrap().1;
        assert_eq!(&s.disk_bytes(&vm, there.key), want);
        assert!(
            !s.lab
                .vm(&vm)
                .unwrap()
                .disks
                .iter()
                .any(|d| d.file_name == fcd.file_name)
        );
        assert!(s.lab.disabled_methods(&vm).unwrap().is_empty());
        assert_eq!(fx.open_journal(), 0);
    }

    /// A VM of the restored VM's name in the staging folder that is not this restore's (left
    /// there by hand, or by another agent's restore): vCenter refuses the registration
    /// (DuplicateName), and the failed restore deletes its own files and directory and
    /// leaves that VM alone, rather than take it, by its name and file name, for one its
    /// registration made.
    #[test]
    fn a_vm_of_the_name_in_the_staging_folder_is_left_alone() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("twin-1");
        let p1 = fx.backup("twin-1");
        s.sup().delete("VirtualMachine", NS, "twin-1").unwrap();
        // A first restore makes the staging folder.
        let r = fx.restore(&p1, &[]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        s.sup().delete("VirtualMachine", NS, "twin-1").unwrap();
        let other = s
            .lab
            .create_vm(
                "twin-1",
                &format!("/dc1/vm/{}", vadp_agent::engine::restore::STAGING_FOLDER),
                &[lab::vmstate::NewDisk {
                    capacity_bytes: MIB,
                    thin: true,
                    fcd: false,
                }],
            )
            .unwrap();
        // The first restore's directory keeps its PVC's disk, a First Class Disk now.
        let dirs = || -> Vec<String> {
            std::fs::read_dir(s.root.join("datastores/ds1"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("twin-1-restore-"))
                .collect()
        };
        let before = dirs();
        let r = fx.restore(&p1, &[]);
        assert_ne!(r.code, Some(0));
        assert!(r.stderr.contains("DuplicateName"), "{}", r.stderr);
        let state = s.lab.vm(&other).expect("the other VM stays");
        assert!(state.vmx_path.resolve(&s.root).exists());
        assert_eq!(dirs(), before);
        assert_eq!(fx.open_journal(), 0);
    }

    /// Two restores to a new VM of one name at once: the second stops before it makes
    /// anything, naming the first's job (both would register the name in the staging
    /// folder); the first finishes.
    #[test]
    fn two_restores_of_one_name_do_not_run_at_once() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("pair-1");
        let p1 = fx.backup("pair-1");
        s.sup().delete("VirtualMachine", NS, "pair-1").unwrap();
        let dir = fx.dir.path().join("pause-pair");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = fx.repo();
        let mut first = fx.spawn_paused(
            &["restore", "--repo", &repo, "--point", &p1],
            "restore-after-register",
            &dir,
        );
        wait_reached(&mut first, &dir, "restore-after-register");
        let r = fx.restore(&p1, &[]);
        assert_ne!(r.code, Some(0));
        assert!(
            r.stderr
                .contains("VM name pair-1 (restores to a new VM of one name take turns")
                && r.stderr.contains("restore to a new VM job"),
            "{}",
            r.stderr
        );
        let dirs: Vec<String> = std::fs::read_dir(s.root.join("datastores/ds1"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("pair-1-restore-"))
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        std::fs::write(dir.join("restore-after-register.go"), b"").unwrap();
        let out = first.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(s.vm_by_name("pair-1").is_some());
        assert_eq!(fx.open_journal(), 0);
    }

    /// `--datastore`: a new VM's files all go to the datastore asked for, into a directory
    /// of the restore's own. One the datacenter does not have, or without the room for the
    /// disks' data, is refused before anything changes; so is `--datastore` for a restore
    /// in place, which writes into the disks the VM has.
    #[test]
    fn a_new_vm_goes_to_the_datastore_asked_for() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("moved-1");
        let p1 = fx.backup("moved-1");
        let expected = fx.point_disks(&p1);
        s.sup().delete("VirtualMachine", NS, "moved-1").unwrap();
        let ds_dirs = |ds: &str| -> Vec<String> {
            std::fs::read_dir(s.root.join("datastores").join(ds))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("moved-1-restore-"))
                .collect()
        };

        let r = fx.restore(&p1, &["--datastore", "ds9"]);
        assert_ne!(r.code, Some(0));
        assert_eq!(
            refusal_ids(&r),
            ["vadp-agent:NoSuchDatastore"],
            "{}",
            r.stdout
        );
        assert!(
            r.stderr
                .contains("datastore ds9 is not in this datacenter (it has [\"ds1\", \"ds2\"])"),
            "{}",
            r.stderr
        );

        // Without --datastore, the backup's own: here not accessible.
        s.lab
            .update_settings(|st| {
                st.datastores_inaccessible.insert("ds1".into());
            })
            .unwrap();
        let r = fx.restore(&p1, &[]);
        assert_ne!(r.code, Some(0));
        assert_eq!(
            refusal_ids(&r),
            ["vadp-agent:DatastoreInaccessible"],
            "{}",
            r.stdout
        );
        s.lab
            .update_settings(|st| st.datastores_inaccessible.clear())
            .unwrap();

        // A vVol datastore: no directory of the restore's own can be made there.
        s.lab
            .update_settings(|st| {
                st.datastore_types.insert("ds2".into(), "VVOL".into());
            })
            .unwrap();
        let r = fx.restore(&p1, &["--datastore", "ds2"]);
        assert_ne!(r.code, Some(0));
        assert_eq!(
            refusal_ids(&r),
            ["vadp-agent:UnsupportedDatastore"],
            "{}",
            r.stdout
        );
        s.lab
            .update_settings(|st| st.datastore_types.clear())
            .unwrap();

        // ds2 reports 1 MiB free: less than the disks' data.
        s.lab
            .update_settings(|st| {
                st.datastore_free_bytes.insert("ds2".into(), 1 << 20);
            })
            .unwrap();
        let r = fx.restore(&p1, &["--datastore", "ds2"]);
        assert_ne!(r.code, Some(0));
        assert_eq!(
            refusal_ids(&r),
            ["vadp-agent:NotEnoughSpace"],
            "{}",
            r.stdout
        );
        assert!(
            r.stderr.contains("datastore ds2 has 0.0 GiB free"),
            "{}",
            r.stderr
        );
        assert!(ds_dirs("ds1").is_empty() && ds_dirs("ds2").is_empty());
        assert!(s.vm_by_name("moved-1").is_none());
        s.lab
            .update_settings(|st| st.datastore_free_bytes.clear())
            .unwrap();

        let r = fx.restore(&p1, &["--datastore", "ds2"]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        assert_eq!(r.report()["verification"]["problems"], json!([]));
        assert!(ds_dirs("ds1").is_empty(), "{:?}", ds_dirs("ds1"));
        let [dir] = ds_dirs("ds2").try_into().unwrap();
        let restored = VmMoref(r.report()["vm"].as_str().unwrap().to_owned());
        let state = s.lab.vm(&restored).unwrap();
        assert_eq!(
            state.vmx_path.to_string(),
            format!("[ds2] {dir}/moved-1.vmx")
        );
        for d in &state.disks {
            assert!(
                d.file_name
                    .to_string()
                    .starts_with(&format!("[ds2] {dir}/")),
                "{}",
                d.file_name
            );
        }
        for (k, bytes) in &expected {
            assert_eq!(&s.disk_bytes(&restored, DiskKey(*k)), bytes, "disk {k}");
        }

        // In place, the VM's own disks are written: no datastore to choose. Asked for
        // together, refused before the pre-flight; predicted, refused by it.
        s.change_since_backup("moved-1");
        let r = fx.restore(&p1, &["--mode", "existing", "--datastore", "ds1"]);
        assert_eq!(r.code, Some(1));
        assert!(
            r.stderr
                .contains("--datastore: ds1 places a new VM's files"),
            "{}",
            r.stderr
        );
        let r = fx.restore(&p1, &["--datastore", "ds1"]);
        assert_ne!(r.code, Some(0));
        assert_eq!(
            refusal_ids(&r),
            ["vadp-agent:DatastoreForNewOnly"],
            "{}",
            r.stdout
        );
    }

    /// A disk in a folder of its own (a classic disk outside the VM's directory) goes with
    /// the VM when it is deleted, and is restored into the restore's directory with the
    /// others; the restored VM's .vmx names it there. (A disk on another datastore than
    /// the .vmx's is named by its /vmfs/volumes path: `plan`'s unit tests.)
    #[test]
    fn a_disk_outside_the_vms_directory_is_restored_with_the_others() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("far-1");
        let far = lab::datastore::DatastorePath::parse("[ds1] elsewhere/far-1-data.vmdk").unwrap();
        std::fs::create_dir_all(far.resolve(&s.root).parent().unwrap()).unwrap();
        s.lab.create_virtual_disk(&far, 2 * MIB, true).unwrap();
        let key = s.lab.attach_disk(&vm, &far).unwrap();
        s.lab.guest_write(&vm, key, 4096, &[0x5a; 65_536]).unwrap();
        let p1 = fx.backup("far-1");
        let expected = fx.point_disks(&p1);
        assert_eq!(expected.len(), 4);
        // Destroy deletes every disk of the VM but its First Class Disks, this one too, as
        // ESXi does.
        s.sup().delete("VirtualMachine", NS, "far-1").unwrap();
        assert!(!far.resolve(&s.root).exists());
        let r = fx.restore(&p1, &[]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        let restored = VmMoref(r.report()["vm"].as_str().unwrap().to_owned());
        let state = s.lab.vm(&restored).unwrap();
        let dir = state.vmx_path.to_string();
        let dir = dir.rsplit_once('/').unwrap().0;
        assert!(dir.starts_with("[ds1] far-1-restore-"), "{dir}");
        assert!(
            state
                .disks
                .iter()
                .any(|d| d.file_name.to_string() == format!("{dir}/far-1-data.vmdk")),
            "{:?}",
            state.disks
        );
        assert!(!far.resolve(&s.root).exists());
        let vmx = std::fs::read_to_string(state.vmx_path.resolve(&s.root)).unwrap();
        assert!(vmx.contains(" = \"far-1-data.vmdk\""), "{vmx}");
        for (k, bytes) in &expected {
            assert_eq!(&s.disk_bytes(&restored, DiskKey(*k)), bytes, "disk {k}");
        }
    }

    /// The VM changed between the restore's plan and its lock (here a disk attached): the
    /// restore is refused before it changes anything, and leaves no lock file.
    #[test]
    fn a_vm_changed_after_the_plan_is_not_restored_in_place() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("moved-on-1");
        let p1 = fx.backup("moved-on-1");
        s.change_since_backup("moved-on-1");
        let dir = fx.dir.path().join("pause-planned");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = fx.repo();
        let mut restore = fx.spawn_paused(
            &[
                "restore", "--repo", &repo, "--point", &p1, "--mode", "existing",
            ],
            "restore-planned",
            &dir,
        );
        wait_reached(&mut restore, &dir, "restore-planned");
        let extra = lab::datastore::DatastorePath::parse("[ds1] moved-on-1/extra.vmdk").unwrap();
        s.lab.create_virtual_disk(&extra, 2 * MIB, true).unwrap();
        s.lab.attach_disk(&vm, &extra).unwrap();
        let files = s.lab.vm(&vm).unwrap().disks.len();
        std::fs::write(dir.join("restore-planned.go"), b"").unwrap();
        let out = restore.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("changed while this restore was being planned"),
            "{stderr}"
        );
        assert_eq!(s.lab.vm(&vm).unwrap().disks.len(), files);
        assert!(s.lab.disabled_methods(&vm).unwrap().is_empty());
        assert_eq!(fx.open_journal(), 0);
        let job_locks = std::fs::read_dir(std::path::Path::new(&repo).join("locks"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("job-"))
            .count();
        assert_eq!(job_locks, 0);
    }

    /// A vCenter that gives a disk a ReconfigVM_Task creates a uuid of its own choosing: the
    /// swap's new disk still carries the backed-up uuid (it is made unattached and given
    /// it before the swap), so WCP finds it in the backup's pvc-disk-data and registers it
    /// behind a new claim. (When the swap created the disk in its ReconfigVM_Task and set
    /// the uuid afterwards, the VM kept showing vCenter's, and registration failed.)
    #[test]
    fn a_vcenter_choosing_created_disks_uuids_does_not_change_the_swapped_disks() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("own-uuid-1");
        let p1 = fx.backup("own-uuid-1");
        s.change_since_backup("own-uuid-1");
        let fcd = s.lab.vm(&vm).unwrap().disks[1].clone();
        s.lab
            .modify_vm(&vm, |st| {
                st.created_disks_get_their_own_uuid = true;
                Ok(())
            })
            .unwrap();
        let r = fx.restore(&p1, &["--mode", "existing"]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        assert_eq!(
            r.report()["verification"]["problems"],
            json!([]),
            "{}",
            r.report()
        );
        let now = s.disk_at(&vm, (fcd.controller_key, fcd.unit_number));
        assert_ne!(now.file_name, fcd.file_name);
        assert_eq!(now.uuid, fcd.uuid);
    }

    /// A restore to a new VM of a deleted VM: the VM's directory went with it, and its PVC's
    /// disk, a First Class Disk, stays at its path (CNS keeps a volume its PVC still
    /// names). The restore makes directories of its own (`<vm>-restore-<job>`) rather than
    /// write at the backup's paths, which vSphere refuses (no directory; the PVC's file
    /// there). Killed before its VM is registered, it leaves files and directories no VM
    /// owns; reconcile deletes them (the journal names each before it is made), also a
    /// directory made just before the kill. Killed after registering but before the journal
    /// has the VM's moref, the VM is found in the staging folder by its .vmx and destroyed
    /// with its files, its directories after it.
    #[test]
    fn a_restore_to_new_killed_before_its_vm_is_known_leaves_no_file() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("gone-1");
        let state = s.lab.vm(&vm).unwrap();
        let p1 = fx.backup("gone-1");
        s.sup().delete("VirtualMachine", NS, "gone-1").unwrap();
        assert!(s.vm_by_name("gone-1").is_none());
        let ds_root = lab::datastore::DatastorePath::parse("[ds1] x")
            .unwrap()
            .resolve(s.lab.root())
            .parent()
            .unwrap()
            .to_owned();
        // The VM's directory is gone; its PVC's disk is not.
        assert!(
            !state
                .vmx_path
                .resolve(s.lab.root())
                .parent()
                .unwrap()
                .exists()
        );
        let pvc_disk = &state.disks[1].file_name;
        assert!(pvc_disk.to_string().contains("fcd/"), "{pvc_disk}");
        assert!(pvc_disk.resolve(s.lab.root()).exists());
        let restore_dirs = || -> Vec<String> {
            std::fs::read_dir(&ds_root)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("gone-1-restore-"))
                .collect()
        };
        let files_there = || -> Vec<String> {
            restore_dirs()
                .iter()
                .flat_map(|d| std::fs::read_dir(ds_root.join(d)).unwrap().flatten())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        };
        assert!(restore_dirs().is_empty(), "{:?}", restore_dirs());

        // Every disk made, the .vmx about to be uploaded.
        let r = fx.restore_on(s, "site-a", &p1, &[], Some("restore-vmx-journalled"));
        assert_ne!(r.code, Some(0));
        assert_eq!(restore_dirs().len(), 1, "{:?}", restore_dirs());
        assert_eq!(
            files_there()
                .iter()
                .filter(|f| f.ends_with(".vmdk") && !f.contains("-flat"))
                .count(),
            fx.point_disks(&p1).len(),
            "{:?} {}",
            files_there(),
            r.stderr
        );
        let rec = fx.reconcile();
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        let report = &rec.events.last().unwrap()["report"];
        let entry = &report["half_created_vms"][0][1];
        // Each disk, then the directory.
        assert!(
            entry["deleted"]
                .as_array()
                .is_some_and(|d| d.len() == fx.point_disks(&p1).len() + 1),
            "{report}"
        );
        assert!(restore_dirs().is_empty(), "{:?}", restore_dirs());
        assert_eq!(fx.open_journal(), 0);

        // Killed again, its job looking alive (the test holds its lock), so its entry
        // cannot be reconciled: another restore of the VM is refused before it makes
        // anything (both would register a VM of one name in the staging folder).
        let r = fx.restore_on(s, "site-a", &p1, &[], Some("restore-vmx-journalled"));
        assert_ne!(r.code, Some(0));
        let repo = vadp_agent::repo::Repository::open(Path::new(&fx.repo())).unwrap();
        let job: vadp_agent::ids::JobId = repo.catalog().journal_open_entries().unwrap()[0].detail
            ["job"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        drop(repo);
        let held = vadp_agent::engine::JobLock::acquire(Path::new(&fx.repo()), job).unwrap();
        let r = fx.restore(&p1, &[]);
        assert_ne!(r.code, Some(0));
        assert!(
            r.stderr.contains("another restore of a VM named gone-1")
                && r.stderr.contains(&job.to_string()),
            "{}",
            r.stderr
        );
        assert_eq!(restore_dirs().len(), 1, "{:?}", restore_dirs());
        drop(held);
        let rec = fx.reconcile();
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        assert!(restore_dirs().is_empty(), "{:?}", restore_dirs());
        assert_eq!(fx.open_journal(), 0);

        // Killed with its directory made and not yet journalled as made: the directory
        // carries the job's id, so it is the restore's and goes.
        let r = fx.restore_on(s, "site-a", &p1, &[], Some("restore-dir-made"));
        assert_ne!(r.code, Some(0));
        assert_eq!(restore_dirs().len(), 1, "{:?}", restore_dirs());
        let rec = fx.reconcile();
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        assert!(restore_dirs().is_empty(), "{:?}", restore_dirs());
        assert_eq!(fx.open_journal(), 0);

        // Registered, the journal not yet told.
        let r = fx.restore_on(s, "site-a", &p1, &[], Some("restore-registered"));
        assert_ne!(r.code, Some(0));
        assert!(s.vm_by_name("gone-1").is_some());
        let rec = fx.reconcile();
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        assert!(s.vm_by_name("gone-1").is_none());
        assert!(restore_dirs().is_empty(), "{:?}", restore_dirs());
        assert_eq!(fx.open_journal(), 0);

        // Killed once its data is all written and the entry says so, before EndAccess:
        // reconcile ends the access and keeps the VM, complete, for WCP (or the user) to
        // register, rather than destroy it as half-restored.
        let r = fx.restore_on(s, "site-a", &p1, &[], Some("restore-complete-journalled"));
        assert_ne!(r.code, Some(0));
        let kept = s.vm_by_name("gone-1").expect("the VM exists");
        assert!(!s.lab.disabled_methods(&kept).unwrap().is_empty());
        let rec = fx.reconcile();
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        let report = &rec.events.last().unwrap()["report"];
        assert_eq!(report["half_created_vms"][0][1]["kept"], true, "{report}");
        assert_eq!(s.vm_by_name("gone-1"), Some(kept.clone()));
        assert!(s.lab.disabled_methods(&kept).unwrap().is_empty());
        assert_eq!(restore_dirs().len(), 1, "{:?}", restore_dirs());
        for (k, bytes) in &fx.point_disks(&p1) {
            assert_eq!(&s.disk_bytes(&kept, DiskKey(*k)), bytes, "disk {k}");
        }
        assert_eq!(fx.open_journal(), 0);
        s.lab.destroy_vm(&kept).unwrap();

        // Nothing in the way of the restore itself, nor of a second one (another job,
        // another directory), once the first VM is deleted again. The PVC's old disk is
        // never touched.
        let r = fx.restore(&p1, &[]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        assert_eq!(restore_dirs().len(), 1, "{:?}", restore_dirs());
        let restored = s.vm_by_name("gone-1").unwrap();
        let dir = &restore_dirs()[0];
        for d in &s.lab.vm(&restored).unwrap().disks {
            assert!(
                d.file_name
                    .to_string()
                    .starts_with(&format!("[ds1] {dir}/")),
                "{}",
                d.file_name
            );
        }
        s.sup().delete("VirtualMachine", NS, "gone-1").unwrap();
        let r = fx.restore(&p1, &[]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        assert!(pvc_disk.resolve(s.lab.root()).exists());
    }

    /// A restore in place killed with its new disk made but not swapped in, whose VM is
    /// then removed from the inventory: reconcile has no VM to swap back onto, and deletes
    /// the new disk, which no VM owns, leaving the First Class Disk where it is.
    #[test]
    fn a_new_disk_never_swapped_in_goes_when_its_vm_is_gone() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("orphan-1");
        let p1 = fx.backup("orphan-1");
        s.change_since_backup("orphan-1");
        let state = s.lab.vm(&vm).unwrap();
        let fcd = state.disks[1].file_name.clone();
        // The new disk is made beside the First Class Disk it stands in for.
        let dir = fcd.resolve(s.lab.root()).parent().unwrap().to_owned();
        let new_files = || -> Vec<String> {
            std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("restored-"))
                .collect()
        };
        let r = fx.restore_on(
            s,
            "site-a",
            &p1,
            &["--mode", "existing"],
            Some("restore-swap-created"),
        );
        assert_ne!(r.code, Some(0));
        assert!(!new_files().is_empty(), "{}", r.stderr);
        s.lab.unregister_vm(&vm).unwrap();
        let rec = fx.reconcile();
        assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
        assert!(new_files().is_empty(), "{:?}", new_files());
        assert!(fcd.resolve(s.lab.root()).exists());
        assert_eq!(fx.open_journal(), 0);
    }

    /// After registration the namespace is checked as well as the VirtualMachine: a
    /// bootstrap Secret of the backup that is not there (§6.1 step 3), and a claim of the
    /// replaced VM that no VM uses but that still exists (§6.2 step 7), are each reported.
    #[test]
    fn the_check_after_registration_names_a_missing_secret_and_a_dangling_claim() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("checked-1");
        let p1 = fx.backup("checked-1");
        s.change_since_backup("checked-1");
        let old = s
            .sup()
            .get("PersistentVolumeClaim", NS, "checked-1-data")
            .unwrap();
        let dir = fx.dir.path().join("pause-verify");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = fx.repo();
        let mut restore = fx.spawn_paused(
            &[
                "restore", "--repo", &repo, "--point", &p1, "--mode", "existing",
            ],
            "restore-before-verify",
            &dir,
        );
        wait_reached(&mut restore, &dir, "restore-before-verify");
        // Registration deleted the old claim and recreated the Secret; undo both.
        assert!(
            s.sup()
                .get("PersistentVolumeClaim", NS, "checked-1-data")
                .is_none()
        );
        let mut old = old;
        old["metadata"]
            .as_object_mut()
            .unwrap()
            .retain(|k, _| ["name", "namespace", "labels"].contains(&k.as_str()));
        s.sup().apply(old).unwrap();
        s.sup()
            .delete("Secret", NS, "checked-1-cloud-init")
            .unwrap();
        std::fs::write(dir.join("restore-before-verify.go"), b"").unwrap();
        let out = restore.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
        let report: Value = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["event"] == "report")
            .unwrap();
        let problems: Vec<&str> = report["report"]["verification"]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("bootstrap Secret checked-1-cloud-init")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("PVC checked-1-data of the replaced VirtualMachine")),
            "{problems:?}"
        );
    }

    /// A VM with a snapshot is not restored in place: its disks' files are the snapshot's
    /// deltas. Once the snapshot is gone, it is.
    #[test]
    fn a_vm_with_a_snapshot_is_not_restored_in_place() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("snapped-1");
        let p1 = fx.backup("snapped-1");
        s.change_since_backup("snapped-1");
        let snap = s.lab.create_snapshot(&vm, "before-upgrade", "").unwrap();
        let r = fx.restore(&p1, &["--mode", "existing"]);
        assert_ne!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        assert!(
            refusal_ids(&r)
                .iter()
                .any(|i| i == "vadp-agent:HasSnapshots"),
            "{:?}",
            refusal_ids(&r)
        );
        assert!(r.stderr.contains("before-upgrade"), "{}", r.stderr);
        assert_eq!(fx.open_journal(), 0);
        s.lab.remove_snapshot(&vm, &snap).unwrap();
        let r = fx.restore(&p1, &["--mode", "existing"]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    }

    /// A VM off in vSphere whose VirtualMachine still asks for PoweredOn is not restored in
    /// place: VM Operator would power it on (here it is paused, so it has not yet).
    #[test]
    fn a_vm_its_virtual_machine_wants_powered_on_is_not_restored_in_place() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("wants-on-1");
        let p1 = fx.backup("wants-on-1");
        s.change_since_backup("wants-on-1");
        let mut cr = s.sup().get("VirtualMachine", NS, "wants-on-1").unwrap();
        cr["metadata"]["annotations"]["vmoperator.vmware.com/pause"] = json!("true");
        cr["spec"]["powerState"] = json!("PoweredOn");
        s.sup().apply(cr).unwrap();
        assert_eq!(
            s.lab.vm(&vm).unwrap().power_state,
            lab::vmstate::PowerState::PoweredOff
        );
        let r = fx.restore(&p1, &["--mode", "existing"]);
        assert_refused(&r, "vadp-agent:PoweredOn");
        assert!(
            r.stderr.contains("kubectl patch vm wants-on-1"),
            "{}",
            r.stderr
        );
        assert_eq!(fx.open_journal(), 0);
    }

    /// A disk-only restore into a running VM is refused before anything changes: the guest
    /// would see a blank disk appear, and the running VM holds the disk VDDK must write.
    #[test]
    fn a_running_vm_gets_no_disk_only_restore() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("on-1");
        let p1 = fx.backup("on-1");
        let mut cr = s.sup().get("VirtualMachine", NS, "on-1").unwrap();
        cr["spec"]["powerState"] = json!("PoweredOn");
        s.sup().apply(cr).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while s.lab.vm(&vm).unwrap().power_state != lab::vmstate::PowerState::PoweredOn {
            assert!(std::time::Instant::now() < deadline, "never powered on");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let disks_before = s.lab.vm(&vm).unwrap().disks.len();
        let disk = s.lab.vm(&vm).unwrap().disks[1].key;
        let r = fx.restore(&p1, &["--mode", "disk-only", "--disk", &disk.0.to_string()]);
        assert_refused(&r, "vadp-agent:PoweredOn");
        assert!(r.stderr.contains("kubectl patch vm on-1"), "{}", r.stderr);
        assert_eq!(s.lab.vm(&vm).unwrap().disks.len(), disks_before);
        assert_eq!(fx.open_journal(), 0);
    }

    /// A new VM whose name another VM in the namespace's folder has is refused before
    /// anything is written (vCenter keeps one VM of a name in a folder).
    #[test]
    fn a_new_vm_whose_name_is_taken_in_the_folder_is_refused_up_front() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("taken-1");
        let p1 = fx.backup("taken-1");
        s.sup().delete("VirtualMachine", NS, "taken-1").unwrap();
        let other = s.plain_vm_in_namespace("taken-1", 1);
        let r = fx.restore(&p1, &[]);
        assert_refused(&r, "vadp-agent:NameTaken");
        assert!(r.stderr.contains(&other.0), "{}", r.stderr);
        assert_eq!(fx.open_journal(), 0);
        let named = s
            .lab
            .vms()
            .unwrap()
            .into_iter()
            .filter(|v| v.name == "taken-1")
            .count();
        assert_eq!(named, 1, "no second VM of that name was made");
    }

    /// A new VM goes into the namespace's resource pool, the one its
    /// `vmware-system-resource-pool` annotation names; when that pool is gone the restore
    /// is refused before anything changes, rather than registering the VM into another
    /// pool (the cluster's root, outside the namespace's limits).
    #[test]
    fn a_new_vm_without_its_namespace_pool_is_refused_up_front() {
        let fx = Fixture::new();
        let s = &fx.site;
        s.create_vm("pool-1");
        let p1 = fx.backup("pool-1");
        s.sup().delete("VirtualMachine", NS, "pool-1").unwrap();
        let mut ns = s.sup().get("Namespace", "", NS).unwrap();
        let pool = ns["metadata"]["annotations"]["vmware-system-resource-pool"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_ne!(pool, "resgroup-9", "the namespace has a pool of its own");
        ns["metadata"]["annotations"]["vmware-system-resource-pool"] = json!("resgroup-999");
        s.sup().apply(ns.clone()).unwrap();
        let vms_before = s.lab.vms().unwrap().len();
        let r = fx.restore(&p1, &[]);
        assert_refused(&r, "vadp-agent:NoNamespacePool");
        assert!(
            serde_json::to_string(&r.events)
                .unwrap()
                .contains("resgroup-999"),
            "the refusal names the pool: {:?}",
            r.events
        );
        assert_eq!(s.lab.vms().unwrap().len(), vms_before);
        assert_eq!(fx.open_journal(), 0);
        // With the annotation right again, the same restore goes through.
        ns["metadata"]["annotations"]["vmware-system-resource-pool"] = json!(pool);
        s.sup().apply(ns).unwrap();
        let r = fx.restore(&p1, &[]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    }

    /// The NVRAM file (EFI variables, Secure Boot keys, a vTPM's state) is kept with the
    /// point and put back next to the new VM's `.vmx`, byte for byte.
    #[test]
    fn a_new_vm_gets_its_nvram_back() {
        let fx = Fixture::new();
        let s = &fx.site;
        let vm = s.create_vm("efi-1");
        let vmx = s.lab.vm(&vm).unwrap().vmx_path.resolve(s.lab.root());
        let nvram_of = |vmx: &Path| vmx.with_extension("nvram");
        let nvram: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(nvram_of(&vmx), &nvram).unwrap();
        let p1 = fx.backup("efi-1");
        let (repo, _) = fx.open_point(&p1);
        let kept = repo.point_config(p1.parse().unwrap()).unwrap().unwrap();
        assert_eq!(kept.nvram.as_deref(), Some(nvram.as_slice()));
        drop(repo);
        s.sup().delete("VirtualMachine", NS, "efi-1").unwrap();
        let r = fx.restore(&p1, &[]);
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        let restored = VmMoref(r.report()["vm"].as_str().unwrap().to_owned());
        let vmx = s.lab.vm(&restored).unwrap().vmx_path.resolve(s.lab.root());
        assert_eq!(std::fs::read(nvram_of(&vmx)).unwrap(), nvram);
    }
}
