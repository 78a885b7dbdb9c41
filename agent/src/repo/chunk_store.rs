//! Content-addressed chunk store: `chunks/<ab>/<digest hex>`.
//!
//! A chunk file is written to a temp file (`.tmp-<random>` in its final directory), made
//! durable (on its own, or a backup's chunks a batch at a time: [`ChunkStore::publish`]),
//! then renamed to its digest name, and never modified afterwards. All-zero chunks are never
//! stored (the index holds a zero marker).
//!
//! # Layout
//!
//! The 256 fan-out directories `chunks/00` … `chunks/ff` are created and fsynced by
//! `repo init` ([`ChunkStore::create_fanout`]), so a backup never creates a directory and
//! only has to fsync the directories it renamed chunks into. At 1 MiB chunks a directory
//! holds about 4,000 chunks per TiB of unique data, which ext4 and XFS index by hash.
//! Repositories made before this layout use `chunks/<ab>/<cd>/<digest hex>` with directories
//! created on first use ([`Layout::Nested`]); they are still read and written that way. The
//! flat layout was chosen by measurement (`docs/benchmarks.md`): with 1 MiB chunks the nested
//! layout created a new directory for almost every new chunk (about 1,600 directories for a
//! 2 GiB image, 6 MiB of directory blocks and a tenth of the backup's system time).
//!
//! # Direct I/O
//!
//! Chunk files are written with `O_DIRECT` from the pipeline's aligned buffers: the whole
//! 4 KiB blocks go from the buffer to the device, the tail of less than a block through the
//! page cache, then fsync and rename as always. A backup writes each chunk once and seldom
//! reads it back soon, so filling the page cache with it only evicts what the proxy needs;
//! on a VM whose free memory the host reclaims it is also the most expensive part of a
//! write (measured in `docs/benchmarks.md`). When the file system refuses `O_DIRECT`
//! (ramfs, ecryptfs, tmpfs before Linux 6.6, some network file systems) the store says so
//! once in the log and writes through the page cache from then on; unaligned buffers are
//! always written that way.
//!
//! # Locking (the repository lock, `repo.lock`, an advisory `flock`)
//!
//! | Operation            | Lock on `repo.lock`      | Writes                                    | Why it is safe |
//! |----------------------|--------------------------|-------------------------------------------|----------------|
//! | backup               | shared, whole run        | new chunks, index files and the manifest of a new point, then one catalog transaction | GC cannot run while any backup holds the shared lock, so chunks it wrote or reuses (including those only referenced by its parent) cannot be swept before its point is committed |
//! | restore, verify      | shared                   | nothing in the repository                 | GC cannot remove chunks under them; chunks never change after rename |
//! | prune                | shared, and `locks/prune.lock` exclusive (waiting) | deletes catalog rows (one transaction), then the points' index files | deleting rows never removes chunks; a crash between the commit and the file removal leaves orphan index files that GC removes; two prunes (another policy's, the API's, the CLI's) decide one after the other, each on the points the other left, so neither removes what the other's rules kept because the first was to remove it |
//! | gc (mark and sweep)  | exclusive (`try_lock`, fails "busy") | removes unmarked chunks, temp files, orphan index dirs | no backup is in flight, so every temp file and every index dir not in the catalog is garbage, and the mark set (from all committed indexes) is complete |
//! | verify --repair      | shared                   | moves corrupt chunk files to `quarantine/`, records damaged chunks in the catalog | a backup writes a chunk only when its file is absent, so it never replaces a file being moved; one that reused a chunk before it moved has it recorded as damaged and healed with the others (see `repair`) |
//! | list, info           | none                     | nothing                                   | reads committed catalog rows only (SQLite WAL snapshot) |
//!
//! A backup fsyncs the directory of every chunk it reuses as well as of every chunk it
//! writes: a reused file may come from a concurrent backup that has renamed it but not yet
//! fsynced its directory, and the point must not commit before that entry is durable.
//!
//! The lock is released by the kernel when a process dies, so a killed backup never blocks
//! GC. GC refuses to sweep if any committed index cannot be read (its mark set would be
//! incomplete).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::ids::ChunkDigest;
use crate::repo::aligned::{AlignedBuf, DIRECT_IO_ALIGN};
use crate::repo::chunk::{self, ChunkDecoder, ChunkError, Decoded};
use crate::repo::durable;

