//! The VDDK 6.5 emulation (feature `vddk65`): the agent's fallbacks are exercised against
//! it. Without the optional symbols it still serves disks, and GetInfo hands out the
//! 56-byte pre-7.0 structure.

// These tests dlopen the simulator and call its C ABI, which is unsafe by nature.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

mod common;

#[cfg(test)]
mod tests {
    use vadp_tests::SimVariant;
    use vddk_sys::*;

    use super::common::*;

    unsafe extern "C" {
        fn malloc_usable_size(p: *mut std::ffi::c_void) -> usize;
    }

    #[test]
    fn vddk65_serves_disks_with_the_short_info() {
        let fx = Fixture::new("");
        let (lib, _) = load(SimVariant::Vddk65);
        assert!(lib.VixDiskLib_QueryAllocatedBlocks.is_err());
        assert!(lib.VixDiskLib_FreeBlockList.is_err());
        assert!(lib.VixDiskLib_AllocateConnectParams.is_err());
        assert_eq!(init(&lib, &fx.config), 0);
        let conn =
            connect(&lib, &Params::for_vm(&fx.settings, &fx.plain), true, None).expect("connect");
        let h = open(
            &lib,
            conn,
            &fx.disk_path(&fx.plain, 0),
            VIXDISKLIB_FLAG_OPEN_READ_ONLY,
        )
        .expect("open");
        let mut info: *mut VixDiskLibInfo = std::ptr::null_mut();
        assert_eq!(unsafe { lib.VixDiskLib_GetInfo(h, &mut info) }, 0);
        // Read only the 6.x fields: the 7.0 ones lie past the allocation.
        let v6 = unsafe { &*info.cast::<VixDiskLibInfoV6>() };
        assert_eq!(v6.capacity, CAPACITY_SECTORS);
        assert_eq!(v6.numLinks, 1);
        // glibc rounds a 56-byte calloc to a 56-usable-byte chunk, 64 bytes to 72.
        let usable = unsafe { malloc_usable_size(info.cast()) };
        assert!(usable < size_of::<VixDiskLibInfo>(), "usable {usable}");
        unsafe { lib.VixDiskLib_FreeInfo(info) };
        let mut buf = vec![0u8; 8192];
        assert_eq!(
            unsafe { lib.VixDiskLib_Read(h, 2048, 16, buf.as_mut_ptr()) },
            0
        );
        assert_eq!(buf, vec![0xAB; 8192]);
        assert_eq!(close(&lib, h), 0);
        unsafe {
            lib.VixDiskLib_Disconnect(conn);
            lib.VixDiskLib_Exit();
        }
    }
}
