//! Process-global behaviour, in a binary of its own: the concurrent Open/Close detector,
//! the fork hazard (background thread gone in a child), Exit and a fresh InitEx.

// These tests dlopen the simulator and call its C ABI, which is unsafe by nature.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

mod common;

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::sync::Barrier;

    use vadp_tests::SimVariant;
    use vddk_sys::*;

    use super::common::*;

    #[test]
    fn open_close_hazard_fork_hazard_and_reinit() {
        // Open sleeps 2 s inside the guarded window, so two Opens overlap even on a loaded
        // machine (the second thread has 2 s to get there after the barrier).
        let fx = Fixture::new("vadp.sim.openDelayMs = 2000\n");
        let (lib, _) = load(SimVariant::Vddk8);
        assert_eq!(init(&lib, &fx.config), 0);
        let conn =
            connect(&lib, &Params::for_vm(&fx.settings, &fx.plain), true, None).expect("connect");
        let paths = [fx.disk_path(&fx.plain, 0), fx.disk_path(&fx.plain, 1)];

        // Deliberately NOT serialised: this is the bug the simulator must catch.
        let barrier = Barrier::new(2);
        let conn_addr = conn.addr();
        let results: Vec<(VixError, usize)> = std::thread::scope(|s| {
            let handles: Vec<_> = paths
                .iter()
                .map(|p| {
                    let (lib, barrier) = (&lib, &barrier);
                    s.spawn(move || {
                        let path = CString::new(p.as_str()).unwrap();
                        let conn = std::ptr::without_provenance_mut(conn_addr);
                        let mut h: VixDiskLibHandle = std::ptr::null_mut();
                        barrier.wait();
                        let err = unsafe {
                            lib.VixDiskLib_Open(
                                conn,
                                path.as_ptr(),
                                VIXDISKLIB_FLAG_OPEN_READ_ONLY,
                                &mut h,
                            )
                        };
                        (err, h.addr())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok: Vec<_> = results.iter().filter(|(e, _)| *e == 0).collect();
        let failed: Vec<_> = results.iter().filter(|(e, _)| *e != 0).collect();
        assert_eq!((ok.len(), failed.len()), (1, 1), "{results:?}");
        assert_eq!(code(failed[0].0), VIX_E_FAIL);
        assert!(
            logged()
                .iter()
                .any(|(l, m)| *l == "panic" && m.contains("concurrent Open/Close")),
            "{:?}",
            logged()
        );
        let opened: VixDiskLibHandle = std::ptr::without_provenance_mut(ok[0].1);

        // Fork hazard: in a child the background thread does not exist; Open must fail.
        let path = CString::new(paths[1].as_str()).unwrap();
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut h: VixDiskLibHandle = std::ptr::null_mut();
            let err = unsafe {
                lib.VixDiskLib_Open(conn, path.as_ptr(), VIXDISKLIB_FLAG_OPEN_READ_ONLY, &mut h)
            };
            let status = if code(err) == VIX_E_FAIL && h.is_null() {
                0
            } else {
                1
            };
            unsafe { libc::_exit(status) };
        }
        let mut status = 0;
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child: {status}"
        );

        // Exit closes what is left and stops the threads; a new InitEx works again.
        unsafe { lib.VixDiskLib_Exit() };
        let err = unsafe { lib.VixDiskLib_Close(opened) };
        assert_eq!(code(err), VIX_E_FAIL, "not initialised any more");
        let config = CString::new(fx.config.to_str().unwrap()).unwrap();
        // NULL callbacks: the simulator logs to stderr instead of calling through NULL.
        let err = unsafe {
            lib.VixDiskLib_InitEx(8, 0, None, None, None, std::ptr::null(), config.as_ptr())
        };
        assert_eq!(err, 0);
        let conn = connect(&lib, &Params::for_vm(&fx.settings, &fx.plain), true, None)
            .expect("connect after re-init");
        let h = open(&lib, conn, &paths[0], VIXDISKLIB_FLAG_OPEN_READ_ONLY).expect("open");
        assert_eq!(close(&lib, h), 0);
        unsafe { lib.VixDiskLib_Disconnect(conn) };
        unsafe { lib.VixDiskLib_Exit() };

        // A config without the lab root is refused.
        let bad = fx.root().join("bad.conf");
        std::fs::write(&bad, "tmpDirectory = \"/tmp\"\n").unwrap();
        let err = init(&lib, &bad);
        assert_eq!(code(err), VIX_E_INVALID_ARG);
        assert!(error_text(&lib, err).contains("vadp.lab.root"));
        let err = unsafe {
            lib.VixDiskLib_InitEx(8, 0, None, None, None, std::ptr::null(), std::ptr::null())
        };
        assert_eq!(code(err), VIX_E_INVALID_ARG);
    }
}
