//! The files a restore to a new VM makes before there is a VM to destroy: its directories
//! (`MakeDirectory`, one per datastore, named `<vm>-restore-<job>`: see
//! [`super::plan::Placement`]), its disks (`CreateVirtualDisk_Task`) and its `.vmx` (an
//! upload). Once the VM is registered, destroying it deletes its files; before that, a
//! failed restore (and, after a crash, reconcile) deletes them one by one. Either way the
//! restore's directories go last, whole.
//!
//! The journal names each directory before it is made (`creating_dir`) and once it exists
//! (`dirs`), each disk before it is made (`creating`) and once it exists (`created`), says
//! when the `.vmx` upload starts (`vmx_uploaded`) and when the VM is being registered
//! (`registering`: a VM registered from the `.vmx` in the staging folder is then destroyed,
//! with its files, instead). Only what the journal says this restore made is deleted. A
//! directory carries the job's id in its name, so one being made when the agent died is
//! the restore's if it exists, and so is a disk being made inside it. (Entries of agents
//! before these directories name disks at the backup's own paths: a disk whose creation
//! was under way may have been refused because the file was already there, so it is
//! reported, never deleted.)

use serde_json::Value;

use super::{RestoreEvent, RestoreObserver};
use crate::engine::error_chain;
use crate::ids::JobId;
use crate::vsphere::{FaultKind, MoRef, VsphereError};

/// What a restore to a new VM made before registering it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unregistered {
    /// The datacenter the paths are in.
    pub datacenter: MoRef,
    /// The restore job (its id names the directories it makes).
    pub job: Option<JobId>,
    /// The name the VM is registered under in the staging folder.
    pub name: String,
    /// Directories made (`[ds] <vm>-restore-<job>`).
    pub dirs: Vec<String>,
    /// A directory being made when the journal was last written.
    pub creating_dir: Option<String>,
    /// Disk files made (`[ds] dir/disk.vmdk`).
    pub created: Vec<String>,
    /// A disk being made when the journal was last written, maybe not by this restore.
    pub creating: Option<String>,
    /// The `.vmx`, once its upload started.
    pub vmx: Option<String>,
    /// `RegisterVM_Task` was called: the VM may exist although the journal has no moref
    /// (the agent died before it could write it).
    pub registering: bool,
}

impl Unregistered {
    /// The disk being made when the journal was last written, unless it was in one of the
    /// restore's own directories (which go whole, with it): one that may have been
    /// refused because a file of that name was there, and is never deleted.
    pub(crate) fn creating_elsewhere(&self) -> Option<&str> {
        let file = self.creating.as_deref()?;
        let in_own = self.dirs.iter().chain(&self.creating_dir).any(|d| {
            file.strip_prefix(d.as_str())
                .is_some_and(|r| r.starts_with('/'))
        });
        (!in_own).then_some(file)
    }

    /// The journal detail's fields (merged into the `vm_shell` entry's detail).
    pub(crate) fn detail(&self) -> Value {
        serde_json::json!({
            "datacenter": self.datacenter.value,
            "name": self.name,
            "dirs": self.dirs,
            "creating_dir": self.creating_dir,
            "created": self.created,
            "creating": self.creating,
            "vmx_uploaded": self.vmx.is_some(),
            "registering": self.registering,
        })
    }

    /// Read back from a `vm_shell` entry's detail; `None` for an entry written before the
    /// files were journalled (no `datacenter`).
    pub(crate) fn from_detail(detail: &Value) -> Option<Self> {
        let datacenter = detail.get("datacenter")?.as_str()?;
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let vmx = (detail.get("vmx_uploaded").and_then(Value::as_bool) == Some(true))
            .then(|| detail.get("vmx").and_then(Value::as_str).map(str::to_owned))
            .flatten();
        Some(Self {
            datacenter: MoRef::new("Datacenter", datacenter),
            job: detail
                .get("job")
                .and_then(Value::as_str)
                .and_then(|j| j.parse().ok()),
            dirs: strings(detail.get("dirs")),
            creating_dir: detail
                .get("creating_dir")
                .and_then(Value::as_str)
                .map(str::to_owned),
            name: detail
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            created: strings(detail.get("created")),
            creating: detail
                .get("creating")
                .and_then(Value::as_str)
                .map(str::to_owned),
            vmx,
            registering: detail.get("registering").and_then(Value::as_bool) == Some(true),
        })
    }
}

