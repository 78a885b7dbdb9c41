//! The job queue: every job (API or scheduler) is persisted in the catalog
//! (`queue_jobs`), then waits here until one of `limit` slots is free; among queued jobs
//! the highest priority goes first, then the oldest. The engine's own per-host and
//! per-datastore limits apply inside each job.
//!
//! - **Restart.** At start, jobs the catalog still marks running belonged to a daemon that
//!   died: they become `interrupted` (the engine's reconciler undoes their side effects
//!   before the next backup, and `serve` runs it at start-up); queued jobs resume.
//! - **Events.** Each job keeps its events (JSON) and broadcasts new ones, so an SSE
//!   client sees the whole story from the start and then follows it live, ending with the
//!   job itself once it has ended.
//! - **Stepping out.** A running job that waits with nothing to do (for a VM another job
//!   holds, for the end of a blackout window) gives its slot up through its [`JobSlot`],
//!   so a queued job can use it meanwhile; when it goes on it takes the next free slot,
//!   ahead of every queued job. It still counts as running (shutdown waits for it).
//! - **Threads.** Async only; catalog calls go through `spawn_blocking` (short calls to the
//!   `catalog` thread). The job body decides where its own blocking work runs.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use plugin_api::types::{Job, JobKind, JobState, Progress};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::repo::CatalogHandle;
use crate::repo::catalog::{CatalogError, QueueJob, QueueUpdate};

/// Events kept per job: beyond this, the progress events so far are thinned to the last
/// of each subject (see [`thin_history`]).
const HISTORY_LIMIT: usize = 10_000;

/// What a progress event reports on (`disk_progress` per VM and disk, `verify_progress`),
/// `None` for every other event.
fn progress_subject(event: &serde_json::Value) -> Option<String> {
    match event.get("event")?.as_str()? {
        "disk_progress" => Some(format!(
            "disk {} {}",
            event.get("vm").unwrap_or(&serde_json::Value::Null),
            event.get("disk").unwrap_or(&serde_json::Value::Null)
        )),
        "verify_progress" => Some("verify".into()),
        _ => None,
    }
}

/// Once a job has ended, its history keeps every other event but only the last progress
/// event of each subject: a backup emits one per chunk, and the daemon keeps the history
/// of every finished job for late subscribers (thousands of events each, for good).
fn thin_history(history: &mut Vec<Arc<serde_json::Value>>) {
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, e) in history.iter().enumerate() {
        if let Some(subject) = progress_subject(e) {
            last.insert(subject, i);
        }
    }
    let mut i = 0;
    history.retain(|e| {
        let keep = progress_subject(e).is_none_or(|s| last.get(&s) == Some(&i));
        i += 1;
        keep
    });
    history.shrink_to_fit();
}

/// How a job body ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `Succeeded`, `Failed` or `Cancelled`.
    pub state: JobState,
    /// Why it failed.
    pub error: Option<String>,
    /// The report.
    pub result: Option<serde_json::Value>,
}

/// What a job body gets.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// Job id.
    pub id: String,
    /// Kind.
    pub kind: JobKind,
    /// The request as submitted.
    pub request: serde_json::Value,
    /// `api` or `schedule:<policy>`.
    pub origin: String,
    /// Cancelled by `POST /v1/jobs/{id}/cancel` or shutdown.
    pub cancel: CancellationToken,
    /// Where the body reports its events.
    pub events: EventSink,
    /// The job's slot, which the body gives up while it waits with nothing to do.
    pub slot: JobSlot,
}

/// A boxed future of a job body.
pub type BodyFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Runs one job (the backup engine in the daemon; a light body in tests).
pub trait JobBody: Send + Sync + 'static {
    /// Run the job to its end.
    fn run(&self, ctx: RunContext) -> BodyFuture;

    /// Whether a queued job of `origin` may start now (a scheduled run inside its policy's
    /// blackout window may not); the queue asks again at least every
    /// [`RECHECK_EVERY`]. Called with the queue's lock held: answer quickly.
    fn may_start(&self, _origin: &str) -> bool {
        true
    }
}

/// How often the dispatcher looks again at queued jobs that could not start.
pub const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// An item of a job's event stream.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// An engine event.
    Event(Arc<serde_json::Value>),
    /// The job ended.
    End(Box<Job>),
}

/// A job's events so far, the job if it already ended, and a receiver for what follows.
pub type Subscription = (
    Vec<Arc<serde_json::Value>>,
    Option<Job>,
    broadcast::Receiver<StreamItem>,
);

/// Totals for `/v1/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Bytes read from disks (whole chunks).
    pub bytes_read: u64,
    /// Bytes of new chunks written.
    pub bytes_written: u64,
    /// Finished jobs' durations, seconds.
    pub duration_seconds_sum: f64,
    /// Finished jobs.
    pub duration_count: u64,
    /// VMs that failed inside jobs.
    pub vm_failures: u64,
}

struct Entry {
    job: QueueJob,
    progress: Progress,
    disks: HashMap<String, (u64, u64)>,
    cancel: CancellationToken,
    /// Cancelled by the daemon's shutdown, not by a client: it ends `interrupted`.
    stopped: bool,
    /// Running without a slot (see [`JobSlot`]).
    away: bool,
    history: Vec<Arc<serde_json::Value>>,
    /// Live events for followers, while the job has not ended (a finished job's followers
    /// get its history and its end; 1,024 slots of a channel per finished job would add
    /// up over months of jobs).
    tx: Option<broadcast::Sender<StreamItem>>,
}

struct State {
    jobs: BTreeMap<String, Entry>,
    /// Jobs started and not ended, `away` ones included.
    running: usize,
    /// Running jobs that gave their slot up; the slots in use are `running - away`.
    away: usize,
    /// Away jobs that want a slot back: they come before every queued job.
    returning: usize,
    counters: Counters,
    /// Shutting down: no job starts any more.
    stopping: bool,
}

struct Inner {
    catalog: CatalogHandle,
    body: Arc<dyn JobBody>,
    limit: usize,
    state: Mutex<State>,
    /// Wakes the dispatcher.
    wake: Notify,
    /// Wakes jobs that want their slot back, when a slot may have come free.
    slot_freed: Notify,
    peak: AtomicUsize,
    /// How often queued jobs that could not start are looked at again.
    recheck: std::time::Duration,
}

/// Hands a job's events to the queue (callable from any thread; never blocks on I/O).
#[derive(Clone)]
pub struct EventSink {
    inner: Arc<Inner>,
    id: String,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink").field("job", &self.id).finish()
    }
}

/// The queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("limit", &self.inner.limit)
            .finish()
    }
}

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A blocking call failed.
    #[error("catalog call failed: {0}")]
    Join(String),
    /// The idempotency key belongs to a job made from another request.
    #[error(
        "idempotency key {key:?} was used for another request (job {job}); a retry must \
         repeat the request exactly, a new request needs a new key"
    )]
    KeyReused {
        /// The key.
        key: String,
        /// The job it names.
        job: String,
    },
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn state_of(s: &str) -> JobState {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).unwrap_or(JobState::Unknown)
}

