//! Verify: read every index of every committed restore point, then re-read, check and re-hash
//! every referenced chunk (in parallel), and report each bad index and each bad or missing
//! chunk with every restore point (and disk) that references it. `Repository::verify` first
//! runs SQLite's own checks on the catalog ([`VerifyProblem::Catalog`]).
//!
//! A [`VerifySubset`] `N/T` re-reads only the chunks in bucket `N` of `T` (by digest), and
//! checks that every other referenced chunk file exists: running `1/T` … `T/T` on successive
//! days reads the whole repository once every `T` days, at `1/T` of the cost per run.
//! Chunks recorded as damaged are always re-read.
//!
//! Memory: one entry per distinct chunk to check (a `BTreeSet` of digests, about 50 bytes
//! each: 2.5 GB for 50 million chunks, 50 TB of distinct data at 1 MiB), never one per
//! reference (every index is a full image, so references grow with points × chunks). An
//! index is read a block at a time, never whole. With [`ChunkSelection::max_entries`] (a
//! restore's check of its point) the chunks are checked in passes, a share of the digests
//! each, so that the set stays under that size whatever the disks' size. The points that
//! use a bad chunk are found at the end by reading the indexes again, for the bad chunks
//! only.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use crate::ids::{ChunkDigest, DiskKey, RestorePointId};
use crate::repo::catalog::PointRecord;
use crate::repo::chunk_store::{ChunkStore, ChunkStoreError};
use crate::repo::fixed_index::{FixedIndexError, FixedIndexReader};
use crate::repo::point_config;

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
    /// A point's config file (its `.vmx` and ExtraConfig) is missing or damaged: a restore
    /// of the VM from that point, which needs them, is refused.
    Config {
        /// The point.
        point: RestorePointId,
        /// The file.
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

impl VerifyProblem {
    /// One line for an error message: the disk and what is wrong (its file, digest).
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Chunk {
                error, points: at, ..
            } => match at.first() {
                Some((_, disk)) => format!("disk {disk}: {error}"),
                None => error.clone(),
            },
            Self::Index { disk, error, .. } => format!("disk {disk}: index: {error}"),
            Self::Config { error, .. } => format!(".vmx and ExtraConfig: {error}"),
            Self::Catalog { path, error } => format!("{}: {error}", path.display()),
        }
    }
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

/// The share of chunks a verify re-reads: bucket `n` of `of` (`N/T`, 1 ≤ N ≤ T), by the
/// first 8 bytes of the digest. Every referenced chunk outside it is checked for presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifySubset {
    /// Which bucket, from 1.
    pub n: u32,
    /// How many buckets.
    pub of: u32,
}

impl VerifySubset {
    /// Most buckets a subset may have.
    pub const MAX_BUCKETS: u32 = 10_000;

    /// Bucket `n` of `of`.
    ///
    /// # Errors
    /// Unless 1 ≤ `n` ≤ `of` ≤ [`VerifySubset::MAX_BUCKETS`].
    pub fn new(n: u32, of: u32) -> Result<Self, String> {
        if n == 0 || of == 0 || n > of || of > Self::MAX_BUCKETS {
            return Err(format!(
                "subset {n}/{of}: expected N/T with 1 <= N <= T <= {}",
                Self::MAX_BUCKETS
            ));
        }
        Ok(Self { n, of })
    }

    /// Whether `digest` falls in this subset.
    #[must_use]
    pub fn contains(&self, digest: &ChunkDigest) -> bool {
        digest.word(0) % u64::from(self.of) == u64::from(self.n - 1)
    }
}

impl FromStr for VerifySubset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("subset {s:?}: expected N/T, e.g. 3/7");
        let (n, of) = s.trim().split_once('/').ok_or_else(bad)?;
        let n = n.trim().parse().map_err(|_| bad())?;
        let of = of.trim().parse().map_err(|_| bad())?;
        Self::new(n, of)
    }
}

impl fmt::Display for VerifySubset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.n, self.of)
    }
}

