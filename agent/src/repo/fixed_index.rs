//! Fixed index: one file per disk per restore point (`indexes/<point>/<disk key>.fidx`).
//!
//! ```text
//! offset size field
//!      0    8 magic "VFIDX\0\0\x01"
//!      8    4 format version (1), little endian
//!     12    4 chunk size in bytes, little endian
//!     16    8 disk size in bytes, little endian
//!     24    8 slot count, little endian
//!     32   32 BLAKE3 of the slots
//!     64  32n slots: chunk digests; all zeros = a chunk of zeros (hole), not stored
//! ```
//!
//! Slot `i` covers bytes `[i × chunk size, min((i+1) × chunk size, disk size))`. Written to a
//! temp file, fsynced, renamed; never modified. An incremental starts from its parent's
//! slots, so every index describes a full image.
//!
//! An index has 32 bytes per chunk of its disk: 2 GiB for a 64 TiB disk at 1 MiB chunks.
//! Neither side holds it in memory. [`FixedIndexReader`] checks the whole file once when it
//! opens it (header, length, checksum) and then hands out its slots a block at a time
//! ([`scan`] does both in one pass, for a caller that reads every slot once);
//! [`FixedIndexWriter`] keeps the slots in its temp file, starting from holes (a sparse
//! file) or from a copy of the parent's slots made by the kernel (`copy_file_range`), and
//! writes the slots it is given in sorted runs of a bounded batch. Memory is therefore a few
//! hundred KiB per open index, whatever the disk size.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::ids::ChunkDigest;
use crate::repo::durable;

const MAGIC: &[u8; 8] = b"VFIDX\0\0\x01";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
/// Bytes of one slot.
const SLOT_LEN: usize = 32;
/// Slots read at a time while iterating (64 KiB).
const READ_BLOCK_SLOTS: usize = 2048;
/// Bytes hashed at a time while checking or sealing an index.
const HASH_BLOCK_BYTES: usize = 1 << 20;
/// Slots a writer holds before writing them out (about 320 KiB with their numbers).
const PENDING_MAX: usize = 8192;

