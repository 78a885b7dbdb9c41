//! Creating, growing and deleting base disks (descriptor + sparse flat extent).

use std::fs::{self, OpenOptions};
use std::path::Path;

use super::chain::{Link, LinkData, SECTOR_BYTES, named_file, remove_if_exists};
use super::ctk::CtkFile;
use super::descriptor::{Descriptor, Extent, sync_dir};
use super::{DatastoreError, DatastorePath};

/// SCSI/IDE controller type written to `ddb.adapterType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterType {
    /// `lsilogic` (LSI Logic parallel), the ESXi default for most guests.
    #[default]
    LsiLogic,
    /// `lsilogicsas`.
    LsiLogicSas,
    /// `buslogic`.
    BusLogic,
    /// `pvscsi` (VMware paravirtual).
    Pvscsi,
    /// `ide`.
    Ide,
}

impl AdapterType {
    /// The descriptor spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LsiLogic => "lsilogic",
            Self::LsiLogicSas => "lsilogicsas",
            Self::BusLogic => "buslogic",
            Self::Pvscsi => "pvscsi",
            Self::Ide => "ide",
        }
    }
}

/// How [`create_disk`] lays out a new disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOptions {
    /// Thin provisioned (`ddb.thinProvisioned = "1"`). A thick disk reports its whole
    /// capacity as allocated; the flat file stays sparse on the host either way.
    pub thin: bool,
    /// Controller type.
    pub adapter_type: AdapterType,
    /// `ddb.virtualHWVersion`.
    pub virtual_hw_version: u32,
    /// Create a `-ctk.vmdk` file and name it in `changeTrackPath`.
    pub change_tracking: bool,
}

impl Default for DiskOptions {
    fn default() -> Self {
        Self {
            thin: true,
            adapter_type: AdapterType::LsiLogic,
            virtual_hw_version: 19,
            change_tracking: true,
        }
    }
}

/// A random content ID that is neither of ESXi's special values.
pub(crate) fn random_cid() -> u32 {
    let b = uuid::Uuid::new_v4();
    let v = u32::from_le_bytes(b.as_bytes()[..4].try_into().expect("4 bytes"));
    if v >= 0xffff_fffe { 0x1234_5678 } else { v }
}

/// The file name without `.vmdk`.
pub(crate) fn stem(name: &str) -> &str {
    name.strip_suffix(".vmdk").unwrap_or(name)
}

fn geometry(capacity_bytes: u64, adapter: AdapterType) -> (u64, u64, u64) {
    let (heads, sectors) = if adapter == AdapterType::Ide {
        (16, 63)
    } else {
        (255, 63)
    };
    (
        (capacity_bytes / SECTOR_BYTES / (heads * sectors)).max(1),
        heads,
        sectors,
    )
}

fn set_geometry(desc: &mut Descriptor, capacity_bytes: u64) {
    let adapter = match desc.ddb_value("adapterType") {
        Some("ide") => AdapterType::Ide,
        _ => AdapterType::LsiLogic,
    };
    let (c, h, s) = geometry(capacity_bytes, adapter);
    desc.set_ddb("geometry.cylinders", &c.to_string());
    desc.set_ddb("geometry.heads", &h.to_string());
    desc.set_ddb("geometry.sectors", &s.to_string());
}

fn check_capacity(capacity_bytes: u64) -> Result<(), DatastoreError> {
    if capacity_bytes == 0 || !capacity_bytes.is_multiple_of(SECTOR_BYTES) {
        return Err(DatastoreError::InvalidCapacity { capacity_bytes });
    }
    Ok(())
}

