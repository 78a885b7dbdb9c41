//! Strict decoding of a gzip + base64 ExtraConfig payload (VSPHERE.md §C.2).
//!
//! VM Operator writes Go `compress/gzip` output encoded with `base64.StdEncoding`. Its own
//! reader (`TryToDecodeBase64Gzip`) is lenient: it strips any number of base64 layers and
//! passes non-gzip data through as text. We are strict on purpose: VM Operator never writes
//! anything else, so any other shape means the value was edited or damaged, and whether WCP
//! is as lenient as VM Operator is unknown. Each error names the layer that failed so the
//! warning tells the operator what to look at.

use std::io::Read;

use base64::Engine;
use flate2::read::MultiGzDecoder;

/// Decoded payloads larger than this are refused: ExtraConfig values are small (VM Operator
/// keeps them well under a megabyte), so a larger output is a gzip bomb. The YAML parser
/// needs about 80 times its input in memory on a dense document (measured: 334 MB for
/// 4 MiB of `[0,0,…]`, 1.3 GB for 16 MiB), so the cap is what bounds that too: 1 MiB
/// decoded costs at most about 100 MB.
pub const MAX_DECODED_BYTES: u64 = 1 << 20;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Why a gzip + base64 value could not be decoded; says which layer failed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The value is not standard base64 with padding.
    #[error("not base64")]
    NotBase64(#[source] base64::DecodeError),
    /// The value is base64 but the bytes are not a gzip stream.
    #[error("base64 but not gzip: {}", describe_magic(.magic))]
    NotGzip {
        /// The first (up to two) decoded bytes.
        magic: Vec<u8>,
    },
    /// The gzip stream is corrupt or truncated.
    #[error("gzip stream corrupt")]
    GzipCorrupt(#[source] std::io::Error),
    /// The gzip stream decompresses to more than [`MAX_DECODED_BYTES`].
    #[error("gzip stream decompresses to more than {limit_bytes} bytes")]
    TooLarge {
        /// The limit that was passed.
        limit_bytes: u64,
    },
    /// The decompressed bytes are not UTF-8 text.
    #[error("gzip content is not UTF-8")]
    NotUtf8(#[source] std::string::FromUtf8Error),
}

fn describe_magic(magic: &[u8]) -> String {
    let hex: Vec<String> = magic.iter().map(|b| format!("{b:02x}")).collect();
    let found = if hex.is_empty() {
        "no bytes".to_owned()
    } else {
        format!("magic bytes {}", hex.join(" "))
    };
    // A zlib header is 0x78 (deflate, 32K window) with a check byte making it divisible by 31.
    let zlib = matches!(magic, [0x78, b] if (0x7800u16 | u16::from(*b)).is_multiple_of(31));
    let what = if zlib { " (zlib)" } else { "" };
    format!("found {found}{what}, gzip starts with 1f 8b")
}

/// Strict decoding for validation: standard base64 (with padding), then gzip (one or more
/// members, as Go's reader accepts), then UTF-8.
///
/// # Errors
/// [`DecodeError`] naming the layer that failed: not base64, base64 but not gzip (with the
/// magic bytes found), gzip stream corrupt (or larger than [`MAX_DECODED_BYTES`]), not UTF-8.
pub fn decode_gzip_base64(value: &str) -> Result<String, DecodeError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(DecodeError::NotBase64)?;
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Err(DecodeError::NotGzip {
            magic: bytes.iter().take(2).copied().collect(),
        });
    }
    let mut out = Vec::new();
    MultiGzDecoder::new(bytes.as_slice())
        .take(MAX_DECODED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(DecodeError::GzipCorrupt)?;
    if u64::try_from(out.len()).map_or(true, |n| n > MAX_DECODED_BYTES) {
        return Err(DecodeError::TooLarge {
            limit_bytes: MAX_DECODED_BYTES,
        });
    }
    String::from_utf8(out).map_err(DecodeError::NotUtf8)
}

/// Encodes text the way VM Operator does (gzip, then standard base64): for tests and for
/// the agent's own ExtraConfig writes.
#[must_use]
pub fn encode_gzip_base64(text: &str) -> String {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes())
        .expect("writing to a Vec cannot fail");
    let bytes = gz.finish().expect("writing to a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn round_trip() {
        let text = "apiVersion: v1\nkind: Secret\n";
        assert_eq!(decode_gzip_base64(&encode_gzip_base64(text)).unwrap(), text);
        assert_eq!(decode_gzip_base64(&encode_gzip_base64("")).unwrap(), "");
    }

    #[test]
    fn names_the_failing_layer() {
        let e = decode_gzip_base64("H4sI AAAA *").unwrap_err();
        assert!(matches!(e, DecodeError::NotBase64(_)), "{e}");
        assert_eq!(e.to_string(), "not base64");

        // Unpadded base64 is refused (StdEncoding requires padding).
        let e = decode_gzip_base64("YWJjZA").unwrap_err();
        assert!(matches!(e, DecodeError::NotBase64(_)), "{e}");

        let e = decode_gzip_base64(&b64(&[0x78, 0x9c, 1, 2])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "base64 but not gzip: found magic bytes 78 9c (zlib), gzip starts with 1f 8b"
        );
        let e = decode_gzip_base64(&b64(b"apiVersion")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "base64 but not gzip: found magic bytes 61 70, gzip starts with 1f 8b"
        );
        let e = decode_gzip_base64("").unwrap_err();
        assert_eq!(
            e.to_string(),
            "base64 but not gzip: found no bytes, gzip starts with 1f 8b"
        );

        let good = base64::engine::general_purpose::STANDARD
            .decode(encode_gzip_base64("some text that is long enough"))
            .unwrap();
        let e = decode_gzip_base64(&b64(&good[..good.len() - 6])).unwrap_err();
        assert!(matches!(e, DecodeError::GzipCorrupt(_)), "{e}");

        let e = decode_gzip_base64(&encode_gzip_base64_bytes(&[0xff, 0xfe, 0x00])).unwrap_err();
        assert!(matches!(e, DecodeError::NotUtf8(_)), "{e}");
    }

    #[test]
    fn refuses_gzip_bombs() {
        let zeros = vec![b'a'; usize::try_from(MAX_DECODED_BYTES).unwrap() + 1];
        let e = decode_gzip_base64(&encode_gzip_base64_bytes(&zeros)).unwrap_err();
        assert!(matches!(e, DecodeError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn accepts_several_gzip_members() {
        let mut bytes = Vec::new();
        for part in ["a: 1\n", "b: 2\n"] {
            bytes.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(encode_gzip_base64(part))
                    .unwrap(),
            );
        }
        assert_eq!(decode_gzip_base64(&b64(&bytes)).unwrap(), "a: 1\nb: 2\n");
    }

    fn encode_gzip_base64_bytes(bytes: &[u8]) -> String {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        b64(&gz.finish().unwrap())
    }
}