/// Errors reading or writing an index file; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum FixedIndexError {
    /// I/O on the index file failed.
    #[error("index {path}")]
    Io {
        /// The index file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not a valid index.
    #[error("index {path} corrupt: {reason}")]
    Corrupt {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl FixedIndexError {
    /// The file the error is about.
    #[must_use]
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. } | Self::Corrupt { path, .. } => path,
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FixedIndexError + '_ {
    move |source| FixedIndexError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What an index's slots cover: the chunk size and the disk's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexGeometry {
    chunk_size_bytes: u32,
    disk_size_bytes: u64,
}

impl IndexGeometry {
    /// Slots of `chunk_size_bytes` over a disk of `disk_size_bytes`.
    ///
    /// # Panics
    /// For a chunk size of 0.
    #[must_use]
    pub fn new(chunk_size_bytes: u32, disk_size_bytes: u64) -> Self {
        assert!(chunk_size_bytes > 0, "chunk size 0");
        Self {
            chunk_size_bytes,
            disk_size_bytes,
        }
    }

    /// Chunk size in bytes.
    #[must_use]
    pub fn chunk_size_bytes(&self) -> u32 {
        self.chunk_size_bytes
    }

    /// Disk size in bytes.
    #[must_use]
    pub fn disk_size_bytes(&self) -> u64 {
        self.disk_size_bytes
    }

    /// Number of slots.
    #[must_use]
    pub fn slot_count(&self) -> usize {
        let count = self
            .disk_size_bytes
            .div_ceil(u64::from(self.chunk_size_bytes));
        usize::try_from(count).expect("slot count fits in usize")
    }

    /// Byte offset of slot `i`.
    #[must_use]
    pub fn slot_offset(&self, i: usize) -> u64 {
        u64::try_from(i).expect("usize fits in u64") * u64::from(self.chunk_size_bytes)
    }

    /// Length in bytes covered by slot `i` (shorter for the last slot).
    #[must_use]
    pub fn slot_len(&self, i: usize) -> u64 {
        let start = self.slot_offset(i);
        self.disk_size_bytes
            .saturating_sub(start)
            .min(u64::from(self.chunk_size_bytes))
    }

    /// Bytes of the index file.
    fn file_len(&self) -> u64 {
        (HEADER_LEN + SLOT_LEN * self.slot_count()) as u64
    }
}

/// File offset of slot `i`.
fn slot_pos(i: usize) -> u64 {
    (HEADER_LEN + SLOT_LEN * i) as u64
}

/// An index file, checked (header, length, checksum) when opened; its slots are read from
/// the file as they are asked for.
#[derive(Debug)]
pub struct FixedIndexReader {
    path: PathBuf,
    file: File,
    geometry: IndexGeometry,
    /// The checksum in the header, which the slots matched when opened; iterating checks
    /// them against it again (see [`FixedIndexReader::slots`]).
    checksum: [u8; 32],
    data_slots: usize,
    data_bytes: u64,
}

impl FixedIndexReader {
    /// [`FixedIndexReader::open`], then check the header against the catalog: the
    /// repository's chunk size and the disk's size. The checksum covers only the slots, so
    /// this is what finds a damaged header (a restore of the wrong length, an incremental
    /// writing at the wrong offsets).
    ///
    /// # Errors
    /// As [`FixedIndexReader::open`]; [`FixedIndexError::Corrupt`] for a header that
    /// disagrees.
    pub fn open_expecting(
        path: &Path,
        chunk_size_bytes: u32,
        disk_size_bytes: u64,
    ) -> Result<Self, FixedIndexError> {
        let index = Self::open(path)?;
        let g = index.geometry;
        if g.chunk_size_bytes != chunk_size_bytes || g.disk_size_bytes != disk_size_bytes {
            return Err(FixedIndexError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "header says chunk size {} and disk size {}, the catalog {chunk_size_bytes} \
                     and {disk_size_bytes}",
                    g.chunk_size_bytes, g.disk_size_bytes
                ),
            });
        }
        Ok(index)
    }

    /// Open an index file and check it whole: magic, version, geometry, length and the
    /// checksum of its slots (read once, a block at a time).
    ///
    /// # Errors
    /// [`FixedIndexError::Io`] or [`FixedIndexError::Corrupt`] naming the file.
    pub fn open(path: &Path) -> Result<Self, FixedIndexError> {
        let Header {
            file,
            geometry,
            checksum,
            len,
        } = Header::read(path)?;
        // One pass over the slots: the checksum, and what the holes leave to restore.
        let (mut data_slots, mut data_bytes) = (0usize, 0u64);
        check_slots(&file, path, len, &checksum, |slot, digest| {
            if !digest.is_zero() {
                data_slots += 1;
                data_bytes += geometry.slot_len(slot);
            }
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            geometry,
            checksum,
            data_slots,
            data_bytes,
        })
    }

    /// The index file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Chunk size and disk size.
    #[must_use]
    pub fn geometry(&self) -> IndexGeometry {
        self.geometry
    }

    /// Chunk size in bytes.
    #[must_use]
    pub fn chunk_size_bytes(&self) -> u32 {
        self.geometry.chunk_size_bytes
    }

    /// Disk size in bytes.
    #[must_use]
    pub fn disk_size_bytes(&self) -> u64 {
        self.geometry.disk_size_bytes
    }

    /// Number of slots.
    #[must_use]
    pub fn slot_count(&self) -> usize {
        self.geometry.slot_count()
    }

    /// Slots that are not holes.
    #[must_use]
    pub fn data_slots(&self) -> usize {
        self.data_slots
    }

    /// Bytes covered by the slots that are not holes: what a restore writes when holes
    /// read as zeros.
    #[must_use]
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Every slot in order, `(slot number, digest)`, read from the file a block at a time.
    /// The slots read are hashed again as they go: after the last slot, one more item is
    /// an error if they do not match the checksum (the file changed, or a read returned
    /// other bytes than at the check), so a caller that acts only on a complete iteration
    /// (GC's mark, before its sweep) never acts on slots that were not checked. An item is
    /// an error, and the last, if the file cannot be read again.
    #[must_use]
    pub fn slots(&self) -> Slots<'_> {
        Slots {
            index: self,
            block: Vec::new(),
            at: 0,
            next: 0,
            hasher: blake3::Hasher::new(),
            done: false,
        }
    }

    /// Every slot's digest, in memory: 32 bytes per slot. For small disks and tests; the
    /// repository's own code iterates [`FixedIndexReader::slots`].
    ///
    /// # Errors
    /// As [`FixedIndexReader::slots`].
    pub fn read_all(&self) -> Result<Vec<ChunkDigest>, FixedIndexError> {
        self.slots().map(|s| s.map(|(_, d)| d)).collect()
    }
}

