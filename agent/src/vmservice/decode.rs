//! Decoding a VM's `vmservice.*` backup keys into [`VmServiceData`], collecting every defect
//! of the ExtraConfig on its own (the checks that need the VM's folder and disks live in
//! `validate`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::keys::{self, Content, KeySpelling};
use super::payload::{DecodeError, decode_gzip_base64};

/// VM Operator API versions WCP can restore (seed 001 §7.1.2), under group
/// `vmoperator.vmware.com`.
pub const SUPPORTED_API_VERSIONS: &[&str] = &["v1alpha2", "v1alpha3", "v1alpha4", "v1alpha5"];

/// The API group of a VirtualMachine.
const API_GROUP: &str = "vmoperator.vmware.com";

/// WCP's error when the VM YAML is missing (seed 001 §7.1.3).
pub(crate) const WCP_VALIDATE_FAILED: &str = "VCenterWcpWorkloadRegisterVMValidateVMResourceFailed";
/// WCP's error for an unsupported VM YAML API version (seed 001 §7.1.2).
const WCP_CONVERT_FAILED: &str = "VCenterWcpWorkloadRegisterVMConvertUnstructuredToVMTypeFailed";

/// Smallest plausible backup version: 10^11 ms is March 1973, while 10^11 *seconds* is far in
/// the future, so anything below is a timestamp in seconds (or garbage).
const MIN_BACKUP_VERSION_MS: u64 = 100_000_000_000;

/// One PVC-backed disk, as VM Operator's `PVCDiskData` (Go field names, no JSON tags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvcDiskData {
    /// The disk's `backing.fileName` (`[datastore] dir/file.vmdk`).
    #[serde(rename = "FileName", default)]
    pub file_name: String,
    /// The PersistentVolumeClaim the disk backs.
    #[serde(rename = "PVCName", default)]
    pub pvc_name: String,
    /// The PVC's access modes (`ReadWriteOnce`, …); Go writes `null` for none.
    #[serde(rename = "AccessModes", default, deserialize_with = "null_as_empty")]
    pub access_modes: Vec<String>,
    /// The disk's `backing.uuid`.
    #[serde(rename = "UUID", default)]
    pub uuid: String,
}

/// One classic (non-FCD) disk, as VM Operator's `ClassicDiskData`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassicDiskData {
    /// The disk's `backing.fileName`.
    #[serde(rename = "FileName", default)]
    pub file_name: String,
    /// The disk's `backing.uuid`.
    #[serde(rename = "UUID", default)]
    pub uuid: String,
}

/// One defect, naming the ExtraConfig key it concerns (the key as found, or the code spelling
/// when missing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The ExtraConfig key.
    pub key: String,
    /// What is wrong, lowercase, and what WCP would do about it where known.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExtraConfig key {}: {}", self.key, self.reason)
    }
}

/// Everything decoded from a VM's ExtraConfig.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmServiceData {
    /// How the backup keys are spelled: [`KeySpelling::Guide`] when every backup key found
    /// (other than `vmservice.namespacedName`, spelled the same both ways) uses the guide's
    /// names, else [`KeySpelling::Code`].
    pub spelling: KeySpelling,
    /// Namespace, from `vmservice.namespacedName` (`<ns>/<name>`).
    pub namespace: Option<String>,
    /// VM name, from `vmservice.namespacedName`.
    pub name: Option<String>,
    /// The VM YAML's `apiVersion`, e.g. `vmoperator.vmware.com/v1alpha3`.
    pub api_version: Option<String>,
    /// The VM YAML, parsed as a generic value (not serialized: it can be large, and the raw
    /// ExtraConfig is kept anyway).
    #[serde(skip)]
    pub vm_yaml: Option<Value>,
    /// The PVC-backed disks (empty when the key is absent or undecodable).
    pub pvc_disks: Vec<PvcDiskData>,
    /// The classic disks (empty when the key is absent or undecodable).
    pub classic_disks: Vec<ClassicDiskData>,
    /// The backup version, Unix time in milliseconds.
    pub backup_version_ms: Option<u64>,
    /// The bootstrap Secrets and ConfigMaps the additional-resources key holds, by kind and
    /// name only (their data is never kept): registration recreates them (§6.1 step 3).
    #[serde(default)]
    pub bootstrap_resources: Vec<BootstrapResource>,
    /// The VCF 9+ opt-in key, when present: true for `1`, `on`, `t`, `true`, `y`, `yes` (any
    /// case, surrounding blanks ignored).
    pub auto_registration_opt_in: Option<bool>,
    /// The pre-VCF 9 opt-out key, when present: true for `true` (any case).
    pub auto_registration_opt_out: Option<bool>,
    /// Every defect found while decoding (decoding never stops at the first).
    pub problems: Vec<Problem>,
}

