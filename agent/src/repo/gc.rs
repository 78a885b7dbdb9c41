//! Garbage collection: mark every chunk referenced by a committed index, sweep the rest.
//!
//! Runs under the exclusive repository lock (see the table in `chunk_store`): no backup is in
//! flight, so every temp file (`.tmp-*` chunk, `*.tmp-*` index or manifest, in any index
//! directory) is stale whatever its age (the grace period is zero because the lock, not a
//! clock, proves there is no writer), and every `indexes/<point>` directory not in the
//! catalog is the leftover of a killed backup or an interrupted prune. If any committed index
//! cannot be read, GC stops before sweeping anything: its mark set would be incomplete. For
//! the same reason it does not run on a catalog that fails SQLite's checks, nor when a live
//! point's directory holds an index file the catalog does not name, nor while `unreadable-points/`
//! holds points `repo rebuild-catalog` could not read: in each case some restore point's
//! chunks would look like garbage.
//! Damaged-chunk records (`repo verify --repair`) of chunks no committed index references
//! any more are returned for the caller to drop: no backup will read them again, so no
//! backup would drop them.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ids::{ChunkDigest, DiskKey, RestorePointId};
use crate::repo::catalog::PointRecord;
use crate::repo::chunk_store::{ChunkStore, TEMP_PREFIX};
use crate::repo::durable;
use crate::repo::fixed_index::{self, FixedIndexError};

/// Where `repo rebuild-catalog` moves the directories of restore points it could not read
/// (under the repository root); GC does not run while it holds any.
pub const QUARANTINE_DIR: &str = "unreadable-points";

