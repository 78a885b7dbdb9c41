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
    use plugin_api::types::{
        BackupJobRequest, JobState, RestoreJobRequest, VerifyJobRequest, VerifyRequest, VmSpec,
    };
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

    /// `agent.toml` for the lab at `vcenter`, the repository `repo` and the secrets in
    /// `dir` (`password`, `token`).
    fn write_config(dir: &Path, vcenter: &InProcessVcenter, repo: &Path) -> std::path::PathBuf {
        let r = vcenter.running();
        let config = dir.join("agent.toml");
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
                dir = dir.display(),
                libdir = vddk_sim_libdir(SimVariant::Vddk8).display(),
                repo = repo.display(),
            ),
        )
        .unwrap();
        config
    }

    /// A VM `name` in the lab's VM folder with one thin 8 MiB disk.
    fn small_vm(lab: &Lab, name: &str) -> lab::vmstate::VmMoref {
        lab.create_vm(
            name,
            "/dc1/vm",
            &[NewDisk {
                capacity_bytes: 8 * MIB,
                thin: true,
                fcd: false,
            }],
        )
        .unwrap()
    }

    /// A lab in `dir/lab` served by an in-process vCenter, with one VM `name` and its 8 MiB
    /// thin disk (returned with the lab's root).
    fn lab_with_vm(
        dir: &Path,
        name: &str,
    ) -> (
        std::path::PathBuf,
        InProcessVcenter,
        Lab,
        lab::vmstate::VmMoref,
        lab::vmstate::DiskKey,
    ) {
        let lab_root = dir.join("lab");
        Lab::create(&lab_root).unwrap();
        let vcenter = InProcessVcenter::start(&lab_root, false).unwrap();
        let lab = Lab::open(&lab_root).unwrap();
        let vm = small_vm(&lab, name);
        let disk = lab.vm(&vm).unwrap().disks[0].key;
        (lab_root, vcenter, lab, vm, disk)
    }

    /// The agent's side of a test: the VDDK configuration naming the lab at `lab_root`, the
    /// password and token files, an initialised repository and `agent.toml`, all in `dir`.
    /// Returns the repository and the configuration file.
    fn prepare_agent(
        dir: &Path,
        lab_root: &Path,
        vcenter: &InProcessVcenter,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        std::fs::write(
            dir.join("vddk.conf"),
            format!("vadp.lab.root = \"{}\"\n", lab_root.display()),
        )
        .unwrap();
        write_secret(&dir.join("password"), &vcenter.running().password, 0o600);
        write_secret(&dir.join("token"), TOKEN, 0o600);
        let repo = dir.join("repo");
        assert!(
            agent(&["repo", "init", "--path"])
                .arg(&repo)
                .status()
                .unwrap()
                .success()
        );
        let config = write_config(dir, vcenter, &repo);
        (repo, config)
    }

    /// Starts `serve` and returns it with its base URL (read from its stdout).
    fn serve(config: &Path) -> (Daemon, String) {
        serve_with(config, Stdio::inherit(), None)
    }

    /// As [`serve`], with the daemon's log (stderr) going to `log`, at `rust_log`'s level.
    fn serve_with(
        config: &Path,
        log: impl Into<Stdio>,
        rust_log: Option<&str>,
    ) -> (Daemon, String) {
        let mut cmd = agent(&["serve", "--config"]);
        cmd.arg(config).stderr(log);
        if let Some(level) = rust_log {
            cmd.env("RUST_LOG", level);
        }
        start(cmd)
    }

    /// Starts the `serve` command `cmd`; the daemon and its base URL.
    fn start(mut cmd: Command) -> (Daemon, String) {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
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
            if let Some(url) = line.strip_prefix("listening on https://") {
                break format!("https://{url}");
            }
        };
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        (daemon, base)
    }

    /// Errors axum makes itself (an unknown path, a method a route does not take, a body
    /// over the limit) answer JSON as every other error does.
    #[test]
    fn every_error_is_json() {
        use std::io::{Read as _, Write as _};
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, _lab, _vm, _disk) = lab_with_vm(dir.path(), "json-1");
        let (_, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let (_daemon, base) = serve(&config);
        let addr = base.trim_start_matches("http://").to_owned();
        let call = |head: &str, body: &[u8]| -> (String, serde_json::Value) {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.write_all(
                format!(
                    "{head} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
            let _ = c.write_all(body);
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out);
            let text = String::from_utf8_lossy(&out).into_owned();
            let (headers, json) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                headers
                    .to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{head}: {headers}"
            );
            (
                headers.lines().next().unwrap().to_owned(),
                serde_json::from_str(json).unwrap_or_else(|e| panic!("{head}: {e}: {json}")),
            )
        };
        let (status, body) = call("GET /v1/no-such-route", b"");
        assert!(status.contains("404"), "{status}");
        assert_eq!(body["code"], "not_found", "{body}");
        let (status, body) = call("DELETE /v1/jobs", b"");
        assert!(status.contains("405"), "{status}");
        assert_eq!(body["code"], "method_not_allowed", "{body}");
        let big = vec![b' '; 3 << 20];
        let (status, body) = call("POST /v1/jobs/backup", &big);
        assert!(status.contains("413"), "{status}");
        assert_eq!(body["code"], "payload_too_large", "{body}");
    }

    /// The job history is trimmed to `job_history_days` even with GC off and no daily
    /// verify (the maintenance loop that trims it runs whatever else is configured).
    #[test]
    fn the_job_history_is_trimmed_with_gc_off_and_no_daily_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, _lab, _vm, _disk) = lab_with_vm(dir.path(), "hist-1");
        let (repo, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let mut toml = std::fs::read_to_string(&config).unwrap();
        toml.push_str("\n[maintenance]\nauto_gc = false\njob_history_days = 1\n");
        std::fs::write(&config, toml).unwrap();
        // A job that ended ten days ago, and one that ended an hour ago.
        let now = jiff::Timestamp::now().as_second();
        {
            let conn = rusqlite::Connection::open(repo.join("catalog.db")).unwrap();
            for (id, ended) in [("old-job", now - 10 * 86_400), ("new-job", now - 3600)] {
                conn.execute(
                    "INSERT INTO queue_jobs (id, kind, priority, origin, request, state,
                         created_at, seq, started_at, finished_at)
                     VALUES (?1, 'verify', 0, 'api', '{}', 'succeeded', ?2, 0, ?2, ?2)",
                    rusqlite::params![id, ended],
                )
                .unwrap();
            }
        }
        let (_daemon, base) = serve(&config);
        let rt = runtime();
        let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let ids: Vec<String> = rt
                .block_on(client.jobs())
                .unwrap()
                .jobs
                .into_iter()
                .map(|j| j.id)
                .collect();
            if !ids.iter().any(|i| i == "old-job") {
                assert!(ids.iter().any(|i| i == "new-job"), "{ids:?}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the old job is still listed: {ids:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// `POST /v1/reconcile` says what it left alone: here a journal entry written against
    /// another vCenter (a repository may serve several).
    #[test]
    fn reconcile_over_the_api_lists_another_vcenters_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, _lab, vm, _disk) = lab_with_vm(dir.path(), "other-1");
        let (repo, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        {
            let conn = rusqlite::Connection::open(repo.join("catalog.db")).unwrap();
            let detail = serde_json::json!({
                "job": "0b5c1f3e-8a2d-4e7f-9c1b-2d3e4f5a6b7c",
                "vcenter": "another-vcenter-uuid",
                "snapshot": "snapshot-9",
            });
            conn.execute(
                "INSERT INTO journal (kind, vm_moref, detail, opened_at, state)
                 VALUES ('snapshot', ?1, ?2, 0, 'open')",
                rusqlite::params![vm.0, detail.to_string()],
            )
            .unwrap();
        }
        let (_daemon, base) = serve(&config);
        let rt = runtime();
        let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
        let r = rt.block_on(client.reconcile()).unwrap();
        assert_eq!(r.other_vcenter.len(), 1, "{r:?}");
        assert!(r.other_vcenter[0].contains("another-vcenter-uuid"), "{r:?}");
        assert_eq!(r.skipped_running, 0, "{r:?}");
        assert!(r.snapshots_removed.is_empty(), "{r:?}");
    }

    /// A client that connects and sends half a request head is closed after the header
    /// timeout instead of holding its connection (and a file descriptor) for ever; others
    /// are served meanwhile.
    #[test]
    fn a_connection_that_never_finishes_its_request_is_closed() {
        use std::io::{Read as _, Write as _};
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, _lab, _vm, _disk) = lab_with_vm(dir.path(), "slow-1");
        let (_, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let (_daemon, base) = serve(&config);
        let addr = base.trim_start_matches("http://").to_owned();
        let mut slow = std::net::TcpStream::connect(&addr).unwrap();
        slow.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        // Others are served meanwhile.
        let rt = runtime();
        let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
        assert_eq!(rt.block_on(client.health()).unwrap().status, "ok");
        // Closed by the agent within the 30 s header timeout (and a margin).
        slow.set_read_timeout(Some(std::time::Duration::from_secs(45)))
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 512];
        let n = slow
            .read(&mut buf)
            .expect("closed, not timed out on our side");
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(started.elapsed() < std::time::Duration::from_secs(40));
    }

    /// With `api.tls_cert` and `api.tls_key` the API speaks HTTPS: a client that trusts the
    /// certificate gets in; one that does not, and plain HTTP, do not. A key file others
    /// can read is refused, and its text is never printed.
    #[test]
    fn the_api_over_https() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, _lab, _vm, _disk) = lab_with_vm(dir.path(), "tls-1");
        let (_repo, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let generated =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                .unwrap();
        let key_pem = generated.signing_key.serialize_pem();
        let (cert, key) = (dir.path().join("api.crt"), dir.path().join("api.key"));
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        write_secret(&key, &key_pem, 0o644);
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "[api]\n",
            &format!(
                "[api]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                cert.display(),
                key.display()
            ),
        );
        std::fs::write(&config, text).unwrap();

        let out = agent(&["serve", "--config"]).arg(&config).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("api.tls_key"), "{stderr}");
        assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
        write_secret(&key, &key_pem, 0o600);

        let (_daemon, base) = serve(&config);
        assert!(base.starts_with("https://127.0.0.1:"), "{base}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(generated.cert.der().clone()).unwrap();
            let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let client = Client::with_tls(&base, Some(Token::new(TOKEN)), tls).unwrap();
            client.ready().await.unwrap();
            assert!(client.jobs().await.unwrap().jobs.is_empty());

            // A client that does not trust the certificate.
            let stranger = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
            assert!(stranger.ready().await.is_err());
            // Plain HTTP to the same port gets no answer.
            let plain = Client::new(&base.replace("https://", "http://"), None).unwrap();
            assert!(plain.health().await.is_err());
            // And the daemon still serves the trusting client after both, also while
            // clients that connect and say nothing wait for their handshakes to time out.
            let addr = base.trim_start_matches("https://").to_owned();
            let mut silent = Vec::new();
            for _ in 0..8 {
                silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
            }
            tokio::time::timeout(std::time::Duration::from_secs(5), client.ready())
                .await
                .expect("answered while silent clients are connected")
                .unwrap();
            drop(silent);
        });
    }

    #[test]
    fn backup_through_the_api_with_events_auth_and_openapi() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, lab, vm, disk) = lab_with_vm(dir.path(), "api-1");
        lab.guest_write(&vm, disk, MIB, &[0x5a; 2 << 20]).unwrap();
        let (repo, config) = prepare_agent(dir.path(), &lab_root, &vcenter);

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
            // The scheme's name in any case (RFC 9110 §11.1); the token exactly.
            for (header, status) in [
                (format!("bearer {TOKEN}"), "200"),
                (format!("BEARER  {TOKEN}"), "200"),
                (format!("Basic {TOKEN}"), "401"),
                (format!("Bearer {}", TOKEN.to_uppercase()), "401"),
            ] {
                use std::io::{Read as _, Write as _};
                let addr = base.trim_start_matches("http://").trim_end_matches('/');
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(
                    format!(
                        "GET /v1/points HTTP/1.1\r\nHost: x\r\nAuthorization: {header}\r\n\
                         Connection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .unwrap();
                let mut out = String::new();
                let _ = c.read_to_string(&mut out);
                let line = out.lines().next().unwrap_or_default();
                assert!(line.contains(&format!(" {status} ")), "{header}: {line}");
            }

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

            // Requests are strict: a malformed point is a 400, an unknown one a 404.
            let unknown = "0b7e8c52-1111-4222-8333-944455556666";
            for (point, with_points, status) in [
                ("not-a-point", vec![], 400),
                (unknown, vec![], 404),
                (unknown, vec!["nope".to_owned()], 400),
                (unknown, vec![unknown.to_owned()], 400),
            ] {
                let e = client
                    .restore(&RestoreJobRequest {
                        point: point.into(),
                        namespace: None,
                        mode: plugin_api::types::RestoreMode::Auto,
                        disks: vec![],
                        subnet_map: vec![],
                        datastore: None,
                        dry_run: true,
                        verify_first: false,
                        auto_registration_wait_secs: None,
                        recreate_related: false,
                        with_points,
                        idempotency_key: None,
                        priority: 0,
                    })
                    .await
                    .unwrap_err();
                assert_eq!(e.status(), Some(status), "{point}: {e}");
            }
            // A request that contradicts itself is a 400 naming the field, not a job that
            // fails later.
            let e = client
                .restore(&RestoreJobRequest {
                    point: unknown.into(),
                    namespace: None,
                    mode: plugin_api::types::RestoreMode::New,
                    disks: vec![2000],
                    subnet_map: vec![],
                    datastore: None,
                    dry_run: false,
                    verify_first: false,
                    auto_registration_wait_secs: None,
                    recreate_related: false,
                    with_points: vec![],
                    idempotency_key: None,
                    priority: 0,
                })
                .await
                .unwrap_err();
            assert_eq!(e.status(), Some(400), "{e}");
            assert!(e.to_string().contains("disks:"), "{e}");

            let request = BackupJobRequest {
                vms: vec![VmSpec {
                    vm: vm.0.clone(),
                    quiesce: false,
                }],
                group: Some("api".into()),
                independent: false,
                idempotency_key: Some("nightly-1".into()),
                priority: 0,
                full: false,
                require_vmservice: false,
                prepare_access: true,
            };
            let job = client.backup(&request).await.unwrap();
            let again = client.backup(&request).await.unwrap();
            assert_eq!(again.id, job.id, "same idempotency key, same job");
            // The same key for another request is a conflict, not the earlier job.
            let e = client
                .backup(&BackupJobRequest {
                    full: true,
                    ..request.clone()
                })
                .await
                .unwrap_err();
            assert_eq!(e.status(), Some(409), "{e}");
            assert!(e.to_string().contains(&job.id), "{e}");

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
            // The engine's job: the `job` of the API job's result.
            assert_eq!(points[0].job.as_deref(), result["job"].as_str());
            assert!(points[0].group_failed.is_empty(), "{points:?}");
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

            // A damaged chunk: verify names it; verify with repair quarantines it.
            let chunk = walkdir(&repo.join("chunks"))
                .into_iter()
                .next()
                .expect("a chunk file");
            let mut bytes = std::fs::read(&chunk).unwrap();
            bytes[40] ^= 1;
            std::fs::write(&chunk, bytes).unwrap();
            let v = client.verify().await.unwrap();
            assert!(!v.ok && v.repair.is_none(), "{v:?}");
            assert_eq!(v.problems[0]["state"], "corrupt", "{v:?}");
            let r = client.verify_and_repair().await.unwrap();
            assert!(!r.ok);
            let repair = r.repair.expect("a repair report");
            assert_eq!(
                repair["quarantined"].as_array().unwrap().len(),
                1,
                "{repair}"
            );
            assert!(!chunk.exists());
            assert!(repo.join("quarantine").read_dir().unwrap().next().is_some());
            assert_eq!(
                client.verify().await.unwrap().problems[0]["state"],
                "missing"
            );
            // A subset: the recorded chunk is re-read whatever the bucket.
            let r = client
                .verify_with(&VerifyRequest {
                    subset: Some("2/3".into()),
                    ..VerifyRequest::default()
                })
                .await
                .unwrap();
            assert_eq!(r.subset.as_deref(), Some("2/3"));
            assert!(r.chunks_read >= 1 && r.chunks_read <= r.chunks, "{r:?}");
            assert_eq!(r.problems[0]["state"], "missing", "{r:?}");
            let e = client
                .verify_with(&VerifyRequest {
                    subset: Some("4/3".into()),
                    ..VerifyRequest::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.status(), Some(400), "{e}");
            assert!(e.to_string().contains("subset"), "{e}");
            // One point's chunks: the point the backup made uses the damaged one.
            let r = client
                .verify_with(&VerifyRequest {
                    points: vec![point.clone()],
                    ..VerifyRequest::default()
                })
                .await
                .unwrap();
            assert_eq!(r.points, 1, "{r:?}");
            assert_eq!(r.problems[0]["state"], "missing", "{r:?}");
            for (bad, status) in [
                ("not-a-point", 400),
                ("0b7e8c52-1111-4222-8333-944455556666", 404),
            ] {
                let e = client
                    .verify_with(&VerifyRequest {
                        points: vec![bad.into()],
                        ..VerifyRequest::default()
                    })
                    .await
                    .unwrap_err();
                assert_eq!(e.status(), Some(status), "{bad}: {e}");
            }
            // The same as a job: progress events, and a failed job carrying the result.
            let job = client
                .verify_job(&VerifyJobRequest {
                    subset: Some("1/1".into()),
                    ..VerifyJobRequest::default()
                })
                .await
                .unwrap();
            assert_eq!(job.kind, plugin_api::types::JobKind::Verify);
            let (names, ended) = follow(&client, &job.id).await;
            assert!(names.iter().any(|n| n == "verify_progress"), "{names:?}");
            assert_eq!(ended.state, JobState::Failed, "{ended:?}");
            assert!(
                ended.error.as_deref().unwrap().contains("1 problem(s)"),
                "{ended:?}"
            );
            assert_eq!(ended.progress.chunks_done, ended.progress.chunks_total);
            assert!(ended.progress.chunks_total >= 1, "{ended:?}");
            let result = ended.result.unwrap();
            assert_eq!(result["problems"][0]["state"], "missing", "{result}");
            let e = client
                .verify_job(&VerifyJobRequest {
                    subset: Some("0/1".into()),
                    ..VerifyJobRequest::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.status(), Some(400), "{e}");
        });
        assert!(lab.vm(&vm).unwrap().snapshots.is_empty());
    }

    /// Ten days pass for the repository's points (past the retention's 3-day floor), and
    /// a policy `policy` for `vm` is added that is due at once (its initial run; its daily
    /// time half a day away) and keeps one point.
    fn age_points_and_add_policy(
        repo: &Path,
        config: &Path,
        vm: &lab::vmstate::VmMoref,
        policy: &str,
    ) {
        let db = rusqlite::Connection::open(repo.join("catalog.db")).unwrap();
        db.execute(
            "UPDATE restore_points SET created_at = created_at - 864000",
            [],
        )
        .unwrap();
        // A policy's retention removes only its own runs' points: the points so far are
        // made the new policy's, as if its earlier runs had made them.
        db.execute("UPDATE jobs SET group_name = ?1", [policy])
            .unwrap();
        drop(db);
        add_policy(config, policy, &vm.0, "retention = { keep_last = 1 }\n");
    }

    /// Appends policy `name` of VM `vm` to `config`, due at its initial run (its daily
    /// time twelve hours away), with the `extra` lines.
    fn add_policy(config: &Path, name: &str, vm: &str, extra: &str) {
        let mut text = std::fs::read_to_string(config).unwrap();
        let daily_at = jiff::Zoned::now()
            .checked_add(jiff::SignedDuration::from_hours(12))
            .unwrap()
            .strftime("%H:%M")
            .to_string();
        text.push_str(&format!(
            "\n[policy.{name}]\nvms = [\"{vm}\"]\ndaily_at = \"{daily_at}\"\n{extra}"
        ));
        std::fs::write(config, text).unwrap();
    }

    /// A scheduling policy's run through the daemon: retention removes the older point
    /// once the new one is committed, and the daemon, once idle, collects its chunks.
    #[test]
    fn a_policy_run_applies_retention_and_the_idle_daemon_collects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, lab, vm, disk) = lab_with_vm(dir.path(), "gc-1");
        let pattern = |seed: u8| -> Vec<u8> {
            (0..2 * MIB)
                .map(|i| u8::try_from((i / 7 + u64::from(seed)) % 251).unwrap())
                .collect()
        };
        lab.guest_write(&vm, disk, MIB, &pattern(1)).unwrap();
        let (repo, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let rt = runtime();
        // A first point, through the API of a daemon without policies.
        let old_point = backup_through_a_daemon(&config, &vm.0);
        let old_chunks = walkdir(&repo.join("chunks"));
        assert_eq!(
            old_chunks.len(),
            2,
            "two distinct 1 MiB chunks: {old_chunks:?}"
        );

        // Ten days pass (past the retention's 3-day floor), the guest rewrites its data, and
        // a new policy is due at once (its initial run) and keeps one point.
        let ten_days_later = |policy: &str, seed: u8| {
            lab.guest_write(&vm, disk, MIB, &pattern(seed)).unwrap();
            age_points_and_add_policy(&repo, &config, &vm, policy);
        };
        ten_days_later("nightly", 2);
        let log_path = dir.path().join("serve.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let (daemon, base) = serve_with(&config, log, Some("info"));
        let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let new_point = rt.block_on(async {
            let job = loop {
                let jobs = client.jobs().await.unwrap().jobs;
                if let Some(j) = jobs.iter().find(|j| j.origin == "schedule:nightly") {
                    break j.clone();
                }
                assert!(std::time::Instant::now() < deadline, "no scheduled job");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            };
            let (_, ended) = follow(&client, &job.id).await;
            assert_eq!(ended.state, JobState::Succeeded, "{:?}", ended.error);
            ended.result.unwrap()["vms"][0]["point"]
                .as_str()
                .unwrap()
                .to_owned()
        });
        let log = wait_for_log(
            &log_path,
            "garbage collected after restore points were removed",
            deadline,
        );
        assert!(log.contains("retention applied"), "{log}");
        assert!(!log.contains("ERROR"), "{log}");

        rt.block_on(async {
            // A backup through the API in the policy's group would be pruned by it as
            // its own: refused.
            let e = client
                .backup(&BackupJobRequest {
                    vms: vec![VmSpec {
                        vm: vm.0.clone(),
                        quiesce: false,
                    }],
                    group: Some("nightly".into()),
                    independent: false,
                    idempotency_key: None,
                    priority: 0,
                    full: false,
                    require_vmservice: false,
                    prepare_access: true,
                })
                .await
                .unwrap_err();
            assert_eq!(e.status(), Some(400), "{e}");
            assert!(e.to_string().contains("scheduling policy nightly"), "{e}");
            let points = client.points().await.unwrap().points;
            assert_eq!(points.len(), 1, "{points:?}");
            assert_eq!(points[0].id, new_point);
            assert_ne!(new_point, old_point);
            assert!(client.verify().await.unwrap().ok);
        });
        // The old point's chunks are gone; the new point's two are all that is left.
        let chunks = walkdir(&repo.join("chunks"));
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert!(chunks.iter().all(|c| !old_chunks.contains(c)), "{chunks:?}");
        let out = agent(&["repo", "info", "--json", "--repo"])
            .arg(&repo)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(info["repo"]["gc_pending_since"].is_null(), "{info}");
        drop(daemon);

        // The same without the daemon: `schedule run-due` (the timer's command) runs a newly
        // due policy, applies its retention and collects the garbage before it exits.
        ten_days_later("weekly", 3);
        let before = walkdir(&repo.join("chunks"));
        let out = agent(&["schedule", "run-due", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("policy weekly: job"),
            "{stderr}"
        );
        assert!(
            stderr.contains("garbage collected after restore points were removed"),
            "{stderr}"
        );
        let chunks = walkdir(&repo.join("chunks"));
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert!(chunks.iter().all(|c| !before.contains(c)), "{chunks:?}");
        let out = agent(&["list", "--json", "--repo"])
            .arg(&repo)
            .output()
            .unwrap();
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let points = listed["points"].as_array().unwrap();
        assert_eq!(points.len(), 1, "{listed}");
        assert_eq!(points[0]["parent"], new_point.as_str(), "{listed}");
    }

    /// Retention measures ages with this machine's clock: while it differs from vCenter's
    /// (here a week ahead), `schedule run-due` backs up but leaves retention for later, so
    /// no point younger than the minimum age is taken for an old one.
    #[test]
    fn retention_waits_while_the_clock_differs_from_vcenters() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, lab, vm, disk) = lab_with_vm(dir.path(), "clock-1");
        let (repo, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let points = || {
            let out = agent(&["list", "--json", "--repo"])
                .arg(&repo)
                .output()
                .unwrap();
            let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            listed["points"].as_array().unwrap().len()
        };
        // Each run adds a policy that is due at once (its initial run) and keeps one point;
        // the points are made ten days old first, past the 3-day floor.
        let run = |policy: &str, seed: u8| {
            lab.guest_write(&vm, disk, 0, &[seed; 65536]).unwrap();
            age_points_and_add_policy(&repo, &config, &vm, policy);
            let out = agent(&["schedule", "run-due", "--config"])
                .arg(&config)
                .env("RUST_LOG", "info")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "{stderr}");
            stderr
        };
        lab.update_settings(|s| s.clock_offset_secs = -7 * 86_400)
            .unwrap();
        let first = run("a", 1);
        assert_eq!(points(), 1);
        assert!(first.contains("clock differs from vCenter"), "{first}");
        // The run is recorded at vCenter's time, which schedules follow, not this machine's.
        let out = agent(&["--json", "schedule", "show", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        let last_run = shown
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["policy"] == "a")
            .and_then(|v| v["last_run"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("{shown}"));
        let behind = jiff::Timestamp::now()
            .duration_since(last_run.parse::<jiff::Timestamp>().unwrap())
            .as_secs();
        assert!(
            (7 * 86_400 - 120..7 * 86_400 + 120).contains(&behind),
            "{last_run} is {behind} s behind this machine's clock"
        );
        let second = run("b", 2);
        assert!(second.contains("retention skipped"), "{second}");
        assert_eq!(points(), 2, "retention ran on a clock a week off");
        // run-due's own comparison fails (the backup's succeeds): a clock never compared
        // is not trusted, and the backup's comparison counts.
        lab.update_settings(|s| s.failing_current_time = 1).unwrap();
        let unmeasured = run("b2", 4);
        assert_eq!(lab.settings().unwrap().failing_current_time, 0);
        assert!(
            unmeasured.contains("retention skipped: this machine's clock differs"),
            "{unmeasured}"
        );
        // Without a comparison of its own, run-due judged the schedules by this machine's
        // clock, by which policies a and b were due again: three backups, nothing removed.
        assert_eq!(
            points(),
            5,
            "retention ran on a clock a week off: {unmeasured}"
        );
        // The clocks agree again: the next run applies the retention. (Here vCenter's clock
        // moves a week on rather than this machine's a week back: by vCenter's time, which
        // schedules follow, policies a and b would be due again, so they go.)
        lab.update_settings(|s| s.clock_offset_secs = 0).unwrap();
        let text = std::fs::read_to_string(&config).unwrap();
        let cut = text.find("\n[policy.").unwrap();
        std::fs::write(&config, &text[..cut]).unwrap();
        let third = run("c", 3);
        assert!(!third.contains("retention skipped"), "{third}");
        assert_eq!(points(), 1, "{third}");
        // Neither comparison succeeds: retention waits, saying why.
        lab.update_settings(|s| s.failing_current_time = 2).unwrap();
        let text = std::fs::read_to_string(&config).unwrap();
        let cut = text.find("\n[policy.").unwrap();
        std::fs::write(&config, &text[..cut]).unwrap();
        let blind = run("d", 5);
        assert!(
            blind.contains("retention skipped: this machine's clock has not been compared"),
            "{blind}"
        );
        assert_eq!(points(), 2);
    }

    /// `schedule run-due` runs a failed policy run again once, `retry_failed_after_minutes`
    /// (default 30) after it ended and within two hours of that, as the daemon does; a
    /// retry that fails is not retried.
    #[test]
    fn run_due_runs_a_failed_run_again_once() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, _lab, _vm, _disk) = lab_with_vm(dir.path(), "retry-1");
        let (repo, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        // A policy whose VM is not in vCenter: each of its runs fails.
        add_policy(&config, "broken", "vm-999", "");
        let run = || {
            let out = agent(&["schedule", "run-due", "--config"])
                .arg(&config)
                .env("RUST_LOG", "info")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let failed = || -> Option<String> {
            let db = rusqlite::Connection::open(repo.join("catalog.db")).unwrap();
            db.query_row(
                "SELECT value FROM repo_meta WHERE key = 'schedule.broken.failed'",
                [],
                |r| r.get(0),
            )
            .ok()
        };
        // Ended `mins` minutes ago (`:retry` kept).
        let ended_ago = |mins: i64| {
            let db = rusqlite::Connection::open(repo.join("catalog.db")).unwrap();
            let v = failed().unwrap();
            let retry = if v.ends_with(":retry") { ":retry" } else { "" };
            let end = jiff::Timestamp::now().as_second() - mins * 60;
            db.execute(
                "UPDATE repo_meta SET value = ?1 WHERE key = 'schedule.broken.failed'",
                [format!("{end}{retry}")],
            )
            .unwrap();
        };
        let retried = "its last run failed: running it again once";

        // The initial run fails and is recorded so.
        let (code, stderr) = run();
        assert_eq!(code, Some(2), "{stderr}");
        assert!(!failed().unwrap().ends_with(":retry"));
        // Not before 30 minutes.
        ended_ago(10);
        let (code, stderr) = run();
        assert_eq!(code, Some(0), "{stderr}");
        assert!(!stderr.contains(retried), "{stderr}");
        // Not more than two hours after that (a timer that was off all night).
        ended_ago(31 + 120);
        let (_, stderr) = run();
        assert!(!stderr.contains(retried), "{stderr}");
        // Once, in between: the retry fails and is recorded as a retry.
        ended_ago(31);
        let (code, stderr) = run();
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(retried), "{stderr}");
        assert!(failed().unwrap().ends_with(":retry"), "{:?}", failed());
        // A failed retry is not retried.
        ended_ago(31);
        let (code, stderr) = run();
        assert_eq!(code, Some(0), "{stderr}");
        assert!(!stderr.contains(retried), "{stderr}");
    }

    /// The daily verify in the daemon: a run missed while the agent was down is caught up
    /// at start, finds a corrupt chunk, quarantines it, and says so in the log, in
    /// `/v1/metrics` and in `schedule show`.
    #[test]
    fn the_daily_verify_catches_up_repairs_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, lab, vm, disk) = lab_with_vm(dir.path(), "verify-1");
        lab.guest_write(&vm, disk, 0, &[0x3c; 1 << 20]).unwrap();
        let (repo, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let rt = runtime();
        backup_through_a_daemon(&config, &vm.0);

        let chunk = walkdir(&repo.join("chunks")).pop().expect("a chunk file");
        let mut bytes = std::fs::read(&chunk).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&chunk, bytes).unwrap();
        // The last daily verify ran two days ago.
        let two_days_ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 2 * 86_400;
        let db = rusqlite::Connection::open(repo.join("catalog.db")).unwrap();
        db.execute(
            "INSERT INTO repo_meta (key, value) VALUES ('maintenance.verify.last_run', ?1)",
            [two_days_ago.to_string()],
        )
        .unwrap();
        drop(db);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str("\n[maintenance]\nverify_daily_at = \"00:00\"\nverify_subsets = 1\n");
        std::fs::write(&config, text).unwrap();

        let log_path = dir.path().join("serve.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let (daemon, base) = serve_with(&config, log, Some("info"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let log = wait_for_log(&log_path, "daily verify found problems", deadline);
        assert!(log.contains("daily verify started"), "{log}");
        assert!(!chunk.exists(), "quarantined");
        assert!(repo.join("quarantine").read_dir().unwrap().next().is_some());
        let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
        let metrics = rt.block_on(client.metrics()).unwrap();
        assert!(
            metrics.contains("vadp_agent_verify_last_problems 1\n"),
            "{metrics}"
        );
        assert!(
            !metrics.contains("vadp_agent_verify_last_run_timestamp_seconds 0\n"),
            "{metrics}"
        );
        assert!(metrics.contains("vadp_agent_gc_pending 0\n"), "{metrics}");
        drop(daemon);

        // Not again today; `schedule show` says when, and what the last run found.
        let out = agent(&["schedule", "show", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shown}");
        assert!(
            shown.contains("daily verify: next run") && shown.contains("last: 1 problem(s)"),
            "{shown}"
        );
        let out = agent(&["repo", "info", "--json", "--repo"])
            .arg(&repo)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["repo"]["damaged_chunks"], 1, "{info}");
    }

    /// The daemon's log at `path` once it contains `needle` (fails at `deadline`).
    fn wait_for_log(path: &Path, needle: &str, deadline: std::time::Instant) -> String {
        loop {
            let log = std::fs::read_to_string(path).unwrap();
            if log.contains(needle) {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in the log:\n{log}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Files under `dir`, at any depth.
    fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                files.extend(walkdir(&e.path()));
            } else {
                files.push(e.path());
            }
        }
        files.sort();
        files
    }

    /// A current-thread tokio runtime for the client.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Starts a daemon with `config`, backs up `vm` through its API, stops it; the point.
    fn backup_through_a_daemon(config: &Path, vm: &str) -> String {
        let (_daemon, base) = serve(config);
        let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
        runtime().block_on(backup_point(&client, vm, false))
    }

    /// Backs up one VM through the API, follows the job to its end and returns the new
    /// point's id.
    async fn backup_point(client: &Client, vm: &str, require_vmservice: bool) -> String {
        let job = client
            .backup(&BackupJobRequest {
                vms: vec![VmSpec {
                    vm: vm.to_owned(),
                    quiesce: false,
                }],
                group: None,
                independent: false,
                idempotency_key: None,
                priority: 0,
                full: false,
                require_vmservice,
                prepare_access: true,
            })
            .await
            .unwrap();
        let (_, ended) = follow(client, &job.id).await;
        assert_eq!(ended.state, JobState::Succeeded, "{:?}", ended.error);
        ended.result.unwrap()["vms"][0]["point"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Follows a job's events to its end: the event names and the final job.
    /// The first event `name` of job `id` (waiting for it); the job must not end first.
    async fn first_event(client: &Client, id: &str, name: &str) -> serde_json::Value {
        let mut events = client.events(id).await.unwrap();
        loop {
            match events.next().await.unwrap().expect("stream ended") {
                JobEvent::Progress(v) if v["event"] == name => return v,
                JobEvent::Progress(_) => {}
                JobEvent::End(job) => panic!("job {id} ended before {name}: {job:?}"),
            }
        }
    }

    async fn follow(client: &Client, id: &str) -> (Vec<String>, plugin_api::types::Job) {
        let mut events = client.events(id).await.unwrap();
        let mut names = Vec::new();
        loop {
            match events
                .next()
                .await
                .unwrap()
                .expect("stream ended without `end`")
            {
                JobEvent::Progress(v) => names.push(v["event"].as_str().unwrap().to_owned()),
                JobEvent::End(job) => return (names, *job),
            }
        }
    }

    #[test]
    fn restore_through_the_api_and_no_secret_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let lab_root = dir.path().join("lab");
        Lab::create(&lab_root).unwrap();
        let vcenter = InProcessVcenter::start(&lab_root, false).unwrap();
        let lab = Lab::open(&lab_root).unwrap();
        // A VM Service VM with an OS and a PVC disk, made by the lab's VM Operator.
        let sup = vcenter.running().vcenter.supervisor();
        sup.create_namespace("ns1").unwrap();
        sup.apply(serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "ns1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "4Mi"}}}
        }))
        .unwrap();
        sup.apply(serde_json::json!({
            "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachine",
            "metadata": {"name": "web-1", "namespace": "ns1", "labels": {"app": "web"}},
            "spec": {
                "className": "best-effort-small", "powerState": "PoweredOff",
                "advanced": {"bootDiskCapacity": "4Mi"},
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
            }
        }))
        .unwrap();
        // Behind a VirtualMachineService (seed 001 §10.3), which the daemon's backup keeps.
        sup.apply(serde_json::json!({
            "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineService",
            "metadata": {"name": "web-lb", "namespace": "ns1"},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"}}
        }))
        .unwrap();
        // Another VM of the application, behind the same service.
        sup.apply(serde_json::json!({
            "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachine",
            "metadata": {"name": "web-2", "namespace": "ns1", "labels": {"app": "web"}},
            "spec": {
                "className": "best-effort-small", "powerState": "PoweredOff",
                "advanced": {"bootDiskCapacity": "4Mi"}
            }
        }))
        .unwrap();
        let cr = sup.get("VirtualMachine", "ns1", "web-1").unwrap();
        let vm = lab::vmstate::VmMoref(cr["status"]["uniqueID"].as_str().unwrap().to_owned());
        for d in lab.vm(&vm).unwrap().disks {
            lab.guest_write(&vm, d.key, 0, &[0xa5; 65536]).unwrap();
        }
        let (_, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let password = vcenter.running().password.clone();
        let log_path = dir.path().join("serve.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let (daemon, base) = serve_with(&config, log, Some("debug"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
            let point = backup_point(&client, "ns1/web-1", true).await;
            let point2 = backup_point(&client, "ns1/web-2", true).await;
            // What the point kept besides its disks, for kubectl.
            let related = client.point_related(&point).await.unwrap();
            assert_eq!((related.api_version.as_str(), related.kind.as_str()), ("v1", "List"));
            assert_eq!(related.items.len(), 1, "{related:?}");
            assert_eq!(related.items[0]["kind"], "VirtualMachineService");
            assert_eq!(related.items[0]["metadata"], serde_json::json!({"name": "web-lb"}));
            let missing = client
                .point_related("00000000-0000-4000-8000-000000000000")
                .await
                .unwrap_err();
            assert_eq!(missing.status(), Some(404), "{missing}");

            sup.delete("VirtualMachine", "ns1", "web-1").unwrap();
            sup.delete("VirtualMachineService", "ns1", "web-lb").unwrap();
            let request = RestoreJobRequest {
                point: point.clone(),
                namespace: None,
                mode: plugin_api::types::RestoreMode::Auto,
                disks: vec![],
                subnet_map: vec![],
                datastore: None,
                dry_run: false,
                verify_first: true,
                auto_registration_wait_secs: None,
                recreate_related: true,
                with_points: vec![],
                idempotency_key: Some("restore-web-1".into()),
                priority: 0,
            };
            let job = client.restore(&request).await.unwrap();
            let first = job.id.clone();
            let (names, ended) = follow(&client, &job.id).await;
            assert_eq!(ended.state, JobState::Succeeded, "{:?}", ended.error);
            for expected in [
                "predicted",
                "step",
                "disk_started",
                "disk_finished",
                "registration",
            ] {
                assert!(
                    names.iter().any(|n| n == expected),
                    "{expected} missing from {names:?}"
                );
            }
            let result = ended.result.unwrap();
            assert_eq!(result["prediction"]["restore_type"], "new");
            assert_eq!(result["verification"]["problems"], serde_json::json!([]));
            assert_eq!(
                result["related"],
                serde_json::json!([{"kind": "VirtualMachineService", "name": "web-lb", "outcome": "created"}])
            );

            // Both VMs as one application (seed 001 §10.5), planned only: one job, a group
            // report, the service both points kept listed once. (web-2 gone, as web-1 was.)
            sup.delete("VirtualMachine", "ns1", "web-2").unwrap();
            let job = client
                .restore(&RestoreJobRequest {
                    dry_run: true,
                    verify_first: false,
                    with_points: vec![point2.clone()],
                    idempotency_key: None,
                    ..request.clone()
                })
                .await
                .unwrap();
            let (names, ended) = follow(&client, &job.id).await;
            assert_eq!(ended.state, JobState::Succeeded, "{:?}", ended.error);
            assert_eq!(names.iter().filter(|n| *n == "predicted").count(), 2, "{names:?}");
            let result = ended.result.unwrap();
            let vms: Vec<&str> = result["vms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["vm_name"].as_str().unwrap())
                .collect();
            assert_eq!(vms, ["ns1/web-1", "ns1/web-2"]);
            assert_eq!(
                result["related"],
                serde_json::json!([{"namespace": "ns1", "point": point, "kind": "VirtualMachineService",
                                    "name": "web-lb", "outcome": "kept"}])
            );
            assert_eq!(result["not_restored"], serde_json::json!([]));

            // web-2 restored for real, and WCP's registration of it fails: the job fails,
            // its result the report all the same, saying the VM stays with its data whole.
            let settings = lab::supervisor::SupervisorSettings {
                failing_registrations: vec!["web-2".into()],
                ..sup.settings()
            };
            sup.set_settings(settings).unwrap();
            let job = client
                .restore(&RestoreJobRequest {
                    point: point2.clone(),
                    recreate_related: false,
                    idempotency_key: None,
                    ..request.clone()
                })
                .await
                .unwrap();
            let (_, ended) = follow(&client, &job.id).await;
            assert_eq!(ended.state, JobState::Failed, "{ended:?}");
            let error = ended.error.clone().unwrap_or_default();
            assert!(error.contains("injected failure"), "{error}");
            let result = ended.result.expect("the report is the failed job's result");
            assert_eq!(result["unfinished"]["cancelled"], false, "{result}");
            assert!(result["vm"].is_string(), "{result}");

            // The first restore retried (its client timed out, say) after its point was
            // removed: its job again, not a 404 for the point.
            client.delete_point(&point).await.unwrap();
            let again = client.restore(&request).await.unwrap();
            assert_eq!(again.id, first);
            // Without the key, the point is unknown now.
            let e = client
                .restore(&RestoreJobRequest {
                    idempotency_key: None,
                    ..request
                })
                .await
                .unwrap_err();
            assert_eq!(e.status(), Some(404), "{e}");
        });
        assert_eq!(
            sup.get("VirtualMachineService", "ns1", "web-lb").unwrap()["spec"]["selector"],
            serde_json::json!({"app": "web"})
        );
        let cr = sup.get("VirtualMachine", "ns1", "web-1").unwrap();
        assert_eq!(cr["spec"]["powerState"], "PoweredOff");
        let claim = cr["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
            .as_str()
            .unwrap();
        assert!(claim.starts_with("restored-"), "{claim}");
        drop(daemon);
        // Neither the vCenter password nor the API token reaches the daemon's log.
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(log.contains("kind=Restore"), "no restore in the log: {log}");
        assert!(log.contains("DEBUG"), "the log is not at debug level");
        assert!(!log.contains(&password), "password in the log");
        assert!(!log.contains(TOKEN), "API token in the log");
    }

    #[test]
    fn fifty_vms_queued_with_four_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let lab_root = dir.path().join("lab");
        Lab::create(&lab_root).unwrap();
        let vcenter = InProcessVcenter::start(&lab_root, false).unwrap();
        let lab = Lab::open(&lab_root).unwrap();
        let vms: Vec<_> = (0..50)
            .map(|i| {
                let vm = lab
                    .create_vm(
                        &format!("q-{i}"),
                        "/dc1/vm",
                        &[NewDisk {
                            capacity_bytes: MIB,
                            thin: true,
                            fcd: false,
                        }],
                    )
                    .unwrap();
                let key = lab.vm(&vm).unwrap().disks[0].key;
                lab.guest_write(&vm, key, 0, &[u8::try_from(i).unwrap(); 65536])
                    .unwrap();
                vm
            })
            .collect();
        let (_, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("concurrent_jobs = 2", "concurrent_jobs = 4");
        std::fs::write(&config, text).unwrap();
        let (_daemon, base) = serve(&config);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
            let mut ids = Vec::new();
            for vm in &vms {
                let job = client
                    .backup(&BackupJobRequest {
                        vms: vec![VmSpec {
                            vm: vm.0.clone(),
                            quiesce: false,
                        }],
                        group: None,
                        independent: false,
                        idempotency_key: Some(format!("queue-{}", vm.0)),
                        priority: 0,
                        full: false,
                        require_vmservice: false,
                        prepare_access: true,
                    })
                    .await
                    .unwrap();
                ids.push(job.id);
            }
            // Every sample of the queue while it drains: at most 4 running.
            let mut max_running = 0;
            loop {
                let jobs = client.jobs().await.unwrap().jobs;
                assert_eq!(jobs.len(), 50, "a job was lost or duplicated");
                let running = jobs.iter().filter(|j| j.state == JobState::Running).count();
                assert!(running <= 4, "{running} jobs running at once");
                max_running = max_running.max(running);
                if jobs.iter().all(|j| j.state == JobState::Succeeded) {
                    break;
                }
                assert!(
                    jobs.iter().all(|j| matches!(
                        j.state,
                        JobState::Queued | JobState::Running | JobState::Succeeded
                    )),
                    "a job failed: {:?}",
                    jobs.iter().find(|j| !matches!(
                        j.state,
                        JobState::Queued | JobState::Running | JobState::Succeeded
                    ))
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert!(max_running >= 2, "the queue never ran jobs in parallel");
            // One restore point per VM: nothing lost.
            let points = client.points().await.unwrap().points;
            assert_eq!(points.len(), 50);
            let mut backed_up: Vec<String> = points.iter().map(|p| p.vm.clone()).collect();
            backed_up.sort();
            let mut expected: Vec<String> = vms.iter().map(|v| v.0.clone()).collect();
            expected.sort();
            assert_eq!(backed_up, expected);
        });
        for vm in &vms {
            assert!(lab.vm(vm).unwrap().snapshots.is_empty());
            assert!(lab.disabled_methods(vm).unwrap().is_empty());
        }
    }

    /// A backup of one VM, as the API takes it.
    fn one_vm_backup(vm: &str) -> BackupJobRequest {
        BackupJobRequest {
            vms: vec![VmSpec {
                vm: vm.to_owned(),
                quiesce: false,
            }],
            group: None,
            independent: false,
            idempotency_key: None,
            priority: 0,
            full: false,
            require_vmservice: false,
            prepare_access: true,
        }
    }

    /// Waits up to a minute for `path` (a pause point's marker) to exist; `what` otherwise.
    fn wait_for_file(path: &Path, what: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !path.exists() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// SIGTERM cancels the running jobs at once, also while a client follows one's events
    /// (the server's graceful stop waits for that connection, which ends with the job).
    #[test]
    fn sigterm_cancels_a_running_job_whose_events_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, lab, vm, disk) = lab_with_vm(dir.path(), "term-1");
        lab.guest_write(&vm, disk, 0, &[7u8; 65536]).unwrap();
        let (_, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let pause = dir.path().join("pause");
        std::fs::create_dir_all(&pause).unwrap();
        // (The second point only marks that the signal was seen: its `.go` is there.)
        std::fs::write(pause.join("serve-stopping.go"), b"").unwrap();
        let mut cmd = agent(&["serve", "--config"]);
        cmd.arg(&config)
            .env("VADP_AGENT_PAUSE_AT", "backup-mid-disk,serve-stopping")
            .env("VADP_AGENT_PAUSE_DIR", &pause);
        let (mut daemon, base) = start(cmd);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
        let request = one_vm_backup(&vm.0);
        let job = rt.block_on(client.backup(&request)).unwrap();
        let followed = rt.spawn({
            let client = client.clone();
            async move { follow(&client, &job.id).await }
        });
        let reached = pause.join("backup-mid-disk.reached");
        wait_for_file(&reached, "the backup never read");
        let pid = i32::try_from(daemon.0.id()).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid, no memory involved.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0);
        let stopping = pause.join("serve-stopping.reached");
        wait_for_file(&stopping, "SIGTERM not seen");
        std::fs::write(pause.join("backup-mid-disk.go"), b"").unwrap();
        let (_, ended) = rt.block_on(followed).unwrap();
        assert_ne!(
            ended.state,
            JobState::Succeeded,
            "the job ran on after SIGTERM"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let status = loop {
            if let Some(status) = daemon.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
        assert!(lab.vm(&vm).unwrap().snapshots.is_empty());
        assert!(lab.disabled_methods(&vm).unwrap().is_empty());
    }

    /// A synchronous verify under way when the daemon is told to stop is stopped (503
    /// `stopping`, nothing repaired) rather than holding the server's graceful stop until
    /// it ends.
    #[test]
    fn sigterm_stops_a_synchronous_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, lab, vm, disk) = lab_with_vm(dir.path(), "term-2");
        lab.guest_write(&vm, disk, 0, &[9u8; 65536]).unwrap();
        let (_, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        backup_through_a_daemon(&config, &vm.0);
        let pause = dir.path().join("pause");
        std::fs::create_dir_all(&pause).unwrap();
        std::fs::write(pause.join("serve-stopping.go"), b"").unwrap();
        let mut cmd = agent(&["serve", "--config"]);
        cmd.arg(&config)
            .env("VADP_AGENT_PAUSE_AT", "api-verify-started,serve-stopping")
            .env("VADP_AGENT_PAUSE_DIR", &pause);
        let (mut daemon, base) = start(cmd);
        // Two workers: the verify's request runs while this thread waits for its files.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
        let verifying = rt.spawn({
            let client = client.clone();
            async move { client.verify().await }
        });
        wait_for_file(
            &pause.join("api-verify-started.reached"),
            "the verify never started",
        );
        let pid = i32::try_from(daemon.0.id()).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid, no memory involved.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0);
        wait_for_file(&pause.join("serve-stopping.reached"), "SIGTERM not seen");
        std::fs::write(pause.join("api-verify-started.go"), b"").unwrap();
        let e = rt.block_on(verifying).unwrap().unwrap_err();
        assert_eq!(e.status(), Some(503), "{e}");
        assert!(e.to_string().contains("stopping"), "{e}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let status = loop {
            if let Some(status) = daemon.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
    }

    /// `POST /v1/repository/prune` removes nothing while this machine's clock differs from
    /// vCenter's (a dry run still answers), as the policies' retention waits.
    #[test]
    fn a_prune_waits_for_the_clocks_to_agree() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, lab, _vm, _disk) = lab_with_vm(dir.path(), "clock-2");
        lab.update_settings(|s| s.clock_offset_secs = -7 * 86_400)
            .unwrap();
        let (_, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let mut cmd = agent(&["serve", "--config"]);
        cmd.arg(&config);
        let (_daemon, base) = start(cmd);
        let rt = runtime();
        let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
        let request = |dry_run| plugin_api::types::PruneRequest {
            keep_last: 1,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            min_age_days: 3,
            dry_run,
        };
        // The daemon compares the clocks at its start; until then a prune is allowed (and
        // this repository has nothing to remove).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let refused = loop {
            match rt.block_on(client.prune(&request(false))) {
                Err(plugin_api::ApiError::Status {
                    status,
                    code,
                    message,
                    ..
                }) => {
                    break (status, code, message);
                }
                Ok(_) => {
                    assert!(std::time::Instant::now() < deadline, "prune never refused");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(refused.0, 409, "{refused:?}");
        assert_eq!(refused.1, "clock_untrusted", "{refused:?}");
        assert!(refused.2.contains("nothing removed"), "{refused:?}");
        assert!(rt.block_on(client.prune(&request(true))).is_ok());
    }

    /// A client's cancel of a backup that is reading its disk ends the job `cancelled`
    /// (not `failed`), its snapshot removed and its access ended, and the VM cut off is
    /// not counted as a failed VM.
    #[test]
    fn a_backup_cancelled_while_it_reads_ends_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, lab, vm, disk) = lab_with_vm(dir.path(), "cancel-1");
        lab.guest_write(&vm, disk, 0, &[9u8; 65536]).unwrap();
        let (_, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let pause = dir.path().join("pause");
        std::fs::create_dir_all(&pause).unwrap();
        let mut cmd = agent(&["serve", "--config"]);
        cmd.arg(&config)
            .env("VADP_AGENT_PAUSE_AT", "backup-mid-disk")
            .env("VADP_AGENT_PAUSE_DIR", &pause);
        let (_daemon, base) = start(cmd);
        let rt = runtime();
        let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
        let job = rt.block_on(client.backup(&one_vm_backup(&vm.0))).unwrap();
        wait_for_file(
            &pause.join("backup-mid-disk.reached"),
            "the backup never read",
        );
        rt.block_on(client.cancel(&job.id)).unwrap();
        std::fs::write(pause.join("backup-mid-disk.go"), b"").unwrap();
        let (_, ended) = rt.block_on(follow(&client, &job.id));
        assert_eq!(ended.state, JobState::Cancelled, "{ended:?}");
        assert!(
            ended
                .error
                .as_deref()
                .unwrap_or_default()
                .starts_with("cancelled"),
            "{ended:?}"
        );
        assert!(lab.vm(&vm).unwrap().snapshots.is_empty());
        assert!(lab.disabled_methods(&vm).unwrap().is_empty());
        let metrics = rt.block_on(client.metrics()).unwrap();
        assert!(
            metrics.contains("vadp_agent_vm_failures_total 0\n"),
            "{metrics}"
        );
    }

    /// A job whose VM another job is backing up waits for it, saying so, instead of
    /// failing (and a scheduled run losing its day): two policies that share a VM, or a
    /// vendor's backup that meets a scheduled one. Meanwhile it lends its slot: with two
    /// jobs at once, a third job, of another VM, runs while the first two are running.
    #[test]
    fn a_second_job_on_the_same_vm_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, lab, vm, disk) = lab_with_vm(dir.path(), "busy-1");
        lab.guest_write(&vm, disk, 0, &[5u8; 65536]).unwrap();
        let other = small_vm(&lab, "busy-2");
        let (_, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let pause = dir.path().join("pause");
        std::fs::create_dir_all(&pause).unwrap();
        let mut cmd = agent(&["serve", "--config"]);
        cmd.arg(&config)
            .env("VADP_AGENT_PAUSE_AT", "backup-mid-disk")
            .env("VADP_AGENT_PAUSE_DIR", &pause);
        let (_daemon, base) = start(cmd);
        let rt = runtime();
        let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
        let request = one_vm_backup(&vm.0);
        let first = rt.block_on(client.backup(&request)).unwrap();
        wait_for_file(
            &pause.join("backup-mid-disk.reached"),
            "the backup never read",
        );
        let second = rt.block_on(client.backup(&request)).unwrap();
        // Its events say it waits, and why.
        let waiting = rt.block_on(first_event(&client, &second.id, "waiting"));
        let reason = waiting["reason"].as_str().unwrap().to_owned();
        assert!(
            reason.contains("backup job") && reason.contains("is working on it now"),
            "{reason}"
        );
        assert_eq!(
            rt.block_on(client.job(&second.id)).unwrap().state,
            JobState::Running
        );
        // Two jobs at once (`concurrent_jobs = 2`), and the second waits with nothing to do:
        // a third, of another VM, starts in its place and reads its disk.
        let third = rt
            .block_on(client.backup(&one_vm_backup(&other.0)))
            .unwrap();
        rt.block_on(first_event(&client, &third.id, "disk_started"));
        assert_eq!(
            rt.block_on(client.job(&first.id)).unwrap().state,
            JobState::Running
        );
        // The first ends; the second runs after it and succeeds.
        std::fs::write(pause.join("backup-mid-disk.go"), b"").unwrap();
        let (_, a) = rt.block_on(follow(&client, &first.id));
        assert_eq!(a.state, JobState::Succeeded, "{:?}", a.error);
        let (_, c) = rt.block_on(follow(&client, &third.id));
        assert_eq!(c.state, JobState::Succeeded, "{:?}", c.error);
        let (events, b) = rt.block_on(follow(&client, &second.id));
        assert_eq!(b.state, JobState::Succeeded, "{:?}", b.error);
        // One engine job that waited, not one failed job per try.
        let count = |name: &str| events.iter().filter(|e| *e == name).count();
        assert_eq!(count("job_started"), 1, "{events:?}");
        assert_eq!(count("job_finished"), 1, "{events:?}");
        assert!(count("waiting") >= 1, "{events:?}");
        assert!(lab.vm(&vm).unwrap().snapshots.is_empty());
        assert!(lab.disabled_methods(&vm).unwrap().is_empty());
    }

    /// An independent job through the API: the VM that is not there fails alone, the other
    /// is backed up, and its point stands alone (no companions missing, unlike a group's).
    #[test]
    fn an_independent_api_job_backs_up_the_vms_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, lab, vm, disk) = lab_with_vm(dir.path(), "indep-1");
        lab.guest_write(&vm, disk, 0, &[5u8; 65536]).unwrap();
        let (_, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let (_daemon, base) = serve(&config);
        let rt = runtime();
        let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
        let mut request = one_vm_backup(&vm.0);
        request.vms.push(VmSpec {
            vm: "vm-999999".into(),
            quiesce: false,
        });
        // A consistency group (the default): refused whole, no point.
        let job = rt.block_on(client.backup(&request)).unwrap();
        let (_, ended) = rt.block_on(follow(&client, &job.id));
        assert_eq!(ended.state, JobState::Failed, "{:?}", ended.error);
        assert!(rt.block_on(client.points()).unwrap().points.is_empty());
        request.independent = true;
        let job = rt.block_on(client.backup(&request)).unwrap();
        let (names, ended) = rt.block_on(follow(&client, &job.id));
        assert_eq!(ended.state, JobState::Failed, "{:?}", ended.error);
        assert!(names.iter().any(|n| n == "vm_failed"), "{names:?}");
        let result = ended.result.unwrap();
        let points = rt.block_on(client.points()).unwrap().points;
        assert_eq!(points.len(), 1, "{points:?}");
        assert_eq!(points[0].vm, vm.0);
        assert_eq!(points[0].job.as_deref(), result["job"].as_str());
        assert!(points[0].group_failed.is_empty(), "{points:?}");
        let one = rt.block_on(client.point(&points[0].id)).unwrap();
        assert_eq!(one.job, points[0].job);
        assert!(
            result["vms"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["vm"] == "vm-999999" && v["error"].is_string()),
            "{result}"
        );
        assert!(lab.vm(&vm).unwrap().snapshots.is_empty());
    }

    /// After a crash, the start-up reconcile removes what the interrupted job left before
    /// the queue starts a job queued behind it, on the same VM, and logs what it undid.
    #[test]
    fn a_job_queued_behind_a_crashed_one_runs_after_the_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (lab_root, vcenter, lab, vm, disk) = lab_with_vm(dir.path(), "crash-q");
        lab.guest_write(&vm, disk, 0, &[9u8; 65536]).unwrap();
        let (_, config) = prepare_agent(dir.path(), &lab_root, &vcenter);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("concurrent_jobs = 2", "concurrent_jobs = 1");
        std::fs::write(&config, text).unwrap();
        let pause = dir.path().join("pause");
        std::fs::create_dir_all(&pause).unwrap();
        let mut cmd = agent(&["serve", "--config"]);
        cmd.arg(&config)
            .env("VADP_AGENT_PAUSE_AT", "backup-mid-disk")
            .env("VADP_AGENT_PAUSE_DIR", &pause);
        let (mut first, base) = start(cmd);
        let rt = runtime();
        let request = one_vm_backup(&vm.0);
        let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
        rt.block_on(client.backup(&request)).unwrap();
        let reached = pause.join("backup-mid-disk.reached");
        wait_for_file(&reached, "the backup never read");
        let queued = rt.block_on(client.backup(&request)).unwrap();
        assert_eq!(queued.state, JobState::Queued);
        // The agent dies mid-backup: its snapshot and PrepareForAccess stay in vSphere.
        first.0.kill().unwrap();
        first.0.wait().unwrap();
        assert!(!lab.vm(&vm).unwrap().snapshots.is_empty());
        let log = dir.path().join("second.log");
        let (_second, base) = serve_with(&config, std::fs::File::create(&log).unwrap(), None);
        let client = Client::new(&base, Some(Token::new(TOKEN))).unwrap();
        let (_, ended) = rt.block_on(follow(&client, &queued.id));
        assert_eq!(ended.state, JobState::Succeeded, "{:?}", ended.error);
        assert!(lab.vm(&vm).unwrap().snapshots.is_empty());
        assert!(lab.disabled_methods(&vm).unwrap().is_empty());
        // The start-up reconcile says what it undid (not "clean").
        let text = std::fs::read_to_string(&log).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("reconcile at start-up"))
            .unwrap_or_else(|| panic!("no start-up reconcile logged: {text}"));
        assert!(
            line.contains("undid what interrupted jobs left")
                && line.contains("snapshots_removed=1")
                && line.contains("access_ended=1"),
            "{line}"
        );
    }
}
