//! vadp-agent: a VADP backup agent for vSphere.
//!
//! Module map (ARCHITECTURE §2): [`vddk`] is the only user of `vddk-sys`; [`repo`] is the
//! local repository (catalog, chunk store, fixed indexes); [`cli`] holds one file per
//! subcommand group.

pub mod cli;
pub mod ids;
pub mod repo;
