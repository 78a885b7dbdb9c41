//! The catalog's queries over one rusqlite `Connection` (owned by the `catalog` thread).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::CatalogError;
use super::schema::{self, MigrateError};
use crate::ids::{ChangeId, ChunkDigest, DiskKey, JobId, RestorePointId, VmMoref};

/// A VM as recorded with its restore points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// Managed object reference (image mode: `image:<name>`).
    pub moref: VmMoref,
    /// Display name.
    pub name: String,
    /// vCenter instance UUID ("" in image mode).
    pub vcenter_uuid: String,
    /// Supervisor namespace, for VM Service VMs.
    pub namespace: Option<String>,
}

/// Full backup or incremental (changed blocks only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PointKind {
    /// Every allocated block was read.
    Full,
    /// Only changed blocks were read; the rest comes from the parent's index.
    Incremental,
}

impl PointKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Incremental => "incremental",
        }
    }
}

/// Role of a disk in its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskRole {
    /// The boot disk.
    Os,
    /// A classic (non-PVC) data disk.
    Classic,
    /// A disk backing a Kubernetes PVC.
    Pvc,
}

impl DiskRole {
    fn as_str(self) -> &'static str {
        match self {
            Self::Os => "os",
            Self::Classic => "classic",
            Self::Pvc => "pvc",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "os" => Self::Os,
            "pvc" => Self::Pvc,
            _ => Self::Classic,
        }
    }
}

/// A disk of a restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// Device key.
    pub key: DiskKey,
    /// Device label ("Hard disk 1").
    pub label: String,
    /// Capacity in bytes.
    pub capacity_bytes: u64,
    /// Backing file (`[ds1] vm/disk.vmdk`, or the image path in image mode).
    pub backing_file: String,
    /// Disk UUID.
    pub disk_uuid: Option<String>,
    /// CBT change id at the snapshot.
    pub change_id: Option<ChangeId>,
    /// Role.
    pub role: DiskRole,
    /// Index file, relative to the repository root.
    pub index_path: String,
    /// Bytes read as changed by this backup.
    pub bytes_changed: u64,
    /// Bytes of new chunk files written by this backup.
    pub bytes_stored: u64,
}

/// A restore point to commit (also the body of its manifest, `crate::repo::manifest`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewPoint {
    /// Identifier (chosen before the data is written: index files live under it).
    pub id: RestorePointId,
    /// The VM.
    pub vm: VmRecord,
    /// The job that made it.
    pub job: Option<JobId>,
    /// The point an incremental started from.
    pub parent: Option<RestorePointId>,
    /// Unix time in seconds.
    pub created_at: i64,
    /// Full or incremental.
    pub kind: PointKind,
    /// Why this kind (e.g. "first backup", "cbt").
    pub reason: String,
    /// The VMX file, byte for byte, until [`crate::repo::Repository::commit_point`] writes
    /// it to the point's config file ([`crate::repo::point_config`]): never in the catalog
    /// nor in a manifest. Read (base64) from manifests written before schema 6.
    #[serde(
        default,
        skip_serializing,
        deserialize_with = "crate::repo::manifest::base64_bytes::deserialize"
    )]
    pub vmx: Option<Vec<u8>>,
    /// ExtraConfig as JSON; kept as [`Self::vmx`] is.
    #[serde(default, skip_serializing)]
    pub extra_config: Option<serde_json::Value>,
    /// The NVRAM file, byte for byte; kept as [`Self::vmx`] is (never in a manifest).
    #[serde(skip)]
    pub nvram: Option<Vec<u8>>,
    /// The VirtualMachineGroup and VirtualMachineServices around a VM Service VM
    /// ([`crate::vmservice::related`]); kept as [`Self::vmx`] is (never in a manifest).
    #[serde(skip)]
    pub related: Vec<serde_json::Value>,
    /// Digest of the point's config file, which holds its VMX and ExtraConfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<ChunkDigest>,
    /// Statistics as JSON.
    pub stats: serde_json::Value,
    /// Disks.
    pub disks: Vec<DiskRecord>,
}

