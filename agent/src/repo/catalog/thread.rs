//! The `catalog` thread: sole owner of the writer connection, driven through [`CatalogHandle`].
//!
//! Each command carries a reply sender; the handle blocks on it, so it is usable from plain
//! threads now. Async callers later wrap a call in a command + oneshot the same way (the reply
//! type is the only thing that changes).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, bounded};

use super::CatalogError;
use super::damaged::DamagedChunk;
use super::db::{Catalog, JobEnd, JournalEntry, JournalKind, NewPoint, PointConfig, PointRecord};
use super::queue::{QueueJob, QueueUpdate};
use crate::ids::{ChunkDigest, JobId, RestorePointId, VmMoref};

type Reply<T> = Sender<Result<T, CatalogError>>;

/// A request to the catalog thread.
#[derive(Debug)]
enum Command {
    Meta(String, Reply<Option<String>>),
    SetMeta(String, String, Reply<()>),
    ClearMetaIf(String, String, Reply<bool>),
    CommitPoint(Box<NewPoint>, Reply<()>),
    ListPoints(Reply<Vec<PointRecord>>),
    GetPoint(RestorePointId, Reply<Option<PointRecord>>),
    DeletePoints(Vec<RestorePointId>, Reply<usize>),
    JournalOpen(JournalKind, VmMoref, serde_json::Value, i64, Reply<i64>),
    JournalClose(i64, i64, Reply<()>),
    JournalOpenEntries(Reply<Vec<JournalEntry>>),
    JournalUpdate(i64, serde_json::Value, Reply<()>),
    JobStart(JobId, Option<String>, i64, Reply<()>),
    JobFinish(JobId, Box<JobEnd>, i64, Reply<()>),
    RunningJobs(Reply<Vec<JobId>>),
    JobStats(JobId, Reply<Option<serde_json::Value>>),
    JobKnown(JobId, Reply<bool>),
    QueueRequestCancel(String, Reply<()>),
    JobsOfGroup(String, Reply<Vec<JobId>>),
    DamagedList(Reply<Vec<DamagedChunk>>),
    IntegrityCheck(Reply<Vec<String>>),
    DamagedMark(Vec<DamagedChunk>, Reply<()>),
    DamagedClear(Vec<ChunkDigest>, Reply<usize>),
    PointConfig(RestorePointId, Reply<Option<PointConfig>>),
    PointsWithInlineConfig(Reply<Vec<RestorePointId>>),
    ConfigMoved(RestorePointId, ChunkDigest, Reply<()>),
    CheckpointTruncate(Reply<bool>),
    Vacuum(Reply<()>),
    LatestPoint(String, VmMoref, Reply<Option<PointRecord>>),
    QueueInsert(Box<QueueJob>, Reply<(QueueJob, bool)>),
    QueueUpdate(String, Box<QueueUpdate>, Reply<()>),
    QueueList(Reply<Vec<QueueJob>>),
    QueueInterruptRunning(i64, Reply<Vec<String>>),
    QueueForgetEnded(i64, Reply<Vec<String>>),
}

/// Handle to the `catalog` thread; cheap to clone. The thread stops when the last handle drops.
#[derive(Debug, Clone)]
pub struct CatalogHandle {
    tx: Sender<Command>,
    path: PathBuf,
    /// Counts the handles, so that [`CatalogThread`]'s drop knows whether the thread is
    /// closing the connection.
    _alive: Arc<()>,
}

/// Join handle of the catalog thread. Dropped after the last [`CatalogHandle`], it waits for
/// the thread to close the connection (SQLite checkpoints the WAL into `catalog.db` and
/// removes it then), so that whoever dropped the repository finds the catalog's files at
/// rest. Dropped while a handle lives on, it lets the thread go; the thread ends when that
/// handle drops.
#[derive(Debug)]
pub struct CatalogThread {
    join: Option<JoinHandle<()>>,
    handles: Weak<()>,
}

impl CatalogThread {
    /// Wait for the thread to exit (after every handle is dropped).
    pub fn join(mut self) {
        self.wait();
    }

    fn wait(&mut self) {
        if let Some(join) = self.join.take()
            && join.join().is_err()
        {
            tracing::error!("catalog thread panicked");
        }
    }
}

