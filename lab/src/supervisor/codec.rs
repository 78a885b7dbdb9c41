//! VM Operator's ExtraConfig vocabulary (VSPHERE.md §C.1–C.2): the key names in both
//! spellings, and the gzip + base64 encoding of the payloads.

use std::io::{Read as _, Write as _};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Which spelling of the `vmservice.*` keys VM Operator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeySpelling {
    /// `pkg/backup/api/backup_types.go` (`vmservice.virtualmachine.resource.yaml`, …).
    #[default]
    Code,
    /// `docs/guides/backup-restore` (`vmservice.vmoperator.vmware.com/vm-resource-yaml`, …).
    Guide,
}

/// One backup datum, named in both spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    VmYaml,
    AdditionalResources,
    PvcDiskData,
    ClassicDiskData,
    BackupVersion,
    EnableAutoRegistration,
    DisableAutoRegistration,
}

/// `vmservice.namespacedName` (one spelling).
pub(crate) const NAMESPACED_NAME: &str = "vmservice.namespacedName";

impl Key {
    /// The data keys VM Operator writes on each reconcile.
    pub(crate) const BACKUP: [Self; 5] = [
        Self::VmYaml,
        Self::AdditionalResources,
        Self::PvcDiskData,
        Self::ClassicDiskData,
        Self::BackupVersion,
    ];

    /// The key name in `spelling`.
    pub(crate) fn name(self, spelling: KeySpelling) -> &'static str {
        match (self, spelling) {
            (Self::VmYaml, KeySpelling::Code) => "vmservice.virtualmachine.resource.yaml",
            (Self::VmYaml, KeySpelling::Guide) => {
                "vmservice.vmoperator.vmware.com/vm-resource-yaml"
            }
            (Self::AdditionalResources, KeySpelling::Code) => {
                "vmservice.virtualmachine.additional.resources.yaml"
            }
            (Self::AdditionalResources, KeySpelling::Guide) => {
                "vmservice.vmoperator.vmware.com/additional-resources-yaml"
            }
            (Self::PvcDiskData, KeySpelling::Code) => "vmservice.virtualmachine.pvc.disk.data",
            (Self::PvcDiskData, KeySpelling::Guide) => {
                "vmservice.vmoperator.vmware.com/pvc-disk-data"
            }
            (Self::ClassicDiskData, KeySpelling::Code) => {
                "vmservice.virtualmachine.classicDiskData"
            }
            (Self::ClassicDiskData, KeySpelling::Guide) => {
                "vmservice.vmoperator.vmware.com/classic-disk-data"
            }
            (Self::BackupVersion, KeySpelling::Code) => "vmservice.virtualmachine.backupVersion",
            (Self::BackupVersion, KeySpelling::Guide) => {
                "vmservice.vmoperator.vmware.com/backup-version"
            }
            (Self::EnableAutoRegistration, KeySpelling::Code) => {
                "vmservice.virtualmachine.enableAutomaticRegistration"
            }
            (Self::EnableAutoRegistration, KeySpelling::Guide) => {
                "vmservice.vmoperator.vmware.com/enable-auto-registration"
            }
            (Self::DisableAutoRegistration, KeySpelling::Code) => {
                "vmservice.virtualmachine.disableAutomaticRegistration"
            }
            (Self::DisableAutoRegistration, KeySpelling::Guide) => {
                "vmservice.vmoperator.vmware.com/disable-auto-registration"
            }
        }
    }

    /// The value under either spelling (`preferred` first).
    pub(crate) fn get(self, ec: &[(String, String)], preferred: KeySpelling) -> Option<&str> {
        let other = match preferred {
            KeySpelling::Code => KeySpelling::Guide,
            KeySpelling::Guide => KeySpelling::Code,
        };
        [preferred, other].into_iter().find_map(|s| {
            ec.iter()
                .find(|(k, v)| k == self.name(s) && !v.is_empty())
                .map(|(_, v)| v.as_str())
        })
    }
}

/// Go `compress/gzip` + `base64.StdEncoding` (VSPHERE.md §C.2).
pub(crate) fn encode(text: &str) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes())
        .expect("writing into a Vec cannot fail");
    let bytes = gz.finish().expect("writing into a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// VM Operator's `TryToDecodeBase64Gzip`, strict: base64 then gzip then UTF-8; `None`
/// when any layer is missing (the lab's WCP treats that as corrupt data).
pub(crate) fn decode(value: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    if raw.get(..2) != Some(&[0x1f, 0x8b]) {
        return None;
    }
    let mut out = String::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_string(&mut out)
        .ok()?;
    Some(out)
}

/// A JSON value as YAML (keys sorted, as `sigs.k8s.io/yaml` writes them).
pub(crate) fn to_yaml(v: &serde_json::Value) -> String {
    serde_norway::to_string(v).unwrap_or_default()
}

/// A YAML document as JSON; `None` unless it is a mapping.
pub(crate) fn from_yaml(text: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_norway::from_str(text).ok()?;
    v.is_object().then_some(v)
}

/// Several YAML documents joined by `\n---\n` (VSPHERE.md §C.2).
pub(crate) fn from_yaml_documents(text: &str) -> Option<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for doc in text.split("\n---\n") {
        if doc.trim().is_empty() {
            continue;
        }
        out.push(from_yaml(doc)?);
    }
    Some(out)
}

/// Boolean strings as VM Operator parses the opt-in key (`1,on,t,true,y,yes`, any case).
pub(crate) fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "on" | "t" | "true" | "y" | "yes"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../agent/tests/fixtures/vmservice"
    );

    #[test]
    fn round_trip_and_strictness() {
        let text = "a: 1\n";
        assert_eq!(decode(&encode(text)).as_deref(), Some(text));
        assert!(decode("not base64 *").is_none());
        assert!(decode(&base64::engine::general_purpose::STANDARD.encode("a: 1")).is_none());
        assert!(from_yaml("- a\n").is_none());
        assert!(truthy("TRUE") && truthy("yes") && !truthy("false"));
    }

    #[test]
    fn decodes_the_shared_fixtures_in_both_spellings() {
        let code = std::fs::read(format!("{FIXTURES}/web-1/extraconfig.code.json")).unwrap();
        let guide = std::fs::read(format!("{FIXTURES}/web-1/extraconfig.guide.json")).unwrap();
        for (bytes, spelling) in [(code, KeySpelling::Code), (guide, KeySpelling::Guide)] {
            let map: std::collections::BTreeMap<String, String> =
                serde_json::from_slice(&bytes).unwrap();
            let ec: Vec<(String, String)> = map.into_iter().collect();
            let yaml = decode(Key::VmYaml.get(&ec, spelling).unwrap()).unwrap();
            let vm = from_yaml(&yaml).unwrap();
            assert_eq!(vm["metadata"]["name"], "web-1");
            let pvc = decode(Key::PvcDiskData.get(&ec, KeySpelling::Code).unwrap()).unwrap();
            assert!(pvc.starts_with("[{\"FileName\""));
        }
    }
}
