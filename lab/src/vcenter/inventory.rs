//! The inventory around the VMs, persisted in `<root>/vcenter/inventory.json`: the root
//! folder, one datacenter with its four folders, the VM folder tree (with `Namespaces`),
//! one cluster with one host and its resource pools, and the datastores (directories
//! under `<root>/datastores/`). VMs themselves live in the lab's `vms/*.json`; a VM's
//! parent folder is the folder whose inventory path equals the VM's `folder`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fault::Fault;
use crate::datastore::write_atomic;

/// The inventory root.
pub(crate) const ROOT_FOLDER: &str = "group-d1";
/// The datacenter.
pub(crate) const DATACENTER: &str = "datacenter-2";
/// The datacenter's VM folder.
pub(crate) const VM_FOLDER: &str = "group-v3";
/// The datacenter's host folder.
pub(crate) const HOST_FOLDER: &str = "group-h4";
/// The datacenter's datastore folder.
pub(crate) const DATASTORE_FOLDER: &str = "group-s5";
/// The datacenter's network folder.
pub(crate) const NETWORK_FOLDER: &str = "group-n6";
/// The cluster.
pub(crate) const CLUSTER: &str = "domain-c7";
/// The host.
pub(crate) const HOST: &str = "host-8";
/// The cluster's root resource pool.
pub(crate) const ROOT_POOL: &str = "resgroup-9";
/// The `Namespaces` pool, parent of every Supervisor namespace's pool.
pub(crate) const NAMESPACES_POOL: &str = "resgroup-11";

/// A folder (the root, the datacenter folders, VM folders).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FolderEntry {
    /// `group-vN`.
    pub moref: String,
    /// Name.
    pub name: String,
    /// Parent folder, or the datacenter for its four folders; `None` for the root.
    pub parent: Option<String>,
    /// `childType`.
    pub child_type: Vec<String>,
}

/// A resource pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PoolEntry {
    /// `resgroup-N`.
    pub moref: String,
    /// Name.
    pub name: String,
    /// Parent pool (`None` for the cluster's root pool).
    pub parent: Option<String>,
}

/// A datastore.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DatastoreEntry {
    /// `datastore-N`.
    pub moref: String,
    /// Name (the directory under `datastores/`).
    pub name: String,
}

/// `<root>/vcenter/inventory.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Inventory {
    /// vCenter instance UUID (`about.instanceUuid`).
    pub instance_uuid: String,
    /// Datacenter name.
    pub datacenter_name: String,
    /// Cluster name.
    pub cluster_name: String,
    /// Host name.
    pub host_name: String,
    /// Every folder.
    pub folders: Vec<FolderEntry>,
    /// Every resource pool.
    pub pools: Vec<PoolEntry>,
    /// Every datastore.
    pub datastores: Vec<DatastoreEntry>,
    /// Next number for new folder/pool/datastore morefs.
    pub next_id: u64,
}

fn folder(moref: &str, name: &str, parent: Option<&str>, child_type: &[&str]) -> FolderEntry {
    FolderEntry {
        moref: moref.into(),
        name: name.into(),
        parent: parent.map(str::to_owned),
        child_type: child_type.iter().map(|s| (*s).to_owned()).collect(),
    }
}

const VM_CHILD_TYPES: &[&str] = &["Folder", "VirtualMachine", "VirtualApp"];

impl Inventory {
    fn path(root: &Path) -> PathBuf {
        root.join("vcenter").join("inventory.json")
    }

