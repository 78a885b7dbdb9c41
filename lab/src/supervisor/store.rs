//! The Kubernetes-style object store: kinds, metadata (`uid`, one global
//! `resourceVersion` counter, `creationTimestamp`, `generation`), optimistic
//! concurrency, label selectors, merge/JSON patch and the `Status` errors. Persisted as
//! one JSON document, `<root>/supervisor/objects.json`, written atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::datastore::write_atomic;

/// The VM Operator API group.
pub const VMOP_GROUP: &str = "vmoperator.vmware.com";
/// The versions of [`VMOP_GROUP`] served (one stored object, any version).
pub const VMOP_VERSIONS: [&str; 4] = ["v1alpha2", "v1alpha3", "v1alpha4", "v1alpha5"];

/// A kind the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    /// URL plural (`virtualmachines`).
    pub plural: &'static str,
    /// `kind` (`VirtualMachine`).
    pub kind: &'static str,
    /// API group (`""` for core).
    pub group: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

/// Every kind served.
pub const KINDS: [KindInfo; 7] = [
    KindInfo {
        plural: "namespaces",
        kind: "Namespace",
        group: "",
        namespaced: false,
    },
    KindInfo {
        plural: "persistentvolumeclaims",
        kind: "PersistentVolumeClaim",
        group: "",
        namespaced: true,
    },
    KindInfo {
        plural: "secrets",
        kind: "Secret",
        group: "",
        namespaced: true,
    },
    KindInfo {
        plural: "configmaps",
        kind: "ConfigMap",
        group: "",
        namespaced: true,
    },
    KindInfo {
        plural: "virtualmachines",
        kind: "VirtualMachine",
        group: VMOP_GROUP,
        namespaced: true,
    },
    KindInfo {
        plural: "virtualmachineservices",
        kind: "VirtualMachineService",
        group: VMOP_GROUP,
        namespaced: true,
    },
    KindInfo {
        plural: "virtualmachinegroups",
        kind: "VirtualMachineGroup",
        group: VMOP_GROUP,
        namespaced: true,
    },
];

impl KindInfo {
    /// By plural or kind name (case-insensitive).
    #[must_use]
    pub fn find(name: &str) -> Option<Self> {
        KINDS
            .into_iter()
            .find(|k| k.plural.eq_ignore_ascii_case(name) || k.kind.eq_ignore_ascii_case(name))
    }

    /// `apiVersion` for `version` (`v1` for core).
    #[must_use]
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            "v1".into()
        } else {
            format!("{}/{version}", self.group)
        }
    }
}

/// A failed store operation, as a Kubernetes `Status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct SupervisorError {
    /// HTTP status.
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `BadRequest`, `Invalid`, `Forbidden`.
    pub reason: &'static str,
    /// Text.
    pub message: String,
}

impl SupervisorError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(kind: &KindInfo, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", kind.plural),
        )
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// The `Status` body.
    #[must_use]
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason,
            "code": self.code,
        })
    }
}

/// The objects: `(plural, namespace, name)` → object.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Store {
    /// The last `resourceVersion` handed out.
    resource_version: u64,
    objects: BTreeMap<String, Value>,
    #[serde(skip)]
    path: PathBuf,
}

fn key(kind: &KindInfo, ns: &str, name: &str) -> String {
    format!("{}/{ns}/{name}", kind.plural)
}