impl Drop for CatalogThread {
    fn drop(&mut self) {
        if self.handles.strong_count() == 0 {
            self.wait();
        }
    }
}

impl CatalogHandle {
    /// Open the catalog at `path` on a new `catalog` thread.
    ///
    /// # Errors
    /// What [`Catalog::open`] returns, or [`CatalogError::Thread`] if the thread cannot start.
    pub fn spawn(path: &Path) -> Result<(Self, CatalogThread), CatalogError> {
        Self::spawn_holding(path, ())
    }

    /// [`spawn`](Self::spawn), the thread keeping `guard` (a lock on the catalog's files)
    /// until it has closed the connection, however long a handle outlives its repository.
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn).
    pub fn spawn_holding<G: Send + 'static>(
        path: &Path,
        guard: G,
    ) -> Result<(Self, CatalogThread), CatalogError> {
        let (tx, rx) = bounded::<Command>(16);
        let (ready_tx, ready_rx) = bounded::<Result<(), CatalogError>>(1);
        let db_path = path.to_path_buf();
        let join = std::thread::Builder::new()
            .name("catalog".into())
            .spawn(move || {
                let mut catalog = match Catalog::open(&db_path) {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        drop(guard);
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for cmd in rx {
                    serve(&mut catalog, cmd);
                }
                drop(catalog);
                drop(guard);
            })
            .map_err(|source| CatalogError::Thread {
                path: path.to_path_buf(),
                source,
            })?;
        ready_rx.recv().map_err(|_| CatalogError::Gone {
            path: path.to_path_buf(),
        })??;
        let alive = Arc::new(());
        let handles = Arc::downgrade(&alive);
        Ok((
            Self {
                tx,
                path: path.to_path_buf(),
                _alive: alive,
            },
            CatalogThread {
                join: Some(join),
                handles,
            },
        ))
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, CatalogError> {
        let (reply_tx, reply_rx) = bounded(1);
        let gone = || CatalogError::Gone {
            path: self.path.clone(),
        };
        self.tx.send(make(reply_tx)).map_err(|_| gone())?;
        reply_rx.recv().map_err(|_| gone())?
    }

    /// See [`Catalog::meta`].
    ///
    /// # Errors
    /// As [`Catalog::meta`], or [`CatalogError::Gone`].
    pub fn meta(&self, key: &str) -> Result<Option<String>, CatalogError> {
        self.call(|r| Command::Meta(key.to_owned(), r))
    }

    /// See [`Catalog::set_meta`].
    ///
    /// # Errors
    /// As [`Catalog::set_meta`], or [`CatalogError::Gone`].
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), CatalogError> {
        self.call(|r| Command::SetMeta(key.to_owned(), value.to_owned(), r))
    }

    /// See [`Catalog::clear_meta_if`].
    ///
    /// # Errors
    /// As [`Catalog::clear_meta_if`], or [`CatalogError::Gone`].
    pub fn clear_meta_if(&self, key: &str, value: &str) -> Result<bool, CatalogError> {
        self.call(|r| Command::ClearMetaIf(key.to_owned(), value.to_owned(), r))
    }

    /// See [`Catalog::commit_point`].
    ///
    /// # Errors
    /// As [`Catalog::commit_point`], or [`CatalogError::Gone`].
    pub fn commit_point(&self, point: NewPoint) -> Result<(), CatalogError> {
        self.call(|r| Command::CommitPoint(Box::new(point), r))
    }

    /// See [`Catalog::list_points`].
    ///
    /// # Errors
    /// As [`Catalog::list_points`], or [`CatalogError::Gone`].
    pub fn list_points(&self) -> Result<Vec<PointRecord>, CatalogError> {
        self.call(Command::ListPoints)
    }

    /// See [`Catalog::get_point`].
    ///
    /// # Errors
    /// As [`Catalog::get_point`], or [`CatalogError::Gone`].
    pub fn get_point(&self, id: RestorePointId) -> Result<Option<PointRecord>, CatalogError> {
        self.call(|r| Command::GetPoint(id, r))
    }

    /// See [`Catalog::delete_points`].
    ///
    /// # Errors
    /// As [`Catalog::delete_points`], or [`CatalogError::Gone`].
    pub fn delete_points(&self, ids: Vec<RestorePointId>) -> Result<usize, CatalogError> {
        self.call(|r| Command::DeletePoints(ids, r))
    }

    /// See [`Catalog::journal_open`].
    ///
    /// # Errors
    /// As [`Catalog::journal_open`], or [`CatalogError::Gone`].
    pub fn journal_open(
        &self,
        kind: JournalKind,
        vm: VmMoref,
        detail: serde_json::Value,
        now: i64,
    ) -> Result<i64, CatalogError> {
        self.call(|r| Command::JournalOpen(kind, vm, detail, now, r))
    }

    /// See [`Catalog::journal_close`].
    ///
    /// # Errors
    /// As [`Catalog::journal_close`], or [`CatalogError::Gone`].
    pub fn journal_close(&self, id: i64, now: i64) -> Result<(), CatalogError> {
        self.call(|r| Command::JournalClose(id, now, r))
    }

    /// See [`Catalog::journal_open_entries`].
    ///
    /// # Errors
    /// As [`Catalog::journal_open_entries`], or [`CatalogError::Gone`].
    pub fn journal_open_entries(&self) -> Result<Vec<JournalEntry>, CatalogError> {
        self.call(Command::JournalOpenEntries)
    }
}

