//! The `vddk-open` thread: the only thread that calls `ConnectEx`, `Open`, `Close` and
//! `Disconnect` (VDDK forbids concurrent Open/Close; VDDK guide "Multithreading
//! Considerations", nbdkit's global open lock). It also runs PrepareForAccess/EndAccess,
//! which open their own vCenter session.
//!
//! Connections never leave this thread: it keeps each `VixDiskLibConnection` together with
//! the connect parameters it was made from (VDDK may refer to them until Disconnect) in a
//! table, and hands out ids. Only disk handles leave it, to the thread that owns the
//! [`super::Disk`].

use std::collections::HashMap;
use std::ffi::c_char;

use crossbeam_channel::{Receiver, Sender};
use vddk_sys as sys;

use super::connect::{CParams, ConnectSpec, c_string};
use super::error::{DiskLibError, ErrorContext};
use super::library::Library;

/// Commands queue behind each other on a bounded channel of this size.
pub(crate) const QUEUE_DEPTH: usize = 16;

/// Id of a connection in the `vddk-open` thread's table.
pub(crate) type ConnId = u64;

/// A disk handle on its way between `vddk-open` and the thread that owns the disk.
#[derive(Debug)]
pub(crate) struct RawHandle(pub(crate) sys::VixDiskLibHandle);

// SAFETY: a VDDK disk handle is not bound to a thread; access must only be serialised
// (VDDK.md §8). `Disk` (which holds it) is !Sync, and the handle moves to `vddk-open` only
// when the Disk is dropped.
unsafe impl Send for RawHandle {}

type Reply<T> = Sender<Result<T, DiskLibError>>;

/// A request to the `vddk-open` thread.
pub(crate) enum OpenCmd {
    Connect {
        spec: Box<ConnectSpec>,
        reply: Reply<ConnId>,
    },
    Disconnect {
        conn: ConnId,
        reply: Sender<()>,
    },
    Open {
        conn: ConnId,
        path: String,
        flags: u32,
        reply: Reply<RawHandle>,
    },
    Close {
        handle: RawHandle,
        /// The VM and disk, for a failure's message.
        context: ErrorContext,
        reply: Sender<()>,
    },
    PrepareForAccess {
        spec: Box<ConnectSpec>,
        identity: String,
        reply: Reply<()>,
    },
    EndAccess {
        spec: Box<ConnectSpec>,
        identity: String,
        reply: Reply<()>,
    },
    Cleanup {
        spec: Box<ConnectSpec>,
        reply: Sender<CleanupOutcome>,
    },
}

/// What `VixDiskLib_Cleanup` reported: counts of VMs, and its error when something is left.
#[derive(Debug)]
pub struct CleanupOutcome {
    /// VMs whose leftover transport state (hot-added disks …) was removed.
    pub cleaned: u32,
    /// VMs that still have some.
    pub remaining: u32,
    /// The call's error, when it did not clean everything.
    pub error: Option<DiskLibError>,
}

struct OpenConnection {
    raw: sys::VixDiskLibConnection,
    vm: String,
    // VDDK may keep pointers into the parameters until Disconnect (nbdkit frees them only
    // after Disconnect), so they live as long as the connection; the snapshot moref and
    // the transport list too (used again at Open, when the transport is chosen).
    _params: CParams<'static>,
    _snapshot: Option<std::ffi::CString>,
    _modes: Option<std::ffi::CString>,
}

fn vm_context(vm: &str) -> ErrorContext {
    ErrorContext {
        vm: Some(vm.to_owned()),
        ..ErrorContext::default()
    }
}

/// The thread's loop: runs until every sender is gone, then disconnects what is left.
pub(crate) fn run(lib: &'static Library, rx: Receiver<OpenCmd>) {
    let mut conns: HashMap<ConnId, OpenConnection> = HashMap::new();
    let mut next_id: ConnId = 1;
    for cmd in rx {
        match cmd {
            OpenCmd::Connect { spec, reply } => {
                let result = connect(lib, &spec).map(|conn| {
                    let id = next_id;
                    next_id += 1;
                    conns.insert(id, conn);
                    id
                });
                let _ = reply.send(result);
            }
            OpenCmd::Disconnect { conn, reply } => {
                if let Some(conn) = conns.remove(&conn) {
                    disconnect(lib, conn);
                }
                let _ = reply.send(());
            }
            OpenCmd::Open {
                conn,
                path,
                flags,
                reply,
            } => {
                let result = match conns.get(&conn) {
                    Some(conn) => open(lib, conn, &path, flags),
                    None => Err(DiskLibError::OpenThreadGone),
                };
                let _ = reply.send(result);
            }
            OpenCmd::Close {
                handle,
                context,
                reply,
            } => {
                // SAFETY: `handle` came from Open and is closed exactly once: its Disk was
                // dropped and no other copy exists.
                let err = unsafe { lib.raw().VixDiskLib_Close(handle.0) };
                if let Err(err) = lib.check("VixDiskLib_Close", err, || context.clone()) {
                    tracing::warn!(target: "vddk", "{err}");
                }
                let _ = reply.send(());
            }
            OpenCmd::PrepareForAccess {
                spec,
                identity,
                reply,
            } => {
                let _ = reply.send(access(lib, &spec, &identity, true));
            }
            OpenCmd::EndAccess {
                spec,
                identity,
                reply,
            } => {
                let _ = reply.send(access(lib, &spec, &identity, false));
            }
            OpenCmd::Cleanup { spec, reply } => {
                let _ = reply.send(cleanup(lib, &spec));
            }
        }
    }
    for (_, conn) in conns.drain() {
        disconnect(lib, conn);
    }
}

