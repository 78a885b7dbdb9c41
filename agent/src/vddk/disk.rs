//! [`Disk`]: an open disk handle, its synchronous I/O, information and metadata.
//!
//! Offsets and lengths are bytes everywhere outside this module; they are checked for
//! 512-byte alignment and converted to sectors only here (STYLE §2, nbdkit `worker.c`).

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::Arc;
use std::thread::JoinHandle;

use vddk_sys as sys;

use super::connect::c_string;
use super::connection::ConnInner;
use super::error::{DiskLibError, ErrorContext, VddkError, VixCode};
use super::library::{Library, cstr_to_string};
use super::open_thread::{OpenCmd, RawHandle};

/// VDDK's sector size: every offset and length must be a multiple of it.
pub const SECTOR_SIZE: u64 = sys::VIXDISKLIB_SECTOR_SIZE as u64;

/// An open disk. `Send` but not `Sync`: it is owned by one thread at a time, which makes
/// every call on it (VDDK requires access to a handle to be serialised). Dropping it sends
/// the handle back to the `vddk-open` thread, which closes it.
#[derive(Debug)]
pub struct Disk {
    pub(crate) handle: RawHandle,
    pub(crate) conn: Arc<ConnInner>,
    pub(crate) path: String,
    pub(crate) capacity_sectors: Cell<Option<u64>>,
    pub(crate) _not_sync: PhantomData<Cell<()>>,
}

/// A disk's adapter type (`VixDiskLibAdapterType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterType {
    /// IDE.
    Ide,
    /// BusLogic SCSI.
    ScsiBusLogic,
    /// LSI Logic SCSI.
    ScsiLsiLogic,
    /// Anything else.
    Unknown(u32),
}

impl AdapterType {
    fn from_c(value: sys::VixDiskLibAdapterType) -> Self {
        match value {
            sys::VIXDISKLIB_ADAPTER_IDE => Self::Ide,
            sys::VIXDISKLIB_ADAPTER_SCSI_BUSLOGIC => Self::ScsiBusLogic,
            sys::VIXDISKLIB_ADAPTER_SCSI_LSILOGIC => Self::ScsiLsiLogic,
            other => Self::Unknown(other),
        }
    }
}

/// What `GetInfo` says about a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in bytes.
    pub capacity_bytes: u64,
    /// Logical sector size (VDDK 7.0+; 512 before).
    pub logical_sector_size: u32,
    /// Physical sector size (VDDK 7.0+; 512 before).
    pub physical_sector_size: u32,
    /// Adapter type.
    pub adapter: AdapterType,
    /// Number of links in the chain (base disk + redo logs).
    pub num_links: i32,
    /// The parent's file name, for a child disk.
    pub parent_hint: Option<String>,
    /// The disk's UUID, if it has one.
    pub uuid: Option<String>,
}

/// Checks that `offset` and `len` are whole sectors and returns them in sectors.
pub(crate) fn to_sectors(
    op: &'static str,
    disk: &str,
    offset: u64,
    len: u64,
) -> Result<(u64, u64), DiskLibError> {
    if !offset.is_multiple_of(SECTOR_SIZE) || !len.is_multiple_of(SECTOR_SIZE) {
        return Err(DiskLibError::Misaligned {
            op,
            disk: disk.to_owned(),
            offset,
            len,
        });
    }
    if offset.checked_add(len).is_none() {
        return Err(DiskLibError::TooLarge {
            op,
            disk: disk.to_owned(),
            offset,
            len,
        });
    }
    Ok((offset / SECTOR_SIZE, len / SECTOR_SIZE))
}

/// The byte length of a buffer, as u64.
pub(crate) fn byte_len(buf: &[u8]) -> u64 {
    // usize is 64 bits on every target VDDK exists for (x86_64 Linux).
    buf.len() as u64
}

