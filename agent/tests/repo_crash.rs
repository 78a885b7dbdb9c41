//! Kill `vadp-agent image backup` with SIGKILL at seeded random moments, then check that the
//! repository is intact: verify passes, only committed points are listed, a new backup works,
//! GC reclaims the garbage, and every listed point restores byte-identical to its source.

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use vadp_agent::repo::Extent;
    use vadp_agent::repo::synthetic_image::{self, SplitMix64};

    const BIN: &str = env!("CARGO_BIN_EXE_vadp-agent");

    fn agent(args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .output()
            .expect("run vadp-agent")
    }

    fn points(repo: &Path) -> Vec<(String, String)> {
        let out = agent(&["--json", "list", "--repo", repo.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_owned(),
                    p["vm"]["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    fn hash_file(p: &Path) -> blake3::Hash {
        blake3::hash(&std::fs::read(p).unwrap())
    }

    fn backup_args(
        repo: &Path,
        name: &str,
        img: &Path,
        changed: Option<(&Path, &str)>,
    ) -> Vec<String> {
        let mut a = vec![
            "image".into(),
            "backup".into(),
            "--repo".into(),
            repo.display().to_string(),
            "--name".into(),
            name.into(),
        ];
        if let Some((ext, parent)) = changed {
            a.extend([
                "--changed".into(),
                ext.display().to_string(),
                "--parent".into(),
                parent.into(),
            ]);
        }
        a.push(img.display().to_string());
        a
    }

    /// The id of the one point in `after` that is not in `before`, if any.
    fn new_point(before: &[(String, String)], after: &[(String, String)]) -> Option<String> {
        let new: Vec<&String> = after
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !before.iter().any(|(b, _)| b == *id))
            .collect();
        assert!(new.len() <= 1, "{new:?}");
        new.first().map(|id| (*id).clone())
    }

    fn count_files(dir: &Path, pred: &dyn Fn(&str) -> bool) -> usize {
        let mut n = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else if pred(&e.file_name().to_string_lossy()) {
                    n += 1;
                }
            }
        }
        n
    }

    #[test]
    fn killed_backups_leave_repository_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let repo: PathBuf = dir.path().join("repo");
        let img = dir.path().join("disk.img");
        let ext_file = dir.path().join("changed.json");
        let r = repo.to_str().unwrap();
        assert!(
            agent(&["repo", "init", "--path", r, "--chunk-size", "256K"])
                .status
                .success()
        );
        synthetic_image::generate(&img, 24 << 20, 42).unwrap();

        // Every backup is of the one image "disk"; `expected` maps each committed point to
        // the image's hash when it was backed up.
        let mut expected: HashMap<String, blake3::Hash> = HashMap::new();
        // Calibrate: a full backup that completes.
        let t0 = Instant::now();
        let out = Command::new(BIN)
            .args(backup_args(&repo, "disk", &img, None))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let full_ms = u64::try_from(t0.elapsed().as_millis()).unwrap().max(50);
        let mut latest = new_point(&[], &points(&repo)).expect("the first point");
        expected.insert(latest.clone(), hash_file(&img));
        // Calibrate an incremental too (kill delays are drawn per kind).
        let calib_ext = synthetic_image::mutate(&img, 1000, 8, 300_000).unwrap();
        std::fs::write(&ext_file, serde_json::to_vec(&calib_ext).unwrap()).unwrap();
        let before = points(&repo);
        let t0 = Instant::now();
        let out = Command::new(BIN)
            .args(backup_args(&repo, "disk", &img, Some((&ext_file, &latest))))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let incr_ms = u64::try_from(t0.elapsed().as_millis()).unwrap().max(20);
        latest = new_point(&before, &points(&repo)).expect("the incremental's point");
        expected.insert(latest.clone(), hash_file(&img));

        let mut rng = SplitMix64::new(0xC0FFEE);
        let mut pending: Vec<Extent> = Vec::new();
        // Kill until at least MIN_KILLS backups died mid-way. The delays are drawn below each
        // kind's estimated run time; a backup that finishes before its delay proves the
        // estimate too long (the calibration runs may have met a slow moment of the
        // machine), so the estimate shrinks to that delay.
        const MIN_KILLS: usize = 10;
        const MAX_ATTEMPTS: u64 = 48;
        let (mut full_est, mut incr_est) = (full_ms, incr_ms);
        let mut killed = 0;
        let mut i = 0;
        while killed < MIN_KILLS && i < MAX_ATTEMPTS {
            pending.extend(synthetic_image::mutate(&img, i, 8, 300_000).unwrap());
            let before = points(&repo);
            // Every third attempt is a full backup (the longest); the rest incrementals.
            let full = i % 3 == 0;
            let args = if full {
                backup_args(&repo, "disk", &img, None)
            } else {
                std::fs::write(&ext_file, serde_json::to_vec(&pending).unwrap()).unwrap();
                backup_args(&repo, "disk", &img, Some((&ext_file, &latest)))
            };
            let est = if full { &mut full_est } else { &mut incr_est };
            let mut child = Command::new(BIN)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let delay = rng.below(*est);
            std::thread::sleep(Duration::from_millis(delay));
            if child.try_wait().unwrap().is_none() {
                killed += 1;
            } else {
                *est = delay.max(10);
            }
            child.kill().ok(); // SIGKILL
            child.wait().unwrap();
            // A committed backup is the one new point.
            if let Some(id) = new_point(&before, &points(&repo)) {
                latest = id;
                expected.insert(latest.clone(), hash_file(&img));
                pending.clear();
            }
            i += 1;
        }
        assert!(
            killed >= MIN_KILLS,
            "only {killed} of {i} backups were killed mid-way"
        );

        // Verify passes and lists only committed points.
        let out = agent(&["repo", "verify", "--repo", r]);
        assert!(
            out.status.success(),
            "verify: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // A following backup succeeds.
        let before = points(&repo);
        let out = Command::new(BIN)
            .args(backup_args(&repo, "disk", &img, None))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = new_point(&before, &points(&repo)).expect("the last backup's point");
        expected.insert(id, hash_file(&img));
        // GC reclaims the garbage: no temp files, no orphan index dirs, only referenced chunks.
        let out = agent(&["--json", "repo", "gc", "--repo", r]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let gc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let listed = points(&repo);
        assert_eq!(
            count_files(&repo.join("chunks"), &|n| n.starts_with(".tmp")),
            0
        );
        assert_eq!(
            count_files(&repo.join("chunks"), &|_| true) as u64,
            gc["report"]["chunks_marked"].as_u64().unwrap()
        );
        assert_eq!(
            std::fs::read_dir(repo.join("indexes")).unwrap().count(),
            listed.len()
        );
        let out = agent(&["repo", "verify", "--repo", r]);
        assert!(out.status.success());
        // Every listed point restores byte-identical to its source at backup time.
        assert_eq!(listed.len(), expected.len());
        for (id, _) in &listed {
            let restored = dir.path().join(format!("restored-{id}"));
            let out = agent(&[
                "image",
                "restore",
                "--repo",
                r,
                "--point",
                id,
                "--out",
                restored.to_str().unwrap(),
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(hash_file(&restored), expected[id], "restore of {id}");
            std::fs::remove_file(&restored).unwrap();
        }
    }
}
