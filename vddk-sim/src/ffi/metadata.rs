//! GetMetadataKeys, ReadMetadata, WriteMetadata: the descriptor's `ddb.*` entries, keys
//! without the `ddb.` prefix.

use std::ffi::c_char;

use vddk_sys::{VIX_E_BUFFER_TOOSMALL, VIX_E_INVALID_ARG, VIX_OK, VixDiskLibHandle, VixError};

use super::{disk_of, vix_call};
use crate::library;
use crate::params::c_str;
use crate::vix::{VixResult, fail};

/// Copies `bytes` to `buf` when it fits in `len`; always reports the size needed.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes; `required` is NULL or writable.
unsafe fn copy_out(
    bytes: &[u8],
    buf: *mut c_char,
    len: usize,
    required: *mut usize,
) -> VixResult<u32> {
    if !required.is_null() {
        // SAFETY: non-NULL and writable per the contract.
        unsafe { required.write(bytes.len()) };
    }
    if buf.is_null() || len < bytes.len() {
        return fail(
            VIX_E_BUFFER_TOOSMALL,
            format!("buffer of {len} bytes, {} needed", bytes.len()),
        );
    }
    // SAFETY: `buf` is writable for `len >= bytes.len()` bytes and cannot overlap our Vec.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len()) };
    Ok(VIX_OK)
}

/// Writes the key names, each NUL-terminated, then one more NUL. With a NULL or short
/// buffer: VIX_E_BUFFER_TOOSMALL and `*requiredLen` set.
///
/// # Safety
/// `keysBuffer` is NULL or writable for `bufLen` bytes; `requiredLen` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_GetMetadataKeys(
    diskHandle: VixDiskLibHandle,
    keysBuffer: *mut c_char,
    bufLen: usize,
    requiredLen: *mut usize,
) -> VixError {
    vix_call("VixDiskLib_GetMetadataKeys", || {
        let library = library::get()?;
        let disk = disk_of(&library, diskHandle)?;
        let mut bytes = Vec::new();
        for key in disk.with_disk(|d| d.metadata_keys()) {
            bytes.extend_from_slice(key.as_bytes());
            bytes.push(0);
        }
        bytes.push(0);
        // SAFETY: forwarded contract.
        unsafe { copy_out(&bytes, keysBuffer, bufLen, requiredLen) }
    })
}

/// Reads one key's value (NUL-terminated). Unknown key: VIX_E_DISK_KEY_NOTFOUND; NULL or
/// short buffer: VIX_E_BUFFER_TOOSMALL with `*requiredLen` set.
///
/// # Safety
/// `key` is NULL or a C string; `buf` NULL or writable for `bufLen` bytes; `requiredLen`
/// NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_ReadMetadata(
    diskHandle: VixDiskLibHandle,
    key: *const c_char,
    buf: *mut c_char,
    bufLen: usize,
    requiredLen: *mut usize,
) -> VixError {
    vix_call("VixDiskLib_ReadMetadata", || {
        let library = library::get()?;
        let disk = disk_of(&library, diskHandle)?;
        // SAFETY: NULL or a C string per the contract.
        let Some(key) = (unsafe { c_str(key, "key") })? else {
            return fail(VIX_E_INVALID_ARG, "key is NULL");
        };
        let mut bytes = disk.with_disk(|d| d.read_metadata(&key))?.into_bytes();
        bytes.push(0);
        // SAFETY: forwarded contract.
        unsafe { copy_out(&bytes, buf, bufLen, requiredLen) }
    })
}

/// Sets a key in the descriptor (persisted). Read-only handle: VIX_E_FILE_READ_ONLY.
///
/// # Safety
/// `key` and `val` are NULL or C strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_WriteMetadata(
    diskHandle: VixDiskLibHandle,
    key: *const c_char,
    val: *const c_char,
) -> VixError {
    vix_call("VixDiskLib_WriteMetadata", || {
        let library = library::get()?;
        let disk = disk_of(&library, diskHandle)?;
        // SAFETY: NULL or C strings per the contract.
        let (key, val) = unsafe { (c_str(key, "key")?, c_str(val, "val")?) };
        let (Some(key), Some(val)) = (key, val) else {
            return fail(VIX_E_INVALID_ARG, "key or val is NULL");
        };
        disk.check_writable()?;
        disk.with_disk(|d| d.write_metadata(&key, &val))?;
        Ok(VIX_OK)
    })
}
