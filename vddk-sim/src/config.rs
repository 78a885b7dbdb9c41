//! The InitEx configuration file (VDDK.md §9): `key = "value"` or `key=value` lines and
//! `#` comments. VDDK's own keys are accepted and mostly ignored; the simulator's keys are:
//!
//! - `vadp.lab.root` (required): the lab root directory (`lab.json`, `vms/`, `datastores/`).
//! - `vadp.sim.openDelayMs`: sleep this long inside Open and Close, widening the window in
//!   which a concurrent Open/Close is detected (tests).
//! - `vixDiskLib.transport.LogLevel`: 0 (panic) … 6 (trivia); messages above it are not
//!   passed to the log callback. Default 3.
//! - `vadp.sim.proxyVm`: the moref of the VM this process runs in. Real VDDK finds its
//!   proxy VM from the machine's BIOS UUID; with this key the simulator offers hotadd
//!   transport for snapshot reads (see `hotadd`). Without it hotadd is never available.
//! - `tmpDirectory` (VDDK's key): where the library keeps state that outlives a
//!   connection, here the hot-add records `VixDiskLib_Cleanup` reads. Default
//!   `<lab root>/vddk-tmp`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vddk_sys::VIX_E_INVALID_ARG;

use crate::vix::{VixResult, fail};

/// The config key naming the lab root.
pub(crate) const LAB_ROOT_KEY: &str = "vadp.lab.root";
const OPEN_DELAY_KEY: &str = "vadp.sim.openDelayMs";
const LOG_LEVEL_KEY: &str = "vixDiskLib.transport.LogLevel";
const PROXY_VM_KEY: &str = "vadp.sim.proxyVm";
const TMP_DIRECTORY_KEY: &str = "tmpDirectory";

/// The parsed configuration.
#[derive(Debug, Clone)]
pub(crate) struct SimConfig {
    pub lab_root: PathBuf,
    pub open_delay: Duration,
    pub log_level: u32,
    /// The VM this process runs in (`vadp.sim.proxyVm`): hotadd is offered only with it.
    pub proxy_vm: Option<String>,
    /// VDDK's `tmpDirectory`: the hot-add records live in `hotadd/` below it.
    pub tmp_directory: PathBuf,
    /// Every key as written (later lines win), for diagnostics.
    pub entries: BTreeMap<String, String>,
}

impl SimConfig {
    /// Reads and parses `path`.
    pub(crate) fn load(path: &Path) -> VixResult<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) => fail(
                VIX_E_INVALID_ARG,
                format!("cannot read config file {}: {e}", path.display()),
            ),
        }
    }

    /// Parses the text of a config file (`origin` is only used in messages).
    pub(crate) fn parse(text: &str, origin: &Path) -> VixResult<Self> {
        let entries = parse_entries(text);
        let Some(root) = entries.get(LAB_ROOT_KEY).filter(|v| !v.is_empty()) else {
            return fail(
                VIX_E_INVALID_ARG,
                format!(
                    "config file {} has no {LAB_ROOT_KEY} = \"<dir>\": vddk-sim needs the lab root",
                    origin.display()
                ),
            );
        };
        let number = |key: &str, default: u64| -> VixResult<u64> {
            match entries.get(key) {
                None => Ok(default),
                Some(v) => v.parse().or_else(|_| {
                    fail(
                        VIX_E_INVALID_ARG,
                        format!("config key {key} = {v:?} is not a number"),
                    )
                }),
            }
        };
        let open_delay = Duration::from_millis(number(OPEN_DELAY_KEY, 0)?);
        let log_level = u32::try_from(number(LOG_LEVEL_KEY, 3)?.min(6)).unwrap_or(3);
        let lab_root = PathBuf::from(root);
        let proxy_vm = entries.get(PROXY_VM_KEY).filter(|v| !v.is_empty()).cloned();
        let tmp_directory = entries
            .get(TMP_DIRECTORY_KEY)
            .filter(|v| !v.is_empty())
            .map_or_else(|| lab_root.join("vddk-tmp"), PathBuf::from);
        Ok(Self {
            lab_root,
            open_delay,
            log_level,
            proxy_vm,
            tmp_directory,
            entries,
        })
    }
}

/// `key = "value"` / `key=value` lines; `#` starts a comment outside quotes.
fn parse_entries(text: &str) -> BTreeMap<String, String> {
    let mut entries = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = if let Some(quoted) = value.strip_prefix('"') {
            quoted.split_once('"').map_or(quoted, |(v, _)| v)
        } else {
            value.split_once('#').map_or(value, |(v, _)| v).trim()
        };
        entries.insert(key.trim().to_owned(), value.to_owned());
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_bare_and_comments() {
        let text = "# comment\n\
                    vadp.lab.root = \"/tmp/lab # not a comment\"\n\
                    vadp.sim.openDelayMs=250 # trailing\n\
                    tmpDirectory=/tmp\n\
                    garbage line\n";
        let c = SimConfig::parse(text, Path::new("cfg")).unwrap();
        assert_eq!(c.lab_root, PathBuf::from("/tmp/lab # not a comment"));
        assert_eq!(c.open_delay, Duration::from_millis(250));
        assert_eq!(c.log_level, 3);
        assert_eq!(c.entries["tmpDirectory"], "/tmp");
    }

    #[test]
    fn lab_root_is_required() {
        let err = SimConfig::parse("tmpDirectory = \"/tmp\"\n", Path::new("cfg")).unwrap_err();
        assert_eq!(err.code, VIX_E_INVALID_ARG);
        assert!(err.detail.contains(LAB_ROOT_KEY));
    }

    #[test]
    fn bad_number_is_rejected() {
        let err = SimConfig::parse(
            "vadp.lab.root=/x\nvadp.sim.openDelayMs = \"soon\"\n",
            Path::new("cfg"),
        )
        .unwrap_err();
        assert_eq!(err.code, VIX_E_INVALID_ARG);
    }
}
