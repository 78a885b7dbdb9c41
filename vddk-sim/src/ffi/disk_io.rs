//! Open, Close, GetTransportMode, Read, Write, ReadAsync, WriteAsync, Wait, Flush.

use std::ffi::c_char;
use std::sync::Arc;

use vddk_sys::{
    VIX_ASYNC, VIX_E_INVALID_ARG, VIX_OK, VixDiskLibCompletionCB, VixDiskLibConnection,
    VixDiskLibHandle, VixDiskLibSectorType, VixError,
};

use super::{connection_of, disk_of, value_call, vix_call};
use crate::disk::{AioRequest, DiskHandle};
use crate::handles::{ptr_to_token, token_to_ptr};
use crate::library::{self, enter_open_close};
use crate::params::c_str;
use crate::vix::{VixResult, fail};

/// Opens a disk: a datastore path (`[ds1] vm/disk.vmdk`) on a server connection, an
/// absolute path on a local one.
///
/// # Safety
/// `path` is NULL or a C string; `diskHandle` is NULL or writable. Must not run
/// concurrently with another Open or Close (detected: VIX_E_FAIL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_Open(
    connection: VixDiskLibConnection,
    path: *const c_char,
    flags: u32,
    diskHandle: *mut VixDiskLibHandle,
) -> VixError {
    vix_call("VixDiskLib_Open", || {
        if diskHandle.is_null() {
            return fail(VIX_E_INVALID_ARG, "diskHandle (out) is NULL");
        }
        // SAFETY: non-NULL and writable per the contract.
        unsafe { diskHandle.write(std::ptr::null_mut()) };
        let library = library::get()?;
        library.check_background_alive()?;
        let _guard = enter_open_close("VixDiskLib_Open", library.config.open_delay)?;
        let conn = connection_of(&library, connection)?;
        // SAFETY: NULL or a C string per the contract.
        let Some(path) = (unsafe { c_str(path, "path") })? else {
            return fail(VIX_E_INVALID_ARG, "path is NULL");
        };
        let disk = DiskHandle::open(&library, conn, &path, flags)?;
        let token = library.disks.insert(Arc::new(disk));
        // SAFETY: as above.
        unsafe { diskHandle.write(token_to_ptr(token)) };
        Ok(VIX_OK)
    })
}

/// Closes a disk after its async requests complete. A closed handle is invalid afterwards.
///
/// # Safety
/// Must not run concurrently with another Open or Close (detected: VIX_E_FAIL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_Close(diskHandle: VixDiskLibHandle) -> VixError {
    vix_call("VixDiskLib_Close", || {
        let library = library::get()?;
        let _guard = enter_open_close("VixDiskLib_Close", library.config.open_delay)?;
        let disk = disk_of(&library, diskHandle)?;
        library.disks.remove(ptr_to_token(diskHandle));
        disk.shut_down();
        Ok(VIX_OK)
    })
}

/// "hotadd", "nbdssl" or "nbd" for a server connection, "file" for a local one; "" for a
/// bad handle.
/// The string is static.
///
/// # Safety
/// Any handle value is accepted.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_GetTransportMode(
    diskHandle: VixDiskLibHandle,
) -> *const c_char {
    value_call("VixDiskLib_GetTransportMode", c"".as_ptr(), || {
        let mode = library::get()
            .and_then(|library| disk_of(&library, diskHandle))
            .map(|disk| disk.transport());
        match mode {
            Ok("nbdssl") => c"nbdssl".as_ptr(),
            Ok("nbd") => c"nbd".as_ptr(),
            Ok("hotadd") => c"hotadd".as_ptr(),
            Ok("file") => c"file".as_ptr(),
            _ => c"".as_ptr(),
        }
    })
}

/// Reads `numSectors` sectors at `startSector` into `readBuffer`.
///
/// # Safety
/// `readBuffer` is NULL or writable for `numSectors * 512` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_Read(
    diskHandle: VixDiskLibHandle,
    startSector: VixDiskLibSectorType,
    numSectors: VixDiskLibSectorType,
    readBuffer: *mut u8,
) -> VixError {
    vix_call("VixDiskLib_Read", || {
        let (disk, offset, len) = prepare(diskHandle, startSector, numSectors, readBuffer, false)?;
        if len == 0 {
            return Ok(VIX_OK);
        }
        // SAFETY: non-NULL (checked by `prepare`) and writable for `len` bytes per the
        // contract; we hold no other reference to the caller's buffer.
        let buf = unsafe { std::slice::from_raw_parts_mut(readBuffer, len) };
        disk.with_disk(|d| d.read_at(offset, buf))?;
        Ok(VIX_OK)
    })
}

