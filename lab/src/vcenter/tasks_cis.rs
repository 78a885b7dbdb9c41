//! vim25 tasks seen as vAPI cis task `Info` (VSPHERE.md §B).

use super::tasks::{TaskRecord, TaskState};

/// The cis `Info` JSON of a task.
pub(crate) fn cis_info(t: &TaskRecord) -> serde_json::Value {
    let status = match t.state {
        TaskState::Queued => "PENDING",
        TaskState::Running => "RUNNING",
        TaskState::Success => "SUCCEEDED",
        TaskState::Error => "FAILED",
    };
    let mut v = serde_json::json!({
        "description": {"id": format!("{}.{}", t.entity.0, t.method), "default_message": t.method, "args": []},
        "service": format!("com.vmware.vim.{}", t.entity.0),
        "operation": t.method,
        "target": {"type": t.entity.0, "id": t.entity.1},
        "status": status,
        "cancelable": false,
        "user": t.user,
        "progress": {"total": 100, "completed": if t.state == TaskState::Success { 100 } else { t.progress.unwrap_or(0) }, "message": {"id": "", "default_message": "", "args": []}},
    });
    if let Some(s) = &t.start_time {
        v["start_time"] = s.clone().into();
    }
    if let Some(s) = &t.complete_time {
        v["end_time"] = s.clone().into();
    }
    if t.method == crate::supervisor::REGISTERVM_TASK {
        v["description"] =
            serde_json::json!({"id": t.method, "default_message": "Register VM", "args": []});
        v["service"] = "com.vmware.vcenter.namespaces.instances".into();
        v["operation"] = "register_VM".into();
    }
    if let Some(e) = &t.error {
        let error_type = match e.kind {
            "VCenterWcpWorkloadRegisterVMVMNotFound" => "NOT_FOUND",
            "VCenterWcpWorkloadRegisterVMAlreadyExistsOnSupervisor" => "ALREADY_EXISTS",
            k if k.starts_with("VCenterWcp") => "ERROR",
            k => k,
        };
        v["error"] = serde_json::json!({"error_type": error_type, "messages": [{"id": e.kind, "default_message": e.message, "args": []}]});
    }
    v
}
