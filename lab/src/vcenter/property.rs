//! PropertyCollector (VSPHERE.md §A.4): RetrievePropertiesEx with ObjectSpec/
//! TraversalSpec/SelectionSpec, paged by `maxObjects` with ContinueRetrievePropertiesEx
//! tokens, and the ViewManager's container views.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::fault::Fault;
use super::objects::{Ref, World, option_value};
use super::server::Vcenter;
use super::value::Val;
use super::xml::{Element, esc};

/// Objects per page when the caller gives no `maxObjects`.
const DEFAULT_PAGE: usize = 100;

/// A container view.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub container: Ref,
    pub types: Vec<String>,
    pub recursive: bool,
}

/// Whether an object of `actual` type matches a PropertySpec/ContainerView `wanted` type.
pub(crate) fn is_a(actual: &str, wanted: &str) -> bool {
    actual == wanted
        || wanted == "ManagedEntity" && actual != "Task" && actual != "ContainerView"
        || wanted == "ComputeResource" && actual == "ClusterComputeResource"
}

/// The top-level property names that exist per type (unset ones are simply absent).
fn known_property(kind: &str, name: &str) -> bool {
    let common = [
        "name",
        "parent",
        "disabledMethod",
        "overallStatus",
        "configStatus",
        "tag",
        "customValue",
        "effectiveRole",
        "permission",
        "recentTask",
        "declaredAlarmState",
        "triggeredAlarmState",
        "alarmActionsEnabled",
        "availableField",
        "value",
    ];
    let specific: &[&str] = match kind {
        "VirtualMachine" => &[
            "resourcePool",
            "datastore",
            "runtime",
            "config",
            "snapshot",
            "layoutEx",
            "layout",
            "summary",
            "guest",
            "network",
            "storage",
            "capability",
            "environmentBrowser",
            "guestHeartbeatStatus",
            "parentVApp",
            "rootSnapshot",
            "resourceConfig",
        ],
        "VirtualMachineSnapshot" => &["config", "childSnapshot", "vm"],
        "Folder" => &["childEntity", "childType", "namespace"],
        "Datacenter" => &[
            "vmFolder",
            "hostFolder",
            "datastoreFolder",
            "networkFolder",
            "datastore",
            "network",
            "configuration",
        ],
        "Datastore" => &["summary", "info", "vm", "host", "browser", "capability"],
        "ClusterComputeResource" | "ComputeResource" => &[
            "host",
            "resourcePool",
            "datastore",
            "network",
            "summary",
            "configuration",
        ],
        "HostSystem" => &[
            "vm",
            "runtime",
            "datastore",
            "summary",
            "config",
            "hardware",
        ],
        "ResourcePool" => &[
            "owner",
            "resourcePool",
            "vm",
            "summary",
            "config",
            "runtime",
        ],
        "Task" => &["info"],
        "ContainerView" => &["view", "container", "type", "recursive"],
        _ => &[],
    };
    common.contains(&name) || specific.contains(&name)
}

impl Vcenter {
    fn object_val(&self, world: &World, session: &str, obj: &Ref) -> Option<Val> {
        match obj.0.as_str() {
            "Task" => self
                .tasks
                .get(&obj.1)
                .map(|t| Val::obj("Task", vec![("info", t.info())])),
            "ContainerView" => {
                let view = self.views_lock().get(&obj.1).cloned()?;
                if !obj.1.starts_with(&format!("session[{session}]")) {
                    return None;
                }
                let items = world
                    .contents(&view.container, view.recursive)
                    .into_iter()
                    .filter(|(k, _)| view.types.is_empty() || view.types.iter().any(|t| is_a(k, t)))
                    .map(|(k, i)| Val::moref(&k, &i))
                    .collect();
                Some(Val::obj(
                    "ContainerView",
                    vec![
                        ("view", Val::refs(items)),
                        (
                            "container",
                            Val::moref(&view.container.0, &view.container.1),
                        ),
                        ("type", Val::strings(view.types.clone())),
                        ("recursive", Val::Bool(view.recursive)),
                    ],
                ))
            }
            _ => world.object(&self.lab, &obj.0, &obj.1),
        }
    }

