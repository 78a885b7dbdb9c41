//! Verify: read every index of every committed restore point, then re-read, check and re-hash
//! every referenced chunk (in parallel), and report each bad index and each bad or missing
//! chunk with every restore point (and disk) that references it. `Repository::verify` first
//! runs SQLite's own checks on the catalog ([`VerifyProblem::Catalog`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use crate::ids::{ChunkDigest, DiskKey, RestorePointId};
use crate::repo::catalog::PointRecord;
use crate::repo::chunk_store::{ChunkStore, ChunkStoreError};
use crate::repo::fixed_index::FixedIndex;

/// One problem found by verify.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VerifyProblem {
    /// SQLite finds the catalog inconsistent: restore points may be missing or wrong.
    Catalog {
        /// The database file.
        path: PathBuf,
        /// What SQLite reports.
        error: String,
    },
    /// An index file is missing or corrupt: the whole disk of that point is unrestorable.
    Index {
        /// The point.
        point: RestorePointId,
        /// The disk.
        disk: DiskKey,
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        error: String,
    },
    /// A chunk is missing, corrupt or unreadable.
    Chunk {
        /// The chunk.
        digest: ChunkDigest,
        /// Its file.
        path: PathBuf,
        /// Missing, corrupt or unreadable.
        state: ChunkState,
        /// What is wrong.
        error: String,
        /// Every (point, disk) referencing it.
        points: Vec<(RestorePointId, DiskKey)>,
    },
}

/// What is wrong with a chunk verify reports.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ChunkState {
    /// The file is absent.
    Missing,
    /// The file's header, checksum, compression or content digest is wrong.
    Corrupt,
    /// The file could not be read (an I/O or permission error): it may be intact.
    Unreadable,
}

impl ChunkState {
    fn of(e: &ChunkStoreError) -> Self {
        match e {
            ChunkStoreError::Missing { .. } => Self::Missing,
            ChunkStoreError::Corrupt { .. } => Self::Corrupt,
            _ => Self::Unreadable,
        }
    }
}

impl Serialize for ChunkDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// Result of a verify run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct VerifyReport {
    /// Restore points checked.
    pub points: usize,
    /// Distinct chunks checked.
    pub chunks: usize,
    /// Problems, indexes first.
    pub problems: Vec<VerifyProblem>,
}

impl VerifyReport {
    /// Whether everything is intact.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verify `points` against `store`; index paths are relative to `root`.
#[must_use]
pub fn verify(
    root: &Path,
    store: &ChunkStore,
    points: &[PointRecord],
    workers: usize,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> VerifyReport {
    let mut report = VerifyReport {
        points: points.len(),
        ..VerifyReport::default()
    };
    let mut refs: BTreeMap<ChunkDigest, Vec<(RestorePointId, DiskKey)>> = BTreeMap::new();
    for p in points {
        for d in &p.disks {
            let path = root.join(&d.index_path);
            match FixedIndex::read(&path) {
                Ok(index) => {
                    for slot in index.slots().iter().filter(|s| !s.is_zero()) {
                        let users = refs.entry(*slot).or_default();
                        if users.last() != Some(&(p.id, d.key)) {
                            users.push((p.id, d.key));
                        }
                    }
                }
                Err(e) => report.problems.push(VerifyProblem::Index {
                    point: p.id,
                    disk: d.key,
                    path,
                    error: error_chain(&e),
                }),
            }
        }
    }
    let digests: Vec<ChunkDigest> = refs.keys().copied().collect();
    report.chunks = digests.len();
    let next = AtomicUsize::new(0);
    let bad: Mutex<Vec<(ChunkDigest, ChunkState, String)>> = Mutex::new(Vec::new());
    let done = AtomicUsize::new(0);
    let progress = Mutex::new(progress);
    let total = digests.len() as u64;
    std::thread::scope(|scope| {
        for n in 0..workers.max(1) {
            let (next, bad, done, digests, progress) = (&next, &bad, &done, &digests, &progress);
            let spawned = std::thread::Builder::new()
                .name(format!("chunk-verify/{n}"))
                .spawn_scoped(scope, move || {
                    while let Some(d) = digests.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if let Err(e) = store.read(d) {
                            bad.lock().expect("not poisoned").push((
                                *d,
                                ChunkState::of(&e),
                                error_chain(&e),
                            ));
                        }
                        let n = done.fetch_add(1, Ordering::Relaxed) as u64 + 1;
                        if n.is_multiple_of(64) || n == total {
                            (progress.lock().expect("not poisoned"))(n, total);
                        }
                    }
                });
            if spawned.is_err() {
                // Fewer workers: the others (or the next loop) take the work.
                tracing::warn!("could not start chunk-verify/{n}");
            }
        }
    });
    // If no worker could start, check on this thread.
    while let Some(d) = digests.get(next.fetch_add(1, Ordering::Relaxed)) {
        if let Err(e) = store.read(d) {
            bad.lock()
                .expect("not poisoned")
                .push((*d, ChunkState::of(&e), error_chain(&e)));
        }
    }
    let mut bad = bad.into_inner().expect("not poisoned");
    bad.sort();
    for (digest, state, error) in bad {
        report.problems.push(VerifyProblem::Chunk {
            digest,
            path: store.chunk_path(&digest),
            state,
            error,
            points: refs.remove(&digest).unwrap_or_default(),
        });
    }
    report
}

/// `error: cause: cause` on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
