//! A restore point's configuration: its `.vmx` file byte for byte, its ExtraConfig and its
//! NVRAM file (EFI variables, Secure Boot keys, a vTPM's state), in
//! `indexes/<point>/config.chunk`, next to the point's index files and manifest.
//!
//! The configuration of a VM Service VM carries its bootstrap Secrets (the VM YAML and
//! `additional-resources-yaml` in ExtraConfig, and so in the `.vmx`), and the restore needs
//! it byte for byte. It is data of the backup, like the disks' chunks, and it is kept like
//! them: never in the catalog (`catalog.db`) nor in the point's manifest, which hold only
//! its digest. Catalogs written before schema 6 held it inline; `Repository::open` moves it
//! out (see `Repository::move_configs_out_of_catalog`).
//!
//! The file is a chunk ([`crate::repo::chunk`]: header with format version, compression and
//! checksum; zstd) of a JSON document `{"vmx": base64, "extra_config": …}`, named by the
//! BLAKE3 digest of that JSON, written durably (temp file, fsync, rename, directory
//! fsync) before the manifest and the catalog commit name it. Prune and GC remove it with
//! the point's directory.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ids::ChunkDigest;
use crate::repo::chunk::{self, ChunkEncoder, ChunkError};
use crate::repo::durable;

/// File name of a point's configuration inside `indexes/<point>/`.
pub const CONFIG_FILE: &str = "config.chunk";
/// The largest `.vmx` and the largest NVRAM file a backup keeps (vSphere's are kilobytes;
/// a VM Service VM's ExtraConfig adds some hundreds; an EFI VM's NVRAM, a vTPM's state in
/// it, is at most about 1 MiB).
pub const MAX_FILE_KEPT_BYTES: u64 = 16 << 20;
/// Largest configuration document written or read: the `.vmx` and the NVRAM in base64 (4/3
/// of each) next to the ExtraConfig as JSON, whose escapes take at most 6 bytes for one of
/// the `.vmx`'s.
#[allow(clippy::cast_possible_truncation)] // 160 MiB and less fit a usize
const MAX_PLAIN_BYTES: usize = (MAX_FILE_KEPT_BYTES * (4 + 4 + 6 * 3) / 3) as usize + (1 << 20);
/// Largest configuration file read (the document stored raw or compressed, with a header).
const MAX_FILE_BYTES: u64 = (MAX_PLAIN_BYTES + (1 << 20)) as u64;

/// What a restore point keeps besides its disks; in its file, a JSON document (the bytes in
/// base64).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Config {
    /// The `.vmx` file, byte for byte.
    #[serde(with = "crate::repo::manifest::base64_bytes")]
    pub vmx: Option<Vec<u8>>,
    /// ExtraConfig as JSON (`[[key, value], …]`).
    pub extra_config: Option<serde_json::Value>,
    /// The NVRAM file, byte for byte (none for a VM that has none yet, and for points
    /// made before it was kept).
    #[serde(default, with = "crate::repo::manifest::base64_bytes")]
    pub nvram: Option<Vec<u8>>,
    /// The VM Operator objects around a VM Service VM that registration does not restore
    /// (its VirtualMachineGroup and the VirtualMachineServices that select it, seed 001
    /// §10.3–§10.4), as read from the Supervisor during the backup and ready to create
    /// ([`crate::vmservice::related`]); none for other VMs and for points made before they
    /// were kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<serde_json::Value>,
}

impl Config {
    /// Whether there is nothing to keep.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.vmx.is_none()
            && self.extra_config.is_none()
            && self.nvram.is_none()
            && self.related.is_empty()
    }
}

/// Why a point's configuration file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not there.
    #[error("{path} is missing")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// Reading or writing failed.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is damaged: bad header, checksum, compression, digest or document.
    #[error("{path} is corrupt: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The configuration is larger than any this agent writes or reads.
    #[error("the configuration for {path} is {bytes} bytes, more than {MAX_PLAIN_BYTES}")]
    TooLarge {
        /// The file it was for.
        path: PathBuf,
        /// Its size as a document.
        bytes: usize,
    },
    /// Encoding failed (zstd could not allocate).
    #[error("encoding the configuration for {path}")]
    Encode {
        /// The file it was for.
        path: PathBuf,
        /// zstd's or the format's error.
        #[source]
        source: ChunkError,
    },
}

/// The configuration file of the point whose index directory is `dir`.
#[must_use]
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(CONFIG_FILE)
}

/// Write `config` durably to `dir/config.chunk` (creating `dir`) and return its digest, the
/// one [`read`] checks. Writing the same configuration twice writes the same file.
///
/// # Errors
/// [`ConfigError::TooLarge`], [`ConfigError::Encode`] or [`ConfigError::Io`] naming the file
/// or directory.
pub fn write(dir: &Path, config: &Config) -> Result<ChunkDigest, ConfigError> {
    let path = path_in(dir);
    let plain = serde_json::to_vec(config).expect("a JSON value and bytes serialize");
    if plain.len() > MAX_PLAIN_BYTES {
        // Refused here, where the backup can still fail: written, it would never read back.
        return Err(ConfigError::TooLarge {
            path,
            bytes: plain.len(),
        });
    }
    let digest = ChunkDigest::of(&plain);
    let encoded = ChunkEncoder::new()
        .and_then(|mut e| e.encode(&plain, &digest))
        .map_err(|source| ConfigError::Encode {
            path: path.clone(),
            source,
        })?;
    durable::write_file(&path, &encoded)
        .map_err(|(path, source)| ConfigError::Io { path, source })?;
    Ok(digest)
}