impl CatalogHandle {
    /// See [`Catalog::journal_update`].
    ///
    /// # Errors
    /// As [`Catalog::journal_update`], or [`CatalogError::Gone`].
    pub fn journal_update(&self, id: i64, detail: serde_json::Value) -> Result<(), CatalogError> {
        self.call(|r| Command::JournalUpdate(id, detail, r))
    }

    /// See [`Catalog::queue_insert`].
    ///
    /// # Errors
    /// As [`Catalog::queue_insert`], or [`CatalogError::Gone`].
    pub fn queue_insert(&self, job: QueueJob) -> Result<(QueueJob, bool), CatalogError> {
        self.call(|r| Command::QueueInsert(Box::new(job), r))
    }

    /// See [`Catalog::queue_update`].
    ///
    /// # Errors
    /// As [`Catalog::queue_update`], or [`CatalogError::Gone`].
    pub fn queue_update(&self, id: &str, update: QueueUpdate) -> Result<(), CatalogError> {
        self.call(|r| Command::QueueUpdate(id.to_owned(), Box::new(update), r))
    }

    /// See [`Catalog::queue_list`].
    ///
    /// # Errors
    /// As [`Catalog::queue_list`], or [`CatalogError::Gone`].
    pub fn queue_list(&self) -> Result<Vec<QueueJob>, CatalogError> {
        self.call(Command::QueueList)
    }

    /// See [`Catalog::queue_request_cancel`].
    ///
    /// # Errors
    /// As [`Catalog::queue_request_cancel`], or [`CatalogError::Gone`].
    pub fn queue_request_cancel(&self, id: &str) -> Result<(), CatalogError> {
        let id = id.to_owned();
        self.call(|r| Command::QueueRequestCancel(id, r))
    }

    /// See [`Catalog::queue_interrupt_running`].
    ///
    /// # Errors
    /// As [`Catalog::queue_interrupt_running`], or [`CatalogError::Gone`].
    pub fn queue_interrupt_running(&self, now: i64) -> Result<Vec<String>, CatalogError> {
        self.call(|r| Command::QueueInterruptRunning(now, r))
    }

    /// See [`Catalog::queue_forget_ended`].
    ///
    /// # Errors
    /// As [`Catalog::queue_forget_ended`], or [`CatalogError::Gone`].
    pub fn queue_forget_ended(&self, before: i64) -> Result<Vec<String>, CatalogError> {
        self.call(|r| Command::QueueForgetEnded(before, r))
    }

    /// See [`Catalog::job_start`].
    ///
    /// # Errors
    /// As [`Catalog::job_start`], or [`CatalogError::Gone`].
    pub fn job_start(
        &self,
        job: JobId,
        group: Option<String>,
        now: i64,
    ) -> Result<(), CatalogError> {
        self.call(|r| Command::JobStart(job, group, now, r))
    }

    /// See [`Catalog::job_finish`].
    ///
    /// # Errors
    /// As [`Catalog::job_finish`], or [`CatalogError::Gone`].
    pub fn job_finish(&self, job: JobId, end: JobEnd, now: i64) -> Result<(), CatalogError> {
        self.call(|r| Command::JobFinish(job, Box::new(end), now, r))
    }