/// What [`Header::read`] checked of an index file: its header, and that its length fits.
struct Header {
    file: File,
    geometry: IndexGeometry,
    /// The checksum of the slots, as the header gives it.
    checksum: [u8; 32],
    /// The file's length.
    len: u64,
}

impl Header {
    /// Open an index file and check its magic, version, geometry and length (not its
    /// slots).
    fn read(path: &Path) -> Result<Self, FixedIndexError> {
        let corrupt = |reason: String| FixedIndexError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(io_at(path))?;
        let len = file.metadata().map_err(io_at(path))?.len();
        let mut header = [0u8; HEADER_LEN];
        if len < HEADER_LEN as u64 {
            return Err(corrupt("not an index file (bad magic or too short)".into()));
        }
        file.read_exact_at(&mut header, 0).map_err(io_at(path))?;
        if &header[0..8] != MAGIC {
            return Err(corrupt("not an index file (bad magic or too short)".into()));
        }
        let u32_at =
            |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let u64_at =
            |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(corrupt(format!(
                "version {version}, this agent reads {VERSION}"
            )));
        }
        let chunk_size_bytes = u32_at(12);
        let disk_size_bytes = u64_at(16);
        let count = u64_at(24);
        if chunk_size_bytes == 0 || count != disk_size_bytes.div_ceil(u64::from(chunk_size_bytes)) {
            return Err(corrupt(format!(
                "{count} slots do not match disk size {disk_size_bytes} / chunk size {chunk_size_bytes}"
            )));
        }
        let body_len = len - HEADER_LEN as u64;
        if Some(body_len) != count.checked_mul(SLOT_LEN as u64) {
            return Err(corrupt(format!("{body_len} slot bytes for {count} slots")));
        }
        if usize::try_from(count).is_err() {
            return Err(corrupt(format!("{count} slots")));
        }
        Ok(Self {
            file,
            geometry: IndexGeometry::new(chunk_size_bytes, disk_size_bytes),
            checksum: header[32..64].try_into().expect("32 bytes"),
            len,
        })
    }
}

/// Every slot of `file` (of length `len`), `(slot number, digest)`, to `f`, in one pass
/// that also checks them against `checksum` at the end.
fn check_slots(
    file: &File,
    path: &Path,
    len: u64,
    checksum: &[u8; 32],
    mut f: impl FnMut(usize, ChunkDigest),
) -> Result<(), FixedIndexError> {
    let mut hasher = blake3::Hasher::new();
    let mut slot = 0usize;
    for_each_block(file, path, HEADER_LEN as u64..len, |block| {
        hasher.update(block);
        for s in block.chunks_exact(SLOT_LEN) {
            f(slot, ChunkDigest(s.try_into().expect("32-byte slot")));
            slot += 1;
        }
    })?;
    if hasher.finalize().as_bytes() != checksum {
        return Err(FixedIndexError::Corrupt {
            path: path.to_path_buf(),
            reason: "checksum mismatch".into(),
        });
    }
    Ok(())
}

/// Every slot of the index file at `path`, `(slot number, digest)`, to `f`, in one pass
/// over the file: for a caller that reads every slot once (GC's mark), where
/// [`FixedIndexReader::open`] followed by [`FixedIndexReader::slots`] reads them twice.
/// The header is checked first; the checksum only after `f` has seen every slot, so a
/// caller acts on what `f` gathered only when this returns `Ok`.
///
/// # Errors
/// As [`FixedIndexReader::open`].
pub fn scan(path: &Path, f: impl FnMut(usize, ChunkDigest)) -> Result<(), FixedIndexError> {
    let header = Header::read(path)?;
    check_slots(&header.file, path, header.len, &header.checksum, f)
}

/// Calls `f` with the bytes `range` of `file`, a block at a time.
fn for_each_block(
    file: &File,
    path: &Path,
    range: std::ops::Range<u64>,
    mut f: impl FnMut(&[u8]),
) -> Result<(), FixedIndexError> {
    let mut buf = vec![0u8; HASH_BLOCK_BYTES];
    let mut at = range.start;
    while at < range.end {
        let n = usize::try_from((range.end - at).min(HASH_BLOCK_BYTES as u64)).expect("block");
        file.read_exact_at(&mut buf[..n], at).map_err(io_at(path))?;
        f(&buf[..n]);
        at += n as u64;
    }
    Ok(())
}