/// Prefix of temp files in chunk directories.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Errors of the chunk store; every variant names the file and the digest.
#[derive(Debug, thiserror::Error)]
pub enum ChunkStoreError {
    /// A chunk file is absent.
    #[error("chunk {digest} missing: {path}")]
    Missing {
        /// The chunk's digest.
        digest: ChunkDigest,
        /// Where it should be.
        path: PathBuf,
    },
    /// Reading a chunk file failed.
    #[error("read chunk {digest} from {path}")]
    Read {
        /// The chunk's digest.
        digest: ChunkDigest,
        /// The chunk file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A chunk file is corrupt.
    #[error("chunk {digest} corrupt: {path}")]
    Corrupt {
        /// The chunk's digest.
        digest: ChunkDigest,
        /// The chunk file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ChunkError,
    },
    /// Writing a chunk (temp file, fsync, rename or directory creation) failed.
    #[error("write chunk {digest} to {path}")]
    Write {
        /// The chunk's digest.
        digest: ChunkDigest,
        /// The file or directory being written.
        path: PathBuf,
        /// The I/O error (ENOSPC, EACCES, ...).
        #[source]
        source: io::Error,
    },
    /// Making a batch of new chunk files durable (`syncfs`) failed; none was renamed.
    /// `syncfs` reports a write-back error of any file on the file system, so the error
    /// may belong to another file there.
    #[error(
        "make {count} new chunk files under {path} durable (the first {first}): the file \
         system reported a write-back error, of these or of another file on it"
    )]
    SyncBatch {
        /// How many chunk files the batch held.
        count: usize,
        /// The batch's first chunk.
        first: ChunkDigest,
        /// The chunk store's root.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Creating or fsyncing a chunk directory failed (no chunk in particular).
    #[error("make the chunk directory {path} durable")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The repository lock could not be taken.
    #[error("lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Another process holds the lock in a conflicting mode.
    #[error("repository busy: {path} is held by another process (a backup, prune or gc)")]
    Busy {
        /// The lock file.
        path: PathBuf,
    },
}

/// Where chunk files live under the store's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `<ab>/<digest hex>`; the 256 directories exist from `repo init` on.
    Flat,
    /// `<ab>/<cd>/<digest hex>`, directories created on first use (older repositories).
    Nested,
}

impl Layout {
    /// The value recorded in the catalog's `chunk_layout` meta key (absent: nested).
    #[must_use]
    pub fn meta_value(self) -> &'static str {
        match self {
            Self::Flat => "ab",
            Self::Nested => "ab/cd",
        }
    }

    /// Parse a `chunk_layout` meta value; `None` (key absent) is the nested layout.
    #[must_use]
    pub fn from_meta(value: Option<&str>) -> Option<Self> {
        match value {
            Some("ab") => Some(Self::Flat),
            None | Some("ab/cd") => Some(Self::Nested),
            Some(_) => None,
        }
    }

    /// Directory levels between the root and a chunk file.
    #[must_use]
    pub fn depth(self) -> usize {
        match self {
            Self::Flat => 1,
            Self::Nested => 2,
        }
    }
}

/// Where [`ChunkStore::read_into`] left a chunk's plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// A raw chunk: this range of the `encoded` buffer (aligned at its start).
    InEncoded(std::ops::Range<usize>),
    /// A compressed chunk: the first `n` bytes of the `plain` buffer.
    InPlain(usize),
}

/// The chunk store rooted at `<repo>/chunks`.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    root: PathBuf,
    layout: Layout,
    /// Write chunk files with `O_DIRECT`; cleared for good when the file system refuses.
    direct_io: Arc<AtomicBool>,
    /// The largest plain chunk of the repository (its chunk size; the format's largest
    /// until [`ChunkStore::with_chunk_size`]): a chunk file larger than its encoding can be
    /// is damaged, and is not read into memory.
    max_chunk_bytes: usize,
}

/// The largest chunk size a repository can have (`repo init --chunk-size`).
pub const MAX_CHUNK_SIZE_BYTES: usize = 64 << 20;

/// A chunk file read whole, or found too large for one ([`ChunkStore::read_bounded`]).
pub(crate) enum Bounded {
    /// Its bytes.
    Bytes(Vec<u8>),
    /// Its length, larger than any chunk's file: damaged, and not read.
    TooLarge(u64),
}

impl ChunkStore {
    /// A store rooted at `root` (the `chunks` directory, which must exist) in the flat
    /// layout. Directories missing from `root` are created on first use.
    #[must_use]
    pub fn new(root: PathBuf) -> Self {
        Self::with_layout(root, Layout::Flat)
    }

    /// A store rooted at `root` with an explicit layout.
    #[must_use]
    pub fn with_layout(root: PathBuf, layout: Layout) -> Self {
        Self {
            root,
            layout,
            direct_io: Arc::new(AtomicBool::new(true)),
            max_chunk_bytes: MAX_CHUNK_SIZE_BYTES,
        }
    }

