//! Damaged chunks (`damaged_chunks`): chunks `repo verify --repair` found corrupt or missing.
//!
//! A corrupt chunk file is moved to `quarantine/` by the repair, so the next backup that
//! reads the same data stores a good copy under the same digest, which heals every restore
//! point referencing it. An incremental backup reads only changed extents, so it also reads
//! the slots of its parent whose chunk is listed here. An entry goes when a backup has stored
//! the chunk again, when a later repair finds it intact or no longer referenced, or when GC
//! finds no restore point that references it.

use rusqlite::params;
use serde::Serialize;

use super::CatalogError;
use super::db::Catalog;
use crate::ids::ChunkDigest;

/// A chunk found corrupt or missing by a repair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedChunk {
    /// The chunk's digest.
    pub digest: ChunkDigest,
    /// Unix time the repair found it.
    pub detected_at: i64,
    /// What was wrong.
    pub error: String,
    /// Where the corrupt file was moved, relative to the repository (none if it was missing).
    pub quarantined_as: Option<String>,
}

impl Catalog {
    /// Every damaged chunk, by digest.
    ///
    /// # Errors
    /// [`CatalogError::Sql`], or [`CatalogError::Invalid`] for a digest that is not 32 bytes.
    pub fn damaged_list(&self) -> Result<Vec<DamagedChunk>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT digest, detected_at, error, quarantined_as FROM damaged_chunks
                 ORDER BY digest",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(self.sql())?;
        let mut out = Vec::new();
        for row in rows {
            let (digest, detected_at, error, quarantined_as) = row.map_err(self.sql())?;
            let digest: [u8; 32] =
                digest
                    .try_into()
                    .map_err(|d: Vec<u8>| CatalogError::Invalid {
                        path: self.path.clone(),
                        what: format!("damaged_chunks has a digest of {} bytes", d.len()),
                    })?;
            out.push(DamagedChunk {
                digest: ChunkDigest(digest),
                detected_at,
                error,
                quarantined_as,
            });
        }
        Ok(out)
    }

    /// Record `chunks` as damaged (replacing earlier records of the same digests), in one
    /// transaction.
    ///
    /// # Errors
    /// [`CatalogError::Sql`]; on error nothing is recorded.
    pub fn damaged_mark(&mut self, chunks: &[DamagedChunk]) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let sql = |source| CatalogError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        for c in chunks {
            tx.execute(
                "INSERT INTO damaged_chunks (digest, detected_at, error, quarantined_as)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (digest) DO UPDATE SET detected_at = excluded.detected_at,
                   error = excluded.error,
                   quarantined_as = COALESCE(excluded.quarantined_as, quarantined_as)",
                params![
                    c.digest.0.as_slice(),
                    c.detected_at,
                    c.error,
                    c.quarantined_as
                ],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }

    /// Forget `digests` (stored again, intact or unreferenced); returns how many were listed.
    ///
    /// # Errors
    /// [`CatalogError::Sql`]; on error nothing is forgotten.
    pub fn damaged_clear(&mut self, digests: &[ChunkDigest]) -> Result<usize, CatalogError> {
        let path = self.path.clone();
        let sql = |source| CatalogError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        let mut n = 0;
        for d in digests {
            n += tx
                .execute(
                    "DELETE FROM damaged_chunks WHERE digest = ?1",
                    [d.0.as_slice()],
                )
                .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn damaged(byte: u8, quarantined_as: Option<&str>) -> DamagedChunk {
        DamagedChunk {
            digest: ChunkDigest([byte; 32]),
            detected_at: 100,
            error: format!("bad {byte}"),
            quarantined_as: quarantined_as.map(str::to_owned),
        }
    }

    #[test]
    fn mark_list_and_clear() {
        let mut c = Catalog::open_in_memory().unwrap();
        assert!(c.damaged_list().unwrap().is_empty());
        c.damaged_mark(&[damaged(2, Some("quarantine/a")), damaged(1, None)])
            .unwrap();
        let listed = c.damaged_list().unwrap();
        assert_eq!(
            listed,
            vec![damaged(1, None), damaged(2, Some("quarantine/a"))]
        );

        // Marking again updates the record but keeps where the file went.
        let mut again = damaged(2, None);
        again.detected_at = 200;
        c.damaged_mark(&[again]).unwrap();
        let second = &c.damaged_list().unwrap()[1];
        assert_eq!(second.detected_at, 200);
        assert_eq!(second.quarantined_as.as_deref(), Some("quarantine/a"));

        assert_eq!(
            c.damaged_clear(&[ChunkDigest([2; 32]), ChunkDigest([9; 32])])
                .unwrap(),
            1
        );
        assert_eq!(c.damaged_list().unwrap(), vec![damaged(1, None)]);
    }
}
