//! Heap buffers whose first byte is aligned for direct I/O (`O_DIRECT`), in safe Rust: a
//! `Vec` with [`DIRECT_IO_ALIGN`] bytes of slack, used from its first aligned byte on. The
//! `Vec` is never resized, so the alignment holds for the buffer's whole life.

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
}
