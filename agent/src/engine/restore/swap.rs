//! First Class Disks of a restore in place (seed 001 §3.3, §6.2): a PVC disk is an FCD
//! (its `VirtualDisk.vDiskId` is set) backing a CNS volume that a PVC binds. Its data is
//! not written into it: CnsRegisterVolume cannot register an FCD again, and WCP deletes
//! the old, dangling PVC afterwards, which with reclaim policy Delete deletes the volume —
//! the very disk restored. So the restore *swaps* it: one `ReconfigVM_Task` removes the
//! FCD's device without a file operation (the FCD stays on the datastore, untouched) and
//! attaches a new plain disk at the same controller and unit, which the backup's data is
//! written into and which WCP then registers as a new FCD behind a new `restored-*` PVC.
//! The new disk is made beforehand, unattached, beside the FCD and given the backed-up
//! uuid, which WCP matches it by (`CreateVirtualDisk_Task`, `SetVirtualDiskUuid`).
//!
//! The swap is journalled before the new disk is made; until the restore is complete, its
//! clean-up (and, after a crash, reconcile) swaps back: one `ReconfigVM_Task` that removes
//! the new disk, deleting its file, and attaches the FCD again at its controller and unit
//! (in its disk mode) — or, when the new disk was made but never attached, a
//! `DeleteVirtualDisk_Task` of it.

use serde::{Deserialize, Serialize};

use super::{RestoreEvent, RestoreObserver};
use crate::engine::{Environment, error_chain};
use crate::vsphere::{DiskChange, VmMoref};

/// One FCD swapped for a new disk, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FcdSwap {
    /// The FCD's file (`[ds] dir/disk.vmdk`), detached, never written.
    pub fcd_file: String,
    /// The FCD's device key on the VM before the swap.
    pub fcd_key: i32,
    /// Its FCD id (`vDiskId`).
    pub fcd_id: String,
    /// Its capacity, to attach it again.
    pub fcd_capacity_kb: u64,
    /// The new disk's file, created by the swap.
    pub new_file: String,
    /// The controller both sit on.
    pub controller_key: i32,
    /// The unit both use.
    pub unit_number: i32,
    /// The FCD's `diskMode`, to attach it again as it was (journals written before it was
    /// recorded: `persistent`).
    #[serde(default = "persistent")]
    pub fcd_disk_mode: String,
    /// The datacenter's moref id (`datacenter-2`), to delete the new disk while it is not
    /// attached (made, not yet swapped in). Journals written before the new disk was made
    /// unattached have none: theirs was made attached.
    #[serde(default)]
    pub datacenter: Option<String>,
}

fn persistent() -> String {
    "persistent".into()
}

/// The folder of a disk file, as the prefix of a file beside it: `[ds] fcd/x.vmdk` →
/// `[ds] fcd/`, `[ds] x.vmdk` → `[ds] `.
pub(crate) fn folder_of(file: &str) -> &str {
    match file.rfind('/') {
        Some(i) => &file[..=i],
        None => file.find("] ").map_or("", |i| &file[..i + 2]),
    }
}

/// The backup version a journal entry's detail says was being committed (`committing`):
/// the restore's data was written and the backup's ExtraConfig was being set.
pub(crate) fn committing_of(detail: &serde_json::Value) -> Option<u64> {
    detail.get("committing").and_then(serde_json::Value::as_u64)
}