/// Splits a NUL-separated key list (terminated by an empty entry) into keys.
pub(crate) fn parse_keys(buf: &[u8]) -> Vec<String> {
    buf.split(|b| *b == 0)
        .take_while(|k| !k.is_empty())
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

impl Disk {
    pub(crate) fn lib(&self) -> &'static Library {
        self.conn.vddk.library()
    }

    /// The disk's path, as it was opened.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The VM the disk belongs to.
    #[must_use]
    pub fn vm(&self) -> &str {
        &self.conn.vm
    }

    pub(crate) fn context(&self, range: Option<(u64, u64)>) -> ErrorContext {
        ErrorContext {
            vm: Some(self.conn.vm.clone()),
            disk: Some(self.path.clone()),
            range,
        }
    }

    pub(crate) fn check(
        &self,
        call: &'static str,
        err: sys::VixError,
        range: Option<(u64, u64)>,
    ) -> Result<(), VddkError> {
        self.lib().check(call, err, || self.context(range))
    }

    /// Reads `buf.len()` bytes at byte `offset`. Both must be multiples of 512.
    ///
    /// # Errors
    /// [`DiskLibError::Misaligned`] before calling VDDK, or Read's error
    /// (`VIX_E_DISK_OUTOFRANGE` past the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskLibError> {
        let len = byte_len(buf);
        let (start, count) = to_sectors("read", &self.path, offset, len)?;
        // SAFETY: the handle is open and used by this thread only (Disk is !Sync, &self);
        // `buf` holds exactly `count` sectors and is borrowed mutably for the call.
        let err = unsafe {
            self.lib()
                .raw()
                .VixDiskLib_Read(self.handle.0, start, count, buf.as_mut_ptr())
        };
        Ok(self.check("VixDiskLib_Read", err, Some((offset, len)))?)
    }

    /// Writes `buf` at byte `offset`. Both must be multiples of 512.
    ///
    /// # Errors
    /// [`DiskLibError::Misaligned`] before calling VDDK, or Write's error
    /// (`VIX_E_FILE_READ_ONLY` on a read-only handle, `VIX_E_DISK_OUTOFRANGE`, …).
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DiskLibError> {
        let len = byte_len(buf);
        let (start, count) = to_sectors("write", &self.path, offset, len)?;
        // SAFETY: as in read_at; `buf` holds exactly `count` sectors and VDDK only reads it.
        let err = unsafe {
            self.lib()
                .raw()
                .VixDiskLib_Write(self.handle.0, start, count, buf.as_ptr())
        };
        Ok(self.check("VixDiskLib_Write", err, Some((offset, len)))?)
    }

    /// Flushes written data to the disk (`Flush`).
    ///
    /// # Errors
    /// Flush's error.
    pub fn flush(&self) -> Result<(), DiskLibError> {
        // SAFETY: the handle is open and used by this thread only.
        let err = unsafe { self.lib().raw().VixDiskLib_Flush(self.handle.0) };
        Ok(self.check("VixDiskLib_Flush", err, None)?)
    }

    /// The transport mode VDDK chose for this disk (`nbdssl`, `hotadd`, `file` …).
    #[must_use]
    pub fn transport_mode(&self) -> String {
        // SAFETY: the handle is open; the result is a static string (or NULL), not freed.
        let mode = unsafe { self.lib().raw().VixDiskLib_GetTransportMode(self.handle.0) };
        // SAFETY: NULL or a static NUL-terminated string.
        unsafe { cstr_to_string(mode) }.unwrap_or_default()
    }

    /// The disk's size and properties (`GetInfo`, then `FreeInfo`).
    ///
    /// # Errors
    /// GetInfo's error.
    pub fn info(&self) -> Result<DiskInfo, DiskLibError> {
        let lib = self.lib();
        let mut info: *mut sys::VixDiskLibInfo = std::ptr::null_mut();
        // SAFETY: the handle is open; `info` is a valid out-pointer.
        let err = unsafe { lib.raw().VixDiskLib_GetInfo(self.handle.0, &raw mut info) };
        self.check("VixDiskLib_GetInfo", err, None)?;
        if info.is_null() {
            return Err(lib
                .error(
                    "VixDiskLib_GetInfo",
                    sys::VixError::from(sys::VIX_E_FAIL),
                    self.context(None),
                )
                .into());
        }
        // SAFETY: GetInfo succeeded, so `info` points to the library's struct: at least the
        // 56-byte 6.x prefix (read through VixDiskLibInfoV6), and the 64-byte 7.0 layout only
        // when the loaded major is 7 or later. Strings are NUL-terminated or NULL. The struct
        // is freed exactly once, after the last read.
        let result = unsafe {
            let v6 = &*info.cast::<sys::VixDiskLibInfoV6>();
            let (logical, physical) = if lib.major() >= 7 {
                let v7 = &*info;
                (v7.logicalSectorSize, v7.physicalSectorSize)
            } else {
                (512, 512)
            };
            let result = DiskInfo {
                capacity_bytes: v6.capacity.saturating_mul(SECTOR_SIZE),
                logical_sector_size: if logical == 0 { 512 } else { logical },
                physical_sector_size: if physical == 0 { 512 } else { physical },
                adapter: AdapterType::from_c(v6.adapterType),
                num_links: v6.numLinks,
                parent_hint: cstr_to_string(v6.parentFileNameHint),
                uuid: cstr_to_string(v6.uuid),
            };
            lib.raw().VixDiskLib_FreeInfo(info);
            result
        };
        self.capacity_sectors
            .set(Some(result.capacity_bytes / SECTOR_SIZE));
        Ok(result)
    }

    /// Capacity in sectors, from a cached `info()`.
    pub(crate) fn capacity_sectors(&self) -> Result<u64, DiskLibError> {
        match self.capacity_sectors.get() {
            Some(c) => Ok(c),
            None => Ok(self.info()?.capacity_bytes / SECTOR_SIZE),
        }
    }

    /// The names of the disk's metadata keys (`GetMetadataKeys`).
    ///
    /// # Errors
    /// GetMetadataKeys's error.
    pub fn metadata_keys(&self) -> Result<Vec<String>, DiskLibError> {
        let lib = self.lib();
        let mut required: usize = 0;
        // SAFETY: NULL/0 asks only for the required length, written to `required`.
        let err = unsafe {
            lib.raw().VixDiskLib_GetMetadataKeys(
                self.handle.0,
                std::ptr::null_mut(),
                0,
                &raw mut required,
            )
        };
        if VixCode::from_raw(err) != VixCode::of(sys::VIX_E_BUFFER_TOOSMALL) {
            self.check("VixDiskLib_GetMetadataKeys", err, None)?;
        }
        if required == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; required];
        // SAFETY: `buf` has `required` writable bytes.
        let err = unsafe {
            lib.raw().VixDiskLib_GetMetadataKeys(
                self.handle.0,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &raw mut required,
            )
        };
        self.check("VixDiskLib_GetMetadataKeys", err, None)?;
        Ok(parse_keys(&buf))
    }

    /// The value of metadata `key` (`ReadMetadata`).
    ///
    /// # Errors
    /// ReadMetadata's error (`VIX_E_DISK_KEY_NOTFOUND` for an unknown key).
    pub fn read_metadata(&self, key: &str) -> Result<String, DiskLibError> {
        let lib = self.lib();
        let c_key = c_string("metadata key", key)?;
        let mut required: usize = 0;
        // SAFETY: NULL/0 asks only for the required length.
        let err = unsafe {
            lib.raw().VixDiskLib_ReadMetadata(
                self.handle.0,
                c_key.as_ptr(),
                std::ptr::null_mut(),
                0,
                &raw mut required,
            )
        };
        if VixCode::from_raw(err) != VixCode::of(sys::VIX_E_BUFFER_TOOSMALL) {
            self.check("VixDiskLib_ReadMetadata", err, None)?;
        }
        // The value may grow between the two calls (another writer): retry a few times.
        for _ in 0..3 {
            let mut buf = vec![0u8; required.max(1)];
            // SAFETY: `buf` has `buf.len()` writable bytes; `c_key` outlives the call.
            let err = unsafe {
                lib.raw().VixDiskLib_ReadMetadata(
                    self.handle.0,
                    c_key.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &raw mut required,
                )
            };
            if VixCode::from_raw(err) == VixCode::of(sys::VIX_E_BUFFER_TOOSMALL)
                && required > buf.len()
            {
                continue;
            }
            self.check("VixDiskLib_ReadMetadata", err, None)?;
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            return Ok(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
        Err(lib
            .error(
                "VixDiskLib_ReadMetadata",
                sys::VixError::from(sys::VIX_E_BUFFER_TOOSMALL),
                self.context(None),
            )
            .into())
    }

    /// Sets metadata `key` to `value` (`WriteMetadata`).
    ///
    /// # Errors
    /// WriteMetadata's error.
    pub fn write_metadata(&self, key: &str, value: &str) -> Result<(), DiskLibError> {
        let c_key = c_string("metadata key", key)?;
        let c_value = c_string("metadata value", value)?;
        // SAFETY: the handle is open; both strings outlive the call.
        let err = unsafe {
            self.lib().raw().VixDiskLib_WriteMetadata(
                self.handle.0,
                c_key.as_ptr(),
                c_value.as_ptr(),
            )
        };
        Ok(self.check("VixDiskLib_WriteMetadata", err, None)?)
    }

    /// The raw VDDK handle, for tests that exercise the library's own checks through the raw
    /// API. Calling VDDK with it is `unsafe` and must respect this Disk's ownership.
    #[doc(hidden)]
    #[must_use]
    pub fn as_raw_handle(&self) -> sys::VixDiskLibHandle {
        self.handle.0
    }

    /// Moves the disk to a new thread named `vddk-io/<label>` that runs `f` with it; the
    /// disk is closed when `f` returns (or panics) unless `f` hands it on.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn spawn_io<T, F>(self, label: &str, f: F) -> std::io::Result<JoinHandle<T>>
    where
        F: FnOnce(Disk) -> T + Send + 'static,
        T: Send + 'static,
    {
        std::thread::Builder::new()
            .name(format!("vddk-io/{label}"))
            .spawn(move || f(self))
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let handle = RawHandle(std::mem::replace(&mut self.handle.0, std::ptr::null_mut()));
        let sent = self.conn.vddk.request(|reply| OpenCmd::Close {
            handle,
            context: self.context(None),
            reply,
        });
        if sent.is_err() {
            tracing::error!(target: "vddk", vm = %self.conn.vm, disk = %self.path, "cannot close: the vddk-open thread is gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_checked_in_bytes_and_converted_to_sectors() {
        assert_eq!(to_sectors("read", "d", 0, 512).unwrap(), (0, 1));
        assert_eq!(
            to_sectors("read", "d", 1 << 20, 65536).unwrap(),
            (2048, 128)
        );
        assert_eq!(to_sectors("read", "d", 4096, 0).unwrap(), (8, 0));
        for (offset, len) in [(100, 512), (512, 100), (511, 1), (0, 513)] {
            let err = to_sectors("write", "[ds1] a.vmdk", offset, len).unwrap_err();
            match err {
                DiskLibError::Misaligned {
                    op,
                    offset: o,
                    len: l,
                    ..
                } => assert_eq!((op, o, l), ("write", offset, len)),
                other => panic!("unexpected {other}"),
            }
        }
        let err = to_sectors("read", "[ds1] web-1/web-1.vmdk", u64::MAX - 511, 1024).unwrap_err();
        assert!(matches!(err, DiskLibError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("[ds1] web-1/web-1.vmdk"), "{err}");
    }

    #[test]
    fn metadata_keys_are_nul_separated() {
        assert_eq!(
            parse_keys(b"uuid\0geometry.cylinders\0adapterType\0\0"),
            ["uuid", "geometry.cylinders", "adapterType"]
        );
        assert_eq!(parse_keys(b"\0"), Vec::<String>::new());
        assert_eq!(parse_keys(b""), Vec::<String>::new());
        // No final extra NUL: the last key still counts.
        assert_eq!(parse_keys(b"a\0b"), ["a", "b"]);
    }

    // Compile-time: Disk is Send but not Sync (static_assertions' assert_not_impl_any trick:
    // the trait call below is ambiguous, so does not compile, if Disk is Sync).
    trait AmbiguousIfSync<A> {
        fn some_item() {}
    }
    impl<T: ?Sized> AmbiguousIfSync<()> for T {}
    impl<T: ?Sized + Sync> AmbiguousIfSync<u8> for T {}

    #[test]
    fn disk_is_send_and_not_sync() {
        fn send<T: Send>() {}
        send::<Disk>();
        let _ = <Disk as AmbiguousIfSync<_>>::some_item;
    }
}