/// Deletes what `u` lists: the `.vmx` first (so that nothing names the disks), then each
/// disk. A file already gone counts as deleted. Returns the files deleted and whether
/// every one is gone; what is left is logged, for reconcile to try again.
pub(crate) async fn delete_unregistered(
    env: &crate::engine::Environment,
    u: &Unregistered,
    observer: Option<&RestoreObserver>,
) -> (Vec<String>, bool) {
    let mut deleted = Vec::new();
    let mut complete = true;
    // Registered after all: destroying the VM deletes its files.
    if u.registering
        && let Some(vmx) = &u.vmx
    {
        match registered_shell(env, &u.name, vmx).await {
            Ok(None) => {}
            Ok(Some(vm)) => match super::remove_shell(env, &vm).await {
                Ok(()) => {
                    tracing::warn!(vm = %vm, vmx, "restore clean-up: the VM was registered after all; it is destroyed with its files");
                    deleted.push(vmx.clone());
                }
                Err(e) => {
                    tracing::error!(vm = %vm, error = %error_chain(&e), "restore clean-up: the unfinished VM stays until reconcile removes it");
                    return (deleted, false);
                }
            },
            Err(e) => {
                tracing::error!(vmx, error = %e, "restore clean-up: cannot tell whether the VM was registered; its files stay until reconcile deletes them");
                return (deleted, false);
            }
        }
    }
    let gone = |r: Result<(), VsphereError>, file: &str| match r {
        Ok(()) => Ok(true),
        Err(e) if e.fault_kind() == Some(FaultKind::FileNotFound) => Ok(false),
        Err(e) => {
            tracing::error!(file, error = %error_chain(&e), "restore clean-up: a file the restore made before registering its VM stays until reconcile deletes it");
            Err(())
        }
    };
    let files = u
        .vmx
        .iter()
        .map(|f| (f, true))
        .chain(u.created.iter().map(|f| (f, false)));
    for (file, is_vmx) in files {
        if is_vmx && !file.ends_with(".vmx") {
            // Never a directory (vSphere would delete all it holds), nor anything else.
            tracing::error!(
                file,
                "restore clean-up: the journal names as the .vmx a path that is not one: left alone"
            );
            complete = false;
            continue;
        }
        let r = if is_vmx {
            env.soap.delete_datastore_file(&u.datacenter, file).await
        } else {
            env.soap.delete_virtual_disk(&u.datacenter, file).await
        };
        match gone(r, file) {
            Ok(true) => deleted.push(file.clone()),
            Ok(false) => {}
            Err(()) => complete = false,
        }
    }
    if let Some(observer) = observer
        && !deleted.is_empty()
    {
        observer(&RestoreEvent::Step {
            message: format!(
                "deleted what the restore made before registering its VM: {deleted:?}"
            ),
        });
    }
    if let Some(file) = u.creating_elsewhere() {
        tracing::warn!(
            file,
            "restore clean-up: a disk was being made when the restore stopped; it may exist, and may not be the restore's (vSphere refuses to make a file that is there): check it and delete it by hand if it is a leftover"
        );
    }
    if complete {
        let dirs: Vec<String> = u.dirs.iter().chain(&u.creating_dir).cloned().collect();
        let (gone, all) = delete_restore_dirs(env, &u.datacenter, u.job, &dirs).await;
        deleted.extend(gone);
        complete = all;
    }
    (deleted, complete)
}

/// After the VM of a restore to a new VM was destroyed: deletes the directories its
/// journal `detail` names (destroying the VM leaves those on other datastores than the
/// `.vmx`'s). Returns the directories deleted and whether none is left.
pub(crate) async fn delete_dirs_named_in(
    env: &crate::engine::Environment,
    detail: &Value,
) -> (Vec<String>, bool) {
    match Unregistered::from_detail(detail) {
        Some(m) if !m.dirs.is_empty() => {
            delete_restore_dirs(env, &m.datacenter, m.job, &m.dirs).await
        }
        _ => (Vec::new(), true),
    }
}

/// Deletes, whole, the directories a restore to a new VM made for itself (`dirs`, each
/// `[ds] <vm>-restore-<job>`): after its files, or after its VM was destroyed (which
/// leaves the directories on other datastores than the `.vmx`'s). One already gone counts
/// as deleted; a path that is not a directory of `job`'s is never touched. Returns the
/// directories deleted and whether none is left.
async fn delete_restore_dirs(
    env: &crate::engine::Environment,
    datacenter: &MoRef,
    job: Option<JobId>,
    dirs: &[String],
) -> (Vec<String>, bool) {
    let mut deleted = Vec::new();
    let mut complete = true;
    for dir in dirs {
        if !job.is_some_and(|j| super::plan::is_restore_dir(dir, j)) {
            tracing::error!(
                dir,
                "restore clean-up: the journal names as the restore's directory one that is not named for its job: left alone"
            );
            complete = false;
            continue;
        }
        match env.soap.delete_directory(datacenter, dir).await {
            Ok(()) => deleted.push(dir.clone()),
            Err(e) if e.fault_kind() == Some(FaultKind::FileNotFound) => {}
            Err(e) => {
                tracing::error!(dir, error = %error_chain(&e), "restore clean-up: the restore's directory stays until reconcile deletes it");
                complete = false;
            }
        }
    }
    (deleted, complete)
}

