//! The lab control API, for tests and the demo (not part of vSphere):
//!
//! | request | body | answer |
//! |---|---|---|
//! | `POST /lab/vms` | `{"name", "folder"?, "disks": [{"capacity_bytes", "thin"}]}` | 201 `{"vm": "vm-N"}` |
//! | `GET /lab/vms/{vm}` | | the VM's state file |
//! | `POST /lab/vms/{vm}/disks/{key}/write` | `{"offset", "data"}` (base64) | 204 |
//! | `POST /lab/vms/{vm}/power` | `{"state": "poweredOn"\|"poweredOff"\|"suspended"}` | 204 |
//!
//! `folder` is an inventory path (`/dc1/vm/Namespaces/demo`, default `/dc1/vm`); missing
//! folders are created. Guest writes go through the top of the disk's redo-log chain and
//! update change tracking. Every request needs the SOAP session cookie or HTTP Basic
//! authentication with the lab credentials.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;

use super::http::{api_error, authorised, json};
use super::server::Vcenter;
use crate::vmstate::{DiskKey, LabError, NewDisk, PowerState, VmMoref};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVmRequest {
    name: String,
    #[serde(default)]
    folder: Option<String>,
    #[serde(default)]
    disks: Vec<NewDiskRequest>,
    #[serde(default)]
    change_tracking: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDiskRequest {
    capacity_bytes: u64,
    #[serde(default = "yes")]
    thin: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteRequest {
    offset: u64,
    data: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerRequest {
    state: PowerState,
}

pub(crate) fn routes() -> Router<Arc<Vcenter>> {
    Router::new()
        .route("/lab/vms", post(create_vm))
        .route("/lab/vms/{vm}", get(get_vm))
        .route("/lab/vms/{vm}/disks/{key}/write", post(write_disk))
        .route("/lab/vms/{vm}/power", post(power))
}

fn lab_error(e: &LabError) -> Response {
    let (status, t) = match e {
        LabError::VmNotFound(_) | LabError::DiskNotFound { .. } => {
            (StatusCode::NOT_FOUND, "NOT_FOUND")
        }
        LabError::Datastore { .. } => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "ERROR"),
    };
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    api_error(status, t, &text)
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(api_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            &e.to_string(),
        ))
    })
}

async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn unauthorised() -> Response {
    api_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "session cookie or basic authentication required",
    )
}

async fn create_vm(State(vc): State<Arc<Vcenter>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorised(&vc, &headers) {
        return unauthorised();
    }
    let req: NewVmRequest = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    blocking(move || {
        let folder = req
            .folder
            .unwrap_or_else(|| format!("/{}/vm", vc.inventory().datacenter_name));
        if let Err(f) = vc.modify_inventory(|inv| inv.ensure_folder_path(&folder)) {
            return api_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &f.message);
        }
        let disks: Vec<NewDisk> = req
            .disks
            .iter()
            .map(|d| NewDisk {
                capacity_bytes: d.capacity_bytes,
                thin: d.thin,
                fcd: false,
            })
            .collect();
        let result = vc.lab.create_vm(&req.name, &folder, &disks).and_then(|vm| {
            if req.change_tracking {
                vc.lab.set_change_tracking(&vm, true)?;
            }
            Ok(vm)
        });
        match result {
            Ok(vm) => json(StatusCode::CREATED, &serde_json::json!({ "vm": vm.0 })),
            Err(e) => lab_error(&e),
        }
    })
    .await
}

async fn get_vm(
    State(vc): State<Arc<Vcenter>>,
    Path(vm): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&vc, &headers) {
        return unauthorised();
    }
    blocking(move || match vc.lab.vm(&VmMoref(vm)) {
        Ok(s) => json(StatusCode::OK, &serde_json::to_value(s).unwrap_or_default()),
        Err(e) => lab_error(&e),
    })
    .await
}

async fn write_disk(
    State(vc): State<Arc<Vcenter>>,
    Path((vm, key)): Path<(String, i32)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorised(&vc, &headers) {
        return unauthorised();
    }
    let req: WriteRequest = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let Ok(data) = base64::engine::general_purpose::STANDARD.decode(req.data.as_bytes()) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "data is not base64",
        );
    };
    blocking(move || {
        match vc
            .lab
            .guest_write(&VmMoref(vm), DiskKey(key), req.offset, &data)
        {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => lab_error(&e),
        }
    })
    .await
}

async fn power(
    State(vc): State<Arc<Vcenter>>,
    Path(vm): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorised(&vc, &headers) {
        return unauthorised();
    }
    let req: PowerRequest = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    blocking(move || {
        match vc.lab.modify_vm(&VmMoref(vm), |s| {
            s.power_state = req.state;
            Ok(())
        }) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => lab_error(&e),
        }
    })
    .await
}