/// Copy `range` of `from` to the same offsets of `to`: only its data, so that the holes of
/// a sparse index (a mostly empty disk's) stay holes in the copy, and with
/// `copy_file_range` where the kernel has it, so that the bytes do not pass through here.
/// The whole range where the file system cannot tell data from holes.
fn copy_data(
    from: &File,
    from_path: &Path,
    to: &File,
    to_path: &Path,
    range: std::ops::Range<u64>,
) -> Result<(), FixedIndexError> {
    use rustix::fs::{SeekFrom as Seek, seek};
    use rustix::io::Errno;
    use std::io::{Read as _, Seek as _, SeekFrom};

    let seek_err = |e: Errno| io_at(from_path)(e.into());
    let mut pos = range.start;
    while pos < range.end {
        let (start, end) = match seek(from, Seek::Data(pos)) {
            Ok(data) if data >= range.end => break,
            Ok(data) => match seek(from, Seek::Hole(data)).map_err(seek_err)? {
                // Data that ends where it starts (a file system that cannot tell, or a bug):
                // the rest as it is, rather than never getting anywhere.
                hole if hole <= data => (pos, range.end),
                hole => (data, hole.min(range.end)),
            },
            // No data after `pos`.
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) => (pos, range.end),
            Err(e) => return Err(seek_err(e)),
        };
        let (mut reader, mut writer) = (from, to);
        reader
            .seek(SeekFrom::Start(start))
            .map_err(io_at(from_path))?;
        writer
            .seek(SeekFrom::Start(start))
            .map_err(io_at(to_path))?;
        let copied =
            io::copy(&mut reader.take(end - start), &mut writer).map_err(io_at(to_path))?;
        if copied != end - start {
            return Err(FixedIndexError::Corrupt {
                path: from_path.to_path_buf(),
                reason: format!("ended at byte {} while copying it", start + copied),
            });
        }
        pos = end;
    }
    Ok(())
}

/// Iterator over an index's slots (see [`FixedIndexReader::slots`]).
#[derive(Debug)]
pub struct Slots<'a> {
    index: &'a FixedIndexReader,
    block: Vec<u8>,
    /// Position in `block`.
    at: usize,
    /// Slot number of the next slot to return.
    next: usize,
    /// Of the slots read so far.
    hasher: blake3::Hasher,
    /// Whether the iteration ended (after an error, or the checksum's check).
    done: bool,
}

impl Iterator for Slots<'_> {
    type Item = Result<(usize, ChunkDigest), FixedIndexError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let count = self.index.slot_count();
        if self.next >= count {
            self.done = true;
            if self.hasher.finalize().as_bytes() == &self.index.checksum {
                return None;
            }
            return Some(Err(FixedIndexError::Corrupt {
                path: self.index.path.clone(),
                reason: "slots read again do not match the checksum they matched when the \
                         index was opened"
                    .into(),
            }));
        }
        if self.at >= self.block.len() {
            let n = (count - self.next).min(READ_BLOCK_SLOTS);
            self.block.resize(n * SLOT_LEN, 0);
            if let Err(e) = self
                .index
                .file
                .read_exact_at(&mut self.block, slot_pos(self.next))
            {
                self.done = true;
                return Some(Err(FixedIndexError::Io {
                    path: self.index.path.clone(),
                    source: e,
                }));
            }
            self.hasher.update(&self.block);
            self.at = 0;
        }
        let raw: [u8; 32] = self.block[self.at..self.at + SLOT_LEN]
            .try_into()
            .expect("32-byte slot");
        self.at += SLOT_LEN;
        let slot = self.next;
        self.next += 1;
        Some(Ok((slot, ChunkDigest(raw))))
    }
}

/// A new index being written: a temp file beside `path` that [`FixedIndexWriter::finish`]
/// seals (checksum, header, fsync) and renames to `path`. Dropped unfinished, the temp file
/// is removed, and so is the directory if this writer made it and it is empty again (what a
/// killed process leaves is GC's: see `gc`).
#[derive(Debug)]
pub struct FixedIndexWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    geometry: IndexGeometry,
    pending: Vec<(usize, ChunkDigest)>,
    /// Whether this writer made the index's directory (the point's, for its first disk).
    made_dir: bool,
    finished: bool,
}