/// Read the configuration in `dir/config.chunk` and check it against `digest`.
///
/// # Errors
/// [`ConfigError::Missing`], [`ConfigError::Io`], or [`ConfigError::Corrupt`] for a file
/// larger than any configuration, or whose header, checksum, compression, digest or
/// document is wrong; each names the file.
pub fn read(dir: &Path, digest: &ChunkDigest) -> Result<Config, ConfigError> {
    let path = path_in(dir);
    let io = |source| ConfigError::from_io(&path, source);
    let corrupt = |what: String| ConfigError::Corrupt {
        path: path.clone(),
        what,
    };
    let file = fs::File::open(&path).map_err(io)?;
    let too_large = || {
        corrupt(format!(
            "larger than any configuration ({MAX_FILE_BYTES} bytes)"
        ))
    };
    if file.metadata().map_err(io)?.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut encoded = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut encoded)
        .map_err(io)?;
    if encoded.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    // The header only: `decode` checks the checksum and the digest.
    let header = chunk::parse_header(&encoded).map_err(|e| corrupt(e.to_string()))?;
    if header.plain_len > MAX_PLAIN_BYTES {
        return Err(corrupt(format!(
            "the header announces {} bytes, more than any configuration",
            header.plain_len
        )));
    }
    let plain = chunk::decode(&encoded, digest).map_err(|e| match e {
        ChunkError::DigestMismatch { actual } => {
            corrupt(format!("its digest is {actual}, the point names {digest}"))
        }
        e => corrupt(e.to_string()),
    })?;
    serde_json::from_slice(&plain).map_err(|e| corrupt(format!("document: {e}")))
}

/// Whether `dir/config.chunk` is there (without reading it).
///
/// # Errors
/// [`ConfigError::Missing`] or [`ConfigError::Io`], naming the file.
pub fn check_present(dir: &Path) -> Result<(), ConfigError> {
    let path = path_in(dir);
    fs::metadata(&path)
        .map(drop)
        .map_err(|source| ConfigError::from_io(&path, source))
}

impl ConfigError {
    /// An I/O error on `path`: [`Self::Missing`] for one that is not there.
    fn from_io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            Self::Missing {
                path: path.to_path_buf(),
            }
        } else {
            Self::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Config {
        Config {
            vmx: Some(
                (0..=255u8)
                    .chain(b"guestinfo.userdata = \"c2VjcmV0\"\n".iter().copied())
                    .collect(),
            ),
            extra_config: Some(serde_json::json!([["guestinfo.userdata", "c2VjcmV0"]])),
            nvram: Some(vec![0x4e, 0x56, 0x52, 0x41, 0x4d, 0, 0xff]),
            related: vec![serde_json::json!({
                "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineGroup",
                "metadata": {"name": "web-group"}, "spec": {}
            })],
        }
    }

    #[test]
    fn a_configuration_reads_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let digest = write(dir.path(), &sample()).unwrap();
        assert_eq!(read(dir.path(), &digest).unwrap(), sample());
        // The same configuration, the same file and digest.
        assert_eq!(write(dir.path(), &sample()).unwrap(), digest);
        // Nothing else left in the directory (no temp file).
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A document written before the related objects were kept reads as none, and a
    /// configuration without them is written as before (same document, same digest).
    #[test]
    fn a_configuration_without_related_objects_is_written_as_before() {
        let old = Config {
            related: Vec::new(),
            ..sample()
        };
        let json = serde_json::to_value(&old).unwrap();
        assert_eq!(
            json.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["extra_config", "nvram", "vmx"]
        );
        let back: Config = serde_json::from_value(json).unwrap();
        assert_eq!(back, old);
        assert!(!sample().is_empty());
        let only_related = Config {
            related: sample().related,
            ..Config::default()
        };
        assert!(!only_related.is_empty());
    }

    #[test]
    fn a_damaged_or_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let digest = write(dir.path(), &sample()).unwrap();
        let path = path_in(dir.path());
        // Another digest: the file is not the point's.
        let other = ChunkDigest::of(b"other");
        let e = read(dir.path(), &other).unwrap_err();
        assert!(matches!(e, ConfigError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(e.to_string().contains(&other.to_string()), "{e}");
        // A flipped byte.
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        fs::write(&path, &bytes).unwrap();
        let e = read(dir.path(), &digest).unwrap_err();
        assert!(matches!(e, ConfigError::Corrupt { .. }), "{e}");
        // Truncated.
        fs::write(&path, &bytes[..10]).unwrap();
        assert!(matches!(
            read(dir.path(), &digest).unwrap_err(),
            ConfigError::Corrupt { .. }
        ));
        // Oversized: not read whole.
        let f = fs::File::create(&path).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let e = read(dir.path(), &digest).unwrap_err();
        assert!(
            e.to_string().contains("larger than any configuration"),
            "{e}"
        );
        fs::remove_file(&path).unwrap();
        assert!(matches!(
            read(dir.path(), &digest).unwrap_err(),
            ConfigError::Missing { .. }
        ));
    }
}
