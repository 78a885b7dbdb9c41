//! `<root>/supervisor/settings.json`: the Supervisor's version, the ExtraConfig key
//! spelling VM Operator writes, and the §7.3.3 auto-registration timeout.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::codec::KeySpelling;
use crate::datastore::write_atomic;

/// Which Supervisor generation the lab plays (seed 001 §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SupervisorVersion {
    /// vSphere 8.0 Update 3: restore to new only, opt-out auto-registration.
    #[serde(rename = "8.0U3")]
    V80U3,
    /// VCF 9.0: every restore type, opt-in auto-registration.
    #[default]
    #[serde(rename = "9.0")]
    V90,
}

/// The settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorSettings {
    /// `8.0U3` or `9.0`.
    #[serde(default)]
    pub version: SupervisorVersion,
    /// `code` or `guide`.
    #[serde(default)]
    pub key_spelling: KeySpelling,
    /// How long a disabled `RelocateVM_Task` defers automatic registration (§7.3.3).
    #[serde(default = "default_timeout")]
    pub auto_registration_timeout_secs: u64,
    /// Kinds (`VirtualMachineGroup`, …) on which every Kubernetes API call answers 403
    /// Forbidden, as for an account without rights on them.
    #[serde(default)]
    pub forbidden_kinds: Vec<String>,
    /// Names of VMs whose registration task fails at "validate VM" (a test's fault
    /// injection: WCP refusing a VM for a reason no pre-flight could foresee).
    #[serde(default)]
    pub failing_registrations: Vec<String>,
}

fn default_timeout() -> u64 {
    900
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        Self {
            version: SupervisorVersion::default(),
            key_spelling: KeySpelling::default(),
            auto_registration_timeout_secs: default_timeout(),
            forbidden_kinds: Vec::new(),
            failing_registrations: Vec::new(),
        }
    }
}

fn path(root: &Path) -> PathBuf {
    root.join("supervisor").join("settings.json")
}

pub(super) fn load(root: &Path) -> std::io::Result<SupervisorSettings> {
    match std::fs::read(path(root)) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SupervisorSettings::default()),
        Err(e) => Err(e),
    }
}

pub(super) fn save(root: &Path, s: &SupervisorSettings) -> std::io::Result<()> {
    let p = path(root);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes = serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?;
    write_atomic(&p, &bytes).map_err(std::io::Error::other)
}
