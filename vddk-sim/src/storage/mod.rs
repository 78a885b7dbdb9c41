//! The storage seam: everything the exports need from the lab's datastores and VM state.
//!
//! This is an interim adapter written inside vddk-sim while the lab's datastore model
//! (branch `lab-ds`) is being written: it reads the same on-disk layout ARCHITECTURE §8
//! describes (`<root>/lab.json`, `<root>/vms/<moref>.json`, `<root>/datastores/<ds>/…`
//! with VMDK text descriptors and sparse flat extents) so that wiring `lab::datastore`'s
//! `DiskChain` in is a change confined to this module. The rest of the crate sees only
//! [`Disk`], [`DatastorePath`], [`LabSettings`] and [`VmState`].
//!
//! Not supported until `lab-ds` lands: redo-log (`vmfsSparse`) extents — a disk whose
//! chain needs one fails to open with `VIX_E_NOT_SUPPORTED`.
//!
//! No locking here: a [`Disk`] is owned by one disk handle, which serialises access.

mod datastore_path;
mod lab_state;
mod vmdk;

pub(crate) use datastore_path::DatastorePath;
pub(crate) use lab_state::{LabSettings, VmState, check_identity, set_relocate_disabled};
pub(crate) use vmdk::Disk;
