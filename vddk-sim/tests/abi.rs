//! The simulator through its C ABI, loaded with dlopen exactly as the agent loads VDDK:
//! error codes, handles, sync and async I/O, Info, allocated blocks, metadata,
//! PrepareForAccess/EndAccess. One InitEx for the whole binary (a shared `OnceLock`).

// These tests dlopen the simulator and call its C ABI, which is unsafe by nature.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

mod common;

#[cfg(test)]
mod tests {
    use std::ffi::{CStr, CString, c_void};
    use std::sync::{Mutex, OnceLock};
    use std::thread::ThreadId;

    use lab::vmstate::{DisabledMethod, RELOCATE_METHOD};
    use vadp_tests::SimVariant;
    use vddk_sys::*;

    use super::common::*;

    struct Env {
        lib: VixDiskLib,
        fx: Fixture,
    }

    fn env() -> &'static Env {
        static ENV: OnceLock<Env> = OnceLock::new();
        ENV.get_or_init(|| {
            let fx = Fixture::new("vixDiskLib.transport.LogLevel = 4\n");
            let (lib, _) = load(SimVariant::Vddk8);
            assert_eq!(init(&lib, &fx.config), 0);
            Env { lib, fx }
        })
    }

    fn params(vm: &lab::vmstate::VmMoref) -> Params {
        Params::for_vm(&env().fx.settings, vm)
    }

    fn plain_conn(read_only: bool) -> VixDiskLibConnection {
        connect(&env().lib, &params(&env().fx.plain), read_only, None).expect("connect")
    }

    const RO: u32 = VIXDISKLIB_FLAG_OPEN_READ_ONLY;

    #[test]
    fn second_init_without_exit_fails() {
        let e = env();
        let err = init(&e.lib, &e.fx.config);
        assert_eq!(code(err), VIX_E_FAIL);
        assert!(error_text(&e.lib, err).contains("twice"));
    }

    #[test]
    fn connect_validates_server_credentials_vm_and_snapshot() {
        let e = env();
        let lib = &e.lib;
        let vm = &e.fx.plain;

        let mut conn: VixDiskLibConnection = std::ptr::null_mut();
        let err = unsafe {
            lib.VixDiskLib_ConnectEx(
                std::ptr::null(),
                1,
                std::ptr::null(),
                std::ptr::null(),
                &mut conn,
            )
        };
        assert_eq!(code(err), VIX_E_INVALID_ARG);
        let raw = params(vm).raw();
        let err = unsafe {
            lib.VixDiskLib_ConnectEx(
                &raw,
                1,
                std::ptr::null(),
                std::ptr::null(),
                std::ptr::null_mut(),
            )
        };
        assert_eq!(code(err), VIX_E_INVALID_ARG);

        let mut p = params(vm);
        p.server = Some(CString::new("elsewhere.invalid").unwrap());
        assert_eq!(
            connect(lib, &p, true, None),
            Err(VIX_E_HOST_SERVER_NOT_FOUND)
        );

        let mut p = params(vm);
        p.password = Some(CString::new("wrong").unwrap());
        assert_eq!(connect(lib, &p, true, None), Err(VIX_E_AUTHENTICATION_FAIL));

        let mut p = params(vm);
        p.cookie = Some(CString::new("").unwrap());
        assert_eq!(connect(lib, &p, true, None), Err(VIX_E_AUTHENTICATION_FAIL));
        // A cookie vCenter does not know is rejected (NotAuthenticated)...
        p.cookie = Some(CString::new("vmware_soap_session=\"abc\"").unwrap());
        assert_eq!(connect(lib, &p, true, None), Err(VIX_E_AUTHENTICATION_FAIL));
        // ...a live session's cookie is accepted.
        let cookie = e.fx.vcenter.session_cookie().unwrap();
        p.cookie = Some(CString::new(cookie).unwrap());
        let conn = connect(lib, &p, true, None).expect("session cookie accepted");
        assert_eq!(unsafe { lib.VixDiskLib_Disconnect(conn) }, 0);

        let mut p = params(vm);
        p.vmx = Some(CString::new("moref=vm-999").unwrap());
        assert_eq!(connect(lib, &p, true, None), Err(VIX_E_VM_NOT_FOUND));

        assert_eq!(
            connect(lib, &params(vm), true, Some("snapshot-999")),
            Err(VIX_E_SNAPSHOT_NOTFOUND)
        );
        let snap = e.fx.snapshot.0.as_str();
        let conn = connect(lib, &params(&e.fx.snapped), true, Some(snap)).expect("snapshot");
        assert_eq!(unsafe { lib.VixDiskLib_Disconnect(conn) }, 0);
        // A disconnected connection is gone.
        assert_eq!(
            code(unsafe { lib.VixDiskLib_Disconnect(conn) }),
            VIX_E_DISK_INVALID_CONNECTION
        );
    }

    #[test]
    fn wrong_thumbprint_fails_at_open_not_at_connect() {
        let e = env();
        let mut p = params(&e.fx.plain);
        p.thumbprint = Some(CString::new("00:11:22").unwrap());
        let conn = connect(&e.lib, &p, true, None).expect("connect does not check it");
        let path = e.fx.disk_path(&e.fx.plain, 0);
        let path_c = CString::new(path).unwrap();
        let mut h: VixDiskLibHandle = std::ptr::null_mut();
        let err = {
            let _serial = OPEN_CLOSE.lock().unwrap_or_else(|p| p.into_inner());
            unsafe { e.lib.VixDiskLib_Open(conn, path_c.as_ptr(), RO, &mut h) }
        };
        assert_eq!(code(err), VIX_E_FAIL);
        assert!(h.is_null());
        let text = error_text(&e.lib, err);
        assert!(text.contains("actual thumbprint="), "{text}");
        assert!(text.contains(&e.fx.settings.thumbprint), "{text}");
        assert!(text.contains("expected=00:11:22"), "{text}");
        unsafe { e.lib.VixDiskLib_Disconnect(conn) };
    }

    #[test]
    fn open_errors() {
        let e = env();
        let lib = &e.lib;
        let conn = plain_conn(false);

        let missing = "[ds1] plain/nope.vmdk";
        assert_eq!(open(lib, conn, missing, RO), Err(VIX_E_FILE_NOT_FOUND));
        let path_c = CString::new(missing).unwrap();
        let mut h: VixDiskLibHandle = std::ptr::null_mut();
        let err = {
            let _serial = OPEN_CLOSE.lock().unwrap_or_else(|p| p.into_inner());
            unsafe { lib.VixDiskLib_Open(conn, path_c.as_ptr(), RO, &mut h) }
        };
        assert!(error_text(lib, err).contains("nope.vmdk"));
        assert_eq!(
            open(lib, conn, "not a datastore path", RO),
            Err(VIX_E_FILE_NOT_FOUND)
        );

        let bogus = std::ptr::without_provenance_mut(0xdead_bee0);
        let disk0 = e.fx.disk_path(&e.fx.plain, 0);
        assert_eq!(
            open(lib, bogus, &disk0, RO),
            Err(VIX_E_DISK_INVALID_CONNECTION)
        );
        let err = {
            let _serial = OPEN_CLOSE.lock().unwrap_or_else(|p| p.into_inner());
            unsafe { lib.VixDiskLib_Open(conn, std::ptr::null(), RO, &mut h) }
        };
        assert_eq!(code(err), VIX_E_INVALID_ARG);

        // A second writer of the same disk is refused.
        let disk3 = e.fx.disk_path(&e.fx.plain, 3);
        let w = open(lib, conn, &disk3, 0).expect("writer");
        assert_eq!(open(lib, conn, &disk3, 0), Err(VIX_E_FILE_ALREADY_LOCKED));
        let r = open(lib, conn, &disk3, RO).expect("readers are fine");
        assert_eq!(close(lib, r), 0);
        assert_eq!(close(lib, w), 0);

        // The snapshot's frozen base: readable, not writable; other files are not in it.
        let snap_conn = connect(lib, &params(&e.fx.snapped), false, Some(&e.fx.snapshot.0))
            .expect("connect to snapshot");
        let frozen = e.fx.frozen_path();
        assert_eq!(
            open(lib, snap_conn, &frozen, 0),
            Err(VIX_E_FILE_ALREADY_LOCKED)
        );
        let current = e.fx.disk_path(&e.fx.snapped, 0);
        assert_ne!(current, frozen);
        assert_eq!(
            open(lib, snap_conn, &current, RO),
            Err(VIX_E_FILE_NOT_FOUND)
        );
        let h = open(lib, snap_conn, &frozen, RO).expect("frozen base read-only");
        let mut buf = vec![0u8; 4096];
        assert_eq!(unsafe { lib.VixDiskLib_Read(h, 0, 8, buf.as_mut_ptr()) }, 0);
        assert_eq!(buf, vec![1u8; 4096], "the snapshot sees the data before it");
        assert_eq!(close(lib, h), 0);
        unsafe {
            lib.VixDiskLib_Disconnect(snap_conn);
            lib.VixDiskLib_Disconnect(conn);
        }
    }

    #[test]
    fn read_write_ranges_and_handles() {
        let e = env();
        let lib = &e.lib;
        let conn = plain_conn(false);
        let path = e.fx.disk_path(&e.fx.plain, 1);
        let h = open(lib, conn, &path, 0).expect("open rw");
        let data: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(unsafe { lib.VixDiskLib_Write(h, 10, 4, data.as_ptr()) }, 0);
        let mut back = vec![0u8; 2048];
        assert_eq!(
            unsafe { lib.VixDiskLib_Read(h, 10, 4, back.as_mut_ptr()) },
            0
        );
        assert_eq!(back, data);
        assert_eq!(unsafe { lib.VixDiskLib_Flush(h) }, 0);

        let mut one = vec![0u8; 1024];
        let last = CAPACITY_SECTORS - 1;
        assert_eq!(
            unsafe { lib.VixDiskLib_Read(h, last, 1, one.as_mut_ptr()) },
            0
        );
        let err = unsafe { lib.VixDiskLib_Read(h, last, 2, one.as_mut_ptr()) };
        assert_eq!(code(err), VIX_E_DISK_OUTOFRANGE);
        let err = unsafe { lib.VixDiskLib_Write(h, u64::MAX, 2, one.as_ptr()) };
        assert_eq!(code(err), VIX_E_DISK_OUTOFRANGE);
        let err = unsafe { lib.VixDiskLib_Read(h, 0, 1, std::ptr::null_mut()) };
        assert_eq!(code(err), VIX_E_INVALID_ARG);
        let bogus = std::ptr::without_provenance_mut(0x1234_5670);
        let err = unsafe { lib.VixDiskLib_Read(bogus, 0, 1, one.as_mut_ptr()) };
        assert_eq!(code(err), VIX_E_INVALID_HANDLE);
        let err = unsafe { lib.VixDiskLib_Read(std::ptr::null_mut(), 0, 1, one.as_mut_ptr()) };
        assert_eq!(code(err), VIX_E_INVALID_HANDLE);
        assert_eq!(close(lib, h), 0);
        // A closed handle is rejected, not trusted.
        let err = unsafe { lib.VixDiskLib_Read(h, 0, 1, one.as_mut_ptr()) };
        assert_eq!(code(err), VIX_E_INVALID_HANDLE);
        assert_eq!(close(lib, h), VIX_E_INVALID_HANDLE);

        // READ_ONLY flag, and a read-only connection.
        let h = open(lib, conn, &path, RO).expect("open ro");
        let err = unsafe { lib.VixDiskLib_Write(h, 0, 1, one.as_ptr()) };
        assert_eq!(code(err), VIX_E_FILE_READ_ONLY);
        assert_eq!(close(lib, h), 0);
        let ro_conn = plain_conn(true);
        let h = open(lib, ro_conn, &path, 0).expect("open on ro connection");
        let err = unsafe { lib.VixDiskLib_Write(h, 0, 1, one.as_ptr()) };
        assert_eq!(code(err), VIX_E_FILE_READ_ONLY);
        let mode = unsafe { CStr::from_ptr(lib.VixDiskLib_GetTransportMode(h)) };
        assert_eq!(mode.to_str().unwrap(), "nbdssl");
        assert_eq!(close(lib, h), 0);
        let mode = unsafe { CStr::from_ptr(lib.VixDiskLib_GetTransportMode(h)) };
        assert_eq!(mode.to_str().unwrap(), "");
        unsafe {
            lib.VixDiskLib_Disconnect(ro_conn);
            lib.VixDiskLib_Disconnect(conn);
        }
    }

    #[derive(Default)]
    struct Completions {
        done: Mutex<Vec<(ThreadId, VixError)>>,
    }

    unsafe extern "C" fn on_complete(data: *mut c_void, result: VixError) {
        let completions = unsafe { &*data.cast::<Completions>() };
        completions
            .done
            .lock()
            .unwrap()
            .push((std::thread::current().id(), result));
    }

    #[test]
    fn async_io_completes_on_a_worker_thread_and_wait_drains() {
        let e = env();
        let lib = &e.lib;
        let conn = connect(lib, &params(&e.fx.snapped), false, None).expect("connect");
        let current = e.fx.disk_path(&e.fx.snapped, 0);
        let h = open(lib, conn, &current, 0).expect("open current redo log rw");
        let completions = Completions::default();
        let cb_data = std::ptr::from_ref(&completions).cast_mut().cast::<c_void>();

        let blocks: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i + 10; 64 * 1024]).collect();
        for (i, block) in blocks.iter().enumerate() {
            let start = 4096 + 128 * i as u64;
            let err = unsafe {
                lib.VixDiskLib_WriteAsync(h, start, 128, block.as_ptr(), Some(on_complete), cb_data)
            };
            assert_eq!(err, u64::from(VIX_ASYNC));
        }
        assert_eq!(unsafe { lib.VixDiskLib_Wait(h) }, 0);
        assert_eq!(
            completions.done.lock().unwrap().len(),
            16,
            "Wait drained every write"
        );

        let mut back: Vec<Vec<u8>> = (0..16).map(|_| vec![0u8; 64 * 1024]).collect();
        for (i, buf) in back.iter_mut().enumerate() {
            let start = 4096 + 128 * i as u64;
            let err = unsafe {
                lib.VixDiskLib_ReadAsync(
                    h,
                    start,
                    128,
                    buf.as_mut_ptr(),
                    Some(on_complete),
                    cb_data,
                )
            };
            assert_eq!(err, u64::from(VIX_ASYNC));
        }
        // Mixing a sync read in is fine.
        let mut sync = vec![0u8; 512];
        assert_eq!(
            unsafe { lib.VixDiskLib_Read(h, 0, 1, sync.as_mut_ptr()) },
            0
        );
        assert_eq!(sync, vec![2u8; 512]);
        assert_eq!(unsafe { lib.VixDiskLib_Wait(h) }, 0);
        assert_eq!(back, blocks);

        let done = completions.done.lock().unwrap().clone();
        assert_eq!(done.len(), 32);
        let me = std::thread::current().id();
        assert!(done.iter().all(|(t, r)| *t != me && *r == 0), "{done:?}");

        // Immediate errors do not queue anything.
        let err = unsafe {
            lib.VixDiskLib_ReadAsync(
                h,
                CAPACITY_SECTORS,
                1,
                sync.as_mut_ptr(),
                Some(on_complete),
                cb_data,
            )
        };
        assert_eq!(code(err), VIX_E_DISK_OUTOFRANGE);
        let err = unsafe {
            lib.VixDiskLib_WriteAsync(h, 0, 1, std::ptr::null(), Some(on_complete), cb_data)
        };
        assert_eq!(code(err), VIX_E_INVALID_ARG);

        // Close waits for queued requests too.
        for (i, block) in blocks.iter().enumerate() {
            let start = 8192 + 128 * i as u64;
            unsafe {
                lib.VixDiskLib_WriteAsync(h, start, 128, block.as_ptr(), Some(on_complete), cb_data)
            };
        }
        assert_eq!(close(lib, h), 0);
        assert_eq!(completions.done.lock().unwrap().len(), 48);
        unsafe { lib.VixDiskLib_Disconnect(conn) };
    }

    #[test]
    fn get_info_reports_capacity_links_and_strings() {
        let e = env();
        let lib = &e.lib;
        let conn = connect(lib, &params(&e.fx.snapped), true, None).expect("connect");
        let current = e.fx.disk_path(&e.fx.snapped, 0);
        let h = open(lib, conn, &current, RO).expect("open");
        let mut info: *mut VixDiskLibInfo = std::ptr::null_mut();
        assert_eq!(unsafe { lib.VixDiskLib_GetInfo(h, &mut info) }, 0);
        let i = unsafe { &*info };
        assert_eq!(i.capacity, CAPACITY_SECTORS);
        assert_eq!(i.numLinks, 2);
        assert_eq!(i.adapterType, VIXDISKLIB_ADAPTER_SCSI_LSILOGIC);
        assert_eq!((i.logicalSectorSize, i.physicalSectorSize), (512, 512));
        assert!(i.physGeo.heads > 0 && i.biosGeo.sectors > 0);
        let hint = unsafe { CStr::from_ptr(i.parentFileNameHint) }
            .to_str()
            .unwrap();
        let frozen = e.fx.frozen_path();
        assert!(frozen.ends_with(hint), "{hint} vs {frozen}");
        assert!(!i.uuid.is_null());
        unsafe { lib.VixDiskLib_FreeInfo(info) };
        unsafe { lib.VixDiskLib_FreeInfo(std::ptr::null_mut()) };
        let err = unsafe { lib.VixDiskLib_GetInfo(h, std::ptr::null_mut()) };
        assert_eq!(code(err), VIX_E_INVALID_ARG);
        assert_eq!(close(lib, h), 0);

        let conn2 = plain_conn(true);
        let h = open(lib, conn2, &e.fx.disk_path(&e.fx.plain, 0), RO).expect("open");
        assert_eq!(unsafe { lib.VixDiskLib_GetInfo(h, &mut info) }, 0);
        let i = unsafe { &*info };
        assert_eq!(i.numLinks, 1);
        assert!(i.parentFileNameHint.is_null());
        unsafe { lib.VixDiskLib_FreeInfo(info) };
        assert_eq!(close(lib, h), 0);
        unsafe {
            lib.VixDiskLib_Disconnect(conn);
            lib.VixDiskLib_Disconnect(conn2);
        }
    }

    #[test]
    fn query_allocated_blocks_follows_the_chunk_rules() {
        let e = env();
        let lib = &e.lib;
        let conn = plain_conn(true);
        let h = open(lib, conn, &e.fx.disk_path(&e.fx.plain, 0), RO).expect("open");
        let mut list: *mut VixDiskLibBlockList = std::ptr::null_mut();
        let query = |start, n, chunk, list: &mut *mut VixDiskLibBlockList| {
            code(unsafe { lib.VixDiskLib_QueryAllocatedBlocks(h, start, n, chunk, list) })
        };
        assert_eq!(
            query(0, 1024, 64, &mut list),
            VIX_E_INVALID_ARG,
            "chunk below 128"
        );
        assert_eq!(
            query(1, 1024, 128, &mut list),
            VIX_E_INVALID_ARG,
            "start unaligned"
        );
        assert_eq!(
            query(0, 1000, 128, &mut list),
            VIX_E_INVALID_ARG,
            "length unaligned"
        );
        let too_many = 128 * (u64::from(VIXDISKLIB_MAX_CHUNK_NUMBER) + 1);
        assert_eq!(
            query(0, too_many, 128, &mut list),
            VIX_E_INVALID_ARG,
            "too many chunks"
        );
        assert_eq!(
            query(0, CAPACITY_SECTORS + 128, 128, &mut list),
            VIX_E_DISK_OUTOFRANGE
        );
        let err =
            unsafe { lib.VixDiskLib_QueryAllocatedBlocks(h, 0, 128, 128, std::ptr::null_mut()) };
        assert_eq!(code(err), VIX_E_INVALID_ARG);

        // 8 KiB were written at 1 MiB (sector 2048) of this thin disk.
        assert_eq!(query(0, CAPACITY_SECTORS, 128, &mut list), 0);
        let blocks = unsafe {
            let n = (*list).numBlocks as usize;
            let first = std::ptr::addr_of!((*list).blocks).cast::<VixDiskLibBlock>();
            (0..n)
                .map(|i| *first.add(i))
                .map(|b| (b.offset, b.length))
                .collect::<Vec<_>>()
        };
        assert_eq!(blocks, [(2048, 128)]);
        assert_eq!(unsafe { lib.VixDiskLib_FreeBlockList(list) }, 0);

        assert_eq!(query(0, 2048, 128, &mut list), 0);
        assert_eq!(unsafe { (*list).numBlocks }, 0);
        assert_eq!(unsafe { lib.VixDiskLib_FreeBlockList(list) }, 0);
        assert_eq!(close(lib, h), 0);
        unsafe { lib.VixDiskLib_Disconnect(conn) };
    }

    #[test]
    fn metadata_round_trip() {
        let e = env();
        let lib = &e.lib;
        let conn = plain_conn(false);
        let path = e.fx.disk_path(&e.fx.plain, 2);
        let h = open(lib, conn, &path, 0).expect("open rw");

        let mut required = 0usize;
        let err =
            unsafe { lib.VixDiskLib_GetMetadataKeys(h, std::ptr::null_mut(), 0, &mut required) };
        assert_eq!(code(err), VIX_E_BUFFER_TOOSMALL);
        assert!(required > 2);
        let mut keys = vec![0 as std::ffi::c_char; required];
        let err = unsafe {
            lib.VixDiskLib_GetMetadataKeys(h, keys.as_mut_ptr(), required, &mut required)
        };
        assert_eq!(err, 0);
        let bytes: Vec<u8> = keys.iter().map(|c| c.cast_unsigned()).collect();
        assert_eq!(
            &bytes[bytes.len() - 2..],
            &[0, 0],
            "keys end with an extra NUL"
        );
        let names: Vec<&str> = bytes[..bytes.len() - 2]
            .split(|b| *b == 0)
            .map(|k| std::str::from_utf8(k).unwrap())
            .collect();
        assert!(
            names.contains(&"uuid") && names.contains(&"adapterType"),
            "{names:?}"
        );

        let key = CString::new("vadp.backupTag").unwrap();
        let val = CString::new("nightly-42").unwrap();
        let mut buf = vec![0 as std::ffi::c_char; 64];
        let err = unsafe {
            lib.VixDiskLib_ReadMetadata(h, key.as_ptr(), buf.as_mut_ptr(), 64, &mut required)
        };
        assert_eq!(code(err), VIX_E_DISK_KEY_NOTFOUND);
        assert_eq!(
            unsafe { lib.VixDiskLib_WriteMetadata(h, key.as_ptr(), val.as_ptr()) },
            0
        );
        let err = unsafe {
            lib.VixDiskLib_ReadMetadata(h, key.as_ptr(), buf.as_mut_ptr(), 4, &mut required)
        };
        assert_eq!(code(err), VIX_E_BUFFER_TOOSMALL);
        assert_eq!(required, "nightly-42".len() + 1);
        let err = unsafe {
            lib.VixDiskLib_ReadMetadata(h, key.as_ptr(), buf.as_mut_ptr(), 64, &mut required)
        };
        assert_eq!(err, 0);
        assert_eq!(
            unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap(),
            "nightly-42"
        );
        assert_eq!(close(lib, h), 0);

        // Persisted in the descriptor; a read-only handle cannot change it.
        let h = open(lib, conn, &path, RO).expect("open ro");
        let err = unsafe {
            lib.VixDiskLib_ReadMetadata(h, key.as_ptr(), buf.as_mut_ptr(), 64, &mut required)
        };
        assert_eq!(err, 0);
        let err = unsafe { lib.VixDiskLib_WriteMetadata(h, key.as_ptr(), val.as_ptr()) };
        assert_eq!(code(err), VIX_E_FILE_READ_ONLY);
        assert_eq!(close(lib, h), 0);
        unsafe { lib.VixDiskLib_Disconnect(conn) };
    }

    #[test]
    fn prepare_and_end_access_toggle_relocate() {
        let e = env();
        let lib = &e.lib;
        let vm = &e.fx.snapped;
        let p = params(vm);
        let raw = p.raw();
        let identity = CString::new("vadp-agent test").unwrap();
        assert_eq!(
            unsafe { lib.VixDiskLib_EndAccess(&raw, identity.as_ptr()) },
            0,
            "no Prepare"
        );
        assert_eq!(
            unsafe { lib.VixDiskLib_PrepareForAccess(&raw, identity.as_ptr()) },
            0
        );
        let disabled = e.fx.lab.disabled_methods(vm).unwrap();
        assert!(disabled.contains(&DisabledMethod {
            method: RELOCATE_METHOD.into(),
            source: "vadp-agent test".into(),
        }));
        assert_eq!(
            unsafe { lib.VixDiskLib_EndAccess(&raw, identity.as_ptr()) },
            0
        );
        assert!(e.fx.lab.disabled_methods(vm).unwrap().is_empty());

        let long = CString::new("x".repeat(51)).unwrap();
        let err = unsafe { lib.VixDiskLib_PrepareForAccess(&raw, long.as_ptr()) };
        assert_eq!(code(err), VIX_E_INVALID_ARG);
        let err = unsafe { lib.VixDiskLib_PrepareForAccess(&raw, std::ptr::null()) };
        assert_eq!(code(err), VIX_E_INVALID_ARG);
        let err = unsafe { lib.VixDiskLib_PrepareForAccess(std::ptr::null(), identity.as_ptr()) };
        assert_eq!(code(err), VIX_E_INVALID_ARG);
        let mut bad = params(vm);
        bad.vmx = Some(CString::new("moref=vm-999").unwrap());
        let err = unsafe { lib.VixDiskLib_PrepareForAccess(&bad.raw(), identity.as_ptr()) };
        assert_eq!(code(err), VIX_E_VM_NOT_FOUND);
        let mut bad = params(vm);
        bad.password = Some(CString::new("nope").unwrap());
        let err = unsafe { lib.VixDiskLib_EndAccess(&bad.raw(), identity.as_ptr()) };
        assert_eq!(code(err), VIX_E_AUTHENTICATION_FAIL);
    }

    #[test]
    fn small_functions() {
        let e = env();
        let lib = &e.lib;
        let modes = unsafe { CStr::from_ptr(lib.VixDiskLib_ListTransportModes()) };
        assert_eq!(modes.to_str().unwrap(), "file:san:hotadd:nbdssl:nbd");

        unsafe { lib.VixDiskLib_FreeErrorText(std::ptr::null_mut()) };
        let text = error_text(lib, (3 << 32) | u64::from(VIX_E_DISK_OUTOFRANGE));
        assert!(text.starts_with("VIX_E_DISK_OUTOFRANGE"), "{text}");

        let p = unsafe { lib.VixDiskLib_AllocateConnectParams() };
        assert!(!p.is_null());
        let zeroed = unsafe { &*p };
        assert!(zeroed.vmxSpec.is_null() && zeroed.serverName.is_null());
        assert_eq!(zeroed.credType, 0);
        unsafe { lib.VixDiskLib_FreeConnectParams(p) };
        unsafe { lib.VixDiskLib_FreeConnectParams(std::ptr::null_mut()) };

        // Nothing hot-added: Cleanup logs in and finds nothing to do.
        let kept = params(&e.fx.plain);
        let raw = kept.raw();
        let (mut cleaned, mut remaining) = (7u32, 7u32);
        let err = unsafe { lib.VixDiskLib_Cleanup(&raw, &mut cleaned, &mut remaining) };
        assert_eq!(err, 0, "{}", error_text(lib, err));
        assert_eq!((cleaned, remaining), (0, 0));
        assert_eq!(
            unsafe { lib.VixDiskLib_Cleanup(&raw, std::ptr::null_mut(), std::ptr::null_mut()) },
            0
        );
        // The log callbacks were called through the va_list shim.
        assert!(
            logged()
                .iter()
                .any(|(l, m)| *l == "log" && m.contains("initialised"))
        );
    }
}
