//! Backup data pipeline for one disk (ARCHITECTURE §3):
//!
//! ```text
//! disk-read ─bounded─▶ chunk-hash/<n> ─bounded─▶ chunk-write/<n> ─bounded─▶ caller (index)
//! (owns the source,    (zero check, BLAKE3,      (temp files, made        (fills slots,
//!  whole chunks)        dedupe, zstd)             durable in batches,      progress)
//!                                                 renamed)
//! ```
//!
//! Buffers come from two pools with a fixed cap, so memory is bounded by the caps times the
//! chunk size, whatever the disk size. A pool makes a buffer only when none is free (so a
//! backup whose writers keep up uses a few), and nothing is allocated per chunk:
//!
//! - *frames* hold a chunk header followed by the plain data, read in place. A chunk stored
//!   raw (random or already compressed data) gets its header written in front of the data
//!   and goes to the writer as it is: the data is never copied in user space.
//! - *output buffers* receive compressed chunks (header + zstd frame).
//!
//! Every buffer goes back to its pool once its chunk is hashed, deduplicated or written.
//! A writer makes its new chunk files durable a batch at a time (`sync_batch_bytes`, see
//! `ChunkStore::publish`) and reports a chunk only once it is durable under its name.
//! The first error, or a stage's panic, raises an abort flag; every stage stops doing work,
//! drains its input and exits (one waiting for a pool's buffer gives up, since a stage that
//! died may hold some for good); the first error is returned. Chunk directories touched are fsynced at the end,
//! before the caller commits the point.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, SendError, Sender, bounded};
use serde::Serialize;

use crate::ids::ChunkDigest;
use crate::repo::aligned::{AlignedBuf, BufferPool};
use crate::repo::chunk::{self, ChunkEncoder, ChunkError, Encoded, HEADER_LEN};
use crate::repo::chunk_store::{self, ChunkStore, ChunkStoreError};
use crate::repo::fixed_index::{FixedIndexError, FixedIndexWriter, IndexGeometry};
use crate::repo::source::{DiskSource, Extent, SourceError};

/// Errors of the backup pipeline; the caller adds the VM, disk and restore point.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Reading the disk failed.
    #[error("read disk")]
    Source(#[source] SourceError),
    /// Writing a chunk failed.
    #[error("store chunk")]
    Store(#[source] ChunkStoreError),
    /// Compressing the chunk at `offset` failed.
    #[error("encode chunk at offset {offset}")]
    Encode {
        /// Disk offset of the chunk.
        offset: u64,
        /// The encoder error.
        #[source]
        source: ChunkError,
    },
    /// A pipeline thread could not start, or panicked (the other stages then stop as for
    /// any error, and nothing is committed).
    #[error("pipeline thread {0}")]
    Thread(String),
    /// Reading the parent's index or writing the new one failed.
    #[error("the disk's index")]
    Index(#[source] FixedIndexError),
    /// An extent lies beyond the end of the disk.
    #[error("extent [{offset}, +{length}) is beyond the disk's {capacity_bytes} bytes")]
    ExtentOutOfRange {
        /// Extent offset.
        offset: u64,
        /// Extent length.
        length: u64,
        /// Disk capacity.
        capacity_bytes: u64,
    },
}

/// Tuning of the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct PipelineOptions {
    /// `chunk-hash` workers.
    pub hash_workers: usize,
    /// `chunk-write` workers (I/O bound: they mostly wait in fsync).
    pub write_workers: usize,
    /// Depth of each bounded queue ...
    pub queue_depth: usize,
    /// ... except the writers' queue, which holds at least this many bytes of chunks (and
    /// at least `queue_depth` per writer).
    ///
    /// Random and already-compressed data need only a digest before they are written, so
    /// a run of such chunks reaches the writers as fast as the disk can read and faster
    /// than it can write, while text keeps the hash workers busy and the writers idle. On
    /// the 2 GiB benchmark image, with room for 4 chunks the two hash workers together
    /// spent 0.4–0.6 s waiting to hand chunks over; with 16 MiB, 0.07–0.12 s. The full
    /// backup's median went from 2.43 to 2.35 s in four alternating runs each, and its peak
    /// RSS from 33 to 50–52 MB (buffers are made on demand, see `BufferPool`; an incremental of
    /// 20 changed extents stays at 24–25 MB) (`docs/benchmarks.md`).
    pub write_queue_bytes: usize,
    /// Each writer makes its new chunks durable together once it holds this many bytes of
    /// them (and at the end): one `syncfs` and one device cache flush per batch instead of
    /// an `fdatasync` per chunk file, where the file system allows (see
    /// `ChunkStore::publish`). Memory is not affected: a chunk's buffer is free once its
    /// temp file is written.
    pub sync_batch_bytes: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            hash_workers: cores.clamp(1, 8),
            write_workers: 2,
            queue_depth: 2,
            write_queue_bytes: 16 << 20,
            sync_batch_bytes: 32 << 20,
        }
    }
}

/// What one disk backup did.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct DiskBackupStats {
    /// Bytes read from the disk (whole chunks).
    pub bytes_read: u64,
    /// Chunks read.
    pub chunks_read: u64,
    /// Chunks that were all zeros (not stored).
    pub chunks_zero: u64,
    /// Chunks already in the store.
    pub chunks_reused: u64,
    /// Chunks written.
    pub chunks_new: u64,
    /// Bytes of chunk files written (headers included).
    pub bytes_stored: u64,
}

