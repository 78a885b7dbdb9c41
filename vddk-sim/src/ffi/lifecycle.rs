//! InitEx, Exit, ListTransportModes, GetErrorText, FreeErrorText.

use std::ffi::{CString, c_char};
use std::path::Path;

use vddk_sys::{VIX_E_INVALID_ARG, VIX_OK, VixDiskLibGenericLogFunc, VixError};

use super::{value_call, vix_call};
use crate::alloc::{self, Kind};
use crate::config::{LAB_ROOT_KEY, SimConfig};
use crate::connection::ALL_TRANSPORT_MODES;
use crate::params::c_str;
use crate::vix::{self, fail};
use crate::{library, log};

/// Initialises the library: parses `configFile` (which must set `vadp.lab.root`), installs
/// the log callbacks (NULL ones log to stderr) and starts the background thread.
///
/// # Safety
/// `libDir` and `configFile` are NULL or NUL-terminated strings; non-NULL callbacks have
/// the `VixDiskLibGenericLogFunc` signature and stay callable until Exit.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_InitEx(
    majorVersion: u32,
    minorVersion: u32,
    log: VixDiskLibGenericLogFunc,
    warn: VixDiskLibGenericLogFunc,
    panic: VixDiskLibGenericLogFunc,
    libDir: *const c_char,
    configFile: *const c_char,
) -> VixError {
    vix_call("VixDiskLib_InitEx", || {
        // SAFETY: NULL or a C string, per this function's contract.
        let config_file = unsafe { c_str(configFile, "configFile") }?;
        // SAFETY: as above.
        let lib_dir = unsafe { c_str(libDir, "libDir") }?;
        let Some(config_file) = config_file else {
            return fail(
                VIX_E_INVALID_ARG,
                format!("configFile is NULL: vddk-sim needs {LAB_ROOT_KEY} from a config file"),
            );
        };
        let config = SimConfig::load(Path::new(&config_file))?;
        library::init(config, [log, warn, panic])?;
        log::info(&format!(
            "InitEx({majorVersion}.{minorVersion}, libDir={}, configFile={config_file})",
            lib_dir.as_deref().unwrap_or("<NULL>")
        ));
        Ok(VIX_OK)
    })
}

/// Closes anything left open, stops the library's threads and forgets the callbacks.
///
/// # Safety
/// No other thread may be inside the library (VDDK's rule).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_Exit() {
    value_call("VixDiskLib_Exit", (), library::exit);
}

/// The transport modes this library knows, colon-separated; a static string.
///
/// # Safety
/// Always safe to call; the result must not be freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_ListTransportModes() -> *const c_char {
    const MODES: &std::ffi::CStr = c"file:san:hotadd:nbdssl:nbd";
    debug_assert_eq!(MODES.to_str().ok(), Some(ALL_TRANSPORT_MODES));
    MODES.as_ptr()
}

/// A heap string naming `err`, describing it and — when it is the calling thread's last
/// failure — saying what failed. Free it with FreeErrorText.
///
/// # Safety
/// `locale` is ignored (VDDK requires NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_GetErrorText(
    err: VixError,
    _locale: *const c_char,
) -> *mut c_char {
    value_call("VixDiskLib_GetErrorText", std::ptr::null_mut(), || {
        let text = vix::error_text(err).replace('\0', " ");
        let raw = CString::new(text).unwrap_or_default().into_raw();
        alloc::track(Kind::ErrorText, raw.expose_provenance());
        raw
    })
}

/// Frees a GetErrorText result; NULL is allowed, a pointer GetErrorText did not return is
/// logged and ignored.
///
/// # Safety
/// `errMsg` is NULL or a GetErrorText result not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_FreeErrorText(errMsg: *mut c_char) {
    value_call("VixDiskLib_FreeErrorText", (), || {
        if errMsg.is_null() {
            return;
        }
        if !alloc::untrack(Kind::ErrorText, errMsg.expose_provenance()) {
            log::warn(&format!(
                "VixDiskLib_FreeErrorText({errMsg:p}): not an error text of this library"
            ));
            return;
        }
        // SAFETY: the pointer came from CString::into_raw in GetErrorText (it was tracked)
        // and is released exactly once (untracked above).
        drop(unsafe { CString::from_raw(errMsg) });
    });
}
