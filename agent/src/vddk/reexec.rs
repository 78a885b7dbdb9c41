//! Re-executing the agent with VDDK's directory on `LD_LIBRARY_PATH` (nbdkit `reexec.c`).
//!
//! VDDK `dlopen`s its own plugins and bundled libraries (libssl, libstdc++ …) by soname,
//! so the directory holding `libvixDiskLib` must be on the loader's search path. It must
//! never be on the system path (it would shadow system libraries for every program), so
//! the agent re-executes itself once, early in `main` and before any thread or `InitEx`,
//! with that directory prepended to `LD_LIBRARY_PATH`. [`REEXEC_MARKER`] stops a second
//! re-exec; the original value is kept in [`ORIGINAL_LD_LIBRARY_PATH`] and
//! [`restore_child_env`] puts it back for processes the agent starts.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::library::locate;

/// Set (to the prepended directory) in the re-executed process.
pub const REEXEC_MARKER: &str = "VADP_AGENT_VDDK_REEXEC";
/// The `LD_LIBRARY_PATH` the agent was started with; absent when it was unset.
pub const ORIGINAL_LD_LIBRARY_PATH: &str = "VADP_AGENT_ORIG_LD_LIBRARY_PATH";
const LD_LIBRARY_PATH: &str = "LD_LIBRARY_PATH";

/// What the agent must do before loading VDDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReexecPlan {
    /// Already re-executed, or there is no library to load: go on.
    Continue,
    /// Re-execute with these variables set.
    Reexec {
        /// The variables to set (name, value).
        set: Vec<(&'static str, OsString)>,
    },
}

/// Decides whether to re-exec, given the directory holding the library and the current
/// values of the relevant environment variables.
#[must_use]
pub fn plan(lib_dir: &Path, env: &HashMap<&str, OsString>) -> ReexecPlan {
    if env.contains_key(REEXEC_MARKER) {
        return ReexecPlan::Continue;
    }
    let original = env.get(LD_LIBRARY_PATH);
    let mut path = lib_dir.as_os_str().to_os_string();
    if let Some(orig) = original.filter(|v| !v.is_empty()) {
        path.push(":");
        path.push(orig);
    }
    let mut set = vec![
        (LD_LIBRARY_PATH, path),
        (REEXEC_MARKER, lib_dir.as_os_str().to_os_string()),
    ];
    if let Some(orig) = original {
        set.push((ORIGINAL_LD_LIBRARY_PATH, orig.clone()));
    }
    ReexecPlan::Reexec { set }
}

/// Why re-executing failed.
#[derive(Debug, thiserror::Error)]
#[error("re-executing {} with VDDK's directory {} on LD_LIBRARY_PATH", exe.display(), lib_dir.display())]
pub struct ReexecError {
    /// The executable.
    pub exe: PathBuf,
    /// The directory that was to be prepended.
    pub lib_dir: PathBuf,
    /// Why `execv` failed.
    #[source]
    pub source: std::io::Error,
}

/// Re-executes the current program with the VDDK library's directory prepended to
/// `LD_LIBRARY_PATH`, unless that was already done. Call it first thing in `main`, before
/// any thread is started, when a `libdir` is configured. Returns when no re-exec is
/// needed (already done, or no library in `libdir`: loading will report that).
///
/// # Errors
/// When `exec` itself fails; on success it does not return.
pub fn reexec_with_library_path(libdir: &Path) -> Result<(), ReexecError> {
    let Some((lib, _major)) = locate(libdir) else {
        return Ok(());
    };
    // The directory the library file sits in (lib64/ or libdir itself), made absolute so a
    // relative libdir keeps working after a chdir.
    let lib_dir = lib
        .parent()
        .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.to_path_buf()))
        .unwrap_or_default();
    let env: HashMap<&str, OsString> = [LD_LIBRARY_PATH, REEXEC_MARKER]
        .into_iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (k, v)))
        .collect();
    let ReexecPlan::Reexec { set } = plan(&lib_dir, &env) else {
        return Ok(());
    };
    // /proc/self/exe, not argv[0]: argv[0] may be a bare name found on PATH.
    let exe = PathBuf::from("/proc/self/exe");
    let mut args = std::env::args_os();
    let mut cmd = Command::new(&exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    cmd.args(args);
    for (k, v) in set {
        cmd.env(k, v);
    }
    tracing::debug!(target: "vddk", lib_dir = %lib_dir.display(), "re-executing with VDDK on LD_LIBRARY_PATH");
    let source = cmd.exec();
    Err(ReexecError {
        exe,
        lib_dir,
        source,
    })
}

