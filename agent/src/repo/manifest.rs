//! Point manifests (`indexes/<point>/point.json`): each restore point described in a file
//! next to its index files, so that the catalog can be rebuilt if it is lost or damaged
//! (`vadp-agent repo rebuild-catalog`).
//!
//! The catalog stays the record of which points exist: a manifest is written (temp file,
//! fsync, rename, directory fsync) after the point's index files and before its catalog
//! commit, and is removed with the point's index directory by prune and by GC. A backup
//! killed between the manifest and the commit leaves a complete point that the catalog does
//! not list; GC removes it, and a rebuild before that GC lists it again, which loses
//! nothing: its chunks and indexes were durable before the manifest was written.
//!
//! The manifest repeats what the catalog holds for the point, plus the repository's chunk
//! size, chunk layout and id, so that a rebuild needs nothing else. Like the catalog, it
//! names the point's config file by its digest and never holds the VMX and ExtraConfig
//! (bootstrap Secrets among them) themselves ([`crate::repo::point_config`]). A manifest
//! written before that held them inline (VMX in base64); it still reads, and
//! `Repository::open` or `repo rebuild-catalog` writes it again without them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ids::ChunkDigest;
use crate::repo::catalog::NewPoint;
use crate::repo::durable;

/// File name of a point's manifest inside `indexes/<point>/`.
pub const MANIFEST_FILE: &str = "point.json";
/// The manifest format this agent writes: 2 names the point's config file by its digest
/// and never holds the VMX and ExtraConfig. Format 1 held them inline; it is still read.
const FORMAT: u32 = 2;
/// The oldest manifest format this agent reads.
const OLDEST_FORMAT: u32 = 1;

/// What a manifest records about the repository itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoFacts {
    /// The repository's id (`repo_meta.repo_id`).
    pub repo_id: String,
    /// Chunk size in bytes.
    pub chunk_size_bytes: u32,
    /// Chunk layout (`repo_meta.chunk_layout`).
    pub chunk_layout: String,
}

/// A point manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (2; 1 before schema 6).
    pub format: u32,
    /// The repository.
    pub repo: RepoFacts,
    /// The point, as committed (its config file's digest; format 1: the VMX file in base64
    /// and ExtraConfig).
    pub point: NewPoint,
}

/// `Option<Vec<u8>>` as an optional base64 string (the VMX file in config files and in
/// manifests of format 1).
pub mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => {
                s.serialize_some(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            None => s.serialize_none(),
        }
    }

    /// Deserialize.
    ///
    /// # Errors
    /// Not base64, or the deserializer's.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}

/// Why a manifest could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading or writing the file failed.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not a manifest this agent understands.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

impl Manifest {
    /// The manifest of `point` in the repository described by `repo`.
    #[must_use]
    pub fn of(point: &NewPoint, repo: RepoFacts) -> Self {
        Self {
            format: FORMAT,
            repo,
            point: point.clone(),
        }
    }

    /// A manifest of format 1 brought to this format: the point's VMX and ExtraConfig,
    /// now in its config file, are replaced by that file's `digest`.
    pub fn config_moved(&mut self, digest: ChunkDigest) {
        self.format = FORMAT;
        self.point.vmx = None;
        self.point.extra_config = None;
        self.point.config_digest = Some(digest);
    }

    /// The point to commit again (without its job: the rebuilt catalog has no job rows).
    #[must_use]
    pub fn to_new_point(&self) -> NewPoint {
        NewPoint {
            job: None,
            ..self.point.clone()
        }
    }

    /// Write durably to `dir/point.json` (`dir` is the point's index directory, which
    /// exists once its first index is written; created here for a point without disks).
    ///
    /// # Errors
    /// [`ManifestError::Io`] naming the file or directory.
    pub fn write(&self, dir: &Path) -> Result<(), ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|e| ManifestError::Invalid {
            path: path.clone(),
            what: e.to_string(),
        })?;
        durable::write_file(&path, &json)
            .map_err(|(path, source)| ManifestError::Io { path, source })
    }

    /// Read `path`.
    ///
    /// # Errors
    /// [`ManifestError::Io`], or [`ManifestError::Invalid`] for a file that does not parse
    /// or has an unknown format.
    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        let bytes = fs::read(path).map_err(|source| ManifestError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |what: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            what,
        };
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let Format { format } =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if !(OLDEST_FORMAT..=FORMAT).contains(&format) {
            return Err(invalid(format!(
                "manifest format {format} (this agent reads {OLDEST_FORMAT} to {FORMAT})"
            )));
        }
        let manifest: Self = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::catalog::Catalog;

    #[test]
    fn a_manifest_names_the_config_and_never_holds_it() {
        let mut point = crate::repo::catalog::sample_point("vm-1", 1_700_000_000);
        let digest = point.config_digest.unwrap();
        let facts = RepoFacts {
            repo_id: "r".into(),
            chunk_size_bytes: 1 << 20,
            chunk_layout: "ab".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest::of(&point, facts.clone());
        m.write(dir.path()).unwrap();
        let back = Manifest::read(&dir.path().join(MANIFEST_FILE)).unwrap();
        assert_eq!(back, m);
        let again = back.to_new_point();
        assert_eq!(again.config_digest, Some(digest));
        assert_eq!(again.disks, point.disks);
        assert_eq!(again.job, None);
        // It commits into an empty catalog.
        let mut c = Catalog::open_in_memory().unwrap();
        c.commit_point(&again).unwrap();
        assert_eq!(c.list_points().unwrap()[0].id, point.id);

        // A VMX handed over inline is not written.
        point.vmx = Some(b"guestinfo.userdata = \"c2VjcmV0\"".to_vec());
        point.extra_config = Some(serde_json::json!([["guestinfo.userdata", "c2VjcmV0"]]));
        Manifest::of(&point, facts).write(dir.path()).unwrap();
        let json = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        assert!(
            !json.contains("c2VjcmV0") && !json.contains("\"vmx\""),
            "{json}"
        );
        assert!(json.contains(&digest.to_hex()), "{json}");

        // One written before schema 6, with them inline, still reads them.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old["format"] = 1.into();
        old["point"]["vmx"] = serde_json::json!("AAECAwQF");
        old["point"]["extra_config"] = serde_json::json!({"guestinfo.x": "é"});
        std::fs::write(dir.path().join(MANIFEST_FILE), old.to_string()).unwrap();
        let read = Manifest::read(&dir.path().join(MANIFEST_FILE)).unwrap();
        assert_eq!(read.point.vmx, Some(vec![0, 1, 2, 3, 4, 5]));
        assert_eq!(
            read.point.extra_config,
            Some(serde_json::json!({"guestinfo.x": "é"}))
        );
        let mut moved = read.clone();
        moved.config_moved(digest);
        assert_eq!(moved, m);

        std::fs::write(dir.path().join(MANIFEST_FILE), b"{\"format\": 9}").unwrap();
        let e = Manifest::read(&dir.path().join(MANIFEST_FILE)).unwrap_err();
        assert!(
            e.to_string().contains("point.json") && e.to_string().contains("format 9"),
            "{e}"
        );
    }
}
