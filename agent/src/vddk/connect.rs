//! What to connect to: [`ConnectSpec`] and the C `VixDiskLibConnectParams` built from it.
//!
//! Secrets (password, session cookie, key) live in [`Secret`], whose `Debug` prints
//! `<redacted>`; nothing in this module formats them into text. The C copies are zeroed when
//! the parameters are dropped.

use std::ffi::{CString, c_char};
use std::fmt;

use vddk_sys as sys;

use super::error::DiskLibError;
use super::library::Library;

/// A secret string (password, session cookie). `Debug` and `Display` never show it, and
/// its memory is zeroed when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for handing to VDDK.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// How to authenticate to vCenter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// User name and password (`VIXDISKLIB_CRED_UID`).
    Password {
        /// User name, e.g. `administrator@vsphere.local`.
        user: String,
        /// Password.
        password: Secret,
    },
    /// An existing vSphere session (`VIXDISKLIB_CRED_SESSIONID`): the value of the
    /// `vmware_soap_session` cookie, the session's user, and an optional key.
    Session {
        /// The session cookie.
        cookie: Secret,
        /// The session's user.
        user: String,
        /// The key (nbdkit passes its password argument here).
        key: Option<Secret>,
    },
}

/// A VDDK transport mode (VDDK.md §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportMode {
    /// Local or hosted files.
    File,
    /// Direct SAN LUN access.
    San,
    /// Disks hot-added to the proxy VM.
    HotAdd,
    /// NFC over plain TCP.
    Nbd,
    /// NFC over TLS.
    NbdSsl,
}

impl TransportMode {
    /// Every mode, in VDDK's usual order of preference.
    pub const ALL: [Self; 5] = [Self::San, Self::HotAdd, Self::NbdSsl, Self::Nbd, Self::File];

    /// Parses a colon-separated list as `ConnectEx` takes it (`san:hotadd:nbdssl:nbd`).
    ///
    /// # Errors
    /// The first unknown name, with the known ones.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, String> {
        list.split(':')
            .filter(|t| !t.is_empty())
            .map(|t| {
                Self::ALL
                    .into_iter()
                    .find(|m| m.as_str() == t)
                    .ok_or_else(|| {
                        format!("unknown VDDK transport {t:?} (san, hotadd, nbdssl, nbd, file)")
                    })
            })
            .collect()
    }

    /// VDDK's name for the mode.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::San => "san",
            Self::HotAdd => "hotadd",
            Self::Nbd => "nbd",
            Self::NbdSsl => "nbdssl",
        }
    }
}

/// Everything `ConnectEx` (and PrepareForAccess/EndAccess) needs to reach one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSpec {
    /// vCenter host name or address.
    pub server: String,
    /// HTTPS port; `None` for 443.
    pub port: Option<u16>,
    /// SHA-1 thumbprint of the server certificate (`AA:BB:…`).
    pub thumbprint: Option<String>,
    /// How to log in.
    pub credentials: Credentials,
    /// The VM's managed object reference (`vm-42`); becomes `vmxSpec = "moref=vm-42"`.
    /// Empty for no VM (`vmxSpec` NULL: [`super::Vddk::cleanup`]).
    pub vm: String,
    /// The snapshot to read (`snapshot-7`); `None` for the VM's current state.
    pub snapshot: Option<String>,
    /// Transport modes to try, in order; empty for the library's default list.
    pub transport_modes: Vec<TransportMode>,
    /// Open read-only (backup) or read-write (restore).
    pub read_only: bool,
}

impl ConnectSpec {
    /// The `vmxSpec` for the VM.
    #[must_use]
    pub fn vmx_spec(&self) -> String {
        format!("moref={}", self.vm)
    }

    /// The colon-separated transport list, `None` for the library default.
    #[must_use]
    pub fn transport_list(&self) -> Option<String> {
        if self.transport_modes.is_empty() {
            None
        } else {
            let modes: Vec<_> = self.transport_modes.iter().map(|m| m.as_str()).collect();
            Some(modes.join(":"))
        }
    }
}

