//! The daemon's own machinery, apart from HTTP: the persisted job queue with its limits
//! and priorities ([`queue`]), the scheduling policies ([`schedule`]) and the job bodies
//! that run the engines ([`backup_job`]), and the repository's upkeep ([`maintenance`]:
//! retention after a policy's run, garbage collection once points were removed).
//!
//! It must not parse HTTP (that is `crate::api`) nor call VDDK or SQLite on a tokio
//! worker: the engines and the catalog handle keep blocking work on their own threads.

pub mod backup_job;
pub mod clock;
pub mod maintenance;
pub mod queue;
pub mod schedule;
pub mod scheduler;

pub use queue::{JobBody, JobSlot, Outcome, Queue, QueueError, RunContext, Submission};
pub use schedule::{Blackout, Schedule, blocked_until, is_due, next_run, parse_hhmm};

/// Runs `f` (long, blocking repository work: a verify, GC, a removal waiting for GC's lock)
/// on a new thread named `name`, not on the runtime's blocking pool it could hold for
/// hours, and awaits its result.
///
/// # Errors
/// The thread could not start, or panicked: said in a message naming it.
pub(crate) async fn on_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || drop(tx.send(f())))
        .map_err(|e| format!("could not start the {name} thread: {e}"))?;
    rx.await.map_err(|_| format!("the {name} thread failed"))
}

#[cfg(test)]
pub(crate) mod tests {
    /// `s` (RFC 3339 with an offset) in UTC, for the schedule tests.
    pub(crate) fn at(s: &str) -> jiff::Zoned {
        format!("{s}[UTC]").parse().expect("a test time")
    }
}