/// A bootstrap Secret or ConfigMap of the additional-resources key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapResource {
    /// `Secret` or `ConfigMap`.
    pub kind: String,
    /// Its `metadata.name`.
    pub name: String,
}

/// How far a payload key got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayloadState {
    /// The key is absent (or empty, which vSphere treats as removed).
    Absent,
    /// The key is present but its value could not be decoded.
    Bad,
    /// The key decoded.
    Good,
}

/// [`VmServiceData`] plus what validation needs to avoid cascading problems.
#[derive(Debug)]
pub(crate) struct Decoded {
    /// The decoded data.
    pub data: VmServiceData,
    /// The state of the PVC disk-data key.
    pub pvc_state: PayloadState,
}

/// Decodes every `vmservice.*` backup key of a VM, recording each defect in
/// [`VmServiceData::problems`].
///
/// Returns `None` when the VM has no backup key at all (not a VM Service VM, or a VM
/// Operator that records no backup data). A key with an empty value counts as absent:
/// vSphere removes a key set to empty, and VM Operator writes empty to mean "none".
#[must_use]
pub fn decode(extra: &[(String, String)]) -> Option<VmServiceData> {
    decode_detailed(extra).map(|d| d.data)
}

/// A content's key and value when present with a non-empty value: the code spelling's,
/// else the guide spelling's (an empty code-spelled key does not hide a guide-spelled one).
pub(crate) fn present(extra: &[(String, String)], c: Content) -> Option<(&str, &str)> {
    filled(extra, c.code_key()).or_else(|| filled(extra, c.guide_key()))
}

/// The last entry of `key` when its value is not empty.
fn filled<'a>(extra: &'a [(String, String)], key: &str) -> Option<(&'a str, &'a str)> {
    keys::last(extra, key).filter(|(_, v)| !v.is_empty())
}

/// Both spellings of a content present, non-empty, and saying different things: which one
/// WCP reads is not known, so it is reported (the code spelling's is the one used here).
fn check_twins(extra: &[(String, String)], p: &mut Problems) {
    for c in Content::ALL {
        if c.code_key() == c.guide_key() {
            continue;
        }
        let (Some((_, code)), Some((_, guide))) =
            (filled(extra, c.code_key()), filled(extra, c.guide_key()))
        else {
            continue;
        };
        // Payloads compare by content: two gzip streams of one text may differ in bytes.
        let same = code.trim() == guide.trim()
            || matches!(
                (decode_gzip_base64(code), decode_gzip_base64(guide)),
                (Ok(a), Ok(b)) if a == b
            );
        if !same {
            p.push(
                c.code_key(),
                format!(
                    "differs from {}; WCP may read either (this one is used)",
                    c.guide_key()
                ),
            );
        }
    }
}

/// The key to name in a problem about `c`: the key whose value is used ([`present`]: an
/// empty code-spelled key does not hide a filled guide-spelled one), else the key found,
/// else the code spelling.
pub(crate) fn key_for(extra: &[(String, String)], c: Content) -> String {
    present(extra, c)
        .or_else(|| keys::lookup(extra, c))
        .map_or_else(|| c.code_key().to_owned(), |(k, _)| k.to_owned())
}

pub(crate) fn decode_detailed(extra: &[(String, String)]) -> Option<Decoded> {
    let found: Vec<(Content, &str)> = Content::ALL
        .iter()
        .filter_map(|&c| present(extra, c).map(|(k, _)| (c, k)))
        .collect();
    if found.is_empty() {
        return None;
    }
    let spelled: Vec<&str> = found
        .iter()
        .filter(|(c, _)| *c != Content::NamespacedName)
        .map(|(_, k)| *k)
        .collect();
    let spelling = if !spelled.is_empty() && spelled.iter().all(|k| keys::is_guide_spelling(k)) {
        KeySpelling::Guide
    } else {
        KeySpelling::Code
    };

    let mut p = Problems::default();
    let vm_yaml = decode_vm_yaml(extra, &mut p);
    let api_version = vm_yaml
        .as_ref()
        .and_then(|y| y.get("apiVersion"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let bootstrap_resources = check_additional_resources(extra, &mut p);
    check_twins(extra, &mut p);
    let (pvc_disks, pvc_state) = decode_pvc_disks(extra, vm_yaml.as_ref(), &mut p);
    let classic_disks =
        decode_json_list::<ClassicDiskData>(extra, Content::ClassicDiskData, &mut p)
            .0
            .unwrap_or_default();
    let backup_version_ms = decode_backup_version(extra, &mut p);
    let (namespace, name) = decode_namespaced_name(extra, vm_yaml.as_ref(), &mut p);

    let auto_registration_opt_in = present(extra, Content::EnableAutoRegistration).map(|(_, v)| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "on" | "t" | "true" | "y" | "yes"
        )
    });
    let auto_registration_opt_out = present(extra, Content::DisableAutoRegistration)
        .map(|(_, v)| v.trim().eq_ignore_ascii_case("true"));

    Some(Decoded {
        data: VmServiceData {
            spelling,
            namespace,
            name,
            api_version,
            vm_yaml,
            pvc_disks,
            classic_disks,
            backup_version_ms,
            bootstrap_resources,
            auto_registration_opt_in,
            auto_registration_opt_out,
            problems: p.0,
        },
        pvc_state,
    })
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, key: &str, reason: impl Into<String>) {
        self.0.push(Problem {
            key: key.to_owned(),
            reason: reason.into(),
        });
    }
}

