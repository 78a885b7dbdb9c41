//! Progress reporting: an indicatif bar on a terminal, JSON lines on stdout with `--json`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// A progress sink for one long operation.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    json: bool,
    op: &'static str,
    started: Instant,
    last: Instant,
}

impl Progress {
    pub(crate) fn new(op: &'static str, json: bool) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(op);
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            json,
            op,
            started: now,
            last: now,
        }
    }

    pub(crate) fn update(&mut self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
        } else if self.json && (self.last.elapsed() >= Duration::from_millis(500) || done == total)
        {
            self.last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            #[allow(clippy::cast_precision_loss)] // a rate for display
            let rate = done as f64 / secs;
            println!(
                "{}",
                serde_json::json!({
                    "event": "progress", "op": self.op, "bytes_done": done,
                    "bytes_total": total, "bytes_per_sec": rate.round(),
                })
            );
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
