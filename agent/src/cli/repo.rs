//! `vadp-agent repo …` and `vadp-agent list`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::progress::Progress;
use super::{parse_duration_secs, parse_size};
use crate::ids::RestorePointId;
use crate::repo::{
    ChunkState, DEFAULT_CHUNK_SIZE_BYTES, RepairReport, Repository, RetentionPolicy, VerifyOptions,
    VerifyProblem, VerifyReport, VerifySubset,
};

/// Exit code of `repo verify` when it finds problems.
const EXIT_VERIFY_FAILED: u8 = 3;

/// The repository to work on.
#[derive(Debug, Args)]
pub struct RepoArg {
    /// Repository directory.
    #[arg(
        long = "repo",
        visible_alias = "path",
        env = "VADP_REPO",
        value_name = "DIR"
    )]
    pub repo: PathBuf,
}

/// `repo` subcommands.
#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create a repository; the chunk size is fixed for its lifetime.
    Init {
        #[command(flatten)]
        repo: RepoArg,
        /// Chunk size (power of two, 64K..64M).
        #[arg(long, value_parser = parse_size, default_value_t = u64::from(DEFAULT_CHUNK_SIZE_BYTES))]
        chunk_size: u64,
    },
    /// Show chunk size, schema version, points and space used.
    Info {
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Check the catalog, re-hash every chunk; report what is bad and the points it affects.
    Verify {
        #[command(flatten)]
        repo: RepoArg,
        /// Also move corrupt chunk files to `quarantine/` and record damaged chunks, so the
        /// next backup of the same data stores them again and heals the points that use them.
        #[arg(long)]
        repair: bool,
        /// Re-hash only the chunks in bucket N of T (by digest) and check that the others
        /// exist: `1/7` … `7/7` on seven days read every chunk once a week.
        #[arg(long, value_name = "N/T")]
        subset: Option<VerifySubset>,
        /// Only the chunks this restore point uses (repeatable), e.g. the one a backup just
        /// made; chunks recorded as damaged are checked too. Every index is still read, so
        /// a problem names all the points it affects.
        #[arg(long = "point", value_name = "ID")]
        points: Vec<RestorePointId>,
    },
    /// Remove restore points outside the retention policy (chunks are freed by `repo gc`).
    Prune {
        #[command(flatten)]
        repo: RepoArg,
        /// Keep the N newest points of each VM.
        #[arg(long, default_value_t = 0)]
        keep_last: u32,
        /// Keep the newest point of each of the last N days.
        #[arg(long, default_value_t = 0)]
        keep_daily: u32,
        /// Keep the newest point of each of the last N ISO weeks.
        #[arg(long, default_value_t = 0)]
        keep_weekly: u32,
        /// Keep the newest point of each of the last N months.
        #[arg(long, default_value_t = 0)]
        keep_monthly: u32,
        /// Never remove a point younger than this (at least 3d).
        #[arg(long, value_parser = parse_duration_secs, default_value = "3d")]
        min_age: i64,
        /// Show what would be removed without removing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove chunks no restore point references, temp files and orphan indexes.
    Gc {
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Rebuild a lost or damaged catalog from the point manifests.
    ///
    /// The manifests lie next to the index files. The old catalog is renamed aside; job
    /// history, journal and queue start empty.
    RebuildCatalog {
        #[command(flatten)]
        repo: RepoArg,
        /// Rebuild even though the catalog opens and SQLite finds it sound.
        #[arg(long)]
        force: bool,
    },
}

/// `list` arguments.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    repo: RepoArg,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn print_verify(report: &VerifyReport, repaired: Option<&RepairReport>) {
    for p in &report.problems {
        match p {
            VerifyProblem::Catalog { path, error } => {
                say!("BAD CATALOG {}: {error}", path.display());
            }
            VerifyProblem::Index {
                point, disk, error, ..
            } => {
                say!("BAD INDEX restore point {point} disk {disk}: {error}");
            }
            VerifyProblem::Config { point, error, .. } => {
                say!(
                    "BAD CONFIG restore point {point}: {error}; a restore of the VM from this \
                     point needs its .vmx and ExtraConfig and is refused"
                );
            }
            VerifyProblem::Chunk {
                digest,
                error,
                points,
                ..
            } => {
                let pts: Vec<String> = points
                    .iter()
                    .map(|(p, d)| format!("{p} (disk {d})"))
                    .collect();
                say!(
                    "BAD CHUNK {digest}: {error}; affects restore points: {}",
                    pts.join(", ")
                );
            }
        }
    }
    match report.subset {
        None => say!(
            "verified {} restore points, {} chunks: {} problem(s)",
            report.points,
            report.chunks,
            report.problems.len()
        ),
        Some(subset) => say!(
            "verified {} restore points, {} chunks ({} re-read: subset {subset} and chunks \
             recorded as damaged; the others checked for presence): {} problem(s)",
            report.points,
            report.chunks,
            report.chunks_read,
            report.problems.len()
        ),
    }
    let healable = report.problems.iter().any(|p| {
        matches!(
            p,
            VerifyProblem::Chunk {
                state: ChunkState::Missing | ChunkState::Corrupt,
                ..
            }
        )
    });
    if report
        .problems
        .iter()
        .any(|p| matches!(p, VerifyProblem::Catalog { .. }))
    {
        say!(
            "the catalog is damaged: restore points may be missing or wrong; copy the \
             repository aside before anything writes to it again"
        );
    }
    let Some(r) = repaired else {
        if healable {
            say!(
                "run `vadp-agent repo verify --repair` to let the next backups heal the bad chunks"
            );
        }
        return;
    };
    for q in &r.quarantined {
        say!(
            "QUARANTINED chunk {}: {} -> {}",
            q.digest,
            q.from.display(),
            q.to.display()
        );
    }
    for d in &r.unreadable {
        say!("NOT REPAIRED chunk {d}: it could not be read; fix the error and run again");
    }
    if !r.damaged.is_empty() {
        say!(
            "{} damaged chunk(s) recorded: the next backup of each affected VM stores them again; \
             restore points that use them restore again if the data has not changed since",
            r.damaged.len()
        );
    }
    if r.manifests_written > 0 {
        say!(
            "{} point manifest(s) written for points made before manifests existed",
            r.manifests_written
        );
    }
    if r.cleared > 0 {
        say!(
            "{} earlier damaged chunk(s) are intact again or no longer used",
            r.cleared
        );
    }
}

fn open(repo: &RepoArg) -> anyhow::Result<Repository> {
    Repository::open(&repo.repo).with_context(|| format!("open repository {}", repo.repo.display()))
}

pub(crate) fn run(cmd: RepoCommand, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        RepoCommand::Init { repo, chunk_size } => {
            let r = Repository::init(&repo.repo, chunk_size)
                .with_context(|| format!("init repository {}", repo.repo.display()))?;
            let info = r.info()?;
            if json {
                say!("{}", serde_json::json!({"event": "init", "repo": info}));
            } else {
                say!(
                    "initialised repository {} (chunk size {} bytes)",
                    info.path.display(),
                    info.chunk_size_bytes
                );
            }
        }
        RepoCommand::Info { repo } => {
            let info = open(&repo)?.info()?;
            if json {
                say!("{}", serde_json::json!({"event": "info", "repo": info}));
            } else {
                say!("path:           {}", info.path.display());
                say!("chunk size:     {} bytes", info.chunk_size_bytes);
                say!("schema version: {}", info.schema_version);
                say!("restore points: {}", info.points);
                say!(
                    "chunk files:    {} ({} bytes)",
                    info.chunk_files,
                    info.chunk_bytes
                );
                if info.quarantined_files > 0 {
                    say!(
                        "quarantined:    {} corrupt chunk file(s) in {} (kept for inspection; \
                         delete them when done)",
                        info.quarantined_files,
                        info.path.join("quarantine").display()
                    );
                }
                if info.damaged_chunks > 0 {
                    say!(
                        "damaged chunks: {} (found by `repo verify --repair`; the next backups \
                         store them again)",
                        info.damaged_chunks
                    );
                }
                if let Some(since) = info.gc_pending_since {
                    say!(
                        "garbage:        restore points removed since {}; their chunks take \
                         space until `repo gc` runs",
                        super::utc(since)
                    );
                }
            }
        }
        RepoCommand::Verify {
            repo,
            repair,
            subset,
            points,
        } => {
            let r = open(&repo)?;
            let mut progress = Progress::chunks("verify", json);
            let (report, repaired) = r.verify_with(
                &VerifyOptions {
                    subset,
                    repair,
                    stop: None,
                    points,
                },
                &mut |d, t| {
                    progress.update(d, t);
                },
            )?;
            progress.finish();
            if json {
                say!(
                    "{}",
                    serde_json::json!({"event": "verify", "report": report, "repair": repaired})
                );
            } else {
                print_verify(&report, repaired.as_ref());
            }
            if !report.is_ok() {
                return Ok(ExitCode::from(EXIT_VERIFY_FAILED));
            }
        }
        RepoCommand::Prune {
            repo,
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            min_age,
            dry_run,
        } => {
            let policy = RetentionPolicy {
                keep_last,
                keep_daily,
                keep_weekly,
                keep_monthly,
                min_age_secs: min_age,
            };
            let decisions =
                open(&repo)?.prune(&policy, now_secs(), &jiff::tz::TimeZone::system(), dry_run)?;
            if json {
                say!(
                    "{}",
                    serde_json::json!({"event": "prune", "dry_run": dry_run, "decisions": decisions})
                );
            } else {
                for d in &decisions {
                    let verb = if d.keep {
                        "keep  "
                    } else if dry_run {
                        "would remove"
                    } else {
                        "remove"
                    };
                    say!("{verb} {} {} {}", d.id, d.created_at, d.reasons.join(","));
                }
            }
        }
        RepoCommand::RebuildCatalog { repo, force } => {
            let report = Repository::rebuild_catalog(&repo.repo, force)
                .with_context(|| format!("rebuild the catalog of {}", repo.repo.display()))?;
            if json {
                say!(
                    "{}",
                    serde_json::json!({"event": "rebuild_catalog", "report": report})
                );
            } else {
                if report.resumed {
                    say!("finishing the catalog rebuild that was interrupted");
                }
                for old in &report.old_catalog {
                    say!("old catalog file kept as {}", old.display());
                }
                for (dir, why) in &report.skipped {
                    say!("SKIPPED indexes/{dir}: {why}");
                }
                for dir in &report.quarantined {
                    say!(
                        "moved to {}: it has a manifest or index files, so it may hold a committed restore point; `repo gc` does not run until it is looked at and removed from there",
                        dir.display()
                    );
                }
                say!(
                    "catalog rebuilt with {} restore point(s); run `vadp-agent repo verify` next",
                    report.points.len()
                );
            }
        }
        RepoCommand::Gc { repo } => {
            let report = open(&repo)?.gc()?;
            if json {
                say!("{}", serde_json::json!({"event": "gc", "report": report}));
            } else {
                say!(
                    "gc: {} chunks referenced, {} kept, {} removed ({} bytes), {} temp files, {} orphan indexes removed",
                    report.chunks_marked,
                    report.chunks_kept,
                    report.chunks_removed,
                    report.bytes_removed,
                    report.temp_files_removed,
                    report.orphan_indexes_removed
                );
                if !report.damaged_forgotten.is_empty() {
                    say!(
                        "gc: {} damaged chunk(s) no restore point uses any more forgotten",
                        report.damaged_forgotten.len()
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn list(args: &ListArgs, json: bool) -> anyhow::Result<ExitCode> {
    let repo = open(&args.repo)?;
    let points = repo.list()?;
    // The group's snapshot skew, and the VMs that failed in the group, are recorded with
    // the job that made the point.
    let mut skews = serde_json::Map::new();
    let mut incomplete = serde_json::Map::new();
    for p in &points {
        let job = repo.catalog().point_config(p.id)?.and_then(|c| c.job);
        let stats = match job {
            Some(job) => repo.catalog().job_stats(job)?,
            None => None,
        };
        let Some(stats) = stats else { continue };
        if let Some(ms) = stats.get("skew_ms").and_then(serde_json::Value::as_u64) {
            skews.insert(p.id.to_string(), ms.into());
        }
        let failed = crate::engine::failed_members(&stats);
        if !failed.is_empty() {
            incomplete.insert(p.id.to_string(), failed.into());
        }
    }
    if json {
        say!(
            "{}",
            serde_json::json!({"event": "list", "points": points, "skew_ms": skews, "group_failed": incomplete})
        );
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<36}  {:<16}  {:<20}  {:<11}  {:>14}  {:>12}  {:>8}  {:>7}  {:<12}  WHY",
        "ID",
        "VM",
        "CREATED (UTC)",
        "KIND",
        "SIZE",
        "CHANGED",
        "SECONDS",
        "SKEW",
        "VM SERVICE"
    );
    for p in &points {
        let size: u64 = p.disks.iter().map(|d| d.capacity_bytes).sum();
        let changed: u64 = p.disks.iter().map(|d| d.bytes_changed).sum();
        let kind = match p.kind {
            crate::repo::PointKind::Full => "full",
            crate::repo::PointKind::Incremental => "incremental",
        };
        let seconds = p
            .stats
            .get("seconds")
            .and_then(serde_json::Value::as_f64)
            .map_or_else(|| "-".to_owned(), |s| format!("{s:.2}"));
        let skew = skews
            .get(&p.id.to_string())
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms}ms"));
        let validation = p
            .stats
            .pointer("/validation/status")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("-");
        let created = super::utc(p.created_at);
        let why = match incomplete.get(&p.id.to_string()).and_then(|v| v.as_array()) {
            Some(failed) => format!(
                "{}; group incomplete: {} failed in this job",
                p.reason,
                failed
                    .iter()
                    .filter_map(serde_json::Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => p.reason.clone(),
        };
        say!(
            "{:<36}  {:<16}  {:<20}  {:<11}  {:>14}  {:>12}  {:>8}  {:>7}  {:<12}  {}",
            p.id,
            p.vm.name,
            created,
            kind,
            size,
            changed,
            seconds,
            skew,
            validation,
            why
        );
    }
    Ok(ExitCode::SUCCESS)
}
