//! Durable writes of the repository's small files (index files, point manifests) and
//! directory fsyncs: what makes a rename or a new directory entry survive a power loss.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// What the temp files of [`write_file`] have in their names: `<name>.tmp-<random>`.
pub(crate) const TEMP_INFIX: &str = ".tmp-";

/// Whether `name` is a temp file of [`write_file`] (or of versions before it, `<name>.tmp`).
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.contains(TEMP_INFIX) || name.ends_with(".tmp")
}

/// Write `bytes` to `path` durably: `<path>.tmp-<random>` written and fsynced, renamed to
/// `path`, then the directory (created if absent) fsynced. A temp name of its own lets two
/// writers of the same file (two repairs writing a missing manifest) never truncate the
/// file the other is renaming; the temp file is removed again on error. On error, the file
/// or directory that failed with its I/O error, for the caller's error type.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), (PathBuf, io::Error)> {
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e| (p, e)
    };
    let dir = path.parent().expect("a file path has a parent");
    create_dir_all(dir)?;
    let mut tmp_name = path.file_name().map(OsString::from).unwrap_or_default();
    tmp_name.push(TEMP_INFIX);
    tmp_name.push(uuid::Uuid::new_v4().simple().to_string());
    let tmp = path.with_file_name(tmp_name);
    let written = File::create_new(&tmp)
        .map_err(at(&tmp))
        .and_then(|mut file| {
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .map_err(at(&tmp))?;
            drop(file);
            fs::rename(&tmp, path).map_err(at(path))
        });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir).map_err(at(dir))
}

/// Remove `path`; one that is not there is not an error.
pub(crate) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing `to`
/// (`RENAME_NOREPLACE`; where that is refused, a check first, which two writers could
/// still race past).
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        // No RENAME_NOREPLACE here: the file system (EINVAL), the kernel (ENOSYS) or a
        // sandbox's syscall filter (EPERM) refuses it.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
            if to.exists() {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            fs::rename(from, to)
        }
        result => result.map_err(io::Error::from),
    }
}

/// Create `dir` and its missing ancestors durably: each new directory's entry is fsynced in
/// its parent (a new directory whose parent was not fsynced can vanish in a power loss,
/// with everything written into it). Nothing is synced when `dir` exists.
pub(crate) fn create_dir_all(dir: &Path) -> Result<(), (PathBuf, io::Error)> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at);
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    fs::create_dir_all(dir).map_err(|e| (dir.to_path_buf(), e))?;
    for new in missing.iter().rev() {
        let parent = match new.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent).map_err(|e| (parent.to_path_buf(), e))?;
    }
    Ok(())
}

/// fsync the directory `dir`, making the entries created, renamed or removed in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_through_a_temp_file_into_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/2000.fidx");
        write_file(&path, b"one").unwrap();
        write_file(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["2000.fidx"]);
        let (failed, _) = write_file(&dir.path().join("a/2000.fidx/x"), b"").unwrap_err();
        assert!(failed.ends_with("a/2000.fidx"), "{failed:?}");
    }

    /// A failed rename (here: onto a non-empty directory) leaves no temp file.
    #[test]
    fn a_failed_write_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("point.json");
        fs::create_dir_all(path.join("in-the-way")).unwrap();
        let (failed, _) = write_file(&path, b"{}").unwrap_err();
        assert_eq!(failed, path);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["point.json"]);
        assert!(is_temp_name("point.json.tmp-0123") && is_temp_name("2000.fidx.tmp"));
        assert!(!is_temp_name("point.json") && !is_temp_name("2000.fidx"));
    }
}
