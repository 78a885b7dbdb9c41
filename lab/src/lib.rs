//! The lab: a simulated vSphere that speaks the real protocols, so the agent uses its real
//! clients and its real VDDK FFI path against it (ARCHITECTURE §8).
//!
//! - [`datastore`]: the ESXi storage model — datastores as directories, VMDK descriptors
//!   with sparse flat extents, snapshot redo logs, change tracking. Shared with vddk-sim.

pub mod datastore;