    /// The same store, knowing its repository's chunk size (see `read`).
    #[must_use]
    pub fn with_chunk_size(mut self, chunk_size_bytes: u32) -> Self {
        self.max_chunk_bytes = usize::try_from(chunk_size_bytes).unwrap_or(MAX_CHUNK_SIZE_BYTES);
        self
    }

    /// The layout of chunk files.
    #[must_use]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Create and fsync the 256 fan-out directories of the flat layout, then the root.
    ///
    /// # Errors
    /// [`ChunkStoreError::Directory`] naming the directory.
    pub fn create_fanout(&self) -> Result<(), ChunkStoreError> {
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ChunkStoreError::Directory { path, source }
        };
        let mut dirs = HashSet::new();
        for byte in 0..=255u8 {
            let dir = self.root.join(format!("{byte:02x}"));
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(werr(&dir)(e)),
            }
            dirs.insert(dir);
        }
        dirs.insert(self.root.clone());
        sync_dirs(&dirs)
    }

    /// The store's root directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the chunk file for `digest`.
    #[must_use]
    pub fn chunk_path(&self, digest: &ChunkDigest) -> PathBuf {
        let hex = digest.to_hex();
        match self.layout {
            Layout::Flat => self.root.join(&hex[0..2]).join(hex),
            Layout::Nested => self.root.join(&hex[0..2]).join(&hex[2..4]).join(hex),
        }
    }

    /// Whether the chunk file exists.
    #[must_use]
    pub fn contains(&self, digest: &ChunkDigest) -> bool {
        self.chunk_path(digest).exists()
    }

    /// Store an encoded chunk: temp file, write, fsync, rename. Returns `false` if it existed.
    ///
    /// The caller fsyncs the directories returned by [`ChunkStore::dir_of`] before making the
    /// chunk reachable (catalog commit); see [`sync_dirs`]. Many chunks at once are cheaper
    /// through [`ChunkStore::stage`] and [`ChunkStore::publish`].
    ///
    /// # Errors
    /// [`ChunkStoreError::Write`] naming the file and digest.
    pub fn insert(&self, digest: &ChunkDigest, encoded: &[u8]) -> Result<bool, ChunkStoreError> {
        match self.stage(digest, encoded)? {
            None => Ok(false),
            Some(staged) => {
                self.publish(&mut vec![staged])?;
                Ok(true)
            }
        }
    }

    /// Write an encoded chunk to a temp file in its directory, not yet durable and not yet
    /// visible under its digest name. Returns `None` if the chunk file already exists.
    ///
    /// The chunk becomes part of the store when [`ChunkStore::publish`] has made it durable
    /// and renamed it; a [`Staged`] dropped before that removes its temp file.
    ///
    /// # Errors
    /// [`ChunkStoreError::Write`] naming the file and digest.
    pub fn stage(
        &self,
        digest: &ChunkDigest,
        encoded: &[u8],
    ) -> Result<Option<Staged>, ChunkStoreError> {
        let path = self.chunk_path(digest);
        if path.exists() {
            return Ok(None);
        }
        let dir = path.parent().expect("chunk path has a parent");
        let werr = |path: &Path, source| ChunkStoreError::Write {
            digest: *digest,
            path: path.to_path_buf(),
            source,
        };
        let tmp = dir.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        let direct = self.direct_io.load(Ordering::Relaxed)
            && encoded.len() >= DIRECT_IO_ALIGN
            && encoded.as_ptr().align_offset(DIRECT_IO_ALIGN) == 0;
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.write(true).create_new(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(&tmp)
        };
        let mut opened = open(direct);
        if matches!(&opened, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            durable::create_dir_all(dir).map_err(|(at, e)| werr(&at, e))?;
            opened = open(direct);
        }
        let (file, direct) = match opened {
            Ok(f) => (f, direct),
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                self.no_direct_io(&tmp, &e);
                // Linux creates the file before it refuses `O_DIRECT` (tmpfs before 6.6,
                // ramfs, ecryptfs): remove it, or the buffered `create_new` finds it.
                durable::remove_if_exists(&tmp).map_err(|e| werr(&tmp, e))?;
                (open(false).map_err(|e| werr(&tmp, e))?, false)
            }
            Err(e) => return Err(werr(&tmp, e)),
        };
        // From here on the temp file is removed again if anything fails (`Staged::drop`).
        let staged = Staged {
            digest: *digest,
            tmp: Some(tmp),
            path,
            file: Some(file),
        };
        let file = staged.file.as_ref().expect("opened above");
        self.write_chunk(file, encoded, direct, staged.temp_path())
            .map_err(|e| werr(staged.temp_path(), e))?;
        Ok(Some(staged))
    }

    /// Make every chunk of `batch` durable, then rename each to its digest name; `batch` is
    /// left empty.
    ///
    /// On a local file system that `syncfs(2)` makes durable as a whole (ext2/3/4, XFS,
    /// Btrfs, tmpfs) a batch of several chunks costs one `syncfs` and one `fdatasync` of
    /// its first file, which issues the device cache flush after every metadata write has
    /// completed (ext4 without a journal flushes before its last buffer writes finish in
    /// `syncfs`). Anywhere else (network and FUSE file systems, where `syncfs` promises
    /// less) and for a single chunk each file gets its own `fdatasync`. Either way no chunk
    /// is renamed into place before its data and inode are durable: a crash can leave temp
    /// files (GC removes them), never a chunk name with missing data.
    ///
    /// Chunks renamed before an error stay in the store (complete and durable; GC reclaims
    /// them if no point refers to them); temp files not yet renamed are removed.
    ///
    /// # Errors
    /// [`ChunkStoreError::Write`] naming the file and digest, or
    /// [`ChunkStoreError::SyncBatch`] naming the file system's chunk directory.
    pub fn publish(&self, batch: &mut Vec<Staged>) -> Result<(), ChunkStoreError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let werr = |s: &Staged, source| ChunkStoreError::Write {
            digest: s.digest,
            path: s.temp_path().to_path_buf(),
            source,
        };
        match first
            .file
            .as_ref()
            .filter(|f| batch.len() > 1 && syncfs_covers(f))
        {
            Some(file) => {
                // The first file was opened first, so the error sequence `syncfs` reports
                // against was sampled before any of the batch's writes.
                rustix::fs::syncfs(file).map_err(|e| ChunkStoreError::SyncBatch {
                    count: batch.len(),
                    first: first.digest,
                    path: self.root.clone(),
                    source: e.into(),
                })?;
                file.sync_data().map_err(|e| werr(first, e))?;
            }
            None => {
                for s in batch.iter() {
                    s.sync_data().map_err(|e| werr(s, e))?;
                }
            }
        }
        for mut s in batch.drain(..) {
            let tmp = s.tmp.take().expect("a staged chunk is renamed once");
            if let Err(e) = fs::rename(&tmp, &s.path) {
                let _ = fs::remove_file(&tmp);
                return Err(ChunkStoreError::Write {
                    digest: s.digest,
                    path: s.path.clone(),
                    source: e,
                });
            }
        }
        Ok(())
    }

    /// Write `encoded` into the new, empty `file`. With `direct`, the whole blocks go from
    /// the (aligned) buffer straight to the device and the tail of less than a block through
    /// the page cache.
    fn write_chunk(
        &self,
        file: &File,
        encoded: &[u8],
        direct: bool,
        path: &Path,
    ) -> io::Result<()> {
        if direct {
            let head = encoded.len() / DIRECT_IO_ALIGN * DIRECT_IO_ALIGN;
            let buffered = |file: &File| -> io::Result<()> {
                let flags = rustix::fs::fcntl_getfl(file)?;
                Ok(rustix::fs::fcntl_setfl(
                    file,
                    flags - rustix::fs::OFlags::DIRECT,
                )?)
            };
            match file.write_all_at(&encoded[..head], 0) {
                Ok(()) => {
                    buffered(file)?;
                    let head_u64 = u64::try_from(head).expect("usize fits in u64");
                    return file.write_all_at(&encoded[head..], head_u64);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.no_direct_io(path, &e);
                    buffered(file)?;
                }
                Err(e) => return Err(e),
            }
        }
        file.write_all_at(encoded, 0)
    }

    fn no_direct_io(&self, path: &Path, e: &io::Error) {
        if self.direct_io.swap(false, Ordering::Relaxed) {
            tracing::info!(file = %path.display(), error = %e,
                "direct I/O refused here; chunk files are written through the page cache");
        }
    }

    /// Whether chunk files are written with direct I/O (until the file system refuses it).
    #[must_use]
    pub fn direct_io(&self) -> bool {
        self.direct_io.load(Ordering::Relaxed)
    }

    /// Turn direct I/O for chunk files on or off.
    pub fn set_direct_io(&self, on: bool) {
        self.direct_io.store(on, Ordering::Relaxed);
    }

    /// Directory holding the chunk for `digest`.
    #[must_use]
    pub fn dir_of(&self, digest: &ChunkDigest) -> PathBuf {
        self.chunk_path(digest)
            .parent()
            .expect("chunk path has a parent")
            .to_path_buf()
    }

    /// Read the raw encoded bytes of a chunk.
    ///
    /// # Errors
    /// [`ChunkStoreError::Missing`] or [`ChunkStoreError::Read`]; [`ChunkStoreError::Corrupt`]
    /// for a file larger than any chunk of this repository can be (not read: a damaged
    /// file of gigabytes must not exhaust memory).
    pub fn read_encoded(&self, digest: &ChunkDigest) -> Result<Vec<u8>, ChunkStoreError> {
        match self.read_bounded(&self.chunk_path(digest)) {
            Ok(Bounded::Bytes(bytes)) => Ok(bytes),
            Ok(Bounded::TooLarge(len)) => Err(self.too_large(digest, len)),
            Err(source) => Err(self.read_error(digest, source)),
        }
    }

    /// The bytes of the chunk file at `path`, unless it is larger than any chunk of this
    /// repository can be.
    pub(crate) fn read_bounded(&self, path: &Path) -> io::Result<Bounded> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let Some(len) = usize::try_from(len)
            .ok()
            .filter(|&l| l <= chunk::max_encoded_len(self.max_chunk_bytes))
        else {
            return Ok(Bounded::TooLarge(len));
        };
        let mut bytes = Vec::with_capacity(len);
        // `take`: a file that grew since does not grow the buffer (and then fails its
        // length check when decoded).
        (&mut file).take(len as u64).read_to_end(&mut bytes)?;
        Ok(Bounded::Bytes(bytes))
    }

    fn too_large(&self, digest: &ChunkDigest, len: u64) -> ChunkStoreError {
        self.corrupt(
            digest,
            ChunkError::BadHeader(format!(
                "chunk file of {len} bytes, larger than any chunk of this repository"
            )),
        )
    }

    /// Check that the chunk's file exists, without reading it.
    ///
    /// # Errors
    /// [`ChunkStoreError::Missing`], or [`ChunkStoreError::Read`] if it cannot be looked up.
    pub fn check_present(&self, digest: &ChunkDigest) -> Result<(), ChunkStoreError> {
        fs::symlink_metadata(self.chunk_path(digest))
            .map(drop)
            .map_err(|source| self.read_error(digest, source))
    }

    fn read_error(&self, digest: &ChunkDigest, source: io::Error) -> ChunkStoreError {
        let path = self.chunk_path(digest);
        if source.kind() == io::ErrorKind::NotFound {
            ChunkStoreError::Missing {
                digest: *digest,
                path,
            }
        } else {
            ChunkStoreError::Read {
                digest: *digest,
                path,
                source,
            }
        }
    }

    /// Read, check and decompress a chunk; the plain data is guaranteed to hash to `digest`.
    ///
    /// # Errors
    /// [`ChunkStoreError::Missing`], [`ChunkStoreError::Read`] or [`ChunkStoreError::Corrupt`].
    pub fn read(&self, digest: &ChunkDigest) -> Result<Vec<u8>, ChunkStoreError> {
        let encoded = self.read_encoded(digest)?;
        chunk::decode(&encoded, digest).map_err(|source| self.corrupt(digest, source))
    }

    /// Read and check a chunk with a reused decoder and buffers, for restores. The chunk
    /// file is read into `encoded` so that its plain data (raw chunk) starts at
    /// [`DIRECT_IO_ALIGN`]; a compressed chunk is decompressed to the start of `plain`.
    /// Both places are therefore aligned for a direct-I/O sink. `encoded` must hold
    /// [`DIRECT_IO_ALIGN`] plus the largest chunk file, `plain` the largest plain chunk.
    ///
    /// # Errors
    /// [`ChunkStoreError::Missing`], [`ChunkStoreError::Read`] or [`ChunkStoreError::Corrupt`]
    /// (also for a chunk file larger than any chunk of this repository).
    pub fn read_into(
        &self,
        digest: &ChunkDigest,
        decoder: &mut ChunkDecoder,
        encoded: &mut AlignedBuf,
        plain: &mut AlignedBuf,
    ) -> Result<Restored, ChunkStoreError> {
        let rerr = |source| self.read_error(digest, source);
        let mut file = File::open(self.chunk_path(digest)).map_err(rerr)?;
        let len = file.metadata().map_err(rerr)?.len();
        let at = DIRECT_IO_ALIGN - chunk::HEADER_LEN;
        let room = encoded.len() - at;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= room)
            .ok_or_else(|| self.too_large(digest, len))?;
        let bytes = &mut encoded.as_mut_slice()[at..at + len];
        file.read_exact(bytes).map_err(rerr)?;
        match decoder
            .decode_into(bytes, digest, plain.as_mut_slice())
            .map_err(|source| self.corrupt(digest, source))?
        {
            Decoded::InPlace(range) => Ok(Restored::InEncoded(at + range.start..at + range.end)),
            Decoded::InOut(n) => Ok(Restored::InPlain(n)),
        }
    }

    fn corrupt(&self, digest: &ChunkDigest, source: ChunkError) -> ChunkStoreError {
        ChunkStoreError::Corrupt {
            digest: *digest,
            path: self.chunk_path(digest),
            source,
        }
    }
}

