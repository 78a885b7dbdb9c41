//! End to end with `vadp-agent lab serve` running as a child process: a VM created
//! through the lab API is snapshotted through SOAP, guest writes follow,
//! QueryChangedDiskAreas returns exactly the written areas, and VDDK (vddk-sim) reads the
//! pre-write bytes at the snapshot while the live disk has the new ones.

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Child, Command, Stdio};

    use base64::Engine as _;
    use vadp_agent::vddk::{
        ConnectSpec, Credentials as VddkCredentials, OpenFlags, Secret, TransportMode, Vddk,
    };
    use vadp_agent::vsphere::{
        ChangeId, ChangedArea, CreateSnapshot, Credentials, SoapClient, SoapConfig, VmMoref,
    };
    use vadp_tests::{SimVariant, vddk_sim_libdir};

    const KIB64: u64 = 64 * 1024;

    /// Kills the server when the test ends, however it ends.
    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    struct Lab {
        _server: Server,
        base: url::Url,
        sdk: url::Url,
        user: String,
        password: String,
    }

    fn serve(root: &std::path::Path) -> Lab {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
            .args([
                "lab",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "--root",
            ])
            .arg(root)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start vadp-agent lab serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let server = Server(child);
        let mut fields = std::collections::HashMap::new();
        for line in BufReader::new(stdout).lines().take(5) {
            let line = line.expect("read the server's output");
            if let Some((k, v)) = line.split_once(": ") {
                fields.insert(k.to_owned(), v.to_owned());
            }
        }
        let sdk: url::Url = fields["sdk_url"].parse().expect("sdk url");
        let mut base = sdk.clone();
        base.set_path("/");
        Lab {
            _server: server,
            base,
            sdk,
            user: fields["user"].clone(),
            password: fields["password"].clone(),
        }
    }

    fn post(
        rt: &tokio::runtime::Runtime,
        lab: &Lab,
        http: &reqwest::Client,
        path: &str,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        let request = http
            .post(lab.base.join(path).unwrap())
            .basic_auth(&lab.user, Some(&lab.password))
            .header("content-type", "application/json")
            .body(body.to_string());
        rt.block_on(async {
            let response = request.send().await.unwrap();
            let status = response.status();
            let bytes = response.bytes().await.unwrap();
            assert!(status.is_success(), "{path}: {status} {bytes:?}");
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
        })
    }

    fn guest_write(
        rt: &tokio::runtime::Runtime,
        lab: &Lab,
        http: &reqwest::Client,
        vm: &VmMoref,
        offset: u64,
        byte: u8,
    ) {
        let data = base64::engine::general_purpose::STANDARD.encode(vec![byte; 65536]);
        post(
            rt,
            lab,
            http,
            &format!("/lab/vms/{vm}/disks/2000/write"),
            &serde_json::json!({"offset": offset, "data": data}),
        );
    }

    #[test]
    fn snapshot_cbt_and_vddk_through_lab_serve() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lab");
        let lab = serve(&root);
        // VDDK first (InitEx before any runtime), over the same lab root.
        let config = dir.path().join("vddk.conf");
        std::fs::write(&config, format!("vadp.lab.root = \"{}\"\n", root.display())).unwrap();
        let vddk = Vddk::load(&vddk_sim_libdir(SimVariant::Vddk8), Some(&config)).unwrap();

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let http = reqwest::Client::new();
        let created = post(
            &rt,
            &lab,
            &http,
            "/lab/vms",
            &serde_json::json!({"name": "e2e", "folder": "/dc1/vm/Namespaces/e2e-ns",
                "disks": [{"capacity_bytes": 4 << 20, "thin": true}]}),
        );
        let vm = VmMoref::from(created["vm"].as_str().unwrap());
        guest_write(&rt, &lab, &http, &vm, 0, 0x11);

        let mut config = SoapConfig::new(lab.sdk.clone());
        config.allow_plain_http = true;
        config.credentials = Some(Credentials::new(&lab.user, &lab.password));
        let client = rt.block_on(SoapClient::connect(config)).unwrap();
        assert_eq!(
            rt.block_on(client.list_vms_in_namespace("e2e-ns")).unwrap(),
            vec![(vm.clone(), "e2e".to_owned())]
        );
        rt.block_on(client.enable_cbt(&vm, "vadp-agent test: enable CBT", |_| {}))
            .unwrap();
        let s1 = rt
            .block_on(client.create_snapshot(&vm, &CreateSnapshot::backup("b1", ""), |_| {}))
            .unwrap();
        let d1 = rt.block_on(client.snapshot_disks(&s1)).unwrap().remove(0);
        let c1 = d1.change_id.clone().expect("changeId");

        // Guest writes after the first backup, then the second backup.
        guest_write(&rt, &lab, &http, &vm, 2 * KIB64, 0x22);
        guest_write(&rt, &lab, &http, &vm, 20 * KIB64, 0x22);
        let s2 = rt
            .block_on(client.create_snapshot(&vm, &CreateSnapshot::backup("b2", ""), |_| {}))
            .unwrap();
        let areas = rt
            .block_on(client.query_changed_disk_areas(
                &vm,
                Some(&s2),
                d1.key,
                d1.capacity_bytes,
                &c1,
            ))
            .unwrap();
        assert_eq!(
            areas,
            vec![
                ChangedArea {
                    start_bytes: 2 * KIB64,
                    length_bytes: KIB64
                },
                ChangedArea {
                    start_bytes: 20 * KIB64,
                    length_bytes: KIB64
                },
            ]
        );
        let all = rt
            .block_on(client.query_changed_disk_areas(
                &vm,
                Some(&s1),
                d1.key,
                d1.capacity_bytes,
                &ChangeId::all(),
            ))
            .unwrap();
        assert_eq!(
            all,
            vec![ChangedArea {
                start_bytes: 0,
                length_bytes: KIB64
            }]
        );
        // After snapshot 2 the guest overwrites the same block.
        guest_write(&rt, &lab, &http, &vm, 2 * KIB64, 0x33);
        let d2 = rt.block_on(client.snapshot_disks(&s2)).unwrap().remove(0);
        let live = rt.block_on(client.vm_info(&vm)).unwrap().disks.remove(0);

        let settings: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("lab.json")).unwrap()).unwrap();
        let spec = |snapshot: Option<&str>| ConnectSpec {
            server: "127.0.0.1".into(),
            port: lab.sdk.port(),
            thumbprint: settings["thumbprint"].as_str().map(str::to_owned),
            credentials: VddkCredentials::Password {
                user: lab.user.clone(),
                password: Secret::new(lab.password.clone()),
            },
            vm: vm.to_string(),
            snapshot: snapshot.map(str::to_owned),
            transport_modes: vec![TransportMode::Nbd],
            read_only: true,
        };
        let read = |snapshot: Option<&str>, file: &str, offset: u64| {
            let conn = vddk.connect(&spec(snapshot)).unwrap();
            let disk = conn.open(file, OpenFlags::READ_ONLY).unwrap();
            let mut buf = vec![0u8; 512];
            disk.read_at(offset, &mut buf).unwrap();
            buf[0]
        };
        assert_eq!(
            read(Some(&s2.0), &d2.file_name, 2 * KIB64),
            0x22,
            "snapshot 2 keeps the pre-write bytes"
        );
        assert_eq!(
            read(Some(&s1.0), &d1.file_name, 2 * KIB64),
            0,
            "snapshot 1 predates every write there"
        );
        assert_eq!(read(Some(&s1.0), &d1.file_name, 0), 0x11);
        assert_eq!(
            read(None, &live.file_name, 2 * KIB64),
            0x33,
            "the live disk has the new bytes"
        );
        drop(rt);
        assert!(vddk.shutdown());
    }
}
