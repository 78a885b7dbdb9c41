//! The engines: backup of a group of VMs (and, later, restore), with the side-effect
//! journal and its reconciler (ARCHITECTURE §3, §7).
//!
//! # Side effects and how each is undone
//!
//! | effect we cause in vSphere | journalled before it happens | undone by the job | undone after a crash |
//! |---|---|---|---|
//! | PrepareForAccess (RelocateVM_Task disabled) | `prepare_access` entry with the identity | EndAccess after the VM's snapshot is gone, on success, error, cancellation and panic | [`reconcile`] calls EndAccess with the journalled identity |
//! | CreateSnapshot_Task | `snapshot` entry with the snapshot name and job id; the moref is added once known | RemoveSnapshot_Task (consolidate) after the point commits or the VM fails | [`reconcile`] removes the journalled moref, or every snapshot whose description carries the job id |
//!
//! A job holds an exclusive `flock` on `locks/job-<id>.lock` in the repository while it
//! runs; the reconciler only touches the entries of jobs whose lock it can take, so it
//! never undoes the side effects of a job that is still running in another process.
//!
//! # Threads
//! The job itself is async (tokio): SOAP calls, task polling, scheduling. Nothing blocking
//! runs on the runtime: catalog calls and VDDK's PrepareForAccess/EndAccess/ConnectEx go
//! through `spawn_blocking`; each disk is read on its own named thread
//! (`backup/<vm>/<disk>`), which hands the VDDK disk to the repository pipeline's
//! `disk-read` thread.

// Errors carry what failed (the VM, disk, call and the vSphere fault), which makes them larger
// than clippy's 128-byte default; they travel on cold paths only.
#![allow(clippy::result_large_err)]

mod backup;
mod journal;
mod limits;
mod reconcile;
pub mod restore;
mod vddk_source;
pub mod vmx;

use std::sync::Arc;

pub use backup::{
    BackupError, BackupEvent, BackupReport, BackupRequest, DiskReport, SNAPSHOT_TAG, Slot,
    SnapshotGate, VmReport, VmRequest, VmSelector, failed_members, run_backup,
};
pub use journal::JobLock;
pub use limits::{Limits, PlaceLimits};
pub use reconcile::{ReconcileReport, reconcile};
pub use vddk_source::VddkSource;

use crate::repo::Repository;
use crate::vddk::{ConnectSpec, Credentials, TransportMode, Vddk};
use crate::vsphere::{SnapshotMoref, SoapClient, VmMoref};

/// Receives the engine's progress events (the CLI draws bars or prints JSON lines; the
/// daemon forwards them as server-sent events). Called from async tasks and disk threads.
pub type Observer = Arc<dyn Fn(&BackupEvent) + Send + Sync>;

/// How VDDK reaches vCenter (`ConnectEx`, PrepareForAccess/EndAccess).
#[derive(Debug, Clone)]
pub struct VddkTarget {
    /// vCenter host name or address.
    pub server: String,
    /// HTTPS port, `None` for 443.
    pub port: Option<u16>,
    /// SHA-1 thumbprint of vCenter's certificate.
    pub thumbprint: Option<String>,
    /// Credentials (a [`crate::vddk::Secret`] inside: never printed).
    pub credentials: Credentials,
    /// Transport modes to try, in order.
    pub transport_modes: Vec<TransportMode>,
}

impl VddkTarget {
    /// The connect parameters for `vm`, at `snapshot` when given.
    #[must_use]
    pub fn spec(
        &self,
        vm: &VmMoref,
        snapshot: Option<&SnapshotMoref>,
        read_only: bool,
    ) -> ConnectSpec {
        ConnectSpec {
            server: self.server.clone(),
            port: self.port,
            thumbprint: self.thumbprint.clone(),
            credentials: self.credentials.clone(),
            vm: vm.0.clone(),
            snapshot: snapshot.map(|s| s.0.clone()),
            transport_modes: self.transport_modes.clone(),
            read_only,
        }
    }
}

