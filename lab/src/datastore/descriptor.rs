//! The VMDK text descriptor, parsed and rendered the way ESXi writes it.
//!
//! Header keys (`version`, `CID`, `parentCID`, `createType`, `parentFileNameHint`,
//! `changeTrackPath`, ...) keep their order and quoting; unknown header keys and unknown
//! `ddb.*` keys survive a parse/render round trip. Comments are dropped and re-created.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::DatastoreError;

/// Descriptors larger than this are not text descriptors (ESXi's are < 1 KiB).
const MAX_DESCRIPTOR_BYTES: u64 = 64 * 1024;

/// One extent line: `RW 8192 VMFS "disk-0-flat.vmdk"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Extent {
    /// `RW`, `RDONLY` or `NOACCESS`.
    pub access: String,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// `VMFS`, `FLAT`, `VMFSSPARSE`, `SESPARSE`, ...
    pub kind: String,
    /// File name, relative to the descriptor's directory.
    pub file: String,
    /// Start offset in the extent file, in sectors (FLAT extents only).
    pub offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HeaderEntry {
    key: String,
    value: String,
    quoted: bool,
}

/// A parsed VMDK descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Descriptor {
    header: Vec<HeaderEntry>,
    pub extents: Vec<Extent>,
    /// Disk database entries, keys without the `ddb.` prefix, in file order.
    pub ddb: Vec<(String, String)>,
}

fn unquote(v: &str) -> (String, bool) {
    let v = v.trim();
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        (v[1..v.len() - 1].to_owned(), true)
    } else {
        (v.to_owned(), false)
    }
}

impl Descriptor {
    /// A descriptor with the given header entries (`(key, value, quoted)`).
    pub fn new(
        header: &[(&str, &str, bool)],
        extents: Vec<Extent>,
        ddb: Vec<(String, String)>,
    ) -> Self {
        let header = header
            .iter()
            .map(|(k, v, q)| HeaderEntry {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
                quoted: *q,
            })
            .collect();
        Self {
            header,
            extents,
            ddb,
        }
    }

