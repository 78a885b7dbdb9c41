//! The agent's vSphere clients: vim25 SOAP (sessions, PropertyCollector, VMs, snapshots,
//! tasks, CBT, reconfigure, create/register/destroy), datastore file transfer over HTTPS,
//! and the vAPI REST client (session, cis tasks, namespaces `registervm`).
//!
//! Everything here is async (tokio) and never blocks. One [`SoapClient`] holds one
//! session; clones share it, and an expired session is renewed transparently. Errors:
//! every SOAP operation fails with [`VsphereError`] (carrying the method, the object and
//! the decoded fault); [`DatastoreError`] and [`VapiError`] cover the HTTP side-channels.
//! Each answers `is_retryable()`.
//!
//! This module must not know about backups: it maps vSphere's API to typed Rust and
//! nothing more. References: VSPHERE.md §A (vim25) and §B (vAPI).

mod cbt;
mod datastore;
mod disk_manager;
mod property;
mod snapshot;
mod soap;
mod task;
mod tls;
mod types;
mod vapi;
mod vm;
mod vm_lifecycle;
mod xml;

pub use cbt::{CBT_CYCLE_SNAPSHOT, ChangedArea, DiskChangeInfo, collect_changed_areas};
pub use datastore::{DatastoreError, DatastorePath};
pub use disk_manager::{DatastoreSummary, DiskChange, ddb_uuid};
pub use property::{ObjectContent, PropertyFilter, TraversalSpec};
pub use snapshot::CreateSnapshot;
pub use soap::{
    AboutInfo, Credentials, FaultKind, SESSION_COOKIE_NAME, ServiceContent, SessionCookie,
    SoapClient, SoapConfig, SoapFault, UserSession, VsphereError, parse_response,
    verified_server_thumbprint,
};
pub use task::{DEFAULT_TASK_TIMEOUT, TaskInfo, TaskState};
pub use tls::{Thumbprint, TlsError, TlsVerification, client_config as tls_client_config};
pub use types::{
    ChangeId, DatastoreMoref, DiskKey, FolderMoref, MoRef, ResourcePoolMoref, SnapshotMoref,
    TaskMoref, VmMoref,
};
pub use vapi::{
    CisProgress, CisTaskInfo, CisTaskStatus, SubnetMapping, SubnetRef, VapiClient, VapiError,
};
pub use vm::{PowerState, SnapshotTree, VirtualDiskInfo, VmInfo};
pub use vm_lifecycle::{ExtraConfigChange, NewDisk, VmConfigSpec};
pub use xml::{Element, XmlError};
