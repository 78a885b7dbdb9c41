//! Errors of the VDDK layer: [`VddkError`] for a failed VDDK call and [`DiskLibError`] for
//! everything an operation of this module can fail with.

use std::fmt;

use vddk_sys as sys;

/// A VIX error number (`VixError & 0xFFFF`), with its symbolic name for messages.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VixCode(pub u64);

/// Known VIX codes and their names (VDDK.md §11, `vddk.h`).
const NAMES: &[(u32, &str)] = &[
    (sys::VIX_OK, "VIX_OK"),
    (sys::VIX_E_FAIL, "VIX_E_FAIL"),
    (sys::VIX_E_OUT_OF_MEMORY, "VIX_E_OUT_OF_MEMORY"),
    (sys::VIX_E_INVALID_ARG, "VIX_E_INVALID_ARG"),
    (sys::VIX_E_FILE_NOT_FOUND, "VIX_E_FILE_NOT_FOUND"),
    (sys::VIX_E_NOT_SUPPORTED, "VIX_E_NOT_SUPPORTED"),
    (sys::VIX_E_CANCELLED, "VIX_E_CANCELLED"),
    (sys::VIX_E_FILE_READ_ONLY, "VIX_E_FILE_READ_ONLY"),
    (sys::VIX_E_FILE_ACCESS_ERROR, "VIX_E_FILE_ACCESS_ERROR"),
    (sys::VIX_E_FILE_ALREADY_LOCKED, "VIX_E_FILE_ALREADY_LOCKED"),
    (sys::VIX_E_BUFFER_TOOSMALL, "VIX_E_BUFFER_TOOSMALL"),
    (sys::VIX_E_OBJECT_NOT_FOUND, "VIX_E_OBJECT_NOT_FOUND"),
    (sys::VIX_E_HOST_NOT_CONNECTED, "VIX_E_HOST_NOT_CONNECTED"),
    (sys::VIX_E_AUTHENTICATION_FAIL, "VIX_E_AUTHENTICATION_FAIL"),
    (
        sys::VIX_E_HOST_CONNECTION_LOST,
        "VIX_E_HOST_CONNECTION_LOST",
    ),
    (sys::VIX_E_INVALID_HANDLE, "VIX_E_INVALID_HANDLE"),
    (sys::VIX_E_VM_NOT_FOUND, "VIX_E_VM_NOT_FOUND"),
    (sys::VIX_E_SNAPSHOT_NOTFOUND, "VIX_E_SNAPSHOT_NOTFOUND"),
    (
        sys::VIX_E_HOST_SERVER_NOT_FOUND,
        "VIX_E_HOST_SERVER_NOT_FOUND",
    ),
    (
        sys::VIX_E_HOST_NETWORK_CONN_REFUSED,
        "VIX_E_HOST_NETWORK_CONN_REFUSED",
    ),
    (sys::VIX_E_HOST_TCP_CONN_LOST, "VIX_E_HOST_TCP_CONN_LOST"),
    (sys::VIX_E_DISK_INVAL, "VIX_E_DISK_INVAL"),
    (sys::VIX_E_DISK_NOINIT, "VIX_E_DISK_NOINIT"),
    (sys::VIX_E_DISK_OUTOFRANGE, "VIX_E_DISK_OUTOFRANGE"),
    (sys::VIX_E_DISK_KEY_NOTFOUND, "VIX_E_DISK_KEY_NOTFOUND"),
    (
        sys::VIX_E_DISK_INVALID_CONNECTION,
        "VIX_E_DISK_INVALID_CONNECTION",
    ),
    (
        sys::VIX_E_CANNOT_CONNECT_TO_HOST,
        "VIX_E_CANNOT_CONNECT_TO_HOST",
    ),
    (sys::VIX_ASYNC, "VIX_ASYNC"),
    (
        sys::VIX_E_ASYNC_MIXEDMODE_UNSUPPORTED,
        "VIX_E_ASYNC_MIXEDMODE_UNSUPPORTED",
    ),
    (
        sys::VIX_E_NET_HTTP_SSL_SECURITY,
        "VIX_E_NET_HTTP_SSL_SECURITY",
    ),
];