/// A C string that is zeroed when dropped (for secrets).
struct ZeroingCString(zeroize::Zeroizing<Vec<u8>>);

impl ZeroingCString {
    fn new(field: &'static str, value: &str) -> Result<Self, DiskLibError> {
        // Checked before any copy is made: `CString::new`'s error would hand back (and
        // free, unzeroed) a copy of the secret.
        if value.as_bytes().contains(&0) {
            return Err(DiskLibError::InteriorNul { field });
        }
        let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(value.len() + 1));
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
        Ok(Self(bytes))
    }

    fn as_ptr(&mut self) -> *mut c_char {
        self.0.as_mut_ptr().cast()
    }
}

/// Builds a C string for a VDDK argument.
pub(crate) fn c_string(field: &'static str, value: &str) -> Result<CString, DiskLibError> {
    CString::new(value).map_err(|_| DiskLibError::InteriorNul { field })
}

/// `VixDiskLibConnectParams` for one call, with the strings it points to. Allocated by
/// `AllocateConnectParams` when the library has it (6.7+), else zeroed by us.
pub(crate) struct CParams<'lib> {
    lib: &'lib Library,
    params: *mut sys::VixDiskLibConnectParams,
    /// Owned by the library (`AllocateConnectParams`) rather than by `ours`.
    from_library: bool,
    ours: Box<sys::VixDiskLibConnectParams>,
    _strings: Vec<ZeroingCString>,
}

impl<'lib> CParams<'lib> {
    /// Builds the parameters for `spec`.
    pub(crate) fn new(lib: &'lib Library, spec: &ConnectSpec) -> Result<Self, DiskLibError> {
        let mut strings = Vec::new();
        let mut keep = |field: &'static str, value: &str| -> Result<*mut c_char, DiskLibError> {
            let mut s = ZeroingCString::new(field, value)?;
            // The pointer stays valid when `s` moves: it points into the Vec's heap buffer.
            let ptr = s.as_ptr();
            strings.push(s);
            Ok(ptr)
        };
        // No VM (VixDiskLib_Cleanup): vmxSpec stays NULL, as VDDK asks.
        let vmx_spec = if spec.vm.is_empty() {
            std::ptr::null_mut()
        } else {
            keep("vm", &spec.vmx_spec())?
        };
        let server = keep("server", &spec.server)?;
        let thumbprint = match &spec.thumbprint {
            Some(t) => keep("thumbprint", t)?,
            None => std::ptr::null_mut(),
        };
        let (cred_type, creds) = match &spec.credentials {
            Credentials::Password { user, password } => (
                sys::VIXDISKLIB_CRED_UID,
                sys::VixDiskLibCreds {
                    uid: sys::VixDiskLibUidPasswdCreds {
                        userName: keep("user", user)?,
                        password: keep("password", password.expose())?,
                    },
                },
            ),
            Credentials::Session { cookie, user, key } => (
                sys::VIXDISKLIB_CRED_SESSIONID,
                sys::VixDiskLibCreds {
                    sessionId: sys::VixDiskLibSessionIdCreds {
                        cookie: keep("cookie", cookie.expose())?,
                        userName: keep("user", user)?,
                        key: match key {
                            Some(k) => keep("key", k.expose())?,
                            None => std::ptr::null_mut(),
                        },
                    },
                },
            ),
        };

        let mut ours = Box::<sys::VixDiskLibConnectParams>::default();
        let (params, from_library) = if lib.has_allocate_connect_params() {
            // SAFETY: present (checked); returns a zeroed struct we free with
            // FreeConnectParams in Drop, or NULL on failure.
            let p = unsafe { lib.raw().VixDiskLib_AllocateConnectParams() };
            if p.is_null() {
                (&raw mut *ours, false)
            } else {
                (p, true)
            }
        } else {
            // Before 6.7 the struct is caller-allocated and zeroed (Default zeroes it).
            (&raw mut *ours, false)
        };
        // SAFETY: `params` points to a live, zero-initialised VixDiskLibConnectParams (ours,
        // or the library's); we only assign the public fields.
        unsafe {
            let p = &mut *params;
            p.specType = sys::VIXDISKLIB_SPEC_VMX;
            p.vmxSpec = vmx_spec;
            p.serverName = server;
            p.thumbPrint = thumbprint;
            p.credType = cred_type;
            p.creds = creds;
            p.port = u32::from(spec.port.unwrap_or(0));
        }
        Ok(Self {
            lib,
            params,
            from_library,
            ours,
            _strings: strings,
        })
    }

    /// The pointer to pass to VDDK; valid while `self` lives.
    pub(crate) fn as_ptr(&self) -> *const sys::VixDiskLibConnectParams {
        self.params
    }
}

