//! Finding, loading and checking `libvixDiskLib` (nbdkit `vddk.c` `load_library`).
//!
//! The library is loaded with `dlopen(RTLD_NOW)` from a configured `libdir` (the VDDK
//! distribution root), newest soname first, trying `<libdir>/lib64/<soname>` and then
//! `<libdir>/<soname>`. Every required function must be present; the optional ones (6.7+)
//! are detected and their features disabled when absent.

use std::ffi::{CStr, c_char};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use vddk_sys::{self as sys, SONAMES, VixDiskLib};

use super::error::{ErrorContext, VddkError, VixCode};

/// A function of `vddk.h`: its symbol, whether it is required, and the VDDK version that
/// added it (VDDK.md §5; `vddk-sys/FUNCTIONS.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol {
    /// The C symbol.
    pub name: &'static str,
    /// Whether loading fails without it.
    pub required: bool,
    /// The first VDDK version that exports it.
    pub since: &'static str,
}

const fn required(name: &'static str, since: &'static str) -> Symbol {
    Symbol {
        name,
        required: true,
        since,
    }
}

const fn optional(name: &'static str, since: &'static str) -> Symbol {
    Symbol {
        name,
        required: false,
        since,
    }
}

/// Every function of our ABI header, in header order.
pub const SYMBOLS: [Symbol; 28] = [
    required("VixDiskLib_InitEx", "1.1"),
    required("VixDiskLib_Exit", "1.0"),
    required("VixDiskLib_ListTransportModes", "1.1"),
    required("VixDiskLib_GetErrorText", "1.0"),
    required("VixDiskLib_FreeErrorText", "1.0"),
    optional("VixDiskLib_AllocateConnectParams", "6.7"),
    required("VixDiskLib_FreeConnectParams", "6.5"),
    required("VixDiskLib_ConnectEx", "1.1"),
    required("VixDiskLib_Disconnect", "1.0"),
    required("VixDiskLib_Cleanup", "1.1"),
    required("VixDiskLib_PrepareForAccess", "5.0"),
    required("VixDiskLib_EndAccess", "5.0"),
    required("VixDiskLib_Open", "1.0"),
    required("VixDiskLib_Close", "1.0"),
    required("VixDiskLib_GetTransportMode", "1.1"),
    required("VixDiskLib_GetInfo", "1.0"),
    required("VixDiskLib_FreeInfo", "1.0"),
    required("VixDiskLib_Read", "1.0"),
    required("VixDiskLib_Write", "1.0"),
    required("VixDiskLib_ReadAsync", "6.0"),
    required("VixDiskLib_WriteAsync", "6.0"),
    required("VixDiskLib_Wait", "6.5"),
    required("VixDiskLib_Flush", "6.0"),
    optional("VixDiskLib_QueryAllocatedBlocks", "6.7"),
    optional("VixDiskLib_FreeBlockList", "6.7"),
    required("VixDiskLib_GetMetadataKeys", "1.0"),
    required("VixDiskLib_ReadMetadata", "1.0"),
    required("VixDiskLib_WriteMetadata", "1.0"),
];

/// Why the library could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No candidate file could be opened.
    #[error("no VDDK library (libvixDiskLib.so.9/.8/.7/.6) could be loaded from {}; tried:{}", libdir.display(), format_tried(tried))]
    NotFound {
        /// The configured libdir.
        libdir: PathBuf,
        /// Every path tried, with the reason it failed.
        tried: Vec<(PathBuf, String)>,
    },
    /// The library lacks a function we cannot do without.
    #[error("{} lacks required function {symbol} (added in VDDK {since}; vadp-agent needs VDDK 6.5 or later)", path.display())]
    MissingSymbol {
        /// The library file.
        path: PathBuf,
        /// The missing function.
        symbol: &'static str,
        /// The VDDK version that added it.
        since: &'static str,
    },
}

fn format_tried(tried: &[(PathBuf, String)]) -> String {
    let mut out = String::new();
    for (path, why) in tried {
        let _ = write!(out, "\n  {}: {why}", path.display());
    }
    out
}

