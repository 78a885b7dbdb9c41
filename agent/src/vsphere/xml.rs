//! A small typed XML tree over quick-xml, with namespace resolution, for vim25 responses,
//! and the escaping writer used to build request envelopes.
//!
//! Reading: [`Element::parse`] builds the whole tree (responses are small; datastore files
//! never come through here). Names are stored as (namespace, local name); the schema type
//! of a polymorphic value is resolved from `xsi:type` whatever the prefix is bound to —
//! vcsim writes `XMLSchema-instance:type` with its own prefix declaration — and an
//! *undeclared* `xsi`/`XMLSchema-instance` prefix is accepted too. Parsing never panics:
//! garbage, truncation, undeclared prefixes and absurd nesting all come back as
//! [`XmlError`].

use std::borrow::Cow;
use std::fmt::Write as _;
use std::str::FromStr;

use quick_xml::NsReader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;

use super::types::MoRef;

/// The XML Schema instance namespace (`xsi`).
pub const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// The SOAP 1.1 envelope namespace.
pub const SOAPENV_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The vim25 namespace.
#[cfg(test)]
const VIM25_NS: &str = "urn:vim25";

/// Deepest element nesting accepted; vim25 answers stay far below it and it keeps the
/// recursive helpers (and `Drop`) off the end of the stack on hostile input.
const MAX_DEPTH: usize = 128;

/// One element of a parsed document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    /// The resolved namespace URI, if the name is bound to one.
    pub ns: Option<String>,
    /// The local name (prefix removed).
    pub name: String,
    /// Attributes other than namespace declarations and `xsi:type`: (local name, value).
    pub attrs: Vec<(String, String)>,
    /// The local part of the `xsi:type` value (`xsd:string` → `string`), if present.
    pub xsi_type: Option<String>,
    /// Child elements in document order.
    pub children: Vec<Element>,
    /// Concatenated text content (entities resolved; whitespace kept).
    pub text: String,
}