impl Drop for CParams<'_> {
    fn drop(&mut self) {
        if self.from_library {
            // SAFETY: the library allocated `params` with AllocateConnectParams; clear our
            // string pointers first so FreeConnectParams does not free memory it does not
            // own (VDDK frees the strings it duplicated itself, not ours).
            unsafe {
                let p = &mut *self.params;
                p.vmxSpec = std::ptr::null_mut();
                p.serverName = std::ptr::null_mut();
                p.thumbPrint = std::ptr::null_mut();
                p.creds = sys::VixDiskLibCreds::default();
                self.lib.raw().VixDiskLib_FreeConnectParams(self.params);
            }
        }
        // `ours` and the strings are freed (and the secrets zeroed) by their own Drop.
        let _ = &self.ours;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_lists_parse_and_round_trip() {
        let modes = TransportMode::parse_list("san:hotadd:nbdssl:nbd:file").unwrap();
        assert_eq!(modes, TransportMode::ALL);
        let names: Vec<_> = modes.iter().map(|m| m.as_str()).collect();
        assert_eq!(names.join(":"), "san:hotadd:nbdssl:nbd:file");
        assert!(
            TransportMode::parse_list("nbd:sneakernet")
                .unwrap_err()
                .contains("sneakernet")
        );
    }

    fn spec() -> ConnectSpec {
        ConnectSpec {
            server: "vcenter.lab".into(),
            port: Some(8443),
            thumbprint: Some("AA:BB".into()),
            credentials: Credentials::Password {
                user: "administrator@vsphere.local".into(),
                password: Secret::new("hunter2-very-secret"),
            },
            vm: "vm-42".into(),
            snapshot: Some("snapshot-7".into()),
            transport_modes: vec![TransportMode::NbdSsl, TransportMode::Nbd],
            read_only: true,
        }
    }

    #[test]
    fn debug_redacts_password_and_cookie() {
        let s = spec();
        let text = format!("{s:?} {s:#?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>") && text.contains("vm-42"));

        let session = ConnectSpec {
            credentials: Credentials::Session {
                cookie: Secret::new("cookie-abcdef"),
                user: "svc".into(),
                key: Some(Secret::new("key-123456")),
            },
            ..spec()
        };
        let text = format!("{session:?}");
        assert!(
            !text.contains("cookie-abcdef") && !text.contains("key-123456"),
            "{text}"
        );
    }

    #[test]
    fn nul_in_a_secret_is_reported_without_the_secret() {
        let err = ZeroingCString::new("password", "abc\0hunter2")
            .err()
            .unwrap();
        let text = format!("{err} {err:?}");
        assert!(text.contains("password contains a NUL byte"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let mut ok = ZeroingCString::new("password", "hunter2").unwrap();
        // SAFETY: a NUL-terminated buffer that `ok` owns and outlives the borrow.
        let back = unsafe { std::ffi::CStr::from_ptr(ok.as_ptr()) };
        assert_eq!(back.to_bytes(), b"hunter2");
    }

    #[test]
    fn vmx_spec_and_transports() {
        let s = spec();
        assert_eq!(s.vmx_spec(), "moref=vm-42");
        assert_eq!(s.transport_list().as_deref(), Some("nbdssl:nbd"));
        let s = ConnectSpec {
            transport_modes: vec![],
            ..s
        };
        assert_eq!(s.transport_list(), None);
    }
}
