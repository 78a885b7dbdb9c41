//! `DatastorePath`: the `[ds1] dir/file.vmdk` names vSphere uses for datastore files.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::DatastoreError;

/// A file on a datastore, as vSphere writes it: `[ds1] web-1/disk-0.vmdk`.
///
/// The datastore name is non-empty and has no `/`; the relative path is non-empty,
/// not absolute, and has no `.`, `..` or empty components, so it cannot escape the
/// datastore directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatastorePath {
    datastore: String,
    relative: String,
}

impl DatastorePath {
    /// Builds a path from a datastore name and a relative path.
    ///
    /// # Errors
    /// [`DatastoreError::InvalidPath`] when either part is invalid.
    pub fn new(datastore: &str, relative: &str) -> Result<Self, DatastoreError> {
        Self::parse(&format!("[{datastore}] {relative}"))
    }

    /// Parses `[ds] relative/path`.
    ///
    /// # Errors
    /// [`DatastoreError::InvalidPath`] naming the text and the problem.
    pub fn parse(text: &str) -> Result<Self, DatastoreError> {
        let bad = |reason| DatastoreError::InvalidPath {
            path: text.to_owned(),
            reason,
        };
        let rest = text
            .trim()
            .strip_prefix('[')
            .ok_or_else(|| bad("must start with '['"))?;
        let (ds, relative) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
        if ds.is_empty() || ds.trim() != ds {
            return Err(bad("empty or padded datastore name"));
        }
        if ds.contains(['/', '[', '\0']) {
            return Err(bad("datastore name contains '/', '[' or NUL"));
        }
        let relative = relative.trim_start();
        if relative.is_empty() {
            return Err(bad("empty file path"));
        }
        if relative.starts_with('/') {
            return Err(bad("file path must be relative to the datastore"));
        }
        if relative.contains(['\0', '\\']) {
            return Err(bad("file path contains NUL or '\\'"));
        }
        if relative
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad("file path has an empty, '.' or '..' component"));
        }
        Ok(Self {
            datastore: ds.to_owned(),
            relative: relative.to_owned(),
        })
    }

    /// The datastore name (`ds1`).
    #[must_use]
    pub fn datastore(&self) -> &str {
        &self.datastore
    }

    /// The path inside the datastore (`web-1/disk-0.vmdk`).
    #[must_use]
    pub fn relative_path(&self) -> &str {
        &self.relative
    }

    /// The last component (`disk-0.vmdk`).
    #[must_use]
    pub fn file_name(&self) -> &str {
        self.relative.rsplit('/').next().unwrap_or(&self.relative)
    }

    /// A sibling file in the same directory.
    ///
    /// # Errors
    /// [`DatastoreError::InvalidPath`] when `name` is not a plain file name.
    pub fn sibling(&self, name: &str) -> Result<Self, DatastoreError> {
        if name.contains('/') {
            return Err(DatastoreError::InvalidPath {
                path: name.to_owned(),
                reason: "sibling name must not contain '/'",
            });
        }
        let relative = match self.relative.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{name}"),
            None => name.to_owned(),
        };
        Self::new(&self.datastore, &relative)
    }

    /// A disk as a `.vmx` at this path names it: by file name in the same directory,
    /// otherwise by its absolute ESXi path, `/vmfs/volumes/<ds>/<relative>`.
    #[must_use]
    pub fn vmx_name_of(&self, disk: &Self) -> String {
        let dir = |p: &Self| p.relative.rsplit_once('/').map(|(d, _)| d.to_owned());
        if disk.datastore == self.datastore && dir(disk) == dir(self) {
            disk.file_name().to_owned()
        } else {
            format!("/vmfs/volumes/{}/{}", disk.datastore, disk.relative)
        }
    }

    /// The disk a `.vmx` at this path names `name` (see [`DatastorePath::vmx_name_of`]).
    ///
    /// # Errors
    /// [`DatastoreError::InvalidPath`] for a name that is neither.
    pub fn resolve_vmx_name(&self, name: &str) -> Result<Self, DatastoreError> {
        match name.strip_prefix("/vmfs/volumes/") {
            Some(rest) => {
                let (ds, relative) = rest.split_once('/').ok_or(DatastoreError::InvalidPath {
                    path: name.to_owned(),
                    reason: "no file under the datastore",
                })?;
                Self::new(ds, relative)
            }
            None => self.sibling(name),
        }
    }

    /// The host path under a lab root: `<root>/datastores/<ds>/<relative>`.
    #[must_use]
    pub fn resolve(&self, root: &Path) -> PathBuf {
        datastore_dir(root, &self.datastore).join(&self.relative)
    }
}

/// The host directory of a datastore: `<root>/datastores/<name>`.
#[must_use]
pub fn datastore_dir(root: &Path, name: &str) -> PathBuf {
    root.join("datastores").join(name)
}

impl fmt::Display for DatastorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.datastore, self.relative)
    }
}

impl FromStr for DatastorePath {
    type Err = DatastoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for DatastorePath {
    type Error = DatastoreError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<DatastorePath> for String {
    fn from(p: DatastorePath) -> Self {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vmx_names_a_disk_elsewhere_by_its_absolute_path() {
        let vmx: DatastorePath = "[ds1] web-1/web-1.vmx".parse().unwrap();
        for (disk, name) in [
            ("[ds1] web-1/disk-0.vmdk", "disk-0.vmdk"),
            ("[ds1] fcd/pvc-1.vmdk", "/vmfs/volumes/ds1/fcd/pvc-1.vmdk"),
            (
                "[ds2] web-1/disk-1.vmdk",
                "/vmfs/volumes/ds2/web-1/disk-1.vmdk",
            ),
        ] {
            let disk: DatastorePath = disk.parse().unwrap();
            assert_eq!(vmx.vmx_name_of(&disk), name);
            assert_eq!(vmx.resolve_vmx_name(name).unwrap(), disk);
        }
        assert!(vmx.resolve_vmx_name("/vmfs/volumes/ds1").is_err());
    }

    #[test]
    fn round_trip_and_resolve() {
        let p: DatastorePath = "[ds1] web-1/disk-0.vmdk".parse().unwrap();
        assert_eq!(p.datastore(), "ds1");
        assert_eq!(p.relative_path(), "web-1/disk-0.vmdk");
        assert_eq!(p.file_name(), "disk-0.vmdk");
        assert_eq!(p.to_string(), "[ds1] web-1/disk-0.vmdk");
        assert_eq!(
            p.resolve(Path::new("/lab")),
            PathBuf::from("/lab/datastores/ds1/web-1/disk-0.vmdk")
        );
        let s = p.sibling("disk-0-flat.vmdk").unwrap();
        assert_eq!(s.to_string(), "[ds1] web-1/disk-0-flat.vmdk");
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<DatastorePath>(&json).unwrap(), p);
        // No space after ']' and a space inside the datastore name are accepted, as on ESXi.
        assert_eq!(
            DatastorePath::parse("[my ds]a.vmdk").unwrap().to_string(),
            "[my ds] a.vmdk"
        );
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in [
            "ds1] a.vmdk",
            "[ds1 a.vmdk",
            "[] a.vmdk",
            "[ds1]",
            "[ds1] /etc/passwd",
            "[ds1] ../x.vmdk",
            "[ds1] a/../../x",
            "[ds1] a//b",
            "[ds1] ./a",
            "[d/s] a",
        ] {
            let err = DatastorePath::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