    fn default_inventory() -> Self {
        Self {
            instance_uuid: uuid::Uuid::new_v4().to_string(),
            datacenter_name: "dc1".into(),
            cluster_name: "cluster1".into(),
            host_name: "esxi-1.lab.local".into(),
            folders: vec![
                folder(ROOT_FOLDER, "Datacenters", None, &["Folder", "Datacenter"]),
                folder(VM_FOLDER, "vm", Some(DATACENTER), VM_CHILD_TYPES),
                folder(
                    HOST_FOLDER,
                    "host",
                    Some(DATACENTER),
                    &["Folder", "ComputeResource"],
                ),
                folder(
                    DATASTORE_FOLDER,
                    "datastore",
                    Some(DATACENTER),
                    &["Folder", "Datastore"],
                ),
                folder(
                    NETWORK_FOLDER,
                    "network",
                    Some(DATACENTER),
                    &["Folder", "Network"],
                ),
                folder("group-v10", "Namespaces", Some(VM_FOLDER), VM_CHILD_TYPES),
            ],
            pools: vec![
                PoolEntry {
                    moref: ROOT_POOL.into(),
                    name: "Resources".into(),
                    parent: None,
                },
                PoolEntry {
                    moref: NAMESPACES_POOL.into(),
                    name: "Namespaces".into(),
                    parent: Some(ROOT_POOL.into()),
                },
            ],
            datastores: Vec::new(),
            next_id: 100,
        }
    }

