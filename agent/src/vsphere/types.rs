//! Value types shared by the vSphere clients: managed object references and the domain
//! newtypes (`VmMoref`, `SnapshotMoref`, `DiskKey`, `ChangeId`).
//!
//! The repository branch defines the same newtypes in `agent/src/ids.rs`; these live here
//! until the integrator unifies them (one definition, ARCHITECTURE §2).

use std::fmt;

/// A managed object reference: its type (`VirtualMachine`, `Folder`, `Task`, …) and id
/// (`vm-42`). On the wire: `<elem type="VirtualMachine">vm-42</elem>`.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct MoRef {
    /// The managed object type, e.g. `VirtualMachine`.
    pub kind: String,
    /// The managed object id, e.g. `vm-42`.
    pub value: String,
}

impl MoRef {
    /// A reference of type `kind` with id `value`.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }
}

impl fmt::Display for MoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

macro_rules! moref_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, Debug)]
        pub struct $name(pub String);

        impl $name {
            /// The managed object type this id refers to.
            pub const KIND: &'static str = $kind;

            /// The reference as a typed [`MoRef`].
            #[must_use]
            pub fn moref(&self) -> MoRef {
                MoRef::new($kind, self.0.clone())
            }

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

/// A virtual device key, e.g. `2000` for the first disk on the first SCSI controller.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct DiskKey(pub i32);

impl fmt::Display for DiskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A CBT change id, `"<change-tracking uuid>/<sequence>"`, or `"*"` for "all in use".
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
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
    fn change_id_uuid_part() {
        let id = ChangeId("52 2d 7b 8f ac 61 51 cc-77 4c 7b ec 91 50 bb 7b/1".into());
        assert_eq!(
            id.tracking_uuid(),
            Some("52 2d 7b 8f ac 61 51 cc-77 4c 7b ec 91 50 bb 7b")
        );
        assert_eq!(ChangeId::all().tracking_uuid(), None);
    }

    #[test]
    fn moref_newtypes_carry_their_kind() {
        let vm = VmMoref::from("vm-42");
        assert_eq!(vm.moref(), MoRef::new("VirtualMachine", "vm-42"));
        assert_eq!(vm.to_string(), "vm-42");
    }
}
