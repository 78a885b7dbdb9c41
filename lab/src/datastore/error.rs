//! The error type of the datastore model.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in [`crate::datastore`]. Each variant names the object
/// (datastore path or host file) it is about.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    /// A datastore path string is malformed.
    #[error("invalid datastore path {path:?}: {reason}")]
    InvalidPath {
        /// The text that was given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A host file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What we were doing (`"open"`, `"read"`, `"write"`, ...).
        op: &'static str,
        /// The host file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A disk file does not exist.
    #[error("disk {path} not found")]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// A disk file already exists.
    #[error("disk {path} already exists")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A disk uuid that is not 16 bytes of hex.
    #[error("invalid disk uuid {value:?}: expected 16 bytes of hex")]
    InvalidUuid {
        /// The value given.
        value: String,
    },
    /// A VMDK text descriptor could not be parsed or is not supported.
    #[error("descriptor {path} line {line}: {reason}")]
    Descriptor {
        /// The descriptor file.
        path: PathBuf,
        /// 1-based line number (0 when the problem is not tied to a line).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A redo-log (delta) file is corrupt or of an unknown format.
    #[error("delta file {path}: {reason}")]
    Delta {
        /// The delta file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A change-tracking (`-ctk`) file is corrupt or of an unknown format.
    #[error("change tracking file {path}: {reason}")]
    Ctk {
        /// The ctk file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The chain of a disk is broken or of a shape we do not support.
    #[error("disk chain of {disk}: {reason}")]
    Chain {
        /// The disk that was opened.
        disk: String,
        /// What is wrong.
        reason: String,
    },
    /// Offset or length is not a multiple of 512 bytes.
    #[error("unaligned access to {disk}: offset {offset} length {len} (must be multiples of 512)")]
    Unaligned {
        /// The disk.
        disk: String,
        /// Requested byte offset.
        offset: u64,
        /// Requested length in bytes.
        len: u64,
    },
    /// The access ends beyond the capacity of the disk.
    #[error("access to {disk} out of range: offset {offset} length {len} capacity {capacity}")]
    OutOfRange {
        /// The disk.
        disk: String,
        /// Requested byte offset.
        offset: u64,
        /// Requested length in bytes.
        len: u64,
        /// Capacity of the disk in bytes.
        capacity: u64,
    },
    /// A write or metadata update on a chain opened read-only.
    #[error("disk {disk} is opened read-only")]
    ReadOnly {
        /// The disk.
        disk: String,
    },
    /// The disk has a child (a snapshot redo log) and is therefore frozen.
    #[error("disk {disk} is frozen: it is the parent of {child}")]
    Frozen {
        /// The disk that was to be written.
        disk: String,
        /// Its child.
        child: String,
    },
    /// Another handle holds the disk open for writing.
    #[error("disk {disk} is locked by another writer")]
    Busy {
        /// The disk.
        disk: String,
    },
    /// A capacity is zero or not a multiple of 512 bytes.
    #[error("invalid capacity {capacity_bytes} bytes (must be a positive multiple of 512)")]
    InvalidCapacity {
        /// The requested capacity.
        capacity_bytes: u64,
    },
    /// A resize would shrink the disk.
    #[error("cannot shrink {disk} from {current_bytes} to {requested_bytes} bytes")]
    Shrink {
        /// The disk.
        disk: String,
        /// Current capacity.
        current_bytes: u64,
        /// Requested capacity.
        requested_bytes: u64,
    },
    /// Change tracking is not enabled for this disk file.
    #[error("change tracking is disabled for {disk}")]
    ChangeTrackingDisabled {
        /// The disk file.
        disk: String,
    },
    /// A changeId string is malformed.
    #[error("malformed changeId {change_id:?}")]
    InvalidChangeId {
        /// The text that was given.
        change_id: String,
    },
    /// The changeId belongs to another change-tracking epoch (CBT was reset).
    #[error("changeId {change_id} does not match change tracking of {disk} (now {current})")]
    ChangeIdMismatch {
        /// The disk file.
        disk: String,
        /// The changeId that was given.
        change_id: String,
        /// The current changeId of the disk file.
        current: String,
    },
    /// The changeId is newer than the disk file's change tracking state.
    #[error("changeId {change_id} is newer than {disk} (at {current})")]
    ChangeIdFromFuture {
        /// The disk file.
        disk: String,
        /// The changeId that was given.
        change_id: String,
        /// The current changeId of the disk file.
        current: String,
    },
    /// A metadata key is not in the descriptor's disk database.
    #[error("metadata key {key:?} not found in {disk}")]
    MetadataKeyNotFound {
        /// The disk.
        disk: String,
        /// The key (without `ddb.`).
        key: String,
    },
    /// A metadata key or value cannot be stored in a descriptor.
    #[error("invalid metadata {key:?} = {value:?}: {reason}")]
    InvalidMetadata {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
}

impl DatastoreError {
    /// Wraps an I/O error with the operation and host file it came from.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| {
            if source.kind() == io::ErrorKind::NotFound && op == "open" {
                Self::NotFound { path }
            } else {
                Self::Io { op, path, source }
            }
        }
    }
}
