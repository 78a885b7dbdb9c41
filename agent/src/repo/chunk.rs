//! On-disk chunk format: a 32-byte header followed by the stored bytes.
//!
//! ```text
//! offset size field
//!      0    4 magic "VCK1"
//!      4    2 format version (1), little endian
//!      6    1 compression: 0 = raw, 1 = zstd
//!      7    1 reserved (0)
//!      8    4 plain length in bytes, little endian
//!     12    4 stored length in bytes (after the header), little endian
//!     16   16 checksum: first 16 bytes of BLAKE3 of the stored bytes
//! ```
//!
//! The chunk's name is the BLAKE3 digest of the plain data; [`decode`] checks the header,
//! the checksum of the stored bytes and, after decompression, the digest.

use crate::ids::ChunkDigest;

const MAGIC: &[u8; 4] = b"VCK1";
const VERSION: u16 = 1;
/// Size of the chunk header in bytes.
pub const HEADER_LEN: usize = 32;
const COMPRESSION_RAW: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;
/// zstd level the chunk parameters start from (ARCHITECTURE §6: level 1, speed over ratio) ...
const ZSTD_LEVEL: i32 = 1;
/// ... with the double-fast match finder of levels 2–4 (a second hash table for 8-byte
/// matches) ...
const ZSTD_STRATEGY: zstd::zstd_safe::Strategy = zstd::zstd_safe::Strategy::ZSTD_dfast;
/// ... a 64 Ki-entry long-match table ...
const ZSTD_HASH_LOG: u32 = 16;
/// ... a 16 Ki-entry short-match table ...
const ZSTD_CHAIN_LOG: u32 = 14;
/// ... and matches of at least 6 bytes (level 2's 5 finds more matches that cost more than
/// they save on text). Measured in `docs/benchmarks.md`: the benchmark image's chunks take
/// 703.3 MB against 711.4 MB with level 1's fast match finder (−1.1 %, which keeps the
/// repository under restic's) for 3–4 % more CPU in the full backup. Level 3 is 6–9 %
/// smaller than level 1 but up to 1.7× slower on binaries.
const ZSTD_MIN_MATCH: u32 = 6;

/// Why a chunk's bytes could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The file is shorter than its header says.
    #[error("truncated: {actual} bytes, header says {expected}")]
    Truncated {
        /// Length the header announces (header included).
        expected: u64,
        /// Length found.
        actual: u64,
    },
    /// The header is not a chunk header this version understands.
    #[error("bad header: {0}")]
    BadHeader(String),
    /// The checksum of the stored bytes does not match the header.
    #[error("checksum mismatch of stored bytes")]
    Checksum,
    /// The stored bytes do not decompress.
    #[error("zstd decompression failed")]
    Decompress(#[source] std::io::Error),
    /// The plain data does not hash to the chunk's name.
    #[error("content digest is {actual}")]
    DigestMismatch {
        /// Digest of the decoded plain data.
        actual: ChunkDigest,
    },
    /// zstd failed to compress (out of memory).
    #[error("zstd compression failed")]
    Compress(#[source] std::io::Error),
    /// The chunk is larger than the format allows.
    #[error("chunk of {0} bytes is too large")]
    TooLarge(usize),
}

/// Chunks at least this large are probed before zstd runs over all of them.
const PROBE_MIN: usize = 256 * 1024;
/// Bytes per probe sample, one every `len / PROBE_SAMPLES`.
const PROBE_SAMPLE: usize = 4 * 1024;
const PROBE_SAMPLES: usize = 16;

/// Reusable encoder (one per worker thread: zstd contexts are costly to create).
pub struct ChunkEncoder {
    compressor: zstd::bulk::Compressor<'static>,
    /// Output of the probe compressions.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for ChunkEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkEncoder").finish_non_exhaustive()
    }
}

