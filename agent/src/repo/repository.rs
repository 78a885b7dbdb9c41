//! A repository on disk: `catalog.db`, `chunks/`, `indexes/` (each point's index files and
//! its manifest, `point.json`, see [`crate::repo::manifest`]), `repo.lock`, `open.lock`.
//!
//! Every process that has the repository open holds `open.lock` shared for as long as it
//! does; `repo rebuild-catalog` takes it exclusively, so a catalog is never replaced under a
//! running daemon that would go on committing into the old one. While a rebuild replaces
//! the catalog, `catalog.rebuilding` exists; a repository with that marker is refused until
//! the rebuild has been run to its end, because a partial catalog would make GC take the
//! restore points it lacks for garbage.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::ids::{ChangeId, ChunkDigest, DiskKey, JobId, RestorePointId, VmMoref};
use crate::repo::catalog::{
    Catalog, CatalogError, CatalogHandle, CatalogThread, DiskRecord, DiskRole, GC_PENDING_KEY,
    IMAGE_NEWEST_REMOVED_PREFIX, NewPoint, PointConfig, PointKind, PointRecord, VmRecord,
};
use crate::repo::chunk_store::{ChunkStore, ChunkStoreError, Layout, RepoLock};
use crate::repo::durable;
use crate::repo::fixed_index::{
    self, FixedIndexError, FixedIndexReader, FixedIndexWriter, IndexGeometry,
};
use crate::repo::gc::{self, GcError, GcReport};
use crate::repo::manifest::{MANIFEST_FILE, Manifest, ManifestError, RepoFacts};
use crate::repo::pipeline::{self, DiskBackupStats, PipelineError, PipelineOptions, SlotSet};
use crate::repo::point_config::{self, Config, ConfigError};
use crate::repo::prune::{self, PruneDecision, PruneError, RetentionPolicy};
use crate::repo::repair::{self, RepairError, RepairReport};
use crate::repo::restore::{self, RestoreError};
use crate::repo::source::{DiskSink, DiskSource, Extent, RawFileSink, RawFileSource, SourceError};
use crate::repo::verify::{
    self, ChunkSelection, StopCheck, VerifyProblem, VerifyReport, VerifySubset,
};

/// Default chunk size: 1 MiB. Measured (docs/benchmarks.md, "Chunk size", `scripts/bench-repo`
/// on the 2 GiB benchmark image): full backup 2.67 s with 1 MiB against 3.50 s with 4 MiB,
/// a 20 × 64 KiB incremental 0.04 s against 0.14 s (a small change rewrites a whole chunk),
/// restore 1.26 s against 4.90 s, peak RSS 31 against 85 MB, and a smaller repository
/// (719 against 736 MB); 1 MiB was as fast or faster in every column of five runs.
pub const DEFAULT_CHUNK_SIZE_BYTES: u32 = 1 << 20;
/// `repo_meta` key set once the catalog holds no VMX or ExtraConfig, not even in free
/// pages or its WAL (see `Repository::move_configs_out_of_catalog`).
const SECRETS_SCRUBBED_KEY: &str = "secrets_scrubbed";
/// [`SECRETS_SCRUBBED_KEY`] once `VACUUM` ran, its WAL not yet emptied.
const VACUUMED: &str = "vacuumed";
/// [`SECRETS_SCRUBBED_KEY`] once the WAL was emptied after it.
const SCRUBBED: &str = "1";
/// The disk key image mode uses for its single disk.
pub const IMAGE_DISK_KEY: DiskKey = DiskKey(2000);

/// Errors of repository operations; each names the repository path, point or disk involved.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// Not a repository (no catalog or chunk directory).
    #[error("{path} is not a vadp-agent repository (run `vadp-agent repo init`)")]
    NotARepository {
        /// The path given.
        path: PathBuf,
    },
    /// `init` on a directory that already holds a repository or other files.
    #[error("{path} already exists and is not empty")]
    AlreadyExists {
        /// The path given.
        path: PathBuf,
    },
    /// Chunk size must be a power of two between 64 KiB and 64 MiB.
    #[error("chunk size {0} is not a power of two between 64 KiB and 64 MiB")]
    ChunkSize(u64),
    /// File system operation failed.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The repository lock failed (or GC found it busy).
    #[error(transparent)]
    Lock(ChunkStoreError),
    /// `repo verify --repair` could not set a damaged chunk aside.
    #[error(transparent)]
    Repair(#[from] RepairError),
    /// A point manifest could not be written or read.
    #[error("point manifest")]
    Manifest(#[from] ManifestError),
    /// A point's configuration (its `.vmx` and ExtraConfig) could not be written or read.
    #[error("the .vmx and ExtraConfig of restore point {point}")]
    Config {
        /// The point.
        point: RestorePointId,
        /// What failed, naming the file.
        #[source]
        source: ConfigError,
    },
    /// Making a restore point visible failed (a full disk, say): it was not created, and
    /// nothing committed before it is touched.
    #[error("commit restore point {point} (not created)")]
    Commit {
        /// The point.
        point: RestorePointId,
        /// Why.
        #[source]
        source: Box<RepoError>,
    },
    /// A `repo rebuild-catalog` stopped before the new catalog was in place.
    #[error(
        "the catalog rebuild of {path} was interrupted; run `vadp-agent repo rebuild-catalog` \
         again (until then the repository is refused, so that no clean-up takes the restore \
         points missing from the catalog for garbage)"
    )]
    RebuildInterrupted {
        /// The repository.
        path: PathBuf,
    },
    /// Another process is rebuilding the catalog.
    #[error("the catalog of {path} is being rebuilt by another process; try again once it ends")]
    BeingRebuilt {
        /// The repository.
        path: PathBuf,
    },
    /// `repo rebuild-catalog` while another process has the repository open.
    #[error(
        "{path} is open in another process (a running daemon, backup or restore?); stop it \
         before rebuilding the catalog"
    )]
    InUse {
        /// The repository.
        path: PathBuf,
    },
    /// `repo rebuild-catalog` on a catalog that opens and passes SQLite's checks.
    #[error(
        "{path} opens and SQLite finds it sound; rebuilding would drop its job history, \
         journal, queue and damaged-chunk records (use --force to rebuild anyway)"
    )]
    CatalogSound {
        /// The catalog file.
        path: PathBuf,
    },
    /// `rebuild-catalog` of a catalog that does not open for another reason than damage.
    #[error(
        "{path} does not open, but not because it is damaged; fix that rather than \
         rebuilding it (use --force to rebuild anyway)"
    )]
    CatalogUnopenable {
        /// The catalog file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// Creating the chunk store's fan-out directories failed (names the directory).
    #[error("create the chunk store")]
    Store(#[source] ChunkStoreError),
    /// No such restore point.
    #[error("restore point {0} not found")]
    PointNotFound(RestorePointId),
    /// A restore is reading the point: it cannot be removed now.
    #[error("restore point {0} is being restored; remove it once the restore has ended")]
    PointInUse(RestorePointId),
    /// Stopped on request (a cancelled job) before the work was complete; nothing was
    /// changed.
    #[error("cancelled")]
    Cancelled,
    /// A restore's output exists and is not a regular file.
    #[error(
        "{path} is {what}: an image restore writes a regular file (give a file name, or \
         remove what is there)"
    )]
    NotAFile {
        /// The output asked for.
        path: PathBuf,
        /// What it is.
        what: &'static str,
    },
    /// An image incremental's parent is a point of another image or VM.
    #[error(
        "restore point {point} is a backup of {of:?}, not of {name:?}: an incremental must \
         start from a point of the same image"
    )]
    ParentOfAnother {
        /// The parent asked for.
        point: RestorePointId,
        /// Whose point it is.
        of: String,
        /// The image being backed up.
        name: String,
    },
    /// A parent point given without changed extents.
    #[error(
        "parent point {0} given without changed extents: give --changed EXTENTS.json for an \
         incremental, or neither for a full backup"
    )]
    ParentWithoutChanges(RestorePointId),
    /// Changed extents without a parent, while the image's newest point was removed since
    /// the one that is newest now was made: the extents (changes since the last backup)
    /// would be applied to an older point than they were made from.
    #[error(
        "the newest backup of image {name:?} was removed after point {newest} was made: \
         changed extents made since the last backup do not lead from {newest}; give \
         --parent {newest} if they are the changes since that point, or back up without \
         --changed (a full backup)"
    )]
    NewestRemoved {
        /// The image.
        name: String,
        /// Its newest point now.
        newest: RestorePointId,
    },
    /// No restore point for this VM to start an incremental from.
    #[error("no restore point of {0} to use as parent; run a full backup first")]
    NoParent(String),
    /// An index file is unreadable.
    #[error("restore point {point} disk {disk}")]
    Index {
        /// The point.
        point: RestorePointId,
        /// The disk.
        disk: DiskKey,
        /// The index error (names the file).
        #[source]
        source: FixedIndexError,
    },
    /// A new point's index file could not be written (a full disk, say); the point was
    /// not created.
    #[error("write the index of disk {disk} (restore point {point} not created)")]
    IndexWrite {
        /// The point that was being made.
        point: RestorePointId,
        /// The disk.
        disk: DiskKey,
        /// The index error (names the file).
        #[source]
        source: FixedIndexError,
    },
    /// The source disk could not be opened.
    #[error("open source disk")]
    Source(#[source] SourceError),
    /// The backup failed; no restore point was created.
    #[error("backup of {vm} disk {disk} (restore point {point} not created)")]
    Backup {
        /// VM name.
        vm: String,
        /// Disk.
        disk: DiskKey,
        /// The point that would have been created.
        point: RestorePointId,
        /// The pipeline error.
        #[source]
        source: PipelineError,
    },
    /// Before a restore wrote anything: a chunk or index the disk needs is missing or bad.
    #[error(
        "restore point {point} cannot be restored, nothing was changed: {count}{} problem(s), \
         first: {first}; pick another point, or run `vadp-agent repo verify --repair` and \
         back up again (if the data there is unchanged, that heals this point)",
        if *more { " or more" } else { "" }
    )]
    Unrestorable {
        /// The point.
        point: RestorePointId,
        /// How many problems were found ...
        count: usize,
        /// ... and whether the check stopped there (there may be more).
        more: bool,
        /// The first, as verify words it (disk, file, digest).
        first: String,
    },
    /// The restore failed.
    #[error("restore of restore point {point} disk {disk}")]
    Restore {
        /// The point.
        point: RestorePointId,
        /// The disk.
        disk: DiskKey,
        /// The restore error.
        #[source]
        source: RestoreError,
    },
    /// The restore needs a chunk `repo verify --repair` set aside as damaged.
    #[error(
        "restore of restore point {point} disk {disk}: chunk {digest} was found damaged by \
         `repo verify --repair` and no backup has stored it again; back up the VM again (if \
         its data there is unchanged, that heals this point) or restore another point"
    )]
    Damaged {
        /// The point.
        point: RestorePointId,
        /// The disk.
        disk: DiskKey,
        /// The damaged chunk.
        digest: ChunkDigest,
        /// The restore error.
        #[source]
        source: RestoreError,
    },
    /// Invalid retention policy.
    #[error(transparent)]
    Prune(#[from] PruneError),
    /// GC failed.
    #[error(transparent)]
    Gc(#[from] GcError),
}

/// Request to back up a raw image file.
#[derive(Debug, Clone)]
pub struct ImageBackup {
    /// Name of the "VM".
    pub name: String,
    /// The image file.
    pub file: PathBuf,
    /// Changed extents (CBT stand-in); `None` = full backup.
    pub changed: Option<Vec<Extent>>,
    /// Parent for an incremental (default: the newest point of `name`).
    pub parent: Option<RestorePointId>,
}

/// Result of a backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    /// The new point.
    pub point: RestorePointId,
    /// Full or incremental.
    pub kind: PointKind,
    /// Parent of an incremental.
    pub parent: Option<RestorePointId>,
    /// Disk capacity.
    pub capacity_bytes: u64,
    /// Pipeline statistics.
    pub stats: DiskBackupStats,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// How [`Repository::verify_with`] verifies.
#[derive(Clone, Default)]
pub struct VerifyOptions<'a> {
    /// Re-read only this subset of the chunks (and those recorded as damaged); `None`:
    /// every chunk.
    pub subset: Option<VerifySubset>,
    /// Quarantine and record what is damaged (`--repair`).
    pub repair: bool,
    /// Asked between chunks whether to give up (a cancelled job).
    pub stop: Option<StopCheck<'a>>,
    /// Only the chunks these points use (and those recorded as damaged); empty: every
    /// point's. Every index is still read, so a problem names all the points it affects.
    pub points: Vec<RestorePointId>,
}

