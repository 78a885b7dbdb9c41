//! The data: every disk written through VDDK (read-write connection), each on its own
//! named thread (`restore/<vm>/<key>`) that opens the disk and runs the repository's
//! restore pipeline into a [`VddkSink`]; at most as many at once as the request's
//! [`Limits`](crate::engine::Limits) let (per job, per ESXi host, per datastore, the last
//! two shared with the daemon's other jobs).

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{RestoreError, RestoreEvent, RestoreObserver, RestoredDisk, VddkSink};
use crate::engine::limits::Gate;
use crate::engine::{BackupError, Environment, blocking};
use crate::ids::RestorePointId;
use crate::repo::catalog::DiskRecord;
use crate::vddk::OpenFlags;
use crate::vsphere::{DatastorePath, VmMoref};

/// How long a disk waits for its permits before the wait is said.
const PERMIT_WAIT_SAID_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Writes every target disk in parallel, each on its own thread, within `gate`'s limits.
pub(super) async fn write_disks(
    env: &Environment,
    vm: &VmMoref,
    point: RestorePointId,
    targets: Vec<(DiskRecord, String, bool)>,
    gate: &Gate,
    observer: &RestoreObserver,
    cancel: &CancellationToken,
) -> Result<Vec<RestoredDisk>, RestoreError> {
    // The host the VM is on, for its limit (none when it cannot be read: the job's and
    // the datastores' limits still hold).
    let host = env
        .soap
        .vm_info(vm)
        .await
        .ok()
        .and_then(|i| i.host.map(|h| h.value));
    let connection = {
        let vddk = env.vddk.clone();
        let spec = env.vddk_target.spec(vm, None, false);
        blocking(move || vddk.connect(&spec))
            .await?
            .map_err(|source| BackupError::Vddk {
                what: format!("connecting to {vm} read-write through VDDK"),
                source,
            })?
    };
    let mut handles = Vec::new();
    let mut first_error = None;
    for (disk, file, fresh) in targets {
        // Only the datastore of the `[datastore] path` is read: no datacenter needed.
        let datastore = DatastorePath::parse("", &file).ok().map(|p| p.datastore);
        // Held by the disk's thread until it ends. A wait (other disks of this restore,
        // or other jobs' disks on its host or datastore) is said, once.
        let enter = gate.enter(host.as_deref(), datastore.as_deref());
        tokio::pin!(enter);
        let permits = tokio::select! {
            biased;
            p = &mut enter => Some(p),
            () = tokio::time::sleep(PERMIT_WAIT_SAID_AFTER) => None,
        };
        let permits = match permits {
            Some(p) => p,
            None => {
                observer(&RestoreEvent::Step {
                    message: format!(
                        "disk {} waits for its turn: the disks written at once are limited per \
                         job, per host{} and per datastore{} (limits.disks_per_*)",
                        disk.key,
                        host.as_deref()
                            .map(|h| format!(" ({h})"))
                            .unwrap_or_default(),
                        datastore
                            .as_deref()
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default()
                    ),
                });
                tokio::select! {
                    p = &mut enter => p,
                    () = cancel.cancelled() => {
                        // The disks already started stop at their next write first.
                        first_error = Some(RestoreError::Engine(BackupError::Cancelled));
                        break;
                    }
                }
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_name = format!("restore/{vm}/{}", disk.key);
        let connection = connection.clone();
        let repo = Arc::clone(&env.repo);
        let observer = observer.clone();
        let cancel = cancel.clone();
        let vm = vm.clone();
        let spawned = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                let _permits = permits;
                let started = Instant::now();
                let r = (|| {
                    let handle = connection.open(&file, OpenFlags::NONE).map_err(|source| {
                        BackupError::Vddk {
                            what: format!("opening {file} of {vm} read-write"),
                            source,
                        }
                    })?;
                    observer(&RestoreEvent::DiskStarted {
                        vm: vm.clone(),
                        disk: disk.key,
                        label: disk.label.clone(),
                        bytes_total: disk.capacity_bytes,
                    });
                    let mut sink = VddkSink::new(handle, fresh, cancel);
                    let key = disk.key;
                    let mut progress = |done: u64, total: u64| {
                        observer(&RestoreEvent::DiskProgress {
                            vm: vm.clone(),
                            disk: key,
                            bytes_done: done,
                            bytes_total: total,
                        });
                    };
                    let size = repo
                        .restore_disk_to_sink(point, disk.key, &mut sink, &mut progress)
                        .map_err(BackupError::Repo)?;
                    let seconds = started.elapsed().as_secs_f64();
                    observer(&RestoreEvent::DiskFinished {
                        vm: vm.clone(),
                        disk: disk.key,
                        capacity_bytes: size,
                        seconds,
                    });
                    Ok::<_, BackupError>(RestoredDisk {
                        key: disk.key,
                        label: disk.label.clone(),
                        file: file.clone(),
                        capacity_bytes: size,
                        seconds,
                    })
                })();
                // Before reporting: the caller's own handle is then the last.
                drop(connection);
                let _ = tx.send(r);
            });
        if let Err(e) = spawned {
            // The disks already started finish (or fail) first.
            first_error = Some(RestoreError::Engine(BackupError::Thread(format!(
                "start thread {thread_name}: {e}"
            ))));
            break;
        }
        handles.push((thread_name, rx));
    }
    let mut out = Vec::new();
    for (name, rx) in handles {
        match rx.await {
            Ok(Ok(d)) => out.push(d),
            Ok(Err(e)) => {
                first_error.get_or_insert(RestoreError::Engine(e));
            }
            Err(_) => {
                first_error.get_or_insert(RestoreError::Engine(BackupError::Thread(format!(
                    "thread {name} panicked"
                ))));
            }
        }
    }
    // Every disk thread dropped its handle before reporting, so this drop disconnects:
    // on a blocking thread (it waits for the vddk-open thread), and before the caller goes
    // on to EndAccess.
    let _ = blocking(move || drop(connection)).await;
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