impl ChunkEncoder {
    /// A new encoder (zstd level 1 with the double-fast match finder, see the constants).
    ///
    /// # Errors
    /// [`ChunkError::Compress`] if zstd cannot allocate its context.
    pub fn new() -> Result<Self, ChunkError> {
        use zstd::zstd_safe::CParameter;
        let mut compressor =
            zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(ChunkError::Compress)?;
        for p in [
            CParameter::Strategy(ZSTD_STRATEGY),
            CParameter::HashLog(ZSTD_HASH_LOG),
            CParameter::ChainLog(ZSTD_CHAIN_LOG),
            CParameter::MinMatch(ZSTD_MIN_MATCH),
        ] {
            compressor.set_parameter(p).map_err(ChunkError::Compress)?;
        }
        Ok(Self {
            compressor,
            scratch: vec![0u8; zstd::zstd_safe::compress_bound(PROBE_SAMPLE)],
        })
    }

    /// Whether every one of 16 samples of 4 KiB spread over `plain` is incompressible
    /// (zstd saves less than 3 %): then zstd is not run over the whole chunk, which on
    /// random or already-compressed data costs as much as on text and saves nothing.
    /// One compressible sample is enough to compress the chunk.
    fn incompressible(&mut self, plain: &[u8]) -> bool {
        if plain.len() < PROBE_MIN {
            return false;
        }
        let step = plain.len() / PROBE_SAMPLES;
        (0..PROBE_SAMPLES).all(|i| {
            let sample = &plain[i * step..i * step + PROBE_SAMPLE];
            match self
                .compressor
                .compress_to_buffer(sample, &mut self.scratch)
            {
                Ok(n) => n * 100 >= sample.len() * 97,
                Err(_) => false,
            }
        })
    }

    /// Encode `plain`, whose BLAKE3 digest is `digest`, into header + stored bytes: zstd
    /// when it saves space, raw otherwise (the digest is then the stored bytes' checksum).
    ///
    /// The backup pipeline uses [`ChunkEncoder::encode_frame`], which copies nothing.
    ///
    /// # Errors
    /// [`ChunkError::TooLarge`] above 4 GiB, [`ChunkError::Compress`] if zstd fails.
    pub fn encode(&mut self, plain: &[u8], digest: &ChunkDigest) -> Result<Vec<u8>, ChunkError> {
        let mut frame = vec![0u8; HEADER_LEN + plain.len()];
        frame[HEADER_LEN..].copy_from_slice(plain);
        let mut out = vec![0u8; max_encoded_len(plain.len())];
        Ok(match self.encode_frame(&mut frame, digest, &mut out)? {
            Encoded::InFrame => frame,
            Encoded::InOut(len) => {
                out.truncate(len);
                out
            }
        })
    }

    /// Encode the plain data held in `frame[HEADER_LEN..]` (whose BLAKE3 digest is `digest`)
    /// without copying it: a raw chunk gets its header written into `frame[..HEADER_LEN]`,
    /// so `frame` is the chunk file; a compressed chunk is written to `out[..len]`, a reused
    /// buffer of at least [`max_encoded_len`] bytes.
    ///
    /// # Errors
    /// [`ChunkError::TooLarge`] above 4 GiB, [`ChunkError::Compress`] if zstd fails.
    ///
    /// # Panics
    /// If `frame` is shorter than the header or `out` shorter than [`max_encoded_len`] of
    /// the plain data.
    pub fn encode_frame(
        &mut self,
        frame: &mut [u8],
        digest: &ChunkDigest,
        out: &mut [u8],
    ) -> Result<Encoded, ChunkError> {
        let (header, plain) = frame.split_at_mut(HEADER_LEN);
        let plain_len =
            u32::try_from(plain.len()).map_err(|_| ChunkError::TooLarge(plain.len()))?;
        if !self.incompressible(plain) {
            let need = max_encoded_len(plain.len());
            assert!(out.len() >= need, "output buffer of {} < {need}", out.len());
            match self
                .compressor
                .compress_to_buffer(plain, &mut out[HEADER_LEN..need])
            {
                Ok(n) if n < plain.len() => {
                    let stored_len = u32::try_from(n).map_err(|_| ChunkError::TooLarge(n))?;
                    let (out_header, stored) = out.split_at_mut(HEADER_LEN);
                    let checksum = blake3::hash(&stored[..n]);
                    write_header(
                        out_header,
                        COMPRESSION_ZSTD,
                        plain_len,
                        stored_len,
                        &checksum,
                    );
                    return Ok(Encoded::InOut(HEADER_LEN + n));
                }
                // Incompressible (or zstd refused): store raw.
                _ => {}
            }
        }
        // Raw stored bytes are the plain data: their BLAKE3 is the digest already computed.
        let checksum = blake3::Hash::from_bytes(digest.0);
        write_header(header, COMPRESSION_RAW, plain_len, plain_len, &checksum);
        Ok(Encoded::InFrame)
    }
}

