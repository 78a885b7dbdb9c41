//! The VM Operator resources around a VM that registration does not restore (seed 001
//! §10.2): the VirtualMachineGroup the VM names in `spec.groupName` (§10.4) and the
//! VirtualMachineServices whose selector picks its labels (§10.3). The guide has the
//! vendor record them "before or during backup" (§10.3, §10.4, daily in §10.6) and
//! recreate them once the VMs are registered (§10.5 phase 2: groups, then services).
//!
//! This module chooses them from a namespace's objects ([`pick`]), turns each into what a
//! create (`kubectl create -n NS`) takes ([`for_apply`]: no status, namespace or server-set
//! metadata), orders them for recreation ([`apply_order`]) and leaves a group's power
//! state out of a restore's create ([`for_restore`]). Pure functions: the backup engine
//! lists the namespace, the repository keeps the result with the point, the restore
//! creates what is missing.

use serde_json::{Map, Value};

/// `VirtualMachineGroup`.
pub const GROUP_KIND: &str = "VirtualMachineGroup";
/// `VirtualMachineService`.
pub const SERVICE_KIND: &str = "VirtualMachineService";

/// Metadata the API server sets, dropped from a kept object: a create must not carry
/// another object's `uid` or `resourceVersion`, and `ownerReferences` name uids that do
/// not exist after a restore.
const SERVER_METADATA: [&str; 8] = [
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Whether VirtualMachineGroup `g` lists VM `name` in `spec.bootOrder[].members` (the
/// group's half of membership, §10.4); a member of another kind (a group in a group) of
/// that name is not the VM.
#[must_use]
pub fn group_lists(g: &Value, name: &str) -> bool {
    vm_members(g).any(|m| m == name)
}

/// The VMs VirtualMachineGroup `g` lists in `spec.bootOrder[].members` (members of
/// another kind, groups in the group, left out).
pub fn vm_members(g: &Value) -> impl Iterator<Item = &str> {
    g.pointer("/spec/bootOrder")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|b| {
            b.get("members")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter(|m| {
            m.get("kind")
                .and_then(Value::as_str)
                .is_none_or(|k| k == "VirtualMachine")
        })
        .filter_map(|m| m.get("name").and_then(Value::as_str))
}

/// Whether VirtualMachineService `s`'s `spec.selector` (a label map; empty selects
/// nothing, as for a Service without a selector) matches `labels`.
#[must_use]
pub fn selects(s: &Value, labels: &Value) -> bool {
    let Some(selector) = s.pointer("/spec/selector").and_then(Value::as_object) else {
        return false;
    };
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
}

/// How many groups up a VM's group [`pick`] follows `spec.groupName` (vm-operator's
/// hierarchical groups; its documentation advises 2–3 levels).
const GROUP_DEPTH: usize = 8;

/// The objects among `groups` and `services` (a namespace's, as the API lists them at
/// `api_version`, `vmoperator.vmware.com/v1alpha3` say) that belong with the
/// VirtualMachine `vm` (its VM YAML): the group its `spec.groupName` names, the groups
/// that group belongs to in turn (a group's own `spec.groupName`, up to `GROUP_DEPTH` (8)
/// levels), and the services that select its labels, each [`for_apply`], in
/// [`apply_order`].
#[must_use]
pub fn pick(vm: &Value, groups: &[Value], services: &[Value], api_version: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let group_name = |o: &Value| {
        o.pointer("/spec/groupName")
            .and_then(Value::as_str)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
    };
    let mut next = group_name(vm);
    let mut seen: Vec<String> = Vec::new();
    while let Some(name) = next.take() {
        if seen.contains(&name) || seen.len() == GROUP_DEPTH {
            break;
        }
        let Some(group) = groups.iter().find(|g| name_of(g) == Some(name.as_str())) else {
            break;
        };
        out.push(for_apply(group, GROUP_KIND, api_version));
        next = group_name(group);
        seen.push(name);
    }
    let labels = vm.pointer("/metadata/labels").cloned().unwrap_or_default();
    out.extend(
        services
            .iter()
            .filter(|s| selects(s, &labels))
            .map(|s| for_apply(s, SERVICE_KIND, api_version)),
    );
    apply_order(&mut out);
    out
}

/// `obj` as a create takes it, into any namespace: `apiVersion` and `kind` (`api_version`
/// and `kind` when the list's items lack them, as Kubernetes list items do), `metadata`
/// without its namespace and what the server sets (`uid`, `resourceVersion`,
/// `generation`, timestamps, `managedFields`, `ownerReferences`), and `spec`; no `status`.
#[must_use]
pub fn for_apply(obj: &Value, kind: &str, api_version: &str) -> Value {
    let mut out = Map::new();
    out.insert(
        "apiVersion".into(),
        obj.get("apiVersion")
            .cloned()
            .unwrap_or_else(|| Value::from(api_version)),
    );
    out.insert(
        "kind".into(),
        obj.get("kind")
            .cloned()
            .unwrap_or_else(|| Value::from(kind)),
    );
    let mut metadata = obj
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for k in SERVER_METADATA {
        metadata.remove(k);
    }
    metadata.remove("ownerReferences");
    // A finalizer whose controller is not there would hold a delete of the new object
    // for ever; kubectl's last-applied copy names the old namespace and state.
    metadata.remove("finalizers");
    if let Some(annotations) = metadata
        .get_mut("annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        // What VM Operator's controllers set (a parent group's power-state time on its
        // members, say): its webhook refuses them from anyone but a privileged account,
        // so a user's create would be refused, and the controllers set them again.
        annotations.retain(|k, _| !is_protected(k));
        if annotations.is_empty() {
            metadata.remove("annotations");
        }
    }
    // Created where the VM is restored to (`kubectl create -n NS`, or the restore's own
    // namespace), which need not be where it was backed up.
    metadata.remove("namespace");
    out.insert("metadata".into(), Value::Object(metadata));
    if let Some(spec) = obj.get("spec") {
        out.insert("spec".into(), spec.clone());
    }
    Value::Object(out)
}

/// `obj` as a restore creates it (and `show --related` prints it): a VirtualMachineGroup
/// without a `spec.powerState` other than `PoweredOff`, as `PoweredOn` would have VM
/// Operator power on at once the member registration has just left PoweredOff (§8.1.4:
/// the user checks the VM first, and powers on in §10.5's phase 3). Returns the object and
/// the power state left out, if any.
#[must_use]
pub fn for_restore(obj: &Value) -> (Value, Option<String>) {
    let mut obj = obj.clone();
    let power = if kind_of(&obj) == Some(GROUP_KIND) {
        obj.get_mut("spec")
            .and_then(Value::as_object_mut)
            .filter(|spec| spec.get("powerState").and_then(Value::as_str) != Some("PoweredOff"))
            .and_then(|spec| spec.remove("powerState"))
            .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
    } else {
        None
    };
    (obj, power)
}

/// Sorts `objects` as §10.5 recreates them: groups, then services, each by name.
pub fn apply_order(objects: &mut [Value]) {
    objects.sort_by(|a, b| {
        let rank = |o: &Value| u8::from(kind_of(o) != Some(GROUP_KIND));
        (rank(a), name_of(a)).cmp(&(rank(b), name_of(b)))
    });
}

/// An annotation only VM Operator's privileged accounts may set: vm-operator's webhooks
/// protect the keys matching `^.+\.protected(/.*)?$`
/// (`vmoperator.vmware.com.protected/…`).
fn is_protected(key: &str) -> bool {
    const MARK: &str = ".protected";
    (key.len() > MARK.len() && key.ends_with(MARK))
        || key.find(".protected/").is_some_and(|at| at > 0)
}

/// `kind name` of a kept object, as reports name it (`VirtualMachineGroup web-group`).
#[must_use]
pub fn describe(obj: &Value) -> String {
    format!(
        "{} {}",
        kind_of(obj).unwrap_or("object"),
        name_of(obj).unwrap_or("<unnamed>")
    )
}

/// `metadata.name`.
#[must_use]
pub fn name_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/name").and_then(Value::as_str)
}

/// `kind`.
#[must_use]
pub fn kind_of(obj: &Value) -> Option<&str> {
    obj.get("kind").and_then(Value::as_str)
}

/// The version of `apiVersion` (`v1alpha3` of `vmoperator.vmware.com/v1alpha3`).
#[must_use]
pub fn version_of(obj: &Value) -> Option<&str> {
    obj.get("apiVersion")
        .and_then(Value::as_str)
        .and_then(|a| a.rsplit_once('/'))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{for_apply, for_restore, group_lists, pick, selects};

    /// A group is created without the power state that would power on its restored
    /// member; a service is created as kept.
    #[test]
    fn a_group_is_recreated_without_its_power_state() {
        let group = json!({"apiVersion": "vmoperator.vmware.com/v1alpha3",
                           "kind": "VirtualMachineGroup", "metadata": {"name": "g"},
                           "spec": {"powerState": "PoweredOn", "bootOrder": []}});
        let (created, power) = for_restore(&group);
        assert_eq!(power.as_deref(), Some("PoweredOn"));
        assert_eq!(created["spec"], json!({"bootOrder": []}));
        let service = json!({"kind": "VirtualMachineService", "metadata": {"name": "s"},
                             "spec": {"powerState": "x"}});
        assert_eq!(for_restore(&service), (service.clone(), None));
        // PoweredOff changes nothing for a member registration left off: kept.
        let off = json!({"kind": "VirtualMachineGroup", "metadata": {"name": "g"},
                         "spec": {"powerState": "PoweredOff"}});
        assert_eq!(for_restore(&off), (off.clone(), None));
    }

    /// §10: group membership needs the VM in `spec.bootOrder[].members`; a service
    /// selects a VM when every label of its selector is the VM's; an empty or missing
    /// selector selects nothing.
    #[test]
    fn related_resources_are_matched_as_vm_operator_does() {
        let group = json!({"spec": {"bootOrder": [
            {"members": [{"name": "db-1"}]},
            {"members": [{"name": "web-1"}], "powerOnDelay": "30s"}
        ]}});
        assert!(group_lists(&group, "web-1"));
        assert!(group_lists(&group, "db-1"));
        assert!(!group_lists(&group, "web-2"));
        assert!(!group_lists(&json!({"spec": {}}), "web-1"));
        // A group of the VM's name nested in the group is not the VM.
        let nested = json!({"spec": {"bootOrder": [{"members": [
            {"kind": "VirtualMachineGroup", "name": "web-1"}
        ]}]}});
        assert!(!group_lists(&nested, "web-1"));
        let typed = json!({"spec": {"bootOrder": [{"members": [
            {"kind": "VirtualMachine", "name": "web-1"}
        ]}]}});
        assert!(group_lists(&typed, "web-1"));
        let labels = json!({"app": "my-web-app", "tier": "frontend", "x": "y"});
        let svc = |sel: Value| json!({"spec": {"selector": sel}});
        assert!(selects(
            &svc(json!({"app": "my-web-app", "tier": "frontend"})),
            &labels
        ));
        assert!(!selects(
            &svc(json!({"app": "my-web-app", "tier": "backend"})),
            &labels
        ));
        assert!(!selects(
            &svc(json!({"app": "my-web-app", "zone": "a"})),
            &labels
        ));
        assert!(!selects(&svc(json!({})), &labels));
        assert!(!selects(&json!({"spec": {}}), &labels));
    }

    /// The group the VM names and the services that select it are kept, groups first,
    /// without what the server set; other groups and services are not.
    #[test]
    fn the_vms_group_and_services_are_picked_clean_and_in_apply_order() {
        let vm = json!({
            "metadata": {"name": "web-1", "labels": {"app": "web", "tier": "front"}},
            "spec": {"groupName": "web-group"}
        });
        let meta = |name: &str| {
            json!({
                "name": name, "namespace": "ns1", "uid": "u-1", "resourceVersion": "42",
                "generation": 3, "creationTimestamp": "2026-12-01T00:00:00Z",
                "managedFields": [{"manager": "kubectl"}],
                "ownerReferences": [{"uid": "u-0"}], "finalizers": ["example.com/hold"],
                "labels": {"team": "a"},
                "annotations": {"note": "kept",
                                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                                "vmoperator.vmware.com.protected/apply-power-state-time": "x",
                                "example.com.protected": "y",
                                "protected.example.com/kept": "z"}
            })
        };
        let groups = [
            json!({"apiVersion": "vmoperator.vmware.com/v1alpha3", "metadata": meta("other-group"), "spec": {}}),
            json!({"apiVersion": "vmoperator.vmware.com/v1alpha3", "metadata": meta("web-group"),
                   "spec": {"bootOrder": [{"members": [{"name": "web-1"}]}]},
                   "status": {"members": []}}),
        ];
        let services = [
            json!({"apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineService",
                   "metadata": meta("web-lb"), "spec": {"selector": {"app": "web"}},
                   "status": {"loadBalancer": {}}}),
            json!({"apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineService",
                   "metadata": meta("a-db-lb"), "spec": {"selector": {"app": "db"}}}),
            json!({"apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineService",
                   "metadata": meta("a-front"), "spec": {"selector": {"tier": "front"}}}),
        ];
        let kept = pick(&vm, &groups, &services, "vmoperator.vmware.com/v1alpha2");
        let names: Vec<String> = kept.iter().map(super::describe).collect();
        assert_eq!(
            names,
            [
                "VirtualMachineGroup web-group",
                "VirtualMachineService a-front",
                "VirtualMachineService web-lb"
            ]
        );
        assert_eq!(
            kept[0],
            json!({
                "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineGroup",
                "metadata": {"name": "web-group", "labels": {"team": "a"},
                             "annotations": {"note": "kept", "protected.example.com/kept": "z"}},
                "spec": {"bootOrder": [{"members": [{"name": "web-1"}]}]}
            })
        );
        assert!(kept[2].get("status").is_none());
        // The groups its group belongs to come along (vm-operator's hierarchical groups),
        // a loop among them once each.
        let nested = [
            json!({"metadata": {"name": "web-group"}, "spec": {"groupName": "app"}}),
            json!({"metadata": {"name": "app"}, "spec": {"groupName": "site"}}),
            json!({"metadata": {"name": "site"}, "spec": {"groupName": "app"}}),
            json!({"metadata": {"name": "unrelated"}, "spec": {}}),
        ];
        let kept = pick(&vm, &nested, &[], "vmoperator.vmware.com/v1alpha5");
        let names: Vec<String> = kept.iter().map(super::describe).collect();
        assert_eq!(
            names,
            [
                "VirtualMachineGroup app",
                "VirtualMachineGroup site",
                "VirtualMachineGroup web-group"
            ]
        );
        // A VM without a group keeps only its services; one no service selects, nothing.
        let lone = json!({"metadata": {"labels": {"app": "none"}}, "spec": {}});
        assert!(pick(&lone, &groups, &services, "vmoperator.vmware.com/v1alpha3").is_empty());
        // List items without apiVersion and kind get the list's.
        assert_eq!(
            for_apply(
                &json!({"metadata": {"name": "x"}}),
                "VirtualMachineGroup",
                "vmoperator.vmware.com/v1alpha4"
            ),
            json!({"apiVersion": "vmoperator.vmware.com/v1alpha4", "kind": "VirtualMachineGroup",
                   "metadata": {"name": "x"}})
        );
    }
}
