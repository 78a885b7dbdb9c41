//! Value types of the vSphere clients: managed object references ([`MoRef`]) and, re-exported
//! from [`crate::ids`] where they are defined once, the domain newtypes (`VmMoref`,
//! `SnapshotMoref`, `DiskKey`, `ChangeId`, …).

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

pub use crate::ids::{
    ChangeId, DatastoreMoref, DiskKey, FolderMoref, ResourcePoolMoref, SnapshotMoref, TaskMoref,
    VmMoref,
};

/// Gives each managed-object newtype of [`crate::ids`] its typed [`MoRef`].
macro_rules! impl_moref {
    ($($name:ty),* $(,)?) => {
        $(
            impl $name {
                /// The reference as a typed [`MoRef`].
                #[must_use]
                pub fn moref(&self) -> MoRef {
                    MoRef::new(Self::KIND, self.0.clone())
                }
            }
        )*
    };
}

impl_moref!(
    VmMoref,
    SnapshotMoref,
    FolderMoref,
    ResourcePoolMoref,
    TaskMoref,
    DatastoreMoref,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moref_newtypes_carry_their_kind() {
        let vm = VmMoref::from("vm-42");
        assert_eq!(vm.moref(), MoRef::new("VirtualMachine", "vm-42"));
        assert_eq!(vm.to_string(), "vm-42");
    }
}
