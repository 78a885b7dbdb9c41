//! [`Connection`]: a VDDK connection to one VM (and optionally one of its snapshots).

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::BitOr;
use std::sync::Arc;

use vddk_sys as sys;

use super::connect::ConnectSpec;
use super::disk::Disk;
use super::error::DiskLibError;
use super::instance::Vddk;
use super::open_thread::{ConnId, OpenCmd};

/// Flags for [`Connection::open`] (`VIXDISKLIB_FLAG_OPEN_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenFlags(pub u32);

impl OpenFlags {
    /// No flags: read-write, buffered.
    pub const NONE: Self = Self(0);
    /// Bypass the host cache.
    pub const UNBUFFERED: Self = Self(sys::VIXDISKLIB_FLAG_OPEN_UNBUFFERED);
    /// Open only this link, not the chain of parents.
    pub const SINGLE_LINK: Self = Self(sys::VIXDISKLIB_FLAG_OPEN_SINGLE_LINK);
    /// Read-only.
    pub const READ_ONLY: Self = Self(sys::VIXDISKLIB_FLAG_OPEN_READ_ONLY);
    /// NBD/NBDSSL zlib compression.
    pub const COMPRESSION_ZLIB: Self = Self(sys::VIXDISKLIB_FLAG_OPEN_COMPRESSION_ZLIB);
    /// NBD/NBDSSL FastLZ compression.
    pub const COMPRESSION_FASTLZ: Self = Self(sys::VIXDISKLIB_FLAG_OPEN_COMPRESSION_FASTLZ);
    /// NBD/NBDSSL skipz compression.
    pub const COMPRESSION_SKIPZ: Self = Self(sys::VIXDISKLIB_FLAG_OPEN_COMPRESSION_SKIPZ);
}

impl BitOr for OpenFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A VDDK connection (`ConnectEx`). Cheap to clone; `Send + Sync`. It is disconnected, on the
/// `vddk-open` thread, when the last clone and the last [`Disk`] opened through it are gone.
#[derive(Debug, Clone)]
pub struct Connection {
    pub(crate) inner: Arc<ConnInner>,
}

#[derive(Debug)]
pub(crate) struct ConnInner {
    pub(crate) vddk: Vddk,
    id: ConnId,
    pub(crate) vm: String,
    snapshot: Option<String>,
    read_only: bool,
}

impl Connection {
    pub(crate) fn new(vddk: Vddk, id: ConnId, spec: &ConnectSpec) -> Self {
        Self {
            inner: Arc::new(ConnInner {
                vddk,
                id,
                vm: spec.vm.clone(),
                snapshot: spec.snapshot.clone(),
                read_only: spec.read_only,
            }),
        }
    }

    /// The VM this connection is for (`vm-42`).
    #[must_use]
    pub fn vm(&self) -> &str {
        &self.inner.vm
    }

    /// The snapshot it reads, if any.
    #[must_use]
    pub fn snapshot(&self) -> Option<&str> {
        self.inner.snapshot.as_deref()
    }

    /// Whether it was made read-only.
    #[must_use]
    pub fn read_only(&self) -> bool {
        self.inner.read_only
    }

    /// Opens a disk (`Open`, on the `vddk-open` thread). `path` is a datastore path such as
    /// `[ds1] web-1/disk-0.vmdk`; at a snapshot, the disk file named in that snapshot.
    ///
    /// # Errors
    /// Open's error: `VIX_E_FILE_NOT_FOUND` for an unknown path, `VIX_E_FAIL` for a wrong
    /// thumbprint, …
    pub fn open(&self, path: &str, flags: OpenFlags) -> Result<Disk, DiskLibError> {
        let handle = self.inner.vddk.request(|reply| OpenCmd::Open {
            conn: self.inner.id,
            path: path.to_owned(),
            flags: flags.0,
            reply,
        })??;
        Ok(Disk {
            handle,
            conn: Arc::clone(&self.inner),
            path: path.to_owned(),
            capacity_sectors: Cell::new(None),
            _not_sync: PhantomData,
        })
    }
}

impl Drop for ConnInner {
    fn drop(&mut self) {
        // Every Disk of this connection holds this Arc, so all of them were closed (their
        // Close commands ran on vddk-open) before this Disconnect is queued.
        let id = self.id;
        if self
            .vddk
            .request(|reply| OpenCmd::Disconnect { conn: id, reply })
            .is_err()
        {
            tracing::error!(target: "vddk", vm = %self.vm, "cannot disconnect: the vddk-open thread is gone");
        }
    }
}
