//! VixError codes: names, descriptions, the error type the exports return, and the
//! thread-local detail of the calling thread's last failure (shown by GetErrorText).

use std::cell::RefCell;
use std::fmt;

use vddk_sys::*;

/// A failed call: the VIX code returned to C and a sentence saying what failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VixCallError {
    pub code: u32,
    pub detail: String,
}

impl VixCallError {
    pub(crate) fn new(code: u32, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for VixCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", name(self.code), self.code, self.detail)
    }
}

impl std::error::Error for VixCallError {}

pub(crate) type VixResult<T> = Result<T, VixCallError>;

/// Shorthand for `Err(VixCallError::new(code, detail))`.
pub(crate) fn fail<T>(code: u32, detail: impl Into<String>) -> VixResult<T> {
    Err(VixCallError::new(code, detail))
}

/// Symbolic name and one-line description of a code (low 16 bits of a VixError).
pub(crate) fn describe(code: u32) -> (&'static str, &'static str) {
    match code {
        VIX_OK => ("VIX_OK", "The operation was successful"),
        VIX_E_FAIL => ("VIX_E_FAIL", "Unknown error"),
        VIX_E_OUT_OF_MEMORY => (
            "VIX_E_OUT_OF_MEMORY",
            "Memory allocation failed: out of memory",
        ),
        VIX_E_INVALID_ARG => ("VIX_E_INVALID_ARG", "One of the parameters was invalid"),
        VIX_E_FILE_NOT_FOUND => ("VIX_E_FILE_NOT_FOUND", "The file was not found"),
        VIX_E_NOT_SUPPORTED => ("VIX_E_NOT_SUPPORTED", "The operation is not supported"),
        VIX_E_CANCELLED => ("VIX_E_CANCELLED", "The operation was canceled"),
        VIX_E_FILE_READ_ONLY => ("VIX_E_FILE_READ_ONLY", "The file is write-protected"),
        VIX_E_FILE_ACCESS_ERROR => (
            "VIX_E_FILE_ACCESS_ERROR",
            "Insufficient permissions or an I/O error while accessing the file",
        ),
        VIX_E_FILE_ALREADY_LOCKED => (
            "VIX_E_FILE_ALREADY_LOCKED",
            "The file is already in use or locked",
        ),
        VIX_E_BUFFER_TOOSMALL => ("VIX_E_BUFFER_TOOSMALL", "The buffer is too small"),
        VIX_E_OBJECT_NOT_FOUND => ("VIX_E_OBJECT_NOT_FOUND", "The object was not found"),
        VIX_E_HOST_NOT_CONNECTED => ("VIX_E_HOST_NOT_CONNECTED", "Not connected to the host"),
        VIX_E_AUTHENTICATION_FAIL => (
            "VIX_E_AUTHENTICATION_FAIL",
            "Cannot connect to host: incorrect user name or password",
        ),
        VIX_E_HOST_CONNECTION_LOST => (
            "VIX_E_HOST_CONNECTION_LOST",
            "The connection to the host was lost",
        ),
        VIX_E_INVALID_HANDLE => ("VIX_E_INVALID_HANDLE", "The handle is not valid"),
        VIX_E_VM_NOT_FOUND => ("VIX_E_VM_NOT_FOUND", "The virtual machine cannot be found"),
        VIX_E_SNAPSHOT_NOTFOUND => ("VIX_E_SNAPSHOT_NOTFOUND", "The snapshot does not exist"),
        VIX_E_HOST_SERVER_NOT_FOUND => (
            "VIX_E_HOST_SERVER_NOT_FOUND",
            "Cannot connect to host: the server name could not be resolved",
        ),
        VIX_E_HOST_NETWORK_CONN_REFUSED => (
            "VIX_E_HOST_NETWORK_CONN_REFUSED",
            "The host refused the network connection",
        ),
        VIX_E_HOST_TCP_CONN_LOST => (
            "VIX_E_HOST_TCP_CONN_LOST",
            "The TCP connection to the host was lost",
        ),
        VIX_E_DISK_INVAL => ("VIX_E_DISK_INVAL", "One of the parameters was invalid"),
        VIX_E_DISK_NOINIT => (
            "VIX_E_DISK_NOINIT",
            "The disk library has not been initialized",
        ),
        VIX_E_DISK_OUTOFRANGE => (
            "VIX_E_DISK_OUTOFRANGE",
            "The sector range lies beyond the end of the disk",
        ),
        VIX_E_DISK_KEY_NOTFOUND => (
            "VIX_E_DISK_KEY_NOTFOUND",
            "The key was not found in the disk's metadata",
        ),
        VIX_E_DISK_INVALID_CONNECTION => (
            "VIX_E_DISK_INVALID_CONNECTION",
            "The connection handle is not valid",
        ),
        VIX_E_CANNOT_CONNECT_TO_HOST => {
            ("VIX_E_CANNOT_CONNECT_TO_HOST", "Cannot connect to the host")
        }
        VIX_ASYNC => ("VIX_ASYNC", "The asynchronous operation was queued"),
        VIX_E_ASYNC_MIXEDMODE_UNSUPPORTED => (
            "VIX_E_ASYNC_MIXEDMODE_UNSUPPORTED",
            "Mixing synchronous and asynchronous I/O is not supported",
        ),
        VIX_E_NET_HTTP_SSL_SECURITY => (
            "VIX_E_NET_HTTP_SSL_SECURITY",
            "SSL error: the server certificate could not be verified",
        ),
        _ => ("VIX_E_UNKNOWN", "Unknown error code"),
    }
}

