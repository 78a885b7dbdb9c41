//! vadp-agent: a VADP backup agent for vSphere.
//!
//! Module map (ARCHITECTURE §2): [`vddk`] is the only user of `vddk-sys`; [`vsphere`] holds
//! the vim25 SOAP and vAPI REST clients; [`repo`] is the local repository (catalog, chunk
//! store, fixed indexes); [`vmservice`] decodes and validates the VM Service (VM Operator)
//! backup data in a VM's ExtraConfig; [`ids`] defines the shared value types; [`cli`] holds one
//! file per subcommand group.

pub mod cli;
pub mod engine;
pub mod ids;
pub mod repo;
pub mod supervisor;
#[allow(unsafe_code)]
pub mod vddk;
pub mod vmservice;
pub mod vsphere;
