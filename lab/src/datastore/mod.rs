//! The ESXi storage model of the lab: datastores as directories, VMDK text descriptors
//! with sparse flat extents, snapshot redo logs, and change tracking. Shared by the lab
//! server and vddk-sim, which may run in different processes at the same time.
//!
//! # Layout
//!
//! `[ds1] web-1/disk-0.vmdk` is `<root>/datastores/ds1/web-1/disk-0.vmdk`. A base disk is
//! a text descriptor (`createType="vmfs"`, extent `RW <sectors> VMFS "disk-0-flat.vmdk"`)
//! plus a sparse flat extent of exactly the capacity; `qemu-img` reads it as a VMDK.
//! A snapshot adds `disk-0-000001.vmdk` (`createType="vmfsSparse"`,
//! `parentFileNameHint="disk-0.vmdk"`, `parentCID` = the parent's CID) with a delta
//! extent `disk-0-000001-delta.vmdk`; the next one `-000002` on top, and so on. Each disk
//! file may have a `-ctk.vmdk` change-tracking file named by `changeTrackPath`.
//!
//! # Delta (redo log) format — ours, not VMware's COWD/SESparse
//!
//! qemu-img cannot read it (it rejects the magic; it never misreads it). All integers
//! little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `VADPDLTA` |
//! | 8 | 4 | version = 1 |
//! | 12 | 4 | grain size = 4096 |
//! | 16 | 8 | capacity in bytes |
//! | 24 | 8 | bitmap offset = 4096 |
//! | 32 | 8 | data offset (bitmap rounded up to 4 KiB) |
//!
//! The bitmap holds one bit per grain (bit `g % 8` of byte `g / 8`). Grain `g` is stored
//! at `data offset + g * 4096` (direct-mapped; the file is sparse). A write stores the
//! grain data first and sets the bitmap bit afterwards, so a crash never exposes a bit
//! without the `pwrite` of its data having been issued; [`DiskChain::flush`] fsyncs.
//! Partial-grain writes first copy the rest of the grain from the parents.
//!
//! # Change tracking format — ours
//!
//! See [`ctk`](self) internals: header (magic `VADPLCTK`, version, 64 KiB block size,
//! capacity, block count, change UUID, current sequence) and one `u64` sequence stamp per
//! block. Writes stamp the current sequence. A snapshot freezes the parent's ctk (its
//! changeId is `<uuid>/<seq>`) and gives the redo log a copy with `seq + 1`;
//! consolidation moves the child's ctk over the parent's. Resize and disable/enable
//! create a new UUID.
//!
//! # Concurrency rules
//!
//! - A disk with a child is frozen: [`DiskChain::open`] with [`OpenMode::ReadWrite`]
//!   refuses it, so frozen files are only ever read and can be read by any number of
//!   processes while another process writes the redo log on top.
//! - A writer holds an exclusive advisory lock (`flock`) on its data file; a second
//!   writer, [`create_child`] and [`consolidate`] get [`DatastoreError::Busy`].
//! - A read-only handle on a file that someone else is writing sees that file's
//!   allocation bitmap as of its open.
//! - Descriptors and ctk copies are replaced atomically (temp file, fsync, rename).
//!
//! Not modelled: the descriptor CID is not changed on the first write after open (ESXi
//! and qemu do), multi-extent disks, SESparse, snapshot trees with branches.

mod cbt;
mod chain;
mod ctk;
mod delta;
mod descriptor;
mod disk;
mod error;
mod path;
mod snapshot;

pub use cbt::{changed_areas, current_change_id, set_change_tracking};
pub use chain::{DiskChain, OpenMode, SECTOR_BYTES};
pub use ctk::{CTK_BLOCK_BYTES, ChangeId};
pub use delta::GRAIN_BYTES;
pub(crate) use descriptor::write_atomic;
pub use disk::{
    AdapterType, DiskOptions, backing_uuid, create_disk, delete_disk, resize_disk, set_disk_uuid,
};
pub use error::DatastoreError;
pub use path::{DatastorePath, datastore_dir};
pub use snapshot::{ChildDisk, children_of, consolidate, create_child};
