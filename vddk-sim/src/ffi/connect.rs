//! Connect parameters and connections: AllocateConnectParams, FreeConnectParams, ConnectEx,
//! Disconnect, Cleanup, PrepareForAccess, EndAccess.

use std::ffi::c_char;
use std::sync::Arc;

use vddk_sys::{
    Bool, VIX_E_INVALID_ARG, VIX_OK, VixDiskLibConnectParams, VixDiskLibConnection, VixError,
};

use super::{connection_of, value_call, vix_call};
use crate::alloc::{self, Kind};
use crate::connection::{Connection, open_session, vm_moref};
use crate::handles::{ptr_to_token, token_to_ptr};
use crate::params::{c_str, decode};
use crate::storage::{LabView, check_identity};
use crate::vix::{VixResult, fail};
use crate::{hotadd, library, log};

/// A zeroed `VixDiskLibConnectParams` owned by the library (VDDK 6.7+, optional).
///
/// # Safety
/// Free the result with FreeConnectParams only.
#[cfg(not(feature = "vddk65"))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_AllocateConnectParams() -> *mut VixDiskLibConnectParams {
    value_call(
        "VixDiskLib_AllocateConnectParams",
        std::ptr::null_mut(),
        || {
            // SAFETY: calloc has no preconditions; a NULL result is returned as is.
            let p = unsafe { libc::calloc(1, size_of::<VixDiskLibConnectParams>()) };
            let p = p.cast::<VixDiskLibConnectParams>();
            if !p.is_null() {
                alloc::track(Kind::ConnectParams, p.expose_provenance());
            }
            p
        },
    )
}

/// Frees a structure from AllocateConnectParams. The strings the caller stored in it stay
/// the caller's. NULL or a pointer this library did not allocate is logged and ignored.
///
/// # Safety
/// `connectParams` is NULL or was returned by AllocateConnectParams and not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_FreeConnectParams(connectParams: *mut VixDiskLibConnectParams) {
    value_call("VixDiskLib_FreeConnectParams", (), || {
        if connectParams.is_null() {
            return;
        }
        if !alloc::untrack(Kind::ConnectParams, connectParams.expose_provenance()) {
            log::warn(&format!(
                "VixDiskLib_FreeConnectParams({connectParams:p}): not allocated by \
                 VixDiskLib_AllocateConnectParams; ignored"
            ));
            return;
        }
        // SAFETY: tracked, so it came from calloc in AllocateConnectParams and is freed once.
        unsafe { libc::free(connectParams.cast()) };
    });
}

/// Validates the parameters against the lab's vCenter (server, credentials, VM,
/// snapshot; over SOAP) and returns a connection. The thumbprint is checked later, by Open.
///
/// # Safety
/// `connectParams` is NULL or a valid params struct; string arguments are NULL or C
/// strings; `connection` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_ConnectEx(
    connectParams: *const VixDiskLibConnectParams,
    readOnly: Bool,
    snapshotRef: *const c_char,
    transportModes: *const c_char,
    connection: *mut VixDiskLibConnection,
) -> VixError {
    vix_call("VixDiskLib_ConnectEx", || {
        if connection.is_null() {
            return fail(VIX_E_INVALID_ARG, "connection (out) is NULL");
        }
        // SAFETY: non-NULL and writable per the contract.
        unsafe { connection.write(std::ptr::null_mut()) };
        let library = library::get()?;
        // SAFETY: NULL or a valid params struct per the contract.
        let spec = unsafe { decode(connectParams) }?;
        // SAFETY: NULL or C strings per the contract.
        let (snapshot, modes) = unsafe {
            (
                c_str(snapshotRef, "snapshotRef")?,
                c_str(transportModes, "transportModes")?,
            )
        };
        let conn = Connection::connect(
            &library.config.lab_root,
            &spec,
            readOnly != 0,
            snapshot.as_deref(),
            modes.as_deref(),
            library.config.proxy_vm.as_deref(),
        )?;
        log::info(&format!(
            "connected to {} (vm {}, snapshot {}, {})",
            spec.server.as_deref().unwrap_or("local host"),
            spec.vmx_spec.as_deref().unwrap_or("-"),
            snapshot.as_deref().unwrap_or("-"),
            if readOnly != 0 {
                "read-only"
            } else {
                "read-write"
            },
        ));
        let token = library.connections.insert(Arc::new(conn));
        // SAFETY: as above.
        unsafe { connection.write(token_to_ptr(token)) };
        Ok(VIX_OK)
    })
}