    /// See [`Catalog::running_jobs`].
    ///
    /// # Errors
    /// As [`Catalog::running_jobs`], or [`CatalogError::Gone`].
    pub fn running_jobs(&self) -> Result<Vec<JobId>, CatalogError> {
        self.call(Command::RunningJobs)
    }

    /// See [`Catalog::job_stats`].
    ///
    /// # Errors
    /// As [`Catalog::job_stats`], or [`CatalogError::Gone`].
    pub fn job_stats(&self, job: JobId) -> Result<Option<serde_json::Value>, CatalogError> {
        self.call(|r| Command::JobStats(job, r))
    }

    /// See [`Catalog::jobs_of_group`].
    ///
    /// # Errors
    /// As [`Catalog::jobs_of_group`], or [`CatalogError::Gone`].
    pub fn jobs_of_group(&self, group: &str) -> Result<Vec<JobId>, CatalogError> {
        let group = group.to_owned();
        self.call(|r| Command::JobsOfGroup(group, r))
    }

    /// See [`Catalog::job_known`].
    ///
    /// # Errors
    /// As [`Catalog::job_known`], or [`CatalogError::Gone`].
    pub fn job_known(&self, job: JobId) -> Result<bool, CatalogError> {
        self.call(|r| Command::JobKnown(job, r))
    }

    /// See [`Catalog::integrity_check`].
    ///
    /// # Errors
    /// As [`Catalog::integrity_check`], or [`CatalogError::Gone`].
    pub fn integrity_check(&self) -> Result<Vec<String>, CatalogError> {
        self.call(Command::IntegrityCheck)
    }

    /// See [`Catalog::damaged_list`].
    ///
    /// # Errors
    /// As [`Catalog::damaged_list`], or [`CatalogError::Gone`].
    pub fn damaged_list(&self) -> Result<Vec<DamagedChunk>, CatalogError> {
        self.call(Command::DamagedList)
    }

    /// See [`Catalog::damaged_mark`].
    ///
    /// # Errors
    /// As [`Catalog::damaged_mark`], or [`CatalogError::Gone`].
    pub fn damaged_mark(&self, chunks: Vec<DamagedChunk>) -> Result<(), CatalogError> {
        self.call(|r| Command::DamagedMark(chunks, r))
    }

    /// See [`Catalog::damaged_clear`].
    ///
    /// # Errors
    /// As [`Catalog::damaged_clear`], or [`CatalogError::Gone`].
    pub fn damaged_clear(&self, digests: Vec<ChunkDigest>) -> Result<usize, CatalogError> {
        self.call(|r| Command::DamagedClear(digests, r))
    }

    /// See [`Catalog::latest_point`].
    ///
    /// # Errors
    /// As [`Catalog::latest_point`], or [`CatalogError::Gone`].
    pub fn latest_point(
        &self,
        vcenter_uuid: String,
        moref: VmMoref,
    ) -> Result<Option<PointRecord>, CatalogError> {
        self.call(|r| Command::LatestPoint(vcenter_uuid, moref, r))
    }

    /// See [`Catalog::point_config`].
    ///
    /// # Errors
    /// As [`Catalog::point_config`], or [`CatalogError::Gone`].
    pub fn point_config(&self, id: RestorePointId) -> Result<Option<PointConfig>, CatalogError> {
        self.call(|r| Command::PointConfig(id, r))
    }

    /// See [`Catalog::points_with_inline_config`].
    ///
    /// # Errors
    /// As [`Catalog::points_with_inline_config`], or [`CatalogError::Gone`].
    pub fn points_with_inline_config(&self) -> Result<Vec<RestorePointId>, CatalogError> {
        self.call(Command::PointsWithInlineConfig)
    }

    /// See [`Catalog::config_moved`].
    ///
    /// # Errors
    /// As [`Catalog::config_moved`], or [`CatalogError::Gone`].
    pub fn config_moved(
        &self,
        id: RestorePointId,
        digest: ChunkDigest,
    ) -> Result<(), CatalogError> {
        self.call(|r| Command::ConfigMoved(id, digest, r))
    }

    /// See [`Catalog::vacuum`].
    ///
    /// # Errors
    /// As [`Catalog::vacuum`], or [`CatalogError::Gone`].
    pub fn vacuum(&self) -> Result<(), CatalogError> {
        self.call(Command::Vacuum)
    }