/// The symbolic name of a code.
pub(crate) fn name(code: u32) -> &'static str {
    describe(code).0
}

thread_local! {
    /// The calling thread's last failure: (code, "call: detail").
    static LAST_FAILURE: RefCell<Option<(u32, String)>> = const { RefCell::new(None) };
}

/// Remembers `err` as this thread's last failure so GetErrorText can add its detail.
pub(crate) fn record_failure(call: &str, err: &VixCallError) {
    LAST_FAILURE.with(|last| {
        *last.borrow_mut() = Some((err.code, format!("{call}: {}", err.detail)));
    });
}

/// The full text for `err` (any VixError, upper bits ignored): name, description and,
/// when it is this thread's last failure, its detail.
pub(crate) fn error_text(err: VixError) -> String {
    let code = u32::try_from(vix_error_code(err)).unwrap_or(VIX_E_FAIL);
    let (name, description) = describe(code);
    let detail = LAST_FAILURE.with(|last| {
        last.borrow()
            .as_ref()
            .filter(|(last_code, _)| *last_code == code)
            .map(|(_, detail)| detail.clone())
    });
    match detail {
        Some(detail) => format!("{name}: {description} ({detail})"),
        None => format!("{name}: {description}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_the_code_and_masks_upper_bits() {
        let text = error_text((5 << 32) | VixError::from(VIX_E_DISK_OUTOFRANGE));
        assert!(text.starts_with("VIX_E_DISK_OUTOFRANGE: "), "{text}");
    }

    #[test]
    fn text_carries_the_last_failure_detail_of_this_thread_only() {
        record_failure(
            "VixDiskLib_Open",
            &VixCallError::new(VIX_E_FILE_NOT_FOUND, "[ds1] nope.vmdk"),
        );
        assert!(error_text(VixError::from(VIX_E_FILE_NOT_FOUND)).contains("[ds1] nope.vmdk"));
        assert!(!error_text(VixError::from(VIX_E_FAIL)).contains("nope"));
        let other = std::thread::spawn(|| error_text(VixError::from(VIX_E_FILE_NOT_FOUND)))
            .join()
            .unwrap();
        assert!(!other.contains("nope"));
    }
}