/// Slots to read, kept as sorted, disjoint and non-adjacent ranges: its memory grows with
/// the number of extents it was made from, never with the disk's size (a full backup of a
/// 64 TiB disk with one allocated extent is one range, not 64 Mi slot numbers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotSet {
    ranges: Vec<Range<usize>>,
}

impl SlotSet {
    /// The slots of `ranges`, in any order, overlapping or not.
    #[must_use]
    pub fn from_ranges(mut ranges: Vec<Range<usize>>) -> Self {
        ranges.retain(|r| !r.is_empty());
        ranges.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        Self { ranges: merged }
    }

    /// Every slot of a disk with `count` slots.
    #[must_use]
    pub fn all(count: usize) -> Self {
        Self::from_ranges(std::iter::once(0..count).collect())
    }

    /// These slots and `other`'s.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        let mut ranges = self.ranges;
        ranges.extend(other.ranges);
        Self::from_ranges(ranges)
    }

    /// The ranges, sorted.
    #[must_use]
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// Number of slots.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ranges.iter().map(ExactSizeIterator::len).sum()
    }

    /// Whether there is no slot.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Every slot, in order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.ranges.iter().flat_map(Clone::clone)
    }

    /// Bytes the slots cover on a disk of `geometry` (the last slot may be short).
    #[must_use]
    pub fn bytes(&self, geometry: IndexGeometry) -> u64 {
        let cs = u64::from(geometry.chunk_size_bytes());
        let cap = geometry.disk_size_bytes();
        self.ranges
            .iter()
            .map(|r| {
                let start = (r.start as u64).saturating_mul(cs).min(cap);
                let end = (r.end as u64).saturating_mul(cs).min(cap);
                end - start
            })
            .sum()
    }
}

/// Slots covering `extents` (in any order, overlapping or not), or an error for an extent
/// beyond the disk.
///
/// # Errors
/// [`PipelineError::ExtentOutOfRange`].
pub fn slots_for_extents(
    extents: &[Extent],
    geometry: IndexGeometry,
) -> Result<SlotSet, PipelineError> {
    let cs = u64::from(geometry.chunk_size_bytes());
    let cap = geometry.disk_size_bytes();
    let mut ranges = Vec::with_capacity(extents.len());
    for e in extents {
        if e.length == 0 {
            continue;
        }
        let end = e.offset.checked_add(e.length).filter(|&end| end <= cap);
        let Some(end) = end else {
            return Err(PipelineError::ExtentOutOfRange {
                offset: e.offset,
                length: e.length,
                capacity_bytes: cap,
            });
        };
        let first = usize::try_from(e.offset / cs).expect("slot fits in usize");
        let last = usize::try_from((end - 1) / cs).expect("slot fits in usize");
        ranges.push(first..last + 1);
    }
    Ok(SlotSet::from_ranges(ranges))
}

/// Bytes the pipeline reads for `extents` of a disk of `capacity_bytes`: the whole chunks
/// covering them, each counted once (the last chunk may be short).
///
/// # Errors
/// [`PipelineError::ExtentOutOfRange`].
pub fn bytes_covered(
    extents: &[Extent],
    chunk_size_bytes: u32,
    capacity_bytes: u64,
) -> Result<u64, PipelineError> {
    let geometry = IndexGeometry::new(chunk_size_bytes, capacity_bytes);
    Ok(slots_for_extents(extents, geometry)?.bytes(geometry))
}

/// Bytes covered by `extents`, overlaps counted once.
#[must_use]
pub fn union_bytes(extents: &[Extent]) -> u64 {
    let mut spans: Vec<(u64, u64)> = extents
        .iter()
        .filter(|e| e.length > 0)
        .map(|e| (e.offset, e.offset.saturating_add(e.length)))
        .collect();
    spans.sort_unstable();
    let (mut total, mut covered_to) = (0u64, 0u64);
    for (start, end) in spans {
        let start = start.max(covered_to);
        if start < end {
            total = total.saturating_add(end - start);
            covered_to = end;
        }
    }
    total
}

enum Outcome {
    Zero,
    Reused,
    New(u64),
}

struct SlotResult {
    slot: usize,
    digest: ChunkDigest,
    outcome: Outcome,
    plain_len: u64,
}

/// Most digests a backup remembers having seen (to write a chunk repeated within the
/// backup once): about 16 MiB, and 256 GiB of distinct 1 MiB chunks.
const SEEN_MAX: usize = 1 << 18;

struct Shared<'a> {
    store: &'a ChunkStore,
    abort: AtomicBool,
    first_error: Mutex<Option<PipelineError>>,
    seen: Mutex<HashSet<ChunkDigest>>,
    dirs: Mutex<HashSet<PathBuf>>,
}

impl Shared<'_> {
    fn fail(&self, e: PipelineError) {
        self.abort.store(true, Ordering::SeqCst);
        let mut first = self.first_error.lock().expect("error slot not poisoned");
        if first.is_none() {
            *first = Some(e);
        }
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}

