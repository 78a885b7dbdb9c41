//! Snapshots (VSPHERE.md §A.6): CreateSnapshot_Task and RemoveSnapshot_Task, waited
//! for with progress.

use std::time::Duration;

use super::soap::{FaultKind, SoapClient, VsphereError};
use super::task::{DEFAULT_TASK_TIMEOUT, TaskState};
use super::types::{SnapshotMoref, TaskMoref, VmMoref};
use super::xml::XmlWriter;

/// Further reads of a recent task that failed for a passing reason (1 s, 2 s, 3 s apart).
const TASK_READ_RETRIES: u32 = 3;

impl SoapClient {
    /// `CreateSnapshot_Task`; waits for it and returns the new snapshot. `on_progress`
    /// receives task percentages.
    ///
    /// # Errors
    ///
    /// `InvalidState`, `TaskInProgress`, `FileFault`, … as the call's fault or
    /// [`VsphereError::TaskFailed`]; [`VsphereError::Malformed`] when the task has no
    /// snapshot result.
    pub async fn create_snapshot(
        &self,
        vm: &VmMoref,
        request: &CreateSnapshot,
        on_progress: impl FnMut(u8) + Send,
    ) -> Result<SnapshotMoref, VsphereError> {
        const METHOD: &str = "CreateSnapshot_Task";
        let mut w = XmlWriter::new();
        w.text("name", &request.name)
            .opt_text("description", request.description.as_deref())
            .value("memory", request.memory)
            .value("quiesce", request.quiesce);
        let this = vm.moref();
        let task = self.start_task(METHOD, &this, &w.finish()).await?;
        let result = self
            .wait_for_task(&task, METHOD, &this, request.timeout, on_progress)
            .await?;
        let snapshot = result
            .ok_or_else(|| VsphereError::Malformed {
                method: METHOD,
                reason: format!("task {task} returned no snapshot"),
            })?
            .moref()
            .map_err(|source| VsphereError::Xml {
                method: METHOD,
                source,
            })?;
        Ok(SnapshotMoref(snapshot.value))
    }

    /// `RemoveSnapshot_Task` (children kept; `consolidate` as given); waits for it.
    ///
    /// # Errors
    ///
    /// `ManagedObjectNotFound` for an unknown snapshot, `TaskInProgress`, … or
    /// [`VsphereError::TaskFailed`].
    pub async fn remove_snapshot(
        &self,
        snapshot: &SnapshotMoref,
        consolidate: bool,
        on_progress: impl FnMut(u8) + Send,
    ) -> Result<(), VsphereError> {
        const METHOD: &str = "RemoveSnapshot_Task";
        let mut w = XmlWriter::new();
        w.value("removeChildren", false)
            .value("consolidate", consolidate);
        let this = snapshot.moref();
        let task = self.start_task(METHOD, &this, &w.finish()).await?;
        self.wait_for_task(&task, METHOD, &this, DEFAULT_TASK_TIMEOUT, on_progress)
            .await?;
        Ok(())
    }

    /// Waits for every `CreateSnapshot_Task` still queued or running on `vm` (its
    /// `recentTask`) to end, whatever its outcome, for up to `timeout` in all. A caller
    /// that lost track of its own snapshot task (a reply lost, a crash) calls this before
    /// it looks for the snapshot to remove: a snapshot still being created is not in the
    /// VM's snapshot tree yet. A task that cannot be read (forgotten by vCenter, not ours
    /// to see) is skipped with a warning. Returns how many tasks it waited for.
    ///
    /// # Errors
    ///
    /// Reading `recentTask`, or [`VsphereError::TaskTimeout`] (and the errors of a wait
    /// that began) when a creation is still running at the deadline.
    pub async fn wait_for_snapshot_creates(
        &self,
        vm: &VmMoref,
        timeout: Duration,
    ) -> Result<usize, VsphereError> {
        self.wait_for_vm_tasks(vm, "CreateSnapshot_Task", &[".createSnapshot"], timeout)
            .await
    }