/// A chunk written to a temp file by [`ChunkStore::stage`], waiting for
/// [`ChunkStore::publish`]. Dropping it unpublished removes the temp file.
#[derive(Debug)]
pub struct Staged {
    digest: ChunkDigest,
    /// The temp file; `None` once renamed.
    tmp: Option<PathBuf>,
    /// The chunk's final name.
    path: PathBuf,
    /// The open temp file; `None` once closed by [`Staged::close_file`].
    file: Option<File>,
}

impl Staged {
    /// The chunk's digest.
    #[must_use]
    pub fn digest(&self) -> &ChunkDigest {
        &self.digest
    }

    fn temp_path(&self) -> &Path {
        self.tmp.as_deref().unwrap_or(&self.path)
    }

    /// Whether a batch that starts with this chunk is made durable by one `syncfs`
    /// ([`ChunkStore::publish`]), so that the later chunks' files can be closed at once.
    #[must_use]
    pub fn batch_syncs_file_system(&self) -> bool {
        self.file.as_ref().is_some_and(syncfs_covers)
    }

    /// Closes the temp file's descriptor (the file stays, to be published). For the chunks
    /// after the first of a batch that [`Staged::batch_syncs_file_system`]: a batch of many
    /// small chunks then holds one descriptor, not one per chunk.
    pub fn close_file(&mut self) {
        self.file = None;
    }

