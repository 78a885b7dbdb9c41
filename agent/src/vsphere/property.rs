//! PropertyCollector reads (VSPHERE.md §A.4): `RetrievePropertiesEx` followed by
//! `ContinueRetrievePropertiesEx` while a token comes back, and container views for
//! listing a folder's contents.

use super::soap::{SoapClient, SoapFault, VsphereError};
use super::types::MoRef;
use super::xml::{Element, XmlWriter};

/// Most pages one retrieval follows (vCenter's pages hold up to 100 objects by default, so
/// this is far beyond any inventory).
const MAX_PAGES: usize = 100_000;
/// Most objects one retrieval collects.
const MAX_OBJECTS: usize = 2_000_000;

impl SoapClient {
    /// Retrieves `filter`'s properties, following continuation tokens until done (at most
    /// 100 000 pages and about 2 million objects).
    ///
    /// # Errors
    ///
    /// `ManagedObjectNotFound` for an unknown object, `InvalidProperty` for a bad path,
    /// transport errors.
    pub async fn retrieve(
        &self,
        filter: &PropertyFilter,
    ) -> Result<Vec<ObjectContent>, VsphereError> {
        let pc = self.service_content().property_collector.clone();
        let mut w = XmlWriter::new();
        filter.write(&mut w);
        w.empty("options");
        let response = self
            .invoke("RetrievePropertiesEx", &pc, &w.finish())
            .await?;
        let mut objects = Vec::new();
        let mut token = read_result(
            response.child("returnval"),
            &mut objects,
            "RetrievePropertiesEx",
        )?;
        let mut pages = 1usize;
        while let Some(t) = token {
            // A server that never stops handing out tokens (or hands back the same one)
            // must not hold the job, and its memory, for ever.
            if pages >= MAX_PAGES || objects.len() > MAX_OBJECTS {
                return Err(VsphereError::Malformed {
                    method: "ContinueRetrievePropertiesEx",
                    reason: format!(
                        "still more results after {pages} pages and {} objects; giving up",
                        objects.len()
                    ),
                });
            }
            pages += 1;
            let mut w = XmlWriter::new();
            w.text("token", &t);
            let response = self
                .invoke("ContinueRetrievePropertiesEx", &pc, &w.finish())
                .await?;
            token = read_result(
                response.child("returnval"),
                &mut objects,
                "ContinueRetrievePropertiesEx",
            )?;
        }
        Ok(objects)
    }

    /// Reads `paths` of one object. Unset properties are absent from the result.
    ///
    /// # Errors
    ///
    /// As [`SoapClient::retrieve`]; `ManagedObjectNotFound` when `obj` does not exist.
    pub async fn retrieve_object(
        &self,
        obj: &MoRef,
        paths: &[&str],
    ) -> Result<ObjectContent, VsphereError> {
        let filter = PropertyFilter::object(obj.clone(), &obj.kind, paths);
        let mut objects = self.retrieve(&filter).await?;
        if let Some(missing) = objects.first().and_then(|o| o.missing.first()) {
            return Err(VsphereError::Fault {
                method: "RetrievePropertiesEx",
                object: obj.clone(),
                fault: Box::new(missing.1.clone()),
            });
        }
        match objects.pop() {
            Some(o) => Ok(o),
            None => Ok(ObjectContent {
                obj: obj.clone(),
                props: Vec::new(),
                missing: Vec::new(),
            }),
        }
    }

