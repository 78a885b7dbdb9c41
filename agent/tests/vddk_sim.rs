//! The VDDK layer against the simulator (`vddk-sim`), loaded through the real `dlopen` path,
//! over a lab created with the `lab` crate.
//!
//! InitEx is process-global, so the whole binary shares one [`Vddk`] and one lab (each test
//! makes its own VM). Process-global behaviour (a second InitEx, Exit) is tested in
//! `vddk_process.rs`.

#[cfg(test)]
mod tests {

    use std::sync::{Mutex, OnceLock};

    use lab::Lab;
    use lab::vmstate::{DiskKey, NewDisk, VmMoref};
    use vadp_agent::vddk::{
        ConnectSpec, Connection, Credentials, DiskLibError, OpenFlags, Secret, TransportMode, Vddk,
        VixCode,
    };
    use vadp_tests::{SimVariant, vddk_sim_libdir};

    const MIB: u64 = 1 << 20;

    struct Sim {
        /// The lab's vCenter over HTTPS: vddk-sim's control plane talks to it.
        _vcenter: lab::vcenter::InProcessVcenter,
        lab: Lab,
        vddk: Vddk,
        /// Serialises lab mutations and connections made by this binary.
        lab_lock: Mutex<()>,
    }

    /// Creates a lab, starts its vCenter, writes a config file naming the lab, and
    /// initialises VDDK from the v8 simulator.
    fn sim() -> &'static Sim {
        static SIM: OnceLock<Sim> = OnceLock::new();
        SIM.get_or_init(|| {
            let libdir = vddk_sim_libdir(SimVariant::Vddk8);
            let tmp = vadp_tests::target_dir().join("tmp");
            std::fs::create_dir_all(&tmp).unwrap();
            // Kept for the life of the process (a static is never dropped).
            let dir = tempfile::Builder::new()
                .prefix("vddk-sim-test")
                .tempdir_in(&tmp)
                .unwrap()
                .keep();
            let root = dir.join("lab");
            let lab = Lab::create(&root).unwrap();
            let vcenter = lab::vcenter::InProcessVcenter::start(&root, false).unwrap();
            let config = dir.join("vddk.conf");
            std::fs::write(&config, format!("vadp.lab.root = \"{}\"\n", root.display())).unwrap();
            let vddk = Vddk::load(&libdir, Some(&config)).unwrap();
            Sim {
                _vcenter: vcenter,
                lab,
                vddk,
                lab_lock: Mutex::new(()),
            }
        })
    }

    impl Sim {
        /// A new VM with one disk of `capacity` bytes; returns it and its disk's path.
        fn vm(&self, name: &str, capacity: u64, thin: bool) -> (VmMoref, String) {
            let _g = self.lab_lock.lock().unwrap();
            let vm = self
                .lab
                .create_vm(
                    name,
                    "vm",
                    &[NewDisk {
                        capacity_bytes: capacity,
                        thin,
                        fcd: false,
                    }],
                )
                .unwrap();
            let path = self.lab.vm(&vm).unwrap().disks[0].file_name.to_string();
            (vm, path)
        }

        fn snapshot(&self, vm: &VmMoref, name: &str) -> lab::vmstate::SnapshotMoref {
            let _g = self.lab_lock.lock().unwrap();
            self.lab.create_snapshot(vm, name, "").unwrap()
        }

        /// Connects, excluding this binary's lab mutations.
        fn connect(&self, spec: &ConnectSpec) -> Result<Connection, DiskLibError> {
            let _g = self.lab_lock.lock().unwrap();
            self.vddk.connect(spec)
        }

        /// Runs PrepareForAccess/EndAccess, excluding lab mutations.
        fn access(&self, f: impl FnOnce() -> Result<(), DiskLibError>) -> Result<(), DiskLibError> {
            let _g = self.lab_lock.lock().unwrap();
            f()
        }

        fn key(&self, vm: &VmMoref) -> DiskKey {
            self.lab.vm(vm).unwrap().disks[0].key
        }

        fn spec(&self, vm: &VmMoref, snapshot: Option<&str>, read_only: bool) -> ConnectSpec {
            let s = self.lab.settings().unwrap();
            ConnectSpec {
                server: s.server_name,
                port: None,
                thumbprint: Some(s.thumbprint),
                credentials: Credentials::Password {
                    user: s.user,
                    password: Secret::new(s.password),
                },
                vm: vm.0.clone(),
                snapshot: snapshot.map(str::to_owned),
                transport_modes: vec![TransportMode::NbdSsl, TransportMode::Nbd],
                read_only,
            }
        }
    }

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                seed.wrapping_add(u8::try_from(i % 251).expect("< 251"))
                    .wrapping_mul(31)
            })
            .collect()
    }

    fn vix(err: &DiskLibError) -> VixCode {
        err.vix_code()
            .unwrap_or_else(|| panic!("expected a VIX error, got {err}"))
    }

    #[test]
    fn write_a_pattern_and_read_it_back() {
        let sim = sim();
        let (vm, path) = sim.vm("rw-1", 8 * MIB, false);
        let conn = sim.connect(&sim.spec(&vm, None, false)).unwrap();
        let disk = conn.open(&path, OpenFlags::NONE).unwrap();
        let info = disk.info().unwrap();
        assert_eq!(info.capacity_bytes, 8 * MIB);
        assert_eq!(info.logical_sector_size, 512);
        assert!(!disk.transport_mode().is_empty());

        let chunks = [
            (0_u64, 4096_usize, 1_u8),
            (MIB, 65536, 2),
            (8 * MIB - 512, 512, 3),
        ];
        for (offset, len, seed) in chunks {
            disk.write_at(offset, &pattern(seed, len)).unwrap();
        }
        disk.flush().unwrap();
        for (offset, len, seed) in chunks {
            let mut buf = vec![0; len];
            disk.read_at(offset, &mut buf).unwrap();
            assert!(buf == pattern(seed, len), "data at {offset} differs");
        }
        // Untouched areas of a fresh disk read as zeros.
        let mut buf = vec![0xff; 4096];
        disk.read_at(2 * MIB, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
        // The guest sees what we wrote.
        drop(disk);
        drop(conn);
    }

    /// What VDDK wrote is what the VMDK on the datastore holds, as an independent reader
    /// (qemu-img) sees it: the lab's disks are real VMDK descriptors over flat extents.
    #[test]
    fn qemu_img_sees_what_vddk_wrote() {
        let sim = sim();
        let capacity = 16 * MIB;
        let (vm, path) = sim.vm("qemu-1", capacity, true);
        let conn = sim.connect(&sim.spec(&vm, None, false)).unwrap();
        let disk = conn.open(&path, OpenFlags::NONE).unwrap();

        // A raw image with data, text-like runs and holes, written to both.
        let mut image = vec![0_u8; usize::try_from(capacity).unwrap()];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for (i, chunk) in image.chunks_mut(usize::try_from(MIB).unwrap()).enumerate() {
            match i % 4 {
                0 => {} // hole: never written through VDDK
                1 => chunk.iter_mut().for_each(|b| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *b = state.to_le_bytes()[0];
                }),
                2 => chunk.copy_from_slice(&pattern(u8::try_from(i).unwrap(), chunk.len())),
                _ => chunk[..512].fill(0xab), // a single sector in an otherwise empty MiB
            }
        }
        for (i, chunk) in image.chunks(usize::try_from(MIB).unwrap()).enumerate() {
            if i % 4 != 0 {
                disk.write_at(u64::try_from(i).unwrap() * MIB, chunk)
                    .unwrap();
            }
        }
        disk.flush().unwrap();
        drop(disk);
        drop(conn);

        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("expected.raw");
        std::fs::write(&raw, &image).unwrap();
        let vmdk = lab::datastore::DatastorePath::parse(&path)
            .unwrap()
            .resolve(sim.lab.root());
        let out = std::process::Command::new("qemu-img")
            .args(["compare", "-f", "vmdk", "-F", "raw"])
            .arg(&vmdk)
            .arg(&raw)
            .output()
            .expect("qemu-img runs (Debian package qemu-utils)");
        assert!(
            out.status.success(),
            "qemu-img compare: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("identical"));

        // And a difference is reported: flip one byte of the expected image.
        let mut changed = image;
        changed[usize::try_from(5 * MIB + 77).unwrap()] ^= 1;
        std::fs::write(&raw, &changed).unwrap();
        let out = std::process::Command::new("qemu-img")
            .args(["compare", "-f", "vmdk", "-F", "raw"])
            .arg(&vmdk)
            .arg(&raw)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "qemu-img must see the difference"
        );
    }

    #[test]
    fn a_snapshot_view_stays_fixed_while_the_live_disk_changes() {
        let sim = sim();
        let (vm, _) = sim.vm("snap-1", 4 * MIB, false);
        let key = sim.key(&vm);
        let a = pattern(10, 65536);
        sim.lab.guest_write(&vm, key, MIB, &a).unwrap();
        let snap = sim.snapshot(&vm, "backup");
        let snap_file = sim.lab.snapshot(&vm, &snap).unwrap().disks[0]
            .file_name
            .to_string();

        let conn = sim.connect(&sim.spec(&vm, Some(&snap.0), true)).unwrap();
        let disk = conn.open(&snap_file, OpenFlags::READ_ONLY).unwrap();
        let mut buf = vec![0; a.len()];
        disk.read_at(MIB, &mut buf).unwrap();
        assert!(
            buf == a,
            "snapshot does not show the data written before it"
        );

        // The guest keeps writing to the live disk (the snapshot's child).
        let b = pattern(20, 65536);
        sim.lab.guest_write(&vm, key, MIB, &b).unwrap();
        disk.read_at(MIB, &mut buf).unwrap();
        assert!(buf == a, "snapshot view changed with the live disk");

        // The live disk shows the new data.
        let live_path = sim.lab.vm(&vm).unwrap().disks[0].file_name.to_string();
        let live = sim.connect(&sim.spec(&vm, None, true)).unwrap();
        let live_disk = live.open(&live_path, OpenFlags::READ_ONLY).unwrap();
        live_disk.read_at(MIB, &mut buf).unwrap();
        assert!(buf == b, "live disk does not show the guest's write");
    }

    #[test]
    fn changed_areas_since_a_change_id_read_back_through_vddk() {
        let sim = sim();
        let (vm, _) = sim.vm("cbt-1", 16 * MIB, true);
        let key = sim.key(&vm);
        sim.lab.set_change_tracking(&vm, true).unwrap();
        sim.lab
            .guest_write(&vm, key, 0, &pattern(1, 65536))
            .unwrap();
        let first = sim.snapshot(&vm, "full");
        let change_id = sim.lab.snapshot(&vm, &first).unwrap().disks[0]
            .change_id
            .clone()
            .expect("CBT is on: the snapshot has a changeId");

        let writes = [
            (3 * MIB, pattern(2, 65536)),
            (9 * MIB + 4096, pattern(3, 8192)),
        ];
        for (offset, data) in &writes {
            sim.lab.guest_write(&vm, key, *offset, data).unwrap();
        }
        let second = sim.snapshot(&vm, "incremental");
        let areas = sim
            .lab
            .changed_areas(&vm, Some(&second), key, &change_id)
            .unwrap();
        assert!(!areas.is_empty());
        for (offset, data) in &writes {
            let end = offset + data.len() as u64;
            assert!(
                areas.iter().any(|(o, l)| o <= offset && end <= o + l),
                "write at {offset} not in changed areas {areas:?}"
            );
        }
        assert!(
            !areas.iter().any(|(o, _)| *o < 65536),
            "area before the changeId reported: {areas:?}"
        );

        // Read exactly the changed areas of the second snapshot through VDDK.
        let file = sim.lab.snapshot(&vm, &second).unwrap().disks[0]
            .file_name
            .to_string();
        let conn = sim.connect(&sim.spec(&vm, Some(&second.0), true)).unwrap();
        let disk = conn.open(&file, OpenFlags::READ_ONLY).unwrap();
        for (offset, data) in &writes {
            let mut buf = vec![0; data.len()];
            disk.read_at(*offset, &mut buf).unwrap();
            assert!(&buf == data, "changed data at {offset} differs");
        }
    }

    #[test]
    fn async_batches_complete_every_request() {
        let sim = sim();
        let (vm, path) = sim.vm("async-1", 8 * MIB, false);
        let conn = sim.connect(&sim.spec(&vm, None, false)).unwrap();
        let disk = conn.open(&path, OpenFlags::NONE).unwrap();
        // On its own vddk-io thread, as the backup pipeline will use it.
        let handle = disk
            .spawn_io("async-1/disk-0", |disk| {
                assert_eq!(
                    std::thread::current().name(),
                    Some("vddk-io/async-1/disk-0")
                );
                let data: Vec<(u64, Vec<u8>)> = (0..16_u8)
                    .map(|i| (u64::from(i) * 256 * 1024, pattern(i, 65536)))
                    .collect();
                let writes: Vec<(u64, &[u8])> =
                    data.iter().map(|(o, d)| (*o, d.as_slice())).collect();
                disk.write_batch(&writes).unwrap();
                disk.flush().unwrap();

                let mut bufs: Vec<Vec<u8>> = data.iter().map(|(_, d)| vec![0; d.len()]).collect();
                let mut reads: Vec<(u64, &mut [u8])> = data
                    .iter()
                    .zip(bufs.iter_mut())
                    .map(|((o, _), b)| (*o, b.as_mut_slice()))
                    .collect();
                disk.read_batch(&mut reads).unwrap();
                for ((offset, expected), got) in data.iter().zip(&bufs) {
                    assert!(got == expected, "async read at {offset} differs");
                }

                // A failing request among good ones: its completion carries the error.
                let mut good = vec![0; 4096];
                let mut bad = vec![0; 4096];
                let mut reads: Vec<(u64, &mut [u8])> =
                    vec![(0, good.as_mut_slice()), (8 * MIB, bad.as_mut_slice())];
                let err = disk.read_batch(&mut reads).unwrap_err();
                (err.vix_code(), err.to_string())
            })
            .unwrap();
        let (code, text) = handle.join().unwrap();
        assert_eq!(code, Some(VixCode(16007)), "{text}");
        assert!(text.contains(&format!("offset {}", 8 * MIB)), "{text}");
    }

    #[test]
    fn allocated_extents_follow_written_areas() {
        let sim = sim();
        let (vm, path) = sim.vm("alloc-1", 64 * MIB, true);
        let key = sim.key(&vm);
        sim.lab
            .guest_write(&vm, key, 5 * MIB, &pattern(7, 65536))
            .unwrap();
        let conn = sim.connect(&sim.spec(&vm, None, true)).unwrap();
        let disk = conn.open(&path, OpenFlags::READ_ONLY).unwrap();
        let extents = disk.allocated_extents(0, 64 * MIB).unwrap();
        assert!(
            extents
                .iter()
                .any(|e| e.offset <= 5 * MIB && 5 * MIB + 65536 <= e.offset + e.length),
            "{extents:?}"
        );
        let total: u64 = extents.iter().map(|e| e.length).sum();
        assert!(
            total < 64 * MIB,
            "thin disk reported fully allocated: {extents:?}"
        );
    }

    /// The backup's disk source over a connection that is lost: an allocated-blocks query
    /// (the map a full backup reads by when vSphere's changed areas are not to be had) is
    /// made again on a new connection rather than answered with the whole disk, and so is
    /// a read; a query whose connection cannot be had back falls back to the whole disk.
    #[test]
    fn a_disk_source_connects_again_when_its_connection_is_lost() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;
        use vadp_agent::engine::VddkSource;
        use vadp_agent::repo::{DiskSource as _, Extent};

        let sim = sim();
        let (vm, path) = sim.vm("flaky-source", 64 * MIB, true);
        let data = pattern(9, 65536);
        sim.lab
            .guest_write(&vm, sim.key(&vm), 5 * MIB, &data)
            .unwrap();
        let spec = sim.spec(&vm, None, true);
        let source = |opens: &Arc<AtomicUsize>| {
            let disk = sim
                .connect(&spec)
                .unwrap()
                .open(&path, OpenFlags::READ_ONLY)
                .unwrap();
            let (opens, spec, path) = (Arc::clone(opens), spec.clone(), path.clone());
            let reopen = Box::new(move || {
                opens.fetch_add(1, Ordering::SeqCst);
                let _g = sim.lab_lock.lock().unwrap();
                sim.vddk.connect(&spec)?.open(&path, OpenFlags::READ_ONLY)
            });
            VddkSource::new(disk, 64 * MIB, tokio_util::sync::CancellationToken::new())
                .retrying(reopen, vec![Duration::from_millis(10); 3])
        };
        let opens = Arc::new(AtomicUsize::new(0));
        let expected = source(&opens).allocated_extents().unwrap();
        assert!(
            expected.iter().map(|e| e.length).sum::<u64>() < 64 * MIB,
            "{expected:?}"
        );

        // The first two opens lose their connection at their first call.
        sim.lab.lose_vddk_connections(&vm, 2, 0).unwrap();
        let mut flaky = source(&opens);
        assert_eq!(flaky.allocated_extents().unwrap(), expected);
        assert_eq!(opens.load(Ordering::SeqCst), 2, "connected again twice");
        sim.lab.lose_vddk_connections(&vm, 1, 0).unwrap();
        let mut got = vec![0u8; data.len()];
        let mut flaky = source(&opens);
        flaky.read_at(5 * MIB, &mut got).unwrap();
        assert_eq!(got, data);
        assert_eq!(opens.load(Ordering::SeqCst), 3);

        // Every connection lost: the query gives up after three retries and the backup
        // reads the whole disk, which is still correct.
        sim.lab.lose_vddk_connections(&vm, 10, 0).unwrap();
        let whole = source(&opens).allocated_extents().unwrap();
        assert_eq!(
            whole,
            [Extent {
                offset: 0,
                length: 64 * MIB
            }]
        );
        assert_eq!(opens.load(Ordering::SeqCst), 6);
        sim.lab.lose_vddk_connections(&vm, 0, 0).unwrap();
    }

    #[test]
    fn metadata_round_trip() {
        let sim = sim();
        let (vm, path) = sim.vm("meta-1", MIB, false);
        let conn = sim.connect(&sim.spec(&vm, None, false)).unwrap();
        let disk = conn.open(&path, OpenFlags::NONE).unwrap();
        disk.write_metadata("vadp.test", "value-42").unwrap();
        assert_eq!(disk.read_metadata("vadp.test").unwrap(), "value-42");
        let keys = disk.metadata_keys().unwrap();
        assert!(keys.iter().any(|k| k == "vadp.test"), "{keys:?}");
        let err = disk.read_metadata("no.such.key").unwrap_err();
        assert_eq!(vix(&err).name(), Some("VIX_E_DISK_KEY_NOTFOUND"), "{err}");
    }

    #[test]
    #[allow(
        unsafe_code,
        reason = "calls the raw API once to test the simulator's own check"
    )]
    fn each_error_case_has_its_vix_code() {
        let sim = sim();
        let (vm, path) = sim.vm("err-1", MIB, false);
        let spec = sim.spec(&vm, None, true);
        let conn = sim.connect(&spec).unwrap();
        let disk = conn.open(&path, OpenFlags::READ_ONLY).unwrap();

        // Out of range.
        let mut buf = vec![0; 1024];
        let err = disk.read_at(MIB - 512, &mut buf).unwrap_err();
        assert_eq!(vix(&err).name(), Some("VIX_E_DISK_OUTOFRANGE"), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("VixDiskLib_Read") && text.contains(&vm.0) && text.contains(&path),
            "{text}"
        );
        assert!(!err.is_retryable());

        // Misaligned: caught before VDDK is called.
        let err = disk.read_at(100, &mut buf).unwrap_err();
        assert!(
            matches!(
                err,
                DiskLibError::Misaligned {
                    offset: 100,
                    len: 1024,
                    ..
                }
            ),
            "{err}"
        );

        // The simulator's own alignment rule, through the raw API: QueryAllocatedBlocks with a
        // start that is not a whole chunk.
        {
            let lib_path = sim.vddk.library().path().to_path_buf();
            // SAFETY: the same file is already loaded (dlopen returns the same object); only a
            // symbol lookup happens here.
            let raw = unsafe { vddk_sys::VixDiskLib::new(&lib_path) }.unwrap();
            let mut list: *mut vddk_sys::VixDiskLibBlockList = std::ptr::null_mut();
            // SAFETY: the handle is open and owned by this thread; `list` is a valid out-pointer.
            let code = unsafe {
                raw.VixDiskLib_QueryAllocatedBlocks(
                    disk.as_raw_handle(),
                    3,
                    128,
                    128,
                    &raw mut list,
                )
            };
            assert_eq!(VixCode::from_raw(code).name(), Some("VIX_E_INVALID_ARG"));
            assert!(list.is_null());
        }

        // Write on a read-only connection and handle.
        let err = disk.write_at(0, &[0; 512]).unwrap_err();
        assert_eq!(vix(&err).name(), Some("VIX_E_FILE_READ_ONLY"), "{err}");

        // Unknown path.
        let err = conn
            .open("[ds1] err-1/no-such-disk.vmdk", OpenFlags::READ_ONLY)
            .unwrap_err();
        assert_eq!(vix(&err).name(), Some("VIX_E_FILE_NOT_FOUND"), "{err}");

        // Wrong credentials: ConnectEx fails; the password appears nowhere.
        let wrong = ConnectSpec {
            credentials: Credentials::Password {
                user: "administrator@vsphere.local".into(),
                password: Secret::new("wrong-password-xyzzy"),
            },
            ..spec.clone()
        };
        let err = sim.connect(&wrong).unwrap_err();
        assert_eq!(vix(&err).name(), Some("VIX_E_AUTHENTICATION_FAIL"), "{err}");
        assert!(!format!("{err} {err:?} {wrong:?}").contains("xyzzy"));

        // Wrong thumbprint: connecting works, Open fails with plain VIX_E_FAIL.
        let bad_thumb = ConnectSpec {
            thumbprint: Some(["00"; 20].join(":")),
            ..spec.clone()
        };
        let conn2 = sim.connect(&bad_thumb).unwrap();
        let err = conn2.open(&path, OpenFlags::READ_ONLY).unwrap_err();
        assert_eq!(vix(&err), VixCode(1), "{err}");

        // Unknown VM.
        let err = sim
            .connect(&ConnectSpec {
                vm: "vm-999999".into(),
                ..spec.clone()
            })
            .unwrap_err();
        assert_eq!(vix(&err).name(), Some("VIX_E_VM_NOT_FOUND"), "{err}");
    }

    #[test]
    fn prepare_and_end_access_toggle_relocation() {
        let sim = sim();
        let (vm, _) = sim.vm("access-1", MIB, false);
        let spec = sim.spec(&vm, None, true);
        sim.access(|| sim.vddk.prepare_for_access(&spec, "vadp-agent"))
            .unwrap();
        let disabled = sim.lab.disabled_methods(&vm).unwrap();
        assert!(
            disabled
                .iter()
                .any(|m| m.method == lab::vmstate::RELOCATE_METHOD),
            "{disabled:?}"
        );
        sim.access(|| sim.vddk.end_access(&spec, "vadp-agent"))
            .unwrap();
        assert!(sim.lab.disabled_methods(&vm).unwrap().is_empty());
        let err = sim
            .vddk
            .prepare_for_access(&spec, &"x".repeat(51))
            .unwrap_err();
        assert!(matches!(err, DiskLibError::IdentityTooLong { len: 51 }));
    }

    #[test]
    fn disks_close_on_their_own_threads_drop() {
        // Many disks opened, used and dropped on different threads: Open/Close stay on
        // vddk-open (the simulator fails an Open/Close that overlaps another).
        let sim = sim();
        let (vm, path) = sim.vm("threads-1", 4 * MIB, false);
        let conn = sim.connect(&sim.spec(&vm, None, true)).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let disk = conn.open(&path, OpenFlags::READ_ONLY).unwrap();
                disk.spawn_io(&format!("threads-1/{i}"), |disk| {
                    let mut buf = vec![0; 65536];
                    for _ in 0..8 {
                        disk.read_at(0, &mut buf).unwrap();
                    }
                })
                .unwrap()
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