    /// See [`Catalog::checkpoint_truncate`].
    ///
    /// # Errors
    /// As [`Catalog::checkpoint_truncate`], or [`CatalogError::Gone`].
    pub fn checkpoint_truncate(&self) -> Result<bool, CatalogError> {
        self.call(Command::CheckpointTruncate)
    }
}

fn serve(catalog: &mut Catalog, cmd: Command) {
    // A dropped reply receiver only means the caller went away; ignore send errors.
    match cmd {
        Command::Meta(k, r) => drop(r.send(catalog.meta(&k))),
        Command::SetMeta(k, v, r) => drop(r.send(catalog.set_meta(&k, &v))),
        Command::ClearMetaIf(k, v, r) => drop(r.send(catalog.clear_meta_if(&k, &v))),
        Command::CommitPoint(p, r) => drop(r.send(catalog.commit_point(&p))),
        Command::ListPoints(r) => drop(r.send(catalog.list_points())),
        Command::GetPoint(id, r) => drop(r.send(catalog.get_point(id))),
        Command::DeletePoints(ids, r) => drop(r.send(catalog.delete_points(&ids))),
        Command::JournalOpen(k, vm, d, now, r) => {
            drop(r.send(catalog.journal_open(k, &vm, &d, now)));
        }
        Command::JournalClose(id, now, r) => drop(r.send(catalog.journal_close(id, now))),
        Command::JournalOpenEntries(r) => drop(r.send(catalog.journal_open_entries())),
        Command::JournalUpdate(id, d, r) => drop(r.send(catalog.journal_update(id, &d))),
        Command::JobStart(id, g, now, r) => drop(r.send(catalog.job_start(id, g.as_deref(), now))),
        Command::JobFinish(id, end, now, r) => drop(r.send(catalog.job_finish(id, &end, now))),
        Command::RunningJobs(r) => drop(r.send(catalog.running_jobs())),
        Command::JobStats(id, r) => drop(r.send(catalog.job_stats(id))),
        Command::JobKnown(id, r) => drop(r.send(catalog.job_known(id))),
        Command::QueueRequestCancel(id, r) => drop(r.send(catalog.queue_request_cancel(&id))),
        Command::JobsOfGroup(g, r) => drop(r.send(catalog.jobs_of_group(&g))),
        Command::DamagedList(r) => drop(r.send(catalog.damaged_list())),
        Command::IntegrityCheck(r) => drop(r.send(catalog.integrity_check())),
        Command::DamagedMark(c, r) => drop(r.send(catalog.damaged_mark(&c))),
        Command::DamagedClear(d, r) => drop(r.send(catalog.damaged_clear(&d))),
        Command::PointConfig(id, r) => drop(r.send(catalog.point_config(id))),
        Command::PointsWithInlineConfig(r) => drop(r.send(catalog.points_with_inline_config())),
        Command::ConfigMoved(id, d, r) => drop(r.send(catalog.config_moved(id, &d))),
        Command::CheckpointTruncate(r) => drop(r.send(catalog.checkpoint_truncate())),
        Command::Vacuum(r) => drop(r.send(catalog.vacuum())),
        Command::LatestPoint(vc, vm, r) => drop(r.send(catalog.latest_point(&vc, &vm))),
        Command::QueueInsert(job, r) => drop(r.send(catalog.queue_insert(&job))),
        Command::QueueUpdate(id, u, r) => drop(r.send(catalog.queue_update(&id, &u))),
        Command::QueueList(r) => drop(r.send(catalog.queue_list())),
        Command::QueueForgetEnded(before, r) => drop(r.send(catalog.queue_forget_ended(before))),
        Command::QueueInterruptRunning(now, r) => {
            drop(r.send(catalog.queue_interrupt_running(now)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_round_trip_on_named_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (h, t) = CatalogHandle::spawn(&dir.path().join("catalog.db")).unwrap();
        h.set_meta("chunk_size_bytes", "4194304").unwrap();
        assert_eq!(
            h.meta("chunk_size_bytes").unwrap().as_deref(),
            Some("4194304")
        );
        assert!(h.list_points().unwrap().is_empty());
        drop(h);
        t.join();
    }
}
