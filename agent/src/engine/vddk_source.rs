//! [`DiskSource`] over a VDDK disk opened at a snapshot: what the repository's pipeline
//! reads during a backup. The pipeline moves the source into its `disk-read` thread, so the
//! [`Disk`] handle is owned by exactly one I/O thread, as VMware's thread rules require.
//!
//! A read that fails for a lost or refused connection (a network blip, an ESXi host's NFC
//! service restarting: [`DiskLibError::is_retryable`]) is not the end of the disk: the
//! source waits ([`READ_RETRY_PAUSES`]), closes the handle (with hotadd, detaching the
//! disk), connects again, opens the disk again and reads the same range. Only when the
//! pauses are used up, or a disk has lost [`MAX_RECONNECTS`] connections, does the read
//! fail, naming the last error (of the read or of connecting again) and how many times it
//! was tried. Other errors (a range beyond the disk, a refused login) fail at once.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::repo::{DiskSource, Extent, SourceError};
use crate::vddk::{Disk, DiskLibError};

/// The pauses before a read that lost its connection is tried again on a new one: a blip
/// passes within the first, a restarting NFC service within the last (42 s in all).
pub const READ_RETRY_PAUSES: [Duration; 3] = [
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(30),
];

/// [`READ_RETRY_PAUSES`], or the milliseconds `VADP_AGENT_READ_RETRY_PAUSES_MS` lists
/// (`100,100`: for the tests, which cannot wait 42 s; an empty value: no retries).
#[must_use]
pub fn read_retry_pauses() -> Vec<Duration> {
    super::pauses_from_env("VADP_AGENT_READ_RETRY_PAUSES_MS", &READ_RETRY_PAUSES)
}

/// The most connections one disk's reads may lose: a link that drops every few reads
/// fails the disk instead of crawling through it (each retry costs a pause and a login).
pub const MAX_RECONNECTS: usize = 10;

/// Opens the disk again on a new connection (connect, then open read-only).
pub type Reopen = Box<dyn FnMut() -> Result<Disk, DiskLibError> + Send>;

/// A read that failed on every connection it was tried on.
#[derive(Debug, thiserror::Error)]
enum GaveUp {
    /// The pauses were used up.
    #[error("tried {tries} times, connecting again before each retry")]
    Tries {
        tries: usize,
        #[source]
        last: DiskLibError,
    },
    /// The disk lost too many connections in all.
    #[error("the disk's reads lost their connection {MAX_RECONNECTS} times")]
    Reconnects {
        #[source]
        last: DiskLibError,
    },
}

/// A disk read through VDDK; reads stop with an `Interrupted` error once the job is
/// cancelled (also while waiting to try a read again).
pub struct VddkSource {
    /// `None` between closing a handle that lost its connection and opening the next.
    disk: Option<Disk>,
    capacity_bytes: u64,
    /// "`[ds] vm/disk.vmdk` of vm-12 at snapshot-3", for errors.
    what: PathBuf,
    cancel: CancellationToken,
    /// How to get the disk back after a lost connection; `None`: reads are not retried.
    reopen: Option<Reopen>,
    pauses: Vec<Duration>,
    /// How many more connections this disk's reads may lose.
    reconnects_left: usize,
}

impl std::fmt::Debug for VddkSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VddkSource")
            .field("disk", &self.disk)
            .field("capacity_bytes", &self.capacity_bytes)
            .field("retries", &self.pauses.len())
            .finish_non_exhaustive()
    }
}

impl VddkSource {
    /// Wraps an open disk; `capacity_bytes` is what VDDK reports for it.
    #[must_use]
    pub fn new(disk: Disk, capacity_bytes: u64, cancel: CancellationToken) -> Self {
        let what = PathBuf::from(format!("{} of {}", disk.path(), disk.vm()));
        Self {
            disk: Some(disk),
            capacity_bytes,
            what,
            cancel,
            reopen: None,
            pauses: Vec::new(),
            reconnects_left: MAX_RECONNECTS,
        }
    }

    /// Reads that lose their connection are tried again after each of `pauses`, on the
    /// disk `reopen` opens anew.
    #[must_use]
    pub fn retrying(mut self, reopen: Reopen, pauses: Vec<Duration>) -> Self {
        self.reopen = Some(reopen);
        self.pauses = pauses;
        self
    }

    fn read_error(&self, offset: u64, len: usize, source: io::Error) -> SourceError {
        SourceError::Read {
            path: self.what.clone(),
            offset,
            len,
            source,
        }
    }

    fn cancelled(&self, offset: u64, len: usize) -> SourceError {
        self.read_error(
            offset,
            len,
            io::Error::new(io::ErrorKind::Interrupted, "backup cancelled"),
        )
    }