    /// Lists objects of type `kind` in `container` (a Folder, Datacenter, …) through a
    /// container view, with their `paths`; the view is destroyed afterwards.
    ///
    /// # Errors
    ///
    /// Faults of `CreateContainerView` (`ManagedObjectNotFound` for an unknown container)
    /// or of the retrieve.
    pub async fn list_in_container(
        &self,
        container: &MoRef,
        kind: &str,
        paths: &[&str],
        recursive: bool,
    ) -> Result<Vec<ObjectContent>, VsphereError> {
        let vm = self.service_content().view_manager.clone();
        let mut w = XmlWriter::new();
        w.moref("container", container)
            .text("type", kind)
            .value("recursive", recursive);
        let response = self.invoke("CreateContainerView", &vm, &w.finish()).await?;
        let view = response
            .child("returnval")
            .ok_or_else(|| VsphereError::Malformed {
                method: "CreateContainerView",
                reason: "no returnval".into(),
            })?
            .moref()
            .map_err(|source| VsphereError::Xml {
                method: "CreateContainerView",
                source,
            })?;
        let filter = PropertyFilter {
            obj: view.clone(),
            skip: true,
            traversal: vec![TraversalSpec {
                kind: "ContainerView".into(),
                path: "view".into(),
            }],
            kind: kind.to_owned(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        };
        let result = self.retrieve(&filter).await;
        if let Err(e) = self.invoke("DestroyView", &view, "").await {
            tracing::warn!(view = %view, error = %e, "could not destroy container view");
        }
        result
    }
}

fn read_result(
    returnval: Option<&Element>,
    out: &mut Vec<ObjectContent>,
    method: &'static str,
) -> Result<Option<String>, VsphereError> {
    let Some(result) = returnval else {
        return Ok(None);
    };
    for object in result.children_named("objects") {
        out.push(
            ObjectContent::from_xml(object)
                .map_err(|source| VsphereError::Xml { method, source })?,
        );
    }
    Ok(result
        .child_text("token")
        .map(str::to_owned)
        .filter(|t| !t.is_empty()))
}

/// One `PropertyFilterSpec` with one `ObjectSpec` and one `PropertySpec`.
#[derive(Clone, Debug)]
pub struct PropertyFilter {
    /// Where collection starts.
    pub obj: MoRef,
    /// Leave `obj` itself out of the result (when it is only a starting point).
    pub skip: bool,
    /// Traversals from `obj`.
    pub traversal: Vec<TraversalSpec>,
    /// The managed object type whose properties are wanted.
    pub kind: String,
    /// The property paths.
    pub paths: Vec<String>,
}

impl PropertyFilter {
    /// Properties `paths` of the single object `obj` of type `kind`.
    #[must_use]
    pub fn object(obj: MoRef, kind: &str, paths: &[&str]) -> Self {
        Self {
            obj,
            skip: false,
            traversal: Vec::new(),
            kind: kind.to_owned(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    fn write(&self, w: &mut XmlWriter) {
        w.open("specSet").open("propSet").text("type", &self.kind);
        for path in &self.paths {
            w.text("pathSet", path);
        }
        w.close("propSet")
            .open("objectSet")
            .moref("obj", &self.obj)
            .value("skip", self.skip);
        for t in &self.traversal {
            w.open_typed("selectSet", "TraversalSpec")
                .text("type", &t.kind)
                .text("path", &t.path)
                .value("skip", false)
                .close("selectSet");
        }
        w.close("objectSet").close("specSet");
    }
}

/// A one-step `TraversalSpec` {type, path}.
#[derive(Clone, Debug)]
pub struct TraversalSpec {
    /// The type the path applies to, e.g. `ContainerView`.
    pub kind: String,
    /// The property to follow, e.g. `view`.
    pub path: String,
}

/// One object's properties.
#[derive(Clone, Debug)]
pub struct ObjectContent {
    /// The object.
    pub obj: MoRef,
    /// (path, value) pairs; the value element carries its `xsi:type`.
    pub props: Vec<(String, Element)>,
    /// Paths that could not be read, with why.
    pub missing: Vec<(String, SoapFault)>,
}

impl ObjectContent {
    pub(super) fn from_xml(e: &Element) -> Result<Self, super::xml::XmlError> {
        let obj = e
            .child("obj")
            .ok_or_else(|| super::xml::XmlError::Value {
                element: "objects".into(),
                value: "no obj".into(),
            })?
            .moref()?;
        let props = e
            .children_named("propSet")
            .filter_map(|p| Some((p.child_text("name")?.to_owned(), p.child("val")?.clone())))
            .collect();
        let missing = e
            .children_named("missingSet")
            .map(|m| {
                let fault = m.child("fault").map_or_else(
                    || SoapFault {
                        kind: super::soap::FaultKind::Other,
                        name: "Unknown".into(),
                        message: String::new(),
                        object: None,
                    },
                    SoapFault::from_localized,
                );
                (m.child_text("path").unwrap_or_default().to_owned(), fault)
            })
            .collect();
        Ok(Self {
            obj,
            props,
            missing,
        })
    }

    /// The value of `path`, if set.
    #[must_use]
    pub fn get(&self, path: &str) -> Option<&Element> {
        self.props.iter().find(|(p, _)| p == path).map(|(_, v)| v)
    }

    /// The text of `path`, if set.
    #[must_use]
    pub fn text(&self, path: &str) -> Option<&str> {
        self.get(path).map(|v| v.text.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_is_written_in_wsdl_order() {
        let mut filter = PropertyFilter::object(
            MoRef::new("ContainerView", "session[1]"),
            "VirtualMachine",
            &["name"],
        );
        filter.skip = true;
        filter.traversal.push(TraversalSpec {
            kind: "ContainerView".into(),
            path: "view".into(),
        });
        let mut w = XmlWriter::new();
        filter.write(&mut w);
        assert_eq!(
            w.finish(),
            concat!(
                "<specSet><propSet><type>VirtualMachine</type><pathSet>name</pathSet></propSet>",
                "<objectSet><obj type=\"ContainerView\">session[1]</obj><skip>true</skip>",
                "<selectSet xsi:type=\"TraversalSpec\"><type>ContainerView</type><path>view</path>",
                "<skip>false</skip></selectSet></objectSet></specSet>"
            )
        );
    }

    #[test]
    fn object_content_reads_props_and_missing() {
        let doc = br#"<objects xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><obj type="VirtualMachine">vm-1</obj><propSet><name>name</name><val xsi:type="xsd:string">web</val></propSet><missingSet><path>config</path><fault><fault xsi:type="NoPermission"/><localizedMessage>no</localizedMessage></fault></missingSet></objects>"#;
        let e = Element::parse(doc).unwrap();
        let oc = ObjectContent::from_xml(&e).unwrap();
        assert_eq!(oc.text("name"), Some("web"));
        assert_eq!(oc.missing[0].1.name, "NoPermission");
    }
}