fn connect(lib: &'static Library, spec: &ConnectSpec) -> Result<OpenConnection, DiskLibError> {
    let params = CParams::new(lib, spec)?;
    let snapshot = spec
        .snapshot
        .as_deref()
        .map(|s| c_string("snapshot", s))
        .transpose()?;
    let modes = spec
        .transport_list()
        .map(|m| c_string("transport modes", &m))
        .transpose()?;
    let mut raw: sys::VixDiskLibConnection = std::ptr::null_mut();
    // SAFETY: `params` and the optional strings outlive the call; NULL snapshot/modes mean
    // "current state"/"library default"; `raw` is a valid out-pointer.
    let err = unsafe {
        lib.raw().VixDiskLib_ConnectEx(
            params.as_ptr(),
            sys::Bool::from(spec.read_only),
            snapshot.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            modes.as_ref().map_or(std::ptr::null(), |m| m.as_ptr()),
            &raw mut raw,
        )
    };
    // A success without a connection is the library's failure (never handed on).
    let err = null_is_failure(err, raw.is_null());
    lib.check("VixDiskLib_ConnectEx", err, || vm_context(&spec.vm))?;
    Ok(OpenConnection {
        raw,
        vm: spec.vm.clone(),
        _params: params,
        _snapshot: snapshot,
        _modes: modes,
    })
}

/// `err`, or `VIX_E_FAIL` for a `VIX_OK` that came without the object it promised.
pub(super) fn null_is_failure(err: sys::VixError, null: bool) -> sys::VixError {
    if null && err == sys::VixError::from(sys::VIX_OK) {
        sys::VixError::from(sys::VIX_E_FAIL)
    } else {
        err
    }
}

fn disconnect(lib: &Library, conn: OpenConnection) {
    // SAFETY: `conn.raw` came from ConnectEx and is disconnected exactly once (it was
    // removed from the table); its disks were closed before (each Disk holds the
    // connection, and Close commands queue ahead of the Disconnect).
    let err = unsafe { lib.raw().VixDiskLib_Disconnect(conn.raw) };
    if let Err(err) = lib.check("VixDiskLib_Disconnect", err, || vm_context(&conn.vm)) {
        tracing::warn!(target: "vddk", "{err}");
    }
}

fn open(
    lib: &Library,
    conn: &OpenConnection,
    path: &str,
    flags: u32,
) -> Result<RawHandle, DiskLibError> {
    let c_path = c_string("disk path", path)?;
    let mut handle: sys::VixDiskLibHandle = std::ptr::null_mut();
    // SAFETY: `conn.raw` is a live connection; `c_path` outlives the call; `handle` is a
    // valid out-pointer.
    let err = unsafe {
        lib.raw()
            .VixDiskLib_Open(conn.raw, c_path.as_ptr(), flags, &raw mut handle)
    };
    let err = null_is_failure(err, handle.is_null());
    lib.check("VixDiskLib_Open", err, || ErrorContext {
        vm: Some(conn.vm.clone()),
        disk: Some(path.to_owned()),
        range: None,
    })?;
    Ok(RawHandle(handle))
}

/// The longest identity PrepareForAccess/EndAccess accept (VDDK.md §7).
pub(crate) const MAX_IDENTITY_CHARS: usize = 50;

fn access(
    lib: &'static Library,
    spec: &ConnectSpec,
    identity: &str,
    prepare: bool,
) -> Result<(), DiskLibError> {
    let params = CParams::new(lib, spec)?;
    let c_identity = c_string("identity", identity)?;
    let id_ptr: *const c_char = c_identity.as_ptr();
    let (call, err) = if prepare {
        // SAFETY: `params` and `c_identity` outlive the call.
        let err = unsafe {
            lib.raw()
                .VixDiskLib_PrepareForAccess(params.as_ptr(), id_ptr)
        };
        ("VixDiskLib_PrepareForAccess", err)
    } else {
        // SAFETY: `params` and `c_identity` outlive the call.
        let err = unsafe { lib.raw().VixDiskLib_EndAccess(params.as_ptr(), id_ptr) };
        ("VixDiskLib_EndAccess", err)
    };
    lib.check(call, err, || vm_context(&spec.vm))?;
    Ok(())
}

fn cleanup(lib: &'static Library, spec: &ConnectSpec) -> CleanupOutcome {
    let params = match CParams::new(lib, spec) {
        Ok(params) => params,
        Err(error) => {
            return CleanupOutcome {
                cleaned: 0,
                remaining: 0,
                error: Some(error),
            };
        }
    };
    let (mut cleaned, mut remaining) = (0u32, 0u32);
    // SAFETY: `params` outlives the call; the counters are valid out-pointers.
    let err = unsafe {
        lib.raw()
            .VixDiskLib_Cleanup(params.as_ptr(), &raw mut cleaned, &raw mut remaining)
    };
    let error = lib
        .check("VixDiskLib_Cleanup", err, ErrorContext::default)
        .err()
        .map(DiskLibError::from);
    CleanupOutcome {
        cleaned,
        remaining,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_without_its_object_is_a_failure() {
        let ok = sys::VixError::from(sys::VIX_OK);
        let fail = sys::VixError::from(sys::VIX_E_FAIL);
        assert_eq!(null_is_failure(ok, true), fail);
        assert_eq!(null_is_failure(ok, false), ok);
        let not_found = sys::VixError::from(sys::VIX_E_FILE_NOT_FOUND);
        assert_eq!(null_is_failure(not_found, true), not_found);
    }
}
