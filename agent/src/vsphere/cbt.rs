//! Changed Block Tracking (VSPHERE.md §A.7): the enable procedure (reconfigure, then a
//! snapshot create/remove stun cycle) and `QueryChangedDiskAreas` with its `startOffset`
//! loop until the disk is covered.

use std::future::Future;

use super::snapshot::CreateSnapshot;
use super::soap::{SoapClient, VsphereError};
use super::types::{ChangeId, DiskKey, SnapshotMoref, VmMoref};
use super::vm_lifecycle::VmConfigSpec;
use super::xml::{Element, XmlError, XmlWriter};

/// Name of the snapshot taken to make a running VM pick up a CBT change.
pub const CBT_CYCLE_SNAPSHOT: &str = "vadp-agent-cbt-enable";

impl SoapClient {
    /// Turns CBT on: `ReconfigVM_Task(changeTrackingEnabled=true)`, then a snapshot
    /// create/remove cycle so a powered-on VM picks it up, then re-reads the flag.
    /// Returns whether CBT was already on (nothing done). The cycle's snapshot
    /// ([`CBT_CYCLE_SNAPSHOT`]) carries `description`, so that a caller can find and remove
    /// it if this fails between its create and its remove; `created` is called in between.
    ///
    /// # Errors
    ///
    /// The reconfigure's or snapshot's faults; [`VsphereError::Malformed`] when the flag
    /// is still off afterwards (e.g. hardware version < 7).
    pub async fn enable_cbt(
        &self,
        vm: &VmMoref,
        description: &str,
        created: impl FnOnce(&SnapshotMoref),
    ) -> Result<bool, VsphereError> {
        if self.vm_info(vm).await?.change_tracking_enabled {
            return Ok(true);
        }
        let spec = VmConfigSpec {
            change_tracking_enabled: Some(true),
            ..VmConfigSpec::default()
        };
        self.reconfigure_vm(vm, &spec).await?;
        let request = CreateSnapshot::backup(CBT_CYCLE_SNAPSHOT, description);
        let snapshot = self.create_snapshot(vm, &request, |_| {}).await?;
        created(&snapshot);
        self.remove_snapshot(&snapshot, true, |_| {}).await?;
        if self.vm_info(vm).await?.change_tracking_enabled {
            Ok(false)
        } else {
            Err(VsphereError::Malformed {
                method: "ReconfigVM_Task",
                reason: format!("changeTrackingEnabled still false on {vm} after enabling"),
            })
        }
    }

    /// One `QueryChangedDiskAreas` call at `start_offset_bytes`.
    ///
    /// # Errors
    ///
    /// `FileFault` (change id from before CBT was enabled or reset), `NotFound` (wrong
    /// disk key or snapshot), `InvalidArgument`.
    pub async fn query_changed_disk_areas_once(
        &self,
        vm: &VmMoref,
        snapshot: Option<&SnapshotMoref>,
        disk: DiskKey,
        start_offset_bytes: u64,
        change_id: &ChangeId,
    ) -> Result<DiskChangeInfo, VsphereError> {
        const METHOD: &str = "QueryChangedDiskAreas";
        let mut w = XmlWriter::new();
        if let Some(snapshot) = snapshot {
            w.moref("snapshot", &snapshot.moref());
        }
        w.value("deviceKey", disk.0)
            .value("startOffset", start_offset_bytes)
            .text("changeId", &change_id.0);
        let response = self.invoke(METHOD, &vm.moref(), &w.finish()).await?;
        let info = response
            .child("returnval")
            .ok_or_else(|| VsphereError::Malformed {
                method: METHOD,
                reason: "no returnval".into(),
            })?;
        DiskChangeInfo::from_xml(info).map_err(|source| VsphereError::Xml {
            method: METHOD,
            source,
        })
    }

    /// All changed areas of `disk` since `change_id` (`"*"`: all in-use areas), looping
    /// on `startOffset` until `capacity_bytes` is covered.
    ///
    /// # Errors
    ///
    /// As [`SoapClient::query_changed_disk_areas_once`]; [`VsphereError::CbtNoProgress`]
    /// if the server stops advancing.
    pub async fn query_changed_disk_areas(
        &self,
        vm: &VmMoref,
        snapshot: Option<&SnapshotMoref>,
        disk: DiskKey,
        capacity_bytes: u64,
        change_id: &ChangeId,
    ) -> Result<Vec<ChangedArea>, VsphereError> {
        collect_changed_areas(vm, disk, capacity_bytes, |offset| {
            self.query_changed_disk_areas_once(vm, snapshot, disk, offset, change_id)
        })
        .await
    }
}