impl Serialize for VerifySubset {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which chunks a verify re-reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkSelection<'a> {
    /// Only these (and `always`); `None`: every chunk.
    pub subset: Option<VerifySubset>,
    /// Re-read whatever the subset (chunks recorded as damaged).
    pub always: Option<&'a HashSet<ChunkDigest>>,
    /// Read none (but `always`): only check that every chunk file exists.
    pub presence_only: bool,
    /// Only the chunks these points reference (and `always`); `None`: every point's. The
    /// other points' indexes are still read, so a problem names every point it affects.
    pub points: Option<&'a HashSet<RestorePointId>>,
    /// Check the chunks in passes, each of one share of the digests (by their second 8
    /// bytes), reading the indexes again for each, so that no pass holds many more than
    /// this many digests, whatever the disks' size; `None`: one pass. The number of passes
    /// comes from the chunks the selected points' indexes reference, counted with repeats:
    /// right for one point's disks (a restore's check), far too many passes for a whole
    /// repository, whose points share most of their chunks.
    pub max_entries: Option<usize>,
    /// Stop checking once this many bad chunks are found ([`VerifyReport::stopped_early`]
    /// then says so): enough to refuse a restore, without holding a problem for every chunk
    /// of a disk whose chunks are all gone (a store not mounted). `None`: check every chunk
    /// (a repair needs every bad one).
    pub max_bad: Option<usize>,
}

impl ChunkSelection<'_> {
    fn reads(&self, digest: &ChunkDigest) -> bool {
        (!self.presence_only && self.subset.is_none_or(|s| s.contains(digest)))
            || self.always.is_some_and(|a| a.contains(digest))
    }
}

/// Result of a verify run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct VerifyReport {
    /// Restore points checked.
    pub points: usize,
    /// Distinct chunks checked (read, or only found present outside the subset).
    pub chunks: usize,
    /// Of those, chunks re-read and re-hashed.
    pub chunks_read: usize,
    /// The subset re-read, if not every chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<VerifySubset>,
    /// Problems, indexes first.
    pub problems: Vec<VerifyProblem>,
    /// Whether the check stopped at [`ChunkSelection::max_bad`] bad chunks: there may be
    /// more.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stopped_early: bool,
}