/// Where [`ChunkEncoder::encode_frame`] left the encoded chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    /// Stored raw: the whole frame (header + plain data) is the chunk file.
    InFrame,
    /// Compressed: the first `n` bytes of the output buffer are the chunk file.
    InOut(usize),
}

/// Largest encoded size of a chunk of `plain_len` bytes (header + zstd's bound).
#[must_use]
pub fn max_encoded_len(plain_len: usize) -> usize {
    HEADER_LEN + zstd::zstd_safe::compress_bound(plain_len)
}

fn write_header(
    header: &mut [u8],
    compression: u8,
    plain_len: u32,
    stored_len: u32,
    checksum: &blake3::Hash,
) {
    header[0..4].copy_from_slice(MAGIC);
    header[4..6].copy_from_slice(&VERSION.to_le_bytes());
    header[6] = compression;
    header[7] = 0;
    header[8..12].copy_from_slice(&plain_len.to_le_bytes());
    header[12..16].copy_from_slice(&stored_len.to_le_bytes());
    header[16..32].copy_from_slice(&checksum.as_bytes()[..16]);
}

/// Header fields of an encoded chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Whether the stored bytes are zstd-compressed.
    pub compressed: bool,
    /// Length of the plain data.
    pub plain_len: usize,
    /// Length of the stored bytes after the header.
    pub stored_len: usize,
}

/// Parse and check the header and the stored-bytes checksum of `encoded`.
///
/// # Errors
/// [`ChunkError::Truncated`], [`ChunkError::BadHeader`] or [`ChunkError::Checksum`].
pub fn check(encoded: &[u8]) -> Result<ChunkHeader, ChunkError> {
    let header = parse_header(encoded)?;
    let checksum = blake3::hash(&encoded[HEADER_LEN..]);
    if checksum.as_bytes()[..16] != encoded[16..32] {
        return Err(ChunkError::Checksum);
    }
    Ok(header)
}

/// Parse the header of `encoded` and check its lengths (not the checksum).
pub(crate) fn parse_header(encoded: &[u8]) -> Result<ChunkHeader, ChunkError> {
    if encoded.len() < HEADER_LEN {
        return Err(ChunkError::Truncated {
            expected: HEADER_LEN as u64,
            actual: encoded.len() as u64,
        });
    }
    if &encoded[0..4] != MAGIC {
        return Err(ChunkError::BadHeader("wrong magic".into()));
    }
    let version = u16::from_le_bytes([encoded[4], encoded[5]]);
    if version != VERSION {
        return Err(ChunkError::BadHeader(format!(
            "format version {version}, this agent reads {VERSION}"
        )));
    }
    let compressed = match encoded[6] {
        COMPRESSION_RAW => false,
        COMPRESSION_ZSTD => true,
        other => {
            return Err(ChunkError::BadHeader(format!(
                "unknown compression {other}"
            )));
        }
    };
    let field = |at: usize| {
        let bytes: [u8; 4] = encoded[at..at + 4].try_into().expect("4-byte slice");
        usize::try_from(u32::from_le_bytes(bytes)).expect("u32 fits in usize")
    };
    let plain_len = field(8);
    let stored_len = field(12);
    if encoded.len() != HEADER_LEN + stored_len {
        return Err(ChunkError::Truncated {
            expected: (HEADER_LEN + stored_len) as u64,
            actual: encoded.len() as u64,
        });
    }
    if !compressed && stored_len != plain_len {
        return Err(ChunkError::BadHeader(
            "raw chunk with stored != plain length".into(),
        ));
    }
    Ok(ChunkHeader {
        compressed,
        plain_len,
        stored_len,
    })
}