    /// Parses descriptor text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, DatastoreError> {
        let err = |line: usize, reason: String| DatastoreError::Descriptor {
            path: path.to_owned(),
            line,
            reason,
        };
        if text.contains('\0') {
            return Err(err(0, "not a text descriptor (contains NUL bytes)".into()));
        }
        let mut d = Self {
            header: Vec::new(),
            extents: Vec::new(),
            ddb: Vec::new(),
        };
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or_default();
            if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
                d.extents
                    .push(Self::parse_extent(line).map_err(|r| err(n, r))?);
            } else if let Some((k, v)) = line.split_once('=') {
                let k = k.trim();
                if k.is_empty() || k.contains(char::is_whitespace) {
                    return Err(err(n, format!("bad key in {line:?}")));
                }
                let (value, quoted) = unquote(v);
                if let Some(key) = k.strip_prefix("ddb.") {
                    d.set_ddb(key, &value);
                } else if let Some(e) = d.header.iter_mut().find(|e| e.key == k) {
                    e.value = value;
                    e.quoted = quoted;
                } else {
                    d.header.push(HeaderEntry {
                        key: k.to_owned(),
                        value,
                        quoted,
                    });
                }
            } else {
                return Err(err(n, format!("unrecognised line {line:?}")));
            }
        }
        if d.extents.is_empty() {
            return Err(err(0, "no extent lines".into()));
        }
        if d.header("createType").is_none() {
            return Err(err(0, "no createType".into()));
        }
        Ok(d)
    }

    fn parse_extent(line: &str) -> Result<Extent, String> {
        let (before, rest) = line
            .split_once('"')
            .ok_or_else(|| format!("extent without quoted file name: {line:?}"))?;
        let (file, after) = rest
            .split_once('"')
            .ok_or_else(|| format!("unterminated file name: {line:?}"))?;
        let mut words = before.split_whitespace();
        let access = words.next().unwrap_or_default().to_owned();
        let sectors = words
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| format!("bad sector count in {line:?}"))?;
        let kind = words
            .next()
            .ok_or_else(|| format!("no extent type in {line:?}"))?;
        if words.next().is_some() || file.is_empty() {
            return Err(format!("malformed extent {line:?}"));
        }
        let offset = match after.trim() {
            "" => None,
            o => Some(
                o.parse::<u64>()
                    .map_err(|_| format!("bad extent offset in {line:?}"))?,
            ),
        };
        Ok(Extent {
            access,
            sectors,
            kind: kind.to_ascii_uppercase(),
            file: file.to_owned(),
            offset,
        })
    }

    /// Reads and parses a descriptor file.
    pub fn load(path: &Path) -> Result<Self, DatastoreError> {
        let meta = fs::metadata(path).map_err(DatastoreError::io("open", path))?;
        if meta.len() > MAX_DESCRIPTOR_BYTES {
            return Err(DatastoreError::Descriptor {
                path: path.to_owned(),
                line: 0,
                reason: format!("{} bytes is too large for a text descriptor", meta.len()),
            });
        }
        let bytes = fs::read(path).map_err(DatastoreError::io("open", path))?;
        let text = String::from_utf8(bytes).map_err(|_| DatastoreError::Descriptor {
            path: path.to_owned(),
            line: 0,
            reason: "not UTF-8 text".into(),
        })?;
        Self::parse(&text, path)
    }

    /// Writes the descriptor atomically: temp file, fsync, rename, fsync directory.
    pub fn store(&self, path: &Path) -> Result<(), DatastoreError> {
        write_atomic(path, self.render().as_bytes())
    }

    /// A header value, unquoted.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.header
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }

    /// Sets (or appends) a header value.
    pub fn set_header(&mut self, key: &str, value: &str, quoted: bool) {
        if let Some(e) = self.header.iter_mut().find(|e| e.key == key) {
            e.value = value.to_owned();
            e.quoted = quoted;
        } else {
            self.header.push(HeaderEntry {
                key: key.to_owned(),
                value: value.to_owned(),
                quoted,
            });
        }
    }

    /// Removes a header key.
    pub fn remove_header(&mut self, key: &str) {
        self.header.retain(|e| e.key != key);
    }

    /// The content ID (`CID`, hex).
    pub fn cid(&self) -> Option<u32> {
        self.header("CID")
            .and_then(|v| u32::from_str_radix(v, 16).ok())
    }

    /// The parent's content ID (`parentCID`, hex; `ffffffff` for a base disk).
    pub fn parent_cid(&self) -> Option<u32> {
        self.header("parentCID")
            .and_then(|v| u32::from_str_radix(v, 16).ok())
    }

    /// Sets `CID` and the matching tail of `ddb.longContentID`.
    pub fn set_cid(&mut self, cid: u32) {
        self.set_header("CID", &format!("{cid:08x}"), false);
        let long = match self.ddb_value("longContentID") {
            Some(l) if l.len() == 32 => format!("{}{cid:08x}", &l[..24]),
            _ => format!("{:024x}{cid:08x}", u128::from(cid) * 0x0001_0001_0001),
        };
        self.set_ddb("longContentID", &long);
    }

    /// The `parentFileNameHint`, if this is a child disk.
    pub fn parent_file_name_hint(&self) -> Option<&str> {
        self.header("parentFileNameHint")
    }

    /// The `changeTrackPath`, if change tracking is on.
    pub fn change_track_path(&self) -> Option<&str> {
        self.header("changeTrackPath")
    }

    /// A ddb value by key without the `ddb.` prefix.
    pub fn ddb_value(&self, key: &str) -> Option<&str> {
        self.ddb
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or appends) a ddb value.
    pub fn set_ddb(&mut self, key: &str, value: &str) {
        if let Some(e) = self.ddb.iter_mut().find(|(k, _)| k == key) {
            e.1 = value.to_owned();
        } else {
            self.ddb.push((key.to_owned(), value.to_owned()));
        }
    }

    /// Renders the descriptor text as ESXi lays it out.
    pub fn render(&self) -> String {
        let mut s = String::from("# Disk DescriptorFile\n");
        for e in &self.header {
            if e.quoted {
                s.push_str(&format!("{}=\"{}\"\n", e.key, e.value));
            } else {
                s.push_str(&format!("{}={}\n", e.key, e.value));
            }
        }
        s.push_str("\n# Extent description\n");
        for x in &self.extents {
            s.push_str(&format!(
                "{} {} {} \"{}\"",
                x.access, x.sectors, x.kind, x.file
            ));
            if let Some(o) = x.offset {
                s.push_str(&format!(" {o}"));
            }
            s.push('\n');
        }
        s.push_str("\n# The Disk Data Base\n#DDB\n\n");
        for (k, v) in &self.ddb {
            s.push_str(&format!("ddb.{k} = \"{v}\"\n"));
        }
        s
    }
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename,
/// then fsync of the directory so the rename itself is durable.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DatastoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(DatastoreError::io("create", &tmp))?;
        f.write_all(bytes)
            .map_err(DatastoreError::io("write", &tmp))?;
        f.sync_all().map_err(DatastoreError::io("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(DatastoreError::io("rename", path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory so renames and unlinks in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), DatastoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(DatastoreError::io("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRICKY: &str = "# Disk DescriptorFile\r\n\
        version=1\n\
        encoding = \"UTF-8\"\n\
        CID=1a2b3c4d\n\
        parentCID=ffffffff\n\
        isNativeSnapshot=\"no\"\n\
        createType=\"vmfs\"\n\
        \n\
        # Extent description\n\
        \tRW   8192  VMFS \"my disk-flat.vmdk\"\n\
        \n\
        # The Disk Data Base \n\
        #DDB\n\
        ddb.adapterType=\"lsilogic\"\n\
        ddb.uuid = \"60 00 C2 9a 1b 2c 3d 4e-5f 60 71 82 93 a4 b5 c6\"\n\
          ddb.toolsVersion = \"12345\"   \n\
        ddb.empty = \"\"\n";

    #[test]
    fn parses_tricky_input_and_keeps_unknown_keys() {
        let d = Descriptor::parse(TRICKY, Path::new("t.vmdk")).unwrap();
        assert_eq!(d.cid(), Some(0x1a2b_3c4d));
        assert_eq!(d.parent_cid(), Some(0xffff_ffff));
        assert_eq!(d.header("createType"), Some("vmfs"));
        assert_eq!(d.header("isNativeSnapshot"), Some("no"));
        assert_eq!(d.extents.len(), 1);
        assert_eq!(d.extents[0].file, "my disk-flat.vmdk");
        assert_eq!(d.extents[0].sectors, 8192);
        assert_eq!(d.extents[0].kind, "VMFS");
        assert_eq!(d.ddb_value("toolsVersion"), Some("12345"));
        assert_eq!(d.ddb_value("empty"), Some(""));
        assert_eq!(
            d.ddb_value("uuid"),
            Some("60 00 C2 9a 1b 2c 3d 4e-5f 60 71 82 93 a4 b5 c6")
        );
        let again = Descriptor::parse(&d.render(), Path::new("t.vmdk")).unwrap();
        assert_eq!(again, d);
        assert!(d.render().contains("encoding=\"UTF-8\"\n"));
        assert!(d.render().contains("version=1\n"));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "createType=\"vmfs\"\n",
            "createType=\"vmfs\"\nRW x VMFS \"a\"\n",
            "createType=\"vmfs\"\nRW 8 VMFS \"a\n",
            "createType=\"vmfs\"\nRW 8 VMFS \"a\"\nthis is not a line\n",
            "KDMV\0\0\0binary",
        ] {
            let e = Descriptor::parse(bad, Path::new("bad.vmdk")).unwrap_err();
            assert!(e.to_string().contains("bad.vmdk"), "{e}");
        }
    }

    #[test]
    fn set_cid_updates_long_content_id() {
        let mut d = Descriptor::parse(TRICKY, Path::new("t.vmdk")).unwrap();
        d.set_cid(0xdead_beef);
        assert_eq!(d.cid(), Some(0xdead_beef));
        assert!(d.ddb_value("longContentID").unwrap().ends_with("deadbeef"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.vmdk");
        d.store(&p).unwrap();
        assert_eq!(Descriptor::load(&p).unwrap(), d);
    }
}