/// A decoding error with its cause, e.g. `not base64: Invalid symbol 32, offset 56.`.
fn layer_reason(e: &DecodeError) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "sequence",
        Value::Object(_) => "mapping",
    }
}

fn decode_vm_yaml(extra: &[(String, String)], p: &mut Problems) -> Option<Value> {
    let Some((key, value)) = present(extra, Content::VmYaml) else {
        p.push(
            &key_for(extra, Content::VmYaml),
            format!("missing; WCP would refuse with {WCP_VALIDATE_FAILED}"),
        );
        return None;
    };
    let text = match decode_gzip_base64(value) {
        Ok(text) => text,
        Err(e) => {
            p.push(key, layer_reason(&e));
            return None;
        }
    };
    let yaml: Value = match BoundedValue::new().parse(serde_norway::Deserializer::from_str(&text)) {
        Ok(yaml) => yaml,
        Err(e) => {
            p.push(key, yaml_error(&e));
            return None;
        }
    };
    if !yaml.is_object() {
        p.push(
            key,
            format!(
                "gzip content is YAML but not a mapping (a {})",
                value_kind(&yaml)
            ),
        );
        return None;
    }
    let supported = || {
        let list: Vec<String> = SUPPORTED_API_VERSIONS
            .iter()
            .map(|v| format!("{API_GROUP}/{v}"))
            .collect();
        list.join(", ")
    };
    match yaml.get("apiVersion").and_then(Value::as_str) {
        None => p.push(
            key,
            format!(
                "VM YAML has no apiVersion; WCP would refuse with {WCP_CONVERT_FAILED} \
                 (supported: {})",
                supported()
            ),
        ),
        Some(av) => {
            let ok = av.split_once('/').is_some_and(|(group, version)| {
                group == API_GROUP && SUPPORTED_API_VERSIONS.contains(&version)
            });
            if !ok {
                p.push(
                    key,
                    format!(
                        "VM YAML apiVersion {av} cannot be restored; WCP would refuse with \
                         {WCP_CONVERT_FAILED} (supported: {})",
                        supported()
                    ),
                );
            }
        }
    }
    if let Some(kind) = yaml.get("kind")
        && kind.as_str() != Some("VirtualMachine")
    {
        p.push(key, format!("VM YAML kind is {kind}, not VirtualMachine"));
    }
    Some(yaml)
}

/// The PVC names a VM YAML claims (`spec.volumes[].persistentVolumeClaim.claimName`).
pub(crate) fn claimed_pvcs(vm_yaml: &Value) -> Vec<&str> {
    vm_yaml
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .map(|volumes| {
            volumes
                .iter()
                .filter_map(|v| v.pointer("/persistentVolumeClaim/claimName"))
                .filter_map(Value::as_str)
                .collect()
        })
        .unwrap_or_default()
}

/// Checks the additional-resources key and returns the Secrets and ConfigMaps it holds.
fn check_additional_resources(
    extra: &[(String, String)],
    p: &mut Problems,
) -> Vec<BootstrapResource> {
    let mut found = Vec::new();
    let Some((key, value)) = present(extra, Content::AdditionalResources) else {
        return found;
    };
    let text = match decode_gzip_base64(value) {
        Ok(text) => text,
        Err(e) => {
            p.push(key, layer_reason(&e));
            return found;
        }
    };
    // Objects are joined by "\n---\n" (VSPHERE.md §C.2): one YAML stream of documents.
    let budget = BoundedValue::new();
    for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
        match budget.parse(doc) {
            Ok(Value::Object(o)) => {
                let kind = o.get("kind").and_then(Value::as_str);
                let name = o
                    .get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str);
                if let (Some(kind @ ("Secret" | "ConfigMap")), Some(name)) = (kind, name) {
                    found.push(BootstrapResource {
                        kind: kind.to_owned(),
                        name: name.to_owned(),
                    });
                }
            }
            Ok(Value::Null) => {}
            Ok(other) => p.push(
                key,
                format!(
                    "gzip content document {} is YAML but not a mapping (a {})",
                    i + 1,
                    value_kind(&other)
                ),
            ),
            Err(e) => {
                p.push(key, yaml_error(&e));
                return found;
            }
        }
    }
    found
}

