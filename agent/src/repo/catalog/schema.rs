//! Versioned schema migrations, recorded in `PRAGMA user_version`.
//!
//! Migration `i` (0-based) upgrades version `i` to `i + 1`. Never edit a released migration;
//! append a new one. A catalog with a version above [`LATEST_VERSION`] was written by a newer
//! agent and is refused.

use rusqlite::{Connection, TransactionBehavior};

/// The migrations, in order.
const MIGRATIONS: &[&str] = &[
    // 1: the product's catalog.
    r"
CREATE TABLE repo_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE vms (
    id           INTEGER PRIMARY KEY,
    moref        TEXT NOT NULL,
    vcenter_uuid TEXT NOT NULL DEFAULT '',
    name         TEXT NOT NULL,
    namespace    TEXT,
    UNIQUE (vcenter_uuid, moref)
);
CREATE TABLE jobs (
    id         TEXT PRIMARY KEY,
    group_name TEXT,
    created_at INTEGER NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    error      TEXT
);
CREATE TABLE restore_points (
    id           TEXT PRIMARY KEY,
    vm_id        INTEGER NOT NULL REFERENCES vms(id),
    job_id       TEXT REFERENCES jobs(id),
    parent_id    TEXT,
    created_at   INTEGER NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('full', 'incremental')),
    reason       TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('committed', 'validated', 'invalid')),
    vmx          BLOB,
    extra_config TEXT,
    stats        TEXT NOT NULL
);
CREATE INDEX restore_points_vm ON restore_points (vm_id, created_at);
CREATE TABLE disks (
    point_id       TEXT NOT NULL REFERENCES restore_points(id) ON DELETE CASCADE,
    disk_key       INTEGER NOT NULL,
    label          TEXT NOT NULL,
    capacity_bytes INTEGER NOT NULL,
    backing_file   TEXT NOT NULL,
    disk_uuid      TEXT,
    change_id      TEXT,
    role           TEXT NOT NULL CHECK (role IN ('os', 'classic', 'pvc')),
    index_path     TEXT NOT NULL,
    bytes_changed  INTEGER NOT NULL,
    bytes_stored   INTEGER NOT NULL,
    PRIMARY KEY (point_id, disk_key)
);
CREATE TABLE journal (
    id        INTEGER PRIMARY KEY,
    kind      TEXT NOT NULL CHECK (kind IN ('snapshot', 'prepare_access', 'vm_shell')),
    vm_moref  TEXT NOT NULL,
    detail    TEXT NOT NULL,
    opened_at INTEGER NOT NULL,
    closed_at INTEGER,
    state     TEXT NOT NULL CHECK (state IN ('open', 'closed', 'failed'))
);
",
    // 2: backup jobs record when they finished and what they achieved (skew, per-VM results).
    r"
ALTER TABLE jobs ADD COLUMN finished_at INTEGER;
ALTER TABLE jobs ADD COLUMN stats TEXT;
",
    // 3: the daemon's job queue (API and scheduled jobs), which survives a restart.
    r"
CREATE TABLE queue_jobs (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    priority        INTEGER NOT NULL,
    origin          TEXT NOT NULL,
    request         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN
                      ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    created_at      INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER,
    error           TEXT,
    result          TEXT
);
CREATE INDEX queue_jobs_state ON queue_jobs (state, priority, seq);
",
    // 4: chunks `repo verify --repair` found corrupt or missing, until a backup heals them.
    r"
CREATE TABLE damaged_chunks (
    digest         BLOB PRIMARY KEY CHECK (length(digest) = 32),
    detected_at    INTEGER NOT NULL,
    error          TEXT NOT NULL,
    quarantined_as TEXT
);
",
    // 5: a client's cancel of a running job, recorded at once: a job the agent stopped (or
    // crashed) under before it had cleaned up ends `cancelled`, not `interrupted` (which
    // its schedule would run again).
    r"
ALTER TABLE queue_jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
",
    // 6: a point's `.vmx` and ExtraConfig (bootstrap Secrets included) live in its config
    // file (`indexes/<point>/config.chunk`); the catalog keeps only the file's digest.
    // `Repository::open` moves what older catalogs held inline and clears `vmx` and
    // `extra_config`, which nothing writes any more.
    r"
ALTER TABLE restore_points ADD COLUMN config_digest TEXT;
",
];

/// The schema version this agent writes.
pub const LATEST_VERSION: u32 = 6;

/// Outcome of [`migrate`] when the catalog cannot be used.
#[derive(Debug)]
pub(crate) enum MigrateError {
    /// Written by a newer agent.
    Newer(u32),
    /// SQLite failed.
    Sql(rusqlite::Error),
}

/// Bring `conn` to [`LATEST_VERSION`], each migration in its own transaction.
///
/// Each step takes the write lock first (`BEGIN IMMEDIATE`) and reads the version inside
/// it, so two processes opening an old catalog at once (the daemon and a CLI command after
/// an upgrade) migrate it once between them instead of both running the same step.
pub(crate) fn migrate(conn: &mut Connection) -> Result<u32, MigrateError> {
    fn version(conn: &Connection) -> Result<u32, MigrateError> {
        let v: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(MigrateError::Sql)?;
        if v > LATEST_VERSION {
            return Err(MigrateError::Newer(v));
        }
        Ok(v)
    }
    if version(conn)? == LATEST_VERSION {
        return Ok(LATEST_VERSION);
    }
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MigrateError::Sql)?;
        let v = version(&tx)?;
        let Some(sql) = MIGRATIONS.get(usize::try_from(v).expect("u32 fits in usize")) else {
            return Ok(LATEST_VERSION);
        };
        tx.execute_batch(sql).map_err(MigrateError::Sql)?;
        tx.pragma_update(None, "user_version", v + 1)
            .map_err(MigrateError::Sql)?;
        tx.commit().map_err(MigrateError::Sql)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_match_latest_and_are_idempotent() {
        assert_eq!(MIGRATIONS.len(), LATEST_VERSION as usize);
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), LATEST_VERSION);
        assert_eq!(migrate(&mut conn).unwrap(), LATEST_VERSION);
        conn.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(migrate(&mut conn), Err(MigrateError::Newer(99))));
    }

    #[test]
    fn processes_opening_an_old_catalog_at_once_migrate_it_once() {
        for round in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("catalog.db");
            {
                // A version 1 catalog, as an older agent left it.
                let conn = Connection::open(&path).unwrap();
                conn.pragma_update(None, "journal_mode", "wal").unwrap();
                conn.execute_batch(MIGRATIONS[0]).unwrap();
                conn.pragma_update(None, "user_version", 1).unwrap();
            }
            let start = std::sync::Barrier::new(6);
            std::thread::scope(|scope| {
                let openers: Vec<_> = (0..6)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut conn = Connection::open(&path).unwrap();
                            conn.busy_timeout(std::time::Duration::from_secs(30))
                                .unwrap();
                            start.wait();
                            migrate(&mut conn)
                        })
                    })
                    .collect();
                for o in openers {
                    let r = o.join().unwrap();
                    assert!(
                        matches!(r, Ok(LATEST_VERSION)),
                        "round {round}: {:?}",
                        r.err()
                    );
                }
            });
        }
    }
}
