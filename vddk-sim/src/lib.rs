//! `libvixDiskLib.so.8`: the VDDK C ABI implemented over the lab's datastores.
//!
//! The agent loads this library through its real FFI path (dlopen + dlsym of every
//! `VixDiskLib_*` symbol of `vddk-sys/include/vddk.h`), exactly as it loads VMware's, so it
//! keeps VDDK's layouts, error codes and call semantics (../shared/reference/VDDK.md §12).
//!
//! Layout:
//! - [`ffi`]: the exports; each catches panics and maps errors to VixError codes.
//! - `library`: InitEx/Exit state, the background thread, the Open/Close hazard detector.
//! - `connection`, `params`: ConnectEx validation against the lab.
//! - `disk`: an open handle, its sync I/O and its async worker thread.
//! - `storage`: the seam to the lab's datastores and VM state.
//! - `handles`, `alloc`: opaque handle tokens and library-owned C allocations.
//! - `vix`, `log`, `config`: error texts, log callbacks (through `log_call.c`), config file.
//!
//! Feature `vddk65` emulates VDDK 6.5: no QueryAllocatedBlocks, FreeBlockList or
//! AllocateConnectParams, and GetInfo returns the 56-byte `VixDiskLibInfoV6`.

// This crate *is* a C library: its whole purpose is to export `extern "C"` functions that
// take raw pointers from C callers, so `unsafe` is required. Every block is documented.
#![allow(unsafe_code)]
// The library name is VMware's (`libvixDiskLib`), not ours to choose.
#![allow(non_snake_case)]

mod alloc;
mod config;
mod connection;
mod disk;
pub mod ffi;
mod handles;
mod library;
mod log;
mod params;
mod storage;
mod vix;