    /// One property of an object: `Ok(None)` when unset.
    fn property(object: &Val, kind: &str, path: &str) -> Result<Option<Val>, Fault> {
        if let Some((base, rest)) = path.split_once('[') {
            let key = rest
                .strip_suffix(']')
                .map(|k| k.trim_matches('"'))
                .ok_or_else(|| Fault::invalid_property(path))?;
            if base != "config.extraConfig" {
                return Err(Fault::invalid_property(path));
            }
            let list = object.get(&["config", "extraConfig"]);
            let Some(Val::List(_, _, items)) = list else {
                return Ok(None);
            };
            return Ok(items.iter().find_map(|item| match item.get(&["key"]) {
                Some(Val::Str(k)) if k == key => match item.get(&["value"]) {
                    Some(Val::Any(v)) => match v.as_ref() {
                        Val::Str(v) => Some(option_value(k, v)),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            }));
        }
        let segments: Vec<&str> = path.split('.').collect();
        if !known_property(kind, segments[0]) {
            return Err(Fault::invalid_property(path));
        }
        Ok(object.get(&segments).cloned())
    }

    /// RetrievePropertiesEx: the first page of `objects` XML and the token for the rest.
    pub(crate) fn retrieve(
        &self,
        world: &World,
        session: &str,
        req: &Element,
    ) -> Result<String, Fault> {
        let max = req
            .child("options")
            .and_then(|o| o.child_parse::<usize>("maxObjects"))
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_PAGE);
        let mut objects: Vec<String> = Vec::new();
        for spec in req.children_named("specSet") {
            self.collect_spec(world, session, spec, &mut objects)?;
        }
        Ok(self.page(objects, max))
    }

    /// ContinueRetrievePropertiesEx.
    pub(crate) fn continue_retrieve(&self, token: &str) -> Result<String, Fault> {
        let rest = self
            .pages_lock()
            .remove(token)
            .ok_or_else(|| Fault::invalid_argument("token"))?;
        let (objects, max) = rest;
        Ok(self.page(objects, max))
    }

    fn page(&self, mut objects: Vec<String>, max: usize) -> String {
        if objects.is_empty() {
            return String::new();
        }
        let rest = if objects.len() > max {
            objects.split_off(max)
        } else {
            Vec::new()
        };
        let mut out = String::from("<returnval>");
        if !rest.is_empty() {
            let token = uuid::Uuid::new_v4().to_string();
            let _ = write!(out, "<token>{token}</token>");
            self.pages_lock().insert(token, (rest, max));
        }
        for o in objects {
            out.push_str(&o);
        }
        out.push_str("</returnval>");
        out
    }

    fn collect_spec(
        &self,
        world: &World,
        session: &str,
        spec: &Element,
        out: &mut Vec<String>,
    ) -> Result<(), Fault> {
        let report_missing = spec
            .child_bool("reportMissingObjectsInResults")
            .unwrap_or(false);
        // Named selection specs anywhere in the filter (SelectionSpec references).
        let mut named: HashMap<String, Element> = HashMap::new();
        fn gather(e: &Element, named: &mut HashMap<String, Element>) {
            for s in e.children_named("selectSet") {
                if s.child("type").is_some()
                    && let Some(n) = s.child_text("name")
                {
                    named.insert(n.to_owned(), s.clone());
                }
                gather(s, named);
            }
        }
        for os in spec.children_named("objectSet") {
            gather(os, &mut named);
        }
        let mut found: Vec<Ref> = Vec::new();
        let mut missing: Vec<Ref> = Vec::new();
        for os in spec.children_named("objectSet") {
            let obj = os
                .child("obj")
                .and_then(Element::moref)
                .ok_or_else(|| Fault::invalid_argument("objectSet.obj"))?;
            let Some(_) = self.object_val(world, session, &obj) else {
                if report_missing {
                    missing.push(obj);
                    continue;
                }
                return Err(Fault::not_found_object(&obj.0, &obj.1));
            };
            if !os.child_bool("skip").unwrap_or(false) && !found.contains(&obj) {
                found.push(obj.clone());
            }
            self.traverse(world, session, &obj, os, &named, &mut found, 0)?;
        }
        for obj in found {
            let Some(value) = self.object_val(world, session, &obj) else {
                continue;
            };
            let mut matched = false;
            let mut props = String::new();
            for ps in spec.children_named("propSet") {
                let Some(t) = ps.child_text("type") else {
                    continue;
                };
                if !is_a(&obj.0, t) {
                    continue;
                }
                matched = true;
                let mut paths: Vec<String> = ps
                    .children_named("pathSet")
                    .map(|p| p.text.trim().to_owned())
                    .collect();
                if ps.child_bool("all").unwrap_or(false)
                    && let Val::Obj(_, fields) = &value
                {
                    paths = fields.iter().map(|(k, _)| k.clone()).collect();
                }
                for path in paths {
                    if let Some(v) = Self::property(&value, &obj.0, &path)? {
                        let _ = write!(props, "<propSet><name>{}</name>", esc(&path));
                        v.write(&mut props, "val", true);
                        props.push_str("</propSet>");
                    }
                }
            }
            if matched {
                out.push(format!(
                    "<objects><obj type=\"{}\">{}</obj>{props}</objects>",
                    esc(&obj.0),
                    esc(&obj.1)
                ));
            }
        }
        for obj in missing {
            let fault = Fault::not_found_object(&obj.0, &obj.1);
            out.push(format!(
                "<objects><obj type=\"{}\">{}</obj><missingSet><path></path><fault>{}</fault></missingSet></objects>",
                esc(&obj.0),
                esc(&obj.1),
                fault.localized_fields()
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn traverse(
        &self,
        world: &World,
        session: &str,
        from: &Ref,
        spec: &Element,
        named: &HashMap<String, Element>,
        found: &mut Vec<Ref>,
        depth: usize,
    ) -> Result<(), Fault> {
        if depth > 16 {
            return Ok(());
        }
        for sel in spec.children_named("selectSet") {
            let ts = match (sel.child("type"), sel.child_text("name")) {
                (Some(_), _) => sel,
                (None, Some(n)) => match named.get(n) {
                    Some(t) => t,
                    None => return Err(Fault::invalid_argument("selectSet")),
                },
                (None, None) => continue,
            };
            let (Some(t), Some(path)) = (ts.child_text("type"), ts.child_text("path")) else {
                return Err(Fault::invalid_argument("selectSet"));
            };
            if !is_a(&from.0, t) {
                continue;
            }
            let Some(value) = self.object_val(world, session, from) else {
                continue;
            };
            let targets: Vec<Ref> = match Self::property(&value, &from.0, path)? {
                Some(Val::Ref(k, i)) => vec![(k, i)],
                Some(Val::List(_, _, items)) => items
                    .into_iter()
                    .filter_map(|v| match v {
                        Val::Ref(k, i) => Some((k, i)),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            for target in targets {
                let new = !found.contains(&target);
                if !ts.child_bool("skip").unwrap_or(false) && new {
                    found.push(target.clone());
                }
                self.traverse(world, session, &target, ts, named, found, depth + 1)?;
            }
        }
        Ok(())
    }
}