fn state_str(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Interrupted => "interrupted",
        JobState::Unknown => "failed",
    }
}

fn kind_str(k: JobKind) -> &'static str {
    match k {
        JobKind::Backup => "backup",
        JobKind::Restore => "restore",
        JobKind::Verify => "verify",
        JobKind::Unknown => "unknown",
    }
}

impl Entry {
    fn new(job: QueueJob) -> Self {
        let tx = (!state_of(&job.state).is_final()).then(|| broadcast::channel(1024).0);
        Self {
            job,
            progress: Progress::default(),
            disks: HashMap::new(),
            cancel: CancellationToken::new(),
            stopped: false,
            away: false,
            history: Vec::new(),
            tx,
        }
    }

    fn view(&self) -> Job {
        let j = &self.job;
        Job {
            id: j.id.clone(),
            kind: serde_json::from_value(serde_json::Value::String(j.kind.clone()))
                .unwrap_or(JobKind::Unknown),
            state: state_of(&j.state),
            priority: j.priority,
            idempotency_key: j.idempotency_key.clone(),
            origin: j.origin.clone(),
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            progress: self.progress.clone(),
            error: j.error.clone(),
            request: j.request.clone(),
            result: j.result.clone(),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CatalogError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| QueueError::Join(e.to_string()))?
        .map_err(QueueError::from)
}

impl State {
    /// Slots taken: running jobs that did not step out.
    fn slots_in_use(&self) -> usize {
        self.running.saturating_sub(self.away)
    }
}

/// A running job's place among the `limit` that run at once (see the module doc); it
/// reports through the job's events.
#[derive(Clone, Debug)]
pub struct JobSlot(EventSink);

impl JobSlot {
    /// Gives the slot up (the job waits with nothing to do): a queued job may start in it.
    /// Once away, the job ends without a slot or takes one back with [`JobSlot::step_in`].
    pub fn step_out(&self) {
        {
            let mut st = self.0.inner.lock();
            let Some(entry) = st.jobs.get_mut(&self.0.id) else {
                return;
            };
            if entry.away || entry.job.state != "running" {
                return;
            }
            entry.away = true;
            st.away += 1;
        }
        tracing::debug!(job = %self.0.id, "the job gives its slot up while it waits");
        self.0.inner.slot_freed.notify_waiters();
        self.0.inner.wake.notify_one();
    }

    /// Takes a slot back after [`JobSlot::step_out`], waiting for one to come free; no
    /// queued job starts meanwhile. Dropped before it returns (the job was cancelled while
    /// waiting), the job stays away and queued jobs may start again.
    pub async fn step_in(&self) {
        /// Takes the job off `returning` however the wait ends.
        struct Returning<'a>(&'a Inner);
        impl Drop for Returning<'_> {
            fn drop(&mut self) {
                let mut st = self.0.lock();
                st.returning = st.returning.saturating_sub(1);
                drop(st);
                self.0.wake.notify_one();
            }
        }
        {
            let mut st = self.0.inner.lock();
            if !st.jobs.get(&self.0.id).is_some_and(|e| e.away) {
                return;
            }
            st.returning += 1;
        }
        let _returning = Returning(&self.0.inner);
        let mut announced = false;
        loop {
            let freed = self.0.inner.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut st = self.0.inner.lock();
                if st.slots_in_use() < self.0.inner.limit {
                    if st
                        .jobs
                        .get_mut(&self.0.id)
                        .is_some_and(|e| std::mem::take(&mut e.away))
                    {
                        st.away = st.away.saturating_sub(1);
                    }
                    self.0
                        .inner
                        .peak
                        .fetch_max(st.slots_in_use(), Ordering::SeqCst);
                    tracing::debug!(job = %self.0.id, "the job has its slot back");
                    return;
                }
            }
            if !announced {
                announced = true;
                self.0.emit(serde_json::json!({
                    "event": "waiting_for_slot",
                    "reason": format!(
                        "all {} concurrent_jobs slots are taken; the job goes on in the next \
                         one to come free, before any queued job",
                        self.0.inner.limit
                    ),
                }));
            }
            freed.await;
        }
    }
}

impl crate::engine::Slot for JobSlot {
    fn step_out(&self) {
        JobSlot::step_out(self);
    }

