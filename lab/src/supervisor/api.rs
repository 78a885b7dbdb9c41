//! The write path of the Kubernetes API: admission (namespace exists, VirtualMachine
//! defaults), the store write, then the VM Operator hooks (namespace folder, VM
//! creation/destruction, reconcile of the VMs a PVC/Secret/ConfigMap may feed).

use serde_json::{Value, json};

use super::store::{KindInfo, Store, SupervisorError};
use super::{Supervisor, kind, lock};

impl Supervisor {
    fn check_namespace(store: &Store, k: &KindInfo, ns: &str) -> Result<(), SupervisorError> {
        if k.namespaced && store.get(&kind("namespaces"), "", ns).is_none() {
            return Err(SupervisorError::new(
                404,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
            ));
        }
        Ok(())
    }

    /// POST.
    pub(crate) fn create(
        &self,
        k: &KindInfo,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, SupervisorError> {
        let mut store = lock(&self.store);
        Self::check_namespace(&store, k, ns)?;
        if let Some(body_ns) = obj["metadata"]["namespace"].as_str()
            && k.namespaced
            && body_ns != ns
        {
            return Err(SupervisorError::bad_request(
                "the namespace of the object does not match the URL",
            ));
        }
        if k.kind == "Namespace" {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            let folder = self.namespace_folder(name);
            let mut inv = lock(&self.inv);
            let moref = inv
                .ensure_folder_path(&folder)
                .map_err(|f| SupervisorError::new(422, "Invalid", f.message))?;
            let pool = inv
                .ensure_pool(crate::vcenter::inventory::NAMESPACES_POOL, name)
                .map_err(|f| SupervisorError::new(422, "Invalid", f.message))?;
            inv.save(self.lab.root())
                .map_err(|e| SupervisorError::new(500, "InternalError", e.to_string()))?;
            // Where the Supervisor records a namespace's vSphere objects (VSPHERE.md §A.11).
            if !obj["metadata"]["annotations"].is_object() {
                obj["metadata"]["annotations"] = json!({});
            }
            let ann = &mut obj["metadata"]["annotations"];
            ann["vmware-system-vm-folder"] = moref.into();
            ann["vmware-system-resource-pool"] = pool.into();
        }
        if k.kind == "VirtualMachine" {
            default_vm(&mut obj);
        }
        let out = store.create(k, ns, obj)?;
        self.after_write(&mut store, k, ns, &out)
    }

    /// PUT.
    pub(crate) fn replace(
        &self,
        k: &KindInfo,
        ns: &str,
        name: &str,
        obj: Value,
    ) -> Result<Value, SupervisorError> {
        let mut store = lock(&self.store);
        let out = store.replace(k, ns, name, obj)?;
        self.after_write(&mut store, k, ns, &out)
    }

    /// PATCH.
    pub(crate) fn patch(
        &self,
        k: &KindInfo,
        ns: &str,
        name: &str,
        content_type: &str,
        patch: &Value,
    ) -> Result<Value, SupervisorError> {
        let mut store = lock(&self.store);
        let out = store.patch(k, ns, name, content_type, patch)?;
        self.after_write(&mut store, k, ns, &out)
    }

    /// DELETE.
    pub(crate) fn delete_object(
        &self,
        k: &KindInfo,
        ns: &str,
        name: &str,
    ) -> Result<Value, SupervisorError> {
        let mut store = lock(&self.store);
        if k.kind == "Namespace" {
            store
                .get(k, "", name)
                .ok_or_else(|| SupervisorError::not_found(k, name))?;
            let folder = self.namespace_folder(name);
            let crs = store.list(&kind("virtualmachines"), Some(name), None)?;
            let vms = self.lab.vms().map_err(lab_error)?;
            if !crs.is_empty() || vms.iter().any(|v| v.folder == folder) {
                return Err(SupervisorError::new(
                    409,
                    "Conflict",
                    format!("namespace {name} still holds virtual machines"),
                ));
            }
            for other in super::KINDS.iter().filter(|k| k.namespaced) {
                for o in store.list(other, Some(name), None)? {
                    let n = o["metadata"]["name"].as_str().unwrap_or_default();
                    store.delete(other, name, n)?;
                }
            }
            let mut inv = lock(&self.inv);
            if let Some(f) = inv.folder_by_path(&folder).map(|f| f.moref.clone()) {
                inv.remove_folder(&f);
            }
            inv.remove_pool(crate::vcenter::inventory::NAMESPACES_POOL, name);
            inv.save(self.lab.root())
                .map_err(|e| SupervisorError::new(500, "InternalError", e.to_string()))?;
        }
        let out = store.delete(k, ns, name)?;
        if k.kind == "VirtualMachine" {
            self.destroy_vm_of(&out)?;
        }
        Ok(out)
    }

    fn after_write(
        &self,
        store: &mut Store,
        k: &KindInfo,
        ns: &str,
        out: &Value,
    ) -> Result<Value, SupervisorError> {
        let name = out["metadata"]["name"].as_str().unwrap_or_default();
        match k.kind {
            "VirtualMachine" => {
                self.reconcile_vm(store, ns, name)?;
                Ok(store.get(k, ns, name).unwrap_or_else(|| out.clone()))
            }
            "PersistentVolumeClaim" | "Secret" | "ConfigMap" => {
                for vm in store.list(&kind("virtualmachines"), Some(ns), None)? {
                    let n = vm["metadata"]["name"].as_str().unwrap_or_default();
                    self.reconcile_vm(store, ns, n)?;
                }
                Ok(store.get(k, ns, name).unwrap_or_else(|| out.clone()))
            }
            _ => Ok(out.clone()),
        }
    }
}

/// A lab failure as a 500 `Status`.
pub(crate) fn lab_error(e: crate::vmstate::LabError) -> SupervisorError {
    SupervisorError::new(500, "InternalError", format!("lab: {e}"))
}

/// The VM Operator webhook's defaults: `spec.biosUUID`, `spec.instanceUUID`, and the
/// cloud-init instance ID (= BIOS UUID).
fn default_vm(obj: &mut Value) {
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    if spec["biosUUID"].as_str().is_none_or(str::is_empty) {
        spec["biosUUID"] = uuid::Uuid::new_v4().to_string().into();
    }
    if spec["instanceUUID"].as_str().is_none_or(str::is_empty) {
        spec["instanceUUID"] = uuid::Uuid::new_v4().to_string().into();
    }
    let bios = spec["biosUUID"].clone();
    if spec["bootstrap"]["cloudInit"].is_object()
        && spec["bootstrap"]["cloudInit"]["instanceID"]
            .as_str()
            .is_none_or(str::is_empty)
    {
        spec["bootstrap"]["cloudInit"]["instanceID"] = bios;
    }
}
