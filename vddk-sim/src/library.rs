//! Process-wide library state between InitEx and Exit.
//!
//! Threads: InitEx starts `vddk-sim-bg`, a background thread standing in for the ones real
//! VDDK starts (nbdkit `dummy-vddk.c` does the same), so the fork hazard is observable:
//! Open checks that the thread is alive and that the process is still the one that called
//! InitEx. Each open disk has its own `vddk-sim-aio/<token>` worker (see `disk`).
//!
//! Locking: `LIBRARY` (a mutex) is taken only to install, fetch (clone the `Arc`) or remove
//! the state, never across I/O. Handle tables have their own mutexes,
//! held for map operations only. Open/Close are not serialised by a lock but *detected*
//! when concurrent (`OPEN_CLOSE_BUSY`), because real VDDK forbids them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use vddk_sys::{VIX_E_FAIL, VixDiskLibGenericLogFunc};

use crate::config::SimConfig;
use crate::connection::Connection;
use crate::disk::DiskHandle;
use crate::handles::HandleTable;
use crate::log;
use crate::vix::{VixResult, fail};

static LIBRARY: Mutex<Option<Arc<Library>>> = Mutex::new(None);

/// Set while an Open or Close is running.
static OPEN_CLOSE_BUSY: AtomicBool = AtomicBool::new(false);

/// State of an initialised library.
#[derive(Debug)]
pub(crate) struct Library {
    pub config: SimConfig,
    init_pid: u32,
    background: Mutex<Option<Background>>,
    pub connections: HandleTable<Connection>,
    pub disks: HandleTable<DiskHandle>,
}

#[derive(Debug)]
struct Background {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

fn lock_global() -> MutexGuard<'static, Option<Arc<Library>>> {
    LIBRARY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// InitEx: installs the log sinks and starts the background thread.
pub(crate) fn init(config: SimConfig, sinks: [VixDiskLibGenericLogFunc; 3]) -> VixResult<()> {
    let mut global = lock_global();
    if global.is_some() {
        return fail(
            VIX_E_FAIL,
            "VixDiskLib_InitEx called twice without VixDiskLib_Exit: VDDK is initialised once \
             per process",
        );
    }
    let [log_fn, warn_fn, panic_fn] = sinks;
    log::install(log_fn, warn_fn, panic_fn, config.log_level);
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("vddk-sim-bg".into())
        .spawn(move || {
            // Runs until Exit sends (or drops) the stop channel.
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(Duration::from_secs(60))
            {
                log::trivia("background thread alive");
            }
        })
        .or_else(|e| fail(VIX_E_FAIL, format!("cannot start background thread: {e}")))?;
    log::info(&format!(
        "initialised (simulated VDDK 8), lab root {}, {} config key(s)",
        config.lab_root.display(),
        config.entries.len()
    ));
    *global = Some(Arc::new(Library {
        config,
        init_pid: std::process::id(),
        background: Mutex::new(Some(Background { stop, thread })),
        connections: HandleTable::default(),
        disks: HandleTable::default(),
    }));
    Ok(())
}

/// Exit: closes what the caller left open, stops every thread, forgets the callbacks.
pub(crate) fn exit() {
    let Some(library) = lock_global().take() else {
        return;
    };
    let leftover = library.disks.drain();
    if !leftover.is_empty() {
        log::warn(&format!(
            "VixDiskLib_Exit with {} disk handle(s) still open; closing them",
            leftover.len()
        ));
    }
    for disk in leftover {
        disk.shut_down();
    }
    library.connections.drain();
    let background = library
        .background
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(Background { stop, thread }) = background {
        // The thread may already be gone; either way it stops.
        let _ = stop.send(());
        if thread.join().is_err() {
            log::warn("background thread panicked");
        }
    }
    log::info("exited");
    log::uninstall();
}

/// The initialised library, or VIX_E_FAIL when InitEx has not run.
pub(crate) fn get() -> VixResult<Arc<Library>> {
    match lock_global().as_ref() {
        Some(library) => Ok(Arc::clone(library)),
        None => fail(VIX_E_FAIL, "VixDiskLib_InitEx has not been called"),
    }
}

impl Library {
    /// The fork hazard: after fork() only the calling thread exists in the child, so VDDK's
    /// background threads are gone and it hangs; we fail instead (nbdkit dummy-vddk).
    pub(crate) fn check_background_alive(&self) -> VixResult<()> {
        let pid = std::process::id();
        let finished = self
            .background
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .is_none_or(|bg| bg.thread.is_finished());
        if pid != self.init_pid || finished {
            let msg = format!(
                "VDDK background thread is not running (InitEx in pid {}, now pid {pid}): the \
                 process forked after VixDiskLib_InitEx, which VDDK does not support",
                self.init_pid
            );
            log::panic(&msg);
            return fail(VIX_E_FAIL, msg);
        }
        Ok(())
    }
}

/// Proof that this thread is the only one inside Open/Close; dropping it leaves.
#[derive(Debug)]
pub(crate) struct OpenCloseGuard(());

impl Drop for OpenCloseGuard {
    fn drop(&mut self) {
        OPEN_CLOSE_BUSY.store(false, Ordering::Release);
    }
}

/// Enters Open/Close. VDDK's Open and Close are not thread safe (VDDK guide, "Multiple
/// Threads and VixDiskLib"); a caller that runs two at once has a bug that corrupts real
/// VDDK's state, so the simulator fails the second call loudly instead of serialising it.
pub(crate) fn enter_open_close(call: &str, delay: Duration) -> VixResult<OpenCloseGuard> {
    if OPEN_CLOSE_BUSY
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        let msg = format!(
            "{call} called while another VixDiskLib_Open/VixDiskLib_Close is in progress: \
             VDDK forbids concurrent Open/Close; serialise them on one thread"
        );
        log::panic(&msg);
        return fail(VIX_E_FAIL, msg);
    }
    let guard = OpenCloseGuard(());
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    Ok(guard)
}