/// Decode `encoded` into plain data and check that it hashes to `digest`.
///
/// # Errors
/// Any [`ChunkError`] describing what is wrong with the bytes.
pub fn decode(encoded: &[u8], digest: &ChunkDigest) -> Result<Vec<u8>, ChunkError> {
    let header = parse_header(encoded)?;
    let mut decoder = ChunkDecoder::new()?;
    // A raw chunk is checked where it lies; only a compressed one needs room to expand,
    // and only as much as its zstd frame says it holds: the header's length is not under
    // the checksum, and a damaged one (up to 4 GiB) must not be allocated first.
    let mut out = if header.compressed {
        let stored = &encoded[HEADER_LEN..];
        if blake3::hash(stored).as_bytes()[..16] != encoded[16..32] {
            return Err(ChunkError::Checksum);
        }
        match zstd::zstd_safe::get_frame_content_size(stored) {
            Ok(Some(n)) if n == header.plain_len as u64 => {}
            Ok(Some(n)) => {
                return Err(ChunkError::BadHeader(format!(
                    "plain length {} but the zstd frame holds {n} bytes",
                    header.plain_len
                )));
            }
            _ => {
                return Err(ChunkError::BadHeader(
                    "the zstd frame does not give its content size".into(),
                ));
            }
        }
        vec![0u8; header.plain_len]
    } else {
        Vec::new()
    };
    match decoder.decode_into(encoded, digest, &mut out)? {
        Decoded::InPlace(range) => Ok(encoded[range].to_vec()),
        Decoded::InOut(len) => {
            out.truncate(len);
            Ok(out)
        }
    }
}

/// Where [`ChunkDecoder::decode_into`] left the plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A raw chunk: the plain data is this range of the encoded bytes (nothing copied).
    InPlace(std::ops::Range<usize>),
    /// A compressed chunk: the plain data is the first `n` bytes of the output buffer.
    InOut(usize),
}

/// Reusable decoder (one per restore worker: zstd contexts are costly to create).
pub struct ChunkDecoder {
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl std::fmt::Debug for ChunkDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkDecoder").finish_non_exhaustive()
    }
}

impl ChunkDecoder {
    /// A new decoder.
    ///
    /// # Errors
    /// [`ChunkError::Decompress`] if zstd cannot allocate its context.
    pub fn new() -> Result<Self, ChunkError> {
        Ok(Self {
            decompressor: zstd::bulk::Decompressor::new().map_err(ChunkError::Decompress)?,
        })
    }

