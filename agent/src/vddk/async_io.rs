//! Batches of asynchronous reads and writes on one [`Disk`] (`ReadAsync`/`WriteAsync` +
//! `Wait`, nbdkit `worker.c`).
//!
//! Safety by construction: the caller's buffers are borrowed for the whole batch and the
//! batch does not return before VDDK has called back for every request it accepted, so VDDK
//! never touches a buffer after the borrow ends. Each request's callback data is an `Arc`
//! of the batch's completion table, handed to VDDK with `Arc::into_raw` and taken back in
//! the callback, so the table outlives any callback even on another thread.

use std::ffi::c_void;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use vddk_sys as sys;

use super::disk::{Disk, byte_len, to_sectors};
use super::error::{DiskLibError, VixCode};

/// Results of one batch, filled in by the completion callbacks.
struct Completions {
    results: Mutex<Vec<Option<sys::VixError>>>,
    done: Condvar,
}

/// What VDDK gets as callback data for one request.
struct Slot {
    table: Arc<Completions>,
    index: usize,
}

/// Completion callback, called by VDDK once per accepted request, on any thread.
unsafe extern "C" fn on_complete(data: *mut c_void, result: sys::VixError) {
    // SAFETY: `data` is the `Arc<Slot>` leaked for this request by `submit`; VDDK calls
    // back once per accepted request, so the reference is reclaimed exactly once.
    let slot = unsafe { Arc::from_raw(data.cast::<Slot>().cast_const()) };
    let mut results = slot
        .table
        .results
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(entry) = results.get_mut(slot.index) {
        *entry = Some(result);
    }
    slot.table.done.notify_all();
}

enum Request<'a> {
    Read(u64, &'a mut [u8]),
    Write(u64, &'a [u8]),
}

impl Request<'_> {
    fn offset_len(&self) -> (u64, u64) {
        match self {
            Self::Read(offset, buf) => (*offset, byte_len(buf)),
            Self::Write(offset, buf) => (*offset, byte_len(buf)),
        }
    }
}

impl Disk {
    /// Reads every `(offset, buffer)` pair with `ReadAsync`, then waits for all of them.
    /// Offsets and buffer lengths must be multiples of 512 (checked before anything is
    /// submitted).
    ///
    /// # Errors
    /// The first failure: misalignment, a submission that did not return `VIX_ASYNC`, `Wait`'s
    /// error, or a request whose completion reported an error (with its offset).
    pub fn read_batch(&self, requests: &mut [(u64, &mut [u8])]) -> Result<(), DiskLibError> {
        let requests = requests
            .iter_mut()
            .map(|(offset, buf)| Request::Read(*offset, buf))
            .collect();
        self.run_batch("read", requests)
    }

    /// Writes every `(offset, data)` pair with `WriteAsync`, then waits for all of them.
    ///
    /// # Errors
    /// As for [`Disk::read_batch`].
    pub fn write_batch(&self, requests: &[(u64, &[u8])]) -> Result<(), DiskLibError> {
        let requests = requests
            .iter()
            .map(|(offset, buf)| Request::Write(*offset, buf))
            .collect();
        self.run_batch("write", requests)
    }

    fn run_batch(
        &self,
        op: &'static str,
        mut requests: Vec<Request<'_>>,
    ) -> Result<(), DiskLibError> {
        let mut sectors = Vec::with_capacity(requests.len());
        for request in &requests {
            let (offset, len) = request.offset_len();
            sectors.push(to_sectors(op, &self.path, offset, len)?);
        }
        let table = Arc::new(Completions {
            results: Mutex::new(vec![None; requests.len()]),
            done: Condvar::new(),
        });
        let lib = self.lib();
        let mut accepted = 0;
        let mut first_error: Option<DiskLibError> = None;
        for (index, (request, (start, count))) in requests.iter_mut().zip(sectors).enumerate() {
            let data = Arc::into_raw(Arc::new(Slot {
                table: Arc::clone(&table),
                index,
            }))
            .cast_mut()
            .cast::<c_void>();
            let (call, err) = match request {
                Request::Read(_, buf) => (
                    "VixDiskLib_ReadAsync",
                    // SAFETY: the handle is open and used by this thread only; `buf` holds
                    // `count` sectors and stays mutably borrowed until every accepted
                    // request has completed (we wait below before returning); `data` is a
                    // leaked Arc reclaimed by `on_complete`.
                    unsafe {
                        lib.raw().VixDiskLib_ReadAsync(
                            self.handle.0,
                            start,
                            count,
                            buf.as_mut_ptr(),
                            Some(on_complete),
                            data,
                        )
                    },
                ),
                Request::Write(_, buf) => (
                    "VixDiskLib_WriteAsync",
                    // SAFETY: as for the read; VDDK only reads `buf`.
                    unsafe {
                        lib.raw().VixDiskLib_WriteAsync(
                            self.handle.0,
                            start,
                            count,
                            buf.as_ptr(),
                            Some(on_complete),
                            data,
                        )
                    },
                ),
            };
            if VixCode::from_raw(err) == VixCode::of(sys::VIX_ASYNC) {
                accepted = index + 1;
                continue;
            }
            // Not queued. The Slot is deliberately leaked: whether VDDK still calls back for
            // a rejected request is not documented, and a leak is safer than a double free.
            // Also a synchronous VIX_OK is unexpected from an async call: report it as an
            // error rather than guess whether the callback ran.
            first_error = Some(
                lib.error(call, err, self.context(Some(request.offset_len())))
                    .into(),
            );
            break;
        }

        // SAFETY: the handle is open; Wait returns when all queued I/O on it has completed.
        let err = unsafe { lib.raw().VixDiskLib_Wait(self.handle.0) };
        let wait_result = self.check("VixDiskLib_Wait", err, None);

        // Never return while VDDK may still write into a borrowed buffer: block until every
        // accepted request has called back, even if Wait failed or returned early.
        let results = {
            let mut results = table.results.lock().unwrap_or_else(PoisonError::into_inner);
            while results[..accepted].iter().any(Option::is_none) {
                results = table
                    .done
                    .wait(results)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            results[..accepted].to_vec()
        };

        if let Some(err) = first_error {
            return Err(err);
        }
        wait_result?;
        let call = if op == "read" {
            "VixDiskLib_ReadAsync"
        } else {
            "VixDiskLib_WriteAsync"
        };
        for (request, result) in requests.iter().zip(results) {
            let result = result.unwrap_or(sys::VixError::from(sys::VIX_E_FAIL));
            self.lib()
                .check(call, result, || self.context(Some(request.offset_len())))?;
        }
        Ok(())
    }
}
