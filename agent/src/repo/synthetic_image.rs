//! Deterministic synthetic disk images for benchmarks and tests: a seeded mix of zero, random
//! and text segments (default 40 % / 30 % / 30 %), and seeded in-place modifications that
//! return the changed extents (standing in for CBT).
//!
//! Segments are 64 KiB – 8 MiB long (multiples of 64 KiB), so zero runs span whole chunks
//! about as often as on a real, partly filled disk.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::repo::source::Extent;

/// SplitMix64: tiny, fast, deterministic; not for cryptography.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Fill `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in chunks.by_ref() {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

const WORDS: &[&str] = &[
    "the",
    "backup",
    "of",
    "virtual",
    "machine",
    "disk",
    "and",
    "snapshot",
    "restore",
    "point",
    "chunk",
    "index",
    "vsphere",
    "namespace",
    "cluster",
    "storage",
    "policy",
    "network",
    "guest",
    "kernel",
    "service",
    "volume",
    "claim",
    "to",
    "in",
    "is",
    "with",
    "data",
    "change",
    "block",
    "tracking",
    "agent",
    "proxy",
    "vcenter",
    "host",
    "datastore",
    "file",
    "log",
    "error",
    "warning",
    "info",
    "debug",
    "request",
    "response",
    "time",
    "user",
    "admin",
    "job",
    "group",
    "schedule",
    "retention",
    "daily",
    "weekly",
    "monthly",
    "prune",
    "verify",
    "garbage",
    "collection",
    "fast",
    "safe",
    "consistent",
    "quiesced",
    "application",
    "database",
];

fn fill_text(rng: &mut SplitMix64, buf: &mut [u8]) {
    let mut i = 0;
    let mut words_on_line = 0;
    while i < buf.len() {
        let r = rng.next_u64();
        let word = WORDS[usize::try_from(r % WORDS.len() as u64).expect("small index")];
        for &b in word.as_bytes() {
            if i == buf.len() {
                return;
            }
            buf[i] = b;
            i += 1;
        }
        if i < buf.len() {
            words_on_line += 1;
            buf[i] = if words_on_line >= 8 + (r >> 60) {
                b'\n'
            } else {
                b' '
            };
            if buf[i] == b'\n' {
                words_on_line = 0;
            }
            i += 1;
        }
    }
}

/// Write a `size_bytes` image at `path` from `seed`: zero segments are left as holes.
///
/// # Errors
/// The I/O error of creating or writing the file.
pub fn generate(path: &Path, size_bytes: u64, seed: u64) -> io::Result<()> {
    const UNIT: u64 = 64 * 1024;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.set_len(size_bytes)?;
    let mut rng = SplitMix64::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < size_bytes {
        let len = ((1 + rng.below(128)) * UNIT).min(size_bytes - offset);
        let kind = rng.below(10);
        if kind >= 4 {
            let mut done = 0;
            while done < len {
                let n = usize::try_from((len - done).min(buf.len() as u64)).expect("≤ 1 MiB");
                if kind < 7 {
                    rng.fill(&mut buf[..n]);
                } else {
                    fill_text(&mut rng, &mut buf[..n]);
                }
                file.write_all_at(&buf[..n], offset + done)?;
                done += n as u64;
            }
        }
        offset += len;
    }
    file.sync_all()
}

/// Overwrite `count` seeded extents of `len` bytes (4 KiB aligned) with random data.
///
/// # Errors
/// The I/O error of opening or writing the file.
pub fn mutate(path: &Path, seed: u64, count: usize, len: u64) -> io::Result<Vec<Extent>> {
    let file = OpenOptions::new().write(true).open(path)?;
    let size = file.metadata()?.len();
    let mut rng = SplitMix64::new(seed ^ 0x5EED_CAFE);
    let mut buf = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
    let mut extents = Vec::with_capacity(count);
    let blocks = size.saturating_sub(len) / 4096 + 1;
    for _ in 0..count {
        let offset = rng.below(blocks) * 4096;
        rng.fill(&mut buf);
        let n = usize::try_from(len.min(size - offset)).map_err(io::Error::other)?;
        file.write_all_at(&buf[..n], offset)?;
        extents.push(Extent {
            offset,
            length: n as u64,
        });
    }
    file.sync_all()?;
    Ok(extents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_mixed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        generate(&a, 8 << 20, 7).unwrap();
        generate(&b, 8 << 20, 7).unwrap();
        let da = std::fs::read(&a).unwrap();
        assert_eq!(da, std::fs::read(&b).unwrap());
        assert_eq!(da.len(), 8 << 20);
        let ext = mutate(&a, 1, 3, 65_536).unwrap();
        assert_eq!(ext.len(), 3);
        assert_ne!(da, std::fs::read(&a).unwrap());
    }
}