    fn step_in(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(JobSlot::step_in(self))
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl EventSink {
    /// Record and broadcast one event; updates the job's progress and the counters.
    pub fn emit(&self, event: serde_json::Value) {
        let mut st = self.inner.lock();
        let State { jobs, counters, .. } = &mut *st;
        let Some(entry) = jobs.get_mut(&self.id) else {
            return;
        };
        let u = |k: &str| {
            event
                .get(k)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        let disk_id = || {
            format!(
                "{}/{}",
                event.get("vm").and_then(|v| v.as_str()).unwrap_or_default(),
                event
                    .get("disk")
                    .map(ToString::to_string)
                    .unwrap_or_default()
            )
        };
        let name = event
            .get("event")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        match name.as_str() {
            "job_started" => entry.progress.vms_total = u("vms"),
            "disk_started" => {
                entry.disks.insert(disk_id(), (0, u("bytes_total")));
            }
            "disk_progress" => {
                entry
                    .disks
                    .insert(disk_id(), (u("bytes_done"), u("bytes_total")));
            }
            "disk_finished" => {
                let total = entry.disks.get(&disk_id()).map_or(0, |d| d.1);
                entry.disks.insert(disk_id(), (total, total));
                counters.bytes_read += u("bytes_read");
                counters.bytes_written += u("bytes_stored");
            }
            "verify_progress" => {
                entry.progress.chunks_done = u("chunks_done");
                entry.progress.chunks_total = u("chunks_total");
            }
            "vm_finished" => entry.progress.vms_done += 1,
            "vm_failed" => {
                entry.progress.vms_done += 1;
                // A VM cut off by the job's cancellation (a client's, or the shutdown's)
                // did not fail.
                if !entry.cancel.is_cancelled() {
                    counters.vm_failures += 1;
                }
            }
            _ => {}
        }
        entry.progress.bytes_done = entry.disks.values().map(|d| d.0).sum();
        entry.progress.bytes_total = entry.disks.values().map(|d| d.1).sum();
        let event = Arc::new(event);
        let progress = matches!(name.as_str(), "disk_progress" | "verify_progress");
        // Full: the progress so far goes down to the last event of each disk, so that the
        // newest progress is kept rather than the oldest.
        if progress && entry.history.len() >= HISTORY_LIMIT {
            thin_history(&mut entry.history);
        }
        if entry.history.len() < HISTORY_LIMIT || !progress {
            entry.history.push(Arc::clone(&event));
        }
        if let Some(tx) = &entry.tx {
            let _ = tx.send(StreamItem::Event(event));
        }
    }
}

/// A new job to submit.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Kind.
    pub kind: JobKind,
    /// The request JSON.
    pub request: serde_json::Value,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Priority (higher first).
    pub priority: i32,
    /// `api` or `schedule:<policy>`.
    pub origin: String,
}

impl Queue {
    /// Loads the catalog's jobs (marking running ones interrupted, keeping queued ones) and
    /// starts dispatching with at most `limit` jobs at once. Call inside a tokio runtime.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn start(
        catalog: CatalogHandle,
        body: Arc<dyn JobBody>,
        limit: usize,
    ) -> Result<(Self, Vec<String>), QueueError> {
        Self::start_with_recheck(catalog, body, limit, RECHECK_EVERY).await
    }

    /// [`Queue::start`], looking again at jobs that could not start every `recheck`.
    pub(crate) async fn start_with_recheck(
        catalog: CatalogHandle,
        body: Arc<dyn JobBody>,
        limit: usize,
        recheck: std::time::Duration,
    ) -> Result<(Self, Vec<String>), QueueError> {
        let c = catalog.clone();
        let (interrupted, jobs) = blocking(move || {
            let interrupted = c.queue_interrupt_running(now())?;
            Ok((interrupted, c.queue_list()?))
        })
        .await?;
        let state = State {
            jobs: jobs
                .into_iter()
                .map(|j| (j.id.clone(), Entry::new(j)))
                .collect(),
            running: 0,
            away: 0,
            returning: 0,
            counters: Counters::default(),
            stopping: false,
        };
        let inner = Arc::new(Inner {
            catalog,
            body,
            limit: limit.max(1),
            state: Mutex::new(state),
            wake: Notify::new(),
            slot_freed: Notify::new(),
            peak: AtomicUsize::new(0),
            recheck,
        });
        let q = Self { inner };
        let d = q.clone();
        tokio::spawn(async move { d.dispatch().await });
        Ok((q, interrupted))
    }

    /// Persists and queues a job; a known idempotency key returns the job it first created.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn submit(&self, s: Submission) -> Result<(Job, bool), QueueError> {
        let job = QueueJob {
            id: uuid::Uuid::new_v4().to_string(),
            kind: kind_str(s.kind).to_owned(),
            idempotency_key: s.idempotency_key,
            priority: s.priority,
            origin: s.origin,
            request: s.request,
            state: "queued".into(),
            created_at: now(),
            seq: 0,
            started_at: None,
            finished_at: None,
            error: None,
            result: None,
        };
        let c = self.inner.catalog.clone();
        let (kind, request) = (job.kind.clone(), job.request.clone());
        let (stored, new) = blocking(move || c.queue_insert(job)).await?;
        if !new && (stored.kind != kind || stored.request != request) {
            return Err(QueueError::KeyReused {
                key: stored.idempotency_key.clone().unwrap_or_default(),
                job: stored.id,
            });
        }
        let view = {
            let mut st = self.inner.lock();
            match st.jobs.get(&stored.id) {
                Some(entry) => entry.view(),
                // A job the key found that the history's trimming has just forgotten: it
                // is not brought back into memory (it is gone from the catalog too).
                None if !new => Entry::new(stored).view(),
                None => st
                    .jobs
                    .entry(stored.id.clone())
                    .or_insert_with(|| Entry::new(stored))
                    .view(),
            }
        };
        if new {
            self.inner.wake.notify_one();
        }
        Ok((view, new))
    }

    /// Whether a job the queue remembers (not trimmed from its history) was made with
    /// idempotency key `key`: a request carrying it is a retry, answered with that job
    /// whatever has changed since (its restore point removed, say).
    #[must_use]
    pub fn knows_key(&self, key: &str) -> bool {
        let st = self.inner.lock();
        st.jobs
            .values()
            .any(|e| e.job.idempotency_key.as_deref() == Some(key))
    }

    /// Every job, newest first.
    #[must_use]
    pub fn list(&self) -> Vec<Job> {
        let st = self.inner.lock();
        let mut jobs: Vec<(i64, Job)> = st.jobs.values().map(|e| (e.job.seq, e.view())).collect();
        jobs.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        jobs.into_iter().map(|(_, j)| j).collect()
    }

