//! The safe layer over VMware's VDDK (`libvixDiskLib`): the only user of `vddk-sys`, and
//! the only place in the agent with `unsafe` code.
//!
//! # What it owns
//! - Loading the library from a configured `libdir`, newest soname first, and checking its
//!   functions ([`Library`]); re-executing the agent with the library's directory on
//!   `LD_LIBRARY_PATH` first ([`reexec_with_library_path`]).
//! - `InitEx`/`Exit` and the log callbacks, which forward to `tracing` target `vddk`
//!   through a C shim (`log_shim.c`) that formats VDDK's `va_list` ([`Vddk`]).
//! - Connections ([`Connection`]) and disks ([`Disk`]): byte-addressed I/O (checked for
//!   512-byte alignment here, converted to sectors only here), async batches, flush,
//!   allocated extents, metadata, PrepareForAccess/EndAccess.
//! - One error type for failed calls, [`VddkError`] (call, masked VIX code, the library's
//!   text, VM/disk/offset), inside the module's [`DiskLibError`].
//!
//! It must not know about backups, repositories or vSphere APIs, and it uses no tokio.
//!
//! # Thread rules (VDDK guide "Multithreading Considerations", nbdkit `vddk.c`/`worker.c`)
//! - `InitEx` runs once per process ([`Vddk::init`] refuses a second call), from `main`,
//!   before other threads start and after the re-exec; `Exit` runs when the last [`Vddk`]
//!   clone, [`Connection`] and [`Disk`] are gone, after the `vddk-open` thread has stopped.
//! - One thread named `vddk-open` performs every `ConnectEx`, `Open`, `Close` and
//!   `Disconnect` (and PrepareForAccess/EndAccess): callers send it a command on a bounded
//!   channel and wait for the reply. Connections never leave it.
//! - A [`Disk`] is `Send + !Sync`: whichever single thread owns it makes all its I/O calls,
//!   serialised by construction. [`Disk::spawn_io`] moves it to a `vddk-io/<label>` thread.
//!   Dropping a Disk sends its handle back to `vddk-open` to be closed; each Disk holds its
//!   Connection, so the connection is disconnected only after its disks are closed.
//! - Async completions may arrive on VDDK threads: they only fill a mutex-protected table
//!   the batch waits on ([`Disk::read_batch`]).
//! - Log callbacks run on any VDDK thread; the shim and the sink are reentrant.
//!
//! # Secrets
//! Passwords, session cookies and keys are [`Secret`]s: their `Debug` prints `<redacted>`,
//! errors never include them (only the VM, disk and range), and the C copies handed to VDDK
//! are zeroed when the connect parameters are dropped.

mod async_io;
mod connect;
mod connection;
mod disk;
mod error;
mod extents;
mod instance;
mod library;
mod log;
mod open_thread;
mod reexec;

pub use connect::{ConnectSpec, Credentials, Secret, TransportMode};
pub use connection::{Connection, OpenFlags};
pub use disk::{AdapterType, Disk, DiskInfo, SECTOR_SIZE};
pub use error::{DiskLibError, ErrorContext, VddkError, VixCode};
pub use extents::Extent;
pub use instance::{Vddk, VddkInitError};
pub use library::{Library, LoadError, SYMBOLS, Symbol};
pub use open_thread::CleanupOutcome;
pub use reexec::{
    ORIGINAL_LD_LIBRARY_PATH, REEXEC_MARKER, ReexecError, prepended_dir, reexec_with_library_path,
    reexecuted, restore_child_env,
};