impl std::fmt::Debug for VerifyOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("subset", &self.subset)
            .field("repair", &self.repair)
            .field("stop", &self.stop.is_some())
            .field("points", &self.points)
            .finish()
    }
}

/// Repository facts for `repo info`.
#[derive(Debug, Clone, Serialize)]
pub struct RepoInfo {
    /// Path.
    pub path: PathBuf,
    /// Chunk size.
    pub chunk_size_bytes: u32,
    /// Catalog schema version.
    pub schema_version: u32,
    /// Restore points.
    pub points: usize,
    /// Chunk files.
    pub chunk_files: u64,
    /// Bytes of chunk files.
    pub chunk_bytes: u64,
    /// Chunks `repo verify --repair` found damaged that no backup has stored again yet.
    pub damaged_chunks: usize,
    /// Corrupt chunk files kept in `quarantine/` (an administrator deletes them).
    pub quarantined_files: usize,
    /// Points were removed at this time (Unix seconds) and GC has not run since: their
    /// chunks still take space ([`Repository::gc_pending_since`]).
    pub gc_pending_since: Option<i64>,
}

/// What [`Repository::rebuild_catalog`] did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RebuildReport {
    /// Points listed in the new catalog, oldest first.
    pub points: Vec<RestorePointId>,
    /// Index directories left out, each with the reason (no manifest, a manifest that does
    /// not read, or an index file that does not read).
    pub skipped: Vec<(String, String)>,
    /// The directories of skipped points that have a manifest or index files (so may have
    /// been committed), moved to `unreadable-points/`: GC does not run while any is there.
    pub quarantined: Vec<PathBuf>,
    /// The old catalog's files, renamed aside (none if there was no catalog).
    pub old_catalog: Vec<PathBuf>,
    /// This run finished a rebuild that had been interrupted.
    pub resumed: bool,
}

/// Keeps every point of a job one of whose points is kept ("same job as a kept point of
/// the group"): a group keeps its common points in time.
fn keep_job_partners(job_of: &HashMap<RestorePointId, &str>, decisions: &mut [PruneDecision]) {
    let kept_jobs: HashSet<&str> = decisions
        .iter()
        .filter(|d| d.keep)
        .filter_map(|d| job_of.get(&d.id).copied())
        .collect();
    for d in decisions.iter_mut().filter(|d| !d.keep) {
        if job_of.get(&d.id).is_some_and(|j| kept_jobs.contains(j)) {
            d.keep = true;
            d.reasons.push("same job as a kept point of the group");
        }
    }
}

/// Most points one prune pass removes: each is claimed (an open lock file) until it is
/// gone, and a process may hold 1,024 files (systemd's default soft limit), VDDK's sockets
/// and the catalog's among them. A prune with more to remove makes further passes.
#[cfg(not(test))]
const MAX_REMOVALS_PER_PASS: usize = 256;
/// Small in tests, so that the repository's prune tests go through several passes.
#[cfg(test)]
const MAX_REMOVALS_PER_PASS: usize = 3;

/// Most distinct digests a restore's check of its point holds at once (about 50–70 MB);
/// a point with more chunks is checked in as many passes over its indexes as that takes
/// (about 16 for a fully written 16 TiB disk at 1 MiB chunks).
const RESTORE_CHECK_MAX_DIGESTS: usize = 1 << 20;

/// Bad chunks after which a restore's check stops: the restore is refused either way, and
/// a disk whose chunks are all gone (a store not mounted) would otherwise hold a problem
/// for each.
pub const RESTORE_CHECK_MAX_BAD: usize = 100;

/// Held shared by every process with the repository open; exclusively by a rebuild.
const OPEN_LOCK: &str = "open.lock";
/// Exists while a rebuild replaces the catalog (see the module doc).
const REBUILD_MARKER: &str = "catalog.rebuilding";
/// Where a rebuild builds the new catalog before renaming it into place.
const REBUILD_TEMP: &str = "catalog.db.rebuild";
/// A SQLite database's files: the database and the WAL, shared-memory and rollback journal
/// files named after it.
const CATALOG_SUFFIXES: [&str; 4] = ["", "-wal", "-shm", "-journal"];

/// What [`Repository::write_disk`] reads.
#[derive(Debug)]
pub enum DiskPlan {
    /// Every allocated extent (`None`: ask the source), into an all-holes index.
    Full {
        /// Allocated extents, e.g. from `QueryChangedDiskAreas("*")`.
        allocated: Option<Vec<Extent>>,
    },
    /// Only the changed extents, into a copy of the parent's index.
    Incremental {
        /// The same disk's index in the parent point.
        parent_index: FixedIndexReader,
        /// Changed extents (CBT).
        changed: Vec<Extent>,
    },
}

/// One disk written by [`Repository::write_disk`], ready to be named in a [`NewPoint`].
#[derive(Debug, Clone)]
pub struct WrittenDisk {
    /// Full or incremental.
    pub kind: PointKind,
    /// Capacity of the disk.
    pub capacity_bytes: u64,
    /// Index file, relative to the repository root.
    pub index_path: String,
    /// Bytes of the extents asked for.
    pub bytes_changed: u64,
    /// Pipeline statistics.
    pub stats: DiskBackupStats,
    /// Why an incremental was made a full backup here, if it was (its parent's index
    /// could not be copied).
    pub fallback: Option<String>,
}

/// An open repository.
#[derive(Debug)]
pub struct Repository {
    root: PathBuf,
    chunk_size_bytes: u32,
    store: ChunkStore,
    catalog: CatalogHandle,
    _catalog_thread: CatalogThread,
    options: PipelineOptions,
}

/// `path` with every symbolic link along its last component followed, whether or not the
/// file it ends at exists yet (a restore replaces that file, not the link).
fn resolve_links(path: &Path) -> std::io::Result<PathBuf> {
    let mut at = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&at) {
            Ok(md) if md.is_symlink() => {
                let to = fs::read_link(&at)?;
                at = match at.parent() {
                    Some(dir) if to.is_relative() => dir.join(to),
                    _ => to,
                };
            }
            _ => return Ok(at),
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::ELOOP))
}

/// `lock`, with another holder ([`ChunkStoreError::Busy`]) reported as `busy()`.
fn busy_as(
    lock: Result<RepoLock, ChunkStoreError>,
    busy: impl FnOnce() -> RepoError,
) -> Result<RepoLock, RepoError> {
    match lock {
        Ok(lock) => Ok(lock),
        Err(ChunkStoreError::Busy { .. }) => Err(busy()),
        Err(e) => Err(RepoError::Lock(e)),
    }
}

/// Slots of `parent` (an incremental's parent index) below `slot_count` holding a `damaged`
/// chunk: the incremental copies them, so it reads them again.
fn heal_slots(
    parent: &FixedIndexReader,
    slot_count: usize,
    damaged: &HashSet<ChunkDigest>,
) -> Result<SlotSet, FixedIndexError> {
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    if damaged.is_empty() {
        return Ok(SlotSet::default());
    }
    for slot in parent.slots() {
        let (slot, digest) = slot?;
        if slot >= slot_count {
            break;
        }
        if damaged.contains(&digest) {
            match ranges.last_mut() {
                Some(last) if last.end == slot => last.end = slot + 1,
                _ => ranges.push(slot..slot + 1),
            }
        }
    }
    Ok(SlotSet::from_ranges(ranges))
}

