//! Reading `<root>/lab.json` and `<root>/vms/<moref>.json`, and recording
//! PrepareForAccess/EndAccess in the VM's `disabledMethods`.
//!
//! Parsing is deliberately lenient (serde_json `Value`, a few alternative field names)
//! because the lab's schema is owned by the lab crate and still moving; unknown fields are
//! preserved when the VM file is rewritten.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use vddk_sys::{VIX_E_FAIL, VIX_E_FILE_ACCESS_ERROR, VIX_E_INVALID_ARG, VIX_E_VM_NOT_FOUND};

use crate::vix::{VixResult, fail};

/// The vSphere method PrepareForAccess disables (VDDK.md §7).
pub(crate) const RELOCATE_METHOD: &str = "RelocateVM_Task";

/// The simulated vCenter's identity and credentials (`lab.json`).
#[derive(Debug, Clone, Default)]
pub(crate) struct LabSettings {
    pub server: String,
    pub user: String,
    pub password: String,
    /// SHA-1 thumbprint of the lab's certificate; None disables the check.
    pub thumbprint: Option<String>,
    /// Valid `vmware_soap_session` cookies, when the lab keeps a session registry.
    pub sessions: Option<Vec<String>>,
}

impl LabSettings {
    pub(crate) fn load(root: &Path) -> VixResult<Self> {
        let path = root.join("lab.json");
        let v = read_json(&path, VIX_E_FAIL)?;
        let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let Some(server) = text("server") else {
            return fail(VIX_E_FAIL, format!("{} has no \"server\"", path.display()));
        };
        let sessions = v.get("sessions").and_then(Value::as_array).map(|list| {
            list.iter()
                .filter_map(|s| {
                    s.as_str()
                        .or_else(|| s.get("cookie").and_then(Value::as_str))
                        .map(str::to_owned)
                })
                .collect()
        });
        Ok(Self {
            server,
            user: text("user").unwrap_or_default(),
            password: text("password").unwrap_or_default(),
            thumbprint: text("thumbprint").filter(|t| !t.is_empty()),
            sessions,
        })
    }
}

/// One VM's state file.
#[derive(Debug, Clone)]
pub(crate) struct VmState {
    pub moref: String,
    json: Value,
}

impl VmState {
    fn path(root: &Path, moref: &str) -> VixResult<PathBuf> {
        let valid = !moref.is_empty()
            && moref
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return fail(VIX_E_VM_NOT_FOUND, format!("no VM with moref {moref:?}"));
        }
        Ok(root.join("vms").join(format!("{moref}.json")))
    }

    /// Loads the VM; a missing file is VIX_E_VM_NOT_FOUND.
    pub(crate) fn load(root: &Path, moref: &str) -> VixResult<Self> {
        let path = Self::path(root, moref)?;
        if !path.is_file() {
            return fail(VIX_E_VM_NOT_FOUND, format!("no VM with moref {moref:?}"));
        }
        Ok(Self {
            moref: moref.to_owned(),
            json: read_json(&path, VIX_E_FAIL)?,
        })
    }

    /// The disk files (datastore paths) recorded in snapshot `snapshot`, or None when the VM
    /// has no such snapshot.
    pub(crate) fn snapshot_disks(&self, snapshot: &str) -> Option<Vec<String>> {
        let snapshot = find_snapshot(self.json.get("snapshots")?, snapshot)?;
        let disks = snapshot.get("disks").and_then(Value::as_array);
        Some(
            disks
                .into_iter()
                .flatten()
                .filter_map(|d| {
                    d.as_str()
                        .or_else(|| {
                            ["fileName", "file", "path", "datastorePath"]
                                .iter()
                                .find_map(|k| d.get(*k).and_then(Value::as_str))
                        })
                        .map(str::to_owned)
                })
                .collect(),
        )
    }
}

/// Snapshots may be a flat list or a tree (`children` / `childSnapshotList`).
fn find_snapshot<'a>(list: &'a Value, moref: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find_map(|s| {
        let id = ["moref", "id", "snapshot"]
            .iter()
            .find_map(|k| s.get(*k).and_then(Value::as_str));
        if id == Some(moref) {
            return Some(s);
        }
        ["children", "childSnapshotList"]
            .iter()
            .find_map(|k| s.get(*k).and_then(|c| find_snapshot(c, moref)))
    })
}

