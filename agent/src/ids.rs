//! Shared value types (ARCHITECTURE §2): domain newtypes defined once and used by every module.
//!
//! Offsets and sizes are plain `u64` bytes; everything that names an object gets a newtype here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// BLAKE3 digest of a chunk's plain (uncompressed) data.
///
/// The all-zero digest is reserved as the marker for a chunk of zeros, which is never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkDigest(pub [u8; 32]);

impl ChunkDigest {
    /// The marker for an all-zero chunk (a hole); no chunk file exists for it.
    pub const ZERO: Self = Self([0; 32]);

    /// Digest of `data` with BLAKE3.
    #[must_use]
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Whether this is the zero-chunk marker.
    #[must_use]
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// The digest's `n`-th 8 bytes (0–3) as a little-endian number: uniform, as the
    /// digest is, for splitting chunks into shares or keying them compactly.
    #[must_use]
    pub fn word(&self, n: usize) -> u64 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.0[n * 8..n * 8 + 8]);
        u64::from_le_bytes(word)
    }

    /// Lower-case hex form (64 characters), as used in chunk file names.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkDigest({})", self.to_hex())
    }
}

/// In JSON, the hex form.
impl Serialize for ChunkDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Error parsing one of the identifiers of this module.
#[derive(Debug, thiserror::Error)]
#[error("invalid {kind} {text:?}")]
pub struct IdParseError {
    /// Which identifier was being parsed.
    pub kind: &'static str,
    /// The rejected text.
    pub text: String,
}

impl FromStr for ChunkDigest {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| IdParseError {
            kind: "chunk digest",
            text: s.to_owned(),
        })?;
        Ok(Self(out))
    }
}

/// Identifier of a restore point (a UUID, assigned before its data is written).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RestorePointId(pub uuid::Uuid);

impl RestorePointId {
    /// A fresh random identifier.
    #[must_use]
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for RestorePointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for RestorePointId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| IdParseError {
                kind: "restore point id",
                text: s.to_owned(),
            })
    }
}

/// Identifier of a backup job (one run over a group of VMs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    /// A fresh random identifier.
    #[must_use]
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for JobId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| IdParseError {
                kind: "job id",
                text: s.to_owned(),
            })
    }
}

/// vSphere device key of a virtual disk (e.g. 2000 for the first SCSI disk).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DiskKey(pub i32);

impl fmt::Display for DiskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Defines a newtype for one kind of vSphere managed object id (`vm-42`), with the managed
/// object type it refers to as `KIND`.
macro_rules! moref_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The managed object type this id refers to.
            pub const KIND: &'static str = $kind;

            /// The bare id, e.g. `vm-42`.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }
    };
}

moref_newtype!(
    /// A virtual machine's managed object id (`vm-42`).
    VmMoref,
    "VirtualMachine"
);
moref_newtype!(
    /// A snapshot's managed object id (`snapshot-7`).
    SnapshotMoref,
    "VirtualMachineSnapshot"
);
moref_newtype!(
    /// A folder's managed object id (`group-v3`).
    FolderMoref,
    "Folder"
);
moref_newtype!(
    /// A resource pool's managed object id (`resgroup-9`).
    ResourcePoolMoref,
    "ResourcePool"
);
moref_newtype!(
    /// A task's managed object id (`task-12`).
    TaskMoref,
    "Task"
);
moref_newtype!(
    /// A datastore's managed object id (`datastore-11`).
    DatastoreMoref,
    "Datastore"
);

/// A CBT change identifier (`"<uuid>/<seq>"`), or `*` for "everything allocated".
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChangeId(pub String);

impl ChangeId {
    /// The change id meaning "every allocated area" (first full backup).
    #[must_use]
    pub fn all() -> Self {
        Self("*".to_owned())
    }

    /// The change-tracking UUID part (before the last `/`), if the id has one. When it
    /// differs from the new snapshot's, the chain is broken (VSPHERE.md §A.7).
    #[must_use]
    pub fn tracking_uuid(&self) -> Option<&str> {
        self.0.rsplit_once('/').map(|(uuid, _)| uuid)
    }

    /// The sequence number part (after the last `/`), if the id has one: it only grows
    /// while the tracking UUID stays the same, so a smaller one means the disk went back
    /// to an earlier state (a snapshot revert).
    #[must_use]
    pub fn sequence(&self) -> Option<u64> {
        self.0
            .rsplit_once('/')
            .and_then(|(_, seq)| seq.parse().ok())
    }
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_round_trip() {
        let d = ChunkDigest::of(b"hello");
        let parsed: ChunkDigest = d.to_hex().parse().unwrap();
        assert_eq!(d, parsed);
        assert!(!d.is_zero());
        assert!("zz".parse::<ChunkDigest>().is_err());
    }

    #[test]
    fn point_id_round_trip() {
        let p = RestorePointId::new_random();
        assert_eq!(p, p.to_string().parse().unwrap());
    }

    #[test]
    fn change_id_uuid_part() {
        let id = ChangeId("52 2d 7b 8f ac 61 51 cc-77 4c 7b ec 91 50 bb 7b/1".into());
        assert_eq!(
            id.tracking_uuid(),
            Some("52 2d 7b 8f ac 61 51 cc-77 4c 7b ec 91 50 bb 7b")
        );
        assert_eq!(ChangeId::all().tracking_uuid(), None);
        assert_eq!(id.sequence(), Some(1));
        assert_eq!(ChangeId::all().sequence(), None);
        assert_eq!(ChangeId("52 2d/x".into()).sequence(), None);
    }

    #[test]
    fn moref_newtypes_serialize_as_their_id() {
        let vm = VmMoref::from("vm-42");
        assert_eq!(serde_json::to_string(&vm).unwrap(), "\"vm-42\"");
        assert_eq!(vm.to_string(), "vm-42");
        assert_eq!(VmMoref::KIND, "VirtualMachine");
    }
}
