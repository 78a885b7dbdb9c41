//! The repository: where every backup lives (ARCHITECTURE §6).
//!
//! ```text
//! <repo>/catalog.db                   SQLite (WAL): VMs, jobs, restore points, disks, journal
//! <repo>/chunks/<ab>/<cd>/<digest>    chunk files (header + zstd or raw), never modified
//! <repo>/indexes/<point>/<disk>.fidx  fixed index per disk per restore point
//! <repo>/repo.lock                    flock: shared for backup/restore/verify/prune, exclusive for gc
//! ```
//!
//! Invariants:
//! - a chunk never changes after its rename; its name is the BLAKE3 digest of its plain data;
//! - a restore point is visible only after its single catalog transaction commits, and that
//!   happens only after its chunks, their directories and its index files are fsynced;
//! - every restore point is a full image (an incremental copies its parent's index), so any
//!   point can be pruned;
//! - a failed or killed backup leaves only unreferenced chunks, temp files and an orphan
//!   index directory, all of which GC removes.
//!
//! Threads: `catalog` owns the SQLite connection; a backup runs `disk-read`, `chunk-hash/<n>`
//! and `chunk-write/<n>`; a restore runs `chunk-read/<n>`; verify runs `chunk-verify/<n>`.
//! The locking rules are the table in [`chunk_store`]. This module does not talk to vSphere.

// Errors here carry the identity of what failed (digest, file, point), which makes them
// larger than clippy's 128-byte default; they are returned on cold paths only, so boxing them
// would buy nothing but noise.
#![allow(clippy::result_large_err)]

pub mod aligned;
pub mod catalog;
pub mod chunk;
pub mod chunk_store;
pub(crate) mod durable;
pub mod fixed_index;
pub mod gc;
pub mod manifest;
pub mod pipeline;
pub mod point_config;
pub mod prune;
pub mod repair;
mod repository;
pub mod restore;
pub mod source;
pub mod synthetic_image;
pub mod verify;

pub use catalog::{CatalogError, CatalogHandle, PointKind, PointRecord};
pub use chunk_store::{ChunkStore, ChunkStoreError, RepoLock};
pub use fixed_index::{FixedIndexError, FixedIndexReader, FixedIndexWriter, IndexGeometry};
pub use gc::GcReport;
pub use pipeline::{DiskBackupStats, PipelineOptions};
pub use prune::{PruneDecision, RetentionPolicy};
pub use repair::{Quarantined, RepairReport};
pub(crate) use repository::now_secs;
pub use repository::{
    BackupSummary, DEFAULT_CHUNK_SIZE_BYTES, DiskPlan, IMAGE_DISK_KEY, ImageBackup,
    RESTORE_CHECK_MAX_BAD, RebuildReport, RepoError, RepoInfo, Repository, VerifyOptions,
    WrittenDisk,
};
pub use source::{DiskSink, DiskSource, Extent, RawFileSink, RawFileSource, SourceError};
pub use verify::{
    ChunkSelection, ChunkState, StopCheck, VerifyProblem, VerifyReport, VerifySubset,
};
