//! Task polling (VSPHERE.md §A.5): `*_Task` methods return a Task moref; its `info` is
//! polled with capped exponential backoff until `success` or `error`, reporting progress.
//!
//! Real vCenter runs tasks asynchronously (queued → running → done); vcsim usually
//! finishes them before the call returns. Both work: the first poll may already see
//! `success`.

use std::time::{Duration, Instant};

use super::soap::{SoapClient, SoapFault, VsphereError};
use super::types::{MoRef, TaskMoref};
use super::xml::{Element, XmlWriter};

/// First poll delay; doubles up to [`MAX_POLL`]. Short at first because many tasks
/// (snapshots of small or idle VMs, snapshot removal without consolidation work) end within
/// tens of milliseconds, and the moment a task is seen to end is what the agent records
/// (e.g. a group's snapshot skew); a task that runs longer costs at most one poll a second.
/// (A WaitForUpdatesEx-based wait would need no polling at all; neither the lab nor this
/// client implements it yet.)
const FIRST_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_secs(1);
/// How long polling goes on through consecutive retryable errors (a vCenter restarting, a
/// load balancer dropping requests) before the wait gives up. The task itself runs on in
/// vCenter meanwhile: giving up at the first failed poll would leave, e.g., a snapshot
/// being created that the caller believes failed and cannot yet see to remove.
const POLL_OUTAGE: Duration = Duration::from_secs(120);
/// How long [`SoapClient::run_task`] waits by default.
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(3600);

impl SoapClient {
    /// Starts `method` (a `*_Task` method) on `this` with `params` and returns the task.
    ///
    /// # Errors
    ///
    /// The method's fault, or a malformed answer without a Task moref.
    pub async fn start_task(
        &self,
        method: &'static str,
        this: &MoRef,
        params: &str,
    ) -> Result<TaskMoref, VsphereError> {
        let response = self.invoke(method, this, params).await?;
        let task = response
            .child("returnval")
            .ok_or_else(|| VsphereError::Malformed {
                method,
                reason: "no task returned".into(),
            })?
            .moref()
            .map_err(|source| VsphereError::Xml { method, source })?;
        Ok(TaskMoref(task.value))
    }

    /// Reads a task's `info`.
    ///
    /// # Errors
    ///
    /// `ManagedObjectNotFound` for an unknown or expired task; malformed `info`.
    pub async fn task_info(&self, task: &TaskMoref) -> Result<TaskInfo, VsphereError> {
        let content = self.retrieve_object(&task.moref(), &["info"]).await?;
        let info = content.get("info").ok_or_else(|| VsphereError::Malformed {
            method: "RetrievePropertiesEx",
            reason: format!("task {task} has no info"),
        })?;
        TaskInfo::from_xml(info).map_err(|source| VsphereError::Xml {
            method: "RetrievePropertiesEx",
            source,
        })
    }