/// A committed restore point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointRecord {
    /// Identifier.
    pub id: RestorePointId,
    /// The VM.
    pub vm: VmRecord,
    /// Parent of an incremental.
    pub parent: Option<RestorePointId>,
    /// Unix time in seconds.
    pub created_at: i64,
    /// Full or incremental.
    pub kind: PointKind,
    /// Why this kind.
    pub reason: String,
    /// Statistics.
    pub stats: serde_json::Value,
    /// Disks.
    pub disks: Vec<DiskRecord>,
    /// Digest of the point's config file ([`crate::repo::point_config`]), if it kept a
    /// VMX or ExtraConfig there.
    #[serde(skip)]
    pub config_digest: Option<ChunkDigest>,
}

impl PointRecord {
    /// The backup job that made the point, as its statistics record it (none for an image
    /// backup).
    #[must_use]
    pub fn job(&self) -> Option<JobId> {
        self.stats.get("job")?.as_str()?.parse().ok()
    }
}

/// How a job ended, for [`Catalog::job_finish`].
#[derive(Debug, Clone)]
pub struct JobEnd {
    /// Whether every VM succeeded.
    pub succeeded: bool,
    /// The error, when it failed.
    pub error: Option<String>,
    /// What it achieved (skew, per-VM results) as JSON.
    pub stats: serde_json::Value,
}

/// What the catalog knows of a restore point's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PointConfig {
    /// The VMX file, byte for byte: only from a catalog written before schema 6 whose
    /// configuration was not yet moved to the point's config file.
    pub vmx: Option<Vec<u8>>,
    /// ExtraConfig as JSON, as [`Self::vmx`].
    pub extra_config: Option<serde_json::Value>,
    /// The NVRAM file: never in the catalog (`Repository::point_config` reads it from the
    /// config file).
    pub nvram: Option<Vec<u8>>,
    /// The VirtualMachineGroup and VirtualMachineServices kept with a VM Service VM: never
    /// in the catalog (`Repository::point_config` reads them from the config file).
    pub related: Vec<serde_json::Value>,
    /// Digest of the point's config file.
    pub digest: Option<ChunkDigest>,
    /// The job that made it.
    pub job: Option<JobId>,
}

/// Kind of a side effect recorded in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalKind {
    /// A snapshot we created.
    Snapshot,
    /// A `PrepareForAccess` not yet ended.
    PrepareAccess,
    /// A VM shell created by a restore.
    VmShell,
}

impl JournalKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::PrepareAccess => "prepare_access",
            Self::VmShell => "vm_shell",
        }
    }
}

/// An open journal entry.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    /// Row id.
    pub id: i64,
    /// Kind as stored.
    pub kind: String,
    /// The VM.
    pub vm: VmMoref,
    /// Detail JSON.
    pub detail: serde_json::Value,
    /// Unix time when opened.
    pub opened_at: i64,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// `repo_meta` key: when restore points were first removed since the last successful GC
/// (Unix seconds, as text). Their chunks and index directories may be garbage until GC runs.
pub const GC_PENDING_KEY: &str = "gc.pending_since";

/// `repo_meta` key prefix, followed by an image's moref (`image:NAME`): the point that
/// became the image's newest when its newest was removed. An incremental with changed
/// extents and no parent would start from it, while the extents were made since the
/// point removed: `image backup` refuses that until a new point of the image exists.
pub const IMAGE_NEWEST_REMOVED_PREFIX: &str = "image.newest_removed.";

/// `repo_meta` key prefix, followed by `<vCenter instance uuid>/<VM moref>`: a restore in
/// place began writing that VM's disks when the VM's newest point was the one the value
/// names (empty: none). Writes through VDDK need not show in the VM's change tracking
/// (a hot-added disk is written by the proxy VM), so the next backup from that point is
/// full; one from a newer point (made after the restore) need not be.
pub const RESTORED_IN_PLACE_PREFIX: &str = "restored_in_place.";

/// The catalog: queries over one connection.
#[derive(Debug)]
pub struct Catalog {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
}