/// Decodes a gzip + base64 JSON list (Go writes `null` for an empty slice).
fn decode_json_list<T: for<'de> Deserialize<'de>>(
    extra: &[(String, String)],
    c: Content,
    p: &mut Problems,
) -> (Option<Vec<T>>, PayloadState) {
    let Some((key, value)) = present(extra, c) else {
        return (None, PayloadState::Absent);
    };
    let text = match decode_gzip_base64(value) {
        Ok(text) => text,
        Err(e) => {
            p.push(key, layer_reason(&e));
            return (None, PayloadState::Bad);
        }
    };
    match serde_json::from_str::<Option<Vec<T>>>(&text) {
        Ok(list) => (Some(list.unwrap_or_default()), PayloadState::Good),
        Err(e) => {
            p.push(
                key,
                format!("gzip content is not a JSON disk-data list: {e}"),
            );
            (None, PayloadState::Bad)
        }
    }
}

fn decode_pvc_disks(
    extra: &[(String, String)],
    vm_yaml: Option<&Value>,
    p: &mut Problems,
) -> (Vec<PvcDiskData>, PayloadState) {
    let (list, state) = decode_json_list::<PvcDiskData>(extra, Content::PvcDiskData, p);
    let list = list.unwrap_or_default();
    let Some(yaml) = vm_yaml else {
        return (list, state);
    };
    let claims = claimed_pvcs(yaml);
    let key = key_for(extra, Content::PvcDiskData);
    if state == PayloadState::Absent && !claims.is_empty() {
        p.push(
            &key,
            format!(
                "missing, but the VM YAML claims PVCs {}; WCP would refuse with \
                 {WCP_VALIDATE_FAILED}",
                claims.join(", ")
            ),
        );
    }
    for entry in &list {
        if !claims.contains(&entry.pvc_name.as_str()) {
            let claimed = if claims.is_empty() {
                "none".to_owned()
            } else {
                claims.join(", ")
            };
            p.push(
                &key,
                format!(
                    "lists PVC {:?} ({}), which no volume of the VM YAML claims \
                     (spec.volumes[].persistentVolumeClaim.claimName: {claimed})",
                    entry.pvc_name, entry.file_name
                ),
            );
        }
    }
    (list, state)
}

fn decode_backup_version(extra: &[(String, String)], p: &mut Problems) -> Option<u64> {
    let (key, value) = present(extra, Content::BackupVersion)?;
    let parsed = if value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().ok()
    } else {
        None
    };
    match parsed {
        None => {
            p.push(
                key,
                format!("{value:?} is not a decimal Unix time in milliseconds"),
            );
            None
        }
        Some(ms) if ms < MIN_BACKUP_VERSION_MS => {
            p.push(
                key,
                format!("{value:?} is too small for a Unix time in milliseconds (seconds?)"),
            );
            Some(ms)
        }
        Some(ms) => Some(ms),
    }
}

fn decode_namespaced_name(
    extra: &[(String, String)],
    vm_yaml: Option<&Value>,
    p: &mut Problems,
) -> (Option<String>, Option<String>) {
    let Some((key, value)) = present(extra, Content::NamespacedName) else {
        p.push(
            &key_for(extra, Content::NamespacedName),
            "missing; seed 001 §5.3 requires <namespace>/<vmname>",
        );
        return (None, None);
    };
    let Some((ns, name)) = value
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
    else {
        p.push(key, format!("{value:?} is not <namespace>/<name>"));
        return (None, None);
    };
    let meta = |field: &str| {
        vm_yaml
            .and_then(|y| y.get("metadata"))
            .and_then(|m| m.get(field))
            .and_then(Value::as_str)
    };
    if let Some(yaml_name) = meta("name")
        && yaml_name != name
    {
        p.push(
            key,
            format!("names VM {name} but the VM YAML's metadata.name is {yaml_name}"),
        );
    }
    if let Some(yaml_ns) = meta("namespace")
        && yaml_ns != ns
    {
        p.push(
            key,
            format!("names namespace {ns} but the VM YAML's metadata.namespace is {yaml_ns}"),
        );
    }
    (Some(ns.to_owned()), Some(name.to_owned()))
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// The most YAML nodes one ExtraConfig payload may expand to. The payload's text is
/// capped (1 MiB), but anchors and aliases multiply it: `b: [*a, *a, …]` over a long `&a`
/// list would build billions of values from a kilobyte of gzip. VM Operator writes no
/// aliases; a VM's YAML has hundreds of nodes, a namespace's bootstrap resources thousands.
const MAX_YAML_NODES: usize = 1 << 18;

/// Marks the error [`BoundedValue`] raises, so that [`yaml_error`] keeps its text.
const TOO_MANY_NODES: &str = "expands to more than";

/// A [`Value`] deserialized with a budget of nodes shared by every document parsed with it.
struct BoundedValue(std::cell::Cell<usize>);

impl BoundedValue {
    fn new() -> Self {
        Self(std::cell::Cell::new(MAX_YAML_NODES))
    }

    fn parse<'de, D: Deserializer<'de>>(&self, d: D) -> Result<Value, D::Error> {
        serde::de::DeserializeSeed::deserialize(Node(&self.0), d)
    }
}

/// One node of a [`BoundedValue`].
#[derive(Clone, Copy)]
struct Node<'a>(&'a std::cell::Cell<usize>);