/// Back up `slots` of `source` into `store`, updating `index` (a copy of the parent's index
/// for an incremental, all holes for a full). Only the given slots are read, each as a whole
/// chunk. `progress(done, total)` is called on the caller's thread.
///
/// # Errors
/// The first [`PipelineError`] raised by any stage.
pub fn backup_disk<S: DiskSource>(
    store: &ChunkStore,
    source: S,
    index: &mut FixedIndexWriter,
    slots: &SlotSet,
    opts: PipelineOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<DiskBackupStats, PipelineError> {
    let geometry = index.geometry();
    let cs = usize::try_from(geometry.chunk_size_bytes()).expect("chunk size fits in usize");
    let total = slots.bytes(geometry);
    let slot_count = slots.len();
    // The reader's offsets and lengths, from the slot numbers (the index itself is the
    // caller's, filled as results come in): nothing per slot is held.
    let place = move |slot: usize| {
        (
            geometry.slot_offset(slot),
            usize::try_from(geometry.slot_len(slot)).expect("slot length fits in usize"),
        )
    };
    let hash_workers = opts.hash_workers.max(1);
    let write_workers = opts.write_workers.max(1);
    let depth = opts.queue_depth.max(1);
    // Frames: the reader's, the work queue, one per hash worker, and (raw chunks) the write
    // queue and one per writer. Output buffers: one per hash worker, the write queue, one per
    // writer. Writers never wait for a buffer, so neither pool can run dry for good.
    let sync_batch = opts.sync_batch_bytes.max(1);
    let write_queue = (opts.write_queue_bytes / cs.max(1)).max(depth * write_workers);
    let frames = (depth + hash_workers + 1 + write_queue + write_workers).min(slot_count.max(1));
    let outputs = (hash_workers + write_queue + write_workers).min(slot_count.max(1));

    let shared = Shared {
        store,
        abort: AtomicBool::new(false),
        first_error: Mutex::new(None),
        seen: Mutex::new(HashSet::new()),
        dirs: Mutex::new(HashSet::new()),
    };
    // Aligned so that chunk files can be written with direct I/O (see `chunk_store`).
    let pools = Pools {
        frames: BufferPool::new(frames, HEADER_LEN + cs),
        outputs: BufferPool::new(outputs, chunk::max_encoded_len(cs)),
    };
    let (work_tx, work_rx) = bounded::<(usize, u64, usize, AlignedBuf)>(depth);
    let (write_tx, write_rx) = bounded::<WriteJob>(write_queue);
    let (res_tx, res_rx) = bounded::<SlotResult>(depth * 4 + hash_workers + write_workers);
    let mut stats = DiskBackupStats::default();

    std::thread::scope(|scope| {
        let sh = &shared;
        let pools = &pools;
        let mut source = source;
        spawn_named(
            scope,
            sh,
            "disk-read".into(),
            Box::new(move || {
                for slot in slots.iter() {
                    let (offset, len) = place(slot);
                    if sh.aborted() {
                        break;
                    }
                    let Some(mut frame) = pools.frames.take(&sh.abort) else {
                        break;
                    };
                    let dst = &mut frame.as_mut_slice()[HEADER_LEN..HEADER_LEN + len];
                    if let Err(e) = source.read_at_abortable(offset, dst, &sh.abort) {
                        sh.fail(PipelineError::Source(e));
                        break;
                    }
                    if work_tx.send((slot, offset, len, frame)).is_err() {
                        break;
                    }
                }
            }),
        );
        for n in 0..hash_workers {
            let (work_rx, write_tx, res_tx) = (work_rx.clone(), write_tx.clone(), res_tx.clone());
            spawn_named(
                scope,
                sh,
                format!("chunk-hash/{n}"),
                Box::new(move || hash_worker(sh, pools, &work_rx, &write_tx, &res_tx)),
            );
        }
        for n in 0..write_workers {
            let (write_rx, res_tx) = (write_rx.clone(), res_tx.clone());
            spawn_named(
                scope,
                sh,
                format!("chunk-write/{n}"),
                Box::new(move || write_worker(sh, pools, &write_rx, &res_tx, sync_batch)),
            );
        }
        drop((work_rx, write_tx, write_rx, res_tx));

        let mut done = 0u64;
        for r in res_rx {
            // Written out a batch at a time; a failure stops the backup as a stage's does,
            // and after any failure nothing more is written (the backup fails).
            if shared.aborted() {
                continue;
            }
            if let Err(e) = index.set(r.slot, r.digest) {
                shared.fail(PipelineError::Index(e));
                continue;
            }
            stats.chunks_read += 1;
            stats.bytes_read += r.plain_len;
            match r.outcome {
                Outcome::Zero => stats.chunks_zero += 1,
                Outcome::Reused => stats.chunks_reused += 1,
                Outcome::New(n) => {
                    stats.chunks_new += 1;
                    stats.bytes_stored += n;
                }
            }
            done += r.plain_len;
            progress(done, total);
        }
    });
    if let Some(e) = shared
        .first_error
        .into_inner()
        .expect("error slot not poisoned")
    {
        return Err(e);
    }
    let dirs = with_levels_above(
        store.root(),
        shared.dirs.into_inner().expect("dir set not poisoned"),
    );
    chunk_store::sync_dirs(&dirs).map_err(PipelineError::Store)?;
    Ok(stats)
}

/// `dirs` (chunk directories of the store at `root`) and every level above them up to
/// `root` itself: a process killed after creating a directory and before fsyncing its
/// parent (the nested layout's `chunks/ab` holding `cd/`, or a fan-out directory an
/// interrupted `repo init` left) leaves that entry to whoever stores a chunk there next.
fn with_levels_above(root: &Path, mut dirs: HashSet<PathBuf>) -> HashSet<PathBuf> {
    let above: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| d.ancestors().skip(1).take_while(|a| a.starts_with(root)))
        .map(Path::to_path_buf)
        .collect();
    dirs.extend(above);
    dirs
}