/// Creates a base disk: `<name>.vmdk` descriptor, sparse `<name>-flat.vmdk` of
/// `capacity_bytes`, and (if asked) `<name>-ctk.vmdk`. Creates the directory if needed.
///
/// # Errors
/// [`DatastoreError::InvalidCapacity`], [`DatastoreError::AlreadyExists`], I/O errors.
pub fn create_disk(
    root: &Path,
    path: &DatastorePath,
    capacity_bytes: u64,
    options: &DiskOptions,
) -> Result<(), DatastoreError> {
    check_capacity(capacity_bytes)?;
    let host = path.resolve(root);
    if host.exists() {
        return Err(DatastoreError::AlreadyExists { path: host });
    }
    let dir = host.parent().expect("a resolved path has a parent");
    fs::create_dir_all(dir).map_err(DatastoreError::io("create directory", dir))?;
    let stem = stem(path.file_name()).to_owned();
    let flat_name = format!("{stem}-flat.vmdk");
    let flat = named_file(&host, &flat_name)?;
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&flat)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                DatastoreError::AlreadyExists { path: flat.clone() }
            }
            _ => DatastoreError::io("create", &flat)(e),
        })?;
    f.set_len(capacity_bytes)
        .map_err(DatastoreError::io("truncate", &flat))?;
    f.sync_all().map_err(DatastoreError::io("fsync", &flat))?;

    let uuid = uuid::Uuid::new_v4();
    let mut u = *uuid.as_bytes();
    u[..3].copy_from_slice(&[0x60, 0x00, 0xc2]);
    let ddb_uuid = ddb_uuid_text(&u);
    let mut desc = Descriptor::new(
        &[
            ("version", "1", false),
            ("encoding", "UTF-8", true),
            ("CID", "ffffffff", false),
            ("parentCID", "ffffffff", false),
            ("createType", "vmfs", true),
        ],
        vec![Extent {
            access: "RW".into(),
            sectors: capacity_bytes / SECTOR_BYTES,
            kind: "VMFS".into(),
            file: flat_name,
            offset: None,
        }],
        vec![("adapterType".into(), options.adapter_type.as_str().into())],
    );
    set_geometry(&mut desc, capacity_bytes);
    desc.set_cid(random_cid());
    if options.thin {
        desc.set_ddb("thinProvisioned", "1");
    }
    desc.set_ddb("uuid", &ddb_uuid);
    desc.set_ddb("virtualHWVersion", &options.virtual_hw_version.to_string());
    if options.change_tracking {
        let ctk_name = format!("{stem}-ctk.vmdk");
        CtkFile::create(&named_file(&host, &ctk_name)?, capacity_bytes)?;
        desc.set_header("changeTrackPath", &ctk_name, true);
    }
    // The descriptor goes last: a disk exists once its descriptor does.
    desc.store(&host)
}

/// Grows a base disk without snapshots to `new_capacity_bytes`. Resets change tracking
/// (new change UUID), as ESXi does, so older changeIds are rejected.
///
/// # Errors
/// [`DatastoreError::Shrink`], [`DatastoreError::InvalidCapacity`],
/// [`DatastoreError::Frozen`] (has a child), [`DatastoreError::Chain`] (is a redo log),
/// [`DatastoreError::Busy`], I/O errors.
pub fn resize_disk(
    root: &Path,
    path: &DatastorePath,
    new_capacity_bytes: u64,
) -> Result<(), DatastoreError> {
    check_capacity(new_capacity_bytes)?;
    let chain = super::DiskChain::open(root, path, super::OpenMode::ReadWrite)?;
    let current = chain.capacity_bytes();
    if chain.num_links() != 1 {
        return Err(DatastoreError::Chain {
            disk: path.to_string(),
            reason: "only a base disk without snapshots can be resized".into(),
        });
    }
    if new_capacity_bytes < current {
        return Err(DatastoreError::Shrink {
            disk: path.to_string(),
            current_bytes: current,
            requested_bytes: new_capacity_bytes,
        });
    }
    let mut links = chain.into_links();
    let link: &mut Link = &mut links[0];
    if let LinkData::Flat {
        file, path: flat, ..
    } = &link.data
    {
        file.set_len(new_capacity_bytes)
            .map_err(DatastoreError::io("truncate", flat))?;
        file.sync_all().map_err(DatastoreError::io("fsync", flat))?;
    }
    let mut desc = link.desc.clone();
    desc.extents[0].sectors = new_capacity_bytes / SECTOR_BYTES;
    set_geometry(&mut desc, new_capacity_bytes);
    if let Some(name) = desc.change_track_path() {
        CtkFile::create(&named_file(&link.host, name)?, new_capacity_bytes)?;
    }
    desc.set_cid(random_cid());
    desc.store(&link.host)
}

/// Sets a disk's `ddb.uuid` (VirtualDiskManager.SetVirtualDiskUuid). `uuid` is 16 bytes
/// of hex in any of the spellings vSphere uses: `60 00 C2 9a … 4e-5f 60 …` (the
/// descriptor's), `6000C29a-1b2c-3d4e-5f60-718293a4b5c6` (a backing's `uuid`) or plain hex.
///
/// # Errors
/// [`DatastoreError::InvalidUuid`], [`DatastoreError::NotFound`], I/O errors.
pub fn set_disk_uuid(root: &Path, path: &DatastorePath, uuid: &str) -> Result<(), DatastoreError> {
    let bytes = parse_uuid_hex(uuid).ok_or_else(|| DatastoreError::InvalidUuid {
        value: uuid.to_owned(),
    })?;
    let host = path.resolve(root);
    let mut desc = Descriptor::load(&host)?;
    desc.set_ddb("uuid", &ddb_uuid_text(&bytes));
    desc.store(&host)
}