impl Node<'_> {
    fn take<E: serde::de::Error>(self) -> Result<(), E> {
        match self.0.get() {
            0 => Err(E::custom(format_args!(
                "the YAML {TOO_MANY_NODES} {MAX_YAML_NODES} nodes (anchors and aliases \
                 repeating it?)"
            ))),
            n => {
                self.0.set(n - 1);
                Ok(())
            }
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.take()?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.take()?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        self.take()?;
        Ok(Value::String(v))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Null)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut object = serde_json::Map::new();
        while let Some(k) = map.next_key::<String>()? {
            self.take()?;
            let v = map.next_value_seed(self)?;
            object.insert(k, v);
        }
        Ok(Value::Object(object))
    }
}

/// A YAML error as a problem's reason: where it is, not what the parser quotes (a bad
/// scalar's text, which in a bootstrap Secret is a secret).
fn yaml_error(e: &serde_norway::Error) -> String {
    let text = e.to_string();
    if text.contains(TOO_MANY_NODES) {
        return format!("gzip content is not usable YAML: {text}");
    }
    match e.location() {
        Some(at) => format!(
            "gzip content is not YAML (line {}, column {})",
            at.line(),
            at.column()
        ),
        None => "gzip content is not YAML".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmservice::fixtures;
    use crate::vmservice::fixtures::entries;
    use crate::vmservice::payload::encode_gzip_base64;

    fn set(extra: &mut Vec<(String, String)>, c: Content, value: &str) {
        extra.retain(|(k, _)| k != c.code_key() && k != c.guide_key());
        extra.push((c.code_key().to_owned(), value.to_owned()));
    }

    fn remove(extra: &mut Vec<(String, String)>, c: Content) {
        extra.retain(|(k, _)| k != c.code_key() && k != c.guide_key());
    }

    fn web1() -> Vec<(String, String)> {
        fixtures::extra_config("web-1/extraconfig.code.json")
    }

    fn yaml_with(vm_yaml: &str) -> Vec<(String, String)> {
        let mut extra = web1();
        set(&mut extra, Content::VmYaml, &encode_gzip_base64(vm_yaml));
        extra
    }

    fn only_problem(data: &VmServiceData) -> &Problem {
        assert_eq!(data.problems.len(), 1, "{:#?}", data.problems);
        &data.problems[0]
    }

    #[test]
    fn web1_decodes_under_both_spellings() {
        let pvc: Vec<PvcDiskData> =
            serde_json::from_str(&fixtures::text("web-1/pvc-disk-data.json")).unwrap();
        let classic: Vec<ClassicDiskData> =
            serde_json::from_str(&fixtures::text("web-1/classic-disk-data.json")).unwrap();
        let vm_yaml: Value = serde_norway::from_str(&fixtures::text("web-1/vm.yaml")).unwrap();
        for (file, spelling) in [("code", KeySpelling::Code), ("guide", KeySpelling::Guide)] {
            let extra = fixtures::extra_config(&format!("web-1/extraconfig.{file}.json"));
            let data = decode(&extra).unwrap();
            assert_eq!(data.problems, [], "{file}");
            assert_eq!(data.spelling, spelling);
            assert_eq!(data.namespace.as_deref(), Some("demo-ns"));
            assert_eq!(data.name.as_deref(), Some("web-1"));
            assert_eq!(
                data.api_version.as_deref(),
                Some("vmoperator.vmware.com/v1alpha3")
            );
            assert_eq!(data.vm_yaml.as_ref(), Some(&vm_yaml));
            assert_eq!(data.pvc_disks, pvc);
            assert_eq!(data.pvc_disks[0].pvc_name, "web-1-data");
            assert_eq!(data.pvc_disks[0].access_modes, ["ReadWriteOnce"]);
            assert_eq!(data.classic_disks, classic);
            assert_eq!(data.backup_version_ms, Some(1_760_433_161_318));
            assert_eq!(data.auto_registration_opt_in, Some(true));
            assert_eq!(data.auto_registration_opt_out, None);
            assert_eq!(
                data.bootstrap_resources,
                [BootstrapResource {
                    kind: "Secret".into(),
                    name: "web-1-cloud-init".into()
                }]
            );

            let (_, resources) = keys::lookup(&extra, Content::AdditionalResources).unwrap();
            assert_eq!(
                decode_gzip_base64(resources).unwrap(),
                fixtures::text("web-1/additional-resources.yaml")
            );
        }
    }

    #[test]
    fn db1_decodes_under_both_spellings() {
        let classic: Vec<ClassicDiskData> =
            serde_json::from_str(&fixtures::text("db-1/classic-disk-data.json")).unwrap();
        let vm_yaml: Value = serde_norway::from_str(&fixtures::text("db-1/vm.yaml")).unwrap();
        for (file, spelling) in [("code", KeySpelling::Code), ("guide", KeySpelling::Guide)] {
            let extra = fixtures::extra_config(&format!("db-1/extraconfig.{file}.json"));
            let data = decode(&extra).unwrap();
            assert_eq!(data.problems, [], "{file}");
            assert_eq!(data.spelling, spelling);
            assert_eq!(data.namespace.as_deref(), Some("demo-ns"));
            assert_eq!(data.name.as_deref(), Some("db-1"));
            assert_eq!(
                data.api_version.as_deref(),
                Some("vmoperator.vmware.com/v1alpha5")
            );
            assert_eq!(data.vm_yaml.as_ref(), Some(&vm_yaml));
            assert_eq!(data.pvc_disks, []);
            assert_eq!(data.classic_disks, classic);
            assert_eq!(data.classic_disks.len(), 2);
            assert_eq!(data.backup_version_ms, Some(1_760_433_185_072));
            assert_eq!(data.auto_registration_opt_in, None);
            assert_eq!(data.auto_registration_opt_out, Some(true));
            let names: Vec<&str> = data
                .bootstrap_resources
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            assert_eq!(names, ["db-1-sysprep", "db-1-domain-join"]);

            let (_, resources) = keys::lookup(&extra, Content::AdditionalResources).unwrap();
            assert_eq!(
                decode_gzip_base64(resources).unwrap(),
                fixtures::text("db-1/additional-resources.yaml")
            );
        }
    }

    /// Both spellings at once: an empty code-spelled key does not hide the guide-spelled
    /// value; the same content twice is fine; different contents are reported.
    #[test]
    fn twin_keys_in_both_spellings() {
        let guide = fixtures::extra_config("web-1/extraconfig.guide.json");
        let empty_code = |c: Content| {
            let mut extra = guide.clone();
            extra.push((c.code_key().to_owned(), String::new()));
            extra
        };
        let data = decode(&empty_code(Content::BackupVersion)).unwrap();
        assert_eq!(data.problems, []);
        assert_eq!(data.backup_version_ms, Some(1_760_433_161_318));
        assert!(
            decode(&empty_code(Content::VmYaml))
                .unwrap()
                .vm_yaml
                .is_some()
        );

        let code = fixtures::extra_config("web-1/extraconfig.code.json");
        let mut both = guide.clone();
        both.extend(code.iter().cloned());
        assert_eq!(decode(&both).unwrap().problems, []);

        let mut differ = both.clone();
        differ.push((
            Content::BackupVersion.code_key().to_owned(),
            "1760433161319".into(),
        ));
        let data = decode(&differ).unwrap();
        let p = only_problem(&data);
        assert_eq!(p.key, Content::BackupVersion.code_key());
        assert!(
            p.reason.contains(Content::BackupVersion.guide_key()),
            "{p:?}"
        );
    }

    /// A kilobyte of gzip whose YAML aliases expand to millions of values is refused, not
    /// built.
    #[test]
    fn yaml_aliases_that_expand_without_bound_are_refused() {
        let n = 3000;
        let items = vec!["0"; n].join(",");
        let refs = vec!["*a"; n].join(",");
        let yaml = format!("a: &a [{items}]\nb: [{refs}]\n");
        let mut extra = web1();
        set(
            &mut extra,
            Content::VmYaml,
            &crate::vmservice::payload::encode_gzip_base64(&yaml),
        );
        let data = decode(&extra).unwrap();
        assert!(data.vm_yaml.is_none());
        assert!(
            data.problems
                .iter()
                .any(|p| p.reason.contains("anchors and aliases")),
            "{:#?}",
            data.problems
        );
    }

    /// A bootstrap Secret's value that does not fit its YAML tag is not quoted in the
    /// problem (the parser's message would).
    #[test]
    fn a_yaml_error_does_not_quote_a_secret() {
        let doc = "apiVersion: v1\nkind: Secret\nmetadata: {name: boot}\n\
                   stringData: {password: !!int hunter2}\n";
        let mut extra = web1();
        set(
            &mut extra,
            Content::AdditionalResources,
            &crate::vmservice::payload::encode_gzip_base64(doc),
        );
        let data = decode(&extra).unwrap();
        let reasons: Vec<&str> = data.problems.iter().map(|p| p.reason.as_str()).collect();
        assert!(!reasons.is_empty(), "no problem reported");
        assert!(
            reasons.iter().all(|r| !r.contains("hunter2")),
            "{reasons:?}"
        );
        assert!(reasons.iter().any(|r| r.contains("line 4")), "{reasons:?}");
    }

    #[test]
    fn no_backup_key_is_not_a_vm_service_vm() {
        assert_eq!(decode(&[]), None);
        let extra = entries(&[
            ("nvram", "x.nvram"),
            ("vmservice.virtualmachine.pause", "True"),
            ("vmservice.virtualmachine.resource.yaml", ""),
        ]);
        assert_eq!(decode(&extra), None);
    }

    #[test]
    fn a_lone_backup_key_reports_the_missing_ones() {
        let extra = entries(&[("vmservice.namespacedName", "ns/vm")]);
        let data = decode(&extra).unwrap();
        let p = only_problem(&data);
        assert_eq!(p.key, "vmservice.virtualmachine.resource.yaml");
        assert_eq!(
            p.to_string(),
            "ExtraConfig key vmservice.virtualmachine.resource.yaml: missing; WCP would refuse \
             with VCenterWcpWorkloadRegisterVMValidateVMResourceFailed"
        );
        assert_eq!(data.spelling, KeySpelling::Code);
        assert_eq!(data.namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn namespaced_name_must_be_namespace_slash_name() {
        for bad in ["demo-ns", "/web-1", "demo-ns/", "a/b/c"] {
            let mut extra = web1();
            set(&mut extra, Content::NamespacedName, bad);
            let data = decode(&extra).unwrap();
            let p = only_problem(&data);
            assert_eq!(p.key, "vmservice.namespacedName", "{bad}");
            assert!(p.reason.contains("<namespace>/<name>"), "{p}");
            assert_eq!((data.namespace, data.name), (None, None));
        }
        let mut extra = web1();
        remove(&mut extra, Content::NamespacedName);
        let p = only_problem(&decode(&extra).unwrap()).clone();
        assert_eq!(p.key, "vmservice.namespacedName");
        assert!(p.reason.starts_with("missing"), "{p}");
    }

    #[test]
    fn namespaced_name_must_match_the_yaml_metadata() {
        let mut extra = web1();
        set(&mut extra, Content::NamespacedName, "other-ns/web-2");
        let data = decode(&extra).unwrap();
        assert_eq!(data.problems.len(), 2, "{:#?}", data.problems);
        assert!(data.problems[0].reason.contains("metadata.name is web-1"));
        assert!(
            data.problems[1]
                .reason
                .contains("metadata.namespace is demo-ns")
        );
    }

    #[test]
    fn backup_version_must_be_decimal_milliseconds() {
        for (value, expect) in [
            ("+1760433161318", "not a decimal"),
            ("1760433161318 ", "not a decimal"),
            ("99999999999999999999", "not a decimal"),
            ("2025-10-14T09:12:41Z", "not a decimal"),
            ("1760433161", "too small"),
        ] {
            let mut extra = web1();
            set(&mut extra, Content::BackupVersion, value);
            let data = decode(&extra).unwrap();
            let p = only_problem(&data);
            assert_eq!(p.key, "vmservice.virtualmachine.backupVersion");
            assert!(p.reason.contains(expect), "{value}: {p}");
        }
    }

    #[test]
    fn vm_yaml_layers_and_versions() {
        for (yaml, expect) in [
            ("- a\n- b\n", "not a mapping (a sequence)"),
            ("just text\n", "not a mapping (a string)"),
            ("kind: VirtualMachine\n", "no apiVersion"),
            (
                "apiVersion: vmoperator.vmware.com/v1alpha1\n",
                "v1alpha1 cannot be restored",
            ),
            ("apiVersion: v1\n", "apiVersion v1 cannot"),
            (
                "apiVersion: other.example.com/v1alpha3\n",
                "cannot be restored",
            ),
            (
                "apiVersion: vmoperator.vmware.com/v1alpha6\n",
                "v1alpha6 cannot",
            ),
            (
                "apiVersion: vmoperator.vmware.com/v1alpha4\nkind: Secret\n",
                "kind is \"Secret\"",
            ),
            ("a: 1\n---\nb: 2\n", "not YAML"),
        ] {
            // These YAMLs claim no PVC: drop the PVC list, which would be a second problem.
            let mut extra = yaml_with(yaml);
            remove(&mut extra, Content::PvcDiskData);
            let data = decode(&extra).unwrap();
            let p = only_problem(&data);
            assert_eq!(p.key, "vmservice.virtualmachine.resource.yaml");
            assert!(p.reason.contains(expect), "{yaml:?}: {p}");
        }
        // Every supported version passes, unknown fields and a full status are tolerated.
        for v in SUPPORTED_API_VERSIONS {
            let yaml = format!(
                "apiVersion: vmoperator.vmware.com/{v}\nkind: VirtualMachine\nmetadata:\n  \
                 name: web-1\n  namespace: demo-ns\nspec:\n  futureField: [1, 2]\n  volumes:\n  \
                 - name: data\n    persistentVolumeClaim:\n      claimName: web-1-data\n\
                 status:\n  powerState: PoweredOn\n  conditions:\n  - type: Ready\n"
            );
            let data = decode(&yaml_with(&yaml)).unwrap();
            assert_eq!(data.problems, [], "{v}");
            assert_eq!(data.api_version, Some(format!("vmoperator.vmware.com/{v}")));
        }
    }

    #[test]
    fn pvc_volumes_need_pvc_disk_data() {
        let mut extra = web1();
        remove(&mut extra, Content::PvcDiskData);
        let data = decode(&extra).unwrap();
        let p = only_problem(&data);
        assert_eq!(p.key, "vmservice.virtualmachine.pvc.disk.data");
        assert!(
            p.reason
                .contains("missing, but the VM YAML claims PVCs web-1-data"),
            "{p}"
        );

        // An empty value is no value (vSphere removes a key set to empty).
        let mut extra = web1();
        set(&mut extra, Content::PvcDiskData, "");
        assert_eq!(decode(&extra).unwrap().problems.len(), 1);
    }

    #[test]
    fn disk_data_must_decode_to_json_lists() {
        let mut extra = web1();
        set(
            &mut extra,
            Content::PvcDiskData,
            &encode_gzip_base64("{\"FileName\":1}"),
        );
        set(&mut extra, Content::ClassicDiskData, "not base64!");
        let data = decode(&extra).unwrap();
        assert_eq!(data.problems.len(), 2, "{:#?}", data.problems);
        assert_eq!(data.problems[0].key, Content::PvcDiskData.code_key());
        assert!(
            data.problems[0]
                .reason
                .contains("not a JSON disk-data list")
        );
        assert_eq!(data.problems[1].key, Content::ClassicDiskData.code_key());
        assert!(data.problems[1].reason.starts_with("not base64"));

        // Go writes null for a nil slice and for nil AccessModes.
        let mut extra = web1();
        set(
            &mut extra,
            Content::ClassicDiskData,
            &encode_gzip_base64("null"),
        );
        set(
            &mut extra,
            Content::PvcDiskData,
            &encode_gzip_base64(
                r#"[{"FileName":"f","PVCName":"web-1-data","AccessModes":null,"UUID":"u","X":1}]"#,
            ),
        );
        let data = decode(&extra).unwrap();
        assert_eq!(data.problems, []);
        assert_eq!(data.classic_disks, []);
        assert_eq!(data.pvc_disks[0].access_modes, Vec::<String>::new());
    }

    #[test]
    fn additional_resources_must_be_yaml_documents() {
        let mut extra = web1();
        set(
            &mut extra,
            Content::AdditionalResources,
            &encode_gzip_base64("a: 1\n---\n- not a mapping\n"),
        );
        let data = decode(&extra).unwrap();
        let p = only_problem(&data);
        assert_eq!(p.key, Content::AdditionalResources.code_key());
        assert!(p.reason.contains("document 2"), "{p}");

        set(
            &mut extra,
            Content::AdditionalResources,
            &encode_gzip_base64("a: {b\n"),
        );
        let data = decode(&extra).unwrap();
        assert!(only_problem(&data).reason.contains("not YAML"));
    }

    #[test]
    fn auto_registration_flags() {
        for (value, opt_in, opt_out) in [
            ("true", true, true),
            ("TRUE", true, true),
            (" yes ", true, false),
            ("1", true, false),
            ("on", true, false),
            ("false", false, false),
            ("no", false, false),
        ] {
            let mut extra = web1();
            set(&mut extra, Content::EnableAutoRegistration, value);
            set(&mut extra, Content::DisableAutoRegistration, value);
            let data = decode(&extra).unwrap();
            assert_eq!(data.auto_registration_opt_in, Some(opt_in), "{value}");
            assert_eq!(data.auto_registration_opt_out, Some(opt_out), "{value}");
        }
    }

    #[test]
    fn mixed_spellings_count_as_code() {
        let mut extra = fixtures::extra_config("web-1/extraconfig.guide.json");
        set(&mut extra, Content::BackupVersion, "1760433161319");
        let data = decode(&extra).unwrap();
        assert_eq!(data.spelling, KeySpelling::Code);
        assert_eq!(data.backup_version_ms, Some(1_760_433_161_319));
        assert_eq!(data.problems, []);
    }

    #[test]
    fn serializes_without_the_vm_yaml() {
        let data = decode(&web1()).unwrap();
        let json = serde_json::to_value(&data).unwrap();
        assert!(json.get("vm_yaml").is_none());
        assert_eq!(json["spelling"], "code");
        assert_eq!(json["pvc_disks"][0]["PVCName"], "web-1-data");
        let back: VmServiceData = serde_json::from_value(json).unwrap();
        assert_eq!(back.vm_yaml, None);
        assert_eq!(back.pvc_disks, data.pvc_disks);
    }
}