impl Element {
    /// Parses a whole document and returns its root element.
    ///
    /// # Errors
    ///
    /// [`XmlError`] on invalid UTF-8, malformed XML, an undeclared prefix on an element,
    /// nesting deeper than 128, or a document without (or with more than one) root.
    pub fn parse(input: &[u8]) -> Result<Element, XmlError> {
        let text = std::str::from_utf8(input).map_err(|e| XmlError::Utf8(e.valid_up_to()))?;
        let mut reader = NsReader::from_str(text);
        reader.config_mut().check_end_names = true;
        let mut stack: Vec<Element> = Vec::new();
        let mut root: Option<Element> = None;
        loop {
            let (resolved, event) = reader
                .read_resolved_event()
                .map_err(|e| XmlError::Syntax(e.to_string()))?;
            let ns = resolved_ns(&resolved)?;
            match event {
                Event::Start(_) | Event::Empty(_) if root.is_some() => {
                    return Err(XmlError::Structure("content after the root element".into()));
                }
                Event::Start(start) => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(XmlError::TooDeep);
                    }
                    let element = new_element(&reader, ns, &start)?;
                    stack.push(element);
                }
                Event::Empty(start) => {
                    let element = new_element(&reader, ns, &start)?;
                    attach(&mut stack, &mut root, element);
                }
                Event::End(_) => {
                    let element = stack
                        .pop()
                        .ok_or_else(|| XmlError::Structure("unbalanced end tag".into()))?;
                    attach(&mut stack, &mut root, element);
                }
                Event::Text(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&t.xml10_content());
                    } else if !t.xml10_content().trim().is_empty() {
                        return Err(XmlError::Structure("text outside the root element".into()));
                    }
                }
                Event::CData(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&t.xml10_content());
                    }
                }
                Event::GeneralRef(r) => {
                    let resolved = if let Some(c) = r
                        .resolve_char_ref()
                        .map_err(|e| XmlError::Syntax(e.to_string()))?
                    {
                        Cow::Owned(c.to_string())
                    } else {
                        let name = r.xml10_content();
                        Cow::Borrowed(
                            resolve_predefined_entity(&name)
                                .ok_or_else(|| XmlError::UnknownEntity(name.into_owned()))?,
                        )
                    };
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&resolved);
                    }
                }
                Event::Eof => break,
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
        if !stack.is_empty() {
            return Err(XmlError::Structure(
                "document ends inside an element".into(),
            ));
        }
        root.ok_or_else(|| XmlError::Structure("no root element".into()))
    }

    /// The first child with local name `name`.
    #[must_use]
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All children with local name `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the first child named `name`.
    #[must_use]
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// The value of attribute `name` (local name).
    #[must_use]
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The text parsed as `T` (trimmed).
    ///
    /// # Errors
    ///
    /// [`XmlError::Value`] when the text does not parse.
    pub fn parse_text<T: FromStr>(&self) -> Result<T, XmlError> {
        self.text.trim().parse().map_err(|_| XmlError::Value {
            element: self.name.clone(),
            value: truncate(&self.text),
        })
    }

    /// The first child named `name` parsed as `T`, `None` when absent.
    ///
    /// # Errors
    ///
    /// [`XmlError::Value`] when the child is present but does not parse.
    pub fn child_parse<T: FromStr>(&self, name: &str) -> Result<Option<T>, XmlError> {
        self.child(name).map(Element::parse_text).transpose()
    }

    /// This element read as a managed object reference (`type` attribute + text).
    ///
    /// # Errors
    ///
    /// [`XmlError::Value`] when the `type` attribute is missing.
    pub fn moref(&self) -> Result<MoRef, XmlError> {
        let kind = self.attr("type").ok_or_else(|| XmlError::Value {
            element: self.name.clone(),
            value: "managed object reference without a type attribute".into(),
        })?;
        Ok(MoRef::new(kind, self.text.trim()))
    }

    /// The text as an xsd:boolean (`true`/`false`/`1`/`0`).
    ///
    /// # Errors
    ///
    /// [`XmlError::Value`] for anything else.
    pub fn bool_text(&self) -> Result<bool, XmlError> {
        match self.text.trim() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            other => Err(XmlError::Value {
                element: self.name.clone(),
                value: truncate(other),
            }),
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn resolved_ns(resolved: &ResolveResult<'_>) -> Result<Option<String>, XmlError> {
    match resolved {
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Bound(ns) => Ok(Some(ns.into_inner().to_owned())),
        ResolveResult::Unknown(prefix) => Err(XmlError::UndeclaredPrefix(prefix.clone())),
    }
}

fn new_element(
    reader: &NsReader<&[u8]>,
    ns: Option<String>,
    start: &BytesStart<'_>,
) -> Result<Element, XmlError> {
    let local = start.local_name();
    let name = local.into_inner().to_owned();
    let mut element = Element {
        ns,
        name,
        ..Element::default()
    };
    for attr in start.attributes() {
        let attr = attr.map_err(|e| XmlError::Syntax(e.to_string()))?;
        if attr.key.as_namespace_binding().is_some() {
            continue;
        }
        let value = attr
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| XmlError::Syntax(e.to_string()))?
            .into_owned();
        let (resolved, local) = reader.resolver().resolve_attribute(attr.key);
        let local = local.into_inner().to_owned();
        let is_xsi = match resolved {
            ResolveResult::Bound(ns) => ns.into_inner() == XSI_NS,
            // Tolerate the conventional prefixes even when a peer forgets to declare them.
            ResolveResult::Unknown(prefix) => prefix == "xsi" || prefix == "XMLSchema-instance",
            ResolveResult::Unbound => false,
        };
        if is_xsi && local == "type" {
            let ty = value.rsplit_once(':').map_or(value.as_str(), |(_, l)| l);
            element.xsi_type = Some(ty.to_owned());
        } else if !is_xsi {
            element.attrs.push((local, value));
        }
    }
    Ok(element)
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, element: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

/// Why a document could not be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum XmlError {
    /// The bytes are not UTF-8.
    #[error("invalid utf-8 after {0} bytes")]
    Utf8(usize),
    /// quick-xml rejected the document.
    #[error("malformed xml: {0}")]
    Syntax(String),
    /// An element uses a prefix with no namespace declaration.
    #[error("undeclared namespace prefix {0:?}")]
    UndeclaredPrefix(String),
    /// An entity other than the five predefined ones.
    #[error("unknown entity &{0};")]
    UnknownEntity(String),
    /// Nesting deeper than the limit.
    #[error("elements nested too deeply")]
    TooDeep,
    /// The document's shape is wrong (no root, unbalanced, trailing content).
    #[error("malformed document: {0}")]
    Structure(String),
    /// An element's text is not a valid value of its type.
    #[error("invalid value {value:?} in <{element}>")]
    Value {
        /// The element's local name.
        element: String,
        /// The offending text (truncated).
        value: String,
    },
}

/// Builds a request body: elements with escaped text, in the order they are written
/// (vim25 requires WSDL order, VSPHERE.md §A.1).
#[derive(Debug, Default)]
pub struct XmlWriter {
    out: String,
}

impl XmlWriter {
    /// An empty writer.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens `<name>`.
    pub fn open(&mut self, name: &str) -> &mut Self {
        let _ = write!(self.out, "<{name}>");
        self
    }

    /// Opens `<name xsi:type="ty">`.
    pub fn open_typed(&mut self, name: &str, ty: &str) -> &mut Self {
        let _ = write!(self.out, "<{name} xsi:type=\"{}\">", escape(ty));
        self
    }

    /// Closes `</name>`.
    pub fn close(&mut self, name: &str) -> &mut Self {
        let _ = write!(self.out, "</{name}>");
        self
    }

    /// `<name>text</name>` with `text` escaped.
    pub fn text(&mut self, name: &str, text: &str) -> &mut Self {
        let _ = write!(self.out, "<{name}>{}</{name}>", escape(text));
        self
    }

    /// `<name xsi:type="ty">text</name>`.
    pub fn typed_text(&mut self, name: &str, ty: &str, text: &str) -> &mut Self {
        let _ = write!(
            self.out,
            "<{name} xsi:type=\"{}\">{}</{name}>",
            escape(ty),
            escape(text)
        );
        self
    }

    /// `<name>text</name>` when `text` is `Some`.
    pub fn opt_text(&mut self, name: &str, text: Option<&str>) -> &mut Self {
        if let Some(text) = text {
            self.text(name, text);
        }
        self
    }

    /// `<name>value</name>` for any displayable value (numbers, booleans).
    pub fn value(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        self.text(name, &value.to_string())
    }

    /// `<name type="Kind">id</name>`.
    pub fn moref(&mut self, name: &str, moref: &MoRef) -> &mut Self {
        let _ = write!(
            self.out,
            "<{name} type=\"{}\">{}</{name}>",
            escape(&moref.kind),
            escape(&moref.value)
        );
        self
    }

    /// `<name/>`.
    pub fn empty(&mut self, name: &str) -> &mut Self {
        let _ = write!(self.out, "<{name}/>");
        self
    }

    /// The text written so far.
    #[must_use]
    pub fn finish(self) -> String {
        self.out
    }
}

/// Escapes text or attribute content (`& < > " '`).
#[must_use]
pub fn escape(s: &str) -> Cow<'_, str> {
    quick_xml::escape::escape(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsi_type_with_either_prefix_spelling() {
        let a = br#"<r xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><v xsi:type="xsd:string">x</v></r>"#;
        let b = br#"<r xmlns="urn:vim25"><v xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="VirtualDisk">x</v></r>"#;
        let c = br#"<r><v XMLSchema-instance:type="ArrayOfOptionValue"/></r>"#;
        let a = Element::parse(a).unwrap();
        let b = Element::parse(b).unwrap();
        let c = Element::parse(c).unwrap();
        assert_eq!(a.children[0].xsi_type.as_deref(), Some("string"));
        assert_eq!(a.children[0].ns.as_deref(), Some(VIM25_NS));
        assert_eq!(b.children[0].xsi_type.as_deref(), Some("VirtualDisk"));
        assert!(b.children[0].attrs.is_empty());
        assert_eq!(
            c.children[0].xsi_type.as_deref(),
            Some("ArrayOfOptionValue")
        );
    }

    #[test]
    fn entities_and_morefs() {
        let doc = br#"<r><obj type="VirtualMachine">vm-1</obj><t>a &amp; b &#x41;&lt;</t></r>"#;
        let root = Element::parse(doc).unwrap();
        assert_eq!(
            root.child("obj").unwrap().moref().unwrap(),
            MoRef::new("VirtualMachine", "vm-1")
        );
        assert_eq!(root.child_text("t"), Some("a & b A<"));
    }

    #[test]
    fn garbage_is_an_error() {
        for doc in [
            &b""[..],
            b"<a>",
            b"<a></b>",
            b"<a/><b/>",
            b"\xff\xfe",
            b"<p:a/>",
            b"<a>&nope;</a>",
            b"text",
        ] {
            assert!(
                Element::parse(doc).is_err(),
                "{:?}",
                String::from_utf8_lossy(doc)
            );
        }
        let deep = "<a>".repeat(10_000);
        assert_eq!(Element::parse(deep.as_bytes()), Err(XmlError::TooDeep));
    }

    #[test]
    fn writer_escapes() {
        let mut w = XmlWriter::new();
        w.text("k", "a<b&\"c\"")
            .moref("_this", &MoRef::new("Folder", "group-<1>"));
        assert_eq!(
            w.finish(),
            "<k>a&lt;b&amp;&quot;c&quot;</k><_this type=\"Folder\">group-&lt;1&gt;</_this>"
        );
    }
}