impl VixCode {
    /// The code of a raw `VixError` (upper bits masked off).
    #[must_use]
    pub const fn from_raw(err: sys::VixError) -> Self {
        Self(sys::vix_error_code(err))
    }

    /// The code of a `vddk.h` constant.
    #[must_use]
    pub const fn of(constant: u32) -> Self {
        Self(constant as u64)
    }

    /// The symbolic name (`VIX_E_DISK_OUTOFRANGE`), when the code is one we know.
    #[must_use]
    pub fn name(self) -> Option<&'static str> {
        NAMES
            .iter()
            .find(|(code, _)| u64::from(*code) == self.0)
            .map(|(_, name)| *name)
    }

    /// Whether retrying the operation later may succeed: lost or refused connections.
    /// Authentication failures, missing objects, range and argument errors are final.
    #[must_use]
    pub fn is_retryable(self) -> bool {
        [
            sys::VIX_E_HOST_NOT_CONNECTED,
            sys::VIX_E_HOST_CONNECTION_LOST,
            sys::VIX_E_HOST_NETWORK_CONN_REFUSED,
            sys::VIX_E_HOST_TCP_CONN_LOST,
            sys::VIX_E_CANNOT_CONNECT_TO_HOST,
        ]
        .iter()
        .any(|c| u64::from(*c) == self.0)
    }
}

impl fmt::Display for VixCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "VIX error {}", self.0),
        }
    }
}

impl fmt::Debug for VixCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a failed call was working on. Never holds credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorContext {
    /// The VM (`vm-42`), when the call concerned one.
    pub vm: Option<String>,
    /// The disk path (`[ds1] web-1/disk-0.vmdk`), when the call concerned one.
    pub disk: Option<String>,
    /// Byte offset and length of the I/O, when the call was I/O.
    pub range: Option<(u64, u64)>,
}

impl fmt::Display for ErrorContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(disk) = &self.disk {
            write!(f, " on disk {disk}")?;
        }
        if let Some(vm) = &self.vm {
            write!(f, " of {vm}")?;
        }
        if let Some((offset, len)) = self.range {
            write!(f, " at offset {offset} ({len} bytes)")?;
        }
        Ok(())
    }
}

/// A VDDK call that returned an error: the call, the VIX code, the library's text for it
/// (from `GetErrorText`, fetched on the calling thread right after the call) and the object
/// involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed with {code}{context}: {text}")]
pub struct VddkError {
    /// The C function, e.g. `VixDiskLib_Read`.
    pub call: &'static str,
    /// The masked error number.
    pub code: VixCode,
    /// The library's description of the error.
    pub text: String,
    /// The VM, disk and byte range involved.
    pub context: ErrorContext,
}

impl VddkError {
    /// Whether retrying later may succeed (see [`VixCode::is_retryable`]).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        self.code.is_retryable()
    }
}

/// Any failure of the VDDK layer.
#[derive(Debug, thiserror::Error)]
pub enum DiskLibError {
    /// A VDDK call failed.
    #[error(transparent)]
    Vix(#[from] VddkError),
    /// An I/O request was not whole 512-byte sectors (caught before calling VDDK).
    #[error(
        "{op} of {len} bytes at offset {offset} on disk {disk} is not aligned to 512-byte sectors"
    )]
    Misaligned {
        /// `read` or `write`.
        op: &'static str,
        /// The disk path.
        disk: String,
        /// Byte offset of the request.
        offset: u64,
        /// Byte length of the request.
        len: u64,
    },
    /// The loaded library lacks an optional function this operation needs.
    #[error("{what} needs {symbol} (VDDK {since} or later), which the loaded VDDK {major} lacks")]
    NotSupported {
        /// The feature, e.g. `allocated-block queries`.
        what: &'static str,
        /// The missing symbol.
        symbol: &'static str,
        /// The VDDK version that added it.
        since: &'static str,
        /// Major version of the loaded library.
        major: u32,
    },
    /// A string for VDDK contains a NUL byte.
    #[error("{field} contains a NUL byte")]
    InteriorNul {
        /// Which field.
        field: &'static str,
    },
    /// The PrepareForAccess/EndAccess identity is longer than VDDK accepts.
    #[error("access identity is {len} characters long; VDDK accepts at most 50")]
    IdentityTooLong {
        /// Its length in characters.
        len: usize,
    },
    /// A request too large for VDDK's sector arithmetic.
    #[error("{op} of {len} bytes at offset {offset} on disk {disk} is too large")]
    TooLarge {
        /// `read` or `write`.
        op: &'static str,
        /// The disk path.
        disk: String,
        /// Byte offset of the request.
        offset: u64,
        /// Byte length of the request.
        len: u64,
    },
    /// The `vddk-open` thread is gone (it panicked); no handle can be opened or closed.
    #[error("the vddk-open thread has stopped")]
    OpenThreadGone,
}

