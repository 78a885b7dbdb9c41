//! `libvixDiskLib.so.8`: the VDDK C ABI implemented over the lab's datastores.
//!
//! The agent loads this library through its real FFI path (dlopen + dlsym of every
//! `VixDiskLib_*` symbol of `vddk-sys/include/vddk.h`), exactly as it loads VMware's, so it
//! keeps VDDK's layouts, error codes and call semantics (../shared/reference/VDDK.md §12).
//!
//! Layout:
//! - [`ffi`]: the exports; each catches panics and maps errors to VixError codes.
//! - `library`: InitEx/Exit state, the background thread, the Open/Close hazard detector.
//! - `connection`, `params`: ConnectEx validation against the lab's vCenter.
//! - `vcenter`: the blocking vim25 SOAP client of the control plane (see below).
//! - `disk`: an open handle, its sync I/O and its async worker thread.
//! - `storage`: the seam to the lab's datastores and VM state.
//! - `handles`, `alloc`: opaque handle tokens and library-owned C allocations.
//! - `hotadd`: hotadd transport (attaching snapshot files to the proxy VM) and Cleanup.
//! - `vix`, `log`, `config`: error texts, log callbacks (through `log_call.c`), config file.
//!
//! Control plane and data path: like real VDDK, ConnectEx, PrepareForAccess, EndAccess
//! and Disconnect talk to vCenter — the lab's, started by `vadp-agent lab serve` or
//! `lab::vcenter::InProcessVcenter` — over vim25 SOAP (RetrieveServiceContent, Login or a
//! session cookie checked with CurrentTime, RetrievePropertiesEx of the VM's `name` and
//! `snapshot`, AuthorizationManager.DisableMethods/EnableMethods of `RelocateVM_Task`
//! with the identity as source, Logout). The server is the connect parameters'
//! `serverName` and `port` (0 ⇒ 443; `host:port` in `serverName` is accepted, as the lab
//! records its server that way); the scheme is HTTPS unless `lab.json`'s `vcenter_url`
//! says the lab serves plain HTTP. The TLS session pins the certificate to the thumbprint
//! `lab.json` records; the caller's `thumbPrint` is compared with the certificate's at
//! Open (VIX_E_FAIL on mismatch), as real VDDK does. A refused connection is
//! VIX_E_HOST_NETWORK_CONN_REFUSED, an unknown host VIX_E_HOST_SERVER_NOT_FOUND,
//! InvalidLogin/NotAuthenticated VIX_E_AUTHENTICATION_FAIL, ManagedObjectNotFound
//! VIX_E_VM_NOT_FOUND, a snapshot the VM lacks VIX_E_SNAPSHOT_NOTFOUND, other faults
//! (MethodAlreadyDisabledFault) VIX_E_FAIL with the fault's text. The data path (Open,
//! Read, Write, metadata) reads the datastore files under `vadp.lab.root` directly, as
//! SAN or hotadd transport would. The client is blocking std I/O (rustls for TLS): the
//! cdylib stays free of tokio.
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
mod hotadd;
mod library;
mod log;
mod params;
mod storage;
mod vcenter;
mod vix;