    /// Sleeps `pause`, waking early when the job is cancelled or the pipeline aborted.
    fn wait(&self, pause: Duration, abort: &AtomicBool) -> Waited {
        let until = std::time::Instant::now() + pause;
        loop {
            if self.cancel.is_cancelled() {
                return Waited::Cancelled;
            }
            if abort.load(Ordering::SeqCst) {
                return Waited::Aborted;
            }
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Waited::Out;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }
}

impl DiskSource for VddkSource {
    fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn allocated_extents(&mut self) -> Result<Vec<Extent>, SourceError> {
        let capacity = self.capacity_bytes;
        let whole = || {
            vec![Extent {
                offset: 0,
                length: capacity,
            }]
        };
        // A lost connection is tried again as a read is: reading a thin disk whole
        // instead would be correct but take as long as its capacity.
        let never = AtomicBool::new(false);
        match self.try_reconnecting(&never, |disk| disk.allocated_extents(0, capacity)) {
            Ok(extents) => Ok(extents
                .into_iter()
                .map(|e| Extent {
                    offset: e.offset,
                    length: e.length,
                })
                .collect()),
            // VDDK before 6.7 cannot say: read the whole disk.
            Err(Failed::Once(DiskLibError::NotSupported { .. })) => Ok(whole()),
            // A host or transport that refuses the query (ESXi before 6.7 behind a newer
            // VDDK, say), as nbdkit finds out by trying: the whole disk, read as if it
            // were all allocated, is still a correct full backup. So is a query whose
            // connection could not be had back; the reads then try again themselves.
            Err(e) => {
                tracing::warn!(disk = %self.what.display(), error = %crate::engine::error_chain(&e), "QueryAllocatedBlocks failed: reading the whole disk");
                Ok(whole())
            }
        }
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.read_at_abortable(offset, buf, &AtomicBool::new(false))
    }

    fn read_at_abortable(
        &mut self,
        offset: u64,
        buf: &mut [u8],
        abort: &AtomicBool,
    ) -> Result<(), SourceError> {
        super::pause_point_blocking("backup-mid-disk");
        if self.cancel.is_cancelled() {
            return Err(self.cancelled(offset, buf.len()));
        }
        let len = buf.len();
        self.try_reconnecting(abort, |disk| disk.read_at(offset, buf))
            .map_err(|e| match e {
                Failed::Cancelled => self.cancelled(offset, len),
                Failed::Aborted => self.read_error(
                    offset,
                    len,
                    io::Error::new(
                        io::ErrorKind::Interrupted,
                        "stopped waiting to read again: the backup failed elsewhere",
                    ),
                ),
                e => self.read_error(offset, len, io::Error::other(e)),
            })
    }
}

/// How [`VddkSource::wait`] ended.
enum Waited {
    Out,
    Cancelled,
    Aborted,
}

/// Why [`VddkSource::try_reconnecting`] gave up.
#[derive(Debug, thiserror::Error)]
enum Failed {
    /// The first try's error, not one to try again.
    #[error(transparent)]
    Once(DiskLibError),
    /// Tried again and failed.
    #[error(transparent)]
    GaveUp(GaveUp),
    /// The job was cancelled while waiting to try again.
    #[error("backup cancelled")]
    Cancelled,
    /// Another stage of the pipeline failed while waiting to try again.
    #[error("the backup failed elsewhere")]
    Aborted,
}

impl VddkSource {
    /// `op` on the disk, tried again on a new connection after each of the pauses while
    /// its error says the connection was lost (see the module's doc).
    fn try_reconnecting<T>(
        &mut self,
        abort: &AtomicBool,
        mut op: impl FnMut(&Disk) -> Result<T, DiskLibError>,
    ) -> Result<T, Failed> {
        let mut error = match self.disk.as_ref().map(&mut op) {
            Some(Ok(value)) => return Ok(value),
            Some(Err(e)) => e,
            None => no_connection(),
        };
        let mut tries = 1;
        loop {
            // Every call gets all the pauses: a blip an hour later is retried as well.
            let pause = match self.pauses.get(tries - 1) {
                Some(pause) if self.reopen.is_some() && error.is_retryable() => *pause,
                _ if tries == 1 => return Err(Failed::Once(error)),
                _ => return Err(Failed::GaveUp(GaveUp::Tries { tries, last: error })),
            };
            if self.reconnects_left == 0 {
                return Err(Failed::GaveUp(GaveUp::Reconnects { last: error }));
            }
            tracing::warn!(
                disk = %self.what.display(),
                error = %error,
                retry_in_secs = pause.as_secs_f64(),
                "reading through VDDK failed; connecting again"
            );
            match self.wait(pause, abort) {
                Waited::Out => {}
                Waited::Cancelled => return Err(Failed::Cancelled),
                Waited::Aborted => return Err(Failed::Aborted),
            }
            // Closed (with hotadd, detached) before the disk is opened again; the first
            // connection itself stays with the caller until the disk is done.
            drop(self.disk.take());
            self.reconnects_left -= 1;
            tries += 1;
            let reopen = self.reopen.as_mut().expect("checked above");
            error = match reopen() {
                Ok(disk) => {
                    tracing::info!(disk = %self.what.display(), "connected again; reading on");
                    match op(self.disk.insert(disk)) {
                        Ok(value) => return Ok(value),
                        Err(e) => e,
                    }
                }
                Err(e) => {
                    tracing::warn!(disk = %self.what.display(), error = %e, "connecting again failed");
                    e
                }
            };
        }
    }
}

/// The error of a call on a disk whose connection could not be had back.
fn no_connection() -> DiskLibError {
    DiskLibError::Vix(crate::vddk::VddkError {
        call: "VixDiskLib_Read",
        code: crate::vddk::VixCode::of(vddk_sys::VIX_E_HOST_NOT_CONNECTED),
        text: "no connection: connecting again failed".into(),
        context: crate::vddk::ErrorContext::default(),
    })
}