impl DiskLibError {
    /// Whether retrying the operation later may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Vix(err) => err.is_retryable(),
            _ => false,
        }
    }

    /// The VIX code, when the failure came from VDDK.
    #[must_use]
    pub fn vix_code(&self) -> Option<VixCode> {
        match self {
            Self::Vix(err) => Some(err.code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_masked_and_named() {
        let code = VixCode::from_raw((3 << 40) | u64::from(sys::VIX_E_DISK_OUTOFRANGE));
        assert_eq!(code, VixCode(16007));
        assert_eq!(code.name(), Some("VIX_E_DISK_OUTOFRANGE"));
        assert_eq!(code.to_string(), "VIX_E_DISK_OUTOFRANGE (16007)");
        assert_eq!(VixCode(4242).name(), None);
        assert_eq!(VixCode(4242).to_string(), "VIX error 4242");
    }

    #[test]
    fn retryable_codes() {
        for code in [
            sys::VIX_E_HOST_CONNECTION_LOST,
            sys::VIX_E_HOST_NOT_CONNECTED,
        ] {
            assert!(VixCode::of(code).is_retryable(), "{code}");
        }
        assert!(VixCode::of(sys::VIX_E_HOST_TCP_CONN_LOST).is_retryable());
        for code in [
            sys::VIX_E_AUTHENTICATION_FAIL,
            sys::VIX_E_FILE_NOT_FOUND,
            sys::VIX_E_VM_NOT_FOUND,
            sys::VIX_E_DISK_OUTOFRANGE,
            sys::VIX_E_INVALID_ARG,
            sys::VIX_E_FAIL,
        ] {
            assert!(!VixCode::of(code).is_retryable(), "{code}");
        }
    }

    #[test]
    fn error_text_names_call_code_and_object() {
        let err = VddkError {
            call: "VixDiskLib_Read",
            code: VixCode::of(sys::VIX_E_DISK_OUTOFRANGE),
            text: "One of the parameters was invalid".into(),
            context: ErrorContext {
                vm: Some("vm-7".into()),
                disk: Some("[ds1] web-1/disk-0.vmdk".into()),
                range: Some((1 << 20, 4096)),
            },
        };
        assert_eq!(
            err.to_string(),
            "VixDiskLib_Read failed with VIX_E_DISK_OUTOFRANGE (16007) on disk \
             [ds1] web-1/disk-0.vmdk of vm-7 at offset 1048576 (4096 bytes): \
             One of the parameters was invalid"
        );
        let wrapped = DiskLibError::from(err);
        assert!(!wrapped.is_retryable());
        assert_eq!(wrapped.vix_code(), Some(VixCode(16007)));
    }

    #[test]
    fn misaligned_error_names_offset_and_len() {
        let err = DiskLibError::Misaligned {
            op: "read",
            disk: "[ds1] a/b.vmdk".into(),
            offset: 100,
            len: 512,
        };
        let text = err.to_string();
        assert!(
            text.contains("offset 100") && text.contains("512 bytes"),
            "{text}"
        );
        assert_eq!(err.vix_code(), None);
    }
}
