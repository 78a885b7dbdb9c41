//! vadp-agent: a VADP backup agent for vSphere.
//!
//! Module map (ARCHITECTURE §2): [`vddk`] is the only user of `vddk-sys`; [`vsphere`] holds
//! the vim25 SOAP and vAPI REST clients; [`repo`] is the local repository (catalog, chunk
//! store, fixed indexes); [`vmservice`] decodes and validates the VM Service (VM Operator)
//! backup data in a VM's ExtraConfig; [`ids`] defines the shared value types; [`cli`] holds one
//! file per subcommand group; [`config`], [`daemon`] (job queue, scheduling) and [`api`] (the
//! HTTP server of the plugin-api contract) make up `vadp-agent serve`.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod ids;
pub mod repo;
pub mod supervisor;
#[allow(unsafe_code)]
pub mod vddk;
pub mod vmservice;
pub mod vsphere;
