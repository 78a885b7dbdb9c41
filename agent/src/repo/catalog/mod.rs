//! The catalog (`catalog.db`, SQLite in WAL mode): VMs, jobs, restore points, their disks and
//! the side-effect journal, the daemon's job queue and the damaged chunks a repair found.
//!
//! - **Ownership.** One [`Catalog`] (one rusqlite `Connection`) lives on the `catalog` thread;
//!   everyone else uses a [`CatalogHandle`] (command + reply channel). Other processes (a CLI
//!   `list` during a backup) open their own connection; WAL gives them a consistent snapshot.
//! - **Visibility.** A restore point and its disks are inserted in one transaction, after its
//!   chunks, index files and manifest are durable: a point is visible only once committed.
//!   The manifests (`crate::repo::manifest`) let `repo rebuild-catalog` recreate the points
//!   if this file is lost.
//! - **Versioning.** `PRAGMA user_version` holds the schema version; a newer catalog is refused.
//! - **Chunk references** are not stored here: they are derived from the index files listed in
//!   `disks.index_path` (checksummed, immutable). A per-chunk table would cost one row per chunk
//!   per backup and duplicate the index; GC and verify read the indexes instead.
//!
//! It must not touch chunk or index files.

mod damaged;
mod db;
mod queue;
mod schema;
mod thread;

use std::path::PathBuf;

pub use damaged::DamagedChunk;
#[cfg(test)]
pub(crate) use db::tests::sample_point;
pub use db::{
    Catalog, DiskRecord, DiskRole, GC_PENDING_KEY, IMAGE_NEWEST_REMOVED_PREFIX, JobEnd,
    JournalEntry, JournalKind, NewPoint, PointConfig, PointKind, PointRecord,
    RESTORED_IN_PLACE_PREFIX, VmRecord,
};
pub use queue::{QueueJob, QueueUpdate};
pub use schema::LATEST_VERSION;
pub use thread::{CatalogHandle, CatalogThread};

/// Errors of the catalog; each names the database file.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// SQLite failed.
    #[error("catalog {path}")]
    Sql {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The catalog was written by a newer agent.
    #[error(
        "catalog {path} has schema version {found}, this agent supports up to {supported}: \
         upgrade vadp-agent"
    )]
    NewerVersion {
        /// The database file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Newest version this agent knows.
        supported: u32,
    },
    /// A row cannot be understood.
    #[error("catalog {path}: {what}")]
    Invalid {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The catalog thread could not start.
    #[error("start catalog thread for {path}")]
    Thread {
        /// The database file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The catalog thread is gone (panicked or stopped).
    #[error("catalog thread for {path} is gone")]
    Gone {
        /// The database file.
        path: PathBuf,
    },
}
