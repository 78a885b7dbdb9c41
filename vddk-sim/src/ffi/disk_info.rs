//! GetInfo, FreeInfo, QueryAllocatedBlocks, FreeBlockList.

use std::ffi::{CString, c_char};

#[cfg(not(feature = "vddk65"))]
use vddk_sys::{
    VIX_E_DISK_OUTOFRANGE, VIXDISKLIB_MAX_CHUNK_NUMBER, VIXDISKLIB_MIN_CHUNK_SIZE, VixDiskLibBlock,
    VixDiskLibBlockList, VixDiskLibSectorType,
};
use vddk_sys::{
    VIX_E_INVALID_ARG, VIX_E_OUT_OF_MEMORY, VIX_OK, VIXDISKLIB_ADAPTER_IDE,
    VIXDISKLIB_ADAPTER_SCSI_BUSLOGIC, VIXDISKLIB_ADAPTER_SCSI_LSILOGIC, VIXDISKLIB_ADAPTER_UNKNOWN,
    VIXDISKLIB_SECTOR_SIZE, VixDiskLibAdapterType, VixDiskLibGeometry, VixDiskLibHandle,
    VixDiskLibInfo, VixError,
};

use super::{disk_of, value_call, vix_call};
use crate::alloc::{self, Kind};
use crate::storage::Disk;
use crate::vix::fail;
use crate::{library, log};

/// The Info layout this build hands out: 64 bytes (VDDK 7.0+), or 56 when emulating 6.5.
#[cfg(not(feature = "vddk65"))]
type InfoLayout = VixDiskLibInfo;
#[cfg(feature = "vddk65")]
type InfoLayout = vddk_sys::VixDiskLibInfoV6;

const SECTOR: u64 = VIXDISKLIB_SECTOR_SIZE as u64;

/// Allocates and fills the disk's Info (capacity in sectors, geometry, adapter, links,
/// parent hint, uuid). Free it with FreeInfo.
///
/// # Safety
/// `info` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_GetInfo(
    diskHandle: VixDiskLibHandle,
    info: *mut *mut VixDiskLibInfo,
) -> VixError {
    vix_call("VixDiskLib_GetInfo", || {
        let library = library::get()?;
        let disk = disk_of(&library, diskHandle)?;
        if info.is_null() {
            return fail(VIX_E_INVALID_ARG, "info (out) is NULL");
        }
        let filled = disk.with_disk(|d| fill_info(d));
        // SAFETY: calloc has no preconditions.
        let raw = unsafe { libc::calloc(1, size_of::<InfoLayout>()) }.cast::<InfoLayout>();
        if raw.is_null() {
            return fail(VIX_E_OUT_OF_MEMORY, "cannot allocate VixDiskLibInfo");
        }
        // SAFETY: `raw` is a fresh, suitably aligned allocation of one InfoLayout.
        unsafe { raw.write(filled) };
        alloc::track(Kind::Info, raw.expose_provenance());
        // SAFETY: `info` is non-NULL and writable per the contract.
        unsafe { info.write(raw.cast()) };
        Ok(VIX_OK)
    })
}

fn fill_info(disk: &Disk) -> InfoLayout {
    let capacity = disk.capacity_bytes() / SECTOR;
    let number = |key: &str| disk.ddb(key).and_then(|v| v.trim().parse::<u32>().ok());
    let phys = match (
        number("geometry.cylinders"),
        number("geometry.heads"),
        number("geometry.sectors"),
    ) {
        (Some(cylinders), Some(heads), Some(sectors)) => VixDiskLibGeometry {
            cylinders,
            heads,
            sectors,
        },
        _ => default_geometry(capacity),
    };
    let bios = match (
        number("geometry.biosCylinders"),
        number("geometry.biosHeads"),
        number("geometry.biosSectors"),
    ) {
        (Some(cylinders), Some(heads), Some(sectors)) => VixDiskLibGeometry {
            cylinders,
            heads,
            sectors,
        },
        _ => phys,
    };
    #[cfg_attr(feature = "vddk65", allow(clippy::needless_update))]
    InfoLayout {
        biosGeo: bios,
        physGeo: phys,
        capacity,
        adapterType: adapter_type(disk.ddb("adapterType").as_deref()),
        numLinks: disk.num_links(),
        parentFileNameHint: c_dup(disk.parent_file_name_hint()),
        uuid: c_dup(disk.ddb("uuid").as_deref()),
        #[cfg(not(feature = "vddk65"))]
        logicalSectorSize: VIXDISKLIB_SECTOR_SIZE,
        #[cfg(not(feature = "vddk65"))]
        physicalSectorSize: VIXDISKLIB_SECTOR_SIZE,
    }
}

/// The geometry ESXi writes for SCSI disks: 255 heads, 63 sectors per track.
fn default_geometry(capacity_sectors: u64) -> VixDiskLibGeometry {
    let cylinders = u32::try_from(capacity_sectors / (255 * 63)).unwrap_or(u32::MAX);
    VixDiskLibGeometry {
        cylinders: cylinders.max(1),
        heads: 255,
        sectors: 63,
    }
}

