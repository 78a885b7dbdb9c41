//! Restore pipeline for one disk: `chunk-read/<n>` workers prefetch, check and decompress
//! chunks in parallel; the caller's thread owns the [`DiskSink`] and writes them. Zero slots
//! are skipped when the sink reads holes as zeros. Memory: queue depth + workers chunks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::bounded;

use crate::ids::ChunkDigest;
use crate::repo::chunk_store::{ChunkStore, ChunkStoreError};
use crate::repo::fixed_index::FixedIndex;
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
    /// A worker thread could not start.
    #[error("restore thread {0} failed")]
    Thread(String),
}

/// Restore `index` into `sink` with `workers` parallel chunk readers.
///
/// # Errors
/// The first [`RestoreError`].
pub fn restore_disk(
    store: &ChunkStore,
    index: &FixedIndex,
    sink: &mut dyn DiskSink,
    workers: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), RestoreError> {
    let skip_zero = sink.zeroes_are_holes();
    let slots: Vec<usize> = (0..index.slots().len())
        .filter(|&i| !(skip_zero && index.slots()[i].is_zero()))
        .collect();
    let total: u64 = slots.iter().map(|&s| index.slot_len(s)).sum();
    let workers = workers.max(1);
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let first_error: Mutex<Option<RestoreError>> = Mutex::new(None);
    let fail = |e: RestoreError| {
        abort.store(true, Ordering::SeqCst);
        let mut slot = first_error.lock().expect("error slot not poisoned");
        if slot.is_none() {
            *slot = Some(e);
        }
    };
    let (tx, rx) = bounded::<(u64, Vec<u8>)>(workers * 2);

    std::thread::scope(|scope| {
        for n in 0..workers {
            let tx = tx.clone();
            let (next, abort, slots, fail) = (&next, &abort, &slots, &fail);
            let spawned = std::thread::Builder::new()
                .name(format!("chunk-read/{n}"))
                .spawn_scoped(scope, move || {
                    while !abort.load(Ordering::Relaxed) {
                        let Some(&slot) = slots.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        let digest = index.slots()[slot];
                        let offset = index.slot_offset(slot);
                        let expected = index.slot_len(slot);
                        let data = if digest.is_zero() {
                            vec![0u8; usize::try_from(expected).expect("slot fits in memory")]
                        } else {
                            match store.read(&digest) {
                                Ok(d) => d,
                                Err(source) => {
                                    fail(RestoreError::Chunk {
                                        digest,
                                        offset,
                                        source,
                                    });
                                    break;
                                }
                            }
                        };
                        if data.len() as u64 != expected {
                            fail(RestoreError::Length {
                                digest,
                                offset,
                                expected,
                                actual: data.len() as u64,
                            });
                            break;
                        }
                        if tx.send((offset, data)).is_err() {
                            break;
                        }
                    }
                });
            if let Err(e) = spawned {
                fail(RestoreError::Thread(format!("chunk-read/{n}: {e}")));
            }
        }
        drop(tx);
        let mut done = 0u64;
        for (offset, data) in rx {
            if abort.load(Ordering::Relaxed) {
                continue;
            }
            if let Err(e) = sink.write_at(offset, &data) {
                fail(RestoreError::Sink(e));
                continue;
            }
            done += data.len() as u64;
            progress(done, total);
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
        let index = FixedIndex::new_zero(4096, 8192);
        let err = restore_disk(&store, &index, &mut FullDisk, 2, &mut |_, _| {}).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            chain.contains("/dev/full-disk") && chain.contains("offset"),
            "{chain}"
        );
        let io_err = std::error::Error::source(std::error::Error::source(&err).unwrap()).unwrap();
        assert!(io_err.to_string().contains("No space left"), "{io_err}");
    }
}
