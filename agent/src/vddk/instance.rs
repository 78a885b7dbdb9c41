//! [`Vddk`]: the initialised library and its `vddk-open` thread.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use vddk_sys::VixError;

use super::connect::ConnectSpec;
use super::connection::Connection;
use super::error::{DiskLibError, ErrorContext, VddkError};
use super::library::{Library, LoadError, cstr_to_string};
use super::log;
use super::open_thread::{self, CleanupOutcome, MAX_IDENTITY_CHARS, OpenCmd};

/// InitEx has been called in this process (successfully or not). VDDK cannot be
/// initialised twice, not even after Exit.
static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// The `major.minor` we pass to InitEx whatever the loaded version (as nbdkit does).
const INIT_MAJOR: u32 = 6;
const INIT_MINOR: u32 = 5;

/// Why VDDK could not be initialised.
#[derive(Debug, thiserror::Error)]
pub enum VddkInitError {
    /// The library could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// InitEx was already called in this process.
    #[error("VDDK is already initialised in this process (InitEx may only be called once)")]
    AlreadyInitialized,
    /// InitEx failed.
    #[error(transparent)]
    Vix(#[from] VddkError),
    /// A path for InitEx contains a NUL byte.
    #[error("{} contains a NUL byte", path.display())]
    InteriorNul {
        /// The path.
        path: PathBuf,
    },
    /// The `vddk-open` thread could not be started.
    #[error("starting the vddk-open thread")]
    Spawn(#[source] std::io::Error),
}

/// The initialised VDDK library of this process: cheap to clone, `Send + Sync`.
///
/// It owns the `vddk-open` thread. Every [`Connection`] and [`super::Disk`] holds a clone,
/// so `Exit` runs only after the last of them is gone: when the last clone is dropped (or
/// [`Vddk::shutdown`]), the thread finishes the queued Close/Disconnect commands and stops,
/// and then `VixDiskLib_Exit` is called.
#[derive(Debug, Clone)]
pub struct Vddk {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    lib: &'static Library,
    tx: Option<Sender<OpenCmd>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Vddk {
    /// Loads the library from `libdir` and initialises it (see [`Vddk::init`]).
    ///
    /// # Errors
    /// See [`Library::load`] and [`Vddk::init`].
    pub fn load(libdir: &Path, config_file: Option<&Path>) -> Result<Self, VddkInitError> {
        Self::init(Library::load(libdir)?, config_file)
    }

    /// Calls `InitEx` (with our log callbacks, version 6.5, the library's libdir and the
    /// optional config file) and starts the `vddk-open` thread. Call it from `main`, after
    /// any re-exec and before starting other threads; at most once per process.
    ///
    /// # Errors
    /// [`VddkInitError::AlreadyInitialized`] on a second call (even after a failed first
    /// one: VDDK may be half-initialised), or InitEx's error.
    pub fn init(lib: Library, config_file: Option<&Path>) -> Result<Self, VddkInitError> {
        let c_path = |path: &Path| {
            CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
                VddkInitError::InteriorNul {
                    path: path.to_path_buf(),
                }
            })
        };
        let libdir = c_path(lib.libdir())?;
        let config = config_file.map(c_path).transpose()?;
        if INITIALIZED.swap(true, Ordering::SeqCst) {
            return Err(VddkInitError::AlreadyInitialized);
        }
        // Never unloaded: VDDK's threads and atexit handlers may outlive Exit, and the
        // library can only be initialised once per process anyway.
        let lib: &'static Library = Box::leak(Box::new(lib));
        // Kept for the process's life too: nothing says VDDK copies them (nbdkit keeps
        // them), and InitEx runs once.
        let libdir: &'static std::ffi::CStr = Box::leak(libdir.into_boxed_c_str());
        let config: Option<&'static std::ffi::CStr> =
            config.map(|c| &*Box::leak(c.into_boxed_c_str()));
        let [log_fn, warn_fn, panic_fn] = log::callbacks();
        // SAFETY: first and only InitEx of the process (INITIALIZED); the callbacks are our
        // thread-safe shim functions; the strings live as long as the process.
        let err: VixError = unsafe {
            lib.raw().VixDiskLib_InitEx(
                INIT_MAJOR,
                INIT_MINOR,
                log_fn,
                warn_fn,
                panic_fn,
                libdir.as_ptr(),
                config.map_or(std::ptr::null(), std::ffi::CStr::as_ptr),
            )
        };
        lib.check("VixDiskLib_InitEx", err, ErrorContext::default)?;

        let (tx, rx) = crossbeam_channel::bounded(open_thread::QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("vddk-open".into())
            .spawn(move || open_thread::run(lib, rx));
        let thread = match thread {
            Ok(thread) => thread,
            Err(err) => {
                // SAFETY: InitEx succeeded and nothing else was started.
                unsafe { lib.raw().VixDiskLib_Exit() };
                return Err(VddkInitError::Spawn(err));
            }
        };
        tracing::info!(target: "vddk", path = %lib.path().display(), major = lib.major(), "VDDK initialised");
        Ok(Self {
            inner: Arc::new(Inner {
                lib,
                tx: Some(tx),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The loaded library.
    #[must_use]
    pub fn library(&self) -> &'static Library {
        self.inner.lib
    }

    /// The transport modes the library supports (`ListTransportModes`), e.g. `["file",
    /// "san", "hotadd", "nbd", "nbdssl"]`.
    #[must_use]
    pub fn transport_modes(&self) -> Vec<String> {
        // SAFETY: InitEx succeeded; the result is a static string or NULL, never freed.
        let modes = unsafe { cstr_to_string(self.inner.lib.raw().VixDiskLib_ListTransportModes()) };
        modes
            .unwrap_or_default()
            .split(':')
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Connects to the VM of `spec` (`ConnectEx`, on the `vddk-open` thread).
    ///
    /// # Errors
    /// ConnectEx's error (wrong credentials, unknown VM or snapshot …).
    pub fn connect(&self, spec: &ConnectSpec) -> Result<Connection, DiskLibError> {
        let id = self.request(|reply| OpenCmd::Connect {
            spec: Box::new(spec.clone()),
            reply,
        })??;
        Ok(Connection::new(self.clone(), id, spec))
    }

    /// Tells vCenter that the VM's disks are about to be accessed (`PrepareForAccess`), which
    /// disables its relocation until [`Vddk::end_access`]. `identity` (≤ 50 characters) tags
    /// the disable and must be the same for both calls.
    ///
    /// # Errors
    /// [`DiskLibError::IdentityTooLong`], or the call's error.
    pub fn prepare_for_access(
        &self,
        spec: &ConnectSpec,
        identity: &str,
    ) -> Result<(), DiskLibError> {
        check_identity(identity)?;
        self.request(|reply| OpenCmd::PrepareForAccess {
            spec: Box::new(spec.clone()),
            identity: identity.to_owned(),
            reply,
        })?
    }

    /// Re-enables the VM's relocation (`EndAccess`). May be called without a prior prepare
    /// (e.g. after a crash).
    ///
    /// # Errors
    /// [`DiskLibError::IdentityTooLong`], or the call's error.
    pub fn end_access(&self, spec: &ConnectSpec, identity: &str) -> Result<(), DiskLibError> {
        check_identity(identity)?;
        self.request(|reply| OpenCmd::EndAccess {
            spec: Box::new(spec.clone()),
            identity: identity.to_owned(),
            reply,
        })?
    }

    /// `VixDiskLib_Cleanup` for the vCenter of `spec` (its `vm` is ignored: VDDK wants no
    /// VM): removes the transport state that processes which did not shut down cleanly
    /// left, such as disks hot-added to this proxy VM, which keep vCenter from removing
    /// their snapshots. Call it after a crash, before removing the crashed jobs' snapshots.
    ///
    /// # Errors
    /// [`DiskLibError::OpenThreadGone`]; the call's own error is in the outcome, with the
    /// counts.
    pub fn cleanup(&self, spec: &ConnectSpec) -> Result<CleanupOutcome, DiskLibError> {
        let spec = ConnectSpec {
            vm: String::new(),
            snapshot: None,
            ..spec.clone()
        };
        self.request(|reply| OpenCmd::Cleanup {
            spec: Box::new(spec),
            reply,
        })
    }

    /// Drops this handle. When it was the last one (no other clone, connection or disk is
    /// alive), the `vddk-open` thread is stopped and `Exit` called before returning `true`.
    pub fn shutdown(self) -> bool {
        Arc::into_inner(self.inner).is_some()
    }

    /// Sends a command to the `vddk-open` thread and waits for its reply.
    pub(crate) fn request<T>(
        &self,
        make: impl FnOnce(Sender<T>) -> OpenCmd,
    ) -> Result<T, DiskLibError> {
        let (reply, result) = crossbeam_channel::bounded(1);
        self.send(make(reply))?;
        result.recv().map_err(|_| DiskLibError::OpenThreadGone)
    }

    /// Sends a command to the `vddk-open` thread.
    pub(crate) fn send(&self, cmd: OpenCmd) -> Result<(), DiskLibError> {
        let tx = self.inner.tx.as_ref().ok_or(DiskLibError::OpenThreadGone)?;
        tx.send(cmd).map_err(|_| DiskLibError::OpenThreadGone)
    }
}

fn check_identity(identity: &str) -> Result<(), DiskLibError> {
    let len = identity.chars().count();
    if len > MAX_IDENTITY_CHARS {
        return Err(DiskLibError::IdentityTooLong { len });
    }
    Ok(())
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has run the queued commands.
        drop(self.tx.take());
        let thread = match self.thread.get_mut() {
            Ok(thread) => thread.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!(target: "vddk", "the vddk-open thread panicked");
        }
        // SAFETY: InitEx succeeded (an Inner exists only then), every connection and disk
        // is gone (each holds a clone of this Arc), and the vddk-open thread has stopped:
        // nothing uses the library any more.
        unsafe { self.lib.raw().VixDiskLib_Exit() };
        tracing::debug!(target: "vddk", "VDDK exited");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_length_is_checked_in_characters() {
        assert!(check_identity(&"a".repeat(50)).is_ok());
        assert!(check_identity(&"é".repeat(50)).is_ok());
        let err = check_identity(&"a".repeat(51)).unwrap_err();
        assert!(
            matches!(err, DiskLibError::IdentityTooLong { len: 51 }),
            "{err}"
        );
    }

    #[test]
    fn vddk_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Vddk>();
    }
}
