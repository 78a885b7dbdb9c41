//! VM Service (VM Operator) backup data in a VM's ExtraConfig: the `vmservice.*` keys under
//! both spellings, their decoding, and the seed 001 §5.3 validation of a backup
//! (VSPHERE.md §C).
//!
//! - **Owns.** The key table ([`Content`]: code and guide spellings), strict gzip + base64
//!   decoding ([`decode_gzip_base64`]), decoding a VM's keys into [`VmServiceData`]
//!   ([`decode`]) and checking a backup against them ([`validate_backup`]).
//! - **Must not.** Talk to vSphere or the catalog, or change ExtraConfig: the engine reads
//!   the ExtraConfig and disks, calls in here, and stores the [`Validation`]. The raw
//!   `vmservice.*` entries ([`vmservice_entries`]) are preserved opaquely whatever the
//!   validation says: a warning never drops data.
//! - **Strictness.** Decoding accepts only what VM Operator writes (gzip, then standard
//!   base64 with padding); VM Operator's own reader is more lenient (`payload` explains why
//!   we are not). Problems are warnings for the operator, never errors: every defect is
//!   collected, none stops the checks.
//! - **Threads.** Pure functions over borrowed data, no state, no locks.

mod decode;
#[cfg(test)]
pub(crate) mod fixtures;
mod keys;
mod payload;
pub mod related;
mod validate;

pub use decode::{
    BootstrapResource, ClassicDiskData, Problem, PvcDiskData, SUPPORTED_API_VERSIONS,
    VmServiceData, decode,
};
pub use keys::{Content, KeySpelling, VMSERVICE_PREFIX, lookup, vmservice_entries};
pub use payload::{DecodeError, MAX_DECODED_BYTES, decode_gzip_base64, encode_gzip_base64};
pub use validate::{CapturedDisk, Validation, ValidationStatus, validate_backup};
