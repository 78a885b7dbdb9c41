//! The lab: a simulated vSphere that speaks the real protocols, so the agent uses its real
//! clients and its real VDDK FFI path against it (ARCHITECTURE §8).
//!
//! - [`datastore`]: the ESXi storage model — datastores as directories, VMDK descriptors
//!   with sparse flat extents, snapshot redo logs, change tracking. Shared with vddk-sim.
//! - [`vmstate`]: per-VM state files (`vms/<moref>.json`), lab settings (`lab.json`) and
//!   the [`Lab`] facade: create VMs, snapshots with consolidation, guest writes, CBT
//!   queries, PrepareForAccess/EndAccess.
//! - `vcenter` (feature `server`): the simulated vCenter over both.
//! - `supervisor` (feature `server`): the simulated Supervisor (Kubernetes API, VM
//!   Operator, WCP RegisterVM) served by the vCenter.

pub mod datastore;
#[cfg(feature = "server")]
pub mod supervisor;
#[cfg(feature = "server")]
pub mod vcenter;
pub mod vmstate;

pub use vmstate::Lab;
