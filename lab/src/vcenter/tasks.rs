//! Tasks (VSPHERE.md §A.5): `task-N` records readable through the PropertyCollector and
//! one named worker thread, `vcenter-tasks`, that runs their work in order. A task is
//! `queued` until the worker takes it, then `running` with progress, then `success` or
//! `error`; the pauses between the steps make the asynchrony observable, as on vCenter.
//! Task records live in memory only: a restarted server has no tasks.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fault::Fault;
use super::time::now_xsd;
use super::value::Val;

/// `TaskInfo.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskState {
    Queued,
    Running,
    Success,
    Error,
}

impl TaskState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Success => "success",
            Self::Error => "error",
        }
    }
}

/// One task.
#[derive(Debug, Clone)]
pub(crate) struct TaskRecord {
    pub key: String,
    pub method: &'static str,
    pub entity: (String, String),
    pub entity_name: String,
    pub user: String,
    pub state: TaskState,
    pub progress: Option<u8>,
    pub result: Option<Val>,
    pub error: Option<Fault>,
    pub queue_time: String,
    pub start_time: Option<String>,
    pub complete_time: Option<String>,
}

impl TaskRecord {
    /// `TaskInfo.descriptionId`: the entity type and the method in lower camel case
    /// without `_Task`. That is vCenter's and vcsim's spelling for most methods, e.g.
    /// `VirtualMachine.createSnapshot` (the one the agent reads), not for all
    /// (`PowerOnVM_Task` is `VirtualMachine.powerOn` there, `powerOnVM` here).
    pub(crate) fn description_id(&self) -> String {
        let method = self.method.strip_suffix("_Task").unwrap_or(self.method);
        let mut chars = method.chars();
        let first = chars.next().map(|c| c.to_ascii_lowercase());
        format!(
            "{}.{}{}",
            self.entity.0,
            first.map(String::from).unwrap_or_default(),
            chars.as_str()
        )
    }

    /// `TaskInfo`.
    pub(crate) fn info(&self) -> Val {
        let mut f: Vec<(&str, Val)> = vec![
            ("key", Val::str(&self.key)),
            ("task", Val::moref("Task", &self.key)),
            ("descriptionId", Val::str(self.description_id())),
            ("entity", Val::moref(&self.entity.0, &self.entity.1)),
            ("entityName", Val::str(&self.entity_name)),
            (
                "state",
                Val::Enum("TaskInfoState", self.state.as_str().into()),
            ),
            ("cancelled", Val::Bool(false)),
            ("cancelable", Val::Bool(false)),
        ];
        if let Some(e) = &self.error {
            f.push((
                "error",
                Val::Raw("LocalizedMethodFault".into(), e.localized_fields()),
            ));
        }
        if let Some(r) = &self.result {
            f.push(("result", Val::Any(Box::new(r.clone()))));
        }
        if let Some(p) = self.progress.filter(|_| self.state == TaskState::Running) {
            f.push(("progress", Val::Int(i64::from(p))));
        }
        f.push((
            "reason",
            Val::obj("TaskReasonUser", vec![("userName", Val::str(&self.user))]),
        ));
        f.push(("queueTime", Val::Time(self.queue_time.clone())));
        if let Some(t) = &self.start_time {
            f.push(("startTime", Val::Time(t.clone())));
        }
        if let Some(t) = &self.complete_time {
            f.push(("completeTime", Val::Time(t.clone())));
        }
        f.push(("eventChainId", Val::Int(0)));
        Val::obj("TaskInfo", f)
    }
}

/// Reports progress from inside a task's work.
#[derive(Debug)]
pub(crate) struct Progress {
    table: Arc<Mutex<HashMap<String, TaskRecord>>>,
    key: String,
}

impl Progress {
    /// Sets the percentage.
    pub(crate) fn set(&self, percent: u8) {
        if let Ok(mut t) = self.table.lock()
            && let Some(r) = t.get_mut(&self.key)
        {
            r.progress = Some(percent.min(100));
        }
    }
}

/// A task's work: runs on the worker thread; returns the task's `result`.
pub(crate) type Work = Box<dyn FnOnce(&Progress) -> Result<Option<Val>, Fault> + Send>;

/// The task table and its worker.
#[derive(Debug, Clone)]
pub(crate) struct Tasks {
    table: Arc<Mutex<HashMap<String, TaskRecord>>>,
    next: Arc<Mutex<u64>>,
    tx: mpsc::Sender<(String, Work)>,
}

