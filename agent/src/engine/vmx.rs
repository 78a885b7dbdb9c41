//! The `.vmx` file: `key = "value"` lines, kept byte for byte with each restore point and
//! parsed here only to read its ExtraConfig (VM Operator's `vmservice.*` keys live there).
//!
//! Values escape characters as `|XX` (two hex digits): `|22` is `"`, `|7C` is `|`.

/// A `.vmx` line that is not `key = "value"`. It names the line and its key, never the
/// text: a value may be a bootstrap Secret, and this error reaches logs, the job's record
/// and the API.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "line {line} of the .vmx is not `key = \"value\"`{}",
    key.as_ref().map(|k| format!(" (key {k:?}; its value is not shown)")).unwrap_or_default()
)]
pub struct VmxError {
    /// 1-based line number.
    pub line: usize,
    /// The line's key, when it has one (cut to 80 characters).
    pub key: Option<String>,
}

/// Every `key = "value"` entry of a `.vmx`, in file order, values unescaped.
///
/// # Errors
/// [`VmxError`] naming the first malformed line.
pub fn parse(bytes: &[u8]) -> Result<Vec<(String, String)>, VmxError> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The key only when the line reads as one (`key = …`, as ESXi writes them, with a
        // key's characters): in a stray line of base64 the text before a padding `=` is
        // the value itself.
        let bad = || VmxError {
            line: i + 1,
            key: line
                .split_once(" =")
                .map(|(k, _)| k.trim())
                .filter(|k| {
                    !k.is_empty()
                        && k.len() <= 80
                        && k.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
                        })
                })
                .map(str::to_owned),
        };
        let (key, value) = line.split_once('=').ok_or_else(bad)?;
        let key = key.trim();
        let value = value.trim();
        if key.is_empty() {
            return Err(bad());
        }
        let inner = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(bad)?;
        out.push((key.to_owned(), unescape(inner)));
    }
    Ok(out)
}

/// Decodes `|XX` escapes; a `|` not followed by two hex digits is kept as is.
fn unescape(v: &str) -> String {
    if !v.contains('|') {
        return v.to_owned();
    }
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'|'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_escapes() {
        let vmx = b".encoding = \"UTF-8\"\n# comment\n\ndisplayName = \"web |22one|22 |7C x\"\n\
                    vmservice.namespacedName = \"demo-ns/web-1\"\nodd = \"a|zz\"\n";
        let e = parse(vmx).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e[1], ("displayName".into(), "web \"one\" | x".into()));
        assert_eq!(e[2].1, "demo-ns/web-1");
        assert_eq!(e[3].1, "a|zz");
    }

    #[test]
    fn malformed_line_is_named() {
        let err = parse(b"a = \"1\"\nthis is not vmx\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(
            err.to_string(),
            "line 2 of the .vmx is not `key = \"value\"`"
        );
        // The key, never the value: it may be a secret.
        let err = parse(b"guestinfo.userdata = c2VjcmV0\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("\"guestinfo.userdata\"") && !text.contains("c2VjcmV0"),
            "{text}"
        );
        // Base64 before a padding `=`: no key named, nothing of the value shown.
        let err = parse(b"a = \"1\"\nc2VjcmV0LXBhc3N3b3Jk==\n").unwrap_err();
        assert_eq!(err.key, None);
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
        assert!(parse(b"k = unquoted\n").is_err());
        assert!(parse(b" = \"x\"\n").is_err());
    }
}
