//! `vadp-agent serve` end to end: the real binary with its HTTP API, driven through the
//! typed plugin-api client, backing up a VM of the lab's vCenter (in this test process)
//! through vddk-sim, following the job's server-sent events to the end.

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test data
mod tests {
    use std::io::{BufRead as _, BufReader};
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    use lab::Lab;
    use lab::vcenter::InProcessVcenter;
    use lab::vmstate::NewDisk;
    use plugin_api::client::{Client, JobEvent, Token};
    use plugin_api::types::{BackupJobRequest, JobState, RestoreJobRequest, VmSpec};
    use vadp_tests::{SimVariant, vddk_sim_libdir};

    const MIB: u64 = 1 << 20;
    const TOKEN: &str = "test-token-0123456789";

    struct Daemon(Child);

    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn write_secret(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, format!("{text}\n")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn agent(args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vadp-agent"));
        cmd.args(args).env_remove("VADP_AGENT_PASSWORD");
        cmd
    }

    /// Starts `serve` and returns it with its base URL (read from its stdout).
    fn serve(config: &Path) -> (Daemon, String) {
        let mut child = agent(&["serve", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let daemon = Daemon(child);
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("serve exited before listening")
                .unwrap();
            if let Some(url) = line.strip_prefix("listening on http://") {
                break format!("http://{url}");
            }
        };
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        (daemon, base)
    }

    #[test]
    fn backup_through_the_api_with_events_auth_and_openapi() {
        let dir = tempfile::tempdir().unwrap();
        let lab_root = dir.path().join("lab");
        Lab::create(&lab_root).unwrap();
        let vcenter = InProcessVcenter::start(&lab_root, false).unwrap();
        let lab = Lab::open(&lab_root).unwrap();
        let vm = lab
            .create_vm(
                "api-1",
                "/dc1/vm",
                &[NewDisk {
                    capacity_bytes: 8 * MIB,
                    thin: true,
                }],
            )
            .unwrap();
        let disk = lab.vm(&vm).unwrap().disks[0].key;
        lab.guest_write(&vm, disk, MIB, &[0x5a; 2 << 20]).unwrap();
        std::fs::write(
            dir.path().join("vddk.conf"),
            format!("vadp.lab.root = \"{}\"\n", lab_root.display()),
        )
        .unwrap();
        let r = vcenter.running();
        write_secret(&dir.path().join("password"), &r.password, 0o600);
        write_secret(&dir.path().join("token"), TOKEN, 0o600);
        let repo = dir.path().join("repo");
        assert!(
            agent(&["repo", "init", "--path"])
                .arg(&repo)
                .status()
                .unwrap()
                .success()
        );
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[vcenter]
url = "{url}"
user = "{user}"
thumbprint = "{tp}"
password_file = "{dir}/password"

[vddk]
libdir = "{libdir}"
config = "{dir}/vddk.conf"

[repository]
path = "{repo}"

[api]
listen = "127.0.0.1:0"
token_file = "{dir}/token"

[limits]
concurrent_jobs = 2
"#,
                url = vcenter.sdk_url(),
                user = r.user,
                tp = vcenter.thumbprint().unwrap(),
                dir = dir.path().display(),
                libdir = vddk_sim_libdir(SimVariant::Vddk8).display(),
                repo = repo.display(),
            ),
        )
        .unwrap();

        // A token file others can read: refused, naming the key.
        write_secret(&dir.path().join("token"), TOKEN, 0o644);
        let out = agent(&["serve", "--config"]).arg(&config).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("api.token_file"), "{stderr}");
        assert!(!stderr.contains(TOKEN));
        write_secret(&dir.path().join("token"), TOKEN, 0o600);

        let (_daemon, base) = serve(&config);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let anonymous = Client::new(&base, None).unwrap();
            assert_eq!(anonymous.health().await.unwrap().status, "ok");
            assert!(anonymous.ready().await.unwrap().ready);
            let e = anonymous.jobs().await.unwrap_err();
            assert_eq!(e.status(), Some(401), "{e}");
            let wrong = Client::new(&base, Some(Token::new("wrong"))).unwrap();
            assert_eq!(wrong.points().await.unwrap_err().status(), Some(401));

            let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
            // The served document is the committed one.
            let served = client.openapi().await.unwrap();
            let committed: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../plugin-api/openapi.json"
                ))
                .unwrap(),
            )
            .unwrap();
            assert_eq!(served, committed);
            let doc: utoipa::openapi::OpenApi = serde_json::from_value(served).unwrap();
            assert!(doc.paths.paths.contains_key("/v1/jobs/backup"));
            assert!(
                doc.components
                    .unwrap()
                    .schemas
                    .contains_key("BackupJobRequest")
            );

            // Requests are strict.
            let e = client
                .restore(&RestoreJobRequest {
                    point: "not-a-point".into(),
                    namespace: None,
                    mode: plugin_api::types::RestoreMode::Auto,
                    disks: vec![],
                    subnet_map: vec![],
                    dry_run: true,
                    idempotency_key: None,
                    priority: 0,
                })
                .await
                .unwrap_err();
            assert_eq!(e.status(), Some(400), "{e}");

            let request = BackupJobRequest {
                vms: vec![VmSpec {
                    vm: vm.0.clone(),
                    quiesce: false,
                }],
                group: Some("api".into()),
                idempotency_key: Some("nightly-1".into()),
                priority: 0,
                full: false,
                require_vmservice: false,
                prepare_access: true,
            };
            let job = client.backup(&request).await.unwrap();
            let again = client.backup(&request).await.unwrap();
            assert_eq!(again.id, job.id, "same idempotency key, same job");

            let mut events = client.events(&job.id).await.unwrap();
            let mut names = Vec::new();
            let ended = loop {
                match events
                    .next()
                    .await
                    .unwrap()
                    .expect("stream ended without `end`")
                {
                    JobEvent::Progress(v) => names.push(v["event"].as_str().unwrap().to_owned()),
                    JobEvent::End(job) => break *job,
                }
            };
            assert_eq!(ended.state, JobState::Succeeded, "{:?}", ended.error);
            assert!(events.next().await.unwrap().is_none());
            for expected in [
                "job_started",
                "snapshot_created",
                "disk_started",
                "disk_finished",
                "vm_finished",
                "job_finished",
            ] {
                assert!(
                    names.iter().any(|n| n == expected),
                    "{expected} missing from {names:?}"
                );
            }
            assert_eq!(ended.progress.vms_done, 1);
            assert!(ended.progress.bytes_done >= 2 * MIB);
            let result = ended.result.unwrap();
            let point = result["vms"][0]["point"].as_str().unwrap().to_owned();

            let job = client.job(&job.id).await.unwrap();
            assert_eq!(job.state, JobState::Succeeded);
            let points = client.points().await.unwrap().points;
            assert_eq!(points.len(), 1);
            assert_eq!(points[0].id, point);
            assert_eq!(client.point(&point).await.unwrap().vm, vm.0);
            assert!(client.verify().await.unwrap().ok);

            let metrics = client.metrics().await.unwrap();
            assert!(
                metrics.contains("vadp_agent_jobs{state=\"succeeded\"} 1"),
                "{metrics}"
            );
            assert!(metrics.contains("vadp_agent_snapshots_held 0"), "{metrics}");
            assert!(
                !metrics.contains("vadp_agent_bytes_read_total 0\n"),
                "{metrics}"
            );
            assert_eq!(client.jobs().await.unwrap().jobs.len(), 1);
            assert_eq!(client.job("nope").await.unwrap_err().status(), Some(404));
        });
        assert!(lab.vm(&vm).unwrap().snapshots.is_empty());
    }
}