/// The 16 bytes of a uuid written with or without spaces and dashes.
fn parse_uuid_hex(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// `60 00 C2 9a 1b 2c 3d 4e-5f 60 71 82 93 a4 b5 c6`, as ESXi writes `ddb.uuid`.
fn ddb_uuid_text(u: &[u8; 16]) -> String {
    let hex = |s: &[u8]| {
        s.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!("{}-{}", hex(&u[..8]), hex(&u[8..])).replacen("c2", "C2", 1)
}

/// A disk's `ddb.uuid` as vSphere shows it in a backing's `uuid`
/// (`6000C29a-1b2c-3d4e-5f60-718293a4b5c6`); `None` when it is not 16 bytes of hex.
#[must_use]
pub fn backing_uuid(ddb_uuid: &str) -> Option<String> {
    let u = parse_uuid_hex(ddb_uuid)?;
    let h: String = u.iter().map(|x| format!("{x:02x}")).collect();
    let h = h.replacen("c2", "C2", 1);
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// Deletes one disk file: descriptor, data extent and ctk. Refuses a disk with a child.
///
/// # Errors
/// [`DatastoreError::Frozen`], [`DatastoreError::NotFound`], I/O errors.
pub fn delete_disk(root: &Path, path: &DatastorePath) -> Result<(), DatastoreError> {
    if let Some(child) = super::snapshot::children_of(root, path)?.into_iter().next() {
        return Err(DatastoreError::Frozen {
            disk: path.to_string(),
            child: child.to_string(),
        });
    }
    let host = path.resolve(root);
    let desc = Descriptor::load(&host)?;
    // Descriptor first: once it is gone the disk no longer exists; leftovers are inert.
    fs::remove_file(&host).map_err(DatastoreError::io("remove", &host))?;
    for x in &desc.extents {
        remove_if_exists(&named_file(&host, &x.file)?)?;
    }
    if let Some(ctk) = desc.change_track_path() {
        remove_if_exists(&named_file(&host, ctk)?)?;
    }
    sync_dir(host.parent().expect("a resolved path has a parent"))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::datastore::{DiskChain, OpenMode};

    fn pattern(offset: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| ((offset + i) / 512 % 251) as u8 ^ 0x5a)
            .collect()
    }

    #[test]
    fn qemu_reads_base_disk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let p = DatastorePath::parse("[ds1] web-1/disk-0.vmdk").unwrap();
        let cap = 4 << 20;
        create_disk(root, &p, cap, &DiskOptions::default()).unwrap();
        let mut raw = vec![0u8; to_usize_t(cap)];
        let mut d = DiskChain::open(root, &p, OpenMode::ReadWrite).unwrap();
        for (off, len) in [
            (0u64, 4096usize),
            (1 << 20, 64 * 1024 + 512),
            (cap - 512, 512),
        ] {
            let data = pattern(off, len);
            d.write_at(off, &data).unwrap();
            raw[to_usize_t(off)..to_usize_t(off) + len].copy_from_slice(&data);
        }
        d.flush().unwrap();
        drop(d);
        let img = root.join("img.raw");
        fs::write(&img, &raw).unwrap();
        let host = p.resolve(root);
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&host)
            .output()
            .unwrap();
        assert!(
            info.status.success(),
            "{}",
            String::from_utf8_lossy(&info.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(json["format"], "vmdk");
        assert_eq!(json["virtual-size"], cap);
        let cmp = Command::new("qemu-img")
            .args(["compare", "-f", "vmdk", "-F", "raw"])
            .arg(&host)
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            cmp.status.success(),
            "{}",
            String::from_utf8_lossy(&cmp.stdout)
        );
        // The flat extent stays sparse: far less allocated than the capacity.
        let flat = root.join("datastores/ds1/web-1/disk-0-flat.vmdk");
        assert_eq!(fs::metadata(&flat).unwrap().len(), cap);
        let text = fs::read_to_string(&host).unwrap();
        for needle in [
            "createType=\"vmfs\"",
            "RW 8192 VMFS \"disk-0-flat.vmdk\"",
            "ddb.uuid = \"60 00 C2 ",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
    }

    fn to_usize_t(v: u64) -> usize {
        usize::try_from(v).unwrap()
    }

    #[test]
    fn resize_grows_base_and_rejects_bad_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let p = DatastorePath::parse("[ds1] vm/disk.vmdk").unwrap();
        assert!(matches!(
            create_disk(root, &p, 1000, &DiskOptions::default()),
            Err(DatastoreError::InvalidCapacity { .. })
        ));
        create_disk(root, &p, 1 << 20, &DiskOptions::default()).unwrap();
        assert!(matches!(
            create_disk(root, &p, 1 << 20, &DiskOptions::default()),
            Err(DatastoreError::AlreadyExists { .. })
        ));
        assert!(matches!(
            resize_disk(root, &p, 512),
            Err(DatastoreError::Shrink { .. })
        ));
        resize_disk(root, &p, 2 << 20).unwrap();
        assert_eq!(
            DiskChain::open(root, &p, OpenMode::ReadOnly)
                .unwrap()
                .capacity_bytes(),
            2 << 20
        );
        delete_disk(root, &p).unwrap();
        assert!(
            fs::read_dir(p.resolve(root).parent().unwrap())
                .unwrap()
                .next()
                .is_none()
        );
    }
}