/// The candidate files for `libdir`, newest first, with their major version.
#[must_use]
pub fn candidates(libdir: &Path) -> Vec<(PathBuf, u32)> {
    SONAMES
        .iter()
        .flat_map(|(soname, major)| {
            [
                (libdir.join("lib64").join(soname), *major),
                (libdir.join(soname), *major),
            ]
        })
        .collect()
}

/// The first candidate file that exists, without loading it (used by the re-exec, which
/// must not run any library code).
#[must_use]
pub fn locate(libdir: &Path) -> Option<(PathBuf, u32)> {
    candidates(libdir)
        .into_iter()
        .find(|(path, _)| path.exists())
}

/// A loaded `libvixDiskLib` whose required functions are all present. Not yet initialised
/// (see [`super::Vddk::init`]).
pub struct Library {
    raw: VixDiskLib,
    path: PathBuf,
    libdir: PathBuf,
    major: u32,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("major", &self.major)
            .finish_non_exhaustive()
    }
}

impl Library {
    /// Loads the newest VDDK found in `libdir` and checks its functions.
    ///
    /// # Errors
    /// [`LoadError::NotFound`] listing every path tried and why, or
    /// [`LoadError::MissingSymbol`] naming the first missing required function.
    pub fn load(libdir: &Path) -> Result<Self, LoadError> {
        let mut tried = Vec::new();
        for (path, major) in candidates(libdir) {
            if !path.exists() {
                tried.push((path, "no such file".to_owned()));
                continue;
            }
            // SAFETY: loading runs the library's initialisers. VDDK's (and the simulator's)
            // do no more than set up static state; InitEx, which starts threads, is only
            // called later by `Vddk::init`. RTLD_NOW resolves every symbol up front so a
            // broken install fails here rather than at the first call.
            let lib = unsafe {
                libloading::os::unix::Library::open(
                    Some(&path),
                    libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL,
                )
            };
            let lib = match lib {
                Ok(lib) => lib,
                Err(err) => {
                    tried.push((path, err.to_string()));
                    continue;
                }
            };
            // SAFETY: `from_library` only looks up symbols; their types are those of our
            // ABI header, which the library implements (checked by name below).
            let raw = unsafe { VixDiskLib::from_library(lib) };
            let raw = match raw {
                Ok(raw) => raw,
                Err(err) => {
                    tried.push((path, err.to_string()));
                    continue;
                }
            };
            let lib = Self {
                raw,
                path,
                libdir: libdir.to_path_buf(),
                major,
            };
            if let Some(missing) = SYMBOLS.iter().find(|s| s.required && !lib.has(s.name)) {
                return Err(LoadError::MissingSymbol {
                    path: lib.path,
                    symbol: missing.name,
                    since: missing.since,
                });
            }
            return Ok(lib);
        }
        Err(LoadError::NotFound {
            libdir: libdir.to_path_buf(),
            tried,
        })
    }

    /// The file that was loaded.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configured libdir (passed to InitEx).
    #[must_use]
    pub fn libdir(&self) -> &Path {
        &self.libdir
    }

    /// The VDDK major version, from the soname that loaded.
    #[must_use]
    pub fn major(&self) -> u32 {
        self.major
    }

