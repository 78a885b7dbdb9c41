//! Progress reporting: an indicatif bar on a terminal, JSON lines on stdout with `--json`.

use std::collections::HashMap;
use std::hash::Hash;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// A progress sink for one long operation.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    json: bool,
    op: &'static str,
    /// What is counted: `bytes` or `chunks` (the JSON fields' prefix).
    unit: &'static str,
    started: Instant,
    last: Instant,
}

impl Progress {
    /// Progress in bytes (backups, restores).
    pub(crate) fn new(op: &'static str, json: bool) -> Self {
        Self::counting(
            op,
            json,
            "bytes",
            "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
    }

    /// Progress in chunks (verify).
    pub(crate) fn chunks(op: &'static str, json: bool) -> Self {
        Self::counting(
            op,
            json,
            "chunks",
            "{msg} [{bar:40}] {human_pos}/{human_len} chunks {per_sec} eta {eta}",
        )
    }

    fn counting(op: &'static str, json: bool, unit: &'static str, template: &str) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(template)
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
            unit,
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
            // `say!`: a reader that went away (`--json | head -1`) does not stop the backup
            // or restore.
            let mut event = serde_json::json!({ "event": "progress", "op": self.op });
            event[format!("{}_done", self.unit)] = done.into();
            event[format!("{}_total", self.unit)] = total.into();
            event[format!("{}_per_sec", self.unit)] = rate.round().into();
            say!("{event}");
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// One byte bar per disk under a shared [`MultiProgress`] (terminal only); lines printed
/// through it do not tear the bars.
pub(crate) struct DiskBars<K> {
    multi: MultiProgress,
    bars: Mutex<HashMap<K, ProgressBar>>,
    style: ProgressStyle,
    terminal: bool,
}

impl<K: Eq + Hash> DiskBars<K> {
    pub(crate) fn new() -> Self {
        Self {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
            style: ProgressStyle::with_template(
                "{msg:32} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Whether bars are drawn (stderr is a terminal).
    pub(crate) fn terminal(&self) -> bool {
        self.terminal
    }

    /// The bars' container, for other bars.
    pub(crate) fn multi(&self) -> &MultiProgress {
        &self.multi
    }

    fn bars(&self) -> std::sync::MutexGuard<'_, HashMap<K, ProgressBar>> {
        self.bars
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A bar for `key` (nothing off a terminal).
    pub(crate) fn start(&self, key: K, message: String, total: u64) {
        if self.terminal {
            let bar = self.multi.add(ProgressBar::new(total));
            bar.set_style(self.style.clone());
            bar.set_message(message);
            self.bars().insert(key, bar);
        }
    }

    /// Moves `key`'s bar to `done` of `total`.
    pub(crate) fn set(&self, key: &K, done: u64, total: u64) {
        if let Some(bar) = self.bars().get(key) {
            bar.set_length(total);
            bar.set_position(done);
        }
    }

    /// Completes and forgets `key`'s bar.
    pub(crate) fn finish(&self, key: &K) {
        if let Some(bar) = self.bars().remove(key) {
            bar.finish();
        }
    }

    /// Prints a line above the bars, or on stderr as it is when no bars are drawn (the
    /// bars' `println` prints nothing when stderr is not a terminal: under cron, systemd or
    /// `2> log`, warnings and failures would be lost).
    pub(crate) fn println(&self, line: impl AsRef<str>) {
        if self.terminal {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{}", line.as_ref());
        }
    }
}