impl Store {
    /// Loads `<root>/supervisor/objects.json` (empty when absent).
    pub(crate) fn load(root: &Path) -> std::io::Result<Self> {
        let path = root.join("supervisor").join("objects.json");
        let mut store: Self = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(e) => return Err(e),
        };
        store.path = path;
        Ok(store)
    }

    fn save(&self) -> Result<(), SupervisorError> {
        let fail = |e: String| SupervisorError::new(500, "InternalError", e);
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| fail(e.to_string()))?;
        write_atomic(&self.path, &bytes).map_err(|e| fail(e.to_string()))
    }

    fn next_rv(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// The current global resourceVersion.
    pub(crate) fn resource_version(&self) -> String {
        self.resource_version.to_string()
    }

    /// One object.
    pub(crate) fn get(&self, kind: &KindInfo, ns: &str, name: &str) -> Option<Value> {
        self.objects.get(&key(kind, ns, name)).cloned()
    }

    /// The objects of a kind in `ns` (every namespace for `None`) matching `selector`.
    pub(crate) fn list(
        &self,
        kind: &KindInfo,
        ns: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Vec<Value>, SupervisorError> {
        let terms = parse_selector(selector.unwrap_or_default())?;
        let prefix = format!("{}/", kind.plural);
        Ok(self
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, v)| {
                ns.is_none_or(|ns| {
                    v["metadata"]["namespace"].as_str().unwrap_or("") == ns || !kind.namespaced
                })
            })
            .filter(|(_, v)| terms.iter().all(|t| t.matches(&v["metadata"]["labels"])))
            .map(|(_, v)| v.clone())
            .collect())
    }

    /// Create; 409 AlreadyExists when the name is taken.
    pub(crate) fn create(
        &mut self,
        kind: &KindInfo,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, SupervisorError> {
        let name = object_name(&obj)?;
        let ns = if kind.namespaced { ns } else { "" };
        let k = key(kind, ns, &name);
        if self.objects.contains_key(&k) {
            return Err(SupervisorError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", kind.plural),
            ));
        }
        let rv = self.next_rv();
        let meta = metadata_mut(&mut obj)?;
        meta.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
        meta.insert("resourceVersion".into(), rv.into());
        meta.insert(
            "creationTimestamp".into(),
            crate::vcenter::now_rfc3339().into(),
        );
        meta.insert("generation".into(), 1.into());
        meta.remove("managedFields");
        if kind.namespaced {
            meta.insert("namespace".into(), ns.into());
        } else {
            meta.remove("namespace");
        }
        set_type(&mut obj, kind);
        self.objects.insert(k, obj.clone());
        self.save()?;
        Ok(obj)
    }

    /// Replace; 404 when missing, 409 Conflict on a stale non-empty resourceVersion.
    /// Keeps `uid`/`creationTimestamp`; bumps `generation` when `spec` changed; keeps the
    /// stored `status` when the new object has none.
    pub(crate) fn replace(
        &mut self,
        kind: &KindInfo,
        ns: &str,
        name: &str,
        mut obj: Value,
    ) -> Result<Value, SupervisorError> {
        let ns = if kind.namespaced { ns } else { "" };
        let k = key(kind, ns, name);
        let Some(old) = self.objects.get(&k).cloned() else {
            return Err(SupervisorError::not_found(kind, name));
        };
        if object_name(&obj)? != name {
            return Err(SupervisorError::bad_request(
                "metadata.name does not match the URL",
            ));
        }
        let old_rv = old["metadata"]["resourceVersion"].clone();
        match obj["metadata"]
            .get("resourceVersion")
            .and_then(Value::as_str)
        {
            Some(rv) if !rv.is_empty() && Some(rv) != old_rv.as_str() => {
                return Err(SupervisorError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        kind.plural
                    ),
                ));
            }
            _ => {}
        }
        let gen_old = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let generation = if old.get("spec") == obj.get("spec") {
            gen_old
        } else {
            gen_old + 1
        };
        if obj.get("status").is_none()
            && let Some(s) = old.get("status")
        {
            obj["status"] = s.clone();
        }
        let rv = self.next_rv();
        let meta = metadata_mut(&mut obj)?;
        for f in ["uid", "creationTimestamp"] {
            meta.insert(f.into(), old["metadata"][f].clone());
        }
        meta.insert("resourceVersion".into(), rv.into());
        meta.insert("generation".into(), generation.into());
        meta.remove("managedFields");
        if kind.namespaced {
            meta.insert("namespace".into(), ns.into());
        }
        set_type(&mut obj, kind);
        self.objects.insert(k, obj.clone());
        self.save()?;
        Ok(obj)
    }

    /// Patch by `content_type` (merge, strategic treated as merge, JSON patch).
    pub(crate) fn patch(
        &mut self,
        kind: &KindInfo,
        ns: &str,
        name: &str,
        content_type: &str,
        patch: &Value,
    ) -> Result<Value, SupervisorError> {
        let ns_key = if kind.namespaced { ns } else { "" };
        let Some(mut obj) = self.objects.get(&key(kind, ns_key, name)).cloned() else {
            return Err(SupervisorError::not_found(kind, name));
        };
        let current_rv = obj["metadata"]["resourceVersion"].clone();
        if content_type.starts_with("application/json-patch+json") {
            json_patch(&mut obj, patch)?;
        } else if content_type.starts_with("application/merge-patch+json")
            || content_type.starts_with("application/strategic-merge-patch+json")
            // Server-side apply, as a merge of the (JSON) body: no field ownership.
            || content_type.starts_with("application/apply-patch+yaml")
        {
            merge_patch(&mut obj, patch);
        } else {
            return Err(SupervisorError::new(
                415,
                "UnsupportedMediaType",
                format!("patch type {content_type} is not supported"),
            ));
        }
        // A patch without resourceVersion applies to the latest object.
        if obj["metadata"]
            .get("resourceVersion")
            .is_none_or(Value::is_null)
        {
            obj["metadata"]["resourceVersion"] = current_rv;
        }
        self.replace(kind, ns, name, obj)
    }

    /// Delete; returns the deleted object.
    pub(crate) fn delete(
        &mut self,
        kind: &KindInfo,
        ns: &str,
        name: &str,
    ) -> Result<Value, SupervisorError> {
        let ns = if kind.namespaced { ns } else { "" };
        let obj = self
            .objects
            .remove(&key(kind, ns, name))
            .ok_or_else(|| SupervisorError::not_found(kind, name))?;
        self.next_rv();
        self.save()?;
        Ok(obj)
    }
}