    /// Whether the temp file's descriptor is still open.
    #[must_use]
    pub fn has_open_file(&self) -> bool {
        self.file.is_some()
    }

    /// `fdatasync` of the temp file, reopened if its descriptor was closed.
    fn sync_data(&self) -> io::Result<()> {
        match &self.file {
            Some(f) => f.sync_data(),
            None => File::open(self.temp_path())?.sync_data(),
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Whether `syncfs(2)` on `file`'s file system makes every file on it durable: local
/// file systems whose `sync_fs` writes back and flushes everything (see
/// [`ChunkStore::publish`]). Unknown file systems get the per-file `fdatasync`.
///
/// Also only on Linux 5.8 or later: before it, `syncfs` did not report write-back errors
/// (the file system's error sequence it now checks against the descriptor's), so a chunk
/// whose data failed to reach the disk could be renamed into place.
fn syncfs_covers(file: &File) -> bool {
    const EXT234: u64 = 0xEF53;
    const XFS: u64 = 0x5846_5342;
    const BTRFS: u64 = 0x9123_683E;
    const TMPFS: u64 = 0x0102_1994;
    static REPORTS_ERRORS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let reports_errors = *REPORTS_ERRORS.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|r| kernel_version(&r))
            .is_some_and(|v| v >= (5, 8))
    });
    reports_errors
        && rustix::fs::fstatfs(file).is_ok_and(|st| {
            // `f_type` is signed on some targets; the magic numbers are all below 2^32.
            #[allow(clippy::cast_sign_loss, clippy::unnecessary_cast)]
            let fs_type = st.f_type as u64 & 0xFFFF_FFFF;
            matches!(fs_type, EXT234 | XFS | BTRFS | TMPFS)
        })
}

