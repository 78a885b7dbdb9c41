//! Reading SOAP requests (a namespace-aware tree over quick-xml) and writing responses.

use quick_xml::NsReader;
use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;

/// The XML Schema instance namespace.
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// Requests nest far less than this; it keeps hostile input off the end of the stack.
const MAX_DEPTH: usize = 64;

/// One element of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Element {
    /// Local name.
    pub name: String,
    /// Attributes other than namespace declarations and `xsi:type` (local names).
    pub attrs: Vec<(String, String)>,
    /// Local part of `xsi:type`.
    pub xsi_type: Option<String>,
    /// Children in order.
    pub children: Vec<Element>,
    /// Text content.
    pub text: String,
}

impl Element {
    /// Parses a document; `None` for anything that is not well-formed XML.
    pub(crate) fn parse(input: &[u8]) -> Option<Element> {
        let text = std::str::from_utf8(input).ok()?;
        let mut reader = NsReader::from_str(text);
        reader.config_mut().check_end_names = true;
        let mut stack: Vec<Element> = Vec::new();
        let mut root = None;
        loop {
            let (_, event) = reader.read_resolved_event().ok()?;
            match event {
                Event::Start(s) => {
                    if stack.len() >= MAX_DEPTH {
                        return None;
                    }
                    stack.push(new_element(&reader, &s)?);
                }
                Event::Empty(s) => {
                    let e = new_element(&reader, &s)?;
                    attach(&mut stack, &mut root, e);
                }
                Event::End(_) => {
                    let e = stack.pop()?;
                    attach(&mut stack, &mut root, e);
                }
                Event::Text(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&t.xml10_content());
                    }
                }
                Event::CData(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&t.xml10_content());
                    }
                }
                Event::GeneralRef(r) => {
                    let s = match r.resolve_char_ref().ok()? {
                        Some(c) => c.to_string(),
                        None => resolve_predefined_entity(&r.xml10_content())?.to_owned(),
                    };
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&s);
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        if stack.is_empty() { root } else { None }
    }

    /// First child named `name`.
    pub(crate) fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Children named `name`.
    pub(crate) fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Trimmed text of the first child named `name`.
    pub(crate) fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// A child parsed as `T`.
    pub(crate) fn child_parse<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.child_text(name)?.parse().ok()
    }

    /// A boolean child (`true`/`1`).
    pub(crate) fn child_bool(&self, name: &str) -> Option<bool> {
        self.child_text(name).map(|t| t == "true" || t == "1")
    }

    /// An attribute.
    pub(crate) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// This element as a managed object reference: (type, value).
    pub(crate) fn moref(&self) -> Option<(String, String)> {
        Some((self.attr("type")?.to_owned(), self.text.trim().to_owned()))
    }
}

fn new_element(reader: &NsReader<&[u8]>, start: &BytesStart<'_>) -> Option<Element> {
    let local = start.local_name().into_inner().to_owned();
    let mut e = Element {
        name: local,
        ..Element::default()
    };
    for a in start.attributes() {
        let a = a.ok()?;
        let key = a.key;
        if key.as_namespace_binding().is_some() {
            continue;
        }
        let value = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .ok()?
            .into_owned();
        let (ns, local) = reader.resolver().resolve_attribute(key);
        let local = local.into_inner().to_owned();
        let is_xsi = match ns {
            ResolveResult::Bound(n) => n.into_inner() == XSI_NS,
            ResolveResult::Unknown(p) => p == "xsi" || p == "XMLSchema-instance",
            ResolveResult::Unbound => false,
        };
        if is_xsi && local == "type" {
            let t = value.rsplit(':').next().unwrap_or(&value).to_owned();
            e.xsi_type = Some(t);
        } else {
            e.attrs.push((local, value));
        }
    }
    Some(e)
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, e: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(e),
        None => *root = Some(e),
    }
}

/// Escapes text for element content and attribute values.
pub(crate) fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    escape(s)
}

/// The response envelope around `body`.
pub(crate) fn envelope(body: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" "#,
            r#"xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
            r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
            r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
            "<soapenv:Body>{}</soapenv:Body></soapenv:Envelope>"
        ),
        body
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_typed_request() {
        let doc = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><X xmlns="urn:vim25"><_this type="Folder">group-v3</_this><v xsi:type="xsd:string">a &amp; b</v></X></soapenv:Body></soapenv:Envelope>"#;
        let root = Element::parse(doc).unwrap();
        let x = &root.child("Body").unwrap().children[0];
        assert_eq!(x.name, "X");
        assert_eq!(
            x.child("_this").unwrap().moref(),
            Some(("Folder".into(), "group-v3".into()))
        );
        let v = x.child("v").unwrap();
        assert_eq!(v.xsi_type.as_deref(), Some("string"));
        assert_eq!(v.text, "a & b");
        assert!(Element::parse(b"<a><b></a>").is_none());
    }
}