impl VerifyReport {
    /// Whether everything is intact.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Asked between chunks whether to give up (a cancelled job).
pub type StopCheck<'a> = &'a (dyn Fn() -> bool + Sync);

/// Verify `points` against `store` (re-reading the chunks `select` picks, checking that
/// the others exist); index paths are relative to `root`, and each index's header must
/// agree with the repository's `chunk_size_bytes` and its disk's size in the catalog.
/// Progress counts the chunks read. `None` if `stop` said so before every chunk was
/// checked.
#[must_use]
#[allow(clippy::too_many_arguments)] // the verify's inputs; a struct would only rename them
pub fn verify(
    root: &Path,
    chunk_size_bytes: u32,
    store: &ChunkStore,
    points: &[PointRecord],
    select: ChunkSelection<'_>,
    workers: usize,
    stop: Option<StopCheck<'_>>,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Option<VerifyReport> {
    let stopped = || stop.is_some_and(|f| f());
    let mut report = VerifyReport {
        points: points.len(),
        subset: select.subset,
        ..VerifyReport::default()
    };
    // The distinct chunks to check, and nothing per reference: every index is a full
    // image, so a chunk is referenced by nearly every point of its disk, and a map to its
    // users would grow with points × chunks. Who uses a bad chunk is found at the end, by
    // a second pass over the indexes for the (few) bad ones.
    let selected = |p: &RestorePointId| select.points.is_none_or(|s| s.contains(p));
    // With `max_entries`, the selected points' indexes are opened (and checked) once, to
    // count the passes, and kept open for them: each pass reads each once more.
    let mut opened: HashMap<(RestorePointId, DiskKey), FixedIndexReader> = HashMap::new();
    let passes = match select.max_entries {
        Some(cap) => {
            for p in points.iter().filter(|p| selected(&p.id)) {
                for d in &p.disks {
                    let path = root.join(&d.index_path);
                    if let Ok(index) =
                        FixedIndexReader::open_expecting(&path, chunk_size_bytes, d.capacity_bytes)
                    {
                        opened.insert((p.id, d.key), index);
                    }
                }
            }
            let referenced: u64 = opened.values().map(|i| i.data_slots() as u64).sum();
            referenced.div_ceil(cap.max(1) as u64).max(1)
        }
        None => 1,
    };
    let enough = |bad: &Mutex<Vec<(ChunkDigest, ChunkState, String)>>| {
        select
            .max_bad
            .is_some_and(|max| bad.lock().expect("not poisoned").len() >= max)
    };
    if let Some(selected) = select.points {
        report.points = points.iter().filter(|p| selected.contains(&p.id)).count();
    }
    let bad: Mutex<Vec<(ChunkDigest, ChunkState, String)>> = Mutex::new(Vec::new());
    let mut failed_indexes: HashSet<(RestorePointId, DiskKey)> = HashSet::new();
    let mut progress = Progress {
        report: progress,
        done: 0,
        total: 0,
    };
    for pass in 0..passes {
        let in_pass = |d: &ChunkDigest| passes == 1 || d.word(1) % passes == pass;
        let mut referenced: BTreeSet<ChunkDigest> = BTreeSet::new();
        for p in points {
            for d in &p.disks {
                if failed_indexes.contains(&(p.id, d.key)) {
                    continue;
                }
                let path = root.join(&d.index_path);
                let all = selected(&p.id);
                let mut scan = |index: &FixedIndexReader| {
                    for slot in index.slots() {
                        let (_, digest) = slot?;
                        if !digest.is_zero()
                            && in_pass(&digest)
                            && (all || select.always.is_some_and(|a| a.contains(&digest)))
                        {
                            referenced.insert(digest);
                        }
                    }
                    Ok::<_, FixedIndexError>(())
                };
                let scanned = match opened.get(&(p.id, d.key)) {
                    Some(index) => scan(index),
                    None => {
                        FixedIndexReader::open_expecting(&path, chunk_size_bytes, d.capacity_bytes)
                            .and_then(|index| scan(&index))
                    }
                };
                if let Err(e) = scanned {
                    failed_indexes.insert((p.id, d.key));
                    report.problems.push(VerifyProblem::Index {
                        point: p.id,
                        disk: d.key,
                        path,
                        error: error_chain(&e),
                    });
                }
            }
        }
        report.chunks += referenced.len();
        let digests: Vec<ChunkDigest> = referenced
            .iter()
            .filter(|d| select.reads(d))
            .copied()
            .collect();
        report.chunks_read += digests.len();
        for d in referenced.iter().filter(|d| !select.reads(d)) {
            if enough(&bad) {
                break;
            }
            if let Err(e) = store.check_present(d) {
                bad.lock()
                    .expect("not poisoned")
                    .push((*d, ChunkState::of(&e), error_chain(&e)));
            }
        }
        drop(referenced);
        let enough = || enough(&bad);
        if !read_chunks(
            store,
            &digests,
            workers,
            &stopped,
            &enough,
            &mut progress,
            &bad,
        ) {
            return None;
        }
        if enough() {
            report.stopped_early = true;
            break;
        }
    }
    drop(opened);
    check_configs(root, points, &select, &mut report);
    let mut bad = bad.into_inner().expect("not poisoned");
    bad.sort();
    let mut users = users_of(
        root,
        chunk_size_bytes,
        points,
        bad.iter().map(|(d, _, _)| *d).collect(),
    );
    for (digest, state, error) in bad {
        report.problems.push(VerifyProblem::Chunk {
            digest,
            path: store.chunk_path(&digest),
            state,
            error,
            points: users.remove(&digest).unwrap_or_default(),
        });
    }
    Some(report)
}

/// Each selected point's config file: read and checked as a chunk is, whole when its
/// digest is in the subset (every one without a subset), else only found present.
fn check_configs(
    root: &Path,
    points: &[PointRecord],
    select: &ChunkSelection<'_>,
    report: &mut VerifyReport,
) {
    for p in points {
        let Some(digest) = &p.config_digest else {
            continue;
        };
        if select
            .points
            .is_some_and(|selected| !selected.contains(&p.id))
        {
            continue;
        }
        let dir = root.join("indexes").join(p.id.to_string());
        let path = point_config::path_in(&dir);
        let checked = if select.reads(digest) {
            point_config::read(&dir, digest).map(drop)
        } else {
            point_config::check_present(&dir)
        };
        if let Err(e) = checked {
            report.problems.push(VerifyProblem::Config {
                point: p.id,
                path,
                error: error_chain(&e),
            });
        }
    }
}

/// Progress over every pass: chunks read, of those known so far.
struct Progress<'a> {
    report: &'a mut (dyn FnMut(u64, u64) + Send),
    done: u64,
    total: u64,
}