impl FixedIndexWriter {
    /// An index at `path` (written by [`FixedIndexWriter::finish`]) with every slot a hole.
    ///
    /// # Errors
    /// [`FixedIndexError::Io`] naming the directory or temp file.
    pub fn create(path: &Path, geometry: IndexGeometry) -> Result<Self, FixedIndexError> {
        let writer = Self::create_temp(path, geometry)?;
        // A sparse file: the slots not written read as zeros, the hole marker.
        writer
            .file
            .set_len(geometry.file_len())
            .map_err(io_at(&writer.tmp))?;
        Ok(writer)
    }

    /// An index at `path` starting as a copy of `parent`'s slots, resized to
    /// `disk_size_bytes` (new slots are holes; a shrunk disk's last slot, now shorter than
    /// the parent's chunk there, is made a hole too).
    ///
    /// # Errors
    /// [`FixedIndexError::Io`] naming the file that failed.
    pub fn derive(
        path: &Path,
        parent: &FixedIndexReader,
        disk_size_bytes: u64,
    ) -> Result<Self, FixedIndexError> {
        let geometry = IndexGeometry::new(parent.chunk_size_bytes(), disk_size_bytes);
        let mut writer = Self::create_temp(path, geometry)?;
        let n = geometry.slot_count().min(parent.slot_count());
        copy_data(
            &parent.file,
            &parent.path,
            &writer.file,
            &writer.tmp,
            HEADER_LEN as u64..slot_pos(n),
        )?;
        // Its full length: holes past the last data copied, and new slots, read as zeros.
        writer
            .file
            .set_len(geometry.file_len())
            .map_err(io_at(&writer.tmp))?;
        // The copy, and the parent's slots past it (a shrunk disk), must match the checksum
        // the parent's slots matched when it was opened: `finish` seals whatever the temp
        // file holds, so a bad read or a file system's wrong hole would otherwise pass on
        // to this index and every incremental after it.
        let mut hasher = blake3::Hasher::new();
        let copied = HEADER_LEN as u64..slot_pos(n);
        for_each_block(&writer.file, &writer.tmp, copied, |b| {
            hasher.update(b);
        })?;
        let rest = slot_pos(n)..parent.geometry.file_len();
        for_each_block(&parent.file, &parent.path, rest, |b| {
            hasher.update(b);
        })?;
        if hasher.finalize().as_bytes() != &parent.checksum {
            return Err(FixedIndexError::Corrupt {
                path: parent.path.clone(),
                reason: format!(
                    "its copy in {} does not match its checksum",
                    writer.tmp.display()
                ),
            });
        }
        if disk_size_bytes < parent.disk_size_bytes()
            && n > 0
            && geometry.slot_len(n - 1) != parent.geometry.slot_len(n - 1)
        {
            writer.set(n - 1, ChunkDigest::ZERO)?;
        }
        Ok(writer)
    }

    fn create_temp(path: &Path, geometry: IndexGeometry) -> Result<Self, FixedIndexError> {
        let dir = path.parent().expect("an index path has a parent");
        let mut tmp_name = path.file_name().map(OsString::from).unwrap_or_default();
        tmp_name.push(durable::TEMP_INFIX);
        tmp_name.push(uuid::Uuid::new_v4().simple().to_string());
        let tmp = path.with_file_name(tmp_name);
        // The disks of a VM are written at once, each into the point's directory, and a
        // writer that fails removes the directory it made if it is empty: another may find
        // it gone between making it and opening its file, and makes it again.
        let mut attempts = 0;
        let (file, made_dir) = loop {
            let made_dir = !dir.is_dir();
            durable::create_dir_all(dir)
                .map_err(|(path, source)| FixedIndexError::Io { path, source })?;
            match fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
            {
                Ok(file) => break (file, made_dir),
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                Err(e) => return Err(io_at(&tmp)(e)),
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            file,
            geometry,
            pending: Vec::new(),
            made_dir,
            finished: false,
        })
    }

    /// Chunk size and disk size.
    #[must_use]
    pub fn geometry(&self) -> IndexGeometry {
        self.geometry
    }

    /// Set slot `i` (written out with others, at the latest by `finish`).
    ///
    /// # Errors
    /// [`FixedIndexError::Io`] when a batch of slots cannot be written.
    ///
    /// # Panics
    /// For a slot beyond the disk.
    pub fn set(&mut self, i: usize, digest: ChunkDigest) -> Result<(), FixedIndexError> {
        assert!(i < self.geometry.slot_count(), "slot {i} beyond the index");
        self.pending.push((i, digest));
        if self.pending.len() >= PENDING_MAX {
            self.flush()?;
        }
        Ok(())
    }