    /// Whether the library exports `name` (one of [`SYMBOLS`]).
    #[must_use]
    pub fn has(&self, name: &str) -> bool {
        let r = &self.raw;
        match name {
            "VixDiskLib_InitEx" => r.VixDiskLib_InitEx.is_ok(),
            "VixDiskLib_Exit" => r.VixDiskLib_Exit.is_ok(),
            "VixDiskLib_ListTransportModes" => r.VixDiskLib_ListTransportModes.is_ok(),
            "VixDiskLib_GetErrorText" => r.VixDiskLib_GetErrorText.is_ok(),
            "VixDiskLib_FreeErrorText" => r.VixDiskLib_FreeErrorText.is_ok(),
            "VixDiskLib_AllocateConnectParams" => r.VixDiskLib_AllocateConnectParams.is_ok(),
            "VixDiskLib_FreeConnectParams" => r.VixDiskLib_FreeConnectParams.is_ok(),
            "VixDiskLib_ConnectEx" => r.VixDiskLib_ConnectEx.is_ok(),
            "VixDiskLib_Disconnect" => r.VixDiskLib_Disconnect.is_ok(),
            "VixDiskLib_Cleanup" => r.VixDiskLib_Cleanup.is_ok(),
            "VixDiskLib_PrepareForAccess" => r.VixDiskLib_PrepareForAccess.is_ok(),
            "VixDiskLib_EndAccess" => r.VixDiskLib_EndAccess.is_ok(),
            "VixDiskLib_Open" => r.VixDiskLib_Open.is_ok(),
            "VixDiskLib_Close" => r.VixDiskLib_Close.is_ok(),
            "VixDiskLib_GetTransportMode" => r.VixDiskLib_GetTransportMode.is_ok(),
            "VixDiskLib_GetInfo" => r.VixDiskLib_GetInfo.is_ok(),
            "VixDiskLib_FreeInfo" => r.VixDiskLib_FreeInfo.is_ok(),
            "VixDiskLib_Read" => r.VixDiskLib_Read.is_ok(),
            "VixDiskLib_Write" => r.VixDiskLib_Write.is_ok(),
            "VixDiskLib_ReadAsync" => r.VixDiskLib_ReadAsync.is_ok(),
            "VixDiskLib_WriteAsync" => r.VixDiskLib_WriteAsync.is_ok(),
            "VixDiskLib_Wait" => r.VixDiskLib_Wait.is_ok(),
            "VixDiskLib_Flush" => r.VixDiskLib_Flush.is_ok(),
            "VixDiskLib_QueryAllocatedBlocks" => r.VixDiskLib_QueryAllocatedBlocks.is_ok(),
            "VixDiskLib_FreeBlockList" => r.VixDiskLib_FreeBlockList.is_ok(),
            "VixDiskLib_GetMetadataKeys" => r.VixDiskLib_GetMetadataKeys.is_ok(),
            "VixDiskLib_ReadMetadata" => r.VixDiskLib_ReadMetadata.is_ok(),
            "VixDiskLib_WriteMetadata" => r.VixDiskLib_WriteMetadata.is_ok(),
            _ => false,
        }
    }

    /// Whether `QueryAllocatedBlocks` and `FreeBlockList` (6.7+) are both present.
    #[must_use]
    pub fn has_allocated_blocks(&self) -> bool {
        self.has("VixDiskLib_QueryAllocatedBlocks") && self.has("VixDiskLib_FreeBlockList")
    }

    /// Whether `AllocateConnectParams` (6.7+) is present.
    #[must_use]
    pub fn has_allocate_connect_params(&self) -> bool {
        self.has("VixDiskLib_AllocateConnectParams")
    }

    /// The raw functions. Every required one is present (checked by [`Library::load`]), so
    /// bindgen's wrapper methods for them never hit their "Expected function" panic; check
    /// [`Library::has`] before calling an optional one.
    pub(crate) fn raw(&self) -> &VixDiskLib {
        &self.raw
    }

    /// Builds the error for a failed call, fetching the library's text for it. Must run on
    /// the thread that made the call, right after it (nbdkit `VDDK_ERROR`).
    pub(crate) fn error(
        &self,
        call: &'static str,
        err: sys::VixError,
        context: ErrorContext,
    ) -> VddkError {
        // SAFETY: GetErrorText accepts any code; the locale must be NULL. It returns a heap
        // string (or NULL) that we copy and hand back to FreeErrorText, which accepts NULL.
        let text = unsafe {
            let msg = self.raw.VixDiskLib_GetErrorText(err, std::ptr::null());
            let text = cstr_to_string(msg);
            self.raw.VixDiskLib_FreeErrorText(msg);
            text
        };
        VddkError {
            call,
            code: VixCode::from_raw(err),
            text: text.unwrap_or_default(),
            context,
        }
    }