fn spawn_named<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    sh: &'scope Shared<'env>,
    name: String,
    f: Box<dyn FnOnce() + Send + 'scope>,
) {
    let thread = name.clone();
    // A stage that panics raises the abort flag as an error does: the others stop instead
    // of waiting for its buffers or results, and the backup fails with nothing committed.
    let guarded = move || {
        if let Err(e) = run_guarded(&thread, f) {
            sh.fail(PipelineError::Thread(e));
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name(name.clone())
        .spawn_scoped(scope, guarded)
    {
        sh.fail(PipelineError::Thread(format!("{name} did not start: {e}")));
    }
}

/// Runs `f` (a pipeline thread's body), a panic in it turned into `<name> panicked: <its
/// message>`.
pub(crate) fn run_guarded(name: &str, f: impl FnOnce()) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        format!("{name} panicked: {message}")
    })
}

/// The two buffer pools (see the module doc).
struct Pools {
    frames: BufferPool,
    outputs: BufferPool,
}

impl Pools {
    fn give_back(&self, buf: AlignedBuf, is_frame: bool) {
        if is_frame {
            self.frames.give_back(buf);
        } else {
            self.outputs.give_back(buf);
        }
    }
}

/// A new chunk for a `chunk-write` worker: `buf[..len]` is the chunk file.
struct WriteJob {
    slot: usize,
    digest: ChunkDigest,
    plain_len: u64,
    buf: AlignedBuf,
    len: usize,
    /// `buf` is a frame (raw chunk) rather than an output buffer.
    is_frame: bool,
}

fn hash_worker(
    sh: &Shared<'_>,
    pools: &Pools,
    work_rx: &Receiver<(usize, u64, usize, AlignedBuf)>,
    write_tx: &Sender<WriteJob>,
    res_tx: &Sender<SlotResult>,
) {
    let mut encoder = match ChunkEncoder::new() {
        Ok(e) => Some(e),
        Err(source) => {
            sh.fail(PipelineError::Encode { offset: 0, source });
            None
        }
    };
    for (slot, offset, len, mut frame) in work_rx {
        if sh.aborted() {
            pools.give_back(frame, true);
            continue;
        }
        let data = &frame.as_slice()[HEADER_LEN..HEADER_LEN + len];
        let plain_len = len as u64;
        let known = |digest, outcome| SlotResult {
            slot,
            digest,
            outcome,
            plain_len,
        };
        if chunk::is_zero(data) {
            pools.give_back(frame, true);
            let _ = res_tx.send(known(ChunkDigest::ZERO, Outcome::Zero));
            continue;
        }
        let digest = ChunkDigest::of(data);
        let first_time = {
            let mut seen = sh.seen.lock().expect("seen set not poisoned");
            // Bounded whatever the disk size: forgetting only costs a repeated chunk of
            // this backup that is still on its way to the store a second write of the
            // same bytes under the same name.
            if seen.len() >= SEEN_MAX {
                seen.clear();
            }
            seen.insert(digest)
        };
        let reused = !first_time || {
            let stored = sh.store.contains(&digest);
            if stored {
                // Written by an earlier backup, or by a concurrent one that has not
                // fsynced its directory yet: fsync it too before this point commits.
                sh.dirs
                    .lock()
                    .expect("dir set not poisoned")
                    .insert(sh.store.dir_of(&digest));
            }
            stored
        };
        if reused {
            pools.give_back(frame, true);
            let _ = res_tx.send(known(digest, Outcome::Reused));
            continue;
        }
        let Some(enc) = encoder.as_mut() else {
            pools.give_back(frame, true);
            continue;
        };
        let Some(mut out) = pools.outputs.take(&sh.abort) else {
            pools.give_back(frame, true);
            continue;
        };
        let job = |buf, len, is_frame| WriteJob {
            slot,
            digest,
            plain_len,
            buf,
            len,
            is_frame,
        };
        let encoded = enc.encode_frame(
            &mut frame.as_mut_slice()[..HEADER_LEN + len],
            &digest,
            out.as_mut_slice(),
        );
        match encoded {
            Ok(encoded) => {
                let job = match encoded {
                    Encoded::InFrame => {
                        pools.give_back(out, false);
                        job(frame, HEADER_LEN + len, true)
                    }
                    Encoded::InOut(n) => {
                        pools.give_back(frame, true);
                        job(out, n, false)
                    }
                };
                // A closed channel means the writers are gone (after an abort): the
                // buffer goes back all the same, so that no stage waits for it.
                if let Err(SendError(job)) = write_tx.send(job) {
                    pools.give_back(job.buf, job.is_frame);
                }
            }
            Err(source) => {
                pools.give_back(frame, true);
                pools.give_back(out, false);
                sh.fail(PipelineError::Encode { offset, source });
            }
        }
    }
}

fn write_worker(
    sh: &Shared<'_>,
    pools: &Pools,
    write_rx: &Receiver<WriteJob>,
    res_tx: &Sender<SlotResult>,
    sync_batch_bytes: usize,
) {
    // Chunks in temp files, made durable and renamed together (`ChunkStore::publish`),
    // with the results to send once they are.
    let mut batch = Batch::new(sync_batch_bytes);
    for job in write_rx {
        if sh.aborted() {
            pools.give_back(job.buf, job.is_frame);
            continue;
        }
        let staged = sh.store.stage(&job.digest, &job.buf.as_slice()[..job.len]);
        pools.give_back(job.buf, job.is_frame);
        let result = |outcome| SlotResult {
            slot: job.slot,
            digest: job.digest,
            outcome,
            plain_len: job.plain_len,
        };
        match staged {
            Ok(Some(staged)) => {
                if batch.add(staged, result(Outcome::New(job.len as u64)), job.len) {
                    batch.publish(sh, res_tx);
                }
            }
            Ok(None) => {
                // Another backup stored the same chunk since the hash worker looked: its
                // directory entry may not be durable yet, and our point must not commit
                // before it is (the locking rules in `chunk_store`).
                sh.dirs
                    .lock()
                    .expect("dir set not poisoned")
                    .insert(sh.store.dir_of(&job.digest));
                let _ = res_tx.send(result(Outcome::Reused));
            }
            Err(e) => sh.fail(PipelineError::Store(e)),
        }
    }
    if !sh.aborted() {
        batch.publish(sh, res_tx);
    }
    // After an abort, dropping `batch` removes the temp files it still holds.
}

