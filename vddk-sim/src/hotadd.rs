//! Hotadd transport and `VixDiskLib_Cleanup`.
//!
//! With hotadd, VDDK reads a snapshot's disks by attaching their frozen files to the proxy
//! VM it runs in (a `ReconfigVM_Task` on the proxy) and reading them as local devices; Close
//! detaches them again. A process that dies in between leaves the disks attached to the
//! proxy, and vCenter cannot consolidate the snapshot while they are: removing it fails
//! with `FileLocked` (the lab refuses it the same way). VDDK keeps a local record of each
//! hot-add so that `VixDiskLib_Cleanup` can detach what a crashed process left.
//!
//! Here: before the `ReconfigVM_Task` that attaches a file, a record
//! (`<tmpDirectory>/hotadd/<pid>-<start time>-<n>.json`: owner process, server, proxy VM,
//! VM, file) is written; Close detaches the file and deletes the record. Cleanup detaches
//! the files of every record whose owner process is gone (the pid is not running, or a
//! different process has its number now) from the proxy, over a session of its own with
//! the caller's credentials, and deletes the record; the records of live processes are
//! theirs and left alone. Its counts are of VMs, as VDDK's are.
//!
//! The data path itself is the same as for the other modes: the files are read from the
//! lab's datastores.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use vddk_sys::VIX_E_FAIL;

use crate::log;
use crate::storage::DatastorePath;
use crate::vcenter::Session;
use crate::vix::{VixResult, fail};

/// The disk mode a hot-added disk gets: the proxy never changes it.
const HOTADD_DISK_MODE: &str = "independent_nonpersistent";

static NEXT_RECORD: AtomicU64 = AtomicU64::new(1);

/// A file this process hot-added to the proxy VM.
#[derive(Debug)]
pub(crate) struct HotAdd {
    proxy_vm: String,
    file: String,
    record: PathBuf,
}

/// What a record says.
#[derive(Debug, Clone)]
struct Record {
    path: PathBuf,
    pid: u32,
    start_time: u64,
    server: String,
    proxy_vm: String,
    vm: String,
    file: String,
}

