//! `/v1/metrics` in the Prometheus text format (version 0.0.4).

use std::fmt::Write as _;

use crate::daemon::Queue;
use crate::daemon::maintenance::VerifySummary;
use crate::repo::catalog::JournalEntry;

/// The repository's upkeep, as the catalog records it.
#[derive(Debug, Default)]
pub(super) struct Upkeep {
    /// Points were removed and GC has not run since.
    pub gc_pending: bool,
    /// The last daily verify.
    pub verify: Option<VerifySummary>,
}

/// Renders the metrics. `journal` is the open side-effect journal (snapshots we hold).
#[must_use]
pub(super) fn render(queue: &Queue, journal: &[JournalEntry], upkeep: &Upkeep, now: i64) -> String {
    let (c, by_state) = queue.counters();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    metric("vadp_agent_jobs", "gauge", "Jobs by state.");
    let mut lines = String::new();
    for (state, n) in &by_state {
        let _ = writeln!(lines, "vadp_agent_jobs{{state=\"{state}\"}} {n}");
    }
    let snapshots: Vec<&JournalEntry> = journal.iter().filter(|e| e.kind == "snapshot").collect();
    let oldest = snapshots
        .iter()
        .map(|e| now.saturating_sub(e.opened_at).max(0))
        .max()
        .unwrap_or(0);
    out.push_str(&lines);
    let mut simple = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    simple(
        "vadp_agent_job_concurrency_limit",
        "gauge",
        "Jobs allowed to run at once.",
        queue.limit().to_string(),
    );
    simple(
        "vadp_agent_bytes_read_total",
        "counter",
        "Bytes read from VM disks (whole chunks).",
        c.bytes_read.to_string(),
    );
    simple(
        "vadp_agent_bytes_written_total",
        "counter",
        "Bytes of new chunks written to the repository.",
        c.bytes_written.to_string(),
    );
    let _ = writeln!(
        out,
        "# HELP vadp_agent_job_duration_seconds Durations of finished jobs.\n\
         # TYPE vadp_agent_job_duration_seconds summary\n\
         vadp_agent_job_duration_seconds_sum {}\n\
         vadp_agent_job_duration_seconds_count {}",
        c.duration_seconds_sum, c.duration_count
    );
    let mut simple = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    simple(
        "vadp_agent_vm_failures_total",
        "counter",
        "VMs that failed inside backup jobs.",
        c.vm_failures.to_string(),
    );
    simple(
        "vadp_agent_jobs_failed",
        "gauge",
        "Jobs that ended failed, among those still in the job history (`maintenance.job_history_days`).",
        by_state.get("failed").copied().unwrap_or(0).to_string(),
    );
    simple(
        "vadp_agent_snapshots_held",
        "gauge",
        "Snapshots of ours that exist now (journalled, not yet removed).",
        snapshots.len().to_string(),
    );
    simple(
        "vadp_agent_snapshot_held_age_seconds",
        "gauge",
        "Age of the oldest snapshot we hold (0 when none).",
        oldest.to_string(),
    );
    simple(
        "vadp_agent_gc_pending",
        "gauge",
        "1 while removed restore points' chunks wait for garbage collection.",
        u8::from(upkeep.gc_pending).to_string(),
    );
    let v = upkeep.verify.as_ref();
    simple(
        "vadp_agent_verify_last_run_timestamp_seconds",
        "gauge",
        "Start of the last daily verify (Unix seconds; 0 when none ran).",
        v.map_or(0, |v| v.started_at).to_string(),
    );
    simple(
        "vadp_agent_verify_last_problems",
        "gauge",
        "Problems the last daily verify found (alert when above 0).",
        v.map_or(0, |v| v.problems).to_string(),
    );
    out
}