/// Most chunks in one batch made durable by `syncfs`, whose later files are closed once
/// written (`Staged::close_file`): a bound on the batch's paths and results, not on
/// descriptors.
const SYNCFS_BATCH_FILES: usize = 256;
/// Most chunks in one batch made durable file by file, each file open until then: at most
/// this many descriptors per writer, however small the chunks compress.
const FDATASYNC_BATCH_FILES: usize = 16;

/// A writer's chunks waiting to be made durable together.
struct Batch {
    staged: Vec<chunk_store::Staged>,
    results: Vec<SlotResult>,
    bytes: usize,
    /// Publish once the batch holds this many bytes (`PipelineOptions::sync_batch_bytes`).
    full_bytes: usize,
    /// The batch's first chunk makes it durable with `syncfs`.
    syncfs: bool,
}

impl Batch {
    fn new(full_bytes: usize) -> Self {
        Self {
            staged: Vec::new(),
            results: Vec::new(),
            bytes: 0,
            full_bytes,
            syncfs: false,
        }
    }

    /// Adds a staged chunk and its result. Returns whether the batch is full (bytes or
    /// files) and is to be published now.
    fn add(&mut self, mut staged: chunk_store::Staged, result: SlotResult, len: usize) -> bool {
        if self.staged.is_empty() {
            self.syncfs = staged.batch_syncs_file_system();
        } else if self.syncfs {
            staged.close_file();
        }
        self.staged.push(staged);
        self.results.push(result);
        self.bytes += len;
        let most = if self.syncfs {
            SYNCFS_BATCH_FILES
        } else {
            FDATASYNC_BATCH_FILES
        };
        self.staged.len() >= most || self.bytes >= self.full_bytes
    }

    /// Descriptors the batch holds open.
    #[cfg(test)]
    fn open_files(&self) -> usize {
        self.staged.iter().filter(|s| s.has_open_file()).count()
    }

    /// Make the batch's chunks durable and visible, then report them; empties the batch.
    fn publish(&mut self, sh: &Shared<'_>, res_tx: &Sender<SlotResult>) {
        self.bytes = 0;
        if self.staged.is_empty() {
            return;
        }
        if let Err(e) = sh.store.publish(&mut self.staged) {
            self.staged.clear();
            self.results.clear();
            sh.fail(PipelineError::Store(e));
            return;
        }
        {
            let mut dirs = sh.dirs.lock().expect("dir set not poisoned");
            for r in &self.results {
                dirs.insert(sh.store.dir_of(&r.digest));
            }
        }
        for r in self.results.drain(..) {
            let _ = res_tx.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::source::RawFileSource;

    #[test]
    fn bytes_covered_counts_whole_chunks_once() {
        let e = |offset, length| Extent { offset, length };
        assert_eq!(bytes_covered(&[e(0, 1), e(10, 5)], 100, 1000).unwrap(), 100);
        assert_eq!(bytes_covered(&[e(95, 10)], 100, 1000).unwrap(), 200);
        assert_eq!(bytes_covered(&[e(950, 30)], 100, 980).unwrap(), 80);
        assert_eq!(bytes_covered(&[], 100, 1000).unwrap(), 0);
        assert!(bytes_covered(&[e(950, 50)], 100, 980).is_err());
    }

    /// 10,000 copies of a whole-disk extent of a 1 TiB disk: the slots are one range (one
    /// number per chunk would take 8 MiB; per extent, 80 GB), and the bytes changed count
    /// once.
    #[test]
    fn overlapping_extents_cost_no_more_than_the_disk() {
        let cap = 1u64 << 40;
        let whole = vec![
            Extent {
                offset: 0,
                length: cap,
            };
            10_000
        ];
        let geometry = IndexGeometry::new(1 << 20, cap);
        let slots = slots_for_extents(&whole, geometry).unwrap();
        assert_eq!(slots.ranges().len(), 1);
        assert_eq!(slots.ranges()[0], 0..1 << 20);
        assert_eq!(slots.len(), 1 << 20);
        assert_eq!(slots.bytes(geometry), cap);
        assert_eq!(union_bytes(&whole), cap);
        let e = |offset, length| Extent { offset, length };
        let mixed = [e(5000, 10), e(0, 100), e(50, 100), e(5005, 1), e(7, 0)];
        assert_eq!(union_bytes(&mixed), 150 + 10);
        let slots = slots_for_extents(&mixed, IndexGeometry::new(64, 10_000)).unwrap();
        assert_eq!(slots.ranges(), [0..3, 78..79]);
        assert_eq!(slots.iter().collect::<Vec<_>>(), [0, 1, 2, 78]);
    }

    #[test]
    fn slots_cover_extents() {
        let idx = IndexGeometry::new(1024, 10_000);
        let e = [
            Extent {
                offset: 1000,
                length: 100,
            },
            Extent {
                offset: 5000,
                length: 1,
            },
        ];
        let slots = slots_for_extents(&e, idx).unwrap();
        assert_eq!(slots.iter().collect::<Vec<_>>(), vec![0, 1, 4]);
        assert_eq!(slots.bytes(idx), 3 * 1024);
        let slots = slots.union(SlotSet::from_ranges(vec![9..10, 2..3, 3..4]));
        assert_eq!(slots.ranges(), [0..5, 9..10]);
        assert_eq!(slots.bytes(idx), 5 * 1024 + 784);
        assert!(SlotSet::from_ranges(vec![3..3, 7..7]).is_empty());
        let bad = [Extent {
            offset: 9_999,
            length: 2,
        }];
        assert!(slots_for_extents(&bad, idx).is_err());
    }

    #[test]
    fn backs_up_zero_random_and_duplicate_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().join("chunks"));
        std::fs::create_dir(store.root()).unwrap();
        let img = dir.path().join("img");
        let mut data = vec![0u8; 4096 * 5 + 100];
        data[4096..8192].fill(7);
        data[8192..12288].fill(7);
        data[16384..]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = u8::try_from(i % 251).unwrap());
        std::fs::write(&img, &data).unwrap();
        let src = RawFileSource::open(&img).unwrap();
        let path = dir.path().join("p/2000.fidx");
        let mut idx =
            FixedIndexWriter::create(&path, IndexGeometry::new(4096, data.len() as u64)).unwrap();
        let slots = SlotSet::all(idx.geometry().slot_count());
        let stats = backup_disk(
            &store,
            src,
            &mut idx,
            &slots,
            PipelineOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(stats.chunks_read, 6);
        assert_eq!(stats.chunks_zero, 2);
        assert_eq!(stats.chunks_new + stats.chunks_reused, 4);
        assert_eq!(stats.chunks_new, 3);
        idx.finish().unwrap();
        let idx = crate::repo::fixed_index::FixedIndexReader::open(&path)
            .unwrap()
            .read_all()
            .unwrap();
        assert!(idx[0].is_zero());
        assert_eq!(store.read(&idx[5]).unwrap(), data[20480..]);
    }