    /// Waits for every `method` task still queued or running on `vm` to end, as
    /// [`Self::wait_for_snapshot_creates`] does for snapshot creations; a task is
    /// recognised by its `descriptionId` ending in one of `description_ids` (vCenter's
    /// spelling and others': `ReconfigVM_Task` is `VirtualMachine.reconfigure` in
    /// vCenter). A caller that lost track of its own task (a crash, a reply lost) calls
    /// this before it judges the VM by its devices.
    ///
    /// # Errors
    ///
    /// As [`Self::wait_for_snapshot_creates`].
    pub async fn wait_for_vm_tasks(
        &self,
        vm: &VmMoref,
        method: &'static str,
        description_ids: &[&str],
        timeout: Duration,
    ) -> Result<usize, VsphereError> {
        self.wait_for_entity_tasks(&vm.moref(), method, description_ids, timeout)
            .await
    }

    /// As [`Self::wait_for_vm_tasks`], for the tasks of any managed entity (a folder's
    /// `RegisterVM_Task`, `Folder.registerVm` in vCenter).
    ///
    /// # Errors
    ///
    /// As [`Self::wait_for_snapshot_creates`].
    pub async fn wait_for_entity_tasks(
        &self,
        entity: &crate::vsphere::MoRef,
        method: &'static str,
        description_ids: &[&str],
        timeout: Duration,
    ) -> Result<usize, VsphereError> {
        let content = self.retrieve_object(entity, &["recentTask"]).await?;
        let tasks = match content.get("recentTask") {
            Some(list) => list
                .children
                .iter()
                .map(|t| t.moref().map(|m| TaskMoref(m.value)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| VsphereError::Xml {
                    method: "RetrievePropertiesEx",
                    source,
                })?,
            None => Vec::new(),
        };
        let deadline = std::time::Instant::now() + timeout;
        let mut waited = 0;
        for task in tasks {
            // A task that cannot be read for a passing reason (a reset connection, a 503)
            // may be the very create whose snapshot the caller is about to look for: not
            // waiting for it would let the caller find no snapshot and close its journal
            // entry while the snapshot is still being made. Retried, then an error (the
            // caller keeps its entry); a fault about the task itself is vCenter's answer.
            let mut attempt = 0u32;
            let info = loop {
                match self.task_info(&task).await {
                    Ok(info) => break Some(info),
                    Err(e) if e.fault_kind() == Some(FaultKind::ManagedObjectNotFound) => {
                        break None;
                    }
                    Err(e) if e.is_retryable() && attempt < TASK_READ_RETRIES => {
                        attempt += 1;
                        tracing::info!(entity = %entity.value, task = %task, error = %e, attempt,
                            "cannot read a recent task; trying again");
                        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                    }
                    Err(e) if e.is_retryable() => return Err(e),
                    Err(e) => {
                        tracing::warn!(entity = %entity.value, task = %task, error = %e,
                            "cannot read a recent task; not waiting for it");
                        break None;
                    }
                }
            };
            let Some(info) = info else { continue };
            let running = description_ids
                .iter()
                .any(|d| info.description_id.ends_with(d))
                && matches!(info.state, TaskState::Queued | TaskState::Running);
            if !running {
                continue;
            }
            tracing::info!(entity = %entity.value, task = %task, method, "waiting for a task still running");
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self
                .wait_for_task(&task, method, entity, left, |_| {})
                .await
            {
                Ok(_) | Err(VsphereError::TaskFailed { .. }) => waited += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(waited)
    }

    /// `ConsolidateVMDisks_Task`, for when `runtime.consolidationNeeded` is set.
    ///
    /// # Errors
    ///
    /// The call's fault or [`VsphereError::TaskFailed`].
    pub async fn consolidate_disks(&self, vm: &VmMoref) -> Result<(), VsphereError> {
        self.run_task("ConsolidateVMDisks_Task", &vm.moref(), "")
            .await
            .map(|_| ())
    }
}

/// Parameters of `CreateSnapshot_Task`.
#[derive(Clone, Debug)]
pub struct CreateSnapshot {
    /// Snapshot name.
    pub name: String,
    /// Description (the agent tags its snapshots here, ARCHITECTURE §7).
    pub description: Option<String>,
    /// Include memory (false for backups).
    pub memory: bool,
    /// Quiesce through VMware Tools (ignored when the VM is off).
    pub quiesce: bool,
    /// How long to wait for the task.
    pub timeout: Duration,
}

impl CreateSnapshot {
    /// A backup snapshot: no memory, not quiesced, default timeout.
    pub fn backup(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: Some(description.into()),
            memory: false,
            quiesce: false,
            timeout: DEFAULT_TASK_TIMEOUT,
        }
    }
}
