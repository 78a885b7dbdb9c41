//! Bad input and faults: truncated, corrupt and missing chunks, a corrupt index, a catalog
//! from a newer agent, a permission error and a full disk. Each error must name the file, the
//! digest and the restore point, and nothing committed may be lost.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use vadp_agent::ids::{ChunkDigest, RestorePointId};
    use vadp_agent::repo::chunk_store::{Layout, RepoLock};
    use vadp_agent::repo::{
        ChunkState, Extent, IMAGE_DISK_KEY, ImageBackup, Repository, VerifyOptions, VerifyProblem,
        VerifySubset, synthetic_image,
    };

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        img: PathBuf,
        full: RestorePointId,
        incr: RestorePointId,
    }

    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s = format!("{s}: {c}");
            cur = c.source();
        }
        s
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let img = dir.path().join("disk.img");
        synthetic_image::generate(&img, 4 << 20, 9).unwrap();
        let repo = Repository::init(&root, 64 << 10).unwrap();
        let req = ImageBackup {
            name: "vm".into(),
            file: img.clone(),
            changed: None,
            parent: None,
        };
        let full = repo.backup_image(&req, &mut |_, _| {}).unwrap().point;
        let changed = synthetic_image::mutate(&img, 3, 2, 4096).unwrap();
        let req = ImageBackup {
            changed: Some(changed),
            ..req
        };
        let incr = repo.backup_image(&req, &mut |_, _| {}).unwrap().point;
        Fixture {
            _dir: dir,
            root,
            img,
            full,
            incr,
        }
    }

    /// Every file under `dir`, at any depth.
    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    /// Files under `dir`, at any depth.
    fn count_files(dir: &Path) -> usize {
        walk(dir).len()
    }

    /// A chunk referenced by both points.
    fn shared_chunk(repo: &Repository, f: &Fixture) -> (ChunkDigest, PathBuf) {
        let a = repo.catalog().get_point(f.full).unwrap().unwrap();
        let b = repo.catalog().get_point(f.incr).unwrap().unwrap();
        let ia = repo
            .load_index(&a, IMAGE_DISK_KEY)
            .unwrap()
            .read_all()
            .unwrap();
        let ib = repo
            .load_index(&b, IMAGE_DISK_KEY)
            .unwrap()
            .read_all()
            .unwrap();
        let d = *ia
            .iter()
            .find(|d| !d.is_zero() && ib.contains(d))
            .expect("a shared non-zero chunk");
        (d, repo.store().chunk_path(&d))
    }

    fn assert_chunk_reported(
        repo: &Repository,
        f: &Fixture,
        digest: ChunkDigest,
        path: &Path,
        what: &str,
    ) {
        let report = repo.verify(&mut |_, _| {}).unwrap();
        let problem = report
            .problems
            .iter()
            .find_map(|p| match p {
                VerifyProblem::Chunk {
                    digest: d,
                    path: p,
                    error,
                    points,
                    ..
                } if *d == digest => Some((p.clone(), error.clone(), points.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("verify missed the {what} chunk: {report:?}"));
        assert_eq!(problem.0, path);
        assert!(problem.1.contains(&digest.to_hex()), "{}", problem.1);
        let pts: Vec<RestorePointId> = problem.2.iter().map(|(p, _)| *p).collect();
        assert!(pts.contains(&f.full) && pts.contains(&f.incr), "{pts:?}");

        let out = f.root.join("restored.img");
        let err = repo
            .restore_image(f.full, &out, &mut |_, _| {})
            .unwrap_err();
        let msg = chain(&err);
        for needle in [
            f.full.to_string(),
            digest.to_hex(),
            path.display().to_string(),
        ] {
            assert!(msg.contains(&needle), "{what}: {msg:?} lacks {needle}");
        }
    }

    #[test]
    fn a_failed_image_restore_leaves_the_existing_file_as_it_was() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (_, chunk) = shared_chunk(&repo, &f);
        let dir = f.root.parent().unwrap().join("out");
        std::fs::create_dir(&dir).unwrap();
        let out = dir.join("existing.img");
        let precious = b"the image the user had".repeat(1000);
        std::fs::write(&out, &precious).unwrap();
        let leftovers = || std::fs::read_dir(&dir).unwrap().count() - 1;

        // A missing chunk: refused before anything is written.
        let aside = f.root.join("aside");
        std::fs::rename(&chunk, &aside).unwrap();
        let err = repo
            .restore_image(f.incr, &out, &mut |_, _| {})
            .unwrap_err();
        let msg = chain(&err);
        assert!(
            msg.contains("cannot be restored, nothing was changed")
                && msg.contains(&chunk.display().to_string()),
            "{msg}"
        );
        assert_eq!(std::fs::read(&out).unwrap(), precious);
        assert_eq!(leftovers(), 0);

        // A corrupt chunk is found only by reading it, part-way: `out` is still untouched
        // and the partial image is removed.
        let good = std::fs::read(&aside).unwrap();
        std::fs::rename(&aside, &chunk).unwrap();
        flip_a_byte(&chunk);
        let err = repo
            .restore_image(f.incr, &out, &mut |_, _| {})
            .unwrap_err();
        assert!(chain(&err).contains(&chunk.display().to_string()), "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), precious);
        assert_eq!(leftovers(), 0);

        // Healthy again: the restore replaces the file.
        std::fs::write(&chunk, &good).unwrap();
        repo.restore_image(f.incr, &out, &mut |_, _| {}).unwrap();
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&f.img).unwrap());
        assert_eq!(leftovers(), 0);
    }

    #[test]
    fn an_incremental_of_a_shrunk_image_keeps_its_shortened_last_chunk() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        // 4 MiB - 24 KiB: the last 64 KiB chunk keeps 40 KiB of data.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&f.img)
            .unwrap();
        file.set_len((4 << 20) - (24 << 10)).unwrap();
        drop(file);
        let expected = std::fs::read(&f.img).unwrap();
        assert!(
            expected[expected.len() - (40 << 10)..]
                .iter()
                .any(|&b| b != 0)
        );
        let point = repo
            .backup_image(&incremental(&f, Vec::new()), &mut |_, _| {})
            .unwrap()
            .point;
        assert!(restore(&repo, &f, point) == expected);
    }

    /// A repair acting on `report`, whose verify began with no damaged-chunk records.
    fn repair(
        f: &Fixture,
        repo: &Repository,
        report: &vadp_agent::repo::VerifyReport,
        now: i64,
    ) -> vadp_agent::repo::repair::RepairReport {
        vadp_agent::repo::repair::repair(
            &f.root,
            repo.store(),
            repo.catalog(),
            report,
            &std::collections::HashMap::new(),
            now,
        )
        .unwrap()
    }

    /// Repair A's verify finds a chunk intact; repair B then finds it corrupt, moves it
    /// aside and records it. A must not drop B's record as stale: A's verify did not re-read
    /// that chunk as a damaged one (whatever the clocks say: A runs at an earlier `now`
    /// here), and the record is what makes the next backup store the chunk again.
    #[test]
    fn a_repair_keeps_the_records_made_after_its_verify_began() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (d, path) = shared_chunk(&repo, &f);
        let good = std::fs::read(&path).unwrap();
        let clean = repo.verify(&mut |_, _| {}).unwrap();
        flip_a_byte(&path);
        let found = repo.verify(&mut |_, _| {}).unwrap();
        let b = repair(&f, &repo, &found, 1_001);
        assert_eq!(b.damaged, vec![d]);
        let a = repair(&f, &repo, &clean, 990);
        assert_eq!(a.cleared, 0, "{a:?}");
        let records = repo.catalog().damaged_list().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].digest, d);
        // A backup stores the chunk again; the next repair's verify re-reads the recorded
        // chunk, finds it intact and drops the record.
        assert!(repo.store().insert(&d, &good).unwrap());
        let (_, next) = repo.verify_and_repair(&mut |_, _| {}).unwrap();
        assert_eq!(next.cleared, 1, "{next:?}");
        assert!(repo.catalog().damaged_list().unwrap().is_empty());
    }

    /// A record another repair made again after this repair's verify began (the chunk was
    /// stored again, then found corrupt again) is kept; one unchanged since is dropped.
    #[test]
    fn a_repair_keeps_a_record_made_again_after_its_verify_began() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (d, path) = shared_chunk(&repo, &f);
        let clean = repo.verify(&mut |_, _| {}).unwrap();
        flip_a_byte(&path);
        let found = repo.verify(&mut |_, _| {}).unwrap();
        assert_eq!(repair(&f, &repo, &found, 1_005).damaged, vec![d]);
        let with = |detected_at: i64| {
            vadp_agent::repo::repair::repair(
                &f.root,
                repo.store(),
                repo.catalog(),
                &clean,
                &std::collections::HashMap::from([(d, detected_at)]),
                1_010,
            )
            .unwrap()
        };
        // The verify began when the record said 1000: the record of 1005 is another one.
        assert_eq!(with(1_000).cleared, 0);
        assert_eq!(repo.catalog().damaged_list().unwrap().len(), 1);
        // The verify began with this very record and found the chunk fine: stale.
        assert_eq!(with(1_005).cleared, 1);
        assert!(repo.catalog().damaged_list().unwrap().is_empty());
    }

    /// Two repairs quarantining the same chunk in the same second: the second file gets a
    /// name of its own instead of replacing the first.
    #[test]
    fn a_quarantine_name_taken_in_the_same_second_is_not_replaced() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (d, path) = shared_chunk(&repo, &f);
        flip_a_byte(&path);
        let report = repo.verify(&mut |_, _| {}).unwrap();
        let quarantine = f.root.join(vadp_agent::repo::repair::QUARANTINE_DIR);
        std::fs::create_dir_all(&quarantine).unwrap();
        let taken = quarantine.join(format!("{}.1000", d.to_hex()));
        std::fs::write(&taken, b"set aside earlier").unwrap();
        let r = repair(&f, &repo, &report, 1_000);
        let to = quarantine.join(format!("{}.1000.1", d.to_hex()));
        assert_eq!(r.quarantined[0].to, to);
        assert_eq!(std::fs::read(&taken).unwrap(), b"set aside earlier");
        assert!(to.is_file());
        let records = repo.catalog().damaged_list().unwrap();
        assert!(
            records[0]
                .quarantined_as
                .as_deref()
                .is_some_and(|q| q.ends_with(".1000.1")),
            "{records:?}"
        );
    }

    #[test]
    fn a_second_repair_on_the_same_finding_puts_back_a_chunk_stored_again_meanwhile() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (d, path) = shared_chunk(&repo, &f);
        let good = std::fs::read(&path).unwrap();
        flip_a_byte(&path);
        // Both repairs' verifies found the chunk corrupt.
        let report = repo.verify(&mut |_, _| {}).unwrap();
        assert_eq!(state_of(&repo, d), Some(ChunkState::Corrupt));
        // The first repair moved the corrupt file; a backup stored the chunk again.
        let first = repair(&f, &repo, &report, 1_000);
        assert_eq!(first.quarantined.len(), 1);
        assert!(repo.store().insert(&d, &good).unwrap());
        // The second acts on the same (now stale) finding.
        let second = repair(&f, &repo, &report, 1_001);
        assert!(second.quarantined.is_empty(), "{second:?}");
        assert!(second.damaged.is_empty(), "{second:?}");
        assert!(
            repo.catalog().damaged_list().unwrap().is_empty(),
            "the record of a chunk back in place stays"
        );
        assert!(
            repo.store().read(&d).is_ok(),
            "the good chunk was set aside"
        );
        let quarantine = f.root.join(vadp_agent::repo::repair::QUARANTINE_DIR);
        assert_eq!(std::fs::read_dir(&quarantine).unwrap().count(), 1);
        assert!(restore(&repo, &f, f.incr) == std::fs::read(&f.img).unwrap());
    }

    /// A finding that no longer holds (the chunk is intact where it lies) moves nothing:
    /// an intact chunk taken out of the store, even for a moment, is one a crash or a full
    /// disk could strand in the quarantine.
    #[test]
    fn a_repair_leaves_in_place_a_chunk_found_intact_again() {
        use std::os::unix::fs::MetadataExt as _;
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (d, path) = shared_chunk(&repo, &f);
        let good = std::fs::read(&path).unwrap();
        flip_a_byte(&path);
        let report = repo.verify(&mut |_, _| {}).unwrap();
        assert_eq!(state_of(&repo, d), Some(ChunkState::Corrupt));
        // Put right (stored again) before any repair acts on the finding.
        std::fs::write(&path, &good).unwrap();
        let before = std::fs::metadata(&path).unwrap();
        let r = repair(&f, &repo, &report, 1_000);
        assert!(r.quarantined.is_empty() && r.damaged.is_empty(), "{r:?}");
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (after.ino(), after.ctime(), after.ctime_nsec()),
            (before.ino(), before.ctime(), before.ctime_nsec()),
            "the chunk file was moved"
        );
        assert!(
            !f.root
                .join(vadp_agent::repo::repair::QUARANTINE_DIR)
                .exists()
        );
        assert!(repo.catalog().damaged_list().unwrap().is_empty());
    }

    #[test]
    fn a_gc_that_stops_part_way_leaves_no_orphan_point_to_rebuild() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        // A prune killed after its catalog commit: the point's index directory stays.
        let dir = f.root.join("indexes").join(f.full.to_string());
        let kept = f.root.join("kept-index");
        copy_dir(&dir, &kept);
        repo.delete_point(f.full).unwrap();
        copy_dir(&kept, &dir);
        // The sweep fails part-way: an entry it cannot remove (a directory named as a chunk).
        let blocker = repo.store().chunk_path(&ChunkDigest::of(b"blocker"));
        std::fs::create_dir_all(&blocker).unwrap();
        let err = repo.gc().unwrap_err();
        assert!(
            chain(&err).contains(&blocker.display().to_string()),
            "{err}"
        );
        assert!(
            !dir.exists(),
            "the orphan index directory outlived a sweep that removed its chunks"
        );
        std::fs::remove_dir(&blocker).unwrap();
        repo.gc().unwrap();
        let points: Vec<RestorePointId> = repo
            .catalog()
            .list_points()
            .unwrap()
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(points, vec![f.incr]);
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }

    #[test]
    fn a_verify_of_one_point_checks_its_chunks_and_names_every_point_using_a_bad_one() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let verify_points = |points: Vec<RestorePointId>| {
            repo.verify_with(
                &VerifyOptions {
                    points,
                    ..VerifyOptions::default()
                },
                &mut |_, _| {},
            )
            .map(|(report, _)| report)
            .map_err(|e| e.to_string())
        };
        let index_of = |point| {
            let rec = repo.catalog().get_point(point).unwrap().unwrap();
            repo.load_index(&rec, IMAGE_DISK_KEY)
                .unwrap()
                .read_all()
                .unwrap()
        };
        let (full, incr) = (index_of(f.full), index_of(f.incr));
        // A chunk only the full backup uses, the incremental replaced it.
        let only_full = *full
            .iter()
            .find(|d| !d.is_zero() && !incr.contains(d))
            .expect("a chunk the incremental replaced");
        flip_a_byte(&repo.store().chunk_path(&only_full));
        let all = verify_points(Vec::new()).unwrap();
        let r = verify_points(vec![f.incr]).unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.points, 1);
        assert!(
            r.chunks < all.chunks && r.chunks_read == r.chunks,
            "{r:?} {all:?}"
        );
        let r = verify_points(vec![f.full]).unwrap();
        assert_eq!(state_of_in(&r, only_full), Some(ChunkState::Corrupt));
        // A shared chunk found bad through one point names both.
        let (shared, path) = shared_chunk(&repo, &f);
        std::fs::remove_file(&path).unwrap();
        let r = verify_points(vec![f.incr]).unwrap();
        let users = r
            .problems
            .iter()
            .find_map(|p| match p {
                VerifyProblem::Chunk { digest, points, .. } if *digest == shared => {
                    Some(points.iter().map(|(p, _)| *p).collect::<Vec<_>>())
                }
                _ => None,
            })
            .expect("the missing shared chunk");
        assert!(
            users.contains(&f.full) && users.contains(&f.incr),
            "{users:?}"
        );
        // An unknown point is an error, not an empty success.
        let unknown = RestorePointId::new_random();
        let e = verify_points(vec![unknown]).unwrap_err();
        assert!(e.contains(&unknown.to_string()), "{e}");
    }

    fn state_of_in(
        report: &vadp_agent::repo::VerifyReport,
        digest: ChunkDigest,
    ) -> Option<ChunkState> {
        report.problems.iter().find_map(|p| match p {
            VerifyProblem::Chunk {
                digest: d, state, ..
            } if *d == digest => Some(*state),
            _ => None,
        })
    }

    #[test]
    fn a_point_being_restored_is_neither_deleted_nor_pruned() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let policy = vadp_agent::repo::RetentionPolicy {
            keep_last: 1,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            min_age_secs: 3 * 86_400,
        };
        let far = i64::MAX / 4;
        // The point a prune would remove.
        let victim = repo
            .prune(&policy, far, &jiff::tz::TimeZone::UTC, true)
            .unwrap()
            .into_iter()
            .find(|d| !d.keep)
            .unwrap()
            .id;
        let lease = repo.lease_point(victim).unwrap();
        let e = repo.delete_point(victim).unwrap_err();
        assert!(e.to_string().contains("being restored"), "{e}");
        let decisions = repo
            .prune(&policy, far, &jiff::tz::TimeZone::UTC, false)
            .unwrap();
        let kept = decisions.iter().find(|d| d.id == victim).unwrap();
        assert!(
            kept.keep && kept.reasons.contains(&"being restored"),
            "{kept:?}"
        );
        assert_eq!(repo.catalog().list_points().unwrap().len(), 2);
        // A second restore of the same point may lease it too.
        let second = repo.lease_point(victim).unwrap();
        drop((lease, second));
        // Once the restores ended: removed, and a late lease finds it gone.
        let decisions = repo
            .prune(&policy, far, &jiff::tz::TimeZone::UTC, false)
            .unwrap();
        assert!(!decisions.iter().find(|d| d.id == victim).unwrap().keep);
        let e = repo.lease_point(victim).unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
        assert!(!repo.delete_point(victim).unwrap());
    }

    #[test]
    fn truncated_chunk_is_reported() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (d, path) = shared_chunk(&repo, &f);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        assert_chunk_reported(&repo, &f, d, &path, "truncated");
    }

    /// A chunk file grown to a terabyte (sparse) is damaged, and verify says so (corrupt,
    /// so that `--repair` quarantines it) without reading it into memory.
    #[test]
    fn a_chunk_file_larger_than_any_chunk_is_corrupt_and_not_read() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (d, path) = shared_chunk(&repo, &f);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let report = repo.verify(&mut |_, _| {}).unwrap();
        let state = report.problems.iter().find_map(|p| match p {
            VerifyProblem::Chunk {
                digest,
                state,
                error,
                ..
            } if *digest == d => Some((*state, error.clone())),
            _ => None,
        });
        let (state, error) = state.unwrap_or_else(|| panic!("not reported: {report:?}"));
        assert_eq!(state, ChunkState::Corrupt, "{error}");
        assert!(error.contains("larger than any chunk"), "{error}");
        assert_chunk_reported(&repo, &f, d, &path, "oversized");
        // A repair moves it aside (without reading it either) and records it as damaged.
        let repaired = repair(&f, &repo, &report, 1);
        assert_eq!(repaired.quarantined.len(), 1, "{repaired:?}");
        assert_eq!(repaired.damaged, vec![d], "{repaired:?}");
        assert!(!path.exists());
    }

    #[test]
    fn flipped_byte_is_reported() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (d, path) = shared_chunk(&repo, &f);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        assert_chunk_reported(&repo, &f, d, &path, "flipped");
    }

    /// A compressed chunk whose header claims 4 GiB of plain data (the length is not under
    /// the stored bytes' checksum) is reported as bad, not allocated: under a 1 GiB address
    /// space limit the verify still ends with its problem report.
    #[test]
    fn a_huge_plain_length_in_a_chunk_header_is_reported_not_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let img = dir.path().join("text.img");
        let text: Vec<u8> = b"compressible text "
            .iter()
            .copied()
            .cycle()
            .take(64 << 10)
            .collect();
        std::fs::write(&img, &text).unwrap();
        let repo = Repository::init(&root, 64 << 10).unwrap();
        let req = ImageBackup {
            name: "vm".into(),
            file: img,
            changed: None,
            parent: None,
        };
        repo.backup_image(&req, &mut |_, _| {}).unwrap();
        let digest = ChunkDigest::of(&text);
        let path = repo.store().chunk_path(&digest);
        assert_eq!(std::fs::read(&path).unwrap()[6], 1, "stored compressed");
        drop(repo);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        let out = std::process::Command::new("prlimit")
            .arg("--as=1073741824")
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_vadp-agent"))
            .args(["repo", "verify", "--repo"])
            .arg(&root)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
        assert!(stdout.contains(&digest.to_string()), "{stdout}");
        assert!(stdout.contains("plain length 4294967295"), "{stdout}");
    }

    /// A point deleted while a verify runs is not reported as an unrestorable index.
    #[test]
    fn a_point_deleted_during_a_verify_is_no_problem() {
        let f = fixture();
        let pause = f.root.parent().unwrap().join("pause");
        std::fs::create_dir_all(&pause).unwrap();
        let mut verify = std::process::Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
            .args(["--json", "repo", "verify", "--repo"])
            .arg(&f.root)
            .env("VADP_AGENT_PAUSE_AT", "verify-after-list")
            .env("VADP_AGENT_PAUSE_DIR", &pause)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let reached = pause.join("verify-after-list.reached");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        while std::time::Instant::now() < deadline {
            if reached.exists() || verify.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(reached.exists(), "the verify never listed the points");
        let repo = Repository::open(&f.root).unwrap();
        assert!(repo.delete_point(f.incr).unwrap());
        drop(repo);
        std::fs::write(pause.join("verify-after-list.go"), b"").unwrap();
        let out = verify.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
        assert!(!stdout.contains(&f.incr.to_string()), "{stdout}");
    }

    /// A stray file among the index directories does not stop garbage collection.
    #[test]
    fn a_stray_file_among_the_indexes_does_not_stop_gc() {
        let f = fixture();
        let stray = f.root.join("indexes").join("notes.txt");
        std::fs::write(&stray, b"left by someone").unwrap();
        let repo = Repository::open(&f.root).unwrap();
        repo.gc().unwrap();
        assert!(stray.exists());
        assert!(repo.verify(&mut |_, _| {}).unwrap().problems.is_empty());
    }

    #[test]
    fn missing_chunk_is_reported() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (d, path) = shared_chunk(&repo, &f);
        std::fs::remove_file(&path).unwrap();
        assert_chunk_reported(&repo, &f, d, &path, "missing");
        // GC refuses nothing here but must not make it worse; the other point still restores
        // up to the bad chunk, and nothing committed disappears.
        assert_eq!(repo.list().unwrap().len(), 2);
    }

    /// The index checksum covers the slots only: a damaged header that still matches its
    /// slot count (disk size 512 bytes short, chunk size one byte long) is caught by the
    /// catalog's disk size and the repository's chunk size, in verify and in restore.
    #[test]
    fn a_damaged_index_header_is_caught_by_the_catalog() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let rec = repo.catalog().get_point(f.full).unwrap().unwrap();
        let path = f.root.join(&rec.disks[0].index_path);
        let good = std::fs::read(&path).unwrap();
        let field = |at: usize| u64::from_le_bytes(good[at..at + 8].try_into().unwrap());
        assert_eq!(field(16), 4 << 20);
        let mut short = good.clone();
        short[16..24].copy_from_slice(&((4u64 << 20) - 512).to_le_bytes());
        let mut odd_chunk = good.clone();
        odd_chunk[12..16].copy_from_slice(&(65_537u32).to_le_bytes());
        for (what, bytes) in [("disk size", short), ("chunk size", odd_chunk)] {
            std::fs::write(&path, &bytes).unwrap();
            let report = repo.verify(&mut |_, _| {}).unwrap();
            assert!(
                matches!(
                    &report.problems[..],
                    [VerifyProblem::Index { point, path: p, error, .. }]
                        if *point == f.full && *p == path && error.contains("header says")
                ),
                "{what}: {report:?}"
            );
            let msg = chain(
                &repo
                    .restore_image(f.full, &f.root.join("o"), &mut |_, _| {})
                    .unwrap_err(),
            );
            assert!(
                msg.contains(&path.display().to_string()) && msg.contains("header says"),
                "{what}: {msg}"
            );
        }
        std::fs::write(&path, &good).unwrap();
        assert!(repo.verify(&mut |_, _| {}).unwrap().is_ok());
    }

    #[test]
    fn corrupt_index_is_reported_and_blocks_gc() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let rec = repo.catalog().get_point(f.incr).unwrap().unwrap();
        let path = f.root.join(&rec.disks[0].index_path);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let report = repo.verify(&mut |_, _| {}).unwrap();
        assert!(
            matches!(
                &report.problems[..],
                [VerifyProblem::Index { point, path: p, .. }] if *point == f.incr && *p == path
            ),
            "{report:?}"
        );
        let msg = chain(
            &repo
                .restore_image(f.incr, &f.root.join("o"), &mut |_, _| {})
                .unwrap_err(),
        );
        assert!(
            msg.contains(&f.incr.to_string()) && msg.contains(&path.display().to_string()),
            "{msg}"
        );
        // GC must not sweep with an incomplete mark set.
        let chunks_before = count_files(&f.root.join("chunks"));
        assert!(chunks_before > 1, "{chunks_before}");
        let msg = chain(&repo.gc().unwrap_err());
        assert!(
            msg.contains("nothing swept") && msg.contains(&f.incr.to_string()),
            "{msg}"
        );
        assert_eq!(count_files(&f.root.join("chunks")), chunks_before);
        // The full point is intact.
        repo.restore_image(f.full, &f.root.join("ok"), &mut |_, _| {})
            .unwrap();
    }

    /// Catalog problems verify reports.
    fn catalog_problems(repo: &Repository) -> Vec<String> {
        repo.verify(&mut |_, _| {})
            .unwrap()
            .problems
            .into_iter()
            .filter_map(|p| match p {
                VerifyProblem::Catalog { path, error } => {
                    assert!(path.ends_with("catalog.db"), "{path:?}");
                    Some(error)
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_inconsistent_catalog_is_reported() {
        let f = fixture();
        assert!(catalog_problems(&Repository::open(&f.root).unwrap()).is_empty());
        // A disk row whose restore point does not exist, as a hand-edited catalog (or one
        // written with foreign keys off) can hold.
        rusqlite::Connection::open(f.root.join("catalog.db"))
            .unwrap()
            .execute_batch(
                "PRAGMA foreign_keys = OFF;
                 INSERT INTO disks (point_id, disk_key, label, capacity_bytes, backing_file,
                                    role, index_path, bytes_changed, bytes_stored)
                 VALUES ('no-such-point', 2000, 'Hard disk 1', 1, 'x', 'os', 'x', 0, 0);",
            )
            .unwrap();
        let repo = Repository::open(&f.root).unwrap();
        let problems = catalog_problems(&repo);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("disks") && problems[0].contains("restore_points"),
            "{problems:?}"
        );
        // The points themselves are intact and still restore.
        assert_eq!(repo.list().unwrap().len(), 2);
        repo.restore_image(f.incr, &f.root.join("ok"), &mut |_, _| {})
            .unwrap();
    }

    #[test]
    fn a_corrupt_catalog_record_is_reported() {
        let f = fixture();
        let db = f.root.join("catalog.db");
        // Fold the WAL into the database file, then change one byte of the VM's moref in
        // its table row: the row and its UNIQUE index no longer agree.
        rusqlite::Connection::open(&db)
            .unwrap()
            .pragma_update(None, "wal_checkpoint", "TRUNCATE")
            .unwrap();
        let mut bytes = std::fs::read(&db).unwrap();
        let needle = b"image:vm";
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("the VM's moref in the file");
        bytes[at + needle.len() - 1] = b'w';
        std::fs::write(&db, bytes).unwrap();
        let problems = catalog_problems(&Repository::open(&f.root).unwrap());
        assert!(!problems.is_empty());
        assert!(
            problems
                .iter()
                .any(|p| p.contains("index") || p.contains("vms")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_lost_catalog_is_rebuilt_from_the_point_manifests() {
        let f = fixture();
        let (before, full_bytes, incr_bytes) = {
            let repo = Repository::open(&f.root).unwrap();
            let points = repo.list().unwrap();
            let out = f.root.join("r.img");
            repo.restore_image(f.full, &out, &mut |_, _| {}).unwrap();
            let full_bytes = std::fs::read(&out).unwrap();
            std::fs::remove_file(&out).unwrap();
            repo.restore_image(f.incr, &out, &mut |_, _| {}).unwrap();
            let incr_bytes = std::fs::read(&out).unwrap();
            std::fs::remove_file(&out).unwrap();
            (points, full_bytes, incr_bytes)
        };
        let manifest = f.root.join(format!("indexes/{}/point.json", f.full));
        assert!(manifest.is_file());
        // A point from before manifests existed gets one from the catalog at the next repair.
        std::fs::remove_file(&manifest).unwrap();
        {
            let repo = Repository::open(&f.root).unwrap();
            let (_, repaired) = repo.verify_and_repair(&mut |_, _| {}).unwrap();
            assert_eq!(repaired.manifests_written, 1);
            let (_, again) = repo.verify_and_repair(&mut |_, _| {}).unwrap();
            assert_eq!(again.manifests_written, 0);
        }
        assert!(manifest.is_file());
        // A leftover index directory without a manifest is skipped, not listed.
        let stray = f
            .root
            .join(format!("indexes/{}", RestorePointId::new_random()));
        std::fs::create_dir(&stray).unwrap();

        // The catalog is destroyed.
        let db = f.root.join("catalog.db");
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(f.root.join(format!("catalog.db{suffix}")));
        }
        std::fs::write(&db, vec![0x5a; 8192]).unwrap();
        assert!(Repository::open(&f.root).is_err());

        let report = Repository::rebuild_catalog(&f.root, false).unwrap();
        assert_eq!(report.points, vec![f.full, f.incr]);
        assert_eq!(report.skipped.len(), 1, "{report:?}");
        assert!(report.skipped[0].1.contains("point.json"), "{report:?}");
        assert!(report.old_catalog[0].exists());

        let repo = Repository::open(&f.root).unwrap();
        assert_eq!(repo.list().unwrap(), before);
        assert_eq!(repo.chunk_size_bytes(), 64 << 10);
        assert!(repo.verify(&mut |_, _| {}).unwrap().is_ok());
        let out = f.root.join("r.img");
        repo.restore_image(f.full, &out, &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), full_bytes);
        std::fs::remove_file(&out).unwrap();
        repo.restore_image(f.incr, &out, &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), incr_bytes);
        // New backups go on from the rebuilt catalog.
        let req = ImageBackup {
            name: "vm".into(),
            file: f.img.clone(),
            changed: Some(Vec::new()),
            parent: None,
        };
        let next = repo.backup_image(&req, &mut |_, _| {}).unwrap();
        assert_eq!(next.parent, Some(f.incr));
        drop(repo);

        // A sound catalog is not rebuilt unless asked.
        let msg = chain(&Repository::rebuild_catalog(&f.root, false).unwrap_err());
        assert!(msg.contains("--force"), "{msg}");
        let again = Repository::rebuild_catalog(&f.root, true).unwrap();
        assert_eq!(again.points.len(), 3);
    }

    fn agent(args: &[&str], root: &Path, crash_at: Option<&str>) -> std::process::Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vadp-agent"));
        cmd.args(args).arg("--repo").arg(root);
        if let Some(point) = crash_at {
            cmd.env("VADP_AGENT_CRASH_AT", point);
        }
        cmd.output().unwrap()
    }

    /// A FIFO or character device has no size to back up: refused by name, without waiting
    /// for a writer.
    /// Asking for a point that does not exist (a restore of a mistyped id) leaves no lease
    /// file behind.
    #[test]
    fn a_lease_on_an_unknown_point_leaves_no_file() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let before = std::fs::read_dir(f.root.join("locks")).map_or(0, Iterator::count);
        let unknown: RestorePointId = uuid::Uuid::new_v4().to_string().parse().unwrap();
        assert!(repo.lease_point(unknown).is_err());
        let out = f.root.join("nowhere.img");
        assert!(repo.restore_image(unknown, &out, &mut |_, _| {}).is_err());
        let after = std::fs::read_dir(f.root.join("locks")).map_or(0, Iterator::count);
        assert_eq!(before, after, "lease files left in locks/");
        drop(repo.lease_point(f.full).unwrap());
    }

    /// A catalog from before schema 6 held each point's VMX and ExtraConfig inline, a VM
    /// Service VM's bootstrap Secrets among them, and so did its manifest. The first open
    /// moves them into the point's config file and leaves no copy in the catalog, its WAL
    /// or the manifest; the point gives back the same configuration and verify is clean. A
    /// damaged config file is reported by verify and refused by name; a catalog rebuilt
    /// from an old manifest writes the config file as well.
    #[test]
    fn an_old_catalogs_vmx_and_extra_config_move_out_of_the_catalog() {
        use base64::Engine as _;
        use vadp_agent::ids::VmMoref;
        use vadp_agent::repo::catalog::{NewPoint, PointKind, VmRecord};
        let f = fixture();
        let secret = "U0VDUkVUOmJvb3RzdHJhcC1wYXNzd29yZC1kby1ub3QtbGVhaw";
        // Long enough for SQLite's overflow pages.
        let vmx = format!(
            "config.version = \"8\"\nguestinfo.userdata = \"{secret}\"\npad = \"{}\"\n",
            "x".repeat(20_000)
        )
        .into_bytes();
        let extra = serde_json::json!([["guestinfo.userdata", secret]]);
        let id: RestorePointId = uuid::Uuid::new_v4().to_string().parse().unwrap();
        let repo = Repository::open(&f.root).unwrap();
        // A disk: the full point's, its index copied.
        let mut disk = repo.catalog().get_point(f.full).unwrap().unwrap().disks[0].clone();
        let index = format!("indexes/{id}/{}.fidx", disk.key);
        std::fs::create_dir_all(f.root.join("indexes").join(id.to_string())).unwrap();
        std::fs::copy(f.root.join(&disk.index_path), f.root.join(&index)).unwrap();
        disk.index_path = index;
        repo.commit_point(NewPoint {
            id,
            vm: VmRecord {
                moref: VmMoref("vm-42".into()),
                name: "web".into(),
                vcenter_uuid: "vc".into(),
                namespace: Some("ns".into()),
            },
            job: None,
            parent: None,
            created_at: 1_700_000_000,
            kind: PointKind::Full,
            reason: "first backup".into(),
            vmx: Some(vmx.clone()),
            extra_config: Some(extra.clone()),
            nvram: None,
            related: Vec::new(),
            config_digest: None,
            stats: serde_json::json!({}),
            disks: vec![disk],
        })
        .unwrap();
        let holds_secret = |path: &Path| {
            std::fs::read(path)
                .is_ok_and(|b| b.windows(secret.len()).any(|w| w == secret.as_bytes()))
        };
        let db = f.root.join("catalog.db");
        let wal = f.root.join("catalog.db-wal");
        let dir = f.root.join("indexes").join(id.to_string());
        let manifest = dir.join("point.json");
        let config_file = dir.join("config.chunk");
        let no_copies = |when: &str| {
            for file in [&db, &wal, &manifest] {
                assert!(
                    !holds_secret(file),
                    "{when}: {} holds the secret",
                    file.display()
                );
            }
            assert!(config_file.is_file(), "{when}");
        };
        no_copies("a new point");
        let config = |repo: &Repository| {
            let c = repo.point_config(id).unwrap().unwrap();
            (c.vmx, c.extra_config)
        };
        assert_eq!(config(&repo), (Some(vmx.clone()), Some(extra.clone())));
        drop(repo);

        // As an agent before schema 6 left it.
        let make_old = || {
            let conn = rusqlite::Connection::open(&db).unwrap();
            if conn
                .prepare("SELECT config_digest FROM restore_points")
                .is_ok()
            {
                conn.execute_batch(
                    "ALTER TABLE restore_points DROP COLUMN config_digest;
                     PRAGMA user_version = 5;",
                )
                .unwrap();
            }
            conn.execute(
                "UPDATE restore_points SET vmx = ?1, extra_config = ?2 WHERE id = ?3",
                rusqlite::params![vmx, extra.to_string(), id.to_string()],
            )
            .unwrap();
            // What a point removed then left in free pages (`secure_delete` was off).
            conn.execute(
                "INSERT INTO repo_meta (key, value) VALUES ('removed', ?1)",
                [format!("{secret}{}", "y".repeat(20_000))],
            )
            .unwrap();
            conn.execute_batch(
                "DELETE FROM repo_meta WHERE key IN ('removed', 'secrets_scrubbed');",
            )
            .unwrap();
            drop(conn);
            let mut m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
            m["format"] = 1.into();
            m["point"].as_object_mut().unwrap().remove("config_digest");
            m["point"]["vmx"] = base64::engine::general_purpose::STANDARD
                .encode(&vmx)
                .into();
            m["point"]["extra_config"] = extra.clone();
            std::fs::write(&manifest, m.to_string()).unwrap();
            std::fs::remove_file(&config_file).unwrap();
            assert!(holds_secret(&db) && holds_secret(&manifest));
        };
        make_old();
        let repo = Repository::open(&f.root).unwrap();
        no_copies("after the first open");
        let format = |m: &Path| -> serde_json::Value {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(m).unwrap()).unwrap()
                ["format"]
                .clone()
        };
        assert_eq!(format(&manifest), 2);
        assert_eq!(config(&repo), (Some(vmx.clone()), Some(extra.clone())));
        let report = repo.verify(&mut |_, _| {}).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);

        // A damaged config file: verify names it, and the point's configuration is refused.
        let good = std::fs::read(&config_file).unwrap();
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        std::fs::write(&config_file, &bad).unwrap();
        let report = repo.verify(&mut |_, _| {}).unwrap();
        assert!(
            matches!(
                report.problems.as_slice(),
                [VerifyProblem::Config { point, path, .. }] if *point == id && *path == config_file
            ),
            "{:?}",
            report.problems
        );
        let e = chain(&repo.point_config(id).unwrap_err());
        assert!(
            e.contains(&id.to_string()) && e.contains("config.chunk") && e.contains("corrupt"),
            "{e}"
        );
        std::fs::write(&config_file, &good).unwrap();
        drop(repo);

        // A catalog rebuilt from a manifest that still holds them.
        make_old();
        Repository::rebuild_catalog(&f.root, true).unwrap();
        no_copies("after a rebuild");
        let repo = Repository::open(&f.root).unwrap();
        assert_eq!(config(&repo), (Some(vmx), Some(extra)));
        assert!(repo.verify(&mut |_, _| {}).unwrap().is_ok());
    }

    /// `repo verify --json` counts its progress in chunks, and says so.
    #[test]
    fn verify_progress_is_in_chunks() {
        let f = fixture();
        let out = agent(&["--json", "repo", "verify"], &f.root, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let progress: Vec<serde_json::Value> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "progress")
            .collect();
        let last = progress
            .last()
            .unwrap_or_else(|| panic!("no progress: {stdout}"));
        let repo = Repository::open(&f.root).unwrap();
        let chunks = std::fs::read_dir(repo.store().root())
            .unwrap()
            .flatten()
            .map(|d| std::fs::read_dir(d.path()).unwrap().count())
            .sum::<usize>() as u64;
        assert_eq!(last["chunks_total"], chunks, "{last}");
        assert_eq!(last["chunks_done"], chunks, "{last}");
        assert!(last.get("bytes_done").is_none(), "{last}");
        let done: Vec<u64> = progress
            .iter()
            .map(|p| p["chunks_done"].as_u64().unwrap())
            .collect();
        assert!(done.is_sorted(), "{done:?}");
    }

    #[test]
    fn an_image_backup_of_a_fifo_or_char_device_is_refused() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let fifo = f.root.parent().unwrap().join("pipe");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        for (file, what) in [(fifo, "a FIFO"), (PathBuf::from("/dev/null"), "character")] {
            let req = ImageBackup {
                name: "odd".into(),
                file: file.clone(),
                changed: None,
                parent: None,
            };
            let msg = chain(&repo.backup_image(&req, &mut |_, _| {}).unwrap_err());
            assert!(
                msg.contains(what) && msg.contains(&file.display().to_string()),
                "{msg}"
            );
        }
        assert_eq!(repo.list().unwrap().len(), 2);
    }

    /// Detaches the loop device on drop.
    struct Loop(String);

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }

    /// A block device (here a loop device over the image, as an LVM snapshot would be)
    /// backs up at its full size and restores byte-identical.
    #[test]
    fn an_image_backup_of_a_block_device_has_its_size() {
        let f = fixture();
        let attached = std::process::Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(&f.img)
            .stderr(std::process::Stdio::null())
            .output();
        let Some(dev) = attached
            .ok()
            .filter(|o| o.status.success())
            .map(|o| Loop(String::from_utf8_lossy(&o.stdout).trim().to_owned()))
        else {
            eprintln!("cannot attach a loop device (not root, or no loop driver): skipped");
            return;
        };
        let repo = Repository::open(&f.root).unwrap();
        let req = ImageBackup {
            name: "lv".into(),
            file: PathBuf::from(&dev.0),
            changed: None,
            parent: None,
        };
        let summary = repo.backup_image(&req, &mut |_, _| {}).unwrap();
        assert_eq!(summary.capacity_bytes, 4 << 20);
        let out = f.root.join("lv.img");
        repo.restore_image(summary.point, &out, &mut |_, _| {})
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&f.img).unwrap());
    }

    /// `--out` through a symbolic link writes the file it names and keeps the link; a
    /// directory or a device as `--out` is refused before anything is written.
    #[test]
    fn an_image_restore_follows_a_link_and_refuses_what_is_not_a_file() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let dir = f.root.parent().unwrap();
        let target = dir.join("target.img");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.join("link.img");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        repo.restore_image(f.full, &link, &mut |_, _| {}).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap().len(), 4 << 20);
        // A relative link to a file that does not exist yet.
        let dangling = dir.join("dangling.img");
        std::os::unix::fs::symlink("new.img", &dangling).unwrap();
        repo.restore_image(f.full, &dangling, &mut |_, _| {})
            .unwrap();
        assert!(std::fs::symlink_metadata(&dangling).unwrap().is_symlink());
        assert_eq!(std::fs::read(dir.join("new.img")).unwrap().len(), 4 << 20);
        let a_dir = dir.join("a-dir");
        std::fs::create_dir(&a_dir).unwrap();
        for (out, what) in [
            (a_dir, "a directory"),
            (PathBuf::from("/dev/null"), "device"),
        ] {
            let msg = chain(
                &repo
                    .restore_image(f.full, &out, &mut |_, _| {})
                    .unwrap_err(),
            );
            assert!(
                msg.contains(what) && msg.contains(&out.display().to_string()),
                "{msg}"
            );
        }
        use std::os::unix::fs::FileTypeExt as _;
        assert!(
            std::fs::symlink_metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }

    /// An image incremental from another image's point would restore that image's bytes
    /// outside the changed extents: refused, as is a parent without changed extents.
    #[test]
    fn an_incremental_from_another_images_point_is_refused() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let req = ImageBackup {
            name: "other".into(),
            file: f.img.clone(),
            changed: Some(vec![Extent {
                offset: 0,
                length: 4096,
            }]),
            parent: Some(f.full),
        };
        let msg = chain(&repo.backup_image(&req, &mut |_, _| {}).unwrap_err());
        assert!(
            msg.contains(&f.full.to_string()) && msg.contains("\"vm\"") && msg.contains("other"),
            "{msg}"
        );
        let req = ImageBackup {
            name: "vm".into(),
            changed: None,
            ..req
        };
        let msg = chain(&repo.backup_image(&req, &mut |_, _| {}).unwrap_err());
        assert!(msg.contains("without changed extents"), "{msg}");
        assert_eq!(repo.list().unwrap().len(), 2);
    }

    /// `--json` output read by a consumer that goes away (`| head -1`): the backup still
    /// completes and says so by its exit status.
    #[test]
    fn a_closed_stdout_does_not_stop_a_json_backup() {
        let f = fixture();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
            .args(["--json", "image", "backup", "--name", "vm2", "--repo"])
            .arg(&f.root)
            .arg(&f.img)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let repo = Repository::open(&f.root).unwrap();
        assert_eq!(repo.list().unwrap().len(), 3);
        drop(repo);
        // The other commands' output too: the exit status stays theirs.
        for args in [&["repo", "verify"][..], &["list"], &["repo", "info"]] {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
                .arg("--json")
                .args(args)
                .arg("--repo")
                .arg(&f.root)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            drop(child.stdout.take());
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
        }
        // Any other write error fails the command, so no script trusts a truncated file.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
            .args(["--json", "list", "--repo"])
            .arg(&f.root)
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("writing the output failed"),
            "{out:?}"
        );
    }

    /// A rebuild killed while it swaps the catalogs leaves the repository refused (a GC on
    /// a partial catalog would take the missing points for garbage) until a second rebuild
    /// finishes it, without `--force`.
    #[test]
    fn an_interrupted_catalog_rebuild_must_be_finished_first() {
        let f = fixture();
        let before = Repository::open(&f.root).unwrap().list().unwrap();
        let db = f.root.join("catalog.db");
        std::fs::write(&db, vec![0x5a; 8192]).unwrap();
        for crash_at in ["rebuild-marked", "rebuild-renamed"] {
            let out = agent(&["repo", "rebuild-catalog"], &f.root, Some(crash_at));
            assert!(!out.status.success(), "{crash_at}: {out:?}");
            let msg = chain(&Repository::open(&f.root).unwrap_err());
            assert!(
                msg.contains("interrupted") && msg.contains("rebuild-catalog"),
                "{crash_at}: {msg}"
            );
            let gc = agent(&["repo", "gc"], &f.root, None);
            let stderr = String::from_utf8_lossy(&gc.stderr);
            assert!(
                !gc.status.success() && stderr.contains("interrupted"),
                "{crash_at}: {gc:?}"
            );
            for p in &before {
                assert!(f.root.join(format!("indexes/{}", p.id)).is_dir());
            }
        }
        let out = agent(&["repo", "rebuild-catalog"], &f.root, None);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("interrupted"),
            "{out:?}"
        );
        assert!(!f.root.join("catalog.rebuilding").exists());
        assert!(!f.root.join("catalog.db.rebuild").exists());
        // The damaged catalog is kept, not replaced by a later run's aside copy (the runs
        // above may fall in the same second).
        let kept: Vec<Vec<u8>> = std::fs::read_dir(&f.root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with("catalog.db.damaged-")
                    && !name.contains("-wal")
                    && !name.contains("-shm")
            })
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        assert!(kept.contains(&vec![0x5a; 8192]), "{} kept", kept.len());
        let repo = Repository::open(&f.root).unwrap();
        assert_eq!(repo.list().unwrap(), before);
        assert!(repo.verify(&mut |_, _| {}).unwrap().is_ok());
    }

    /// The catalog is not replaced under another process that has the repository open (it
    /// would go on committing into the old file), nor opened while a rebuild replaces it.
    #[test]
    fn the_catalog_is_not_rebuilt_under_an_open_repository() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let msg = chain(&Repository::rebuild_catalog(&f.root, true).unwrap_err());
        assert!(msg.contains("open in another process"), "{msg}");
        drop(repo);
        let rebuilding = RepoLock::try_exclusive(&f.root.join("open.lock")).unwrap();
        let msg = chain(&Repository::open(&f.root).unwrap_err());
        assert!(msg.contains("being rebuilt"), "{msg}");
        drop(rebuilding);
        assert_eq!(Repository::open(&f.root).unwrap().list().unwrap().len(), 2);
    }

    /// GC marks what the catalog lists: a catalog that lost a point, or a point's disks,
    /// would have their chunks swept. It refuses instead, and sweeps nothing.
    #[test]
    fn gc_sweeps_nothing_when_the_catalog_may_not_show_every_point() {
        let f = fixture();
        let full_dir = f.root.join("indexes").join(f.full.to_string());
        let db = f.root.join("catalog.db");
        let edit = |sql: &str| {
            rusqlite::Connection::open(&db)
                .unwrap()
                .execute_batch(&format!("PRAGMA foreign_keys = OFF; {sql}"))
                .unwrap();
        };
        // The full point's VM row is gone: the point drops out of every listing.
        edit(&format!(
            "UPDATE restore_points SET vm_id = 999 WHERE id = '{}'",
            f.full
        ));
        let repo = gc_refuses(&f.root, &["fails its checks", "nothing swept"]);
        assert_eq!(repo.list().unwrap().len(), 1, "the point is still listed");
        drop(repo);
        assert!(full_dir.join("point.json").is_file());
        edit(&format!(
            "UPDATE restore_points SET vm_id = (SELECT id FROM vms) WHERE id = '{}'",
            f.full
        ));
        // The point is listed, but its disk rows are gone.
        edit(&format!("DELETE FROM disks WHERE point_id = '{}'", f.full));
        drop(gc_refuses(&f.root, &["has no disk row"]));
        // A second fixture: an index file in a live point's directory that its catalog
        // record does not name (a disk the catalog lost).
        let g = fixture();
        let dir = g.root.join("indexes").join(g.full.to_string());
        let index = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "fidx"))
            .unwrap();
        std::fs::copy(&index, dir.join("disk-2001.fidx")).unwrap();
        let repo = gc_refuses(&g.root, &["disk-2001.fidx", "not in the catalog"]);
        std::fs::remove_file(dir.join("disk-2001.fidx")).unwrap();
        repo.gc().unwrap();
    }

    /// Opens the repository at `root` and checks that its GC refuses, saying each of
    /// `says`, and removes no chunk file.
    fn gc_refuses(root: &Path, says: &[&str]) -> Repository {
        let chunks = root.join("chunks");
        let before = count_files(&chunks);
        let repo = Repository::open(root).unwrap();
        let msg = chain(&repo.gc().unwrap_err());
        for s in says {
            assert!(msg.contains(s), "{msg}");
        }
        assert_eq!(count_files(&chunks), before, "GC removed chunks: {msg}");
        repo
    }

    /// A point `repo rebuild-catalog` cannot read, but that has a manifest, may have been
    /// committed: it is moved out of `indexes/`, and GC refuses to run until a person has
    /// dealt with it, so the chunks only it uses stay.
    #[test]
    fn a_point_the_rebuild_cannot_read_keeps_its_chunks() {
        let f = fixture();
        // A third point, as a repository upgraded from before manifests has: no manifest.
        let older = {
            let repo = Repository::open(&f.root).unwrap();
            let req = ImageBackup {
                name: "vm".into(),
                file: f.img.clone(),
                changed: Some(synthetic_image::mutate(&f.img, 4, 1, 4096).unwrap()),
                parent: None,
            };
            repo.backup_image(&req, &mut |_, _| {}).unwrap().point
        };
        std::fs::remove_file(f.root.join(format!("indexes/{older}/point.json"))).unwrap();
        let manifest = f.root.join(format!("indexes/{}/point.json", f.full));
        std::fs::write(&manifest, b"{\"format\":1,").unwrap();
        // An empty leftover directory holds nothing: only skipped.
        let stray = f
            .root
            .join(format!("indexes/{}", RestorePointId::new_random()));
        std::fs::create_dir(&stray).unwrap();
        let db = f.root.join("catalog.db");
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(f.root.join(format!("catalog.db{suffix}")));
        }
        std::fs::write(&db, vec![0x5a; 8192]).unwrap();
        let report = Repository::rebuild_catalog(&f.root, false).unwrap();
        assert_eq!(report.points, vec![f.incr]);
        assert_eq!(report.skipped.len(), 3, "{report:?}");
        let aside = |p: RestorePointId| f.root.join("unreadable-points").join(p.to_string());
        let mut moved = report.quarantined.clone();
        moved.sort();
        let mut expected = vec![aside(f.full), aside(older)];
        expected.sort();
        assert_eq!(moved, expected);
        assert!(aside(f.full).join("point.json").is_file());
        assert!(!f.root.join("indexes").join(f.full.to_string()).exists());
        assert!(stray.is_dir());

        let chunks = f.root.join("chunks");
        let before = count_files(&chunks);
        let repo = gc_refuses(&f.root, &["unreadable-points", "2 restore point"]);
        // Given up: GC runs, and the incremental (a full image) still restores.
        std::fs::remove_dir_all(f.root.join("unreadable-points")).unwrap();
        repo.gc().unwrap();
        assert!(!stray.exists());
        let out = f.root.join("r.img");
        repo.restore_image(f.incr, &out, &mut |_, _| {}).unwrap();
        assert!(count_files(&chunks) < before);
    }

    /// A catalog written by a newer agent is not replaced by one of an older format, not
    /// even with --force: its journal and queue would be lost, and manifests of a newer
    /// format skipped.
    #[test]
    fn a_newer_catalog_is_never_rebuilt() {
        let f = fixture();
        let db = f.root.join("catalog.db");
        rusqlite::Connection::open(&db)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        for force in [false, true] {
            let msg = chain(&Repository::rebuild_catalog(&f.root, force).unwrap_err());
            assert!(msg.contains("schema version 99"), "{msg}");
        }
        let names: Vec<String> = std::fs::read_dir(&f.root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with("catalog.db.damaged")),
            "{names:?}"
        );
        let version: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 99);
    }

    #[test]
    fn newer_catalog_is_refused() {
        let f = fixture();
        let db = f.root.join("catalog.db");
        rusqlite::Connection::open(&db)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let msg = chain(&Repository::open(&f.root).unwrap_err());
        assert!(
            msg.contains("schema version 99") && msg.contains("catalog.db"),
            "{msg}"
        );
    }

    #[test]
    fn killed_prune_leftovers_and_failed_backup_garbage_are_collected() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        // Simulate a killed backup: a temp chunk, an unreferenced chunk, an orphan index dir.
        let orphan = ChunkDigest::of(b"orphan");
        let junk = repo.store().dir_of(&orphan);
        std::fs::write(junk.join(".tmp-dead"), b"x").unwrap();
        std::fs::write(repo.store().chunk_path(&orphan), b"x").unwrap();
        std::fs::create_dir_all(
            f.root
                .join("indexes")
                .join(RestorePointId::new_random().to_string()),
        )
        .unwrap();
        // And a killed manifest write (a repair's) and an index temp of an older version in a
        // live point's directory.
        let live = f.root.join(format!("indexes/{}", f.full));
        std::fs::write(live.join("point.json.tmp-0123abcd"), b"{").unwrap();
        std::fs::write(live.join("2000.fidx.tmp"), b"x").unwrap();
        let report = repo.gc().unwrap();
        assert_eq!(report.temp_files_removed, 3);
        assert_eq!(report.chunks_removed, 1);
        assert_eq!(report.orphan_indexes_removed, 1);
        let mut left: Vec<_> = std::fs::read_dir(&live)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["2000.fidx", "point.json"]);
        assert!(repo.verify(&mut |_, _| {}).unwrap().is_ok());
        let out = f.root.join("r.img");
        repo.restore_image(f.incr, &out, &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&f.img).unwrap());
    }

    #[test]
    fn removed_points_leave_gc_pending_until_a_gc_succeeds() {
        use vadp_agent::repo::RetentionPolicy;
        let f = fixture();
        // The full point a day older than the incremental (both were made this second).
        let db = rusqlite::Connection::open(f.root.join("catalog.db")).unwrap();
        let aged = db
            .execute(
                "UPDATE restore_points SET created_at = created_at - 86400 WHERE id = ?1",
                [f.full.to_string()],
            )
            .unwrap();
        assert_eq!(aged, 1);
        drop(db);
        let repo = Repository::open(&f.root).unwrap();
        assert_eq!(repo.gc_pending_since().unwrap(), None);
        let created = repo
            .catalog()
            .get_point(f.incr)
            .unwrap()
            .unwrap()
            .created_at;
        let keep_newest = RetentionPolicy {
            keep_last: 1,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            min_age_secs: 3 * 86_400,
        };
        let later = created + 30 * 86_400;
        // A dry run, and a prune whose floor keeps every point, record nothing.
        let dry = repo
            .prune(&keep_newest, later, &jiff::tz::TimeZone::UTC, true)
            .unwrap();
        assert_eq!(dry.iter().filter(|d| !d.keep).count(), 1, "{dry:?}");
        assert!(
            repo.prune(&keep_newest, created, &jiff::tz::TimeZone::UTC, false)
                .unwrap()
                .iter()
                .all(|d| d.keep)
        );
        assert_eq!(repo.gc_pending_since().unwrap(), None);

        // A prune that removes the full point records when, with its catalog commit.
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        repo.prune(&keep_newest, later, &jiff::tz::TimeZone::UTC, false)
            .unwrap();
        let since = repo.gc_pending_since().unwrap().expect("gc pending");
        let since_u = u64::try_from(since).unwrap();
        assert!(
            since_u + 1 >= before && since_u <= before + 60,
            "{since} vs {before}"
        );
        assert_eq!(repo.info().unwrap().gc_pending_since, Some(since));
        assert!(!f.root.join("indexes").join(f.full.to_string()).exists());
        // Reopened (a restarted agent), it is still there.
        drop(repo);
        let repo = Repository::open(&f.root).unwrap();
        assert_eq!(repo.gc_pending_since().unwrap(), Some(since));

        // A GC that cannot run (a backup holds the shared lock) leaves it.
        let lock = repo.lock_shared().unwrap();
        assert!(chain(&repo.gc().unwrap_err()).contains("busy"));
        assert_eq!(repo.gc_pending_since().unwrap(), Some(since));
        drop(lock);
        // The full point's own chunks (the two mutated extents' old data) go; the
        // incremental still restores.
        let report = repo.gc().unwrap();
        assert_eq!(report.chunks_removed, 2, "{report:?}");
        assert_eq!(repo.gc_pending_since().unwrap(), None);
        let out = f.root.join("r.img");
        repo.restore_image(f.incr, &out, &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&f.img).unwrap());

        // Deleting a point records it too, and removes its index directory.
        assert!(repo.delete_point(f.incr).unwrap());
        assert!(!repo.delete_point(f.incr).unwrap(), "already gone");
        assert!(!f.root.join("indexes").join(f.incr.to_string()).exists());
        assert!(repo.gc_pending_since().unwrap().is_some());
        let info = std::process::Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
            .args(["repo", "info", "--repo"])
            .arg(&f.root)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&info.stdout);
        assert!(
            text.contains("garbage:        restore points removed since 20")
                && text.contains("their chunks take space until `repo gc` runs"),
            "{text}"
        );
        repo.gc().unwrap();
        assert_eq!(repo.gc_pending_since().unwrap(), None);
        assert_eq!(count_files(repo.store().root()), 0);
    }

    /// The chunk problems of a verify of `subset` (with `repair`): (digest, state).
    fn chunk_problems(
        repo: &Repository,
        subset: VerifySubset,
        repair: bool,
    ) -> (usize, Vec<(ChunkDigest, ChunkState)>) {
        let (report, _) = repo
            .verify_with(
                &VerifyOptions {
                    subset: Some(subset),
                    repair,
                    ..VerifyOptions::default()
                },
                &mut |_, _| {},
            )
            .unwrap();
        assert_eq!(report.subset, Some(subset));
        let problems = report
            .problems
            .iter()
            .map(|p| match p {
                VerifyProblem::Chunk { digest, state, .. } => (*digest, *state),
                other => panic!("{other:?}"),
            })
            .collect();
        (report.chunks_read, problems)
    }

    #[test]
    fn a_subset_verify_reads_its_bucket_checks_the_rest_and_rereads_damaged_chunks() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (digest, path) = shared_chunk(&repo, &f);
        let of = 4;
        let bucket = |d: &ChunkDigest| {
            (1..=of)
                .map(|n| VerifySubset::new(n, of).unwrap())
                .find(|s| s.contains(d))
                .unwrap()
        };
        let mine = bucket(&digest);
        let other = VerifySubset::new(mine.n % of + 1, of).unwrap();
        // The buckets together read every chunk once.
        let all = repo.verify(&mut |_, _| {}).unwrap();
        assert_eq!(all.chunks_read, all.chunks);
        let reads: usize = (1..=of)
            .map(|n| chunk_problems(&repo, VerifySubset::new(n, of).unwrap(), false).0)
            .sum();
        assert_eq!(reads, all.chunks);

        // A corrupt chunk is found by its own bucket only...
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (read, problems) = chunk_problems(&repo, other, false);
        assert!(problems.is_empty() && read < all.chunks, "{problems:?}");
        assert_eq!(
            chunk_problems(&repo, mine, false).1,
            [(digest, ChunkState::Corrupt)]
        );
        // ... a missing one by every bucket (the others check that each file exists).
        let full = repo.catalog().get_point(f.full).unwrap().unwrap();
        let gone_digest = *repo
            .load_index(&full, IMAGE_DISK_KEY)
            .unwrap()
            .read_all()
            .unwrap()
            .iter()
            .find(|d| !d.is_zero() && **d != digest)
            .expect("a second chunk");
        let gone = repo.store().chunk_path(&gone_digest);
        let aside = f.root.join("aside");
        std::fs::rename(&gone, &aside).unwrap();
        let elsewhere = VerifySubset::new(bucket(&gone_digest).n % of + 1, of).unwrap();
        assert!(
            chunk_problems(&repo, elsewhere, false)
                .1
                .contains(&(gone_digest, ChunkState::Missing))
        );
        std::fs::rename(&aside, &gone).unwrap();

        // Once recorded as damaged, a chunk is re-read whatever the bucket: here a corrupt
        // file is back in its place (as if a backup's read-back had failed).
        assert!(
            chunk_problems(&repo, mine, true)
                .1
                .contains(&(digest, ChunkState::Corrupt))
        );
        assert!(!path.exists(), "quarantined");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            chunk_problems(&repo, other, true).1,
            [(digest, ChunkState::Corrupt)]
        );
        assert_eq!(repo.info().unwrap().damaged_chunks, 1);
    }

    #[test]
    fn a_stopped_verify_reports_nothing_and_repairs_nothing() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (digest, path) = shared_chunk(&repo, &f);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let stop = || true;
        let e = repo
            .verify_with(
                &VerifyOptions {
                    repair: true,
                    stop: Some(&stop),
                    ..VerifyOptions::default()
                },
                &mut |_, _| {},
            )
            .unwrap_err();
        assert!(matches!(e, vadp_agent::repo::RepoError::Cancelled), "{e}");
        assert!(path.exists(), "not quarantined");
        assert_eq!(repo.info().unwrap().damaged_chunks, 0);
        // Not stopped: found, and repaired.
        let never = || false;
        let (report, repaired) = repo
            .verify_with(
                &VerifyOptions {
                    repair: true,
                    stop: Some(&never),
                    ..VerifyOptions::default()
                },
                &mut |_, _| {},
            )
            .unwrap();
        assert!(!report.is_ok());
        assert_eq!(repaired.unwrap().damaged, [digest]);
    }

    /// The user mode bits bind: `nobody` when the tests run as root (whom they do not
    /// bind), else the tests' own user.
    const NOBODY: u32 = 65_534;

    fn privileged() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// Hands every file under `dir` (and `dir`) to `nobody`.
    fn give_to_nobody(dir: &Path) {
        std::os::unix::fs::lchown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
        if dir.is_dir() {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                give_to_nobody(&e.path());
            }
        }
    }

    /// `vadp-agent ARGS`, as `nobody` when the tests run as root.
    fn cli_unprivileged(args: &[&std::ffi::OsStr]) -> std::process::Output {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vadp-agent"));
        cmd.args(args);
        if privileged() {
            cmd.uid(NOBODY).gid(NOBODY);
        }
        cmd.output().unwrap()
    }

    /// A chunk directory the backup may not write into: the error names the directory
    /// and says the point was not made; the points there stay. As root, whom mode bits do
    /// not bind, the same backup runs through the CLI as `nobody`.
    #[test]
    fn permission_error_names_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let chunks = repo.store().root().to_path_buf();
        let img = f.root.join("other.img");
        synthetic_image::generate(&img, 1 << 20, 77).unwrap();
        if privileged() {
            give_to_nobody(f.root.parent().unwrap());
        }
        let dirs: Vec<PathBuf> = std::fs::read_dir(&chunks)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        for d in dirs.iter().chain([&chunks]) {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        let msg = if privileged() {
            drop(repo);
            let out = cli_unprivileged(&[
                "image".as_ref(),
                "backup".as_ref(),
                "--repo".as_ref(),
                f.root.as_os_str(),
                "--name".as_ref(),
                "other".as_ref(),
                img.as_os_str(),
            ]);
            assert!(!out.status.success());
            String::from_utf8_lossy(&out.stderr).into_owned()
        } else {
            let req = ImageBackup {
                name: "other".into(),
                file: img,
                changed: None,
                parent: None,
            };
            chain(&repo.backup_image(&req, &mut |_, _| {}).unwrap_err())
        };
        for d in dirs.iter().chain([&chunks]) {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert!(
            msg.contains("Permission denied")
                && msg.contains(&chunks.display().to_string())
                && msg.contains("not created"),
            "{msg}"
        );
        let repo = Repository::open(&f.root).unwrap();
        assert_eq!(repo.list().unwrap().len(), 2);
    }

    /// A repository the user may not enter is a permission error naming it, not "not a
    /// repository" with a hint to `repo init` over it.
    #[test]
    fn a_repository_the_user_cannot_enter_is_a_permission_error() {
        use std::os::unix::fs::PermissionsExt;
        let f = fixture();
        if privileged() {
            // The tree stays root's, the repository's root 0700: nobody cannot enter it.
            std::os::unix::fs::lchown(f.root.parent().unwrap(), Some(NOBODY), Some(NOBODY))
                .unwrap();
        }
        std::fs::set_permissions(&f.root, std::fs::Permissions::from_mode(0o700)).unwrap();
        if !privileged() {
            std::fs::set_permissions(&f.root, std::fs::Permissions::from_mode(0o000)).unwrap();
        }
        let out = cli_unprivileged(&[
            "repo".as_ref(),
            "info".as_ref(),
            "--repo".as_ref(),
            f.root.as_os_str(),
            "--json".as_ref(),
        ]);
        std::fs::set_permissions(&f.root, std::fs::Permissions::from_mode(0o750)).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("Permission denied")
                && stderr.contains(&f.root.display().to_string())
                && !stderr.contains("not a vadp-agent repository"),
            "{stderr}"
        );
        // With --json the error is also the last line on stdout.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
        assert_eq!(last["event"], "error", "{stdout}");
        assert!(
            last["error"]
                .as_str()
                .unwrap()
                .contains("Permission denied"),
            "{stdout}"
        );
        assert_eq!(last["exit_code"], 1);
    }

    /// An extents file that does not fit the image (out of range, or not JSON) is refused
    /// naming the file, before anything is read; the points stay.
    #[test]
    fn a_bad_extents_file_is_refused_naming_it() {
        let f = fixture();
        let dir = f.root.parent().unwrap();
        let cases = [
            ("beyond.json", "[[8388608, 65536]]", "beyond the end of"),
            (
                "overflow.json",
                "[[18446744073709551615, 2]]",
                "beyond the end of",
            ),
            (
                "garbage.json",
                "{\"offset\": 1}",
                "a JSON list of [offset, length]",
            ),
        ];
        for (name, text, wanted) in cases {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
                .args(["image", "backup", "--repo"])
                .arg(&f.root)
                .args(["--name", "vm", "--changed"])
                .arg(&path)
                .arg(&f.img)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name}: {stderr}");
            assert!(
                stderr.contains(&path.display().to_string()) && stderr.contains(wanted),
                "{name}: {stderr}"
            );
        }
        let repo = Repository::open(&f.root).unwrap();
        assert_eq!(repo.list().unwrap().len(), 2);
    }

    #[test]
    fn full_disk_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let Some(mnt) = Mount::new("tmpfs", "size=3m", &dir.path().join("mnt")) else {
            eprintln!("cannot mount a tmpfs (not root): ENOSPC covered by the restore unit test");
            return;
        };
        let img = dir.path().join("random.img");
        let mut rng = synthetic_image::SplitMix64::new(5);
        let mut data = vec![0u8; 8 << 20];
        rng.fill(&mut data);
        std::fs::write(&img, &data).unwrap();
        let root = mnt.0.join("repo");
        let repo = Repository::init(&root, 64 << 10).unwrap();
        let req = ImageBackup {
            name: "big".into(),
            file: img.clone(),
            changed: None,
            parent: None,
        };
        let msg = chain(&repo.backup_image(&req, &mut |_, _| {}).unwrap_err());
        // The message names the disk, the point not made, the chunk and its file.
        assert!(
            msg.contains("No space left")
                && msg.contains("big")
                && msg.contains("not created")
                && msg.contains(&root.join("chunks").display().to_string()),
            "{msg}"
        );
        assert_eq!(
            repo.list().unwrap().len(),
            0,
            "a failed backup must leave no restore point"
        );
        // Nothing half-written stays: no temp chunk files, no index directory.
        let temps = walk(&root.join("chunks"))
            .into_iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp"))
            .count();
        assert_eq!(temps, 0, "temp chunk files left behind");
        assert_eq!(
            std::fs::read_dir(root.join("indexes")).unwrap().count(),
            0,
            "an index directory was left behind"
        );
    }

    /// Unmounts on drop, so a failing assertion leaves no mount behind.
    struct Mount(PathBuf);

    impl Mount {
        /// Mount a file system of `fstype` at `at`; `None` where that is not allowed.
        fn new(fstype: &str, options: &str, at: &Path) -> Option<Self> {
            std::fs::create_dir_all(at).unwrap();
            std::process::Command::new("mount")
                .args(["-t", fstype, "-o", options, fstype])
                .arg(at)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
                .then(|| Self(at.to_path_buf()))
        }
    }

    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    /// ramfs refuses `O_DIRECT` after creating the file (so do tmpfs before Linux 6.6 and
    /// ecryptfs): chunk files then go through the page cache, and nothing is left behind.
    #[test]
    fn a_file_system_without_direct_io_gets_buffered_chunk_files() {
        let dir = tempfile::tempdir().unwrap();
        let Some(mnt) = Mount::new("ramfs", "mode=0755", &dir.path().join("mnt")) else {
            eprintln!("cannot mount a ramfs (not root): skipped");
            return;
        };
        let img = dir.path().join("disk.img");
        synthetic_image::generate(&img, 4 << 20, 12).unwrap();
        let root = mnt.0.join("repo");
        let repo = Repository::init(&root, 64 << 10).unwrap();
        assert!(repo.store().direct_io());
        let req = ImageBackup {
            name: "vm".into(),
            file: img.clone(),
            changed: None,
            parent: None,
        };
        let point = repo.backup_image(&req, &mut |_, _| {}).unwrap().point;
        assert!(!repo.store().direct_io(), "ramfs accepted O_DIRECT?");
        assert!(repo.verify(&mut |_, _| {}).unwrap().is_ok());
        let temps: Vec<_> = std::fs::read_dir(repo.store().root())
            .unwrap()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
            .filter(|f| f.file_name().to_string_lossy().starts_with(".tmp-"))
            .map(|f| f.path())
            .collect();
        assert!(temps.is_empty(), "{temps:?}");
        let out = dir.path().join("restored.img");
        repo.restore_image(point, &out, &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
    }

    #[test]
    fn new_repository_has_the_flat_fanout() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        assert_eq!(repo.store().layout(), Layout::Flat);
        let dirs = std::fs::read_dir(repo.store().root()).unwrap().count();
        assert_eq!(dirs, 256);
        let d = ChunkDigest::of(b"x");
        let hex = d.to_hex();
        assert_eq!(
            repo.store().chunk_path(&d),
            repo.store().root().join(&hex[..2]).join(&hex)
        );
    }

    /// A repository written before the flat layout (`chunks/<ab>/<cd>/<digest>`, no
    /// `chunk_layout` key) is still read, verified, backed up into and collected.
    #[test]
    fn nested_layout_of_older_repositories_still_works() {
        let f = fixture();
        // Turn the fixture into an old-layout repository.
        let chunks = f.root.join("chunks");
        for dir in std::fs::read_dir(&chunks).unwrap().flatten() {
            for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                let nested = dir.path().join(&name[2..4]);
                std::fs::create_dir_all(&nested).unwrap();
                std::fs::rename(file.path(), nested.join(&name)).unwrap();
            }
        }
        rusqlite::Connection::open(f.root.join("catalog.db"))
            .unwrap()
            .execute("DELETE FROM repo_meta WHERE key = 'chunk_layout'", [])
            .unwrap();

        let repo = Repository::open(&f.root).unwrap();
        assert_eq!(repo.store().layout(), Layout::Nested);
        assert!(repo.verify(&mut |_, _| {}).unwrap().is_ok());
        let out = f.root.join("r.img");
        repo.restore_image(f.incr, &out, &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&f.img).unwrap());

        // A new backup writes nested paths; GC sweeps an orphan in a nested directory.
        let changed = synthetic_image::mutate(&f.img, 11, 2, 4096).unwrap();
        let req = ImageBackup {
            name: "vm".into(),
            file: f.img.clone(),
            changed: Some(changed),
            parent: None,
        };
        let point = repo.backup_image(&req, &mut |_, _| {}).unwrap().point;
        let orphan = ChunkDigest::of(b"orphan");
        let path = repo.store().chunk_path(&orphan);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"x").unwrap();
        let hex = orphan.to_hex();
        assert!(path.ends_with(format!("{}/{}/{hex}", &hex[..2], &hex[2..4])));
        let report = repo.gc().unwrap();
        assert_eq!(report.chunks_removed, 1);
        assert!(report.chunks_kept > 0);
        assert!(repo.verify(&mut |_, _| {}).unwrap().is_ok());
        repo.restore_image(point, &out, &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&f.img).unwrap());
    }

    #[test]
    fn unknown_chunk_layout_is_refused() {
        let f = fixture();
        rusqlite::Connection::open(f.root.join("catalog.db"))
            .unwrap()
            .execute(
                "UPDATE repo_meta SET value = 'abc/def' WHERE key = 'chunk_layout'",
                [],
            )
            .unwrap();
        let msg = chain(&Repository::open(&f.root).unwrap_err());
        assert!(
            msg.contains("abc/def") && msg.contains("catalog.db"),
            "{msg}"
        );
    }

    /// The state verify gives `digest`, if it reports it.
    fn state_of(repo: &Repository, digest: ChunkDigest) -> Option<ChunkState> {
        repo.verify(&mut |_, _| {})
            .unwrap()
            .problems
            .iter()
            .find_map(|p| match p {
                VerifyProblem::Chunk {
                    digest: d, state, ..
                } if *d == digest => Some(*state),
                _ => None,
            })
    }

    fn flip_a_byte(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(path, bytes).unwrap();
    }

    fn restore(repo: &Repository, f: &Fixture, point: RestorePointId) -> Vec<u8> {
        let out = f.root.join(format!("restored-{point}.img"));
        repo.restore_image(point, &out, &mut |_, _| {}).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        bytes
    }

    /// The newest point of an image removed: changed extents made since it do not lead from
    /// the point newest now, so an incremental without `--parent` is refused until the
    /// image has a new point; removing a point that is not the newest changes nothing.
    #[test]
    fn an_incremental_after_the_newest_point_was_removed_needs_its_parent_named() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        assert!(repo.delete_point(f.incr).unwrap());
        let changed = synthetic_image::mutate(&f.img, 4, 2, 4096).unwrap();
        let e = repo
            .backup_image(&incremental(&f, changed.clone()), &mut |_, _| {})
            .unwrap_err();
        assert!(
            matches!(e, vadp_agent::repo::RepoError::NewestRemoved { newest, .. } if newest == f.full),
            "{e}"
        );
        assert!(
            e.to_string().contains(&format!("--parent {}", f.full)),
            "{e}"
        );
        assert_eq!(repo.list().unwrap().len(), 1, "nothing was committed");
        // Named, the parent is taken; the next incremental leads on from the new point.
        let named = repo
            .backup_image(
                &ImageBackup {
                    parent: Some(f.full),
                    ..incremental(&f, changed)
                },
                &mut |_, _| {},
            )
            .unwrap();
        assert_eq!(named.parent, Some(f.full));
        let next = repo
            .backup_image(&incremental(&f, Vec::new()), &mut |_, _| {})
            .unwrap();
        assert_eq!(next.parent, Some(named.point));
        // An older point removed: the newest stays the one the extents lead from.
        assert!(repo.delete_point(f.full).unwrap());
        let after = repo
            .backup_image(&incremental(&f, Vec::new()), &mut |_, _| {})
            .unwrap();
        assert_eq!(after.parent, Some(next.point));
    }

    fn incremental(f: &Fixture, changed: Vec<vadp_agent::repo::Extent>) -> ImageBackup {
        ImageBackup {
            name: "vm".into(),
            file: f.img.clone(),
            changed: Some(changed),
            parent: None,
        }
    }

    #[test]
    fn repair_quarantines_a_corrupt_chunk_and_the_next_incremental_heals_every_point() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (d, path) = shared_chunk(&repo, &f);
        let current = std::fs::read(&f.img).unwrap();
        let full_image = {
            let orig = f.root.join("orig.img");
            synthetic_image::generate(&orig, 4 << 20, 9).unwrap();
            std::fs::read(&orig).unwrap()
        };
        flip_a_byte(&path);
        assert_eq!(state_of(&repo, d), Some(ChunkState::Corrupt));

        // Without the repair, a backup of the same data would reuse the corrupt file: the
        // chunk exists, so nothing would be stored again.
        let (report, repaired) = repo.verify_and_repair(&mut |_, _| {}).unwrap();
        assert!(!report.is_ok());
        assert_eq!(repaired.damaged, vec![d]);
        assert_eq!(repaired.quarantined.len(), 1, "{repaired:?}");
        let q = &repaired.quarantined[0];
        assert_eq!(q.from, path);
        assert!(q.to.starts_with(f.root.join("quarantine")), "{q:?}");
        assert!(q.to.exists() && !path.exists());
        let listed = repo.catalog().damaged_list().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].error.contains(&d.to_hex()), "{:?}", listed[0]);
        assert!(
            listed[0]
                .quarantined_as
                .as_deref()
                .unwrap()
                .starts_with("quarantine/")
        );
        let info = repo.info().unwrap();
        assert_eq!((info.damaged_chunks, info.quarantined_files), (1, 1));
        // Set aside, the chunk now reads as missing; both points still name it, and a
        // restore says what to do.
        assert_eq!(state_of(&repo, d), Some(ChunkState::Missing));
        let out = f.root.join("early.img");
        let msg = chain(
            &repo
                .restore_image(f.full, &out, &mut |_, _| {})
                .unwrap_err(),
        );
        assert!(
            msg.contains(&d.to_hex()) && msg.contains("verify --repair") && msg.contains("back up"),
            "{msg}"
        );

        // An incremental with no changed extents still re-reads the parent's damaged slots.
        let healed = repo
            .backup_image(&incremental(&f, Vec::new()), &mut |_, _| {})
            .unwrap();
        assert!(healed.stats.chunks_new >= 1, "{:?}", healed.stats);
        assert!(path.exists());
        assert!(repo.catalog().damaged_list().unwrap().is_empty());
        let info = repo.info().unwrap();
        assert_eq!((info.damaged_chunks, info.quarantined_files), (0, 1));
        let report = repo.verify(&mut |_, _| {}).unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(restore(&repo, &f, f.full), full_image);
        assert_eq!(restore(&repo, &f, f.incr), current);
        assert_eq!(restore(&repo, &f, healed.point), current);

        // A further repair finds nothing to do, and the quarantined file is kept.
        let (report, repaired) = repo.verify_and_repair(&mut |_, _| {}).unwrap();
        assert!(report.is_ok());
        assert!(repaired.damaged.is_empty() && repaired.quarantined.is_empty());
        assert!(q.to.exists());
    }

    #[test]
    fn repair_records_a_missing_chunk_and_a_full_backup_heals_it() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (d, path) = shared_chunk(&repo, &f);
        std::fs::remove_file(&path).unwrap();
        let (_, repaired) = repo.verify_and_repair(&mut |_, _| {}).unwrap();
        assert_eq!(repaired.damaged, vec![d]);
        assert!(repaired.quarantined.is_empty());
        assert_eq!(
            repo.catalog().damaged_list().unwrap()[0].quarantined_as,
            None
        );
        let req = ImageBackup {
            changed: None,
            ..incremental(&f, Vec::new())
        };
        repo.backup_image(&req, &mut |_, _| {}).unwrap();
        assert!(repo.catalog().damaged_list().unwrap().is_empty());
        assert!(repo.verify(&mut |_, _| {}).unwrap().is_ok());
    }

    #[test]
    fn changed_data_cannot_heal_and_the_record_stays() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (d, path) = shared_chunk(&repo, &f);
        flip_a_byte(&path);
        repo.verify_and_repair(&mut |_, _| {}).unwrap();

        // Overwrite the chunk's data in the image: the old content is gone for good.
        let index = repo
            .load_index(
                &repo.catalog().get_point(f.incr).unwrap().unwrap(),
                IMAGE_DISK_KEY,
            )
            .unwrap();
        let slot = index
            .read_all()
            .unwrap()
            .iter()
            .position(|s| *s == d)
            .unwrap();
        let offset = index.geometry().slot_offset(slot);
        let len = index.geometry().slot_len(slot);
        {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&f.img)
                .unwrap();
            file.write_all_at(&vec![0xA5; usize::try_from(len).unwrap()], offset)
                .unwrap();
        }
        let changed = vec![vadp_agent::repo::Extent {
            offset,
            length: len,
        }];
        let next = repo
            .backup_image(&incremental(&f, changed), &mut |_, _| {})
            .unwrap();
        assert_eq!(
            restore(&repo, &f, next.point),
            std::fs::read(&f.img).unwrap()
        );
        // The old points still lack the chunk, and say so.
        assert_eq!(repo.catalog().damaged_list().unwrap().len(), 1);
        assert_eq!(state_of(&repo, d), Some(ChunkState::Missing));
        let out = f.root.join("old.img");
        let msg = chain(
            &repo
                .restore_image(f.full, &out, &mut |_, _| {})
                .unwrap_err(),
        );
        assert!(msg.contains(&d.to_hex()), "{msg}");

        // Once no point references the chunk, GC forgets the record.
        repo.catalog().delete_points(vec![f.full, f.incr]).unwrap();
        let gc = repo.gc().unwrap();
        assert_eq!(gc.damaged_forgotten, vec![d]);
        assert!(repo.catalog().damaged_list().unwrap().is_empty());
        assert!(repo.verify(&mut |_, _| {}).unwrap().is_ok());
    }

    #[test]
    fn repair_runs_beside_a_backup_and_gc_waits_for_it() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (d, path) = shared_chunk(&repo, &f);
        flip_a_byte(&path);
        // A backup in flight holds the shared lock: the repair goes on.
        let backup = repo.lock_shared().unwrap();
        let (_, repaired) = repo.verify_and_repair(&mut |_, _| {}).unwrap();
        assert_eq!(repaired.damaged, vec![d]);
        drop(backup);
        // A second repair finds the chunk missing and keeps where the first put it.
        let (_, again) = repo.verify_and_repair(&mut |_, _| {}).unwrap();
        assert_eq!(again.damaged, vec![d]);
        assert!(again.quarantined.is_empty());
        let listed = repo.catalog().damaged_list().unwrap();
        assert!(listed[0].quarantined_as.is_some(), "{listed:?}");
        // GC needs the repository to itself.
        let repair_lock = repo.lock_shared().unwrap();
        let msg = chain(&repo.gc().unwrap_err());
        assert!(msg.contains("busy"), "{msg}");
        drop(repair_lock);
    }

    /// A prune that removes more points than a process may hold files open (each removal
    /// is claimed by an open lock file until it is done) still succeeds: here 400
    /// removals under a limit of 300 descriptors, which a single pass could not do.
    #[test]
    fn a_prune_of_more_points_than_open_files_allowed_succeeds() {
        use vadp_agent::repo::catalog::{NewPoint, VmRecord};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let repo = Repository::init(&root, 64 << 10).unwrap();
        for n in 0..401_i64 {
            repo.catalog()
                .commit_point(NewPoint {
                    id: RestorePointId::new_random(),
                    vm: VmRecord {
                        moref: "image:many".into(),
                        name: "many".into(),
                        vcenter_uuid: String::new(),
                        namespace: None,
                    },
                    job: None,
                    parent: None,
                    created_at: 1_000_000 + n * 60,
                    kind: vadp_agent::repo::PointKind::Full,
                    reason: "first backup".into(),
                    vmx: None,
                    extra_config: None,
                    nvram: None,
                    related: Vec::new(),
                    config_digest: None,
                    stats: serde_json::json!({}),
                    disks: Vec::new(),
                })
                .unwrap();
        }
        drop(repo);
        // prlimit (util-linux, essential on Debian): the limit for the prune alone.
        let mut cmd = std::process::Command::new("prlimit");
        cmd.arg("--nofile=300:300")
            .arg(env!("CARGO_BIN_EXE_vadp-agent"))
            .args(["repo", "prune", "--keep-last", "1", "--repo"])
            .arg(&root);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let repo = Repository::open(&root).unwrap();
        assert_eq!(repo.catalog().list_points().unwrap().len(), 1);
    }

    /// Runs the agent with `args`; its output, and its own peak RSS in KiB (`wait4`'s
    /// figure for this child alone: tests running at the same time have children too).
    // `wait4` reaps the child; `Child::wait` would reap it without its figures.
    #[allow(clippy::zombie_processes)]
    fn agent_peak_rss(args: &[&std::ffi::OsStr]) -> (std::process::Output, u64) {
        use std::io::Read as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vadp-agent"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let errors = std::thread::spawn(move || {
            let mut buf = Vec::new();
            err.read_to_end(&mut buf).unwrap();
            buf
        });
        let mut stdout = Vec::new();
        out.read_to_end(&mut stdout).unwrap();
        let stderr = errors.join().unwrap();
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        let mut status = 0;
        // SAFETY: `rusage` is plain data, valid all zeros.
        #[allow(unsafe_code)]
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live locals that `wait4` fills; `pid` is our child,
        // not reaped yet (`child.wait()` is never called).
        #[allow(unsafe_code)]
        let reaped = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
        assert_eq!(reaped, pid, "{}", std::io::Error::last_os_error());
        use std::os::unix::process::ExitStatusExt as _;
        let output = std::process::Output {
            status: std::process::ExitStatus::from_raw(status),
            stdout,
            stderr,
        };
        (output, u64::try_from(usage.ru_maxrss).unwrap())
    }

    /// A disk's size does not decide the agent's memory. A 4 TiB image with 2 MiB of data
    /// has 4 Mi slots of index (128 MiB on disk); its backups, restore, verify and GC each
    /// peak far below that (all held the whole index before: 274–404 MB measured), and
    /// the restored image has the data where it was.
    #[test]
    fn a_huge_sparse_disk_takes_no_more_memory_than_a_small_one() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        Repository::init(&root, 1 << 20).unwrap();
        let img = dir.path().join("huge.img");
        let size = 4u64 << 40;
        let (a, b) = (1000u64 << 20, 3u64 << 40);
        {
            let f = std::fs::File::create(&img).unwrap();
            f.set_len(size).unwrap();
            let mut data = vec![0u8; 1 << 20];
            synthetic_image::SplitMix64::new(3).fill(&mut data);
            f.write_all_at(&data, a).unwrap();
            synthetic_image::SplitMix64::new(4).fill(&mut data);
            f.write_all_at(&data, b).unwrap();
        }
        let os = |s: &str| std::ffi::OsString::from(s);
        let repo_args = |cmd: &[&str]| -> Vec<std::ffi::OsString> {
            let mut v: Vec<std::ffi::OsString> = cmd.iter().map(|s| os(s)).collect();
            v.extend([os("--repo"), root.clone().into_os_string(), os("--json")]);
            v
        };
        let run = |args: Vec<std::ffi::OsString>, what: &str| {
            let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
            let (out, rss_kib) = agent_peak_rss(&refs);
            assert!(
                out.status.success(),
                "{what}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("{what}: peak RSS {rss_kib} KiB");
            assert!(rss_kib < 64 << 10, "{what}: peak RSS {rss_kib} KiB");
        };
        let newest = || {
            let repo = Repository::open(&root).unwrap();
            repo.list().unwrap().last().unwrap().id.to_string()
        };
        let mut full = repo_args(&["image", "backup", "--name", "huge"]);
        full.push(img.clone().into_os_string());
        run(full, "full backup");
        let full_id = newest();

        // The second area changes; the extents file says so.
        let mut changed = vec![0u8; 1 << 20];
        synthetic_image::SplitMix64::new(5).fill(&mut changed);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .write_all_at(&changed, b)
            .unwrap();
        let extents = dir.path().join("changed.json");
        std::fs::write(&extents, format!("[[{b}, {}]]", 1 << 20)).unwrap();
        let mut incr = repo_args(&["image", "backup", "--name", "huge", "--parent", &full_id]);
        incr.extend([
            os("--changed"),
            extents.into_os_string(),
            img.into_os_string(),
        ]);
        run(incr, "incremental");
        let incr_id = newest();
        assert_ne!(incr_id, full_id);

        let out = dir.path().join("restored.img");
        let mut restore = repo_args(&["image", "restore", "--point", &incr_id]);
        restore.extend([os("--out"), out.clone().into_os_string()]);
        run(restore, "restore");
        run(repo_args(&["repo", "verify"]), "verify");
        run(repo_args(&["repo", "gc"]), "gc");

        let restored = std::fs::File::open(&out).unwrap();
        assert_eq!(restored.metadata().unwrap().len(), size);
        let mut got = vec![0u8; 1 << 20];
        restored.read_exact_at(&mut got, b).unwrap();
        assert!(got == changed, "the changed area restored");
        let mut want = vec![0u8; 1 << 20];
        synthetic_image::SplitMix64::new(3).fill(&mut want);
        restored.read_exact_at(&mut got, a).unwrap();
        assert!(got == want, "the unchanged area restored");
        restored.read_exact_at(&mut got, 2 << 40).unwrap();
        assert!(got.iter().all(|&x| x == 0), "a hole restored as zeros");
    }

    /// A check in many passes (each over one share of the digests, the indexes read again
    /// for each) finds what one pass finds: the same chunks, the same problems, each bad
    /// chunk with every point that uses it. A restore's check of its point is such a check.
    #[test]
    fn a_verify_in_passes_finds_what_one_pass_finds() {
        use vadp_agent::repo::verify;
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let (shared, shared_path) = shared_chunk(&repo, &f);
        flip_a_byte(&shared_path);
        let full = repo.catalog().get_point(f.full).unwrap().unwrap();
        let incr = repo.catalog().get_point(f.incr).unwrap().unwrap();
        let gone = *repo
            .load_index(&incr, IMAGE_DISK_KEY)
            .unwrap()
            .read_all()
            .unwrap()
            .iter()
            .find(|d| !d.is_zero() && **d != shared)
            .unwrap();
        std::fs::remove_file(repo.store().chunk_path(&gone)).unwrap();
        let points = vec![full, incr];
        let run = |max_entries, presence_only| {
            let select = vadp_agent::repo::ChunkSelection {
                presence_only,
                max_entries,
                ..Default::default()
            };
            let mut calls = Vec::new();
            let mut report = verify::verify(
                repo.root(),
                repo.chunk_size_bytes(),
                repo.store(),
                &points,
                select,
                2,
                None,
                &mut |done, total| calls.push((done, total)),
            )
            .unwrap();
            report.problems.sort_by_key(|p| format!("{p:?}"));
            // Progress only grows, and ends at what was read.
            assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{calls:?}");
            if let Some(last) = calls.last() {
                assert_eq!(last.0, report.chunks_read as u64);
            }
            report
        };
        for presence_only in [false, true] {
            let one = run(None, presence_only);
            let wanted = if presence_only { 1 } else { 2 };
            assert_eq!(one.problems.len(), wanted, "{:?}", one.problems);
            for cap in [1, 7] {
                let passes = run(Some(cap), presence_only);
                assert_eq!(passes.chunks, one.chunks, "cap {cap}");
                assert_eq!(passes.chunks_read, one.chunks_read, "cap {cap}");
                assert_eq!(passes.problems, one.problems, "cap {cap}");
            }
        }
        let check = repo
            .check_restorable(f.incr, &[IMAGE_DISK_KEY], true)
            .unwrap();
        assert!(!check.stopped_early);
        let problems = check.problems;
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .all(|p| matches!(p, VerifyProblem::Chunk { points, .. }
                if points.iter().any(|(id, _)| *id == f.incr))),
            "{problems:?}"
        );
    }

    /// GC marks chunks by the first 8 bytes of their digests: a file whose digest shares
    /// them with a live chunk's is kept (garbage kept as long as its twin is live, the safe
    /// side), any other unreferenced file goes, and every live chunk stays.
    #[test]
    fn gc_marks_by_digest_prefix_and_errs_only_towards_keeping() {
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let live: Vec<ChunkDigest> = [f.full, f.incr]
            .iter()
            .flat_map(|id| {
                let rec = repo.catalog().get_point(*id).unwrap().unwrap();
                repo.load_index(&rec, IMAGE_DISK_KEY)
                    .unwrap()
                    .read_all()
                    .unwrap()
            })
            .filter(|d| !d.is_zero())
            .collect();
        let mut twin = live[0];
        twin.0[31] ^= 1;
        let mut stranger = live[0];
        stranger.0[0] ^= 1;
        for fake in [twin, stranger] {
            assert!(!live.contains(&fake));
            let path = repo.store().chunk_path(&fake);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"not a chunk").unwrap();
        }
        let report = repo.gc().unwrap();
        assert_eq!(report.chunks_removed, 1, "{report:?}");
        assert!(repo.store().chunk_path(&twin).exists());
        assert!(!repo.store().chunk_path(&stranger).exists());
        for d in &live {
            assert!(
                repo.store().chunk_path(d).exists(),
                "live chunk {d} removed"
            );
        }
        assert!(repo.verify(&mut |_, _| {}).unwrap().is_ok());
    }

    /// A restore's check stops after enough bad chunks to refuse: a point whose chunks are
    /// all gone (a chunk store not mounted) does not make it hold a problem for each. The
    /// refusal says there may be more; a full verify still lists every one (a repair needs
    /// them).
    #[test]
    fn a_restore_check_stops_after_enough_bad_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let img = dir.path().join("disk.img");
        synthetic_image::generate(&img, 16 << 20, 4).unwrap();
        let repo = Repository::init(&root, 64 << 10).unwrap();
        let req = ImageBackup {
            name: "vm".into(),
            file: img.clone(),
            changed: None,
            parent: None,
        };
        let point = repo.backup_image(&req, &mut |_, _| {}).unwrap().point;
        let chunks = walk(&root.join("chunks"));
        let max = vadp_agent::repo::RESTORE_CHECK_MAX_BAD;
        assert!(chunks.len() > max + 20, "{} chunks", chunks.len());
        for c in &chunks {
            std::fs::remove_file(c).unwrap();
        }
        let check = repo
            .check_restorable(point, &[IMAGE_DISK_KEY], false)
            .unwrap();
        assert!(check.stopped_early);
        assert_eq!(check.problems.len(), max);
        let check = repo
            .check_restorable(point, &[IMAGE_DISK_KEY], true)
            .unwrap();
        assert!(check.stopped_early);
        assert!(
            (max..max + 16).contains(&check.problems.len()),
            "{}",
            check.problems.len()
        );
        let err = chain(
            &repo
                .restore_image(point, &dir.path().join("out.img"), &mut |_, _| {})
                .unwrap_err(),
        );
        assert!(err.contains(&format!("{max} or more problem(s)")), "{err}");
        let all = repo.verify(&mut |_, _| {}).unwrap();
        assert!(!all.stopped_early);
        assert_eq!(all.problems.len(), chunks.len());
    }

    /// An incremental whose parent's index checked out when it was opened but does not
    /// when copied (a read error, bytes that changed) is made a full backup, says so in
    /// its reason, and holds the disk's data as a full would.
    #[test]
    fn an_incremental_whose_parent_index_fails_its_copy_becomes_a_full() {
        use std::os::unix::fs::FileExt;
        let f = fixture();
        let repo = Repository::open(&f.root).unwrap();
        let rec = repo.catalog().get_point(f.incr).unwrap().unwrap();
        let parent = repo.load_index(&rec, IMAGE_DISK_KEY).unwrap();
        let want = parent.read_all().unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(parent.path())
            .unwrap();
        file.write_all_at(&[0x5a], 64 + 32 * 3 + 7).unwrap();
        let _lock = repo.lock_shared().unwrap();
        let written = repo
            .write_disk(
                RestorePointId::new_random(),
                "vm",
                IMAGE_DISK_KEY,
                vadp_agent::repo::RawFileSource::open(&f.img).unwrap(),
                vadp_agent::repo::DiskPlan::Incremental {
                    parent_index: parent,
                    changed: Vec::new(),
                },
                &mut |_, _| {},
            )
            .unwrap();
        assert_eq!(written.kind, vadp_agent::repo::PointKind::Full);
        let why = written.fallback.unwrap();
        assert!(
            why.contains("could not be copied") && why.contains(".fidx"),
            "{why}"
        );
        let got = vadp_agent::repo::FixedIndexReader::open(&f.root.join(&written.index_path))
            .unwrap()
            .read_all()
            .unwrap();
        assert!(got == want, "the full holds other chunks than the disk's");
    }
}