/// The `startOffset` loop: calls `query(offset)` from 0, collecting areas, continuing at
/// `reply.startOffset + reply.length` until `capacity_bytes`; a reply that does not
/// advance, or that starts after the offset asked for (leaving a gap), is an error rather
/// than an endless loop or missed changes.
///
/// # Errors
///
/// `query`'s errors; [`VsphereError::CbtNoProgress`].
pub async fn collect_changed_areas<F, Fut>(
    vm: &VmMoref,
    disk: DiskKey,
    capacity_bytes: u64,
    mut query: F,
) -> Result<Vec<ChangedArea>, VsphereError>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<DiskChangeInfo, VsphereError>>,
{
    let mut areas = Vec::new();
    let mut offset = 0;
    while offset < capacity_bytes {
        let reply = query(offset).await?;
        let next = reply.start_offset_bytes.saturating_add(reply.length_bytes);
        // A reply that starts after the offset asked for would leave the bytes in between
        // unqueried: changes there would be missed. A reply that ends where it began, or
        // before the offset, would never get anywhere.
        if next <= offset || reply.start_offset_bytes > offset {
            return Err(VsphereError::CbtNoProgress {
                vm: vm.clone(),
                disk,
                offset_bytes: offset,
            });
        }
        areas.extend(reply.changed_areas);
        offset = next;
    }
    Ok(areas)
}

/// `DiskChangeInfo`: the range this reply covers and the changed extents in it (bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskChangeInfo {
    /// Start of the covered range.
    pub start_offset_bytes: u64,
    /// Length of the covered range.
    pub length_bytes: u64,
    /// Changed extents.
    pub changed_areas: Vec<ChangedArea>,
}

/// One changed extent (`DiskChangeExtent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangedArea {
    /// Start in bytes.
    pub start_bytes: u64,
    /// Length in bytes.
    pub length_bytes: u64,
}

impl DiskChangeInfo {
    pub(super) fn from_xml(e: &Element) -> Result<Self, XmlError> {
        let required = |e: &Element, name: &str| -> Result<u64, XmlError> {
            e.child_parse::<u64>(name)?.ok_or_else(|| XmlError::Value {
                element: name.to_owned(),
                value: "missing".into(),
            })
        };
        Ok(Self {
            start_offset_bytes: required(e, "startOffset")?,
            length_bytes: required(e, "length")?,
            changed_areas: e
                .children_named("changedArea")
                .map(|a| {
                    Ok(ChangedArea {
                        start_bytes: required(a, "start")?,
                        length_bytes: required(a, "length")?,
                    })
                })
                .collect::<Result<_, XmlError>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(start: u64, len: u64, areas: &[(u64, u64)]) -> DiskChangeInfo {
        DiskChangeInfo {
            start_offset_bytes: start,
            length_bytes: len,
            changed_areas: areas
                .iter()
                .map(|&(s, l)| ChangedArea {
                    start_bytes: s,
                    length_bytes: l,
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn loop_covers_the_disk_in_pieces() {
        let vm = VmMoref::from("vm-1");
        let mut calls = Vec::new();
        let areas = collect_changed_areas(&vm, DiskKey(2000), 300, |offset| {
            calls.push(offset);
            async move { Ok(reply(offset, 100, &[(offset + 10, 5)])) }
        })
        .await
        .unwrap();
        assert_eq!(calls, [0, 100, 200]);
        assert_eq!(areas.len(), 3);
    }

    #[tokio::test]
    async fn length_zero_is_an_error_not_a_hang() {
        let vm = VmMoref::from("vm-1");
        let err = collect_changed_areas(&vm, DiskKey(2000), 300, |offset| async move {
            Ok(reply(offset, if offset == 0 { 100 } else { 0 }, &[]))
        })
        .await
        .unwrap_err();
        assert!(matches!(
            err,
            VsphereError::CbtNoProgress {
                offset_bytes: 100,
                ..
            }
        ));
    }

    /// A reply for a range that starts after the offset asked for would leave a gap whose
    /// changes nobody queried: an error. One that starts before it is fine.
    #[tokio::test]
    async fn a_reply_that_skips_part_of_the_disk_is_an_error() {
        let vm = VmMoref::from("vm-1");
        let err = collect_changed_areas(&vm, DiskKey(2000), 300, |offset| async move {
            let start = if offset == 100 { 150 } else { offset };
            Ok(reply(start, 100, &[]))
        })
        .await
        .unwrap_err();
        assert!(matches!(
            err,
            VsphereError::CbtNoProgress {
                offset_bytes: 100,
                ..
            }
        ));
        let areas = collect_changed_areas(&vm, DiskKey(2000), 300, |offset| async move {
            let start = offset.saturating_sub(50);
            Ok(reply(start, 150, &[(start, 10)]))
        })
        .await
        .unwrap();
        assert_eq!(areas.len(), 3);
    }

    #[test]
    fn parses_disk_change_info() {
        let doc = b"<returnval><startOffset>0</startOffset><length>1048576</length><changedArea><start>0</start><length>65536</length></changedArea></returnval>";
        let info = DiskChangeInfo::from_xml(&Element::parse(doc).unwrap()).unwrap();
        assert_eq!(info, reply(0, 1 << 20, &[(0, 65536)]));
        assert!(
            DiskChangeInfo::from_xml(&Element::parse(b"<r><length>-1</length></r>").unwrap())
                .is_err()
        );
    }
}