    /// Write the pending slots, each run of consecutive slots with one write (the last
    /// value given for a slot wins).
    fn flush(&mut self) -> Result<(), FixedIndexError> {
        // Stable: a slot set twice keeps its order, so the later value is written last.
        self.pending.sort_by_key(|&(slot, _)| slot);
        let mut run: Vec<u8> = Vec::with_capacity(self.pending.len() * SLOT_LEN);
        let mut start = 0usize;
        let mut next = None;
        for &(slot, digest) in &self.pending {
            if next == Some(slot + 1) {
                // The same slot again: replace the last value.
                let at = run.len() - SLOT_LEN;
                run[at..].copy_from_slice(&digest.0);
                continue;
            }
            if next != Some(slot) {
                if !run.is_empty() {
                    self.file
                        .write_all_at(&run, slot_pos(start))
                        .map_err(io_at(&self.tmp))?;
                    run.clear();
                }
                start = slot;
            }
            run.extend_from_slice(&digest.0);
            next = Some(slot + 1);
        }
        if !run.is_empty() {
            self.file
                .write_all_at(&run, slot_pos(start))
                .map_err(io_at(&self.tmp))?;
        }
        self.pending.clear();
        Ok(())
    }

    /// Seal the index: write the pending slots, checksum the slots, write the header,
    /// fsync, rename to the final path and fsync its directory.
    ///
    /// # Errors
    /// [`FixedIndexError::Io`] naming the file that failed (the temp file is removed).
    pub fn finish(mut self) -> Result<(), FixedIndexError> {
        self.flush()?;
        let g = self.geometry;
        let mut hasher = blake3::Hasher::new();
        for_each_block(
            &self.file,
            &self.tmp,
            HEADER_LEN as u64..g.file_len(),
            |block| {
                hasher.update(block);
            },
        )?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&g.chunk_size_bytes.to_le_bytes());
        header.extend_from_slice(&g.disk_size_bytes.to_le_bytes());
        header.extend_from_slice(&(g.slot_count() as u64).to_le_bytes());
        header.extend_from_slice(hasher.finalize().as_bytes());
        self.file
            .write_all_at(&header, 0)
            .and_then(|()| self.file.sync_all())
            .map_err(io_at(&self.tmp))?;
        fs::rename(&self.tmp, &self.path).map_err(io_at(&self.path))?;
        self.finished = true;
        let dir = self.path.parent().expect("an index path has a parent");
        durable::sync_dir(dir).map_err(io_at(dir))
    }
}