fn object_name(obj: &Value) -> Result<String, SupervisorError> {
    obj["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| SupervisorError::new(422, "Invalid", "metadata.name: Required value"))
}

fn metadata_mut(obj: &mut Value) -> Result<&mut serde_json::Map<String, Value>, SupervisorError> {
    if !obj.is_object() {
        return Err(SupervisorError::bad_request("the body is not an object"));
    }
    obj["metadata"]
        .as_object_mut()
        .ok_or_else(|| SupervisorError::new(422, "Invalid", "metadata: Required value"))
}

fn set_type(obj: &mut Value, kind: &KindInfo) {
    obj["kind"] = kind.kind.into();
    let keep = obj["apiVersion"]
        .as_str()
        .is_some_and(|a| a.starts_with(&format!("{}/", kind.group)) && !kind.group.is_empty());
    if !keep {
        obj["apiVersion"] = kind.api_version(VMOP_VERSIONS[1]).into();
    }
}

/// RFC 7386 merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// RFC 6902 JSON patch: `add`, `remove`, `replace`, `test`.
fn json_patch(target: &mut Value, patch: &Value) -> Result<(), SupervisorError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| SupervisorError::bad_request("a JSON patch is an array"))?;
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| SupervisorError::bad_request("op without path"))?;
        let (parent, last) = path
            .rsplit_once('/')
            .ok_or_else(|| SupervisorError::bad_request("bad path"))?;
        let last = last.replace("~1", "/").replace("~0", "~");
        let bad = || SupervisorError::new(422, "Invalid", format!("path {path} does not exist"));
        match op["op"].as_str().unwrap_or_default() {
            "test" => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(SupervisorError::new(
                        422,
                        "Invalid",
                        format!("test of {path} failed"),
                    ));
                }
            }
            o @ ("add" | "replace" | "remove") => {
                let p = target.pointer_mut(parent).ok_or_else(bad)?;
                match p {
                    Value::Object(m) => {
                        if o == "remove" {
                            m.remove(&last).ok_or_else(bad)?;
                        } else {
                            if o == "replace" && !m.contains_key(&last) {
                                return Err(bad());
                            }
                            m.insert(last, op["value"].clone());
                        }
                    }
                    Value::Array(a) => {
                        let i = if last == "-" {
                            a.len()
                        } else {
                            last.parse().map_err(|_| bad())?
                        };
                        match o {
                            "add" if i <= a.len() => a.insert(i, op["value"].clone()),
                            "replace" if i < a.len() => a[i] = op["value"].clone(),
                            "remove" if i < a.len() => {
                                a.remove(i);
                            }
                            _ => return Err(bad()),
                        }
                    }
                    _ => return Err(bad()),
                }
            }
            other => {
                return Err(SupervisorError::bad_request(format!(
                    "unsupported patch op {other:?}"
                )));
            }
        }
    }
    Ok(())
}