fn adapter_type(ddb: Option<&str>) -> VixDiskLibAdapterType {
    match ddb.map(str::to_ascii_lowercase).as_deref() {
        Some("ide") => VIXDISKLIB_ADAPTER_IDE,
        Some("buslogic") => VIXDISKLIB_ADAPTER_SCSI_BUSLOGIC,
        Some("lsilogic") => VIXDISKLIB_ADAPTER_SCSI_LSILOGIC,
        _ => VIXDISKLIB_ADAPTER_UNKNOWN,
    }
}

/// A malloc'd copy of `s` (freed by FreeInfo with free()), or NULL.
fn c_dup(s: Option<&str>) -> *mut c_char {
    match s.map(|s| CString::new(s.replace('\0', " "))) {
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        Some(Ok(c)) => unsafe { libc::strdup(c.as_ptr()) },
        _ => std::ptr::null_mut(),
    }
}

/// Frees a GetInfo result and its strings. NULL or a foreign pointer is logged and ignored.
///
/// # Safety
/// `info` is NULL or a GetInfo result not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_FreeInfo(info: *mut VixDiskLibInfo) {
    value_call("VixDiskLib_FreeInfo", (), || {
        if info.is_null() {
            return;
        }
        if !alloc::untrack(Kind::Info, info.expose_provenance()) {
            log::warn(&format!(
                "VixDiskLib_FreeInfo({info:p}): not a GetInfo result"
            ));
            return;
        }
        let info = info.cast::<InfoLayout>();
        // SAFETY: tracked, so it is GetInfo's calloc'd InfoLayout whose string fields are
        // NULL or strdup results; each is freed exactly once.
        unsafe {
            libc::free((*info).parentFileNameHint.cast());
            libc::free((*info).uuid.cast());
            libc::free(info.cast());
        }
    });
}

/// The allocated chunks of `[startSector, startSector+numSectors)` following VDDK's rules:
/// `chunkSize` ≥ VIXDISKLIB_MIN_CHUNK_SIZE, start and length multiples of it, at most
/// VIXDISKLIB_MAX_CHUNK_NUMBER chunks (else VIX_E_INVALID_ARG); beyond capacity is
/// VIX_E_DISK_OUTOFRANGE. Blocks are chunk-aligned and coalesced.
///
/// # Safety
/// `blockList` is NULL or writable.
#[cfg(not(feature = "vddk65"))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_QueryAllocatedBlocks(
    diskHandle: VixDiskLibHandle,
    startSector: VixDiskLibSectorType,
    numSectors: VixDiskLibSectorType,
    chunkSize: VixDiskLibSectorType,
    blockList: *mut *mut VixDiskLibBlockList,
) -> VixError {
    vix_call("VixDiskLib_QueryAllocatedBlocks", || {
        let library = library::get()?;
        let disk = disk_of(&library, diskHandle)?;
        if blockList.is_null() {
            return fail(VIX_E_INVALID_ARG, "blockList (out) is NULL");
        }
        check_chunk_rules(startSector, numSectors, chunkSize)?;
        // A query goes over the connection as reads do (a loss the lab arranged meets it).
        disk.check_connection()?;
        let capacity = disk.with_disk(|d| d.capacity_bytes()) / SECTOR;
        if startSector + numSectors > capacity {
            return fail(
                VIX_E_DISK_OUTOFRANGE,
                format!(
                    "sectors {startSector}+{numSectors} are beyond the capacity of {} \
                     ({capacity} sectors)",
                    disk.path
                ),
            );
        }
        let extents =
            disk.with_disk(|d| d.allocated_extents(startSector * SECTOR, numSectors * SECTOR))?;
        let blocks = chunk_blocks(&extents, startSector, numSectors, chunkSize);
        let list = allocate_block_list(&blocks)?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { blockList.write(list) };
        Ok(VIX_OK)
    })
}

#[cfg(not(feature = "vddk65"))]
fn check_chunk_rules(start: u64, n: u64, chunk: u64) -> crate::vix::VixResult<()> {
    let min = u64::from(VIXDISKLIB_MIN_CHUNK_SIZE);
    if chunk < min {
        return fail(
            VIX_E_INVALID_ARG,
            format!("chunkSize {chunk} is below VIXDISKLIB_MIN_CHUNK_SIZE ({min})"),
        );
    }
    if !start.is_multiple_of(chunk) || !n.is_multiple_of(chunk) {
        return fail(
            VIX_E_INVALID_ARG,
            format!("start {start} and numSectors {n} must be multiples of chunkSize {chunk}"),
        );
    }
    if n / chunk > u64::from(VIXDISKLIB_MAX_CHUNK_NUMBER) {
        return fail(
            VIX_E_INVALID_ARG,
            format!(
                "{} chunks exceed VIXDISKLIB_MAX_CHUNK_NUMBER ({VIXDISKLIB_MAX_CHUNK_NUMBER})",
                n / chunk
            ),
        );
    }
    if start.checked_add(n).is_none() {
        return fail(VIX_E_INVALID_ARG, "start + numSectors overflows");
    }
    Ok(())
}