    /// Polls `task` until it ends; calls `on_progress` with each new percentage. Returns
    /// the task's `result` element (e.g. the new snapshot's moref), if any.
    ///
    /// # Errors
    ///
    /// [`VsphereError::TaskFailed`] with the task's fault, [`VsphereError::TaskTimeout`]
    /// after `timeout`, or the errors of reading the task: at once when not retryable,
    /// after retryable ones kept failing for two minutes.
    pub async fn wait_for_task(
        &self,
        task: &TaskMoref,
        operation: &'static str,
        object: &MoRef,
        timeout: Duration,
        mut on_progress: impl FnMut(u8) + Send,
    ) -> Result<Option<Element>, VsphereError> {
        let started = Instant::now();
        let mut delay = FIRST_POLL;
        let mut last_progress = None;
        let mut failing_since: Option<Instant> = None;
        loop {
            match self.task_info(task).await {
                Ok(info) => {
                    failing_since = None;
                    if info.progress.is_some() && info.progress != last_progress {
                        last_progress = info.progress;
                        on_progress(info.progress.unwrap_or_default());
                    }
                    match info.state {
                        TaskState::Success => {
                            if last_progress != Some(100) {
                                on_progress(100);
                            }
                            return Ok(info.result);
                        }
                        TaskState::Error => {
                            let fault = info.error.unwrap_or_else(|| SoapFault {
                                kind: super::soap::FaultKind::Other,
                                name: "Unknown".into(),
                                message: "task failed without an error".into(),
                                object: None,
                            });
                            return Err(VsphereError::TaskFailed {
                                task: task.clone(),
                                operation,
                                object: object.clone(),
                                fault: Box::new(fault),
                            });
                        }
                        TaskState::Queued | TaskState::Running => {}
                    }
                }
                Err(e)
                    if e.is_retryable()
                        && failing_since.is_none_or(|t| t.elapsed() < POLL_OUTAGE)
                        && started.elapsed() < timeout =>
                {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    tracing::warn!(task = %task, operation, object = %object, error = %e,
                        failing_secs = since.elapsed().as_secs(),
                        "reading the task failed; polling again (it runs on in vCenter)");
                }
                // The task, not its object, is what is missing: callers must not read this
                // fault as "the snapshot (or VM) is gone".
                Err(e) if e.fault_kind() == Some(super::soap::FaultKind::ManagedObjectNotFound) => {
                    return Err(VsphereError::TaskLost {
                        task: task.clone(),
                        operation,
                        object: object.clone(),
                    });
                }
                Err(e) => return Err(e),
            }
            if started.elapsed() >= timeout {
                return Err(VsphereError::TaskTimeout {
                    task: task.clone(),
                    operation,
                    object: object.clone(),
                    waited_secs: started.elapsed().as_secs(),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_POLL);
        }
    }

    /// [`start_task`](Self::start_task) then [`wait_for_task`](Self::wait_for_task) with
    /// the default timeout and no progress reporting.
    ///
    /// # Errors
    ///
    /// As both.
    pub async fn run_task(
        &self,
        method: &'static str,
        this: &MoRef,
        params: &str,
    ) -> Result<Option<Element>, VsphereError> {
        let task = self.start_task(method, this, params).await?;
        self.wait_for_task(&task, method, this, DEFAULT_TASK_TIMEOUT, |_| {})
            .await
    }

    /// `Task.CancelTask`.
    ///
    /// # Errors
    ///
    /// `InvalidState` when the task is not cancelable or already done.
    pub async fn cancel_task(&self, task: &TaskMoref) -> Result<(), VsphereError> {
        self.invoke("CancelTask", &task.moref(), &XmlWriter::new().finish())
            .await
            .map(|_| ())
    }
}

/// `TaskInfo.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting to run.
    Queued,
    /// Running.
    Running,
    /// Finished successfully.
    Success,
    /// Finished with an error.
    Error,
}

/// The parts of `TaskInfo` the agent uses.
#[derive(Clone, Debug)]
pub struct TaskInfo {
    /// The task's state.
    pub state: TaskState,
    /// Percent done, only while running (may be absent).
    pub progress: Option<u8>,
    /// The error when `state` is `Error`.
    pub error: Option<SoapFault>,
    /// The result when `state` is `Success` (typed by `xsi:type`).
    pub result: Option<Element>,
    /// The object the task runs on.
    pub entity: Option<MoRef>,
    /// The task's method description id, e.g. `VirtualMachine.createSnapshot`.
    pub description_id: String,
}

impl TaskInfo {
    /// Reads a `TaskInfo` element.
    ///
    /// # Errors
    ///
    /// [`super::xml::XmlError::Value`] for an unknown state or a bad progress.
    pub fn from_xml(e: &Element) -> Result<Self, super::xml::XmlError> {
        let state = match e.child_text("state").map(str::trim) {
            Some("queued") => TaskState::Queued,
            Some("running") => TaskState::Running,
            Some("success") => TaskState::Success,
            Some("error") => TaskState::Error,
            other => {
                return Err(super::xml::XmlError::Value {
                    element: "state".into(),
                    value: other.unwrap_or("<missing>").to_owned(),
                });
            }
        };
        let progress = e
            .child_parse::<i32>("progress")?
            .map(|p| u8::try_from(p.clamp(0, 100)).unwrap_or(100));
        Ok(Self {
            state,
            progress,
            error: e.child("error").map(SoapFault::from_localized),
            result: e.child("result").cloned(),
            entity: e.child("entity").and_then(|x| x.moref().ok()),
            description_id: e.child_text("descriptionId").unwrap_or_default().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_task_info() {
        let doc = br#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="TaskInfo"><key>task-7</key><task type="Task">task-7</task><descriptionId>VirtualMachine.createSnapshot</descriptionId><entity type="VirtualMachine">vm-1</entity><state>success</state><result xsi:type="ManagedObjectReference" type="VirtualMachineSnapshot">snapshot-9</result></val>"#;
        let info = TaskInfo::from_xml(&Element::parse(doc).unwrap()).unwrap();
        assert_eq!(info.state, TaskState::Success);
        assert_eq!(info.result.unwrap().moref().unwrap().value, "snapshot-9");

        let doc = br#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><state>error</state><progress>140</progress><error><fault xsi:type="InvalidPowerState"><existingState>poweredOff</existingState></fault><localizedMessage>off</localizedMessage></error></val>"#;
        let info = TaskInfo::from_xml(&Element::parse(doc).unwrap()).unwrap();
        assert_eq!(info.progress, Some(100));
        assert_eq!(
            info.error.unwrap().kind,
            super::super::soap::FaultKind::InvalidPowerState
        );

        let doc = b"<val><state>exploded</state></val>";
        assert!(TaskInfo::from_xml(&Element::parse(doc).unwrap()).is_err());
    }
}
