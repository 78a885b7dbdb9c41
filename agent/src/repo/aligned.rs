//! Heap buffers whose first byte is aligned for direct I/O (`O_DIRECT`), in safe Rust: a
//! `Vec` with [`DIRECT_IO_ALIGN`] bytes of slack, used from its first aligned byte on. The
//! `Vec` is never resized, so the alignment holds for the buffer's whole life.
//! `BufferPool` hands them out to the backup and restore pipelines.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

/// Alignment of buffer addresses, file offsets and lengths for direct I/O: 4096 covers
/// devices with 4 KiB logical sectors as well as 512-byte ones.
pub const DIRECT_IO_ALIGN: usize = 4096;

/// A zero-initialised buffer of fixed length starting at a [`DIRECT_IO_ALIGN`]-aligned
/// address (when the allocator allows; [`AlignedBuf::is_aligned`] says).
pub struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("aligned", &self.is_aligned())
            .finish_non_exhaustive()
    }
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes. Large allocations are `calloc`ed, so pages that are
    /// never touched cost nothing.
    #[must_use]
    pub fn zeroed(len: usize) -> Self {
        let vec = vec![0u8; len + DIRECT_IO_ALIGN];
        let offset = vec.as_ptr().align_offset(DIRECT_IO_ALIGN);
        // `align_offset` may decline (usize::MAX); the buffer is then merely unaligned and
        // direct I/O is not used for it.
        let start = if offset < DIRECT_IO_ALIGN { offset } else { 0 };
        Self { vec, start, len }
    }

    /// Whether the first byte is [`DIRECT_IO_ALIGN`]-aligned.
    #[must_use]
    pub fn is_aligned(&self) -> bool {
        self.as_slice().as_ptr().align_offset(DIRECT_IO_ALIGN) == 0
    }

    /// Length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }
}

/// A pool of at most `cap` buffers of `len` bytes, made on demand: a buffer is allocated
/// only when none is free and fewer than `cap` exist, so memory is bounded by `cap × len`
/// and nothing is allocated per use. A pipeline whose consumers keep up (a backup
/// incremental, a restore to a fast sink) cycles through a few buffers; only one that has
/// to queue work grows to the cap. Pages touched for the first time are costly
/// where the host reclaims free guest memory, and never-needed buffers add to peak RSS.
/// How often a [`BufferPool::take`] that waits looks at its abort flag.
const ABORT_POLL: std::time::Duration = std::time::Duration::from_millis(20);

pub(crate) struct BufferPool {
    tx: Sender<AlignedBuf>,
    rx: Receiver<AlignedBuf>,
    made: AtomicUsize,
    cap: usize,
    len: usize,
}

impl BufferPool {
    /// An empty pool that will make at most `cap` buffers of `len` bytes.
    pub(crate) fn new(cap: usize, len: usize) -> Self {
        let (tx, rx) = bounded(cap);
        Self {
            tx,
            rx,
            made: AtomicUsize::new(0),
            cap,
            len,
        }
    }

    /// A free buffer, a new one while fewer than `cap` exist, or else the next one given
    /// back. `None` once `abort` is set while it waits (a stage that failed or panicked
    /// may never give its buffers back: the waiter must not wait for them for ever).
    pub(crate) fn take(&self, abort: &AtomicBool) -> Option<AlignedBuf> {
        if let Ok(buf) = self.rx.try_recv() {
            return Some(buf);
        }
        let room = self
            .made
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .is_ok();
        if room {
            return Some(AlignedBuf::zeroed(self.len));
        }
        loop {
            match self.rx.recv_timeout(ABORT_POLL) {
                Ok(buf) => return Some(buf),
                Err(RecvTimeoutError::Timeout) if !abort.load(Ordering::Relaxed) => {}
                Err(_) => return None,
            }
        }
    }

    /// Return a buffer taken from this pool.
    pub(crate) fn give_back(&self, buf: AlignedBuf) {
        // The pool has room for every buffer it made, so this never blocks.
        let _ = self.tx.send(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_of_the_asked_length() {
        for len in [0, 1, 4095, 4096, 1 << 20] {
            let mut b = AlignedBuf::zeroed(len);
            assert!(b.is_aligned(), "{len}");
            assert_eq!(b.len(), len);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            b.as_mut_slice().fill(7);
            assert!(b.as_slice().iter().all(|&x| x == 7));
        }
    }

    #[test]
    fn pool_reuses_before_it_allocates_and_never_exceeds_its_cap() {
        let pool = BufferPool::new(2, 64);
        let go = AtomicBool::new(false);
        let a = pool.take(&go).unwrap();
        pool.give_back(a);
        let a = pool.take(&go).unwrap();
        assert_eq!(
            pool.made.load(Ordering::Relaxed),
            1,
            "a free buffer is reused"
        );
        let b = pool.take(&go).unwrap();
        assert_eq!(pool.made.load(Ordering::Relaxed), 2);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| pool.take(&go).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished(), "a third buffer was made");
            pool.give_back(a);
            assert_eq!(waiter.join().unwrap().len(), 64);
        });
        assert_eq!(pool.made.load(Ordering::Relaxed), 2);
        drop(b);
    }

    /// A waiter for a buffer that will never come back (its holder died) gives up once the
    /// abort flag is set.
    #[test]
    fn a_waiting_take_gives_up_on_abort() {
        let pool = BufferPool::new(1, 64);
        let abort = AtomicBool::new(false);
        let lost = pool.take(&abort).unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| pool.take(&abort).is_none());
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished());
            abort.store(true, Ordering::SeqCst);
            assert!(waiter.join().unwrap());
        });
        drop(lost);
    }
}