    /// Forgets the jobs that ended more than `keep` ago, in the catalog and here; returns
    /// how many. Their idempotency keys are forgotten with them.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn forget_ended(&self, keep: std::time::Duration) -> Result<usize, QueueError> {
        let before = now() - i64::try_from(keep.as_secs()).unwrap_or(i64::MAX);
        let c = self.inner.catalog.clone();
        let ids = blocking(move || c.queue_forget_ended(before)).await?;
        let mut st = self.inner.lock();
        for id in &ids {
            st.jobs.remove(id);
        }
        Ok(ids.len())
    }

    /// One job.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<Job> {
        self.inner.lock().jobs.get(id).map(Entry::view)
    }

    /// Cancels a queued job (at once) or a running one (its body stops and cleans up).
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn cancel(&self, id: &str) -> Result<Option<Job>, QueueError> {
        let (cancelled_queued, cancelled_running) = {
            let mut st = self.inner.lock();
            let Some(entry) = st.jobs.get_mut(id) else {
                return Ok(None);
            };
            match entry.job.state.as_str() {
                "queued" => {
                    // Out of the dispatcher's reach at once; announced once recorded.
                    entry.job.state = "cancelled".into();
                    entry.job.finished_at = Some(now());
                    (true, false)
                }
                "running" => {
                    // A client's cancel wins over a shutdown's: the job ends `cancelled`
                    // and is not run again.
                    entry.stopped = false;
                    entry.cancel.cancel();
                    (false, true)
                }
                _ => (false, false),
            }
        };
        if cancelled_running {
            // Recorded at once: should the agent stop (or crash) before the job has cleaned
            // up, the next start finds it cancelled, not interrupted (a schedule would run
            // an interrupted job again). The catalog records it only while the job is
            // `running` there: one that ended meanwhile keeps its end.
            let c = self.inner.catalog.clone();
            let id2 = id.to_owned();
            if let Err(e) = blocking(move || c.queue_request_cancel(&id2)).await {
                tracing::warn!(job = %id, error = %e, "recording the cancel in the catalog");
            }
        }
        if cancelled_queued {
            let c = self.inner.catalog.clone();
            let id2 = id.to_owned();
            let recorded = blocking(move || {
                c.queue_update(
                    &id2,
                    QueueUpdate {
                        state: "cancelled".into(),
                        started_at: None,
                        finished_at: Some(now()),
                        error: None,
                        result: None,
                    },
                )
            })
            .await;
            let mut st = self.inner.lock();
            if let Some(entry) = st.jobs.get_mut(id) {
                if recorded.is_ok() {
                    if let Some(tx) = entry.tx.take() {
                        let _ = tx.send(StreamItem::End(Box::new(entry.view())));
                    }
                } else {
                    // Still queued in the catalog, where a restart would find it: queued
                    // here too, and the caller gets the error.
                    entry.job.state = "queued".into();
                    entry.job.finished_at = None;
                }
            }
            drop(st);
            self.inner.wake.notify_one();
            recorded?;
        }
        Ok(self.get(id))
    }

    /// The events so far and a receiver for the rest; `Some(job)` when it already ended.
    #[must_use]
    pub fn subscribe(&self, id: &str) -> Option<Subscription> {
        let st = self.inner.lock();
        let e = st.jobs.get(id)?;
        let view = e.view();
        let ended = view.state.is_final().then_some(view);
        let rx = match &e.tx {
            Some(tx) => tx.subscribe(),
            // Ended: the caller has everything; the receiver only says so.
            None => broadcast::channel(1).1,
        };
        Some((e.history.clone(), ended, rx))
    }

    /// (queued, running) jobs now.
    #[must_use]
    pub fn figures(&self) -> (usize, usize) {
        let st = self.inner.lock();
        let queued = st.jobs.values().filter(|e| e.job.state == "queued").count();
        (queued, st.running)
    }

    /// The most slots ever in use at once (jobs running and not stepped out).
    #[must_use]
    pub fn peak(&self) -> usize {
        self.inner.peak.load(Ordering::SeqCst)
    }

    /// The limit.
    #[must_use]
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Metrics counters and the number of jobs in each state.
    #[must_use]
    pub fn counters(&self) -> (Counters, BTreeMap<String, u64>) {
        let st = self.inner.lock();
        let mut by_state = BTreeMap::new();
        for s in [
            "queued",
            "running",
            "succeeded",
            "failed",
            "cancelled",
            "interrupted",
        ] {
            by_state.insert(s.to_owned(), 0);
        }
        for e in st.jobs.values() {
            *by_state.entry(e.job.state.clone()).or_insert(0) += 1;
        }
        (st.counters.clone(), by_state)
    }

    /// Shutdown: start no job any more and cancel the running ones (their bodies clean up
    /// and end `interrupted`). Queued jobs stay queued, in the catalog too, and run after
    /// the next start: a restart loses none, and their idempotency keys still find them.
    pub fn shut_down(&self) {
        let mut st = self.inner.lock();
        st.stopping = true;
        for e in st
            .jobs
            .values_mut()
            .filter(|e| e.job.state == "running" && !e.cancel.is_cancelled())
        {
            e.stopped = true;
            e.cancel.cancel();
        }
        // A queued job does not run before the agent stops (it runs after its next
        // start): its followers' event streams end now, without an `end`, or the server's
        // graceful stop would wait for them for ever.
        for e in st.jobs.values_mut().filter(|e| e.job.state == "queued") {
            e.tx = None;
        }
    }

    /// Picks the next job if a slot is free, marking it running.
    fn take_next(&self) -> Option<RunContext> {
        let mut st = self.inner.lock();
        if st.stopping || st.slots_in_use() + st.returning >= self.inner.limit {
            return None;
        }
        let id = st
            .jobs
            .values()
            .filter(|e| e.job.state == "queued" && self.inner.body.may_start(&e.job.origin))
            .max_by_key(|e| (e.job.priority, std::cmp::Reverse(e.job.seq)))
            .map(|e| e.job.id.clone())?;
        st.running += 1;
        self.inner
            .peak
            .fetch_max(st.slots_in_use(), Ordering::SeqCst);
        let entry = st.jobs.get_mut(&id)?;
        entry.job.state = "running".into();
        entry.job.started_at = Some(now());
        let events = EventSink {
            inner: Arc::clone(&self.inner),
            id: id.clone(),
        };
        Some(RunContext {
            id,
            kind: entry.view().kind,
            request: entry.job.request.clone(),
            origin: entry.job.origin.clone(),
            cancel: entry.cancel.clone(),
            slot: JobSlot(events.clone()),
            events,
        })
    }

    async fn dispatch(self) {
        loop {
            while let Some(ctx) = self.take_next() {
                let q = self.clone();
                tokio::spawn(async move { q.run(ctx).await });
            }
            // Woken by a submission or a job's end, or after a while for jobs that could not
            // start yet (a blackout window).
            let _ = tokio::time::timeout(self.inner.recheck, self.inner.wake.notified()).await;
        }
    }

    async fn persist(&self, id: &str, update: QueueUpdate) {
        let c = self.inner.catalog.clone();
        let id2 = id.to_owned();
        if let Err(e) = blocking(move || c.queue_update(&id2, update)).await {
            tracing::error!(job = %id, error = %e, "recording the job's state in the catalog");
        }
    }

    async fn run(self, ctx: RunContext) {
        let id = ctx.id.clone();
        let started = std::time::Instant::now();
        self.persist(
            &id,
            QueueUpdate {
                state: "running".into(),
                started_at: Some(now()),
                finished_at: None,
                error: None,
                result: None,
            },
        )
        .await;
        // A client's cancel that came between the dispatch and the line above found the
        // catalog saying `queued` and recorded nothing: recorded now, so that a crash
        // before the job has cleaned up leaves it cancelled, not interrupted.
        let cancelled_early = self
            .inner
            .lock()
            .jobs
            .get(&id)
            .is_some_and(|e| e.cancel.is_cancelled() && !e.stopped);
        if cancelled_early {
            let c = self.inner.catalog.clone();
            let id2 = id.clone();
            if let Err(e) = blocking(move || c.queue_request_cancel(&id2)).await {
                tracing::warn!(job = %id, error = %e, "recording the cancel in the catalog");
            }
        }
        tracing::info!(job = %id, kind = ?ctx.kind, origin = %ctx.origin, "job started");
        let body = Arc::clone(&self.inner.body);
        // A panicking body fails its job, never the daemon.
        let mut outcome = match tokio::spawn(body.run(ctx)).await {
            Ok(o) => o,
            Err(e) => Outcome {
                state: JobState::Failed,
                error: Some(format!("the job panicked: {e}")),
                result: None,
            },
        };
        // Stopped by the daemon's shutdown rather than by a client: interrupted, as a job
        // running when the daemon died is (a scheduled run is run again at the next start).
        // A body cut off mid-data may report the cancellation as a failure; unless it got
        // to the end anyway, the shutdown is the cause, and the body's words stay.
        if outcome.state != JobState::Succeeded
            && self.inner.lock().jobs.get(&id).is_some_and(|e| e.stopped)
        {
            outcome.state = JobState::Interrupted;
            outcome.error = Some(match outcome.error.take() {
                Some(e) => format!("the agent stopped while the job ran: {e}"),
                None => "the agent stopped while the job ran".into(),
            });
        }
        let finished = now();
        self.persist(
            &id,
            QueueUpdate {
                state: state_str(outcome.state).into(),
                started_at: None,
                finished_at: Some(finished),
                error: outcome.error.clone(),
                result: outcome.result.clone(),
            },
        )
        .await;
        {
            let mut st = self.inner.lock();
            st.running = st.running.saturating_sub(1);
            // A job that ended away (cancelled while it waited) held no slot.
            if st
                .jobs
                .get_mut(&id)
                .is_some_and(|e| std::mem::take(&mut e.away))
            {
                st.away = st.away.saturating_sub(1);
            }
            st.counters.duration_seconds_sum += started.elapsed().as_secs_f64();
            st.counters.duration_count += 1;
            if let Some(e) = st.jobs.get_mut(&id) {
                e.job.state = state_str(outcome.state).into();
                e.job.finished_at = Some(finished);
                e.job.error = outcome.error.clone();
                e.job.result = outcome.result;
                thin_history(&mut e.history);
                if let Some(tx) = e.tx.take() {
                    let _ = tx.send(StreamItem::End(Box::new(e.view())));
                }
            }
        }
        tracing::info!(job = %id, state = state_str(outcome.state), error = outcome.error.as_deref().unwrap_or(""), "job ended");
        self.inner.slot_freed.notify_waiters();
        self.inner.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_finished_jobs_history_keeps_its_milestones_and_last_progress() {
        use serde_json::json;
        let mut history: Vec<Arc<serde_json::Value>> = vec![Arc::new(
            json!({"event": "disk_started", "vm": "vm-1", "disk": 2000}),
        )];
        for done in 1..=500u64 {
            for (vm, disk) in [("vm-1", 2000), ("vm-1", 2001), ("vm-2", 2000)] {
                history.push(Arc::new(
                    json!({"event": "disk_progress", "vm": vm, "disk": disk, "bytes_done": done}),
                ));
            }
        }
        history.push(Arc::new(
            json!({"event": "verify_progress", "chunks_done": 1}),
        ));
        history.push(Arc::new(
            json!({"event": "verify_progress", "chunks_done": 2}),
        ));
        history.push(Arc::new(json!({"event": "vm_finished", "vm": "vm-1"})));
        thin_history(&mut history);
        let kept: Vec<String> = history
            .iter()
            .map(|e| {
                format!(
                    "{} {} {} {}",
                    e["event"], e["vm"], e["disk"], e["bytes_done"]
                )
            })
            .collect();
        assert_eq!(
            kept,
            [
                r#""disk_started" "vm-1" 2000 null"#,
                r#""disk_progress" "vm-1" 2000 500"#,
                r#""disk_progress" "vm-1" 2001 500"#,
                r#""disk_progress" "vm-2" 2000 500"#,
                r#""verify_progress" null null null"#,
                r#""vm_finished" "vm-1" null null"#,
            ]
        );
        assert_eq!(history[4]["chunks_done"], 2);
    }

    use tokio::sync::Semaphore;

    use super::*;

    /// A light job body: counts how many run at once and waits for the test's permit.
    struct Gated {
        inside: AtomicUsize,
        peak: AtomicUsize,
        release: Arc<Semaphore>,
        /// Ends the wait of a job asked to step out (`"steps_out": true`).
        back: Arc<Semaphore>,
        /// Jobs that stepped out and have their slot back.
        returned: AtomicUsize,
    }

    impl Gated {
        /// A body whose jobs wait until the test releases them.
        fn closed() -> Arc<Self> {
            Arc::new(Self {
                inside: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                release: Arc::new(Semaphore::new(0)),
                back: Arc::new(Semaphore::new(0)),
                returned: AtomicUsize::new(0),
            })
        }
    }

    impl JobBody for Arc<Gated> {
        fn run(&self, ctx: RunContext) -> BodyFuture {
            let me = Arc::clone(self);
            Box::pin(async move {
                let n = me.inside.fetch_add(1, Ordering::SeqCst) + 1;
                me.peak.fetch_max(n, Ordering::SeqCst);
                ctx.events
                    .emit(serde_json::json!({"event": "job_started", "vms": 1}));
                // A job that waits with nothing to do, as a backup for a busy VM.
                if ctx.request["steps_out"] == true {
                    ctx.slot.step_out();
                    let back = async {
                        me.back.acquire().await.unwrap().forget();
                        ctx.slot.step_in().await;
                    };
                    tokio::select! {
                        () = back => { me.returned.fetch_add(1, Ordering::SeqCst); }
                        () = ctx.cancel.cancelled() => {
                            me.inside.fetch_sub(1, Ordering::SeqCst);
                            return Outcome { state: JobState::Cancelled, error: None, result: None };
                        }
                    }
                }
                let permit = me.release.acquire().await.unwrap();
                permit.forget();
                ctx.events.emit(serde_json::json!({"event": "vm_finished"}));
                me.inside.fetch_sub(1, Ordering::SeqCst);
                // A body cut off mid-data may say so as a failure.
                if ctx.cancel.is_cancelled() && ctx.request["fails_when_cancelled"] == true {
                    return Outcome {
                        state: JobState::Failed,
                        error: Some("reading disk 2000 at 0: cancelled".into()),
                        result: None,
                    };
                }
                Outcome {
                    state: if ctx.cancel.is_cancelled() {
                        JobState::Cancelled
                    } else {
                        JobState::Succeeded
                    },
                    error: None,
                    result: Some(serde_json::json!({"n": ctx.request["n"]})),
                }
            })
        }
    }

    /// A queue running [`Gated`] bodies, `limit` at a time, over a new catalog at `db`:
    /// the catalog, its thread (the catalog closes once both are dropped), the body, the
    /// queue and the jobs it found interrupted.
    async fn gated_queue(
        db: &std::path::Path,
        limit: usize,
    ) -> (
        CatalogHandle,
        crate::repo::catalog::CatalogThread,
        Arc<Gated>,
        Queue,
        Vec<String>,
    ) {
        let (catalog, thread) = CatalogHandle::spawn(db).unwrap();
        let body = Gated::closed();
        let (q, interrupted) = Queue::start(catalog.clone(), Arc::new(Arc::clone(&body)), limit)
            .await
            .unwrap();
        (catalog, thread, body, q, interrupted)
    }

    fn submission(n: usize, priority: i32) -> Submission {
        Submission {
            kind: JobKind::Backup,
            request: serde_json::json!({ "n": n }),
            idempotency_key: Some(format!("key-{n}")),
            priority,
            origin: "api".into(),
        }
    }

    async fn wait_until(q: &Queue, running: usize) {
        // Waits (without a deadline: the test harness's own timeout applies) until the
        // dispatcher has started `running` jobs.
        wait_for(q, usize::MAX, running).await;
    }

    /// Waits until `done` jobs succeeded (any number for `usize::MAX`) and `running` run.
    async fn wait_for(q: &Queue, done: usize, running: usize) {
        let succeeded = |q: &Queue| usize::try_from(q.counters().1["succeeded"]).unwrap();
        while q.figures().1 != running || (done != usize::MAX && succeeded(q) != done) {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// A queued job whose cancel cannot be recorded stays queued (a restart would find it
    /// queued in the catalog and run it) and the caller gets the error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancel_the_catalog_refuses_leaves_the_job_queued() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("catalog.db");
        let (_catalog, _t, body, q, _) = gated_queue(&db, 1).await;
        q.submit(submission(0, 0)).await.unwrap();
        let (queued, _) = q.submit(submission(1, 0)).await.unwrap();
        wait_until(&q, 1).await;
        let other = rusqlite::Connection::open(&db).unwrap();
        other
            .execute_batch(
                "CREATE TRIGGER refuse_cancel BEFORE UPDATE ON queue_jobs
                 WHEN NEW.state = 'cancelled' BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
            )
            .unwrap();
        assert!(q.cancel(&queued.id).await.is_err());
        assert_eq!(q.get(&queued.id).unwrap().state, JobState::Queued);
        other.execute_batch("DROP TRIGGER refuse_cancel;").unwrap();
        body.release.add_permits(2);
        wait_for(&q, 2, 0).await;
        assert_eq!(q.get(&queued.id).unwrap().state, JobState::Succeeded);
    }

    /// Ended jobs beyond the history's keep go from the catalog and from memory; a job
    /// that has not ended stays, and a followed job that ended needs no live channel.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_that_ended_beyond_the_keep_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, _t, body, q, _) = gated_queue(&dir.path().join("catalog.db"), 1).await;
        let (done, _) = q.submit(submission(0, 0)).await.unwrap();
        body.release.add_permits(1);
        wait_for(&q, 1, 0).await;
        let (queued, _) = q.submit(submission(1, 0)).await.unwrap();
        wait_until(&q, 1).await;
        // The ended job still streams its history and its end.
        let (history, ended, mut rx) = q.subscribe(&done.id).unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(ended.unwrap().state, JobState::Succeeded);
        assert!(rx.recv().await.is_err());
        assert_eq!(
            q.forget_ended(std::time::Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        // A second later, with a keep of none: the ended job goes, the running one stays.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(q.forget_ended(std::time::Duration::ZERO).await.unwrap(), 1);
        assert!(q.get(&done.id).is_none());
        assert!(q.subscribe(&done.id).is_none());
        let ids: Vec<String> = q.list().into_iter().map(|j| j.id).collect();
        assert_eq!(ids, std::slice::from_ref(&queued.id));
        let stored: Vec<String> = catalog
            .queue_list()
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(stored, [queued.id]);
        body.release.add_permits(1);
        wait_for(&q, 1, 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_jobs_limit_four_none_lost_limit_never_exceeded() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, _t, body, q, interrupted) =
            gated_queue(&dir.path().join("catalog.db"), 4).await;
        assert!(interrupted.is_empty());
        for n in 0..50 {
            q.submit(submission(n, 0)).await.unwrap();
        }
        // Submitting a key again returns the same job and queues nothing.
        let (again, new) = q.submit(submission(7, 0)).await.unwrap();
        assert!(!new);
        assert_eq!(q.list().len(), 50);
        for done in 0..50 {
            let remaining = 50 - done;
            wait_for(&q, done, remaining.min(4)).await;
            let (queued, running) = q.figures();
            assert!(running <= 4);
            assert_eq!(queued + running, remaining);
            assert!(body.inside.load(Ordering::SeqCst) <= 4);
            body.release.add_permits(1);
        }
        while q.list().iter().any(|j| !j.state.is_final()) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(body.peak.load(Ordering::SeqCst), 4);
        assert_eq!(q.peak(), 4);
        let jobs = q.list();
        assert_eq!(jobs.len(), 50);
        assert!(jobs.iter().all(|j| j.state == JobState::Succeeded));
        assert!(jobs.iter().all(|j| j.progress.vms_done == 1));
        let mut ns: Vec<u64> = jobs
            .iter()
            .map(|j| j.result.as_ref().unwrap()["n"].as_u64().unwrap())
            .collect();
        ns.sort_unstable();
        assert_eq!(ns, (0..50).collect::<Vec<u64>>());
        assert_eq!(q.get(&again.id).unwrap().state, JobState::Succeeded);
        // The catalog agrees.
        let stored = catalog.queue_list().unwrap();
        assert_eq!(stored.len(), 50);
        assert!(stored.iter().all(|j| j.state == "succeeded"));
    }

    fn stepping_out(n: usize) -> Submission {
        Submission {
            request: serde_json::json!({ "n": n, "steps_out": true }),
            ..submission(n, 0)
        }
    }

    /// The state of job `id` now.
    fn state(q: &Queue, id: &str) -> JobState {
        q.get(id).unwrap().state
    }

    /// The events job `id` emitted so far.
    fn said(q: &Queue, id: &str) -> Vec<String> {
        let (history, _, _) = q.subscribe(id).unwrap();
        history
            .iter()
            .filter_map(|e| e["event"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits until `test` holds of the queue's jobs.
    async fn wait_jobs(q: &Queue, test: impl Fn(&[Job]) -> bool) {
        while !test(&q.list()) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// A job waiting with nothing to do lends its slot to a queued job, takes the next free
    /// slot when it goes on, ahead of jobs queued meanwhile, and the limit holds throughout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_steps_out_lends_its_slot_and_comes_back_first() {
        let dir = tempfile::tempdir().unwrap();
        let (_catalog, _t, body, q, _) = gated_queue(&dir.path().join("catalog.db"), 1).await;
        let (waiter, _) = q.submit(stepping_out(0)).await.unwrap();
        let (lent, _) = q.submit(submission(1, 0)).await.unwrap();
        // The waiter stepped out: the other job runs in its slot, both are running.
        wait_jobs(&q, |_| body.inside.load(Ordering::SeqCst) == 2).await;
        assert_eq!(q.figures(), (0, 2), "both count as running");

        // The waiter wants its slot back while the other job holds it: it waits, and a job
        // queued now does not start before it.
        body.back.add_permits(1);
        let (later, _) = q.submit(submission(2, 0)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(body.returned.load(Ordering::SeqCst), 0);
        assert_eq!(state(&q, &later.id), JobState::Queued);

        // The other job ends: its slot goes to the waiter, not to the queued job.
        body.release.add_permits(1);
        wait_jobs(&q, |_| body.returned.load(Ordering::SeqCst) == 1).await;
        assert_eq!(state(&q, &lent.id), JobState::Succeeded);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(state(&q, &later.id), JobState::Queued);

        body.release.add_permits(2);
        wait_for(&q, 3, 0).await;
        assert_eq!(state(&q, &waiter.id), JobState::Succeeded);
        assert_eq!(
            said(&q, &waiter.id),
            ["job_started", "waiting_for_slot", "vm_finished"]
        );
        assert_eq!(q.peak(), 1, "never more than one slot in use");
        assert_eq!(body.peak.load(Ordering::SeqCst), 2);
    }

    /// A job cancelled while away, before or while it takes its slot back, ends without
    /// one: the slots in use stay right and queued jobs start again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_cancelled_while_away_gives_no_slot_back_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (_catalog, _t, body, q, _) = gated_queue(&dir.path().join("catalog.db"), 1).await;
        // Cancelled while it waits for its slot back (another job holds it).
        let (waiter, _) = q.submit(stepping_out(0)).await.unwrap();
        let (lent, _) = q.submit(submission(1, 0)).await.unwrap();
        wait_jobs(&q, |_| body.inside.load(Ordering::SeqCst) == 2).await;
        body.back.add_permits(1);
        let (later, _) = q.submit(submission(2, 0)).await.unwrap();
        wait_jobs(&q, |_| {
            said(&q, &waiter.id).contains(&"waiting_for_slot".to_owned())
        })
        .await;
        q.cancel(&waiter.id).await.unwrap();
        wait_jobs(&q, |_| state(&q, &waiter.id) == JobState::Cancelled).await;
        assert_eq!(
            state(&q, &later.id),
            JobState::Queued,
            "the slot is still taken"
        );
        body.release.add_permits(1);
        wait_jobs(&q, |_| state(&q, &later.id) == JobState::Running).await;
        assert_eq!(state(&q, &lent.id), JobState::Succeeded);
        body.release.add_permits(1);
        wait_for(&q, 2, 0).await;

        // Cancelled while away, before it asks for its slot back.
        let (away, _) = q.submit(stepping_out(3)).await.unwrap();
        let (next, _) = q.submit(submission(4, 0)).await.unwrap();
        wait_jobs(&q, |_| state(&q, &next.id) == JobState::Running).await;
        q.cancel(&away.id).await.unwrap();
        wait_jobs(&q, |_| state(&q, &away.id) == JobState::Cancelled).await;
        body.release.add_permits(1);
        wait_for(&q, 3, 0).await;

        // One slot, as before: two more jobs run one at a time.
        q.submit(submission(5, 0)).await.unwrap();
        q.submit(submission(6, 0)).await.unwrap();
        wait_until(&q, 1).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(q.figures(), (1, 1));
        body.release.add_permits(2);
        wait_for(&q, 5, 0).await;
        assert_eq!(q.peak(), 1);
    }

    /// A job that emits more progress than the history keeps: a follower who comes late
    /// still sees each disk's newest progress (and a disk that started late), not the
    /// oldest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_jobs_history_keeps_the_newest_progress() {
        struct Chatty(Arc<Notify>, Arc<Notify>);
        impl JobBody for Chatty {
            fn run(&self, ctx: RunContext) -> BodyFuture {
                let (done, release) = (Arc::clone(&self.0), Arc::clone(&self.1));
                Box::pin(async move {
                    ctx.events
                        .emit(serde_json::json!({"event": "job_started", "vms": 1}));
                    for n in 0..=HISTORY_LIMIT as u64 + 10 {
                        ctx.events.emit(serde_json::json!({
                            "event": "disk_progress", "vm": "vm-1", "disk": 2000,
                            "bytes_done": n, "bytes_total": 1u64 << 40,
                        }));
                    }
                    ctx.events.emit(serde_json::json!({
                        "event": "disk_progress", "vm": "vm-1", "disk": 2001,
                        "bytes_done": 7, "bytes_total": 8,
                    }));
                    done.notify_one();
                    // Runs on until released: the follower reads a running job's history.
                    release.notified().await;
                    Outcome {
                        state: JobState::Succeeded,
                        error: None,
                        result: None,
                    }
                })
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let (catalog, _t) = CatalogHandle::spawn(&dir.path().join("catalog.db")).unwrap();
        let (emitted, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let body = Chatty(Arc::clone(&emitted), Arc::clone(&release));
        let (q, _) = Queue::start(catalog, Arc::new(body), 1).await.unwrap();
        let (job, _) = q.submit(submission(0, 0)).await.unwrap();
        emitted.notified().await;
        let (history, _, _) = q.subscribe(&job.id).unwrap();
        assert!(history.len() <= HISTORY_LIMIT, "{}", history.len());
        let last_of = |disk: u64| {
            history
                .iter()
                .rev()
                .find(|e| e["disk"] == disk)
                .map(|e| e["bytes_done"].as_u64().unwrap())
        };
        assert_eq!(last_of(2000), Some(HISTORY_LIMIT as u64 + 10));
        assert_eq!(last_of(2001), Some(7));
        assert_eq!(history[0]["event"], "job_started");
        release.notify_one();
        while !q.get(&job.id).unwrap().state.is_final() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// A client cancels a running job, and the agent dies before the job has cleaned up:
    /// the next start finds it cancelled, not interrupted (which its schedule would run
    /// again).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancel_survives_a_crash_before_the_job_ended() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, _t, body, q, _) = gated_queue(&dir.path().join("catalog.db"), 1).await;
        let (cancelled, _) = q.submit(submission(0, 0)).await.unwrap();
        wait_until(&q, 1).await;
        let (other, _) = q.submit(submission(1, 0)).await.unwrap();
        q.cancel(&cancelled.id).await.unwrap();
        // The crash: the catalog as the running agent left it, read by a new one.
        let (again, interrupted) = Queue::start(catalog.clone(), Arc::new(Gated::closed()), 1)
            .await
            .unwrap();
        assert!(interrupted.is_empty(), "{interrupted:?}");
        assert_eq!(again.get(&cancelled.id).unwrap().state, JobState::Cancelled);
        // The job queued behind it is queued still (or already running again).
        assert!(matches!(
            again.get(&other.id).unwrap().state,
            JobState::Queued | JobState::Running
        ));
        body.release.add_permits(2);
    }

    /// A follower of a job still queued when the agent stops sees its stream end (the job
    /// runs after the next start): the server's graceful stop does not wait for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_jobs_followers_are_let_go_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let (_catalog, _t, body, q, _) = gated_queue(&dir.path().join("catalog.db"), 1).await;
        let (_running, _) = q.submit(submission(0, 0)).await.unwrap();
        wait_until(&q, 1).await;
        let (queued, _) = q.submit(submission(1, 0)).await.unwrap();
        let (_, ended, mut rx) = q.subscribe(&queued.id).unwrap();
        assert!(ended.is_none());
        q.shut_down();
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
        assert!(
            matches!(next, Ok(Err(broadcast::error::RecvError::Closed))),
            "{next:?}"
        );
        body.release.add_permits(1);
    }

    /// A job the shutdown cut off is `interrupted` (and so run again by its schedule) even
    /// when its body reported the cut as a failure; a client's cancel, before or after the
    /// shutdown, stays `cancelled`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_the_shutdown_cut_off_is_interrupted_and_a_clients_cancel_stays_cancelled() {
        for (fails, client_cancels, want) in [
            (true, false, JobState::Interrupted),
            (false, false, JobState::Interrupted),
            (true, true, JobState::Failed),
            (false, true, JobState::Cancelled),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (catalog, _t, body, q, _) = gated_queue(&dir.path().join("catalog.db"), 1).await;
            let mut sub = submission(0, 0);
            sub.request["fails_when_cancelled"] = fails.into();
            let (job, _) = q.submit(sub).await.unwrap();
            wait_until(&q, 1).await;
            q.shut_down();
            if client_cancels {
                q.cancel(&job.id).await.unwrap();
            }
            body.release.add_permits(1);
            while !q.get(&job.id).unwrap().state.is_final() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let got = q.get(&job.id).unwrap();
            assert_eq!(
                got.state, want,
                "fails {fails}, client cancels {client_cancels}"
            );
            if want == JobState::Interrupted {
                let error = got.error.unwrap();
                assert!(
                    error.starts_with("the agent stopped while the job ran"),
                    "{error}"
                );
                assert_eq!(
                    error.contains("reading disk 2000 at 0: cancelled"),
                    fails,
                    "{error}"
                );
            }
            // The catalog agrees (the scheduler's retry at the next start reads it there).
            let stored = catalog.queue_list().unwrap();
            assert_eq!(stored[0].state, state_str(want));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shutdown_cancels_the_running_job_and_keeps_the_queued_ones_for_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, _t) = CatalogHandle::spawn(&dir.path().join("catalog.db")).unwrap();
        let body = Gated::closed();
        let (q, _) = Queue::start(catalog.clone(), Arc::new(Arc::clone(&body)), 1)
            .await
            .unwrap();
        let (running, _) = q.submit(submission(0, 0)).await.unwrap();
        wait_until(&q, 1).await;
        let (queued, _) = q.submit(submission(1, 0)).await.unwrap();
        q.shut_down();
        // The running job ends (its body saw the cancellation); nothing else starts.
        body.release.add_permits(2);
        while !q.get(&running.id).unwrap().state.is_final() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(q.figures().1, 0);
        assert_eq!(q.get(&running.id).unwrap().state, JobState::Interrupted);
        assert_eq!(q.get(&queued.id).unwrap().state, JobState::Queued);
        let stored = catalog.queue_list().unwrap();
        let state_of = |id: &str| stored.iter().find(|j| j.id == id).unwrap().state.clone();
        assert_eq!(state_of(&queued.id), "queued");
        // The next start runs it; its key still finds it.
        let body2 = Gated::closed();
        let (q2, _) = Queue::start(catalog.clone(), Arc::new(Arc::clone(&body2)), 1)
            .await
            .unwrap();
        let (again, new) = q2.submit(submission(1, 0)).await.unwrap();
        assert!(!new);
        assert_eq!(again.id, queued.id);
        body2.release.add_permits(1);
        while q2.get(&queued.id).unwrap().state != JobState::Succeeded {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// A body whose jobs may start only while `open`.
    struct Gate {
        open: std::sync::atomic::AtomicBool,
        ran: AtomicUsize,
    }

    impl JobBody for Arc<Gate> {
        fn run(&self, _ctx: RunContext) -> BodyFuture {
            self.ran.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                Outcome {
                    state: JobState::Succeeded,
                    error: None,
                    result: None,
                }
            })
        }
        fn may_start(&self, origin: &str) -> bool {
            origin != "schedule:nightly" || self.open.load(Ordering::SeqCst)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_may_not_start_yet_waits_and_starts_once_it_may_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, _t) = CatalogHandle::spawn(&dir.path().join("catalog.db")).unwrap();
        let body = Arc::new(Gate {
            open: std::sync::atomic::AtomicBool::new(false),
            ran: AtomicUsize::new(0),
        });
        let recheck = std::time::Duration::from_millis(20);
        let (q, _) = Queue::start_with_recheck(catalog, Arc::new(Arc::clone(&body)), 2, recheck)
            .await
            .unwrap();
        let (blocked, _) = q
            .submit(Submission {
                origin: "schedule:nightly".into(),
                ..submission(0, 10)
            })
            .await
            .unwrap();
        // Others go past it, whatever its priority.
        let (other, _) = q.submit(submission(1, 0)).await.unwrap();
        while q.get(&other.id).unwrap().state != JobState::Succeeded {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        tokio::time::sleep(recheck * 5).await;
        assert_eq!(q.get(&blocked.id).unwrap().state, JobState::Queued);
        assert_eq!(body.ran.load(Ordering::SeqCst), 1);
        // The window ends; nothing else happens in the queue, and the job starts.
        body.open.store(true, Ordering::SeqCst);
        while q.get(&blocked.id).unwrap().state != JobState::Succeeded {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn priority_first_and_queued_jobs_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("catalog.db");
        let (catalog, _t, body, q, _) = gated_queue(&db, 1).await;
        let (first, _) = q.submit(submission(0, 0)).await.unwrap();
        wait_until(&q, 1).await;
        let (low, _) = q.submit(submission(1, 0)).await.unwrap();
        let (high, _) = q.submit(submission(2, 10)).await.unwrap();
        let (gone, _) = q.submit(submission(3, 0)).await.unwrap();
        let cancelled = q.cancel(&gone.id).await.unwrap().unwrap();
        assert_eq!(cancelled.state, JobState::Cancelled);
        // Let the running job end: the high-priority one goes next although submitted later.
        body.release.add_permits(1);
        while q.get(&high.id).unwrap().state != JobState::Running {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // Its body runs only once the catalog says running too, which the restart reads.
        while body.inside.load(Ordering::SeqCst) != 1 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(q.get(&low.id).unwrap().state, JobState::Queued);
        assert_eq!(q.get(&first.id).unwrap().state, JobState::Succeeded);
        // "Restart": a new queue over the same catalog while `high` is still running.
        let body2 = Gated::closed();
        body2.release.add_permits(1);
        let (q2, interrupted) = Queue::start(catalog.clone(), Arc::new(Arc::clone(&body2)), 1)
            .await
            .unwrap();
        assert_eq!(interrupted, vec![high.id.clone()]);
        assert_eq!(q2.get(&high.id).unwrap().state, JobState::Interrupted);
        while q2.get(&low.id).unwrap().state != JobState::Succeeded {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(q2.get(&gone.id).unwrap().state, JobState::Cancelled);
        body.release.add_permits(1);
    }
}