/// Re-read and re-hash `digests` on `workers` threads, adding each bad one to `bad`, until
/// `enough` says so; `false` if `stopped` said so before every one was read.
fn read_chunks(
    store: &ChunkStore,
    digests: &[ChunkDigest],
    workers: usize,
    stopped: &(dyn Fn() -> bool + Sync),
    enough: &(dyn Fn() -> bool + Sync),
    progress: &mut Progress<'_>,
    bad: &Mutex<Vec<(ChunkDigest, ChunkState, String)>>,
) -> bool {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let before = progress.done;
    progress.total += digests.len() as u64;
    let total = progress.total;
    let last = digests.len() as u64;
    // With the highest count reported so far: workers that count at once report in order.
    let reported = Mutex::new((&mut *progress.report, before));
    let check = |d: &ChunkDigest| {
        if let Err(e) = store.read(d) {
            bad.lock()
                .expect("not poisoned")
                .push((*d, ChunkState::of(&e), error_chain(&e)));
        }
        let n = done.fetch_add(1, Ordering::Relaxed) as u64 + 1;
        if n.is_multiple_of(64) || n == last {
            let mut p = reported.lock().expect("not poisoned");
            let now = before + done.load(Ordering::Relaxed) as u64;
            if now > p.1 {
                p.1 = now;
                (p.0)(now, total);
            }
        }
    };
    std::thread::scope(|scope| {
        for n in 0..workers.max(1) {
            let (next, check) = (&next, &check);
            let spawned = std::thread::Builder::new()
                .name(format!("chunk-verify/{n}"))
                .spawn_scoped(scope, move || {
                    while let Some(d) = digests.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if stopped() || enough() {
                            return;
                        }
                        check(d);
                    }
                });
            if spawned.is_err() {
                // Fewer workers: the others (or the loop below) take the work.
                tracing::warn!("could not start chunk-verify/{n}");
            }
        }
    });
    // If no worker could start, check on this thread.
    while let Some(d) = digests.get(next.fetch_add(1, Ordering::Relaxed)) {
        if stopped() || enough() {
            break;
        }
        check(d);
    }
    let done = done.into_inner();
    progress.done = before + done as u64;
    done == digests.len() || !stopped()
}

/// Every point and disk whose index references one of `digests` (the bad chunks), read
/// again from the indexes (those that do not read were reported already).
fn users_of(
    root: &Path,
    chunk_size_bytes: u32,
    points: &[PointRecord],
    digests: BTreeSet<ChunkDigest>,
) -> BTreeMap<ChunkDigest, Vec<(RestorePointId, DiskKey)>> {
    let mut users: BTreeMap<ChunkDigest, Vec<(RestorePointId, DiskKey)>> =
        digests.into_iter().map(|d| (d, Vec::new())).collect();
    if users.is_empty() {
        return users;
    }
    for p in points {
        for d in &p.disks {
            let path = root.join(&d.index_path);
            let Ok(index) =
                FixedIndexReader::open_expecting(&path, chunk_size_bytes, d.capacity_bytes)
            else {
                continue;
            };
            for slot in index.slots() {
                let Ok((_, digest)) = slot else {
                    break;
                };
                if let Some(u) = users.get_mut(&digest)
                    && u.last() != Some(&(p.id, d.key))
                {
                    u.push((p.id, d.key));
                }
            }
        }
    }
    users
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_parse_and_partition_the_chunks() {
        let s: VerifySubset = " 3/7 ".parse().unwrap();
        assert_eq!((s.n, s.of), (3, 7));
        assert_eq!(s.to_string(), "3/7");
        assert_eq!(serde_json::to_value(s).unwrap(), "3/7");
        for bad in ["0/7", "8/7", "7", "a/b", "1/0", "1/10001", "-1/3", ""] {
            let e = bad.parse::<VerifySubset>().unwrap_err();
            assert!(e.contains("subset"), "{bad}: {e}");
        }
        // Every digest is in exactly one of 1/T … T/T, and the buckets are not lopsided.
        let of = 5;
        let mut sizes = [0usize; 5];
        for i in 0u32..1000 {
            let d = ChunkDigest::of(&i.to_le_bytes());
            let hits: Vec<u32> = (1..=of)
                .filter(|&n| VerifySubset::new(n, of).unwrap().contains(&d))
                .collect();
            assert_eq!(hits.len(), 1, "{d:?} in {hits:?}");
            sizes[hits[0] as usize - 1] += 1;
        }
        assert!(sizes.iter().all(|&n| (150..=250).contains(&n)), "{sizes:?}");
        let all = VerifySubset::new(1, 1).unwrap();
        assert!(all.contains(&ChunkDigest::of(b"x")));
    }
}