impl Catalog {
    /// Open (creating if absent) and migrate the catalog at `path`, in WAL mode.
    ///
    /// # Errors
    /// [`CatalogError::NewerVersion`] for a catalog from a newer agent, [`CatalogError::Sql`]
    /// otherwise; both name the file.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        let sql = |source| CatalogError::Sql {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        // FULL: a committed restore point survives power loss (WAL + NORMAL may lose it).
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        Self::with_connection(conn, path.to_path_buf())
    }

    /// An in-memory catalog (tests).
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn open_in_memory() -> Result<Self, CatalogError> {
        let conn = Connection::open_in_memory().map_err(|source| CatalogError::Sql {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::with_connection(conn, PathBuf::from(":memory:"))
    }

    fn with_connection(mut conn: Connection, path: PathBuf) -> Result<Self, CatalogError> {
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|source| CatalogError::Sql {
                path: path.clone(),
                source,
            })?;
        // Deleted and overwritten content is zeroed, not left in free pages: the VMX and
        // ExtraConfig that catalogs before schema 6 held inline are cleared for good when
        // they are moved out (and a pruned point's rows leave nothing behind).
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(|source| CatalogError::Sql {
                path: path.clone(),
                source,
            })?;
        match schema::migrate(&mut conn) {
            Ok(_) => Ok(Self { conn, path }),
            Err(MigrateError::Newer(found)) => Err(CatalogError::NewerVersion {
                path,
                found,
                supported: schema::LATEST_VERSION,
            }),
            Err(MigrateError::Sql(source)) => Err(CatalogError::Sql { path, source }),
        }
    }

    pub(super) fn sql(&self) -> impl Fn(rusqlite::Error) -> CatalogError + '_ {
        |source| CatalogError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// Close the catalog as one self-contained file: its WAL checkpointed into it and
    /// removed, so that the file alone can be renamed into place (`repo rebuild-catalog`
    /// builds the new catalog aside). The next [`Catalog::open`] turns WAL mode on again.
    ///
    /// # Errors
    /// [`CatalogError::Sql`] naming the file.
    pub fn close_as_single_file(self) -> Result<(), CatalogError> {
        self.conn
            .pragma_update(None, "journal_mode", "DELETE")
            .map_err(self.sql())?;
        let path = self.path;
        self.conn
            .close()
            .map_err(|(_, source)| CatalogError::Sql { path, source })
    }

    /// What SQLite finds wrong with the database: `PRAGMA integrity_check` (pages, records
    /// and indexes), `PRAGMA foreign_key_check` (disks of unknown points, points of
    /// unknown VMs) and restore points without disks. Empty when all are clean.
    ///
    /// # Errors
    /// [`CatalogError::Sql`] when SQLite cannot even run the checks.
    pub fn integrity_check(&self) -> Result<Vec<String>, CatalogError> {
        let mut problems = Vec::new();
        let mut stmt = self
            .conn
            .prepare("PRAGMA integrity_check")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.sql())?;
        for row in rows {
            let row = row.map_err(self.sql())?;
            if row != "ok" {
                problems.push(row);
            }
        }
        let mut stmt = self
            .conn
            .prepare("PRAGMA foreign_key_check")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(format!(
                    "row {} of table {} refers to a missing row of {}",
                    r.get::<_, Option<i64>>(1)?
                        .map_or_else(|| "?".to_owned(), |id| id.to_string()),
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(self.sql())?;
        for row in rows {
            problems.push(row.map_err(self.sql())?);
        }
        // Every backup stores at least one disk: a point without any lost them.
        let mut stmt = self
            .conn
            .prepare(
                "SELECT p.id FROM restore_points p
                 WHERE NOT EXISTS (SELECT 1 FROM disks d WHERE d.point_id = p.id)",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.sql())?;
        for row in rows {
            let id = row.map_err(self.sql())?;
            problems.push(format!("restore point {id} has no disk row"));
        }
        Ok(problems)
    }

    /// Read a repository setting.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn meta(&self, key: &str) -> Result<Option<String>, CatalogError> {
        self.conn
            .query_row("SELECT value FROM repo_meta WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.sql())
    }

    /// Write a repository setting.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT INTO repo_meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map(|_| ())
            .map_err(self.sql())
    }

    /// Remove a repository setting if it still holds `value`; whether it did.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn clear_meta_if(&self, key: &str, value: &str) -> Result<bool, CatalogError> {
        self.conn
            .execute(
                "DELETE FROM repo_meta WHERE key = ?1 AND value = ?2",
                [key, value],
            )
            .map(|n| n > 0)
            .map_err(self.sql())
    }

    /// Make a restore point visible: VM, point and disks in one transaction.
    ///
    /// # Errors
    /// [`CatalogError::Sql`]; on error nothing is visible.
    pub fn commit_point(&mut self, point: &NewPoint) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let sql = |source| CatalogError::Sql {
            path: path.clone(),
            source,
        };
        if point.vmx.is_some() || point.extra_config.is_some() || point.nvram.is_some() {
            // Secrets never enter the catalog: `Repository::commit_point` writes them to
            // the point's config file first and leaves only its digest.
            return Err(CatalogError::Invalid {
                path,
                what: format!(
                    "restore point {}: its VMX and ExtraConfig belong in its config file, \
                     not in the catalog",
                    point.id
                ),
            });
        }
        let tx = self.conn.transaction().map_err(sql)?;
        tx.execute(
            "INSERT INTO vms (moref, vcenter_uuid, name, namespace) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (vcenter_uuid, moref) DO UPDATE SET name = excluded.name,
                 namespace = excluded.namespace",
            params![
                point.vm.moref.0,
                point.vm.vcenter_uuid,
                point.vm.name,
                point.vm.namespace
            ],
        )
        .map_err(sql)?;
        let vm_id: i64 = tx
            .query_row(
                "SELECT id FROM vms WHERE vcenter_uuid = ?1 AND moref = ?2",
                params![point.vm.vcenter_uuid, point.vm.moref.0],
                |r| r.get(0),
            )
            .map_err(sql)?;
        if let Some(job) = point.job {
            // A job the catalog has no record of (`repo rebuild-catalog`, which has only the
            // points): its group from the point's stats, so that the group's policy still
            // applies its retention to it.
            let group = point.stats.get("group").and_then(serde_json::Value::as_str);
            tx.execute(
                "INSERT OR IGNORE INTO jobs (id, group_name, created_at, state)
                 VALUES (?1, ?2, ?3, 'running')",
                params![job.to_string(), group, point.created_at],
            )
            .map_err(sql)?;
        }
        tx.execute(
            "INSERT INTO restore_points (id, vm_id, job_id, parent_id, created_at, kind, reason,
                 state, config_digest, stats)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'committed', ?8, ?9)",
            params![
                point.id.to_string(),
                vm_id,
                point.job.map(|j| j.to_string()),
                point.parent.map(|p| p.to_string()),
                point.created_at,
                point.kind.as_str(),
                point.reason,
                point.config_digest.map(|d| d.to_hex()),
                point.stats.to_string(),
            ],
        )
        .map_err(sql)?;
        for d in &point.disks {
            tx.execute(
                "INSERT INTO disks (point_id, disk_key, label, capacity_bytes, backing_file,
                     disk_uuid, change_id, role, index_path, bytes_changed, bytes_stored)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    point.id.to_string(),
                    d.key.0,
                    d.label,
                    to_i64(d.capacity_bytes),
                    d.backing_file,
                    d.disk_uuid,
                    d.change_id.as_ref().map(|c| c.0.clone()),
                    d.role.as_str(),
                    d.index_path,
                    to_i64(d.bytes_changed),
                    to_i64(d.bytes_stored),
                ],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }

    /// Every committed restore point, oldest first.
    ///
    /// # Errors
    /// [`CatalogError::Sql`] or [`CatalogError::Invalid`] for an unreadable row.
    pub fn list_points(&self) -> Result<Vec<PointRecord>, CatalogError> {
        self.query_points("", [])
    }

    /// One restore point.
    ///
    /// # Errors
    /// [`CatalogError::Sql`] or [`CatalogError::Invalid`].
    pub fn get_point(&self, id: RestorePointId) -> Result<Option<PointRecord>, CatalogError> {
        Ok(self
            .query_points("WHERE p.id = ?1", [id.to_string()])?
            .pop())
    }

    /// The newest committed point of a VM (the base of its next incremental).
    ///
    /// # Errors
    /// [`CatalogError::Sql`] or [`CatalogError::Invalid`].
    pub fn latest_point(
        &self,
        vcenter_uuid: &str,
        moref: &VmMoref,
    ) -> Result<Option<PointRecord>, CatalogError> {
        Ok(self
            .query_points(
                "WHERE v.vcenter_uuid = ?1 AND v.moref = ?2 AND p.rowid = (
                     SELECT q.rowid FROM restore_points q WHERE q.vm_id = p.vm_id
                     ORDER BY q.created_at DESC, q.rowid DESC LIMIT 1)",
                [vcenter_uuid, moref.0.as_str()],
            )?
            .pop())
    }

    fn query_points<P: rusqlite::Params>(
        &self,
        filter: &str,
        params: P,
    ) -> Result<Vec<PointRecord>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT p.id, v.moref, v.name, v.vcenter_uuid, v.namespace, p.parent_id,
                        p.created_at, p.kind, p.reason, p.stats, p.config_digest
                 FROM restore_points p JOIN vms v ON v.id = p.vm_id {filter}
                 ORDER BY p.created_at, p.rowid"
            ))
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    VmRecord {
                        moref: VmMoref(r.get(1)?),
                        name: r.get(2)?,
                        vcenter_uuid: r.get(3)?,
                        namespace: r.get(4)?,
                    },
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, String>(9)?,
                    r.get::<_, Option<String>>(10)?,
                ))
            })
            .map_err(self.sql())?;
        let mut out = Vec::new();
        for row in rows {
            let (id, vm, parent, created_at, kind, reason, stats, config) =
                row.map_err(self.sql())?;
            let invalid = |what: &str| CatalogError::Invalid {
                path: self.path.clone(),
                what: format!("restore point {id}: {what}"),
            };
            let id_parsed: RestorePointId = id.parse().map_err(|_| invalid("bad id"))?;
            let parent = match parent {
                Some(p) => Some(p.parse().map_err(|_| invalid("bad parent id"))?),
                None => None,
            };
            let kind = match kind.as_str() {
                "full" => PointKind::Full,
                _ => PointKind::Incremental,
            };
            let stats = serde_json::from_str(&stats).map_err(|_| invalid("bad stats JSON"))?;
            let config_digest = match config {
                Some(d) => Some(d.parse().map_err(|_| invalid("bad config digest"))?),
                None => None,
            };
            let disks = self.disks_of(&id)?;
            out.push(PointRecord {
                id: id_parsed,
                vm,
                parent,
                created_at,
                kind,
                reason,
                stats,
                disks,
                config_digest,
            });
        }
        Ok(out)
    }

    fn disks_of(&self, point: &str) -> Result<Vec<DiskRecord>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT disk_key, label, capacity_bytes, backing_file, disk_uuid, change_id, role,
                        index_path, bytes_changed, bytes_stored
                 FROM disks WHERE point_id = ?1 ORDER BY disk_key",
            )
            .map_err(self.sql())?;
        stmt.query_map([point], |r| {
            Ok(DiskRecord {
                key: DiskKey(r.get(0)?),
                label: r.get(1)?,
                capacity_bytes: to_u64(r.get(2)?),
                backing_file: r.get(3)?,
                disk_uuid: r.get(4)?,
                change_id: r.get::<_, Option<String>>(5)?.map(ChangeId),
                role: DiskRole::parse(&r.get::<_, String>(6)?),
                index_path: r.get(7)?,
                bytes_changed: to_u64(r.get(8)?),
                bytes_stored: to_u64(r.get(9)?),
            })
        })
        .and_then(Iterator::collect)
        .map_err(self.sql())
    }

    /// Delete restore points (and their disks) in one transaction; returns how many existed.
    /// When any existed, the same transaction records that GC has work
    /// ([`GC_PENDING_KEY`], kept if already set).
    ///
    /// # Errors
    /// [`CatalogError::Sql`]; on error nothing is deleted.
    pub fn delete_points(&mut self, ids: &[RestorePointId]) -> Result<usize, CatalogError> {
        let path = self.path.clone();
        let sql = |source| CatalogError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        let mut n = 0;
        // Images whose newest point goes (see IMAGE_NEWEST_REMOVED_PREFIX).
        let mut images: Vec<(String, i64)> = Vec::new();
        for id in ids {
            let newest_of_image: Option<(String, i64)> = tx
                .query_row(
                    "SELECT v.moref, p.vm_id FROM restore_points p JOIN vms v ON v.id = p.vm_id
                     WHERE p.id = ?1 AND v.moref LIKE 'image:%' AND NOT EXISTS (
                         SELECT 1 FROM restore_points q WHERE q.vm_id = p.vm_id
                         AND (q.created_at > p.created_at
                              OR (q.created_at = p.created_at AND q.rowid > p.rowid)))",
                    [id.to_string()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(sql)?;
            images.extend(newest_of_image);
            n += tx
                .execute("DELETE FROM restore_points WHERE id = ?1", [id.to_string()])
                .map_err(sql)?;
        }
        for (moref, vm_id) in images {
            let newest: String = tx
                .query_row(
                    "SELECT id FROM restore_points WHERE vm_id = ?1
                     ORDER BY created_at DESC, rowid DESC LIMIT 1",
                    [vm_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?
                .unwrap_or_default();
            tx.execute(
                "INSERT INTO repo_meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![format!("{IMAGE_NEWEST_REMOVED_PREFIX}{moref}"), newest],
            )
            .map_err(sql)?;
        }
        if n > 0 {
            // In the same transaction: whoever removes points leaves garbage for GC.
            tx.execute(
                "INSERT INTO repo_meta (key, value) VALUES (?1, strftime('%s', 'now'))
                 ON CONFLICT (key) DO NOTHING",
                [GC_PENDING_KEY],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok(n)
    }

    /// Record a side effect before doing it; returns the entry id.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn journal_open(
        &self,
        kind: JournalKind,
        vm: &VmMoref,
        detail: &serde_json::Value,
        now: i64,
    ) -> Result<i64, CatalogError> {
        self.conn
            .execute(
                "INSERT INTO journal (kind, vm_moref, detail, opened_at, state)
                 VALUES (?1, ?2, ?3, ?4, 'open')",
                params![kind.as_str(), vm.0, detail.to_string(), now],
            )
            .map_err(self.sql())?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Close a journal entry once its side effect is undone.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn journal_close(&self, id: i64, now: i64) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "UPDATE journal SET closed_at = ?2, state = 'closed' WHERE id = ?1",
                params![id, now],
            )
            .map(|_| ())
            .map_err(self.sql())
    }

    /// Replace the detail of an open journal entry (e.g. to add the snapshot's moref once
    /// the snapshot exists).
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn journal_update(&self, id: i64, detail: &serde_json::Value) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "UPDATE journal SET detail = ?2 WHERE id = ?1",
                params![id, detail.to_string()],
            )
            .map(|_| ())
            .map_err(self.sql())
    }

    /// Record a job as running.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn job_start(&self, job: JobId, group: Option<&str>, now: i64) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT INTO jobs (id, group_name, created_at, state) VALUES (?1, ?2, ?3, 'running')
                 ON CONFLICT (id) DO UPDATE SET group_name = excluded.group_name",
                params![job.to_string(), group, now],
            )
            .map(|_| ())
            .map_err(self.sql())
    }

    /// The jobs recorded with group `group` (a scheduling policy's runs carry its name).
    ///
    /// # Errors
    /// [`CatalogError::Sql`], or [`CatalogError::Invalid`] for a stored id that does not
    /// parse.
    pub fn jobs_of_group(&self, group: &str) -> Result<Vec<JobId>, CatalogError> {
        self.job_ids("SELECT id FROM jobs WHERE group_name = ?1", [group])
    }

    /// The job ids `sql` selects (one column) with `params`.
    fn job_ids(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<JobId>, CatalogError> {
        let mut stmt = self.conn.prepare(sql).map_err(self.sql())?;
        let ids: Vec<String> = stmt
            .query_map(params, |r| r.get(0))
            .and_then(Iterator::collect)
            .map_err(self.sql())?;
        ids.iter()
            .map(|id| {
                id.parse().map_err(|_| CatalogError::Invalid {
                    path: self.path.clone(),
                    what: format!("job id {id:?}"),
                })
            })
            .collect()
    }

    /// Whether this catalog has a record of `job`: every backup and restore job is recorded
    /// before it changes anything (the reconciler tells this repository's snapshots from
    /// those of another repository's or agent's jobs by it).
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn job_known(&self, job: JobId) -> Result<bool, CatalogError> {
        self.conn
            .query_row(
                "SELECT 1 FROM jobs WHERE id = ?1",
                [job.to_string()],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(self.sql())
    }

    /// Record how a job ended.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn job_finish(&self, job: JobId, end: &JobEnd, now: i64) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "UPDATE jobs SET state = ?2, error = ?3, stats = ?4, finished_at = ?5 WHERE id = ?1",
                params![
                    job.to_string(),
                    if end.succeeded { "succeeded" } else { "failed" },
                    end.error,
                    end.stats.to_string(),
                    now
                ],
            )
            .map(|_| ())
            .map_err(self.sql())
    }

    /// Jobs still marked running (for the reconciler: those whose process is gone were
    /// interrupted).
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn running_jobs(&self) -> Result<Vec<JobId>, CatalogError> {
        self.job_ids(
            "SELECT id FROM jobs WHERE state = 'running' ORDER BY created_at",
            [],
        )
    }

    /// The stats JSON of a job, if it exists.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn job_stats(&self, job: JobId) -> Result<Option<serde_json::Value>, CatalogError> {
        let stats: Option<Option<String>> = self
            .conn
            .query_row(
                "SELECT stats FROM jobs WHERE id = ?1",
                [job.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())?;
        Ok(stats.flatten().and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// What the catalog knows of a restore point's configuration: its config file's
    /// digest (and, in a catalog from before schema 6 not yet moved out, the VMX bytes and
    /// ExtraConfig JSON themselves), and its job.
    ///
    /// # Errors
    /// [`CatalogError::Sql`], or [`CatalogError::Invalid`] for a digest that does not parse.
    pub fn point_config(&self, id: RestorePointId) -> Result<Option<PointConfig>, CatalogError> {
        type Row = (
            Option<Vec<u8>>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT vmx, extra_config, config_digest, job_id FROM restore_points
                 WHERE id = ?1",
                [id.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(self.sql())?;
        row.map(|(vmx, extra, digest, job)| {
            Ok(PointConfig {
                vmx,
                // Always written as JSON; text that does not parse is kept as it is
                // rather than dropped (it is moved to the config file and cleared here).
                extra_config: extra
                    .map(|s| serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s))),
                nvram: None,
                related: Vec::new(),
                digest: match digest {
                    Some(d) => Some(d.parse().map_err(|_| CatalogError::Invalid {
                        path: self.path.clone(),
                        what: format!("restore point {id}: bad config digest"),
                    })?),
                    None => None,
                },
                job: job.and_then(|j| j.parse().ok()),
            })
        })
        .transpose()
    }

    /// The points whose VMX or ExtraConfig a catalog from before schema 6 still holds.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn points_with_inline_config(&self) -> Result<Vec<RestorePointId>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id FROM restore_points
                 WHERE vmx IS NOT NULL OR extra_config IS NOT NULL ORDER BY rowid",
            )
            .map_err(self.sql())?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// Record that `id`'s configuration is in its config file with `digest`, and clear the
    /// copy the catalog held. With `secure_delete` on, SQLite overwrites the freed bytes;
    /// [`Self::checkpoint_truncate`] then drops the copies in the WAL.
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn config_moved(
        &mut self,
        id: RestorePointId,
        digest: &ChunkDigest,
    ) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "UPDATE restore_points SET vmx = NULL, extra_config = NULL, config_digest = ?2
                 WHERE id = ?1",
                params![id.to_string(), digest.to_hex()],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Rewrite the database without free pages (`VACUUM`): content deleted before
    /// `secure_delete` was on is gone from the file afterwards (and from its WAL after
    /// [`Self::checkpoint_truncate`]).
    ///
    /// # Errors
    /// [`CatalogError::Sql`] (busy while another process writes for longer than the busy
    /// timeout).
    pub fn vacuum(&mut self) -> Result<(), CatalogError> {
        self.conn.execute_batch("VACUUM").map_err(self.sql())
    }

    /// Copy the WAL into the database and empty it (`PRAGMA wal_checkpoint(TRUNCATE)`), so
    /// that rows changed since are no longer in the WAL. Returns whether it ran to the end
    /// (a reader in another process can hold it back; it is then done at a later one).
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn checkpoint_truncate(&mut self) -> Result<bool, CatalogError> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(self.sql())?;
        Ok(busy == 0)
    }

    /// Entries still open (for the reconciler).
    ///
    /// # Errors
    /// [`CatalogError::Sql`].
    pub fn journal_open_entries(&self) -> Result<Vec<JournalEntry>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, kind, vm_moref, detail, opened_at FROM journal
                 WHERE state = 'open' ORDER BY id",
            )
            .map_err(self.sql())?;
        stmt.query_map([], |r| {
            Ok(JournalEntry {
                id: r.get(0)?,
                kind: r.get(1)?,
                vm: VmMoref(r.get(2)?),
                detail: serde_json::from_str(&r.get::<_, String>(3)?)
                    .unwrap_or(serde_json::Value::Null),
                opened_at: r.get(4)?,
            })
        })
        .and_then(Iterator::collect)
        .map_err(self.sql())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_point(name: &str, created_at: i64) -> NewPoint {
        let id = RestorePointId::new_random();
        NewPoint {
            id,
            vm: VmRecord {
                moref: VmMoref(format!("image:{name}")),
                name: name.into(),
                vcenter_uuid: String::new(),
                namespace: None,
            },
            job: Some(JobId::new_random()),
            parent: None,
            created_at,
            kind: PointKind::Full,
            reason: "first backup".into(),
            vmx: None,
            extra_config: None,
            nvram: None,
            related: Vec::new(),
            config_digest: Some(ChunkDigest::of(b"config")),
            stats: serde_json::json!({"bytes": 1}),
            disks: vec![DiskRecord {
                key: DiskKey(2000),
                label: "Hard disk 1".into(),
                capacity_bytes: 1 << 30,
                backing_file: "/img".into(),
                disk_uuid: None,
                change_id: Some(ChangeId("*".into())),
                role: DiskRole::Os,
                index_path: format!("indexes/{id}/2000.fidx"),
                bytes_changed: 5,
                bytes_stored: 3,
            }],
        }
    }

    #[test]
    fn latest_point_is_the_newest_of_that_vm() {
        let mut c = Catalog::open_in_memory().unwrap();
        let old = sample_point("a", 100);
        let new = sample_point("a", 200);
        let other = sample_point("b", 300);
        for p in [&new, &old, &other] {
            c.commit_point(p).unwrap();
        }
        let vm = VmMoref("image:a".into());
        assert_eq!(c.latest_point("", &vm).unwrap().unwrap().id, new.id);
        assert!(c.latest_point("other-vc", &vm).unwrap().is_none());
        assert!(
            c.latest_point("", &VmMoref("image:c".into()))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_point_of_an_unrecorded_job_gives_the_job_its_group() {
        let mut c = Catalog::open_in_memory().unwrap();
        let mut p = sample_point("a", 100);
        p.stats = serde_json::json!({"group": "nightly"});
        c.commit_point(&p).unwrap();
        let loose = sample_point("b", 100);
        c.commit_point(&loose).unwrap();
        assert_eq!(c.jobs_of_group("nightly").unwrap(), vec![p.job.unwrap()]);
        // A job recorded first keeps the group it started with.
        let recorded = JobId::new_random();
        c.job_start(recorded, Some("weekly"), 100).unwrap();
        let mut q = sample_point("c", 100);
        q.job = Some(recorded);
        q.stats = serde_json::json!({"group": "nightly"});
        c.commit_point(&q).unwrap();
        assert_eq!(c.jobs_of_group("weekly").unwrap(), vec![recorded]);
        assert_eq!(c.jobs_of_group("nightly").unwrap().len(), 1);
    }

    #[test]
    fn commit_list_get_delete() {
        let mut cat = Catalog::open_in_memory().unwrap();
        let a = sample_point("web", 100);
        let b = sample_point("web", 200);
        cat.commit_point(&a).unwrap();
        cat.commit_point(&b).unwrap();
        let all = cat.list_points().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].id, a.id);
        assert_eq!(all[0].disks, a.disks);
        assert_eq!(cat.get_point(b.id).unwrap().unwrap().created_at, 200);
        assert_eq!(cat.delete_points(&[a.id]).unwrap(), 1);
        assert_eq!(cat.list_points().unwrap().len(), 1);
        // Duplicate id: the transaction fails and nothing changes.
        assert!(cat.commit_point(&b).is_err());
        assert_eq!(cat.list_points().unwrap().len(), 1);
    }

    #[test]
    fn journal_and_meta() {
        let cat = Catalog::open_in_memory().unwrap();
        let vm = VmMoref("vm-1".into());
        let id = cat
            .journal_open(JournalKind::Snapshot, &vm, &serde_json::json!({"s": 1}), 5)
            .unwrap();
        assert_eq!(cat.journal_open_entries().unwrap().len(), 1);
        cat.journal_close(id, 6).unwrap();
        assert!(cat.journal_open_entries().unwrap().is_empty());
        cat.set_meta("k", "v").unwrap();
        assert_eq!(cat.meta("k").unwrap().as_deref(), Some("v"));
    }
}