fn records_dir(tmp_directory: &Path) -> PathBuf {
    tmp_directory.join("hotadd")
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`, clock ticks since
/// boot), `None` when there is no such process or it is a zombie.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); field 22 is 19 further on.
    fields.nth(18)?.parse().ok()
}

fn owner_alive(record: &Record) -> bool {
    start_time(record.pid) == Some(record.start_time)
}

fn io_fail<T>(what: &str, path: &Path, e: &std::io::Error) -> VixResult<T> {
    fail(VIX_E_FAIL, format!("{what} {}: {e}", path.display()))
}

/// Attaches `file` of `vm` to `proxy_vm` for reading, recording it first.
pub(crate) fn attach(
    tmp_directory: &Path,
    session: &Session,
    proxy_vm: &str,
    vm: &str,
    file: &DatastorePath,
) -> VixResult<HotAdd> {
    let dir = records_dir(tmp_directory);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return io_fail("cannot create", &dir, &e);
    }
    let pid = std::process::id();
    let Some(started) = start_time(pid) else {
        return fail(
            VIX_E_FAIL,
            "cannot read this process's start time from /proc",
        );
    };
    let n = NEXT_RECORD.fetch_add(1, Ordering::Relaxed);
    let record = dir.join(format!("{pid}-{started}-{n}.json"));
    let file = file.to_string();
    let body = json!({
        "pid": pid,
        "start_time": started,
        "server": session.server(),
        "proxy_vm": proxy_vm,
        "vm": vm,
        "file": file,
    });
    write_durably(&record, body.to_string().as_bytes())?;
    let added = session.disk_devices(proxy_vm).and_then(|devices| {
        let controller = devices.first().map_or(1000, |d| d.controller_key);
        let change = format!(
            "<deviceChange><operation>add</operation><device xsi:type=\"VirtualDisk\">\
             <key>-100</key><backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\">\
             <fileName>{}</fileName><diskMode>{HOTADD_DISK_MODE}</diskMode></backing>\
             <controllerKey>{controller}</controllerKey><capacityInKB>0</capacityInKB>\
             </device></deviceChange>",
            quick_xml::escape::escape(file.as_str())
        );
        session.reconfigure(proxy_vm, &change)
    });
    if let Err(e) = added {
        // The reconfiguration failed as a whole: nothing is attached, unless the reply was
        // lost after it succeeded; then the record stays for Cleanup.
        if session
            .disk_devices(proxy_vm)
            .is_ok_and(|d| !d.iter().any(|d| d.file_name == file))
        {
            let _ = std::fs::remove_file(&record);
        }
        return Err(e);
    }
    log::info(&format!("hot-added {file} of {vm} to proxy VM {proxy_vm}"));
    Ok(HotAdd {
        proxy_vm: proxy_vm.to_owned(),
        file,
        record,
    })
}

/// Detaches a hot-added file (Close) and deletes its record. On failure the record stays
/// for `VixDiskLib_Cleanup`.
pub(crate) fn detach(session: &Session, hot: &HotAdd) -> VixResult<()> {
    detach_file(session, &hot.proxy_vm, &hot.file)?;
    let _ = std::fs::remove_file(&hot.record);
    log::info(&format!(
        "removed {} from proxy VM {}",
        hot.file, hot.proxy_vm
    ));
    Ok(())
}

/// Removes every disk of `proxy_vm` backed by `file` (its file kept).
fn detach_file(session: &Session, proxy_vm: &str, file: &str) -> VixResult<()> {
    let keys: Vec<i32> = session
        .disk_devices(proxy_vm)?
        .into_iter()
        .filter(|d| d.file_name == file)
        .map(|d| d.key)
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    let changes: String = keys
        .iter()
        .map(|k| {
            format!(
                "<deviceChange><operation>remove</operation>\
                 <device xsi:type=\"VirtualDisk\"><key>{k}</key></device></deviceChange>"
            )
        })
        .collect();
    session.reconfigure(proxy_vm, &changes)
}

fn write_durably(path: &Path, bytes: &[u8]) -> VixResult<()> {
    let tmp = path.with_extension("tmp");
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return io_fail("cannot write the hot-add record", path, &e);
    }
    Ok(())
}

fn read_records(tmp_directory: &Path) -> VixResult<Vec<Record>> {
    let dir = records_dir(tmp_directory);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return io_fail("cannot list", &dir, &e),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let parsed = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let field = |v: &serde_json::Value, k: &str| v.get(k)?.as_str().map(str::to_owned);
        let record = parsed.as_ref().and_then(|v| {
            Some(Record {
                path: path.clone(),
                pid: u32::try_from(v.get("pid")?.as_u64()?).ok()?,
                start_time: v.get("start_time")?.as_u64()?,
                server: field(v, "server")?,
                proxy_vm: field(v, "proxy_vm")?,
                vm: field(v, "vm")?,
                file: field(v, "file")?,
            })
        });
        match record {
            Some(r) => out.push(r),
            None => log::warn(&format!(
                "ignoring {}: not a hot-add record this library wrote",
                path.display()
            )),
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// What Cleanup did: VMs whose leftovers are gone, and VMs with some left.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cleaned {
    pub cleaned: u32,
    pub remaining: u32,
}

/// `VixDiskLib_Cleanup` for the server `session` is logged in to: detaches what dead
/// processes hot-added. `Err` (with the counts) when something is left.
pub(crate) fn cleanup(
    tmp_directory: &Path,
    session: &Session,
) -> Result<Cleaned, (Cleaned, crate::vix::VixCallError)> {
    let server = session.server();
    let records = match read_records(tmp_directory) {
        Ok(r) => r,
        Err(e) => return Err((Cleaned::default(), e)),
    };
    // Per VM: whether every one of its leftovers went.
    let mut vms: BTreeMap<String, bool> = BTreeMap::new();
    let mut first_error = None;
    for record in records
        .iter()
        .filter(|r| r.server == server && !owner_alive(r))
    {
        let done = detach_file(session, &record.proxy_vm, &record.file);
        match done {
            Ok(()) => {
                let _ = std::fs::remove_file(&record.path);
                log::info(&format!(
                    "cleanup: removed {} of {} from proxy VM {} (hot-added by process {}, which is gone)",
                    record.file, record.vm, record.proxy_vm, record.pid
                ));
                vms.entry(record.vm.clone()).or_insert(true);
            }
            Err(e) => {
                log::warn(&format!(
                    "cleanup: cannot remove {} from proxy VM {}: {}",
                    record.file, record.proxy_vm, e.detail
                ));
                vms.insert(record.vm.clone(), false);
                first_error.get_or_insert(e);
            }
        }
    }
    let cleaned = vms.values().filter(|ok| **ok).count();
    let counts = Cleaned {
        cleaned: u32::try_from(cleaned).unwrap_or(u32::MAX),
        remaining: u32::try_from(vms.len() - cleaned).unwrap_or(u32::MAX),
    };
    match first_error {
        None => Ok(counts),
        Some(e) => Err((counts, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_not() {
        let me = std::process::id();
        let started = start_time(me).expect("own start time");
        let record = |pid, start_time| Record {
            path: PathBuf::new(),
            pid,
            start_time,
            server: String::new(),
            proxy_vm: String::new(),
            vm: String::new(),
            file: String::new(),
        };
        assert!(owner_alive(&record(me, started)));
        // The same number with another start time: a different process.
        assert!(!owner_alive(&record(me, started + 1)));
        assert!(!owner_alive(&record(u32::MAX - 1, 0)));
    }
}