    /// Loads the inventory, creating the default one on first use; datastore
    /// directories that appeared since are added.
    pub(crate) fn load(root: &Path) -> std::io::Result<Self> {
        let path = Self::path(root);
        let mut inv = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default_inventory(),
            Err(e) => return Err(e),
        };
        let mut names: Vec<String> = match std::fs::read_dir(root.join("datastores")) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        for name in names {
            if !inv.datastores.iter().any(|d| d.name == name) {
                let moref = format!("datastore-{}", inv.next_id);
                inv.next_id += 1;
                inv.datastores.push(DatastoreEntry { moref, name });
            }
        }
        inv.save(root)?;
        Ok(inv)
    }

    /// Writes the inventory atomically.
    pub(crate) fn save(&self, root: &Path) -> std::io::Result<()> {
        let path = Self::path(root);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(&path, &bytes).map_err(std::io::Error::other)
    }

    /// A folder by moref.
    pub(crate) fn folder(&self, moref: &str) -> Option<&FolderEntry> {
        self.folders.iter().find(|f| f.moref == moref)
    }

    /// A pool by moref.
    pub(crate) fn pool(&self, moref: &str) -> Option<&PoolEntry> {
        self.pools.iter().find(|p| p.moref == moref)
    }

    /// The pool `name` below pool `parent`, created when it is not there (a Supervisor
    /// namespace's pool below `Namespaces`).
    pub(crate) fn ensure_pool(&mut self, parent: &str, name: &str) -> Result<String, Fault> {
        if self.pool(parent).is_none() {
            return Err(Fault::not_found_object("ResourcePool", parent));
        }
        if name.is_empty() || name.len() > 80 {
            return Err(Fault::invalid_argument("name"));
        }
        if let Some(p) = self
            .pools
            .iter()
            .find(|p| p.parent.as_deref() == Some(parent) && p.name == name)
        {
            return Ok(p.moref.clone());
        }
        let moref = format!("resgroup-{}", self.next_id);
        self.next_id += 1;
        self.pools.push(PoolEntry {
            moref: moref.clone(),
            name: name.to_owned(),
            parent: Some(parent.to_owned()),
        });
        Ok(moref)
    }

    /// Removes the pool `name` below `parent`, if there is one (a namespace's pool: the
    /// lab makes no pools below it).
    pub(crate) fn remove_pool(&mut self, parent: &str, name: &str) {
        self.pools
            .retain(|p| !(p.parent.as_deref() == Some(parent) && p.name == name));
    }

    /// A datastore by name.
    pub(crate) fn datastore_by_name(&self, name: &str) -> Option<&DatastoreEntry> {
        self.datastores.iter().find(|d| d.name == name)
    }

    /// The inventory path of a VM folder (`/dc1/vm/Namespaces/ns`), `None` for folders
    /// outside the datacenter's VM tree.
    pub(crate) fn folder_path(&self, moref: &str) -> Option<String> {
        if moref == VM_FOLDER {
            return Some(format!("/{}/vm", self.datacenter_name));
        }
        let f = self.folder(moref)?;
        let parent = f.parent.as_deref()?;
        Some(format!("{}/{}", self.folder_path(parent)?, f.name))
    }

    /// The VM folder with this inventory path.
    pub(crate) fn folder_by_path(&self, path: &str) -> Option<&FolderEntry> {
        let path = path.trim_end_matches('/');
        self.folders
            .iter()
            .find(|f| self.folder_path(&f.moref).as_deref() == Some(path))
    }

    /// Child folders of `parent`.
    pub(crate) fn child_folders(&self, parent: &str) -> impl Iterator<Item = &FolderEntry> {
        self.folders
            .iter()
            .filter(move |f| f.parent.as_deref() == Some(parent))
    }

    /// CreateFolder.
    pub(crate) fn create_folder(&mut self, parent: &str, name: &str) -> Result<String, Fault> {
        let p = self
            .folder(parent)
            .ok_or_else(|| Fault::not_found_object("Folder", parent))?;
        if !p.child_type.iter().any(|t| t == "Folder") {
            return Err(Fault::not_found_object("Folder", parent));
        }
        if name.is_empty() || name.len() > 80 || name.contains('/') {
            return Err(Fault::invalid_argument("name"));
        }
        if let Some(dup) = self.child_folders(parent).find(|f| f.name == name) {
            return Err(Fault::duplicate_name(name, "Folder", &dup.moref));
        }
        let prefix = match p.child_type.first().map(String::as_str) {
            _ if p.child_type.iter().any(|t| t == "VirtualMachine") => "group-v",
            _ => "group-",
        };
        let child_type = p.child_type.clone();
        let moref = format!("{prefix}{}", self.next_id);
        self.next_id += 1;
        self.folders.push(FolderEntry {
            moref: moref.clone(),
            name: name.to_owned(),
            parent: Some(parent.to_owned()),
            child_type,
        });
        Ok(moref)
    }

    /// The VM folder at `path`, created with its missing ancestors (below `/dc1/vm`).
    pub(crate) fn ensure_folder_path(&mut self, path: &str) -> Result<String, Fault> {
        let base = format!("/{}/vm", self.datacenter_name);
        let rest = path
            .trim_end_matches('/')
            .strip_prefix(&base)
            .ok_or_else(|| Fault::invalid_argument("folder"))?;
        let mut current = VM_FOLDER.to_owned();
        for name in rest.split('/').filter(|s| !s.is_empty()) {
            let existing = self
                .child_folders(&current)
                .find(|f| f.name == name)
                .map(|f| f.moref.clone());
            current = match existing {
                Some(m) => m,
                None => self.create_folder(&current, name)?,
            };
        }
        Ok(current)
    }

    /// Removes a folder and its sub-folders; returns their inventory paths.
    pub(crate) fn remove_folder(&mut self, moref: &str) -> Vec<String> {
        let mut gone = vec![moref.to_owned()];
        let mut i = 0;
        while i < gone.len() {
            let kids: Vec<String> = self
                .child_folders(&gone[i])
                .map(|f| f.moref.clone())
                .collect();
            gone.extend(kids);
            i += 1;
        }
        let paths = gone.iter().filter_map(|m| self.folder_path(m)).collect();
        self.folders.retain(|f| !gone.contains(&f.moref));
        paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tree_paths_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("datastores/ds1")).unwrap();
        let mut inv = Inventory::load(dir.path()).unwrap();
        assert_eq!(inv.datastores[0].name, "ds1");
        assert_eq!(inv.folder_path("group-v10").unwrap(), "/dc1/vm/Namespaces");
        let ns = inv.ensure_folder_path("/dc1/vm/Namespaces/demo").unwrap();
        assert_eq!(
            inv.folder_by_path("/dc1/vm/Namespaces/demo").unwrap().moref,
            ns
        );
        assert_eq!(
            inv.ensure_folder_path("/dc1/vm/Namespaces/demo").unwrap(),
            ns
        );
        let err = inv.create_folder("group-v10", "demo").unwrap_err();
        assert_eq!(err.kind, "DuplicateName");
        inv.save(dir.path()).unwrap();
        let again = Inventory::load(dir.path()).unwrap();
        assert_eq!(again.instance_uuid, inv.instance_uuid);
        assert!(again.folder(&ns).is_some());
        let mut again = again;
        assert_eq!(again.remove_folder("group-v10").len(), 2);
        assert!(again.folder(&ns).is_none());
    }
}
