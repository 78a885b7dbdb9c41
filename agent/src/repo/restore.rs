//! Restore pipeline for one disk: `chunk-read/<n>` workers prefetch, check and decompress
//! chunks in parallel; the caller's thread owns the [`DiskSink`] and writes them. Zero slots
//! are skipped when the sink reads holes as zeros. Memory: queue depth + workers chunks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::bounded;

use crate::ids::ChunkDigest;
use crate::repo::aligned::{AlignedBuf, BufferPool, DIRECT_IO_ALIGN};
use crate::repo::chunk::{self, ChunkDecoder, ChunkError};
use crate::repo::chunk_store::{ChunkStore, ChunkStoreError, Restored};
use crate::repo::fixed_index::{FixedIndexError, FixedIndexReader};
use crate::repo::source::{DiskSink, SourceError};

/// Errors of the restore pipeline; the caller adds the restore point and disk.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A chunk could not be read (missing, corrupt, I/O).
    #[error("chunk {digest} for offset {offset}")]
    Chunk {
        /// Digest in the index.
        digest: ChunkDigest,
        /// Disk offset of the slot.
        offset: u64,
        /// What went wrong (names the file).
        #[source]
        source: ChunkStoreError,
    },
    /// A chunk's length does not match its slot.
    #[error("chunk {digest} for offset {offset} has {actual} bytes, slot has {expected}")]
    Length {
        /// Digest.
        digest: ChunkDigest,
        /// Disk offset.
        offset: u64,
        /// Slot length.
        expected: u64,
        /// Chunk length.
        actual: u64,
    },
    /// Writing the target failed.
    #[error("write restored disk")]
    Sink(#[source] SourceError),
    /// A chunk decoder could not be created (out of memory).
    #[error("create a chunk decoder")]
    Decoder(#[source] ChunkError),
    /// The index could not be read again after it was checked.
    #[error("read the index")]
    Index(#[source] FixedIndexError),
    /// A worker thread could not start.
    #[error("restore thread {0} failed")]
    Thread(String),
}

/// Restored data for the sink: `buf[range]` at `offset`, or `len` zero bytes.
enum Piece {
    Data {
        buf: AlignedBuf,
        range: std::ops::Range<usize>,
    },
    Zero(usize),
}

/// Restore `index` into `sink` with `workers` parallel chunk readers.
///
/// An `index-read` thread reads the index's slots a block at a time and hands them to the
/// workers through a bounded queue, so nothing per slot is held, whatever the disk size.
/// Buffers come from a pool of at most `3 × workers`, made on demand (a worker holds at
/// most two: the chunk file and, for a compressed chunk, its plain data), so memory is
/// bounded and nothing is allocated per chunk; a raw chunk is handed to the sink straight
/// from the file's bytes.
///
/// # Errors
/// The first [`RestoreError`].
pub fn restore_disk(
    store: &ChunkStore,
    index: &FixedIndexReader,
    sink: &mut dyn DiskSink,
    workers: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), RestoreError> {
    let skip_zero = sink.zeroes_are_holes();
    let geometry = index.geometry();
    let (slot_count, total) = if skip_zero {
        (index.data_slots(), index.data_bytes())
    } else {
        (index.slot_count(), index.disk_size_bytes())
    };
    let workers = workers.max(1);
    let abort = AtomicBool::new(false);
    let first_error: Mutex<Option<RestoreError>> = Mutex::new(None);
    let fail = |e: RestoreError| {
        abort.store(true, Ordering::SeqCst);
        let mut slot = first_error.lock().expect("error slot not poisoned");
        if slot.is_none() {
            *slot = Some(e);
        }
    };
    let cs = usize::try_from(index.chunk_size_bytes()).expect("chunk size fits in usize");
    let pool_size = (workers * 3).min(2 * slot_count.max(1));
    // Room for a chunk file read so that its data starts aligned (see `read_into`).
    let buf_len = DIRECT_IO_ALIGN + chunk::max_encoded_len(cs);
    let pool = BufferPool::new(pool_size, buf_len);
    let zeros = AlignedBuf::zeroed(if skip_zero { 0 } else { cs });
    let (slot_tx, slot_rx) = bounded::<(usize, ChunkDigest)>(workers * 4);
    let (tx, rx) = bounded::<(u64, Piece)>(workers);

    std::thread::scope(|scope| {
        let (abort, fail) = (&abort, &fail);
        let spawned = std::thread::Builder::new()
            .name("index-read".into())
            .spawn_scoped(scope, move || {
                let feed = || {
                    for slot in index.slots() {
                        if abort.load(Ordering::Relaxed) {
                            break;
                        }
                        match slot {
                            Ok((_, digest)) if skip_zero && digest.is_zero() => {}
                            Ok(slot) => {
                                if slot_tx.send(slot).is_err() {
                                    break;
                                }
                            }
                            Err(e) => {
                                fail(RestoreError::Index(e));
                                break;
                            }
                        }
                    }
                };
                if let Err(e) = crate::repo::pipeline::run_guarded("index-read", feed) {
                    fail(RestoreError::Thread(e));
                }
            });
        if let Err(e) = spawned {
            fail(RestoreError::Thread(format!("index-read: {e}")));
        }
        for n in 0..workers {
            let (tx, slot_rx) = (tx.clone(), slot_rx.clone());
            let pool = &pool;
            let spawned = std::thread::Builder::new()
                .name(format!("chunk-read/{n}"))
                .spawn_scoped(scope, move || {
                    // A worker that panics stops the others as an error does.
                    let work = || {
                        let mut decoder = match ChunkDecoder::new() {
                            Ok(d) => d,
                            Err(source) => {
                                fail(RestoreError::Decoder(source));
                                return;
                            }
                        };
                        for (slot, digest) in &slot_rx {
                            if abort.load(Ordering::Relaxed) {
                                break;
                            }
                            let offset = geometry.slot_offset(slot);
                            let expected = geometry.slot_len(slot);
                            let piece = if digest.is_zero() {
                                Piece::Zero(usize::try_from(expected).expect("slot fits in memory"))
                            } else {
                                let (Some(mut encoded), Some(mut plain)) =
                                    (pool.take(abort), pool.take(abort))
                                else {
                                    break;
                                };
                                match store.read_into(
                                    &digest,
                                    &mut decoder,
                                    &mut encoded,
                                    &mut plain,
                                ) {
                                    Ok(Restored::InEncoded(range)) => {
                                        pool.give_back(plain);
                                        Piece::Data {
                                            buf: encoded,
                                            range,
                                        }
                                    }
                                    Ok(Restored::InPlain(n)) => {
                                        pool.give_back(encoded);
                                        Piece::Data {
                                            buf: plain,
                                            range: 0..n,
                                        }
                                    }
                                    Err(source) => {
                                        pool.give_back(encoded);
                                        pool.give_back(plain);
                                        fail(RestoreError::Chunk {
                                            digest,
                                            offset,
                                            source,
                                        });
                                        break;
                                    }
                                }
                            };
                            let actual = match &piece {
                                Piece::Data { range, .. } => range.len(),
                                Piece::Zero(len) => *len,
                            } as u64;
                            if actual != expected {
                                fail(RestoreError::Length {
                                    digest,
                                    offset,
                                    expected,
                                    actual,
                                });
                                break;
                            }
                            if tx.send((offset, piece)).is_err() {
                                break;
                            }
                        }
                    };
                    if let Err(e) =
                        crate::repo::pipeline::run_guarded(&format!("chunk-read/{n}"), work)
                    {
                        fail(RestoreError::Thread(e));
                    }
                });
            if let Err(e) = spawned {
                fail(RestoreError::Thread(format!("chunk-read/{n}: {e}")));
            }
        }
        drop((tx, slot_rx));
        let mut done = 0u64;
        for (offset, piece) in rx {
            let (data, buf) = match piece {
                Piece::Data { buf, range } => (range, Some(buf)),
                Piece::Zero(len) => (0..len, None),
            };
            let bytes = buf.as_ref().map_or(zeros.as_slice(), AlignedBuf::as_slice);
            if !abort.load(Ordering::Relaxed) {
                match sink.write_at(offset, &bytes[data.clone()]) {
                    Ok(()) => {
                        done += data.len() as u64;
                        progress(done, total);
                    }
                    Err(e) => fail(RestoreError::Sink(e)),
                }
            }
            if let Some(buf) = buf {
                pool.give_back(buf);
            }
        }
    });
    if let Some(e) = first_error.into_inner().expect("error slot not poisoned") {
        return Err(e);
    }
    sink.finish().map_err(RestoreError::Sink)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::fixed_index::{FixedIndexWriter, IndexGeometry};
    use std::io;

    struct FullDisk;

    impl DiskSink for FullDisk {
        fn zeroes_are_holes(&self) -> bool {
            false
        }
        fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SourceError> {
            Err(SourceError::Write {
                path: "/dev/full-disk".into(),
                offset,
                len: data.len(),
                source: io::Error::from_raw_os_error(28),
            })
        }
        fn finish(&mut self) -> Result<(), SourceError> {
            Ok(())
        }
    }

    #[test]
    fn enospc_in_sink_is_reported_with_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().to_path_buf());
        let path = dir.path().join("p/2000.fidx");
        FixedIndexWriter::create(&path, IndexGeometry::new(4096, 8192))
            .unwrap()
            .finish()
            .unwrap();
        let index = FixedIndexReader::open(&path).unwrap();
        let err = restore_disk(&store, &index, &mut FullDisk, 2, &mut |_, _| {}).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            chain.contains("/dev/full-disk") && chain.contains("offset"),
            "{chain}"
        );
        let io_err = std::error::Error::source(std::error::Error::source(&err).unwrap()).unwrap();
        assert!(io_err.to_string().contains("No space left"), "{io_err}");
    }

    /// A disk in memory that does not read unwritten ranges as zeros (a reused disk).
    struct MemDisk {
        data: Vec<u8>,
        writes: usize,
    }

    impl DiskSink for MemDisk {
        fn zeroes_are_holes(&self) -> bool {
            false
        }
        fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SourceError> {
            let at = usize::try_from(offset).unwrap();
            self.data[at..at + data.len()].copy_from_slice(data);
            self.writes += 1;
            Ok(())
        }
        fn finish(&mut self) -> Result<(), SourceError> {
            Ok(())
        }
    }

    #[test]
    fn raw_compressed_zero_and_short_chunks_round_trip_into_a_reused_disk() {
        use crate::repo::pipeline::{PipelineOptions, SlotSet, backup_disk};
        use crate::repo::source::RawFileSource;
        use crate::repo::synthetic_image::SplitMix64;

        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(dir.path().join("chunks"));
        std::fs::create_dir(store.root()).unwrap();
        let cs = 256 * 1024;
        // random (stored raw), zeros, text (compressed), a duplicate, a short random tail.
        let mut data = vec![0u8; cs * 4 + 1000];
        SplitMix64::new(5).fill(&mut data[..cs]);
        data[2 * cs..3 * cs]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = b"restore the chunk "[i % 18]);
        data.copy_within(2 * cs..3 * cs, 3 * cs);
        SplitMix64::new(6).fill(&mut data[4 * cs..]);
        let img = dir.path().join("img");
        std::fs::write(&img, &data).unwrap();
        let path = dir.path().join("p/2000.fidx");
        let mut index = FixedIndexWriter::create(
            &path,
            IndexGeometry::new(u32::try_from(cs).unwrap(), data.len() as u64),
        )
        .unwrap();
        let slots = SlotSet::all(index.geometry().slot_count());
        let stats = backup_disk(
            &store,
            RawFileSource::open(&img).unwrap(),
            &mut index,
            &slots,
            PipelineOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!((stats.chunks_zero, stats.chunks_new), (1, 3), "{stats:?}");
        index.finish().unwrap();
        let index = FixedIndexReader::open(&path).unwrap();
        for workers in [1, 3] {
            let mut disk = MemDisk {
                data: vec![0xAA; data.len()],
                writes: 0,
            };
            restore_disk(&store, &index, &mut disk, workers, &mut |_, _| {}).unwrap();
            assert!(
                disk.data == data,
                "{workers} workers: restored bytes differ"
            );
            // The zero chunk is written too: the disk is not known to read as zeros.
            assert_eq!(disk.writes, 5);
        }
    }
}
