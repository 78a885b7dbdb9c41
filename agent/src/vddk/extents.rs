//! Allocated areas of a disk (`QueryAllocatedBlocks`, 6.7+, optional), following VDDK's
//! chunk rules as nbdkit does: chunks of 128 sectors, ranges that are whole chunks, at most
//! `VIXDISKLIB_MAX_CHUNK_NUMBER` chunks per call, looping over the range. A last partial
//! chunk at the end of the disk cannot be queried and is reported as allocated.

use vddk_sys as sys;

use super::disk::{Disk, SECTOR_SIZE};
use super::error::DiskLibError;

/// Chunk size of every query, in sectors (`VIXDISKLIB_MIN_CHUNK_SIZE`, 64 KiB).
pub(crate) const CHUNK_SECTORS: u64 = sys::VIXDISKLIB_MIN_CHUNK_SIZE as u64;
/// Most chunks one query may cover.
pub(crate) const MAX_CHUNKS_PER_CALL: u64 = sys::VIXDISKLIB_MAX_CHUNK_NUMBER as u64;
const CHUNK_BYTES: u64 = CHUNK_SECTORS * SECTOR_SIZE;

/// A range of a disk, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// The queries that cover a byte range of a disk of `capacity_sectors`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct QueryPlan {
    /// `(start_sector, num_sectors)` of each call: whole chunks, ≤ the per-call maximum.
    pub(crate) calls: Vec<(u64, u64)>,
    /// Sectors `(start, count)` of the last partial chunk, reported as allocated.
    pub(crate) tail: Option<(u64, u64)>,
}

pub(crate) fn plan(offset: u64, len: u64, capacity_sectors: u64) -> QueryPlan {
    let capacity_bytes = capacity_sectors.saturating_mul(SECTOR_SIZE);
    let end = offset.saturating_add(len).min(capacity_bytes);
    let mut calls = Vec::new();
    if offset >= end {
        return QueryPlan { calls, tail: None };
    }
    let start_sector = offset / CHUNK_BYTES * CHUNK_SECTORS;
    let end_sector_up = end.div_ceil(CHUNK_BYTES) * CHUNK_SECTORS;
    let whole_end = capacity_sectors / CHUNK_SECTORS * CHUNK_SECTORS;
    let query_end = end_sector_up.min(whole_end);
    let mut position = start_sector;
    while position < query_end {
        let chunks = ((query_end - position) / CHUNK_SECTORS).min(MAX_CHUNKS_PER_CALL);
        calls.push((position, chunks * CHUNK_SECTORS));
        position += chunks * CHUNK_SECTORS;
    }
    let tail = (end_sector_up > whole_end).then(|| {
        let from = start_sector.max(whole_end);
        (from, capacity_sectors - from)
    });
    QueryPlan { calls, tail }
}

/// Converts blocks (in sectors) to byte extents clipped to `[lo, hi)`, merging neighbours.
pub(crate) fn to_extents(
    blocks: impl IntoIterator<Item = (u64, u64)>,
    lo: u64,
    hi: u64,
) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    let mut blocks: Vec<(u64, u64)> = blocks.into_iter().collect();
    blocks.sort_unstable();
    for (start, count) in blocks {
        let from = start.saturating_mul(SECTOR_SIZE).max(lo);
        let to = start
            .saturating_add(count)
            .saturating_mul(SECTOR_SIZE)
            .min(hi);
        if from >= to {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.offset + last.length >= from => {
                last.length = last.length.max(to - last.offset);
            }
            _ => out.push(Extent {
                offset: from,
                length: to - from,
            }),
        }
    }
    out
}