    /// Check `encoded` and decode it, decompressing into `out` (a reused buffer) when it is
    /// compressed; the plain data is guaranteed to hash to `digest`.
    ///
    /// # Errors
    /// Any [`ChunkError`] describing what is wrong with the bytes, including a plain length
    /// larger than `out`.
    pub fn decode_into(
        &mut self,
        encoded: &[u8],
        digest: &ChunkDigest,
        out: &mut [u8],
    ) -> Result<Decoded, ChunkError> {
        let header = parse_header(encoded)?;
        let stored = &encoded[HEADER_LEN..];
        if !header.compressed {
            // Raw: the stored bytes are the plain data, so one BLAKE3 pass checks both the
            // stored-bytes checksum and the content digest.
            let actual = ChunkDigest::of(stored);
            if actual.0[..16] != encoded[16..32] {
                return Err(ChunkError::Checksum);
            }
            if actual != *digest {
                return Err(ChunkError::DigestMismatch { actual });
            }
            return Ok(Decoded::InPlace(HEADER_LEN..encoded.len()));
        }
        if blake3::hash(stored).as_bytes()[..16] != encoded[16..32] {
            return Err(ChunkError::Checksum);
        }
        let Some(out) = out.get_mut(..header.plain_len) else {
            return Err(ChunkError::BadHeader(format!(
                "plain length {} exceeds the {} bytes expected",
                header.plain_len,
                out.len()
            )));
        };
        let n = self
            .decompressor
            .decompress_to_buffer(stored, out)
            .map_err(ChunkError::Decompress)?;
        if n != header.plain_len {
            return Err(ChunkError::BadHeader(format!(
                "decompressed to {n} bytes, header says {}",
                header.plain_len
            )));
        }
        let actual = ChunkDigest::of(out);
        if actual != *digest {
            return Err(ChunkError::DigestMismatch { actual });
        }
        Ok(Decoded::InOut(n))
    }
}

/// Whether `data` is all zeros (vectorisable: OR-folds 4 KiB blocks).
#[must_use]
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(4096);
    let full = blocks
        .by_ref()
        .all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0);
    full && blocks.remainder().iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_compressible_and_random() {
        let mut enc = ChunkEncoder::new().unwrap();
        let text: Vec<u8> = b"hello world "
            .iter()
            .copied()
            .cycle()
            .take(100_000)
            .collect();
        let e = enc.encode(&text, &ChunkDigest::of(&text)).unwrap();
        assert!(e.len() < text.len() / 10);
        assert!(check(&e).unwrap().compressed);
        assert_eq!(decode(&e, &ChunkDigest::of(&text)).unwrap(), text);

        let random: Vec<u8> = (0..65_536u32)
            .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1])
            .collect();
        let e = enc.encode(&random, &ChunkDigest::of(&random)).unwrap();
        assert_eq!(decode(&e, &ChunkDigest::of(&random)).unwrap(), random);
    }

    #[test]
    fn probe_stores_random_raw_but_compresses_a_mixed_chunk() {
        let mut enc = ChunkEncoder::new().unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = vec![0u8; 1 << 20];
        for w in random.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        assert!(enc.incompressible(&random));
        let d = ChunkDigest::of(&random);
        let e = enc.encode(&random, &d).unwrap();
        assert!(!check(&e).unwrap().compressed);
        assert_eq!(e[16..32], d.0[..16], "a raw chunk's checksum is its digest");
        assert_eq!(decode(&e, &d).unwrap(), random);

        // 256 KiB of text in the middle of random data: a sample lands in it.
        let mut mixed = random.clone();
        for (i, b) in mixed[512 * 1024..768 * 1024].iter_mut().enumerate() {
            *b = b"the quick brown fox "[i % 20];
        }
        assert!(!enc.incompressible(&mixed));
        let d = ChunkDigest::of(&mixed);
        let e = enc.encode(&mixed, &d).unwrap();
        assert!(check(&e).unwrap().compressed);
        assert!(e.len() < mixed.len() * 9 / 10);
        assert_eq!(decode(&e, &d).unwrap(), mixed);
    }

    #[test]
    fn detects_corruption() {
        let mut enc = ChunkEncoder::new().unwrap();
        let data = vec![7u8; 10_000];
        let d = ChunkDigest::of(&data);
        let e = enc.encode(&data, &d).unwrap();
        let mut flipped = e.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(decode(&flipped, &d), Err(ChunkError::Checksum)));
        assert!(matches!(
            decode(&e[..e.len() - 1], &d),
            Err(ChunkError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&e, &ChunkDigest::ZERO),
            Err(ChunkError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&vec![0u8; 10_000]));
        let mut v = vec![0u8; 10_000];
        v[9_999] = 1;
        assert!(!is_zero(&v));
        v[9_999] = 0;
        v[5] = 1;
        assert!(!is_zero(&v));
    }
}
