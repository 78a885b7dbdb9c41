//! Property values as vCenter writes them: data objects, managed object references,
//! boxed arrays, and primitives with `xsi:type` where the schema is polymorphic.

use std::fmt::Write as _;

use super::xml::esc;

/// One property value (or a field of one).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    /// `xsd:string`.
    Str(String),
    /// `xsd:boolean`.
    Bool(bool),
    /// `xsd:int`.
    Int(i64),
    /// `xsd:long`.
    Long(i64),
    /// `xsd:dateTime`.
    Time(String),
    /// An enum value with its type name (`VirtualMachinePowerState`).
    Enum(&'static str, String),
    /// A managed object reference (type, value).
    Ref(String, String),
    /// A data object: type name and fields in WSDL order.
    Obj(String, Vec<(String, Val)>),
    /// A boxed array: `ArrayOfX`, the item element name `X`, items.
    List(String, String, Vec<Val>),
    /// A value whose field is declared `anyType` (written with its `xsi:type`).
    Any(Box<Val>),
    /// A data object of this type whose fields are already serialised.
    Raw(String, String),
}

impl Val {
    /// A moref value.
    pub(crate) fn moref(kind: &str, id: &str) -> Self {
        Self::Ref(kind.to_owned(), id.to_owned())
    }

    /// A data object.
    pub(crate) fn obj(kind: &str, fields: Vec<(&str, Val)>) -> Self {
        Self::Obj(
            kind.to_owned(),
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        )
    }

    /// `ArrayOfManagedObjectReference`.
    pub(crate) fn refs(items: Vec<Val>) -> Self {
        Self::List(
            "ArrayOfManagedObjectReference".into(),
            "ManagedObjectReference".into(),
            items,
        )
    }

    /// `ArrayOfString`.
    pub(crate) fn strings(items: Vec<String>) -> Self {
        Self::List(
            "ArrayOfString".into(),
            "string".into(),
            items.into_iter().map(Val::Str).collect(),
        )
    }

    /// A string.
    pub(crate) fn str(s: impl Into<String>) -> Self {
        Self::Str(s.into())
    }

    fn type_name(&self) -> String {
        match self {
            Self::Str(_) => "xsd:string".into(),
            Self::Bool(_) => "xsd:boolean".into(),
            Self::Int(_) => "xsd:int".into(),
            Self::Long(_) => "xsd:long".into(),
            Self::Time(_) => "xsd:dateTime".into(),
            Self::Enum(t, _) => (*t).to_owned(),
            Self::Ref(..) => "ManagedObjectReference".into(),
            Self::Obj(t, _) | Self::List(t, _, _) | Self::Raw(t, _) => t.clone(),
            Self::Any(v) => v.type_name(),
        }
    }

    /// The value at a dotted sub-path (`hardware.device`), if set.
    pub(crate) fn get(&self, path: &[&str]) -> Option<&Val> {
        let Some((first, rest)) = path.split_first() else {
            return Some(self);
        };
        match self {
            Self::Obj(_, fields) => fields
                .iter()
                .find(|(k, _)| k == first)
                .and_then(|(_, v)| v.get(rest)),
            _ => None,
        }
    }

    /// Writes `<elem>` holding this value; `typed` adds `xsi:type` (top-level `val`,
    /// polymorphic fields). Data objects are always typed.
    pub(crate) fn write(&self, out: &mut String, elem: &str, typed: bool) {
        let ty = if typed || matches!(self, Self::Obj(..) | Self::Raw(..)) {
            format!(" xsi:type=\"{}\"", self.type_name())
        } else {
            String::new()
        };
        match self {
            Self::Str(s) | Self::Time(s) | Self::Enum(_, s) => {
                let _ = write!(out, "<{elem}{ty}>{}</{elem}>", esc(s));
            }
            Self::Bool(b) => {
                let _ = write!(out, "<{elem}{ty}>{b}</{elem}>");
            }
            Self::Int(n) | Self::Long(n) => {
                let _ = write!(out, "<{elem}{ty}>{n}</{elem}>");
            }
            Self::Ref(kind, id) => {
                let _ = write!(
                    out,
                    "<{elem}{ty} type=\"{}\">{}</{elem}>",
                    esc(kind),
                    esc(id)
                );
            }
            Self::Obj(_, fields) => {
                let _ = write!(out, "<{elem}{ty}>");
                for (name, v) in fields {
                    match v {
                        // A plain array field repeats its element.
                        Self::List(_, _, items) => {
                            for item in items {
                                item.write(out, name, false);
                            }
                        }
                        Self::Any(inner) => inner.write(out, name, true),
                        other => other.write(out, name, false),
                    }
                }
                let _ = write!(out, "</{elem}>");
            }
            Self::List(_, item_elem, items) => {
                let _ = write!(out, "<{elem}{ty}>");
                for item in items {
                    item.write(out, item_elem, false);
                }
                let _ = write!(out, "</{elem}>");
            }
            Self::Any(inner) => inner.write(out, elem, true),
            Self::Raw(_, xml) => {
                let _ = write!(out, "<{elem}{ty}>{xml}</{elem}>");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_like_vcenter() {
        let v = Val::List(
            "ArrayOfOptionValue".into(),
            "OptionValue".into(),
            vec![Val::obj(
                "OptionValue",
                vec![
                    ("key", Val::str("a")),
                    ("value", Val::Any(Box::new(Val::str("<1>")))),
                ],
            )],
        );
        let mut out = String::new();
        v.write(&mut out, "val", true);
        assert_eq!(
            out,
            concat!(
                r#"<val xsi:type="ArrayOfOptionValue"><OptionValue xsi:type="OptionValue">"#,
                r#"<key>a</key><value xsi:type="xsd:string">&lt;1&gt;</value></OptionValue></val>"#
            )
        );
        let o = Val::obj("X", vec![("c", Val::refs(vec![Val::moref("Folder", "f")]))]);
        let mut out = String::new();
        o.write(&mut out, "val", true);
        assert_eq!(out, r#"<val xsi:type="X"><c type="Folder">f</c></val>"#);
        assert_eq!(
            o.get(&["c"]),
            Some(&Val::refs(vec![Val::moref("Folder", "f")]))
        );
    }
}