impl Disk {
    /// The allocated areas within `[offset, offset + len)` (bytes), in order and merged.
    /// Areas not listed read as zeros. Cheaper than reading, slower than CBT.
    ///
    /// # Errors
    /// [`DiskLibError::NotSupported`] when the library lacks `QueryAllocatedBlocks` or
    /// `FreeBlockList` (before 6.7): callers then read everything or rely on CBT. Otherwise
    /// the call's error.
    pub fn allocated_extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DiskLibError> {
        let lib = self.lib();
        if !lib.has_allocated_blocks() {
            return Err(DiskLibError::NotSupported {
                what: "allocated-block queries",
                symbol: if lib.has("VixDiskLib_QueryAllocatedBlocks") {
                    "VixDiskLib_FreeBlockList"
                } else {
                    "VixDiskLib_QueryAllocatedBlocks"
                },
                since: "6.7",
                major: lib.major(),
            });
        }
        let capacity = self.capacity_sectors()?;
        let plan = plan(offset, len, capacity);
        let mut blocks = Vec::new();
        for (start, count) in plan.calls {
            let mut list: *mut sys::VixDiskLibBlockList = std::ptr::null_mut();
            // SAFETY: the handle is open and used by this thread only; present (checked
            // above); `start`/`count` are whole chunks within the disk; `list` is a valid
            // out-pointer.
            let err = unsafe {
                lib.raw().VixDiskLib_QueryAllocatedBlocks(
                    self.handle.0,
                    start,
                    count,
                    CHUNK_SECTORS,
                    &raw mut list,
                )
            };
            // Success without a list would read as "nothing allocated", and a full backup
            // would record the range as holes: a failure instead (the caller then reads
            // the whole disk).
            let err = super::open_thread::null_is_failure(err, list.is_null());
            if !list.is_null() {
                // SAFETY: a non-NULL list is the library's allocation: `numBlocks` entries
                // follow at `blocks` (a flexible array). Read before it is freed, exactly
                // once, with FreeBlockList (whatever `err` says).
                unsafe {
                    if err == sys::VixError::from(sys::VIX_OK) {
                        let n = (*list).numBlocks as usize;
                        let first = (&raw const (*list).blocks).cast::<sys::VixDiskLibBlock>();
                        let slice = std::slice::from_raw_parts(first, n);
                        blocks.extend(slice.iter().map(|b| (b.offset, b.length)));
                    }
                    lib.raw().VixDiskLib_FreeBlockList(list);
                }
            }
            self.check(
                "VixDiskLib_QueryAllocatedBlocks",
                err,
                Some((start * SECTOR_SIZE, count * SECTOR_SIZE)),
            )?;
        }
        blocks.extend(plan.tail);
        Ok(to_extents(blocks, offset, offset.saturating_add(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn ranges_are_whole_chunks() {
        // 10 MiB disk, query 100 KiB at offset 70 KiB: chunks 1..=2 (64 KiB … 192 KiB).
        let p = plan(70 * 1024, 100 * 1024, 10 * MIB / 512);
        assert_eq!(p.calls, [(128, 256)]);
        assert_eq!(p.tail, None);
    }

    #[test]
    fn large_ranges_are_split_at_the_chunk_limit() {
        // 100 GiB: 1,638,400 chunks = 3 full calls of 524,288 chunks + a remainder.
        let capacity = 100 * 1024 * MIB / 512;
        let p = plan(0, 100 * 1024 * MIB, capacity);
        let max = MAX_CHUNKS_PER_CALL * CHUNK_SECTORS;
        assert_eq!(p.calls.len(), 4);
        assert_eq!(p.calls[0], (0, max));
        assert_eq!(p.calls[1], (max, max));
        assert_eq!(p.calls[3].0, 3 * max);
        assert_eq!(p.calls.iter().map(|c| c.1).sum::<u64>(), capacity);
        assert!(
            p.calls
                .iter()
                .all(|(s, n)| s % CHUNK_SECTORS == 0 && n % CHUNK_SECTORS == 0)
        );
    }

    #[test]
    fn partial_last_chunk_is_a_tail() {
        // 1 MiB + 3 sectors: 16 whole chunks, then 3 sectors.
        let capacity = MIB / 512 + 3;
        let p = plan(0, capacity * 512, capacity);
        assert_eq!(p.calls, [(0, 2048)]);
        assert_eq!(p.tail, Some((2048, 3)));
        // Only the tail.
        let p = plan(MIB, 1536, capacity);
        assert_eq!(p.calls, []);
        assert_eq!(p.tail, Some((2048, 3)));
        // Beyond the disk: nothing.
        assert_eq!(
            plan(2 * MIB, 512, capacity),
            QueryPlan {
                calls: vec![],
                tail: None
            }
        );
    }

    #[test]
    fn extents_are_clipped_and_merged() {
        let blocks = [(256, 128), (0, 128), (128, 128), (1024, 128)];
        // Request [32 KiB, 520 KiB).
        let e = to_extents(blocks, 32 * 1024, 520 * 1024);
        assert_eq!(
            e,
            [
                Extent {
                    offset: 32 * 1024,
                    length: 192 * 1024 - 32 * 1024
                },
                Extent {
                    offset: 512 * 1024,
                    length: 8 * 1024
                },
            ]
        );
        assert_eq!(to_extents([], 0, MIB), []);
    }
}
