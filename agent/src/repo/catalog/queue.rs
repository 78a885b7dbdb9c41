//! The daemon's job queue in the catalog (`queue_jobs`): every job the API or the scheduler
//! submitted, with its request, state and result, so queued jobs survive a restart and
//! running ones are known to have been interrupted.

use rusqlite::{OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

use super::CatalogError;
use super::db::Catalog;

/// One queued (or finished) job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueJob {
    /// Job id (UUID).
    pub id: String,
    /// `backup` or `restore`.
    pub kind: String,
    /// The idempotency key it was submitted with.
    pub idempotency_key: Option<String>,
    /// Higher runs first.
    pub priority: i32,
    /// `api` or `schedule:<policy>`.
    pub origin: String,
    /// The request (the API's JSON body).
    pub request: serde_json::Value,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled` or `interrupted`.
    pub state: String,
    /// Unix time submitted.
    pub created_at: i64,
    /// Submission order (ties between equal priorities).
    pub seq: i64,
    /// Unix time started.
    pub started_at: Option<i64>,
    /// Unix time finished.
    pub finished_at: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The engine's report.
    pub result: Option<serde_json::Value>,
}

/// A state change of a queued job.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueUpdate {
    /// New state.
    pub state: String,
    /// Unix time started, when it starts.
    pub started_at: Option<i64>,
    /// Unix time finished, when it ends.
    pub finished_at: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The engine's report.
    pub result: Option<serde_json::Value>,
}

const COLUMNS: &str = "id, kind, idempotency_key, priority, origin, request, state, created_at, seq, \
                       started_at, finished_at, error, result";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueueJob> {
    let request: String = r.get(5)?;
    let result: Option<String> = r.get(12)?;
    Ok(QueueJob {
        id: r.get(0)?,
        kind: r.get(1)?,
        idempotency_key: r.get(2)?,
        priority: r.get(3)?,
        origin: r.get(4)?,
        request: serde_json::from_str(&request).unwrap_or(serde_json::Value::Null),
        state: r.get(6)?,
        created_at: r.get(7)?,
        seq: r.get(8)?,
        started_at: r.get(9)?,
        finished_at: r.get(10)?,
        error: r.get(11)?,
        result: result.and_then(|s| serde_json::from_str(&s).ok()),
    })
}

impl Catalog {
    /// Insert `job` unless a job with its idempotency key exists; returns the job stored
    /// under the key (the new one, or the earlier one) and whether it is new. `job.seq` is
    /// assigned here.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn queue_insert(&mut self, job: &QueueJob) -> Result<(QueueJob, bool), CatalogError> {
        let path = self.path.clone();
        let sql = |source| CatalogError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        if let Some(key) = &job.idempotency_key {
            let existing = tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM queue_jobs WHERE idempotency_key = ?1"),
                    [key],
                    row,
                )
                .optional()
                .map_err(sql)?;
            if let Some(existing) = existing {
                return Ok((existing, false));
            }
        }
        let seq: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM queue_jobs",
                [],
                |r| r.get(0),
            )
            .map_err(sql)?;
        tx.execute(
            &format!(
                "INSERT INTO queue_jobs ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                 ?10, ?11, ?12, ?13)"
            ),
            params![
                job.id,
                job.kind,
                job.idempotency_key,
                job.priority,
                job.origin,
                job.request.to_string(),
                job.state,
                job.created_at,
                seq,
                job.started_at,
                job.finished_at,
                job.error,
                job.result.as_ref().map(ToString::to_string),
            ],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok((QueueJob { seq, ..job.clone() }, true))
    }

    /// Record a state change.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn queue_update(&self, id: &str, u: &QueueUpdate) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "UPDATE queue_jobs SET state = ?2, started_at = COALESCE(?3, started_at),
                 finished_at = COALESCE(?4, finished_at), error = COALESCE(?5, error),
                 result = COALESCE(?6, result) WHERE id = ?1",
                params![
                    id,
                    u.state,
                    u.started_at,
                    u.finished_at,
                    u.error,
                    u.result.as_ref().map(ToString::to_string)
                ],
            )
            .map(|_| ())
            .map_err(self.sql())
    }

    /// Every job, in submission order.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn queue_list(&self) -> Result<Vec<QueueJob>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM queue_jobs ORDER BY seq"))
            .map_err(self.sql())?;
        stmt.query_map([], row)
            .and_then(Iterator::collect)
            .map_err(self.sql())
    }

    /// Forgets the jobs that ended before `before` (Unix seconds), returning their ids:
    /// the daemon's job history is kept for a while, not for ever.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn queue_forget_ended(&self, before: i64) -> Result<Vec<String>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "DELETE FROM queue_jobs WHERE state NOT IN ('queued', 'running')
                 AND finished_at IS NOT NULL AND finished_at < ?1 RETURNING id",
            )
            .map_err(self.sql())?;
        stmt.query_map([before], |r| r.get(0))
            .and_then(Iterator::collect)
            .map_err(self.sql())
    }

    /// At start-up: jobs still marked running belonged to a daemon that died; mark them
    /// interrupted and return their ids.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn queue_interrupt_running(&self, now: i64) -> Result<Vec<String>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id FROM queue_jobs WHERE state = 'running' AND cancel_requested = 0
                 ORDER BY seq",
            )
            .map_err(self.sql())?;
        let ids: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .and_then(Iterator::collect)
            .map_err(self.sql())?;
        // A client cancelled these: cancelled they stay, however their clean-up ended.
        self.conn
            .execute(
                "UPDATE queue_jobs SET state = 'cancelled', finished_at = ?1,
                 error = 'cancelled; the daemon stopped before the job had cleaned up'
                 WHERE state = 'running' AND cancel_requested = 1",
                [now],
            )
            .map_err(self.sql())?;
        self.conn
            .execute(
                "UPDATE queue_jobs SET state = 'interrupted', finished_at = ?1,
                 error = 'the daemon stopped while the job ran' WHERE state = 'running'",
                [now],
            )
            .map_err(self.sql())?;
        Ok(ids)
    }

    /// Records a client's cancel of the running job `id` (see
    /// [`Catalog::queue_interrupt_running`]).
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn queue_request_cancel(&self, id: &str) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "UPDATE queue_jobs SET cancel_requested = 1 WHERE id = ?1 AND state = 'running'",
                [id],
            )
            .map(|_| ())
            .map_err(self.sql())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, key: Option<&str>) -> QueueJob {
        QueueJob {
            id: id.into(),
            kind: "backup".into(),
            idempotency_key: key.map(Into::into),
            priority: 0,
            origin: "api".into(),
            request: serde_json::json!({"vms": [{"vm": "vm-1"}]}),
            state: "queued".into(),
            created_at: 10,
            seq: 0,
            started_at: None,
            finished_at: None,
            error: None,
            result: None,
        }
    }

    #[test]
    fn idempotency_key_returns_the_first_job() {
        let mut c = Catalog::open_in_memory().unwrap();
        let (a, new_a) = c.queue_insert(&job("a", Some("k"))).unwrap();
        let (b, new_b) = c.queue_insert(&job("b", Some("k"))).unwrap();
        assert!(new_a && !new_b);
        assert_eq!(b.id, "a");
        assert_eq!(a.seq, 1);
        let (c2, _) = c.queue_insert(&job("c", None)).unwrap();
        assert_eq!(c2.seq, 2);
        assert_eq!(c.queue_list().unwrap().len(), 2);
    }

    #[test]
    fn running_jobs_become_interrupted() {
        let mut c = Catalog::open_in_memory().unwrap();
        c.queue_insert(&job("a", None)).unwrap();
        c.queue_insert(&job("b", None)).unwrap();
        c.queue_update(
            "a",
            &QueueUpdate {
                state: "running".into(),
                started_at: Some(11),
                finished_at: None,
                error: None,
                result: None,
            },
        )
        .unwrap();
        assert_eq!(c.queue_interrupt_running(12).unwrap(), vec!["a".to_owned()]);
        let list = c.queue_list().unwrap();
        assert_eq!(list[0].state, "interrupted");
        assert_eq!(list[0].started_at, Some(11));
        assert_eq!(list[1].state, "queued");
    }

    #[test]
    fn jobs_that_ended_long_ago_are_forgotten_and_no_other() {
        let mut c = Catalog::open_in_memory().unwrap();
        for (id, key) in [
            ("old", Some("k1")),
            ("recent", None),
            ("queued", None),
            ("run", None),
        ] {
            c.queue_insert(&job(id, key)).unwrap();
        }
        let end = |state: &str, at: Option<i64>| QueueUpdate {
            state: state.into(),
            started_at: Some(50),
            finished_at: at,
            error: None,
            result: None,
        };
        c.queue_update("old", &end("succeeded", Some(100))).unwrap();
        c.queue_update("recent", &end("failed", Some(1000)))
            .unwrap();
        c.queue_update("run", &end("running", None)).unwrap();
        assert_eq!(c.queue_forget_ended(500).unwrap(), vec!["old".to_owned()]);
        let left: Vec<String> = c.queue_list().unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(left, ["recent", "queued", "run"]);
        // Its idempotency key is free again.
        let (again, new) = c.queue_insert(&job("new", Some("k1"))).unwrap();
        assert!(new);
        assert_eq!(again.id, "new");
        assert!(c.queue_forget_ended(500).unwrap().is_empty());
    }
}