#[derive(Debug)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

impl Term {
    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        match self {
            Self::Eq(k, v) => get(k) == Some(v),
            Self::Ne(k, v) => get(k) != Some(v),
            Self::Exists(k) => get(k).is_some(),
            Self::Absent(k) => get(k).is_none(),
        }
    }
}

fn parse_selector(s: &str) -> Result<Vec<Term>, SupervisorError> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if let Some((k, v)) = t.split_once("!=") {
                Ok(Term::Ne(k.trim().into(), v.trim().into()))
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Ok(Term::Eq(k.trim().into(), v.trim().into()))
            } else if let Some(k) = t.strip_prefix('!') {
                Ok(Term::Absent(k.trim().into()))
            } else if t.contains(' ') || t.contains('(') {
                Err(SupervisorError::bad_request(format!(
                    "unsupported label selector term {t:?}"
                )))
            } else {
                Ok(Term::Exists(t.into()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::load(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn create_replace_conflict_generation_and_persistence() {
        let (dir, mut s) = store();
        let cm = KindInfo::find("configmaps").unwrap();
        let o = s
            .create(
                &cm,
                "ns",
                json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}}),
            )
            .unwrap();
        assert_eq!(o["metadata"]["resourceVersion"], "1");
        assert_eq!(o["apiVersion"], "v1");
        let err = s
            .create(&cm, "ns", json!({"metadata": {"name": "a"}}))
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "AlreadyExists"));
        let mut stale = o.clone();
        stale["metadata"]["resourceVersion"] = "0".into();
        assert_eq!(
            s.replace(&cm, "ns", "a", stale).unwrap_err().reason,
            "Conflict"
        );
        let vmk = KindInfo::find("VirtualMachine").unwrap();
        let vm = s
            .create(
                &vmk,
                "ns",
                json!({"metadata": {"name": "v"}, "spec": {"a": 1}}),
            )
            .unwrap();
        let vm2 = s
            .patch(
                &vmk,
                "ns",
                "v",
                "application/merge-patch+json",
                &json!({"metadata": {"labels": {"l": "1"}}}),
            )
            .unwrap();
        assert_eq!(vm2["metadata"]["generation"], 1);
        let vm3 = s
            .patch(
                &vmk,
                "ns",
                "v",
                "application/json-patch+json",
                &json!([{"op": "replace", "path": "/spec/a", "value": 2}]),
            )
            .unwrap();
        assert_eq!(vm3["metadata"]["generation"], 2);
        assert_eq!(vm3["metadata"]["uid"], vm["metadata"]["uid"]);
        assert_eq!(s.list(&cm, Some("ns"), Some("x=1")).unwrap().len(), 1);
        assert_eq!(s.list(&cm, Some("ns"), Some("x!=1")).unwrap().len(), 0);
        assert_eq!(s.list(&cm, Some("other"), None).unwrap().len(), 0);
        let again = Store::load(dir.path()).unwrap();
        assert_eq!(again.get(&vmk, "ns", "v").unwrap()["spec"]["a"], 2);
        assert_eq!(again.resource_version(), s.resource_version());
        s.delete(&cm, "ns", "a").unwrap();
        assert_eq!(s.delete(&cm, "ns", "a").unwrap_err().code, 404);
    }
}