/// (major, minor) of a kernel release string such as `6.1.0-18-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// fsync each directory of `dirs` (making renames durable).
///
/// A backup touches up to all 256 fan-out directories; their fsyncs run on a few threads
/// at once, so the block layer can merge their cache flushes instead of waiting for each
/// in turn (see `docs/benchmarks.md`).
///
/// # Errors
/// [`ChunkStoreError::Directory`] naming the directory.
pub fn sync_dirs(dirs: &HashSet<PathBuf>) -> Result<(), ChunkStoreError> {
    const THREADS: usize = 8;
    const PER_THREAD_MIN: usize = 8;
    let dirs: Vec<&PathBuf> = dirs.iter().collect();
    let per_thread = dirs.len().div_ceil(THREADS).max(PER_THREAD_MIN);
    let sync_all = |part: &[&PathBuf]| part.iter().try_for_each(|dir| sync_dir(dir));
    std::thread::scope(|scope| {
        let mut parts = dirs.chunks(per_thread);
        let mine = parts.next().unwrap_or_default();
        let spawned: Vec<_> = parts
            .enumerate()
            .map(|(n, part)| {
                std::thread::Builder::new()
                    .name(format!("dir-sync/{n}"))
                    .spawn_scoped(scope, move || sync_all(part))
                    .map_err(|_| part)
            })
            .collect();
        let mut result = sync_all(mine);
        for handle in spawned {
            let r = match handle {
                Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                // No thread: do that part here.
                Err(part) => sync_all(part),
            };
            result = result.and(r);
        }
        result
    })
}

