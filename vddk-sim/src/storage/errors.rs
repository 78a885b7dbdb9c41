//! Lab errors → VIX codes, keeping the lab's message (and its sources) as the detail.

use std::error::Error;

use lab::datastore::DatastoreError;
use lab::vmstate::LabError;
use vddk_sys::{
    VIX_E_DISK_INVAL, VIX_E_DISK_KEY_NOTFOUND, VIX_E_DISK_OUTOFRANGE, VIX_E_FAIL,
    VIX_E_FILE_ACCESS_ERROR, VIX_E_FILE_ALREADY_LOCKED, VIX_E_FILE_NOT_FOUND, VIX_E_FILE_READ_ONLY,
    VIX_E_INVALID_ARG, VIX_E_SNAPSHOT_NOTFOUND, VIX_E_VM_NOT_FOUND,
};

use crate::vix::VixCallError;

/// The error's message followed by its sources.
fn chain_text(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

pub(super) fn datastore_code(err: &DatastoreError) -> u32 {
    match err {
        DatastoreError::InvalidPath { .. } | DatastoreError::NotFound { .. } => {
            VIX_E_FILE_NOT_FOUND
        }
        DatastoreError::Io { .. } => VIX_E_FILE_ACCESS_ERROR,
        DatastoreError::Descriptor { .. }
        | DatastoreError::Delta { .. }
        | DatastoreError::Ctk { .. }
        | DatastoreError::Chain { .. } => VIX_E_DISK_INVAL,
        DatastoreError::Unaligned { .. } | DatastoreError::InvalidMetadata { .. } => {
            VIX_E_INVALID_ARG
        }
        DatastoreError::OutOfRange { .. } => VIX_E_DISK_OUTOFRANGE,
        DatastoreError::ReadOnly { .. } => VIX_E_FILE_READ_ONLY,
        // ESXi refuses to open a locked (in use or snapshot-frozen) disk for writing with
        // "Failed to lock the file".
        DatastoreError::Frozen { .. } | DatastoreError::Busy { .. } => VIX_E_FILE_ALREADY_LOCKED,
        DatastoreError::MetadataKeyNotFound { .. } => VIX_E_DISK_KEY_NOTFOUND,
        _ => VIX_E_FAIL,
    }
}

pub(super) fn from_datastore(err: DatastoreError) -> VixCallError {
    VixCallError::new(datastore_code(&err), chain_text(&err))
}

pub(super) fn from_lab(err: LabError) -> VixCallError {
    let code = match &err {
        LabError::VmNotFound(_) => VIX_E_VM_NOT_FOUND,
        LabError::SnapshotNotFound { .. } => VIX_E_SNAPSHOT_NOTFOUND,
        LabError::DiskNotFound { .. } => VIX_E_FILE_NOT_FOUND,
        LabError::Datastore { source, .. } => datastore_code(source),
        _ => VIX_E_FAIL,
    };
    VixCallError::new(code, chain_text(&err))
}
