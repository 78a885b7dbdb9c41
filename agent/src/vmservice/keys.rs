//! The `vmservice.*` ExtraConfig keys VM Operator writes for backup, under both spellings
//! (VSPHERE.md §C.1): the names in VM Operator's code (`pkg/backup/api/backup_types.go`) and
//! the names in its backup/restore guide, which disagree.

use serde::{Deserialize, Serialize};

/// Prefix of every key VM Operator owns; the guide asks vendors to preserve all of them.
pub const VMSERVICE_PREFIX: &str = "vmservice.";

/// Which content a `vmservice.*` ExtraConfig key carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Content {
    /// The VirtualMachine resource YAML (gzip + base64).
    VmYaml,
    /// The bootstrap Secrets/ConfigMaps, YAML documents joined by `"\n---\n"` (gzip + base64).
    AdditionalResources,
    /// JSON list of the PVC-backed disks (gzip + base64).
    PvcDiskData,
    /// JSON list of the classic (non-FCD) disks (gzip + base64).
    ClassicDiskData,
    /// Decimal Unix time in milliseconds of the last backup data write.
    BackupVersion,
    /// Auto-registration opt-in (VCF 9+).
    EnableAutoRegistration,
    /// Auto-registration opt-out (before VCF 9).
    DisableAutoRegistration,
    /// `<namespace>/<name>` of the VirtualMachine.
    NamespacedName,
}

/// Which naming scheme the backup keys of a VM use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySpelling {
    /// The names in VM Operator's code (`vmservice.virtualmachine.…`): what VM Operator writes.
    Code,
    /// The names in VM Operator's guide (`vmservice.vmoperator.vmware.com/…`).
    Guide,
}

const GUIDE_PREFIX: &str = "vmservice.vmoperator.vmware.com/";

impl Content {
    /// Every content, in the order of VSPHERE.md §C.1.
    pub const ALL: [Content; 8] = [
        Content::VmYaml,
        Content::AdditionalResources,
        Content::PvcDiskData,
        Content::ClassicDiskData,
        Content::BackupVersion,
        Content::EnableAutoRegistration,
        Content::DisableAutoRegistration,
        Content::NamespacedName,
    ];

    /// The key as spelled in VM Operator's code.
    #[must_use]
    pub fn code_key(self) -> &'static str {
        match self {
            Content::VmYaml => "vmservice.virtualmachine.resource.yaml",
            Content::AdditionalResources => "vmservice.virtualmachine.additional.resources.yaml",
            Content::PvcDiskData => "vmservice.virtualmachine.pvc.disk.data",
            Content::ClassicDiskData => "vmservice.virtualmachine.classicDiskData",
            Content::BackupVersion => "vmservice.virtualmachine.backupVersion",
            Content::EnableAutoRegistration => {
                "vmservice.virtualmachine.enableAutomaticRegistration"
            }
            Content::DisableAutoRegistration => {
                "vmservice.virtualmachine.disableAutomaticRegistration"
            }
            Content::NamespacedName => "vmservice.namespacedName",
        }
    }

    /// The key as spelled in VM Operator's guide (the same as [`Content::code_key`] for
    /// [`Content::NamespacedName`]).
    #[must_use]
    pub fn guide_key(self) -> &'static str {
        match self {
            Content::VmYaml => "vmservice.vmoperator.vmware.com/vm-resource-yaml",
            Content::AdditionalResources => {
                "vmservice.vmoperator.vmware.com/additional-resources-yaml"
            }
            Content::PvcDiskData => "vmservice.vmoperator.vmware.com/pvc-disk-data",
            Content::ClassicDiskData => "vmservice.vmoperator.vmware.com/classic-disk-data",
            Content::BackupVersion => "vmservice.vmoperator.vmware.com/backup-version",
            Content::EnableAutoRegistration => {
                "vmservice.vmoperator.vmware.com/enable-auto-registration"
            }
            Content::DisableAutoRegistration => {
                "vmservice.vmoperator.vmware.com/disable-auto-registration"
            }
            Content::NamespacedName => "vmservice.namespacedName",
        }
    }

    /// The spelling `key` belongs to, when it is one of this content's keys (a key spelled the
    /// same both ways counts as [`KeySpelling::Code`]).
    #[must_use]
    pub fn spelling_of(self, key: &str) -> Option<KeySpelling> {
        if key == self.code_key() {
            Some(KeySpelling::Code)
        } else if key == self.guide_key() {
            Some(KeySpelling::Guide)
        } else {
            None
        }
    }
}

