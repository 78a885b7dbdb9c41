//! The daemon's own machinery, apart from HTTP: the persisted job queue with its limits
//! and priorities ([`queue`]), the scheduling policies ([`schedule`]) and the job bodies
//! that run the engines ([`backup_job`]), and the repository's upkeep ([`maintenance`]:
//! retention after a policy's run, garbage collection once points were removed).
//!
//! It must not parse HTTP (that is `crate::api`) nor call VDDK or SQLite on a tokio
//! worker: the engines and the catalog handle keep blocking work on their own threads.

pub mod backup_job;
pub mod maintenance;
pub mod queue;
pub mod schedule;
pub mod scheduler;

pub use queue::{JobBody, Outcome, Queue, QueueError, RunContext, Submission};
pub use schedule::{Blackout, Schedule, blocked_until, is_due, next_run, parse_hhmm};

#[cfg(test)]
pub(crate) mod tests {
    /// `s` (RFC 3339 with an offset) in UTC, for the schedule tests.
    pub(crate) fn at(s: &str) -> jiff::Zoned {
        format!("{s}[UTC]").parse().expect("a test time")
    }
}
