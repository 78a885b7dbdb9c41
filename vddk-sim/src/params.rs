//! Decoding a caller's `VixDiskLibConnectParams` into owned Rust values.

use std::ffi::{CStr, c_char};

use vddk_sys::{
    VIX_E_INVALID_ARG, VIXDISKLIB_CRED_SESSIONID, VIXDISKLIB_CRED_UID, VixDiskLibConnectParams,
};

use crate::vix::{VixResult, fail};

/// Credentials as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    Uid {
        user: String,
        password: String,
    },
    Session {
        cookie: String,
    },
    /// TICKETID, SSPI or an unknown value.
    Other(u32),
}

/// An owned copy of the connect parameters the simulator looks at.
#[derive(Debug, Clone)]
pub(crate) struct ConnectSpec {
    pub vmx_spec: Option<String>,
    pub server: Option<String>,
    pub thumbprint: Option<String>,
    pub credentials: Credentials,
    pub port: u32,
    pub spec_type: u32,
}

/// Copies a C string; NULL is None, non-UTF-8 is INVALID_ARG.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for the duration of the call.
pub(crate) unsafe fn c_str(p: *const c_char, what: &str) -> VixResult<Option<String>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated per this function's contract.
    let s = unsafe { CStr::from_ptr(p) };
    match s.to_str() {
        Ok(s) => Ok(Some(s.to_owned())),
        Err(_) => fail(VIX_E_INVALID_ARG, format!("{what} is not valid UTF-8")),
    }
}

/// Decodes `*p`.
///
/// # Safety
/// `p` is NULL or points to a readable `VixDiskLibConnectParams` whose string fields are
/// NULL or valid C strings.
pub(crate) unsafe fn decode(p: *const VixDiskLibConnectParams) -> VixResult<ConnectSpec> {
    // SAFETY: NULL or a valid, aligned params struct per the contract.
    let Some(params) = (unsafe { p.as_ref() }) else {
        return fail(VIX_E_INVALID_ARG, "connectParams is NULL");
    };
    // SAFETY: string fields are NULL or valid C strings (contract); the union member read
    // matches `credType`, which is how C callers fill it.
    unsafe {
        let credentials = match params.credType {
            VIXDISKLIB_CRED_UID => Credentials::Uid {
                user: c_str(params.creds.uid.userName, "userName")?.unwrap_or_default(),
                password: c_str(params.creds.uid.password, "password")?.unwrap_or_default(),
            },
            VIXDISKLIB_CRED_SESSIONID => Credentials::Session {
                cookie: c_str(params.creds.sessionId.cookie, "cookie")?.unwrap_or_default(),
            },
            other => Credentials::Other(other),
        };
        Ok(ConnectSpec {
            vmx_spec: c_str(params.vmxSpec, "vmxSpec")?.filter(|s| !s.is_empty()),
            server: c_str(params.serverName, "serverName")?.filter(|s| !s.is_empty()),
            thumbprint: c_str(params.thumbPrint, "thumbPrint")?.filter(|s| !s.is_empty()),
            credentials,
            port: params.port,
            spec_type: params.specType,
        })
    }
}