fn sync_dir(dir: &Path) -> Result<(), ChunkStoreError> {
    durable::sync_dir(dir).map_err(|source| ChunkStoreError::Directory {
        path: dir.to_path_buf(),
        source,
    })
}

/// A held repository lock; released on drop (or by the kernel when the process dies).
#[derive(Debug)]
pub struct RepoLock {
    _file: File,
}

impl RepoLock {
    fn open(path: &Path) -> Result<File, ChunkStoreError> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| ChunkStoreError::Lock {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Take the shared lock, waiting while GC holds it exclusively.
    ///
    /// # Errors
    /// [`ChunkStoreError::Lock`] if the lock file cannot be opened or locked.
    pub fn shared(path: &Path) -> Result<Self, ChunkStoreError> {
        let file = Self::open(path)?;
        if file.try_lock_shared().is_err() {
            tracing::info!(lock = %path.display(), "waiting for garbage collection to finish");
            file.lock_shared().map_err(|source| ChunkStoreError::Lock {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(Self { _file: file })
    }

    /// Take the exclusive lock, waiting while another holder has it.
    ///
    /// # Errors
    /// [`ChunkStoreError::Lock`] if the lock file cannot be opened or locked.
    pub fn exclusive(path: &Path) -> Result<Self, ChunkStoreError> {
        let file = Self::open(path)?;
        if file.try_lock().is_err() {
            tracing::info!(lock = %path.display(), "waiting for the lock's holder to finish");
            file.lock().map_err(|source| ChunkStoreError::Lock {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(Self { _file: file })
    }

    /// Take the shared lock without waiting.
    ///
    /// # Errors
    /// [`ChunkStoreError::Busy`] if another process holds it exclusively,
    /// [`ChunkStoreError::Lock`] otherwise.
    pub fn try_shared(path: &Path) -> Result<Self, ChunkStoreError> {
        Self::try_with(path, File::try_lock_shared)
    }

    /// Take the exclusive lock without waiting.
    ///
    /// # Errors
    /// [`ChunkStoreError::Busy`] if another process holds it, [`ChunkStoreError::Lock`] otherwise.
    pub fn try_exclusive(path: &Path) -> Result<Self, ChunkStoreError> {
        Self::try_with(path, File::try_lock)
    }

    fn try_with(
        path: &Path,
        lock: fn(&File) -> Result<(), fs::TryLockError>,
    ) -> Result<Self, ChunkStoreError> {
        let file = Self::open(path)?;
        match lock(&file) {
            Ok(()) => Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(ChunkStoreError::Busy {
                path: path.to_path_buf(),
            }),
            Err(fs::TryLockError::Error(source)) => Err(ChunkStoreError::Lock {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::chunk::ChunkEncoder;

    #[test]
    fn insert_read_and_dedupe() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().join("chunks"));
        fs::create_dir(store.root()).unwrap();
        let data = b"some chunk data".repeat(100);
        let d = ChunkDigest::of(&data);
        let enc = ChunkEncoder::new()
            .unwrap()
            .encode(&data, &ChunkDigest::of(&data))
            .unwrap();
        assert!(store.insert(&d, &enc).unwrap());
        assert!(!store.insert(&d, &enc).unwrap());
        assert_eq!(store.read(&d).unwrap(), data);
        let missing = ChunkDigest::of(b"nope");
        let err = store.read(&missing).unwrap_err();
        assert!(err.to_string().contains(&missing.to_hex()), "{err}");
    }

    #[test]
    fn chunk_files_of_any_length_round_trip_with_and_without_direct_io() {
        use crate::repo::aligned::AlignedBuf;
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().join("chunks"));
        fs::create_dir(store.root()).unwrap();
        store.create_fanout().unwrap();
        for direct in [true, false] {
            store.set_direct_io(direct);
            for len in [100, 4096, 4097, 8191, (1 << 20) + 32] {
                let mut buf = AlignedBuf::zeroed(len);
                for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
                    *b = u8::try_from((i * 7 + len + usize::from(direct)) % 251).unwrap();
                }
                let d = ChunkDigest::of(buf.as_slice());
                assert!(store.insert(&d, buf.as_slice()).unwrap());
                assert_eq!(
                    fs::read(store.chunk_path(&d)).unwrap(),
                    buf.as_slice(),
                    "{len} bytes, direct {direct}"
                );
            }
            // Only the file system can turn direct I/O off (tmpfs refuses it).
            eprintln!("direct I/O asked {direct}, in use {}", store.direct_io());
        }
    }

    /// Every file under `root` whose name starts with the temp prefix.
    fn temp_files(root: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(TEMP_PREFIX))
                {
                    found.push(path);
                }
            }
        }
        found
    }

    /// `n` encoded chunks with distinct digests.
    fn encoded_chunks(n: usize) -> Vec<(ChunkDigest, Vec<u8>)> {
        let mut enc = ChunkEncoder::new().unwrap();
        (0..n)
            .map(|i| {
                let data = format!("chunk number {i} ").repeat(50).into_bytes();
                let d = ChunkDigest::of(&data);
                (d, enc.encode(&data, &d).unwrap())
            })
            .collect()
    }

    #[test]
    fn staged_chunks_appear_only_when_published_and_dropped_ones_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().join("chunks"));
        fs::create_dir(store.root()).unwrap();
        let chunks = encoded_chunks(5);
        let mut batch: Vec<Staged> = chunks
            .iter()
            .map(|(d, e)| store.stage(d, e).unwrap().expect("not stored yet"))
            .collect();
        assert!(chunks.iter().all(|(d, _)| !store.contains(d)));
        assert_eq!(temp_files(store.root()).len(), 5);
        // One dropped before publishing: its temp file goes, the chunk never appears.
        let dropped = batch.pop().unwrap();
        let dropped_digest = *dropped.digest();
        drop(dropped);
        store.publish(&mut batch).unwrap();
        assert!(batch.is_empty());
        for (d, e) in &chunks[..4] {
            assert_eq!(fs::read(store.chunk_path(d)).unwrap(), *e);
        }
        assert!(!store.contains(&dropped_digest));
        assert_eq!(temp_files(store.root()), Vec::<PathBuf>::new());
        // Stored chunks are not staged again; an empty batch publishes nothing.
        assert!(store.stage(&chunks[0].0, &chunks[0].1).unwrap().is_none());
        store.publish(&mut Vec::new()).unwrap();
    }

    #[test]
    fn a_failed_publish_names_the_chunk_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().join("chunks"));
        fs::create_dir(store.root()).unwrap();
        let chunks = encoded_chunks(3);
        let mut batch: Vec<Staged> = chunks
            .iter()
            .map(|(d, e)| store.stage(d, e).unwrap().unwrap())
            .collect();
        // The second chunk's name is taken by a non-empty directory: its rename fails.
        let blocked = store.chunk_path(&chunks[1].0);
        fs::create_dir_all(blocked.join("x")).unwrap();
        let err = store.publish(&mut batch).unwrap_err();
        assert!(
            matches!(&err, ChunkStoreError::Write { digest, path, .. }
                if *digest == chunks[1].0 && *path == blocked),
            "{err:?}"
        );
        drop(batch);
        // The chunk renamed before the failure is complete; nothing else is left over.
        assert_eq!(
            fs::read(store.chunk_path(&chunks[0].0)).unwrap(),
            chunks[0].1
        );
        assert!(!store.contains(&chunks[2].0));
        assert_eq!(temp_files(store.root()), Vec::<PathBuf>::new());
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(kernel_version("5.8.0\n"), Some((5, 8)));
        assert_eq!(kernel_version("4.18.0-513.el8.x86_64"), Some((4, 18)));
        assert_eq!(kernel_version("6-rc1"), None);
        assert_eq!(kernel_version(""), None);
        assert!(kernel_version("4.18.0").unwrap() < (5, 8));
        assert!(kernel_version("5.10.0").unwrap() >= (5, 8));
    }

    #[test]
    fn exclusive_lock_conflicts_with_shared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo.lock");
        let shared = RepoLock::shared(&path).unwrap();
        assert!(matches!(
            RepoLock::try_exclusive(&path),
            Err(ChunkStoreError::Busy { .. })
        ));
        drop(shared);
        let _ex = RepoLock::try_exclusive(&path).unwrap();
    }
}
