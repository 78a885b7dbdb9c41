//! Reading SOAP responses: a small namespace-aware element tree over quick-xml.

use quick_xml::NsReader;
use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;

const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// Responses nest far less than this; it keeps a hostile server off the end of the stack.
const MAX_DEPTH: usize = 128;

/// One element of a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Element {
    /// Local name.
    pub name: String,
    /// Attributes other than namespace declarations and `xsi:type` (local names).
    pub attrs: Vec<(String, String)>,
    /// Local part of `xsi:type`.
    pub xsi_type: Option<String>,
    pub children: Vec<Element>,
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

    /// Trimmed text of the first child named `name`.
    pub(crate) fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// An attribute.
    pub(crate) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every descendant (and self) in document order.
    pub(crate) fn descendants(&self) -> Vec<&Element> {
        let mut out = vec![self];
        let mut i = 0;
        while i < out.len() {
            let e = out[i];
            out.extend(e.children.iter());
            i += 1;
        }
        out
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
            ResolveResult::Unknown(p) => p == "xsi",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_fault() {
        let doc = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultstring>a &amp; b</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"/></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        let root = Element::parse(doc).unwrap();
        let fault = &root.child("Body").unwrap().children[0];
        assert_eq!(fault.name, "Fault");
        assert_eq!(fault.child_text("faultstring"), Some("a & b"));
        let detail = &fault.child("detail").unwrap().children[0];
        assert_eq!(detail.xsi_type.as_deref(), Some("InvalidLogin"));
        assert_eq!(root.descendants().len(), 6);
        assert!(Element::parse(b"<a><b></a>").is_none());
    }
}