/// Ends a connection. Disks opened through it stay usable until closed (they hold it).
///
/// # Safety
/// `connection` is any value; unknown ones fail with VIX_E_DISK_INVALID_CONNECTION.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_Disconnect(connection: VixDiskLibConnection) -> VixError {
    vix_call("VixDiskLib_Disconnect", || {
        let library = library::get()?;
        connection_of(&library, connection)?;
        let Some(conn) = library.connections.remove(ptr_to_token(connection)) else {
            return Ok(VIX_OK);
        };
        let still_open = library
            .disks
            .values()
            .iter()
            .filter(|d| Arc::ptr_eq(&d.connection, &conn))
            .count();
        if still_open > 0 {
            log::trivia(&format!("disconnect with {still_open} disk(s) open"));
        }
        Ok(VIX_OK)
    })
}

/// Detaches what processes that died hot-added to the proxy VM (see `hotadd`), over a
/// session of its own with `connectParams`' server and credentials (`vmxSpec` is ignored,
/// as callers set it NULL). Counts are of VMs; VIX_E_FAIL, with the counts written, when
/// something could not be detached. A local connection (no server) has nothing to clean.
///
/// # Safety
/// `connectParams` is NULL or valid; the counters are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_Cleanup(
    connectParams: *const VixDiskLibConnectParams,
    numCleanedUp: *mut u32,
    numRemaining: *mut u32,
) -> VixError {
    vix_call("VixDiskLib_Cleanup", || {
        let library = library::get()?;
        let write = |cleaned: u32, remaining: u32| {
            for (counter, value) in [(numCleanedUp, cleaned), (numRemaining, remaining)] {
                if !counter.is_null() {
                    // SAFETY: non-NULL and writable per the contract.
                    unsafe { counter.write(value) };
                }
            }
        };
        write(0, 0);
        // SAFETY: NULL or a valid params struct per the contract.
        let spec = unsafe { decode(connectParams) }?;
        if spec.server.is_none() {
            return Ok(VIX_OK);
        }
        let view = LabView::open(&library.config.lab_root)?;
        let (session, _) = open_session(&view, &spec)?;
        match hotadd::cleanup(&library.config.tmp_directory, &session) {
            Ok(done) => {
                write(done.cleaned, done.remaining);
                Ok(VIX_OK)
            }
            Err((done, e)) => {
                write(done.cleaned, done.remaining);
                Err(e)
            }
        }
    })
}

/// Validates params and identity, logs in to the lab's vCenter and calls
/// `DisableMethods` (`disable = true`) or `EnableMethods` for `RelocateVM_Task` on the VM
/// with the identity as source, as VDDK does.
///
/// # Safety
/// As PrepareForAccess.
unsafe fn toggle_access(
    params: *const VixDiskLibConnectParams,
    identity: *const c_char,
    disable: bool,
) -> VixResult<u32> {
    let library = library::get()?;
    // SAFETY: NULL or a valid params struct per the caller's contract.
    let spec = unsafe { decode(params) }?;
    // SAFETY: NULL or a C string per the caller's contract.
    let Some(identity) = (unsafe { c_str(identity, "identity") })? else {
        return fail(VIX_E_INVALID_ARG, "identity is NULL");
    };
    check_identity(&identity)?;
    let Some(vm) = vm_moref(&spec)? else {
        return fail(
            VIX_E_INVALID_ARG,
            "vmxSpec is NULL: PrepareForAccess/EndAccess need the VM (\"moref=vm-N\")",
        );
    };
    let view = LabView::open(&library.config.lab_root)?;
    let (session, _) = open_session(&view, &spec)?;
    session.set_relocate_disabled(&vm, &identity, disable)?;
    log::info(&format!(
        "{} RelocateVM_Task on {vm} for {identity:?}",
        if disable { "disabled" } else { "enabled" }
    ));
    Ok(VIX_OK)
}

/// Disables `RelocateVM_Task` on the VM named by `vmxSpec`, tagged with `identity`.
///
/// # Safety
/// `connectParams` is NULL or valid; `identity` is NULL or a C string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_PrepareForAccess(
    connectParams: *const VixDiskLibConnectParams,
    identity: *const c_char,
) -> VixError {
    // SAFETY: forwarded contract.
    vix_call("VixDiskLib_PrepareForAccess", || unsafe {
        toggle_access(connectParams, identity, true)
    })
}

/// Re-enables `RelocateVM_Task`; allowed without a prior PrepareForAccess.
///
/// # Safety
/// `connectParams` is NULL or valid; `identity` is NULL or a C string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_EndAccess(
    connectParams: *const VixDiskLibConnectParams,
    identity: *const c_char,
) -> VixError {
    // SAFETY: forwarded contract.
    vix_call("VixDiskLib_EndAccess", || unsafe {
        toggle_access(connectParams, identity, false)
    })
}