impl Drop for FixedIndexWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.tmp);
            if self.made_dir
                && let Some(dir) = self.path.parent()
            {
                // Fails, as it should, when another disk's index is in it.
                let _ = fs::remove_dir(dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn write_read_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p/2000.fidx");
        let g = IndexGeometry::new(1024, 5000);
        assert_eq!(g.slot_count(), 5);
        assert_eq!(g.slot_len(4), 904);
        let mut idx = FixedIndexWriter::create(&path, g).unwrap();
        idx.set(1, ChunkDigest::of(b"x")).unwrap();
        idx.set(4, ChunkDigest::of(b"y")).unwrap();
        idx.finish().unwrap();
        assert_eq!(names(&dir.path().join("p")), ["2000.fidx"]);
        let read = FixedIndexReader::open_expecting(&path, 1024, 5000).unwrap();
        let mut want = vec![ChunkDigest::ZERO; 5];
        want[1] = ChunkDigest::of(b"x");
        want[4] = ChunkDigest::of(b"y");
        assert_eq!(read.read_all().unwrap(), want);
        assert_eq!((read.data_slots(), read.data_bytes()), (2, 1024 + 904));
        let err = FixedIndexReader::open_expecting(&path, 1024, 6000).unwrap_err();
        assert!(err.to_string().contains("disk size 5000"), "{err}");

        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_LEN + 40] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let err = FixedIndexReader::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("2000.fidx") && err.contains("checksum"),
            "{err}"
        );
        fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = FixedIndexReader::open(&path).unwrap_err().to_string();
        assert!(err.contains("slot bytes for 5 slots"), "{err}");
    }

    /// More slots than one batch and one read block, set out of order and some twice.
    #[test]
    fn slots_set_in_any_order_over_many_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p/2000.fidx");
        let count = PENDING_MAX * 2 + READ_BLOCK_SLOTS + 7;
        let g = IndexGeometry::new(4096, 4096 * count as u64 - 100);
        let mut idx = FixedIndexWriter::create(&path, g).unwrap();
        let mut want = vec![ChunkDigest::ZERO; count];
        // A stride coprime with the count visits every slot once, out of order.
        let mut slot = 0;
        for n in 0..count {
            slot = (slot + 7919) % count;
            if n % 3 == 0 {
                continue;
            }
            let d = ChunkDigest::of(&n.to_le_bytes());
            idx.set(slot, ChunkDigest::of(b"first")).unwrap();
            idx.set(slot, d).unwrap();
            want[slot] = d;
        }
        idx.finish().unwrap();
        let read = FixedIndexReader::open(&path).unwrap();
        let got: Vec<(usize, ChunkDigest)> = read.slots().map(Result::unwrap).collect();
        assert_eq!(got.len(), count);
        assert!(got.iter().enumerate().all(|(i, (slot, _))| i == *slot));
        assert_eq!(read.read_all().unwrap(), want);
    }

    #[test]
    fn derive_resizes() {
        let dir = tempfile::tempdir().unwrap();
        let parent_path = dir.path().join("a/2000.fidx");
        let mut parent =
            FixedIndexWriter::create(&parent_path, IndexGeometry::new(1024, 4096)).unwrap();
        parent.set(3, ChunkDigest::of(b"a")).unwrap();
        parent.set(0, ChunkDigest::of(b"b")).unwrap();
        parent.finish().unwrap();
        let parent = FixedIndexReader::open(&parent_path).unwrap();

        let grown_path = dir.path().join("b/2000.fidx");
        let mut grown = FixedIndexWriter::derive(&grown_path, &parent, 8192).unwrap();
        grown.set(5, ChunkDigest::of(b"c")).unwrap();
        grown.finish().unwrap();
        let grown = FixedIndexReader::open_expecting(&grown_path, 1024, 8192)
            .unwrap()
            .read_all()
            .unwrap();
        assert_eq!(grown.len(), 8);
        assert_eq!(grown[0], ChunkDigest::of(b"b"));
        assert_eq!(grown[3], ChunkDigest::of(b"a"));
        assert_eq!(grown[5], ChunkDigest::of(b"c"));
        assert!(grown[4].is_zero() && grown[7].is_zero());

        let shrunk_path = dir.path().join("c/2000.fidx");
        FixedIndexWriter::derive(&shrunk_path, &parent, 3500)
            .unwrap()
            .finish()
            .unwrap();
        let shrunk = FixedIndexReader::open(&shrunk_path)
            .unwrap()
            .read_all()
            .unwrap();
        assert_eq!(shrunk.len(), 4);
        assert_eq!(shrunk[0], ChunkDigest::of(b"b"));
        assert!(shrunk[3].is_zero());
    }

    /// A mostly empty disk's index stays sparse, copied too: an incremental of a large thin
    /// disk writes its slots, not 32 bytes for every chunk of the disk.
    #[test]
    fn a_sparse_index_stays_sparse_when_derived() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        // 1 TiB in 1 MiB chunks: 32 MiB of slots.
        let g = IndexGeometry::new(1 << 20, 1 << 40);
        let parent_path = dir.path().join("a/2000.fidx");
        let mut parent = FixedIndexWriter::create(&parent_path, g).unwrap();
        for slot in [0, 5000, g.slot_count() - 1] {
            parent
                .set(slot, ChunkDigest::of(&slot.to_le_bytes()))
                .unwrap();
        }
        parent.finish().unwrap();
        let allocated = |p: &Path| fs::metadata(p).unwrap().blocks() * 512;
        if allocated(&parent_path) > 1 << 20 {
            eprintln!("this file system does not keep holes; nothing to check");
            return;
        }
        let parent = FixedIndexReader::open(&parent_path).unwrap();
        assert_eq!(parent.data_slots(), 3);
        let child_path = dir.path().join("b/2000.fidx");
        let mut child = FixedIndexWriter::derive(&child_path, &parent, 1 << 40).unwrap();
        child.set(7, ChunkDigest::of(b"changed")).unwrap();
        child.finish().unwrap();
        assert!(
            allocated(&child_path) < 1 << 20,
            "{} bytes allocated",
            allocated(&child_path)
        );
        let child = FixedIndexReader::open(&child_path).unwrap();
        assert_eq!(child.data_slots(), 4);
        let kept: Vec<(usize, ChunkDigest)> = child
            .slots()
            .map(Result::unwrap)
            .filter(|(_, d)| !d.is_zero())
            .collect();
        assert_eq!(
            kept.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [0, 7, 5000, g.slot_count() - 1]
        );
        assert_eq!(kept[2].1, ChunkDigest::of(&5000usize.to_le_bytes()));
    }

    /// `scan` gives what `open` + `slots` give, in one pass; a damaged slot makes it fail
    /// after the last slot, a damaged header before the first.
    #[test]
    fn a_scan_reads_every_slot_once_and_checks_them_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/2000.fidx");
        // More slots than one read block holds.
        let g = IndexGeometry::new(1024, 1024 * 40_000);
        let mut idx = FixedIndexWriter::create(&path, g).unwrap();
        for slot in [0, 7, 32_768, 39_999] {
            idx.set(slot, ChunkDigest::of(&slot.to_le_bytes())).unwrap();
        }
        idx.finish().unwrap();
        let want: Vec<(usize, ChunkDigest)> = FixedIndexReader::open(&path)
            .unwrap()
            .slots()
            .map(Result::unwrap)
            .collect();
        let mut got = Vec::new();
        scan(&path, |slot, digest| got.push((slot, digest))).unwrap();
        assert_eq!(got, want);

        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[1], slot_pos(20_000)).unwrap();
        let mut seen = 0;
        let err = scan(&path, |_, _| seen += 1).unwrap_err().to_string();
        assert_eq!(seen, 40_000);
        assert!(
            err.contains("2000.fidx") && err.contains("checksum mismatch"),
            "{err}"
        );

        file.write_all_at(b"X", 0).unwrap();
        let mut seen = 0;
        let err = scan(&path, |_, _| seen += 1).unwrap_err().to_string();
        assert_eq!(seen, 0);
        assert!(err.contains("not an index file"), "{err}");
    }

    /// Slots that change after the index was checked (a flaky read, a file changed under
    /// it) end the iteration with an error, and a derived index refuses to start from them.
    #[test]
    fn slots_changed_after_the_check_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/2000.fidx");
        let g = IndexGeometry::new(1024, 1024 * 5000);
        let mut idx = FixedIndexWriter::create(&path, g).unwrap();
        idx.set(4000, ChunkDigest::of(b"x")).unwrap();
        idx.finish().unwrap();
        let index = FixedIndexReader::open(&path).unwrap();
        assert_eq!(index.slots().count(), 5000, "no error item when intact");
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[1], slot_pos(3000)).unwrap();
        let items: Vec<_> = index.slots().collect();
        assert_eq!(items.len(), 5001);
        assert!(items[..5000].iter().all(Result::is_ok));
        let err = items[5000].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("2000.fidx") && err.contains("do not match the checksum"),
            "{err}"
        );
        assert!(index.read_all().is_err());

        for size in [1024 * 5000, 1024 * 6000, 1024 * 3500] {
            let child = dir.path().join(format!("{size}/2000.fidx"));
            let err = FixedIndexWriter::derive(&child, &index, size)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("a/2000.fidx") && err.contains("does not match its checksum"),
                "{size}: {err}"
            );
            assert!(!dir.path().join(size.to_string()).exists(), "left behind");
        }
    }

    /// A writer dropped before `finish` leaves nothing; a failed `finish` neither.
    #[test]
    fn an_unfinished_index_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p/2000.fidx");
        let mut idx = FixedIndexWriter::create(&path, IndexGeometry::new(1024, 4096)).unwrap();
        idx.set(0, ChunkDigest::of(b"x")).unwrap();
        drop(idx);
        assert!(names(dir.path()).is_empty(), "the directory it made stays");
        // One it did not make stays, as does another disk's index in it.
        FixedIndexWriter::create(&dir.path().join("p/2001.fidx"), IndexGeometry::new(1024, 1))
            .unwrap()
            .finish()
            .unwrap();
        drop(FixedIndexWriter::create(&path, IndexGeometry::new(1024, 4096)).unwrap());
        assert_eq!(names(&dir.path().join("p")), ["2001.fidx"]);
        fs::remove_file(dir.path().join("p/2001.fidx")).unwrap();

        fs::create_dir_all(path.join("in-the-way")).unwrap();
        let idx = FixedIndexWriter::create(&path, IndexGeometry::new(1024, 4096)).unwrap();
        let err = idx.finish().unwrap_err().to_string();
        assert!(err.contains("2000.fidx"), "{err}");
        assert_eq!(names(&dir.path().join("p")), ["2000.fidx"]);
        assert!(path.is_dir());
    }
}
