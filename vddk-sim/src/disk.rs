//! An open disk handle: Open's checks, synchronous I/O, and the per-handle async worker.
//!
//! Threads and locking: every handle owns one `vddk-sim-aio/<file>` thread (as nbdkit gives
//! each handle a worker). ReadAsync/WriteAsync validate on the caller's thread, count the
//! request as pending and queue it; the worker performs it under the handle's disk mutex and
//! calls the completion callback `(cbData, result)` from its own thread, then decrements
//! the pending count. Wait blocks on a condvar until the count is zero; Close waits too and
//! then joins the worker. Sync I/O takes the same disk mutex, so mixing is safe.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vddk_sys::{
    VIX_E_DISK_OUTOFRANGE, VIX_E_FAIL, VIX_E_FILE_NOT_FOUND, VIX_E_FILE_READ_ONLY,
    VIX_E_HOST_CONNECTION_LOST, VIX_E_HOST_TCP_CONN_LOST, VIX_OK, VIXDISKLIB_FLAG_OPEN_READ_ONLY,
    VIXDISKLIB_SECTOR_SIZE, VixDiskLibCompletionCB, VixError,
};

use crate::connection::Connection;
use crate::hotadd::{self, HotAdd};
use crate::library::Library;
use crate::log;
use crate::storage::{DatastorePath, Disk, LabView, parse_path};
use crate::vix::{VixCallError, VixResult, fail};

const SECTOR: u64 = VIXDISKLIB_SECTOR_SIZE as u64;

/// One open disk.
#[derive(Debug)]
pub(crate) struct DiskHandle {
    pub connection: Arc<Connection>,
    /// The path as the caller gave it (for messages).
    pub path: String,
    pub read_only: bool,
    /// The mode this disk is read through (the connection's, or its fallback when the
    /// hot-add failed).
    transport: &'static str,
    /// The proxy VM's attachment, with hotadd.
    hot_added: Mutex<Option<HotAdd>>,
    /// The connection loss the lab arranged for this open (`Lab::lose_vddk_connections`):
    /// the I/O calls served before it.
    loss: Mutex<Option<u32>>,
    /// Whether the connection was lost: every later I/O call fails.
    lost: std::sync::atomic::AtomicBool,
    disk: Arc<Mutex<Disk>>,
    pending: Arc<Pending>,
    worker: Mutex<Option<AioWorker>>,
}

#[derive(Debug, Default)]
struct Pending {
    count: Mutex<u64>,
    drained: Condvar,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, u64> {
        self.count
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn finish_one(&self) {
        let mut count = self.lock();
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.drained.notify_all();
        }
    }

