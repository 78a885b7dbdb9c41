//! The VDDK layer against the 6.5 build of the simulator (no QueryAllocatedBlocks,
//! FreeBlockList or AllocateConnectParams; 56-byte `VixDiskLibInfo`). A binary of its own
//! because InitEx runs once per process.

#[cfg(test)]
mod tests {

    use lab::Lab;
    use lab::vmstate::NewDisk;
    use vadp_agent::vddk::{ConnectSpec, Credentials, DiskLibError, OpenFlags, Secret, Vddk};
    use vadp_tests::{SimVariant, vddk_sim_libdir};

    #[test]
    fn fallbacks_without_the_optional_functions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lab");
        let lab = Lab::create(&root).unwrap();
        let _vcenter = lab::vcenter::InProcessVcenter::start(&root, true).unwrap();
        let vm = lab
            .create_vm(
                "old-1",
                "vm",
                &[NewDisk {
                    capacity_bytes: 1 << 20,
                    thin: true,
                    fcd: false,
                }],
            )
            .unwrap();
        let config = dir.path().join("vddk.conf");
        std::fs::write(&config, format!("vadp.lab.root = \"{}\"\n", root.display())).unwrap();

        let vddk = Vddk::load(&vddk_sim_libdir(SimVariant::Vddk65), Some(&config)).unwrap();
        let lib = vddk.library();
        assert_eq!(lib.major(), 6);
        assert!(!lib.has_allocated_blocks() && !lib.has_allocate_connect_params());

        let s = lab.settings().unwrap();
        let spec = ConnectSpec {
            server: s.server_name,
            port: None,
            thumbprint: Some(s.thumbprint),
            credentials: Credentials::Password {
                user: s.user,
                password: Secret::new(s.password),
            },
            vm: vm.0.clone(),
            snapshot: None,
            transport_modes: vec![],
            read_only: true,
        };
        // Connect parameters allocated by us (no AllocateConnectParams).
        let conn = vddk.connect(&spec).unwrap();
        let file = lab.vm(&vm).unwrap().disks[0].file_name.to_string();
        let disk = conn.open(&file, OpenFlags::READ_ONLY).unwrap();
        // The 6.x info layout: sector sizes are not read, they default to 512.
        let info = disk.info().unwrap();
        assert_eq!(info.capacity_bytes, 1 << 20);
        assert_eq!(
            (info.logical_sector_size, info.physical_sector_size),
            (512, 512)
        );
        let err = disk.allocated_extents(0, 1 << 20).unwrap_err();
        assert!(
            matches!(
                err,
                DiskLibError::NotSupported {
                    symbol: "VixDiskLib_QueryAllocatedBlocks",
                    major: 6,
                    ..
                }
            ),
            "{err}"
        );
        let mut buf = vec![0; 4096];
        disk.read_at(0, &mut buf).unwrap();
    }
}