impl Tasks {
    /// Starts the worker thread; `step` is the pause between task states.
    pub(crate) fn start(step: Duration) -> std::io::Result<Self> {
        let table: Arc<Mutex<HashMap<String, TaskRecord>>> = Arc::default();
        let (tx, rx) = mpsc::channel::<(String, Work)>();
        let t = Arc::clone(&table);
        std::thread::Builder::new()
            .name("vcenter-tasks".into())
            .spawn(move || {
                while let Ok((key, work)) = rx.recv() {
                    run_one(&t, &key, work, step);
                }
            })?;
        Ok(Self {
            table,
            next: Arc::new(Mutex::new(1)),
            tx,
        })
    }

    /// Queues `work` as a new task on `entity`; returns its moref value.
    pub(crate) fn submit(
        &self,
        method: &'static str,
        entity: (String, String),
        entity_name: String,
        user: String,
        work: Work,
    ) -> String {
        let key = self.add_external(method, entity, entity_name, user);
        if self.tx.send((key.clone(), work)).is_err() {
            finish(
                &self.table,
                &key,
                Err(Fault::system_error("task worker stopped")),
            );
        }
        key
    }

    /// Drops a task from the table, as a restarted vCenter has (test fault injection).
    pub(crate) fn forget(&self, key: &str) {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    /// Adds a queued task whose work runs elsewhere (the Supervisor's own worker); the
    /// owner drives it with [`Self::start_running`], [`Self::progress`] and
    /// [`Self::complete`].
    pub(crate) fn add_external(
        &self,
        method: &'static str,
        entity: (String, String),
        entity_name: String,
        user: String,
    ) -> String {
        let key = {
            let mut n = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let k = format!("task-{n}");
            *n += 1;
            k
        };
        let record = TaskRecord {
            key: key.clone(),
            method,
            entity,
            entity_name,
            user,
            state: TaskState::Queued,
            progress: None,
            result: None,
            error: None,
            queue_time: now_xsd(),
            start_time: None,
            complete_time: None,
        };
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone(), record);
        key
    }

    /// Marks an external task running (progress 0).
    pub(crate) fn start_running(&self, key: &str) {
        if let Ok(mut t) = self.table.lock()
            && let Some(r) = t.get_mut(key)
        {
            r.state = TaskState::Running;
            r.progress = Some(0);
            r.start_time = Some(now_xsd());
        }
    }

    /// The progress handle of a task.
    pub(crate) fn progress(&self, key: &str) -> Progress {
        Progress {
            table: Arc::clone(&self.table),
            key: key.to_owned(),
        }
    }

    /// Ends an external task.
    pub(crate) fn complete(&self, key: &str, result: Result<Option<Val>, Fault>) {
        finish(&self.table, key, result);
    }

    /// Every task record, by key.
    pub(crate) fn all(&self) -> Vec<TaskRecord> {
        let mut v: Vec<TaskRecord> = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|r| {
            r.key
                .trim_start_matches("task-")
                .parse::<u64>()
                .unwrap_or(0)
        });
        v
    }

    /// A task's record.
    pub(crate) fn get(&self, key: &str) -> Option<TaskRecord> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }
}

fn run_one(table: &Arc<Mutex<HashMap<String, TaskRecord>>>, key: &str, work: Work, step: Duration) {
    std::thread::sleep(step);
    if let Ok(mut t) = table.lock()
        && let Some(r) = t.get_mut(key)
    {
        r.state = TaskState::Running;
        r.progress = Some(0);
        r.start_time = Some(now_xsd());
    }
    std::thread::sleep(step);
    let progress = Progress {
        table: Arc::clone(table),
        key: key.to_owned(),
    };
    progress.set(10);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&progress)))
        .unwrap_or_else(|_| Err(Fault::system_error("task panicked")));
    if result.is_ok() {
        progress.set(90);
        std::thread::sleep(step);
    }
    finish(table, key, result);
}

fn finish(
    table: &Arc<Mutex<HashMap<String, TaskRecord>>>,
    key: &str,
    result: Result<Option<Val>, Fault>,
) {
    if let Ok(mut t) = table.lock()
        && let Some(r) = t.get_mut(key)
    {
        r.complete_time = Some(now_xsd());
        match result {
            Ok(v) => {
                r.state = TaskState::Success;
                r.progress = Some(100);
                r.result = v;
            }
            Err(f) => {
                r.state = TaskState::Error;
                r.error = Some(f);
            }
        }
    }
}
