//! Per-VM state of the lab and the [`Lab`] facade.
//!
//! `<root>/lab.json` holds [`LabSettings`]; `<root>/vms/<moref>.json` one [`VmState`]
//! each. Every mutation takes the lab-wide exclusive advisory lock `<root>/lab.lock`
//! (`flock`, so it also excludes other handles in the same process), re-reads the file,
//! and writes it back via temp file + fsync + rename: the lab server and a vddk-sim in
//! the agent process can both update the same VM without losing updates. Disk content
//! lives in [`crate::datastore`]; this module only decides which files a VM uses.

mod fcd;
mod ids;
mod lab;
mod model;
mod registry;

pub use ids::{DiskKey, SnapshotMoref, VmMoref};
pub use lab::{Lab, LabError, NewDisk, RELOCATE_METHOD};
pub use model::{
    DisabledMethod, LabSettings, PowerState, SnapshotDisk, SnapshotInfo, VmDisk, VmState,
};

pub use crate::datastore::ChangeId;