/// Everything a job talks to.
#[derive(Debug, Clone)]
pub struct Environment {
    /// vim25 session (clones share it).
    pub soap: SoapClient,
    /// The loaded VDDK library.
    pub vddk: Vddk,
    /// How VDDK reaches vCenter.
    pub vddk_target: VddkTarget,
    /// The repository.
    pub repo: Arc<Repository>,
    /// Datacenter of the VMs, for datastore HTTP (`None`: the inventory's only one).
    pub datacenter: Option<String>,
}

/// Fault injection for the crash tests: when the environment variable
/// `VADP_AGENT_CRASH_AT` names `point`, the process kills itself there (SIGKILL, as
/// `kill -9` would),
/// leaving only what is journalled. Points: `after-prepare-access`, `before-snapshot`,
/// `snapshot-task-running`, `snapshot-unrecorded`, `after-snapshot`, `disk-opened`, `mid-disk`,
/// `before-commit`, `after-commit`; in restores `restore-after-register`, `restore-after-prepare-access`,
/// `restore-disk-journalled`, `restore-after-attach` and `restore-after-data`; and in
/// `repo rebuild-catalog`, `rebuild-marked` and `rebuild-renamed`. `panic:<point>` panics
/// there instead (for the tests that a panic undoes what the job did).
pub(crate) fn crash_point(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT
        .get_or_init(|| std::env::var("VADP_AGENT_CRASH_AT").ok())
        .as_deref();
    if at.and_then(|a| a.strip_prefix("panic:")) == Some(point) {
        panic!("VADP_AGENT_CRASH_AT=panic:{point}");
    }
    if at == Some(point) {
        eprintln!("VADP_AGENT_CRASH_AT={point}: killing the process");
        // SIGKILL rather than abort(): no core dump to write, which on a machine that
        // collects them can take seconds the crash tests do not expect.
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}

/// Interleaving for the race tests: when `VADP_AGENT_PAUSE_AT` names `point`, the job
/// creates `<VADP_AGENT_PAUSE_DIR>/<point>.reached` there and waits until
/// `<point>.go` appears beside it, so that a test can run another process, or send a
/// signal, in between. Points: `restore-planned`, `restore-after-register`, `reconcile-after-read`,
/// `end-access` (before every EndAccess), and for [`pause_point_blocking`] `restore-mid-disk`, `backup-mid-disk` (disk threads) and
/// `verify-after-list` (a repository verify); `restore-cancel-requested` and
/// `serve-stopping` once a CLI restore or the daemon has seen its signal.
pub(crate) async fn pause_point(point: &str) {
    if let Some((reached, go)) = pause_files(point) {
        let _ = tokio::fs::write(&reached, b"").await;
        while !tokio::fs::try_exists(&go).await.unwrap_or(true) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// [`pause_point`] for threads outside the runtime.
pub(crate) fn pause_point_blocking(point: &str) {
    if let Some((reached, go)) = pause_files(point) {
        let _ = std::fs::write(&reached, b"");
        while !go.try_exists().unwrap_or(true) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The marker files of `point` when the environment pauses there (`VADP_AGENT_PAUSE_AT`
/// may name several points, separated by commas; a point whose `.go` file exists already
/// only marks that it was reached).
fn pause_files(point: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    static AT: std::sync::OnceLock<Option<(Vec<String>, std::path::PathBuf)>> =
        std::sync::OnceLock::new();
    let (at, dir) = AT
        .get_or_init(|| {
            let points = std::env::var("VADP_AGENT_PAUSE_AT").ok()?;
            let dir = std::env::var_os("VADP_AGENT_PAUSE_DIR")?;
            Some((points.split(',').map(str::to_owned).collect(), dir.into()))
        })
        .as_ref()?;
    at.iter().any(|a| a == point).then(|| {
        (
            dir.join(format!("{point}.reached")),
            dir.join(format!("{point}.go")),
        )
    })
}

/// Formats an error with its chain of causes: `outer: inner: innermost`.
#[must_use]
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Runs a short blocking call (catalog, VDDK control calls) off the async workers.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, BackupError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackupError::Thread(format!("blocking call failed: {e}")))
}
