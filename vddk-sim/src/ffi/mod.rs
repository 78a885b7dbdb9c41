//! The exported `VixDiskLib_*` functions: the whole C ABI of `vddk-sys/include/vddk.h`.
//!
//! Every export runs its body inside `vix_call` / `value_call`, which catch panics
//! (a panic must never unwind into C: it becomes VIX_E_FAIL and a panic-level log line),
//! record the failure detail for GetErrorText and log it. Handles are looked up in the
//! library's tables, never dereferenced.
//!
//! Not thread-safe by contract (as VDDK): InitEx/Exit once per process; Open/Close not
//! concurrently (detected); one handle not from two threads at once (tolerated: each handle
//! serialises its own I/O).

#![allow(non_snake_case)]

pub mod connect;
pub mod disk_info;
pub mod disk_io;
pub mod lifecycle;
pub mod metadata;

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use vddk_sys::{
    VIX_E_DISK_INVALID_CONNECTION, VIX_E_FAIL, VIX_E_INVALID_HANDLE, VixDiskLibConnection,
    VixDiskLibHandle, VixError,
};

use crate::connection::Connection;
use crate::disk::DiskHandle;
use crate::handles::ptr_to_token;
use crate::library::Library;
use crate::log;
use crate::vix::{self, VixCallError, VixResult, fail};

/// Runs an export returning VixError: Ok(code) is returned as is (VIX_OK or VIX_ASYNC);
/// an error is recorded, logged and returned; a panic becomes VIX_E_FAIL.
pub(crate) fn vix_call(call: &'static str, body: impl FnOnce() -> VixResult<u32>) -> VixError {
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        let msg = format!("{call} panicked: {}", panic_text(payload.as_ref()));
        log::panic(&msg);
        Err(VixCallError::new(VIX_E_FAIL, msg))
    });
    match result {
        Ok(code) => VixError::from(code),
        Err(e) => {
            vix::record_failure(call, &e);
            log::info(&format!("{call} failed: {e}"));
            VixError::from(e.code)
        }
    }
}

/// Runs an export that returns a value (pointer, void); a panic yields `fallback`.
pub(crate) fn value_call<T>(call: &'static str, fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        log::panic(&format!(
            "{call} panicked: {}",
            panic_text(payload.as_ref())
        ));
        fallback
    })
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// The open disk behind `handle`, or VIX_E_INVALID_HANDLE (NULL, closed, forged).
pub(crate) fn disk_of(library: &Library, handle: VixDiskLibHandle) -> VixResult<Arc<DiskHandle>> {
    match library.disks.get(ptr_to_token(handle)) {
        Some(disk) => Ok(disk),
        None => fail(
            VIX_E_INVALID_HANDLE,
            format!("disk handle {handle:p} is not an open disk"),
        ),
    }
}

/// The connection behind `conn`, or VIX_E_DISK_INVALID_CONNECTION.
pub(crate) fn connection_of(
    library: &Library,
    conn: VixDiskLibConnection,
) -> VixResult<Arc<Connection>> {
    match library.connections.get(ptr_to_token(conn)) {
        Some(c) => Ok(c),
        None => fail(
            VIX_E_DISK_INVALID_CONNECTION,
            format!("connection {conn:p} is not a live connection"),
        ),
    }
}
