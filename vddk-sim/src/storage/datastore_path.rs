//! `[ds1] web-1/disk-0.vmdk` → `<root>/datastores/ds1/web-1/disk-0.vmdk`.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use vddk_sys::VIX_E_FILE_NOT_FOUND;

use crate::vix::{VixResult, fail};

/// A parsed datastore path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DatastorePath {
    pub datastore: String,
    pub relative: String,
}

impl DatastorePath {
    /// Parses `[datastore] relative/path.vmdk`. A path that is not in that form, or that
    /// tries to leave the datastore (`..`, absolute), is FILE_NOT_FOUND as on ESXi.
    pub(crate) fn parse(text: &str) -> VixResult<Self> {
        let text = text.trim();
        let parsed = text.strip_prefix('[').and_then(|rest| rest.split_once(']'));
        let Some((datastore, relative)) = parsed else {
            return fail(
                VIX_E_FILE_NOT_FOUND,
                format!("{text:?} is not a datastore path (\"[datastore] dir/disk.vmdk\")"),
            );
        };
        let relative = relative.trim().trim_start_matches('/');
        let escapes = Path::new(relative)
            .components()
            .any(|c| !matches!(c, Component::Normal(_)));
        if datastore.is_empty() || relative.is_empty() || escapes || datastore.contains('/') {
            return fail(
                VIX_E_FILE_NOT_FOUND,
                format!("{text:?} does not name a file inside a datastore"),
            );
        }
        Ok(Self {
            datastore: datastore.to_owned(),
            relative: relative.to_owned(),
        })
    }

    /// The file under the lab root.
    pub(crate) fn resolve(&self, lab_root: &Path) -> PathBuf {
        lab_root
            .join("datastores")
            .join(&self.datastore)
            .join(&self.relative)
    }
}

impl fmt::Display for DatastorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.datastore, self.relative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        let p = DatastorePath::parse("[ds1] web-1/disk-0.vmdk").unwrap();
        assert_eq!(p.datastore, "ds1");
        assert_eq!(p.to_string(), "[ds1] web-1/disk-0.vmdk");
        assert_eq!(
            p.resolve(Path::new("/lab")),
            PathBuf::from("/lab/datastores/ds1/web-1/disk-0.vmdk")
        );
    }

    #[test]
    fn rejects_escapes_and_other_forms() {
        for bad in [
            "/abs/disk.vmdk",
            "[ds1] ../x.vmdk",
            "[] a.vmdk",
            "[ds1] ",
            "[ds1 x",
        ] {
            let err = DatastorePath::parse(bad).unwrap_err();
            assert_eq!(err.code, VIX_E_FILE_NOT_FOUND, "{bad}");
        }
    }
}
