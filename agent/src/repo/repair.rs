//! `repo verify --repair`: set aside what verify found damaged, so that backups can heal it.
//!
//! Chunks are named by the digest of their plain data, and a backup skips any chunk whose
//! file exists. A corrupt chunk file would therefore stay referenced by every later backup
//! of the same data: the damage spreads to new restore points instead of being repaired.
//! The repair:
//!
//! 1. moves each **corrupt** chunk file to `quarantine/<digest>.<unix time>` (kept for
//!    inspection, never read again) and fsyncs both directories;
//! 2. records each corrupt or **missing** chunk in the catalog's `damaged_chunks`;
//! 3. forgets earlier records whose chunk is now intact or no longer referenced (only when
//!    the catalog is sound and every index could be read: otherwise references are
//!    unknown).
//!
//! `Repository::verify_and_repair` also writes the manifest of every point that has none
//! (made before manifests existed, see [`crate::repo::manifest`]).
//!
//! Chunks that could not be read (an I/O or permission error) are left as they are: they
//! may be intact, and the error is the administrator's to fix.
//!
//! It needs only the shared repository lock, like verify, so it never holds up backups for
//! the hours a large verify can take. What a concurrent backup can do:
//! - reuse a corrupt chunk before it is moved (its file exists): the new point references a
//!   chunk that is recorded as damaged a moment later, and heals with the others;
//! - store a missing chunk again after verify found it missing: it is recorded anyway, and
//!   the next backup that reads it, or the next repair, finds it intact and drops the record;
//! - it cannot replace a corrupt file with a good one: a backup writes a chunk only when no
//!   file of that digest exists. Once a repair moved the corrupt file, though, a backup can
//!   store the chunk again, intact, while a second repair acting on the same finding is
//!   about to move "the corrupt file": each repair therefore checks the file it moved and
//!   puts an intact one back.
//!
//! GC, which deletes chunk files, takes the exclusive lock and cannot run meanwhile.
//!
//! Healing is then done by backups ([`crate::repo::Repository::write_disk`]): a full backup
//! reads everything and stores the missing chunks again; an incremental also reads the
//! slots of its parent whose chunk is damaged. When the data is unchanged, the new chunk has
//! the old digest, and every restore point that referenced it restores again. A healed chunk
//! leaves the list once the backup has stored it durably and read it back intact; a chunk
//! no point references any more leaves it at the next GC.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ids::ChunkDigest;
use crate::repo::catalog::{CatalogHandle, DamagedChunk};
use crate::repo::chunk;
use crate::repo::chunk_store::{Bounded, ChunkStore};
use crate::repo::durable::{self, sync_dir};
use crate::repo::verify::{ChunkState, VerifyProblem, VerifyReport};

/// Directory (under the repository root) that receives corrupt chunk files.
pub const QUARANTINE_DIR: &str = "quarantine";

/// A corrupt chunk file moved aside.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Quarantined {
    /// The chunk.
    pub digest: ChunkDigest,
    /// Where it was.
    pub from: PathBuf,
    /// Where it is now.
    pub to: PathBuf,
}

/// What a repair did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RepairReport {
    /// Corrupt chunk files moved to `quarantine/`.
    pub quarantined: Vec<Quarantined>,
    /// Chunks recorded as damaged (corrupt or missing), to be stored again by backups.
    pub damaged: Vec<ChunkDigest>,
    /// Chunks left in place because they could not be read (fix the error, run again).
    pub unreadable: Vec<ChunkDigest>,
    /// Earlier damaged records dropped: intact again, or no longer referenced.
    pub cleared: usize,
    /// Point manifests written for points made before manifests existed.
    pub manifests_written: usize,
}

/// Why a repair stopped.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// Moving a chunk file or syncing a directory failed.
    #[error("quarantine chunk {digest}: {path}")]
    Quarantine {
        /// The chunk.
        digest: ChunkDigest,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] crate::repo::catalog::CatalogError),
}

