//! Versioned schema migrations, recorded in `PRAGMA user_version`.
//!
//! Migration `i` (0-based) upgrades version `i` to `i + 1`. Never edit a released migration;
//! append a new one. A catalog with a version above [`LATEST_VERSION`] was written by a newer
//! agent and is refused.

use rusqlite::Connection;

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
];

/// The schema version this agent writes.
pub const LATEST_VERSION: u32 = 4;

/// Outcome of [`migrate`] when the catalog cannot be used.
#[derive(Debug)]
pub(crate) enum MigrateError {
    /// Written by a newer agent.
    Newer(u32),
    /// SQLite failed.
    Sql(rusqlite::Error),
}

/// Bring `conn` to [`LATEST_VERSION`], each migration in its own transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<u32, MigrateError> {
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(MigrateError::Sql)?;
    if version > LATEST_VERSION {
        return Err(MigrateError::Newer(version));
    }
    let start = usize::try_from(version).expect("u32 fits in usize");
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        let tx = conn.transaction().map_err(MigrateError::Sql)?;
        tx.execute_batch(sql).map_err(MigrateError::Sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).expect("few migrations"),
        )
        .map_err(MigrateError::Sql)?;
        tx.commit().map_err(MigrateError::Sql)?;
    }
    Ok(LATEST_VERSION)
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
}