/// The VM registered as `name` from `vmx` in the restore's staging folder, if any. vCenter
/// may report the `.vmx` path in another form than the one registered (on vSAN, with the
/// folder's UUID), so a VM of that name counts when its datastore and file name match; one
/// of that name that does not match is not taken for ours, and nothing is deleted.
async fn registered_shell(
    env: &crate::engine::Environment,
    name: &str,
    vmx: &str,
) -> Result<Option<crate::vsphere::VmMoref>, String> {
    let folder = match env.soap.find_namespace_folder(super::STAGING_FOLDER).await {
        Ok(f) => f,
        Err(VsphereError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(error_chain(&e)),
    };
    // A registration the restore lost track of (killed, or its reply lost) may still be
    // running: the folder is judged once it has ended.
    env.soap
        .wait_for_entity_tasks(
            &folder.moref(),
            "RegisterVM_Task",
            &[".registerVm", ".registerVM"],
            std::time::Duration::from_secs(600),
        )
        .await
        .map_err(|e| error_chain(&e))?;
    let vms = env
        .soap
        .list_in_container(
            &folder.moref(),
            "VirtualMachine",
            &["name", "config.files.vmPathName"],
            false,
        )
        .await
        .map_err(|e| error_chain(&e))?;
    let mut named = vms
        .iter()
        .filter(|o| o.text("name") == Some(name))
        .peekable();
    if named.peek().is_none() {
        // Not registered under its name: by path, as registered.
        return Ok(vms
            .iter()
            .find(|o| o.text("config.files.vmPathName") == Some(vmx))
            .map(|o| crate::vsphere::VmMoref(o.obj.value.clone())));
    }
    let ours = |path: &str| same_datastore_and_file(path, vmx);
    let named: Vec<_> = named.collect();
    match named.as_slice() {
        [one] if one.text("config.files.vmPathName").is_some_and(ours) => {
            Ok(Some(crate::vsphere::VmMoref(one.obj.value.clone())))
        }
        _ => Err(format!(
            "{} VM(s) named {name} in folder {} do not match {vmx}: check them by hand",
            named.len(),
            super::STAGING_FOLDER
        )),
    }
}

/// `[ds] a/b.vmx` and `[ds] 5f1a-uuid/b.vmx`: one datastore, one file name.
fn same_datastore_and_file(a: &str, b: &str) -> bool {
    let split = |p: &str| {
        let (ds, rest) = p.split_once(']').unwrap_or(("", p));
        (
            ds.to_owned(),
            rest.rsplit('/').next().unwrap_or(rest).trim().to_owned(),
        )
    };
    split(a) == split(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_detail_round_trips() {
        assert!(same_datastore_and_file(
            "[vsanDatastore] 5f1a-uuid/web.vmx",
            "[vsanDatastore] web/web.vmx"
        ));
        assert!(!same_datastore_and_file(
            "[ds2] web/web.vmx",
            "[ds1] web/web.vmx"
        ));
        let u = Unregistered {
            datacenter: MoRef::new("Datacenter", "datacenter-2"),
            job: Some("0b5c1f3e-8a2d-4e7f-9c1b-2d3e4f5a6b7c".parse().unwrap()),
            name: "web".into(),
            dirs: vec!["[ds1] web-restore-0b5c1f3e".into()],
            creating_dir: Some("[ds2] web-restore-0b5c1f3e".into()),
            created: vec!["[ds1] web/disk-0.vmdk".into()],
            creating: Some("[ds1] web/disk-1.vmdk".into()),
            vmx: Some("[ds1] web/web.vmx".into()),
            registering: true,
        };
        let mut detail = serde_json::json!({"job": "0b5c1f3e-8a2d-4e7f-9c1b-2d3e4f5a6b7c", "vmx": "[ds1] web/web.vmx", "vm": null});
        for (k, v) in u.detail().as_object().unwrap() {
            detail[k] = v.clone();
        }
        assert_eq!(Unregistered::from_detail(&detail), Some(u.clone()));
        // Before the upload started, the .vmx is not the restore's to delete.
        detail["vmx_uploaded"] = false.into();
        assert_eq!(Unregistered::from_detail(&detail).unwrap().vmx, None);
        // An entry written before files were journalled.
        assert_eq!(
            Unregistered::from_detail(&serde_json::json!({"job": "x", "vm": null})),
            None
        );
    }
}
