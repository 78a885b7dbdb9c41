//! `vadp-agent image …`: back up and restore raw image files (the extents file stands in for
//! CBT), plus hidden helpers that generate and modify seeded images for benchmarks and tests.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::parse_size;
use super::progress::Progress;
use super::repo::RepoArg;
use crate::ids::RestorePointId;
use crate::repo::{Extent, ImageBackup, Repository, synthetic_image};

/// `image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Back up a raw image file as a new restore point.
    Backup {
        #[command(flatten)]
        repo: RepoArg,
        /// Name of the image (its "VM").
        #[arg(long)]
        name: String,
        /// JSON list of [offset, length] changed extents: makes an incremental.
        #[arg(long, value_name = "EXTENTS.json")]
        changed: Option<PathBuf>,
        /// Parent restore point of an incremental, a point of NAME (default: the newest of
        /// NAME); needs --changed.
        #[arg(long, value_name = "POINT")]
        parent: Option<RestorePointId>,
        /// The raw image: a regular file or a block device.
        file: PathBuf,
    },
    /// Restore a restore point into a raw image file.
    Restore {
        #[command(flatten)]
        repo: RepoArg,
        /// The restore point.
        #[arg(long)]
        point: RestorePointId,
        /// The regular file to write (created, or replaced once the restore is complete;
        /// zero chunks become holes).
        #[arg(long)]
        out: PathBuf,
    },
    /// Generate a seeded synthetic image (40 % zero, 30 % random, 30 % text).
    #[command(hide = true)]
    Generate {
        /// Size.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file.
        out: PathBuf,
    },
    /// Overwrite seeded random extents of an image; write them as an extents file.
    #[command(hide = true)]
    Mutate {
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Number of extents.
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Length of each extent.
        #[arg(long, value_parser = parse_size, default_value = "64K")]
        length: u64,
        /// Where to write the extents JSON.
        #[arg(long)]
        extents_out: PathBuf,
        /// The image to modify.
        file: PathBuf,
    },
}

pub(crate) fn run(cmd: ImageCommand, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Backup {
            repo,
            name,
            changed,
            parent,
            file,
        } => {
            let r = Repository::open(&repo.repo)
                .with_context(|| format!("open repository {}", repo.repo.display()))?;
            let changed = match changed {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("read extents file {}", path.display()))?;
                    let extents: Vec<Extent> = serde_json::from_str(&text).with_context(|| {
                        format!(
                            "parse extents file {} (a JSON list of [offset, length])",
                            path.display()
                        )
                    })?;
                    // Checked here, where the file can be named: the extents are the changes
                    // of this image, and one beyond its end is a file for another disk.
                    let size = std::fs::metadata(&file)
                        .ok()
                        .filter(std::fs::Metadata::is_file)
                        .map(|m| m.len());
                    for (i, e) in extents.iter().enumerate() {
                        let end = e.offset.checked_add(e.length);
                        if let Some(size) = size
                            && end.is_none_or(|end| end > size)
                        {
                            anyhow::bail!(
                                "extents file {}: extent {i} [{}, +{}) is beyond the end of {} ({size} bytes)",
                                path.display(),
                                e.offset,
                                e.length,
                                file.display()
                            );
                        }
                    }
                    Some(extents)
                }
                None => None,
            };
            let req = ImageBackup {
                name,
                file: file.clone(),
                changed,
                parent,
            };
            let mut progress = Progress::new("backup", json);
            let summary = r
                .backup_image(&req, &mut |d, t| progress.update(d, t))
                .with_context(|| format!("back up {}", file.display()))?;
            progress.finish();
            if json {
                say!(
                    "{}",
                    serde_json::json!({"event": "backup", "result": summary})
                );
            } else {
                let s = &summary.stats;
                say!(
                    "restore point {} ({:?}): read {} bytes in {:.2}s, {} new chunks ({} bytes), {} reused, {} zero",
                    summary.point,
                    summary.kind,
                    s.bytes_read,
                    summary.seconds,
                    s.chunks_new,
                    s.bytes_stored,
                    s.chunks_reused,
                    s.chunks_zero
                );
            }
        }
        ImageCommand::Restore { repo, point, out } => {
            let r = Repository::open(&repo.repo)
                .with_context(|| format!("open repository {}", repo.repo.display()))?;
            let mut progress = Progress::new("restore", json);
            let started = std::time::Instant::now();
            let bytes = r
                .restore_image(point, &out, &mut |d, t| progress.update(d, t))
                .with_context(|| format!("restore to {}", out.display()))?;
            progress.finish();
            let secs = started.elapsed().as_secs_f64();
            if json {
                say!(
                    "{}",
                    serde_json::json!({"event": "restore", "point": point, "bytes": bytes, "seconds": secs})
                );
            } else {
                say!(
                    "restored {point} to {} ({bytes} bytes) in {secs:.2}s",
                    out.display()
                );
            }
        }
        ImageCommand::Generate { size, seed, out } => {
            synthetic_image::generate(&out, size, seed)
                .with_context(|| format!("generate {}", out.display()))?;
        }
        ImageCommand::Mutate {
            seed,
            count,
            length,
            extents_out,
            file,
        } => {
            let extents = synthetic_image::mutate(&file, seed, count, length)
                .with_context(|| format!("modify {}", file.display()))?;
            std::fs::write(&extents_out, serde_json::to_vec(&extents)?)
                .with_context(|| format!("write {}", extents_out.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