/// Byte extents → chunk-aligned, clipped, coalesced sector blocks.
#[cfg(not(feature = "vddk65"))]
fn chunk_blocks(extents: &[(u64, u64)], start: u64, n: u64, chunk: u64) -> Vec<VixDiskLibBlock> {
    let end = start + n;
    let mut blocks: Vec<VixDiskLibBlock> = Vec::new();
    for &(offset, len) in extents {
        let lo = (offset / SECTOR) / chunk * chunk;
        let hi = (offset + len).div_ceil(SECTOR).div_ceil(chunk) * chunk;
        let (lo, hi) = (lo.max(start), hi.min(end));
        if lo >= hi {
            continue;
        }
        match blocks.last_mut() {
            Some(last) if last.offset + last.length >= lo => {
                last.length = last.length.max(hi - last.offset);
            }
            _ => blocks.push(VixDiskLibBlock {
                offset: lo,
                length: hi - lo,
            }),
        }
    }
    blocks
}

#[cfg(not(feature = "vddk65"))]
fn allocate_block_list(
    blocks: &[VixDiskLibBlock],
) -> crate::vix::VixResult<*mut VixDiskLibBlockList> {
    let count =
        u32::try_from(blocks.len()).or_else(|_| fail(VIX_E_OUT_OF_MEMORY, "too many blocks"))?;
    // Header (numBlocks + padding) then the flexible array; at least one slot, as the C
    // struct declares `blocks[1]`.
    let size = std::mem::offset_of!(VixDiskLibBlockList, blocks)
        + size_of::<VixDiskLibBlock>() * blocks.len().max(1);
    // SAFETY: calloc has no preconditions.
    let list = unsafe { libc::calloc(1, size) }.cast::<VixDiskLibBlockList>();
    if list.is_null() {
        return fail(VIX_E_OUT_OF_MEMORY, "cannot allocate VixDiskLibBlockList");
    }
    // SAFETY: `list` is a zeroed allocation of `size` bytes, enough for the header and
    // `blocks.len()` entries; the entries are written through a pointer derived from the
    // whole allocation, not from the one-element array type.
    unsafe {
        (*list).numBlocks = count;
        let first = list
            .cast::<u8>()
            .add(std::mem::offset_of!(VixDiskLibBlockList, blocks))
            .cast::<VixDiskLibBlock>();
        for (i, block) in blocks.iter().enumerate() {
            first.add(i).write(*block);
        }
    }
    alloc::track(Kind::BlockList, list.expose_provenance());
    Ok(list)
}

/// Frees a QueryAllocatedBlocks result. NULL is VIX_OK; a foreign pointer is
/// VIX_E_INVALID_ARG (and not freed).
///
/// # Safety
/// `blockList` is NULL or a QueryAllocatedBlocks result not yet freed.
#[cfg(not(feature = "vddk65"))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_FreeBlockList(blockList: *mut VixDiskLibBlockList) -> VixError {
    vix_call("VixDiskLib_FreeBlockList", || {
        if blockList.is_null() {
            return Ok(VIX_OK);
        }
        if !alloc::untrack(Kind::BlockList, blockList.expose_provenance()) {
            return fail(
                VIX_E_INVALID_ARG,
                format!("{blockList:p} is not a QueryAllocatedBlocks result"),
            );
        }
        // SAFETY: tracked, so it came from calloc in allocate_block_list; freed once.
        unsafe { libc::free(blockList.cast()) };
        Ok(VIX_OK)
    })
}

#[cfg(test)]
#[cfg(not(feature = "vddk65"))]
mod tests {
    use super::*;

    #[test]
    fn chunk_rules() {
        assert!(check_chunk_rules(0, 1024, 128).is_ok());
        for (s, n, c) in [
            (0, 1024, 64),
            (64, 1024, 128),
            (0, 100, 128),
            (0, 128 * 524_289, 128),
        ] {
            assert_eq!(
                check_chunk_rules(s, n, c).unwrap_err().code,
                VIX_E_INVALID_ARG
            );
        }
    }

    #[test]
    fn blocks_are_rounded_clipped_and_coalesced() {
        let extents = [
            (512, 512),
            (128 * 512, 10),
            (300 * 512, 512),
            (5000 * 512, 512),
        ];
        let blocks = chunk_blocks(&extents, 0, 1024, 128);
        let got: Vec<(u64, u64)> = blocks.iter().map(|b| (b.offset, b.length)).collect();
        assert_eq!(got, [(0, 384)]);
    }
}