/// Act on `report` (a verify of every committed point, made under the shared lock the
/// caller still holds) at Unix time `now`. `rechecked` are the damaged-chunk records as
/// they were when the verify began (digest → when found), whose chunks it re-read whatever
/// its subset.
///
/// Only those records, unchanged since, can be dropped as stale (their chunk found intact,
/// or used by no point): a record made or made again since, by another repair running
/// alongside, is of a chunk this verify may have found intact before that repair moved it
/// aside. A chunk this repair finds back in place, intact, loses its record in any case.
///
/// # Errors
/// [`RepairError`]; files already moved stay in `quarantine/` and their chunks read as
/// missing, which the next repair records.
pub fn repair(
    root: &Path,
    store: &ChunkStore,
    catalog: &CatalogHandle,
    report: &VerifyReport,
    rechecked: &HashMap<ChunkDigest, i64>,
    now: i64,
) -> Result<RepairReport, RepairError> {
    let mut out = RepairReport::default();
    let mut records = Vec::new();
    let mut bad = HashSet::new();
    // Chunks found intact in place just now: any record of them is stale.
    let mut back_in_place = Vec::new();
    let quarantine = root.join(QUARANTINE_DIR);
    for problem in &report.problems {
        let VerifyProblem::Chunk {
            digest,
            path,
            state,
            error,
            ..
        } = problem
        else {
            continue;
        };
        bad.insert(*digest);
        let quarantined_as = match state {
            ChunkState::Unreadable => {
                out.unreadable.push(*digest);
                continue;
            }
            ChunkState::Missing => None,
            ChunkState::Corrupt => {
                let name = format!("{}.{now}", digest.to_hex());
                match move_aside(store, digest, path, &quarantine, &name)? {
                    Moved::Aside(to) => {
                        // Relative to the repository: `quarantine/<name>`.
                        let relative = to.strip_prefix(root).unwrap_or(&to).display().to_string();
                        out.quarantined.push(Quarantined {
                            digest: *digest,
                            from: path.clone(),
                            to,
                        });
                        Some(relative)
                    }
                    // Gone since verify read it (another repair moved it): now missing.
                    Moved::Gone => None,
                    // Another repair moved the corrupt file and a backup stored the chunk
                    // again meanwhile: the file was intact and is back in place.
                    Moved::WasIntact => {
                        bad.remove(digest);
                        back_in_place.push(*digest);
                        continue;
                    }
                }
            }
        };
        out.damaged.push(*digest);
        records.push(DamagedChunk {
            digest: *digest,
            detected_at: now,
            error: error.clone(),
            quarantined_as,
        });
    }
    if !records.is_empty() {
        catalog.damaged_mark(records)?;
    }
    // Forget records only when every reference was seen: every index read, and a catalog
    // SQLite finds sound.
    let references_complete = !report.problems.iter().any(|p| {
        matches!(
            p,
            VerifyProblem::Index { .. } | VerifyProblem::Catalog { .. }
        )
    });
    let mut stale = back_in_place;
    if references_complete {
        stale.extend(
            catalog
                .damaged_list()?
                .into_iter()
                .filter(|d| {
                    rechecked.get(&d.digest) == Some(&d.detected_at) && !bad.contains(&d.digest)
                })
                .map(|d| d.digest),
        );
    }
    if !stale.is_empty() {
        stale.sort_unstable();
        stale.dedup();
        out.cleared = catalog.damaged_clear(stale)?;
    }
    Ok(out)
}

/// What [`move_aside`] did.
enum Moved {
    /// The corrupt file is in `quarantine/`, at this path.
    Aside(PathBuf),
    /// There was no file any more.
    Gone,
    /// The file found there was intact; it is back in place.
    WasIntact,
}

/// Rename `from` into `quarantine` as `name` (or `name.1`, `name.2`, … when another repair
/// put a file of that name there in the same second: nothing in the quarantine is ever
/// replaced), then fsync both directories.
///
/// The file is checked first, where it lies: verify found the chunk corrupt, but two
/// repairs can act on that finding at once, and after the first one moved the corrupt file a
/// backup may have stored the chunk again, intact (or verify misread it). Such a file is
/// left alone. A file stored again between that check and the rename is caught by a second
/// check once it is aside, and goes back (a hard link, which never replaces a newer file)
/// instead of into quarantine; only there can a failure or a crash leave an intact chunk
/// aside.
fn move_aside(
    store: &ChunkStore,
    digest: &ChunkDigest,
    from: &Path,
    quarantine: &Path,
    name: &str,
) -> Result<Moved, RepairError> {
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RepairError::Quarantine {
            digest: *digest,
            path,
            source,
        }
    };
    match store.read_bounded(from) {
        Ok(Bounded::Bytes(bytes)) if chunk::decode(&bytes, digest).is_ok() => {
            return Ok(Moved::WasIntact);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Moved::Gone),
        _ => {}
    }
    match fs::create_dir(quarantine) {
        Ok(()) => {
            let root = quarantine.parent().unwrap_or(quarantine);
            sync_dir(root).map_err(fail(root))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(quarantine)(e)),
    }
    let mut to = quarantine.join(name);
    for n in 1.. {
        match durable::rename_noreplace(from, &to) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                to = quarantine.join(format!("{name}.{n}"));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Moved::Gone),
            Err(e) => return Err(fail(from)(e)),
        }
    }
    let dir = store.dir_of(digest);
    let intact = matches!(store.read_bounded(&to),
        Ok(Bounded::Bytes(bytes)) if chunk::decode(&bytes, digest).is_ok());
    if intact {
        match fs::hard_link(&to, from) {
            Ok(()) => {}
            // Stored again meanwhile, by yet another backup: that copy stays.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail(from)(e)),
        }
        sync_dir(&dir).map_err(fail(&dir))?;
        fs::remove_file(&to).map_err(fail(&to))?;
        sync_dir(quarantine).map_err(fail(quarantine))?;
        return Ok(Moved::WasIntact);
    }
    sync_dir(quarantine).map_err(fail(quarantine))?;
    sync_dir(&dir).map_err(fail(&dir))?;
    Ok(Moved::Aside(to))
}