/// Disables (`disabled = true`, PrepareForAccess) or re-enables (EndAccess)
/// `RelocateVM_Task` for `moref`, tagged with `identity` as the source.
///
/// Disabling again with the same source is a no-op; a different source that already
/// disabled it makes PrepareForAccess fail as vCenter's MethodAlreadyDisabledFault does.
/// Re-enabling removes every entry for the method (EndAccess may come without Prepare).
pub(crate) fn set_relocate_disabled(
    root: &Path,
    moref: &str,
    identity: &str,
    disabled: bool,
) -> VixResult<()> {
    let path = VmState::path(root, moref)?;
    let mut vm = VmState::load(root, moref)?.json;
    let Some(object) = vm.as_object_mut() else {
        return fail(
            VIX_E_FAIL,
            format!("{} is not a JSON object", path.display()),
        );
    };
    let list = object
        .entry("disabledMethods")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(list) = list.as_array_mut() else {
        return fail(
            VIX_E_FAIL,
            format!("{}: disabledMethods is not a list", path.display()),
        );
    };
    let is_relocate = |entry: &Value| match entry {
        Value::String(m) => m == RELOCATE_METHOD,
        other => other.get("method").and_then(Value::as_str) == Some(RELOCATE_METHOD),
    };
    if disabled {
        let holders: Vec<String> = list
            .iter()
            .filter(|e| is_relocate(e))
            .map(|e| {
                e.get("source")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        if holders.iter().any(|h| h == identity) {
            return Ok(());
        }
        if let Some(other) = holders.first() {
            return fail(
                VIX_E_FAIL,
                format!(
                    "MethodAlreadyDisabledFault: {RELOCATE_METHOD} of {moref} is already \
                     disabled by {other:?}"
                ),
            );
        }
        list.push(json!({ "method": RELOCATE_METHOD, "source": identity }));
    } else {
        list.retain(|e| !is_relocate(e));
    }
    write_json_atomically(&path, &vm)
}

fn read_json(path: &Path, code: u32) -> VixResult<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return fail(code, format!("cannot read {}: {e}", path.display())),
    };
    serde_json::from_str(&text)
        .or_else(|e| fail(code, format!("{} is not valid JSON: {e}", path.display())))
}

fn write_json_atomically(path: &Path, value: &Value) -> VixResult<()> {
    let tmp = path.with_extension(format!("json.vddk-sim.{}", std::process::id()));
    let text = serde_json::to_string_pretty(value)
        .or_else(|e| fail(VIX_E_FAIL, format!("serialise {}: {e}", path.display())))?;
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .or_else(|e| {
            fail(
                VIX_E_FILE_ACCESS_ERROR,
                format!("cannot write {}: {e}", path.display()),
            )
        })
}

/// PrepareForAccess/EndAccess identities are at most 50 characters (VDDK.md §7).
pub(crate) fn check_identity(identity: &str) -> VixResult<()> {
    if identity.is_empty() || identity.chars().count() > 50 {
        return fail(
            VIX_E_INVALID_ARG,
            format!("identity {identity:?} must be 1 to 50 characters"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab_with_vm(vm: Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vms")).unwrap();
        std::fs::write(dir.path().join("vms/vm-1.json"), vm.to_string()).unwrap();
        dir
    }

    #[test]
    fn finds_nested_snapshot_disks() {
        let dir = lab_with_vm(json!({
            "snapshots": [{ "moref": "snapshot-1", "disks": ["[ds1] a.vmdk"],
                "children": [{ "moref": "snapshot-2", "disks": [{"fileName": "[ds1] b.vmdk"}] }] }]
        }));
        let vm = VmState::load(dir.path(), "vm-1").unwrap();
        assert_eq!(vm.snapshot_disks("snapshot-2").unwrap(), ["[ds1] b.vmdk"]);
        assert!(vm.snapshot_disks("snapshot-9").is_none());
        assert_eq!(
            VmState::load(dir.path(), "vm-2").unwrap_err().code,
            VIX_E_VM_NOT_FOUND
        );
        assert_eq!(
            VmState::load(dir.path(), "../x").unwrap_err().code,
            VIX_E_VM_NOT_FOUND
        );
    }

    #[test]
    fn relocate_disable_and_enable_round_trip() {
        let dir = lab_with_vm(json!({ "name": "web-1" }));
        set_relocate_disabled(dir.path(), "vm-1", "backup", true).unwrap();
        set_relocate_disabled(dir.path(), "vm-1", "backup", true).unwrap();
        let err = set_relocate_disabled(dir.path(), "vm-1", "other", true).unwrap_err();
        assert!(err.detail.contains("MethodAlreadyDisabledFault"));
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("vms/vm-1.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(v["name"], "web-1");
        assert_eq!(v["disabledMethods"][0]["source"], "backup");
        set_relocate_disabled(dir.path(), "vm-1", "backup", false).unwrap();
        set_relocate_disabled(dir.path(), "vm-1", "backup", false).unwrap();
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("vms/vm-1.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(v["disabledMethods"], json!([]));
    }

    #[test]
    fn identity_length() {
        check_identity(&"x".repeat(50)).unwrap();
        assert_eq!(
            check_identity(&"x".repeat(51)).unwrap_err().code,
            VIX_E_INVALID_ARG
        );
    }
}