    fn wait_drained(&self) {
        let mut count = self.lock();
        while *count > 0 {
            count = self
                .drained
                .wait(count)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

#[derive(Debug)]
struct AioWorker {
    queue: mpsc::Sender<AioRequest>,
    thread: JoinHandle<()>,
}

/// A queued request. Pointers travel as exposed addresses: the caller guarantees the buffer
/// and `cbData` stay valid until the callback ran (VDDK's async contract).
#[derive(Debug)]
pub(crate) struct AioRequest {
    pub write: bool,
    pub offset: u64,
    pub len: usize,
    pub buf_addr: usize,
    pub callback: VixDiskLibCompletionCB,
    pub cb_data_addr: usize,
}

impl DiskHandle {
    /// Open's semantics after the handle arguments were decoded.
    pub(crate) fn open(
        library: &Library,
        connection: Arc<Connection>,
        path: &str,
        flags: u32,
    ) -> VixResult<Self> {
        connection.check_thumbprint()?;
        let Some(transport) = connection.transport else {
            return fail(
                VIX_E_FAIL,
                format!(
                    "cannot open {path}: none of the transport modes {:?} is available \
                     (vddk-sim serves nbdssl and nbd for a server, file for local disks)",
                    connection.requested_modes
                ),
            );
        };
        let ds_path = match &connection.remote {
            Some(remote) => {
                let ds_path = parse_path(path)?;
                if let Some(snapshot) = &remote.snapshot
                    && !remote.snapshot_disks.contains(&ds_path)
                {
                    let named: Vec<String> = remote
                        .snapshot_disks
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    return fail(
                        VIX_E_FILE_NOT_FOUND,
                        format!("{path} is not a disk of snapshot {snapshot} (it names {named:?})"),
                    );
                }
                ds_path
            }
            None => local_path(&library.config.lab_root, path)?,
        };
        let read_only = flags & VIXDISKLIB_FLAG_OPEN_READ_ONLY != 0 || connection.read_only;
        let (transport, hot_added) = hot_add(library, &connection, transport, &ds_path, path)?;
        let detach_on_error = |e: VixCallError| {
            if let (Some(hot), Some(remote)) = (&hot_added, &connection.remote)
                && let Err(d) = hotadd::detach(&remote.session, hot)
            {
                log::warn(&format!("{path}: {}", d.detail));
            }
            e
        };
        // The lab refuses a writable open of a snapshot-frozen disk or of one another
        // writer holds (flock): VIX_E_FILE_ALREADY_LOCKED, as ESXi's "failed to lock".
        let disk = Disk::open(&library.config.lab_root, &ds_path, !read_only)
            .map_err(|e| VixCallError {
                detail: format!("{path}: {}", e.detail),
                ..e
            })
            .map_err(detach_on_error)?;
        let vm = connection.remote.as_ref().and_then(|r| r.vm.as_deref());
        let loss = match vm {
            Some(vm) => LabView::open(&library.config.lab_root)
                .map_err(detach_on_error)?
                .take_connection_loss(vm),
            None => None,
        };
        let disk = Arc::new(Mutex::new(disk));
        let pending = Arc::new(Pending::default());
        let worker = spawn_worker(path, Arc::clone(&disk), Arc::clone(&pending));
        let worker = worker.map_err(detach_on_error)?;
        log::info(&format!(
            "opened {path} of {} ({transport}, {})",
            vm.unwrap_or("no VM"),
            if read_only { "read-only" } else { "read-write" }
        ));
        Ok(Self {
            connection,
            path: path.to_owned(),
            read_only,
            transport,
            hot_added: Mutex::new(hot_added),
            loss: Mutex::new(loss),
            lost: std::sync::atomic::AtomicBool::new(false),
            disk,
            pending,
            worker: Mutex::new(Some(worker)),
        })
    }

    pub(crate) fn transport(&self) -> &'static str {
        self.transport
    }

    /// Runs `f` with exclusive access to the disk.
    pub(crate) fn with_disk<R>(&self, f: impl FnOnce(&mut Disk) -> R) -> R {
        let mut disk = self
            .disk
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut disk)
    }

    /// `[start, start+n)` sectors → (byte offset, byte length), or DISK_OUTOFRANGE.
    pub(crate) fn byte_range(&self, start: u64, n: u64) -> VixResult<(u64, usize)> {
        let capacity = self.with_disk(|d| d.capacity_bytes()) / SECTOR;
        let in_range = start.checked_add(n).is_some_and(|end| end <= capacity);
        let len = n.checked_mul(SECTOR).and_then(|l| usize::try_from(l).ok());
        match (in_range, len) {
            (true, Some(len)) => Ok((start * SECTOR, len)),
            _ => fail(
                VIX_E_DISK_OUTOFRANGE,
                format!(
                    "sectors {start}+{n} are beyond the capacity of {} ({capacity} sectors)",
                    self.path
                ),
            ),
        }
    }

    /// Whether the handle's connection still stands, for an I/O call or an allocated-blocks
    /// query: the call that meets a loss the lab arranged fails with
    /// `VIX_E_HOST_TCP_CONN_LOST`, every later one with `VIX_E_HOST_CONNECTION_LOST`, as a
    /// dropped NFC connection leaves a handle.
    pub(crate) fn check_connection(&self) -> VixResult<()> {
        use std::sync::atomic::Ordering;
        if self.lost.load(Ordering::SeqCst) {
            return fail(
                VIX_E_HOST_CONNECTION_LOST,
                format!("{}: the connection to the host was lost", self.path),
            );
        }
        let mut loss = self
            .loss
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match loss.as_mut() {
            Some(0) => {
                *loss = None;
                self.lost.store(true, Ordering::SeqCst);
                log::warn(&format!("{}: connection lost (lab fault)", self.path));
                fail(
                    VIX_E_HOST_TCP_CONN_LOST,
                    format!("{}: the TCP connection to the host was lost", self.path),
                )
            }
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub(crate) fn check_writable(&self) -> VixResult<()> {
        if self.read_only {
            return fail(
                VIX_E_FILE_READ_ONLY,
                format!("{} was opened read-only", self.path),
            );
        }
        Ok(())
    }

    /// Queues an async request; the caller has validated it.
    pub(crate) fn submit(&self, request: AioRequest) -> VixResult<()> {
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(worker) = worker.as_ref() else {
            return fail(VIX_E_FAIL, format!("{} is being closed", self.path));
        };
        *self.pending.lock() += 1;
        if worker.queue.send(request).is_err() {
            self.pending.finish_one();
            return fail(VIX_E_FAIL, format!("async worker of {} is gone", self.path));
        }
        Ok(())
    }

    /// Blocks until every queued request of this handle has completed.
    pub(crate) fn wait(&self) {
        self.pending.wait_drained();
    }

    /// Close (or Exit): drains async I/O, stops the worker, releases the write lock.
    pub(crate) fn shut_down(&self) {
        self.wait();
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(AioWorker { queue, thread }) = worker {
            drop(queue);
            if thread.join().is_err() {
                log::warn(&format!("async worker of {} panicked", self.path));
            }
        }
        if let Err(e) = self.with_disk(|d| d.flush()) {
            log::warn(&format!("flush of {} at close failed: {e}", self.path));
        }
        let hot = self
            .hot_added
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let (Some(hot), Some(remote)) = (hot, &self.connection.remote)
            && let Err(e) = hotadd::detach(&remote.session, &hot)
        {
            // Its record stays: VixDiskLib_Cleanup detaches it later.
            log::warn(&format!("{}: {}", self.path, e.detail));
        }
        log::info(&format!("closed {}", self.path));
    }
}

/// With hotadd: attaches the file to the proxy VM, or falls back to the next requested
/// mode when that fails (VDDK tries the modes in order). Returns the mode used.
fn hot_add(
    library: &Library,
    connection: &Connection,
    transport: &'static str,
    ds_path: &DatastorePath,
    path: &str,
) -> VixResult<(&'static str, Option<HotAdd>)> {
    let (Some(remote), "hotadd") = (&connection.remote, transport) else {
        return Ok((transport, None));
    };
    let (Some(proxy), Some(vm)) = (&remote.proxy_vm, &remote.vm) else {
        return Ok((transport, None));
    };
    match hotadd::attach(
        &library.config.tmp_directory,
        &remote.session,
        proxy,
        vm,
        ds_path,
    ) {
        Ok(hot) => Ok((transport, Some(hot))),
        Err(e) => match connection.fallback {
            Some(next) => {
                log::warn(&format!(
                    "{path}: hotadd failed ({}); falling back to {next}",
                    e.detail
                ));
                Ok((next, None))
            }
            None => Err(VixCallError {
                detail: format!("{path}: hotadd: {}", e.detail),
                ..e
            }),
        },
    }
}

/// A local connection opens absolute paths; the simulator serves those that lie in a lab
/// datastore (`<root>/datastores/<ds>/<rel>`), as the lab's disk model needs one.
fn local_path(root: &Path, path: &str) -> VixResult<DatastorePath> {
    let local = Path::new(path);
    let inside = local
        .strip_prefix(root.join("datastores"))
        .ok()
        .and_then(|rel| {
            let mut parts = rel.iter();
            let ds = parts.next()?.to_str()?;
            let rest = parts.as_path().to_str()?;
            DatastorePath::new(ds, rest).ok()
        });
    match inside {
        Some(p) if local.is_absolute() => Ok(p),
        _ => fail(
            VIX_E_FILE_NOT_FOUND,
            format!(
                "{path:?}: a local connection opens absolute paths inside the lab's datastores \
                 ({}/datastores/...)",
                root.display()
            ),
        ),
    }
}

fn spawn_worker(path: &str, disk: Arc<Mutex<Disk>>, pending: Arc<Pending>) -> VixResult<AioWorker> {
    let (queue, requests) = mpsc::channel::<AioRequest>();
    let short = path.rsplit('/').next().unwrap_or(path);
    let thread = std::thread::Builder::new()
        .name(format!("vddk-sim-aio/{short}"))
        .spawn(move || {
            for request in requests {
                let result = perform(&disk, &request);
                if let Some(callback) = request.callback {
                    let cb_data = std::ptr::with_exposed_provenance_mut(request.cb_data_addr);
                    // SAFETY: `callback` is the non-NULL VixDiskLibCompletionCB the caller
                    // passed with this request; `cb_data` is its own opaque pointer, handed
                    // back unchanged as the async contract requires.
                    unsafe { callback(cb_data, result) };
                }
                pending.finish_one();
            }
        })
        .or_else(|e| fail(VIX_E_FAIL, format!("cannot start async worker: {e}")))?;
    Ok(AioWorker { queue, thread })
}

/// Performs one async request and returns its VixError.
fn perform(disk: &Mutex<Disk>, request: &AioRequest) -> VixError {
    let mut disk = disk.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let ptr = std::ptr::with_exposed_provenance_mut::<u8>(request.buf_addr);
    let result = if request.write {
        // SAFETY: WriteAsync checked `buf` non-NULL and the caller keeps `len` bytes valid
        // and unmodified until the completion callback (VDDK's async contract).
        let buf = unsafe { std::slice::from_raw_parts(ptr, request.len) };
        disk.write_at(request.offset, buf)
    } else {
        // SAFETY: ReadAsync checked `buf` non-NULL and the caller keeps `len` writable bytes
        // valid and untouched until the completion callback (VDDK's async contract).
        let buf = unsafe { std::slice::from_raw_parts_mut(ptr, request.len) };
        disk.read_at(request.offset, buf)
    };
    match result {
        Ok(()) => VixError::from(VIX_OK),
        Err(e) => {
            log::warn(&format!("async request failed: {e}"));
            VixError::from(e.code)
        }
    }
}