/// Unix time in seconds.
pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Repository {
    /// Create a repository at `path` (absent or empty directory).
    ///
    /// # Errors
    /// [`RepoError::AlreadyExists`], [`RepoError::ChunkSize`], [`RepoError::Io`] or catalog errors.
    pub fn init(path: &Path, chunk_size_bytes: u64) -> Result<Self, RepoError> {
        if !chunk_size_bytes.is_power_of_two()
            || !(64 << 10..=crate::repo::chunk_store::MAX_CHUNK_SIZE_BYTES as u64)
                .contains(&chunk_size_bytes)
        {
            return Err(RepoError::ChunkSize(chunk_size_bytes));
        }
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| RepoError::Io { path: p, source }
        };
        if path.exists() && fs::read_dir(path).map_err(io(path))?.next().is_some() {
            return Err(RepoError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        // Durably: each new directory's entry fsynced in its parent.
        for dir in [
            path.to_path_buf(),
            path.join("chunks"),
            path.join("indexes"),
        ] {
            durable::create_dir_all(&dir)
                .map_err(|(path, source)| RepoError::Io { path, source })?;
        }
        // Disk contents and ExtraConfig (bootstrap Secrets among it) are not for other
        // users, whatever the umask: the root shuts them out of everything below.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(0o750)).map_err(io(path))?;
        }
        let (catalog, thread) = CatalogHandle::spawn(&path.join("catalog.db"))?;
        catalog.set_meta("chunk_size_bytes", &chunk_size_bytes.to_string())?;
        catalog.set_meta("repo_id", &uuid::Uuid::new_v4().to_string())?;
        catalog.set_meta("created_at", &now_secs().to_string())?;
        catalog.set_meta("chunk_layout", Layout::Flat.meta_value())?;
        drop((catalog, thread));
        ChunkStore::with_layout(path.join("chunks"), Layout::Flat)
            .create_fanout()
            .map_err(RepoError::Store)?;
        Self::open(path)
    }

    /// Open the repository at `path`.
    ///
    /// # Errors
    /// [`RepoError::NotARepository`] or catalog errors (e.g. a newer schema).
    pub fn open(path: &Path) -> Result<Self, RepoError> {
        let not_a_repository = || RepoError::NotARepository {
            path: path.to_path_buf(),
        };
        if !is_store_dir(&path.join("chunks"))? {
            return Err(not_a_repository());
        }
        let open_lock = busy_as(RepoLock::try_shared(&path.join(OPEN_LOCK)), || {
            RepoError::BeingRebuilt {
                path: path.to_path_buf(),
            }
        })?;
        if path.join(REBUILD_MARKER).exists() {
            return Err(RepoError::RebuildInterrupted {
                path: path.to_path_buf(),
            });
        }
        let db = path.join("catalog.db");
        if !db.is_file() {
            return Err(not_a_repository());
        }
        // `open.lock`, shared, is held by the catalog thread until it has closed the
        // connection: no rebuild replaces the catalog while a handle to it lives.
        let (catalog, thread) = CatalogHandle::spawn_holding(&db, open_lock)?;
        let chunk_size_bytes = catalog
            .meta("chunk_size_bytes")?
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| CatalogError::Invalid {
                path: db.clone(),
                what: "missing or invalid chunk_size_bytes".into(),
            })?;
        let layout_meta = catalog.meta("chunk_layout")?;
        let layout =
            Layout::from_meta(layout_meta.as_deref()).ok_or_else(|| CatalogError::Invalid {
                path: db.clone(),
                what: format!(
                    "unknown chunk_layout {:?}; written by a newer agent?",
                    layout_meta.unwrap_or_default()
                ),
            })?;
        let repo = Self {
            root: path.to_path_buf(),
            chunk_size_bytes,
            store: ChunkStore::with_layout(path.join("chunks"), layout)
                .with_chunk_size(chunk_size_bytes),
            catalog,
            _catalog_thread: thread,
            options: PipelineOptions::default(),
        };
        // A catalog from before schema 6 holds points' VMX and ExtraConfig (bootstrap
        // Secrets) inline. A move that fails (a GC holding the lock, a write error) is
        // logged and tried again at the next open; meanwhile the points still restore
        // from the inline copy.
        if let Err(e) = repo.move_configs_out_of_catalog() {
            tracing::warn!(
                repo = %path.display(),
                error = %verify::error_chain(&e),
                "could not move restore points' .vmx and ExtraConfig out of the catalog; \
                 trying again at the next open"
            );
        }
        Ok(repo)
    }

    /// Move the VMX and ExtraConfig a catalog from before schema 6 holds inline into each
    /// point's config file ([`point_config`]), rewrite the point's manifest without them,
    /// and clear them from the catalog (`secure_delete` zeroes the freed bytes). Then, once,
    /// scrub the file: `VACUUM` drops what points removed before schema 6 left in free
    /// pages, and a truncating checkpoint empties the WAL; `repo_meta.secrets_scrubbed`
    /// records that both ran to their end. A point being removed is left to its removal;
    /// one whose move fails is logged and left, with the scrub, for the next open. Each
    /// step can be repeated: a crash part-way loses nothing. Returns how many points were
    /// moved.
    ///
    /// # Errors
    /// Catalog errors.
    fn move_configs_out_of_catalog(&self) -> Result<usize, RepoError> {
        let ids = self.catalog.points_with_inline_config()?;
        let scrubbed = self.catalog.meta(SECRETS_SCRUBBED_KEY)?;
        if ids.is_empty() && scrubbed.as_deref() == Some(SCRUBBED) {
            return Ok(0);
        }
        // Writers hold the shared lock (the locking table in `gc`): GC removes the temp
        // files of live point directories, these moves' among them. A GC running now
        // leaves the move for the next open rather than holding this one up.
        let _shared = if ids.is_empty() {
            None
        } else {
            match RepoLock::try_shared(&self.lock_path()) {
                Ok(lock) => Some(lock),
                Err(ChunkStoreError::Busy { .. }) => {
                    tracing::info!(
                        points = ids.len(),
                        "the repository is being collected: moving points' .vmx and ExtraConfig out of the catalog at the next open"
                    );
                    return Ok(0);
                }
                Err(e) => return Err(RepoError::Lock(e)),
            }
        };
        let mut moved = 0;
        let mut failed = 0;
        for id in ids {
            let _lease = match self.lease_point(id) {
                Ok(lease) => lease,
                Err(RepoError::PointNotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            match self.move_config(id) {
                Ok(_) => moved += 1,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(
                        point = %id,
                        error = %verify::error_chain(&e),
                        "could not move the restore point's .vmx and ExtraConfig out of the \
                         catalog"
                    );
                }
            }
        }
        if moved > 0 {
            tracing::info!(
                points = moved,
                "moved restore points' .vmx and ExtraConfig out of the catalog into their \
                 config files"
            );
        }
        if failed == 0 {
            // VACUUM once (it rewrites the whole file and holds the write lock meanwhile);
            // the WAL is emptied at each open until a checkpoint gets it whole (a reader in
            // another process can hold it back).
            if moved > 0 || scrubbed.is_none() {
                self.catalog.vacuum()?;
                self.catalog.set_meta(SECRETS_SCRUBBED_KEY, VACUUMED)?;
            }
            if self.catalog.checkpoint_truncate()? {
                self.catalog.set_meta(SECRETS_SCRUBBED_KEY, SCRUBBED)?;
            } else {
                tracing::info!(
                    "the catalog's WAL is in use by another process: it is emptied at a later \
                     open"
                );
            }
        }
        Ok(moved)
    }

    /// [`Self::move_configs_out_of_catalog`] for one point, whose lease the caller holds.
    /// Returns what the catalog now holds of its configuration (none for an unknown point).
    fn move_config(&self, id: RestorePointId) -> Result<Option<PointConfig>, RepoError> {
        let Some(mut c) = self.catalog.point_config(id)? else {
            return Ok(None);
        };
        let config = Config {
            vmx: c.vmx.take(),
            extra_config: c.extra_config.take(),
            nvram: None,
            related: Vec::new(),
        };
        if config.is_empty() {
            return Ok(Some(c));
        }
        let dir = self.point_dir(id);
        let digest = point_config::write(&dir, &config)
            .map_err(|source| RepoError::Config { point: id, source })?;
        let manifest = dir.join(MANIFEST_FILE);
        if manifest.exists() {
            // Rewritten without the inline copy (a manifest never serializes it).
            let mut m = Manifest::read(&manifest)?;
            m.config_moved(digest);
            m.write(&dir)?;
        }
        self.catalog.config_moved(id, digest)?;
        c.digest = Some(digest);
        Ok(Some(c))
    }

    /// The index directory of point `id` (`indexes/<id>`).
    fn point_dir(&self, id: RestorePointId) -> PathBuf {
        self.root.join("indexes").join(id.to_string())
    }

    /// Write `point`'s VMX, ExtraConfig and NVRAM, if it has them, to its config file and
    /// leave only the file's digest in `point` (for its manifest and the catalog).
    fn keep_config(&self, point: &mut NewPoint) -> Result<bool, RepoError> {
        keep_config(&self.point_dir(point.id), point)
    }

    /// The configuration restore point `id` kept besides its disks: its VMX and NVRAM byte
    /// for byte and its ExtraConfig, read from its config file and checked against the digest the
    /// catalog holds; and the job that made it. `None` for an unknown point.
    ///
    /// # Errors
    /// Catalog errors; [`RepoError::Config`] naming the file when it is missing or damaged.
    pub fn point_config(&self, id: RestorePointId) -> Result<Option<PointConfig>, RepoError> {
        let Some(mut c) = self.catalog.point_config(id)? else {
            return Ok(None);
        };
        if let Some(digest) = &c.digest {
            let config = point_config::read(&self.point_dir(id), digest)
                .map_err(|source| RepoError::Config { point: id, source })?;
            c.vmx = config.vmx;
            c.extra_config = config.extra_config;
            c.nvram = config.nvram;
            c.related = config.related;
        }
        Ok(Some(c))
    }

    /// Override the pipeline tuning.
    pub fn set_options(&mut self, options: PipelineOptions) {
        self.options = options;
    }

    /// The repository's root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The chunk store.
    #[must_use]
    pub fn store(&self) -> &ChunkStore {
        &self.store
    }

    /// The catalog handle.
    #[must_use]
    pub fn catalog(&self) -> &CatalogHandle {
        &self.catalog
    }

    /// Chunk size fixed at init.
    #[must_use]
    pub fn chunk_size_bytes(&self) -> u32 {
        self.chunk_size_bytes
    }

    fn lock_path(&self) -> PathBuf {
        self.root.join("repo.lock")
    }

    /// The lock prunes take one after the other (`locks/prune.lock`).
    fn prune_lock_path(&self) -> Result<PathBuf, RepoError> {
        let dir = self.root.join("locks");
        fs::create_dir_all(&dir).map_err(|source| RepoError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(dir.join("prune.lock"))
    }

    /// The lease file of point `id`, its directory (`locks/`) created if need be.
    fn point_lease_path(&self, id: RestorePointId) -> Result<PathBuf, RepoError> {
        let dir = self.root.join("locks");
        fs::create_dir_all(&dir).map_err(|source| RepoError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(dir.join(format!("point-{id}.lock")))
    }

    /// Keeps restore point `id` from being removed (by `repo prune`, a policy's retention or
    /// `DELETE /v1/points/{id}`) while the lease lives: a restore holds one from its
    /// pre-flight to its end, so the point it checked is the point it writes. A shared
    /// `flock` on `locks/point-<id>.lock`, released by the kernel if the process dies;
    /// several restores of one point may hold it at once.
    ///
    /// # Errors
    /// [`RepoError::PointNotFound`] (checked once the lease is held), [`RepoError::Lock`].
    pub fn lease_point(&self, id: RestorePointId) -> Result<RepoLock, RepoError> {
        let lease = match RepoLock::try_shared(&self.point_lease_path(id)?) {
            Ok(l) => l,
            // Being removed right now.
            Err(ChunkStoreError::Busy { .. }) => return Err(RepoError::PointNotFound(id)),
            Err(e) => return Err(RepoError::Lock(e)),
        };
        if self.catalog.get_point(id)?.is_none() {
            // No lease file is left behind for a point that does not exist (GC does not
            // clean `locks/`): nobody removes a point that is not there, and a lease taken
            // on the same id meanwhile finds no point either.
            if let Ok(path) = self.point_lease_path(id) {
                let _ = fs::remove_file(path);
            }
            return Err(RepoError::PointNotFound(id));
        }
        Ok(lease)
    }

    /// For a removal of `id`: `None` while a restore holds its lease, else the exclusive
    /// lock that keeps new leases out until the removal is done; [`Self::release_removed`]
    /// after the removal. (A lease taken meanwhile finds the point gone from the catalog.)
    fn claim_for_removal(&self, id: RestorePointId) -> Result<Option<RepoLock>, RepoError> {
        match RepoLock::try_exclusive(&self.point_lease_path(id)?) {
            Ok(l) => Ok(Some(l)),
            Err(ChunkStoreError::Busy { .. }) => Ok(None),
            Err(e) => Err(RepoError::Lock(e)),
        }
    }

    /// Drops the lease file of a removed point (then its claim).
    fn release_removed(&self, id: RestorePointId, claim: RepoLock) {
        if let Ok(path) = self.point_lease_path(id) {
            let _ = fs::remove_file(path);
        }
        drop(claim);
    }

    /// Every committed restore point, oldest first.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn list(&self) -> Result<Vec<PointRecord>, RepoError> {
        Ok(self.catalog.list_points()?)
    }

    /// Open the index of `disk` of `point`, checked whole (see [`FixedIndexReader::open`]).
    ///
    /// # Errors
    /// [`RepoError::Index`] naming the point, disk and file.
    pub fn load_index(
        &self,
        point: &PointRecord,
        disk: DiskKey,
    ) -> Result<FixedIndexReader, RepoError> {
        let read = match point.disks.iter().find(|d| d.key == disk) {
            Some(d) => FixedIndexReader::open_expecting(
                &self.root.join(&d.index_path),
                self.chunk_size_bytes,
                d.capacity_bytes,
            ),
            None => FixedIndexReader::open(
                &self
                    .root
                    .join("indexes")
                    .join(point.id.to_string())
                    .join(format!("{disk}.fidx")),
            ),
        };
        read.map_err(|source| RepoError::Index {
            point: point.id,
            disk,
            source,
        })
    }

    /// Take the repository's shared lock: held by a backup from before its first chunk is
    /// written until its restore point is committed, so GC (exclusive) never sweeps chunks a
    /// backup is about to reference.
    ///
    /// # Errors
    /// [`RepoError::Lock`].
    pub fn lock_shared(&self) -> Result<RepoLock, RepoError> {
        RepoLock::shared(&self.lock_path()).map_err(RepoError::Lock)
    }

    /// Write one disk of restore point `point` (not yet committed): read `plan`'s extents
    /// from `source` through the pipeline into the chunk store, then write and fsync the
    /// disk's index file under `indexes/<point>/`. Nothing becomes visible until the caller
    /// commits a [`NewPoint`] naming the returned index. The caller holds
    /// [`Repository::lock_shared`] from before this call until after the commit.
    ///
    /// # Errors
    /// [`RepoError::Backup`] naming the VM, disk and point; [`RepoError::Index`].
    pub fn write_disk<S: DiskSource>(
        &self,
        point: RestorePointId,
        vm_name: &str,
        disk: DiskKey,
        mut source: S,
        plan: DiskPlan,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<WrittenDisk, RepoError> {
        let capacity = source.capacity_bytes();
        let wrap = |source| RepoError::Backup {
            vm: vm_name.to_owned(),
            disk,
            point,
            source,
        };
        let index_path = format!("indexes/{point}/{disk}.fidx");
        let index_file = self.root.join(&index_path);
        let index_err = |source| RepoError::IndexWrite {
            point,
            disk,
            source,
        };
        let full = |source: &mut S, allocated: Option<Vec<Extent>>| {
            let extents = match allocated {
                Some(extents) => extents,
                None => source.allocated_extents().map_err(RepoError::Source)?,
            };
            let geometry = IndexGeometry::new(self.chunk_size_bytes, capacity);
            let index = FixedIndexWriter::create(&index_file, geometry).map_err(index_err)?;
            Ok::<_, RepoError>((index, PointKind::Full, extents, None))
        };
        let mut fallback = None;
        let (mut index, kind, extents, parent) = match plan {
            DiskPlan::Incremental {
                parent_index,
                changed,
            } => match FixedIndexWriter::derive(&index_file, &parent_index, capacity) {
                Ok(index) => {
                    let mut extents = changed;
                    // A grown disk: the new area was never backed up.
                    if capacity > parent_index.disk_size_bytes() {
                        extents.push(Extent {
                            offset: parent_index.disk_size_bytes(),
                            length: capacity - parent_index.disk_size_bytes(),
                        });
                    }
                    // A shrunk one (an image file): its last slot may be shorter than the
                    // parent's chunk there, which `derive` made a hole; read it again.
                    if capacity < parent_index.disk_size_bytes()
                        && let Some(last) = index.geometry().slot_count().checked_sub(1)
                    {
                        let g = index.geometry();
                        extents.push(Extent {
                            offset: g.slot_offset(last),
                            length: g.slot_len(last),
                        });
                    }
                    (index, PointKind::Incremental, extents, Some(parent_index))
                }
                // The parent's index checked out when it was opened but not when copied (a
                // read error, bytes that changed): nothing is lost by reading everything
                // again, as when it does not open.
                Err(e) if e.path() == parent_index.path() => {
                    let why = format!(
                        "the parent's index could not be copied ({}): a full backup instead",
                        verify::error_chain(&e)
                    );
                    tracing::warn!(vm = vm_name, disk = %disk, "{why}");
                    fallback = Some(why);
                    drop(parent_index);
                    full(&mut source, None)?
                }
                Err(e) => return Err(index_err(e)),
            },
            DiskPlan::Full { allocated } => full(&mut source, allocated)?,
        };
        let mut slots = pipeline::slots_for_extents(&extents, index.geometry()).map_err(wrap)?;
        // Chunks a repair found damaged (see `repair`): an incremental reads its parent's
        // slots that hold one as well, so that unchanged data is stored again.
        let damaged = self.damaged_digests()?;
        if let Some(parent) = &parent {
            let healing = heal_slots(parent, index.geometry().slot_count(), &damaged)
                .map_err(|e| wrap(PipelineError::Index(e)))?;
            if !healing.is_empty() {
                tracing::info!(
                    vm = vm_name,
                    disk = %disk,
                    slots = healing.len(),
                    "re-reading chunks a repair found damaged"
                );
                slots = slots.union(healing);
            }
        }
        drop(parent);
        let bytes_changed = pipeline::union_bytes(&extents);
        drop(extents);
        let stats = pipeline::backup_disk(
            &self.store,
            source,
            &mut index,
            &slots,
            self.options,
            progress,
        )
        .map_err(wrap)?;
        index.finish().map_err(index_err)?;
        self.forget_healed(point, disk, &index_file, &damaged)?;
        Ok(WrittenDisk {
            kind,
            capacity_bytes: capacity,
            index_path,
            bytes_changed,
            stats,
            fallback,
        })
    }

    /// Drop the damaged records of chunks the new index (`index_file`) references intact:
    /// stored durably by the pipeline that just ran (or by a concurrent backup; the pipeline
    /// fsynced their directories too) and read back here with every check.
    fn forget_healed(
        &self,
        point: RestorePointId,
        disk: DiskKey,
        index_file: &Path,
        damaged: &HashSet<ChunkDigest>,
    ) -> Result<(), RepoError> {
        if damaged.is_empty() {
            return Ok(());
        }
        let index_err = |source| RepoError::Index {
            point,
            disk,
            source,
        };
        let mut present: HashSet<ChunkDigest> = HashSet::new();
        fixed_index::scan(index_file, |_, digest| {
            if damaged.contains(&digest) {
                present.insert(digest);
            }
        })
        .map_err(index_err)?;
        let healed: Vec<ChunkDigest> = present
            .into_iter()
            .filter(|d| match self.store.read(d) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(
                        chunk = %d,
                        error = %verify::error_chain(&e),
                        "damaged chunk still unreadable after the backup"
                    );
                    false
                }
            })
            .collect();
        if !healed.is_empty() {
            tracing::info!(chunks = healed.len(), "damaged chunks stored again");
            self.catalog.damaged_clear(healed)?;
        }
        Ok(())
    }

    /// Write the manifest of every committed point that has none (points made before
    /// manifests existed), so that `repo rebuild-catalog` can restore them too. Returns how
    /// many were written.
    fn write_missing_manifests(&self) -> Result<usize, RepoError> {
        let facts = self.repo_facts()?;
        let mut written = 0;
        for p in self.catalog.list_points()? {
            let dir = self.point_dir(p.id);
            if dir.join(MANIFEST_FILE).exists() {
                continue;
            }
            // Held while the manifest is written: a point removed meanwhile (a prune's)
            // must not get one back, in a directory of its own that a catalog rebuild
            // would then take for a point whose index does not read.
            let _lease = match self.lease_point(p.id) {
                Ok(lease) => lease,
                Err(RepoError::PointNotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            // A configuration the catalog still holds goes to the config file first; a
            // point whose move fails gets no manifest yet (one without it would lose the
            // configuration in a rebuild) and the others still do.
            let config = match self.move_config(p.id) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(
                        point = %p.id,
                        error = %verify::error_chain(&e),
                        "could not move the restore point's .vmx and ExtraConfig out of the \
                         catalog: its manifest is written once that succeeds"
                    );
                    continue;
                }
            };
            let point = NewPoint {
                id: p.id,
                vm: p.vm,
                job: config.as_ref().and_then(|c| c.job),
                parent: p.parent,
                created_at: p.created_at,
                kind: p.kind,
                reason: p.reason,
                vmx: None,
                extra_config: None,
                nvram: None,
                related: Vec::new(),
                config_digest: config.and_then(|c| c.digest),
                stats: p.stats,
                disks: p.disks,
            };
            Manifest::of(&point, facts.clone()).write(&dir)?;
            written += 1;
        }
        Ok(written)
    }

    /// Digests of the chunks a repair recorded as damaged (see [`crate::repo::repair`]).
    fn damaged_digests(&self) -> Result<HashSet<ChunkDigest>, RepoError> {
        Ok(self.damaged_records()?.into_keys().collect())
    }

    /// The damaged-chunk records as they are now: digest → when found (a repair compares
    /// them with the records after its verify, see [`repair::repair`]).
    fn damaged_records(&self) -> Result<HashMap<ChunkDigest, i64>, RepoError> {
        Ok(self
            .catalog
            .damaged_list()?
            .into_iter()
            .map(|d| (d.digest, d.detected_at))
            .collect())
    }

    fn repo_facts(&self) -> Result<RepoFacts, RepoError> {
        Ok(RepoFacts {
            repo_id: self.catalog.meta("repo_id")?.unwrap_or_default(),
            chunk_size_bytes: self.chunk_size_bytes,
            chunk_layout: self.store.layout().meta_value().to_owned(),
        })
    }

    /// Make `point` visible: write its manifest (`indexes/<point>/point.json`, see
    /// [`crate::repo::manifest`]) durably, then commit it to the catalog. Its chunks and
    /// index files must be durable already.
    ///
    /// # Errors
    /// [`RepoError::Commit`] naming the point, around the manifest's or the catalog's
    /// error; the point is not visible then.
    pub fn commit_point(&self, mut point: NewPoint) -> Result<(), RepoError> {
        let id = point.id;
        let commit = move || -> Result<(), RepoError> {
            self.keep_config(&mut point)?;
            Manifest::of(&point, self.repo_facts()?).write(&self.point_dir(point.id))?;
            self.catalog.commit_point(point)?;
            Ok(())
        };
        commit().map_err(|e| RepoError::Commit {
            point: id,
            source: Box::new(e),
        })
    }

    /// Back up `source` as a new restore point of `vm` (one disk).
    ///
    /// Order: shared lock; chunks (fsynced, renamed, directories fsynced); index file
    /// (fsynced, renamed); then one catalog transaction makes the point visible.
    ///
    /// # Errors
    /// [`RepoError::Backup`] naming the VM, disk and point; nothing becomes visible.
    pub fn backup_disk<S: DiskSource>(
        &self,
        vm: VmRecord,
        source: S,
        changed: Option<Vec<Extent>>,
        parent: Option<&PointRecord>,
        backing_file: String,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<BackupSummary, RepoError> {
        let _lock = self.lock_shared()?;
        let started = Instant::now();
        let point = RestorePointId::new_random();
        let (plan, reason) = match (changed, parent) {
            (Some(changed), Some(parent)) => (
                DiskPlan::Incremental {
                    parent_index: self.load_index(parent, IMAGE_DISK_KEY)?,
                    changed,
                },
                "changed extents given",
            ),
            (Some(_), None) => return Err(RepoError::NoParent(vm.name.clone())),
            (None, _) => (
                DiskPlan::Full { allocated: None },
                "no changed extents given",
            ),
        };
        let written = self.write_disk(point, &vm.name, IMAGE_DISK_KEY, source, plan, progress)?;
        let kind = written.kind;
        let seconds = started.elapsed().as_secs_f64();
        let parent_id = if kind == PointKind::Incremental {
            parent.map(|p| p.id)
        } else {
            None
        };
        self.commit_point(NewPoint {
            id: point,
            vm,
            job: Some(JobId::new_random()),
            parent: parent_id,
            created_at: now_secs(),
            kind,
            reason: written
                .fallback
                .clone()
                .unwrap_or_else(|| reason.to_owned()),
            vmx: None,
            extra_config: None,
            nvram: None,
            related: Vec::new(),
            config_digest: None,
            stats: serde_json::json!({ "disk": written.stats, "seconds": seconds }),
            disks: vec![DiskRecord {
                key: IMAGE_DISK_KEY,
                label: "Hard disk 1".into(),
                capacity_bytes: written.capacity_bytes,
                backing_file,
                disk_uuid: None,
                change_id: Some(ChangeId(if kind == PointKind::Full {
                    "*".into()
                } else {
                    point.to_string()
                })),
                role: DiskRole::Os,
                index_path: written.index_path,
                bytes_changed: written.bytes_changed,
                bytes_stored: written.stats.bytes_stored,
            }],
        })?;
        Ok(BackupSummary {
            point,
            kind,
            parent: parent_id,
            capacity_bytes: written.capacity_bytes,
            stats: written.stats,
            seconds,
        })
    }

    /// Image mode: back up a raw file as VM `image:<name>`.
    ///
    /// # Errors
    /// As [`Repository::backup_disk`], plus [`RepoError::PointNotFound`],
    /// [`RepoError::ParentOfAnother`] or [`RepoError::ParentWithoutChanges`] for a bad parent.
    pub fn backup_image(
        &self,
        req: &ImageBackup,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<BackupSummary, RepoError> {
        let vm = VmRecord {
            moref: VmMoref(format!("image:{}", req.name)),
            name: req.name.clone(),
            vcenter_uuid: String::new(),
            namespace: None,
        };
        let parent = match (req.parent, &req.changed) {
            (Some(id), Some(_)) => {
                let p = self
                    .catalog
                    .get_point(id)?
                    .ok_or(RepoError::PointNotFound(id))?;
                if p.vm.moref != vm.moref {
                    return Err(RepoError::ParentOfAnother {
                        point: id,
                        of: p.vm.name,
                        name: req.name.clone(),
                    });
                }
                Some(p)
            }
            (Some(id), None) => return Err(RepoError::ParentWithoutChanges(id)),
            (None, Some(_)) => {
                let newest = self
                    .catalog
                    .list_points()?
                    .into_iter()
                    .rev()
                    .find(|p| p.vm.moref == vm.moref);
                let removed = self
                    .catalog
                    .meta(&format!("{IMAGE_NEWEST_REMOVED_PREFIX}{}", vm.moref))?;
                if let Some(p) = &newest
                    && removed.is_some_and(|r| r == p.id.to_string())
                {
                    return Err(RepoError::NewestRemoved {
                        name: req.name.clone(),
                        newest: p.id,
                    });
                }
                newest
            }
            (None, None) => None,
        };
        let source = RawFileSource::open(&req.file).map_err(RepoError::Source)?;
        let backing = req.file.display().to_string();
        self.backup_disk(
            vm,
            source,
            req.changed.clone(),
            parent.as_ref(),
            backing,
            progress,
        )
    }

    /// Restore the image disk of `point` into a new raw file `out`.
    ///
    /// # Errors
    /// [`RepoError::Restore`] / [`RepoError::Index`] naming the point and disk.
    pub fn restore_image(
        &self,
        point: RestorePointId,
        out: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, RepoError> {
        self.restore_disk_to_file(point, None, out, progress)
    }

    /// Restore disk `disk` of `point` (its first disk when `None`) into the raw file `out`
    /// (sparse: zero chunks are holes). Returns the disk's size.
    ///
    /// Nothing is written before every chunk file the disk needs is found present; the
    /// image is then written to a temporary file beside `out` (`.<name>.vadp-restore-…`),
    /// made durable and renamed over `out` only once complete, so a failed restore leaves an
    /// existing `out` as it was (and needs room for both meanwhile). A symbolic link `out`
    /// is followed (the file it names is replaced, not the link); an existing `out` that is
    /// not a regular file (a block device, a directory) is refused before anything is done,
    /// as renaming over it would not write it.
    ///
    /// # Errors
    /// [`RepoError::PointNotFound`], [`RepoError::Unrestorable`] (nothing written),
    /// [`RepoError::NotAFile`], [`RepoError::Restore`] / [`RepoError::Index`] naming the
    /// point and disk.
    pub fn restore_disk_to_file(
        &self,
        point: RestorePointId,
        disk: Option<DiskKey>,
        out: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, RepoError> {
        let target = resolve_links(out).map_err(|source| RepoError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        let out = target.as_path();
        if let Ok(md) = fs::metadata(out)
            && !md.is_file()
        {
            return Err(RepoError::NotAFile {
                path: out.to_path_buf(),
                what: if md.is_dir() {
                    "a directory"
                } else {
                    "not a regular file (a device?)"
                },
            });
        }
        let _lease = self.lease_point(point)?;
        let (_lock, disk, index) = self.disk_to_restore(point, disk)?;
        let check = self.check_restorable_locked(point, &[disk], false)?;
        if let Some(first) = check.problems.first() {
            let mut first_said = first.describe();
            if let VerifyProblem::Chunk { digest, .. } = first
                && self.damaged_digests()?.contains(digest)
            {
                first_said.push_str(" (set aside as damaged by `repo verify --repair`)");
            }
            return Err(RepoError::Unrestorable {
                point,
                count: check.problems.len(),
                more: check.stopped_early,
                first: first_said,
            });
        }
        let sink_err = |e| RepoError::Restore {
            point,
            disk,
            source: RestoreError::Sink(e),
        };
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RepoError::Io { path, source }
        };
        let name = out
            .file_name()
            .ok_or_else(|| io_err(out)(std::io::ErrorKind::InvalidInput.into()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".vadp-restore-{}", uuid::Uuid::new_v4().simple()));
        let tmp = out.with_file_name(tmp_name);
        let result = RawFileSink::create(&tmp, index.disk_size_bytes())
            .map_err(sink_err)
            .and_then(|mut sink| self.restore_index(point, disk, &index, &mut sink, progress));
        let done = result.and_then(|size| {
            fs::rename(&tmp, out).map_err(io_err(out))?;
            let dir = match out.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            durable::sync_dir(dir).map_err(io_err(dir))?;
            Ok(size)
        });
        if done.is_err() {
            // Best effort: the partial image is of no use (and named as ours if it stays).
            let _ = fs::remove_file(&tmp);
        }
        done
    }

    /// Under the shared lock (returned, held by the caller for the restore): the index of
    /// disk `disk` of `point`, its first disk when `None`.
    fn disk_to_restore(
        &self,
        point: RestorePointId,
        disk: Option<DiskKey>,
    ) -> Result<(RepoLock, DiskKey, FixedIndexReader), RepoError> {
        let lock = RepoLock::shared(&self.lock_path()).map_err(RepoError::Lock)?;
        let rec = self
            .catalog
            .get_point(point)?
            .ok_or(RepoError::PointNotFound(point))?;
        let disk = disk.unwrap_or_else(|| rec.disks.first().map_or(IMAGE_DISK_KEY, |d| d.key));
        let index = self.load_index(&rec, disk)?;
        Ok((lock, disk, index))
    }

    /// Restore `index` (disk `disk` of `point`) into `sink`; returns the disk's size.
    fn restore_index(
        &self,
        point: RestorePointId,
        disk: DiskKey,
        index: &FixedIndexReader,
        sink: &mut dyn DiskSink,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, RepoError> {
        restore::restore_disk(
            &self.store,
            index,
            sink,
            self.options.hash_workers + 1,
            progress,
        )
        .map_err(|source| self.restore_error(point, disk, source))?;
        Ok(index.disk_size_bytes())
    }

    /// Name a missing chunk that a repair set aside, so the message says what to do.
    fn restore_error(
        &self,
        point: RestorePointId,
        disk: DiskKey,
        source: RestoreError,
    ) -> RepoError {
        if let RestoreError::Chunk {
            digest,
            source: ChunkStoreError::Missing { .. },
            ..
        } = &source
        {
            let digest = *digest;
            if self
                .damaged_digests()
                .is_ok_and(|damaged| damaged.contains(&digest))
            {
                return RepoError::Damaged {
                    point,
                    disk,
                    digest,
                    source,
                };
            }
        }
        RepoError::Restore {
            point,
            disk,
            source,
        }
    }

    /// Restore disk `disk` of `point` into `sink` (a VDDK disk during a VM restore), with
    /// parallel chunk prefetch and decompression; zero chunks are skipped when the sink
    /// reads unwritten ranges as zeros. Runs on the calling thread, which owns `sink`.
    /// Returns the disk's size.
    ///
    /// # Errors
    /// [`RepoError::PointNotFound`], [`RepoError::Restore`] / [`RepoError::Index`] naming
    /// the point and disk (a sink error names the disk and offset).
    pub fn restore_disk_to_sink(
        &self,
        point: RestorePointId,
        disk: DiskKey,
        sink: &mut dyn DiskSink,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, RepoError> {
        let (_lock, disk, index) = self.disk_to_restore(point, Some(disk))?;
        self.restore_index(point, disk, &index, sink, progress)
    }

    /// Verify every committed point.
    ///
    /// # Errors
    /// Catalog or lock errors; problems found are in the report.
    pub fn verify(
        &self,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<VerifyReport, RepoError> {
        let _lock = RepoLock::shared(&self.lock_path()).map_err(RepoError::Lock)?;
        self.verify_locked(
            &VerifyOptions::default(),
            &self.damaged_digests()?,
            progress,
        )
    }

    /// Verify every committed point as `options` say (`repo verify [--subset N/T]
    /// [--repair]`, the API's verify, the daemon's daily verify): re-read the chunks of the
    /// subset only (chunks recorded as damaged always), then repair if asked (see
    /// [`Repository::verify_and_repair`]). A stop before every chunk was checked returns
    /// [`RepoError::Cancelled`] and repairs nothing.
    ///
    /// # Errors
    /// [`RepoError::Lock`], catalog errors, [`RepoError::Repair`], [`RepoError::Cancelled`].
    pub fn verify_with(
        &self,
        options: &VerifyOptions<'_>,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<(VerifyReport, Option<RepairReport>), RepoError> {
        let _lock = self.lock_shared()?;
        let damaged = self.damaged_records()?;
        let always: HashSet<ChunkDigest> = damaged.keys().copied().collect();
        let report = self.verify_locked(options, &always, progress)?;
        let repaired = if options.repair {
            Some(self.repair_locked(&report, &damaged)?)
        } else {
            None
        };
        Ok((report, repaired))
    }

    /// The catalog's own check, then every point's indexes and (those `options` select)
    /// chunks.
    fn verify_locked(
        &self,
        options: &VerifyOptions<'_>,
        damaged: &HashSet<ChunkDigest>,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<VerifyReport, RepoError> {
        let catalog_problems = self.catalog.integrity_check()?;
        let points = self.catalog.list_points()?;
        crate::engine::pause_point_blocking("verify-after-list");
        if let Some(missing) = options
            .points
            .iter()
            .find(|id| !points.iter().any(|p| p.id == **id))
        {
            return Err(RepoError::PointNotFound(*missing));
        }
        let selected: HashSet<RestorePointId> = options.points.iter().copied().collect();
        let select = ChunkSelection {
            subset: options.subset,
            always: Some(damaged),
            presence_only: false,
            points: (!selected.is_empty()).then_some(&selected),
            // One pass: the points given share most of their chunks with the others.
            max_entries: None,
            // A repair needs every bad chunk.
            max_bad: None,
        };
        let mut report = verify::verify(
            &self.root,
            self.chunk_size_bytes,
            &self.store,
            &points,
            select,
            self.options.hash_workers,
            options.stop,
            progress,
        )
        .ok_or(RepoError::Cancelled)?;
        // A point deleted or pruned meanwhile (both run under the shared lock too) took its
        // index with it: that is not damage. Chunk problems stay, whoever uses the chunk.
        let surviving: HashSet<RestorePointId> =
            self.catalog.list_points()?.iter().map(|p| p.id).collect();
        report.problems.retain(|p| match p {
            VerifyProblem::Index { point, .. } | VerifyProblem::Config { point, .. } => {
                surviving.contains(point)
            }
            _ => true,
        });
        for p in &mut report.problems {
            if let VerifyProblem::Chunk { points, .. } = p {
                points.retain(|(id, _)| surviving.contains(id));
            }
        }
        let path = self.root.join("catalog.db");
        report.problems.splice(
            0..0,
            catalog_problems
                .into_iter()
                .map(|error| VerifyProblem::Catalog {
                    path: path.clone(),
                    error,
                }),
        );
        Ok(report)
    }

    /// Before a restore changes anything: the problems that would stop it part-way — an
    /// index of `disks` of `point` that does not read, a chunk they need whose file is
    /// missing (quarantined by a repair, or lost), and with `read_chunks` a chunk whose
    /// content is bad. Without `read_chunks`: one `stat` per distinct chunk, no reading (a bad
    /// chunk is then found only when the restore reads it). The check stops at
    /// [`RESTORE_CHECK_MAX_BAD`] bad chunks (`stopped_early`).
    ///
    /// # Errors
    /// [`RepoError::PointNotFound`], [`RepoError::Lock`], catalog errors.
    pub fn check_restorable(
        &self,
        point: RestorePointId,
        disks: &[DiskKey],
        read_chunks: bool,
    ) -> Result<VerifyReport, RepoError> {
        let _lock = self.lock_shared()?;
        self.check_restorable_locked(point, disks, read_chunks)
    }

    /// [`Self::check_restorable`] under a lock the caller holds.
    fn check_restorable_locked(
        &self,
        point: RestorePointId,
        disks: &[DiskKey],
        read_chunks: bool,
    ) -> Result<VerifyReport, RepoError> {
        let mut record = self
            .catalog
            .get_point(point)?
            .ok_or(RepoError::PointNotFound(point))?;
        record.disks.retain(|d| disks.contains(&d.key));
        let select = ChunkSelection {
            presence_only: !read_chunks,
            max_entries: Some(RESTORE_CHECK_MAX_DIGESTS),
            max_bad: Some(RESTORE_CHECK_MAX_BAD),
            ..ChunkSelection::default()
        };
        verify::verify(
            &self.root,
            self.chunk_size_bytes,
            &self.store,
            &[record],
            select,
            self.options.hash_workers,
            None,
            &mut |_, _| {},
        )
        .ok_or(RepoError::Cancelled)
    }

    /// Verify every committed point, then set aside what is damaged so that the next
    /// backups store it again (`repo verify --repair`, see [`crate::repo::repair`]). Takes
    /// the shared lock, like verify: backups go on meanwhile.
    ///
    /// # Errors
    /// [`RepoError::Lock`], catalog errors, [`RepoError::Repair`].
    pub fn verify_and_repair(
        &self,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<(VerifyReport, RepairReport), RepoError> {
        let _lock = self.lock_shared()?;
        let damaged = self.damaged_records()?;
        let always: HashSet<ChunkDigest> = damaged.keys().copied().collect();
        let report = self.verify_locked(&VerifyOptions::default(), &always, progress)?;
        let repaired = self.repair_locked(&report, &damaged)?;
        Ok((report, repaired))
    }

    /// Act on `report` (made under the shared lock the caller holds, re-reading the
    /// `rechecked` chunks recorded as damaged when it began), and write missing point
    /// manifests.
    fn repair_locked(
        &self,
        report: &VerifyReport,
        rechecked: &HashMap<ChunkDigest, i64>,
    ) -> Result<RepairReport, RepoError> {
        let manifests_written = self.write_missing_manifests()?;
        let mut repaired = repair::repair(
            &self.root,
            &self.store,
            &self.catalog,
            report,
            rechecked,
            now_secs(),
        )?;
        repaired.manifests_written = manifests_written;
        Ok(repaired)
    }

    /// Apply `policy` per VM at time `now`; remove unkept points unless `dry_run`.
    ///
    /// # Errors
    /// [`RepoError::Prune`] for an invalid policy, catalog errors.
    pub fn prune(
        &self,
        policy: &RetentionPolicy,
        now: i64,
        zone: &jiff::tz::TimeZone,
        dry_run: bool,
    ) -> Result<Vec<PruneDecision>, RepoError> {
        self.prune_where(policy, now, zone, dry_run, |_| true, |_| false)
    }

    /// As [`Repository::prune`], for the points `select` accepts only (a scheduling
    /// policy's retention applies to its own runs' points of its own VMs), every point of
    /// the VMs `hold` accepts kept (reason "its VM's backup failed in this run"). A held VM's points
    /// still count for its group: the points of the same jobs of the group's other VMs stay
    /// with them.
    ///
    /// # Errors
    /// As [`Repository::prune`].
    pub fn prune_where(
        &self,
        policy: &RetentionPolicy,
        now: i64,
        zone: &jiff::tz::TimeZone,
        dry_run: bool,
        select: impl Fn(&PointRecord) -> bool,
        hold: impl Fn(&VmRecord) -> bool,
    ) -> Result<Vec<PruneDecision>, RepoError> {
        policy.validate()?;
        let _lock = RepoLock::shared(&self.lock_path()).map_err(RepoError::Lock)?;
        // One prune at a time decides and removes (see the locking table in
        // `chunk_store`); a dry run removes nothing and does not wait.
        let _prune = if dry_run {
            None
        } else {
            Some(RepoLock::exclusive(&self.prune_lock_path()?).map_err(RepoError::Lock)?)
        };
        // Pass after pass while one had to leave removals for the next (each pass holds an
        // open claim per point it removes: see `MAX_REMOVALS_PER_PASS`), and removed some.
        let mut removed = Vec::new();
        loop {
            let (decisions, deferred) =
                self.prune_pass(policy, now, zone, dry_run, &select, &hold)?;
            if deferred && decisions.iter().any(|d| !d.keep) {
                removed.extend(decisions.into_iter().filter(|d| !d.keep));
                continue;
            }
            removed.extend(decisions);
            return Ok(removed);
        }
    }

    /// One pass of [`Self::prune_where`], under its locks: its decisions, and whether
    /// removals were left for another pass.
    fn prune_pass(
        &self,
        policy: &RetentionPolicy,
        now: i64,
        zone: &jiff::tz::TimeZone,
        dry_run: bool,
        select: &dyn Fn(&PointRecord) -> bool,
        hold: &dyn Fn(&VmRecord) -> bool,
    ) -> Result<(Vec<PruneDecision>, bool), RepoError> {
        let points: Vec<PointRecord> = self
            .catalog
            .list_points()?
            .into_iter()
            .filter(|p| select(p))
            .collect();
        // A VM is its moref within its vCenter (the catalog's key): two vCenters' `vm-42`
        // are two VMs, each with its own retention.
        let vm_key = |p: &PointRecord| (p.vm.vcenter_uuid.clone(), p.vm.moref.clone());
        let mut vms: Vec<(String, VmMoref)> = points.iter().map(vm_key).collect();
        vms.sort();
        vms.dedup();
        let mut decisions = Vec::new();
        for vm in vms {
            let of_vm: Vec<(RestorePointId, i64)> = points
                .iter()
                .filter(|p| vm_key(p) == vm)
                .map(|p| (p.id, p.created_at))
                .collect();
            let held = points
                .iter()
                .find(|p| vm_key(p) == vm)
                .is_some_and(|p| hold(&p.vm));
            let mut of_vm = prune::select(&of_vm, policy, now, zone);
            if held {
                for d in of_vm.iter_mut().filter(|d| !d.keep) {
                    d.keep = true;
                    d.reasons.push("its VM's backup failed in this run");
                }
            }
            decisions.extend(of_vm);
        }
        let job_of: HashMap<RestorePointId, &str> = points
            .iter()
            .filter_map(|p| Some((p.id, p.stats.get("job")?.as_str()?)))
            .collect();
        // A group's points stay together: when a job's point of one VM is kept, its points
        // of the others are too. Otherwise a day (or week) kept through one job for a VM
        // and through another for the next, say a job that failed for that one, would leave
        // the group no common point in time. Judged before the claims, so that no claim
        // goes to a point its partner keeps.
        keep_job_partners(&job_of, &mut decisions);
        // A point a restore is reading stays, until the next prune, and its group's points
        // with it (judged again below). Each claim is an open file until its point is
        // removed: past `MAX_REMOVALS_PER_PASS` the others wait for the next pass, in job
        // order (the cut falls in one job at most). A point left for the next pass is not
        // a kept point: its partners are removed now all the same.
        let mut claims = HashMap::new();
        let mut later = Vec::new();
        if !dry_run {
            let mut order: Vec<usize> = (0..decisions.len())
                .filter(|&i| !decisions[i].keep)
                .collect();
            order.sort_by_key(|&i| (job_of.get(&decisions[i].id).copied(), decisions[i].id));
            for i in order {
                if claims.len() >= MAX_REMOVALS_PER_PASS {
                    later.push(i);
                    continue;
                }
                let d = &mut decisions[i];
                match self.claim_for_removal(d.id)? {
                    Some(claim) => {
                        claims.insert(d.id, claim);
                    }
                    None => {
                        d.keep = true;
                        d.reasons.push("being restored");
                    }
                }
            }
            keep_job_partners(&job_of, &mut decisions);
        }
        let mut deferred = false;
        for i in later {
            let d = &mut decisions[i];
            if !d.keep {
                d.keep = true;
                d.reasons.push("left for the prune's next pass");
                deferred = true;
            }
        }
        if !dry_run {
            // The claims of points kept through a partner are let go unused, now: held on
            // through the removals below, they would answer a restore of such a point
            // "not found" and a delete "being restored".
            let removing: Vec<(RestorePointId, RepoLock)> = decisions
                .iter()
                .filter(|d| !d.keep)
                .filter_map(|d| claims.remove(&d.id).map(|c| (d.id, c)))
                .collect();
            drop(claims);
            if !removing.is_empty() {
                self.catalog
                    .delete_points(removing.iter().map(|(id, _)| *id).collect())?;
                for (id, claim) in removing {
                    self.remove_index_dir(id);
                    self.release_removed(id, claim);
                }
            }
        }
        Ok((decisions, deferred))
    }

    /// Garbage-collect under the exclusive lock.
    ///
    /// # Errors
    /// [`RepoError::Lock`] (busy), [`RepoError::Gc`].
    pub fn gc(&self) -> Result<GcReport, RepoError> {
        let _lock = RepoLock::try_exclusive(&self.lock_path()).map_err(RepoError::Lock)?;
        // Read under the lock: every removal of points holds the shared lock, so none
        // happens between here and the clear below.
        let pending = self.catalog.meta(GC_PENDING_KEY)?;
        // A damaged catalog can leave restore points (or their disks) out of the list
        // below, and their chunks would be swept.
        let problems = self.catalog.integrity_check()?;
        if !problems.is_empty() {
            return Err(GcError::CatalogUnsound { problems }.into());
        }
        let points = self.catalog.list_points()?;
        let report = gc::collect(&self.root, &self.store, &points, &self.damaged_digests()?)?;
        if !report.damaged_forgotten.is_empty() {
            self.catalog
                .damaged_clear(report.damaged_forgotten.clone())?;
        }
        if let Some(since) = pending {
            self.catalog.clear_meta_if(GC_PENDING_KEY, &since)?;
        }
        Ok(report)
    }

    /// When restore points were first removed (by prune or [`Repository::delete_point`])
    /// since the last successful GC, in Unix seconds: until GC runs, their chunks take space.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn gc_pending_since(&self) -> Result<Option<i64>, RepoError> {
        Ok(self
            .catalog
            .meta(GC_PENDING_KEY)?
            .and_then(|v| v.parse().ok()))
    }

    /// Remove one restore point (its catalog rows, then its index directory) under the
    /// shared lock; whether it existed. Its chunks go at the next GC.
    ///
    /// # Errors
    /// [`RepoError::PointInUse`] while a restore holds its lease ([`Self::lease_point`]),
    /// [`RepoError::Lock`], catalog errors.
    pub fn delete_point(&self, id: RestorePointId) -> Result<bool, RepoError> {
        let _lock = RepoLock::shared(&self.lock_path()).map_err(RepoError::Lock)?;
        let Some(claim) = self.claim_for_removal(id)? else {
            return Err(RepoError::PointInUse(id));
        };
        let deleted = self.catalog.delete_points(vec![id])? > 0;
        if deleted {
            self.remove_index_dir(id);
        }
        self.release_removed(id, claim);
        Ok(deleted)
    }

    /// After the points' catalog commit: a crash or an error here leaves an orphan index
    /// directory, which GC removes.
    fn remove_index_dir(&self, id: RestorePointId) {
        let dir = self.point_dir(id);
        if let Err(e) = fs::remove_dir_all(&dir) {
            tracing::warn!(path = %dir.display(), error = %e, "index dir left for gc");
        }
    }

    /// Repository facts.
    ///
    /// # Errors
    /// Catalog errors or [`RepoError::Io`] listing the chunk store.
    pub fn info(&self) -> Result<RepoInfo, RepoError> {
        let points = self.catalog.list_points()?.len();
        let (mut chunk_files, mut chunk_bytes) = (0, 0);
        let mut stack = vec![self.store.root().to_path_buf()];
        while let Some(dir) = stack.pop() {
            let rd = fs::read_dir(&dir).map_err(|source| RepoError::Io {
                path: dir.clone(),
                source,
            })?;
            for e in rd.flatten() {
                let Ok(md) = e.metadata() else { continue };
                if md.is_dir() {
                    stack.push(e.path());
                } else {
                    chunk_files += 1;
                    chunk_bytes += md.len();
                }
            }
        }
        Ok(RepoInfo {
            path: self.root.clone(),
            chunk_size_bytes: self.chunk_size_bytes,
            schema_version: crate::repo::catalog::LATEST_VERSION,
            points,
            chunk_files,
            chunk_bytes,
            damaged_chunks: self.damaged_digests()?.len(),
            gc_pending_since: self.gc_pending_since()?,
            quarantined_files: match fs::read_dir(self.root.join(repair::QUARANTINE_DIR)) {
                Ok(rd) => rd.count(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(source) => {
                    return Err(RepoError::Io {
                        path: self.root.join(repair::QUARANTINE_DIR),
                        source,
                    });
                }
            },
        })
    }

    /// Rebuild `catalog.db` of the repository at `path` from its point manifests
    /// (`vadp-agent repo rebuild-catalog`): a new catalog, built aside in
    /// `catalog.db.rebuild`, gets the repository's settings from the manifests and every
    /// point whose manifest and index files read; then, under the `catalog.rebuilding`
    /// marker, the old catalog files are renamed aside (`catalog.db.damaged-<unix time>`,
    /// with `.1`, `.2`, … added if taken, and its `-wal`, `-shm`, `-journal` named after it)
    /// and the new one into place. Job history, the journal, the daemon's queue and
    /// damaged-chunk records are not in manifests and start empty. Takes the exclusive lock
    /// and `open.lock` exclusively (no other process may have the repository open). Refuses
    /// a catalog that opens and passes SQLite's checks unless `force` or an interrupted
    /// rebuild left its marker.
    ///
    /// # Errors
    /// [`RepoError::NotARepository`], [`RepoError::Lock`] (busy), [`RepoError::InUse`],
    /// [`RepoError::CatalogSound`], [`RepoError::Io`], catalog errors.
    pub fn rebuild_catalog(path: &Path, force: bool) -> Result<RebuildReport, RepoError> {
        let indexes = path.join("indexes");
        if !is_store_dir(&path.join("chunks"))? || !is_store_dir(&indexes)? {
            return Err(RepoError::NotARepository {
                path: path.to_path_buf(),
            });
        }
        let _lock = RepoLock::try_exclusive(&path.join("repo.lock")).map_err(RepoError::Lock)?;
        let _open_lock = busy_as(RepoLock::try_exclusive(&path.join(OPEN_LOCK)), || {
            RepoError::InUse {
                path: path.to_path_buf(),
            }
        })?;
        let db = path.join("catalog.db");
        let marker = path.join(REBUILD_MARKER);
        let resumed = marker.exists();
        if db.is_file() && !resumed {
            match Catalog::open(&db) {
                // Never replaced by an older format: its journal, queue and the manifests
                // of the points it lists may be of a format this agent does not know.
                Err(e @ CatalogError::NewerVersion { .. }) => return Err(e.into()),
                Ok(c) => {
                    let sound = c.integrity_check().is_ok_and(|p| p.is_empty());
                    if sound && !force {
                        return Err(RepoError::CatalogSound { path: db });
                    }
                }
                // A catalog that does not open for another reason than damage (permissions,
                // a lock, an I/O error) is not replaced unless asked.
                Err(CatalogError::Sql { source, .. }) if !force && !is_damage(&source) => {
                    return Err(RepoError::CatalogUnopenable { path: db, source });
                }
                Err(_) => {}
            }
        }
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| RepoError::Io { path: p, source }
        };
        let mut report = RebuildReport {
            resumed,
            ..RebuildReport::default()
        };
        let mut found: Vec<Manifest> = Vec::new();
        let mut unreadable: Vec<PathBuf> = Vec::new();
        let mut dirs: Vec<fs::DirEntry> = fs::read_dir(&indexes)
            .map_err(io(&indexes))?
            .collect::<Result<_, _>>()
            .map_err(io(&indexes))?;
        dirs.sort_by_key(fs::DirEntry::file_name);
        for dir in dirs {
            let name = dir.file_name().to_string_lossy().into_owned();
            let manifest_path = dir.path().join(MANIFEST_FILE);
            let checked = Manifest::read(&manifest_path)
                .map_err(|e| verify::error_chain(&e))
                .and_then(|m| {
                    if m.point.id.to_string() != name {
                        return Err(format!(
                            "{} names point {}",
                            manifest_path.display(),
                            m.point.id
                        ));
                    }
                    for d in &m.point.disks {
                        FixedIndexReader::open_expecting(
                            &path.join(&d.index_path),
                            m.repo.chunk_size_bytes,
                            d.capacity_bytes,
                        )
                        .map_err(|e| verify::error_chain(&e))?;
                    }
                    if let Some(first) = found.first()
                        && first.repo != m.repo
                    {
                        return Err(format!(
                            "{} describes another repository ({:?}, not {:?})",
                            manifest_path.display(),
                            m.repo,
                            first.repo
                        ));
                    }
                    Ok(m)
                });
            match checked {
                Ok(m) => found.push(m),
                Err(why) => {
                    // With a manifest the point may have been committed, and so may one
                    // with index files and no manifest (a point from before manifests, in a
                    // repository upgraded and not yet repaired): its directory goes where GC
                    // does not sweep (see below). A directory with neither holds nothing.
                    let has_index = fs::read_dir(dir.path()).is_ok_and(|entries| {
                        entries
                            .flatten()
                            .any(|e| e.path().extension().is_some_and(|x| x == "fidx"))
                    });
                    if manifest_path.exists() || has_index {
                        unreadable.push(dir.path());
                    }
                    report.skipped.push((name, why));
                }
            }
        }
        let Some(facts) = found.first().map(|m| m.repo.clone()) else {
            return Err(CatalogError::Invalid {
                path: indexes,
                what: "no readable point manifest to rebuild the catalog from".into(),
            }
            .into());
        };
        // The points that do not read leave `indexes/` before the new catalog, which does
        // not list them, replaces the old one: GC would take them for a killed backup's
        // leftovers and sweep the chunks only they use. In `unreadable-points/` GC refuses to run
        // until a person has looked at each.
        if !unreadable.is_empty() {
            let quarantine = path.join(gc::QUARANTINE_DIR);
            durable::create_dir_all(&quarantine)
                .map_err(|(path, source)| RepoError::Io { path, source })?;
            for from in unreadable {
                let name = from.file_name().unwrap_or_default().to_owned();
                let mut to = quarantine.join(&name);
                for n in 1.. {
                    if !to.exists() {
                        break;
                    }
                    to = quarantine.join(format!("{}.{n}", name.to_string_lossy()));
                }
                durable::rename_noreplace(&from, &to).map_err(io(&to))?;
                report.quarantined.push(to);
            }
            durable::sync_dir(&quarantine).map_err(io(&quarantine))?;
            durable::sync_dir(&indexes).map_err(io(&indexes))?;
        }
        // Oldest first, and a parent before its children when both have the same second.
        found.sort_by_key(|m| (m.point.created_at, m.point.id));
        let ids: HashSet<RestorePointId> = found.iter().map(|m| m.point.id).collect();
        let mut ordered: Vec<Manifest> = Vec::with_capacity(found.len());
        let mut emitted = HashSet::new();
        while !found.is_empty() {
            let ready = found
                .iter()
                .position(|m| {
                    m.point
                        .parent
                        .is_none_or(|p| emitted.contains(&p) || !ids.contains(&p))
                })
                .unwrap_or(0);
            let m = found.remove(ready);
            emitted.insert(m.point.id);
            ordered.push(m);
        }
        let found = ordered;
        // The new catalog is built aside and renamed into place whole, so the catalog is
        // either the old one or the complete new one; the marker covers the renames.
        let temp = path.join(REBUILD_TEMP);
        for suffix in CATALOG_SUFFIXES {
            let stale = path.join(format!("{REBUILD_TEMP}{suffix}"));
            durable::remove_if_exists(&stale).map_err(io(&stale))?;
        }
        let mut catalog = Catalog::open(&temp)?;
        catalog.set_meta("chunk_size_bytes", &facts.chunk_size_bytes.to_string())?;
        catalog.set_meta("repo_id", &facts.repo_id)?;
        let created = found.first().map_or_else(now_secs, |m| m.point.created_at);
        catalog.set_meta("created_at", &created.to_string())?;
        catalog.set_meta("chunk_layout", &facts.chunk_layout)?;
        for m in &found {
            let mut point = m.to_new_point();
            // A manifest from before schema 6 holds the configuration inline: it goes to
            // the point's config file, and the manifest is written again without it.
            let dir = path.join("indexes").join(point.id.to_string());
            if keep_config(&dir, &mut point)? {
                let mut rewritten = m.clone();
                rewritten.config_moved(point.config_digest.expect("just written"));
                rewritten.write(&dir)?;
            }
            catalog.commit_point(&point)?;
            report.points.push(m.point.id);
        }
        catalog.close_as_single_file()?;
        fs::File::open(&temp)
            .and_then(|f| f.sync_all())
            .map_err(io(&temp))?;
        durable::write_file(&marker, b"a catalog rebuild is replacing catalog.db\n")
            .map_err(|(path, source)| RepoError::Io { path, source })?;
        crate::engine::crash_point("rebuild-marked");
        // Aside as `catalog.db.damaged-<time>` with its `-wal`, `-shm` and `-journal` files
        // named after it, so that SQLite opens it whole; never over an earlier one.
        let stamp = now_secs();
        let mut tag = stamp.to_string();
        for n in 1.. {
            // A name none of the four files has, so that a file left from an earlier set-aside
            // (a `-wal` whose database went aside a second before a crash) never pairs up.
            if !CATALOG_SUFFIXES
                .iter()
                .any(|s| path.join(format!("catalog.db.damaged-{tag}{s}")).exists())
            {
                break;
            }
            tag = format!("{stamp}.{n}");
        }
        for suffix in CATALOG_SUFFIXES
            .into_iter()
            .filter(|s| path.join(format!("catalog.db{s}")).exists())
        {
            let old = path.join(format!("catalog.db{suffix}"));
            let aside = path.join(format!("catalog.db.damaged-{tag}{suffix}"));
            durable::rename_noreplace(&old, &aside).map_err(io(&aside))?;
            report.old_catalog.push(aside);
        }
        fs::rename(&temp, &db).map_err(io(&db))?;
        durable::sync_dir(path).map_err(io(path))?;
        crate::engine::crash_point("rebuild-renamed");
        fs::remove_file(&marker).map_err(io(&marker))?;
        durable::sync_dir(path).map_err(io(path))?;
        Ok(report)
    }
}

/// Write `point`'s VMX, ExtraConfig and NVRAM, if it has them, to its config file in `dir`
/// (its index directory) and leave only the file's digest in `point`. Returns whether
/// there was anything to write.
fn keep_config(dir: &Path, point: &mut NewPoint) -> Result<bool, RepoError> {
    let config = Config {
        vmx: point.vmx.take(),
        extra_config: point.extra_config.take(),
        nvram: point.nvram.take(),
        related: std::mem::take(&mut point.related),
    };
    if config.is_empty() {
        return Ok(false);
    }
    let digest = point_config::write(dir, &config).map_err(|source| RepoError::Config {
        point: point.id,
        source,
    })?;
    point.config_digest = Some(digest);
    Ok(true)
}

/// Whether SQLite's error says the database file is damaged (rather than unreadable for
/// another reason).
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Whether `dir` is a directory: `false` when it is not there or is something else; an
/// error that says why when it cannot be looked at (a repository the user may not enter is
/// a permission error naming the path, not "not a repository").
fn is_store_dir(dir: &Path) -> Result<bool, RepoError> {
    match std::fs::metadata(dir) {
        Ok(m) => Ok(m.is_dir()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(false)
        }
        Err(source) => Err(RepoError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::catalog::sample_point;

    /// Other users cannot read a new repository, whatever the umask.
    #[test]
    fn a_new_repository_shuts_other_users_out() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let _repo = Repository::init(&root, 64 << 10).unwrap();
        let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o007, 0, "{mode:o}");
    }

    /// The catalog's files are closed, and `open.lock` released, only when the last handle
    /// to the catalog is gone: a rebuild (another process) must not rename a catalog that a
    /// handle may still write to, and whoever drops the repository finds the files at rest.
    #[test]
    fn the_catalog_stays_locked_until_its_last_handle_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let repo = Repository::init(&root, 64 << 10).unwrap();
        repo.catalog().set_meta("probe", "1").unwrap();
        let handle = repo.catalog().clone();
        drop(repo);
        assert!(RepoLock::try_exclusive(&root.join(OPEN_LOCK)).is_err());
        assert_eq!(handle.meta("probe").unwrap().as_deref(), Some("1"));
        drop(handle);
        // That thread closes on its own now; wait for it to let the lock go.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while RepoLock::try_exclusive(&root.join(OPEN_LOCK)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "open.lock never released"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let repo = Repository::open(&root).unwrap();
        repo.catalog().set_meta("probe", "2").unwrap();
        assert!(root.join("catalog.db-wal").exists());
        drop(repo);
        assert!(!root.join("catalog.db-wal").exists());
        assert!(RepoLock::try_exclusive(&root.join(OPEN_LOCK)).is_ok());
    }

    /// A group backed up by job J1 (both VMs) and, later the same day, by J2 that failed
    /// for VM b: keep-daily keeps J2 for a and J1 for b, and then J1 for a as well, so the
    /// group keeps a common point in time.
    #[test]
    fn prune_keeps_the_points_of_a_job_together() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&dir.path().join("repo"), 64 << 10).unwrap();
        let day = 86_400;
        let (j1, j2) = ("job-1", "job-2");
        let mut ids = HashMap::new();
        for (vm, job, at) in [
            ("a", j1, 10 * day + 60),
            ("b", j1, 10 * day + 60),
            ("a", j2, 10 * day + 3600),
        ] {
            let mut point = sample_point(vm, at);
            point.stats = serde_json::json!({"job": job});
            ids.insert((vm, job), point.id);
            repo.catalog().commit_point(point).unwrap();
        }
        // Older points of a and b, each its own job, that go.
        for vm in ["a", "b"] {
            repo.catalog()
                .commit_point(sample_point(vm, 5 * day))
                .unwrap();
        }
        let policy = RetentionPolicy {
            keep_last: 0,
            keep_daily: 1,
            keep_weekly: 0,
            keep_monthly: 0,
            min_age_secs: 3 * day,
        };
        let utc = jiff::tz::TimeZone::UTC;
        let decisions = repo.prune(&policy, 100 * day, &utc, false).unwrap();
        let reasons = |id: &RestorePointId| {
            decisions
                .iter()
                .find(|d| d.id == *id)
                .map(|d| d.reasons.clone())
                .unwrap()
        };
        assert_eq!(reasons(&ids[&("a", j2)]), vec!["daily"]);
        assert_eq!(reasons(&ids[&("b", j1)]), vec!["daily"]);
        assert_eq!(
            reasons(&ids[&("a", j1)]),
            vec!["same job as a kept point of the group"]
        );
        assert_eq!(repo.catalog().list_points().unwrap().len(), 3);
    }

    /// More removals than one pass claims (3 in tests, 256 otherwise: each claim is an open
    /// file) are made in several passes, a group's points still removed or kept together:
    /// every removal is done, none is reported as left for later, and the kept point's
    /// job partner stays.
    #[test]
    fn a_prune_with_more_removals_than_a_pass_makes_several() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&dir.path().join("repo"), 64 << 10).unwrap();
        let day = 86_400;
        let mut newest = HashMap::new();
        for n in 0..5 {
            let job = format!("job-{n}");
            for vm in ["a", "b"] {
                let mut point = sample_point(vm, (10 + n) * day);
                point.stats = serde_json::json!({"job": job});
                newest.insert(vm, point.id);
                repo.catalog().commit_point(point).unwrap();
            }
        }
        // A group job of five VMs, more than a pass removes, all of whose points go (each
        // VM has a newer point of its own): split over passes, and removed whole.
        for vm in ["c1", "c2", "c3", "c4", "c5"] {
            let mut old = sample_point(vm, 9 * day);
            old.stats = serde_json::json!({"job": "job-big"});
            repo.catalog().commit_point(old).unwrap();
            let mut new = sample_point(vm, 20 * day);
            new.stats = serde_json::json!({"job": format!("solo-{vm}")});
            repo.catalog().commit_point(new).unwrap();
        }
        // b's newest is gone already: a keeps the last job's point, b its own newest, and
        // a keeps that job's point too (its partner).
        repo.delete_point(newest["b"]).unwrap();
        let policy = RetentionPolicy {
            keep_last: 1,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            min_age_secs: 3 * day,
        };
        let utc = jiff::tz::TimeZone::UTC;
        let decisions = repo.prune(&policy, 100 * day, &utc, false).unwrap();
        assert_eq!(decisions.len(), 19, "{decisions:?}");
        let removed = decisions.iter().filter(|d| !d.keep).count();
        assert_eq!(removed, 11, "{decisions:?}");
        assert!(
            decisions
                .iter()
                .all(|d| !d.reasons.iter().any(|r| r.contains("next pass"))),
            "{decisions:?}"
        );
        let left: Vec<_> = repo.catalog().list_points().unwrap();
        assert_eq!(left.len(), 8, "{left:?}");
        let jobs: HashSet<_> = left
            .iter()
            .map(|p| p.stats["job"].as_str().unwrap().to_owned())
            .collect();
        let mut expected = HashSet::from(["job-4".to_owned(), "job-3".to_owned()]);
        expected.extend(["c1", "c2", "c3", "c4", "c5"].map(|vm| format!("solo-{vm}")));
        assert_eq!(jobs, expected);
    }

    /// A group whose VM b failed in the run that applies retention: b keeps every point,
    /// and a keeps its points of the jobs b's points come from, so the group still has
    /// those points in time in common.
    #[test]
    fn a_vm_held_from_prune_keeps_its_group_partners() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&dir.path().join("repo"), 64 << 10).unwrap();
        let day = 86_400;
        let mut ids = HashMap::new();
        for (n, job) in ["job-1", "job-2", "job-3"].into_iter().enumerate() {
            let at = (10 + 10 * i64::try_from(n).unwrap()) * day;
            for vm in ["a", "b"] {
                let mut point = sample_point(vm, at);
                point.stats = serde_json::json!({"job": job});
                ids.insert((vm, job), point.id);
                repo.catalog().commit_point(point).unwrap();
            }
        }
        // The run that applies retention backed up a alone (job-4).
        let mut point = sample_point("a", 40 * day);
        point.stats = serde_json::json!({"job": "job-4"});
        ids.insert(("a", "job-4"), point.id);
        repo.catalog().commit_point(point).unwrap();
        let policy = RetentionPolicy {
            keep_last: 1,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            min_age_secs: 3 * day,
        };
        let utc = jiff::tz::TimeZone::UTC;
        let decisions = repo
            .prune_where(
                &policy,
                100 * day,
                &utc,
                false,
                |_| true,
                |vm| vm.name == "b",
            )
            .unwrap();
        let reasons = |vm: &'static str, job: &'static str| {
            decisions
                .iter()
                .find(|d| d.id == ids[&(vm, job)])
                .map(|d| d.reasons.clone())
                .unwrap()
        };
        assert_eq!(
            reasons("b", "job-1"),
            vec!["its VM's backup failed in this run"]
        );
        assert_eq!(reasons("b", "job-3"), vec!["last"]);
        assert_eq!(reasons("a", "job-4"), vec!["last"]);
        assert_eq!(
            reasons("a", "job-1"),
            vec!["same job as a kept point of the group"]
        );
        assert_eq!(repo.catalog().list_points().unwrap().len(), 7);
        // Backed up again, b is pruned like a.
        let decisions = repo
            .prune_where(&policy, 100 * day, &utc, false, |_| true, |_| false)
            .unwrap();
        assert_eq!(decisions.iter().filter(|d| !d.keep).count(), 4);
        assert_eq!(repo.catalog().list_points().unwrap().len(), 3);
    }

    /// A point kept only because a restore reads it keeps its group's points too: the
    /// application being restored from that point in time has all of it.
    #[test]
    fn a_point_being_restored_keeps_its_group_partners() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&dir.path().join("repo"), 64 << 10).unwrap();
        let day = 86_400;
        let mut ids = HashMap::new();
        for (n, job) in ["job-1", "job-2"].into_iter().enumerate() {
            let at = (10 + 10 * i64::try_from(n).unwrap()) * day;
            for vm in ["a", "b"] {
                let mut point = sample_point(vm, at);
                point.stats = serde_json::json!({"job": job});
                ids.insert((vm, job), point.id);
                repo.catalog().commit_point(point).unwrap();
            }
        }
        let policy = RetentionPolicy {
            keep_last: 1,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            min_age_secs: 3 * day,
        };
        let utc = jiff::tz::TimeZone::UTC;
        let lease = repo.lease_point(ids[&("a", "job-1")]).unwrap();
        let decisions = repo.prune(&policy, 100 * day, &utc, false).unwrap();
        let reasons = |vm: &'static str, job: &'static str| {
            decisions
                .iter()
                .find(|d| d.id == ids[&(vm, job)])
                .map(|d| d.reasons.clone())
                .unwrap()
        };
        assert_eq!(reasons("a", "job-1"), vec!["being restored"]);
        assert_eq!(
            reasons("b", "job-1"),
            vec!["same job as a kept point of the group"]
        );
        assert_eq!(repo.catalog().list_points().unwrap().len(), 4);
        // The restore ended: both go at the next prune.
        drop(lease);
        let decisions = repo.prune(&policy, 100 * day, &utc, false).unwrap();
        assert_eq!(decisions.iter().filter(|d| !d.keep).count(), 2);
        assert_eq!(repo.catalog().list_points().unwrap().len(), 2);
    }

    /// Two prunes decide one after the other: one waits while another holds the prune
    /// lock, and then decides on the points the other left. (A dry run does not wait.)
    #[test]
    fn a_prune_waits_for_another_prune() {
        let dir = tempfile::tempdir().unwrap();
        let repo =
            std::sync::Arc::new(Repository::init(&dir.path().join("repo"), 64 << 10).unwrap());
        let day = 86_400;
        for n in 0..3 {
            repo.catalog()
                .commit_point(sample_point("a", (10 + n) * day))
                .unwrap();
        }
        let policy = RetentionPolicy {
            keep_last: 1,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            min_age_secs: 3 * day,
        };
        let utc = jiff::tz::TimeZone::UTC;
        let other = RepoLock::try_exclusive(&repo.prune_lock_path().unwrap()).unwrap();
        let dry = repo.prune(&policy, 100 * day, &utc, true).unwrap();
        assert_eq!(dry.iter().filter(|d| !d.keep).count(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = {
            let repo = std::sync::Arc::clone(&repo);
            std::thread::spawn(move || {
                let r = repo.prune(&policy, 100 * day, &utc, false).unwrap();
                tx.send(()).unwrap();
                r
            })
        };
        // Held: the prune cannot have removed anything (however long this waits).
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err()
        );
        assert_eq!(repo.catalog().list_points().unwrap().len(), 3);
        drop(other);
        let decisions = waiting.join().unwrap();
        assert_eq!(decisions.iter().filter(|d| !d.keep).count(), 2);
        assert_eq!(repo.catalog().list_points().unwrap().len(), 1);
    }

    #[test]
    fn prune_counts_the_same_moref_of_two_vcenters_as_two_vms() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&dir.path().join("repo"), 64 << 10).unwrap();
        let day = 86_400;
        for vcenter in ["vc-a", "vc-b"] {
            for n in 0..3 {
                let mut point = sample_point("web", day * (10 + n));
                point.vm.moref = VmMoref("vm-42".into());
                point.vm.vcenter_uuid = vcenter.into();
                repo.catalog().commit_point(point).unwrap();
            }
        }
        let policy = RetentionPolicy {
            keep_last: 3,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            min_age_secs: 3 * day,
        };
        let decisions = repo
            .prune(&policy, 100 * day, &jiff::tz::TimeZone::UTC, false)
            .unwrap();
        assert_eq!(decisions.len(), 6);
        assert!(decisions.iter().all(|d| d.keep), "{decisions:?}");
        assert_eq!(repo.catalog().list_points().unwrap().len(), 6);
    }
}