/// Errors of GC; nothing was swept if the error came from marking.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// A committed index is unreadable; nothing was swept.
    #[error("restore point {point} disk {disk}: cannot mark, nothing swept")]
    Index {
        /// The point.
        point: RestorePointId,
        /// The disk.
        disk: DiskKey,
        /// The index error (names the file).
        #[source]
        source: FixedIndexError,
    },
    /// The catalog fails its checks: the restore points it cannot show would be taken for
    /// garbage. Nothing was swept.
    #[error(
        "the catalog fails its checks ({}), and GC would take the restore points it cannot \
         show for garbage; nothing swept (run `repo verify`, then `repo rebuild-catalog`)",
        problems.join("; ")
    )]
    CatalogUnsound {
        /// What the checks found.
        problems: Vec<String>,
    },
    /// A live restore point's directory holds an index file its catalog record does not
    /// name: the catalog lost a disk of the point. Nothing was swept.
    #[error(
        "restore point {point}: {} is in its index directory but not in the catalog; \
         nothing swept (`repo rebuild-catalog --force` restores the catalog from the \
         points' manifests)",
        file.display()
    )]
    UnlistedIndex {
        /// The point.
        point: RestorePointId,
        /// The index file.
        file: PathBuf,
    },
    /// `repo rebuild-catalog` set aside restore points it could not read; their chunks are
    /// in no catalog, so a sweep would delete them. Nothing was swept.
    #[error(
        "{} holds {count} restore point(s) `repo rebuild-catalog` could not read; GC would \
         delete the chunks only they use, so it does not run until each is looked at and \
         removed from there",
        dir.display()
    )]
    Quarantined {
        /// The quarantine directory.
        dir: PathBuf,
        /// How many points are in it.
        count: usize,
    },
    /// Listing a live restore point's index directory failed. Nothing was swept.
    #[error("restore point {point}: list its index directory {path}; nothing swept")]
    PointDir {
        /// The point.
        point: RestorePointId,
        /// Its directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Listing, removing or syncing a file or directory failed.
    #[error("{what} {path}")]
    Io {
        /// What GC was doing: `list`, `remove`, `fsync`, `read the type of`.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// What GC did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Chunks referenced by committed indexes (counted by the first 8 bytes of their
    /// digests, see `MarkSet`).
    pub chunks_marked: usize,
    /// Chunk files kept.
    pub chunks_kept: usize,
    /// Chunk files removed.
    pub chunks_removed: usize,
    /// Bytes of removed chunk files.
    pub bytes_removed: u64,
    /// Temp files removed.
    pub temp_files_removed: usize,
    /// Orphan index directories removed.
    pub orphan_indexes_removed: usize,
    /// Damaged-chunk records no restore point needs any more.
    pub damaged_forgotten: Vec<ChunkDigest>,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> GcError + 'a {
    move |source| GcError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn read_dir(path: &Path) -> Result<Vec<fs::DirEntry>, GcError> {
    read_dir_io(path).map_err(io_err("list", path))
}

fn read_dir_io(path: &Path) -> io::Result<Vec<fs::DirEntry>> {
    match fs::read_dir(path) {
        Ok(rd) => rd.collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The chunks marked live, each by the first 8 bytes of its digest: 10–19 bytes per chunk
/// in the table (9 per bucket, the table between 7/16 and 7/8 full), against 38–69 for
/// whole digests (a repository of 50 million chunks marks in 0.5–1 GB, not 2–3.5 GB). Two chunks whose digests share their first 8 bytes
/// (about one chance in 2^64 per pair of a repository's chunks: BLAKE3 digests are uniform)
/// only make a garbage chunk look live, kept as long as its twin is: never a live one
/// removed.
#[derive(Debug, Default)]
struct MarkSet(HashSet<u64>);

impl MarkSet {
    fn key(digest: &ChunkDigest) -> u64 {
        digest.word(0)
    }

    fn insert(&mut self, digest: ChunkDigest) {
        self.0.insert(Self::key(&digest));
    }

    fn contains(&self, digest: &ChunkDigest) -> bool {
        self.0.contains(&Self::key(digest))
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Mark and sweep; `damaged` are the digests of the catalog's damaged-chunk records. The
/// caller holds the exclusive lock.
///
/// # Errors
/// [`GcError`]; a marking error means nothing was removed.
pub fn collect(
    root: &Path,
    store: &ChunkStore,
    points: &[PointRecord],
    damaged: &HashSet<ChunkDigest>,
) -> Result<GcReport, GcError> {
    let quarantine = root.join(QUARANTINE_DIR);
    let quarantined = read_dir(&quarantine)?.len();
    if quarantined > 0 {
        return Err(GcError::Quarantined {
            dir: quarantine,
            count: quarantined,
        });
    }
    let mut marked = MarkSet::default();
    let mut live_points: HashSet<String> = HashSet::new();
    for p in points {
        live_points.insert(p.id.to_string());
        // Every index file in the point's directory is one the catalog names.
        let dir = root.join("indexes").join(p.id.to_string());
        let files = read_dir_io(&dir).map_err(|source| GcError::PointDir {
            point: p.id,
            path: dir.clone(),
            source,
        })?;
        for f in files {
            let path = f.path();
            let listed = p.disks.iter().any(|d| root.join(&d.index_path) == path);
            if !listed && path.extension().is_some_and(|e| e == "fidx") {
                return Err(GcError::UnlistedIndex {
                    point: p.id,
                    file: path,
                });
            }
        }
        for d in &p.disks {
            let index_err = |source| GcError::Index {
                point: p.id,
                disk: d.key,
                source,
            };
            // One pass: on a corrupt index the error stops GC before it sweeps anything,
            // and the digests marked from it meanwhile only keep chunks.
            fixed_index::scan(&root.join(&d.index_path), |_, digest| {
                if !digest.is_zero() {
                    marked.insert(digest);
                }
            })
            .map_err(index_err)?;
        }
    }
    let mut damaged_forgotten: Vec<ChunkDigest> = damaged
        .iter()
        .filter(|d| !marked.contains(d))
        .copied()
        .collect();
    damaged_forgotten.sort_unstable();
    let mut report = GcReport {
        chunks_marked: marked.len(),
        damaged_forgotten,
        ..GcReport::default()
    };
    // Orphan index directories first, durably: each holds a point manifest, and
    // `repo rebuild-catalog` must not find one whose chunks the sweep below removed (a GC
    // that stops part-way would otherwise leave exactly that).
    let indexes = root.join("indexes");
    for dir in read_dir(&indexes)? {
        let name = dir.file_name().to_string_lossy().into_owned();
        let path = dir.path();
        if !dir
            .file_type()
            .map_err(io_err("read the type of", &path))?
            .is_dir()
        {
            // Not a point's directory: a temp file of ours goes, anything else is left
            // (and must not stop every GC from then on).
            if durable::is_temp_name(&name) {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                report.temp_files_removed += 1;
            } else {
                tracing::warn!(path = %path.display(), "unexpected file among the indexes, left alone");
            }
            continue;
        }
        if !live_points.contains(&name) {
            fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
            report.orphan_indexes_removed += 1;
        } else {
            // A live point's directory keeps the temp file of a manifest or index write
            // that was killed before its rename (a repair writing a missing manifest).
            for f in read_dir(&path)? {
                if durable::is_temp_name(&f.file_name().to_string_lossy()) {
                    let temp = f.path();
                    fs::remove_file(&temp).map_err(io_err("remove", &temp))?;
                    report.temp_files_removed += 1;
                }
            }
        }
    }
    // Always: prune and point removal do not fsync `indexes/` after removing a directory,
    // and a removal lost in a power cut after this sweep would bring back a manifest
    // whose chunks are gone.
    if indexes.is_dir() {
        durable::sync_dir(&indexes).map_err(io_err("fsync", &indexes))?;
    }
    // Chunk directories at the layout's depth, then the files in them.
    let mut dirs = vec![store.root().to_path_buf()];
    for _ in 0..store.layout().depth() {
        let mut next = Vec::new();
        for dir in &dirs {
            for e in read_dir(dir)? {
                if e.file_type()
                    .map_err(io_err("read the type of", &e.path()))?
                    .is_dir()
                {
                    next.push(e.path());
                } else {
                    tracing::warn!(path = %e.path().display(), "unexpected file in chunk store, left alone");
                }
            }
        }
        dirs = next;
    }
    for dir in &dirs {
        for f in read_dir(dir)? {
            let path = f.path();
            let name = f.file_name();
            let name = name.to_string_lossy();
            let garbage = if name.starts_with(TEMP_PREFIX) {
                report.temp_files_removed += 1;
                true
            } else {
                match name.parse::<ChunkDigest>() {
                    Ok(d) if marked.contains(&d) => false,
                    Ok(_) => {
                        report.chunks_removed += 1;
                        report.bytes_removed += f.metadata().map_or(0, |m| m.len());
                        true
                    }
                    Err(_) => {
                        tracing::warn!(path = %path.display(), "unknown file in chunk store, left alone");
                        false
                    }
                }
            };
            if garbage {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            } else {
                report.chunks_kept += 1;
            }
        }
    }
    Ok(report)
}