/// Whether this process is the re-executed one.
#[must_use]
pub fn reexecuted() -> bool {
    std::env::var_os(REEXEC_MARKER).is_some()
}

/// Gives a child process the environment the agent was started with: the original
/// `LD_LIBRARY_PATH` (or none) and no re-exec variables, so VDDK's bundled libraries do
/// not leak into it. Does nothing unless this process was re-executed.
pub fn restore_child_env(cmd: &mut Command) {
    restore_child_env_from(
        cmd,
        std::env::var_os(REEXEC_MARKER).as_deref(),
        std::env::var_os(ORIGINAL_LD_LIBRARY_PATH).as_deref(),
    );
}

fn restore_child_env_from(cmd: &mut Command, marker: Option<&OsStr>, original: Option<&OsStr>) {
    if marker.is_none() {
        return;
    }
    match original {
        Some(orig) => cmd.env(LD_LIBRARY_PATH, orig),
        None => cmd.env_remove(LD_LIBRARY_PATH),
    };
    cmd.env_remove(REEXEC_MARKER);
    cmd.env_remove(ORIGINAL_LD_LIBRARY_PATH);
}

/// The directory a re-exec prepended, when this process was re-executed.
#[must_use]
pub fn prepended_dir() -> Option<PathBuf> {
    std::env::var_os(REEXEC_MARKER)
        .filter(|v| !v.as_bytes().is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, OsString> {
        pairs.iter().map(|(k, v)| (*k, OsString::from(v))).collect()
    }

    #[test]
    fn prepends_and_saves_original() {
        let plan = plan(
            Path::new("/opt/vddk/lib64"),
            &env(&[(LD_LIBRARY_PATH, "/usr/local/lib")]),
        );
        assert_eq!(
            plan,
            ReexecPlan::Reexec {
                set: vec![
                    (LD_LIBRARY_PATH, "/opt/vddk/lib64:/usr/local/lib".into()),
                    (REEXEC_MARKER, "/opt/vddk/lib64".into()),
                    (ORIGINAL_LD_LIBRARY_PATH, "/usr/local/lib".into()),
                ]
            }
        );
    }

    #[test]
    fn unset_path_is_not_saved() {
        let plan = plan(Path::new("/opt/vddk/lib64"), &env(&[]));
        assert_eq!(
            plan,
            ReexecPlan::Reexec {
                set: vec![
                    (LD_LIBRARY_PATH, "/opt/vddk/lib64".into()),
                    (REEXEC_MARKER, "/opt/vddk/lib64".into()),
                ]
            }
        );
    }

    #[test]
    fn marker_prevents_a_second_reexec() {
        let plan = plan(
            Path::new("/opt/vddk/lib64"),
            &env(&[(REEXEC_MARKER, "/opt/vddk/lib64"), (LD_LIBRARY_PATH, "/x")]),
        );
        assert_eq!(plan, ReexecPlan::Continue);
    }

    fn child_env(cmd: &Command) -> Vec<(String, Option<String>)> {
        let mut v: Vec<_> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn children_get_the_original_path_back() {
        let mut cmd = Command::new("true");
        restore_child_env_from(&mut cmd, Some(OsStr::new("/d")), Some(OsStr::new("/orig")));
        assert_eq!(
            child_env(&cmd),
            [
                (LD_LIBRARY_PATH.to_owned(), Some("/orig".to_owned())),
                (ORIGINAL_LD_LIBRARY_PATH.to_owned(), None),
                (REEXEC_MARKER.to_owned(), None),
            ]
        );

        let mut cmd = Command::new("true");
        restore_child_env_from(&mut cmd, Some(OsStr::new("/d")), None);
        assert!(child_env(&cmd).contains(&(LD_LIBRARY_PATH.to_owned(), None)));

        let mut cmd = Command::new("true");
        restore_child_env_from(&mut cmd, None, None);
        assert!(child_env(&cmd).is_empty());
    }
}