/// Finds a content's value in an ExtraConfig list (later entries win, as vSphere keeps the
/// last); code spelling first, then guide spelling. Returns the key actually found and its
/// value.
#[must_use]
pub fn lookup(extra: &[(String, String)], c: Content) -> Option<(&str, &str)> {
    last(extra, c.code_key()).or_else(|| last(extra, c.guide_key()))
}

/// The last entry of `key` in an ExtraConfig list (vSphere keeps the last): the key and its
/// value.
pub(crate) fn last<'a>(extra: &'a [(String, String)], key: &str) -> Option<(&'a str, &'a str)> {
    extra
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

/// Every ExtraConfig entry whose key starts with `vmservice.` (to be preserved opaquely), in
/// input order, duplicates included.
#[must_use]
pub fn vmservice_entries(extra: &[(String, String)]) -> Vec<(String, String)> {
    extra
        .iter()
        .filter(|(k, _)| k.starts_with(VMSERVICE_PREFIX))
        .cloned()
        .collect()
}

/// Whether a key is spelled the guide's way (`vmservice.vmoperator.vmware.com/…`).
pub(crate) fn is_guide_spelling(key: &str) -> bool {
    key.starts_with(GUIDE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmservice::fixtures::entries;

    #[test]
    fn keys_are_distinct_and_prefixed() {
        let mut all: Vec<&str> = Content::ALL
            .iter()
            .flat_map(|c| [c.code_key(), c.guide_key()])
            .collect();
        assert!(all.iter().all(|k| k.starts_with(VMSERVICE_PREFIX)));
        all.sort_unstable();
        all.dedup();
        // 8 code keys + 7 distinct guide keys (namespacedName is spelled the same).
        assert_eq!(all.len(), 15);
        for c in Content::ALL {
            assert_eq!(c.spelling_of(c.code_key()), Some(KeySpelling::Code));
            assert_eq!(
                is_guide_spelling(c.guide_key()),
                c != Content::NamespacedName
            );
        }
    }

    #[test]
    fn lookup_prefers_code_spelling_and_the_last_entry() {
        let extra = entries(&[
            ("vmservice.vmoperator.vmware.com/backup-version", "1"),
            ("vmservice.virtualmachine.backupVersion", "2"),
            ("vmservice.virtualmachine.backupVersion", "3"),
            ("vmservice.vmoperator.vmware.com/pvc-disk-data", "a"),
            ("vmservice.vmoperator.vmware.com/pvc-disk-data", "b"),
        ]);
        assert_eq!(
            lookup(&extra, Content::BackupVersion),
            Some(("vmservice.virtualmachine.backupVersion", "3"))
        );
        assert_eq!(
            lookup(&extra, Content::PvcDiskData),
            Some(("vmservice.vmoperator.vmware.com/pvc-disk-data", "b"))
        );
        assert_eq!(lookup(&extra, Content::VmYaml), None);
    }

    #[test]
    fn vmservice_entries_selects_the_prefix_only() {
        let extra = entries(&[
            ("nvram", "x.nvram"),
            ("vmservice.virtualmachine.pause", "True"),
            ("vmservicex", "no"),
            ("vmservice.namespacedName", "ns/vm"),
        ]);
        assert_eq!(
            vmservice_entries(&extra),
            entries(&[
                ("vmservice.virtualmachine.pause", "True"),
                ("vmservice.namespacedName", "ns/vm"),
            ])
        );
    }
}