/// The swaps a journal entry's detail lists (`swapped`).
pub(crate) fn swaps_of(detail: &serde_json::Value) -> Vec<FcdSwap> {
    detail
        .get("swapped")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// Swaps back what a failed restore in place swapped (`observer`: the restore's, or none
/// from `reconcile`), judging each swap from the VM's devices as they are now: the new disk
/// may or may not exist, the FCD may or may not be attached. Returns the FCD files attached
/// again, and whether every swap is undone (each FCD attached, no new disk left). When
/// not, the caller keeps the journal entry, and EndAccess waits: WCP must not see the new,
/// half-written disk on the VM.
///
/// `committing`: the backup version whose ExtraConfig the restore was setting once every
/// disk was written. If the VM carries it, the restore is complete: the swaps stay (the
/// new disks hold the restored data, and WCP registers them with that ExtraConfig); taking
/// them back would leave the backup's ExtraConfig over the unrestored FCDs.
///
/// A VM that is gone has nothing to swap back onto: its detached FCDs are named in the log.
pub(crate) async fn swap_back(
    env: &Environment,
    vm: &VmMoref,
    swaps: &[FcdSwap],
    committing: Option<u64>,
    observer: Option<&RestoreObserver>,
) -> (Vec<String>, bool) {
    let mut back = Vec::new();
    // A swap task the restore lost track of (killed, or its reply lost) may still be
    // running: the devices are judged once it has ended.
    if let Err(e) = wait_for_reconfigures(env, vm).await
        && !crate::engine::journal::is_gone(&e)
    {
        tracing::error!(vm = %vm, error = %error_chain(&e), "restore clean-up: a reconfiguration of the VM is still running; its First Class Disks stay swapped until reconcile swaps them back");
        return (back, false);
    }
    let disks = match env.soap.vm_info(vm).await {
        Ok(info) => {
            let on_vm =
                crate::vmservice::decode(&info.extra_config).and_then(|d| d.backup_version_ms);
            if let Some(v) = committing
                && on_vm == Some(v)
            {
                tracing::warn!(vm = %vm, version = v, "restore clean-up: the backup's ExtraConfig is on the VM and every disk was written: the restore is complete, its new disks stay");
                if let Some(observer) = observer {
                    observer(&RestoreEvent::Step {
                        message: format!(
                            "{vm} already carries the backup's ExtraConfig over its written disks: the restored disks stay"
                        ),
                    });
                }
                return (back, true);
            }
            info.disks
        }
        Err(e) if crate::engine::journal::is_gone(&e) => {
            let fcds: Vec<&str> = swaps.iter().map(|s| s.fcd_file.as_str()).collect();
            tracing::error!(vm = %vm, fcds = ?fcds, "restore clean-up: the VM is gone; its First Class Disks stay on the datastore, detached");
            // A new disk made and never attached went with no VM: it goes now.
            let mut complete = true;
            for s in swaps {
                if let Some(dc) = &s.datacenter
                    && !delete_unattached(env, dc, &s.new_file, observer).await
                {
                    complete = false;
                }
            }
            return (back, complete);
        }
        Err(e) => {
            tracing::error!(vm = %vm, error = %error_chain(&e), "restore clean-up: cannot read the VM; its First Class Disks stay swapped until reconcile swaps them back");
            return (back, false);
        }
    };
    let mut complete = true;
    for s in swaps {
        let new = disks.iter().find(|d| d.file_name == s.new_file);
        let fcd_attached = disks.iter().any(|d| d.file_name == s.fcd_file);
        let mut changes = Vec::new();
        if let Some(n) = new {
            changes.push(DiskChange::Remove {
                key: n.key,
                destroy: true,
            });
        }
        if !fcd_attached {
            changes.push(DiskChange::Attach {
                path: &s.fcd_file,
                capacity_kb: s.fcd_capacity_kb,
                controller_key: s.controller_key,
                unit_number: s.unit_number,
                disk_mode: &s.fcd_disk_mode,
            });
        }
        if !changes.is_empty() {
            if let Some(observer) = observer {
                observer(&RestoreEvent::Step {
                    message: format!(
                        "swapping back: deleting the unfinished {} and attaching the First Class Disk {} again",
                        s.new_file, s.fcd_file
                    ),
                });
            }
            match env.soap.reconfigure_disks(vm, &changes).await {
                Ok(()) => {
                    if !fcd_attached {
                        back.push(s.fcd_file.clone());
                    }
                }
                Err(e) => {
                    complete = false;
                    tracing::error!(vm = %vm, fcd = %s.fcd_file, new = %s.new_file, error = %error_chain(&e), "restore clean-up: the First Class Disk stays swapped until reconcile swaps it back");
                    continue;
                }
            }
        }
        // Made but never swapped in: the file is on no VM, and goes on its own.
        if new.is_none()
            && let Some(dc) = &s.datacenter
            && !delete_unattached(env, dc, &s.new_file, observer).await
        {
            complete = false;
        }
    }
    (back, complete)
}

/// Deletes the new disk `file` a swap made and never attached; one that does not exist
/// (the swap stopped before it was made) is fine. Returns whether it is gone.
async fn delete_unattached(
    env: &Environment,
    datacenter: &str,
    file: &str,
    observer: Option<&RestoreObserver>,
) -> bool {
    let dc = crate::vsphere::MoRef::new("Datacenter", datacenter);
    match env.soap.delete_virtual_disk(&dc, file).await {
        Ok(()) => {
            if let Some(observer) = observer {
                observer(&RestoreEvent::Step {
                    message: format!("deleted the unfinished {file}, never attached"),
                });
            }
            true
        }
        Err(e) if e.fault_kind() == Some(crate::vsphere::FaultKind::FileNotFound) => true,
        Err(e) => {
            tracing::error!(file, error = %error_chain(&e), "restore clean-up: the unfinished disk stays until reconcile deletes it");
            false
        }
    }
}

/// Waits (up to 10 minutes) for the `ReconfigVM_Task`s still running on `vm`.
pub(crate) async fn wait_for_reconfigures(
    env: &Environment,
    vm: &VmMoref,
) -> Result<usize, crate::vsphere::VsphereError> {
    env.soap
        .wait_for_vm_tasks(
            vm,
            "ReconfigVM_Task",
            &[".reconfigure", ".reconfigVM"],
            std::time::Duration::from_secs(600),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_disk_is_made_beside_the_first_class_disk() {
        assert_eq!(
            folder_of("[vsanDatastore] fcd/3f2a.vmdk"),
            "[vsanDatastore] fcd/"
        );
        assert_eq!(folder_of("[ds1] x.vmdk"), "[ds1] ");
    }

    #[test]
    fn swaps_round_trip_through_the_journal_detail() {
        let s = FcdSwap {
            fcd_file: "[ds1] vm/disk-1.vmdk".into(),
            fcd_key: 2001,
            fcd_id: "fcd-1".into(),
            fcd_capacity_kb: 6144,
            new_file: "[ds1] vm/restored-aaaa-bbbb-2001.vmdk".into(),
            controller_key: 1000,
            unit_number: 1,
            fcd_disk_mode: "independent_persistent".into(),
            datacenter: Some("datacenter-2".into()),
        };
        let detail = serde_json::json!({"job": "x", "swapped": [s.clone()]});
        assert_eq!(swaps_of(&detail), vec![s.clone()]);
        // A journal written before the disk mode was recorded: persistent.
        let mut old = serde_json::to_value(&s).unwrap();
        old.as_object_mut().unwrap().remove("fcd_disk_mode");
        old.as_object_mut().unwrap().remove("datacenter");
        let read = swaps_of(&serde_json::json!({"swapped": [old]}));
        assert_eq!(read[0].fcd_disk_mode, "persistent");
        assert_eq!(read[0].datacenter, None);
        assert!(swaps_of(&serde_json::json!({"job": "x"})).is_empty());
    }
}