/// Writes `numSectors` sectors at `startSector` from `writeBuffer`.
///
/// # Safety
/// `writeBuffer` is NULL or readable for `numSectors * 512` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_Write(
    diskHandle: VixDiskLibHandle,
    startSector: VixDiskLibSectorType,
    numSectors: VixDiskLibSectorType,
    writeBuffer: *const u8,
) -> VixError {
    vix_call("VixDiskLib_Write", || {
        let (disk, offset, len) = prepare(diskHandle, startSector, numSectors, writeBuffer, true)?;
        if len == 0 {
            return Ok(VIX_OK);
        }
        // SAFETY: non-NULL (checked by `prepare`) and readable for `len` bytes per the
        // contract.
        let buf = unsafe { std::slice::from_raw_parts(writeBuffer, len) };
        disk.with_disk(|d| d.write_at(offset, buf))?;
        Ok(VIX_OK)
    })
}

/// Validates a request on the caller's thread: handle, buffer, range, writability.
fn prepare<T>(
    handle: VixDiskLibHandle,
    start: u64,
    n: u64,
    buf: *const T,
    write: bool,
) -> VixResult<(Arc<DiskHandle>, u64, usize)> {
    let library = library::get()?;
    let disk = disk_of(&library, handle)?;
    if buf.is_null() {
        return fail(VIX_E_INVALID_ARG, "buffer is NULL");
    }
    let (offset, len) = disk.byte_range(start, n)?;
    if write {
        disk.check_writable()?;
    }
    disk.check_connection()?;
    Ok((disk, offset, len))
}

fn submit(
    handle: VixDiskLibHandle,
    start: u64,
    n: u64,
    buf: *const u8,
    write: bool,
    callback: VixDiskLibCompletionCB,
    cb_data: *mut std::ffi::c_void,
) -> VixResult<u32> {
    let (disk, offset, len) = prepare(handle, start, n, buf, write)?;
    disk.submit(AioRequest {
        write,
        offset,
        len,
        buf_addr: buf.expose_provenance(),
        callback,
        cb_data_addr: cb_data.expose_provenance(),
    })?;
    Ok(VIX_ASYNC)
}

/// Queues a read; returns VIX_ASYNC and later calls `callback(cbData, result)` from the
/// handle's worker thread. Any other return is an immediate error (no callback).
///
/// # Safety
/// `readBuffer` stays writable for `numSectors * 512` bytes, and `callback`/`cbData` stay
/// valid, until the callback has run.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_ReadAsync(
    diskHandle: VixDiskLibHandle,
    startSector: VixDiskLibSectorType,
    numSectors: VixDiskLibSectorType,
    readBuffer: *mut u8,
    callback: VixDiskLibCompletionCB,
    cbData: *mut std::ffi::c_void,
) -> VixError {
    vix_call("VixDiskLib_ReadAsync", || {
        submit(
            diskHandle,
            startSector,
            numSectors,
            readBuffer,
            false,
            callback,
            cbData,
        )
    })
}

/// Queues a write; as ReadAsync.
///
/// # Safety
/// `writeBuffer` stays readable and unchanged for `numSectors * 512` bytes, and
/// `callback`/`cbData` stay valid, until the callback has run.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_WriteAsync(
    diskHandle: VixDiskLibHandle,
    startSector: VixDiskLibSectorType,
    numSectors: VixDiskLibSectorType,
    writeBuffer: *const u8,
    callback: VixDiskLibCompletionCB,
    cbData: *mut std::ffi::c_void,
) -> VixError {
    vix_call("VixDiskLib_WriteAsync", || {
        submit(
            diskHandle,
            startSector,
            numSectors,
            writeBuffer,
            true,
            callback,
            cbData,
        )
    })
}

/// Blocks until every async request of the handle has completed (callbacks ran).
///
/// # Safety
/// Any handle value is accepted.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_Wait(diskHandle: VixDiskLibHandle) -> VixError {
    vix_call("VixDiskLib_Wait", || {
        let library = library::get()?;
        disk_of(&library, diskHandle)?.wait();
        Ok(VIX_OK)
    })
}

/// Waits for async requests, then makes written data durable.
///
/// # Safety
/// Any handle value is accepted.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_Flush(diskHandle: VixDiskLibHandle) -> VixError {
    vix_call("VixDiskLib_Flush", || {
        let library = library::get()?;
        let disk = disk_of(&library, diskHandle)?;
        disk.wait();
        disk.with_disk(|d| d.flush())?;
        Ok(VIX_OK)
    })
}