    #[test]
    fn the_levels_above_the_chunk_directories_are_synced_up_to_the_root() {
        let root = Path::new("/r/chunks");
        let set = |v: &[&str]| v.iter().map(PathBuf::from).collect::<HashSet<_>>();
        assert_eq!(
            with_levels_above(root, set(&["/r/chunks/ab/cd", "/r/chunks/ef"])),
            set(&[
                "/r/chunks/ab/cd",
                "/r/chunks/ab",
                "/r/chunks/ef",
                "/r/chunks"
            ])
        );
        assert!(with_levels_above(root, HashSet::new()).is_empty());
    }

    #[test]
    fn a_chunk_another_backup_wrote_meanwhile_still_has_its_directory_synced() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().join("chunks"));
        std::fs::create_dir(store.root()).unwrap();
        let data = vec![9u8; 4096];
        let digest = ChunkDigest::of(&data);
        let mut frame = AlignedBuf::zeroed(HEADER_LEN + data.len());
        frame.as_mut_slice()[HEADER_LEN..].copy_from_slice(&data);
        let mut out = vec![0u8; chunk::max_encoded_len(data.len())];
        let len = match ChunkEncoder::new()
            .unwrap()
            .encode_frame(frame.as_mut_slice(), &digest, &mut out)
            .unwrap()
        {
            Encoded::InFrame => HEADER_LEN + data.len(),
            Encoded::InOut(n) => {
                frame.as_mut_slice()[..n].copy_from_slice(&out[..n]);
                n
            }
        };
        // The hash worker found the chunk absent; another backup then stored it first.
        assert!(store.insert(&digest, &frame.as_slice()[..len]).unwrap());
        let shared = Shared {
            store: &store,
            abort: AtomicBool::new(false),
            first_error: Mutex::new(None),
            seen: Mutex::new(HashSet::new()),
            dirs: Mutex::new(HashSet::new()),
        };
        let pools = Pools {
            frames: BufferPool::new(1, HEADER_LEN + data.len()),
            outputs: BufferPool::new(1, chunk::max_encoded_len(data.len())),
        };
        let (write_tx, write_rx) = bounded(1);
        let (res_tx, res_rx) = bounded(1);
        write_tx
            .send(WriteJob {
                slot: 0,
                digest,
                plain_len: data.len() as u64,
                buf: frame,
                len,
                is_frame: true,
            })
            .unwrap();
        drop(write_tx);
        write_worker(&shared, &pools, &write_rx, &res_tx, usize::MAX);
        assert!(matches!(res_rx.recv().unwrap().outcome, Outcome::Reused));
        let dirs = shared.dirs.into_inner().unwrap();
        assert!(dirs.contains(&store.dir_of(&digest)), "{dirs:?}");
    }

    /// A write job for `slot` (the writer stores the bytes it is given as they are).
    fn raw_job(slot: usize, fill: u8, len: usize) -> WriteJob {
        let data: Vec<u8> = (0..len)
            .map(|i| u8::try_from((i * 31 + usize::from(fill)) % 256).unwrap())
            .collect();
        let digest = ChunkDigest::of(&data);
        let mut frame = AlignedBuf::zeroed(HEADER_LEN + len);
        frame.as_mut_slice()[HEADER_LEN..].copy_from_slice(&data);
        WriteJob {
            slot,
            digest,
            plain_len: len as u64,
            buf: frame,
            len: HEADER_LEN + len,
            is_frame: true,
        }
    }

    fn shared(store: &ChunkStore) -> Shared<'_> {
        Shared {
            store,
            abort: AtomicBool::new(false),
            first_error: Mutex::new(None),
            seen: Mutex::new(HashSet::new()),
            dirs: Mutex::new(HashSet::new()),
        }
    }

    #[test]
    fn a_writer_reports_its_chunks_only_once_their_batch_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().join("chunks"));
        std::fs::create_dir(store.root()).unwrap();
        let jobs: Vec<WriteJob> = (0..7)
            .map(|i| raw_job(i, u8::try_from(i).unwrap(), 8192))
            .collect();
        let digests: Vec<ChunkDigest> = jobs.iter().map(|j| j.digest).collect();
        let sh = shared(&store);
        let pools = Pools {
            frames: BufferPool::new(7, HEADER_LEN + 8192),
            outputs: BufferPool::new(1, 64),
        };
        let (write_tx, write_rx) = bounded(7);
        // A rendezvous channel: the writer waits in `send` until each result is taken, so
        // it cannot stage (and, a batch later, publish) the next chunks meanwhile: a result
        // sent before its chunk was published is caught by the check below.
        let (res_tx, res_rx) = bounded(0);
        for job in jobs {
            write_tx.send(job).unwrap();
        }
        drop(write_tx);
        std::thread::scope(|scope| {
            let (sh, pools) = (&sh, &pools);
            // Batches of three chunks' worth: two full ones, then the rest at the end.
            scope.spawn(move || write_worker(sh, pools, &write_rx, &res_tx, 3 * 8192));
            let mut n = 0;
            // By value: a failed check drops the receiver, so the writer cannot hang.
            for r in res_rx {
                assert!(matches!(r.outcome, Outcome::New(_)));
                assert!(
                    store.contains(&r.digest),
                    "chunk of slot {} reported before it was published",
                    r.slot
                );
                n += 1;
            }
            assert_eq!(n, 7);
        });
        let dirs = sh.dirs.into_inner().unwrap();
        assert!(digests.iter().all(|d| dirs.contains(&store.dir_of(d))));
        assert!(sh.first_error.into_inner().unwrap().is_none());
    }

    #[test]
    fn a_batch_of_many_small_chunks_holds_few_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().join("chunks"));
        std::fs::create_dir(store.root()).unwrap();
        let sh = shared(&store);
        let (res_tx, res_rx) = bounded(300);
        let mut batch = Batch::new(usize::MAX);
        let (mut most_open, mut full_batches) = (0, 0);
        // Chunks that compress to almost nothing: bytes alone would never end a batch.
        for slot in 0..300 {
            let data = format!("a small chunk, number {slot}").into_bytes();
            let digest = ChunkDigest::of(&data);
            let staged = store.stage(&digest, &data).unwrap().unwrap();
            let result = SlotResult {
                slot,
                digest,
                outcome: Outcome::New(data.len() as u64),
                plain_len: data.len() as u64,
            };
            let full = batch.add(staged, result, data.len());
            most_open = most_open.max(batch.open_files());
            if full {
                full_batches += 1;
                batch.publish(&sh, &res_tx);
            }
        }
        batch.publish(&sh, &res_tx);
        drop(res_tx);
        assert!(
            most_open <= FDATASYNC_BATCH_FILES,
            "{most_open} temp files open at once"
        );
        assert!(full_batches >= 1, "no batch was ended by its file count");
        let published: Vec<SlotResult> = res_rx.iter().collect();
        assert_eq!(published.len(), 300);
        assert!(published.iter().all(|r| store.contains(&r.digest)));
        assert!(sh.first_error.into_inner().unwrap().is_none());
    }

    #[test]
    fn a_writer_that_fails_removes_the_temp_files_of_its_unpublished_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().join("chunks"));
        std::fs::create_dir(store.root()).unwrap();
        let good = raw_job(0, 1, 8192);
        let bad = (2..=255u8)
            .map(|fill| raw_job(1, fill, 8192))
            .find(|j| store.dir_of(&j.digest) != store.dir_of(&good.digest))
            .unwrap();
        let (good_digest, good_dir) = (good.digest, store.dir_of(&good.digest));
        // The second chunk's directory cannot be made: a file holds its name.
        std::fs::write(store.dir_of(&bad.digest), b"in the way").unwrap();
        let sh = shared(&store);
        let pools = Pools {
            frames: BufferPool::new(2, HEADER_LEN + 8192),
            outputs: BufferPool::new(1, 64),
        };
        let (write_tx, write_rx) = bounded(2);
        let (res_tx, res_rx) = bounded(2);
        write_tx.send(good).unwrap();
        write_tx.send(bad).unwrap();
        drop(write_tx);
        write_worker(&sh, &pools, &write_rx, &res_tx, usize::MAX);
        drop(res_tx);
        assert!(matches!(
            sh.first_error.into_inner().unwrap(),
            Some(PipelineError::Store(ChunkStoreError::Write { .. }))
        ));
        assert_eq!(res_rx.iter().count(), 0, "nothing reported");
        assert!(!store.contains(&good_digest));
        let left: Vec<_> = std::fs::read_dir(&good_dir).unwrap().collect();
        assert!(
            left.is_empty(),
            "temp files left in {}: {left:?}",
            good_dir.display()
        );
    }

    /// A source waiting inside a read (VDDK's, between tries on a lost connection) is told
    /// when another stage failed, and stops waiting: the backup fails without waiting out
    /// the source's pauses.
    #[test]
    fn a_source_waiting_inside_a_read_learns_that_the_backup_failed() {
        struct Waiting {
            saw_abort: std::sync::Arc<AtomicBool>,
        }
        impl DiskSource for Waiting {
            fn capacity_bytes(&self) -> u64 {
                8 * 4096
            }
            fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
                buf.fill(u8::try_from(offset / 4096).unwrap() + 1);
                Ok(())
            }
            fn read_at_abortable(
                &mut self,
                offset: u64,
                buf: &mut [u8],
                abort: &AtomicBool,
            ) -> Result<(), SourceError> {
                if offset < 2 * 4096 {
                    return self.read_at(offset, buf);
                }
                // The third chunk's read waits for the connection, as long as it must.
                for _ in 0..3000 {
                    if abort.load(Ordering::SeqCst) {
                        self.saw_abort.store(true, Ordering::SeqCst);
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(SourceError::Read {
                    path: "waiting".into(),
                    offset,
                    len: buf.len(),
                    source: std::io::Error::other("gave up"),
                })
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().join("chunks"));
        std::fs::create_dir(store.root()).unwrap();
        // The first chunk cannot be stored: a file holds its directory's name.
        let first = ChunkDigest::of(&[1u8; 4096]);
        std::fs::write(store.dir_of(&first), b"in the way").unwrap();
        let mut idx = FixedIndexWriter::create(
            &dir.path().join("p/2000.fidx"),
            IndexGeometry::new(4096, 8 * 4096),
        )
        .unwrap();
        let saw_abort = std::sync::Arc::new(AtomicBool::new(false));
        let source = Waiting {
            saw_abort: std::sync::Arc::clone(&saw_abort),
        };
        let err = backup_disk(
            &store,
            source,
            &mut idx,
            &SlotSet::all(8),
            PipelineOptions::default(),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(err, PipelineError::Store(_)), "{err}");
        assert!(saw_abort.load(Ordering::SeqCst), "the source waited it out");
    }

    #[test]
    fn a_stage_that_panics_fails_the_backup_with_its_name() {
        struct Panicking;
        impl DiskSource for Panicking {
            fn capacity_bytes(&self) -> u64 {
                8 * 4096
            }
            fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
                assert!(offset < 2 * 4096, "a bug in the source at {offset}");
                buf.fill(u8::try_from(offset / 4096).unwrap() + 1);
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().join("chunks"));
        std::fs::create_dir(store.root()).unwrap();
        let mut idx = FixedIndexWriter::create(
            &dir.path().join("p/2000.fidx"),
            IndexGeometry::new(4096, 8 * 4096),
        )
        .unwrap();
        let slots = SlotSet::all(8);
        let err = backup_disk(
            &store,
            Panicking,
            &mut idx,
            &slots,
            PipelineOptions::default(),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(
            matches!(&err, PipelineError::Thread(m) if m.contains("disk-read panicked: a bug in the source at 8192")),
            "{err}"
        );
    }

    /// A hash worker whose writers are gone gives the buffers of the chunks it could not
    /// hand over back to their pools, so that it (and the reader) never waits for ever for
    /// one: with one output buffer, the second compressible chunk needs the first's back.
    #[test]
    fn a_hash_worker_without_writers_gives_its_buffers_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().join("chunks"));
        std::fs::create_dir(store.root()).unwrap();
        let sh = shared(&store);
        let pools = Pools {
            frames: BufferPool::new(4, HEADER_LEN + 4096),
            outputs: BufferPool::new(1, chunk::max_encoded_len(4096)),
        };
        let (work_tx, work_rx) = bounded::<(usize, u64, usize, AlignedBuf)>(4);
        let (write_tx, write_rx) = bounded::<WriteJob>(1);
        let (res_tx, _res_rx) = bounded::<SlotResult>(16);
        drop(write_rx);
        let (done_tx, done_rx) = bounded::<()>(1);
        std::thread::scope(|scope| {
            let (sh, pools) = (&sh, &pools);
            scope.spawn(move || {
                hash_worker(sh, pools, &work_rx, &write_tx, &res_tx);
                let _ = done_tx.send(());
            });
            for slot in 0..3u8 {
                let mut frame = AlignedBuf::zeroed(HEADER_LEN + 4096);
                frame.as_mut_slice()[HEADER_LEN..].fill(slot + 1);
                work_tx
                    .send((usize::from(slot), u64::from(slot) * 4096, 4096, frame))
                    .unwrap();
            }
            drop(work_tx);
            let finished = done_rx.recv_timeout(std::time::Duration::from_secs(10));
            if finished.is_err() {
                // Let the stuck worker out, so that the scope ends and the test fails.
                sh.abort.store(true, Ordering::SeqCst);
            }
            assert!(
                finished.is_ok(),
                "the hash worker waits for a buffer for ever"
            );
        });
    }

    #[test]
    fn source_error_aborts() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().join("chunks"));
        std::fs::create_dir(store.root()).unwrap();
        let img = dir.path().join("img");
        std::fs::write(&img, vec![1u8; 4096]).unwrap();
        let src = RawFileSource::open(&img).unwrap();
        // The index claims a larger disk than the file: reading slot 3 fails.
        let mut idx = FixedIndexWriter::create(
            &dir.path().join("p/2000.fidx"),
            IndexGeometry::new(4096, 4096 * 4),
        )
        .unwrap();
        let err = backup_disk(
            &store,
            src,
            &mut idx,
            &SlotSet::from_ranges(vec![0..1, 3..4]),
            PipelineOptions::default(),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(err, PipelineError::Source(_)), "{err}");
    }
}