    /// `Ok(())` for `VIX_OK`, else the error of `call`.
    pub(crate) fn check(
        &self,
        call: &'static str,
        err: sys::VixError,
        context: impl FnOnce() -> ErrorContext,
    ) -> Result<(), VddkError> {
        if err == sys::VixError::from(sys::VIX_OK) {
            Ok(())
        } else {
            Err(self.error(call, err, context()))
        }
    }
}

/// Copies a C string owned by the library; `None` for NULL.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string valid for the duration of the call.
pub(crate) unsafe fn cstr_to_string(ptr: *const c_char) -> Option<String> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: non-NULL and NUL-terminated per this function's contract.
        Some(
            unsafe { CStr::from_ptr(ptr) }
                .to_string_lossy()
                .into_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_newest_first_lib64_before_libdir() {
        let c = candidates(Path::new("/opt/vddk"));
        assert_eq!(c.len(), 8);
        assert_eq!(
            c[0],
            (PathBuf::from("/opt/vddk/lib64/libvixDiskLib.so.9"), 9)
        );
        assert_eq!(c[1], (PathBuf::from("/opt/vddk/libvixDiskLib.so.9"), 9));
        assert_eq!(c[7], (PathBuf::from("/opt/vddk/libvixDiskLib.so.6"), 6));
    }

    #[test]
    fn symbol_table_matches_the_bindings() {
        // Three optional functions, and every name is one `has` knows.
        let optional: Vec<_> = SYMBOLS
            .iter()
            .filter(|s| !s.required)
            .map(|s| s.name)
            .collect();
        assert_eq!(
            optional,
            [
                "VixDiskLib_AllocateConnectParams",
                "VixDiskLib_QueryAllocatedBlocks",
                "VixDiskLib_FreeBlockList"
            ]
        );
    }

    #[test]
    fn missing_library_lists_every_path_tried() {
        let dir = tempfile::tempdir().unwrap();
        // A file that exists but is not a library: dlopen's reason is reported too.
        std::fs::create_dir(dir.path().join("lib64")).unwrap();
        std::fs::write(dir.path().join("lib64/libvixDiskLib.so.8"), b"not elf").unwrap();
        let err = Library::load(dir.path()).unwrap_err();
        let LoadError::NotFound { tried, .. } = &err else {
            panic!("unexpected {err}");
        };
        assert_eq!(tried.len(), 8);
        let text = err.to_string();
        for (path, _) in candidates(dir.path()) {
            assert!(text.contains(&path.display().to_string()), "{text}");
        }
        assert!(text.contains("no such file"), "{text}");
    }

    #[test]
    fn missing_required_symbol_is_named_with_its_version() {
        // A library with only InitEx: loading must name the first missing required function.
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("stub.c");
        std::fs::write(
            &src,
            "unsigned long VixDiskLib_InitEx(void) { return 0; }\n",
        )
        .unwrap();
        let so = dir.path().join("libvixDiskLib.so.7");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let status = std::process::Command::new(cc)
            .args(["-shared", "-fPIC", "-o"])
            .arg(&so)
            .arg(&src)
            .status()
            .expect("run the C compiler (the agent's build needs one too)");
        assert!(status.success());
        let err = Library::load(dir.path()).unwrap_err();
        match &err {
            LoadError::MissingSymbol {
                symbol,
                since,
                path,
            } => {
                assert_eq!((*symbol, *since), ("VixDiskLib_Exit", "1.0"));
                assert_eq!(path, &so);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(
            err.to_string()
                .contains("VixDiskLib_Exit (added in VDDK 1.0"),
            "{err}"
        );
    }

    #[test]
    fn locate_prefers_lib64_and_newest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("lib64")).unwrap();
        std::fs::write(dir.path().join("libvixDiskLib.so.9"), b"").unwrap();
        std::fs::write(dir.path().join("lib64/libvixDiskLib.so.8"), b"").unwrap();
        assert_eq!(
            locate(dir.path()),
            Some((dir.path().join("libvixDiskLib.so.9"), 9))
        );
        std::fs::remove_file(dir.path().join("libvixDiskLib.so.9")).unwrap();
        assert_eq!(
            locate(dir.path()),
            Some((dir.path().join("lib64/libvixDiskLib.so.8"), 8))
        );
    }
}
